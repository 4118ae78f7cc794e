"""Every shipped example compiles to a valid ONNX file that matches its torch module at new sizes."""
from pathlib import Path

import onnx
import pytest

import compiler
from compiler.verify import compare_with_torch

EXAMPLES = sorted(Path(__file__).resolve().parent.parent.joinpath("examples").glob("*.inv"))
REFUSED = {"broken_symmetry.inv"}  # shipped to show a refusal; tests/test_symmetry.py covers it


@pytest.mark.parametrize("spec", [e for e in EXAMPLES if e.name not in REFUSED], ids=lambda p: p.stem)
def test_example_onnx_matches_torch_at_new_sizes(spec, tmp_path):
    out = tmp_path / f"{spec.stem}.onnx"
    result = compiler.compile(spec, out=out)
    model = onnx.load(out)
    onnx.checker.check_model(model, full_check=True)
    assert model.opset_import[0].version >= 18
    meta = {p.key: p.value for p in model.metadata_props}
    assert meta["invc.source_sha256"] == compiler.check(spec).source_hash
    assert [i.name for i in model.graph.input] == [p.name for p in compiler.check(spec).inputs]
    for dims in ({"B": 3, "N": 7, "E": 40, "S": 6}, {"B": 1, "N": 2, "E": 9, "S": 2}):
        agreement = compare_with_torch(spec, out, dims)
        assert agreement.max_error <= 1e-5, (dims, agreement)
    assert result.seconds["total"] > 0
