"""Faults and resumes: nothing a run saved is lost, and resume continues from the newest saved state."""

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from helpers import (finish_despite_interrupts, interrupt_training_at, live_group_members, rewrite_zip_member,
                     save_slowly_when_interrupted, signal_when, small_model)
from sb3_contrib import RecurrentPPO
from stable_baselines3.common.callbacks import BaseCallback

import ctm_rl.train as train_module
from ctm_rl import backends
from ctm_rl.interrupts import clear_stop_request, write_atomically
from ctm_rl.sb3.checkpoints import saved_steps

TINY = ["--n-envs", "2", "--hyperparams", "n_steps=16", "batch_size=32", "n_epochs=1", "d_model=16", "d_input=8",
        "n_synch_out=4", "memory_length=3", "--eval-episodes", "2", "--no-progress-bar"]


def run(tmp_path, *args):
    return train_module.main(["--log-dir", str(tmp_path), *args])


def resume(run_dir, *args):
    return train_module.main(["--resume", str(run_dir), "--no-progress-bar", *args])


def _evaluations(run_dir):
    with np.load(run_dir / "eval" / "evaluations.npz") as data:
        return data["timesteps"].tolist(), data["results"].mean(axis=1).tolist()


def _monitor_rows(run_dir):
    rows = []
    for path in sorted((run_dir / "monitor").glob("*.monitor.csv")):
        lines = path.read_text().splitlines()[2:]  # a JSON header, then the column names
        rows += [(path.name, line) for line in lines]
    return rows


def test_resume_after_ctrl_c_starts_from_the_interrupt_save_not_an_older_checkpoint(tmp_path, monkeypatch):
    interrupt_training_at(monkeypatch, 100)
    assert run(tmp_path, "--timesteps", "1000", "--eval-freq", "32", "--checkpoint-freq", "64", *TINY) == 130
    run_dir = tmp_path / "CartPole-NoVel" / "ctm-seed0"
    assert saved_steps(run_dir / "model.zip") == 100
    assert max(saved_steps(path) for path in (run_dir / "checkpoints").glob("*.zip")) == 64
    monkeypatch.undo()
    assert resume(run_dir, "--timesteps", "160") == 0
    timesteps, _ = _evaluations(run_dir)
    assert RecurrentPPO.load(run_dir / "model.zip").num_timesteps == 164  # 100, then two rollouts of 32
    # The evaluations stay on the uninterrupted run's grid, every 32 steps, not every 32 from the resume at 100.
    assert timesteps == [32, 64, 96, 128, 160]
    # So do the checkpoints.
    assert sorted(saved_steps(path) for path in (run_dir / "checkpoints").glob("*.zip")) == [64, 128]


def test_only_the_newest_checkpoints_are_kept_and_a_resume_continues_from_them(tmp_path, monkeypatch):
    interrupt_training_at(monkeypatch, 100)
    assert run(tmp_path, "--timesteps", "1000", "--eval-freq", "0", "--checkpoint-freq", "32",
               "--keep-checkpoints", "2", *TINY) == 130
    run_dir = tmp_path / "CartPole-NoVel" / "ctm-seed0"
    kept = sorted((run_dir / "checkpoints").glob("*.zip"), key=saved_steps)
    assert [path.name for path in kept] == ["ctm_64_steps.zip", "ctm_96_steps.zip"]
    assert [saved_steps(path) for path in kept] == [64, 96]
    monkeypatch.undo()
    (run_dir / "model.zip").unlink()  # as if Ctrl-C had come too late to save: the newest checkpoint takes over
    assert resume(run_dir, "--timesteps", "192") == 0
    assert saved_steps(run_dir / "model.zip") == 192  # 96, then three rollouts of 32
    assert sorted(path.name for path in (run_dir / "checkpoints").glob("*.zip")) == ["ctm_160_steps.zip",
                                                                                   "ctm_192_steps.zip"]


