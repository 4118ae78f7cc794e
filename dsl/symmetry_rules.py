"""The symmetry rule table: for each op of runtime/ops.py, how a fact about its inputs becomes a
fact about its output, under one group.

A rule sees a `Call`: the op name, its arguments in runtime/ops.py order with every tensor
replaced by an `Operand` (its fact and shape), and the result's shape. The checker's op graph and
the fx graph both turn into Calls, so one table serves `invc check` and the compile pipeline.
`apply` handles what every op shares: a broken input breaks the output, invariant inputs give an
invariant output. A rule answers only the rest, and says Broken, with a reason and a hint, whenever
it cannot prove a fact. Torch-free.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

from dsl.groups import (Broken, Fact, FrameBasis, Invariant, Permuted, Relabeled, Rotated, Simplex, Squared, Translated,
                        Weighted)
from dsl.ops import ACTIVATIONS, BINARY
from dsl.types import dim_product

COORDINATES = (Rotated, Translated, Squared)
RULES: dict = {}
SEES_INVARIANTS: set = set()  # ops whose result is not simply invariant when their inputs are
FRAME_READERS = {"frame_in", "frame_out"}  # the only ops that may read a frame basis
WEIGHTED_READERS = {"reduce_sum"}  # weighted positions mean something only once summed
KEEPS_WEIGHTS = {"softmax", "reshape", "permute"}  # the only ops whose result may sum to one
INDEX_READERS = {"gather", "scatter_reduce"}  # the only ops that may read relabelled indices


@dataclass(frozen=True)
class Operand:
    fact: Fact
    shape: tuple
    is_input: bool = False  # a model input: data from outside, not computed by the spec


@dataclass
class Call:
    op: str          # the runtime/ops.py function name
    args: tuple      # Operands, constants, tuples of Operands, None
    kwargs: dict
    shape: tuple     # the result's shape
    node: str
    pos: str         # "file:line:col" of the spec call
    step: int        # place in program order
    spelled: str     # the op as the spec wrote it (flatten lowers to reshape)
    group: object = None

    def arg(self, i: int, name: str | None = None, default=None):
        if name in self.kwargs:
            return self.kwargs[name]
        return self.args[i] if i < len(self.args) else default

    def operands(self) -> list[Operand]:
        found = []
        for a in (*self.args, *self.kwargs.values()):
            found += [x for x in (a if isinstance(a, (tuple, list)) else (a,)) if isinstance(x, Operand)]
        return found

    def broken(self, reason: str, hint: str | None = None) -> Broken:
        return Broken(reason, self.node, self.pos, hint, self.step)


def rule(*ops, sees_invariants: bool = False):
    def register(fn):
        RULES.update(dict.fromkeys(ops, fn))
        SEES_INVARIANTS.update(ops if sees_invariants else ())
        return fn
    return register


def apply(call: Call, group) -> Fact:
    """The fact of the op's result under `group`."""
    fn = RULES.get(call.op)
    if fn is None:
        return call.broken(f"no symmetry rule for op `{call.op}`", "add one to dsl/symmetry_rules.py")
    facts = [o.fact for o in call.operands()]
    broken = [f for f in facts if isinstance(f, Broken)]
    if broken:
        return min(broken, key=lambda b: b.step)  # the earliest cause, not a downstream echo
    if any(isinstance(f, FrameBasis) for f in facts) and call.op not in FRAME_READERS:
        return call.broken(f"{call.spelled} reads a frame basis", "only frame_in and frame_out may")
    if any(isinstance(f, Weighted) for f in facts) and call.op not in WEIGHTED_READERS:
        return call.broken(f"{call.spelled} of softmax-weighted positions",
                           "sum them over the softmax axis right away: a convex combination is a position")
    if any(isinstance(f, Relabeled) for f in facts) and call.op not in INDEX_READERS:
        return call.broken(f"{call.spelled} of indices that {group} relabels",
                           "read an `index(N)` input only with gather or as scatter_pool's ids")
    if all(isinstance(f, Invariant) for f in facts) and call.op not in SEES_INVARIANTS:
        return Invariant()  # a function of invariants is invariant, whatever the op
    fact = group.normalize(fn(replace(call, group=group)))
    if isinstance(fact, Simplex) and call.op not in KEEPS_WEIGHTS:
        return Invariant()  # a rule that passes its input's fact through keeps no sum-to-one
    return fact


