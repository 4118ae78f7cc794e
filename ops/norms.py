"""Normalization over the last axis: layernorm and rmsnorm."""
from common.lazy import Lazy
from common.dtypes import onnx_type
from dsl.groups import Fact, Permuted, Rotated
from dsl.rules import Positive, Tensor, features
from dsl.symmetry_rules import COORD_HINT, Call, axis_name, what
from dsl.types import ParamSpec, Value
from ops.op import Doc, GraphOp, SpecOp

torch, F, helper = Lazy("torch"), Lazy("torch.nn.functional"), Lazy("onnx.helper")


# -- checker rules ---------------------------------------------------------------------------------
def _norm(ctx, x: Value, eps: float, affine: bool, with_bias: bool) -> Value:
    d = features(ctx, x)
    params = {"weight": ParamSpec((d,), "ones")} if affine else {}
    if affine and with_bias:
        params["bias"] = ParamSpec((d,), "zeros")
    return ctx.emit(ctx.op, (x,), x.type, kwargs={"eps": float(eps)}, params=params)


def check_layernorm(ctx, x: Tensor, eps: Positive = 1e-5, affine: bool = True):
    return _norm(ctx, x, eps, affine, with_bias=True)


def check_rmsnorm(ctx, x: Tensor, eps: Positive = 1e-6, affine: bool = True):
    return _norm(ctx, x, eps, affine, with_bias=False)


# -- symmetry rules --------------------------------------------------------------------------------
def symmetry_norm(call: Call) -> Fact:
    """Normalizing the last axis: statistics over a set are symmetric (a per-channel scale is
    not); an RMS over the 3 coordinates is a norm, so it rescales a vector without turning it."""
    x, weight, last = call.arg(0), call.arg(1), len(call.shape) - 1
    fact = x.fact
    if isinstance(fact, Permuted) and (last not in fact.axes or weight is None):
        return fact
    if call.op == "rmsnorm" and fact == Rotated(last) and weight is None:
        return fact
    hint = "use affine=false" if isinstance(fact, Permuted) or call.op == "rmsnorm" else COORD_HINT
    return call.broken(f"{call.spelled} of {what(x)} over {axis_name(x, last)}", hint)


# -- torch forms: the fx call_function targets -----------------------------------------------------
def layernorm(x, weight=None, bias=None, eps=1e-5):
    return F.layer_norm(x, x.shape[-1:], weight, bias, eps)


def rmsnorm(x, weight=None, eps=1e-6):
    y = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)
    return y if weight is None else y * weight


# -- ONNX emitters ----------------------------------------------------------------------------------
def _ones_like_last(g, x):
    # Built from the runtime width so a symbolic last dim works too; ORT folds it to a constant.
    width = g.op("Shape", g.value(x), start=-1)
    one = helper.make_tensor("value", onnx_type(x.meta["dtype"]), [1], [1])
    return g.op("ConstantOfShape", width, value=one)


def onnx_layernorm(g, node, x, weight, bias, eps):
    scale = _ones_like_last(g, x) if weight is None else g.value(weight)
    extra = [] if bias is None else [g.value(bias)]
    return g.op("LayerNormalization", g.value(x), scale, *extra, axis=-1, epsilon=float(eps))


def onnx_rmsnorm(g, node, x, weight, eps):
    xv, dt = g.value(x), x.meta["dtype"]
    # Pow(x, 2), not x*x: ORT's SimplifiedLayerNormFusion matches only Pow -> ReduceMean -> Add ->
    # Sqrt -> Div (about 5% off transformer_block's latency); unfused, ORT's Pow by 2 is still x*x.
    mean_sq = g.op("ReduceMean", g.op("Pow", xv, g.scalar(2.0, dt)), g.ints([-1]), keepdims=1)
    y = g.op("Div", xv, g.op("Sqrt", g.op("Add", mean_sq, g.scalar(eps, dt))))
    return y if weight is None else g.op("Mul", y, g.value(weight))


def triton_rmsnorm(x, weight, eps):
    scaled = f"{x} * torch.rsqrt({x}.pow(2).mean(-1, keepdim=True) + {eps})"
    return scaled if weight == "None" else f"{scaled} * {weight}"


TABLE = "ops"  # the table of dsl/LANGUAGE.md that lists its spec ops
SPEC = (
    SpecOp("layernorm", check_layernorm, Doc("layernorm, rmsnorm", "`layernorm(x, eps=1e-5, affine=true)`, "
                                             "`rmsnorm(x, eps=1e-6, affine=true)`", "over the last axis")),
    SpecOp("rmsnorm", check_rmsnorm),
)
GRAPH = (
    GraphOp(layernorm, symmetry_norm, onnx_layernorm,
            lambda x, weight, bias, eps: f"F.layer_norm({x}, {x}.shape[-1:], {weight}, {bias}, {eps})"),
    GraphOp(rmsnorm, symmetry_norm, onnx_rmsnorm, triton_rmsnorm),
)


# -- lifts of captured ATen ops (capture/lift.py) ------------------------------------------------
def lift_layer_norm(g, n, x, normalized_shape, weight=None, bias=None, eps=1e-5, cudnn_enable=True):
    x = g.tensor(x)
    if len(normalized_shape) != 1 or (weight is None) != (bias is None):
        g.refuse("a layer_norm over several axes, or with a weight and no bias")
    params = {} if weight is None else {"weight": g.given(weight.tensor), "bias": g.given(bias.tensor)}
    return g.emit("layernorm", (x,), {"eps": float(eps)}, params=params)


ATEN = {"aten.layer_norm.default": lift_layer_norm}


def batch_norm_affine(weight, bias, mean, var, training, eps):
    """(scale, shift) per channel, in float64, of a batch norm in eval mode: x * scale + shift; None in
    training mode or without running statistics."""
    if training or not all(hasattr(t, "tensor") for t in (mean, var)):
        return None
    scale = 1 / torch.sqrt(var.tensor.double() + eps)
    if weight is not None:
        scale = scale * weight.tensor.double()
    return scale, -mean.tensor.double() * scale + (0 if bias is None else bias.tensor.double())


def lift_batch_norm(g, n, x, weight, bias, mean, var, training, momentum, eps, cudnn_enabled=True):
    """Batch norm in eval mode is a fixed per-channel affine map on axis 1: x * scale + shift."""
    x = g.tensor(x)
    affine = batch_norm_affine(weight, bias, mean, var, training, eps)
    if affine is None:
        g.refuse("batch norm in training mode, or without running statistics")
    channels = (-1,) + (1,) * (len(x.type.shape) - 2)
    name = mean.name.rsplit(".", 1)[0]
    scale, shift = (g.constant(f"{name}.{k}", t.float().reshape(channels)) for k, t in zip(("scale", "shift"), affine))
    return g.emit("add", (g.emit("mul", (x, scale), type_=x.type), shift), type_=x.type)


def lift_batch_norm_no_training(g, n, x, weight, bias, mean, var, momentum, eps):
    """What functionalization makes of batch_norm in eval mode: (out, saved mean, saved rstd), of which
    models read the first."""
    return lift_batch_norm(g, n, x, weight, bias, mean, var, False, momentum, eps), None, None


ATEN["aten.batch_norm.default"] = lift_batch_norm
ATEN["aten._native_batch_norm_legit_no_training.default"] = lift_batch_norm_no_training
