"""The symmetry engine's rule kit: how a fact about an op's inputs becomes a fact about its output,
under one group. The rules themselves live with their ops (ops/), keyed by graph op name.

A rule sees a `Call`: the op name, its arguments in the torch form's order with every tensor
replaced by an `Operand` (its fact and shape), and the result's shape. The checker's op graph and
the fx graph both turn into Calls, so one table serves `invc check` and the compile pipeline.
`apply` handles what every op shares: a broken input breaks the output, invariant inputs give an
invariant output. A rule answers only the rest, and says Broken, with a reason and a hint, whenever
it cannot prove a fact. Torch-free.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

from dsl.groups import (Broken, Fact, FrameBasis, Invariant, Outer, Permuted, Relabeled, Rotated, Simplex, Squared,
                        Stacked, Translated, Uniform, Weighted)

COORDINATES = (Rotated, Translated, Squared)


@dataclass(frozen=True)
class Operand:
    fact: Fact
    shape: tuple
    is_input: bool = False  # a model input: data from outside, not computed by the spec


@dataclass
class Call:
    op: str          # the graph op's name (its torch form's __name__)
    args: tuple      # Operands, constants, tuples of Operands, None
    kwargs: dict
    shape: tuple     # the result's shape
    node: str
    pos: str         # "file:line:col" of the spec call
    step: int        # place in program order
    spelled: str     # the op as the spec wrote it (flatten lowers to reshape)
    group: object = None
    origin: str = "" # a captured op's ATen overload and module, which every refusal names

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
        return Broken(f"{reason} ({self.origin})" if self.origin else reason, self.node, self.pos, hint, self.step)


GATED = (  # facts that only the ops declaring them in `reads` may take; any other op breaks them
    (FrameBasis, "frames", "{op} reads a frame basis", "only frame_in and frame_out may"),
    (Weighted, "weights", "{op} of softmax-weighted positions",
     "sum them over the softmax axis right away: a convex combination is a position"),
    (Relabeled, "indices", "{op} of indices that {group} relabels",
     "read an `index(N)` input only with gather or as scatter_pool's ids"),
    (Outer, "outer", "{op} of a rank-2 tensor (an outer product)",
     "contract it with a vector right away: (v wᵀ) u, by matmul, is a vector"),
    (Stacked, "stacked", "{op} of vectors stacked along the coordinates",
     "reshape them to [..., k, 3] right away, giving each vector its own coordinate axis"),
)


def apply(call: Call, group, ops: dict) -> Fact:
    """The fact of the op's result under `group`; `ops` maps graph op names to their definitions."""
    op = ops.get(call.op)
    if op is None:
        return call.broken(f"no symmetry rule for op `{call.op}`", "define it with its op, in its family under ops/")
    facts = [o.fact for o in call.operands()]
    broken = [f for f in facts if isinstance(f, Broken)]
    if broken:
        return min(broken, key=lambda b: b.step)  # the earliest cause, not a downstream echo
    for kind, reads, reason, hint in GATED:
        if any(isinstance(f, kind) for f in facts) and reads not in op.reads:
            return call.broken(reason.format(op=call.spelled, group=group), hint)
    if all(isinstance(f, Invariant) for f in facts) and not op.sees_invariants:
        return uniform(call, op, Invariant())  # a function of invariants is invariant, whatever the op
    fact = group.normalize(op.symmetry(replace(call, group=group)))
    if isinstance(fact, Simplex) and not op.keeps_weights:
        return Invariant()  # a rule that passes its input's fact through keeps no sum-to-one
    return uniform(call, op, fact)


def uniform(call: Call, op, fact: Fact) -> Fact:
    """An invariant result, told which axes it is uniform along: only the op's own `uniform` says
    (a rule that passes its input's fact through keeps no uniformity)."""
    if type(fact) not in (Invariant, Uniform):
        return fact
    axes = tuple(sorted(op.uniform(call))) if op.uniform else ()
    return Uniform(axes) if axes else Invariant()


def uniform_axes(x, rank: int) -> set:
    """The result axes (of `rank`, right-aligned) along which operand `x` is the same everywhere:
    its Uniform axes and the axes it is broadcast along. A constant is uniform along all."""
    if not isinstance(x, Operand):
        return set(range(rank))
    shift = rank - len(x.shape)
    own = set(x.fact.axes) if isinstance(x.fact, Uniform) else set()
    return set(range(shift)) | {k + shift for k, d in enumerate(x.shape) if k in own or d == 1}


# Helpers ------------------------------------------------------------------------------------

def axes_of(fact: Fact) -> tuple:
    if isinstance(fact, (Permuted, Outer, Relabeled)):
        return fact.axes
    return (fact.axis,) if isinstance(fact, (*COORDINATES, Stacked, Simplex)) else ()


def moved(fact: Fact, axes) -> Fact:
    """The same kind of fact on other axes; weights whose axis is merged away are plain invariants."""
    axes = tuple(axes)
    if isinstance(fact, Permuted):
        return replace(fact, axes=axes) if axes else Invariant()
    if isinstance(fact, Relabeled):  # indices stay indices, permuted or not
        return replace(fact, axes=axes, by=fact.by if axes else "")
    if isinstance(fact, Invariant):
        return Simplex(axes[0]) if isinstance(fact, Simplex) and axes[0] is not None else Invariant()
    if isinstance(fact, Outer):
        return Outer(tuple(sorted(axes)))
    return replace(fact, axis=axes[0])


def what(x) -> str:
    """A tensor described by its fact, for messages."""
    return x.fact.noun(x.shape) if isinstance(x, Operand) else "a constant"


def axis_name(x: Operand, k: int) -> str:
    if isinstance(x.fact, Stacked) and k == x.fact.axis:
        return "the stacked coordinates"
    return "the 3 coordinates" if isinstance(x.fact, COORDINATES) and k == x.fact.axis else str(x.shape[k])


def moving_weights(call: Call, weights) -> Broken | None:
    moving = [w for w in weights if isinstance(w, Operand) and not isinstance(w.fact, Invariant)]
    if moving:
        return call.broken(f"{call.spelled} with weights computed from {what(moving[0])}")
    return None


POOL_HINT = "pool over {dim} with sum/mean/max instead"
COORD_HINT = ("build invariants first (the squared norm sum(v * v, axis=-1), or differences of "
              "positions), or wrap the backbone in frame_average")


def placement(x: Operand, rank: int) -> dict:
    """Output axis -> (dim, permuted?) for an operand broadcast right-aligned to `rank` axes. An axis
    the operand is the same all along (Uniform: zeros_like, a count repeated) meets any permutation
    as a size-1 axis does."""
    shift, permuted = rank - len(x.shape), set(axes_of(x.fact))
    same = set(x.fact.axes) if isinstance(x.fact, Uniform) else set()
    return {i + shift: (1 if i in same else d, i in permuted) for i, d in enumerate(x.shape)}


def join_permuted(call: Call, parts: list, how: str) -> Fact:
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
    if how in ("max", "min") and isinstance(fact, Translated) and not call.group.rotates:
        return Translated(where(fact.axis))  # max_n (x_n + t) = max_n x_n + t, coordinate by coordinate
    if how in ("max", "min") or (isinstance(fact, Translated) and how == "sum"):
        return call.broken(f"{how} of {what(x)} over {x.shape[axis]}",
                           "mean over N of positions is their centroid" if how == "sum" else
                           "max and min act per coordinate; use sum or mean")
    return type(fact)(where(fact.axis))
