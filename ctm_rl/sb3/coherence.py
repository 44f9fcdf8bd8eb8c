"""Whether consecutive PPO updates move a recurrent policy the same way: a training diagnostic for CTM and LSTM
policies alike, logged by ``CtmPPO`` as

- ``train/update_change``: the root mean square of the last update's change in the policy's outputs on a fixed
  set of states;
- ``train/update_coherence``: the cosine between the last two updates' changes on those states. Near 1, each
  update continues the last and the policy sharpens steadily; near 0, the changes add up like a random walk's
  steps, so after n updates the policy is about sqrt(n) updates' changes from where it began rather than n.

Per part of the policy (:mod:`ctm_rl.sb3.parts`), the same two measures of its parameters, which say where such
a change comes from:

- ``param_move/<part>``: the root mean square of the last update's change of the part's parameters;
- ``param_coherence/<part>``: the cosine between the last two updates' changes of the part's parameters. A part
  whose moves reverse from one update to the next has a coherence near 0 or below, however far it moves.

The fixed states are the first ``n_envs`` envs' steps of the first rollout the diagnostic sees, replayed from
that rollout's recurrent state with the current parameters after every update (the policy in evaluation mode,
without gradients; nothing in training changes). The policy's outputs are its action logits centred per state
for discrete actions (so that a shift of all logits, which changes no probability, counts as no change), the
logits of binary actions, and the mean of continuous ones.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch
from sb3_contrib.common.recurrent.buffers import RecurrentDictRolloutBuffer, RecurrentRolloutBuffer
from sb3_contrib.common.recurrent.policies import RecurrentActorCriticPolicy
from stable_baselines3.common.distributions import Distribution
from stable_baselines3.common.type_aliases import PyTorchObs
from torch import nn
from torch.distributions import Bernoulli, Categorical

from ctm_rl.sb3.buffers import CtmDictRolloutBuffer, CtmRolloutBuffer
from ctm_rl.sb3.parts import trainable_parameters_by_part

RolloutBuffer = RecurrentRolloutBuffer | RecurrentDictRolloutBuffer


class RolloutProbe(NamedTuple):
    """Some envs' steps of one rollout, laid out as a recurrent replay reads them."""

    observations: PyTorchObs
    """``(n * n_steps, ...)``: env 0's steps in order, then env 1's, and so on (a dict of them for dict spaces)."""
    episode_starts: torch.Tensor
    """``(n * n_steps,)``, 1 at the steps that start an episode."""
    states: tuple[torch.Tensor, torch.Tensor]
    """The actor's recurrent state before each env's first step of the rollout: an LSTM's ``(h, c)`` or a CTM's
    flat traces ``(pre, post)``, each ``(layers, n, hidden)``."""


def rollout_probe(buffer: RolloutBuffer, n_envs: int) -> RolloutProbe:
    """The first ``n_envs`` envs' steps of a filled rollout buffer that has not been sampled yet (sampling
    flattens its arrays), copied.

    :param buffer: sb3-contrib's recurrent rollout buffer or one of :mod:`ctm_rl.sb3.buffers`.
    :param n_envs: envs to keep; a buffer with fewer gives all of its own.
    """
    if buffer.generator_ready:
        raise ValueError("the rollout buffer has been sampled; take the probe before the update")
    n_envs = min(n_envs, buffer.n_envs)

    def sequences(array: np.ndarray) -> torch.Tensor:
        """``(n_steps, envs, ...)`` -> ``(n_envs * n_steps, ...)``, env-major."""
        kept = np.swapaxes(array[:, :n_envs], 0, 1)
        return torch.as_tensor(kept.reshape(-1, *kept.shape[2:]).copy(), device=buffer.device)

    observations = buffer.observations
    probe_observations: PyTorchObs = ({key: sequences(value) for key, value in observations.items()}
                                      if isinstance(observations, dict) else sequences(observations))
    if isinstance(buffer, (CtmRolloutBuffer, CtmDictRolloutBuffer)):
        # The traces at each env's first step: flattened row env * n_steps, as the CTM buffers read them.
        states = buffer._first_traces(np.arange(n_envs) * buffer.buffer_size).pi  # (1, n, D * M) each
    else:
        states = tuple(torch.as_tensor(state[0][:, :n_envs].copy(), device=buffer.device)
                       for state in (buffer.hidden_states_pi, buffer.cell_states_pi))  # (layers, n, hidden) each
    return RolloutProbe(probe_observations, sequences(buffer.episode_starts).float(), states)


