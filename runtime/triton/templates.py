"""Triton kernel templates. Each config renders one specialized kernel plus its launcher, as source.

A config is a frozen dataclass. Everything in it (dtype, feature widths, reduction kind, the fused
per-row ops) is baked into the kernel as constexprs; only sizes that vary per call (rows, sets)
stay runtime arguments. The same text is written into the modules `invc compile --target triton`
emits and loaded by the runtime custom ops, so there is one copy of every kernel.
"""
from __future__ import annotations

from dataclasses import dataclass

from common.dtypes import TABLE
from runtime.triton.build import literal

ACTIVATIONS = {  # per-element maps in Triton; tl has no tanh, so it goes through the sigmoid
    "relu": "tl.maximum({h}, 0.0)",
    "gelu": "0.5 * {h} * (1.0 + tl.erf({h} * 0.7071067811865476))",
    "silu": "{h} * tl.sigmoid({h})",
    "sigmoid": "tl.sigmoid({h})",
    "tanh": "2.0 * tl.sigmoid(2.0 * {h}) - 1.0",
}
REDUCTIONS = ("sum", "mean", "max", "min")
KERNEL_DTYPES = ("f16", "f32")  # loaded as fp32, accumulated in fp32, stored back in this dtype
MAX_FUSED_WIDTH = 256  # a fused linear keeps its whole weight tile in registers
BLOCK_ROWS = 32
CHUNK_ROWS = 16 * BLOCK_ROWS


def torch_name(dtype: str) -> str:
    """A dtype as generated source spells it: "f16" -> "torch.float16"."""
    return f"torch.{TABLE[dtype][0]}"


def padded(width: int) -> int:
    """A tile width for `width` features: a power of two, at least 16 so tl.dot accepts it."""
    return max(16, 1 << (width - 1).bit_length())


@dataclass(frozen=True)
class Linear:
    """One fused per-row linear map, weight [d_out, d_in]."""
    d_in: int
    d_out: int
    bias: bool = True


@dataclass(frozen=True)
class Act:
    """One fused per-element activation, a key of ACTIVATIONS."""
    name: str


def out_width(d_in: int, steps: tuple) -> int:
    return next((s.d_out for s in reversed(steps) if isinstance(s, Linear)), d_in)


def describe(steps: tuple, arg: str = "x") -> str:
    """`relu(linear(x))` for the steps applied in order."""
    for s in steps:
        arg = f"linear({arg})" if isinstance(s, Linear) else f"{s.name}({arg})"
    return arg


def weight_args(steps: tuple) -> list[str]:
    """The launcher's names for the steps' weights, in kernel-argument order."""
    names = []
    for i, s in enumerate(x for x in steps if isinstance(x, Linear)):
        names += [f"w{i}"] + ([f"b{i}"] if s.bias else [])
    return names


def row_map(steps: tuple, width: int, indent: str) -> list[str]:
    """Lines applying `steps` to the tile `h` [BLOCK_ROWS, padded(width)]; padded columns stay
    finite and meet zero weight columns, so they never leak into real ones."""
    lines, i = [], 0
    for s in steps:
        if isinstance(s, Act):
            lines.append(f"h = {ACTIVATIONS[s.name].format(h='h')}  # {s.name}")
            continue
        p_in, p_out = padded(s.d_in), padded(s.d_out)
        lines += [f"# linear {i}: {s.d_in} -> {s.d_out} features",
                  f"k = tl.arange(0, {p_in})",
                  f"j = tl.arange(0, {p_out})",
                  f"w = tl.load(w{i}_ptr + j[:, None] * {s.d_in} + k[None, :],",
                  f"            mask=(j < {s.d_out})[:, None] & (k < {s.d_in})[None, :], other=0.0)",
                  'h = tl.dot(h, tl.trans(w.to(tl.float32)), input_precision="ieee")']
        if s.bias:
            lines.append(f"h += tl.load(b{i}_ptr + j, mask=j < {s.d_out}, other=0.0).to(tl.float32)[None, :]")
        i, width = i + 1, s.d_out
    return [indent + line for line in lines]


