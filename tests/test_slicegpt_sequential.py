"""Shortcut mode: sequential calibration on the already sliced stream, and per-layer schedules."""
from __future__ import annotations

import pytest
import torch

from passes.base import PassError
from passes.slicegpt import calibrate, export_onnx, load, save_sliced, slice_model
from passes.slicegpt.calibration import stream_readers
from test_slicegpt_families import BEAT_NAIVE, logits, naive_sliced, relative, relative_mse, rotate_and_cut
from test_slicegpt_models import HIDDEN, structure_of, token_batches, tiny_model


def observed_moment(model, s, batches, positions) -> torch.Tensor:
    """Independent float64 Σ x·xᵀ of unit, (for LayerNorm models) mean-free stream vectors at `positions`."""
    acc = torch.zeros(HIDDEN, HIDDEN, dtype=torch.float64)

    def hook(_mod, args):
        x = args[0].detach().double().reshape(-1, args[0].shape[-1])
        x = x - x.mean(1, keepdim=True) if s.layer_norm else x
        x = x / x.norm(dim=1, keepdim=True)
        acc.add_(x.T @ x)

    readers = stream_readers(s)
    handles = [model.get_submodule(readers[k]).register_forward_pre_hook(hook) for k in positions]
    with torch.no_grad():
        for b in batches:
            model(**b, use_cache=False)
    for h in handles:
        h.remove()
    return acc


def leading_projector(h: torch.Tensor, dim: int) -> torch.Tensor:
    values, vectors = torch.linalg.eigh(h)
    kept = vectors[:, torch.argsort(values, descending=True)[:dim]]
    return kept @ kept.T


@pytest.mark.parametrize("family", ["llama", "opt"])
def test_each_rotation_is_the_pca_of_the_already_sliced_stream(family):
    """Group g's rotation must be the PCA of its positions in a model whose earlier groups are sliced
    with the calibrated rotations and whose later groups are left whole (identity rotations)."""
    s, batches = structure_of(family), token_batches(2)
    cal = calibrate(tiny_model(family), batches, "shortcut", s, sparsity=0.25)
    eye = torch.eye(HIDDEN, dtype=torch.float64)
    for g in range(len(cal.rotations)):
        model = tiny_model(family)
        rotations = cal.rotations[:g] + [eye] * (len(cal.rotations) - g)
        rotate_and_cut(model, s, "shortcut", rotations, cal.dims[:g] + [HIDDEN] * (len(cal.dims) - g))
        positions = [k for k, group in enumerate(cal.groups) if group == g]
        want = leading_projector(observed_moment(model, s, batches, positions), cal.dims[g])
        kept = cal.rotations[g][:, :cal.dims[g]]
        got = kept @ kept.T
        assert (want - got).abs().max() < 1e-5, f"group {g}"


def test_sequential_calibration_refuses_reuse_at_other_widths():
    s, batches = structure_of("llama"), token_batches(1)
    cal = calibrate(tiny_model("llama"), batches, "shortcut", s, sparsity=0.25)
    with pytest.raises(PassError, match="computed sequentially for stream widths .* calibrate again"):
        slice_model(tiny_model("llama"), sparsity=0.5, mode="shortcut", calibration=cal)
    report = slice_model(tiny_model("llama"), sparsity=0.25, mode="shortcut", calibration=cal)
    assert report.dims == [48, 48]


def test_shortcut_free_calibration_still_serves_a_sweep():
    s, batches = structure_of("llama"), token_batches(1)
    cal = calibrate(tiny_model("llama"), batches, "shortcut-free", s)
    for sparsity, dim in ((0.25, 48), (0.5, 32)):
        assert slice_model(tiny_model("llama"), sparsity=sparsity, calibration=cal).dim == dim


def test_uniform_schedule_equals_one_sparsity():
    a, b = tiny_model("llama"), tiny_model("llama")
    slice_model(a, token_batches(1), 0.25, "shortcut", structure=structure_of("llama"))
    slice_model(b, token_batches(1), mode="shortcut", structure=structure_of("llama"), schedule=[0.25, 0.25])
    assert torch.equal(logits(a), logits(b))


@pytest.mark.parametrize("family, schedule, dims", [("llama", [0.5, 0.25], [32, 48]),
                                                    ("opt", [0.25, 0.5], [48, 32])])
