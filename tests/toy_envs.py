"""Small environments for tests: cue-recall memory tasks (one with a choice of action space, one where waiting
beats guessing) and faulty envs, registered on import."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
from gymnasium import spaces


class CueRecall(gym.Env):
    """Shows one of ``n_cues`` cues on the first step, then blanks for ``delay`` steps; the final action is
    rewarded +1 if it names the cue. Solving it needs memory carried across steps.

    :param n_cues: number of cues.
    :param delay: blank steps between the cue and the answer.
    :param action_kind: ``discrete``, ``multidiscrete`` or ``box`` (the answer is read from the first entry).
    :param observation_kind: ``box`` (one-hot cue, last entry for blank) or ``tuple`` (``Tuple(Discrete(n_cues +
        1), Discrete(2))``: the cue index, ``n_cues`` for blank, and whether the answer is due).
    """

    def __init__(self, n_cues: int = 2, delay: int = 3, action_kind: str = "discrete", observation_kind: str = "box") -> None:
        self.n_cues, self.delay, self.observation_kind = n_cues, delay, observation_kind
        self.observation_space = {
            "box": spaces.Box(0.0, 1.0, shape=(n_cues + 1,), dtype=np.float32),
            "tuple": spaces.Tuple((spaces.Discrete(n_cues + 1), spaces.Discrete(2))),
        }[observation_kind]
        self.action_space = {
            "discrete": spaces.Discrete(n_cues),
            "multidiscrete": spaces.MultiDiscrete([n_cues, 2]),
            "box": spaces.Box(-1.0, 1.0, shape=(2,), dtype=np.float32),
        }[action_kind]
        self.action_kind = action_kind

    def _observe(self):
        if self.observation_kind == "tuple":
            return (self.cue if self.t == 0 else self.n_cues, int(self.t == self.delay))
        obs = np.zeros(self.n_cues + 1, dtype=np.float32)
        obs[self.cue if self.t == 0 else self.n_cues] = 1.0
        return obs

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        self.cue, self.t = int(self.np_random.integers(self.n_cues)), 0
        return self._observe(), {}

    def _answer(self, action) -> int:
        if self.action_kind == "box":
            return int(np.clip((np.asarray(action)[0] + 1) / 2 * self.n_cues, 0, self.n_cues - 1))
        return int(np.asarray(action).reshape(-1)[0])

    def step(self, action):
        self.t += 1
        done = self.t > self.delay
        reward = float(self._answer(action) == self.cue) if done else 0.0
        return self._observe(), reward, done, False, {}


gym.register("ToyCueRecall-v0", entry_point=CueRecall)


class CueOrWait(gym.Env):
    """A memory task where standing still beats guessing: one of ``n_cues`` cues shows on the first step, blanks
    follow, and from step ``delay`` on a go signal shows. Naming the cue after the go signal ends the episode
    with +1, naming another with -1; answers before it, and the extra action ``n_cues`` (wait), do nothing, and
    the episode ends unanswered (0) ``patience`` steps after the go signal. Without memory a guess is worth
    ``(2 - n_cues) / n_cues`` < 0 for three cues or more, so an agent that cannot remember learns to wait.

    Observation: one-hot cue (``n_cues`` entries), a blank flag and the go flag.
    """

    def __init__(self, n_cues: int = 3, delay: int = 4, patience: int = 4) -> None:
        self.n_cues, self.delay, self.patience = n_cues, delay, patience
        self.observation_space = spaces.Box(0.0, 1.0, shape=(n_cues + 2,), dtype=np.float32)
        self.action_space = spaces.Discrete(n_cues + 1)

    def _observe(self):
        obs = np.zeros(self.n_cues + 2, dtype=np.float32)
        obs[self.cue if self.t == 0 else self.n_cues] = 1.0
        obs[-1] = float(self.t >= self.delay)
        return obs

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        self.cue, self.t = int(self.np_random.integers(self.n_cues)), 0
        return self._observe(), {}

    def step(self, action):
        answered = self.t >= self.delay and int(action) < self.n_cues
        reward = (1.0 if int(action) == self.cue else -1.0) if answered else 0.0
        self.t += 1
        return self._observe(), reward, answered, self.t >= self.delay + self.patience, {}


gym.register("ToyCueOrWait-v0", entry_point=CueOrWait)


class GoesNonFinite(gym.Env):
    """Finite observations until step ``bad_step``, then ``value`` (NaN by default) in its first entry."""

    observation_space = spaces.Box(-1.0, 1.0, shape=(3,), dtype=np.float32)
    action_space = spaces.Discrete(2)

    def __init__(self, bad_step: int = 5, value: float = float("nan")) -> None:
        self.bad_step, self.value, self.t = bad_step, value, 0

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return np.zeros(3, dtype=np.float32), {}

    def step(self, action):
        self.t += 1
        obs = np.zeros(3, dtype=np.float32)
        if self.t >= self.bad_step:
            obs[0] = self.value
        return obs, 0.0, False, self.t >= 50, {}


class Faulty(GoesNonFinite):
    """Like :class:`GoesNonFinite`, but at step ``bad_step`` it raises (``fault="raise"``) or returns an
    observation one entry too long (``fault="shape"``)."""

    def __init__(self, bad_step: int = 3, fault: str = "raise") -> None:
        super().__init__(bad_step)
        self.fault = fault

    def step(self, action):
        obs, reward, terminated, truncated, info = super().step(action)
        if self.t == self.bad_step:
            if self.fault == "raise":
                raise RuntimeError("the simulator lost its state")
            obs = np.zeros(4, dtype=np.float32)
        return obs, reward, terminated, truncated, info