# -- segment reductions --------------------------------------------------------------------------
@dataclass(frozen=True)
class SegmentReduce:
    """`kind` over each set of rows of x [rows, d_in] after the fused per-row `steps`.

    layout "csr": sets are CSR offsets; two kernels, one program per set (deterministic) and one
    per chunk with atomics (for very unbalanced sets), the launcher picks. "dense": x is
    [..., N, d_in] and the sets are its N axis; "masked" adds a bool [..., N] mask of members."""
    name: str
    kind: str
    layout: str
    d_in: int
    steps: tuple = ()
    dtype: str = "f32"
    origin: str = ""

    @property
    def d_out(self) -> int:
        return out_width(self.d_in, self.steps)

    @property
    def kernels(self) -> list[str]:
        base = f"{self.name}_segment_{self.kind}"
        return [f"{base}_csr_kernel", f"{base}_atomic_kernel"] if self.layout == "csr" else \
            [f"{base}_{self.layout}_kernel"]

    def summary(self) -> str:
        over = {"csr": "ragged sets (CSR offsets)", "dense": "axis -2", "masked": "masked axis -2"}
        return f"{self.kind} over {over[self.layout]} of {describe(self.steps)}"

    def source(self) -> str:
        if self.layout == "csr":
            kernels = [self._kernel("csr"), self._kernel("atomic")]
        else:
            kernels = [self._kernel(self.layout)]
        return "\n\n".join(kernels + [self._launcher()])

    # The reduction's identity: padding rows take it, so they never win a max or add to a sum.
    def _identity(self) -> str:
        return {"max": 'float("-inf")', "min": 'float("inf")'}.get(self.kind, "0.0")

    def _combine(self, a: str, b: str) -> str:
        return {"max": f"tl.maximum({a}, {b})", "min": f"tl.minimum({a}, {b})"}.get(self.kind, f"{a} + {b}")

    def _kernel(self, variant: str) -> str:
        name = self.kernels[["csr", "atomic"].index(variant)] if self.layout == "csr" else self.kernels[0]
        p_in, p_out = padded(self.d_in), padded(self.d_out)
        args = {"csr": ["x_ptr", "offsets_ptr"],
                "atomic": ["x_ptr", "offsets_ptr", "chunk_segment_ptr", "chunk_start_ptr"],
                "dense": ["x_ptr"], "masked": ["x_ptr", "mask_ptr"]}[variant]
        args += [f"{w}_ptr" for w in weight_args(self.steps)] + ["out_ptr"]
        args += ["set_size"] if variant in ("dense", "masked") else []
        args += ["CHUNK_ROWS: tl.constexpr"] if variant == "atomic" else []
        lines = [self._header(variant), "@triton.jit", f"def {name}({', '.join(args)}, BLOCK_ROWS: tl.constexpr):",
                 f"    D_IN: tl.constexpr = {self.d_in}", f"    D_OUT: tl.constexpr = {self.d_out}",
                 f"    P_IN: tl.constexpr = {p_in}  # tile widths: powers of two, >= 16 for tl.dot",
                 f"    P_OUT: tl.constexpr = {p_out}"]
        lines += _SET_BOUNDS[variant]
        lines += ["    cols = tl.arange(0, P_OUT)",
                  f"    acc = tl.full((P_OUT,), {self._identity()}, tl.float32)"]
        lines += ["    count = 0.0  # members seen"] if variant == "masked" and self.kind != "sum" else []
        lines += ["    for first in range(start, end, BLOCK_ROWS):",
                  "        rows = first + tl.arange(0, BLOCK_ROWS)",
                  "        member = rows < end"]
        if variant == "masked":
            lines += ["        member &= tl.load(mask_ptr + rows, mask=rows < end, other=0) != 0"]
            lines += ["        count += tl.sum(member.to(tl.float32), 0)"] if self.kind != "sum" else []
        lines += ["        k = tl.arange(0, P_IN)",
                  "        h = tl.load(x_ptr + rows[:, None] * D_IN + k[None, :],",
                  "                    mask=member[:, None] & (k < D_IN)[None, :], other=0.0).to(tl.float32)"]
        lines += row_map(self.steps, self.d_in, "        ")
        tile = f"tl.where(member[:, None], h, {self._identity()})"
        reduce = {"max": "tl.max", "min": "tl.min"}.get(self.kind, "tl.sum")
        lines.append(f"        acc = {self._combine('acc', f'{reduce}({tile}, 0)')}")
        lines += self._finish(variant)
        return "\n".join(lines)

    def _header(self, variant: str) -> str:
        how = {"csr": "one program per set, no atomics: deterministic",
               "atomic": "one program per chunk of a set, chunks combined with atomics",
               "dense": "one program per set", "masked": "one program per set"}[variant]
        lines = [f"# {self.summary()}; {how}."]
        lines += [f"# From {self.origin}."] if self.origin else []
        return "\n".join(lines)

    def _finish(self, variant: str) -> list[str]:
        if variant == "atomic":  # the launcher divides means and zeroes empty sets afterwards
            op = {"max": "atomic_max", "min": "atomic_min"}.get(self.kind, "atomic_add")
            return [f"    tl.{op}(out_ptr + segment * D_OUT + cols, acc, mask=cols < D_OUT)"]
        count = {"csr": "(end - start).to(tl.float32)", "dense": "set_size * 1.0", "masked": "count"}[variant]
        needs_count = self.kind != "sum" and variant != "masked"
        lines = [f"    count = {count}"] if needs_count else []
        if self.kind == "mean":
            lines.append("    acc = acc / tl.maximum(count, 1.0)")
        if self.kind in ("max", "min"):
            lines.append("    acc = tl.where(count > 0, acc, 0.0)  # an empty set reduces to 0")
        return lines + ["    tl.store(out_ptr + segment * D_OUT + cols, acc.to(out_ptr.dtype.element_ty), "
                        "mask=cols < D_OUT)"]

    def _launcher(self) -> str:
        weights = weight_args(self.steps)
        head = {"csr": ["x", "offsets"], "dense": ["x"], "masked": ["x", "mask"]}[self.layout]
        params = head + weights + (['variant="auto"'] if self.layout == "csr" else [])
        doc = f'    """{self.summary()}: x [{"rows" if self.layout == "csr" else "..., N"}, {self.d_in}] -> '
        doc += f'[{"sets" if self.layout == "csr" else "..."}, {self.d_out}]."""'
        lines = [f"def launch_{self.name}({', '.join(params)}):", doc]
        lines += [f"    {line}" for line in _weight_checks(self.steps, self.dtype)]
        lines += getattr(self, f"_launch_{self.layout}")()
        return "\n".join(lines)

    def _launch_csr(self) -> list[str]:
        csr, atomic = self.kernels
        fp = torch_name(self.dtype)
        identity = {"max": 'float("-inf")', "min": 'float("inf")'}.get(self.kind, "0.0")
        weights = "".join(f"{w}, " for w in weight_args(self.steps))
        lines = [f'check_tensor("x", x, {fp}, (None, {self.d_in}))',
                 'check_device("offsets", offsets)',
                 "check_offsets(offsets, x.shape[0])",
                 "x, sets = x.contiguous(), len(offsets) - 1",
                 f"if variant == \"auto\":",
                 f"    variant = \"atomic\" if unbalanced(offsets, {CHUNK_ROWS}) else \"csr\"",
                 "if variant == \"csr\":",
                 f"    out = torch.empty((sets, {self.d_out}), dtype={fp}, device=x.device)",
                 "    if sets:",
                 f"        {csr}[(sets,)](x, offsets, {weights}out, BLOCK_ROWS={BLOCK_ROWS})",
                 "    return out",
                 "if variant != \"atomic\":",
                 "    raise LaunchError(f\"variant must be 'auto', 'csr' or 'atomic', got {variant!r}\")",
                 f"segment, start = chunk_table(offsets, {CHUNK_ROWS})",
                 f"out = torch.full((sets, {self.d_out}), {identity}, dtype=torch.float32, device=x.device)",
                 "if len(segment):",
                 f"    {atomic}[(len(segment),)](x, offsets, segment, start, {weights}out, "
                 f"CHUNK_ROWS={CHUNK_ROWS}, BLOCK_ROWS={BLOCK_ROWS})",
                 ]
        if self.kind != "sum":
            lines.append("sizes = (offsets[1:] - offsets[:-1])[:, None]")
        if self.kind == "mean":
            lines.append("out /= sizes.clamp(min=1)")
        if self.kind in ("max", "min"):
            lines.append("out.masked_fill_(sizes == 0, 0.0)  # an empty set reduces to 0")
        lines.append("return out" if self.dtype == "f32" else f"return out.to({fp})")
        return [f"    {line}" for line in lines]

    def _launch_dense(self) -> list[str]:
        return [f"    {line}" for line in self._dense_lines(masked=False)]

    def _launch_masked(self) -> list[str]:
        return [f"    {line}" for line in self._dense_lines(masked=True)]

    def _dense_lines(self, masked: bool) -> list[str]:
        kernel, fp = self.kernels[0], torch_name(self.dtype)
        weights = "".join(f"{w}, " for w in weight_args(self.steps))
        lines = [f'if x.dim() < 2 or x.shape[-1] != {self.d_in}:',
                 f'    raise LaunchError(f"x must have shape [..., N, {self.d_in}], got {{list(x.shape)}}")',
                 f'check_tensor("x", x, {fp}, tuple(x.shape))']
        if masked:
            lines += ['check_tensor("mask", mask, torch.bool, tuple(x.shape[:-1]))']
        lines += ["lead, set_size = x.shape[:-2], x.shape[-2]",
                  f"x = x.reshape(-1, set_size, {self.d_in}).contiguous()",
                  f"out = torch.empty((x.shape[0], {self.d_out}), dtype={fp}, device=x.device)",
                  "if x.shape[0]:"]
        members = "mask.reshape(-1).contiguous().view(torch.uint8), " if masked else ""
        lines += [f"    {kernel}[(x.shape[0],)](x, {members}{weights}out, set_size, BLOCK_ROWS={BLOCK_ROWS})",
                  f"return out.reshape(*lead, {self.d_out})"]
        return lines


