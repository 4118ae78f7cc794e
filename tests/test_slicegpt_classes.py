"""Families refused before although the rotation commutes with what they do, each class with two families
read from the graph alone: constant multipliers, parallel blocks on one shared norm with a logit scale,
linear maps written as `x @ W.T`, mixture-of-experts blocks; and a LayerNorm whose scale is stored as an
offset from 1 (with a bias), which was once sliced silently wrong. Then the self-check that turns any such
misreading into a refusal."""
from __future__ import annotations

import functools

import pytest
import torch
import transformers as T
from torch import nn

from passes.base import PassError
from passes.slicegpt import count_parameters, discover, slice_model
from test_slicegpt_families import BEAT_NAIVE, naive_sliced, relative, relative_mse
from test_slicegpt_models import HIDDEN, VOCAB, token_batches

_COMMON = dict(vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=128, num_hidden_layers=2,
               num_attention_heads=4, num_key_value_heads=2)
_MOE = dict(num_experts_per_tok=2, **_COMMON)

CLASSES = {
    # constant multipliers: embeddings, residual branches, logits (divided / multiplied after the head)
    "granite": dict(embedding_multiplier=3.0, residual_multiplier=0.3, logits_scaling=4.0, **_COMMON),
    "minicpm3": dict(scale_emb=3.0, scale_depth=1.4, dim_model_base=16, q_lora_rank=32, kv_lora_rank=16,
                     qk_nope_head_dim=8, qk_rope_head_dim=8, v_head_dim=16,
                     **{**_COMMON, "num_key_value_heads": 4}),   # divides the final norm's output before the head
    # parallel blocks: attention and MLP read one shared (mean-subtracting) norm; logits scaled after the head
    "cohere": dict(logit_scale=0.25, **_COMMON),
    "cohere2": dict(logit_scale=0.25, **_COMMON),
    # linear maps written as `x @ W.T` (Falcon's FalconLinear): one shared norm, or one norm per branch
    "falcon": dict(new_decoder_architecture=False, parallel_attn=True, **_COMMON),
    "falcon-two-norms": dict(new_decoder_architecture=True, num_kv_heads=2, **_COMMON),
    # mixture of experts: router and grouped experts on the normalized stream, tokens gathered per expert
    "mixtral": dict(num_local_experts=4, **_MOE),
    "qwen2_moe": dict(num_experts=4, moe_intermediate_size=32, shared_expert_intermediate_size=32, **_MOE),
    "qwen3_moe": dict(num_experts=4, moe_intermediate_size=32, head_dim=16, norm_topk_prob=True, **_MOE),
    "olmoe": dict(num_experts=4, norm_topk_prob=False, eos_token_id=1, pad_token_id=0, **_MOE),
    "granitemoe": dict(num_local_experts=4, embedding_multiplier=3.0, residual_multiplier=0.3, **_MOE),
    # LayerNorm with bias whose scale is stored as weight + 1
    "nemotron": dict(**_COMMON),
}
FAMILIES = list(CLASSES)


