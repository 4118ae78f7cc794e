"""The n-body generator against a direct particle-by-particle simulation, its conservation law,
and one epoch of the training script on a tiny subset."""
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import compiler

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
    np.testing.assert_allclose(locs[0], pos, rtol=0, atol=0, equal_nan=False)
    for t in range(3):
        want_pos, want_vel = direct(pos[t], vel[t], charge[t], data.SAMPLE_EVERY)
        np.testing.assert_allclose(locs[1, t], want_pos, rtol=0, atol=1e-12, equal_nan=False)
        np.testing.assert_allclose(vels[1, t], want_vel, rtol=0, atol=1e-12, equal_nan=False)


def test_initial_state_and_momentum_conservation():
    pos, vel, charge = data.initial_state(np.random.default_rng(1), 200)
    np.testing.assert_allclose(np.linalg.norm(vel, axis=-1), data.VEL_NORM, equal_nan=False)
    assert set(np.unique(charge)) == {-1.0, 1.0}
    _, vels = data.simulate(pos, vel, charge, frames=3)
    # Pairwise forces cancel, so total momentum only moves when a force component is clipped.
    drift = np.abs(vels[-1].sum(1) - vel.sum(1)).max(-1)
    assert np.median(drift) < 1e-12


def test_training_runs_one_epoch(tmp_path):
    result = train.train(epochs=1, minutes=5, train_size=20, val_size=10, test_size=10, batch=10,
                         log=lambda _: None)
    assert result["epochs"] == 1 and np.isfinite(result["test_mse"]) and result["test_mse"] > 0
    assert [row[1] for row in result["curve"]] == [1] and result["val_mse"] == result["curve"][0][2]


def test_validation_only_training_saves_the_checkpoint_that_evaluate_tests(tmp_path):
    sizes = {"train_size": 20, "val_size": 10, "test_size": 10}
    blind = train.train(epochs=2, minutes=5, batch=10, validate_every=0, weight_decay=0.1, test=False,
                        save=tmp_path / "blind.pt", log=lambda _: None, **sizes)
    saved = json.loads((tmp_path / "blind.json").read_text())
    assert blind["test_mse"] is None and saved["best_val_mse"] == blind["val_mse"] == min(r[2] for r in blind["curve"])
    assert saved["weight_decay"] == 0.1 and len(saved["curve"]) == 2
    # The same run with the test split: evaluating its saved checkpoint gives the test MSE it reports.
    seen = train.train(epochs=2, minutes=5, batch=10, validate_every=0, weight_decay=0.1,
                       save=tmp_path / "seen.pt", log=lambda _: None, **sizes)
    assert seen["val_mse"] == pytest.approx(blind["val_mse"], rel=1e-3)  # threaded sums: not bitwise
    assert train.evaluate(tmp_path / "seen.pt", **sizes) == pytest.approx(seen["test_mse"], rel=1e-5)
    # The drift model has the same weights' names: evaluating with it would give a silently wrong number.
    with pytest.raises(SystemExit, match="was trained with .*nbody.inv.*pass --spec"):
        train.evaluate(tmp_path / "seen.pt", spec=Path(train.ROOT) / "examples" / "nbody_drift.inv", **sizes)


def test_weight_decay_switches_to_adamw_and_zero_keeps_adam():
    model = compiler.build(train.SPEC)
    assert type(train.optimizer(model, 1e-3)) is torch.optim.Adam
    adamw = train.optimizer(model, 1e-3, weight_decay=0.01)
    assert type(adamw) is torch.optim.AdamW and adamw.defaults["weight_decay"] == 0.01 and adamw.defaults["fused"]


def nbody_inputs(b: int):
    gen = torch.Generator().manual_seed(b)
    return (torch.randn(b, 5, 3, generator=gen) + 1, torch.randn(b, 5, 3, generator=gen),
            torch.randn(b, 5, 1, generator=gen).sign())


def test_sampled_frames_average_back_to_the_spec_model(monkeypatch):
    """Forcing the draw to frame f, the sampled model is the backbone in frame f: the mean over
    the 8 frames is the spec's model, and each frame differs from it (random weights)."""
    gm = compiler.build(train.SPEC, seed=3)
    sampled, inputs = train.one_frame(gm, "sampled"), nbody_inputs(4)
    per_frame = []
    with torch.no_grad():
        for f in range(8):
            monkeypatch.setattr(torch, "randint", lambda n, size, device=None, f=f: torch.full(size, f))
            per_frame.append(sampled(*inputs))
        want = gm(*inputs)
    torch.testing.assert_close(torch.stack(per_frame).mean(0), want, rtol=1e-5, atol=1e-5)
    assert all((p - want).abs().max() > 1e-3 for p in per_frame)


def test_canonical_twin_is_the_canonical_spec(tmp_path):
    spec = tmp_path / "nbody.inv"
    spec.write_text(train.SPEC.read_text().replace('out="position")', 'out="position", canonical=true)'))
    twin, direct, inputs = train.one_frame(compiler.build(train.SPEC, seed=3), "canonical"), \
        compiler.build(spec, seed=3), nbody_inputs(6)
    with torch.no_grad():
        torch.testing.assert_close(twin(*inputs), direct(*inputs), rtol=0, atol=0)


def test_ema_keeps_the_moving_average_of_the_trained_weights(tmp_path, monkeypatch):
    # One step an epoch; every step's weights are recorded, and their average is computed here by hand.
    seen, take_step = [], train.step

    def recording(model, opt, batch):
        loss = take_step(model, opt, batch)
        seen.append({k: v.detach().clone() for k, v in model.state_dict().items()})
        return loss
    monkeypatch.setattr(train, "step", recording)
    decay = 0.6
    r = train.train(epochs=3, minutes=5, train_size=10, val_size=10, test_size=10, batch=10, validate_every=1e9,
                    ema=decay, test=False, save=tmp_path / "ema.pt", log=lambda _: None)
    assert len(seen) == 3 and [row[1] for row in r["curve"]] == [3]
    want = seen[0]
    for weights in seen[1:]:
        want = {k: decay * want[k] + (1 - decay) * weights[k] for k in want}
    kept = torch.load(tmp_path / "ema.pt", weights_only=True)
    assert kept.keys() == want.keys()
    for k in want:
        torch.testing.assert_close(kept[k], want[k], rtol=1e-6, atol=1e-7)
    assert any((kept[k] - seen[-1][k]).abs().max() > 0 for k in kept)  # not simply the last step's weights
    assert json.loads((tmp_path / "ema.json").read_text())["ema"] == decay


@pytest.mark.parametrize("decay", [1.0, 1.5, -0.1, float("nan")])
def test_a_decay_outside_0_1_is_refused_before_training(decay):
    with pytest.raises(SystemExit, match=r"--ema .* is not a decay per step in \[0, 1\)"):
        train.train(epochs=1, minutes=1, train_size=10, val_size=10, test_size=10, ema=decay, log=lambda _: None)
