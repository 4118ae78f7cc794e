"""Nothing lost: an output never replaces an input, and an interrupted or killed write leaves no
temporary file behind for long."""
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
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


# Other names of one file or folder, as a user may type them: each is made beside `path` when needed.
def as_given(path: Path) -> str:
    return str(path.relative_to(Path.cwd()))


def dotted(path: Path) -> str:
    (path.parent / "x").mkdir(exist_ok=True)
    return f"./{path.parent.relative_to(Path.cwd())}/x/../{path.name}".replace("/./", "/")


def absolute(path: Path) -> str:
    return str(path.resolve())


def linked(path: Path) -> str:
    link = Path.cwd() / f"link{len(list(Path.cwd().glob('link*')))}"
    link.symlink_to(path.resolve())
    return link.name


def through_linked_folder(path: Path) -> str:
    return f"{linked(path.parent)}/{path.name}"


NAMES = [as_given, dotted, absolute, linked, through_linked_folder]


def setup_layout(root: Path):
    """Every command's inputs, each kind once, and the folders -o replaces: earlier outputs."""
    (root / "x").mkdir()
    (root / "old_triton").mkdir()
    (root / "old_triton" / "model.py").write_text("# an earlier Triton output")
    (root / "old_sliced").mkdir()
    (root / "old_sliced" / "invc_slice.json").write_text("{}")
    model = root / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    (model / "model.safetensors").write_bytes(b"weights")


# Each command with a folder output, the input kinds it reads, and where an earlier output lies.
# The inputs are placed inside that folder; the command must refuse before any work.
FOLDER_CASES = {
    "triton spec": ("old_triton", lambda i, o: ["compile", i["spec"], "--target", "triton", "-o", o], "spec"),
    "triton import": ("old_triton", lambda i, o: ["compile", i["spec"], "--target", "triton", "-o", o], "import"),
    "slice calib": ("old_sliced", lambda i, o: ["slice", i["model"], "--calib", i["calib"], "-o", o], "calib"),
    "slice model": ("old_sliced", lambda i, o: ["slice", i["model"], "--calib", i["calib"], "-o", o], "model"),
}


def place_inputs(root: Path, inside: Path, kind: str) -> dict[str, Path]:
    """The inputs of a run, the one of `kind` moved inside the folder `inside` (a spec with its
    import: imports stay inside the spec's folder)."""
    where = {k: (inside if kind in (k, "spec" if k == "import" else None) else root)
             for k in ("spec", "import", "calib", "model")}
    (where["import"] / "lib.inv").write_text("def blk(x) { return relu(linear(x, 4)) }\n")
    lib = os.path.relpath(where["import"] / "lib.inv", where["spec"])
    (where["spec"] / "my.inv").write_text(SPEC.replace('"lib.inv"', f'"{lib}"'))
    (where["calib"] / "c.txt").write_text("calibration text")
    if kind == "model":
        (root / "model").rename(inside / "model")
    return {"spec": where["spec"] / "my.inv", "import": where["import"] / "lib.inv",
            "calib": where["calib"] / "c.txt", "model": where["model"] / "model"}


def snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and not p.is_symlink()}


@pytest.mark.parametrize("case", FOLDER_CASES)
@pytest.mark.parametrize("out_name", NAMES, ids=lambda f: f.__name__)
@pytest.mark.parametrize("in_name", NAMES, ids=lambda f: f.__name__)
def test_a_folder_output_never_deletes_an_input_inside_it(tmp_path, monkeypatch, capsys, case, out_name, in_name):
    monkeypatch.chdir(tmp_path)
    setup_layout(tmp_path)
    folder, argv, kind = FOLDER_CASES[case]
    inputs = place_inputs(tmp_path, tmp_path / folder, kind)
    named = {k: (in_name(p) if k == kind and kind != "import" else as_given(p)) for k, p in inputs.items()}
    before = snapshot(tmp_path)
    assert main(argv(named, out_name(tmp_path / folder))) == 2
    err = capsys.readouterr().err
    assert "an input of this command" in err and "which writing it would delete" in err, err
    assert snapshot(tmp_path) == before


