"""Set aggregators: pooling over a set axis (dense with a mask, or ragged), and gather for edge
lists. Spec ops and the graph ops they emit:

    pool(x, axis=N, kind="sum", mask=m)                   masked_reduce
    attention_pool(x, axis=N, mask=m)                     attention_pool (a learned query)
    segment_pool(x, offsets, kind="max", deterministic=false)
                                                          segment_reduce (CSR offsets [S+1])
    scatter_pool(x, ids, like=t, kind="sum")              scatter_reduce (segment ids)
    gather(x, index, axis=N)                              gather (rows picked by index [E])

The graph ops' semantics (the torch forms below; their ONNX emitters compute the same):

    masked_reduce(x, mask, axis, kind)      x [d0..d_axis, ...] -> x without `axis`. `axis` is the
                                            set axis; mask is bool over x's dims 0..axis (None: all
                                            real). kind: sum, mean, max, min. Invariant under
                                            permutations of `axis`.
    attention_pool(x, query, mask)          x [..., N, D] -> [..., D]: softmax(x·query/√D) over the
                                            set axis N (= -2) weights the elements. mask bool
                                            [..., N]. Invariant under permutations of N.
    segment_reduce(x, offsets, kind, deterministic)
                                            x [R, ...] rows, offsets i64 [S+1] CSR (0 = o_0 <= ...
                                            <= o_S = R; set s is rows o_s..o_{s+1}-1) -> [S, ...].
                                            Invariant under permutations of rows within a set.
    scatter_reduce(x, segment_ids, like, kind)
                                            x [R, ...], segment_ids i64 [R] in [0, S) in any order,
                                            like: any tensor whose dim 0 is S -> [S, ...].
    gather(x, index, axis)                  x [..., N, ...], index i64 [E] in [0, N) -> x with
                                            `axis` N replaced by E (the rows an edge list names).

An empty set (all-False mask row, equal offsets, an unused id) reduces to 0 for every kind, never
±inf or NaN. NaN in a set's real elements gives NaN in that set's result. `deterministic` picks a
formulation without atomic scatters (a CSR reduction in torch, gather-then-reduce in ONNX); on the
CPU both modes are exact and reproducible, the flag matters on GPUs. onnxruntime's ReduceMax and
ScatterND max drop a NaN that is not last, so the ONNX max and min add back a NaN term (the sum of
the NaN entries) to keep NaN in, NaN out.
"""
import math
from dataclasses import replace

from common.dtypes import numpy_dtype, onnx_type
from common.lazy import Lazy
from dsl.groups import Broken, Fact, Invariant, Permuted, Relabeled, Uniform
from dsl.rules import Axis, Tensor, float_input, weighted_input
from dsl.symmetry_rules import (COORD_HINT, COORDINATES, POOL_HINT, Call, Operand, axes_of, merged, moved, reduced,
                                uniform_axes, what)
from dsl.types import INTS, ParamSpec, TensorType, Value
from ops.op import Doc, GraphOp, Indices, SpecOp
from ops.reductions import KINDS, keep_nan, unless_nan_free

torch, np, helper = Lazy("torch"), Lazy("numpy"), Lazy("onnx.helper")


# -- checker rules ---------------------------------------------------------------------------------
def _kind(ctx, kind: str) -> None:
    if kind not in KINDS:
        ctx.error(f"{ctx.op}: unknown kind {kind!r}", f"use one of {', '.join(KINDS)}")


def set_mask(ctx, x: Value, ax: int, mask: Value | None) -> None:
    want = TensorType("bool", x.type.shape[:ax + 1])
    if mask is not None and mask.type != want:
        ctx.error(f"{ctx.op}: the mask must be {want} (x's dims up to the set axis), got {mask.type}")


def _without(x: Value, ax: int) -> TensorType:
    return TensorType(x.type.dtype, x.type.shape[:ax] + x.type.shape[ax + 1:])


def check_pool(ctx, x: Tensor, axis: Axis, kind: str = "sum", mask: Tensor = None):
    """Reduce the set axis; an empty set (mask row all false) gives 0."""
    float_input(ctx, x)
    _kind(ctx, kind)
    ax = ctx.axis(x, axis)
    set_mask(ctx, x, ax, mask)
    return ctx.emit("masked_reduce", (x, mask), _without(x, ax), kwargs={"axis": ax, "kind": kind})


