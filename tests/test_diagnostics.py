"""Training diagnostics logged through SB3's logger: per-part gradient norms, the synchronisation's scale, the
decay rates, how consecutive updates move the policy, and the share of evaluation episodes that hit the step
limit."""

import copy

import numpy as np
import pytest
import torch
from sb3_contrib.common.recurrent.policies import RecurrentActorCriticPolicy
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.logger import Logger

from ctm_rl import CtmPolicy, CtmPPO, make_env
from ctm_rl.sb3.checkpoints import load_agent
from ctm_rl.sb3.parts import parameter_part
from ctm_rl.sb3.lstm import lstm_policy_kwargs

from helpers import Recorder


def _trained(policy_class, policy_kwargs, **algo):
    env = make_env("CartPole-NoVel", n_envs=4, seed=0)
    # One minibatch per update and no clipping: the last minibatch's gradients are the ones recorded.
    model = CtmPPO(policy_class, env, n_steps=16, batch_size=64, n_epochs=1, max_grad_norm=1e9, seed=0,
                   policy_kwargs=policy_kwargs, **algo)
    recorder = Recorder()
    model.set_logger(Logger(None, [recorder]))
    model.learn(128)
    model.logger.dump(model.num_timesteps)  # learn dumps before each update; this writes the last one's records
    return model, recorder.dumps[-1]


def _part_norms(policy):
    squares, sizes = {}, {}
    for name, parameter in policy.named_parameters():
        if parameter.grad is not None:
            part = parameter_part(name)
            squares[part] = squares.get(part, 0.0) + float(parameter.grad.square().sum())
            sizes[part] = sizes.get(part, 0) + parameter.numel()
    return {part: value ** 0.5 for part, value in squares.items()}, {
        part: (value / sizes[part]) ** 0.5 for part, value in squares.items()}


def test_ctm_update_logs_each_parts_gradient_norm_and_the_synchronisation():
    model, logged = _trained(CtmPolicy, dict(d_model=16, d_input=8, n_synch_out=4, memory_length=3))
    expected, rms = _part_norms(model.policy)
    assert set(expected) == {"encoder", "synapses", "nlms", "decay", "start_traces", "actor_head", "critic_head"}
    for part, norm in expected.items():
        assert logged[f"grad_norm/{part}"] == pytest.approx(norm, rel=1e-4)
        assert logged[f"grad_rms/{part}"] == pytest.approx(rms[part], rel=1e-4)
    rates = model.policy.ctm.synchronisation.rates().detach()
    assert logged["ctm/decay_mean"] == pytest.approx(float(rates.mean()))
    assert logged["ctm/decay_min"] <= logged["ctm/decay_mean"] <= logged["ctm/decay_max"]
    assert 0 < logged["ctm/sync_abs_mean"] <= logged["ctm/sync_rms"]
    assert not any(key.startswith("ctm/nlm_temperature") for key in logged)


def test_learned_nlm_temperatures_are_logged_and_trained():
    model, logged = _trained(CtmPolicy, dict(d_model=16, d_input=8, n_synch_out=4, memory_length=3, nlm_hidden=2,
                                             nlm_temperature=2.0), learning_rate=1e-2)
    temperatures = model.policy.ctm.nlms.temperatures()
    assert [logged["ctm/nlm_temperature_0"], logged["ctm/nlm_temperature_1"]] == pytest.approx(temperatures)
    assert len(temperatures) == 2 and all(t != 2.0 for t in temperatures)  # the optimizer moved them


