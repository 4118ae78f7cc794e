"""The op vocabulary as the checker sees it: one annotated function per op.

A rule's Python signature *is* the op's signature: the checker binds the call's arguments to it
(arity, keywords, defaults) and checks each against its annotation before the rule runs. The rule
then checks dtypes and shapes and emits calls of runtime/ops.py functions through `ctx`.
"""

from dsl.types import FLOATS, INTS, ParamSpec, Sym, TensorType, Value, broadcast, dim_product


class Tensor:
    """Annotation: a tensor argument."""


class Axis:
    """Annotation: an axis, by index (-1) or by the name of a symbolic dim (N)."""


class DefRef:
    """Annotation: the name of a def, passed uncalled (a backbone for a wrapper such as
    frame_average); a rule expands it with `ctx.call_def(ref, tensors)`."""


ACTIVATIONS = ("relu", "gelu", "silu", "tanh", "sigmoid")


def family():
    """A new op family: its rules by name, and the decorator `@op` that adds one; dsl/vocabulary.py
    joins the families."""
    rules = {}

    def op(fn):
        rules[fn.__name__] = fn
        return fn
    return rules, op


OPS, op = family()


def _float(ctx, x: Value, what: str = "x") -> None:
    if x.type.dtype not in FLOATS:
        ctx.error(f"{ctx.op} expects a float tensor for `{what}`, got {x.type}")


def _features(ctx, x: Value) -> int:
    _float(ctx, x)
    if x.type.rank == 0 or not isinstance(x.type.shape[-1], int):
        ctx.error(f"{ctx.op} needs a static last dim to size its weights, got {x.type}",
                  "make the feature axis an int or a model parameter")
    return x.type.shape[-1]


def _with_last(x: Value, d: int) -> TensorType:
    return TensorType(x.type.dtype, x.type.shape[:-1] + (d,))


def _linear(ctx, x: Value, out: int, bias: bool, prefix: str = "") -> Value:
    d = _features(ctx, x)
    if out < 1:
        ctx.error(f"linear needs a positive output width, got {out}")
    params = {f"{prefix}weight": ParamSpec((out, d), "fan_in")}
    if bias:
        params[f"{prefix}bias"] = ParamSpec((out,), "zeros")
    return ctx.emit("linear", (x,), _with_last(x, out), params=params)


@op
def linear(ctx, x: Tensor, out: int, bias: bool = True):
    return _linear(ctx, x, out, bias)


@op
def mlp(ctx, x: Tensor, widths: list, act: str = "relu", bias: bool = True):
    """Linear layers of the given widths with `act` between them (not after the last)."""
    if not widths or not all(isinstance(w, int) for w in widths):
        ctx.error("mlp needs `widths`, a non-empty list of ints", "for example widths=[64, 64]")
    if act not in ACTIVATIONS:
        ctx.error(f"unknown activation {act!r}", f"use one of {', '.join(ACTIVATIONS)}")
    for i, w in enumerate(widths):
        if i:
            x = ctx.emit(act, (x,), x.type)
        x = _linear(ctx, x, w, bias, prefix=f"{i}.")
    return x


@op
def embedding(ctx, ids: Tensor, num: int, dim: int):
    if ids.type.dtype not in INTS:
        ctx.error(f"embedding expects integer ids (i32 or i64), got {ids.type}")
    params = {"weight": ParamSpec((num, dim), "normal")}
    return ctx.emit("embedding", (ids,), TensorType("f32", ids.type.shape + (dim,)), params=params)


def _norm(ctx, x: Value, eps: float, affine: bool, with_bias: bool) -> Value:
    d = _features(ctx, x)
    params = {"weight": ParamSpec((d,), "ones")} if affine else {}
    if affine and with_bias:
        params["bias"] = ParamSpec((d,), "zeros")
    return ctx.emit(ctx.op, (x,), x.type, kwargs={"eps": float(eps)}, params=params)


@op
def layernorm(ctx, x: Tensor, eps: float = 1e-5, affine: bool = True):
    return _norm(ctx, x, eps, affine, with_bias=True)


@op
def rmsnorm(ctx, x: Tensor, eps: float = 1e-6, affine: bool = True):
    return _norm(ctx, x, eps, affine, with_bias=False)


def _activation(name):
    def rule(ctx, x: Tensor):
        _float(ctx, x)
        return ctx.emit(name, (x,), x.type)
    rule.__name__ = name
    return op(rule)


relu, gelu, silu, tanh, sigmoid = (_activation(a) for a in ACTIVATIONS)


@op
def softmax(ctx, x: Tensor, axis: Axis = -1):
    _float(ctx, x)
    return ctx.emit("softmax", (x,), x.type, kwargs={"axis": ctx.axis(x, axis)})


