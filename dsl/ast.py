"""The .inv syntax tree: plain frozen dataclasses that keep their source position."""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Pos:
    file: str
    line: int
    column: int

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.column}"


# Expressions -------------------------------------------------------------------------------

@dataclass(frozen=True)
class Num:
    value: int | float
    pos: Pos


@dataclass(frozen=True)
class Str:
    value: str
    pos: Pos


@dataclass(frozen=True)
class Bool:
    value: bool
    pos: Pos


@dataclass(frozen=True)
class Name:
    id: str
    pos: Pos


@dataclass(frozen=True)
class List:
    items: tuple
    pos: Pos


@dataclass(frozen=True)
class BinOp:
    op: str  # one of + - * / @
    left: object
    right: object
    pos: Pos


@dataclass(frozen=True)
class Neg:
    operand: object
    pos: Pos


@dataclass(frozen=True)
class Kwarg:
    name: str
    value: object
    pos: Pos


@dataclass(frozen=True)
class Call:
    func: str
    args: tuple
    kwargs: tuple  # of Kwarg, in source order
    pos: Pos


# Statements --------------------------------------------------------------------------------

@dataclass(frozen=True)
class Param:
    name: str
    type: str | None  # None: a tensor argument of a def
    default: object | None
    pos: Pos


@dataclass(frozen=True)
class Input:
    name: str
    dtype: str
    dims: tuple
    role: str | None  # how declared groups act on it: position, vector, scalar
    pos: Pos


@dataclass(frozen=True)
class Output:
    name: str
    role: str | None  # the claim: invariant, position, vector, ...
    pos: Pos


@dataclass(frozen=True)
class Symmetry:
    groups: tuple
    pos: Pos


@dataclass(frozen=True)
class Assign:
    name: str
    value: object
    repeat: object | None
    pos: Pos
    more: tuple = ()  # further names `a, b = f(...)` binds, in order (a torch def's outputs)


@dataclass(frozen=True)
class Return:
    value: object
    pos: Pos


# Top level ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class Import:
    path: str
    pos: Pos


@dataclass(frozen=True)
class Model:
    name: str
    params: tuple
    body: tuple
    pos: Pos


@dataclass(frozen=True)
class Def:
    name: str
    params: tuple
    body: tuple
    pos: Pos


@dataclass(frozen=True)
class TorchDef:
    """`def name = torch("pkg.module:factory", k=v, ...)` or `torch("file.pt2")`: an existing torch model."""
    name: str
    source: str      # "pkg.module:factory" or a path to a saved ExportedProgram
    kwargs: tuple    # of Kwarg: the factory's arguments
    pos: Pos


@dataclass(frozen=True)
class Spec:
    file: str
    source: str
    items: tuple = field(default=())

    def of(self, kind) -> list:
        return [i for i in self.items if isinstance(i, kind)]
