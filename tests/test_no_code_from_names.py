"""No code runs because of a name: hostile spec file names in the generated Triton module, the
Triton build cache, and pickled checkpoints."""
import ast
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

from common.cache import CacheError, private_cache

# Not imported here: tests/test_triton.py must import triton first, under TRITON_INTERPRET=1.
needs_triton = pytest.mark.skipif(importlib.util.find_spec("triton") is None,
                                  reason="triton is not installed: the generated module cannot be imported")

ROOT = Path(__file__).resolve().parent.parent
DEEPSETS = (ROOT / "examples" / "deepsets.inv").read_text()
HOSTILE_NAMES = [
    'x"""+__import__("os").system("touch INJECTED")+"""y.inv',
    "x'''+__import__('os').system('touch INJECTED')+'''y.inv",
    'a\nimport os; os.system("touch INJECTED")\n#.inv',
    'a\rimport os; os.system("touch INJECTED")\r#.inv',
    "back\\slash\\.inv",
    "trailing\\",
    "new\\nline.inv",
    "\u00e9t\u00e9 \U0001f600 \u2028 \x1b[31m.inv",
]


@needs_triton
@pytest.mark.parametrize("name", HOSTILE_NAMES)
def test_hostile_spec_names_stay_text_in_the_triton_module(tmp_path, name):
    from compiler.driver import compile
    spec = tmp_path / name
    spec.write_text(DEEPSETS)
    compile(spec, target="triton", out=tmp_path / "out")
    source = (tmp_path / "out" / "model.py").read_text()
    tree = ast.parse(source)
    # The name is text: the docstring holds it exactly (escaped in the source), and the module's
    # statements are only the generated ones.
    assert str(spec) in ast.get_docstring(tree)
    assert not any("INJECTED" in ast.unparse(node) for node in tree.body[1:])
    for line in source.splitlines():  # a comment that mentions the spec stays on its line
        assert "INJECTED" not in line or line.lstrip().startswith("#") or '"""' not in line
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": ""}
    r = subprocess.run([sys.executable, "-c", "import model"], cwd=tmp_path / "out", env=env,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert not list(tmp_path.rglob("INJECTED")) and not (ROOT / "INJECTED").exists()


SOURCE = "VALUE = 41 + 1\n"


def test_the_build_cache_is_private_and_planted_files_are_not_imported(tmp_path, monkeypatch):
    from runtime.triton import build
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert build.load(SOURCE, "probe").VALUE == 42
    cache = private_cache("triton")
    assert cache.stat().st_mode & 0o777 == 0o700 and cache.stat().st_uid == os.getuid()
    # A file under the expected name with other content (planted, or damaged) is replaced, not run.
    [planted] = cache.glob("probe_*.py")
    planted.write_text(f"open({str(tmp_path / 'INJECTED')!r}, 'w')\nVALUE = 0\n")
    assert build.load(SOURCE, "probe").VALUE == 42 and not (tmp_path / "INJECTED").exists()


def test_a_cache_others_can_write_or_own_is_refused(tmp_path, monkeypatch):
    from runtime.triton import build
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    cache = tmp_path / "invc" / "triton"
    cache.mkdir(parents=True)
    cache.chmod(0o777)
    with pytest.raises(CacheError, match="not a private directory"):
        build.load(SOURCE, "probe")
    cache.chmod(0o700)
    if os.getuid() == 0:  # only root can give a folder away
        os.chown(cache, 12345, 12345)
        with pytest.raises(CacheError, match="owner uid 12345"):
            build.load(SOURCE, "probe")
    cache.rmdir()
    cache.symlink_to(tmp_path)
    with pytest.raises(CacheError):
        build.load(SOURCE, "probe")
