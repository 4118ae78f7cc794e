"""Fusion, rotation and slicing of the residual stream, applied to the model's own parameters by name.

Stream positions: 0 is the embedding output, k is the output of residual add k. Each position lies in
one rotation group; readers of branch k use the rotation of position k-1, its writers that of
position k, and where the two differ the residual path carries a shortcut. All arithmetic is float64.
The stream is folded and rotated one part at a time (the embeddings, each residual add, the head), each
part's weights written back before the next: folding and rotating share one float64 pass, because
writing the folded weights back in between would round them, and folding the whole model first would
hold all of it in float64 at once.

Groups may keep different widths (a per-layer schedule). HF's forward code adds a block's residual
and branch, so the stream tensor keeps one width, the widest; narrower groups are zero-padded to it
and the norms read only their group's leading dims.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from passes.base import PassError
from passes.slicegpt.modules import SliceAdapters, StreamRMSNorm
from passes.slicegpt.structure import Linear, Norm, Structure


class ParamStore:
    """Float64 working copies of parameters, written back once with tied parameters kept tied."""

    def __init__(self, model: nn.Module):
        self.model = model
        self.params = dict(model.named_parameters(remove_duplicate=False))
        self.work: dict[str, torch.Tensor] = {}

    def get(self, name: str | None) -> torch.Tensor | None:
        if name is None:
            return None
        if name not in self.work:
            self.work[name] = self.params[name].detach().to(torch.float64).clone()
        return self.work[name]

    def set(self, name: str, value: torch.Tensor) -> None:
        self.work[name] = value

    def commit(self) -> None:
        """Write back and drop the float64 copies; committing often keeps the peak near one model."""
        dtype = next(self.model.parameters()).dtype
        for name, value in self.work.items():
            old = self.params.get(name)
            new = nn.Parameter(value.to(dtype).contiguous())
            for alias in [a for a, p in self.params.items() if p is old] if old is not None else [name]:
                _assign(self.model, alias, new)
                self.params[alias] = new
        self.work.clear()


def _assign(model: nn.Module, name: str, value: nn.Parameter) -> None:
    path, _, attr = name.rpartition(".")
    mod = model.get_submodule(path)
    setattr(mod, attr, value)
    # Keep the modules' size attributes truthful: GPT-2's Conv1D shapes its output from `nf`.
    sizes = {"in_features": ("weight", 1), "out_features": ("weight", 0), "nf": ("weight", 1),
             "embedding_dim": ("weight", 1), "hidden_dim": ("weight", 1)}   # hidden_dim: MoE routers
    for key, (pname, axis) in sizes.items():
        if hasattr(mod, key) and isinstance(getattr(mod, key), int) and attr == pname:
            setattr(mod, key, value.shape[axis])
    # GraniteMoE's MoE block views its output as `input_size` wide: the width its experts' down projection
    # ([experts, out, in]) writes, so that projection's cut sets it.
    block = model.get_submodule(path.rpartition(".")[0]) if path else None
    if attr == "down_proj" and value.dim() == 3 and isinstance(getattr(block, "input_size", None), int):
        block.input_size = value.shape[1]


def along(w: torch.Tensor, axis: int, q: torch.Tensor) -> torch.Tensor:
    """Transform the stream axis of a weight by q (D x d): v -> v·q along that axis."""
    return torch.movedim(torch.movedim(w, axis, -1) @ q, -1, axis)


def scale_of(store: ParamStore, norm: Norm, width: int) -> torch.Tensor:
    w = store.get(norm.weight)
    return (w + norm.offset) if w is not None else torch.ones(width, dtype=torch.float64)


def fold_norm(store: ParamStore, norm: Norm, width: int, skip: str | None = None) -> None:
    """Move the norm's scale and LayerNorm bias into each reader, leaving a bare norm behind."""
    gamma, beta = scale_of(store, norm, width), store.get(norm.bias)
    for r in norm.readers:
        if r.weight == skip:
            continue
        w = store.get(r.weight)
        if beta is not None:
            _add_bias(store, r, torch.movedim(w, r.axis, -1) @ beta)
        store.set(r.weight, along(w, r.axis, torch.diag(gamma)))


def _add_bias(store: ParamStore, r: Linear, shift: torch.Tensor) -> None:
    """A reader without a bias gets one: LayerNorm's bias has to land somewhere. Only nn.Linear is known
    to use a bias it did not have; any other module (a router, grouped experts) would ignore it."""
    if r.bias:
        store.set(r.bias, store.get(r.bias) + shift)
        return
    module = store.model.get_submodule(r.module)
    if not isinstance(module, nn.Linear):
        raise PassError(f"a norm with a bias feeds {type(module).__name__} {r.module!r}, which has no bias to "
                        "absorb it: folding the norm's bias is not possible")
    store.set(r.module + ".bias", shift)


