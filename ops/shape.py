"""Shape ops: concat, reshape (and flatten, unsqueeze), permute (and transpose), and the rows
pass's unflatten_rows. A fact survives a reshape on every axis that keeps its size and stride."""
import ast
from dataclasses import replace

from common.dtypes import onnx_type
from common.lazy import Lazy
from dsl.errors import SpecError
from dsl.groups import Fact, Invariant, Permuted, Relabeled, Rotated, Stacked, Translated
from dsl.rules import Axis, Tensor
from dsl.symmetry_rules import (COORD_HINT, COORDINATES, POOL_HINT, Call, axes_of, axis_name, merged, moved,
                                uniform_axes, what)
from dsl.types import TensorType, Value, dim_product
from ops.op import Doc, GraphOp, SpecOp

torch, helper = Lazy("torch"), Lazy("onnx.helper")


# -- checker rules ---------------------------------------------------------------------------------
def check_concat(ctx, *tensors: Tensor, axis: Axis = -1):
    if not tensors:
        ctx.error("concat needs at least one tensor")
    first = tensors[0]
    ax = ctx.axis(first, axis)
    for t in tensors[1:]:
        if t.type.dtype != first.type.dtype or t.type.rank != first.type.rank or any(
                a != b for i, (a, b) in enumerate(zip(t.type.shape, first.type.shape)) if i != ax):
            ctx.error(f"concat along axis {ax}: {t.type} does not fit {first.type}")
    shape = list(first.type.shape)
    shape[ax] = sum_dims([t.type.shape[ax] for t in tensors])
    return ctx.emit("concat", (tuple(tensors),), TensorType(first.type.dtype, tuple(shape)),
                    kwargs={"axis": ax})


def sum_dims(dims):
    if all(isinstance(d, int) for d in dims):
        return sum(dims)
    if len(set(dims)) == 1:
        return dim_product([len(dims), dims[0]])
    return "+".join(map(str, dims))


def check_reshape(ctx, x: Tensor, shape: list):
    target = [ctx.dim(d) for d in shape]
    return ctx.emit("reshape", (x,), TensorType(x.type.dtype, tuple(target)),
                    kwargs={"shape": ctx.reshape_spec(x, tuple(target))})


def check_flatten(ctx, x: Tensor, start: Axis = 0, end: Axis = -1):
    s, e = ctx.axis(x, start), ctx.axis(x, end)
    if s > e:
        ctx.error(f"flatten: start axis {s} comes after end axis {e}")
    shape = x.type.shape
    target = shape[:s] + (dim_product(shape[s:e + 1]),) + shape[e + 1:]
    return ctx.emit("reshape", (x,), TensorType(x.type.dtype, target),
                    kwargs={"shape": ctx.reshape_spec(x, target)})


def check_permute(ctx, x: Tensor, order: list):
    perm = tuple(ctx.axis(x, a) for a in order)
    if sorted(perm) != list(range(x.type.rank)):
        ctx.error(f"permute order {list(perm)} is not a permutation of the {x.type.rank} axes of {x.type}")
    return ctx.emit("permute", (x,), TensorType(x.type.dtype, tuple(x.type.shape[p] for p in perm)),
                    kwargs={"perm": perm})


def check_transpose(ctx, x: Tensor, a: Axis = -2, b: Axis = -1):
    perm = list(range(x.type.rank))
    i, j = ctx.axis(x, a), ctx.axis(x, b)
    perm[i], perm[j] = perm[j], perm[i]
    return ctx.emit("permute", (x,), TensorType(x.type.dtype, tuple(x.type.shape[p] for p in perm)),
                    kwargs={"perm": tuple(perm)})


