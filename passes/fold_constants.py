"""Constant folding: compute at compile time every op whose inputs are all parameters or literals.

Parameters are treated as frozen. Each folded value that a run-time node (or the output) reads
becomes a registered buffer behind a new get_attr node; the ops and parameters it came from are
left unused for `dce` to remove.
"""
from __future__ import annotations

import torch
import torch.fx as fx
from torch.fx.node import map_arg

from passes.base import attribute
from passes.base import graph_pass


def constant_nodes(graph: fx.Graph) -> set[fx.Node]:
    """get_attr nodes, and call_function nodes whose node inputs are all constant."""
    consts: set[fx.Node] = set()
    for node in graph.nodes:  # topological order: a node's inputs are decided before it
        if node.op == "get_attr" or (node.op == "call_function"
                                     and all(i in consts for i in node.all_input_nodes)):
            consts.add(node)
    return consts


def _evaluate(gm: fx.GraphModule, consts: set[fx.Node]) -> dict[fx.Node, torch.Tensor]:
    values: dict[fx.Node, torch.Tensor] = {}
    with torch.no_grad():
        for node in gm.graph.nodes:
            if node in consts and node.op == "get_attr":
                values[node] = attribute(gm, node.target)
            elif node in consts:
                args, kwargs = map_arg((node.args, node.kwargs), values.__getitem__)
                values[node] = node.target(*args, **kwargs)
    return values


def _fresh_name(gm: fx.GraphModule, base: str) -> str:
    name, i = base, 1
    while hasattr(gm, name):  # an earlier run may have used the same node name
        name, i = f"{base}_{i}", i + 1
    return name


def _materialize(gm: fx.GraphModule, node: fx.Node, value: torch.Tensor) -> None:
    name = _fresh_name(gm, f"folded_{node.name}")
    # A copy, not a view: a folded reshape or permute must not alias a parameter dce will drop,
    # and serializers want the dense row-major layout.
    gm.register_buffer(name, value.detach().clone(memory_format=torch.contiguous_format))
    with gm.graph.inserting_before(node):
        attr = gm.graph.get_attr(name)
    attr.meta.update(shape=node.meta["shape"], dtype=node.meta["dtype"])
    node.replace_all_uses_with(attr)
    gm.graph.erase_node(node)


@graph_pass("compute ops on parameters and literals at compile time, as buffers")
def fold_constants(gm: fx.GraphModule) -> fx.GraphModule:
    consts = constant_nodes(gm.graph)
    folded = [n for n in gm.graph.nodes if n in consts and n.op == "call_function"]
    values = _evaluate(gm, consts)
    # Only values read at run time need a buffer; constants feeding other constants die with them.
    for node in folded:
        if any(u not in consts for u in node.users):
            _materialize(gm, node, values[node])
    return gm
