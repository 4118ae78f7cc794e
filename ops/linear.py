"""Linear maps: linear, mlp (linear layers with activations between), embedding and matmul.

A linear map on the last axis commutes with anything acting on the other axes; matmul contracts
two tensors, so a permuted axis must meet the same permutation.
"""
from common.lazy import Lazy
from dsl.groups import Fact, Invariant, Outer, Permuted, Rotated, Simplex, Squared, Translated
from dsl.rules import Tensor, features, numeric, with_last
from dsl.symmetry_rules import (COORD_HINT, POOL_HINT, Call, Operand, axes_of, axis_name, join_permuted, moving_weights,
                                placement, what)
from dsl.types import INTS, ParamSpec, TensorType, Value, broadcast
from ops.elementwise import ACTIVATIONS, onnx_binary
from ops.reductions import lift_reduce
from ops.shape import reshaped, unsqueezed
from ops.norms import batch_norm_affine
from ops.op import Doc, GraphOp, Indices, SpecOp

torch, F = Lazy("torch"), Lazy("torch.nn.functional")


# -- checker rules ---------------------------------------------------------------------------------
def linear_layer(ctx, x: Value, out: int, bias: bool, prefix: str = "") -> Value:
    d = features(ctx, x)
    if out < 1:
        ctx.error(f"linear needs a positive output width, got {out}")
    params = {f"{prefix}weight": ParamSpec((out, d), "fan_in")}
    if bias:
        params[f"{prefix}bias"] = ParamSpec((out,), "zeros")
    return ctx.emit("linear", (x,), with_last(x, out), params=params)


def check_linear(ctx, x: Tensor, out: int, bias: bool = True):
    return linear_layer(ctx, x, out, bias)


def check_mlp(ctx, x: Tensor, widths: list, act: str = "relu", bias: bool = True):
    """Linear layers of the given widths with `act` between them (not after the last)."""
    if not widths or not all(isinstance(w, int) for w in widths):
        ctx.error("mlp needs `widths`, a non-empty list of ints", "for example widths=[64, 64]")
    if act not in ACTIVATIONS:
        ctx.error(f"unknown activation {act!r}", f"use one of {', '.join(ACTIVATIONS)}")
    for i, w in enumerate(widths):
        if i:
            x = ctx.emit(act, (x,), x.type)
        x = linear_layer(ctx, x, w, bias, prefix=f"{i}.")
    return x


def check_embedding(ctx, ids: Tensor, num: int, dim: int):
    if ids.type.dtype not in INTS:
        ctx.error(f"embedding expects integer ids (i32 or i64), got {ids.type}")
    params = {"weight": ParamSpec((num, dim), "normal")}
    return ctx.emit("embedding", (ids,), TensorType("f32", ids.type.shape + (dim,)), params=params)


def check_matmul(ctx, a: Tensor, b: Tensor):
    numeric(ctx, a, "matmul")
    if a.type.dtype != b.type.dtype:
        ctx.error(f"matmul of {a.type} and {b.type}: dtypes differ")
    if a.type.rank < 2 or b.type.rank < 2:
        ctx.error(f"matmul needs two tensors of rank >= 2, got {a.type} and {b.type}")
    if a.type.shape[-1] != b.type.shape[-2]:
        ctx.error(f"matmul of {a.type} and {b.type}: inner dims {a.type.shape[-1]} and "
                  f"{b.type.shape[-2]} differ")
    lead = broadcast(a.type.shape[:-2], b.type.shape[:-2])
    if isinstance(lead, str):
        ctx.error(f"matmul of {a.type} and {b.type}: batch dims do not broadcast: {lead}")
    return ctx.emit("matmul", (a, b), TensorType(a.type.dtype, lead + (a.type.shape[-2], b.type.shape[-1])))


# -- symmetry rules --------------------------------------------------------------------------------
def symmetry_linear(call: Call) -> Fact:
    """A linear map on the last axis commutes with anything acting on the other axes; a bias
    breaks rotations, and no weights keep a translation (they would need to sum to one)."""
    return _linear_over(call, len(call.arg(0).shape) - 1)


