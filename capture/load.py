"""Capture: the torch model a `def net = torch(...)` names, exported with torch.export on example
tensors built from the spec's types, its symbolic dims dynamic.

The model comes from `pkg.module:factory` (called with the def's arguments) or from a saved
ExportedProgram (`model.pt2`, relative to the spec). Naming a module runs its code, so only code the
user brought is run: a module whose file lies in the spec's folder tree, or a torch.nn.Module class
of an installed model library. Any failure is a SpecError at the def or the call.
"""
from __future__ import annotations

import importlib
import importlib.util
import logging
import re
import sys
from pathlib import Path

import torch

from common.dtypes import torch_dtype
from dsl import ast, limits
from dsl.errors import SpecError
from dsl.groups import indexed_dim

LIBRARIES = ("torch", "torch_geometric", "transformers", "torchvision", "e3nn")  # their Module classes only

HINTS = (  # what torch.export says -> what to change in the model
    (re.compile(r"data.dependent|GuardOnDataDependent|unbacked|\.item\(\)|nonzero", re.I),
     "a size computed from data (`int(index.max()) + 1`, `.item()`, `nonzero`) cannot be captured; pass it in "
     "(PyG: `dim_size=x.size(0)`), or give the model its graph as an input"),
    (re.compile(r"Unsupported|not supported|torch_cluster|pyg_lib|knn|radius", re.I),
     "a graph built inside `forward` (radius_graph, knn_graph) cannot be captured; build it outside and "
     "declare it an input `edge_index: i64[2, E] is index(N)`"),
    (re.compile(r"Constraints violated|specializ|guard", re.I),
     "the model fixes a dim the spec declares symbolic; declare that dim with its size"),
    (re.compile(r"match.*\bs\d+\b|\bs\d+\b.*match|Expected s\d+ in dimension", re.I),  # sizes s64, s56 that differ
     "the model meets two sizes the spec names apart: pass the tensors in forward's order, and give dims the "
     "model needs equal one name"),
)


def model_source(d: ast.TorchDef, kwargs: dict, spec_file: str):
    """The nn.Module or ExportedProgram `d` names."""
    if d.source.endswith(".pt2"):
        path = (Path(spec_file).resolve().parent / d.source)
        if kwargs:
            raise SpecError.at(d.pos, f"`{d.name}`: a saved program takes no arguments")
        if not path.is_file():
            raise SpecError.at(d.pos, f"`{d.name}`: no saved program at {path}")
        try:
            return torch.export.load(str(path))
        except Exception as e:  # a damaged or foreign file: torch's own reason
            raise SpecError.at(d.pos, f"`{d.name}`: cannot load {path.name}: {_first_line(e)}") from None
    module_name, sep, attr = d.source.partition(":")
    if not sep or not all(p.isidentifier() for p in module_name.split(".")) or not attr.isidentifier():
        raise SpecError.at(d.pos, f"`{d.name}`: expected \"pkg.module:factory\" or \"file.pt2\", got {d.source!r}")
    factory = _factory(d, module_name, attr, Path(spec_file).resolve().parent)
    _refuse_oversized(d, factory, kwargs)
    try:
        model = factory(**kwargs)
    except Exception as e:
        raise SpecError.at(d.pos, f"`{d.name}`: {d.source}(...) raised {type(e).__name__}: {_first_line(e)}") from None
    if not isinstance(model, torch.nn.Module):
        raise SpecError.at(d.pos, f"`{d.name}`: {d.source} gave {type(model).__name__}, not a torch.nn.Module")
    return model.eval()


def _refuse_oversized(d: ast.TorchDef, factory, kwargs: dict) -> None:
    """Refuse a model past the parameter limit before its weights are allocated: it is first built
    on the meta device, which allocates nothing (a factory that cannot be is built as it is)."""
    try:
        with torch.device("meta"):
            probe = factory(**kwargs)
        count = sum(t.numel() for t in (*probe.parameters(), *probe.buffers()))
    except Exception:  # noqa: BLE001 - the real build reports the factory's own errors
        return
    if count > limits.current().parameters:
        raise SpecError.at(d.pos, *limits.exceeded(f"`{d.name}`'s parameter count ({count:,})", "parameters"))


