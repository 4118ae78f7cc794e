"""Run an ONNX model with onnxruntime behind input checks whose messages name the input at fault.

Nothing in runtime/ imports dsl/ or compiler/, and torch only arrives as tensors callers pass in.
"""
from __future__ import annotations

import ast
import math
import os
import re
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import onnxruntime as ort
from onnxruntime.capi import onnxruntime_pybind11_state as _ort_errors

from common.dtypes import TABLE, from_ort, numpy_dtype
from runtime import native
from runtime.inputs import InputError, bad_offsets, empty_dim, out_of_range

CPU, CUDA = "CPUExecutionProvider", "CUDAExecutionProvider"
# invc's facts about its inputs, in the metadata of the files it writes (and covered by its stamp):
VOCAB_KEY = "invc.vocab."      # "invc.vocab.tokens" = "256": the rows of the table input `tokens` indexes
INDEX_KEY = "invc.index."      # "invc.index.senders" = "N,E": the dims (or sizes) `senders` indexes, all of them
OFFSETS_KEY = "invc.offsets."  # "invc.offsets.cuts" = "N": `cuts` holds CSR offsets over N rows
GUARD_KEY = "invc.guard."      # "invc.guard.<node>" = why a run that fails at that check node is refused


@dataclass(frozen=True)
class TensorInfo:
    """A model input or output; shape entries are ints, symbolic names (str) or None (unnamed)."""
    name: str
    dtype: np.dtype | None
    shape: tuple[int | str | None, ...]
    offsets: tuple[str, ...] = ()  # CSR offsets over this many rows (dims), as invc's metadata says

    def __str__(self) -> str:
        dtype = "?" if self.dtype is None else self.dtype.name
        return f"{self.name}: {dtype} {_fmt(self.shape)}"


def _fmt(shape) -> str:
    return "[" + ", ".join("?" if d is None else str(d) for d in shape) + "]"


def _info(arg) -> TensorInfo:
    dtype = from_ort(arg.type)
    return TensorInfo(arg.name, None if dtype is None else numpy_dtype(dtype), tuple(arg.shape))


def choose_providers(requested: str, available: list[str]) -> list[str]:
    """'auto' takes CUDA when this onnxruntime has it; 'cpu', 'cuda' or a full provider name pin one."""
    if requested == "auto":
        return [CUDA, CPU] if CUDA in available else [CPU]
    name = {"cpu": CPU, "cuda": CUDA}.get(requested, requested)
    if name not in available:
        raise InputError(f"execution provider {requested!r} is not available here; "
                         f"available: {', '.join(available)}")
    return [name] if name == CPU else [name, CPU]


# What onnxruntime raises for a file that is not a loadable model (they derive from Exception only).
_LOAD_ERRORS = (_ort_errors.InvalidProtobuf, _ort_errors.InvalidArgument, _ort_errors.InvalidGraph,
                _ort_errors.NoModel, _ort_errors.Fail, _ort_errors.NotImplemented)


# What onnxruntime raises when a loaded model fails to run: dims that disagree inside the graph, memory.
_RUN_ERRORS = (_ort_errors.Fail, _ort_errors.InvalidArgument, _ort_errors.RuntimeException,
               _ort_errors.NotImplemented, _ort_errors.EPFail, _ort_errors.EngineError)


def _quiet_run() -> ort.RunOptions:
    options = ort.RunOptions()
    options.log_severity_level = 4  # a failure is reported once, as RunFailed, not also in onnxruntime's log
    return options


_QUIET_RUN = _quiet_run()


def _run_failure(message: str) -> str:
    """onnxruntime's error in one line: the node that failed and why, without its source location."""
    node = re.search(r"while running (\S+) node\. Name:'([^']*)'", message)
    reason = message.partition("Status Message:")[2].strip() or message
    reason = re.sub(r"^\[ONNXRuntimeError\] : \d+ : \w+ : ", "", reason.splitlines()[0])  # its code
    reason = re.sub(r"^/\S+:\d+ [^(]*\([^)]*\)\s*", "", reason)  # file:line signature
    at = f" (at its {node[1]} node{' ' + repr(node[2]) if node[2] else ''})" if node else ""
    return f"onnxruntime could not run the model{at}: {reason}"


