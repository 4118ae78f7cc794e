"""The n-body generator against a direct particle-by-particle simulation, its conservation law,
and one epoch of the training script on a tiny subset."""
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "examples" / "nbody"))

import data  # noqa: E402
import train  # noqa: E402


def direct(pos, vel, charge, steps: int):
    """One trajectory, one particle pair at a time: the textbook loop the vectorized code replaces."""
    pos, vel = pos.copy(), vel.copy()
    for _ in range(steps):
        force = np.zeros_like(pos)
        for i in range(len(pos)):
            for j in range(len(pos)):
                if i != j:
                    d = pos[i] - pos[j]
                    force[i] += data.STRENGTH * charge[i, 0] * charge[j, 0] * d / np.linalg.norm(d) ** 3
        vel = vel + data.DT * np.clip(force, -data.MAX_FORCE, data.MAX_FORCE)
        pos = pos + data.DT * vel
    return pos, vel


def test_vectorized_simulation_matches_the_direct_loop():
    pos, vel, charge = data.initial_state(np.random.default_rng(0), 3)
    locs, vels = data.simulate(pos, vel, charge, frames=1)
    assert locs.shape == vels.shape == (2, 3, data.PARTICLES, 3)
    np.testing.assert_array_equal(locs[0], pos)
    for t in range(3):
        want_pos, want_vel = direct(pos[t], vel[t], charge[t], data.SAMPLE_EVERY)
        np.testing.assert_allclose(locs[1, t], want_pos, rtol=0, atol=1e-12)
        np.testing.assert_allclose(vels[1, t], want_vel, rtol=0, atol=1e-12)


def test_initial_state_and_momentum_conservation():
    pos, vel, charge = data.initial_state(np.random.default_rng(1), 200)
    np.testing.assert_allclose(np.linalg.norm(vel, axis=-1), data.VEL_NORM)
    assert set(np.unique(charge)) == {-1.0, 1.0}
    _, vels = data.simulate(pos, vel, charge, frames=3)
    # Pairwise forces cancel, so total momentum only moves when a force component is clipped.
    drift = np.abs(vels[-1].sum(1) - vel.sum(1)).max(-1)
    assert np.median(drift) < 1e-12


def test_training_runs_one_epoch(tmp_path):
    result = train.train(epochs=1, minutes=5, train_size=20, test_size=10, batch=10, log=lambda _: None)
    assert result["epochs"] == 1 and np.isfinite(result["test_mse"]) and result["test_mse"] > 0
