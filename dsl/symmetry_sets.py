"""Symmetry rules of the set aggregators (runtime/sets.py) and of frame averaging
(runtime/frames.py), added to the one table of dsl/symmetry_rules.py.

Frame averaging, as facts: under a rotating group, frame_basis is a FrameBasis (rotated along
its rows, its F frames relabeled); frame_in turns positions (with their centroid) and vectors into
canonical coordinates, which a rotation only relabels: Permuted along the folded B*F axis, `by`
that basis; frame_tile copies invariants into every frame (Permuted "*"). Per-row ops of the
backbone keep that fact, and frame_out's mean over frames turns it back into an invariant, a
vector or a position. A backbone that mixes rows of different frames breaks it, as it should.
"""
from __future__ import annotations

from dataclasses import replace

from dsl.groups import Broken, Fact, FrameBasis, Invariant, Permuted, Relabeled, Rotated, Translated
from dsl.symmetry_rules import (COORD_HINT, COORDINATES, Call, Operand, arithmetic, axes_of, merged, moved, reduced, rule,
                                what)

FRAMES_HINT = "frame_in takes positions with their centroid, or vectors without; invariants go through frame_tile"


def _mask_refused(call: Call, x: Operand, mask) -> Broken | None:
    """A mask over x's leading axes must be permuted exactly where x is."""
    if mask is None:
        return None
    axes = tuple(k for k in axes_of(x.fact) if k < len(mask.shape)) if isinstance(x.fact, Permuted) else ()
    expected = replace(x.fact, axes=axes) if axes else Invariant()
    if merged((mask.fact, expected)) is not None:
        return None
    return call.broken(f"{call.spelled} with a mask not permuted like its input", "mask along the same set axes")


def _relative(call: Call, x: Operand, centroid) -> Fact:
    """The fact of x - centroid (of x itself without a centroid)."""
    if centroid is None:
        return x.fact
    return arithmetic(replace(call, op="sub", args=(x, centroid), kwargs={}, shape=x.shape))


# Aggregators --------------------------------------------------------------------------------

@rule("masked_reduce")
def masked_reduce(call: Call) -> Fact:
    x, mask = call.arg(0), call.arg(1, "mask")
    return _mask_refused(call, x, mask) or reduced(call, x, call.arg(2, "axis"), False, call.arg(3, "kind"),
                                                   subsets=mask is not None)


@rule("attention_pool")
def attention_pool(call: Call) -> Fact:
    """Softmax weights over the set axis (-2) are permuted with it, so the weighted sum is a pool."""
    x, query, mask = call.arg(0), call.arg(1, "query"), call.arg(2, "mask")
    last = len(x.shape) - 1
    if not isinstance(query.fact, Invariant) or not isinstance(x.fact, Permuted) or last in x.fact.axes:
        return call.broken(f"attention_pool of {what(x)}" if isinstance(query.fact, Invariant) else
                           f"attention_pool with a query computed from {what(query)}", COORD_HINT)
    return _mask_refused(call, x, mask) or reduced(call, x, last - 1, False, "sum")


@rule("segment_reduce")
def segment_reduce(call: Call) -> Fact:
    """Rows stay in their set: permuting rows across sets breaks it; within-set order is not a
    declared group, so only the other axes' facts carry over."""
    x, offsets = call.arg(0), call.arg(1, "offsets")
    if not isinstance(offsets.fact, Invariant) or (isinstance(x.fact, Permuted) and 0 in x.fact.axes):
        return call.broken(f"{call.spelled} of rows permuted across sets",
                           "permute segment ids with the rows and use scatter_pool")
    return reduced(call, x, 0, True, call.arg(2, "kind"), subsets=True)


@rule("scatter_reduce")
def scatter_reduce(call: Call) -> Fact:
    """Rows permuted together with their segment ids reduce to the same sets; `like` gives a size.
    Ids relabelled by S(N) send the same rows to N's new places: the sets, if they are N, permute."""
    x, ids = call.arg(0), call.arg(1, "segment_ids")
    if isinstance(ids.fact, Relabeled):
        return _into_relabelled_sets(call, x, ids)
    rows_permuted = isinstance(x.fact, Permuted) and 0 in x.fact.axes
    expected = replace(x.fact, axes=(0,)) if rows_permuted else Invariant()
    if merged((ids.fact, expected)) is None:
        return call.broken(f"{call.spelled} with segment ids not permuted like its rows",
                           "permute the ids with the rows")
    return x.fact if isinstance(x.fact, Invariant) else reduced(call, x, 0, True, call.arg(3, "kind"), subsets=True)


