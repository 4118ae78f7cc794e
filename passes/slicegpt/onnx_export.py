"""ONNX export of dense or sliced models as the usual decoder step with a KV cache, checked against torch.

The file takes `input_ids`, `attention_mask` (over past and new tokens), `position_ids` and, per layer,
`past_key_values.{i}.key` / `.value` ([batch, heads, past, head_dim]; past may be 0 on the first step), and
returns `logits` and `present.{i}.key` / `.value` (past and new tokens). runtime/generate.py decodes with it."""
from __future__ import annotations

import re
import warnings
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from torch import nn

from common.errors import CheckFailed, InvcError
from common.files import atomic_path
from common.logs import quiet
from runtime.generate import Decoder
from runtime.session import VOCAB_KEY
from runtime.stamp import stamp_file

KINDS = ("key", "value")


class _Decoder(nn.Module):
    """One decoder step on flat tensors; hooks on the model's submodules still run when traced."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask, position_ids, past):
        from transformers import DynamicCache

        # No config: every layer keeps all its tokens, so `present` is always past + new (the model's own
        # masks still apply any sliding window), and one interface serves every family.
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                         cache=DynamicCache(ddp_cache_data=past), use_cache=True)
        return out.logits, [(layer.keys, layer.values) for layer in out.cache.layers]


def io_names(layers: int) -> tuple[list[str], list[str]]:
    """The file's input and output names, in order."""
    cache = [f"{{}}.{i}.{kind}" for i in range(layers) for kind in KINDS]
    return (["input_ids", "attention_mask", "position_ids"] + [c.format("past_key_values") for c in cache],
            ["logits"] + [c.format("present") for c in cache])


def export_onnx(model: nn.Module, path: Path | str, seq_len: int = 16, check: bool = True,
                tolerance: float = 1e-4) -> float:
    """Write `path` (a single file, weights inside) and return the max difference of onnxruntime to torch,
    relative to each output's scale, over a prefill and a decode step with other shapes than the trace used.
    The file appears only once it has passed that check."""
    model.eval()
    vocab = model.config.vocab_size
    ids = torch.randint(0, vocab, (2, seq_len), generator=torch.Generator().manual_seed(0))
    with exportable(model):
        program = _trace(model, path, ids)
    with atomic_path(path, "ONNX model") as tmp:
        program.save(tmp, external_data=False)
        stamp_file(tmp, {VOCAB_KEY + "input_ids": str(vocab)})
        return check_onnx(model, tmp, tolerance, label=path) if check else 0.0


def _trace(model: nn.Module, path, ids: torch.Tensor):
    """The decoder step traced on `ids` after 3 cached tokens, with every length and the batch dynamic."""
    cached = 3
    with torch.no_grad():
        past = [(layer.keys, layer.values) for layer in model(input_ids=ids[:, :cached], use_cache=True).cache.layers]
    batch, seq = torch.export.Dim("batch", max=64), torch.export.Dim("seq", max=4096)
    # The mask spans past + new tokens: a sum of two dims, which export infers but cannot be told.
    seen, total = torch.export.Dim("past", max=4096), torch.export.Dim.DYNAMIC
    args = (ids, torch.ones(ids.shape[0], cached + ids.shape[1], dtype=torch.long),
            torch.arange(cached, cached + ids.shape[1]).expand(ids.shape[0], -1), past)
    dims = ({0: batch, 1: seq}, {0: batch, 1: total}, {0: batch, 1: seq}, [({0: batch, 2: seen},) * 2] * len(past))
    try:
        program = torch.export.export(_Decoder(model), args, dynamic_shapes=dims, strict=False)
    except Exception as e:  # noqa: BLE001 - torch's report is many lines; its first says what
        raise InvcError(f"ONNX export of {type(model).__name__} to {path} failed while tracing: {_first_line(e)}") from e
    inputs, outputs = io_names(len(past))
    try:
        return torch.onnx.export(program, input_names=inputs, output_names=outputs, dynamo=True, verbose=False)
    except Exception as e:  # noqa: BLE001 - the module whose op failed is the news, not torch's report
        raise InvcError(f"ONNX export of {type(model).__name__} to {path} failed: {_failure(program, e)}") from e


def _first_line(error: Exception) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[0] if lines else type(error).__name__


