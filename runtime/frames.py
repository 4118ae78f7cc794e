"""Frame averaging (Puny et al., ICLR 2022) for point clouds in 3D, in ops ONNX can run.

The arithmetic of the frame ops, whose definitions (fx targets, symmetry rules, ONNX emitters) are
in ops/frames.py. B is the batch, F the number of frames, coordinates are the last axis (3):

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
approximately invariant; frame_conditioning says where. A cloud whose spread is within rounding
of its coordinates (SPREAD_ULPS) counts as one point, all three tied: trace normalization would
otherwise make its rounding look like a well separated spectrum. The canonical frame
is exact only away from ties: also where a third moment along an axis is 0.

The kernels below take `m`, a namespace of tensor primitives: TORCH, or its twin OnnxMath, which
writes ONNX nodes, so torch and ONNX run the same arithmetic step for step.
"""
from __future__ import annotations

import itertools
import math

import numpy as np
import torch

from common.dtypes import name_of, numpy_dtype, onnx_type, torch_dtype
from runtime import native

# Gap below which an eigenvector (or its orthogonalized partner) counts as undetermined; the
# eigensolver works in float64 on a trace-normalized covariance, so this is relative.
TOL = 1e-9
# Relative eigen-gap under which two eigenvalues count as tied: the closed form resolves gaps to
# about 1e-8 (a square root of rounding error near a double root), so ties are decided well above.
GAP_TOL = 1e-6
# A cloud whose spread is within rounding of its coordinates is one point: every eigenvalue tied.
# Trace normalization would blow that rounding up into a spectrum that looks well separated, and a
# permutation or a translation, which changes the rounding, would turn the frame. Rounding of a
# computation's last steps leaves a few units in the last place (ulps); 64 is far above that.
SPREAD_ULPS = 64
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
EYE = np.eye(3)
# [cos θ, sin θ] @ ROOTS = cos θ, cos(θ - 2π/3), cos(θ + 2π/3)
ROOTS = np.array([[1.0, -0.5, -0.5], [0.0, math.sqrt(3.0) / 2, -math.sqrt(3.0) / 2]])
GAP_DIFFERENCES = np.array([[1.0, 0.0], [-1.0, 1.0], [0.0, -1.0]])        # λ @ it = λ1 - λ2, λ2 - λ3
LEVI_CIVITA = np.array([[[float(np.linalg.det(np.eye(3)[[i, j, k]])) for k in range(3)] for j in range(3)]
                        for i in range(3)]).reshape(9, 3)                    # row 3i + j, column k: ε_ijk


_CONSTANTS: dict = {}


def _constant(array, dtype, device) -> torch.Tensor:
    """A kernel constant as a tensor, made once: the kernels run every training step, and making
    ~40 small tensors from numpy cost as much as the arithmetic. Never written to in place."""
    a = np.asarray(array)
    key = (a.tobytes(), a.shape, a.dtype.str, dtype, device)
    if key in _CONSTANTS:
        return _CONSTANTS[key]
    tensor = torch.as_tensor(a, dtype=dtype, device=device)
    if type(tensor) is torch.Tensor:  # not a tracer's (torch.export's fake tensors): those die with the trace
        _CONSTANTS[key] = tensor
    return tensor


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
        return _constant(array, like.dtype, like.device)

    @staticmethod
    def cast(x, dtype):
        return x.to(torch_dtype(dtype))

    @staticmethod
    def dtype(x):
        return name_of(x.dtype)

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
        flat = x.index_select(axis, _constant(index.reshape(-1), torch.int64, x.device))
        return flat.reshape(x.shape[:axis] + index.shape + x.shape[axis + 1:])

    @staticmethod
    def onehot_argmax(x, largest, size=3):
        """One-hot (x's dtype) of the first largest (or smallest) of the `size` entries on the last axis."""
        k = x.argmax(-1) if largest else x.argmin(-1)
        return torch.nn.functional.one_hot(k, size).to(x.dtype)

    @staticmethod
    def norm(x):
        """Euclidean norm along the last axis, kept."""
        return torch.linalg.vector_norm(x, dim=-1, keepdim=True)

    @staticmethod
    def reduce_max(x):
        """Largest entry along the last axis, kept."""
        return x.amax(-1, keepdim=True)

    @staticmethod
    def reduce_min(x):
        return x.amin(-1, keepdim=True)


