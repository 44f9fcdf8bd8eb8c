"""``CtmPPO``: sb3-contrib's ``RecurrentPPO`` with rollout buffers made for ``CtmPolicy``.

``RecurrentPPO(CtmPolicy, env)`` works unchanged; ``CtmPPO`` only swaps in a buffer from
:mod:`ctm_rl.sb3.buffers` when the policy is a ``CtmPolicy``: one that marks the padding of replay minibatches,
so the CTM computes real steps only, keeps its trace store from one rollout to the next instead of
allocating it afresh, and, when one CTM serves actor and critic, stores its traces once, halving the buffer's
state memory. The learning is the same up to float rounding. Any other policy gets
``RecurrentPPO``'s own buffer.
"""

from __future__ import annotations

from gymnasium import spaces
from sb3_contrib import RecurrentPPO

from ctm_rl.envs.normalization import reward_statistics
from ctm_rl.interrupts import signals_held
from ctm_rl.sb3.buffers import CtmDictRolloutBuffer, CtmRolloutBuffer
from ctm_rl.sb3.diagnostics import GradientNorms
from ctm_rl.sb3.policy import CtmPolicy


class CtmPPO(RecurrentPPO):
    """``RecurrentPPO`` with packed CTM replay and shared traces stored once (see the module docstring), which
    also logs the diagnostics of :mod:`ctm_rl.sb3.diagnostics` with each update, for any recurrent policy, applies
    a policy's per-part learning-rate multiples (``lr_scales``, :mod:`ctm_rl.sb3.parts`), and after each update
    lets a ``CtmPolicy``'s output standardisers (``standardize_output``) take up the rollout's statistics."""

    def train(self) -> None:
        norms = GradientNorms(self.policy, self.policy.optimizer, self.logger.record_mean)
        try:
            super().train()
        finally:
            norms.remove()
        if isinstance(self.policy, CtmPolicy):
            self.policy.commit_output_statistics()
            for key, value in self.policy.diagnostics().items():
                self.logger.record(f"ctm/{key}", value)

    def _update_learning_rate(self, optimizers) -> None:
        """SB3's schedule step, then each parameter group's ``lr_scale`` (a policy's ``lr_scales``) applied."""
        super()._update_learning_rate(optimizers)
        for optimizer in optimizers if isinstance(optimizers, list) else [optimizers]:
            for group in optimizer.param_groups:
                group["lr"] *= group.get("lr_scale", 1.0)

    def save(self, path, exclude=None, include=None) -> None:
        """SB3's save, which also records the running reward statistics of a reward-normalising training env as
        plain JSON numbers (``reward_statistics``), so that a run resumed from this save continues them."""
        self.reward_statistics = reward_statistics(self.get_vec_normalize_env())
        with signals_held():  # an interrupt waits for the save, which it would otherwise damage
            super().save(path, exclude, include)

    def _setup_model(self) -> None:
        super()._setup_model()
        if isinstance(self.policy, CtmPolicy):
            buffer_class = CtmDictRolloutBuffer if isinstance(self.observation_space, spaces.Dict) else CtmRolloutBuffer
            self.rollout_buffer = buffer_class(
                self.n_steps, self.observation_space, self.action_space, self.rollout_buffer.hidden_state_shape,
                self.device, gamma=self.gamma, gae_lambda=self.gae_lambda, n_envs=self.n_envs,
                share_traces=self.policy.critic_ctm is None,
            )
