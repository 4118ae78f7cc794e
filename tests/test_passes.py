"""Each cleanup pass: a positive case (graph shrinks by the expected amount, outputs unchanged)
and a negative case (the pass must not fire); plus the Pipeline's dump and error handling."""
from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.fx as fx

from passes.base import Pass, PassError, Pipeline, graph_pass
from passes.cleanup import CHECKS, CLEANUP, default_pipeline
from passes.cse import cse
from passes.dce import dce
from passes.fold_constants import fold_constants
from passes.fold_linear import explain, fold_linear
from passes import rows as rows_pass
from passes.cleanup import ONNX_LOWERING, for_target
from common.dtypes import name_of
from tests.graphs import TARGETS, TRACE, build, run_torch, sample


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def model(params: dict[str, torch.Tensor], rows: list[tuple], outputs: list[str]) -> fx.GraphModule:
    """One f32 input x [B, N, 8]; each output is named after its row."""
    return build({"x": (("B", "N", 8), "f32")}, rows, {o: o for o in outputs}, params)


def w(*shape):
    return torch.randn(*shape)


def count(gm, op="call_function", target=None):
    return sum(n.op == op and (target is None or n.target is target) for n in gm.graph.nodes)


def n_params(gm):
    return sum(1 for _ in gm.parameters())


def _static(shape):
    """A meta shape at the TRACE sizes: "B" -> 11, "N*4" -> 52."""
    return tuple(d if isinstance(d, int)
                 else math.prod(TRACE[f] if f in TRACE else int(f) for f in d.split("*")) for d in shape)


class _MetaCheck(fx.Interpreter):
    """Runs the module and lists the nodes whose meta shape or dtype disagrees with the run."""

    def __init__(self, gm):
        super().__init__(gm)
        self.errors = []

    def run_node(self, n):
        out = super().run_node(n)
        if n.op in ("placeholder", "get_attr", "call_function"):
            meta = (_static(n.meta["shape"]), n.meta["dtype"])
            if meta != (tuple(out.shape), name_of(out.dtype)):
                self.errors.append(f"{n.name}: meta {meta}, ran {tuple(out.shape)} {out.dtype}")
        return out


def apply(passes, gm):
    """Run passes; check outputs match the unoptimized module's and the contract still holds."""
    before = copy.deepcopy(gm)
    names = next(iter(gm.graph.find_nodes(op="output"))).meta["names"]
    for p in passes:
        gm = p(gm)
    inputs = sample(gm, TRACE, seed=1)
    torch.testing.assert_close(run_torch(gm, inputs), run_torch(before, inputs), rtol=1e-5, atol=1e-5)
    gm.graph.lint()
    checker = _MetaCheck(gm)
    checker.run(*inputs.values())
    assert checker.errors == []
    assert next(iter(gm.graph.find_nodes(op="output"))).meta["names"] == names
    return gm


# --- dce ---------------------------------------------------------------------------------------

def test_dce_removes_unused_nodes_and_parameters():
    gm = model({"w": w(8, 8), "blk.unused": w(8), "blk.also": w(8)},
               [("y", TARGETS.linear, ("x", "w")), ("dead", TARGETS.add, ("x", "blk.unused")),
                ("dead2", TARGETS.relu, ("dead",))], ["y"])
    gm = apply([dce], gm)
    assert count(gm) == 1 and count(gm, "get_attr") == 1
    assert n_params(gm) == 1
    assert not hasattr(gm, "blk")  # the submodule held only unread parameters


def test_dce_keeps_used_nodes_and_unused_inputs():
    gm = model({"w": w(8, 8)}, [("y", TARGETS.relu, ("w",))], ["y"])  # x is an unused input
    size = len(gm.graph.nodes)
    gm = apply([dce], gm)
    assert len(gm.graph.nodes) == size and count(gm, "placeholder") == 1 and n_params(gm) == 1


# --- fold_constants ----------------------------------------------------------------------------

def test_fold_constants_turns_parameter_ops_into_buffers():
    gm = model({"w": w(8, 8), "b": w(8)},
               [("w2", TARGETS.mul, ("w", 2.0)), ("wt", TARGETS.permute, ("w2", (1, 0))),
                ("bb", TARGETS.add, ("b", "b")), ("y", TARGETS.linear, ("x", "wt", "bb"))], ["y"])
    gm = apply([fold_constants, dce], gm)
    assert count(gm) == 1  # only the linear on x is left
    assert n_params(gm) == 0 and len(list(gm.buffers())) == 2


def test_fold_constants_leaves_ops_on_inputs():
    gm = model({"w": w(8)}, [("y", TARGETS.add, ("x", "w")), ("z", TARGETS.relu, ("y",))], ["z"])
    code = gm.code
    gm = apply([fold_constants], gm)
    assert gm.code == code and len(list(gm.buffers())) == 0


