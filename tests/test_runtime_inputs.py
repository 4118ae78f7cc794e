"""The runtime checks its inputs: token ids against the embedding's table, empty batches and sets
refused alike by onnxruntime and torch, and invc's content hash of the weights in every file it writes."""
import numpy as np
import onnx
import pytest
import torch

import compiler
from compiler.cli import main
from runtime.session import VOCAB_KEY, InputError, Session
from runtime.stamp import CONTENT_KEY

ROOT = compiler.driver.Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"


@pytest.fixture(scope="module")
def transformer(tmp_path_factory):
    out = tmp_path_factory.mktemp("tb") / "tb.onnx"
    compiler.compile(EXAMPLES / "transformer_block.inv", out=out, params={"vocab": 50, "width": 16})
    return out


def feeds(ids):
    ids = np.asarray(ids, np.int64)
    return {"tokens": ids, "mask": np.ones(ids.shape, bool)}


@pytest.mark.parametrize("bad, where", [(-1, "[1, 2]"), (50, "[1, 2]"), (2**40, "[1, 2]")])
def test_token_ids_outside_the_table_are_refused(transformer, bad, where):
    session = Session(transformer)
    assert session.vocab == {"tokens": 50}
    ids = np.random.default_rng(0).integers(0, 50, (2, 5))
    ok = session.run(feeds(ids))["logits"]
    ids[1, 2] = bad
    with pytest.raises(InputError, match=rf"input 'tokens': id {bad} at \[1, 2\] is outside \[0, 50\)"):
        session.run(feeds(ids))
    ids[1, 2] = 49  # the last row is in range, and gives a different answer than the row -1 would hide
    assert np.abs(session.run(feeds(ids))["logits"][1, 2] - ok[1, 2]).max() > 1e-5


@pytest.fixture(scope="module")
def edge_list_model(tmp_path_factory):
    out = tmp_path_factory.mktemp("egnn") / "egnn_sparse.onnx"
    compiler.compile(EXAMPLES / "egnn_sparse.inv", out=out, params={"hidden": 8})
    return out


@pytest.mark.parametrize("bad", [-1, 6, 2**40])
def test_node_ids_outside_the_set_are_refused(edge_list_model, bad):
    """ONNX Gather reads -1 as the last node, where torch fails: the Session refuses both alike."""
    session = Session(edge_list_model)
    assert session.index == {"senders": ["N"], "receivers": ["N"]}
    rng = np.random.default_rng(0)
    edges = {"senders": rng.integers(0, 6, 10), "receivers": np.r_[rng.integers(0, 6, 9), 5]}
    good = {"pos": rng.standard_normal((6, 3), np.float32), "h": rng.standard_normal((6, 4), np.float32), **edges}
    session.run(good)  # the last node, 5, is in range
    edges["receivers"][3] = bad
    with pytest.raises(InputError, match=rf"input 'receivers': id {bad} at \[3\] is outside \[0, 6\) \(the 6 elements of dim N\)"):
        session.run({**good, **edges})


def test_segment_ids_outside_the_sets_are_refused(tmp_path):
    """ids read only by scatter_pool index the sets (dim 0 of `like`): out of range, they are refused
    before ONNX ScatterND could drop or misplace a row."""
    spec = tmp_path / "scatter.inv"
    spec.write_text("model scatter() {\n  input x: f32[R, 4]\n  input ids: i64[R]\n  input sets: f32[S, 2]\n"
                    "  p = scatter_pool(x, ids, like=sets, kind=\"sum\")\n  output p\n}\n")
    compiler.compile(spec, out=tmp_path / "scatter.onnx")
    session = Session(tmp_path / "scatter.onnx")
    assert session.index == {"ids": ["S"]}
    rng = np.random.default_rng(1)
    feeds = {"x": rng.standard_normal((5, 4), np.float32), "ids": np.array([0, 2, 1, 2, 0]),
             "sets": np.zeros((3, 2), np.float32)}
    got = session.run(feeds)["p"]
    assert np.abs(got[2] - feeds["x"][[1, 3]].sum(0)).max() <= 1e-5
    feeds["ids"][4] = 3
    with pytest.raises(InputError, match=r"input 'ids': id 3 at \[4\] is outside \[0, 3\) \(the 3 elements of dim S\)"):
        session.run(feeds)


def test_invc_run_refuses_bad_token_ids(transformer, tmp_path, capsys):
    np.save(tmp_path / "ids.npy", np.array([[3, -1]], np.int64))
    np.save(tmp_path / "mask.npy", np.ones((1, 2), bool))
    assert main(["run", str(transformer), "-i", f"tokens={tmp_path / 'ids.npy'}",
                 "-i", f"mask={tmp_path / 'mask.npy'}"]) == 2
    assert "id -1 at [0, 1] is outside [0, 50)" in capsys.readouterr().err


