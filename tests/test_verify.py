"""The numeric verifier: group samplers, the assert_equivariant helper in fp32 and fp64, the
verify() API on torch and ONNX, and `invc verify` end to end."""
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import compiler
from compiler.cli import main
from compiler.verify import TOLERANCE, assert_equivariant, elements, random_rotation, random_translation, verify
from dsl.groups import Euclidean, Invariant, Permutations, Permuted

ROOT = Path(__file__).resolve().parent.parent
DEEPSETS, BROKEN = ROOT / "examples" / "deepsets.inv", ROOT / "examples" / "broken_symmetry.inv"


@pytest.fixture(params=[torch.float32, torch.float64], ids=["fp32", "fp64"])
def dtype(request):
    return request.param


def test_rotations_are_haar_orthogonal_and_reflections_flip_the_determinant():
    gen = torch.Generator().manual_seed(0)
    rotations = torch.stack([random_rotation(gen) for _ in range(400)])
    eye = torch.eye(3, dtype=torch.float64).expand(400, 3, 3)
    assert torch.allclose(rotations @ rotations.transpose(1, 2), eye, atol=1e-12)
    assert torch.allclose(torch.linalg.det(rotations), torch.ones(400, dtype=torch.float64))
    assert rotations.mean(0).abs().max() < 0.15  # Haar measure: no preferred direction
    assert torch.linalg.det(random_rotation(gen, reflect=True)) == pytest.approx(-1.0)
    assert random_translation(gen).norm() == pytest.approx(10.0)


def test_elements_cover_each_group():
    gen = torch.Generator().manual_seed(0)
    perms = elements(Permutations("N"), {"N": 6}, 2, gen)
    assert all(sorted(g.perm.tolist()) == list(range(6)) for g in perms)
    e3 = elements(Euclidean("E"), {}, 2, gen)
    assert [g.label for g in e3] == ["rotation+translation", "reflection+translation"]
    assert [g.label for g in elements(Euclidean("SO"), {}, 2, gen)] == ["rotation", "rotation"]
    assert elements(Euclidean("T"), {}, 1, gen)[0].rotation.equal(torch.eye(3, dtype=torch.float64))


def test_helper_passes_equivariant_functions(dtype):
    x = torch.randn(2, 7, 3, dtype=dtype)
    assert_equivariant(lambda v: v * (v * v).sum(-1, keepdim=True), [x], Euclidean("O"), ["vector"], ["vector"])
    assert_equivariant(lambda v: v.sum(1), [x], Permutations("N"), [Permuted((1,))], [Invariant()])
    rows = assert_equivariant(lambda p: p.mean(1), [x], Euclidean("E"), ["position"], ["position"])
    assert rows[0].tol == TOLERANCE[dtype] and rows[0].error < TOLERANCE[dtype]


def test_helper_catches_functions_that_break_the_symmetry(dtype):
    x = torch.randn(2, 7, 3, dtype=dtype)
    w = torch.randn(3, 3, dtype=dtype)
    with pytest.raises(AssertionError, match="not equivariant: output 0 under O\\(3\\)"):
        assert_equivariant(lambda v: v @ w, [x], Euclidean("O"), ["vector"], ["vector"])
    with pytest.raises(AssertionError, match="under S\\(N\\)"):
        assert_equivariant(lambda v: v.cumsum(1)[:, -2], [x], Permutations("N"), [Permuted((1,))], [Invariant()])
    with pytest.raises(AssertionError, match="under T\\(3\\)"):
        assert_equivariant(lambda p: p.sum(1), [x], Euclidean("T"), ["position"], ["position"])


def test_verify_measures_torch_and_onnx_in_both_precisions():
    report = verify(DEEPSETS, trials=2, hidden=16)
    assert report.ok and report.static == "proved"
    assert {(m.backend, m.group) for m in report.rows} == {
        ("torch fp32", "S(N)"), ("torch fp64", "S(N)"), ("torch fp64, random weights", "S(N)"), ("onnx fp32", "S(N)")}
    assert all(m.error < 1e-5 for m in report.rows if "fp64" not in m.backend)
    assert all(m.error < 1e-12 for m in report.rows if "fp64" in m.backend)


