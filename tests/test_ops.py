"""Every op, from its one definition in ops/ to the numbers. Each row of ROWS is a small spec calling
a spec op (and so emitting its graph ops) under a declared symmetry; each row runs through the
checker (claims proved), lowering, torch against ONNX in onnxruntime (weights drawn again, Gaussian)
and `invc verify`, which measures every proved claim on torch (fp32, fp64, other weights) and ONNX.
Adding an op costs its definition plus one row here. The language reference's op tables are
generated from the same definitions."""
import copy
import re
from pathlib import Path

import pytest
import torch

from compiler.driver import build
from compiler.onnx_backend import to_onnx
from compiler.verify import SIZES, redrawn, relative_error, verify, worst
from ops import doc
from ops.registry import VOCABULARY
from tests.graphs import CAPTURED_ONLY
from passes.cleanup import default_pipeline, for_target
from runtime.session import Session, random_inputs

SN, SE3 = "symmetry S(N)", "symmetry SE(3)"
X = "input x: f32[B, N, 4]"
MASK = "input m: bool[B, N]"
POINTS = ("input pos: f32[B, N, 3] is position", "input vel: f32[B, N, 3] is vector", "input q: f32[B, N, 2] is scalar")
ROWS = {  # name: (spec lines, defs)
    "linear": ([SN, X, "y = linear(x, 3)", "output y is scalar"], ""),
    "mlp, gelu": ([SN, X, 'y = mlp(x, widths=[5, 3], act="gelu")', "output y is scalar"], ""),
    "embedding": ([SN, "input ids: i64[B, N]", "y = embedding(ids, num=7, dim=3)", "output y is scalar"], ""),
    "matmul, softmax, transpose": ([SN, X, "y = softmax(x @ transpose(x), axis=-1) @ x", "output y is scalar"], ""),
    "layernorm, rmsnorm": ([SN, X, "y = rmsnorm(layernorm(x), eps=1e-5)", "output y is scalar"], ""),
    "activations, arithmetic": ([SN, X, "y = relu(x) + silu(x) * tanh(x) - sigmoid(x) / 2 + -x", "output y is scalar"], ""),
    "attention": ([SN, X, MASK, "y = attention(x, heads=2, mask=m)", "output y is scalar"], ""),
    "concat, unsqueeze": ([SN, X, "y = concat(x + unsqueeze(sum(x, axis=N), 1), relu(x), axis=-1)", "output y is scalar"], ""),
    "reshape, flatten, permute": ([SN, X, "y = permute(flatten(reshape(x, [B, N, 2, 2]), start=2), [B, 2, N])",
                                   "output y is scalar"], ""),
    "reductions": ([SN, X, "y = sum(x, axis=N) + mean(x, axis=N) + max(x, axis=N) - min(x, axis=N, keepdim=true)",
                    "output y is invariant"], ""),
    "pool": ([SN, X, MASK, 'y = pool(x, axis=N, kind="max", mask=m) + pool(x, axis=N, kind="mean", mask=m)',
              "output y is invariant"], ""),
    "attention_pool": ([SN, X, MASK, "y = attention_pool(x, axis=N, mask=m)", "output y is invariant"], ""),
    "segment_pool": (["symmetry O(3)", "input v: f32[R, 3] is vector", "input offsets: i64[S]",
                      'y = segment_pool(v, offsets, kind="sum") + segment_pool(v, offsets, kind="mean", deterministic=true)',
                      "output y is vector"], ""),
    "gather, scatter_pool": ([SN, "input h: f32[N, 4]", "input senders: i64[E] is index(N)",
                              "input receivers: i64[E] is index(N)",
                              'y = scatter_pool(gather(h, senders, axis=N), receivers, like=h, kind="sum")',
                              "output y is scalar"], ""),
    "frame_average": ([SE3, *POINTS, "input mask: bool[B, N]",
                       'v = frame_average(net, [pos, vel, q], group="E(3)", out="vector")',
                       'p = frame_average(masked, [pos, vel, q], group="SE(3)", out="position", mask=mask)',
                       "output v is vector", "output p is position"],
                      "def net(p, v, q) { return linear(concat(p, v, q, axis=-1), 3) }\n"
                      "def masked(p, v, q, mask) { return net(p, v, q) - mean(net(p, v, q), axis=N, keepdim=true) }"),
}
# frame_conditioning: read by `invc verify` (tests/test_frames.py runs its forms); the rest only captured
# torch models reach (tests/test_onnx_backend.py and tests/test_capture*.py run them)
NOT_FROM_SPECS = {"frame_conditioning", *CAPTURED_ONLY}


def spec_file(name: str, tmp_path) -> Path:
    lines, defs = ROWS[name]
    path = tmp_path / "row.inv"
    path.write_text(defs + "\nmodel row() {\n  " + "\n  ".join(lines) + "\n}\n")
    return path


def compiled(spec: Path):
    """The spec checked, its claims proved, lowered with its weights drawn again (Gaussian), and
    through the compile pipeline's passes: the graph, its ONNX model and the torch module."""
    module = redrawn(build(spec)).float()
    gm = for_target(default_pipeline(), "onnx").run(copy.deepcopy(module))
    return gm, to_onnx(gm), module


@pytest.mark.parametrize("name", ROWS)
def test_op_is_checked_lowered_emitted_and_measured(name, tmp_path):
    spec = spec_file(name, tmp_path)
    _, onnx, module = compiled(spec)
    session = Session(onnx)
    feeds = random_inputs(session.inputs, SIZES, seed=3, default=5)
    got = session.run(feeds)
    with torch.no_grad():
        want = module(*(torch.from_numpy(feeds[i.name]) for i in session.inputs))
    want = want if isinstance(want, tuple) else (want,)
    error = worst(relative_error(w, torch.from_numpy(g)) for g, w in zip(got.values(), want))
    assert error <= 1e-5, f"{name}: torch and onnxruntime differ by {error:.1e}"
    report = verify(spec, trials=2)
    assert report.static == "proved" and report.ok, str(report)


def test_every_graph_op_has_a_row(tmp_path):
    used = set()
    for name in ROWS:
        spec = spec_file(name, tmp_path)
        for gm in (build(spec), compiled(spec)[0]):
            used |= {n.target.__name__ for n in gm.graph.nodes if n.op == "call_function"}
    assert used == set(VOCABULARY.graph) - NOT_FROM_SPECS


def test_the_language_reference_op_tables_come_from_the_registry():
    text = doc.LANGUAGE.read_text()
    assert doc.generated(text) == text, "dsl/LANGUAGE.md's op tables differ from ops/: run `python -m ops.doc --write`"
    tables = "\n".join(doc.table(families) for families in doc.TABLES.values())
    assert [name for name in VOCABULARY.spec if not re.search(rf"\b{name}\b", tables)] == []
