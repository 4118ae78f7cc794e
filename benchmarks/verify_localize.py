"""Does `invc verify` name the op that breaks a symmetry? Bugs injected into correct models, one at a time.

    python benchmarks/verify_localize.py                 # 150 bugs: the rate, per kind and per model, the misses
    python benchmarks/verify_localize.py --bugs 20 --seed 3

The correct models are the examples that declare a symmetry; the torch models of tests/torch_models.py
(PyG's GINConv, an E_GCL layer, PointNet); and SchNet-, PaiNN-, dense EGNN- and DeepSets-style layers
(benchmarks/localize_models/geometric.py), captured through torch.export. A bug is one edit of one
source line, drawn at random from every (line, kind) that applies; `y` is the name the line binds,
`pos` a position input of the model (in a spec's model body, or the torch forward's argument):

    kind              a spec line (.inv)                      a line of a torch forward (.py)
    coordinate term   y = y + sum(y, axis=-1, keepdim=true)   y = y + y[..., :1]
    position leak     y = y + sum(pos, axis=-1, keepdim=true) y = y + pos[..., :1]
    fixed element                                             y = y + y[:1] (or y[:, :1])
    position table                                            y = y + self.bug_table[:y.shape[k]] (learned)
    running sum                                               y = y.cumsum(0) (kept as an ATen op)
    nonlinearity      y = tanh(y)                             y = torch.tanh(y)
    scale             y = y * 2                               y = y * 2
    offset            y = y + 1                               y = y + 1
    wrong axis        a sum, mean or pool over another axis   a reduction over another dim
    mlp over coords   sum(v * v, axis=-1, keepdim=true)       torch.sum(v, 1) -> v @ [1, 2, 3]
                      -> linear(v * v, 1)
    no centering      y = a - b -> y = a                      y = a - b -> y = a

(A spec has no slicing and no cumulative sum, so those kinds are torch-only.) Each mutated copy runs
verify() (as `invc verify --trials 2`). A bug counts when a claim fails in float64 with the model's
own weights, and it is found when every first breaking op that verify names is on the injected line.
A dropped centering leaves no op on its line: verify names the first op that misuses the uncentred
value (compiler/localize.py), so that bug is found at the first later line that reads it. Edits
that no longer check, capture or run are counted and skipped, and so are edits that leave every
claim standing (inside a frame-averaged backbone, or on a tensor that is invariant anyway).
"""
from __future__ import annotations

import argparse
import ast
import itertools
import multiprocessing
import random
import re
import shutil
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

TORCH_MODELS = ROOT / "benchmarks" / "localize_models"
MODELS = [  # (spec, model, the file bugs go into)
    *[(ROOT / "examples" / f"{name}.inv", None, ROOT / "examples" / f"{name}.inv")
      for name in ("deepsets", "egnn", "egnn_sparse", "nbody", "nbody_drift", "nbody_walk_near",
                   "pointcloud_classifier")],
    *[(ROOT / "tests" / "torch_models.inv", name, ROOT / "tests" / "torch_models.py")
      for name in ("gin", "egnn", "pointnet")],
    *[(TORCH_MODELS / "geometric.inv", name, TORCH_MODELS / "geometric.py")
      for name in ("schnet_layer", "painn_layer", "dense_egnn", "deepsets")],
]
TORCH_CLASSES = {  # model -> (the classes whose forward bugs go into, the forward's position argument)
    "gin": (("GIN",), None), "egnn": (("EGCL",), "coord"), "pointnet": (("PointNet",), None),
    "schnet_layer": (("SchNetLite",), "pos"), "painn_layer": (("PaiNNLite",), "pos"),
    "dense_egnn": (("DenseEGNN",), "x"), "deepsets": (("DeepSets",), None)}

