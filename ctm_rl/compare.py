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
import shlex
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from ctm_rl.allocator import keep_freed_memory
from ctm_rl.config import TrainConfig, load_preset, parse_key_values, preset_policy, resolve_config
from ctm_rl.errors import ConfigError, CtmRlError, RunBusyError
from ctm_rl.interrupts import terminate_as_interrupt, write_atomically
from ctm_rl.locks import hold_run, run_holder
from ctm_rl.runs import (COMMAND_FILE, CONFIG_FILE, RESULT_FILE, ROLLOUT_SETTINGS, AgentSpec, CompareConfig,
                         read_comparison_config, run_dir_of, safe_name)

@dataclass(frozen=True)
class RunJob:
    """One training run of a comparison, everything a worker process needs.

    :param agent: the agent's label.
    :param seed: the run's seed.
    :param config: the run's :class:`TrainConfig`, as a mapping (it travels to worker processes and Ray tasks).
    :param run_dir: the run's folder.
    :param command: the comparison's command line, recorded in the run folder.
    :param threads: torch threads for the run.
    :param runs_at_once: runs sharing the machine with it (``None`` when a scheduler decides), for the record.
    :param test_ticks: tick counts at which a trained CTM is also evaluated.
    :param stop_at: a return at which the run ends, at its first evaluation that reaches it; ``None`` trains the
        whole budget.
    """

    agent: str
    seed: int
    config: dict[str, Any]
    run_dir: str
    command: str = ""
    threads: int = 1
    runs_at_once: int | None = None
    test_ticks: tuple[int, ...] = ()
    stop_at: float | None = None


class RunInterrupted(KeyboardInterrupt):
    """A run stopped before its budget (Ctrl-C); it is not a result, and the comparison stops with it."""


# Settings that change how a run is carried out but not what it computes: a save made under other values of
# these can still be continued.
_CONTINUABLE_SETTINGS = ("device", "progress_bar", "checkpoint_freq", "keep_checkpoints")


def _what_it_computes(config: dict[str, Any]) -> dict[str, Any]:
    """A run's configuration (as a mapping) without the settings that do not change what it computes."""
    return {name: value for name, value in config.items() if name not in _CONTINUABLE_SETTINGS}


def continuable_steps(job: RunJob) -> int | None:
    """The steps of the newest readable save an earlier attempt at ``job`` left in its folder without a record, if
    the attempt trained the same configuration (only device, progress bar and checkpoint interval may differ);
    ``None`` if the run must start from scratch, as every run does in a comparison without checkpoints. A save
    may hold the whole budget: the attempt finished training, but the comparison stopped before writing its
    record.

    :raises ConfigError: if the folder holds saves but its configuration cannot be read: starting from scratch
        would delete them.
    """
    from ctm_rl.sb3.checkpoints import saved_steps, saves_newest_first
    from ctm_rl.train import CONFIG_FILE as RUN_CONFIG_FILE, read_run_config

    run_dir = Path(job.run_dir)
    if not job.config["checkpoint_freq"] or not (run_dir / RUN_CONFIG_FILE).exists() or (run_dir / RESULT_FILE).exists():
        return None
    try:
        saved = read_run_config(run_dir).to_dict()
    except CtmRlError as error:
        if not saves_newest_first(run_dir):
            return None  # nothing to lose
        raise ConfigError(f"{run_dir} holds saves, but its {RUN_CONFIG_FILE} cannot be read ({error}), so the saves "
                          f"cannot be checked against this comparison. Fix: restore it, or delete {run_dir} to "
                          f"train the run from scratch.") from None
    if _what_it_computes(saved) != _what_it_computes(job.config):
        return None
    for path in saves_newest_first(run_dir):
        try:
            steps = saved_steps(path)
        except CtmRlError:
            continue  # a damaged save (a write cut short): the next newest may do
        return steps if steps > 0 else None
    return None


