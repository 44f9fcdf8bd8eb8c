"""Compare agents over several seeds: train every (agent, seed), evaluate on a fixed interval, and report
aggregate statistics with confidence intervals and plots.

    python -m ctm_rl.compare --env CartPole-NoVel --agents ctm lstm --seeds 5 --timesteps 200000 --out cmp/cartpole
    python -m ctm_rl.compare --env CartPole-NoVel --agents ctm ctm:ticks=5 ctm:carry_traces=false lstm --out cmp/ablate
    python -m ctm_rl.compare --report cmp/cartpole                  # rebuild summary and plots, train nothing
    python -m ctm_rl.compare --report cmp/cartpole cmp/doorkey --page docs/results.md

An agent is a preset name (``agents/<name>.yml``), optionally followed by ``:key=value,key=value`` overrides
of that preset, the same keys as ``python -m ctm_rl.train --hyperparams``. Runs go to
``<out>/runs/<agent>/seed<N>/`` (a full training run folder); a run counts as finished once its
``result.json`` is written, so running the same command again trains only what is missing.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import shlex
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from ctm_rl.allocator import keep_freed_memory
from ctm_rl.config import SavedConfig
from ctm_rl.errors import ConfigError, CtmRlError

CONFIG_FILE, COMMAND_FILE, RESULT_FILE, RUNS_DIR = "comparison.yaml", "command.txt", "result.json", "runs"
_SAFE = re.compile(r"[^A-Za-z0-9_.=+-]+")
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
    """Episodes per evaluation, on separate evaluation environments (deterministic actions)."""
    hyperparams: list[str] = field(default_factory=list)
    """``key=value`` overrides applied to every agent before its own."""
    n_envs: int | None = None
    """Training environments per run; ``None`` keeps each preset's."""
    max_steps: int | None = None
    """Episode step limit; ``None`` keeps each preset's."""
    threshold: float | None = None
    """Return that counts as solved for "steps to threshold"; ``None`` takes the env's ``reward_threshold``."""
    baseline: str | None = None
    """Agent the probability of improvement is measured against; ``None`` takes the first LSTM agent, or else
    the last agent."""
    description: str | None = None
    """What the comparison is for and why its budget, shown at the top of its summary."""

    # Fields that define what a run computes; a folder's runs are only comparable if these match.
    RUN_FIELDS = ("env", "timesteps", "eval_freq", "eval_episodes", "hyperparams", "n_envs", "max_steps")

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
        return _SAFE.sub("_", self.label)


@dataclass(frozen=True)
class RunJob:
    """One training run of a comparison, everything a worker process needs.

    :param agent: the agent's label.
    :param seed: the run's seed.
    :param train_args: the ``python -m ctm_rl.train`` arguments of the run.
    :param run_dir: the run's folder.
    :param threads: torch threads for the run.
    :param runs_at_once: runs sharing the machine with it (``None`` when a scheduler decides), for the record.
    """

    agent: str
    seed: int
    train_args: tuple[str, ...]
    run_dir: str
    threads: int = 1
    runs_at_once: int | None = None


class RunInterrupted(CtmRlError):
    """A run stopped before its budget (Ctrl-C); it is not a result."""


def train_arguments(config: CompareConfig, spec: AgentSpec, seed: int, device: str) -> list[str]:
    """The ``python -m ctm_rl.train`` arguments of one run."""
    args = ["--env", config.env, "--agent", spec.preset, "--seed", str(seed), "--timesteps", str(config.timesteps),
            "--eval-freq", str(config.eval_freq), "--eval-episodes", str(config.eval_episodes),
            "--checkpoint-freq", "0", "--device", device, "--no-progress-bar"]
    if config.n_envs is not None:
        args += ["--n-envs", str(config.n_envs)]
    if config.max_steps is not None:
        args += ["--max-steps", str(config.max_steps)]
    overrides = [*config.hyperparams, *spec.overrides]
    return args + (["--hyperparams", *overrides] if overrides else [])


def run_dir_of(out: Path, spec: AgentSpec, seed: int) -> Path:
    return out / RUNS_DIR / spec.dirname / f"seed{seed}"


