"""The one dtype table: invc's dtype names (as specs and fx node meta spell them) with their numpy,
torch and ONNX names. Libraries load only inside the converters, so `invc check` stays torch-free."""
from __future__ import annotations

# name: (numpy's and torch's name, ONNX TensorProto's name; onnxruntime says tensor(<it in lower case>))
TABLE = {
    "f16": ("float16", "FLOAT16"), "f32": ("float32", "FLOAT"), "f64": ("float64", "DOUBLE"),
    "i32": ("int32", "INT32"), "i64": ("int64", "INT64"), "bool": ("bool", "BOOL"),
    # only in ONNX files invc did not write
    "i8": ("int8", "INT8"), "i16": ("int16", "INT16"), "u8": ("uint8", "UINT8"),
}
DTYPES = ("f16", "f32", "f64", "i32", "i64", "bool")  # the ones a spec can declare
FLOATS = ("f16", "f32", "f64")
INTS = ("i32", "i64")
_NAMES = {library: name for name, (library, _) in TABLE.items()}
_ORT = {f"tensor({onnx.lower()})": name for name, (_, onnx) in TABLE.items()}


def torch_dtype(name: str):
    import torch
    return getattr(torch, TABLE[name][0])


def numpy_dtype(name: str):
    import numpy as np
    return np.dtype(TABLE[name][0])


def onnx_type(name: str) -> int:
    from onnx import TensorProto
    return getattr(TensorProto, TABLE[name][1])


def name_of(dtype) -> str | None:
    """invc's name of a torch or numpy dtype (torch.float32, np.dtype("float32") -> "f32"); None if none."""
    return _NAMES.get(str(dtype).removeprefix("torch."))


def from_ort(type_name: str) -> str | None:
    """invc's name of an onnxruntime type ("tensor(float)" -> "f32"); None if it has none."""
    return _ORT.get(type_name)
