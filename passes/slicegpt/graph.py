"""Reading an exported ATen graph: which ops carry a tensor unchanged, which node is a linear map,
which module a node belongs to, and which parameter a placeholder stands for."""
from __future__ import annotations

from dataclasses import dataclass

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
        # Multiplying or dividing by one number commutes with any rotation (embedding, branch and logit scales).
        if node.target == aten.div.Tensor:
            return _is_scalar(node.args[1])
        return node.target == aten.mul.Tensor and any(_is_scalar(a) for a in node.args)

    def carried(self, node: fx.Node) -> fx.Node:
        """The first operand a carrier passes on."""
        if node.target == aten.mul.Tensor and _is_scalar(node.args[0]):
            return node.args[1]
        return node.args[0]

    def row_operand(self, node: fx.Node) -> fx.Node | None:
        """For an op that mixes only the token axes (a gather or scatter of tokens, a sum over top-k slots,
        a per-token weight), the operand whose last axis it passes on; such ops commute with a rotation
        of the last axis. Mixture-of-experts blocks route tokens to experts this way."""
        if node.op != "call_function" or _last_axis(node) is None:
            return None
        args = node.args
        if node.target == aten.index.Tensor and len(args[1]) < args[0].meta["val"].dim():
            operand = args[0]
        elif node.target == aten.index_select.default and args[1] not in (-1, args[0].meta["val"].dim() - 1):
            operand = args[0]
        elif node.target == aten.sum.dim_IntList and _sums_rows(args[0], args[1]):
            operand = args[0]
        elif node.target == aten.mul.Tensor and all(isinstance(a, fx.Node) for a in args):
            # A per-token weight (router probabilities), not one computed from the operand itself (a norm).
            wide = [a for a in args if _last_axis(a) == _last_axis(node)]
            weight = args[args[0] is wide[0]] if len(wide) == 1 else None
            operand = wide[0] if weight is not None and _last_axis(weight) == 1 \
                and not self.is_ancestor(wide[0], weight) else None
        else:
            return None
        return operand if _last_axis(operand) == _last_axis(node) else None

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


@dataclass(frozen=True)
class LinearMap:
    """A linear map in the graph: its input, its weight parameter (and bias) and the parameter axes
    that index its input and its output."""
    operand: fx.Node
    weight: str
    bias: str | None
    in_axis: int
    out_axis: int


# Matrix products whose second operand is the weight as [..., in, out]: `x @ W.T`, grouped expert products.
_MATMULS = {aten.matmul.default, aten.mm.default, aten.bmm.default}


def linear_map(view: GraphView, node: fx.Node) -> LinearMap | None:
    """The linear map computed by `node`, or None. aten.linear stores W as [out, in]; GPT-2's Conv1D
    lowers to addmm(b, x, W) with W as [in, out]; `x @ W.T` and grouped expert products (MoE) take a
    view of a parameter as [..., in, out], followed back through transposes to the parameter's own axes."""
    if node.op != "call_function":
        return None
    if node.target == aten.linear.default:
        bias = view.param(node.args[2]) if len(node.args) > 2 and node.args[2] is not None else None
        weight = view.param(node.args[1])
        return LinearMap(node.args[0], weight, bias, 1, 0) if weight else None
    if node.target == aten.addmm.default:
        weight = view.param(node.args[2])
        return LinearMap(node.args[1], weight, view.param(node.args[0]), 0, 1) if weight else None
    if node.target in _MATMULS or _is_grouped_mm(node):
        traced = _trace_axes(view, node.args[1], [-2, -1])
        if traced is None:
            return None
        weight, (in_axis, out_axis) = traced
        return LinearMap(node.args[0], weight, _added_bias(view, node), in_axis, out_axis)
    return None


def _is_grouped_mm(node: fx.Node) -> bool:
    return "grouped_mm" in str(node.target)


def _trace_axes(view: GraphView, node, axes: list[int]):
    """Follow a weight operand back through casts and transposes to a parameter; return the parameter
    and where `axes` (of the operand) lie in it."""
    if not isinstance(node, fx.Node) or not isinstance(node.meta.get("val"), torch.Tensor):
        return None
    rank = node.meta["val"].dim()
    axes = [a % rank for a in axes]
    while True:
        if node.op == "placeholder":
            name = view.params.get(node.name)
            return (name, tuple(axes)) if name else None
        if node.op != "call_function":
            return None
        if view.is_carrier(node) and _last_axis(node) == _last_axis(view.carried(node)) and \
                node.target not in (aten.view.default, aten.reshape.default, aten._unsafe_view.default):
            node = view.carried(node)
            continue
        if node.target in (aten.t.default, aten.numpy_T.default) and rank == 2:
            axes = [1 - a for a in axes]
        elif node.target == aten.transpose.int:
            d0, d1 = (d % rank for d in node.args[1:3])
            axes = [d1 if a == d0 else d0 if a == d1 else a for a in axes]
        elif node.target == aten.permute.default:
            axes = [list(node.args[1])[a] % rank for a in axes]
        else:
            return None
        node = node.args[0]


def _added_bias(view: GraphView, node: fx.Node) -> str | None:
    """`x @ W.T + b`: the bias parameter added to a matrix product's output, if that is its only use."""
    users = list(node.users)
    if len(users) == 1 and users[0].target == aten.add.Tensor:
        other = [a for a in users[0].args if a is not node]
        return view.param(other[0]) if other else None
    return None


def _sums_rows(node, dims) -> bool:
    rank = node.meta["val"].dim()
    return all(d % rank != rank - 1 for d in dims)


def describe(node: fx.Node) -> str:
    return f"{node.name} ({node.target})"
