"""A step is a named function from one form of the model to the next, a pass one from a GraphModule to a
GraphModule; a pipeline is a printable list of steps."""
from __future__ import annotations

import functools
import inspect
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import torch
import torch.fx as fx


class PassError(Exception):
    """A pass refused the graph; the message names the node or module and the rule."""
    exit_code = 2


def graph_text(gm: fx.GraphModule) -> str:
    return str(gm.graph)


@dataclass(frozen=True)
class Step:
    name: str
    fn: Callable[[Any], Any]
    doc: str = ""
    show: Callable[[Any], str] = str  # the text of its result that --dump-after prints

    def __call__(self, value):
        return self.fn(value)

    def __str__(self) -> str:
        return f"{self.name:<18} {self.doc}"


@dataclass(frozen=True)
class Pass(Step):
    show: Callable[[fx.GraphModule], str] = graph_text

    def __call__(self, gm: fx.GraphModule) -> fx.GraphModule:
        """Run the pass, then check the graph and regenerate the module's code, once for every pass."""
        gm = self.fn(gm)
        gm.graph.lint()
        gm.recompile()
        return gm


def graph_pass(doc: str):
    """Decorator: turn `def name(gm) -> gm` into a Pass named after the function."""
    def wrap(fn):
        return Pass(fn.__name__, fn, doc)
    return wrap


def typed_call(graph: fx.Graph, target, args: tuple, shape: tuple, dtype: str) -> fx.Node:
    """A new call_function node carrying the shape and dtype the graph contract requires."""
    node = graph.call_function(target, args)
    node.meta.update(shape=shape, dtype=dtype)
    return node


@dataclass
class Pipeline:
    passes: list[Step] = field(default_factory=list)

    def __str__(self) -> str:
        return "\n".join(f"{i + 1:>2}. {p}" for i, p in enumerate(self.passes))

    def names(self) -> list[str]:
        return [p.name for p in self.passes]

    def run(self, value, dump_after: Iterable[str] = (), dump: Callable[[Step, Any], None] | None = None,
            seconds: dict | None = None):
        """The last step's result; `dump(step, result)` after each step named in `dump_after`, and each
        step's wall time in `seconds` when given."""
        wanted = set(dump_after)
        unknown = wanted - set(self.names())
        if unknown:
            raise PassError(f"--dump-after names no pass in the pipeline: {', '.join(sorted(unknown))} "
                            f"(passes: {', '.join(self.names())})")
        done: list[str] = []
        for p in self.passes:
            t0 = time.perf_counter()
            try:
                value = p(value)
            except Exception as e:  # a bug in a pass must still say which pass and what ran before
                if getattr(e, "exit_code", None) is not None:
                    raise  # a refusal that already says what is wrong (SpecError, PassError, ...)
                raise PassError(f"pass {p.name!r} failed after [{', '.join(done)}]: {e}") from e
            if seconds is not None:
                seconds[p.name] = time.perf_counter() - t0
            done.append(p.name)
            if p.name in wanted and dump is not None:
                dump(p, value)
        return value


# -- reading the graph contract (docs/graph-contract.md) that compiler/lower.py writes ---------------
@functools.lru_cache(maxsize=None)
def _signature(fn) -> inspect.Signature:
    return inspect.signature(fn)


def bound_args(node: fx.Node) -> dict:
    """A call_function node's arguments by parameter name, defaults filled in, in signature order."""
    bound = _signature(node.target).bind(*node.args, **node.kwargs)
    bound.apply_defaults()
    return dict(bound.arguments)


def attribute(gm: torch.nn.Module, target: str) -> torch.Tensor:
    """The tensor a get_attr target (`h.weight`) names."""
    return functools.reduce(getattr, target.split("."), gm)


def named_outputs(gm: fx.GraphModule) -> list[tuple[str, fx.Node]]:
    """(spec name, node) of each output in order, whether the module returns one tensor or several."""
    out = next(n for n in gm.graph.nodes if n.op == "output")
    nodes = out.args[0] if isinstance(out.args[0], (tuple, list)) else (out.args[0],)
    return list(zip(out.meta["names"], nodes))
