"""A pass is a named function from a GraphModule to a GraphModule; a pipeline is a printable list of them."""
from __future__ import annotations

import functools
import inspect
from dataclasses import dataclass, field
from typing import Callable, Iterable

import torch
import torch.fx as fx


class PassError(Exception):
    """A pass refused the graph; the message names the node or module and the rule."""
    exit_code = 2


@dataclass(frozen=True)
class Pass:
    name: str
    fn: Callable[[fx.GraphModule], fx.GraphModule]
    doc: str = ""

    def __call__(self, gm: fx.GraphModule) -> fx.GraphModule:
        """Run the pass, then check the graph and regenerate the module's code, once for every pass."""
        gm = self.fn(gm)
        gm.graph.lint()
        gm.recompile()
        return gm

    def __str__(self) -> str:
        return f"{self.name:<18} {self.doc}"


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
    passes: list[Pass] = field(default_factory=list)

    def __str__(self) -> str:
        return "\n".join(f"{i + 1:>2}. {p}" for i, p in enumerate(self.passes))

    def names(self) -> list[str]:
        return [p.name for p in self.passes]

    def run(self, gm: fx.GraphModule, dump_after: Iterable[str] = (),
            dump: Callable[[str, fx.GraphModule], None] | None = None) -> fx.GraphModule:
        wanted = set(dump_after)
        unknown = wanted - set(self.names())
        if unknown:
            raise PassError(f"--dump-after names no pass in the pipeline: {', '.join(sorted(unknown))} "
                            f"(passes: {', '.join(self.names())})")
        done: list[str] = []
        for p in self.passes:
            try:
                gm = p(gm)
            except PassError:
                raise
            except Exception as e:  # a bug in a pass must still say which pass and what ran before
                raise PassError(f"pass {p.name!r} failed after [{', '.join(done)}]: {e}") from e
            done.append(p.name)
            if p.name in wanted and dump is not None:
                dump(p.name, gm)
        return gm


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
