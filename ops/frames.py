"""Frame averaging (Puny et al., ICLR 2022) for point clouds in 3D: the spec op frame_average and
the graph ops it emits, frame_centroid, frame_basis, frame_in, frame_tile, the backbone, frame_out
(and frame_conditioning, which `invc verify` reads). Their torch and ONNX forms run the one
arithmetic of runtime/frames.py, over torch (TORCH) or ONNX nodes (OnnxMath), step for step.

Frame averaging, as facts: under a rotating group, frame_basis is a FrameBasis (rotated along
its rows, its F frames relabeled); frame_in turns positions (with their centroid) and vectors into
canonical coordinates, which a rotation only relabels: Permuted along the folded B*F axis, `by`
that basis; frame_tile copies invariants into every frame (Permuted "*"). Per-row ops of the
backbone keep that fact, and frame_out's mean over frames turns it back into an invariant, a
vector or a position. A backbone that mixes rows of different frames breaks it, as it should.
"""
from dataclasses import replace

from common.lazy import Lazy
from dsl.groups import Broken, Fact, FrameBasis, Invariant, Permuted, Rotated, Translated
from dsl.rules import DefRef, Tensor
from dsl.symmetry_rules import COORDINATES, Call, Operand, axes_of, reduced, what
from dsl.types import FLOATS, TensorType, Value, dim_product
from ops.elementwise import symmetry_arithmetic
from ops.op import Doc, GraphOp, SpecOp
from ops.sets import mask_refused, set_mask
from runtime import native

kernels = Lazy("runtime.frames")  # the shared arithmetic, and its torch and ONNX primitives
# Frame-averaging groups (spelled as in `symmetry`) -> proper, i.e. det = +1 frames only.
# runtime/frames.py keeps the same table: the checker stays torch-free.
FRAME_GROUPS = {"E3": False, "O3": False, "SE3": True, "SO3": True}
ROLES = ("position", "vector", "scalar")
OUT_FACTS = {"invariant": Invariant, "vector": Rotated, "position": Translated}


# -- checker rules ---------------------------------------------------------------------------------
def _roles(ctx, tensors, roles) -> list:
    """Each tensor's role: from `roles=[...]`, else from the model input's `is` declaration."""
    if roles is not None:
        if len(roles) != len(tensors) or any(r not in ROLES for r in roles):
            ctx.error(f"frame_average: roles={roles!r} needs one of {', '.join(ROLES)} per tensor "
                      f"({len(tensors)} given)")
        return list(roles)
    declared = {p.value.id: p.role for p in ctx.el.out.inputs}
    found = []
    for t in tensors:
        role = {"invariant": "scalar"}.get(declared.get(t.id), declared.get(t.id))
        if role not in ROLES:
            ctx.error(f"frame_average: no role for tensor {t.type}",
                      "declare the model input `is position|vector|scalar`, or pass roles=[...]")
        found.append(role)
    return found


def _frame_group(ctx, group: str) -> bool:
    key = group.replace("(", "").replace(")", "")
    if key not in FRAME_GROUPS:
        ctx.error(f"frame_average: unknown group {group!r}",
                  "frames exist for E(3), O(3) (8 frames) and SE(3), SO(3) (4 frames)")
    return FRAME_GROUPS[key]


def _check_frame_inputs(ctx, tensors, roles, mask) -> Value:
    if "position" not in roles:
        ctx.error("frame_average needs a position tensor: its points define the frames")
    pos = tensors[roles.index("position")]
    if pos.type.rank != 3 or pos.type.shape[-1] != 3 or pos.type.dtype not in FLOATS:
        ctx.error(f"frame_average: positions must be a float [B, N, 3] point cloud, got {pos.type}")
    for t, role in zip(tensors, roles):
        if t.type.rank < 1 or t.type.shape[0] != pos.type.shape[0]:
            ctx.error(f"frame_average: {t.type} does not share the batch dim {pos.type.shape[0]} of {pos.type}")
        if role != "scalar" and (t.type.shape[-1] != 3 or t.type.dtype != pos.type.dtype):
            ctx.error(f"frame_average: a {role} has a last dim of 3 coordinates, got {t.type}")
    set_mask(ctx, pos, 1, mask)
    return pos


