"""Set aggregators: pooling over a set axis, for dense sets with a mask and for ragged batches.

The fx call_function targets defined here (compiler/onnx_sets.py lowers each; the symmetry rules
read these semantics):

    masked_reduce(x, mask, axis, kind)      x [d0..d_axis, ...] -> x without `axis`. `axis` is the
                                            set axis; mask is bool over x's dims 0..axis (None: all
                                            real). kind: sum, mean, max, min. Invariant under
                                            permutations of `axis`.
    attention_pool(x, query, mask)          x [..., N, D] -> [..., D]: softmax(x·query/√D) over the
                                            set axis N (= -2) weights the elements. mask bool
                                            [..., N]. Invariant under permutations of N.
    segment_reduce(x, offsets, kind, deterministic)
                                            x [R, ...] rows, offsets i64 [S+1] CSR (0 = o_0 <= ...
                                            <= o_S = R; set s is rows o_s..o_{s+1}-1) -> [S, ...].
                                            Invariant under permutations of rows within a set.
    scatter_reduce(x, segment_ids, like, kind)
                                            x [R, ...], segment_ids i64 [R] in [0, S) in any order,
                                            like: any tensor whose dim 0 is S -> [S, ...].
    gather(x, index, axis)                  x [..., N, ...], index i64 [E] in [0, N) -> x with
                                            `axis` N replaced by E (the rows an edge list names).

An empty set (all-False mask row, equal offsets, an unused id) reduces to 0 for every kind, never
±inf or NaN. NaN in a set's real elements gives NaN in that set's result. `deterministic` picks a
formulation without atomic scatters (a CSR reduction in torch, gather-then-reduce in ONNX); on the
CPU both modes are exact and reproducible, the flag matters on GPUs.
"""
from __future__ import annotations

import math

import torch


def _mask_like(mask: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Mask over x's leading dims, given trailing singleton dims so it broadcasts against x."""
    return mask.reshape(mask.shape + (1,) * (x.dim() - mask.dim()))


def masked_reduce(x, mask, axis, kind):
    if mask is None:
        return {"sum": x.sum, "mean": x.mean, "max": x.amax, "min": x.amin}[kind](axis)
    m = _mask_like(mask, x)
    if kind in ("sum", "mean"):
        total = torch.where(m, x, 0).sum(axis)
        if kind == "sum":
            return total
        return total / m.sum(axis).clamp(min=1).to(x.dtype)
    # ±inf at padding never wins a real element; a set with none is set to 0 afterwards.
    fill = -math.inf if kind == "max" else math.inf
    reduced = torch.where(m, x, fill).amax(axis) if kind == "max" else torch.where(m, x, fill).amin(axis)
    return torch.where(m.any(axis), reduced, 0)


def attention_pool(x, query, mask=None):
    if mask is not None:
        x = torch.where(mask[..., None], x, 0)  # padding content must not reach the sum
    scores = torch.matmul(x, query) * (1.0 / math.sqrt(x.shape[-1]))
    if mask is not None:
        # The most negative finite value, as attention does: an empty set stays finite...
        scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
    weights = torch.softmax(scores, -1)
    if mask is not None:
        weights = weights * mask  # ...and then gets weight 0 everywhere, so pools to 0
    return (weights[..., None] * x).sum(-2)


def segment_counts(offsets):
    return offsets[1:] - offsets[:-1]


def segment_ids(offsets, rows: int):
    """Each row's set index, from CSR offsets."""
    sets = torch.arange(offsets.shape[0] - 1, device=offsets.device)
    return torch.repeat_interleave(sets, segment_counts(offsets), output_size=rows)


def segment_reduce(x, offsets, kind, deterministic=False):
    if deterministic:
        # One ordered pass per set: no scatter, so no atomics on a GPU.
        out = torch.segment_reduce(x, kind, offsets=offsets, axis=0)
        present = _mask_like(segment_counts(offsets) > 0, out)
        return torch.where(present, out, 0)
    return scatter_reduce(x, segment_ids(offsets, x.shape[0]), offsets[1:], kind)


def scatter_reduce(x, segment_ids, like, kind):
    sets, rows = like.shape[0], x.shape[0]
    out = x.new_zeros((sets,) + x.shape[1:])
    if kind in ("sum", "mean"):
        out.index_add_(0, segment_ids, x)
        if kind == "mean":
            count = torch.zeros(sets, dtype=x.dtype, device=x.device)
            count.index_add_(0, segment_ids, torch.ones(rows, dtype=x.dtype, device=x.device))
            out = out / _mask_like(count.clamp(min=1), out)
        return out
    index = segment_ids.reshape((rows,) + (1,) * (x.dim() - 1)).expand_as(x)
    # include_self=False: a set no row reaches keeps the 0 it started with.
    return out.scatter_reduce_(0, index, x, "amax" if kind == "max" else "amin", include_self=False)


def gather(x, index, axis):
    return torch.index_select(x, axis, index)
