"""Symmetry groups and symmetry facts: small immutable values that print, compare and combine.

    S(N)    permutations of the symbolic dim N, on every input that has it, and relabelling of
            the values of inputs declared `is index(N)` (node ids of an edge list)
    O(3)    rotations and reflections of a size-3 coordinate axis; SO(3) rotations only
    T(3)    translations of positions
    E(3)    O(3) ⋉ T(3); SE(3) = SO(3) ⋉ T(3)

A product `S(N) × E(3)` combines groups that act on different axes. A fact says how one tensor
transforms under one group: invariant, permuted along axes, rotated like a vector, moved like a
position, or broken (with the op and the rule that broke it). Every fact says what it is in words
(`describe`, for the table `invc check` prints and for claims) and names a tensor that has it
(`noun`, for refusals), so any fact the prover infers can be printed. Torch-free: `invc check` uses it.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

from dsl import ast
from dsl.errors import SpecError, did_you_mean
from dsl.types import FLOATS, INTS

ROLES = ("position", "vector", "scalar", "invariant")  # scalar and invariant mean the same
INDEX = re.compile(r"index\((\w+)\)")  # the role of integer positions along a set dim


def indexed_dim(role: str | None) -> str | None:
    """N for the role `index(N)`, else None."""
    found = INDEX.fullmatch(role or "")
    return found.group(1) if found else None


# Facts --------------------------------------------------------------------------------------

@dataclass(frozen=True, eq=False)
class Invariant:
    """Unchanged by the group. Every invariant transforms alike, so all compare equal."""
    def __str__(self) -> str:
        return "invariant"

    def describe(self, shape: tuple) -> str:
        return "invariant"

    def noun(self, shape: tuple) -> str:
        return "an invariant"

    def __eq__(self, other) -> bool:
        return isinstance(other, Invariant)

    def __hash__(self) -> int:
        return hash(Invariant)


@dataclass(frozen=True, eq=False)
class Simplex(Invariant):
    """Invariant weights that sum to one along `axis` (a softmax): weighting positions by them and
    summing over `axis` gives a convex combination, which is a position."""
    axis: int = -1

    def __str__(self) -> str:
        return f"invariant weights summing to one along axis {self.axis}"


@dataclass(frozen=True, eq=False)
class Uniform(Invariant):
    """Invariant, and equal at every place along `axes` (ones, a broadcast copy, a count of rows per
    set repeated over columns): dividing a vector by one uniform along its coordinates scales each
    vector by one value. Each op says which axes its result keeps uniform (GraphOp.uniform)."""
    axes: tuple = ()

    def __str__(self) -> str:
        return f"invariant, uniform along axis {', '.join(map(str, self.axes))}"


@dataclass(frozen=True)
class Permuted:
    """The group's permutation reorders each of these axes (the same permutation on each).

    `by` names a frame basis when the permutation is that frame's relabeling of its F frames under
    a rotation (frame averaging folds frames into axis 0); "*" marks identical copies per frame,
    which any relabeling leaves alone; "" is the group's own permutation, S(N). A layout names
    the permutation it induces on an axis that joins sets: "[N]+[N]" (two sets concatenated, π ⊕ π),
    "B*[N]" (B sets of N flattened into one axis, π within each)."""
    axes: tuple
    by: str = ""

    def __str__(self) -> str:
        layout = self.by and not (self.by.isidentifier() or self.by == "*")  # "[N]+[N]", "B*[N]"
        frames = f" ({self.by})" if layout else f" (frames of {self.by})" if self.by else ""
        return f"permuted on axis {', '.join(map(str, self.axes))}{frames}"

    def describe(self, shape: tuple) -> str:
        return "permuted along " + ", ".join(str(shape[k]) for k in self.axes)

    def noun(self, shape: tuple) -> str:
        return "a tensor " + self.describe(shape)


@dataclass(frozen=True)
class Relabeled:
    """Integer positions along the permuted dim `dim` (an `index(N)` input): S(N) maps each value i
    to the new place of element i, and reorders `axes` too, by the permutation `by` names as
    Permuted's does ("" the group's own; "E+[N]" an edge list with self loops appended: fixed,
    then permuted). Only ops that read indices take it (gather, scatter_pool, select, compare);
    an output claimed `is index(N)` is one."""
    axes: tuple = ()
    dim: str = ""
    by: str = ""

    def __str__(self) -> str:
        layout = f" ({self.by})" if self.by else ""
        return "relabelled indices" + (f", permuted on axis {', '.join(map(str, self.axes))}{layout}" if self.axes else "")

    def describe(self, shape: tuple) -> str:
        moved = f", permuted along {', '.join(str(shape[k]) for k in self.axes)}" if self.axes else ""
        return f"relabelled indices of {self.dim}{moved}"

    def noun(self, shape: tuple) -> str:
        return f"indices of {self.dim}"


@dataclass(frozen=True)
class Rotated:
    """Rotated like a vector: y(g·x) = R y(x) along `axis`."""
    axis: int

    def __str__(self) -> str:
        return f"rotated like a vector on axis {self.axis}"

    def describe(self, shape: tuple) -> str:
        return "rotated like a vector"

    def noun(self, shape: tuple) -> str:
        return "a vector"


@dataclass(frozen=True)
class Translated:
    """Moved like a position: y(g·x) = R y(x) + t along `axis`."""
    axis: int

    def __str__(self) -> str:
        return f"moved like a position on axis {self.axis}"

    def describe(self, shape: tuple) -> str:
        return "moved like a position"

    def noun(self, shape: tuple) -> str:
        return "a position"


@dataclass(frozen=True)
class Squared:
    """Coordinate-wise products of two rotated tensors: their sum along `axis` is invariant."""
    axis: int

    def __str__(self) -> str:
        return f"coordinate products on axis {self.axis}"

    def describe(self, shape: tuple) -> str:
        return "coordinate products"

    def noun(self, shape: tuple) -> str:
        return "coordinate products"


@dataclass(frozen=True)
class Outer:
    """A rank-2 tensor on two coordinate axes, y(g·x) = R y Rᵀ: an outer product v wᵀ or a
    covariance Xᵀ X of vectors. Only a matmul (which contracts it with a vector back to a vector)
    and a transpose read it; every other op breaks it."""
    axes: tuple

    def __str__(self) -> str:
        return f"rank-2 tensor on axes {', '.join(map(str, self.axes))}"

    def describe(self, shape: tuple) -> str:
        return "rotated like a rank-2 tensor (R y Rᵀ)"

    def noun(self, shape: tuple) -> str:
        return "a rank-2 tensor (an outer product)"


@dataclass(frozen=True)
class Stacked:
    """Vectors (or positions) laid end to end along `axis`, as a concat along the coordinates makes
    them: only a reshape that splits `axis` into [count, 3] reads it, giving the vectors back."""
    axis: int
    positions: bool = False

    def __str__(self) -> str:
        return f"stacked {'positions' if self.positions else 'vectors'} on axis {self.axis}"

    def describe(self, shape: tuple) -> str:
        return f"{'positions' if self.positions else 'vectors'} stacked along one axis"

    def noun(self, shape: tuple) -> str:
        return f"{'positions' if self.positions else 'vectors'} stacked along the coordinates"


@dataclass(frozen=True)
class Weighted:
    """Positions (coordinates on `axis`) times Simplex weights along `over`: only their sum over
    `over` means something, a position; every other op breaks it."""
    axis: int
    over: int

    def __str__(self) -> str:
        return f"positions weighted along axis {self.over}"

    def describe(self, shape: tuple) -> str:
        return "softmax-weighted positions"

    def noun(self, shape: tuple) -> str:
        return "softmax-weighted positions"


@dataclass(frozen=True)
class FrameBasis:
    """A frame basis [B, F, 3, 3]: rotated along its rows, its F frames relabeled by a rotation."""
    node: str

    def __str__(self) -> str:
        return f"frame basis {self.node}"

    def describe(self, shape: tuple) -> str:
        return "a frame basis (rows rotated, frames relabelled by a rotation)"

    def noun(self, shape: tuple) -> str:
        return "a frame basis"


@dataclass(frozen=True)
class Broken:
    """No symmetry is known: `node` (at spec position `pos`) broke it, for `reason`."""
    reason: str
    node: str
    pos: str
    hint: str | None = field(default=None, compare=False)
    step: int = field(default=0, compare=False)  # the node's place in program order

    def __str__(self) -> str:
        return f"broken: {self.reason} ({self.pos})"

    def describe(self, shape: tuple) -> str:
        return "broken"

    def noun(self, shape: tuple) -> str:
        return "a tensor whose symmetry is broken"


Fact = (Invariant | Permuted | Relabeled | Rotated | Translated | Squared | Outer | Stacked | Weighted | FrameBasis |
        Broken)


# Groups -------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Permutations:
    """S(dim): reorders the symbolic dim `dim` of every tensor that has it."""
    dim: str
    rotates = reflects = translates = False  # moves no coordinates: rules may ask any group

    def __str__(self) -> str:
        return f"S({self.dim})"

    @property
    def acts_on(self) -> str:
        return f"dim {self.dim}"

    def __mul__(self, other) -> Product:
        return Product((self,)) * other

    def normalize(self, fact: Fact) -> Fact:
        return fact

    def input_fact(self, shape: tuple, role: str | None) -> Fact:
        axes = tuple(i for i, d in enumerate(shape) if d == self.dim)
        if indexed_dim(role) == self.dim:
            return Relabeled(axes, self.dim)
        return Permuted(axes) if axes else Invariant()

    def claim(self, shape: tuple, role: str | None) -> Fact | None:
        """What a claimed output must be: permuted along its own `dim` axes, else invariant."""
        return None if role is None else self.input_fact(shape, role)


EUCLIDEAN = {"O": (True, False), "SO": (True, False), "T": (False, True), "E": (True, True),
             "SE": (True, True)}  # name -> (rotates, translates)


@dataclass(frozen=True)
class Euclidean:
    """O(3), SO(3), T(3), E(3) or SE(3), acting on the last (size-3) axis of positions and vectors."""
    name: str
    dim: int = 3

    def __str__(self) -> str:
        return f"{self.name}({self.dim})"

    @property
    def acts_on(self) -> str:
        return "coordinates"

    @property
    def rotates(self) -> bool:
        return EUCLIDEAN[self.name][0]

    @property
    def reflects(self) -> bool:
        return self.name in ("O", "E")

    @property
    def translates(self) -> bool:
        return EUCLIDEAN[self.name][1]

    def __mul__(self, other) -> Product:
        return Product((self,)) * other

    def normalize(self, fact: Fact) -> Fact:
        """Without rotations a vector is invariant; without translations a position is a vector."""
        if not self.rotates and isinstance(fact, (Rotated, Squared, Outer, FrameBasis)):
            return Invariant()
        if isinstance(fact, Stacked) and fact.positions and not self.translates:
            return self.normalize(Stacked(fact.axis))
        if isinstance(fact, Stacked) and not (fact.positions or self.rotates):
            return Invariant()
        if not self.translates and isinstance(fact, (Translated, Weighted)):
            return self.normalize(Rotated(fact.axis))
        return fact

    def input_fact(self, shape: tuple, role: str | None) -> Fact:
        last = len(shape) - 1
        kind = {"position": Translated, "vector": Rotated}.get(role)
        return self.normalize(kind(last)) if kind else Invariant()

    def claim(self, shape: tuple, role: str | None) -> Fact | None:
        return None if role is None else self.input_fact(shape, role)


Group = Permutations | Euclidean


@dataclass(frozen=True)
class Product:
    """Groups acting on different axes; equivariance to each factor gives it to the product."""
    factors: tuple = ()

    def __str__(self) -> str:
        return " × ".join(map(str, self.factors)) or "1"

    def __iter__(self):
        return iter(self.factors)

    def __len__(self) -> int:
        return len(self.factors)

    def __mul__(self, other) -> Product:
        more = other.factors if isinstance(other, Product) else (other,)
        for g in more:
            clash = next((f for f in self.factors if f.acts_on == g.acts_on), None)
            if clash is not None:
                raise ValueError(f"{clash} and {g} both act on {g.acts_on}; a product needs "
                                 "groups on different axes")
        return Product(self.factors + more)

    @property
    def euclidean(self) -> Euclidean | None:
        return next((g for g in self.factors if isinstance(g, Euclidean)), None)


# From the spec ------------------------------------------------------------------------------

def parse_group(expr) -> Product:
    """`S(N)`, `E(3)`, ... or a product `S(N) * E(3)`, as written in a `symmetry` statement."""
    if isinstance(expr, ast.BinOp) and expr.op == "*":
        return _product(parse_group(expr.left), parse_group(expr.right), expr.pos)
    if not isinstance(expr, ast.Call) or expr.kwargs or len(expr.args) != 1:
        raise SpecError.at(expr.pos, "a symmetry is a group such as S(N), O(3), SO(3), T(3), E(3) or SE(3)")
    if expr.func == "S":
        (arg,) = expr.args
        if not isinstance(arg, ast.Name):
            raise SpecError.at(arg.pos, "S(...) takes the name of a symbolic dim", "for example S(N)")
        return Product((Permutations(arg.id),))
    if expr.func not in EUCLIDEAN:
        raise SpecError.at(expr.pos, f"unknown group `{expr.func}`",
                           did_you_mean(expr.func, ["S", *EUCLIDEAN]) or "groups: S, O, SO, T, E, SE")
    (arg,) = expr.args
    if not isinstance(arg, ast.Num) or arg.value != 3:
        raise SpecError.at(arg.pos, f"{expr.func}(...) acts on 3-D coordinates only", f"write {expr.func}(3)")
    return Product((Euclidean(expr.func),))


def _product(a: Product, b: Product, pos) -> Product:
    try:
        return a * b
    except ValueError as e:
        hint = "E(3) already contains O(3), SO(3), T(3) and SE(3)" if b.euclidean and a.euclidean else None
        raise SpecError.at(pos, str(e), hint) from None


def declare(model) -> Product:
    """The model's groups, once its inputs, outputs and roles agree with them; else a SpecError."""
    groups = Product()
    for expr in model.symmetry:
        groups = _product(groups, parse_group(expr), expr.pos)
    for port in model.inputs:
        _check_role(port, groups, "input")
    for g, expr in zip(groups, _group_exprs(model.symmetry)):
        _check_acts(model, g, expr.pos)
    for port in model.outputs:
        _check_role(port, groups, "output")
    return groups


