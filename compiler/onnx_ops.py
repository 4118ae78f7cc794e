"""One ONNX emitter per op of runtime/ops.py.

An emitter takes the graph builder `g`, the fx node and the op's arguments in signature order
(defaults filled in), and returns the ONNX name of the result; the builder gives that value the
node's name. Numerics follow the torch functions exactly, mask semantics included.
"""
from __future__ import annotations

import math

import numpy as np
from onnx import helper

from common.dtypes import numpy_dtype, onnx_type
from runtime import ops



def _affine(g, x, weight, bias):
    y = g.op("MatMul", x, g.transposed(weight))
    return y if bias is None else g.op("Add", y, g.value(bias))


def _linear(g, node, x, weight, bias):
    return _affine(g, g.value(x), weight, bias)


def _embedding(g, node, ids, weight):
    return g.op("Gather", g.value(weight), g.value(ids), axis=0)


def _ones_like_last(g, x):
    # Built from the runtime width so a symbolic last dim works too; ORT folds it to a constant.
    width = g.op("Shape", g.value(x), start=-1)
    one = helper.make_tensor("value", onnx_type(x.meta["dtype"]), [1], [1])
    return g.op("ConstantOfShape", width, value=one)


def _layernorm(g, node, x, weight, bias, eps):
    scale = _ones_like_last(g, x) if weight is None else g.value(weight)
    extra = [] if bias is None else [g.value(bias)]
    return g.op("LayerNormalization", g.value(x), scale, *extra, axis=-1, epsilon=float(eps))


def _rmsnorm(g, node, x, weight, eps):
    xv, dt = g.value(x), x.meta["dtype"]
    # Pow(x, 2), not x*x: ORT's SimplifiedLayerNormFusion matches only Pow -> ReduceMean -> Add ->
    # Sqrt -> Div (about 5% off transformer_block's latency); unfused, ORT's Pow by 2 is still x*x.
    mean_sq = g.op("ReduceMean", g.op("Pow", xv, g.scalar(2.0, dt)), g.ints([-1]), keepdims=1)
    y = g.op("Div", xv, g.op("Sqrt", g.op("Add", mean_sq, g.scalar(eps, dt))))
    return y if weight is None else g.op("Mul", y, g.value(weight))


def _gelu(g, node, x):
    # Exact erf form, as torch's default F.gelu: x/2 * (1 + erf(x/sqrt 2)). Div, not Mul by
    # sqrt(0.5): ORT's GeluFusion matches only the Div form, and the fused Gelu is 1.3x faster on mlp.
    xv, dt = g.value(x), x.meta["dtype"]
    erf = g.op("Erf", g.op("Div", xv, g.scalar(math.sqrt(2.0), dt)))
    return g.op("Mul", g.op("Mul", xv, g.scalar(0.5, dt)), g.op("Add", erf, g.scalar(1.0, dt)))


def _silu(g, node, x):
    xv = g.value(x)
    return g.op("Mul", xv, g.op("Sigmoid", xv))


def _softmax(g, node, x, axis):
    return g.op("Softmax", g.value(x), axis=axis)


def _unary(op_type):
    return lambda g, node, x: g.op(op_type, g.value(x))


def _binary(op_type):
    # Operands are brought to the node's dtype, which carries torch's promotion (i64 / i64 is f32).
    def emit(g, node, a, b):
        dt = node.meta["dtype"]
        return g.op(op_type, g.operand(a, dt), g.operand(b, dt))
    return emit


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
    # The dtype's most negative finite value, as runtime/ops.py: a fully masked row stays finite.
    return g.op("Where", keep, scores, g.scalar(np.finfo(numpy_dtype(dt)).min, dt))


def _attention(g, node, x, w_qkv, b_qkv, w_out, b_out, heads, mask, causal):
    rank, d, dt = len(x.meta["shape"]), x.meta["shape"][-1], x.meta["dtype"]
    keep, lead = [0] * (rank - 1), list(range(rank - 2))
    qkv = g.op("Reshape", _affine(g, g.value(x), w_qkv, b_qkv), g.ints(keep + [3, heads, -1]))
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
    return _affine(g, g.op("Reshape", out, g.ints(keep + [-1])), w_out, b_out)


def _concat(g, node, tensors, axis):
    return g.op("Concat", *(g.value(t) for t in tensors), axis=axis)


def _reshape(g, node, x, shape):
    # ONNX Reshape reads 0 (copy the input dim) and -1 (infer) exactly as the contract's spec.
    return g.op("Reshape", g.value(x), g.ints(shape))


def _unflatten_rows(g, node, y, like):
    # like's leading dims and y's width, both read at run time: one Reshape serves every B and N.
    shape = g.op("Concat", g.op("Shape", g.value(like), end=-1), g.op("Shape", g.value(y), start=-1), axis=0)
    return g.op("Reshape", g.value(y), shape)


def _permute(g, node, x, perm):
    return g.op("Transpose", g.value(x), perm=[p % len(perm) for p in perm])


def _reduce(op_type):
    # Opset 18 takes the axes of every Reduce* as an int64 input tensor.
    def emit(g, node, x, axis, keepdim):
        axes = list(axis) if isinstance(axis, (tuple, list)) else [axis]
        return g.op(op_type, g.value(x), g.ints(axes), keepdims=int(keepdim))
    return emit


EMITTERS = {
    ops.linear: _linear,
    ops.embedding: _embedding,
    ops.layernorm: _layernorm,
    ops.rmsnorm: _rmsnorm,
    ops.relu: _unary("Relu"),
    ops.gelu: _gelu,
    ops.silu: _silu,
    ops.tanh: _unary("Tanh"),
    ops.sigmoid: _unary("Sigmoid"),
    ops.softmax: _softmax,
    ops.add: _binary("Add"),
    ops.sub: _binary("Sub"),
    ops.mul: _binary("Mul"),
    ops.div: _binary("Div"),
    ops.neg: _unary("Neg"),
    ops.matmul: _binary("MatMul"),
    ops.attention: _attention,
    ops.concat: _concat,
    ops.reshape: _reshape,
    ops.unflatten_rows: _unflatten_rows,
    ops.permute: _permute,
    ops.reduce_sum: _reduce("ReduceSum"),
    ops.reduce_mean: _reduce("ReduceMean"),
    ops.reduce_max: _reduce("ReduceMax"),
    ops.reduce_min: _reduce("ReduceMin"),
}
