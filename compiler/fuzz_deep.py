"""The spec fuzzer's deep stage: well-typed models drawn over the whole op vocabulary, compiled to
ONNX and run in torch and onnxruntime (through invc's Session) on valid, empty and out-of-range
inputs.

compiler/fuzz.py stops at the checker; this stage goes on, because what breaks past it is a file
onnxruntime cannot load, two runtimes that disagree, or a bad index that runs silently. A case
fails when:
  - anything other than a SpecError escapes parse, check, lowering or emit;
  - the written file is invalid (onnx.checker, or onnxruntime cannot load it);
  - on valid inputs (now and then a NaN or an infinity among them), torch and onnxruntime disagree beyond the dtype's tolerance (NaN or inf on one
    side only, another shape or dtype included), or one refuses what the other runs;
  - an empty batch (a symbolic dim of 0) or an out-of-range input (an id outside what it indexes,
    CSR offsets that do not start at 0, decrease, or miss the row count) is not refused by the
    Session with a one-line InputError (from its own checks, or from the model's check nodes).

    case = draw(random.Random(seed))              # a DeepCase: spec text + what each input means
    result = run(case, seed)                      # a Result: status "ok" | "refused" | a failure

The drawing knows what each integer input indexes (a dim, a table, rows for CSR offsets), so the
valid and out-of-range inputs are made from the spec's own meaning, not from what the compiler
recorded: ids and offsets under any name, ids that are computed (flattened, concatenated,
transposed, shifted by a constant), over rows that are themselves computed. benchmarks/fuzz_deep.py
runs 10,000 and more; tests/test_fuzz_deep.py a CI-sized batch.
"""
from __future__ import annotations

import dataclasses
import math
import random
import re
import tempfile
import traceback
from dataclasses import dataclass, field
from pathlib import Path

FLOATS = ("f32", "f32", "f32", "f64", "f16")
INTS = ("i64", "i64", "i32")
SYMBOLS = ("B", "N", "R", "E", "S")
NAMES = ("ids", "cuts", "offsets", "senders", "index", "tok", "pos", "segments", "rows", "edges", "x", "k")
TOLERANCE = {"f16": 2e-2, "f32": 2e-4, "f64": 1e-9}  # relative to the output's scale
FAILURES = ("crash", "invalid file", "disagree", "refused valid", "ran invalid")


@dataclass(frozen=True)
class Tensor:
    name: str
    dims: tuple        # ints, symbolic names, or expressions of them ("2*E") as the drawing made them
    dtype: str


@dataclass
class IndexUse:
    """An integer input read as indices: valid values are [0, bound - shift) after `shift` is added."""
    bound: object      # a dim (int or expression) or a table size
    shift: int = 0


@dataclass
class DeepCase:
    """A drawn spec and the meaning of its inputs."""
    inputs: list = field(default_factory=list)       # Tensor
    roles: dict = field(default_factory=dict)        # input name -> "is ..." clause
    lines: list = field(default_factory=list)        # statements "name = expr"
    defs: list = field(default_factory=list)
    scope: list = field(default_factory=list)        # Tensor, inputs and made
    index: dict = field(default_factory=dict)        # input name -> [IndexUse]
    offsets: dict = field(default_factory=dict)      # input name -> the row count (a dim) it must end at
    masks: dict = field(default_factory=dict)        # dims -> bool input over them
    count: int = 0
    symmetry: set = field(default_factory=set)       # dims an index role names: S(N) is declared
    floats: tuple = FLOATS                           # the dtypes drawn
    ints: tuple = INTS

    def text(self) -> str:
        made = [line.split(" = ", 1)[0].strip() for line in self.lines]
        ins = [f"  input {t.name}: {t.dtype}[{', '.join(map(str, t.dims))}]{self.roles.get(t.name, '')}"
               for t in self.inputs]
        outs = [f"  output {n}" for n in dict.fromkeys(made)] or [f"  output {self.inputs[0].name}"]
        head = [f"  symmetry {', '.join(f'S({d})' for d in sorted(self.symmetry))}"] if self.symmetry else []
        return "\n".join([*self.defs, "model deep() {", *head, *ins, *self.lines, *outs, "}", ""])


# -- drawing -----------------------------------------------------------------------------------------