# Helpers ------------------------------------------------------------------------------------

def axes_of(fact: Fact) -> tuple:
    if isinstance(fact, Permuted):
        return fact.axes
    return (fact.axis,) if isinstance(fact, (*COORDINATES, Simplex)) else ()


def moved(fact: Fact, axes) -> Fact:
    """The same kind of fact on other axes; weights whose axis is merged away are plain invariants."""
    axes = tuple(axes)
    if isinstance(fact, Permuted):
        return replace(fact, axes=axes) if axes else Invariant()
    if isinstance(fact, Invariant):
        return Simplex(axes[0]) if isinstance(fact, Simplex) and axes[0] is not None else Invariant()
    return type(fact)(axes[0])


def what(x) -> str:
    """A tensor described by its fact, for messages."""
    fact = x.fact if isinstance(x, Operand) else Invariant()
    if isinstance(fact, Permuted):
        return f"a tensor permuted along {', '.join(str(x.shape[k]) for k in fact.axes)}"
    words = {Rotated: "a vector", Translated: "a position", Squared: "coordinate products",
             Weighted: "softmax-weighted positions", FrameBasis: "a frame basis",
             Invariant: "an invariant" if isinstance(x, Operand) else "a constant"}
    return next(w for kind, w in words.items() if isinstance(fact, kind))  # Simplex is an Invariant


def axis_name(x: Operand, k: int) -> str:
    return "the 3 coordinates" if isinstance(x.fact, COORDINATES) and k == x.fact.axis else str(x.shape[k])


def _constant(call: Call, weights) -> Broken | None:
    moving = [w for w in weights if isinstance(w, Operand) and not isinstance(w.fact, Invariant)]
    if moving:
        return call.broken(f"{call.spelled} with weights computed from {what(moving[0])}")
    return None


POOL_HINT = "pool over {dim} with sum/mean/max instead"
COORD_HINT = ("build invariants first (the squared norm sum(v * v, axis=-1), or differences of "
              "positions), or wrap the backbone in frame_average")


# Per-element ops ----------------------------------------------------------------------------

@rule(*ACTIVATIONS, "neg")
def pointwise(call: Call) -> Fact:
    """Per-element functions commute with permutations; only negation commutes with rotations."""
    x = call.arg(0)
    if isinstance(x.fact, Permuted) or (call.op == "neg" and isinstance(x.fact, (Rotated, Squared))):
        return x.fact
    return call.broken(f"{call.spelled} of {what(x)}",
                       "negating a position is not a position" if call.op == "neg" else COORD_HINT)


@rule("softmax", sees_invariants=True)
def softmax(call: Call) -> Fact:
    """A softmax of invariants is invariant weights that sum to one along its axis."""
    x, axis = call.arg(0), call.arg(1, "axis")
    if isinstance(x.fact, Invariant):
        return Simplex(axis % len(x.shape))
    return pointwise(call)


def _placement(x: Operand, rank: int) -> dict:
    """Output axis -> (dim, permuted?) for an operand broadcast right-aligned to `rank` axes."""
    shift, permuted = rank - len(x.shape), set(axes_of(x.fact))
    return {i + shift: (d, i in permuted) for i, d in enumerate(x.shape)}


