"""The soundness harness for captured torch models: random torch programs written as Python source,
each beside a spec that calls it (`def net = torch("drawnS:make")`) with declared roles, a symmetry
and random claims. invc captures each one (torch.export, then the ATen lifts of capture/), proves or
refuses its claims, and every proved claim is measured in float64 by tests/soundness.py's
measurement, code that shares nothing with the rules or the lifts: on the lowered graph with redrawn
weights, and on the torch model itself (a proof is about the user's model: a lift that drops what the
model does shows there). A claim proved that the numbers contradict is a false proof; it is shrunk
and printed with its program. A crash (any exception but a SpecError) and a checked program whose
lowered graph differs from the model (a lift bug) are findings too.

    python benchmarks/capture_soundness.py --count 1000     # the full run
    tests/test_capture_soundness.py                          # the CI-sized run

Programs are of three kinds:
- drawn: a forward body of 2-7 statements over the ops users write (Linear, Conv1d with kernel 1,
  activations, arithmetic, x**2, reductions with keepdim, cat, view/reshape/flatten/unsqueeze/
  permute/transpose, repeat, gathers by an edge list and scatters into zeros, centring, norms, cross
  and einsum products, gates, layer and batch norm, softmax, ones_like, select/unbind/slices, expand,
  softmax-weighted sums, edges weighted by comparisons of their ids, changes in place through views)
  on inputs laid out as users lay them out ([N, 3], [B, N, 3], [B, 3, N], static sets of 1-3
  points), with roles position, vector, invariant and index(N); edge lists as given, with self loops
  removed by a mask, or appended (by arange, by PyG's add_self_loops, or, near misses, other
  integers);
- PyG layers (GIN, SAGE and GraphConv with every aggregation, EdgeConv, LEConv, ResGatedGraphConv,
  GAT, GATv2, TransformerConv, GCN, PointNetConv) among those ops, when torch_geometric is installed;
- mutants: correct layers (EGNN over an edge list, a dense EGNN, PointNet, a centred cloud, GIN with
  a pool) claiming what they are, with a source-level change: a reduction's axis, a dropped centring,
  sum swapped for max, a fixed element, a coordinate-dependent term, positions concatenated with
  features, a difference made a sum, a transpose made a reshape, the edge ids swapped.
Claims are drawn (invariant, position, vector, or none: then the role the checker's facts match is
measured), so many are false, and a drawn program is mutated too, a third of the time.
"""
from __future__ import annotations

import importlib
import importlib.util
import random
import re
import sys
import tempfile
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from compiler.lower import lower
from compiler.verify import redrawn
from dsl.errors import SpecError
from dsl.groups import Broken, Invariant, Permutations, Permuted, Rotated, Translated
from dsl.program import load
from dsl.symmetry import verdicts
from ops.registry import check
from soundness import (INFERRED, SIZES, TOL, Outcome, Program, Tensor, _axis, _broadcastable, _inferred_claims,
                       _joined, _prints, _record, _type, measure, rounding_only)

PYG = importlib.util.find_spec("torch_geometric") is not None
PYG_IMPORTS = ["import torch_geometric.nn as gnn", "from torch_geometric.utils import add_self_loops, scatter"]
EUCLIDEAN = ("E(3)", "O(3)", "SO(3)", "SE(3)", "T(3)")
FOLDER = tempfile.TemporaryDirectory(prefix="invc-capture-")  # the drawn modules and specs


@dataclass
class Drawn:
    """A torch program being drawn (its layers, forward's statements, the tensors in scope) and the spec
    that calls it: the groups, the inputs with their roles (the model's arguments, in order) and the
    outputs with their claims (what forward returns)."""
    rng: random.Random
    kind: str
    groups: list = field(default_factory=list)
    inputs: list = field(default_factory=list)    # (Tensor, role)
    layers: list = field(default_factory=list)    # (attribute, constructor source)
    lines: list = field(default_factory=list)     # forward's statements
    scope: list = field(default_factory=list)     # float Tensors forward may read
    edges: tuple = ()                              # the edge list's two id rows, i64 Tensors
    outputs: list = field(default_factory=list)   # (Tensor, claim or None)
    mutation: str = ""                             # what a mutation changed, for the report
    count: int = 0

    def fresh(self) -> str:
        self.count += 1
        return f"t{self.count}"

    def bind(self, expr: str, dims: tuple) -> Tensor:
        t = Tensor(self.fresh(), tuple(dims))
        self.lines.append(f"{t.name} = {expr}")
        if t.dims:  # a 0-d tensor (a whole sum) ends its chain: the draws read tensors with axes
            self.scope.append(t)
        return t

    def layer(self, constructor: str) -> str:
        name = f"m{len(self.layers)}"
        self.layers.append((name, constructor))
        return f"self.{name}"

    def input(self, name: str, dims: tuple, role: str | None = None, dtype: str = "f") -> Tensor:
        t = Tensor(name, tuple(dims), dtype)
        self.inputs.append((t, role))
        if dtype == "f":
            self.scope.append(t)
        return t

    def floats(self, where=lambda t: True) -> list:
        return [t for t in self.scope if where(t)]

    def pick(self, where=lambda t: True) -> Tensor | None:
        """Recent tensors first (programs grow deep), and often one with coordinates last."""
        found = self.floats(where)
        if not found:
            return None
        coordinates = [t for t in found if t.dims[-1:] == (3,)]
        if coordinates and self.rng.random() < 0.4:
            return self.rng.choice(coordinates)
        return self.rng.choice(found[-3:] if self.rng.random() < 0.6 else found)

    def source(self) -> str:
        init = [f"        self.{name} = {expr}" for name, expr in self.layers] or ["        pass"]
        body = [f"        {line}" for line in self.lines]
        args = ", ".join(t.name for t, _ in self.inputs)
        returns = ", ".join(t.name for t, _ in self.outputs)
        return "\n".join([
            "import torch", "import torch.nn.functional as F", "from torch import nn",
            *(PYG_IMPORTS if PYG else []),
            "", "", "class Net(nn.Module):", "    def __init__(self):", "        super().__init__()", *init, "",
            f"    def forward(self, {args}):", *body, f"        return {returns}", "", "",
            "def make():", "    torch.manual_seed(0)", "    return Net()", ""])

    def spec(self, module: str) -> str:
        names = [f"o{k}" for k in range(len(self.outputs))]
        return "\n".join([
            f'def net = torch("{module}:make")', "", "model drawn() {", f"  symmetry {', '.join(self.groups)}",
            *(f"  input {t.name}: {_type(t)}" + (f" is {role}" if role else "") for t, role in self.inputs),
            f"  {', '.join(names)} = net({', '.join(t.name for t, _ in self.inputs)})",
            *(f"  output {n}" + (f" is {claim}" if claim else "") for n, (_, claim) in zip(names, self.outputs)),
            "}", ""])


def _static(d) -> bool:
    return isinstance(d, int)


def _product(a, b):
    return a * b if _static(a) and _static(b) else f"{a}*{b}"


def _removed(dims: tuple, k: int, keep: bool) -> tuple:
    k %= len(dims)
    return dims[:k] + ((1,) if keep else ()) + dims[k + 1:]


# -- the op vocabulary: each draws one statement of forward, or returns None when nothing fits ----

def linear(d):
    x = d.pick(lambda t: _static(t.dims[-1]))
    if x:
        k = d.rng.choice([1, 2, 3, 4])
        return d.bind(f"{d.layer(f'nn.Linear({x.dims[-1]}, {k}, bias={d.rng.random() < 0.7})')}({x.name})",
                      x.dims[:-1] + (k,))


