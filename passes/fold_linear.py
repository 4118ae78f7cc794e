"""Fold two linear maps with nothing between them into one, as a rewrite rule.

    pattern      linear(linear(x, W1, b1), W2, b2)
    check        the inner result has one user; weights and biases are parameters; the fold
                 does not grow the weights (a low-rank pair stays two cheap matmuls)
    replacement  linear(x, matmul(W2, W1), linear(b1, W2, b2))

The new weight and bias are graph nodes over parameters, so `fold_constants` materializes them.
`explain` lists why each match was refused.
"""
from __future__ import annotations


import torch.fx as fx

from passes.base import bound_args
from passes.base import graph_pass, typed_call
from passes.fold_constants import constant_nodes
from ops.linear import linear, matmul

def _operands(node: fx.Node) -> tuple:
    """(x, weight, bias) of a linear node, however its args were spelled."""
    a = bound_args(node)
    return a["x"], a["weight"], a["bias"]


def _is_linear(a) -> bool:
    return isinstance(a, fx.Node) and a.op == "call_function" and a.target is linear


def pattern(node: fx.Node) -> tuple[fx.Node, fx.Node] | None:
    """(outer, inner) when `node` is a linear applied to a linear's result."""
    if _is_linear(node) and _is_linear(_operands(node)[0]):
        return node, _operands(node)[0]
    return None


def check(outer: fx.Node, inner: fx.Node, consts: set[fx.Node]) -> str | None:
    """None when the fold applies, else the reason it does not."""
    if len(inner.users) > 1:
        return f"inner linear {inner.name} of {outer.name} has {len(inner.users)} users"
    for node in (outer, inner):
        for role, a in zip(("weight", "bias"), _operands(node)[1:]):
            if a is not None and a not in consts:
                return f"{role} {a.name} of {node.name} is computed at run time, not a parameter"
    w1, w2 = _operands(inner)[1].meta["shape"], _operands(outer)[1].meta["shape"]
    if len(w1) != 2 or len(w2) != 2:
        return f"weights of {inner.name} and {outer.name} are not both 2-D"
    (mid, n_in), (n_out, _) = w1, w2
    if n_out * n_in > mid * (n_in + n_out):
        return (f"folding {inner.name} into {outer.name} grows the weights: [{n_out}, {n_in}] "
                f"is larger than [{mid}, {n_in}] + [{n_out}, {mid}]")
    return None


def _folded_bias(graph: fx.Graph, w2: fx.Node, b1, b2):
    # W2 @ b1 + b2 is linear(b1, W2, b2); with no b1 the bias is just b2 (maybe None).
    if b1 is None:
        return b2
    return typed_call(graph, linear, (b1, w2, b2), (w2.meta["shape"][0],), w2.meta["dtype"])


def replace(graph: fx.Graph, outer: fx.Node, inner: fx.Node) -> None:
    (x, w1, b1), (_, w2, b2) = _operands(inner), _operands(outer)
    with graph.inserting_before(outer):
        w = typed_call(graph, matmul, (w2, w1), (w2.meta["shape"][0], w1.meta["shape"][1]),
                       w2.meta["dtype"])
        b = _folded_bias(graph, w2, b1, b2)
    # Rewriting outer in place keeps its name (the spec's binding), meta and users.
    outer.args, outer.kwargs = (x, w, b), {}
    graph.erase_node(inner)


def explain(gm: fx.GraphModule) -> list[str]:
    """Why fold_linear leaves each linear-of-linear alone: one reason per refused match."""
    consts = constant_nodes(gm.graph)
    matches = [m for m in map(pattern, gm.graph.nodes) if m is not None]
    reasons = (check(outer, inner, consts) for outer, inner in matches)
    return [r for r in reasons if r is not None]


@graph_pass("fold linear(linear(x)) into one linear of multiplied weights")
def fold_linear(gm: fx.GraphModule) -> fx.GraphModule:
    consts = constant_nodes(gm.graph)
    # A snapshot in topological order: in a chain L3(L2(L1(x))), L3 then sees the folded L2∘L1.
    for node in list(gm.graph.nodes):
        match = pattern(node)
        if match is None or check(*match, consts) is not None:
            continue
        replace(gm.graph, *match)
        # The new weight and bias are built from parameters only, so later checks count them as such.
        consts.update(a for a in _operands(node)[1:] if a is not None)
    return gm
