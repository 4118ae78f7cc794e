"""`invc slice`, `invc eval-ppl`, `invc export` and `invc generate` end to end on a tiny model directory."""
from __future__ import annotations

import math
import random
import re
import string
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import transformers as T
from tokenizers import Regex, Tokenizer, models, pre_tokenizers

from compiler.cli import main
from passes.slicegpt import load
from passes.slicegpt.data import token_sequences
from passes.slicegpt.refit import RIDGE
from test_slicegpt_models import VOCAB, tiny_model

ROOT = Path(__file__).resolve().parent.parent


def char_tokenizer() -> T.PreTrainedTokenizerFast:
    chars = string.ascii_letters + string.digits + " .,;:!?'-\n"
    vocab = {"[UNK]": 0, **{c: i + 1 for i, c in enumerate(chars)}}
    assert len(vocab) <= VOCAB
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    return T.PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]")


def prose(seed: int, words: int) -> str:
    rng = random.Random(seed)
    lexicon = ["the", "king", "crown", "sword", "night", "love", "speak", "fair", "lord", "death", "sleep"]
    return " ".join(rng.choice(lexicon) for _ in range(words)) + ".\n"


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    for family, kwargs in (("llama", {}), ("opt", {"do_layer_norm_before": False})):
        model = tiny_model(family, **kwargs)
        model.save_pretrained(root / family)
        char_tokenizer().save_pretrained(root / family)
    (root / "calib.txt").write_text(prose(0, 800))
    (root / "held.txt").write_text(prose(1, 400))
    (root / "short.txt").write_text("the king")
    return root


def test_slice_eval_export(workdir, capfd, caplog):
    out = workdir / "sliced"
    code = main(["slice", str(workdir / "llama"), "--sparsity", "0.25", "--calib", str(workdir / "calib.txt"),
                 "-o", str(out), "--seq-len", "32", "--samples", "8", "--mode", "shortcut"])
    text = capfd.readouterr().out
    assert code == 0
    assert "parameters:" in text and "stream 64 -> 48" in text and "time" in text
    model = load(out)
    assert model.invc_slice.plan["dim"] == 48
    assert main(["eval-ppl", str(out), "--text", str(workdir / "held.txt"), "--seq-len", "32"]) == 0
    text = capfd.readouterr().out
    assert "perplexity" in text
    found = re.search(r"perplexity (\S+) on (\d+) x 32 tokens", text)
    assert found, text
    # Independently: every non-overlapping 32-token row of the held text (no --samples: all rows),
    # tokenised by the tokenizer saved with the model, one forward, exp of the mean next-token CE.
    tok = T.AutoTokenizer.from_pretrained(out)
    rows = token_sequences(tok, (workdir / "held.txt").read_text(), 32)
    assert int(found.group(2)) == len(rows) > 1
    with torch.no_grad():
        logits = model(input_ids=rows, use_cache=False).logits[:, :-1].double()
    want = math.exp(float(F.cross_entropy(logits.reshape(-1, logits.shape[-1]), rows[:, 1:].reshape(-1))))
    assert float(found.group(1)) == pytest.approx(want, rel=1e-3)
    assert main(["export", str(out), "-o", str(workdir / "m.onnx")]) == 0
    assert (workdir / "m.onnx").stat().st_size > 0
    assert not [r for r in caplog.records if "torchvision" in r.getMessage()]  # exporter noise is silenced
    capfd.readouterr()
    texts = {}
    for runtime in ("onnx", "torch"):   # greedy: onnxruntime's loop and HF generate() print the same text
        assert main(["generate", str(out), "--onnx", str(workdir / "m.onnx"), "--prompt", "the king",
                     "--max-new-tokens", "12", "--runtime", runtime]) == 0
        texts[runtime] = capfd.readouterr().out
    prompt = tok.decode(tok("the king")["input_ids"])   # this character tokenizer decodes with spaces between
    assert texts["onnx"] == texts["torch"] and texts["onnx"].startswith(prompt) and len(texts["onnx"]) > len(prompt) + 1


