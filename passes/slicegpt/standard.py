"""Shortcut-free RMSNorm models back to a plain model of their own family at width d.

The family's RMSNorm averages over d entries, the sliced stream wants the original D:
    rms_d(y; eps') = sqrt(|y|²/d + eps') = sqrt(D/d) · sqrt(|y|²/D + eps)   when eps' = eps·D/d,
so the norm with eps' and scale sqrt(D/d) equals the D-norm exactly. Things the family derives
from hidden_size (Gemma's embedding scale sqrt(hidden_size)) are measured and compensated, and the
result is checked against the sliced model before it is offered.
"""
from __future__ import annotations

import copy
import math

import torch
from torch import nn


def standard_model(model: nn.Module) -> tuple[nn.Module | None, str]:
    """A plain family model equal to the sliced `model`, or None and the reason it cannot be one."""
    import transformers

    plan = model.invc_slice.plan
    if plan["shortcuts"] or plan["head"]:
        what = "shortcut matrices" if plan["shortcuts"] else "a map before the tied head"
        return None, f"the sliced model needs {what}, which the family's class does not have"
    if any(n["kind"] != "rms" for n in plan["norms"]):
        return None, "the family's LayerNorm subtracts the mean, which the rotated stream does not allow"
    D, d = plan["width"], plan["dim"]
    config = copy.deepcopy(model.config)
    eps_keys = [k for k, v in config.to_dict().items() if "eps" in k and isinstance(v, float)]
    if len(eps_keys) != 1 or any(not abs(n["eps"] - getattr(config, eps_keys[0])) <= 1e-12 for n in plan["norms"]):
        return None, f"cannot tell which config entry holds the norms' epsilon (candidates {eps_keys})"
    if getattr(config, "head_dim", None) is None:
        config.head_dim = D // config.num_attention_heads
    setattr(config, eps_keys[0], getattr(config, eps_keys[0]) * D / d)
    config.hidden_size = d
    small = transformers.AutoModelForCausalLM.from_config(config, dtype=next(model.parameters()).dtype).eval()
    state = {k: v for k, v in model.state_dict().items() if not k.startswith("invc_slice.")}
    gain = math.sqrt(D / d)
    for n in plan["norms"]:
        state[n["module"] + ".weight"] = state[n["module"] + ".weight"] * gain - n["offset"]
    try:
        small.load_state_dict(state, strict=False)
    except RuntimeError as e:
        return None, f"the family's class at hidden_size={d} has other shapes: {str(e).splitlines()[0]}"
    _match_embedding_scale(model, small, plan)
    ids = torch.randint(0, model.config.vocab_size, (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref, got = model(ids).logits, small(ids).logits
    err = float((ref - got).abs().max() / ref.abs().max())
    if not err <= 1e-4:  # NaN fails
        return None, f"the family's class at hidden_size={d} differs from the sliced model by {err:.1e} (relative)"
    return small, ""


def _match_embedding_scale(model: nn.Module, small: nn.Module, plan: dict) -> None:
    """Undo any factor the family multiplies into embeddings from hidden_size; a tied head gets it back
    through the final norm's scale."""
    ids = torch.arange(min(8, model.config.vocab_size)).unsqueeze(0)
    with torch.no_grad():
        want = model.get_submodule(plan["embedding"])(ids)
        got = small.get_submodule(plan["embedding"])(ids)
        ratio = float((want * got).sum() / (got * got).sum())
        if abs(ratio - 1.0) < 1e-7:
            return
        emb = small.get_submodule(plan["embedding"]).weight
        head = small.get_output_embeddings()
        emb.mul_(ratio)
        if head is not None and head.weight is emb:
            final = plan["norms"][-1]
            w = small.get_submodule(final["module"]).weight
            w.copy_((w + final["offset"]) / ratio - final["offset"])
