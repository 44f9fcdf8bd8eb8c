"""Rollout buffers for ``CtmPolicy``: padding marked for packed replay, and a shared CTM's traces stored once.

- **Padding marks.** sb3-contrib pads every minibatch sequence to the longest one, and a padded step looks
  like a real step that starts no episode. These buffers set ``episode_starts`` to ``PADDING`` (-1) on padded
  steps, so that ``CtmPolicy`` can skip them instead of computing them (the loss masks them out either way).
- **Shared traces.** sb3-contrib's recurrent buffers keep four state tensors per step: (h, c) for the actor and
  again for the critic. A CTM shared by actor and critic has one pair of traces, and the sequence replay reads
  only the actor's copy (``CtmPolicy`` ignores the critic slot when the CTM is shared), so the shared-trace
  buffers store the actor's pair and give the critic slot a zero-width placeholder: half the memory per env
  step.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from sb3_contrib.common.recurrent.buffers import RecurrentDictRolloutBuffer, RecurrentRolloutBuffer
from sb3_contrib.common.recurrent.type_aliases import (
    RecurrentDictRolloutBufferSamples,
    RecurrentRolloutBufferSamples,
    RNNStates,
)
from stable_baselines3.common.buffers import DictRolloutBuffer, RolloutBuffer
from stable_baselines3.common.vec_env import VecNormalize

from ctm_rl.policy import PADDING


class _MarksPadding:
    """Override of the recurrent buffers' minibatch sampling.

    It gives the samples sb3-contrib's buffers give (sequences cut at episode starts and env changes, padded
    to the longest and flattened), built with one array operation per field instead of one tensor per
    sequence and field, with padded steps marked ``PADDING``, and with the recurrent states read for the
    sequences' first steps only (sb3-contrib copies them for every step of the minibatch first).
    """

    episode_starts: np.ndarray
    observations: np.ndarray | dict[str, np.ndarray]

    def _get_samples(self, batch_inds: np.ndarray, env_change: np.ndarray, env: VecNormalize | None = None) -> Any:
        # --- Sequences: a new one wherever an episode starts or the data switches env ---
        episode_starts = self.episode_starts[batch_inds].ravel()
        seq_start = np.logical_or(episode_starts, env_change[batch_inds].ravel())
        seq_start[0] = True
        first = np.flatnonzero(seq_start)  # (n_seq,) each sequence's first step in the minibatch
        sequence = np.cumsum(seq_start) - 1  # (batch,) the sequence of every step
        position = np.arange(len(batch_inds)) - first[sequence]  # (batch,) its step within the sequence
        n_seq, max_length = len(first), int(position.max()) + 1
        padded_rows = sequence * max_length + position

        def pad(array: np.ndarray, fill: float = 0.0) -> torch.Tensor:
            """``(batch, ...)`` -> ``(n_seq * max_length, ...)``, sequence-major, ``fill`` after each end."""
            padded = np.full((n_seq * max_length, *array.shape[1:]), fill, dtype=array.dtype)
            padded[padded_rows] = array
            return torch.as_tensor(padded, device=self.device)

        def first_states(states: np.ndarray) -> torch.Tensor:
            """``(steps, n_layers, dim)`` -> ``(n_layers, n_seq, dim)`` at the sequences' first steps."""
            return torch.as_tensor(np.ascontiguousarray(states[batch_inds[first]].swapaxes(0, 1)), device=self.device)

        if isinstance(self.observations, dict):
            observations: Any = {key: pad(obs[batch_inds]) for key, obs in self.observations.items()}
            samples_class: Any = RecurrentDictRolloutBufferSamples
        else:
            observations = pad(self.observations[batch_inds])
            samples_class = RecurrentRolloutBufferSamples
        return samples_class(
            observations=observations,
            actions=pad(self.actions[batch_inds]),
            # Per-step scalars are stored (steps, 1) and sampled flat.
            old_values=pad(self.values[batch_inds].ravel()),
            old_log_prob=pad(self.log_probs[batch_inds].ravel()),
            advantages=pad(self.advantages[batch_inds].ravel()),
            returns=pad(self.returns[batch_inds].ravel()),
            lstm_states=RNNStates((first_states(self.hidden_states_pi), first_states(self.cell_states_pi)),
                                  (first_states(self.hidden_states_vf), first_states(self.cell_states_vf))),
            episode_starts=pad(episode_starts, fill=PADDING),
            mask=pad(np.ones(len(batch_inds), dtype=np.float32)),
        )


class _SharedTraces:
    """Overrides of the recurrent buffers' state storage; ``_plain_buffer`` is the non-recurrent base."""

    _plain_buffer: type
    hidden_state_shape: tuple[int, int, int, int]
    pos: int

    def reset(self) -> None:
        self._plain_buffer.reset(self)
        self.hidden_states_pi = np.zeros(self.hidden_state_shape, dtype=np.float32)
        self.cell_states_pi = np.zeros(self.hidden_state_shape, dtype=np.float32)
        placeholder = (*self.hidden_state_shape[:-1], 0)
        self.hidden_states_vf = np.zeros(placeholder, dtype=np.float32)
        self.cell_states_vf = np.zeros(placeholder, dtype=np.float32)

    def add(self, *args: Any, lstm_states: RNNStates, **kwargs: Any) -> None:
        # The policy hands its traces over as transposed views; torch's copy into the buffer rows reorders
        # them about twice as fast as numpy's assignment.
        torch.from_numpy(self.hidden_states_pi[self.pos]).copy_(lstm_states.pi[0])
        torch.from_numpy(self.cell_states_pi[self.pos]).copy_(lstm_states.pi[1])
        self._plain_buffer.add(self, *args, **kwargs)


class MarkedRolloutBuffer(_MarksPadding, RecurrentRolloutBuffer):
    """``RecurrentRolloutBuffer`` marking padded steps."""


class MarkedDictRolloutBuffer(_MarksPadding, RecurrentDictRolloutBuffer):
    """``RecurrentDictRolloutBuffer`` marking padded steps."""


class SharedTraceRolloutBuffer(_SharedTraces, MarkedRolloutBuffer):
    """``RecurrentRolloutBuffer`` marking padded steps and storing one set of traces per step."""

    _plain_buffer = RolloutBuffer


class SharedTraceDictRolloutBuffer(_SharedTraces, MarkedDictRolloutBuffer):
    """``RecurrentDictRolloutBuffer`` marking padded steps and storing one set of traces per step."""

    _plain_buffer = DictRolloutBuffer
