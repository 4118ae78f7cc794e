"""Refit after slicing (shortcut-free mode): a closed-form correction of every block's readers and writers.

Slicing keeps the leading d of the D rotated stream dims; every block then reads a truncated stream,
and the errors add up over depth. Here, block by block on the calibration batches, the sliced model
being built runs next to the dense one. Both are the rotated model at full width, before the cut: the
sliced one is the same model with the stream's trailing D - d dims zeroed, which is exactly what the
cut model computes. For each block, in the order the block computes:
- each norm's readers, stream axis last as M (out x D), get M' = argmin ‖Z·M'ᵀ - X·Mᵀ‖² + λ‖M' - M[:, :d]‖²,
  with Z the norm's output in the sliced model (its d kept dims) and X in the dense model;
- each writer, as M (in x D), gets M' = argmin ‖H·M' - Y‖² + λ‖M' - M[:, :d]‖², with H its input in the
  sliced model (after the readers above were refit) and Y the dense writer's output on the kept dims.
λ = ridge · mean(diag(ZᵀZ)). The penalty pulls toward the plain sliced weights, not toward zero, so at
rotate-only (d = D, hence Z = X) the solution is the weights themselves and the model stays exact.
The next block is calibrated on this block's refit output, so errors are corrected, not compounded.
This is the reconstruction step of MoDeGPT, SVD-LLM and FLAP, on SliceGPT's single subspace.

Moments are summed in float64 across batches; each batch's product runs in float32 (a 16k-token
calibration makes the 1536-wide MLP moments about 80 GFLOP per block in float64). Solves are float64, by
Cholesky (A + λI is positive definite), one factor per norm for all its readers.

Each block costs one dense replay (the targets) and one sliced replay, in lockstep (`Lockstep`): every
batch pauses at each module being refit until all batches have added their moments there and the module
is solved, then runs on with its refit weights. That is what replaying the block from its start after
each solve computes, without the replays.
A writer that sees only some tokens (a routed expert) cannot be paired with the dense model token by
token, so it keeps its plain sliced weights; so does a writer whose weight is not a matrix.
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

RIDGE = 1e-2


class Fit:
    """One ridge least-squares problem, as running sums A = Σ ZᵀZ and C = Σ Zᵀ·T over unpadded tokens."""

    def __init__(self, ridge: float):
        self.ridge = ridge
        self.a: torch.Tensor | None = None
        self.c: torch.Tensor | None = None
        self._factor: tuple[torch.Tensor, float] | None = None

    def add(self, z: torch.Tensor, t: torch.Tensor, mask: torch.Tensor | None) -> None:
        z, t = z.reshape(-1, z.shape[-1]).float(), t.reshape(-1, t.shape[-1]).float()
        if mask is not None:
            z = z * mask.reshape(-1, 1).to(z.dtype)
        a, c = (z.T @ z).double(), (z.T @ t).double()
        self.a, self.c = (a, c) if self.a is None else (self.a + a, self.c + c)

    def solve(self, rhs: torch.Tensor, start: torch.Tensor) -> torch.Tensor:
        """argmin ‖Z·P - T‖² + λ‖P - start‖², given rhs = ZᵀT: P = (A + λI)⁻¹(ZᵀT + λ·start).
        A + λI is positive definite, so one Cholesky factor serves every reader of a norm."""
        if self._factor is None:
            lam = self.ridge * float(self.a.diagonal().mean())
            eye = torch.eye(len(self.a), dtype=self.a.dtype)
            self._factor = torch.linalg.cholesky(self.a + lam * eye), lam
        factor, lam = self._factor
        return torch.cholesky_solve(rhs + lam * start, factor)


def refit(model: nn.Module, s: Structure, batches: Iterable[dict], dim: int, ridge: float = RIDGE,
          progress: Callable[[Iterable], Iterable] = lambda it: it) -> None:
    """Refit, in place, the readers and writers of the rotated full-width model for a stream cut to `dim`."""
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
    """Refit one block's readers and writers; advance the sliced streams in `data`, return the dense ones."""
    norms = [n.module for b in s.branches if b.block == block for n in b.norms]
    targets, outputs = _dense_pass(model, block, data, dense, norms, _writers(model, s, block), dim)
    pauses = block_pauses(model, s, block, data, targets, dim, ridge)
    for b, out in zip(data, Lockstep(model, block, data, _masks(model, norms, dim), pauses).run()):
        b.stream = kept(out, dim)
    return outputs


def _writers(model: nn.Module, s: Structure, block: str) -> list[Linear]:
    """The block's writers whose weight is a matrix (others keep their plain sliced weights)."""
    return [w for b in s.branches if b.block == block for w in b.writers
            if model.get_parameter(w.weight).dim() == 2]


def block_pauses(model, s: Structure, block: str, data: list[Batch], targets: list[dict], dim: int,
                 ridge: float) -> dict[str, Pause]:
    """Every module of the block whose refit the batches wait for, in the order the block runs them: per
    residual add, its norms (for their readers), then its writers that have a dense target on every batch."""
    pauses: dict[str, Pause] = {}
    writers = _writers(model, s, block)
    for b in (b for b in s.branches if b.block == block):
        pauses.update({n.module: _readers_pause(model, n.module, n.readers, targets, data, dim, ridge)
                       for n in b.norms})
        pauses.update({w.module: _writer_pause(model, w, targets, data, ridge) for w in b.writers
                       if w in writers and all(w.module in t for t in targets)})
    return pauses


