"""The checker: resolves names, binds op arguments, checks dtypes and shapes, and elaborates a
model (defs inlined, `repeat` unrolled, mlp expanded) into a flat list of op calls.

Everything that can be wrong with a spec is found here and raised as a SpecError, so lowering
never has to say no.
"""
from __future__ import annotations

import inspect
import math
from dataclasses import dataclass, replace

from dsl import ast, limits
from dsl.errors import SpecError, did_you_mean
from dsl.groups import declare
from dsl.program import Program
from dsl.rules import Axis, DefRef, Positive, Tensor
from dsl.types import DTYPES, CheckedModel, OpNode, Port, Sym, TensorType, Value, dim_product

PARAM_TYPES = {"int": int, "float": float, "bool": bool, "str": str}

# Lowering turns each binding into a submodule attribute (`h.weight` is `gm.h.weight`), so a binding
# named like an attribute every torch.fx.GraphModule has (`eval`, `forward`, `training`, ...) cannot
# be lowered. dsl/ stays torch-free, so the names are listed here; tests/test_checker.py compares
# them with the installed torch. Dunder names (`__init__`) are refused by rule.
MODULE_ATTRIBUTES = frozenset("""
    T_destination add_module add_submodule apply bfloat16 buffers call_super_init children code
    compile cpu cuda delete_all_unused_submodules delete_submodule double dump_patches eval
    extra_repr float forward get_buffer get_extra_state get_parameter get_submodule graph half ipu
    load_state_dict meta modules mtia named_buffers named_children named_modules named_parameters
    parameters print_readable recompile register_backward_hook register_buffer register_forward_hook
    register_forward_pre_hook register_full_backward_hook register_full_backward_pre_hook
    register_load_state_dict_post_hook register_load_state_dict_pre_hook register_module
    register_parameter register_state_dict_post_hook register_state_dict_pre_hook requires_grad_
    set_extra_state set_submodule shape_env share_memory state_dict to to_empty to_folder train
    training type xpu zero_grad
    _apply _backward_hooks _backward_pre_hooks _boxed_call _buffers _call_impl _code
    _compiled_call_impl _create_node_hooks _deepcopy_hooks _deepcopy_init _erase_node_hooks
    _forward_hooks _forward_hooks_always_called _forward_hooks_with_kwargs _forward_pre_hooks
    _forward_pre_hooks_with_kwargs _get_backward_hooks _get_backward_pre_hooks _get_name _graph
    _is_full_backward_hook _lineno_map _load_from_state_dict _load_state_dict_post_hooks
    _load_state_dict_pre_hooks _maybe_warn_non_full_backward_hook _modules _named_members
    _non_persistent_buffers_set _parameters _prologue_start _recompile_submodules
    _register_create_node_hook _register_deepcopy_hook _register_erase_node_hook
    _register_load_state_dict_pre_hook _register_replace_node_hook _register_state_dict_hook
    _replace_hooks _replicate_for_data_parallel _save_to_state_dict _set_replace_hook _slow_forward
    _state_dict_hooks _state_dict_pre_hooks _tracer_cls _tracer_extras _unregister_create_node_hook
    _unregister_deepcopy_hook _unregister_erase_node_hook _unregister_replace_node_hook _version
    _wrapped_call _wrapped_call_impl
""".split())


def _module_attribute(name: str) -> bool:
    return name in MODULE_ATTRIBUTES or (name.startswith("__") and name.endswith("__"))


@dataclass
class Scope:
    names: dict
    prefix: str = ""              # parameter path of the enclosing def calls, e.g. "stack.0."
    defs_active: tuple = ()       # the def calls being expanded, to refuse recursion


def check(program: Program, vocabulary, model: str | None = None, overrides: dict | None = None,
          prove: bool = True) -> CheckedModel:
    """The checked model; with `prove`, its claimed output symmetries are proved or refused.
    `vocabulary` (ops/op.py's Vocabulary) holds the ops' checker and symmetry rules."""
    m = _pick_model(program, model)
    try:
        checked = _Elaborator(program, m, vocabulary).model(overrides or {})
    except RecursionError:  # only where --limit depth was raised past what Python's stack holds
        raise SpecError.at(m.pos, "the spec nests too deeply for Python's stack",
                           f"lower --limit depth (now {limits.current().depth})") from None
    return proved(checked) if prove else checked