def mlp(d):
    x = d.pick(lambda t: _static(t.dims[-1]))
    if x:
        hidden, k, act = d.rng.choice([4, 8]), d.rng.choice([1, 3, 4]), d.rng.choice(["SiLU", "ReLU", "Tanh"])
        m = d.layer(f"nn.Sequential(nn.Linear({x.dims[-1]}, {hidden}), nn.{act}(), nn.Linear({hidden}, {k}))")
        return d.bind(f"{m}({x.name})", x.dims[:-1] + (k,))


def conv(d):
    """A kernel-1 Conv1d over [B, C, L] (PointNet's shared MLP), sometimes with batch norm."""
    x = d.pick(lambda t: len(t.dims) == 3 and _static(t.dims[1]))
    if x:
        k = d.rng.choice([2, 3, 4])
        y = f"{d.layer(f'nn.Conv1d({x.dims[1]}, {k}, 1)')}({x.name})"
        if d.rng.random() < 0.4:
            y = f"{d.layer(f'nn.BatchNorm1d({k})')}({y})"
        return d.bind(y, (x.dims[0], k, x.dims[2]))


def norm(d):
    """Layer norm over the last axis, or batch norm (eval) over axis 1."""
    x = d.pick(lambda t: _static(t.dims[-1]) or (len(t.dims) in (2, 3) and _static(t.dims[1])))
    if not x:
        return None
    if len(x.dims) in (2, 3) and _static(x.dims[1]) and d.rng.random() < 0.4:
        return d.bind(f"{d.layer(f'nn.BatchNorm1d({x.dims[1]})')}({x.name})", x.dims)
    if _static(x.dims[-1]):
        n = x.dims[-1]
        form = f"{d.layer(f'nn.LayerNorm({n})')}({{}})" if d.rng.random() < 0.6 else f"F.layer_norm({{}}, ({n},))"
        return d.bind(form.format(x.name), x.dims)


ACTIVATIONS = ("torch.relu({})", "F.silu({})", "torch.tanh({})", "torch.sigmoid({})", "F.gelu({})",
               "F.leaky_relu({}, 0.1)", "torch.exp(-{0} * {0})", "{}.clamp(min=-1.0, max=1.0)", "{}.abs()", "-{}",
               "({0} * {0} + 1.0) ** -0.5", "{}.clamp_min(0.5)", "torch.where({0} > 0, {0}, 0.1 * {0})",
               "{0}.masked_fill(~({0} > 1.0), 0.0)", "torch.where({0} < 0, torch.zeros_like({0}), {0})")


def activation(d):
    x = d.pick()
    if x:
        return d.bind(d.rng.choice(ACTIVATIONS).format(x.name), x.dims)


def arithmetic(d):
    """x op y for a y that broadcasts with x (x itself included), or x with a constant; a divisor is
    kept away from 0, so rounding stays small."""
    x = d.pick()
    if not x:
        return None
    if d.rng.random() < 0.25:
        form = d.rng.choice(["{} * 2.0", "{} + 1.0", "{} ** 2", "1.0 - {}", "{} / 3.0"])
        return d.bind(form.format(x.name), x.dims)
    y = d.rng.choice(d.floats(lambda t: _broadcastable(t.dims, x.dims)))
    form = d.rng.choice(["{} + {}", "{} - {}", "{} * {}", "{} / (torch.sigmoid({}) + 0.5)"])
    return d.bind(form.format(x.name, y.name), _joined(x.dims, y.dims))


CASTS = ("{0}.float()", "{0}.to(torch.float32)", "{0}.to({0}.dtype)", "({0} > 0.5).float() * {0}",
         "({0} > 0).to({0}.dtype)", "{0}.long().float()", "{0}.int().to(torch.float32) + {0}")


def cast(d):
    """Casts as users write them: to the float type it has, masks as floats, floats rounded to integers
    and back (which no coordinate survives), or node ids read as numbers (a near miss: they move with
    the relabelling)."""
    x = d.pick()
    if not x:
        return None
    if d.edges and d.rng.random() < 0.3:
        ids = d.rng.choice(d.edges).name
        return d.bind(f"{x.name} * {ids}.{d.rng.choice(['float()', 'to(torch.float32)'])}.mean()", x.dims)
    return d.bind(d.rng.choice(CASTS).format(x.name), x.dims)


def reduce(d):
    x = d.pick(lambda t: len(t.dims) >= 2)
    if not x:
        return None
    k, keep = _axis(d.rng, x), d.rng.random() < 0.5
    how = d.rng.choice(["sum", "mean", "amax", "amin", "max", "torch.sum"])
    expr = {"max": f"{x.name}.max({k}, keepdim={keep})[0]",
            "torch.sum": f"torch.sum({x.name}, dim={k}, keepdim={keep})"}.get(how)
    expr = expr or f"{x.name}.{how}({k}, keepdim={keep})"
    return d.bind(expr, _removed(x.dims, k, keep))


def cat(d):
    """Two tensors joined along an axis where only they differ (mostly the last: features with more
    features, or with coordinates)."""
    x = d.pick()
    if not x:
        return None
    k = -1 if d.rng.random() < 0.7 else _axis(d.rng, x)
    same = lambda t: len(t.dims) == len(x.dims) and _removed(t.dims, k, True) == _removed(x.dims, k, True)
    y = d.rng.choice(d.floats(same))
    a, b = x.dims[k], y.dims[k]
    joined = a + b if _static(a) and _static(b) else f"({a}+{b})"
    dims = list(x.dims)
    dims[k] = joined
    return d.bind(f"torch.cat([{x.name}, {y.name}], dim={k})", dims)


