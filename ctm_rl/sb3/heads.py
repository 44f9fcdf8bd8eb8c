"""The initial scale of the actor and critic heads, one rule for both recurrent policies.

SB3 initialises the heads orthogonally: hidden layers with gain ``sqrt(2)``, the action head's output layer with
gain 0.01 (so that the first policy is near uniform whatever the features) and the value head's with gain 1. The
CTM reference's heads use gain 1 for every layer. The gradient of the policy's loss reaches the recurrent core
through the action layer, so with a core shared by actor and critic the action gain also sets the actor's share
of the core's gradient against the critic's. ``hidden_gain`` and ``action_gain`` choose the first two.
"""

from __future__ import annotations

import math
from functools import partial
from typing import Any

from stable_baselines3.common.policies import ActorCriticPolicy

from ctm_rl.errors import ConfigError

SB3_HIDDEN_GAIN = math.sqrt(2)
"""SB3's orthogonal-initialisation gain of the heads' hidden layers (``ActorCriticPolicy._build``)."""
SB3_ACTION_GAIN = 0.01
"""SB3's orthogonal-initialisation gain of the action head's output layer."""


def check_head_gains(hidden_gain: Any, action_gain: Any, ortho_init: bool) -> None:
    """Raise :class:`ConfigError` for a gain that is not a positive number, or one set away from SB3's while
    ``ortho_init=False`` leaves nothing for it to scale."""
    for name, gain, default in (("hidden_gain", hidden_gain, SB3_HIDDEN_GAIN),
                                ("action_gain", action_gain, SB3_ACTION_GAIN)):
        if isinstance(gain, bool) or not isinstance(gain, (int, float)) or gain <= 0:
            raise ConfigError(f"{name} must be a number > 0, got {gain!r}. Fix: {default:.3g} (SB3's) or 1.0 "
                              f"(the CTM reference's).")
        if gain != default and not ortho_init:
            raise ConfigError(f"{name} is a gain of the orthogonal initialisation, which ortho_init=False turns off. "
                              f"Fix: drop {name}, or set ortho_init=true.")


def apply_head_gains(policy: ActorCriticPolicy, hidden_gain: float, action_gain: float) -> None:
    """Re-initialise ``policy``'s heads orthogonally with the gains that differ from SB3's, after SB3's ``_build``;
    a no-op at SB3's gains (so that the defaults draw no extra random numbers) or without ``ortho_init``."""
    if not policy.ortho_init:
        return
    if hidden_gain != SB3_HIDDEN_GAIN:
        policy.mlp_extractor.apply(partial(policy.init_weights, gain=hidden_gain))
    if action_gain != SB3_ACTION_GAIN:
        policy.action_net.apply(partial(policy.init_weights, gain=action_gain))