def _wall_time_until(run_dir: Path, steps: int) -> float:
    """Wall-clock seconds earlier attempts spent up to their last evaluation at or before ``steps`` (the clock the
    evaluations keep across a resume); 0 if there is none."""
    path = run_dir / "eval" / "evaluations.npz"
    try:
        with np.load(path) as data:
            kept = data["wall_time"][data["timesteps"] <= steps]
    except (OSError, KeyError, ValueError):
        return 0.0
    return float(kept[-1]) if len(kept) and np.isfinite(kept[-1]) else 0.0


def execute_run(job: RunJob) -> dict[str, Any]:
    """Train one run and return its record (evaluation curve, parameters, timing).

    Runs in a worker process (pool or Ray task). A run an earlier attempt left unfinished continues from its
    newest readable save (a checkpoint, or the ``model.zip`` Ctrl-C wrote) when that attempt trained the same
    configuration, and its record lists the steps it continued from under ``resumed_at``; otherwise its folder is
    replaced and it starts from scratch. A finished run keeps its ``model.zip`` and drops its checkpoints.

    :raises RunInterrupted: if training stopped before its budget.
    :raises RunBusyError: if another process is training the run now.
    """
    torch.set_num_threads(job.threads)
    with hold_run(Path(job.run_dir)):  # another command training this run now leaves it alone, and vice versa
        return _train_run(job)


def _train_run(job: RunJob) -> dict[str, Any]:
    """:func:`execute_run`'s work, once the run folder is this process's."""
    from ctm_rl.envs import resolve_env
    from ctm_rl.machine import code_version, machine_description
    from ctm_rl.sb3.callbacks import StopAtReturn
    from ctm_rl.train import resumed_steps, train

    run_dir = Path(job.run_dir)
    if (run_dir / RESULT_FILE).exists():  # another command finished and recorded it since this one planned it
        return json.loads((run_dir / RESULT_FILE).read_text())
    continue_from = continuable_steps(job)
    if continue_from is None:
        if run_dir.exists():
            shutil.rmtree(run_dir)
        run_dir.mkdir(parents=True)
    if job.command:
        with open(run_dir / COMMAND_FILE, "a") as file:
            file.write(job.command + "\n")
    config = TrainConfig.from_dict(job.config)
    env = resolve_env(config.env, config.mask_velocity, config.env_module)
    tuning = load_preset(config.agent, env.preset_blocks).get("tuning")
    started = time.perf_counter()
    stop = None if job.stop_at is None else StopAtReturn(job.stop_at)
    model = train(config, env, run_dir, resume=continue_from is not None, after_eval=stop)
    # The steps train() continued from: the newest save that loaded, which may be older than continue_from when a
    # newer one turned out damaged.
    resumed_at = resumed_steps(run_dir)
    if continue_from is not None and continue_from >= config.timesteps:  # trained before; only the record is new
        wall_time = _wall_time_until(run_dir, continue_from)
    else:
        earlier_wall_time = _wall_time_until(run_dir, resumed_at[-1]) if resumed_at else 0.0
        wall_time = earlier_wall_time + time.perf_counter() - started
    # Training ends early at an interrupt, or (with stop_at) right after the evaluation that reached the threshold.
    if model.num_timesteps < config.timesteps and not (stop is not None and stop.reached):
        raise RunInterrupted(f"{job.agent} seed {job.seed} stopped at {model.num_timesteps} of {config.timesteps} steps.")
    shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)  # model.zip holds the finished run
    with np.load(run_dir / "eval" / "evaluations.npz") as data:
        returns, lengths = data["results"], data["ep_lengths"]
        evaluations = {"step": data["timesteps"].tolist(), "return_mean": returns.mean(axis=1).tolist(),
                       "return_std": returns.std(axis=1).tolist(), "length_mean": lengths.mean(axis=1).tolist(),
                       "wall_time_s": data["wall_time"].tolist(), "train_time_s": data["train_time"].tolist(),
                       "returns": returns.tolist(),
                       "time_limit_fraction": data["time_limit_fraction"].tolist()}
    # Throughput over training alone, up to the last evaluation (the evaluations' own time is left out).
    steps, train_time = (evaluations["step"][-1], evaluations["train_time_s"][-1]) if evaluations["step"] else (
        model.num_timesteps, wall_time)
    return {
        **after_training(model, config, job.test_ticks),
        "agent": job.agent, "seed": job.seed, "timesteps": int(model.num_timesteps),
        "parameters": sum(p.numel() for p in model.policy.parameters() if p.requires_grad),
        "wall_time_s": wall_time, "steps_per_second": steps / train_time,
        "machine": machine_description(str(model.device)), "code": code_version(), "runs_at_once": job.runs_at_once,
        "policy": config.policy, "policy_kwargs": config.policy_kwargs, "algo": config.algo,
        **{name: getattr(config, name) for name in ROLLOUT_SETTINGS}, "normalize_reward": config.normalize_reward,
        "tuning": tuning, "resumed_at": resumed_at, "stopped_at_threshold": model.num_timesteps < config.timesteps,
        "evaluations": evaluations,
    }


