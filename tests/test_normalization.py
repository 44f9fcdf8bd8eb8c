import json
import zipfile

import numpy as np
import pytest

import ctm_rl.train as train_module
from ctm_rl import ConfigError
from ctm_rl.config import parse_value, resolve_config

TINY = {"n_steps": 16, "batch_size": 32, "n_epochs": 1, "d_model": 16, "d_input": 8, "n_synch_out": 4,
        "memory_length": 3}


def _train(tmp_path, timesteps, normalize, resume=False):
    config, env = resolve_config("CartPole-NoVel", "ctm", {**TINY, "normalize_reward": normalize}, n_envs=4,
                                 timesteps=timesteps, eval_freq=64, eval_episodes=4, checkpoint_freq=0,
                                 progress_bar=False, log_dir=str(tmp_path))
    run_dir = tmp_path / "run"
    run_dir.mkdir(exist_ok=True)
    return train_module.train(config, env, run_dir, resume=resume), run_dir


def _saved_statistics(path):
    return json.loads(zipfile.ZipFile(path).read("data")).get("reward_statistics")


@pytest.mark.parametrize("normalize", [False, True])
def test_normalised_rewards_reach_training_while_evaluations_keep_the_envs_own(tmp_path, normalize):
    model, run_dir = _train(tmp_path, 512, normalize)
    rewards = model.rollout_buffer.rewards  # CartPole pays 1 a step; no episode reaches its 500-step limit here
    with np.load(run_dir / "eval" / "evaluations.npz") as evaluations:
        assert np.array_equal(evaluations["results"], evaluations["ep_lengths"])  # 1 a step in every evaluation
    if normalize:  # divided by the discounted return's running spread (several steps' worth already), one per step
        assert rewards.max() < 0.5 and np.all(np.ptp(rewards, axis=1) < 1e-6)
        assert _saved_statistics(run_dir / "model.zip")["count"] == pytest.approx(512, abs=1)
    else:
        assert np.all(rewards == 1.0)
        assert _saved_statistics(run_dir / "model.zip") is None


def test_a_resumed_run_continues_the_reward_statistics(tmp_path):
    _, run_dir = _train(tmp_path, 512, True)
    saved = _saved_statistics(run_dir / "model.zip")
    model, _ = _train(tmp_path, 1024, True, resume=True)
    statistics = model.get_vec_normalize_env().ret_rms
    # Continued: the count goes on from the save's (a restart would count the resumed part's 512 steps alone).
    assert statistics.count == pytest.approx(saved["count"] + 512, abs=1)
    assert _saved_statistics(run_dir / "model.zip")["count"] == pytest.approx(1024, abs=1)


def test_normalize_reward_takes_true_or_false_only():
    with pytest.raises(ConfigError, match="normalize_reward must be true or false"):
        resolve_config("CartPole-NoVel", "ctm", {"normalize_reward": "sometimes"})
    assert resolve_config("CartPole-NoVel", "ctm", {"normalize_reward": True})[0].normalize_reward is True
    assert resolve_config("Acrobot-v1", "ctm")[0].normalize_reward is False  # a preset block without the key
    assert resolve_config("Acrobot-v1", "ctm", {"normalize_reward": parse_value("yes")})[0].normalize_reward is True
