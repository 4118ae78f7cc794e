"""Refit after slicing (shortcut-free mode): a closed-form correction of every norm's readers.

Slicing keeps the leading d of the D rotated stream dims; every block then reads a truncated stream,
and the errors add up over depth. Here, block by block on the calibration batches, the sliced model
being built runs next to the dense one. Both are the rotated model at full width, before the cut: the
sliced one is the same model with the stream's trailing D - d dims zeroed, which is exactly what the
cut model computes. Each norm's readers, stream axis last as M (out x D), in the order the block runs
the norms, get
    M' = argmin ‖Z·M'ᵀ - X·Mᵀ‖² + λ‖M' - M[:, :d]‖²,
with Z the norm's output in the sliced model (its d kept dims) and X in the dense model.
λ = ridge · mean(diag(ZᵀZ)). The penalty pulls toward the plain sliced weights, not toward zero, so at
rotate-only (d = D, hence Z = X) the solution is the weights themselves and the model stays exact.
The next block is calibrated on this block's refit output, so errors are corrected, not compounded.
This is the reconstruction step of MoDeGPT, SVD-LLM and FLAP, on SliceGPT's single subspace.

Writers keep their plain sliced weights. Refitting them too cost more than a forward pass (the 1536-wide
MLP input of SmolLM2 makes its moments 13 of the 21 GFLOP per block and batch) and, at the ridge chosen,
did not pay on the dev texts (BENCHMARKS.md). The refit is off by default: fit to the calibration text,
it helps on text like it and hurts on other kinds.

Moments are summed in float64 across batches; each batch's product runs in float32. Solves are float64,
one Cholesky factor per norm: (A + λI)⁻¹(ZᵀX + λ[I 0]) is the map from dense to sliced readers that
every reader of the norm applies to its weight.

Each block costs one dense replay (the targets) and one sliced replay, in lockstep (`Lockstep`): every
batch pauses at each norm until all batches have added their moments there and its readers are solved,
then runs on with the refit weights. That is what replaying the block from its start after each solve
computes, without the replays.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable

import torch
from greenlet import greenlet
from torch import nn

from passes.base import PassError
from passes.slicegpt.sequential import Batch, capture, replay
from passes.slicegpt.structure import Linear, Structure

RIDGE = 0.1


class Fit:
    """Running sums A = Σ ZᵀZ and C = Σ ZᵀX over unpadded tokens, Z what a norm's readers see in the sliced
    model (its d kept dims) and X in the dense model (all D)."""

    def __init__(self, ridge: float):
        self.ridge = ridge
        self.a: torch.Tensor | None = None
        self.c: torch.Tensor | None = None

    def add(self, z: torch.Tensor, x: torch.Tensor, mask: torch.Tensor | None) -> None:
        z, x = z.reshape(-1, z.shape[-1]).float(), x.reshape(-1, x.shape[-1]).float()
        if mask is not None:
            z = z * mask.reshape(-1, 1).to(z.dtype)
        a, c = (z.T @ z).double(), (z.T @ x).double()
        self.a, self.c = (a, c) if self.a is None else (self.a + a, self.c + c)

    def map(self) -> torch.Tensor:
        """K = (A + λI)⁻¹(C + λ[I 0]), d x D. For every reader M (rows x D) the ridge solution
        argmin ‖Z·P - X·Mᵀ‖² + λ‖P - M[:, :d]ᵀ‖² is P = (A + λI)⁻¹(C·Mᵀ + λ[I 0]·Mᵀ) = K·Mᵀ, so one
        solve with D right-hand sides serves all the norm's readers, however many rows they have."""
        d, width = self.c.shape
        lam = self.ridge * float(self.a.diagonal().mean())
        eye = torch.eye(d, width, dtype=self.a.dtype)
        factor = torch.linalg.cholesky(self.a + lam * eye[:, :d])   # A + λI is positive definite
        return torch.cholesky_solve(self.c + lam * eye, factor)


def refit(model: nn.Module, s: Structure, batches: Iterable[dict], dim: int, ridge: float = RIDGE,
          progress: Callable[[Iterable], Iterable] = lambda it: it) -> None:
    """Refit, in place, the readers of the rotated full-width model for a stream cut to `dim`."""
    if not ridge > 0:   # A + λI is positive definite only with λ above 0
        raise PassError(f"refit: the ridge must be above 0, got {ridge}")
    with torch.no_grad():
        data = capture(model, s, batches)
        dense = [b.stream for b in data]
        for b in data:
            b.stream = kept(b.stream, dim)
        for block in progress(s.blocks):
            dense = _refit_block(model, s, block, data, dense, dim, ridge)


def kept(x: torch.Tensor, dim: int) -> torch.Tensor:
    """The sliced stream at full width: its trailing dims (those the cut drops) zeroed."""
    return nn.functional.pad(x[..., :dim], (0, x.shape[-1] - dim))


