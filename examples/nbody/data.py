"""The charged-particles n-body data set of the NRI / EGNN / frame-averaging papers, generated here.

Five particles with charges ±1 (p = ½) start at N(0, loc_std²) positions with velocities of norm
vel_norm in random directions. Particle i feels Σ_j q_i q_j (x_i - x_j) / |x_i - x_j|³ (like charges
repel), each component clipped at ±100, and moves by semi-implicit Euler steps of Δt = 0.001. A
trajectory is sampled every 100 steps; a sample pairs frame 30 (input: positions, velocities,
charges) with frame 40 (target: positions). Only the first 4000 steps are ever needed, and all
trajectories step together as one array program.

    python examples/nbody/data.py            # writes .data/nbody-3000-2000-0.npz (train, test, seed)
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from common.files import atomic_file

ROOT = Path(__file__).resolve().parents[2]
CACHE = ROOT / ".data"
PARTICLES, LOC_STD, VEL_NORM, STRENGTH = 5, 1.0, 0.5, 1.0
DT, MAX_FORCE, SAMPLE_EVERY, BOX = 1e-3, 100.0, 100, 5.0
INPUT_FRAME, TARGET_FRAME = 30, 40


def initial_state(rng: np.random.Generator, trajectories: int):
    pos = np.clip(rng.standard_normal((trajectories, PARTICLES, 3)) * LOC_STD, -BOX, BOX)
    vel = rng.standard_normal((trajectories, PARTICLES, 3))
    vel *= VEL_NORM / np.linalg.norm(vel, axis=-1, keepdims=True)
    charge = rng.choice([-1.0, 1.0], size=(trajectories, PARTICLES, 1))
    return pos, vel, charge


def _pair_differences(particles: int) -> np.ndarray:
    """D [pairs, P]: row (i, j), i < j, is e_i - e_j, so D @ x = x_i - x_j for every pair at once."""
    pairs = [(i, j) for i in range(particles) for j in range(i + 1, particles)]
    d = np.zeros((len(pairs), particles))
    for row, (i, j) in enumerate(pairs):
        d[row, i], d[row, j] = 1.0, -1.0
    return d


# State is [P, 3, T], trajectories last: each step is two small matmuls over all pairs (Newton's
# third law: one force per pair, +f on i and -f on j, is Dᵀ f) and elementwise ops on long rows.
def forces(pos: np.ndarray, coupling: np.ndarray, diff: np.ndarray) -> np.ndarray:
    """Coulomb forces [P, 3, T], components clipped at ±MAX_FORCE; coupling = q_i q_j [pairs, T]."""
    p, _, t = pos.shape
    rel = (diff @ pos.reshape(p, -1)).reshape(len(diff), 3, t)        # x_i - x_j
    r2 = (rel * rel).sum(1)
    pair = rel * (coupling / (r2 * np.sqrt(r2)))[:, None, :]          # q_i q_j (x_i - x_j) / r³
    return np.clip((diff.T @ pair.reshape(len(diff), -1)).reshape(p, 3, t), -MAX_FORCE, MAX_FORCE)


def simulate(pos, vel, charge, frames: int) -> tuple[np.ndarray, np.ndarray]:
    """Positions and velocities [T, P, 3] at frames 0..frames (every SAMPLE_EVERY steps), stacked."""
    diff = _pair_differences(pos.shape[1])
    pos, vel = (np.ascontiguousarray(a.transpose(1, 2, 0)) for a in (pos, vel))
    q = charge[:, :, 0].T                                              # [P, T]
    coupling = STRENGTH * (diff.clip(0) @ q) * (-diff.clip(max=0) @ q)
    locs, vels = [pos], [vel]
    for step in range(1, frames * SAMPLE_EVERY + 1):
        vel = vel + DT * forces(pos, coupling, diff)
        pos = pos + DT * vel
        if step % SAMPLE_EVERY == 0:
            locs.append(pos)
            vels.append(vel)
    return np.stack(locs).transpose(0, 3, 1, 2), np.stack(vels).transpose(0, 3, 1, 2)


def generate(trajectories: int, seed: int = 0) -> dict[str, np.ndarray]:
    pos, vel, charge = initial_state(np.random.default_rng(seed), trajectories)
    locs, vels = simulate(pos, vel, charge, TARGET_FRAME)
    return {"pos": locs[INPUT_FRAME], "vel": vels[INPUT_FRAME], "charge": charge,
            "target": locs[TARGET_FRAME]}


def load(train: int = 3000, test: int = 2000, seed: int = 0, cache: Path = CACHE) -> dict:
    """{"train": arrays, "test": arrays} as float32, generated once and cached under .data/."""
    path = cache / f"nbody-{train}-{test}-{seed}.npz"
    if path.exists():
        with np.load(path) as f:
            return _split(dict(f), train)
    data = generate(train + test, seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(path, "n-body data") as f:  # runs started together must not read a half-written file
        np.savez(f, **data)
    return _split(data, train)


def _split(data: dict, train: int) -> dict:
    as32 = {k: v.astype(np.float32) for k, v in data.items()}
    return {"train": {k: v[:train] for k, v in as32.items()}, "test": {k: v[train:] for k, v in as32.items()}}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--train", type=int, default=3000)
    p.add_argument("--test", type=int, default=2000)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    t0 = time.perf_counter()
    data = load(args.train, args.test, args.seed)
    moved = np.linalg.norm(data["test"]["target"] - data["test"]["pos"], axis=-1).mean()
    print(f"{CACHE}/nbody-{args.train}-{args.test}-{args.seed}.npz: {args.train} train, {args.test} test "
          f"trajectories in {time.perf_counter() - t0:.1f} s; mean displacement frame 30 -> 40: {moved:.3f}")


if __name__ == "__main__":
    main()
