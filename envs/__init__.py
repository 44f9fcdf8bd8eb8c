"""Environment factories, wrappers and plugging for ctm-rl."""

from envs.factory import make_env, make_single_env
from envs.registry import ResolvedEnv, resolve_env
from envs.wrappers import MaskVelocity, SymbolicGridBounds

__all__ = ["MaskVelocity", "ResolvedEnv", "SymbolicGridBounds", "make_env", "make_single_env", "resolve_env"]
