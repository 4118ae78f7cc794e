"""Bad input: each refusal is an error that says what is wrong and where, and writes nothing."""
from __future__ import annotations

import os

import pytest
import torch

from common.errors import CheckFailed, InvcError
from passes.base import PassError
from passes.slicegpt import kept_dims, load, save_sliced, slice_model, token_sequences
from test_slicegpt_models import structure_of, token_batches, tiny_model


@pytest.mark.parametrize("sparsity", [-0.1, 1.0, 1.5])
def test_sparsity_outside_unit_interval(sparsity):
    with pytest.raises(PassError, match=r"\[0, 1\)"):
        kept_dims(64, sparsity)


def test_sparsity_leaving_fewer_than_eight_dims():
    with pytest.raises(PassError, match="at least 8"):
        kept_dims(64, 0.9)


def test_kept_dims_round_down_to_multiple():
    assert kept_dims(576, 0.25) == 432 and kept_dims(576, 0.1) == 512 and kept_dims(64, 0.0) == 64


class _CharTokenizer:
    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": [ord(c) % 96 for c in text]}


def test_short_calibration_text_says_how_much_is_needed():
    with pytest.raises(InvcError, match="has 5 tokens; one sequence needs 64"):
        token_sequences(_CharTokenizer(), "hello", 64)


def test_nan_in_calibration_names_the_layer():
    model = tiny_model("llama")
    with torch.no_grad():
        model.model.layers[0].self_attn.o_proj.weight[0, 0] = float("nan")
    with pytest.raises(PassError, match="model.layers.0.post_attention_layernorm.*NaN"):
        slice_model(model, token_batches(1), 0.25, structure=structure_of("llama"))


def test_a_step_that_fails_is_named_with_the_steps_before_it():
    batches = [{"input_ids": torch.zeros(2, 16)}]   # float ids: the embedding fails inside the step
    with pytest.raises(PassError, match=r"pass 'calibrate' failed after \[discover\]: .*indices"):
        slice_model(tiny_model("llama"), batches, 0.25, structure=structure_of("llama"))


def test_missing_directory(tmp_path):
    with pytest.raises(InvcError, match="not a model directory"):
        load(tmp_path / "nothing")


def test_corrupt_checkpoint_is_reported(tmp_path):
    model = tiny_model("llama")
    slice_model(model, token_batches(1), 0.25, structure=structure_of("llama"))
    out = save_sliced(model, tmp_path / "m")
    (out / "model.safetensors").write_bytes(b"\x00" * 64)
    with pytest.raises(InvcError, match="corrupt"):
        load(out)


def test_failed_save_leaves_nothing(tmp_path):
    model = tiny_model("llama")
    slice_model(model, token_batches(1), 0.25, structure=structure_of("llama"))
    model.invc_slice.plan["unserialisable"] = object()
    with pytest.raises(TypeError):
        save_sliced(model, tmp_path / "m")
    assert list(tmp_path.iterdir()) == []


def test_save_never_replaces_a_folder_that_is_not_a_sliced_model(tmp_path):
    model = tiny_model("llama")
    slice_model(model, token_batches(1), 0.25, structure=structure_of("llama"))
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "todo.txt").write_text("keep me")
    with pytest.raises(InvcError, match="not an earlier sliced model"):
        save_sliced(model, notes)
    assert [p.name for p in notes.iterdir()] == ["todo.txt"]
    with pytest.raises(InvcError, match="no such directory"):
        save_sliced(model, tmp_path / "missing" / "m")
    old = os.umask(0o027)
    try:
        out = save_sliced(model, tmp_path / "m")
        save_sliced(model, out)  # an earlier output is replaced
    finally:
        os.umask(old)
    assert out.stat().st_mode & 0o777 == 0o750
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m", "notes"]


def test_onnx_that_fails_its_check_is_not_written(tmp_path, monkeypatch):
    from passes.slicegpt import export_onnx
    from passes.slicegpt import onnx_export

    model = tiny_model("llama")
    with pytest.raises(InvcError, match="no such directory"):
        export_onnx(model, tmp_path / "missing" / "m.onnx")
    real = onnx_export.check_onnx
    monkeypatch.setattr(onnx_export, "check_onnx", lambda model, tmp, _tol, **k: real(model, tmp, -1.0, **k))
    with pytest.raises(CheckFailed, match="m.onnx: onnxruntime logits or cache differ.*not written"):
        export_onnx(model, tmp_path / "m.onnx")
    assert list(tmp_path.iterdir()) == []


def test_a_plan_that_does_not_fit_the_model_names_the_file(tmp_path):
    import json

    model = tiny_model("llama")
    slice_model(model, token_batches(1), 0.25, mode="shortcut", structure=structure_of("llama"))
    out = save_sliced(model, tmp_path / "m")
    plan = json.loads((out / "invc_slice.json").read_text())
    plan["norms"][0]["module"] = "model.layers.7.input_layernorm"
    (out / "invc_slice.json").write_text(json.dumps(plan))
    with pytest.raises(InvcError, match=r"invc_slice.json does not fit the model in .*config.json.*slice the model again"):
        load(out)