DYNAMICS_STEPS = 2_000
"""Most steps of the episode a run's dynamics are measured on."""


def after_training(model, config: TrainConfig, test_ticks: tuple[int, ...] = ()) -> dict[str, Any]:
    """What a trained run adds to its record: the dynamics measures of one deterministic evaluation episode
    (see :mod:`ctm_rl.dynamics`) and, for a CTM, its returns at each of ``test_ticks``."""
    from ctm_rl.dynamics import agent_kind, dynamics_measures, evaluate_ticks, record_episode
    from ctm_rl.train import run_env

    venv = run_env(config, n_envs=1)
    try:
        episode = record_episode(model, venv, render=False, max_steps=DYNAMICS_STEPS)
    finally:
        venv.close()
    record: dict[str, Any] = {"dynamics": {"return": episode.total_return, "steps": len(episode.steps),
                                           **dataclasses.asdict(dynamics_measures(episode.unit_trace()))}}
    if test_ticks and agent_kind(model) == "ctm":
        venv = run_env(config, n_envs=min(config.eval_episodes, 8))
        try:
            evaluation = evaluate_ticks(model, venv, list(test_ticks), config.eval_episodes)
        finally:
            venv.close()
        record["test_ticks"] = [{"ticks": e.ticks, "mean": e.mean.value, "returns": e.returns} for e in evaluation]
    return record


def _merge_existing(out: Path, config: CompareConfig) -> CompareConfig:
    """The folder's comparison extended by ``config``'s agents and seeds; its run settings must match, except that
    a comparison whose runs stopped at the threshold may go on without the stop (its runs then continue to the
    whole budget, :func:`reopen_stopped_runs`)."""
    path = out / CONFIG_FILE
    if not path.exists():
        return config
    existing = read_comparison_config(out)
    for name in CompareConfig.RUN_FIELDS:
        old, new = getattr(existing, name), getattr(config, name)
        if name == "stop_at_threshold" and old and not new:
            continue
        if old != new:
            raise ConfigError(f"{out} holds a comparison with {name}={old!r}, not {new!r}; its runs would not be "
                              f"comparable. Fix: use the same settings to extend it, or a new --out folder.")
    if existing.stop_at_threshold and config.stop_at_threshold and config.threshold not in (None, existing.threshold):
        raise ConfigError(f"{out} holds runs that stopped at the threshold {existing.threshold!r}, not "
                          f"{config.threshold!r}; its runs would not be comparable. Fix: drop --threshold to extend "
                          f"it, or use a new --out folder.")
    return dataclasses.replace(
        config, agents=list(dict.fromkeys(existing.agents + config.agents)),
        seeds=list(dict.fromkeys(existing.seeds + config.seeds)),
        threshold=existing.threshold if config.threshold is None else config.threshold,
        baseline=existing.baseline if config.baseline is None else config.baseline,
        test_ticks=config.test_ticks or existing.test_ticks,
        description=existing.description if config.description is None else config.description)


