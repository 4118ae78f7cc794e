"""A spec fuzzer: random derivations of dsl/grammar.lark, and hostile mutations of the examples.

The promise it checks: every text, valid or not, ends in a checked model or a SpecError, quickly;
never another exception. tests/test_spec_fuzz.py runs a CI-sized batch, benchmarks/fuzz_specs.py
a benchmark-sized one.

    cases = fuzz.cases(random.Random(0), examples)     # endless (name, files) pairs
    outcome = fuzz.run(files)                          # ("checked" | "refused" | "crashed", seconds, detail)

A case is a dict of file name -> text with the root spec under ROOT, so import cycles and diamonds
can be built; texts may hold any unicode, including lone surrogates and NUL.

Its deep stage, compiler/fuzz_deep.py, goes past the checker: well-typed models compiled to ONNX
and run in torch and onnxruntime on valid, empty and out-of-range inputs.
"""
from __future__ import annotations

import os
import random
import re
import tempfile
import time
import traceback
from pathlib import Path

from ops.registry import check
from dsl.errors import SpecError
from dsl.parser import _lark
from dsl.program import load

ROOT = "root.inv"

# Values for the grammar's regex terminals: the names and numbers a spec uses, and some it should not.
NAMES = ["x", "h", "y", "m", "B", "N", "S", "D", "f32", "i64", "bool", "f16", "int", "float", "str",
         "linear", "mlp", "relu", "sum", "max", "pool", "attention", "embedding", "reshape", "concat",
         "layernorm", "frame_average", "segment_pool", "softmax", "permute", "E", "O", "SO", "position",
         "vector", "invariant", "scalar", "widths", "axis", "mask", "kind", "blk", "forward", "__init__",
         "training", "_", "model", "def"]
NUMBERS = ["0", "1", "2", "3", "4", "16", "64", "0.5", "1e-5", "1e400", ".5", "9" * 25, "9223372036854775807",
           "9223372036854775808", "3037000500", "00000000000000000000001"]
STRINGS = ['"relu"', '"sum"', '"max"', '"E(3)"', '"invariant"', '"position"', '""', '"blocks.inv"',
           '"root.inv"', '"../x.inv"', '"/etc/passwd"', '"a\x00b.inv"', '"\u00e9\u00e8.inv"', '"' + "a" * 300 + '"']
TERMINAL_VALUES = {"NAME": NAMES, "NUMBER": NUMBERS, "STRING": STRINGS}


class Grammar:
    """Random derivations of the spec grammar, bounded in depth by taking the shortest way out."""

    def __init__(self):
        lark = _lark()
        self.rules: dict[str, list[list]] = {}
        for r in lark.rules:
            self.rules.setdefault(r.origin.name, []).append(r.expansion)
        self.literals = {t.name: t.pattern.value for t in lark.terminals if type(t.pattern).__name__ == "PatternStr"}
        self.height = self._heights()

    def _heights(self) -> dict[str, int]:
        """The fewest levels each nonterminal needs to reach terminals (a fixpoint)."""
        height: dict[str, int] = {}
        changed = True
        while changed:
            changed = False
            for name, expansions in self.rules.items():
                for exp in expansions:
                    inner = [height.get(s.name) for s in exp if not s.is_term]
                    if None not in inner:
                        h = 1 + max(inner, default=0)
                        if h < height.get(name, 1 << 30):
                            height[name], changed = h, True
        return height

    def text(self, rng: random.Random, start: str = "start", budget: int = 12) -> str:
        out: list[str] = []
        self._expand(rng, start, budget, out)
        return " ".join(out)

    def _expand(self, rng, name: str, budget: int, out: list[str]) -> None:
        expansions = self.rules[name]
        if budget <= 0:  # only the ways out that end soonest
            best = min(self._cost(e) for e in expansions)
            expansions = [e for e in expansions if self._cost(e) == best]
        for sym in rng.choice(expansions):
            if sym.is_term:
                out.append(self.literals.get(sym.name) or rng.choice(TERMINAL_VALUES[sym.name]))
            else:
                self._expand(rng, sym.name, budget - 1, out)

    def _cost(self, expansion) -> int:
        return max((self.height[s.name] for s in expansion if not s.is_term), default=0)


