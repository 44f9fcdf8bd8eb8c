"""python -m ctm_rl.compare: agent specs, the comparison folder, reruns, reports and the Ray backend."""

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
from helpers import children, interrupt_training_at, live_group_members, rewrite_zip_member, signal_when

from ctm_rl import compare, report
from ctm_rl.compare import RunInterrupted
from ctm_rl.config import resolve_config
from ctm_rl.runs import AgentSpec, CompareConfig, read_comparison_config
from ctm_rl.errors import ConfigError

TINY = ["--env", "CartPole-NoVel", "--agents", "ctm", "lstm", "--seeds", "2", "--timesteps", "512",
        "--eval-freq", "256", "--eval-episodes", "2", "--hyperparams", "n_epochs=1"]
FILES = {"comparison.yaml", "command.txt", "curves.csv", "runs.csv", "params.csv", "summary.md", "curves_steps.png",
         "curves_wall.png", "aggregates.png", "runs"}


def _read_csv(path):
    with open(path, newline="") as file:
        return list(csv.DictReader(file))


def _returns(out, agent, seed):
    result = json.loads((out / "runs" / agent / f"seed{seed}" / "result.json").read_text())
    return result["evaluations"]["return_mean"]


@pytest.mark.parametrize("text, preset, overrides, dirname", [
    ("ctm", "ctm", (), "ctm"),
    ("ctm:ticks=5", "ctm", ("ticks=5",), "ctm_ticks=5"),
    ("ctm:ticks=2,memory_length=20", "ctm", ("ticks=2", "memory_length=20"), "ctm_ticks=2_memory_length=20"),
    ("lstm:net_arch=[64, 64],n_epochs=4", "lstm", ("net_arch=[64, 64]", "n_epochs=4"), "lstm_net_arch=_64_64_n_epochs=4"),
    ("ctm:carry_traces=false", "ctm", ("carry_traces=false",), "ctm_carry_traces=false"),
])
def test_agent_specs_parse_preset_and_overrides(text, preset, overrides, dirname):
    spec = AgentSpec.parse(text)
    assert (spec.label, spec.preset, spec.overrides, spec.dirname) == (text, preset, overrides, dirname)


@pytest.mark.parametrize("text", ["ctm:ticks", ":ticks=5", "ctm:=3"])
def test_bad_agent_specs_explain_the_syntax(text):
    with pytest.raises(ConfigError, match="key=value|preset name"):
        AgentSpec.parse(text)


def test_baseline_defaults_to_the_first_lstm_agent():
    assert CompareConfig(agents=["ctm", "lstm:n_epochs=4", "lstm"]).baseline_agent() == "lstm:n_epochs=4"
    assert CompareConfig(agents=["ctm:ticks=1", "ctm:ticks=5"]).baseline_agent() == "ctm:ticks=5"
    assert CompareConfig(agents=["ctm", "lstm"], baseline="ctm").baseline_agent() == "ctm"


