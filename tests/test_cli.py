"""The invc command line end to end, through subprocesses, as a user runs it."""
import argparse
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

import compiler
from compiler import cli

ROOT = Path(__file__).resolve().parent.parent
DEEPSETS = ROOT / "examples" / "deepsets.inv"


def invc(*args, cwd=None, env=None):
    return subprocess.run([sys.executable, "-m", "compiler.cli", *map(str, args)], capture_output=True,
                          text=True, cwd=cwd or ROOT, env=env)


@pytest.mark.parametrize("command", ["", "check", "compile", "run", "graph", "demo"])
def test_help(command):
    r = invc(*([command] if command else []), "--help")
    assert r.returncode == 0 and "usage: invc" in r.stdout


def test_check_prints_the_typed_interface():
    r = invc("check", DEEPSETS)
    assert r.returncode == 0, r.stderr
    assert "input  x: f32[B, N, 3]" in r.stdout and "output logits: f32[B, 10]" in r.stdout


@pytest.mark.parametrize("command", [["graph", "examples/nbody.inv"], ["check", "examples/mlp.inv"]])
def test_a_reader_that_is_gone_gets_no_traceback(command):
    # `invc graph spec | head -1`: the reader closes the pipe while invc still writes. Closing it before
    # invc starts makes that deterministic: a pipe buffer could otherwise swallow the whole output.
    read, write = os.pipe()
    os.close(read)
    try:
        r = subprocess.run([sys.executable, "-m", "compiler.cli", *command], cwd=ROOT, stdout=write,
                           stderr=subprocess.PIPE, text=True)
    finally:
        os.close(write)
    assert r.returncode == 141 and r.stderr == ""


@pytest.mark.parametrize("stdout", ["/dev/full", "closed"])
def test_standard_output_that_cannot_be_written_is_one_line(stdout):
    """A full disk loses the report, and a closed descriptor could become a file's: both exit 2."""
    command = [sys.executable, "-m", "compiler.cli", "check", "examples/mlp.inv"]
    if stdout == "closed":
        r = subprocess.run(command, cwd=ROOT, stderr=subprocess.PIPE, text=True, preexec_fn=lambda: os.close(1))
    else:
        with open(stdout, "w") as full:
            r = subprocess.run(command, cwd=ROOT, stdout=full, stderr=subprocess.PIPE, text=True)
    assert r.returncode == 2 and len(r.stderr.splitlines()) == 1 and r.stderr.startswith("invc: "), r.stderr
    assert ("No space left" if stdout == "/dev/full" else "standard output is closed") in r.stderr


def test_a_pipe_other_than_standard_output_breaking_is_an_error(monkeypatch):
    # Only a reader that left standard output ends quietly; any other broken pipe must still surface.
    def broken(args):
        raise BrokenPipeError("a worker's pipe")
    command_line = argparse.Namespace(parse_args=lambda argv: argparse.Namespace(run=broken))
    monkeypatch.setattr(cli, "parser", lambda: command_line)
    with pytest.raises(BrokenPipeError, match="a worker's pipe"):
        cli.main([])


def test_bad_spec_exits_2_with_location_and_no_traceback(tmp_path):
    bad = tmp_path / "bad.inv"
    bad.write_text("model m() {\n  input x: f32[B, 4]\n  y = layernrm(x)\n  output y\n}\n")
    for command in ("check", "compile", "graph"):
        r = invc(command, bad, cwd=tmp_path)
        assert r.returncode == 2
        assert r.stderr.startswith(f"{bad}:3:7: error: unknown op `layernrm`")  # where editors look
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
    np.testing.assert_allclose(got, want, atol=1e-5, equal_nan=False)


@pytest.mark.parametrize("target", ["onnx", "triton"])
def test_compile_to_missing_directory_fails_cleanly(tmp_path, target):
    r = invc("compile", DEEPSETS, "--target", target, "-o", tmp_path / "no" / "such" / "x.onnx")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert str(tmp_path / "no" / "such") in r.stderr
    assert not (tmp_path / "no").exists()
    if target == "onnx":
        r = invc("compile", DEEPSETS, "-o", tmp_path)
        assert r.returncode == 2 and "not a regular file" in r.stderr


