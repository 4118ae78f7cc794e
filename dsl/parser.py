"""Text -> dsl.ast: a strict LALR parser, a Transformer to dataclasses, and errors by example."""
from __future__ import annotations

import errno
import stat
from functools import lru_cache
from pathlib import Path

from lark import Lark, Token, Transformer, Tree, v_args
from lark.exceptions import UnexpectedCharacters, UnexpectedEOF, UnexpectedInput, UnexpectedToken, VisitError

from dsl import ast, limits
from dsl.errors import SpecError, remember_source

GRAMMAR = Path(__file__).with_name("grammar.lark")

# Known mistakes, each with the message it deserves. tests/test_parser.py loops over this table.
KNOWN_MISTAKES = {
    "a statement must bind a name: write `name = op(...)`": [
        "model m() { relu(x) }",
    ],
    "missing `=` in a binding": [
        "model m() { h relu(x) }",
    ],
    "unclosed parenthesis": [
        "model m() { h = relu(x }",
        "model m() { h = linear(x, 4 }",
    ],
    "missing `}` at the end of a block": [
        "model m() { h = relu(x)",
    ],
    "a tensor type needs a dtype and dims, such as `f32[B, N, 3]`": [
        "model m() { input x: f32 }",
        "model m() { input x f32[B] }",
    ],
    "two arguments need a comma between them": [
        "model m() { h = linear(x 4) }",
    ],
}


@lru_cache(maxsize=1)
def _lark() -> Lark:
    # cache=True keeps the LALR tables in the temp dir: building them is most of `invc check`.
    return Lark(GRAMMAR.read_text(), parser="lalr", strict=True, propagate_positions=True, cache=True,
                maybe_placeholders=True)


def parse(text: str, file: str = "<spec>") -> ast.Spec:
    remember_source(file, text)
    size = len(text.encode("utf-8", "surrogatepass"))
    if size > limits.current().spec_bytes:
        message, hint = limits.exceeded(f"the spec's size ({size:,} bytes)", "spec_bytes")
        raise SpecError(message, file, hint=hint)
    try:
        tree = _lark().parse(text)
    except UnexpectedInput as e:
        raise _syntax_error(e, text, file) from None
    _refuse_deep(tree, file)
    try:
        return ast.Spec(file, text, tuple(_ToAst(file).transform(tree).children))
    except VisitError as e:
        raise e.orig_exc from None
    except RecursionError:  # only where --limit depth was raised past what Python's stack holds
        raise SpecError(f"the spec nests too deeply for Python's stack", file, 1, 1, text,
                        f"lower --limit depth (now {limits.current().depth})") from None


def parse_file(path: str | Path) -> ast.Spec:
    return parse(read_spec(Path(path)), str(path))


def read_spec(path: Path) -> str:
    """The text of a spec file. Only a regular file is read, and only up to the size limit: a FIFO
    would block forever and /dev/zero never ends."""
    try:
        info = path.stat()
        mode = info.st_mode
        if stat.S_ISDIR(mode):
            raise IsADirectoryError(errno.EISDIR, "Is a directory")
        if not stat.S_ISREG(mode):
            raise SpecError("not a regular file", str(path), hint="a spec is a .inv text file")
        with path.open("rb") as f:  # no more than the file holds: a raised limit may exceed what read() takes
            data = f.read(min(limits.current().spec_bytes, info.st_size) + 1)
    except FileNotFoundError:
        raise SpecError("spec file not found", str(path)) from None
    except (OSError, ValueError) as e:  # ValueError: a NUL byte in the path
        raise SpecError(f"cannot read spec: {getattr(e, 'strerror', None) or e}", str(path)) from None
    if len(data) > limits.current().spec_bytes:
        message, hint = limits.exceeded("the spec's size", "spec_bytes")
        raise SpecError(message, str(path), hint=hint)
    try:
        # Specs are UTF-8 whatever the locale says, so a spec reads the same on every machine;
        # a byte-order mark (some Windows editors write one) is dropped.
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        data = e.object  # without the byte-order mark, which the offsets skip
        line = data.count(b"\n", 0, e.start) + 1
        before = data[data.rfind(b"\n", 0, e.start) + 1:e.start]  # valid UTF-8: the first bad byte is at e.start
        raise SpecError(f"not a UTF-8 text file (byte 0x{data[e.start]:02x})", str(path), line,
                        len(before.decode()) + 1, hint="a spec is UTF-8 text; is this the right file?") from None
    return text


