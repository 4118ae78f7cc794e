"""SliceGPT as passes on existing torch models: discover the residual stream, fold the norms,
rotate it by PCA and slice it. See README.md in this folder."""
from passes.slicegpt.checkpoint import load, save_sliced
from passes.slicegpt.data import perplexity, token_sequences
from passes.slicegpt.modules import count_parameters
from passes.slicegpt.onnx_export import export_onnx
from passes.slicegpt.slicing import MODES, Calibration, SliceReport, calibrate, kept_dims, slice_model
from passes.slicegpt.standard import standard_model
from passes.slicegpt.structure import Structure, discover

__all__ = ["MODES", "Calibration", "SliceReport", "Structure", "calibrate", "count_parameters", "discover",
           "export_onnx", "kept_dims", "load", "perplexity", "save_sliced", "slice_model", "standard_model",
           "token_sequences"]