def proved(checked: CheckedModel) -> CheckedModel:
    """The model once each claimed output symmetry is proved; a SpecError at the op that breaks one."""
    if len(checked.groups):
        from dsl.symmetry import enforce  # only specs that declare a symmetry load the rule table
        enforce(checked)
    return checked


def _pick_model(program: Program, name: str | None) -> ast.Model:
    models = program.models
    if not models:
        raise SpecError(f"no `model` block in {program.root.file}", program.root.file, 1, 1,
                        program.root.source, "declare one: model name(...) { ... }")
    if name is None:
        if len(models) > 1:
            raise SpecError(f"{program.root.file} declares several models: {', '.join(models)}",
                            program.root.file, 1, 1, None, "choose one with --model NAME")
        return next(iter(models.values()))
    if name not in models:
        raise SpecError(f"no model named `{name}` in {program.root.file}", program.root.file, 1, 1,
                        None, did_you_mean(name, models) or f"models: {', '.join(models)}")
    return models[name]


class _Elaborator:
    def __init__(self, program: Program, model: ast.Model, vocabulary):
        self.program, self.ast, self.ops = program, model, vocabulary
        self.out = CheckedModel(model.name, program.root.file, program.source_hash(), {}, vocabulary=vocabulary)
        self.ids = 0
        self.param_names: set[str] = set()
        self.weights = 0              # parameter elements so far, against limits.parameters

    # -- the model -----------------------------------------------------------------------------
    def model(self, overrides: dict) -> CheckedModel:
        params = self._model_params(overrides)
        self.out.params = params
        scope = Scope(dict(params))
        for stmt in self.ast.body:
            self.statement(stmt, scope, in_model=True)
        if not self.out.outputs:
            raise SpecError.at(self.ast.pos, f"model `{self.ast.name}` declares no output",
                               "add `output NAME` for the tensor it returns")
        self.out.groups = declare(self.out)
        return self.out

    def _model_params(self, overrides: dict) -> dict:
        declared = {p.name: p for p in self.ast.params}
        for key in overrides:
            if key not in declared:
                raise SpecError.at(self.ast.pos, f"model `{self.ast.name}` has no parameter `{key}`",
                                   did_you_mean(key, declared) or f"parameters: {', '.join(declared) or 'none'}")
        values = {}
        for p in self.ast.params:
            if p.type is None:
                raise SpecError.at(p.pos, f"model parameter `{p.name}` needs a type",
                                   f"write `{p.name}: int = ...` (int, float, bool or str)")
            if p.name in overrides:
                values[p.name] = self._param_value(p, overrides[p.name], p.pos)
            elif p.default is None:
                raise SpecError.at(p.pos, f"model parameter `{p.name}` has no default and was not given")
            else:
                values[p.name] = self._param_value(p, self.static(p.default, Scope(dict(values))), p.default.pos)
        return values

    def _param_value(self, p: ast.Param, v, pos):
        if p.type not in PARAM_TYPES:
            raise SpecError.at(p.pos, f"unknown parameter type `{p.type}`",
                               did_you_mean(p.type, PARAM_TYPES) or "use int, float, bool or str")
        ok = _fits(v, PARAM_TYPES[p.type])
        if ok is None:
            raise SpecError.at(pos, f"parameter `{p.name}` is {p.type}, got {_describe(v)}")
        if isinstance(ok, int) and abs(ok) > limits.INT_MAX:
            raise SpecError.at(pos, f"parameter `{p.name}` is too large ({len(str(ok))} digits)",
                               f"the largest int is 2**63-1 = {limits.INT_MAX}")
        return ok

    def statement(self, stmt, scope: Scope, in_model: bool):
        if isinstance(stmt, ast.Assign):
            self.assign(stmt, scope)
        elif not in_model:  # a def's `return` never gets here: _run_def takes it
            raise SpecError.at(stmt.pos, f"`{type(stmt).__name__.lower()}` belongs in a model, not in a def")
        elif isinstance(stmt, ast.Input):
            self.input(stmt, scope)
        elif isinstance(stmt, ast.Output):
            self.output(stmt, scope)
        elif isinstance(stmt, ast.Symmetry):
            self.out.symmetry += stmt.groups
        elif isinstance(stmt, ast.Return):
            raise SpecError.at(stmt.pos, "`return` belongs in a def; a model declares `output NAME`")

    def input(self, stmt: ast.Input, scope: Scope):
        if stmt.dtype not in DTYPES:
            raise SpecError.at(stmt.pos, f"unknown dtype `{stmt.dtype}`",
                               did_you_mean(stmt.dtype, DTYPES) or f"use one of {', '.join(DTYPES)}")
        dims = tuple(self._input_dim(d, scope) for d in stmt.dims)
        value = self.new_value(stmt.name, TensorType(stmt.dtype, dims))
        self.bind(scope, stmt.name, value, stmt.pos)
        self.out.inputs.append(Port(stmt.name, value.type, stmt.role, stmt.pos, value))

    def _input_dim(self, expr, scope: Scope):
        v = self.static(expr, scope, expect=Axis)
        if isinstance(v, Sym) and "*" not in v.name:
            return v.name
        if isinstance(v, int) and not isinstance(v, bool) and v >= 1:
            return v
        raise SpecError.at(expr.pos, f"an input dim must be a positive int or a plain symbolic name, got {_describe(v)}")

    def output(self, stmt: ast.Output, scope: Scope):
        value = scope.names.get(stmt.name)
        if not isinstance(value, Value):
            hint = did_you_mean(stmt.name, [k for k, v in scope.names.items() if isinstance(v, Value)])
            what = "is not defined" if value is None else "is not a tensor"
            raise SpecError.at(stmt.pos, f"output `{stmt.name}` {what}", hint)
        if any(p.name == stmt.name for p in self.out.outputs):
            raise SpecError.at(stmt.pos, f"output `{stmt.name}` is declared twice")
        self.out.outputs.append(Port(stmt.name, value.type, stmt.role, stmt.pos, value))

    def assign(self, stmt: ast.Assign, scope: Scope):
        if _module_attribute(stmt.name):
            raise SpecError.at(stmt.pos, f"`{stmt.name}` cannot name a binding: every torch module has an "
                                         f"attribute `{stmt.name}`, and the binding's parameters would hide it",
                               f"rename it, e.g. `{stmt.name.strip('_')}_out`")
        if stmt.repeat is not None:
            value = self.repeat(stmt, scope)
        else:
            value = self.eval(stmt.value, scope, stmt.name)
        if stmt.more:
            return self._unpack(stmt, value, scope)
        if isinstance(value, tuple):
            raise SpecError.at(stmt.pos, f"`{stmt.name}` is bound to {len(value)} tensors",
                               f"unpack them: {', '.join(f'{stmt.name}{i}' for i in range(len(value)))} = ...")
        self.bind(scope, stmt.name, self._named(value, stmt.name, scope), stmt.pos)

    def _unpack(self, stmt: ast.Assign, value, scope: Scope):
        names = (stmt.name, *stmt.more)
        if not isinstance(value, tuple) or len(value) != len(names):
            got = f"{len(value)} tensors" if isinstance(value, tuple) else _describe(value)
            raise SpecError.at(stmt.pos, f"{len(names)} names are bound to {got}")
        for name, v in zip(names, value):
            if _module_attribute(name):
                raise SpecError.at(stmt.pos, f"`{name}` cannot name a binding: every torch module has an "
                                             f"attribute `{name}`", f"rename it, e.g. `{name.strip('_')}_out`")
            self.bind(scope, name, v, stmt.pos)

    def bind(self, scope: Scope, name: str, value, pos):
        if name in self.ops.spec or name in self.program.defs:
            raise SpecError.at(pos, f"`{name}` is an op or def name and cannot be rebound",
                               "pick another name")
        scope.names[name] = value

    def _named(self, value, name: str, scope: Scope):
        """Give the statement's result its binding's name, so the fx graph reads like the spec."""
        if not isinstance(value, Value) or not self.out.nodes or self.out.nodes[-1].value != value:
            return value
        named = replace(value, name=(scope.prefix + name).replace(".", "_"))
        self.out.nodes[-1].value = named
        return named

    def repeat(self, stmt: ast.Assign, scope: Scope):
        count = self.static(stmt.repeat, scope)
        call = stmt.value
        if not isinstance(call, ast.Call) or call.func not in self.program.defs:
            raise SpecError.at(stmt.value.pos, "`repeat` applies to a call of a def",
                               "write `h = block(h) repeat 4` with `def block(x) { ... }`")
        if not isinstance(count, int) or isinstance(count, bool) or count < 1:
            raise SpecError.at(stmt.repeat.pos, f"`repeat` needs a positive int, got {_describe(count)}")
        if count > limits.current().repeat:
            raise SpecError.at(stmt.repeat.pos, *limits.exceeded(f"`repeat {count:,}`", "repeat"))
        if not call.args:
            raise SpecError.at(call.pos, "`repeat` threads the first argument through each copy; pass one")
        value = self.eval(call.args[0], scope, stmt.name)
        for i in range(count):
            value = self.call_def(self.program.defs[call.func], call, [value], scope,
                                  f"{scope.prefix}{stmt.name}.{i}.")
        return value

    # -- expressions ---------------------------------------------------------------------------
    def new_value(self, name: str, type_: TensorType) -> Value:
        self.ids += 1
        return Value(self.ids, name.replace(".", "_"), type_)

    def static(self, expr, scope: Scope, expect=None):
        v = self.eval(expr, scope, "_", expect)
        if isinstance(v, Value):
            raise SpecError.at(expr.pos, f"expected a constant here, got tensor {v.type}")
        return v

    def eval(self, expr, scope: Scope, binding: str, expect=None):
        if isinstance(expr, (ast.Num, ast.Str, ast.Bool)):
            return expr.value
        if isinstance(expr, ast.Name):
            return self.lookup(expr, scope, expect)
        if isinstance(expr, ast.List):
            return [self.eval(i, scope, binding, Axis) for i in expr.items]
        if isinstance(expr, ast.Neg):
            v = self.eval(expr.operand, scope, binding)
            if isinstance(v, Value):
                op, rule = self.ops.operators["unary -"]
                return rule(_Ctx(self, op, expr.pos, binding, scope), v)
            return self._static_arith("-", 0, v, expr)
        if isinstance(expr, ast.BinOp):
            return self.binop(expr, scope, binding, expect)
        if isinstance(expr, ast.Call):
            return self.call(expr, scope, binding)
        raise SpecError.at(expr.pos, f"unexpected expression {type(expr).__name__}")

    def lookup(self, expr: ast.Name, scope: Scope, expect):
        if expr.id in scope.names:
            return scope.names[expr.id]
        if expect is Axis:
            return Sym(expr.id)
        if expr.id in self.program.defs:
            raise SpecError.at(expr.pos, f"`{expr.id}` is a def; call it: {expr.id}(...)")
        raise SpecError.at(expr.pos, f"`{expr.id}` is not defined",
                           did_you_mean(expr.id, list(scope.names)))

    def binop(self, expr: ast.BinOp, scope: Scope, binding: str, expect):
        a = self.eval(expr.left, scope, binding, expect)
        b = self.eval(expr.right, scope, binding, expect)
        if isinstance(a, Value) or isinstance(b, Value):
            op, rule = self.ops.operators[expr.op]
            ctx = _Ctx(self, op, expr.pos, binding, scope)
            ctx.symbol = expr.op
            if expr.op == "@":
                if not (isinstance(a, Value) and isinstance(b, Value)):
                    ctx.error("`@` needs two tensors")
            elif not all(isinstance(v, Value) or _is_number(v) for v in (a, b)):
                ctx.error(f"cannot apply `{expr.op}` to {_describe(a)} and {_describe(b)}")
            return rule(ctx, a, b)
        return self._static_arith(expr.op, a, b, expr)

    def _static_arith(self, op: str, a, b, expr):
        if op == "*" and any(isinstance(v, Sym) for v in (a, b)) and all(
                isinstance(v, Sym) or (isinstance(v, int) and not isinstance(v, bool)) for v in (a, b)):
            _refuse_overflow(_coefficient(a) * _coefficient(b), expr)
            return Sym(str(dim_product([v.name if isinstance(v, Sym) else v for v in (a, b)])))
        if not (_is_number(a) and _is_number(b)):
            raise SpecError.at(expr.pos, f"cannot apply `{op}` to {_describe(a)} and {_describe(b)}")
        if op == "/" and b == 0:
            raise SpecError.at(expr.pos, "division by zero")
        if op == "@":
            raise SpecError.at(expr.pos, "`@` needs two tensors")
        result = {"+": a + b, "-": a - b, "*": a * b}.get(op)
        if op == "/":
            result = a // b if isinstance(a, int) and isinstance(b, int) and a % b == 0 else a / b
        return _refuse_overflow(result, expr)

    def call(self, expr: ast.Call, scope: Scope, binding: str):
        if isinstance(self.program.defs.get(expr.func), ast.TorchDef):
            tensors = [self.eval(a, scope, binding) for a in expr.args]
            return self.call_torch(self.program.defs[expr.func], expr, tensors, scope, binding)
        if expr.func in self.program.defs:
            return self.call_def(self.program.defs[expr.func], expr, None, scope, f"{scope.prefix}{binding}.")
        rule = self.ops.spec.get(expr.func)
        if rule is None:
            raise SpecError.at(expr.pos, f"unknown op `{expr.func}`",
                               did_you_mean(expr.func, list(self.ops.spec) + list(self.program.defs)))
        ctx = _Ctx(self, expr.func, expr.pos, binding, scope)
        args, kwargs = self.bind_args(rule, expr, scope, binding, ctx)
        return rule(ctx, *args, **kwargs)

    def bind_args(self, rule, expr: ast.Call, scope: Scope, binding: str, ctx):
        sig = inspect.signature(rule)
        sig = sig.replace(parameters=list(sig.parameters.values())[1:])
        try:
            bound = sig.bind(*expr.args, **{k.name: k.value for k in expr.kwargs})
        except TypeError as e:
            raise _arity_error(expr, sig, e) from None
        args, kwargs = [], {}
        star_given = any(sig.parameters[n].kind is inspect.Parameter.VAR_POSITIONAL and g
                         for n, g in bound.arguments.items())
        for name, given in bound.arguments.items():
            param = sig.parameters[name]
            if param.kind is param.VAR_POSITIONAL:
                args.extend(self._arg(g, param, scope, binding) for g in given)
            elif star_given and param.kind is param.POSITIONAL_OR_KEYWORD:
                args.append(self._arg(given, param, scope, binding))  # must precede the *args
            else:  # by keyword, so a skipped default in between cannot shift the rest
                kwargs[name] = self._arg(given, param, scope, binding)
        return args, kwargs

    def _arg(self, expr, param, scope: Scope, binding: str):
        kind = param.annotation
        if kind is DefRef:
            if not isinstance(expr, ast.Name) or expr.id not in self.program.defs:
                raise SpecError.at(expr.pos, f"argument `{param.name}` expects the name of a def",
                                   did_you_mean(getattr(expr, "id", ""), self.program.defs))
            return self.program.defs[expr.id]
        v = self.eval(expr, scope, binding, kind if kind is Axis else None)
        ok = _fits(v, kind)
        if ok is None:
            raise SpecError.at(expr.pos, f"argument `{param.name}` expects {_kind_name(kind)}, got {_describe(v)}")
        return ok

    def call_torch(self, d: ast.TorchDef, call: ast.Call, tensors: list, scope: Scope, binding: str):
        """Capture the torch model `d` names on these tensors: its ops join the model as graph ops,
        its weights under `binding.` (capture/ does the work; the vocabulary hands it in)."""
        if call.kwargs:
            raise SpecError.at(call.kwargs[0].pos, f"`{d.name}` takes the model's tensors, in order",
                               f"factory arguments go in the def: def {d.name} = torch(\"{d.source}\", "
                               f"{call.kwargs[0].name}=...)")
        for a, v in zip(call.args or [call] * len(tensors), tensors):
            if not isinstance(v, Value):
                raise SpecError.at(a.pos, f"`{d.name}` takes tensors, got {_describe(v)}")
        kwargs = {k.name: self.static(k.value, Scope({})) for k in d.kwargs}
        ctx = _Ctx(self, d.name, call.pos, binding, scope)
        if self.ops.capture is None:
            ctx.error(f"`{d.name}` names a torch model, and this vocabulary cannot capture one")
        return self.ops.capture(ctx, d, tensors, kwargs)

    def call_def(self, d: ast.Def, call: ast.Call | None, threaded, outer: Scope, prefix: str):
        """Expand def `d` called from `outer`; its parameters go under `prefix` (e.g. "stack.0.")."""
        if isinstance(d, ast.TorchDef):
            extra = [self.eval(a, outer, d.name) for a in (call.args[1:] if call else ())]
            binding = prefix.removeprefix(outer.prefix).rstrip(".")
            result = self.call_torch(d, call or ast.Call(d.name, (), (), d.pos), list(threaded) + extra,
                                     outer, binding)
            if isinstance(result, tuple):
                raise SpecError.at((call or d).pos, f"`{d.name}` returns {len(result)} tensors; "
                                                    "only a model of one output can be used here")
            return result
        call = call or ast.Call(d.name, (), (), d.pos)
        if d.name in outer.defs_active:
            raise SpecError.at(call.pos, f"def `{d.name}` calls itself; defs cannot recurse",
                               "use `repeat` to stack copies")
        if len(outer.defs_active) >= limits.current().depth:
            raise SpecError.at(call.pos, *limits.exceeded(f"the nesting of def calls ({' -> '.join(outer.defs_active[:3])} ...)", "depth"))
        given = list(threaded or []) + list(call.args[1:] if call.args and threaded else call.args)
        names = {}
        by_name = {p.name: p for p in d.params}
        if len(given) > len(d.params):
            raise SpecError.at(call.pos, f"`{d.name}` takes {len(d.params)} arguments, got {len(given)}",
                               f"signature: {_def_signature(d)}")
        for p, g in zip(d.params, given):
            names[p.name] = g if isinstance(g, Value) else self.eval(g, outer, call.func)
        for k in call.kwargs:
            if k.name not in by_name:
                raise SpecError.at(k.pos, f"`{d.name}` has no parameter `{k.name}`",
                                   did_you_mean(k.name, by_name) or f"signature: {_def_signature(d)}")
            if k.name in names:
                raise SpecError.at(k.pos, f"`{k.name}` is given twice")
            names[k.name] = self.eval(k.value, outer, call.func)
        for p in d.params:
            if p.name not in names:
                if p.default is None:
                    raise SpecError.at(call.pos, f"`{d.name}` is missing argument `{p.name}`",
                                       f"signature: {_def_signature(d)}")
                names[p.name] = self.static(p.default, Scope(dict(names)))
            names[p.name] = self._def_arg(d, p, names[p.name], call.pos)
        body_scope = Scope({**names}, prefix, outer.defs_active + (d.name,))
        return self._run_def(d, body_scope)

    def _def_arg(self, d: ast.Def, p: ast.Param, v, pos):
        if p.type is None:
            if not isinstance(v, Value):
                raise SpecError.at(pos, f"`{d.name}` argument `{p.name}` is a tensor, got {_describe(v)}")
            return v
        return self._param_value(p, v, pos)

    def _run_def(self, d: ast.Def, scope: Scope):
        result = None
        for i, stmt in enumerate(d.body):
            if isinstance(stmt, ast.Return):
                if i != len(d.body) - 1:
                    raise SpecError.at(stmt.pos, "`return` must be the last statement of a def")
                result = self.eval(stmt.value, scope, "out")
                result = self._named(result, "out", scope)
            else:
                self.statement(stmt, scope, in_model=False)
        if result is None:
            raise SpecError.at(d.pos, f"def `{d.name}` has no `return`")
        return result


