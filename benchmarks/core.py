"""Core pipeline benchmarks: compile latency, `invc check` wall time, and inference speed.

    python benchmarks/core.py compile     # invc compile vs torch.onnx.export(dynamo=True)
    python benchmarks/core.py check       # `invc check` as a subprocess, and its imports
    python benchmarks/core.py inference   # ORT on invc's ONNX vs torch eager vs ORT on export's ONNX

Every table compares its contenders side by side in one run: repeats interleave them, so load
from other processes on the machine hits all of them alike. Each cell is a median over repeats.
"""
from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"


# -- shared helpers ------------------------------------------------------------------------------
def examples(names: list[str] | None) -> list[Path]:
    specs = sorted(EXAMPLES.glob("*.inv"))
    return [s for s in specs if s.stem in names] if names else specs


def print_table(title: str, header: list[str], rows: list[list[str]]) -> None:
    # A FAILED row's long message is left out of the widths; it runs past the columns instead.
    full = [r for r in [header, *rows] if len(r) == len(header)]
    widths = [max(len(str(r[i])) for r in full) for i in range(len(header))]
    print(f"\n## {title}")
    for row in [header, *rows]:
        print("  ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip())


def ms(seconds: float) -> str:
    return f"{seconds * 1e3:.2f}"


def ratio(slow: float, fast: float) -> str:
    return f"{slow / fast:.2f}x"


def interleaved(runners: dict, repeats: int) -> dict[str, float]:
    """Median seconds of each runner, the runners taking turns in every repeat."""
    samples: dict[str, list[float]] = {name: [] for name in runners}
    for _ in range(repeats):
        for name, run in runners.items():
            t0 = time.perf_counter()
            run()
            samples[name].append(time.perf_counter() - t0)
    return {name: statistics.median(s) for name, s in samples.items()}


# -- compile latency -----------------------------------------------------------------------------
def _torch_export_inputs(spec: Path):
    """Example inputs at B=2, other dims 8 (not 0/1, which export would specialise), and every
    symbolic axis marked dynamic so the exported file serves all sizes, as invc's does."""
    import torch
    from compiler.driver import check
    checked = check(spec)
    rng = torch.Generator().manual_seed(0)
    args, dynamic = [], []
    for port in checked.inputs:
        shape = [2 if d == "B" else 8 if isinstance(d, str) else d for d in port.type.shape]
        args.append(_random_tensor(port.type.dtype, shape, rng))
        dynamic.append({i: torch.export.Dim.DYNAMIC for i, d in enumerate(port.type.shape)
                        if isinstance(d, str)})
    return tuple(args), tuple(dynamic)


def _random_tensor(dtype: str, shape: list[int], rng):
    import torch
    if dtype == "bool":
        return torch.rand(shape, generator=rng) < 0.8
    if dtype.startswith("i"):
        return torch.randint(0, 2, shape, generator=rng, dtype=getattr(torch, f"int{dtype[1:]}"))
    return torch.randn(shape, generator=rng)


def torch_export(spec: Path, path: Path) -> None:
    """The spec's built module through torch.onnx.export(dynamo=True), weights in one file."""
    import torch
    from compiler.driver import build
    module = build(spec).eval()
    args, dynamic = _torch_export_inputs(spec)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, args, str(path), dynamo=True, dynamic_shapes=dynamic,
                          external_data=False, verbose=False)


def _compile_row(spec: Path, tmp: Path, args) -> list[str]:
    from compiler.driver import compile
    out = tmp / f"{spec.stem}.onnx"
    t0 = time.perf_counter()
    result = compile(spec, out=out)
    first = time.perf_counter() - t0
    runners = {"invc": lambda: compile(spec, out=out)}
    if not args.no_export and _try_export(spec, tmp / f"{spec.stem}.torch.onnx"):
        runners["export"] = lambda: torch_export(spec, tmp / f"{spec.stem}.torch.onnx")
    for run in runners.values():
        run()  # warm-up: the first export pays a one-off ~2 s set-up
    med = interleaved(runners, args.repeats)
    export = med.get("export")
    return [spec.stem, str(result.onnx_nodes), ms(first), ms(med["invc"]),
            _skipped(args) if export is None else ms(export),
            _skipped(args) if export is None else ratio(export, med["invc"])]


def _try_export(spec: Path, path: Path) -> bool:
    """Whether torch.onnx.export handles the spec's module; when not, only the export cells say so."""
    try:
        torch_export(spec, path)
        return True
    except Exception as e:  # noqa: BLE001 - the exporter raises many types
        print(f"torch.onnx.export failed on {spec.stem}: {type(e).__name__}: {str(e).splitlines()[0][:120]}")
        return False


def _skipped(args) -> str:
    return "-" if args.no_export else "export-failed"