def check_unsqueeze(ctx, x: Tensor, axis: int):
    """A new axis of size 1 at `axis` (of the result), e.g. to pair set elements by broadcasting."""
    rank = x.type.rank + 1
    if not -rank <= axis < rank:
        ctx.error(f"unsqueeze: axis {axis} is out of range for a result of rank {rank}")
    ax = axis % rank
    target = x.type.shape[:ax] + (1,) + x.type.shape[ax:]
    return ctx.emit("reshape", (x,), TensorType(x.type.dtype, target),
                    kwargs={"shape": ctx.reshape_spec(x, target)})


# -- symmetry rules --------------------------------------------------------------------------------
def symmetry_concat(call: Call) -> Fact:
    parts, axis = call.arg(0), call.arg(1, "axis")
    fact = _with_fixed_rows(parts, axis)
    if fact is not None:
        return fact
    fact = merged(p.fact for p in parts)
    if fact is None:
        a = parts[0]
        b = next(p for p in parts if merged((a.fact, p.fact)) is None)
        return call.broken(f"concat joins {what(a)} with {what(b)}",
                           COORD_HINT if any(isinstance(p.fact, COORDINATES) for p in parts) else
                           "concat tensors that transform alike")
    if axis in axes_of(fact):
        return _union(call, parts, fact, axis) if isinstance(fact, Permuted) else _stacked(call, parts, fact, axis)
    return fact


def _union(call: Call, parts, fact: Permuted, axis: int) -> Fact:
    """Sets joined along their set axis (a union): the group's permutation acts on each part, so
    the result is permuted by the block permutation π ⊕ π, which `by` names. Ops that take any
    permutation of an axis, the same for every operand (pools, elementwise ops), accept it; ops
    that need the group's own (gather, frames) refuse a `by`."""
    if fact.by or fact.axes != (axis,):
        return call.broken(f"concat along {axis_name(parts[0], axis)}",
                           "concat along a feature axis, or concat sets with no other set axis")
    return Permuted((axis,), "+".join(f"[{p.shape[axis]}]" for p in parts))


def _with_fixed_rows(parts, axis: int) -> Fact | None:
    """Sets joined with rows that stay put (an edge list with self loops appended: node ids that
    S(N) relabels and moves, after ids it only relabels): the result is permuted blockwise, the
    fixed blocks by the identity, which `by` names ("E+[N]"). None: not such a join."""
    moving = [isinstance(p.fact, (Permuted, Relabeled)) and p.fact.axes == (axis,) and not p.fact.by for p in parts]
    indices = {isinstance(p.fact, Relabeled) for p in parts}
    fixed = [isinstance(p.fact, Invariant) or (isinstance(p.fact, Relabeled) and not p.fact.axes) for p in parts]
    if not any(moving) or len(indices) > 1 or not all(m or f for m, f in zip(moving, fixed)) or \
            (all(moving) and indices == {False}):  # sets only: _union's block permutation
        return None
    dims = {p.fact.dim for p in parts if isinstance(p.fact, Relabeled)}
    if len(dims) > 1:
        return None
    layout = "+".join(f"[{p.shape[axis]}]" if m else str(p.shape[axis]) for p, m in zip(parts, moving))
    return Relabeled((axis,), dims.pop(), layout) if dims else Permuted((axis,), layout)


def _stacked(call: Call, parts, fact: Fact, axis: int) -> Fact:
    """Vectors (or positions) concatenated along their coordinates: each part keeps its 3
    coordinates, which only a reshape to [..., k, 3] gives back an axis of their own."""
    if not isinstance(fact, (Rotated, Translated)):
        return call.broken(f"concat along {axis_name(parts[0], axis)}", "stack vectors along another axis")
    return Stacked(axis, isinstance(fact, Translated))


def same_axis(src: tuple, dst: tuple, k: int) -> int | None:
    """Where axis k of `src` survives a reshape to `dst` unmerged: same size, same stride."""
    before = dim_product(src[:k])
    return next((j for j, d in enumerate(dst) if d == src[k] and dim_product(dst[:j]) == before), None)


