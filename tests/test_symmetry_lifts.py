"""Conservative refusals lifted in issue 21 (class 4), each both ways: the construct is proved and
measured in float64 with freshly drawn weights, and its nearest false variant is still refused and
measured false. Each case is drawn from a seed (reduction kind, widths, set count, axis spelling),
so the tests cover a family rather than one spec."""
import random

import pytest

from tests.test_symmetry import assert_refused_and_false, checked, measure
from dsl.symmetry import verdicts

POS, VEL, X = "input pos: f32[B, N, 3] is position", "input vel: f32[B, N, 3] is vector", "input x: f32[B, N, 4]"
CENTRED = "d = pos - mean(pos, axis=N, keepdim=true)"


def t3_offset(rng):
    c = rng.choice(["vel", "relu(vel)", "linear(vel, 3)", "1.5", "sum(vel, axis=-1, keepdim=true)"])
    op = rng.choice(["+", "-"])
    return ["symmetry T(3)", POS, VEL, f"y = pos {op} {c}", "output y is position"]


def union(rng):
    parts = ", ".join(rng.choice(["x", "relu(x)", "linear(x, 4)"]) for _ in range(rng.choice([2, 3])))
    pool = rng.choice([f'max(u, axis={rng.choice(["N", "1"])})', 'pool(u, axis=1, kind="mean")', "sum(u, axis=-2)"])
    return ["symmetry S(N)", X, f"u = concat({parts}, axis=1)", f"y = {pool}", "output y is invariant"]


def convex_transposed(rng):
    k = rng.choice([1, 2])
    w = f"softmax(linear(x, {k}), axis={rng.choice(['1', 'N', '-2'])})"
    return ["symmetry E(3), S(N)", POS, X, f"c = transpose(pos, a=-2, b=-1) @ {w}",
            "y = transpose(c, a=-2, b=-1)", "output y is position"]


def flattened_sets(rng):
    how = rng.choice(["sum", "mean", "max", "min"])
    body = rng.choice(["f", "relu(linear(f, 3))", "f * f"])
    return ["symmetry S(N)", X, "f = flatten(x, start=0, end=1)", f"y = {how}({body}, axis=0)", "output y is invariant"]


def rank2(rng):
    outer = rng.choice(["transpose(d, a=-2, b=-1) @ d",
                        "unsqueeze(sum(vel, axis=N), -1) @ unsqueeze(sum(d, axis=N), -2)"])
    product = rng.choice(["t @ unsqueeze(u, -1)", "transpose(unsqueeze(u, -2) @ t, a=-2, b=-1)",
                          "(t @ transpose(t, a=-2, b=-1)) @ unsqueeze(u, -1)"])
    return ["symmetry E(3), S(N)", POS, VEL, CENTRED, f"t = {outer}", "u = sum(vel, axis=N)",
            f"y = sum({product}, axis=-1)", "output y is vector"]


def stacked(rng):
    parts = rng.choice([("vel", "d", "vector"), ("pos", "pos + vel", "position"), ("d", "vel", "vector")])
    count = rng.choice([2, 3])
    joined = ", ".join((parts[0], parts[1], parts[0])[:count])
    return ["symmetry E(3), S(N)", POS, VEL, CENTRED, f"y = reshape(concat({joined}, axis=-1), [B, N, {count}, 3])",
            f"output y is {parts[2]}"]


def t3_max(rng):
    how, keep = rng.choice(["max", "min"]), rng.random() < 0.5
    axis = rng.choice(["N", "1", "0"])
    return ["symmetry T(3)", POS, f"y = {how}(pos, axis={axis}{', keepdim=true' * keep})", "output y is position"]


LIFTS = {"T(3): a position plus an invariant": t3_offset, "a set union pooled": union,
         "a convex combination written with a transpose": convex_transposed,
         "the set axis flattened with another, reduced whole": flattened_sets,
         "a rank-2 product contracted to a vector": rank2, "vectors concatenated and reshaped to [.., k, 3]": stacked,
         "T(3): max or min of positions": t3_max}


@pytest.mark.parametrize("seed", range(2))
@pytest.mark.parametrize("draw", LIFTS.values(), ids=LIFTS.keys())
def test_a_lifted_refusal_is_proved_and_measured(draw, seed):
    lines = draw(random.Random(seed))
    m = checked(*lines)
    assert all(v.holds for v in verdicts(m)), lines
    measure(m)


