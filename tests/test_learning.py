"""Learning checks (slow; run with ``pytest -m slow``)."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from learning import learn  # noqa: E402


@pytest.mark.slow
def test_ctm_solves_cartpole_novel_within_200k_steps(tmp_path):
    results = [learn("CartPole-NoVel", "ctm", seed, 200_000, str(tmp_path)) for seed in range(3)]
    for r in results:
        print(r)
    assert sum(r["best_return"] >= 475 for r in results) >= 2
