"""Static symmetry inference, rule by rule and both ways: a true claim is proved (and then measured
by the one assert_equivariant helper), a false one is refused at the exact line and column of the
op that broke it. Then the fx pass of the compile pipeline, and `invc check`."""
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from compiler.verify import SIZES, assert_equivariant, redrawn, sample_inputs
from dsl.errors import SpecError
from dsl.groups import Broken, Euclidean, FrameBasis, Invariant, Permuted
from compiler.lower import lower
from dsl.program import load_text
from dsl.symmetry import first_failure, render, verdicts
from dsl.symmetry_rules import Call, Operand, apply
from passes.base import PassError, Pipeline, graph_pass
from passes.cleanup import CLEANUP
from passes.symmetry import symmetry
from tests.graphs import TARGETS
from ops.registry import VOCABULARY, check

ROOT = Path(__file__).resolve().parent.parent
SN, E3, T3, SN_E3 = "symmetry S(N)", "symmetry E(3)", "symmetry T(3)", "symmetry S(N), E(3)"
X, POS, VEL = "input x: f32[B, N, 4]", "input pos: f32[B, N, 3] is position", "input vel: f32[B, N, 3] is vector"
VECS = "input v: f32[B, 4, 3] is vector"


CAPTURED = {  # a def of the specs below -> its torch model in tests/capture_cases.py, and arguments
    "first": "First", "rest": "Rest", "positive": "Positive", "ordered": "Ordered", "doubled": "Doubled",
    "chosen": "Chosen", "mixed": "Mixed", "root": "Root", "lengths": "Lengths", "exp": "Exp", "leaky": "Leaky",
    "clamped": "Clamped", "cumulative": "Cumulative", "counted": "Counted", "skewed": "Counted, skew=true",
    "cast": "Cast", "rounded": "Rounded", "idsasnumbers": "IdsAsNumbers", "counts": "Counts", "ranks": "Ranks",
    "degrees": "Degrees", "maskedpool": "MaskedPool", "kept": "Kept", "cubed": "Cubed", "named": "Named",
    "contracted": "Contracted", "covector": "Covector", "regrouped": "Regrouped", "scores": "Scores",
    "swapped": "Regrouped, swap=true", "mixed3": "Mixed3", "anchored": "Anchored", "ranked": "Ranked",
    "mixed1d": "Mixed1D", "widened": "Widened", "projected": "Projected",
    "spaced": "Spaced",
}
# Frame-averaging backbones, after the model so line numbers in the tests start at `model`.
# `mixing` alone breaks E(3): its MLP mixes raw coordinates; `causal` also orders the frames;
# `acrossframes` scales each frame by its own weight (a static batch makes the folded axis static);
# `acrosspairs` pairs rows of different frames; `perslot` returns a constant of its own per frame.
BACKBONES = """
def mixing(p, v, h) {
  x = mlp(concat(p, v, h, axis=-1), widths=[16, 16])
  return linear(pool(x, axis=N, kind="mean"), 3)
}
def static(p, v, h) {
  x = mlp(concat(p, v, h, axis=-1), widths=[16, 16])
  return linear(pool(x, axis=1, kind="mean"), 3)
}
def moving(p, v, h, mask) { return p + linear(relu(concat(p, v, h, axis=-1)), 3) }
def withglobal(p, g) { return linear(pool(relu(linear(p, 8)), axis=1), 3) + linear(g, 3, bias=false) }
def causal(p, v, h) {
  x = transpose(linear(concat(p, v, h, axis=-1), 8), 0, 1)
  return linear(pool(transpose(attention(x, causal=true), 0, 1), axis=N), 3)
}
def acrossframes(p, v, h) {
  x = pool(mlp(concat(p, v, h, axis=-1), widths=[8]), axis=1)
  return linear(transpose(layernorm(transpose(x, 0, 1)), 0, 1), 3)
}
def acrosspairs(p, v, h) {
  x = linear(pool(mlp(concat(p, v, h, axis=-1), widths=[8]), axis=1), 4)
  return unsqueeze(x, 1) - unsqueeze(x, 0)
}
def perslot(p, v, h) {
  s = sum(pool(mlp(concat(p, v, h, axis=-1), widths=[8]), axis=1), axis=0, keepdim=true)
  return linear(transpose(linear(transpose(s, 0, 1), 16), 0, 1), 3)
}
""" + "".join(f'def {name} = torch("tests.capture_cases:{model.split(", ")[0]}"' +
              "".join(f", {arg}" for arg in model.split(", ")[1:]) + ")\n" for name, model in CAPTURED.items())
FA = ["input vel: f32[B, N, 3] is vector", "input q: f32[B, N, 1] is scalar"]
SENDERS, RECEIVERS = "input s: i64[E] is index(N)", "input r: i64[E] is index(N)"
FA_SN = ["input vel: f32[B, N, 3]", "input q: f32[B, N, 1]"]  # the same, with no Euclidean group


def spec(*lines: str) -> str:
    return "\n".join(["model m() {", *lines, "}"]) + "\n" + BACKBONES


def checked(*lines: str, prove: bool = True):
    return check(load_text(spec(*lines), "s.inv"), prove=prove)


