"""Evaluation that also records how long training took to get there."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
from stable_baselines3.common.callbacks import EvalCallback


class TimedEvalCallback(EvalCallback):
    """SB3's ``EvalCallback`` that adds two arrays to ``evaluations.npz``, one entry per evaluation:

    - ``wall_time``: seconds since training started, evaluations included;
    - ``train_time``: the same without the time spent evaluating, for throughput figures.

    A resumed run loads its earlier evaluations with :meth:`load_previous` and continues both clocks.
    Takes ``EvalCallback``'s arguments.
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.evaluations_wall_time: list[float] = []
        self.evaluations_train_time: list[float] = []
        self._started = 0.0
        self._evaluating = 0.0
        self._offset = (0.0, 0.0)

    def load_previous(self, path: Path) -> None:
        """Append to the evaluations already in ``path`` (an ``evaluations.npz``) instead of starting anew."""
        with np.load(path) as data:
            self.evaluations_timesteps = list(data["timesteps"])
            self.evaluations_results = [list(r) for r in data["results"]]
            self.evaluations_length = [list(r) for r in data["ep_lengths"]]
            if "wall_time" in data:
                self.evaluations_wall_time = list(data["wall_time"])
                self.evaluations_train_time = list(data["train_time"])
        if self.evaluations_wall_time:
            self._offset = (self.evaluations_wall_time[-1], self.evaluations_train_time[-1])

    def _on_training_start(self) -> None:
        super()._on_training_start()
        self._started, self._evaluating = time.perf_counter(), 0.0

    def _on_step(self) -> bool:
        evaluated_before = len(self.evaluations_timesteps)
        began = time.perf_counter()
        continue_training = super()._on_step()
        if len(self.evaluations_timesteps) > evaluated_before:
            finished = time.perf_counter()
            elapsed = began - self._started - self._evaluating  # training only, up to this evaluation
            self._evaluating += finished - began
            self.evaluations_wall_time.append(self._offset[0] + finished - self._started)
            self.evaluations_train_time.append(self._offset[1] + elapsed)
            if self.log_path is not None:
                self._save()
        return continue_training

    def _save(self) -> None:
        extra = {"successes": self.evaluations_successes} if self.evaluations_successes else {}
        np.savez(self.log_path, timesteps=self.evaluations_timesteps, results=self.evaluations_results,
                 ep_lengths=self.evaluations_length, wall_time=self.evaluations_wall_time,
                 train_time=self.evaluations_train_time, **extra)
