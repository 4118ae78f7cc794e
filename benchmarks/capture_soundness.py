"""The soundness of proofs about captured torch models, measured: random torch programs and mutated
layers through tests/capture_programs.py. invc captures each with torch.export, proves or refuses its
claims, and every proved claim is measured in float64 with redrawn weights; a proof the numbers
contradict is a false proof (target: 0).

    python benchmarks/capture_soundness.py                      # 1,000 programs
    python benchmarks/capture_soundness.py --count 200 --seed 5000

Prints the counts (programs, captured, proofs, false proofs), the refusals by reason, and every
false proof, crash and lift bug shrunk to a small program with its spec.
"""
from __future__ import annotations

import argparse
import logging
import sys
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from capture_programs import harness  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--count", type=int, default=1000, help="how many programs to draw (default 1000)")
    ap.add_argument("--seed", type=int, default=0, help="the first program's seed (default 0)")
    ap.add_argument("--refusals", type=int, default=25, help="how many refusal reasons to print (default 25)")
    args = ap.parse_args(argv)
    warnings.simplefilter("ignore")  # torch.export's and PyG's warnings about the drawn programs
    logging.getLogger("torch").setLevel(logging.CRITICAL)  # and the tracebacks of those it cannot capture
    t0 = time.perf_counter()
    counts, findings, refusals = harness(range(args.seed, args.seed + args.count), progress=True)
    seconds = time.perf_counter() - t0
    print(f"\n{counts['programs']} programs in {seconds:.0f} s ({counts['programs'] / seconds:.1f}/s)")
    for label, key in (("drawn", "drawn"), ("mutants", "mutant"), ("captured and checked", "checked"),
                       ("refused at check", "refused"), ("crashes", "crash"), ("lift bugs", "lift bug")):
        print(f"  {label:<36} {counts[key]}")
    for key in ("claims proved", "false proofs", "proved, error is float64 rounding", "claims refused",
                "refused, numerically holds", "torch model runs in float32 only"):
        print(f"  {key:<36} {counts[key]}")
    print(f"refusals by reason ({args.refusals} most common of {len(refusals)}):")
    for why, n in refusals.most_common(args.refusals):
        print(f"  {n:>5}  {why}")
    for f in findings:
        print(f"\n--- program {f.seed}: {f.status} {f.crash} {f.false_proofs or ''}\n{f.text}")
    return 1 if findings else 0


if __name__ == "__main__":
    sys.exit(main())
