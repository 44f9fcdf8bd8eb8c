"""python -m ctm_rl.tune: a study in SQLite with pruning, resuming it, and the saved preset training."""

import dataclasses
import logging
import signal

import numpy as np

import pytest
import yaml
from helpers import interrupt_training_at

optuna = pytest.importorskip("optuna")

import ctm_rl.train as train_module  # noqa: E402
from ctm_rl import tune  # noqa: E402
from ctm_rl.config import preset_file  # noqa: E402
from ctm_rl.errors import ConfigError  # noqa: E402
from ctm_rl.sb3.checkpoints import saved_steps  # noqa: E402

SMALL = dict(n_envs=2, algo=dict(n_steps=16, batch_size=32, n_epochs=1),
             policy_kwargs=dict(d_model=16, d_input=8, n_synch_out=4, memory_length=3))


@pytest.fixture
def tiny_agent(tmp_path):
    """A small CTM preset beside a search space whose only key decides the return: episodes of at most 5 steps
    score at most 5, below any CartPole episode of 200 steps."""
    folder = tmp_path / "agents"
    (folder / "search").mkdir(parents=True)
    preset = yaml.safe_load(preset_file("ctm").read_text())
    preset["default"] = {**preset["default"], **{k: v for k, v in SMALL.items() if k == "n_envs"}}
    preset["default"]["algo"].update(SMALL["algo"])
    preset["default"]["policy_kwargs"].update(SMALL["policy_kwargs"])
    (folder / "tiny.yml").write_text(yaml.safe_dump(preset))
    (folder / "search" / "tiny.yml").write_text(yaml.safe_dump(
        {"default": {"max_steps": {"type": "categorical", "choices": [5, 200]},
                     "learning_rate": {"type": "float", "low": 1e-4, "high": 1e-3, "log": True}}}))
    return folder / "tiny.yml"


class _Records(logging.Handler):
    """Keeps the log records it is given."""

    def __init__(self):
        super().__init__()
        self.records = []

    def emit(self, record):
        self.records.append(record)


def _config(agent, trials, score="final"):
    return tune.TuneConfig(env="CartPole-NoVel", agent=str(agent), trials=trials, timesteps=96, eval_freq=32,
                           eval_episodes=2, n_startup_trials=1, sampler_seed=0, score=score)


def test_a_study_prunes_resumes_and_its_best_preset_trains(tmp_path, tiny_agent):
    study_dir = tmp_path / "study"
    storage = f"sqlite:///{tmp_path / 'shared.db'}"
    # The first trial sets the bar (200-step episodes); a trial of 5-step episodes falls below the median at
    # its second evaluation and is pruned.
    study = tune.open_study(_config(tiny_agent, 2), storage, "tiny")
    study.enqueue_trial({"max_steps": 200, "learning_rate": 3e-4})
    study.enqueue_trial({"max_steps": 5, "learning_rate": 3e-4})
    saved = tmp_path / "tuned.yml"
    study = tune.run_study(_config(tiny_agent, 2), study_dir, storage, "tiny", save_preset=saved)
    states = [trial.state for trial in study.trials]
    assert states == [optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED]
    assert len(study.trials[1].intermediate_values) == 2  # stopped at its second evaluation, before the third
    assert (study_dir / "history.png").stat().st_size > 0 and (study_dir / "best.yaml").exists()

    # The same study again: one more trial joins the two.
    study = tune.run_study(_config(tiny_agent, 1), study_dir, storage, "tiny")
    assert len(study.trials) == 3

    preset = yaml.safe_load(saved.read_text())["default"]
    assert preset["max_steps"] == 200 and preset["algo"]["learning_rate"] == pytest.approx(3e-4)
    assert preset["tuning"]["study"] == "tiny" and preset["tuning"]["timesteps_per_trial"] == 96
    assert train_module.main(["--agent", str(saved), "--log-dir", str(tmp_path / "runs"), "--timesteps", "32",
                              "--eval-freq", "0", "--checkpoint-freq", "0", "--no-progress-bar"]) == 0
    config = yaml.safe_load((tmp_path / "runs" / "CartPole-NoVel" / "tuned-seed0" / "config.yaml").read_text())
    assert config["max_steps"] == 200 and config["policy_kwargs"]["d_model"] == 16


