"""The differential soundness harness: random well-typed specs, their claims proved or refused by
the checker, and every proved claim measured in float64 by code that shares nothing with the rule
rules (each op's, in ops/). A claim the checker proves and the numbers contradict is a false
proof; it is shrunk to a small spec and printed.

    python benchmarks/soundness.py --specs 20000     # the benchmark-sized run
    tests/test_soundness.py                           # the CI-sized run

A spec is drawn as a program over typed tensors (`Tensor`: name, dims, dtype), from the whole op
vocabulary: elementwise and linear ops, norms, softmax, matmul, attention (causal or not, masked or
not), concat, reshapes and transposes, reductions, dense masked pools, attention pools, segment and
scatter pools, unsqueeze, defs with `repeat`, and frame_average with every group, role, `out`,
mask and canonical flag. Layouts and shapes as users write them: the coordinate axis anywhere
(`[B, 3, N]`), masked pools with masks of every rank (drawn to vary along every axis), set axes of
a static size (1 to 4 points) beside symbolic ones, and frames of computed clouds, collapsing ones
included (a mean broadcast back, points 1e-12 apart, a projection onto a line or a plane). Motifs
that often carry a symmetry (centred clouds, squared norms, pair differences, softmax-weighted
sums) are drawn beside plain random ops, so that proofs are common and near-misses are too. Also
what users write beside that: index inputs returned as outputs (every fact is an output, and every
fact is printed as `invc check` prints it), ids passed through defs, set unions, B·N rows,
transposed convex combinations, rank-2 products, vectors stacked along the coordinates; a quarter
of the specs import their defs from a library file.
"""
from __future__ import annotations

import random
import tempfile
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from compiler.measure import relative_error
from compiler.verify import random_rotation, redrawn
from ops.registry import check
from dsl.errors import SpecError
from dsl.groups import Broken
from dsl.program import load, load_text
from dsl.symmetry import refusal, render, verdicts
from dsl.types import INTS

TOL = 1e-6          # float64 relative error that still counts as exact
# An error is float64 rounding, not a false proof, when it is this many times smaller than the same
# measurement's error in float32: rounding shrinks with the precision (~1e-9 from float32 to
# float64), a claim that is wrong does not (an output that is zero by construction, rescaled by a
# norm, can turn rounding into a relative error far above TOL).
ROUNDING_SHRINK = 1e-4
SIZES = {"B": 3, "N": 5, "R": 7, "S": 3, "K": 4, "E": 8}
ROLE_OF_OUT = ("invariant", "vector", "position")
INFERRED = "inferred"  # a claim chosen after inference: what the checker says it proves, to be measured


@dataclass(frozen=True)
class Tensor:
    name: str
    dims: tuple
    dtype: str = "f"   # f float, b bool, i int


@dataclass
class Program:
    """A spec being drawn: its defs, the model's statements, and the tensors in scope."""
    rng: random.Random
    groups: list
    inputs: list = field(default_factory=list)   # (Tensor, role or None)
    lines: list = field(default_factory=list)
    defs: list = field(default_factory=list)
    scope: list = field(default_factory=list)
    masks: dict = field(default_factory=dict)    # dims -> bool Tensor over them
    returned: list = field(default_factory=list)  # integer tensors bound by statements (ids through a def)
    library: bool = False                          # the defs live in a file the spec imports
    count: int = 0

    def fresh(self) -> str:
        self.count += 1
        return f"t{self.count}"

    def bind(self, expr: str, dims: tuple) -> Tensor:
        t = Tensor(self.fresh(), tuple(dims))
        self.lines.append(f"  {t.name} = {expr}")
        self.scope.append(t)
        return t

    def floats(self, where=lambda t: True) -> list:
        return [t for t in self.scope if t.dtype == "f" and where(t)]

    def pick(self, where=lambda t: True) -> Tensor | None:
        found = self.floats(where)
        if not found:
            return None
        recent = found[-4:]  # prefer recent tensors, so programs grow deep rather than wide
        coordinates = [t for t in found if t.dims[-1] == 3]  # and those a Euclidean group may move
        if coordinates and self.rng.random() < 0.4:
            return self.rng.choice(coordinates)
        return self.rng.choice(recent if self.rng.random() < 0.5 else found)

    def text(self, outputs: list) -> str:
        head = [f"  symmetry {', '.join(self.groups)}"] if self.groups else []
        ins = [f"  input {t.name}: {_type(t)}" + (f" is {role}" if role else "") for t, role in self.inputs]
        outs = [f"  output {name}" + (f" is {claim}" if claim not in (None, INFERRED) else "")
                for name, claim in outputs]
        model = ["model drawn() {", *head, *ins, *self.lines, *outs, "}", ""]
        if self.library and self.defs:  # both files in one text, as _load reads it back
            return "\n".join([f"# {LIBRARY}", *self.defs, "# drawn.inv", f'import "{LIBRARY}"', *model])
        return "\n".join([*self.defs, *model])


LIBRARY = "lib.inv"
_FILES = tempfile.TemporaryDirectory(prefix="invc-soundness-")  # where a spec and its library are written


def _load(text: str):
    """The spec as a Program; one with a library has it written beside it and imported."""
    if not text.startswith(f"# {LIBRARY}\n"):
        return load_text(text, "drawn.inv")
    library, model = text.split("# drawn.inv\n", 1)
    folder = Path(_FILES.name)
    (folder / LIBRARY).write_text(library)
    (folder / "drawn.inv").write_text(model)
    return load(folder / "drawn.inv")


def _type(t: Tensor) -> str:
    dtype = {"f": "f32", "b": "bool", "i": "i64"}[t.dtype]
    return f"{dtype}[{', '.join(map(str, t.dims))}]"


def _axis(rng, t: Tensor) -> int:
    k = rng.randrange(len(t.dims))
    return k - len(t.dims) if rng.random() < 0.5 else k


def _broadcastable(a: tuple, b: tuple) -> bool:
    return all(x == y or x == 1 or y == 1 for x, y in zip(reversed(a), reversed(b)))


def _joined(a: tuple, b: tuple) -> tuple:
    longer, shorter = (a, b) if len(a) >= len(b) else (b, a)
    pad = (1,) * (len(longer) - len(shorter)) + shorter
    return tuple(y if x == 1 else x for x, y in zip(longer, pad))


# -- the op vocabulary: each draws one statement, or returns None when nothing in scope fits --------

def linear(p):
    x = p.pick(lambda t: isinstance(t.dims[-1], int))
    if x:
        k, bias = p.rng.choice([1, 2, 3, 4, 3 if x.dims[-1] == 3 else 2]), p.rng.random() < 0.6
        return p.bind(f"linear({x.name}, {k}{'' if bias else ', bias=false'})", x.dims[:-1] + (k,))


