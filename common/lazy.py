"""A module bound by name and imported on first attribute access. An op family names torch, numpy
and onnx at its top this way, so `invc check` loads none of them: an op's torch and ONNX forms
load only when a graph is lowered or emitted."""
from __future__ import annotations

import importlib
import sys


class Lazy:
    def __init__(self, name: str):
        self._name = name

    def __getattr__(self, attr: str):
        value = getattr(sys.modules.get(self._name) or importlib.import_module(self._name), attr)
        setattr(self, attr, value)  # kept: the ops' forward passes look it up again on every call
        return value

    def __repr__(self) -> str:
        return f"<lazy module {self._name}>"
