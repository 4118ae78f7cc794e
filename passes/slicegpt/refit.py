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
calibration makes the 1536-wide MLP moments about 80 GFLOP per block in float64). Solves are float64.
A writer that sees only some tokens (a routed expert) cannot be paired with the dense model token by
token, so it keeps its plain sliced weights; so does a writer whose weight is not a matrix.
"""
from __future__ import annotations

from typing import Callable, Iterable

import torch
from torch import nn

from passes.slicegpt.calibration import _Stop
from passes.slicegpt.sequential import Batch, capture, replay
from passes.slicegpt.structure import Linear, Structure

RIDGE = 1e-2


class Fit:
    """One ridge least-squares problem, as running sums A = Σ ZᵀZ and C = Σ Zᵀ·T over unpadded tokens."""

    def __init__(self):
        self.a: torch.Tensor | None = None
        self.c: torch.Tensor | None = None

    def add(self, z: torch.Tensor, t: torch.Tensor, mask: torch.Tensor | None) -> None:
        z, t = z.reshape(-1, z.shape[-1]).float(), t.reshape(-1, t.shape[-1]).float()
        if mask is not None:
            z = z * mask.reshape(-1, 1).to(z.dtype)
        a, c = (z.T @ z).double(), (z.T @ t).double()
        self.a, self.c = (a, c) if self.a is None else (self.a + a, self.c + c)

    def solve(self, rhs: torch.Tensor, start: torch.Tensor, ridge: float) -> torch.Tensor:
        """argmin ‖Z·P - T‖² + λ‖P - start‖², given rhs = ZᵀT: P = (A + λI)⁻¹(ZᵀT + λ·start)."""
        lam = ridge * float(self.a.diagonal().mean())
        eye = torch.eye(len(self.a), dtype=self.a.dtype)
        return torch.linalg.solve(self.a + lam * eye, rhs + lam * start)


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
    branches = [b for b in s.branches if b.block == block]
    norms = [n.module for b in branches for n in b.norms]
    writers = [w for b in branches for w in b.writers if _matrix(model, w)]
    targets, outputs = _dense_pass(model, block, data, dense, norms, writers, dim)
    for b in branches:
        fits = _sliced_stage(model, block, data, norms, [n.module for n in b.norms], [], targets, dim)
        for n in b.norms:
            for r in n.readers:
                _refit_reader(model.get_parameter(r.weight), r.axis, fits[n.module], dim, ridge)
        mine = [w for w in b.writers if w in writers and all(w.module in t for t in targets)]
        fits = _sliced_stage(model, block, data, norms, [], [w.module for w in mine], targets, dim)
        for w in mine:
            _refit_writer(model.get_parameter(w.weight), w.axis, fits[w.module], ridge)
    for b in data:
        b.stream = kept(replay(model, block, b, _masks(model, norms, dim)), dim)
    return outputs


def _matrix(model: nn.Module, w: Linear) -> bool:
    return model.get_parameter(w.weight).dim() == 2


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


def _sliced_stage(model, block: str, data: list[Batch], norms: list[str], readers_of: list[str],
                  writers: list[str], targets: list[dict], dim: int) -> dict[str, Fit]:
    """Run the sliced block (stream cut to `dim`) up to the given norms' outputs or writers' inputs, and
    pair them with the dense targets: readers with the dense norm output, writers with the dense output."""
    fits = {name: Fit() for name in readers_of + writers}
    wanted = len(fits)
    for b, found in zip(data, targets):
        seen: set[str] = set()

        def observe(name: str, z_of: Callable):
            def hook(_mod, args, out):
                fits[name].add(z_of(args, out), found[name], b.mask)
                seen.add(name)
                if len(seen) == wanted:
                    raise _Stop   # the rest of the block does not change this stage's moments
            return hook

        handles = [model.get_submodule(n).register_forward_hook(observe(n, lambda _a, out: out[..., :dim]))
                   for n in readers_of]
        handles += [model.get_submodule(w).register_forward_hook(observe(w, lambda args, _o: args[0]))
                    for w in writers]
        try:
            replay(model, block, b, _masks(model, norms, dim))
        except _Stop:
            pass
        finally:
            for h in handles:
                h.remove()
    return fits


def _masks(model, norms: list[str], dim: int) -> dict[str, Callable]:
    """Pre-hooks that make the block's norms read the sliced stream, as the cut model does."""
    return {n: (lambda _mod, args: (kept(args[0], dim),) + tuple(args[1:])) for n in norms}


def _refit_reader(weight: nn.Parameter, axis: int, fit: Fit, dim: int, ridge: float) -> None:
    """Readers: Z·M'ᵀ ≈ X·Mᵀ, so ZᵀT = (ZᵀX)·Mᵀ with M the weight, stream axis last, as rows x D."""
    view = torch.movedim(weight.data, axis, -1)
    m = view.reshape(-1, view.shape[-1]).double()
    p = fit.solve(fit.c @ m.T, m[:, :dim].T, ridge)
    view[..., :dim] = p.T.reshape(view[..., :dim].shape).to(weight.dtype)


def _refit_writer(weight: nn.Parameter, axis: int, fit: Fit, ridge: float) -> None:
    """Writers: H·M' ≈ Y with M the weight as in x D (stream axis last); ZᵀT is the accumulated HᵀY."""
    view = torch.movedim(weight.data, axis, -1)
    dim = fit.c.shape[1]
    p = fit.solve(fit.c, view[:, :dim].double(), ridge)
    view[:, :dim] = p.to(weight.dtype)
