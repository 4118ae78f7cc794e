"""The spec fuzzer's deep stage (compiler/fuzz_deep.py), CI-sized: drawn models compiled to ONNX and
run in torch and onnxruntime on valid, empty and out-of-range inputs. benchmarks/fuzz_deep.py runs
10,000 and more. The stage is shown to catch each kind of failure it promises to, by planting one."""
import dataclasses
import functools
import random
from collections import Counter

import pytest

from compiler import fuzz_deep
from compiler.fuzz_deep import DeepCase, IndexUse, Tensor

SPECS = 40  # about 4 s of CPU


@functools.cache
def batch() -> tuple:
    results = [fuzz_deep.run(fuzz_deep.draw(random.Random(seed)), seed) for seed in range(20261207, 20261207 + SPECS)]
    return tuple(results)


def failures(results, wanted) -> list:
    return [(fuzz_deep.issue_class(r), fuzz_deep.signature(r), r.text) for r in results
            if r.failed and wanted(fuzz_deep.issue_class(r))]


def test_the_batch_reaches_every_stage():
    """A net that stops early catches nothing: the batch compiles and runs most specs, on all three
    kinds of input, and the checker refuses some (a static 0, a mask over the wrong dims)."""
    results = batch()
    statuses = Counter(r.status for r in results)
    stages = Counter(kind for r in results for kind in r.inputs)
    assert statuses["refused"] >= 1 and statuses["refused"] < SPECS // 3, statuses
    assert stages["valid"] > SPECS // 3 and stages["empty"] > SPECS // 4 and stages["out of range"] > 0, stages
    drawn = "\n".join(r.text for r in results)
    for op in ("gather(", "scatter_pool(", "segment_pool(", "frame_average(", "embedding(", "flatten(", "pool("):
        assert op in drawn, op
    for dtype in ("f16[", "f32[", "f64[", "i32[", "i64[", "bool["):
        assert dtype in drawn, dtype


def test_no_failure_at_all():
    found = failures(batch(), lambda c: True)
    assert not found, found[:3]


# -- planted faults: each kind of failure is caught ------------------------------------------------
def small_case() -> DeepCase:
    """tanh of a cloud's features, gathered by ids named neither ids nor index."""
    x, sel = Tensor("feat", ("N", 3), "f32"), Tensor("picks", ("E",), "i64")
    return DeepCase(inputs=[x, sel], lines=["  t1 = tanh(feat)", "  t2 = gather(t1, picks, axis=0)"],
                    scope=[x], index={"picks": [IndexUse("N")]})


def test_the_small_case_passes_unplanted():
    result = fuzz_deep.run(small_case(), 3)
    assert result.status == "ok" and result.inputs == ("valid", "empty", "out of range"), result


def plant_emitter(monkeypatch, emit):
    """Replace tanh's ONNX emitter."""
    from ops.elementwise import tanh
    from ops.registry import VOCABULARY
    monkeypatch.setitem(VOCABULARY.by_target, tanh, dataclasses.replace(VOCABULARY.by_target[tanh], onnx=emit))


@pytest.mark.parametrize("plant, status, says", [
    ("sigmoid", "disagree", "relative error"),
    ("log", "disagree", "NaN in one runtime only"),      # NaN where torch has a number
    ("int", "invalid file", "onnx.checker"),
    ("unchecked", "ran invalid", "ran without a refusal"),
])
def test_each_kind_of_failure_is_caught(monkeypatch, plant, status, says):
    from onnx import TensorProto

    from ops.elementwise import onnx_unary
    from runtime.session import Session
    if plant == "sigmoid":
        plant_emitter(monkeypatch, onnx_unary("Sigmoid"))
    elif plant == "log":
        plant_emitter(monkeypatch, onnx_unary("Log"))
    elif plant == "int":
        plant_emitter(monkeypatch, lambda g, node, x: g.op("Tanh", g.op("Cast", g.value(x), to=TensorProto.INT64)))
    else:  # a Session that checks nothing: ids -1 read the last row silently
        monkeypatch.setattr(Session, "check", lambda self, feeds: None)
        monkeypatch.setattr(random.Random, "choice", lambda self, seq: seq[0])  # the id -1
    results = [fuzz_deep.run(small_case(), seed) for seed in range(3)]
    assert all(r.status == status and says in r.detail for r in results), results


def test_a_failure_shrinks_to_the_statement_that_fails(monkeypatch):
    from ops.elementwise import onnx_unary
    plant_emitter(monkeypatch, onnx_unary("Sigmoid"))
    case = small_case()
    case.lines.append("  t3 = relu(feat)")
    shrunk = fuzz_deep.shrink(case, fuzz_deep.run(case, 0), 0)
    assert shrunk.status == "disagree" and "picks" not in shrunk.text and "relu" not in shrunk.text, shrunk.text
    assert "t1 = tanh(feat)" in shrunk.text
