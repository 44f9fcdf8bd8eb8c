"""Training diagnostics that SB3 does not log, recorded through its logger (and so to TensorBoard).

- ``grad_norm/<part>``: the gradient norm of each part of the policy (:func:`parameter_part`), before gradient
  clipping, averaged over the update's minibatches; for CTM and LSTM policies alike.
- ``ctm/sync_abs_mean``, ``ctm/sync_rms``: the scale of the CTM's output synchronisation over the last rollout
  (what the actor and critic heads read); ``ctm/sync_rms_at_reset``: its RMS at the steps that start an episode,
  which read the learned start traces; against ``sync_rms`` it shows how far an episode's first step falls short.
- ``ctm/decay_mean``, ``ctm/decay_min``, ``ctm/decay_max``: the synchronisation's decay rates in use.
- ``ctm/nlm_temperature_<i>``: the neuron-level models' learned temperatures (``nlm_temperature`` set), layer by
  layer.

SB3's own ``train/`` keys already cover the policy entropy, explained variance, value loss, approximate KL
and clip fraction; :mod:`ctm_rl.sb3.coherence` adds whether consecutive updates move the policy the same way.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any, Callable

import torch
from torch import nn

from ctm_rl.sb3.parts import trainable_parameters_by_part


class GradientNorms:
    """Records each part's gradient norm before clipping (``grad_norm/<part>``) and its root mean square per
    parameter (``grad_rms/<part>``, to set against Adam's epsilon), once per optimizer step, as a mean over the
    update.

    Every parameter's squared gradient norm is added up as backward produces it; the optimizer's step pre-hook
    turns the sums into norms and records them. :meth:`remove` detaches the hooks.

    :param policy: the policy whose parameters are watched.
    :param optimizer: its optimizer.
    :param record_mean: ``logger.record_mean``-like function, called as ``record_mean(key, value)``.
    """

    def __init__(self, policy: nn.Module, optimizer: torch.optim.Optimizer,
                 record_mean: Callable[[str, float], Any]) -> None:
        self.record_mean = record_mean
        self.squares: dict[str, torch.Tensor] = defaultdict(lambda: torch.zeros(()))
        self.sizes: dict[str, int] = {}
        self.handles = [optimizer.register_step_pre_hook(self._flush)]
        for part, parameters in trainable_parameters_by_part(policy).items():
            self.sizes[part] = sum(parameter.numel() for parameter in parameters)
            self.handles.extend(parameter.register_post_accumulate_grad_hook(self._accumulator(part))
                                for parameter in parameters)

    def _accumulator(self, part: str) -> Callable[[torch.Tensor], None]:
        def accumulate(parameter: torch.Tensor) -> None:
            self.squares[part] = self.squares[part].to(parameter.grad.device) + parameter.grad.detach().square().sum()
        return accumulate

    def _flush(self, *_: Any) -> None:
        for part, square in self.squares.items():
            self.record_mean(f"grad_norm/{part}", float(square.sqrt()))
            self.record_mean(f"grad_rms/{part}", float((square / self.sizes[part]).sqrt()))
        self.squares.clear()

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


class OutputScale:
    """Running sums of a batch of outputs' absolute values and squares, over all steps and over the steps that
    start an episode, and of each output feature, read and reset once per rollout.

    The per-feature sums give the share of the outputs' mean square that varies from step to step
    (``sync_state_share``: 1 - the squared per-feature means' average over the mean square). Near 0 the heads read
    about the same input in every state, so whatever an update does to the policy in one state it does in all.

    Kept as tensors so that adding a step costs no device synchronisation.
    """

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.abs_sum: torch.Tensor | float = 0.0
        self.square_sum: torch.Tensor | float = 0.0
        self.count = 0
        self.start_square_sum: torch.Tensor | float = 0.0
        self.start_count: torch.Tensor | float = 0.0
        self.feature_sum: torch.Tensor | float = 0.0

    def add(self, outputs: torch.Tensor, episode_starts: torch.Tensor) -> None:
        """:param outputs: ``(N, P)``.
        :param episode_starts: ``(N,)``, 1 where the step starts an episode."""
        outputs = outputs.detach()
        row_squares = outputs.square().sum(dim=-1)  # (N,)
        starts = episode_starts.detach().to(outputs.dtype)
        self.abs_sum = self.abs_sum + outputs.abs().sum()
        self.square_sum = self.square_sum + row_squares.sum()
        self.count += outputs.numel()
        self.start_square_sum = self.start_square_sum + (row_squares * starts).sum()
        self.start_count = self.start_count + starts.sum() * outputs.shape[-1]
        self.feature_sum = self.feature_sum + outputs.sum(dim=0)

    def summary(self) -> dict[str, float]:
        """``{"sync_abs_mean", "sync_rms"}`` over what was added, ``"sync_state_share"`` unless every output was
        0, and ``"sync_rms_at_reset"`` if an episode started; empty if nothing was added."""
        if not self.count:
            return {}
        mean_square = float(self.square_sum) / self.count
        summary = {"sync_abs_mean": float(self.abs_sum) / self.count, "sync_rms": mean_square ** 0.5}
        if mean_square > 0:
            feature_means = self.feature_sum * (self.feature_sum.numel() / self.count)  # sums over rows / rows: (P,)
            summary["sync_state_share"] = 1.0 - float(feature_means.square().mean()) / mean_square
        if float(self.start_count):
            summary["sync_rms_at_reset"] = (float(self.start_square_sum) / float(self.start_count)) ** 0.5
        return summary
