"""Where a measured symmetry breaks: the first op of the lowered graph whose output stops transforming.

When `invc verify` measures a claim failing in float64, the graph runs node by node on the sampled
inputs x and on g·x, for the element g that failed worst. Each node's pair of outputs is tested
against the actions the group may take on a tensor of its shape, found from the shape and the
values alone, never from the symmetry rules (so a wrong rule cannot hide its own break):

    S(N)   invariant; permuted along any set of its axes of N's size; integer ids relabelled
    E(3)   invariant; rotated like a vector (or moved like a position) along an axis of size 3;
           rotated like a rank-2 tensor on two such axes; vectors stacked along an axis of size 3k;
           any of these with one axis reordered (frame averaging's frames, which a rotation
           relabels, each cloud its own way)

A node transforms when one action holds within the float64 pass mark, at a scale that its inputs'
rounding cannot reach. Some correct nodes fit none: coordinate products v * w until a sum over the
coordinates makes them invariant, softmax-weighted positions until a sum makes a position. So
a break is traced back from the failing output: the nodes that fit no action and reach the output
through nodes that fit none form a region, and its first node in program order whose every tensor
input transforms is the breaking op. A v * v that a sum makes invariant is outside every region;
one that reaches the output unsummed (the sum taken over the wrong axis, or a linear map over
its coordinates) starts one, and the report says which sum it lacked.

Two cases name an op that transforms. An output that follows an action other than the claimed one
(permuted where invariant is claimed) is broken by the op that makes it. A value that transforms,
but not as the op reading it needs (a dropped centering leaves a position where a vector was
meant), breaks where it is misused: the first op that reads it and stops transforming, whose
inputs' actions the report prints to say why.
"""
from __future__ import annotations

import itertools
import linecache
import math
from dataclasses import dataclass

import torch
import torch.fx as fx

from compiler.measure import TOLERANCE, noise_floor, relative_error

PASS_MARK = TOLERANCE[torch.float64]


@dataclass(frozen=True)
class Break:
    """The first op whose output departs from every action of `group` (or from the claimed one)."""
    outputs: str     # the failing outputs, "x2 under E(3)"
    node: str        # the fx node
    pos: str         # FILE:LINE:COLUMN of the op: the spec, or the captured model's Python source
    op: str          # "aten.index_select.default in net.conv (GINConv)", or the spec's graph op
    departs: str     # what it departs from
    error: float     # its distance to the nearest action
    reads: str       # how its tensor inputs transform

    @property
    def file(self) -> str:
        return self.pos.rsplit(":", 2)[0]

    @property
    def line(self) -> int:
        return int(self.pos.rsplit(":", 2)[1])

    def __str__(self) -> str:
        source = linecache.getline(self.file, self.line).rstrip()
        return "\n".join([f"first breaking op: {self.file}:{self.line} ({self.op}): {self.departs}, error {self.error:.2e}",
                          *([f"  {self.line:>5} | {source}"] if source else []),
                          f"  ({self.outputs}; it reads {self.reads})"])