def test_cli_runs_as_a_module_and_refuses_with_reason(workdir):
    out = workdir / "never"
    done = subprocess.run([sys.executable, "-m", "compiler.cli", "slice", str(workdir / "opt"), "--calib",
                           str(workdir / "calib.txt"), "-o", str(out), "--seq-len", "32"],
                          cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 2, done.stderr
    assert "reads the residual stream" in done.stderr and "post-norm" in done.stderr and "Traceback" not in done.stderr
    assert not out.exists()


@pytest.mark.parametrize("argv, message", [
    (["--sparsity", "1.2"], "sparsity"),
    (["--calib", "{root}/short.txt"], "one sequence needs 32"),
    (["--mode", "sideways"], "--mode"),
    (["--schedule", "0.25,0.5"], "needs mode 'shortcut'"),
    (["--mode", "shortcut", "--schedule", "0.25"], "one sparsity per block"),
    (["--mode", "shortcut", "--schedule", "0.25,lots"], "comma-separated"),
    (["--dump-after", "rotate_axes"], "names no pass in the pipeline: rotate_axes"),
])
def test_cli_bad_input(workdir, capsys, argv, message):
    argv = [a.format(root=workdir) for a in argv]
    base = ["slice", str(workdir / "llama"), "-o", str(workdir / "bad"), "--seq-len", "32"]
    if "--calib" not in argv:
        base += ["--calib", str(workdir / "calib.txt")]
    assert main(base + argv) == 2
    assert message in capsys.readouterr().err
    assert not (workdir / "bad").exists()


def test_slice_with_a_schedule(workdir, capsys):
    out = workdir / "scheduled"
    assert main(["slice", str(workdir / "llama"), "--mode", "shortcut", "--schedule", "0.25,0.5", "--calib",
                 str(workdir / "calib.txt"), "-o", str(out), "--seq-len", "32", "--samples", "4",
                 "--dump-after", "discover", "--dump-after", "slice"]) == 0
    text = capsys.readouterr().out
    assert "schedule [0.25, 0.5]" in text and "stream 64 -> 48" in text and "stream 64 -> 32" in text
    discovered, sliced = text.split("# after discover\n")[1].split("# after slice\n")
    assert "structure   stream width 64, 2 blocks" in discovered and "widths      [48, 48, 32]" in discovered
    assert "rotations" not in discovered and "adapters    2 shortcuts, head map: no" in sliced
    assert "LlamaForCausalLM, 86,336 parameters" in discovered and "59,856 parameters" in sliced
    assert [n["dim"] for n in load(out).invc_slice.plan["norms"]] == [48, 48, 48, 32, 32]


def test_generate_without_an_onnx_file_says_how_to_write_it(workdir, capsys):
    assert main(["generate", str(workdir / "llama"), "--prompt", "the king"]) == 2
    err = capsys.readouterr().err
    assert "model.onnx: no such ONNX file; write it with `invc export" in err and len(err.splitlines()) == 1
    assert main(["generate", str(workdir / "llama"), "--prompt", "the", "--runtime", "torch", "--top-p", "1.5"]) == 2
    assert "--top-p 1.5: must be in (0, 1]" in capsys.readouterr().err


def test_cli_missing_model_dir(workdir, capsys):
    assert main(["eval-ppl", str(workdir / "absent"), "--text", str(workdir / "held.txt")]) == 2
    assert "not a model directory" in capsys.readouterr().err


def test_sliced_dir_loads_without_restating_sparsity(workdir):
    out = workdir / "plain"
    assert main(["slice", str(workdir / "llama"), "--sparsity", "0.25", "--calib", str(workdir / "calib.txt"),
                 "-o", str(out), "--seq-len", "32", "--untie-head"]) == 0
    plain = T.AutoModelForCausalLM.from_pretrained(out).eval()
    ids = torch.randint(0, VOCAB, (1, 10))
    with torch.no_grad():
        assert torch.allclose(plain(ids).logits, load(out)(ids).logits, atol=1e-6)


def test_slice_refits_only_when_asked(workdir, capsys):
    """Off by default; `--refit` takes the library's ridge, `--refit R` that one, and either changes the weights."""
    found = {}
    for flags in ([], ["--refit"], ["--refit", "0.5"]):
        out = workdir / f"refit{len(flags)}"
        assert main(["slice", str(workdir / "llama"), "--sparsity", "0.25", "--calib", str(workdir / "calib.txt"),
                     "-o", str(out), "--seq-len", "32", *flags]) == 0
        found[len(flags)] = (re.search(r"refit: (.*)", capsys.readouterr().out).group(1), load(out).state_dict())
    assert [line for line, _ in found.values()] == ["off", f"ridge {RIDGE:g}", "ridge 0.5"]
    name = next(n for n in found[0][1] if n.endswith("q_proj.weight"))
    for a, b in ((0, 1), (1, 2)):   # each refit moves the weights (NaN would not count as a move)
        moved = float((found[a][1][name] - found[b][1][name]).abs().max())
        assert moved >= 1e-6, f"{found[a][0]} and {found[b][0]} give the same {name}"
    with pytest.raises(SystemExit) as refused:   # argparse refuses a ridge that is not above 0
        main(["slice", str(workdir / "llama"), "--calib", str(workdir / "calib.txt"), "-o", str(workdir / "r"),
              "--refit", "0"])
    assert refused.value.code == 2 and "must be above 0" in capsys.readouterr().err


SHORTCUT_FREE_STEPS = ["load", "discover", "tokenize", "calibrate", "reference", "rotate", "replace_norms",
                       "self_check", "slice", "save"]


@pytest.mark.parametrize("flags, names", [
    ([], SHORTCUT_FREE_STEPS),
    (["--refit", "--untie-head"], ["load", "untie_head", *SHORTCUT_FREE_STEPS[1:8], "refit", "slice", "save"]),
    (["--mode", "shortcut", "--refit"], ["load", "untie_head", *SHORTCUT_FREE_STEPS[1:]]),
])
def test_print_passes_lists_the_steps_without_a_model(capsys, flags, names):
    assert main(["slice", "--print-passes", *flags]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [m.group(1) for m in map(re.compile(r" ?\d+\. (\S+)").match, lines) if m] == names
    inner = [line.split()[0] for line in lines if line.startswith(" " * 6)]
    assert inner == ["fuse_norms", "rotate_axes", "write_back"]
    calibrate = next(line for line in lines if " calibrate " in line)
    assert ("block by block" in calibrate) == ("shortcut" in flags)


def test_slice_without_a_model_says_what_it_needs(workdir, capsys):
    assert main(["slice"]) == 2
    assert "slice needs MODEL_DIR, --calib, -o (or --print-passes)" in capsys.readouterr().err
    assert main(["slice", str(workdir / "llama"), "-o", str(workdir / "bad")]) == 2
    assert "slice needs --calib (or --print-passes)" in capsys.readouterr().err
