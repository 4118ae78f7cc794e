"""Reductions over one axis: sum, mean, max and min (reduce_sum, ... in graphs). Over a set they
forget its order; over the coordinates only a sum or mean of coordinate products is invariant."""
from common.dtypes import FLOATS
from dsl.groups import Fact
from dsl.rules import Axis, Tensor, numeric
from dsl.symmetry_rules import Call, reduced
from dsl.types import FLOATS, TensorType
from ops.op import Doc, GraphOp, SpecOp

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
            return g.op("Add", out, nan_term(g, g.value(x), axes, x.meta["dtype"], int(keepdim)))
        return out
    return emit


def nan_term(g, x: str, axes: str, dtype: str, keepdims: int = 0) -> str:
    """0 where the reduced entries hold no NaN, NaN where they do: a sum of the NaN entries only.
    onnxruntime's ReduceMax and ReduceMin (and ScatterND's max and min) drop a NaN that is not the
    first entry, where torch keeps it; adding this term keeps NaN in, NaN out."""
    return g.op("ReduceSum", g.op("Where", g.op("IsNaN", x), x, g.scalar(0.0, dtype)), axes, keepdims=keepdims)


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
            reads=frozenset({"weights"})),  # softmax-weighted positions, summed over the weights' axis
    GraphOp(reduce_mean, symmetry_reduce, onnx_reduce("ReduceMean"), triton_reduction("mean")),
    GraphOp(reduce_max, symmetry_reduce, onnx_reduce("ReduceMax"), triton_reduction("amax")),
    GraphOp(reduce_min, symmetry_reduce, onnx_reduce("ReduceMin"), triton_reduction("amin")),
)
