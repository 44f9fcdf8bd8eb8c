"""CtmPolicy with the unmodified sb3-contrib RecurrentPPO: replay, resets, save/load, spaces, extractors."""

import numpy as np
import pytest
import torch
from gymnasium import spaces
from helpers import SMALL_CTM, collect_rollout, dict_env, largest_moves, small_model
from sb3_contrib import RecurrentPPO
from stable_baselines3.common.evaluation import evaluate_policy
from stable_baselines3.common.torch_layers import BaseFeaturesExtractor, NatureCNN

from sb3_contrib.common.recurrent.type_aliases import RNNStates

from ctm_rl import ConfigError, CtmPolicy, UnsupportedSpaceError
from ctm_rl.sb3.lstm import LstmPolicy
from ctm_rl.sb3.parts import parameter_part
from ctm_rl.sb3.policy import PADDING
from ctm_rl.sb3.ppo import CtmPPO
from ctm_rl.sb3.standardizer import RunningStandardizer
from ctm_rl.sb3.encoders import GridEncoder, ObservationEncoder, VectorEncoder

REPLAY_CASES = [
    pytest.param("CartPole-NoVel", {}, id="cartpole-shared"),
    pytest.param("CartPole-NoVel", dict(ticks=2, share_ctm=False, share_features_extractor=False), id="separate-critic-2ticks"),
    pytest.param("MiniGrid-Empty-5x5", dict(neuron_select="random", synapse_depth=2, max_steps=10), id="minigrid-unet"),
]


def _discrete_actions(model, actions):
    return actions.long().flatten() if isinstance(model.action_space, spaces.Discrete) else actions


def _assert_replay_reproduces_rollout(model, batch_size):
    """Every minibatch's replay gives the rollout's log-probabilities and values on real steps (and zero on the
    padded steps that ``CtmPPO`` marks and skips); returns the number of padded steps seen."""
    padded_steps = 0
    with torch.no_grad():
        for batch in model.rollout_buffer.get(batch_size=batch_size):
            padded_steps += int((batch.mask == 0).sum())
            if isinstance(model, CtmPPO):
                assert torch.equal(batch.episode_starts == PADDING, batch.mask == 0)
            values, log_prob, _ = model.policy.evaluate_actions(
                batch.observations, _discrete_actions(model, batch.actions), batch.lstm_states, batch.episode_starts)
            mask = batch.mask > 0
            if isinstance(model, CtmPPO):
                assert not log_prob[~mask].any() and not values.flatten()[~mask].any()
            assert torch.allclose(log_prob[mask], batch.old_log_prob[mask], atol=1e-5)
            assert torch.allclose(values.flatten()[mask], batch.old_values[mask], atol=1e-5)
            assert torch.allclose(torch.exp(log_prob - batch.old_log_prob)[mask], torch.ones(int(mask.sum())), atol=1e-5)
    return padded_steps


@pytest.mark.parametrize("algorithm", [RecurrentPPO, CtmPPO], ids=["padded", "packed"])
@pytest.mark.parametrize("env, policy_kwargs", REPLAY_CASES)
def test_sequence_replay_reproduces_rollout(env, policy_kwargs, algorithm):
    model = small_model(env, algorithm=algorithm, **policy_kwargs)
    collect_rollout(model)
    assert model.rollout_buffer.episode_starts[1:].sum() > 0, "the rollout must contain episode starts"
    assert _assert_replay_reproduces_rollout(model, batch_size=48) > 0, "the minibatches must contain padding"


def test_whole_env_trajectories_replay_across_episode_starts():
    """Each env's full rollout replayed as one sequence, crossing several episode starts."""
    model = small_model("CartPole-NoVel", n_steps=64, max_steps=20)
    initial_states = model._last_lstm_states
    collect_rollout(model)
    buffer = model.rollout_buffer
    starts = buffer.episode_starts  # (n_steps, n_envs)
    assert (starts[1:].sum(0) >= 2).all(), "every env should cross at least two episode starts"
    to_tensor = lambda array: torch.as_tensor(np.swapaxes(array, 0, 1).reshape(-1, *array.shape[2:]))
    with torch.no_grad():
        values, log_prob, _ = model.policy.evaluate_actions(
            to_tensor(buffer.observations), to_tensor(buffer.actions).long().flatten(), initial_states,
            to_tensor(starts))
    assert torch.allclose(log_prob, to_tensor(buffer.log_probs), atol=1e-5)
    assert torch.allclose(values.flatten(), to_tensor(buffer.values), atol=1e-5)


def _flat_start_traces(policy, n_envs):
    """The learned start traces in RecurrentPPO's state layout, materialised as its buffers hold them (an
    expanded view has batch stride 0, and the step's reset would lay its output out differently)."""
    pre, post = policy.ctm.start_traces(n_envs)  # (D, M, n_envs)
    return tuple(trace.permute(2, 0, 1).reshape(1, n_envs, -1).contiguous() for trace in (pre, post))


