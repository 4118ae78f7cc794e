"""Set aggregators: checker rules, torch semantics against direct references, ONNX against torch,
empty sets, NaN, and the runtime's check of CSR offsets."""
import numpy as np
import onnx
import pytest
import torch

import compiler
from dsl.errors import SpecError
from tests.graphs import TARGETS
from runtime.session import InputError, Session

KINDS = ("sum", "mean", "max", "min")
REFERENCE = {"sum": np.sum, "mean": np.mean, "max": np.max, "min": np.min}


def compiled(tmp_path, body: str, inputs: str):
    spec = tmp_path / "m.inv"
    spec.write_text(f"model m() {{\n{inputs}\n{body}\noutput y\n}}\n")
    result = compiler.compile(spec)
    onnx.checker.check_model(result.onnx, full_check=True)
    return result.module, Session(result.onnx)


def run_both(gm, session, feeds: dict):
    with torch.no_grad():
        want = gm(*(torch.from_numpy(v) for v in feeds.values())).numpy()
    return want, session.run(feeds)["y"]


def assert_same(want, got, kind, equal_nan=False):
    """Selections are exact, sums and means close; NaN passes only where the caller checked it is due."""
    tol = 0 if kind in ("max", "min") else 1e-5
    np.testing.assert_allclose(got, want, rtol=tol, atol=tol, equal_nan=equal_nan)


def dense_feeds(rng, b, n, empty_row=True):
    x = rng.standard_normal((b, n, 4)).astype(np.float32)
    mask = rng.random((b, n)) < 0.6
    mask[0] = False if empty_row else mask[0]
    return {"x": x, "mask": mask}


@pytest.mark.parametrize("kind", KINDS)
def test_masked_pool_matches_reference_and_onnx(tmp_path, kind):
    gm, session = compiled(tmp_path, f'y = pool(x, axis=N, kind="{kind}", mask=mask)',
                           "input x: f32[B, N, 4]\ninput mask: bool[B, N]")
    rng = np.random.default_rng(0)
    for b, n in [(3, 5), (4, 9)]:
        feeds = dense_feeds(rng, b, n)
        want, got = run_both(gm, session, feeds)
        assert_same(want, got, kind)
        for i in range(b):
            real = feeds["x"][i][feeds["mask"][i]]
            expect = REFERENCE[kind](real, axis=0) if len(real) else np.zeros(4)  # empty set -> 0
            np.testing.assert_allclose(want[i], expect, rtol=1e-5, atol=1e-6, equal_nan=False)


@pytest.mark.parametrize("kind", KINDS)
def test_unmasked_pool_and_nan_propagation(tmp_path, kind):
    gm, session = compiled(tmp_path, f'y = pool(x, axis=1, kind="{kind}")', "input x: f32[B, N, 4]")
    x = np.random.default_rng(1).standard_normal((2, 6, 4)).astype(np.float32)
    x[0, 2, 1] = np.nan  # not the last element: onnxruntime's own ReduceMax would drop it
    want, got = run_both(gm, session, {"x": x})
    assert np.isnan(want[0, 1]) and np.isnan(got[0, 1])
    assert np.isfinite(got[1]).all() and np.isfinite(np.delete(got[0], 1)).all()
    assert_same(want, got, kind, equal_nan=True)


@pytest.mark.parametrize("kind", ["sum", "max"])
def test_nan_in_padding_is_ignored_and_in_real_elements_propagates(tmp_path, kind):
    gm, session = compiled(tmp_path, f'y = pool(x, axis=N, kind="{kind}", mask=mask)',
                           "input x: f32[B, N, 4]\ninput mask: bool[B, N]")
    feeds = dense_feeds(np.random.default_rng(2), 3, 6, empty_row=False)
    feeds["mask"][:, :2] = [True, False]
    feeds["x"][0, 1, :] = np.nan   # padding
    feeds["x"][1, 0, 2] = np.nan   # a real element
    want, got = run_both(gm, session, feeds)
    for out in (want, got):
        assert np.isfinite(out[0]).all() and np.isnan(out[1, 2]) and np.isfinite(out[2]).all()


