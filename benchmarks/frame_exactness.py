"""Where frame averaging stops being exact: all 8 frames against the one canonical frame.

    python benchmarks/frame_exactness.py            # the table of dsl/LANGUAGE.md

A random, non-equivariant backbone (a per-point MLP that also reads the cloud's mean features)
predicts positions; runtime/frames.py's FrameAverage makes it E(3)-equivariant, with all 8 frames
or with canonical=True. For each cloud, the error max ‖f(gx) - g·f(x)‖ / max(‖f(x) - c‖, 1) over
random rotations, reflections and translations g, in float64 (what the frames do) and float32 (what
a deployed model sees), and the two measures that predict it: the eigen-gap conditioning
(frame_conditioning) and the canonical frame's third-moment margin (sign_margin).
"""
from __future__ import annotations

import argparse
import math
import os
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from core import print_table  # noqa: E402
from runtime import frames  # noqa: E402


class Backbone(torch.nn.Module):
    """pos + MLP([pos, mean over points of a per-point embedding]): no symmetry of its own."""

    def __init__(self, hidden: int = 32):
        super().__init__()
        self.embed = torch.nn.Sequential(torch.nn.Linear(3, hidden), torch.nn.Tanh())
        self.head = torch.nn.Sequential(torch.nn.Linear(3 + hidden, hidden), torch.nn.Tanh(),
                                        torch.nn.Linear(hidden, 3))

    def forward(self, pos):
        pooled = self.embed(pos).mean(1, keepdim=True).expand(-1, pos.shape[1], -1)
        return pos + self.head(torch.cat([pos, pooled], -1))


def clouds(gen: torch.Generator) -> dict[str, torch.Tensor]:
    """Each case as one cloud [N, 3] in float64."""
    def normal(n, spread=(3.0, 1.5, 0.5)):
        return torch.randn(n, 3, generator=gen, dtype=torch.float64) * torch.tensor(spread, dtype=torch.float64)
    ring = torch.linspace(0, 2 * math.pi, 13, dtype=torch.float64)[:-1]
    cube = torch.tensor([[x, y, z] for x in (-1.0, 1.0) for y in (-1.0, 1.0) for z in (-1.0, 1.0)],
                        dtype=torch.float64)
    half = normal(16)
    return {
        "generic, N = 32": normal(32),
        "generic, N = 5 (n-body)": normal(5),
        "near tie, spectrum 1 : 1.0015 : 3": _with_spectrum(normal(32), [1.0, 1.0015, 3.0]),
        "near tie, spectrum 1 : 1.0000015 : 3": _with_spectrum(normal(32), [1.0, 1.0000015, 3.0]),
        "tied pair: planar regular 12-gon": torch.stack([ring.cos(), ring.sin(), 0 * ring], -1),
        "tetrahedron corners": cube[[0, 3, 5, 6]],
        "cube corners": cube,
        "point-symmetric (x and -x), distinct spread": torch.cat([half, -half]),
        "collinear, N = 7": torch.linspace(-1, 1, 7, dtype=torch.float64)[:, None] * torch.tensor([[1.0, 2, -1]]),
        "N = 2": normal(2),
        "N = 1": normal(1),
    }


def _with_spectrum(pts: torch.Tensor, spread: list) -> torch.Tensor:
    """pts whitened and recoloured so its covariance has eigenvalues ∝ spread along the axes."""
    xc = pts - pts.mean(0)
    values, vectors = torch.linalg.eigh(xc.T @ xc)
    return xc @ vectors / values.sqrt() * torch.tensor(spread, dtype=pts.dtype).sqrt()


def orthogonal(gen: torch.Generator, count: int) -> torch.Tensor:
    return torch.linalg.qr(torch.randn(count, 3, 3, generator=gen, dtype=torch.float64))[0]


def relative_error(model, pos: torch.Tensor, q: torch.Tensor, t: torch.Tensor) -> float:
    """max over g of ‖f(g x) - g f(x)‖ / max(‖f(x) - c‖, 1), the batch being one cloud seen under
    each g (all 8 frames map one point to its centroid exactly: the sign patterns cancel)."""
    with torch.no_grad():
        y = model(pos[None])
        moved = model(pos[None] @ q.transpose(1, 2) + t)
        want = y @ q.transpose(1, 2) + t
    scale = (y - pos.mean(0)).norm().clamp_min(1.0)
    return float(((moved - want).flatten(1).norm(dim=1) / scale).max())


def row(name: str, pos: torch.Tensor, models: dict, gen: torch.Generator) -> list[str]:
    q, t = orthogonal(gen, 8), 5 * torch.randn(8, 1, 3, generator=gen, dtype=torch.float64)
    cells = []
    for dtype in (torch.float64, torch.float32):
        for model in models.values():
            m = model.to(dtype)
            cells.append(f"{relative_error(m, pos.to(dtype), q.to(dtype), t.to(dtype)):.1e}")
    cond = frames.conditioning(frames.TORCH, pos[None]).item()
    margin = frames.sign_margin(pos[None]).item()
    return [name, str(len(pos)), f"{cond:.1e}", f"{margin:.1e}", *cells]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    backbone = Backbone()
    models = {"all 8": frames.frame_average(backbone, ["position"], out="position"),
              "canonical": frames.frame_average(backbone, ["position"], out="position", canonical=True)}
    rows = [row(name, pos, models, gen) for name, pos in clouds(gen).items()]
    print(f"# machine: {os.cpu_count()} CPUs; seed {args.seed}; 8 random orthogonal maps and translations per cloud")
    print_table("Frame averaging, relative equivariance error (max over 8 random rotations/reflections "
                "+ translations)", ["cloud", "N", "conditioning", "sign margin", "fp64 all 8", "fp64 canonical",
                                    "fp32 all 8", "fp32 canonical"], rows)


if __name__ == "__main__":
    main()
