"""The native frame kernels (runtime/frames.c): built once per machine with the system C compiler,
registered in every invc onnxruntime session.

invc writes each frame op as a call of an ONNX function in the domain invc.frames whose body is the
standard-op form, so every file runs anywhere; where these kernels are registered, onnxruntime
runs one kernel call instead of the body's ~110 nodes. Without a C compiler, or with
INVC_NATIVE_FRAMES=0, nothing is registered and the bodies run: the same results, slower.

The kernels are an optimisation, so every failure on the way to them (no compiler, a compiler
that fails, hangs or writes nothing, a cache that cannot be made, a cached library that does not
load) falls back to the bodies, with the reason in the line `register` returns.
"""
from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import shutil
import signal
import subprocess
from pathlib import Path

from common.cache import CacheError, private_cache
from common.errors import InvcError
from common.files import atomic_path

DOMAIN = "invc.frames"
SOURCE = Path(__file__).with_name("frames.c")
BODIES = "frame kernels: ONNX function bodies"
DISABLE = "INVC_NATIVE_FRAMES"  # "0": never build or register the kernels
FLAGS = ["-O3", "-shared", "-fPIC", "-std=c11", "-D_POSIX_C_SOURCE=200809L"]  # no -ffast-math: NaN must stay NaN
WIDTHS = {"f32": 32, "f64": 64}
BUILD_SECONDS = 120.0  # a compiler still running after this is stopped (a build takes a few seconds)


class BuildError(Exception):
    """The kernels could not be built; the message is the reason the bodies run."""


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
    try:
        path = cached_path(compiler)
        if not path.is_file():
            build(compiler, path)
    except (BuildError, CacheError, InvcError, OSError) as e:
        return None, f"{BODIES} ({e})"
    return path, f"frame kernels: native ({path})"


def cached_path(compiler: str) -> Path:
    """Where the library built from this source, compiler and flags lives in the private cache."""
    source = SOURCE.read_bytes()
    digest = hashlib.sha256(source + " ".join([compiler, *FLAGS]).encode()).hexdigest()[:16]
    return private_cache("native") / f"frames_{digest}.so"


def build(compiler: str, path: Path) -> None:
    """Build into a temporary file of this writer's own and rename it over `path`: a concurrent
    reader sees no library or a whole one, never a half-written one."""
    with atomic_path(path, "frame kernel library") as tmp:
        done = _compile([compiler, *FLAGS, "-o", str(tmp), str(SOURCE), "-lm", "-lpthread"])
        if done.returncode != 0:
            first = (done.stderr.strip().splitlines() or ["no message"])[0]
            raise BuildError(f"{SOURCE.name} did not build: {first}")
        if tmp.stat().st_size == 0:  # the temporary exists already, so "no file" reads as empty
            raise BuildError(f"{compiler} exited 0 but wrote no library")


def _compile(command: list[str]) -> subprocess.CompletedProcess:
    """Run the compiler in its own process group, so a hung one is stopped with all its children."""
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            errors="replace", start_new_session=True)
    try:
        out, err = proc.communicate(timeout=BUILD_SECONDS)
    except subprocess.TimeoutExpired:
        raise BuildError(f"{command[0]} did not finish building {SOURCE.name} in {BUILD_SECONDS:g} s") from None
    finally:
        if proc.returncode is None:  # timed out or interrupted: stop the build and reap it
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
    return subprocess.CompletedProcess(command, proc.returncode, out, err)


@functools.cache
def rebuilt(path: Path) -> tuple[Path | None, str]:
    """library() once more after removing a cached library onnxruntime could not load (truncated,
    damaged, or built for another machine): at most once per process."""
    try:
        path.unlink(missing_ok=True)
    except OSError as e:
        return None, f"{BODIES} (cannot remove {path}, which onnxruntime cannot load: {e.strerror})"
    library.cache_clear()
    return library()


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
    """Register the kernels in onnxruntime SessionOptions where they build and load; returns the line
    saying which frame kernels run and why. A library that does not load is built again, once."""
    path, line = library()
    if path is None or _load_error(options, path) is None:
        return line
    path, line = rebuilt(path)
    if path is None:
        return line
    error = _load_error(options, path)
    return line if error is None else f"{BODIES} (onnxruntime cannot load {path}, even rebuilt: {error})"


def _load_error(options, path: Path) -> str | None:
    """None once the library is registered, else onnxruntime's reason (its first line)."""
    try:
        options.register_custom_ops_library(str(path))
    except Exception as e:  # noqa: BLE001 - onnxruntime's errors derive from Exception only
        return (str(e).strip().splitlines() or [type(e).__name__])[0]
    return None
