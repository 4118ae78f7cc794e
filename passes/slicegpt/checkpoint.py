"""Saving and loading sliced models: safetensors weights, the HF config, and `invc_slice.json` with the
plan (width, kept dims, replaced norms, shortcuts, head map), so loading needs no sparsity flag.

A directory is written to a temporary sibling and renamed into place: a failure leaves nothing behind.
"""
from __future__ import annotations

import json
import pickle
import stat
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from common.errors import InvcError
from common.files import atomic_dir
from common.logs import quiet
from passes.slicegpt.modules import SliceAdapters, StreamRMSNorm
from passes.slicegpt.rotation import _assign

PLAN = "invc_slice.json"
WEIGHTS = "model.safetensors"


def save_sliced(model: nn.Module, out: Path, tokenizer=None, standard: nn.Module | None = None) -> Path:
    """Write a sliced model. With `standard` (a plain model of the family at the smaller width) the
    directory is an ordinary HF checkpoint that the family's own class loads."""
    with atomic_dir(out, "sliced model", marker=PLAN) as tmp:
        if standard is not None:
            standard.save_pretrained(tmp)
        else:
            model.config.save_pretrained(tmp)
            save_file(_unique_state(model), str(tmp / WEIGHTS), metadata={"format": "pt"})
        (tmp / PLAN).write_text(json.dumps({**model.invc_slice.plan, "standard": standard is not None}, indent=1))
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
    return Path(out)


def _unique_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """One entry per tensor: safetensors refuses shared storage, and tied weights are re-tied on load."""
    return {name: p.detach().contiguous() for name, p in model.named_parameters()}


def load(path: Path | str, dtype: torch.dtype = torch.float32) -> nn.Module:
    """Load a sliced directory (or a dense HF one) as a ready model in eval mode."""
    import transformers

    path = model_dir(path)
    plan_file = path / PLAN
    try:
        plan = json.loads(plan_file.read_text()) if plan_file.exists() else None
    except json.JSONDecodeError as e:
        raise InvcError(f"{plan_file}: corrupt slice plan: {e}") from e
    try:
        if plan is None or plan.get("standard"):
            return finite(_pretrained(path, dtype), path).eval()
        config = transformers.AutoConfig.from_pretrained(path)
        model = transformers.AutoModelForCausalLM.from_config(config, dtype=dtype)
    except SafetensorError as e:
        raise InvcError(f"{_weight_files(path, '*.safetensors')}: truncated or corrupt weights ({e}); "
                        "copy or download the file again") from None
    except pickle.UnpicklingError:
        raise InvcError(PICKLE_REFUSED.format(files=_weight_files(path, "*.bin"))) from None
    except (OSError, ValueError, RuntimeError) as e:  # RuntimeError: a conversion transformers cannot make
        raise InvcError(f"{path}: cannot load the model: {str(e).splitlines()[0]}") from e
    try:
        state = load_file(str(path / WEIGHTS))
    except (SafetensorError, OSError, FileNotFoundError) as e:
        raise InvcError(f"{path / WEIGHTS}: missing or corrupt weights: {e}") from e
    try:
        return finite(restore(model, plan, state, dtype, path), path).eval()
    except (KeyError, AttributeError) as e:
        raise InvcError(f"{plan_file} does not fit the model in {path / 'config.json'} ({type(e).__name__}: {e}); "
                        "slice the model again to rewrite the directory") from e


def model_dir(path: Path | str) -> Path:
    """`path`, refused by name unless it is a model directory (a folder with config.json)."""
    path = Path(path)
    try:
        config = (path / "config.json").stat()
    except OSError as e:  # missing, not a folder, a loop of symbolic links, unreadable
        raise InvcError(f"{path}: not a model directory (no config.json: {e.strerror})") from None
    if not stat.S_ISREG(config.st_mode):
        raise InvcError(f"{path}: not a model directory ({path / 'config.json'} is not a file)")
    return path


LOAD_REPORT = "transformers.modeling_utils"  # the logger of transformers' table of missing keys


def _pretrained(path: Path, dtype: torch.dtype) -> nn.Module:
    """A dense HF model whose weights are exactly those config.json describes. transformers fills a
    missing or misshapen tensor with random values ("newly initialized") and only logs it."""
    import transformers
    # Read, not memory-mapped: a mapped file stays resident until its last tensor dies, so while rotation
    # replaces the parameters one part at a time the old and new model would both count (SmolLM2: peak
    # 2039 MiB mapped, 1870 MiB read).
    with quiet(LOAD_REPORT):
        model, info = transformers.AutoModelForCausalLM.from_pretrained(
            path, dtype=dtype, output_loading_info=True, ignore_mismatched_sizes=True, disable_mmap=True)
    refuse_damaged(path, info["missing_keys"], info["unexpected_keys"],
                   {key: (list(got), list(want)) for key, got, want in info["mismatched_keys"]})
    return model