class RunFailed(Exception):
    """onnxruntime refused to run a model on inputs that passed Session.check; the message is its own.
    Not an InputError: for a model invc wrote, a failure here may be invc's bug."""
    exit_code = 2


def open_session(model, providers: list[str], options) -> ort.InferenceSession:
    if hasattr(model, "SerializeToString"):  # built in memory: a failure is a bug, shown in full
        return ort.InferenceSession(model.SerializeToString(), options, providers=providers)
    path = Path(model)
    if not path.exists():
        raise InputError(f"model file not found: {path}")
    if not path.is_file():
        raise InputError(f"model {path} is not a file; expected an .onnx file")
    try:
        session = ort.InferenceSession(str(path), options, providers=providers)
    except _LOAD_ERRORS as e:
        reason = str(e).rsplit(":", 1)[-1].strip()  # onnxruntime prefixes a code and the path
        raise InputError(f"cannot load model {path}: not a valid ONNX file ({reason})") from None
    return session


def _stamp_note(model) -> str | None:
    """Refuse a damaged invc file; a note (or None) for one that runs."""
    import onnx
    from runtime import stamp
    in_memory = hasattr(model, "SerializeToString")
    verdict = stamp.verify(model if in_memory else onnx.load(str(model)))
    label = "the in-memory model" if in_memory else str(model)
    if verdict == "unstamped":
        return f"note: {label} was not written by invc; its content and facts were not checked"
    if verdict:
        raise InputError(f"cannot load {label}: {verdict}")
    return None


class Session:
    """An onnxruntime session that checks names, ranks, static dims, dtypes and symbolic dims first."""

    def __init__(self, model, provider: str = "auto", native_frames: bool = True):
        providers = choose_providers(provider, ort.get_available_providers())
        options = ort.SessionOptions()
        # Which frame kernels run, and why; without them onnxruntime runs the ONNX function bodies.
        self.frames = native.uses_frames(model)
        self.kernels = native.register(options) if native_frames and self.frames else native.BODIES
        self._session = open_session(model, providers, options)
        self.note = _stamp_note(model)  # after open_session, which names a missing or invalid file
        # The provider actually bound: onnxruntime-gpu falls back to the CPU without CUDA libraries.
        self.provider: str = self._session.get_providers()[0]
        meta = self._session.get_modelmeta().custom_metadata_map
        facts = Facts(meta, [a.name for a in self._session.get_inputs()])
        # Token-id inputs and the table size each indexes; index inputs and the dims they pick from.
        self.vocab, self.index, self.guards = facts.vocab, facts.index, facts.guards
        self.inputs = [replace(_info(a), offsets=facts.offsets.get(a.name, ())) for a in self._session.get_inputs()]
        self.outputs = [_info(a) for a in self._session.get_outputs()]

    def run(self, inputs: dict | None = None, /, **kwargs) -> dict[str, np.ndarray]:
        feeds = {name: _to_numpy(v) for name, v in {**(inputs or {}), **kwargs}.items()}
        self.check(feeds)
        try:
            results = self._session.run(None, feeds, _QUIET_RUN)
        except _RUN_ERRORS as e:
            why = self.refusal(str(e))
            if why is not None:
                raise InputError(f"refused at run time by a check in the model: {why}") from None
            raise RunFailed(_run_failure(str(e))) from None
        except MemoryError:
            raise RunFailed("onnxruntime could not run the model: its outputs do not fit in memory") from None
        return {o.name: r for o, r in zip(self.outputs, results)}

    def refusal(self, error: str) -> str | None:
        """Why invc's check node that an onnxruntime error names refused the run (None: no such node)."""
        node = re.search(r"Name:'([^']*)'", error)
        return self.guards.get(node.group(1)) if node else None

    def id_bounds(self) -> dict[str, list[str]]:
        """For each input of ids, the sizes it indexes: a table's rows, the dims (or sizes) it picks from."""
        bounds: dict[str, list[str]] = {name: [str(rows)] for name, rows in self.vocab.items()}
        for name, dims in self.index.items():
            bounds.setdefault(name, []).extend(dims)
        return bounds

    def check(self, feeds: dict[str, np.ndarray]) -> None:
        expected = [i.name for i in self.inputs]
        unknown = [n for n in feeds if n not in expected]
        missing = [n for n in expected if n not in feeds]
        for kind, names in (("unknown", unknown), ("missing", missing)):
            if names:
                raise InputError(f"{kind} input {', '.join(map(repr, names))}; "
                                 f"the model's inputs are: {', '.join(expected)}")
        seen: dict[str, tuple[str, int, int]] = {}
        for info in self.inputs:
            _check_input(info, feeds[info.name], seen)
        for info in self.inputs:
            reason = empty_dim(info.name, info.shape, feeds[info.name].shape)
            if reason is None and info.name in self.vocab:
                reason = out_of_range(info.name, feeds[info.name], self.vocab[info.name])
            if reason is None and info.name in self.index:
                reason = _outside_dims(info.name, feeds[info.name], self.index[info.name], seen)
            if reason:
                raise InputError(reason)
        check_offsets(self.inputs, feeds, seen)