def _failure(program, error: Exception) -> str:
    """One line: the module that calls the op torch.onnx could not convert, else torch's first line."""
    op = re.search(r"OpOverload\(op='([\w.]+)'", str(error))
    nodes = [] if op is None else [n for n in program.graph.nodes if str(n.target).startswith(op.group(1) + ".")]
    stack = nodes[0].meta.get("nn_module_stack") if nodes else None
    if not stack:
        return _first_line(error)
    path, cls = list(stack.values())[-1]
    module = path.removeprefix("model.")   # the _Decoder wrapper's own attribute
    name = cls if isinstance(cls, str) else cls.__name__
    return f"module '{module}' ({name.rsplit('.', 1)[-1]}) calls {op.group(1)}, which torch.onnx cannot convert"


@contextmanager
def exportable(model: nn.Module):
    """The model in spellings torch.onnx converts, restored afterwards; torch's own chatter silenced."""
    with warnings.catch_warnings(), eager_attention(model), batched_experts(model), quiet(EXPORTER_REGISTRY_LOG):
        warnings.simplefilter("ignore")
        yield


# Logs one line per torchvision op it skips when torchvision is absent, which a language model never uses.
EXPORTER_REGISTRY_LOG = "torch.onnx._internal.exporter._registration"


@contextmanager
def eager_attention(model: nn.Module):
    """Export HF attention in its eager spelling: the decomposed SDPA adds a NaN guard and a mask
    select over every score tensor, about a tenth of onnxruntime's CPU time on SmolLM2 at 256 tokens."""
    before = getattr(model.config, "_attn_implementation", None)
    if before in (None, "eager") or not hasattr(model, "set_attn_implementation"):
        yield
        return
    model.set_attn_implementation("eager")
    try:
        yield
    finally:
        model.set_attn_implementation(before)


@contextmanager
def batched_experts(model: nn.Module):
    """Export mixture-of-experts blocks through transformers' `batched_mm` experts: each token's top-k
    experts' weights are gathered and applied with bmm, which torch.onnx converts. The default `grouped_mm`
    calls a custom op (transformers.grouped_mm_fallback) that it cannot. Both compute the same products."""
    can = getattr(model, "_can_set_experts_implementation", None)
    if can is None or not can():
        yield
        return
    before = model.get_experts_implementation()
    model.set_experts_implementation("batched_mm")
    try:
        yield
    finally:
        model.set_experts_implementation(before)


def check_onnx(model: nn.Module, path: Path | str, tolerance: float = 1e-4, label: Path | str | None = None) -> float:
    """Max difference of onnxruntime on `path` to torch, relative to each output's scale, over a prefill of
    11 tokens from an empty cache, then 1 token and 2 more on top of it (each side on its own cache);
    `label` names the file in errors."""
    decoder = Decoder(path)
    ids = torch.randint(0, model.config.vocab_size, (2, 14), generator=torch.Generator().manual_seed(1)).numpy()
    step = _torch_step(model)
    err, past, ref_past = 0.0, decoder.empty_past(2), decoder.empty_past(2)
    for start, stop in ((0, 11), (11, 12), (12, 14)):
        got, past = decoder.step(ids[:, start:stop], past, start)
        ref, ref_past = step(ids[:, start:stop], ref_past, start)
        err = max([err, _relative(got, ref)] + [_relative(past[name], ref_past[name]) for name in ref_past])
    if not err <= tolerance:  # NaN fails
        raise CheckFailed(f"{label or path}: onnxruntime logits or cache differ from torch by {err:.2e} relative "
                          f"(> {tolerance}); the file was not written")
    return err


def _torch_step(model: nn.Module):
    """The model as `Decoder.step` in torch: numpy in and out, the cache by input name."""
    decoder = _Decoder(model)

    def step(ids: np.ndarray, past: dict[str, np.ndarray], done: int):
        names = list(past)
        tensors = [torch.from_numpy(past[n]) for n in names]
        mask, positions = Decoder.positions(ids, done)
        with torch.no_grad():
            logits, present = decoder(torch.from_numpy(ids), torch.from_numpy(mask), torch.from_numpy(positions),
                                      list(zip(tensors[0::2], tensors[1::2])))
        flat = [t.float().numpy() for pair in present for t in pair]
        return logits.float().numpy(), dict(zip(names, flat))
    return step


def _relative(got: np.ndarray, ref: np.ndarray) -> float:
    return float(np.abs(got - ref).max() / np.abs(ref).max())
