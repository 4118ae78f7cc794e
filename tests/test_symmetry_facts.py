"""Every fact the prover can infer prints, and is claimable where a claim makes sense (issue 21,
class 3): an `index(N)` input returned as an output crashed `invc check` (StopIteration from the
table's wording), and no command may end in a traceback on a spec that parses."""
import random
import typing

import pytest
import torch

from compiler import cli
from dsl.groups import (Broken, Fact, FrameBasis, Invariant, Outer, Permutations, Permuted, Relabeled, Rotated,
                        Simplex, Squared, Stacked, Translated, Weighted)
from dsl.program import load_text
from dsl.symmetry import Verdict, describe, render, verdicts
from dsl.symmetry_rules import Operand, what
from ops.registry import check

SHAPE = ("B", "N", 3)
ONE_OF_EACH = {  # a fact of every kind the prover has: a new kind must say how it prints
    Invariant: Invariant(), Simplex: Simplex(1), Permuted: Permuted((1,)), Relabeled: Relabeled((0,), "N"),
    Rotated: Rotated(2), Translated: Translated(2), Squared: Squared(2), Weighted: Weighted(2, 1),
    Outer: Outer((1, 2)), Stacked: Stacked(2, True),
    FrameBasis: FrameBasis("f"), Broken: Broken("relu of a vector", "y", "s.inv:3:7"),
}


def test_every_fact_kind_describes_itself_and_names_a_tensor():
    kinds = set(typing.get_args(Fact)) | {Simplex}
    assert kinds <= set(ONE_OF_EACH), f"facts without an example here: {kinds - set(ONE_OF_EACH)}"
    for fact in ONE_OF_EACH.values():
        words, noun = describe(fact, SHAPE), what(Operand(fact, SHAPE))
        assert isinstance(words, str) and words and isinstance(noun, str) and noun, fact
        cell = Verdict("y", Permutations("N"), None, fact, SHAPE, None).cell()
        assert cell.startswith("broken" if isinstance(fact, Broken) else ("invariant", "equivariant")), cell


EDGES = """model m() {{
  symmetry {groups}
  input h: f32[N, 3]{pos}
  input senders: i64[{ids}] is index(N)
  input receivers: i64[E] is index(N)
  msg = gather(h, receivers, axis=N)
  out = scatter_pool(msg, receivers, like=h)
  output out
  output senders{claim}
}}
"""


def edge_spec(rng: random.Random) -> tuple[str, str | None, bool]:
    """A message-passing layer that also returns an edge list: its groups, the edge list's shape, and
    the claim on it. Returns the spec, the claim, and whether the claim holds (judged from the groups'
    definitions: S(N) relabels ids of N, no other group touches integers, S(E) reorders edges)."""
    groups = ["S(N)"] + rng.sample(["S(E)", "E(3)"], rng.randrange(3))
    claim = rng.choice([None, "index(N)", "invariant", "scalar"])
    return edges(groups, rng.choice(["E", "E, 2"]), claim), claim, claim in (None, "index(N)")


def edges(groups: list, ids: str, claim: str | None) -> str:
    pos = "\n  input pos: f32[N, 3] is position" if "E(3)" in groups else ""
    return EDGES.format(groups=", ".join(groups), pos=pos, ids=ids, claim=f" is {claim}" if claim else "")


@pytest.mark.parametrize("seed", range(6))
def test_an_index_input_returned_as_an_output_prints_and_its_claim_is_judged(seed, tmp_path, capsys):
    text, claim, holds = edge_spec(random.Random(seed))
    path = tmp_path / "edges.inv"
    path.write_text(text)
    code = cli.main(["check", str(path)])
    out, err = capsys.readouterr()
    assert code == (0 if holds else 2), out + err
    if holds:
        assert "senders" in out and "relabelled indices of N" in out, out
    else:
        assert "output `senders` is relabelled indices of N under S(N)" in err and "index(N)" in err, err


def test_index_claims_agree_with_the_numbers():
    """The claim `is index(N)` means what verify measures: ids follow their elements under S(N),
    stay put under every other group; a spec that drops the role claims what S(N) does not do."""
    m = check(load_text(edges(["S(N)", "S(E)", "E(3)"], "E, 2", "index(N)"), "e.inv"))
    table = verdicts(m)
    assert all(v.holds for v in table) and "index(N)" in render(m, table)
    from compiler.verify import SIZES, assert_equivariant, sample_inputs
    from compiler.lower import lower
    assert_equivariant(lower(m), sample_inputs(m, SIZES))


INDEX_OUT = """model m() {
  symmetry S(N), E(3)
  input pos: f32[N, 3] is position
  input senders: i64[E] is index(N)
  input receivers: i64[E] is index(N)
  d = gather(pos, senders, axis=N) - gather(pos, receivers, axis=N)
  y = scatter_pool(d, receivers, like=pos)
  output y is vector
  output senders is index(N)
  output receivers
}
"""


@pytest.mark.parametrize("command", [["check"], ["graph"], ["compile", "-o", "{out}/m.onnx"],
                                     ["compile", "--target", "triton", "-o", "{out}/tr"],
                                     ["verify", "--trials", "2"], ["demo"]])
def test_no_command_ends_in_a_traceback_on_index_outputs(command, tmp_path, capsys):
    spec = tmp_path / "m.inv"
    spec.write_text(INDEX_OUT)
    argv = [command[0], str(spec), *(a.format(out=tmp_path) for a in command[1:])]
    assert cli.main(argv) == 0, capsys.readouterr()
    if command[0] == "compile" and command[-1].endswith(".onnx"):
        assert cli.main(["run", str(tmp_path / "m.onnx"), "--random", "N=5,E=4"]) == 0
        assert "senders: int64 [4]" in capsys.readouterr().out


def test_a_float_output_claimed_index_is_a_spec_error(tmp_path, capsys):
    spec = tmp_path / "m.inv"
    spec.write_text(INDEX_OUT.replace("output y is vector", "output y is index(N)"))
    assert cli.main(["check", str(spec)]) == 2
    assert "output `y` is index(N), so it must hold integers" in capsys.readouterr().err