def check_attention_pool(ctx, x: Tensor, axis: Axis = -2, mask: Tensor = None):
    """Softmax-attention pooling with a learned query over the set axis, which must be x's
    second to last (the last holds the features)."""
    weighted_input(ctx, x)
    ax = ctx.axis(x, axis)
    if x.type.rank < 2 or ax != x.type.rank - 2 or not isinstance(x.type.shape[-1], int):
        ctx.error(f"attention_pool needs x as [..., N, D] with the set axis N second to last and "
                  f"a static D, got {x.type} with axis {ax}")
    set_mask(ctx, x, ax, mask)
    return ctx.emit("attention_pool", (x,), _without(x, ax), kwargs={"mask": mask},
                    params={"query": ParamSpec((x.type.shape[-1],), "normal")})


def _index_vector(ctx, t: Value, what: str) -> None:
    if t.type.dtype not in INTS or t.type.rank != 1:
        ctx.error(f"{ctx.op}: `{what}` must be an integer vector (i64[...]), got {t.type}")


def _sets_dim(d):
    """CSR offsets hold S+1 entries: from a declared length K, the set count is K-1."""
    return d - 1 if isinstance(d, int) else f"{d}-1"


def check_segment_pool(ctx, x: Tensor, offsets: Tensor, kind: str = "sum", deterministic: bool = False):
    """Reduce a ragged batch: rows of x split into sets by CSR offsets [S+1]; gives [S, ...]."""
    float_input(ctx, x)
    _kind(ctx, kind)
    _index_vector(ctx, offsets, "offsets")
    if x.type.rank < 1:
        ctx.error(f"segment_pool needs rows: x of rank 1 or more, got {x.type}")
    if offsets.type.shape[0] == 1:
        ctx.error("segment_pool: offsets of length 1 describe no set", "CSR offsets hold S+1 entries")
    out = TensorType(x.type.dtype, (_sets_dim(offsets.type.shape[0]),) + x.type.shape[1:])
    return ctx.emit("segment_reduce", (x, offsets), out, kwargs={"kind": kind, "deterministic": deterministic})


def check_scatter_pool(ctx, x: Tensor, ids: Tensor, like: Tensor, kind: str = "sum"):
    """Reduce rows of x into sets by segment ids (any order); the number of sets is dim 0 of `like`."""
    float_input(ctx, x)
    _kind(ctx, kind)
    _index_vector(ctx, ids, "ids")
    if x.type.rank < 1 or ids.type.shape[0] != x.type.shape[0]:
        ctx.error(f"scatter_pool: ids {ids.type} must give one set per row of x {x.type}")
    if like.type.rank < 1:
        ctx.error(f"scatter_pool: `like` needs a dim 0 (the number of sets), got {like.type}")
    out = TensorType(x.type.dtype, like.type.shape[:1] + x.type.shape[1:])
    return ctx.emit("scatter_reduce", (x, ids, like), out, kwargs={"kind": kind})


def check_gather(ctx, x: Tensor, index: Tensor, axis: Axis = 0):
    """The elements of x at integer positions along `axis`: index [E] turns that axis into E. With
    `input senders: i64[E] is index(N)`, gather(h, senders, axis=N) gives each edge its sender's row."""
    float_input(ctx, x)
    _index_vector(ctx, index, "index")
    ax = ctx.axis(x, axis)
    out = TensorType(x.type.dtype, x.type.shape[:ax] + index.type.shape + x.type.shape[ax + 1:])
    return ctx.emit("gather", (x, index), out, kwargs={"axis": ax})


# -- symmetry rules --------------------------------------------------------------------------------
def mask_refused(call: Call, x: Operand, mask) -> Broken | None:
    """A mask over x's leading axes must be permuted exactly where x is, and select whole elements:
    one over the coordinate axis of a vector, position or coordinate product keeps other elements
    for each coordinate, which no rotation or translation commutes with."""
    if mask is None:
        return None
    # (a mask whose last axis, the pooled one, is the coordinate axis: `reduced` refuses the partial sum)
    if isinstance(x.fact, COORDINATES) and x.fact.axis < len(mask.shape) - 1:
        return call.broken(f"{call.spelled} with a mask along the 3 coordinates of {what(x)}",
                           "a mask selects whole elements: give it the set axes only, or move the coordinate "
                           "axis after the set axis")
    axes = tuple(k for k in axes_of(x.fact) if k < len(mask.shape)) if isinstance(x.fact, Permuted) else ()
    expected = replace(x.fact, axes=axes) if axes else Invariant()
    if merged((mask.fact, expected)) is not None:
        return None
    return call.broken(f"{call.spelled} with a mask not permuted like its input", "mask along the same set axes")


