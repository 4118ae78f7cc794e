"""How wide each rotation group stays, what calibration learns, and what slicing reports; pipeline.py
runs the steps."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from passes.base import PassError
from passes.slicegpt.structure import Structure

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
