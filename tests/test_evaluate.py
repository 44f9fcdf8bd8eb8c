import csv

import pytest
import torch

from ctm_rl import compare, evaluate
from ctm_rl.train import load_run_model, read_run_config, run_env

# CueOrWait with the go signal at step 1 and a 9-step limit: a policy that prefers waiting a little waits out every
# episode with its most likely actions, while sampling answers within a few steps.
CUE_OR_WAIT = ["--env", "ToyCueOrWait-v0", "--env-module", "toy_envs", "--env-kwargs", "delay=1", "patience=8",
               "--max-steps", "9"]
TINY = ["--timesteps", "32", "--eval-freq", "32", "--eval-episodes", "2", "--n-envs", "2", "--hyperparams",
        "n_steps=16", "batch_size=32", "n_epochs=1", "d_model=16", "d_input=8", "n_synch_out=4", "memory_length=3"]


def _prefer_waiting(run_dir):
    """Make a trained run's policy prefer 'wait' whatever it sees, and save it as the run's newest save."""
    config = read_run_config(run_dir)
    model = load_run_model(run_dir, run_env(config), config)
    with torch.no_grad():
        model.policy.action_net.weight.zero_()
        model.policy.action_net.bias.copy_(torch.tensor([0.0, 0.0, 0.0, 0.5]))
    model.save(run_dir / "model.zip")


def _rows(path):
    with open(path, newline="") as file:
        return list(csv.DictReader(file))


@pytest.fixture(scope="module")
def comparison(tmp_path_factory):
    out = tmp_path_factory.mktemp("evaluate") / "cmp"
    assert compare.main([*CUE_OR_WAIT, *TINY, "--agents", "ctm", "--seeds", "2", "--out", str(out),
                         "--workers", "1"]) == 0
    for seed in (0, 1):
        _prefer_waiting(out / "runs" / "ctm" / f"seed{seed}")
    return out


def test_most_likely_actions_loop_where_sampled_ones_answer(comparison, tmp_path, capsys):
    table = tmp_path / "evaluation.csv"
    assert evaluate.main([str(comparison), "--episodes", "12", "--csv", str(table)]) == 0
    rows = _rows(table)
    assert [(r["seed"], r["actions"]) for r in rows] == [("0", "most-likely"), ("0", "sampled"),
                                                          ("1", "most-likely"), ("1", "sampled")]
    for row in rows:
        assert row["agent"] == "ctm" and row["episodes"] == "12"
        if row["actions"] == "most-likely":  # waits every step: every episode runs into the limit, unanswered
            assert (float(row["length_mean"]), float(row["time_limit_fraction"]), float(row["return_mean"])) == (9, 1, 0)
        else:
            assert float(row["length_mean"]) < 4 and float(row["time_limit_fraction"]) < 0.5
    printed = capsys.readouterr().out
    assert any(line.split()[:2] == ["ctm", "IQM"] for line in printed.splitlines())  # the agent's IQM over seeds


def test_sampled_evaluations_repeat_with_the_same_seed_and_differ_with_another(comparison):
    run = evaluate.runs_in(comparison)[0]
    (first,), (again,) = (evaluate.evaluate_run(run, ["sampled"], 16, seed=3) for _ in range(2))
    (other,) = evaluate.evaluate_run(run, ["sampled"], 16, seed=4)
    assert first.returns.tolist() == again.returns.tolist() and first.lengths.tolist() == again.lengths.tolist()
    assert (first.returns.tolist(), first.lengths.tolist()) != (other.returns.tolist(), other.lengths.tolist())


def test_a_run_folder_is_evaluated_on_its_own(comparison):
    runs = evaluate.runs_in(comparison / "runs" / "ctm" / "seed1")
    assert [(r.agent, r.seed) for r in runs] == [("ctm", 1)]
    (evaluation,) = evaluate.evaluate_run(runs[0], ["most-likely"], 4)
    assert evaluation.time_limit_fraction == 1


@pytest.mark.parametrize("make, message", [
    (lambda tmp: tmp / "missing", "is not a folder"),
    (lambda tmp: tmp, "has no config.yaml"),
])
def test_a_folder_that_holds_no_run_gets_one_line_and_no_table(tmp_path, capsys, make, message):
    table = tmp_path / "evaluation.csv"
    assert evaluate.main([str(make(tmp_path)), "--csv", str(table)]) == 2
    error = capsys.readouterr().err
    assert message in error and "Fix:" in error and len(error.strip().splitlines()) == 1
    assert not table.exists()
