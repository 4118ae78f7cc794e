"""Numeric checks: a compiled model against the torch module built from the same spec
(`compare_with_torch`, for `invc demo`), and a spec's declared symmetries measured on both
(`verify` and `plot_orbits`, for `invc verify`; `assert_equivariant`, for the tests). A claim that
fails in float64 is traced to the first op that breaks it (compiler/localize.py)."""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from common.dtypes import torch_dtype
from compiler.measure import TOLERANCE, noise_floor, relative_error
from runtime import native


@dataclass(frozen=True)
class Agreement:
    provider: str
    shapes: str
    max_error: float
    kernels: str | None = None  # which frame kernels ran, and why, for a model with frames


def compare_with_torch(spec: str | Path, onnx_path: str | Path, dims: dict, seed: int = 0,
                       model: str | None = None, params: dict | None = None, **kw) -> Agreement:
    """Run the ONNX file in onnxruntime and the spec's torch module on the same random inputs;
    symbolic dims missing from `dims` get OTHER_SIZE."""
    from compiler.driver import build
    from runtime.session import Session, random_inputs

    session = Session(onnx_path)
    feeds = random_inputs(session.inputs, dims, seed, default=OTHER_SIZE, bounds=session.id_bounds())
    got = session.run(feeds)
    module = build(spec, model, seed, params, **kw)
    with torch.no_grad():
        want = module(*(torch.from_numpy(feeds[i.name]) for i in session.inputs))
    want = want if isinstance(want, tuple) else (want,)
    error = worst(float(np.max(np.abs(g - w.numpy()), initial=0.0)) for g, w in zip(got.values(), want))
    shapes = ", ".join(f"{k}{list(v.shape)}" for k, v in feeds.items())
    return Agreement(session.provider, shapes, error, session.kernels if session.frames else None)


# -- equivariance ----------------------------------------------------------------------------
# A claim is measured by acting with sampled group elements on the inputs and comparing
# f(g·x) with g·f(x): permutations; Haar rotations, with and without a reflection;
# translations of magnitude TRANSLATION. Errors are relative to the largest |g·f(x)|
# (compiler/measure.py).

TRANSLATION = 10.0
SIZES = {"B": 2, "N": 9}  # other symbolic dims get OTHER_SIZE
GENERIC_POINTS = 4  # real points a sampled mask keeps per set: 3 are always planar
OTHER_SIZE = 5


@dataclass(frozen=True)
class Element:
    """One group element, and how it acts on a tensor whose fact is known."""
    label: str
    perm: torch.Tensor | None = None
    rotation: torch.Tensor | None = None  # [3, 3], float64
    shift: torch.Tensor | None = None     # [3], float64

    def act(self, fact, x: torch.Tensor) -> torch.Tensor:
        from dsl.groups import Permuted, Relabeled, Rotated, Translated
        if isinstance(fact, Relabeled):  # element i is now at place argsort(perm)[i]
            x = torch.argsort(self.perm)[x]
        if isinstance(fact, (Permuted, Relabeled)):
            for axis in fact.axes:
                x = x.index_select(axis, self.perm)
        elif isinstance(fact, (Rotated, Translated)):
            moved = x.movedim(fact.axis, -1) @ self.rotation.to(x.dtype).T
            if isinstance(fact, Translated):
                moved = moved + self.shift.to(x.dtype)
            x = moved.movedim(-1, fact.axis)
        return x


def random_rotation(gen: torch.Generator, reflect: bool = False) -> torch.Tensor:
    """Haar-random in SO(3) (times -I, a reflection, when `reflect`): QR of a Gaussian matrix with
    R's diagonal made positive, so Q is uniform rather than biased by the QR sign convention."""
    q, r = torch.linalg.qr(torch.randn(3, 3, generator=gen, dtype=torch.float64))
    q = q * torch.sign(torch.diagonal(r))
    if torch.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return -q if reflect else q


def random_translation(gen: torch.Generator, size: float = TRANSLATION) -> torch.Tensor:
    v = torch.randn(3, generator=gen, dtype=torch.float64)
    return v * (size / v.norm())


