"""Decoding with an exported decoder file (passes/slicegpt/onnx_export.py) in onnxruntime: invc's own loop.

The file takes `input_ids`, `attention_mask`, `position_ids` and `past_key_values.{i}.key|value`, and returns
`logits` and `present.{i}.key|value`. Each step feeds the new tokens and the cache the last step returned, so
a token costs one step over one position, not a pass over the whole prefix."""
from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import onnxruntime as ort

from common.dtypes import from_ort, numpy_dtype
from runtime.inputs import InputError
from runtime.session import CPU, open_session

PAST, PRESENT = "past_key_values.", "present."
Cache = dict[str, np.ndarray]


class Decoder:
    """One exported decoder in onnxruntime, stepped on numpy arrays."""

    def __init__(self, path: Path | str, threads: int | None = None):
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        self.session = open_session(path, [CPU], options)
        self.cache = [i for i in self.session.get_inputs() if i.name.startswith(PAST)]
        names = {i.name for i in self.session.get_inputs()}
        if not self.cache or not {"input_ids", "attention_mask", "position_ids"} <= names:
            raise InputError(f"{path} has no KV-cache decoder interface (inputs {', '.join(sorted(names))}); "
                             f"write it again with `invc export`")
        self.outputs = [o.name for o in self.session.get_outputs()]

    def empty_past(self, batch: int) -> Cache:
        """The cache before the first token: every layer's keys and values at length 0."""
        return {i.name: np.zeros((batch, i.shape[1], 0, i.shape[3]), numpy_dtype(from_ort(i.type)))
                for i in self.cache}

    @staticmethod
    def positions(ids: np.ndarray, done: int) -> tuple[np.ndarray, np.ndarray]:
        """The attention mask over the `done` cached and the new tokens, and the new tokens' positions."""
        batch, new = ids.shape
        mask = np.ones((batch, done + new), np.int64)
        return mask, np.broadcast_to(np.arange(done, done + new, dtype=np.int64), (batch, new)).copy()

    def step(self, ids: np.ndarray, past: Cache, done: int) -> tuple[np.ndarray, Cache]:
        """Logits for `ids` after `done` cached tokens, and the cache with them appended."""
        mask, positions = self.positions(ids, done)
        results = self.session.run(None, {"input_ids": ids.astype(np.int64), "attention_mask": mask,
                                          "position_ids": positions, **past})
        present = {PAST + name.removeprefix(PRESENT): r for name, r in zip(self.outputs[1:], results[1:])}
        return results[0], present


Pick = Callable[[np.ndarray], int]


def generate(decoder: Decoder, prompt: list[int], max_new_tokens: int, pick: Pick,
             stop: frozenset[int] = frozenset()) -> Iterator[int]:
    """The new tokens one at a time: the prompt in one step, then one token per step; ends after a stop token."""
    ids, past, done = np.array([prompt], np.int64), decoder.empty_past(1), 0
    for _ in range(max_new_tokens):
        logits, past = decoder.step(ids, past, done)
        done += ids.shape[1]
        token = pick(logits[0, -1])
        yield token
        if token in stop:
            return
        ids = np.array([[token]], np.int64)


def greedy(logits: np.ndarray) -> int:
    return int(np.argmax(logits))


def sampler(temperature: float, top_p: float, seed: int) -> Pick:
    """Draw from softmax(logits / temperature), keeping only the most likely tokens whose probabilities
    reach `top_p` together (nucleus sampling); seeded, so a run repeats."""
    rng = np.random.default_rng(seed)

    def pick(logits: np.ndarray) -> int:
        z = logits.astype(np.float64) / temperature
        p = np.exp(z - z.max())
        order = np.argsort(-p, kind="stable")
        p = p[order] / p.sum()
        # The first tokens that reach top_p (all of them when rounding keeps the sum below it).
        keep = min(int(np.searchsorted(np.cumsum(p), top_p)) + 1, len(p))
        return int(order[rng.choice(keep, p=p[:keep] / p[:keep].sum())])
    return pick
