"""Elementwise ops: activations, softmax, and the arithmetic operators + - * / and unary minus.

Per-element functions commute with permutations; the arithmetic of coordinates follows the table
ARITHMETIC (a position plus a vector is a position, a vector times an invariant a vector, ...).
"""
import math

from common.lazy import Lazy
from dsl.groups import Fact, Invariant, Permuted, Relabeled, Rotated, Simplex, Squared, Translated, Weighted
from dsl.rules import Axis, Tensor, float_input, numeric
from dsl.symmetry_rules import (COORD_HINT, COORDINATES, Call, Operand, axes_of, join_permuted, placement, uniform_axes,
                                what)
from common.dtypes import FLOATS, onnx_type, torch_dtype
from dsl.types import INTS, TensorType, Value, broadcast
from ops.op import Doc, GraphOp, SpecOp
from ops.reductions import lift_reduce
from ops.shape import unsqueezed

torch, F = Lazy("torch"), Lazy("torch.nn.functional")
ACTIVATIONS = ("relu", "gelu", "silu", "tanh", "sigmoid")
BINARY = {"+": "add", "-": "sub", "*": "mul", "/": "div"}
SYMBOLS = {fn: sym for sym, fn in BINARY.items()}  # "add" -> "+"


# -- checker rules ---------------------------------------------------------------------------------
def check_activation(ctx, x: Tensor):
    float_input(ctx, x)
    if ctx.op == "gelu" and x.type.dtype == "f64":
        ctx.error(f"gelu of {x.type}: onnxruntime has no f64 Erf, so the file would not load",
                  "use f32, or silu or tanh, which run in f64")
    return ctx.emit(ctx.op, (x,), x.type)


def check_softmax(ctx, x: Tensor, axis: Axis = -1):
    float_input(ctx, x)
    return ctx.emit("softmax", (x,), x.type, kwargs={"axis": ctx.axis(x, axis)})


def check_arithmetic(ctx, a, b):
    """Elementwise a (op) b with broadcasting; one side may be a Python number."""
    tensors = [v for v in (a, b) if isinstance(v, Value)]
    for t in tensors:
        numeric(ctx, t, f"`{ctx.symbol}`")
    if len(tensors) == 2:
        if a.type.dtype != b.type.dtype:
            ctx.error(f"`{ctx.symbol}` of {a.type} and {b.type}: dtypes differ")
        shape = broadcast(a.type.shape, b.type.shape)
        if isinstance(shape, str):
            ctx.error(f"`{ctx.symbol}` of {a.type} and {b.type}: {shape}",
                      "symbolic dims with different names never broadcast; reshape or reduce first")
        return ctx.emit(ctx.op, (a, b), TensorType(_promoted(ctx, a, b), shape))
    return ctx.emit(ctx.op, (a, b), TensorType(_promoted(ctx, a, b), tensors[0].type.shape))


def _promoted(ctx, a, b) -> str:
    """The result dtype torch computes, which the ONNX emitter casts the operands to: integers
    divided, or scaled by a fractional number, give f32 (3 / 2 is 1.5 in both runtimes)."""
    dtype = next(v.type.dtype for v in (a, b) if isinstance(v, Value))
    fractional = ctx.op == "div" or any(isinstance(v, float) for v in (a, b))
    return "f32" if dtype in INTS and fractional else dtype


def check_neg(ctx, a: Value):
    numeric(ctx, a, "unary `-`")
    return ctx.emit("neg", (a,), a.type)


# -- symmetry rules --------------------------------------------------------------------------------
def symmetry_pointwise(call: Call) -> Fact:
    """Per-element functions commute with permutations; only negation commutes with rotations."""
    x = call.arg(0)
    if isinstance(x.fact, Permuted) or (call.op == "neg" and isinstance(x.fact, (Rotated, Squared))):
        return x.fact
    return call.broken(f"{call.spelled} of {what(x)}",
                       "negating a position is not a position" if call.op == "neg" else COORD_HINT)


