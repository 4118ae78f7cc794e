"""Checker rules of the set and frame ops: pooling over a set axis (dense with a mask, or ragged),
and frame averaging around a def. They emit the runtime/sets.py and runtime/frames.py ops.

    pool(x, axis=N, kind="sum", mask=m)                   masked_reduce
    attention_pool(x, axis=N, mask=m)                     attention_pool (a learned query)
    segment_pool(x, offsets, kind="max", deterministic=false)
                                                          segment_reduce (CSR offsets [S+1])
    scatter_pool(x, ids, like=t, kind="sum")              scatter_reduce (segment ids)
    gather(x, index, axis=N)                              gather (rows picked by index [E])
    unsqueeze(x, axis)                                    reshape (a new axis of size 1)
    frame_average(backbone, [pos, vel, q], group="E(3)", out="position", mask=m, canonical=false)
                                                          frame_centroid, frame_basis, frame_in,
                                                          frame_tile, the backbone, frame_out
"""
from dsl.ops import KINDS, Axis, DefRef, Tensor, _float, family
from dsl.types import FLOATS, INTS, ParamSpec, TensorType, Value, dim_product

OPS, op = family()

# Frame-averaging groups (spelled as in `symmetry`) -> proper, i.e. det = +1 frames only.
# runtime/frames.py keeps the same table: dsl/ stays torch-free.
FRAME_GROUPS = {"E3": False, "O3": False, "SE3": True, "SO3": True}
ROLES = ("position", "vector", "scalar")
OUT_KINDS = ("invariant", "vector", "position")


def _kind(ctx, kind: str) -> None:
    if kind not in KINDS:
        ctx.error(f"{ctx.op}: unknown kind {kind!r}", f"use one of {', '.join(KINDS)}")


def _set_mask(ctx, x: Value, ax: int, mask: Value | None) -> None:
    want = TensorType("bool", x.type.shape[:ax + 1])
    if mask is not None and mask.type != want:
        ctx.error(f"{ctx.op}: the mask must be {want} (x's dims up to the set axis), got {mask.type}")


def _without(x: Value, ax: int) -> TensorType:
    return TensorType(x.type.dtype, x.type.shape[:ax] + x.type.shape[ax + 1:])


@op
def pool(ctx, x: Tensor, axis: Axis, kind: str = "sum", mask: Tensor = None):
    """Reduce the set axis; an empty set (mask row all false) gives 0."""
    _float(ctx, x)
    _kind(ctx, kind)
    ax = ctx.axis(x, axis)
    _set_mask(ctx, x, ax, mask)
    return ctx.emit("masked_reduce", (x, mask), _without(x, ax), kwargs={"axis": ax, "kind": kind})


@op
def attention_pool(ctx, x: Tensor, axis: Axis = -2, mask: Tensor = None):
    """Softmax-attention pooling with a learned query over the set axis, which must be x's
    second to last (the last holds the features)."""
    _float(ctx, x)
    ax = ctx.axis(x, axis)
    if x.type.rank < 2 or ax != x.type.rank - 2 or not isinstance(x.type.shape[-1], int):
        ctx.error(f"attention_pool needs x as [..., N, D] with the set axis N second to last and "
                  f"a static D, got {x.type} with axis {ax}")
    _set_mask(ctx, x, ax, mask)
    return ctx.emit("attention_pool", (x,), _without(x, ax), kwargs={"mask": mask},
                    params={"query": ParamSpec((x.type.shape[-1],), "normal")})


def _index_vector(ctx, t: Value, what: str) -> None:
    if t.type.dtype not in INTS or t.type.rank != 1:
        ctx.error(f"{ctx.op}: `{what}` must be an integer vector (i64[...]), got {t.type}")


def _sets_dim(d):
    """CSR offsets hold S+1 entries: from a declared length K, the set count is K-1."""
    return d - 1 if isinstance(d, int) else f"{d}-1"


@op
def segment_pool(ctx, x: Tensor, offsets: Tensor, kind: str = "sum", deterministic: bool = False):
    """Reduce a ragged batch: rows of x split into sets by CSR offsets [S+1]; gives [S, ...]."""
    _float(ctx, x)
    _kind(ctx, kind)
    _index_vector(ctx, offsets, "offsets")
    if x.type.rank < 1:
        ctx.error(f"segment_pool needs rows: x of rank 1 or more, got {x.type}")
    if offsets.type.shape[0] == 1:
        ctx.error("segment_pool: offsets of length 1 describe no set", "CSR offsets hold S+1 entries")
    out = TensorType(x.type.dtype, (_sets_dim(offsets.type.shape[0]),) + x.type.shape[1:])
    return ctx.emit("segment_reduce", (x, offsets), out, kwargs={"kind": kind, "deterministic": deterministic})


@op
def scatter_pool(ctx, x: Tensor, ids: Tensor, like: Tensor, kind: str = "sum"):
    """Reduce rows of x into sets by segment ids (any order); the number of sets is dim 0 of `like`."""
    _float(ctx, x)
    _kind(ctx, kind)
    _index_vector(ctx, ids, "ids")
    if x.type.rank < 1 or ids.type.shape[0] != x.type.shape[0]:
        ctx.error(f"scatter_pool: ids {ids.type} must give one set per row of x {x.type}")
    if like.type.rank < 1:
        ctx.error(f"scatter_pool: `like` needs a dim 0 (the number of sets), got {like.type}")
    out = TensorType(x.type.dtype, like.type.shape[:1] + x.type.shape[1:])
    return ctx.emit("scatter_reduce", (x, ids, like), out, kwargs={"kind": kind})


@op
def gather(ctx, x: Tensor, index: Tensor, axis: Axis = 0):
    """The elements of x at integer positions along `axis`: index [E] turns that axis into E. With
    `input senders: i64[E] is index(N)`, gather(h, senders, axis=N) gives each edge its sender's row."""
    _float(ctx, x)
    _index_vector(ctx, index, "index")
    ax = ctx.axis(x, axis)
    out = TensorType(x.type.dtype, x.type.shape[:ax] + index.type.shape + x.type.shape[ax + 1:])
    return ctx.emit("gather", (x, index), out, kwargs={"axis": ax})


@op
def unsqueeze(ctx, x: Tensor, axis: int):
    """A new axis of size 1 at `axis` (of the result), e.g. to pair set elements by broadcasting."""
    rank = x.type.rank + 1
    if not -rank <= axis < rank:
        ctx.error(f"unsqueeze: axis {axis} is out of range for a result of rank {rank}")
    ax = axis % rank
    target = x.type.shape[:ax] + (1,) + x.type.shape[ax:]
    return ctx.emit("reshape", (x,), TensorType(x.type.dtype, target),
                    kwargs={"shape": ctx.reshape_spec(x, target)})


# -- frame averaging -------------------------------------------------------------------------------
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
    _set_mask(ctx, pos, 1, mask)
    return pos


@op
def frame_average(ctx, backbone: DefRef, inputs: list, group: str = "E3", out: str = "invariant",
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
    if out not in OUT_KINDS:
        ctx.error(f"frame_average: unknown out={out!r}", f"use one of {', '.join(OUT_KINDS)}")
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
