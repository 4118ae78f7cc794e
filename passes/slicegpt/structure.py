"""Structure discovery: find the residual stream of a pre-norm transformer in its exported graph.

The stream is the chain of residual adds `s_k = s_{k-1} + branch_k (+ branch_k' ...)`, recognised because the
stream term is an ancestor of every branch term (the branches read the stream); parallel blocks add several. Every stream value may be
read only by norms and by its residual add; each norm's output only by linear maps (readers); each
branch must be a sum of linear outputs (writers). Anything else is refused with the node that broke
the rule, so a model is never silently transformed wrongly.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.fx as fx

from passes.base import PassError
from passes.slicegpt.graph import GraphView, aten, describe, export, linear_map


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
        # A function of the logits alone (soft-capping) does not see the stream's basis.
        while head.op == "call_function" and head.target in _LOGIT_MAPS:
            head = v.back(head.args[0])
        lin = linear_map(v, head)
        if lin is None:
            raise PassError(f"the output {describe(logits)} is not produced by a linear head")
        final = self.norm_at_output(v.back(lin.operand))
        stream = self.v.back(final[1])
        branches = []
        while True:
            step = self.residual_step(stream)
            if step is None:
                break
            prev, adds, terms = step
            # Writers first: a norm on a sublayer's output is the reason to refuse such a block.
            writers = self.writers(terms, adds[0])
            branches.append(Branch(v.module_of(adds[0]), self.norms_reading(prev, adds), writers))
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
        """If `stream` is a residual add, return (previous stream value, the adds, the branch terms)."""
        terms, adds = self.sum_terms(stream)
        for t in terms if len(terms) > 1 else []:
            if all(o is t or self.v.is_ancestor(t, o) for o in terms):
                return t, adds, [o for o in terms if o is not t]
        return None

    def sum_terms(self, node: fx.Node) -> tuple[list[fx.Node], list[fx.Node]]:
        """The terms of the sum rooted at `node` and its adds; an inner add counts only if the sum alone uses it
        (otherwise it is a stream value of its own)."""
        if not self.is_sum(node):
            return [node], []
        terms, adds, todo = [], [node], list(node.args)
        while todo:
            n = todo.pop(0)
            if self.is_sum(n) and len(self.v.users({n})) == 1:
                adds.append(n)
                todo.extend(n.args)
            else:
                terms.append(n)
        return terms, adds

    def is_sum(self, n) -> bool:
        """An add of two computed tensors (a bias parameter added to a product belongs to that product)."""
        return (isinstance(n, fx.Node) and n.op == "call_function" and n.target in _ADDS
                and all(isinstance(a, fx.Node) and not self.v.param(a) for a in n.args))

    def norms_reading(self, prev: fx.Node, adds: list[fx.Node]) -> list[Norm]:
        aliases = self.v.aliases(self.v.back(prev))
        norms: dict[str, Norm] = {}
        for u in self.v.users(aliases):
            if u in adds:
                continue
            mod = self.v.module_of(u)
            if mod not in norms:
                norms[mod] = self.norm_from(mod, prev, reader_of=describe(adds[0]))
        if not norms:
            raise PassError(f"the residual add {describe(adds[0])} has a branch that reads the stream "
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
        if aten.layer_norm.default in ops:
            ln = self.single_op(members, out[0], aten.layer_norm.default, where)
            args = list(ln.args) + [None] * (5 - len(ln.args))
            weight, offset = self.scale_param(args[2], where)
            norm = Norm(mod, "layer", weight, v.param(args[3]), float(args[4]) if args[4] is not None else 1e-5, offset)
        elif ops <= _NORM_OPS and {aten.pow.Tensor_Scalar, aten.rsqrt.default, aten.mean.dim} <= ops:
            norm = self.decomposed(mod, members, where)
        elif aten.rms_norm.default in ops:
            rn = self.single_op(members, out[0], aten.rms_norm.default, where)
            eps = rn.args[3] if len(rn.args) > 3 and rn.args[3] is not None else torch.finfo(torch.float32).eps
            weight, offset = self.scale_param(rn.args[2] if len(rn.args) > 2 else None, where)
            norm = Norm(mod, "rms", weight, None, float(eps), offset)
        else:
            names = ", ".join(sorted(str(o) for o in ops))
            raise PassError(f"module {mod!r} reads the residual stream before {reader_of} and computes [{names}], "
                            "which is neither LayerNorm nor RMSNorm: SliceGPT needs every reader of the stream "
                            "behind a norm (a pre-norm transformer); post-norm or norm-free blocks cannot be rotated")
        norm.readers = self.readers(out[0], where)
        return norm

    def single_op(self, members: set[fx.Node], out: fx.Node, target, where: str) -> fx.Node:
        """The one norm op of a module, which must also be what the module returns."""
        found = [n for n in members if n.target == target]
        if len(found) != 1 or self.v.back(out) is not found[0]:
            raise PassError(f"{where} computes more than one {target} (or more after it): not a plain norm")
        return found[0]

    def param_form(self, node) -> tuple[str, float] | None:
        """A parameter, or a parameter plus a constant (Gemma and Nemotron store the scale as scale - 1)."""
        if self.v.param(node):
            return self.v.param(node), 0.0
        n = self.v.back(node) if isinstance(node, fx.Node) else None
        if n is None or n.op != "call_function" or n.target != aten.add.Tensor:
            return None
        a, b = n.args
        if self.v.param(a) and isinstance(b, (int, float)):
            return self.v.param(a), float(b)
        if self.v.param(b) and isinstance(a, (int, float)):
            return self.v.param(b), float(a)
        return None

    def scale_param(self, node, where: str) -> tuple[str | None, float]:
        if node is None:
            return None, 0.0
        form = self.param_form(node)
        if form is None:
            raise PassError(f"{where} takes its scale from {describe(self.v.back(node))}, "
                            "not from a parameter (plus a constant)")
        return form

    def decomposed(self, mod: str, members: set[fx.Node], where: str) -> Norm:
        """A norm spelt out in ATen ops: RMSNorm (pow/mean/rsqrt/mul) or, with the mean subtracted, LayerNorm."""
        v = self.v
        means = [n for n in members if n.target == aten.mean.dim]
        for mean in means:
            if list(mean.args[1]) not in ([-1], [mean.args[0].meta["val"].dim() - 1]):
                raise PassError(f"{where} averages over axes {mean.args[1]}, not the hidden axis")
        var = next((m for m in means if v.back(m.args[0]).target == aten.pow.Tensor_Scalar), None)
        if var is None:
            raise PassError(f"{where} takes no mean of squares: not a norm")
        eps_add = next((u for u in var.users if u.target == aten.add.Tensor), None)
        eps = float(eps_add.args[1]) if eps_add is not None and isinstance(eps_add.args[1], (int, float)) else 0.0
        centred = any(n.target == aten.sub.Tensor and v.back(n.args[1]) in means for n in members)
        if aten.sub.Tensor in {n.target for n in members} and not centred:
            raise PassError(f"{where} subtracts something other than the mean of its input: not a norm")
        scales = {self.param_form(a) for n in members if n.target == aten.mul.Tensor for a in n.args} - {None}
        biases = {v.param(a) for n in members if n.target == aten.add.Tensor
                  for a in n.args if isinstance(a, fx.Node) and v.param(a)} - {p for p, _ in scales}
        params = {v.param(a) for n in members for a in n.args if v.param(a)}
        if len(scales) > 1 or len(biases) > 1 or params != {p for p, _ in scales} | biases:
            raise PassError(f"{where} uses parameters {sorted(params)}; a norm has at most a scale and a bias")
        weight, offset = next(iter(scales)) if scales else (None, 0.0)
        return Norm(mod, "layer" if centred else "rms", weight, next(iter(biases), None), eps, offset)

    def readers(self, out: fx.Node, where: str) -> list[Linear]:
        """The linear maps reading a norm's output, also through ops that only route tokens (MoE experts)."""
        found, reached = [], self.v.aliases(out)
        frontier = self.v.users(reached)
        while frontier:
            u = frontier.pop(0)
            if u in reached or (u.target == aten.type_as.default and u.args[0] not in reached):
                continue   # type_as(other, x) reads only x's dtype
            if self.v.row_operand(u) in reached:
                routed = self.v.aliases(u)
                reached |= routed
                frontier += self.v.users(routed)
                continue
            lin = linear_map(self.v, u)
            if lin is None or lin.operand not in reached:
                raise PassError(f"the output of {where} feeds {describe(u)}, which is not a linear map")
            found.append(Linear(self.v.module_of(u), lin.weight, lin.bias, lin.in_axis))
        return found

    def writers(self, terms: list[fx.Node], add: fx.Node) -> list[Linear]:
        """The linear maps whose outputs sum to the branch terms of a residual add, also through ops that
        only route tokens and weight them per token (MoE experts)."""
        found, todo = [], list(terms)
        while todo:
            n = self.v.back(todo.pop())
            if self.is_sum(n):
                todo.extend(n.args)
                continue
            if self.v.row_operand(n) is not None:
                todo.append(self.v.row_operand(n))
                continue
            if n.op == "call_function" and n.target == aten.add.Tensor:
                # `x @ W.T + b`: the product carries its bias.
                n = self.v.back(next((a for a in n.args if not self.v.param(a)), n))
            lin = linear_map(self.v, n)
            if lin is None:
                raise PassError(self.not_a_writer(n, add))
            found.append(Linear(self.v.module_of(n), lin.weight, lin.bias, lin.out_axis))
        return found[::-1]

    def not_a_writer(self, n: fx.Node, add: fx.Node) -> str:
        mod = self.v.module_of(n)
        ops = {m.target for m in self.v.nodes if self.v.module_of(m) == mod}
        if mod and ops & {aten.rsqrt.default, aten.layer_norm.default, aten.rms_norm.default}:
            return (f"the branch into residual add {describe(add)} ends in norm module {mod!r}: a norm on the "
                    "sublayer output (post-norm or sandwich norm) sits between the branch's linear maps and the "
                    "stream, so the rotation cannot be folded into them")
        return (f"the branch into residual add {describe(add)} comes from {describe(n)} in module {mod!r}, "
                "not from a linear map, so the rotation cannot be folded into it")

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


_NORM_OPS = {aten.pow.Tensor_Scalar, aten.mean.dim, aten.add.Tensor, aten.add.Scalar, aten.rsqrt.default,
             aten.mul.Tensor, aten.sub.Tensor, aten.to.dtype, aten.to.dtype_layout, aten._to_copy.default,
             aten.type_as.default}
_LOGIT_MAPS = {aten.tanh.default}
_ADDS = {aten.add.Tensor, aten.add_.Tensor}   # Falcon sums its parallel branches in place