def symmetry_reshape(call: Call) -> Fact:
    x = call.arg(0)
    axes = [same_axis(x.shape, call.shape, k) for k in axes_of(x.fact)]
    if isinstance(x.fact, Invariant):
        return moved(x.fact, axes)
    if None in axes:
        lifted = (_merged_set(x, call.shape) or _split_set(x, call.shape)) if isinstance(x.fact, Permuted) else \
            _unstacked(x, call.shape)
        if lifted is not None:
            return lifted
        k = axes_of(x.fact)[axes.index(None)]
        return call.broken(f"{call.spelled} over {axis_name(x, k)}",
                           POOL_HINT.format(dim=x.shape[k]) if isinstance(x.fact, Permuted) else
                           "keep the 3 coordinates on an axis of their own")
    return moved(x.fact, axes)


def _merged_set(x, dst: tuple) -> Fact | None:
    """A set axis flattened with its neighbours into one axis (B·N rows, as graph libraries batch):
    the group's permutation acts on that axis blockwise, as `by` records (B*[N]: the N inside each B).
    Every permuted axis must land in the one merged axis. None: no such axis."""
    src, permuted = x.shape, x.fact.axes
    if x.fact.by:
        return None
    for s in range(min(permuted) + 1):
        for e in range(max(permuted), len(src)):
            j = next((j for j, d in enumerate(dst) if d == dim_product(src[s:e + 1])
                      and dim_product(dst[:j]) == dim_product(src[:s])), None)
            if j is not None:
                layout = "*".join(f"[{d}]" if k in permuted else str(d) for k, d in enumerate(src[s:e + 1], s))
                return Permuted((j,), layout)
    return None


def _split_set(x, dst: tuple) -> Fact | None:
    """A merged set axis (its layout in `by`: [N]*B, the N outside each B) split back into its factors
    in that order: the bracketed factors are set axes again, plainly permuted. None: not such a split."""
    if len(x.fact.axes) != 1 or not x.fact.by:
        return None
    factors = x.fact.by.split("*")
    sizes = tuple(int(f) if f.isdigit() else f for f in (f.strip("[]") for f in factors))
    before = dim_product(x.shape[:x.fact.axes[0]])
    for j in range(len(dst) - len(sizes) + 1):
        if tuple(dst[j:j + len(sizes)]) == sizes and dim_product(dst[:j]) == before:
            return Permuted(tuple(j + i for i, f in enumerate(factors) if f.startswith("[")))
    return None


def _unstacked(x, dst: tuple) -> Fact | None:
    """Vectors stacked along one axis split into [..., count, 3]: row i is the i-th vector again."""
    if not isinstance(x.fact, Stacked):
        return None
    k, src = x.fact.axis, x.shape
    count = src[k] // 3
    j = next((j for j in range(len(dst) - 1) if (dst[j], dst[j + 1]) == (count, 3)
              and dim_product(dst[:j]) == dim_product(src[:k])), None)
    return None if j is None else (Translated if x.fact.positions else Rotated)(j + 1)


def symmetry_unflatten_rows(call: Call) -> Fact:
    """Rows flattened from a set or from coordinates no longer say which axis moved (passes/rows.py
    runs after the symmetry check for that reason), so only invariant rows (handled by `apply`)
    keep a fact."""
    return call.broken(f"{call.spelled} of {what(call.arg(0))}", "flattened rows lose their axes")


def symmetry_permute(call: Call) -> Fact:
    x, perm = call.arg(0), list(call.arg(1, "perm"))
    return moved(x.fact, sorted(perm.index(k) for k in axes_of(x.fact)))


def symmetry_select(call: Call) -> Fact:
    """One element along an axis: the others' facts shift down; picking an element of a set, or
    one coordinate, breaks them."""
    x, axis = call.arg(0), call.arg(1, "axis")
    if axis in axes_of(x.fact):
        return call.broken(f"select of element {call.arg(2, 'index')} along {axis_name(x, axis)} of {what(x)}",
                           _part_hint(x, axis))
    return moved(x.fact, [k if k < axis else k - 1 for k in axes_of(x.fact)])


