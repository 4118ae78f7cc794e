"""Values of the checker: tensor types with symbolic dims, and the elaborated graph it produces.

A dim is an int (static) or a str (symbolic): a plain name such as "N", or a product such as
"4*N" when a reshape merges axes. Everything here is torch-free so `invc check` stays fast.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from common.dtypes import DTYPES, FLOATS, INTS  # noqa: F401 - dsl's modules import them from here


@dataclass(frozen=True)
class TensorType:
    dtype: str
    shape: tuple

    @property
    def rank(self) -> int:
        return len(self.shape)

    def __str__(self) -> str:
        return f"{self.dtype}[{', '.join(map(str, self.shape))}]"


@dataclass(frozen=True)
class Sym:
    """A bare name used where an axis is expected: `sum(h, axis=N)`."""
    name: str


@dataclass(frozen=True)
class Value:
    """A tensor in the elaborated graph."""
    id: int
    name: str
    type: TensorType


@dataclass(frozen=True)
class ParamSpec:
    shape: tuple
    # "fan_in", "ones", "zeros", "normal", "given" (a captured model's weight, in `value`) or "fixed" (a
    # value its code builds, in `value`: not trained, not redrawn)
    init: str
    value: object = field(default=None, compare=False, repr=False)  # the tensor when init is "given" or "fixed"


@dataclass
class OpNode:
    """One call of a graph op (ops/): its torch form fn(*args, *params, **kwargs)."""
    value: Value
    op: str
    args: tuple
    kwargs: dict
    params: dict  # short name -> ParamSpec, in call order
    param_prefix: str
    pos: object
    origin: str = ""  # where a captured op came from: "aten.index_select.default in net.conv (GINConv)"


@dataclass
class Port:
    name: str
    type: TensorType
    role: str | None
    pos: object
    value: Value | None = None

    def __str__(self) -> str:
        return f"{self.name}: {self.type}" + (f" is {self.role}" if self.role else "")


@dataclass
class CheckedModel:
    name: str
    file: str
    source_hash: str
    params: dict
    inputs: list = field(default_factory=list)   # of Port
    nodes: list = field(default_factory=list)    # of OpNode
    outputs: list = field(default_factory=list)  # of Port, value set
    symmetry: tuple = ()                          # the model's `symmetry` declarations (ast exprs)
    groups: object = ()                           # those parsed and validated: a dsl.groups.Product
    vocabulary: object = field(default=None, repr=False, compare=False)  # the ops it was checked with

    def declarations(self) -> dict[str, str]:
        return {"model": self.name, "params": repr(self.params), "inputs": ", ".join(map(str, self.inputs)),
                "outputs": ", ".join(map(str, self.outputs))}

    def __str__(self) -> str:
        """The typed op list, one op a line: `h#3: f32[B, N, 64] = linear(x#0, h.weight)` (names may repeat,
        ids do not)."""
        def arg(a) -> str:
            return f"{a.name}#{a.id}" if isinstance(a, Value) else (
                f"[{', '.join(map(arg, a))}]" if isinstance(a, tuple) else repr(a))

        def call(n: OpNode) -> str:
            args = [*map(arg, n.args), *(n.param_prefix + p for p in n.params),
                    *(f"{k}={arg(v)}" for k, v in n.kwargs.items())]
            return f"{arg(n.value)}: {n.value.type} = {n.op}({', '.join(args)})"
        lines = [f"input  {arg(p.value)}: {p.type}" for p in self.inputs] + [call(n) for n in self.nodes]
        return "\n".join(lines + [f"output {p.name} = {arg(p.value)}" for p in self.outputs])


def dim_product(dims) -> int | str:
    """The product of dims, kept symbolic: 4 * N * 2 -> "8*N"; a sum or difference stays one factor,
    in parentheses: (K-1) * 3 -> "3*(K-1)", never "3*K-1"."""
    coeff, names = 1, []
    for d in dims:
        if isinstance(d, int):
            coeff *= d
            continue
        for factor in _top_level(str(d), "*"):
            if factor.isdigit():
                coeff *= int(factor)
            else:
                names.append(f"({factor})" if len(_top_level(factor, "+-")) > 1 else factor)
    if not names:
        return coeff
    return "*".join(([str(coeff)] if coeff != 1 else []) + sorted(names))


def _top_level(text: str, signs: str) -> list[str]:
    """`text` cut at the characters of `signs` that stand outside parentheses."""
    parts, depth, start = [], 0, 0
    for i, c in enumerate(text):
        depth += (c == "(") - (c == ")")
        if c in signs and depth == 0 and i > start:
            parts.append(text[start:i])
            start = i + 1
    return parts + [text[start:]]


def broadcast(a: tuple, b: tuple) -> tuple | str:
    """Numpy broadcasting over symbolic dims; returns the shape, or a reason why not."""
    out = []
    for i in range(1, max(len(a), len(b)) + 1):
        x = a[-i] if i <= len(a) else 1
        y = b[-i] if i <= len(b) else 1
        if x == y or y == 1:
            out.append(x)
        elif x == 1:
            out.append(y)
        else:
            return f"dim {x} does not match dim {y} (axis {-i})"
    return tuple(reversed(out))
