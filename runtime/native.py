"""The native frame kernels (runtime/frames.c): built once per machine with the system C compiler,
registered in every invc onnxruntime session.

invc writes each frame op as a call of an ONNX function in the domain invc.frames whose body is the
standard-op form, so every file runs anywhere; where these kernels are registered, onnxruntime
runs one kernel call instead of the body's ~110 nodes. Without a C compiler, or with
INVC_NATIVE_FRAMES=0, nothing is registered and the bodies run: the same results, slower.
"""
from __future__ import annotations

import functools
import hashlib
import os
import shutil
import subprocess
from pathlib import Path

from common.cache import CacheError, private_cache

DOMAIN = "invc.frames"
SOURCE = Path(__file__).with_name("frames.c")
BODIES = "frame kernels: ONNX function bodies"
DISABLE = "INVC_NATIVE_FRAMES"  # "0": never build or register the kernels
FLAGS = ["-O3", "-shared", "-fPIC", "-std=c11", "-D_POSIX_C_SOURCE=200809L"]  # no -ffast-math: NaN must stay NaN
WIDTHS = {"f32": 32, "f64": 64}


def op_name(kind: str, dtype: str, masked: bool = False, proper: bool = False, canonical: bool = False,
            frames: int = 0, centered: bool = False) -> str | None:
    """The kernel's name, as runtime/frames.c spells it; None where it has none: other dtypes, and
    an unmasked centroid, which is one ReduceMean anyway. kind is centroid, basis or in."""
    if dtype not in WIDTHS or (kind == "centroid" and not masked):
        return None
    width = WIDTHS[dtype]
    if kind == "centroid":
        return f"FrameCentroidMasked{width}"
    if kind == "basis":
        return f"FrameBasis{'SO3' if proper else 'O3'}{'Canonical' * canonical}{'Masked' * masked}{width}"
    return f"FrameIn{frames}{'Centered' * centered}{width}"


@functools.cache
def library() -> tuple[Path | None, str]:
    """(the built library, or None; a line saying which frame kernels run and why)."""
    if os.environ.get(DISABLE) == "0":
        return None, f"{BODIES} ({DISABLE}=0)"
    compiler = os.environ.get("CC") or "cc"
    if shutil.which(compiler) is None:
        return None, f"{BODIES} (no C compiler {compiler!r} to build {SOURCE.name})"
    source = SOURCE.read_bytes()
    digest = hashlib.sha256(source + " ".join([compiler, *FLAGS]).encode()).hexdigest()[:16]
    try:
        path = private_cache("native") / f"frames_{digest}.so"
    except CacheError as e:
        return None, f"{BODIES} ({e})"
    if not path.is_file():
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        done = subprocess.run([compiler, *FLAGS, "-o", str(tmp), str(SOURCE), "-lm", "-lpthread"],
                              capture_output=True, text=True)
        if done.returncode != 0:
            tmp.unlink(missing_ok=True)
            first = (done.stderr.strip().splitlines() or ["no message"])[0]
            return None, f"{BODIES} ({SOURCE.name} did not build: {first})"
        os.replace(tmp, path)  # atomic: a concurrent build writes the same bytes
    return path, f"frame kernels: native ({path})"


def uses_frames(model) -> bool:
    """Whether an ONNX model (in memory, or a file) imports the frames' domain: only then are the
    kernels built and registered. A file onnx cannot parse says no here; loading it names the fault."""
    if not hasattr(model, "functions"):
        import onnx
        try:
            model = onnx.load(str(model), load_external_data=False)
        except Exception:  # noqa: BLE001 - a damaged or missing file is reported by the session
            return False
    return any(o.domain == DOMAIN for o in model.opset_import)


def register(options) -> str:
    """Register the kernels in onnxruntime SessionOptions where they build; returns library()'s line."""
    path, line = library()
    if path is None:
        return line
    try:
        options.register_custom_ops_library(str(path))
    except Exception as e:  # noqa: BLE001 - onnxruntime's errors derive from Exception only
        return f"{BODIES} (onnxruntime refused {path.name}: {e})"
    return line