def draw(rng: random.Random, floats: tuple = FLOATS, ints: tuple = INTS) -> DeepCase:
    """A spec of 1-6 statements over 1-3 float inputs and the integer inputs its ops ask for, of
    the dtypes given (narrower ones reach past a dtype that fails everywhere)."""
    case = DeepCase(floats=floats, ints=ints)
    for _ in range(rng.randint(1, 3)):
        _float_input(case, rng)
    steps = rng.randint(1, 6)
    for _ in range(steps * 4):
        if len(case.lines) >= steps:
            break
        rng.choice(VOCABULARY)(case, rng)
    return case


def _fresh(case: DeepCase, rng, base: str | None = None) -> str:
    case.count += 1
    return f"{base or rng.choice(NAMES)}{case.count}"


def _input(case: DeepCase, rng, dims: tuple, dtype: str, base: str | None = None) -> Tensor:
    t = Tensor(_fresh(case, rng, base), dims, dtype)
    case.inputs.append(t)
    if dtype[0] == "f":
        case.scope.append(t)
    return t


def _float_input(case: DeepCase, rng) -> Tensor:
    """Leading dims mostly symbolic, the last mostly static (weights are sized by it); a static 0
    now and then, which the checker refuses."""
    lead = rng.sample(SYMBOLS, rng.choice([0, 1, 1, 2, 2]))
    last = rng.choice(SYMBOLS) if rng.random() < 0.15 else rng.choice([1, 2, 3, 3]) if rng.random() < 0.97 else 0
    dims = tuple(lead) + (last,)
    return _input(case, rng, dims, rng.choice(case.floats), "x" if rng.random() < 0.5 else None)


def bind(case: DeepCase, rng, expr: str, dims: tuple, dtype: str) -> Tensor:
    t = Tensor(_fresh(case, rng, "t"), tuple(dims), dtype)
    case.lines.append(f"  {t.name} = {expr}")
    case.scope.append(t)
    return t


def pick(case: DeepCase, rng, where=lambda t: True) -> Tensor | None:
    found = [t for t in case.scope if t.dtype[0] == "f" and where(t)]
    return rng.choice(found[-3:] if rng.random() < 0.5 else found) if found else None


def _index_input(case: DeepCase, rng, length, bound) -> str | None:
    """An id vector of `length` elements, valid in [0, bound): an input under any name, read as is
    or computed from one (flattened pairs, two halves concatenated, a transposed table, a shift)."""
    dtype, how = rng.choice(case.ints), rng.choice(["plain", "plain", "computed", "shift"])
    if isinstance(length, str) and length.startswith("2*"):  # twice a dim: flattened pairs, or halves
        t = _input(case, rng, (length[2:], 2) if rng.random() < 0.5 else (length[2:],), dtype)
        expr = f"flatten({t.name})" if len(t.dims) == 2 else f"concat({t.name}, {t.name}, axis=0)"
    elif not (isinstance(length, int) or length in SYMBOLS):
        return None  # a computed length no input can be declared with
    elif how == "computed" and length in SYMBOLS:  # a transposed [1, length] table, flattened
        t = _input(case, rng, (1, length), dtype)
        expr = f"flatten(transpose({t.name}, a=0, b=1))"
    elif how == "shift" and bound in SYMBOLS:  # sizes 3 to 5: a shifted id keeps a valid value
        t = _input(case, rng, (length,), dtype)
        shift = rng.choice([1, 2])
        case.index.setdefault(t.name, []).append(IndexUse(bound, shift))
        return bind(case, rng, f"{t.name} + {shift}", (length,), dtype).name
    else:
        t = _input(case, rng, (length,), dtype)
        expr = t.name
    if rng.random() < 0.3 and isinstance(bound, str) and bound in SYMBOLS and t.dims == (length,):
        case.roles[t.name] = f" is index({bound})"
        case.symmetry.add(bound)
    case.index.setdefault(t.name, []).append(IndexUse(bound))
    return expr if expr == t.name else bind(case, rng, expr, (length,), dtype).name


def _static_last(t: Tensor) -> bool:
    return isinstance(t.dims[-1], int)


def linear(case, rng):
    x = pick(case, rng, _static_last)
    if x:
        out = rng.choice([1, 2, 3, 4])
        return bind(case, rng, f"linear({x.name}, {out}{', bias=false' if rng.random() < 0.3 else ''})",
                    x.dims[:-1] + (out,), x.dtype)