def _join_permuted(call: Call, parts: list, how: str) -> Fact:
    """Tensors meeting axis by axis, each given as (fact, placement): each permuted output axis
    must be permuted (or of size 1) in every operand that has it, else a fixed tensor indexed by
    the set fixes an order. Frame relabelings of different frames never meet."""
    bys = {f.by for f, _ in parts if isinstance(f, Permuted)}
    if len(bys - {"*"}) > 1:
        return call.broken(f"{how} joins tensors of different frames")
    by = min(bys - {"*"}, default="*") if bys else ""
    axes = sorted({k for _, p in parts for k, (_, perm) in p.items() if perm})
    for _, p in parts:
        for k in axes:
            if k in p and not p[k][1] and p[k][0] != 1:
                dim = call.shape[k]
                return call.broken(f"{how} joins a tensor permuted along {dim} with one that is not",
                                   f"a tensor indexed by {dim} but not permuted with it fixes an order; "
                                   f"give per-set values size 1 along {dim} (keepdim=true)")
    return Permuted(tuple(axes), by) if axes else Invariant()


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
SYMBOLS = {fn: sym for sym, fn in BINARY.items()}  # "add" -> "+"


@rule("add", "sub", "mul", "div")
def arithmetic(call: Call) -> Fact:
    a, b = call.arg(0), call.arg(1)
    tensors = [x for x in (a, b) if isinstance(x, Operand)]
    sym = f"`{SYMBOLS[call.op]}`"
    if all(isinstance(x.fact, (Invariant, Permuted)) for x in tensors):
        return _join_permuted(call, [(x.fact, _placement(x, len(call.shape))) for x in tensors], sym)
    return _coordinate_arithmetic(call, a, b, sym)


def _coordinate_arithmetic(call: Call, a, b, sym: str) -> Fact:
    rank = len(call.shape)
    tensors = [x for x in (a, b) if isinstance(x, Operand)]
    axes = {k + rank - len(x.shape) for x in tensors if isinstance(x.fact, COORDINATES) for k in axes_of(x.fact)}
    kinds = tuple(type(x.fact) if isinstance(x, Operand) else Invariant for x in (a, b))
    table = ARITHMETIC[call.op]
    result = table.get(kinds) or table.get(tuple(Invariant if k is Simplex else k for k in kinds))
    if result is None or len(axes) != 1:
        return call.broken(f"{sym} of {what(a)} and {what(b)}", _arithmetic_hint(call.op))
    (k,) = axes
    for x in tensors:  # an invariant factor must be one value per vector
        if isinstance(x.fact, Invariant) and _placement(x, rank).get(k, (1,))[0] != 1:
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


def _arithmetic_hint(op: str) -> str:
    return {"add": "a position plus a vector is a position; positions are subtracted or averaged, "
                   "never added to each other or to constants",
            "sub": "position - position is a vector, position - vector a position",
            "mul": "scale vectors by invariants; a position is scaled about a centroid: c + s * (x - c)",
            "div": "divide vectors by invariants, such as norms"}[op]


# Linear maps --------------------------------------------------------------------------------

@rule("linear")
def linear(call: Call) -> Fact:
    """A linear map on the last axis commutes with anything acting on the other axes; a bias
    breaks rotations, and no weights keep a translation (they would need to sum to one)."""
    x, bias = call.arg(0), call.arg(2, "bias")
    refused = _constant(call, (call.arg(1), bias))
    last, fact = len(x.shape) - 1, x.fact
    if refused or last in axes_of(fact):
        return refused or call.broken(f"{call.spelled} over {axis_name(x, last)}",
                                      POOL_HINT.format(dim=x.shape[last]) if isinstance(fact, Permuted) else COORD_HINT)
    if isinstance(fact, Translated):
        return call.broken(f"{call.spelled} of positions",
                           "subtract the centroid first: pos - mean(pos, axis=N, keepdim=true)")
    if isinstance(fact, (Rotated, Squared)) and bias is not None:
        return call.broken(f"{call.spelled} with a bias on {what(x)}", "use bias=false")
    return fact


