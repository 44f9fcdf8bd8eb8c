"""A comparison folder: its configuration, its agents and where each run lives (read by ``compare`` and
``report``)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ctm_rl.config import SavedConfig
from ctm_rl.errors import ConfigError

CONFIG_FILE, COMMAND_FILE, RESULT_FILE, RUNS_DIR = "comparison.yaml", "command.txt", "result.json", "runs"

ROLLOUT_SETTINGS = ("n_envs", "max_steps")
"""The run settings a run record carries besides its algorithm and policy arguments."""

_UNSAFE = re.compile(r"[^A-Za-z0-9_.=+-]+")
_NEXT_OVERRIDE = re.compile(r",(?=\s*[A-Za-z_][\w.]*=)")  # a comma that starts the next key=value


@dataclass
class CompareConfig(SavedConfig):
    """What a comparison trains and how it is evaluated; saved as ``comparison.yaml`` in its folder."""

    env: str = "CartPole-NoVel"
    """Environment name, as ``python -m ctm_rl.train --env`` takes it."""
    agents: list[str] = field(default_factory=lambda: ["ctm", "lstm"])
    """Agent specs: a preset name, optionally with ``:key=value,...`` overrides (``ctm:ticks=5``)."""
    seeds: list[int] = field(default_factory=lambda: list(range(5)))
    """Seeds; every agent is trained once per seed."""
    timesteps: int = 200_000
    """Environment steps per run, the same for every agent."""
    eval_freq: int = 10_000
    """Environment steps between evaluations."""
    eval_episodes: int = 10
    """Episodes per evaluation, on separate evaluation environments."""
    eval_deterministic: bool = True
    """Evaluate with each policy's most likely actions; ``False`` samples them, as training does."""
    hyperparams: list[str] = field(default_factory=list)
    """``key=value`` overrides applied to every agent before its own."""
    n_envs: int | None = None
    """Training environments per run; ``None`` keeps each preset's."""
    max_steps: int | None = None
    """Episode step limit; ``None`` keeps each preset's."""
    env_module: str | None = None
    """Module imported first, so that it registers the environment's id (as ``train --env-module``)."""
    env_kwargs: dict[str, Any] = field(default_factory=dict)
    """The environment's constructor arguments (as ``train --env-kwargs``)."""
    threshold: float | None = None
    """Return that counts as solved for "steps to threshold"; ``None`` takes the env's ``reward_threshold``."""
    baseline: str | None = None
    """Agent the probability of improvement is measured against; ``None`` takes the first LSTM agent, or else
    the last agent."""
    description: str | None = None
    """What the comparison is for and why its budget, shown at the top of its summary."""
    test_ticks: list[int] = field(default_factory=list)
    """Tick counts at which every CTM run is also evaluated once trained ("think longer" at test time), on
    ``eval_episodes`` episodes each; empty: none."""
    stop_at_threshold: bool = False
    """End each run at its first evaluation at or above the threshold, a screen that measures steps to the threshold
    for less compute: a run's final return is then that evaluation's, not the end of its budget's, and the summary
    says so. The learning-rate schedule still spans the whole budget, as in a full run, so that the same comparison
    without the stop continues the stopped runs to the whole budget."""
    checkpoint_freq: int = 50_000
    """Environment steps between a run's checkpoints, from which the comparison run again continues a run that an
    interruption left unfinished; 0: none (such a run starts again from scratch). A finished run keeps only its
    ``model.zip``."""

    # Fields that define what a run computes; a folder's runs are only comparable if these match.
    RUN_FIELDS = ("env", "timesteps", "eval_freq", "eval_episodes", "eval_deterministic", "hyperparams", "n_envs",
                  "max_steps", "env_module", "env_kwargs", "stop_at_threshold")

    def baseline_agent(self) -> str:
        """The agent the others are compared against."""
        if self.baseline is not None:
            return self.baseline
        lstms = [agent for agent in self.agents if AgentSpec.parse(agent).preset == "lstm"]
        return lstms[0] if lstms else self.agents[-1]


@dataclass(frozen=True)
class AgentSpec:
    """An agent of a comparison: a preset and overrides of it.

    :param label: the spec as typed (``ctm:ticks=5``), used in tables and plots.
    :param preset: the preset name (``ctm``).
    :param overrides: ``key=value`` strings, applied after the comparison's shared overrides.
    """

    label: str
    preset: str
    overrides: tuple[str, ...] = ()

    @classmethod
    def parse(cls, text: str) -> AgentSpec:
        preset, _, rest = text.partition(":")
        if not preset:
            raise ConfigError(f"Agent spec {text!r} has no preset name. Expected PRESET or PRESET:key=value,...")
        overrides = tuple(part.strip() for part in _NEXT_OVERRIDE.split(rest)) if rest else ()
        for override in overrides:
            if not re.match(r"[A-Za-z_][\w.]*=", override):
                raise ConfigError(f"Agent spec {text!r}: {override!r} is not key=value. "
                                  f"Expected PRESET:key=value,key=value (for example ctm:ticks=5,memory_length=20).")
        return cls(text, preset, overrides)

    @property
    def dirname(self) -> str:
        """The spec made safe for a folder name (``ctm:ticks=5`` -> ``ctm_ticks=5``)."""
        return safe_name(self.label)


def safe_name(text: str) -> str:
    """``text`` with every run of characters unsafe in a folder name replaced by ``_``."""
    return _UNSAFE.sub("_", text)


def run_dir_of(out: Path, spec: AgentSpec, seed: int) -> Path:
    """The folder of one run of a comparison."""
    return out / RUNS_DIR / spec.dirname / f"seed{seed}"


def read_comparison_config(out: Path) -> CompareConfig:
    """A comparison folder's saved configuration (its ``comparison.yaml``)."""
    return CompareConfig.from_dict(yaml.safe_load((out / CONFIG_FILE).read_text()))


def finished_runs(out: Path, config: CompareConfig) -> list[tuple[str, int, Path]]:
    """``(agent, seed, run folder)`` of every run of the comparison that has its result, agent by agent in the
    config's order, seed by seed."""
    runs = [(agent, seed, run_dir_of(out, AgentSpec.parse(agent), seed)) for agent in config.agents
            for seed in config.seeds]
    return [run for run in runs if (run[2] / RESULT_FILE).exists()]
