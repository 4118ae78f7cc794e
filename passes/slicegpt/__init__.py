"""SliceGPT as passes on existing torch models: discover the residual stream, fold the norms,
rotate it by PCA and slice it. See README.md in this folder."""
from passes.slicegpt.structure import Structure, discover

__all__ = ["Structure", "discover"]