class _Ctx:
    """What an op rule sees: where the call is, and how to emit op calls and errors."""

    def __init__(self, el: _Elaborator, op: str, pos, binding: str, scope: Scope):
        self.el, self.op, self.pos, self.binding, self.scope = el, op, pos, binding, scope
        self.symbol = op

    def error(self, message: str, hint: str | None = None):
        raise SpecError.at(self.pos, message, hint)

    def emit(self, fn: str, args: tuple, type_: TensorType, kwargs: dict | None = None,
             params: dict | None = None) -> Value:
        self._count(params or {})
        value = self.el.new_value(f"{self.scope.prefix}{self.binding}_{fn}", type_)
        prefix = self._param_prefix(params or {})
        self.el.out.nodes.append(OpNode(value, fn, tuple(args), dict(kwargs or {}), dict(params or {}),
                                        prefix, self.pos))
        return value

    def _count(self, params: dict) -> None:
        """Refuse a model past the node or parameter limit as soon as it gets there, before the
        elaboration of a `repeat 10000000` runs out of memory."""
        if len(self.el.out.nodes) >= limits.current().nodes:
            self.error(*limits.exceeded("the model's op count", "nodes"))
        self.el.weights += sum(math.prod(p.shape) for p in params.values())
        if self.el.weights > limits.current().parameters:
            self.error(*limits.exceeded(f"the model's parameter count ({self.el.weights:,})", "parameters"))

    def _param_prefix(self, params: dict) -> str:
        """`scope.binding.`, numbered when a rebinding or a nested call would reuse a name."""
        base, prefix, k = f"{self.scope.prefix}{self.binding}", f"{self.scope.prefix}{self.binding}.", 0
        while any(prefix + p in self.el.param_names for p in params):
            k += 1
            prefix = f"{base}_{k}."
        self.el.param_names.update(prefix + p for p in params)
        return prefix

    def call_def(self, d, tensors: list) -> Value:
        """Expand def `d` on these tensors (its leading tensor arguments), parameters under this call."""
        if _module_attribute(d.name):
            raise SpecError.at(d.pos, f"def `{d.name}` cannot be passed to {self.op}: its parameters would go "
                                      f"under `{d.name}`, an attribute every torch module has",
                               f"rename the def, e.g. `{d.name.strip('_')}_block`")
        result = self.el.call_def(d, None, list(tensors), self.scope, f"{self.scope.prefix}{self.binding}.{d.name}.")
        if not isinstance(result, Value):
            self.error(f"{self.op}: def `{d.name}` must return a tensor")
        return result

    def axis(self, x: Value, axis) -> int:
        shape = x.type.shape
        if isinstance(axis, Sym):
            hits = [i for i, d in enumerate(shape) if d == axis.name]
            if len(hits) != 1:
                self.error(f"{self.op}: axis `{axis.name}` is not a dim of {x.type}" if not hits else
                           f"{self.op}: axis `{axis.name}` appears twice in {x.type}; use an index")
            return hits[0]
        if not -len(shape) <= axis < len(shape):
            self.error(f"{self.op}: axis {axis} is out of range for {x.type}")
        return axis % len(shape)

    def dim(self, d):
        if isinstance(d, Sym):
            return d.name
        if isinstance(d, int) and not isinstance(d, bool) and d >= 1:
            return d
        self.error(f"{self.op}: a dim must be a positive int or a symbolic name, got {_describe(d)}")

    def reshape_spec(self, x: Value, target: tuple) -> tuple:
        """ONNX-style spec: 0 keeps the input's dim at that position, -1 is the one inferred."""
        src = x.type.shape
        if dim_product(src) != dim_product(target):
            self.error(f"{self.op}: cannot reshape {x.type} to {list(target)}: sizes differ")
        spec = [0 if i < len(src) and src[i] == d and not isinstance(d, int) else d
                for i, d in enumerate(target)]
        unknown = [i for i, s in enumerate(spec) if isinstance(s, str)]
        if len(unknown) > 1:
            self.error(f"{self.op}: {list(target)} has {len(unknown)} symbolic dims that move; "
                       "at most one can be inferred", "keep symbolic dims in place, or merge them into one")
        for i in unknown:
            spec[i] = -1
        return tuple(spec)