_SET_BOUNDS = {  # each kernel's set (its program) and the rows [start, end) it reduces
    "csr": ["    segment = tl.program_id(0)",
            "    start = tl.load(offsets_ptr + segment).to(tl.int64)",
            "    end = tl.load(offsets_ptr + segment + 1).to(tl.int64)"],
    "atomic": ["    chunk = tl.program_id(0)",
               "    segment = tl.load(chunk_segment_ptr + chunk)",
               "    start = tl.load(chunk_start_ptr + chunk).to(tl.int64)",
               "    end = tl.minimum(start + CHUNK_ROWS, tl.load(offsets_ptr + segment + 1).to(tl.int64))"],
    "dense": ["    segment = tl.program_id(0).to(tl.int64)",
              "    start = segment * set_size",
              "    end = start + set_size"],
}
_SET_BOUNDS["masked"] = _SET_BOUNDS["dense"]


def _weight_checks(steps: tuple, dtype: str) -> list[str]:
    """Check the fused linears' weights, then make them row-major, as the kernels index them."""
    lines, linears = [], [s for s in steps if isinstance(s, Linear)]
    for i, s in enumerate(linears):
        lines.append(f'check_tensor("w{i}", w{i}, {torch_name(dtype)}, ({s.d_out}, {s.d_in}))')
        if s.bias:
            lines.append(f'check_tensor("b{i}", b{i}, {torch_name(dtype)}, ({s.d_out},))')
    return lines + contiguous(weight_args(steps))


