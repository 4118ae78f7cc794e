"""Triton backend: an optimized invc fx graph -> a standalone module of Triton kernels and a launcher.

    plan(gm)            which graph regions match a kernel template (runtime/triton/templates.py),
                        and why every other op falls back to torch
    generate(gm, plan)  the module's source and its weights
    emit(...)           the plan, and model.py + weights.pt written into a directory, atomically

The module needs only torch and triton: the launcher runs non-kernel ops as plain torch code,
checks its inputs' shapes, dtypes and devices, and loads weights.pt with weights_only=True.
"""
from __future__ import annotations

import ast
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.fx as fx

from common.dtypes import torch_dtype
from common.errors import InvcError
from common.files import atomic_dir
from passes.base import attribute, bound_args
from ops import elementwise, frames, sets
from ops.linear import linear
from ops.norms import rmsnorm
from ops.reductions import reduce_max, reduce_mean, reduce_min, reduce_sum
from ops.registry import VOCABULARY
from runtime.triton.build import literal
from runtime.triton.torch_source import embedded_source
from runtime.triton.templates import (ACTIVATIONS, FRAME_HELPERS, KERNEL_DTYPES, MAX_FUSED_WIDTH, Act,
                                      Linear, PCAFrames, RMSNormLinear, SegmentReduce)

REDUCTIONS = {reduce_sum: "sum", reduce_mean: "mean", reduce_max: "max", reduce_min: "min"}
ROW_ACTIVATIONS = {getattr(elementwise, a): a for a in ACTIVATIONS}


@dataclass
class Region:
    """Graph nodes that become one kernel: `inputs` are the launcher's tensor arguments,
    `outputs` the nodes whose values it returns (in order)."""
    config: object
    nodes: list
    inputs: list
    outputs: list
    keywords: dict = field(default_factory=dict)


@dataclass
class Plan:
    spec: str
    model: str
    regions: list
    fallbacks: dict  # node -> reason

    def explain(self) -> str:
        lines = [f"{self.spec}: model {self.model}, target triton",
                 f"kernels ({len(self.regions)}):"]
        for r in self.regions:
            lines.append(f"  {', '.join(r.config.kernels)}: {r.config.summary()}")
            lines.append(f"      covers {', '.join(n.name for n in r.nodes)} ({_span(r.nodes)})")
        lines.append(f"fallbacks to torch ({len(self.fallbacks)}):")
        lines += [f"  {n.name} ({n.target.__name__}): {why}" for n, why in self.fallbacks.items()]
        return "\n".join(lines)


def _span(nodes) -> str:
    """`file:3:7 .. 4:12`: the spec lines the nodes came from."""
    positions = sorted({n.meta["pos"] for n in nodes if n.meta.get("pos")},
                       key=lambda p: tuple(int(x) for x in p.split(":")[-2:]))
    if not positions:
        return "no source position"
    last = ":".join(positions[-1].split(":")[-2:])
    return positions[0] if len(positions) == 1 else f"{positions[0]} .. {last}"


# -- matching --------------------------------------------------------------------------------------
def plan(gm: fx.GraphModule, spec: str = "", model: str = "") -> Plan:
    regions, fallbacks, claimed = [], {}, set()
    calls = [n for n in gm.graph.nodes if n.op == "call_function"]
    for match in (_match_frames, _match_set_reduction, _match_rmsnorm_linear):
        for node in calls:
            if node in claimed:
                continue
            result = match(node, claimed)
            if isinstance(result, Region):
                regions.append(result)
                claimed.update(result.nodes)
                fallbacks.pop(node, None)
            elif result:
                fallbacks.setdefault(node, result)
    for node in calls:
        if node not in claimed:
            fallbacks.setdefault(node, f"no template covers {node.target.__name__}")
    order = {n: i for i, n in enumerate(gm.graph.nodes)}
    regions.sort(key=lambda r: order[r.nodes[0]])
    return Plan(spec, model, regions, {n: fallbacks[n] for n in calls if n in fallbacks})


def _dtype_reason(node) -> str | None:
    if node.meta.get("dtype") not in KERNEL_DTYPES:
        return f"dtype {node.meta.get('dtype')} has no template (kernels take {', '.join(KERNEL_DTYPES)})"
    return None