def mlp(case, rng):
    x = pick(case, rng, _static_last)
    if x:
        widths = [rng.choice([2, 4]), rng.choice([1, 3])]
        act = rng.choice(["relu", "silu", "tanh", "gelu"])
        return bind(case, rng, f'mlp({x.name}, widths={widths}, act="{act}")', x.dims[:-1] + (widths[-1],), x.dtype)


def norm(case, rng):
    x = pick(case, rng, _static_last)
    if x:
        kind = rng.choice(["layernorm", "rmsnorm"])
        return bind(case, rng, f"{kind}({x.name}{', affine=false' if rng.random() < 0.4 else ''})", x.dims, x.dtype)


def elementwise(case, rng):
    x = pick(case, rng)
    if x:
        form = rng.choice(["relu", "silu", "tanh", "sigmoid", "gelu", "softmax", "-", "const"])
        expr = {"softmax": f"softmax({x.name}, axis={rng.randrange(-len(x.dims), len(x.dims))})",
                "-": f"-{x.name}", "const": f"{x.name} {rng.choice('+-*/')} {rng.choice(['0.5', '2', '1.5'])}"
                }.get(form, f"{form}({x.name})")
        return bind(case, rng, expr, x.dims, x.dtype)


def arithmetic(case, rng):
    x = pick(case, rng)
    y = x and pick(case, rng, lambda t: t.dims == x.dims and t.dtype == x.dtype)
    if y:
        op = rng.choice(["+", "-", "*"])
        return bind(case, rng, f"{x.name} {op} {y.name}", x.dims, x.dtype)


def matmul(case, rng):
    x = pick(case, rng, lambda t: len(t.dims) >= 2)
    if x:
        return bind(case, rng, f"{x.name} @ transpose({x.name}, a=-2, b=-1)", x.dims[:-1] + (x.dims[-2],), x.dtype)


def reshape_ops(case, rng):
    x = pick(case, rng, lambda t: len(t.dims) >= 2)
    if not x:
        return None
    if rng.random() < 0.5:
        a, b = rng.sample(range(len(x.dims)), 2)
        dims = list(x.dims)
        dims[a], dims[b] = dims[b], dims[a]
        return bind(case, rng, f"transpose({x.name}, a={a}, b={b})", dims, x.dtype)
    k = rng.randrange(len(x.dims) + 1)
    return bind(case, rng, f"unsqueeze({x.name}, {k})", x.dims[:k] + (1,) + x.dims[k:], x.dtype)


def join(case, rng):
    """concat along the last axis (or any, of a tensor with itself), or flatten two axes into one."""
    x = pick(case, rng, lambda t: len(t.dims) >= 2)
    if not x:
        return None
    ys = [t for t in case.scope if t.dtype == x.dtype and t.dims[:-1] == x.dims[:-1] and _static_last(t)]
    if _static_last(x) and ys and rng.random() < 0.5:
        y = rng.choice(ys)
        return bind(case, rng, f"concat({x.name}, {y.name})", x.dims[:-1] + (x.dims[-1] + y.dims[-1],), x.dtype)
    k = rng.randrange(len(x.dims) - 1)
    a, b = x.dims[k], x.dims[k + 1]
    merged = a * b if isinstance(a, int) and isinstance(b, int) else f"({a})*({b})"  # K-1 times 3 is not K-1*3
    return bind(case, rng, f"flatten({x.name}, start={k}, end={k + 1})", x.dims[:k] + (merged,) + x.dims[k + 2:], x.dtype)


def reduce(case, rng):
    x = pick(case, rng, lambda t: len(t.dims) >= 2)
    if x:
        k, keep = rng.randrange(len(x.dims)), rng.random() < 0.4
        how = rng.choice(["sum", "mean", "max", "min"])
        dims = x.dims[:k] + ((1,) if keep else ()) + x.dims[k + 1:]
        return bind(case, rng, f"{how}({x.name}, axis={k}{', keepdim=true' if keep else ''})", dims, x.dtype)


def pool(case, rng):
    """A dense pool over an axis, masked by a bool input over the dims up to it (so sets may be empty)."""
    x = pick(case, rng, lambda t: len(t.dims) >= 2)
    if not x:
        return None
    k = rng.randrange(1, len(x.dims))
    extra = ""
    if rng.random() < 0.7:
        over = x.dims[:k + 1]
        mask = case.masks.get(over) or _input(case, rng, over, "bool", "m")
        case.masks[over] = mask
        extra = f", mask={mask.name}"
    how = rng.choice(["sum", "mean", "max", "min"])
    return bind(case, rng, f'pool({x.name}, axis={k}, kind="{how}"{extra})', x.dims[:k] + x.dims[k + 1:], x.dtype)


