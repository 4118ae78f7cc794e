"""The checker: names, imports, arity, keywords, dtypes and shapes, each error at its line and column."""
import pytest

from ops.registry import check
from dsl.errors import SpecError
from dsl.program import load, load_text


def checked(body: str, params: str = "", **overrides):
    return check(load_text(f"model m({params}) {{\n{body}\n}}", "t.inv"), None, overrides)


def refused(body: str, params: str = "", **overrides) -> SpecError:
    with pytest.raises(SpecError) as e:
        checked(body, params, **overrides)
    return e.value


def test_types_flow_through_a_model():
    m = checked("""  input x: f32[B, N, 3]
  h = mlp(x, widths=[hidden, hidden * 2])
  p = mean(h, axis=N)
  f = flatten(h, start=1)
  y = linear(p, 4)
  output y
  output f""", "hidden: int = 8")
    assert [str(p.value.type) for p in m.outputs] == ["f32[B, 4]", "f32[B, 16*N]"]
    assert m.params == {"hidden": 8}


def test_overrides_replace_defaults_and_are_type_checked():
    m = checked("  input x: f32[B, 4]\n  y = linear(x, hidden)\n  output y", "hidden: int = 8", hidden=3)
    assert m.outputs[0].value.type.shape == ("B", 3)
    e = refused("  input x: f32[B, 4]\n  y = linear(x, hidden)\n  output y", "hidden: int = 8", hidden=1.5)
    assert "parameter `hidden` is int, got float 1.5" in e.message
    e = refused("  input x: f32[B, 4]\n  y = linear(x, hidden)\n  output y", "hidden: int = 8", hiden=3)
    assert e.hint == "did you mean `hidden`?"


@pytest.mark.parametrize("body,line,column,message,hint", [
    ("  input x: f32[B, 4]\n  y = layernrm(x)\n  output y", 3, 7, "unknown op `layernrm`", "did you mean `layernorm`?"),
    ("  input x: f32[B, 4]\n  y = linear(x, 4, bais=true)\n  output y", 3, 20, "linear has no argument `bais`", "did you mean `bias`?"),
    ("  input x: f32[B, 4]\n  y = linear(x)\n  output y", 3, 7, "linear is missing argument `out`", "signature: linear(x, out, bias=true)"),
    ("  input x: f32[B, 4]\n  y = relu(x, x)\n  output y", 3, 7, "relu takes at most 1 positional arguments, got 2", None),
    ("  input x: f32[B, 4]\n  y = linear(x, out=4, out=8)\n  output y", 3, 24, "`out` is given twice", "keep one of the two"),
    ("  input x: f32[B, 4]\n  y = linear(x, 2.5)\n  output y", 3, 17, "argument `out` expects int, got float 2.5", None),
    ("  input x: f32[B, 4]\n  y = relu(z)\n  output y", 3, 12, "`z` is not defined", None),
    ("  input x: f32[B, 4]\n  y = relu(xx)\n  output y", 3, 12, "`xx` is not defined", "did you mean `x`?"),
    ("  input x: f32[B, N]\n  input z: f32[B, M]\n  y = x + z\n  output y", 4, 7, "dim N does not match dim M", None),
    ("  input x: f32[B, 4]\n  input z: f64[B, 4]\n  y = x * z\n  output y", 4, 7, "dtypes differ", None),
    ("  input x: f32[B, 4]\n  input z: f32[5, 3]\n  y = x @ z\n  output y", 4, 7, "inner dims 4 and 5 differ", None),
    ("  input ids: f32[B, N]\n  y = embedding(ids, num=10, dim=4)\n  output y", 3, 7, "integer ids", None),
    ("  input x: f32[B, N]\n  y = linear(x, 4)\n  output y", 3, 7, "static last dim", None),
    ("  input x: f32[B, N, 4]\n  y = sum(x, axis=M)\n  output y", 3, 7, "axis `M` is not a dim of f32[B, N, 4]", None),
    ("  input x: f32[B, N, 4]\n  y = softmax(x, axis=3)\n  output y", 3, 7, "axis 3 is out of range", None),
    ("  input x: f32[B, N, 6]\n  y = attention(x, heads=4)\n  output y", 3, 7, "does not split into 4 heads", None),
    ("  input x: f32[B, N, 4]\n  input k: f32[B, N]\n  y = attention(x, mask=k)\n  output y", 4, 7, "mask must be bool[B, N]", None),
    ("  input x: f32[B, N, 4]\n  y = reshape(x, [B, N, 5])\n  output y", 3, 7, "sizes differ", None),
    ("  input x: f32[B, N, 4]\n  y = reshape(x, [N, B, 4])\n  output y", 3, 7, "at most one can be inferred", None),
    ("  input x: f32[B, N, 4]\n  y = permute(x, [0, 0, 1])\n  output y", 3, 7, "is not a permutation", None),
    ("  input x: f32[B, N, 4]\n  y = concat(x, x, axis=N)\n  output w", 4, 10, "output `w` is not defined", None),
    ("  input x: f32[B, N, 4]\n  y = mlp(x, widths=[4], act=\"rleu\")\n  output y", 3, 7, "unknown activation 'rleu'", None),
    ("  input x: q32[B, 4]\n  output x", 2, 9, "unknown dtype `q32`", None),
    ("  input x: f32[B, 4]\n  y = relu(x)", 1, 7, "declares no output", None),
    ("  input x: f32[B, 4]\n  relu = relu(x)\n  output relu", 3, 3, "cannot be rebound", None),
    ("  input x: f32[B, 4]\n  y = x + \"a\"\n  output y", 3, 7, "cannot apply `+`", None),
])
def test_errors_name_line_column_and_hint(body, line, column, message, hint):
    e = refused(body)
    assert (e.line, e.column) == (line, column), str(e)
    assert message in e.message, str(e)
    if hint:
        assert e.hint == hint
    assert e.file == "t.inv"


