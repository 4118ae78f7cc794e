"""Sliced models that deploy: the five mixture-of-experts families export, and the KV-cache ONNX decoder
decodes in onnxruntime (invc's own loop) the greedy tokens HF generate() picks, dense and sliced, for one
family per class; the export check refuses a file that computes something else than torch."""
from __future__ import annotations

import contextlib
import random

import pytest
import torch
from torch import nn

from common.errors import CheckFailed, InvcError
from passes.slicegpt import export_onnx, onnx_export, slice_model
from runtime.generate import Decoder, generate, greedy, sampler
from test_slicegpt_classes import logits, structure, tiny
from test_slicegpt_families import relative
from test_slicegpt_models import VOCAB, structure_of, tiny_model, token_batches

# Routing as each family has it: softmax over the top-k renormalised (Mixtral, Qwen3-MoE), not renormalised
# (Qwen2-MoE, OLMoE), top-k of the logits then softmax (GraniteMoE); Qwen2-MoE adds a shared expert behind
# a sigmoid gate.
MOE = ["mixtral", "qwen2_moe", "qwen3_moe", "olmoe", "granitemoe"]


@pytest.fixture(scope="module")
def sliced_moe(tmp_path_factory):
    """Per MoE family: its dense logits, its 25% sliced model, and that model's checked ONNX decoder
    and the export check's error."""
    root, out = tmp_path_factory.mktemp("moe"), {}
    for family in MOE:
        model = tiny(family)
        dense = logits(model)
        slice_model(model, token_batches(), 0.25, structure=structure(family))
        err = export_onnx(model, root / f"{family}.onnx")
        out[family] = dense, model, Decoder(root / f"{family}.onnx"), err
    return out


@pytest.mark.parametrize("family", MOE)
def test_moe_family_rotates_exactly_and_exports_sliced(family, sliced_moe):
    model = tiny(family)
    ref = logits(model)
    slice_model(model, token_batches(2), 0.0, structure=structure(family))
    assert relative(logits(model), ref) <= 1e-4   # rotate-only: exact to the self-check's tolerance
    dense, sliced, _, err = sliced_moe[family]
    assert sliced.config.hidden_size == 64 and err <= 1e-4
    assert relative(logits(sliced), dense) < 1.0   # a lossy 25% cut, not a different model


def test_an_export_failure_is_one_line_naming_the_module(monkeypatch, tmp_path):
    """transformers' default experts call a custom op torch.onnx cannot convert: the error says where."""
    monkeypatch.setattr(onnx_export, "batched_experts", lambda model: contextlib.nullcontext())
    with pytest.raises(InvcError) as e:
        export_onnx(tiny("mixtral"), tmp_path / "m.onnx")
    message = str(e.value)
    assert "\n" not in message and "module 'model.layers.0.mlp.experts' (MixtralExperts)" in message
    assert "transformers.grouped_mm_fallback" in message
    assert list(tmp_path.iterdir()) == []


class _ExportOnly(nn.Module):
    """Scales the final norm's output by 1.5, but only in the graph torch.export traces."""

    def forward(self, x):
        return x * 1.5 if torch.compiler.is_exporting() else x


def test_the_export_check_refuses_a_file_that_differs_from_torch(tmp_path):
    model = tiny_model("llama")
    model.model.norm.register_forward_hook(lambda module, args, out: _ExportOnly()(out))
    with pytest.raises(CheckFailed, match=r"m\.onnx: onnxruntime logits or cache differ from torch by .*not written"):
        export_onnx(model, tmp_path / "m.onnx")
    assert list(tmp_path.iterdir()) == []


# One family per class: plain pre-norm, parallel block (attention and MLP on one shared norm), a norm whose
# scale is stored as 1 + w, and mixture of experts (its sliced decoder comes from `sliced_moe`).
CLASSES = {"plain pre-norm": "llama", "parallel block": "phi", "1+w norm": "gemma", "mixture of experts": "mixtral"}


@pytest.fixture(scope="module")
def decoders(tmp_path_factory, sliced_moe):
    """(model, its ONNX decoder) per class, dense and sliced at 25%."""
    root, out = tmp_path_factory.mktemp("decoders"), {}
    for name, family in CLASSES.items():
        build, s = (tiny, structure) if family == "mixtral" else (tiny_model, structure_of)
        if family == "llama":  # one dense decoder; a sliced one is the harder case, exported per class
            dense = build(family)
            export_onnx(dense, root / f"{family}.onnx")
            out[name, "dense"] = dense, Decoder(root / f"{family}.onnx")
        if family == "mixtral":
            out[name, "sliced"] = sliced_moe[family][1:3]
            continue
        sliced = build(family)
        slice_model(sliced, token_batches(), 0.25, structure=s(family))
        export_onnx(sliced, root / f"{family}-sliced.onnx")
        out[name, "sliced"] = sliced, Decoder(root / f"{family}-sliced.onnx")
    return out


@pytest.mark.parametrize("kind, state", [("plain pre-norm", "dense"), *((kind, "sliced") for kind in CLASSES)])
def test_greedy_onnx_tokens_equal_hf_generate(kind, state, decoders):
    """Seeded prompts of 1-12 tokens and 1-10 new tokens; both stop at the model's end-of-text token."""
    model, decoder = decoders[kind, state]
    eos = model.generation_config.eos_token_id
    stop = frozenset([] if eos is None else [eos] if isinstance(eos, int) else eos)
    rng = random.Random(f"{kind}-{state}")
    for _ in range(6):
        prompt = [rng.randrange(VOCAB) for _ in range(rng.randint(1, 12))]
        new = rng.randint(1, 10)
        ids = torch.tensor([prompt])
        with torch.no_grad():   # the mask given: generate() would otherwise mask every id equal to pad_token_id
            want = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new, do_sample=False,
                                  pad_token_id=0)
        assert list(generate(decoder, prompt, new, greedy, stop)) == want[0, len(prompt):].tolist()


def test_sampling_is_seeded_and_keeps_to_the_nucleus():
    logits = 3 * torch.randn(VOCAB, generator=torch.Generator().manual_seed(3)).numpy()

    def draws(seed: int) -> list[int]:
        pick = sampler(0.7, 0.5, seed)
        return [pick(logits) for _ in range(200)]

    assert draws(11) == draws(11) != draws(12)
    # The nucleus in float64 from the logits: the fewest most likely tokens whose probabilities reach 0.5.
    p = torch.softmax(torch.from_numpy(logits).double() / 0.7, 0)
    order = torch.argsort(p, descending=True)
    nucleus = set(order[:int((torch.cumsum(p[order], 0) < 0.5).sum()) + 1].tolist())
    assert len(nucleus) > 1 and set(draws(11)) == nucleus
    assert sampler(1e-3, 1.0, 0)(logits) == greedy(logits)
