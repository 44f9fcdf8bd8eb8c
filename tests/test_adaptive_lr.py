"""The learning rate adapted to a KL target (``lr_kl_target``): the rule, its effect on each update's step, its
state across saves and resumes, and its validation."""

import json
import zipfile

import pytest
from stable_baselines3.common.logger import Logger

from ctm_rl import ConfigError, CtmPolicy, CtmPPO
from ctm_rl.config import resolve_config
from ctm_rl.sb3.adaptive_lr import KlAdaptiveRate
from ctm_rl.sb3.checkpoints import load_agent, load_weights
from ctm_rl.sb3.lstm import LstmPolicy
from ctm_rl.train import build_model

from helpers import Recorder, largest_moves, small_model


@pytest.mark.parametrize("scale, approx_kl, expected", [
    (1.0, 0.004, 1.5),     # below half the target: 1.5 times larger
    (1.0, 0.005, 1.0),     # at half the target: kept
    (2.0, 0.012, 2.0),     # between half and twice the target: kept
    (2.0, 0.021, 2.0 / 1.5),  # above twice the target: 1.5 times smaller
    (3.5, 0.0, 4.0),       # grows no further than the upper bound
    (0.6, 0.5, 0.5),       # shrinks no further than the lower bound
    (2.0, float("nan"), 2.0),  # an update without a step leaves it
])
def test_the_multiple_grows_below_half_the_target_and_shrinks_above_twice_it(scale, approx_kl, expected):
    assert KlAdaptiveRate(0.01, 0.5, 4.0).next_scale(scale, approx_kl) == pytest.approx(expected)


def _updates(model, n_updates):
    """Train ``model`` for ``n_updates`` updates; each update's logged records, in order."""
    recorder = Recorder()
    model.set_logger(Logger(None, [recorder]))
    model.learn(n_updates * model.n_steps * model.n_envs)
    model.logger.dump(model.num_timesteps)  # learn dumps before each update; this writes the last one's records
    return [dump for dump in recorder.dumps if "train/approx_kl" in dump]


@pytest.mark.parametrize("policy_class", [CtmPolicy, LstmPolicy], ids=["ctm", "lstm"])
@pytest.mark.parametrize("target, scales", [
    (10.0, [1.0, 1.5, 2.25, 3.0]),           # every update's KL is far below a target of 10: the rate grows
    (1e-9, [1.0, 1 / 1.5, 1 / 2.25, 0.4]),   # and far above one of 1e-9: it shrinks, down to the bound
])
def test_each_update_runs_at_the_schedules_rate_times_the_adapted_multiple(policy_class, target, scales):
    model = small_model(policy_class=policy_class, algorithm=CtmPPO,
                        algo_kwargs=dict(lr_kl_target=target, lr_kl_bounds=(0.4, 3.0)))
    model.learning_rate = 1e-3
    model._setup_lr_schedule()
    updates = _updates(model, len(scales))
    assert [update["train/lr_kl_scale"] for update in updates] == pytest.approx(scales)
    assert [update["train/learning_rate"] for update in updates] == pytest.approx([1e-3 * s for s in scales])
    assert model.lr_kl_scale == pytest.approx(scales[-1])  # the last update's KL kept it at its bound
    assert [group["lr"] for group in model.policy.optimizer.param_groups] == pytest.approx([1e-3 * scales[-1]])


def test_the_multiple_reaches_the_parameters_step_and_combines_with_lr_scales():
    model = small_model(algorithm=CtmPPO, algo_kwargs=dict(lr_kl_target=10.0, lr_kl_bounds=(1.0, 10.0)),
                        lr_scales={"synapses": 0.1}, optimizer_kwargs={"eps": 1e-12})
    model.batch_size = model.n_steps * model.n_envs  # one Adam step per update
    model.learning_rate = 1e-3
    model._setup_lr_schedule()
    _updates(model, 1)
    before = {name: p.detach().clone() for name, p in model.policy.named_parameters()}
    _updates(model, 1)  # the second update, at 1.5 times the rate
    moved = largest_moves(model.policy, before)
    # Adam moves the parameters whose gradient keeps its sign by about their group's rate.
    assert moved["actor_head"] == pytest.approx(1.5e-3, rel=0.05)
    assert moved["synapses"] == pytest.approx(1.5e-4, rel=0.05)


def test_without_a_target_the_rate_is_the_schedules():
    model = small_model(algorithm=CtmPPO)
    model.learning_rate = 1e-3
    model._setup_lr_schedule()
    updates = _updates(model, 2)
    assert all("train/lr_kl_scale" not in update for update in updates)
    assert [update["train/learning_rate"] for update in updates] == pytest.approx([1e-3, 1e-3])
    assert model.lr_kl_scale == 1.0 and model.adaptive_rate is None


def test_a_save_keeps_the_multiple_as_a_plain_number_for_both_ways_of_loading(tmp_path):
    config, _ = resolve_config("CartPole-NoVel", "ctm", {"algo.lr_kl_target": 10.0, "algo.lr_kl_bounds": [1, 5],
                                                      "algo.n_steps": 16, "n_envs": 2, "d_model": 16},
                               timesteps=64)
    model = build_model(config, small_model(n_envs=2).get_env(), tmp_path)
    assert model.adaptive_rate == KlAdaptiveRate(10.0, 1.0, 5.0)
    _updates(model, 2)
    assert model.lr_kl_scale == pytest.approx(2.25)
    model.save(tmp_path / "model.zip")
    with zipfile.ZipFile(tmp_path / "model.zip") as archive:
        data = json.loads(archive.read("data"))
    assert data["lr_kl_scale"] == pytest.approx(2.25) and "adaptive_rate" not in data

    fresh = build_model(config, small_model(n_envs=2).get_env(), tmp_path)
    assert fresh.lr_kl_scale == 1.0
    assert load_weights(fresh, tmp_path / "model.zip").lr_kl_scale == pytest.approx(2.25)
    loaded = load_agent(tmp_path / "model.zip", trust_pickle=True)
    assert loaded.lr_kl_scale == pytest.approx(2.25)
    assert loaded.adaptive_rate == KlAdaptiveRate(10.0, 1.0, 5.0)
    # The resumed run continues the multiple where the save left it.
    assert _updates(fresh, 1)[0]["train/lr_kl_scale"] == pytest.approx(2.25)


@pytest.mark.parametrize("override, message", [
    ({"algo.lr_kl_target": 0}, "lr_kl_target must be a KL divergence > 0"),
    ({"algo.lr_kl_target": "high"}, "lr_kl_target must be a KL divergence > 0"),
    ({"algo.lr_kl_target": 0.01, "algo.lr_kl_bounds": [2, 10]}, "lr_kl_bounds must be \\[low, high\\]"),
    ({"algo.lr_kl_bounds": 3}, "lr_kl_bounds must be \\[low, high\\]"),
    ({"algo.update_probe_envs": -1}, "update_probe_envs must be an integer >= 0"),
])
def test_bad_adaptive_rate_settings_are_refused_with_the_fix(override, message):
    with pytest.raises(ConfigError, match=f"{message}.*Fix: "):
        resolve_config("CartPole-NoVel", "ctm", override)
