"""Each symmetry rule at its edges: a claim one step past what a rule may accept is refused, with the
reason of the branch that must refuse it, and measured false, so the refusal is no false alarm.
Each entry kills mutants of benchmarks/mutants.py that make that branch accept (BENCHMARKS.md,
"Mutation testing of the symmetry rules"); the two planted bugs of issue 21 come first."""
import importlib.util
import itertools
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from dsl.errors import SpecError
from dsl.groups import Broken, Invariant, Permutations, Permuted, Relabeled
from dsl.symmetry_rules import Call, Operand, apply
from dsl.symmetry import verdicts
from ops.registry import VOCABULARY
from test_symmetry import E3, POS, SN, VECS, VEL, X, assert_refused_and_false, checked, measure

ROOT = Path(__file__).resolve().parent.parent
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
    # a mask permuted by S(N) over rows that S(N) leaves in place (sets fixed by ids that do not
    # relabel): the mask picks other rows after a permutation.
    "a permuted mask over fixed rows": ([SN, "input x: f32[R, 4]", "input ids: i64[R]", "input like: f32[N, 1]",
                                         "input mask: bool[2, N]", "t = unsqueeze(scatter_pool(x, ids, like=like), 0)",
                                         "t = concat(t, t, axis=0)",  # verify's first set is all padding
                                         'y = pool(t, axis=1, kind="sum", mask=mask)', "output y is invariant"],
                                        "with a mask not permuted like its input"),
    # rows permuted by S(N) (axis 0) against set elements it leaves in place (axis 1), masked by a
    # mask it permutes on both: attention_pool's weights then follow the mask, not the elements.
    "an attention pool whose mask moves more than its input": (
        [SN, "input h: f32[N, 4]", "input x: f32[R, 4]", "input ids: i64[R]", "input m: bool[N, N]",
         "u = scatter_pool(x, ids, like=h)", "v = unsqueeze(h, 1) + unsqueeze(u, 0)",
         "y = attention_pool(v, axis=1, mask=m)", "output y is scalar"], "with a mask not permuted like its input"),
    # attention over rows that S(N) leaves in place, masked by a mask it permutes: other keys are
    # hidden after a permutation (verify's first set is all padding, hence two).
    "attention over fixed rows with a permuted mask": (
        [SN, "input h: f32[N, 4]", "input x: f32[R, 4]", "input ids: i64[R]", "input m: bool[2, N]",
         "u = unsqueeze(scatter_pool(x, ids, like=h), 0)", "t = concat(u, u, axis=0)", "y = attention(t, mask=m)",
         "output y is scalar"], "attention's mask and input are not permuted alike"),
    # rows that S(N) permutes added to rows it leaves in place: each element meets another row after.
    "permuted rows plus fixed rows": ([SN, "input h: f32[N, 4]", "input x: f32[R, 4]", "input ids: i64[R]",
                                       "u = scatter_pool(x, ids, like=h)", "y = h + u", "output y is scalar"],
                                      "`+` joins a tensor permuted along N with one that is not"),
    # rows that S(N) leaves in place (pooled from fixed sets) split by ids that it permutes, or by
    # ids that it relabels: either way the rows meet other ids after a permutation.
    "fixed rows split by permuted ids": ([SN, "input h: f32[N, 4]", "input x: f32[R, 4]", "input ids: i64[R]",
                                          "input sid: i64[N]", "input like: f32[S, 1]", "u = scatter_pool(x, ids, like=h)",
                                          "y = scatter_pool(u, sid, like=like)", "output y is invariant"],
                                         "with segment ids not permuted like its rows"),
    "fixed rows split by relabelled ids": ([SN, "input h: f32[N, 4]", "input x: f32[R, 4]", "input ids: i64[R]",
                                            "input next: i64[N] is index(N)", "u = scatter_pool(x, ids, like=h)",
                                            "y = scatter_pool(u, next, like=h)", "output y is scalar"],
                                           "with rows not permuted like the ids"),
    # a linear map across points, the coordinates kept on another axis: its weights need not sum to
    # one, so positions come out as no position; and a gather that picks coordinates.
    "linear across the points of positions": ([E3, "input pos: f32[B, 4, 3] is position", "t = transpose(pos, 1, 2)",
                                               "y = transpose(linear(t, 5, bias=false), 1, 2)", "output y is position"],
                                              "linear of positions"),
    "gather over the coordinates": ([E3, VEL, "input c: i64[3]", "y = gather(vel, c, axis=2)", "output y is vector"],
                                    "gather over the coordinates of a vector"),
    # a set axis contracted against rows S(N) leaves in place: a fixed weighting of the elements.
    "matmul of a set against fixed rows": ([SN, "input h: f32[N, 4]", "input x: f32[R, 4]", "input ids: i64[R]",
                                            "u = scatter_pool(x, ids, like=h)", "y = transpose(h, 0, 1) @ u",
                                            "output y is invariant"], "matmul contracts N of a permuted tensor with a fixed one"),
    # softmax-weighted positions summed over another axis than the softmax's: the weights along it need
    # not sum to one, so neither does the translation.
    "weighted positions summed over the batch": ([E3, POS, X, "w = softmax(linear(x, 1), axis=N)",
                                                  "y = sum(w * pos, axis=0)", "output y is position"],
                                                 "sum of softmax-weighted positions over B"),
    # softmax weights that sum to one along the other axis (the columns, while rows are contracted):
    # no convex combination, so the translation adds up to more or less than one t.
    "positions weighted by a softmax along the other axis": ([E3, POS, X, "w = softmax(x @ transpose(x, 1, 2), axis=1)",
                                                               "y = w @ pos", "output y is position"],
                                                              "matmul of positions"),
    # the coordinates on a batch axis that meets a stack of 3 matrices: each coordinate gets its own map.
    "a matrix per coordinate": ([E3, VECS, "input w: f32[3, 4, 5]", "t = permute(v, [2, 0, 1])",
                                 "y = permute(t @ w, [1, 2, 0])", "output y is vector"],
                                "matmul treats the 3 coordinates separately"),
    # only two vectors dot to an invariant: a position moves with a translation, coordinate products
    # turn twice.
    "a position dotted with a vector": ([E3, POS, VEL, "y = pos @ transpose(vel, 1, 2)", "output y is invariant"],
                                        "matmul of a position and a vector"),
    "coordinate products dotted with a vector": ([E3, VEL, "s = vel * vel", "y = s @ transpose(vel, 1, 2)",
                                                  "output y is invariant"], "matmul of coordinate products and a vector"),
    "a vector dotted with a position": ([E3, POS, VEL, "y = vel @ transpose(pos, 1, 2)", "output y is invariant"],
                                        "matmul of a vector and a position"),
    "a vector dotted with coordinate products": ([E3, VEL, "s = vel * vel", "y = vel @ transpose(s, 1, 2)",
                                                  "output y is invariant"], "matmul of a vector and coordinate products"),
    # invariant weights that need not sum to one, summing positions.
    "positions weighted by a plain matrix": ([E3, POS, X, "a = x @ transpose(x, 1, 2)", "y = a @ pos",
                                              "output y is position"], "matmul of positions"),
    # an RMS over the 3 coordinates rescales only what turns: a position also moves with t, and
    # coordinate products turn twice, so neither keeps its kind.
    "rmsnorm of a position": ([E3, POS, "y = rmsnorm(pos, affine=false)", "output y is position"],
                              "rmsnorm of a position over the 3 coordinates"),
    "rmsnorm of coordinate products": ([E3, VEL, "s = vel * vel", "y = sum(rmsnorm(s, affine=false), axis=-1)",
                                        "output y is invariant"], "rmsnorm of coordinate products over the 3"),
    # a layernorm across the frames of a static batch: its per-channel scale weighs each frame
    # differently, and a rotation reorders the frames.
    "a per-frame scale": ([E3, "input pos: f32[2, N, 3] is position", "input vel: f32[2, N, 3] is vector",
                           "input q: f32[2, N, 1] is scalar", f"y = frame_average(acrossframes, [pos, vel, q], {ROLES})",
                           "output y is invariant"], "layernorm of a tensor permuted along 16 over 16"),
    # frame_out averages over the frames' rows only what follows them: rows paired across frames,
    # or a constant of each frame's own (the same for every input), meet other frames after a rotation.
    "rows paired across frames": ([E3, POS, VEL, Q, f"y = frame_average(acrosspairs, [pos, vel, q], {ROLES})",
                                   "output y is invariant"], "that does not follow the frames"),
    "a constant per frame": ([E3, "input pos: f32[2, N, 3] is position", "input vel: f32[2, N, 3] is vector",
                              "input q: f32[2, N, 1] is scalar",
                              f'y = frame_average(perslot, [pos, vel, q], {ROLES}, out="vector")',
                              "output y is vector"], "frame_out of an invariant that does not follow the frames"),
    # two vectors broadcast against each other along two axes: a 3x3 sum that turns on both.
    "vectors added along two axes": ([E3, VEL, "y = unsqueeze(vel, 3) + unsqueeze(vel, 2)", "output y is invariant"],
                                     "`+` of a vector and a vector"),
    # coordinate products laid end to end are no stacked vectors: split again, they turn twice.
    "coordinate products stacked": ([E3, VEL, "s = vel * vel", "c = concat(s, s, axis=-1)",
                                     "y = reshape(c, [B, N, 2, 3])", "output y is vector"],
                                    "concat along the 3 coordinates"),
    # stacked vectors split into [3, 2], not [2, 3]: each row mixes coordinates of two vectors.
    "stacked vectors split across their coordinates": ([E3, VEL, "c = concat(vel, vel, axis=-1)",
                                                        "y = reshape(c, [B, N, 3, 2])", "output y is invariant"],
                                                       "reshape over the stacked coordinates"),
    # attention with the 3 coordinates as its sequence: softmax weights between coordinates.
    "attention along the coordinates": ([E3, VECS, "t = transpose(v, 1, 2)", "y = transpose(attention(t), 1, 2)",
                                         "output y is vector"], "attention over a vector"),
}


