"""Frame averaging (Puny et al., ICLR 2022) for point clouds in 3D, in ops ONNX can run.

The fx call_function targets defined here (compiler/onnx_sets.py lowers each; the symmetry rules
read these semantics). B is the batch, F the number of frames, coordinates are the last axis (3):

    frame_centroid(pos, mask)               pos [B, N, 3], mask bool [B, N] or None -> [B, 1, 3],
                                            the mean of the real points (of all, when none is real).
    frame_basis(pos, centroid, mask, proper, canonical)
                                            -> [B, F, 3, 3]; column j of basis[b, f] is frame axis j.
                                            PCA of the centered covariance: F = 8 sign patterns
                                            (O(3)/E(3)) or 4 with det = +1 (proper: SO(3)/SE(3));
                                            canonical: F = 1, signs by the third moment.
    frame_in(x, basis, centroid)            x [B, ..., 3] -> [B*F, ..., 3]: Fᵀ(x - c) for positions
                                            (centroid given), Fᵀv for vectors (centroid None).
    frame_tile(x, frames)                   x [B, ...] -> [B*F, ...]: invariant inputs, masks.
    frame_out(y, basis, centroid, kind)     y [B*F, ...] -> [B, ...], the mean over frames of: y
                                            (kind "invariant"), F·y ("vector"), F·y + c ("position").
    frame_conditioning(pos, mask)           -> [B]: min(λ1-λ2, λ2-λ3) / (λ1+λ2+λ3) of the
                                            covariance, 0 when the frame is ambiguous.

Frames fold into the batch as b*F + f, so the backbone runs once on B*F rows.

Exactness. The frame is equivariant when the covariance has three distinct eigenvalues. When two
coincide (relative gap under GAP_TOL: symmetric, collinear or planar clouds, N < 3), the
eigenvector of the distinct one is kept and the rest of the basis falls back to a fixed choice:
the coordinate axis least aligned with the kept vector, made orthogonal to it (a fixed basis when
all three coincide). The output is then finite, and the same in torch and ONNX, but only
approximately invariant; frame_conditioning says where. The canonical frame
is exact only away from ties: also where a third moment along an axis is 0.

The kernels below take `m`, a namespace of tensor primitives: TORCH here, and an ONNX twin in
compiler/onnx_sets.py, so torch and ONNX run the same arithmetic step for step.
"""
from __future__ import annotations

import itertools

import numpy as np
import torch

# Gap below which an eigenvector (or its orthogonalized partner) counts as undetermined; the
# eigensolver works in float64 on a trace-normalized covariance, so this is relative.
TOL = 1e-9
# Relative eigen-gap under which two eigenvalues count as tied: the closed form resolves gaps to
# about 1e-8 (a square root of rounding error near a double root), so ties are decided well above.
GAP_TOL = 1e-6
GROUPS = {"E3": False, "O3": False, "SE3": True, "SO3": True}  # name -> proper (det = +1 only)


def _sign_patterns(proper: bool) -> np.ndarray:
    signs = [s for s in itertools.product((1.0, -1.0), repeat=3) if not proper or np.prod(s) > 0]
    return np.array(signs, np.float32).reshape(len(signs), 1, 3)


def _cofactor_index() -> np.ndarray:
    """Flat indices of the two products of each cofactor: with indices mod 3,
    cof[i][j] = a[i+1][j+1]·a[i+2][j+2] − a[i+1][j+2]·a[i+2][j+1], the sign included."""
    idx = np.zeros((2, 2, 3, 3), np.int64)
    for i, j in itertools.product(range(3), range(3)):
        r1, r2, c1, c2 = (i + 1) % 3, (i + 2) % 3, (j + 1) % 3, (j + 2) % 3
        idx[0, :, i, j] = 3 * r1 + c1, 3 * r2 + c2
        idx[1, :, i, j] = 3 * r1 + c2, 3 * r2 + c1
    return idx


COFACTORS = _cofactor_index()
DIAGONAL = np.array([0, 4, 8], np.int64)
EYE = np.eye(3)


