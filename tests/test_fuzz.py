"""Fuzzing: random and mutated specs end in a SpecError or a well-formed model, never another exception."""
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ops.registry import check
from dsl.errors import SpecError
from compiler.lower import lower
from dsl.program import load_text

EXAMPLES = [p.read_text() for p in sorted(Path(__file__).resolve().parent.parent.glob("examples/*.inv"))]
TOKENS = ["model", "def", "input", "output", "import", "return", "repeat", "is", "symmetry", "m", "x", "y",
          "h", "B", "N", "3", "0", "-1", "2.5", "f32", "i64", "bool", "linear", "mlp", "relu", "sum",
          "attention", "reshape", "concat", "permute", "flatten", "softmax", "(", ")", "{", "}", "[", "]",
          ",", "=", ":", "+", "-", "*", "/", "@", '"relu"', "true", "#", "\n", " "]
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def compile_or_refuse(text: str) -> None:
    try:
        model = check(load_text(text, "fuzz.inv"))
    except SpecError as e:
        assert e.line >= 0 and e.message
        # Every refusal of a text points into it: a 1-based line of the text and a column on that line
        # (at most one past its end, where a missing piece belongs). Whole-file errors (line 0) come
        # only from reading a file, which load_text never does.
        lines = text.split("\n")
        assert 1 <= e.line <= len(lines), (e.line, len(lines), e.message)
        assert 1 <= e.column <= len(lines[e.line - 1]) + 1, (e.line, e.column, e.message)
        return
    lower(model)  # a spec the checker accepts must lower without complaint


@FUZZ
@given(st.lists(st.sampled_from(TOKENS), max_size=60))
def test_random_token_soup(tokens):
    compile_or_refuse(" ".join(tokens))


@st.composite
def mutated(draw):
    text = draw(st.sampled_from(EXAMPLES))
    for _ in range(draw(st.integers(1, 3))):
        i = draw(st.integers(0, len(text)))
        j = draw(st.integers(i, min(len(text), i + 12)))
        insert = draw(st.one_of(st.just(""), st.sampled_from(TOKENS), st.text(max_size=3)))
        text = text[:i] + insert + text[j:]
    return text


@FUZZ
@given(mutated())
def test_mutated_examples(text):
    compile_or_refuse(text)