def _group_exprs(exprs) -> list:
    """The expression of each factor, in order, to point errors at."""
    out = []
    for e in exprs:
        out += _group_exprs((e.left, e.right)) if isinstance(e, ast.BinOp) else [e]
    return out


def _check_acts(model, g: Group, pos) -> None:
    if isinstance(g, Permutations):
        dims = {d for p in model.inputs for d in p.type.shape if isinstance(d, str)}
        if g.dim not in dims:
            raise SpecError.at(pos, f"{g} permutes dim {g.dim}, but no input has a dim named {g.dim}",
                               did_you_mean(g.dim, dims) or f"input dims: {', '.join(sorted(dims)) or 'none'}")
    elif not any(p.role in ("position", "vector") for p in model.inputs):
        raise SpecError.at(pos, f"{g} acts on no input",
                           "mark the inputs it moves: `input pos: f32[B, N, 3] is position` (or `is vector`)")


def _check_role(port, groups: Product, kind: str) -> None:
    if port.role is None:
        return
    if indexed_dim(port.role) is not None:
        return _check_index(port, groups, kind)
    if port.role not in ROLES:
        raise SpecError.at(port.pos, f"unknown role `{port.role}` for {kind} `{port.name}`",
                           did_you_mean(port.role, ROLES) or f"roles: {', '.join(ROLES)}, index(N)")
    if not len(groups):
        raise SpecError.at(port.pos, f"{kind} `{port.name}` is declared {port.role}, but the model "
                                     "declares no symmetry", "add `symmetry S(N)` or `symmetry E(3)` ...")
    if port.role in ("position", "vector"):
        _check_coordinates(port, groups, kind)