def _factory(d: ast.TorchDef, module_name: str, attr: str, folder: Path):
    top = module_name.split(".")[0]
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))  # the user's own modules beside the spec
    found = importlib.util.find_spec(top)
    places = ([found.origin] if found.has_location else list(found.submodule_search_locations or ())) if found else []
    local = bool(places) and all(_users_own(p, folder) for p in places)
    if found is None or not (local or top in LIBRARIES):
        raise SpecError.at(d.pos, f"`{d.name}`: module `{module_name}` is neither beside the spec nor a model library",
                           f"put it in {folder} (it runs its code), or use one of {', '.join(LIBRARIES)}")
    try:
        module = importlib.import_module(module_name)
    except Exception as e:
        raise SpecError.at(d.pos, f"`{d.name}`: importing {module_name} raised {type(e).__name__}: "
                                  f"{_first_line(e)}") from None
    factory = getattr(module, attr, None)
    is_module = isinstance(factory, type) and issubclass(factory, torch.nn.Module)
    if factory is None or not (is_module or (local and callable(factory))):
        raise SpecError.at(d.pos, f"`{d.name}`: `{attr}` in {module_name} is not "
                                  f"{'a callable' if local else 'a torch.nn.Module class'}")
    return factory


def _users_own(place: str, folder: Path) -> bool:
    """A file or package of the user's project: under the spec's folder, and not an installed
    package (a virtual environment inside the project, site-packages) or Python's own."""
    path = Path(place)
    if not path.is_absolute() or not path.exists():  # "frozen", "built-in"
        return False
    path = path.resolve()
    installed = {"site-packages", "dist-packages"} & set(path.parts) or any(
        path.is_relative_to(Path(p).resolve()) for p in {sys.prefix, sys.base_prefix, sys.exec_prefix})
    return path.is_relative_to(folder) and not installed


def example_inputs(ctx, tensors: list, shift: int = 0) -> tuple[list, list, dict]:
    """Example tensors for the export, their dynamic_shapes, and each symbolic dim's example size.
    Each symbolic dim gets its own size, above any static dim, so no two are equal or 0/1 by chance;
    ids of an `index(N)` input lie below N's size. `shift` moves every size (another set of examples)."""
    roles = {p.value.id: p.role for p in ctx.el.out.inputs}
    static = {d for t in tensors for d in t.type.shape if isinstance(d, int)}
    symbolic = sorted({d for t in tensors for d in t.type.shape if isinstance(d, str)})
    sizes, n = {}, max(static | {3}) + 2 + shift * (len(symbolic) + 1)
    for name in symbolic:
        sizes[name] = n
        n += 1
    g = torch.Generator().manual_seed(shift)
    examples, shapes = [], []
    for t in tensors:
        shape = [sizes.get(d, d) for d in t.type.shape]
        dtype = torch_dtype(t.type.dtype)
        indexed = indexed_dim(roles.get(t.id))
        if dtype.is_floating_point:
            x = torch.randn(shape, generator=g, dtype=dtype)
        elif dtype == torch.bool:
            x = torch.rand(shape, generator=g) < 0.7
        else:
            x = torch.randint(0, sizes.get(indexed, 2), shape, generator=g, dtype=dtype)
        examples.append(x)
        # AUTO: export keeps a dim symbolic unless the model fixes it, which lifting then refuses by name
        shapes.append({k: torch.export.Dim.AUTO for k, d in enumerate(t.type.shape) if isinstance(d, str)} or None)
    return examples, shapes, sizes


def export(ctx, d: ast.TorchDef, model, tensors: list):
    """The ExportedProgram of `model` on example tensors shaped like `tensors`."""
    examples, shapes, _ = example_inputs(ctx, tensors)
    quiet = logging.getLogger("torch")
    level, quiet.level = quiet.level, logging.CRITICAL  # torch logs each failed trace; the SpecError says it once
    try:
        return torch.export.export(model, tuple(examples), dynamic_shapes=tuple(shapes), strict=False)
    except Exception as e:
        text = str(e)
        hint = next((h for pattern, h in HINTS if pattern.search(text)), None)
        raise SpecError.at(ctx.pos, f"cannot capture `{d.name}` ({d.source}) with torch.export: "
                                    f"{type(e).__name__}: {_first_line(e)}", hint) from None
    finally:
        quiet.setLevel(level)


def _first_line(e: Exception) -> str:
    lines = [l.strip() for l in str(e).splitlines() if l.strip()]
    return lines[0][:300] if lines else type(e).__name__