def symmetry_masked_reduce(call: Call) -> Fact:
    x, mask = call.arg(0), call.arg(1, "mask")
    return mask_refused(call, x, mask) or reduced(call, x, call.arg(2, "axis"), False, call.arg(3, "kind"),
                                                   subsets=mask is not None)


def symmetry_attention_pool(call: Call) -> Fact:
    """Softmax weights over the set axis (-2) are permuted with it, so the weighted sum is a pool."""
    x, query, mask = call.arg(0), call.arg(1, "query"), call.arg(2, "mask")
    last = len(x.shape) - 1
    if not isinstance(query.fact, Invariant) or not isinstance(x.fact, Permuted) or last in x.fact.axes:
        return call.broken(f"attention_pool of {what(x)}" if isinstance(query.fact, Invariant) else
                           f"attention_pool with a query computed from {what(query)}", COORD_HINT)
    return mask_refused(call, x, mask) or reduced(call, x, last - 1, False, "sum")


def symmetry_segment_reduce(call: Call) -> Fact:
    """Rows stay in their set: permuting rows across sets breaks it; within-set order is not a
    declared group, so only the other axes' facts carry over."""
    x, offsets = call.arg(0), call.arg(1, "offsets")
    if not isinstance(offsets.fact, Invariant) or (isinstance(x.fact, Permuted) and 0 in x.fact.axes):
        return call.broken(f"{call.spelled} of rows permuted across sets",
                           "permute segment ids with the rows and use scatter_pool")
    return reduced(call, x, 0, True, call.arg(2, "kind"), subsets=True)


def symmetry_scatter_reduce(call: Call) -> Fact:
    """Rows permuted together with their segment ids reduce to the same sets; `like` gives a size.
    Ids relabelled by S(N) send the same rows to N's new places: the sets, if they are N, permute."""
    x, ids = call.arg(0), call.arg(1, "segment_ids")
    if isinstance(ids.fact, Relabeled):
        return _into_relabelled_sets(call, x, ids)
    if _equal_rows(x) and isinstance(ids.fact, (Invariant, Permuted)):
        return Invariant()  # only how many rows land in each set counts, and moving the ids keeps that
    rows_permuted = isinstance(x.fact, Permuted) and 0 in x.fact.axes
    expected = replace(x.fact, axes=(0,)) if rows_permuted else Invariant()
    if merged((ids.fact, expected)) is None:
        return call.broken(f"{call.spelled} with segment ids not permuted like its rows",
                           "permute the ids with the rows")
    return x.fact if isinstance(x.fact, Invariant) else reduced(call, x, 0, True, call.arg(3, "kind"), subsets=True)


def _equal_rows(x: Operand) -> bool:
    """Every row the same (ones to count with): moving the rows changes nothing."""
    return isinstance(x.fact, Uniform) and 0 in x.fact.axes


def _into_relabelled_sets(call: Call, x: Operand, ids: Operand) -> Fact:
    """Equal rows count the ids in each set: the counts move with the relabelling, however the ids are ordered."""
    rows_permuted = isinstance(x.fact, Permuted) and 0 in x.fact.axes
    other_sets = call.shape[0] != call.group.dim
    unlike = not _equal_rows(x) and (rows_permuted != (0 in ids.fact.axes) or
                                     (rows_permuted and x.fact.by != ids.fact.by))
    if other_sets or unlike:
        why = f"into sets {call.shape[0]} that are not {call.group.dim}" if other_sets else "with rows not permuted like the ids"
        return call.broken(f"{call.spelled} by ids that {call.group} relabels, {why}",
                           f"pool into `like` with dim 0 {call.group.dim}, the dim the ids index")
    return _permuted_at(call, reduced(call, x, 0, True, call.arg(3, "kind"), subsets=True), 0)


def _permuted_at(call: Call, fact: Fact, axis: int, by: str = "") -> Fact:
    """`fact`, with the group's permutation (or the one `by` names) on `axis` as well."""
    if isinstance(fact, Invariant):
        return Permuted((axis,), by)
    if isinstance(fact, Permuted) and not fact.by and not by and axis not in fact.axes:
        return Permuted(tuple(sorted((*fact.axes, axis))))
    return fact if isinstance(fact, Broken) else call.broken(
        f"{call.spelled}: its index permutes axis {axis} of a result that is {fact}")


