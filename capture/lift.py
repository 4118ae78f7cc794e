"""Lifting: an ATen graph from torch.export becomes graph ops of the typed op list, as if a spec had
called them, so proofs, lowering, verify, frame averaging and the ONNX backend see one kind of graph.

Each ATen overload maps to graph ops through the lift its op family declares (`ATEN` in ops/*.py,
keyed by the exact overload). The graph is read as exported, never decomposed. An overload with no
lift, or a lift that refuses its arguments, is kept as it is (the graph op `aten`): it runs in torch,
and it has no symmetry rule, so a proof that needs it breaks there, naming the ATen op, the source
line and the module path. Nothing is proved by default.
"""
from __future__ import annotations

import operator
import re
from dataclasses import dataclass
from pathlib import Path

import sympy
import torch
import torch.fx as fx
from torch.export.graph_signature import OutputKind
from torch.utils._pytree import tree_leaves

from common.dtypes import name_of
from dsl import ast
from dsl.errors import SpecError, remember_source
from dsl.types import ParamSpec, TensorType, Value, dim_product
from capture.load import example_inputs, export, model_source

SIZE_OPS = {"aten.sym_size.int", "aten.sym_numel.default", "aten.sym_storage_offset.default"}
CHECKS = {"aten._assert_scalar.default", "aten._assert_tensor_metadata.default", "aten.sym_constrain_range_for_size.default",
          "aten._assert_async.msg", "aten.sym_constrain_range.default"}
FRAME = re.compile(r'File "([^"]+)", line (\d+), in (\S+)')
TORCH = Path(torch.__file__).resolve().parent


@dataclass(frozen=True)
class Weight:
    """A parameter, buffer or constant of the captured model, by its dotted name; `fixed` when forward's
    code builds it (the 1 that ones() fills), not a weight: a check that redraws weights keeps it."""
    name: str
    tensor: object
    fixed: bool = False


@dataclass(frozen=True)
class Size:
    """An integer the graph computes from shapes: its dim, and where a lift can read it at run time
    (`value`'s axis `axis`), when it is a plain size."""
    dim: object
    value: Value | None = None
    axis: int | None = None


@dataclass(frozen=True)
class Zeros:
    """A tensor of zeros built in `forward`, kept symbolic until an op consumes it: a scatter into it is
    an aggregation; any other use keeps the op as it is."""
    type: TensorType
    sizes: tuple
    node: object


class Refused(Exception):
    """A lift that cannot map these arguments; the op is kept as it is, with this reason."""


EXPORTED: dict = {}  # (the def, its folder, arguments, input types and roles) -> ExportedProgram, per process


def capture(ctx, d: ast.TorchDef, tensors: list, kwargs: dict, vocabulary):
    """Capture `d` on `tensors` and append its ops to the model `ctx` elaborates; the outputs' Values.
    One export serves every call of the same def on the same types (frame averaging's backbone, a
    spec checked again); the lift and its replay run each time."""
    file = ctx.el.program.root.file
    roles = {p.value.id: p.role for p in ctx.el.out.inputs}
    key = (d.source, str(Path(file).resolve().parent), repr(sorted(kwargs.items())),
           tuple((t.type, roles.get(t.id)) for t in tensors), _stamp(d, file))
    if key not in EXPORTED:
        source = model_source(d, kwargs, file)
        ep = source if isinstance(source, torch.export.ExportedProgram) else export(ctx, d, source, tensors)
        try:
            EXPORTED[key] = functional(ep)
        except Exception as e:  # noqa: BLE001 - a change in place torch itself cannot run
            raise SpecError.at(ctx.pos, f"cannot capture `{d.name}` ({d.source}): its changes in place cannot be "
                                        f"made functional: {type(e).__name__}: {_line(e)}") from None
    ep = EXPORTED[key]
    first = len(ctx.el.out.nodes)
    outs = Lift(ctx, d, ep, vocabulary).run(tensors)
    replay_check(ctx, d, ep, tensors, ctx.el.out.nodes[first:], outs, vocabulary)
    return outs


