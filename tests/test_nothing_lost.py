"""Nothing lost: an output never replaces an input, and an interrupted or killed write leaves no
temporary file behind for long."""
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

import compiler
from compiler.cli import main
from common.errors import InvcError
from common.files import atomic_file

ROOT = Path(__file__).resolve().parent.parent
SPEC = 'import "lib.inv"\nmodel m() {\n  input x: f32[B, 4]\n  y = blk(x)\n  output y\n}\n'


@pytest.fixture
def spec(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "lib.inv").write_text("def blk(x) { return relu(linear(x, 4)) }\n")
    (tmp_path / "my.inv").write_text(SPEC)
    return tmp_path / "my.inv"


@pytest.mark.parametrize("target", ["onnx", "triton"])
@pytest.mark.parametrize("out", ["my.inv", "lib.inv", "./sub/../lib.inv"])
def test_compile_never_writes_over_the_spec_or_its_imports(spec, capsys, out, target):
    (spec.parent / "sub").mkdir()
    before = {p.name: p.read_bytes() for p in spec.parent.glob("*.inv")}
    assert main(["compile", str(spec), "-o", out, "--target", target]) == 2
    assert "is an input of this command" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in spec.parent.glob("*.inv")} == before
    with pytest.raises(InvcError, match="is an input"):
        compiler.compile(spec, out=spec.parent / out)


def test_a_hard_link_to_the_spec_is_the_spec(spec, capsys):
    os.link(spec, spec.parent / "alias.onnx")
    assert main(["compile", str(spec), "-o", "alias.onnx"]) == 2 and spec.read_text() == SPEC


def test_run_never_writes_outputs_over_its_model_or_inputs(spec, capsys):
    assert main(["compile", str(spec), "-o", "my.onnx"]) == 0
    model = (spec.parent / "my.onnx").read_bytes()
    assert main(["run", "my.onnx", "--random", "B=2", "-o", "my.onnx"]) == 2
    assert (spec.parent / "my.onnx").read_bytes() == model


def test_slice_and_export_never_write_into_their_model_directory(tmp_path, capsys):
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    (model / "model.safetensors").write_bytes(b"weights")
    (tmp_path / "c.txt").write_text("calibration")
    for out in (model, model / "sliced", tmp_path):
        assert main(["slice", str(model), "--calib", str(tmp_path / "c.txt"), "-o", str(out)]) == 2
        assert "overlaps the input model directory" in capsys.readouterr().err
    for out in (model / "config.json", model / "model.safetensors"):
        assert main(["export", str(model), "-o", str(out)]) == 2
        assert "is an input" in capsys.readouterr().err
    assert (model / "model.safetensors").read_bytes() == b"weights"


# A compile whose ONNX write stops halfway, until a signal comes.
SLOW_WRITE = textwrap.dedent("""
    import sys, time, contextlib, signal
    # As at a terminal: a shell's background job (CI's, say) starts with SIGINT ignored, and so
    # would this child, which then could never see the Ctrl-C the test sends.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    import compiler.onnx_backend as backend
    from common.files import atomic_file
    @contextlib.contextmanager
    def slow(path, what):
        with atomic_file(path, what) as f:
            f.write(b"half")
            f.flush()
            print("writing", flush=True)
            time.sleep(60)
            yield f
    backend.atomic_file = slow
    from compiler.cli import main
    sys.exit(main(sys.argv[1:]))
""")


@pytest.mark.parametrize("sig, code", [(signal.SIGTERM, 128 + signal.SIGTERM), (signal.SIGINT, 130)])
def test_a_signal_mid_write_leaves_no_temporary_file(spec, sig, code):
    proc = subprocess.Popen([sys.executable, "-c", SLOW_WRITE, "compile", str(spec), "-o", "out.onnx"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=spec.parent,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.stdout.readline() == "writing\n"
    [tmp] = [p.name for p in spec.parent.iterdir() if p.name.endswith(".tmp")]
    assert tmp.startswith(f".out.onnx.{proc.pid}.")  # the owner is in the name
    proc.send_signal(sig)
    assert proc.wait(timeout=30) == code, proc.stderr.read()
    assert sorted(p.name for p in spec.parent.iterdir()) == ["lib.inv", "my.inv"]


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_stale_temporaries_of_dead_writers_are_swept_at_the_next_write(tmp_path):
    dead = dead_pid()
    stale = [tmp_path / f".out.onnx.{dead}.abcd_123.tmp", tmp_path / f".other.npz.{dead}.zzzzzzzz.tmp"]
    for f in stale:
        f.write_bytes(b"left by SIGKILL")
    (tmp_path / f".dir_triton.{dead}.q1w2e3r4.tmp").mkdir()
    (tmp_path / f".dir_triton.{dead}.q1w2e3r4.tmp" / "model.py").write_text("")
    kept = [tmp_path / f".out.onnx.{os.getpid()}.abcdefgh.tmp",  # a live writer's
            tmp_path / f"notes.{dead}.abcdefgh.txt", tmp_path / f".x.{dead}.long_random_name.tmp"]
    for f in kept:
        f.write_bytes(b"keep")
    with atomic_file(tmp_path / "out.onnx") as f:
        f.write(b"new")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([p.name for p in kept] + ["out.onnx"])