TORCH = _Torch


class _Value:
    """An ONNX value name with its dtype, so Python numbers can become constants of that dtype."""

    def __init__(self, name: str, dtype: str):
        self.name, self.dtype = name, dtype


class OnnxMath:
    """The same primitives as ONNX nodes, built with compiler/onnx_backend.py's GraphBuilder `g`."""

    def __init__(self, g):
        self.g = g

    def _name(self, a, dtype: str) -> str:
        return a.name if isinstance(a, _Value) else self.g.scalar(a, dtype)

    def _dtype(self, *args) -> str:
        return next(a.dtype for a in args if isinstance(a, _Value))

    def _op(self, op_type, *args, dtype=None, **attrs):
        dt = self._dtype(*args)
        return _Value(self.g.op(op_type, *(self._name(a, dt) for a in args), **attrs), dtype or dt)

    def wrap(self, node):
        return None if node is None else _Value(self.g.value(node), node.meta["dtype"])

    def fused(self, name: str | None, kernel, *args):
        """kernel(m, *args) as one call of the ONNX function invc.frames:`name`, whose body is the
        kernel's nodes: onnxruntime runs runtime/frames.c's kernel of that name where it is
        registered (runtime/native.py), any runtime the body elsewhere. No name: the nodes inline."""
        if name is None:
            return kernel(self, *args)
        given = [a for a in args if a is not None]

        def body(f, *formal):
            values = iter(_Value(n, a.dtype) for n, a in zip(formal, given))
            return kernel(OnnxMath(f), *(None if a is None else next(values) for a in args)).name
        return _Value(self.g.function(native.DOMAIN, name, [a.name for a in given], body), given[0].dtype)

    def add(self, a, b):
        return self._op("Add", a, b)

    def sub(self, a, b):
        return self._op("Sub", a, b)

    def mul(self, a, b):
        return self._op("Mul", a, b)

    def div(self, a, b):
        return self._op("Div", a, b)

    def maximum(self, a, b):
        return self._op("Max", a, b)

    def minimum(self, a, b):
        return self._op("Min", a, b)

    def matmul(self, a, b):
        return self._op("MatMul", a, b)

    def sqrt(self, x):
        return self._op("Sqrt", x)

    def abs(self, x):
        return self._op("Abs", x)

    def cos(self, x):
        return self._op("Cos", x)

    def acos(self, x):
        return self._op("Acos", x)

    def gt(self, a, b):
        return self._op("Greater", a, b, dtype="bool")

    def ge(self, a, b):
        return self._op("GreaterOrEqual", a, b, dtype="bool")

    def where(self, cond, a, b):
        dt = self._dtype(a, b)
        return _Value(self.g.op("Where", cond.name, self._name(a, dt), self._name(b, dt)), dt)

    def const(self, array, like):
        return _Value(self.g.const(np.asarray(array, numpy_dtype(like.dtype))), like.dtype)

    def cast(self, x, dtype):
        return x if x.dtype == dtype else _Value(self.g.op("Cast", x.name, to=onnx_type(dtype)), dtype)

    def dtype(self, x):
        return x.dtype

    def sum(self, x, axes, keepdim=False):
        return self._op("ReduceSum", x, _Value(self.g.ints(axes), "i64"), keepdims=int(keepdim))

    def mean(self, x, axes, keepdim=False):
        return self._op("ReduceMean", x, _Value(self.g.ints(axes), "i64"), keepdims=int(keepdim))

    def norm(self, x):
        return self._op("ReduceL2", x, _Value(self.g.ints([-1]), "i64"), keepdims=1)

    def reduce_max(self, x):
        return self._op("ReduceMax", x, _Value(self.g.ints([-1]), "i64"), keepdims=1)

    def reduce_min(self, x):
        return self._op("ReduceMin", x, _Value(self.g.ints([-1]), "i64"), keepdims=1)

    def prod(self, x, axis):
        return self._op("ReduceProd", x, _Value(self.g.ints([axis]), "i64"), keepdims=0)

    def transpose(self, x, perm):
        return self._op("Transpose", x, perm=list(perm))

    def reshape(self, x, spec):
        return self._op("Reshape", x, _Value(self.g.ints(spec), "i64"))

    def reshape_tail(self, x, lead, like, start):
        shape = self.g.op("Concat", self.g.ints(lead), self.g.op("Shape", like.name, start=start), axis=0)
        return _Value(self.g.op("Reshape", x.name, shape), x.dtype)

    def unsqueeze(self, x, axis):
        return _Value(self.g.op("Unsqueeze", x.name, self.g.ints([axis])), x.dtype)

    def concat(self, xs, axis):
        return _Value(self.g.op("Concat", *(x.name for x in xs), axis=axis), xs[0].dtype)

    def take(self, x, index, axis):
        return _Value(self.g.op("Gather", x.name, self.g.const(np.asarray(index, np.int64)), axis=axis),
                      x.dtype)

    def onehot_argmax(self, x, largest, size=3):
        # Equal against 0, 1, ... rather than OneHot, which onnxruntime lacks for float64 values.
        k = self.g.op("ArgMax" if largest else "ArgMin", x.name, axis=-1, keepdims=1)
        hit = self.g.op("Equal", k, self.g.const(np.arange(size, dtype=np.int64)))
        return _Value(self.g.op("Cast", hit, to=onnx_type(x.dtype)), x.dtype)


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
    count = m.sum(m.cast(keep, m.dtype(pos)), (1,), True)
    return m.div(total, m.maximum(count, m.const(1.0, pos)))


