"""The refit after slicing: exact at rotate-only, the ridge solution it claims, and a sliced model whose
blocks reproduce the dense blocks better than plain slicing, judged by an independent float64 run."""
from __future__ import annotations

import pytest
import torch

from passes.slicegpt import slice_model
from passes.slicegpt.refit import Fit
from test_slicegpt_families import logits, relative
from test_slicegpt_models import HIDDEN, structure_of, token_batches, tiny_model

EXACT = 1e-4


def random_biases(model: torch.nn.Module) -> torch.nn.Module:
    """HF initialises biases to zero; the refit keeps a writer's bias, so give every bias a value."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.add_(0.1 * torch.randn_like(p))
    return model


@pytest.mark.parametrize("family", ["llama", "opt", "phi"])
def test_rotate_only_with_refit_is_exact(family):
    dense = logits(random_biases(tiny_model(family)))
    model = random_biases(tiny_model(family))
    report = slice_model(model, token_batches(2), 0.0, structure=structure_of(family))
    assert report.refit is not None, "the refit is on by default in shortcut-free mode"
    err = relative(logits(model), dense)
    assert err <= EXACT, f"{family}: rotate-only + refit moved the logits by {err:.2e} relative"


def test_fit_is_the_ridge_solution_toward_the_start():
    """Against float64 lstsq of the stacked system [Z; √λ·I]·P = [T; √λ·P0]."""
    g = torch.Generator().manual_seed(3)
    z, t = torch.randn(2, 50, 6, generator=g), torch.randn(2, 50, 4, generator=g)
    start = torch.randn(6, 4, generator=g, dtype=torch.float64)
    mask = (torch.rand(2, 50, generator=g) > 0.2).long()
    fit = Fit(0.3)
    fit.add(z, t, mask)
    got = fit.solve(fit.c, start)
    zs, ts = z.reshape(-1, 6).double()[mask.reshape(-1) > 0], t.reshape(-1, 4).double()[mask.reshape(-1) > 0]
    lam = 0.3 * float((zs ** 2).sum(0).mean())
    want = torch.linalg.lstsq(torch.cat([zs, lam ** 0.5 * torch.eye(6, dtype=torch.float64)]),
                              torch.cat([ts, lam ** 0.5 * start])).solution
    err = float((got - want).abs().max() / want.abs().max())
    assert err <= 1e-5, err


def block_outputs(model: torch.nn.Module, batches: list[dict]) -> list[torch.Tensor]:
    """Every decoder layer's output over the batches, run in float64."""
    model = model.double()
    found: dict[int, list[torch.Tensor]] = {}
    layers = model.model.layers

    def keep(i: int):
        def hook(_mod, _args, out):
            found.setdefault(i, []).append((out[0] if isinstance(out, tuple) else out).reshape(-1, out.shape[-1]))
        return hook

    handles = [layer.register_forward_hook(keep(i)) for i, layer in enumerate(layers)]
    with torch.no_grad():
        for b in batches:
            model(**b, use_cache=False)
    for h in handles:
        h.remove()
    return [torch.cat(found[i]) for i in range(len(layers))]


def test_refit_brings_every_block_closer_to_the_dense_one():
    """The dense model's block outputs, rotated and cut to the kept dims, are what the sliced blocks
    should compute. In float64 and on the calibration tokens, the refit must reduce that error at
    every block, clearly, compared with plain slicing of the same rotation."""
    batches = token_batches(8, 32)
    dense = block_outputs(tiny_model("llama"), batches)
    errors = {}
    for ridge in (None, 1e-2):
        model = tiny_model("llama")
        report = slice_model(model, batches, 0.25, structure=structure_of("llama"), refit=ridge)
        assert report.dim == HIDDEN * 3 // 4 and report.refit == ridge
        kept = report.calibration.rotations[0][:, :report.dim]
        errors[ridge] = [float((got - want @ kept).norm() / (want @ kept).norm())
                         for got, want in zip(block_outputs(model, batches), dense)]
    for i, (plain, refit) in enumerate(zip(errors[None], errors[1e-2])):
        assert refit <= 0.9 * plain, f"block {i}: refit {refit:.4f} against plain slicing {plain:.4f}"
