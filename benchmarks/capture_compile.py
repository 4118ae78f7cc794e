"""Compiling captured torch models (issue 23): `invc compile` of a spec that names a torch model against
torch.onnx.export(dynamo=True) of the same model, then onnxruntime on both files, side by side in one run.

    python benchmarks/capture_compile.py             # 7 repeats
    python benchmarks/capture_compile.py --quick     # smoke mode: one repeat, small graphs

The models are tests/torch_models.py, named by tests/torch_models.inv. Compile time is all that
compiler.compile does (the factory, torch.export, lift, replay check, passes, emit, onnx check, the
onnxruntime load); the export's is the factory and torch.onnx.export(dynamo=True) with the same dims
dynamic as invc's file, weights in the one file. Both run once untimed (torch.export's one-off set-up),
then the repeats interleave them. Inference runs both files in plain onnxruntime sessions with the same
options and threads: batch 1 is one graph of 1,000 nodes and 5,000 edges (batch 64: 64 such graphs,
disjoint) or one cloud of 1,024 points (64 clouds). "NaN places" counts output elements where a file
has NaN and torch not, or the reverse, after one NaN in one node's (one point's) features.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import warnings
from functools import partial
from pathlib import Path

import numpy as np
import onnx
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from core import _cpu_name, _ort_session, _per_call, interleaved, ms, print_table, ratio  # noqa: E402

import compiler  # noqa: E402
from capture.lift import EXPORTED  # noqa: E402
from tests import torch_models  # noqa: E402

SPEC = ROOT / "tests" / "torch_models.inv"
MODELS = {"gin": torch_models.gin, "sage": torch_models.sage, "gat": torch_models.gat,
          "egnn": torch_models.egnn, "pointnet": torch_models.pointnet}


def fresh_compile(model: str, out: Path):
    """invc compile with no export cached from an earlier compile in this process: every repeat pays
    for torch.export, as a new `invc compile` does."""
    EXPORTED.clear()
    return compiler.compile(SPEC, model=model, out=out)


def feeds(model: str, batch: int, size: dict, rng) -> dict:
    """`batch` graphs of size["nodes"] nodes and size["edges"] edges as one disjoint graph, or `batch`
    clouds of size["points"] points; in the spec's input order."""
    if model == "pointnet":
        return {"points": rng.standard_normal((batch, 3, size["points"]), dtype=np.float32)}
    nodes = batch * size["nodes"]
    graphs = [rng.integers(0, size["nodes"], (2, size["edges"])) + k * size["nodes"] for k in range(batch)]
    out = {"x": rng.standard_normal((nodes, torch_models.FEATURES), dtype=np.float32),
           "edge_index": np.concatenate(graphs, axis=1)}
    if model == "egnn":
        out["pos"] = rng.standard_normal((nodes, 3), dtype=np.float32)
    return out


