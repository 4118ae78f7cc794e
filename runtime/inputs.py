"""Checks of input values that both runtimes make, the onnxruntime Session and the torch module built
by compiler/lower.py, so the two refuse the same inputs with the same words. Shapes are tuples, values
numpy arrays; neither torch nor onnxruntime is imported to check them.

Empty batches and sets are refused: a symbolic dim of size 0 (B = 0, N = 0) would otherwise give
a traceback in one runtime and a wrongly shaped result in the other (frame averaging has no frame
of zero points). An empty set inside a batch is written with its mask (a row of false) or with
equal CSR offsets, and pools to 0.
"""
from __future__ import annotations

import numpy as np

class InputError(Exception):
    """Bad inputs for a model: a wrong name, shape or dtype, a missing file, a malformed argument."""
    exit_code = 2


def refuse_empty(module, args) -> None:
    """A forward pre-hook for the torch module of a spec: the Session's rule for empty inputs."""
    import torch  # only a torch module calls this hook
    if torch.compiler.is_compiling():  # an exporter tracing the module sees symbolic sizes, not inputs
        return
    for port, value in zip(module.meta["invc"].inputs, args):
        reason = empty_dim(port.name, port.type.shape, tuple(value.shape))
        if reason:
            raise InputError(reason)


EMPTY_HINT = ("an empty set is written with a mask that is false on its row (or equal CSR offsets), "
              "and pools to 0; a batch needs at least one row")


def empty_dim(name: str, declared: tuple, shape: tuple) -> str | None:
    """Why input `name` is refused for a zero-size dim, or None."""
    for axis, (want, got) in enumerate(zip(declared, shape)):
        if got == 0:
            label = f" ({want})" if isinstance(want, str) else ""
            return f"input {name!r}: dim {axis}{label} is 0; invc models do not run on empty batches or sets: {EMPTY_HINT}"
    return None


def bad_offsets(where: str, offsets: np.ndarray, rows: int | None, rows_label: str = "") -> str | None:
    """Why CSR offsets are refused, or None: they start at 0, never decrease and end at the row count
    (None: not known here). A bad offset would otherwise index rows that are not there, or
    silently drop some."""
    if offsets.size == 0 or offsets[0] != 0:
        return f"{where} must start at 0, got {offsets[:1].tolist() or 'nothing'}"
    drops = np.flatnonzero(np.diff(offsets) < 0)
    if drops.size:
        k = int(drops[0])
        return f"{where} must never decrease: offsets[{k + 1}] = {offsets[k + 1]} < offsets[{k}] = {offsets[k]}"
    if rows is not None and offsets[-1] != rows:
        return f"{where} must end at the row count {rows}{rows_label}, got {offsets[-1]}"
    return None


def out_of_range(name: str, ids: np.ndarray, vocab: int, rows: str = "the embedding table's {} rows") -> str | None:
    """Why token ids (or gathered positions) are refused, or None: each must index a row of the
    embedding's table (an element of the gathered axis). ONNX Gather would read -1 as the last row,
    and torch would fail deep inside the model."""
    if ids.size == 0:
        return None
    bad = np.flatnonzero((ids < 0) | (ids >= vocab))
    if not bad.size:
        return None
    where = np.unravel_index(bad[0], ids.shape)
    return (f"input {name!r}: id {ids[where]} at {list(map(int, where))} is outside [0, {vocab}) "
            f"({rows.format(vocab)}); {bad.size} of {ids.size} ids are out of range")
