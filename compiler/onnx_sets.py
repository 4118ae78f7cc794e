"""ONNX emitters for the set aggregators (runtime/sets.py) and frame averaging (runtime/frames.py).

compiler/onnx_backend.py joins their table with compiler/onnx_ops.py's. Everything is standard
opset-18 ONNX: Reduce*, Where, ScatterND with a reduction, Gather, CumSum; the 3x3 eigensolver is
plain arithmetic. onnxruntime's ReduceMax and ScatterND max drop a NaN that is not last, so max and
min add back a NaN term (the sum of the NaN entries) to keep NaN in, NaN out.
"""
from __future__ import annotations

import math

import numpy as np
from onnx import helper

from common.dtypes import numpy_dtype, onnx_type
from runtime import frames, sets

REDUCE = {"sum": "ReduceSum", "mean": "ReduceMean", "max": "ReduceMax", "min": "ReduceMin"}
SCATTER = {"sum": "add", "mean": "add", "max": "max", "min": "min"}
IDENTITY = {"sum": 0.0, "mean": 0.0, "max": -math.inf, "min": math.inf}


def _fill(g, shape: str, value, dtype: str) -> str:
    return g.op("ConstantOfShape", shape, value=helper.make_tensor("value", onnx_type(dtype), [1], [value]))


def _trailing(g, t: str, start: int, rank: int) -> str:
    """Unsqueeze t at axes start..rank-1, so a leading-dims tensor broadcasts against rank `rank`."""
    return t if start >= rank else g.op("Unsqueeze", t, g.ints(range(start, rank)))


def _nan_term(g, x: str, axes: str, dtype: str) -> str:
    """0 where the reduced entries hold no NaN, NaN where they do: a sum of the NaN entries only."""
    return g.op("ReduceSum", g.op("Where", g.op("IsNaN", x), x, g.scalar(0.0, dtype)), axes, keepdims=0)


# -- dense sets --------------------------------------------------------------------------------------
def _masked(g, x: str, mask: str | None, axis: int, kind: str, rank: int, dtype: str) -> str:
    axes = g.ints([axis])
    if mask is None:
        out = g.op(REDUCE[kind], x, axes, keepdims=0)
        return out if kind in ("sum", "mean") else g.op("Add", out, _nan_term(g, x, axes, dtype))
    keep = _trailing(g, mask, axis + 1, rank)
    real = g.op("Where", keep, x, g.scalar(0.0, dtype))
    if kind == "sum":  # no count: onnxruntime runs nodes whose results nobody reads
        return g.op("ReduceSum", real, axes, keepdims=0)
    count = _trailing(g, g.op("ReduceSum", g.op("Cast", mask, to=onnx_type(dtype)), axes, keepdims=0),
                      axis, rank - 1)
    if kind == "mean":
        return g.op("Div", g.op("ReduceSum", real, axes, keepdims=0), g.op("Max", count, g.scalar(1.0, dtype)))
    out = g.op(REDUCE[kind], g.op("Where", keep, x, g.scalar(IDENTITY[kind], dtype)), axes, keepdims=0)
    out = g.op("Add", out, _nan_term(g, real, axes, dtype))
    return g.op("Where", g.op("Greater", count, g.scalar(0.0, dtype)), out, g.scalar(0.0, dtype))


def _masked_reduce(g, node, x, mask, axis, kind):
    return _masked(g, g.value(x), None if mask is None else g.value(mask), axis, kind,
                   len(x.meta["shape"]), x.meta["dtype"])


def _attention_pool(g, node, x, query, mask):
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