def execute_run(job: RunJob) -> dict[str, Any]:
    """Train one run from scratch and return its record (evaluation curve, parameters, timing).

    Runs in a worker process (pool or Ray task); a folder left by an unfinished earlier attempt is replaced.

    :raises RunInterrupted: if training stopped before its budget.
    """
    from ctm_rl.machine import code_version, machine_description
    from ctm_rl.train import build_parser, config_from_args, train

    torch.set_num_threads(job.threads)
    run_dir = Path(job.run_dir)
    if run_dir.exists():
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True)
    (run_dir / COMMAND_FILE).write_text(shlex.join([sys.executable, "-m", "ctm_rl.train", *job.train_args]) + "\n")
    config, env = config_from_args(build_parser().parse_args(list(job.train_args)))
    started = time.perf_counter()
    model = train(config, env, run_dir)
    wall_time = time.perf_counter() - started
    if model.num_timesteps < config.timesteps:
        raise RunInterrupted(f"{job.agent} seed {job.seed} stopped at {model.num_timesteps} of {config.timesteps} steps.")
    with np.load(run_dir / "eval" / "evaluations.npz") as data:
        returns, lengths = data["results"], data["ep_lengths"]
        evaluations = {"step": data["timesteps"].tolist(), "return_mean": returns.mean(axis=1).tolist(),
                       "return_std": returns.std(axis=1).tolist(), "length_mean": lengths.mean(axis=1).tolist(),
                       "wall_time_s": data["wall_time"].tolist(), "train_time_s": data["train_time"].tolist(),
                       "returns": returns.tolist()}
    # Throughput over training alone, up to the last evaluation (the evaluations' own time is left out).
    steps, train_time = (evaluations["step"][-1], evaluations["train_time_s"][-1]) if evaluations["step"] else (
        model.num_timesteps, wall_time)
    return {
        "agent": job.agent, "seed": job.seed, "timesteps": int(model.num_timesteps),
        "parameters": sum(p.numel() for p in model.policy.parameters() if p.requires_grad),
        "wall_time_s": wall_time, "steps_per_second": steps / train_time,
        "machine": machine_description(str(model.device)), "code": code_version(), "runs_at_once": job.runs_at_once, "policy": config.policy, "algo": config.algo,
        "evaluations": evaluations,
    }


def _merge_existing(out: Path, config: CompareConfig) -> CompareConfig:
    """The folder's comparison extended by ``config``'s agents and seeds; its run settings must match."""
    path = out / CONFIG_FILE
    if not path.exists():
        return config
    existing = CompareConfig.from_dict(yaml.safe_load(path.read_text()))
    for name in CompareConfig.RUN_FIELDS:
        old, new = getattr(existing, name), getattr(config, name)
        if old != new:
            raise ConfigError(f"{out} holds a comparison with {name}={old!r}, not {new!r}; its runs would not be "
                              f"comparable. Fix: use the same settings to extend it, or a new --out folder.")
    return dataclasses.replace(
        config, agents=list(dict.fromkeys(existing.agents + config.agents)),
        seeds=list(dict.fromkeys(existing.seeds + config.seeds)),
        threshold=existing.threshold if config.threshold is None else config.threshold,
        baseline=existing.baseline if config.baseline is None else config.baseline,
        description=existing.description if config.description is None else config.description)


def plan(config: CompareConfig, out: Path, device: str = "auto", threads: int = 1,
         runs_at_once: int | None = None) -> list[RunJob]:
    """Every run of the comparison, after checking each agent's settings (env, preset, keys) up front."""
    from ctm_rl.train import build_parser, config_from_args

    specs = [AgentSpec.parse(agent) for agent in config.agents]
    dirnames = [spec.dirname for spec in specs]
    if len(set(dirnames)) != len(dirnames):
        raise ConfigError(f"Agents must differ: {', '.join(config.agents)} name the same run folders.")
    if config.baseline_agent() not in config.agents:
        raise ConfigError(f"--baseline {config.baseline!r} is not one of the agents ({', '.join(config.agents)}).")
    jobs = []
    for spec in specs:
        try:
            config_from_args(build_parser().parse_args(train_arguments(config, spec, config.seeds[0], device)))
        except CtmRlError as error:
            raise type(error)(f"agent {spec.label!r}: {error}") from None
        jobs += [RunJob(spec.label, seed, tuple(train_arguments(config, spec, seed, device)),
                        str(run_dir_of(out, spec, seed)), threads, runs_at_once) for seed in config.seeds]
    return jobs


