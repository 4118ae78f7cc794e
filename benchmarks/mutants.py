"""Mutation testing of the symmetry rules: does the CI suite notice a rule made slightly too permissive?

    python benchmarks/mutants.py                              # every rule, 2 jobs, the kill suite
    python benchmarks/mutants.py --file ops/sets.py --jobs 1  # one file's rules
    python benchmarks/mutants.py --function symmetry_gather   # one function
    python benchmarks/mutants.py --list                       # the mutants only, nothing run

The rules are found through the op registry: every graph op's symmetry function, `apply` (the rule
kit's common cases), and every helper of ops/ or dsl/symmetry_rules.py that they call (wording
helpers, which return a str, left out). Each mutant is a one-site AST edit that makes a rule
accept more than it should:

    skip      a refusal branch never taken (`if c: return call.broken(..)` -> `if False`; the
              accepting side of a conditional expression; a refusal operand of `a or b` dropped)
    clause    a clause of an and/or guard dropped, on the side that refuses less
    negate    a condition or boolean assignment inverted (`isinstance(..)` -> `not ..`, `==` -> `!=`)
    boundary  `<` <-> `<=`, `>` <-> `>=`
    widen     a fact test that also takes a confusable kind (`rel == Rotated(k)` ->
              `rel in (Rotated(k), Translated(k))`, `isinstance(f, Permuted)` -> `(Permuted, Relabeled)`)
    pass      a refusal that returns its first operand's fact instead

The kill suite (KILL_SUITE: every CI test file that checks specs) first runs once unmutated, in
this process, with every rule probed: it must pass, and it tells which test reaches which rule and
how long each takes. Each mutant then runs only the tests that reach its function, fastest first,
up to the first failure (`-x`; `--timeout` seconds each; a timeout counts as a survivor, so the
score errs low), in a copy of the working tree per job: the mutated file is written there, and the mutated function's code is swapped in a child
forked from a worker that imported torch and collected the suite once. (Tests that reach a rule only
through an `invc` subprocess are not seen by the probe, so the score errs low, never high.) It
prints the score and every survivor with its place; a survivor is a missing test, a missing draw of
tests/soundness.py, or an equivalent mutant (BENCHMARKS.md lists those with their reasons).
`--rerun RESULTS.json` runs only the survivors of an earlier `--json` run, after tests were added.
"""
from __future__ import annotations

import argparse
import ast
import copy
import importlib
import inspect
import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
KILL_SUITE = ("tests/test_symmetry.py", "tests/test_rule_edges.py", "tests/test_symmetry_lifts.py",
              "tests/test_symmetry_facts.py", "tests/test_groups.py", "tests/test_sets.py", "tests/test_frames.py",
              "tests/test_verify.py", "tests/test_soundness.py", "tests/test_facts.py", "tests/test_hostile_specs.py",
              "tests/test_examples.py", "tests/test_checker.py", "tests/test_fuzz.py", "tests/test_spec_fuzz.py")
KIT = ("dsl.symmetry_rules",)  # modules besides ops/ whose helpers count as rules
# A confusable fact kind for each: a permissive rule mistakes one for the other.
CONFUSABLE = {"Rotated": ("Translated", "Squared"), "Translated": ("Rotated",), "Squared": ("Rotated",),
              "Permuted": ("Relabeled", "Invariant"), "Relabeled": ("Permuted",), "Invariant": ("Permuted",),
              "Simplex": ("Invariant",)}
FLIP = {ast.Eq: ast.NotEq, ast.NotEq: ast.Eq, ast.In: ast.NotIn, ast.NotIn: ast.In, ast.Is: ast.IsNot,
        ast.IsNot: ast.Is, ast.Lt: ast.GtE, ast.GtE: ast.Lt, ast.Gt: ast.LtE, ast.LtE: ast.Gt}
BOUNDARY = {ast.Lt: ast.LtE, ast.LtE: ast.Lt, ast.Gt: ast.GtE, ast.GtE: ast.Gt}


