"""The refit after slicing: exact at rotate-only, the ridge solution it claims, a sliced model whose blocks
reproduce the dense blocks better than plain slicing (judged by an independent float64 run), and the lockstep
replay that computes it: the weights of the staged replays it replaced, and a toy block against the closed form."""
from __future__ import annotations

import pytest
import torch

from passes.base import PassError
from passes.slicegpt import refit as refitting
from passes.slicegpt import slice_model
from passes.slicegpt.refit import Fit
from passes.slicegpt.sequential import Batch, BlockCall, capture, replay
from test_slicegpt_classes import CLASSES, tiny
from test_slicegpt_classes import structure as classes_structure
from test_slicegpt_families import logits, relative
from test_slicegpt_models import HIDDEN, structure_of, token_batches, tiny_model

EXACT = 1e-4


def random_biases(model: torch.nn.Module) -> torch.nn.Module:
    """HF initialises biases to zero; the refit keeps a writer's bias, so give every bias a value."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.add_(0.1 * torch.randn_like(p))
    return model


@pytest.mark.parametrize("family", ["llama", "opt", "phi"])
def test_rotate_only_with_refit_is_exact(family):
    dense = logits(random_biases(tiny_model(family)))
    model = random_biases(tiny_model(family))
    report = slice_model(model, token_batches(2), 0.0, structure=structure_of(family), refit=refitting.RIDGE)
    assert report.refit == refitting.RIDGE
    err = relative(logits(model), dense)
    assert err <= EXACT, f"{family}: rotate-only + refit moved the logits by {err:.2e} relative"


def test_fit_map_is_the_ridge_solution_toward_the_plain_slice():
    """For a reader M, M·Kᵀ against float64 lstsq of the stacked system [Z; √λ·I]·P = [X·Mᵀ; √λ·M[:, :d]ᵀ],
    with padded tokens left out."""
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 50, 6, generator=g)
    z = x[..., :4] + 0.3 * torch.randn(2, 50, 4, generator=g)
    m = torch.randn(5, 6, generator=g, dtype=torch.float64)
    mask = (torch.rand(2, 50, generator=g) > 0.2).long()
    fit = Fit(0.3)
    fit.add(z, x, mask)
    got = (m @ fit.map().T).T
    keep = mask.reshape(-1) > 0
    zs, xs = z.reshape(-1, 4).double()[keep], x.reshape(-1, 6).double()[keep]
    lam = 0.3 * float((zs ** 2).sum(0).mean())
    want = torch.linalg.lstsq(torch.cat([zs, lam ** 0.5 * torch.eye(4, dtype=torch.float64)]),
                              torch.cat([xs @ m.T, lam ** 0.5 * m[:, :4].T])).solution
    err = float((got - want).abs().max() / want.abs().max())
    assert err <= 1e-5, err


@pytest.mark.parametrize("ridge", [0.0, -1.0, float("nan")])
def test_a_ridge_not_above_zero_is_refused_before_any_weight_changes(ridge):
    model = tiny_model("llama")
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    with pytest.raises(PassError, match="ridge must be above 0"):
        refitting.refit(model, structure_of("llama"), token_batches(1), HIDDEN // 2, ridge)
    assert all(torch.equal(p.detach(), before[n]) for n, p in model.named_parameters())


def test_a_solved_norm_drops_its_dense_targets(monkeypatch):
    """The refit's peak is at a block's last pause, where every batch's activations are held: what a norm
    solved no longer needs must not be held with them."""
    made = []
    dense_pass = refitting._dense_pass

    def recorded(*args):
        targets, outputs = dense_pass(*args)
        made.append(targets)
        return targets, outputs
    monkeypatch.setattr(refitting, "_dense_pass", recorded)
    slice_model(tiny_model("llama"), token_batches(2), 0.25, structure=structure_of("llama"), refit=refitting.RIDGE)
    assert len(made) == len(structure_of("llama").blocks)
    held = [name for block in made for batch in block for name in batch]
    assert held == [], f"dense targets still held after their norms were solved: {held[:3]}"


def block_outputs(model: torch.nn.Module, batches: list[dict]) -> list[torch.Tensor]:
    """Every decoder layer's output over the batches, run in float64."""
    model = model.double()
    found: dict[int, list[torch.Tensor]] = {}
    layers = model.model.layers

    def keep(i: int):
        def hook(_mod, _args, out):
            found.setdefault(i, []).append((out[0] if isinstance(out, tuple) else out).reshape(-1, out.shape[-1]))
        return hook

    handles = [layer.register_forward_hook(keep(i)) for i, layer in enumerate(layers)]
    with torch.no_grad():
        for b in batches:
            model(**b, use_cache=False)
    for h in handles:
        h.remove()
    return [torch.cat(found[i]) for i in range(len(layers))]