def symmetry_gather(call: Call) -> Fact:
    """x's elements along `axis` at an index's positions. Indices relabelled with a permutation of
    that axis pick the same elements after it, so x's facts on its other axes carry over; indices
    that do not relabel pick other elements of a permuted x. An index permuted along its own axis
    (edges reordered) permutes the result there."""
    x, index, axis = call.arg(0), call.arg(1, "index"), call.arg(2, "axis")
    along = isinstance(x.fact, Permuted) and axis in x.fact.axes and not x.fact.by
    relabels = isinstance(index.fact, Relabeled)
    if along != relabels:
        return call.broken(f"gather of {what(x)} by indices that {call.group} relabels" if relabels else
                           f"gather of {what(x)} by indices that {call.group} does not relabel",
                           f"declare the index input `is index({x.shape[axis]})`" if along else
                           f"gather along a set axis {call.group} permutes")
    if axis in axes_of(x.fact) and not along:
        return call.broken(f"gather over the coordinates of {what(x)}", COORD_HINT)
    rest = moved(x.fact, [k for k in x.fact.axes if k != axis]) if along else x.fact
    moves = index.fact.axes if isinstance(index.fact, (Relabeled, Permuted)) else ()
    return _permuted_at(call, rest, axis, index.fact.by) if moves else rest


def symmetry_mask_select(call: Call) -> Fact:
    """The places along `axis` that a mask keeps, in order: facts of the other axes carry over
    (ids stay ids); a mask that moves, or a kept part of a set, breaks them."""
    x, mask, axis = call.arg(0), call.arg(1, "mask"), call.arg(2, "axis")
    if not isinstance(mask.fact, Invariant) or axis in axes_of(x.fact):
        return call.broken(f"a mask selection along {x.shape[axis]} of {what(x)} by {what(mask)}",
                           POOL_HINT.format(dim=x.shape[axis]))
    return x.fact


def symmetry_arange(call: Call) -> Fact:
    """0, 1, ..., n-1 along a set the group permutes are that set's own ids: S(N) relabels them as it
    moves them (the self loops of a graph). Along any other axis, plain integers."""
    like, axis = call.arg(0), call.arg(1, "axis")
    if isinstance(like.fact, Permuted) and axis in like.fact.axes and not like.fact.by:
        return Relabeled((0,), call.group.dim)
    if axis in axes_of(like.fact):
        return call.broken(f"arange over {like.shape[axis]}, which {call.group} permutes blockwise")
    return Invariant()


# -- torch forms: the fx call_function targets -----------------------------------------------------
def mask_select(x, mask, axis):
    return x[(slice(None),) * axis + (mask,)]


def arange(like, axis):
    return torch.arange(like.shape[axis], device=like.device)


def _mask_like(mask, x):
    """Mask over x's leading dims, given trailing singleton dims so it broadcasts against x."""
    return mask.reshape(mask.shape + (1,) * (x.dim() - mask.dim()))


def masked_reduce(x, mask, axis, kind):
    if mask is None:
        return {"sum": x.sum, "mean": x.mean, "max": x.amax, "min": x.amin}[kind](axis)
    m = _mask_like(mask, x)
    if kind in ("sum", "mean"):
        total = torch.where(m, x, 0).sum(axis)
        if kind == "sum":
            return total
        return total / m.sum(axis).clamp(min=1).to(x.dtype)
    # ±inf at padding never wins a real element; a set with none is set to 0 afterwards.
    fill = -math.inf if kind == "max" else math.inf
    reduced = torch.where(m, x, fill).amax(axis) if kind == "max" else torch.where(m, x, fill).amin(axis)
    return torch.where(m.any(axis), reduced, 0)


def attention_pool(x, query, mask=None):
    if mask is not None:
        x = torch.where(mask[..., None], x, 0)  # padding content must not reach the sum
    scores = torch.matmul(x, query) * (1.0 / math.sqrt(x.shape[-1]))
    if mask is not None:
        # The most negative finite value, as attention does: an empty set stays finite...
        scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
    weights = torch.softmax(scores, -1)
    if mask is not None:
        weights = weights * mask  # ...and then gets weight 0 everywhere, so pools to 0
    return (weights[..., None] * x).sum(-2)


def segment_counts(offsets):
    return offsets[1:] - offsets[:-1]


def segment_ids(offsets, rows: int):
    """Each row's set index, from CSR offsets."""
    sets = torch.arange(offsets.shape[0] - 1, device=offsets.device)
    return torch.repeat_interleave(sets, segment_counts(offsets), output_size=rows)


def segment_reduce(x, offsets, kind, deterministic=False):
    if deterministic:
        # One ordered pass per set: no scatter, so no atomics on a GPU.
        out = torch.segment_reduce(x, kind, offsets=offsets, axis=0)
        present = _mask_like(segment_counts(offsets) > 0, out)
        return torch.where(present, out, 0)
    return scatter_reduce(x, segment_ids(offsets, x.shape[0]), offsets[1:], kind)


