"""What checker rules are written with: the annotations that type an op's arguments, and the checks
many ops share. The rules themselves live with their ops (ops/), and the checker receives them.

A rule's Python signature *is* the op's signature: the checker binds the call's arguments to it
(arity, keywords, defaults) and checks each against its annotation before the rule runs. The rule
then checks dtypes and shapes and emits graph ops through `ctx`.
"""

from dsl.types import FLOATS, TensorType, Value


class Tensor:
    """Annotation: a tensor argument."""


class Axis:
    """Annotation: an axis, by index (-1) or by the name of a symbolic dim (N)."""


class Positive(float):
    """Annotation: a finite number above 0, such as an epsilon (nan, inf, 0 and below are refused)."""


class DefRef:
    """Annotation: the name of a def, passed uncalled (a backbone for a wrapper such as
    frame_average); a rule expands it with `ctx.call_def(ref, tensors)`."""


def float_input(ctx, x: Value, what: str = "x") -> None:
    if x.type.dtype not in FLOATS:
        ctx.error(f"{ctx.op} expects a float tensor for `{what}`, got {x.type}")


def numeric(ctx, t: Value, what: str) -> None:
    """ONNX has no arithmetic on bool tensors: a mask is read by the ops that take `mask=`."""
    if t.type.dtype == "bool":
        ctx.error(f"{what} of a bool tensor {t.type}: there is no arithmetic on bool",
                  "use it as a mask (pool, attention_pool and attention take `mask=`)")


def weighted_input(ctx, x: Value) -> None:
    """An op with weights takes x in their dtype: invc's weights are f32, and ONNX multiplies only
    tensors of one dtype (an f16 or f64 x would give a file no runtime loads)."""
    float_input(ctx, x)
    if x.type.dtype != "f32":
        ctx.error(f"{ctx.op} has f32 weights, so it takes an f32 tensor, got {x.type}",
                  "declare the input f32 (invc's weights are f32)")


def features(ctx, x: Value) -> int:
    """The static width of x's last axis, which sizes the op's weights."""
    weighted_input(ctx, x)
    if x.type.rank == 0 or not isinstance(x.type.shape[-1], int):
        ctx.error(f"{ctx.op} needs a static last dim to size its weights, got {x.type}",
                  "make the feature axis an int or a model parameter")
    return x.type.shape[-1]


def with_last(x: Value, d: int) -> TensorType:
    return TensorType(x.type.dtype, x.type.shape[:-1] + (d,))
