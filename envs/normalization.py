"""Reward normalisation for training (SB3's ``VecNormalize`` on rewards alone), and its running statistics as
plain numbers, so that a save can carry them without pickling and a resumed run continues them."""

from __future__ import annotations

from typing import Any

from stable_baselines3.common.vec_env import VecEnv, VecNormalize

STATISTICS = ("mean", "var", "count")
"""The running statistics of the discounted return that the reward scale is read from."""


def normalize_rewards(venv: VecEnv, gamma: float) -> VecNormalize:
    """``venv`` whose rewards are divided by a running estimate of the standard deviation of the ``gamma``-discounted
    return (and clipped to +-10); observations pass unchanged. Episode returns logged by the envs' ``Monitor`` stay
    in the env's own rewards."""
    return VecNormalize(venv, norm_obs=False, norm_reward=True, gamma=gamma)


def unnormalized_twin(venv: VecEnv) -> VecNormalize:
    """``venv`` in a ``VecNormalize`` that changes nothing: what SB3's ``EvalCallback`` needs beside a training env
    made with :func:`normalize_rewards` (it copies the statistics across), while evaluations keep the env's own
    rewards."""
    return VecNormalize(venv, training=False, norm_obs=False, norm_reward=False)


def reward_statistics(venv: VecNormalize | None) -> dict[str, float] | None:
    """The running return statistics of a reward-normalising env as plain floats; ``None`` without one."""
    if venv is None or not venv.norm_reward:
        return None
    return {name: float(getattr(venv.ret_rms, name)) for name in STATISTICS}


def restore_reward_statistics(venv: VecNormalize | None, statistics: Any) -> None:
    """Continue the running return statistics saved by :func:`reward_statistics`; nothing happens without a
    reward-normalising env or without saved statistics (a save made before they were recorded)."""
    if venv is None or not venv.norm_reward or not isinstance(statistics, dict):
        return
    for name in STATISTICS:
        if isinstance(statistics.get(name), (int, float)):
            setattr(venv.ret_rms, name, float(statistics[name]))