def test_verify_measures_what_the_static_check_refused():
    report = verify(BROKEN, trials=2)
    assert not report.ok
    assert report.static.startswith("refused: mlp over the 3 coordinates breaks E(3) invariance")
    # The spec declares `symmetry S(N), E(3)`: both measured on every backend, so the all()s below see rows.
    assert {(m.backend, m.group) for m in report.rows} == {
        (backend, group) for backend in ("torch fp32", "torch fp64", "torch fp64, random weights", "onnx fp32")
        for group in ("S(N)", "E(3)")}
    assert all(m.ok for m in report.rows if m.group == "S(N)")
    assert all(m.error > 1e-2 for m in report.rows if m.group == "E(3)")


def invc(*args):
    return subprocess.run([sys.executable, "-m", "compiler.cli", *map(str, args)], capture_output=True, text=True,
                          cwd=ROOT)


def test_cli_verify_passes_a_proved_spec_on_its_onnx_file_and_plots(tmp_path):
    onnx_file, png = tmp_path / "ds.onnx", tmp_path / "orbits.png"
    compiler.compile(DEEPSETS, out=onnx_file, hidden=16)
    r = invc("verify", DEEPSETS, "--onnx", onnx_file, "-p", "hidden=16", "--trials", "2", "--plot", png)
    assert r.returncode == 0, r.stderr
    assert "static: proved" in r.stdout and "onnx fp32" in r.stdout and "FAILED" not in r.stdout
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_verify_exits_1_when_a_claim_fails_and_2_without_symmetry(capsys):
    r = invc("verify", BROKEN, "--trials", "2")
    assert r.returncode == 1, r.stderr
    assert "FAILED" in r.stdout and "symmetry not kept: logits under E(3)" in r.stderr
    assert main(["verify", str(ROOT / "examples" / "mlp.inv")]) == 2
    assert "declares no symmetry" in capsys.readouterr().err


def test_cli_verify_refuses_bad_arguments_and_another_models_onnx_file(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["verify", str(DEEPSETS), "--trials", "0"])
    assert e.value.code == 2
    assert "argument --trials: must be above 0, got 0" in capsys.readouterr().err
    other = tmp_path / "mlp.onnx"
    compiler.compile(ROOT / "examples" / "mlp.inv", out=other)
    assert main(["verify", str(DEEPSETS), "--onnx", str(other)]) == 2
    assert "is not model deepsets's" in capsys.readouterr().err
    assert main(["verify", str(DEEPSETS), "-p", "hidden=8", "--trials", "1", "--plot", str(tmp_path / "x.txt")]) == 2
    assert "matplotlib writes no .txt files" in capsys.readouterr().err
    under_a_file = other / "orbits.png"
    assert main(["verify", str(DEEPSETS), "-p", "hidden=8", "--trials", "1", "--plot", str(under_a_file)]) == 2
    assert "cannot write plot" in capsys.readouterr().err


def test_a_nan_error_is_the_worst_and_fails():
    """Python's max keeps a NaN only when it comes first; the verifier's must keep it anywhere."""
    from compiler.verify import Measurement, worst
    assert worst([0.1, float("nan"), 0.2]) != worst([0.1, float("nan"), 0.2])  # NaN
    assert worst([0.1, 0.3, 0.2]) == 0.3 and worst([]) == 0.0
    assert not Measurement("y", "S(N)", "invariant", "torch", float("nan"), 1e-4).ok


def test_verify_fails_a_spec_whose_outputs_are_nan(tmp_path):
    spec = tmp_path / "nan.inv"
    spec.write_text("model m() {\n  symmetry S(N)\n  input x: f32[B, N, 3]\n  y = sum(x / (x - x), axis=N)\n"
                    "  output y is invariant\n}\n")
    r = invc("verify", spec)
    assert r.returncode == 1 and "FAILED" in r.stdout and "nan" in r.stdout, r.stdout + r.stderr