def test_fold_constants_never_reuses_an_attribute_name():
    gm = model({"w": w(8), "folded_y": w(8)}, [("y", TARGETS.neg, ("w",)), ("z", TARGETS.add, ("x", "y"))],
               ["z"])
    gm = apply([fold_constants], gm)
    assert hasattr(gm, "folded_y_1") and count(gm, "get_attr") == 3


# --- cse ---------------------------------------------------------------------------------------

def test_cse_merges_repeated_subexpressions():
    gm = model({"w": w(8)},
               [("a1", TARGETS.relu, ("x",)), ("a2", TARGETS.relu, ("x",)),
                ("b1", TARGETS.add, ("a1", "w")), ("b2", TARGETS.add, ("a2", "w")),
                ("c", TARGETS.concat, (["b1", "b2"], -1))], ["c"])
    gm = apply([cse], gm)
    assert count(gm) == 3  # relu, add, concat


def test_cse_merges_repeated_get_attr():
    gm = model({"w": w(8)}, [("y", TARGETS.add, ("x", "w"))], ["y"])
    first = next(iter(gm.graph.find_nodes(op="get_attr")))
    with gm.graph.inserting_after(first):
        again = gm.graph.get_attr("w")
    again.meta.update(first.meta)
    (add,) = first.users
    add.replace_input_with(first, again)
    gm.recompile()
    assert count(gm, "get_attr") == 2
    gm = apply([cse], gm)
    assert count(gm, "get_attr") == 1


def test_cse_keeps_different_arguments():
    gm = model({}, [("s0", TARGETS.reduce_sum, ("x", -1)), ("s1", TARGETS.reduce_sum, ("x", -1, True)),
                    ("p", TARGETS.add, ("x", 0.0)), ("n", TARGETS.add, ("x", -0.0)),
                    ("i", TARGETS.mul, ("x", 1)), ("f", TARGETS.mul, ("x", 1.0))],
               ["s0", "s1", "p", "n", "i", "f"])
    gm = apply([cse], gm)
    assert count(gm) == 6


# --- fold_linear -------------------------------------------------------------------------------

@pytest.mark.parametrize("b1,b2", [(True, True), (True, False), (False, True), (False, False)])
def test_fold_linear_folds_a_pair(b1, b2):
    params = {"w1": w(6, 8), "w2": w(4, 6)} | ({"b1": w(6)} if b1 else {}) | ({"b2": w(4)} if b2 else {})
    gm = model(params, [("h", TARGETS.linear, ("x", "w1", "b1" if b1 else None)),
                        ("y", TARGETS.linear, ("h", "w2", "b2" if b2 else None))], ["y"])
    gm = apply([fold_linear, fold_constants, dce], gm)
    assert [n.name for n in gm.graph.nodes if n.op == "call_function"] == ["y"]  # outer's name kept
    # A folded bias exists only with b1; a lone b2 stays the parameter it was.
    assert len(list(gm.buffers())) == 1 + b1 and n_params(gm) == (b2 and not b1)


def test_fold_linear_folds_a_chain_of_three():
    gm = model({"w1": w(8, 8), "b1": w(8), "w2": w(8, 8), "b2": w(8), "w3": w(4, 8)},
               [("h1", TARGETS.linear, ("x", "w1", "b1")),
                ("h2", TARGETS.linear, ("h1",), {"weight": "w2", "bias": "b2"}),  # spelled as kwargs
                ("y", TARGETS.linear, ("h2", "w3"))], ["y"])
    gm = apply(CLEANUP, gm)
    assert count(gm) == 1 and n_params(gm) == 0


def test_fold_linear_refuses_a_relu_between():
    gm = model({"w1": w(8, 8), "w2": w(8, 8)},
               [("h", TARGETS.linear, ("x", "w1")), ("r", TARGETS.relu, ("h",)),
                ("y", TARGETS.linear, ("r", "w2"))], ["y"])
    gm = apply([fold_linear], gm)
    assert count(gm, target=TARGETS.linear) == 2 and explain(gm) == []


@pytest.mark.parametrize("body,outputs,reason", [
    ([("h", TARGETS.linear, ("x", "w1")), ("y", TARGETS.linear, ("h", "w2")), ("z", TARGETS.relu, ("h",))],
     ["y", "z"], "inner linear h of y has 2 users"),
    ([("h", TARGETS.linear, ("x", "w1")), ("v", TARGETS.reduce_mean, ("x", 0)), ("y", TARGETS.linear, ("h", "v"))],
     ["y"], "weight v of y is computed at run time, not a parameter"),
    ([("h", TARGETS.linear, ("x", "lo")), ("y", TARGETS.linear, ("h", "hi"))],
     ["y"], "folding h into y grows the weights: [8, 8] is larger than [2, 8] + [8, 2]"),
])
def test_fold_linear_refusals_carry_reasons(body, outputs, reason):
    gm = model({"w1": w(8, 8), "w2": w(8, 8), "lo": w(2, 8), "hi": w(8, 2)}, body, outputs)
    assert explain(gm) == [reason]
    size = len(gm.graph.nodes)
    gm = apply([fold_linear], gm)
    assert len(gm.graph.nodes) == size


