"""Training callbacks: evaluations that also record how long training took to get there, checkpoints that
keep only the newest few, and stops: when an interrupt asked for one, or at an evaluation that reached a return."""

from __future__ import annotations

import io
import time
from pathlib import Path

import numpy as np
from stable_baselines3.common.callbacks import BaseCallback, CheckpointCallback, EvalCallback
from stable_baselines3.common.vec_env import VecEnv

from ctm_rl.interrupts import stop_requested, write_atomically
from ctm_rl.sb3.checkpoints import named_steps


def episode_step_limit(venv: VecEnv) -> int | None:
    """The episode step limit of a vectorised environment's first env: MiniGrid's ``max_steps``, else that of a
    ``TimeLimit`` wrapper or of its spec; ``None`` if it has none."""
    for attribute in ("max_steps", "_max_episode_steps"):  # MiniGrid's own, gymnasium's TimeLimit
        try:
            return int(venv.get_attr(attribute, [0])[0])
        except (AttributeError, TypeError):  # absent, or None
            pass
    spec = venv.get_attr("spec", [0])[0]
    return None if spec is None or spec.max_episode_steps is None else int(spec.max_episode_steps)


def continue_step_grid(callback: BaseCallback) -> None:
    """Count a callback's calls from the model's current step rather than from 0, so that a resumed run keeps
    evaluating and checkpointing at multiples of the interval (every 10,000 steps: at 80,000 after a resume at
    74,096, not at 84,096), as an uninterrupted run does. Both count one call per step of all the envs."""
    callback.n_calls = callback.model.num_timesteps // callback.model.get_env().num_envs


class StopOnRequest(BaseCallback):
    """Ends training at the next step once an interrupt has requested a stop (:mod:`ctm_rl.interrupts`), so that
    the run saves and ends even where the interrupt's own exception was lost."""

    def _on_step(self) -> bool:
        return not stop_requested()


class StopAtReturn(BaseCallback):
    """Ends training at the first evaluation whose mean return reaches ``threshold``; runs after each evaluation
    (an ``EvalCallback``'s ``callback_after_eval``). Unlike SB3's ``StopTrainingOnRewardThreshold`` it reads the
    latest evaluation rather than the best so far, which after a resume includes evaluations of a model that was
    not saved.

    :param threshold: the return at which training ends.
    """

    def __init__(self, threshold: float) -> None:
        super().__init__()
        self.threshold = threshold

    @property
    def reached(self) -> bool:
        """Whether this training's latest evaluation reached the threshold (so that training stopped there)."""
        return self.parent is not None and self.parent.last_mean_reward >= self.threshold

    def _on_step(self) -> bool:
        return not self.reached


