"""The Triton backend on CPU: every kernel template against its torch reference through the Triton
interpreter, the example specs compiled to standalone modules, the launcher's errors, --explain."""
import os

os.environ["TRITON_INTERPRET"] = "1"  # before triton compiles anything: kernels run on CPU tensors

import glob  # noqa: E402
import json  # noqa: E402
import re  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import textwrap  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

triton = pytest.importorskip("triton", reason="triton is not installed: the Triton backend cannot run")

from tests.graphs import TARGETS  # noqa: E402
from runtime.triton.build import load, module_source  # noqa: E402
from runtime.triton.templates import (CHUNK_ROWS, FRAME_HELPERS, Act, Linear, PCAFrames,  # noqa: E402
                                      RMSNormLinear, SegmentReduce)

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = sorted(glob.glob(str(ROOT / "examples" / "*.inv")))
REFUSED = {"broken_symmetry.inv"}  # shipped to show a refusal, as in tests/test_examples.py
KINDS = ("sum", "mean", "max", "min")
REDUCE = {"sum": TARGETS.reduce_sum, "mean": TARGETS.reduce_mean, "max": TARGETS.reduce_max, "min": TARGETS.reduce_min}


def close(got, want, kind="sum", tol=1e-5):
    """1e-5 for sums and means in fp32; max and min of the same floats must be exact."""
    assert got.shape == want.shape, (got.shape, want.shape)
    if kind in ("max", "min"):
        assert torch.equal(got, want), (got - want).abs().max()
    else:
        torch.testing.assert_close(got, want, atol=tol, rtol=tol)


def kernels(*configs, helpers=""):
    return load(module_source("test kernels", "\n\n\n".join(([helpers] if helpers else []) +
                                                           [c.source() for c in configs])), "test")


@pytest.fixture(scope="module")
def seg():
    """Every kind in every layout, reducing relu(x): exact, so max and min compare bit for bit."""
    return kernels(*(SegmentReduce(f"{k}_{lay}", k, lay, 5, (Act("relu"),)) for k in KINDS
                     for lay in ("csr", "dense", "masked")))


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


# -- segment reductions ----------------------------------------------------------------------------
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("variant", ["csr", "atomic"])
def test_csr_segments_match_reference_with_empty_sets(seg, kind, variant):
    x = torch.randn(90, 5, generator=gen())
    offsets = torch.tensor([0, 0, 10, 10, 60, 90, 90])  # empty sets first, in the middle and last
    got = getattr(seg, f"launch_{kind}_csr")(x, offsets, variant=variant)
    want = TARGETS.segment_reduce(torch.relu(x), offsets, kind, deterministic=True)
    close(got, want, kind)
    assert not got[[0, 2, 5]].any(), "empty sets reduce to 0"


@pytest.mark.parametrize("kind", KINDS)
def test_dense_and_masked_forms_match_reference(seg, kind):
    x = torch.randn(2, 3, 9, 5, generator=gen(1))
    mask = torch.rand(2, 3, 9, generator=gen(2)) > 0.5
    mask[0, 1] = False  # an empty set
    close(getattr(seg, f"launch_{kind}_dense")(x), REDUCE[kind](torch.relu(x), 2), kind)
    got = getattr(seg, f"launch_{kind}_masked")(x, mask)
    close(got, TARGETS.masked_reduce(torch.relu(x), mask, 2, kind), kind)
    assert not got[0, 1].any()


def test_atomic_variant_takes_over_unbalanced_sets():
    m = kernels(SegmentReduce("total", "sum", "csr", 4))
    lengths = [5 * CHUNK_ROWS] + [3, 0, 1, 2, 0, 4, 1] * 4
    offsets = torch.tensor([0] + lengths).cumsum(0)
    x = torch.randn(int(offsets[-1]), 4, generator=gen(3))
    assert m.unbalanced(offsets, CHUNK_ROWS)
    want = TARGETS.segment_reduce(x, offsets, "sum", deterministic=True)
    close(m.launch_total(x, offsets), want, tol=1e-4)  # 2560 fp32 terms, summed in another order
    close(m.launch_total(x, offsets, variant="csr"), want, tol=1e-4)


