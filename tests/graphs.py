"""Hand-built invc fx graphs for tests, obeying docs/graph-contract.md."""
from __future__ import annotations

from types import SimpleNamespace

import torch
import torch.fx as fx
from torch.fx.passes.shape_prop import ShapeProp

from common.dtypes import name_of, torch_dtype
from ops.registry import VOCABULARY

# Graph ops only ATen ops of captured torch models lift to (capture/): no spec reaches them.
CAPTURED_ONLY = ("arange", "aten", "cast", "channel_linear", "clamp", "compare", "exp", "expand", "full_like", "leaky_relu", "mask_select",
                 "narrow", "power", "select", "sqrt", "tile", "weight", "where")
TARGETS = SimpleNamespace(**{name: op.torch for name, op in VOCABULARY.graph.items()})  # the fx targets by name
# Shapes are found by running at these sizes; a dim of one of these sizes is read back as the
# symbol, so static dims in tests must avoid multiples of 11 and 13.
TRACE = {"B": 11, "N": 13}
_SYMBOLS = {11: "B", 13: "N", 143: "B*N", **{13 * k: f"N*{k}" for k in range(2, 11)}, 44: "B*4", 88: "B*8"}


def build(inputs: dict, rows: list, outputs: dict, params: dict | None = None) -> fx.GraphModule:
    """inputs {name: (shape, dtype)}; rows (name, target, args[, kwargs]) where a str argument
    names an input, parameter or earlier row; outputs {output name: row or input name}."""
    graph, env = fx.Graph(), {}
    for name, (shape, dtype) in inputs.items():
        env[name] = graph.placeholder(name)
        env[name].meta.update(name=name, shape=tuple(shape), dtype=dtype)
    for name in params or {}:
        env[name] = graph.get_attr(name)

    def ref(a):
        if isinstance(a, str):  # a name; a string that names nothing is a constant ("gt")
            return env.get(a, a)
        return [ref(x) for x in a] if isinstance(a, list) else a

    for name, target, args, *kwargs in rows:
        kw = {k: ref(v) for k, v in (kwargs[0] if kwargs else {}).items()}
        env[name] = graph.create_node("call_function", target, tuple(ref(a) for a in args), kw, name)
    graph.output(tuple(env[n] for n in outputs.values())).meta["names"] = list(outputs)
    root = {k: torch.nn.Parameter(v, requires_grad=False) for k, v in (params or {}).items()}
    gm = fx.GraphModule(root, graph)
    ShapeProp(gm).propagate(*sample(gm, TRACE).values())
    for node in gm.graph.nodes:
        if node.op in ("get_attr", "call_function"):
            tm = node.meta["tensor_meta"]
            node.meta["shape"] = tuple(_SYMBOLS.get(d, d) for d in tm.shape)
            node.meta["dtype"] = name_of(tm.dtype)
    return gm


def sample(gm: fx.GraphModule, sizes: dict[str, int], seed: int = 0) -> dict[str, torch.Tensor]:
    """Random inputs by spec name; ints lie in [0, 4) so they index any table of 4+ rows."""
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for node in (n for n in gm.graph.nodes if n.op == "placeholder"):
        shape = [sizes[d] if isinstance(d, str) else d for d in node.meta["shape"]]
        dtype = torch_dtype(node.meta["dtype"])
        if dtype == torch.bool:
            out[node.meta["name"]] = torch.rand(shape, generator=gen) > 0.3
        elif dtype.is_floating_point:
            out[node.meta["name"]] = torch.randn(shape, generator=gen, dtype=dtype)
        else:
            out[node.meta["name"]] = torch.randint(0, 4, shape, generator=gen, dtype=dtype)
    return out


def run_torch(gm: fx.GraphModule, inputs: dict) -> dict[str, torch.Tensor]:
    """The GraphModule's outputs keyed by output name."""
    result = gm(*inputs.values())
    result = result if isinstance(result, tuple) else (result,)
    names = next(n for n in gm.graph.nodes if n.op == "output").meta["names"]
    return dict(zip(names, result))
