"""Run per-element MLPs on 2-D rows, as a rewrite rule, for the ONNX target.

    pattern      a maximal chain of row-wise ops (linear, per-element activations) on x [..., F]
                 of rank >= 3, each link the only user of the one before
    check        the chain holds a linear with a 2-D parameter weight (what becomes a Gemm)
    replacement  reshape(x, (-1, F)) -> the same chain on [rows, F] -> unflatten_rows(y, x)

onnxruntime fuses MatMul + Add (+ Relu) into one Gemm only for 2-D inputs; on 3-D inputs the
bias Add and the activation run as separate passes over memory (~30% of deepsets at batch 64).
Flattening merges the set axis into the rows, which the symmetry rules cannot follow, so this
pass runs after the symmetry check; the Triton backend matches row chains feeding reductions
itself, so it stays out of that target. `explain` lists why each chain was left alone.
"""
from __future__ import annotations

import torch.fx as fx

from passes.base import bound_args
from dsl.types import dim_product
from passes.base import graph_pass, typed_call
from passes.fold_constants import constant_nodes
from ops import elementwise
from ops.linear import linear
from ops.shape import reshape, unflatten_rows

ROW_WISE = {linear, elementwise.neg, *(getattr(elementwise, a) for a in elementwise.ACTIVATIONS)}


def _row_wise(node) -> bool:
    return isinstance(node, fx.Node) and node.op == "call_function" and node.target in ROW_WISE


def _next(node: fx.Node) -> fx.Node | None:
    """The link after `node`: its only user, when that user is row-wise on it."""
    users = list(node.users)
    if len(users) == 1 and _row_wise(users[0]) and users[0].args[0] is node:
        return users[0]
    return None


def pattern(node: fx.Node) -> list[fx.Node] | None:
    """The maximal chain starting at `node`, when no row-wise link feeds it."""
    if not _row_wise(node):
        return None
    prev = node.args[0]
    if _row_wise(prev) and _next(prev) is node:
        return None
    chain = [node]
    while (nxt := _next(chain[-1])) is not None:
        chain.append(nxt)
    return chain


def _gemm(node: fx.Node, consts: set[fx.Node]) -> bool:
    if node.target is not linear:
        return False
    weight = bound_args(node)["weight"]
    return weight in consts and len(weight.meta["shape"]) == 2


def check(chain: list[fx.Node], consts: set[fx.Node]) -> str | None:
    """None when the chain is worth flattening, else the reason it is not."""
    head = chain[0]
    rank = len(head.args[0].meta["shape"])
    if rank < 3:
        return f"chain {head.name}..{chain[-1].name} is on rank-{rank} rows already"
    if not any(_gemm(n, consts) for n in chain):
        return f"chain {head.name}..{chain[-1].name} holds no linear with a 2-D parameter weight"
    return None


def replace(graph: fx.Graph, chain: list[fx.Node]) -> None:
    x, last = chain[0].args[0], chain[-1]
    lead = x.meta["shape"][:-1]
    rows = dim_product(lead)
    with graph.inserting_before(chain[0]):
        flat = typed_call(graph, reshape, (x, (-1, x.meta["shape"][-1])),
                          (rows, x.meta["shape"][-1]), x.meta["dtype"])
    chain[0].args = (flat, *chain[0].args[1:])
    for node in chain:  # the links keep their names and weights; only their rows change shape
        node.meta["shape"] = (rows, node.meta["shape"][-1])
    with graph.inserting_after(last):
        out = typed_call(graph, unflatten_rows, (last, x), (*lead, last.meta["shape"][-1]),
                         last.meta["dtype"])
    last.replace_all_uses_with(out, delete_user_cb=lambda user: user is not out)


def _matches(gm: fx.GraphModule) -> list[list[fx.Node]]:
    return [c for c in map(pattern, gm.graph.nodes) if c is not None]


def explain(gm: fx.GraphModule) -> list[str]:
    """Why rows leaves each chain alone: one reason per refused chain."""
    consts = constant_nodes(gm.graph)
    return [r for r in (check(c, consts) for c in _matches(gm)) if r is not None]


@graph_pass("run per-element MLPs on [rows, F] so ONNX Gemm fuses bias and activation")
def rows(gm: fx.GraphModule) -> fx.GraphModule:
    consts = constant_nodes(gm.graph)
    for chain in _matches(gm):  # chains are disjoint, so rewriting one leaves the others valid
        if check(chain, consts) is None:
            replace(gm.graph, chain)
    return gm