# -- ragged sets -------------------------------------------------------------------------------------
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
    """[R, ...] rows into [S, ...] sets by ScatterND; count [S] (i64) is each set's row count."""
    shape = g.op("Concat", g.op("Shape", count), g.op("Shape", x, start=1), axis=0)
    index = g.op("Unsqueeze", ids, g.ints([1]))
    out = g.op("ScatterND", _fill(g, shape, IDENTITY[kind], dtype), index, x, reduction=SCATTER[kind])
    if kind == "sum":  # before the count's cast: onnxruntime runs nodes whose results nobody reads
        return out
    count = _trailing(g, g.op("Cast", count, to=onnx_type(dtype)), 1, rank)
    if kind == "mean":
        return g.op("Div", out, g.op("Max", count, g.scalar(1.0, dtype)))
    nans = g.op("Where", g.op("IsNaN", x), x, g.scalar(0.0, dtype))
    out = g.op("Add", out, g.op("ScatterND", _fill(g, shape, 0.0, dtype), index, nans, reduction="add"))
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


def _segment_reduce(g, node, x, offsets, kind, deterministic):
    xv, ov, rank, dtype = g.value(x), g.value(offsets), len(x.meta["shape"]), x.meta["dtype"]
    count = _offsets_counts(g, ov)
    if deterministic:
        return _gathered(g, xv, ov, count, kind, rank, dtype)
    return _scatter(g, xv, _segment_ids(g, ov, xv), count, kind, rank, dtype)


def _scatter_reduce(g, node, x, segment_ids, like, kind):
    ids = g.value(segment_ids)
    sets_ = g.op("Shape", g.value(like), start=0, end=1)
    ones = _fill(g, g.op("Shape", ids), 1, "i64")
    count = g.op("ScatterElements", _fill(g, sets_, 0, "i64"), ids, ones, axis=0, reduction="add")
    return _scatter(g, g.value(x), ids, count, kind, len(x.meta["shape"]), x.meta["dtype"])


def _gather(g, node, x, index, axis):
    return g.op("Gather", g.value(x), g.value(index), axis=axis)


# -- frames ------------------------------------------------------------------------------------------
class _Value:
    """An ONNX value name with its dtype, so Python numbers can become constants of that dtype."""

    def __init__(self, name: str, dtype: str):
        self.name, self.dtype = name, dtype