def covariance(m, pos, c, mask):
    """Σ (x - c)(x - c)ᵀ over the real points, in float64 [B, 3, 3]."""
    xc = m.sub(pos, c)
    if mask is not None:
        xc = m.where(real_points(m, pos, mask), xc, 0.0)  # padding, NaN included, must not count
    xc = m.cast(xc, "f64")
    return m.matmul(m.transpose(xc, (0, 2, 1)), xc)


def rounding_floor(m, pos, mask):
    """[B, 1, 1] float64: the covariance trace at or under which the cloud counts as one point,
    (SPREAD_ULPS·eps)² Σ |x|² over its real points (eps of the points' dtype)."""
    x = pos if mask is None else m.where(real_points(m, pos, mask), pos, 0.0)
    x = m.cast(x, "f64")
    ulps = SPREAD_ULPS * float(np.finfo(numpy_dtype(m.dtype(pos))).eps)
    return m.mul(m.sum(m.mul(x, x), (-2, -1), True), ulps * ulps)


def cloud_axes(m, pos, c, mask):
    """principal_axes of the cloud's covariance, a cloud collapsed to rounding counted as a point."""
    return principal_axes(m, covariance(m, pos, c, mask), rounding_floor(m, pos, mask))


def adjugate(m, a, lead: int):
    """Cofactor matrix of a [..., 3, 3] (= adjugate for symmetric a); `lead` = rank - 2."""
    flat = m.reshape(a, [0] * lead + [9])
    pairs = m.prod(m.take(flat, COFACTORS, -1), -3)                       # [..., 2, 3, 3]
    return m.sum(m.mul(pairs, m.const(np.array([1.0, -1.0]).reshape(2, 1, 1), a)), (-3,))


def eigenvalues(m, b):
    """λ1 >= λ2 >= λ3 [B, 1, 3] of symmetric traceless b [B, 3, 3], by the trigonometric closed
    form λ = 2p·cos(θ + 2πk/3), where 6p² = tr(b²) and cos 3θ = det(b) / (2p³) = tr(b³)·√6 / tr(b²)^1.5."""
    square = m.sum(m.mul(b, b), (-2, -1), True)
    cube = m.sum(m.mul(m.matmul(b, b), b), (-2, -1), True)
    root = m.sqrt(square)
    r = m.div(m.mul(cube, math.sqrt(6.0)), m.maximum(m.mul(square, root), m.const(1e-90, b)))
    # The roots of -b are those of b negated, in reverse order, and its r is -r: solving for
    # whichever of b, -b has r >= 0 keeps the top root t in [cos π/6, 1], away from the double root.
    flip = m.gt(m.const(0.0, b), r)
    r = m.minimum(m.abs(r), m.const(1.0, b))
    # t = cos θ, the largest root of 4t³ - 3t = r. ONNX has no float64 Acos, so it starts in
    # float32 and one Newton step on the cubic (slope 12t² - 3 >= 6 there) restores float64.
    t = m.cast(m.cos(m.div(m.acos(m.cast(r, "f32")), 3.0)), "f64")
    t2 = m.mul(t, t)
    residual = m.sub(m.mul(t, m.sub(m.mul(t2, 4.0), 3.0)), r)
    t = m.sub(t, m.div(residual, m.sub(m.mul(t2, 12.0), 3.0)))
    # cos(θ ∓ 2π/3) = -t/2 ± (√3/2)·sin θ: the smaller gaps come from sin θ, not from differences
    # of cosines, so a near-double root keeps its float64 gap.
    sine = m.sqrt(m.maximum(m.sub(m.const(1.0, b), m.mul(t, t)), m.const(0.0, b)))
    roots = m.where(flip, m.const(-ROOTS[:, ::-1], b), m.const(ROOTS, b))              # [B, 2, 3]
    return m.matmul(m.mul(m.concat([t, sine], -1), m.mul(root, math.sqrt(2.0 / 3.0))), roots)


