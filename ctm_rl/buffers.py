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
from sb3_contrib.common.recurrent.buffers import RecurrentDictRolloutBuffer, RecurrentRolloutBuffer
from sb3_contrib.common.recurrent.type_aliases import RNNStates
from stable_baselines3.common.buffers import DictRolloutBuffer, RolloutBuffer
from stable_baselines3.common.vec_env import VecNormalize

from ctm_rl.policy import PADDING


class _MarksPadding:
    """Override of the recurrent buffers' minibatch sampling that marks padded steps with ``PADDING``."""

    def _get_samples(self, batch_inds: np.ndarray, env_change: np.ndarray, env: VecNormalize | None = None) -> Any:
        samples = super()._get_samples(batch_inds, env_change, env)
        # Padded steps have episode start 0 and mask 0; real steps keep their episode starts.
        padding = 1.0 - samples.mask
        return samples._replace(episode_starts=samples.episode_starts * samples.mask + PADDING * padding)


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
        self.hidden_states_pi[self.pos] = lstm_states.pi[0].cpu().numpy()
        self.cell_states_pi[self.pos] = lstm_states.pi[1].cpu().numpy()
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