def check_frame_average(ctx, backbone: DefRef, inputs: list, group: str = "E3", out: str = "invariant",
                  roles: list = None, mask: Tensor = None, canonical: bool = False):
    """Average `backbone` over the PCA frames of the positions, frames folded into the batch.

    `inputs` are the backbone's tensor arguments, in order. Positions are centered and rotated
    into each frame, vectors rotated, scalars tiled; the backbone runs once on F*B rows (with the
    tiled mask as its last argument when a mask is given) and its `out` kind is mapped back and
    averaged. The backbone's non-tensor parameters take their defaults.
    """
    if not inputs or not all(isinstance(t, Value) for t in inputs):
        ctx.error("frame_average: `inputs` must be a non-empty list of tensors, e.g. [pos, vel]")
    roles = _roles(ctx, inputs, roles)
    proper = _frame_group(ctx, group)
    if out not in OUT_FACTS:
        ctx.error(f"frame_average: unknown out={out!r}", f"use one of {', '.join(OUT_FACTS)}")
    pos = _check_frame_inputs(ctx, inputs, roles, mask)
    b = pos.type.shape[0]
    count = 1 if canonical else (4 if proper else 8)
    c = ctx.emit("frame_centroid", (pos,), TensorType(pos.type.dtype, (b, 1, 3)), kwargs={"mask": mask})
    basis = ctx.emit("frame_basis", (pos, c), TensorType(pos.type.dtype, (b, count, 3, 3)),
                     kwargs={"mask": mask, "proper": proper, "canonical": canonical})
    folded = dim_product([count, b])
    moved = [_into_frames(ctx, t, role, basis, c, count, folded) for t, role in zip(inputs, roles)]
    if mask is not None:
        moved.append(_into_frames(ctx, mask, "scalar", basis, c, count, folded))
    y = ctx.call_def(backbone, moved)
    return _out_of_frames(ctx, y, out, basis, c, folded, b)


def _into_frames(ctx, t: Value, role: str, basis: Value, c: Value, count: int, folded) -> Value:
    shape = TensorType(t.type.dtype, (folded,) + t.type.shape[1:])
    if role == "scalar":
        return ctx.emit("frame_tile", (t,), shape, kwargs={"frames": count})
    return ctx.emit("frame_in", (t, basis), shape, kwargs={"centroid": c if role == "position" else None})


def _out_of_frames(ctx, y: Value, out: str, basis: Value, c: Value, folded, b) -> Value:
    if y.type.rank < 1 or y.type.shape[0] != folded:
        ctx.error(f"frame_average: the backbone must keep the folded batch {folded} as dim 0, "
                  f"returned {y.type}")
    if out != "invariant" and (y.type.shape[-1] != 3 or y.type.dtype not in FLOATS):
        ctx.error(f"frame_average: out={out!r} needs a backbone result with 3 coordinates last, "
                  f"got {y.type}")
    return ctx.emit("frame_out", (y, basis), TensorType(y.type.dtype, (b,) + y.type.shape[1:]),
                    kwargs={"centroid": c if out == "position" else None, "kind": out})


# -- symmetry rules --------------------------------------------------------------------------------
FRAMES_HINT = "frame_in takes positions with their centroid, or vectors without; invariants go through frame_tile"


def _relative(call: Call, x: Operand, centroid) -> Fact:
    """The fact of x - centroid (of x itself without a centroid)."""
    if centroid is None:
        return x.fact
    return symmetry_arithmetic(replace(call, op="sub", args=(x, centroid), kwargs={}, shape=x.shape))