def test_attention_pool_is_a_masked_softmax_average(tmp_path):
    gm, session = compiled(tmp_path, "y = attention_pool(x, axis=N, mask=mask)",
                           "input x: f32[B, N, 4]\ninput mask: bool[B, N]")
    query = dict(gm.named_parameters())["y.query"].detach().numpy()
    rng = np.random.default_rng(3)
    for b, n in [(3, 5), (2, 8)]:
        feeds = dense_feeds(rng, b, n)
        want, got = run_both(gm, session, feeds)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6, equal_nan=False)
        np.testing.assert_allclose(want[0], 0.0, rtol=0, atol=0, equal_nan=False)  # the empty set
        for i in range(1, b):
            real = feeds["x"][i][feeds["mask"][i]]
            w = np.exp(real @ query / 2.0)
            np.testing.assert_allclose(want[i], (w / w.sum()) @ real, rtol=1e-4, atol=1e-6, equal_nan=False)
        perm = rng.permutation(n)
        shuffled = {"x": feeds["x"][:, perm], "mask": feeds["mask"][:, perm]}
        np.testing.assert_allclose(run_both(gm, session, shuffled)[0], want, rtol=1e-5, atol=1e-6, equal_nan=False)


def ragged(rng, rows: int, sizes: list[int]):
    offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    assert offsets[-1] == rows
    return rng.standard_normal((rows, 4)).astype(np.float32), offsets


@pytest.mark.parametrize("deterministic", [False, True])
@pytest.mark.parametrize("kind", KINDS)
def test_segment_pool_matches_reference_and_onnx(tmp_path, kind, deterministic):
    det = "true" if deterministic else "false"
    gm, session = compiled(tmp_path, f'y = segment_pool(x, offsets, kind="{kind}", deterministic={det})',
                           "input x: f32[N, 4]\ninput offsets: i64[S]")
    rng = np.random.default_rng(4)
    for sizes in ([3, 0, 2, 4, 0], [0, 1, 6]):  # empty sets first, inside and last
        x, offsets = ragged(rng, sum(sizes), sizes)
        want, got = run_both(gm, session, {"x": x, "offsets": offsets})
        assert want.shape == got.shape == (len(sizes), 4)
        assert_same(want, got, kind)
        for s, (lo, hi) in enumerate(zip(offsets[:-1], offsets[1:])):
            expect = REFERENCE[kind](x[lo:hi], axis=0) if hi > lo else np.zeros(4)
            np.testing.assert_allclose(want[s], expect, rtol=1e-5, atol=1e-6, equal_nan=False)


@pytest.mark.parametrize("kind", ["max", "min", "mean"])
def test_ragged_nan_stays_in_its_set(tmp_path, kind):
    gm, session = compiled(tmp_path, f'y = segment_pool(x, offsets, kind="{kind}")',
                           "input x: f32[N, 4]\ninput offsets: i64[S]")
    x, offsets = ragged(np.random.default_rng(5), 7, [4, 3])
    x[1, 3] = np.nan  # set 0, not its last row
    want, got = run_both(gm, session, {"x": x, "offsets": offsets})
    for out in (want, got):
        assert np.isnan(out[0, 3]) and np.isfinite(out[0, :3]).all() and np.isfinite(out[1]).all()


