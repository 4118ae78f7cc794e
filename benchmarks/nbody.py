"""The n-body task of the frame-averaging paper: train examples/nbody.inv under a stated budget.

    python benchmarks/nbody.py                           # the chosen configuration: 30 minutes, then test
    python benchmarks/nbody.py --minutes 2 --frames all
    git show main:runtime/frames.py > /tmp/frames_main.py
    python benchmarks/nbody.py --steps-only --baseline /tmp/frames_main.py
    python benchmarks/nbody.py --weight-decay 0.1 --no-test --save .data/runs/b.pt   # a candidate
    python benchmarks/nbody.py --evaluate .data/runs/b.pt       # the chosen one's test MSE, once
    python benchmarks/nbody.py --plot-runs .data/runs/a.json .data/runs/b.json   # their curves

Generates the data (.data/, cached: 3000 train, 2000 validation, 2000 test trajectories), times
training steps side by side, trains with examples/nbody/train.py, and prints one table row beside
the papers' numbers, which come from thousands of epochs on GPUs. The validation curve (MSE against
training seconds) goes to a PNG. Configurations are compared with `--no-test` (validation only),
and only the chosen checkpoint is evaluated on the test split. The step table times, in
interleaved repeats of the same batches: today's step (the frame kernels of `--baseline`, all 8
frames, Adam's per-parameter loop), and with the current kernels and fused Adam: all 8 frames, and
one frame per cloud (sampled, canonical).
"""
from __future__ import annotations

import argparse
import copy
import importlib.util
import json
import os
import platform
import sys
from pathlib import Path

import torch
import torch.fx as fx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT / "examples" / "nbody"))

from core import interleaved, print_table  # noqa: E402
from train import SPEC, evaluate, one_frame, optimizer, split, step, train  # noqa: E402

import compiler  # noqa: E402
from runtime import frames  # noqa: E402

PAPERS = [("FA-GNN (Puny et al., 2022)", "0.0057"), ("EGNN (Satorras et al., 2021)", "0.0071"),
          ("SEGNN (Brandstetter et al., 2022)", "0.0043"), ("Multivector Neurons (2024)", "0.0035")]
# Chosen on validation (BENCHMARKS.md, n-body, round 4): the walking backbone with a near-pair feature,
# validated and kept as a moving average of its weights.
CHOSEN = ROOT / "examples" / "nbody_walk_near.inv"
EMA = 0.999
WEIGHT_DECAY = 0.0  # Adam: AdamW 0.01 and 0.1 validated worse than no decay (BENCHMARKS.md, n-body, round 3)
FRAME_OPS = ("frame_centroid", "frame_basis", "frame_in", "frame_tile", "frame_out")


