"""Frame-averaging overhead: latency of the frame-averaged model over its bare backbone.

    python benchmarks/frame_overhead.py             # batches 1 and 64, N = 32
    python benchmarks/frame_overhead.py --quick
    python benchmarks/frame_overhead.py --before /tmp/invc-before    # an older checkout, side by side

The FA model is examples/pointcloud_classifier.inv (8 frames of E(3) around a DeepSets backbone,
hidden 64); the bare backbone is the same def called directly. Both are compiled by invc and run
in onnxruntime (CPU). Side by side, in one run: the bare backbone on an 8x batch (the work the 8
frames add, the floor for any frame averaging that runs the backbone per frame), and in torch
eager the same two modules plus a naive frame averaging with torch.linalg.eigh (which cannot be
exported to ONNX).

The frame computation alone (frame_centroid and frame_basis, 8 frames, in a model of its own) is
timed too, as is the canonical model (canonical=true: one frame, one backbone call). "frame -
call" subtracts the cost of calling an ORT session at all, which the frame does not add inside a
model. Each frame model runs twice in the same loops: with invc's native frame kernels registered
(runtime/native.py, as invc's Session runs it) and without, where onnxruntime inlines the frames'
ONNX function bodies: the standard-op form every other runtime runs, the nodes of earlier rounds.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import itertools
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from core import _cpu_name, _ort_session, _per_call, print_table  # noqa: E402

import compiler  # noqa: E402
from compiler.onnx_backend import save_onnx, to_onnx  # noqa: E402
from ops import frames as frame_ops  # noqa: E402
from ops.registry import check  # noqa: E402
from compiler.lower import lower  # noqa: E402
from dsl.program import load_text  # noqa: E402
from passes.cleanup import default_pipeline, for_target  # noqa: E402
from runtime import frames  # noqa: E402
from tests.graphs import build  # noqa: E402

FA_SPEC = ROOT / "examples" / "pointcloud_classifier.inv"
BARE = """import "examples/pointcloud_classifier.inv"
model bare() {
  input pos: f32[B, N, 3]
  input mask: bool[B, N]
  logits = deepsets(pos, mask)
  output logits
}"""
CANONICAL = """import "examples/pointcloud_classifier.inv"
model canonical() {
  symmetry E(3), S(N)
  input pos: f32[B, N, 3] is position
  input mask: bool[B, N]
  logits = frame_average(deepsets, [pos], group="E(3)", out="invariant", mask=mask, canonical=true)
  output logits is invariant
}"""
SIGNS = torch.tensor(list(itertools.product((1.0, -1.0), repeat=3)))  # the 8 sign patterns


@contextlib.contextmanager
def _in(directory: Path):
    before = os.getcwd()
    os.chdir(directory)
    try:
        yield
    finally:
        os.chdir(before)


def spec_module(text: str, name: str):
    """A spec given as text, through invc's compile pipeline up to the fx module."""
    with _in(ROOT):  # the spec text imports the example by a path relative to the repository
        return for_target(default_pipeline(), "onnx").run(lower(check(load_text(text, name))))


def _spec_onnx(text: str, name: str, path: Path) -> Path:
    return save_onnx(to_onnx(spec_module(text, name)), path)


def _frame_only_onnx(path: Path) -> Path:
    """The frame computation alone: centroid and the 8 frames of E(3), nothing else."""
    gm = build({"pos": (("B", "N", 3), "f32"), "mask": (("B", "N"), "bool")},
               [("c", frame_ops.frame_centroid, ["pos"], {"mask": "mask"}),
                ("basis", frame_ops.frame_basis, ["pos", "c"], {"mask": "mask", "proper": False, "canonical": False})],
               {"basis": "basis"})
    return save_onnx(to_onnx(gm), path)


def _empty_onnx(path: Path) -> Path:
    """pos in, pos out through one Identity: what calling a session costs at all."""
    gm = build({"pos": (("B", "N", 3), "f32"), "mask": (("B", "N"), "bool")}, [], {"out": "pos"})
    return save_onnx(to_onnx(gm), path)


def onnx_models(tmp: Path) -> dict:
    return {"empty": _empty_onnx(tmp / "empty.onnx"), "bare": _spec_onnx(BARE, "bare.inv", tmp / "bare.onnx"),
            "fa": compiler.compile(FA_SPEC, out=tmp / "fa.onnx").out,
            "canonical": _spec_onnx(CANONICAL, "canonical.inv", tmp / "canonical.onnx"),
            "frame": _frame_only_onnx(tmp / "frame.onnx")}


def models_before(checkout: Path, tmp: Path) -> dict:
    """The same models compiled by another checkout's own frame_overhead.py (its onnx_models took a
    second argument, None, in earlier rounds)."""
    folder = tmp / "before"
    folder.mkdir()
    code = ("import inspect, json, sys; from pathlib import Path; sys.path[:0] = ['.', 'benchmarks']; "
            "import frame_overhead as f; extra = len(inspect.signature(f.onnx_models).parameters) - 1; "
            "print(json.dumps({k: str(v) for k, v in f.onnx_models(Path(sys.argv[1]), *[None] * extra).items()}))")
    done = subprocess.run([sys.executable, "-c", code, str(folder)], cwd=checkout, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(checkout)})
    if done.returncode != 0:
        sys.exit(f"frame_overhead: the checkout {checkout} did not compile its models:\n{done.stderr[-2000:]}")
    return {k: Path(v) for k, v in json.loads(done.stdout.splitlines()[-1]).items()}


