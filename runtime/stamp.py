"""invc's stamp on the ONNX files it writes: a content hash of the whole model in metadata_props,
checked when a file is loaded, so a damaged or edited file is refused instead of running. The hash
covers the weights (by value), every node with its attributes, the functions, the inputs and
outputs, the opsets and every metadata entry but the stamp itself: an edited epsilon, Softmax
axis, op type, frame-function constant or index bound changes it, and so does deleting or adding
an entry. A file without the stamp was not written by invc and runs unchecked, with a note."""
from __future__ import annotations

import hashlib
from pathlib import Path

import onnx
from onnx import numpy_helper

CONTENT_KEY = "invc.content_sha256"
OLD_KEY = "invc.weights_sha256"  # the stamp of invc versions that hashed the weights only


def _fields(h, message, skip: tuple[str, ...] = ()) -> None:
    """Every set field of a proto message but `skip`, each serialised deterministically and framed by
    its name and length, so no two different messages feed the hash the same bytes."""
    for field, value in message.ListFields():
        if field.name in skip:
            continue
        items = value if field.is_repeated else [value]
        for item in items:
            data = item.SerializeToString(deterministic=True) if hasattr(item, "SerializeToString") else repr(item).encode()
            h.update(f"{field.name}\0{len(data)}\0".encode() + data)


def _weights(h, model: onnx.ModelProto) -> None:
    """Every initializer's name, dtype, dims and values, however the proto stores them (raw bytes,
    typed fields, external data)."""
    for t in sorted(model.graph.initializer, key=lambda t: t.name):
        h.update(f"{t.name}\0{t.data_type}\0{list(t.dims)}\0".encode())
        h.update(numpy_helper.to_array(t).tobytes())


def content_digest(model: onnx.ModelProto) -> str:
    """sha256 of everything that decides what the model computes or what invc checks at run time."""
    h = hashlib.sha256()
    _fields(h, model, skip=("graph", "metadata_props"))
    _fields(h, model.graph, skip=("initializer",))
    for p in sorted(model.metadata_props, key=lambda p: p.key):
        if p.key != CONTENT_KEY:
            h.update(f"{len(p.key)}\0{p.key}\0{len(p.value)}\0{p.value}".encode())
    _weights(h, model)
    return h.hexdigest()


def stamp(model: onnx.ModelProto, extra: dict[str, str] | None = None) -> onnx.ModelProto:
    """Add `extra` entries to the model's metadata_props, then the content hash, in place."""
    props = {p.key: p.value for p in model.metadata_props if p.key != CONTENT_KEY}
    props.update(extra or {})
    onnx.helper.set_model_props(model, props)
    onnx.helper.set_model_props(model, {**props, CONTENT_KEY: content_digest(model)})
    return model


def stamp_file(path: Path | str, extra: dict[str, str] | None = None) -> None:
    """Stamp an ONNX file written by another exporter (weights inside the file)."""
    model = onnx.load(str(path))
    onnx.save(stamp(model, extra), str(path))


def verify(model: onnx.ModelProto) -> str | None:
    """None when the stamp matches; "unstamped" for a file invc did not write; else why it is refused."""
    props = {p.key: p.value for p in model.metadata_props}
    if CONTENT_KEY not in props:
        if OLD_KEY in props:
            return "it was written by an older invc whose hash covered the weights only: compile it again"
        return "unstamped"
    if content_digest(model) != props[CONTENT_KEY]:
        return ("its content does not match the hash invc wrote into it (weights, nodes, attributes, "
                "functions or metadata were changed): the file is damaged")
    return None