def _to_numpy(value) -> np.ndarray:
    if type(value).__module__.startswith("torch"):  # no torch import needed to accept its tensors
        value = value.detach().cpu().numpy()
    return np.ascontiguousarray(value)


def _check_input(info: TensorInfo, array: np.ndarray, seen: dict) -> None:
    """`seen` maps each symbolic dim to its first (input, axis, size), to catch N=5 here, N=7 there."""
    where = f"input {info.name!r}"
    if info.dtype is not None and array.dtype != info.dtype:  # else onnxruntime's own check, as RunFailed
        raise InputError(f"{where}: expected dtype {info.dtype.name}, got {array.dtype.name}")
    if array.ndim != len(info.shape):
        raise InputError(f"{where}: expected rank {len(info.shape)} {_fmt(info.shape)}, "
                         f"got rank {array.ndim} with shape {tuple(array.shape)}")
    for axis, (want, got) in enumerate(zip(info.shape, array.shape)):
        if isinstance(want, int) and want != got:
            raise InputError(f"{where}: dim {axis} must be {want} (shape {_fmt(info.shape)}), "
                             f"got {got} (shape {tuple(array.shape)})")
        if isinstance(want, str):
            first, axis0, size = seen.setdefault(want, (info.name, axis, got))
            if size != got:
                raise InputError(f"symbolic dim {want!r} is {size} in input {first!r} (dim {axis0}) "
                                 f"but {got} in {where} (dim {axis})")


class Facts:
    """invc's facts about a model's inputs, read from its metadata (the keys above). A malformed entry
    refuses the file: a fact that cannot be read must not silently turn its check off."""

    def __init__(self, meta: dict[str, str], inputs: list[str]):
        self.vocab = {n: _count(k, v) for n, k, v in _entries(meta, VOCAB_KEY, inputs)}
        self.index = {n: _dims(k, v) for n, k, v in _entries(meta, INDEX_KEY, inputs)}
        self.offsets = {n: tuple(_dims(k, v)) for n, k, v in _entries(meta, OFFSETS_KEY, inputs)}
        self.guards = {k[len(GUARD_KEY):]: v for k, v in meta.items() if k.startswith(GUARD_KEY)}


def _entries(meta: dict[str, str], prefix: str, inputs: list[str]):
    for key, value in sorted(meta.items()):
        if key.startswith(prefix):
            name = key[len(prefix):]
            if name not in inputs:
                raise InputError(f"metadata {key!r} names no input of the model; its inputs are: {', '.join(inputs)}")
            yield name, key, value


def _count(key: str, value: str) -> int:
    if not (value.isdecimal() and value.isascii() and 0 < int(value) < 2 ** 63):
        raise InputError(f"metadata {key!r} = {value[:40]!r} is not a row count (a whole number above 0)")
    return int(value)


def _dims(key: str, value: str) -> list[str]:
    """Comma-separated dims: sizes, symbolic names or their sums and products (N, 8*N, 3*(K-1))."""
    dims = value.split(",")
    if not all(len(d) <= 200 and _dim_tree(d) is not None for d in dims):
        raise InputError(f"metadata {key!r} = {value[:40]!r} is not a list of dims (such as N or 8*N)")
    return dims


