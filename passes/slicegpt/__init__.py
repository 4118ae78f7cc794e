"""SliceGPT as steps on existing torch models: discover the residual stream, calibrate, fold the norms,
rotate it by PCA and slice it (pipeline.py, printed by `invc slice --print-passes`). See README.md here."""
from passes.slicegpt.checkpoint import load, save_sliced
from passes.slicegpt.data import perplexity, token_sequences
from passes.slicegpt.modules import count_parameters
from passes.slicegpt.onnx_export import export_onnx
from passes.slicegpt.pipeline import calibrate, slice_model
from passes.slicegpt.slicing import MODES, Calibration, SliceReport, kept_dims
from passes.slicegpt.standard import standard_model
from passes.slicegpt.structure import Structure, discover

__all__ = ["MODES", "Calibration", "SliceReport", "Structure", "calibrate", "count_parameters", "discover",
           "export_onnx", "kept_dims", "load", "perplexity", "save_sliced", "slice_model", "standard_model",
           "token_sequences"]
