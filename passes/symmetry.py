"""The symmetry pass: re-prove the spec's output claims on the graph that will be emitted.

The checker proved them on the spec's op graph; passes rewrite that graph since (folded linears,
constants turned into buffers), so the pass runs the same rules (the model's vocabulary, ops/) over
the fx nodes, keyed by each target's name. It writes node.meta["symmetry"] = {group: fact} and
refuses, naming the node and its spec position, when a claim no longer holds.
"""
from __future__ import annotations

import torch.fx as fx

from dsl.groups import Fact, Invariant
from passes.base import named_outputs
from dsl.symmetry import first_failure, refusal, spelled, verdicts
from dsl.symmetry_rules import Call, Operand, apply
from passes.base import PassError, graph_pass

UNPLACED = "<optimized>:0:0"  # nodes that passes made have no spec position


def _operand(a, facts: dict):
    if isinstance(a, fx.Node):
        return Operand(facts[a], tuple(a.meta["shape"]), a.op == "placeholder")
    return tuple(_operand(x, facts) for x in a) if isinstance(a, (tuple, list)) else a


def _call(node: fx.Node, facts: dict, step: int, aliases: dict) -> Call:
    op, pos = node.target.__name__, node.meta.get("pos", UNPLACED)
    return Call(op, tuple(_operand(a, facts) for a in node.args),
                {k: _operand(v, facts) for k, v in node.kwargs.items()}, tuple(node.meta["shape"]),
                node.name, pos, step, spelled(op, pos, aliases), origin=node.meta.get("origin", ""))


def annotate(gm: fx.GraphModule, group) -> dict[str, Fact]:
    """Write every node's fact under `group` into its meta; return the outputs' facts by name."""
    model = gm.meta["invc"]
    roles, ops = {p.name: p.role for p in model.inputs}, model.vocabulary
    facts: dict[fx.Node, Fact] = {}
    for step, node in enumerate(gm.graph.nodes):
        if node.op == "placeholder":
            facts[node] = group.input_fact(tuple(node.meta["shape"]), roles[node.meta["name"]])
        elif node.op == "get_attr":
            facts[node] = Invariant()
        elif node.op == "call_function":
            facts[node] = apply(_call(node, facts, step, ops.aliases), group, ops.graph)
        else:
            continue
        node.meta.setdefault("symmetry", {})[str(group)] = facts[node]
    return {name: facts[n] for name, n in named_outputs(gm)}


@graph_pass("re-prove the spec's claimed output symmetries on the optimized graph")
def symmetry(gm: fx.GraphModule) -> fx.GraphModule:
    model = gm.meta.get("invc")
    if model is None or not len(model.groups):
        return gm
    failed = first_failure(verdicts(model, lambda group: annotate(gm, group)))
    if failed is not None:
        err = refusal(failed)
        node = getattr(failed.fact, "node", failed.output)
        raise PassError(f"symmetry: node `{node}` ({err.file}:{err.line}:{err.column}): {err.message}")
    return gm
