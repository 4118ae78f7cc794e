"""The soundness harness for captured torch models (tests/capture_programs.py), CI-sized: random torch
programs and mutated layers, captured by invc, whose proved claims are measured in float64 with
redrawn weights. The full run is benchmarks/capture_soundness.py."""
import random
from dataclasses import replace

import pytest

from capture_programs import PYG, Drawn, harness, program, run, shrink

from ops.registry import VOCABULARY
from tests.graphs import CAPTURED_ONLY

SEEDS = range(120)  # about 30 s on 2 cores


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
    assert counts["claims proved"] >= 120 and counts["claims refused"] >= 50, counts
    assert counts["mutant"] >= 20, counts


def test_a_correct_layer_is_proved_and_its_mutation_refused():
    """The unmutated EGNN layer is proved whole under E(3) x S(N); with the difference of positions
    made a sum (a position no more, under translations), x2 is refused."""
    seed = next(s for s in SEEDS if program(s).kind == "mutant of egnn" and not program(s).mutation)
    d = replace(program(seed), groups=["E(3)", "S(N)"])
    o = run(d, seed)
    assert o.status == "checked" and len(o.proved) == 4 and not o.refused, o
    d.lines = [line.replace("x[row] - x[col]", "x[row] + x[col]") for line in d.lines]
    o = run(d, seed)
    assert ("o1", "E(3)", "moved like a position on axis 1") in [r[:3] for r in o.refused], o
    assert not o.false_proofs, o


def test_the_harness_catches_a_rule_made_too_permissive_and_shrinks_it(monkeypatch):
    """A `-` rule that passes its left operand's fact on makes a centred cloud a position: the harness
    measures the false proof and shrinks the program to that one statement."""
    sub = VOCABULARY.graph["sub"]
    monkeypatch.setitem(VOCABULARY.graph, "sub", replace(sub, symmetry=lambda call: call.operands()[0].fact))
    d = Drawn(random.Random(0), "drawn", groups=["E(3)"])
    pos = d.input("pos", ("B", "N", 3), "position")
    centred = d.bind("pos - pos.mean(1, keepdim=True)", pos.dims)
    squared = d.bind(f"({centred.name} * {centred.name}).sum(-1)", pos.dims[:2])
    d.outputs = [(centred, None), (squared, "invariant")]
    o = run(d, 0)
    assert ("o0", "E(3)", "moved like a position on axis 2") in [r[:3] for r in o.false_proofs], o
    smallest = shrink(d, o, 0)
    forward = smallest.text.split("def forward")[1].split("return")[0]
    assert smallest.false_proofs and forward.count(" = ") == 1, smallest.text


def test_a_change_in_place_through_a_view_is_no_false_proof():
    """A clamp_ through a view of an intermediate: functionalized before lifting, so what is proved is
    what the model computes (the replay's unit examples never reach the cap)."""
    d = Drawn(random.Random(0), "drawn", groups=["E(3)"])
    pos = d.input("pos", ("N", 3), "position")
    d.lines = ["c = pos - pos.mean(0, keepdim=True)", "c[:, 0].clamp_(max=2.5)"]
    d.outputs = [(replace(pos, name="c"), "vector")]
    o = run(d, 0)
    assert o.status in ("checked", "refused") and not o.false_proofs, o


def test_the_two_harnesses_draw_every_graph_op_of_the_registry(ci_run):
    """The graph ops only captured graphs hold (kept ATen ops, weights, aranges, masks...) are drawn here:
    with the spec harness's draws, every rule of the registry is checked by the numbers."""
    from soundness import drawn_graph_ops
    from test_soundness import NOT_IN_SPECS, SEEDS as SPEC_SEEDS
    captured = {key.removeprefix("graph op ") for key in ci_run[0] if key.startswith("graph op ")}
    neither = set(NOT_IN_SPECS) - set(CAPTURED_ONLY)  # made after the proofs, or read only by verify
    never = set(VOCABULARY.graph) - captured - set(drawn_graph_ops(SPEC_SEEDS)) - neither
    assert not never, f"graph ops neither harness draws: {', '.join(sorted(never))}"


@pytest.mark.skipif(not PYG, reason="torch_geometric is not installed")
def test_pyg_layers_are_drawn():
    assert any("gnn." in program(s).source().split("class Net", 1)[1] for s in SEEDS)