@pytest.mark.parametrize("kind", KINDS)
def test_scatter_pool_takes_ids_in_any_order(tmp_path, kind):
    gm, session = compiled(tmp_path, f'y = scatter_pool(x, ids, like=sets, kind="{kind}")',
                           "input x: f32[N, 4]\ninput ids: i64[N]\ninput sets: f32[S, 2]")
    rng = np.random.default_rng(6)
    x = rng.standard_normal((9, 4)).astype(np.float32)
    ids = rng.permutation([0, 0, 0, 2, 2, 3, 3, 3, 3]).astype(np.int64)  # set 1 and set 4 empty
    want, got = run_both(gm, session, {"x": x, "ids": ids, "sets": np.zeros((5, 2), np.float32)})
    assert_same(want, got, kind)
    for s in range(5):
        expect = REFERENCE[kind](x[ids == s], axis=0) if (ids == s).any() else np.zeros(4)
        np.testing.assert_allclose(want[s], expect, rtol=1e-5, atol=1e-6, equal_nan=False)


def test_torch_modes_agree():
    x = torch.randn(50, 3)
    offsets = torch.tensor([0, 10, 10, 31, 50])
    for kind in KINDS:
        torch.testing.assert_close(TARGETS.segment_reduce(x, offsets, kind, True),
                                   TARGETS.segment_reduce(x, offsets, kind, False))


@pytest.mark.parametrize("offsets, message", [
    ([1, 3, 7], "must start at 0"),
    ([0, 5, 3, 7], r"must never decrease: offsets\[2\] = 3 < offsets\[1\] = 5"),
    ([0, 3, 6], "must end at the row count 7"),
])
def test_session_refuses_bad_offsets(tmp_path, offsets, message):
    _, session = compiled(tmp_path, 'y = segment_pool(x, offsets, kind="sum")',
                          "input x: f32[N, 4]\ninput offsets: i64[S]")
    x = np.zeros((7, 4), np.float32)
    with pytest.raises(InputError, match=message):
        session.run({"x": x, "offsets": np.array(offsets, np.int64)})


@pytest.mark.parametrize("body, inputs, message", [
    ('y = pool(x, axis=N, kind="median")', "input x: f32[B, N, 4]", "unknown kind 'median'"),
    ("y = pool(x, axis=N, mask=mask)", "input x: f32[B, N, 4]\ninput mask: bool[B]",
     r"the mask must be bool\[B, N\]"),
    ("y = pool(x, axis=K)", "input x: f32[B, N, 4]", "axis `K` is not a dim"),
    ("y = attention_pool(x, axis=B)", "input x: f32[B, N, 4]", "set axis N second to last"),
    ("y = segment_pool(x, offsets)", "input x: f32[N, 4]\ninput offsets: f32[S]",
     "`offsets` must be an integer vector"),
    ("y = scatter_pool(x, ids, like=x)", "input x: f32[N, 4]\ninput ids: i64[M]", "one set per row"),
])
def test_checker_errors_point_at_the_call(tmp_path, body, inputs, message):
    with pytest.raises(SpecError, match=message) as e:
        compiled(tmp_path, body, inputs)
    assert (e.value.line, e.value.column) == (inputs.count("\n") + 3, 5)


def test_unsqueeze_pairs_elements_by_broadcasting(tmp_path):
    gm, session = compiled(tmp_path, "y = unsqueeze(x, 2) - unsqueeze(x, 1)", "input x: f32[B, N, 3]")
    x = np.random.default_rng(7).standard_normal((2, 4, 3)).astype(np.float32)
    want, got = run_both(gm, session, {"x": x})
    np.testing.assert_allclose(want, x[:, :, None] - x[:, None], rtol=0, atol=0, equal_nan=False)
    np.testing.assert_allclose(got, want, rtol=0, atol=0, equal_nan=False)


@pytest.mark.parametrize("offsets, message", [([0, 3, 2, 5], r"never decrease: offsets\[1\] = 3 > offsets\[2\] = 2"),
                                              ([0, 2, 7], r"end at the number of elements \(5\), got 0 ... 7")])
def test_triton_segment_op_names_bad_offsets_on_its_torch_path(offsets, message):
    pytest.importorskip("triton")
    from ops import custom as triton_ops

    with pytest.raises(ValueError, match=message):
        triton_ops.segment_reduce(torch.randn(5, 4), torch.tensor(offsets), "sum")
