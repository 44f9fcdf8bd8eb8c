"""``CtmPPO``: sb3-contrib's ``RecurrentPPO`` with rollout buffers made for ``CtmPolicy``.

``RecurrentPPO(CtmPolicy, env)`` works unchanged; ``CtmPPO`` only swaps in a buffer from
:mod:`ctm_rl.sb3.buffers` when the policy is a ``CtmPolicy``: one that marks the padding of replay minibatches,
so the CTM computes real steps only, keeps its trace store from one rollout to the next instead of
allocating it afresh, and, when one CTM serves actor and critic, stores its traces once, halving the buffer's
state memory. The learning is the same up to float rounding. Any other policy gets
``RecurrentPPO``'s own buffer.
"""

from __future__ import annotations

from typing import Any

from gymnasium import spaces
from sb3_contrib import RecurrentPPO

from ctm_rl.envs.normalization import reward_statistics
from ctm_rl.interrupts import signals_held
from ctm_rl.sb3.adaptive_lr import DEFAULT_BOUNDS, KlAdaptiveRate, check_adaptive_rate
from ctm_rl.sb3.buffers import CtmDictRolloutBuffer, CtmRolloutBuffer
from ctm_rl.sb3.coherence import ParameterMoves, UpdateCoherence
from ctm_rl.sb3.diagnostics import GradientNorms
from ctm_rl.sb3.policy import CtmPolicy


class CtmPPO(RecurrentPPO):
    """``RecurrentPPO`` with packed CTM replay and shared traces stored once (see the module docstring), which
    also logs the diagnostics of :mod:`ctm_rl.sb3.diagnostics` and :mod:`ctm_rl.sb3.coherence` with each update,
    for any recurrent policy, applies a policy's per-part learning-rate multiples (``lr_scales``,
    :mod:`ctm_rl.sb3.parts`), and after each update lets a ``CtmPolicy``'s output standardisers
    (``standardize_output``) take up the rollout's statistics. With ``lr_kl_target`` it scales the learning rate
    to keep each update's approximate KL near that target (:mod:`ctm_rl.sb3.adaptive_lr`).

    :param lr_kl_target: the approximate KL per update that the learning rate's multiple follows; ``None`` (the
        default) keeps the schedule's rate. Logged as ``train/lr_kl_scale``; ``train/learning_rate`` is the rate
        applied.
    :param lr_kl_bounds: ``(low, high)``, the range of that multiple of the schedule's rate.
    :param update_probe_envs: envs of the first rollout whose steps probe how consecutive updates move the policy
        (``train/update_change``, ``train/update_coherence``); 0 turns the probe off. It costs one replay of
        ``update_probe_envs * n_steps`` steps without gradients per update and changes nothing in training.
    Other arguments are ``RecurrentPPO``'s.
    """

    def __init__(self, *args: Any, lr_kl_target: float | None = None,
                 lr_kl_bounds: tuple[float, float] = DEFAULT_BOUNDS, update_probe_envs: int = 4, **kwargs: Any) -> None:
        check_adaptive_rate(lr_kl_target, lr_kl_bounds)
        self.lr_kl_target, self.lr_kl_bounds = lr_kl_target, tuple(float(bound) for bound in lr_kl_bounds)
        self.lr_kl_scale = 1.0  # the learning rate's current multiple; a plain number, saved and restored
        self.update_probe_envs = update_probe_envs
        super().__init__(*args, **kwargs)

    def train(self) -> None:
        self.update_coherence.before_update(self.rollout_buffer, self.policy)
        self.parameter_moves.before_update(self.policy)
        norms = GradientNorms(self.policy, self.policy.optimizer, self.logger.record_mean)
        try:
            super().train()
        finally:
            norms.remove()
        for key, value in self.update_coherence.after_update(self.policy).items():
            self.logger.record(f"train/{key}", value)
        for key, value in self.parameter_moves.after_update(self.policy).items():
            self.logger.record(key, value)
        if self.adaptive_rate is not None:
            approx_kl = float(self.logger.name_to_value.get("train/approx_kl", float("nan")))
            self.lr_kl_scale = self.adaptive_rate.next_scale(self.lr_kl_scale, approx_kl)
        if isinstance(self.policy, CtmPolicy):
            self.policy.commit_output_statistics()
            for key, value in self.policy.diagnostics().items():
                self.logger.record(f"ctm/{key}", value)

    def _update_learning_rate(self, optimizers) -> None:
        """SB3's schedule step, then the KL-adapted multiple (``lr_kl_target``) and each parameter group's
        ``lr_scale`` (a policy's ``lr_scales``) applied."""
        super()._update_learning_rate(optimizers)
        scale = 1.0
        if self.adaptive_rate is not None:
            scale = self.lr_kl_scale
            self.logger.record("train/learning_rate", self.lr_schedule(self._current_progress_remaining) * scale)
            self.logger.record("train/lr_kl_scale", scale)
        for optimizer in optimizers if isinstance(optimizers, list) else [optimizers]:
            for group in optimizer.param_groups:
                group["lr"] *= scale * group.get("lr_scale", 1.0)

    def save(self, path, exclude=None, include=None) -> None:
        """SB3's save, which also records the running reward statistics of a reward-normalising training env as
        plain JSON numbers (``reward_statistics``), so that a run resumed from this save continues them."""
        self.reward_statistics = reward_statistics(self.get_vec_normalize_env())
        with signals_held():  # an interrupt waits for the save, which it would otherwise damage
            super().save(path, exclude, include)

    def _excluded_save_params(self) -> list[str]:
        # The probe and the parameter copies are taken anew after a load and the rule rebuilt from lr_kl_target; none
        # is data to save.
        return [*super()._excluded_save_params(), "update_coherence", "parameter_moves", "adaptive_rate"]

    def _setup_model(self) -> None:
        super()._setup_model()
        self.update_coherence = UpdateCoherence(self.update_probe_envs)
        self.parameter_moves = ParameterMoves()
        self.adaptive_rate = (None if self.lr_kl_target is None
                              else KlAdaptiveRate(self.lr_kl_target, *self.lr_kl_bounds))
        if isinstance(self.policy, CtmPolicy):
            buffer_class = CtmDictRolloutBuffer if isinstance(self.observation_space, spaces.Dict) else CtmRolloutBuffer
            self.rollout_buffer = buffer_class(
                self.n_steps, self.observation_space, self.action_space, self.rollout_buffer.hidden_state_shape,
                self.device, gamma=self.gamma, gae_lambda=self.gae_lambda, n_envs=self.n_envs,
                share_traces=self.policy.critic_ctm is None,
            )
