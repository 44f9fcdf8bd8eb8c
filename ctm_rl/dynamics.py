"""What an agent does inside while it acts: per-step records of its recurrent units, tick probes, measures of its
dynamics, and evaluation at other tick counts than it was trained with.

The same records are made for CTM and LSTM agents, so that their dynamics can be compared:

- a CTM records every internal tick: each neuron's pre- and post-activation, and the action distribution its
  actor head gives when applied to the synchronisation after that tick (a *tick probe*); the output
  synchronisation after the step's last tick is what the agent acts on;
- an LSTM records its hidden and cell units once per step (it has no ticks).

:func:`record_episode` drives one episode; :func:`dynamics_measures` summarises unit traces;
:func:`evaluate_ticks` evaluates a CTM at several tick counts.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Iterator

import numpy as np
import torch
from stable_baselines3.common.policies import BaseModel
from stable_baselines3.common.vec_env import VecEnv

from ctm_rl.errors import ConfigError
from ctm_rl.sb3.encoders import flat_observations
from ctm_rl.sb3.policy import CtmPolicy, ctm_traces, flat_traces
from ctm_rl.stats import Estimate, interval_estimate, mean


@dataclass
class StepRecord:
    """One environment step of a recorded episode."""

    action: np.ndarray
    """The action taken."""
    probabilities: np.ndarray | None
    """``(A,)`` action probabilities of a Discrete action space (``None`` for other spaces)."""
    value: float
    """The critic's value estimate of the step's observation."""
    reward: float
    """The reward the step returned."""
    units: np.ndarray
    """``(K, U)``: a CTM's post-activations after each of its ``K`` ticks; an LSTM's hidden units (``K = 1``)."""
    inner_units: np.ndarray
    """``(K, U)``: a CTM's pre-activations after each tick; an LSTM's cell units."""
    output: np.ndarray
    """What the heads read: a CTM's synchronisation ``(P,)``, an LSTM's hidden state."""
    tick_probabilities: np.ndarray | None
    """``(K, A)`` a CTM's tick probes: the actor's action probabilities after each tick (Discrete actions)."""


@dataclass
class EpisodeRecord:
    """A recorded episode: one :class:`StepRecord` per step, and the rendered frames if asked."""

    kind: str
    """``ctm`` or ``lstm``."""
    ticks: int
    """Internal ticks per step (1 for an LSTM)."""
    steps: list[StepRecord] = field(default_factory=list)
    frames: list[np.ndarray] = field(default_factory=list)
    """``(H, W, 3)`` frames, one per step, each showing the observation the step acted on."""
    observations: list[np.ndarray] = field(default_factory=list)
    """The flattened observation of each step, for environments without a renderer."""

    @property
    def total_return(self) -> float:
        return float(sum(step.reward for step in self.steps))

    def unit_trace(self, inner: bool = False) -> np.ndarray:
        """Every unit over the whole episode, ticks one after another: ``(steps * K, U)``."""
        return np.concatenate([step.inner_units if inner else step.units for step in self.steps])


def agent_kind(model) -> str:
    """``ctm`` for a CtmPolicy agent, ``lstm`` for sb3-contrib's recurrent policy."""
    return "ctm" if isinstance(model.policy, CtmPolicy) else "lstm"


@contextmanager
def ticks_of(model, ticks: int | None) -> Iterator[None]:
    """Run a CTM agent's CTMs (actor's and critic's) with ``ticks`` internal ticks per step while inside; the
    parameters do not depend on the tick count. ``None`` keeps the trained count.

    :raises ConfigError: for ticks below 1, or ticks asked of an LSTM agent.
    """
    if ticks is None:
        yield
        return
    if agent_kind(model) != "ctm":
        raise ConfigError("Only CTM agents have internal ticks. Fix: drop --ticks for an LSTM agent.")
    if ticks < 1:
        raise ConfigError(f"ticks must be >= 1, got {ticks}.")
    ctms = [ctm for ctm in (model.policy.ctm, model.policy.critic_ctm) if ctm is not None]
    trained = [ctm.ticks for ctm in ctms]
    rollout_step, model.policy.rollout_step = model.policy.rollout_step, None  # a compiled step bakes its ticks in
    try:
        for ctm in ctms:
            ctm.ticks = ticks
        yield
    finally:
        for ctm, count in zip(ctms, trained):
            ctm.ticks = count
        model.policy.rollout_step = rollout_step


