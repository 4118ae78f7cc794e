"""Torch models captured through torch.export (tests/torch_models.py, named by tests/torch_models.inv)
compile to ONNX files that match the torch modules in onnxruntime: on random graphs, with a NaN in one
node's features (torch keeps a NaN in a max, and the file must put NaN at exactly torch's places), with
nodes no edge reaches (empty segments), with no edges at all (E = 0) and with a single node."""
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

import compiler
from tests import torch_models

SPEC = Path(__file__).with_name("torch_models.inv")
GRAPH_MODELS = {"gin": torch_models.gin, "sage": torch_models.sage, "gat": torch_models.gat,
                "egnn": torch_models.egnn}
NODES, EDGES = 40, 160
GRAPHS = ("random", "nan", "unreached", "no_edges", "one_node")


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    """Each model of the spec compiled once: its torch module and a plain onnxruntime session (invc's
    Session refuses an input with a 0-size dim, E = 0 included, by design; the file itself must run)."""
    out = tmp_path_factory.mktemp("capture")
    models = {**GRAPH_MODELS, "pointnet": torch_models.pointnet}
    result = {}
    for name, factory in models.items():
        path = out / f"{name}.onnx"
        compiler.compile(SPEC, model=name, out=path)
        result[name] = factory(), ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return result


def run_both(module, session, feeds: dict) -> list[tuple[np.ndarray, np.ndarray]]:
    """(onnxruntime, torch) pairs, output by output; the feeds follow the spec's input order, which is
    forward's argument order."""
    with torch.no_grad():
        want = module(*(torch.from_numpy(v) for v in feeds.values()))
    want = want if isinstance(want, tuple) else (want,)
    return list(zip(session.run(None, feeds), (w.numpy() for w in want)))


def assert_matches(got: np.ndarray, want: np.ndarray) -> None:
    """NaN exactly where torch has NaN; finite values within 1e-5 relative to the output's scale."""
    assert got.shape == want.shape
    assert np.array_equal(np.isnan(got), np.isnan(want)), \
        f"NaN at {np.argwhere(np.isnan(got) != np.isnan(want))[:5].tolist()} in one runtime only"
    scale = max(1.0, float(np.abs(want[np.isfinite(want)]).max(initial=0.0)))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * scale, equal_nan=True)  # NaN places compared above


def graph_feeds(model: str, case: str, rng) -> dict:
    nodes, edges = {"no_edges": (NODES, 0), "one_node": (1, 3)}.get(case, (NODES, EDGES))
    x = rng.standard_normal((nodes, torch_models.FEATURES), dtype=np.float32)
    # "unreached": edges only among the first half, so the other nodes receive (and send) nothing.
    edge_index = rng.integers(0, nodes // 2 if case == "unreached" else nodes, (2, edges))
    if case == "nan":
        x[3, 2] = np.nan
        edge_index[0, :5] = 3   # node 3 sends to several nodes, each of which also hears from others
    feeds = {"x": x, "edge_index": edge_index}
    if model == "egnn":
        feeds["pos"] = rng.standard_normal((nodes, 3), dtype=np.float32)
    return feeds


@pytest.mark.parametrize("case", GRAPHS)
@pytest.mark.parametrize("model", GRAPH_MODELS)
def test_graph_model_matches_torch(compiled, model, case):
    feeds = graph_feeds(model, case, np.random.default_rng(len(case)))
    for got, want in run_both(*compiled[model], feeds):
        if case == "nan":  # the case shows something only if torch has NaN rows and finite ones
            assert np.isnan(want).any() and np.isfinite(want).all(axis=1).any()
        assert_matches(got, want)


@pytest.mark.parametrize("batch, points", [(4, 64), (1, 64), (3, 1)])
def test_pointnet_matches_torch(compiled, batch, points):
    clouds = np.random.default_rng(points).standard_normal((batch, 3, points), dtype=np.float32)
    [(got, want)] = run_both(*compiled["pointnet"], {"points": clouds})
    assert_matches(got, want)


def test_pointnet_nan_in_one_point_reaches_only_its_cloud(compiled):
    clouds = np.random.default_rng(5).standard_normal((4, 3, 64), dtype=np.float32)
    clouds[1, 0, 40] = np.nan   # not the first point: onnxruntime's own ReduceMax would drop it
    [(got, want)] = run_both(*compiled["pointnet"], {"points": clouds})
    assert np.isnan(want[1]).all() and np.isfinite(np.delete(want, 1, axis=0)).all()
    assert_matches(got, want)
