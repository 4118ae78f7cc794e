"""Calibration: second moments of the residual stream at every position, and PCA rotations from them.

Each stream position is observed where a norm reads it (a forward pre-hook on that norm module).
Tokens are normalised to unit length first, because the norms' readers see only directions; this
weights every position and token alike. Padding is masked. Sums are float64 and, under
torch.distributed, are summed over ranks with all_reduce before the eigendecomposition.
"""
from __future__ import annotations

from typing import Callable, Iterable

import torch
import torch.distributed as dist
from torch import nn

from passes.base import PassError
from passes.slicegpt.structure import Structure


class _Stop(Exception):
    """Raised by the hook on the last norm: the head's logits are not needed for calibration."""


def stream_readers(s: Structure) -> list[str]:
    """The norm module that observes each stream position 0..K."""
    return [b.norms[0].module for b in s.branches] + [s.final.module]


def moments(model: nn.Module, s: Structure, batches: Iterable[dict], groups: list[int],
            progress: Callable[[Iterable], Iterable] = lambda it: it) -> list[torch.Tensor]:
    """Sum of x·xᵀ over unit-length stream vectors, one D x D float64 matrix per rotation group."""
    D = s.width
    sums = [torch.zeros(D, D, dtype=torch.float64) for _ in range(max(groups) + 1)]
    mask: list[torch.Tensor | None] = [None]
    readers = stream_readers(s)
    handles = []
    for pos, name in enumerate(readers):
        hook = _observer(sums[groups[pos]], mask, name, pos, s.layer_norm, last=pos == len(readers) - 1)
        handles.append(model.get_submodule(name).register_forward_pre_hook(hook))
    try:
        with torch.no_grad():
            for batch in progress(batches):
                ids = batch["input_ids"]
                mask[0] = batch.get("attention_mask")
                try:
                    model(input_ids=ids, attention_mask=mask[0], use_cache=False)
                except _Stop:
                    pass
    finally:
        for h in handles:
            h.remove()
    return [all_ranks(m) for m in sums]


def _observer(acc: torch.Tensor, mask: list, name: str, pos: int, centered: bool, last: bool):
    def hook(_mod, args):
        accumulate(acc, args[0], mask[0], centered, f"{name!r} (stream position {pos})")
        if last:
            raise _Stop
    return hook


def accumulate(acc: torch.Tensor, x: torch.Tensor, mask: torch.Tensor | None, centered: bool, where: str) -> None:
    """Add Σ x·xᵀ over the unit-length, unpadded token vectors of `x` to `acc` (float64)."""
    x = x.detach().to(torch.float64)
    if not torch.isfinite(x).all():
        raise PassError(f"calibration activations entering {where} contain "
                        "NaN or inf: the model overflows on this text in its current dtype")
    x = x.reshape(-1, x.shape[-1])
    if centered:
        x = x - x.mean(dim=1, keepdim=True)
    x = x / x.norm(dim=1, keepdim=True).clamp_min(1e-30)
    if mask is not None:
        x = x * mask.reshape(-1, 1).to(x.dtype)
    acc.add_(x.T @ x)


def all_ranks(m: torch.Tensor) -> torch.Tensor:
    """Under torch.distributed, the sum over every rank's calibration shard."""
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(m, op=dist.ReduceOp.SUM)
    return m


def seen(m: torch.Tensor) -> torch.Tensor:
    """A moment sum that saw at least one token; an all-padding calibration is refused."""
    if float(m.trace()) == 0.0:
        raise PassError("calibration saw no tokens: give at least one batch with unmasked tokens")
    return m


def pca(m: torch.Tensor) -> torch.Tensor:
    """Eigenvectors by decreasing eigenvalue, each with its largest entry positive so that every rank
    and every run picks the same signs."""
    values, vectors = torch.linalg.eigh(m)
    order = torch.argsort(values, descending=True)
    vectors = vectors[:, order]
    peak = vectors.abs().argmax(dim=0)
    signs = torch.sign(vectors[peak, torch.arange(vectors.shape[1])])
    return vectors * torch.where(signs == 0, 1.0, signs)