def _probabilities(distribution) -> np.ndarray | None:
    probs = getattr(getattr(distribution, "distribution", None), "probs", None)
    return None if probs is None or isinstance(probs, list) else probs.detach().cpu().numpy().reshape(-1)


def _choose(distribution, deterministic: bool) -> torch.Tensor:
    return distribution.mode() if deterministic else distribution.sample()


def _ctm_step(policy, obs: torch.Tensor, state, start: torch.Tensor, deterministic: bool):
    """One env step of a CTM agent, tick by tick: returns the action, its record's fields and the new state."""
    ctm = policy.ctm
    ticks = ctm.ticks
    if not policy.carry_traces:
        start = torch.ones_like(start)
    projected = policy._ctm_input(obs, policy.pi_features_extractor, ctm)  # (1, W)
    units, inner, tick_probs = [], [], []
    traces, starts = ctm_traces(state.pi, ctm), start
    ctm.ticks = 1  # K one-tick steps on the same features are the K-tick step, with every tick visible
    try:
        for _ in range(ticks):
            synchronisation, traces = ctm.step(projected, traces, starts)  # (1, P), (D, M, 1) each
            starts = torch.zeros_like(start)
            inner.append(traces[0][:, -1, 0].cpu().numpy())
            units.append(traces[1][:, -1, 0].cpu().numpy())
            latent = policy.mlp_extractor.forward_actor(policy.output_norm(synchronisation))
            distribution = policy._get_action_dist_from_latent(latent)
            tick_probs.append(_probabilities(distribution))
    finally:
        ctm.ticks = ticks
    action = _choose(distribution, deterministic)
    flat_pi = flat_traces(traces)
    if policy.critic_ctm is None:
        latent_vf, flat_vf = (synchronisation, flat_pi)
    else:
        projected_vf = policy._ctm_input(obs, policy.vf_features_extractor, policy.critic_ctm)
        latent_vf, flat_vf = policy._run_ctm(policy.critic_ctm, projected_vf, state.vf, start)
    value = policy.value_net(policy.mlp_extractor.forward_critic(policy.critic_output_norm(latent_vf)))
    probes = None if tick_probs[0] is None else np.stack(tick_probs)
    record = dict(probabilities=tick_probs[-1], value=float(value), units=np.stack(units), inner_units=np.stack(inner),
                  output=synchronisation[0].cpu().numpy(), tick_probabilities=probes)
    return action, record, type(state)(flat_pi, flat_vf)


def _lstm_step(policy, obs: torch.Tensor, state, start: torch.Tensor, deterministic: bool):
    """One env step of an sb3-contrib LSTM agent."""
    distribution, pi_state = policy.get_distribution(obs, state.pi, start)
    value = policy.predict_values(obs, state.vf, start)
    if policy.lstm_critic is not None:  # the critic's own LSTM advances too
        features = BaseModel.extract_features(policy, obs, policy.vf_features_extractor)
        _, vf_state = policy._process_sequence(features, state.vf, start, policy.lstm_critic)
    else:
        vf_state = tuple(part.detach() for part in pi_state)
    action = _choose(distribution, deterministic)
    hidden, cell = (part[-1, 0].cpu().numpy() for part in pi_state)  # the last layer's units
    record = dict(probabilities=_probabilities(distribution), value=float(value), units=hidden[None],
                  inner_units=cell[None], output=hidden, tick_probabilities=None)
    return action, record, type(state)(pi_state, vf_state)


def _initial_state(model, n_envs: int = 1):
    from sb3_contrib.common.recurrent.type_aliases import RNNStates

    shape = model.policy.lstm_hidden_state_shape
    zeros = torch.zeros((shape[0], n_envs, shape[2]), device=model.device)
    return RNNStates((zeros, zeros.clone()), (zeros.clone(), zeros.clone()))