def attention(case, rng):
    x = pick(case, rng, lambda t: len(t.dims) == 3 and isinstance(t.dims[-1], int))
    if not x:
        return None
    extra = ""
    if rng.random() < 0.5:
        mask = case.masks.get(x.dims[:2]) or _input(case, rng, x.dims[:2], "bool", "m")
        case.masks[x.dims[:2]] = mask
        extra = f", mask={mask.name}"
    if rng.random() < 0.5:
        return bind(case, rng, f"attention_pool({x.name}, axis=1{extra})", x.dims[:1] + x.dims[2:], x.dtype)
    return bind(case, rng, f"attention({x.name}{extra}{', causal=true' if rng.random() < 0.3 else ''})",
                x.dims, x.dtype)


def embedding(case, rng):
    length = rng.choice(["B", "N", "E", "2*E"])
    table = rng.choice([1, 2, 5])
    ids = _index_input(case, rng, length, table)
    dim = rng.choice([2, 3])
    if ids is None:
        return None
    return bind(case, rng, f"embedding({ids}, {table}, {dim})", (length, dim), "f32")


def gather(case, rng):
    """Rows (or elements along any axis) picked by ids; the picked axis may itself be computed."""
    x = pick(case, rng)
    if x:
        k = rng.randrange(len(x.dims))
        length = rng.choice(["E", "2*E", "R"])
        ids = _index_input(case, rng, length, x.dims[k])
        if ids is None:
            return None
        axis = x.dims[k] if x.dims[k] in SYMBOLS and x.dims.count(x.dims[k]) == 1 and rng.random() < 0.5 else k
        return bind(case, rng, f"gather({x.name}, {ids}, axis={axis})", x.dims[:k] + (length,) + x.dims[k + 1:], x.dtype)


def scatter_pool(case, rng):
    x = pick(case, rng)
    like = x and pick(case, rng)
    if like:
        ids = _index_input(case, rng, x.dims[0], like.dims[0])
        if ids is None:
            return None
        how = rng.choice(["sum", "mean", "max", "min"])
        return bind(case, rng, f'scatter_pool({x.name}, {ids}, like={like.name}, kind="{how}")',
                    (like.dims[0],) + x.dims[1:], x.dtype)


def segment_pool(case, rng):
    x = pick(case, rng)
    if x:
        offsets = _input(case, rng, (rng.choice(["K", 2, 3]),), rng.choice(case.ints))
        case.offsets[offsets.name] = x.dims[0]
        how = rng.choice(["sum", "mean", "max", "min"])
        det = ", deterministic=true" if rng.random() < 0.3 else ""
        length = offsets.dims[0] - 1 if isinstance(offsets.dims[0], int) else "K-1"
        return bind(case, rng, f'segment_pool({x.name}, {offsets.name}, kind="{how}"{det})', (length,) + x.dims[1:], x.dtype)


def frame(case, rng):
    """frame_average around a small backbone, on a cloud input of its own."""
    dtype = rng.choice([d for d in case.floats if d != "f16"] or ["f32"])
    pos = _input(case, rng, ("B", "N", 3), dtype, "pos")
    mask = case.masks.get(("B", "N")) if rng.random() < 0.5 else None
    out = rng.choice(["invariant", "vector", "position"])
    name = f"bb{len(case.defs)}"
    params = "a" + (", m" if mask else "")
    pooled = f'pool(h, axis=1, kind="{rng.choice(["sum", "mean", "max"])}"{", mask=m" if mask else ""})'
    body = f"linear({pooled}, 2)" if out == "invariant" else "a * 0.5 + linear(h, 3)"
    case.defs.append(f"def {name}({params}) {{\n  h = silu(linear(a, 4))\n  return {body}\n}}")
    kw = f'group="{rng.choice(["E(3)", "O(3)", "SE(3)", "SO(3)"])}", out="{out}", roles=["position"]'
    kw += f", mask={mask.name}" if mask else ""
    kw += ", canonical=true" if rng.random() < 0.3 else ""
    dims = ("B", 2) if out == "invariant" else ("B", "N", 3)
    return bind(case, rng, f"frame_average({name}, [{pos.name}], {kw})", dims, dtype)


