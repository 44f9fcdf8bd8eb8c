"""CtmPPO's rollout buffers sample what sb3-contrib's sample, with padded steps marked and traces kept in place."""

import numpy as np
import pytest
import torch
from gymnasium import spaces
from helpers import SMALL_CTM, collect_rollout, dict_env, small_model
from sb3_contrib.common.recurrent.buffers import RecurrentDictRolloutBuffer, RecurrentRolloutBuffer

from ctm_rl import CtmPolicy
from ctm_rl.sb3.policy import PADDING
from ctm_rl.sb3.ppo import CtmPPO


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
    buffer = model.rollout_buffer
    handed_over = _record_states(buffer, monkeypatch)
    collect_rollout(model)
    np.random.seed(0)
    ours = list(buffer.get(batch_size=25))
    # sb3-contrib's sampler, reading the states the policy handed over as sb3-contrib's buffer stores them.
    stored = [np.stack(states) for states in zip(*handed_over)]  # each (n_steps, 1, n_envs, D * M)
    if share_ctm:  # the critic slot of a shared CTM is a zero-width placeholder
        stored[2:] = [np.zeros((*stored[0].shape[:-1], 0), dtype=np.float32)] * 2
    names = ("hidden_states_pi", "cell_states_pi", "hidden_states_vf", "cell_states_vf")
    for name, states in zip(names, stored):
        monkeypatch.setattr(buffer, name, buffer.swap_and_flatten(states.swapaxes(1, 2)))
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


def _record_states(buffer, monkeypatch) -> list[list[np.ndarray]]:
    """Make ``buffer.add`` record the four states it is handed at each step, as numpy copies."""
    handed_over = []
    add = buffer.add

    def recording_add(*args, lstm_states, **kwargs):
        handed_over.append([state.numpy().copy() for state in (*lstm_states.pi, *lstm_states.vf)])
        add(*args, lstm_states=lstm_states, **kwargs)

    monkeypatch.setattr(buffer, "add", recording_add)
    return handed_over


def test_trace_store_is_kept_across_rollouts_and_overwritten():
    model = _cartpole(share_ctm=True)
    collect_rollout(model)
    store = model.rollout_buffer.traces
    first = store.copy()
    list(model.rollout_buffer.get(batch_size=25))  # sampling reads the store without replacing it
    collect_rollout(model)
    assert model.rollout_buffer.traces is store
    assert store.shape == (2, 40, 3, SMALL_CTM["d_model"] * SMALL_CTM["memory_length"])
    # Every step of the second rollout wrote its own traces (the envs moved on, so no step repeats the first).
    assert all(not np.array_equal(store[:, step], first[:, step]) for step in range(store.shape[1]))