def symmetry_cast(call: Call) -> Fact:
    """A change of dtype commutes with permutations. What moves with the values moves with them only
    within their kind: coordinates stay coordinates from float to float, ids stay ids from int to
    int; a position rounded to integers is not a position, and ids read as numbers are not ids."""
    x, dtype = call.arg(0), call.kwargs["dtype"]
    fact = x.fact
    if isinstance(fact, Permuted) or (isinstance(fact, Relabeled) and dtype in INTS) or \
            (not isinstance(fact, Relabeled) and dtype in FLOATS):
        return fact
    return call.broken(f"a cast of {what(x)} to {dtype}",
                       "cast ids only to another integer type, and coordinates only to another float type")


def symmetry_softmax(call: Call) -> Fact:
    """A softmax of invariants is invariant weights that sum to one along its axis."""
    x, axis = call.arg(0), call.arg(1, "axis")
    if isinstance(x.fact, Invariant):
        return Simplex(axis % len(x.shape))
    return symmetry_pointwise(call)


ARITHMETIC = {  # (left kind, right kind) -> result kind, on one shared coordinate axis
    "add": {(Rotated, Rotated): Rotated, (Translated, Rotated): Translated,
            (Rotated, Translated): Translated, (Squared, Squared): Squared},
    "sub": {(Rotated, Rotated): Rotated, (Translated, Translated): Rotated,
            (Translated, Rotated): Translated, (Squared, Squared): Squared},
    "mul": {(Rotated, Invariant): Rotated, (Invariant, Rotated): Rotated, (Squared, Invariant): Squared,
            (Invariant, Squared): Squared, (Rotated, Rotated): Squared,
            (Simplex, Translated): Weighted, (Translated, Simplex): Weighted},
    "div": {(Rotated, Invariant): Rotated, (Squared, Invariant): Squared},
}
# Under translations alone nothing rotates, so any invariant offset keeps a position one:
# (x + t) + c = (x + c) + t, coordinate by coordinate; under rotations c would have to rotate too.
TRANSLATIONS_ONLY = {"add": {(Translated, Invariant): Translated, (Invariant, Translated): Translated},
                     "sub": {(Translated, Invariant): Translated}}


def symmetry_compare(call: Call) -> Fact:
    """Elementwise comparisons commute with permutations; == and != of two id lists relabelled alike
    commute with the relabelling (a bijection), which no order comparison does."""
    a, b, how = call.arg(0), call.arg(1), call.arg(2, "how")
    tensors = [x for x in (a, b) if isinstance(x, Operand)]
    ids = [x for x in tensors if isinstance(x.fact, Relabeled)]
    if ids:
        if how not in ("eq", "ne") or len(ids) != 2 or a.fact != b.fact or a.shape != b.shape:
            return call.broken(f"`{how}` of {what(a)} and {what(b)}",
                               "compare only ids relabelled alike, and only for equality")
        return Permuted(a.fact.axes, a.fact.by) if a.fact.axes else Invariant()
    if all(isinstance(x.fact, (Invariant, Permuted)) for x in tensors):
        return join_permuted(call, [(x.fact, placement(x, len(call.shape))) for x in tensors], f"`{how}`")
    return call.broken(f"`{how}` of {what(a)} and {what(b)}", COORD_HINT)


def symmetry_where(call: Call) -> Fact:
    """An elementwise choice commutes with permutations when the condition and both sides do."""
    tensors = [x for x in (call.arg(0), call.arg(1), call.arg(2)) if isinstance(x, Operand)]
    if all(isinstance(x.fact, (Invariant, Permuted)) for x in tensors):
        return join_permuted(call, [(x.fact, placement(x, len(call.shape))) for x in tensors], "`where`")
    moving = next(x for x in tensors if not isinstance(x.fact, (Invariant, Permuted)))
    return call.broken(f"`where` of {what(moving)}", COORD_HINT)


