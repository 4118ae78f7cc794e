"""Existing torch models, captured with torch.export (capture/): real PyG layers, an EGNN layer, a
PointNet and a Hugging Face ViT as their users write them (tests/torch_models.py). Each claim the
checker proves is measured in float64 with redrawn weights; each refusal names the ATen op, the
model's source line and its module path; each capture failure is one clear error."""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from compiler.driver import compile as compile_spec
from dsl.errors import SpecError
from dsl.program import load_text
from ops.registry import VOCABULARY, check
from runtime.session import Session
from tests import torch_models
from tests.test_symmetry import measure

pytest.importorskip("torch_geometric")
ROOT = Path(__file__).resolve().parent.parent
MODELS = "tests.torch_models"
GRAPH = ["symmetry S(N)", "input x: f32[N, 8]", "input edge_index: i64[2, E] is index(N)"]


def captured(lines: list, defs: str = "", prove: bool = True):
    text = "\n".join([defs, "model m() {", *lines, "}"]) + "\n"
    return check(load_text(text, "s.inv"), prove=prove)


def refusal(lines: list, defs: str) -> SpecError:
    with pytest.raises(SpecError) as e:
        captured(lines, defs)
    return e.value


PYG = {
    "GIN": f'def net = torch("{MODELS}:gin")',
    "GraphSAGE (max)": 'def net = torch("torch_geometric.nn:SAGEConv", in_channels=8, out_channels=16, aggr="max")',
    "GAT (self loops added)": 'def net = torch("torch_geometric.nn:GATConv", in_channels=8, out_channels=8, heads=2)',
    "GraphSAGE (mean)": 'def net = torch("torch_geometric.nn:SAGEConv", in_channels=8, out_channels=16, aggr="mean")',
    "GCN (normalised, self loops)": f'def net = torch("{MODELS}:gcn")',
}


@pytest.mark.parametrize("layer", PYG)
def test_pyg_layers_are_proved_permutation_equivariant_and_measured(layer):
    m = captured([*GRAPH, "h = net(x, edge_index)", "output h is scalar",
                  "g = sum(net(x, edge_index), axis=N)", "output g is invariant"], PYG[layer])
    measure(m)


def test_a_graph_readout_by_a_batch_vector_is_proved_invariant():
    """PyG's global_mean_pool counts each graph's nodes by scattering ones: moving the nodes moves the
    ones with them and changes no count."""
    lines = [*GRAPH, "input batch: i64[N]", "input graphs: f32[G, 1]", "y = net(x, edge_index, batch, graphs)",
             "output y is invariant"]
    measure(captured(lines, f'def net = torch("{MODELS}:readout")'))


def test_a_transformer_encoder_layer_over_a_set_is_proved_equivariant():
    """nn.MultiheadAttention inside runs seq-first: the set is merged with the batch into rows and split
    back, and attention is scaled_dot_product_attention."""
    lines = ["symmetry S(N)", "input x: f32[B, N, 8]", "y = enc(x)", "output y is scalar",
             "z = sum(enc(x), axis=N)", "output z is invariant"]
    measure(captured(lines, f'def enc = torch("{MODELS}:encoder")'))


def test_attention_over_padded_sets_is_proved_and_a_fully_padded_set_gives_what_torch_gives():
    """A key padding mask, added to the scores as a float mask: scaled_dot_product_attention gives 0 where
    every key is masked, not a softmax's NaN, and the lift keeps that."""
    lines = ["symmetry S(N)", "input x: f32[B, N, 8]", "input mask: bool[B, N]", "y = net(x, mask)",
             "output y is scalar"]
    m = captured(lines, f'def net = torch("{MODELS}:padded")')
    measure(m)
    from compiler.lower import lower
    gen = torch.Generator().manual_seed(3)
    x, mask = torch.randn(3, 5, 8, generator=gen), torch.rand(3, 5, generator=gen) > 0.4
    mask[1] = False  # a set with no element: torch's own NaN and zeros, place by place
    fast = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)  # eager's fused encoder (nested tensors) is not what export traces
    try:
        with torch.no_grad():
            got, want = lower(m)(x, mask), torch_models.padded()(x, mask)
    finally:
        torch.backends.mha.set_fastpath_enabled(fast)
    assert torch.equal(torch.isnan(got), torch.isnan(want))
    assert torch.allclose(got, want, rtol=1e-4, atol=1e-5, equal_nan=True)


def test_an_egnn_layer_is_proved_e3_and_sn_equivariant():
    lines = ["symmetry E(3), S(N)", "input h: f32[N, 8]", "input x: f32[N, 3] is position",
             "input edge_index: i64[2, E] is index(N)", "h2, x2 = egnn(h, edge_index, x)",
             "output h2 is invariant", "output x2 is position"]
    measure(captured(lines, f'def egnn = torch("{MODELS}:egnn")'))