class _Torch:
    """The primitives in torch. Arguments mirror ONNX: a reshape spec keeps 0 and -1."""
    add, sub, mul, div, maximum, minimum = torch.add, torch.sub, torch.mul, torch.div, torch.maximum, torch.minimum
    where, sqrt, abs, cos, acos, matmul = torch.where, torch.sqrt, torch.abs, torch.cos, torch.acos, torch.matmul

    @staticmethod
    def gt(a, b):
        return a > b

    @staticmethod
    def ge(a, b):
        return a >= b

    @staticmethod
    def const(array, like):
        return torch.as_tensor(np.asarray(array), dtype=like.dtype, device=like.device)

    @staticmethod
    def cast(x, dtype):
        return x.to({"f32": torch.float32, "f64": torch.float64}[dtype])

    @staticmethod
    def dtype(x):
        return {torch.float32: "f32", torch.float64: "f64"}[x.dtype]

    @staticmethod
    def sum(x, axes, keepdim=False):
        return x.sum(axes, keepdim=keepdim)

    @staticmethod
    def mean(x, axes, keepdim=False):
        return x.mean(axes, keepdim=keepdim)

    @staticmethod
    def prod(x, axis):
        return x.prod(axis)

    @staticmethod
    def transpose(x, perm):
        return x.permute(perm)

    @staticmethod
    def reshape(x, spec):
        return x.reshape([x.shape[i] if s == 0 else s for i, s in enumerate(spec)])

    @staticmethod
    def reshape_tail(x, lead, like, start):
        return x.reshape(list(lead) + list(like.shape[start:]))

    @staticmethod
    def unsqueeze(x, axis):
        return x.unsqueeze(axis)

    @staticmethod
    def concat(xs, axis):
        return torch.cat(xs, axis)

    @staticmethod
    def take(x, index, axis):
        """ONNX Gather with a constant index array: x's `axis` becomes index's dims."""
        axis %= x.dim()
        flat = x.index_select(axis, torch.as_tensor(index.reshape(-1), device=x.device))
        return flat.reshape(x.shape[:axis] + index.shape + x.shape[axis + 1:])

    @staticmethod
    def onehot_argmax(x, largest):
        """One-hot (x's dtype) of the first largest (or smallest) of the 3 entries on the last axis."""
        k = x.argmax(-1) if largest else x.argmin(-1)
        return torch.nn.functional.one_hot(k, x.shape[-1]).to(x.dtype)


TORCH = _Torch


# -- kernels ---------------------------------------------------------------------------------------
def real_points(m, pos, mask):
    """bool [B, N, 1]: the points a frame is built from. A cloud whose mask keeps no point is built
    from all its points, so that its frame and centroid still move with it: an empty set has no
    frame of its own, and a fixed one would break every claim (LANGUAGE.md, empty sets)."""
    keep = m.where(m.unsqueeze(mask, -1), m.const(1.0, pos), 0.0)
    return m.gt(m.where(m.gt(m.sum(keep, (1,), True), 0.5), keep, 1.0), 0.5)


def centroid_of(m, pos, mask):
    if mask is None:
        return m.mean(pos, (1,), True)
    keep = real_points(m, pos, mask)
    total = m.sum(m.where(keep, pos, 0.0), (1,), True)
    count = m.sum(m.where(keep, m.const(1.0, pos), 0.0), (1,), True)
    return m.div(total, m.maximum(count, m.const(1.0, pos)))


def covariance(m, pos, c, mask):
    """Σ (x - c)(x - c)ᵀ over the real points, in float64 [B, 3, 3]."""
    xc = m.sub(pos, c)
    if mask is not None:
        xc = m.where(real_points(m, pos, mask), xc, 0.0)  # padding, NaN included, must not count
    xc = m.cast(xc, "f64")
    return m.matmul(m.transpose(xc, (0, 2, 1)), xc)


