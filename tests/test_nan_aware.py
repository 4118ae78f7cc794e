"""NaN is never a pass: the suite's own comparisons must fail when a result is NaN. These forms pass
on NaN and are refused here, in every test file: `np.testing.assert_allclose` without an explicit
`equal_nan` and `np.testing.assert_array_equal` (both treat NaN on both sides as equal; write
`assert_allclose(a, b, rtol=0, atol=0, equal_nan=False)`), and, inside an assert, a negated order
comparison (`not err > tol` is true for NaN; write `err <= tol`) or a negated closeness or equality
(`not np.allclose(a, b)` is true for NaN; assert the difference that must be large). Outside an
assert, `not err <= tol` is the NaN-aware way to flag a failure, and stays."""
import ast
from pathlib import Path

TESTS = Path(__file__).resolve().parent
ORDER = (ast.Lt, ast.LtE, ast.Gt, ast.GtE)


def nan_blind(tree: ast.AST) -> list[tuple[int, str]]:
    """(line, why) for each comparison in `tree` that a NaN would pass."""
    found = []
    for n in ast.walk(tree):
        if isinstance(n, ast.Call) and _name(n.func) == "assert_allclose" and \
                not any(k.arg == "equal_nan" for k in n.keywords):
            found.append((n.lineno, "assert_allclose without equal_nan=False"))
        if isinstance(n, ast.Call) and _name(n.func) == "assert_array_equal":
            found.append((n.lineno, "assert_array_equal (NaN equals NaN there)"))
        if isinstance(n, ast.Assert):
            found += _negated(n.test)
    return found


def _negated(test: ast.AST) -> list[tuple[int, str]]:
    found = []
    for n in ast.walk(test):
        inner = n.operand if isinstance(n, ast.UnaryOp) and isinstance(n.op, ast.Not) else None
        if isinstance(inner, ast.Compare) and any(isinstance(op, ORDER) for op in inner.ops):
            found.append((n.lineno, "a negated order comparison in an assert"))
        if isinstance(inner, ast.Call) and _name(inner.func) in ("allclose", "isclose", "equal", "array_equal"):
            found.append((n.lineno, f"a negated {_name(inner.func)} in an assert"))
    return found


def _name(func) -> str:
    return func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")


def test_no_test_compares_in_a_way_that_nan_passes():
    found = [f"{p.name}:{line}: {why}" for p in sorted(TESTS.glob("*.py"))
             for line, why in nan_blind(ast.parse(p.read_text()))]
    assert not found, "comparisons that pass on NaN:\n" + "\n".join(found)


def test_the_check_finds_each_form_and_passes_the_nan_aware_ones():
    blind = ["np.testing.assert_allclose(a, b, atol=1e-5)", "assert not err.max() > tol",
             "assert all(not (p - q).abs().max() <= 1e-3 for p in ps)", "assert not np.allclose(a, b)",
             "np.testing.assert_array_equal(a, b)", "assert any(not torch.equal(a, b) for a in c)"]
    aware = ["np.testing.assert_allclose(a, b, atol=1e-5, equal_nan=False)", "assert err.max() <= tol",
             "assert all((p - q).abs().max() > 1e-3 for p in ps)", "assert not failed", "assert not a == b",
             "bad = [r for r in rows if not r.err <= tol]"]
    assert [len(nan_blind(ast.parse(s))) for s in blind] == [1] * len(blind)
    assert [len(nan_blind(ast.parse(s))) for s in aware] == [0] * len(aware)