def refuse_damaged(path: Path, missing, unexpected, misshapen: dict) -> None:
    """Refuse, by name, weights that do not fill the model config.json builds: a tensor missing
    (config.json may declare more layers than the weights hold), unexpected, or of another shape."""
    problems = [f"{what} {_first(keys)}" for what, keys in
                (("lack", missing), ("hold an unexpected", unexpected)) if keys]
    if misshapen:
        key = min(misshapen)
        got, want = misshapen[key]
        problems.append(f"hold {key} as {got} where the model needs {want}{_more(misshapen)}")
    if problems:
        raise InvcError(f"{path}: the weights {'; they '.join(problems)}; the checkpoint is damaged or does "
                        "not match its config.json (refused rather than filled with random weights)")


def _first(keys) -> str:
    return f"{min(keys)}{_more(keys)}"


def _more(keys) -> str:
    return f" (and {len(keys) - 1} more)" if len(keys) > 1 else ""


# torch's own message here advises an unsafe retry; this one does not.
PICKLE_REFUSED = ("{files}: refused: this pickled checkpoint holds objects other than tensors, and "
                  "unpickling them could run code. invc loads only tensors from pickles. If you trust "
                  "where it came from, convert it to safetensors where it was made, e.g. "
                  "model.save_pretrained(folder, safe_serialization=True), or ask its publisher for "
                  "model.safetensors")


def _weight_files(path: Path, pattern: str) -> str:
    files = sorted(path.glob(pattern))
    return ", ".join(map(str, files)) if files else str(path)


def finite(model: nn.Module, path: Path) -> nn.Module:
    """The model, once every weight is finite: a NaN or inf in a weight would surface later as an
    overflow blamed on the calibration text, at a layer far from the parameter that holds it."""
    for name, p in model.named_parameters():
        bad = ~torch.isfinite(p.detach())
        if bad.any():
            where = tuple(bad.nonzero()[0].tolist())
            raise InvcError(f"{path}: weight {name} holds {p.detach()[where].item()} at index {list(where)} "
                            f"({int(bad.sum())} of {p.numel()} entries are not finite); the checkpoint is damaged")
    return model


def restore(model: nn.Module, plan: dict, state: dict[str, torch.Tensor], dtype: torch.dtype,
            folder: Path) -> nn.Module:
    """Give a freshly built dense model the sliced shapes, norms and adapters the plan describes."""
    for n in plan["norms"]:
        path, _, attr = n["module"].rpartition(".")
        norm = StreamRMSNorm(plan["width"], n["eps"], n.get("dim", plan["dim"]))
        setattr(model.get_submodule(path) if path else model, attr, norm)
    adapters = SliceAdapters(plan)
    model.invc_slice = adapters
    for key, value in state.items():
        if key.startswith("invc_slice.shortcuts."):
            adapters.shortcuts[key.rsplit(".", 1)[1]] = nn.Parameter(value.to(dtype))
        elif key.startswith("invc_slice."):
            setattr(adapters, key.split(".", 1)[1], nn.Parameter(value.to(dtype)))
    tied = _tied_names(model)
    dense, weights = ({k: list(v.shape) for k, v in named if not k.startswith("invc_slice.")}
                      for named in (model.named_parameters(remove_duplicate=False), state.items()))
    widths = {plan["width"], plan["dim"], *(n.get("dim", plan["dim"]) for n in plan["norms"])}
    added = {k for k in weights.keys() - dense.keys() if _empty_slot(model, k)}  # a bias slicing folded in
    refuse_damaged(folder, dense.keys() - weights.keys() - tied.keys(), weights.keys() - dense.keys() - added,
                   {k: (weights[k], dense[k]) for k in weights.keys() & dense.keys()
                    if not _sliced_from(weights[k], dense[k], plan["width"], widths)})
    for key, value in state.items():
        if not key.startswith("invc_slice."):
            _assign(model, key, nn.Parameter(value.to(dtype)))
    for alias, source in tied.items():
        if alias not in state:
            _assign(model, alias, model.get_parameter(source))
    adapters.install(model)
    return model


def _empty_slot(model: nn.Module, key: str) -> bool:
    """Whether `key` names a parameter the dense module declares empty, such as Linear's bias=None."""
    module, _, attr = key.rpartition(".")
    try:
        owner = model.get_submodule(module)
    except AttributeError:
        return False
    return attr in owner._parameters and owner._parameters[attr] is None


def _sliced_from(shape: list[int], dense: list[int], width: int, widths: set[int]) -> bool:
    """Whether a saved tensor can be a dense one sliced: only residual-stream axes (of the dense
    `width`) change, each to one of the stream's sliced `widths` the plan records."""
    return len(shape) == len(dense) and all(s == d or (d == width and s in widths) for s, d in zip(shape, dense))


def _tied_names(model: nn.Module) -> dict[str, str]:
    """Parameter names that share a tensor with an earlier name, mapped to that name."""
    first: dict[int, str] = {}
    tied = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        if id(p) in first:
            tied[name] = first[id(p)]
        else:
            first[id(p)] = name
    return tied