def test_fused_row_map_sum_of_relu_of_linear():
    m = kernels(SegmentReduce("pool", "sum", "csr", 6, (Linear(6, 20), Act("relu"))),
                SegmentReduce("deep", "mean", "masked", 3, (Linear(3, 16), Act("silu"), Linear(16, 8, False),
                                                            Act("tanh"), Act("gelu"), Act("sigmoid"))))
    g = gen(4)
    x, w, b = torch.randn(40, 6, generator=g), torch.randn(20, 6, generator=g), torch.randn(20, generator=g)
    offsets = torch.tensor([0, 7, 7, 33, 40])
    close(m.launch_pool(x, offsets, w, b), TARGETS.segment_reduce(torch.relu(TARGETS.linear(x, w, b)), offsets, "sum"))
    x, mask = torch.randn(3, 6, 3, generator=g), torch.rand(3, 6, generator=g) > 0.4
    w0, b0, w1 = torch.randn(16, 3, generator=g), torch.randn(16, generator=g), torch.randn(8, 16, generator=g) / 4
    rows = TARGETS.sigmoid(TARGETS.gelu(TARGETS.tanh(TARGETS.linear(TARGETS.silu(TARGETS.linear(x, w0, b0)), w1))))
    close(m.launch_deep(x, mask, w0, b0, w1), TARGETS.masked_reduce(rows, mask, 1, "mean"))


# -- rmsnorm + linear --------------------------------------------------------------------------------
@pytest.mark.parametrize("norm_weight,bias,epilogue", [(False, False, ()), (True, True, (Act("silu"),))])
def test_rmsnorm_linear_matches_reference(norm_weight, bias, epilogue):
    m = kernels(RMSNormLinear("proj", 80, 72, 1e-6, norm_weight, bias, epilogue))
    g = gen(5)
    x, w = torch.randn(2, 19, 80, generator=g), torch.randn(72, 80, generator=g) / 9
    gamma, b = torch.rand(80, generator=g) + 0.5, torch.randn(72, generator=g)
    want = TARGETS.linear(TARGETS.rmsnorm(x, gamma if norm_weight else None, 1e-6), w, b if bias else None)
    want = TARGETS.silu(want) if epilogue else want
    args = [x] + ([gamma] if norm_weight else []) + [w] + ([b] if bias else [])
    close(m.launch_proj(*args), want)


# -- PCA frames ----------------------------------------------------------------------------------------
def same_frames(got, want, tol=1e-5):
    """Frame sets [B, F, 3, 3] equal up to the order of the frames (eigenvector signs)."""
    for b in range(got.shape[0]):
        gap = (got[b][:, None] - want[b][None]).abs().flatten(2).amax(-1)  # [F, F]
        assert gap.amin(1).max() < tol and gap.amin(0).max() < tol, gap.amin(1)


@pytest.mark.parametrize("proper,masked", [(False, False), (True, False), (False, True)])
def test_pca_frames_match_runtime_frames(proper, masked):
    config = PCAFrames("frames", 4 if proper else 8, masked)
    m = kernels(config, helpers=FRAME_HELPERS)
    g = gen(6)
    pos = torch.randn(4, 11, 3, generator=g) * torch.tensor([3.0, 1.0, 0.3]) + 2.0
    mask = (torch.rand(4, 11, generator=g) > 0.3) if masked else None
    c, basis, points = m.launch_frames(pos, *([mask] if masked else []))
    want_c = TARGETS.frame_centroid(pos, mask)
    want_basis = TARGETS.frame_basis(pos, want_c, mask, proper)
    close(c, want_c[:, 0])
    same_frames(basis, want_basis)
    assert torch.allclose(torch.linalg.det(basis), torch.ones(()), atol=1e-5) or not proper
    moved = (pos - c[:, None]).unsqueeze(1) @ basis  # each frame's points, from the kernel's basis
    keep = mask[:, None, :, None].expand_as(moved) if masked else torch.ones_like(moved, dtype=torch.bool)
    close(points[keep], moved[keep])


# -- custom ops -------------------------------------------------------------------------------------
def test_custom_ops_run_kernels_in_interpreter_and_torch_otherwise(monkeypatch):
    from ops.custom import register
    invc = register()
    g = gen(7)
    x, offsets = torch.randn(30, 8, generator=g), torch.tensor([0, 4, 4, 30])
    w, b = torch.randn(12, 8, generator=g), torch.randn(12, generator=g)
    want = TARGETS.segment_reduce(torch.relu(TARGETS.linear(x, w, b)), offsets, "max", True)
    close(invc.segment_reduce(x, offsets, "max", True, w, b, "relu"), want, tol=1e-5)
    pos = torch.randn(2, 9, 3, generator=g)
    c, basis, points = invc.pca_frames(pos, None, False)
    assert points.shape == (16, 9, 3) and c.shape == (2, 1, 3)
    monkeypatch.setenv("TRITON_INTERPRET", "0")  # a CPU tensor outside the interpreter: torch runs it
    close(invc.masked_reduce(x.reshape(3, 10, 8), None, "mean"), x.reshape(3, 10, 8).mean(1))
    xr, wr = torch.randn(5, 16, generator=g), torch.randn(4, 16, generator=g)

    class Proj(torch.nn.Module):
        def forward(self, x, w):
            return torch.ops.invc.rmsnorm_linear(x, None, w, None, 1e-6)

    exported = torch.export.export(Proj(), (xr, wr))
    assert "invc.rmsnorm_linear" in str(exported.graph)
    close(exported.module()(xr, wr), TARGETS.linear(TARGETS.rmsnorm(xr, None, 1e-6), wr))