def policy_outputs(distribution: Distribution) -> torch.Tensor:
    """What an action distribution says per state, ``(N, k)``: centred logits of each categorical action
    dimension, logits of binary ones, means of continuous ones, side by side."""
    parts = distribution.distribution
    outputs = []
    for part in parts if isinstance(parts, list) else [parts]:
        if isinstance(part, Categorical):
            outputs.append(part.logits - part.logits.mean(dim=-1, keepdim=True))
        elif isinstance(part, Bernoulli):
            outputs.append(part.logits)
        else:
            outputs.append(part.mean)
    return torch.cat([output.reshape(len(output), -1) for output in outputs], dim=1)


class UpdateCoherence:
    """Measures each update's change of a policy's outputs on a fixed probe of states, and the cosine between
    consecutive changes (see the module docstring).

    :param n_envs: envs of the first rollout whose steps form the probe; 0 measures nothing.
    """

    def __init__(self, n_envs: int) -> None:
        self.n_envs = n_envs
        self.probe: RolloutProbe | None = None
        self.outputs: torch.Tensor | None = None
        self.change: torch.Tensor | None = None

    def before_update(self, buffer: RolloutBuffer, policy: RecurrentActorCriticPolicy) -> None:
        """Take the probe from the first rollout, with the policy's outputs on it; later calls do nothing."""
        if self.probe is None and self.n_envs > 0:
            self.probe = rollout_probe(buffer, self.n_envs)
            self.outputs = self._outputs(policy)

    def after_update(self, policy: RecurrentActorCriticPolicy) -> dict[str, float]:
        """``{"update_change"}``, with ``"update_coherence"`` from the second update on; empty without a probe."""
        if self.probe is None:
            return {}
        outputs = self._outputs(policy)
        change = (outputs - self.outputs).flatten()
        summary = change_measures(change, self.change, "update_change", "update_coherence")
        self.outputs, self.change = outputs, change
        return summary

    def _outputs(self, policy: RecurrentActorCriticPolicy) -> torch.Tensor:
        """The policy's outputs on the probe, ``(n * n_steps, k)``, computed in evaluation mode (no dropout, so no
        random numbers are drawn) and restored to the mode it was in."""
        training = policy.training
        policy.set_training_mode(False)
        try:
            with torch.no_grad():
                distribution, _ = policy.get_distribution(self.probe.observations, self.probe.states,
                                                          self.probe.episode_starts)
        finally:
            policy.set_training_mode(training)
        return policy_outputs(distribution)


def change_measures(change: torch.Tensor, previous: torch.Tensor | None, move_key: str,
                    coherence_key: str) -> dict[str, float]:
    """``{move_key: RMS of change}``, with ``{coherence_key: cosine between change and previous}`` when there is a
    previous change; both changes flat and of one size."""
    measures = {move_key: float(change.square().mean().sqrt())}
    if previous is not None:
        measures[coherence_key] = float(torch.nn.functional.cosine_similarity(change, previous, dim=0))
    return measures


def part_vectors(policy: nn.Module) -> dict[str, torch.Tensor]:
    """Each part's trainable parameters, flattened into one detached copy, ``{part: (size,)}``; a parameter shared
    between modules counts once."""
    return {part: torch.cat([parameter.detach().flatten() for parameter in parameters])  # cat copies
            for part, parameters in trainable_parameters_by_part(policy).items()}


class ParameterMoves:
    """Measures each update's change of every part's parameters, and the cosine between consecutive changes (see
    the module docstring). Keeps two copies of the parameters: those after the last update and its change."""

    def __init__(self) -> None:
        self.parameters: dict[str, torch.Tensor] | None = None
        self.changes: dict[str, torch.Tensor] | None = None

    def before_update(self, policy: nn.Module) -> None:
        """Take the parameters before the first update; later calls do nothing, since the parameters after one
        update are those before the next."""
        if self.parameters is None:
            self.parameters = part_vectors(policy)

    def after_update(self, policy: nn.Module) -> dict[str, float]:
        """``{"param_move/<part>"}`` for every part, with ``"param_coherence/<part>"`` from the second update on."""
        parameters = part_vectors(policy)
        changes = {part: parameters[part] - self.parameters[part] for part in parameters}
        summary = {}
        for part, change in changes.items():
            summary.update(change_measures(change, None if self.changes is None else self.changes[part],
                                           f"param_move/{part}", f"param_coherence/{part}"))
        self.parameters, self.changes = parameters, changes
        return summary
