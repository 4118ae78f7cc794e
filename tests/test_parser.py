"""The parser: good specs become the expected dataclasses; bad ones fail at the exact line and column."""
import pytest

from dsl import ast
from dsl.errors import SpecError
from dsl.parser import KNOWN_MISTAKES, parse

GOOD = '''
# a comment
import "lib.inv"
model m(hidden: int = 64, p: float = 0.5, on: bool = true, act: str = "relu") {
  symmetry S(N), E(3)
  input x: f32[B, N, 3] is position
  h = mlp(x, widths=[hidden, hidden * 2], act=act)   # trailing comment
  g = h + 1.5 * -h @ h
  y = block(h, heads=4) repeat 2
  output y is invariant
}
def block(x, heads: int = 2) { return relu(x) }
'''


def test_good_spec_becomes_dataclasses():
    spec = parse(GOOD, "t.inv")
    imp, model, block = spec.items
    assert imp == ast.Import("lib.inv", ast.Pos("t.inv", 3, 1))
    assert [p.name for p in model.params] == ["hidden", "p", "on", "act"]
    assert model.params[2].default.value is True
    sym, inp, h, g, y, out = model.body
    assert [c.func for c in sym.groups] == ["S", "E"]
    assert inp.dtype == "f32" and inp.role == "position"
    assert [type(d) for d in inp.dims] == [ast.Name, ast.Name, ast.Num]
    assert h.value.kwargs[0].name == "widths" and h.value.kwargs[0].value.items[1].op == "*"
    assert (h.pos.line, h.pos.column) == (7, 3)
    assert y.repeat == ast.Num(2, ast.Pos("t.inv", 9, 32))
    assert out.role == "invariant"
    assert block.params[0].type is None and block.params[1].type == "int"


def test_operator_precedence():
    (model,) = parse("model m() { y = a + b * c @ d - -e }").items
    e = model.body[0].value
    # ((a + ((b * c) @ d)) - (-e))
    assert e.op == "-" and isinstance(e.right, ast.Neg)
    assert e.left.op == "+" and e.left.right.op == "@" and e.left.right.left.op == "*"


@pytest.mark.parametrize("text,line,column,message", [
    ("model m() {\n  h = relu(x\n}", 3, 1, "unclosed parenthesis"),
    ("model m() {\n  h = linear(x 4)\n}", 2, 16, "two arguments need a comma"),
    ("model m() {\n  h = relu(x) $\n}", 2, 15, "unexpected character '$'"),
    ("model m() {\n  h = relu(x)\n", 2, 14, "missing `}`"),
    ("model m() {\n  input x: f32\n}", 3, 1, "a tensor type needs"),
    ("model m() {\n  h = f(a=1, x)\n}", 2, 14, "positional argument follows a keyword"),
    ("model m() {\n  h = linear(x, out=4, out=8)\n}", 2, 24, "`out` is given twice"),
    ("model m() {\n  relu(x)\n}", 2, 7, "a statement must bind a name"),
])
def test_bad_syntax_points_at_line_and_column(text, line, column, message):
    with pytest.raises(SpecError) as e:
        parse(text, "bad.inv")
    assert (e.value.line, e.value.column) == (line, column), str(e.value)
    assert message in e.value.message
    assert e.value.file == "bad.inv"
    assert "^" in str(e.value)  # the caret under the source excerpt


@pytest.mark.parametrize("label,example", [(k, x) for k, xs in KNOWN_MISTAKES.items() for x in xs])
def test_every_known_mistake_gets_its_message(label, example):
    with pytest.raises(SpecError) as e:
        parse(example)
    assert e.value.message == label


def test_error_excerpt_quotes_the_line():
    with pytest.raises(SpecError) as e:
        parse("model m() {\n  h = linear(x 4)\n}", "bad.inv")
    text = str(e.value)
    assert text.splitlines()[0].startswith("bad.inv:2:16: error:")
    assert "   2 |   h = linear(x 4)" in text