def _into_relabelled_sets(call: Call, x: Operand, ids: Operand) -> Fact:
    rows_permuted = isinstance(x.fact, Permuted) and 0 in x.fact.axes
    other_sets = call.shape[0] != call.group.dim
    if other_sets or rows_permuted != (0 in ids.fact.axes):
        why = f"into sets {call.shape[0]} that are not {call.group.dim}" if other_sets else "with rows not permuted like the ids"
        return call.broken(f"{call.spelled} by ids that {call.group} relabels, {why}",
                           f"pool into `like` with dim 0 {call.group.dim}, the dim the ids index")
    return _permuted_at(call, reduced(call, x, 0, True, call.arg(3, "kind"), subsets=True), 0)


def _permuted_at(call: Call, fact: Fact, axis: int) -> Fact:
    """`fact`, with the group's permutation on `axis` as well."""
    if isinstance(fact, Invariant):
        return Permuted((axis,))
    if isinstance(fact, Permuted) and not fact.by and axis not in fact.axes:
        return Permuted(tuple(sorted((*fact.axes, axis))))
    return fact if isinstance(fact, Broken) else call.broken(
        f"{call.spelled}: its index permutes axis {axis} of a result that is {fact}")


@rule("gather")
def gather(call: Call) -> Fact:
    """x's elements along `axis` at an index's positions. Indices relabelled with a permutation of
    that axis pick the same elements after it, so x's facts on its other axes carry over; indices
    that do not relabel pick other elements of a permuted x. An index permuted along its own axis
    (edges reordered) permutes the result there."""
    x, index, axis = call.arg(0), call.arg(1, "index"), call.arg(2, "axis")
    along = isinstance(x.fact, Permuted) and axis in x.fact.axes and not x.fact.by
    relabels = isinstance(index.fact, Relabeled)
    if along != relabels:
        return call.broken(f"gather of {what(x)} by indices that {call.group} relabels" if relabels else
                           f"gather of {what(x)} by indices that {call.group} does not relabel",
                           f"declare the index input `is index({x.shape[axis]})`" if along else
                           f"gather along a set axis {call.group} permutes")
    if axis in axes_of(x.fact) and not along:
        return call.broken(f"gather over the coordinates of {what(x)}", COORD_HINT)
    rest = moved(x.fact, [k for k in x.fact.axes if k != axis]) if along else x.fact
    moves = index.fact.axes if isinstance(index.fact, (Relabeled, Permuted)) else ()
    return _permuted_at(call, rest, axis) if moves else rest


# Frames -------------------------------------------------------------------------------------

@rule("frame_centroid")
def frame_centroid(call: Call) -> Fact:
    """The centroid of the cloud given the position role, which must move like a position: the
    frames and a position output are built around it. (runtime/frames.py builds the centroid of a
    cloud with no real point from all its points, so the mask never empties it.)"""
    pos, mask = call.arg(0), call.arg(1, "mask")
    want = call.group.normalize(Translated(len(pos.shape) - 1))
    if (call.group.rotates or call.group.translates) and pos.fact != want:
        return call.broken(f"{call.spelled}'s position argument is {what(pos)}, not a position",
                           "pass the raw positions (an input `is position`); give a centred cloud or "
                           "other vectors the vector role")
    return _mask_refused(call, pos, mask) or reduced(call, pos, 1, True, "mean")


def _cloud(call: Call, pos: Operand, centered: Fact, mask) -> Fact | None:
    """What a frame built from this cloud is: invariant under S(N), a FrameBasis under rotations."""
    refused = _mask_refused(call, pos, mask)
    if refused or isinstance(centered, Broken):
        return refused or centered
    if isinstance(centered, Permuted) and centered.axes == (1,) and not centered.by:
        return Invariant()  # the covariance sums over the set axis
    if centered == Rotated(len(pos.shape) - 1):
        return FrameBasis(call.node)
    return call.broken(f"{call.spelled} of {what(pos)}", "build frames from positions [B, N, 3]")


def _unique(call: Call, pos: Operand) -> Broken | None:
    """Frames are unique, and their averages exact, only for clouds in general position: distinct
    covariance eigenvalues and, for one canonical frame, third moments that do not vanish. Almost
    every cloud given as input is (`invc verify` measures how far from a tie); a computed one can
    miss it by construction, for every input: a layernorm puts its points on a circle, a mean
    collapses them. Then a tie is settled by rounding: a rotation meets a fixed fallback axis, a
    permutation reorders the sums that pick a sign. So a computed cloud is refused wherever a tie
    would break the claim: under rotations, and for canonical frames under any group."""
    canonical = call.arg(4, "canonical")
    if pos.is_input or not (canonical or call.group.rotates):
        return None
    mode = "a canonical frame" if canonical else "frames"
    return call.broken(f"{call.spelled} builds {mode} from a computed cloud, which may be degenerate "
                       "(tied eigenvalues or a vanishing third moment) for every input",
                       "build the frames from an input `is position` and pass computed points with "
                       "the vector or scalar role" + ("" if call.group.rotates else "; or use all frames"))