@dataclass(frozen=True)
class Mutant:
    file: str        # relative to the tree's root
    function: str
    line: int
    operator: str
    before: str      # the mutated expression, as source
    after: str
    source: str      # the whole mutated file

    @property
    def module(self) -> str:
        return self.file.removesuffix(".py").replace("/", ".")

    def where(self) -> str:
        return f"{self.file}:{self.line} {self.function} [{self.operator}] {self.before}  ->  {self.after}"


# -- finding the rules ----------------------------------------------------------------------------

def rule_functions() -> list:
    """The registry's symmetry rules, `apply`, and the ops/ and rule-kit helpers they call."""
    from dsl import symmetry_rules
    from ops.registry import VOCABULARY
    todo = [op.symmetry for op in VOCABULARY.graph.values()] + [symmetry_rules.apply]
    found = {}
    while todo:
        f = todo.pop()
        if f in found.values() or not _is_rule_module(f.__module__):
            continue
        found[f.__qualname__ + f.__module__] = f
        todo += [g for g in _callees(f) if "str" not in str(inspect.signature(g).return_annotation)]
    return sorted(found.values(), key=lambda f: (f.__module__, f.__code__.co_firstlineno))


def _is_rule_module(name: str) -> bool:
    return name.startswith("ops.") or name in KIT


def _callees(f) -> list:
    names = {n.id for n in ast.walk(ast.parse(inspect.getsource(f))) if isinstance(n, ast.Name)}
    return [v for k, v in f.__globals__.items() if k in names and inspect.isfunction(v)
            and v.__code__.co_freevars == ()]


# -- the mutation operators -----------------------------------------------------------------------

def _refuses(node, refusal_names: set) -> bool:
    """Whether an expression or statements may produce a refusal (a Broken)."""
    for n in ast.walk(node) if isinstance(node, ast.AST) else [m for s in node for m in ast.walk(s)]:
        if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute) and n.func.attr == "broken":
            return True
        if isinstance(n, ast.Call) and isinstance(n.func, ast.Name) and n.func.id in refusal_names:
            return True
        if isinstance(n, ast.Name) and n.id in refusal_names:
            return True
    return False


def _refusal_names(fn: ast.FunctionDef, globals_: dict) -> set:
    """Helpers that return Broken or None, and the local names bound to their results."""
    names = {k for k, v in globals_.items() if inspect.isfunction(v)
             and "Broken" in str(inspect.signature(v).return_annotation)}
    for n in ast.walk(fn):
        if isinstance(n, ast.Assign) and len(n.targets) == 1 and isinstance(n.targets[0], ast.Name) \
                and isinstance(n.value, ast.Call) and _refuses(n.value, names):
            names.add(n.targets[0].id)
    return names


def _wording(fn: ast.FunctionDef) -> set:
    """Nodes that only word a refusal: the arguments of `.broken(..)`, and names read only there."""
    calls = [n for n in ast.walk(fn) if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute)
             and n.func.attr == "broken"]
    inside = {m for c in calls for a in (*c.args, *c.keywords) for m in ast.walk(a)}
    reads = Counter(n.id for n in ast.walk(fn) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load))
    only_there = {n.id for n in inside if isinstance(n, ast.Name)} - {
        k for k, c in reads.items() if c > sum(1 for n in inside if isinstance(n, ast.Name) and n.id == k)}
    for n in ast.walk(fn):
        if isinstance(n, ast.Assign) and all(isinstance(t, ast.Name) and t.id in only_there for t in n.targets):
            inside |= set(ast.walk(n.value))
    return inside


def _continuation(fn: ast.FunctionDef, stmt: ast.If) -> list:
    """What runs when an `if` without else is not taken: the statements after it in its block."""
    for n in ast.walk(fn):
        for field in ("body", "orelse"):
            block = getattr(n, field, None)
            if isinstance(block, list) and stmt in block:
                return block[block.index(stmt) + 1:]
    return []


