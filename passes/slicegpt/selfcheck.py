"""The self-check: after folding and rotating, and before slicing, the rotated model must compute what the
dense model computed (rotate-only is exact). A structure the discovery misread (a scale it did not see, a
reader it missed, a module it does not know) shows up here as a refusal that names the first block whose
output diverges, instead of as a silently wrong model. It costs two forward passes on one short sequence."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from passes.base import PassError
from passes.slicegpt.structure import Structure

TOLERANCE = 1e-4
PROBE_TOKENS = 128   # the logits of a whole calibration batch would be large (vocab x tokens)


@dataclass
class Reference:
    """What the dense model computes on the probe: its logits and every block's output."""
    batch: dict
    logits: torch.Tensor
    blocks: dict[str, torch.Tensor]


def probe(batches: list[dict] | None, vocab: int) -> dict:
    """The first calibration sequence, or seeded random tokens when only a finished calibration was given."""
    if batches:
        first = batches[0]
        mask = first.get("attention_mask")
        return {"input_ids": first["input_ids"][:1, :PROBE_TOKENS],
                "attention_mask": None if mask is None else mask[:1, :PROBE_TOKENS]}
    ids = torch.randint(0, vocab, (1, 32), generator=torch.Generator().manual_seed(0))
    return {"input_ids": ids, "attention_mask": None}


def outputs(model: nn.Module, s: Structure, batch: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The logits and each block's output (its first result when it returns a tuple)."""
    found: dict[str, torch.Tensor] = {}

    def keep(name: str):
        def hook(_mod, _args, out):
            found[name] = (out[0] if isinstance(out, tuple) else out).detach().to(torch.float64)
        return hook

    handles = [model.get_submodule(b).register_forward_hook(keep(b)) for b in s.blocks]
    try:
        with torch.no_grad():
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False).logits
    finally:
        for h in handles:
            h.remove()
    return logits.detach().to(torch.float64), found


def record(model: nn.Module, s: Structure, batch: dict) -> Reference:
    return Reference(batch, *outputs(model, s, batch))


def relative(got: torch.Tensor, want: torch.Tensor) -> float:
    if got.shape != want.shape:
        return float("inf")
    return float((got - want).abs().max() / want.abs().max().clamp_min(1e-30))


def verify(model: nn.Module, s: Structure, ref: Reference, rotations: list[torch.Tensor], groups: list[int],
           tolerance: float = TOLERANCE) -> None:
    """Refuse unless the rotated model's block outputs are the dense ones in the rotated basis, and its
    logits are the dense logits."""
    how = ("slicing is refused. The model in memory was already folded and rotated: reload it before using it. "
           f"Structure found: {s.summary()}")
    try:
        logits, blocks = outputs(model, s, ref.batch)
    except Exception as e:  # noqa: BLE001 - a rotated model that cannot run is a refusal with its reason
        raise PassError(f"self-check: the rotated model fails to run ({type(e).__name__}: {e}); {how}") from e
    last = {b.block: k for k, b in enumerate(s.branches, start=1)}
    for block in s.blocks:
        want = ref.blocks[block]
        if s.layer_norm:   # the rotated model's stream is mean-free
            want = want - want.mean(dim=-1, keepdim=True)
        err = relative(blocks.get(block, torch.empty(0)), want @ rotations[groups[last[block]]])
        if not err <= tolerance:
            raise PassError(f"self-check: after rotation, before slicing, the output of block {block!r} differs "
                            f"from the dense model's by {err:.1e} relative (tolerance {tolerance:.0e}), while the "
                            f"blocks before it agree: the discovered structure misses something this block "
                            f"computes, so {how}")
    err = relative(logits, ref.logits)
    if not err <= tolerance:
        raise PassError(f"self-check: after rotation every block agrees with the dense model but the logits differ "
                        f"by {err:.1e} relative (tolerance {tolerance:.0e}): the final norm {s.final.module!r} or "
                        f"the head computes something the discovered structure misses, so {how}")