def _match_set_reduction(node, claimed):
    """A reduction over the set axis (-2 of [..., N, D], or CSR rows), with the chain of per-row
    linears and activations that feeds it fused in as the kernel's prologue."""
    args = bound_args(node)
    if node.target in REDUCTIONS:
        kind, layout, extra = REDUCTIONS[node.target], "dense", []
    elif node.target is sets.masked_reduce:
        kind, extra = args["kind"], [args["mask"]] if args["mask"] is not None else []
        layout = "masked" if extra else "dense"
    elif node.target is sets.segment_reduce:
        kind, layout, extra = args["kind"], "csr", [args["offsets"]]
    else:
        return None
    x = args["x"]
    rank = len(x.meta["shape"])
    if layout == "csr" and rank != 2:
        return f"segment reduction of rank-{rank} rows; the CSR template takes x [rows, D]"
    if layout != "csr" and args["axis"] % rank != rank - 2:
        return (f"reduces axis {args['axis']} of a rank-{rank} tensor; the templates reduce the set "
                "axis -2 of [..., N, D]")
    if _dtype_reason(node):
        return _dtype_reason(node)
    start, steps, chain, weights = _prologue(x, claimed)
    d_in = start.meta["shape"][-1]
    if not isinstance(d_in, int) or d_in > MAX_FUSED_WIDTH:
        return f"feature width {d_in} is not a static int <= {MAX_FUSED_WIDTH} (a row lives in registers)"
    config = SegmentReduce(node.name, kind, layout, d_in, steps, node.meta["dtype"], _origin(chain + [node]))
    keywords = {"variant": '"csr"'} if layout == "csr" and args["deterministic"] else {}
    out = Region(config, chain + [node], [start] + extra + weights, [node], keywords)
    if args.get("keepdim"):
        out.keywords["keepdim"] = True
    return out


def _prologue(x, claimed):
    """Walk back from x over single-use per-row ops: (start node, steps, nodes, weight nodes)."""
    steps, chain, weights = [], [], []
    while x.op == "call_function" and len(x.users) == 1 and x not in claimed and not _dtype_reason(x):
        if x.target in ROW_ACTIVATIONS:
            steps.insert(0, Act(ROW_ACTIVATIONS[x.target]))
            chain.insert(0, x)
            x = x.args[0]
            continue
        if x.target is not linear:
            break
        a = bound_args(x)
        w, b = a["weight"], a["bias"]
        if w.op != "get_attr" or (b is not None and b.op != "get_attr") or max(w.meta["shape"]) > MAX_FUSED_WIDTH:
            break
        steps.insert(0, Linear(w.meta["shape"][1], w.meta["shape"][0], b is not None))
        chain.insert(0, x)
        weights[:0] = [w] + ([b] if b is not None else [])
        x = a["x"]
    return x, tuple(steps), chain, weights


def _match_rmsnorm_linear(node, claimed):
    """linear(rmsnorm(x)), the norm used only there, with the activations after it fused."""
    if node.target is rmsnorm:
        users = list(node.users)
        if len(users) != 1 or users[0].target is not linear:
            names = ", ".join(f"{u.name} ({u.target.__name__})" for u in users)
            return f"rmsnorm feeds {names}; the template fuses rmsnorm only into the one linear reading it"
        return None
    if node.target is not linear:
        return None
    a = bound_args(node)
    norm = a["x"]
    if norm.op != "call_function" or norm.target is not rmsnorm or norm in claimed:
        return "a lone linear is a cuBLAS matmul either way; only linear(rmsnorm(x)) has a template"
    n = bound_args(norm)
    if _dtype_reason(node) or a["weight"].op != "get_attr":
        return _dtype_reason(node) or "the linear's weight is computed, not a parameter"
    nodes, epilogue, last = [norm, node], [], node
    while len(last.users) == 1 and next(iter(last.users)).target in ROW_ACTIVATIONS:
        last = next(iter(last.users))
        nodes.append(last)
        epilogue.append(Act(ROW_ACTIVATIONS[last.target]))
    d_out, d_in = a["weight"].meta["shape"]
    config = RMSNormLinear(last.name, d_in, d_out, float(n["eps"]), n["weight"] is not None, a["bias"] is not None,
                           tuple(epilogue), node.meta["dtype"], _origin(nodes))
    inputs = [t for t in (n["x"], n["weight"], a["weight"], a["bias"]) if t is not None]
    return Region(config, nodes, inputs, [last])