def _unit(m, v):
    """v / |v| along the last axis (0 where v = 0)."""
    return m.div(v, m.maximum(m.norm(v), m.const(1e-300, v)))


def _eigenvectors(m, b, lam):
    """Unit eigenvectors [B, 2, 3] for λ1 and λ3. adj(b - λI) = Π(λj - λ)·v vᵀ for a simple λ, whose
    diagonal is positive at both ends of the spectrum: its largest column is the best scaled."""
    ends = m.reshape(m.take(lam, np.array([0, 2]), -1), [0, 2, 1, 1])
    adj = adjugate(m, m.sub(m.unsqueeze(b, 1), m.mul(ends, m.const(EYE, b))), 2)      # [B, 2, 3, 3]
    pick = m.onehot_argmax(m.sum(m.mul(adj, m.const(EYE, b)), (-2,), True), True)   # [B, 2, 1, 3]
    return _unit(m, m.sum(m.mul(adj, pick), (-1,)))


def _cross(m, a, b):
    """a × b [B, 1, 3] as the Levi-Civita contraction of the outer product a bᵀ."""
    outer = m.reshape(m.matmul(m.transpose(a, (0, 2, 1)), b), [0, 1, 9])
    return m.matmul(outer, m.const(LEVI_CIVITA, a))


def principal_axes(m, cov, floor=None):
    """Right-handed orthonormal eigenvectors [B, 3, 3] (columns, by decreasing eigenvalue), and
    the relative eigen-gaps λ1 - λ2, λ2 - λ3 [B, 1, 2]. The better separated end of the spectrum
    is trusted; a gap under GAP_TOL counts as a tie, whose eigenvectors fall back to fixed axes.
    A trace at or under `floor` [B, 1, 1] (rounding_floor) ties every gap: the fixed axes."""
    trace = m.sum(m.mul(cov, m.const(EYE, cov)), (-2, -1), True)
    scale = m.maximum(trace, m.const(1e-300, cov))
    # Trace-normalized and made traceless: the same eigenvectors, eigenvalues shifted by 1/3 (all
    # 0 for a cloud of coincident points, whose trace is 0).
    b = m.sub(m.div(cov, scale), m.mul(m.div(trace, scale), m.const(EYE / 3, cov)))
    lam = eigenvalues(m, b)
    gaps = m.matmul(lam, m.const(GAP_DIFFERENCES, lam))                        # [B, 1, 2]
    if floor is not None:  # (a NaN trace compares false, and its NaN gaps stay)
        gaps = m.where(m.ge(floor, trace), 0.0, gaps)
    # One-hot of the larger gap, as the permutation [[p1, p3], [p3, p1]]: it puts the trusted end
    # first, and the same matrix puts it back in place (v1 first, g12 >= g23 when equal).
    pick = m.onehot_argmax(gaps, True, 2)
    order = m.concat([pick, m.sub(m.const(1.0, pick), pick)], -2)             # [B, 2, 2]
    trusted = m.matmul(order, _eigenvectors(m, b, lam))                        # [B, 2, 3]
    clear = m.gt(m.reduce_max(gaps), m.const(GAP_TOL, b))   # one end is simple
    both = m.gt(m.reduce_min(gaps), m.const(GAP_TOL, b))    # all three distinct
    u = m.where(clear, m.take(trusted, np.array([0]), -2), m.const(EYE[:1], b))
    # The least aligned coordinate axis stands in for an eigenvector of a tied pair.
    other = m.where(both, m.take(trusted, np.array([1]), -2), m.onehot_argmax(m.abs(u), False))
    w = _unit(m, _reject(m, other, u))
    placed = m.matmul(order, m.concat([u, w], -2))                            # rows v1, v3
    first, last = m.take(placed, np.array([0]), -2), m.take(placed, np.array([1]), -2)
    basis = m.concat([first, _cross(m, last, first), last], -2)               # v3 × v1 = v2
    return m.transpose(basis, (0, 2, 1)), gaps


