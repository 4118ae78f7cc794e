"""The core subcommands: check, compile, run, graph and demo."""
from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
import time
from pathlib import Path

from common.errors import CheckFailed, InvcError

DEFAULT_DEMO = Path(__file__).resolve().parent.parent / "examples" / "deepsets.inv"


def register(sub) -> None:
    _check_cmd(sub)
    _compile_cmd(sub)
    _run_cmd(sub)
    _graph_cmd(sub)
    _demo_cmd(sub)


def _spec_args(p: argparse.ArgumentParser, required: bool = True) -> None:
    p.add_argument("spec", nargs=None if required else "?", help="the .inv spec file")
    _model_args(p)


def _model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", help="which model of the spec (needed when it declares several)")
    p.add_argument("--param", "-p", action="append", default=[], metavar="NAME=VALUE",
                   help="override a model parameter, e.g. -p hidden=128 (repeatable)")
    p.add_argument("--limit", action="append", default=[], metavar="NAME=VALUE",
                   help="raise a work limit, e.g. --limit nodes=100000 (repeatable); limits: "
                        "spec_bytes, depth, repeat, nodes, parameters (see README)")


def parse_params(items: list[str]) -> dict:
    params = {}
    for item in items:
        name, sep, text = item.partition("=")
        if not sep or not name.isidentifier():
            raise InvcError(f"malformed --param {item!r}: expected NAME=VALUE, e.g. hidden=128")
        params[name] = _literal(text)
    return params


def parse_limits(items: list[str]) -> dict[str, int]:
    from dsl import limits
    changes = {}
    for item in items:
        name, sep, text = item.partition("=")
        value = decimal(text)
        if not sep or name not in limits.names() or not value:
            raise InvcError(f"malformed --limit {item[:40]!r}: expected NAME=N with N from 1 to 2**63-1, "
                            f"NAME one of {', '.join(limits.names())}")
        changes[name] = value
    return changes


def decimal(text: str) -> int | None:
    """The count a decimal text spells, from 1 to 2**63-1 (an ONNX dim's int64), else None."""
    from dsl.limits import INT_MAX
    value = int(text) if text.isdecimal() and len(text) <= 19 else 0  # 20 digits are past INT_MAX
    return value if 1 <= value <= INT_MAX else None


def positive(kind):
    """An argparse type: a `kind` above zero, so a bad count or tolerance is refused with exit 2."""
    def parse(text: str):
        value = kind(text)  # a ValueError becomes argparse's "invalid int value"
        if not value > 0:
            raise argparse.ArgumentTypeError(f"must be above 0, got {text}")
        return value
    parse.__name__ = kind.__name__
    return parse


def seed(text: str) -> int:
    """An argparse type: a seed torch can take, so a bad one is refused with exit 2 before any work."""
    value = int(text)  # a ValueError becomes argparse's "invalid seed value"
    if not -2**63 <= value < 2**64:
        raise argparse.ArgumentTypeError(f"{text[:24]}{'...' if len(text) > 24 else ''} is outside torch's "
                                         "seed range, -2**63 to 2**64-1")
    return value


def _literal(text: str):
    if text in ("true", "false"):
        return text == "true"
    if text.lstrip("-").isdecimal() and len(text.lstrip("-0")) > 19:
        raise InvcError(f"--param value {text[:20]}... ({len(text)} characters) is too large for an int")
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


# -- check ---------------------------------------------------------------------------------------
def _check_cmd(sub) -> None:
    p = sub.add_parser("check", help="parse and type-check a spec (fast; needs no torch)",
                       description="Parse and type-check a spec, and print its typed interface.")
    _spec_args(p)
    p.set_defaults(run=_check)


def _check(args) -> int:
    from compiler.driver import check
    m = check(args.spec, args.model, parse_params(args.param))
    params = sum(math.prod(s.shape) for n in m.nodes for s in n.params.values())
    print(f"{m.file}: model {m.name} is well-typed: {len(m.nodes)} ops, {params:,} parameters")
    print("\n".join([*(f"  input  {port}" for port in m.inputs), *(f"  output {port}" for port in m.outputs)]))
    if len(m.groups):
        from dsl.symmetry import render, verdicts
        print(f"symmetry {m.groups}: every claimed output is proved")
        print(render(m, verdicts(m)))
    return 0


