"""The LSTM baseline: parameter matching, and which losses train its shared LSTM."""

import pytest
import torch
from sb3_contrib.common.recurrent.policies import RecurrentActorCriticPolicy

from ctm_rl import ConfigError, CtmPolicy
from ctm_rl.sb3.lstm import LstmPolicy, count_parameters, lstm_policy_kwargs, match_lstm_hidden_size
from ctm_rl.envs import make_single_env, resolve_env

CARTPOLE = dict(d_model=128, d_input=128, memory_length=10, nlm_hidden=4, n_synch_out=16)
FOURROOMS = dict(d_model=512, d_input=128, memory_length=10, nlm_hidden=16, n_synch_out=32)


def _ratio(env_name, ctm_kwargs, **lstm_overrides):
    env = make_single_env(resolve_env(env_name))
    hidden = match_lstm_hidden_size(env.observation_space, env.action_space, ctm_kwargs, lstm_overrides)
    ctm = count_parameters(CtmPolicy, env.observation_space, env.action_space, **ctm_kwargs)
    lstm = count_parameters(RecurrentActorCriticPolicy, env.observation_space, env.action_space,
                            **lstm_policy_kwargs(hidden, ctm_kwargs["d_input"], **lstm_overrides))
    return hidden, lstm / ctm


@pytest.mark.parametrize("env_name, ctm_kwargs, reference_hidden", [
    ("CartPole-NoVel", CARTPOLE, 118),
    ("MiniGrid-FourRooms", FOURROOMS, 294),
])
def test_reference_pairs_match_within_five_percent(env_name, ctm_kwargs, reference_hidden):
    hidden, ratio = _ratio(env_name, ctm_kwargs)
    assert abs(ratio - 1) < 0.05
    assert abs(hidden - reference_hidden) <= 3


@pytest.mark.parametrize("env_name, ctm_kwargs, lstm_overrides", [
    ("MiniGrid-DoorKey-5x5", dict(d_model=256, d_input=32, nlm_hidden=8, n_synch_out=32), {}),
    ("CartPole-NoVel", dict(d_model=64, d_input=32, ticks=2, share_ctm=False, share_features_extractor=False),
     dict(shared_lstm=False, enable_critic_lstm=True, share_features_extractor=False)),
])
def test_other_configurations_match_within_five_percent(env_name, ctm_kwargs, lstm_overrides):
    _, ratio = _ratio(env_name, ctm_kwargs, **lstm_overrides)
    assert abs(ratio - 1) < 0.05


def _lstm_policy(**overrides):
    env = make_single_env(resolve_env("CartPole-NoVel"))
    return LstmPolicy(env.observation_space, env.action_space, lambda _: 1e-3,
                      **lstm_policy_kwargs(16, 8, **overrides)), env


@pytest.mark.parametrize("detach_critic", [True, False])
def test_the_value_loss_trains_the_shared_lstm_only_when_the_critic_is_not_detached(detach_critic):
    from sb3_contrib.common.recurrent.type_aliases import RNNStates

    torch.manual_seed(0)
    reference, env = _lstm_policy()
    policy, _ = _lstm_policy(detach_critic=detach_critic)
    policy.load_state_dict(reference.state_dict())
    obs = torch.randn(6, env.observation_space.shape[0])  # two sequences of three steps
    actions = torch.tensor([0, 1, 1, 0, 1, 0])
    state = (torch.zeros(1, 2, 16), torch.zeros(1, 2, 16))
    starts = torch.tensor([1.0, 0, 0, 1, 0, 0])
    values, log_prob, entropy = policy.evaluate_actions(obs, actions, RNNStates(state, state), starts)
    expected = reference.evaluate_actions(obs, actions, RNNStates(state, state), starts)
    for got, want in zip((values, log_prob, entropy), expected):  # the same numbers either way
        torch.testing.assert_close(got, want)
    values.sum().backward()
    reached = policy.lstm_actor.weight_hh_l0.grad
    assert (reached is not None and float(reached.abs().sum()) > 0) is (not detach_critic)
    assert policy._get_constructor_parameters()["detach_critic"] is detach_critic


def test_an_undetached_critic_needs_a_shared_lstm():
    with pytest.raises(ConfigError, match="detach_critic=False applies to a shared LSTM"):
        _lstm_policy(shared_lstm=False, enable_critic_lstm=True, detach_critic=False)


def test_an_lstm_policy_built_directly_is_checked_with_its_own_unshared_default():
    """Built without the baseline's keyword arguments, ``LstmPolicy`` keeps sb3-contrib's ``shared_lstm=False``,
    so ``detach_critic=False`` contradicts it even though the baseline's defaults would share the LSTM."""
    env = make_single_env(resolve_env("CartPole-NoVel"))
    with pytest.raises(ConfigError, match="detach_critic=False applies to a shared LSTM"):
        LstmPolicy(env.observation_space, env.action_space, lambda _: 1e-3, detach_critic=False)
