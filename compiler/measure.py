"""How far a measured tensor is from the expected one, in units that rounding cannot reach: the
relative errors and pass marks that `invc verify` (compiler/verify.py) and the breaking-op search
(compiler/localize.py) share."""
from __future__ import annotations

import torch

TOLERANCE = {torch.float32: 1e-4, torch.float64: 1e-9}  # pass marks, per dtype


def relative_error(want: torch.Tensor, got: torch.Tensor, floor: float = 1e-30) -> float:
    """max |got - want| over max |want|, or over `floor` when the output is smaller than that, on the
    entries where `want` is finite. NaN and infinities must stand at the same places in both, the
    infinities with the same sign (a softmax over a set masked out is NaN for x and g·x alike);
    anywhere else the error is infinite. An output with no finite entry tells nothing: NaN, a failure."""
    want, got = want.double(), torch.as_tensor(got).double()
    finite = torch.isfinite(want)
    if want.numel() and not finite.any():
        return float("nan")
    if not (torch.equal(finite, torch.isfinite(got)) and torch.equal(torch.isnan(want), torch.isnan(got))
            and torch.equal(want[torch.isinf(want)], got[torch.isinf(want)])):
        return float("inf")
    want, got = want[finite], got[finite]
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