def reopen_stopped_runs(jobs: list[RunJob]) -> list[RunJob]:
    """Make the runs among ``jobs`` that ended at the threshold unfinished again, for a comparison that trains its
    whole budget: each loses its record (``result.json``, rebuilt when it finishes) and keeps its ``model.zip`` and
    evaluations, from which it continues. :return: the reopened jobs."""
    reopened = []
    for job in jobs:
        path = Path(job.run_dir) / RESULT_FILE
        if job.stop_at is None and path.exists() and json.loads(path.read_text()).get("stopped_at_threshold"):
            path.unlink()
            reopened.append(job)
    return reopened


def _folder_extension(requested: CompareConfig, merged: CompareConfig) -> str:
    """The agents and seeds a comparison folder adds to the command's, in words (empty when it adds none)."""
    parts = []
    agents = [agent for agent in merged.agents if agent not in requested.agents]
    if agents:
        parts.append(("agent " if len(agents) == 1 else "agents ") + ", ".join(agents))
    seeds = [str(seed) for seed in merged.seeds if seed not in requested.seeds]
    if seeds:
        parts.append(("seed " if len(seeds) == 1 else "seeds ") + ", ".join(seeds))
    return " and ".join(parts)


def agent_configs(config: CompareConfig, device: str = "auto") -> dict[str, TrainConfig]:
    """Every agent's training configuration (for the comparison's first seed), validated before anything trains.

    An LSTM with ``lstm_hidden_size: match`` is sized to the comparison's first CTM agent, as trained (its
    overrides included); without a CTM agent, to the ``ctm`` preset.
    """
    specs = [AgentSpec.parse(agent) for agent in config.agents]
    dirnames = [spec.dirname for spec in specs]
    if len(set(dirnames)) != len(dirnames):
        raise ConfigError(f"Agents must differ: {', '.join(config.agents)} name the same run folders.")
    if config.baseline_agent() not in config.agents:
        raise ConfigError(f"--baseline {config.baseline!r} is not one of the agents ({', '.join(config.agents)}).")
    shared = parse_key_values(config.hyperparams, "--hyperparams")
    settings = dict(timesteps=config.timesteps, n_envs=config.n_envs, max_steps=config.max_steps,
                    env_module=config.env_module, env_kwargs=config.env_kwargs,
                    eval_freq=config.eval_freq, eval_episodes=config.eval_episodes,
                    eval_deterministic=config.eval_deterministic, checkpoint_freq=config.checkpoint_freq, device=device,
                    # A run continues from its newest save, so older checkpoints are only disk: keep one.
                    keep_checkpoints=1, progress_bar=False, seed=config.seeds[0])
    def agent_error(spec: AgentSpec, error: CtmRlError) -> CtmRlError:
        return type(error)(f"agent {spec.label!r}: {error}")

    kinds = {}
    for spec in specs:
        try:
            kinds[spec.label] = preset_policy(spec.preset, config.env, config.env_module)
        except CtmRlError as error:
            raise agent_error(spec, error) from None
    configs: dict[str, TrainConfig] = {}
    match_to = None
    # CTM agents first, so that a matched LSTM knows the CTM it is compared with.
    for spec in sorted(specs, key=lambda spec: kinds[spec.label] != "ctm"):
        try:
            overrides = {**shared, **parse_key_values(list(spec.overrides), f"agent {spec.label!r}")}
            configs[spec.label], _ = resolve_config(config.env, spec.preset, overrides, match_to=match_to, **settings)
        except CtmRlError as error:
            raise agent_error(spec, error) from None
        if match_to is None and configs[spec.label].policy == "ctm":
            match_to = configs[spec.label].policy_kwargs
    return {spec.label: configs[spec.label] for spec in specs}


