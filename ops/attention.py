"""Multi-head self-attention over axis -2, permutation-equivariant along it when no position
enters it (no causal mask over a set)."""
import math

from common.dtypes import numpy_dtype, onnx_type
from common.lazy import Lazy
from dsl.groups import Fact, Invariant, Permuted
from dsl.rules import Tensor, features
from dsl.symmetry_rules import COORD_HINT, POOL_HINT, Call, axes_of, merged, moving_weights, what
from dsl.types import ParamSpec, TensorType, broadcast
from ops.elementwise import as_dtype
from ops.linear import affine
from ops.op import Doc, GraphOp, SpecOp

torch, F, np, helper = Lazy("torch"), Lazy("torch.nn.functional"), Lazy("numpy"), Lazy("onnx.helper")


def check_attention(ctx, x: Tensor, heads: int = 1, mask: Tensor = None, causal: bool = False):
    """Multi-head self-attention over axis -2; `mask` is bool [..., N], True marking real keys."""
    d = features(ctx, x)
    if x.type.rank < 2:
        ctx.error(f"attention needs [..., N, D], got {x.type}")
    if heads < 1 or d % heads:
        ctx.error(f"attention: width {d} does not split into {heads} heads")
    if mask is not None and (mask.type.dtype != "bool" or mask.type.shape != x.type.shape[:-1]):
        ctx.error(f"attention mask must be {TensorType('bool', x.type.shape[:-1])}, got {mask.type}")
    params = {"w_qkv": ParamSpec((3 * d, d), "fan_in"), "b_qkv": ParamSpec((3 * d,), "zeros"),
              "w_out": ParamSpec((d, d), "fan_in"), "b_out": ParamSpec((d,), "zeros")}
    kwargs = {"heads": heads, "mask": mask, "causal": causal} if mask is not None else \
        {"heads": heads, "causal": causal}
    return ctx.emit("attention", (x,), x.type, kwargs=kwargs, params=params)


def symmetry_attention(call: Call) -> Fact:
    """Self-attention without positions is permutation-equivariant along its sequence axis."""
    x, mask = call.arg(0), call.kwargs.get("mask")
    refused = moving_weights(call, call.args[1:5])
    if refused or not isinstance(x.fact, (Invariant, Permuted)):
        return refused or call.broken(f"attention over {what(x)}", COORD_HINT)
    seq, last = len(x.shape) - 2, len(x.shape) - 1
    if last in axes_of(x.fact):
        return call.broken(f"attention over features indexed by {x.shape[last]}", POOL_HINT.format(dim=x.shape[last]))
    if call.kwargs.get("causal") and seq in axes_of(x.fact):
        return call.broken(f"causal attention over {x.shape[seq]}",
                           "a causal mask fixes an order; drop causal=true for sets")
    if mask is not None and merged((mask.fact, x.fact)) is None:
        return call.broken("attention's mask and input are not permuted alike",
                           "mask along the same set axes as the input")
    return x.fact


