"""The SliceGPT pipeline on an nn.Module: discover, calibrate, rotate and slice, with a report."""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Iterable

import torch
from torch import nn

from passes.base import PassError
from passes.slicegpt.calibration import moments, pca
from passes.slicegpt.modules import count_parameters
from passes.slicegpt.rotation import apply
from passes.slicegpt.structure import Structure, discover

MODES = ("shortcut", "shortcut-free")

@dataclass
class SliceReport:
    mode: str
    sparsity: float
    width: int
    dim: int
    params_before: int
    params_after: int
    seconds: float
    structure: str
    blocks: list[str] = field(default_factory=list)
    shortcuts: int = 0
    head_map: bool = False
    calibration: "Calibration | None" = None


def kept_dims(width: int, sparsity: float, multiple: int = 8) -> int:
    """int((1-s)·D) rounded down to a multiple; rotate-only (s = 0) keeps every dimension."""
    if not 0.0 <= sparsity < 1.0:
        raise PassError(f"sparsity must be in [0, 1), got {sparsity}")
    if sparsity == 0:
        return width
    dim = int((1.0 - sparsity) * width) // multiple * multiple
    if dim < multiple:
        raise PassError(f"sparsity {sparsity} leaves {int((1.0 - sparsity) * width)} of {width} dimensions; "
                        f"at least {multiple} must stay")
    return dim


def rotation_groups(s: Structure, mode: str) -> list[int]:
    """Which rotation each stream position uses: one for all (shortcut-free), or the embedding output
    plus one per block, so a block's residual adds share a rotation and only block inputs need a shortcut."""
    if mode not in MODES:
        raise PassError(f"unknown mode {mode!r}; choose one of {', '.join(MODES)}")
    if mode == "shortcut-free":
        return [0] * (len(s.branches) + 1)
    blocks: list[str] = []
    groups = [0]
    for b in s.branches:
        if b.block not in blocks:
            blocks.append(b.block)
        groups.append(len(blocks))
    return groups


@dataclass
class Calibration:
    """What calibration learns: the structure, each position's rotation group and the rotations.
    It does not depend on the sparsity, so one calibration serves a whole sweep."""
    structure: Structure
    mode: str
    groups: list[int]
    rotations: list[torch.Tensor]


def calibrate(model: nn.Module, batches: Iterable[dict], mode: str = "shortcut-free",
              structure: Structure | None = None,
              progress: Callable[[Iterable], Iterable] = lambda it: it) -> Calibration:
    """Discover (unless `structure` is given for an identical model) and compute the PCA rotations."""
    model.eval()
    s = structure if structure is not None else discover(model)
    groups = rotation_groups(s, mode)
    sums = moments(model, s, batches, groups, progress)
    if any(float(m.trace()) == 0.0 for m in sums):
        raise PassError("calibration saw no tokens: give at least one batch with unmasked tokens")
    return Calibration(s, mode, groups, [pca(m) for m in sums])


def slice_model(model: nn.Module, batches: Iterable[dict] | None = None, sparsity: float = 0.25,
                mode: str = "shortcut-free", multiple: int = 8, untie_head: bool = False,
                structure: Structure | None = None, calibration: Calibration | None = None,
                progress: Callable[[Iterable], Iterable] = lambda it: it) -> SliceReport:
    """Slice `model` in place. `batches` yields dicts with input_ids (and optionally attention_mask).

    `structure` skips discovery when an identical model was already discovered (names are reused);
    `calibration` skips calibration too, reusing one computed on an identical model.
    untie_head gives a tied head its own table, so that a shortcut-free RMSNorm model needs no map
    before the head and stays a plain model of its family (at the cost of vocab x d parameters)."""
    start = time.perf_counter()
    model.eval()
    before = count_parameters(model)
    if untie_head:
        _untie(model)
        structure = calibration = None
    if calibration is None:
        if batches is None:
            raise PassError("slice_model needs calibration batches or a calibration")
        calibration = calibrate(model, batches, mode, structure, progress)
    s = calibration.structure
    dim = kept_dims(s.width, sparsity, multiple)
    with torch.no_grad():
        adapters = apply(model, s, calibration.rotations, calibration.groups, dim)
    adapters.plan.update(mode=calibration.mode, sparsity=sparsity)
    blocks = list(dict.fromkeys(b.block for b in s.branches))
    return SliceReport(calibration.mode, sparsity, s.width, dim, before, count_parameters(model),
                       time.perf_counter() - start, s.summary(), blocks,
                       len(adapters.shortcuts), adapters.head_map is not None, calibration)


def _untie(model: nn.Module) -> None:
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if head is None or head.weight is not model.get_input_embeddings().weight:
        return
    head.weight = nn.Parameter(head.weight.detach().clone())
    model.config.tie_word_embeddings = False