def symmetry_frame_centroid(call: Call) -> Fact:
    """The centroid of the cloud given the position role, which must move like a position: the
    frames and a position output are built around it. (the torch form builds the centroid of a
    cloud with no real point from all its points, so the mask never empties it.)"""
    pos, mask = call.arg(0), call.arg(1, "mask")
    want = call.group.normalize(Translated(len(pos.shape) - 1))
    if (call.group.rotates or call.group.translates) and pos.fact != want:
        return call.broken(f"{call.spelled}'s position argument is {what(pos)}, not a position",
                           "pass the raw positions (an input `is position`); give a centred cloud or "
                           "other vectors the vector role")
    return mask_refused(call, pos, mask) or reduced(call, pos, 1, True, "mean")


def _cloud(call: Call, pos: Operand, centered: Fact, mask) -> Fact | None:
    """What a frame built from this cloud is: invariant under S(N), a FrameBasis under rotations."""
    refused = mask_refused(call, pos, mask)
    if refused or isinstance(centered, Broken):
        return refused or centered
    if isinstance(centered, Permuted) and centered.axes == (1,) and not centered.by:
        return Invariant()  # the covariance sums over the set axis
    if centered == Rotated(len(pos.shape) - 1):
        return FrameBasis(call.node)
    return call.broken(f"{call.spelled} of {what(pos)}", "build frames from positions [B, N, 3]")


def _general_position(call: Call, pos: Operand) -> Broken | None:
    """What a frame proof promises: the claim, for every input cloud in general position (three
    distinct covariance eigenvalues and, for a canonical frame, third moments that do not vanish
    along the axes whose signs it picks). Almost every input cloud is; `invc verify` measures how
    far its sampled ones are from a tie. A cloud that cannot be in general position for any input
    is refused under every group, since a tie is then settled by rounding, which a permutation or a
    translation changes as surely as a rotation: a computed cloud (a mean broadcast back collapses
    it to one point, a projection onto a plane or a line flattens it; the checker cannot tell), and
    an input whose static set size is degenerate."""
    if not pos.is_input:
        return call.broken(f"{call.spelled} builds frames from a computed cloud, which may be degenerate "
                           "(tied eigenvalues or a vanishing third moment) for every input",
                           "build the frames from an input `is position` and pass computed points with the "
                           "vector or scalar role")
    degenerate = _degenerate_size(pos.shape[1], call.arg(4, "canonical"), call.arg(3, "proper"))
    if degenerate:
        n = pos.shape[1]
        return call.broken(f"{call.spelled} builds frames from a cloud of {n} point{'s' * (n != 1)}, {degenerate} "
                           "for every input", "give the set axis 4 or more points, or a symbolic size" +
                           ("; or use proper frames (group=\"SE(3)\") or all frames" if n == 3 else ""))
    return None


def _degenerate_size(n, canonical: bool, proper: bool) -> str | None:
    """Why every cloud of n points misses general position, or None (symbolic n: some do not)."""
    if not isinstance(n, int):
        return None
    if n <= 2:
        return "which ties every eigenvalue" if n <= 1 else "which lie on a line (two eigenvalues tie)"
    if n == 3 and canonical and not proper:
        return ("which lie in a plane: a canonical frame with reflections picks the sign of its normal "
                "from a third moment of 0")
    return None


def symmetry_frame_basis(call: Call) -> Fact:
    pos, centroid, mask = call.arg(0), call.arg(1, "centroid"), call.arg(2, "mask")
    refused = _general_position(call, pos)
    if refused:
        return refused
    fact = _cloud(call, pos, _relative(call, pos, centroid), mask)
    if isinstance(fact, FrameBasis) and call.arg(3, "proper") and call.group.reflects:
        return call.broken(f"{call.spelled} with proper (det +1) frames",
                           f"the reflections of {call.group} need all 8 sign patterns: group=\"E(3)\" or "
                           "\"O(3)\"; or declare SE(3)/SO(3)")
    return fact


def symmetry_frame_conditioning(call: Call) -> Fact:
    pos, mask = call.arg(0), call.arg(1, "mask")
    centered = Rotated(pos.fact.axis) if isinstance(pos.fact, Translated) else pos.fact
    fact = _cloud(call, pos, centered, mask)
    return Invariant() if isinstance(fact, FrameBasis) else fact  # eigen-gaps do not turn


