"""A learning rate that follows a KL target: each update's step size adapted to how far the last one moved.

PPO's step is set by the learning rate, while what matters for learning is how far an update moves the policy,
measured by the approximate KL divergence between the rollout's policy and the updated one. Two policies given
the same rate can move very differently: a policy whose heads read a small input (a fresh CTM's synchronisation)
moves little per step of its parameters. :class:`KlAdaptiveRate` multiplies the schedule's rate by a factor that
grows after an update whose KL fell below half the target and shrinks after one above twice the target, the rule
of rl_games' ``adaptive`` schedule, applied as a multiple of the schedule so that its decay still holds. Bounds
on the multiple say where it may act: ``(1, 10)`` only ever raises the rate, for policies that start too slowly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

from ctm_rl.errors import ConfigError
from ctm_rl.model.config import is_positive_number

STEP_FACTOR = 1.5
"""How much one update's KL can change the rate's multiple, up or down."""
DEFAULT_BOUNDS = (0.1, 10.0)
"""The multiple's range when none is given: at most ten times smaller or larger than the schedule's rate."""


def check_adaptive_rate(target: Any, bounds: Any) -> None:
    """Raise :class:`ConfigError` unless ``target`` is ``None`` or a number > 0 and ``bounds`` is a pair of numbers
    ``low <= 1 <= high`` with ``low > 0``."""
    if target is not None and not is_positive_number(target):
        raise ConfigError(f"lr_kl_target must be a KL divergence > 0 (or null to keep the schedule's rate), got "
                          f"{target!r}. Fix: for example algo.lr_kl_target=0.01.")
    pair = isinstance(bounds, Sequence) and not isinstance(bounds, str) and len(bounds) == 2
    if not (pair and all(is_positive_number(bound) for bound in bounds) and bounds[0] <= 1.0 <= bounds[1]):
        raise ConfigError(f"lr_kl_bounds must be [low, high] with 0 < low <= 1 <= high, got {bounds!r}. "
                          f"Fix: for example algo.lr_kl_bounds=[1,10] to only ever raise the rate.")


@dataclass(frozen=True)
class KlAdaptiveRate:
    """The rule that adapts the learning rate's multiple after each update to keep its approximate KL near
    ``target``. It holds no state: the multiple itself is the model's (a plain number saved with it, so that a
    resumed run continues it).

    :param target: the approximate KL per update aimed at.
    :param low: the smallest multiple of the schedule's rate.
    :param high: the largest multiple of the schedule's rate.
    """

    target: float
    low: float = DEFAULT_BOUNDS[0]
    high: float = DEFAULT_BOUNDS[1]

    def __post_init__(self) -> None:
        check_adaptive_rate(self.target, (self.low, self.high))

    def next_scale(self, scale: float, approx_kl: float) -> float:
        """The multiple for the next update, given the current one and the last update's approximate KL. A KL
        that is not a finite number (an update that took no step) leaves the multiple as it was."""
        if math.isfinite(approx_kl):
            if approx_kl < self.target / 2:
                scale *= STEP_FACTOR
            elif approx_kl > self.target * 2:
                scale /= STEP_FACTOR
        return min(max(scale, self.low), self.high)
