import os

import numpy as np
import onnx
import pytest
import torch

from common.errors import InvcError
from compiler.onnx_backend import save_onnx, to_onnx
from runtime.session import Session
from runtime.stamp import content_digest
from ops import attention, elementwise, linear, norms, reductions, shape
from tests.graphs import TARGETS, build, run_torch, sample

D = 8
X = {"x": (("B", "N", D), "f32")}
# Sizes the ONNX files run at: unlike each other and unlike the sizes graphs.build traces with.
SIZES = [{"B": 2, "N": 5}, {"B": 3, "N": 7}]


_GEN = torch.Generator().manual_seed(0)


def p(*shape):
    return torch.randn(*shape, generator=_GEN)


def one(op, args, inputs=X, params=None, **kwargs):
    """A graph computing y = op(*args, **kwargs)."""
    return build(inputs, [("y", op, args, kwargs)], {"y": "y"}, params)


ATTN = {"wqkv": p(3 * D, D), "bqkv": p(3 * D), "wo": p(D, D), "bo": p(D)}
MASKED = {**X, "mask": (("B", "N"), "bool")}

CASES = {
    "linear": lambda: one(TARGETS.linear, ["x", "w", "b"], params={"w": p(6, D), "b": p(6)}),
    "linear_nobias": lambda: one(TARGETS.linear, ["x", "w"], params={"w": p(6, D)}),
    "embedding": lambda: one(TARGETS.embedding, ["ids", "e"], {"ids": (("B", "N"), "i64")}, {"e": p(5, D)}),
    "layernorm": lambda: one(TARGETS.layernorm, ["x", "g", "b"], params={"g": p(D), "b": p(D)}),
    "layernorm_plain": lambda: one(TARGETS.layernorm, ["x"], eps=1e-3),
    "rmsnorm": lambda: one(TARGETS.rmsnorm, ["x", "g"], params={"g": p(D)}),
    "rmsnorm_plain": lambda: one(TARGETS.rmsnorm, ["x"], eps=1e-2),
    "relu": lambda: one(TARGETS.relu, ["x"]),
    "gelu": lambda: one(TARGETS.gelu, ["x"]),
    "silu": lambda: one(TARGETS.silu, ["x"]),
    "tanh": lambda: one(TARGETS.tanh, ["x"]),
    "sigmoid": lambda: one(TARGETS.sigmoid, ["x"]),
    "softmax": lambda: one(TARGETS.softmax, ["x"]),
    "softmax_axis1": lambda: one(TARGETS.softmax, ["x", 1]),
    "add": lambda: one(TARGETS.add, ["x", "v"], params={"v": p(D)}),
    "add_scalar": lambda: one(TARGETS.add, ["x", 2.5]),
    "add_int_scalar": lambda: one(TARGETS.add, ["ids", 3], {"ids": (("B", "N"), "i64")}),
    "sub_scalar_first": lambda: one(TARGETS.sub, [1.5, "x"]),
    "mul": lambda: one(TARGETS.mul, ["x", "s"], {**X, "s": (("B", "N", 1), "f32")}),
    "div": lambda: one(TARGETS.div, ["x", 3.0]),
    "div_int_promotes": lambda: one(TARGETS.div, ["i", "j"], {"i": (("N",), "i64"), "j": ((1,), "i64")}),
    "neg": lambda: one(TARGETS.neg, ["x"]),
    "matmul": lambda: one(TARGETS.matmul, ["x", "w"], params={"w": p(D, 5)}),
    "matmul_batched": lambda: build(X, [("t", TARGETS.permute, ["x", (0, 2, 1)]),
                                        ("y", TARGETS.matmul, ["x", "t"])], {"y": "y"}),
    "attention": lambda: one(TARGETS.attention, ["x", "wqkv", "bqkv", "wo", "bo", 2], params=ATTN),
    "attention_nobias": lambda: one(TARGETS.attention, ["x", "wqkv", None, "wo", None, 4], params=ATTN),
    "attention_mask": lambda: one(TARGETS.attention, ["x", "wqkv", "bqkv", "wo", "bo", 2], MASKED, ATTN,
                                  mask="mask"),
    "attention_causal": lambda: one(TARGETS.attention, ["x", "wqkv", "bqkv", "wo", "bo", 2], params=ATTN,
                                    causal=True),
    "attention_mask_causal": lambda: one(TARGETS.attention, ["x", "wqkv", "bqkv", "wo", "bo", 1], MASKED,
                                         ATTN, mask="mask", causal=True),
    "concat": lambda: one(TARGETS.concat, [["x", "z"], -1], {**X, "z": (("B", "N", 3), "f32")}),
    "reshape": lambda: one(TARGETS.reshape, ["x", (0, 0, 2, 4)]),
    "reshape_infer": lambda: one(TARGETS.reshape, ["x", (0, -1)]),
    "reshape_read": lambda: one(TARGETS.reshape, ["x", ((1,), (0,), D)]),
    "reshape_from_source": lambda: one(TARGETS.reshape, ["x", ((0, 0), -1, 2), "z"], {**X, "z": (("N",), "f32")}),
    "unflatten_rows": lambda: build(X, [("f", TARGETS.reshape, ["x", (-1, D)]), ("y", TARGETS.unflatten_rows, ["f", "x"])],
                                    {"y": "y"}),
    "permute": lambda: one(TARGETS.permute, ["x", (-1, 0, 1)]),
    "reduce_sum": lambda: one(TARGETS.reduce_sum, ["x", -1]),
    "reduce_mean": lambda: one(TARGETS.reduce_mean, ["x", (1, 2)], keepdim=True),
    "reduce_max": lambda: one(TARGETS.reduce_max, ["x", 1]),
    "reduce_min": lambda: one(TARGETS.reduce_min, ["x", (0,)], keepdim=True),
    # Ops that captured torch models lift to (capture/)
    "weight": lambda: build(X, [("w", TARGETS.weight, ["v"]), ("y", TARGETS.add, ["x", "w"])], {"y": "y"},
                            {"v": p(D)}),
    "channel_linear": lambda: build({"x": (("B", 4, "N"), "f32")}, [("y", TARGETS.channel_linear, ["x", "w", "b"])],
                                    {"y": "y"}, {"w": p(6, 4), "b": p(6)}),
    "channel_linear_2d": lambda: build({"x": (("B", 4, "N", 2), "f32")}, [("y", TARGETS.channel_linear, ["x", "w"])],
                                       {"y": "y"}, {"w": p(6, 4)}),
    "exp": lambda: one(TARGETS.exp, ["x"]),
    "sqrt": lambda: build(X, [("s", TARGETS.mul, ["x", "x"]), ("y", TARGETS.sqrt, ["s"])], {"y": "y"}),
    "leaky_relu": lambda: one(TARGETS.leaky_relu, ["x", 0.2]),
    "clamp": lambda: one(TARGETS.clamp, ["x", -0.5, 1.0]),
    "clamp_low": lambda: one(TARGETS.clamp, ["x", 0.25, None]),
    "power": lambda: build(X, [("s", TARGETS.mul, ["x", "x"]), ("y", TARGETS.power, ["s", -0.5])], {"y": "y"}),
    "where": lambda: build(X, [("m", TARGETS.compare, ["x", 0.1], {"how": "gt"}),
                               ("y", TARGETS.where, ["m", "x", 0.5])], {"y": "y"}),
    "where_tensors": lambda: one(TARGETS.where, ["m", "x", "z"], {**X, "m": (("B", "N", D), "bool"),
                                                                   "z": (("N", D), "f32")}),
    "cast_mask": lambda: build(X, [("m", TARGETS.compare, ["x", 0.1], {"how": "gt"}),
                                   ("y", TARGETS.cast, ["m", "like"], {"dtype": "f32"})], {"y": "y"},
                               {"like": torch.zeros(())}),
    "cast_ids": lambda: one(TARGETS.cast, ["ids"], {"ids": (("N",), "i64")}, dtype="i32"),
    "cast_to_ints": lambda: one(TARGETS.cast, ["x"], dtype="i64"),
    "compare": lambda: one(TARGETS.compare, ["x", 0.1], how="gt"),
    "compare_ne": lambda: one(TARGETS.compare, ["ids", "jds"], {"ids": (("N",), "i64"), "jds": (("N",), "i64")},
                              how="ne"),
    "select": lambda: one(TARGETS.select, ["x", 2, -3]),
    "narrow": lambda: one(TARGETS.narrow, ["x", 2, 1, 7, 2]),
    "tile": lambda: one(TARGETS.tile, ["x", (1, 2, 3)]),
    "expand": lambda: one(TARGETS.expand, ["x", (2, -1, -1, -1)]),
    "expand_by_size": lambda: one(TARGETS.expand, ["s", ((0, 0), -1, 4), "x"], {**X, "s": ((1, "N", 1), "f32")}),
    "full_like": lambda: one(TARGETS.full_like, ["x", 1.5]),
    "arange": lambda: build(X, [("i", TARGETS.arange, ["x", 1]), ("y", TARGETS.gather, ["x", "i", 1])], {"y": "y"}),
}

