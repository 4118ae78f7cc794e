"""invc's compiler: the driver (check, build, compile and its pipeline of steps), lowering to torch.fx,
the CLI, the verifier and the backends."""
from compiler.driver import build, check, compile  # noqa: A004 - `compile` is the documented API

__all__ = ["build", "check", "compile"]
