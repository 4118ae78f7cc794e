"""The project's spec fuzzer (compiler/fuzz.py), CI-sized: grammar derivations and hostile mutations of the
examples each end in a checked model or a SpecError that points into its file, never another
exception; a model the checker accepts also lowers. benchmarks/fuzz_specs.py runs 10,000 and more."""
import math
import random
from pathlib import Path

import pytest

from compiler import fuzz
from compiler.lower import lower

EXAMPLES = fuzz.example_texts(Path(__file__).resolve().parent.parent / "examples")
CASES = 2500  # about 15 s on 2 cores


def lower_small(model):
    """Lower what fits in a test's memory; the parameter limit bounds the rest."""
    if sum(math.prod(p.shape) for n in model.nodes for p in n.params.values()) < 10_000_000:
        lower(model)


def test_fuzzed_specs_are_checked_or_refused_never_crash(tmp_path):
    outcomes, crashes = {"checked": 0, "refused": 0}, []
    for _, (kind, files) in zip(range(CASES), fuzz.cases(random.Random(20261201), EXAMPLES)):
        outcome, _, detail = fuzz.run(files, tmp_path, lower_small)
        if outcome == "crashed":
            crashes.append((kind, files[fuzz.ROOT][:300], detail))
        else:
            outcomes[outcome] += 1
    assert not crashes, crashes[:3]
    # The batch must reach both ends: a fuzzer whose cases all fail to parse tests nothing.
    assert outcomes["checked"] > CASES // 50 and outcomes["refused"] > CASES // 2, outcomes


@pytest.mark.parametrize("mutate", fuzz.MUTATIONS, ids=lambda m: m.__name__.strip("_"))
def test_each_mutation_changes_an_example(mutate):
    rng = random.Random(1)
    assert any(mutate(rng, text) != text for text in EXAMPLES for _ in range(3))


def test_grammar_derivations_parse_often():
    """Derivations follow the grammar, so most get past the parser (junk names fail later)."""
    from dsl.errors import SpecError
    from dsl.parser import parse
    grammar, rng, parsed = fuzz.Grammar(), random.Random(2), 0
    for _ in range(200):
        try:
            parse(grammar.text(rng, budget=8), "g.inv")
            parsed += 1
        except SpecError as e:
            assert "NUL" in e.message or "integer" in e.message or "nesting" in e.message, e.message
    assert parsed > 150