def _dim_tree(dim: str) -> ast.expr | None:
    """The parsed dim expression, or None when it is not one: names, whole numbers, + - * and
    parentheses, nothing else."""
    try:
        tree = ast.parse(dim, mode="eval").body
    except SyntaxError:
        return None
    allowed = (ast.BinOp, ast.Add, ast.Sub, ast.Mult, ast.Name, ast.Load, ast.Constant)
    if all(isinstance(n, allowed) for n in ast.walk(tree)) and all(
            type(n.value) is int for n in ast.walk(tree) if isinstance(n, ast.Constant)):
        return tree
    return None


def dim_size(dim: str, sizes: dict[str, int]) -> int | None:
    """The size of a dim expression (N, 8*N, 3*(K-1)) from the symbolic dims' sizes; None when one
    of its names has no size, or it is no dim expression."""
    def value(node) -> int | None:
        if isinstance(node, ast.Constant):
            return node.value
        if isinstance(node, ast.Name):
            return sizes.get(node.id)
        left, right = value(node.left), value(node.right)
        if left is None or right is None:
            return None
        return {ast.Add: left + right, ast.Sub: left - right, ast.Mult: left * right}[type(node.op)]
    tree = _dim_tree(dim)
    return None if tree is None else value(tree)


def _outside_dims(name: str, ids: np.ndarray, dims: list[str], seen: dict) -> str | None:
    """Why index input `name` is refused: an id outside any of the dims it picks from (the smallest
    bounds them all)."""
    sizes = {d: size for d, (_, _, size) in seen.items()}
    known = [(s, d) for d in dims if (s := dim_size(d, sizes)) is not None]
    if not known:
        return None
    size, dim = min(known)
    return out_of_range(name, ids, size, f"the {{}} elements of dim {dim}")


def is_offsets(info: TensorInfo) -> bool:
    """CSR offsets of a ragged batch, as invc's metadata records them (never guessed from a name)."""
    return bool(info.offsets)


def check_offsets(inputs: list[TensorInfo], feeds: dict[str, np.ndarray], seen: dict) -> None:
    """Offsets start at 0, never decrease and end at the row count, or the run is refused: a bad
    offset would otherwise index rows that are not there, or silently drop some. The row count is
    the dim invc recorded (rows the model computes, like gathered ones, have one too); the model's
    own check at run time stands behind it."""
    sizes = {d: size for d, (_, _, size) in seen.items()}
    for info in filter(is_offsets, inputs):
        where = f"input {info.name!r} (CSR offsets, S+1 entries)"
        for dim in info.offsets:
            reason = bad_offsets(where, feeds[info.name], dim_size(dim, sizes), f" (dim {dim})")
            if reason:
                raise InputError(reason)


_MEMORY = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")  # bytes of this machine's memory


def random_inputs(inputs: list[TensorInfo], dims: dict, seed: int = 0, default: int | None = None,
                  bounds: dict[str, list[str]] | None = None) -> dict:
    """Random feeds that pass `Session.check`: Gaussian floats, ints in [0, 2) or below the least of
    their `bounds` (Session.id_bounds), masks 80% true and valid CSR offsets. A symbolic dim is sized
    from `dims`, else `default` (None: refused)."""
    rng = np.random.default_rng(seed)
    feeds = {}
    for info in inputs:
        shape = _random_shape(info, dims, default)
        sizes = [_size(b, dims, default) for b in (bounds or {}).get(info.name, [])]
        high = max(1, min([2, *filter(None, sizes)]))  # a table of 0 rows is for Session.check to refuse
        try:
            if math.prod(shape) * info.dtype.itemsize > _MEMORY:  # refused, not left to the kernel's overcommit
                raise MemoryError
            feeds[info.name] = _random_array(rng, shape, info.dtype, high)
        except (MemoryError, ValueError):  # ValueError: numpy's "array is too big"
            raise InputError(f"a random input {info.name!r} of shape {shape} does not fit in memory") from None
    sizes = {d: got for info in inputs for d, got in zip(info.shape, feeds[info.name].shape) if isinstance(d, str)}
    for info in filter(is_offsets, inputs):  # random integers would be refused as offsets
        count = dim_size(info.offsets[0], sizes) or 0
        feeds[info.name] = random_offsets(rng, feeds[info.name].shape[0], count, info.dtype)
    return feeds