def _reject(m, w, u):
    """w minus its component along unit u."""
    return m.sub(w, m.mul(m.sum(m.mul(w, u), (-1,), True), u))


def _third_moment_signs(m, pos, c, mask, axes, proper):
    """±1 per axis [B, 1, 1, 3]: the sign making Σ y³ >= 0 along it. A third moment within float64
    rounding of the cloud's scale, SPREAD_ULPS·eps64·(Σ |y|²)^(3/2), is a tie and counts as +: along
    the normal of a planar cloud (3 points, or fewer live under a mask) every y is rounding, and the
    sign of their cubes' sum would be that of whichever runtime summed it. (A moment born of the
    input dtype's rounding, as along a 2-point cloud's line, is far above this and stays a sign.)"""
    y = m.matmul(m.cast(m.sub(pos, c), "f64"), axes)
    if mask is not None:
        y = m.where(real_points(m, pos, mask), y, 0.0)
    square = m.sum(m.mul(y, y), (1, 2), True)                                           # [B, 1, 1]
    margin = m.mul(m.mul(square, m.sqrt(square)), SPREAD_ULPS * float(np.finfo(np.float64).eps))
    positive = m.ge(m.add(m.sum(m.mul(m.mul(y, y), y), (1,), True), margin), m.const(0.0, y))
    signs = m.where(positive, m.const(1.0, y), m.const(-1.0, y))                      # [B, 1, 3]
    if proper:  # the third axis follows the first two so det stays +1
        s1, s2 = m.take(signs, np.array([0]), -1), m.take(signs, np.array([1]), -1)
        signs = m.concat([s1, s2, m.mul(s1, s2)], -1)
    return m.unsqueeze(signs, 1)


def basis_of(m, pos, c, mask, proper, canonical):
    axes, _ = cloud_axes(m, pos, c, mask)
    signs = _third_moment_signs(m, pos, c, mask, axes, proper) if canonical else \
        m.const(_sign_patterns(proper), axes)
    return m.cast(m.mul(m.unsqueeze(axes, 1), signs), m.dtype(pos))


def conditioning(m, pos, mask):
    gaps = cloud_axes(m, pos, centroid_of(m, pos, mask), mask)[1]
    smaller = m.reduce_min(gaps)
    # Rounding can leave a tied gap a hair below 0.
    return m.cast(m.reshape(m.maximum(smaller, m.const(0.0, smaller)), [-1]), m.dtype(pos))


def _patterns(frames: int) -> np.ndarray | None:
    """The sign patterns of a basis of `frames` frames, [F, 1, 3] (None for one frame). Frame f
    is frame 0 with its columns times pattern f, exactly (the first pattern is all +1)."""
    return None if frames == 1 else _sign_patterns(frames == 4)


def into_frames(m, x, basis, c, frames: int):
    """[B, ..., 3] -> [B*F, ..., 3]: coordinates along each frame's axes, after centering if c.
    One product with frame 0, then the sign patterns: the other frames only flip its columns."""
    flat = m.reshape(x, [0, -1, 3])
    if c is not None:
        flat = m.sub(flat, c)
    moved = m.matmul(m.unsqueeze(flat, 1), m.take(basis, np.array([0]), 1))       # [B, 1, M, 3]
    if frames > 1:
        moved = m.mul(moved, m.const(_patterns(frames), moved))
    return m.reshape_tail(moved, [-1], x, 1)