def _wants(fn: ast.FunctionDef, refusal: set) -> dict:
    """Condition node -> the truth value that avoids a refusal, for if-tests and their sub-conditions."""
    wants = {}

    def mark(test, want):
        wants[test] = want
        if isinstance(test, ast.BoolOp):
            for v in test.values:
                mark(v, want)
        elif isinstance(test, ast.UnaryOp) and isinstance(test.op, ast.Not):
            mark(test.operand, not want)

    for n in ast.walk(fn):
        if isinstance(n, (ast.If, ast.IfExp)):
            other = n.orelse if n.orelse or isinstance(n, ast.IfExp) else _continuation(fn, n)
            if _refuses(n.body, refusal) or _refuses(other, refusal):  # a refusing body wins
                mark(n.test, not _refuses(n.body, refusal))
    return wants


def _sites(fn: ast.FunctionDef, globals_: dict):
    """(node, operator, replacement) for every permissive edit of the function."""
    refusal = _refusal_names(fn, globals_)
    wants, wording = _wants(fn, refusal), _wording(fn)
    for n in ast.walk(fn):
        if n in wording:
            continue
        yield from _skips(n, refusal)
        if isinstance(n, ast.BoolOp) and (getattr(n, "_named", False) or
                                          n in wants and isinstance(n.op, ast.And) == wants[n]):
            for i in range(len(n.values)):
                rest = n.values[:i] + n.values[i + 1:]
                yield n, "clause", rest[0] if len(rest) == 1 else ast.BoolOp(n.op, rest)
        if _is_condition(n, wants):
            yield from _negations(n)
            yield from _widenings(n, wants.get(n))
        if isinstance(n, ast.Compare) and len(n.ops) == 1 and type(n.ops[0]) in BOUNDARY:
            yield n, "boundary", ast.Compare(n.left, [BOUNDARY[type(n.ops[0])]()], n.comparators)
        if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute) and n.func.attr == "broken":
            yield n, "pass", ast.parse("call.operands()[0].fact", mode="eval").body


def _skips(n, refusal: set):
    if isinstance(n, ast.If) and _refuses(n.body, refusal) and not _refuses(n.orelse, refusal):
        yield n.test, "skip", ast.Constant(False)
    if isinstance(n, ast.If) and n.orelse and _refuses(n.orelse, refusal) and not _refuses(n.body, refusal):
        yield n.test, "skip", ast.Constant(True)
    if isinstance(n, ast.IfExp) and _refuses(n.body, refusal) != _refuses(n.orelse, refusal):
        yield n, "skip", n.orelse if _refuses(n.body, refusal) else n.body
    if isinstance(n, ast.BoolOp) and isinstance(n.op, ast.Or) and not _is_test(n):
        kept = [v for v in n.values if not _refuses(v, refusal)]
        for v in n.values:
            if _refuses(v, refusal) and kept:
                rest = [w for w in n.values if w is not v]
                yield n, "skip", rest[0] if len(rest) == 1 else ast.BoolOp(n.op, rest)


def _is_test(n) -> bool:
    return getattr(n, "_is_test", False)


def _is_condition(n, wants: dict) -> bool:
    """An atomic condition: one the rule branches on, or a boolean it names (`along = ...`)."""
    if isinstance(n, (ast.BoolOp, ast.UnaryOp)) or not getattr(n, "_boolean", False) and n not in wants:
        return False
    return isinstance(n, (ast.Compare, ast.Call, ast.Name, ast.Attribute))


def _negations(n):
    if isinstance(n, ast.Compare) and len(n.ops) == 1:
        yield n, "negate", ast.Compare(n.left, [FLIP[type(n.ops[0])]()], n.comparators)
    elif not isinstance(n, ast.Compare):
        yield n, "negate", ast.UnaryOp(ast.Not(), n)