def _write_result(job: RunJob, result: dict[str, Any]) -> None:
    path = Path(job.run_dir) / RESULT_FILE
    temporary = path.with_suffix(".tmp")
    temporary.write_text(json.dumps(result))
    temporary.replace(path)  # a result is either complete or absent


def run_comparison(config: CompareConfig, out: Path, backend: str = "local", workers: int | None = None,
                   device: str = "auto", ray_address: str | None = None, cpus_per_run: float = 1.0,
                   gpus_per_run: float = 0.0, argv: list[str] | None = None) -> list[tuple[str, int]]:
    """Train the comparison's missing runs, then write its report.

    :param config: the comparison.
    :param out: its folder; an existing one is extended (same run settings) and its finished runs kept.
    :param backend: ``local`` (a process pool) or ``ray``.
    :param workers: runs at a time for ``local`` (default: one per core).
    :param device: torch device of every run.
    :param ray_address: Ray cluster address; ``None`` uses ``RAY_ADDRESS`` or starts a local instance.
    :param cpus_per_run: Ray CPUs per run (also its torch threads).
    :param gpus_per_run: Ray GPUs (a fraction shares one) per run.
    :param argv: the command line, recorded in ``command.txt``.
    :return: the (agent, seed) runs trained by this call.
    """
    from ctm_rl import backends
    from ctm_rl.report import write_report

    if not config.agents or not config.seeds:
        raise ConfigError("A comparison needs at least one agent and one seed.")
    out.mkdir(parents=True, exist_ok=True)
    config = _merge_existing(out, config)
    cores = os.cpu_count() or 1
    workers = workers or cores
    threads = max(1, int(cpus_per_run)) if backend == "ray" else max(1, cores // workers)
    jobs = plan(config, out, device, threads, None if backend == "ray" else min(workers, len(config.agents) * len(config.seeds)))
    (out / CONFIG_FILE).write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))
    if argv is not None:
        with open(out / COMMAND_FILE, "a") as command:
            command.write(shlex.join([sys.executable, "-m", "ctm_rl.compare", *argv]) + "\n")
    pending = [job for job in jobs if not (Path(job.run_dir) / RESULT_FILE).exists()]
    print(f"{len(jobs)} runs: {len(jobs) - len(pending)} finished, {len(pending)} to train "
          f"({backend} backend).", flush=True)
    failures: list[str] = []

    def finished(job: RunJob, result: dict[str, Any]) -> None:
        _write_result(job, result)
        print(f"  done: {job.agent} seed {job.seed}: final return {result['evaluations']['return_mean'][-1]:.3g}, "
              f"{result['steps_per_second']:.0f} steps/s, {result['wall_time_s'] / 60:.1f} min", flush=True)

    def failed(job: RunJob, error: BaseException) -> None:
        failures.append(f"{job.agent} seed {job.seed}: {error}")
        print(f"  failed: {failures[-1]}", file=sys.stderr, flush=True)

    try:
        if backend == "ray":
            backends.run_ray(execute_run, pending, finished, failed, ray_address, cpus_per_run, gpus_per_run)
        else:
            backends.run_local(execute_run, pending, finished, failed, workers)
    except KeyboardInterrupt:
        done = sum((Path(job.run_dir) / RESULT_FILE).exists() for job in jobs)
        print(f"\nInterrupted: {done} of {len(jobs)} runs are finished and kept. Run the same command again to "
              f"train the rest.", file=sys.stderr)
        raise
    write_report(out)
    if failures:
        raise CtmRlError(f"{len(failures)} of {len(pending)} runs failed (the report covers the others):\n  "
                         + "\n  ".join(failures))
    return [(job.agent, job.seed) for job in pending]