# Each command with a file output, and the inputs it reads: -o naming any of them is refused.
def file_cases(root: Path) -> dict[str, tuple]:
    spec, lib = root / "my.inv", root / "lib.inv"
    lib.write_text("def blk(x) { return relu(linear(x, 4)) }\n")
    spec.write_text(SPEC)
    (root / "m.onnx").write_bytes(b"not run: refused first")
    np.save(root / "x.npy", np.ones((2, 4), np.float32))
    np.savez(root / "xs.npz", x=np.ones((2, 4), np.float32))
    model = root / "model"
    return {
        "compile spec": (lambda o: ["compile", "my.inv", "-o", o], spec),
        "compile import": (lambda o: ["compile", "my.inv", "-o", o], lib),
        "run model": (lambda o: ["run", "m.onnx", "--random", "B=2", "-o", o], root / "m.onnx"),
        "run input": (lambda o: ["run", "m.onnx", "-i", "x=x.npy", "-o", o], root / "x.npy"),
        "run inputs": (lambda o: ["run", "m.onnx", "-i", "xs.npz", "-o", o], root / "xs.npz"),
        "verify onnx": (lambda o: ["verify", "my.inv", "--onnx", "plot.png", "--plot", o], root / "plot.png"),
        "export config": (lambda o: ["export", "model", "-o", o], model / "config.json"),
        "export weights": (lambda o: ["export", "model", "-o", o], model / "model.safetensors"),
    }


FILE_CASES = ["compile spec", "compile import", "run model", "run input", "run inputs", "verify onnx",
              "export config", "export weights"]


@pytest.mark.parametrize("case", FILE_CASES)
@pytest.mark.parametrize("out_name", [*NAMES, "hard link"], ids=lambda f: getattr(f, "__name__", f))
def test_a_file_output_never_replaces_an_input(tmp_path, monkeypatch, capsys, case, out_name):
    monkeypatch.chdir(tmp_path)
    setup_layout(tmp_path)
    argv, source = file_cases(tmp_path)[case]
    if not source.exists():
        source.write_bytes(b"an input")
    if out_name == "hard link":
        os.link(source, tmp_path / "alias")
        out = "alias"
    else:
        out = out_name(source)
    before = snapshot(tmp_path)
    assert main(argv(out)) == 2
    assert "is an input of this command" in capsys.readouterr().err
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("out", ["model", "model/sliced", ".", "link/sliced"])
def test_slice_never_writes_into_or_over_its_model_folder(tmp_path, monkeypatch, capsys, out):
    monkeypatch.chdir(tmp_path)
    setup_layout(tmp_path)
    (tmp_path / "link").symlink_to(tmp_path / "model")
    (tmp_path / "c.txt").write_text("calibration")
    before = snapshot(tmp_path)
    assert main(["slice", "model", "--calib", "c.txt", "-o", out]) == 2
    assert re.search("inside the input folder|an input of this command", capsys.readouterr().err)
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("command", [
    ["compile", "my.inv", "-o", "no/such/x.onnx"],
    ["compile", "my.inv", "--target", "triton", "-o", "no/such/x"],
    ["run", "m.onnx", "--random", "B=2", "-o", "no/such/y.npz"],
    ["verify", "my.inv", "--plot", "no/such/p.png"],
    ["slice", "model", "--calib", "my.inv", "-o", "no/such/m"],
    ["export", "model", "-o", "no/such/m.onnx"],
], ids=lambda argv: argv[0] + ("-triton" if "triton" in argv else ""))
def test_an_output_that_cannot_be_written_is_refused_before_any_work(tmp_path, monkeypatch, capsys, command):
    """m.onnx and the model folder are not loadable: the refusal must come before they are read."""
    monkeypatch.chdir(tmp_path)
    setup_layout(tmp_path)
    file_cases(tmp_path)
    assert main(command) == 2
    assert "no such directory no/such" in capsys.readouterr().err


@pytest.mark.parametrize("command", [
    ["compile", "loop", "-o", "x.onnx"], ["compile", "my.inv", "-o", "loop"],
    ["compile", "my.inv", "--target", "triton", "-o", "loop"], ["run", "m.onnx", "--random", "B=2", "-o", "loop"],
    ["slice", "loop", "--calib", "my.inv", "-o", "y"], ["slice", "model", "--calib", "my.inv", "-o", "loop"],
    ["slice", "model", "--calib", "loop", "-o", "y"], ["eval-ppl", "loop", "--text", "my.inv"],
    ["export", "loop", "-o", "x.onnx"], ["export", "model", "-o", "loop"], ["run", "loop", "--random", "B=2"],
], ids=" ".join)
def test_a_loop_of_symbolic_links_is_one_line(tmp_path, monkeypatch, capsys, command):
    monkeypatch.chdir(tmp_path)
    setup_layout(tmp_path)
    file_cases(tmp_path)
    (tmp_path / "loop").symlink_to(tmp_path / "loop2")
    (tmp_path / "loop2").symlink_to(tmp_path / "loop")
    assert main(command) == 2
    err = capsys.readouterr().err
    assert "loop" in err and len(err.strip().splitlines()) == 1, err


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
