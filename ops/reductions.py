"""Reductions over one axis: sum, mean, max and min (reduce_sum, ... in graphs). Over a set they
forget its order; over the coordinates only a sum or mean of coordinate products is invariant."""
import math

from common.dtypes import FLOATS
from common.lazy import Lazy
from dsl.groups import Fact
from dsl.rules import Axis, Tensor, numeric
from dsl.symmetry_rules import Call, reduced, uniform_axes
from dsl.types import FLOATS, TensorType
from ops.op import Doc, GraphOp, SpecOp

np = Lazy("numpy")  # the check path imports no numpy, torch or onnx

KINDS = ("sum", "mean", "max", "min")  # the reductions; pool and friends take the same kinds


def check_reduction(ctx, x: Tensor, axis: Axis, keepdim: bool = False):
    numeric(ctx, x, ctx.op)
    if ctx.op == "mean" and x.type.dtype not in FLOATS:
        ctx.error(f"mean of an integer tensor {x.type}: its mean is not an integer",
                  "sum it, or declare the input as a float")
    ax = ctx.axis(x, axis)
    shape = tuple(1 if i == ax else d for i, d in enumerate(x.type.shape)) if keepdim else \
        x.type.shape[:ax] + x.type.shape[ax + 1:]
    return ctx.emit(f"reduce_{ctx.op}", (x,), TensorType(x.type.dtype, shape), kwargs={"axis": ax, "keepdim": keepdim})


def symmetry_reduce(call: Call) -> Fact:
    return reduced(call, call.arg(0), call.arg(1, "axis"), call.arg(2, "keepdim", False),
                   call.op.removeprefix("reduce_"))


def uniform_reduced(call: Call) -> set:
    """Uniform along the axes the input is, but for the one reduced (size 1 if kept)."""
    x, axis, keep = call.arg(0), call.arg(1, "axis"), call.arg(2, "keepdim", False)
    rest = uniform_axes(x, len(x.shape)) - {axis}
    return rest | {axis} if keep else {k - (k > axis) for k in rest}


def reduce_sum(x, axis, keepdim=False):
    return x.sum(axis, keepdim=keepdim, dtype=x.dtype)  # torch sums i32 to i64; ONNX and the checker keep i32


def reduce_mean(x, axis, keepdim=False):
    return x.mean(axis, keepdim=keepdim)


def reduce_max(x, axis, keepdim=False):
    return x.amax(axis, keepdim=keepdim)


def reduce_min(x, axis, keepdim=False):
    return x.amin(axis, keepdim=keepdim)


def onnx_reduce(op_type):
    # Opset 18 takes the axes of every Reduce* as an int64 input tensor.
    def emit(g, node, x, axis, keepdim):
        axes = g.ints(list(axis) if isinstance(axis, (tuple, list)) else [axis])
        out = g.op(op_type, g.value(x), axes, keepdims=int(keepdim))
        if op_type in ("ReduceMax", "ReduceMin") and x.meta["dtype"] in FLOATS:
            return keep_nan(g, out, g.value(x), axes, len(x.meta["shape"]), x.meta["dtype"], int(keepdim), x)
        return out
    return emit


def keep_nan(g, out: str, x: str, axes: str, rank: int, dtype: str, keepdims: int = 0, source=None) -> str:
    """`out`, a ReduceMax or ReduceMin of x over `axes`, with NaN wherever the entries it reduced hold one:
    onnxruntime's ReduceMax and ReduceMin drop a NaN that is not the first entry, where torch keeps it.
    A sum of squares per reduced group is NaN exactly when an entry is (squares never cancel: overflow
    gives inf, never inf - inf)."""
    def exact(b):
        squares = b.op("ReduceSumSquare", x, axes, keepdims=keepdims)
        return b.op("Add", out, b.op("Where", b.op("IsNaN", squares), b.scalar(math.nan, dtype), b.scalar(0.0, dtype)))
    return unless_nan_free(g, x, rank, out, exact, dtype, source)


def unless_nan_free(g, x: str, rank: int, out: str, with_nan, dtype: str, source=None) -> str:
    """`out` when x holds no NaN, else `with_nan(g)`, its NaN-keeping form. A sum of all of x is NaN
    whenever an entry is, so a ReduceSum, the cheapest pass over x onnxruntime has, decides; the exact
    form runs only when the sum is NaN (a NaN, or infinities or overflows of both signs). Always
    running it cost PointNet 20% of its time. The sum keeps the leading axis first: onnxruntime
    reduces to a scalar on one thread, 3.5x slower at PointNet's [64, 256, 1024]. When x (the fx node
    `source`) is linear maps and activations of one graph input, a bound on that input decides
    instead, reading 85x less at PointNet (input_bound)."""
    bound = input_bound(g, source) if source is not None else None
    if bound is not None:
        value, gain, offset, kind, rank_in = bound
        size = g.op("ReduceSum", _rows(g, g.op("Abs", value), rank_in), keepdims=0)  # ≥ max |input|; NaN, inf fail below
        unsure = g.op("Not", g.op("Less", size, g.scalar((FINITE[kind] - offset) / gain, kind)))
    else:
        unsure = g.op("IsNaN", g.op("ReduceSum", _rows(g, x, rank), keepdims=0))
    return g.branch(unsure, with_nan, lambda b: out, dtype)


