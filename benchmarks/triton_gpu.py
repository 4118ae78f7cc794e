"""GPU benchmark of the Triton backend: segment-sum bandwidth, PCA frames, whole-model latency.

    python benchmarks/triton_gpu.py                     # on one H100 or H200: under 5 minutes
    python benchmarks/triton_gpu.py --interpret --small # CPU, the Triton interpreter, tiny sizes

1. Segment sums: achieved bandwidth of the CSR kernel (and the atomic one on unbalanced sets) as a
   fraction of the card's peak HBM bandwidth, against torch index_add_ and scatter_reduce.
2. Frames: the one-kernel PCA frames against batched torch.linalg.eigh plus torch ops.
3. Example specs: the --target triton module against torch eager, torch.compile and onnxruntime.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PEAK_GBS = {"H200": 4800.0, "H100 PCIe": 2000.0, "H100": 3350.0}  # spec-sheet HBM bandwidth
SPECS = ("deepsets", "ragged_sets", "transformer_block", "pointcloud_classifier", "nbody")


def main(argv=None) -> int:
    args = _parse(argv)
    if args.interpret:
        os.environ["TRITON_INTERPRET"] = "1"  # before any kernel is compiled
    sys.path.insert(0, str(ROOT))
    import torch
    device = "cpu" if args.interpret else "cuda"
    if device == "cuda" and not torch.cuda.is_available():
        print("no CUDA device: run on a GPU, or pass --interpret --small to smoke-test on the CPU")
        return 2
    sizes = SMALL if args.small else LARGE
    peak = args.peak_gbs or _peak(torch, device)
    print(f"# Triton backend benchmark on {_device_name(torch, device)}"
          f"{' (Triton interpreter: timings are not GPU numbers)' if args.interpret else ''}")
    rows = segment_sums(torch, device, sizes, peak) + frames(torch, device, sizes) + \
        models(torch, device, sizes, args.interpret, args.specs.split(","))
    _table(rows)
    return 0


def _parse(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--interpret", action="store_true", help="CPU tensors through TRITON_INTERPRET=1")
    p.add_argument("--small", action="store_true", help="tiny sizes (for --interpret)")
    p.add_argument("--peak-gbs", type=float, help="the card's peak HBM GB/s (default: from its name)")
    p.add_argument("--specs", default=",".join(SPECS), help=f"example specs to time (default: {','.join(SPECS)})")
    return p.parse_args(argv)


LARGE = dict(rows=1 << 24, width=64, sets=1 << 16, clouds=1 << 16, points=64, batch=256, n=32)
SMALL = dict(rows=512, width=16, sets=8, clouds=4, points=16, batch=2, n=5)


def _device_name(torch, device) -> str:
    return torch.cuda.get_device_name() if device == "cuda" else "CPU"


def _peak(torch, device) -> float | None:
    if device != "cuda":
        return None
    name = torch.cuda.get_device_name()
    return next((gbs for key, gbs in PEAK_GBS.items() if key in name), None)


def bench(torch, device, fn) -> float:
    """Milliseconds per call: triton's do_bench on a GPU; one timed call in the interpreter."""
    if device == "cuda":
        from triton.testing import do_bench
        return do_bench(fn, warmup=50, rep=300)
    fn()
    t0 = time.perf_counter()
    fn()
    return (time.perf_counter() - t0) * 1000


# -- 1. segment sums ---------------------------------------------------------------------------------
def segment_sums(torch, device, sizes, peak) -> list:
    from runtime.triton.build import load, module_source
    from runtime.triton.templates import SegmentReduce
    rows, width, sets = sizes["rows"], sizes["width"], sizes["sets"]
    m = load(module_source("benchmark", SegmentReduce("total", "sum", "csr", width).source()), "bench")
    g = torch.Generator().manual_seed(0)
    x = torch.randn(rows, width, generator=g).to(device)
    cuts = torch.randint(0, rows + 1, (sets - 1,), generator=g).sort().values
    out = []
    for label, offsets in (("balanced", torch.cat([torch.tensor([0]), cuts, torch.tensor([rows])])),
                           ("unbalanced", _unbalanced(torch, rows, sets))):
        offsets = offsets.to(device)
        ids = torch.repeat_interleave(torch.arange(sets, device=device), offsets.diff())
        moved = x.numel() * 4 + sets * width * 4 + offsets.numel() * 8  # read x and offsets, write sums
        runs = {"triton csr": lambda: m.launch_total(x, offsets, variant="csr"),
                "triton atomic": lambda: m.launch_total(x, offsets, variant="atomic"),
                "torch index_add_": lambda: torch.zeros(sets, width, device=device).index_add_(0, ids, x),
                "torch scatter_reduce": lambda: torch.zeros(sets, width, device=device).scatter_reduce_(
                    0, ids[:, None].expand_as(x), x, "sum")}
        for name, fn in runs.items():
            ms = bench(torch, device, fn)
            gbs = moved / ms / 1e6
            share = f"{gbs / peak:.0%} of peak" if peak else "-"
            out.append((f"segment sum {label} {rows}x{width} -> {sets}", name, f"{ms:.3f} ms", f"{gbs:.0f} GB/s {share}"))
    return out