SPEC_KINDS = {  # {pos}: a position input in scope
    "coordinate term": "{y} = {y} + sum({y}, axis=-1, keepdim=true)",
    "position leak": "{y} = {y} + sum({pos}, axis=-1, keepdim=true)",
    "nonlinearity": "{y} = tanh({y})",
    "scale": "{y} = {y} * 2",
    "offset": "{y} = {y} + 1",
}
TORCH_KINDS = {
    "coordinate term": "{y} = {y} + {y}[..., :1]",
    "position leak": "{y} = {y} + {pos}[..., :1]",
    "fixed element": "{y} = {y} + {y}[:1]",
    "fixed element, axis 1": "{y} = {y} + {y}[:, :1]",
    "position table": "{y} = {y} + self.bug_table[:{y}.shape[0]].view(-1, *[1] * ({y}.dim() - 1))",
    "position table, axis 1": "{y} = {y} + self.bug_table[:{y}.shape[1]].view(-1, *[1] * ({y}.dim() - 2))",
    "position table, last axis": "{y} = {y} + self.bug_table[:{y}.shape[-1]]",
    "running sum": "{y} = {y}.cumsum(0)",
    "nonlinearity": "{y} = torch.tanh({y})",
    "scale": "{y} = {y} * 2",
    "offset": "{y} = {y} + 1",
}
TABLE = "self.bug_table = torch.nn.Parameter(torch.randn(1024))"  # longer than any set capture or verify draws
AXES = {".inv": ("-1", "1", "2", "N"), ".py": ("-1", "0", "1", "2")}
REDUCTION = {".inv": re.compile(r"\b(?:sum|mean|pool|max)\([^()]*(?:\([^()]*\)[^()]*)*?axis=(-?\w+)"),
             ".py": re.compile(r"(?:\.(?:sum|mean|amax)\(|torch\.(?:sum|mean)\([^,()]+(?:\([^()]*\))?, )(-?\d)")}
MLP_OVER_COORDINATES = {".inv": (re.compile(r"sum\((\w+ \* \w+), axis=-1, keepdim=true\)"), r"linear(\1, 1)"),
                        ".py": (re.compile(r"torch\.sum\(([^,]+), 1\)"), r"(\1 @ torch.tensor([1.0, 2.0, 3.0]))")}


@dataclass(frozen=True)
class Bug:
    spec: Path
    model: str | None
    file: Path          # the source the edit goes into
    kind: str
    line: int           # 1-based: the edited line
    text: str           # the edited line
    expected: int       # the line the breaking op must be named on
    table: int = 0      # the line that gives the module its learned table (a position table), else 0

    @property
    def model_name(self) -> str:
        return f"{self.spec.stem}:{self.model}" if self.model else self.spec.stem

    def __str__(self) -> str:
        return f"{self.file.name}:{self.line} {self.kind}: {self.text.strip()}"


def bugs(spec: Path, model: str | None, file: Path) -> list[Bug]:
    """Every edit of every line of `file` that binds one name, in the model's own code."""
    lines = file.read_text().splitlines()
    found = []
    kinds, sep = (SPEC_KINDS, "  ") if file.suffix == ".inv" else (TORCH_KINDS, "; ")  # statements on one line
    for line, y, indent, pos in _bindings(file, model, lines):
        text = lines[line - 1]
        for kind, template in kinds.items():
            if "{pos}" in template and not pos:
                continue
            bug = template.format(y=y, pos=pos)
            if text.lstrip().startswith("return "):  # `return e` -> `y = e; y = bug; return y`
                edited = f"{indent}{y} = {text.strip()[len('return '):]}{sep}{bug}{sep}return {y}"
            else:
                edited = f"{text}{sep}{bug}"
            found.append(Bug(spec, model, file, kind, line, edited, line,
                             _init_line(lines, line) if kind.startswith("position table") else 0))
        for axis in _axes(text, file.suffix):
            found.append(Bug(spec, model, file, "wrong axis", line, axis, line))
        pattern, replacement = MLP_OVER_COORDINATES[file.suffix]
        if pattern.search(text):
            found.append(Bug(spec, model, file, "mlp over coords", line, pattern.sub(replacement, text, 1), line))
        centred = re.fullmatch(r"(\s*\w+ = )(.+?) - ([^-+]+)", text)
        if centred and centred[2].count("(") == centred[2].count(")"):
            reader = _reader(lines, line, y)
            if reader:
                found.append(Bug(spec, model, file, "no centering", line, centred[1] + centred[2], reader))
    return found