def _rows(g, x: str, rank: int) -> str:
    """x summed over all its axes but the first: a sum to a scalar runs on one thread in onnxruntime."""
    return g.op("ReduceSum", x, g.ints(range(1, rank)), keepdims=0) if rank > 1 else x


FINITE = {"f16": 1e4, "f32": 1e37, "f64": 1e300}  # far below each type's largest value, rounding included
NOT_GROWING = {"relu", "reshape", "permute"}  # |f(v)| <= |v| entry by entry


def input_bound(g, node) -> tuple | None:
    """(the graph input's ONNX name, gain, offset, its dtype and rank) with every entry of `node` at most gain ·
    max|input| + offset in size, no partial sum included, when `node` is linear maps and activations
    that never grow an entry, of one graph input; None otherwise. A linear map grows entries by at
    most ‖W‖∞ (the largest row sum of |W|) and adds at most its largest |bias|. Below that bound in
    size, with the input finite, no NaN or infinity can arise, so the input alone decides."""
    steps, wider = [], 1.0  # how many times more entries the result has than the input
    while node.op == "call_function":
        name, args = node.target.__name__, node.args
        if name in ("linear", "channel_linear") and all(a is None or a.op == "get_attr" for a in args[1:3]):
            weight = g.tensor(args[1])
            w = np.abs(weight).reshape(weight.shape[0], -1)
            b = np.abs(g.tensor(args[2])).max() if len(args) > 2 and args[2] is not None else 0.0
            steps.append((float(w.sum(axis=1).max()), float(b)))
            wider *= w.shape[0] / w.shape[1]
        elif name in NOT_GROWING or (name == "leaky_relu" and abs(args[1]) <= 1):
            steps.append((1.0, 0.0))
        else:
            return None
        node = args[0]
    if node.op != "placeholder" or node.meta["dtype"] not in FINITE:
        return None
    gain, offset = 1.0, 0.0
    for grow, add in reversed(steps):
        gain, offset = grow * gain, grow * offset + add
    limit = FINITE[node.meta["dtype"]]
    ok = wider > 1 and 0 < gain < math.inf and offset < limit / 2  # else reading x itself costs less
    return (g.value(node), gain, offset, node.meta["dtype"], len(node.meta["shape"])) if ok else None


def triton_reduction(method: str):
    return lambda x, axis, keepdim: f"{x}.{method}({axis}, keepdim={keepdim})"


TABLE = "ops"  # the table of dsl/LANGUAGE.md that lists its spec ops
SPEC = (
    SpecOp("sum", check_reduction,
           Doc("sum, mean, max, min", "`sum(x, axis=N, keepdim=false)`", "reduction over one axis")),
    *(SpecOp(k, check_reduction) for k in KINDS[1:]),
)
GRAPH = (
    GraphOp(reduce_sum, symmetry_reduce, onnx_reduce("ReduceSum"),
            lambda x, axis, keepdim: f"{x}.sum({axis}, keepdim={keepdim}, dtype={x}.dtype)",
            reads=frozenset({"weights"}),  # softmax-weighted positions, summed over the weights' axis
            uniform=uniform_reduced),
    GraphOp(reduce_mean, symmetry_reduce, onnx_reduce("ReduceMean"), triton_reduction("mean"), uniform=uniform_reduced),
    GraphOp(reduce_max, symmetry_reduce, onnx_reduce("ReduceMax"), triton_reduction("amax"), uniform=uniform_reduced),
    GraphOp(reduce_min, symmetry_reduce, onnx_reduce("ReduceMin"), triton_reduction("amin"), uniform=uniform_reduced),
)


# -- lifts of captured ATen ops (capture/lift.py) ------------------------------------------------
def _over(g, x, dims, keepdim: bool, kind: str):
    """One reduce_<kind> per axis, the last first, so the remaining axes keep their numbers."""
    x = g.tensor(x)
    if x.type.dtype not in FLOATS:
        g.refuse(f"a {kind} of integers, which torch widens to i64")
    rank = len(x.type.shape)
    axes = sorted({d % rank for d in (dims if dims else range(rank))}, reverse=True)
    for k, axis in enumerate(axes):
        shape = tuple(1 if i == axis else d for i, d in enumerate(x.type.shape)) if keepdim else \
            x.type.shape[:axis] + x.type.shape[axis + 1:]
        x = g.emit(f"reduce_{kind}", (x,), {"axis": axis, "keepdim": keepdim}, type_=TensorType(x.type.dtype, shape))
    return x


def lift_reduce(kind: str):
    def lift(g, n, x, dims=None, keepdim=False, dtype=None):
        if dtype is not None:
            g.refuse(f"{kind} with a dtype")
        return _over(g, x, [dims] if isinstance(dims, int) else dims, keepdim, kind)
    return lift


def lift_max_dim(kind: str):
    """max.dim and min.dim: the values lift; the indices (an argmax) have no rule and are kept."""
    def lift(g, n, x, dim, keepdim=False):
        values = _over(g, x, [dim], keepdim, kind)
        return values, g.kept_item(n, 1)
    return lift


ATEN = {
    "aten.sum.dim_IntList": lift_reduce("sum"), "aten.sum.default": lift_reduce("sum"),
    "aten.mean.dim": lift_reduce("mean"), "aten.mean.default": lift_reduce("mean"),
    "aten.amax.default": lift_reduce("max"), "aten.amin.default": lift_reduce("min"),
    "aten.max.dim": lift_max_dim("max"), "aten.min.dim": lift_max_dim("min"),
}
