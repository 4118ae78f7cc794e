"""Reductions over one axis: sum, mean, max and min (reduce_sum, ... in graphs). Over a set they
forget its order; over the coordinates only a sum or mean of coordinate products is invariant."""
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
        axes = list(axis) if isinstance(axis, (tuple, list)) else [axis]
        return g.op(op_type, g.value(x), g.ints(axes), keepdims=int(keepdim))
    return emit


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