def test_the_hf_export_records_its_vocabulary(tmp_path):
    from passes.slicegpt.onnx_export import export_onnx
    from test_slicegpt_models import VOCAB, tiny_model
    export_onnx(tiny_model("llama"), tmp_path / "m.onnx")
    session = Session(tmp_path / "m.onnx")
    assert session.vocab == {"input_ids": VOCAB} and session.note is None
    # One cached token (the Session refuses empty dims), two new ones: the decoder step's other inputs.
    step = {i.name: np.zeros((1, i.shape[1], 1, i.shape[3]), np.float32)
            for i in session.inputs if i.name.startswith("past_key_values.")}
    step.update(attention_mask=np.ones((1, 3), np.int64), position_ids=np.array([[1, 2]], np.int64))
    with pytest.raises(InputError, match=f"id {VOCAB} at"):
        session.run(input_ids=np.array([[1, VOCAB]], np.int64), **step)


@pytest.mark.parametrize("example, sizes", [("deepsets", [(0, 5), (2, 0), (0, 0)]),
                                            ("pointcloud_classifier", [(0, 5), (2, 0)])])
def test_empty_batches_and_sets_are_refused_alike_by_onnx_and_torch(tmp_path, example, sizes):
    spec = EXAMPLES / f"{example}.inv"
    out = tmp_path / "m.onnx"
    compiler.compile(spec, out=out)
    session, module = Session(out), compiler.build(spec)
    for b, n in sizes:
        inputs = {"x": np.ones((b, n, 3), np.float32)} if example == "deepsets" else \
            {"pos": np.ones((b, n, 3), np.float32), "mask": np.ones((b, n), bool)}
        dim = r"dim 0 \(B\)" if b == 0 else r"dim 1 \(N\)"
        with pytest.raises(InputError, match=dim + " is 0; invc models do not run on empty") as onnx_e:
            session.run(inputs)
        with pytest.raises(InputError) as torch_e:
            module(*(torch.from_numpy(v) for v in inputs.values()))
        assert str(torch_e.value) == str(onnx_e.value)


def test_an_empty_set_in_a_batch_is_a_mask_and_pools_to_zero(tmp_path):
    out = tmp_path / "m.onnx"
    compiler.compile(EXAMPLES / "pointcloud_classifier.inv", out=out)
    module = compiler.build(EXAMPLES / "pointcloud_classifier.inv")
    pos = np.random.default_rng(1).standard_normal((2, 6, 3)).astype(np.float32)
    mask = np.ones((2, 6), bool)
    mask[1] = False
    got = Session(out).run(pos=pos, mask=mask)["logits"]
    want = module(torch.from_numpy(pos), torch.from_numpy(mask)).detach().numpy()
    assert got.shape == (2, 10) and np.abs(got - want).max() <= 1e-4


def flip_a_weight_bit(path):
    model = onnx.load(str(path))
    raw = max((t.raw_data for t in model.graph.initializer), key=len)
    data = bytearray(path.read_bytes())
    i = data.find(raw) + len(raw) // 2
    data[i] ^= 0x04
    path.write_bytes(bytes(data))


def test_a_damaged_file_is_refused_and_a_foreign_one_runs_with_a_note(tmp_path, capsys):
    out = tmp_path / "ds.onnx"
    assert main(["compile", str(EXAMPLES / "deepsets.inv"), "-o", str(out)]) == 0
    model = onnx.load(str(out))
    assert any(p.key == CONTENT_KEY for p in model.metadata_props)
    assert main(["run", str(out), "--random", "B=2,N=4"]) == 0 and "note:" not in capsys.readouterr().err
    # Not written by invc: the same graph without the stamp runs, with a note.
    foreign = tmp_path / "foreign.onnx"
    kept = [p for p in model.metadata_props if p.key != CONTENT_KEY]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    onnx.save(model, str(foreign))
    assert main(["run", str(foreign), "--random", "B=2,N=4"]) == 0
    assert "was not written by invc; its content and facts were not checked" in capsys.readouterr().err
    flip_a_weight_bit(out)
    assert main(["run", str(out), "--random", "B=2,N=4"]) == 2
    assert "the file is damaged" in capsys.readouterr().err
    with pytest.raises(InputError, match="damaged"):
        Session(out)


# -- `invc run`: every failure is one line, exit 2 -----------------------------------------------------
def foreign(path, dtype=onnx.TensorProto.FLOAT, shape=("B", 2), op="Relu", extra=()):
    """An ONNX file invc did not write: y = op(x, *extra), x of `dtype` and `shape`."""
    from onnx import helper
    inputs = [helper.make_tensor_value_info("x", dtype, list(shape))]
    inputs += [helper.make_tensor_value_info(name, dtype, list(s)) for name, s in extra]
    graph = helper.make_graph([helper.make_node(op, [i.name for i in inputs], ["y"])], "foreign", inputs,
                              [helper.make_tensor_value_info("y", dtype, None)])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return str(path)


