"""Lowering: a checked model becomes a torch.fx GraphModule, built node by node (no tracing).

Parameters are real nn.Parameters, each initialised from its own generator seeded by the model
seed and the parameter's name, so adding a layer never changes the others' initial values.
Passes and backends read the graph it writes through passes/base.py (docs/graph-contract.md).
"""
from __future__ import annotations

import math
import zlib

import torch
import torch.fx as fx
import torch.nn as nn

from dsl.errors import SpecError
from dsl.types import CheckedModel, OpNode, ParamSpec, Value
from runtime.inputs import refuse_empty


def lower(model: CheckedModel, seed: int = 0) -> fx.GraphModule:
    root, graph, env = nn.Module(), fx.Graph(), {}
    for port in model.inputs:
        node = graph.placeholder(port.name)
        _type(node, port.value, name=port.name, pos=str(port.pos))
        env[port.value.id] = node
    for op in model.nodes:
        env[op.value.id] = _call(graph, root, op, env, seed, model.vocabulary.graph)
    results = tuple(env[p.value.id] for p in model.outputs)
    # A one-output model returns the tensor itself; meta keeps the outputs' names either way.
    out = graph.output(results[0] if len(results) == 1 else results)
    out.meta["names"] = [p.name for p in model.outputs]
    gm = fx.GraphModule(root, graph, class_name=_class_name(model.name))
    gm.meta["invc"] = model
    gm.register_forward_pre_hook(refuse_empty)  # the same empty-input rule as runtime.session
    return gm


def _call(graph: fx.Graph, root: nn.Module, op: OpNode, env: dict, seed: int, ops: dict) -> fx.Node:
    weights = []
    for short, spec in op.params.items():
        target = op.param_prefix + short
        _register(root, target, _init(spec, target, seed), op)
        w = graph.get_attr(target)
        w.meta.update(shape=tuple(spec.shape), dtype="f32")
        weights.append(w)
    args = tuple(_arg(a, env) for a in op.args) + tuple(weights)
    kwargs = {k: _arg(v, env) for k, v in op.kwargs.items()}
    node = graph.create_node("call_function", ops[op.op].torch, args, kwargs, name=op.value.name)
    _type(node, op.value, pos=str(op.pos), **({"origin": op.origin} if op.origin else {}))
    return node


def _arg(a, env: dict):
    if isinstance(a, Value):
        return env[a.id]
    if isinstance(a, tuple):
        return [_arg(x, env) for x in a]
    return a


def _type(node: fx.Node, value: Value, **extra) -> None:
    node.meta.update(shape=value.type.shape, dtype=value.type.dtype, **extra)


def _init(spec: ParamSpec, name: str, seed: int) -> nn.Parameter:
    if spec.init in ("given", "fixed"):  # a captured model's own, copied so training here leaves it alone
        trained = spec.init == "given" and spec.value.is_floating_point()
        return nn.Parameter(spec.value.detach().clone(), requires_grad=trained)
    # Modulo 2**64, as torch itself reads a negative seed: any seed in torch's range gives a valid one.
    g = torch.Generator().manual_seed((seed * 1_000_003 + zlib.crc32(name.encode())) % 2**64)
    if spec.init == "ones":
        t = torch.ones(spec.shape)
    elif spec.init == "zeros":
        t = torch.zeros(spec.shape)
    elif spec.init == "normal":
        t = torch.randn(spec.shape, generator=g)
    else:  # fan_in: the uniform bound nn.Linear uses
        bound = 1.0 / math.sqrt(spec.shape[-1])
        t = torch.empty(spec.shape).uniform_(-bound, bound, generator=g)
    return nn.Parameter(t)


def _register(root: nn.Module, target: str, param: nn.Parameter, op: OpNode) -> None:
    *path, leaf = target.split(".")
    mod = root
    for part in path:
        if part not in mod._modules and (hasattr(mod, part) or hasattr(fx.GraphModule, part)):
            # The checker refuses torch's own names; this catches ones other libraries add (transformers'
            # smart_apply), which a torch-free checker cannot know.
            raise SpecError.at(op.pos, f"`{part}` cannot name a binding here: the torch module already has an "
                                       f"attribute `{part}`", f"rename it, e.g. `{part.strip('_')}_out`")
        if part not in mod._modules:
            mod.add_module(part, nn.Module())
        mod = getattr(mod, part)
    mod.register_parameter(leaf, param)


def _class_name(name: str) -> str:
    return "".join(part.capitalize() for part in name.split("_")) or "Model"