class OnnxMath:
    """The primitives of runtime/frames.py's kernels, as ONNX nodes (the twin of frames.TORCH)."""

    def __init__(self, g):
        self.g = g

    def _name(self, a, dtype: str) -> str:
        return a.name if isinstance(a, _Value) else self.g.scalar(a, dtype)

    def _dtype(self, *args) -> str:
        return next(a.dtype for a in args if isinstance(a, _Value))

    def _op(self, op_type, *args, dtype=None, **attrs):
        dt = self._dtype(*args)
        return _Value(self.g.op(op_type, *(self._name(a, dt) for a in args), **attrs), dtype or dt)

    def wrap(self, node):
        return None if node is None else _Value(self.g.value(node), node.meta["dtype"])

    def add(self, a, b):
        return self._op("Add", a, b)

    def sub(self, a, b):
        return self._op("Sub", a, b)

    def mul(self, a, b):
        return self._op("Mul", a, b)

    def div(self, a, b):
        return self._op("Div", a, b)

    def maximum(self, a, b):
        return self._op("Max", a, b)

    def minimum(self, a, b):
        return self._op("Min", a, b)

    def matmul(self, a, b):
        return self._op("MatMul", a, b)

    def sqrt(self, x):
        return self._op("Sqrt", x)

    def abs(self, x):
        return self._op("Abs", x)

    def cos(self, x):
        return self._op("Cos", x)

    def acos(self, x):
        return self._op("Acos", x)

    def gt(self, a, b):
        return self._op("Greater", a, b, dtype="bool")

    def ge(self, a, b):
        return self._op("GreaterOrEqual", a, b, dtype="bool")

    def where(self, cond, a, b):
        dt = self._dtype(a, b)
        return _Value(self.g.op("Where", cond.name, self._name(a, dt), self._name(b, dt)), dt)

    def const(self, array, like):
        return _Value(self.g.const(np.asarray(array, numpy_dtype(like.dtype))), like.dtype)

    def cast(self, x, dtype):
        return x if x.dtype == dtype else _Value(self.g.op("Cast", x.name, to=onnx_type(dtype)), dtype)

    def dtype(self, x):
        return x.dtype

    def sum(self, x, axes, keepdim=False):
        return self._op("ReduceSum", x, _Value(self.g.ints(axes), "i64"), keepdims=int(keepdim))

    def mean(self, x, axes, keepdim=False):
        return self._op("ReduceMean", x, _Value(self.g.ints(axes), "i64"), keepdims=int(keepdim))

    def norm(self, x):
        return self._op("ReduceL2", x, _Value(self.g.ints([-1]), "i64"), keepdims=1)

    def reduce_max(self, x):
        return self._op("ReduceMax", x, _Value(self.g.ints([-1]), "i64"), keepdims=1)

    def reduce_min(self, x):
        return self._op("ReduceMin", x, _Value(self.g.ints([-1]), "i64"), keepdims=1)

    def prod(self, x, axis):
        return self._op("ReduceProd", x, _Value(self.g.ints([axis]), "i64"), keepdims=0)

    def transpose(self, x, perm):
        return self._op("Transpose", x, perm=list(perm))

    def reshape(self, x, spec):
        return self._op("Reshape", x, _Value(self.g.ints(spec), "i64"))

    def reshape_tail(self, x, lead, like, start):
        shape = self.g.op("Concat", self.g.ints(lead), self.g.op("Shape", like.name, start=start), axis=0)
        return _Value(self.g.op("Reshape", x.name, shape), x.dtype)

    def unsqueeze(self, x, axis):
        return _Value(self.g.op("Unsqueeze", x.name, self.g.ints([axis])), x.dtype)

    def concat(self, xs, axis):
        return _Value(self.g.op("Concat", *(x.name for x in xs), axis=axis), xs[0].dtype)

    def take(self, x, index, axis):
        return _Value(self.g.op("Gather", x.name, self.g.const(np.asarray(index, np.int64)), axis=axis),
                      x.dtype)

    def onehot_argmax(self, x, largest, size=3):
        # Equal against 0, 1, ... rather than OneHot, which onnxruntime lacks for float64 values.
        k = self.g.op("ArgMax" if largest else "ArgMin", x.name, axis=-1, keepdims=1)
        hit = self.g.op("Equal", k, self.g.const(np.arange(size, dtype=np.int64)))
        return _Value(self.g.op("Cast", hit, to=onnx_type(x.dtype)), x.dtype)


def _frame_centroid(g, node, pos, mask):
    m = OnnxMath(g)
    return frames.centroid_of(m, m.wrap(pos), m.wrap(mask)).name


def _frame_basis(g, node, pos, centroid, mask, proper, canonical):
    m = OnnxMath(g)
    return frames.basis_of(m, m.wrap(pos), m.wrap(centroid), m.wrap(mask), proper, canonical).name


def _frame_in(g, node, x, basis, centroid):
    m = OnnxMath(g)
    return frames.into_frames(m, m.wrap(x), m.wrap(basis), m.wrap(centroid), basis.meta["shape"][1]).name


def _frame_tile(g, node, x, count):
    m = OnnxMath(g)
    return frames.tile(m, m.wrap(x), count).name


def _frame_out(g, node, y, basis, centroid, kind):
    m = OnnxMath(g)
    return frames.out_of_frames(m, m.wrap(y), m.wrap(basis), m.wrap(centroid), kind,
                                basis.meta["shape"][1]).name


def _frame_conditioning(g, node, pos, mask):
    m = OnnxMath(g)
    return frames.conditioning(m, m.wrap(pos), m.wrap(mask)).name


EMITTERS = {
    sets.masked_reduce: _masked_reduce,
    sets.attention_pool: _attention_pool,
    sets.segment_reduce: _segment_reduce,
    sets.scatter_reduce: _scatter_reduce,
    sets.gather: _gather,
    frames.frame_centroid: _frame_centroid,
    frames.frame_basis: _frame_basis,
    frames.frame_in: _frame_in,
    frames.frame_tile: _frame_tile,
    frames.frame_out: _frame_out,
    frames.frame_conditioning: _frame_conditioning,
}