TOKEN = re.compile(r'"[^"\n]*"|[A-Za-z_][A-Za-z_0-9]*|\d+(?:\.\d*)?(?:[eE][-+]?\d+)?|\S')


def _tokens(text: str) -> list[str]:
    return TOKEN.findall(text)


# Each mutation takes (rng, text) to a new text.
def _delete(rng, text):
    toks = _tokens(text)
    if toks:
        del toks[rng.randrange(len(toks))]
    return " ".join(toks)


def _duplicate(rng, text):
    toks = _tokens(text)
    if toks:
        i = rng.randrange(len(toks))
        toks.insert(i, toks[i])
    return " ".join(toks)


def _swap(rng, text):
    toks = _tokens(text)
    if len(toks) > 1:
        i, j = rng.randrange(len(toks)), rng.randrange(len(toks))
        toks[i], toks[j] = toks[j], toks[i]
    return " ".join(toks)


def _replace_word(rng, text):
    """A name or number swapped for another the language knows: deeper into the checker than junk."""
    toks = _tokens(text)
    words = [i for i, t in enumerate(toks) if t[0].isalnum() or t[0] == "_"]
    if words:
        i = rng.choice(words)
        toks[i] = rng.choice(NUMBERS[:8] if toks[i][0].isdigit() else NAMES)
    return " ".join(toks)


def _random_chars(rng, text):
    pool = "\x00\x01\t\r\n\x7f\u00a0\u200b\u2028\ufeff\ud800\udfff\U0001f600\u0301{}[]()=,:#\"\\"
    i = rng.randrange(len(text) + 1)
    junk = "".join(rng.choice(pool) if rng.random() < 0.5 else chr(rng.randrange(0x20, 0x3000))
                   for _ in range(rng.randrange(1, 6)))
    return text[:i] + junk + text[i:]


def _bom_crlf(rng, text):
    return rng.choice(["\ufeff", ""]) + text.replace("\n", rng.choice(["\r\n", "\r", "\n\n"]))


def _huge_number(rng, text):
    numbers = list(re.finditer(r"\b\d+\b", text))
    big = rng.choice(["9" * rng.choice([19, 20, 400, 5000]), "1e999", "18446744073709551616"])
    if not numbers:
        return text + big
    m = rng.choice(numbers)
    return text[:m.start()] + big + text[m.end():]


def _deep_nesting(rng, text):
    depth = rng.choice([50, 99, 101, 500, 3000])
    opener, closer = rng.choice([("-", ""), ("relu(", ")"), ("[", "]"), ("(", ")"), ("x + ", "")])
    m = re.search(r"=\s*([^\n]+)", text)
    if not m:
        return opener * depth + text
    return text[:m.start(1)] + opener * depth + m.group(1) + closer * depth + text[m.end(1):]


def _long_line(rng, text):
    filler = rng.choice(["a" * 200_000, "# " + "x" * 200_000, "x + " * 20_000 + "x", "[" + "1, " * 50_000 + "1]"])
    i = rng.randrange(len(text) + 1)
    return text[:i] + "\n" + filler + "\n" + text[i:]


def _recursive_defs(rng, text):
    return rng.choice(["def f(x) { return f(x) }\n", "def f(x) { return g(x) }\ndef g(x) { return f(x) }\n",
                       "def f(x) { h = f(x) repeat 2\n return h }\n"]) + text.replace("mlp(", "f(", 1)


def _big_repeat(rng, text):
    return re.sub(r"repeat \w+", f"repeat {rng.choice([0, -1, 1001, 100_000, 10**7])}", text, count=1) \
        if "repeat" in text else text