def _part_hint(x, axis: int) -> str:
    return COORD_HINT if isinstance(x.fact, COORDINATES) else POOL_HINT.format(dim=x.shape[axis])


def symmetry_narrow(call: Call) -> Fact:
    """A range of places along an axis: facts of the other axes stay; a part of a set, or some of the
    coordinates, breaks them."""
    x, axis = call.arg(0), call.arg(1, "axis")
    if axis in axes_of(x.fact):
        return call.broken(f"a slice along {axis_name(x, axis)} of {what(x)}", _part_hint(x, axis))
    return x.fact


def symmetry_tile(call: Call) -> Fact:
    """Copies of x laid end to end along some axes: facts of the axes copied once stay."""
    x, reps = call.arg(0), call.arg(1, "reps")
    copied = [k for k in axes_of(x.fact) if reps[k] != 1]
    if copied:
        return call.broken(f"a repeat along {axis_name(x, copied[0])} of {what(x)}",
                           "repeat along axes that no group moves")
    return x.fact


def symmetry_full_like(call: Call) -> Fact:
    """One value everywhere, whatever the tensor it is shaped like."""
    return Invariant()


def symmetry_expand(call: Call) -> Fact:
    """Copies along new leading axes, or along axes of size 1: every fact moves with its axes
    (the size sources give only their sizes)."""
    x = call.arg(0)
    return moved(x.fact, [k + len(call.shape) - len(x.shape) for k in axes_of(x.fact)])


# -- torch forms: the fx call_function targets -----------------------------------------------------
def select(x, axis, index):
    return x.select(axis, index)


def narrow(x, axis, start, end, step):
    return x[(slice(None),) * axis + (slice(start, end, step),)]


def tile(x, reps):
    return x.repeat(*reps)


def expand(x, sizes, *sources):
    """x broadcast to `sizes`: ints (-1 keeps x's dim) or (k, axis), the size of sources[k] along axis."""
    return x.expand(*(s if isinstance(s, int) else sources[s[0]].shape[s[1]] for s in sizes))


def full_like(x, value):
    return torch.full_like(x, value)


def concat(tensors, axis):
    return torch.cat(list(tensors), axis)


def reshape(x, shape, *sources):
    """ONNX-style: 0 copies the input's dim at that place, -1 is inferred. A captured reshape that moves
    several symbolic dims (lift_reshape) also reads (k,), x's axis k, and (j, k), sources[j]'s axis k."""
    return x.reshape([_size(x, s, sources) if isinstance(s, (tuple, list)) else x.shape[i] if s == 0 else s
                      for i, s in enumerate(shape)])


def _size(x, s, sources):
    return x.shape[s[0]] if len(s) == 1 else sources[s[0]].shape[s[1]]


def unflatten_rows(y, like):
    """y [rows, F] back to like's leading dims: [*like.shape[:-1], F]. The rows pass flattens a
    row-wise chain once; the leading dims are read from `like` at run time, so symbolic ones work."""
    return y.reshape(*like.shape[:-1], y.shape[-1])


def permute(x, perm):
    return x.permute(perm)


# -- ONNX emitters ----------------------------------------------------------------------------------
def onnx_concat(g, node, tensors, axis):
    return g.op("Concat", *(g.value(t) for t in tensors), axis=axis)


def onnx_reshape(g, node, x, shape, sources=()):
    # ONNX Reshape reads 0 (copy the input dim) and -1 (infer) exactly as the contract's spec; an axis
    # (k,) of x or (j, k) of a source is read from its Shape at run time.
    if not any(isinstance(s, (tuple, list)) for s in shape):
        return g.op("Reshape", g.value(x), g.ints(shape))
    parts = [g.ints([s]) if not isinstance(s, (tuple, list)) else
             g.op("Shape", g.value(x if len(s) == 1 else sources[s[0]]), start=s[-1], end=s[-1] + 1) for s in shape]
    return g.op("Reshape", g.value(x), g.op("Concat", *parts, axis=0))