def scatter_reduce(x, segment_ids, like, kind):
    sets, rows = like.shape[0], x.shape[0]
    out = x.new_zeros((sets,) + x.shape[1:])
    if kind in ("sum", "mean"):
        out.index_add_(0, segment_ids, x)
        if kind == "mean":
            count = torch.zeros(sets, dtype=x.dtype, device=x.device)
            count.index_add_(0, segment_ids, torch.ones(rows, dtype=x.dtype, device=x.device))
            out = out / _mask_like(count.clamp(min=1), out)
        return out
    index = segment_ids.long().reshape((rows,) + (1,) * (x.dim() - 1)).expand_as(x)  # scatter takes i64 only
    # include_self=False: a set no row reaches keeps the 0 it started with.
    return out.scatter_reduce_(0, index, x, "amax" if kind == "max" else "amin", include_self=False)


def gather(x, index, axis):
    return torch.index_select(x, axis, index)


# -- ONNX emitters ----------------------------------------------------------------------------------
REDUCE = {"sum": "ReduceSum", "mean": "ReduceMean", "max": "ReduceMax", "min": "ReduceMin"}
SCATTER = {"sum": "add", "mean": "add", "max": "max", "min": "min"}
IDENTITY = {"sum": 0.0, "mean": 0.0, "max": -math.inf, "min": math.inf}


def _fill(g, shape: str, value, dtype: str) -> str:
    return g.op("ConstantOfShape", shape, value=helper.make_tensor("value", onnx_type(dtype), [1], [value]))


def _trailing(g, t: str, start: int, rank: int) -> str:
    """Unsqueeze t at axes start..rank-1, so a leading-dims tensor broadcasts against rank `rank`."""
    return t if start >= rank else g.op("Unsqueeze", t, g.ints(range(start, rank)))


def _masked(g, x: str, mask: str | None, axis: int, kind: str, rank: int, dtype: str) -> str:
    axes = g.ints([axis])
    if mask is None:
        out = g.op(REDUCE[kind], x, axes, keepdims=0)
        return out if kind in ("sum", "mean") else keep_nan(g, out, x, axes, rank, dtype)
    keep = _trailing(g, mask, axis + 1, rank)
    real = g.op("Where", keep, x, g.scalar(0.0, dtype))
    if kind == "sum":  # no count: onnxruntime runs nodes whose results nobody reads
        return g.op("ReduceSum", real, axes, keepdims=0)
    count = _trailing(g, g.op("ReduceSum", g.op("Cast", mask, to=onnx_type(dtype)), axes, keepdims=0),
                      axis, rank - 1)
    if kind == "mean":
        return g.op("Div", g.op("ReduceSum", real, axes, keepdims=0), g.op("Max", count, g.scalar(1.0, dtype)))
    out = g.op(REDUCE[kind], g.op("Where", keep, x, g.scalar(IDENTITY[kind], dtype)), axes, keepdims=0)
    out = keep_nan(g, out, real, axes, rank, dtype)
    return g.op("Where", g.op("Greater", count, g.scalar(0.0, dtype)), out, g.scalar(0.0, dtype))


def onnx_masked_reduce(g, node, x, mask, axis, kind):
    return _masked(g, g.value(x), None if mask is None else g.value(mask), axis, kind,
                   len(x.meta["shape"]), x.meta["dtype"])


def onnx_attention_pool(g, node, x, query, mask):
    dtype, width = x.meta["dtype"], x.meta["shape"][-1]
    xv = g.value(x)
    if mask is not None:
        xv = g.op("Where", g.op("Unsqueeze", g.value(mask), g.ints([-1])), xv, g.scalar(0.0, dtype))
    scores = g.op("Mul", g.op("MatMul", xv, g.value(query)), g.scalar(1.0 / math.sqrt(width), dtype))
    if mask is not None:
        scores = g.op("Where", g.value(mask), scores, g.scalar(np.finfo(numpy_dtype(dtype)).min, dtype))
    weights = g.op("Softmax", scores, axis=-1)
    if mask is not None:
        weights = g.op("Mul", weights, g.op("Cast", g.value(mask), to=onnx_type(dtype)))
    return g.op("ReduceSum", g.op("Mul", g.op("Unsqueeze", weights, g.ints([-1])), xv), g.ints([-2]),
                keepdims=0)


