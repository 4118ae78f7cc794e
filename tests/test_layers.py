"""The import contracts of pyproject.toml ([tool.importlinter]), checked by import-linter: the layers,
a torch-free dsl and no cycles between files. A toy tree that breaks each one shows they bite."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def lint_imports(where: Path) -> subprocess.CompletedProcess:
    script = Path(sys.executable).with_name("lint-imports")  # the venv's, as `make test` installs it
    return subprocess.run([str(script), "--no-cache", "--no-logo"], capture_output=True, text=True, cwd=where)


def test_the_tree_keeps_every_contract():
    r = lint_imports(ROOT)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "0 broken" in r.stdout and " kept" in r.stdout


def test_each_contract_catches_its_violation(tmp_path):
    config = (ROOT / "pyproject.toml").read_text()
    (tmp_path / "pyproject.toml").write_text(config[config.index("[tool.importlinter]"):])
    toy = {"common/dtypes.py": "",
           "dsl/parser.py": "import numpy\n",                # a front end that loads numpy
           "ops/registry.py": "from ops import sets\n",      # a cycle between two files: a family
           "ops/sets.py": "from ops import registry\n",      # registering itself at import
           "runtime/session.py": "import ops.registry\n",    # runtime reaching up into the ops
           "dsl/checker.py": "",
           "passes/cse.py": "import compiler.driver\n",      # a pass importing the driver
           "compiler/driver.py": "import passes.cse\n"}
    for path, text in toy.items():
        (tmp_path / path).parent.mkdir(exist_ok=True)
        (tmp_path / path).with_name("__init__.py").touch()
        (tmp_path / path).write_text(text)
    r = lint_imports(tmp_path)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "Contracts: 0 kept, 3 broken" in r.stdout, r.stdout
    for expected in ("runtime.session -> ops.registry", "passes.cse -> compiler.driver", "dsl.parser -> numpy",
                     "No cycles are allowed in ops"):
        assert expected in r.stdout, r.stdout