def test_extending_a_finished_run_keeps_its_evaluations_and_its_best_model(tmp_path, monkeypatch):
    assert run(tmp_path, "--timesteps", "96", "--eval-freq", "32", "--checkpoint-freq", "64", *TINY) == 0
    run_dir = tmp_path / "CartPole-NoVel" / "ctm-seed0"
    before, means_before = _evaluations(run_dir)
    best_before = (run_dir / "eval" / "best_model.zip").read_bytes()
    # Make every later evaluation score lower than any earlier one: the best model must not be replaced.
    from stable_baselines3.common import callbacks

    real = callbacks.evaluate_policy
    monkeypatch.setattr(callbacks, "evaluate_policy", lambda *a, **k: tuple(
        [x - 1000.0 for x in value] if i == 0 else value for i, value in enumerate(real(*a, **k))))
    assert resume(run_dir, "--timesteps", "160") == 0
    after, means_after = _evaluations(run_dir)
    assert after[:len(before)] == before and after == sorted(set(after)) and after[-1] == 160 > before[-1]
    assert means_after[:len(before)] == means_before
    assert (run_dir / "eval" / "best_model.zip").read_bytes() == best_before


def test_a_truncated_newest_save_falls_back_to_the_one_before(tmp_path, capsys):
    assert run(tmp_path, "--timesteps", "128", "--eval-freq", "0", "--checkpoint-freq", "64", *TINY) == 0
    run_dir = tmp_path / "CartPole-NoVel" / "ctm-seed0"
    for newest in (run_dir / "model.zip", run_dir / "checkpoints" / "ctm_128_steps.zip"):
        newest.write_bytes(newest.read_bytes()[:300])
    capsys.readouterr()
    assert resume(run_dir, "--timesteps", "192") == 0
    out = capsys.readouterr()
    assert "Skipping model.zip" in out.err and "Skipping checkpoints/ctm_128_steps.zip" in out.err
    assert "Resuming from checkpoints/ctm_64_steps.zip (64 steps)" in out.out
    assert saved_steps(run_dir / "model.zip") == 192


@pytest.mark.parametrize("flags", [["--n-envs", "4"], ["--hyperparams", "n_epochs=3"], ["--env", "Acrobot-v1"],
                                   ["--agent", "lstm"]])
def test_resume_refuses_flags_it_cannot_apply(tmp_path, capsys, flags):
    assert run(tmp_path, "--timesteps", "32", "--eval-freq", "0", "--checkpoint-freq", "0", *TINY) == 0
    run_dir = tmp_path / "CartPole-NoVel" / "ctm-seed0"
    assert resume(run_dir, *flags) == 2
    err = capsys.readouterr().err
    assert f"{flags[0]} cannot change" in err and "Traceback" not in err


def _readable_steps(path):
    """Steps of a save; -1 for one the kill caught half-written (resume skips it)."""
    from ctm_rl.errors import CheckpointError

    try:
        return saved_steps(path)
    except CheckpointError:
        return -1


def test_a_run_killed_mid_training_and_resumed_loses_no_monitor_episodes(tmp_path):
    run_dir = tmp_path / "CartPole-NoVel" / "ctm-seed0"
    command = [sys.executable, "-m", "ctm_rl.train", "--log-dir", str(tmp_path), "--timesteps", "100000",
               "--eval-freq", "0", "--checkpoint-freq", "64", *TINY]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not (run_dir / "checkpoints" / "ctm_192_steps.zip").exists():
            time.sleep(0.2)
        assert (run_dir / "checkpoints" / "ctm_192_steps.zip").exists(), "training did not reach 192 steps"
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
    before = _monitor_rows(run_dir)
    newest = max(_readable_steps(path) for path in (run_dir / "checkpoints").glob("*.zip"))
    assert len(before) > 0 and newest >= 192 - 64  # the save being written when killed may be lost, no more
    assert resume(run_dir, "--timesteps", str(newest + 64)) == 0
    after = _monitor_rows(run_dir)
    assert all(row in after for row in before) and len(after) > len(before)
    assert saved_steps(run_dir / "model.zip") == newest + 64  # at most one checkpoint interval was lost