def mlp(p):
    x = p.pick(lambda t: isinstance(t.dims[-1], int))
    if x:
        widths = [p.rng.choice([2, 4]), p.rng.choice([1, 3, 4])]
        act = p.rng.choice(["relu", "silu", "tanh", "gelu"])
        return p.bind(f'mlp({x.name}, widths={widths}, act="{act}")', x.dims[:-1] + (widths[-1],))


def norm(p):
    x = p.pick(lambda t: isinstance(t.dims[-1], int))
    if x:
        kind, affine = p.rng.choice(["layernorm", "rmsnorm"]), p.rng.random() < 0.5
        return p.bind(f"{kind}({x.name}{'' if affine else ', affine=false'})", x.dims)


def elementwise(p):
    """An activation, a softmax along a random axis, or a negation: the shape stays."""
    x = p.pick()
    if x:
        form = p.rng.choice(["relu", "silu", "tanh", "sigmoid", "gelu", "softmax", "softmax", "-"])
        expr = {"softmax": f"softmax({x.name}, axis={_axis(p.rng, x)})", "-": f"-{x.name}"}.get(form, f"{form}({x.name})")
        return p.bind(expr, x.dims)


def arithmetic(p):
    x = p.pick()
    if not x:
        return None
    others = p.floats(lambda t: _broadcastable(t.dims, x.dims))
    y = p.rng.choice(others)
    op = p.rng.choice(["+", "-", "*"])
    if p.rng.random() < 0.2:  # a constant operand
        return p.bind(f"{x.name} {op} {p.rng.choice(['0.5', '2.0', '1.5'])}", x.dims)
    return p.bind(f"{x.name} {op} {y.name}", _joined(x.dims, y.dims))


def divide(p):
    """Division by something bounded away from zero, so that rounding stays small."""
    x = p.pick()
    y = x and p.pick(lambda t: _broadcastable(t.dims, x.dims))
    if y:
        return p.bind(f"{x.name} / (sigmoid({y.name}) + 0.5)", _joined(x.dims, y.dims))


def matmul(p):
    x = p.pick(lambda t: len(t.dims) >= 2)
    if not x:
        return None
    t_dims = x.dims[:-2] + (x.dims[-1], x.dims[-2])
    if p.rng.random() < 0.5:
        return p.bind(f"{x.name} @ transpose({x.name}, a=-2, b=-1)", x.dims[:-1] + (x.dims[-2],))
    ys = p.floats(lambda t: len(t.dims) == len(x.dims) and t.dims[:-2] == x.dims[:-2] and t.dims[-2] == x.dims[-1])
    if ys and p.rng.random() < 0.6:
        y = p.rng.choice(ys)
        return p.bind(f"{x.name} @ {y.name}", x.dims[:-1] + (y.dims[-1],))
    return p.bind(f"transpose({x.name}, a=-2, b=-1) @ {x.name}", t_dims[:-1] + (x.dims[-1],))


def attention(p):
    x = p.pick(lambda t: len(t.dims) == 3 and isinstance(t.dims[-1], int))
    if not x:
        return None
    heads = 2 if x.dims[-1] % 2 == 0 and p.rng.random() < 0.5 else 1
    mask = p.masks.get(x.dims[:2])
    extra = f", mask={mask.name}" if mask and p.rng.random() < 0.5 else ""
    extra += ", causal=true" if p.rng.random() < 0.3 else ""
    return p.bind(f"attention({x.name}, heads={heads}{extra})", x.dims)


def concat(p):
    x = p.pick()
    ys = x and p.floats(lambda t: len(t.dims) == len(x.dims) and t.dims[:-1] == x.dims[:-1])
    if ys:
        y = p.rng.choice(ys)
        if isinstance(x.dims[-1], int) and isinstance(y.dims[-1], int):
            return p.bind(f"concat({x.name}, {y.name})", x.dims[:-1] + (x.dims[-1] + y.dims[-1],))
        if x.dims == y.dims and len(x.dims) >= 2:
            k = p.rng.randrange(len(x.dims))
            if isinstance(x.dims[k], int):
                dims = x.dims[:k] + (2 * x.dims[k],) + x.dims[k + 1:]
                return p.bind(f"concat({x.name}, {y.name}, axis={k})", dims)


def flatten(p):
    x = p.pick(lambda t: len(t.dims) >= 2 and isinstance(t.dims[-1], int) and isinstance(t.dims[-2], int))
    if x:
        return p.bind(f"flatten({x.name}, start={len(x.dims) - 2})", x.dims[:-2] + (x.dims[-2] * x.dims[-1],))


def transpose(p):
    x = p.pick(lambda t: len(t.dims) >= 2)
    if x:
        a, b = p.rng.sample(range(len(x.dims)), 2)
        dims = list(x.dims)
        dims[a], dims[b] = dims[b], dims[a]
        return p.bind(f"transpose({x.name}, a={a}, b={b})", tuple(dims))


def reduce(p):
    x = p.pick(lambda t: len(t.dims) >= 2)
    if not x:
        return None
    k = p.rng.randrange(len(x.dims))
    keep = p.rng.random() < 0.5
    how = p.rng.choice(["sum", "mean", "max", "min", "sum", "mean"])
    dims = x.dims[:k] + ((1,) if keep else ()) + x.dims[k + 1:]
    return p.bind(f"{how}({x.name}, axis={k}{', keepdim=true' if keep else ''})", dims)


def pool(p):
    """A dense pool: over a set axis with its mask, or over any axis with a mask over the dims
    up to it (a coordinate axis included)."""
    x = p.pick(lambda t: len(t.dims) >= 2)
    if not x:
        return None
    k = p.rng.randrange(1, len(x.dims))
    mask = p.masks.get(x.dims[:k + 1])
    how = p.rng.choice(["sum", "mean", "max", "min"])
    extra = f", mask={mask.name}" if mask and p.rng.random() < 0.8 else ""
    return p.bind(f'pool({x.name}, axis={k}, kind="{how}"{extra})', x.dims[:k] + x.dims[k + 1:])


def attention_pool(p):
    x = p.pick(lambda t: len(t.dims) == 3 and isinstance(t.dims[-1], int))
    if x:
        mask = p.masks.get(x.dims[:2])
        extra = f", mask={mask.name}" if mask and p.rng.random() < 0.6 else ""
        return p.bind(f"attention_pool({x.name}, axis=1{extra})", x.dims[:1] + x.dims[2:])