def _widenings(n, want):
    if want is False:
        return  # a wider test here would refuse more
    if isinstance(n, ast.Call) and isinstance(n.func, ast.Name) and n.func.id == "isinstance" \
            and isinstance(n.args[1], ast.Name):
        for other in CONFUSABLE.get(n.args[1].id, ()):
            kinds = ast.Tuple([n.args[1], ast.Name(other)], ast.Load())
            yield n, "widen", ast.Call(n.func, [n.args[0], kinds], [])
    if isinstance(n, ast.Compare) and len(n.ops) == 1 and isinstance(n.ops[0], ast.Eq):
        right = n.comparators[0]
        if isinstance(right, ast.Call) and isinstance(right.func, ast.Name):
            for other in CONFUSABLE.get(right.func.id, ()):
                alike = ast.Call(ast.Name(other), right.args, right.keywords)
                yield n, "widen", ast.Compare(n.left, [ast.In()], [ast.Tuple([right, alike], ast.Load())])


def _annotate(fn: ast.FunctionDef) -> None:
    """Mark if-tests, and the values of boolean assignments and comparisons used as values."""
    for n in ast.walk(fn):
        if isinstance(n, (ast.If, ast.While, ast.IfExp)):
            n.test._is_test = True
            for m in ast.walk(n.test):
                if isinstance(m, (ast.Compare, ast.Call, ast.Name, ast.Attribute)) and _is_atom_of(n.test, m):
                    m._boolean = True
        if isinstance(n, ast.Assign) and isinstance(n.value, (ast.Compare, ast.BoolOp, ast.UnaryOp)) or \
                isinstance(n, ast.Assign) and _is_isinstance(n.value):
            for m in ast.walk(n.value):
                if isinstance(m, (ast.Compare, ast.Call, ast.Name, ast.Attribute)) and _is_atom_of(n.value, m):
                    m._boolean = True
                if isinstance(m, ast.BoolOp):
                    m._named = True  # its clauses may be dropped either way
        if isinstance(n, ast.Compare):
            for side in (n.left, *n.comparators):
                if isinstance(side, ast.Compare):
                    side._boolean = True


def _is_isinstance(n) -> bool:
    return isinstance(n, ast.Call) and isinstance(n.func, ast.Name) and n.func.id == "isinstance"


def _is_atom_of(test, m) -> bool:
    """m is reached from `test` through and/or/not only: a truth value the branch depends on."""
    if m is test:
        return True
    if isinstance(test, ast.BoolOp):
        return any(_is_atom_of(v, m) for v in test.values)
    if isinstance(test, ast.UnaryOp) and isinstance(test.op, ast.Not):
        return _is_atom_of(test.operand, m)
    return False


def mutants_of(f) -> list[Mutant]:
    """Every permissive mutant of function f, as whole mutated files (identical ones once)."""
    path = Path(inspect.getsourcefile(f))
    text = path.read_text()
    lines = text.splitlines(keepends=True)
    tree = ast.parse(text)
    fn = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == f.__name__)
    _annotate(fn)
    found, seen = [], set()
    for index, (node, operator, new) in enumerate(_sites(fn, f.__globals__)):
        mutated = _replaced(fn, node, new)
        body = ast.unparse(mutated)
        if body in seen or body == ast.unparse(fn):
            continue
        seen.add(body)
        source = "".join(lines[:fn.lineno - 1]) + body + "\n" + "".join(lines[fn.end_lineno:])
        found.append(Mutant(str(path.relative_to(ROOT)), f.__name__, node.lineno, operator,
                            ast.unparse(node), ast.unparse(new), source))
    return found


def _replaced(fn: ast.FunctionDef, target, new) -> ast.FunctionDef:
    """A copy of fn with `target` replaced by `new` (decorators kept, so line numbers move only inside)."""
    class Swap(ast.NodeTransformer):
        def visit(self, node):
            return copy.deepcopy(new) if node is target else super().visit(node)
    return Swap().visit(copy.deepcopy(fn, memo={id(target): target}))


# -- running the kill suite -----------------------------------------------------------------------

