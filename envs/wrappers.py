"""Observation wrappers used by the environment factory."""

from __future__ import annotations

from collections.abc import Sequence

import gymnasium as gym
import numpy as np
from gymnasium import spaces
from stable_baselines3.common.vec_env import VecEnvWrapper

from ctm_rl.errors import CtmRlError

# Index ranges of MiniGrid's symbolic encoding (minigrid.core.constants).
MINIGRID_OBJECTS, MINIGRID_COLOURS, MINIGRID_STATES = 11, 6, 3

# Velocity entries of classic-control observations, by environment name without version.
VELOCITY_INDICES: dict[str, tuple[int, ...]] = {
    "CartPole": (1, 3),  # cart velocity, pole angular velocity
    "Acrobot": (4, 5),  # angular velocities of both links
}


class MaskVelocity(gym.ObservationWrapper):
    """Zeroes the velocity entries of an observation, making the task partially observable.

    :param env: environment with a flat Box observation.
    :param indices: observation entries to zero.
    """

    def __init__(self, env: gym.Env, indices: Sequence[int]) -> None:
        super().__init__(env)
        self.mask = np.ones(env.observation_space.shape, dtype=env.observation_space.dtype)
        self.mask[list(indices)] = 0

    def observation(self, observation: np.ndarray) -> np.ndarray:
        return observation * self.mask


class SymbolicGridBounds(gym.ObservationWrapper):
    """Declares the true bounds of MiniGrid's symbolic ``(view, view, 3)`` grid (object, colour and state
    indices) instead of ``[0, 255]``, so the grid is not mistaken for an RGB image. Observations pass unchanged.
    """

    def __init__(self, env: gym.Env) -> None:
        super().__init__(env)
        shape = env.observation_space.shape
        high = np.broadcast_to(np.array([MINIGRID_OBJECTS - 1, MINIGRID_COLOURS - 1, MINIGRID_STATES - 1]), shape)
        self.observation_space = spaces.Box(low=0, high=high.astype(np.uint8), shape=shape, dtype=np.uint8)

    def observation(self, observation: np.ndarray) -> np.ndarray:
        return observation


class TupleToDict(gym.ObservationWrapper):
    """Presents a ``Tuple`` observation as a ``Dict`` keyed ``"0"``, ``"1"``, ... (SB3 encodes Dicts, not Tuples), so
    that each part gets its own encoder: a Discrete or MultiDiscrete part is one-hot encoded per discrete
    component, a Box part is read as a vector. POPGym's Autoencode, for example, observes ``Tuple(Discrete(2),
    Discrete(4))``.

    :param env: an environment with a Tuple observation space whose parts are not Tuples themselves.
    """

    def __init__(self, env: gym.Env) -> None:
        super().__init__(env)
        parts = env.observation_space.spaces
        if any(isinstance(part, (spaces.Tuple, spaces.Dict)) for part in parts):
            raise CtmRlError(
                f"Nested Tuple or Dict observations are not supported: {env.observation_space}. Fix: wrap the env "
                "so it observes a flat Tuple or Dict (for example gymnasium.wrappers.FlattenObservation).")
        self.observation_space = spaces.Dict({str(i): part for i, part in enumerate(parts)})

    def observation(self, observation: tuple) -> dict:
        return {str(i): part for i, part in enumerate(observation)}


class NonFiniteObservationError(CtmRlError):
    """An environment returned NaN or infinity in an observation."""


class EnvFaultError(CtmRlError):
    """An environment raised an exception in ``reset`` or ``step``, or returned an observation that does not fit
    its observation space. The original exception is its ``__cause__``."""


class GuardEnv(VecEnvWrapper):
    """Turns an environment's faults into one clear error naming the env and the step, where they would
    otherwise surface as a traceback from deep inside SB3 or torch:

    - an exception raised by the env's ``reset`` or ``step`` (:class:`EnvFaultError`, the original exception
      chained as its cause);
    - an observation whose shape does not fit the observation space (:class:`EnvFaultError`);
    - NaN or infinity in an observation, naming the observation key (:class:`NonFiniteObservationError`).

    :param venv: the vectorised environment.
    :param name: the environment's name, for the message.
    """

    def __init__(self, venv, name: str) -> None:
        super().__init__(venv)
        self.name = name
        self.steps = 0

    def reset(self):
        observations = self._call(self.venv.reset, "reset")
        self._check(observations, "reset")
        return observations

    def step_wait(self):
        self.steps += 1
        observations, rewards, dones, infos = self._call(self.venv.step_wait, f"step {self.steps}")
        self._check(observations, f"step {self.steps}")
        return observations, rewards, dones, infos

    def _call(self, function, when: str):
        try:
            return function()
        except CtmRlError:
            raise
        except Exception as error:
            if isinstance(error, ValueError) and "broadcast" in str(error):  # the vec env's observation buffer
                problem = f"returned an observation that does not fit its observation space " \
                          f"{self.observation_space} at {when} ({error})"
            else:
                problem = f"raised {type(error).__name__} at {when}: {error}"
            raise EnvFaultError(f"{self.name} {problem}. Fix: correct the environment; run with --debug to see "
                                f"the environment's traceback.") from error

    def _check(self, observations, when: str) -> None:
        parts = observations.items() if isinstance(observations, dict) else [(None, observations)]
        for key, values in parts:
            values = np.asarray(values)
            if np.issubdtype(values.dtype, np.floating) and not np.isfinite(values).all():
                env_index = int(np.argwhere(~np.isfinite(values).reshape(len(values), -1).all(axis=1))[0][0])
                where = f"observation key {key!r}" if key is not None else "the observation"
                raise NonFiniteObservationError(
                    f"{self.name} returned NaN or infinity in {where} at {when} (env {env_index}). Fix: make the "
                    f"environment return finite values, or wrap it to clean them.")