def _refuse_deep(tree: Tree, file: str) -> None:
    """Refuse nesting deeper than the limit before the recursive tree walks can hit Python's stack."""
    todo = [(tree, 1)]
    while todo:
        node, depth = todo.pop()
        if depth > limits.current().depth:
            message, hint = limits.exceeded("the nesting of this expression", "depth")
            raise SpecError.at(_first_pos(node, file), message, hint)
        todo.extend((c, depth + 1) for c in node.children if isinstance(c, Tree))


def _first_pos(node: Tree, file: str) -> ast.Pos:
    meta = node.meta
    return ast.Pos(file, getattr(meta, "line", 0), getattr(meta, "column", 0))


def _syntax_error(e: UnexpectedInput, text: str, file: str) -> SpecError:
    # A stray character says so plainly; the table is for mistakes in the token stream.
    label = None if isinstance(e, UnexpectedCharacters) else _known_mistake(e)
    line, column = getattr(e, "line", 0) or 0, getattr(e, "column", 0) or 0
    if isinstance(e, UnexpectedEOF) or getattr(getattr(e, "token", None), "type", "") == "$END" or line < 1:
        # Point just past the last thing written, where the missing piece belongs.
        body = text.rstrip()
        line, column = body.count("\n") + 1, len(body.rsplit("\n", 1)[-1]) + 1
    return SpecError(label or _describe(e), file, line, column, text, _expected_hint(e))


def _known_mistake(e: UnexpectedInput) -> str | None:
    try:
        return e.match_examples(_lark().parse, KNOWN_MISTAKES, use_accepts=True)
    except TypeError:
        # lark 1.3's debug line for two examples in one parser state formats a state object with %d
        # (`hidden: int = S(3)64`); without a label the plain description is still right.
        return None


def _describe(e: UnexpectedInput) -> str:
    if isinstance(e, UnexpectedCharacters):
        return f"unexpected character {e.char!r}"
    if isinstance(e, UnexpectedToken):
        tok = e.token
        return "unexpected end of spec" if tok.type == "$END" else f"unexpected {tok.value!r}"
    return "unexpected end of spec"


_READABLE = {"RPAR": "`)`", "LPAR": "`(`", "RBRACE": "`}`", "LBRACE": "`{`", "RSQB": "`]`",
             "LSQB": "`[`", "COMMA": "`,`", "EQUAL": "`=`", "COLON": "`:`", "NAME": "a name",
             "NUMBER": "a number", "STRING": "a string"}


def _expected_hint(e: UnexpectedInput) -> str | None:
    expected = sorted(_READABLE.get(t, None) or t.lower().strip('"') for t in (getattr(e, "expected", None) or ()))
    expected = [x for x in expected if not x.startswith("__")]
    return f"expected one of: {', '.join(expected)}" if 0 < len(expected) <= 8 else None