def copy_tree(dest: Path) -> None:
    """The working tree as git sees it (tracked and new files), without caches or the venv."""
    names = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                           capture_output=True, check=True).stdout.decode().split("\0")
    for name in filter(None, names):
        src = ROOT / name
        if src.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name)


# pytest in this process: the probe and the swapped code are seen only here, so no xdist workers
# (the suite's addopts, which ask for them, are dropped).
IN_PROCESS = ["-q", "-p", "no:cacheprovider", "-p", "no:xdist", "-o", "addopts="]


def _warm(tests: list) -> None:
    """Import torch and onnxruntime and collect the suite once, so each forked child starts warm."""
    import onnxruntime  # noqa: F401
    import pytest
    import torch  # noqa: F401
    with open(os.devnull, "w") as quiet:
        saved, sys.stdout = sys.stdout, quiet
        try:
            pytest.main([*tests, "--collect-only", *IN_PROCESS])
        finally:
            sys.stdout = saved


def _pytest(args: list, plugin) -> int:
    """pytest in this (forked) process, its output discarded."""
    import pytest
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    os.dup2(devnull, 2)
    return int(pytest.main([*args, *IN_PROCESS], plugins=[plugin]))


_CHILD = [None]  # the forked child running now, which a stopped worker takes down with it


def _stop(*_) -> None:
    if _CHILD[0]:
        os.killpg(_CHILD[0], signal.SIGKILL)
    os._exit(1)


def _forked(work, timeout: float) -> tuple[int | None, float]:
    """Run work() in a forked child in its own process group (so a timeout also ends the
    subprocesses it started): its exit status, None on a timeout, and the seconds it took."""
    start = time.monotonic()
    pid = _CHILD[0] = os.fork()
    if pid == 0:
        try:
            os.setpgid(0, 0)
            os._exit(work())
        except BaseException:
            os._exit(3)  # a mutant that cannot even load counts as killed
    while time.monotonic() - start < timeout:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status), time.monotonic() - start
        time.sleep(0.05)
    os.killpg(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    return None, timeout


def baseline(tests: list, out: Path, timeout: float) -> None:
    """Run the unmutated suite once with every rule probed: which in-process test reaches which rule,
    and how long each test takes. Tests that reach the rules only through a subprocess (`invc` on
    the command line) are not seen, so they are never run on a mutant: the score errs low."""
    _warm(tests)
    rules = {f"{f.__module__}.{f.__name__}": f for f in rule_functions()}

    def work():
        current, reached, seconds = [None], {}, {}
        for name, f in rules.items():
            f.__code__ = _probed(f, name)
            f.__globals__["__mutants_probe__"] = lambda name: reached.setdefault(current[0], set()).add(name)

        class Record:
            def pytest_runtest_logstart(self, nodeid, location):
                current[0] = nodeid

            def pytest_runtest_logreport(self, report):
                seconds[report.nodeid] = seconds.get(report.nodeid, 0.0) + report.duration
                if report.failed:
                    failed.append(f"{report.nodeid}: {report.longreprtext.splitlines()[-1:]}")
        failed = []
        code = _pytest(tests, Record())
        out.write_text(json.dumps({"status": code, "failed": failed, "seconds": seconds,
                                   "reached": {k: sorted(v) for k, v in reached.items() if k}}))
        return 0
    _forked(work, timeout)


def _probed(f, name: str):
    """f's code with a first statement that reports the call: `__mutants_probe__(name)`."""
    path = inspect.getsourcefile(f)
    tree = ast.parse(Path(path).read_text())
    fn = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == f.__name__)
    probe = ast.Expr(ast.Call(ast.Name("__mutants_probe__", ast.Load()), [ast.Constant(name)], []))
    fn.body.insert(0, ast.copy_location(probe, fn.body[0]))
    ast.fix_missing_locations(fn)
    code = compile(ast.Module([fn], []), path, "exec")
    return next(c for c in code.co_consts if getattr(c, "co_name", None) == f.__name__)


