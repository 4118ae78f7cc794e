"""Reading an exported ATen graph: which ops carry a tensor unchanged, which node is a linear map,
which module a node belongs to, and which parameter a placeholder stands for."""
from __future__ import annotations

import torch
import torch.fx as fx

from passes.base import PassError

aten = torch.ops.aten

# Ops that pass the hidden state through without mixing its last axis: rotating the input
# rotates the output the same way (dropout is the identity in eval mode).
_CARRIERS = {
    aten.to.dtype, aten.to.dtype_layout, aten.to.device, aten._to_copy.default, aten.alias.default,
    aten.clone.default, aten.contiguous.default, aten.dropout.default, aten.view.default,
    aten.reshape.default, aten._unsafe_view.default, aten.type_as.default, aten.detach.default,
}
_CHECKS = {aten._assert_tensor_metadata.default}


def export(model: torch.nn.Module, example_ids: torch.Tensor) -> torch.export.ExportedProgram:
    """Capture the model as an ATen graph; the cache object is kept out because it is not a tensor."""
    try:
        return torch.export.export(model, (example_ids,), {"use_cache": False}, strict=False)
    except Exception as e:  # noqa: BLE001 - any capture failure is a refusal with the exporter's reason
        raise PassError(f"torch.export could not capture {type(model).__name__}: {e}") from e


class GraphView:
    """An exported graph with the lookups the discovery needs, in topological order."""

    def __init__(self, ep: torch.export.ExportedProgram):
        self.nodes = list(ep.graph.nodes)
        self.index = {n: i for i, n in enumerate(self.nodes)}
        self.params = dict(ep.graph_signature.inputs_to_parameters)

    def module_of(self, node: fx.Node) -> str:
        stack = node.meta.get("nn_module_stack") or {}
        return list(stack.values())[-1][0] if stack else ""

    def is_carrier(self, node: fx.Node) -> bool:
        if node.op != "call_function":
            return False
        if node.target in _CARRIERS:
            return _last_axis(node) == _last_axis(node.args[0])
        # Multiplying by one number commutes with any rotation (Gemma scales its embeddings).
        return node.target == aten.mul.Tensor and any(_is_scalar(a) for a in node.args)

    def carried(self, node: fx.Node) -> fx.Node:
        """The first operand a carrier passes on."""
        if node.target == aten.mul.Tensor and _is_scalar(node.args[0]):
            return node.args[1]
        return node.args[0]

    def back(self, node: fx.Node) -> fx.Node:
        while self.is_carrier(node):
            node = self.carried(node)
        return node

    def aliases(self, node: fx.Node) -> set[fx.Node]:
        """The node and every carrier of it downstream: the same value under other names."""
        out, todo = {node}, [node]
        while todo:
            for u in todo.pop().users:
                if u not in out and self.is_carrier(u) and self.carried(u) in out:
                    out.add(u)
                    todo.append(u)
        return out

    def users(self, nodes: set[fx.Node]) -> list[fx.Node]:
        found = {u for n in nodes for u in n.users if u not in nodes and u.target not in _CHECKS}
        return sorted(found, key=self.index.__getitem__)

    def is_ancestor(self, a: fx.Node, b: fx.Node) -> bool:
        """Whether b depends on a; the search stops at nodes older than a."""
        floor, seen, todo = self.index[a], set(), [b]
        while todo:
            n = todo.pop()
            if n is a:
                return True
            for p in n.all_input_nodes:
                if p not in seen and self.index[p] >= floor:
                    seen.add(p)
                    todo.append(p)
        return False

    def param(self, node) -> str | None:
        """The parameter name behind a node, looking through dtype casts."""
        if not isinstance(node, fx.Node):
            return None
        node = self.back(node)
        if node.op == "placeholder":
            return self.params.get(node.name)
        return None


def _last_axis(node) -> int | None:
    val = node.meta.get("val") if isinstance(node, fx.Node) else None
    return val.shape[-1] if isinstance(val, torch.Tensor) and val.dim() else None


def _is_scalar(a) -> bool:
    if isinstance(a, (int, float)):
        return True
    val = a.meta.get("val") if isinstance(a, fx.Node) else None
    return isinstance(val, torch.Tensor) and val.numel() == 1 and val.dim() == 0


def linear_weight_axes(view: GraphView, node: fx.Node, operand: fx.Node):
    """For a linear map node fed by `operand`, return (weight, bias, in_axis) or None.

    aten.linear stores W as [out, in]; GPT-2's Conv1D lowers to addmm(b, x, W) with W as [in, out]."""
    if node.op != "call_function":
        return None
    if node.target == aten.linear.default and node.args[0] is operand:
        bias = view.param(node.args[2]) if len(node.args) > 2 and node.args[2] is not None else None
        return view.param(node.args[1]), bias, 1
    if node.target == aten.addmm.default and node.args[1] is operand:
        return view.param(node.args[2]), view.param(node.args[0]), 0
    return None


def describe(node: fx.Node) -> str:
    return f"{node.name} ({node.target})"