def _refit_block(model, s: Structure, block: str, data: list[Batch], dense: list[torch.Tensor], dim: int,
                 ridge: float) -> list[torch.Tensor]:
    """Refit one block's readers; advance the sliced streams in `data`, return the dense ones."""
    norms = [n for b in s.branches if b.block == block for n in b.norms]
    names = [n.module for n in norms]
    targets, outputs = _dense_pass(model, block, data, dense, names)
    dense.clear()   # the dense inputs are spent; the caller's list would hold them through the sliced replay
    pauses = {n.module: _readers_pause(model, n.module, n.readers, targets, data, dim, ridge) for n in norms}
    masks = _masks(names, dim)
    for b, out in zip(data, Lockstep(model, block, data, masks, pauses).run()):
        b.stream = kept(out, dim)
    return outputs


def _dense_pass(model, block: str, data: list[Batch], dense: list[torch.Tensor], norms: list[str]):
    """Per batch, every norm's output in the dense block; and the block's outputs, the next block's dense input."""
    targets: list[dict[str, torch.Tensor]] = []
    outputs = []
    for b, stream in zip(data, dense):
        found: dict[str, torch.Tensor] = {}

        def norm_out(name: str):
            def hook(_mod, _args, out):
                found[name] = out
            return hook

        handles = [model.get_submodule(n).register_forward_hook(norm_out(n)) for n in norms]
        try:
            outputs.append(replay(model, block, Batch(stream, b.mask, b.calls), {}))
        finally:
            for h in handles:
                h.remove()
        targets.append(found)
    return targets, outputs


@dataclass
class Pause:
    """A norm whose readers the batches wait for: each batch adds its moments where the norm's output is
    seen, then, once every batch has, `solve` refits the weights."""
    moments: Callable[[int, torch.Tensor], None]   # (batch index, the norm's output)
    solve: Callable[[], None]


def _readers_pause(model, norm: str, readers: list[Linear], targets: list[dict], data: list[Batch], dim: int,
                   ridge: float) -> Pause:
    """The norm's output in the sliced model, on its kept dims, against the dense norm output."""
    fit = Fit(ridge)

    def solve() -> None:
        k = fit.map()
        for r in readers:
            _refit_reader(model.get_parameter(r.weight), r.axis, k)
        for t in targets:
            del t[norm]   # spent: the block's later pauses hold the batches' activations too
    return Pause(lambda i, out: fit.add(out[..., :dim], targets[i][norm], data[i].mask), solve)


class Lockstep:
    """Replay one block on every batch in a single pass, each batch pausing at every norm being refit until
    all batches have added their moments there and its readers are solved; then the batches go on with the
    refit weights, exactly as if the block were replayed from its start after each solve.

    A module's forward cannot be stopped and resumed, so each batch runs in its own greenlet, which keeps its
    place in the block while the others catch up. Greenlets share one thread: a thread per batch, tried first,
    kept its own native buffers and malloc arena (1.6 GB more peak memory at SmolLM2's widths, 8 batches).
    They run in batch order, so the moments are summed in the same order on every run."""

    def __init__(self, model: nn.Module, block: str, data: list[Batch], masks: dict[str, Callable],
                 pauses: dict[str, Pause]):
        self.model, self.block, self.data, self.masks, self.pauses = model, block, data, masks, pauses

    def run(self) -> list[torch.Tensor]:
        """The block's outputs on every batch, every pause solved on the way."""
        handles = [self.model.get_submodule(n).register_forward_pre_hook(h) for n, h in self.masks.items()]
        handles += [self.model.get_submodule(name).register_forward_hook(
            lambda _mod, _args, out, name=name, p=p: self._pause(name, p, out)) for name, p in self.pauses.items()]
        batches = [greenlet(lambda b=b: replay(self.model, self.block, b, {})) for b in self.data]
        self.index = {g: i for i, g in enumerate(batches)}
        try:
            with torch.no_grad():
                return self._rounds(batches)
        finally:
            for h in handles:
                h.remove()

    def _rounds(self, batches: list[greenlet]) -> list[torch.Tensor]:
        """Run every batch to its next pause, solve that norm, and again, until every batch has its output."""
        while True:
            reached = [b.switch() for b in batches]
            names = [r for r in reached if isinstance(r, str)]
            if len(names) not in (0, len(batches)) or len(set(names)) > 1:
                raise PassError(f"refit: block {self.block!r} runs other refit modules on some calibration batches "
                                f"than on others ({[r if isinstance(r, str) else 'the end' for r in reached]}), "
                                "so its refit is not defined; slice without --refit")
            if not names:
                return reached
            self.pauses[names[0]].solve()

    def _pause(self, name: str, p: Pause, seen: torch.Tensor) -> None:
        """Add this batch's moments, then wait (hand control back) until every batch has and `name` is solved."""
        here = greenlet.getcurrent()
        p.moments(self.index[here], seen)
        here.parent.switch(name)


def _masks(norms: list[str], dim: int) -> dict[str, Callable]:
    """Pre-hooks that make the block's norms read the sliced stream, as the cut model does."""
    return {n: (lambda _mod, args: (kept(args[0], dim),) + tuple(args[1:])) for n in norms}


def _refit_reader(weight: nn.Parameter, axis: int, k: torch.Tensor) -> None:
    """M' = M·Kᵀ on the kept dims, with M the weight, stream axis last, as rows x D."""
    view = torch.movedim(weight.data, axis, -1)
    m = view.reshape(-1, view.shape[-1]).double()
    view[..., :len(k)] = (m @ k.T).reshape(view[..., :len(k)].shape).to(weight.dtype)
