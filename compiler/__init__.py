"""invc's compiler: the driver (check, build, compile), the pipeline, the CLI and the backends."""
from compiler.driver import build, check, compile  # noqa: A004 - `compile` is the documented API

__all__ = ["build", "check", "compile"]