def attention(x, w_qkv, b_qkv, w_out, b_out, heads, mask=None, causal=False):
    """Multi-head self-attention over axis -2. `mask` is bool [B, N]: True marks a real key."""
    *lead, n, d = x.shape
    qkv = F.linear(x, w_qkv, b_qkv).reshape(*lead, n, 3, heads, d // heads)
    q, k, v = (qkv.select(-3, i).transpose(-2, -3) for i in range(3))
    scores = torch.matmul(q, k.transpose(-1, -2)) * (1.0 / math.sqrt(d // heads))
    # The most negative finite value, not -inf: a query whose keys are all masked then gets a
    # defined (uniform) mix instead of NaN, while NaN in the inputs still propagates.
    hidden = torch.finfo(scores.dtype).min
    if mask is not None:
        scores = scores.masked_fill(~mask[..., None, None, :], hidden)
    if causal:
        future = torch.ones(n, n, dtype=torch.bool, device=x.device).triu(1)
        scores = scores.masked_fill(future, hidden)
    weights = torch.softmax(scores, -1)
    out = torch.matmul(weights, v).transpose(-2, -3).reshape(*lead, n, d)
    return F.linear(out, w_out, b_out)


def _key_mask(g, mask):
    # [..., N] → [..., 1, 1, N]: one row per head and per query.
    rank = len(mask.meta["shape"])
    return g.op("Unsqueeze", g.value(mask), g.ints([rank - 1, rank]))


def _causal_keep(g, x):
    # Lower triangle of an N×N all-true square, N read at run time so one file serves every N.
    n = g.op("Shape", g.value(x), start=-2, end=-1)
    true = helper.make_tensor("value", onnx_type("bool"), [1], [True])
    square = g.op("ConstantOfShape", g.op("Concat", n, n, axis=0), value=true)
    return g.op("Trilu", square, upper=0)


def _hide(g, scores, keep, dt):
    # The dtype's most negative finite value, as the torch form: a fully masked row stays finite.
    return g.op("Where", keep, scores, g.scalar(np.finfo(numpy_dtype(dt)).min, dt))


def onnx_attention(g, node, x, w_qkv, b_qkv, w_out, b_out, heads, mask, causal):
    rank, d, dt = len(x.meta["shape"]), x.meta["shape"][-1], x.meta["dtype"]
    keep, lead = [0] * (rank - 1), list(range(rank - 2))
    qkv = g.op("Reshape", affine(g, g.value(x), w_qkv, b_qkv), g.ints(keep + [3, heads, -1]))
    # [..., N, 3, H, dh] → [3, ..., H, N, dh]: q, k and v are then the slices of axis 0.
    qkv = g.op("Transpose", qkv, perm=[rank - 1, *lead, rank, rank - 2, rank + 1])
    q, k, v = (g.op("Gather", qkv, g.const(np.array(i, np.int64)), axis=0) for i in range(3))
    k_t = g.op("Transpose", k, perm=[*range(rank - 1), rank, rank - 1])
    scores = g.op("Mul", g.op("MatMul", q, k_t), g.scalar(1.0 / math.sqrt(d // heads), dt))
    if mask is not None:
        scores = _hide(g, scores, _key_mask(g, mask), dt)
    if causal:
        scores = _hide(g, scores, _causal_keep(g, x), dt)
    out = g.op("MatMul", g.op("Softmax", scores, axis=-1), v)
    out = g.op("Transpose", out, perm=[*lead, rank - 1, rank - 2, rank])
    return affine(g, g.op("Reshape", out, g.ints(keep + [-1])), w_out, b_out)


TABLE = "ops"  # the table of dsl/LANGUAGE.md that lists its spec ops
SPEC = (
    SpecOp("attention", check_attention, Doc(
        "attention", "`attention(x, heads=1, mask=none, causal=false)`",
        "multi-head self-attention over axis -2 of `[..., N, D]`; `mask: bool[..., N]` marks real keys")),
)
GRAPH = (GraphOp(attention, symmetry_attention, onnx_attention, embed=True),)


# -- lifts of captured ATen ops (capture/lift.py) ------------------------------------------------
def lift_scaled_dot_product_attention(g, n, q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None,
                                      enable_gqa=False):
    """softmax(q kᵀ · scale + mask) v over the last two axes, as the matmuls and softmax it stands for
    (whose rules see keys and queries permuted alike). A bool mask hides keys by -inf, a float one is
    added; a query whose keys are all hidden gets 0, as torch gives, not a softmax's NaN."""
    if is_causal or dropout_p or enable_gqa:
        g.refuse("attention that is causal, with dropout or with grouped heads")
    q, k, v = (g.tensor(t) for t in (q, k, v))
    rank, dt = len(k.type.shape), q.type.dtype
    k_t = g.emit("permute", (k,), {"perm": (*range(rank - 2), rank - 1, rank - 2)},
                 type_=TensorType(dt, (*k.type.shape[:-2], k.type.shape[-1], k.type.shape[-2])))
    shape = (*q.type.shape[:-1], k.type.shape[-2])
    scores = g.emit("matmul", (q, k_t), type_=TensorType(dt, shape))
    factor = scale if scale is not None else 1.0 / math.sqrt(q.type.shape[-1])
    scores = g.emit("mul", (scores, float(factor)), type_=TensorType(dt, shape))
    kept = None
    if attn_mask is not None:
        mask = g.tensor(attn_mask)
        shape = broadcast(shape, mask.type.shape)
        if isinstance(shape, str):
            g.refuse(f"an attention mask {mask.type} that does not broadcast with the scores")
        if mask.type.dtype == "bool":
            scores = g.emit("where", (mask, scores, -math.inf), type_=TensorType(dt, shape))
            seen = as_dtype(g, mask, dt)
        else:
            scores = g.emit("add", (scores, mask), type_=TensorType(dt, shape))
            seen = mask
        most = g.emit("reduce_max", (seen,), {"axis": len(seen.type.shape) - 1, "keepdim": True},
                      type_=TensorType(dt, (*seen.type.shape[:-1], 1)))
        kept = g.emit("compare", (most, 0.0 if mask.type.dtype == "bool" else -math.inf, "gt"),
                      type_=TensorType("bool", most.type.shape))
    weights = g.emit("softmax", (scores,), {"axis": len(shape) - 1}, type_=TensorType(dt, shape))
    if kept is not None:
        weights = g.emit("where", (kept, weights, 0.0), type_=TensorType(dt, shape))
    return g.emit("matmul", (weights, v))


ATEN = {"aten.scaled_dot_product_attention.default": lift_scaled_dot_product_attention}
