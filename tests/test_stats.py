"""The comparison statistics on inputs with known answers."""

import numpy as np
import pytest

from ctm_rl import stats


@pytest.mark.parametrize("scores, expected", [
    ([1, 2, 3, 4, 5, 6, 7, 8], 4.5),        # drops 1, 2 and 7, 8
    ([10, 1, 100, 2, 3], 5.0),              # drops 1 and 100: mean of 2, 3, 10
    ([1, 2, 3], 2.0),                       # floor(3 / 4) = 0: nothing dropped
    ([5, 5, 5, 5], 5.0),
    ([0, 0, 0, 1000, 1, 1, 1, -1000], 0.5),  # drops -1000, 0 and 1, 1000
])
def test_iqm_matches_hand_computed_values(scores, expected):
    assert stats.iqm(np.array(scores)) == pytest.approx(expected)


def test_iqm_reduces_the_last_axis_row_by_row():
    rows = np.array([[1, 2, 3, 4, 5, 6, 7, 8], [8, 7, 6, 5, 4, 3, 2, 1], [0, 0, 10, 10, 0, 0, 10, 10]])
    np.testing.assert_allclose(stats.iqm(rows), [4.5, 4.5, 5.0])


def test_iqm_agrees_with_scipy_trimmed_mean():
    scipy_stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(3)
    for n in range(1, 30):
        x = rng.exponential(size=n)
        assert stats.iqm(x) == pytest.approx(scipy_stats.trim_mean(x, 0.25))


def test_bootstrap_interval_contains_the_true_iqm_of_synthetic_data():
    # The IQM of a normal distribution is its mean.
    scores = np.random.default_rng(0).normal(10.0, 2.0, size=(400, 1))
    estimate = stats.interval_estimate(scores, stats.iqm, reps=2000, seed=1)
    assert estimate.low < 10.0 < estimate.high
    assert estimate.high - estimate.low < 1.0
    assert estimate.value == pytest.approx(stats.iqm(scores.ravel()))


def test_bootstrap_interval_has_close_to_nominal_coverage():
    rng = np.random.default_rng(5)
    covered = 0
    for trial in range(200):
        scores = rng.normal(0.0, 1.0, size=(40, 1))
        estimate = stats.interval_estimate(scores, stats.mean, reps=500, seed=trial)
        covered += estimate.low <= 0.0 <= estimate.high
    assert 0.88 <= covered / 200 <= 0.99


def test_bootstrap_resamples_runs_within_each_task():
    # Two tasks on very different scales: a resample must only ever draw a task's own runs.
    scores = np.array([[1.0, 100.0], [2.0, 200.0], [3.0, 300.0]])
    resampled = stats._resample(scores, reps=50, rng=np.random.default_rng(0))
    assert resampled.shape == (50, 3, 2)
    assert set(np.unique(resampled[..., 0])) <= {1.0, 2.0, 3.0}
    assert set(np.unique(resampled[..., 1])) <= {100.0, 200.0, 300.0}


def test_bootstrap_of_constant_scores_is_degenerate():
    estimate = stats.interval_estimate(np.full((5, 1), 7.0), stats.iqm, reps=100)
    assert estimate == (7.0, 7.0, 7.0)


@pytest.mark.parametrize("x, y, expected", [
    ([3, 4], [1, 3], 0.875),     # 1 + 0.5 (tie) + 1 + 1 over 4 pairs
    ([1, 3], [2], 0.5),
    ([5, 6, 7], [1, 2], 1.0),
    ([1, 2], [5, 6, 7], 0.0),
])
def test_probability_of_improvement_matches_hand_computed_values(x, y, expected):
    assert stats.probability_of_improvement(np.array(x, float)[:, None], np.array(y, float)[:, None]) == expected


def test_probability_of_improvement_of_identical_samples_is_one_half():
    x = np.random.default_rng(2).normal(size=(7, 3))
    assert stats.probability_of_improvement(x, x) == 0.5
    estimate = stats.improvement_estimate(x, x.copy(), reps=1000)
    assert estimate.value == 0.5
    assert estimate.low < 0.5 < estimate.high


def test_probability_of_improvement_averages_over_tasks():
    x = np.array([[1.0, 0.0], [1.0, 0.0]])
    y = np.array([[0.0, 1.0], [0.0, 1.0]])
    assert stats.probability_of_improvement(x, y) == 0.5  # wins every pair on task 0, loses every pair on task 1


def test_improvement_estimate_rejects_different_tasks():
    with pytest.raises(ValueError, match="same tasks"):
        stats.improvement_estimate(np.zeros((3, 2)), np.zeros((3, 1)))


def test_first_reaching():
    steps = np.array([10, 20, 30, 40])
    assert stats.first_reaching(steps, np.array([1, 5, 3, 9]), 5) == 20
    assert np.isnan(stats.first_reaching(steps, np.array([1, 2, 3, 4]), 5))


def test_lowest_after_reaching_ignores_what_came_before_the_first_reach():
    assert stats.lowest_after_reaching(np.array([0, 5, 3, 9]), 5) == 3
    assert stats.lowest_after_reaching(np.array([0, 5, 7, 9]), 5) == 5      # held
    assert stats.lowest_after_reaching(np.array([-300, -90, -120]), -100) == -120
    assert np.isnan(stats.lowest_after_reaching(np.array([1, 2, 3, 4]), 5))


def test_time_to_threshold_counts_runs_that_never_reached_it_as_never():
    nan = float("nan")
    assert stats.time_to_threshold_estimate(np.array([30.0, nan, 10.0])).value == 30.0
    assert stats.time_to_threshold_estimate(np.array([30.0, nan, nan])).value == np.inf
    assert stats.time_to_threshold_estimate(np.array([nan, nan])) == (np.inf, np.inf, np.inf)
    assert stats.time_to_threshold_estimate(np.array([20.0] * 5)) == (20.0, 20.0, 20.0)


def test_time_to_threshold_bounds_are_medians_of_resamples_not_interpolations():
    steps = np.array([100.0, 200.0, 300.0, 400.0, float("nan"), 600.0, 700.0])
    estimate = stats.time_to_threshold_estimate(steps, reps=500, seed=2)
    # An odd number of runs: every resample's median is one of the runs' values (or never).
    assert {estimate.low, estimate.high} <= {100.0, 200.0, 300.0, 400.0, 600.0, 700.0, np.inf}
    assert estimate.low <= estimate.value == 400.0 <= estimate.high < np.inf
    # With three runs of seven never reaching it, about four resamples in ten have a median of never.
    steps[[0, 1]] = float("nan")
    estimate = stats.time_to_threshold_estimate(steps, reps=500, seed=2)
    assert (estimate.value, estimate.high) == (700.0, np.inf) and estimate.low in {300.0, 400.0, 600.0}


def test_time_to_threshold_interval_has_close_to_nominal_coverage():
    # Exponential times with a quarter of the runs never reaching the threshold: the true median (never counting
    # as infinite) is the exponential's 2/3 quantile, ln 3.
    rng = np.random.default_rng(7)
    covered = 0
    for trial in range(200):
        steps = rng.exponential(size=41)
        steps[rng.random(41) < 0.25] = np.nan
        estimate = stats.time_to_threshold_estimate(steps, reps=500, seed=trial)
        covered += estimate.low <= np.log(3.0) <= estimate.high
    assert 0.88 <= covered / 200 <= 1.0