def adjugate(m, a, lead: int):
    """Cofactor matrix of a [..., 3, 3] (= adjugate for symmetric a); `lead` = rank - 2."""
    flat = m.reshape(a, [0] * lead + [9])
    pairs = m.prod(m.take(flat, COFACTORS, -1), -3)                       # [..., 2, 3, 3]
    return m.sum(m.mul(pairs, m.const(np.array([1.0, -1.0]).reshape(2, 1, 1), a)), (-3,))


def _trace(m, a, lead: int):
    return m.sum(m.take(m.reshape(a, [0] * lead + [9]), DIAGONAL, -1), (-1,), True)


def eigenvalues(m, a, q):
    """λ1 >= λ2 >= λ3 [B, 3] of symmetric a [B, 3, 3] with trace 3q, by the trigonometric closed
    form. For traceless b = a - qI: p² = tr(b²)/6 and det(b) = tr(b³)/3."""
    b = m.sub(a, m.mul(q, m.const(EYE, a)))
    bb = m.matmul(b, b)
    p2 = m.div(m.sum(m.mul(b, b), (-2, -1), True), 6.0)
    p = m.sqrt(p2)
    det = m.div(m.sum(m.mul(bb, b), (-2, -1), True), 3.0)
    r = m.div(det, m.mul(m.maximum(m.mul(p2, p), m.const(1e-90, a)), 2.0))
    r = m.minimum(m.maximum(r, m.const(-1.0, a)), m.const(1.0, a))
    # t = cos(acos(r)/3), the largest root of 4t³ - 3t = r. ONNX has no float64 Acos, so it starts
    # in float32 and one Newton step on the cubic restores float64 accuracy (the derivative
    # 12t² - 3 is floored at 1, damping the step only near r = -1, a tied top pair).
    t = m.cast(m.cos(m.div(m.acos(m.cast(r, "f32")), 3.0)), "f64")
    t2 = m.mul(t, t)
    residual = m.sub(m.mul(t, m.sub(m.mul(t2, 4.0), 3.0)), r)
    t = m.sub(t, m.div(residual, m.maximum(m.sub(m.mul(t2, 12.0), 3.0), m.const(1.0, a))))
    s = m.sqrt(m.maximum(m.mul(m.sub(m.const(1.0, t), m.mul(t, t)), 3.0), m.const(0.0, a)))
    top = m.add(q, m.mul(m.mul(p, t), 2.0))
    low = m.sub(q, m.mul(p, m.add(t, s)))
    mid = m.sub(m.sub(m.mul(q, 3.0), top), low)
    return m.reshape(m.concat([top, mid, low], -1), [0, 3])


def _unit(m, v):
    """v / |v| along the last axis, and |v| (at most TOL: v is undetermined). The caller compares,
    so no unread comparison lands in the ONNX graph, where onnxruntime would still run it."""
    norm = m.sqrt(m.sum(m.mul(v, v), (-1,), True))
    return m.div(v, m.maximum(norm, m.const(1e-300, v))), norm


def _cross(m, a, b):
    roll1, roll2 = np.array([1, 2, 0]), np.array([2, 0, 1])
    return m.sub(m.mul(m.take(a, roll1, -1), m.take(b, roll2, -1)),
                 m.mul(m.take(a, roll2, -1), m.take(b, roll1, -1)))


def _dot(m, a, b):
    return m.sum(m.mul(a, b), (-1,), True)


def _eigenvectors(m, a, lam):
    """Unit eigenvectors [B, 2, 3] for λ1 and λ3: the largest column of adj(a - λI)."""
    ends = m.unsqueeze(m.unsqueeze(m.take(lam, np.array([0, 2]), -1), -1), -1)    # [B, 2, 1, 1]
    shifted = m.sub(m.unsqueeze(a, 1), m.mul(ends, m.const(EYE, a)))              # [B, 2, 3, 3]
    adj = adjugate(m, shifted, 2)
    pick = m.onehot_argmax(m.abs(m.take(m.reshape(adj, [0, 0, 9]), DIAGONAL, -1)), True)
    return _unit(m, m.reshape(m.matmul(adj, m.unsqueeze(pick, -1)), [0, 0, 3]))[0]


