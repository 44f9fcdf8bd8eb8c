"""Shared builders for the policy tests."""

from __future__ import annotations

import os
import signal
import subprocess
import time
import zipfile
from pathlib import Path
from typing import Any, Callable, Iterator

import gymnasium as gym
from gymnasium import spaces
from sb3_contrib import RecurrentPPO
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.logger import KVWriter
from stable_baselines3.common.vec_env import DummyVecEnv

from ctm_rl import CtmPolicy
from ctm_rl.envs import make_env
from ctm_rl.sb3.parts import parameter_part

SMALL_CTM = dict(d_model=32, d_input=16, memory_length=4, nlm_hidden=2, n_synch_out=6)


class Recorder(KVWriter):
    """A logger output that keeps every dump's records, in order."""

    def __init__(self):
        self.dumps = []

    def write(self, key_values, key_excluded, step=0):
        self.dumps.append(dict(key_values))


def small_model(env: str = "CartPole-NoVel", n_envs: int = 4, n_steps: int = 32, seed: int = 0,
                policy_class: type = CtmPolicy, max_steps: int | None = None, algorithm: type = RecurrentPPO,
                algo_kwargs: dict[str, Any] | None = None, **policy_kwargs: Any) -> RecurrentPPO:
    kwargs = SMALL_CTM | policy_kwargs if policy_class is CtmPolicy else policy_kwargs
    return algorithm(policy_class, make_env(env, n_envs=n_envs, seed=seed, max_steps=max_steps), n_steps=n_steps,
                     batch_size=n_steps * n_envs // 2, n_epochs=1, seed=seed, policy_kwargs=kwargs,
                     **(algo_kwargs or {}))


def largest_moves(policy: Any, before: dict[str, Any]) -> dict[str, float]:
    """The largest change of any parameter in each part of ``policy`` since ``before`` (parameter copies by name)."""
    moved: dict[str, float] = {}
    for name, parameter in policy.named_parameters():
        step = float((parameter.detach() - before[name]).abs().max())
        moved[parameter_part(name)] = max(moved.get(parameter_part(name), 0.0), step)
    return moved


def dict_env(space: spaces.Dict) -> DummyVecEnv:
    """One env with ``space`` observations drawn at random, two actions and episodes of 5 steps on average."""

    class DictEnv(gym.Env):
        observation_space, action_space = space, spaces.Discrete(2)

        def reset(self, *, seed=None, options=None):
            super().reset(seed=seed)
            return self.observation_space.sample(), {}

        def step(self, action):
            return self.observation_space.sample(), 0.0, bool(self.np_random.random() < 0.2), False, {}

    return DummyVecEnv([DictEnv])


def collect_rollout(model: RecurrentPPO) -> None:
    """Fill the model's rollout buffer once with its current policy, without training."""
    _, callback = model._setup_learn(model.n_steps * model.n_envs, callback=None)
    callback.on_training_start(locals(), globals())
    assert model.collect_rollouts(model.env, callback, model.rollout_buffer, n_rollout_steps=model.n_steps)


def interrupt_training_at(monkeypatch, steps: int, signal_number: int | None = None) -> None:
    """Make every run of the training command raise KeyboardInterrupt (as Ctrl-C does) once it reaches ``steps``,
    or send this process ``signal_number`` there."""
    import ctm_rl.train as train_module

    class Interrupt(BaseCallback):
        def _on_step(self) -> bool:
            if self.num_timesteps >= steps:
                if signal_number is None:
                    raise KeyboardInterrupt
                os.kill(os.getpid(), signal_number)
            return True

    make_callbacks = train_module.make_callbacks
    monkeypatch.setattr(train_module, "make_callbacks", lambda *a: make_callbacks(*a) + [Interrupt()])


def signal_when(command: list[str], env: dict[str, str], started: Callable[[], bool],
                signal_number: int = signal.SIGTERM, timeout: float = 120) -> tuple[int, str]:
    """Start ``command``, send it ``signal_number`` once ``started()`` holds, and return its exit status and
    standard error. Fails if it ends or ``timeout`` seconds pass first."""
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + timeout
        while not started():
            assert time.monotonic() < deadline and process.poll() is None, process.communicate()
            time.sleep(0.2)
        process.send_signal(signal_number)
        _, err = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    return process.returncode, err


def rewrite_zip_member(path: Path, name: str, rewrite: Callable[[bytes], bytes]) -> None:
    """Replace member ``name`` of the archive at ``path`` (a saved model) with ``rewrite`` of its content."""
    with zipfile.ZipFile(path) as archive:
        members = {member: archive.read(member) for member in archive.namelist()}
    members[name] = rewrite(members[name])
    with zipfile.ZipFile(path, "w") as archive:
        for member, content in members.items():
            archive.writestr(member, content)


def _processes() -> Iterator[tuple[int, str, int, int]]:
    """Each process as (pid, state, parent pid, process group), read from Linux's /proc."""
    for entry in os.listdir("/proc"):
        try:
            with open(f"/proc/{entry}/stat") as stat:
                state, parent, group = stat.read().rsplit(")", 1)[1].split()[:3]
            process = int(entry), state, int(parent), int(group)
        except (OSError, ValueError):  # not a process, or it ended while being read
            continue
        yield process


def live_group_members(group: int) -> list[int]:
    """Process ids in process group ``group`` that are running (zombies left for a parent to reap are not)."""
    return [pid for pid, state, _, member_of in _processes() if member_of == group and state != "Z"]


def children(parent: int, marker: str) -> list[int]:
    """Process ids whose parent is ``parent`` and whose command line holds ``marker``."""
    found = []
    for pid, _, parent_pid, _ in _processes():
        if parent_pid != parent:
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
                if marker in cmdline.read().decode(errors="replace"):
                    found.append(pid)
        except OSError:
            continue
    return found


def _sleep_through_interrupts(seconds: float) -> None:
    """Sleep ``seconds``, ignoring KeyboardInterrupts, as work that must not be broken into does."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            time.sleep(0.05)
        except KeyboardInterrupt:
            pass


def save_slowly_when_interrupted(job: tuple[float, str]) -> float:
    """A pool job that marks its start by creating the file ``job[1] + ".started"``, works until interrupted, and
    then takes ``job[0]`` seconds to save, as a large model or a slow disk does, before writing ``job[1]``."""
    from ctm_rl.interrupts import stop_requested

    seconds, saved = job
    Path(saved + ".started").touch()
    try:
        while not stop_requested():
            time.sleep(0.05)
    except KeyboardInterrupt:
        pass
    _sleep_through_interrupts(seconds)  # a save must not be broken into
    Path(saved).write_text("saved")
    return seconds


def finish_despite_interrupts(job: tuple[float, str]) -> float:
    """A pool job that marks its start by creating the file ``job[1]`` and then completes after ``job[0]`` seconds,
    interrupts or not, as a run in its last steps does; returns ``job[0]``."""
    seconds, started = job
    Path(started).touch()
    _sleep_through_interrupts(seconds)
    return seconds