def serve(shard: Path, timeout: float) -> None:
    """A worker, run inside its copy of the tree: warm up once, then fork one child per mutant that
    runs the tests reaching the mutated rule, fastest first, up to the first failure."""
    plan = json.loads(shard.read_text())
    _warm(sorted({t.split("::")[0] for ts in plan["tests"].values() for t in ts}))
    signal.signal(signal.SIGTERM, _stop)
    for m in map(lambda d: Mutant(**d), plan["mutants"]):
        path = Path(m.file)
        original = path.read_text()
        path.write_text(m.source)  # for tests that start `invc` in a subprocess
        try:
            outcome = _run_mutant(m, plan["tests"].get(f"{m.module}.{m.function}", []), timeout)
        finally:
            path.write_text(original)
        print(json.dumps({"mutant": asdict(m) | {"source": ""}, **outcome}), flush=True)


def _run_mutant(m: Mutant, tests: list, timeout: float) -> dict:
    if not tests:
        return {"killed": False, "by": ["no test reaches it"], "seconds": 0.0}
    report = Path(tempfile.mkstemp(suffix=".json")[1])

    def work():
        module = importlib.import_module(m.module)
        code = compile(m.source, str(Path(m.file).resolve()), "exec")
        getattr(module, m.function).__code__ = next(c for c in code.co_consts
                                                    if getattr(c, "co_name", None) == m.function)
        failed = []

        class Record:
            def pytest_runtest_logreport(self, report):
                if report.failed:
                    failed.append(report.nodeid)
        code = _pytest([*tests, "-x"], Record())
        report.write_text(json.dumps(failed))
        return code
    code, seconds = _forked(work, timeout)
    failed = json.loads(report.read_text() or "[]")
    report.unlink()
    if code is None:  # on a loaded machine a slow suite looks like a hang: count it as a survivor
        return {"killed": False, "by": [f"timeout after {timeout:.0f} s"], "seconds": seconds}
    return {"killed": code != 0, "by": failed[:1] or [f"exit {code}"], "seconds": seconds}


def _worker(tree: Path, args: list, **popen) -> subprocess.Popen:
    env = os.environ | {"PYTHONPATH": str(tree), "PYTHONDONTWRITEBYTECODE": "1"}
    return subprocess.Popen([sys.executable, str(tree / "benchmarks/mutants.py"), *args], cwd=tree, env=env, **popen)


def run(mutants: list[Mutant], jobs: int, tests: list, timeout: float, reached: Path | None):
    """Yield each mutant's outcome as the workers report it."""
    with tempfile.TemporaryDirectory(prefix="invc-mutants-") as tmp:
        trees = [Path(tmp) / f"tree{j}" for j in range(jobs)]
        for tree in trees:
            copy_tree(tree)
        if reached is None or not reached.exists():
            reached = reached or Path(tmp) / "reached.json"
            _worker(trees[0], ["--baseline", str(reached.resolve()), "--tests", *tests]).wait()
        found = json.loads(reached.read_text()) if reached.exists() else {"status": "no report"}
        if found["status"] != 0:
            sys.exit(f"the unmutated kill suite does not pass (pytest status {found['status']}): fix that first\n"
                     + "\n".join(found.get("failed", [])))
        if not found["reached"]:  # a probe that saw no rule would score every mutant a survivor
            sys.exit("the probe saw no test reach a rule: were the tests run in another process?")
        order = sorted(found["seconds"], key=found["seconds"].get)
        per_rule = {rule: [t for t in order if rule in found["reached"].get(t, ())]
                    for rule in {r for v in found["reached"].values() for r in v}}
        workers = []
        try:
            for j, tree in enumerate(trees):
                shard = Path(tmp) / f"shard{j}.json"
                shard.write_text(json.dumps({"mutants": [asdict(m) for m in mutants[j::jobs]], "tests": per_rule}))
                workers.append(_worker(tree, ["--serve", str(shard), "--timeout", str(timeout)],
                                       stdout=subprocess.PIPE, text=True))
            yield from _lines(workers)
        finally:
            for w in workers:
                w.terminate()


