"""Environment factories, wrappers and plugging for ctm-rl."""

from ctm_rl.envs.factory import make_env, make_single_env
from ctm_rl.envs.registry import ResolvedEnv, resolve_env
from ctm_rl.envs.wrappers import MaskVelocity, SymbolicGridBounds, TupleToDict

__all__ = ["MaskVelocity", "ResolvedEnv", "SymbolicGridBounds", "TupleToDict", "make_env", "make_single_env", "resolve_env"]
