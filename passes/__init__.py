"""Graph passes: each one is a small named function GraphModule -> GraphModule."""
from passes.base import Pass, Pipeline, PassError

__all__ = ["Pass", "Pipeline", "PassError"]