def test_refit_brings_every_block_closer_to_the_dense_one():
    """The dense model's block outputs, rotated and cut to the kept dims, are what the sliced blocks
    should compute. In float64 and on the calibration tokens, the refit must reduce that error at
    every block, clearly, compared with plain slicing of the same rotation."""
    batches = token_batches(8, 32)
    dense = block_outputs(tiny_model("llama"), batches)
    errors = {}
    for ridge in (None, refitting.RIDGE):
        model = tiny_model("llama")
        report = slice_model(model, batches, 0.25, structure=structure_of("llama"), refit=ridge)
        assert report.dim == HIDDEN * 3 // 4 and report.refit == ridge
        kept = report.calibration.rotations[0][:, :report.dim]
        errors[ridge] = [float((got - want @ kept).norm() / (want @ kept).norm())
                         for got, want in zip(block_outputs(model, batches), dense)]
    for i, (plain, refit) in enumerate(zip(errors[None], errors[refitting.RIDGE])):
        assert refit <= 0.9 * plain, f"block {i}: refit {refit:.4f} against plain slicing {plain:.4f}"


def staged_refit(model: torch.nn.Module, s, batches, dim: int, ridge: float = refitting.RIDGE,
                 progress=lambda it: it) -> None:
    """The refit as first written, the reference for the lockstep replay: for each norm, in the order the block
    runs them, every batch replays the block from its start up to that norm, then its readers are solved."""
    with torch.no_grad():
        data = capture(model, s, batches)
        dense = [b.stream for b in data]
        for b in data:
            b.stream = refitting.kept(b.stream, dim)
        for block in s.blocks:
            norms = [n for b in s.branches if b.block == block for n in b.norms]
            targets, dense = refitting._dense_pass(model, block, data, dense, [n.module for n in norms])
            masks = refitting._masks([n.module for n in norms], dim)
            for n in norms:
                pause = refitting._readers_pause(model, n.module, n.readers, targets, data, dim, ridge)
                for i, b in enumerate(data):
                    _replay_to(model, block, b, masks, n.module, lambda seen, i=i, p=pause: p.moments(i, seen))
                pause.solve()
            for b in data:
                b.stream = refitting.kept(replay(model, block, b, masks), dim)


class _Reached(Exception):
    pass


def _replay_to(model, block: str, batch, masks: dict, name: str, observe) -> None:
    """Replay the block on one batch until `name` has run, observing its output."""
    def stop(seen):
        observe(seen)
        raise _Reached
    handle = model.get_submodule(name).register_forward_hook(lambda _m, _a, out: stop(out))
    try:
        replay(model, block, batch, masks)
    except _Reached:
        pass
    finally:
        handle.remove()


@pytest.mark.parametrize("family", ["llama", "opt", "phi", "mixtral"])
def test_lockstep_refit_gives_the_weights_of_the_staged_replays(family, monkeypatch):
    """Random weights and biases, 25%, three batches of random tokens: every parameter equal to the staged
    replays' (same float32 products and float64 sums, so to rounding). That the refit changes the weights, and
    for the better, is test_refit_brings_every_block_closer_to_the_dense_one's."""
    make = (lambda: tiny(family)) if family in CLASSES else (lambda: random_biases(tiny_model(family)))
    structure = structure_of(family) if family not in CLASSES else classes_structure(family)
    batches = token_batches(3, 24, seed=5)
    found = {}
    for path in ("lockstep", "staged"):
        if path == "staged":
            monkeypatch.setattr(refitting, "refit", staged_refit)
        model = make()
        slice_model(model, batches, 0.25, structure=structure, refit=refitting.RIDGE)
        found[path] = dict(model.named_parameters())
    for name, want in found["staged"].items():
        err = relative(found["lockstep"][name].detach(), want.detach())
        assert err <= 1e-6, f"{family}: {name} differs from the staged refit by {err:.1e} relative"