def ragged(p):
    """A segment or scatter pool of rows [R, ...], possibly after moving another axis to the rows."""
    x = p.pick(lambda t: t.dims[0] == "R" or (len(t.dims) == 2 and t.dims[1] == "R"))
    ids = next((t for t, _ in p.inputs if t.name == "ids"), None)
    if not x or not ids:
        return None
    name = x.name
    if x.dims[0] != "R":
        name, x = f"transpose({x.name}, a=0, b=1)", Tensor(x.name, (x.dims[1], x.dims[0]))
    how = p.rng.choice(["sum", "mean", "max", "min"])
    if p.rng.random() < 0.5:
        return p.bind(f'segment_pool({name}, offsets, kind="{how}")', ("S",) + x.dims[1:])
    return p.bind(f'scatter_pool({name}, ids, like=like, kind="{how}")', ("S",) + x.dims[1:])


def gather(p):
    """Rows of a tensor picked along its N axis by an edge list's node ids."""
    x = p.pick(lambda t: "N" in t.dims)
    index = p.rng.choice(_edge_lists(p)) if x and _edge_lists(p) else None
    if index:
        k = x.dims.index("N")
        return p.bind(f"gather({x.name}, {index.name}, axis={k if p.rng.random() < 0.5 else 'N'})",
                      x.dims[:k] + ("E",) + x.dims[k + 1:])


def scatter_back(p):
    """Edge rows [E, ...] pooled into the nodes an edge list names, like a tensor [N, ...]."""
    x = p.pick(lambda t: t.dims[0] == "E")
    like = x and p.pick(lambda t: t.dims[0] == "N")
    if like and _edge_lists(p):
        index = p.rng.choice(_edge_lists(p))
        how = p.rng.choice(["sum", "mean", "max", "min"])
        return p.bind(f'scatter_pool({x.name}, {index.name}, like={like.name}, kind="{how}")', ("N",) + x.dims[1:])


def _edge_lists(p) -> list:
    return [t for t, _ in p.inputs if t.dims == ("E",)]


def unsqueeze(p):
    x = p.pick()
    if x:
        k = p.rng.randrange(len(x.dims) + 1)
        return p.bind(f"unsqueeze({x.name}, {k})", x.dims[:k] + (1,) + x.dims[k:])


def embedding(p):
    ids = next((t for t, _ in p.inputs if t.name == "tok"), None)
    if ids:
        dim = p.rng.choice([2, 3])
        return p.bind(f"embedding(tok, 6, {dim})", ids.dims + (dim,))


# -- motifs that carry a symmetry ------------------------------------------------------------------

def centred(p):
    x = p.pick(lambda t: len(t.dims) >= 2 and t.dims[1] == "N")
    if x:
        return p.bind(f"{x.name} - mean({x.name}, axis=1, keepdim=true)", x.dims)


def squared_norm(p):
    x = p.pick(lambda t: t.dims[-1] == 3)
    y = x and p.rng.choice(p.floats(lambda t: t.dims == x.dims))
    if y:
        return p.bind(f"sum({x.name} * {y.name}, axis=-1, keepdim=true)", x.dims[:-1] + (1,))


def pairs(p):
    x = p.pick(lambda t: len(t.dims) == 3 and t.dims[1] == "N")
    if x:
        return p.bind(f"unsqueeze({x.name}, 2) - unsqueeze({x.name}, 1)", x.dims[:2] + ("N",) + x.dims[2:])


def convex(p):
    """Softmax weights along N from per-element scores, summing (or matmul-ing) positions."""
    x = p.pick(lambda t: len(t.dims) == 3 and t.dims[:2] == ("B", "N") and t.dims[-1] == 3)
    h = x and p.pick(lambda t: len(t.dims) == 3 and t.dims[:2] == ("B", "N") and isinstance(t.dims[-1], int))
    if not h:
        return None
    w = p.bind(f"softmax(linear({h.name}, 1), axis={p.rng.choice([1, -2, 2])})", ("B", "N", 1))
    if p.rng.random() < 0.3:
        a = p.bind(f"softmax({h.name} @ transpose({h.name}, a=-2, b=-1), axis=-1)", ("B", "N", "N"))
        return p.bind(f"{a.name} @ {x.name}", x.dims)
    how = p.rng.choice(["sum", "sum", "mean"])
    return p.bind(f"{how}({w.name} * {x.name}, axis=1)", ("B", 3))


def residual_block(p):
    """A def whose result keeps its argument's shape, applied with `repeat`."""
    x = p.pick(lambda t: isinstance(t.dims[-1], int))
    if not x:
        return None
    name = f"blk{len(p.defs)}"
    body = p.rng.choice([f"x + linear(silu(linear(x, 4)), {x.dims[-1]})",
                         f"x + linear(layernorm(x), {x.dims[-1]}, bias=false)",
                         "x * sigmoid(x)"])
    p.defs.append(f"def {name}(x) {{\n  return {body}\n}}")
    return p.bind(f"{name}({x.name}) repeat {p.rng.choice([1, 2])}", x.dims)


def frame(p, cloud: Tensor | None = None):
    """frame_average around a drawn backbone, with a random group, roles, out, mask and canonical:
    of an input cloud [B, S, 3] (S symbolic or static), or of `cloud`, a computed one."""
    rng = p.rng
    inputs = [t for t, role in p.inputs if role == "position" and _is_cloud(t)]
    pos = cloud or (rng.choice(inputs) if inputs else None)
    if not pos:
        return None
    cands = [t for t in p.scope if t.dtype == "f" and t.dims[:1] == ("B",) and t is not pos]
    clouds = [t for t in cands if t.dims == pos.dims]
    if clouds and not cloud and rng.random() < 0.2:  # a centred cloud, a vector or another derived cloud
        pos = rng.choice(clouds)
        cands.remove(pos)
    points = [t for t in cands if t.dims[1:2] == pos.dims[1:2]]  # what the backbone reads along the set
    cands = points if points and rng.random() < 0.7 else cands
    args = [pos] + rng.sample(cands, min(len(cands), rng.choice([0, 1, 2])))
    roles = ["position"] + [("vector" if t.dims[-1] == 3 and rng.random() < 0.6 else "scalar") for t in args[1:]]
    if rng.random() < 0.15 and len(args) > 1:  # a role that may disagree with the tensor
        roles[1] = rng.choice(["position", "vector", "scalar"])
    mask = p.masks.get(pos.dims[:2]) if rng.random() < 0.4 else None
    out = rng.choice(ROLE_OF_OUT)
    group = rng.choice(["E(3)", "O(3)", "SE(3)", "SO(3)"])
    params = [f"a{i}" for i in range(len(args))] + (["m"] if mask else [])
    body = _backbone(rng, args, params, out, pos.dims[1])
    name = f"bb{len(p.defs)}"
    p.defs.append(f"def {name}({', '.join(params)}) {{\n{body}\n}}")
    kw = f', group="{group}", out="{out}"' + (f", mask={mask.name}" if mask else "") + \
        (", canonical=true" if rng.random() < 0.3 else "")
    roles_kw = f", roles={roles}".replace("'", '"') if roles != _declared_roles(p, args) else ""
    dims = pos.dims[:1] + ((pos.dims[1], 3) if out != "invariant" else (4,))
    return p.bind(f"frame_average({name}, [{', '.join(t.name for t in args)}]{kw}{roles_kw})", dims)