def reshape(d):
    x = d.pick()
    if not x:
        return None
    rank, form = len(x.dims), d.rng.choice(["unsqueeze", "transpose", "permute", "flatten", "view", "squeeze",
                                            "unflatten"])
    if form == "unsqueeze":
        k = d.rng.randrange(rank + 1)
        return d.bind(f"{x.name}.unsqueeze({k})", x.dims[:k] + (1,) + x.dims[k:])
    if form == "squeeze" and 1 in x.dims:
        k = x.dims.index(1)
        return d.bind(f"{x.name}.squeeze({k})", x.dims[:k] + x.dims[k + 1:])
    if rank < 2:
        return None
    if form == "transpose":
        a, b = d.rng.sample(range(rank), 2)
        dims = list(x.dims)
        dims[a], dims[b] = dims[b], dims[a]
        return d.bind(f"{x.name}.transpose({a}, {b})", dims)
    if form == "permute":
        perm = d.rng.sample(range(rank), rank)
        return d.bind(f"{x.name}.permute({', '.join(map(str, perm))})", [x.dims[k] for k in perm])
    if form == "flatten":
        k = d.rng.randrange(rank - 1)
        return d.bind(f"{x.name}.flatten({k}, {k + 1})", x.dims[:k] + (_product(*x.dims[k:k + 2]),) + x.dims[k + 2:])
    if form == "view":  # rows of features, or everything but the first axis
        if d.rng.random() < 0.5 and _static(x.dims[-1]):
            lead = x.dims[0]
            for dim in x.dims[1:-1]:
                lead = _product(lead, dim)
            return d.bind(f"{x.name}.reshape(-1, {x.dims[-1]})", (lead, x.dims[-1]))
        rest = x.dims[1]
        for dim in x.dims[2:]:
            rest = _product(rest, dim)
        return d.bind(f"{x.name}.reshape({x.name}.size(0), -1)", (x.dims[0], rest))
    if form == "unflatten" and x.dims[-1] in (4, 6):
        split = (2, x.dims[-1] // 2) if d.rng.random() < 0.5 else (x.dims[-1] // 2, 2)
        return d.bind(f"{x.name}.unflatten(-1, {split})", x.dims[:-1] + split)


def select(d):
    """One element along an axis (select, indexing, unbind, a slice of length 1), or all but the first."""
    x = d.pick(lambda t: len(t.dims) >= 2)
    if not x:
        return None
    k = d.rng.randrange(len(x.dims))
    i = d.rng.randrange(x.dims[k]) if _static(x.dims[k]) else 0
    form = d.rng.choice(["select", "index", "unbind", "slice", "rest"])
    if form == "rest" and x.dims[k] != 1:
        rest = x.dims[k] - 1 if _static(x.dims[k]) else f"{x.dims[k]}-1"
        return d.bind(f"{x.name}[{':, ' * k}1:]", x.dims[:k] + (rest,) + x.dims[k + 1:])
    if form == "unbind" and _static(x.dims[k]):
        return d.bind(f"{x.name}.unbind({k})[{i}]", _removed(x.dims, k, False))
    if form == "slice":
        return d.bind(f"{x.name}.narrow({k}, {i}, 1)" if k else f"{x.name}[{i}:{i + 1}]", _removed(x.dims, k, True))
    if form == "index":
        return d.bind(f"{x.name}[{':, ' * k}{i}]", _removed(x.dims, k, False))
    return d.bind(f"{x.name}.select({k}, {i})", _removed(x.dims, k, False))


def repeat(d):
    """Copies laid end to end along one axis."""
    x = d.pick()
    if x:
        k = d.rng.randrange(len(x.dims))
        reps = [1] * len(x.dims)
        reps[k] = 2
        dims = x.dims[:k] + (_product(2, x.dims[k]),) + x.dims[k + 1:]
        return d.bind(f"{x.name}.repeat({', '.join(map(str, reps))})", dims)


def in_place(d):
    """A statement that changes a tensor in place, often through a view of it (capped, scaled, zeroed
    or overwritten): later statements read the changed tensor. A cap at 2.5 changes few entries, so
    examples may miss it."""
    x = d.pick(lambda t: t.name.startswith("t"))  # a tensor forward made, not an input
    if not x:
        return None
    k, cap = d.rng.randrange(len(x.dims)), d.rng.choice(["0.0", "2.5"])
    first = f"{x.name}[{':, ' * k}0]"
    d.lines.append(d.rng.choice([f"{first}.clamp_(max={cap})", f"{x.name}.narrow({k}, 0, 1).mul_(2.0)",
                                 f"{first} = {cap}", f"{x.name}[{x.name} > {cap}] = {cap}",
                                 f"{x.name}.clamp_(max={cap})"]))
    return x


def attention(d):
    """torch's own attention over an axis of a [B, L, F] tensor, batch first or not (then L is the
    first axis): seq-first inside, it merges the sequence with the batch and splits them back."""
    x = d.pick(lambda t: len(t.dims) == 3 and _static(t.dims[-1]))
    if x:
        first = d.rng.random() < 0.7
        heads = d.rng.choice([h for h in (1, 2, 3) if x.dims[-1] % h == 0])
        if d.rng.random() < 0.5:
            m = d.layer(f"nn.MultiheadAttention({x.dims[-1]}, {heads}, batch_first={first})")
            return d.bind(f"{m}({x.name}, {x.name}, {x.name}, need_weights=False)[0]", x.dims)
        m = d.layer(f"nn.TransformerEncoderLayer({x.dims[-1]}, {heads}, dim_feedforward=8, dropout=0.0, "
                    f"batch_first={first})")
        return d.bind(f"{m}({x.name})", x.dims)


def softmax(d):
    x = d.pick()
    if x:
        k = _axis(d.rng, x)
        form = d.rng.choice(["torch.softmax({}, dim={})", "F.softmax({}, dim={})", "{}.softmax({})"])
        return d.bind(form.format(x.name, k), x.dims)


def ones(d):
    x = d.pick()
    if x:
        form = d.rng.choice(["torch.ones_like({})", "torch.full_like({}, 0.5)", "torch.ones_like({0}) * {0}.sum()"])
        return d.bind(form.format(x.name), x.dims)


def expand(d):
    """A tensor with a size-1 axis copied along it to another tensor's size."""
    x = d.pick(lambda t: 1 in t.dims)
    ys = x and d.floats(lambda t: len(t.dims) == len(x.dims) and _broadcastable(t.dims, x.dims) and t.dims != x.dims)
    if not ys:
        return None
    y = d.rng.choice(ys)
    if d.rng.random() < 0.5:
        return d.bind(f"{x.name}.expand_as({y.name})", _joined(x.dims, y.dims))
    sizes = ["-1" if a == b else (str(b) if _static(b) else f"{y.name}.size({k})")
             for k, (a, b) in enumerate(zip(x.dims, y.dims))]
    return d.bind(f"{x.name}.expand({', '.join(sizes)})", _joined(x.dims, y.dims))


def matmul(d):
    """Pairs by x xᵀ, or (torch's matrix-vector product) each row against a 1-D vector: a fixed one, or
    one the rows make (a sum over the set, or over the coordinates, which a near miss mixes)."""
    x = d.pick(lambda t: len(t.dims) >= 2)
    if x and _static(x.dims[-1]) and d.rng.random() < 0.4:
        width = x.dims[-1]
        vector = d.rng.choice([f"torch.linspace(-1.0, 1.0, {width})", f"{x.name}.reshape(-1, {width}).sum(0)"])
        return d.bind(f"{x.name} @ {vector}", x.dims[:-1])
    if x:
        return d.bind(f"{x.name} @ {x.name}.transpose(-1, -2)", x.dims[:-1] + (x.dims[-2],))


# -- motifs that carry a symmetry (and their near misses) ---------------------------------------

def centre(d):
    """A cloud minus its centroid: along the set axis, or (a near miss) another."""
    x = d.pick(lambda t: len(t.dims) >= 2)
    if x:
        k = x.dims.index("N") if "N" in x.dims and d.rng.random() < 0.8 else _axis(d.rng, x)
        form = d.rng.choice(["{0} - {0}.mean({1}, keepdim=True)", "{0} - torch.mean({0}, dim={1}, keepdim=True)"])
        return d.bind(form.format(x.name, k), x.dims)


def norms(d):
    """A squared norm, a dot product or a norm over the coordinates."""
    x = d.pick(lambda t: t.dims[-1] == 3)
    if not x:
        return None
    y = d.rng.choice(d.floats(lambda t: t.dims == x.dims))
    keep = d.rng.random() < 0.6
    form = d.rng.choice(["({0} * {1}).sum(-1, keepdim={2})", "({0} ** 2).sum(dim=-1, keepdim={2})",
                         "{0}.norm(dim=-1, keepdim={2})", "torch.sum({0} * {1}, -1, keepdim={2})",
                         "torch.linalg.vector_norm({0}, dim=-1, keepdim={2})"])
    return d.bind(form.format(x.name, y.name, keep), _removed(x.dims, -1, keep))


def products(d):
    """Products of coordinate tensors users write: a cross product (a pseudovector, which a reflection
    flips), a dot product or a normalised vector by einsum or F.normalize."""
    x = d.pick(lambda t: t.dims[-1] == 3)
    if not x:
        return None
    y = d.rng.choice(d.floats(lambda t: t.dims == x.dims))
    form = d.rng.choice(["cross", "linalg.cross", "dot", "normalize", "mixed"])
    if form == "dot":
        return d.bind(f'torch.einsum("...i,...i->...", {x.name}, {y.name})', x.dims[:-1])
    if form == "mixed":  # a near miss: a fixed matrix on the coordinates
        return d.bind(f'torch.einsum("ij,...j->...i", torch.eye(3) + 0.5, {x.name})', x.dims)
    if form == "normalize":
        return d.bind(f"F.normalize({x.name}, dim=-1)", x.dims)
    return d.bind(f"torch.{form}({x.name}, {y.name}, dim=-1)", x.dims)


def pairs(d):
    """Differences of positions: along an edge list, or every pair of a dense set."""
    if d.edges:
        x = d.pick(lambda t: t.dims[0] == "N")
        if x:
            a, b = d.edges if d.rng.random() < 0.8 else d.edges[::-1]
            return d.bind(f"{x.name}[{a.name}] - {x.name}[{b.name}]", a.dims + x.dims[1:])
    x = d.pick(lambda t: len(t.dims) == 3 and t.dims[1] == "N")
    if x and d.rng.random() < 0.3:  # the distances of every pair, or a Gram matrix (einsum)
        form = d.rng.choice(["torch.cdist({0}, {0})", 'torch.einsum("bnd,bmd->bnm", {0}, {0})'])
        return d.bind(form.format(x.name), x.dims[:2] + ("N",))
    if x:
        return d.bind(f"{x.name}.unsqueeze(2) - {x.name}.unsqueeze(1)", x.dims[:2] + ("N",) + x.dims[2:])


def gate(d):
    """Coordinates scaled by a learned function of features of the same points (PaiNN's and EGNN's
    update): one value per vector keeps it a vector."""
    x = d.pick(lambda t: t.dims[-1] == 3 and len(t.dims) >= 2)
    hs = x and d.floats(lambda t: t.dims[:-1] == x.dims[:-1] and _static(t.dims[-1]) and t is not x)
    if hs:
        h = d.rng.choice(hs)
        return d.bind(f"{x.name} * {d.layer(f'nn.Linear({h.dims[-1]}, 1)')}({h.name})", x.dims)


def weighted(d):
    """Softmax weights along the set axis (a near miss: another axis) summing coordinates: a convex
    combination of positions is a position."""
    x = d.pick(lambda t: t.dims[-1] == 3 and len(t.dims) >= 2)
    hs = x and d.floats(lambda t: t.dims[:-1] == x.dims[:-1] and _static(t.dims[-1]))
    if not hs:
        return None
    h = d.rng.choice(hs)
    k = x.dims.index("N") if "N" in x.dims and d.rng.random() < 0.8 else d.rng.randrange(len(x.dims) - 1)
    w = f"torch.softmax({d.layer(f'nn.Linear({h.dims[-1]}, 1)')}({h.name}), dim={k})"
    return d.bind(f"({w} * {x.name}).sum({k})", _removed(x.dims, k, False))


def gather(d):
    """Node rows picked by an edge list's ids: x[row], index_select, or x[:, row] of a batch."""
    x = d.edges and d.pick(lambda t: t.dims[0] == "N" or t.dims[1:2] == ("N",))
    if not x:
        return None
    ids = d.rng.choice(d.edges)
    if x.dims[0] != "N":
        return d.bind(f"{x.name}[:, {ids.name}]", x.dims[:1] + ids.dims + x.dims[2:])
    form = d.rng.choice(["{}[{}]", "{}.index_select(0, {})", "torch.index_select({}, 0, {})"])
    return d.bind(form.format(x.name, ids.name), ids.dims + x.dims[1:])


def scatter(d):
    """Edge rows pooled into the nodes they name: index_add_, scatter_add_ and scatter_reduce_ into
    new_zeros, PyG's scatter, or a mean as a sum over a count (the EGNN idiom)."""
    m = d.edges and d.pick(lambda t: t.dims[:1] == d.edges[0].dims)
    nodes = next((t for t, _ in d.inputs if t.dims[0] == "N"), None)
    if not (m and nodes):
        return None
    ids, size = d.rng.choice(d.edges).name, f"{nodes.name}.size(0)"
    zeros, dims = f"{m.name}.new_zeros(({size}, *{m.name}.shape[1:]))", ("N",) + m.dims[1:]
    rank = len(m.dims)
    spread = ids if rank == 1 else f"{ids}.view(-1{', 1' * (rank - 1)}).expand_as({m.name})"
    form = d.rng.choice(["index_add", "scatter_add", "scatter_reduce", "pyg", "mean"])
    if form == "index_add":
        return d.bind(f"{zeros}.index_add_(0, {ids}, {m.name})", dims)
    if form == "scatter_add":
        return d.bind(f"{zeros}.scatter_add_(0, {spread}, {m.name})", dims)
    if form == "scatter_reduce":
        how, include = d.rng.choice(["sum", "mean", "amax", "amin"]), d.rng.random() < 0.3
        return d.bind(f'{zeros}.scatter_reduce_(0, {spread}, {m.name}, reduce="{how}", include_self={include})', dims)
    if form == "pyg" and PYG:
        how = d.rng.choice(["sum", "mean", "max", "min"])
        return d.bind(f'scatter({m.name}, {ids}, 0, dim_size={size}, reduce="{how}")', dims)
    total = d.bind(f"{zeros}.index_add_(0, {ids}, {m.name})", dims)
    count = d.bind(f"{zeros}.index_add_(0, {ids}, torch.ones_like({m.name}))", dims)
    return d.bind(f"{total.name} / {count.name}.clamp(min=1)", dims)


PYG_LAYERS = (  # (constructor, width out as a multiple of o)
    ("gnn.GINConv(nn.Sequential(nn.Linear({i}, {o}), nn.ReLU(), nn.Linear({o}, {o})), train_eps=True)", 1),
    ('gnn.SAGEConv({i}, {o}, aggr="{aggr}")', 1), ('gnn.GraphConv({i}, {o}, aggr="{aggr}")', 1),
    ('gnn.EdgeConv(nn.Sequential(nn.Linear(2 * {i}, {o}), nn.ReLU()), aggr="{aggr}")', 1),
    ("gnn.LEConv({i}, {o})", 1), ("gnn.ResGatedGraphConv({i}, {o})", 1), ("gnn.GATConv({i}, {o})", 1),
    ("gnn.GATConv({i}, {o}, heads=2)", 2), ("gnn.GATv2Conv({i}, {o}, heads=2, concat=False)", 1),
    ("gnn.TransformerConv({i}, {o})", 1), ("gnn.GCNConv({i}, {o})", 1))


def pyg(d):
    """A torch_geometric layer over the nodes' features and the edge list; PointNetConv reads the
    positions too (relative ones: translation invariant, not rotation)."""
    x = PYG and d.edges and d.pick(lambda t: t.dims[0] == "N" and len(t.dims) == 2 and _static(t.dims[1]))
    if not x:
        return None
    o, pos = d.rng.choice([2, 4]), next((t for t, _ in d.inputs if t.name == "pos"), None)
    if pos and d.rng.random() < 0.3:
        m = d.layer(f"gnn.PointNetConv(nn.Sequential(nn.Linear({x.dims[1] + 3}, {o}), nn.ReLU()))")
        return d.bind(f"{m}({x.name}, pos, edge_index)", ("N", o))
    layer, times = d.rng.choice(PYG_LAYERS)
    m = d.layer(layer.format(i=x.dims[1], o=o, aggr=d.rng.choice(["sum", "mean", "max"])))
    return d.bind(f"{m}({x.name}, edge_index)", ("N", o * times))


def edge_mask(d):
    """Edge rows weighted by a comparison of their ids: == and != commute with relabelling, < does not."""
    m = d.edges and d.pick(lambda t: t.dims[:1] == d.edges[0].dims and len(t.dims) == 2)
    if m:
        row, col = (e.name for e in d.edges)
        how = d.rng.choice(["!=", "==", "<"])
        cast = d.rng.choice(["", f".to({m.name}.dtype)"])
        return d.bind(f"{m.name} * ({row} {how} {col}).unsqueeze(-1){cast}", m.dims)


VOCABULARY = [linear, mlp, conv, norm, activation, activation, arithmetic, arithmetic, reduce, cat, reshape,
              reshape, select, softmax, ones, expand, matmul, repeat, in_place, cast, cast, attention]
MOTIFS = [centre, norms, norms, products, pairs, gate, gate, weighted, gather, scatter, scatter, pyg, edge_mask,
          arithmetic, reduce, cast]


# -- inputs as users lay them out ---------------------------------------------------------------

def _features(d, lead: tuple):
    if d.rng.random() < 0.7:
        d.input("h", lead + (d.rng.choice([1, 2, 3, 4]),), d.rng.choice([None, "invariant"]))


def cloud(d):
    """A cloud [N, 3] or [B, N, 3], maybe its velocities and features."""
    lead = ("B", "N") if d.rng.random() < 0.6 else ("N",)
    d.groups = [d.rng.choice(EUCLIDEAN)] + (["S(N)"] if d.rng.random() < 0.7 else [])
    d.input("pos", lead + (3,), "position")
    if d.rng.random() < 0.4:
        d.input("vel", lead + (3,), "vector")
    _features(d, lead)


def static_cloud(d):
    """A batch of clouds of 1 to 3 points, a static size beside the coordinates' 3."""
    n = d.rng.choice([1, 2, 3])
    d.groups = [d.rng.choice(EUCLIDEAN)]
    d.input("pos", ("B", n, 3), "position")
    _features(d, ("B", n))


def channels(d):
    """Channels first, as Conv1d wants them: a role-free [B, 3, N] under S(N), or a position [B, N, 3]
    that forward transposes."""
    if d.rng.random() < 0.5:
        d.groups = ["S(N)"]
        d.input("points", ("B", 3, "N"))
        return
    d.groups = [d.rng.choice(EUCLIDEAN), "S(N)"]
    pos = d.input("pos", ("B", "N", 3), "position")
    d.bind(d.rng.choice(["{}.transpose(1, 2)", "{}.permute(0, 2, 1)", "{}.transpose(-1, -2)"]).format(pos.name),
           ("B", 3, "N"))


def graph(d):
    """Node features (and positions) with an edge list [2, E] that S(N) relabels (or, now and then,
    one not declared index(N)), unpacked as users unpack it."""
    d.input("x", ("N", d.rng.choice([1, 2, 3, 4, 5])), d.rng.choice([None, "invariant"]))
    d.groups = ["S(N)"]
    if d.rng.random() < 0.5:
        d.groups.append(d.rng.choice(EUCLIDEAN))
        d.input("pos", ("N", 3), "position")
    d.input("edge_index", (2, "E"), "index(N)" if d.rng.random() < 0.9 else None, dtype="i")
    edges, roll = "E", d.rng.random()
    if PYG and roll < 0.1:
        d.lines.append("edge_index, _ = add_self_loops(edge_index, num_nodes=x.size(0))")
        edges = "E+N"
    d.lines.append(d.rng.choice(["row, col = edge_index", "row, col = edge_index[0], edge_index[1]",
                                 "row, col = edge_index.unbind(0)"]))
    if 0.1 <= roll < 0.25:  # self loops removed: the edges a mask keeps
        d.lines += ["keep = row != col", "row, col = row[keep], col[keep]"]
        edges = "K"
    elif 0.25 <= roll < 0.6:  # self loops appended: the nodes' own ids (or, near misses, other integers)
        loop = d.rng.choice(["torch.arange(x.size(0))"] * 3 + ["torch.arange(x.size(1))", "torch.zeros_like(row)"])
        d.lines += [f"loop = {loop}", "row, col = torch.cat([row, loop]), torch.cat([col, loop])"]
        edges = "E+N"
    d.edges = (Tensor("row", (edges,), "i"), Tensor("col", (edges,), "i"))


SCENARIOS = [cloud, cloud, cloud, static_cloud, channels, graph, graph, graph]


def drawn(rng: random.Random) -> Drawn:
    """A random program: inputs, 2-7 statements, 1-3 returned tensors with random claims."""
    d = Drawn(rng, "drawn")
    rng.choice(SCENARIOS)(d)
    steps = rng.randrange(2, 8)
    for _ in range(steps * 4):
        if len(d.lines) >= steps:
            break
        rng.choice(MOTIFS if rng.random() < 0.6 else VOCABULARY)(d)
    made = [t for t in d.scope if t not in [i for i, _ in d.inputs]] or d.scope[:1]
    leaves = [t for t in made[:-1] if not any(re.search(rf"\b{t.name}\b", line.split(" = ", 1)[-1])
                                              for line in d.lines)]  # what no statement reads
    picked = [made[-1]] + rng.sample(leaves, min(len(leaves), 2))
    d.outputs = [(t, _claim(d, t)) for t in picked]
    return d


def _claim(d: Drawn, t: Tensor) -> str | None:
    """None (the harness then measures the role the facts match), invariant, or (mostly on a last axis
    of 3, under a Euclidean group) a position or a vector."""
    coordinates = (t.dims[-1] == 3 or d.rng.random() < 0.05) and any(g in EUCLIDEAN for g in d.groups)
    return d.rng.choice([None, None, "invariant"] + ["position", "vector"] * coordinates)


# -- correct layers, to be mutated ------------------------------------------------------------------
# Each claims what the layer is; its mutations (old, new) change one thing a user gets wrong.

def egnn(d):
    """An EGNN layer over an edge list (Satorras et al. 2021), with a segment mean as sum / count."""
    d.groups = [d.rng.choice(EUCLIDEAN), "S(N)"]
    h, x = d.input("h", ("N", 4)), d.input("x", ("N", 3), "position")
    d.input("edge_index", (2, "E"), "index(N)", dtype="i")
    d.layers = [("edge", "nn.Sequential(nn.Linear(9, 8), nn.SiLU())"), ("coord", "nn.Linear(8, 1)"),
                ("node", "nn.Linear(12, 4)"), ("mix", "nn.Linear(3, 3)")]
    d.lines = ["row, col = edge_index",
               "diff = x[row] - x[col]",
               "radial = (diff ** 2).sum(1, keepdim=True)",
               "m = self.edge(torch.cat([h[row], h[col], radial], dim=1))",
               "trans = diff * self.coord(m)",
               "agg = trans.new_zeros((x.size(0), 3)).index_add_(0, row, trans)",
               "count = trans.new_zeros((x.size(0), 3)).index_add_(0, row, torch.ones_like(trans))",
               "x2 = x + agg / count.clamp(min=1)",
               "hm = m.new_zeros((h.size(0), 8)).index_add_(0, row, m)",
               "h2 = h + self.node(torch.cat([h, hm], dim=1))"]
    d.outputs = [(Tensor("h2", ("N", 4)), "invariant"), (Tensor("x2", ("N", 3)), "position")]
    return [("x[row] - x[col]", "x[row] + x[col]"), ("x[row] - x[col]", "x[row]"),
            ("(diff ** 2).sum(1, keepdim=True)", "diff.sum(1, keepdim=True)"),
            ("(diff ** 2).sum(1, keepdim=True)", "(diff ** 2).amax(1, keepdim=True)"),
            ("(diff ** 2).sum(1, keepdim=True)", "(diff ** 2)[:, :1]"),
            ("diff * self.coord(m)", "diff * self.coord(m) + self.mix(diff)"),
            ("torch.ones_like(trans)", "torch.ones_like(trans) * radial"),
            ("torch.ones_like(trans)", "torch.ones_like(trans) + m[:, :3]"),
            ("torch.ones_like(trans)", "torch.ones_like(trans) + diff * diff"),
            ("count.clamp(min=1)", "count.clamp(min=1).sum(0)"),
            ("index_add_(0, row, trans)", "index_add_(0, col, trans)"),
            ("x + agg", "agg"), ("h + self.node", "h[0] + self.node"),
            ("torch.cat([h, hm], dim=1)", "torch.cat([h, hm[:, :5], x], dim=1)")]


def dense_egnn(d):
    """An EGNN layer over every pair of a batch of sets, the pairs built with expand."""
    d.groups = [d.rng.choice(EUCLIDEAN), "S(N)"]
    d.input("pos", ("B", "N", 3), "position")
    d.input("h", ("B", "N", 4), "invariant")
    d.layers = [("edge", "nn.Sequential(nn.Linear(9, 8), nn.SiLU(), nn.Linear(8, 1))")]
    d.lines = ["diff = pos.unsqueeze(2) - pos.unsqueeze(1)",
               "d2 = (diff ** 2).sum(-1, keepdim=True)",
               "hi = h.unsqueeze(2).expand(-1, -1, h.size(1), -1)",
               "hj = h.unsqueeze(1).expand(-1, h.size(1), -1, -1)",
               "m = self.edge(torch.cat([hi, hj, d2], dim=-1))",
               "x2 = pos + (diff * m).mean(2)",
               "h2 = h * torch.sigmoid(m.sum(2))"]
    d.outputs = [(Tensor("x2", ("B", "N", 3)), "position"), (Tensor("h2", ("B", "N", 4)), "invariant")]
    return [("pos.unsqueeze(2) - pos.unsqueeze(1)", "pos.unsqueeze(2) + pos.unsqueeze(1)"),
            ("(diff * m).mean(2)", "(diff * m).mean(1)"), ("(diff * m).mean(2)", "(diff * m).sum(2)"),
            ("(diff * m).mean(2)", "(diff * m).amax(2)"),
            ("(diff ** 2).sum(-1, keepdim=True)", "diff[..., :1] ** 2"),
            ("h.unsqueeze(1).expand(-1, h.size(1), -1, -1)",
             "h[:, :1].unsqueeze(1).expand(-1, h.size(1), h.size(1), -1)"),
            ("m.sum(2)", "m.amax(2)"), ("m.sum(2)", "m.sum(1)"), ("pos + ", "pos[:, :1] + ")]


def pointnet(d):
    """A PointNet classifier of the centred cloud's squared radii: Conv1d, batch norm, a max over N."""
    d.groups = [d.rng.choice(EUCLIDEAN), "S(N)"]
    d.input("pos", ("B", "N", 3), "position")
    d.layers = [("conv1", "nn.Conv1d(1, 8, 1)"), ("bn", "nn.BatchNorm1d(8)"), ("conv2", "nn.Conv1d(8, 8, 1)"),
                ("fc", "nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Dropout(0.3), nn.Linear(8, 2))")]
    d.lines = ["c = pos - pos.mean(1, keepdim=True)",
               "r = (c * c).sum(-1, keepdim=True)",
               "f = torch.relu(self.bn(self.conv1(r.transpose(1, 2))))",
               "f = torch.relu(self.conv2(f))",
               "g = torch.max(f, 2, keepdim=True)[0]",
               "y = self.fc(g.view(-1, 8))"]
    d.outputs = [(Tensor("y", ("B", 2)), "invariant")]
    return [("c = pos - pos.mean(1, keepdim=True)", "c = pos"), ("pos.mean(1,", "pos.mean(2,"),
            ("(c * c).sum(-1, keepdim=True)", "c[..., :1]"),
            ("(c * c).sum(-1, keepdim=True)", "c.sum(-1, keepdim=True)"),
            ("torch.max(f, 2, keepdim=True)[0]", "f[:, :, :1]"), ("torch.max(f, 2,", "torch.sum(f, 2,"),
            ("torch.max(f, 2, keepdim=True)[0]",
             "torch.max(f, 1, keepdim=True)[0].sum(2, keepdim=True).expand(-1, 8, -1)"),
            ("r.transpose(1, 2)", "r.transpose(1, 2) + pos[..., :1].transpose(1, 2)")]


def pointnet_raw(d):
    """PointNet on raw points [B, 3, N] (channels first), invariant to their order only."""
    d.groups = ["S(N)"]
    d.input("points", ("B", 3, "N"))
    d.layers = [("conv1", "nn.Conv1d(3, 8, 1)"), ("bn", "nn.BatchNorm1d(8)"), ("fc", "nn.Linear(8, 2)")]
    d.lines = ["f = torch.relu(self.bn(self.conv1(points)))",
               "g = f.amax(2)",
               "y = self.fc(g)"]
    d.outputs = [(Tensor("y", ("B", 2)), "invariant"), (Tensor("f", ("B", 8, "N")), None)]
    return [("f.amax(2)", "f[:, :, 0]"), ("f.amax(2)", "f.mean(-1)"), ("f.amax(2)", "f.amax(1)[:, :1].expand(-1, 8)"),
            ("self.conv1(points)", "self.conv1(points - points.mean(1, keepdim=True))"),
            ("self.conv1(points)", "self.conv1(points.softmax(2))"),
            ("self.conv1(points)", "self.conv1(points.softmax(1))")]


def centred_cloud(d):
    """Invariants, a vector and a softmax-weighted centre of a batch of clouds."""
    d.groups = [d.rng.choice(EUCLIDEAN), "S(N)"]
    d.input("pos", ("B", "N", 3), "position")
    d.input("h", ("B", "N", 2), "invariant")
    d.layers = [("phi", "nn.Sequential(nn.Linear(3, 8), nn.SiLU(), nn.Linear(8, 1))")]
    d.lines = ["c = pos - pos.mean(1, keepdim=True)",
               "r = (c * c).sum(-1, keepdim=True)",
               "s = self.phi(torch.cat([r, h], dim=-1))",
               "v = c * s",
               "w = torch.softmax(s, dim=1)",
               "centre = (w * pos).sum(1)",
               "inv = s.amax(1)"]
    d.outputs = [(Tensor("v", ("B", "N", 3)), "vector"), (Tensor("centre", ("B", 3)), "position"),
                 (Tensor("inv", ("B", 1)), "invariant")]
    return [("c = pos - pos.mean(1, keepdim=True)", "c = pos"), ("pos.mean(1,", "pos.mean(2,"),
            ("pos.mean(1,", "pos.mean(0,"), ("softmax(s, dim=1)", "softmax(s, dim=-1)"),
            ("(w * pos).sum(1)", "(w * pos).mean(1)"), ("(w * pos).sum(1)", "(w * c).sum(1) + pos[:, 0]"),
            ("(w * pos).sum(1)", "(w * c).sum(1) + pos.mean(1)"), ("c * s", "c * s + pos"),
            ("c * s", "c * torch.cat([s, s, r], -1)"), ("s.amax(1)", "s.amax(0)"), ("s.amax(1)", "s.amax(-1)"),
            ("torch.cat([r, h], dim=-1)", "torch.cat([c[..., :1], h], dim=-1)")]


def gin_pool(d):
    """A GIN layer, then a sum over the nodes: invariant to their order."""
    d.groups = ["S(N)"]
    d.input("x", ("N", 5))
    d.input("edge_index", (2, "E"), "index(N)", dtype="i")
    d.layers = [("conv", "gnn.GINConv(nn.Sequential(nn.Linear(5, 8), nn.ReLU(), nn.Linear(8, 8)), train_eps=True)"),
                ("out", "nn.Linear(8, 2)")]
    d.lines = ["h = self.conv(x, edge_index)", "p = self.out(h.sum(0))"]
    d.outputs = [(Tensor("h", ("N", 8)), None), (Tensor("p", (2,)), "invariant")]
    return [("h.sum(0)", "h[0]"), ("h.sum(0)", "h.amax(0)"), ("h.sum(0)", "h.t().sum(1)"),
            ("h.sum(0)", "h.sum(0) + h[-1]"), ("self.conv(x, edge_index)", "self.conv(x, edge_index.flip(0))"),
            ("self.conv(x, edge_index)", "self.conv(x, edge_index[:, :1].expand(-1, edge_index.size(1)))")]


LAYERS = [egnn, egnn, dense_egnn, pointnet, pointnet_raw, centred_cloud] + ([gin_pool] if PYG else [])


def mutant(rng: random.Random) -> Drawn:
    """A correct layer, unchanged a fifth of the time, else with one of its own mutations or a generic one."""
    layer = rng.choice(LAYERS)
    d = Drawn(rng, f"mutant of {layer.__name__}")
    own = layer(d)
    roll = rng.random()
    if roll < 0.5:
        old, new = rng.choice(own)
        i = next(k for k, line in enumerate(d.lines) if old in line)
        d.lines[i] = d.lines[i].replace(old, new, 1)
        d.mutation = f"{old!r} -> {new!r}"
    elif roll < 0.8:
        mutate(d)
    return d


# -- generic source mutations: a regex over one forward line, and what replaces the match ------------

GENERIC = (
    ("an axis", r"\.(sum|mean|amax|amin|max|softmax)\((-?\d)",
     lambda m, rng: f".{m[1]}({rng.choice(['0', '1', '2', '-1'])}"),
    ("a reduction", r"\.(sum|mean|amax|amin)\(", lambda m, rng: f".{rng.choice(['sum', 'mean', 'amax', 'amin'])}("),
    ("a centring dropped", r"(\w+) - \1\.mean\([^)]*\)", lambda m, rng: m[1]),
    ("a fixed element", r"\.(sum|mean|amax|amin)\((-?\d)\)", lambda m, rng: f".select({m[2]}, 0)"),
    ("a difference made a sum", r"(\w+(?:\[\w+\])?) - (\w+)", lambda m, rng: f"{m[1]} + {m[2]}"),
    ("a coordinate-dependent term", r"^(?!(?:row|col|loop|keep) )(\w+) = (.+)$",
     lambda m, rng: f"{m[1]} = ({m[2]}) + ({m[2]})[..., :1]"),
    ("a transpose made a reshape", r"(\w+)\.transpose\((-?\d), (-?\d)\)",
     lambda m, rng: f"{m[1]}.reshape({m[1]}.transpose({m[2]}, {m[3]}).shape)"),
    ("the edge ids swapped", r"\b(row|col)\b", lambda m, rng: {"row": "col", "col": "row"}[m[1]]),
    ("keepdim flipped", r"keepdim=(True|False)", lambda m, rng: f"keepdim={m[1] == 'False'}"),
)


def mutate(d: Drawn) -> None:
    """One generic mutation at one random place it applies (none when none applies)."""
    places = [(name, k, m, new) for name, pattern, new in GENERIC for k, line in enumerate(d.lines)
              if not line.startswith("row, col =") for m in re.finditer(pattern, line)]  # the edge list stays one
    if places:
        name, k, m, new = d.rng.choice(places)
        line = d.lines[k]
        d.lines[k] = line[:m.start()] + new(m, d.rng) + line[m.end():]
        d.mutation = f"{name}: {line!r} -> {d.lines[k]!r}"


def program(seed: int) -> Drawn:
    """Program `seed`: a mutant a third of the time, else a drawn program (mutated a third of the time)."""
    rng = random.Random(seed)
    if rng.random() < 1 / 3:
        return mutant(rng)
    d = drawn(rng)
    if rng.random() < 1 / 3:
        mutate(d)
    return d


# -- one program through invc and the numbers ---------------------------------------------------------

@dataclass
class Result(Outcome):
    """soundness.Outcome, with why the checker refused the program (status "refused") or each claim,
    and the graph ops of the lifted graph."""
    reason: str = ""
    reasons: list = field(default_factory=list)
    ops: set = field(default_factory=set)
    float32_model: bool = False  # the model casts to float32 itself, so only its lowered graph ran in float64


def run(d: Drawn, seed: int) -> Result:
    """Capture and check the program, then measure every claim; any exception but a SpecError is a
    crash, and a program checked whose lifted graph computes something else than the model is a lift
    bug."""
    module = f"drawn{seed}"
    folder = Path(FOLDER.name)
    (folder / f"{module}.py").write_text(d.source())
    (folder / f"{module}.inv").write_text(d.spec(module))
    importlib.invalidate_caches()  # the folder's listing changed within the second
    text = f"# {module}.py\n{d.source()}\n# {module}.inv\n{d.spec(module)}"
    text += f"# mutation: {d.mutation}\n" if d.mutation else ""
    try:
        checked = check(load(folder / f"{module}.inv"), prove=False)
        table = verdicts(checked)
        _prints(checked, table)
        out, gm = Result(seed, text, "checked", ops={node.op for node in checked.nodes}), lower(checked, seed)
        model = importlib.import_module(module).make().eval()  # capture may have served an earlier export
        _agrees_with_model(out, checked, gm, model, seed)
        if out.status == "checked":
            _measure(out, checked, table, gm, model.double(), seed)
        return out
    except SpecError as e:  # a refusal, the replay check's included: invc said no
        return Result(seed, text, "refused", reason=reason(e.message))
    except Exception as e:  # noqa: BLE001 - any other exception is a finding of the harness
        return Result(seed, text, "crash", crash=f"{type(e).__name__}: {e}")
    finally:
        sys.modules.pop(module, None)


def reason(message: str) -> str:
    """A refusal's message without its names, numbers and origins, so that alike refusals count together."""
    message = message.split(" with torch.export: ")[-1] if "cannot capture" in message else message
    message = re.sub(r"`[^`]*`|'[^']*'|\[[^\]]*\]|\d+", "_", message)
    return re.sub(r" \((aten|_)[^)]*\)+", "", message)[:90]


def why(v) -> str:
    """A refused claim's reason, for the counts: the ATen op kept without a rule, the words of the rule
    that broke, or the fact against the claim."""
    if not isinstance(v.fact, Broken):
        return f"is {type(v.fact).__name__}, claimed {type(v.claim).__name__}"
    kept = re.search(r"no symmetry rule for this op \((aten\.[\w.]+)", v.fact.reason)
    return f"kept {kept[1]}" if kept else reason(v.fact.reason)


def _inputs(checked) -> Program:
    """The spec's inputs as soundness.Program holds them: the measurement reads their dims and roles."""
    kinds = {"f32": "f", "i64": "i", "i32": "i", "bool": "b"}
    return Program(random.Random(0), [], inputs=[(Tensor(p.name, tuple(p.type.shape), kinds[p.type.dtype]), p.role)
                                                for p in checked.inputs])


SCALE = 3.0  # of the floats fed: beyond the replay check's unit examples, where a cap (x > 2.5) acts


def feeds(p: Program, gen: torch.Generator) -> list:
    """float64 Gaussian floats of scale SCALE; integers are node ids in range (an edge list, declared
    index(N) or not)."""
    out = []
    for t, _ in p.inputs:
        shape = [SIZES[d] if isinstance(d, str) else d for d in t.dims]
        out.append(torch.randint(0, SIZES["N"], shape, generator=gen) if t.dtype == "i" else
                   SCALE * torch.randn(shape, generator=gen, dtype=torch.float64))
    return out


def _measure(out: Result, checked, table: list, gm, model, seed: int) -> None:
    """Each output under each group, claimed what the spec claims (unclaimed: the role the checker's
    facts match, as soundness.py's INFERRED): held claims are proofs, measured on the lowered graph and
    on the torch model itself; the rest are refusals, measured on the graph. An unclaimed output whose
    fact no role words is measured as that fact: coordinates on an axis before the last with that axis
    moved last; a set permuted on some of its axes (or none) with exactly those axes named N (a dim
    the capture names otherwise, "(N**2)//N", is N where the fact says so)."""
    if not table:
        return
    roles = dict(_inferred_claims(checked, [(port.name, port.role or INFERRED) for port in checked.outputs]))
    gen = torch.Generator().manual_seed(seed)
    module, p = redrawn(gm, seed), _inputs(checked)  # float64, every weight drawn again
    inputs = feeds(p, gen)
    for group in dict.fromkeys(str(v.group) for v in table):  # in order: the draws from gen repeat
        claims = [_claim_of(v, roles[v.output], port.role is None)
                  for v, port in zip((v for v in table if str(v.group) == group), checked.outputs)]
        axes = [axis for *_, axis in claims]
        rows = [(v.output, role, dims) for v, role, dims, _ in claims]
        measured = Moved(module, axes)
        state = gen.get_state()
        errors = measure(measured, p, inputs, rows, group, gen)
        for i, (v, *_) in enumerate(claims):
            if v.holds and errors[i] > TOL and rounding_only(measured, p, inputs, rows, group, state, i):
                out.rounding.append((v.output, group, str(v.claim), errors[i]))
            else:
                _record(out, v, errors[i])
            if not v.holds:
                out.reasons.append(why(v))
        _measure_model(out, Moved(model, axes), [v for v, *_ in claims], p, inputs, rows, group, state)


def _measure_model(out: Result, model, claims: list, p, inputs, rows, group: str, state) -> None:
    """The proved claims on the torch model (its own weights, float64), with the graph's group elements:
    a lift that drops what the model does (a change in place through a view) shows here, where the
    replay check's examples did not reach it."""
    gen = torch.Generator()
    gen.set_state(state)
    try:
        errors = measure(model, p, inputs, rows, group, gen)
    except RuntimeError:  # `x.float()` in forward: the float64 weights meet a float32 tensor
        with torch.no_grad():  # a model that runs in float32 (else the error stands)
            model.float()(*(x.float() if x.is_floating_point() else x for x in inputs))
        model.double()
        out.float32_model = True  # measured as the lowered graph (float64) and against it (float32)
        return
    for i, v in enumerate(claims):
        if v.holds and not errors[i] <= TOL and not rounding_only(model, p, inputs, rows, group, state, i):
            out.proved.append((v.output, group, f"{v.claim} (the torch model)", errors[i]))


def _claim_of(v, role: str | None, unclaimed: bool) -> tuple:
    """(the verdict with its claim, the role and dims to measure it as, the output axis to move last)."""
    claimed = replace(v, claim=v.group.claim(v.shape, role))
    if claimed.holds or not unclaimed:
        return claimed, role, v.shape, None
    fact, last = v.fact, len(v.shape) - 1
    if isinstance(fact, (Rotated, Translated)) and fact.axis != last:
        dims = v.shape[:fact.axis] + v.shape[fact.axis + 1:] + (v.shape[fact.axis],)
        return replace(v, claim=fact), "vector" if isinstance(fact, Rotated) else "position", dims, fact.axis
    if isinstance(v.group, Permutations) and (type(fact) is Permuted and not fact.by or isinstance(fact, Invariant)):
        moving = fact.axes if isinstance(fact, Permuted) else ()
        dims = tuple(v.group.dim if k in moving else f"{d}'" for k, d in enumerate(v.shape))  # N' stays put
        return replace(v, claim=fact), None, dims, None
    return claimed, role, v.shape, None


class Moved(torch.nn.Module):
    """A module whose outputs have an axis moved last (None: as they are), run on copies of its inputs
    (a model may change an input in place, which the next run must not see)."""
    def __init__(self, module, axes: list):
        super().__init__()
        self.module, self.axes = module, axes

    def forward(self, *inputs):
        ys = self.module(*(x.clone() for x in inputs))
        ys = ys if isinstance(ys, (tuple, list)) else (ys,)
        return tuple(y if a is None else y.movedim(a, -1) for y, a in zip(ys, self.axes))


def _agrees_with_model(out: Result, checked, gm, model, seed: int) -> None:
    """The lowered graph `gm`, with the captured weights, against the model itself at the harness's
    sizes (the replay check ran other sizes): a difference is a lift bug."""
    p = _inputs(checked)
    inputs = [x.float() if x.is_floating_point() else x for x in feeds(p, torch.Generator().manual_seed(seed))]
    with torch.no_grad():
        got = gm(*inputs)
        try:
            want = model(*(x.clone() for x in inputs))
        except RuntimeError as e:  # eager torch refuses what export traced (a write through an expanded view)
            out.status, out.reason = "refused", f"the model itself fails: {str(e).splitlines()[0][:80]}"
            return
    got, want = [y if isinstance(y, (tuple, list)) else (y,) for y in (got, want)]
    for k, (a, b) in enumerate(zip(got, want)):
        if a.shape != b.shape or not torch.allclose(a, b, rtol=1e-4, atol=1e-5, equal_nan=True):
            out.status, out.crash = "lift bug", f"output {k} of the lowered graph differs from the model's"


def shrink(d: Drawn, o: Result, seed: int) -> Result:
    """Drop returned tensors, then forward's statements, one at a time while the program fails alike."""
    def fails(trial: Drawn) -> Result | None:
        r = run(trial, seed)
        same = (r.status == o.status) if o.status != "checked" else bool(r.false_proofs)
        return r if same else None

    best, changed = o, True
    while changed:
        changed = False
        trials = [replace(d, outputs=d.outputs[:k] + d.outputs[k + 1:]) for k in range(len(d.outputs))
                  if len(d.outputs) > 1]
        trials += [replace(d, lines=d.lines[:k] + d.lines[k + 1:]) for k in range(len(d.lines))]
        for trial in trials:
            r = fails(trial)
            if r is not None:
                d, best, changed = trial, r, True
                break
    return best


def harness(seeds, shrink_failures: bool = True, progress: bool = False) -> tuple[Counter, list, Counter]:
    """Run programs `seeds`; returns the counts (with how many programs hold each graph op: "graph op
    NAME"), the findings (false proofs, crashes, lift bugs, shrunk) and the refusals by reason
    (programs refused, and claims refused by the rule that broke them)."""
    from tqdm import tqdm
    counts, findings, refusals = Counter(), [], Counter()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: a second thread only waits
    for seed in tqdm(seeds, disable=not progress, unit="program"):
        d = program(seed)
        o = run(d, seed)
        counts["programs"] += 1
        counts[d.kind.split(" ")[0]] += 1
        counts[o.status] += 1
        counts["claims proved"] += len(o.proved)
        counts["proved, error is float64 rounding"] += len(o.rounding)
        counts["claims refused"] += len(o.refused)
        counts["refused, numerically holds"] += sum(r[3] <= TOL for r in o.refused)
        counts.update(f"graph op {op}" for op in o.ops)
        counts["torch model runs in float32 only"] += o.float32_model
        if o.status == "refused":
            refusals[f"program: {o.reason}"] += 1
        refusals.update(f"claim: {r}" for r in o.reasons)
        if o.status in ("crash", "lift bug") or o.false_proofs:
            counts["false proofs"] += len(o.false_proofs)
            findings.append(shrink(d, o, seed) if shrink_failures else o)
    torch.set_num_threads(threads)
    return counts, findings, refusals