PROVED = {
    "relu per element keeps S(N)": [SN, X, "y = sum(relu(x), axis=N)", "output y is invariant"],
    "linear per element keeps S(N)": [SN, X, "y = mean(linear(x, 8), axis=N)", "output y is invariant"],
    "per-element output is permuted": [SN, X, "y = relu(linear(x, 8))", "output y is scalar"],
    "linear on channels keeps vectors": [E3, VECS, "t = transpose(v, 1, 2)",
                                         "y = transpose(linear(t, 5, bias=false), 1, 2)", "output y is vector"],
    "norm over coordinates is invariant": [E3, VEL, "y = sum(vel * vel, axis=-1)", "output y is invariant"],
    "centering makes positions T(3) invariant": [T3, POS, "d = pos - mean(pos, axis=N, keepdim=true)",
                                                 "y = relu(d)", "output y is invariant"],
    "the centroid is a position": [E3, POS, "c = mean(pos, axis=N)", "output c is position"],
    "sum mean max min over N": [SN, X, "y = sum(x, axis=N) + mean(x, axis=N) + max(x, axis=N) + min(x, axis=N)",
                                "output y is invariant"],
    "reshape keeping N": [SN, X, "r = reshape(x, [B, N, 2, 2])", "y = sum(r, axis=N)", "output y is invariant"],
    "pairs by broadcasting": [SN, X, "p = relu(unsqueeze(x, 1) - unsqueeze(x, 2))", "y = sum(sum(p, axis=1), axis=1)",
                              "output y is invariant"],
    "concat features": [SN, X, "y = sum(concat(x, relu(x), axis=-1), axis=N)", "output y is invariant"],
    "transpose moves the coordinate axis": [E3, VECS, "t = transpose(v, 1, 2)", "y = sum(t, axis=2)",
                                            "output y is vector"],
    "position minus centroid is a vector": [E3, POS, "d = pos - mean(pos, axis=N, keepdim=true)", "output d is vector"],
    "position plus vector is a position": [E3, POS, VEL, "y = pos + vel * 0.5", "output y is position"],
    "vectors scaled by invariants": [E3, VEL, "n = sum(vel * vel, axis=-1, keepdim=true)", "y = vel / (n + 1.0)",
                                     "output y is vector"],
    "gram matrix": [SN_E3, POS, "d = pos - mean(pos, axis=N, keepdim=true)", "g = relu(d @ transpose(d, 1, 2))",
                    "y = sum(sum(g, axis=-1), axis=-1)", "output y is invariant"],
    "a captured covariance times a 1-D vector": [E3, "input p: f32[N, 3] is position", "input u: f32[3] is vector",
                                                 "y, z = covector(p, u)", "output y is vector", "output z is invariant"],
    "matmul by a fixed matrix on channels": [SN, X, "input w: f32[4, 6]", "y = sum(x @ w, axis=N)",
                                             "output y is invariant"],
    "attention with a mask": [SN, X, "input m: bool[B, N]", "y = sum(attention(x, heads=2, mask=m), axis=N)",
                              "output y is invariant"],
    "layernorm per element": [SN, X, "y = sum(layernorm(x), axis=N)", "output y is invariant"],
    "rmsnorm of a vector": [E3, VEL, "y = rmsnorm(vel, affine=false)", "output y is vector"],
    "softmax over N": [SN, X, "y = sum(softmax(x, axis=N) * x, axis=N)", "output y is invariant"],
    "embedding per element": [SN, "input ids: i64[B, N]", "y = sum(embedding(ids, num=4, dim=8), axis=N)",
                              "output y is invariant"],
    "negated vector": [E3, VEL, "y = -vel", "output y is vector"],
    "masked pool": [SN, X, "input m: bool[B, N]", "y = pool(x, axis=N, kind=\"max\", mask=m)", "output y is invariant"],
    "attention pool": [SN, X, "y = attention_pool(x, axis=N)", "output y is invariant"],
    "frame averaging restores E(3)": [SN_E3, POS, *FA, "y = frame_average(mixing, [pos, vel, q], out=\"vector\")",
                                      "output y is vector"],
    "frame averaged positions": [SN_E3, POS, *FA, "input m: bool[B, N]",
                                 "y = frame_average(moving, [pos, vel, q], out=\"position\", mask=m)",
                                 "output y is position"],
    "proper frames for SE(3)": ["symmetry SE(3)", POS, *FA,
                                "y = frame_average(mixing, [pos, vel, q], group=\"SE3\")", "output y is invariant"],
    "scatter pool with ids permuted alike": ["symmetry S(R)", "input x: f32[R, 4]", "input ids: i64[R]",
                                             "input sets: f32[S, 1]", "y = scatter_pool(x, ids, like=sets)",
                                             "output y is invariant"],
    # Issue 9, class 5: convex combinations of positions are positions.
    "softmax-weighted sum of positions": [SN_E3, POS, X, "w = softmax(linear(x, 1), axis=N)",
                                          "y = sum(w * pos, axis=N)", "output y is position"],
    "softmax rows times positions": [SN_E3, POS, X, "a = softmax(x @ transpose(x, 1, 2), axis=-1)", "y = a @ pos",
                                     "output y is position"],
    "weights reshaped before weighting": [E3, POS, X, "w = unsqueeze(softmax(sum(x, axis=-1), axis=1), 2)",
                                          "y = sum(pos * w, axis=1)", "output y is position"],
    # Class 4: a scalar without the set axis beside the cloud, under S(N).
    "a global scalar in frame averaging": [SN_E3, POS, "input g: f32[B, 4] is scalar",
                                           "y = frame_average(withglobal, [pos, g], out=\"vector\")", "output y is vector"],
    # Class 3: a masked pool of vectors is a vector, empty sets (0) included.
    "masked mean of vectors": [SN_E3, POS, "input m: bool[B, N]",
                               "y = pool(pos - mean(pos, axis=N, keepdim=true), axis=N, kind=\"mean\", mask=m)",
                               "output y is vector"],
    "an unmasked centroid under O(3)": ["symmetry O(3)", VEL, "y = frame_average(mixing, [vel, vel, vel], group=\"O(3)\", "
                                        "out=\"position\", roles=[\"position\", \"vector\", \"scalar\"])".replace(
                                            ", vel, vel]", ", vel, sum(vel * vel, axis=-1, keepdim=true)]"),
                                        "output y is position"],
    # Frames of clouds in general position: an input cloud for a canonical frame, any cloud for all
    # frames under permutations (a tie there falls back to the same fixed axes, whatever the order).
    "a canonical frame of an input cloud": [SN_E3, POS, *FA, "y = frame_average(mixing, [pos, vel, q], canonical=true)",
                                            "output y is invariant"],
    # Edge lists: node ids `is index(N)` are relabelled when S(N) permutes the nodes.
    "messages gathered and scattered by node ids": [SN, "input h: f32[N, 4]", SENDERS, RECEIVERS,
                                                    "m = relu(linear(gather(h, s, axis=0), 4)) + gather(h, r, axis=N)",
                                                    "y = scatter_pool(m, r, like=h, kind=\"max\")", "output y is scalar"],
    "edges reordered": ["symmetry S(E)", "input h: f32[N, 4]", "input s: i64[E]", "y = gather(h, s, axis=0)",
                        "output y is scalar"],
    "edge vectors": ["symmetry S(N), E(3)", "input pos: f32[N, 3] is position", SENDERS, RECEIVERS,
                     "y = gather(pos, r, axis=0) - gather(pos, s, axis=0)", "output y is vector"],
    # Captured torch models (tests/capture_cases.py): the EGNN layer's segment mean divides vectors by
    # counts repeated over the coordinates, which are uniform along them.
    "a captured segment mean of edge vectors": ["symmetry S(N), E(3)", "input pos: f32[N, 3] is position", SENDERS,
                                                RECEIVERS, "y = counted(pos, s, r)", "output y is position"],
    "captured vector norms": [SN_E3, POS, VEL, "y = lengths(pos, vel)", "output y is invariant"],
    "a captured count and mean per graph by a batch vector": [
        SN, "input x: f32[N, 4]", "input batch: i64[N]", "input graphs: f32[G, 1]", "y, c = counts(x, batch, graphs)",
        "output y is invariant", "output c is invariant"],
    "a captured degree normalisation": [SN, "input x: f32[N, 4]", SENDERS, RECEIVERS, "y = degrees(x, s, r)",
                                        "output y is scalar"],
    "a captured masked attention pool": [SN, X, "input m: bool[B, N]", "y = maskedpool(x, m)", "output y is invariant"],
    "captured einsums and cdist of coordinates": [SN_E3, POS, VEL, "y = contracted(pos, vel)", "output y is scalar"],
    "a captured batch of sets flattened to rows and split back": [SN, X, "y = regrouped(x)", "output y is scalar"],
    "captured pairwise scores by baddbmm": [SN, X, "y = scores(x)", "output y is invariant"],
    "a captured matmul by a 1-D weight": [SN, "input x: f32[N, 4]", "y = projected(x)", "output y is scalar"],
    "a captured constant of a kept op, measured in float64": [SN, "input x: f32[N, 4]", "y = spaced(x)",
                                                              "output y is scalar"],
    "a captured model returning a dict": [SN, X, "y, z = named(x)", "output y is invariant", "output z is invariant"],
    "captured casts of masks, counts, vectors and ids": [
        "symmetry S(N), E(3)", "input x: f32[N, 4]", "input pos: f32[N, 3] is position", SENDERS,
        "y, c = cast(x, pos, s)", "output y is scalar", "output c is vector"],
    "a relabelled successor list": [SN, "input h: f32[N, 4]", "input next: i64[N] is index(N)",
                                    "y = scatter_pool(h, next, like=h) + gather(h, next, axis=0)", "output y is scalar"],
    "all frames of an input cloud under S(N)": [SN, "input h: f32[B, N, 3]", *FA_SN,
                                                "y = frame_average(mixing, [h, vel, q], roles=[\"position\", "
                                                "\"vector\", \"scalar\"])", "output y is invariant"],
    "a canonical proper frame of 3 points": ["symmetry SE(3)", "input pos: f32[B, 3, 3] is position",
                                             "input vel: f32[B, 3, 3] is vector", "input q: f32[B, 3, 1] is scalar",
                                             "y = frame_average(static, [pos, vel, q], group=\"SE(3)\", "
                                             "canonical=true)", "output y is invariant"],
}