def test_symbolic_dims_unify_and_broadcast():
    m = checked("  input x: f32[B, N, 4]\n  input s: f32[B, 1, 4]\n  y = x * s + 1.0\n  output y")
    assert m.outputs[0].value.type.shape == ("B", "N", 4)


def test_defs_expand_with_their_own_parameters_and_repeat_unrolls():
    spec = """
def block(x, width: int) { return x + linear(relu(x), width) }
model m(w: int = 4) {
  input x: f32[B, 4]
  y = block(x, width=w) repeat 3
  output y
}"""
    m = check(load_text(spec, "t.inv"))
    prefixes = [n.param_prefix for n in m.nodes if n.params]
    assert prefixes == ["y.0.out.", "y.1.out.", "y.2.out."]
    assert m.outputs[0].value.name == "y"


@pytest.mark.parametrize("spec,message", [
    ("def b(x) { return b(x) }\nmodel m() { input x: f32[B, 4]\n y = b(x)\n output y }", "defs cannot recurse"),
    ("def b(x) { y = relu(x) }\nmodel m() { input x: f32[B, 4]\n y = b(x)\n output y }", "has no `return`"),
    ("def b(x, k: int) { return relu(x) }\nmodel m() { input x: f32[B, 4]\n y = b(x)\n output y }", "missing argument `k`"),
    ("def b(x) { return relu(x) }\nmodel m() { input x: f32[B, 4]\n y = b(x, q=1)\n output y }", "has no parameter `q`"),
    ("def b(x, k: int) { return relu(x) }\nmodel m() { input x: f32[B, 4]\n y = b(x, 2, k=3)\n output y }", "`k` is given twice"),
    ("def b(x) { input z: f32[B]\n return x }\nmodel m() { input x: f32[B, 4]\n y = b(x)\n output y }", "belongs in a model"),
    ("def b(x) { return relu(x) }\nmodel m() { input x: f32[B, 4]\n y = relu(x) repeat 2\n output y }", "applies to a call of a def"),
    ("def b(x) { return relu(x) }\nmodel m() { input x: f32[B, 4]\n y = b(x) repeat 0\n output y }", "positive int"),
    ("model a() { input x: f32[B]\n output x }\nmodel b() { input x: f32[B]\n output x }", "several models"),
])
def test_def_and_model_errors(spec, message):
    with pytest.raises(SpecError) as e:
        check(load_text(spec, "t.inv"))
    assert message in e.value.message


def test_imports_resolve_relative_to_the_importing_file(tmp_path):
    (tmp_path / "lib").mkdir()
    (tmp_path / "lib" / "blocks.inv").write_text('import "more.inv"\ndef twice(x) { return inner(inner(x)) }')
    (tmp_path / "lib" / "more.inv").write_text("def inner(x) { return relu(x) }")
    (tmp_path / "main.inv").write_text('import "lib/blocks.inv"\nmodel m() { input x: f32[B, 4]\n y = twice(x)\n output y }')
    m = check(load(tmp_path / "main.inv"))
    assert [n.op for n in m.nodes] == ["relu", "relu"]