def symmetry_channel_linear(call: Call) -> Fact:
    """The same map on the channels, axis 1, of a [B, C, ...] tensor."""
    return _linear_over(call, 1)


def _linear_over(call: Call, last: int) -> Fact:
    x, bias = call.arg(0), call.arg(2, "bias")
    refused = moving_weights(call, (call.arg(1), bias))
    fact = x.fact
    if refused or last in axes_of(fact):
        return refused or call.broken(f"{call.spelled} over {axis_name(x, last)}",
                                      POOL_HINT.format(dim=x.shape[last]) if isinstance(fact, Permuted) else COORD_HINT)
    if isinstance(fact, Translated):
        return call.broken(f"{call.spelled} of positions",
                           "subtract the centroid first: pos - mean(pos, axis=N, keepdim=true)")
    if isinstance(fact, (Rotated, Squared)) and bias is not None:
        return call.broken(f"{call.spelled} with a bias on {what(x)}", "use bias=false")
    return fact


def symmetry_embedding(call: Call) -> Fact:
    ids = call.arg(0)
    return ids.fact if isinstance(ids.fact, Permuted) else call.broken(f"embedding of {what(ids)}")


def symmetry_matmul(call: Call) -> Fact:
    a, b = call.arg(0), call.arg(1)
    if all(isinstance(x.fact, (Invariant, Permuted)) for x in (a, b)):
        return _permuted_matmul(call, a, b)
    if any(isinstance(x.fact, Permuted) for x in (a, b)):
        return call.broken(f"matmul of {what(a)} and {what(b)}")
    return _coordinate_matmul(call, a, b)


def _matmul_places(call: Call, a: Operand, b: Operand) -> tuple[dict, dict]:
    """Output axis -> (dim, permuted?) of each side. Right-aligned, a's rows land on the output's
    rows and b's columns on its columns; the contracted axes have no output axis."""
    rank = len(call.shape)
    pa, pb = placement(a, rank), placement(b, rank)
    del pa[rank - 1], pb[rank - 2]
    return pa, pb


def _permuted_matmul(call: Call, a: Operand, b: Operand) -> Fact:
    # Summing over a permuted axis against the same permutation is invariant; against a fixed
    # axis it is a fixed weighting of the set's elements.
    if (len(a.shape) - 1 in axes_of(a.fact)) != (len(b.shape) - 2 in axes_of(b.fact)):
        dim = a.shape[-1]
        return call.broken(f"matmul contracts {dim} of a permuted tensor with a fixed one",
                           POOL_HINT.format(dim=dim))
    return join_permuted(call, list(zip((a.fact, b.fact), _matmul_places(call, a, b))), "matmul")


def _coordinate_matmul(call: Call, a: Operand, b: Operand) -> Fact:
    inner_a, inner_b = len(a.shape) - 1, len(b.shape) - 2
    if a.fact == Rotated(inner_a) and b.fact == Rotated(inner_b):
        return Invariant()  # rows of a dotted with columns of b
    rank2 = _rank2_matmul(call, a, b)
    if rank2 is not None:
        return rank2
    if not isinstance(a.fact, Invariant) and not isinstance(b.fact, Invariant):
        return call.broken(f"matmul of {what(a)} and {what(b)}", COORD_HINT)
    x, inner = (a, inner_a) if isinstance(b.fact, Invariant) else (b, inner_b)
    if x.fact.axis == inner:
        return call.broken(f"matmul over {axis_name(x, inner)}", COORD_HINT)
    # Weights that sum to one along the contracted axis, on the other side, make a convex combination:
    # softmax rows of a summing positions (w @ pos), or softmax columns of b (posᵀ @ wᵀ, the transpose).
    weights, axis = (a, inner_a) if x is b else (b, inner_b)
    convex = isinstance(weights.fact, Simplex) and weights.fact.axis == axis
    if isinstance(x.fact, Translated) and not convex:
        return call.broken("matmul of positions", "subtract the centroid first, or weight by a softmax along the contracted axis")
    k = x.fact.axis + len(call.shape) - len(x.shape)
    other = _matmul_places(call, a, b)[1 if x is a else 0]
    if other.get(k, (1,))[0] != 1:
        return call.broken("matmul treats the 3 coordinates separately", COORD_HINT)
    return type(x.fact)(k)


