"""Hyperparameter search with Optuna: TPE sampling, median pruning on the periodic evaluations, studies shared
through a database.

    python -m ctm_rl.tune --env CartPole-NoVel --agent ctm --trials 40 --timesteps 100000 --seeds 2
    python -m ctm_rl.tune ... --storage sqlite:///tune.db --study-name cp-ctm      # several processes, one study
    python -m ctm_rl.tune ... --save-preset agents/ctm_tuned.yml                   # the best trial as a preset

Each trial samples ``--hyperparams`` keys from the agent's search space (``agents/search/<agent>.yml``, blocks
merged like the presets), trains one run per seed with the training command's code, and scores the mean over
seeds of the last evaluation's mean return, as ``compare`` scores a run (``--score final``), or of the mean over
all of a run's evaluations (``--score mean``, the area under its learning curve), which also rewards learning
sooner: on a task every trial ends up solving, the final return cannot tell a fast trial from a slow one. After
every evaluation the trial reports its score so far; the median pruner stops trials below the median of earlier
trials at the same point. A study keeps the score it was created with. Running the same command again continues
the study (its SQLite file sits in ``--out`` unless ``--storage`` names another database). The study folder gets
``history.png``, ``importance.png`` and ``best.yaml``. Needs Optuna: ``pip install "ctm-rl[tune]"``.
"""

from __future__ import annotations

import argparse
import logging
import multiprocessing
import shlex
import sys
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from ctm_rl.config import (TrainConfig, apply_hyperparams, is_preset_path, load_preset, merge_blocks,
                           parse_key_values, preset_dir, resolve_config)
from ctm_rl.envs import resolve_env
from ctm_rl.errors import ConfigError, CtmRlError
from ctm_rl.interrupts import terminate_as_interrupt
from ctm_rl.runs import safe_name

_KINDS = ("float", "int", "categorical")
SCORES = ("final", "mean")
"""What a trial can maximise (:attr:`TuneConfig.score`)."""


def run_score(returns: list[float], score: str) -> float:
    """A run's score from its evaluations' mean returns so far: the last one (``final``) or their mean (``mean``)."""
    return float(returns[-1] if score == "final" else np.mean(returns))


def _optuna():
    try:
        import optuna
    except ImportError:
        raise ConfigError("python -m ctm_rl.tune needs Optuna, which is not installed. Fix: pip install "
                          "'ctm-rl[tune]'.") from None
    return optuna


@dataclass
class TuneConfig:
    """What a study searches and how each trial is trained."""

    env: str
    """Environment name, as the training command takes it."""
    agent: str = "ctm"
    """Agent preset (a bundled name or a preset file); its search space is ``search/<name>.yml`` beside it."""
    trials: int = 20
    """Trials this command adds to the study (in all processes together)."""
    timesteps: int = 100_000
    """Environment steps per trial and seed."""
    seeds: int = 1
    """Seeds per trial (0, 1, ...); the trial's score is their mean."""
    eval_freq: int = 10_000
    """Environment steps between evaluations, which are also the pruner's checkpoints."""
    eval_episodes: int = 10
    """Episodes per evaluation."""
    eval_deterministic: bool = True
    """Evaluate with the policy's most likely actions; ``False`` samples them, as training does."""
    hyperparams: dict[str, Any] = field(default_factory=dict)
    """Fixed overrides applied under the sampled ones."""
    n_startup_trials: int = 5
    """Trials the pruner and TPE wait for before acting (random sampling until then)."""
    sampler_seed: int | None = None
    """Seed of the TPE sampler."""
    score: str = "final"
    """What a trial maximises, per run and then averaged over seeds: ``final``, the last evaluation's mean return;
    ``mean``, the mean over all the run's evaluations (the area under its learning curve)."""


def search_space(agent: str, env: str) -> dict[str, dict[str, Any]]:
    """The agent's search space for an environment: its blocks merged as a preset's are (``default``, the family,
    then the exact environment's).

    :raises ConfigError: for a missing file or a malformed distribution.
    """
    name = Path(agent).stem if is_preset_path(agent) else agent
    folder = Path(agent).parent if is_preset_path(agent) else preset_dir()
    path = folder / "search" / f"{name}.yml"
    if not path.is_file():
        raise ConfigError(f"No search space for the {name} agent ({path} does not exist). Fix: write one, in the "
                          f"format of {preset_dir() / 'search' / 'ctm.yml'}.")
    try:
        blocks = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        raise ConfigError(f"Search space {path}: {error}. Fix: correct the YAML there.") from None
    space: dict[str, Any] = {}
    for block in resolve_env(env).preset_blocks:
        space = merge_blocks(space, blocks.get(block) or {})
    for key, spec in space.items():
        if not isinstance(spec, dict) or spec.get("type") not in _KINDS:
            raise ConfigError(f"Search space {path}: {key} needs a type, one of {', '.join(_KINDS)}.")
        if spec["type"] == "categorical" and not spec.get("choices"):
            raise ConfigError(f"Search space {path}: {key} is categorical but lists no choices.")
        if spec["type"] != "categorical" and not ("low" in spec and "high" in spec and spec["low"] <= spec["high"]):
            raise ConfigError(f"Search space {path}: {key} needs low <= high.")
    return space


