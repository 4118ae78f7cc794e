"""What the refit costs: SmolLM2-135M sliced in shortcut-free mode with and without the refit, side by side in
one run, at the same calibration (32 x 512 play tokens): wall and CPU seconds, peak memory, perplexity.

    python benchmarks/slicegpt_refit_cost.py                              # 10/20/25%, every text
    python benchmarks/slicegpt_refit_cost.py --sparsities 0.1 --texts plays   # one sparsity, held-out plays only

Each slice runs in a fresh process (`slicegpt_smollm2.py --child`), so its peak RSS is its own; at each
sparsity the slice without the refit runs first and the one with it right after, so load from other
processes on the machine hits both alike. Fetching and the fp32 checkpoint are slicegpt_smollm2.py's.
Results: benchmarks/results/slicegpt_refit_cost.json.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import slicegpt_smollm2 as bench  # noqa: E402 - the benchmark next to this one

OUT = bench.RESULTS / "slicegpt_refit_cost.json"


def sliced(sparsity: str, refit: bool, texts: list[str] | None) -> dict:
    """One slice in a fresh process, timed, then scored."""
    flags = ["--ppl-only", *(["--refit"] if refit else []), *(["--texts", *texts] if texts else [])]
    done = subprocess.run([sys.executable, bench.__file__, "--child", "shortcut-free", sparsity, *flags],
                          check=True, stdout=subprocess.PIPE, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])[0]


def table(rows: list[dict]) -> str:
    """Per sparsity: time, peak memory and perplexities without and with the refit, and the time ratio."""
    keys = [k for k in ("ppl", *(f"ppl_{t}" for t in bench.EVAL_TEXTS)) if k in rows[0]]
    head = ["sparsity", "refit", "wall s", "CPU s", "peak MiB", "1-min load", *keys, "with/without (wall, CPU)"]
    lines = ["| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
    plain = {r["sparsity"]: r for r in rows if r["refit"] is None}
    for r in rows:
        base = plain[r["sparsity"]]
        ratio = (f"{r['seconds'] / base['seconds']:.2f}x, {r['cpu_seconds'] / base['cpu_seconds']:.2f}x"
                 if r["refit"] is not None else "")
        cells = [f"{r['sparsity']:.0%}", "on" if r["refit"] is not None else "off", f"{r['seconds']:.1f}",
                 f"{r['cpu_seconds']:.1f}", f"{r['peak_mb']:.0f}", "–".join(f"{x:.1f}" for x in r["load_1min"]),
                 *(f"{r[k]:.2f}" for k in keys), ratio]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sparsities", nargs="+", default=["0.1", "0.2", "0.25"])
    ap.add_argument("--texts", nargs="+", choices=["plays", *bench.EVAL_TEXTS], help="score only these texts")
    args = ap.parse_args()
    bench.fetch()
    bench.dense_checkpoint()
    rows = []
    for sparsity in args.sparsities:
        for refit in (False, True):
            rows.append(sliced(sparsity, refit, args.texts))
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(rows, indent=1))
    print(table(rows))
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
