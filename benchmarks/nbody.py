"""The n-body task of the frame-averaging paper: train examples/nbody.inv under a stated budget.

    python benchmarks/nbody.py                  # 10 minutes or 25 epochs on this machine's CPU
    python benchmarks/nbody.py --minutes 2 --epochs 20

Generates the data (.data/, cached), trains with examples/nbody/train.py and prints one table row
beside the papers' numbers, which come from thousands of epochs on GPUs.
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "examples" / "nbody"))

from train import train  # noqa: E402

PAPERS = [("FA-GNN (Puny et al., 2022)", "0.0057"), ("EGNN (Satorras et al., 2021)", "0.0071")]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--minutes", type=float, default=10.0, help="training wall-time budget (default 10)")
    p.add_argument("--epochs", type=int, default=25, help="epoch budget; the lr decays over it (default 25)")
    args = p.parse_args()
    print(f"# machine: {os.cpu_count()} CPUs ({platform.machine()}); budget {args.minutes:g} min "
          f"or {args.epochs} epochs, whichever ends first")
    r = train(args.epochs, args.minutes, log=lambda line: print(f"#   {line}", flush=True))
    rows = [("invc nbody.inv (frame averaging, this CPU)", f"{r['test_mse']:.4f}",
             f"{r['epochs']} epochs, {r['seconds'] / 60:.1f} min, {r['train']} train / {r['test']} test")]
    rows += [(name, mse, "paper") for name, mse in PAPERS]
    print("\n## n-body test MSE (positions 1000 steps ahead)")
    for row in [("model", "test MSE", "budget"), *rows]:
        print(f"{row[0]:<44} {row[1]:<9} {row[2]}")


if __name__ == "__main__":
    main()
