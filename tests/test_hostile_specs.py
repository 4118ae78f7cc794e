"""Hostile specs: every one is refused with a SpecError at its position, fast, and the work limits
name themselves and can be raised."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

from dsl import limits
from dsl import program as program_module
from ops.registry import check
from dsl.errors import SpecError
from dsl.parser import parse_file
from dsl.program import load, load_text

ROOT = Path(__file__).resolve().parent.parent
MODEL = "model m() {{\n  input x: f32[B, 4]\n  y = {}\n  output y\n}}\n"


def refusal(text: str, file: str = "h.inv") -> SpecError:
    with pytest.raises(SpecError) as e:
        check(load_text(text, file))
    return e.value


def invc(*args, cwd=None, timeout=60):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "compiler.cli", *map(str, args)], capture_output=True,
                          text=True, cwd=cwd or ROOT, env=env, timeout=timeout)


@pytest.mark.parametrize("expr", [
    " + ".join(["x"] * 500),                      # a left-nested sum
    "-" * 500 + "x",                              # unary minus
    "reshape(x, " + "[" * 500 + "B" + "]" * 500 + ")",
    "relu(" * 300 + "x" + ")" * 300,
])
def test_deep_expressions_are_refused_at_the_limit(expr):
    e = refusal(MODEL.format(expr))
    assert "depth=100" in e.message and e.line == 3 and "--limit depth=" in e.hint


def test_deep_brackets_that_flatten_are_fine():
    check(load_text(MODEL.format("(" * 10000 + "x" + ")" * 10000)))


def test_a_chain_of_defs_is_refused_at_the_limit_and_passes_when_raised():
    defs = "".join(f"def d{i}(x) {{ return d{i + 1}(x) }}\n" for i in range(300)) + "def d300(x) { return relu(x) }\n"
    text = defs + MODEL.format("d0(x)")
    e = refusal(text)
    assert "def calls" in e.message and "depth=100" in e.message and e.line >= 1
    ok = defs.replace("d300", "d120").split("def d120")[0] + "def d120(x) { return relu(x) }\n" + MODEL.format("d0(x)")
    with limits.using(depth=200):
        assert len(check(load_text(ok)).nodes) == 1
    with limits.using(depth=100_000):  # past Python's stack: still a SpecError, never a RecursionError
        refusal(defs + MODEL.format("d0(x)"))


@pytest.mark.parametrize("text", [
    MODEL.replace("m()", "m(h: int = " + "9" * 5000 + ")").format("linear(x, h)"),
    MODEL.format("linear(x, 9223372036854775807 * 9223372036854775807)"),
    MODEL.replace("m()", "m(h: int = 3037000500)").format("reshape(x, [B * h * h * h, 4])"),
])
def test_huge_integers_are_refused_not_printed(text):
    e = refusal(text)
    assert "2**63-1" in e.hint and e.line >= 1


def test_larks_own_error_path_gives_a_spec_error():
    e = refusal("model m(hidden: int = S(3)64) {\n  input x: f32[B]\n  output x\n}\n")
    assert (e.line, e.column) == (1, 27)


def test_import_paths_the_os_refuses(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    os.symlink("loop.inv", tmp_path / "loop.inv")
    for path, words in [("a\0b.inv", "NUL"), ("a" * 300 + ".inv", "too long"), ("loop.inv", "loop")]:
        e = refusal(f'import "{path}"\n' + MODEL.format("relu(x)"))
        assert words.lower() in e.message.lower() and (e.line, e.column) == (1, 1)


def test_a_diamond_of_imports_is_read_once_per_file(tmp_path, monkeypatch):
    depth = 22  # 2**22 paths through the diamonds: only a parse per file finishes
    for i in range(depth):
        for side in "ab":
            (tmp_path / f"l{i}{side}.inv").write_text(f'import "l{i + 1}a.inv"\nimport "l{i + 1}b.inv"\n')
    (tmp_path / f"l{depth}a.inv").write_text("def blk(x) { return relu(x) }\n")
    (tmp_path / f"l{depth}b.inv").write_text("def other(x) { return tanh(x) }\n")
    root = tmp_path / "root.inv"
    root.write_text('import "l0a.inv"\n' + MODEL.format("blk(x)"))
    reads = []
    monkeypatch.setattr(program_module, "parse_file", lambda p: reads.append(p) or parse_file(p))
    program = load(root)
    assert len(reads) == len(set(reads)) == 2 * depth + 2  # root, l0a, then a and b on each level below
    assert len(program.texts) == 2 * depth + 2
    assert check(program).nodes[0].op == "relu"


def test_a_name_defined_in_two_files_is_still_refused(tmp_path):
    (tmp_path / "a.inv").write_text("def blk(x) { return relu(x) }\n")
    (tmp_path / "b.inv").write_text("def blk(x) { return tanh(x) }\n")
    root = tmp_path / "root.inv"
    root.write_text('import "a.inv"\nimport "b.inv"\n' + MODEL.format("blk(x)"))
    with pytest.raises(SpecError, match="defined twice"):
        load(root)


@pytest.mark.parametrize("name, text, words", [
    ("repeat", "def b(x) { return relu(x) }\n" + MODEL.format("b(x) repeat 100000"), "`repeat 100,000`"),
    ("nodes", "def b(x) { return " + "relu(" * 30 + "x" + ")" * 30 + " }\n" + MODEL.format("b(x) repeat 1000"), "op count"),
    ("parameters", MODEL.format("linear(linear(x, 100000), 100000)"), "parameter count"),
])
def test_work_limits_name_the_position_and_the_flag(name, text, words):
    e = refusal(text)
    assert words in e.message and f"{name}={getattr(limits.current(), name):,}" in e.message
    lines = text.split("\n")
    assert lines[e.line - 1].strip().startswith(("y =", "def b")) and f"--limit {name}=" in e.hint


def test_a_spec_over_the_size_limit(tmp_path):
    big = tmp_path / "big.inv"
    big.write_text("# " + "x" * limits.current().spec_bytes + "\n" + MODEL.format("relu(x)"))
    with pytest.raises(SpecError, match="spec_bytes"):
        load(big)
    with limits.using(spec_bytes=2 * limits.current().spec_bytes):
        check(load(big))


def test_the_cli_refuses_fifos_dev_zero_and_huge_repeats_and_raises_limits(tmp_path):
    os.mkfifo(tmp_path / "fifo.inv")
    for spec in (tmp_path / "fifo.inv", "/dev/zero"):
        r = invc("check", spec, timeout=30)
        assert r.returncode == 2 and "not a regular file" in r.stderr and "Traceback" not in r.stderr
    tb = ROOT / "examples" / "transformer_block.inv"
    r = invc("check", tb, "-p", "layers=10000000", timeout=30)
    assert r.returncode == 2 and r.stderr.startswith(f"{tb}:12:55: error: `repeat 10,000,000` exceeds the limit")
    r = invc("check", tb, "-p", "layers=1500", "--limit", "repeat=1500")
    assert r.returncode == 0 and "12003 ops" in r.stdout, r.stderr
    r = invc("check", tb, "--limit", "nodez=5")
    assert r.returncode == 2 and "malformed --limit" in r.stderr


@pytest.mark.parametrize("name", limits.names())
@pytest.mark.parametrize("value", [str(limits.INT_MAX), str(limits.INT_MAX + 1), "1" + "0" * 23, "9" * 5000],
                         ids=["int64 max", "int64 max + 1", "10**23", "5000 digits"])
def test_any_limit_value_is_taken_or_refused_in_one_line(tmp_path, capsys, name, value):
    """Up to int64's largest a limit is raised (a spec file is never read past its size); beyond, the
    flag is refused by name, never with an OverflowError."""
    from compiler.cli import main
    (tmp_path / "m.inv").write_text(MODEL.format("relu(x)"))
    code = main(["check", str(tmp_path / "m.inv"), "--limit", f"{name}={value}"])
    err = capsys.readouterr().err
    if value == str(limits.INT_MAX):
        assert (code, err) == (0, "")
    else:
        assert code == 2 and err.startswith(f"invc: malformed --limit '{name}=") and len(err.splitlines()) == 1


@pytest.mark.parametrize("command", ["compile", "verify"])
@pytest.mark.parametrize("seed", [-2**63, 2**64 - 1, -2**63 - 1, 2**64, 10**23])
def test_any_seed_is_taken_or_refused_before_any_work(tmp_path, capsys, command, seed):
    """A seed in torch's range gives a model (lowering mixes it with each weight's name modulo 2**64);
    one outside is refused by argparse, before the spec is read."""
    from compiler import cli
    args = [command, str(ROOT / "examples" / "deepsets.inv"), "--seed", str(seed)]
    args += ["-o", str(tmp_path / "m.onnx")] if command == "compile" else ["--trials", "1"]
    if -2**63 <= seed < 2**64:
        assert cli.main(args) == 0
        return
    with pytest.raises(SystemExit) as e:
        cli.main(args)
    assert e.value.code == 2 and "outside torch's seed range" in capsys.readouterr().err