def test_schedule_gives_each_block_its_width(family, schedule, dims, tmp_path):
    model = tiny_model(family)
    ref = logits(model)
    s = structure_of(family)
    report = slice_model(model, token_batches(2), mode="shortcut", structure=s, schedule=schedule)
    assert report.dims == dims and report.dim == max(dims)
    params = dict(model.named_parameters(remove_duplicate=False))
    written = dims[:1] + dims  # the embedding output shares the first block's width
    groups = report.calibration.groups
    for k, b in enumerate(s.branches, start=1):
        assert all(params[r.weight].shape[r.axis] == written[groups[k - 1]] for n in b.norms for r in n.readers)
        assert all(params[w.weight].shape[w.axis] == written[groups[k]] for w in b.writers)
    out = logits(model)
    assert torch.isfinite(out).all() and relative(out, ref) < 1.0
    naive = relative_mse(logits(naive_sliced(family, "shortcut", None, schedule)), ref)
    assert relative_mse(out, ref) < BEAT_NAIVE * naive, f"PCA slicing {relative_mse(out, ref):.4f} vs identity {naive:.4f}"
    loaded = load(save_sliced(model, tmp_path / "m"))
    assert torch.equal(logits(loaded), out)
    assert export_onnx(loaded, tmp_path / "m.onnx", tolerance=1e-4) <= 1e-4


@pytest.mark.parametrize("kwargs, message", [
    (dict(mode="shortcut", schedule=[0.25]), "1 entries, the model has 2 blocks"),
    (dict(mode="shortcut", schedule=[0.25, 1.2]), r"schedule entry 1 .*\[0, 1\)"),
    (dict(mode="shortcut", schedule=[-0.1, 0.25]), r"schedule entry 0 .*\[0, 1\)"),
    (dict(mode="shortcut", schedule=[0.25, 0.25], sparsity=0.25), "either a sparsity or a schedule"),
    (dict(schedule=[0.25, 0.25]), "needs mode 'shortcut'"),
])
def test_bad_schedule_is_refused_with_reason(kwargs, message):
    with pytest.raises(PassError, match=message):
        slice_model(tiny_model("llama"), token_batches(1), structure=structure_of("llama"), **kwargs)


def test_capture_gives_each_block_its_own_forward_back():
    """Capture hands blocks' inputs straight on after the first batch; a forward set on the instance
    (as accelerate's offloading hooks do) must be the one in place afterwards."""
    from passes.slicegpt.sequential import capture

    model, s = tiny_model("llama"), structure_of("llama")
    first, second = (model.get_submodule(b) for b in s.blocks)
    calls = []

    def wrapped(*args, own=first.forward, **kwargs):
        calls.append(1)
        return own(*args, **kwargs)

    first.forward = wrapped
    data = capture(model, s, token_batches(3))
    assert len(data) == 3 and len(calls) == 1  # computed for the first batch only
    assert first.__dict__["forward"] is wrapped and "forward" not in second.__dict__
    with torch.no_grad():
        model(**token_batches(1)[0], use_cache=False)
    assert len(calls) == 2  # the model runs through the wrapper again


def test_tied_head_reads_every_kept_direction_in_shortcut_mode():
    """The head must see the last block's whole kept stream: logits = RMSNorm_D(y)·Q_last[:, :d]ᵀ·diag(γ)·Eᵀ,
    with γ and E the dense model's. Sharing the embedding's sliced table would also project onto the
    embedding output's subspace, which shortcut mode rotates differently."""
    dense = tiny_model("llama", tie_word_embeddings=True)
    model = tiny_model("llama", tie_word_embeddings=True)
    report = slice_model(model, token_batches(2), 0.25, "shortcut")
    seen = []
    handle = model.get_submodule("model.norm").register_forward_pre_hook(lambda _m, args: seen.append(args[0]))
    out = logits(model).double()
    handle.remove()
    y = seen[0].double()[..., :report.dim]
    h = y * torch.rsqrt(y.pow(2).sum(-1, keepdim=True) / HIDDEN + dense.config.rms_norm_eps)
    kept = report.calibration.rotations[-1][:, :report.dim]
    gamma, table = (dense.get_submodule(n).weight.detach().double() for n in ("model.norm", "model.embed_tokens"))
    want = h @ kept.T @ torch.diag(gamma) @ table.T
    err = relative(out, want)
    assert err <= 1e-5, f"head logits off by {err:.2e} relative"
    assert not report.head_map


def test_shortcut_calibration_serves_a_fresh_tied_model():
    """calibrate() gives the head of the model it reads its own table; a fresh identical model sliced
    with that calibration must end up the same."""
    batches = token_batches(2)
    first = tiny_model("llama", tie_word_embeddings=True)
    cal = calibrate(first, batches, "shortcut", sparsity=0.25)
    slice_model(first, batches, 0.25, calibration=cal)
    second = tiny_model("llama", tie_word_embeddings=True)
    slice_model(second, batches, 0.25, calibration=cal)
    assert torch.equal(logits(first), logits(second))
