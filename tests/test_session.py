import numpy as np
import pytest
import torch
from onnx import TensorProto, helper

from runtime.session import CPU, CUDA, InputError, Session, choose_providers, load_inputs


@pytest.fixture(scope="module")
def model():
    """y = relu(x), hidden = not mask, for x f32 [B, N, 4] and mask bool [B, N]."""
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"]), helper.make_node("Not", ["mask"], ["hidden"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", "N", 4]),
         helper.make_tensor_value_info("mask", TensorProto.BOOL, ["B", "N"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["B", "N", 4]),
         helper.make_tensor_value_info("hidden", TensorProto.BOOL, ["B", "N"])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=8)


@pytest.fixture(scope="module")
def session(model):
    return Session(model)


def feeds(b=2, n=5):
    rng = np.random.default_rng(b * 10 + n)
    return {"x": rng.standard_normal((b, n, 4)).astype(np.float32), "mask": rng.random((b, n)) > 0.5}


def test_runs_and_describes(session):
    inputs = feeds()
    out = session.run(inputs)
    np.testing.assert_allclose(out["y"], np.maximum(inputs["x"], 0), rtol=0, atol=0, equal_nan=False)
    assert (out["hidden"] == ~inputs["mask"]).all()
    assert [(i.name, i.dtype, i.shape) for i in session.inputs] == [
        ("x", np.float32, ("B", "N", 4)), ("mask", np.bool_, ("B", "N"))]
    assert [str(o) for o in session.outputs] == ["y: float32 [B, N, 4]", "hidden: bool [B, N]"]


def test_kwargs_and_torch_tensors(session):
    inputs = feeds(3, 7)
    out = session.run(x=torch.from_numpy(inputs["x"]).requires_grad_(), mask=torch.from_numpy(inputs["mask"]))
    np.testing.assert_allclose(out["y"], np.maximum(inputs["x"], 0), rtol=0, atol=0, equal_nan=False)


def test_model_from_path_on_cpu(model, tmp_path):
    path = tmp_path / "m.onnx"
    path.write_bytes(model.SerializeToString())
    assert Session(path).provider == CPU
    assert Session(str(path), provider="cpu").provider == CPU


def test_provider_choice():
    assert choose_providers("auto", [CUDA, CPU]) == [CUDA, CPU]
    assert choose_providers("auto", [CPU]) == [CPU]
    assert choose_providers("cuda", [CUDA, CPU]) == [CUDA, CPU]
    with pytest.raises(InputError, match="'cuda' is not available.*CPUExecutionProvider"):
        choose_providers("cuda", [CPU])


def bad(**changes):
    inputs = feeds()
    inputs.update(changes)
    return {k: v for k, v in inputs.items() if v is not None}


@pytest.mark.parametrize("inputs, message", [
    (bad(z=np.zeros(3)), r"unknown input 'z'; the model's inputs are: x, mask"),
    (bad(mask=None), r"missing input 'mask'; the model's inputs are: x, mask"),
    (bad(x=np.zeros((2, 5), np.float32)), r"input 'x': expected rank 3 \[B, N, 4\], got rank 2"),
    (bad(x=np.zeros((2, 5, 3), np.float32)), r"input 'x': dim 2 must be 4 .*got 3"),
    (bad(x=np.zeros((2, 5, 4))), r"input 'x': expected dtype float32, got float64"),
    (bad(mask=np.ones((2, 7), bool)), r"'N' is 5 in input 'x' \(dim 1\) but 7 in input 'mask' \(dim 1\)"),
])
def test_input_errors(session, inputs, message):
    with pytest.raises(InputError, match=message) as e:
        session.run(inputs)
    assert e.value.exit_code == 2


def test_missing_model_file(tmp_path):
    with pytest.raises(InputError, match="model file not found: .*nope.onnx"):
        Session(tmp_path / "nope.onnx")


def test_load_inputs(tmp_path, session):
    inputs = feeds()
    np.save(tmp_path / "x.npy", inputs["x"])
    np.savez(tmp_path / "both.npz", **inputs)
    loaded = load_inputs([f"x={tmp_path / 'x.npy'}", f"mask={tmp_path / 'both.npz'}"])
    assert sorted(loaded) == ["mask", "x"]
    assert (session.run(loaded)["hidden"] == ~inputs["mask"]).all()
    loaded = load_inputs([str(tmp_path / "both.npz")])
    np.testing.assert_allclose(loaded["x"], inputs["x"], rtol=0, atol=0, equal_nan=False)


@pytest.mark.parametrize("arg, message", [
    ("x={}/none.npy", r"input file not found: .*none.npy"),
    ("x", r"malformed input argument 'x'"),
    ("={}/x.npy", r"malformed input argument"),
    ("x={}/x.txt", r"malformed input argument"),
    ("y={}/both.npz", r"holds no array 'y'; it holds: x, mask"),
    ("x={}/junk.npy", r"cannot read input file .*junk.npy"),
])
def test_load_input_errors(tmp_path, arg, message):
    np.savez(tmp_path / "both.npz", **feeds())
    (tmp_path / "junk.npy").write_text("not numpy")
    with pytest.raises(InputError, match=message):
        load_inputs([arg.format(tmp_path)])


def test_load_inputs_refuses_a_name_twice(tmp_path):
    np.savez(tmp_path / "both.npz", **feeds())
    np.save(tmp_path / "x.npy", feeds()["x"])
    with pytest.raises(InputError, match="'x' is given twice"):
        load_inputs([str(tmp_path / "both.npz"), f"x={tmp_path / 'x.npy'}"])
