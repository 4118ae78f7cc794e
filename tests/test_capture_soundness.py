"""The soundness harness for captured torch models (tests/capture_programs.py), CI-sized: random torch
programs and mutated layers, captured by invc, whose proved claims are measured in float64 with
redrawn weights. The full run is benchmarks/capture_soundness.py."""
from dataclasses import replace

import pytest

from capture_programs import PYG, harness, mutant, program, run

from ops.registry import VOCABULARY

SEEDS = range(100)  # about 40 s on 2 cores


@pytest.fixture(scope="module")
def ci_run():
    return harness(SEEDS)


def test_no_captured_program_crashes_the_checker_or_gets_a_false_proof(ci_run):
    counts, findings, _ = ci_run
    assert not findings, "\n\n".join(f"program {f.seed}: {f.status} {f.crash} {f.false_proofs}\n{f.text}"
                                     for f in findings)


def test_the_draw_exercises_proofs_and_refusals(ci_run):
    """Most programs must capture, and both halves must be common: proofs to measure, refusals."""
    counts, _, refusals = ci_run
    assert counts["checked"] >= 0.8 * counts["programs"], counts
    assert counts["claims proved"] >= 150 and counts["claims refused"] >= 40, counts
    assert counts["mutant"] >= 20, counts


def test_a_correct_layer_is_proved_and_its_mutation_refused():
    """The unmutated EGNN layer is proved whole; dropping the difference of positions is refused."""
    rng_seed = next(s for s in range(100) if program(s).kind == "mutant of egnn" and not program(s).mutation)
    o = run(program(rng_seed), rng_seed)
    assert o.status == "checked" and not o.refused and not o.false_proofs, o
    d = program(rng_seed)
    d.lines = [line.replace("x[row] - x[col]", "x[row] + x[col]") for line in d.lines]
    o = run(d, rng_seed)
    assert o.refused and not o.false_proofs, o


def test_the_harness_catches_a_rule_made_too_permissive_and_shrinks_it(monkeypatch):
    """A `-` rule that passes its left operand's fact on (so a position minus a position stays a
    position) must be caught on captured programs too, and shrunk to a few statements."""
    sub = VOCABULARY.graph["sub"]
    monkeypatch.setitem(VOCABULARY.graph, "sub", replace(sub, symmetry=lambda call: call.operands()[0].fact))
    counts, findings, _ = harness(range(30))
    false = [f for f in findings if f.false_proofs]
    assert counts["false proofs"] >= 1 and false, counts
    smallest = min(false, key=lambda f: f.text.count(" = "))
    assert smallest.text.count(" = ") <= 4, smallest.text


@pytest.mark.skipif(not PYG, reason="torch_geometric is not installed")
def test_pyg_layers_are_drawn():
    assert any("gnn." in program(s).source().split("class Net", 1)[1] for s in SEEDS)
