"""Numeric checks of a compiled model against the torch module built from the same spec."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch


@dataclass(frozen=True)
class Agreement:
    provider: str
    shapes: str
    max_error: float


def compare_with_torch(spec: str | Path, onnx_path: str | Path, dims: dict, seed: int = 0,
                       model: str | None = None, **params) -> Agreement:
    """Run the ONNX file in onnxruntime and the spec's torch module on the same random inputs."""
    from compiler.commands import random_inputs
    from compiler.driver import build
    from runtime.session import Session

    session = Session(onnx_path)
    feeds = random_inputs(session, dims, seed)
    got = session.run(feeds)
    module = build(spec, model, seed, **params)
    with torch.no_grad():
        want = module(*(torch.from_numpy(feeds[i.name]) for i in session.inputs))
    want = want if isinstance(want, tuple) else (want,)
    error = max(float(np.max(np.abs(g - w.numpy()), initial=0.0)) for g, w in zip(got.values(), want))
    shapes = ", ".join(f"{k}{list(v.shape)}" for k, v in feeds.items())
    return Agreement(session.provider, shapes, error)
