"""ONNX export of dense or sliced models (input_ids -> logits), checked against onnxruntime."""
from __future__ import annotations

import warnings
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from torch import nn

from common.errors import CheckFailed, InvcError
from common.files import atomic_path
from common.logs import quiet
from runtime.session import VOCAB_KEY
from runtime.stamp import stamp_file


class _Logits(nn.Module):
    """The model as a function of token ids alone; hooks on its submodules still run when traced."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids, use_cache=False).logits


def export_onnx(model: nn.Module, path: Path | str, seq_len: int = 16, check: bool = True,
                tolerance: float = 1e-4) -> float:
    """Write `path` (a single file, weights inside) and return the max |logit| difference to torch,
    relative to the logit scale, on a random batch of a different shape than the trace used.
    The file appears only once it has passed that check."""
    wrapper = _Logits(model.eval())
    vocab = model.config.vocab_size
    ids = torch.randint(0, vocab, (2, seq_len), generator=torch.Generator().manual_seed(0))
    batch, seq = torch.export.Dim("batch", max=64), torch.export.Dim("seq", max=4096)
    with warnings.catch_warnings(), eager_attention(model), quiet(EXPORTER_REGISTRY_LOG):
        # The TorchScript exporter cannot lower HF's mask code (aten::diff); the dynamo one can.
        warnings.simplefilter("ignore")
        try:
            program = torch.onnx.export(wrapper, (ids,), input_names=["input_ids"], output_names=["logits"],
                                        dynamic_shapes=({0: batch, 1: seq},), dynamo=True, verbose=False)
        except Exception as e:  # noqa: BLE001 - the exporter's own message is the useful part
            raise InvcError(f"ONNX export of {type(model).__name__} to {path} failed: {e}") from e
    with atomic_path(path, "ONNX model") as tmp:
        program.save(tmp, external_data=False)
        stamp_file(tmp, {VOCAB_KEY + "input_ids": str(vocab)})
        return check_onnx(model, tmp, tolerance, label=path) if check else 0.0


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


def check_onnx(model: nn.Module, path: Path | str, tolerance: float = 1e-4, label: Path | str | None = None) -> float:
    """Max |logit| difference of onnxruntime on `path` to torch, relative; `label` names the file in errors."""
    import onnxruntime as ort

    ids = torch.randint(0, model.config.vocab_size, (2, 11), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = model(input_ids=ids, use_cache=False).logits.float().numpy()
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(["logits"], {"input_ids": ids.numpy()})[0]
    err = float(np.abs(got - ref).max() / np.abs(ref).max())
    if not err <= tolerance:  # NaN fails
        raise CheckFailed(f"{label or path}: onnxruntime logits differ from torch by {err:.2e} relative "
                          f"(> {tolerance}); the file was not written")
    return err