def _lines(workers: list):
    """Each worker's JSON lines as they come, whichever worker writes first."""
    lines = queue.Queue()

    def read(w):
        for line in w.stdout:
            lines.put(json.loads(line))
        lines.put(None)
    for w in workers:
        threading.Thread(target=read, args=(w,), daemon=True).start()
    done = 0
    while done < len(workers):
        item = lines.get()
        done += item is None
        if item is not None:
            yield item


def summary(results: list) -> str:
    killed = [r for r in results if r["killed"]]
    by_op = Counter((r["mutant"]["operator"], r["killed"]) for r in results)
    ops = sorted({r["mutant"]["operator"] for r in results})
    rows = [f"  {op:9} {by_op[op, True]:4} killed of {by_op[op, True] + by_op[op, False]:4}" for op in ops]
    alive = [r for r in results if not r["killed"]]
    score = 100 * len(killed) / max(len(results), 1)
    return "\n".join([f"mutation score: {len(killed)} of {len(results)} permissive mutants killed ({score:.1f}%)",
                      *rows, f"survivors ({len(alive)}):",
                      *(f"  {Mutant(**r['mutant']).where()}" + (f"  ({r['by'][0]})" if "timeout" in r["by"][0] else "")
                        for r in sorted(alive, key=lambda r: (r["mutant"]["file"], r["mutant"]["line"])))])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--jobs", type=int, default=2, help="workers, each with its own copy of the tree")
    p.add_argument("--file", action="append", help="only the rules in this file (repeatable), e.g. ops/sets.py")
    p.add_argument("--function", action="append", help="only this function (repeatable)")
    p.add_argument("--operator", action="append", help="only this operator (repeatable)")
    p.add_argument("--tests", nargs="+", default=list(KILL_SUITE), help="the kill suite, fastest first")
    p.add_argument("--timeout", type=float, default=600, help="seconds per mutant; a timeout counts as a survivor")
    p.add_argument("--list", action="store_true", help="print the mutants, run nothing")
    p.add_argument("--json", type=Path, help="write every outcome here")
    p.add_argument("--rerun", type=Path, help="only the survivors of this earlier --json run")
    p.add_argument("--reached", type=Path, help="the unmutated run's report: reused if it exists, else written")
    p.add_argument("--serve", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--baseline", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    if args.serve:
        serve(args.serve, args.timeout)
        return 0
    if args.baseline:
        baseline(args.tests, args.baseline, 3600)
        return 0
    mutants = [m for f in rule_functions() for m in mutants_of(f)
               if (not args.file or m.file in args.file) and (not args.function or m.function in args.function)
               and (not args.operator or m.operator in args.operator)]
    if args.file:  # in the order given: the files that matter most first
        mutants.sort(key=lambda m: args.file.index(m.file))
    earlier = []  # with --rerun: the mutants killed before, which added tests cannot revive
    if args.rerun:
        before = json.loads(args.rerun.read_text())
        earlier = [r for r in before if r["killed"]]
        alive = {Mutant(**r["mutant"]).where() for r in before if not r["killed"]}
        mutants = [m for m in mutants if m.where() in alive]
    if args.list:
        print("\n".join(m.where() for m in mutants) + f"\n{len(mutants)} mutants")
        return 0
    print(f"{len(mutants)} mutants, {args.jobs} jobs, kill suite: {' '.join(args.tests)}", flush=True)
    results = []
    for r in run(mutants, args.jobs, args.tests, args.timeout, args.reached):
        results.append(r)
        state = "killed  " if r["killed"] else "SURVIVED"
        print(f"[{len(results)}/{len(mutants)}] {state} {r['seconds']:5.1f} s  {Mutant(**r['mutant']).where()}"
              + (f"  by {r['by'][0]}" if r["killed"] else ""), flush=True)
        if args.json:  # after each mutant, so a sweep stopped part way keeps what ran for --rerun
            args.json.write_text(json.dumps(earlier + results, indent=1))
    print(summary(earlier + results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
