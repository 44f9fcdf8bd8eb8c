"""``CtmPPO``: sb3-contrib's ``RecurrentPPO`` with a rollout buffer that stores a shared CTM's traces once.

``RecurrentPPO(CtmPolicy, env)`` works unchanged; ``CtmPPO`` only swaps in :mod:`ctm_rl.buffers` when the
policy is a ``CtmPolicy`` with one CTM for actor and critic, halving the rollout buffer's state memory. The
learning is identical. Any other policy gets ``RecurrentPPO``'s own buffer.
"""

from __future__ import annotations

from gymnasium import spaces
from sb3_contrib import RecurrentPPO

from ctm_rl.buffers import SharedTraceDictRolloutBuffer, SharedTraceRolloutBuffer
from ctm_rl.policy import CtmPolicy


class CtmPPO(RecurrentPPO):
    """``RecurrentPPO`` whose rollout buffer stores a shared CTM's traces once (see the module docstring)."""

    def _setup_model(self) -> None:
        super()._setup_model()
        if isinstance(self.policy, CtmPolicy) and self.policy.critic_ctm is None:
            buffer_class = (SharedTraceDictRolloutBuffer if isinstance(self.observation_space, spaces.Dict)
                            else SharedTraceRolloutBuffer)
            self.rollout_buffer = buffer_class(
                self.n_steps, self.observation_space, self.action_space, self.rollout_buffer.hidden_state_shape,
                self.device, gamma=self.gamma, gae_lambda=self.gae_lambda, n_envs=self.n_envs,
            )
