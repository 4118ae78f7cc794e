"""torch.library custom ops backed by runtime/triton's templates, falling back to the ops' torch forms.

    invc::segment_reduce(x, offsets, kind, deterministic, weight, bias, activation)
        kind over CSR sets of rows of act(linear(x)) (the linear and act optional) -> [S, D]
    invc::masked_reduce(x, mask, kind)          kind over axis -2 of x [..., N, D], mask [..., N]
    invc::pca_frames(pos, mask, proper)         (centroid [B, 1, 3], basis [B, F, 3, 3],
                                                 points in each frame [B*F, N, 3]), as ops/frames.py
    invc::rmsnorm_linear(x, norm_weight, weight, bias, eps)

CUDA tensors run the kernels, and so do CPU tensors under TRITON_INTERPRET=1; any other device,
or a dtype without a template (f64), runs the torch forms of ops/.
The ops are defined on the first `register()`, so importing invc never needs triton.
segment_reduce is an opaque custom_op: its launcher validates offsets and sizes its chunk table
on the host, which tracing cannot see through. The others are triton_ops, whose kernels
torch.compile and torch.export see.
"""
import functools
from typing import Optional

import torch

from common.dtypes import name_of
from ops import elementwise, frames, linear, norms, sets
from runtime.triton import prelude
from runtime.triton.templates import (ACTIVATIONS, FRAME_HELPERS, KERNEL_DTYPES, Act, Linear,
                                      PCAFrames, RMSNormLinear, SegmentReduce)

def _kernels_for(x: torch.Tensor) -> bool:
    return name_of(x.dtype) in KERNEL_DTYPES and (x.is_cuda or prelude.interpreting())


@functools.lru_cache(maxsize=None)
def _launcher(config, helpers: str = ""):
    """The config's launcher, from a module whose kernels are wrapped for torch.library."""
    from torch.library import wrap_triton

    from runtime.triton.build import load, module_source
    body = (helpers + "\n\n\n" if helpers else "") + config.source()
    module = load(module_source(f"invc custom op kernels: {config.summary()}", body), "invc_op")
    for name in config.kernels:
        setattr(module, name, wrap_triton(getattr(module, name)))
    return getattr(module, f"launch_{config.name}")


def _steps(weight, bias, activation: str) -> tuple:
    steps = () if weight is None else (Linear(weight.shape[1], weight.shape[0], bias is not None),)
    return steps + ((Act(activation),) if activation != "none" else ())


def _row_map(x, weight, bias, activation: str):
    x = x if weight is None else linear.linear(x, weight, bias)
    return x if activation == "none" else getattr(elementwise, activation)(x)


Tensor, Maybe = torch.Tensor, Optional[torch.Tensor]


def segment_reduce(x: Tensor, offsets: Tensor, kind: str, deterministic: bool = False,
                   weight: Maybe = None, bias: Maybe = None, activation: str = "none") -> Tensor:
    if activation != "none" and activation not in ACTIVATIONS:
        raise ValueError(f"invc::segment_reduce: activation must be 'none' or one of {', '.join(ACTIVATIONS)}, got {activation!r}")
    if not _kernels_for(x) or x.dim() != 2:
        prelude.check_offsets(offsets, x.shape[0])  # torch's own errors would not name the offsets
        return sets.segment_reduce(_row_map(x, weight, bias, activation), offsets, kind, deterministic)
    config = SegmentReduce("segment_reduce", kind, "csr", x.shape[1], _steps(weight, bias, activation),
                           name_of(x.dtype))
    tensors = [t for t in (weight, bias) if t is not None]
    return _launcher(config)(x, offsets, *tensors, variant="csr" if deterministic else "auto")


def masked_reduce(x: Tensor, mask: Maybe, kind: str) -> Tensor:
    if not _kernels_for(x) or x.dim() < 2:
        return sets.masked_reduce(x, mask, x.dim() - 2, kind)
    layout = "dense" if mask is None else "masked"
    config = SegmentReduce("masked_reduce", kind, layout, x.shape[-1], (), name_of(x.dtype))
    return _launcher(config)(x, *([] if mask is None else [mask]))


def pca_frames(pos: Tensor, mask: Maybe, proper: bool) -> tuple[Tensor, Tensor, Tensor]:
    if not _kernels_for(pos) or pos.dim() != 3:
        c = frames.frame_centroid(pos, mask)
        basis = frames.frame_basis(pos, c, mask, proper)
        return c, basis, frames.frame_in(pos, basis, c)
    config = PCAFrames("pca_frames", 4 if proper else 8, mask is not None, name_of(pos.dtype))
    c, basis, points = _launcher(config, FRAME_HELPERS)(pos, *([] if mask is None else [mask]))
    return c[:, None], basis, points.reshape(-1, *points.shape[2:])


def rmsnorm_linear(x: Tensor, norm_weight: Maybe, weight: Tensor, bias: Maybe, eps: float) -> Tensor:
    if not _kernels_for(x):
        return linear.linear(norms.rmsnorm(x, norm_weight, eps), weight, bias)
    config = RMSNormLinear("rmsnorm_linear", weight.shape[1], weight.shape[0], eps, norm_weight is not None,
                           bias is not None, (), name_of(x.dtype))
    return _launcher(config)(x, *[t for t in (norm_weight, weight, bias) if t is not None])


def _segment_reduce_fake(x: Tensor, offsets: Tensor, kind: str, deterministic: bool = False,
                         weight: Maybe = None, bias: Maybe = None, activation: str = "none") -> Tensor:
    return x.new_empty((offsets.shape[0] - 1, x.shape[1] if weight is None else weight.shape[0]))


@functools.lru_cache(maxsize=None)
def register():
    """Define the invc:: ops (once) and return torch.ops.invc."""
    from torch.library import custom_op, triton_op

    custom_op("invc::segment_reduce", segment_reduce, mutates_args=()).register_fake(_segment_reduce_fake)
    for fn in (masked_reduce, pca_frames, rmsnorm_linear):
        triton_op(f"invc::{fn.__name__}", fn, mutates_args=())
    return torch.ops.invc
