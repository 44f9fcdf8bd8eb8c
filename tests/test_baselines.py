"""Parameter matching of the LSTM baseline."""

import pytest
from sb3_contrib.common.recurrent.policies import RecurrentActorCriticPolicy

from ctm_rl import CtmPolicy
from ctm_rl.sb3.lstm import count_parameters, lstm_policy_kwargs, match_lstm_hidden_size
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