def _declared_roles(p, args) -> list:
    declared = {t.name: role for t, role in p.inputs}
    return [{"invariant": "scalar"}.get(declared.get(t.name), declared.get(t.name)) for t in args]


def _backbone(rng, args, params, out, points) -> str:
    """A per-row backbone over the folded batch: mixes the points' features, pools over the set
    axis `points` (with the mask when given), and returns [M, 4] (invariant) or [M, points, 3]
    (vector, position)."""
    a0 = params[0]
    feats = [f"linear({n}, 4)" for n, t in zip(params, args) if t.dims[1:2] == (points,)]
    h = " + ".join(feats[:2]) if feats else f"linear({a0}, 4)"
    lines = [f"  h = silu({h})"]
    if rng.random() < 0.5:
        lines.append(f"  h = h + unsqueeze(sum(h, axis=1), 1)")
    if rng.random() < 0.3:
        lines.append("  h = attention(h, heads=2)")
    if out == "invariant":
        masked = ', mask=m' if "m" in params and rng.random() < 0.7 else ""
        lines.append(f'  return linear(pool(h, axis=1, kind="{rng.choice(["sum", "max", "mean"])}"{masked}), 4)')
    else:
        lines.append(f"  return {a0} * 0.5 + linear(h, 3{', bias=false' if rng.random() < 0.5 else ''})")
    return "\n".join(lines)


# -- layouts, masks, static set sizes and computed clouds (issue 21, classes 1 and 2) --------------

STATIC_POINTS = (1, 2, 3, 4)  # static set sizes: 1 and 2 points are degenerate, 3 planar


def _is_cloud(t: Tensor) -> bool:
    return len(t.dims) == 3 and t.dims[0] == "B" and t.dims[2] == 3


def _static_cloud(p) -> None:
    """Inputs over a static set axis beside the symbolic ones: a cloud of 1 to 4 points, and
    maybe its vectors and features."""
    n = p.rng.choice(STATIC_POINTS)
    _input(p, Tensor("spos", ("B", n, 3)), "position")
    if p.rng.random() < 0.8:
        _input(p, Tensor("svel", ("B", n, 3)), "vector")
    if p.rng.random() < 0.5:
        _input(p, Tensor("sh", ("B", n, 2)), "scalar")


def _mask_over(p, dims: tuple) -> Tensor:
    """The bool input over `dims`, declared when first asked for."""
    if dims not in p.masks:
        p.masks[dims] = _input(p, Tensor(f"m{len(p.masks)}", dims, "b"), None)
    return p.masks[dims]


def relayout(p):
    """The coordinate axis moved anywhere before the last ([B, 3, N], [3, B, N], ...), often of a
    vector (a vector input, or a cloud centred here), then often a sum or mean over an axis after
    it, with a mask over the dims up to that axis."""
    vectors = [t for t, role in p.inputs if role == "vector" and len(t.dims) >= 3]
    clouds = [t for t, role in p.inputs if role == "position" and _is_cloud(t)]
    if p.rng.random() < 0.5 and (vectors or clouds):
        x = p.rng.choice(vectors + clouds)
        if x in clouds:
            x = p.bind(f"{x.name} - mean({x.name}, axis=1, keepdim=true)", x.dims)
    else:
        x = p.pick(lambda t: len(t.dims) >= 3 and t.dims[-1] == 3)
    if x:
        k = p.rng.randrange(len(x.dims) - 1)
        dims = list(x.dims)
        dims[k], dims[-1] = dims[-1], dims[k]
        moved = p.bind(f"transpose({x.name}, a={k}, b=-1)", tuple(dims))
        if p.rng.random() < 0.6:
            return masked_pool(p, moved, p.rng.randrange(k + 1, len(dims)), ("sum", "mean"))
        return moved


def masked_pool(p, x: Tensor | None = None, k: int | None = None, kinds=("sum", "mean", "max", "min")):
    """A pool over axis k (any but the first), with a mask of rank k + 1 over the dims up to it, which
    may hold the coordinate axis (the mask then keeps other elements for each coordinate)."""
    x = x or p.pick(lambda t: len(t.dims) >= 2)
    if x:
        k = k or p.rng.randrange(1, len(x.dims))
        mask = _mask_over(p, x.dims[:k + 1])
        how = p.rng.choice(kinds)
        return p.bind(f'pool({x.name}, axis={k}, kind="{how}", mask={mask.name})', x.dims[:k] + x.dims[k + 1:])


def collapsed_cloud(p):
    """A computed cloud, often degenerate for every input, then (mostly) frames built from it: all
    points at the centroid (exactly, to rounding, or 1e-12 apart), or projected onto a line or a
    plane through it. Of an input cloud of 3 points or more: the plane's normal, from the cloud's
    third moments, is then never 0 (a collapsed cloud's would be, or one of 1 or 2 points, and the
    projection would divide by it)."""
    clouds = [t for t, role in p.inputs if role == "position" and _is_cloud(t)]
    if not clouds:
        return None
    x = p.rng.choice(clouds)
    spread = not isinstance(x.dims[1], int) or x.dims[1] >= 3
    form = p.rng.choice(["rounding", "exact", "near"] + ["line", "plane"] * spread)
    mean = f"mean({x.name}, axis=1, keepdim=true)"
    if form in ("line", "plane"):
        d = p.bind(f"{x.name} - {mean}", x.dims)
        u = p.bind(f"mean({d.name} * sum({d.name} * {d.name}, axis=-1, keepdim=true), axis=1, keepdim=true)",
                   x.dims[:1] + (1, 3))
        along = f"sum({d.name} * {u.name}, axis=-1, keepdim=true) * {u.name}"
        cloud = p.bind(f"{mean} + {along}" if form == "line" else
                       f"{x.name} - {along} / sum({u.name} * {u.name}, axis=-1, keepdim=true)", x.dims)
    elif form == "near":
        h = p.pick(lambda t: len(t.dims) == 3 and t.dims[:2] == x.dims[:2] and t.dims[2] != 3) or x
        scores = f"{h.name} @ transpose({h.name}, a=-2, b=-1) * 0.000000000001"
        cloud = p.bind(f"softmax({scores}, axis=-1) @ {x.name}", x.dims)
    else:
        cloud = p.bind(f"{x.name} - ({x.name} - {mean})" if form == "rounding" else
                       f"{x.name} - {x.name} + {mean}", x.dims)
    return frame(p, cloud) if p.rng.random() < 0.7 else cloud