def functional(ep):
    """The program with no change in place left but scatters into fresh zeros (aggregations, which
    the lifts read whole): any other, through a view or into an input, is rewritten as the values it
    makes (torch's functionalization, run only when needed: it costs about an export)."""
    def harmless(n: fx.Node) -> bool:
        into = n.args[0] if n.args else None
        return str(n.target) in FRESH_SCATTERS and isinstance(into, fx.Node) and len(into.users) == 1 and \
            str(into.target) in FRESH_ZEROS
    changes = [n for n in ep.graph.nodes if n.op == "call_function" and isinstance(n.target, torch._ops.OpOverload)
               and n.target._schema.is_mutable and not harmless(n)]
    return ep.run_decompositions({}) if changes or ep.graph_signature.user_inputs_to_mutate else ep


FRESH_SCATTERS = {"aten.scatter_add_.default", "aten.scatter_reduce_.two", "aten.index_add_.default"}
FRESH_ZEROS = {"aten.new_zeros.default", "aten.zeros.default", "aten.zeros_like.default", "aten.new_full.default",
               "aten.full.default"}


def _stamp(d: ast.TorchDef, file: str):
    """What makes a model new: the size and time of its saved program, or of the user's module."""
    folder, top = Path(file).resolve().parent, d.source.partition(":")[0].split(".")[0]
    for path in ([folder / d.source] if d.source.endswith(".pt2") else [folder / f"{top}.py", folder / top]):
        try:
            stat = path.stat()
            return stat.st_size, stat.st_mtime_ns
        except OSError:
            continue
    return None


def replay_check(ctx, d: ast.TorchDef, ep, tensors: list, nodes: list, outs, vocabulary) -> None:
    """Run the lifted ops (their torch forms) and the captured program on the same example inputs,
    at two sets of sizes; any difference is a SpecError, never a silently different model."""
    results = outs if isinstance(outs, tuple) else (outs,)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: threads cost more than they give, many times over on a busy machine
    try:
        _replay(ctx, d, ep, tensors, nodes, results, vocabulary)
    finally:
        torch.set_num_threads(threads)


def _replay(ctx, d, ep, tensors, nodes, results, vocabulary) -> None:
    for shift in (0, 1):
        examples, _, _ = example_inputs(ctx, tensors, shift)
        with torch.no_grad():
            try:  # on copies: a model that changes its inputs must not change what the lifted ops read
                want = ep.module()(*(x.clone() for x in examples))
            except Exception as e:  # noqa: BLE001 - a guard on a dim, an axis out of range: the model's own
                raise SpecError.at(ctx.pos, f"`{d.name}` does not run on inputs of the spec's types: "
                                            f"{type(e).__name__}: {_line(e)}",
                                   "the model fixes a dim the spec declares symbolic, or fails at these sizes") from None
            env = {t.id: x for t, x in zip(tensors, examples)}
            for node in nodes:
                try:
                    env[node.value.id] = vocabulary.graph[node.op].torch(
                        *_resolve(node.args, env), *(p.value for p in node.params.values()),
                        **{k: _resolve(v, env) for k, v in node.kwargs.items()})
                except Exception as e:  # noqa: BLE001 - where the lifted ops cannot run what the model ran
                    raise SpecError.at(node.pos, f"`{d.name}`: {node.origin} fails on the spec's example inputs: "
                                                 f"{type(e).__name__}: {_line(e)}") from None
        want = tree_leaves(want)  # a tuple, a dict (its values, in order), a model output class
        for k, (r, w) in enumerate(zip(results, want)):
            got = env[r.id]
            same = got.shape == w.shape and torch.allclose(got.double(), w.double(), rtol=1e-4, atol=1e-5,
                                                           equal_nan=True)
            if not same:
                raise SpecError.at(ctx.pos, f"`{d.name}`: the lifted graph differs from the captured model "
                                            f"(output {k}, sizes {examples[0].shape if examples else ()})",
                                   "a random op (dropout in training mode, randn_like), or a bug in a lift "
                                   "(capture/, the ATEN tables of ops/*.py): please report it")