@torch.no_grad()
def record_episode(model, venv: VecEnv, deterministic: bool = True, render: bool = True,
                   max_steps: int | None = None) -> EpisodeRecord:
    """Run one episode of a one-env ``venv`` and record every step (see :class:`StepRecord`).

    :param model: a trained CTM or LSTM agent.
    :param venv: a vectorised environment with one env, made with ``render_mode="rgb_array"`` for frames.
    :param deterministic: take the likeliest action instead of sampling.
    :param render: keep a rendered frame per step.
    :param max_steps: stop recording after this many steps even if the episode goes on (an env without a step
        limit); ``None``: at the episode's end only.
    """
    if venv.num_envs != 1:
        raise ConfigError(f"record_episode needs a one-env VecEnv, got {venv.num_envs} envs.")
    policy = model.policy
    policy.set_training_mode(False)
    kind = agent_kind(model)
    episode = EpisodeRecord(kind, policy.ctm.ticks if kind == "ctm" else 1)
    step_fn = _ctm_step if kind == "ctm" else _lstm_step
    obs = venv.reset()
    state, start = _initial_state(model), torch.ones(1, device=model.device)
    while True:
        if render:
            frame = venv.render()
            if frame is not None:
                episode.frames.append(np.asarray(frame))
        episode.observations.append(flat_observations(obs, venv.observation_space)[0])
        obs_tensor, _ = policy.obs_to_tensor(obs)
        action, fields, state = step_fn(policy, obs_tensor, state, start, deterministic)
        action = action.cpu().numpy().reshape((1, *model.action_space.shape))
        clipped = action
        if hasattr(model.action_space, "low"):  # Box actions act clipped, as SB3's predict does
            clipped = np.clip(action, model.action_space.low, model.action_space.high)
        obs, rewards, dones, _ = venv.step(clipped)
        episode.steps.append(StepRecord(action=clipped[0], reward=float(rewards[0]), **fields))
        if dones[0] or len(episode.steps) == max_steps:
            return episode
        start = torch.zeros(1, device=model.device)


@dataclass(frozen=True)
class DynamicsMeasures:
    """Summary measures of unit traces, computed the same way for every agent."""

    frequency_spread: float
    """Standard deviation over units of each unit's dominant frequency (cycles per time point, in [0, 0.5]):
    how varied the units' rhythms are."""
    mean_correlation: float
    """Mean absolute Pearson correlation over all pairs of units: how much the units move together."""
    active_units: int
    """Units whose trace varies (the others enter neither measure)."""


def dynamics_measures(trace: np.ndarray) -> DynamicsMeasures:
    """Measures of a ``(T, U)`` unit trace (a CTM's post-activations tick by tick, an LSTM's hidden units step by
    step); NaN where fewer than 2 units vary or ``T < 4``."""
    trace = np.asarray(trace, dtype=np.float64)
    centred = trace - trace.mean(axis=0)
    varying = centred.std(axis=0) > 1e-8
    if varying.sum() < 2 or len(trace) < 4:
        return DynamicsMeasures(float("nan"), float("nan"), int(varying.sum()))
    centred = centred[:, varying]
    spectrum = np.abs(np.fft.rfft(centred, axis=0))[1:]  # (F, U), the constant term left out
    frequencies = np.fft.rfftfreq(len(centred))[1:]
    dominant = frequencies[spectrum.argmax(axis=0)]
    correlation = np.corrcoef(centred.T)
    pairs = ~np.eye(len(correlation), dtype=bool)
    return DynamicsMeasures(float(dominant.std()), float(np.abs(correlation[pairs]).mean()), int(varying.sum()))


@dataclass(frozen=True)
class TickEvaluation:
    """Returns at one test-time tick count."""

    ticks: int
    returns: list[float]
    mean: Estimate
    """Mean return with its bootstrap 95% interval."""


def evaluate_ticks(model, venv: VecEnv, ticks: list[int], episodes: int = 10, deterministic: bool = True,
                   seed: int = 0) -> list[TickEvaluation]:
    """Evaluate a CTM agent with each tick count in ``ticks`` on ``episodes`` episodes (SB3's
    ``evaluate_policy``), on the same episodes for every count.

    :param venv: the evaluation environments, reseeded with ``seed`` before each count.
    """
    from stable_baselines3.common.evaluation import evaluate_policy

    results = []
    for count in ticks:
        with ticks_of(model, count):
            venv.seed(seed)
            returns, _ = evaluate_policy(model, venv, n_eval_episodes=episodes, deterministic=deterministic,
                                         return_episode_rewards=True)
        returns = [float(r) for r in returns]
        results.append(TickEvaluation(count, returns, interval_estimate(np.asarray(returns), mean)))
    return results
