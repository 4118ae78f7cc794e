"""Launcher checks shared by every Triton module invc writes: each error names the argument at fault.

`invc compile --target triton` copies this file's body verbatim into the module it writes, so
it imports only torch and triton, and the runtime custom ops import it from here.
"""
import os

import torch

class LaunchError(ValueError):
    """Inputs a launcher refuses: a wrong shape, dtype or device, or malformed set offsets."""


def interpreting() -> bool:
    """True under TRITON_INTERPRET=1, where kernels run on CPU tensors through numpy."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def check_device(name: str, t: torch.Tensor) -> None:
    if t.device.type != "cuda" and not interpreting():
        raise LaunchError(f"{name} is a {t.device.type} tensor, but the Triton kernels run on CUDA "
                          "tensors; move it with .cuda(), or set TRITON_INTERPRET=1 to run the "
                          "kernels on the CPU through the Triton interpreter")


def check_tensor(name: str, t, dtype: torch.dtype, shape: tuple) -> None:
    """`shape` entries are ints, or None where any size goes."""
    if not isinstance(t, torch.Tensor):
        raise LaunchError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype != dtype:
        raise LaunchError(f"{name} must be {dtype}, got {t.dtype}")
    if t.dim() != len(shape) or any(w is not None and w != g for w, g in zip(shape, t.shape)):
        want = ", ".join("?" if w is None else str(w) for w in shape)
        raise LaunchError(f"{name} must have shape [{want}], got {list(t.shape)}")
    check_device(name, t)


def check_inputs(signature: dict, tensors: dict) -> None:
    """Check named inputs against {name: (torch dtype, shape)}: a str dim is symbolic, and a named one
    (B, not N*4) must have one size across inputs; all inputs share one device."""
    sizes, devices = {}, {}
    for name, (dtype, shape) in signature.items():
        t = tensors[name]
        check_tensor(f"input {name!r}", t, dtype, tuple(None if isinstance(d, str) else d for d in shape))
        devices[name] = t.device
        for axis, (want, got) in enumerate(zip(shape, t.shape)):
            if isinstance(want, str) and want.isidentifier() and sizes.setdefault(want, got) != got:
                raise LaunchError(f"input {name!r} has shape {list(t.shape)}: dim {axis} is {want}, "
                                  f"which the other inputs set to {sizes[want]}")
    if len(set(devices.values())) > 1:
        raise LaunchError(f"inputs are on different devices: {devices}")


def check_offsets(offsets: torch.Tensor, rows: int) -> None:
    """CSR offsets of ragged sets: int, starting at 0, never decreasing, ending at `rows`."""
    if offsets.dim() != 1 or offsets.dtype not in (torch.int32, torch.int64) or len(offsets) == 0:
        raise LaunchError(f"offsets must be a non-empty 1-d int32/int64 tensor, got "
                          f"{offsets.dtype} of shape {list(offsets.shape)}")
    if len(offsets) > 1 and bool((offsets[1:] < offsets[:-1]).any()):
        at = int((offsets[1:] < offsets[:-1]).nonzero()[0, 0])
        raise LaunchError(f"offsets must never decrease: offsets[{at}] = {int(offsets[at])} > "
                          f"offsets[{at + 1}] = {int(offsets[at + 1])}")
    first, last = int(offsets[0]), int(offsets[-1])
    if first != 0 or last != rows:
        raise LaunchError(f"offsets must start at 0 and end at the number of elements ({rows}), "
                          f"got {first} ... {last}")


def unbalanced(offsets: torch.Tensor, chunk_rows: int) -> bool:
    """Whether a few long segments dominate, so one program per segment would leave most of the
    GPU idle while those run; then the atomic variant splits them into chunks."""
    lengths = offsets[1:] - offsets[:-1]
    if len(lengths) == 0:
        return False
    longest, mean = int(lengths.max()), float(lengths.float().mean())
    return longest >= 4 * chunk_rows and longest > 8 * mean


def chunk_table(offsets: torch.Tensor, chunk_rows: int) -> tuple:
    """(segment, first row) of every chunk of at most `chunk_rows` rows; empty segments have none."""
    lengths = offsets[1:] - offsets[:-1]
    chunks = (lengths + chunk_rows - 1) // chunk_rows
    segment = torch.repeat_interleave(torch.arange(len(lengths), device=offsets.device), chunks)
    first_chunk = torch.cumsum(chunks, 0) - chunks
    index = torch.arange(len(segment), device=offsets.device) - first_chunk[segment]
    return segment, offsets[:-1][segment] + index * chunk_rows