def measure(m):
    """Every claim of m measured in float64 with every weight drawn again: a proof holds for all
    weights, and a zero initial bias must not hide a broken claim. In float32, rounding of the
    points can hide a tie that rounding of the frame axes reveals in float64."""
    inputs = [x.double() if x.is_floating_point() else x for x in sample_inputs(m, SIZES)]
    return assert_equivariant(redrawn(lower(m), 0), inputs)


@pytest.mark.parametrize("lines", PROVED.values(), ids=PROVED.keys())
def test_true_claim_is_proved_and_measured(lines):
    m = checked(*lines)
    assert all(v.holds for v in verdicts(m))
    measure(m)


REFUSED = {  # lines, the text where the breaking op starts, message
    # A set axis merged into one axis, or sets joined along it, are permuted blockwise (issue 21):
    # refused only when another set axis stays apart, which one `by` cannot describe.
    "flatten over N": ([SN, X, "p = unsqueeze(x, 2) - unsqueeze(x, 1)", "f = flatten(p, start=2)",
                        "output f is scalar"], "flatten", "flatten over N breaks S(N) equivariance of output `f`"),
    "concat along N": ([SN, X, "p = unsqueeze(x, 2) - unsqueeze(x, 1)", "c = concat(p, p, axis=1)",
                        "output c is scalar"], "concat", "concat along N breaks S(N) equivariance"),
    "causal attention": ([SN, X, "y = sum(attention(x, heads=2, causal=true), axis=N)", "output y is invariant"],
                         "attention", "causal attention over N breaks S(N)"),
    "linear over coordinates": ([E3, POS, "y = sum(linear(pos, 8), axis=N)", "output y is invariant"], "linear",
                                "linear over the 3 coordinates breaks E(3) invariance"),
    "mlp over coordinates": ([SN_E3, POS, "h = mlp(pos, widths=[8])", "output h is invariant"], "mlp",
                             "mlp over the 3 coordinates breaks E(3)"),
    "relu of a vector": ([E3, VEL, "y = relu(vel)", "output y is vector"], "relu",
                         "relu of a vector breaks E(3) equivariance of output `y`"),
    "relu after centering, under rotations": ([E3, POS, "d = pos - mean(pos, axis=N, keepdim=true)", "y = relu(d)",
                                               "output y is invariant"], "relu", "relu of a vector"),
    "sum over coordinates": ([E3, VEL, "y = sum(vel, axis=-1)", "output y is invariant"], "sum",
                             "sum over the 3 coordinates of a vector"),
    "max of vectors": ([E3, VEL, "y = max(vel, axis=N)", "output y is vector"], "max", "max of a vector over N"),
    "sum of positions": ([E3, POS, "y = sum(pos, axis=N)", "output y is position"], "sum",
                         "sum of a position over N"),
    "position plus position": ([E3, POS, "y = pos + pos", "output y is position"], "pos + pos",
                               "`+` of a position and a position"),
    "constant offset": ([E3, VEL, "y = vel + 1.0", "output y is vector"], "vel + 1.0",
                        "`+` of a vector and a constant"),
    "per-coordinate scale": ([E3, VEL, "input w: f32[3]", "y = vel * w", "output y is vector"], "vel * w",
                             "`*` treats the 3 coordinates separately"),
    "bias on a vector": ([E3, VECS, "t = transpose(v, 1, 2)", "y = transpose(linear(t, 5), 1, 2)",
                          "output y is vector"], "linear", "linear with a bias on a vector"),
    "matmul over coordinates": ([E3, POS, "input w: f32[3, 3]", "y = sum(pos @ w, axis=N)",
                                 "output y is invariant"], "pos @ w", "matmul over the 3 coordinates"),
    "layernorm of a vector": ([E3, VEL, "y = layernorm(vel, affine=false)", "output y is vector"], "layernorm",
                              "layernorm of a vector over the 3 coordinates"),
    "rmsnorm with a per-coordinate scale": ([E3, VEL, "y = rmsnorm(vel)", "output y is vector"], "rmsnorm",
                                            "rmsnorm of a vector over the 3 coordinates"),
    "softmax of a vector": ([E3, VEL, "y = softmax(vel)", "output y is vector"], "softmax", "softmax of a vector"),
    "negated position": ([E3, POS, "y = -pos", "output y is position"], "-pos", "neg of a position"),
    "flatten over coordinates": ([E3, VEL, "f = flatten(vel, start=1)", "output f is invariant"], "flatten",
                                 "flatten over the 3 coordinates"),
    "pool over coordinates": ([E3, VEL, "y = pool(vel, axis=2, kind=\"max\")", "output y is invariant"], "pool",
                              "max over the 3 coordinates of a vector"),
    "attention pool of vectors": ([E3, VECS, "y = attention_pool(v, axis=1)", "output y is vector"],
                                  "attention_pool", "attention_pool of a vector"),
    "segments across a permuted axis": (["symmetry S(R)", "input x: f32[R, 4]", "input o: i64[S]",
                                         "y = segment_pool(x, o)", "output y is invariant"], "segment_pool",
                                        "segment_pool of rows permuted across sets"),
    "proper frames under reflections": ([E3, POS, *FA, "y = frame_average(mixing, [pos, vel, q], group=\"SE3\")",
                                         "output y is invariant"], "frame_average",
                                        "frame_average with proper (det +1) frames breaks E(3) invariance"),
    "a backbone that orders the frames": ([E3, POS, *FA, "y = frame_average(causal, [pos, vel, q])",
                                           "output y is invariant"], "attention", "causal attention over 8*B"),
    "an invariant claimed a vector": ([E3, VEL, "input ids: i64[B, N]", "e = sum(embedding(ids, num=4, dim=3), axis=N)",
                                       "output e is vector"], "e is",
                                      "output `e` is invariant under E(3), but is claimed rotated like a vector"),
    "vector minus position": ([E3, POS, VEL, "y = vel - pos", "output y is vector"], "vel - pos",
                              "`-` of a vector and a position"),
    "vector over vector": ([E3, VEL, "y = vel / vel", "output y is vector"], "vel / vel", "`/` of a vector and a vector"),
    "mean over coordinates": ([E3, VEL, "y = mean(vel, axis=-1)", "output y is invariant"], "mean",
                              "mean over the 3 coordinates of a vector"),
    "min of vectors": ([E3, VEL, "y = min(vel, axis=N)", "output y is vector"], "min", "min of a vector over N"),
    "a vector given the scalar role": ([E3, POS, *FA, "y = frame_average(mixing, [pos, vel, vel], "
                                        "roles=[\"position\", \"vector\", \"scalar\"])", "output y is invariant"],
                                       "frame_average", "frame_tile of a vector"),
    **{f"{act} of a vector": ([E3, VEL, f"y = {act}(vel)", "output y is vector"], act, f"{act} of a vector")
       for act in ("gelu", "silu", "tanh", "sigmoid")},
    # Issue 9, class 1: a partial reduction over the coordinates is no dot product.
    "masked pool over some coordinates": ([E3, VEL, "input cm: bool[B, N, 3]",
                                           "y = pool(vel * vel, axis=2, kind=\"sum\", mask=cm)", "output y is invariant"],
                                          "pool", "sum over some of the 3 coordinates"),
    "segments of coordinates": (["symmetry E(3)", "input v: f32[R, 3] is vector", "input o: i64[3]",
                                 "y = segment_pool(transpose(v * v, 0, 1), o)", "output y is invariant"],
                                "segment_pool", "sum over some of the 3 coordinates"),
    "scatter sets of coordinates": ([E3, "input v: f32[R, 3] is vector", "input ids: i64[3]", "input sets: f32[S, 1]",
                                     "y = scatter_pool(transpose(v * v, 0, 1), ids, like=sets)", "output y is invariant"],
                                    "scatter_pool", "sum over some of the 3 coordinates"),
    # Issue 21, class 1: a mask selects whole elements, never some coordinates of one.
    "a mask along the coordinates before the set axis": ([E3, VEL, "input cm: bool[B, 3, N]",
                                                          "y = pool(transpose(vel, 1, 2), axis=2, mask=cm)",
                                                          "output y is vector"],
                                                         "pool", "pool with a mask along the 3 coordinates of a vector"),
    "a masked dot product, coordinates first": ([E3, VEL, "input cm: bool[B, 3, N]",
                                                 "p = pool(transpose(vel * vel, 1, 2), axis=2, kind=\"mean\", mask=cm)",
                                                 "y = sum(p, axis=1)", "output y is invariant"],
                                                "pool", "a mask along the 3 coordinates of coordinate products"),
    # Class 2: the position role must be a position.
    "a centred cloud as positions": ([SN_E3, POS, *FA, "c = pos - mean(pos, axis=N, keepdim=true)",
                                      "y = frame_average(mixing, [c, vel, q], out=\"position\", "
                                      "roles=[\"position\", \"vector\", \"scalar\"])", "output y is position"],
                                     "frame_average", "position argument is a vector, not a position"),
    "a vector as positions": ([E3, POS, *FA, "y = frame_average(mixing, [vel, vel, q], out=\"position\", "
                               "roles=[\"position\", \"vector\", \"scalar\"])", "output y is position"],
                              "frame_average", "position argument is a vector, not a position"),
    "a position given the vector role, under T(3)": ([T3, POS, *FA, "y = frame_average(mixing, [pos, pos, q], "
                                                      "roles=[\"position\", \"vector\", \"scalar\"])",
                                                      "output y is invariant"],
                                                     "frame_average", "frame_in of a position in a fixed frame"),
    # Class 3: an empty set pools to 0, which is no position.
    "masked mean of positions": ([E3, POS, "input m: bool[B, N]", "y = pool(pos, axis=N, kind=\"mean\", mask=m)",
                                  "output y is position"], "pool", "pool of positions over sets that may be empty"),
    "segment mean of positions": (["symmetry E(3)", "input p: f32[R, 3] is position", "input o: i64[K]",
                                   "y = segment_pool(p, o, kind=\"mean\")", "output y is position"],
                                  "segment_pool", "segment_pool of positions over sets that may be empty"),
    # Class 5's limits: only weights that sum to one along the summed axis make a convex combination.
    "a mean of weighted positions": ([E3, POS, X, "w = softmax(linear(x, 1), axis=N)", "y = mean(w * pos, axis=N)",
                                      "output y is position"], "mean", "mean of softmax-weighted positions"),
    "weights broadcast along the sum": ([E3, POS, X, "w = softmax(sum(linear(x, 1), axis=N, keepdim=true), axis=1)",
                                         "y = sum(w * pos, axis=N)", "output y is position"], "w * pos",
                                        "weights that do not sum to one"),
    "weights along the coordinates": ([E3, POS, "w = softmax(pos - mean(pos, axis=N, keepdim=true), axis=-1)",
                                       "y = sum(w * pos, axis=-1)", "output y is invariant"], "softmax",
                                      "softmax of a vector"),
    "node ids that do not relabel": ([SN, "input h: f32[N, 4]", "input s: i64[E]", "y = gather(h, s, axis=0)",
                                      "output y is invariant"], "gather", "by indices that S(N) does not relabel"),
    "node ids as tokens": ([SN, "input h: f32[N, 4]", "input s: i64[N] is index(N)",
                            "y = h + embedding(s, num=9, dim=4)", "output y is scalar"], "embedding",
                           "embedding of indices that S(N) relabels"),
    # Frames are unique only for clouds in general position, which a computed cloud can miss for
    # every input: all points at their centroid (every eigenvalue tied), or on a layernorm's circle
    # (a third moment of 0, so rounding picks the canonical sign).
    "frames of a collapsed cloud": ([E3, POS, *FA, "c = pos - pos + mean(pos, axis=N, keepdim=true)",
                                     "y = frame_average(mixing, [c, vel, q], roles=[\"position\", \"vector\", "
                                     "\"scalar\"])", "output y is invariant"],
                                    "frame_average", "builds frames from a computed cloud"),
    # Issue 21, class 2: no proof for a cloud that no input puts in general position. A collapse to
    # rounding is settled by the run-time guard (test_frames.py); this one is a spread of 1e-12 (all
    # points near the centroid), which a translation's rounding reshapes.
    "frames of a collapsed cloud under T(3)": ([T3, POS, *FA, X,
                                                "a = softmax(x @ transpose(x, 1, 2) * 0.000000000001, axis=-1)",
                                                "c = a @ pos", "y = frame_average(mixing, [c, vel, q], "
                                                "roles=[\"position\", \"vector\", \"scalar\"])",
                                                "output y is invariant"],
                                               "frame_average", "builds frames from a computed cloud"),
    **{f"{name} under {group}": ([f"symmetry {group}", f"input pos: f32[B, {n}, 3] is position",
                                  f"input vel: f32[B, {n}, 3] is vector", f"input q: f32[B, {n}, 1] is scalar",
                                  f"y = frame_average(static, [pos, vel, q]{extra})", "output y is invariant"],
                                 "frame_average", f"builds frames from a cloud of {n} point")
       for name, n, group, extra in [("all frames of 1 point", 1, "E(3)", ""),
                                     ("all frames of 2 points", 2, "SO(3)", ""),
                                     ("a canonical frame of 2 points", 2, "SO(3)", ", canonical=true"),
                                     ("a canonical frame with reflections of 3 points", 3, "SE(3)",
                                      ", canonical=true")]},
    # Captured torch models (tests/capture_cases.py): refused at the model's own source line.
    "a captured first element": ([SN, X, "y = first(x)", "output y is invariant"], "return x[:, 0]",
                                 "select of element 0 along N of a tensor permuted along N"),
    **{f"a captured {op} of positions": ([E3, POS, f"y = {name}(pos)", "output y is invariant"], source,
                                         f"{op} of a position")
       for op, name, source in [("exp", "exp", "return torch.exp(pos)"),
                                ("leaky_relu", "leaky", "return nn.functional.leaky_relu(pos"),
                                ("clamp", "clamped", "return pos.clamp(")]},
    "a captured slice of a set": ([SN, X, "y = rest(x)", "output y is invariant"], "return x[:, 1:]",
                                  "a slice along N of a tensor permuted along N"),
    "a captured comparison of coordinates": (["symmetry E(3)", "input pos: f32[N, 3] is position", "y = positive(pos)",
                                              "output y is invariant"], "return (pos > 0)", "`gt` of a position"),
    "a captured order of node ids": ([SN, "input h: f32[N, 4]", SENDERS, RECEIVERS, "y = ordered(h, s, r)",
                                      "output y is invariant"], "return (senders < receivers)",
                                     "`lt` of indices of N and indices of N"),
    "a captured repeat of coordinates": (["symmetry E(3)", "input pos: f32[N, 3] is position", "y = doubled(pos)",
                                          "output y is invariant"], "return pos.repeat(1, 2)",
                                         "a repeat along the 3 coordinates of a position"),
    "a captured mask over coordinates": (["symmetry E(3)", "input pos: f32[N, 3] is position", "input keep: bool[3]",
                                          "y = chosen(pos, keep)", "output y is invariant"], "return pos[:, keep]",
                                         "a mask selection along 3 of a position"),
    "a captured convolution over coordinates": ([E3, POS, "y = mixed(pos)", "output y is invariant"],
                                                "return self.conv(pos.transpose(1, 2))",
                                                "channel_linear over the 3 coordinates"),
    "a captured square root of coordinates": ([E3, VEL, "y = root(vel)", "output y is invariant"],
                                              "return torch.sqrt(v * v)", "sqrt of coordinate products"),
    "a captured scatter of ranks by a batch vector": (
        [SN, "input x: f32[N, 4]", "input batch: i64[N]", "input graphs: f32[G, 1]", "y = ranks(x, batch, graphs)",
         "output y is invariant"], "return x.new_zeros(graphs.shape[0])",
        "with segment ids not permuted like its rows"),
    "a captured where on positions": (["symmetry E(3)", "input pos: f32[N, 3] is position", "input keep: bool[N]",
                                       "y = kept(pos, keep)", "output y is position"], "return torch.where(",
                                      "`where` of a position"),
    "a captured einsum mixing coordinates": ([E3, VEL, "y = mixed3(vel)", "output y is vector"],
                                            "return torch.einsum(", "`*` treats the 3 coordinates separately"),
    "captured distances to fixed anchors": ([E3, POS, "y = anchored(pos)", "output y is invariant"],
                                            "return torch.cdist(", "`-` of a position and an invariant"),
    "captured rows split back in the other order": ([SN, X, "y = swapped(x)", "output y is scalar"],
                                                    "return rows.reshape(n, b, f)", "reshape over B*N"),
    "captured ranks added to node features": ([SN, "input x: f32[N, 4]", "y = ranked(x)", "output y is scalar"],
                                              "return x + x.new_ones", "joins a tensor permuted along N with one"),
    "a captured map of coordinates and features applied to a 1-D vector": (
        [E3, "input p: f32[N, 3] is position", "input h: f32[N, 3]", "input u: f32[3] is vector",
         "y = mixed1d(p, h, u)", "output y is vector"], "return ((pos - pos.mean", "matmul"),
    "a captured float64 island": ([E3, POS, "y = widened(pos)", "output y is position"],
                                  "return (pos.double()", "a cast to f64 inside the model"),
    "a captured power of coordinates": (["symmetry E(3)", "input pos: f32[N, 3] is position", "y = cubed(pos)",
                                         "output y is invariant"], "return (pos ** 3)", "power of a position"),
    "a captured cast of positions to integers": (["symmetry E(3)", "input pos: f32[N, 3] is position",
                                                  "y = rounded(pos)", "output y is position"],
                                                 "return pos.long()", "a cast of a position to i64"),
    "a captured cast of ids to numbers": (["symmetry S(N)", "input x: f32[N, 4]", SENDERS, "y = idsasnumbers(x, s)",
                                           "output y is invariant"], "return x.sum(0) + senders.float()",
                                          "a cast of indices of N to f32"),
    "a captured op with no rule": ([SN, X, "y = cumulative(x)", "output y is invariant"], "return x.cumsum(1)",
                                   "no symmetry rule for this op (aten.cumsum.default in cumulative (Cumulative))"),
    "a captured mean by counts that differ per coordinate": (
        ["symmetry S(N), E(3)", "input pos: f32[N, 3] is position", SENDERS, RECEIVERS, "y = skewed(pos, s, r)",
         "output y is position"], "return pos + total / count", "`/` treats the 3 coordinates separately"),
}