@pytest.mark.parametrize("lines, message", REFUSED.values(), ids=REFUSED.keys())
def test_a_claim_past_the_rule_is_refused_and_measured_false(lines, message):
    assert_refused_and_false(lines, message)


PROVED = {  # true claims a rule must not refuse, next to the edges above
    # softmax weights are invariants: they scale a vector like any other invariant does.
    "softmax weights scale vectors": [E3, VEL, X, "w = softmax(linear(x, 1), axis=N)", "y = sum(w * vel, axis=N)",
                                      "output y is vector"],
    # rows in fixed sets (ids S(N) does not move) carry their other axes' facts into the sets.
    "fixed sets of rows permuted along another axis": [SN, "input x: f32[R, N]", "input ids: i64[R]",
                                                       "input like: f32[S, 1]", "y = scatter_pool(x, ids, like=like)",
                                                       "output y is scalar"],
    # rows into relabelled sets, permuted along another axis by the same group.
    "relabelled sets of rows permuted along another axis": ["symmetry S(S)", "input x: f32[R, S]",
                                                            "input ids: i64[R] is index(S)", "input like: f32[S, 1]",
                                                            "y = scatter_pool(x, ids, like=like)", "output y is scalar"],
    # a relabelled index permutes the gathered axis, beside a set axis the tensor keeps.
    "pairs gathered by a relabelled successor list": [SN, "input h: f32[N, 4]", "input next: i64[N] is index(N)",
                                                      "d = unsqueeze(h, 1) - unsqueeze(h, 0)",
                                                      "y = gather(d, next, axis=0)", "output y is scalar"],
    # a gather along a feature axis keeps the set axis beside it.
    "a gather along features of a set": [SN, "input h: f32[N, 4]", "input c: i64[E]", "y = gather(h, c, axis=1)",
                                         "output y is scalar"],
    # a mask over x's dims up to the pooled set axis says nothing of a set axis after it.
    "pairs pooled over one set axis with its mask": [SN, X, "input mask: bool[B, N]", "d = unsqueeze(x, 2) - unsqueeze(x, 1)",
                                                     'y = pool(d, axis=1, kind="sum", mask=mask)', "output y is scalar"],
}