def test_episode_start_resets_to_learned_start_traces():
    model = small_model()
    policy = model.policy
    obs = torch.as_tensor(model.env.reset())
    garbage = (torch.randn(1, 4, policy.ctm.trace_size), torch.randn(1, 4, policy.ctm.trace_size))
    start = _flat_start_traces(policy, 4)
    with torch.no_grad():
        _, traces_from_reset = policy.get_distribution(obs, garbage, torch.ones(4))
        _, traces_from_start = policy.get_distribution(obs, start, torch.zeros(4))
    for a, b in zip(traces_from_reset, traces_from_start):
        assert torch.equal(a, b)
    # The reset really replaced the incoming traces: the newest column is new, the older ones are learned.
    pre = traces_from_reset[0].reshape(4, policy.ctm.d_model, policy.ctm.memory_length)
    assert torch.equal(pre[:, :, :-1], policy.ctm.start_pre_trace[:, 1:].expand(4, -1, -1))


def test_traces_continue_without_episode_start():
    model = small_model()
    policy = model.policy
    obs = torch.as_tensor(model.env.reset())
    with torch.no_grad():
        _, after_one = policy.get_distribution(obs, _flat_start_traces(policy, 4), torch.ones(4))
        _, after_two = policy.get_distribution(obs, after_one, torch.zeros(4))
        _, carried = policy.get_distribution(obs, after_one, torch.zeros(4))
        _, reset = policy.get_distribution(obs, after_one, torch.ones(4))
    pre_one = after_one[0].reshape(4, policy.ctm.d_model, -1)
    pre_two = after_two[0].reshape(4, policy.ctm.d_model, -1)
    assert torch.equal(pre_two[:, :, :-1], pre_one[:, :, 1:])  # the window slid by one tick
    assert (carried[1] - reset[1]).abs().max() > 1e-3  # carrying differs from restarting
    with torch.no_grad():
        projected = policy.ctm.project(policy.extract_features(obs))
        sync_carried, _ = policy._run_ctm(policy.ctm, projected, after_one, torch.zeros(4))
        sync_reset, _ = policy._run_ctm(policy.ctm, projected, after_one, torch.ones(4))
    assert not torch.allclose(sync_carried, sync_reset, atol=1e-7)


def test_carry_traces_false_restarts_every_step_from_start_traces():
    model = small_model(ticks=2, carry_traces=False)
    policy = model.policy
    obs = torch.as_tensor(model.env.reset())
    garbage = (torch.randn(1, 4, policy.ctm.trace_size), torch.randn(1, 4, policy.ctm.trace_size))
    with torch.no_grad():
        features = policy.extract_features(obs)
        projected = policy.ctm.project(features)
        sync_garbage, traces_garbage = policy._run_ctm(policy.ctm, projected, garbage, torch.zeros(4))
        sync_start, traces_start = policy._run_ctm(policy.ctm, projected, _flat_start_traces(policy, 4), torch.ones(4))
        # A two-step sequence: the second step's output must not depend on the first step's observation.
        sequence = policy.ctm.project(torch.stack([torch.randn_like(features), features], dim=1).reshape(8, -1))
        sync_sequence, _ = policy._run_ctm(policy.ctm, sequence, garbage, torch.zeros(8))
    # Equal up to rounding: the two calls' traces differ in memory layout (the start traces are a broadcast view).
    torch.testing.assert_close(sync_garbage, sync_start)
    for a, b in zip(traces_garbage, traces_start):
        torch.testing.assert_close(a, b)
    assert torch.allclose(sync_sequence.reshape(4, 2, -1)[:, 1], sync_start, atol=1e-6)
    assert policy._get_constructor_parameters()["carry_traces"] is False


def test_predict_without_state_starts_from_learned_traces():
    model = small_model()
    obs = model.env.reset()
    actions_none, state_none = model.predict(obs, state=None, deterministic=True)
    start = tuple(t.detach().numpy() for t in _flat_start_traces(model.policy, 4))
    actions_start, state_start = model.predict(obs, state=start, episode_start=np.zeros(4), deterministic=True)
    np.testing.assert_array_equal(actions_none, actions_start)
    np.testing.assert_allclose(state_none[1], state_start[1], atol=1e-6)
    single, _ = model.predict(obs[0], deterministic=True)  # a single, non-vectorised observation
    assert np.shape(single) == ()