VOCABULARY = [linear, mlp, norm, elementwise, elementwise, arithmetic, matmul, reshape_ops, join, reduce, pool,
              attention, embedding, gather, gather, scatter_pool, scatter_pool, segment_pool, segment_pool, frame]


# -- inputs ------------------------------------------------------------------------------------------

def size(dim, sizes: dict) -> int:
    """A dim's size: an int, a symbol, or an expression of symbols the drawing wrote ("2*E", "K-1")."""
    return dim if isinstance(dim, int) else int(eval(dim, {"__builtins__": {}}, sizes))  # noqa: S307 - our own text


def valid_inputs(case: DeepCase, rng: random.Random) -> tuple[dict, dict]:
    """(feeds, sizes): Gaussian floats, masks with some empty sets, ids in range, CSR offsets with
    some empty sets; every symbolic dim 3 to 5, so a shifted id always has a valid value."""
    import numpy as np
    sizes = {s: rng.randint(3, 5) for s in (*SYMBOLS, "K")}
    while any(size(rows, sizes) < 0 for rows in case.offsets.values()):  # segment_pools nested deeper than K
        sizes = {s: n + 3 for s, n in sizes.items()}
    gen = np.random.default_rng(rng.getrandbits(32))
    feeds = {}
    for t in case.inputs:
        shape = [size(d, sizes) for d in t.dims]
        if t.name in case.offsets:
            rows = size(case.offsets[t.name], sizes)
            cuts = np.sort(gen.integers(0, rows + 1, max(shape[0] - 2, 0)))
            feeds[t.name] = np.concatenate([[0], cuts, [rows]])[:shape[0]].astype(t.dtype.replace("i", "int"))
        elif t.name in case.index:
            feeds[t.name] = gen.integers(0, valid_end(case, t.name, sizes), shape).astype(t.dtype.replace("i", "int"))
        elif t.dtype == "bool":
            mask = gen.random(shape) < 0.7
            if mask.ndim >= 2 and rng.random() < 0.5:
                mask[0] = False  # an empty set
            feeds[t.name] = mask
        else:
            x = gen.standard_normal(shape)
            if x.size and rng.random() < 0.15:  # NaN must stay where it is in both, masked out or not
                x.flat[rng.randrange(x.size)] = rng.choice([math.nan, math.inf, -math.inf])
            feeds[t.name] = x.astype({"f16": np.float16, "f32": np.float32, "f64": np.float64}[t.dtype])
    return feeds, sizes


def valid_end(case: DeepCase, name: str, sizes: dict) -> int:
    """The end of the range of values an index input may hold: every use must stay in range."""
    return min(size(u.bound, sizes) - u.shift for u in case.index[name])


def out_of_range(case: DeepCase, rng: random.Random, feeds: dict, sizes: dict) -> tuple[dict, str] | None:
    """Valid inputs with one id outside what it indexes, or one set of CSR offsets broken; None
    when the spec reads no ids or offsets (or those it reads are empty)."""
    targets = [n for n in [*case.index, *case.offsets] if feeds[n].size]
    if not targets:
        return None
    name = rng.choice(targets)
    bad = feeds[name].copy()
    if name in case.index:
        below = -1 - min(u.shift for u in case.index[name])  # a shifted id may be negative
        value = rng.choice([below, valid_end(case, name, sizes), 2**31 - 1])
        bad.flat[rng.randrange(bad.size)] = value
        return {**feeds, name: bad}, f"id {value} in {name}"
    rows = size(case.offsets[name], sizes)
    how = rng.choice(["start", "end", "decrease"] if bad.size >= 3 else ["start", "end"])
    if how == "start":
        bad[0] = rng.choice([-1, 1])
    elif how == "end":
        bad[-1] = rows + rng.choice([-1, 1])
    else:
        bad[1] = rows + 1
    return {**feeds, name: bad}, f"offsets {name} ({how}: {bad.tolist()}, {rows} rows)"


def empty_inputs(case: DeepCase, rng: random.Random, feeds: dict, sizes: dict) -> tuple[dict, str] | None:
    """Valid inputs again with one symbolic dim of an input 0: an empty batch, refused by both."""
    import numpy as np
    symbols = sorted({d for t in case.inputs for d in t.dims if isinstance(d, str)})
    if not symbols:
        return None
    dim = rng.choice(symbols)
    empty = {}
    for t in case.inputs:
        shape = [0 if d == dim else size(d, sizes) for d in t.dims]
        empty[t.name] = np.zeros(shape, feeds[t.name].dtype)
    return empty, f"{dim} = 0"