def symmetry_arithmetic(call: Call) -> Fact:
    a, b = call.arg(0), call.arg(1)
    tensors = [x for x in (a, b) if isinstance(x, Operand)]
    sym = f"`{SYMBOLS[call.op]}`"
    if all(isinstance(x.fact, (Invariant, Permuted)) for x in tensors):
        return join_permuted(call, [(x.fact, placement(x, len(call.shape))) for x in tensors], sym)
    return coordinate_arithmetic(call, a, b, sym)


def coordinate_arithmetic(call: Call, a, b, sym: str) -> Fact:
    rank = len(call.shape)
    tensors = [x for x in (a, b) if isinstance(x, Operand)]
    axes = {k + rank - len(x.shape) for x in tensors if isinstance(x.fact, COORDINATES) for k in axes_of(x.fact)}
    kinds = tuple(type(x.fact) if isinstance(x, Operand) else Invariant for x in (a, b))
    rotates = call.group.rotates
    table = ARITHMETIC[call.op] if rotates else {**ARITHMETIC[call.op], **TRANSLATIONS_ONLY.get(call.op, {})}
    result = table.get(kinds) or table.get(tuple(Invariant if issubclass(k, Invariant) else k for k in kinds))
    if result is None or len(axes) != 1:
        return call.broken(f"{sym} of {what(a)} and {what(b)}", arithmetic_hint(call.op))
    (k,) = axes
    for x in tensors:  # an invariant factor must be one value per vector, which a rotation turns
        if rotates and isinstance(x.fact, Invariant) and k not in uniform_axes(x, rank):
            return call.broken(f"{sym} treats the 3 coordinates separately",
                               "scale by one value per vector: size 1 on the coordinate axis")
    return _weighted(call, tensors, k) if result is Weighted else result(k)


def _weighted(call: Call, tensors: list, k: int) -> Fact:
    """Positions times softmax weights, which a sum over the weights' axis makes a convex
    combination: the translation then adds up to exactly one t."""
    (w,) = [x for x in tensors if isinstance(x.fact, Simplex)]
    over = w.fact.axis + len(call.shape) - len(w.shape)
    if over == k or w.shape[w.fact.axis] != call.shape[over]:  # weights broadcast along the sum add past one
        return call.broken("`*` of positions and weights that do not sum to one along the result's axis",
                           "weight by a softmax over the full set axis, then sum over that axis")
    return Weighted(k, over)


def arithmetic_hint(op: str) -> str:
    return {"add": "a position plus a vector is a position; positions are subtracted or averaged, "
                   "never added to each other or to constants",
            "sub": "position - position is a vector, position - vector a position",
            "mul": "scale vectors by invariants; a position is scaled about a centroid: c + s * (x - c)",
            "div": "divide vectors by invariants, such as norms"}[op]


def uniform_pointwise(call: Call) -> set:
    """Element by element: uniform where every operand is (broadcast or uniform)."""
    rank = len(call.shape)
    return set.intersection(*(uniform_axes(a, rank) for a in call.args if isinstance(a, Operand)))


# -- torch forms: the fx call_function targets -----------------------------------------------------
def relu(x):
    return torch.relu(x)


def gelu(x):
    # torch's gelu is NaN at +inf, where the erf form (and onnxruntime, its ONNX) gives +inf
    return torch.where(torch.isposinf(x), x, F.gelu(x))


def silu(x):
    return F.silu(x)


def tanh(x):
    return torch.tanh(x)


def sigmoid(x):
    return torch.sigmoid(x)


def softmax(x, axis=-1):
    return torch.softmax(x, axis)


def add(a, b):
    return a + b


def sub(a, b):
    return a - b


def mul(a, b):
    return a * b


def div(a, b):
    return a / b


def neg(a):
    return -a