def with_kernels(gm: fx.GraphModule, path: Path) -> fx.GraphModule:
    """The same model (parameters shared) calling the frame ops of another runtime/frames.py."""
    spec = importlib.util.spec_from_file_location("baseline_frames", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    graph = copy.deepcopy(gm.graph)
    for node in graph.nodes:
        if node.op == "call_function" and getattr(node.target, "__name__", "") in FRAME_OPS \
                and node.target is getattr(frames, node.target.__name__):
            node.target = getattr(module, node.target.__name__)
    return fx.GraphModule(gm, graph)


def step_table(args) -> None:
    """Seconds per training step (batch `args.batch`), each contender on the same batches in turn."""
    data = split(args.batch * 10, 10, 10)["train"]
    batches = [{k: v[i:i + args.batch] for k, v in data.items()} for i in range(0, len(data["pos"]), args.batch)]
    model = compiler.build(SPEC)
    contenders = {"current kernels, all 8 frames": model, "sampled (1 of 8 frames)": one_frame(model, "sampled"),
                  "canonical (1 frame)": one_frame(model, "canonical")}
    contenders = {name: (m, optimizer(model, 1e-4)) for name, m in contenders.items()}
    if args.baseline:  # today's step: the older kernels, all 8 frames, Adam's per-parameter loop
        today = (with_kernels(model, args.baseline), torch.optim.Adam(model.parameters(), lr=1e-4))
        contenders = {"today: baseline kernels, all 8 frames, Adam": today, **contenders}

    def steps(m, opt):
        return lambda: [step(m, opt, b) for b in batches]
    med = interleaved({name: steps(*pair) for name, pair in contenders.items()}, args.repeats)
    first = next(iter(med.values()))
    rows = [[name, f"{med[name] / len(batches) * 1e3:.1f}", f"{first / med[name]:.2f}x"] for name in med]
    print_table(f"n-body training step, batch {args.batch}, {torch.get_num_threads()} torch thread(s) "
                f"(ms per step, median of {args.repeats} x {len(batches)} steps; load average "
                f"{os.getloadavg()[0]:.2f})", ["step", "ms", "speed-up over the first"], rows)


def plot(curves: dict[str, list], path: Path, title: str) -> None:
    """Validation MSE against training minutes, one line per run (label -> [(seconds, epoch, mse)])."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6, 4))
    for label, curve in curves.items():
        ax.plot([s / 60 for s, _, _ in curve], [v for _, _, v in curve], marker=".", label=label)
    if len(curves) > 1:
        ax.legend(fontsize=8)
    for name, mse in PAPERS[:2]:
        ax.axhline(float(mse), ls="--", lw=0.8, color="gray")
        ax.text(0, float(mse), f" {name.split(' (')[0]} {mse}", va="bottom", fontsize=8, color="gray")
    ax.set(xlabel="training wall time (min)", ylabel="validation MSE", yscale="log", title=title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--minutes", type=float, default=30.0,
                   help="training wall-time budget; the learning rate's cosine spans it (default 30)")
    p.add_argument("--frames", choices=("all", "sampled", "canonical"), default="sampled")
    p.add_argument("--lr", type=float, default=3e-3, help="peak learning rate (default 3e-3, chosen on validation)")
    p.add_argument("--weight-decay", type=float, default=WEIGHT_DECAY,
                   help=f"AdamW's decoupled decay (default {WEIGHT_DECAY:g}, chosen on validation; 0: Adam)")
    p.add_argument("--ema", type=float, default=EMA,
                   help=f"validate, keep and test a moving average of the weights, this decay per step (default {EMA:g}; 0: off)")
    p.add_argument("--seed", type=int, default=0, help="the weights' initialization and the batches' order (default 0)")
    p.add_argument("--validate-every", type=float, default=60.0, help="training seconds between validations")
    p.add_argument("--batch", type=int, default=100)
    p.add_argument("--spec", type=Path, default=CHOSEN,
                   help="the model (default examples/nbody_walk_near.inv, chosen on validation)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1: a shared machine)")
    p.add_argument("--baseline", type=Path, help="an older runtime/frames.py: today's step, side by side")
    p.add_argument("--repeats", type=int, default=5, help="repeats of the step table (default 5)")
    p.add_argument("--steps-only", action="store_true", help="time the training steps, do not train")
    p.add_argument("--plot", type=Path, default=ROOT / "benchmarks" / "nbody_validation.png")
    p.add_argument("--no-test", action="store_true", help="train and validate only: the test split stays unseen")
    p.add_argument("--save", type=Path, help="write the best-validation state_dict here (and a .json beside it)")
    p.add_argument("--evaluate", type=Path, help="only print the test MSE of this saved state_dict")
    p.add_argument("--plot-runs", type=Path, nargs="+", help="only plot the curves of these saved runs' .json")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    if args.evaluate:
        print(f"test MSE {evaluate(args.evaluate, args.frames, spec=args.spec):.5f} of {args.evaluate}")
        return
    if args.plot_runs:
        runs = {path.stem: json.loads(path.read_text()) for path in args.plot_runs}
        plot({f"{name}: {Path(r.get('spec', 'spec not recorded')).name}, ema {r.get('ema', 0):g}, seed {r['seed']} (best {r['best_val_mse']:.4f})":
              r["curve"] for name, r in runs.items()}, args.plot, f"n-body validation, batch {args.batch}")
        print(f"# validation curves: {args.plot}")
        return
    print(f"# machine: {os.cpu_count()} CPUs ({platform.machine()}); load average {os.getloadavg()[0]:.2f}")
    step_table(args)
    if args.steps_only:
        return
    if args.save:
        args.save.parent.mkdir(parents=True, exist_ok=True)
    r = train(args.minutes, batch=args.batch, lr=args.lr, frames_=args.frames, validate_every=args.validate_every,
              log=lambda line: print(f"#   {line}", flush=True), weight_decay=args.weight_decay,
              test=not args.no_test, save=args.save, spec=args.spec, ema=args.ema, seed=args.seed)
    config = f"weight decay {args.weight_decay:g}, ema {args.ema:g}, seed {args.seed}"
    plot({f"{args.spec.name}, {config}": r["curve"]}, args.plot,
         f"{args.spec.name}, {args.frames} frames, lr {args.lr:g}, batch {args.batch}")
    tested = "not evaluated" if r["test_mse"] is None else f"{r['test_mse']:.5f}"
    rows = [[f"invc {args.spec.name} ({args.frames} frames, {config}, this CPU)", tested,
             f"{r['epochs']} epochs, {r['seconds'] / 60:.1f} min of training; best validation "
             f"{r['val_mse']:.5f}; {r['train']} train / {r['val']} val / {r['test']} test"]]
    rows += [[name, mse, "paper"] for name, mse in PAPERS]
    print_table("n-body test MSE (positions 1000 steps ahead)", ["model", "test MSE", "budget"], rows)
    print(f"# validation curve: {args.plot}; load average at the end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