# -- running -----------------------------------------------------------------------------------------

@dataclass
class Result:
    status: str        # "ok", "refused" (a SpecError: the checker said no), or one of FAILURES
    detail: str = ""
    text: str = ""
    inputs: tuple = ()  # the kinds of input it ran on: "valid", "empty", "out of range"

    @property
    def failed(self) -> bool:
        return self.status in FAILURES


def run(case: DeepCase, seed: int = 0) -> Result:
    """Compile the case's spec, check the file, and run both runtimes on its three kinds of input."""
    text = case.text()
    with tempfile.TemporaryDirectory() as tmp:
        spec = Path(tmp, "deep.inv")
        spec.write_text(text)
        try:
            result = _compiled(spec, text)
        except _Finding as f:
            return Result(f.status, f.detail, text)
        if isinstance(result, Result):
            return result
    onnx_model, module = result
    ran = []
    try:
        session = _session(onnx_model)
        rng = random.Random(seed)
        feeds, sizes = valid_inputs(case, rng)
        _compare(session, module, feeds)
        ran.append("valid")
        for kind, bad in (("empty", empty_inputs(case, rng, feeds, sizes)),
                          ("out of range", out_of_range(case, rng, feeds, sizes))):
            if bad is not None:
                _refused(session, *bad)
                ran.append(kind)
    except _Finding as f:
        return Result(f.status, f.detail, text, tuple(ran))
    return Result("ok", "", text, tuple(ran))


class _Finding(Exception):
    def __init__(self, status: str, detail: str):
        super().__init__(detail)
        self.status, self.detail = status, detail


def _compiled(spec: Path, text: str):
    """(the ONNX model, the unoptimised torch module) or a Result: refused, or crashed."""
    from compiler.driver import build, compile
    from dsl.errors import SpecError
    try:
        return compile(spec).onnx, build(spec)
    except SpecError as e:
        return Result("refused", e.message, text)
    except Exception:  # noqa: BLE001 - what this stage looks for
        raise _Finding("crash", "compile: " + _last_lines()) from None


def _last_lines() -> str:
    return traceback.format_exc(limit=-3).strip()


def _session(model):
    """The Session of a file that passes onnx.checker, or an "invalid file" finding."""
    import onnx
    from runtime.session import Session
    try:
        onnx.checker.check_model(model, full_check=True)
    except Exception as e:  # noqa: BLE001
        raise _Finding("invalid file", f"onnx.checker: {str(e).strip().splitlines()[0][:300]}") from None
    try:
        return Session(model)
    except Exception as e:  # noqa: BLE001
        raise _Finding("invalid file", f"onnxruntime: {str(e).strip().splitlines()[0][:300]}") from None


def _compare(session, module, feeds: dict) -> None:
    """torch and onnxruntime on valid inputs: both run and agree, or both refuse with InputError."""
    got, refusal = _ort(session, feeds)
    want, torch_refusal = _torch(module, session, feeds)
    if refusal or torch_refusal:
        if not (refusal and torch_refusal):
            who = "onnxruntime's Session" if refusal else "torch"
            raise _Finding("refused valid", f"{who} alone refused valid inputs: {refusal or torch_refusal}")
        return
    for name, a, b in zip(got, got.values(), want):
        _agree(name, a, b)


def _ort(session, feeds: dict):
    from runtime.inputs import InputError
    try:
        return session.run(feeds), None
    except InputError as e:
        return None, str(e)
    except Exception:  # noqa: BLE001
        raise _Finding("crash", "onnxruntime run: " + _last_lines()) from None


def _torch(module, session, feeds: dict):
    import torch
    from runtime.inputs import InputError
    try:
        with torch.no_grad():
            out = module(*(torch.from_numpy(feeds[i.name]) for i in session.inputs))
    except InputError as e:
        return None, str(e)
    except Exception:  # noqa: BLE001
        raise _Finding("crash", "torch run: " + _last_lines()) from None
    return [t.numpy() for t in (out if isinstance(out, tuple) else (out,))], None


