"""The SliceGPT pipeline on an nn.Module: discover, calibrate, rotate and slice, with a report."""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Iterable

import torch
from torch import nn

from passes.base import PassError
from passes.slicegpt.calibration import moments, pca, seen
from passes.slicegpt.modules import count_parameters
from passes.slicegpt import refit as refitting
from passes.slicegpt import selfcheck
from passes.slicegpt.rotation import apply
from passes.slicegpt.sequential import sequential_rotations
from passes.slicegpt.structure import Structure, discover

MODES = ("shortcut", "shortcut-free")
DEFAULT_SPARSITY = 0.25

@dataclass
class SliceReport:
    mode: str
    sparsity: float | None     # None when a per-layer schedule was given
    width: int
    dim: int                   # the widest kept width (every width without a schedule)
    params_before: int
    params_after: int
    seconds: float
    structure: str
    blocks: list[str] = field(default_factory=list)
    shortcuts: int = 0
    head_map: bool = False
    calibration: "Calibration | None" = None
    dims: list[int] = field(default_factory=list)   # per block: the width of the stream it writes
    refit: float | None = None   # the ridge of the refit after slicing; None when it did not run


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
    return [0] + [s.blocks.index(b.block) + 1 for b in s.branches]


def group_dims(s: Structure, mode: str, sparsity: float | None, schedule: list[float] | None,
               multiple: int) -> list[int]:
    """The width kept by each rotation group. A schedule has one sparsity per block, for the stream
    that block writes; the embedding output shares the first block's."""
    blocks = s.blocks
    if schedule is None:
        dim = kept_dims(s.width, DEFAULT_SPARSITY if sparsity is None else sparsity, multiple)
        return [dim] * (1 if mode == "shortcut-free" else len(blocks) + 1)
    if mode != "shortcut":
        raise PassError("a per-layer schedule needs mode 'shortcut': shortcut-free has one rotation for the "
                        "whole stream, so every block keeps the same width")
    if sparsity is not None:
        raise PassError("give either a sparsity or a schedule, not both")
    if len(schedule) != len(blocks):
        raise PassError(f"the schedule has {len(schedule)} entries, the model has {len(blocks)} blocks: "
                        "give one sparsity per block")
    dims = []
    for i, entry in enumerate(schedule):
        try:
            dims.append(kept_dims(s.width, entry, multiple))
        except PassError as e:
            raise PassError(f"schedule entry {i} (block {blocks[i]!r}): {e}") from e
    return dims[:1] + dims


@dataclass
class Calibration:
    """What calibration learns: the structure, each position's rotation group and the rotations.
    `dims` is None when the rotations do not depend on the widths (shortcut-free: one pass over the
    dense model, so one calibration serves a whole sparsity sweep). Shortcut mode calibrates
    sequentially on the sliced stream, so its rotations hold only for the widths in `dims`."""
    structure: Structure
    mode: str
    groups: list[int]
    rotations: list[torch.Tensor]
    dims: list[int] | None = None

    def check_reuse(self, dims: list[int]) -> None:
        if self.dims is not None and self.dims != dims:
            raise PassError(f"this calibration was computed sequentially for stream widths {self.dims}, "
                            f"not {dims}: in shortcut mode each rotation depends on how the earlier blocks "
                            "were sliced, so calibrate again for these widths")


def calibrate(model: nn.Module, batches: Iterable[dict], mode: str = "shortcut-free",
              structure: Structure | None = None,
              progress: Callable[[Iterable], Iterable] = lambda it: it,
              sparsity: float | None = None, schedule: list[float] | None = None,
              multiple: int = 8) -> Calibration:
    """Discover (unless `structure` is given for an identical model) and compute the PCA rotations.
    Shortcut mode learns each block's rotation on the stream already sliced to the widths that
    `sparsity` or `schedule` give; shortcut-free ignores them. Shortcut mode first gives a tied head
    of `model` its own table (own_head)."""
    model.eval()
    if mode == "shortcut":
        structure = own_head(model, structure)
    s = structure if structure is not None else discover(model)
    groups = rotation_groups(s, mode)
    if mode == "shortcut":
        dims = group_dims(s, mode, sparsity, schedule, multiple)
        return Calibration(s, mode, groups, sequential_rotations(model, s, batches, groups, dims, progress), dims)
    group_dims(s, mode, sparsity, schedule, multiple)  # refuse a bad request before the long pass
    sums = moments(model, s, batches, groups, progress)
    return Calibration(s, mode, groups, [pca(seen(m)) for m in sums])


