"""Train the model of examples/nbody.inv on the charged-particles n-body task with plain torch.

    python examples/nbody/train.py --minutes 8          # stops at 8 minutes or --epochs, first
    python examples/nbody/train.py --epochs 1 --train 64 --test 32

Adam on the mean squared error of the predicted positions (frame 40 from frame 30), as in the EGNN
and frame-averaging papers; batch 100 and a cosine learning-rate decay over the epoch budget. The
test MSE is measured once, at the end, on trajectories never trained on.
"""
from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import compiler  # noqa: E402
from data import load  # noqa: E402

SPEC = ROOT / "examples" / "nbody.inv"
INPUTS = ("pos", "vel", "charge")


def tensors(split: dict) -> dict[str, torch.Tensor]:
    return {k: torch.from_numpy(v) for k, v in split.items()}


def mse(model, data: dict, batch: int = 500) -> float:
    total, count = 0.0, 0
    with torch.no_grad():
        for i in range(0, len(data["pos"]), batch):
            pred = model(*(data[k][i:i + batch] for k in INPUTS))
            total += float(((pred - data["target"][i:i + batch]) ** 2).sum())
            count += pred.numel()
    return total / count


def train(epochs: int, minutes: float, train_size: int = 3000, test_size: int = 2000, batch: int = 100,
          lr: float = 1e-3, seed: int = 0, log=print) -> dict:
    """Train until `epochs` or `minutes` runs out; returns the test MSE and what it cost."""
    torch.manual_seed(seed)
    data = load(train_size, test_size)
    train_set, test_set = tensors(data["train"]), tensors(data["test"])
    model = compiler.build(SPEC, seed=seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    start, done, loss = time.perf_counter(), 0, float("nan")
    while done < epochs and time.perf_counter() - start < minutes * 60:
        for group in opt.param_groups:  # cosine decay over the epoch budget
            group["lr"] = lr * 0.5 * (1 + math.cos(math.pi * done / epochs))
        loss = _epoch(model, opt, train_set, batch)
        done += 1
        if done % 10 == 0 or done == epochs:
            log(f"epoch {done}: train MSE {loss:.5f} ({time.perf_counter() - start:.0f} s)")
    seconds = time.perf_counter() - start
    return {"epochs": done, "seconds": seconds, "train_mse": loss, "test_mse": mse(model, test_set),
            "train": train_size, "test": test_size, "threads": torch.get_num_threads()}


def _epoch(model, opt, data: dict, batch: int) -> float:
    order = torch.randperm(len(data["pos"]))
    total, count = 0.0, 0
    for i in range(0, len(order), batch):
        idx = order[i:i + batch]
        pred = model(*(data[k][idx] for k in INPUTS))
        loss = ((pred - data["target"][idx]) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        total, count = total + loss.item() * len(idx), count + len(idx)
    return total / count


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--epochs", type=int, default=1000, help="epoch budget (default 1000)")
    p.add_argument("--minutes", type=float, default=10.0, help="wall-time budget (default 10)")
    p.add_argument("--train", type=int, default=3000)
    p.add_argument("--test", type=int, default=2000)
    p.add_argument("--batch", type=int, default=100)
    p.add_argument("--lr", type=float, default=1e-3)
    args = p.parse_args()
    r = train(args.epochs, args.minutes, args.train, args.test, args.batch, args.lr)
    print(f"test MSE {r['test_mse']:.5f} after {r['epochs']} epochs, {r['seconds'] / 60:.1f} min "
          f"({r['train']} train / {r['test']} test, {r['threads']} torch threads)")


if __name__ == "__main__":
    main()
