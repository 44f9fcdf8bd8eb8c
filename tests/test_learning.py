"""Learning checks through the comparison command (slow; run with ``pytest -m slow``). They encode the
package's learning targets on fewer seeds than ``docs/results.md`` uses."""

import numpy as np
import pytest

from ctm_rl import stats
from ctm_rl.compare import run_comparison
from ctm_rl.report import final_returns, load_comparison, summarise
from ctm_rl.runs import CompareConfig


def _compare(out, config: CompareConfig) -> tuple[CompareConfig, dict[str, list[dict]]]:
    """Train the comparison into ``out`` (two runs at a time) and load its config and finished runs."""
    run_comparison(config, out, workers=2)
    return load_comparison(out)


def _finals(out, config: CompareConfig) -> dict[str, np.ndarray]:
    _, runs = _compare(out, config)
    return {agent: final_returns(results) for agent, results in runs.items()}


@pytest.mark.slow
def test_ctm_holds_cartpole_novel_at_475_after_200k_steps(tmp_path):
    finals = _finals(tmp_path, CompareConfig(env="CartPole-NoVel", agents=["ctm"], seeds=[0, 1, 2],
                                             timesteps=200_000))["ctm"]
    assert stats.iqm(finals) >= 475, finals


@pytest.mark.slow
def test_ctm_solves_doorkey_5x5_on_every_seed_within_300k_steps(tmp_path):
    finals = _finals(tmp_path, CompareConfig(env="MiniGrid-DoorKey-5x5", agents=["ctm"], seeds=[0, 1, 2],
                                             timesteps=300_000, threshold=0.9))["ctm"]
    assert stats.iqm(finals) >= 0.9 and (finals >= 0.9).all(), finals


@pytest.mark.slow
def test_ctm_reaches_0_9_on_doorkey_5x5_no_later_than_the_lstm(tmp_path):
    """The DoorKey target's timing on its five seeds: the median over seeds 0-4 of each agent's first evaluation at
    0.9, runs stopping there (a run that never reaches it counts as never)."""
    config = CompareConfig(env="MiniGrid-DoorKey-5x5", agents=["ctm", "lstm"], seeds=list(range(5)),
                           timesteps=300_000, threshold=0.9, stop_at_threshold=True)
    steps = {summary.agent: stats.never_as_inf(summary.steps_to_threshold)
             for summary in summarise(*_compare(tmp_path, config))}
    assert np.median(steps["ctm"]) <= np.median(steps["lstm"]), steps


@pytest.mark.slow
def test_the_default_preset_remembers_the_first_card_of_a_popgym_episode(tmp_path):
    """RepeatFirst asks at each of 51 steps for the suit of the episode's first card: the default window of 52 must
    carry it (a window of 10 never learned it)."""
    pytest.importorskip("popgym")
    finals = _finals(tmp_path, CompareConfig(env="popgym-RepeatFirstEasy-v0", agents=["ctm"], seeds=[0, 1, 2],
                                             timesteps=100_000, eval_freq=5_000))["ctm"]
    assert (finals >= 0.9).sum() >= 2, finals