# -- compile -------------------------------------------------------------------------------------
def _compile_cmd(sub) -> None:
    p = sub.add_parser("compile", help="compile a spec to ONNX",
                       description="Compile a spec: check, lower to torch.fx, run the pass pipeline, "
                                   "emit ONNX. The file is written atomically.")
    _spec_args(p, required=False)
    p.add_argument("-o", "--out", help="output file, or directory for --target triton "
                                        "(default: SPEC's name with .onnx, or SPEC's name + _triton/, here)")
    p.add_argument("--target", default="onnx", choices=["onnx", "triton"], help="backend (default: onnx)")
    p.add_argument("--explain", action="store_true",
                   help="with --target triton: list the regions that became kernels and those that "
                        "fell back to torch, with the reason")
    p.add_argument("--seed", type=seed, default=0, help="parameter initialisation seed (default 0)")
    p.add_argument("--print-passes", action="store_true", help="print the compile pipeline's steps and exit")
    p.add_argument("--dump-after", action="append", default=[], metavar="STEP",
                   help="print the model after this step: the typed ops, the proofs, the fx graph, the "
                        "ONNX graph (repeatable)")
    p.set_defaults(run=_compile)


def _compile(args) -> int:
    from compiler.driver import compile, steps
    if args.print_passes:
        print(steps(args.target))
        return 0
    if not args.spec:
        raise InvcError("compile needs a spec file (or --print-passes)")
    default = Path(args.spec).stem + ("_triton" if args.target == "triton" else ".onnx")
    out = Path(args.out) if args.out else Path(default)
    result = compile(args.spec, args.target, out, args.model, args.seed, None, args.dump_after,
                     _dump, params=parse_params(args.param))
    if args.target == "triton":
        print(result.triton.explain() if args.explain else
              f"{result.spec}: model {result.model} -> {out}/model.py ({len(result.triton.regions)} "
              f"kernel regions, {result.parameters:,} parameters, {result.seconds['total'] * 1000:.0f} ms)")
        return 0
    print(f"{result.spec}: model {result.model} -> {out} ({result.onnx_bytes / 1024:.1f} KiB, "
          f"{result.onnx_nodes} ONNX nodes, {result.parameters:,} parameters, "
          f"{result.seconds['total'] * 1000:.0f} ms)")
    return 0


def _dump(step, result) -> None:
    print(f"# after {step.name}")
    print(step.show(result))


# -- run -----------------------------------------------------------------------------------------
def _run_cmd(sub) -> None:
    p = sub.add_parser("run", help="run an ONNX file in onnxruntime",
                       description="Run an ONNX file with onnxruntime (CUDA when present, else CPU).")
    p.add_argument("model", help="the .onnx file")
    p.add_argument("--input", "-i", action="append", default=[], metavar="NAME=FILE",
                   help="an input: NAME=x.npy, NAME=file.npz, or file.npz with every input (repeatable)")
    p.add_argument("--random", metavar="DIM=SIZE,...",
                   help="feed random inputs instead, with these symbolic dim sizes, e.g. B=2,N=16")
    p.add_argument("-o", "--out", help="save the outputs to this .npz file")
    p.add_argument("--provider", default="auto", help="auto (default), cpu or cuda")
    p.set_defaults(run=_run)


def _run(args) -> int:
    import numpy as np
    from runtime import native
    from runtime.session import Session, load_inputs, random_inputs
    dims = _dims(args.random) if args.random else None  # a malformed flag is refused before loading
    if args.out:  # refused before the model runs: a missing folder, or an input in its place
        from common.files import check_output
        check_output(args.out, [args.model] + [i.rpartition("=")[2] for i in args.input], "outputs")
    session = Session(args.model, args.provider)
    if session.note:
        print(session.note, file=sys.stderr)
    if session.frames and session.kernels.startswith(native.BODIES):  # fell back: say why, once
        print(f"note: {session.kernels}", file=sys.stderr)
    # Random ids stay below what they index: a table's rows, a dim's size (a vocabulary of 1 included).
    feeds = random_inputs(session.inputs, dims, bounds=session.id_bounds()) if args.random else \
        load_inputs(args.input)
    t0 = time.perf_counter()
    outputs = session.run(feeds)
    ms = (time.perf_counter() - t0) * 1000
    print(f"{args.model}: ran on {session.provider} in {ms:.1f} ms")
    for name, value in outputs.items():
        preview = np.array2string(value.ravel()[:6], precision=4, separator=", ")
        print(f"  {name}: {value.dtype} {list(value.shape)} {preview}{' ...' if value.size > 6 else ''}")
    if args.out:
        _save_npz(args.out, outputs)
    return 0


