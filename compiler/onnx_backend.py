"""ONNX backend: an invc fx GraphModule (docs/graph-contract.md) → onnx.ModelProto, built directly
with onnx.helper from each graph op's emitter (its definition in ops/).

Graph inputs and outputs keep the spec's names; symbolic dims become dim_params, so one file runs
at every B and N. Parameters become initializers in their own dtype.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import torch.fx as fx
from onnx import helper, numpy_helper

from common.dtypes import numpy_dtype, onnx_type
from common.errors import InvcError
from common.files import atomic_file
from passes.base import attribute, bound_args, named_outputs
from ops.registry import VOCABULARY
from runtime.session import GUARD_KEY, INDEX_KEY, OFFSETS_KEY, VOCAB_KEY
from runtime.stamp import stamp

__all__ = ["to_onnx", "save_onnx"]

GUARD_PREFIX = "invc.guard/"  # run-time checks in the graph; GUARD_KEY + node name says why



class GraphBuilder:
    """Collects ONNX nodes and initializers while walking the fx graph; emitters call its methods."""

    def __init__(self, gm: fx.GraphModule | None, reserved: set[str], opset: int = 18):
        self.gm, self.opset = gm, opset
        self.nodes: list[onnx.NodeProto] = []
        self.functions: dict[tuple[str, str], onnx.FunctionProto] = {}
        self.initializers: list[onnx.TensorProto] = []
        self.used = set(reserved)
        self.names: dict[fx.Node, str] = {}
        self.transposes: dict[fx.Node, str] = {}
        self.scope = ""
        self.where = ""  # the spec op being emitted, for run-time refusals: "gather `y` (3:5)"
        self.guards: dict[str, str] = {}  # guard node name -> why the run is refused there
        self.checked: dict[tuple[str, str], str] = {}  # (ids, extent) -> the ids, checked once

    def fresh(self, base: str) -> str:
        name, i = base, 0
        while name in self.used:
            i += 1
            name = f"{base}_{i}"
        self.used.add(name)
        return name

    def function(self, domain: str, name: str, inputs: list[str], body) -> str:
        """A call of the model-local ONNX function domain:name. `body(builder, *formal_inputs)` writes
        its nodes once per model and returns its result; a runtime with a kernel registered under
        that name runs the kernel instead (runtime/native.py)."""
        if (domain, name) not in self.functions:
            f = FunctionBuilder(self.opset)
            formal = [f"x{i}" for i in range(len(inputs))]
            f.used.update(formal)
            f.name_result(body(f, *formal), "y")
            self.functions[domain, name] = helper.make_function(
                domain, name, formal, ["y"], f.nodes, [helper.make_opsetid("", self.opset)])
        return self.op(name, *inputs, domain=domain)

    def op(self, op_type: str, *inputs: str, **attrs) -> str:
        out = self.fresh(f"{self.scope}/{op_type}")
        self.nodes.append(helper.make_node(op_type, list(inputs), [out], name=out, **attrs))
        return out

    def const(self, array: np.ndarray, base: str | None = None) -> str:
        name = self.fresh(base or f"{self.scope}/const")
        self.initializers.append(numpy_helper.from_array(np.asarray(array), name))
        return name

    def refuse_unless(self, ok: str, value: str, why: str) -> str:
        """`value` itself when the bool `ok` (a scalar or [1]) holds at run time; otherwise the run fails at a
        Reshape to an impossible shape, in any runtime. ONNX has no assertion; the node's name, which
        onnxruntime quotes in its error, maps to `why` in the metadata (GUARD_KEY), so the Session
        refuses with that reason instead of running on to a silently wrong result."""
        shape = self.op("Where", ok, self.op("Shape", value), self.scalar(-2, "i64"))
        name = self.fresh(f"{GUARD_PREFIX}{self.scope}/{len(self.guards)}")
        self.nodes.append(helper.make_node("Reshape", [value, shape], [name], name=name))
        self.guards[name] = f"{self.where}: {why}"
        return name

    def indices(self, ids: str, dtype: str, bound, why: str) -> str:
        """Integer ids as i64 (ONNX's scatters take no i32), checked to lie in [0, bound) at run time:
        ONNX Gather reads -1 as the last row and an id past the end gives an error deep inside the
        runtime. `bound()` writes the bound, an i64 value of shape [] or [1], read from a shape at
        run time where the extent is computed, so the check holds whatever path the ids took. `why`
        names the extent by its dim ("[0, N), ..."), which the checker's types make equal wherever
        it is equal, so ids read by several ops over one dim (an edge list's senders) are checked once."""
        if (ids, why) not in self.checked:
            wide = ids if dtype == "i64" else self.op("Cast", ids, to=onnx_type("i64"))
            # Two reductions and no temporaries the size of the ids (an empty one gives its identity).
            low, high = (self.op(r, wide, keepdims=0) for r in ("ReduceMin", "ReduceMax"))
            inside = self.op("And", self.op("GreaterOrEqual", low, self.scalar(0, "i64")), self.op("Less", high, bound()))
            self.checked[ids, why] = self.refuse_unless(inside, wide, f"an index is outside {why}")
        return self.checked[ids, why]

    def all_false(self, flags: str) -> str:
        """A bool scalar: true when no element of the bool tensor `flags` is set (also when it is empty)."""
        count = self.op("ReduceSum", self.op("Cast", flags, to=onnx_type("i64")), keepdims=0)
        return self.op("Equal", count, self.scalar(0, "i64"))

    def branch(self, cond: str, then, orelse, dtype: str) -> str:
        """ONNX If on the bool scalar `cond`: `then(self)` or `orelse(self)` writes its nodes into a subgraph
        of its own, which reads the outer graph's values (constants stay outer initializers), and returns
        its result, a `dtype` tensor. Only the branch taken runs, so a costly exact path can wait behind a
        cheap test. Checked ids stay with their branch: a value defined inside one is not seen outside."""
        graphs = []
        for body in (then, orelse):
            outer, checked = self.nodes, dict(self.checked)
            self.nodes = []
            try:
                result = self.fresh(f"{self.scope}/branch")
                self.nodes.append(helper.make_node("Identity", [body(self)], [result], name=result))
                graphs.append(helper.make_graph(self.nodes, result, [], [
                    helper.make_tensor_value_info(result, onnx_type(dtype), None)]))
            finally:
                self.nodes, self.checked = outer, checked
        return self.op("If", cond, then_branch=graphs[0], else_branch=graphs[1])

    def scalar(self, value, dtype: str) -> str:
        return self.const(np.array(value, numpy_dtype(dtype)))

    def ints(self, values) -> str:
        return self.const(np.array(list(values), np.int64))

    def value(self, node: fx.Node) -> str:
        if node not in self.names:  # only get_attr nodes are named on first use
            self.names[node] = self.const(self.tensor(node), node.target)
        return self.names[node]

    def tensor(self, node: fx.Node) -> np.ndarray:
        return attribute(self.gm, node.target).detach().cpu().numpy()

    def transposed(self, node: fx.Node) -> str:
        """W^T for MatMul: a pre-transposed initializer when W is a parameter, else a Transpose."""
        if node.op != "get_attr":
            return self.op("Transpose", self.value(node), perm=[1, 0])
        if node not in self.transposes:
            self.transposes[node] = self.const(self.tensor(node).T.copy(), f"{node.target}.T")
        return self.transposes[node]

    def operand(self, arg, dtype: str) -> str:
        """A binary op's operand in `dtype`: Python scalars become typed constants, tensors a Cast."""
        if not isinstance(arg, fx.Node):
            return self.scalar(arg, dtype)
        name = self.value(arg)
        if arg.meta["dtype"] == dtype:
            return name
        return self.op("Cast", name, to=onnx_type(dtype))

    def emit(self, node: fx.Node, name: str) -> None:
        op = VOCABULARY.by_target.get(node.target) if node.op == "call_function" else None
        if op is None:
            raise InvcError(f"ONNX backend: node {node.name!r} has unsupported target "
                            f"{node.op} {_target_name(node.target)}; supported: the graph ops of ops/")
        self.scope = node.name
        self.where = f"{op.name} `{node.name}` at {node.meta.get('pos', '?')}"
        self.name_result(op.onnx(self, node, *bound_args(node).values()), name)
        self.names[node] = name

    def name_result(self, result: str, name: str) -> None:
        last = self.nodes[-1] if self.nodes else None
        # The emitter's final node writes straight to the fx name; anything else needs an Identity.
        if last is not None and last.output[0] == result and result.startswith(f"{self.scope}/"):
            self.used.discard(result)
            last.output[0] = last.name = name
        else:
            self.nodes.append(helper.make_node("Identity", [result], [name], name=name))


class FunctionBuilder(GraphBuilder):
    """Builds a function body: a function sees no initializers, so constants are Constant nodes."""

    def __init__(self, opset: int):
        super().__init__(None, set(), opset)

    def const(self, array: np.ndarray, base: str | None = None) -> str:
        name = self.fresh(base or f"{self.scope}/const")
        self.nodes.append(helper.make_node("Constant", [], [name], name=name,
                                           value=numpy_helper.from_array(np.asarray(array), name)))
        return name


def _target_name(target) -> str:
    return getattr(target, "__qualname__", None) or repr(target)


def _value_info(name: str, node: fx.Node) -> onnx.ValueInfoProto:
    # str entries of the shape (B, N, N*4) become dim_params.
    return helper.make_tensor_value_info(name, onnx_type(node.meta["dtype"]), list(node.meta["shape"]))


def loadable(model: onnx.ModelProto, data: bytes) -> None:
    """Refuse a model that onnx's full check (types included) or onnxruntime's loader rejects."""
    import onnxruntime as ort
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # loading is the check
    try:
        onnx.checker.check_model(model, full_check=True)
        ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
    except Exception as e:  # onnx's and onnxruntime's errors share no base class but Exception
        raise InvcError(f"ONNX backend: the model {model.graph.name!r} is not a valid ONNX file, so none "
                        f"was written ({type(e).__name__}: {str(e).strip().splitlines()[0][:300]}); "
                        "this is a bug in invc: the checker should have refused the spec") from None


def input_facts(checked) -> dict[str, str]:
    """The run-time range of every input an op reads as indices (its `Indices`) or as CSR offsets:
    VOCAB_KEY + name, the fewest rows of a table it indexes; INDEX_KEY + name, every dim (a name,
    an expression or a size) it picks from, comma-separated; OFFSETS_KEY + name, the rows its
    offsets cover. Indices and offsets computed inside the model are checked in the graph itself
    (GraphBuilder.indices); these let the Session refuse inputs before the run, naming the id at fault."""
    inputs = {p.value.id: p.name for p in checked.inputs}
    vocab: dict[str, int] = {}
    dims: dict[str, set] = {}
    rows: dict[str, set] = {}
    for n in checked.nodes:
        op = checked.vocabulary.graph[n.op]
        ids = inputs.get(getattr(n.args[op.indices.arg], "id", None)) if op.indices else None
        if ids and op.indices.table:
            vocab[ids] = min(vocab.get(ids, op.indices.bound(n)), op.indices.bound(n))
        elif ids:
            dims.setdefault(ids, set()).add(str(op.indices.bound(n)))
        cuts = inputs.get(getattr(n.args[op.offsets], "id", None)) if op.offsets is not None else None
        if cuts:
            rows.setdefault(cuts, set()).add(str(n.args[0].type.shape[0]))
    return {**{VOCAB_KEY + k: str(v) for k, v in vocab.items()},
            **{INDEX_KEY + k: ",".join(sorted(v)) for k, v in dims.items()},
            **{OFFSETS_KEY + k: ",".join(sorted(v)) for k, v in rows.items()}}


def to_onnx(gm: fx.GraphModule, *, graph_name: str = "invc",
            metadata: dict[str, str] | None = None, opset: int = 18) -> onnx.ModelProto:
    """The ONNX model of `gm`; every `metadata` entry lands in metadata_props, with the facts about
    the inputs of the spec it was lowered from (`input_facts`), so they travel in every file."""
    if opset < 18:
        raise InvcError(f"ONNX backend: opset {opset} is too old; the emitters use opset-18 forms "
                        "(Reduce* axes as an input)")
    inputs = [n for n in gm.graph.nodes if n.op == "placeholder"]
    out_names, out_nodes = map(list, zip(*named_outputs(gm)))
    g = GraphBuilder(gm, {n.meta["name"] for n in inputs} | set(out_names), opset)
    g.names.update((n, n.meta["name"]) for n in inputs)
    # A computed node returned once is written under its output name directly.
    direct = {n: name for n, name in zip(out_nodes, out_names)
              if n.op == "call_function" and out_nodes.count(n) == 1}
    for node in gm.graph.nodes:
        if node.op in ("call_function", "call_method", "call_module"):
            g.emit(node, direct.get(node) or g.fresh(node.name))
    for node, name in zip(out_nodes, out_names):
        if g.value(node) != name:
            g.nodes.append(helper.make_node("Identity", [g.value(node)], [name], name=name))
    graph = helper.make_graph(g.nodes, graph_name, [_value_info(n.meta["name"], n) for n in inputs],
                              [_value_info(name, n) for n, name in zip(out_nodes, out_names)],
                              initializer=g.initializers)
    opsets = [helper.make_opsetid("", opset)] + [helper.make_opsetid(d, 1) for d in sorted({d for d, _ in g.functions})]
    model = helper.make_model(graph, opset_imports=opsets, producer_name="invc", functions=list(g.functions.values()),
                              ir_version=helper.find_min_ir_version_for(opsets[:1]))  # >= 8: functions
    facts = input_facts(gm.meta["invc"]) if "invc" in gm.meta else {}
    guards = {GUARD_KEY + name: why for name, why in g.guards.items()}
    return stamp(model, {**(metadata or {}), **facts, **guards})


def save_onnx(model: onnx.ModelProto, path) -> Path:
    """Write atomically, so a failed compile leaves no file behind, and only a file that onnx's checker
    passes and onnxruntime loads: a model the emitters got wrong is an error here, never a file."""
    data = model.SerializeToString()
    loadable(model, data)
    with atomic_file(path, "ONNX model") as f:
        f.write(data)
    return Path(path)