@pytest.mark.parametrize("files,message", [
    ({"main.inv": 'import "a.inv"\nmodel m() { input x: f32[B]\n output x }', "a.inv": 'import "main.inv"'}, "cyclic import"),
    ({"main.inv": 'import "nothere.inv"\nmodel m() { input x: f32[B]\n output x }'}, "imported spec not found"),
    ({"main.inv": 'import "../outside.inv"\nmodel m() { input x: f32[B]\n output x }'}, "leaves the spec's directory tree"),
    ({"main.inv": 'import "a.inv"\ndef f(x) { return x }\nmodel m() { input x: f32[B]\n output x }',
      "a.inv": "def f(x) { return x }"}, "is defined twice"),
])
def test_import_errors(tmp_path, files, message):
    root = tmp_path / "spec"
    root.mkdir()
    (tmp_path / "outside.inv").write_text("def g(x) { return x }")
    for name, text in files.items():
        (root / name).write_text(text)
    with pytest.raises(SpecError) as e:
        check(load(root / "main.inv"))
    assert message in e.value.message
    assert e.value.line >= 1


def test_missing_spec_file_is_a_spec_error(tmp_path):
    with pytest.raises(SpecError) as e:
        load(tmp_path / "none.inv")
    assert "spec file not found" in e.value.message


@pytest.mark.parametrize("name", ["eval", "forward", "training", "_modules", "__init__"])
def test_binding_names_that_torch_modules_use_are_refused(name):
    # Lowering makes `name.weight` a submodule attribute; torch's own `eval` etc. would be in the way.
    e = refused(f"  input x: f32[B, 4]\n  {name} = linear(x, 4)\n  y = relu({name})\n  output y")
    assert (e.line, e.column) == (3, 3), str(e)
    assert f"`{name}` cannot name a binding" in e.message and e.hint.startswith("rename it")


def test_binding_names_inside_defs_and_passed_defs_are_refused_too():
    with pytest.raises(SpecError) as e:
        check(load_text("def b(x) {\n  forward = linear(x, 4)\n  return forward\n}\n"
                        "model m() { input x: f32[B, 4]\n y = b(x)\n output y }", "t.inv"))
    assert (e.value.line, e.value.column) == (2, 3) and "cannot name a binding" in e.value.message
    with pytest.raises(SpecError) as e:
        check(load_text("def eval(x) { return sum(linear(x, 4), axis=N) }\n"
                        "model m() { symmetry E(3)\n input p: f32[B, N, 3] is position\n"
                        " y = frame_average(eval, [p], group=\"E(3)\", out=\"invariant\")\n output y is invariant }",
                        "t.inv"))
    assert (e.value.line, e.value.column) == (1, 5) and "def `eval` cannot be passed" in e.value.message


def test_reserved_binding_names_cover_every_torch_module_attribute():
    import subprocess
    import sys
    from dsl.checker import MODULE_ATTRIBUTES
    # In a fresh process with torch alone: other libraries (transformers) add attributes that lowering
    # refuses itself (test below), and a torch-free checker cannot list.
    listed = subprocess.run([sys.executable, "-c", "import torch.fx as fx, torch.nn as nn\n"
                             "gm = fx.GraphModule(nn.Module(), fx.Graph())\n"
                             "print(*sorted(set(dir(gm)) | set(vars(gm))))"],
                            capture_output=True, text=True, check=True).stdout.split()
    have = {n for n in listed if not (n.startswith("__") and n.endswith("__"))}
    assert have <= MODULE_ATTRIBUTES, f"add to dsl/checker.py MODULE_ATTRIBUTES: {sorted(have - MODULE_ATTRIBUTES)}"


def test_lowering_refuses_a_binding_name_another_library_added(monkeypatch):
    import torch.nn as nn
    from compiler.lower import lower
    monkeypatch.setattr(nn.Module, "smart_apply", lambda self: None, raising=False)
    with pytest.raises(SpecError, match="`smart_apply` cannot name a binding") as e:
        lower(checked("  input x: f32[B, 4]\n  smart_apply = linear(x, 4)\n  output smart_apply"))
    assert (e.value.line, e.value.column) == (3, 17)


def test_allowed_binding_names_lower_and_run():
    import torch
    from compiler.lower import lower
    gm = lower(checked("  input eval: f32[B, 4]\n  _h = linear(eval, 4)\n  evaluate = relu(_h)\n  output evaluate"))
    assert sorted(dict(gm.named_parameters())) == ["_h.bias", "_h.weight"]
    assert gm(torch.randn(2, 4)).shape == (2, 4)