def contiguous(names: list[str]) -> list[str]:
    """A launcher line making these tensors row-major, as the kernels index them."""
    if len(names) < 2:
        return [f"{n} = {n}.contiguous()" for n in names]
    return [f"{', '.join(names)} = (t.contiguous() for t in ({', '.join(names)}))"]


# -- rmsnorm followed by the linear that reads it ------------------------------------------------
@dataclass(frozen=True)
class RMSNormLinear:
    """act(linear(rmsnorm(x, g, eps), W, b)) for x [..., d_in]: what rotation folding leaves
    (there g is gone, folded into W). `epilogue` holds the fused activations after the linear."""
    name: str
    d_in: int
    d_out: int
    eps: float
    norm_weight: bool = False
    bias: bool = True
    epilogue: tuple = ()
    dtype: str = "f32"
    origin: str = ""

    @property
    def kernels(self) -> list[str]:
        return [f"{self.name}_rmsnorm_linear_kernel"]

    def summary(self) -> str:
        return f"{describe(self.epilogue, 'linear(rmsnorm(x))')}, {self.d_in} -> {self.d_out} features"

    def source(self) -> str:
        return self._kernel() + "\n\n\n" + self._launcher()

    def _kernel(self) -> str:
        args = ["x_ptr"] + (["g_ptr"] if self.norm_weight else []) + ["w_ptr"]
        args += (["b_ptr"] if self.bias else []) + ["out_ptr", "rows"]
        lines = [f"# {self.summary()}: one pass over x, where the sum of squares and the matmul",
                 "# share each loaded tile; 1/rms scales the accumulator at the end, since",
                 "# rmsnorm(x) W^T = (x W^T) / rms(x) row by row."]
        lines += [f"# From {self.origin}."] if self.origin else []
        lines += ["@triton.jit",
                  f"def {self.kernels[0]}({', '.join(args)}, BLOCK_ROWS: tl.constexpr, "
                  "BLOCK_OUT: tl.constexpr, BLOCK_K: tl.constexpr):",
                  f"    D_IN: tl.constexpr = {self.d_in}", f"    D_OUT: tl.constexpr = {self.d_out}",
                  f"    EPS: tl.constexpr = {literal(self.eps)}",
                  "    row = (tl.program_id(0) * BLOCK_ROWS + tl.arange(0, BLOCK_ROWS)).to(tl.int64)",
                  "    col = tl.program_id(1) * BLOCK_OUT + tl.arange(0, BLOCK_OUT)",
                  "    acc = tl.zeros((BLOCK_ROWS, BLOCK_OUT), tl.float32)",
                  "    squares = tl.zeros((BLOCK_ROWS,), tl.float32)",
                  "    for k0 in range(0, D_IN, BLOCK_K):",
                  "        k = k0 + tl.arange(0, BLOCK_K)",
                  "        x = tl.load(x_ptr + row[:, None] * D_IN + k[None, :],",
                  "                    mask=(row < rows)[:, None] & (k < D_IN)[None, :], other=0.0).to(tl.float32)",
                  "        squares += tl.sum(x * x, 1)"]
        if self.norm_weight:
            lines.append("        x *= tl.load(g_ptr + k, mask=k < D_IN, other=0.0).to(tl.float32)[None, :]")
        lines += ["        w = tl.load(w_ptr + col[:, None] * D_IN + k[None, :],",
                  "                    mask=(col < D_OUT)[:, None] & (k < D_IN)[None, :], other=0.0)",
                  '        acc = tl.dot(x, tl.trans(w.to(tl.float32)), acc, input_precision="ieee")',
                  "    h = acc * tl.rsqrt(squares / D_IN + EPS)[:, None]"]
        if self.bias:
            lines.append("    h += tl.load(b_ptr + col, mask=col < D_OUT, other=0.0).to(tl.float32)[None, :]")
        lines += [f"    {line}" for line in row_map(self.epilogue, self.d_out, "")]
        lines += ["    tl.store(out_ptr + row[:, None] * D_OUT + col[None, :], h.to(out_ptr.dtype.element_ty),",
                  "             mask=(row < rows)[:, None] & (col < D_OUT)[None, :])"]
        return "\n".join(lines)

    def _launcher(self) -> str:
        params = ["x"] + (["g"] if self.norm_weight else []) + ["w"] + (["b"] if self.bias else [])
        fp = torch_name(self.dtype)
        block_k, block_out = min(64, padded(self.d_in)), min(64, padded(self.d_out))
        lines = [f"def launch_{self.name}({', '.join(params)}):",
                 f'    """{self.summary()}: x [..., {self.d_in}] -> [..., {self.d_out}]."""',
                 f'    if x.dim() < 1 or x.shape[-1] != {self.d_in}:',
                 f'        raise LaunchError(f"x must have shape [..., {self.d_in}], got {{list(x.shape)}}")',
                 f'    check_tensor("x", x, {fp}, tuple(x.shape))']
        lines += [f'    check_tensor("g", g, {fp}, ({self.d_in},))'] if self.norm_weight else []
        lines += [f'    check_tensor("w", w, {fp}, ({self.d_out}, {self.d_in}))']
        lines += [f'    check_tensor("b", b, {fp}, ({self.d_out},))'] if self.bias else []
        tensors = ", ".join(params)
        lines += [f"    {line}" for line in contiguous(params)]
        lines += [
                  "    lead, rows = x.shape[:-1], x.numel() // " + str(self.d_in),
                  f"    out = torch.empty((rows, {self.d_out}), dtype={fp}, device=x.device)",
                  "    if rows:",
                  f"        grid = (triton.cdiv(rows, {BLOCK_ROWS}), triton.cdiv({self.d_out}, {block_out}))",
                  f"        {self.kernels[0]}[grid]({tensors}, out, rows, BLOCK_ROWS={BLOCK_ROWS}, "
                  f"BLOCK_OUT={block_out}, BLOCK_K={block_k})",
                  f"    return out.reshape(*lead, {self.d_out})"]
        return "\n".join(lines)