@pytest.mark.parametrize("lines", PROVED.values(), ids=PROVED.keys())
def test_a_true_claim_at_the_edge_is_proved_and_measured(lines):
    m = checked(*lines)
    assert all(v.holds for v in verdicts(m))
    measure(m)


def test_csr_offsets_that_a_group_permutes_are_refused():
    """A permutation of CSR offsets is no valid offsets, so no input measures it: refused outright."""
    with pytest.raises(SpecError, match="segment_pool of rows permuted across sets"):
        checked("symmetry S(K)", "input x: f32[R, 4]", "input offsets: i64[K]", "y = segment_pool(x, offsets)",
                "output y is invariant")


def test_relabelled_ids_pooled_into_sets_of_another_dim_are_refused():
    """Ids that S(N) relabels may leave the range of another dim's sets, so no input measures it."""
    with pytest.raises(SpecError, match="into sets S that are not N"):
        checked(SN, "input h: f32[N, 4]", "input x: f32[R, 4]", "input s: i64[R] is index(N)", "input like: f32[S, 1]",
                'y = sum(scatter_pool(x, s, like=like, kind="max"), axis=0)', "output y is invariant")


def test_the_mutant_generator_finds_every_rule_and_the_planted_bugs(monkeypatch):
    """benchmarks/mutants.py reaches every graph op's rule, and its operators make the two planted bugs."""
    spec = importlib.util.spec_from_file_location("mutants", ROOT / "benchmarks" / "mutants.py")
    mutants = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "mutants", mutants)  # its dataclasses look their module up
    spec.loader.exec_module(mutants)
    rules = mutants.rule_functions()
    assert {op.symmetry for op in VOCABULARY.graph.values()} <= set(rules)
    made = {(m.function, m.after) for f in rules if f.__name__ in ("symmetry_gather", "symmetry_frame_in")
            for m in mutants.mutants_of(f)}
    assert ("symmetry_gather", "along == relabels") in made
    assert ("symmetry_frame_in", "rel in (Rotated(len(x.shape) - 1), Translated(len(x.shape) - 1))") in made