def _segment_ids(g, offsets: str, x: str) -> str:
    """Each row's set: a +1 at every interior offset, then a running sum (O(rows + sets))."""
    rows = g.op("Shape", x, start=0, end=1)
    inner = g.op("Slice", offsets, g.ints([1]), g.ints([-1]), g.ints([0]))
    ones = _fill(g, g.op("Shape", inner), 1, "i64")
    # R + 1 slots: an interior offset equal to R (trailing empty sets) lands in the spare one.
    marks = g.op("ScatterElements", _fill(g, g.op("Add", rows, g.ints([1])), 0, "i64"), inner, ones,
                 axis=0, reduction="add")
    return g.op("Slice", g.op("CumSum", marks, g.ints([0])), g.ints([0]), rows, g.ints([0]))


def _offsets_counts(g, offsets: str) -> str:
    return g.op("Sub", g.op("Slice", offsets, g.ints([1]), g.ints([2 ** 62]), g.ints([0])),
                g.op("Slice", offsets, g.ints([0]), g.ints([-1]), g.ints([0])))


def _scatter(g, x: str, ids: str, count: str, kind: str, rank: int, dtype: str) -> str:
    """[R, ...] rows into [S, ...] sets by ScatterND; count [S] (i64) is each set's row count.
    onnxruntime has no f16 ScatterND with a reduction, so f16 rows are reduced in f32 (exact for
    max and min; a sum rounds once, at the end)."""
    if dtype == "f16":
        wide = _scatter(g, g.op("Cast", x, to=onnx_type("f32")), ids, count, kind, rank, "f32")
        return g.op("Cast", wide, to=onnx_type("f16"))
    shape = g.op("Concat", g.op("Shape", count), g.op("Shape", x, start=1), axis=0)
    index = g.op("Unsqueeze", ids, g.ints([1]))
    out = g.op("ScatterND", _fill(g, shape, IDENTITY[kind], dtype), index, x, reduction=SCATTER[kind])
    if kind == "sum":  # before the count's cast: onnxruntime runs nodes whose results nobody reads
        return out
    count = _trailing(g, g.op("Cast", count, to=onnx_type(dtype)), 1, rank)
    if kind == "mean":
        return g.op("Div", out, g.op("Max", count, g.scalar(1.0, dtype)))

    def with_nan(b):  # ScatterND's max and min drop NaN too; a sum of the NaN rows puts it back
        nans = b.op("Where", b.op("IsNaN", x), x, b.scalar(0.0, dtype))
        return b.op("Add", out, b.op("ScatterND", _fill(b, shape, 0.0, dtype), index, nans, reduction="add"))
    out = unless_nan_free(g, x, rank, out, with_nan, dtype)
    return g.op("Where", g.op("Greater", count, g.scalar(0.0, dtype)), out, g.scalar(0.0, dtype))


def _gathered(g, x: str, offsets: str, count: str, kind: str, rank: int, dtype: str) -> str:
    """Deterministic: gather each set's rows into [S, L, ...] (L = largest set), reduce axis 1."""
    longest = g.op("ReduceMax", count, g.ints([0]), keepdims=0)
    slot = g.op("Range", g.const(np.array(0, np.int64)), longest, g.const(np.array(1, np.int64)))
    starts = g.op("Slice", offsets, g.ints([0]), g.ints([-1]), g.ints([0]))
    rows = g.op("Add", g.op("Unsqueeze", starts, g.ints([1])), g.op("Unsqueeze", slot, g.ints([0])))
    real = g.op("Less", g.op("Unsqueeze", slot, g.ints([0])), g.op("Unsqueeze", count, g.ints([1])))
    rows = g.op("Where", real, rows, g.const(np.array(0, np.int64)))
    return _masked(g, g.op("Gather", x, rows, axis=0), real, 1, kind, rank + 1, dtype)


def _checked_offsets(g, offsets: str, dtype: str, x: str) -> str:
    """CSR offsets as i64, checked at run time to start at 0, never decrease and end at x's row count,
    which the graph reads from x itself: rows the model computes (gathered ones) are counted right."""
    ov = offsets if dtype == "i64" else g.op("Cast", offsets, to=onnx_type("i64"))
    ends = g.op("Concat", g.op("Slice", ov, g.ints([0]), g.ints([1]), g.ints([0])),
                g.op("Sub", g.op("Slice", ov, g.ints([-1]), g.ints([2 ** 62]), g.ints([0])),
                     g.op("Shape", x, start=0, end=1)), axis=0)
    wrong = g.op("Concat", g.op("Not", g.op("Equal", ends, g.scalar(0, "i64"))),
                 g.op("Less", _offsets_counts(g, ov), g.scalar(0, "i64")),
                 g.op("Less", g.op("Size", ov), g.ints([2])), axis=0)
    return g.refuse_unless(g.all_false(wrong), ov, "its CSR offsets must start at 0, never decrease and "
                                                   "end at the row count of its input, with at least 2 entries")