def _fits(v, kind):
    """v converted to the annotated kind, or None when it does not fit."""
    if kind is inspect.Parameter.empty:
        return v
    if kind is Tensor:
        return v if isinstance(v, Value) else None
    if kind is Axis:
        return v if isinstance(v, Sym) or (isinstance(v, int) and not isinstance(v, bool)) else None
    if kind is float:
        return float(v) if _is_number(v) else None
    if kind is Positive:  # an epsilon: nan, inf, 0 or below would give nan or inf results
        return float(v) if _is_number(v) and math.isfinite(v) and v > 0 else None
    if kind is int:
        return v if isinstance(v, int) and not isinstance(v, bool) else None
    return v if isinstance(v, kind) else None


def _coefficient(v) -> int:
    """The int factor of a static int or a symbolic product (`8*N` -> 8)."""
    return v if isinstance(v, int) else math.prod(int(f) for f in v.name.split("*") if f.isdigit())


def _refuse_overflow(value, expr):
    if isinstance(value, int) and abs(value) > limits.INT_MAX:
        raise SpecError.at(expr.pos, "integer overflow: the result does not fit in int64",
                           f"the largest int is 2**63-1 = {limits.INT_MAX}")
    return value


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _describe(v) -> str:
    if isinstance(v, Value):
        return f"tensor {v.type}"
    if isinstance(v, Sym):
        return f"undefined name `{v.name}`"
    return f"{type(v).__name__} {v!r}"