def _rank2_matmul(call: Call, a: Operand, b: Operand) -> Fact | None:
    """Products with rank-2 tensors T (T(g·x) = R T Rᵀ) on the last two axes: a column of vectors
    times a row of vectors is one (v wᵀ, or the covariance Xᵀ X, summed over the rows of X), and T
    contracted with vectors gives vectors back: R T Rᵀ R u = R (T u). None: not such a product."""
    ra, rb, rank = len(a.shape), len(b.shape), len(call.shape)
    last_two = {"a": Outer((ra - 2, ra - 1)), "b": Outer((rb - 2, rb - 1))}
    if a.fact == Rotated(ra - 2) and b.fact == Rotated(rb - 1):
        return Outer((rank - 2, rank - 1))
    if a.fact == last_two["a"] and b.fact in (Rotated(rb - 2), last_two["b"]):
        return Rotated(rank - 2) if isinstance(b.fact, Rotated) else Outer((rank - 2, rank - 1))
    if a.fact == Rotated(ra - 1) and b.fact == last_two["b"]:
        return Rotated(rank - 1)
    if isinstance(a.fact, Outer) or isinstance(b.fact, Outer):
        return call.broken(f"matmul of {what(a)} and {what(b)}",
                           "contract the rank-2 tensor's last axis with a vector's coordinates: (v wᵀ) u")
    return None


def symmetry_weight(call: Call) -> Fact:
    """A captured model's weight is the same whatever the input."""
    return Invariant()


# -- torch forms: the fx call_function targets -----------------------------------------------------
def linear(x, weight, bias=None):
    return F.linear(x, weight, bias)


def embedding(ids, weight):
    return F.embedding(ids, weight)


def matmul(a, b):
    return torch.matmul(a, b)


def channel_linear(x, weight, bias=None):
    """A linear map on axis 1 of [B, C, ...] at every place: a convolution with a kernel of 1s."""
    places = x.dim() - 2
    return (F.conv1d, F.conv2d, F.conv3d)[places - 1](x, weight.reshape(*weight.shape, *[1] * places), bias)


def weight(value):
    """A captured model's weight read as a tensor (where it is not a linear's own weight)."""
    return value


# -- ONNX emitters ----------------------------------------------------------------------------------
def affine(g, x, weight, bias):
    y = g.op("MatMul", x, g.transposed(weight))
    return y if bias is None else g.op("Add", y, g.value(bias))


def onnx_linear(g, node, x, weight, bias):
    return affine(g, g.value(x), weight, bias)


def onnx_channel_linear(g, node, x, weight, bias):
    places = len(x.meta["shape"]) - 2
    kernel = g.const(g.tensor(weight).reshape(*weight.meta["shape"], *[1] * places), f"{weight.target}.kernel")
    return g.op("Conv", g.value(x), kernel, *([g.value(bias)] if bias is not None else []), kernel_shape=[1] * places)


def onnx_weight(g, node, value):
    return g.value(value)


def onnx_embedding(g, node, ids, weight):
    rows = weight.meta["shape"][0]
    checked = g.indices(g.value(ids), ids.meta["dtype"], lambda: g.ints([rows]), f"[0, {rows}), the embedding table's rows")
    return g.op("Gather", g.value(weight), checked, axis=0)