@pytest.mark.parametrize("lines, where, message", REFUSED.values(), ids=REFUSED.keys())
def test_false_claim_is_refused_at_the_breaking_op(lines, where, message):
    error = assert_refused_and_false(lines, message)
    rows = (spec(*lines) if error.file == "s.inv" else Path(error.file).read_text()).splitlines()  # captured: its source
    row = next(i for i, line in enumerate(rows) if where in line and not line.startswith("input"))
    assert (error.line, error.column) == (row + 1, rows[row].index(where) + 1), error.render()
    assert error.hint


def assert_refused_claim_is_false(lines):
    """The refusal is no false alarm: measured, the claim fails."""
    with pytest.raises(AssertionError, match="not equivariant"):
        measure(checked(*lines, prove=False))


def assert_refused_and_false(lines, message: str) -> SpecError:
    """The checker refuses the spec with `message`, and measured, the claim fails; the refusal, for more checks."""
    with pytest.raises(SpecError) as e:
        checked(*lines)
    assert message in e.value.message, e.value.message
    assert_refused_claim_is_false(lines)
    return e.value


# Issue 21's classes 1 (masks along the coordinates) and 2 (clouds degenerate for every input).
MASKS_AND_DEGENERATE_CLOUDS = [name for name in REFUSED if "mask along" in name or "masked dot product" in name
            or "collapsed cloud under" in name or " point" in name]