def compare(a, b, how):
    return getattr(torch, how)(a, b)


def exp(x):
    return torch.exp(x)


def leaky_relu(x, slope=0.01):
    return F.leaky_relu(x, slope)


def sqrt(x):
    return torch.sqrt(x)


def power(x, exponent):
    return torch.pow(x, exponent)


def where(cond, a, b):
    return torch.where(cond, a, b)


def cast(x, like=None, dtype="f32"):
    """x as `dtype`; to a float, as the dtype of `like`, a 0-d weight, so that the graph cast to float64
    (verify) casts to float64 too."""
    return x.to(like.dtype if like is not None else torch_dtype(dtype))


def clamp(x, low=None, high=None):
    return torch.clamp(x, low, high)


# -- ONNX emitters ----------------------------------------------------------------------------------
def onnx_gelu(g, node, x):
    # Exact erf form, as torch's default F.gelu: x/2 * (1 + erf(x/sqrt 2)). Div, not Mul by
    # sqrt(0.5): ORT's GeluFusion matches only the Div form, and the fused Gelu is 1.3x faster on mlp.
    xv, dt = g.value(x), x.meta["dtype"]
    erf = g.op("Erf", g.op("Div", xv, g.scalar(math.sqrt(2.0), dt)))
    return g.op("Mul", g.op("Mul", xv, g.scalar(0.5, dt)), g.op("Add", erf, g.scalar(1.0, dt)))


def onnx_silu(g, node, x):
    xv = g.value(x)
    return g.op("Mul", xv, g.op("Sigmoid", xv))


def onnx_softmax(g, node, x, axis):
    return g.op("Softmax", g.value(x), axis=axis)


def onnx_leaky_relu(g, node, x, slope):
    return g.op("LeakyRelu", g.value(x), alpha=float(slope))


def onnx_clamp(g, node, x, low, high):
    dt = node.meta["dtype"]
    bounds = [g.scalar(b, dt) if b is not None else "" for b in (low, high)]
    return g.op("Clip", g.value(x), *bounds)


def onnx_power(g, node, x, exponent):
    return g.op("Pow", g.value(x), g.scalar(exponent, node.meta["dtype"]))


def onnx_where(g, node, cond, a, b):
    dt = node.meta["dtype"]
    return g.op("Where", g.value(cond), g.operand(a, dt), g.operand(b, dt))


def onnx_cast(g, node, x, like=None, dtype="f32"):
    return g.op("Cast", g.value(x), to=onnx_type(dtype))


COMPARISONS = {"eq": "Equal", "lt": "Less", "le": "LessOrEqual", "gt": "Greater", "ge": "GreaterOrEqual"}


def onnx_compare(g, node, a, b, how):
    dt = next(x.meta["dtype"] for x in (a, b) if hasattr(x, "meta"))
    equal = g.op(COMPARISONS["eq" if how == "ne" else how], g.operand(a, dt), g.operand(b, dt))
    return g.op("Not", equal) if how == "ne" else equal


def onnx_unary(op_type):
    return lambda g, node, x: g.op(op_type, g.value(x))


def onnx_binary(op_type):
    # Operands are brought to the node's dtype, which carries torch's promotion (i64 / i64 is f32).
    def emit(g, node, a, b):
        dt = node.meta["dtype"]
        return g.op(op_type, g.operand(a, dt), g.operand(b, dt))
    return emit


TABLE = "ops"  # the table of dsl/LANGUAGE.md that lists its spec ops
SPEC = (
    SpecOp("relu", check_activation, Doc("activations", "`relu gelu silu tanh sigmoid (x)`", "same shape")),
    *(SpecOp(a, check_activation) for a in ACTIVATIONS[1:]),
    SpecOp("softmax", check_softmax, Doc("softmax", "`softmax(x, axis=-1)`", "same shape")),
    *(SpecOp(fn, check_arithmetic, operator=sym, named=False) for sym, fn in BINARY.items()),
    SpecOp("neg", check_neg, operator="unary -", named=False),
)
def _elementwise(fn, rule, onnx, triton) -> GraphOp:
    return GraphOp(fn, rule, onnx, triton, uniform=uniform_pointwise)


