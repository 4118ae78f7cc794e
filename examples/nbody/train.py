"""Train the model of examples/nbody.inv on the charged-particles n-body task with plain torch.

    python examples/nbody/train.py --minutes 8          # stops at 8 minutes or --epochs, first
    python examples/nbody/train.py --epochs 1 --train 64 --val 32 --test 32
    python examples/nbody/train.py --minutes 60 --weight-decay 0.01 --no-test --save .data/runs/a.pt
    python examples/nbody/train.py --evaluate .data/runs/a.pt   # its test MSE, once, at the very end

Adam on the mean squared error of the predicted positions (frame 40 from frame 30), as in the EGNN
and frame-averaging papers; batch 100 and a cosine learning-rate decay over the wall-time budget.
`--weight-decay W` above 0 switches to AdamW (decoupled weight decay W). `--ema D` above 0 validates,
keeps and tests a moving average of the weights (decay D per step), which trains no differently.
`--spec` trains another model with the same inputs (examples/nbody_walk_near.inv: benchmarks/nbody.py's).
`--frames` says in which frames the backbone runs while training:

    all        every one of the 8 frames, as the spec's model does (8 backbone rows per cloud);
    sampled    one of the 8 frames of each cloud, drawn afresh every step (1 row per cloud); the
               model evaluated is the spec's, all 8 frames averaged, with the trained weights;
    canonical  the one canonical frame (third-moment signs), in training and evaluation.

The validation split (trajectories never trained on) picks the checkpoint; the test MSE is measured
once, at the end, on other trajectories never trained on and never used for a choice. To compare
configurations, train each with `--no-test` (the test split is not even kept in memory) and `--save`
(the best-validation state_dict, and beside it a .json with the validation curve and the settings);
then `--evaluate` only the chosen checkpoint.
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import sys
import time
from pathlib import Path

import torch
import torch.fx as fx
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import compiler  # noqa: E402
from data import load  # noqa: E402
from ops import frames  # noqa: E402

SPEC = ROOT / "examples" / "nbody.inv"
INPUTS = ("pos", "vel", "charge")
FRAMES = ("all", "sampled", "canonical")


def tensors(split: dict) -> dict[str, torch.Tensor]:
    return {k: torch.from_numpy(v) for k, v in split.items()}


def sample_frame(basis: torch.Tensor) -> torch.Tensor:
    """[B, F, 3, 3] -> [B, 1, 3, 3]: one of each cloud's F frames, drawn uniformly."""
    pick = torch.randint(basis.shape[1], (basis.shape[0],), device=basis.device)
    return basis[torch.arange(basis.shape[0], device=basis.device), pick][:, None]


def one_frame(gm: fx.GraphModule, frames_: str) -> fx.GraphModule:
    """The spec's model with one frame per cloud ("sampled" or "canonical"), sharing its parameters."""
    if frames_ == "all":
        return gm
    graph = copy.deepcopy(gm.graph)
    for node in list(graph.nodes):
        if node.target is frames.frame_tile:
            node.kwargs = {**node.kwargs, "frames": 1}
        elif node.target is frames.frame_basis and frames_ == "canonical":
            node.kwargs = {**node.kwargs, "canonical": True}
        elif node.target is frames.frame_basis:
            with graph.inserting_after(node):
                drawn = graph.call_function(sample_frame, (node,))
            node.replace_all_uses_with(drawn, delete_user_cb=lambda user: user is not drawn)
    return fx.GraphModule(gm, graph)


def mse(model, data: dict, batch: int = 500) -> float:
    total, count = 0.0, 0
    with torch.no_grad():
        for i in range(0, len(data["pos"]), batch):
            pred = model(*(data[k][i:i + batch] for k in INPUTS))
            total += float(((pred - data["target"][i:i + batch]) ** 2).sum())
            count += pred.numel()
    return total / count


def split(train_size: int, val_size: int, test_size: int) -> dict[str, dict[str, torch.Tensor]]:
    data = load(train_size, val_size + test_size)
    rest = tensors(data["test"])
    return {"train": tensors(data["train"]), "val": {k: v[:val_size] for k, v in rest.items()},
            "test": {k: v[val_size:] for k, v in rest.items()}}