@pytest.mark.parametrize("name", MASKS_AND_DEGENERATE_CLOUDS)
def test_invc_verify_fails_what_check_refuses_for_masks_and_degenerate_clouds(name, tmp_path, capsys):
    """`invc verify` fails every such case too (exit 1), in fp64 with the spec's weights and with
    drawn ones. Where it and `invc check` disagree, one of them is wrong."""
    from compiler.cli import main
    path = tmp_path / "s.inv"
    path.write_text(spec(*REFUSED[name][0]))
    assert main(["verify", str(path), "--trials", "2"]) == 1
    out = capsys.readouterr().out
    fp64 = [row for row in out.splitlines() if "fp64" in row]
    assert "static: refused" in out and fp64 and all(row.endswith("FAILED") for row in fp64), out


def test_the_first_breaking_op_is_reported():
    with pytest.raises(SpecError) as e:
        checked(E3, POS, "a = relu(pos)", "b = linear(pos, 3)", "y = b + a", "output y is position")
    assert (e.value.line, e.value.column) == (4, 5) and "relu of a position" in e.value.message


def test_unclaimed_outputs_are_reported_not_enforced():
    m = checked(SN_E3, POS, "y = relu(pos)", "z = mean(pos, axis=N)", "output y", "output z is position")
    table = render(m, verdicts(m))
    assert "broken: relu of a position (line 4)" in table and "equivariant (moved like a position)" in table
    assert "equivariant (permuted along N)" in table


