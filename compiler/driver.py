"""The Python front door: check, build and compile a .inv spec.

    module = compiler.build("my.inv", hidden=128)              # a trainable torch.nn.Module
    result = compiler.compile("my.inv", out="my.onnx")         # parse -> fx -> passes -> ONNX
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from dsl.checker import check as _check
from dsl.program import load
from dsl.types import CheckedModel


def check(spec: str | Path, model: str | None = None, params: dict | None = None, **kw) -> CheckedModel:
    """Parse and type-check a spec; raises dsl.errors.SpecError. Needs no torch.
    Model parameters come as keywords (hidden=128) or, when a name is also one of these
    functions' own arguments (model, seed, ...), in `params`."""
    return _check(load(spec), model, {**(params or {}), **kw})


def _check_for(spec, out, model, params) -> CheckedModel:
    """check(), after refusing an output path that is the spec or one of its imports."""
    program = load(spec)
    if out is not None:
        from common.files import refuse_inputs
        refuse_inputs(out, program.texts, "output")
    return _check(program, model, params)


def build(spec: str | Path, model: str | None = None, seed: int = 0, params: dict | None = None, **kw):
    """A trainable torch.fx.GraphModule built from the spec, parameters initialised from `seed`."""
    from compiler.lower import lower
    return lower(check(spec, model, params, **kw), seed)


@dataclass
class CompileResult:
    spec: str
    model: str
    out: Path | None
    module: object            # the optimised fx.GraphModule
    onnx: object              # the onnx.ModelProto (None for the triton target)
    seconds: dict = field(default_factory=dict)
    triton: object = None     # the Triton backend's Plan: kernels and fallbacks

    @property
    def parameters(self) -> int:
        return parameter_count(self.module)

    @property
    def onnx_nodes(self) -> int:
        return len(self.onnx.graph.node)

    @property
    def onnx_bytes(self) -> int:
        return self.onnx.ByteSize()


def compile(spec: str | Path, target: str = "onnx", out: str | Path | None = None,
            model: str | None = None, seed: int = 0, pipeline=None, dump_after=(), dump=None,
            params: dict | None = None, **kw) -> CompileResult:
    """Compile a spec: check, lower to fx, run the pass pipeline, emit ONNX (written if `out`)."""
    from compiler.lower import lower
    from compiler.onnx_backend import save_onnx, to_onnx
    from passes.cleanup import default_pipeline, for_target

    if target not in ("onnx", "triton"):
        raise ValueError(f"unknown target {target!r}; targets: onnx, triton")
    times, t0 = {}, time.perf_counter()
    checked = _check_for(spec, out, model, {**(params or {}), **kw})
    times["check"] = time.perf_counter() - t0
    gm = lower(checked, seed)
    times["lower"] = time.perf_counter() - t0 - times["check"]
    gm = for_target(pipeline or default_pipeline(), target).run(gm, dump_after, dump)
    times["passes"] = time.perf_counter() - t0 - times["check"] - times["lower"]
    if target == "triton":  # out is a directory: model.py + weights.pt
        from compiler.triton_backend import emit
        plan = emit(gm, out, checked.file, checked.name)
        times["total"] = time.perf_counter() - t0
        return CompileResult(str(spec), checked.name, Path(out) if out else None, gm, None, times, plan)
    proto = to_onnx(gm, graph_name=checked.name, metadata=metadata(checked))
    if out is not None:
        save_onnx(proto, out)
    times["total"] = time.perf_counter() - t0
    return CompileResult(str(spec), checked.name, Path(out) if out else None, gm, proto, times)


def parameter_count(module) -> int:
    """Weights a module carries: parameters and buffers (constant folding leaves buffers)."""
    return sum(p.numel() for p in module.parameters()) + sum(b.numel() for b in module.buffers())


def metadata(checked: CheckedModel) -> dict[str, str]:
    from runtime.session import INDEX_KEY, VOCAB_KEY
    return {"invc.source_sha256": checked.source_hash, "invc.spec": checked.file,
            **{f"invc.{k}": v for k, v in checked.declarations().items()},
            **{VOCAB_KEY + name: str(rows) for name, rows in token_inputs(checked).items()},
            **{INDEX_KEY + name: str(dim) for name, dim in gathered_inputs(checked).items()}}


def token_inputs(checked: CheckedModel) -> dict[str, int]:
    """Inputs that feed an embedding directly, with the fewest rows a table they index has."""
    inputs = {p.value.id: p.name for p in checked.inputs}
    rows: dict[str, int] = {}
    for n in checked.nodes:
        ids = n.args[0] if n.op == "embedding" else None
        if getattr(ids, "id", None) in inputs:
            name = inputs[ids.id]
            rows[name] = min(rows.get(name, n.params["weight"].shape[0]), n.params["weight"].shape[0])
    return rows


def gathered_inputs(checked: CheckedModel) -> dict[str, str | int]:
    """Inputs that gather reads as its index, with the dim (a name or a size) they index."""
    inputs = {p.value.id: p.name for p in checked.inputs}
    return {inputs[n.args[1].id]: n.args[0].type.shape[n.kwargs["axis"]]
            for n in checked.nodes if n.op == "gather" and n.args[1].id in inputs}