def test_a_pointnet_classifier_is_proved_invariant_in_its_own_axis_order():
    measure(captured(["symmetry S(N)", "input points: f32[B, 3, N]", "y = pointnet(points)",
                      "output y is invariant"], f'def pointnet = torch("{MODELS}:pointnet")'))


def test_a_hf_vit_is_refused_at_its_position_embedding_add():
    e = refusal(["symmetry S(N)", "input tokens: f32[B, 8, N, 1]", "h = vit(tokens)", "output h is scalar"],
                f'def vit = torch("{MODELS}:TokenViT")')
    assert e.file.endswith("transformers/models/vit/modeling_vit.py"), e.render()
    assert "embeddings + self.interpolate_pos_encoding" in e.render()
    assert "aten.add.Tensor in vit.vit.embeddings (ViTEmbeddings)" in e.message
    assert "joins a tensor permuted along (N+1) with one that is not" in e.message


def test_a_refusal_names_the_aten_op_the_source_line_and_the_module():
    """Node ids not declared `is index(N)`: gathering permuted rows by them picks other rows."""
    e = refusal(["symmetry S(N)", "input x: f32[N, 8]", "input edge_index: i64[2, E]", "h = net(x, edge_index)",
                 "output h is scalar"], PYG["GraphSAGE (max)"])
    assert "(aten.index_select.default in net (SAGEConv))" in e.message, e.message
    assert e.file.endswith("torch_geometric/nn/conv/sage_conv.py") and e.line > 0
    assert "self.propagate(" in e.render()


def test_frame_averaging_makes_a_captured_model_exact_in_onnxruntime(tmp_path):
    (tmp_path / "cloud.py").write_text((ROOT / "tests/torch_models.py").read_text())
    spec = tmp_path / "fa.inv"
    spec.write_text('def net = torch("cloud:PlainCloud")\nmodel fa() {\n  symmetry E(3), S(N)\n'
                    '  input pos: f32[B, N, 3] is position\n  input q: f32[B, N, 1] is scalar\n'
                    '  y = frame_average(net, [pos, q], group="E(3)", out="vector")\n  output y is vector\n}\n')
    result = compile_spec(spec, out=tmp_path / "fa.onnx")
    measure(result.module.meta["invc"])  # float64, redrawn weights: within 1e-9 of exact
    session = Session(tmp_path / "fa.onnx")
    gen = torch.Generator().manual_seed(3)
    pos, q = torch.randn(4, 9, 3, generator=gen), torch.randn(4, 9, 1, generator=gen)
    rotation = torch.linalg.qr(torch.randn(3, 3, generator=gen, dtype=torch.float64))[0].float()
    shift = torch.randn(3, generator=gen)
    y = session.run(pos=pos.numpy(), q=q.numpy())["y"]
    moved = session.run(pos=(pos @ rotation.T + shift).numpy(), q=q.numpy())["y"]
    err = np.abs(moved - y @ rotation.numpy().T).max()
    assert err <= 1e-5, err
    e = refusal(["symmetry E(3)", "input pos: f32[B, N, 3] is position", "input q: f32[B, N, 1] is scalar",
                 "y = net(pos, q)", "output y is vector"], f'def net = torch("{MODELS}:PlainCloud")')
    assert "breaks E(3) equivariance of output `y`" in e.message  # the backbone alone is not equivariant


def test_a_lift_that_computes_something_else_is_caught_by_the_replay(monkeypatch):
    monkeypatch.setitem(VOCABULARY.aten, "aten.relu.default", lambda g, n, x: g.emit("sigmoid", (g.tensor(x),)))
    with pytest.raises(SpecError, match="the lifted graph differs from the captured model"):
        captured([*GRAPH, "h = net(x, edge_index)", "output h is scalar"], PYG["GIN"])


def test_a_saved_exported_program_is_read_and_a_dim_it_fixed_is_named(tmp_path):
    from torch_geometric.nn import SAGEConv
    layer = SAGEConv(8, 16, aggr="max").eval()
    args = (torch.randn(7, 8), torch.randint(0, 7, (2, 11)))
    dims = ({0: torch.export.Dim("n")}, {1: torch.export.Dim("e")})
    torch.export.save(torch.export.export(layer, args, dynamic_shapes=dims, strict=False), tmp_path / "sage.pt2")
    torch.export.save(torch.export.export(layer, args, strict=False), tmp_path / "fixed.pt2")
    for name, ok in (("sage.pt2", True), ("fixed.pt2", False)):
        spec = tmp_path / f"{name}.inv"
        spec.write_text(f'def net = torch("{name}")\nmodel m() {{\n' + "\n".join(
            [*GRAPH, "h = net(x, edge_index)", "output h is scalar"]) + "\n}\n")
        r = invc("check", spec)
        if ok:
            assert r.returncode == 0 and "equivariant (permuted along N)" in r.stdout, r.stderr
        else:
            assert r.returncode == 2 and "has size 7 where the spec passes N" in r.stderr, r.stderr
            assert "declare it with its size 7" in r.stderr and "Traceback" not in r.stderr