def test_an_op_without_a_rule_is_broken_even_on_invariants():
    call = Call("mystery", (Operand(Invariant(), (2,)),), {}, (2,), "m", "s.inv:1:1", 0, "mystery")
    fact = apply(call, Euclidean("E"), VOCABULARY.graph)
    assert isinstance(fact, Broken) and fact.reason == "no symmetry rule for op `mystery`"


# -- the fx pass -------------------------------------------------------------------------------

def pipeline_on(lines, *extra):
    gm = lower(checked(*lines))
    return Pipeline([*CLEANUP, *extra, symmetry]).run(gm)


def test_the_pass_annotates_every_node_after_optimization():
    gm = pipeline_on([SN, X, "h = linear(linear(x, 4), 4)", "y = sum(h, axis=N)", "output y is invariant"])
    facts = {n.name: n.meta["symmetry"]["S(N)"] for n in gm.graph.nodes if "symmetry" in n.meta}
    assert facts["x"] == facts["h"] == Permuted((1,)) and facts["y"] == Invariant()


def _unknown_sum(x, axis, keepdim=False):
    return x.sum(axis, keepdim=keepdim)


@graph_pass("a rewrite the symmetry rules do not know")
def swap_sum(gm):
    for n in gm.graph.nodes:
        if n.target is TARGETS.reduce_sum:
            n.target = _unknown_sum
    return gm


