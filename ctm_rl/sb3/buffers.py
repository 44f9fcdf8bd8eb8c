"""Rollout buffers for ``CtmPolicy``: padding marked for packed replay, and traces stored once, in place.

- **Padding marks.** sb3-contrib pads every minibatch sequence to the longest one, and a padded step looks
  like a real step that starts no episode. These buffers set ``episode_starts`` to ``PADDING`` (-1) on padded
  steps, so that ``CtmPolicy`` can skip them instead of computing them (the loss masks them out either way).
- **Traces stored once.** sb3-contrib's recurrent buffers keep four state tensors per step: (h, c) for the
  actor and again for the critic. A CTM shared by actor and critic has one pair of traces, and the sequence
  replay reads only the actor's pair (``CtmPolicy`` ignores the critic slot when the CTM is shared), so with
  ``share_traces`` the buffers store that pair alone and give the critic slot a zero-width placeholder:
  half the memory per env step.
- **Traces stored in place.** The traces are by far the largest part of the buffer (10 KiB per env step on
  CartPole, 40 KiB on FourRooms). sb3-contrib allocates its state arrays afresh at every rollout and copies
  them into a flattened order before the first minibatch, so the operating system maps and zeroes hundreds of
  MiB per rollout, twice. These buffers allocate the trace store once, write each step's traces into it,
  and read the sequences' first steps straight from it.
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

from ctm_rl.sb3.policy import PADDING


class _CtmStorage:
    """Overrides of the recurrent buffers' state storage and minibatch sampling; ``_plain_buffer`` is the
    non-recurrent base whose storage they keep.

    The sampling gives the samples sb3-contrib's buffers give (sequences cut at episode starts and env changes,
    padded to the longest and flattened), built with one array operation per field instead of one tensor per
    sequence and field, with padded steps marked ``PADDING``, and with the traces read for the sequences'
    first steps only (sb3-contrib copies the states of every step of the minibatch first).

    :param share_traces: store the actor's traces only (a CTM shared by actor and critic); otherwise the
        critic's too.
    """

    _plain_buffer: type
    buffer_size: int
    hidden_state_shape: tuple[int, int, int, int]
    episode_starts: np.ndarray
    observations: np.ndarray | dict[str, np.ndarray]
    pos: int

    def __init__(self, *args: Any, share_traces: bool = True, **kwargs: Any) -> None:
        self.share_traces = share_traces
        self.traces: np.ndarray | None = None
        super().__init__(*args, **kwargs)  # type: ignore[call-arg]  # the recurrent buffer's own arguments

    def reset(self) -> None:
        self._plain_buffer.reset(self)
        n_steps, _, n_envs, trace_size = self.hidden_state_shape  # CtmPolicy's state layout has one layer
        # (actor pre, actor post[, critic pre, critic post], step, env, D * M); every slot is written before the
        # buffer is read, so a store kept from the last rollout needs no zeroing.
        shape = (2 if self.share_traces else 4, n_steps, n_envs, trace_size)
        if self.traces is None or self.traces.shape != shape:
            self.traces = np.zeros(shape, dtype=np.float32)
        # sb3-contrib's get() flattens these four; at zero width that costs nothing.
        placeholder = np.zeros((n_steps, 1, n_envs, 0), dtype=np.float32)
        self.hidden_states_pi = self.cell_states_pi = self.hidden_states_vf = self.cell_states_vf = placeholder

    def add(self, *args: Any, lstm_states: RNNStates, **kwargs: Any) -> None:
        # The policy hands its traces over as transposed views; torch's copy into the store reorders them about
        # twice as fast as numpy's assignment. zip stops after the actor's pair when the traces are shared.
        for store, trace in zip(self.traces, (*lstm_states.pi, *lstm_states.vf)):
            torch.from_numpy(store[self.pos]).copy_(trace[0])  # (1, n_envs, D * M), one layer
        self._plain_buffer.add(self, *args, **kwargs)

    def _first_traces(self, rows: np.ndarray) -> RNNStates:
        """The stored traces at the flattened buffer rows ``rows`` (``env * n_steps + step``, the order
        sb3-contrib samples in), each ``(1, len(rows), D * M)``; a zero-width critic pair when shared."""
        envs, steps = np.divmod(rows, self.buffer_size)
        traces = torch.as_tensor(self.traces[:, steps, envs], device=self.device).unsqueeze(1)  # (2|4, 1, n, DM)
        if self.share_traces:
            placeholder = traces.new_zeros(1, len(rows), 0)
            return RNNStates((traces[0], traces[1]), (placeholder, placeholder))
        return RNNStates((traces[0], traces[1]), (traces[2], traces[3]))

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
            lstm_states=self._first_traces(batch_inds[first]),
            episode_starts=pad(episode_starts, fill=PADDING),
            mask=pad(np.ones(len(batch_inds), dtype=np.float32)),
        )


class CtmRolloutBuffer(_CtmStorage, RecurrentRolloutBuffer):
    """``RecurrentRolloutBuffer`` for ``CtmPolicy``: padded steps marked, traces stored once and in place."""

    _plain_buffer = RolloutBuffer


class CtmDictRolloutBuffer(_CtmStorage, RecurrentDictRolloutBuffer):
    """``RecurrentDictRolloutBuffer`` for ``CtmPolicy``: padded steps marked, traces stored once and in place."""

    _plain_buffer = DictRolloutBuffer