def train(minutes: float, epochs: int = 10**9, train_size: int = 3000, val_size: int = 2000,
          test_size: int = 2000, batch: int = 100, lr: float = 1e-3, frames_: str = "sampled",
          seed: int = 0, validate_every: float = 30.0, spec: Path = SPEC, log=print, weight_decay: float = 0.0,
          test: bool = True, save: Path | None = None, ema: float = 0.0) -> dict:
    """Train until `epochs` or `minutes` of training (validation excluded) runs out; returns the
    test MSE of the best validated checkpoint (None when `test` is off), the validation curve and
    what it cost. `save` gets the best state_dict each time validation improves, so a run cut
    short still leaves its best checkpoint. `ema` above 0 validates, saves and tests an exponential
    moving average of the weights (decay `ema` per step) instead of the last step's weights."""
    if not 0 <= ema < 1:  # a decay of 1 or more would keep (or blow up) the initial weights; NaN fails too
        raise SystemExit(f"train.py: --ema {ema} is not a decay per step in [0, 1); "
                         "0 turns the average off, 0.999 is the validated choice")
    torch.manual_seed(seed)
    data = split(train_size, val_size, test_size)
    if not test:  # configurations are compared on validation: the test split stays out of reach
        del data["test"]
    model = compiler.build(spec, seed=seed)
    averaged = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(ema)) if ema else None
    shadow = averaged.module if averaged else model  # the weights that are validated and kept
    trained, evaluated = one_frame(model, frames_), shadow if frames_ == "sampled" else one_frame(shadow, frames_)
    opt = optimizer(model, lr, weight_decay)
    budget, spent, done, curve, best = minutes * 60, 0.0, 0, [], (math.inf, None)
    while done < epochs and spent < budget:
        start = time.perf_counter()
        loss = _epoch(trained, opt, data["train"], batch, lambda: lr * 0.5 * (1 + math.cos(
            math.pi * min(1.0, (spent + time.perf_counter() - start) / budget))), averaged)
        spent, done = spent + time.perf_counter() - start, done + 1
        if spent >= (len(curve) + 1) * validate_every or spent >= budget or done == epochs:
            val = mse(evaluated, data["val"])
            curve.append((spent, done, val))
            if val < best[0]:
                best = (val, copy.deepcopy(shadow.state_dict()))
                if save:
                    torch.save(best[1], save)
            log(f"epoch {done}: train MSE {loss:.5f}, validation MSE {val:.5f} ({spent:.0f} s)")
            if save:
                save.with_suffix(".json").write_text(json.dumps({
                    "curve": curve, "best_val_mse": best[0], "epochs": done, "frames": frames_, "lr": lr,
                    "batch": batch, "weight_decay": weight_decay, "seed": seed, "train": train_size,
                    "spec": str(spec), "ema": ema}))
    shadow.load_state_dict(best[1])
    return {"epochs": done, "seconds": spent, "train_mse": loss, "val_mse": best[0], "curve": curve,
            "test_mse": mse(evaluated, data["test"]) if test else None, "frames": frames_,
            "train": train_size, "val": val_size, "test": test_size, "threads": torch.get_num_threads()}


def evaluate(checkpoint: Path, frames_: str = "sampled", train_size: int = 3000, val_size: int = 2000,
             test_size: int = 2000, spec: Path = SPEC) -> float:
    """The test MSE of a saved state_dict: the model `train` would have tested, on the same split."""
    run = checkpoint.with_suffix(".json")
    recorded = json.loads(run.read_text()).get("spec") if run.is_file() else None
    if recorded and Path(recorded).resolve() != Path(spec).resolve():  # same weights' names, another model
        raise SystemExit(f"train.py: {checkpoint} was trained with {recorded} ({run}), not {spec}; "
                         f"pass --spec {recorded}")
    model = compiler.build(spec)
    try:
        model.load_state_dict(torch.load(checkpoint, weights_only=True))
    except (OSError, RuntimeError, EOFError) as e:  # missing, damaged, or another spec's weights
        raise SystemExit(f"train.py: cannot evaluate {checkpoint} with {spec}: {str(e).splitlines()[0]} "
                         "(give the --spec the run was trained with; its .json names it)") from None
    evaluated = model if frames_ == "sampled" else one_frame(model, frames_)
    return mse(evaluated, split(train_size, val_size, test_size)["test"])