def naive_fa(backbone):
    """Frame averaging as the reference code does it: eigh, 8 sign flips, backbone on 8B rows."""
    def run(pos, mask):
        c = pos.mean(1, keepdim=True)
        _, vectors = torch.linalg.eigh((pos - c).transpose(1, 2) @ (pos - c))
        frames = vectors[:, None] * SIGNS[None, :, None, :]                      # [B, 8, 3, 3]
        moved = ((pos - c)[:, None] @ frames).reshape(-1, *pos.shape[1:])
        out = backbone(moved, mask.repeat_interleave(8, 0))
        return out.reshape(pos.shape[0], 8, -1).mean(1)
    return run


def _feeds(batch: int, n: int) -> dict:
    rng = np.random.default_rng(0)
    return {"pos": rng.standard_normal((batch, n, 3)).astype(np.float32), "mask": np.ones((batch, n), bool)}


def _ort(model, feeds: dict, threads: int, native: bool = True):
    session = _ort_session(model, threads, native)
    return lambda: session.run(None, feeds)


def _eager(module, feeds: dict):
    args = [torch.from_numpy(v) for v in feeds.values()]

    def run():
        with torch.inference_mode():
            return module(*args)
    return run


def row(batch: int, n: int, models: dict, args) -> list[list[str]]:
    """One table row per kernel set (native, then the ONNX function bodies): ratios over the bare
    backbone in the same loops."""
    feeds, wide = _feeds(batch, n), _feeds(8 * batch, n)
    runners = {k: _ort(path, feeds, args.threads) for k, path in models["onnx"].items()}
    runners.update({f"bodies {k}": _ort(models["onnx"][k], feeds, args.threads, native=False)
                    for k in ("fa", "canonical", "frame")})
    tags = ["", "bodies "]
    if "before" in models:
        runners.update({f"before {k}": _ort(models["before"][k], feeds, args.threads, native=False)
                        for k in ("fa", "canonical", "frame")})
        tags.append("before ")
    runners["bare8"] = _ort(models["onnx"]["bare"], wide, args.threads)
    if args.eager:
        runners.update({"eager bare": _eager(models["bare"], feeds), "eager fa": _eager(models["fa"], feeds),
                        "eager eigh fa": _eager(naive_fa(models["bare"]), feeds)})
    t = _per_call(runners, args)
    bare = t["bare"]
    rows = []
    for tag in tags:
        rows.append([str(batch), tag.strip() or "native", f"{bare * 1e6:.1f}", f"{t[tag + 'frame'] * 1e6:.1f}",
                     f"{t[tag + 'frame'] / bare:.2f}x", f"{(t[tag + 'frame'] - t['empty']) / bare:.2f}x",
                     f"{t[tag + 'fa'] * 1e6:.1f}", f"{t[tag + 'fa'] / bare:.2f}x",
                     f"{t[tag + 'canonical'] * 1e6:.1f}", f"{t[tag + 'canonical'] / bare:.2f}x",
                     f"{t['bare8'] / bare:.2f}x"])
    if args.eager:
        rows[0] += [f"{t['eager fa'] / t['eager bare']:.2f}x", f"{t['eager eigh fa'] / t['eager bare']:.2f}x"]
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batches", type=int, nargs="+", default=[1, 64])
    p.add_argument("--size", type=int, default=32, help="points per cloud N (default 32)")
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--budget", type=float, default=0.2, help="seconds per timed loop (default 0.2)")
    p.add_argument("--threads", type=int, default=1, help="ORT intra-op and torch threads (default 1)")
    p.add_argument("--before", type=Path, help="another checkout of invc (an older revision) to time side by side")
    p.add_argument("--eager", action="store_true", help="also time torch eager and a naive eigh FA")
    p.add_argument("--quick", action="store_true", help="smoke mode: one repeat, short loops")
    args = p.parse_args()
    if args.quick:
        args.repeats, args.budget, args.batches = 1, 0.005, [1, 4]
    torch.set_num_threads(args.threads)
    print(f"# machine: {os.cpu_count()} CPUs, {_cpu_name()}; load average {os.getloadavg()[0]:.2f}; "
          f"{args.threads} thread(s)")
    with tempfile.TemporaryDirectory() as tmp:
        models = {"onnx": onnx_models(Path(tmp)), "bare": spec_module(BARE, "bare.inv"),
                  "fa": compiler.build(FA_SPEC)}
        if args.before:
            models["before"] = models_before(args.before.resolve(), Path(tmp))
        rows = [r for b in args.batches for r in row(b, args.size, models, args)]
    header = ["batch", "kernels", "ORT bare", "frame alone", "frame/bare", "(frame - call)/bare", "ORT FA",
              "FA/bare", "ORT canonical", "canonical/bare", "bare 8x batch/bare"]
    if args.eager:
        header += ["eager FA/bare", "eager eigh-FA/bare"]
    print_table(f"Frame-averaging overhead, N = {args.size} (us per call, median of {args.repeats})", header, rows)
    print(f"# load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