# -- issue 21: what users write that the draws above missed ------------------------------------------
# Sets joined along their set axis, the set axis flattened with its batch, convex combinations
# written with a transpose, rank-2 products of vectors, vectors stacked along the coordinates, and
# index inputs returned (directly or through a def) as outputs. Each draws its near misses too.

def union(p):
    """Two sets concatenated along their set axis (a union), usually pooled right away."""
    x = p.pick(lambda t: "N" in t.dims and len(t.dims) >= 2)  # pooled, it keeps an axis
    ys = x and p.floats(lambda t: t.dims == x.dims)
    if not ys:
        return None
    k = x.dims.index("N")
    u = p.bind(f"concat({x.name}, {p.rng.choice(ys).name}, axis={k})", x.dims[:k] + ("2*N",) + x.dims[k + 1:])
    if p.rng.random() < 0.7:
        how = p.rng.choice(["sum", "mean", "max", "min"])
        return p.bind(f"{how}({u.name}, axis={k})", u.dims[:k] + u.dims[k + 1:])
    return u


def flattened(p):
    """The set axis flattened with the batch axis (B·N rows, as graph libraries batch), in either
    layout, usually reduced whole; two layouts of the same rows may then meet."""
    x = p.pick(lambda t: t.dims[:2] in (("B", "N"), ("N", "B")) and len(t.dims) >= 3)
    if not x:
        return None
    name = x.name if p.rng.random() < 0.7 else f"transpose({x.name}, a=0, b=1)"
    f = p.bind(f"flatten({name}, start=0, end=1)", ("B*N",) + x.dims[2:])
    if p.rng.random() < 0.7:
        return p.bind(f"{p.rng.choice(['sum', 'mean', 'max', 'min'])}({f.name}, axis=0)", x.dims[2:])
    return f


def convex_transposed(p):
    """Positions contracted with softmax weights written as posᵀ @ w: weights along N make it a
    convex combination; along another axis they do not."""
    x = p.pick(lambda t: t.dims == ("B", "N", 3))
    h = x and p.pick(lambda t: len(t.dims) == 3 and t.dims[:2] == ("B", "N") and isinstance(t.dims[-1], int))
    if not h:
        return None
    k = p.rng.choice([1, 2])
    w = f"softmax(linear({h.name}, {k}), axis={p.rng.choice(['1', 'N', '-2', '-2', '-1'])})"
    c = p.bind(f"transpose({x.name}, a=-2, b=-1) @ {w}", ("B", 3, k))
    return p.bind(f"transpose({c.name}, a=-2, b=-1)", ("B", k, 3)) if p.rng.random() < 0.6 else c


def rank2(p):
    """An outer product or a covariance of coordinate tensors, contracted back with a vector."""
    a = p.pick(lambda t: t.dims[-1] == 3 and len(t.dims) == 3)
    bs = a and p.floats(lambda t: t.dims == a.dims)
    if not bs:
        return None
    b, u = p.rng.choice(bs), p.rng.choice(bs)
    if p.rng.random() < 0.5:  # a covariance [B, 3, 3]; u's vectors as columns [B, 3, N] or rows [B, N, 3]
        t = p.bind(f"transpose({a.name}, a=-2, b=-1) @ {b.name}", a.dims[:-2] + (3, 3))
        column, row = (f"transpose({u.name}, a=-2, b=-1)", a.dims[:-2] + (3, a.dims[-2])), (u.name, u.dims)
    else:  # outer products [B, N, 3, 3]; u's vectors as [B, N, 3, 1] or [B, N, 1, 3]
        t = p.bind(f"unsqueeze({a.name}, -1) @ unsqueeze({b.name}, -2)", a.dims + (3,))
        column, row = (f"unsqueeze({u.name}, -1)", u.dims + (1,)), (f"unsqueeze({u.name}, -2)", u.dims[:-1] + (1, 3))
    form = p.rng.choice(["right", "left", "square"])
    if form == "right":
        return p.bind(f"{t.name} @ {column[0]}", _matmul_dims(t.dims, column[1]))
    if form == "left":
        return p.bind(f"{row[0]} @ {t.name}", _matmul_dims(row[1], t.dims))
    return p.bind(f"{t.name} @ transpose({t.name}, a=-2, b=-1)", t.dims)


def _matmul_dims(a: tuple, b: tuple) -> tuple:
    lead = _joined(a[:-2], b[:-2]) if a[:-2] and b[:-2] else a[:-2] or b[:-2]
    return lead + (a[-2], b[-1])


def stacked(p):
    """Coordinate tensors concatenated along their coordinates, reshaped to [..., k, 3] (or the
    wrong way, [..., 3, k])."""
    a = p.pick(lambda t: t.dims[-1] == 3 and all(isinstance(d, str) and "*" not in d or isinstance(d, int)
                                               for d in t.dims))
    bs = a and p.floats(lambda t: t.dims == a.dims)
    if not bs:
        return None
    parts = [a.name] + [p.rng.choice(bs).name for _ in range(p.rng.choice([1, 1, 2]))]
    k = len(parts)
    split = (k, 3) if p.rng.random() < 0.8 else (3, k)
    dims = a.dims[:-1] + split
    return p.bind(f"reshape(concat({', '.join(parts)}), [{', '.join(map(str, dims))}])", dims)


def ids_through_def(p):
    """An index input handed through a def that returns it (or gathers by it): index parameters."""
    ids = [t for t, role in p.inputs if t.dtype == "i" and role and role.startswith("index(")]
    if not ids:
        return None
    t = p.rng.choice(ids)
    if p.rng.random() < 0.5 or not _edge_lists(p):
        name = f"same{len(p.defs)}"
        p.defs.append(f"def {name}(ids) {{\n  return ids\n}}")
        out = Tensor(p.fresh(), t.dims, "i")
        p.lines.append(f"  {out.name} = {name}({t.name})")
        p.returned.append(out)
        return out
    x = p.pick(lambda u: u.dims[:1] == ("N",))
    if x and t.dims == ("E",):
        name = f"msg{len(p.defs)}"
        p.defs.append(f"def {name}(h, s, r) {{\n  return scatter_pool(gather(h, s, axis=0) - gather(h, r, axis=0), "
                      f"r, like=h)\n}}")
        other = p.rng.choice(_edge_lists(p))
        return p.bind(f"{name}({x.name}, {t.name}, {other.name})", x.dims)
    return None


