"""The cleanup passes of the compile pipeline, in the order they run.

cse first, so fold_linear counts the users a value really has and fold_constants never
materializes one constant twice (two buffers with equal contents that cse could no longer merge);
fold_linear then leaves matmuls of parameters that fold_constants turns into buffers; dce last
removes what the others orphaned, parameters included. Later passes slot into this list.
Checks run after them, on the graph that will be emitted. A target's lowering passes run last:
they reshape the graph for one backend in ways the checks need not follow.
"""
from __future__ import annotations

from passes.base import Pass, Pipeline
from passes.cse import cse
from passes.dce import dce
from passes.fold_constants import fold_constants
from passes.fold_linear import fold_linear
from passes.rows import rows
from passes.symmetry import symmetry

CLEANUP: list[Pass] = [cse, fold_linear, fold_constants, dce]
CHECKS: list[Pass] = [symmetry]
ONNX_LOWERING: list[Pass] = [rows]


def default_pipeline() -> Pipeline:
    return Pipeline(CLEANUP + CHECKS)


def for_target(pipeline: Pipeline, target: str) -> Pipeline:
    """`pipeline` followed by the lowering passes of `target`."""
    return Pipeline(pipeline.passes + (ONNX_LOWERING if target == "onnx" else []))