def test_save_load_round_trip_gives_identical_actions(tmp_path):
    model = small_model(ticks=2)
    model.learn(256)
    model.save(tmp_path / "model.zip")
    loaded = RecurrentPPO.load(tmp_path / "model.zip", env=model.env)
    assert isinstance(loaded.policy, CtmPolicy)
    assert loaded.policy.ctm.ticks == 2 and loaded.policy.ctm.d_model == SMALL_CTM["d_model"]
    obs = model.env.reset()
    state_a = state_b = None
    starts = np.ones(4, dtype=bool)
    for _ in range(12):
        actions_a, state_a = model.predict(obs, state_a, starts, deterministic=True)
        actions_b, state_b = loaded.predict(obs, state_b, starts, deterministic=True)
        np.testing.assert_array_equal(actions_a, actions_b)
        np.testing.assert_array_equal(state_a[0], state_b[0])
        obs, _, starts, _ = model.env.step(actions_a)
    for key, value in model.policy.state_dict().items():
        assert torch.equal(value, loaded.policy.state_dict()[key]), key


def test_shared_ctm_stores_one_core_and_equal_critic_traces():
    model = small_model()
    assert model.policy.critic_ctm is None
    separate = small_model(share_ctm=False)
    n_shared = sum(p.numel() for p in model.policy.ctm.parameters())
    total_diff = sum(p.numel() for p in separate.policy.parameters()) - sum(p.numel() for p in model.policy.parameters())
    assert total_diff == n_shared
    collect_rollout(model)
    np.testing.assert_array_equal(model.rollout_buffer.hidden_states_pi, model.rollout_buffer.hidden_states_vf)


def test_separate_critic_ctm_reads_the_shared_encoders_features_once():
    model = small_model(share_ctm=False)
    calls = []
    model.policy.features_extractor.register_forward_hook(lambda *args: calls.append(1))
    collect_rollout(model)
    # One encoder pass per rollout step, and one for the value of the last observation.
    assert len(calls) == model.n_steps + 1
    # The critic CTM still reads them with its own synapses: its values are not the actor CTM's.
    critic, actor = model.policy.critic_ctm, model.policy.ctm
    assert not torch.equal(critic.synapses.feature_weight, actor.synapses.feature_weight)


@pytest.mark.parametrize("action_kind", ["discrete", "multidiscrete", "box"])
def test_action_spaces_train_and_evaluate(action_kind):
    model = RecurrentPPO(CtmPolicy, _toy_env(action_kind), n_steps=16, batch_size=32, n_epochs=2,
                         policy_kwargs=SMALL_CTM, seed=0)
    model.learn(128)
    mean, _ = evaluate_policy(model, model.env, n_eval_episodes=4)
    assert 0.0 <= mean <= 1.0
    actions, _ = model.predict(model.env.reset(), deterministic=True)
    assert model.action_space.contains(actions[0])


def _toy_env(action_kind, observation_kind="box"):
    from ctm_rl.envs import make_env

    return make_env("toy_envs:CueRecall", n_envs=2, seed=0,
                    env_kwargs={"action_kind": action_kind, "observation_kind": observation_kind})


@pytest.mark.parametrize("policy", ["ctm", "lstm"])
def test_tuple_observations_are_one_hot_per_part_and_train_with_multidiscrete_actions(policy):
    from ctm_rl.sb3.lstm import LstmPolicy, lstm_policy_kwargs

    env = _toy_env("multidiscrete", "tuple")
    assert list(env.observation_space.spaces) == ["0", "1"]
    policy_class, kwargs = (CtmPolicy, SMALL_CTM) if policy == "ctm" else (LstmPolicy, lstm_policy_kwargs(8, 16))
    model = CtmPPO(policy_class, env, n_steps=16, batch_size=32, n_epochs=2, policy_kwargs=kwargs, seed=0)
    encoder = model.policy.features_extractor
    assert set(encoder.encoders) == {"0", "1"} and encoder.features_dim == 2 * 16
    # Each part is one-hot encoded on its own: cue 1 of 3 and "answer due" become [0, 1, 0] and [0, 1].
    first_layer = encoder.encoders["0"].net[1][0]
    assert first_layer.in_features == 3 and encoder.encoders["1"].net[1][0].in_features == 2
    observation = {"0": torch.tensor([1]), "1": torch.tensor([1])}
    from stable_baselines3.common.preprocessing import preprocess_obs

    one_hot = preprocess_obs(observation, model.observation_space)
    assert one_hot["0"].tolist() == [[0.0, 1.0, 0.0]] and one_hot["1"].tolist() == [[0.0, 1.0]]
    before = [p.detach().clone() for p in model.policy.parameters()]
    model.learn(128)
    assert any(not torch.equal(b, p) for b, p in zip(before, model.policy.parameters()))
    actions, _ = model.predict(model.env.reset(), deterministic=True)
    assert actions.shape == (2, 2) and all(model.action_space.contains(a) for a in actions)