LAYOUT_MOTIFS = [union, flattened, convex_transposed, rank2, stacked, ids_through_def]


def layout_motif(p):
    """One of the draws above, as a motif: often enough to check each lifted rule numerically."""
    return p.rng.choice(LAYOUT_MOTIFS)(p)


VOCABULARY = [linear, mlp, norm, elementwise, elementwise, arithmetic, divide, matmul, attention, concat,
              flatten, transpose, reduce, pool, attention_pool, ragged, unsqueeze, embedding, gather, scatter_back,
              centred, squared_norm, pairs, convex, residual_block, frame, relayout, masked_pool, collapsed_cloud,
              *LAYOUT_MOTIFS]
MOTIFS = [centred, squared_norm, pairs, convex, frame, pool, arithmetic, relayout, masked_pool, collapsed_cloud,
          layout_motif]
GRAPH_MOTIFS = [gather, gather, scatter_back, scatter_back, squared_norm, arithmetic, union, ids_through_def]


# -- drawing a whole spec --------------------------------------------------------------------------

def draw(seed: int) -> tuple[Program, list]:
    """A random spec: its groups and inputs, 2-7 statements, and 1-2 outputs with claims."""
    rng = random.Random(seed)
    p = Program(rng, [], library=seed % 4 == 1)  # not drawn from rng: the other draws stay as they were
    scenario = rng.choice(["euclid", "euclid", "sets", "ragged", "graph"])
    euclid = rng.choice(["E(3)", "O(3)", "SO(3)", "SE(3)", "T(3)"])
    if scenario == "graph":  # an edge list over nodes N, whose ids S(N) relabels when declared so
        p.groups = [g for g in ("S(N)", euclid if rng.random() < 0.5 else None) if g]
        _input(p, Tensor("h", ("N", rng.choice([2, 3]))), rng.choice([None, "scalar"]))
        if len(p.groups) > 1:
            _input(p, Tensor("pos", ("N", 3)), "position")
        for name in ("senders", "receivers"):
            _input(p, Tensor(name, ("E",), "i"), "index(N)" if rng.random() < 0.85 else None)
    elif scenario == "ragged":  # rows R in sets S: S(R) moves rows with their ids, S(S) relabels the sets
        sets = rng.random() < 0.3
        p.groups = [g for g in ("S(R)", "S(S)" if sets else None, euclid if rng.random() < 0.5 else None) if g]
        _input(p, Tensor("x", ("R", rng.choice([2, 3]))), rng.choice([None, "scalar"]) if len(p.groups) else None)
        if euclid in p.groups:
            _input(p, Tensor("rpos", ("R", 3)), "position")
        _input(p, Tensor("ids", ("R",), "i"), "index(S)" if sets else None)
        _input(p, Tensor("offsets", ("K",), "i"), None)
        _input(p, Tensor("like", ("S", 1)), None)
    else:
        p.groups = [g for g in ("S(N)" if scenario == "sets" or rng.random() < 0.6 else None,
                                euclid if scenario == "euclid" else None) if g]
        if scenario == "euclid":
            _input(p, Tensor("pos", ("B", "N", 3)), "position")
            if rng.random() < 0.5:
                _input(p, Tensor("vel", ("B", "N", 3)), "vector")
        _input(p, Tensor("h", ("B", "N", rng.choice([2, 3]))), "scalar" if rng.random() < 0.5 else None)
        if rng.random() < 0.3:
            _input(p, Tensor("g", ("B", 2)), "scalar")
        if rng.random() < 0.5:
            p.masks[("B", "N")] = _input(p, Tensor("mask", ("B", "N"), "b"), None)
        if rng.random() < 0.15 and scenario == "euclid":
            p.masks[("B", "N", 3)] = _input(p, Tensor("cmask", ("B", "N", 3), "b"), None)
        if rng.random() < 0.2:
            _input(p, Tensor("tok", ("B", "N"), "i"), None)
        if scenario == "euclid" and rng.random() < 0.4:
            _static_cloud(p)
    steps = rng.randrange(2, 8)
    for _ in range(steps * 3):
        if len(p.lines) >= steps:
            break
        motifs = GRAPH_MOTIFS if scenario == "graph" else MOTIFS
        op = rng.choice(motifs if rng.random() < 0.5 else VOCABULARY)
        op(p)
    made = [t for t in p.scope if t not in [i[0] for i in p.inputs]] or p.scope[:1]
    made += [t for t in p.returned if any(line.startswith(f"  {t.name} =") for line in p.lines)]
    outputs = _index_outputs(p)
    coordinates = any(g[0] != "S" for g in p.groups)
    for t in made:  # every statement is an output: each fact the checker infers gets measured
        claims = [None, "invariant", "scalar"] + (["vector", "position"] * 2 if coordinates and t.dims[-1] == 3 else [])
        claim = INFERRED if rng.random() < 0.7 else rng.choice(claims)
        outputs.append((t.name, claim if p.groups else None))
    return p, outputs


def _index_outputs(p) -> list:
    """Index inputs returned as outputs (a layer that also returns its edge list), claimed what the
    checker infers, nothing, what they are, or wrongly invariant."""
    ids = [(t, role) for t, role in p.inputs if t.dtype == "i" and role and role.startswith("index(")]
    return [(t.name, p.rng.choice([INFERRED, INFERRED, None, role, "invariant"]) if p.groups else None)
            for t, role in ids if p.rng.random() < 0.5]


def _input(p, t: Tensor, role):
    p.inputs.append((t, role))
    if t.dtype == "f":
        p.scope.append(t)
    return t


# -- the independent numeric check -----------------------------------------------------------------

def sample(p: Program, gen: torch.Generator, empty_set: bool) -> dict:
    """float64 inputs: Gaussian floats, masks 70% true (one all-false row when `empty_set`), valid
    CSR offsets with an empty set, segment ids that leave a set empty, token ids in range, node ids
    of an edge list in range (no edge into the last node)."""
    feeds = {}
    for t, _ in p.inputs:
        shape = [SIZES.get(d, d) if isinstance(d, str) else d for d in t.dims]
        if t.name in ("senders", "receivers"):
            feeds[t.name] = torch.randint(0, SIZES["N"] - (t.name == "receivers"), shape, generator=gen)
        elif t.name == "offsets":
            inner = sorted(torch.randint(0, SIZES["R"] + 1, (SIZES["K"] - 3,), generator=gen).tolist())
            feeds[t.name] = torch.tensor([0, *inner, inner[-1], SIZES["R"]])  # one set is empty
        elif t.name == "ids":
            feeds[t.name] = torch.randint(0, SIZES["S"] - 1, shape, generator=gen)  # the last set is empty
        elif t.name == "tok":
            feeds[t.name] = torch.randint(0, 6, shape, generator=gen)
        elif t.dtype == "b":
            feeds[t.name] = _mask(shape, gen, empty_set)
        else:
            feeds[t.name] = torch.randn(shape, generator=gen, dtype=torch.float64)
    return feeds


