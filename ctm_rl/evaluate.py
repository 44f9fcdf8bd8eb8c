"""Evaluate trained agents after training: each run's final model on fresh episodes, with its most likely actions
and with sampled ones, side by side.

    python -m ctm_rl.evaluate runs/MiniGrid-DoorKey-5x5/ctm-seed0 --episodes 30
    python -m ctm_rl.evaluate comparisons/MiniGrid-DoorKey-5x5 --episodes 30 --csv doorkey-evaluation.csv

A recurrent policy's most likely actions can loop until the episode's step limit where its sampled actions solve
the task (MiniGrid especially), so a training curve made with one kind of actions can call a run that learned the
task a failure, or the reverse. For each run this prints the mean return and the share of episodes that ran into
the step limit with each kind of actions; for a comparison folder also each agent's IQM over its seeds with a 95%
bootstrap interval. Every run is evaluated on the same episodes (the same environment seed) with both kinds.

Runs are rebuilt from their ``config.yaml`` and tensors: nothing in a run folder is unpickled.
"""

from __future__ import annotations

import argparse
import csv
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ctm_rl import stats
from ctm_rl.errors import ConfigError, CtmRlError
from ctm_rl.runs import CONFIG_FILE as COMPARISON_FILE
from ctm_rl.runs import finished_runs, read_comparison_config

ACTIONS = {"most-likely": True, "sampled": False}
"""The kinds of actions an evaluation can take, and whether each is SB3's ``deterministic``."""

EVALUATION_SEED = 777
"""Default seed of the evaluation episodes, away from the seeds that training and its evaluations use."""


@dataclass(frozen=True)
class RunToEvaluate:
    """One run folder and the names it is reported under."""

    agent: str
    """The agent spec of a comparison's run, else the run's agent preset."""
    seed: int
    """The run's training seed."""
    path: Path


@dataclass(frozen=True)
class Evaluation:
    """One run evaluated with one kind of actions."""

    run: RunToEvaluate
    actions: str
    """A key of :data:`ACTIONS`."""
    returns: np.ndarray
    """``(episodes,)`` episode returns."""
    lengths: np.ndarray
    """``(episodes,)`` episode lengths in steps."""
    step_limit: int | None
    """The episodes' step limit; ``None`` if the environment has none."""

    @property
    def mean(self) -> float:
        return float(self.returns.mean())

    @property
    def time_limit_fraction(self) -> float:
        """The share of episodes that ran into the step limit (NaN without a limit): a looping policy's mark."""
        return float(np.mean(self.lengths >= self.step_limit)) if self.step_limit else float("nan")


def runs_in(source: Path) -> list[RunToEvaluate]:
    """The runs a source names: itself if it is a run folder, or the finished runs of a comparison folder (agent by
    agent, seed by seed).

    :raises ConfigError: if ``source`` is neither, or a comparison folder has no finished run.
    """
    from ctm_rl.train import read_run_config

    if (source / COMPARISON_FILE).exists():
        finished = [RunToEvaluate(*run) for run in finished_runs(source, read_comparison_config(source))]
        if not finished:
            raise ConfigError(f"{source} holds no finished run yet. Fix: let python -m ctm_rl.compare finish a run "
                              f"first.")
        return finished
    if not source.is_dir():
        raise ConfigError(f"{source} is not a folder. Fix: pass a run folder (python -m ctm_rl.train) or a comparison "
                          f"folder (python -m ctm_rl.compare --out).")
    config = read_run_config(source)  # raises a ConfigError naming the fix for any other folder
    return [RunToEvaluate(config.agent, config.seed, source)]


def evaluate_run(run: RunToEvaluate, kinds: list[str], episodes: int, seed: int = EVALUATION_SEED,
                 n_envs: int = 8) -> list[Evaluation]:
    """Evaluate a run's newest save on ``episodes`` episodes with each kind of actions in turn, loaded once.

    :param kinds: keys of :data:`ACTIONS`.
    :param seed: seeds the environments and the action sampling before each kind, so that every run and kind of
        actions meets the same episodes and a sampled evaluation can be repeated.
    :param n_envs: environments stepped together (at most ``episodes``).
    """
    from stable_baselines3.common.evaluation import evaluate_policy
    from stable_baselines3.common.utils import set_random_seed

    from ctm_rl.sb3.callbacks import episode_step_limit
    from ctm_rl.train import load_run_model, read_run_config, run_env

    config = read_run_config(run.path)
    venv = run_env(config, n_envs=min(n_envs, episodes), seed=seed)
    evaluations = []
    try:
        model = load_run_model(run.path, venv, config)
        limit = episode_step_limit(venv)
        for kind in kinds:
            venv.seed(seed)  # the same episodes for every kind
            set_random_seed(seed)
            returns, lengths = evaluate_policy(model, venv, n_eval_episodes=episodes, deterministic=ACTIONS[kind],
                                               return_episode_rewards=True)
            evaluations.append(Evaluation(run, kind, np.asarray(returns, dtype=float), np.asarray(lengths), limit))
    finally:
        venv.close()
    return evaluations


