"""SliceGPT's inputs are checked at the door: damaged or pickled checkpoints, non-finite weights and
zero counts are refused with invc's own message, before any work and without running anything."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from compiler.cli import main
from common.errors import InvcError
from passes.slicegpt import load
from test_slicegpt_models import tiny_model


@pytest.fixture(scope="module")
def dense(tmp_path_factory):
    path = tmp_path_factory.mktemp("dense") / "llama"
    tiny_model("llama").save_pretrained(path)
    return path


def copy_of(dense, tmp_path):
    out = tmp_path / "m"
    out.mkdir()
    for f in dense.iterdir():
        (out / f.name).write_bytes(f.read_bytes())
    return out


@pytest.mark.parametrize("keep", [0, 0.5, 0.999])
def test_truncated_or_empty_safetensors_names_the_file(dense, tmp_path, keep):
    model = copy_of(dense, tmp_path)
    weights = model / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:int(keep * weights.stat().st_size)])
    with pytest.raises(InvcError, match=f"{weights}: truncated or corrupt weights"):
        load(model)


class _RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_a_malicious_pickle_is_refused_without_unsafe_advice(dense, tmp_path, capsys):
    model = copy_of(dense, tmp_path)
    (model / "model.safetensors").unlink()
    marker = tmp_path / "RAN"
    torch.save({"model.embed_tokens.weight": _RunsCode(marker)}, model / "pytorch_model.bin")
    assert main(["export", str(model), "-o", str(tmp_path / "x.onnx")]) == 2
    err = capsys.readouterr().err
    assert f"{model / 'pytorch_model.bin'}: refused" in err and "safetensors" in err
    assert "weights_only" not in err and "Traceback" not in err
    assert not marker.exists() and not (tmp_path / "x.onnx").exists()


@pytest.mark.parametrize("command", ["slice", "eval-ppl"])
@pytest.mark.parametrize("flag", ["--seq-len", "--batch-size", "--samples", "--multiple"])
def test_zero_counts_are_refused_before_any_work(tmp_path, capsys, command, flag):
    if command == "eval-ppl" and flag == "--multiple":
        pytest.skip("eval-ppl has no --multiple")
    args = [command, str(tmp_path / "no-model"), "--calib" if command == "slice" else "--text", "a.txt"]
    args += ["-o", str(tmp_path / "out")] if command == "slice" else []
    with pytest.raises(SystemExit) as e:
        main(args + [flag, "0"])
    assert e.value.code == 2 and "must be above 0" in capsys.readouterr().err


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
@pytest.mark.parametrize("mode", ["shortcut-free", "shortcut"])
def test_a_non_finite_weight_is_named_before_calibration(tmp_path, capsys, value, mode):
    model = tiny_model("llama")
    with torch.no_grad():
        model.model.layers[1].mlp.up_proj.weight[2, 3] = value
    model.save_pretrained(tmp_path / "m")
    (tmp_path / "calib.txt").write_text("not read: the weights are refused first\n")
    code = main(["slice", str(tmp_path / "m"), "--calib", str(tmp_path / "calib.txt"), "-o", str(tmp_path / "out"),
                 "--mode", mode])
    err = capsys.readouterr().err
    assert code == 2 and "weight model.layers.1.mlp.up_proj.weight holds" in err and "[2, 3]" in err, err
    assert "overflow" not in err and not (tmp_path / "out").exists()


# -- damaged checkpoints: every tensor the config asks for, none other, each of its shape -------------
DAMAGE = ["missing", "unexpected", "misshapen", "more layers"]


def damage(folder: Path, kind: str, rng: np.random.Generator) -> str:
    """Damage one drawn tensor (or the layer count) of a saved model; the name the refusal must give."""
    weights = folder / "model.safetensors"
    state = load_file(str(weights))
    keys = sorted(k for k in state if not k.startswith("invc_slice."))
    key = keys[rng.integers(len(keys))]
    if kind == "missing":
        del state[key]
    elif kind == "unexpected":
        key = f"model.layers.0.mlp.extra_{rng.integers(100)}.weight"
        state[key] = torch.randn(3, 2)
    elif kind == "misshapen":
        shape = list(state[key].shape)
        shape[rng.integers(len(shape))] += int(rng.integers(1, 4))  # larger than any slice of it
        state[key] = torch.randn(shape)
    else:
        config = json.loads((folder / "config.json").read_text())
        config["num_hidden_layers"] += 1
        (folder / "config.json").write_text(json.dumps(config))
        return f"model.layers.{config['num_hidden_layers'] - 1}."
    save_file(state, str(weights), metadata={"format": "pt"})
    return key


@pytest.fixture(scope="module")
def sliced(tmp_path_factory):
    """A sliced directory with its plan (shortcut mode is not a plain model of its family)."""
    from passes.slicegpt import save_sliced, slice_model
    from test_slicegpt_models import structure_of, token_batches

    model = tiny_model("llama")
    slice_model(model, token_batches(1), 0.25, mode="shortcut", structure=structure_of("llama"))
    return save_sliced(model, tmp_path_factory.mktemp("sliced") / "llama")


COMMANDS = {"slice": ["--calib", "c.txt", "-o", "out"], "eval-ppl": ["--text", "c.txt"], "export": ["-o", "m.onnx"]}


@pytest.mark.parametrize("kind", DAMAGE)
@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("source", ["dense", "sliced"])
def test_a_damaged_checkpoint_is_refused_by_name(request, tmp_path, monkeypatch, capsys, kind, command, source):
    monkeypatch.chdir(tmp_path)
    model = copy_of(request.getfixturevalue(source), tmp_path)
    name = damage(model, kind, np.random.default_rng(list(f"{kind} {command} {source}".encode())))
    (tmp_path / "c.txt").write_text("not read: the weights are refused first\n")
    capsys.readouterr()  # the fixtures' progress bars
    assert main([command, "m", *COMMANDS[command]]) == 2
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]  # after transformers' progress bar
    assert "the checkpoint is damaged" in last and name in last and "Traceback" not in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.txt", "m"]