def plan(config: CompareConfig, out: Path, device: str = "auto", threads: int = 1,
         runs_at_once: int | None = None, command: str = "") -> list[RunJob]:
    """Every run of the comparison, after checking each agent's settings (env, preset, keys) up front.

    :raises ConfigError: if the comparison stops its runs at the threshold but has none (``--threshold``, else the
        env's ``reward_threshold``).
    """
    from ctm_rl.report import threshold_of

    configs = agent_configs(config, device)
    stop_at = None
    if config.stop_at_threshold:
        stop_at = threshold_of(config)
        if stop_at is None:
            raise ConfigError(f"--stop-at-threshold needs a threshold, and {config.env} registers no reward_threshold. "
                              f"Fix: pass --threshold R.")
    return [RunJob(label, seed, dataclasses.replace(train_config, seed=seed).to_dict(),
                   str(run_dir_of(out, AgentSpec.parse(label), seed)), command, threads, runs_at_once,
                   tuple(config.test_ticks), stop_at)
            for label, train_config in configs.items() for seed in config.seeds]


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
    requested = config
    config = _merge_existing(out, config)
    extension = _folder_extension(requested, config)
    cores = os.cpu_count() or 1
    workers = workers or cores
    user_threads = os.environ.get("OMP_NUM_THREADS", "")
    if backend == "ray":
        threads = max(1, int(cpus_per_run))
    elif user_threads.isdigit() and int(user_threads) > 0:
        threads = int(user_threads)  # the user's setting, as torch itself would honour it
    else:
        # One thread per run: on a 2-core CPU a second thread made one CartPole-NoVel run 3% faster (937 against
        # 911 steps/s), while a second run alongside doubled the throughput (docs/performance.md).
        threads = 1
    command = shlex.join([sys.executable, "-m", "ctm_rl.compare", *argv]) if argv is not None else ""
    jobs = plan(config, out, device, threads,
                None if backend == "ray" else min(workers, len(config.agents) * len(config.seeds)), command)
    # Every agent spec is resolved by now: only a valid comparison gets a folder.
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ConfigError(f"Cannot create the comparison folder {out} ({error.strerror or error}). Fix: give --out a "
                          f"folder you can write to.") from None
    write_atomically(out / CONFIG_FILE, yaml.safe_dump(config.to_dict(), sort_keys=False))
    if command:
        with open(out / COMMAND_FILE, "a") as file:
            file.write(command + "\n")
    reopened = reopen_stopped_runs(jobs)
    if reopened:
        many = len(reopened) != 1
        print(f"{len(reopened)} run{'s' if many else ''} had stopped at the threshold; without --stop-at-threshold this "
              f"command continues {'them' if many else 'it'} from there to {config.timesteps:,} steps.", flush=True)
    if extension:
        print(f"{out} also holds {extension} from earlier commands: they stay part of this comparison (remove them "
              f"from its {CONFIG_FILE} to leave them out).", flush=True)
    pending = [job for job in jobs if not (Path(job.run_dir) / RESULT_FILE).exists()]
    holders = {job.run_dir: run_holder(Path(job.run_dir)) for job in pending}
    busy = [job for job in pending if holders[job.run_dir] is not None]
    for job in busy:
        print(f"  skipped: {job.agent} seed {job.seed}, which another process (pid {holders[job.run_dir]}) is training "
              f"now; run the command again once it has finished to include its record.", flush=True)
    pending = [job for job in pending if holders[job.run_dir] is None]
    continuing = sum(continuable_steps(job) is not None for job in pending)
    print(f"{len(jobs)} runs: {len(jobs) - len(pending) - len(busy)} finished, {len(pending)} to train"
          + (f" ({continuing} continue from a save)" if continuing else "")
          + (f", {len(busy)} trained by another process" if busy else "") + f" ({backend} backend).", flush=True)
    failures: list[str] = []

    def finished(job: RunJob, result: dict[str, Any]) -> None:
        write_atomically(Path(job.run_dir) / RESULT_FILE, json.dumps(result))  # a result is complete or absent
        print(f"  done: {job.agent} seed {job.seed}: final return {result['evaluations']['return_mean'][-1]:.3g}, "
              f"{result['steps_per_second']:.0f} steps/s, {result['wall_time_s'] / 60:.1f} min", flush=True)

    def failed(job: RunJob, error: BaseException) -> None:
        if isinstance(error, RunBusyError):  # another command on this folder took the run up first
            print(f"  skipped: {job.agent} seed {job.seed}, which another process took up meanwhile; run the "
                  f"command again once it has finished to include its record.", flush=True)
            return
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
    parser.add_argument("--eval-stochastic", action="store_true",
                        help="evaluate with sampled actions, as in training (default: the most likely actions)")
    parser.add_argument("--hyperparams", nargs="+", default=[], metavar="KEY=VALUE", help="overrides for every agent")
    parser.add_argument("--n-envs", type=int, help="training envs per run (default: each preset's)")
    parser.add_argument("--max-steps", type=int, help="episode step limit (default: each preset's)")
    parser.add_argument("--env-module", help="module to import first, so that it registers its env ids")
    parser.add_argument("--env-kwargs", nargs="+", default=[], metavar="KEY=VALUE", help="env constructor arguments")
    parser.add_argument("--threshold", type=float, help="return that counts as solved (default: the env's)")
    parser.add_argument("--baseline", help="agent to measure improvement against (default: the first lstm agent)")
    parser.add_argument("--description", help="what the comparison is for and why its budget (shown in the summary)")
    parser.add_argument("--test-ticks", type=int, nargs="+", default=[], metavar="K",
                        help="also evaluate every trained CTM at these tick counts (think longer at test time)")
    parser.add_argument("--stop-at-threshold", action="store_true",
                        help="end each run at its first evaluation at or above the threshold: steps to threshold for "
                        "less compute, but final returns are that evaluation's (a screen)")
    parser.add_argument("--checkpoint-freq", type=int, default=defaults.checkpoint_freq,
                        help="env steps between a run's checkpoints, from which running the command again continues "
                        "an interrupted run; 0: none, it restarts (default: %(default)s)")
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
    if args.test_ticks and min(args.test_ticks) < 1:
        raise ConfigError(f"--test-ticks must all be >= 1, got {args.test_ticks}.")
    if args.checkpoint_freq < 0:
        raise ConfigError(f"--checkpoint-freq must be >= 0 (0: no checkpoints), got {args.checkpoint_freq}.")
    if args.workers is not None and args.workers < 1:
        raise ConfigError(f"--workers must be >= 1, got {args.workers}.")
    if args.cpus_per_run <= 0 or args.gpus_per_run < 0:
        raise ConfigError("--cpus-per-run must be > 0 and --gpus-per-run >= 0.")
    if args.device == "cuda" and not torch.cuda.is_available() and args.backend == "local":
        raise ConfigError("--device cuda was asked for, but torch sees no CUDA device. Fix: use --device auto or cpu.")
    return CompareConfig(env=args.env, agents=list(dict.fromkeys(args.agents)),
                         seeds=list(range(args.first_seed, args.first_seed + args.seeds)), timesteps=args.timesteps,
                         eval_freq=args.eval_freq, eval_episodes=args.eval_episodes,
                         eval_deterministic=not args.eval_stochastic, hyperparams=args.hyperparams,
                         n_envs=args.n_envs, max_steps=args.max_steps, env_module=args.env_module,
                         env_kwargs=parse_key_values(args.env_kwargs, "--env-kwargs"), threshold=args.threshold,
                         baseline=args.baseline, description=args.description,
                         test_ticks=list(dict.fromkeys(args.test_ticks)), checkpoint_freq=args.checkpoint_freq,
                         stop_at_threshold=args.stop_at_threshold)


@terminate_as_interrupt
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
        out = Path(args.out or Path("comparisons") / safe_name(args.env))
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
