"""What the run-time index and offset checks in the graph cost: each model compiled twice, with the
checks (what `invc compile` writes) and without them (GraphBuilder.refuse_unless patched to pass
its value through), and run side by side on onnxruntime CPU with valid inputs.

    python benchmarks/index_checks.py            # 10k nodes / 200k edges, 1M ragged rows
    python benchmarks/index_checks.py --quick    # 1k nodes / 20k edges, 100k rows, few repeats
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from unittest import mock

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from core import _cpu_name, _ort_session, interleaved, ms, print_table  # noqa: E402

import compiler  # noqa: E402
from compiler.onnx_backend import GraphBuilder  # noqa: E402

RAGGED = """model ragged() {
  input x: f32[N, 64]
  input cuts: i64[S]
  y = segment_pool(x, cuts, kind="max")
  output y
}"""


def compiled(spec: Path, out: Path, checks: bool) -> Path:
    if checks:
        compiler.compile(spec, out=out)
    else:
        with mock.patch.object(GraphBuilder, "refuse_unless", lambda self, ok, value, why: value):
            compiler.compile(spec, out=out)
    return out


def graph_inputs(nodes: int, edges: int, rng) -> dict:
    return {"pos": rng.standard_normal((nodes, 3), np.float32), "h": rng.standard_normal((nodes, 4), np.float32),
            "senders": rng.integers(0, nodes, edges), "receivers": rng.integers(0, nodes, edges)}


def ragged_inputs(rows: int, sets: int, rng) -> dict:
    cuts = np.concatenate([[0], np.sort(rng.integers(0, rows + 1, sets - 1)), [rows]])
    return {"x": rng.standard_normal((rows, 64), np.float32), "cuts": cuts}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    rng = np.random.default_rng(0)
    scale, repeats = (10, 5) if args.quick else (1, 21)
    tmp = Path(tempfile.mkdtemp())
    (tmp / "ragged.inv").write_text(RAGGED)
    cases = {"egnn_sparse (gather, scatter_pool)": (ROOT / "examples" / "egnn_sparse.inv",
                                                    graph_inputs(10_000 // scale, 200_000 // scale, rng)),
             "segment_pool max": (tmp / "ragged.inv", ragged_inputs(1_000_000 // scale, 10_000 // scale, rng))}
    rows = []
    for name, (spec, feeds) in cases.items():
        sessions = {checks: _ort_session(compiled(spec, tmp / f"{spec.stem}_{checks}.onnx", checks), args.threads)
                    for checks in (True, False)}
        outs = [s.run(None, feeds)[0] for s in sessions.values()]
        assert np.array_equal(outs[0], outs[1]), name  # the checks change no number
        t = interleaved({checks: (lambda s=s: s.run(None, feeds)) for checks, s in sessions.items()}, repeats)
        rows.append([name, ms(t[False]), ms(t[True]), f"{(t[True] / t[False] - 1) * 100:+.1f}%"])
    print_table(f"Run-time index checks, onnxruntime CPU, {args.threads} thread(s), {_cpu_name()}",
                ["model", "without checks (ms)", "with checks (ms)", "cost"], rows)


if __name__ == "__main__":
    main()
