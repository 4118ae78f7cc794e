"""Static symmetry inference over the checker's op graph, the claims it proves or refuses, and the
table `invc check` prints.

For every declared group and every tensor, `infer` derives one fact from the inputs' roles through
the symmetry rules of the model's vocabulary (ops/), applied by dsl/symmetry_rules.py. A claim holds
when the output's fact is exactly the claimed one; `enforce` refuses a spec at the first op that
broke a claim. Torch-free.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from dsl import ast
from dsl.errors import SpecError, source_line
from dsl.groups import Broken, Fact, Invariant, Permuted, Relabeled
from dsl.symmetry_rules import Call, Operand, apply
from dsl.types import CheckedModel, Value

def spelled(op: str, pos: str, aliases: dict) -> str:
    """The op as the spec wrote it: `aliases` names the spec ops that lower to a graph op of another name."""
    file, line, column = pos.rsplit(":", 2)
    word = re.match(r"[A-Za-z_]\w*(?=\s*\()", source_line(file, int(line))[int(column) - 1:])
    return word.group(0) if word and word.group(0) in aliases.get(op, ()) else op


def to_pos(pos: str) -> ast.Pos:
    file, line, column = pos.rsplit(":", 2)
    return ast.Pos(file, int(line), int(column))


def infer(model: CheckedModel, group) -> dict[int, Fact]:
    """The fact of every value (by id) under `group`."""
    facts = {p.value.id: group.input_fact(p.type.shape, p.role) for p in model.inputs}
    inputs, ops = {p.value.id for p in model.inputs}, model.vocabulary

    def operand(a):
        if isinstance(a, Value):
            return Operand(facts[a.id], a.type.shape, a.id in inputs)
        return tuple(map(operand, a)) if isinstance(a, tuple) else a

    for step, node in enumerate(model.nodes):
        weights = tuple(Operand(Invariant(), p.shape) for p in node.params.values())
        call = Call(node.op, tuple(map(operand, node.args)) + weights,
                    {k: operand(v) for k, v in node.kwargs.items()}, node.value.type.shape,
                    node.value.name, str(node.pos), step, spelled(node.op, str(node.pos), ops.aliases),
                    origin=node.origin)
        facts[node.value.id] = apply(call, group, ops.graph)
    return facts


@dataclass(frozen=True)
class Verdict:
    """One output under one group: what it is claimed to be (None: unclaimed) and what it is."""
    output: str
    group: object
    claim: Fact | None
    fact: Fact
    shape: tuple
    pos: ast.Pos

    @property
    def holds(self) -> bool:
        return self.claim is None or self.claim == self.fact

    def cell(self) -> str:
        if isinstance(self.fact, Broken):
            return f"broken: {self.fact.reason} (line {to_pos(self.fact.pos).line})"
        what = describe(self.fact, self.shape)
        return what if isinstance(self.fact, Invariant) else f"equivariant ({what})"


def describe(fact: Fact, shape: tuple) -> str:
    return fact.describe(shape)


def verdicts(model: CheckedModel, facts_of=None) -> list[Verdict]:
    """Every output under every declared group; `facts_of(group)` maps output name -> fact."""
    table = []
    for group in model.groups:
        facts = facts_of(group) if facts_of else _output_facts(model, group)
        for port in model.outputs:
            shape = port.value.type.shape
            table.append(Verdict(port.name, group, group.claim(shape, port.role), facts[port.name], shape, port.pos))
    return table


def _output_facts(model: CheckedModel, group) -> dict[str, Fact]:
    facts = infer(model, group)
    return {p.name: facts[p.value.id] for p in model.outputs}


def first_failure(table: list[Verdict]) -> Verdict | None:
    """The failed claim to report: the one broken earliest in program order, else the first."""
    failed = [v for v in table if not v.holds]
    broken = [v for v in failed if isinstance(v.fact, Broken)]
    return min(broken, key=lambda v: v.fact.step) if broken else (failed[0] if failed else None)


def refusal(v: Verdict) -> SpecError:
    kind = "invariance" if isinstance(v.claim, Invariant) else "equivariance"
    if isinstance(v.fact, Broken):
        return SpecError.at(to_pos(v.fact.pos), f"{v.fact.reason} breaks {v.group} {kind} of output "
                                                f"`{v.output}`", v.fact.hint)
    hint = f"pool over {v.group.dim} with sum/mean/max" if isinstance(v.fact, Permuted) and \
        isinstance(v.claim, Invariant) else f"claim it `is index({v.fact.dim})`" if isinstance(v.fact, Relabeled) \
        else "declare what the output is: is invariant, is position or is vector"
    return SpecError.at(v.pos, f"output `{v.output}` is {describe(v.fact, v.shape)} under {v.group}, "
                               f"but is claimed {describe(v.claim, v.shape)}", hint)


def enforce(model: CheckedModel) -> list[Verdict]:
    """The verdicts when every claim holds; else a SpecError at the op that broke one."""
    table = verdicts(model)
    failed = first_failure(table)
    if failed is not None:
        raise refusal(failed)
    return table


def render(model: CheckedModel, table: list[Verdict]) -> str:
    """The output × group table, e.g. for `invc check`."""
    groups = list(model.groups)
    head = ["output", "claim", *map(str, groups)]
    rows = [[p.name, p.role or "-", *(next(v.cell() for v in table if v.output == p.name and v.group == g)
                                       for g in groups)] for p in model.outputs]
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    return "\n".join("  " + "  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in [head, *rows])
