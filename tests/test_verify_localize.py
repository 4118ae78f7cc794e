"""`invc verify` names the first op that breaks a failing claim (compiler/localize.py): in specs and
in captured torch models, for a break, a misused value and an output that transforms the wrong
way; and a CI-sized draw of the injected bugs of benchmarks/verify_localize.py."""
import importlib.util
import sys
from pathlib import Path

import pytest

from compiler.verify import verify

ROOT = Path(__file__).resolve().parent.parent
spec = importlib.util.spec_from_file_location("verify_localize", ROOT / "benchmarks" / "verify_localize.py")
bench = sys.modules["verify_localize"] = importlib.util.module_from_spec(spec)  # its dataclasses look it up
spec.loader.exec_module(bench)


def only_break(report):
    assert not report.ok and len(report.breaks) == 1, report
    return report.breaks[0]


def test_a_coordinate_term_is_named_at_its_line_with_the_source(tmp_path):
    path = tmp_path / "m.inv"
    path.write_text("model m() {\n  symmetry E(3), S(N)\n  input pos: f32[B, N, 3] is position\n"
                    "  c = pos - mean(pos, axis=N, keepdim=true)\n"
                    "  d = c + sum(c, axis=-1, keepdim=true)\n"
                    "  y = sum(d * d, axis=-1)\n  output y is invariant\n}\n")
    b = only_break(verify(path, trials=2))
    assert (b.line, b.op) == (5, "reduce_sum") and "fits no action of E(3)" in b.departs
    text = str(b)
    assert text.startswith(f"first breaking op: {path}:5 (reduce_sum): its output f32[2, 9, 1] fits no action of E(3)")
    assert "5 |   d = c + sum(c, axis=-1, keepdim=true)" in text and "c (rotated like a vector on axis 2)" in text


def test_coordinate_products_never_summed_over_the_coordinates_start_the_break(tmp_path):
    """v * v fits no action until a sum over the coordinates makes it invariant: a sum over the
    set axis instead leaves it broken, and the report says which sum was missing."""
    path = tmp_path / "m.inv"
    path.write_text("model m() {\n  symmetry E(3)\n  input pos: f32[B, N, 3] is position\n"
                    "  c = pos - mean(pos, axis=N, keepdim=true)\n"
                    "  y = linear(sum(c * c, axis=N), 4)\n  output y is invariant\n}\n")
    b = only_break(verify(path, trials=2))
    assert (b.line, b.op) == (5, "mul")
    assert "it is invariant once summed along axis 2, a sum that no later op takes" in b.departs


def test_a_dropped_centering_is_named_where_the_position_is_misused(tmp_path):
    path = tmp_path / "m.inv"
    path.write_text("model m() {\n  symmetry E(3)\n  input pos: f32[B, N, 3] is position\n"
                    "  c = pos\n"
                    "  y = c * sum(c * c, axis=-1, keepdim=true)\n  output y is vector\n}\n")
    b = only_break(verify(path, trials=2))
    assert b.line == 5 and "pos (moved like a position on axis 2)" in b.reads


def test_an_output_that_transforms_the_wrong_way_is_broken_by_the_op_that_makes_it(tmp_path):
    path = tmp_path / "m.inv"
    path.write_text("model m() {\n  symmetry E(3)\n  input pos: f32[B, N, 3] is position\n"
                    "  y = mean(pos, axis=N)\n  output y is vector\n}\n")
    b = only_break(verify(path, trials=2))
    assert (b.line, b.op) == (4, "reduce_mean")
    assert b.departs == "its output is moved like a position on axis 1, claimed rotated like a vector on axis 1"


def test_a_captured_model_is_named_at_its_python_line_and_module():
    pytest.importorskip("torch_geometric")
    report = verify(ROOT / "benchmarks" / "localize_models" / "graph.inv", model="bad", trials=2)
    b = only_break(report)
    assert (Path(b.file).name, b.line, b.op) == ("gnns.py", 28, "aten.select.int in broken (Broken)")
    assert "return h[0] + h.sum(0)" in str(b) and "(permuted on axis 0)" in b.reads


@pytest.mark.parametrize("bug", [
    "egnn.inv:23 nonlinearity", "egnn_sparse.inv:24 no centering", "egnn.inv:27 mlp over coords",
    "geometric.py:82 fixed element, axis 1", "pc.py:31 no centering", "pc.py:50 coordinate term",
    "geometric.py:47 offset", "geometric.py:71 position leak", "gnns.py:10 fixed element:",
])
def test_injected_bugs_are_named_at_the_injected_line(tmp_path, bug):
    """A CI-sized draw of benchmarks/verify_localize.py (whose full run is in BENCHMARKS.md)."""
    if ".py:" in bug:
        pytest.importorskip("torch_geometric")
    (drawn,) = [b for s, m, f in bench.MODELS for b in bench.bugs(s, m, f) if str(b).startswith(bug)]
    outcome = bench.run(drawn, tmp_path / "models")
    assert outcome.status == "found", outcome