def optimizer(model, lr: float, weight_decay: float = 0.0) -> torch.optim.Optimizer:
    """Adam, fused: one kernel over all parameters (its per-parameter loop was a quarter of a step).
    With weight decay, AdamW: decay decoupled from the adaptive step, so it shrinks every weight
    at the same rate instead of being divided by the gradient's scale."""
    if weight_decay:
        return torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay, fused=True)
    return torch.optim.Adam(model.parameters(), lr=lr, fused=True)


def _epoch(model, opt, data: dict, batch: int, rate, averaged: AveragedModel | None) -> float:
    order = torch.randperm(len(data["pos"]))
    total, count = 0.0, 0
    for i in range(0, len(order), batch):
        for group in opt.param_groups:
            group["lr"] = rate()
        loss = step(model, opt, {k: v[order[i:i + batch]] for k, v in data.items()})
        if averaged:
            averaged.update_parameters(model)
        total, count = total + loss * min(batch, len(order) - i), count + min(batch, len(order) - i)
    return total / count


def step(model, opt, batch: dict) -> float:
    """One training step on one batch; returns its loss."""
    pred = model(*(batch[k] for k in INPUTS))
    loss = ((pred - batch["target"]) ** 2).mean()
    opt.zero_grad()
    loss.backward()
    opt.step()
    return loss.item()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--minutes", type=float, default=10.0, help="training wall-time budget (default 10)")
    p.add_argument("--epochs", type=int, default=10**9, help="epoch cap (default: none)")
    p.add_argument("--train", type=int, default=3000)
    p.add_argument("--val", type=int, default=2000)
    p.add_argument("--test", type=int, default=2000)
    p.add_argument("--batch", type=int, default=100)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--frames", choices=FRAMES, default="sampled")
    p.add_argument("--weight-decay", type=float, default=0.0, help="AdamW's decoupled decay (default 0: Adam)")
    p.add_argument("--validate-every", type=float, default=30.0, help="training seconds between validations")
    p.add_argument("--seed", type=int, default=0, help="the weights' initialization and the batches' order (default 0)")
    p.add_argument("--ema", type=float, default=0.0,
                   help="validate and keep a moving average of the weights, this decay per step (default 0: off)")
    p.add_argument("--no-test", action="store_true", help="do not evaluate (or keep) the test split")
    p.add_argument("--save", type=Path, help="write the best-validation state_dict here (and a .json beside it)")
    p.add_argument("--evaluate", type=Path, help="only print the test MSE of this saved state_dict")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1: a shared machine)")
    p.add_argument("--spec", type=Path, default=SPEC)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    if args.evaluate:
        test = evaluate(args.evaluate, args.frames, args.train, args.val, args.test, args.spec)
        print(f"test MSE {test:.5f} of {args.evaluate} ({args.test} test trajectories)")
        return
    if args.save:
        args.save.parent.mkdir(parents=True, exist_ok=True)
    r = train(args.minutes, args.epochs, args.train, args.val, args.test, args.batch, args.lr, args.frames,
              validate_every=args.validate_every, spec=args.spec, weight_decay=args.weight_decay,
              test=not args.no_test, save=args.save, ema=args.ema, seed=args.seed)
    tested = "not evaluated" if r["test_mse"] is None else f"{r['test_mse']:.5f}"
    print(f"test MSE {tested} (best validation {r['val_mse']:.5f}) after {r['epochs']} epochs, "
          f"{r['seconds'] / 60:.1f} min ({r['train']} train / {r['val']} val / {r['test']} test, "
          f"{r['frames']} frames, {r['threads']} torch threads)")


if __name__ == "__main__":
    main()
