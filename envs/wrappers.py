"""Observation wrappers used by the environment factory."""

from __future__ import annotations

from collections.abc import Sequence

import gymnasium as gym
import numpy as np
from gymnasium import spaces

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
