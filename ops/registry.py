"""The registry: every op family, joined explicitly. The checker and prover receive its vocabulary
here; lowering and the backends find each graph op's forms in it."""
from __future__ import annotations

from dsl import checker
from ops import aten, attention, elementwise, frames, linear, norms, reductions, sets, shape
from ops.op import Vocabulary

FAMILIES = (linear, norms, elementwise, attention, shape, reductions, sets, frames, aten)


def _capture(ctx, d, tensors, kwargs):
    """A torch model's ops lifted into the model being checked (capture/ loads torch only now)."""
    from capture.lift import capture
    return capture(ctx, d, tensors, kwargs, VOCABULARY)


VOCABULARY = Vocabulary(FAMILIES, _capture)


def check(program, model: str | None = None, overrides: dict | None = None, prove: bool = True):
    """dsl's checker over invc's vocabulary: the checked model, its claims proved with `prove`."""
    return checker.check(program, VOCABULARY, model, overrides, prove)