def onnx_unflatten_rows(g, node, y, like):
    # like's leading dims and y's width, both read at run time: one Reshape serves every B and N.
    shape = g.op("Concat", g.op("Shape", g.value(like), end=-1), g.op("Shape", g.value(y), start=-1), axis=0)
    return g.op("Reshape", g.value(y), shape)


def onnx_permute(g, node, x, perm):
    return g.op("Transpose", g.value(x), perm=[p % len(perm) for p in perm])


def onnx_select(g, node, x, axis, index):
    return g.op("Gather", g.value(x), g.scalar(index, "i64"), axis=axis)


def onnx_narrow(g, node, x, axis, start, end, step):
    return g.op("Slice", g.value(x), g.ints([start]), g.ints([end]), g.ints([axis]), g.ints([step]))


def onnx_tile(g, node, x, reps):
    return g.op("Tile", g.value(x), g.ints(reps))


def onnx_expand(g, node, x, sizes, sources):
    dims = [g.ints([1 if s == -1 else s]) if isinstance(s, int) else
            g.op("Shape", g.value(sources[s[0]]), start=s[1], end=s[1] + 1) for s in sizes]
    return g.op("Expand", g.value(x), g.op("Concat", *dims, axis=0))


def onnx_full_like(g, node, x, value):
    one = helper.make_tensor("value", onnx_type(node.meta["dtype"]), [1], [value])
    return g.op("ConstantOfShape", g.op("Shape", g.value(x)), value=one)


def triton_reshape(x, shape, sources="()"):
    """The spec resolved in source: 0 copies the input's dim, (k,) and (j, k) read an axis."""
    def size(i, s):
        if isinstance(s, (tuple, list)):
            return f"{x}.shape[{s[0]}]" if len(s) == 1 else f"{sources}[{s[0]}].shape[{s[1]}]"
        return f"{x}.shape[{i}]" if s == 0 else str(s)
    return f"{x}.reshape({', '.join(size(i, s) for i, s in enumerate(ast.literal_eval(shape)))})"


TABLE = "ops"  # the table of dsl/LANGUAGE.md that lists its spec ops
SPEC = (
    SpecOp("concat", check_concat, Doc("concat", "`concat(a, b, ..., axis=-1)`", "")),
    SpecOp("reshape", check_reshape,
           Doc("reshape", "`reshape(x, [B, N, 4, 16])`", "at most one symbolic dim may move")),
    SpecOp("flatten", check_flatten,
           Doc("flatten", "`flatten(x, start=0, end=-1)`", "merges axes `start..end` (`[B, N*64]`)"), emits=("reshape",)),
    SpecOp("unsqueeze", check_unsqueeze, Doc("unsqueeze", "`unsqueeze(x, axis)`", "a new axis of size 1 (for pairwise messages)"),
           emits=("reshape",)),
    SpecOp("permute", check_permute, Doc("permute, transpose", "`permute(x, [B, 2, N])`, `transpose(x, a=-2, b=-1)`",
                                         "axes by index or by dim name")),
    SpecOp("transpose", check_transpose, emits=("permute",)),
)
GRAPH = (
    GraphOp(concat, symmetry_concat, onnx_concat, lambda tensors, axis: f"torch.cat({tensors}, {axis})",
            reads=frozenset({"indices"})),  # edge lists joined
    GraphOp(reshape, symmetry_reshape, onnx_reshape, triton_reshape, sees_invariants=True, keeps_weights=True,
            reads=frozenset({"stacked", "indices"})),  # vectors stacked along the coordinates, split again; ids
    GraphOp(unflatten_rows, symmetry_unflatten_rows, onnx_unflatten_rows,
            lambda y, like: f"{y}.reshape(*{like}.shape[:-1], {y}.shape[-1])"),
    GraphOp(permute, symmetry_permute, onnx_permute, lambda x, perm: f"{x}.permute({perm})",
            sees_invariants=True, keeps_weights=True, reads=frozenset({"outer"})),  # transposes a rank-2 tensor
    GraphOp(select, symmetry_select, onnx_select, lambda x, axis, index: f"{x}.select({axis}, {index})",
            reads=frozenset({"indices"})),  # a row of an edge list
    GraphOp(narrow, symmetry_narrow, onnx_narrow, embed=True, reads=frozenset({"indices"})),
    GraphOp(tile, symmetry_tile, onnx_tile, lambda x, reps: f"{x}.repeat(*{reps})", reads=frozenset({"indices"})),
    GraphOp(expand, symmetry_expand, onnx_expand, embed=True, reads=frozenset({"indices"}),
            uniform=lambda call: uniform_axes(call.arg(0), len(call.shape))),  # copies along new and size-1 axes
    GraphOp(full_like, symmetry_full_like, onnx_full_like, lambda x, value: f"torch.full_like({x}, {value})",
            sees_invariants=True, uniform=lambda call: set(range(len(call.shape)))),
)