def tile(m, x, frames: int):
    if frames == 1:  # one frame: the rows are the batch's own
        return x
    return m.reshape_tail(m.concat([m.unsqueeze(x, 1)] * frames, 1), [-1], x, 1)


def out_of_frames(m, y, basis, c, kind: str, frames: int):
    if kind == "invariant" and frames == 1:  # the mean of one frame's rows is those rows
        return y
    per_frame = m.reshape_tail(y, [-1, frames], y, 1)                      # [B, F, ...]
    if kind == "invariant":
        return m.mean(per_frame, (1,))
    per_frame = m.reshape(per_frame, [0, 0, -1, 3])
    if frames > 1:  # undo the sign patterns first, so one product with frame 0 maps all back
        per_frame = m.mul(per_frame, m.const(_patterns(frames), per_frame))
    back = m.matmul(m.mean(per_frame, (1,), True), m.transpose(m.take(basis, np.array([0]), 1), (0, 1, 3, 2)))
    back = m.reshape(back, [0, -1, 3])                                       # [B, M, 3]
    if kind == "position":
        back = m.add(back, c)
    return m.reshape_tail(back, [-1], y, 1)


OUTPUT_KINDS = ("invariant", "vector", "position")


# -- how exact each mode is on given clouds --------------------------------------------------------
# fp32 inputs move by ~1e-7 relative under a rotation, a frame axis by ~1e-7 / gap, and a third
# moment by ~1e-7 of its scale: below these margins the canonical frame's error nears verify's fp32
# pass mark of 1e-4 (measured in benchmarks/frame_exactness.py; all 8 frames average it down ~20x).
EXACT_GAP, EXACT_MARGIN = 1e-3, 1e-5


def sign_margin(pos, mask=None, proper=False):
    """[B]: how far the canonical frame's signs are from flipping, min over the axes whose sign it
    chooses of |Σ y³| / (Σ |y|²)^(3/2), y the centered points along the axis (0: a third moment
    vanishes, as in any point-symmetric cloud, and the canonical frame is ambiguous there)."""
    c = centroid_of(TORCH, pos, mask)
    axes, _ = cloud_axes(TORCH, pos, c, mask)
    y = (pos - c).double() @ axes
    if mask is not None:
        y = torch.where(mask[..., None], y, 0.0)
    cube = (y ** 3).sum(1).abs()[:, :2 if proper else 3]
    return (cube.amin(-1) / (y * y).sum((1, 2)).clamp_min(1e-200) ** 1.5).to(pos.dtype)


def recommend(pos, mask=None, proper=False) -> str:
    """One line: canonical=true or all frames, from the worst conditioning and sign margin of
    these clouds (for `invc verify`, on its sampled inputs; call it on real data too)."""
    gap = float(conditioning(TORCH, pos, mask).min())
    margin = float(sign_margin(pos, mask, proper).min())
    measured = f"worst eigen-gap conditioning {gap:.1e}, sign margin {margin:.1e}"
    if gap <= GAP_TOL:
        return f"frames: use all frames (canonical=false); neither mode is exact on tied spectra ({measured})"
    if gap < EXACT_GAP or margin < EXACT_MARGIN:
        return (f"frames: use all frames (canonical=false) ({measured}): canonical=true needs a conditioning >= "
                f"{EXACT_GAP:g} and a sign margin >= {EXACT_MARGIN:g} (point-symmetric clouds have 0)")
    return (f"frames: canonical=true is exact on these clouds too ({measured}), for 1 backbone call "
            f"instead of {4 if proper else 8}")


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
        c = centroid_of(TORCH, pos, mask)
        frames = basis_of(TORCH, pos, c, mask, self.proper, self.canonical)
        count = frames.shape[1]
        moved = [into_frames(TORCH, x, frames, c if r == "position" else None, count) if r != "scalar"
                 else tile(TORCH, x, count) for x, r in zip(inputs, self.roles)]
        extra = {} if mask is None else {"mask": tile(TORCH, mask, count)}
        y = self.backbone(*moved, **extra)
        return out_of_frames(TORCH, y, frames, c if self.out == "position" else None, self.out, count)


def frame_average(module, roles, out="invariant", group="E3", canonical=False) -> FrameAverage:
    return FrameAverage(module, roles, out, group, canonical)