def _line(e: Exception) -> str:
    return (str(e).splitlines() or [""])[0][:200]


def _resolve(a, env):
    if isinstance(a, Value):
        return env[a.id]
    return type(a)(_resolve(x, env) for x in a) if isinstance(a, (tuple, list)) else a


class Lift:
    def __init__(self, ctx, d: ast.TorchDef, ep, vocabulary):
        self.ctx, self.d, self.ep, self.ops = ctx, d, ep, vocabulary
        self.symbols: dict = {}     # sympy symbol of an input dim -> the spec's dim
        self.env: dict = {}
        self.node: fx.Node | None = None
        self.weights: dict = {}     # weight name -> its Value, made once
        self.folded: dict = {}      # ATen node -> the Value a lift before it already computed for it
        self.inputs: list = []      # the tensors this call reads
        self.start = len(ctx.el.out.nodes)  # the model's ops before this call's

    # -- the walk ----------------------------------------------------------------------------------
    def run(self, tensors: list):
        self.inputs = list(tensors)
        sig, state = self.ep.graph_signature, {**self.ep.state_dict, **self.ep.constants}
        lifted = {**sig.inputs_to_parameters, **sig.inputs_to_buffers, **sig.inputs_to_lifted_tensor_constants}
        users = [n for n in self.ep.graph.nodes if n.op == "placeholder" and n.name not in lifted]
        if len(users) != len(tensors):
            raise SpecError.at(self.ctx.pos, f"`{self.d.name}` takes {len(users)} tensors, got {len(tensors)}")
        for n, t in zip(users, tensors):
            self._bind_input(n, t)
        for n in self.ep.graph.nodes:
            self.node = n
            if n.op == "placeholder" and n.name in lifted:
                self.env[n] = Weight(lifted[n.name], state[lifted[n.name]])
            elif n.op == "call_function":
                self.env[n] = self._call(n)
            elif n.op == "output":  # the model's own outputs, not the new values of inputs it changed
                mine = {spec.arg.name for spec in sig.output_specs if spec.kind == OutputKind.USER_OUTPUT}
                outs = [self.tensor(self.env[o]) if isinstance(o, fx.Node) else o for o in n.args[0]
                        if not isinstance(o, fx.Node) or o.name in mine]
        if any(not isinstance(o, Value) for o in outs):
            raise SpecError.at(self.ctx.pos, f"`{self.d.name}` returns something other than tensors")
        return outs[0] if len(outs) == 1 else tuple(outs)

    def _bind_input(self, n: fx.Node, t: Value):
        val = n.meta["val"]
        want = tuple(t.type.shape)
        if len(val.shape) != len(want) or name_of(val.dtype) != t.type.dtype:
            raise SpecError.at(self.ctx.pos, f"`{self.d.name}` input `{n.name}` is {name_of(val.dtype)}"
                                             f"{list(val.shape)}, the spec passes {t.type}")
        for s, d in zip(val.shape, want):
            if isinstance(s, torch.SymInt):
                self.symbols[s.node.expr] = d
            elif s != d:
                raise SpecError.at(self.ctx.pos, f"`{self.d.name}` input `{n.name}` has size {s} where the spec "
                                                 f"passes {d}: the model fixes that dim",
                                   f"declare it with its size {s}" if isinstance(d, str) else None)
        self.env[n] = t

    def _call(self, n: fx.Node):
        if n in self.folded:  # an op a lift before it folded into its own (a batch norm into its conv)
            return self.folded.pop(n)
        name = str(n.target)
        if n.target is operator.getitem:
            return self.env[n.args[0]][n.args[1]]
        if name in SIZE_OPS or not isinstance(n.meta.get("val"), (torch.Tensor, tuple, list)):
            return self._size(n)
        if name in CHECKS:
            return None
        args = tuple(self._arg(a) for a in n.args)
        kwargs = {k: self._arg(v) for k, v in n.kwargs.items()}
        lift = self.ops.aten.get(name)
        try:
            if lift is None:
                raise Refused("no symmetry rule for this op")
            return lift(self, n, *args, **kwargs)
        except Refused as why:
            return self.kept(n, args, kwargs, str(why))

    def _arg(self, a):
        if isinstance(a, fx.Node):
            return self.env[a]
        if isinstance(a, (list, tuple)):
            return type(a)(self._arg(x) for x in a)
        return a

    def _size(self, n: fx.Node) -> Size:
        val = n.meta.get("val")
        if str(n.target) == "aten.sym_size.int":
            src = self.env[n.args[0]]
            return Size(self.dim(val), src if isinstance(src, Value) else None, n.args[1])
        return Size(self.dim(val) if isinstance(val, (int, torch.SymInt)) else None)

    # -- what lifts use ------------------------------------------------------------------------------
    def dim(self, s):
        """The spec's dim for a size torch.export computed: an int, or a symbolic dim over the
        spec's names ("N", "4*N", "(E+N)")."""
        if isinstance(s, int):
            return s
        expr = s.node.expr
        if expr.is_number:
            return int(expr)
        names = {}
        for sym in expr.free_symbols:
            names[sym] = self.symbols.get(sym) or f"{self.d.name}_{sym}"  # a size only the data knows
        if expr in self.symbols:
            return self.symbols[expr]
        if expr.is_Mul and all(f.is_number or f in names for f in expr.args):
            return dim_product([int(f) if f.is_number else names[f] for f in expr.args])
        text = str(expr.subs({k: sympy.Symbol(str(v)) for k, v in names.items()})).replace(" ", "")
        return f"({text})"

    def type(self, node: fx.Node, item: int | None = None) -> TensorType:
        val = node.meta["val"] if item is None else node.meta["val"][item]
        dtype = name_of(val.dtype)
        if dtype is None:
            raise Refused(f"its dtype {val.dtype} is not one invc computes in")
        return TensorType(dtype, tuple(self.dim(s) for s in val.shape))

    def followed_by(self, n: fx.Node, target: str) -> fx.Node | None:
        """The one user of `n` when it is a `target` op, which n's lift may fold into its own."""
        users = list(n.users)
        return users[0] if len(users) == 1 and str(users[0].target) == target else None

    def args_of(self, n: fx.Node) -> tuple:
        """A later node's arguments, as far as they are lifted already (None for the rest)."""
        return tuple(self._arg(a) if not isinstance(a, fx.Node) or a in self.env else None for a in n.args)

    def fold(self, node: fx.Node, value: Value) -> Value:
        """`value`, which also stands for `node`, a later op the current lift computed with its own."""
        self.folded[node] = value
        return value

    def refuse(self, why: str):
        """A lift's refusal: the op is kept as it is, with this reason."""
        raise Refused(why)

    def emit(self, op: str, args: tuple, kwargs: dict | None = None, params: dict | None = None,
             type_: TensorType | None = None, item: int | None = None) -> Value:
        """A graph op for the current ATen node, typed like its result (or `type_`)."""
        n = self.node
        value = self.ctx.emit(op, args, type_ or self.type(n, item), kwargs, params)
        node = self.ctx.el.out.nodes[-1]
        node.pos, node.origin = self.where(n)
        return value

    def tensor(self, x) -> Value:
        """A Value for an argument: weights become `weight` ops, zeros are built."""
        if isinstance(x, Value):
            return x
        if isinstance(x, Weight):
            if x.name not in self.weights:
                self.weights[x.name] = self._weight(x)
            return self.weights[x.name]
        if isinstance(x, Zeros):
            return self.filled(x.sizes, 0.0, x.type)
        raise Refused(f"it takes {type(x).__name__} where invc needs a tensor")

    def filled(self, sizes, value: float, type_: TensorType | None = None) -> Value:
        """A tensor of one value built in forward: a one-element weight expanded to `sizes`, each an
        int or a size read at run time."""
        type_ = type_ or self.type(self.node)
        if type_.dtype != "f32":
            raise Refused(f"a {type_.dtype} tensor built in forward")
        sources, spec = [], []
        for s in sizes:
            s = self.readable(s) if isinstance(s, Size) else s
            if isinstance(s, Size) and s.value is None:
                raise Refused(f"a tensor built in forward of a size computed there ({s.dim})")
            if isinstance(s, Size):
                sources.append(s.value)
            spec.append((len(sources) - 1, s.axis) if isinstance(s, Size) else s)
        one = self.tensor(Weight(f"fill_{value:g}_{len(sizes)}", torch.full((1,) * len(sizes), float(value)), True))
        return self.emit("expand", (one, tuple(spec), *sources), type_=type_)

    def _weight(self, w: Weight) -> Value:
        t = w.tensor.detach()
        if name_of(t.dtype) != "f32":
            raise Refused(f"weight `{w.name}` is {t.dtype}; captured weights must be float32")
        return self.emit("weight", (), params={w.name: self.fixed(t) if w.fixed else self.given(t)},
                         type_=TensorType("f32", tuple(t.shape)))

    def constant(self, name: str, t) -> Value:
        """A tensor a lift computes from the model's weights (a folded batch norm's scale), as a weight."""
        return self.tensor(Weight(name, t))

    @staticmethod
    def given(t) -> ParamSpec:
        return ParamSpec(tuple(t.shape), "given", t.detach())

    @staticmethod
    def fixed(t) -> ParamSpec:
        """A value of forward's code, not a weight (see Weight.fixed)."""
        return ParamSpec(tuple(t.shape), "fixed", t.detach())

    def kept(self, n: fx.Node, args, kwargs, why: str):
        """The ATen op as it is: it runs in torch, and breaks any proof that needs it (`why` says why)."""
        tensors = []

        def layout(a):  # each tensor as ("tensor", k), each size as ("size", k, axis) of tensors[k]
            if isinstance(a, (Value, Weight, Zeros)):  # zeros built in forward are built for it
                tensors.append(self.tensor(a))
                return ("tensor", len(tensors) - 1)
            if isinstance(a, Size) and self.readable(a).value is not None:
                a = self.readable(a)
                tensors.append(a.value)
                return ("size", len(tensors) - 1, a.axis)
            if isinstance(a, (list, tuple)):
                return tuple(layout(x) for x in a)
            if a is None or isinstance(a, (int, float, bool, str, torch.dtype, torch.device, torch.layout,
                                           torch.memory_format)):
                return a
            raise Refused(f"it takes a size computed in forward ({a.dim}) that no tensor has" if isinstance(a, Size)
                          else f"it takes a {type(a).__name__}")

        try:
            rest = (layout(args), tuple((k, layout(v)) for k, v in kwargs.items()))
        except Refused as e:
            where, origin = self.where(n)
            raise SpecError.at(where, f"`{n.target}` ({origin}): {why}, and it cannot be kept as it is: {e}") from None
        val = n.meta["val"]
        # A float32 result follows the graph's float dtype (a 0-d fixed weight's), as the lifted ops do,
        # so that verify's float64 run meets no float32 tensor a kept op built (torch.linspace(...)).
        follows = any(isinstance(v, torch.Tensor) and v.dtype == torch.float32
                      for v in (val if isinstance(val, (tuple, list)) else [val]))
        common = {"op": str(n.target), "why": why, "layout": rest, "follows": follows}
        like = {"like": self.fixed(torch.zeros(()))} if follows else None
        if isinstance(val, (tuple, list)):
            return tuple(self.emit("aten", tuple(tensors), {**common, "item": k}, params=like, item=k)
                         if isinstance(v, torch.Tensor) else None for k, v in enumerate(val))
        return self.emit("aten", tuple(tensors), common, params=like)

    @staticmethod
    def sizes(x: Value) -> tuple:
        """x's sizes as zeros(...) takes them: ints, and each symbolic one read from x at run time."""
        return tuple(Size(d, x, k) if isinstance(d, str) else d for k, d in enumerate(x.type.shape))

    def zeros(self, sizes) -> Zeros:
        return Zeros(self.type(self.node), tuple(sizes), self.node)

    @staticmethod
    def is_zeros(x) -> bool:
        """`x` is fresh zeros. A scatter in place into zeros anything else reads was made functional
        before lifting (`functional`), so none is left that other readers could see."""
        return isinstance(x, Zeros)

    def ids(self, index: fx.Node, rows, whole: bool) -> Value:
        """The 1-D ids behind a scatter's index: the ids themselves, or (`whole`: a scatter's index,
        which must cover every element of its source) the ids viewed as [rows, 1, ...] and
        expanded to the source's shape."""
        if whole and tuple(index.meta["val"].shape) != tuple(self.node.args[3].meta["val"].shape):
            self.refuse("a scatter whose index does not cover its source")
        node = index
        while node.meta["val"].dim() > 1 and str(node.target) in (
                "aten.expand.default", "aten.expand_as.default", "aten.view.default", "aten.reshape.default",
                "aten.unsqueeze.default", "aten._unsafe_view.default"):
            node = node.args[0]
            if any(s != 1 for s in node.meta["val"].shape[1:]):
                self.refuse("a scatter index that differs along the rows' other axes")
        ids = self.env[node]
        if not isinstance(ids, Value) or len(ids.type.shape) != 1 or ids.type.shape[0] != rows:
            self.refuse("a scatter index that is not one id per row")
        return ids

    def readable(self, size: Size) -> Size:
        """`size` with a tensor to read it from at run time: its own, else any tensor so far that has
        that dim (N+1 is the length of the class token joined to N patches)."""
        if size.value is not None or size.dim is None:
            return size
        return next((Size(size.dim, v, k) for v in self._values() for k, d in enumerate(v.type.shape)
                     if d == size.dim), size)

    def reader(self, dim) -> tuple | None:
        """(a tensor of this call, its axis) of size `dim`, to read that size from at run time; None."""
        found = self.readable(Size(dim))
        return None if found.value is None else (found.value, found.axis)

    def _values(self) -> list:
        """Every tensor of this call so far: its inputs, then its ops' results (the replay check runs this
        call alone, so a tensor of an earlier call of the same model, alike as it may be, is not one)."""
        return self.inputs + [o.value for o in self.ctx.el.out.nodes[self.start:]]

    def like(self, size) -> Value:
        """A tensor whose dim 0 is `size` (a Size or an int): what scatter_reduce reads its set count from."""
        if isinstance(size, Size) and size.value is not None and size.axis == 0:
            return size.value
        dim = size.dim if isinstance(size, Size) else size
        found = next((v for v in self._values() if v.type.shape[:1] == (dim,)), None)
        if found is None:
            self.refuse(f"a scatter into {dim} sets, which no tensor has as its first dim")
        return found

    def kept_item(self, n: fx.Node, item: int) -> Value:
        """Output `item` of the current ATen node, computed by the op as it is (no rule lifts it)."""
        args = tuple(self._arg(a) for a in n.args)
        kwargs = {k: self._arg(v) for k, v in n.kwargs.items()}
        return self.kept(n, args, kwargs, "no symmetry rule for this output")[item]

    def where(self, n: fx.Node) -> tuple[ast.Pos, str]:
        """The innermost source line of `n` and its origin: the ATen op in its module path."""
        module = ""
        stack = n.meta.get("nn_module_stack") or {}
        if stack:
            path, cls = list(stack.values())[-1]
            module = f" in {'.'.join(filter(None, (self.d.name, path)))} ({str(getattr(cls, '__name__', cls)).split('.')[-1]})"
        origin = f"{n.target}{module or f' in {self.d.name}'}"
        frames = FRAME.findall(n.meta.get("stack_trace") or "")
        if not frames:
            return self.ctx.pos, origin
        # The innermost line outside torch itself: the model's code (PyG's included), not nn.Conv1d's.
        file, line, _ = next((f for f in reversed(frames) if not Path(f[0]).resolve().is_relative_to(TORCH)), frames[-1])
        try:
            text = open(file, encoding="utf-8").read()
        except OSError:
            return self.ctx.pos, origin
        remember_source(file, text)
        row = text.split("\n")[int(line) - 1] if int(line) <= text.count("\n") + 1 else ""
        return ast.Pos(file, int(line), len(row) - len(row.lstrip()) + 1), origin