# Matmul chains: vectors, positions, coordinate products and invariants, as rows or (transposed)
# columns, a fixed 3x3, a covariance (rank 2), a Gram matrix and its softmax along either axis;
# every product of two and of three. Whatever the rules prove of one (invariant, a vector, a
# position; transposed back where the coordinates are the rows) must measure true: a rule of
# _coordinate_matmul or _rank2_matmul that accepts one case too many proves a chain that measures false.
TERMS = {"vel": ("N", "3"), "pos": ("N", "3"), "vv": ("N", "3"), "c": ("N", "3"), "m": ("3", "3"), "o": ("3", "3"),
         "transpose(vel, 1, 2)": ("3", "N"), "transpose(pos, 1, 2)": ("3", "N"), "transpose(vv, 1, 2)": ("3", "N"),
         "transpose(c, 1, 2)": ("3", "N"), "g": ("N", "N"), "softmax(g, axis=2)": ("N", "N"),
         "softmax(g, axis=1)": ("N", "N")}
CHAIN_INPUTS = [E3, VEL, POS, X, "input c: f32[B, N, 3]", "input m: f32[B, 3, 3]", "vv = vel * vel",
                "o = transpose(vel, 1, 2) @ vel", "g = x @ transpose(x, 1, 2)"]


def matmul_chains():
    pairs = [(a, b) for a, b in itertools.product(TERMS, repeat=2) if TERMS[a][1] == TERMS[b][0]]
    ones = [(f"{a} @ {b}", (TERMS[a][0], TERMS[b][1])) for a, b in pairs]
    twos = [(f"({e}) @ {b}", (r, TERMS[b][1])) for e, (r, k) in ones for b in TERMS if TERMS[b][0] == k]
    for expr, (rows, cols) in ones + twos:
        yield f"y = {expr}", "invariant"
        for kind in ("vector", "position"):
            if cols == "3":
                yield f"y = {expr}", kind
            if rows == "3":
                yield f"y = transpose({expr}, 1, 2)", kind