def _kind_name(kind) -> str:
    return {Tensor: "a tensor", Axis: "an axis (index or dim name)", Positive: "a finite number above 0"}.get(
        kind, getattr(kind, "__name__", str(kind)))


def _arity_error(expr: ast.Call, sig: inspect.Signature, e: TypeError) -> SpecError:
    text = str(e)
    hint = f"signature: {expr.func}{_op_signature(sig)}"
    if "unexpected keyword argument" in text:
        bad = text.split("'")[1]
        where = next(k.pos for k in expr.kwargs if k.name == bad)
        return SpecError.at(where, f"{expr.func} has no argument `{bad}`",
                            did_you_mean(bad, sig.parameters) or hint)
    if "missing a required argument" in text:
        return SpecError.at(expr.pos, f"{expr.func} is missing argument `{text.split(chr(39))[1]}`", hint)
    if "too many positional" in text:
        return SpecError.at(expr.pos, f"{expr.func} takes at most {len(sig.parameters)} positional "
                                      f"arguments, got {len(expr.args)}", hint)
    if "multiple values" in text:
        return SpecError.at(expr.pos, f"{expr.func}: argument `{text.split(chr(39))[1]}` is given twice", hint)
    return SpecError.at(expr.pos, f"{expr.func}: {text}", hint)


def _op_signature(sig: inspect.Signature) -> str:
    parts = []
    for p in sig.parameters.values():
        star = "*" if p.kind is p.VAR_POSITIONAL else ""
        default = "" if p.default is p.empty else f"={_literal(p.default)}"
        parts.append(f"{star}{p.name}{default}")
    return f"({', '.join(parts)})"


def _literal(v) -> str:
    return {True: "true", False: "false", None: "none"}[v] if isinstance(v, (bool, type(None))) else repr(v)


def _def_signature(d: ast.Def) -> str:
    return f"{d.name}({', '.join(p.name + (': ' + p.type if p.type else '') for p in d.params)})"
