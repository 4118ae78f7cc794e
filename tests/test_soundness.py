"""The differential soundness harness (tests/soundness.py), CI-sized: random specs whose proved
claims are measured in float64 with freshly drawn weights. The benchmark-sized run is
benchmarks/soundness.py; its figures are in BENCHMARKS.md."""
from dataclasses import replace

from soundness import harness

from ops.registry import VOCABULARY

SEEDS = range(500)  # about 20 s on 2 cores


def test_no_drawn_spec_crashes_the_checker_or_gets_a_false_proof():
    counts, findings, _ = harness(SEEDS)
    assert not findings, "\n\n".join(f"seed {f.seed}: {f.status} {f.crash} {f.false_proofs}\n{f.text}"
                                     for f in findings)
    # The draw must exercise both halves: many proofs to measure, many refusals.
    assert counts["claims proved"] >= 150 and counts["claims refused"] >= 50, counts
    assert counts["ill-typed"] <= 0.2 * counts["specs"], counts


def test_the_harness_catches_a_rule_made_too_permissive_and_shrinks_it(monkeypatch):
    """A `-` rule that passes its left operand's fact on (so a vector minus a position would be a
    vector) must be caught, and the failure shrunk to a spec of a few statements."""
    sub = VOCABULARY.graph["sub"]
    monkeypatch.setitem(VOCABULARY.graph, "sub", replace(sub, symmetry=lambda call: call.operands()[0].fact))
    counts, findings, _ = harness(range(40))
    false = [f for f in findings if f.false_proofs]
    assert counts["false proofs"] >= 1 and false, counts
    smallest = min(false, key=lambda f: f.text.count(" = "))
    assert smallest.text.count(" = ") <= 3, smallest.text
