"""Sequential calibration for shortcut mode: each rotation group (one per block in shortcut mode) is
learned on the stream of a model whose earlier groups are already rotated and sliced.

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
from passes.slicegpt.calibration import _Stop, accumulate, all_ranks, pca, seen
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


def capture(model: nn.Module, s: Structure, batches: Iterable[dict]) -> list[Batch]:
    """Run the model once per batch, recording every block's call; the head is skipped.

    Replaying already assumes that a block's arguments besides the stream do not depend on earlier
    blocks. So from the second batch on, a block that returned just the stream is not computed
    (it hands its input on): only the first block's input and the calls are kept."""
    recorder, captured = _Recorder(model, s), []
    try:
        for i, batch in enumerate(batches):
            if i == 1:
                recorder.skip_plain_blocks()
            captured.append(recorder.run(batch))
    finally:
        recorder.close()
    return captured


class _Recorder:
    """Hooks on every block that record its call, and on the final norm that stop the model there."""

    def __init__(self, model: nn.Module, s: Structure):
        self.model, self.s = model, s
        self.calls: dict[str, BlockCall] = {}
        self.first: list[torch.Tensor] = []
        self.plain: set[str] = set()          # blocks that returned just the stream
        self.skipped: dict[nn.Module, object] = {}
        mods = [model.get_submodule(b) for b in s.blocks]
        self.handles = [m.register_forward_pre_hook(self._record(b), with_kwargs=True) for b, m in zip(s.blocks, mods)]
        self.handles += [m.register_forward_hook(self._returns_stream(b), with_kwargs=True)
                         for b, m in zip(s.blocks, mods)]
        self.handles.append(model.get_submodule(s.final.module).register_forward_pre_hook(_stop))

    def run(self, batch: dict) -> Batch:
        self.calls.clear()
        self.first.clear()
        mask = batch.get("attention_mask")
        try:
            self.model(input_ids=batch["input_ids"], attention_mask=mask, use_cache=False)
        except _Stop:
            pass
        return Batch(self.first[0], mask, dict(self.calls))

    def _record(self, name: str):
        def hook(_mod, args, kwargs):
            stream = args[0] if args else kwargs.get("hidden_states")
            if not isinstance(stream, torch.Tensor) or stream.shape[-1] != self.s.width:
                raise PassError(f"block {name!r} is not called with the residual stream as its first "
                                "argument or as hidden_states, so it cannot be replayed")
            if name == self.s.blocks[0]:
                self.first.append(stream)
            self.calls[name] = BlockCall(args[1:], {k: v for k, v in kwargs.items() if k != "hidden_states"})
        return hook

    def _returns_stream(self, name: str):
        def hook(_mod, args, kwargs, out):
            stream = args[0] if args else kwargs.get("hidden_states")
            if isinstance(out, torch.Tensor) and out.shape == stream.shape:
                self.plain.add(name)
        return hook

    def skip_plain_blocks(self) -> None:
        # Remember any forward set on the instance (accelerate's offloading hooks live there).
        self.skipped = {self.model.get_submodule(b): self.model.get_submodule(b).__dict__.get("forward")
                        for b in self.s.blocks if b in self.plain}
        for block in self.skipped:
            block.forward = _hand_on

    def close(self) -> None:
        for h in self.handles:
            h.remove()
        for block, own in self.skipped.items():
            if own is None:
                del block.forward
            else:
                block.forward = own


def _stop(_mod, _args):
    raise _Stop


def _hand_on(*args, **kwargs) -> torch.Tensor:
    return args[0] if args else kwargs["hidden_states"]


def project(x: torch.Tensor, q: torch.Tensor, dim: int, centered: bool) -> torch.Tensor:
    """The sliced stream in the original basis: x (mean-free for LayerNorm models) onto q's first dim columns.
    In float32: this only prepares the next block's input, which the model computes in float32 anyway."""
    h = x.float()
    if centered:
        h = h - h.mean(dim=-1, keepdim=True)
    if 2 * dim >= q.shape[1]:
        # Subtracting the dropped part is the same projection and cheaper when most dims stay.
        dropped = q[:, dim:].float()
        return (h - (h @ dropped) @ dropped.T).to(x.dtype)
    kept = q[:, :dim].float()
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


def block_positions(s: Structure, block: str) -> list[int]:
    """The stream positions written inside `block`, in order; the last one is the block's output."""
    return [k for k, b in enumerate(s.branches, start=1) if b.block == block]


def readers_of(s: Structure, pos: int) -> list[str]:
    """The norms that read stream position `pos` (those of the branch after it)."""
    return [n.module for n in s.branches[pos].norms]


def sequential_rotations(model: nn.Module, s: Structure, batches: Iterable[dict], groups: list[int],
                         dims: list[int], progress: Callable[[Iterable], Iterable] = lambda it: it
                         ) -> list[torch.Tensor]:
    """One rotation per group, each learned on the stream already sliced by the groups before it."""
    with torch.no_grad():
        data = capture(model, s, batches)
        first = torch.zeros(s.width, s.width, dtype=torch.float64)
        for b in data:
            accumulate(first, b.stream, b.mask, s.layer_norm, f"block {s.blocks[0]!r}")
        rotations = {groups[0]: pca(seen(all_ranks(first)))}
        for b in data:
            b.stream = project(b.stream, rotations[groups[0]], dims[groups[0]], s.layer_norm)
        for block in progress(s.blocks):
            positions = block_positions(s, block)
            outputs = None
            for g in dict.fromkeys(groups[p] for p in positions):
                rotations[g], outputs = _learn(model, s, block, data, positions, groups, g, rotations, dims)
            last = groups[positions[-1]]
            if outputs is None:
                outputs = [replay(model, block, b, _projections(s, positions[:-1], groups, rotations, dims))
                           for b in data]
            for b, out in zip(data, outputs):
                b.stream = project(out, rotations[last], dims[last], s.layer_norm)
    return [rotations[g] for g in sorted(rotations)]


def _projections(s: Structure, inner: list[int], groups: list[int], rotations: dict, dims: list[int]) -> dict:
    """Pre-hooks that make the norms reading already calibrated inner positions see the sliced stream."""
    def sliced(q: torch.Tensor, dim: int):
        return lambda _mod, args: (project(args[0], q, dim, s.layer_norm),) + tuple(args[1:])
    return {n: sliced(rotations[groups[p]], dims[groups[p]])
            for p in inner if groups[p] in rotations for n in readers_of(s, p)}


def _learn(model: nn.Module, s: Structure, block: str, data: list[Batch], positions: list[int],
           groups: list[int], g: int, rotations: dict, dims: list[int]):
    """PCA of group g's positions in `block`, replayed with the earlier groups already sliced.
    Also returns the block's outputs when they are already those of the sliced block."""
    inner = positions[:-1]
    observed = [p for p in inner if groups[p] == g]
    acc = torch.zeros(s.width, s.width, dtype=torch.float64)
    outputs = []
    sliced = _projections(s, inner, groups, rotations, dims)
    for b in data:
        def observer(norm: str, mask=b.mask):
            return lambda _mod, args: accumulate(acc, args[0], mask, s.layer_norm, f"norm {norm!r} of block {block!r}")
        out = replay(model, block, b, {**sliced, **{n: observer(n) for p in observed for n in readers_of(s, p)}})
        if groups[positions[-1]] == g:
            accumulate(acc, out, b.mask, s.layer_norm, f"the output of block {block!r}")
        outputs.append(out)
    return pca(all_ranks(acc)), (None if observed else outputs)