def slice_model(model: nn.Module, batches: Iterable[dict] | None = None, sparsity: float | None = None,
                mode: str = "shortcut-free", multiple: int = 8, untie_head: bool = False,
                structure: Structure | None = None, calibration: Calibration | None = None,
                progress: Callable[[Iterable], Iterable] = lambda it: it,
                schedule: list[float] | None = None,
                self_check: float | None = selfcheck.TOLERANCE,
                refit: float | None = refitting.RIDGE) -> SliceReport:
    """Slice `model` in place. `batches` yields dicts with input_ids (and optionally attention_mask).

    `sparsity` (default 0.25) applies to every block; `schedule` (shortcut mode only) instead gives one
    sparsity per block, for the stream that block writes.

    `structure` skips discovery when an identical model was already discovered (names are reused);
    `calibration` skips calibration too, reusing one computed on an identical model.
    untie_head gives a tied head its own table, so that a shortcut-free RMSNorm model needs no map
    before the head and stays a plain model of its family (at the cost of vocab x d parameters).
    Shortcut mode always does (own_head).

    `self_check` is the relative tolerance of the check between rotating and slicing: the rotated model
    must reproduce the dense logits and block outputs on the first calibration sequence, or slicing is
    refused, naming the first block that diverges. None skips it (for models in low precision).

    `refit` is the ridge of the closed-form correction after slicing (refit.py): every block's readers
    and writers are refit on the calibration batches so that the sliced block reproduces the dense one.
    It runs in shortcut-free mode when `batches` are given; None skips it. `report.refit` says if it ran."""
    start = time.perf_counter()
    model.eval()
    before = count_parameters(model)
    if untie_head:
        _untie(model)
        structure = calibration = None
    if (calibration.mode if calibration is not None else mode) == "shortcut":
        structure = own_head(model, structure)
    batches = None if batches is None else list(batches)   # token ids: the self-check reads the first again
    if calibration is None:
        if batches is None:
            raise PassError("slice_model needs calibration batches or a calibration")
        calibration = calibrate(model, batches, mode, structure, progress, sparsity, schedule, multiple)
    s = calibration.structure
    dims = group_dims(s, calibration.mode, sparsity, schedule, multiple)
    calibration.check_reuse(dims)
    check = lambda _m: None  # noqa: E731
    if self_check is not None:
        vocab = model.get_submodule(s.embeddings[0].module).weight.shape[0]
        reference = selfcheck.record(model, s, selfcheck.probe(batches, vocab))
        check = lambda m: selfcheck.verify(m, s, reference, calibration.rotations, calibration.groups,  # noqa: E731
                                           self_check)
    ridge = refit if calibration.mode == "shortcut-free" and batches is not None else None

    def before_cut(m: nn.Module) -> None:
        check(m)
        if ridge is not None:
            refitting.refit(m, s, batches, dims[0], ridge, progress)

    with torch.no_grad():
        adapters = apply(model, s, calibration.rotations, calibration.groups, dims, before_cut)
    level = DEFAULT_SPARSITY if sparsity is None and schedule is None else sparsity
    adapters.plan.update(mode=calibration.mode, sparsity=level)
    if schedule is not None:
        adapters.plan["schedule"] = list(schedule)
    written = {b.block: dims[calibration.groups[k]] for k, b in enumerate(s.branches, start=1)}
    return SliceReport(calibration.mode, level, s.width, max(dims), before, count_parameters(model),
                       time.perf_counter() - start, s.summary(), list(written),
                       len(adapters.shortcuts), adapters.head_map is not None, calibration, list(written.values()),
                       ridge)


def own_head(model: nn.Module, structure: Structure | None) -> Structure | None:
    """Shortcut mode gives a tied head its own table, as the reference does. Shared, the table is the
    embedding's, sliced to the subspace of the embedding output, while the head reads the last block's
    subspace: every logit would also lose what the two subspaces do not share (on SmolLM2 at 25%, dense
    perplexity x2.82 instead of x1.91 in domain, x5.38 instead of x3.55 on unseen prose). A structure
    discovered while the head was tied names the embedding as its table, so it is discovered again."""
    _untie(model)
    return None if structure is not None and structure.tied else structure


def _untie(model: nn.Module) -> None:
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if head is None or head.weight is not model.get_input_embeddings().weight:
        return
    head.weight = nn.Parameter(head.weight.detach().clone())
    model.config.tie_word_embeddings = False