def onnx_segment_reduce(g, node, x, offsets, kind, deterministic):
    xv, rank, dtype = g.value(x), len(x.meta["shape"]), x.meta["dtype"]
    ov = _checked_offsets(g, g.value(offsets), offsets.meta["dtype"], xv)
    count = _offsets_counts(g, ov)
    if deterministic:
        return _gathered(g, xv, ov, count, kind, rank, dtype)
    return _scatter(g, xv, _segment_ids(g, ov, xv), count, kind, rank, dtype)


def onnx_scatter_reduce(g, node, x, segment_ids, like, kind):
    sets_ = g.op("Shape", g.value(like), start=0, end=1)
    ids = g.indices(g.value(segment_ids), segment_ids.meta["dtype"], lambda: sets_,
                    f"[0, {like.meta['shape'][0]}), the sets (dim 0 of `like`)")
    ones = _fill(g, g.op("Shape", ids), 1, "i64")
    count = g.op("ScatterElements", _fill(g, sets_, 0, "i64"), ids, ones, axis=0, reduction="add")
    return _scatter(g, g.value(x), ids, count, kind, len(x.meta["shape"]), x.meta["dtype"])


def onnx_mask_select(g, node, x, mask, axis):
    return g.op("Compress", g.value(x), g.value(mask), axis=axis)


def onnx_arange(g, node, like, axis):
    size = g.op("Squeeze", g.op("Shape", g.value(like), start=axis, end=axis + 1), g.ints([0]))
    return g.op("Range", g.scalar(0, "i64"), size, g.scalar(1, "i64"))


def onnx_gather(g, node, x, index, axis):
    xv = g.value(x)
    checked = g.indices(g.value(index), index.meta["dtype"], lambda: g.op("Shape", xv, start=axis, end=axis + 1),
                        f"[0, {x.meta['shape'][axis]}), the size of axis {axis} of its input")
    return g.op("Gather", xv, checked, axis=axis)


INDICES = frozenset({"indices"})
TABLE = "sets and frames"  # the table of dsl/LANGUAGE.md that lists its spec ops
SPEC = (
    SpecOp("pool", check_pool, Doc("pool", '`pool(x, axis=N, kind="sum", mask=m)`', "`kind` is sum, mean, max or min; "
                                   "`mask: bool` over x's dims up to the set axis; an empty set gives 0"),
           emits=("masked_reduce",)),
    SpecOp("attention_pool", check_attention_pool, Doc(
        "attention_pool", "`attention_pool(x, axis=N, mask=m)`",
        "softmax-attention pooling with a learned query over `[..., N, D]`")),
    SpecOp("segment_pool", check_segment_pool, Doc(
        "segment_pool", '`segment_pool(x, offsets, kind="sum", deterministic=false)`',
        "ragged sets: CSR `offsets: i64[S]` (0, then where each set ends) → `[S-1, ...]`; "
        "`deterministic=true` uses no atomics"), emits=("segment_reduce",)),
    SpecOp("scatter_pool", check_scatter_pool, Doc(
        "scatter_pool", '`scatter_pool(x, ids, like=t, kind="sum")`',
        "ragged sets by segment id; the number of sets is dim 0 of `like`; an id outside the sets is "
        "refused at run time"), emits=("scatter_reduce",)),
    SpecOp("gather", check_gather, Doc(
        "gather", "`gather(x, index, axis=N)`",
        "the elements of x at the positions `index: i64[E]` along `axis`, which becomes `E` (an edge list's "
        "end nodes); an index outside the axis is refused at run time")),
)
GRAPH = (
    GraphOp(masked_reduce, symmetry_masked_reduce, onnx_masked_reduce, embed=True),
    GraphOp(attention_pool, symmetry_attention_pool, onnx_attention_pool, embed=True),
    GraphOp(segment_reduce, symmetry_segment_reduce, onnx_segment_reduce, embed=True, offsets=1),
    GraphOp(scatter_reduce, symmetry_scatter_reduce, onnx_scatter_reduce, embed=True, reads=INDICES,
            uniform=lambda call: uniform_axes(call.arg(0), len(call.shape)) - {0},  # each set reduces whole rows
            indices=Indices(1, lambda node: node.value.type.shape[0], spare_last=True)),
    GraphOp(mask_select, symmetry_mask_select, onnx_mask_select, embed=True, reads=INDICES),
    GraphOp(arange, symmetry_arange, onnx_arange, embed=True, reads=INDICES),
    GraphOp(gather, symmetry_gather, onnx_gather, lambda x, index, axis: f"{x}.index_select({axis}, {index})",
            reads=INDICES, indices=Indices(1, lambda node: node.args[0].type.shape[node.kwargs["axis"]])),
)