def localize(gm: fx.GraphModule, inputs: list, in_facts: list, g, group, output: str, claim) -> Break:
    """The breaking op of claim `claim` on output `output`, measured with group element `g` (a
    compiler.verify.Element) on float64 `inputs`."""
    acted = [g.act(f, x) for f, x in zip(in_facts, inputs)]
    base, moved = _values(gm, inputs), _values(gm, acted)
    floor = noise_floor(acted, torch.float64)
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    fits = {p: Fit(True, str(f), 0.0) for p, f in zip(placeholders, in_facts)}  # acted on as declared
    fits.update((n, Fit(True, "a weight", 0.0)) for n in gm.graph.nodes if n.op == "get_attr")
    with torch.no_grad():
        for node in gm.graph.nodes:
            if node not in fits and isinstance(base.get(node), torch.Tensor):
                fits[node] = _fit(_actions(group, g, base[node], moved[node]), _floor(node, moved, floor))
    out = gm.graph.output_node()
    result = out.args[0]
    node = result[out.meta["names"].index(output)] if isinstance(result, (tuple, list)) else result
    failed = f"{output} under {group}"
    if fits[node].ok:  # it transforms, but not as claimed: the op that made it broke the claim
        error = relative_error(g.act(claim, base[node]), moved[node], floor)
        return _break(node, fits, failed, f"its output is {fits[node].action}, claimed {claim}", error)
    root = min(_region(node, fits), key=list(gm.graph.nodes).index)
    nearest = _fit(_plain(group, g, base[root], moved[root]), _floor(root, moved, floor))
    summed = _fit(_summed(group, g, base[root], moved[root]), _floor(root, moved, floor))
    departs = f"its output {_type(root, base[root])} fits no action of {group}" + (
        f": it is {summed.action}, a sum that no later op takes" if summed.ok  # coordinate products, say
        else f" (nearest: {nearest.action})")
    return _break(root, fits, failed, departs, nearest.error)


def _floor(node: fx.Node, moved: dict, floor: float) -> float:
    """The output size below which rounding may fail the pass mark: set by the model's inputs, or by
    the node's own when larger (x_i - x_j of large positions loses digits that no symmetry explains)."""
    args = [moved[a] for a in node.all_input_nodes if isinstance(moved.get(a), torch.Tensor)]
    return max(floor, noise_floor(args, moved[node].dtype))


@dataclass(frozen=True)
class Fit:
    ok: bool       # within the pass mark
    action: str    # the action it fits, or else the nearest
    error: float


def _values(gm: fx.GraphModule, inputs: list) -> dict:
    """Every node's output, running the graph one node at a time."""
    values = {}

    class Recorder(fx.Interpreter):
        def run_node(self, n):
            values[n] = super().run_node(n)
            return values[n]

    with torch.no_grad():
        Recorder(gm).run(*inputs)
    return values


def _region(node: fx.Node, fits: dict) -> list:
    """The nodes that fit no action and reach `node` through nodes that fit none, whose tensor inputs all fit."""
    def broken(n):
        return n in fits and not fits[n].ok
    region, todo = set(), [node]
    while todo:
        n = todo.pop()
        if n not in region:
            region.add(n)
            todo += [a for a in n.all_input_nodes if broken(a)]
    return [n for n in region if not any(broken(a) for a in n.all_input_nodes)]


def _fit(actions, floor: float) -> Fit:
    """The first of the (label, want, got) `actions` that holds within the pass mark, else the nearest
    (a NaN is never near)."""
    nearest = Fit(False, "", float("inf"))
    for action, want, got in actions:
        error = relative_error(want, got, floor)
        if error <= PASS_MARK:
            return Fit(True, action, error)
        if error < nearest.error or not nearest.action:
            nearest = Fit(False, action, error)
    return nearest


def _actions(group, g, y: torch.Tensor, y_moved: torch.Tensor):
    """(label, want, got) for each action the group may take on `y`: want is the action applied to
    y, got the matching view of y_moved. The plain ones come first."""
    from dsl.groups import Euclidean
    yield from _plain(group, g, y, y_moved)
    if isinstance(group, Euclidean) and y.is_floating_point():
        yield from _stacked(group, g, y, y_moved)
        plain = _euclidean(group, g, y)
        for k in range(y.dim()):  # a rotation relabels the frames of frame averaging
            for label, want in plain:
                yield from _relabelled(k, label, want, y_moved)


def _plain(group, g, y: torch.Tensor, y_moved: torch.Tensor):
    """Invariant, and how the group moves a whole tensor: along its axes of N's size, or its size-3 axes."""
    from dsl.groups import Permutations
    if isinstance(group, Permutations):
        yield "invariant", y, y_moved
        yield from _permutations(group, g, y, y_moved)
    elif not y.is_floating_point():
        yield "invariant", y, y_moved
    else:
        yield from ((label, want, y_moved) for label, want in _euclidean(group, g, y))