# The nearest false variants: still refused at the op, and false when measured.
BOUNDARIES = {
    "under E(3), an invariant offset": (["symmetry E(3)", POS, VEL, "y = pos + sum(vel * vel, axis=-1, keepdim=true)",
                                         "output y is position"], "`+` of a position and an invariant"),
    "under T(3), a scaled position": (["symmetry T(3)", POS, "y = pos * 2.0", "output y is position"],
                                      "`*` of a position and a constant"),
    "under T(3), a masked max of positions": (["symmetry T(3)", POS, "input m: bool[B, N]",
                                               "y = pool(pos, axis=N, kind=\"max\", mask=m)", "output y is position"],
                                              "pool of positions over sets that may be empty"),
    "under E(3), the max of positions": (["symmetry E(3)", POS, "y = max(pos, axis=N)", "output y is position"],
                                         "max of a position over N"),
    "two layouts of B·N rows meeting": (["symmetry S(N)", X, "f = flatten(x, start=0, end=1)",
                                        "g = flatten(transpose(x, 0, 1), start=0, end=1)", "y = sum(f * g, axis=0)",
                                        "output y is invariant"], "joins tensors of different"),
    # A blockwise permutation is named by its layout; joined or merged again, the name would no
    # longer tell two layouts of the same rows apart, so both are refused.
    "unions of two layouts of B·N rows": (["symmetry S(N)", X, "f = flatten(x, start=0, end=1)",
                                          "g = flatten(transpose(x, 0, 1), start=0, end=1)",
                                          "a = concat(f, f, axis=0)", "b = concat(g, g, axis=0)",
                                          "y = sum(a * b, axis=0)", "output y is invariant"], "concat along B*N"),
    "B·N rows merged again": (["symmetry S(N)", X, "f = flatten(x, start=0, end=1)",
                               "g = flatten(transpose(x, 0, 1), start=0, end=1)",
                               "a = flatten(concat(unsqueeze(f, 1), unsqueeze(f, 1), axis=1), start=0, end=1)",
                               "b = flatten(concat(unsqueeze(g, 1), unsqueeze(g, 1), axis=1), start=0, end=1)",
                               "y = sum(a * b, axis=0)", "output y is invariant"], "flatten over B*N"),
    "a union in causal attention": (["symmetry S(N)", X, "u = concat(x, relu(x), axis=1)",
                                     "y = sum(attention(u, causal=true), axis=1)", "output y is invariant"],
                                    "causal attention over 2*N"),
    "a convex combination over the wrong axis": (["symmetry E(3), S(N)", POS, X,
                                                  "c = transpose(pos, a=-2, b=-1) @ softmax(linear(x, 2), axis=-1)",
                                                  "output c is invariant"], "matmul of positions"),
    "a rank-2 tensor summed over a coordinate axis": (["symmetry E(3), S(N)", POS, VEL, CENTRED,
                                                       "t = transpose(d, a=-2, b=-1) @ d", "y = sum(t, axis=-1)",
                                                       "output y is vector"], "sum of a rank-2 tensor"),
    "a rank-2 tensor times a position": (["symmetry E(3), S(N)", POS, VEL, CENTRED, "t = transpose(d, a=-2, b=-1) @ d",
                                          "y = transpose(t @ transpose(pos, a=-2, b=-1), a=-2, b=-1)",
                                          "output y is position"], "matmul of a rank-2 tensor"),
    "stacked vectors split the wrong way": (["symmetry E(3), S(N)", POS, VEL,
                                             "y = reshape(concat(vel, vel, axis=-1), [B, N, 3, 2])",
                                             "output y is invariant"],
                                            "reshape over the stacked coordinates"),
    "a vector stacked with a position": (["symmetry E(3), S(N)", POS, VEL,
                                          "y = reshape(concat(vel, pos, axis=-1), [B, N, 2, 3])", "output y is vector"],
                                         "concat joins a vector with a position"),
}


@pytest.mark.parametrize("lines, message", BOUNDARIES.values(), ids=BOUNDARIES.keys())
def test_the_nearest_false_variant_is_still_refused(lines, message):
    assert_refused_and_false(lines, message)
