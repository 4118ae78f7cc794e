"""invc's stamp on the ONNX files it writes: a content hash of the initializers in metadata_props,
checked when a file is loaded, so a damaged file (a flipped bit in a weight) is refused instead of
running. A file without the stamp was not written by invc and runs unchecked, with a note."""
from __future__ import annotations

import hashlib
from pathlib import Path

import onnx
from onnx import numpy_helper

WEIGHTS_KEY = "invc.weights_sha256"


def weights_digest(model: onnx.ModelProto) -> str:
    """sha256 over every initializer's name, dtype, dims and values (however the proto stores them)."""
    h = hashlib.sha256()
    for t in sorted(model.graph.initializer, key=lambda t: t.name):
        h.update(f"{t.name}\0{t.data_type}\0{list(t.dims)}\0".encode())
        h.update(numpy_helper.to_array(t).tobytes())
    return h.hexdigest()


def stamp(model: onnx.ModelProto, extra: dict[str, str] | None = None) -> onnx.ModelProto:
    """Add the weights hash (and `extra` entries) to the model's metadata_props, in place."""
    props = {p.key: p.value for p in model.metadata_props}
    props.update(extra or {})
    props[WEIGHTS_KEY] = weights_digest(model)
    onnx.helper.set_model_props(model, props)
    return model


def stamp_file(path: Path | str, extra: dict[str, str] | None = None) -> None:
    """Stamp an ONNX file written by another exporter (weights inside the file)."""
    model = onnx.load(str(path))
    onnx.save(stamp(model, extra), str(path))


def verify(model: onnx.ModelProto) -> str | None:
    """None when the stamp matches; "unstamped" for a file invc did not write; else why it is refused."""
    props = {p.key: p.value for p in model.metadata_props}
    if WEIGHTS_KEY not in props:
        return "unstamped"
    if weights_digest(model) != props[WEIGHTS_KEY]:
        return "its weights do not match the content hash invc wrote into it: the file is damaged"
    return None