def elements(group, sizes: dict, trials: int, gen: torch.Generator) -> list[Element]:
    """`trials` sampled elements of `group`; O(3) and E(3) alternate proper and improper ones."""
    from dsl.groups import Permutations
    if isinstance(group, Permutations):
        return [Element("permutation", perm=torch.randperm(sizes.get(group.dim, OTHER_SIZE), generator=gen))
                for _ in range(trials)]
    out = []
    for i in range(trials):
        reflect = group.reflects and i % 2 == 1
        rotation = random_rotation(gen, reflect) if group.rotates else torch.eye(3, dtype=torch.float64)
        shift = random_translation(gen) if group.translates else torch.zeros(3, dtype=torch.float64)
        words = [w for w, on in (("reflection" if reflect else "rotation", group.rotates),
                                 ("translation", group.translates)) if on]
        out.append(Element("+".join(words), rotation=rotation, shift=shift))
    return out


def worst(errors) -> float:
    """The largest error, NaN if any is NaN: Python's max drops a NaN that is not first, and a NaN
    error is a failure, never a pass."""
    errors = list(errors)
    return float("nan") if any(e != e for e in errors) else max(errors, default=0.0)


def _as_tuple(y) -> tuple:
    return tuple(y) if isinstance(y, (tuple, list)) else (y,)


def orbit_errors(fn, inputs: list, in_facts: list, out_facts: list, orbit: list[Element]) -> list[list[float]]:
    """For each element g: the relative error of each output with a fact (None: skipped)."""
    with torch.no_grad():
        base = _as_tuple(fn(*inputs))
        rows = []
        for g in orbit:
            acted = [g.act(f, x) for f, x in zip(in_facts, inputs)]
            moved = _as_tuple(fn(*acted))
            rows.append([relative_error(g.act(f, y), z, noise_floor(acted, z.dtype))
                         for f, y, z in zip(out_facts, base, moved) if f is not None])
    return rows


@dataclass(frozen=True)
class Measurement:
    output: str
    group: str
    claim: str
    backend: str      # "torch fp32", "torch fp64", "onnx fp32" (frames: native kernels, bodies)
    error: float      # the max relative error over the sampled elements
    tol: float
    claimed: bool = True

    @property
    def ok(self) -> bool:
        return not self.claimed or self.error <= self.tol


