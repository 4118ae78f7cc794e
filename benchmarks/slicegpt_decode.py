"""Decode speed of SliceGPT on SmolLM2-135M: `generate()` tokens/s, greedy, with the KV cache, batch 1,
128 new tokens, dense against 25%-sliced models, side by side in one process (the models take turns, so
load from other processes hits them alike).

    python benchmarks/slicegpt_decode.py [--runs 7] [--calib-rows 8] [--threads 2]

Models: dense; shortcut-free 25% as invc slices it (StreamRMSNorm modules and a map before the tied head,
as a hook); the same rotation as a plain LlamaForCausalLM at hidden_size 432 (untied head, no hooks:
`standard_model`); shortcut 25% (30 shortcut matrices, as hooks). Calibration is short (8 x 512 tokens of
the calibration plays by default): it decides the rotations' quality, not the shapes, so it does not change
the speed. The fp32 checkpoint and texts come from benchmarks/slicegpt_smollm2.py's fetch.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import slicegpt_smollm2 as smol  # noqa: E402

NEW_TOKENS, PROMPT_TOKENS = 128, 32


def sliced_models(calib_rows: int, shortcut: bool = True) -> dict:
    """Dense; shortcut-free 25% (a map before the tied head); the same as a plain Llama; and, with
    `shortcut`, shortcut mode at 25%."""
    from passes.slicegpt import load, slice_model, standard_model, token_sequences
    from passes.slicegpt.data import batches

    import transformers
    tok = transformers.AutoTokenizer.from_pretrained(smol.DENSE)
    calib = batches(token_sequences(tok, smol.play_text(smol.CALIB_PLAYS), smol.SEQ, calib_rows), 4)
    models = {"dense": load(smol.DENSE)}
    models["shortcut-free 25%"] = load(smol.DENSE)
    # No refit: it changes the weights' values, not their shapes, so not the speed (and costs minutes).
    slice_model(models["shortcut-free 25%"], calib, 0.25, "shortcut-free", refit=None)
    untied = load(smol.DENSE)
    slice_model(untied, calib, 0.25, "shortcut-free", untie_head=True, refit=None)
    plain, why = standard_model(untied)
    if plain is None:
        raise SystemExit(f"no plain model: {why}")
    models["shortcut-free 25%, plain Llama"] = plain
    if shortcut:
        models["shortcut 25%"] = load(smol.DENSE)
        slice_model(models["shortcut 25%"], calib, 0.25, "shortcut")
    return models


def decode_rate(model, prompt) -> float:
    """Tokens/s of one greedy generate() of exactly NEW_TOKENS tokens."""
    import torch

    with torch.no_grad():
        start = time.perf_counter()
        out = model.generate(prompt, max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS, do_sample=False,
                             use_cache=True, pad_token_id=0)
        seconds = time.perf_counter() - start
    assert out.shape[1] == prompt.shape[1] + NEW_TOKENS
    return NEW_TOKENS / seconds


def setup(doc: str, runs: int):
    """The decode benchmarks' command line and set-up: torch's threads, the checkpoint fetched, and the
    prompt (the held-out plays' first PROMPT_TOKENS tokens). Returns (args, prompt)."""
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=runs)
    ap.add_argument("--calib-rows", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    import torch
    import transformers

    torch.set_num_threads(args.threads)
    smol.fetch()
    smol.dense_checkpoint()
    tok = transformers.AutoTokenizer.from_pretrained(smol.DENSE)
    prompt = tok(smol.play_text(smol.HELD_OUT_PLAYS)[:2000], return_tensors="pt")["input_ids"][:, :PROMPT_TOKENS]
    return args, prompt


def main() -> None:
    args, prompt = setup(__doc__, runs=7)
    models = sliced_models(args.calib_rows)
    for model in models.values():
        decode_rate(model, prompt)   # warm-up
    rates = {name: [] for name in models}
    load = [os.getloadavg()[0]]
    for _ in range(args.runs):
        for name, model in models.items():
            rates[name].append(decode_rate(model, prompt))
        load.append(os.getloadavg()[0])
    dense = statistics.median(rates["dense"])
    print(f"threads {args.threads}, {args.runs} runs each, 1-min load {min(load):.2f}-{max(load):.2f}")
    print("| model | params | tokens/s (median) | min-max | x dense |\n|---|---|---|---|---|")
    for name, r in rates.items():
        params = sum(p.numel() for p in models[name].parameters()) / 1e6
        print(f"| {name} | {params:.2f}M | {statistics.median(r):.2f} | {min(r):.2f}-{max(r):.2f} | "
              f"{statistics.median(r) / dense:.3f}x |")


if __name__ == "__main__":
    main()