def invc(*args):
    return subprocess.run([sys.executable, "-m", "compiler.cli", *map(str, args)], capture_output=True, text=True,
                          cwd=ROOT)


BAD = {  # the def, the call, what the one-line error says
    "a size computed from the data": (f'def net = torch("{MODELS}:SizedByData")',
                                      ["input x: f32[N, 8]", "input batch: i64[N]", "y = net(x, batch)", "output y"],
                                      "cannot capture `net`", "a size computed from data"),
    "a module that is not beside the spec": ('def net = torch("os:system", command="true")',
                                             ["input x: f32[N, 5]", "y = net(x)", "output y"],
                                             "neither beside the spec nor a model library", None),
    "a library function, not a module class": ('def net = torch("torch_geometric.nn:global_add_pool")',
                                               ["input x: f32[N, 5]", "y = net(x)", "output y"],
                                               "is not a torch.nn.Module class", None),
    "a factory that raises": (f'def net = torch("{MODELS}:EGCL", features=-1)',
                              ["input x: f32[N, 5]", "y = net(x)", "output y"], "raised RuntimeError", None),
    "too few tensors": (f'def net = torch("{MODELS}:egnn")', ["input x: f32[N, 8]", "y = net(x)", "output y"],
                        "cannot capture `net`", None),
    "a model past the parameter limit": ('def net = torch("torch.nn:Linear", in_features=100000, out_features=100000)',
                                         ["input x: f32[N, 100000]", "y = net(x)", "output y"],
                                         "parameter count (10,000,100,000) exceeds the limit", "--limit parameters"),
    "two sizes the model needs equal, named apart": ('def net = torch("torch.nn:Bilinear", in1_features=8, '
                                                     'in2_features=8, out_features=4)',
                                                     ["input x: f32[N, 8]", "input z: f32[M, 8]", "y = net(x, z)",
                                                      "output y"], "cannot capture `net`", "give dims the model needs"),
    "two outputs bound to one name": (f'def net = torch("{MODELS}:egnn")',
                                      ["input h: f32[N, 8]", "input x: f32[N, 3]", "input e: i64[2, E]",
                                       "y = net(h, e, x)", "output y"], "is bound to 2 tensors", "unpack them"),
}


@pytest.mark.parametrize("case", BAD)
def test_a_model_that_cannot_be_captured_is_one_clear_error(case):
    defs, lines, message, hint = BAD[case]
    e = refusal(lines, defs)
    assert message in e.message, e.render()
    assert hint is None or hint in (e.hint or ""), e.render()


def test_invc_frame_average_wraps_a_module_and_says_what_it_compiled(tmp_path):
    (tmp_path / "cloud.py").write_text((ROOT / "tests/torch_models.py").read_text())
    out = tmp_path / "cloud.onnx"
    args = ["frame-average", "cloud:PlainCloud", "-i", "pos:f32[B,N,3]:position", "-i", "q:f32[B,N,1]:scalar",
            "--out", "vector", "-o", out, "--save-spec", tmp_path / "cloud.inv"]
    r = subprocess.run([sys.executable, "-m", "compiler.cli", *map(str, args)], capture_output=True, text=True,
                       cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert r.returncode == 0, r.stderr
    assert out.exists() and "frame-averaged over E(3)" in r.stdout
    assert 'y = frame_average(backbone, [pos, q], group="E(3)", out="vector")' in (tmp_path / "cloud.inv").read_text()
    bad = subprocess.run([sys.executable, "-m", "compiler.cli", "frame-average", "cloud:PlainCloud", "-i", "pos:f32",
                          "-o", str(out)], capture_output=True, text=True, cwd=tmp_path,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert bad.returncode == 2 and "expected NAME:DTYPE[DIMS]:ROLE" in bad.stderr and "Traceback" not in bad.stderr


def test_compile_refuses_a_kept_op_by_name_and_writes_nothing(tmp_path):
    spec = tmp_path / "kept.inv"
    (tmp_path / "cases.py").write_text((ROOT / "tests/capture_cases.py").read_text())
    spec.write_text('def cum = torch("cases:Cumulative")\nmodel m() {\n  input x: f32[B, N, 4]\n  y = cum(x)\n'
                    '  output y\n}\n')
    r = invc("compile", spec, "-o", tmp_path / "kept.onnx")
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert "`aten.cumsum.default` at " in r.stderr and "cases.py:" in r.stderr and "has no ONNX form" in r.stderr
    assert not (tmp_path / "kept.onnx").exists()