class _ToAst(Transformer):
    def __init__(self, file: str):
        super().__init__()
        self.file = file

    def _pos(self, meta_or_token) -> ast.Pos:
        return ast.Pos(self.file, getattr(meta_or_token, "line", 0), getattr(meta_or_token, "column", 0))

    # atoms
    @v_args(inline=True)
    def number(self, tok: Token):
        text = str(tok)
        if any(c in text for c in ".eE"):
            return ast.Num(float(text), self._pos(tok))
        if len(text.lstrip("0")) > len(str(limits.INT_MAX)) or int(text) > limits.INT_MAX:
            raise SpecError.at(self._pos(tok), f"integer literal of {len(text)} digits is too large",
                               f"the largest int is 2**63-1 = {limits.INT_MAX}")
        return ast.Num(int(text), self._pos(tok))

    @v_args(inline=True)
    def string(self, tok: Token):
        return ast.Str(str(tok)[1:-1], self._pos(tok))

    @v_args(meta=True)
    def true(self, meta, _):
        return ast.Bool(True, self._pos(meta))

    @v_args(meta=True)
    def false(self, meta, _):
        return ast.Bool(False, self._pos(meta))

    @v_args(inline=True)
    def name(self, tok: Token):
        return ast.Name(str(tok), self._pos(tok))

    @v_args(meta=True)
    def list(self, meta, items):
        return ast.List(tuple(i for i in items if i is not None), self._pos(meta))

    @v_args(meta=True, inline=True)
    def neg(self, meta, operand):
        return ast.Neg(operand, self._pos(meta))

    def _binop(op):  # noqa: N805 - a factory used inside the class body
        @v_args(meta=True, inline=True)
        def make(self, meta, left, right):
            return ast.BinOp(op, left, right, self._pos(meta))
        return make

    add, sub, mul, div, matmul = _binop("+"), _binop("-"), _binop("*"), _binop("/"), _binop("@")

    @v_args(meta=True, inline=True)
    def kwarg(self, meta, name, value):
        return ast.Kwarg(str(name), value, self._pos(meta))

    @v_args(meta=True)
    def call(self, meta, children):
        func, *args = children
        args = [a for a in args if a is not None]
        positional = tuple(a for a in args if not isinstance(a, ast.Kwarg))
        kwargs = tuple(a for a in args if isinstance(a, ast.Kwarg))
        first_kw = next((i for i, a in enumerate(args) if isinstance(a, ast.Kwarg)), len(args))
        if any(not isinstance(a, ast.Kwarg) for a in args[first_kw:]):
            bad = next(a for a in args[first_kw:] if not isinstance(a, ast.Kwarg))
            raise SpecError.at(bad.pos, "a positional argument follows a keyword argument",
                               "put positional arguments first")
        seen = set()
        for k in kwargs:
            if k.name in seen:
                raise SpecError.at(k.pos, f"`{k.name}` is given twice", "keep one of the two")
            seen.add(k.name)
        return ast.Call(str(func), positional, kwargs, self._pos(func))

    # statements
    @v_args(meta=True, inline=True)
    def param(self, meta, name, type_, default):
        return ast.Param(str(name), None if type_ is None else str(type_), default, self._pos(name))

    @v_args(meta=True)
    def input_decl(self, meta, children):
        name, dtype, *dims, role = children
        return ast.Input(str(name), str(dtype), tuple(d for d in dims if d is not None),
                         None if role is None else str(role), self._pos(name))

    @v_args(inline=True)
    def role(self, name, dim):
        return str(name) if dim is None else f"{name}({dim})"

    @v_args(meta=True, inline=True)
    def output_decl(self, meta, name, role):
        return ast.Output(str(name), None if role is None else str(role), self._pos(name))

    @v_args(meta=True)
    def symmetry_decl(self, meta, groups):
        return ast.Symmetry(tuple(groups), self._pos(meta))

    @v_args(meta=True, inline=True)
    def assign(self, meta, name, value, repeat):
        return ast.Assign(str(name), value, repeat, self._pos(name))

    @v_args(meta=True)
    def unpack(self, meta, children):
        *names, value = children
        return ast.Assign(str(names[0]), value, None, self._pos(names[0]), tuple(map(str, names[1:])))

    @v_args(meta=True)
    def torch_def(self, meta, children):
        name, source, *kwargs = children
        seen = set()
        for k in kwargs:
            if k.name in seen:
                raise SpecError.at(k.pos, f"`{k.name}` is given twice", "keep one of the two")
            seen.add(k.name)
        return ast.TorchDef(str(name), str(source)[1:-1], tuple(kwargs), self._pos(name))

    kwarg_arg = kwarg

    @v_args(meta=True, inline=True)
    def return_stmt(self, meta, value):
        return ast.Return(value, self._pos(meta))

    @v_args(meta=True, inline=True)
    def import_stmt(self, meta, path):
        return ast.Import(str(path)[1:-1], self._pos(meta))

    def _block(kind):  # noqa: N805
        @v_args(meta=True)
        def make(self, meta, children):
            name, *rest = children
            params = tuple(c for c in rest if isinstance(c, ast.Param))
            body = tuple(c for c in rest if c is not None and not isinstance(c, ast.Param))
            return kind(str(name), params, body, self._pos(name))
        return make

    model = _block(ast.Model)
    def_block = _block(ast.Def)