def _check_index(port, groups: Product, kind: str) -> None:
    dim = indexed_dim(port.role)
    if port.value.type.dtype not in INTS:
        raise SpecError.at(port.pos, f"{kind} `{port.name}` is {port.role}, so it must hold integers, "
                                     f"got {port.value.type}", "declare it i64[...]" if kind == "input" else
                           "only an integer tensor holds indices; claim invariant or leave it unclaimed")
    if Permutations(dim) not in groups.factors:
        raise SpecError.at(port.pos, f"{kind} `{port.name}` is {port.role}, but the model does not declare S({dim})",
                           f"add `symmetry S({dim})`, or drop the role")


def _check_coordinates(port, groups: Product, kind: str) -> None:
    g = groups.euclidean
    if g is None:
        raise SpecError.at(port.pos, f"{kind} `{port.name}` is a {port.role}, but the model declares "
                                     "no Euclidean group", "add `symmetry E(3)` (or O(3), SO(3), T(3), SE(3))")
    type_ = port.value.type
    if not type_.shape or type_.shape[-1] != 3:
        raise SpecError.at(port.pos, f"{kind} `{port.name}` is a {port.role}, so {g} acts on its last "
                                     f"axis, which has size {type_.shape[-1] if type_.shape else 'none'}, not 3",
                           "put the 3 coordinates on the last axis, e.g. f32[B, N, 3]")
    if type_.dtype not in FLOATS:
        raise SpecError.at(port.pos, f"{kind} `{port.name}` is a {port.role}, so it must be a float tensor, "
                                     f"got {type_}")