# -- generated kernels compile for a real GPU ---------------------------------------------------------
AOT = textwrap.dedent("""
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    import triton
    from runtime.triton.build import load, module_source
    from runtime.triton.templates import *
    configs = [SegmentReduce("s", "max", "csr", 3, (Linear(3, 20), Act("gelu"))),
               RMSNormLinear("r", 48, 100, 1e-6, True, True, (Act("silu"),)), PCAFrames("f", 4, True)]
    m = load(module_source("aot", FRAME_HELPERS + "\\n\\n\\n" + "\\n\\n\\n".join(c.source() for c in configs)), "aot")
    ints = {"offsets_ptr", "chunk_segment_ptr", "chunk_start_ptr"}
    blocks = {"BLOCK_ROWS": 32, "CHUNK_ROWS": CHUNK_ROWS, "BLOCK_OUT": 64, "BLOCK_K": 64}
    for name in [k for c in configs for k in c.kernels]:
        fn = getattr(m, name)
        signature = {a: "constexpr" if p.is_constexpr else "*i64" if a in ints else "*u8" if a == "mask_ptr"
                     else "*fp32" if a.endswith("_ptr") else "i64" for a, p in zip(fn.arg_names, fn.params)}
        constants = {a: blocks[a] for a, t in signature.items() if t == "constexpr"}
        compiled = triton.compile(ASTSource(fn, signature, constants), target=GPUTarget("cuda", 90, 32))
        assert "cubin" in compiled.asm, name
        print(name)
""")