def sample(trial: Any, space: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """One value per key of ``space``, drawn by the trial."""
    values = {}
    for key, spec in space.items():
        if spec["type"] == "float":
            values[key] = trial.suggest_float(key, float(spec["low"]), float(spec["high"]), log=bool(spec.get("log")))
        elif spec["type"] == "int":
            values[key] = trial.suggest_int(key, int(spec["low"]), int(spec["high"]), step=int(spec.get("step", 1)),
                                            log=bool(spec.get("log")))
        else:
            values[key] = trial.suggest_categorical(key, list(spec["choices"]))
    return values


def trial_configs(config: TuneConfig, overrides: dict[str, Any], folder: Path) -> list[TrainConfig]:
    """The trial's training configurations, one per seed (validated)."""
    configs = []
    for seed in range(config.seeds):
        train_config, _ = resolve_config(config.env, config.agent, {**config.hyperparams, **overrides},
                                         timesteps=config.timesteps, eval_freq=config.eval_freq,
                                         eval_episodes=config.eval_episodes,
                                         eval_deterministic=config.eval_deterministic, checkpoint_freq=0, seed=seed,
                                         progress_bar=False, log_dir=str(folder))
        configs.append(train_config)
    return configs


def _pruning_callback(trial: Any, first_step: int, score: str):
    """After each evaluation: report the run's score so far (:func:`run_score`) to the trial as step
    ``first_step``, ``first_step + 1``, ... (each seed continues the count), and stop training if the pruner says
    so."""
    from stable_baselines3.common.callbacks import BaseCallback

    class ReportToTrial(BaseCallback):
        def __init__(self) -> None:
            super().__init__()
            self.returns: list[float] = []
            self.pruned = False

        def _on_step(self) -> bool:
            self.returns.append(float(self.parent.last_mean_reward))
            trial.report(run_score(self.returns, score), first_step + len(self.returns) - 1)
            self.pruned = trial.should_prune()
            return not self.pruned

    return ReportToTrial()


def objective(config: TuneConfig, study_dir: Path, space: dict[str, dict[str, Any]]):
    """The study's objective: train the trial's runs, report evaluations, return the mean of their scores."""
    optuna = _optuna()
    from ctm_rl.train import train

    def run_trial(trial: Any) -> float:
        overrides = sample(trial, space)
        folder = study_dir / "trials" / f"trial{trial.number}"
        scores = []
        evaluations_per_seed = max(1, config.timesteps // config.eval_freq)
        for seed, train_config in enumerate(trial_configs(config, overrides, folder)):
            run_dir = folder / f"seed{seed}"
            run_dir.mkdir(parents=True, exist_ok=True)
            report = _pruning_callback(trial, seed * evaluations_per_seed, config.score)
            env = resolve_env(train_config.env, train_config.mask_velocity, train_config.env_module)
            model = train(train_config, env, run_dir, after_eval=report)
            if report.pruned:
                raise optuna.TrialPruned()
            if model.num_timesteps < train_config.timesteps:
                raise KeyboardInterrupt  # interrupted (train saved it): not a result, and the study stops here
            if not report.returns:
                raise ConfigError("A trial ran no evaluation. Fix: --eval-freq below --timesteps.")
            scores.append(run_score(report.returns, config.score))
        return float(np.mean(scores))

    return run_trial


def open_study(config: TuneConfig, storage: str, study_name: str):
    """The study (created, or loaded if it exists), maximising ``config.score``.

    :raises ConfigError: if the study exists and was created to maximise another score: its trials' values
        could not be compared with the new ones.
    """
    optuna = _optuna()
    sampler = optuna.samplers.TPESampler(n_startup_trials=config.n_startup_trials, seed=config.sampler_seed)
    pruner = optuna.pruners.MedianPruner(n_startup_trials=config.n_startup_trials, n_warmup_steps=1)
    study = optuna.create_study(storage=storage, study_name=study_name, direction="maximize", sampler=sampler,
                                pruner=pruner, load_if_exists=True)
    if not study.trials and "score" not in study.user_attrs:
        study.set_user_attr("score", config.score)  # a new study keeps the score it is created with
    recorded = study.user_attrs.get("score", "final")  # studies from before the choice existed scored the final
    if recorded != config.score:
        raise ConfigError(f"Study {study_name!r} maximises the {recorded!r} score, not {config.score!r}. Fix: "
                          f"--score {recorded} to add to it, or another --study-name for a new study.")
    return study


class _InterruptWithoutTraceback(logging.Filter):
    """Keeps Optuna's line about a trial failed by an interrupt and drops the traceback it adds: the interrupt is
    the user's, not an error in the trial."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and isinstance(record.exc_info[1], KeyboardInterrupt):
            record.exc_info = None
        return True


def _work(config: TuneConfig, storage: str, study_name: str, study_dir: Path, trials: int) -> None:
    """One process's share of the trials (a module-level function: worker processes import it by name)."""
    trial_log = logging.getLogger("optuna.study._optimize")  # where Optuna reports a failed trial
    if not any(isinstance(existing, _InterruptWithoutTraceback) for existing in trial_log.filters):
        trial_log.addFilter(_InterruptWithoutTraceback())
    study = open_study(config, storage, study_name)
    study.optimize(objective(config, study_dir, search_space(config.agent, config.env)), n_trials=trials,
                   catch=(CtmRlError,))


def run_study(config: TuneConfig, study_dir: Path, storage: str | None = None, study_name: str | None = None,
              n_jobs: int = 1, save_preset: Path | None = None) -> Any:
    """Add ``config.trials`` trials to the study, in ``n_jobs`` processes, and write its plots and best preset
    (also to ``save_preset``).

    :return: the study.
    """
    _optuna()
    search_space(config.agent, config.env)  # refuse a bad space before anything runs
    trial_configs(config, {}, study_dir)  # and bad settings
    study_dir.mkdir(parents=True, exist_ok=True)
    storage = storage or f"sqlite:///{(study_dir / 'study.db').resolve()}"
    study_name = study_name or safe_name(f"{config.env}-{Path(config.agent).stem}")
    open_study(config, storage, study_name)  # create it once, before the processes race to
    shares = [config.trials // n_jobs + (i < config.trials % n_jobs) for i in range(n_jobs)]
    if n_jobs == 1:
        _work(config, storage, study_name, study_dir, config.trials)
    else:
        context = multiprocessing.get_context("spawn")
        processes = [context.Process(target=_work, args=(config, storage, study_name, study_dir, share))
                     for share in shares if share]
        for process in processes:
            process.start()
        for process in processes:
            process.join()
    study = open_study(config, storage, study_name)
    write_outputs(study, config, study_dir, save_preset)
    return study


def best_preset(study: Any, config: TuneConfig) -> dict[str, Any]:
    """The best trial as a preset file's content: a ``default`` block with the agent's preset for the
    environment, the trial's values over it, and a ``tuning`` record of the study."""
    preset = apply_hyperparams(load_preset(config.agent, resolve_env(config.env).preset_blocks),
                               {**config.hyperparams, **study.best_trial.params})
    preset["tuning"] = {"env": config.env, "study": study.study_name, "trial": study.best_trial.number,
                        "value": float(study.best_value), "trials": len(study.trials),
                        "timesteps_per_trial": config.timesteps, "seeds_per_trial": config.seeds,
                        "score": config.score}
    return {"default": preset}


def write_outputs(study: Any, config: TuneConfig, study_dir: Path, save_preset: Path | None = None) -> None:
    """``best.yaml`` (and ``save_preset``), ``history.png`` and ``importance.png`` in the study folder."""
    optuna = _optuna()
    complete = [trial for trial in study.trials if trial.state == optuna.trial.TrialState.COMPLETE]
    if not complete:
        return
    preset = yaml.safe_dump(best_preset(study, config), sort_keys=False)
    (study_dir / "best.yaml").write_text(preset)
    if save_preset is not None:
        save_preset.write_text(preset)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as plots

    for name, draw in (("history.png", plots.plot_optimization_history),
                       ("importance.png", plots.plot_param_importances)):
        try:
            with warnings.catch_warnings():  # experimental plots; equal importances for few trials
                warnings.simplefilter("ignore")
                axis = draw(study)
        except (ValueError, RuntimeError, ZeroDivisionError):  # too few complete trials to rank parameters
            continue
        axis.figure.savefig(study_dir / name, dpi=100, bbox_inches="tight")
        plt.close(axis.figure)


def build_parser() -> argparse.ArgumentParser:
    defaults = TuneConfig(env="")
    parser = argparse.ArgumentParser(prog="python -m ctm_rl.tune", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--env", default="CartPole-NoVel", help="environment name (default: %(default)s)")
    parser.add_argument("--agent", default="ctm", help="agent preset name or file (default: %(default)s)")
    parser.add_argument("--trials", type=int, default=defaults.trials, help="trials to add (default: %(default)s)")
    parser.add_argument("--timesteps", type=int, default=defaults.timesteps, help="env steps per trial and seed")
    parser.add_argument("--seeds", type=int, default=defaults.seeds, help="seeds per trial (default: %(default)s)")
    parser.add_argument("--eval-freq", type=int, default=defaults.eval_freq, help="env steps between evaluations")
    parser.add_argument("--eval-episodes", type=int, default=defaults.eval_episodes, help="episodes per evaluation")
    parser.add_argument("--eval-stochastic", action="store_true",
                        help="evaluate with sampled actions, as in training (default: the most likely actions)")
    parser.add_argument("--hyperparams", nargs="+", default=[], metavar="KEY=VALUE", help="fixed overrides")
    parser.add_argument("--n-jobs", type=int, default=1, help="processes running trials (default: %(default)s)")
    parser.add_argument("--storage", help="Optuna storage URL (default: sqlite in --out)")
    parser.add_argument("--study-name", help="study name (default: <env>-<agent>)")
    parser.add_argument("--startup-trials", type=int, default=defaults.n_startup_trials,
                        help="random trials before TPE and pruning start (default: %(default)s)")
    parser.add_argument("--sampler-seed", type=int, help="seed of the TPE sampler")
    parser.add_argument("--score", choices=SCORES, default=defaults.score,
                        help="what a trial maximises: the last evaluation's mean return (final, as compare scores a "
                             "run) or the mean over all evaluations (mean: the area under the learning curve, which "
                             "also rewards learning sooner) (default: %(default)s)")
    parser.add_argument("--out", help="study folder (default: studies/<env>-<agent>)")
    parser.add_argument("--save-preset", type=Path, help="also write the best trial as a preset file here")
    return parser


def config_from_args(args: argparse.Namespace) -> TuneConfig:
    """The study's settings from the command line, checked."""
    for name in ("trials", "timesteps", "seeds", "eval_freq", "eval_episodes", "n_jobs"):
        if getattr(args, name) < 1:
            raise ConfigError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}. Fix: 1 or more.")
    if args.eval_freq > args.timesteps:
        raise ConfigError(f"--eval-freq ({args.eval_freq}) exceeds --timesteps ({args.timesteps}): trials would "
                          f"not be evaluated. Fix: lower --eval-freq.")
    return TuneConfig(env=args.env, agent=args.agent, trials=args.trials, timesteps=args.timesteps,
                      seeds=args.seeds, eval_freq=args.eval_freq, eval_episodes=args.eval_episodes,
                      eval_deterministic=not args.eval_stochastic,
                      hyperparams=parse_key_values(args.hyperparams, "--hyperparams"),
                      n_startup_trials=args.startup_trials, sampler_seed=args.sampler_seed, score=args.score)


@terminate_as_interrupt
def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    try:
        config = config_from_args(args)
        study_dir = Path(args.out or Path("studies") / safe_name(f"{args.env}-{Path(args.agent).stem}"))
        try:
            study = run_study(config, study_dir, args.storage, args.study_name, args.n_jobs, args.save_preset)
        finally:
            if study_dir.is_dir():  # the study began (bad settings are refused before its folder exists)
                with open(study_dir / "command.txt", "a") as command:
                    command.write(shlex.join([sys.executable, "-m", "ctm_rl.tune", *argv]) + "\n")
                (study_dir / "tune.yaml").write_text(yaml.safe_dump(asdict(config), sort_keys=False))
    except CtmRlError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("Interrupted: the trial under way is recorded as failed and its run folder kept; the trials before it "
              "stay in the study, and the same command adds new ones.", file=sys.stderr)
        return 130
    states = [trial.state.name for trial in study.trials]
    print(f"Study {study.study_name}: {len(states)} trials ({states.count('COMPLETE')} complete, "
          f"{states.count('PRUNED')} pruned)." + (f" Best {study.best_value:.4g}: {study.best_trial.params}."
                                                  if states.count("COMPLETE") else ""))
    print(f"Study folder: {study_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