def center(store: ParamStore, lin: Linear) -> None:
    """Make what a writer adds to the stream mean-free, so LayerNorm acts as RMSNorm."""
    w = store.get(lin.weight)
    store.set(lin.weight, w - w.mean(dim=lin.axis, keepdim=True))
    if lin.bias:
        b = store.get(lin.bias)
        store.set(lin.bias, b - b.mean())


@dataclass
class Rotation:
    """The stream being folded and rotated at full width: the float64 store, and what slicing needs later."""
    model: nn.Module
    s: Structure
    q: list[torch.Tensor]                # one rotation per group
    groups: list[int]                    # the rotation group of each stream position
    store: ParamStore
    adapters: SliceAdapters
    table: torch.Tensor | None           # a tied head's embedding table before rotation, in the model's dtype
    axes: list[tuple[str, int, int]] = field(default_factory=list)  # (parameter, axis, group): what slicing narrows
    head_scale: float = 1.0              # the final norm's scale, when a tied head's map reduces to one

    def turn(self, name: str, axis: int, group: int) -> None:
        self.store.set(name, along(self.store.get(name), axis, self.q[group]))
        self.axes.append((name, axis, group))


@dataclass
class Part:
    """What one write-back covers: the embeddings, one residual add, or the head."""
    r: Rotation
    norms: list[Norm]             # folded into their readers, which read rotation group `read`
    writers: list[Linear]         # write into rotation group `write`
    read: int
    write: int
    key: str = ""                 # the shortcut's name, where `read` and `write` differ
    tied: Linear | None = None    # the head reader that shares the token table


def start(model: nn.Module, s: Structure, rotations: list[torch.Tensor], groups: list[int]) -> Rotation:
    """The float64 store, a tied head's table before rotation, and the plan that the sliced model keeps."""
    store, token = ParamStore(model), s.embeddings[0].weight
    # The table as loaded, not a float64 copy: at the embeddings' part, the largest, a copy would add its size
    # to the peak. Rotation replaces parameters rather than writing into them, so it stays as loaded.
    table = store.params[token].detach() if s.tied else None
    plan = {"width": s.width, "dim": s.width, "shortcuts": [], "head": None, "embedding": s.embeddings[0].module,
            "norms": [{"module": n.module, "eps": n.eps, "kind": n.kind, "offset": n.offset, "dim": s.width}
                      for n in s.norms],
            "padded": []}
    return Rotation(model, s, rotations, groups, store, SliceAdapters(plan), table)


def parts(r: Rotation) -> list[Part]:
    """The embeddings (writers of position 0), each residual add, and the head, in stream order."""
    s, g, last = r.s, r.groups, r.groups[len(r.s.branches)]
    tied = next((x for x in s.final.readers if x.weight == s.embeddings[0].weight), None)
    return [Part(r, [], s.embeddings, g[0], g[0]),
            *(Part(r, b.norms, b.writers, g[k - 1], g[k], f"s{k}") for k, b in enumerate(s.branches, start=1)),
            Part(r, [s.final], [], last, last, tied=tied)]


def fuse_norms(p: Part) -> Part:
    """Fold each norm's scale and bias into its readers; centre the writers of a LayerNorm model."""
    for n in p.norms:
        fold_norm(p.r.store, n, p.r.s.width, skip=p.tied.weight if p.tied else None)
    for w in p.writers if p.r.s.layer_norm else []:
        center(p.r.store, w)
    return p


def rotate_axes(p: Part) -> Part:
    """Readers ·Q of the group they read, writers Qᵀ· of the group they write; a shortcut between the two."""
    r = p.r
    for x in [x for n in p.norms for x in n.readers if x is not p.tied]:
        r.turn(x.weight, x.axis, p.read)
    for w in p.writers:
        r.turn(w.weight, w.axis, p.write)
        if w.bias:
            r.turn(w.bias, -1, p.write)
    if p.read != p.write:
        _shortcut(p)
    if p.tied:
        _tie(p)
    return p


def write_back(p: Part) -> Part:
    p.r.store.commit()
    return p


