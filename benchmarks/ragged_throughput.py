"""Ragged aggregation throughput: sum and max of 1M x 64 fp32 rows into 10k sets of random sizes,
in G elements (rows x features) per second. All contenders run side by side in one process.

    python benchmarks/ragged_throughput.py            # 1M rows
    python benchmarks/ragged_throughput.py --quick    # 20k rows, one repeat

Contenders: the compiled ONNX model (`segment_pool`, ScatterND) on onnxruntime CPU; torch's
index_add_ / scatter_reduce (ops/sets.py's default path) and torch.segment_reduce (its
deterministic path); and a dense sum(0) as the memory-bound ceiling of one pass over the data.
`--deterministic` adds the ONNX model with deterministic=true, which gathers every set into a
padded [sets, largest set, 64] block: about 2.5 GB per copy at the default sizes, so it is opt-in.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from core import _cpu_name, _ort_session, interleaved, print_table  # noqa: E402

import compiler  # noqa: E402
from ops import sets  # noqa: E402

SPEC = """model ragged(features: int = 64) {{
  input x: f32[N, features]
  input offsets: i64[S]
  y = segment_pool(x, offsets, kind="{kind}", deterministic={det})
  output y
}}"""


def onnx_runner(kind: str, deterministic: bool, feeds: dict, tmp: Path, threads: int):
    spec = tmp / f"{kind}_{deterministic}.inv"
    spec.write_text(SPEC.format(kind=kind, det=str(deterministic).lower()))
    path = tmp / f"{kind}_{deterministic}.onnx"
    compiler.compile(spec, out=path)
    session = _ort_session(path, threads)
    return lambda: session.run(None, feeds)[0]


def inputs(rows: int, sets_: int, features: int):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((rows, features), dtype=np.float32)
    cuts = np.sort(rng.integers(0, rows + 1, sets_ - 1))
    return x, np.concatenate([[0], cuts, [rows]]).astype(np.int64)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=1_000_000)
    p.add_argument("--sets", type=int, default=10_000)
    p.add_argument("--features", type=int, default=64)
    p.add_argument("--repeats", type=int, default=9)
    p.add_argument("--threads", type=int, default=os.cpu_count(), help="ORT and torch threads (default: all)")
    p.add_argument("--deterministic", action="store_true", help="also the deterministic ONNX model")
    p.add_argument("--quick", action="store_true", help="smoke mode: 20k rows, 200 sets, one repeat")
    args = p.parse_args()
    if args.quick:
        args.rows, args.sets, args.repeats = 20_000, 200, 1
    torch.set_num_threads(args.threads)
    print(f"# machine: {os.cpu_count()} CPUs, {_cpu_name()}; load average {os.getloadavg()[0]:.2f}; "
          f"{args.threads} threads")
    x, offsets = inputs(args.rows, args.sets, args.features)
    tx, to = torch.from_numpy(x), torch.from_numpy(offsets)
    feeds = {"x": x, "offsets": offsets}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for kind in ("sum", "max"):
            runners = {"ORT, invc segment_pool (ScatterND)": onnx_runner(kind, False, feeds, Path(tmp), args.threads)}
            if args.deterministic:
                runners["ORT, invc segment_pool deterministic"] = onnx_runner(kind, True, feeds, Path(tmp),
                                                                             args.threads)
            runners |= {
                "torch index_add_ / scatter_reduce": lambda k=kind: sets.segment_reduce(tx, to, k),
                "torch segment_reduce (CSR)": lambda k=kind: torch.segment_reduce(tx, k, offsets=to, axis=0),
                "torch dense sum(0) / amax(0), no sets": lambda k=kind: tx.sum(0) if k == "sum" else tx.amax(0),
            }
            want = sets.segment_reduce(tx, to, kind).numpy()
            for name in [n for n in runners if n.startswith("ORT")]:
                np.testing.assert_allclose(runners[name](), want, rtol=1e-4, atol=1e-3)
            seconds = interleaved(runners, args.repeats)
            rows += [[kind, name, f"{x.size / s / 1e9:.2f}", f"{s * 1e3:.1f}"] for name, s in seconds.items()]
    print_table(f"Ragged aggregation, {args.rows:,} x {args.features} fp32 rows into {args.sets:,} sets "
                f"(median of {args.repeats})", ["reduce", "contender", "G elem/s", "ms"], rows)


if __name__ == "__main__":
    main()