def test_sigterm_saves_what_was_learned_and_exits_130(tmp_path):
    run_dir = tmp_path / "CartPole-NoVel" / "ctm-seed0"
    command = [sys.executable, "-m", "ctm_rl.train", "--log-dir", str(tmp_path), "--timesteps", "100000",
               "--eval-freq", "0", "--checkpoint-freq", "0", *TINY]
    # Once episodes have ended, it is training.
    returncode, err = signal_when(command, {**os.environ, "OMP_NUM_THREADS": "1"}, lambda: bool(_monitor_rows(run_dir)))
    assert returncode == 130, (returncode, err)
    assert "Interrupted at" in err and "Traceback" not in err
    assert saved_steps(run_dir / "model.zip") > 0  # no checkpoints: without the save, everything was lost


def _lose_an_interrupt_at(monkeypatch, steps, interrupt):
    """Make the training command's run call ``interrupt()`` once it reaches ``steps``, inside code that discards
    the KeyboardInterrupt the interrupt raises, as code that swallows exceptions would."""

    class LostInterrupt(BaseCallback):
        sent = False

        def _on_step(self) -> bool:
            if self.num_timesteps >= steps and not self.sent:
                self.sent = True
                with contextlib.suppress(KeyboardInterrupt):
                    interrupt()
                    time.sleep(5)  # a signal's handler runs here
            return True

    make_callbacks = train_module.make_callbacks
    monkeypatch.setattr(train_module, "make_callbacks", lambda *a: make_callbacks(*a) + [LostInterrupt()])


def _sigterm() -> None:
    os.kill(os.getpid(), signal.SIGTERM)


def _pool_worker_interrupt(monkeypatch) -> None:
    monkeypatch.setattr(backends, "_running", True)  # the worker's job is running: its handler raises
    backends._on_interrupt(signal.SIGINT, None)


@pytest.mark.parametrize("source", ["SIGTERM", "pool worker"])
def test_an_interrupt_whose_exception_is_lost_still_stops_the_run_which_saves(tmp_path, monkeypatch, source):
    # Signals after the first are ignored so as not to break into the save it started, so a first interrupt whose
    # exception was swallowed must still stop the run: otherwise it trains on to its budget, and a harder kill
    # then loses everything since the last checkpoint.
    interrupt = _sigterm if source == "SIGTERM" else lambda: _pool_worker_interrupt(monkeypatch)
    _lose_an_interrupt_at(monkeypatch, 40, interrupt)
    try:
        assert run(tmp_path, "--timesteps", "5000", "--eval-freq", "0", "--checkpoint-freq", "0", *TINY) == 130
    finally:
        clear_stop_request()  # the pool worker's request outlives the command, as it does in the worker
    steps = saved_steps(tmp_path / "CartPole-NoVel" / "ctm-seed0" / "model.zip")
    assert 40 <= steps <= 40 + 2 * 16  # stopped within the rollout the interrupt came in


def test_a_pool_job_that_completes_while_the_pool_shuts_down_is_still_reported(tmp_path):
    # Ctrl-C reaches the comparison as its first run ends, while the second is in its last steps and completes
    # anyway: that run is finished, and its result must be written, not dropped with the pool.
    results = []
    second_started = tmp_path / "second"

    def on_result(job, result):
        results.append(result)
        if len(results) == 1:
            deadline = time.monotonic() + 120
            while not second_started.exists():
                assert time.monotonic() < deadline
                time.sleep(0.05)
            raise KeyboardInterrupt

    jobs = [(0.5, str(tmp_path / "first")), (3.0, str(second_started))]
    with pytest.raises(KeyboardInterrupt):
        backends.run_local(finish_despite_interrupts, jobs, on_result, lambda job, error: None, workers=2)
    assert sorted(results) == [0.5, 3.0]


