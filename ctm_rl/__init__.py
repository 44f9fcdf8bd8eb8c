"""ctm-rl: the Continuous Thought Machine as a recurrent policy for Stable-Baselines3."""

from ctm_rl.ctm import ContinuousThoughtMachine
from ctm_rl.encoders import ObservationEncoder
from ctm_rl.errors import CheckpointError, ConfigError, CtmRlError, UnknownEnvError, UnsupportedSpaceError
from ctm_rl.policy import CtmPolicy

__all__ = [
    "CheckpointError",
    "ConfigError",
    "ContinuousThoughtMachine",
    "CtmPolicy",
    "CtmRlError",
    "ObservationEncoder",
    "UnknownEnvError",
    "UnsupportedSpaceError",
]
__version__ = "0.1.0"
