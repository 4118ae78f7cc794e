"""The invc command line end to end, through subprocesses, as a user runs it."""
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

import compiler

ROOT = Path(__file__).resolve().parent.parent
DEEPSETS = ROOT / "examples" / "deepsets.inv"


def invc(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "compiler.cli", *map(str, args)], capture_output=True,
                          text=True, cwd=cwd or ROOT)


@pytest.mark.parametrize("command", ["", "check", "compile", "run", "graph", "demo"])
def test_help(command):
    r = invc(*([command] if command else []), "--help")
    assert r.returncode == 0 and "usage: invc" in r.stdout


def test_check_prints_the_typed_interface():
    r = invc("check", DEEPSETS)
    assert r.returncode == 0, r.stderr
    assert "input  x: f32[B, N, 3]" in r.stdout and "output logits: f32[B, 10]" in r.stdout


def test_bad_spec_exits_2_with_location_and_no_traceback(tmp_path):
    bad = tmp_path / "bad.inv"
    bad.write_text("model m() {\n  input x: f32[B, 4]\n  y = layernrm(x)\n  output y\n}\n")
    for command in ("check", "compile", "graph"):
        r = invc(command, bad, cwd=tmp_path)
        assert r.returncode == 2
        assert f"{bad}:3:7: error: unknown op `layernrm`" in r.stderr
        assert "did you mean `layernorm`?" in r.stderr and "Traceback" not in r.stderr
    assert list(tmp_path.iterdir()) == [bad]  # nothing written


def test_compile_writes_onnx_that_matches_the_torch_module(tmp_path):
    out = tmp_path / "ds.onnx"
    r = invc("compile", DEEPSETS, "-o", out, "-p", "hidden=32")
    assert r.returncode == 0, r.stderr
    x = np.random.default_rng(0).standard_normal((4, 9, 3)).astype(np.float32)
    got = ort.InferenceSession(str(out)).run(None, {"x": x})[0]
    import torch
    want = compiler.build(DEEPSETS, hidden=32)(torch.from_numpy(x)).detach().numpy()
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_compile_to_missing_directory_fails_cleanly(tmp_path):
    r = invc("compile", DEEPSETS, "-o", tmp_path / "no" / "such" / "x.onnx")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert str(tmp_path / "no" / "such") in r.stderr
    assert not (tmp_path / "no").exists()
    r = invc("compile", DEEPSETS, "-o", tmp_path)
    assert r.returncode == 2 and "not a regular file" in r.stderr


def test_print_passes_and_dump_after(tmp_path):
    r = invc("compile", "--print-passes")
    assert r.returncode == 0
    from passes.cleanup import default_pipeline
    assert all(name in r.stdout for name in default_pipeline().names())
    r = invc("compile", DEEPSETS, "-o", tmp_path / "a.onnx", "--dump-after", "fold_linear")
    assert r.returncode == 0 and "# graph after fold_linear" in r.stdout and "graph():" in r.stdout
    r = invc("compile", DEEPSETS, "-o", tmp_path / "b.onnx", "--dump-after", "nope")
    assert r.returncode == 2 and "names no pass" in r.stderr


def test_run_with_inputs_and_its_errors(tmp_path):
    model = tmp_path / "ds.onnx"
    compiler.compile(DEEPSETS, out=model)
    x = np.random.default_rng(1).standard_normal((2, 5, 3)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    r = invc("run", model, "--input", f"x={tmp_path / 'x.npy'}", "-o", tmp_path / "out.npz")
    assert r.returncode == 0, r.stderr
    assert "ran on CPUExecutionProvider" in r.stdout and "logits: float32 [2, 10]" in r.stdout
    saved = np.load(tmp_path / "out.npz")["logits"]
    np.testing.assert_allclose(saved, ort.InferenceSession(str(model)).run(None, {"x": x})[0])

    np.save(tmp_path / "bad.npy", x[..., :2])
    for args, message in [
        (["--input", f"x={tmp_path / 'missing.npy'}"], "input file not found"),
        (["--input", f"y={tmp_path / 'x.npy'}"], "unknown input 'y'"),
        (["--input", f"x={tmp_path / 'bad.npy'}"], "dim 2 must be 3"),
        (["--random", "B=2"], "needs a size for dim 'N'"),
    ]:
        r = invc("run", model, *args)
        assert r.returncode == 2 and message in r.stderr and "Traceback" not in r.stderr, r.stderr
    r = invc("run", tmp_path / "none.onnx", "--random", "B=1,N=1")
    assert r.returncode == 2 and "model file not found" in r.stderr


def test_graph_prints_nodes_and_counts():
    r = invc("graph", DEEPSETS)
    assert r.returncode == 0
    assert "%pooled : " in r.stdout and "parameters" in r.stdout.splitlines()[-1]


def test_demo_compiles_runs_and_compares():
    r = invc("demo")
    assert r.returncode == 0, r.stderr
    error = float(next(l for l in r.stdout.splitlines() if l.startswith("max abs error")).split()[3])
    assert error <= 1e-5


def test_bad_param_is_a_clean_error():
    r = invc("check", DEEPSETS, "-p", "hidden")
    assert r.returncode == 2 and "malformed --param" in r.stderr
    r = invc("check", DEEPSETS, "-p", "hiden=3")
    assert r.returncode == 2 and "did you mean `hidden`?" in r.stderr
