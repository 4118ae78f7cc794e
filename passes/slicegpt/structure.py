"""Structure discovery: find the residual stream of a pre-norm transformer in its exported graph.

The stream is the chain of residual adds `s_k = s_{k-1} + branch_k`, recognised because the stream
operand is an ancestor of the branch operand (the branch reads the stream). Every stream value may be
read only by norms and by its residual add; each norm's output only by linear maps (readers); each
branch must be a sum of linear outputs (writers). Anything else is refused with the node that broke
the rule, so a model is never silently transformed wrongly.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.fx as fx

from passes.base import PassError
from passes.slicegpt.graph import GraphView, aten, describe, export, linear_weight_axes


@dataclass(frozen=True)
class Linear:
    """A linear map touching the stream; `axis` is the weight axis that indexes the stream."""
    module: str
    weight: str
    bias: str | None
    axis: int


@dataclass
class Norm:
    module: str
    kind: str                  # "layer" (subtracts the mean) or "rms"
    weight: str | None
    bias: str | None
    eps: float
    offset: float = 0.0        # the effective scale is weight + offset (Gemma stores scale - 1)
    readers: list[Linear] = field(default_factory=list)


@dataclass
class Branch:
    """One residual add: the norms that read the stream before it and the linears that write into it."""
    block: str
    norms: list[Norm]
    writers: list[Linear]


@dataclass
class Structure:
    width: int
    embeddings: list[Linear]   # token and position tables; axis 1 is the stream
    branches: list[Branch]
    final: Norm

    @property
    def norms(self) -> list[Norm]:
        return [n for b in self.branches for n in b.norms] + [self.final]

    @property
    def blocks(self) -> list[str]:
        """The block modules, in stream order."""
        return list(dict.fromkeys(b.block for b in self.branches))

    @property
    def tied(self) -> bool:
        return any(r.weight == self.embeddings[0].weight for r in self.final.readers)

    @property
    def layer_norm(self) -> bool:
        return any(n.kind == "layer" for n in self.norms)

    def summary(self) -> str:
        kinds = sorted({n.kind for n in self.norms})
        return (f"stream width {self.width}, {len(self.blocks)} blocks, {len(self.branches)} residual adds, "
                f"norms: {'/'.join(kinds)}, head {'tied' if self.tied else 'untied'}")


def discover(model: torch.nn.Module, example_ids: torch.Tensor | None = None) -> Structure:
    ids = example_ids if example_ids is not None else torch.zeros(1, 8, dtype=torch.long)
    view = GraphView(export(model, ids))
    return _Discovery(view).run()


class _Discovery:
    def __init__(self, view: GraphView):
        self.v = view

    def run(self) -> Structure:
        v = self.v
        out = [n for n in v.nodes if n.op == "output"][0]
        logits = out.args[0][0] if isinstance(out.args[0], (tuple, list)) else out.args[0]
        head = v.back(logits)
        if head.op != "call_function" or head.target not in (aten.linear.default, aten.addmm.default):
            raise PassError(f"the output {describe(logits)} is not produced by a linear head")
        final = self.norm_at_output(v.back(head.args[0] if head.target == aten.linear.default else head.args[1]))
        stream = self.v.back(final[1])
        branches = []
        while True:
            step = self.residual_step(stream)
            if step is None:
                break
            prev, add, other = step
            branches.append(Branch(v.module_of(add), self.norms_reading(prev, add), self.writers(other, add)))
            stream = v.back(prev)
        if not branches:
            raise PassError(f"no residual add found before the final norm at {describe(final[1])}: "
                            "the model has no pre-norm residual stream")
        embeddings = self.embeddings(stream)
        final_norm = self.norm_from(final[0], final[1])
        width = int(stream.meta["val"].shape[-1])
        return Structure(width, embeddings, branches[::-1], final_norm)

    def norm_at_output(self, node: fx.Node):
        """The norm module that produced `node` and the stream value it read."""
        mod = self.v.module_of(node)
        members = [n for n in self.v.nodes if self.v.module_of(n) == mod and n.op == "call_function"]
        inputs = [a for n in members for a in n.all_input_nodes
                  if a not in members and a.op != "placeholder" and self.v.module_of(a) != mod]
        if not members or len({*inputs}) != 1:
            raise PassError(f"the head reads {describe(node)} from module {mod!r}, which is not a norm "
                            "with a single input")
        return mod, inputs[0]

    def residual_step(self, stream: fx.Node):
        """If `stream` is a residual add, return (previous stream value, add, branch operand)."""
        if stream.op != "call_function" or stream.target != aten.add.Tensor:
            return None
        a, b = stream.args
        if not (isinstance(a, fx.Node) and isinstance(b, fx.Node)):
            return None
        if self.v.is_ancestor(a, b):
            return a, stream, b
        if self.v.is_ancestor(b, a):
            return b, stream, a
        return None

    def norms_reading(self, prev: fx.Node, add: fx.Node) -> list[Norm]:
        aliases = self.v.aliases(self.v.back(prev))
        norms: dict[str, Norm] = {}
        for u in self.v.users(aliases):
            if u is add:
                continue
            mod = self.v.module_of(u)
            if mod not in norms:
                norms[mod] = self.norm_from(mod, prev, reader_of=describe(add))
        if not norms:
            raise PassError(f"the residual add {describe(add)} has a branch that reads the stream "
                            "without a norm (post-norm or norm-free block): cannot rotate it")
        return list(norms.values())

    def norm_from(self, mod: str, stream: fx.Node, reader_of: str = "the head") -> Norm:
        v = self.v
        # A cast inside the norm may be the very tensor the residual add reads: it is the stream, not the norm.
        members = {n for n in v.nodes if v.module_of(n) == mod and n.op == "call_function"}
        members -= v.aliases(v.back(stream))
        ops = {n.target for n in members} - {aten._assert_tensor_metadata.default}
        where = f"norm module {mod!r} (before {reader_of})"
        if not mod:
            raise PassError(f"the stream is read at the top level of the model before {reader_of}, "
                            "not by a norm module")
        out = [n for n in members if any(u not in members for u in n.users)]
        if len(out) != 1:
            raise PassError(f"{where} has {len(out)} outputs; a norm has one")
        params = sorted({v.param(a) for n in members for a in n.args if v.param(a)})
        if aten.layer_norm.default in ops:
            ln = next(n for n in members if n.target == aten.layer_norm.default)
            args = list(ln.args) + [None] * (5 - len(ln.args))
            norm = Norm(mod, "layer", v.param(args[2]), v.param(args[3]),
                        float(args[4]) if args[4] is not None else 1e-5)
        elif ops <= _RMS_OPS and {aten.pow.Tensor_Scalar, aten.rsqrt.default, aten.mean.dim} <= ops:
            norm = self.decomposed_rms(mod, members, params, where)
        elif aten.rms_norm.default in ops:
            rn = next(n for n in members if n.target == aten.rms_norm.default)
            eps = rn.args[3] if len(rn.args) > 3 and rn.args[3] is not None else torch.finfo(torch.float32).eps
            norm = Norm(mod, "rms", v.param(rn.args[2]) if len(rn.args) > 2 else None, None, float(eps))
        else:
            names = ", ".join(sorted(str(o) for o in ops))
            raise PassError(f"module {mod!r} reads the residual stream before {reader_of} and computes [{names}], "
                            "which is neither LayerNorm nor RMSNorm: SliceGPT needs every reader of the stream "
                            "behind a norm (a pre-norm transformer); post-norm or norm-free blocks cannot be rotated")
        norm.readers = self.readers(out[0], where)
        return norm

    def decomposed_rms(self, mod: str, members: set[fx.Node], params: list[str], where: str) -> Norm:
        mean = next(n for n in members if n.target == aten.mean.dim)
        if list(mean.args[1]) not in ([-1], [mean.args[0].meta["val"].dim() - 1]):
            raise PassError(f"{where} averages over axes {mean.args[1]}, not the hidden axis")
        eps_add = next((u for u in mean.users if u.target == aten.add.Tensor), None)
        eps = float(eps_add.args[1]) if eps_add is not None and isinstance(eps_add.args[1], (int, float)) else 0.0
        if len(params) > 1:
            raise PassError(f"{where} uses parameters {params}; an RMSNorm has at most a scale")
        offset = 0.0
        for n in members:
            # Gemma computes its scale as (1 + weight): record the constant so the scale can be rewritten.
            if n.target == aten.add.Tensor and self.v.param(n.args[0]) and isinstance(n.args[1], (int, float)):
                offset = float(n.args[1])
            if n.target == aten.add.Tensor and self.v.param(n.args[1]) and isinstance(n.args[0], (int, float)):
                offset = float(n.args[0])
        return Norm(mod, "rms", params[0] if params else None, None, eps, offset)

    def readers(self, out: fx.Node, where: str) -> list[Linear]:
        found = []
        aliases = self.v.aliases(out)
        for u in self.v.users(aliases):
            operand = next(a for a in u.args if a in aliases) if any(a in aliases for a in u.args) else None
            lin = linear_weight_axes(self.v, u, operand) if operand is not None else None
            if lin is None or lin[0] is None:
                raise PassError(f"the output of {where} feeds {describe(u)}, which is not a linear map")
            found.append(Linear(self.v.module_of(u), lin[0], lin[1], lin[2]))
        return found

    def writers(self, other: fx.Node, add: fx.Node) -> list[Linear]:
        """The linear maps whose outputs sum to the branch operand of a residual add."""
        found, todo = [], [other]
        while todo:
            n = self.v.back(todo.pop())
            if n.op == "call_function" and n.target == aten.add.Tensor and all(isinstance(a, fx.Node) for a in n.args):
                todo.extend(n.args)
                continue
            lin = None
            if n.op == "call_function" and n.target in (aten.linear.default, aten.addmm.default):
                operand = n.args[0] if n.target == aten.linear.default else n.args[1]
                lin = linear_weight_axes(self.v, n, operand)
            if lin is None or lin[0] is None:
                raise PassError(f"the branch into residual add {describe(add)} comes from {describe(n)} in "
                                f"module {self.v.module_of(n)!r}, not from a linear map (e.g. a norm after "
                                "the branch), so the rotation cannot be folded into it")
            found.append(Linear(self.v.module_of(n), lin[0], lin[1], 1 - lin[2]))
        return found[::-1]

    def embeddings(self, start: fx.Node) -> list[Linear]:
        found, todo = [], [start]
        while todo:
            n = self.v.back(todo.pop())
            if n.op == "call_function" and n.target == aten.add.Tensor and all(isinstance(a, fx.Node) for a in n.args):
                todo.extend(n.args)
            elif n.op == "call_function" and n.target == aten.embedding.default and self.v.param(n.args[0]):
                token = self.v.back(n.args[1]).op == "placeholder"
                found.append((not token, Linear(self.v.module_of(n), self.v.param(n.args[0]), None, 1)))
            else:
                raise PassError(f"the residual stream starts at {describe(n)} in module "
                                f"{self.v.module_of(n)!r}, which is not an embedding lookup")
        # The token table, indexed by the model input itself, goes first.
        return [e for _, e in sorted(found, key=lambda f: f[0])]


_RMS_OPS = {aten.pow.Tensor_Scalar, aten.mean.dim, aten.add.Tensor, aten.add.Scalar, aten.rsqrt.default,
            aten.mul.Tensor, aten.to.dtype, aten.to.dtype_layout, aten._to_copy.default, aten.type_as.default}