GRAPH = (
    _elementwise(relu, symmetry_pointwise, onnx_unary("Relu"), lambda x: f"torch.relu({x})"),
    _elementwise(gelu, symmetry_pointwise, onnx_gelu, lambda x: f"F.gelu({x})"),
    _elementwise(silu, symmetry_pointwise, onnx_silu, lambda x: f"F.silu({x})"),
    _elementwise(tanh, symmetry_pointwise, onnx_unary("Tanh"), lambda x: f"torch.tanh({x})"),
    _elementwise(sigmoid, symmetry_pointwise, onnx_unary("Sigmoid"), lambda x: f"torch.sigmoid({x})"),
    GraphOp(softmax, symmetry_softmax, onnx_softmax, lambda x, axis: f"torch.softmax({x}, {axis})",
            sees_invariants=True, keeps_weights=True),
    _elementwise(add, symmetry_arithmetic, onnx_binary("Add"), lambda a, b: f"{a} + {b}"),
    _elementwise(sub, symmetry_arithmetic, onnx_binary("Sub"), lambda a, b: f"{a} - {b}"),
    _elementwise(mul, symmetry_arithmetic, onnx_binary("Mul"), lambda a, b: f"{a} * {b}"),
    _elementwise(div, symmetry_arithmetic, onnx_binary("Div"), lambda a, b: f"{a} / {b}"),
    _elementwise(neg, symmetry_pointwise, onnx_unary("Neg"), lambda a: f"-{a}"),
    GraphOp(compare, symmetry_compare, onnx_compare, lambda a, b, how: f"torch.{how}({a}, {b})",
            reads=frozenset({"indices"}), uniform=uniform_pointwise),
    _elementwise(exp, symmetry_pointwise, onnx_unary("Exp"), lambda x: f"torch.exp({x})"),
    _elementwise(sqrt, symmetry_pointwise, onnx_unary("Sqrt"), lambda x: f"torch.sqrt({x})"),
    _elementwise(leaky_relu, symmetry_pointwise, onnx_leaky_relu, lambda x, slope: f"F.leaky_relu({x}, {slope})"),
    _elementwise(clamp, symmetry_pointwise, onnx_clamp, lambda x, low, high: f"torch.clamp({x}, {low}, {high})"),
    _elementwise(power, symmetry_pointwise, onnx_power, lambda x, exponent: f"torch.pow({x}, {exponent})"),
    GraphOp(where, symmetry_where, onnx_where, lambda c, a, b: f"torch.where({c}, {a}, {b})", uniform=uniform_pointwise),
    GraphOp(cast, symmetry_cast, onnx_cast,
            lambda x, like=None, dtype="f32": f"{x}.to({like}.dtype)" if like else f"{x}.to({torch_dtype(dtype)})",
            reads=frozenset({"indices"}), uniform=uniform_pointwise),
)


# -- lifts of captured ATen ops (capture/lift.py) ------------------------------------------------
def lift_unary(op: str):
    return lambda g, n, x: g.emit(op, (g.tensor(x),))


def lift_binary(op: str):
    def lift(g, n, a, b, alpha=1):
        if alpha != 1:  # add(a, b, alpha=s) is a + s * b
            b = b * alpha if isinstance(b, (int, float)) else g.emit("mul", (g.tensor(b), alpha), type_=g.type(n))
        return g.emit(op, tuple(v if isinstance(v, (int, float)) else g.tensor(v) for v in (a, b)))
    return lift


def lift_gelu(g, n, x, approximate="none"):
    if approximate != "none":
        g.refuse(f"gelu approximate={approximate!r} has no graph op")
    return g.emit("gelu", (g.tensor(x),))