FEEDABLE = [numpy_dtype(name).name for name in TABLE]


def _random_shape(info: TensorInfo, dims: dict, default: int | None) -> list[int]:
    if info.dtype is None:
        raise InputError(f"input {info.name!r}: its element type is none of those --random draws "
                         f"({', '.join(FEEDABLE)}); give that input with --input NAME=FILE.npy")
    for axis, dim in enumerate(info.shape):
        if dim is None and default is None:
            raise InputError(f"dim {axis} of input {info.name!r} has neither a name nor a size in the model, "
                             "so --random cannot size it; give that input with --input NAME=FILE.npy")
        if isinstance(dim, str) and dim not in dims and default is None:
            raise InputError(f"no size for dim {dim!r} of input {info.name!r}; give one, e.g. {dim}=4")
    return [d if isinstance(d, int) else dims.get(d, default) for d in info.shape]


def _size(bound: str, dims: dict, default: int | None) -> int | None:
    """A recorded bound: a size ("256"), a dim ("N") or an expression of dims ("B*N"), sized as the
    feeds are; None if unknown."""
    sizes = {name: dims.get(name, default) for name in re.findall(r"[A-Za-z_]\w*", bound)}
    return dim_size(bound, {name: size for name, size in sizes.items() if size is not None})


def _random_array(rng: np.random.Generator, shape: list[int], dtype, high: int = 2) -> np.ndarray:
    if dtype == np.bool_:
        return rng.random(shape) < 0.8
    if np.issubdtype(dtype, np.integer):
        return rng.integers(0, high, shape).astype(dtype)
    return rng.standard_normal(shape).astype(dtype)


def random_offsets(rng: np.random.Generator, length: int, rows: int, dtype) -> np.ndarray:
    """Valid CSR offsets: `length - 1` sets over `rows` rows, some possibly empty."""
    cuts = np.sort(rng.integers(0, rows + 1, max(length - 2, 0)))
    return np.concatenate([[0], cuts, [rows]])[:length].astype(dtype)


_USAGE = "expected NAME=FILE.npy, NAME=FILE.npz (its array NAME) or FILE.npz (all its arrays)"


def load_inputs(specs: list[str]) -> dict[str, np.ndarray]:
    """Parse CLI input arguments into named arrays."""
    arrays: dict[str, np.ndarray] = {}
    for spec in specs:
        for name, array in _load_arg(spec).items():
            if name in arrays:
                raise InputError(f"input {name!r} is given twice (again in {spec!r})")
            arrays[name] = array
    return arrays


def _load_arg(spec: str) -> dict[str, np.ndarray]:
    name, sep, path = spec.partition("=")
    if not sep:
        name, path = "", spec
    path = Path(path)
    if (sep and not name) or path.suffix not in (".npy", ".npz") or (not sep and path.suffix != ".npz"):
        raise InputError(f"malformed input argument {spec!r}: {_USAGE}")
    arrays = _read(path)
    if not name:
        return arrays
    if path.suffix == ".npy":
        return {name: arrays[""]}
    if name not in arrays:
        raise InputError(f"{path} holds no array {name!r}; it holds: {', '.join(arrays)}")
    return {name: arrays[name]}


def _read(path: Path) -> dict[str, np.ndarray]:
    """The arrays in a .npy (under the key "") or .npz file."""
    if not path.is_file():
        raise InputError(f"input file not found: {path}")
    try:
        # A .npy is mapped, not read: a header claiming more data than the file holds (terabytes, say)
        # is refused by the mapping instead of allocating it first.
        loaded = np.load(path, mmap_mode="r", allow_pickle=False)
        if isinstance(loaded, np.ndarray):
            return {"": np.array(loaded)}
        with loaded:
            return {k: loaded[k] for k in loaded.files}
    except (OSError, ValueError) as e:
        raise InputError(f"cannot read input file {path}: {e}") from e
    except MemoryError:
        raise InputError(f"cannot read input file {path}: its arrays do not fit in memory") from None