def test_print_passes_and_dump_after(tmp_path):
    r = invc("compile", "--print-passes")
    assert r.returncode == 0
    from passes.cleanup import default_pipeline
    names = ["parse", "check", "prove", "lower", *default_pipeline().names(), "rows", "emit"]
    assert [line.split()[1] for line in r.stdout.splitlines()] == names
    dumps = [arg for name in names for arg in ("--dump-after", name)]
    r = invc("compile", DEEPSETS, "-o", tmp_path / "a.onnx", *dumps)
    assert r.returncode == 0, r.stderr
    assert [line[len("# after "):] for line in r.stdout.splitlines() if line.startswith("# after ")] == names
    for shown in ("models  deepsets", "logits#", "logits  invariant  invariant", "graph():", "graph deepsets ("):
        assert shown in r.stdout
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
    np.testing.assert_allclose(saved, ort.InferenceSession(str(model)).run(None, {"x": x})[0], equal_nan=False)

    np.save(tmp_path / "bad.npy", x[..., :2])
    for args, message in [
        (["--input", f"x={tmp_path / 'missing.npy'}"], "input file not found"),
        (["--input", f"y={tmp_path / 'x.npy'}"], "unknown input 'y'"),
        (["--input", f"x={tmp_path / 'bad.npy'}"], "dim 2 must be 3"),
        (["--random", "B=2"], "no size for dim 'N'"),
        (["--random", "=2"], "malformed --random"),
        (["--random", "B=99999999,N=99999999"], "does not fit in memory"),
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


def test_a_spec_is_utf8_whatever_the_locale(tmp_path):
    spec = tmp_path / "u.inv"
    spec.write_text("model m() {\n  input x: f32[B, 4]\n  h = relu(x)  # naïve ✓\n  output h\n}\n", encoding="utf-8")
    r = invc("check", spec, env={**os.environ, "LC_ALL": "C", "PYTHONUTF8": "0"})
    assert r.returncode == 0, r.stderr


def test_unreadable_specs_are_file_errors_without_a_traceback(tmp_path):
    (tmp_path / "bin.inv").write_bytes(b"model m() {\n  \xff\n}\n")
    (tmp_path / "folder.inv").mkdir()
    for spec, message in [("nope.inv", "nope.inv: error: spec file not found"),
                          ("folder.inv", "folder.inv: error: cannot read spec: Is a directory"),
                          ("bin.inv", "bin.inv:2:3: error: not a UTF-8 text file (byte 0xff)")]:
        r = invc("check", spec, cwd=tmp_path)
        assert r.returncode == 2 and r.stderr.startswith(message) and "Traceback" not in r.stderr, r.stderr


def test_run_refuses_files_that_are_not_onnx(tmp_path):
    model = tmp_path / "ds.onnx"
    compiler.compile(DEEPSETS, out=model)
    (tmp_path / "cut.onnx").write_bytes(model.read_bytes()[:5000])
    for path, message in [(tmp_path / "cut.onnx", "not a valid ONNX file"), (DEEPSETS, "not a valid ONNX file"),
                          (tmp_path, "is not a file")]:
        r = invc("run", path, "--random", "B=1,N=2")
        assert r.returncode == 2 and message in r.stderr and "Traceback" not in r.stderr, r.stderr


def test_outputs_get_the_mode_of_any_new_file(tmp_path):
    old = os.umask(0o027)
    try:
        compiler.compile(DEEPSETS, out=tmp_path / "ds.onnx")
        compiler.compile(DEEPSETS, "triton", tmp_path / "ds_triton")
    finally:
        os.umask(old)
    assert (tmp_path / "ds.onnx").stat().st_mode & 0o777 == 0o640
    assert (tmp_path / "ds_triton").stat().st_mode & 0o777 == 0o750


def test_triton_output_over_a_file_is_refused(tmp_path):
    spec = tmp_path / "spec.inv"
    spec.write_text(DEEPSETS.read_text())
    other = tmp_path / "notes.txt"  # not an input: test_nothing_lost has those
    other.write_text("not a directory")
    for out, message in [(other, "exists and is not a directory"), (other / "sub", "part of its path is a file")]:
        r = invc("compile", spec, "--target", "triton", "-o", out)
        assert r.returncode == 2 and message in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt", "spec.inv"]


def test_demo_takes_a_model_and_params_and_sizes_any_dim(tmp_path):
    spec = tmp_path / "two.inv"
    spec.write_text("model a() {\n  input x: f32[B, 4]\n  output x\n}\n"
                    "model b(width: int = 4) {\n  input x: f32[M, width]\n  h = linear(x, 3)\n  output h\n}\n")
    r = invc("demo", spec, "--model", "b", "-p", "width=6")
    assert r.returncode == 0, r.stderr
    assert "x[5, 6]" in r.stdout
    r = invc("demo", "--tol", "-1")
    assert r.returncode == 2 and "must be above 0" in r.stderr


def test_model_parameters_may_share_names_with_the_api(tmp_path):
    spec = tmp_path / "p.inv"
    spec.write_text("model m(seed: int = 2) {\n  input x: f32[B, 4]\n  h = linear(x, seed)\n  output h\n}\n")
    r = invc("check", spec, "-p", "seed=3")
    assert r.returncode == 0 and "output h: f32[B, 3]" in r.stdout, r.stderr
    r = invc("compile", spec, "-p", "seed=5", "-o", tmp_path / "p.onnx")
    assert r.returncode == 0, r.stderr
    assert ort.InferenceSession(str(tmp_path / "p.onnx")).get_outputs()[0].shape[-1] == 5
    r = invc("check", spec, "-p", "model=3")
    assert r.returncode == 2 and "Traceback" not in r.stderr and "model" in r.stderr, r.stderr


def test_malformed_flags_are_refused_before_slow_work(tmp_path):
    compiler.compile(DEEPSETS, out=tmp_path / "ds.onnx")
    r = invc("run", tmp_path / "ds.onnx", "--random", "B=²")
    assert r.returncode == 2 and "malformed --random" in r.stderr and "Traceback" not in r.stderr, r.stderr
    r = invc("verify", DEEPSETS, "--plot", tmp_path / "orbits.xyz")
    assert r.returncode == 2 and "matplotlib writes no .xyz" in r.stderr and r.stdout == "", r.stdout


def test_demo_fails_when_the_error_is_nan(tmp_path):
    """NaN is never a pass: both backends give NaN, so their difference is NaN, and demo fails."""
    spec = tmp_path / "nan.inv"
    spec.write_text("model m() {\n  input x: f32[B, N, 3]\n  y = x / (x - x)\n  output y\n}\n")
    r = invc("demo", spec)
    assert r.returncode == 1 and "max abs error  nan" in r.stdout, r.stdout + r.stderr