def _complement(m, u):
    """A unit vector orthogonal to unit u: the least aligned coordinate axis, minus its u part."""
    return _unit(m, _reject(m, m.onehot_argmax(m.abs(u), False), u))[0]


def principal_axes(m, cov):
    """Right-handed orthonormal eigenvectors [B, 3, 3] (columns, by decreasing eigenvalue), and
    the relative eigen-gaps [B, 2]. The better separated end of the spectrum is trusted; a gap
    under GAP_TOL counts as a tie, whose eigenvectors fall back to fixed axes."""
    trace = m.unsqueeze(_trace(m, cov, 1), -1)
    scale = m.maximum(trace, m.const(1e-300, cov))
    a = m.div(cov, scale)
    lam = eigenvalues(m, a, m.div(m.div(trace, scale), 3.0))
    gaps = m.sub(m.take(lam, np.array([0, 1]), -1), m.take(lam, np.array([1, 2]), -1))
    g12, g23 = m.take(gaps, np.array([0]), -1), m.take(gaps, np.array([1]), -1)          # [B, 1]
    vecs = _eigenvectors(m, a, lam)
    v1, v3 = m.take(vecs, np.array([0]), -2), m.take(vecs, np.array([1]), -2)            # [B, 1, 3]
    top = m.unsqueeze(m.ge(g12, g23), -1)
    clear = m.unsqueeze(m.gt(m.maximum(g12, g23), m.const(GAP_TOL, a)), -1)   # one end is simple
    both = m.unsqueeze(m.gt(m.minimum(g12, g23), m.const(GAP_TOL, a)), -1)   # all three distinct
    u = m.where(clear, m.where(top, v1, v3), m.where(top, m.const(EYE[:1], a), m.const(EYE[2:], a)))
    w, w_norm = _unit(m, _reject(m, m.where(top, v3, v1), u))
    ok = m.gt(w_norm, m.const(TOL, a))
    fallback = _complement(m, u)
    w = m.where(both, m.where(ok, w, fallback), fallback)
    first, last = m.where(top, u, w), m.where(top, w, u)
    basis = m.concat([first, _cross(m, last, first), last], -2)         # rows v1, v3×v1 = v2, v3
    return m.transpose(basis, (0, 2, 1)), gaps


def _reject(m, w, u):
    """w minus its component along unit u."""
    return m.sub(w, m.mul(_dot(m, w, u), u))


def _third_moment_signs(m, pos, c, mask, axes, proper):
    """±1 per axis [B, 1, 1, 3]: the sign making Σ y³ >= 0 along it (ties count as +)."""
    y = m.matmul(m.cast(m.sub(pos, c), "f64"), axes)
    if mask is not None:
        y = m.where(real_points(m, pos, mask), y, 0.0)
    positive = m.ge(m.sum(m.mul(m.mul(y, y), y), (1,), True), m.const(0.0, y))
    signs = m.where(positive, m.const(1.0, y), m.const(-1.0, y))                      # [B, 1, 3]
    if proper:  # the third axis follows the first two so det stays +1
        s1, s2 = m.take(signs, np.array([0]), -1), m.take(signs, np.array([1]), -1)
        signs = m.concat([s1, s2, m.mul(s1, s2)], -1)
    return m.unsqueeze(signs, 1)


def basis_of(m, pos, c, mask, proper, canonical):
    axes, _ = principal_axes(m, covariance(m, pos, c, mask))
    signs = _third_moment_signs(m, pos, c, mask, axes, proper) if canonical else \
        m.const(_sign_patterns(proper), axes)
    return m.cast(m.mul(m.unsqueeze(axes, 1), signs), m.dtype(pos))


def conditioning(m, pos, mask):
    gaps = principal_axes(m, covariance(m, pos, centroid_of(m, pos, mask), mask))[1]
    smaller = m.minimum(m.take(gaps, np.array([0]), -1), m.take(gaps, np.array([1]), -1))
    # Rounding can leave a tied gap a hair below 0.
    return m.cast(m.reshape(m.maximum(smaller, m.const(0.0, smaller)), [-1]), m.dtype(pos))