def _shortcut(p: Part) -> None:
    r, name = p.r, f"invc_slice.shortcuts.{p.key}"
    r.adapters.shortcuts[p.key] = nn.Parameter((r.q[p.read].T @ r.q[p.write]).to(token_dtype(r.model)))
    r.axes += [(name, 0, p.read), (name, 1, p.write)]
    r.adapters.plan["shortcuts"].append({"key": p.key, "norm": p.norms[0].module, "writer": p.writers[0].module})


def _tie(p: Part) -> None:
    r, first = p.r, p.r.groups[0]
    r.head_scale = _tie_head(r.store, r.adapters, p.norms[0], p.tied, r.table, r.q[first], r.q[p.read],
                             r.s.layer_norm)
    r.table = None   # spent; kept, it would hold a second token table through the refit
    r.axes += [("invc_slice.head_map", 0, p.read), ("invc_slice.head_map", 1, first),
               ("invc_slice.head_u", 0, p.read)]


def replace_norms(r: Rotation) -> None:
    """Every stream norm becomes a bare RMSNorm over the original width; the adapters go in as hooks."""
    _replace_norms(r.model, r.s, r.head_scale)
    r.axes += [(n.module + ".weight", 0, group) for n, group in zip(r.s.norms, read_groups(r.s, r.groups))]
    r.model.invc_slice = r.adapters
    r.adapters.install(r.model)


def cut(model: nn.Module, s: Structure, adapters: SliceAdapters, axes: list[tuple[str, int, int]],
        groups: list[int], dims: list[int]) -> None:
    """Slice: keep the leading dims[g] entries of every stream axis of group g (the leading principal
    directions), which is W·Q[:, :d] for readers and Q[:, :d]ᵀ·W for writers."""
    store = ParamStore(model)
    present = set(store.params)
    for name, axis, group in axes:
        if name in present:
            value = store.work.get(name, store.params[name].detach())
            store.set(name, value.narrow(axis, 0, dims[group]))
    store.commit()
    reads = dict(zip((n.module for n in s.norms), (dims[g] for g in read_groups(s, groups))))
    for n in adapters.plan["norms"]:
        n["dim"] = reads[n["module"]]
    adapters.plan.update(dim=max(dims), padded=padded_modules(s, groups, dims))
    adapters.install(model)


def token_dtype(model: nn.Module) -> torch.dtype:
    return next(model.parameters()).dtype


def _tie_head(store, adapters, head: Norm, reader: Linear, emb, q_in, q_out, centered: bool) -> float:
    """A tied head shares the rotated embedding; the final norm's scale goes into a small map before it.

    logits = y·A·E_sᵀ (+ (y·u)·ē for LayerNorm models, whose shared table lost its row means)."""
    gamma = scale_of(store, head, emb.shape[1])
    beta = store.get(head.bias)
    if beta is not None:
        _add_bias(store, reader, emb.double() @ beta)
    amap = q_out.T @ torch.diag(gamma) @ q_in
    dtype = token_dtype(store.model)
    square = amap.shape[0] == amap.shape[1]
    if square and not centered and torch.allclose(amap, amap[0, 0] * torch.eye(len(amap), dtype=amap.dtype), atol=1e-12):
        return float(amap[0, 0])
    adapters.plan["head"] = {"module": reader.module}
    adapters.head_map = nn.Parameter(amap.to(dtype))
    if centered:
        adapters.head_u = nn.Parameter((q_out.T @ gamma).to(dtype))
        adapters.head_mean = nn.Parameter(emb.mean(dim=1, dtype=torch.float64).to(dtype))
    return 1.0


def read_groups(s: Structure, groups: list[int]) -> list[int]:
    """The rotation group of the stream position each norm reads (in `s.norms` order; the final norm: the last)."""
    return [groups[k - 1] for k, b in enumerate(s.branches, start=1) for _ in b.norms] + [groups[len(s.branches)]]


def padded_modules(s: Structure, groups: list[int], dims: list[int]) -> list[str]:
    """Embeddings and writers narrower than the stream tensor: their outputs get zero-padded to it."""
    wide = max(dims)
    found = [e.module for e in s.embeddings if dims[groups[0]] < wide]
    found += [w.module for k, b in enumerate(s.branches, start=1) for w in b.writers if dims[groups[k]] < wide]
    return list(dict.fromkeys(found))


def _replace_norms(model: nn.Module, s: Structure, head_scale: float) -> None:
    for n in s.norms:
        path, _, attr = n.module.rpartition(".")
        parent = model.get_submodule(path) if path else model
        norm = StreamRMSNorm(s.width, n.eps, s.width).to(token_dtype(model))
        if n is s.final:
            norm.weight.data.fill_(head_scale)
        setattr(parent, attr, norm)
