"""An op's torch form as source for the generated Triton launcher, which runs the ops outside its
kernels: one-line ops give an expression (GraphOp.triton, with each op in ops/); longer ones
(attention, the set aggregators) are embedded as their own source, with the module-level helpers
they call, so the launcher computes exactly what the torch form does.
"""
from __future__ import annotations

import ast
import inspect
import sys


def embedded_source(fn) -> list[tuple[str, str]]:
    """(name, source) of fn and the functions of its module it calls, callees first."""
    module = sys.modules[fn.__module__]
    order, seen = [], set()

    def visit(f):
        if f.__name__ in seen:
            return
        seen.add(f.__name__)
        for node in ast.walk(ast.parse(inspect.getsource(f))):
            callee = getattr(module, node.id, None) if isinstance(node, ast.Name) else None
            if inspect.isfunction(callee) and callee.__module__ == module.__name__ and callee is not f:
                visit(callee)
        path = module.__name__.replace(".", "/")
        order.append((f.__name__, f"# as in invc's {path}.py\n{inspect.getsource(f).rstrip()}"))

    visit(fn)
    return order