TABLE = "ops"  # the table of dsl/LANGUAGE.md that lists its spec ops
SPEC = (
    SpecOp("linear", check_linear, Doc("linear", "`linear(x, out, bias=true)`", "`[..., out]`; weight `[out, in]`")),
    SpecOp("mlp", check_mlp, Doc("mlp", '`mlp(x, widths, act="relu", bias=true)`',
                                 "linear layers, `act` between them (not after the last)"), emits=("linear",)),
    SpecOp("embedding", check_embedding,
           Doc("embedding", "`embedding(ids, num, dim)`", "ids `i32`/`i64` → `f32[..., dim]`")),
    SpecOp("matmul", check_matmul, Doc("matmul", "`matmul(a, b)` or `a @ b`", "batch dims broadcast"), operator="@"),
)
GRAPH = (
    GraphOp(linear, symmetry_linear, onnx_linear, lambda x, weight, bias: f"F.linear({x}, {weight}, {bias})"),
    GraphOp(embedding, symmetry_embedding, onnx_embedding, lambda ids, weight: f"F.embedding({ids}, {weight})",
            indices=Indices(0, lambda node: node.params["weight"].shape[0], table=True)),
    GraphOp(matmul, symmetry_matmul, onnx_binary("MatMul"), lambda a, b: f"torch.matmul({a}, {b})",
            reads=frozenset({"outer"})),  # a rank-2 tensor, contracted with vectors
    GraphOp(channel_linear, symmetry_channel_linear, onnx_channel_linear, embed=True),
    GraphOp(weight, symmetry_weight, onnx_weight, lambda value: value),
)


# -- lifts of captured ATen ops (capture/lift.py) ------------------------------------------------
def _given(g, w, name: str):
    """A weight as a linear's parameter: the model's own tensor when it is one, else refused."""
    if not hasattr(w, "tensor"):
        g.refuse(f"its {name} is computed in forward")
    return g.given(w.tensor)


def lift_linear(g, n, x, w, b=None):
    x = g.tensor(x)
    params = {"weight": _given(g, w, "weight")}
    if b is not None:
        params["bias"] = _given(g, b, "bias")
    norm = g.followed_by(n, "aten.batch_norm.default") if len(x.type.shape) == 2 else None  # channels last = axis 1
    affine = norm and batch_norm_affine(*g.args_of(norm)[1:6], g.args_of(norm)[7])
    if affine:
        scale, shift = affine
        bias = shift + (scale * b.tensor.double() if b is not None else 0)
        params = {"weight": g.given((scale[:, None] * w.tensor.double()).float()), "bias": g.given(bias.float())}
    y = g.emit("linear", (x,), params=params)
    return g.fold(norm, y) if affine else y


def lift_conv(g, n, x, w, b=None, stride=1, padding=0, dilation=1, groups=1):
    """A convolution with a 1-wide kernel, no stride, padding or groups is a linear over the
    channels (axis 1) at every place; a batch norm right after it is folded in, as exporters fold
    Conv+BatchNorm."""
    x = g.tensor(x)
    places = len(x.type.shape) - 2
    if not hasattr(w, "tensor") or set(w.tensor.shape[2:]) != {1} or groups != 1 or places not in (1, 2, 3) or any(
            v not in (1, [1] * places, (1,) * places) for v in (stride,)) or any(
            v not in (0, [0] * places, (0,) * places) for v in (padding,)):
        g.refuse("a convolution with a kernel wider than 1, a stride, padding or groups")
    if b is not None and not hasattr(b, "tensor"):
        g.refuse("a convolution whose bias is computed in forward")
    matrix = w.tensor.double().reshape(w.tensor.shape[:2])
    bias = b.tensor.double() if b is not None else None
    norm = g.followed_by(n, "aten.batch_norm.default")
    affine = norm and batch_norm_affine(*g.args_of(norm)[1:6], g.args_of(norm)[7])
    if affine:
        scale, shift = affine
        matrix, bias = scale[:, None] * matrix, shift + (scale * bias if bias is not None else 0)
    params = {"weight": g.given(matrix.float())}
    if bias is not None:
        params["bias"] = g.given(bias.float())
    y = g.emit("channel_linear", (x,), params=params)
    return g.fold(norm, y) if affine else y