def _dims(text: str) -> dict:
    dims = {}
    for item in text.split(","):
        name, sep, size = item.partition("=")
        count = decimal(size.strip())
        if not sep or not name.strip().isidentifier() or not count:
            raise InvcError(f"malformed --random {text[:60]!r}: expected DIM=SIZE,..., with SIZE from 1 to "
                            "2**63-1, e.g. B=2,N=16")
        dims[name.strip()] = count
    return dims


def _save_npz(path: str, arrays: dict) -> None:
    import numpy as np
    from common.files import atomic_file
    with atomic_file(path, "outputs") as f:
        np.savez(f, **arrays)


# -- graph ---------------------------------------------------------------------------------------
def _graph_cmd(sub) -> None:
    p = sub.add_parser("graph", help="print the torch.fx graph of a spec",
                       description="Print the fx graph lowered from a spec, with node and parameter counts.")
    _spec_args(p)
    p.add_argument("--optimized", action="store_true", help="after the compile pipeline")
    p.set_defaults(run=_graph)


def _graph(args) -> int:
    from compiler.driver import build, parameter_count
    from passes.cleanup import default_pipeline
    gm = build(args.spec, args.model, params=parse_params(args.param))
    if args.optimized:
        gm = default_pipeline().run(gm)
    print(gm.graph)
    ops = sum(1 for n in gm.graph.nodes if n.op == "call_function")
    print(f"# {len(gm.graph.nodes)} nodes ({ops} ops), {parameter_count(gm):,} parameters")
    return 0


# -- demo ----------------------------------------------------------------------------------------
def _demo_cmd(sub) -> None:
    p = sub.add_parser("demo", help="compile an example, run it in onnxruntime, compare with torch",
                       description="The main job end to end: compile a shipped example spec to ONNX, "
                                   "run it in onnxruntime on random inputs at sizes never seen while "
                                   "compiling, and compare with the torch module built from the same spec.")
    p.add_argument("spec", nargs="?", default=str(DEFAULT_DEMO), help="spec (default: examples/deepsets.inv)")
    _model_args(p)
    p.add_argument("--tol", type=positive(float), default=1e-5, help="max absolute error allowed (default 1e-5)")
    p.set_defaults(run=_demo)


def _demo(args) -> int:
    from compiler.driver import compile
    from compiler.verify import compare_with_torch
    params = parse_params(args.param)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / (Path(args.spec).stem + ".onnx")
        result = compile(args.spec, out=out, model=args.model, params=params)
        report = compare_with_torch(args.spec, out, {"B": 3, "N": 7, "S": 4}, model=args.model, params=params)
    rows = [("spec", os.path.relpath(result.spec)), ("model", result.model), ("parameters", f"{result.parameters:,}"),
            ("fx nodes", str(len(result.module.graph.nodes))), ("ONNX nodes", str(result.onnx_nodes)),
            ("ONNX size", f"{result.onnx_bytes / 1024:.1f} KiB"),
            ("compile time", f"{result.seconds['total'] * 1000:.0f} ms"),
            ("provider", report.provider), ("inputs", report.shapes),
            ("max abs error", f"{report.max_error:.2e} (tolerance {args.tol:g})")]
    if report.kernels:
        rows.insert(-2, ("frame kernels", report.kernels.removeprefix("frame kernels: ")))
    width = max(len(k) for k, _ in rows)
    print("\n".join(f"{k:<{width}}  {v}" for k, v in rows))
    if not report.max_error <= args.tol:  # NaN fails
        raise CheckFailed(f"ONNX and torch differ by {report.max_error:.2e} > {args.tol:g}")
    return 0