def _match_frames(node, claimed):
    """frame_in(pos, frame_basis(pos, frame_centroid(pos, mask), mask), centroid) for PCA frames."""
    if node.target is not frames.frame_basis:
        return None
    a = bound_args(node)
    centroid, pos, mask = a["centroid"], a["pos"], a["mask"]
    if a["canonical"]:
        return "canonical frames (third-moment signs) have no template"
    if centroid.target is not frames.frame_centroid or bound_args(centroid)["mask"] is not mask:
        return "the centroid is not frame_centroid of the same points and mask"
    moved = [u for u in node.users if u.target is frames.frame_in and bound_args(u)["x"] is pos
             and bound_args(u)["centroid"] is centroid]
    if not moved or len(pos.meta["shape"]) != 3 or _dtype_reason(pos):
        return _dtype_reason(pos) or "no frame_in of the frame's own points [B, N, 3] to fuse"
    config = PCAFrames(moved[0].name, 4 if a["proper"] else 8, mask is not None, pos.meta["dtype"],
                       _origin([centroid, node, moved[0]]))
    return Region(config, [centroid, node, moved[0]], [pos] + ([mask] if mask is not None else []),
                  [centroid, node, moved[0]])


def _origin(nodes) -> str:
    """Where a kernel came from, for a comment in the generated code: the file name is escaped."""
    from runtime.triton.build import literal_text
    return literal_text(f"graph nodes {', '.join(n.name for n in nodes)} (spec {_span(nodes)})")


# -- code generation ---------------------------------------------------------------------------------
MODULE_DOC = """{model}: Triton kernels and their launcher, generated by `invc compile --target triton`
from {spec}. Needs only torch and triton.

    import model
    net = model.load("cuda")          # weights from weights.pt beside this file
    {call}

Kernels ({count}): {kernels}. Every other op runs as torch. CPU tensors run the kernels only under
TRITON_INTERPRET=1 (the Triton interpreter)."""


def generate(gm: fx.GraphModule, the_plan: Plan) -> tuple[str, dict]:
    """(module source, weights by buffer name)."""
    from runtime.triton.build import literal_text, module_source
    names = _Names(gm)
    kernels = [r.config.source() for r in the_plan.regions]
    if any(isinstance(r.config, PCAFrames) for r in the_plan.regions):
        kernels.insert(0, FRAME_HELPERS)
    forward, helpers = _forward(gm, the_plan, names)
    inputs = [n for n in gm.graph.nodes if n.op == "placeholder"]
    call = f"outputs = net({', '.join(names.var[n] for n in inputs)})"
    doc = MODULE_DOC.format(model=literal_text(the_plan.model), spec=literal_text(the_plan.spec), call=call,
                            count=len(the_plan.regions),
                            kernels=", ".join(k for r in the_plan.regions for k in r.config.kernels) or "none")
    body = "\n\n\n".join(kernels + helpers + [_model_class(gm, forward, names, inputs), LOAD])
    return module_source(doc, body), {b: _tensor(gm, t) for t, b in names.buffers.items()}


def _tensor(gm, target: str) -> torch.Tensor:
    return attribute(gm, target).detach().cpu().contiguous().clone()


class _Names:
    """Python names: a local per node, a buffer per parameter, none shadowing a module global."""
    RESERVED = {"self", "torch", "F", "math", "os", "triton", "tl", "Path", "Model", "load"}

    def __init__(self, gm):
        self.var, self.buffers, taken = {}, {}, set(self.RESERVED)
        for node in gm.graph.nodes:
            base = node.meta.get("name", node.name) if node.op == "placeholder" else node.name
            if node.op == "get_attr":
                base = node.target.replace(".", "_")
            name = self._fresh(base if base.isidentifier() else "v", taken)
            if node.op == "get_attr":
                self.buffers.setdefault(node.target, name)
                self.var[node] = f"self.{self.buffers[node.target]}"
            else:
                self.var[node] = name

    @staticmethod
    def _fresh(base: str, taken: set) -> str:
        name = base if not base.startswith(("launch_", "check_")) else f"v_{base}"
        while name in taken:
            name += "_"
        taken.add(name)
        return name


def _forward(gm, the_plan: Plan, names: _Names) -> tuple[list[str], list[str]]:
    """The forward's body lines, and the helper functions embedded from the runtime."""
    first = {r.nodes[0]: r for r in the_plan.regions}
    covered = {n for r in the_plan.regions for n in r.nodes}
    lines, helpers = [], {}
    for node in gm.graph.nodes:
        if node in first:
            lines += _region_call(first[node], names)
        elif node.op == "call_function" and node not in covered:
            lines.append(f"{names.var[node]} = {_expression(node, names, helpers)}")
        elif node.op == "output":
            lines.append(f"return {_render(node.args[0], names)}")
    return lines, list(helpers.values())