def test_the_synchronisation_scale_is_that_of_the_last_rollout():
    """With nothing learned (learning rate 0), the rollout's outputs are those of a replay of its observations
    from the learned start traces, episode starts included; the scale at the steps that start an episode is
    logged apart."""
    env = make_env("CartPole-NoVel", n_envs=1, seed=0)
    model = CtmPPO(CtmPolicy, env, n_steps=40, batch_size=40, n_epochs=1, learning_rate=0.0, seed=0,
                   policy_kwargs=dict(d_model=16, d_input=8, n_synch_out=4, memory_length=3))
    recorder = Recorder()
    model.set_logger(Logger(None, [recorder]))
    model.learn(40)
    model.logger.dump(model.num_timesteps)
    logged = recorder.dumps[-1]
    buffer, policy = model.rollout_buffer, model.policy
    obs = torch.as_tensor(buffer.observations.reshape(40, -1))
    starts = torch.as_tensor(buffer.episode_starts.reshape(40)).clone()
    starts[0] = 1.0  # the run's first step starts from the learned start traces
    with torch.no_grad():
        projected = policy._ctm_input(obs, policy.pi_features_extractor, policy.ctm)
        start = tuple(trace.permute(2, 0, 1).reshape(1, 1, -1).contiguous() for trace in policy.ctm.start_traces(1))
        sync, _ = policy._run_ctm(policy.ctm, projected, start, starts)
    assert logged["ctm/sync_abs_mean"] == pytest.approx(float(sync.abs().mean()), rel=1e-4)
    assert logged["ctm/sync_rms"] == pytest.approx(float(sync.square().mean().sqrt()), rel=1e-4)
    # The share of the mean square that varies from step to step: each pair's variance over the rollout's steps.
    varying = float(sync.reshape(40, -1).var(dim=0, unbiased=False).mean() / sync.square().mean())
    assert 0.01 < varying < 0.99 and logged["ctm/sync_state_share"] == pytest.approx(varying, rel=1e-3)
    at_reset = sync[starts.bool()]
    assert 1 < len(at_reset) < 40  # a later episode started within the rollout too
    assert logged["ctm/sync_rms_at_reset"] == pytest.approx(float(at_reset.square().mean().sqrt()), rel=1e-4)


def test_lstm_update_logs_the_same_gradient_norms_without_ctm_keys():
    model, logged = _trained(RecurrentActorCriticPolicy, lstm_policy_kwargs(16, d_input=8))
    expected, rms = _part_norms(model.policy)
    assert {"encoder", "lstm", "actor_head", "critic_head"} <= set(expected)
    for part, norm in expected.items():
        assert logged[f"grad_norm/{part}"] == pytest.approx(norm, rel=1e-4)
        assert logged[f"grad_rms/{part}"] == pytest.approx(rms[part], rel=1e-4)
    assert not any(key.startswith("ctm/") for key in logged)


class _RolloutRecorder(BaseCallback):
    """Keeps the parameters at the start of every rollout, and the first rollout's inputs to each step of the
    policy with the recurrent state before its first step."""

    def __init__(self):
        super().__init__()
        self.parameters, self.steps, self.first_states = [], [], None

    def _on_rollout_start(self):
        self.parameters.append(copy.deepcopy(self.model.policy.state_dict()))
        if self.first_states is None:
            self.first_states = tuple(state.clone() for state in self.model._last_lstm_states.pi)

    def _on_step(self):
        if len(self.parameters) == 1:
            self.steps.append((self.locals["obs_tensor"].clone(), self.locals["episode_starts"].clone()))
        return True


_TINY_POLICIES = [(CtmPolicy, dict(d_model=16, d_input=8, n_synch_out=4, memory_length=3)),
                  (RecurrentActorCriticPolicy, lstm_policy_kwargs(16, d_input=8))]


@pytest.mark.parametrize("policy_class, policy_kwargs", _TINY_POLICIES, ids=["ctm", "lstm"])
def test_update_coherence_compares_consecutive_updates_on_the_first_rollouts_states(policy_class, policy_kwargs):
    """The logged change and coherence equal those of the policy's centred logits on the first rollout's
    steps of the first two envs, computed one step at a time with the parameters before and after each update."""
    env = make_env("CartPole-NoVel", n_envs=4, seed=0)
    model = CtmPPO(policy_class, env, n_steps=16, batch_size=64, n_epochs=2, seed=0, update_probe_envs=2,
                   policy_kwargs=policy_kwargs)
    recorder, rollouts = Recorder(), _RolloutRecorder()
    model.set_logger(Logger(None, [recorder]))
    model.learn(128, callback=rollouts)
    model.logger.dump(model.num_timesteps)
    logged = recorder.dumps[-1]

    def centred_logits(parameters):
        model.policy.load_state_dict(parameters)
        states, outputs = tuple(state[:, :2] for state in rollouts.first_states), []
        with torch.no_grad():
            for obs, starts in rollouts.steps:
                distribution, states = model.policy.get_distribution(obs[:2], states, starts[:2])
                logits = distribution.distribution.logits
                outputs.append(logits - logits.mean(dim=-1, keepdim=True))  # (2 envs, 2 actions)
        return torch.stack(outputs, dim=1)  # (env, step, action)

    final = copy.deepcopy(model.policy.state_dict())
    before, between, after = (centred_logits(p) for p in (*rollouts.parameters, final))
    first, second = (between - before).flatten(), (after - between).flatten()
    assert len(rollouts.parameters) == 2 and len(rollouts.steps) == 16
    assert logged["train/update_change"] == pytest.approx(float(second.square().mean().sqrt()), rel=1e-3)
    expected = float(torch.nn.functional.cosine_similarity(first, second, dim=0))
    assert logged["train/update_coherence"] == pytest.approx(expected, abs=1e-3)
    assert abs(expected) > 0.01  # a value the test can tell from 0