def dynamo_export(model: str, onnx_inputs, example: dict, path: Path) -> None:
    """torch.onnx.export(dynamo=True) with each dim that invc's file leaves symbolic dynamic, by name."""
    dims = {}
    shapes = tuple({axis: dims.setdefault(d.dim_param, torch.export.Dim(d.dim_param))
                    for axis, d in enumerate(i.type.tensor_type.shape.dim) if d.dim_param} for i in onnx_inputs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(MODELS[model](), tuple(torch.from_numpy(v) for v in example.values()), str(path),
                          dynamo=True, dynamic_shapes=shapes, external_data=False, verbose=False)


def named(session, x: dict) -> dict:
    """`x` under the file's input names: dynamo's follow forward's arguments, in the spec's order."""
    return dict(zip([i.name for i in session.get_inputs()], x.values()))


def nan_misplaced(session, module, model: str, x: dict) -> int:
    """Output elements where the file and torch disagree on NaN, after a NaN in node 0's second feature
    (PointNet: the first coordinate of cloud 0's second point)."""
    x = {k: v.copy() for k, v in x.items()}
    x["points" if model == "pointnet" else "x"].flat[1] = np.nan
    with torch.no_grad():
        want = module(*(torch.from_numpy(v) for v in x.values()))
    want = want if isinstance(want, tuple) else (want,)
    got = session.run(None, named(session, x))
    return sum(int((np.isnan(g) != np.isnan(w.numpy())).sum()) for g, w in zip(got, want))


def bench(model: str, tmp: Path, args) -> tuple[list, list]:
    invc_path, dynamo_path = tmp / f"{model}.invc.onnx", tmp / f"{model}.dynamo.onnx"
    rng = np.random.default_rng(0)
    example = feeds(model, 2, args.sizes, rng)  # batch 2: export would fix a batch dim of size 1
    t0 = time.perf_counter()
    result = compiler.compile(SPEC, model=model, out=invc_path)
    first = time.perf_counter() - t0
    runners = {"invc": lambda: fresh_compile(model, invc_path),
               "dynamo": lambda: dynamo_export(model, result.onnx.graph.input, example, dynamo_path)}
    try:
        runners["dynamo"]()  # warm-up; invc's was the first compile
    except Exception as e:  # noqa: BLE001 - what dynamo cannot export is a row of its own
        reason = str(e).split("Exception summary")[-1].strip().splitlines()[2 if "Exception summary" in str(e) else 0]
        return [model, f"{result.onnx_nodes} / -", ms(first), "-", f"fails: {reason[:90]}", "-"], []
    med = interleaved(runners, args.repeats)
    compile_row = [model, f"{result.onnx_nodes} / {len(onnx.load(dynamo_path).graph.node)}", ms(first),
                   ms(med["invc"]), ms(med["dynamo"]), f"{med['invc'] / med['dynamo']:.2f}"]
    module = MODELS[model]()
    sessions = {"invc": _ort_session(invc_path, args.threads), "dynamo": _ort_session(dynamo_path, args.threads)}
    rows = []
    for batch in args.batches:
        x = feeds(model, batch, args.sizes, rng)
        t = _per_call({name: partial(s.run, None, named(s, x)) for name, s in sessions.items()}, args)
        misplaced = {name: nan_misplaced(s, module, model, x) for name, s in sessions.items()}
        rows.append([model, str(batch), f"{t['invc'] * 1e3:.2f}", f"{t['dynamo'] * 1e3:.2f}",
                     ratio(t["dynamo"], t["invc"]), f"{misplaced['invc']} / {misplaced['dynamo']}"])
    return compile_row, rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", choices=list(MODELS), default=list(MODELS))
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--threads", type=int, default=os.cpu_count(), help="ORT and torch threads (default: all)")
    p.add_argument("--budget", type=float, default=0.5, help="seconds per timed inference loop (default 0.5)")
    p.add_argument("--quick", action="store_true", help="smoke mode: one repeat, small graphs and clouds")
    args = p.parse_args()
    args.batches = [1, 64]
    args.sizes = {"nodes": 1000, "edges": 5000, "points": 1024}
    if args.quick:
        args.repeats, args.budget, args.sizes = 1, 0.01, {"nodes": 20, "edges": 60, "points": 16}
    torch.set_num_threads(args.threads)
    print(f"# machine: {os.cpu_count()} CPUs, {_cpu_name()}; load average {os.getloadavg()[0]:.2f}; "
          f"torch {torch.__version__}; {args.threads} threads")
    compile_rows, inference_rows = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for model in args.models:
            row, rows = bench(model, Path(tmp), args)
            compile_rows.append(row)
            inference_rows += rows
    print_table(f"Compile, in-process (ms; median of {args.repeats}, interleaved, after one warm run each)",
                ["model", "onnx nodes invc / dynamo", "invc first", "invc", "dynamo", "invc/dynamo"], compile_rows)
    print_table(f"onnxruntime CPU (ms per call; median of {args.repeats}; {args.threads} intra-op threads, "
                "ORT_ENABLE_ALL, same options for both files)",
                ["model", "batch", "invc", "dynamo", "dynamo/invc", "NaN places != torch, invc / dynamo"],
                inference_rows)


if __name__ == "__main__":
    main()