def _unbalanced(torch, rows, sets):
    """One set holds half the rows, the rest split evenly: the atomic variant's case."""
    return torch.cat([torch.tensor([0]), torch.linspace(rows // 2, rows, sets).long()])


# -- 2. frames ------------------------------------------------------------------------------------------
def eigh_frames(torch, pos):
    """The torch baseline: centroid, covariance, batched eigh (float64), 8 sign patterns, projection."""
    c = pos.mean(1, keepdim=True)
    xc = pos - c
    _, vectors = torch.linalg.eigh((xc.transpose(1, 2) @ xc).double())
    axes = vectors.flip(-1).float()  # decreasing eigenvalue
    signs = torch.tensor([[1 - 2 * ((k >> (2 - j)) & 1) for j in range(3)] for k in range(8)],
                         dtype=pos.dtype, device=pos.device)
    basis = axes[:, None] * signs[None, :, None, :]
    return c, basis, (xc[:, None] @ basis).reshape(-1, *pos.shape[1:])


def frames(torch, device, sizes) -> list:
    from runtime.triton.build import load, module_source
    from runtime.triton.templates import FRAME_HELPERS, PCAFrames
    m = load(module_source("benchmark", FRAME_HELPERS + "\n\n\n" + PCAFrames("frames").source()), "bench")
    pos = torch.randn(sizes["clouds"], sizes["points"], 3, generator=torch.Generator().manual_seed(1)).to(device)
    label = f"PCA frames {sizes['clouds']} clouds x {sizes['points']} points"
    return [(label, "triton one kernel", f"{bench(torch, device, lambda: m.launch_frames(pos)):.3f} ms", ""),
            (label, "torch eigh + ops", f"{bench(torch, device, lambda: eigh_frames(torch, pos)):.3f} ms", "")]


# -- 3. whole models ----------------------------------------------------------------------------------
def models(torch, device, sizes, interpret: bool, specs: list) -> list:
    from compiler.driver import build, compile
    from runtime.triton.build import load
    out = []
    with tempfile.TemporaryDirectory() as tmp:
        for spec in specs:
            path = ROOT / "examples" / f"{spec}.inv"
            if not path.exists():
                continue
            eager = build(path).to(device).eval()
            result = compile(path, "triton", Path(tmp) / spec)
            net = load((Path(tmp) / spec / "model.py").read_text(), f"bench_{spec}").load(
                device, str(Path(tmp) / spec / "weights.pt"))
            inputs = _inputs(torch, eager, device, sizes)
            label = f"{spec} B={sizes['batch']} N={sizes['n']} ({len(result.triton.regions)} kernels)"
            with torch.no_grad():
                runs = {"triton target": lambda: net(*inputs), "torch eager": lambda: eager(*inputs)}
                if not interpret:
                    compiled = torch.compile(eager)
                    runs["torch.compile"] = lambda: compiled(*inputs)
                for name, fn in runs.items():
                    out.append((label, name, f"{bench(torch, device, fn):.3f} ms", ""))
            out.append((label, "onnxruntime CUDA EP", *_onnxruntime(torch, path, inputs, tmp, device)))
    return out


def _inputs(torch, gm, device, sizes):
    """Random inputs at the benchmark's sizes; an input read as CSR offsets gets valid offsets."""
    from ops import sets
    # S counts CSR offsets, so a ragged batch of `batch` sets has batch + 1 of them.
    g = torch.Generator().manual_seed(2)
    dims = {"B": sizes["batch"], "N": sizes["n"], "S": sizes["batch"] + 1}
    offsets = {n.args[1] for n in gm.graph.nodes if n.op == "call_function" and n.target is sets.segment_reduce}
    values = []
    for node in (n for n in gm.graph.nodes if n.op == "placeholder"):
        shape = [dims[d] if isinstance(d, str) else d for d in node.meta["shape"]]
        if node in offsets:
            cuts = torch.randint(0, dims["N"] + 1, (shape[0] - 2,), generator=g).sort().values
            values.append(torch.cat([torch.tensor([0]), cuts, torch.tensor([dims["N"]])]))
        elif node.meta["dtype"] == "bool":
            values.append(torch.rand(shape, generator=g) > 0.2)
        elif node.meta["dtype"].startswith("f"):
            values.append(torch.randn(shape, generator=g))
        else:
            values.append(torch.randint(0, 4, shape, generator=g))
    return [v.to(device) for v in values]


def _onnxruntime(torch, path, inputs, tmp, device) -> tuple:
    try:
        import onnxruntime as ort
        from compiler.driver import compile
    except ImportError:
        return ("n/a", "onnxruntime is not installed")
    if device != "cuda" or "CUDAExecutionProvider" not in ort.get_available_providers():
        return ("n/a", "no CUDA execution provider (install onnxruntime-gpu)")
    onnx_path = Path(tmp) / f"{path.stem}.onnx"
    compile(path, "onnx", onnx_path)
    session = ort.InferenceSession(str(onnx_path), providers=["CUDAExecutionProvider"])
    feeds = {i.name: t.cpu().numpy() for i, t in zip(session.get_inputs(), inputs)}
    return (f"{bench(torch, device, lambda: session.run(None, feeds)):.3f} ms", "host inputs, copies included")


def _table(rows) -> None:
    widths = [max(len(str(r[i])) for r in rows + [("case", "implementation", "time", "note")]) for i in range(4)]
    for r in [("case", "implementation", "time", "note")] + rows:
        print("  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip())


if __name__ == "__main__":
    sys.exit(main())