def bench_compile(args) -> None:
    import torch  # imported up front: the timings exclude imports
    import compiler.driver  # noqa: F401
    torch.set_num_threads(args.threads)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for spec in examples(args.examples):
            try:
                rows.append(_compile_row(spec, Path(tmp), args))
            except Exception as e:  # noqa: BLE001 - a spec still in the works fails its own row only
                rows.append([spec.stem, f"FAILED: {type(e).__name__}: {str(e).splitlines()[0][:80]}"])
    print_table(f"Compile latency, parse -> ONNX file, in-process (ms; median of {args.repeats}; "
                f"torch threads {args.threads})",
                ["example", "onnx nodes", "invc first", "invc median", "torch.onnx.export",
                 "export/invc"], rows)


# -- check wall time -----------------------------------------------------------------------------
def _invc() -> str:
    # The console script beside this interpreter: the venv's `invc`, with its real start-up.
    script = Path(sys.executable).with_name("invc")
    if not script.exists():
        raise SystemExit(f"no invc script beside {sys.executable}; run from the project's venv")
    return str(script)


def _check_once(spec: Path) -> tuple[float, int]:
    t0 = time.perf_counter()
    code = subprocess.run([_invc(), "check", str(spec)], capture_output=True, cwd=ROOT).returncode
    return time.perf_counter() - t0, code


def heavy_imports(spec: Path) -> tuple[list[str], float]:
    """Heavy packages the check path imports (with the chain that pulled each in), and its import ms."""
    code = f"import compiler.cli; compiler.cli.main(['check', {str(spec)!r}])"
    proc = subprocess.run([sys.executable, "-X", "importtime", "-c", code],
                          capture_output=True, text=True, cwd=ROOT)
    lines = [m.groups() for m in re.finditer(r"import time:\s+\d+ \|\s+(\d+) \|( *)(\S+)", proc.stderr)]
    found = [_import_chain(lines, i) for i, (_, _, name) in enumerate(lines)
             if name in ("torch", "numpy", "onnx", "onnxruntime")]
    total = sum(int(us) for us, indent, _ in lines if len(indent) == 1)
    return found, total / 1e3


def _import_chain(lines, i: int) -> str:
    # importtime prints children before parents, one more space of indent per level.
    chain, depth = [lines[i][2]], len(lines[i][1])
    for _, indent, name in lines[i + 1:]:
        if len(indent) < depth:
            chain.append(name)
            depth = len(indent)
    return " <- ".join(chain)


def bench_check(args) -> None:
    rows, chains = [], []
    for spec in examples(args.examples):
        if not args.quick:
            _check_once(spec)  # warm-up: page cache and .pyc files
        runs = [_check_once(spec) for _ in range(args.repeats)]
        heavy, import_ms = heavy_imports(spec)
        chains += heavy
        wall = statistics.median(t for t, _ in runs)
        rows.append([spec.stem, str(runs[0][1]), ms(wall), f"{import_ms:.1f}",
                     "none" if not heavy else "YES", ratio(0.5, wall)])
    # Exit status 2 is a spec the checker rejects (an error example): its time counts all the same.
    print_table(f"`invc check` wall time, process start-up included (ms; median of {args.repeats})",
                ["example", "exit", "wall", "imports", "torch/numpy/onnx", "target/wall"], rows)
    for chain in chains:
        print(f"heavy import: {chain}")


# -- inference -----------------------------------------------------------------------------------
def _ort_session(path, threads: int, native: bool = True):
    """A plain onnxruntime session, with invc's native frame kernels registered as invc's Session
    does (`native=False`: the frames' ONNX function bodies run instead)."""
    import onnxruntime as ort

    from runtime import native as kernels
    opts = ort.SessionOptions()
    if native:
        kernels.register(opts)
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def _feeds(path: Path, batch: int, size: int) -> dict:
    import numpy as np
    from runtime.session import Session, random_inputs
    session = Session(path, "cpu")  # only to read the input names, dtypes and symbolic dims
    # Every symbolic dim other than the batch B is a set or sequence length.
    dims = {d: batch if d == "B" else size for i in session.inputs for d in i.shape if isinstance(d, str)}
    if not any(i.name == "offsets" for i in session.inputs):
        return random_inputs(session.inputs, dims)
    # Ragged sets: `batch` sets of `size` rows stacked along N, delimited by CSR offsets [B+1].
    feeds = random_inputs(session.inputs, {**dims, "B": batch + 1, "N": batch * size})
    feeds["offsets"] = np.arange(0, batch * size + 1, size, dtype=np.int64)
    return feeds


def _loop(run, budget: float):
    """`run` repeated enough times to last about `budget` s, so sub-ms calls time well."""
    t0 = time.perf_counter()
    run()
    calls = max(1, int(budget / max(time.perf_counter() - t0, 1e-7)))

    def many():
        for _ in range(calls):
            run()
    return many, calls