@rule("frame_basis")
def frame_basis(call: Call) -> Fact:
    pos, centroid, mask = call.arg(0), call.arg(1, "centroid"), call.arg(2, "mask")
    refused = _unique(call, pos)
    if refused:
        return refused
    fact = _cloud(call, pos, _relative(call, pos, centroid), mask)
    if isinstance(fact, FrameBasis) and call.arg(3, "proper") and call.group.reflects:
        return call.broken(f"{call.spelled} with proper (det +1) frames",
                           f"the reflections of {call.group} need all 8 sign patterns: group=\"E(3)\" or "
                           "\"O(3)\"; or declare SE(3)/SO(3)")
    return fact


@rule("frame_conditioning")
def frame_conditioning(call: Call) -> Fact:
    pos, mask = call.arg(0), call.arg(1, "mask")
    centered = Rotated(pos.fact.axis) if isinstance(pos.fact, Translated) else pos.fact
    fact = _cloud(call, pos, centered, mask)
    return Invariant() if isinstance(fact, FrameBasis) else fact  # eigen-gaps do not turn


@rule("frame_in")
def frame_in(call: Call) -> Fact:
    x, basis, centroid = call.arg(0), call.arg(1, "basis"), call.arg(2, "centroid")
    rel = _relative(call, x, centroid)
    if isinstance(rel, Broken):
        return rel
    if isinstance(basis.fact, FrameBasis):
        if rel == Rotated(len(x.shape) - 1):
            return Permuted((0,), basis.fact.node)  # canonical coordinates, frames relabeled
        return call.broken(f"frame_in of {what(x)}", FRAMES_HINT)
    rel = call.group.normalize(rel)  # without rotations a difference of positions is invariant
    if isinstance(rel, COORDINATES):  # coordinates in a frame that does not move with them
        return call.broken(f"frame_in of {what(x)} in a fixed frame", FRAMES_HINT)
    return _unfolded(call, rel)


def _unfolded(call: Call, fact: Fact) -> Fact:
    """Frames fold into axis 0; a fact on the other axes keeps its place."""
    if 0 in axes_of(fact):
        return call.broken(f"{call.spelled} of a tensor permuted along its batch axis")
    return fact


@rule("frame_tile", sees_invariants=True)
def frame_tile(call: Call) -> Fact:
    x = call.arg(0)
    if isinstance(x.fact, Invariant):
        return Permuted((0,), "*") if call.group.rotates else x.fact
    if isinstance(x.fact, Permuted) and not x.fact.by:
        return _unfolded(call, x.fact)
    return call.broken(f"frame_tile of {what(x)}", FRAMES_HINT)


OUT_KINDS = {"invariant": Invariant, "vector": Rotated, "position": Translated}


@rule("frame_out")
def frame_out(call: Call) -> Fact:
    y, basis, centroid, kind = call.arg(0), call.arg(1, "basis"), call.arg(2, "centroid"), call.arg(3, "kind")
    last = len(call.shape) - 1
    moving = centroid is not None and not isinstance(centroid.fact, Invariant)
    if not isinstance(basis.fact, FrameBasis):  # S(N) or T(3): each row's frames do not move
        if kind == "position" and moving:  # T(3): F·y + c moves with c when y does not move
            return Translated(last) if isinstance(y.fact, Invariant) else call.broken(
                f"frame_out of {what(y)} around a moving centroid", FRAMES_HINT)
        return _unfolded(call, y.fact)
    follows = isinstance(y.fact, Permuted) and y.fact.axes == (0,) and y.fact.by in (basis.fact.node, "*")
    if not follows:
        return call.broken(f"frame_out of {what(y)} that does not follow the frames of {basis.fact.node}",
                           "compute it from frame_in and frame_tile outputs with per-row ops")
    if kind == "position" and not (centroid is not None and isinstance(centroid.fact, (Translated, Rotated))):
        return call.broken("frame_out of a position without the centroid", "pass the cloud's centroid")
    return OUT_KINDS[kind](last) if kind != "invariant" else Invariant()