# -- PCA frames for frame averaging --------------------------------------------------------------
FRAME_HELPERS = '''
# 3x3 symmetric eigensolver helpers for the PCA frame kernels: cyclic Jacobi rotations on scalars.
@triton.jit
def jacobi_rotation(app, aqq, apq):
    """cos, sin and tan of the rotation that zeroes apq in the 2x2 block [[app, apq], [apq, aqq]]."""
    # a negligible apq leaves the block as it is; testing first keeps theta * theta finite
    negligible = tl.abs(apq) <= 1e-30 * tl.abs(aqq - app)
    theta = (aqq - app) / tl.where(negligible, 1.0, 2.0 * apq)
    t = tl.where(theta >= 0, 1.0, -1.0) / (tl.abs(theta) + tl.sqrt(theta * theta + 1.0))
    t = tl.where(negligible, 0.0, t)
    c = 1.0 / tl.sqrt(t * t + 1.0)
    return c, t * c, t


@triton.jit
def rotate(x, y, c, s):
    return c * x - s * y, s * x + c * y


@triton.jit
def sort_pair(da, db, ax, ay, az, bx, by, bz):
    """Eigenpairs (da, a) and (db, b) in decreasing order of eigenvalue."""
    swap = da < db
    return (tl.where(swap, db, da), tl.where(swap, da, db),
            tl.where(swap, bx, ax), tl.where(swap, by, ay), tl.where(swap, bz, az),
            tl.where(swap, ax, bx), tl.where(swap, ay, by), tl.where(swap, az, bz))
'''.strip()