def _inference_row(spec: Path, batch: int, tmp: Path, args) -> list[str]:
    import numpy as np
    import torch
    from compiler.driver import build, compile
    invc_path, export_path = tmp / f"{spec.stem}.onnx", tmp / f"{spec.stem}.torch.onnx"
    if not invc_path.exists():
        compile(spec, out=invc_path)
    exported = export_path.exists() or (not args.no_export and _try_export(spec, export_path))
    feeds = _feeds(invc_path, batch, args.size)
    module = build(spec).eval()
    tensors = [torch.from_numpy(feeds[i]) for i in feeds]

    def eager():
        with torch.inference_mode():
            return module(*tensors)
    runners = {"eager": eager, "invc": _ort_runner(invc_path, feeds, args.threads)}
    if exported:
        runners["export"] = _ort_runner(export_path, feeds, args.threads)
    want = eager()
    for got, ref in zip(runners["invc"](), want if isinstance(want, tuple) else (want,)):  # every output
        np.testing.assert_allclose(got, ref.numpy(), rtol=1e-3, atol=1e-4)
    t = _per_call(runners, args)
    export = [f"{t['export'] * 1e6:.1f}", ratio(t["export"], t["invc"])] if exported else [_skipped(args)] * 2
    return [spec.stem, str(batch), f"{t['eager'] * 1e6:.1f}", export[0], f"{t['invc'] * 1e6:.1f}",
            ratio(t["eager"], t["invc"]), export[1]]


def _ort_runner(path: Path, feeds: dict, threads: int):
    session = _ort_session(path, threads)
    # Both files take the inputs in the spec's order (export's follow forward's arguments).
    named = dict(zip([i.name for i in session.get_inputs()], feeds.values()))
    return lambda: session.run(None, named)


def _per_call(runners: dict, args) -> dict[str, float]:
    """Median seconds per call of each runner, timed in interleaved loops."""
    loops = {name: _loop(run, args.budget) for name, run in runners.items()}
    med = interleaved({name: loop for name, (loop, _) in loops.items()}, args.repeats)
    return {name: med[name] / loops[name][1] for name in med}


def bench_inference(args) -> None:
    import torch
    torch.set_num_threads(args.threads)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for spec in examples(args.examples):
            for batch in args.batches:
                try:
                    rows.append(_inference_row(spec, batch, Path(tmp), args))
                except Exception as e:  # noqa: BLE001 - a spec still in the works fails its own row only
                    rows.append([spec.stem, str(batch), f"FAILED: {type(e).__name__}: "
                                 f"{str(e).splitlines()[0][:80]}"])
    print_table(f"Inference, CPU (us per call; median of {args.repeats}; torch threads = ORT intra-op "
                f"threads = {args.threads}, ORT_ENABLE_ALL; set/sequence dims = {args.size})",
                ["example", "batch", "torch eager", "ORT export", "ORT invc", "eager/invc",
                 "export/invc"], rows)


# -- command line --------------------------------------------------------------------------------
def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="bench", required=True, metavar="BENCH")
    for name, run, repeats, help_ in [
            ("compile", bench_compile, 7, "compile latency, invc vs torch.onnx.export(dynamo=True)"),
            ("check", bench_check, 11, "`invc check` wall time as a subprocess, and its heavy imports"),
            ("inference", bench_inference, 15, "ORT on invc's ONNX vs torch eager vs ORT on export's")]:
        s = sub.add_parser(name, help=help_, description=help_)
        s.set_defaults(run=run)
        s.add_argument("--examples", nargs="+", metavar="NAME", help="example stems (default: all)")
        s.add_argument("--repeats", type=int, default=repeats, help=f"timed repeats (default {repeats})")
        s.add_argument("--threads", type=int, default=1, help="torch and ORT intra-op threads (default 1)")
        s.add_argument("--quick", action="store_true", help="smoke mode: one repeat, small sizes")
        if name != "check":
            s.add_argument("--no-export", action="store_true", help="skip torch.onnx.export")
        if name == "inference":
            s.add_argument("--batches", type=int, nargs="+", default=[1, 64], help="default: 1 64")
            s.add_argument("--size", type=int, default=32, help="set/sequence length N (default 32)")
            s.add_argument("--budget", type=float, default=0.2,
                           help="seconds per timed loop; short calls repeat within it (default 0.2)")
    return p


def main(argv=None) -> None:
    args = parser().parse_args(argv)
    if args.quick:
        args.repeats = 1
        if args.bench == "inference":
            args.batches, args.size, args.budget = [1, 4], 4, 0.005
    load = os.getloadavg()[0]  # other jobs on the machine slow every contender alike
    print(f"# machine: {os.cpu_count()} CPUs, {_cpu_name()}; python {sys.version.split()[0]}; "
          f"load average {load:.2f}")
    args.run(args)


def _cpu_name() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "unknown CPU"
    found = re.search(r"model name\s*:\s*(.+)", text)
    return found.group(1) if found else "unknown CPU"


if __name__ == "__main__":
    main()