@pytest.mark.parametrize("policy_class, policy_kwargs", _TINY_POLICIES, ids=["ctm", "lstm"])
def test_parameter_moves_compare_consecutive_updates_per_part(policy_class, policy_kwargs):
    """Each part's logged move and coherence equal those of its parameters' changes over the last two updates,
    taken from the parameters at the start of each rollout and at the end."""
    env = make_env("CartPole-NoVel", n_envs=4, seed=0)
    model = CtmPPO(policy_class, env, n_steps=16, batch_size=32, n_epochs=2, seed=0, policy_kwargs=policy_kwargs)
    recorder, rollouts = Recorder(), _RolloutRecorder()
    model.set_logger(Logger(None, [recorder]))
    model.learn(128, callback=rollouts)
    model.logger.dump(model.num_timesteps)
    logged = recorder.dumps[-1]

    names = [name for name, _ in model.policy.named_parameters()]
    parts = sorted({parameter_part(name) for name in names})

    def part_vector(parameters, part):
        return torch.cat([parameters[name].flatten() for name in names if parameter_part(name) == part])

    before, between = rollouts.parameters
    after = model.policy.state_dict()
    assert {key.split("/")[1] for key in logged if key.startswith("param_")} == set(parts)
    for part in parts:
        first = part_vector(between, part) - part_vector(before, part)
        second = part_vector(after, part) - part_vector(between, part)
        assert logged[f"param_move/{part}"] == pytest.approx(float(second.square().mean().sqrt()), rel=1e-5)
        expected = float(torch.nn.functional.cosine_similarity(first, second, dim=0))
        assert logged[f"param_coherence/{part}"] == pytest.approx(expected, abs=1e-5)
    assert logged["param_move/actor_head"] > 0


@pytest.mark.parametrize("policy_class, policy_kwargs", _TINY_POLICIES, ids=["ctm", "lstm"])
def test_the_update_probe_changes_nothing_in_training(policy_class, policy_kwargs, tmp_path):
    parameters, models = [], []
    for probe_envs in (0, 3):
        env = make_env("CartPole-NoVel", n_envs=4, seed=0)
        model = CtmPPO(policy_class, env, n_steps=16, batch_size=32, n_epochs=2, seed=0,
                       update_probe_envs=probe_envs, policy_kwargs=policy_kwargs)
        model.learn(128)
        parameters.append(model.policy.state_dict())
        models.append(model)
    assert models[0].update_coherence.probe is None and models[1].update_coherence.probe is not None
    for name, value in parameters[0].items():
        assert torch.equal(value, parameters[1][name]), name
    # A saved model keeps the setting but not the probe, which the loaded model takes from its next rollout.
    models[1].save(tmp_path / "model.zip")
    loaded = load_agent(tmp_path / "model.zip", env=make_env("CartPole-NoVel", n_envs=4, seed=1), trust_pickle=True)
    assert loaded.update_probe_envs == 3 and loaded.update_coherence.probe is None


def test_evaluations_record_the_share_of_episodes_at_the_step_limit(tmp_path):
    import ctm_rl.train as train_module

    assert train_module.main(["--log-dir", str(tmp_path), "--timesteps", "64", "--n-envs", "2", "--max-steps", "5",
                              "--hyperparams", "n_steps=16", "batch_size=32", "n_epochs=1", "d_model=16",
                              "d_input=8", "n_synch_out=4", "--eval-freq", "32", "--eval-episodes", "2",
                              "--checkpoint-freq", "0", "--no-progress-bar"]) == 0
    with np.load(tmp_path / "CartPole-NoVel" / "ctm-seed0" / "eval" / "evaluations.npz") as evaluations:
        lengths = evaluations["ep_lengths"]
        assert evaluations["time_limit_fraction"].tolist() == (lengths >= 5).mean(axis=1).tolist()
        assert evaluations["time_limit_fraction"].tolist() == [1.0, 1.0]  # CartPole cannot fall within 5 steps