def _agree(name: str, got, want) -> None:
    """Same shape, dtype, NaN and inf positions, and finite values within the dtype's tolerance."""
    import numpy as np
    where = f"output {name}"
    if got.shape != want.shape or got.dtype != want.dtype:
        raise _Finding("disagree", f"{where}: onnxruntime {got.dtype}{list(got.shape)}, torch {want.dtype}{list(want.shape)}")
    if not np.issubdtype(want.dtype, np.floating):
        if not np.array_equal(got, want):
            raise _Finding("disagree", f"{where}: {want.dtype} values differ")
        return
    a, b = got.astype(np.float64), want.astype(np.float64)
    for what, test in (("NaN", np.isnan), ("+inf", np.isposinf), ("-inf", np.isneginf)):
        if not np.array_equal(test(a), test(b)):
            raise _Finding("disagree", f"{where}: {what} in one runtime only")
    finite = np.isfinite(b)
    scale = max(1.0, float(np.abs(b[finite]).max(initial=0.0)))
    err = float(np.abs(a[finite] - b[finite]).max(initial=0.0)) / scale
    tol = TOLERANCE[{np.float16: "f16", np.float32: "f32", np.float64: "f64"}[want.dtype.type]]
    if not err <= tol:
        raise _Finding("disagree", f"{where} ({want.dtype}): relative error {err:.2e} > {tol:g}")


def _refused(session, feeds: dict, what: str) -> None:
    """The Session refuses these inputs with a one-line InputError: its checks before onnxruntime
    runs, or the model's own check nodes (computed ids and offsets), which it names. Any other
    onnxruntime error is no refusal, however the Session words it."""
    from runtime.inputs import InputError
    try:
        session.check(feeds)
        session.run(feeds)
    except InputError as e:
        if "\n" in str(e):
            raise _Finding("ran invalid", f"{what}: refused, but not in one line: {e}") from None
        return
    except Exception:  # noqa: BLE001
        raise _Finding("crash", f"{what}: " + _last_lines()) from None
    raise _Finding("ran invalid", f"{what}: ran without a refusal")


def signature(result: Result) -> str:
    """What kind of failure: the status and the last line of its detail, names and numbers dropped."""
    last = re.sub(r"\[[-0-9, ]*\]", "[...]", (result.detail.strip().splitlines() or [""])[-1])
    last = re.sub(r" \([^()]*\[\.\.\.\][^()]*\)", "", last)  # how the offsets were broken
    return f"{result.status}: {re.sub(r'[A-Za-z_]*[0-9][A-Za-z_0-9.]*|-?[0-9]+', '#', last)[:200]}"


def pruned(case: DeepCase) -> DeepCase:
    """The case without the inputs its statements no longer read (an id input left behind would
    still be fed out-of-range values, and fail for another reason)."""
    words = set(re.findall(r"[A-Za-z_]\w*", "\n".join(case.lines)))
    keep = [t for t in case.inputs if t.name in words] or case.inputs[:1]
    names = {t.name for t in keep}
    roles = {n: r for n, r in case.roles.items() if n in names}
    return dataclasses.replace(case, inputs=keep, roles=roles,
                               index={n: u for n, u in case.index.items() if n in names},
                               offsets={n: rows for n, rows in case.offsets.items() if n in names},
                               symmetry={r.split("(")[1].rstrip(")") for r in roles.values()})


def shrink(case: DeepCase, result: Result, seed: int = 0) -> Result:
    """Delete statements one at a time while the case still fails the same way."""
    changed = True
    while changed:
        changed = False
        for i in range(len(case.lines)):
            trial = pruned(dataclasses.replace(case, lines=case.lines[:i] + case.lines[i + 1:]))
            again = run(trial, seed)
            if signature(again) == signature(result):
                case, result, changed = trial, again, True
                break
    return result


# The classes of failure this stage was built to find (issue 22): reports group failures by them,
# so a failure of a known class reads as a regression and what remains as new. (class, test on a
# failed Result's status and detail)
ISSUE_CLASSES = [
    ("3: CSR offsets recognised by name, or checked against the wrong rows",
     lambda status, detail: status in ("ran invalid", "crash") and detail.startswith("offsets")
     or status == "refused valid" and "CSR offsets" in detail),
    ("3: an index that reaches a gather, embedding or scatter is not bounded at run time",
     lambda status, detail: status in ("ran invalid", "crash") and detail.startswith("id ")),
    ("4: a written file onnxruntime cannot load or run for its dtypes",
     lambda status, detail: status == "invalid file"
     or status == "crash" and ("not supported" in detail or "NOT_IMPLEMENTED" in detail)),
]
NEW = "new: none of the classes above"


def issue_class(result: Result) -> str:
    return next((name for name, test in ISSUE_CLASSES if test(result.status, result.detail)), NEW)