@op
def matmul(ctx, a: Tensor, b: Tensor):
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


@op
def attention(ctx, x: Tensor, heads: int = 1, mask: Tensor = None, causal: bool = False):
    """Multi-head self-attention over axis -2; `mask` is bool [..., N], True marking real keys."""
    d = _features(ctx, x)
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


@op
def concat(ctx, *tensors: Tensor, axis: Axis = -1):
    if not tensors:
        ctx.error("concat needs at least one tensor")
    first = tensors[0]
    ax = ctx.axis(first, axis)
    for t in tensors[1:]:
        if t.type.dtype != first.type.dtype or t.type.rank != first.type.rank or any(
                a != b for i, (a, b) in enumerate(zip(t.type.shape, first.type.shape)) if i != ax):
            ctx.error(f"concat along axis {ax}: {t.type} does not fit {first.type}")
    shape = list(first.type.shape)
    shape[ax] = _sum_dims([t.type.shape[ax] for t in tensors])
    return ctx.emit("concat", (tuple(tensors),), TensorType(first.type.dtype, tuple(shape)),
                    kwargs={"axis": ax})


def _sum_dims(dims):
    if all(isinstance(d, int) for d in dims):
        return sum(dims)
    if len(set(dims)) == 1:
        return dim_product([len(dims), dims[0]])
    return "+".join(map(str, dims))


@op
def reshape(ctx, x: Tensor, shape: list):
    target = [ctx.dim(d) for d in shape]
    return ctx.emit("reshape", (x,), TensorType(x.type.dtype, tuple(target)),
                    kwargs={"shape": ctx.reshape_spec(x, tuple(target))})


@op
def flatten(ctx, x: Tensor, start: Axis = 0, end: Axis = -1):
    s, e = ctx.axis(x, start), ctx.axis(x, end)
    if s > e:
        ctx.error(f"flatten: start axis {s} comes after end axis {e}")
    shape = x.type.shape
    target = shape[:s] + (dim_product(shape[s:e + 1]),) + shape[e + 1:]
    return ctx.emit("reshape", (x,), TensorType(x.type.dtype, target),
                    kwargs={"shape": ctx.reshape_spec(x, target)})


@op
def permute(ctx, x: Tensor, order: list):
    perm = tuple(ctx.axis(x, a) for a in order)
    if sorted(perm) != list(range(x.type.rank)):
        ctx.error(f"permute order {list(perm)} is not a permutation of the {x.type.rank} axes of {x.type}")
    return ctx.emit("permute", (x,), TensorType(x.type.dtype, tuple(x.type.shape[p] for p in perm)),
                    kwargs={"perm": perm})


@op
def transpose(ctx, x: Tensor, a: Axis = -2, b: Axis = -1):
    perm = list(range(x.type.rank))
    i, j = ctx.axis(x, a), ctx.axis(x, b)
    perm[i], perm[j] = perm[j], perm[i]
    return ctx.emit("permute", (x,), TensorType(x.type.dtype, tuple(x.type.shape[p] for p in perm)),
                    kwargs={"perm": tuple(perm)})


def _reduction(name):
    def rule(ctx, x: Tensor, axis: Axis, keepdim: bool = False):
        ax = ctx.axis(x, axis)
        shape = tuple(1 if i == ax else d for i, d in enumerate(x.type.shape)) if keepdim else \
            x.type.shape[:ax] + x.type.shape[ax + 1:]
        return ctx.emit(f"reduce_{name}", (x,), TensorType(x.type.dtype, shape),
                        kwargs={"axis": ax, "keepdim": keepdim})
    rule.__name__ = name
    return op(rule)


KINDS = ("sum", "mean", "max", "min")  # the reductions; pool and friends take the same kinds
sum_, mean, max_, min_ = (_reduction(r) for r in KINDS)


BINARY = {"+": "add", "-": "sub", "*": "mul", "/": "div"}


def binary(ctx, fn: str, a, b):
    """Elementwise a (op) b with broadcasting; one side may be a Python number."""
    tensors = [v for v in (a, b) if isinstance(v, Value)]
    if len(tensors) == 2:
        if a.type.dtype != b.type.dtype:
            ctx.error(f"`{ctx.symbol}` of {a.type} and {b.type}: dtypes differ")
        shape = broadcast(a.type.shape, b.type.shape)
        if isinstance(shape, str):
            ctx.error(f"`{ctx.symbol}` of {a.type} and {b.type}: {shape}",
                      "symbolic dims with different names never broadcast; reshape or reduce first")
        return ctx.emit(fn, (a, b), TensorType(a.type.dtype, shape))
    return ctx.emit(fn, (a, b), tensors[0].type)


def neg(ctx, a: Value):
    return ctx.emit("neg", (a,), a.type)