def _mask(shape: list, gen: torch.Generator, empty_set: bool) -> torch.Tensor:
    """A mask that varies along every axis it has: one constant along some axis (the coordinates,
    say) hides a claim that fails where it varies. A set mask [B, S] of a set longer than 4 drops
    one random element per set, so that a kept cloud stays generic (at least 4 points, distinct
    covariance eigenvalues: frames are exact only there); a shorter one keeps every point; a mask
    of higher rank keeps each entry with probability 0.7. With `empty_set`, the first set keeps
    none."""
    if len(shape) == 2:
        m = torch.ones(shape, dtype=torch.bool)
        if shape[1] > 4:
            m[torch.arange(shape[0]), torch.randint(0, shape[1], (shape[0],), generator=gen)] = False
    else:
        m = torch.rand(shape, generator=gen) < 0.7
    if empty_set:
        m[0] = False
    return m


@dataclass
class Action:
    """One element of one declared group, acting on tensors by their declared kind."""
    dim: str | None = None              # the permuted dim
    perm: torch.Tensor | None = None
    rot: torch.Tensor | None = None
    shift: torch.Tensor | None = None

    def on(self, x: torch.Tensor, dims: tuple, kind: str | None) -> torch.Tensor:
        if self.dim is not None and kind == f"index({self.dim})":  # ids of elements: i is now at inverse[i]
            inverse = torch.empty_like(self.perm)
            inverse[self.perm] = torch.arange(len(self.perm))
            x = inverse[x]
        if self.dim is not None:
            for k, d in enumerate(dims):
                if d == self.dim:
                    x = x.index_select(k, self.perm)
            return x
        if kind in ("position", "vector") and self.rot is not None:
            x = x @ self.rot.T.to(x.dtype)
        if kind == "position" and self.shift is not None:
            x = x + self.shift.to(x.dtype)
        return x


def action(group: str, gen: torch.Generator, trial: int) -> Action:
    if group.startswith("S("):
        dim = group[2:-1]
        return Action(dim, torch.randperm(SIZES[dim], generator=gen))
    name = group.split("(")[0]
    rot = random_rotation(gen, reflect=name in ("O", "E") and trial % 2 == 1) if name != "T" else None
    shift = None
    if name in ("T", "E", "SE"):
        v = torch.randn(3, generator=gen, dtype=torch.float64)
        shift = v * (10.0 / v.norm())
    return Action(rot=rot, shift=shift)


def measure(module, p: Program, inputs: list, outputs: list, group: str, gen, trials: int = 2,
            absolute: bool = False) -> list:
    """For each (output, role): the worst relative (or absolute) error of f(g·x) against g·f(x) over
    `trials` elements of `group` (NaN stays NaN, and fails)."""
    dims_of = {t.name: t.dims for t, _ in p.inputs}
    role_of = {t.name: role for t, role in p.inputs}
    worst = [0.0] * len(outputs)
    with torch.no_grad():
        base = _tuple(module(*inputs))
        for trial in range(trials):
            g = action(group, gen, trial)
            moved = _tuple(module(*(g.on(x, dims_of[t.name], role_of[t.name])
                                    for x, (t, _) in zip(inputs, p.inputs))))
            for i, ((_, role, dims), y, z) in enumerate(zip(outputs, base, moved)):
                want = g.on(y, dims, {"scalar": None, "invariant": None}.get(role, role))
                err = _absolute(want, z) if absolute else _relative(want, z)
                if worst[i] == worst[i] and not err <= worst[i]:  # NaN, once seen, stays
                    worst[i] = err
    return worst


def _relative(want: torch.Tensor, got: torch.Tensor) -> float:
    """As invc verify measures (compiler/measure.py): NaN and infinities must stand where the group puts
    them, the finite rest is measured, and an output with no finite entry fails (NaN)."""
    if want.shape != got.shape:
        return float("nan")
    error = relative_error(want, got, 1e-6)
    return float("nan") if error == float("inf") else error


def _absolute(want: torch.Tensor, got: torch.Tensor) -> float:
    if want.shape != got.shape:
        return float("nan")
    return float((got - want).abs().max()) if want.numel() else 0.0


def rounding_only(module, p: Program, inputs: list, rows: list, group: str, state, i: int) -> bool:
    """Whether output i's error under `group` (measured from generator state `state`) shrinks with
    the precision as rounding does: the same measurement, same inputs and group elements, in float32
    and float64, compared absolutely (a relative error saturates in float32)."""
    errors = []
    for dtype in (torch.float32, torch.float64):
        gen = torch.Generator()
        gen.set_state(state)
        low = [x.to(dtype) if x.is_floating_point() else x for x in inputs]
        try:
            errors.append(measure(module.to(dtype), p, low, rows, group, gen, absolute=True)[i])
        except Exception:  # noqa: BLE001 - no float32 measurement: nothing says it is rounding
            module.to(torch.float64)
            return False
    return errors[1] <= ROUNDING_SHRINK * errors[0]


def _tuple(y) -> tuple:
    return tuple(y) if isinstance(y, (tuple, list)) else (y,)


# -- one spec through the harness ------------------------------------------------------------------

@dataclass
class Outcome:
    seed: int
    text: str
    status: str                          # ill-typed, crash, checked
    proved: list = field(default_factory=list)     # (output, group, claim, error)
    refused: list = field(default_factory=list)    # (output, group, claim, error, rule)
    rounding: list = field(default_factory=list)   # proved, an error above TOL that is float64 rounding
    crash: str = ""

    @property
    def false_proofs(self) -> list:
        return [r for r in self.proved if not r[3] <= TOL]