# -- lifts of captured ATen ops (capture/lift.py) ------------------------------------------------
def lift_reshape(g, n, x, *rest):
    x, target = g.tensor(x), g.type(n)
    return x if target.shape == x.type.shape else reshaped(g, x, target.shape)


def reshaped(g, x: Value, shape: tuple) -> Value:
    """x reshaped to `shape` in a lift. The checker's spec (0 keeps a dim, -1 infers one) when it has
    one; else, for a reshape the model did that moves several symbolic dims (nn.MultiheadAttention's
    unsqueeze of [N, B, 3, 8], its split of N*B rows back into N and B), each read at run time from an
    axis of that name, of x or of another tensor of the call. A spec says how to compute sizes; the
    rule reads the shapes (same_axis)."""
    try:
        return g.emit("reshape", (x,), {"shape": g.ctx.reshape_spec(x, shape)}, type_=TensorType(x.type.dtype, shape))
    except SpecError as e:
        src, spec, sources = x.type.shape, [], []
        for i, d in enumerate(shape):
            if isinstance(d, int):
                spec.append(d)
            elif i < len(src) and src[i] == d:
                spec.append(0)
            elif src.count(d) == 1:
                spec.append((src.index(d),))
            elif (found := g.reader(d)) is not None:
                sources.append(found[0])
                spec.append((len(sources) - 1, found[1]))
            else:
                spec.append(-1)
        if spec.count(-1) > 1:
            g.refuse(e.message)
        return g.emit("reshape", (x, tuple(spec), *sources), type_=TensorType(x.type.dtype, shape))


def unsqueezed(g, x: Value, axis: int) -> Value:
    """x with a size-1 axis inserted before `axis`."""
    return reshaped(g, x, x.type.shape[:axis] + (1,) + x.type.shape[axis:])


def lift_permute(g, n, x, dims):
    x = g.tensor(x)
    perm = tuple(d % len(x.type.shape) for d in dims)
    return x if perm == tuple(range(len(perm))) else g.emit("permute", (x,), {"perm": perm})


def lift_transpose(g, n, x, a=0, b=1):
    x = g.tensor(x)
    perm = list(range(len(x.type.shape)))
    if perm:
        perm[a], perm[b] = perm[b], perm[a]
    return lift_permute(g, n, x, perm)


def lift_cat(g, n, tensors, dim=0):
    tensors = tuple(g.tensor(t) for t in tensors)
    return g.emit("concat", (tensors,), {"axis": dim % len(tensors[0].type.shape)})


def lift_select(g, n, x, dim, index):
    x = g.tensor(x)
    if not isinstance(index, int):
        g.refuse("a select at a computed place")
    return g.emit("select", (x,), {"axis": dim % len(x.type.shape), "index": index})


