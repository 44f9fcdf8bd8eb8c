"""Aggregate statistics for comparing agents over few runs (Agarwal et al., 2021, "Deep RL at the Edge of the
Statistical Precipice"): interquartile mean, stratified-bootstrap confidence intervals and the probability of
improvement.

Scores are ``(runs, tasks)`` arrays: one row per independent run (seed), one column per task. A comparison on
one environment has a single column. Bootstrap resamples runs with replacement within each task (the strata),
and intervals are percentile intervals.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import numpy as np

Statistic = Callable[[np.ndarray], np.ndarray]
"""Reduces the last axis of a ``(..., n)`` array of scores to ``(...)``."""


class Estimate(NamedTuple):
    """A point estimate and its confidence interval."""

    value: float
    low: float
    high: float


def iqm(scores: np.ndarray) -> np.ndarray:
    """Interquartile mean over the last axis: the mean of the values left after dropping the lowest and the
    highest ``floor(n / 4)`` (the 25% trimmed mean, as ``scipy.stats.trim_mean(x, 0.25)`` computes it)."""
    scores = np.sort(np.asarray(scores, dtype=float), axis=-1)
    n = scores.shape[-1]
    cut = int(0.25 * n)
    return scores[..., cut:n - cut].mean(axis=-1)


def mean(scores: np.ndarray) -> np.ndarray:
    """Mean over the last axis."""
    return np.asarray(scores, dtype=float).mean(axis=-1)


def median(scores: np.ndarray) -> np.ndarray:
    """Median over the last axis."""
    return np.median(np.asarray(scores, dtype=float), axis=-1)


def _as_matrix(scores: np.ndarray) -> np.ndarray:
    scores = np.asarray(scores, dtype=float)
    if scores.ndim == 1:
        scores = scores[:, None]
    if scores.ndim != 2 or scores.shape[0] == 0:
        raise ValueError(f"scores must be a non-empty (runs, tasks) array, got shape {scores.shape}.")
    return scores


def _resample(scores: np.ndarray, reps: int, rng: np.random.Generator) -> np.ndarray:
    """``reps`` stratified resamples of ``(runs, tasks)`` scores: ``(reps, runs, tasks)``, runs drawn with
    replacement independently in each task."""
    runs, tasks = scores.shape
    rows = rng.integers(0, runs, size=(reps, runs, tasks))
    return scores[rows, np.arange(tasks)]


def _interval(point: float, samples: np.ndarray, confidence: float) -> Estimate:
    tail = 100 * (1 - confidence) / 2
    low, high = np.percentile(samples, [tail, 100 - tail])
    return Estimate(float(point), float(low), float(high))


def interval_estimate(scores: np.ndarray, statistic: Statistic = iqm, reps: int = 2000, confidence: float = 0.95,
                      seed: int = 0) -> Estimate:
    """A statistic of all scores with its stratified-bootstrap percentile interval.

    :param scores: ``(runs, tasks)`` or ``(runs,)`` scores.
    :param statistic: reduces the pooled scores of all runs and tasks (``iqm``, ``mean``, ``median``).
    :param reps: bootstrap resamples.
    :param confidence: coverage of the interval.
    :param seed: seed of the resampling.
    """
    scores = _as_matrix(scores)
    samples = _resample(scores, reps, np.random.default_rng(seed))
    return _interval(statistic(scores.reshape(-1)), statistic(samples.reshape(reps, -1)), confidence)


def probability_of_improvement(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """P(X > Y): the chance that a random run of X scores higher than a random run of Y on the same task (ties
    count half, as in the Mann-Whitney U statistic), averaged over tasks.

    :param x: ``(..., runs_x, tasks)`` scores.
    :param y: ``(..., runs_y, tasks)`` scores.
    :return: ``(...)``.
    """
    x, y = np.asarray(x, dtype=float)[..., :, None, :], np.asarray(y, dtype=float)[..., None, :, :]
    wins = (x > y) + 0.5 * (x == y)  # (..., runs_x, runs_y, tasks)
    return wins.mean(axis=(-3, -2)).mean(axis=-1)


def improvement_estimate(x: np.ndarray, y: np.ndarray, reps: int = 2000, confidence: float = 0.95,
                         seed: int = 0) -> Estimate:
    """``probability_of_improvement(x, y)`` with a percentile interval from resampling the runs of ``x`` and
    ``y`` independently within each task.

    :param x: ``(runs_x, tasks)`` or ``(runs_x,)`` scores.
    :param y: ``(runs_y, tasks)`` or ``(runs_y,)`` scores, on the same tasks.
    """
    x, y = _as_matrix(x), _as_matrix(y)
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"x and y must cover the same tasks, got {x.shape[1]} and {y.shape[1]} columns.")
    rng = np.random.default_rng(seed)
    samples = probability_of_improvement(_resample(x, reps, rng), _resample(y, reps, rng))
    return _interval(probability_of_improvement(x, y), samples, confidence)


def first_reaching(steps: np.ndarray, values: np.ndarray, threshold: float) -> float:
    """The first step whose value is at least ``threshold``; NaN if none is."""
    reached = np.flatnonzero(np.asarray(values) >= threshold)
    return float(steps[reached[0]]) if reached.size else float("nan")


def lowest_after_reaching(values: np.ndarray, threshold: float) -> float:
    """The lowest value from the first one at least ``threshold`` on: how far a run fell after it first reached
    the threshold (at least ``threshold`` if it held there); NaN if it never reached it."""
    values = np.asarray(values, dtype=float)
    reached = np.flatnonzero(values >= threshold)
    return float(values[reached[0]:].min()) if reached.size else float("nan")


def never_as_inf(steps: np.ndarray) -> np.ndarray:
    """Steps to a threshold with the runs that never reached it (NaN) as ``inf``, so that they order last."""
    values = np.asarray(steps, dtype=float)
    return np.where(np.isnan(values), np.inf, values)


def time_to_threshold_estimate(steps: np.ndarray, reps: int = 2000, confidence: float = 0.95,
                               seed: int = 0) -> Estimate:
    """The median over runs of the steps each took to reach a threshold, with a bootstrap percentile interval;
    runs that never reached it (NaN) count as never (``inf``), so the median and either bound can be ``inf``.

    The median of a resample takes few distinct values, so the bounds are read from them without interpolating
    (the lower bound rounds down and the upper one up), which also keeps a bound between a step and never defined.

    :param steps: ``(runs,)`` steps per run, NaN where the threshold was never reached.
    :param reps: bootstrap resamples.
    :param confidence: coverage of the interval.
    :param seed: seed of the resampling.
    """
    values = never_as_inf(steps)
    if values.ndim != 1 or values.size == 0:
        raise ValueError(f"steps must be a non-empty (runs,) array, got shape {values.shape}.")
    samples = median(_resample(values[:, None], reps, np.random.default_rng(seed))[..., 0])
    tail = 100 * (1 - confidence) / 2
    return Estimate(float(median(values)), float(np.percentile(samples, tail, method="lower")),
                    float(np.percentile(samples, 100 - tail, method="higher")))