def lift_div(g, n, a, b, rounding_mode=None):
    if rounding_mode is not None:
        g.refuse(f"division with rounding_mode={rounding_mode!r}")
    return lift_binary("div")(g, n, a, b)


def lift_pow(g, n, x, exponent):
    """x**2 is x*x, whose coordinate products the rules know; any other power is per element."""
    x = g.tensor(x)
    return g.emit("mul", (x, x)) if exponent == 2 else g.emit("power", (x, float(exponent)))


def lift_where(g, n, cond, a, b):
    return g.emit("where", (g.tensor(cond),) + tuple(v if isinstance(v, (int, float)) else g.tensor(v) for v in (a, b)))


def lift_masked_fill(g, n, x, mask, value):
    return lift_where(g, n, mask, value, x)


def lift_not(g, n, x):
    """~mask, of a bool tensor: mask == False."""
    x = g.tensor(x)
    if x.type.dtype != "bool":
        g.refuse(f"a bitwise not of {x.type.dtype}")
    return g.emit("compare", (x, False, "eq"))


def lift_softmax(g, n, x, dim, half_to_float=False):
    if half_to_float:
        g.refuse("softmax with half_to_float")
    x = g.tensor(x)
    return g.emit("softmax", (x,), {"axis": dim % len(x.type.shape)})


def lift_identity(g, n, x, *rest, **kw):
    return g.tensor(x)


def lift_rsub(g, n, a, b, alpha=1):
    """rsub(a, b) is b - alpha * a."""
    return lift_binary("sub")(g, n, b, a if alpha == 1 else g.emit("mul", (g.tensor(a), alpha), type_=g.type(n)))


def lift_vector_norm(g, n, x, ord=2, dim=None, keepdim=False, dtype=None):
    """The 2-norm over some axes: the square root of a sum of squares, whose rules know coordinate
    products (a vector's length is invariant)."""
    if ord != 2 or dtype is not None:
        g.refuse(f"a vector norm of order {ord}" + (" with a dtype" if dtype is not None else ""))
    x = g.tensor(x)
    squares = g.emit("mul", (x, x), type_=x.type)
    return g.emit("sqrt", (lift_reduce("sum")(g, n, squares, dim, keepdim),))


def lift_cdist(g, n, x1, x2, p=2.0, compute_mode=None):
    """Euclidean distances of every pair of rows, [..., P, M] and [..., R, M] -> [..., P, R], as the
    differences and 2-norms they stand for (a difference of positions is a vector, its length
    invariant). torch computes them otherwise for more than 25 rows (by |a|² + |b|² - 2a·b), which
    the replay check compares."""
    if p != 2:
        g.refuse(f"cdist with p={p}")
    a, b = g.tensor(x1), g.tensor(x2)
    *lead, rows, width = a.type.shape
    pairs = TensorType(a.type.dtype, (*lead, rows, b.type.shape[-2], width))
    a, b = unsqueezed(g, a, len(lead) + 1), unsqueezed(g, b, len(lead))
    diff = g.emit("sub", (a, b), type_=pairs)
    return lift_vector_norm(g, n, diff, 2, [-1])


def lift_norm(g, n, x, ord=None, dim=None, keepdim=False, dtype=None):
    """linalg.norm over one axis and Tensor.norm(p, dim) are vector norms (over two axes, linalg.norm
    is a matrix norm, which has no rule)."""
    if isinstance(dim, int):
        dim = [dim]
    if dim is None or len(dim) != 1:
        g.refuse("a matrix norm, or a norm over all axes")
    return lift_vector_norm(g, n, x, 2 if ord is None else ord, dim, keepdim, dtype)


def lift_compare(g, n, a, b):
    how = str(n.target).split(".")[1]
    return g.emit("compare", tuple(v if isinstance(v, (int, float)) else g.tensor(v) for v in (a, b)) + (how,))


