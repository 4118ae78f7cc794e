"""The self-check must be checked: for each of its halves (the block outputs, the logits, and a rotated model
that cannot run) a model that only that half refuses. Each model is first shown to be silently wrong when
sliced without the check, so a test passes only while its half of the check is on."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from passes.base import PassError
from passes.slicegpt import slice_model
from test_slicegpt_families import logits, relative
from test_slicegpt_models import structure_of, tiny_model, token_batches


def _doubled(norm: nn.Module) -> None:
    """A norm that doubles its scale in its own forward: discovery reads the scale as the parameter alone."""
    class DoubledRMSNorm(type(norm)):
        def forward(self, x):
            h = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.variance_epsilon)
            return (2 * self.weight) * h
    norm.__class__ = DoubledRMSNorm


def _final_norm_doubled(model: nn.Module) -> nn.Module:
    """Every block is read right; only the final norm is misread, so the rotated model's logits are half
    the dense ones."""
    _doubled(model.model.norm)
    return model


def _block_norm_doubled(model: nn.Module) -> nn.Module:
    """The second norm of the last block: its output diverges and the blocks before it agree."""
    _doubled(model.model.layers[-1].post_attention_layernorm)
    return model


def _block_reads_its_norm(model: nn.Module) -> nn.Module:
    """The first block reads an attribute of its norm module, which the replaced norm does not have."""
    layer = model.model.layers[0]
    forward = layer.forward

    def reads_its_norm(*args, **kwargs):
        assert layer.input_layernorm.variance_epsilon > 0
        return forward(*args, **kwargs)
    layer.forward = reads_its_norm
    return model


HALVES = {
    "logits": (_final_norm_doubled, r"self-check: after rotation every block agrees.*logits differ by 5\.0e-01.*"
                                    r"final norm 'model\.norm'"),
    "blocks": (_block_norm_doubled, r"self-check:.*output of block 'model\.layers\.1' differs.*blocks before it agree"),
}


@pytest.mark.parametrize("half", list(HALVES))
def test_each_half_of_the_self_check_refuses_what_only_it_sees(half):
    """Random llama weights, rotate-only (sparsity 0, no refit), and the structure discovered on the plain
    model (discovery reads the doubled norm's scale as its parameter alone, as it would on the broken one):
    with the check off, the model comes out wrong; with it on, this half refuses, with its own message."""
    broken, message = HALVES[half]
    batches = token_batches(1)
    want = logits(broken(tiny_model("llama", seed=3)))
    unchecked = broken(tiny_model("llama", seed=3))
    slice_model(unchecked, batches, 0.0, structure=structure_of("llama"), self_check=None, refit=None)
    err = relative(logits(unchecked), want)
    assert err >= 0.1, f"the broken model must come out wrong without the check (logits off by {err:.1e} only)"
    with pytest.raises(PassError, match=message):
        slice_model(broken(tiny_model("llama", seed=3)), batches, 0.0, structure=structure_of("llama"), refit=None)


def test_self_check_refuses_a_rotated_model_that_cannot_run():
    """A block reading its norm's own attributes fails once the norms are replaced: a refusal that names the
    error, not a traceback from inside the family's code."""
    model = _block_reads_its_norm(tiny_model("llama"))
    with pytest.raises(PassError, match=r"self-check: the rotated model fails to run \(AttributeError.*"
                                        r"variance_epsilon"):
        slice_model(model, token_batches(1), 0.0, structure=structure_of("llama"), refit=None)