def test_the_pass_refuses_a_rewrite_it_cannot_prove_naming_node_and_position():
    with pytest.raises(PassError, match=r"symmetry: node `y` \(s.inv:5:5\): no symmetry rule for op `_unknown_sum`"):
        pipeline_on([SN, X, "h = relu(x)", "y = sum(h, axis=N)", "output y is invariant"], swap_sum)


# -- invc check --------------------------------------------------------------------------------

def invc(*args):
    return subprocess.run([sys.executable, "-m", "compiler.cli", *map(str, args)], capture_output=True, text=True,
                          cwd=ROOT)


def test_check_prints_the_symmetry_table_without_importing_torch():
    probe = ("import sys, compiler.cli; compiler.cli.main(['check', 'examples/deepsets.inv']); "
             "assert 'torch' not in sys.modules, 'check imported torch'")
    r = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    assert "symmetry S(N): every claimed output is proved" in r.stdout
    assert "logits  invariant  invariant" in r.stdout


def test_check_refuses_the_broken_example_at_its_line():
    r = invc("check", "examples/broken_symmetry.inv")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert ("examples/broken_symmetry.inv:10:7: error: mlp over the 3 coordinates breaks E(3) invariance of "
            "output `logits`") in r.stderr
    assert "hint: build invariants first" in r.stderr