def tiny(family: str, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    config = T.AutoConfig.for_model(family.split("-")[0], **CLASSES[family])
    model = T.AutoModelForCausalLM.from_config(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name or "ln_" in name:   # non-unit scales, non-zero biases: folding is exercised
                p.add_(0.3 * torch.randn_like(p))
    return model


@functools.lru_cache(maxsize=None)
def structure(family: str):
    return discover(tiny(family))


IDS = torch.randint(0, VOCAB, (2, 12), generator=torch.Generator().manual_seed(7))


def logits(model) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=IDS, use_cache=False).logits


@pytest.mark.parametrize("family", FAMILIES)
def test_rotate_only_keeps_logits(family):
    model = tiny(family)
    ref = logits(model)
    slice_model(model, token_batches(2), 0.0, structure=structure(family), self_check=None)
    assert relative(logits(model), ref) <= 1e-4


@pytest.mark.parametrize("family", FAMILIES)
def test_slicing_shrinks_and_beats_an_unrotated_cut(family):
    model = tiny(family)
    ref, before = logits(model), count_parameters(model)
    slice_model(model, token_batches(), 0.25, structure=structure(family))
    real = relative_mse(logits(model), ref)
    naive = relative_mse(logits(naive_sliced(family, "shortcut-free", build=tiny, structure=structure)), ref)
    assert count_parameters(model) < before
    assert real < BEAT_NAIVE * naive, f"PCA slicing {real:.4f} vs identity cut {naive:.4f}"


def test_moe_readers_and_writers_include_every_expert_and_the_router():
    s = structure("qwen2_moe")
    readers = {r.weight for n in s.norms for r in n.readers}
    writers = {w.weight for b in s.branches for w in b.writers}
    mlp = "model.layers.1.mlp."
    assert {mlp + "gate.weight", mlp + "experts.gate_up_proj", mlp + "shared_expert_gate.weight",
            mlp + "shared_expert.up_proj.weight"} <= readers
    assert {mlp + "experts.down_proj", mlp + "shared_expert.down_proj.weight"} <= writers
    experts = next(r for n in s.norms for r in n.readers if r.weight == mlp + "experts.gate_up_proj")
    assert experts.axis == 2   # [experts, 2 x inner, hidden]: the stream is the last axis


def test_offset_layer_norm_is_read_with_its_offset_and_bias():
    norm = structure("nemotron").norms[0]
    assert norm.kind == "layer" and norm.offset == 1.0 and norm.bias and norm.weight


class _MatmulLinear(nn.Module):
    """A linear map written as `x @ W.T` on a parameter, the way some families spell it."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        self.weight = nn.Parameter(linear.weight.detach().clone())

    def forward(self, x):
        return x @ self.weight.T


def _misread_offsets(family: str):
    """Discovery as it was before offsets were read: the scale taken as weight, not weight + 1."""
    s = structure(family)
    return type(s)(s.width, s.embeddings, [type(b)(b.block, [_no_offset(n) for n in b.norms], b.writers)
                                           for b in s.branches], _no_offset(s.final))


def _no_offset(norm):
    return type(norm)(norm.module, norm.kind, norm.weight, norm.bias, norm.eps, 0.0, norm.readers)


def test_self_check_refuses_the_silently_wrong_offset_norm():
    with pytest.raises(PassError, match=r"self-check.*block 'model\.layers\.0'.*differs"):
        slice_model(tiny("nemotron"), token_batches(1), 0.25, structure=_misread_offsets("nemotron"))


def test_self_check_names_the_first_block_that_diverges():
    s = structure("mixtral")
    broken = type(s)(s.width, s.embeddings, list(s.branches), s.final)
    attention = broken.branches[2]   # block 1's attention: the router and experts of block 0 are intact
    missed = type(attention.norms[0])(**{**attention.norms[0].__dict__, "readers": attention.norms[0].readers[1:]})
    broken.branches[2] = type(attention)(attention.block, [missed], attention.writers)
    with pytest.raises(PassError, match=r"self-check.*output of block 'model\.layers\.1' differs.*blocks before "
                                        r"it agree.*reload it"):
        slice_model(tiny("mixtral"), token_batches(1), 0.25, structure=broken)


def test_self_check_refuses_a_custom_norm_the_discovery_cannot_see_through():
    """A norm that doubles its scale: discovery reads the scale as the parameter, the self-check sees the 2."""
    model = tiny("granite")

    class DoubledRMSNorm(type(model.model.norm)):
        def forward(self, x):
            h = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.variance_epsilon)
            return (2 * self.weight) * h

    for layer in model.model.layers:
        layer.post_attention_layernorm.__class__ = DoubledRMSNorm
    with pytest.raises(PassError, match=r"self-check.*block 'model\.layers\.0'"):
        slice_model(model, token_batches(1), 0.25)


def test_matmul_linears_in_a_custom_module_rotate_exactly():
    """Every projection of a Llama rewritten as `x @ W.T`: a second family of that class."""
    torch.manual_seed(0)
    model = T.LlamaForCausalLM(T.LlamaConfig(**_COMMON)).eval()
    for name, mod in list(model.model.layers.named_modules()):
        if isinstance(mod, nn.Linear):
            parent, _, attr = name.rpartition(".")
            setattr(model.model.layers.get_submodule(parent), attr, _MatmulLinear(mod))
    ref = logits(model)
    slice_model(model, token_batches(2), 0.0)
    assert relative(logits(model), ref) <= 1e-4