def symmetry_frame_in(call: Call) -> Fact:
    x, basis, centroid = call.arg(0), call.arg(1, "basis"), call.arg(2, "centroid")
    rel = _relative(call, x, centroid)
    if isinstance(rel, Broken):
        return rel
    if isinstance(basis.fact, FrameBasis):
        if rel == Rotated(len(x.shape) - 1):
            return Permuted((0,), basis.fact.node)  # canonical coordinates, frames relabeled
        return call.broken(f"frame_in of {what(x)}", FRAMES_HINT)
    rel = call.group.normalize(rel)  # without rotations a difference of positions is invariant
    if isinstance(rel, COORDINATES):  # coordinates in a frame that does not move with them
        return call.broken(f"frame_in of {what(x)} in a fixed frame", FRAMES_HINT)
    return _unfolded(call, rel)


def _unfolded(call: Call, fact: Fact) -> Fact:
    """Frames fold into axis 0; a fact on the other axes keeps its place."""
    if 0 in axes_of(fact):
        return call.broken(f"{call.spelled} of a tensor permuted along its batch axis")
    return fact


def symmetry_frame_tile(call: Call) -> Fact:
    x = call.arg(0)
    if isinstance(x.fact, Invariant):
        return Permuted((0,), "*") if call.group.rotates else x.fact
    if isinstance(x.fact, Permuted) and not x.fact.by:
        return _unfolded(call, x.fact)
    return call.broken(f"frame_tile of {what(x)}", FRAMES_HINT)


def symmetry_frame_out(call: Call) -> Fact:
    y, basis, centroid, kind = call.arg(0), call.arg(1, "basis"), call.arg(2, "centroid"), call.arg(3, "kind")
    last = len(call.shape) - 1
    moving = centroid is not None and not isinstance(centroid.fact, Invariant)
    if not isinstance(basis.fact, FrameBasis):  # S(N) or T(3): each row's frames do not move
        if kind == "position" and moving:  # T(3): F·y + c moves with c when y does not move
            return Translated(last) if isinstance(y.fact, Invariant) else call.broken(
                f"frame_out of {what(y)} around a moving centroid", FRAMES_HINT)
        return _unfolded(call, y.fact)
    follows = isinstance(y.fact, Permuted) and y.fact.axes == (0,) and y.fact.by in (basis.fact.node, "*")
    if not follows:
        return call.broken(f"frame_out of {what(y)} that does not follow the frames of {basis.fact.node}",
                           "compute it from frame_in and frame_tile outputs with per-row ops")
    if kind == "position" and not (centroid is not None and isinstance(centroid.fact, (Translated, Rotated))):
        return call.broken("frame_out of a position without the centroid", "pass the cloud's centroid")
    return OUT_FACTS[kind](last) if kind != "invariant" else Invariant()


# -- torch forms: the fx call_function targets -----------------------------------------------------
def frame_centroid(pos, mask=None):
    return kernels.centroid_of(kernels.TORCH, pos, mask)


def frame_basis(pos, centroid, mask=None, proper=False, canonical=False):
    return kernels.basis_of(kernels.TORCH, pos, centroid, mask, proper, canonical)


def frame_in(x, basis, centroid=None):
    return kernels.into_frames(kernels.TORCH, x, basis, centroid, basis.shape[1])


def frame_tile(x, frames):
    return kernels.tile(kernels.TORCH, x, frames)


def frame_out(y, basis, centroid=None, kind="invariant"):
    return kernels.out_of_frames(kernels.TORCH, y, basis, centroid, kind, basis.shape[1])


def frame_conditioning(pos, mask=None):
    return kernels.conditioning(kernels.TORCH, pos, mask)


# -- ONNX emitters: the same kernels over ONNX nodes -----------------------------------------------
def onnx_frame_centroid(g, node, pos, mask):
    m = kernels.OnnxMath(g)
    name = native.op_name("centroid", pos.meta["dtype"], masked=mask is not None)
    return m.fused(name, kernels.centroid_of, m.wrap(pos), m.wrap(mask)).name


