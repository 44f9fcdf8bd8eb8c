"""The initial scale of the actor's output layer, one rule for both recurrent policies.

SB3 initialises the action head's output layer orthogonally with gain 0.01, so that the first policy is near
uniform whatever the features. The gradient of the policy's loss reaches the recurrent core through that layer,
so with a core shared by actor and critic (whose output layer has gain 1) the gain also sets the actor's share of
the core's gradient. ``action_gain`` chooses it.
"""

from __future__ import annotations

from functools import partial
from typing import Any

from stable_baselines3.common.policies import ActorCriticPolicy

from ctm_rl.errors import ConfigError

SB3_ACTION_GAIN = 0.01
"""SB3's orthogonal-initialisation gain of the action head's output layer (``ActorCriticPolicy._build``)."""


def check_action_gain(gain: Any, ortho_init: bool) -> None:
    """Raise :class:`ConfigError` for an ``action_gain`` that is not a positive number, or that is set while
    ``ortho_init=False`` leaves nothing for it to scale."""
    if isinstance(gain, bool) or not isinstance(gain, (int, float)) or gain <= 0:
        raise ConfigError(f"action_gain must be a number > 0, got {gain!r}. Fix: 0.01 (SB3's) or, say, 1.0.")
    if gain != SB3_ACTION_GAIN and not ortho_init:
        raise ConfigError("action_gain is the gain of the orthogonal initialisation, which ortho_init=False turns off. "
                          "Fix: drop action_gain, or set ortho_init=true.")


def apply_action_gain(policy: ActorCriticPolicy, gain: float) -> None:
    """Re-initialise ``policy``'s action output layer orthogonally with ``gain``, after SB3's ``_build``; a no-op at
    SB3's gain (so that the default draws no extra random numbers) or without ``ortho_init``."""
    if policy.ortho_init and gain != SB3_ACTION_GAIN:
        policy.action_net.apply(partial(policy.init_weights, gain=gain))
