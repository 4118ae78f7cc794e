"""`invc verify` names the first op that breaks a failing claim (compiler/localize.py): in specs and
in captured torch models (kept ATen ops too), for a break, a misused value and an output that
transforms the wrong way; and a CI-sized draw of the injected bugs of benchmarks/verify_localize.py."""
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


READOUT = """import torch


class Readout(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(5, 16)

    def forward(self, x):
        h = self.lin(x)
        return {readout}
"""


def captured(tmp_path, name: str, readout: str):
    """A spec capturing a module whose forward returns `readout` of h = linear(x), x: [N, 5]."""
    (tmp_path / f"readout_{name}.py").write_text(READOUT.format(readout=readout))
    spec = tmp_path / f"{name}.inv"
    spec.write_text(f'def readout = torch("readout_{name}:Readout")\nmodel m() {{\n  symmetry S(N)\n'
                    "  input x: f32[N, 5]\n  y = readout(x)\n  output y is invariant\n}\n")
    return spec


def test_a_captured_model_is_named_at_its_python_line_and_module(tmp_path):
    b = only_break(verify(captured(tmp_path, "first", "h[0] + h.sum(0)"), trials=2))
    assert (Path(b.file).name, b.line, b.op) == ("readout_first.py", 11, "aten.select.int in readout (Readout)")
    assert "11 |         return h[0] + h.sum(0)" in str(b) and "(permuted on axis 0)" in b.reads


def test_a_kept_aten_op_is_measured_in_torch_and_named(tmp_path):
    """cumsum has no lift: its ATen op runs in torch but has no ONNX form, so verify measures torch
    alone, says why, and names the op."""
    report = verify(captured(tmp_path, "cumsum", "h.cumsum(0).sum(0)"), trials=2)
    assert {m.backend for m in report.rows} == {"torch fp32", "torch fp64", "torch fp64, random weights"}
    assert any(n.startswith("onnx not measured: `aten.cumsum.default`") for n in report.notes)
    b = only_break(report)
    assert (b.line, b.op) == (11, "aten.cumsum.default in readout (Readout)")


@pytest.mark.parametrize("bug", [
    "egnn.inv:23 nonlinearity", "egnn_sparse.inv:24 no centering", "egnn.inv:27 mlp over coords",
    "torch_models.py:81 no centering", "torch_models.py:111 position table, last axis", "torch_models.py:35 fixed element:",
    "geometric.py:47 offset", "geometric.py:71 position leak", "geometric.py:82 fixed element, axis 1",
])
def test_injected_bugs_are_named_at_the_injected_line(tmp_path, bug):
    """A CI-sized draw of benchmarks/verify_localize.py (whose full run is in BENCHMARKS.md)."""
    if bug.startswith("torch_models.py"):
        pytest.importorskip("torch_geometric")  # tests/torch_models.py imports it
    (drawn,) = [b for s, m, f in bench.MODELS for b in bench.bugs(s, m, f) if str(b).startswith(bug)]
    outcome = bench.run(drawn, tmp_path / "models")
    assert outcome.status == "found", outcome


def test_a_claim_failing_in_float32_only_is_not_traced():
    from compiler.verify import Measurement, _float32_only
    rows = [Measurement("y", "E(3)", "invariant", "torch fp32", 2e-4, 1e-4),
            Measurement("y", "E(3)", "invariant", "torch fp64", 1e-13, 1e-9)]
    assert _float32_only(rows, "E(3)") == [
        "y under E(3) fails in float32 only: float64 keeps it, so rounding (or a backend) is to blame, "
        "not an op that breaks the symmetry"]
    assert _float32_only(rows + [Measurement("y", "E(3)", "invariant", "torch fp64, random weights", 1.0, 1e-9)],
                         "E(3)") == []