def test_kernels_compile_for_sm90_without_a_gpu():
    """Ahead-of-time compilation to H100 cubin, outside the interpreter, catches what the lenient
    interpreter lets through (tl.dot shapes, loop-carried types)."""
    env = {**os.environ, "TRITON_INTERPRET": "0"}
    run = subprocess.run([sys.executable, "-c", AOT], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.split() == ["s_segment_max_csr_kernel", "s_segment_max_atomic_kernel",
                                  "r_rmsnorm_linear_kernel", "f_pca_frames_kernel"]


# -- example specs, compiled and run standalone --------------------------------------------------------
def sample_inputs(module) -> dict:
    """verify's sampler, by input name: valid offsets, segment ids and indices for what reads them."""
    from compiler.verify import sample_inputs as sampled
    checked = module.meta["invc"]
    return dict(zip((p.name for p in checked.inputs), sampled(checked, {"B": 3, "N": 7, "S": 5, "E": 11})))


STANDALONE = textwrap.dedent("""
    import importlib.abc, importlib.util, json, sys, torch
    class NoInvc(importlib.abc.MetaPathFinder):  # the module must need only torch and triton
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in ("common", "compiler", "dsl", "ops", "passes", "runtime"):
                raise ImportError(f"standalone module imported invc's {name}")
    sys.meta_path.insert(0, NoInvc())
    for job in json.loads(sys.argv[1]):
        spec = importlib.util.spec_from_file_location("model", job["dir"] + "/model.py")
        model = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(model)
        inputs = torch.load(job["dir"] + "/inputs.pt")
        out = model.load("cpu")(*inputs.values())
        torch.save(out if isinstance(out, tuple) else (out,), job["dir"] + "/outputs.pt")
""")


@pytest.fixture(scope="module")
def compiled_examples(tmp_path_factory):
    """Each buildable example compiled with --target triton and run once in one subprocess that
    cannot import invc; {spec: (plan, inputs, torch outputs, module outputs)}."""
    from compiler.driver import build, compile
    from dsl.errors import SpecError
    results, jobs = {}, []
    for spec in EXAMPLES:
        if Path(spec).name in REFUSED:
            with pytest.raises(SpecError, match="breaks E\\(3\\) invariance"):
                build(spec)
            results[spec] = "refused by design: tests/test_symmetry.py covers it"
            continue
        module = build(spec)  # any other example must build; its error fails the suite
        out = tmp_path_factory.mktemp(Path(spec).stem) / "triton"
        result = compile(spec, "triton", out)
        inputs = sample_inputs(module)
        torch.save(inputs, out / "inputs.pt")
        with torch.no_grad():
            want = module(*inputs.values())
        results[spec] = (result.triton, inputs, want if isinstance(want, tuple) else (want,), out)
        jobs.append({"dir": str(out)})
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    run = subprocess.run([sys.executable, "-c", STANDALONE, json.dumps(jobs)], cwd=tmp_path_factory.getbasetemp(),
                         env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    return results


@pytest.mark.parametrize("spec", EXAMPLES, ids=[Path(s).stem for s in EXAMPLES])
def test_example_compiles_and_matches_torch_standalone(compiled_examples, spec):
    result = compiled_examples[spec]
    if isinstance(result, str):
        pytest.skip(result)
    plan, _, want, out = result
    got = torch.load(out / "outputs.pt")
    assert len(got) == len(want)
    for g, w in zip(got, want):
        close(g, w)
    source = (out / "model.py").read_text()
    for region in plan.regions:
        for name in region.config.kernels:
            assert f"def {name}(" in source and "# From graph nodes" in source
    assert not any(f"{how} {package}" in source for how in ("import", "from") for package in ("runtime", "ops"))


def test_examples_use_every_kind_of_template(compiled_examples):
    summaries = " ".join(r.config.summary() for v in compiled_examples.values() if not isinstance(v, str)
                         for r in v[0].regions)
    assert "over axis -2" in summaries and "ragged sets" in summaries and "linear(rmsnorm(x))" in summaries


# -- launcher errors -------------------------------------------------------------------------------------
@pytest.mark.parametrize("offsets,message", [
    ([0, 5, 3, 10], "never decrease: offsets[1] = 5 > offsets[2] = 3"),
    ([0, 5, 9], "end at the number of elements (10), got 0 ... 9"),
    ([1, 5, 10], "start at 0"),
])
def test_bad_offsets_raise_clear_errors(seg, offsets, message):
    with pytest.raises(seg.LaunchError, match=re.escape(message)):
        seg.launch_sum_csr(torch.randn(10, 5), torch.tensor(offsets))


def test_cpu_tensor_without_interpreter_is_refused(seg, monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(seg.LaunchError, match="cpu tensor, but the Triton kernels run on CUDA.*TRITON_INTERPRET=1"):
        seg.launch_sum_dense(torch.randn(2, 3, 5))


def test_generated_model_checks_shapes_and_dtypes(compiled_examples):
    spec = str(ROOT / "examples" / "deepsets.inv")
    out = compiled_examples[spec][3]
    module = load((out / "model.py").read_text(), "deepsets_model")
    net = module.load("cpu", str(out / "weights.pt"))
    with pytest.raises(module.LaunchError, match=r"input 'x' must have shape \[\?, \?, 3\], got \[2, 5, 4\]"):
        net(torch.randn(2, 5, 4))
    with pytest.raises(module.LaunchError, match=r"input 'x' must be torch.float32, got torch.float64"):
        net(torch.randn(2, 5, 3, dtype=torch.float64))
    with pytest.raises(module.LaunchError, match="w0 must have shape"):
        module.launch_pooled(torch.randn(2, 5, 3), torch.randn(64, 4), *[torch.randn(64)] * 5)


def test_gpu_benchmark_runs_in_interpreter_mode():
    run = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "triton_gpu.py"), "--interpret", "--small",
                          "--specs", "deepsets,ragged_sets"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-3000:]
    for row in ("triton csr", "triton atomic", "torch index_add_", "torch scatter_reduce", "triton one kernel",
                "torch eigh + ops", "triton target", "torch eager", "onnxruntime CUDA EP"):
        assert row in run.stdout, row


# -- explain ---------------------------------------------------------------------------------------------
def test_explain_lists_kernels_and_fallbacks_with_reasons(tmp_path, capsys):
    from compiler.cli import main
    main(["compile", str(ROOT / "examples" / "transformer_block.inv"), "--target", "triton", "--explain",
          "-o", str(tmp_path / "tb")])
    text = capsys.readouterr().out
    assert "kernels (3):" in text and "logits_rmsnorm_linear_kernel: linear(rmsnorm(x)), 64 -> 256" in text
    assert "x_0_h_rmsnorm (rmsnorm): rmsnorm feeds x_0_h_attention (attention)" in text
    assert "x_0_h_attention (attention): no template covers attention" in text
    assert (tmp_path / "tb" / "model.py").exists() and (tmp_path / "tb" / "weights.pt").exists()


def test_every_op_has_a_torch_form_except_the_frame_construction():
    """The launcher must run any op outside a kernel; frame construction only runs as the kernel
    (canonical frames and frame_conditioning make compile fail with a clear error)."""
    from ops.registry import VOCABULARY
    missing = {name for name, op in VOCABULARY.graph.items() if op.triton is None and not op.embed}
    assert missing == {"frame_centroid", "frame_basis", "frame_conditioning"}


def test_unsupported_dtype_falls_back_with_reason():
    from compiler.triton_backend import plan
    from tests.graphs import build
    gm = build({"x": (("B", "N", 4), "f64")}, [("pooled", TARGETS.reduce_sum, ["x"], {"axis": 1})], {"y": "pooled"})
    the_plan = plan(gm)
    assert not the_plan.regions
    assert "dtype f64 has no template" in the_plan.explain()