def _summed(group, g, y: torch.Tensor, y_moved: torch.Tensor):
    """The actions a sum along one axis would give: coordinate products v * w sum to an invariant,
    softmax-weighted positions to a position. Such a tensor transforms only through that sum."""
    from dsl.groups import Permutations
    if isinstance(group, Permutations) or not y.is_floating_point():
        return
    for axis in range(y.dim()):
        for label, want in _euclidean(group, g, y.sum(axis)):
            yield f"{label} once summed along axis {axis}", want, y_moved.sum(axis)


def _permutations(group, g, y, y_moved):
    from dsl.groups import Permuted, Relabeled
    axes = [k for k, size in enumerate(y.shape) if size == len(g.perm)]
    subsets = [s for r in range(1, len(axes) + 1) for s in itertools.combinations(axes, r)]
    for s in subsets:
        yield str(Permuted(s)), g.act(Permuted(s), y), y_moved
    if not y.is_floating_point() and y.dtype != torch.bool and y.numel() and 0 <= y.min() and y.max() < len(g.perm):
        for s in [(), *subsets]:
            yield Relabeled(s, group.dim).describe(tuple(y.shape)), g.act(Relabeled(s), y), y_moved


def _euclidean(group, g, y) -> list:
    """(label, g applied to y) for invariant and each way y can rotate or move on its size-3 axes."""
    from dsl.groups import Rotated, Translated
    threes = [k for k, size in enumerate(y.shape) if size == 3]
    out = [("invariant", y)]
    for k in threes:
        out += [(str(f), g.act(f, y)) for f in [Rotated(k), *([Translated(k)] if group.translates else [])]]
    out += [(f"rotated like a rank-2 tensor on axes {j}, {k}", g.act(Rotated(j), g.act(Rotated(k), y)))
            for j, k in itertools.combinations(threes, 2)]  # R y Rᵀ: an outer product, a covariance
    return out


def _stacked(group, g, y, y_moved):
    """Vectors (or positions) laid end to end along one axis, as a concat along the coordinates makes them."""
    from dsl.groups import Rotated, Translated
    for k, size in enumerate(y.shape):
        if size % 3 == 0 and size > 3:
            split, split_moved = y.unflatten(k, (size // 3, 3)), y_moved.unflatten(k, (size // 3, 3))
            for fact in [Rotated(k + 1), *([Translated(k + 1)] if group.translates else [])]:
                yield (f"{'positions' if isinstance(fact, Translated) else 'vectors'} stacked along axis {k}",
                       g.act(fact, split), split_moved)


def _relabelled(axis: int, label: str, want: torch.Tensor, got: torch.Tensor):
    """`want` with its entries along `axis` reordered to match `got` (one order per index of the axes
    before it: each cloud's frames are relabelled its own way). Ties, as the frames of an empty cloud
    make, may match one entry twice."""
    size = want.shape[axis]
    if size < 2 or not want.numel():
        return
    shape = (-1, size, math.prod(want.shape[axis + 1:]))
    rows, rows_got = want.reshape(shape), got.reshape(shape)
    match = torch.cdist(rows_got, rows).argmin(-1)
    reordered = rows.gather(1, match[..., None].expand(-1, -1, rows.shape[-1]))
    yield f"{label}, reordered along axis {axis} (as a rotation relabels frames)", reordered, rows_got


def _type(node: fx.Node, y: torch.Tensor) -> str:
    return f"{node.meta.get('dtype', '')}[{', '.join(map(str, y.shape))}]"


def _break(node: fx.Node, fits: dict, failed: str, departs: str, error: float) -> Break:
    reads = [f"{a.name} ({fits[a].action if fits[a].ok else 'fits no action'})"
             for a in node.all_input_nodes if a in fits and a.op != "get_attr"]
    op = node.meta.get("origin") or getattr(node.target, "__name__", str(node.target))
    return Break(failed, node.name, node.meta.get("pos", "?:0:0"), op, departs, error, ", ".join(reads) or "no tensor")
