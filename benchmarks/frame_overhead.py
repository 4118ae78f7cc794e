"""Frame-averaging overhead: latency of the frame-averaged model over its bare backbone.

    python benchmarks/frame_overhead.py             # batches 1 and 64, N = 32
    python benchmarks/frame_overhead.py --quick

The FA model is examples/pointcloud_classifier.inv (8 frames of E(3) around a DeepSets backbone,
hidden 64); the bare backbone is the same def called directly. Both are compiled by invc and run
in onnxruntime (CPU). Side by side, in one run: the bare backbone on an 8x batch (the work the 8
frames add, the floor for any frame averaging that runs the backbone per frame), and in torch
eager the same two modules plus a naive frame averaging with torch.linalg.eigh (which cannot be
exported to ONNX).
"""
from __future__ import annotations

import argparse
import contextlib
import itertools
import os
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
from dsl.checker import check  # noqa: E402
from dsl.lower import lower  # noqa: E402
from dsl.program import load_text  # noqa: E402
from passes.cleanup import default_pipeline, for_target  # noqa: E402

FA_SPEC = ROOT / "examples" / "pointcloud_classifier.inv"
BARE = """import "examples/pointcloud_classifier.inv"
model bare() {
  input pos: f32[B, N, 3]
  input mask: bool[B, N]
  logits = deepsets(pos, mask)
  output logits
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


def bare_backbone():
    """The backbone alone: the fx module and its ONNX model, through invc's compile pipeline."""
    with _in(ROOT):  # the spec text imports the example by a path relative to the repository
        gm = for_target(default_pipeline(), "onnx").run(lower(check(load_text(BARE, "bare.inv"))))
    return gm, to_onnx(gm)


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


def _ort(model, feeds: dict, threads: int):
    session = _ort_session(model, threads)
    return lambda: session.run(None, feeds)


def _eager(module, feeds: dict):
    args = [torch.from_numpy(v) for v in feeds.values()]

    def run():
        with torch.inference_mode():
            return module(*args)
    return run


def row(batch: int, n: int, models: dict, args) -> list[str]:
    feeds, wide = _feeds(batch, n), _feeds(8 * batch, n)
    runners = {"bare": _ort(models["bare_onnx"], feeds, args.threads),
               "fa": _ort(models["fa_onnx"], feeds, args.threads),
               "bare8": _ort(models["bare_onnx"], wide, args.threads),
               "eager bare": _eager(models["bare"], feeds), "eager fa": _eager(models["fa"], feeds),
               "eager eigh fa": _eager(naive_fa(models["bare"]), feeds)}
    t = _per_call(runners, args)
    return [str(batch), f"{t['bare'] * 1e6:.1f}", f"{t['fa'] * 1e6:.1f}", f"{t['fa'] / t['bare']:.2f}x",
            f"{t['bare8'] / t['bare']:.2f}x", f"{t['eager fa'] / t['eager bare']:.2f}x",
            f"{t['eager eigh fa'] / t['eager bare']:.2f}x"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batches", type=int, nargs="+", default=[1, 64])
    p.add_argument("--size", type=int, default=32, help="points per cloud N (default 32)")
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--budget", type=float, default=0.2, help="seconds per timed loop (default 0.2)")
    p.add_argument("--threads", type=int, default=1, help="ORT intra-op and torch threads (default 1)")
    p.add_argument("--quick", action="store_true", help="smoke mode: one repeat, short loops")
    args = p.parse_args()
    if args.quick:
        args.repeats, args.budget, args.batches = 1, 0.005, [1, 4]
    torch.set_num_threads(args.threads)
    print(f"# machine: {os.cpu_count()} CPUs, {_cpu_name()}; load average {os.getloadavg()[0]:.2f}; "
          f"{args.threads} thread(s)")
    with tempfile.TemporaryDirectory() as tmp:
        fa = compiler.compile(FA_SPEC, out=Path(tmp) / "fa.onnx")
        bare, bare_onnx = bare_backbone()
        models = {"fa": fa.module, "fa_onnx": fa.out, "bare": bare,
                  "bare_onnx": save_onnx(bare_onnx, Path(tmp) / "bare.onnx")}
        rows = [row(b, args.size, models, args) for b in args.batches]
    print_table(f"Frame-averaging overhead, N = {args.size} (us per call, median of {args.repeats})",
                ["batch", "ORT bare", "ORT FA", "FA/bare", "bare 8x batch/bare", "eager FA/bare",
                 "eager eigh-FA/bare"], rows)


if __name__ == "__main__":
    main()
