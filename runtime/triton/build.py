"""Assemble rendered kernels and launchers into one standalone Python module, and load it.

@triton.jit reads its function's source file, so a rendered module is written to a file (named by
the hash of its text, so a rerun reuses it) and imported from there.
"""
from __future__ import annotations

import ast
import hashlib
import importlib.util
import math
from pathlib import Path

from common.cache import private_cache
from common.files import atomic_path

PRELUDE = Path(__file__).with_name("prelude.py")
IMPORTS = {"math": "import math", "os": "import os", "torch": "import torch",
           "F": "import torch.nn.functional as F", "triton": "import triton",
           "tl": "import triton.language as tl"}


def prelude(code: str) -> str:
    """The prelude's statements that `code` uses, directly or through each other, in file order."""
    tree = ast.parse(PRELUDE.read_text())
    defs = {_name(s): s for s in tree.body if _name(s)}
    text = PRELUDE.read_text()
    wanted, todo = set(), [n for n in defs if _uses(code, n)]
    while todo:
        name = todo.pop()
        if name not in wanted:
            wanted.add(name)
            body = ast.get_source_segment(text, defs[name])
            todo += [n for n in defs if n != name and _uses(body, n)]
    return "\n\n\n".join(ast.get_source_segment(text, s) for s in tree.body if _name(s) in wanted)


def _name(stmt) -> str | None:
    if isinstance(stmt, (ast.FunctionDef, ast.ClassDef)):
        return stmt.name
    if isinstance(stmt, ast.Assign) and isinstance(stmt.targets[0], ast.Name):
        return stmt.targets[0].id
    return None


def _uses(code: str, name: str) -> bool:
    return any(isinstance(n, ast.Name) and n.id == name for n in ast.walk(ast.parse(code)))


def literal_text(text: str) -> str:
    """User text (a spec's file name) as it may stand inside a triple-quoted string or a comment of
    generated code: quotes, backslashes, line breaks and other unprintable characters escaped, so it
    can neither end the string nor start a line of code."""
    return repr(text)[1:-1].replace('"', '\\"')


def literal(value) -> str:
    """Python source for a constant (a graph op's argument, a kernel's constexpr). repr spells inf and
    nan as bare names, which the generated module would look up and not find (a NameError when it
    runs), so non-finite floats are spelled as calls."""
    if isinstance(value, float) and not math.isfinite(value):
        return f'float("{value}")'
    return repr(value)


def module_source(docstring: str, body: str) -> str:
    """A module: docstring, the imports it uses, the prelude helpers `body` needs, then `body`."""
    helpers = prelude(body)
    imports = [line for name, line in IMPORTS.items() if _uses(helpers + "\n" + body, name)]
    return "\n".join([f'"""{docstring}\n"""', *imports, "", "", helpers, "", "", body.rstrip(), ""])


def load(source: str, name: str = "invc_triton"):
    """Import a rendered module from a file in the private cache; the file is used only when its
    content hash is the source's, else it is written afresh."""
    digest = hashlib.sha256(source.encode()).hexdigest()
    path = private_cache("triton") / f"{name}_{digest[:16]}.py"
    if not path.is_file() or hashlib.sha256(path.read_bytes()).hexdigest() != digest:
        with atomic_path(path, "Triton module") as tmp:  # a temporary of its own: threads share a pid
            tmp.write_text(source, encoding="utf-8")
    spec = importlib.util.spec_from_file_location(f"{name}_{digest[:16]}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