@pytest.mark.parametrize("space, encoder_type, features_dim", [
    (spaces.Box(-1, 1, (4,)), VectorEncoder, 16),
    (spaces.Box(0, 255, (7, 7, 3), np.uint8), GridEncoder, 7 * 7 * 16),
    (spaces.Box(0, 255, (3, 40, 40), np.uint8), NatureCNN, 16),
    (spaces.MultiDiscrete([3, 4]), VectorEncoder, 16),
])
def test_encoder_is_chosen_from_the_observation_space(space, encoder_type, features_dim):
    encoder = ObservationEncoder(space, d_input=16)
    assert isinstance(encoder.encoders["obs"], encoder_type)
    assert encoder.features_dim == features_dim


@pytest.mark.parametrize("route", ["env", "make_vec_env"])
def test_minigrid_img_obs_wrapper_grid_is_refused_with_the_fix_and_the_fix_encodes_it(route):
    import gymnasium as gym
    from minigrid.wrappers import ImgObsWrapper
    from stable_baselines3.common.env_util import make_vec_env

    from ctm_rl.envs import SymbolicGridBounds

    def build(*wrappers):
        def one():
            env = ImgObsWrapper(gym.make("MiniGrid-DoorKey-5x5-v0"))
            for wrapper in wrappers:
                env = wrapper(env)
            return env
        return one() if route == "env" else make_vec_env(one, n_envs=2, seed=0)

    with pytest.raises(UnsupportedSpaceError, match=r"7x7 pixels .* wrap the env in ctm_rl.envs.SymbolicGridBounds"):
        CtmPPO(CtmPolicy, build(), n_steps=16, batch_size=32, policy_kwargs=SMALL_CTM)
    model = CtmPPO(CtmPolicy, build(SymbolicGridBounds), n_steps=16, batch_size=32, policy_kwargs=SMALL_CTM)
    encoder = model.policy.features_extractor
    assert isinstance(encoder.encoders["obs"], GridEncoder)
    grid = torch.as_tensor(model.env.reset())
    assert grid.max() > 1  # indices such as the wall's 2 reach the encoder unscaled
    features = model.policy.extract_features(grid, model.policy.features_extractor)
    torch.testing.assert_close(features, encoder.encoders["obs"](grid.float()))


def test_dict_observation_combines_encoders():
    space = spaces.Dict({"grid": spaces.Box(0, 10, (5, 5, 3), np.uint8), "vec": spaces.Box(-1, 1, (3,))})
    model = CtmPPO(CtmPolicy, dict_env(space), n_steps=32, batch_size=8, policy_kwargs=SMALL_CTM, seed=0)
    encoder = model.policy.features_extractor
    assert isinstance(encoder.encoders["grid"], GridEncoder) and isinstance(encoder.encoders["vec"], VectorEncoder)
    assert encoder.features_dim == 25 * 16 + 16
    model.learn(32)
    collect_rollout(model)
    assert _assert_replay_reproduces_rollout(model, batch_size=8) > 0, "the minibatches must contain padding"


def test_user_features_extractor_is_used():
    class Doubler(BaseFeaturesExtractor):
        def __init__(self, observation_space, width=7):
            super().__init__(observation_space, width)
            self.linear = torch.nn.Linear(observation_space.shape[0], width)

        def forward(self, obs):
            return self.linear(obs)

    model = small_model(features_extractor_class=Doubler, features_extractor_kwargs={"width": 7})
    assert isinstance(model.policy.features_extractor, Doubler)
    assert model.policy.ctm.synapses.feature_weight.shape[1] == 7


def test_unsupported_observation_space_raises_clear_error():
    with pytest.raises(UnsupportedSpaceError, match="Unsupported observation space.*Text.*FlattenObservation"):
        CtmPolicy(spaces.Text(5), spaces.Discrete(2), lambda _: 1e-3, **SMALL_CTM)


def test_default_adam_is_fused_and_user_optimizer_kwargs_win():
    from ctm_rl.sb3.policy import _HAS_FUSED_ADAM

    defaults = small_model().policy.optimizer.defaults
    assert defaults["eps"] == 1e-5 and bool(defaults["fused"]) == _HAS_FUSED_ADAM
    custom = small_model(optimizer_kwargs={"eps": 1e-3}).policy.optimizer.defaults
    assert custom["eps"] == 1e-3 and not custom["fused"]


@pytest.mark.parametrize("policy_kwargs", [{}, dict(share_ctm=False, share_features_extractor=False)],
                         ids=["shared", "separate-critic"])
