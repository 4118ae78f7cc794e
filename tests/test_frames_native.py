"""The native frame kernels (runtime/frames.c) against the frames' torch forms and their ONNX
function bodies, on drawn clouds: generic, tied, collinear, planar, coincident, collapsed to
rounding, tiny, masked (all
masked too), NaN-padded, in float32 and float64, for every group and mode. Then whole models, the
portable file, the fallbacks, and the kernels' own refusals."""
import concurrent.futures
import functools
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import compiler
from compiler.onnx_backend import to_onnx
from runtime import frames, native
from runtime.session import Session
from tests.graphs import TARGETS, build

pytestmark = pytest.mark.skipif(native.library()[0] is None, reason=native.library()[1])

FAMILIES = ("generic", "cube", "octahedron", "collinear", "planar", "coincident", "collapsed", "few")


@functools.cache
def frame_graph(dtype: str, masked: bool, proper: bool, canonical: bool):
    """centroid, basis, points and vectors in the frames: every op with a native kernel."""
    extra = {"mask": "mask"} if masked else {}
    rows = [("c", TARGETS.frame_centroid, ["pos"], extra),
            ("f", TARGETS.frame_basis, ["pos", "c"], {**extra, "proper": proper, "canonical": canonical}),
            ("p", TARGETS.frame_in, ["pos", "f", "c"]), ("v", TARGETS.frame_in, ["vel", "f"])]
    inputs = {"pos": (("B", "N", 3), dtype), "vel": (("B", "N", 2, 3), dtype)}
    if masked:
        inputs["mask"] = (("B", "N"), "bool")
    gm = build(inputs, rows, {name: name for name, *_ in rows})
    model = to_onnx(gm)
    return gm, Session(model), Session(model, native_frames=False)


