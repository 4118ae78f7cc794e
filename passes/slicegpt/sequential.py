"""Sequential calibration for shortcut mode: each block's rotation is learned on the stream of a model
whose earlier blocks are already rotated and sliced.

The model itself is not changed here. Slicing group g to d dims keeps the projection of its stream
onto the leading d directions of Q_g, so the sliced model's stream, written in the original basis, is
x·Q_g[:, :d]·Q_g[:, :d]ᵀ. Each block is replayed on that projected input with the arguments it was
called with (captured once by hooks), one block at a time, so peak memory is the model plus one
stream tensor per calibration batch. Inside a block the positions of its own group are observed
unprojected (their rotation is still being learned); the block's output is then recomputed with its
inner norms reading the projected stream, which is what the sliced block computes.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable

import torch
from torch import nn

from passes.base import PassError
from passes.slicegpt.calibration import _Stop, accumulate, all_ranks, pca
from passes.slicegpt.structure import Structure


@dataclass
class BlockCall:
    """One block's call for one batch, without its stream input: replaying it needs only a new stream."""
    args: tuple
    kwargs: dict


@dataclass
class Batch:
    stream: torch.Tensor             # the stream entering the next block to replay
    mask: torch.Tensor | None
    calls: dict[str, BlockCall]


def block_names(s: Structure) -> list[str]:
    return list(dict.fromkeys(b.block for b in s.branches))


def capture(model: nn.Module, s: Structure, batches: Iterable[dict]) -> list[Batch]:
    """Run the dense model once per batch, recording every block's call; the head is skipped."""
    blocks = block_names(s)
    captured: list[Batch] = []
    current: dict[str, BlockCall] = {}
    first: list[torch.Tensor] = []

    def recorder(name: str):
        def hook(_mod, args, kwargs):
            stream = args[0] if args else kwargs.get("hidden_states")
            if not isinstance(stream, torch.Tensor) or stream.shape[-1] != s.width:
                raise PassError(f"block {name!r} is not called with the residual stream as its first "
                                "argument or as hidden_states, so it cannot be replayed")
            if name == blocks[0]:
                first.append(stream)
            current[name] = BlockCall(args[1:], {k: v for k, v in kwargs.items() if k != "hidden_states"})
        return hook

    def stop(_mod, _args):
        raise _Stop

    handles = [model.get_submodule(b).register_forward_pre_hook(recorder(b), with_kwargs=True) for b in blocks]
    handles.append(model.get_submodule(s.final.module).register_forward_pre_hook(stop))
    try:
        for batch in batches:
            current.clear()
            first.clear()
            mask = batch.get("attention_mask")
            try:
                model(input_ids=batch["input_ids"], attention_mask=mask, use_cache=False)
            except _Stop:
                pass
            captured.append(Batch(first[0], mask, dict(current)))
    finally:
        for h in handles:
            h.remove()
    return captured


def project(x: torch.Tensor, q: torch.Tensor, dim: int, centered: bool) -> torch.Tensor:
    """The sliced stream in the original basis: x (mean-free for LayerNorm models) onto q's first dim columns."""
    h = x.to(torch.float64)
    if centered:
        h = h - h.mean(dim=-1, keepdim=True)
    kept = q[:, :dim]
    return ((h @ kept) @ kept.T).to(x.dtype)


def replay(model: nn.Module, block: str, batch: Batch, hooks: dict[str, Callable]) -> torch.Tensor:
    """Run one block on the batch's current stream with pre-hooks on some of its norms."""
    handles = [model.get_submodule(n).register_forward_pre_hook(h) for n, h in hooks.items()]
    try:
        call = batch.calls[block]
        out = model.get_submodule(block)(batch.stream, *call.args, **call.kwargs)
    finally:
        for h in handles:
            h.remove()
    return out[0] if isinstance(out, tuple) else out


def inner_norms(s: Structure, block: str) -> list[str]:
    """Norms inside `block` that read the block's own rotation group (all but its first branch's)."""
    branches = [b for b in s.branches if b.block == block]
    return [n.module for b in branches[1:] for n in b.norms]


def sequential_rotations(model: nn.Module, s: Structure, batches: Iterable[dict], dims: list[int],
                         progress: Callable[[Iterable], Iterable] = lambda it: it) -> list[torch.Tensor]:
    """One rotation for the embedding output and one per block, each on the already sliced stream."""
    centered = s.layer_norm
    with torch.no_grad():
        data = capture(model, s, batches)
        first = torch.zeros(s.width, s.width, dtype=torch.float64)
        for b in data:
            accumulate(first, b.stream, b.mask, centered, f"block {block_names(s)[0]!r}")
        if float(all_ranks(first).trace()) == 0.0:
            raise PassError("calibration saw no tokens: give at least one batch with unmasked tokens")
        rotations = [pca(first)]
        _advance(data, rotations[0], dims[0], centered)
        for g, block in enumerate(progress(block_names(s)), start=1):
            rotations.append(_block_rotation(model, s, block, data))
            _slice_block(model, s, block, data, rotations[g], dims[g])
    return rotations


def _advance(data: list[Batch], q: torch.Tensor, dim: int, centered: bool) -> None:
    for b in data:
        b.stream = project(b.stream, q, dim, centered)


def _block_rotation(model: nn.Module, s: Structure, block: str, data: list[Batch]) -> torch.Tensor:
    """PCA of the block's positions (inner residual adds and output) on its already sliced input."""
    acc = torch.zeros(s.width, s.width, dtype=torch.float64)
    for b in data:
        def observe(_mod, args, mask=b.mask):
            accumulate(acc, args[0], mask, s.layer_norm, f"a norm of block {block!r}")
        out = replay(model, block, b, {n: observe for n in inner_norms(s, block)})
        accumulate(acc, out, b.mask, s.layer_norm, f"the output of block {block!r}")
    return pca(all_ranks(acc))


def _slice_block(model: nn.Module, s: Structure, block: str, data: list[Batch], q: torch.Tensor,
                 dim: int) -> None:
    """Replace each batch's stream by the sliced block's output: its inner norms read the projection."""
    def sliced_input(_mod, args):
        return (project(args[0], q, dim, s.layer_norm),) + tuple(args[1:])

    for b in data:
        b.stream = project(replay(model, block, b, {n: sliced_input for n in inner_norms(s, block)}),
                           q, dim, s.layer_norm)
