"""Loading a spec with its imports: resolution, cycle detection and the directory-tree fence."""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path

from dsl import ast, limits
from dsl.errors import SpecError
from dsl.parser import parse, parse_file


@dataclass
class Program:
    root: ast.Spec
    defs: dict = field(default_factory=dict)      # name -> ast.Def or ast.TorchDef, from the root and its imports
    texts: dict = field(default_factory=dict)     # file -> source, for the source hash
    loaded: set = field(default_factory=set)      # resolved paths of the imported files
    size: int = 0                                 # bytes of all texts, against limits.spec_bytes

    @property
    def models(self) -> dict:
        return {m.name: m for m in self.root.of(ast.Model)}

    def source_hash(self) -> str:
        h = hashlib.sha256()
        for file in sorted(self.texts):
            h.update(self.texts[file].encode())
        return h.hexdigest()


def load(path: str | Path) -> Program:
    root = parse_file(path)
    program = Program(root)
    _collect(program, root, Path(path).resolve().parent, [Path(path).resolve()])
    return program


def load_text(text: str, file: str = "<spec>") -> Program:
    """A spec given as text; its imports resolve against the current directory."""
    root = parse(text, file)
    program = Program(root)
    _collect(program, root, Path.cwd().resolve(), [Path(file).resolve()])
    return program


def _collect(program: Program, spec: ast.Spec, fence: Path, stack: list[Path]) -> None:
    program.texts[spec.file] = spec.source
    program.size += len(spec.source.encode("utf-8", "surrogatepass"))
    for d in spec.of(ast.Def) + spec.of(ast.TorchDef):
        if d.name in program.defs:
            first = program.defs[d.name].pos
            raise SpecError.at(d.pos, f"`{d.name}` is defined twice", f"first defined at {first}")
        program.defs[d.name] = d
    for imp in spec.of(ast.Import):
        target = _import_target(imp, stack[-1].parent, fence)
        if target in stack:
            chain = " -> ".join(_shown(p) for p in stack[stack.index(target):] + [target])
            raise SpecError.at(imp.pos, f"cyclic import: {chain}")
        if target in program.loaded:  # a diamond: the same file reached twice is one set of defs
            continue
        program.loaded.add(target)
        imported = parse_file(_shown(target))
        if program.size + len(imported.source.encode("utf-8", "surrogatepass")) > limits.current().spec_bytes:
            raise SpecError.at(imp.pos, *limits.exceeded("the size of the spec and its imports", "spec_bytes"))
        _collect(program, imported, fence, stack + [target])


def _import_target(imp: ast.Import, here: Path, fence: Path) -> Path:
    """The file an import names, resolved and fenced; any path the OS refuses is refused here."""
    if "\0" in imp.path:
        raise SpecError.at(imp.pos, "an import path cannot contain a NUL character")
    try:
        target = (here / imp.path).resolve()
        if target.is_relative_to(fence) and not target.is_file():
            raise SpecError.at(imp.pos, f"imported spec not found: {_shown(target)}")
    except (OSError, RuntimeError) as e:  # RuntimeError: a symlink loop (Python 3.11)
        raise SpecError.at(imp.pos, f"cannot import {imp.path!r}: {getattr(e, 'strerror', None) or e}") from None
    if not target.is_relative_to(fence):
        raise SpecError.at(imp.pos, f"import {imp.path!r} leaves the spec's directory tree ({fence})",
                           "keep imported specs inside the root spec's folder")
    return target


def _shown(p: Path) -> str:
    """A path as the user would type it: relative to the working directory when inside it."""
    try:
        return os.path.relpath(p)
    except ValueError:
        return str(p)