def cloud(family: str, n: int, rng: np.random.Generator) -> np.ndarray:
    """One cloud [n, 3]: exact ties for the symmetric families (axis-aligned, small integers, so
    float32 holds them exactly), a random rotation and scale for the generic one."""
    signs = np.array([[x, y, z] for x in (-1, 1) for y in (-1, 1) for z in (-1, 1)], float)
    shapes = {"cube": signs, "octahedron": np.concatenate([np.eye(3), -np.eye(3)]),
              "collinear": np.outer(np.arange(n) - 1.0, [1.0, 2.0, -2.0]),
              "planar": np.stack([np.arange(n) % 3, np.arange(n) // 3, np.zeros(n)], -1) * 2.0,
              "coincident": np.full((n, 3), 3.0), "few": rng.integers(-4, 5, (min(n, 2), 3)).astype(float),
              # one point up to 8 float32 ulps: a point in float32 (rounding_floor), a tiny cloud in float64
              "collapsed": 3.0 * (1.0 + rng.integers(-8, 9, (n, 3)) * 2.0 ** -23)}
    if family in shapes:
        return shapes[family] + rng.integers(-3, 4, 3)
    q = np.linalg.qr(rng.standard_normal((3, 3)))[0]
    return (rng.standard_normal((n, 3)) * [3.0, 1.5, 0.5]) @ q * 10.0 ** rng.uniform(-2, 2) + rng.normal(0, 5, 3)


def batch(families: list, n: int, masked: bool, dtype, rng) -> dict:
    pts = [cloud(f, n, rng) for f in families]
    n = max(len(p) for p in pts)
    pos = np.full((len(pts), n, 3), np.nan)  # padding is NaN: a kernel that reads it is caught
    mask = np.zeros((len(pts), n), bool)
    for i, p in enumerate(pts):
        pos[i, :len(p)], mask[i, :len(p)] = p, True
        if rng.random() < 0.15:
            mask[i] = False  # all masked: the frame is built from all points
            pos[i] = np.nan_to_num(pos[i], nan=1.0)
    if not masked:
        pos = np.where(np.isnan(pos), 1.0, pos)
    feeds = {"pos": pos.astype(dtype), "vel": rng.standard_normal((len(pts), n, 2, 3)).astype(dtype)}
    return {**feeds, "mask": mask} if masked else feeds


def decided(pos: torch.Tensor, mask, proper: bool, canonical: bool) -> np.ndarray:
    """The clouds whose frames any rounding decides the same way: eigen-gaps clearly apart from the
    tie threshold and, for a canonical frame, third moments clearly away from 0. Elsewhere either
    branch is right (a tie, or a tie in the fallback's own choice), and rounding picks."""
    apart = frames.conditioning(frames.TORCH, pos.double(), mask) > 1e-4
    if not canonical:
        return apart.numpy()
    # A cloud within rounding of one point in its own dtype has its fixed axes, whose signs the
    # rounding of its centroid picks.
    point = frames.conditioning(frames.TORCH, pos, mask) == 0
    return (apart & (frames.sign_margin(pos.double(), mask, proper) > 1e-4) & ~point).numpy()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(dtype=st.sampled_from(["f32", "f64"]), masked=st.booleans(), proper=st.booleans(), canonical=st.booleans(),
       families=st.lists(st.sampled_from(FAMILIES + ("generic",) * 3), min_size=1, max_size=5), n=st.integers(1, 12),
       seed=st.integers(0, 2**32 - 1))
def test_native_kernels_match_torch_and_the_onnx_bodies(dtype, masked, proper, canonical, families, n, seed):
    gm, fast, portable = frame_graph(dtype, masked, proper, canonical)
    feeds = batch(families, n, masked, np.float32 if dtype == "f32" else np.float64, np.random.default_rng(seed))
    got, body = fast.run(feeds), portable.run(feeds)
    tensors = {k: torch.from_numpy(v) for k, v in feeds.items()}
    with torch.no_grad():
        want = dict(zip("cfpv", gm(*tensors.values())))
    mask = tensors.get("mask")
    same = decided(tensors["pos"], mask, proper, canonical)
    # f64: a fully tied spectrum (cube, octahedron) settles its axes in the fallback, whose rounding
    # the kernel and the bodies order differently: 1.4e-9 was drawn once, hence 1e-8, not 1e-9.
    tol = 2e-5 if dtype == "f32" else 1e-8
    scale = np.abs(np.nan_to_num(feeds["pos"])).max(axis=(1, 2))[:, None] + 1.0

    def close(a, b, clouds, unit, what):
        a, b = a.reshape(len(same), -1)[clouds], b.reshape(len(same), -1)[clouds]
        assert np.array_equal(np.isnan(a), np.isnan(b)), f"{what}: NaN in one only"
        err = np.abs(a - b) / unit[clouds] if np.ndim(unit) else np.abs(a - b)
        assert np.nanmax(err, initial=0.0) <= tol, f"{what}: {np.nanmax(err, initial=0.0):.2e}"

    every = np.ones(len(same), bool)
    close(got["c"], want["c"].numpy(), every, scale, "centroid vs torch")
    close(got["c"], body["c"], every, scale, "centroid vs ONNX bodies")
    # Every frame is orthonormal; where rounding decides none of it, that is all that is fixed.
    f = torch.from_numpy(got["f"]).double()
    close((f.transpose(-1, -2) @ f).numpy(), np.broadcast_to(np.eye(3), f.shape).copy(), every, 1.0, "orthonormal")
    det = torch.linalg.det(f).numpy()  # proper frames are rotations; all 8 are 4 rotations and 4 reflections
    if proper:
        close(det, np.ones_like(det), every, 1.0, "det of proper frames")
    elif not canonical:
        close(np.sort(det, -1), np.repeat([[-1.0] * 4 + [1.0] * 4], len(det), 0), every, 1.0, "dets of 8 frames")
    close(got["f"], want["f"].numpy(), same, 1.0, "basis vs torch")
    close(got["f"], body["f"], same, 1.0, "basis vs ONNX bodies")
    # Points and vectors in the kernel's own frames, as torch's frame_in puts them.
    c, basis = torch.from_numpy(got["c"]), torch.from_numpy(got["f"])
    with torch.no_grad():
        moved = {"p": TARGETS.frame_in(tensors["pos"], basis, c), "v": TARGETS.frame_in(tensors["vel"], basis)}
    vel_scale = np.abs(feeds["vel"]).max(axis=(1, 2, 3))[:, None] + 1.0
    close(got["p"], moved["p"].numpy(), every, scale, "points vs torch")
    close(got["v"], moved["v"].numpy(), every, vel_scale, "vectors vs torch")
    close(got["p"], body["p"], same, scale, "points vs ONNX bodies")


@pytest.mark.parametrize("gap", [3e-4, 3e-5, 1e-5])
def test_near_ties_above_the_threshold_are_solved_not_replaced(gap):
    """Relative eigen-gaps a little above GAP_TOL: both ends are trusted, as in torch (a tie
    threshold set too high would swap in the fixed fallback axes here)."""
    gm, fast, _ = frame_graph("f64", False, False, False)
    rng = np.random.default_rng(7)
    q = np.linalg.qr(rng.standard_normal((3, 3)))[0]
    half = np.diag(np.sqrt(np.array([1 + 2 * gap, 1 + gap, 1.0]) / 2))
    pos = (np.concatenate([half, -half]) @ q.T + 1.5)[None]
    got = fast.run({"pos": pos, "vel": rng.standard_normal((1, 6, 2, 3))})
    with torch.no_grad():
        want = gm(torch.from_numpy(pos), torch.zeros(1, 6, 2, 3, dtype=torch.float64))[1].numpy()
    assert frames.conditioning(frames.TORCH, torch.from_numpy(pos), None).item() > frames.GAP_TOL
    np.testing.assert_allclose(got["f"], want, atol=1e-16 / gap ** 2 + 1e-12, equal_nan=False)
    np.testing.assert_allclose(np.abs(got["f"][0, 0]), np.abs(q), atol=1e-16 / gap ** 2 + 1e-12, equal_nan=False)


def test_nan_in_nan_out():
    gm, fast, _ = frame_graph("f32", False, False, False)
    feeds = batch(["generic", "generic"], 6, False, np.float32, np.random.default_rng(3))
    feeds["pos"][1, 2, 0] = np.nan
    got = fast.run(feeds)
    assert np.isfinite(got["p"].reshape(2, -1)[0]).all() and np.isnan(got["p"].reshape(2, -1)[1]).all()


@pytest.mark.parametrize("name, dims", [("pointcloud_classifier", {"B": 3, "N": 9}),
                                        ("nbody", {"B": 4, "N": 5})])
def test_models_agree_with_and_without_the_kernels(name, dims):
    result = compiler.compile(f"examples/{name}.inv")
    onnx.checker.check_model(result.onnx, full_check=True)  # the portable file: standard functions
    assert {f.domain for f in result.onnx.functions} == {native.DOMAIN}
    fast, portable = Session(result.onnx), Session(result.onnx, native_frames=False)
    assert fast.kernels.startswith("frame kernels: native") and portable.kernels == native.BODIES
    assert not Session(compiler.compile("examples/mlp.inv").onnx).frames  # no frames: nothing built
    rng = np.random.default_rng(0)
    feeds = {i.name: (rng.random([dims.get(d, d) for d in i.shape]) < 0.8 if i.dtype == np.bool_ else
                      rng.standard_normal([dims.get(d, d) for d in i.shape]).astype(i.dtype)) for i in fast.inputs}
    with torch.no_grad():
        want = result.module(*(torch.from_numpy(v) for v in feeds.values()))
    for got in (fast.run(feeds), portable.run(feeds)):
        np.testing.assert_allclose(next(iter(got.values())), want.numpy(), rtol=1e-4, atol=1e-5, equal_nan=False)


def test_verify_measures_the_native_kernels_and_the_bodies():
    from compiler.verify import verify
    report = verify("examples/pointcloud_classifier.inv", trials=2)
    onnx_rows = {m.backend for m in report.rows if m.backend.startswith("onnx")}
    assert onnx_rows == {"onnx fp32, native frame kernels", "onnx fp32, frame bodies"} and report.ok


def test_without_a_compiler_the_bodies_run(monkeypatch):
    monkeypatch.setenv("CC", "/nonexistent/cc")
    native.library.cache_clear()
    try:
        line = Session(frame_graph_model()).kernels
        assert line.startswith(native.BODIES) and "no C compiler" in line
        monkeypatch.setenv("CC", "false")  # a compiler that fails: its first line is the reason
        native.library.cache_clear()
        assert "did not build" in Session(frame_graph_model()).kernels
        monkeypatch.delenv("CC")
        monkeypatch.setenv(native.DISABLE, "0")
        native.library.cache_clear()
        assert Session(frame_graph_model()).kernels == f"{native.BODIES} ({native.DISABLE}=0)"
    finally:
        native.library.cache_clear()


def frame_graph_model():
    return to_onnx(frame_graph("f32", True, False, False)[0])


def test_the_kernels_refuse_shapes_their_names_do_not_allow():
    """A hand-written file calling a kernel with a 4-frame basis where its name says 8."""
    from onnx import TensorProto, helper
    node = helper.make_node("FrameIn8Centered32", ["x", "basis", "c"], ["y"], domain=native.DOMAIN)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 3]),
                                            helper.make_tensor_value_info("basis", TensorProto.FLOAT, [1, 4, 3, 3]),
                                            helper.make_tensor_value_info("c", TensorProto.FLOAT, [1, 1, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid(native.DOMAIN, 1)])
    session = Session(model)
    with pytest.raises(Exception, match="the basis must be \\[B, F, 3, 3\\] with F frames"):
        session.run({"x": np.ones((1, 4, 3), np.float32), "basis": np.ones((1, 4, 3, 3), np.float32),
                     "c": np.zeros((1, 1, 3), np.float32)})


