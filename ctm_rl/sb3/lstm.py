"""The LSTM baseline: sb3-contrib's own recurrent policy with the CTM's encoder and heads, sized to match
a CTM configuration's parameter count."""

from __future__ import annotations

import inspect
import math
from typing import Any, Mapping

import gymnasium as gym
from gymnasium import spaces
from sb3_contrib.common.recurrent.policies import RecurrentActorCriticPolicy
from stable_baselines3.common.policies import ActorCriticPolicy

from ctm_rl.errors import ConfigError
from ctm_rl.sb3.encoders import ObservationEncoder
from ctm_rl.sb3.heads import SB3_ACTION_GAIN, SB3_HIDDEN_GAIN, apply_head_gains, check_head_gains
from ctm_rl.sb3.parts import check_lr_scales, rebuild_optimizer
from ctm_rl.sb3.policy import CtmPolicy

class LstmPolicy(RecurrentActorCriticPolicy):
    """sb3-contrib's recurrent policy, with two changes: MultiBinary actions reach the action distribution as
    floats (the rollout buffer keeps them in the space's integer type, which the Bernoulli log-probability
    refuses), and a shared LSTM can be trained by the critic's loss as well as the actor's.

    :param detach_critic: with ``shared_lstm=True``, whether the critic reads the LSTM's output detached, so that
        only the actor's loss trains the LSTM (True, sb3-contrib's behaviour), or undetached, so that the value
        loss trains it too (False, as the shared CTM is trained by default).
    :param hidden_gain: gain of the orthogonal initialisation of the heads' hidden layers (with ``ortho_init``;
        SB3's is ``sqrt(2)``; :mod:`ctm_rl.sb3.heads`).
    :param action_gain: the same for the action head's output layer (SB3's is 0.01); with a shared LSTM trained by
        the value loss too it also sets the actor's share of the LSTM's gradient.
    :param lr_scales: learning-rate multiples per part (:mod:`ctm_rl.sb3.parts`), as for ``CtmPolicy``.
    :param args: ``RecurrentActorCriticPolicy`` arguments.
    :param kwargs: ``RecurrentActorCriticPolicy`` keyword arguments.
    """

    def __init__(self, *args: Any, detach_critic: bool = True, hidden_gain: float = SB3_HIDDEN_GAIN,
                 action_gain: float = SB3_ACTION_GAIN, lr_scales: Mapping[str, float] | None = None,
                 **kwargs: Any) -> None:
        check_lstm_arguments({**kwargs, "detach_critic": detach_critic, "hidden_gain": hidden_gain,
                              "action_gain": action_gain, "lr_scales": lr_scales})
        # Read by _build, which the parent's constructor calls.
        self.hidden_gain, self.action_gain = hidden_gain, action_gain
        super().__init__(*args, **kwargs)
        self.detach_critic = detach_critic
        # sb3-contrib's constructor makes the optimizer last, once the LSTMs exist.
        self.lr_scales = None if lr_scales is None else dict(lr_scales)
        rebuild_optimizer(self, self.lr_scales, self.optimizer.defaults["lr"])

    def _build(self, lr_schedule: Any) -> None:
        super()._build(lr_schedule)
        apply_head_gains(self, self.hidden_gain, self.action_gain)

    def _get_constructor_parameters(self) -> dict[str, Any]:
        return {**super()._get_constructor_parameters(), "detach_critic": self.detach_critic,
                "hidden_gain": self.hidden_gain, "action_gain": self.action_gain, "lr_scales": self.lr_scales}

    def evaluate_actions(self, obs, actions, lstm_states, episode_starts):
        if isinstance(self.action_space, spaces.MultiBinary):
            actions = actions.float()
        if self.detach_critic or not self.shared_lstm:
            return super().evaluate_actions(obs, actions, lstm_states, episode_starts)
        # One pass through the shared LSTM, read by both heads without a detach: both losses train it.
        features = self.extract_features(obs)
        features = features if self.share_features_extractor else features[0]
        latent, _ = self._process_sequence(features, lstm_states.pi, episode_starts, self.lstm_actor)
        distribution = self._get_action_dist_from_latent(self.mlp_extractor.forward_actor(latent))
        values = self.value_net(self.mlp_extractor.forward_critic(latent))
        return values, distribution.log_prob(actions), distribution.entropy()


