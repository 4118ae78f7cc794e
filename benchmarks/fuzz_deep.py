"""The spec fuzzer's deep stage at benchmark size (compiler/fuzz_deep.py): drawn well-typed models
compiled to ONNX and run in torch and onnxruntime on valid, empty and out-of-range inputs.
Targets: 0 crashes, 0 invalid files, 0 disagreements, 0 valid inputs refused, 0 invalid inputs run.

    python benchmarks/fuzz_deep.py                        # 10,000 specs, seed 0, every dtype
    python benchmarks/fuzz_deep.py --cases 2000 --narrow  # f32 floats and i64 ids only
    python benchmarks/fuzz_deep.py --seeds 17,4242        # these cases again, each shrunk

Failures are grouped by kind (status and message, names and numbers dropped), each with the class of
issue 22 it belongs to and its first case shrunk to the fewest statements that still fail that way.
A case that runs past --hang seconds is stopped and counted as a crash.
"""
from __future__ import annotations

import argparse
import collections
import os
import random
import signal
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from compiler import fuzz_deep  # noqa: E402
from fuzz_specs import Hang, _alarm  # noqa: E402 - the same stop for a hung case as the first stage


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cases", type=int, default=10_000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--narrow", action="store_true", help="f32 floats and i64 ids only: past the dtype failures")
    p.add_argument("--seeds", type=lambda text: [int(s) for s in text.split(",")],
                   help="run these seeds only (comma-separated), e.g. the first of a kind of failure")
    p.add_argument("--hang", type=int, default=60, help="seconds after which a case counts as hung")
    args = p.parse_args()
    signal.signal(signal.SIGALRM, _alarm)
    dtypes = (("f32",), ("i64",)) if args.narrow else (fuzz_deep.FLOATS, fuzz_deep.INTS)
    import onnxruntime
    import torch
    onnxruntime.set_default_logger_severity(4)  # the refused runs are expected; their log lines are noise
    torch.set_num_threads(1)  # tiny tensors: a second thread only waits, and slows a loaded machine
    counts, kinds, t0 = collections.Counter(), {}, time.perf_counter()
    seeds = args.seeds or range(args.seed, args.seed + args.cases)
    args.cases = len(seeds)
    for seed in seeds:
        case = fuzz_deep.draw(random.Random(seed), *dtypes)
        signal.alarm(args.hang)
        try:
            result = fuzz_deep.run(case, seed)
        except Hang:
            result = fuzz_deep.Result("crash", "hung", case.text())
        signal.alarm(0)
        counts[result.status] += 1
        if result.failed:
            kinds.setdefault(fuzz_deep.signature(result), []).append((seed, case, result))
    wall = time.perf_counter() - t0
    _report(args, counts, kinds, wall, every=bool(args.seeds))
    return 1 if any(counts[f] for f in fuzz_deep.FAILURES) else 0


def _report(args, counts, kinds, wall, every: bool) -> None:
    """Counts, then each kind of failure by class with its first case shrunk (with `every`, all)."""
    start = f"seeds {args.seeds}" if every else f"from seed {args.seed}"
    print(f"## deep fuzz: {args.cases:,} specs {start}{', narrow dtypes' if args.narrow else ''}, "
          f"{wall:.0f} s wall ({wall / args.cases * 1000:.0f} ms/spec), load {os.getloadavg()[0]:.2f} at the end")
    print(f"ran and agreed {counts['ok']:,}, refused by the checker {counts['refused']:,}; failures: "
          + ", ".join(f"{f} {counts[f]:,}" for f in fuzz_deep.FAILURES))
    by_class = collections.defaultdict(list)
    for kind, cases in kinds.items():
        by_class[fuzz_deep.issue_class(cases[0][2])].append((kind, cases))
    for name, groups in sorted(by_class.items()):
        print(f"\n### class {name}: {sum(len(c) for _, c in groups):,} specs, {len(groups)} kinds")
        for kind, cases in sorted(groups, key=lambda g: -len(g[1])):
            print(f"- {len(cases):,} x {kind}")
            for seed, case, result in cases if every else cases[:1]:
                shrunk = fuzz_deep.shrink(case, result, seed)
                print(f"  seed {seed}, shrunk:\n    " + shrunk.text.strip().replace("\n", "\n    "))
                print(f"    -> {(shrunk.detail.strip().splitlines() or [''])[-1][:300]}")


if __name__ == "__main__":
    sys.exit(main())