@rule("embedding")
def embedding(call: Call) -> Fact:
    ids = call.arg(0)
    return ids.fact if isinstance(ids.fact, Permuted) else call.broken(f"embedding of {what(ids)}")


@rule("matmul")
def matmul(call: Call) -> Fact:
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
    pa, pb = _placement(a, rank), _placement(b, rank)
    del pa[rank - 1], pb[rank - 2]
    return pa, pb


def _permuted_matmul(call: Call, a: Operand, b: Operand) -> Fact:
    # Summing over a permuted axis against the same permutation is invariant; against a fixed
    # axis it is a fixed weighting of the set's elements.
    if (len(a.shape) - 1 in axes_of(a.fact)) != (len(b.shape) - 2 in axes_of(b.fact)):
        dim = a.shape[-1]
        return call.broken(f"matmul contracts {dim} of a permuted tensor with a fixed one",
                           POOL_HINT.format(dim=dim))
    return _join_permuted(call, list(zip((a.fact, b.fact), _matmul_places(call, a, b))), "matmul")


def _coordinate_matmul(call: Call, a: Operand, b: Operand) -> Fact:
    inner_a, inner_b = len(a.shape) - 1, len(b.shape) - 2
    if a.fact == Rotated(inner_a) and b.fact == Rotated(inner_b):
        return Invariant()  # rows of a dotted with columns of b
    if not isinstance(a.fact, Invariant) and not isinstance(b.fact, Invariant):
        return call.broken(f"matmul of {what(a)} and {what(b)}", COORD_HINT)
    x, inner = (a, inner_a) if isinstance(b.fact, Invariant) else (b, inner_b)
    if x.fact.axis == inner:
        return call.broken(f"matmul over {axis_name(x, inner)}", COORD_HINT)
    convex = x is b and isinstance(a.fact, Simplex) and a.fact.axis == inner_a
    if isinstance(x.fact, Translated) and not convex:  # softmax rows of a summing positions are convex
        return call.broken("matmul of positions", "subtract the centroid first, or weight by a softmax along the contracted axis")
    k = x.fact.axis + len(call.shape) - len(x.shape)
    other = _matmul_places(call, a, b)[1 if x is a else 0]
    if other.get(k, (1,))[0] != 1:
        return call.broken("matmul treats the 3 coordinates separately", COORD_HINT)
    return type(x.fact)(k)


# Normalization and attention ----------------------------------------------------------------

@rule("layernorm", "rmsnorm")
def norm(call: Call) -> Fact:
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


@rule("attention")
def attention(call: Call) -> Fact:
    """Self-attention without positions is permutation-equivariant along its sequence axis."""
    x, mask = call.arg(0), call.kwargs.get("mask")
    refused = _constant(call, call.args[1:5])
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


# Shape ops ----------------------------------------------------------------------------------

def merged(facts) -> Fact | None:
    """One fact for tensors that transform together, or None: equal facts, or permuted alike where
    copies per frame ("*") follow any frame's relabeling."""
    facts = set(facts)
    if len(facts) == 1:
        return facts.pop()
    if not all(isinstance(f, Permuted) for f in facts) or len({f.axes for f in facts}) > 1:
        return None
    bys = {f.by for f in facts} - {"*"}
    return Permuted(next(iter(facts)).axes, bys.pop()) if len(bys) == 1 else None


@rule("concat")
def concat(call: Call) -> Fact:
    parts, axis = call.arg(0), call.arg(1, "axis")
    fact = merged(p.fact for p in parts)
    if fact is None:
        a = parts[0]
        b = next(p for p in parts if merged((a.fact, p.fact)) is None)
        return call.broken(f"concat joins {what(a)} with {what(b)}",
                           COORD_HINT if any(isinstance(p.fact, COORDINATES) for p in parts) else
                           "concat tensors that transform alike")
    if axis in axes_of(fact):
        return call.broken(f"concat along {axis_name(parts[0], axis)}",
                           "concat along a feature axis" if isinstance(fact, Permuted) else
                           "stack vectors along another axis")
    return fact