def table(rows: list[Measurement]) -> str:
    head = ("output", "group", "claim", "backend", "max rel error", "pass mark", "")
    body = [(m.output, m.group, m.claim, m.backend, f"{m.error:.2e}", f"{m.tol:.0e}",
             "ok" if m.ok and m.claimed else "unclaimed" if m.ok else "FAILED") for m in rows]
    widths = [max(len(r[i]) for r in [head, *body]) for i in range(len(head))]
    return "\n".join("  " + "  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in [head, *body])


def assert_equivariant(fn, inputs, group=None, in_facts=None, out_facts=None, trials: int = 3,
                       tol: float | None = None, seed: int = 0) -> list[Measurement]:
    """The one equivariance check of the test suite: act on `inputs` with sampled elements of
    `group`, print a table of errors per output (e3nn style) and assert each is within `tol`.

    `fn` is any callable; a module built from a spec may leave out group and facts, which then come
    from its `symmetry` declaration, input roles and output claims (every declared group).
    Facts may be given as role strings ("position", "vector", "scalar") for a Euclidean group."""
    inputs = list(inputs.values()) if isinstance(inputs, dict) else list(inputs)
    tol = tol if tol is not None else TOLERANCE[next((x.dtype for x in inputs if x.is_floating_point()), torch.float32)]
    gen = torch.Generator().manual_seed(seed)
    rows = []
    for g, ins, outs, names in _claims(fn, inputs, group, in_facts, out_facts):
        orbit = elements(g, _sizes(g, ins, inputs), trials, gen)
        errors = orbit_errors(fn, inputs, ins, outs, orbit)
        named = [(n, f) for n, f in zip(names, outs) if f is not None]
        rows += [Measurement(n, str(g), str(f), "torch", worst(e[i] for e in errors), tol)
                 for i, (n, f) in enumerate(named)]
    print(table(rows))
    failed = [m for m in rows if not m.ok]
    assert not failed, f"not equivariant: {', '.join(f'{m.output} under {m.group}' for m in failed)}"
    return rows


def _claims(fn, inputs: list, group, in_facts, out_facts):
    """(group, input facts, output facts, output names) for each group to check."""
    model = getattr(fn, "meta", {}).get("invc")
    if in_facts is None:
        for g in ([group] if group is not None else list(model.groups)):
            yield (g, *_facts(model, g), [p.name for p in model.outputs])
        return
    ins = [group.input_fact(tuple(x.shape), f) if isinstance(f, str) else f for f, x in zip(in_facts, inputs)]
    with torch.no_grad():
        shapes = [tuple(y.shape) for y in _as_tuple(fn(*inputs))]
    outs = [group.claim(s, f) if isinstance(f, str) else f for f, s in zip(out_facts, shapes)]
    yield group, ins, outs, [f"output {i}" for i in range(len(outs))]


def _sizes(group, in_facts: list, inputs: list) -> dict:
    """The size of the permuted dim, read off an input it acts on."""
    from dsl.groups import Permuted
    sizes = {}
    for f, x in zip(in_facts, inputs):
        if isinstance(f, Permuted):
            sizes[getattr(group, "dim", "")] = x.shape[f.axes[0]]
    return sizes


@dataclass
class Report:
    """`invc verify`: the static verdict, and every claim measured on torch (fp32, fp64) and ONNX."""
    spec: str
    groups: str
    static: str                 # "proved", or the refusal
    rows: list
    notes: list                        # backends that could not run
    conditioning: float | None = None  # the worst frame conditioning of the sampled clouds
    frame_mode: str | None = None      # all frames or canonical=true, from the sampled clouds
    breaks: list = field(default_factory=list)  # the first breaking op of each claim failing in float64

    @property
    def ok(self) -> bool:
        return all(m.ok for m in self.rows)

    def __str__(self) -> str:
        lines = [f"{self.spec}: symmetry {self.groups}", f"static: {self.static}", table(self.rows), *self.notes,
                 *map(str, self.breaks)]
        if self.conditioning is not None:
            lines.append(f"frames: worst conditioning of the sampled clouds {self.conditioning:.2e} "
                         "(0: a tied spectrum, where frame averaging is only approximate)")
            lines.append(self.frame_mode)
        return "\n".join(lines)


def verify(spec: str | Path, onnx: str | Path | None = None, model: str | None = None, trials: int = 4,
           tol: float = TOLERANCE[torch.float32], seed: int = 0, sizes: dict | None = None,
           params: dict | None = None, **kw) -> Report:
    """Measure every declared symmetry of a spec's outputs on its torch module (fp32 and fp64) and
    on its ONNX file (compiled in memory when not given). The spec's claims are measured even when
    the static proof refuses them, so both halves can be compared."""
    from compiler.localize import localize

    checked, gm, inputs, backends, notes = _prepare(spec, model, onnx, seed, sizes, {**(params or {}), **kw})
    rows, breaks, gen = [], [], torch.Generator().manual_seed(seed)
    for group in checked.groups:
        ins, outs = _facts(checked, group)
        orbit = elements(group, {**SIZES, **(sizes or {})}, trials, gen)
        claimed = [(p, f) for p, f in zip(checked.outputs, outs) if f is not None]
        traced = set()  # outputs whose break is named: on the first float64 backend they fail on
        for backend, fn, dtype in backends:
            try:
                errors = orbit_errors(fn, [_cast(x, dtype) for x in inputs], ins, outs, orbit)
            except RuntimeError as e:  # e.g. an op without a float64 kernel: say so, measure the rest
                notes.append(f"{backend} under {group} not measured: {str(e).splitlines()[0]}")
                continue
            measured = [Measurement(p.name, str(group), str(f), backend, worst(e[i] for e in errors),
                                    tol if dtype == torch.float32 else TOLERANCE[torch.float64])
                        for i, (p, f) in enumerate(claimed)]
            rows += measured
            for i, ((p, f), m) in enumerate(zip(claimed, measured)):
                if dtype == torch.float64 and not m.ok and p.name not in traced:
                    traced.add(p.name)
                    g = orbit[max(range(len(orbit)), key=lambda k: _nan_first(errors[k][i]))]  # the worst element
                    _add_break(breaks, localize(fn, [_cast(x, dtype) for x in inputs], ins, g, group, p.name, f))
        notes += _float32_only(rows, str(group))
    notes += _not_finite(checked, backends[0], inputs)
    return Report(str(spec), str(checked.groups), _static(checked), rows, notes,
                  *_conditioning(gm, inputs), breaks)


def _not_finite(checked, backend, inputs: list) -> list[str]:
    """Notes on outputs that are NaN or infinite on the drawn inputs (a softmax over a set masked out):
    their errors are measured on the finite entries, and the rest must move with the group by place."""
    name, fn, dtype = backend
    with torch.no_grad():
        ys = _as_tuple(fn(*[_cast(x, dtype) for x in inputs]))
    return [f"{p.name} is NaN or infinite at {n} of {y.numel()} entries on the drawn inputs ({name}): measured on "
            "the finite ones; the others must stand where the group moves them"
            for p, y in zip(checked.outputs, ys) if (n := int((~torch.isfinite(y)).sum()))]


def _float32_only(rows: list, group: str) -> list[str]:
    """Notes on claims that fail only in float32: float64 keeps them, so no op breaks the symmetry."""
    mine = [m for m in rows if m.group == group]
    fp64 = {m.output for m in mine if "fp64" in m.backend}
    return [f"{name} under {group} fails in float32 only: float64 keeps it, so rounding (or a backend) is to blame, "
            "not an op that breaks the symmetry"
            for name in dict.fromkeys(m.output for m in mine if not m.ok)
            if name in fp64 and all(m.ok for m in mine if m.output == name and "fp64" in m.backend)]


def _nan_first(error: float) -> float:
    return math.inf if math.isnan(error) else error


def _add_break(breaks: list, new) -> None:
    """One break per op: outputs that one op breaks are named together."""
    for i, b in enumerate(breaks):
        if b.node == new.node:
            breaks[i] = replace(b, outputs=f"{b.outputs}; {new.outputs}")
            return
    breaks.append(new)


def _prepare(spec, model, onnx, seed: int, sizes: dict | None, params: dict):
    """The checked model (claims not enforced), its torch module, sampled inputs, backends and notes
    on the backends."""
    from common.errors import InvcError
    from compiler.lower import lower
    from ops.registry import check
    from dsl.program import load

    checked = check(load(spec), model, params, prove=False)
    if not len(checked.groups):
        raise InvcError(f"{spec}: model {checked.name} declares no symmetry, so there is nothing to verify "
                        "(add `symmetry S(N)` or `symmetry E(3)` and claims such as `output y is invariant`)")
    gm = lower(checked, seed)
    inputs = sample_inputs(checked, {**SIZES, **(sizes or {})}, seed)
    return checked, gm, inputs, *_backends(gm, checked, onnx)


def _facts(checked, group) -> tuple[list, list]:
    """The inputs' facts from their roles, and the outputs' claims (None: unclaimed)."""
    return ([group.input_fact(p.type.shape, p.role) for p in checked.inputs],
            [group.claim(p.value.type.shape, p.role) for p in checked.outputs])


def _static(checked) -> str:
    from dsl.errors import SpecError
    from dsl.symmetry import enforce
    try:
        enforce(checked)
    except SpecError as e:
        return f"refused: {e.message} ({e.file}:{e.line}:{e.column})"
    return "proved"


def sample_inputs(checked, sizes: dict, seed: int = 0) -> list[torch.Tensor]:
    """Random inputs for a checked model, valid for what reads them: Gaussian floats; masks 80%
    true, varying along every axis, with at least 4 real points per set (frames stay generic) and
    the first set all padding;
    CSR offsets with an empty set; segment ids that leave the last set empty; token ids in range."""
    gen = torch.Generator().manual_seed(seed)
    size = _sizer(sizes)
    readers = _index_readers(checked, size)
    out = []
    for p in checked.inputs:
        shape = [size(d) for d in p.type.shape]
        dtype = torch_dtype(p.type.dtype)
        if p.type.dtype == "bool":
            out.append(_mask(shape, gen))
        elif p.value.id in readers:
            out.append(readers[p.value.id](shape, gen).to(dtype))
        elif p.type.dtype in ("i32", "i64"):
            out.append(torch.randint(0, 2, shape, generator=gen, dtype=dtype))
        else:
            out.append(torch.randn(shape, generator=gen, dtype=torch.float32))
    return out


def _sizer(sizes: dict):
    def size(d):
        if isinstance(d, int):
            return d
        if isinstance(d, str) and d.endswith("-1"):  # CSR offsets hold S+1 entries
            return size(d[:-2]) - 1
        return sizes.get(d, OTHER_SIZE)
    return size


def _mask(shape: list, gen: torch.Generator) -> torch.Tensor:
    """80% true, drawn per entry, so that the mask varies along every axis it has (a mask constant
    along one, the coordinates say, would hide a claim that fails when it varies there)."""
    m = torch.rand(shape, generator=gen) < 0.8
    if m.dim() >= 2:
        if m.shape[-1] > GENERIC_POINTS:  # a set long enough for a frame keeps a generic cloud
            m[..., :GENERIC_POINTS] = True
        m[0] = False  # an all-padding set: its claims must hold too
    return m


def _index_readers(checked, size) -> dict:
    """Input value id -> sampler, for integer inputs that index: CSR offsets (sorted, from 0 to the
    row count, one set empty); ids an op reads as `Indices`, in the narrowest range any reader allows
    (segment ids leave the last set empty); ids declared `is index(N)` lie in [0, N) even when
    only returned, since S(N) relabels them."""
    from dsl.groups import indexed_dim
    readers = {}
    highs = {p.value.id: size(indexed_dim(p.role)) for p in checked.inputs if indexed_dim(p.role)}
    for node in checked.nodes:
        op = checked.vocabulary.graph[node.op]
        if op.offsets is not None:
            rows = size(node.args[0].type.shape[0])
            readers[node.args[op.offsets].id] = lambda shape, gen, rows=rows: _offsets(shape[0], rows, gen)
        if op.indices is not None:
            ids, high = node.args[op.indices.arg], size(op.indices.bound(node)) - op.indices.spare_last
            highs[ids.id] = min(highs.get(ids.id, high), high)
    return {**readers, **{i: lambda shape, gen, high=max(h, 1): torch.randint(0, high, shape, generator=gen)
                          for i, h in highs.items()}}


def _offsets(length: int, rows: int, gen: torch.Generator) -> torch.Tensor:
    inner = sorted(torch.randint(1, max(rows, 2), (max(length - 3, 0),), generator=gen).tolist())  # no set takes all
    middle = [*inner, inner[-1]] if inner else [rows // 2] * (length - 2)  # a repeat: one set is empty
    return torch.tensor([0, *middle, rows][:length] if length > 1 else [0])


def _cast(x: torch.Tensor, dtype) -> torch.Tensor:
    return x.to(dtype) if x.is_floating_point() else x


def _backends(gm, checked, onnx) -> tuple[list, list]:
    """[(name, fn, dtype)]: the torch module in fp32 and fp64, and the ONNX model in onnxruntime;
    and the notes on them (why the native frame kernels fell back, or why there is no ONNX model)."""
    import copy

    from compiler.onnx_backend import to_onnx
    from ops.aten import NoOnnxForm
    from passes.cleanup import CLEANUP
    from passes.base import Pipeline
    from runtime.session import Session

    backends = [("torch fp32", gm, torch.float32), ("torch fp64", copy.deepcopy(gm).double(), torch.float64),
                ("torch fp64, random weights", redrawn(gm), torch.float64)]
    if onnx is None:  # the compile pipeline, less the symmetry pass: a refused claim is measured too
        try:
            onnx = to_onnx(Pipeline(list(CLEANUP)).run(copy.deepcopy(gm)), graph_name=checked.name)
        except NoOnnxForm as e:  # a captured ATen op that invc keeps as it is: torch alone can run it
            return backends, [f"onnx not measured: {e}"]
    session = Session(onnx)
    names = [p.name for p in checked.inputs]
    _same_ports(onnx, session, checked)

    def runner(session):
        return lambda *xs: tuple(torch.from_numpy(v) for v in session.run(dict(zip(names, xs))).values())

    if not session.frames:
        return backends + [("onnx fp32", runner(session), torch.float32)], []
    # Frames run as native kernels where they are registered; the portable bodies are measured too.
    bodies = ("onnx fp32, frame bodies", runner(Session(onnx, native_frames=False)), torch.float32)
    if session.kernels.startswith(native.BODIES):  # the kernels fell back: say why
        return backends + [bodies], [session.kernels]
    return backends + [("onnx fp32, native frame kernels", runner(session), torch.float32), bodies], []


def redrawn(gm, seed: int = 1):
    """A float64 copy with every weight (parameter and float buffer) drawn again, Gaussian: a claim must
    hold for all weights, and zero biases or unit norm scales at init can hide a broken one. The
    values a captured model's code builds (its fills, not trained) stay: ones drawn negative are not
    counts."""
    import copy
    module = copy.deepcopy(gm).double()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for t in [*(p for p in module.parameters() if p.requires_grad),
                  *(b for b in module.buffers() if b.is_floating_point())]:
            t.copy_(torch.randn(t.shape, generator=gen, dtype=t.dtype))
    return module


def _same_ports(onnx, session, checked) -> None:
    """A given ONNX file must be this model's, or its errors would be measured against the wrong spec:
    the same input and output names, ranks and static dims (symbolic dims may be named otherwise)."""
    from common.errors import InvcError
    theirs = _ports((i.name, i.shape) for i in [*session.inputs, *session.outputs])
    ours = _ports([(p.name, p.type.shape) for p in checked.inputs] +
                  [(p.name, p.value.type.shape) for p in checked.outputs])
    if theirs != ours:
        raise InvcError(f"{onnx} is not model {checked.name}'s: its inputs and outputs ({theirs}) differ "
                        f"from the spec's ({ours}); compile the spec with the same parameters to make one")


def _ports(ports) -> str:
    """Sorted `name[dims]`, every symbolic dim shown as `?`."""
    return ", ".join(sorted(f"{name}[{', '.join(str(d) if isinstance(d, int) else '?' for d in shape)}]"
                            for name, shape in ports))


def _conditioning(gm, inputs) -> tuple[float | None, str | None]:
    """Where frame averaging loses exactness: the worst conditioning of the clouds that reach any
    frame_basis on the sampled inputs (computed clouds included), and the frame mode it calls for."""
    import torch.fx as fx

    from ops.frames import frame_basis, frame_conditioning
    from runtime.frames import recommend
    if not any(n.target is frame_basis for n in gm.graph.nodes):
        return None, None
    clouds = []

    class Spy(fx.Interpreter):  # one more forward pass, recording what each frame_basis reads
        def call_function(self, target, args, kwargs):
            if target is frame_basis:
                clouds.append((args[0], kwargs.get("mask"), kwargs["proper"]))
            return super().call_function(target, args, kwargs)

    with torch.no_grad():
        Spy(gm).run(*inputs)
    scored = [(float(frame_conditioning(pos, mask).min()), pos, mask, proper) for pos, mask, proper in clouds]
    gap, pos, mask, proper = min(scored, key=lambda c: c[0])
    return gap, recommend(pos, mask, proper)


# -- orbits ----------------------------------------------------------------------------------

def orbit(group, steps: int, gen: torch.Generator, sizes: dict) -> list[tuple[float, Element]]:
    """One-parameter orbit, as (angle, element): rotations by 0..2π about a random axis;
    translations out to TRANSLATION along a random direction; powers of a cyclic shift of N."""
    from dsl.groups import Permutations
    if isinstance(group, Permutations):
        n = sizes.get(group.dim, OTHER_SIZE)
        return [(2 * math.pi * k / n, Element("shift", perm=torch.arange(n).roll(k))) for k in range(n)]
    axis = random_translation(gen, 1.0)
    angles = [2 * math.pi * i / (steps - 1) for i in range(steps)]
    if not group.rotates:
        return [(a, Element("translation", rotation=torch.eye(3, dtype=torch.float64),
                            shift=axis * TRANSLATION * a / (2 * math.pi))) for a in angles]
    return [(a, Element("rotation", rotation=_rotation_about(axis, a), shift=torch.zeros(3, dtype=torch.float64)))
            for a in angles]


def _rotation_about(axis: torch.Tensor, angle: float) -> torch.Tensor:
    """Rodrigues: I + sin θ K + (1 - cos θ) K², K the cross-product matrix of the unit axis."""
    x, y, z = axis.tolist()
    k = torch.tensor([[0.0, -z, y], [z, 0.0, -x], [-y, x, 0.0]], dtype=torch.float64)
    return torch.eye(3, dtype=torch.float64) + math.sin(angle) * k + (1 - math.cos(angle)) * k @ k


def plot_format(path: str | Path) -> str:
    """The image format a plot path asks for; refused (before any slow work) when matplotlib lacks it."""
    from matplotlib.backend_bases import FigureCanvasBase

    from common.errors import InvcError

    image = Path(path).suffix.lstrip(".").lower() or "png"
    if image not in FigureCanvasBase.get_supported_filetypes():
        raise InvcError(f"cannot plot to {path}: matplotlib writes no .{image} files; use .png")
    return image


def plot_orbits(spec: str | Path, path: str | Path, model: str | None = None, onnx=None, axes: int = 3,
                steps: int = 73, seed: int = 0, sizes: dict | None = None, params: dict | None = None,
                **kw) -> Path:
    """NERO-style polar plot: the relative error of each claimed output along orbits of each
    declared group (angle: the orbit parameter; radius: the error), torch and ONNX in fp32."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from common.files import atomic_file
    from dsl.groups import Euclidean

    image = plot_format(path)
    checked, _, inputs, backends, _ = _prepare(spec, model, onnx, seed, sizes, {**(params or {}), **kw})
    groups, gen = list(checked.groups), torch.Generator().manual_seed(seed)
    fig, panels = plt.subplots(1, len(groups), subplot_kw={"projection": "polar"},
                               figsize=(5 * len(groups), 5), squeeze=False)
    for group, ax in zip(groups, panels[0]):
        ins, outs = _facts(checked, group)
        names = [p.name for p, f in zip(checked.outputs, outs) if f is not None]
        for i in range(axes if isinstance(group, Euclidean) else 1):  # one cyclic-shift orbit for S(N)
            points = orbit(group, steps, gen, {**SIZES, **(sizes or {})})
            for backend, fn, dtype in (b for b in backends if b[2] == torch.float32):
                errors = orbit_errors(fn, inputs, ins, outs, [g for _, g in points])
                for j, name in enumerate(names):
                    ax.plot([a for a, _ in points], [e[j] for e in errors], marker=".", linewidth=0.8,
                            linestyle="--" if backend.startswith("onnx") else "-",
                            label=f"{name} ({backend}, orbit {i + 1})")
        ax.set_title(f"{group}: relative error along orbits", pad=18)
        ax.legend(fontsize=6, loc="lower left", bbox_to_anchor=(-0.1, -0.25))
    fig.suptitle(f"{Path(spec).name}: equivariance error, NERO-style")
    fig.tight_layout()
    with atomic_file(path, "plot") as f:
        fig.savefig(f, format=image, dpi=110)
    plt.close(fig)
    return Path(path)