def _bindings(file: Path, model: str | None, lines: list[str]):
    """(line, name, indent, a position input in scope or None) of each one-line statement that binds
    one name (or returns one value): in a spec, any statement of a def or model; in a torch file,
    those of the model's forward methods."""
    if file.suffix == ".inv":
        pos = None
        for k, text in enumerate(lines, 1):
            if re.match(r"(def|model) ", text):  # a def's tensors are its arguments: no input in scope
                pos = None
            if found := re.fullmatch(r"\s+input (\w+): .* is position", text):
                pos = found[1]
            m = re.fullmatch(r"(\s+)(?:(\w+) = |return )(.+)", text)
            if m and "repeat" not in text and "#" not in text and text.count("(") == text.count(")"):
                yield k, m[2] or "bug_out", m[1], pos
        return
    classes, pos = TORCH_CLASSES[model]
    for cls in ast.parse("\n".join(lines)).body:
        if isinstance(cls, ast.ClassDef) and cls.name in classes:
            forward = next(f for f in cls.body if isinstance(f, ast.FunctionDef) and f.name == "forward")
            for stmt in forward.body:
                indent = " " * stmt.col_offset
                if stmt.lineno != stmt.end_lineno:
                    continue
                if isinstance(stmt, ast.Assign) and len(stmt.targets) == 1 and isinstance(stmt.targets[0], ast.Name):
                    yield stmt.lineno, stmt.targets[0].id, indent, pos
                elif isinstance(stmt, ast.Return) and not isinstance(stmt.value, ast.Tuple):
                    yield stmt.lineno, "bug_out", indent, pos


def _reader(lines: list[str], line: int, name: str) -> int:
    """The first line after `line`, in the same def, model or method, that reads `name` (0: none)."""
    for k in range(line + 1, len(lines) + 1):
        if re.match(r"\S|\s*def ", lines[k - 1]):
            return 0
        if re.search(rf"\b{name}\b", lines[k - 1]):
            return k
    return 0


def _init_line(lines: list[str], line: int) -> int:
    """The `super().__init__()` line of the class that holds `line`."""
    return max(k for k in range(1, line) if "super().__init__()" in lines[k - 1])


def _axes(text: str, suffix: str) -> list[str]:
    """The line with its first reduction taken over each other axis."""
    m = REDUCTION[suffix].search(text)
    if not m:
        return []
    return [text[:m.start(1)] + axis + text[m.end(1):] for axis in AXES[suffix] if axis != m[1]]


COPIES = itertools.count()


def inject(bug: Bug, folder: Path) -> tuple[Path, Path]:
    """A copy of the bug's spec (with the specs it imports) and of the edited file in `folder`, the
    bug in: their paths there. A torch module gets a name of its own, so that this process imports
    the edited copy, not one it imported before."""
    folder.mkdir(parents=True)
    for spec in bug.spec.parent.glob("*.inv"):
        shutil.copy(spec, folder)
    lines = bug.file.read_text().splitlines()
    lines[bug.line - 1] = bug.text
    if bug.table:
        lines[bug.table - 1] += f"; {TABLE}"
    spec, edited = folder / bug.spec.name, folder / bug.file.name
    if bug.file.suffix == ".py":
        module = f"{bug.file.stem}_bug{next(COPIES)}"
        edited = folder / f"{module}.py"
        spec.write_text(spec.read_text().replace(f'torch("{bug.file.stem}:', f'torch("{module}:'))
    edited.write_text("\n".join(lines) + "\n")
    return spec, edited