@pytest.mark.skipif(not os.path.exists("/proc"), reason="reads /proc")
def test_a_worker_of_a_killed_comparison_waits_for_its_runs_slow_save_and_then_leaves(tmp_path):
    # The comparison is killed outright; each of its pool workers interrupts its own job, and must neither cut
    # that job's save short (here it takes longer than a fixed wait would allow) nor linger once it is done.
    jobs = [(18.0, str(tmp_path / "first")), (18.0, str(tmp_path / "second"))]
    script = (f"from ctm_rl import backends; from helpers import save_slowly_when_interrupted; "
              f"backends.run_local(save_slowly_when_interrupted, {jobs!r}, print, print, workers=2)")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    log = tmp_path / "comparison.log"
    with open(log, "w") as output:
        process = subprocess.Popen([sys.executable, "-c", script], env=env, stdout=output, stderr=subprocess.STDOUT,
                                   start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while not all(os.path.exists(saved + ".started") for _, saved in jobs):
            assert time.monotonic() < deadline and process.poll() is None, log.read_text()
            time.sleep(0.1)
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
        deadline = time.monotonic() + 60
        while not all(os.path.exists(saved) for _, saved in jobs):
            assert time.monotonic() < deadline, f"a job's save was cut short:\n{log.read_text()}"
            time.sleep(0.1)
        saved_at = time.monotonic()
        # The workers leave once their jobs have ended.
        while live_group_members(process.pid):
            assert time.monotonic() < saved_at + 10, f"a worker lingered after its job ended:\n{log.read_text()}"
            time.sleep(0.1)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)


class _Killed(BaseException):
    """A stand-in for SIGKILL: nothing in the package catches it, so no handler repairs what it left."""


def _numpy_whose_savez_is_cut_short(stop, after=0):
    """``numpy`` for SB3's callbacks, whose ``savez`` writes its first ``after`` files in full and then cuts one short,
    writing the start of a zip wherever it was asked to, and raises ``stop``."""

    class NumpyWithSaveCutShort:
        calls = 0

        def __getattr__(self, name):
            return getattr(np, name)

        def savez(self, file, **arrays):
            NumpyWithSaveCutShort.calls += 1
            if NumpyWithSaveCutShort.calls <= after:
                return np.savez(file, **arrays)
            if hasattr(file, "write"):
                file.write(b"PK\x03\x04")  # the start of a zip, and no more
            else:
                with open(str(file) + ".npz", "wb") as opened:
                    opened.write(b"PK\x03\x04")
            raise stop

    return NumpyWithSaveCutShort()


def test_an_interrupt_while_sb3_writes_its_evaluations_leaves_a_complete_file(tmp_path, monkeypatch):
    # Ctrl-C lands while SB3's EvalCallback writes its record of the first evaluation: the file must hold it whole.
    import stable_baselines3.common.callbacks as sb3_callbacks

    monkeypatch.setattr(sb3_callbacks, "np", _numpy_whose_savez_is_cut_short(KeyboardInterrupt))
    assert run(tmp_path, "--timesteps", "5000", "--eval-freq", "64", "--checkpoint-freq", "0", *TINY) == 130
    with np.load(tmp_path / "CartPole-NoVel" / "ctm-seed0" / "eval" / "evaluations.npz") as data:
        lengths = {name: len(data[name]) for name in data.files}
    assert lengths["timesteps"] == 1 and set(lengths.values()) == {1}, lengths


def test_a_kill_while_sb3_writes_its_evaluations_keeps_the_evaluations_before(tmp_path, monkeypatch):
    # The process dies, with no handler to repair anything, while SB3's EvalCallback writes its record of the
    # second evaluation: the file on disk must still hold the first one.
    import stable_baselines3.common.callbacks as sb3_callbacks

    monkeypatch.setattr(sb3_callbacks, "np", _numpy_whose_savez_is_cut_short(_Killed, after=1))
    with pytest.raises(_Killed):
        run(tmp_path, "--timesteps", "5000", "--eval-freq", "64", "--checkpoint-freq", "0", *TINY)
    timesteps, returns = _evaluations(tmp_path / "CartPole-NoVel" / "ctm-seed0")
    assert timesteps == [64] and len(returns) == 1