_JACOBI_PAIRS = ((0, 1, 2), (0, 2, 1), (1, 2, 0))  # (p, q, the third index r)


def _a(i: int, j: int) -> str:
    return f"a{min(i, j)}{max(i, j)}"


def _jacobi_sweep() -> list[str]:
    """One cyclic sweep: a rotation per off-diagonal pair, applied to A and accumulated in V."""
    lines = []
    for p, q, r in _JACOBI_PAIRS:
        app, aqq, apq, arp, arq = _a(p, p), _a(q, q), _a(p, q), _a(r, p), _a(r, q)
        lines += [f"c, s, t = jacobi_rotation({app}, {aqq}, {apq})",
                  f"{app}, {aqq}, {apq} = {app} - t * {apq}, {aqq} + t * {apq}, 0.0 * {apq}",
                  f"{arp}, {arq} = rotate({arp}, {arq}, c, s)"]
        lines += [f"v{i}{p}, v{i}{q} = rotate(v{i}{p}, v{i}{q}, c, s)" for i in range(3)]
    return lines


@dataclass(frozen=True)
class PCAFrames:
    """Frames of point clouds x [..., N, 3] for frame averaging, as runtime/frames.py orders them:
    centroid c; the eigenvectors V of the covariance of x - c by decreasing eigenvalue, the third
    the cross product of the first two (right-handed); the frames V·diag(s) for the sign patterns s
    of itertools.product((1, -1), repeat=3), all 8 (O(3)) or the 4 with det +1 (SO(3)). Also writes
    the points in every frame, (x - c) F. The covariance and eigensolver run in float64."""
    name: str
    frames: int = 8
    masked: bool = False
    dtype: str = "f32"
    origin: str = ""
    sweeps: int = 8  # Jacobi converges quadratically: 3x3 fp32 needs about 5

    @property
    def kernels(self) -> list[str]:
        return [f"{self.name}_pca_frames_kernel"]

    def summary(self) -> str:
        group = "O(3)" if self.frames == 8 else "SO(3)"
        return f"{self.frames} PCA frames ({group}) of {'masked ' if self.masked else ''}point clouds"

    def source(self) -> str:
        return self._kernel() + "\n\n\n" + self._launcher()

    def _kernel(self) -> str:
        args = ["x_ptr"] + (["mask_ptr"] if self.masked else []) + ["centroid_ptr", "frames_ptr", "out_ptr", "set_size"]
        member = "(rows < set_size)"
        if self.masked:
            member += " & (tl.load(mask_ptr + start + rows, mask=rows < set_size, other=0) != 0)"
        loads = [f"        p{d} = tl.load(x_ptr + (start + rows) * 3 + {d}, mask=member, other=0.0).to(tl.float32)"
                 for d in range(3)]
        lines = [f"# {self.summary()}: centroid, 3x3 covariance, Jacobi eigensolver and sign patterns"]
        lines += ["# in one program per cloud, which reads the cloud three times and writes every frame."]
        lines += [f"# From {self.origin}."] if self.origin else []
        lines += ["@triton.jit", f"def {self.kernels[0]}({', '.join(args)}, BLOCK_ROWS: tl.constexpr):",
                  f"    FRAMES: tl.constexpr = {self.frames}", f"    SWEEPS: tl.constexpr = {self.sweeps}",
                  "    cloud = tl.program_id(0).to(tl.int64)",
                  "    start = cloud * set_size",
                  "    count = 0.0",
                  "    s0 = 0.0", "    s1 = 0.0", "    s2 = 0.0",
                  "    for first in range(0, set_size, BLOCK_ROWS):",
                  "        rows = first + tl.arange(0, BLOCK_ROWS)",
                  f"        member = {member}", *loads,
                  "        count += tl.sum(member.to(tl.float32), 0)",
                  "        s0 += tl.sum(p0, 0)", "        s1 += tl.sum(p1, 0)", "        s2 += tl.sum(p2, 0)",
                  "    c0, c1, c2 = s0 / tl.maximum(count, 1.0), s1 / tl.maximum(count, 1.0), s2 / tl.maximum(count, 1.0)",
                  "    # the covariance of the centred points, summed in a second pass for accuracy"]
        lines += [f"    a{i}{j} = tl.zeros((), tl.float64)" for i in range(3) for j in range(i, 3)]
        lines += ["    for first in range(0, set_size, BLOCK_ROWS):",
                  "        rows = first + tl.arange(0, BLOCK_ROWS)",
                  f"        member = {member}", *loads,
                  "        q0, q1, q2 = (tl.where(member, p0 - c0, 0.0).to(tl.float64), "
                  "tl.where(member, p1 - c1, 0.0).to(tl.float64),",
                  "                      tl.where(member, p2 - c2, 0.0).to(tl.float64))"]
        lines += [f"        a{i}{j} += tl.sum(q{i} * q{j}, 0)" for i in range(3) for j in range(i, 3)]
        lines += ["    # eigenvectors: V accumulates the Jacobi rotations that diagonalise A"]
        lines += [f"    v{i}{j} = tl.full((), {1.0 if i == j else 0.0}, tl.float64)" for i in range(3) for j in range(3)]
        lines += ["    for _ in range(SWEEPS):"] + [f"        {line}" for line in _jacobi_sweep()]
        lines += ["    # decreasing eigenvalues; the third axis is the cross product of the first two"]
        for a, b in ((0, 1), (1, 2), (0, 1)):
            da, db = _a(a, a), _a(b, b)
            cols = ", ".join(f"v{i}{a}" for i in range(3)) + ", " + ", ".join(f"v{i}{b}" for i in range(3))
            lines.append(f"    {da}, {db}, {cols} = sort_pair({da}, {db}, {cols})")
        lines += ["    v02, v12, v22 = v10 * v21 - v20 * v11, v20 * v01 - v00 * v21, v00 * v11 - v10 * v01"]
        lines += [f"    v{i}{j} = v{i}{j}.to(tl.float32)" for i in range(3) for j in range(3)]
        lines += self._store()
        return "\n".join(lines)

    def _signs(self) -> list[str]:
        """f0, f1, f2: the signs of pattern k, the order of itertools.product((1, -1), repeat=3)."""
        if self.frames == 8:
            return [f"f{j} = 1.0 - 2.0 * ((k >> {2 - j}) & 1)" for j in range(3)]
        return ["f0 = 1.0 - 2.0 * (k >> 1)  # det +1: the third sign is the product of the others",
                "f1 = 1.0 - 2.0 * (k & 1)", "f2 = f0 * f1"]

    def _store(self) -> list[str]:
        member = "(rows < set_size)"
        if self.masked:
            member += " & (tl.load(mask_ptr + start + rows, mask=rows < set_size, other=0) != 0)"
        lines = ["    tl.store(centroid_ptr + cloud * 3 + 0, c0)", "    tl.store(centroid_ptr + cloud * 3 + 1, c1)",
                 "    tl.store(centroid_ptr + cloud * 3 + 2, c2)",
                 "    for k in tl.static_range(FRAMES):",
                 *[f"        {line}" for line in self._signs()],
                 "        frame = frames_ptr + (cloud * FRAMES + k) * 9"]
        lines += [f"        tl.store(frame + {3 * i + j}, v{i}{j} * f{j})" for i in range(3) for j in range(3)]
        lines += ["    for first in range(0, set_size, BLOCK_ROWS):",
                  "        rows = first + tl.arange(0, BLOCK_ROWS)",
                  f"        member = {member}"]
        lines += [f"        q{d} = tl.where(member, tl.load(x_ptr + (start + rows) * 3 + {d}, mask=member, "
                  f"other=0.0).to(tl.float32) - c{d}, 0.0)" for d in range(3)]
        lines += [f"        e{j} = q0 * v0{j} + q1 * v1{j} + q2 * v2{j}  # coordinate along eigenvector {j}"
                  for j in range(3)]
        lines += ["        for k in tl.static_range(FRAMES):",
*[f"            {line}" for line in self._signs()],
                  "            point = out_ptr + ((cloud * FRAMES + k) * set_size + rows) * 3"]
        lines += [f"            tl.store(point + {j}, (e{j} * f{j}).to(out_ptr.dtype.element_ty), mask=rows < set_size)"
                  for j in range(3)]
        return lines

    def _launcher(self) -> str:
        fp = torch_name(self.dtype)
        params = ["x"] + (["mask"] if self.masked else [])
        lines = [f"def launch_{self.name}({', '.join(params)}):",
                 f'    """{self.summary()}: x [..., N, 3] -> centroid [..., 3], frames [..., {self.frames}, 3, 3], '
                 f'points in each frame [..., {self.frames}, N, 3]."""',
                 "    if x.dim() < 2 or x.shape[-1] != 3:",
                 '        raise LaunchError(f"x must have shape [..., N, 3], got {list(x.shape)}")',
                 f'    check_tensor("x", x, {fp}, tuple(x.shape))']
        lines += ['    check_tensor("mask", mask, torch.bool, tuple(x.shape[:-1]))'] if self.masked else []
        lines += ["    lead, set_size = x.shape[:-2], x.shape[-2]",
                  "    x = x.reshape(-1, set_size, 3).contiguous()",
                  "    clouds = x.shape[0]",
                  f"    centroid = torch.empty((clouds, 3), dtype=torch.float32, device=x.device)",
                  f"    frames = torch.empty((clouds, {self.frames}, 3, 3), dtype=torch.float32, device=x.device)",
                  f"    points = torch.empty((clouds, {self.frames}, set_size, 3), dtype={fp}, device=x.device)",
                  "    if clouds:"]
        members = "mask.reshape(-1).contiguous().view(torch.uint8), " if self.masked else ""
        lines += [f"        {self.kernels[0]}[(clouds,)](x, {members}centroid, frames, points, set_size, "
                  f"BLOCK_ROWS={BLOCK_ROWS})",
                  f"    return (centroid.to({fp}).reshape(*lead, 3), frames.to({fp}).reshape(*lead, {self.frames}, 3, 3),",
                  f"            points.reshape(*lead, {self.frames}, set_size, 3))"]
        return "\n".join(lines)