def claims_terabytes(path):
    """A .npy whose header declares 2 TiB of float32, followed by 64 bytes."""
    with open(path, "wb") as f:
        np.lib.format.write_array_header_1_0(f, {"descr": "<f4", "fortran_order": False, "shape": (2**39,)})
        f.write(bytes(64))
    return f"x={path}"


def expands_to(path, shape):
    """A model that expands a [1, 1] input to `shape`, a constant: its output may not fit in memory
    (past the 128 TiB a process can address, whatever the kernel's overcommit)."""
    from onnx import helper
    graph = helper.make_graph(
        [helper.make_node("Expand", ["x", "shape"], ["y"])], "expand",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 1])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)],
        initializer=[helper.make_tensor("shape", onnx.TensorProto.INT64, [len(shape)], shape)])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return str(path)


RUN_FAILURES = {  # case: (the command's arguments, built in tmp_path; words of the one line)
    "a .npy header claiming terabytes": (lambda t: [foreign(t / "m.onnx", shape=(2**39,)), "-i", claims_terabytes(t / "x.npy")],
                                         "cannot read input file"),
    "a random size past int64": (lambda t: [foreign(t / "m.onnx"), "--random", "B=" + "9" * 20], "SIZE from 1 to 2**63-1"),
    "a random size of 5000 digits": (lambda t: [foreign(t / "m.onnx"), "--random", "B=" + "9" * 5000], "malformed --random"),
    "a random input too large": (lambda t: [foreign(t / "m.onnx"), "--random", f"B={2**45}"], "does not fit in memory"),
    "a 2**62 dim in the file": (lambda t: [foreign(t / "m.onnx", shape=(2**62, 2)), "--random", "B=2"], "does not fit in memory"),
    "a bfloat16 input, random": (lambda t: [foreign(t / "m.onnx", onnx.TensorProto.BFLOAT16, op="Identity"), "--random", "B=2"],
                                 "its element type is none of those --random draws"),
    "a bfloat16 input, given": (lambda t: [foreign(t / "m.onnx", onnx.TensorProto.BFLOAT16, op="Identity"), "-i", given(t)],
                                "expected: (tensor(bfloat16))"),
    "dims that disagree at run time": (lambda t: [foreign(t / "m.onnx", shape=("N",), op="Add", extra=[("z", ("M",))]),
                                                  "--random", "N=2,M=3"], "could not run the model (at its Add node)"),
    "onnxruntime out of memory": (lambda t: [expands_to(t / "m.onnx", [2**24, 2**24]), "--random", "B=1"],
                                  "Failed to allocate memory"),
    "an unnamed dim": (lambda t: [foreign(t / "m.onnx", shape=(None, 2)), "--random", "B=2"],
                       "dim 0 of input 'x' has neither a name nor a size"),
    "-o in a missing folder": (lambda t: [foreign(t / "m.onnx", shape=(2**62, 2)), "--random", "B=2", "-o",
                                          str(t / "no" / "y.npz")], "no such directory"),
}


def given(tmp_path):
    np.save(tmp_path / "x.npy", np.ones((2, 2), np.float32))
    return f"x={tmp_path / 'x.npy'}"


@pytest.mark.parametrize("case", RUN_FAILURES)
def test_every_run_failure_is_one_line(tmp_path, capsys, case):
    args, words = RUN_FAILURES[case]
    assert main(["run", *args(tmp_path)]) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if not line.startswith("note:")]
    assert len(lines) == 1 and lines[0].startswith("invc: ") and words in lines[0], lines


@pytest.mark.parametrize("vocab", [1, 2, 3])
def test_random_ids_stay_inside_what_they_index(tmp_path, capsys, vocab):
    """--random draws ids below the table's rows and the indexed dim's size, however small."""
    spec = tmp_path / "ids.inv"
    spec.write_text("model ids(vocab: int) {\n  input t: i64[B, S]\n  input x: f32[N, 2]\n  input e: i64[E]\n"
                    "  h = embedding(t, num=vocab, dim=2)\n  g = gather(x, e, axis=0)\n  output h\n  output g\n}\n")
    compiler.compile(spec, out=tmp_path / "ids.onnx", params={"vocab": vocab})
    session = Session(tmp_path / "ids.onnx")
    assert session.id_bounds() == {"t": [str(vocab)], "e": ["N"]}
    assert main(["run", str(tmp_path / "ids.onnx"), "--random", f"B=3,S=4,N={vocab},E=5"]) == 0, capsys.readouterr().err
