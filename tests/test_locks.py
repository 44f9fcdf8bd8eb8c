"""One training process per run folder: the lock, and the training and comparison commands that respect it."""

import hashlib
import json
import os
import signal
import subprocess
import sys
import textwrap

import pytest

import ctm_rl.train as train_module
from ctm_rl import RunBusyError, compare
from ctm_rl.locks import hold_run, lock_path, run_holder

from test_compare import RESUMABLE
from test_train_cli import TINY, run

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="run folders are not locked on Windows")


@pytest.fixture
def holder():
    """Start a process that holds a run folder's lock until killed; yields a function taking the folder."""
    processes = []

    def hold(run_dir):
        script = textwrap.dedent(f"""
            import time
            from ctm_rl.locks import hold_run
            with hold_run({str(run_dir)!r}):
                print("held", flush=True)
                time.sleep(120)
        """)
        process = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
        assert process.stdout.readline().strip() == "held"
        processes.append(process)
        return process

    yield hold
    for process in processes:
        process.kill()
        process.wait()


def _contents(folder):
    return {str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
            for path in sorted(folder.rglob("*")) if path.is_file()}


def test_a_held_folder_is_refused_to_a_second_holder_until_the_first_process_ends(tmp_path, holder):
    run_dir = tmp_path / "runs" / "ctm" / "seed0"
    process = holder(run_dir)
    assert run_holder(run_dir) == str(process.pid)
    busy = f"being trained by another process \\(pid {process.pid}\\).*kill {process.pid}"
    with pytest.raises(RunBusyError, match=busy):
        with hold_run(run_dir):
            pass
    process.send_signal(signal.SIGKILL)  # however the holder ends, its lock ends with it
    process.wait()
    assert run_holder(run_dir) is None
    with hold_run(run_dir):
        assert lock_path(run_dir).read_text().strip() == str(os.getpid())
    assert not lock_path(run_dir).exists()  # released, and nothing left behind


def test_resuming_a_run_another_process_trains_is_refused_and_changes_nothing(tmp_path, holder, capsys):
    assert run(tmp_path, "--timesteps", "64", *TINY) == 0
    run_dir = tmp_path / "CartPole-NoVel" / "ctm-seed0"
    before = _contents(run_dir)
    process = holder(run_dir)
    capsys.readouterr()
    assert train_module.main(["--resume", str(run_dir), "--timesteps", "128", "--no-progress-bar"]) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and f"being trained by another process (pid {process.pid})" in error[0]
    assert _contents(run_dir) == before


def test_a_comparison_skips_a_run_another_process_trains_and_records_it_once_free(tmp_path, holder, capsys):
    out = tmp_path / "cmp"
    args = [*RESUMABLE, "--seeds", "2", "--out", str(out)]
    busy = out / "runs" / "ctm" / "seed1"
    busy.mkdir(parents=True)
    (busy / "marker").write_text("the other process's run")  # gone if the comparison replaced the folder
    process = holder(busy)
    assert compare.main(args) == 0
    printed = capsys.readouterr().out
    assert f"skipped: ctm seed 1, which another process (pid {process.pid}) is training now" in printed
    assert "2 runs: 0 finished, 1 to train, 1 trained by another process" in printed
    assert (out / "runs" / "ctm" / "seed0" / "result.json").exists()
    assert (busy / "marker").read_text() == "the other process's run" and not (busy / "result.json").exists()

    process.kill()
    process.wait()
    assert compare.main(args) == 0
    assert "2 runs: 1 finished, 1 to train" in capsys.readouterr().out
    assert (busy / "result.json").exists()


def test_a_worker_that_finds_its_run_taken_fails_without_touching_it(tmp_path, holder):
    config = compare.CompareConfig(agents=["ctm"], seeds=[0], timesteps=512, eval_freq=256, eval_episodes=2)
    job = compare.plan(config, tmp_path)[0]
    run_dir = tmp_path / "runs" / "ctm" / "seed0"
    run_dir.mkdir(parents=True)
    (run_dir / "marker").write_text("kept")
    holder(run_dir)
    with pytest.raises(RunBusyError):
        compare.execute_run(job)
    assert (run_dir / "marker").read_text() == "kept"


def test_a_run_another_command_recorded_after_this_one_planned_it_is_kept_not_trained_again(tmp_path):
    config = compare.CompareConfig(agents=["ctm"], seeds=[0], timesteps=512, eval_freq=256, eval_episodes=2)
    job = compare.plan(config, tmp_path)[0]
    run_dir = tmp_path / "runs" / "ctm" / "seed0"
    run_dir.mkdir(parents=True)
    record = {"agent": "ctm", "seed": 0, "evaluations": {"return_mean": [1.0]}}
    (run_dir / "result.json").write_text(json.dumps(record))
    (run_dir / "marker").write_text("kept")  # gone if the folder were replaced
    assert compare.execute_run(job) == record
    assert (run_dir / "marker").read_text() == "kept" and not (run_dir / "model.zip").exists()


def test_a_run_taken_up_by_another_command_after_planning_is_skipped_not_failed(tmp_path, holder, capsys, monkeypatch):
    out = tmp_path / "cmp"
    busy = out / "runs" / "ctm" / "seed0"
    process = holder(busy)
    monkeypatch.setattr(compare, "run_holder", lambda run_dir: None)  # the other command starts after the check
    assert compare.main([*RESUMABLE, "--seeds", "2", "--out", str(out)]) == 0
    assert "skipped: ctm seed 0, which another process took up meanwhile" in capsys.readouterr().out
    assert not (busy / "result.json").exists() and (out / "runs" / "ctm" / "seed1" / "result.json").exists()