def same_axis(src: tuple, dst: tuple, k: int) -> int | None:
    """Where axis k of `src` survives a reshape to `dst` unmerged: same size, same stride."""
    before = dim_product(src[:k])
    return next((j for j, d in enumerate(dst) if d == src[k] and dim_product(dst[:j]) == before), None)


@rule("reshape", sees_invariants=True)
def reshape(call: Call) -> Fact:
    x = call.arg(0)
    axes = [same_axis(x.shape, call.shape, k) for k in axes_of(x.fact)]
    if isinstance(x.fact, Invariant):
        return moved(x.fact, axes)
    if None in axes:
        k = axes_of(x.fact)[axes.index(None)]
        return call.broken(f"{call.spelled} over {axis_name(x, k)}",
                           POOL_HINT.format(dim=x.shape[k]) if isinstance(x.fact, Permuted) else
                           "keep the 3 coordinates on an axis of their own")
    return moved(x.fact, axes)


@rule("unflatten_rows")
def unflatten_rows(call: Call) -> Fact:
    """Rows flattened from a set or from coordinates no longer say which axis moved (passes/rows.py
    runs after the symmetry check for that reason), so only invariant rows (handled by `apply`)
    keep a fact."""
    return call.broken(f"{call.spelled} of {what(call.arg(0))}", "flattened rows lose their axes")


@rule("permute", sees_invariants=True)
def permute(call: Call) -> Fact:
    x, perm = call.arg(0), list(call.arg(1, "perm"))
    return moved(x.fact, sorted(perm.index(k) for k in axes_of(x.fact)))


@rule("reduce_sum", "reduce_mean", "reduce_max", "reduce_min")
def reduce(call: Call) -> Fact:
    return reduced(call, call.arg(0), call.arg(1, "axis"), call.arg(2, "keepdim", False),
                   call.op.removeprefix("reduce_"))


def reduced(call: Call, x: Operand, axis: int, keep: bool, how: str, subsets: bool = False) -> Fact:
    """sum/mean/max/min over a set forget its order; over the coordinates only a sum or mean of
    coordinate products (a squared norm or a dot product) over all 3 is invariant. `subsets`: the
    op reduces chosen parts of the axis (a mask, segments), any of which may be empty (giving 0)."""
    fact = x.fact

    def where(k):
        return k if k < axis or keep else k - 1

    if isinstance(fact, Invariant):
        return Invariant()
    if isinstance(fact, Permuted):
        rest = tuple(where(k) for k in fact.axes if k != axis)
        return replace(fact, axes=rest) if rest else Invariant()
    if isinstance(fact, Weighted):
        if axis == fact.over and how == "sum" and not subsets:
            return Translated(where(fact.axis))
        return call.broken(f"{how} of softmax-weighted positions over {x.shape[axis]}",
                           f"sum over the softmax axis {x.shape[fact.over]}, whose weights add up to one")
    if fact.axis == axis:
        if isinstance(fact, Squared) and how in ("sum", "mean") and not subsets:
            return Invariant()
        return call.broken(f"{how} over {'some of ' if subsets else ''}the 3 coordinates of {what(x)}",
                           "the squared norm sum(v * v, axis=-1), over all 3 coordinates, is invariant")
    if isinstance(fact, Translated) and subsets:
        return call.broken(f"{call.spelled} of positions over sets that may be empty",
                           "an empty set pools to 0, which is not a position; pool differences of positions "
                           "(vectors) instead, or take an unmasked mean")
    if how in ("max", "min") or (isinstance(fact, Translated) and how == "sum"):
        return call.broken(f"{how} of {what(x)} over {x.shape[axis]}",
                           "mean over N of positions is their centroid" if how == "sum" else
                           "max and min act per coordinate; use sum or mean")
    return type(fact)(where(fact.axis))