def build_parser() -> argparse.ArgumentParser:
    defaults = CompareConfig()
    parser = argparse.ArgumentParser(prog="python -m ctm_rl.compare", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--env", default=defaults.env, help="environment name (default: %(default)s)")
    parser.add_argument("--agents", nargs="+", default=defaults.agents, metavar="AGENT",
                        help="agent specs: PRESET or PRESET:key=value,... (default: ctm lstm)")
    parser.add_argument("--seeds", type=int, default=len(defaults.seeds), help="seeds per agent (default: %(default)s)")
    parser.add_argument("--first-seed", type=int, default=0, help="seeds are first-seed, first-seed + 1, ...")
    parser.add_argument("--timesteps", type=int, default=defaults.timesteps, help="env steps per run (default: %(default)s)")
    parser.add_argument("--eval-freq", type=int, default=defaults.eval_freq, help="env steps between evaluations")
    parser.add_argument("--eval-episodes", type=int, default=defaults.eval_episodes, help="episodes per evaluation")
    parser.add_argument("--hyperparams", nargs="+", default=[], metavar="KEY=VALUE", help="overrides for every agent")
    parser.add_argument("--n-envs", type=int, help="training envs per run (default: each preset's)")
    parser.add_argument("--max-steps", type=int, help="episode step limit (default: each preset's)")
    parser.add_argument("--threshold", type=float, help="return that counts as solved (default: the env's)")
    parser.add_argument("--baseline", help="agent to measure improvement against (default: the first lstm agent)")
    parser.add_argument("--description", help="what the comparison is for and why its budget (shown in the summary)")
    parser.add_argument("--out", help="comparison folder (default: comparisons/<env>)")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="torch device of the runs")
    parser.add_argument("--backend", default="local", choices=["local", "ray"],
                        help="local process pool, or Ray tasks (pip install 'ctm-rl[ray]')")
    parser.add_argument("--workers", type=int, help="local backend: runs at a time (default: one per core)")
    parser.add_argument("--ray-address", default=None, help="Ray cluster address (default: RAY_ADDRESS, else a "
                        "new local instance)")
    parser.add_argument("--cpus-per-run", type=float, default=1.0, help="Ray CPUs per run (default: %(default)s)")
    parser.add_argument("--gpus-per-run", type=float, default=0.0, help="Ray GPUs per run, fractions share one")
    parser.add_argument("--report", nargs="+", metavar="DIR", help="rebuild the summary and plots of finished "
                        "comparison folders without training")
    parser.add_argument("--page", help="with --report: also write one results page (markdown) covering the folders")
    return parser


def config_from_args(args: argparse.Namespace) -> CompareConfig:
    for name in ("seeds", "timesteps", "eval_freq", "eval_episodes"):
        if getattr(args, name) < 1:
            raise ConfigError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}.")
    if args.eval_freq > args.timesteps:
        raise ConfigError(f"--eval-freq ({args.eval_freq}) exceeds --timesteps ({args.timesteps}): no run would be "
                          f"evaluated. Fix: lower --eval-freq.")
    if args.workers is not None and args.workers < 1:
        raise ConfigError(f"--workers must be >= 1, got {args.workers}.")
    if args.cpus_per_run <= 0 or args.gpus_per_run < 0:
        raise ConfigError("--cpus-per-run must be > 0 and --gpus-per-run >= 0.")
    if args.device == "cuda" and not torch.cuda.is_available() and args.backend == "local":
        raise ConfigError("--device cuda was asked for, but torch sees no CUDA device. Fix: use --device auto or cpu.")
    return CompareConfig(env=args.env, agents=list(dict.fromkeys(args.agents)),
                         seeds=list(range(args.first_seed, args.first_seed + args.seeds)), timesteps=args.timesteps,
                         eval_freq=args.eval_freq, eval_episodes=args.eval_episodes, hyperparams=args.hyperparams,
                         n_envs=args.n_envs, max_steps=args.max_steps, threshold=args.threshold,
                         baseline=args.baseline, description=args.description)


def main(argv: list[str] | None = None) -> int:
    from ctm_rl.report import write_page, write_report

    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    keep_freed_memory()
    try:
        if args.report:
            summaries = [write_report(Path(folder)) for folder in args.report]
            for summary in summaries:
                print(f"Wrote {summary} and its plots.")
            if args.page:
                print(f"Wrote {write_page([Path(folder) for folder in args.report], Path(args.page))}.")
            return 0
        if args.page:
            raise ConfigError("--page goes with --report: train the comparisons first, then build the page.")
        config = config_from_args(args)
        out = Path(args.out or Path("comparisons") / _SAFE.sub("_", args.env))
        run_comparison(config, out, args.backend, args.workers, args.device, args.ray_address, args.cpus_per_run,
                       args.gpus_per_run, argv)
        print(f"Summary: {out / 'summary.md'}")
    except CtmRlError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
