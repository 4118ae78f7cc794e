"""Torch implementations of the .inv op vocabulary: the call_function targets of invc's fx graphs.

Each function takes tensors plus plain Python constants, so a graph node's args say everything the
ONNX backend and the symmetry rules need. Shapes arrive resolved by the checker: `reshape` takes
ONNX-style specs where 0 copies the input's dim and -1 is inferred.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def linear(x, weight, bias=None):
    return F.linear(x, weight, bias)


def embedding(ids, weight):
    return F.embedding(ids, weight)


def layernorm(x, weight=None, bias=None, eps=1e-5):
    return F.layer_norm(x, x.shape[-1:], weight, bias, eps)


def rmsnorm(x, weight=None, eps=1e-6):
    y = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)
    return y if weight is None else y * weight


def relu(x):
    return torch.relu(x)


def gelu(x):
    return F.gelu(x)


def silu(x):
    return F.silu(x)


def tanh(x):
    return torch.tanh(x)


def sigmoid(x):
    return torch.sigmoid(x)


def softmax(x, axis=-1):
    return torch.softmax(x, axis)


def add(a, b):
    return a + b


def sub(a, b):
    return a - b


def mul(a, b):
    return a * b


def div(a, b):
    return a / b


def neg(a):
    return -a


def matmul(a, b):
    return torch.matmul(a, b)


def attention(x, w_qkv, b_qkv, w_out, b_out, heads, mask=None, causal=False):
    """Multi-head self-attention over axis -2. `mask` is bool [B, N]: True marks a real key."""
    *lead, n, d = x.shape
    qkv = F.linear(x, w_qkv, b_qkv).reshape(*lead, n, 3, heads, d // heads)
    q, k, v = (qkv.select(-3, i).transpose(-2, -3) for i in range(3))
    scores = torch.matmul(q, k.transpose(-1, -2)) * (1.0 / math.sqrt(d // heads))
    # The most negative finite value, not -inf: a query whose keys are all masked then gets a
    # defined (uniform) mix instead of NaN, while NaN in the inputs still propagates.
    hidden = torch.finfo(scores.dtype).min
    if mask is not None:
        scores = scores.masked_fill(~mask[..., None, None, :], hidden)
    if causal:
        future = torch.ones(n, n, dtype=torch.bool, device=x.device).triu(1)
        scores = scores.masked_fill(future, hidden)
    weights = torch.softmax(scores, -1)
    out = torch.matmul(weights, v).transpose(-2, -3).reshape(*lead, n, d)
    return F.linear(out, w_out, b_out)


def concat(tensors, axis):
    return torch.cat(list(tensors), axis)


def reshape(x, shape):
    return x.reshape([x.shape[i] if s == 0 else s for i, s in enumerate(shape)])


def unflatten_rows(y, like):
    """y [rows, F] back to like's leading dims: [*like.shape[:-1], F]. The rows pass flattens a
    row-wise chain once; the leading dims are read from `like` at run time, so symbolic ones work."""
    return y.reshape(*like.shape[:-1], y.shape[-1])


def permute(x, perm):
    return x.permute(perm)


def reduce_sum(x, axis, keepdim=False):
    return x.sum(axis, keepdim=keepdim)


def reduce_mean(x, axis, keepdim=False):
    return x.mean(axis, keepdim=keepdim)


def reduce_max(x, axis, keepdim=False):
    return x.amax(axis, keepdim=keepdim)


def reduce_min(x, axis, keepdim=False):
    return x.amin(axis, keepdim=keepdim)


# The set and frame ops live in their own modules; lowering finds every op here by name.
from runtime.frames import (frame_basis, frame_centroid, frame_conditioning,  # noqa: E402,F401
                            frame_in, frame_out, frame_tile)
from runtime.sets import attention_pool, gather, masked_reduce, scatter_reduce, segment_reduce  # noqa: E402,F401