def into_frames(m, x, basis, c):
    """[B, ..., 3] -> [B*F, ..., 3]: coordinates along each frame's axes, after centering if c."""
    flat = m.reshape(x, [0, -1, 3])
    if c is not None:
        flat = m.sub(flat, c)
    return m.reshape_tail(m.matmul(m.unsqueeze(flat, 1), basis), [-1], x, 1)


def tile(m, x, frames: int):
    return m.reshape_tail(m.concat([m.unsqueeze(x, 1)] * frames, 1), [-1], x, 1)


def out_of_frames(m, y, basis, c, kind: str, frames: int):
    per_frame = m.reshape_tail(y, [-1, frames], y, 1)                      # [B, F, ...]
    if kind == "invariant":
        return m.mean(per_frame, (1,))
    back = m.matmul(m.reshape(per_frame, [0, 0, -1, 3]), m.transpose(basis, (0, 1, 3, 2)))
    mean = m.mean(back, (1,))                                                # [B, M, 3]
    if kind == "position":
        mean = m.add(mean, c)
    return m.reshape_tail(mean, [-1], y, 1)


# -- the fx call_function targets ----------------------------------------------------------------
OUTPUT_KINDS = ("invariant", "vector", "position")


def frame_centroid(pos, mask=None):
    return centroid_of(TORCH, pos, mask)


def frame_basis(pos, centroid, mask=None, proper=False, canonical=False):
    return basis_of(TORCH, pos, centroid, mask, proper, canonical)


def frame_in(x, basis, centroid=None):
    return into_frames(TORCH, x, basis, centroid)


def frame_tile(x, frames):
    return tile(TORCH, x, frames)


def frame_out(y, basis, centroid=None, kind="invariant"):
    return out_of_frames(TORCH, y, basis, centroid, kind, basis.shape[1])


def frame_conditioning(pos, mask=None):
    return conditioning(TORCH, pos, mask)


# -- the Python API --------------------------------------------------------------------------------
INPUT_ROLES = ("position", "vector", "scalar")


class FrameAverage(torch.nn.Module):
    """Frame averaging around any torch module, with the same arithmetic as the compiled graphs.

    `roles` gives each positional input's role: "position" ([B, N, 3], centered then rotated; the
    first one defines the frame), "vector" ([B, ..., 3], rotated) or "scalar" (tiled). The backbone
    runs once on B*F rows and returns an `out` kind: "invariant", "vector" or "position". A `mask`
    (bool [B, N]) restricts the frame to real points and reaches the backbone tiled, as `mask=`.
    """

    def __init__(self, backbone, roles, out="invariant", group="E3", canonical=False):
        super().__init__()
        if group not in GROUPS:
            raise ValueError(f"unknown group {group!r}; frames exist for {', '.join(GROUPS)}")
        if "position" not in roles or any(r not in INPUT_ROLES for r in roles):
            raise ValueError(f"roles {roles!r}: each is one of {INPUT_ROLES}, one at least a position")
        if out not in OUTPUT_KINDS:
            raise ValueError(f"unknown output kind {out!r}; use one of {OUTPUT_KINDS}")
        self.backbone, self.roles, self.out = backbone, tuple(roles), out
        self.proper, self.canonical = GROUPS[group], canonical

    def forward(self, *inputs, mask=None):
        pos = inputs[self.roles.index("position")]
        c = frame_centroid(pos, mask)
        frames = frame_basis(pos, c, mask, self.proper, self.canonical)
        count = frames.shape[1]
        moved = [frame_in(x, frames, c) if r == "position" else frame_in(x, frames) if r == "vector"
                 else frame_tile(x, count) for x, r in zip(inputs, self.roles)]
        extra = {} if mask is None else {"mask": frame_tile(mask, count)}
        y = self.backbone(*moved, **extra)
        return frame_out(y, frames, c if self.out == "position" else None, self.out)


def frame_average(module, roles, out="invariant", group="E3", canonical=False) -> FrameAverage:
    return FrameAverage(module, roles, out, group, canonical)
