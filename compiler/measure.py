"""How far a measured tensor is from the expected one, in units that rounding cannot reach: the
relative errors and pass marks that `invc verify` (compiler/verify.py) and the breaking-op search
(compiler/localize.py) share."""
from __future__ import annotations

import torch

TOLERANCE = {torch.float32: 1e-4, torch.float64: 1e-9}  # pass marks, per dtype


def relative_error(want: torch.Tensor, got: torch.Tensor, floor: float = 1e-30) -> float:
    """max |got - want| over max |want|, or over `floor` when the output is smaller than that."""
    want, got = want.double(), torch.as_tensor(got).double()
    scale = want.abs().max().clamp_min(floor) if want.numel() else 1.0
    return float((got - want).abs().max() / scale) if want.numel() else 0.0


def noise_floor(inputs: list, dtype: torch.dtype) -> float:
    """The output size below which rounding alone may fail the pass mark: an output that is 0 by
    construction (the mean of a centred cloud) is compared at this scale, not at its own. Rounding
    of inputs of size s leaves errors of about 64·eps·s; at this floor they measure a tenth of
    the pass mark. Integers (ids an output passes on) are exact: compared at a scale of 1 at least."""
    if not dtype.is_floating_point:
        return 1.0
    size = max((float(x.abs().max()) for x in inputs if x.is_floating_point() and x.numel()), default=1.0)
    return 640 * torch.finfo(dtype).eps * size / TOLERANCE.get(dtype, TOLERANCE[torch.float32])