class TimedEvalCallback(EvalCallback):
    """SB3's ``EvalCallback`` that adds two arrays to ``evaluations.npz``, one entry per evaluation:

    - ``wall_time``: seconds since training started, evaluations included;
    - ``train_time``: the same without the time spent evaluating, for throughput figures;
    - ``time_limit_fraction``: the share of the episodes that ran into the episode step limit, the mark of a
      deterministic policy that loops (also logged as ``eval/time_limit_fraction``; NaN where the evaluation
      environments have no known limit).

    A resumed run loads its earlier evaluations with :meth:`load_previous` and continues both clocks.
    Takes ``EvalCallback``'s arguments.
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.evaluations_wall_time: list[float] = []
        self.evaluations_train_time: list[float] = []
        self.evaluations_time_limit: list[float] = []
        self._started = 0.0
        self._evaluating = 0.0
        self._offset = (0.0, 0.0)

    def load_previous(self, path: Path, up_to: int) -> None:
        """Continue the evaluations already in ``path`` (an ``evaluations.npz``) instead of starting anew.

        Evaluations after ``up_to`` steps (the resumed model's) were of a model state that was not saved and are
        made again, so they are dropped: timesteps keep increasing. ``best_model.zip`` is only replaced by an
        evaluation better than every earlier one, dropped ones included (the file may hold one of those).
        """
        with np.load(path) as data:
            timesteps = list(data["timesteps"])
            results = [list(r) for r in data["results"]]
            lengths = [list(r) for r in data["ep_lengths"]]
            wall_time = list(data["wall_time"]) if "wall_time" in data else [float("nan")] * len(timesteps)
            train_time = list(data["train_time"]) if "train_time" in data else [float("nan")] * len(timesteps)
            time_limit = (list(data["time_limit_fraction"]) if "time_limit_fraction" in data
                          else [float("nan")] * len(timesteps))
        if results:
            self.best_mean_reward = max(float(np.mean(r)) for r in results)
        kept = sum(step <= up_to for step in timesteps)
        self.evaluations_timesteps, self.evaluations_results = timesteps[:kept], results[:kept]
        self.evaluations_length, self.evaluations_wall_time = lengths[:kept], wall_time[:kept]
        self.evaluations_train_time, self.evaluations_time_limit = train_time[:kept], time_limit[:kept]
        if self.evaluations_wall_time:
            self._offset = (self.evaluations_wall_time[-1], self.evaluations_train_time[-1])

    def _on_training_start(self) -> None:
        super()._on_training_start()
        continue_step_grid(self)
        self._started, self._evaluating = time.perf_counter(), 0.0

    def _on_training_end(self) -> None:
        # Training ends on a whole rollout, rarely on an evaluation step: evaluate the final model too, unless the
        # last evaluation was within the last rollout (or training was cut short by an early stop).
        rollout = self.model.n_steps * self.model.n_envs
        last = self.evaluations_timesteps[-1] if self.evaluations_timesteps else -rollout
        if self.eval_freq > 0 and self.num_timesteps - last >= rollout and self.model._total_timesteps <= self.num_timesteps:
            self.evaluate_now()
        super()._on_training_end()

    def evaluate_now(self) -> None:
        """Evaluate the model at its current step, as a scheduled evaluation would (and record it alike)."""
        scheduled, self.eval_freq = self.eval_freq, 1
        try:
            self._on_step()
        finally:
            self.eval_freq = scheduled

    def _on_step(self) -> bool:
        evaluated_before = len(self.evaluations_timesteps)
        began = time.perf_counter()
        # SB3 records an evaluation only where it has a log path, and then writes its own copy of the file in
        # place, which an interrupt or a kill can cut short: it writes into a buffer instead, and the file is
        # replaced whole with the timings added (_save).
        log_path, self.log_path = self.log_path, io.BytesIO()
        try:
            continue_training = super()._on_step()
        except KeyboardInterrupt:
            # An interrupt after SB3 recorded the evaluation (while it wrote its buffer or saved the best model):
            # add the timings and write the file before stopping.
            self.log_path = log_path
            if len(self.evaluations_timesteps) > evaluated_before:
                self._record_evaluation(began)
            raise
        finally:
            self.log_path = log_path
        if len(self.evaluations_timesteps) > evaluated_before:
            self._record_evaluation(began)
        return continue_training

    def _record_evaluation(self, began: float) -> None:
        """Add the timings and time-limit share of the evaluation SB3 has just recorded (begun at ``began``) and
        write the evaluations file."""
        finished = time.perf_counter()
        elapsed = began - self._started - self._evaluating  # training only, up to this evaluation
        self._evaluating += finished - began
        self.evaluations_wall_time.append(self._offset[0] + finished - self._started)
        self.evaluations_train_time.append(self._offset[1] + elapsed)
        limit = episode_step_limit(self.eval_env)
        lengths = np.asarray(self.evaluations_length[-1])
        self.evaluations_time_limit.append(float(np.mean(lengths >= limit)) if limit else float("nan"))
        self.logger.record("eval/time_limit_fraction", self.evaluations_time_limit[-1])
        if self.log_path is not None:
            self._save()

    def _save(self) -> None:
        extra = {"successes": self.evaluations_successes} if self.evaluations_successes else {}
        content = io.BytesIO()
        np.savez(content, timesteps=self.evaluations_timesteps, results=self.evaluations_results,
                 ep_lengths=self.evaluations_length, wall_time=self.evaluations_wall_time,
                 train_time=self.evaluations_train_time, time_limit_fraction=self.evaluations_time_limit, **extra)
        # SB3 names the file without its suffix, which np.savez adds; a file cut short would lose every evaluation.
        write_atomically(Path(f"{self.log_path}.npz"), content.getvalue())


class RollingCheckpointCallback(CheckpointCallback):
    """SB3's ``CheckpointCallback`` that keeps only the newest ``keep`` checkpoints of its prefix. Older ones are
    deleted after a new one has been written in full, so a save cut short by an interrupt still leaves the one
    before it. Takes ``CheckpointCallback``'s arguments.

    :param keep: checkpoints to keep; 0 keeps every one, as ``CheckpointCallback`` does.
    """

    def __init__(self, *args, keep: int = 0, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.keep = keep

    def _on_training_start(self) -> None:
        super()._on_training_start()
        continue_step_grid(self)

    def _on_step(self) -> bool:
        saved = self.n_calls % self.save_freq == 0
        go_on = super()._on_step()
        if saved and self.keep:
            self._drop_older()
        return go_on

    def _drop_older(self) -> None:
        steps = {path: named_steps(path) for path in Path(self.save_path).glob(f"{self.name_prefix}_*_steps.zip")}
        checkpoints = sorted((path for path, step in steps.items() if step is not None), key=steps.get)
        for path in checkpoints[:-self.keep]:
            path.unlink(missing_ok=True)
