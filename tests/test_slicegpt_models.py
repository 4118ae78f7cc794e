"""Tiny random-init models of every supported family, and the structure each must show.

Norm scales and biases are randomised, so folding them is really exercised (HF initialises them to 1 and 0)."""
from __future__ import annotations

import functools

import pytest
import torch
import transformers as T

from passes.base import PassError
from passes.slicegpt import discover

VOCAB, HIDDEN = 96, 64
_COMMON = dict(vocab_size=VOCAB, num_hidden_layers=2, num_attention_heads=4)


def _configs():
    h = dict(hidden_size=HIDDEN, intermediate_size=128, **_COMMON)
    return {
        "opt": (T.OPTConfig, dict(hidden_size=HIDDEN, ffn_dim=128, word_embed_proj_dim=HIDDEN,
                                  max_position_embeddings=64, **_COMMON)),
        "llama": (T.LlamaConfig, dict(num_key_value_heads=2, **h)),
        "mistral": (T.MistralConfig, dict(num_key_value_heads=2, **h)),
        "qwen2": (T.Qwen2Config, dict(num_key_value_heads=2, **h)),
        "phi": (T.PhiConfig, dict(**h)),
        "phi3": (T.Phi3Config, dict(pad_token_id=0, **h)),
        "gpt2": (T.GPT2Config, dict(n_embd=HIDDEN, n_layer=2, n_head=4, n_positions=64, vocab_size=VOCAB)),
        "gpt_neox": (T.GPTNeoXConfig, dict(**h)),
        "gemma": (T.GemmaConfig, dict(num_key_value_heads=2, head_dim=16, **h)),
    }


FAMILIES = list(_configs())
RMS_FAMILIES = ["llama", "mistral", "qwen2", "phi3", "gemma"]


def tiny_model(family: str, seed: int = 0, **overrides) -> torch.nn.Module:
    cls, kw = _configs()[family]
    torch.manual_seed(seed)
    config = cls(**{**kw, **overrides})
    model = T.AutoModelForCausalLM.from_config(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name or "ln_" in name:
                p.add_(0.3 * torch.randn_like(p))
    return model


@functools.lru_cache(maxsize=None)
def structure_of(family: str):
    """Discovery is deterministic per family; sharing it keeps the suite to one export per family."""
    return discover(tiny_model(family))


def token_batches(n: int = 4, seq: int = 16, seed: int = 1) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    return [{"input_ids": torch.randint(0, VOCAB, (2, seq), generator=g)} for _ in range(n)]


@pytest.mark.parametrize("family", FAMILIES)
def test_discovery_finds_every_block(family):
    model = tiny_model(family)
    s = structure_of(family)
    assert s.width == HIDDEN
    assert len({b.block for b in s.branches}) == 2
    assert all(n.readers for n in s.norms)
    assert all(b.writers for b in s.branches)
    params = dict(model.named_parameters(remove_duplicate=False))
    for lin in s.embeddings + [r for n in s.norms for r in n.readers] + [w for b in s.branches for w in b.writers]:
        assert params[lin.weight].shape[lin.axis] == HIDDEN


def test_post_norm_model_is_refused_with_reason():
    model = tiny_model("opt", do_layer_norm_before=False)
    with pytest.raises(PassError, match=r"module 'model\.decoder\.layers\.\d+\.fc1' reads the residual stream"
                                        r".*neither LayerNorm nor RMSNorm.*post-norm"):
        discover(model)


@pytest.mark.parametrize("family", ["gemma2", "olmo2"])
def test_sublayer_output_norms_are_refused_for_that_reason(family):
    """Gemma-2 also soft-caps its logits (kept on here): the refusal must name the norms on the sublayer
    outputs, the real obstacle, not the soft-capping the discovery meets first."""
    extra = dict(head_dim=16, final_logit_softcapping=30.0) if family == "gemma2" else {}
    cfg = T.AutoConfig.for_model(family, hidden_size=HIDDEN, intermediate_size=128, num_key_value_heads=2,
                                 **extra, **_COMMON)
    model = T.AutoModelForCausalLM.from_config(cfg).eval()
    with pytest.raises(PassError, match=r"ends in norm module 'model\.layers\.1\.post_\w+': a norm on the "
                                        r"sublayer output"):
        discover(model)