def lift_to(g, n, x, *args, **kwargs):
    """x.float(), x.long(), mask.to(x.dtype), ...: a cast, or x itself when the dtype stays. Device
    moves and copies change no value. invc's captured graph computes in float32, so a cast to
    another float type (a float64 island) is kept as it is."""
    x, target = g.tensor(x), g.type(n).dtype
    if target in FLOATS and target not in ("f32", x.type.dtype):
        g.refuse(f"a cast to {target} inside the model (captured graphs compute in f32)")
    return as_dtype(g, x, target)


def as_dtype(g, x: Value, dtype: str) -> Value:
    """x cast to `dtype` in a lift (x itself when it is that already). A float cast reads its dtype from a
    0-d fixed weight, which the graph's cast to float64 (verify) carries along."""
    if dtype == x.type.dtype:
        return x
    like = {"like": g.fixed(torch.zeros(()))} if dtype in FLOATS else None
    return g.emit("cast", (x,), {"dtype": dtype}, params=like, type_=TensorType(dtype, x.type.shape))


def lift_dropout(g, n, x, p, train):
    if train and p != 0:
        g.refuse("dropout in training mode is random")
    return g.tensor(x)


ATEN = {
    **{f"aten.{op}.default": lift_unary(op) for op in ("relu", "silu", "tanh", "sigmoid", "neg", "exp")},
    "aten.leaky_relu.default": lambda g, n, x, slope=0.01: g.emit("leaky_relu", (g.tensor(x), float(slope))),
    "aten.clamp.default": lambda g, n, x, low=None, high=None: g.emit("clamp", (g.tensor(x), low, high)),
    "aten.clamp_min.default": lambda g, n, x, low: g.emit("clamp", (g.tensor(x), low, None)),
    "aten.clamp_max.default": lambda g, n, x, high: g.emit("clamp", (g.tensor(x), None, high)),
    **{f"aten.{op}": lift_to for op in ("to.dtype", "to.dtype_layout", "to.device", "_to_copy.default",
                                        "type_as.default")},
    "aten.gelu.default": lift_gelu,
    **{f"aten.{op}.{kind}": lift_binary(op) for op in ("add", "sub", "mul") for kind in ("Tensor", "Scalar")},
    "aten.div.Tensor": lift_div, "aten.div.Scalar": lift_div, "aten.div.Tensor_mode": lift_div,
    "aten.pow.Tensor_Scalar": lift_pow,
    **{f"aten.where.{kind}": lift_where for kind in ("self", "ScalarSelf", "ScalarOther", "Scalar")},
    **{f"aten.masked_fill{inplace}.{kind}": lift_masked_fill for inplace in ("", "_") for kind in ("Scalar", "Tensor")},
    "aten.bitwise_not.default": lift_not, "aten.logical_not.default": lift_not,
    "aten.sqrt.default": lift_unary("sqrt"),
    "aten.rsub.Scalar": lift_rsub, "aten.rsub.Tensor": lift_rsub,
    "aten.linalg_vector_norm.default": lift_vector_norm,
    "aten.linalg_norm.default": lift_norm, "aten.norm.ScalarOpt_dim": lift_norm,
    "aten.cdist.default": lift_cdist, "aten._euclidean_dist.default": lift_cdist,
    "aten._softmax.default": lift_softmax, "aten.softmax.int": lambda g, n, x, dim, dtype=None: (
        g.refuse("softmax with a dtype") if dtype is not None else lift_softmax(g, n, x, dim)),
    **{f"aten.{op}.default": lift_identity for op in ("detach", "clone", "alias", "contiguous", "lift_fresh_copy")},
    "aten.dropout.default": lift_dropout,
    **{f"aten.{how}.{kind}": lift_compare for how in ("eq", "ne", "lt", "le", "gt", "ge") for kind in ("Tensor", "Scalar")},
}
