"""The memory probe: linear decoding of earlier observations from the recurrent state."""

import json

import numpy as np
import torch

import ctm_rl.probe as probe
import ctm_rl.train as train_module


def _stream(steps=600, streams=4, delay=3, seed=0):
    """Observations are random; the "state" holds exactly the observation ``delay`` steps back, within an
    episode of 50 steps, and noise otherwise."""
    rng = np.random.default_rng(seed)
    observations = rng.normal(size=(steps, streams, 2))
    starts = np.zeros((steps, streams), dtype=bool)
    starts[::50] = True
    states = rng.normal(size=(steps, streams, 6))
    states[delay:, :, :2] = observations[:-delay]
    return states, observations, starts


def test_the_probe_decodes_exactly_the_lag_the_state_holds():
    states, observations, starts = _stream(delay=3)
    points = probe.decode_by_lag(states, observations, starts, [0, 1, 2, 3, 4, 5])
    r2 = {point.lag: point.r2 for point in points}
    assert r2[3] > 0.99
    assert all(abs(r2[lag]) < 0.1 for lag in (0, 1, 2, 4, 5))
    # Independent observations: the current one predicts no earlier one, and itself perfectly.
    baseline = {point.lag: point.observation_r2 for point in points}
    assert baseline[0] > 0.99 and all(abs(baseline[lag]) < 0.1 for lag in (1, 2, 3, 4, 5))


def test_pairs_never_cross_an_episode_start():
    states, observations, starts = _stream(steps=100, streams=1)
    (point,) = probe.decode_by_lag(states, observations, starts, [3])
    assert point.pairs == 2 * (50 - 3)  # two episodes of 50 steps; the first 3 steps of each have no partner


def test_the_ctm_probe_reads_the_synchronisation_its_heads_read():
    from helpers import small_model

    model = small_model()
    obs = model.env.reset()
    action, state = model.predict(obs, deterministic=True)
    features = probe.recurrent_features(model.policy, state)
    policy = model.policy
    with torch.no_grad():
        projected = policy._ctm_input(torch.as_tensor(obs), policy.pi_features_extractor, policy.ctm)
        start = tuple(t.permute(2, 0, 1).reshape(1, 4, -1).contiguous() for t in policy.ctm.start_traces(4))
        sync, _ = policy._run_ctm(policy.ctm, projected, start, torch.ones(4))
    np.testing.assert_allclose(features, sync.numpy(), atol=1e-6)


def test_the_probe_command_writes_one_score_per_lag(tmp_path, capsys):
    assert train_module.main(["--log-dir", str(tmp_path), "--timesteps", "64", "--n-envs", "2", "--hyperparams",
                              "n_steps=16", "batch_size=32", "n_epochs=1", "d_model=16", "d_input=8", "n_synch_out=4",
                              "--eval-freq", "0", "--checkpoint-freq", "0", "--no-progress-bar"]) == 0
    run_dir = tmp_path / "CartPole-NoVel" / "ctm-seed0"
    assert probe.main([str(run_dir), "--steps", "60", "--n-envs", "2", "--max-k", "4"]) == 0
    points = json.loads((run_dir / "probe.json").read_text())
    assert [point["lag"] for point in points] == [0, 1, 2, 3, 4]
    assert all(np.isfinite(point["r2"]) and point["r2"] <= 1 for point in points)
    assert points[0]["observation_r2"] > 0.99  # the current observation decodes itself
    assert "lag" in capsys.readouterr().out


def test_discrete_and_dict_observations_are_probed_one_hot():
    from gymnasium import spaces

    space = spaces.Dict({"0": spaces.Discrete(3), "1": spaces.Box(-1, 1, (2,))})
    flat = probe.flat_observations({"0": np.array([2, 0]), "1": np.array([[0.5, -0.5], [0.0, 1.0]])}, space)
    np.testing.assert_array_equal(flat, [[0, 0, 1, 0.5, -0.5], [1, 0, 0, 0.0, 1.0]])
    np.testing.assert_array_equal(probe.flat_observations(np.array([1]), spaces.Discrete(4)), [[0, 1, 0, 0]])


def test_the_probe_refuses_a_folder_that_is_no_run(tmp_path, capsys):
    assert probe.main([str(tmp_path)]) == 2
    assert "has no config.yaml" in capsys.readouterr().err
