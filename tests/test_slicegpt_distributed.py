"""Data-parallel calibration: two gloo ranks, each with half the batches, give the single-process model."""
from __future__ import annotations

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from passes.slicegpt import slice_model
from test_slicegpt_models import token_batches, tiny_model

IDS = torch.randint(0, 96, (2, 12), generator=torch.Generator().manual_seed(3))


def _rank(rank: int, world: int, init: str, out: str) -> None:
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    try:
        model = tiny_model("qwen2")
        slice_model(model, token_batches(6)[rank::world], 0.25, "shortcut")
        if rank == 0:
            with torch.no_grad():
                torch.save(model(IDS).logits, out)
    finally:
        dist.destroy_process_group()


def test_two_gloo_ranks_equal_one_process(tmp_path):
    out = tmp_path / "logits.pt"
    mp.spawn(_rank, args=(2, f"file://{tmp_path / 'rendezvous'}", str(out)), nprocs=2, join=True)
    model = tiny_model("qwen2")
    slice_model(model, token_batches(6), 0.25, "shortcut")
    with torch.no_grad():
        single = model(IDS).logits
    together = torch.load(out, weights_only=True)
    assert float((together - single).abs().max() / single.abs().max()) < 1e-5
