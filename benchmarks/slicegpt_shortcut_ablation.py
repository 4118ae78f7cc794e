"""Shortcut mode's out-of-domain collapse (issue 11): ablations that each change one thing.

    python benchmarks/slicegpt_shortcut_ablation.py shipped head=shared pca=raw calib=one-pass layout=add
    python benchmarks/slicegpt_shortcut_ablation.py head=shared,pca=raw   # several switches at once

Each argument is one variant: comma-separated switches from shortcut mode as the package does it
(`shipped` changes nothing). Every variant slices SmolLM2 at --sparsity (25%) in shortcut mode, calibrated as in
slicegpt_smollm2.py, and scores the held-out plays (in domain) and Emma (dev) only; Persuasion (test)
is never scored here. Run slicegpt_smollm2.py once first: it fetches the model and the texts.

Switches, each one difference between invc and the reference SliceGPT:
- head=shared      a tied head keeps sharing the embedding's sliced table, behind a map, which also
                   projects the head's input onto the embedding output's subspace (invc before its untie_head step;
                   the package, like the reference, now gives it its own table W·Q_last);
- pca=raw          PCA of the raw stream vectors, as the reference does, instead of unit-length ones;
- calib=one-pass   every rotation from the dense model instead of the sequential replay;
- layout=add       one rotation per residual add (two per block, as the reference) instead of one per block.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from contextlib import ExitStack, contextmanager
from pathlib import Path
from unittest import mock

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import slicegpt_smollm2 as bench  # noqa: E402

SWITCHES = {"head": ("own", "shared"), "pca": ("unit", "raw"), "calib": ("sequential", "one-pass"),
            "layout": ("block", "add")}


def parse(variant: str) -> dict[str, str]:
    chosen = {k: v[0] for k, v in SWITCHES.items()}
    if variant == "shipped":
        return chosen
    for item in variant.split(","):
        key, _, value = item.partition("=")
        if key not in SWITCHES or value not in SWITCHES[key]:
            raise SystemExit(f"unknown switch {item!r}; choose from {SWITCHES}")
        chosen[key] = value
    return chosen


def raw_accumulate(acc, x, mask, centered, where):
    """The reference's moments: Σ x·xᵀ of the raw (not unit-length) unpadded token vectors."""
    import torch
    x = x.detach().to(torch.float64).reshape(-1, x.shape[-1])
    if centered:
        x = x - x.mean(dim=1, keepdim=True)
    if mask is not None:
        x = x * mask.reshape(-1, 1).to(x.dtype)
    acc.add_(x.T @ x)


@contextmanager
def patched(v: dict[str, str]):
    from passes.base import Step
    from passes.slicegpt import calibration, pipeline, sequential, slicing
    with ExitStack() as stack:
        if v["head"] == "shared":
            keep = Step("untie_head", lambda job: job, "keep the tied head (ablation)")
            stack.enter_context(mock.patch.object(pipeline, "untie_head", keep))
        if v["pca"] == "raw":
            stack.enter_context(mock.patch.object(calibration, "accumulate", raw_accumulate))
            stack.enter_context(mock.patch.object(sequential, "accumulate", raw_accumulate))
        if v["layout"] == "add":
            def per_add(s, mode):
                return list(range(len(s.branches) + 1))

            def dims_per_add(s, mode, sparsity, schedule, multiple):
                return [slicing.kept_dims(s.width, sparsity, multiple)] * (len(s.branches) + 1)
            stack.enter_context(mock.patch.object(pipeline, "rotation_groups", per_add))
            stack.enter_context(mock.patch.object(pipeline, "group_dims", dims_per_add))
        yield


def one_pass(model, batches):
    """Shortcut-mode rotations, each from the dense model's stream (no sequential replay)."""
    from passes.slicegpt import calibration, pipeline, slicing
    from passes.slicegpt.structure import discover
    pipeline.untie_head(pipeline.Job(pipeline.Options(mode="shortcut"), model))   # as calibrate() does, first
    s = discover(model)
    groups = slicing.rotation_groups(s, "shortcut")
    sums = calibration.moments(model, s, batches, groups)
    return slicing.Calibration(s, "shortcut", groups, [calibration.pca(calibration.seen(m)) for m in sums])


def run(variant: str, sparsity: float) -> dict:
    import torch
    import transformers
    from passes.slicegpt import load, perplexity, slice_model, token_sequences
    from passes.slicegpt.data import batches

    v = parse(variant)
    torch.manual_seed(0)
    torch.set_num_threads(2)
    tok = transformers.AutoTokenizer.from_pretrained(bench.DENSE)
    held = token_sequences(tok, bench.play_text(bench.HELD_OUT_PLAYS), bench.SEQ, bench.EVAL_ROWS)
    emma = token_sequences(tok, (bench.CACHE / "texts" / "austen_dev.txt").read_text(), bench.SEQ, bench.EVAL_ROWS)
    calib = token_sequences(tok, bench.play_text(bench.CALIB_PLAYS), bench.SEQ, bench.CALIB_ROWS)
    model = load(bench.DENSE)
    start, load_before = time.time(), os.getloadavg()[0]
    with patched(v):
        cal = one_pass(model, batches(calib, 4)) if v["calib"] == "one-pass" else None
        report = slice_model(model, batches(calib, 4), sparsity, "shortcut", calibration=cal)
    out = {"variant": variant, **v, "sparsity": sparsity, "dim": report.dim, "shortcuts": report.shortcuts,
           "head_map": report.head_map, "slice_s": round(time.time() - start, 1)}
    out["ppl"] = perplexity(model, held, 4)
    out["ppl_dev"] = perplexity(model, emma, 4)
    out["load_1min"] = [load_before, os.getloadavg()[0]]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("variants", nargs="+")
    ap.add_argument("--sparsity", type=float, default=0.25)
    args = ap.parse_args()
    for variant in args.variants:
        parse(variant)
    dense = next(r for r in json.loads((bench.RESULTS / "slicegpt_smollm2_ppl.json").read_text())
                 if r["mode"] == "dense")
    for variant in args.variants:
        row = run(variant, args.sparsity)
        row.update(ratio=row["ppl"] / dense["ppl"], ratio_dev=row["ppl_dev"] / dense["ppl_dev"])
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
