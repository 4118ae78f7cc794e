"""Text to calibration batches, and perplexity: the two places where tokens meet the model."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Callable, Iterable

import torch

from common.errors import InvcError


def tokenizer(path: Path):
    """The tokenizer saved with a model directory."""
    import transformers
    try:
        return transformers.AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError, TypeError) as err:
        raise InvcError(f"{path}: no usable tokenizer: {err}") from err


def read_texts(paths: Iterable[Path | str]) -> str:
    parts = []
    for p in map(Path, paths):
        if not p.is_file():
            raise InvcError(f"{p}: no such text file")
        parts.append(p.read_text(encoding="utf-8", errors="replace"))
    return "\n\n".join(parts)


def token_sequences(tokenizer, text: str, seq_len: int, count: int | None = None) -> torch.Tensor:
    """Cut the tokenised text into non-overlapping rows of seq_len tokens; with `count`, that many rows
    spread evenly over the whole text, so several files all contribute."""
    ids = torch.tensor(tokenizer(text, add_special_tokens=False)["input_ids"], dtype=torch.long)
    rows = len(ids) // seq_len
    if rows == 0:
        raise InvcError(f"the text has {len(ids)} tokens; one sequence needs {seq_len} "
                        f"(give {seq_len - len(ids)} more tokens of text, or a smaller --seq-len)")
    table = ids[: rows * seq_len].reshape(rows, seq_len)
    if count is not None and count < rows:
        table = table[torch.linspace(0, rows - 1, count).round().long()]
    return table


def batches(rows: torch.Tensor, batch_size: int) -> list[dict]:
    return [{"input_ids": rows[i:i + batch_size]} for i in range(0, len(rows), batch_size)]


def perplexity(model: torch.nn.Module, rows: torch.Tensor, batch_size: int = 4,
               progress: Callable[[Iterable], Iterable] = lambda it: it) -> float:
    """exp of the mean next-token cross-entropy over every predicted position."""
    total, count = 0.0, 0
    with torch.no_grad():
        for b in progress(batches(rows, batch_size)):
            ids = b["input_ids"]
            logits = model(input_ids=ids, use_cache=False).logits[:, :-1].float()
            loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]),
                                                     ids[:, 1:].reshape(-1), reduction="sum")
            total += float(loss)
            count += ids[:, 1:].numel()
    return math.exp(total / count)