class _SignalOnWrite:
    """A file that sends this process ``SIGTERM`` on its second write, as a signal arriving mid-save would."""

    def __init__(self, file):
        self.file, self.writes = file, 0

    def write(self, data):
        self.writes += 1
        if self.writes == 2:
            signal.raise_signal(signal.SIGTERM)
        return self.file.write(data)

    def __getattr__(self, name):
        return getattr(self.file, name)


def test_an_interrupt_that_arrives_while_torch_writes_a_save_waits_for_the_save(tmp_path, monkeypatch):
    # SIGTERM lands while torch writes the model's parameters into the zip, as when it comes during an evaluation's
    # best-model save. Raised inside torch's writer it would come out as a RuntimeError that no interrupt handling
    # catches, losing the run's save; instead the save completes and the interrupt follows it.
    import torch
    from stable_baselines3.common import save_util

    from ctm_rl.interrupts import terminate_as_interrupt
    from ctm_rl.sb3.ppo import CtmPPO

    model = small_model(algorithm=CtmPPO)
    write_save = torch.save
    monkeypatch.setattr(save_util.th, "save", lambda data, file, **kwargs: write_save(data, _SignalOnWrite(file),
                                                                                      **kwargs))
    path = tmp_path / "model.zip"
    with pytest.raises(KeyboardInterrupt):
        terminate_as_interrupt(model.save)(path)
    monkeypatch.undo()
    loaded = CtmPPO.load(path)
    for name, value in model.policy.state_dict().items():
        assert torch.equal(loaded.policy.state_dict()[name], value), name


def _plant_payload(model_zip, marker):
    """Rewrite a saved model so that unpickling its data writes ``marker``."""
    import base64
    import json
    import pickle

    class Payload:
        def __reduce__(self):
            return (exec, (f"open({str(marker)!r}, 'w').write('ran')",))

    def plant(content: bytes) -> bytes:
        data = json.loads(content)
        data["policy_kwargs"][":serialized:"] = base64.b64encode(pickle.dumps(Payload())).decode()
        return json.dumps(data).encode()

    rewrite_zip_member(model_zip, "data", plant)


def _write_cut_short(path, data, *args, **kwargs):
    """``Path.write_text`` or ``write_bytes`` as an interrupt cuts it short: the first bytes, then the interrupt."""
    with open(path, "wb") as file:
        file.write((data.encode() if isinstance(data, str) else data)[:3])
    raise KeyboardInterrupt


@pytest.mark.parametrize("content", ["[64, 128]", b"PK\x03\x04 an old zip"])
def test_a_file_replaced_whole_keeps_its_old_content_when_the_write_is_cut_short(tmp_path, monkeypatch, content):
    # An interrupt lands while the new content is written: the reader must find the old file, and nothing else.
    path = tmp_path / "state"
    path.write_bytes(content.encode() if isinstance(content, str) else content)

    monkeypatch.setattr(Path, "write_text", _write_cut_short)
    monkeypatch.setattr(Path, "write_bytes", _write_cut_short)
    with pytest.raises(KeyboardInterrupt):
        write_atomically(path, content + content)
    monkeypatch.undo()
    assert path.read_bytes() == (content.encode() if isinstance(content, str) else content)
    assert [entry.name for entry in tmp_path.iterdir()] == ["state"]


def test_a_resume_record_cut_short_keeps_the_resumes_before_it(tmp_path, monkeypatch):
    train_module.record_resume(tmp_path, 64)

    monkeypatch.setattr(Path, "write_text", _write_cut_short)
    with pytest.raises(KeyboardInterrupt):
        train_module.record_resume(tmp_path, 128)
    monkeypatch.undo()
    assert train_module.resumed_steps(tmp_path) == [64]
    train_module.record_resume(tmp_path, 128)
    assert train_module.resumed_steps(tmp_path) == [64, 128]