class _TwoMaps(torch.nn.Module):
    """A toy block: tanh between two linear maps, the second run only when `skip` does not pick the batch.
    Each map reads a tap (an identity), where the pauses observe, as they observe a norm's output."""

    def __init__(self, skip=lambda x: False):
        super().__init__()
        g = torch.Generator().manual_seed(7)
        self.first = torch.nn.Linear(4, 6, bias=False).double()
        self.second = torch.nn.Linear(6, 3, bias=False).double()
        with torch.no_grad():
            self.first.weight.copy_(torch.randn(6, 4, generator=g, dtype=torch.float64))
            self.second.weight.copy_(torch.randn(3, 6, generator=g, dtype=torch.float64))
        self.skip = skip
        self.first_tap, self.second_tap = torch.nn.Identity(), torch.nn.Identity()

    def forward(self, x):
        h = torch.tanh(self.first(self.first_tap(x)))
        return h if self.skip(x) else self.second(self.second_tap(h))


def _toy(skip=lambda x: False):
    """The toy block, three batches of random streams, and pauses that replace each map's weight W by
    W·(I + S/tr S), with S the sum over every batch of its input's second moment."""
    model = torch.nn.Module()
    model.block = _TwoMaps(skip)
    g = torch.Generator().manual_seed(8)
    data = [Batch(torch.randn(2, 5, 4, generator=g, dtype=torch.float64), None, {"block": BlockCall((), {})})
            for _ in range(3)]
    pauses = {}
    for name in ("first", "second"):
        sums = []
        weight = model.get_submodule(f"block.{name}").weight

        def solve(sums=sums, weight=weight):
            s = sum(sums)
            weight.data = weight.data @ (torch.eye(len(s), dtype=s.dtype) + s / s.trace())
        pauses[f"block.{name}_tap"] = refitting.Pause(
            lambda _i, x, sums=sums: sums.append(x.reshape(-1, x.shape[-1]).T @ x.reshape(-1, x.shape[-1])), solve)
    return model, data, pauses


def test_lockstep_solves_each_module_before_any_batch_runs_it():
    """Against the closed form on all batches at once: the second map's moments are taken on the first map's
    refit output, and every batch's output comes from both refit maps."""
    model, data, pauses = _toy()
    w1, w2 = model.block.first.weight.detach().clone(), model.block.second.weight.detach().clone()
    got = refitting.Lockstep(model, "block", data, {}, pauses).run()
    x = torch.cat([b.stream.reshape(-1, 4) for b in data])
    s1 = x.T @ x
    w1 = w1 @ (torch.eye(4, dtype=torch.float64) + s1 / s1.trace())
    h = torch.tanh(x @ w1.T)
    s2 = h.T @ h
    w2 = w2 @ (torch.eye(6, dtype=torch.float64) + s2 / s2.trace())
    want = (h @ w2.T).reshape(3, 2, 5, 3)
    err = max(relative(g, w) for g, w in zip(got, want))
    assert err <= 1e-12, f"lockstep outputs differ from the closed form by {err:.1e}"
    assert relative(model.block.second.weight.detach(), w2) <= 1e-12


def test_lockstep_refuses_a_block_that_runs_other_modules_on_some_batches():
    model, data, pauses = _toy(skip=lambda x: bool(x[0, 0, 0] > data[0].stream[0, 0, 0]))
    with pytest.raises(PassError, match=r"refit: block 'block' .*calibration batch"):
        refitting.Lockstep(model, "block", data, {}, pauses).run()


def test_lockstep_hands_on_a_batch_failure_without_waiting_forever():
    model, data, pauses = _toy()
    data[1].stream[0, 0, 0] = float("nan")

    def check(_mod, args):
        if torch.isnan(args[0]).any():
            raise ValueError("NaN in the stream of batch 1")
    model.block.first_tap.register_forward_pre_hook(check)
    with pytest.raises(ValueError, match="batch 1"):
        refitting.Lockstep(model, "block", data, {}, pauses).run()
