"""The spec fuzzer at benchmark size: at least 10,000 grammar derivations and mutated examples
through the checker (compiler/fuzz.py). Targets: 0 exceptions other than SpecError, no spec over 2 s.

    python benchmarks/fuzz_specs.py                  # 10,000 cases, seed 0
    python benchmarks/fuzz_specs.py --cases 20000 --seed 7

A case that runs past --hang seconds is stopped and counted as a crash.
"""
from __future__ import annotations

import argparse
import collections
import os
import random
import signal
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from compiler import fuzz  # noqa: E402


class Hang(Exception):
    pass


def _alarm(signum, frame):
    raise Hang()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cases", type=int, default=10_000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--hang", type=int, default=30, help="seconds after which a case counts as hung")
    args = p.parse_args()
    signal.signal(signal.SIGALRM, _alarm)
    examples = fuzz.example_texts(ROOT / "examples")
    outcomes, crashes, times = collections.Counter(), collections.defaultdict(list), []
    t0 = time.perf_counter()
    for i, (kind, files) in zip(range(args.cases), fuzz.cases(random.Random(args.seed), examples)):
        signal.alarm(args.hang)
        try:
            outcome, seconds, detail = fuzz.run(files)
        except Hang:
            outcome, seconds, detail = "crashed", float(args.hang), "hung"
        signal.alarm(0)
        outcomes[outcome] += 1
        times.append((seconds, i, kind))
        if outcome == "crashed":
            crashes[detail.strip().splitlines()[-1][:160]].append((i, kind))
    wall = time.perf_counter() - t0
    times.sort(reverse=True)
    print(f"## spec fuzzer: {args.cases:,} cases, seed {args.seed}, {wall:.0f} s wall, "
          f"load {os.getloadavg()[0]:.2f} at the end")
    print(f"checked {outcomes['checked']:,}  refused (SpecError) {outcomes['refused']:,}  "
          f"other exceptions {outcomes['crashed']:,} (target 0)")
    seconds = [t for t, _, _ in times]
    print(f"per spec: median {statistics.median(seconds) * 1000:.1f} ms, "
          f"p99 {seconds[len(seconds) // 100] * 1000:.1f} ms, slowest {seconds[0]:.2f} s (target < 2 s)")
    print("slowest: " + ", ".join(f"#{i} {kind} {t:.2f} s" for t, i, kind in times[:3]))
    for message, where in crashes.items():
        print(f"  {len(where)} x {message}  (first: #{where[0][0]} {where[0][1]})")
    return 1 if outcomes["crashed"] or seconds[0] >= 2 else 0


if __name__ == "__main__":
    sys.exit(main())