def test_sigterm_during_a_trial_stops_the_study_without_making_the_cut_run_a_result(tmp_path, tiny_agent, monkeypatch,
                                                                                  capfd):
    # The trial's training saves and stops at the interrupt; its evaluation at 32 steps must not become the value
    # of a finished trial, and the study must not go on to its next trial.
    interrupt_training_at(monkeypatch, 40, signal_number=signal.SIGTERM)
    study_dir = tmp_path / "study"
    argv = ["--agent", str(tiny_agent), "--trials", "2", "--timesteps", "96", "--eval-freq", "32", "--eval-episodes",
            "2", "--startup-trials", "1", "--out", str(study_dir)]
    reports = _Records()
    logging.getLogger("optuna.study._optimize").addHandler(reports)
    try:
        assert tune.main(argv) == 130
    finally:
        logging.getLogger("optuna.study._optimize").removeHandler(reports)
    # It says so in lines, not a traceback, and the study folder records the command that a resume repeats.
    assert [record.exc_info for record in reports.records if "KeyboardInterrupt" in record.getMessage()] == [None]
    assert "Interrupted: the trial under way is recorded as failed" in capfd.readouterr().err
    assert (study_dir / "command.txt").read_text().split("\n")[0].endswith(" ".join(argv))
    study = tune.open_study(_config(tiny_agent, 0), f"sqlite:///{study_dir / 'study.db'}", "CartPole-NoVel-tiny")
    assert [trial.state for trial in study.trials] == [optuna.trial.TrialState.FAIL]
    assert saved_steps(study_dir / "trials" / "trial0" / "seed0" / "model.zip") < 96


def test_bad_search_spaces_and_settings_are_refused_up_front(tmp_path, tiny_agent, capsys):
    (tiny_agent.parent / "search" / "tiny.yml").write_text("default:\n  n_epochs: {type: normal}\n")
    assert tune.main(["--agent", str(tiny_agent), "--out", str(tmp_path / "s"), "--trials", "1"]) == 2
    assert "n_epochs needs a type" in capsys.readouterr().err
    assert tune.main(["--agent", "ctm", "--timesteps", "100", "--eval-freq", "1000", "--out", str(tmp_path / "s")]) == 2
    assert "--eval-freq (1000) exceeds --timesteps (100)" in capsys.readouterr().err
    assert not (tmp_path / "s").exists()


def test_the_comparison_summary_says_which_presets_were_tuned_and_with_what_budget():
    from ctm_rl.report import _tuning_lines

    record = {"env": "CartPole-NoVel", "study": "s", "trial": 3, "value": 480.0, "trials": 40,
              "timesteps_per_trial": 100_000, "seeds_per_trial": 2}
    assert "both use hand-set presets" in _tuning_lines({"ctm": [{}], "lstm": [{}]})[0]
    one = " ".join(_tuning_lines({"ctm": [{"tuning": record}], "lstm": [{}]}))
    assert "ctm: study s on CartPole-NoVel, 40 trials of 100,000 steps x 2 seed(s) scored by the final return" in one
    assert "did not get the same tuning budget** (lstm untuned)" in one
    both = " ".join(_tuning_lines({"ctm": [{"tuning": record}], "lstm": [{"tuning": {**record, "study": "t"}}]}))
    assert "same tuning budget" not in both
    scored_otherwise = {**record, "study": "t", "score": "mean"}
    assert "did not get the same tuning budget" in " ".join(
        _tuning_lines({"ctm": [{"tuning": record}], "lstm": [{"tuning": scored_otherwise}]}))


@pytest.mark.parametrize("flags, deterministic", [((), True), (("--eval-stochastic",), False)])
def test_trials_are_evaluated_as_the_study_says(tmp_path, flags, deterministic):
    args = tune.build_parser().parse_args(["--timesteps", "96", "--eval-freq", "32", *flags])
    config = tune.config_from_args(args)
    assert config.eval_deterministic is deterministic
    assert [c.eval_deterministic for c in tune.trial_configs(config, {}, tmp_path)] == [deterministic]


def test_the_mean_score_is_the_area_under_each_runs_learning_curve_and_a_study_keeps_its_score(tmp_path, tiny_agent):
    study_dir = tmp_path / "study"
    storage = f"sqlite:///{tmp_path / 'shared.db'}"
    config = dataclasses.replace(_config(tiny_agent, 1, score="mean"), seeds=2)
    tune.open_study(config, storage, "auc").enqueue_trial({"max_steps": 200, "learning_rate": 3e-4})
    study = tune.run_study(config, study_dir, storage, "auc")
    trial = study.trials[0]
    curves = []
    for seed in range(2):
        with np.load(study_dir / "trials" / "trial0" / f"seed{seed}" / "eval" / "evaluations.npz") as data:
            curves.append(data["results"].mean(axis=1))
    assert [len(curve) for curve in curves] == [3, 3]
    assert any(curve[-1] != curve.mean() for curve in curves)  # the two scores differ here
    # Reported after each evaluation: the run's mean so far, the second seed continuing the step count.
    expected = [float(np.mean(curve[:k + 1])) for curve in curves for k in range(3)]
    assert [trial.intermediate_values[step] for step in range(6)] == pytest.approx(expected)
    assert trial.value == pytest.approx(np.mean([curve.mean() for curve in curves]))
    assert study.user_attrs["score"] == "mean"
    assert tune.best_preset(study, config)["default"]["tuning"]["score"] == "mean"
    with pytest.raises(ConfigError, match="maximises the 'mean' score, not 'final'. Fix: --score mean"):
        tune.open_study(_config(tiny_agent, 1), storage, "auc")