# Every rule can be made more permissive than the truth only at the cost of a failing test: each
# has an entry in REFUSED that it breaks (and whose claim is measured false), and a rule that
# granted that claim would prove it. These rules have no such entry, for the reason given.
NEVER_REFUSE_WRONGLY = {
    "weight": "a captured model's weight is the same whatever the input",
    "full_like": "a tensor of one value is invariant whatever it is shaped like",
    "expand": "it never refuses: facts move with their axes, which captured PROVED cases pin",
    "arange": "its one refusal, an arange over a set joined blockwise, guards ids no graph library computes; "
              "every op that reads such ids refuses them too",
    "embedding": "its ids are integers, never coordinates; permuted ids give permuted rows",
    "permute": "it never refuses; PROVED pins where its axes go",
    "unflatten_rows": "the rows pass emits it after the symmetry check, never a spec",
    "frame_conditioning": "verify reads it, never a spec",
    "frame_out": "every backbone result it sees follows the frames (frame_in and frame_tile make them so); "
                 "its refusals are conservative, and the soundness harness measures them",
}


# Where the generic ways do not reach: a frame_basis that takes any frame for an equivariant one.
PERMISSIVE = {"frame_basis": (lambda call: FrameBasis(call.node),)}


def breaking_op(lines) -> str:
    m = checked(*lines, prove=False)
    fact = first_failure(verdicts(m)).fact
    return next(n.op for n in m.nodes if n.value.name == fact.node) if isinstance(fact, Broken) else "claim"


def as_invariant(call):
    """The call with every tensor operand's fact made invariant."""
    def plain(a):
        if isinstance(a, Operand):
            return Operand(Invariant(), a.shape)
        return tuple(map(plain, a)) if isinstance(a, tuple) else a
    return replace(call, args=plain(call.args), kwargs={k: plain(v) for k, v in call.kwargs.items()})


def test_every_rule_has_a_negative_test_that_a_more_permissive_rule_fails(monkeypatch):
    RULES = VOCABULARY.graph
    broken_by = {}
    for lines, _, _ in REFUSED.values():
        broken_by.setdefault(breaking_op(lines), []).append(lines)
    assert set(RULES) - set(NEVER_REFUSE_WRONGLY) <= set(broken_by), "rules without a negative test"
    for op in set(RULES) - set(NEVER_REFUSE_WRONGLY):
        granted = []
        for lines in broken_by[op]:
            role = next(line.split(" is ")[-1] for line in lines if line.startswith("output"))
            # Three ways to be too permissive: grant whatever is claimed, pass the input's fact on,
            # or answer as if every input were invariant.
            rule = RULES[op].symmetry
            for permissive in (lambda call: call.group.claim(call.shape, role),
                               lambda call: call.operands()[0].fact,
                               lambda call: rule(as_invariant(call)),
                               *PERMISSIVE.get(op, ())):
                with monkeypatch.context() as patched:
                    patched.setitem(RULES, op, replace(RULES[op], symmetry=permissive))
                    try:
                        checked(*lines)
                        granted.append(lines)
                    except SpecError:
                        pass
        assert granted, f"no negative test of {op} fails when its rule is made more permissive"
