"""Groups and facts as values (print, compare, combine), and the spec errors of declaring them."""
import pytest

from dsl.errors import SpecError
from ops.registry import check
from dsl.groups import (Broken, Euclidean, Invariant, Permutations, Permuted, Product, Rotated, Squared,
                        Translated)
from dsl.program import load_text

S_N, E3, O3, SO3, T3, SE3 = Permutations("N"), Euclidean("E"), Euclidean("O"), Euclidean("SO"), \
    Euclidean("T"), Euclidean("SE")


def test_groups_print_compare_and_hash():
    assert [str(g) for g in (S_N, E3, O3, SO3, T3, SE3)] == ["S(N)", "E(3)", "O(3)", "SO(3)", "T(3)", "SE(3)"]
    assert Euclidean("E") == E3 and len({E3, Euclidean("E"), S_N, Permutations("N")}) == 2
    assert str(S_N * E3) == "S(N) × E(3)" and S_N * E3 == Product((S_N, E3))
    assert str(Product()) == "1" and list(S_N * T3) == [S_N, T3]


def test_what_each_euclidean_group_contains():
    assert (E3.rotates, E3.reflects, E3.translates) == (True, True, True)
    assert (SE3.rotates, SE3.reflects, SE3.translates) == (True, False, True)
    assert (O3.rotates, O3.reflects, O3.translates) == (True, True, False)
    assert (SO3.reflects, T3.rotates, T3.translates) == (False, False, True)


def test_a_product_needs_groups_on_different_axes():
    with pytest.raises(ValueError, match="E\\(3\\) and O\\(3\\) both act on coordinates"):
        E3 * O3
    with pytest.raises(ValueError, match="S\\(N\\) and S\\(N\\)"):
        S_N * E3 * S_N


def test_roles_become_facts_and_each_group_normalizes_them():
    shape = ("B", "N", 3)
    assert S_N.input_fact(shape, "position") == Permuted((1,))
    assert E3.input_fact(shape, "position") == Translated(2) and E3.input_fact(shape, "vector") == Rotated(2)
    assert O3.input_fact(shape, "position") == Rotated(2)       # no translations: a position turns
    assert T3.input_fact(shape, "vector") == Invariant()        # no rotations: a vector stays
    assert E3.input_fact(shape, None) == E3.input_fact(shape, "scalar") == Invariant()
    assert T3.normalize(Squared(2)) == Invariant() and E3.claim(shape, None) is None


def test_facts_print_and_hash():
    assert str(Permuted((1,))) == "permuted on axis 1" and str(Translated(2)) == "moved like a position on axis 2"
    broken = Broken("flatten over N", "f", "t.inv:3:7", "pool instead", step=4)
    assert str(broken) == "broken: flatten over N (t.inv:3:7)"
    assert broken == Broken("flatten over N", "f", "t.inv:3:7") and len({broken, Invariant(), Invariant()}) == 2


def checked(*lines: str):
    return check(load_text("\n".join(["model m() {", *lines, "}"]), "g.inv"))


def test_symmetry_statements_parse_into_the_product():
    m = checked("symmetry S(N) * E(3)", "input pos: f32[B, N, 3] is position", "output pos")
    assert m.groups == checked("symmetry S(N), E(3)", "input pos: f32[B, N, 3] is position", "output pos").groups
    assert str(m.groups) == "S(N) × E(3)"


BAD = [  # (lines, line, column, message, hint); line 1 is `model m() {`
    (["symmetry O(2)", "input v: f32[B, 2] is vector", "output v"], 2, 12, "O(...) acts on 3-D coordinates only", "O(3)"),
    (["symmetry U(1)", "input v: f32[B, 3]", "output v"], 2, 10, "unknown group `U`", "groups: S, O"),
    (["symmetry S(4)", "input v: f32[B, 3]", "output v"], 2, 12, "S(...) takes the name of a symbolic dim", "S(N)"),
    (["symmetry S(M)", "input x: f32[B, N, 3]", "output x"], 2, 10, "no input has a dim named M", "input dims: B, N"),
    (["symmetry S(N), S(N)", "input x: f32[B, N, 3]", "output x"], 2, 16, "S(N) and S(N) both act on dim N", None),
    (["symmetry E(3), O(3)", "input p: f32[B, 3] is position", "output p"], 2, 16, "both act on coordinates",
     "E(3) already contains"),
    (["symmetry E(3)", "input p: f32[B, N, 4] is position", "output p"], 3, 7,
     "input `p` is a position, so E(3) acts on its last axis, which has size 4, not 3", "last axis"),
    (["symmetry E(3)", "input p: i64[B, 3] is position", "output p"], 3, 7, "must be a float tensor", None),
    (["symmetry S(N)", "input p: f32[N, 3] is position", "output p"], 3, 7, "no Euclidean group", "E(3)"),
    (["symmetry E(3)", "input p: f32[N, 3] is place", "output p"], 3, 7, "unknown role `place`", None),
    (["input p: f32[N, 3]", "output p is invariant"], 3, 8, "declares no symmetry", "symmetry S(N)"),
    (["symmetry E(3)", "input p: f32[N, 3]", "output p"], 2, 10, "E(3) acts on no input", "is position"),
    (["symmetry E(3)", "input p: f32[N, 3] is position", "h = sum(p, axis=-1)", "output h is vector"], 5, 8,
     "output `h` is a vector, so E(3) acts on its last axis, which has size N", None),
    (["symmetry S(N)", "input h: f32[N, 3]", "input s: f32[E] is index(N)", "output h"], 4, 7,
     "input `s` is index(N), so it must hold integers", "i64"),
    (["symmetry S(E)", "input h: f32[N, 3]", "input s: i64[E] is index(N)", "output h"], 4, 7,
     "the model does not declare S(N)", "symmetry S(N)"),
    (["symmetry S(N)", "input h: f32[N, 3]", "input s: i64[N] is index(N)", "output h is index(N)"], 5, 8,
     "output `h` is index(N), so it must hold integers", "integer"),  # an output claims it of ids only
]


@pytest.mark.parametrize("lines, line, column, message, hint", BAD, ids=[b[3][:40] for b in BAD])
def test_bad_declarations_are_spec_errors_at_the_declaration(lines, line, column, message, hint):
    with pytest.raises(SpecError) as e:
        checked(*lines)
    assert (e.value.line, e.value.column) == (line, column), e.value.render()
    assert message in e.value.message
    assert hint is None or hint in e.value.hint