def run_spec(p: Program, outputs: list, seed: int) -> Outcome:
    text = p.text(outputs)
    try:
        program = _load(text)
        checked = check(program, prove=False)
        if any(claim == INFERRED for _, claim in outputs):
            text = p.text(_inferred_claims(checked, outputs))
            program = _load(text)
            checked = check(program, prove=False)
    except SpecError:
        return Outcome(seed, text, "ill-typed")
    except Exception as e:  # noqa: BLE001 - any other exception is a finding of the harness
        return Outcome(seed, text, "crash", crash=f"check: {type(e).__name__}: {e}")
    try:
        table = verdicts(checked) if len(checked.groups) else []
        _prints(checked, table)
        _enforce_agrees(program, table)
        return _numeric(checked, table, p, seed, text)
    except Exception as e:  # noqa: BLE001
        return Outcome(seed, text, "crash", crash=f"{type(e).__name__}: {e}")


def _inferred_claims(checked, outputs: list) -> list:
    """Each INFERRED output claims the role whose meaning matches the inferred facts under the most
    groups: the checker's own proofs, handed to the numbers."""
    facts = {(v.output, str(v.group)): v.fact for v in verdicts(checked)}
    shapes = {port.name: port.value.type.shape for port in checked.outputs}
    ids = {port.name for port in checked.outputs if port.value.type.dtype in INTS}
    index_roles = tuple(f"index({g.dim})" for g in checked.groups if hasattr(g, "dim") and isinstance(g.dim, str))

    def score(name, role):
        return sum(g.claim(shapes[name], role) == facts[name, str(g)] for g in checked.groups)

    def roles(name):  # integers are claimed invariant or indices, never coordinates
        return ("invariant", *index_roles) if name in ids else ROLE_OF_OUT

    return [(n, max(roles(n), key=lambda r: score(n, r)) if c == INFERRED else c) for n, c in outputs]


def _prints(checked, table: list) -> None:
    """Every fact the checker infers prints, as `invc check` prints it: the table, and the refusal
    of each failed claim."""
    if table:
        render(checked, table)
    for v in table:
        if not v.holds:
            refusal(v).render()


def _enforce_agrees(program, table: list) -> None:
    """check(prove=True) refuses exactly when some verdict fails, with a SpecError."""
    try:
        check(program)
        refused = False
    except SpecError:
        refused = True
    if refused != any(not v.holds for v in table):
        raise AssertionError("check(prove=True) disagrees with the verdict table")


def _numeric(checked, table, p: Program, seed: int, text: str) -> Outcome:
    from compiler.lower import lower
    out = Outcome(seed, text, "checked")
    claimed = [v for v in table if v.claim is not None]
    if not claimed:
        return out
    gen = torch.Generator().manual_seed(seed)
    module = redrawn(lower(checked, seed), seed)  # float64, every weight drawn again
    ports = {port.name: port for port in checked.outputs}
    for empty in (False, True):
        feeds = sample(p, gen, empty)
        inputs = [feeds[t.name] for t, _ in p.inputs]
        for group in {str(v.group) for v in claimed}:
            rows = [(port.name, port.role, port.value.type.shape) for port in checked.outputs]
            state = gen.get_state()
            errors = measure(module, p, inputs, rows, group, gen)
            for v in (v for v in claimed if str(v.group) == group):
                i = list(ports).index(v.output)
                if v.holds and errors[i] > TOL and rounding_only(module, p, inputs, rows, group, state, i):
                    out.rounding.append((v.output, group, str(v.claim), errors[i]))
                else:
                    _record(out, v, errors[i])
    return out


def _record(out: Outcome, v, err: float) -> None:
    """Keep the worst error (NaN included) per (output, group, claim); a refusal also names its rule."""
    key = (v.output, str(v.group), str(v.claim))
    rows = out.proved if v.holds else out.refused
    row = (*key, err) if v.holds else (*key, err, v.fact.reason.split(" ")[0] if isinstance(v.fact, Broken) else "claim")
    prior = next((i for i, r in enumerate(rows) if r[:3] == key), None)
    if prior is None:
        rows.append(row)
    elif not err <= rows[prior][3]:
        rows[prior] = row


def harness(seeds, shrink_failures: bool = True, progress: bool = False) -> tuple[Counter, list, Counter]:
    """Run the specs of `seeds`; returns the counts, the false proofs (shrunk) and crashes, and the
    conservative refusals per rule (claims refused that the numbers say hold)."""
    from tqdm import tqdm
    counts, findings, conservative = Counter(), [], Counter()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: a second thread only waits, and slows a loaded machine
    for seed in tqdm(seeds, disable=not progress, unit="spec"):
        p, outputs = draw(seed)
        o = run_spec(p, outputs, seed)
        counts["specs"] += 1
        counts[o.status] += 1
        counts["claims proved"] += len(o.proved)
        counts["claims refused"] += len(o.refused)
        counts["proved, error is float64 rounding"] += len(o.rounding)
        for r in o.refused:
            if r[3] <= TOL:
                conservative[r[4]] += 1
            counts["refused, numerically holds" if r[3] <= TOL else "refused, numerically broken"] += 1
        if o.status == "crash" or o.false_proofs:
            counts["false proofs"] += len(o.false_proofs)
            findings.append(shrink(o, p, outputs) if shrink_failures else o)
    torch.set_num_threads(threads)
    return counts, findings, conservative


def drawn_graph_ops(seeds) -> Counter:
    """How often each graph op appears in the well-typed specs of `seeds` (checked, not run): the
    guard that every op of the registry is drawn reads it."""
    ops = Counter()
    for seed in seeds:
        p, outputs = draw(seed)
        try:
            checked = check(_load(p.text([(n, None) for n, _ in outputs])), prove=False)
        except SpecError:
            continue
        ops.update(node.op for node in checked.nodes)
    return ops


def shrink(o: Outcome, p: Program, outputs: list) -> Outcome:
    """Delete statements, then defs, one at a time while the spec still shows the same kind of
    failure."""
    def fails(prog: Program) -> Outcome | None:
        inputs = {t.name for t, _ in prog.inputs}  # an input returned as an output stays one
        live = [(n, c) for n, c in outputs if n in inputs or any(line.startswith(f"  {n} =") for line in prog.lines)]
        if not live:
            return None
        r = run_spec(prog, live, o.seed)
        same = (r.status == "crash") if o.status == "crash" else bool(r.false_proofs)
        return r if same else None

    best = o
    changed = True
    while changed:
        changed = False
        for i in range(len(p.lines)):
            trial = replace(p, lines=p.lines[:i] + p.lines[i + 1:])
            r = fails(trial)
            if r is not None:
                p, best, changed = trial, r, True
                break
    for d in list(p.defs):  # a def no statement calls any more
        trial = Program(p.rng, p.groups, p.inputs, p.lines, [x for x in p.defs if x is not d], p.scope, p.masks)
        r = fails(trial)
        if r is not None:
            p, best = trial, r
    return best