def _region_call(region: Region, names: _Names) -> list[str]:
    args = [names.var[n] for n in region.inputs]
    args += [f"{k}={v}" for k, v in region.keywords.items() if k != "keepdim"]
    call = f"launch_{region.config.name}({', '.join(args)})"
    if region.keywords.get("keepdim"):
        call += ".unsqueeze(-2)"
    outs = ", ".join(names.var[n] for n in region.outputs)
    comment = f"  # kernel: {region.config.summary()}"
    if isinstance(region.config, PCAFrames):  # ops/frames.py layouts: c [B, 1, 3], points [B*F, N, 3]
        c, basis, points = (names.var[n] for n in region.outputs)
        return [f"{outs} = {call}{comment}", f"{c} = {c}.unsqueeze(1)",
                f"{points} = {points}.reshape(-1, *{points}.shape[2:])"]
    return [f"{outs} = {call}{comment}"]


def _render(value, names: _Names) -> str:
    if isinstance(value, fx.Node):
        return names.var[value]
    if isinstance(value, (list, tuple)):
        inner = ", ".join(_render(v, names) for v in value)
        return f"[{inner}]" if isinstance(value, list) else f"({inner}{',' if len(value) == 1 else ''})"
    return literal(value)


def _expression(node, names: _Names, helpers: dict) -> str:
    args = {k: _render(v, names) for k, v in bound_args(node).items()}
    op = VOCABULARY.by_target.get(node.target)
    if op is not None and op.triton is not None:
        return op.triton(**args)
    if op is not None and op.embed:
        for name, source in embedded_source(node.target):
            helpers.setdefault(name, source)
        return f"{node.target.__name__}({', '.join(f'{k}={v}' for k, v in args.items())})"
    raise InvcError(f"Triton backend: node {node.name!r} ({node.target.__module__}.{node.target.__name__}) "
                    "has no template and no standalone torch form, so the Triton target cannot run it; "
                    "compile this spec with --target onnx")


def _model_class(gm, forward: list[str], names: _Names, inputs: list) -> str:
    signature = {n.meta["name"]: (torch_dtype(n.meta["dtype"]), tuple(n.meta["shape"])) for n in inputs}
    params = ", ".join(names.var[n] for n in inputs)
    checked = ", ".join(f"{n.meta['name']!r}: {names.var[n]}" for n in inputs)
    lines = ["class Model(torch.nn.Module):",
             '    """The compiled model; its buffers are the weights, by parameter path with _ for dots."""',
             f"    INPUTS = {signature!r}",
             "",
             "    def __init__(self, weights: dict):",
             "        super().__init__()",
             "        for name, tensor in weights.items():",
             "            self.register_buffer(name, tensor)",
             "",
             f"    def forward(self, {params}):",
             f"        check_inputs(self.INPUTS, {{{checked}}})"]
    lines += [f"        {line}" for line in forward]
    return "\n".join(lines)


LOAD = '''def load(device="cuda", weights=None) -> Model:
    """The model with its weights (default: weights.pt beside this file) on `device`."""
    path = weights or os.path.join(os.path.dirname(os.path.abspath(__file__)), "weights.pt")
    return Model(torch.load(path, map_location=device, weights_only=True))'''


# -- output ------------------------------------------------------------------------------------------
MARKER = "model.py"  # what makes a folder an earlier Triton output, which a new one may replace


def emit(gm: fx.GraphModule, out: str | Path | None, spec: str, model: str) -> Plan:
    """The plan; with `out`, model.py and weights.pt written into that directory, built in a
    temp dir and renamed into place."""
    the_plan = plan(gm, spec, model)
    source, weights = generate(gm, the_plan)
    if out is None:
        return the_plan
    ast.parse(source)  # a generator bug must fail here, not in the user's import
    with atomic_dir(out, "Triton module", marker=MARKER) as tmp:
        (tmp / MARKER).write_text(source, encoding="utf-8")
        torch.save(weights, tmp / "weights.pt")
        (tmp / "EXPLAIN.txt").write_text(the_plan.explain() + "\n", encoding="utf-8")
    return the_plan


__all__ = ["Plan", "Region", "emit", "generate", "plan"]