MUTATIONS = [_delete, _duplicate, _swap, _replace_word, _random_chars, _bom_crlf, _huge_number, _deep_nesting, _long_line,
             _recursive_defs, _big_repeat]


def _imports(rng, text) -> dict[str, str]:
    """A root spec with imports: a cycle, a self-import, a diamond, or a missing or escaping path."""
    kind = rng.choice(["cycle", "self", "diamond", "missing", "escape"])
    files = {ROOT: text}
    if kind == "cycle":
        files.update({"a.inv": 'import "b.inv"\n', "b.inv": 'import "a.inv"\n'})
        files[ROOT] = 'import "a.inv"\n' + text
    elif kind == "self":
        files[ROOT] = f'import "{ROOT}"\n' + text
    elif kind == "diamond":
        files.update({"a.inv": 'import "c.inv"\n', "b.inv": 'import "c.inv"\n',
                      "c.inv": "def blk(x) { return relu(x) }\n"})
        files[ROOT] = 'import "a.inv"\nimport "b.inv"\n' + text.replace("mlp(", "blk(", 1)
    else:
        files[ROOT] = f'import "{"nope.inv" if kind == "missing" else "../outside.inv"}"\n' + text
    return files


def cases(rng: random.Random, examples: list[str]):
    """Endless (kind, files) cases: a third from the grammar, the rest mutated examples."""
    grammar = Grammar()
    while True:
        roll = rng.random()
        if roll < 0.3:
            yield "grammar", {ROOT: grammar.text(rng, budget=rng.choice([6, 10, 14]))}
            continue
        text = rng.choice(examples)
        mutations = rng.sample(MUTATIONS, rng.choice([1, 1, 2, 3]))
        for mutate in mutations:
            text = mutate(rng, text)
        kind = "+".join(m.__name__.strip("_") for m in mutations)
        if roll > 0.9:
            yield kind + "+imports", _imports(rng, text)
        else:
            yield kind, {ROOT: text}


def run(files: dict[str, str], folder: str | Path | None = None, lower=None) -> tuple[str, float, str]:
    """Check the case's root spec: ("checked" | "refused" | "crashed", seconds, detail). With
    `lower` (compiler.lower.lower, passed in so this module needs no torch) a checked model is lowered too:
    lowering must never refuse what the checker accepted."""
    with tempfile.TemporaryDirectory(dir=folder) as tmp:
        for name, text in files.items():
            Path(tmp, name).write_bytes(text.encode("utf-8", "surrogatepass"))
        t0 = time.perf_counter()
        try:
            model = check(load(os.path.join(tmp, ROOT)))
            if lower is not None:
                lower(model)
            outcome, detail = "checked", model.name
        except SpecError as e:
            outcome, detail = "refused", e.message
            problem = _misplaced(e, files, tmp)
            if problem:
                outcome, detail = "crashed", problem
        except Exception:  # noqa: BLE001 - this is what the fuzzer looks for
            outcome, detail = "crashed", traceback.format_exc(limit=-4)
        return outcome, time.perf_counter() - t0, detail


def _misplaced(e: SpecError, files: dict[str, str], tmp: str) -> str | None:
    """Why a refusal points nowhere useful, or None: a line error must point into its file."""
    if e.line == 0:
        return None
    name = os.path.relpath(e.file, tmp) if os.path.isabs(e.file) else os.path.basename(e.file)
    text = files.get(name)
    if text is None:
        return f"error in unknown file {e.file!r}: {e.message}"
    lines = text.removeprefix("\ufeff").split("\n")  # lines as lark counts them
    if not (1 <= e.line <= len(lines) and 1 <= e.column <= len(lines[e.line - 1]) + 1):
        return f"position {e.line}:{e.column} is outside {name}: {e.message}"
    return None


def example_texts(folder: str | Path) -> list[str]:
    return [p.read_text() for p in sorted(Path(folder).glob("*.inv"))]

