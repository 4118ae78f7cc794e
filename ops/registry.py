"""The registry: every op family, joined explicitly. The checker and prover receive its vocabulary
here; lowering and the backends find each graph op's forms in it."""
from __future__ import annotations

from dsl import checker
from ops import attention, elementwise, frames, linear, norms, reductions, sets, shape
from ops.op import Vocabulary

FAMILIES = (linear, norms, elementwise, attention, shape, reductions, sets, frames)
VOCABULARY = Vocabulary(FAMILIES)


def check(program, model: str | None = None, overrides: dict | None = None, prove: bool = True):
    """dsl's checker over invc's vocabulary: the checked model, its claims proved with `prove`."""
    return checker.check(program, VOCABULARY, model, overrides, prove)