# The set and frame ops (ops/sets.py, ops/frames.py) are covered by their own tests (arange here, which
# only captured models use; mask_select, whose size only the data knows, by tests/test_capture.py).
OPS = {o.torch for f in (linear, norms, elementwise, attention, shape, reductions) for o in f.GRAPH} | {
    TARGETS.arange, TARGETS.gather}


def assert_matches_torch(gm, path, seed=0):
    """Runs the saved file at every size in SIZES and compares each output with the GraphModule's."""
    session = Session(path)
    for i, sizes in enumerate(SIZES):
        inputs = sample(gm, sizes, seed + i)
        expected, got = run_torch(gm, inputs), session.run(inputs)
        assert list(got) == list(expected)
        for info in session.outputs:  # declared static and plain symbolic dims hold at run time
            declared = [sizes.get(d, d) for d in info.shape]
            assert all(not isinstance(d, int) or d == n for d, n in zip(declared, got[info.name].shape))
        for name, want in expected.items():
            assert got[name].dtype == want.numpy().dtype, name
            if want.dtype == torch.bool:
                assert np.array_equal(got[name], want.numpy()), name
            else:
                np.testing.assert_allclose(got[name], want.numpy(), rtol=1e-5, atol=1e-5, err_msg=name,
                                           equal_nan=False)


