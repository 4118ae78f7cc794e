"""ATen ops kept as they are: a captured model's op that no family lifts (capture/lift.py). It runs
in torch, exactly as the model ran it; it has no symmetry rule, so any proof that needs it breaks at
it, naming the op, its source line and its module; and it has no ONNX form, so a compile refuses it.
"""
from common.lazy import Lazy
from dsl.groups import Fact, Invariant
from dsl.symmetry_rules import Call
from ops.op import GraphOp

torch = Lazy("torch")


class NoOnnxForm(Exception):
    exit_code = 2


def symmetry_aten(call: Call) -> Fact:
    """Invariant when every tensor it reads by value is: a function of invariants (the tensors it
    reads only sizes from may move, sizes never change). Else broken: no rule says more."""
    read = set()

    def walk(a):
        if isinstance(a, (tuple, list)) and len(a) == 2 and a[0] == "tensor":
            read.add(a[1])
        elif isinstance(a, (tuple, list)):
            for x in a:
                walk(x)

    walk(call.kwargs["layout"])
    if all(isinstance(t.fact, Invariant) for k, t in enumerate(call.args) if k in read):
        return Invariant()
    return call.broken(call.kwargs["why"],
                       "invc proves only ops it has rules for; write this step with ops it knows, or "
                       "claim less of the output")


def aten(*tensors, op, why, layout, item=None, follows=False):
    """The ATen op `op` ("aten.name.overload") on its arguments: `layout` holds them with each tensor
    replaced by ("tensor", k), its place in `tensors`, and each size read at run time by ("size", k,
    axis), that tensor's size. An in-place op works on a copy. When `follows`, the last tensor is a 0-d
    fixed weight, and a float32 result is cast to its dtype (the graph's float dtype, Lift.kept)."""
    namespace, name, overload = op.split(".")
    fn = getattr(getattr(getattr(torch.ops, namespace), name), overload)
    tensors = list(tensors)
    like = tensors.pop() if follows else None
    if name.endswith("_") and tensors:
        tensors[0] = tensors[0].clone()

    def put(a):  # fx turns the layout's tuples into lists
        if isinstance(a, (tuple, list)) and len(a) == 2 and a[0] == "tensor":
            return tensors[a[1]]
        if isinstance(a, (tuple, list)) and len(a) == 3 and a[0] == "size":
            return tensors[a[1]].shape[a[2]]
        return type(a)(put(x) for x in a) if isinstance(a, (tuple, list)) else a

    args, kwargs = layout
    out = fn(*put(args), **{k: put(v) for k, v in kwargs})
    out = out if item is None else out[item]
    return out.to(like.dtype) if like is not None and out.dtype == torch.float32 else out


def onnx_aten(g, node, tensors, op, why, layout, item=None, follows=False):
    raise NoOnnxForm(f"`{op}` at {node.meta.get('pos', '?')} ({node.meta.get('origin', node.name)}) is kept as torch "
                     "runs it, and has no ONNX form; write that step with ops invc lifts (dsl/LANGUAGE.md, Torch "
                     "models), or run the model with `invc verify`, which measures it in torch")


TABLE = "ops"
# It takes every fact, so that a tensor it reads only the size of never breaks it; its rule breaks on
# any other that is not invariant.
GRAPH = (GraphOp(aten, symmetry_aten, onnx_aten, embed=True,
                 reads=frozenset({"frames", "weights", "indices", "outer", "stacked"})),)
SPEC = ()
ATEN = {}
