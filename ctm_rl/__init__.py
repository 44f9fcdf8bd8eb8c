"""ctm-rl: the Continuous Thought Machine as a recurrent policy for Stable-Baselines3.

Layers, bottom up: :mod:`ctm_rl.model` (the CTM in plain torch), :mod:`ctm_rl.envs` (environment factories and
wrappers), :mod:`ctm_rl.sb3` (the policy, ``CtmPPO``, buffers, encoders and the LSTM baseline), and the runners
(:mod:`ctm_rl.train`, :mod:`ctm_rl.compare`, :mod:`ctm_rl.bench`) with their configuration (:mod:`ctm_rl.config`).

The names below are imported on first use, so that ``import ctm_rl.model`` does not load Stable-Baselines3.
"""

from __future__ import annotations

import importlib
from typing import Any

from ctm_rl.errors import (CheckpointError, ConfigError, CtmRlError, RunBusyError, UnknownEnvError,
                           UnsupportedSpaceError)

_LAZY = {
    "ContinuousThoughtMachine": "ctm_rl.model.ctm",
    "CtmConfig": "ctm_rl.model.config",
    "CtmPolicy": "ctm_rl.sb3.policy",
    "CtmPPO": "ctm_rl.sb3.ppo",
    "ObservationEncoder": "ctm_rl.sb3.encoders",
    "make_env": "ctm_rl.envs",
}

__all__ = [
    "CheckpointError",
    "ConfigError",
    "ContinuousThoughtMachine",
    "CtmConfig",
    "CtmPPO",
    "CtmPolicy",
    "CtmRlError",
    "ObservationEncoder",
    "RunBusyError",
    "UnknownEnvError",
    "UnsupportedSpaceError",
    "make_env",
]
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'ctm_rl' has no attribute {name!r}")