def test_names_match_the_kernels_registered():
    """Every name op_name() can spell is a kernel of runtime/frames.c (a misspelled one would
    silently run the slow body)."""
    from onnx import TensorProto, helper
    names = {native.op_name("centroid", d, masked=True) for d in native.WIDTHS}
    names |= {native.op_name("basis", d, masked=m, proper=p, canonical=c)
              for d in native.WIDTHS for m in (0, 1) for p in (0, 1) for c in (0, 1)}
    names |= {native.op_name("in", d, frames=f, centered=c) for d in native.WIDTHS for f in (1, 4, 8) for c in (0, 1)}
    for name in sorted(names):
        node = helper.make_node(name, ["x"], ["y"], domain=native.DOMAIN)
        graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, None)],
                                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid(native.DOMAIN, 1)])
        try:
            Session(model)
        except Exception as e:  # noqa: BLE001 - a known kernel fails on its arity or types, never its name
            assert "is not a registered function/op" not in str(e), name
    assert len(names) == 30


# -- every failure on the way to the kernels falls back to the bodies, with its reason -----------
@pytest.fixture
def empty_cache(tmp_path, monkeypatch):
    """A fresh, empty build cache and no remembered build, for this test only."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    native.library.cache_clear()
    native.rebuilt.cache_clear()
    yield tmp_path
    native.library.cache_clear()
    native.rebuilt.cache_clear()


def compiler_script(folder, name: str, body: str) -> str:
    """A stand-in C compiler: a shell script; "$out" is the file after -o."""
    path = folder / name
    path.write_text('#!/bin/sh\nout=\nwhile [ $# -gt 0 ]; do [ "$1" = -o ] && out=$2; shift; done\n' + body + "\n")
    path.chmod(0o755)
    return str(path)


def kernels_line(**options) -> str:
    return Session(frame_graph_model(), **options).kernels


def assert_falls_back(reason: str):
    """The session falls back to the bodies, says why, and still computes what the kernels do."""
    session = Session(frame_graph_model())
    assert session.kernels.startswith(native.BODIES + " (") and reason in session.kernels, session.kernels
    feeds = batch(["generic", "generic"], 7, True, np.float32, np.random.default_rng(5))
    got, want = session.run(feeds), Session(frame_graph_model(), native_frames=False).run(feeds)
    for name in want:
        assert np.array_equal(got[name], want[name], equal_nan=True), name


def test_a_compiler_that_writes_nothing_falls_back(empty_cache, monkeypatch):
    monkeypatch.setenv("CC", "/bin/true")
    assert_falls_back("wrote no library")
    assert not list((empty_cache / "cache" / "invc" / "native").iterdir())  # no empty library left


def test_a_cache_that_cannot_be_made_falls_back(empty_cache, monkeypatch):
    (empty_cache / "file").write_text("not a folder")
    monkeypatch.setenv("XDG_CACHE_HOME", str(empty_cache / "file"))  # a file: mkdir says "not a directory"
    assert_falls_back("cannot create build cache")
    native.library.cache_clear()
    monkeypatch.setenv("XDG_CACHE_HOME", "/proc/invc-cache")  # a folder no one, root included, can make
    assert_falls_back("cannot create build cache")


def test_a_cached_library_path_that_is_a_folder_falls_back(empty_cache):
    native.cached_path(os.environ.get("CC") or "cc").mkdir(parents=True)
    assert_falls_back("is not a regular file")


def test_a_compiler_that_hangs_is_stopped(empty_cache, monkeypatch):
    """The script's `sleep` is its child, holding the output pipes: only stopping the whole
    process group ends the build."""
    monkeypatch.setenv("CC", compiler_script(empty_cache, "hang", "sleep 60"))
    monkeypatch.setattr(native, "BUILD_SECONDS", 0.5)
    t0 = time.monotonic()
    assert_falls_back("did not finish building frames.c in 0.5 s")
    assert time.monotonic() - t0 < 20


def test_a_library_that_does_not_load_is_rebuilt_once(empty_cache, monkeypatch):
    path = native.cached_path(os.environ.get("CC") or "cc")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x7fELF truncated")  # a build cut short, or a library from another machine
    assert kernels_line().startswith("frame kernels: native")
    assert path.stat().st_size > 10_000
    # A compiler that writes a library that never loads: rebuilt once, then the bodies run.
    monkeypatch.setenv("CC", compiler_script(empty_cache, "junk", 'echo junk > "$out"'))
    native.library.cache_clear()
    calls = []
    monkeypatch.setattr(native, "build", lambda *a, _build=native.build: calls.append(a) or _build(*a))
    native.cached_path(os.environ["CC"]).write_bytes(b"junk")
    assert_falls_back("even rebuilt")
    assert_falls_back("even rebuilt")
    assert len(calls) == 1


def slow_compiler(folder) -> str:
    """Writes the real library in two steps, 0.3 s apart: a reader of its output in between sees
    half a library, and two builds sharing one temporary name collide. The cache then holds no
    build of it and no remembered one."""
    built = native.library()[0]
    assert built is not None
    native.library.cache_clear()
    return compiler_script(folder, "slow", f'head -c 4096 {built} > "$out"\nsleep 0.3\ncat {built} > "$out"')


def test_eight_threads_on_an_empty_cache_all_load_whole_kernels(empty_cache, monkeypatch):
    monkeypatch.setenv("CC", slow_compiler(empty_cache))
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        lines = list(pool.map(lambda _: kernels_line(), range(8)))
    assert all(line.startswith("frame kernels: native") for line in lines), lines
    folder = native.cached_path(os.environ["CC"]).parent
    assert not [p.name for p in folder.iterdir() if p.suffix == ".tmp"]  # no temporaries left


def test_processes_on_an_empty_cache_all_load_whole_kernels(empty_cache, monkeypatch):
    monkeypatch.setenv("CC", slow_compiler(empty_cache))
    script = "import onnxruntime as ort; from runtime import native; print(native.register(ort.SessionOptions()))"
    root = Path(__file__).resolve().parent.parent
    procs = [subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, cwd=root)
             for _ in range(2)]
    lines = [p.communicate(timeout=120)[0].strip() for p in procs]
    assert all(line.startswith("frame kernels: native") for line in lines), lines


def test_run_and_verify_say_why_the_kernels_fell_back(empty_cache, monkeypatch, tmp_path, capsys):
    from compiler import cli
    from compiler.verify import compare_with_torch
    monkeypatch.setenv("CC", "/bin/true")
    path = tmp_path / "pc.onnx"
    assert cli.main(["compile", "examples/pointcloud_classifier.inv", "-o", str(path)]) == 0
    capsys.readouterr()
    assert cli.main(["run", str(path), "--random", "B=2,N=5"]) == 0
    notes = [line for line in capsys.readouterr().err.splitlines() if "frame kernels" in line]
    assert notes == [f"note: {native.BODIES} (/bin/true exited 0 but wrote no library)"]
    report = compare_with_torch("examples/pointcloud_classifier.inv", path, {"B": 2, "N": 5})
    assert report.kernels == notes[0].removeprefix("note: ") and report.max_error <= 1e-4


def test_verify_notes_why_the_kernels_fell_back(empty_cache, monkeypatch):
    """A fallback with a reason is the bodies, measured once under their own name, with the reason."""
    from compiler.lower import lower
    from compiler.verify import _backends
    monkeypatch.setenv("CC", "/bin/true")
    checked = compiler.check("examples/pointcloud_classifier.inv")
    backends, notes = _backends(lower(checked), checked, None)
    assert [b[0] for b in backends if b[0].startswith("onnx")] == ["onnx fp32, frame bodies"]
    assert notes == [f"{native.BODIES} (/bin/true exited 0 but wrote no library)"]