def lift_matmul(g, n, a, b):
    """a @ b. A 1-D side is a row (a) or a column (b) of a 2-D one, as torch reads it, dropped again after:
    the graph op and its rules see rank >= 2 only (`x @ w` by a vector, a covariance applied to one)."""
    a, b = g.tensor(a), g.tensor(b)
    if len(a.type.shape) > 1 and len(b.type.shape) > 1:
        return g.emit("matmul", (a, b))
    a = unsqueezed(g, a, 0) if len(a.type.shape) == 1 else a
    b = unsqueezed(g, b, 1) if len(b.type.shape) == 1 else b
    lead = broadcast(a.type.shape[:-2], b.type.shape[:-2])
    if isinstance(lead, str):
        g.refuse(f"a matmul whose batch dims do not broadcast: {lead}")
    y = g.emit("matmul", (a, b), type_=TensorType(a.type.dtype, (*lead, a.type.shape[-2], b.type.shape[-1])))
    return reshaped(g, y, g.type(n).shape)


def lift_baddbmm(g, n, x, a, b, beta=1, alpha=1):
    """beta · x + alpha · (a @ b): nn.MultiheadAttention's masked scores when it returns its weights."""
    product = g.emit("matmul", (g.tensor(a), g.tensor(b)))
    if alpha != 1:
        product = g.emit("mul", (product, float(alpha)), type_=product.type)
    x = g.tensor(x)
    if beta != 1:
        x = g.emit("mul", (x, float(beta)), type_=x.type)
    return g.emit("add", (x, product))


def lift_einsum(g, n, equation: str, operands, path=None):
    """An einsum of one or two operands as the products and sums it stands for: each operand's axes
    put in one order (the output's indices, then the summed ones), with size-1 axes where it lacks an
    index, multiplied, then summed over the indices the output drops. The rules then see coordinate
    products and sums as they are (a dot product of vectors is invariant, `ij,jk` of coordinates an
    outer product). An index twice in one operand (a diagonal, a trace) has no such form."""
    operands = [g.tensor(x) for x in operands]
    terms, out = _einsum_indices(g, equation.replace(" ", ""), [x.type.shape for x in operands])
    order = list(dict.fromkeys([*out, *(k for t in terms for k in t)]))
    placed = []
    for x, term in zip(operands, terms):
        if len(set(term)) != len(term):
            g.refuse(f"einsum {equation!r} takes a diagonal")
        perm = tuple(sorted(range(len(term)), key=lambda k: order.index(term[k])))
        if perm != tuple(range(len(perm))):
            x = g.emit("permute", (x,), {"perm": perm}, type_=TensorType(x.type.dtype, tuple(x.type.shape[k] for k in perm)))
        for axis, index in enumerate(order):
            if index not in term:
                x = unsqueezed(g, x, axis)
        placed.append(x)
    y = placed[0]
    for x in placed[1:]:
        y = g.emit("mul", (y, x), type_=TensorType(y.type.dtype, broadcast(y.type.shape, x.type.shape)))
    summed = list(range(len(out), len(order)))
    return lift_reduce("sum")(g, n, y, summed) if summed else y


def _einsum_indices(g, equation: str, shapes: list) -> tuple[list, str]:
    """Each operand's indices and the output's, one letter per axis; `...` becomes capital letters,
    right-aligned across the operands as broadcasting aligns them."""
    if "->" not in equation or equation.count("->") != 1:
        g.refuse(f"einsum {equation!r} without one explicit output")
    ins, out = equation.split("->")
    terms = ins.split(",")
    if len(terms) != len(shapes) or len(shapes) > 2:
        g.refuse(f"einsum {equation!r} of {len(shapes)} operands")
    wide = max((len(s) - len(t.replace("...", "")) for t, s in zip(terms, shapes) if "..." in t), default=0)
    dots = "".join(chr(ord("A") + k) for k in range(wide))
    if any(c.isupper() for c in equation):
        g.refuse(f"einsum {equation!r} with capital indices")
    terms = [t.replace("...", dots[wide - (len(s) - len(t.replace("...", ""))):]) for t, s in zip(terms, shapes)]
    return terms, out.replace("...", dots)


ATEN = {
    "aten.linear.default": lift_linear,
    "aten.einsum.default": lift_einsum,
    **{f"aten.conv{d}d.default": lift_conv for d in (1, 2, 3)},
    **{f"aten.{op}.default": lift_matmul for op in ("matmul", "mm", "bmm")},
    "aten.baddbmm.default": lift_baddbmm,
}