# --- rows --------------------------------------------------------------------------------------

def test_rows_flattens_a_per_element_mlp_once():
    gm = model({"w1": w(6, 8), "b1": w(6), "w2": w(5, 6)},
               [("h", TARGETS.linear, ("x", "w1", "b1")), ("a", TARGETS.relu, ("h",)), ("g", TARGETS.gelu, ("a",)),
                ("o", TARGETS.linear, ("g", "w2")), ("y", TARGETS.reduce_sum, ("o", 1))], ["y"])
    size = len(gm.graph.nodes)
    gm = apply([rows_pass.rows], gm)
    assert len(gm.graph.nodes) == size + 2  # one reshape before the chain, one unflatten after
    assert count(gm, target=TARGETS.reshape) == count(gm, target=TARGETS.unflatten_rows) == 1
    h = next(n for n in gm.graph.nodes if n.name == "h")
    assert h.args[0].target is TARGETS.reshape and h.meta["shape"] == ("B*N", 6)


def test_rows_stops_the_chain_at_a_shared_value():
    gm = model({"w1": w(6, 8), "w2": w(6, 6)},
               [("h", TARGETS.linear, ("x", "w1")), ("a", TARGETS.relu, ("h",)), ("o", TARGETS.linear, ("a", "w2")),
                ("y", TARGETS.add, ("a", "o"))], ["y"])
    gm = apply([rows_pass.rows], gm)
    # h..a is one chain (a has two users), o another: each flattened on its own.
    assert count(gm, target=TARGETS.unflatten_rows) == 2


@pytest.mark.parametrize("rows, reason", [
    ([("p", TARGETS.reduce_sum, ("x", 1)), ("h", TARGETS.linear, ("p", "w")), ("y", TARGETS.relu, ("h",))],
     "chain h..y is on rank-2 rows already"),
    ([("a", TARGETS.relu, ("x",)), ("y", TARGETS.tanh, ("a",))],
     "chain a..y holds no linear with a 2-D parameter weight"),
])
def test_rows_leaves_2d_rows_and_chains_without_a_linear(rows, reason):
    gm = model({"w": w(6, 8)}, rows, ["y"])
    assert rows_pass.explain(gm) == [reason]
    code = gm.code
    gm = apply([rows_pass.rows], gm)
    assert gm.code == code


def test_rows_runs_for_the_onnx_target_only_after_the_checks():
    assert ONNX_LOWERING == [rows_pass.rows]
    assert for_target(default_pipeline(), "onnx").names() == default_pipeline().names() + ["rows"]
    assert for_target(default_pipeline(), "triton").names() == default_pipeline().names()


# --- the pipeline ------------------------------------------------------------------------------

def test_default_pipeline_is_the_cleanup_list_then_the_checks():
    assert default_pipeline().names() == [p.name for p in CLEANUP + CHECKS] == \
        ["cse", "fold_linear", "fold_constants", "dce", "symmetry"]
    assert all(isinstance(p, Pass) for p in CLEANUP + CHECKS)


def test_pipeline_dumps_after_the_named_pass():
    gm = model({"w1": w(8, 8), "w2": w(8, 8)},
               [("h", TARGETS.linear, ("x", "w1")), ("y", TARGETS.linear, ("h", "w2"))], ["y"])
    seen = []
    default_pipeline().run(gm, dump_after=["fold_linear", "dce"],
                           dump=lambda step, g: seen.append((step.name, count(g, target=TARGETS.matmul))))
    assert seen == [("fold_linear", 1), ("dce", 0)]


def test_pipeline_rejects_unknown_dump_names():
    gm = model({}, [("y", TARGETS.relu, ("x",))], ["y"])
    with pytest.raises(PassError, match="no_such_pass"):
        default_pipeline().run(gm, dump_after=["no_such_pass"])


def test_pipeline_names_the_pass_that_crashed():
    @graph_pass("always fails")
    def broken(gm):
        raise ValueError("boom")

    gm = model({}, [("y", TARGETS.relu, ("x",))], ["y"])
    with pytest.raises(PassError, match=r"pass 'broken' failed after \[cse\]: boom"):
        Pipeline([cse, broken]).run(gm)