# -- lifts of captured ATen ops (capture/lift.py) ------------------------------------------------
def lift_index_select(g, n, x, dim, index):
    x, index = g.tensor(x), g.tensor(index)
    if len(index.type.shape) != 1:
        g.refuse("an index_select by a tensor that is not 1-D")
    return g.emit("gather", (x, index), {"axis": dim % len(x.type.shape)})


def lift_index(g, n, x, indices):
    """x[idx] or x[:, idx]: one 1-D integer index, the other places None, is a gather."""
    picked = [(k, i) for k, i in enumerate(indices) if i is not None]
    if len(picked) != 1:
        g.refuse("advanced indexing with several index tensors")
    axis, index = picked[0]
    index = g.tensor(index)
    if index.type.dtype == "bool" and len(index.type.shape) == 1:
        return g.emit("mask_select", (g.tensor(x), index), {"axis": axis})
    if index.type.dtype not in INTS or len(index.type.shape) != 1:
        g.refuse("indexing by a mask or by a tensor that is not 1-D")
    return g.emit("gather", (g.tensor(x), index), {"axis": axis})


def lift_arange(g, n, *args, dtype=None, **options):
    """arange(n) over a tensor's size: the ids of that axis."""
    start, end, step = (0, args[0], 1) if len(args) == 1 else (*args, 1)[:3]
    end = g.readable(end) if hasattr(end, "dim") else end
    if start != 0 or step != 1 or getattr(end, "value", None) is None or dtype not in (None, torch.int64):
        g.refuse("an arange that does not count the places of an axis")
    return g.emit("arange", (end.value, end.axis))


def lift_filled(g, n, *args, **options):
    """A tensor of one value built in forward: new_zeros(like, size), zeros(size), new_ones, ones,
    new_full(like, size, v), full(size, v). Zeros stay symbolic until read: a scatter into them is
    an aggregation (scatter_reduce); any other op reads them built."""
    name = str(n.target)
    sizes = args[1] if name.startswith("aten.new_") else args[0]
    fill = {"aten.new_full.default": args[-1], "aten.full.default": args[-1]}.get(name, "ones" in name)
    return g.zeros(sizes) if fill == 0 else g.filled(sizes, fill)


def lift_scatter(kind_of):
    def lift(g, n, into, dim, index, src, *rest, **kw):
        """A scatter (or index_add) into zeros along dim 0, by ids per row, is scatter_reduce."""
        kind = kind_of(g, *rest, **kw)
        src = g.tensor(src)
        if not g.is_zeros(into) or dim % len(src.type.shape) != 0:
            g.refuse("a scatter into a tensor that is not fresh zeros, or along an axis other than 0")
        rows = src.type.shape[0]
        ids = g.ids(n.args[2], rows, whole=str(n.target).startswith("aten.scatter"))
        if into.type.shape[1:] != src.type.shape[1:] or into.type.dtype != src.type.dtype:
            g.refuse("a scatter whose rows do not fill the zeros they go into")
        return g.emit("scatter_reduce", (src, ids, g.like(into.sizes[0])), {"kind": kind})
    return lift


def _reduce_kind(g, reduce, include_self=True):
    kind = {"sum": "sum", "amax": "max", "amin": "min", "mean": "mean"}.get(reduce)
    if kind is None or (include_self and kind != "sum"):  # into zeros, include_self adds 0 to a sum only
        g.refuse(f"scatter_reduce {reduce!r} with include_self={include_self}")
    return kind


def _add_kind(g, alpha=1):
    if alpha != 1:
        g.refuse(f"index_add with alpha={alpha}")
    return "sum"


ATEN = {
    "aten.index_select.default": lift_index_select,
    "aten.index.Tensor": lift_index,
    "aten.arange.start": lift_arange, "aten.arange.default": lift_arange, "aten.arange.start_step": lift_arange,
    **{f"aten.{op}.default": lift_filled for op in ("new_zeros", "zeros", "new_full", "full", "new_ones", "ones")},
    "aten.scatter_add_.default": lift_scatter(lambda g: "sum"), "aten.scatter_add.default": lift_scatter(lambda g: "sum"),
    "aten.scatter_reduce_.two": lift_scatter(_reduce_kind), "aten.scatter_reduce.two": lift_scatter(_reduce_kind),
    "aten.index_add_.default": lift_scatter(_add_kind), "aten.index_add.default": lift_scatter(_add_kind),
}