def test_verify_samples_valid_offsets_ids_and_an_empty_set():
    """Ragged inputs get CSR offsets (0 first, the row count last, never decreasing, one set empty),
    segment ids below the set count, and masks whose first set is all padding."""
    from compiler.verify import SIZES, sample_inputs
    from ops.registry import check
    from dsl.program import load_text
    m = check(load_text("model m() {\n  symmetry S(R)\n  input x: f32[R, 4]\n  input o: i64[K]\n"
                        "  input ids: i64[R]\n  input sets: f32[S, 1]\n  input mask: bool[B, N]\n"
                        "  a = segment_pool(x, o)\n  b = scatter_pool(x, ids, like=sets)\n  output a\n  output b\n}\n",
                        "r.inv"))
    x, offsets, ids, sets, mask = sample_inputs(m, {**SIZES, "K": 6, "R": 9, "S": 4})
    assert offsets[0] == 0 and offsets[-1] == x.shape[0] and bool((offsets[1:] >= offsets[:-1]).all())
    assert bool((offsets[1:] == offsets[:-1]).any())  # an empty set
    assert int(ids.min()) >= 0 and int(ids.max()) < sets.shape[0] - 1
    assert not mask[0].any() and mask[1:].sum(-1).min() >= 3


def test_verify_measures_a_segment_pool_spec(tmp_path):
    """Random 0/1 offsets were no CSR, so verify refused every segment_pool spec with exit 2."""
    spec = tmp_path / "ragged.inv"
    spec.write_text("model m() {\n  symmetry E(3)\n  input p: f32[R, 3] is position\n  input o: i64[K]\n"
                    "  y = segment_pool(p - mean(p, axis=0, keepdim=true), o, kind=\"mean\")\n  output y is vector\n}\n")
    r = invc("verify", spec)
    assert r.returncode == 0 and "FAILED" not in r.stdout and r.stdout.count(" ok") == 4, r.stdout + r.stderr


def test_verify_relabels_node_ids_with_the_nodes(tmp_path):
    """S(N) moves the nodes and relabels ids `is index(N)`: the edge-list EGNN's claims hold on every
    backend; with plain ids the same permutation leaves the edges pointing at other nodes."""
    spec = ROOT / "examples" / "egnn_sparse.inv"
    report = verify(spec, trials=2, hidden=8)
    assert report.ok and report.static == "proved" and {m.group for m in report.rows} == {"E(3)", "S(N)"}
    plain = tmp_path / "plain.inv"
    plain.write_text(spec.read_text().replace("i64[E] is index(N)", "i64[E]"))
    report = verify(plain, trials=2, hidden=8)
    assert report.static.startswith("refused: gather of a tensor permuted along N by indices that S(N) does not")
    assert all(m.error > 1e-2 for m in report.rows if m.group == "S(N)")
    assert all(m.ok for m in report.rows if m.group == "E(3)")


def test_errors_are_measured_on_finite_entries_and_nan_must_stand_where_the_group_puts_it():
    from compiler.measure import relative_error
    nan, inf = float("nan"), float("inf")
    want = torch.tensor([1.0, nan, inf, 2.0])
    assert relative_error(want, want.clone()) == 0.0
    assert relative_error(want, torch.tensor([1.0, nan, inf, 2.5])) == 0.25  # over the largest finite entry
    for moved in ([1.0, 1.0, inf, 2.0], [nan, 1.0, inf, 2.0], [1.0, nan, -inf, 2.0], [1.0, nan, 5.0, 2.0]):
        assert relative_error(want, torch.tensor(moved)) == inf, moved
    assert math.isnan(relative_error(torch.tensor([nan, inf]), torch.tensor([nan, inf])))  # nothing to measure


def test_verify_measures_an_output_infinite_in_places_and_says_so(tmp_path):
    """x / relu(x) is 1, -inf or NaN element by element: the places move with the set, so S(N) holds."""
    spec = tmp_path / "inf.inv"
    spec.write_text("model m() {\n  symmetry S(N)\n  input x: f32[B, N, 3]\n  y = x / relu(x)\n  output y is scalar\n}\n")
    report = verify(spec, trials=2)
    assert report.ok, str(report)
    assert any("y is NaN or infinite at" in n for n in report.notes), report.notes
