"""Common-subexpression elimination: one node per distinct (op, target, arguments)."""
from __future__ import annotations

import torch.fx as fx

from passes.base import graph_pass


def _freeze(a):
    """A hashable key for an argument that tells apart what ops tell apart."""
    if isinstance(a, (list, tuple)):
        return type(a), tuple(_freeze(x) for x in a)
    if isinstance(a, float):
        return float, repr(a)  # 0.0 == -0.0, yet add(x, -0.0) keeps a negative zero that add(x, 0.0) loses
    return type(a), a  # the type keeps 1, 1.0 and True apart; nodes compare by identity


def _key(node: fx.Node):
    if node.op == "get_attr":
        return "get_attr", node.target
    return node.target, _freeze(node.args), _freeze(tuple(sorted(node.kwargs.items())))


@graph_pass("merge ops with the same target and arguments, and repeated get_attr")
def cse(gm: fx.GraphModule) -> fx.GraphModule:
    seen: dict = {}
    for node in list(gm.graph.nodes):
        if node.op not in ("call_function", "get_attr"):
            continue
        # Topological order: a node's inputs were merged already, so equal keys mean equal values.
        first = seen.setdefault(_key(node), node)
        if first is not node:
            node.replace_all_uses_with(first)
            gm.graph.erase_node(node)
    return gm
