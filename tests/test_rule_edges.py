"""Each symmetry rule at its edges: a claim one step past what a rule may accept is refused, with the
reason of the branch that must refuse it, and measured false, so the refusal is no false alarm.
Each entry kills mutants of benchmarks/mutants.py that make that branch accept (BENCHMARKS.md,
"Mutation testing of the symmetry rules"); the two planted bugs of issue 21 come first."""
import pytest

from dsl.errors import SpecError
from dsl.symmetry import verdicts
from test_symmetry import E3, POS, SN, VECS, VEL, X, assert_refused_claim_is_false, checked, measure

Q = "input q: f32[B, N, 1] is scalar"
ROLES = 'roles=["position", "vector", "scalar"]'

REFUSED = {  # lines, words of the refusal
    # gather's relabelling condition: ids that S(N) relabels read a tensor that is not permuted with
    # them (a fixed table), so the rows picked change with the relabelling.
    "relabelled ids gathering a fixed table": ([SN, "input h: f32[N, 4]", "input t: f32[12, 4]",
                                                "input s: i64[E] is index(N)",
                                                "y = gather(t, s, axis=0)", "output y is invariant"],
                                               "gather of an invariant by indices that S(N) relabels"),
    # frame_in: a position given the vector role is rotated but never centred, so it moves with t.
    "a position given the vector role": ([E3, POS, "input pos2: f32[B, N, 3] is position", Q,
                                          f"y = frame_average(mixing, [pos, pos2, q], {ROLES})", "output y is invariant"],
                                         "frame_in of a position"),
    # attention with the 3 coordinates as its sequence: softmax weights between coordinates.
    "attention along the coordinates": ([E3, VECS, "t = transpose(v, 1, 2)", "y = transpose(attention(t), 1, 2)",
                                         "output y is vector"], "attention over a vector"),
}


@pytest.mark.parametrize("lines, message", REFUSED.values(), ids=REFUSED.keys())
def test_a_claim_past_the_rule_is_refused_and_measured_false(lines, message):
    with pytest.raises(SpecError) as e:
        checked(*lines)
    assert message in e.value.message, e.value.message
    assert_refused_claim_is_false(lines)


PROVED = {  # true claims a rule must not refuse, next to the edges above
    # softmax weights are invariants: they scale a vector like any other invariant does.
    "softmax weights scale vectors": [E3, VEL, X, "w = softmax(linear(x, 1), axis=N)", "y = sum(w * vel, axis=N)",
                                      "output y is vector"],
}


@pytest.mark.parametrize("lines", PROVED.values(), ids=PROVED.keys())
def test_a_true_claim_at_the_edge_is_proved_and_measured(lines):
    m = checked(*lines)
    assert all(v.holds for v in verdicts(m))
    measure(m)
