"""Plain torch source for every op of the graph contract: what the generated launcher runs outside
its kernels. One-line ops become expressions; longer ones (attention, the set aggregators) are
embedded as the runtime's own function source, with the module-level helpers they call, so the
launcher computes exactly what the runtime does. Arguments arrive already rendered as source.
"""
from __future__ import annotations

import ast
import inspect
import sys

from runtime import frames, ops, sets


def _reshape(x, shape):
    """The checker's ONNX-style spec resolved in source: 0 copies the input's dim."""
    spec = ast.literal_eval(shape)
    return f"{x}.reshape({', '.join(f'{x}.shape[{i}]' if s == 0 else str(s) for i, s in enumerate(spec))})"


def _frame_in(x, basis, centroid):
    flat = f"{x}.reshape({x}.shape[0], -1, 3)" + ("" if centroid == "None" else f" - {centroid}")
    return f"(({flat}).unsqueeze(1) @ {basis}).reshape(-1, *{x}.shape[1:])"


def _frame_out(y, basis, centroid, kind):
    per_frame = f"{y}.reshape(-1, {basis}.shape[1], *{y}.shape[1:])"
    if kind == "'invariant'":
        return f"{per_frame}.mean(1)"
    back = f"({per_frame}.reshape({basis}.shape[0], {basis}.shape[1], -1, 3) @ {basis}.transpose(-1, -2)).mean(1)"
    if kind == "'position'":
        back = f"({back} + {centroid})"
    return f"{back}.reshape(-1, *{y}.shape[1:])"


EXPRESSIONS = {
    ops.linear: lambda x, weight, bias: f"F.linear({x}, {weight}, {bias})",
    ops.embedding: lambda ids, weight: f"F.embedding({ids}, {weight})",
    ops.layernorm: lambda x, weight, bias, eps: f"F.layer_norm({x}, {x}.shape[-1:], {weight}, {bias}, {eps})",
    ops.rmsnorm: lambda x, weight, eps: f"{x} * torch.rsqrt({x}.pow(2).mean(-1, keepdim=True) + {eps})"
                                        + ("" if weight == "None" else f" * {weight}"),
    ops.relu: lambda x: f"torch.relu({x})",
    ops.gelu: lambda x: f"F.gelu({x})",
    ops.silu: lambda x: f"F.silu({x})",
    ops.tanh: lambda x: f"torch.tanh({x})",
    ops.sigmoid: lambda x: f"torch.sigmoid({x})",
    ops.softmax: lambda x, axis: f"torch.softmax({x}, {axis})",
    ops.add: lambda a, b: f"{a} + {b}",
    ops.sub: lambda a, b: f"{a} - {b}",
    ops.mul: lambda a, b: f"{a} * {b}",
    ops.div: lambda a, b: f"{a} / {b}",
    ops.neg: lambda a: f"-{a}",
    ops.matmul: lambda a, b: f"torch.matmul({a}, {b})",
    ops.concat: lambda tensors, axis: f"torch.cat({tensors}, {axis})",
    ops.reshape: _reshape,
    ops.unflatten_rows: lambda y, like: f"{y}.reshape(*{like}.shape[:-1], {y}.shape[-1])",
    ops.permute: lambda x, perm: f"{x}.permute({perm})",
    ops.reduce_sum: lambda x, axis, keepdim: f"{x}.sum({axis}, keepdim={keepdim})",
    ops.reduce_mean: lambda x, axis, keepdim: f"{x}.mean({axis}, keepdim={keepdim})",
    ops.reduce_max: lambda x, axis, keepdim: f"{x}.amax({axis}, keepdim={keepdim})",
    ops.reduce_min: lambda x, axis, keepdim: f"{x}.amin({axis}, keepdim={keepdim})",
    sets.gather: lambda x, index, axis: f"{x}.index_select({axis}, {index})",
    frames.frame_tile: lambda x, frames: f"{x}.unsqueeze(1).expand(-1, {frames}, *{x}.shape[1:]).reshape(-1, *{x}.shape[1:])",
    frames.frame_in: _frame_in,
    frames.frame_out: _frame_out,
}
EMBEDDED = (ops.attention, sets.masked_reduce, sets.attention_pool, sets.segment_reduce, sets.scatter_reduce)


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
