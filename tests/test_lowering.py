"""Lowering: every op of the vocabulary, built from a spec, against an independent torch expression."""
import math

import pytest
import torch
import torch.nn.functional as F

from ops.registry import check
from compiler.lower import lower
from dsl.program import load_text


def build(body: str, seed: int = 0):
    return lower(check(load_text(f"model m() {{\n{body}\n}}", "t.inv")), seed)


def P(gm, name):
    return dict(gm.named_parameters())[name]


def randomised(gm, seed: int = 1234):
    """Overwrite every parameter with seeded random values: biases start at 0 and norm scales at
    1, so without this a lowering that dropped them would still match the references."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, p in sorted(gm.named_parameters()):
            p.copy_(torch.randn(p.shape, generator=g) * 0.5 + (1.0 if p.dim() == 1 else 0.0))
    return gm


def build_random(body: str, seed: int = 0):
    return randomised(build(body, seed))


x34 = torch.randn(2, 5, 4)
ids = torch.randint(0, 7, (2, 5))


def attention_reference(gm, x, mask=None, causal=False, heads=2):
    q, k, v = F.linear(x, P(gm, "y.w_qkv"), P(gm, "y.b_qkv")).chunk(3, -1)
    split = lambda t: t.reshape(2, 5, heads, -1).transpose(1, 2)
    attn_mask = None
    if mask is not None:
        attn_mask = mask[:, None, None, :]
    if causal:
        tri = torch.ones(5, 5, dtype=torch.bool).tril()
        attn_mask = tri if attn_mask is None else attn_mask & tri
    out = F.scaled_dot_product_attention(split(q), split(k), split(v), attn_mask=attn_mask)
    return F.linear(out.transpose(1, 2).reshape(2, 5, 4), P(gm, "y.w_out"), P(gm, "y.b_out"))


CASES = {
    "linear": ("y = linear(x, 3)", lambda gm, x: x @ P(gm, "y.weight").T + P(gm, "y.bias")),
    "linear_nobias": ("y = linear(x, 3, bias=false)", lambda gm, x: x @ P(gm, "y.weight").T),
    "mlp": ('y = mlp(x, widths=[6, 3], act="tanh")',
            lambda gm, x: F.linear(torch.tanh(F.linear(x, P(gm, "y.0.weight"), P(gm, "y.0.bias"))),
                                   P(gm, "y.1.weight"), P(gm, "y.1.bias"))),
    "layernorm": ("y = layernorm(x, eps=0.001)", lambda gm, x: F.layer_norm(x, (4,), P(gm, "y.weight"), P(gm, "y.bias"), eps=1e-3)),
    "rmsnorm": ("y = rmsnorm(x)", lambda gm, x: F.rms_norm(x, (4,), P(gm, "y.weight"), eps=1e-6)),
    "relu": ("y = relu(x)", lambda gm, x: F.relu(x)),
    "gelu": ("y = gelu(x)", lambda gm, x: F.gelu(x)),
    "silu": ("y = silu(x)", lambda gm, x: x * torch.sigmoid(x)),
    "tanh": ("y = tanh(x)", lambda gm, x: torch.tanh(x)),
    "sigmoid": ("y = sigmoid(x)", lambda gm, x: 1 / (1 + torch.exp(-x))),
    "softmax": ("y = softmax(x, axis=N)", lambda gm, x: torch.exp(x) / torch.exp(x).sum(1, keepdim=True)),
    "arith": ("y = (x + x * 2.0 - 1.0) / (x * x + 1.0)", lambda gm, x: (3 * x - 1) / (x * x + 1)),
    "neg": ("y = -x", lambda gm, x: -x),
    "matmul": ("y = x @ transpose(x, 1, 2)", lambda gm, x: torch.einsum("bnd,bmd->bnm", x, x)),
    "attention": ("y = attention(x, heads=2)", lambda gm, x: attention_reference(gm, x)),
    "attention_causal": ("y = attention(x, heads=2, causal=true)", lambda gm, x: attention_reference(gm, x, causal=True)),
    "concat": ("y = concat(x, relu(x), axis=-1)", lambda gm, x: torch.cat([x, x.clamp(min=0)], -1)),
    "flatten": ("y = flatten(x, start=1)", lambda gm, x: x.reshape(2, 20)),
    "reshape": ("y = reshape(x, [B, N, 2, 2])", lambda gm, x: x.reshape(2, 5, 2, 2)),
    "permute": ("y = permute(x, [2, B, N])", lambda gm, x: x.permute(2, 0, 1)),
    "sum": ("y = sum(x, axis=N)", lambda gm, x: x.sum(1)),
    "mean": ("y = mean(x, axis=N, keepdim=true)", lambda gm, x: x.mean(1, keepdim=True)),
    "max": ("y = max(x, axis=-1)", lambda gm, x: x.max(-1).values),
    "min": ("y = min(x, axis=B)", lambda gm, x: x.min(0).values),
}


@pytest.mark.parametrize("name", CASES)
def test_op_matches_torch(name):
    stmt, reference = CASES[name]
    gm = build_random(f"  input x: f32[B, N, 4]\n  {stmt}\n  output y")
    with torch.no_grad():
        torch.testing.assert_close(gm(x34), reference(gm, x34), atol=1e-5, rtol=1e-5)


def test_embedding_and_masked_attention_match_torch():
    gm = build_random("  input ids: i64[B, N]\n  y = embedding(ids, num=7, dim=3)\n  output y")
    torch.testing.assert_close(gm(ids), P(gm, "y.weight")[ids])
    gm = build_random("  input x: f32[B, N, 4]\n  input mask: bool[B, N]\n  y = attention(x, heads=2, mask=mask)\n  output y")
    mask = torch.rand(2, 5) < 0.7
    mask[:, 0] = True
    with torch.no_grad():
        torch.testing.assert_close(gm(x34, mask), attention_reference(gm, x34, mask), atol=1e-5, rtol=1e-5)


def test_graph_reads_like_the_spec_and_is_typed():
    gm = build("  input x: f32[B, N, 4]\n  h = relu(x)\n  pooled = sum(h, axis=N)\n  output pooled")
    names = [n.name for n in gm.graph.nodes]
    assert names == ["x", "h", "pooled", "output"]
    assert [n.meta["shape"] for n in gm.graph.nodes if n.op != "output"] == [("B", "N", 4), ("B", "N", 4), ("B", 4)]
    assert next(n for n in gm.graph.nodes if n.op == "output").meta["names"] == ["pooled"]


def test_initialization_is_deterministic_per_seed_and_name():
    a = build("  input x: f32[B, 4]\n  y = linear(x, 3)\n  output y", seed=1)
    b = build("  input x: f32[B, 4]\n  z = relu(x)\n  y = linear(x, 3)\n  output y", seed=1)
    c = build("  input x: f32[B, 4]\n  y = linear(x, 3)\n  output y", seed=2)
    assert torch.equal(P(a, "y.weight"), P(b, "y.weight"))
    assert (P(a, "y.weight") - P(c, "y.weight")).abs().max() > 0
    assert P(a, "y.weight").abs().max() <= 1 / math.sqrt(4)


def test_module_trains_with_plain_torch():
    gm = build("  input x: f32[B, 4]\n  y = mlp(x, widths=[16, 1])\n  output y")
    x = torch.randn(64, 4)
    target = x.sum(-1, keepdim=True)
    opt = torch.optim.Adam(gm.parameters(), lr=1e-2)
    first = None
    for _ in range(100):
        loss = F.mse_loss(gm(x), target)
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.1 * first