def test_comparison_folder_summary_and_rerun_of_one_deleted_run(tmp_path, capsys):
    out = tmp_path / "cmp"
    assert compare.main([*TINY, "--out", str(out), "--workers", "2"]) == 0
    assert {p.name for p in out.iterdir()} == FILES
    for name in ("curves_steps.png", "curves_wall.png", "aggregates.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # Tidy curves: one row per (agent, seed, evaluation).
    curves = _read_csv(out / "curves.csv")
    assert len(curves) == 2 * 2 * 2
    assert {(r["agent"], r["seed"], r["step"]) for r in curves} == {
        (a, str(s), str(t)) for a in ("ctm", "lstm") for s in (0, 1) for t in (256, 512)}
    for row in curves:
        assert 0 < float(row["train_time_s"]) < float(row["wall_time_s"])
        # steps_per_second comes from the unrounded time; the CSV rounds train_time_s to the millisecond.
        train_time, step = float(row["train_time_s"]), int(row["step"])
        assert step / (train_time + 5e-4) - 0.05 <= float(row["steps_per_second"]) <= step / (train_time - 5e-4) + 0.05
        assert float(row["return_mean"]) >= 1 and row["episodes"] == "2"

    # Parameter-matched agents, and the summary's numbers are the statistics of the runs' final returns.
    params = {r["agent"]: int(r["parameters"]) for r in _read_csv(out / "params.csv")}
    assert abs(params["ctm"] - params["lstm"]) / params["ctm"] < 0.05
    runs = _read_csv(out / "runs.csv")
    finals = {a: np.array([float(r["final_return"]) for r in runs if r["agent"] == a]) for a in ("ctm", "lstm")}
    summary = (out / "summary.md").read_text()
    ctm_row = next(line for line in summary.splitlines() if line.startswith("| ctm |"))
    assert f"{params['ctm']:,}" in ctm_row and f"| {finals['ctm'].mean():.3g} [" in ctm_row
    assert next(line for line in summary.splitlines() if line.startswith("| lstm |")).count("baseline") == 1
    assert "P(> lstm)" in summary and "![" in summary
    assert "| ctm | n_envs=8, normalize_reward=true, " in summary, "the settings table names each agent's rollout"

    # Deleting one run's result retrains exactly that run, and gives the same curve (seeded runs).
    kept = (out / "runs" / "ctm" / "seed0" / "result.json").read_bytes()
    deleted = _returns(out, "lstm", 1)
    (out / "runs" / "lstm" / "seed1" / "result.json").unlink()
    config = CompareConfig.from_dict(yaml.safe_load((out / "comparison.yaml").read_text()))
    assert compare.run_comparison(config, out, workers=2) == [("lstm", 1)]
    assert (out / "runs" / "ctm" / "seed0" / "result.json").read_bytes() == kept
    assert _returns(out, "lstm", 1) == deleted
    assert "4 runs: 3 finished, 1 to train" in capsys.readouterr().out

    # A command naming fewer agents or seeds than the folder holds says that the folder's others stay in.
    assert compare.main([*TINY, "--agents", "ctm", "--seeds", "1", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"{out} also holds agent lstm and seed 1 from earlier commands" in printed
    assert "4 runs: 4 finished, 0 to train" in printed


def test_report_rebuilds_without_training(tmp_path, monkeypatch):
    out = tmp_path / "cmp"
    assert compare.main([*TINY, "--seeds", "1", "--out", str(out), "--workers", "1",
                         "--description", "Why this budget."]) == 0
    for name in ("summary.md", "curves.csv", "curves_steps.png", "aggregates.png"):
        (out / name).unlink()
    # A record written before runs recorded their rollout settings takes them from the run's config.yaml.
    record_path = out / "runs" / "ctm" / "seed0" / "result.json"
    record = json.loads(record_path.read_text())
    assert (record.pop("n_envs"), record.pop("max_steps")) == (8, None)
    record_path.write_text(json.dumps(record))

    def no_training(job):
        raise AssertionError("--report must not train")

    monkeypatch.setattr(compare, "execute_run", no_training)
    assert compare.main(["--report", str(out), "--page", str(tmp_path / "docs" / "results.md")]) == 0
    assert (out / "summary.md").exists() and (out / "curves_steps.png").exists()
    page = (tmp_path / "docs" / "results.md").read_text()
    assert "## ctm vs lstm on CartPole-NoVel\n\nWhy this budget." in page
    assert "| ctm | n_envs=8, normalize_reward=true, " in page
    assert "](results/cmp/curves_steps.png)" in page
    assert "Each section's folder under results/ keeps its comparison's settings" in page.split("\n")[2]
    assert (tmp_path / "docs" / "results" / "cmp" / "aggregates.png").exists()
    assert (tmp_path / "docs" / "results" / "cmp" / "runs.csv").exists()

    # The copies beside the page rebuild it once the comparison folder (models, logs) is gone.
    shutil.rmtree(out)
    copy = tmp_path / "docs" / "results" / "cmp"
    assert not list(copy.rglob("model.zip"))
    assert compare.main(["--report", str(copy), "--page", str(tmp_path / "docs" / "results.md")]) == 0
    rebuilt = (tmp_path / "docs" / "results.md").read_text()
    assert rebuilt.split("\n", 3)[3] == page.split("\n", 3)[3], "the same page but for the command that made it"


def test_extending_a_folder_with_other_run_settings_is_refused(tmp_path, capsys):
    out = tmp_path / "cmp"
    (out).mkdir()
    (out / "comparison.yaml").write_text(yaml.safe_dump(CompareConfig(timesteps=1000).to_dict()))
    assert compare.main([*TINY, "--out", str(out)]) == 2
    error = capsys.readouterr().err
    assert "timesteps=1000" in error and "new --out" in error


@pytest.mark.parametrize("args, message", [
    (["--agents", "ctm", "lsmt"], "agent 'lsmt': Unknown agent 'lsmt'"),
    (["--agents", "ctm", "lstm:ticks=5"], "agent 'lstm:ticks=5': Unknown hyperparameter 'ticks'"),
    (["--env", "CartPol"], "CartPole"),
    (["--baseline", "gru"], "--baseline 'gru' is not one of the agents"),
    (["--eval-freq", "1000"], "--eval-freq (1000) exceeds --timesteps (512)"),
    (["--page", "x.md"], "--page goes with --report"),
    (["--agents", "lstm", "ctm:ticks=0"], "agent 'ctm:ticks=0': ticks must be an integer >= 1"),
    (["--agents", "ctm:d_model=abc"], "agent 'ctm:d_model=abc': d_model must be an integer >= 1"),
    (["--agents", "ctm:learning_rate=lin_x"], "'lin_x' is not a linear schedule"),
    # Policy arguments the policy itself would refuse: caught before the first run trains, not when its turn comes.
    (["--agents", "lstm", "ctm:standardize_momentum=2"],
     "agent 'ctm:standardize_momentum=2': standardize_momentum must be in [0, 1]"),
    (["--agents", "ctm:share_ctm=false,detach_critic=true"], "detach_critic=True applies to a shared CTM"),
    (["--agents", "ctm", "lstm:shared_lstm=false,detach_critic=false"], "detach_critic=False applies to a shared LSTM"),
    (["--agents", "ctm:activation_fn=Relu"], "activation_fn 'Relu' is not a torch.nn module name"),
    (["--env", "MiniGrid-DoorKey-5x5", "--stop-at-threshold"],
     "--stop-at-threshold needs a threshold, and MiniGrid-DoorKey-5x5 registers no reward_threshold"),
])
def test_bad_input_is_refused_before_training_and_leaves_no_folder(tmp_path, capsys, args, message):
    assert compare.main([*TINY, "--out", str(tmp_path / "cmp"), *args]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "cmp").exists()


def test_report_of_a_folder_that_is_not_a_comparison(tmp_path, capsys):
    assert compare.main(["--report", str(tmp_path)]) == 2
    assert "not a comparison folder" in capsys.readouterr().err


def test_an_interrupted_run_is_not_a_result(tmp_path, monkeypatch):
    interrupt_training_at(monkeypatch, 64)
    config = CompareConfig(agents=["ctm"], seeds=[0], timesteps=512, eval_freq=256, eval_episodes=2)
    job = compare.plan(config, tmp_path)[0]
    with pytest.raises(RunInterrupted, match="stopped at"):
        compare.execute_run(job)
    assert (tmp_path / "runs" / "ctm" / "seed0" / "model.zip").exists()  # what it learned is kept
    assert not (tmp_path / "runs" / "ctm" / "seed0" / "result.json").exists()


def test_runs_stop_at_their_first_evaluation_at_the_threshold_and_continue_once_the_stop_is_dropped(tmp_path, capsys):
    out = tmp_path / "cmp"
    # Every CartPole evaluation returns at least 8, so each run stops at its first, the 256-step one.
    assert compare.main([*TINY, "--timesteps", "1024", "--threshold", "5", "--stop-at-threshold",
                         "--out", str(out)]) == 0
    for agent in ("ctm", "lstm"):
        for seed in (0, 1):
            result = json.loads((out / "runs" / agent / f"seed{seed}" / "result.json").read_text())
            assert result["timesteps"] == 256 and result["stopped_at_threshold"] is True
            assert result["evaluations"]["step"] == [256] and result["evaluations"]["return_mean"][0] >= 5
    assert {row["steps_to_threshold"] for row in _read_csv(out / "runs.csv")} == {"256"}
    assert "each run ended at its first evaluation at or above 5 (4 of 4 runs)" in (out / "summary.md").read_text()
    capsys.readouterr()
    # Stopped runs are finished: running the command again trains nothing, and the threshold stays the folder's.
    assert compare.main([*TINY, "--timesteps", "1024", "--stop-at-threshold", "--out", str(out)]) == 0
    assert "4 runs: 4 finished, 0 to train" in capsys.readouterr().out
    assert compare.main([*TINY, "--timesteps", "1024", "--threshold", "50", "--stop-at-threshold",
                         "--out", str(out)]) == 2
    assert "stopped at the threshold 5.0, not 50.0" in capsys.readouterr().err
    # Without the stop, the folder's runs continue from where they stopped to the whole budget.
    assert compare.main([*TINY, "--timesteps", "1024", "--out", str(out)]) == 0
    assert "4 runs had stopped at the threshold; without --stop-at-threshold this command continues them from there " \
           "to 1,024 steps" in capsys.readouterr().out
    for agent in ("ctm", "lstm"):
        result = json.loads((out / "runs" / agent / "seed0" / "result.json").read_text())
        assert result["timesteps"] == 1024 and result["stopped_at_threshold"] is False
        assert result["resumed_at"] == [256] and result["evaluations"]["step"] == [256, 512, 768, 1024]
    assert "Stopped at the threshold" not in (out / "summary.md").read_text()
    assert compare.main([*TINY, "--timesteps", "1024", "--stop-at-threshold", "--out", str(out)]) == 2
    assert "stop_at_threshold=False, not True" in capsys.readouterr().err
    # A threshold no evaluation reaches: every run trains its whole budget.
    high = tmp_path / "high"
    assert compare.main([*TINY[:6], "1", *TINY[7:], "--threshold", "1000", "--stop-at-threshold",
                         "--out", str(high)]) == 0
    for agent in ("ctm", "lstm"):
        result = json.loads((high / "runs" / agent / "seed0" / "result.json").read_text())
        assert result["timesteps"] == 512 and result["stopped_at_threshold"] is False
        assert result["evaluations"]["step"] == [256, 512]
    assert "(0 of 2 runs; the other 2 never reached it and trained their budget)" in (high / "summary.md").read_text()


RESUMABLE = ["--env", "CartPole-NoVel", "--agents", "ctm", "--seeds", "1", "--timesteps", "512", "--eval-freq", "128",
             "--eval-episodes", "2", "--checkpoint-freq", "128", "--hyperparams", "n_epochs=1", "--workers", "1"]


def _evaluations(run_dir):
    with np.load(run_dir / "eval" / "evaluations.npz") as data:
        return data["timesteps"].tolist(), data["wall_time"].tolist()


def test_an_interrupted_run_continues_from_its_save_when_the_comparison_runs_again(tmp_path, monkeypatch, capsys):
    out, run_dir = tmp_path / "cmp", tmp_path / "cmp" / "runs" / "ctm" / "seed0"
    interrupt_training_at(monkeypatch, 300)
    assert compare.main([*RESUMABLE, "--out", str(out)]) == 130
    steps, wall_time = _evaluations(run_dir)
    assert steps == [128, 256]
    # Only the newest checkpoint is kept: the run continues from its newest save, and older ones are only disk.
    assert [path.name for path in (run_dir / "checkpoints").iterdir()] == ["ctm_256_steps.zip"]
    monkeypatch.undo()

    assert compare.main([*RESUMABLE, "--out", str(out)]) == 0
    assert "1 to train (1 continue from a save)" in capsys.readouterr().out
    result = json.loads((run_dir / "result.json").read_text())
    saved_at = result["resumed_at"][0]
    assert result["resumed_at"] == [saved_at] and 300 <= saved_at < 512  # Ctrl-C's model.zip, newer than 256
    assert result["timesteps"] >= 512 and result["evaluations"]["step"][:2] == steps
    # The earlier evaluations are kept as they were, not made again, and the clock continues from them.
    assert result["evaluations"]["wall_time_s"][:2] == wall_time
    assert result["wall_time_s"] > wall_time[-1]
    assert not (run_dir / "checkpoints").exists()  # model.zip holds the finished run
    runs = _read_csv(out / "runs.csv")
    assert runs[0]["resumed_at"] == str(saved_at)
    assert f"ctm seed 0 at {saved_at:,} steps" in (out / "summary.md").read_text()


def test_a_run_that_finished_training_but_has_no_record_is_recorded_not_trained_again(tmp_path, capsys):
    # A comparison interrupted while one of its runs trains its last steps: the run finishes and saves its whole
    # budget, but the comparison stops before writing its record. The same command must record it, not wipe it.
    out, run_dir = tmp_path / "cmp", tmp_path / "cmp" / "runs" / "ctm" / "seed0"
    assert compare.main([*RESUMABLE, "--out", str(out)]) == 0
    finished = json.loads((run_dir / "result.json").read_text())
    (run_dir / "result.json").unlink()
    (run_dir / "marker").write_text("kept")  # gone if the folder were replaced

    assert compare.main([*RESUMABLE, "--out", str(out)]) == 0
    assert "1 to train (1 continue from a save)" in capsys.readouterr().out
    assert (run_dir / "marker").exists()
    result = json.loads((run_dir / "result.json").read_text())
    assert result["timesteps"] == finished["timesteps"] and result["evaluations"] == finished["evaluations"]
    assert result["wall_time_s"] == pytest.approx(finished["evaluations"]["wall_time_s"][-1])
    assert result["resumed_at"] == []


def test_a_continued_run_records_the_save_it_loaded_when_a_newer_one_is_damaged(tmp_path, monkeypatch, capsys):
    out, run_dir = tmp_path / "cmp", tmp_path / "cmp" / "runs" / "ctm" / "seed0"
    interrupt_training_at(monkeypatch, 300)
    assert compare.main([*RESUMABLE, "--out", str(out)]) == 130
    monkeypatch.undo()
    steps, wall_time = _evaluations(run_dir)
    # Ctrl-C's model.zip keeps a readable step count but loses its weights, so the run continues from the
    # checkpoint at 256 steps.
    rewrite_zip_member(run_dir / "model.zip", "policy.pth", lambda content: content[:100])

    assert compare.main([*RESUMABLE, "--out", str(out)]) == 0
    assert "Skipping model.zip" in capsys.readouterr().err
    result = json.loads((run_dir / "result.json").read_text())
    assert result["resumed_at"] == [256]
    assert result["evaluations"]["step"][:2] == steps and result["evaluations"]["wall_time_s"][:2] == wall_time
    assert result["wall_time_s"] > wall_time[-1]
    assert f"ctm seed 0 at 256 steps" in (out / "summary.md").read_text()


def test_a_save_of_other_settings_is_not_continued(tmp_path, monkeypatch, capsys):
    out, run_dir = tmp_path / "cmp", tmp_path / "cmp" / "runs" / "ctm" / "seed0"
    interrupt_training_at(monkeypatch, 300)
    assert compare.main([*RESUMABLE, "--out", str(out)]) == 130
    monkeypatch.undo()
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    saved["algo"]["clip_range"] = 0.1  # as if the preset had changed since
    (run_dir / "config.yaml").write_text(yaml.safe_dump(saved))
    assert compare.main([*RESUMABLE, "--out", str(out)]) == 0
    assert "continue from a save" not in capsys.readouterr().out
    result = json.loads((run_dir / "result.json").read_text())
    assert result["resumed_at"] == [] and result["algo"]["clip_range"] == 0.2


def test_a_save_whose_config_is_damaged_is_kept_and_the_comparison_says_how_to_go_on(tmp_path, monkeypatch, capsys):
    out, run_dir = tmp_path / "cmp", tmp_path / "cmp" / "runs" / "ctm" / "seed0"
    interrupt_training_at(monkeypatch, 300)
    assert compare.main([*RESUMABLE, "--out", str(out)]) == 130
    monkeypatch.undo()
    (run_dir / "config.yaml").write_text("env: [cut short")
    saves = sorted(path.relative_to(run_dir) for path in run_dir.rglob("*.zip"))
    capsys.readouterr()
    assert compare.main([*RESUMABLE, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "config.yaml cannot be read" in err and f"delete {run_dir}" in err and "Traceback" not in err
    assert sorted(path.relative_to(run_dir) for path in run_dir.rglob("*.zip")) == saves and saves
    assert not (run_dir / "result.json").exists()


def test_without_checkpoints_an_interrupted_run_starts_over(tmp_path, monkeypatch, capsys):
    out, run_dir = tmp_path / "cmp", tmp_path / "cmp" / "runs" / "ctm" / "seed0"
    uninterrupted = [*RESUMABLE, "--checkpoint-freq", "0"]  # the last value given wins
    interrupt_training_at(monkeypatch, 300)
    assert compare.main([*uninterrupted, "--out", str(out)]) == 130
    assert (run_dir / "model.zip").exists() and not (run_dir / "checkpoints").exists()
    monkeypatch.undo()
    assert compare.main([*uninterrupted, "--out", str(out)]) == 0
    assert "continue from a save" not in capsys.readouterr().out
    assert json.loads((run_dir / "result.json").read_text())["resumed_at"] == []


def test_ctrl_c_stops_a_serial_comparison_keeps_finished_runs_and_exits_130(tmp_path, monkeypatch, capsys):
    out = tmp_path / "cmp"
    assert compare.main(["--env", "CartPole-NoVel", "--agents", "ctm", "--seeds", "1", "--timesteps", "64",
                         "--eval-freq", "32", "--eval-episodes", "2", "--hyperparams", "n_epochs=1", "n_steps=8",
                         "batch_size=64", "--workers", "1", "--out", str(out)]) == 0
    interrupt_training_at(monkeypatch, 32)
    assert compare.main(["--env", "CartPole-NoVel", "--agents", "ctm", "--seeds", "3", "--timesteps", "64",
                         "--eval-freq", "32", "--eval-episodes", "2", "--hyperparams", "n_epochs=1", "n_steps=8",
                         "batch_size=64", "--workers", "1", "--out", str(out)]) == 130
    assert (out / "runs" / "ctm" / "seed0" / "result.json").exists()  # the finished run is kept
    assert not (out / "runs" / "ctm" / "seed1" / "result.json").exists()
    assert not (out / "runs" / "ctm" / "seed2").exists()  # and no further run started
    assert "failed" not in capsys.readouterr().err


def test_runs_honour_the_users_thread_setting(tmp_path, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    seen = []
    monkeypatch.setattr(compare, "plan", lambda config, out, device, threads, *rest: seen.append(threads) or [])
    monkeypatch.setattr(compare, "write_report", lambda out: None, raising=False)
    from ctm_rl import report as report_module

    monkeypatch.setattr(report_module, "write_report", lambda out: None)
    compare.run_comparison(CompareConfig(agents=["ctm"], seeds=[0]), tmp_path, workers=1)
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    compare.run_comparison(CompareConfig(agents=["ctm"], seeds=[0]), tmp_path, workers=1)
    monkeypatch.delenv("OMP_NUM_THREADS")
    compare.run_comparison(CompareConfig(agents=["ctm"], seeds=[0]), tmp_path, workers=1)
    assert seen == [1, 2, 1], "the user's setting, else one thread per run even with one worker"


@pytest.mark.parametrize("steps, expected", [
    ([10.0, float("nan"), 30.0], "30 [10, never] (2/3)"),
    ([10.0, float("nan"), float("nan")], "not reached [10, never] (1/3)"),
    ([float("nan")], "not reached (0/1)"),
    ([1000.0, 3000.0], "2,000 [1,000, 3,000] (2/2)"),
    ([2000.0] * 4, "2,000 [2,000, 2,000] (4/4)"),
])
def test_steps_to_threshold_counts_unreached_runs_as_never(steps, expected):
    assert report._steps_to_threshold(steps) == expected


@pytest.mark.slow
def test_ray_backend_gives_the_same_comparison(tmp_path):
    pytest.importorskip("ray")
    local, remote = tmp_path / "local", tmp_path / "ray"
    assert compare.main([*TINY, "--out", str(local), "--workers", "2"]) == 0
    assert compare.main([*TINY, "--out", str(remote), "--backend", "ray"]) == 0
    assert {p.name for p in remote.iterdir()} == FILES
    for agent in ("ctm", "lstm"):
        for seed in (0, 1):
            assert _returns(remote, agent, seed) == _returns(local, agent, seed)
    columns = ("agent", "seed", "step", "return_mean", "return_std", "length_mean", "episodes")
    strip = lambda rows: [tuple(r[c] for c in columns) for r in rows]
    assert strip(_read_csv(remote / "curves.csv")) == strip(_read_csv(local / "curves.csv"))


def test_ray_backend_without_ray_says_how_to_install_it(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(__import__("sys").modules, "ray", None)  # makes `import ray` fail
    assert compare.main([*TINY, "--seeds", "1", "--out", str(tmp_path / "cmp"), "--backend", "ray"]) == 2
    assert "pip install 'ctm-rl[ray]'" in capsys.readouterr().err


def test_a_matched_lstm_is_sized_to_the_ctm_it_is_compared_with():
    """`ctm:d_model=64 lstm`: the LSTM matches the CTM as trained, not the ctm preset's d_model 128."""
    from ctm_rl.config import env_spaces, resolve_config
    from ctm_rl.sb3.lstm import match_lstm_hidden_size

    configs = compare.agent_configs(CompareConfig(env="CartPole-NoVel", agents=["lstm", "ctm:d_model=64"]))
    assert list(configs) == ["lstm", "ctm:d_model=64"]  # the comparison's order, whatever the build order
    ctm, env = resolve_config("CartPole-NoVel", "ctm", {"d_model": 64})
    preset_ctm, _ = resolve_config("CartPole-NoVel", "ctm")
    spaces = env_spaces(env, None, {})
    expected = match_lstm_hidden_size(*spaces, ctm.policy_kwargs)
    assert configs["lstm"].policy_kwargs["lstm_hidden_size"] == expected
    assert expected != match_lstm_hidden_size(*spaces, preset_ctm.policy_kwargs)
    assert configs["ctm:d_model=64"].policy_kwargs["d_model"] == 64


def test_compare_takes_a_plugged_in_env_with_its_module_and_arguments(tmp_path):
    out = tmp_path / "cmp"
    assert compare.main(["--env", "ToyCueRecall", "--env-module", "toy_envs", "--env-kwargs", "n_cues=3", "delay=1",
                         "--agents", "ctm", "--seeds", "1", "--timesteps", "64", "--eval-freq", "32",
                         "--eval-episodes", "2", "--n-envs", "2", "--hyperparams", "n_steps=16", "n_epochs=1",
                         "d_model=16", "d_input=8", "n_synch_out=4", "--threshold", "1", "--out", str(out)]) == 0
    config = yaml.safe_load((out / "runs" / "ctm" / "seed0" / "config.yaml").read_text())
    assert config["env_module"] == "toy_envs" and config["env_kwargs"] == {"n_cues": 3, "delay": 1}
    saved = yaml.safe_load((out / "comparison.yaml").read_text())
    assert saved["env_module"] == "toy_envs" and saved["env_kwargs"] == {"n_cues": 3, "delay": 1}


def test_test_time_ticks_and_dynamics_are_recorded_per_run_and_reported(tmp_path):
    out = tmp_path / "cmp"
    assert compare.main([*TINY[:6], "1", *TINY[7:], "--out", str(out), "--workers", "1", "--test-ticks", "1", "3",
                         "--max-steps", "50"]) == 0
    ctm = json.loads((out / "runs" / "ctm" / "seed0" / "result.json").read_text())
    lstm = json.loads((out / "runs" / "lstm" / "seed0" / "result.json").read_text())
    assert [entry["ticks"] for entry in ctm["test_ticks"]] == [1, 3]
    for entry in ctm["test_ticks"]:
        assert len(entry["returns"]) == 2 and entry["mean"] == pytest.approx(np.mean(entry["returns"]))
        assert all(1 <= r <= 50 for r in entry["returns"])
    assert "test_ticks" not in lstm, "an LSTM has no ticks"
    for result in (ctm, lstm):
        assert 1 <= result["dynamics"]["steps"] <= 50 and np.isfinite(result["dynamics"]["mean_correlation"])
    summary = (out / "summary.md").read_text()
    assert "| agent | 1 ticks | 3 ticks |" in summary
    assert f"| ctm | {ctm['test_ticks'][1]['mean']:.3g} [" in summary
    assert "dominant-frequency spread" in summary and "| lstm | 1 |" in summary


def _long_comparison(out, seeds: int, backend: str = "local", workers: int = 2) -> tuple[list[str], dict[str, str]]:
    """The command line and environment of a comparison of ``seeds`` runs far too long to finish in a test,
    ``workers`` at a time: local workers, or half of the local Ray instance's CPUs per run."""
    import os
    import sys

    command = [sys.executable, "-m", "ctm_rl.compare", "--env", "CartPole-NoVel", "--agents", "ctm", "--seeds",
               str(seeds), "--timesteps", "400000", "--eval-freq", "512", "--eval-episodes", "1", "--hyperparams",
               "n_epochs=1", "d_model=16", "n_synch_out=4", "--out", str(out), "--backend", backend]
    command += ["--workers", str(workers)] if backend == "local" else ["--cpus-per-run", str(os.cpu_count() / 2)]
    return command, {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(sys.path)}


_RAY = pytest.mark.skipif(__import__("importlib").util.find_spec("ray") is None, reason="needs ctm-rl[ray]")


@pytest.mark.parametrize("backend, target, signal_name", [
    ("local", "main process", "SIGINT"), ("local", "process group", "SIGINT"),
    # SIGTERM: kill, a batch scheduler at its time limit, a container stop.
    ("local", "main process", "SIGTERM"), ("local", "process group", "SIGTERM"),
    pytest.param("ray", "main process", "SIGINT", marks=_RAY),
    pytest.param("ray", "process group", "SIGINT", marks=_RAY),
])
def test_ctrl_c_or_sigterm_stops_a_parallel_comparison_within_seconds_and_exits_130(tmp_path, backend, target,
                                                                                     signal_name):
    import os
    import signal
    import subprocess
    import time

    out = tmp_path / "cmp"
    # Four long runs, two at a time: none can finish before the interrupt.
    command, env = _long_comparison(out, seeds=4, backend=backend)
    # The comparison starts with SIGINT's default action even where the suite runs in the background of a
    # non-interactive shell, which leaves SIGINT ignored in its children (POSIX) and so hides Ctrl-C from them.
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               start_new_session=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline = time.monotonic() + 120
        while len(list(out.glob("runs/ctm/seed*/eval/evaluations.npz"))) < 2:  # both workers are training
            assert time.monotonic() < deadline and process.poll() is None, process.communicate()
            time.sleep(0.5)
        interrupted = time.monotonic()
        if target == "main process":
            process.send_signal(getattr(signal, signal_name))
        else:
            os.killpg(process.pid, getattr(signal, signal_name))  # Ctrl-C in a terminal; SIGTERM from a scheduler
        _, err = process.communicate(timeout=30)
        stopped = time.monotonic() - interrupted
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    assert process.returncode == 130 and stopped < 10, (process.returncode, stopped, err)
    assert "Interrupted: 0 of 4 runs are finished" in err and "Traceback" not in err
    assert not list(out.glob("runs/ctm/seed*/result.json"))
    assert len(list(out.glob("runs/ctm/seed*"))) == 2, "the queued runs never started"
    if backend == "local":  # each interrupted run saved what it had learned, for the next attempt to continue from
        assert len(list(out.glob("runs/ctm/seed*/model.zip"))) == 2


def test_sigterm_stops_a_serial_comparison_whose_run_saves_what_it_learned(tmp_path):
    out = tmp_path / "cmp"
    command, env = _long_comparison(out, seeds=2, workers=1)
    returncode, err = signal_when(command, env, lambda: bool(list(out.glob("runs/ctm/seed0/eval/evaluations.npz"))))
    assert returncode == 130, (returncode, err)
    assert "Interrupted at" in err and "Interrupted: 0 of 2 runs are finished" in err and "Traceback" not in err
    assert (out / "runs" / "ctm" / "seed0" / "model.zip").exists()


@pytest.mark.skipif(not __import__("os").path.exists("/proc"), reason="reads /proc")
def test_workers_of_a_killed_comparison_stop_instead_of_training_on(tmp_path):
    import os
    import signal
    import subprocess
    import time

    out = tmp_path / "cmp"
    command, env = _long_comparison(out, seeds=2)
    log = tmp_path / "comparison.log"  # the comparison's and its workers' output, shown if a save is missing
    with open(log, "w") as output:
        process = subprocess.Popen(command, env=env, stdout=output, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while len(list(out.glob("runs/ctm/seed*/eval/evaluations.npz"))) < 2:
            assert time.monotonic() < deadline and process.poll() is None
            time.sleep(0.5)
        assert len(children(process.pid, "spawn_main")) == 2
        os.kill(process.pid, signal.SIGKILL)  # the comparison dies without a chance to stop its workers
        process.wait()
        # A worker stuck in its run leaves after two minutes, saying where it was stuck.
        deadline = time.monotonic() + 150
        while live_group_members(process.pid):
            assert time.monotonic() < deadline, f"a worker of the killed comparison trains on:\n{log.read_text()}"
            time.sleep(0.5)
    finally:
        try:
            os.killpg(process.pid, signal.SIGKILL)  # whatever is left of the comparison, workers included
        except ProcessLookupError:
            pass
    # Each run saved what it had learned when it stopped.
    assert all((out / "runs" / "ctm" / f"seed{seed}" / "model.zip").exists() for seed in (0, 1)), \
        log.read_text()[-3000:]


@pytest.mark.parametrize("flags, deterministic, words", [((), True, "deterministic actions"),
                                                         (("--eval-stochastic",), False, "sampled actions")])
def test_every_run_is_evaluated_as_the_comparison_says(flags, deterministic, words):
    config = compare.config_from_args(compare.build_parser().parse_args(TINY + list(flags)))
    assert config.eval_deterministic is deterministic
    assert [c.eval_deterministic for c in compare.agent_configs(config).values()] == [deterministic] * 2
    assert words in report.summary_markdown(config, {}, [])


def test_the_summary_says_which_agents_trained_on_scaled_rewards(tmp_path):
    out = tmp_path / "cmp"
    assert compare.main(["--env", "CartPole-NoVel", "--agents", "ctm:normalize_reward=true", "lstm", "--seeds", "1",
                         "--timesteps", "256", "--eval-freq", "256", "--eval-episodes", "1", "--hyperparams",
                         "n_epochs=1", "normalize_reward=false", "--out", str(out), "--workers", "1"]) == 0
    assert json.loads((out / "runs" / "ctm_normalize_reward=true" / "seed0" / "result.json").read_text())[
        "normalize_reward"] is True
    settings = [line for line in (out / "summary.md").read_text().splitlines() if "learning_rate=" in line]
    assert [line.split(" | ")[0] for line in settings] == ["| ctm:normalize_reward=true", "| lstm"]
    assert [("normalize_reward=true" in line) for line in settings] == [True, False]


def _record(steps_to_reach):
    """A finished run's record whose evaluations first reach 1.0 at ``steps_to_reach`` (never if None)."""
    steps = [100, 200, 300, 400]
    returns = [1.0 if steps_to_reach is not None and step >= steps_to_reach else 0.0 for step in steps]
    return {"evaluations": {"step": steps, "return_mean": returns}, "parameters": 10, "steps_per_second": 1.0,
            "algo": {}, "policy": "ctm", "policy_kwargs": {},
            "machine": {"processor": "cpu", "cores": 1, "torch": "2", "torch_threads": 1, "device": "cpu"}}


@pytest.mark.parametrize("agent_steps, baseline_steps, expected", [
    ([100, None], [200, 300], 0.5),       # 100 beats both, never loses to both
    ([100, 200], [300, None], 1.0),
    ([300, 300], [300, 300], 0.5),         # ties count half
    ([None, None], [400, None], 0.25),     # never against never is a tie
])
def test_probability_of_reaching_the_threshold_sooner_than_the_baseline(agent_steps, baseline_steps, expected):
    config = CompareConfig(agents=["ctm", "lstm"], seeds=[0, 1], threshold=1.0)
    runs = {"ctm": [_record(s) for s in agent_steps], "lstm": [_record(s) for s in baseline_steps]}
    summaries = {s.agent: s for s in report.summarise(config, runs)}
    assert summaries["ctm"].sooner.value == pytest.approx(expected)
    assert summaries["ctm"].sooner.low <= expected <= summaries["ctm"].sooner.high
    assert summaries["lstm"].sooner is None
    text = report.summary_markdown(config, runs, list(summaries.values()))
    assert f"fewer steps than a run of lstm), runs that never reach it counting as never and ties as half, with its " \
           f"bootstrap interval: ctm {expected:.3g} [" in text


def _record_of(returns, seed=0):
    """A finished run's record with these evaluation returns, 100 steps apart."""
    record = _record(None)
    record["evaluations"]["return_mean"] = returns
    return record | {"seed": seed, "wall_time_s": 1.0, "timesteps": 400}


@pytest.mark.parametrize("stop_at_threshold", [False, True])
def test_the_summary_and_runs_table_say_how_far_runs_fell_after_reaching_the_threshold(stop_at_threshold):
    config = CompareConfig(agents=["ctm", "lstm"], seeds=[0, 1, 2], threshold=1.0, stop_at_threshold=stop_at_threshold)
    runs = {"ctm": [_record_of([0.0, 1.0, 0.3, 1.0], 0), _record_of([0.0, 0.0, 1.0, 1.0], 1), _record_of([0.0] * 4, 2)],
            "lstm": [_record_of([1.0, 0.8, 0.9, 0.0], seed) for seed in range(3)]}
    summaries = report.summarise(config, runs)
    rows = report.run_rows(runs, summaries)
    assert [row["lowest_after_threshold"] for row in rows] == [0.3, 1.0, "", 0.0, 0.0, 0.0]
    text = report.summary_markdown(config, runs, summaries)
    line = ("Runs that fell below 1 at a later evaluation after first reaching it, of those that reached it: ctm 1 of "
            "2 (lowest later evaluation: median 0.65, min 0.3); lstm 3 of 3 (lowest later evaluation: median 0, min 0).")
    # A screen stops each run at its first evaluation at the threshold: nothing to fall back from, no line.
    assert (line in text) is not stop_at_threshold


RESULTS = Path(__file__).resolve().parents[1] / "docs" / "results"
# The results page's comparisons that train each agent for its preset's own budget (CartPole-NoVel's train 200k steps
# where a plain `train` on CartPole takes 50k).
AT_PRESET_BUDGET = ("MiniGrid-DoorKey-5x5", "MiniGrid-FourRooms")
# What a run's record (result.json) keeps of its training settings.
LEARNING_SETTINGS = ("policy", "n_envs", "max_steps", "normalize_reward", "algo", "policy_kwargs")


@pytest.mark.parametrize("folder", sorted(path.name for path in RESULTS.iterdir() if path.is_dir()))
def test_every_run_on_the_results_page_has_the_settings_its_agent_trains_with_today(folder):
    """A preset changed after its results were measured (an LSTM matched to a CTM that has since changed size, a
    budget that its learning-rate decay was not measured over) would leave the page describing another agent."""
    config = read_comparison_config(RESULTS / folder)
    today = {agent: train_config.to_dict() for agent, train_config in compare.agent_configs(config).items()}
    for agent in config.agents:
        spec = AgentSpec.parse(agent)
        if folder in AT_PRESET_BUDGET and not spec.overrides:
            assert resolve_config(config.env, spec.preset, {})[0].timesteps == config.timesteps
        records = sorted((RESULTS / folder / "runs" / spec.dirname).glob("seed*/result.json"))
        assert records, f"{folder} has no runs of {agent}"
        expected = {key: today[agent][key] for key in LEARNING_SETTINGS}
        for path in records:
            recorded = json.loads(path.read_text())
            assert {key: recorded[key] for key in LEARNING_SETTINGS} == expected, path