def onnx_frame_basis(g, node, pos, centroid, mask, proper, canonical):
    m = kernels.OnnxMath(g)
    name = native.op_name("basis", pos.meta["dtype"], masked=mask is not None, proper=proper, canonical=canonical)
    return m.fused(name, lambda m, *args: kernels.basis_of(m, *args, proper, canonical),
                   m.wrap(pos), m.wrap(centroid), m.wrap(mask)).name


def onnx_frame_in(g, node, x, basis, centroid):
    m, frames = kernels.OnnxMath(g), basis.meta["shape"][1]
    name = native.op_name("in", x.meta["dtype"], frames=frames, centered=centroid is not None)
    return m.fused(name, lambda m, *args: kernels.into_frames(m, *args, frames),
                   m.wrap(x), m.wrap(basis), m.wrap(centroid)).name


def onnx_frame_tile(g, node, x, count):
    m = kernels.OnnxMath(g)
    return kernels.tile(m, m.wrap(x), count).name


def onnx_frame_out(g, node, y, basis, centroid, kind):
    m = kernels.OnnxMath(g)
    return kernels.out_of_frames(m, m.wrap(y), m.wrap(basis), m.wrap(centroid), kind, basis.meta["shape"][1]).name


def onnx_frame_conditioning(g, node, pos, mask):
    m = kernels.OnnxMath(g)
    return kernels.conditioning(m, m.wrap(pos), m.wrap(mask)).name


# -- torch source for the Triton launcher (frame construction itself only runs as a kernel) --------
def triton_frame_in(x, basis, centroid):
    flat = f"{x}.reshape({x}.shape[0], -1, 3)" + ("" if centroid == "None" else f" - {centroid}")
    return f"(({flat}).unsqueeze(1) @ {basis}).reshape(-1, *{x}.shape[1:])"


def triton_frame_out(y, basis, centroid, kind):
    per_frame = f"{y}.reshape(-1, {basis}.shape[1], *{y}.shape[1:])"
    if kind == "'invariant'":
        return f"{per_frame}.mean(1)"
    back = f"({per_frame}.reshape({basis}.shape[0], {basis}.shape[1], -1, 3) @ {basis}.transpose(-1, -2)).mean(1)"
    if kind == "'position'":
        back = f"({back} + {centroid})"
    return f"{back}.reshape(-1, *{y}.shape[1:])"


def triton_frame_tile(x, frames):
    return f"{x}.unsqueeze(1).expand(-1, {frames}, *{x}.shape[1:]).reshape(-1, *{x}.shape[1:])"


FRAMES = frozenset({"frames"})
TABLE = "sets and frames"  # the table of dsl/LANGUAGE.md that lists its spec ops
SPEC = (
    SpecOp("frame_average", check_frame_average, Doc(
        "frame_average",
        '`frame_average(backbone, [pos, vel, q], group="E(3)", out="position", mask=m, canonical=false)`',
        "runs def `backbone` once on all PCA frames folded into the batch (`8*B`), then averages: `out` is "
        "`invariant`, `vector` or `position`"),
        emits=tuple(f"frame_{k}" for k in ("centroid", "basis", "in", "tile", "out"))),
)
GRAPH = (
    GraphOp(frame_centroid, symmetry_frame_centroid, onnx_frame_centroid),
    GraphOp(frame_basis, symmetry_frame_basis, onnx_frame_basis),
    GraphOp(frame_conditioning, symmetry_frame_conditioning, onnx_frame_conditioning),
    GraphOp(frame_in, symmetry_frame_in, onnx_frame_in, triton_frame_in, reads=FRAMES),
    GraphOp(frame_tile, symmetry_frame_tile, onnx_frame_tile, triton_frame_tile, sees_invariants=True),
    GraphOp(frame_out, symmetry_frame_out, onnx_frame_out, triton_frame_out, reads=FRAMES),
)