def test_grid_projection_from_distinct_cells_equals_projecting_the_features(policy_kwargs):
    model = small_model("MiniGrid-Empty-5x5", algorithm=CtmPPO, max_steps=10, **policy_kwargs)
    assert model.policy.features_extractor.grid is not None
    collect_rollout(model)
    batch = next(model.rollout_buffer.get(batch_size=48))
    actions = _discrete_actions(model, batch.actions)
    results = {}
    for project_cells in (True, False):
        model.policy.project_cells = project_cells
        model.policy.zero_grad()
        values, log_prob, entropy = model.policy.evaluate_actions(batch.observations, actions, batch.lstm_states,
                                                                  batch.episode_starts)
        mask = batch.mask > 0
        (values.flatten()[mask].sum() + log_prob[mask].sum()).backward()
        results[project_cells] = (values, log_prob, {n: p.grad.clone() for n, p in model.policy.named_parameters()
                                                     if p.grad is not None})
    torch.testing.assert_close(results[True][0], results[False][0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(results[True][1], results[False][1], atol=1e-5, rtol=1e-5)
    assert results[True][2].keys() == results[False][2].keys()
    for name, grad in results[True][2].items():
        torch.testing.assert_close(grad, results[False][2][name], atol=1e-4, rtol=1e-4, msg=name)


def test_grid_projection_is_a_saved_constructor_argument(tmp_path):
    model = small_model("MiniGrid-Empty-5x5", algorithm=CtmPPO, max_steps=10, project_cells=False)
    assert model.policy.project_cells is False
    model.save(tmp_path / "model.zip")
    assert CtmPPO.load(tmp_path / "model.zip").policy.project_cells is False


@pytest.mark.parametrize("detach_critic", [False, True])
def test_detach_critic_keeps_the_value_loss_out_of_a_shared_ctm(detach_critic):
    model = small_model(detach_critic=detach_critic)
    policy = model.policy
    obs = torch.as_tensor(model.env.reset())
    states = RNNStates(_flat_start_traces(policy, 4), _flat_start_traces(policy, 4))
    values, log_prob, _ = policy.evaluate_actions(obs, torch.zeros(4, dtype=torch.long), states, torch.ones(4))
    values.square().sum().backward(retain_graph=True)
    ctm_grads = [p.grad for p in (*policy.ctm.parameters(), *policy.features_extractor.parameters())]
    assert all(g is None or not g.any() for g in ctm_grads) == detach_critic
    assert policy.value_net.weight.grad.abs().sum() > 0
    policy.zero_grad()
    log_prob.sum().backward()  # the actor's loss still trains the CTM
    assert policy.ctm.synapses.recurrent_weight.grad.abs().sum() > 0


@pytest.mark.parametrize("policy_class", [CtmPolicy, LstmPolicy], ids=["ctm", "lstm"])
@pytest.mark.parametrize("gains", [{}, dict(action_gain=1.0), dict(hidden_gain=1.0, action_gain=0.3)],
                         ids=["sb3", "action", "both"])
def test_head_gains_set_the_heads_initial_scale_and_are_saved(tmp_path, policy_class, gains):
    model = small_model(policy_class=policy_class, **gains)
    policy = model.policy
    expected = {"hidden": gains.get("hidden_gain", 2 ** 0.5), "action": gains.get("action_gain", 0.01), "value": 1.0}
    # An orthogonal initialisation with gain g has every singular value equal to g.
    layers = {"hidden": [m.weight for m in policy.mlp_extractor.modules() if isinstance(m, torch.nn.Linear)],
              "action": [policy.action_net.weight], "value": [policy.value_net.weight]}
    assert len(layers["hidden"]) == 4  # two hidden layers in each head
    for kind, weights in layers.items():
        for weight in weights:
            singular_values = torch.linalg.svdvals(weight.detach())
            torch.testing.assert_close(singular_values, torch.full_like(singular_values, expected[kind]))
    model.save(tmp_path / "model.zip")
    loaded = type(model).load(tmp_path / "model.zip").policy
    assert (loaded.hidden_gain, loaded.action_gain) == (expected["hidden"], expected["action"])


@pytest.mark.parametrize("policy_class", [CtmPolicy, LstmPolicy], ids=["ctm", "lstm"])
@pytest.mark.parametrize("kwargs, message", [
    (dict(action_gain=0.0), "action_gain must be a number > 0, got 0.0"),
    (dict(hidden_gain=True), "hidden_gain must be a number > 0, got True"),
    (dict(action_gain=1.0, ortho_init=False), "action_gain is a gain of the orthogonal initialisation"),
    (dict(hidden_gain=1.0, ortho_init=False), "hidden_gain is a gain of the orthogonal initialisation"),
])
def test_a_bad_head_gain_is_refused_with_the_fix(policy_class, kwargs, message):
    with pytest.raises(ConfigError, match=message):
        small_model(policy_class=policy_class, **kwargs)


def test_detach_critic_needs_a_shared_ctm():
    with pytest.raises(ConfigError, match="detach_critic=True applies to a shared CTM"):
        small_model(detach_critic=True, share_ctm=False)


@pytest.mark.parametrize("policy_kwargs", [{}, dict(share_ctm=False, share_features_extractor=False)],
                         ids=["shared", "separate-critic"])
def test_standardized_output_takes_up_a_rollouts_statistics_only_after_its_update(tmp_path, monkeypatch, policy_kwargs):
    observed = {}
    observe = RunningStandardizer.observe
    monkeypatch.setattr(RunningStandardizer, "observe",
                        lambda self, rows: (observed.setdefault(id(self), []).append(rows.clone()), observe(self, rows)))
    model = small_model(algorithm=CtmPPO, standardize_output=True, **policy_kwargs)
    model.batch_size = model.n_steps * model.n_envs  # one gradient step per update, taken at probability ratio 1
    standardizers = {id(s): s for s in (model.policy.output_standardizer, model.policy.critic_output_standardizer)}
    assert len(standardizers) == (1 if not policy_kwargs else 2)
    model.learn(model.n_steps * model.n_envs, log_interval=100)  # one rollout, then its update
    # The update read the rollout through the map the rollout was collected with: its step started at ratio 1.
    assert abs(model.logger.name_to_value["train/approx_kl"]) < 1e-7
    for key, standardizer in standardizers.items():
        rows = torch.cat(observed[key]).double()  # every rollout step of every env, once
        assert rows.shape == (model.n_steps * model.n_envs, model.policy.ctm.output_size)
        # The first commit takes the rollout's statistics whole: the heads then read each pair centred, unit spread.
        torch.testing.assert_close(standardizer.mean, rows.mean(dim=0).float())
        torch.testing.assert_close(standardizer.var, rows.var(dim=0, unbiased=False).float())
        assert float(standardizer.var.max()) < 1e-2  # far from the identity the first rollout was read through
    # The next rollout reads the synchronisation through this map, and replaying it for the update reads the same
    # one: probability ratios start at 1 (a map updated before the update would break this).
    collect_rollout(model)
    _assert_replay_reproduces_rollout(model, batch_size=48)
    model.learn(model.n_steps * model.n_envs, log_interval=100, reset_num_timesteps=False)
    assert abs(model.logger.name_to_value["train/approx_kl"]) < 1e-7
    model.save(tmp_path / "model.zip")
    loaded = CtmPPO.load(tmp_path / "model.zip").policy
    torch.testing.assert_close(loaded.output_standardizer.mean, model.policy.output_standardizer.mean)
    torch.testing.assert_close(loaded.critic_output_standardizer.var, model.policy.critic_output_standardizer.var)


def test_a_zero_standardize_momentum_keeps_the_first_rollouts_map():
    model = small_model(algorithm=CtmPPO, standardize_output=True, standardize_momentum=0.0)
    model.learn(model.n_steps * model.n_envs, log_interval=100)
    first = model.policy.output_standardizer.mean.clone(), model.policy.output_standardizer.var.clone()
    assert not torch.equal(first[1], torch.ones_like(first[1]))
    model.learn(2 * model.n_steps * model.n_envs, log_interval=100, reset_num_timesteps=False)
    assert torch.equal(model.policy.output_standardizer.mean, first[0])
    assert torch.equal(model.policy.output_standardizer.var, first[1])
    assert model.policy._get_constructor_parameters()["standardize_momentum"] == 0.0


@pytest.mark.parametrize("momentum", [-0.1, 1.5, "fast", True])
def test_a_bad_standardize_momentum_is_refused_with_the_fix(momentum):
    with pytest.raises(ConfigError, match="standardize_momentum must be in \\[0, 1\\]"):
        small_model(standardize_output=True, standardize_momentum=momentum)


def test_a_centring_standardizer_subtracts_the_running_mean_and_keeps_the_spread():
    standardizer = RunningStandardizer(3, momentum=0.25, scale=False)
    rows = torch.tensor([[1.0, 0.0, 50.0], [3.0, 0.0, 50.0], [5.0, 0.0, 50.0]])
    standardizer.observe(rows)
    standardizer.commit()
    # Not divided by the spread (2**0.5 in the first column), and not clipped at 10 either.
    torch.testing.assert_close(standardizer(rows), torch.tensor([[-2.0, 0.0, 0.0], [0.0, 0.0, 0.0], [2.0, 0.0, 0.0]]))
    torch.testing.assert_close(standardizer(rows + 20.0), rows - standardizer.mean + 20.0)


def test_a_policy_with_centred_output_feeds_its_heads_the_synchronisation_minus_its_running_mean():
    model = small_model(algorithm=CtmPPO, standardize_output="center")
    model.learn(model.n_steps * model.n_envs, log_interval=100)  # one rollout, its update, then the commit
    standardizer = model.policy.output_standardizer
    assert isinstance(standardizer, RunningStandardizer) and not standardizer.scale
    synchronisation = torch.randn(5, model.policy.ctm.output_size) * 1e-3
    assert float(standardizer.mean.abs().max()) > 0
    torch.testing.assert_close(standardizer(synchronisation), synchronisation - standardizer.mean)
    assert model.policy._get_constructor_parameters()["standardize_output"] == "center"


@pytest.mark.parametrize("choice", ["centre", 1, None])
def test_a_bad_standardize_output_is_refused_with_the_fix(choice):
    with pytest.raises(ConfigError, match="standardize_output must be false, true or center"):
        small_model(standardize_output=choice)


def test_a_running_standardizer_is_the_identity_until_a_commit_then_follows_later_rollouts_by_its_momentum():
    standardizer = RunningStandardizer(3, momentum=0.25)
    rows = torch.tensor([[1.0, 0.0, 5.0], [3.0, 0.0, 5.0], [5.0, 0.0, 5.0]])
    standardizer.observe(rows)
    torch.testing.assert_close(standardizer(rows), rows.clamp(-10, 10))  # observed, not yet committed
    standardizer.commit()
    torch.testing.assert_close(standardizer.mean, torch.tensor([3.0, 0.0, 5.0]))
    torch.testing.assert_close(standardizer.var, torch.tensor([8 / 3, 0.0, 0.0]))
    torch.testing.assert_close(standardizer(rows)[:, 0], torch.tensor([-1.0, 0.0, 1.0]) * 1.5 ** 0.5)
    assert not standardizer(rows)[:, 1:].any()  # constant features read 0, not noise blown up
    standardizer.observe(torch.tensor([[7.0, 2.0, 5.0], [7.0, 2.0, 5.0]]))
    standardizer.commit()  # a quarter of the way to the new statistics
    torch.testing.assert_close(standardizer.mean, torch.tensor([4.0, 0.5, 5.0]))
    torch.testing.assert_close(standardizer.var, torch.tensor([2.0, 0.0, 0.0]))
    standardizer.commit()  # nothing observed since: unchanged
    torch.testing.assert_close(standardizer.mean, torch.tensor([4.0, 0.5, 5.0]))
    assert float(standardizer(torch.tensor([[1e6, 0.0, 5.0]]))[0, 0]) == 10.0  # clipped


@pytest.mark.parametrize("kind", ["ctm", "lstm"])
def test_multibinary_actions_train(kind):
    import gymnasium as gym
    from stable_baselines3.common.vec_env import DummyVecEnv

    from ctm_rl.sb3.lstm import LstmPolicy, lstm_policy_kwargs

    class Switches(gym.Env):
        observation_space = spaces.Box(-1, 1, (3,), np.float32)
        action_space = spaces.MultiBinary(3)

        def reset(self, *, seed=None, options=None):
            super().reset(seed=seed)
            self.t = 0
            return np.zeros(3, np.float32), {}

        def step(self, action):
            self.t += 1
            return np.zeros(3, np.float32), float(np.sum(action)), False, self.t >= 10, {}

    policy, kwargs = ((CtmPolicy, SMALL_CTM) if kind == "ctm" else (LstmPolicy, lstm_policy_kwargs(16, d_input=8)))
    model = CtmPPO(policy, DummyVecEnv([Switches, Switches]), n_steps=8, batch_size=16, n_epochs=2, seed=0,
                   policy_kwargs=kwargs)
    before = [p.detach().clone() for p in model.policy.parameters()]
    model.learn(32)
    assert any(not torch.equal(a, b) for a, b in zip(before, model.policy.parameters()))
    actions, _ = model.predict(np.zeros((2, 3), np.float32))
    assert actions.shape == (2, 3) and set(np.unique(actions)) <= {0, 1}


@pytest.mark.parametrize("normalize_output", [False, "layer", "rms"])
def test_normalize_output_sets_what_each_step_of_the_heads_input_is_scaled_to(tmp_path, normalize_output):
    model = small_model(normalize_output=normalize_output)
    policy = model.policy
    read = []
    policy.mlp_extractor.policy_net.register_forward_hook(lambda module, inputs, output: read.append(inputs[0].detach()))
    obs = torch.as_tensor(model.env.reset())
    states = RNNStates(_flat_start_traces(policy, 4), _flat_start_traces(policy, 4))
    with torch.no_grad():
        policy.evaluate_actions(obs, torch.zeros(4, dtype=torch.long), states, torch.ones(4))
    rows = read[0]  # (4, pairs): one row per env's step
    rms = rows.square().mean(dim=-1).sqrt()
    if normalize_output is False:
        assert float(rms.max()) < 0.1  # the raw synchronisation of a fresh CTM is small
    elif normalize_output == "rms":
        torch.testing.assert_close(rms, torch.ones_like(rms))  # every step at unit scale, from the first update
        assert float(rows.mean(dim=-1).abs().min()) > 1e-2  # not centred
    else:
        torch.testing.assert_close(rows.mean(dim=-1), torch.zeros(4), atol=1e-5, rtol=0)
    model.save(tmp_path / "model.zip")
    assert type(model).load(tmp_path / "model.zip").policy.normalize_output == normalize_output


@pytest.mark.parametrize("choice", ["batch", 1, None])
def test_a_bad_normalize_output_is_refused_with_the_fix(choice):
    with pytest.raises(ConfigError, match="normalize_output must be false, true, layer or rms"):
        small_model(normalize_output=choice)


@pytest.mark.parametrize("policy_class, part", [(CtmPolicy, "synapses"), (LstmPolicy, "lstm")], ids=["ctm", "lstm"])
def test_lr_scales_set_a_parts_step_size_at_every_update_and_are_saved(tmp_path, policy_class, part):
    model = small_model(policy_class=policy_class, algorithm=CtmPPO, lr_scales={part: 0.1},
                        optimizer_kwargs={"eps": 1e-12})
    model.batch_size = model.n_steps * model.n_envs  # one Adam step per update
    policy = model.policy
    for update in range(2):
        before = {name: p.detach().clone() for name, p in policy.named_parameters()}
        model.learn(model.n_steps * model.n_envs, log_interval=100, reset_num_timesteps=update == 0)
        rate = model.lr_schedule(model._current_progress_remaining)
        assert model.logger.name_to_value["train/learning_rate"] == pytest.approx(rate)  # the schedule's, logged
        # Adam's first steps move every parameter with a gradient by about its group's rate, whatever the
        # gradient's size; the largest move in each part is that rate.
        moved = largest_moves(policy, before)
        assert moved[part] == pytest.approx(0.1 * rate, rel=0.05)
        assert {"actor_head", "critic_head"} < set(moved)
        for other in set(moved) & {"encoder", "actor_head", "critic_head"}:
            assert moved[other] == pytest.approx(rate, rel=0.05), other
    model.save(tmp_path / "model.zip")
    loaded = CtmPPO.load(tmp_path / "model.zip").policy
    assert loaded.lr_scales == {part: 0.1}
    assert sorted(group["lr_scale"] for group in loaded.optimizer.param_groups) == [0.1, 1.0]


@pytest.mark.parametrize("policy_class, part, group, group_names", [
    (CtmPolicy, "synapses", "synapse_input", ("ctm.synapses.feature_weight", "ctm.synapses.recurrent_weight",
                                              "ctm.synapses.bias")),
    (LstmPolicy, "lstm", "lstm_input", ("lstm_actor.weight_ih_l0", "lstm_actor.bias_ih_l0",
                                        "lstm_critic.weight_ih_l0", "lstm_critic.bias_ih_l0")),
], ids=["ctm", "lstm"])
@pytest.mark.parametrize("part_scale", [None, 0.5])
def test_lr_scales_set_the_input_layers_step_apart_from_the_rest_of_its_part(policy_class, part, group, group_names,
                                                                             part_scale):
    lr_scales = {group: 0.1} | ({} if part_scale is None else {part: part_scale})
    model = small_model(policy_class=policy_class, algorithm=CtmPPO, lr_scales=lr_scales,
                        optimizer_kwargs={"eps": 1e-12})
    model.batch_size = model.n_steps * model.n_envs  # one Adam step: every parameter moves by about its rate
    before = {name: p.detach().clone() for name, p in model.policy.named_parameters()}
    model.learn(model.n_steps * model.n_envs, log_interval=100)
    rate = model.lr_schedule(model._current_progress_remaining)
    moved = {name: float((p.detach() - before[name]).abs().max()) for name, p in model.policy.named_parameters()}
    rest_of_part = [name for name in moved if parameter_part(name) == part and name not in group_names]
    assert rest_of_part and all(name in moved for name in group_names)
    for name in group_names:
        assert moved[name] == pytest.approx(0.1 * rate, rel=0.05), name
    for name in rest_of_part:
        assert moved[name] == pytest.approx((part_scale or 1.0) * rate, rel=0.05), name


@pytest.mark.parametrize("policy_class", [CtmPolicy, LstmPolicy], ids=["ctm", "lstm"])
@pytest.mark.parametrize("lr_scales, message", [
    ({"synapse": 0.1}, "lr_scales names an unknown part 'synapse'"),
    ({"nlms": 0.0}, "lr_scales\\[nlms\\] must be a number > 0"),
    ({"nlms": True}, "lr_scales\\[nlms\\] must be a number > 0"),
    (0.1, "lr_scales must map part names"),
])
def test_bad_lr_scales_are_refused_with_the_fix(policy_class, lr_scales, message):
    with pytest.raises(ConfigError, match=message):
        small_model(policy_class=policy_class, lr_scales=lr_scales)