def test_every_op_has_a_case():
    used = {n.target for case in CASES.values() for n in case().graph.nodes if n.op == "call_function"}
    assert used == OPS


def read(graph: onnx.GraphProto) -> set[str]:
    """The names the graph's nodes read, those of its If branches included."""
    return {name for node in graph.node for name in node.input} | {
        name for node in graph.node for a in node.attribute if a.type == onnx.AttributeProto.GRAPH for name in read(a.g)}


@pytest.mark.parametrize("case", CASES)
def test_op_matches_torch(case, tmp_path):
    gm = CASES[case]()
    model = to_onnx(gm)
    onnx.checker.check_model(model, full_check=True)
    consumed = read(model.graph)
    assert {i.name for i in model.graph.initializer} <= consumed
    assert_matches_torch(gm, save_onnx(model, tmp_path / "m.onnx"))


def test_fully_masked_row_stays_finite_and_matches():
    gm = CASES["attention_mask_causal"]()
    session = Session(to_onnx(gm))
    inputs = sample(gm, {"B": 3, "N": 6})
    inputs["mask"][1] = False
    got, want = session.run(inputs)["y"], run_torch(gm, inputs)["y"].numpy()
    assert np.isfinite(got).all()
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5, equal_nan=False)


def test_names_dims_initializers_and_metadata():
    gm = build({"input": (("B", "N", D), "f32")},
               [("h", TARGETS.linear, ["input", "block_0.w"]), ("y", TARGETS.relu, ["h"])],
               {"out": "y", "again": "y", "echo": "input"}, {"block_0.w": p(D, D)})
    assert next(iter(gm.graph.nodes)).name != "input"  # fx renamed it; the ONNX input must not be
    model = to_onnx(gm, graph_name="tiny", metadata={"spec": "tiny.inv", "invc": "0.1"})
    onnx.checker.check_model(model, full_check=True)
    graph = model.graph
    assert [i.name for i in graph.input] == ["input"]
    assert [o.name for o in graph.output] == ["out", "again", "echo"]
    assert [d.dim_param or d.dim_value for d in graph.input[0].type.tensor_type.shape.dim] == ["B", "N", D]
    (weight,) = graph.initializer
    assert weight.name == "block_0.w.T" and weight.data_type == onnx.TensorProto.FLOAT
    props = {p.key: p.value for p in model.metadata_props}
    assert props.pop("invc.content_sha256") == content_digest(model)  # invc's stamp, checked on load
    assert props == {"spec": "tiny.inv", "invc": "0.1"}
    assert graph.name == "tiny" and model.opset_import[0].version == 18


def test_tied_weight_is_stored_once_per_layout(tmp_path):
    gm = build({"ids": (("B", "N"), "i64")},
               [("h", TARGETS.embedding, ["ids", "e"]), ("y", TARGETS.linear, ["h", "e"])], {"logits": "y"},
               {"e": p(6, D)})
    model = to_onnx(gm)
    # the weights: the other initializers are emitters' constants ('h/const'), named by their node
    assert sorted(i.name for i in model.graph.initializer if "/" not in i.name) == ["e", "e.T"]
    assert_matches_torch(gm, save_onnx(model, tmp_path / "tied.onnx"))


