"""Rollout buffers that store a shared CTM's traces once.

sb3-contrib's recurrent buffers keep four state tensors per step: (h, c) for the actor and again for the
critic. A CTM shared by actor and critic has one pair of traces, and the sequence replay reads only the
actor's copy (``CtmPolicy`` ignores the critic slot when the CTM is shared), so these buffers store the
actor's pair and give the critic slot a zero-width placeholder: half the memory per env step.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from sb3_contrib.common.recurrent.buffers import RecurrentDictRolloutBuffer, RecurrentRolloutBuffer
from sb3_contrib.common.recurrent.type_aliases import RNNStates
from stable_baselines3.common.buffers import DictRolloutBuffer, RolloutBuffer


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


class SharedTraceRolloutBuffer(_SharedTraces, RecurrentRolloutBuffer):
    """``RecurrentRolloutBuffer`` storing one set of traces per step."""

    _plain_buffer = RolloutBuffer


class SharedTraceDictRolloutBuffer(_SharedTraces, RecurrentDictRolloutBuffer):
    """``RecurrentDictRolloutBuffer`` storing one set of traces per step."""

    _plain_buffer = DictRolloutBuffer