def lift_slice(g, n, x, dim=0, start=None, end=None, step=1):
    """x[a:b:s] along one axis: the whole axis is x itself; a part is narrow (static bounds only)."""
    x = g.tensor(x)
    axis = dim % len(x.type.shape)
    start, end = 0 if start is None else start, (1 << 62) if end is None else end
    if not all(isinstance(v, int) for v in (start, end, step)):
        g.refuse("a slice with bounds computed in forward")
    if start == 0 and step == 1 and (end >= (1 << 62) or end == x.type.shape[axis]):
        return x
    return g.emit("narrow", (x,), {"axis": axis, "start": start, "end": min(end, 1 << 62), "step": step})


def lift_unbind(g, n, x, dim=0):
    x = g.tensor(x)
    axis = dim % len(x.type.shape)
    if not isinstance(x.type.shape[axis], int):
        g.refuse(f"an unbind along the symbolic dim {x.type.shape[axis]}")
    return tuple(g.emit("select", (x,), {"axis": axis, "index": i}, item=i) for i in range(x.type.shape[axis]))


def lift_expand(g, n, x, sizes, implicit=False):
    x = g.tensor(x)
    sources, spec = [], []
    for k, s in enumerate(sizes):
        if isinstance(s, int):
            spec.append(s)
        elif g.readable(s).value is not None:
            s = g.readable(s)
            sources.append(s.value)
            spec.append((len(sources) - 1, s.axis))
        else:
            g.refuse(f"an expand to a size computed in forward ({s.dim})")
    return g.emit("expand", (x, tuple(spec), *sources))


def lift_repeat(g, n, x, repeats):
    x = g.tensor(x)
    if len(repeats) != len(x.type.shape) or not all(isinstance(r, int) for r in repeats):
        g.refuse("a repeat that adds axes, or by counts computed in forward")
    return g.emit("tile", (x, tuple(repeats)))


def lift_expand_as(g, n, x, other):
    other = g.tensor(other)
    sizes = [d if isinstance(d, int) else (0, k) for k, d in enumerate(other.type.shape)]
    return g.emit("expand", (g.tensor(x), tuple(sizes), other))


def lift_full_like(g, n, x, value=None, **options):
    """ones_like, full_like; zeros_like stays symbolic zeros of x's sizes, as new_zeros does, so that a
    scatter into them is an aggregation."""
    value = {"aten.ones_like.default": 1.0, "aten.zeros_like.default": 0.0}.get(str(n.target), value)
    x = g.tensor(x)
    if value == 0:  # of the result's dtype (a float mask made from a bool one)
        return g.zeros(g.sizes(x))
    if g.type(n).dtype != x.type.dtype:
        g.refuse("a full_like of another dtype")
    return g.emit("full_like", (x, value))


ATEN = {
    **{f"aten.{op}.default": lift_reshape for op in ("view", "reshape", "_unsafe_view", "unsqueeze", "squeeze")},
    **{f"aten.{op}": lift_reshape for op in ("flatten.using_ints", "squeeze.dim", "squeeze.dims", "unflatten.int")},
    "aten.permute.default": lift_permute, "aten.transpose.int": lift_transpose,
    "aten.t.default": lambda g, n, x: lift_transpose(g, n, x, 0, 1),
    "aten.numpy_T.default": lambda g, n, x: lift_permute(g, n, x, tuple(reversed(range(len(g.tensor(x).type.shape))))),
    "aten.cat.default": lift_cat, "aten.concat.default": lift_cat,
    "aten.select.int": lift_select, "aten.unbind.int": lift_unbind, "aten.slice.Tensor": lift_slice,
    "aten.expand.default": lift_expand, "aten.repeat.default": lift_repeat, "aten.expand_as.default": lift_expand_as,
    **{f"aten.{op}_like.default": lift_full_like for op in ("ones", "zeros", "full")},
}
