"""The symmetry checker's soundness, measured: random specs through tests/soundness.py's
differential harness. Every claim the checker proves is measured in float64 with freshly drawn
parameters; a proof the numbers contradict is a false proof (target: 0).

    python benchmarks/soundness.py                       # 20,000 specs
    python benchmarks/soundness.py --specs 2000 --start 50000

Prints the counts, the conservative-refusal rate per rule (claims refused that the numbers say
hold), every crash and false proof shrunk to a small spec, and writes them as JSON with --json.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from soundness import harness  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--specs", type=int, default=20_000, help="how many specs to draw (default 20000)")
    ap.add_argument("--start", type=int, default=0, help="first seed (default 0)")
    ap.add_argument("--json", type=Path, help="write the counts and findings here")
    args = ap.parse_args(argv)
    t0, load0 = time.perf_counter(), os.getloadavg()[0]
    counts, findings, conservative = harness(range(args.start, args.start + args.specs), progress=True)
    seconds = time.perf_counter() - t0
    refused = counts["claims refused"]
    print(f"\n{counts['specs']} specs in {seconds:.0f} s ({counts['specs'] / seconds:.1f}/s), "
          f"1-min load {load0:.2f} -> {os.getloadavg()[0]:.2f}")
    for key in ("checked", "ill-typed", "crash", "claims proved", "false proofs",
                "proved, error is float64 rounding", "claims refused",
                "refused, numerically holds", "refused, numerically broken"):
        print(f"  {key:<30} {counts[key]}")
    print(f"  conservative-refusal rate      {counts['refused, numerically holds'] / max(refused, 1):.1%} "
          "of refused claims")
    print("conservative refusals per rule (claims refused that hold numerically):")
    for rule, n in conservative.most_common():
        print(f"  {rule:<16} {n}")
    for f in findings:
        print(f"\n--- seed {f.seed}: {f.status} {f.crash or ''} {f.false_proofs or ''}\n{f.text}")
    if args.json:
        args.json.write_text(json.dumps({"counts": counts, "conservative": conservative, "seconds": seconds,
                                         "findings": [vars(f) for f in findings]}, indent=1))
    return 1 if findings else 0


if __name__ == "__main__":
    sys.exit(main())