# One LSTM shared by actor and critic, as in the CTM reference. sb3-contrib trains a shared LSTM with the actor's
# gradient only; detach_critic=False trains it with the critic's as well, and enable_critic_lstm=True (with
# shared_lstm=False) gives the critic a separate one.
LSTM_DEFAULTS: dict[str, Any] = {"shared_lstm": True, "enable_critic_lstm": False}


_LSTM_POLICY_DEFAULTS = {
    name: parameter.default
    for function in (RecurrentActorCriticPolicy.__init__, LstmPolicy.__init__)
    for name, parameter in inspect.signature(function).parameters.items()
    if parameter.default is not inspect.Parameter.empty
}


def check_lstm_arguments(arguments: Mapping[str, Any]) -> None:
    """Raise :class:`ConfigError` for :class:`LstmPolicy` arguments that contradict each other, before anything
    is built.

    :param arguments: ``LstmPolicy`` keyword arguments; those left out take the policy's defaults.
    """
    given = {**_LSTM_POLICY_DEFAULTS, **arguments}
    check_head_gains(given["hidden_gain"], given["action_gain"], given["ortho_init"])
    check_lr_scales(given["lr_scales"])
    if not given["detach_critic"] and not given["shared_lstm"]:
        raise ConfigError("detach_critic=False applies to a shared LSTM (shared_lstm=True); a separate critic "
                          "LSTM or critic network is trained by the value loss already. Fix: drop detach_critic, or "
                          "set shared_lstm=true.")


def _constant_lr(_: float) -> float:
    return 0.0


def count_parameters(policy_class: type[ActorCriticPolicy], observation_space: gym.Space, action_space: gym.Space,
                     **policy_kwargs: Any) -> int:
    """Number of trainable parameters of a policy built for the given spaces."""
    policy = policy_class(observation_space, action_space, _constant_lr, **policy_kwargs)
    return sum(p.numel() for p in policy.parameters() if p.requires_grad)


def lstm_policy_kwargs(lstm_hidden_size: int, d_input: int = 64, **overrides: Any) -> dict[str, Any]:
    """Policy kwargs of the LSTM baseline: the CTM's default encoder with the same ``d_input``.

    :param lstm_hidden_size: LSTM width.
    :param d_input: encoder width, as for the CTM.
    :param overrides: any other ``RecurrentActorCriticPolicy`` keyword argument.
    """
    return {
        "lstm_hidden_size": lstm_hidden_size,
        "features_extractor_class": ObservationEncoder,
        "features_extractor_kwargs": {"d_input": d_input},
        **LSTM_DEFAULTS,
        **overrides,
    }


def match_lstm_hidden_size(observation_space: gym.Space, action_space: gym.Space, ctm_kwargs: dict[str, Any],
                           lstm_overrides: dict[str, Any] | None = None) -> int:
    """The ``lstm_hidden_size`` whose LSTM baseline has the parameter count closest to the CTM policy's.

    An LSTM policy's parameter count is a quadratic in its hidden size (the LSTM's weights, plus the heads'
    first layers), so three small builds determine it exactly; the best integer solution follows.

    :param observation_space: observation space of the task.
    :param action_space: action space of the task.
    :param ctm_kwargs: ``CtmPolicy`` keyword arguments (``d_model``, ``d_input``, ...).
    :param lstm_overrides: extra LSTM policy keyword arguments (``net_arch``, ``enable_critic_lstm``, ...).
    """
    target = count_parameters(CtmPolicy, observation_space, action_space, **ctm_kwargs)
    d_input = ctm_kwargs.get("d_input", 64)
    shared = {k: ctm_kwargs[k] for k in ("net_arch", "activation_fn") if k in ctm_kwargs}
    overrides = {**shared, **(lstm_overrides or {})}

    def lstm_count(hidden: int) -> int:
        kwargs = lstm_policy_kwargs(hidden, d_input, **overrides)
        return count_parameters(LstmPolicy, observation_space, action_space, **kwargs)

    p1, p2, p3 = lstm_count(1), lstm_count(2), lstm_count(3)
    a = (p3 - 2 * p2 + p1) / 2
    b = p2 - p1 - 3 * a
    c = p1 - a - b
    root = (-b + math.sqrt(b * b - 4 * a * (c - target))) / (2 * a)
    candidates = [h for h in (math.floor(root), math.ceil(root)) if h >= 1] or [1]
    return min(candidates, key=lambda h: abs(a * h * h + b * h + c - target))