def test_what_is_proved_of_a_matmul_chain_measures_true():
    proved, false = 0, []
    for line, kind in matmul_chains():
        try:
            m = checked(*CHAIN_INPUTS, line, f"output y is {kind}")
        except SpecError:
            continue  # refused: conservative at worst
        proved += 1
        try:
            measure(m)
        except AssertionError:
            false.append(f"{line}: {kind}")
    assert not false, false
    assert proved >= 100, proved  # the chains reach the rules' accepting branches, not only refusals


def test_sets_joined_with_fixed_rows_take_only_fixed_or_moving_parts():
    """A concat along N of a set and a part permuted along another axis is no block layout (a part
    counted as fixed rows while it moves would give a permutation the layout does not name)."""
    parts = (Operand(Permuted((0,)), ("N", 4)), Operand(Permuted((1,)), (2, 4)))
    call = Call("concat", (parts,), {"axis": 0}, ("(N+2)", 4), "c", "s.inv:1:1", 0, "concat")
    assert isinstance(apply(call, Permutations("N"), VOCABULARY.graph), Broken)
    fixed = (parts[0], Operand(Invariant(), (2, 4)))
    assert apply(replace(call, args=(fixed,)), Permutations("N"), VOCABULARY.graph) == Permuted((0,), "[N]+2")


def test_rows_and_ids_in_different_block_layouts_do_not_scatter_together():
    """Rows permuted as an edge list with self loops (E+[N]) scattered by ids permuted as a plain list
    go to other sets than after the group acts: broken, however alike the rest looks."""
    for rows_by, ids_by in (("E+[N]", ""), ("", "E+[N]")):
        rows = Operand(Permuted((0,), rows_by), ("(E+N)", 4))
        index = Operand(Relabeled((0,), "N", ids_by), ("(E+N)",))
        like = Operand(Permuted((0,)), ("N", 4))
        call = Call("scatter_reduce", (rows, index, like), {"kind": "sum"}, ("N", 4), "s", "s.inv:1:1", 0,
                    "scatter_pool")
        assert isinstance(apply(call, Permutations("N"), VOCABULARY.graph), Broken)
    same = (Operand(Permuted((0,), "E+[N]"), ("(E+N)", 4)), Operand(Relabeled((0,), "N", "E+[N]"), ("(E+N)",)), like)
    assert apply(replace(call, args=same), Permutations("N"), VOCABULARY.graph) == Permuted((0,))


def test_a_gather_by_ids_in_a_block_layout_is_permuted_in_that_layout():
    h = Operand(Permuted((0,)), ("N", 4))
    ids = Operand(Relabeled((0,), "N", "E+[N]"), ("(E+N)",))
    call = Call("gather", (h, ids), {"axis": 0}, ("(E+N)", 4), "g", "s.inv:1:1", 0, "gather")
    assert apply(call, Permutations("N"), VOCABULARY.graph) == Permuted((0,), "E+[N]")