def agent_estimates(evaluations: list[Evaluation]) -> dict[tuple[str, str], stats.Estimate]:
    """IQM over seeds of the runs' mean returns with its 95% bootstrap interval, per (agent, kind of actions)."""
    groups: dict[tuple[str, str], list[float]] = {}
    for evaluation in evaluations:
        groups.setdefault((evaluation.run.agent, evaluation.actions), []).append(evaluation.mean)
    return {key: stats.interval_estimate(np.asarray(means), stats.iqm) for key, means in groups.items()}


def table(evaluations: list[Evaluation], kinds: list[str]) -> str:
    """A plain-text table: one row per run, a column pair (mean return, step-limit share) per kind of actions,
    then one IQM row per agent that has more than one run."""
    by_run: dict[RunToEvaluate, dict[str, Evaluation]] = {}
    for evaluation in evaluations:
        by_run.setdefault(evaluation.run, {})[evaluation.actions] = evaluation
    width = max([len("agent")] + [len(run.agent) for run in by_run])
    header = f"{'agent':<{width}}  {'seed':>4}" + "".join(f"  {kind + ': mean':>18}  {'at limit':>8}" for kind in kinds)
    lines = [header]
    for run, results in by_run.items():
        lines.append(f"{run.agent:<{width}}  {run.seed:>4}" + "".join(
            f"  {results[kind].mean:>18.4g}  {results[kind].time_limit_fraction:>8.2f}" for kind in kinds))
    estimates = agent_estimates(evaluations)
    agents = list(dict.fromkeys(run.agent for run in by_run))
    for agent in agents:
        if sum(run.agent == agent for run in by_run) > 1:
            cells = [estimates[agent, kind] for kind in kinds]
            lines.append(f"{agent:<{width}}  {'IQM':>4}" + "".join(
                f"  {f'{e.value:.3g} [{e.low:.3g}, {e.high:.3g}]':>28}" for e in cells))
    return "\n".join(lines)


def write_csv(evaluations: list[Evaluation], path: Path) -> None:
    """One row per (run, kind of actions): mean and std of the return, mean length, step-limit share, episodes."""
    with open(path, "w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["agent", "seed", "run", "actions", "episodes", "return_mean", "return_std", "length_mean",
                         "time_limit_fraction"])
        for e in evaluations:
            writer.writerow([e.run.agent, e.run.seed, str(e.run.path), e.actions, len(e.returns), f"{e.mean:.6g}",
                             f"{e.returns.std():.6g}", f"{e.lengths.mean():.6g}", f"{e.time_limit_fraction:.6g}"])


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m ctm_rl.evaluate", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sources", nargs="+", metavar="FOLDER", help="run folders and comparison folders")
    parser.add_argument("--episodes", type=int, default=30, help="episodes per run and kind of actions "
                                                                 "(default: %(default)s)")
    parser.add_argument("--actions", nargs="+", choices=list(ACTIONS), default=list(ACTIONS),
                        help="kinds of actions to evaluate with (default: both)")
    parser.add_argument("--seed", type=int, default=EVALUATION_SEED, help="seed of the evaluation episodes "
                                                                          "(default: %(default)s)")
    parser.add_argument("--n-envs", type=int, default=8, help="environments stepped together (default: %(default)s)")
    parser.add_argument("--csv", metavar="FILE", help="also write one row per run and kind of actions to FILE")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.episodes < 1 or args.n_envs < 1:
            raise ConfigError("--episodes and --n-envs must be at least 1. Fix: pass a positive number.")
        runs = [run for source in args.sources for run in runs_in(Path(source))]
        evaluations = [evaluation for run in runs
                       for evaluation in evaluate_run(run, args.actions, args.episodes, args.seed, args.n_envs)]
    except CtmRlError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"{args.episodes} episodes per run and kind of actions, environment seed {args.seed}; 'at limit': the share "
          f"of episodes that ran into the step limit.")
    print(table(evaluations, args.actions))
    if args.csv:
        write_csv(evaluations, Path(args.csv))
        print(f"Wrote {args.csv}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
