"""The Python front door: check, build and compile a .inv spec.

    module = compiler.build("my.inv", hidden=128)              # a trainable torch.nn.Module
    result = compiler.compile("my.inv", out="my.onnx")         # parse -> ... -> emit: steps()
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

from dsl.checker import proved
from ops.registry import check as _check
from dsl.program import Program, load
from dsl.types import CheckedModel


def check(spec: str | Path, model: str | None = None, params: dict | None = None, **kw) -> CheckedModel:
    """Parse and type-check a spec; raises dsl.errors.SpecError. Needs no torch.
    Model parameters come as keywords (hidden=128) or, when a name is also one of these
    functions' own arguments (model, seed, ...), in `params`."""
    return _check(load(spec), model, {**(params or {}), **kw})


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
    """Compile a spec through the steps of `steps()`; `pipeline` replaces its graph passes. The ONNX
    file (a directory for the triton target) is written when `out` is given."""
    seconds, t0 = {}, time.perf_counter()
    result = steps(target, pipeline, out, model, {**(params or {}), **kw}, seed).run(spec, dump_after, dump, seconds)
    result.seconds = {**seconds, "total": time.perf_counter() - t0}
    return result


def steps(target: str = "onnx", passes=None, out=None, model=None, params=None, seed: int = 0):
    """The whole compile path as one printable Pipeline: front end, lowering, graph passes, backend."""
    from compiler.lower import lower
    from passes.base import Pipeline, Step, graph_text
    from passes.cleanup import default_pipeline, for_target
    if target not in ("onnx", "triton"):
        raise ValueError(f"unknown target {target!r}; targets: onnx, triton")
    return Pipeline([
        Step("parse", partial(_parse, out=out, target=target), "read the spec and its imports", _program_text),
        Step("check", partial(_check, model=model, overrides=params, prove=False),
             "type-check and elaborate into a typed op list"),
        Step("prove", proved, "prove each claimed output symmetry, or refuse at the op that breaks it", _proofs),
        Step("lower", partial(lower, seed=seed), "build the torch.fx graph node by node", graph_text),
        *for_target(passes or default_pipeline(), target).passes,
        Step("emit", partial(_emit, target=target, out=out), f"the {target} backend; the output is written atomically",
             _emitted)])


def _parse(spec, out, target: str) -> Program:
    """The spec (a path, or a Program already loaded) and its imports, after refusing an output that
    would replace one of them or a torch model they name (or that cannot be written), before any work."""
    program = spec if isinstance(spec, Program) else load(spec)
    if out is not None:
        from common.files import check_output
        inputs = [*program.texts, *torch_sources(program)]
        if target == "triton":
            from compiler.triton_backend import MARKER
            check_output(out, inputs, "Triton module", MARKER)
        else:
            check_output(out, inputs, "output")
    return program


def torch_sources(program: Program) -> list[Path]:
    """The files behind the spec's torch defs, found without importing anything: saved programs,
    and the user's modules beside the spec (a file or a package folder), so no output replaces them."""
    from dsl.ast import TorchDef
    found = []
    for d in program.defs.values():
        if isinstance(d, TorchDef):
            folder = Path(d.pos.file).resolve().parent
            top = d.source.partition(":")[0].split(".")[0]
            candidates = [folder / d.source] if d.source.endswith(".pt2") else [folder / f"{top}.py", folder / top]
            found += [p for p in candidates if p.exists()]
    return found


def _program_text(program: Program) -> str:
    return "\n".join([f"files   {', '.join(program.texts)}", f"models  {', '.join(program.models)}",
                      f"defs    {', '.join(program.defs) or '-'}"])


def _proofs(checked: CheckedModel) -> str:
    from dsl.symmetry import render, verdicts
    return render(checked, verdicts(checked)) if len(checked.groups) else "no symmetry declared"


def _emit(gm, target: str, out) -> CompileResult:
    checked, where = gm.meta["invc"], Path(out) if out else None
    if target == "triton":  # out is a directory: model.py + weights.pt
        from compiler.triton_backend import emit
        plan = emit(gm, out, checked.file, checked.name)
        return CompileResult(checked.file, checked.name, where, gm, None, triton=plan)
    from compiler.onnx_backend import save_onnx, to_onnx
    proto = to_onnx(gm, graph_name=checked.name, metadata=metadata(checked))
    if out is not None:
        save_onnx(proto, out)
    return CompileResult(checked.file, checked.name, where, gm, proto)


def _emitted(result: CompileResult) -> str:
    from onnx.helper import printable_graph
    return result.triton.explain() if result.triton else printable_graph(result.onnx.graph)


def parameter_count(module) -> int:
    """Weights a module carries: parameters and buffers (constant folding leaves buffers)."""
    return sum(p.numel() for p in module.parameters()) + sum(b.numel() for b in module.buffers())


def metadata(checked: CheckedModel) -> dict[str, str]:
    return {"invc.source_sha256": checked.source_hash, "invc.spec": checked.file,
            **{f"invc.{k}": v for k, v in checked.declarations().items()}}
