"""How much work one spec may ask for. A hostile or mistyped spec (`repeat 100000`, a 5,000-digit
literal, an expression nested 500 deep, /dev/zero as the spec) is refused with a SpecError that
names the limit, instead of running out of time, memory or Python stack.

The CLI raises a limit with `--limit NAME=VALUE`; Python callers with `with limits.using(nodes=...)`.
"""
from __future__ import annotations

from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, fields, replace


@dataclass(frozen=True)
class Limits:
    spec_bytes: int = 32 << 10        # size of a spec and its imports (lark parses ~35k tokens/s)
    depth: int = 100                  # nesting of expressions, and of def calls inside def calls
    repeat: int = 1_000               # count of one `repeat`
    nodes: int = 20_000               # ops in the elaborated model (a transformer layer is about 8)
    parameters: int = 1_000_000_000   # weight elements of the model (4 GB in f32)


# Every int a spec computes (dims, counts, parameters) must fit the int64 of an ONNX shape. A fact of
# the targets, not a knob: it also keeps Python from printing integers of thousands of digits.
INT_MAX = 2**63 - 1

_current: ContextVar[Limits] = ContextVar("invc_limits", default=Limits())


def current() -> Limits:
    return _current.get()


@contextmanager
def using(**changes: int):
    """Raise (or lower) limits for the specs checked inside the block."""
    token = _current.set(replace(current(), **changes))
    try:
        yield current()
    finally:
        _current.reset(token)


def names() -> list[str]:
    return [f.name for f in fields(Limits)]


def exceeded(what: str, name: str) -> tuple[str, str]:
    """The message and hint of a refusal for going over limit `name`."""
    value = getattr(current(), name)
    return (f"{what} exceeds the limit {name}={value:,}",
            f"if this is intended, raise it: invc ... --limit {name}=N "
            f"(Python: with dsl.limits.using({name}=N))")