def test_resume_never_unpickles_a_planted_payload(tmp_path):
    from ctm_rl.errors import CheckpointError
    from ctm_rl.sb3.checkpoints import load_agent

    assert run(tmp_path, "--timesteps", "64", "--eval-freq", "0", "--checkpoint-freq", "0", *TINY) == 0
    run_dir = tmp_path / "CartPole-NoVel" / "ctm-seed0"
    marker = tmp_path / "payload-ran"
    _plant_payload(run_dir / "model.zip", marker)
    assert resume(run_dir, "--timesteps", "96") == 0
    assert not marker.exists()
    assert saved_steps(run_dir / "model.zip") == 96
    _plant_payload(run_dir / "model.zip", marker)
    with pytest.raises(CheckpointError, match="trust_pickle=True"):
        load_agent(run_dir / "model.zip")
    assert not marker.exists()
    # The payload is real: a trusted load runs it (and then fails, as the payload replaced the policy arguments).
    with pytest.raises(Exception):
        load_agent(run_dir / "model.zip", trust_pickle=True)
    assert marker.read_text() == "ran"


def test_resume_restores_the_saved_parameters_and_optimizer_exactly(tmp_path):
    import torch

    assert run(tmp_path, "--timesteps", "64", "--eval-freq", "0", "--checkpoint-freq", "0", *TINY) == 0
    run_dir = tmp_path / "CartPole-NoVel" / "ctm-seed0"
    saved = RecurrentPPO.load(run_dir / "model.zip")
    config, _ = train_module.resumed_config(run_dir, train_module.build_parser().parse_args(["--resume", str(run_dir)]))
    from ctm_rl.envs import make_env
    from ctm_rl.sb3.checkpoints import load_newest

    model, source = load_newest(run_dir, lambda: train_module.build_model(config, make_env(config.env, n_envs=2), run_dir))
    assert source.name == "model.zip" and model.num_timesteps == saved.num_timesteps == 64
    for (name, a), b in zip(saved.policy.state_dict().items(), model.policy.state_dict().values()):
        assert torch.equal(a, b), name
    saved_state, state = saved.policy.optimizer.state_dict()["state"], model.policy.optimizer.state_dict()["state"]
    assert saved_state.keys() == state.keys()
    for key in saved_state:
        assert torch.equal(saved_state[key]["exp_avg"], state[key]["exp_avg"])


def test_a_finished_run_with_damaged_evaluations_resumes_to_a_clear_summary(tmp_path, capsys):
    assert run(tmp_path, "--timesteps", "64", "--eval-freq", "32", *TINY) == 0
    run_dir = tmp_path / "CartPole-NoVel" / "ctm-seed0"
    (run_dir / "eval" / "evaluations.npz").write_bytes(b"PK not an npz")
    capsys.readouterr()
    assert resume(run_dir) == 0  # nothing left to train
    out = capsys.readouterr()
    assert "nothing to do" in out.out and "evaluations.npz is damaged (" in out.out
    assert "Traceback" not in out.out + out.err


@pytest.mark.parametrize("damage", ["evaluations", "config", "policy"])
def test_a_damaged_file_in_a_run_folder_gets_a_clear_error_or_a_fallback(tmp_path, capsys, damage):
    assert run(tmp_path, "--timesteps", "96", "--eval-freq", "32", "--checkpoint-freq", "64", *TINY) == 0
    run_dir = tmp_path / "CartPole-NoVel" / "ctm-seed0"
    capsys.readouterr()
    if damage == "evaluations":
        (run_dir / "eval" / "evaluations.npz").write_bytes(b"not an npz")
        assert resume(run_dir, "--timesteps", "128") == 2
        assert "evaluations.npz is damaged" in capsys.readouterr().err
    elif damage == "config":
        (run_dir / "config.yaml").write_text("env: [unclosed")
        assert resume(run_dir, "--timesteps", "128") == 2
        assert "config.yaml is damaged" in capsys.readouterr().err
    else:  # a model.zip whose policy.pth is garbage: the newest checkpoint takes over
        rewrite_zip_member(run_dir / "model.zip", "policy.pth", lambda content: b"garbage")
        assert resume(run_dir, "--timesteps", "128") == 0
        out = capsys.readouterr()
        assert "Skipping model.zip" in out.err and "Resuming from checkpoints/ctm_64_steps.zip" in out.out