@dataclass
class Outcome:
    bug: Bug
    status: str       # found, missed; harmless (every claim holds in float64), noisy (fails only with
                      # random weights, which amplify rounding in some edits), invalid (no longer runs)
    named: str = ""   # the breaking ops verify named, or why the edit no longer runs


def run(bug: Bug, folder: Path) -> Outcome:
    from compiler.verify import verify
    spec, edited = inject(bug, folder)
    try:
        report = verify(spec, model=bug.model, trials=2)
    except Exception as e:  # an edit that no longer checks, captures, lowers or compiles
        return Outcome(bug, "invalid", f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:160])
    named = "; ".join(f"{Path(b.file).name}:{b.line} ({b.op}, error {b.error:.1e})" for b in report.breaks)
    if any(m.backend == "torch fp64" and not m.ok for m in report.rows):
        found = report.breaks and all(Path(b.file).resolve() == edited.resolve() and b.line == bug.expected
                                      for b in report.breaks)
        return Outcome(bug, "found" if found else "missed", named or "nothing")
    return Outcome(bug, "noisy" if report.breaks else "harmless", named)


def _run(job) -> Outcome:
    return run(*job)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--bugs", type=int, default=150, help="stop after this many bugs (a claim fails in float64)")
    p.add_argument("--seed", type=int, default=0, help="the draw of edits")
    p.add_argument("--jobs", type=int, default=2, help="edits verified at once, one process each")
    args = p.parse_args(argv)
    drawn = [b for spec, model, file in MODELS for b in bugs(spec, model, file)]
    random.Random(args.seed).shuffle(drawn)
    outcomes, start = [], time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp, multiprocessing.Pool(args.jobs, _quiet) as pool:
        for outcome in pool.imap(_run, [(b, Path(tmp) / f"b{k}") for k, b in enumerate(drawn)]):
            outcomes.append(outcome)  # in the order drawn, whatever the jobs
            if sum(o.status in ("found", "missed") for o in outcomes) == args.bugs:
                break
    print(report(outcomes, len(drawn), time.perf_counter() - start))
    return 0


def _quiet() -> None:
    import warnings
    warnings.filterwarnings("ignore")  # torch.export's and onnx's, once per edit


def report(outcomes: list[Outcome], drawn: int, seconds: float) -> str:
    counted = [o for o in outcomes if o.status in ("found", "missed")]
    found = sum(o.status == "found" for o in counted)
    status = Counter(o.status for o in outcomes)
    lines = [f"edits verified: {len(outcomes)} of {drawn} drawn, {seconds:.0f} s; {status['harmless']} left every claim "
             f"standing, {status['noisy']} failed only with random weights, {status['invalid']} no longer ran",
             f"bugs (a claim fails in float64 with the model's weights): {len(counted)}",
             f"first breaking op named on the injected line: {found}/{len(counted)} = "
             f"{100 * found / max(len(counted), 1):.1f}%", ""]
    for title, key in (("kind", lambda o: o.bug.kind), ("model", lambda o: o.bug.model_name)):
        lines += [f"| {title} | bugs | found |", "|---|---:|---:|"]
        for name in sorted({key(o) for o in counted}):
            mine = [o for o in counted if key(o) == name]
            lines.append(f"| {name} | {len(mine)} | {sum(o.status == 'found' for o in mine)} |")
        lines.append("")
    for status, title in (("missed", "missed (expected line -> named)"), ("noisy", "failed only with random weights")):
        lines += [f"{title}:", *[f"  {o.bug} ({o.bug.expected}) -> {o.named}" for o in outcomes if o.status == status]]
    invalid = [o for o in outcomes if o.status == "invalid"]
    crashed = [o for o in invalid if not o.named.startswith("SpecError")]  # not refused with a reason: an invc bug
    lines += [f"no longer ran: {len(invalid) - len(crashed)} refused by the checker or by capture, {len(crashed)} crashed:",
              *[f"  {o.bug} -> {o.named}" for o in crashed]]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