def test_unknown_target_names_node_and_target():
    gm = build(X, [("wave", torch.sin, ["x"])], {"y": "wave"})
    with pytest.raises(InvcError, match=r"'wave'.*sin"):
        to_onnx(gm)


def test_old_opset_is_refused():
    with pytest.raises(InvcError, match="opset 17 is too old"):
        to_onnx(CASES["relu"](), opset=17)


def test_save_is_atomic(tmp_path):
    model = to_onnx(CASES["relu"]())
    target = tmp_path / "m.onnx"
    save_onnx(model, target)
    save_onnx(model, target)  # replaces in place
    assert os.listdir(tmp_path) == ["m.onnx"]
    assert onnx.load(target).graph == model.graph


@pytest.mark.parametrize("where", ["missing/m.onnx", "file/m.onnx"])
def test_save_refuses_bad_directory(tmp_path, where):
    (tmp_path / "file").write_text("not a directory")
    target = tmp_path / where
    with pytest.raises(InvcError, match=str(target)):
        save_onnx(to_onnx(CASES["relu"]()), target)
    assert sorted(os.listdir(tmp_path)) == ["file"]


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes through directory permissions")
def test_save_refuses_unwritable_directory(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    with pytest.raises(InvcError, match=str(locked / "m.onnx")):
        save_onnx(to_onnx(CASES["relu"]()), locked / "m.onnx")
    assert os.listdir(locked) == []


def test_a_failed_rename_leaves_no_temporary_file(tmp_path, monkeypatch):
    """What the root-skipped test above cannot reach here: the write succeeds, the final rename fails."""
    def refuse(*_args):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(os, "replace", refuse)
    target = tmp_path / "m.onnx"
    with pytest.raises(InvcError, match=f"{target}: Permission denied"):
        save_onnx(to_onnx(CASES["relu"]()), target)
    assert os.listdir(tmp_path) == []


SPECIALS = (np.nan, np.inf, -np.inf, 3e38, -3e38)  # 3e38: the f32 sum overflows, both ways at once


@pytest.mark.parametrize("dtype", ["f32", "f64"])
@pytest.mark.parametrize("kind", ["max", "min"])
def test_a_nan_anywhere_in_a_max_or_min_reaches_its_result(kind, dtype):
    """onnxruntime's ReduceMax and ReduceMin drop a NaN that is not the first entry reduced, torch
    keeps it; invc's file takes the exact path only when a sum of the input is NaN. Each draw puts
    NaN, ±inf and values whose f32 sum overflows at drawn places, some in one reduced line (none;
    infinities of both signs in one line with no NaN, where the sum is NaN and the max is not; ...),
    every axis, with and without keepdim."""
    rng = np.random.default_rng(22)
    target = getattr(TARGETS, f"reduce_{kind}")
    for axis, keepdim in [(a, k) for a in range(3) for k in (False, True)]:
        gm = one(target, ["x"], inputs={"x": (("B", "N", 3), dtype)}, axis=axis, keepdim=keepdim)
        session = Session(to_onnx(gm))
        for _ in range(8):
            x = rng.standard_normal((4, 5, 3)).astype(np.float32 if dtype == "f32" else np.float64)
            count = rng.integers(0, 4)  # scattered anywhere, and 0 to all entries of one reduced line
            x.flat[rng.choice(x.size, count, replace=False)] = rng.choice(SPECIALS, count)
            line = [rng.integers(0, n) for n in x.shape]
            for place in rng.choice(x.shape[axis], rng.integers(0, x.shape[axis] + 1), replace=False):
                line[axis] = place
                x[tuple(line)] = rng.choice(SPECIALS)
            got, want = session.run({"x": x})["y"], run_torch(gm, {"x": torch.from_numpy(x)})["y"].numpy()
            assert np.array_equal(np.isnan(got), np.isnan(want)), (axis, keepdim, x)
            np.testing.assert_allclose(got, want, rtol=0, atol=0, equal_nan=True)  # NaN places compared above


def test_a_max_over_layers_of_a_bounded_input_keeps_the_nan_that_an_overflow_makes(dtype="f32"):
    """A max over kernel-1 layers of an input decides whether NaN is possible from the input's size
    alone (ops/reductions.py, input_bound): large entries overflow inside the layers, and infinities
    of both signs meet in a sum (NaN), which the max must keep. (f32: the layers
    are captured models' Conv, which onnxruntime has no f64 kernel of.)"""
    inputs = {"x": (("B", 4, "N"), dtype)}
    rows = [("h", TARGETS.channel_linear, ["x", "w1", "b1"]), ("r", TARGETS.relu, ["h"]),
            ("y", TARGETS.channel_linear, ["r", "w2", "b2"]), ("s", TARGETS.relu, ["y"]),
            ("z", TARGETS.channel_linear, ["s", "w3", "b3"]), ("m", TARGETS.reduce_max, ["z", 2])]
    # A gain the bound must count: the second layer overflows to inf (a fused multiply-add never makes
    # NaN there), and the third meets infinities of both signs.
    weights = {"w1": p(8, 4), "b1": p(8), "w2": p(16, 8) * 1e4, "b2": p(16), "w3": p(5, 16), "b3": p(5)}
    gm = build(inputs, rows, {"m": "m"}, {k: w.double() if dtype == "f64" else w for k, w in weights.items()})
    model = to_onnx(gm)
    assert any(n.op_type == "Abs" and n.input[0] == "x" for n in model.graph.node)  # the input's bound decides
    session, rng = Session(model), np.random.default_rng(5)
    # One point of many, at places where onnxruntime's vectorised ReduceMax drops a NaN (not all do).
    for scale, point in [(s, k) for s in (1.0, 1e20, 5e35, 1e38) for k in range(1, 64, 6)]:
        x = rng.standard_normal((3, 4, 64)).astype(np.float32)
        x[:, :, point] *= scale  # no overflow, large, overflow inside only, overflow at once
        got, want = session.run({"x": x})["m"], run_torch(gm, {"x": torch.from_numpy(x)})["m"].numpy()
        assert np.array_equal(np.isnan(got), np.isnan(want)), (scale, point)
        if scale >= 5e35:  # below the input's own bound, 1e37: only weights that count find it
            assert np.isnan(want).any(), "the draw must overflow to NaN, or it tests nothing"
        np.testing.assert_allclose(got, want, rtol=1e-3, atol=0, equal_nan=True)  # NaN places compared above


def test_the_input_bound_holds_for_every_layer_and_counts_each_weight():
    """input_bound's gain and offset bound every entry of every layer, measured in float64 at inputs
    of several sizes, and a layer whose weights grow makes the gain grow by their largest row sum."""
    from compiler.onnx_backend import GraphBuilder
    inputs = {"x": (("B", 4, "N"), "f32")}
    rows = [("h", TARGETS.channel_linear, ["x", "w1", "b1"]), ("r", TARGETS.relu, ["h"]),
            ("y", TARGETS.channel_linear, ["r", "w2", "b2"])]
    weights = {"w1": p(8, 4), "b1": p(8), "w2": p(16, 8) * 1e4, "b2": p(16)}
    gm = build(inputs, rows, {"y": "y"}, weights)
    builder, nodes = GraphBuilder(gm, set()), {n.name: n for n in gm.graph.nodes}
    builder.names[nodes["x"]] = "x"  # as to_onnx names the graph inputs
    _, gain, offset, *_ = reductions.input_bound(builder, nodes["y"])
    rows_sum = [float(w.abs().sum(1).max()) for w in (weights["w1"], weights["w2"])]
    assert gain == pytest.approx(rows_sum[0] * rows_sum[1], rel=1e-6)
    rng = np.random.default_rng(9)
    for scale in (1e-3, 1.0, 1e6):
        x = torch.from_numpy(rng.standard_normal((3, 4, 50)) * scale)
        h = torch.nn.functional.conv1d(x, weights["w1"].double()[..., None], weights["b1"].double())
        for layer in (h, torch.nn.functional.conv1d(h.relu(), weights["w2"].double()[..., None], weights["b2"].double())):
            assert float(layer.abs().max()) <= gain * float(x.abs().max()) + offset


@pytest.mark.parametrize("act", elementwise.ACTIVATIONS)
def test_activations_agree_at_infinities_and_nan(act):
    """Each activation's torch form and ONNX give the same value, NaN included, at ±inf, NaN and
    far out (torch's gelu alone gave NaN at +inf)."""
    gm = one(getattr(TARGETS, act), ["x"], inputs={"x": (("B", 6), "f32")})
    rng = np.random.default_rng(7)
    x = np.concatenate([[[-np.inf, np.inf, np.nan, -88.0, 88.0, 0.0]],
                        rng.standard_normal((3, 6)) * 10.0 ** rng.integers(-3, 3, (3, 6))]).astype(np.float32)
    got = Session(to_onnx(gm)).run({"x": x})["y"]
    want = run_torch(gm, {"x": torch.from_numpy(x)})["y"].numpy()
    assert np.array_equal(np.isnan(got), np.isnan(want)), (got[0], want[0])
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6, equal_nan=True)  # NaN places compared above