def _dense_pass(model, block: str, data: list[Batch], dense: list[torch.Tensor], norms: list[str],
                writers: list[Linear], dim: int):
    """Per batch, every norm's output and every writer's output on the kept dims (less its bias) in the
    dense block; and the block's outputs, the next block's dense input. A writer that sees only some of
    the tokens is left out of the batch's targets."""
    targets: list[dict[str, torch.Tensor]] = []
    outputs = []
    for b, stream in zip(data, dense):
        found: dict[str, torch.Tensor] = {}

        def norm_out(name: str):
            def hook(_mod, _args, out):
                found[name] = out
            return hook

        def writer_out(w: Linear):
            bias = model.get_parameter(w.bias)[:dim] if w.bias else 0.0

            def hook(_mod, args, out):
                if args[0].shape[:-1] == stream.shape[:-1]:
                    found[w.module] = out[..., :dim] - bias
            return hook

        handles = [model.get_submodule(n).register_forward_hook(norm_out(n)) for n in norms]
        handles += [model.get_submodule(w.module).register_forward_hook(writer_out(w)) for w in writers]
        try:
            outputs.append(replay(model, block, Batch(stream, b.mask, b.calls), {}))
        finally:
            for h in handles:
                h.remove()
        targets.append(found)
    return targets, outputs


@dataclass
class Pause:
    """A module whose refit the batches wait for: each batch adds its moments where the module runs (a norm's
    output, for its readers; a writer's input), then, once every batch has, `solve` refits the weights."""
    moments: Callable[[int, torch.Tensor], None]   # (batch index, what the module reads or wrote)
    solve: Callable[[], None]
    before: bool                                   # observe the module's input (a writer) or its output (a norm)


def _readers_pause(model, norm: str, readers: list[Linear], targets: list[dict], data: list[Batch], dim: int,
                   ridge: float) -> Pause:
    """The norm's output in the sliced model, on its kept dims, against the dense norm output."""
    fit = Fit(ridge)

    def solve() -> None:
        for r in readers:
            _refit_reader(model.get_parameter(r.weight), r.axis, fit, dim)
    return Pause(lambda i, out: fit.add(out[..., :dim], targets[i][norm], data[i].mask), solve, before=False)


def _writer_pause(model, w: Linear, targets: list[dict], data: list[Batch], ridge: float) -> Pause:
    """The writer's input in the sliced model, against the dense writer's output on the kept dims."""
    fit = Fit(ridge)
    return Pause(lambda i, h: fit.add(h, targets[i][w.module], data[i].mask),
                 lambda: _refit_writer(model.get_parameter(w.weight), w.axis, fit), before=True)


class Lockstep:
    """Replay one block on every batch in a single pass, each batch pausing at every module being refit until
    all batches have added their moments there and the module is solved; then the batches go on with its
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
        handles += [self._hook(name, p) for name, p in self.pauses.items()]
        batches = [greenlet(lambda b=b: replay(self.model, self.block, b, {})) for b in self.data]
        self.index = {g: i for i, g in enumerate(batches)}
        try:
            with torch.no_grad():
                return self._rounds(batches)
        finally:
            for h in handles:
                h.remove()

    def _rounds(self, batches: list[greenlet]) -> list[torch.Tensor]:
        """Run every batch to its next pause, solve that module, and again, until every batch has its output."""
        while True:
            reached = [b.switch() for b in batches]
            names = [r for r in reached if isinstance(r, str)]
            if len(names) not in (0, len(batches)) or len(set(names)) > 1:
                raise PassError(f"refit: block {self.block!r} runs other refit modules on some calibration batches "
                                f"than on others ({[r if isinstance(r, str) else 'the end' for r in reached]}), "
                                "so its refit is not defined; retry with --no-refit")
            if not names:
                return reached
            self.pauses[names[0]].solve()

    def _hook(self, name: str, p: Pause):
        module = self.model.get_submodule(name)
        if p.before:
            return module.register_forward_pre_hook(lambda _mod, args: self._pause(name, p, args[0]))
        return module.register_forward_hook(lambda _mod, _args, out: self._pause(name, p, out))

    def _pause(self, name: str, p: Pause, seen: torch.Tensor) -> None:
        """Add this batch's moments, then wait (hand control back) until every batch has and `name` is solved."""
        here = greenlet.getcurrent()
        p.moments(self.index[here], seen)
        here.parent.switch(name)


def _masks(model, norms: list[str], dim: int) -> dict[str, Callable]:
    """Pre-hooks that make the block's norms read the sliced stream, as the cut model does."""
    return {n: (lambda _mod, args: (kept(args[0], dim),) + tuple(args[1:])) for n in norms}


def _refit_reader(weight: nn.Parameter, axis: int, fit: Fit, dim: int) -> None:
    """Readers: Z·M'ᵀ ≈ X·Mᵀ, so ZᵀT = (ZᵀX)·Mᵀ with M the weight, stream axis last, as rows x D."""
    view = torch.movedim(weight.data, axis, -1)
    m = view.reshape(-1, view.shape[-1]).double()
    p = fit.solve(fit.c @ m.T, m[:, :dim].T)
    view[..., :dim] = p.T.reshape(view[..., :dim].shape).to(weight.dtype)


def _refit_writer(weight: nn.Parameter, axis: int, fit: Fit) -> None:
    """Writers: H·M' ≈ Y with M the weight as in x D (stream axis last); ZᵀT is the accumulated HᵀY."""
    view = torch.movedim(weight.data, axis, -1)
    dim = fit.c.shape[1]
    p = fit.solve(fit.c, view[:, :dim].double())
    view[:, :dim] = p.to(weight.dtype)
