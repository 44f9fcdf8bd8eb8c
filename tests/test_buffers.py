"""CtmPPO's rollout buffers sample what sb3-contrib's sample, with padded steps marked."""

import numpy as np
import pytest
import torch
from gymnasium import spaces
from helpers import SMALL_CTM, collect_rollout, dict_env, small_model
from sb3_contrib.common.recurrent.buffers import RecurrentDictRolloutBuffer, RecurrentRolloutBuffer

from ctm_rl import CtmPolicy
from ctm_rl.policy import PADDING
from ctm_rl.ppo import CtmPPO


def _cartpole(share_ctm):
    return small_model("CartPole-NoVel", n_envs=3, n_steps=40, max_steps=15, algorithm=CtmPPO, share_ctm=share_ctm,
                       share_features_extractor=share_ctm)


def _dict_observations(share_ctm):
    space = spaces.Dict({"grid": spaces.Box(0, 10, (3, 3, 3), np.uint8), "vec": spaces.Box(-1, 1, (2,))})
    return CtmPPO(CtmPolicy, dict_env(space), n_steps=40, seed=0, policy_kwargs=dict(SMALL_CTM, share_ctm=share_ctm))


@pytest.mark.parametrize("share_ctm", [True, False], ids=["shared-traces", "separate-critic"])
@pytest.mark.parametrize("build, stock", [(_cartpole, RecurrentRolloutBuffer),
                                          (_dict_observations, RecurrentDictRolloutBuffer)], ids=["box", "dict"])
def test_minibatches_equal_sb3_contribs_with_padding_marked(build, stock, share_ctm, monkeypatch):
    model = build(share_ctm)
    collect_rollout(model)
    buffer = model.rollout_buffer
    np.random.seed(0)
    ours = list(buffer.get(batch_size=25))
    monkeypatch.setattr(type(buffer), "_get_samples", stock._get_samples)
    np.random.seed(0)
    theirs = list(buffer.get(batch_size=25))

    assert len(ours) == len(theirs) > 1
    assert sum(int((batch.mask == 0).sum()) for batch in ours) > 0, "the minibatches must contain padding"
    for batch, expected in zip(ours, theirs):
        padding = expected.mask == 0
        assert torch.equal(batch.episode_starts, torch.where(padding, PADDING, expected.episode_starts))
        for name in ("actions", "old_values", "old_log_prob", "advantages", "returns", "mask"):
            assert torch.equal(getattr(batch, name), getattr(expected, name)), name
        observations = batch.observations if isinstance(batch.observations, dict) else {"": batch.observations}
        expected_observations = (expected.observations if isinstance(expected.observations, dict)
                                 else {"": expected.observations})
        for key, value in observations.items():
            assert value.dtype == expected_observations[key].dtype
            assert torch.equal(value, expected_observations[key]), key
        for state, expected_state in zip((*batch.lstm_states.pi, *batch.lstm_states.vf),
                                         (*expected.lstm_states.pi, *expected.lstm_states.vf)):
            assert state.shape == expected_state.shape and torch.equal(state, expected_state)
