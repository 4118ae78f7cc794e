"""Decode speed of the KV-cache ONNX decoder (`invc export`) in onnxruntime against HF `generate()`, dense and
SliceGPT 25% SmolLM2-135M, greedy, batch 1, a 32-token prompt and 128 new tokens, side by side in one process
(the models and runtimes take turns, so load from other processes hits them alike).

    python benchmarks/slicegpt_onnx_decode.py [--runs 5] [--calib-rows 8] [--threads 2]

Models: dense; shortcut-free 25% as invc slices it (a map before the tied head, as a hook); the same rotation as
a plain LlamaForCausalLM at hidden_size 432 (untied head: `standard_model`). onnxruntime runs invc's own loop
(runtime/generate.py); each file is checked against torch when exported, and its greedy tokens are compared with
generate()'s here. The fp32 checkpoint and texts come from benchmarks/slicegpt_smollm2.py's fetch.
"""
from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import slicegpt_smollm2 as smol  # noqa: E402
from slicegpt_decode import NEW_TOKENS, decode_rate, setup, sliced_models  # noqa: E402


def onnx_tokens(decoder, prompt: list[int]) -> tuple[list[int], float]:
    """Exactly NEW_TOKENS greedy tokens from invc's loop, and their rate (tokens/s, the prompt's step included)."""
    from runtime.generate import generate, greedy

    start = time.perf_counter()
    tokens = list(generate(decoder, prompt, NEW_TOKENS, greedy))
    return tokens, NEW_TOKENS / (time.perf_counter() - start)


def hf_tokens(model, prompt) -> list[int]:
    import torch
    with torch.no_grad():
        out = model.generate(prompt, max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS, do_sample=False,
                             pad_token_id=0)
    return out[0, prompt.shape[1]:].tolist()


def main() -> None:
    args, prompt = setup(__doc__, runs=5)
    from passes.slicegpt import export_onnx
    from runtime.generate import Decoder

    built = sliced_models(args.calib_rows, shortcut=False)  # the three models above
    workdir = Path(tempfile.mkdtemp(prefix="invc-decode-"))
    decoders, same = {}, {}
    for i, (name, model) in enumerate(built.items()):
        err = export_onnx(model, workdir / f"{i}.onnx")
        decoders[name] = Decoder(workdir / f"{i}.onnx", threads=args.threads)
        same[name] = onnx_tokens(decoders[name], prompt[0].tolist())[0] == hf_tokens(model, prompt)
        print(f"{name}: exported (onnxruntime vs torch {err:.1e}); greedy tokens equal to generate(): {same[name]}",
              file=sys.stderr, flush=True)
    rates = {(name, rt): [] for name in built for rt in ("onnxruntime", "HF generate()")}
    load = [os.getloadavg()[0]]
    for _ in range(args.runs):
        for name, model in built.items():
            rates[name, "onnxruntime"].append(onnx_tokens(decoders[name], prompt[0].tolist())[1])
            rates[name, "HF generate()"].append(decode_rate(model, prompt))
        load.append(os.getloadavg()[0])
    dense = statistics.median(rates["dense", "onnxruntime"])
    print(f"threads {args.threads}, {args.runs} runs each, 1-min load {min(load):.2f}-{max(load):.2f}, "
          f"{os.cpu_count()} CPUs")
    print("| model | runtime | params | tokens/s (median) | min-max | x dense onnxruntime | same tokens |")
    print("|---|---|---|---|---|---|---|")
    for (name, runtime), r in rates.items():
        params = sum(p.numel() for p in built[name].parameters()) / 1e6
        print(f"| {name} | {runtime} | {params:.2f}M | {statistics.median(r):.2f} | {min(r):.2f}-{max(r):.2f} | "
              f"{statistics.median(r) / dense:.3f}x | {same[name]} |")


if __name__ == "__main__":
    main()
