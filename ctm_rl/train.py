"""Train a CTM or LSTM agent with RecurrentPPO.

    python -m ctm_rl.train --env MiniGrid-FourRooms
    python -m ctm_rl.train --env CartPole-NoVel --agent lstm --seed 3 --hyperparams n_epochs=4 d_input=32

Each run writes a folder holding ``config.yaml``, ``command.txt``, ``model.zip``, ``checkpoints/``,
``monitor/`` (training episodes), ``eval/evaluations.npz`` and TensorBoard events under ``tb/``.
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import sys
import zipfile
from pathlib import Path

import numpy as np
import yaml
from sb3_contrib import RecurrentPPO
from stable_baselines3.common.callbacks import BaseCallback, CallbackList
from stable_baselines3.common.vec_env import VecEnv

from ctm_rl.allocator import keep_freed_memory
from ctm_rl.config import TrainConfig, parse_key_values, resolve_config
from ctm_rl.envs import ResolvedEnv, make_env, resolve_env
from ctm_rl.envs.normalization import normalize_rewards, unnormalized_twin
from ctm_rl.errors import ConfigError, CtmRlError
from ctm_rl.interrupts import stop_requested, terminate_as_interrupt, write_atomically
from ctm_rl.locks import hold_run
from ctm_rl.sb3.callbacks import RollingCheckpointCallback, StopOnRequest, TimedEvalCallback, episode_step_limit
from ctm_rl.sb3.checkpoints import load_newest
from ctm_rl.sb3.ppo import CtmPPO

CONFIG_FILE, COMMAND_FILE, MODEL_FILE = "config.yaml", "command.txt", "model.zip"
RESUMES_FILE = "resumed_at.json"
"""A run folder's record of the steps each resume continued from, the save actually loaded (a JSON list)."""


DAMAGED_NPZ = (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile)
"""What reading a truncated, corrupt or foreign ``evaluations.npz`` raises."""

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m ctm_rl.train", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--env", default="CartPole-NoVel", help="environment name (default: %(default)s)")
    parser.add_argument("--agent", default="ctm",
                        help="agent preset: a bundled name (ctm, lstm) or a preset file path (default: %(default)s)")
    parser.add_argument("--timesteps", type=int, help="total env steps (default: the preset's n_timesteps)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    parser.add_argument("--n-envs", type=int, help="parallel environments (default: the preset's)")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="torch device")
    parser.add_argument("--ticks", type=int, help="CTM internal ticks per env step (CTM agents only)")
    parser.add_argument("--hyperparams", nargs="+", default=[], metavar="KEY=VALUE",
                        help="override preset keys: n_envs, algo keys (n_epochs=4) or policy keys (d_model=64)")
    parser.add_argument("--max-steps", type=int, help="episode step limit")
    parser.add_argument("--mask-velocity", action="store_true", help="zero velocities (CartPole, Acrobot)")
    parser.add_argument("--env-kwargs", nargs="+", default=[], metavar="KEY=VALUE", help="env constructor arguments")
    parser.add_argument("--env-module", help="module to import first, so that it registers its env ids")
    parser.add_argument("--vec-env", default="dummy", choices=["dummy", "subproc"], help="vectorisation")
    parser.add_argument("--eval-freq", type=int, default=TrainConfig.eval_freq, help="env steps between evaluations")
    parser.add_argument("--eval-episodes", type=int, default=TrainConfig.eval_episodes, help="episodes per evaluation")
    parser.add_argument("--eval-stochastic", action="store_true",
                        help="evaluate with sampled actions, as in training (default: the most likely actions)")
    parser.add_argument("--checkpoint-freq", type=int, default=TrainConfig.checkpoint_freq,
                        help="env steps between checkpoints")
    parser.add_argument("--keep-checkpoints", type=int, default=TrainConfig.keep_checkpoints, metavar="N",
                        help="keep only the newest N checkpoints (default: every one)")
    parser.add_argument("--log-dir", default=TrainConfig.log_dir, help="parent folder of run folders")
    parser.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR from its newest save (model.zip or a checkpoint)")
    parser.add_argument("--no-progress-bar", action="store_true", help="hide the progress bar")
    parser.add_argument("--log-dynamics", action="store_true",
                        help="after each evaluation, log a neural-dynamics figure and measures to TensorBoard")
    parser.add_argument("--debug", action="store_true",
                        help="on an error, show the full traceback (an environment's own included), not one line")
    return parser


def config_from_args(args: argparse.Namespace) -> tuple[TrainConfig, ResolvedEnv]:
    """The run's configuration: the agent's preset for the env, with the command-line flags over it."""
    return resolve_config(
        args.env, args.agent, parse_key_values(args.hyperparams, "--hyperparams"), timesteps=args.timesteps,
        n_envs=args.n_envs, max_steps=args.max_steps, ticks=args.ticks, mask_velocity=args.mask_velocity,
        env_module=args.env_module, env_kwargs=parse_key_values(args.env_kwargs, "--env-kwargs"), seed=args.seed,
        device=args.device, vec_env=args.vec_env, eval_freq=args.eval_freq, eval_episodes=args.eval_episodes,
        eval_deterministic=not args.eval_stochastic,
        checkpoint_freq=args.checkpoint_freq, keep_checkpoints=args.keep_checkpoints, log_dir=args.log_dir,
        progress_bar=not args.no_progress_bar,
        log_dynamics=args.log_dynamics,
    )


def run_dir_for(log_dir: str, env: str, agent: str, seed: int) -> Path:
    """The first run folder of an (env, agent, seed): ``<log_dir>/<env>/<agent>-seed<seed>``, with the env
    name made safe for paths."""
    return Path(log_dir) / env.replace(":", "_").replace("/", "_") / f"{agent}-seed{seed}"


def first_missing_folder(path: Path) -> Path | None:
    """The outermost folder on the way to ``path`` that does not exist yet (``path`` itself included), the one
    to remove again to leave the file system as it was; ``None`` if ``path`` exists."""
    missing = None
    for folder in (path, *path.parents):
        if folder.exists():
            break
        missing = folder
    return missing


def discard_unsaved_run(run_dir: Path, created: Path) -> None:
    """Remove a fresh run's folders (``created``, the outermost one this run made) if the run saved nothing a
    later command could use (no model, checkpoint or evaluation): a command that failed leaves no empty
    folders behind to shift the ``-N`` suffix of later runs."""
    saved = [run_dir / MODEL_FILE, run_dir / "eval" / "evaluations.npz", *run_dir.glob("checkpoints/*.zip")]
    if not any(path.exists() for path in saved):
        shutil.rmtree(created, ignore_errors=True)


def new_run_dir(config: TrainConfig) -> tuple[Path, Path]:
    """A fresh folder ``<log_dir>/<env>/<agent>-seed<seed>[-N]``, and the outermost folder made for it (the
    run folder itself, or a parent that did not exist either)."""
    run_dir = run_dir_for(config.log_dir, config.env, config.agent_name, config.seed)
    parent = run_dir.parent
    suffix = 2
    while run_dir.exists():
        run_dir, suffix = parent / f"{config.agent_name}-seed{config.seed}-{suffix}", suffix + 1
    created = first_missing_folder(run_dir)
    try:
        run_dir.mkdir(parents=True)
    except OSError as error:
        raise ConfigError(f"Cannot create the run folder {run_dir} ({error.strerror or error}). Fix: give --log-dir "
                          f"a folder you can write to.") from None
    return run_dir, created


def make_callbacks(config: TrainConfig, env: ResolvedEnv, run_dir: Path, resumed_at: int | None = None,
                   after_eval: BaseCallback | None = None) -> list[BaseCallback]:
    """A stop on interrupt, checkpoints and evaluations; ``resumed_at`` (the resumed model's steps) continues earlier
    evaluations, and ``after_eval`` runs after each evaluation (SB3's ``callback_after_eval``; returning False stops
    training)."""
    callbacks: list[BaseCallback] = [StopOnRequest()]
    if config.checkpoint_freq > 0:
        callbacks.append(RollingCheckpointCallback(max(config.checkpoint_freq // config.n_envs, 1),
                                                   str(run_dir / "checkpoints"), name_prefix=config.agent_name,
                                                   keep=config.keep_checkpoints))
    if config.eval_freq > 0:
        eval_env = make_env(env, n_envs=config.eval_envs, seed=config.seed + 10_000, max_steps=config.max_steps,
                            env_kwargs=config.env_kwargs, monitor_dir=str(run_dir / "eval" / "monitor"))
        if config.normalize_reward:
            eval_env = unnormalized_twin(eval_env)
        if config.log_dynamics:
            from ctm_rl.figures import DynamicsLogger

            dynamics = DynamicsLogger(lambda: run_env(config, n_envs=1, seed=config.seed + 20_000))
            after_eval = dynamics if after_eval is None else CallbackList([dynamics, after_eval])
        evaluation = TimedEvalCallback(eval_env, n_eval_episodes=config.eval_episodes,
                                       deterministic=config.eval_deterministic,
                                       eval_freq=max(config.eval_freq // config.n_envs, 1),
                                       log_path=str(run_dir / "eval"), best_model_save_path=str(run_dir / "eval"),
                                       callback_after_eval=after_eval, verbose=0)
        previous = run_dir / "eval" / "evaluations.npz"
        if resumed_at is not None and previous.exists():
            try:
                evaluation.load_previous(previous, up_to=resumed_at)
            except DAMAGED_NPZ as error:
                eval_env.close()
                raise ConfigError(f"{previous} is damaged ({type(error).__name__}: {error}). Fix: move it aside to "
                                  f"resume without the earlier evaluations.") from None
        callbacks.append(evaluation)
    return callbacks


def build_model(config: TrainConfig, venv: VecEnv, run_dir: Path) -> RecurrentPPO:
    """A new agent as the configuration describes it, logging to the run folder's ``tb/``."""
    policy_class, policy_kwargs = config.policy_and_kwargs()
    return CtmPPO(policy_class, venv, policy_kwargs=policy_kwargs, seed=config.seed, device=config.device,
                  tensorboard_log=str(run_dir / "tb"), verbose=0, **config.algo_arguments())


def record_resume(run_dir: Path, steps: int) -> None:
    """Add ``steps``, the step count of the save a resume loaded, to the run folder's :data:`RESUMES_FILE`."""
    write_atomically(run_dir / RESUMES_FILE, json.dumps(resumed_steps(run_dir) + [steps]))


def resumed_steps(run_dir: Path) -> list[int]:
    """The steps each resume of the run in ``run_dir`` continued from, oldest first (empty if it never resumed)."""
    path = run_dir / RESUMES_FILE
    return json.loads(path.read_text()) if path.exists() else []


def train(config: TrainConfig, env: ResolvedEnv, run_dir: Path, resume: bool = False,
          after_eval: BaseCallback | None = None) -> RecurrentPPO:
    """Train (or continue training) and save ``model.zip``; Ctrl-C saves what was learned so far, and the
    returned model then has fewer steps than ``config.timesteps``.

    :param config: the run's configuration.
    :param env: the resolved environment.
    :param run_dir: the run folder.
    :param resume: continue from the run's newest readable save (``model.zip`` or a checkpoint, whichever holds
        the most steps), appending to its monitor files and evaluations.
    :param after_eval: called after each evaluation; returning False stops training early (a pruned trial).
    """
    venv = make_env(env, n_envs=config.n_envs, seed=config.seed, vec_env=config.vec_env,
                    monitor_dir=str(run_dir / "monitor"), max_steps=config.max_steps, env_kwargs=config.env_kwargs,
                    append_monitor=resume)
    if config.normalize_reward:
        venv = normalize_rewards(venv, config.algo_setting("gamma"))
    if env.entry_point is not None and episode_step_limit(venv) is None:
        print(f"warning: {env.name} has no episode step limit, so a policy that never ends an episode (one that "
              f"stands still, say) makes an evaluation run forever. Fix: pass --max-steps N.", file=sys.stderr)
    try:
        if not resume:
            model = build_model(config, venv, run_dir)
        else:
            model, source = load_newest(run_dir, lambda: build_model(config, venv, run_dir), config.device,
                                        warn=lambda line: print(line, file=sys.stderr))
            print(f"Resuming from {source.relative_to(run_dir)} ({model.num_timesteps} steps).")
        # Rewritten on every resume, and read by the next one: a file cut short would lose the run's saves.
        write_atomically(run_dir / CONFIG_FILE, yaml.safe_dump(config.to_dict(), sort_keys=False))
        remaining = config.timesteps - model.num_timesteps
        if remaining <= 0:
            print(f"Run already has {model.num_timesteps} of {config.timesteps} steps; nothing to do.")
            return model
        if resume:
            record_resume(run_dir, model.num_timesteps)
        interrupted = False
        try:
            callbacks = make_callbacks(config, env, run_dir, model.num_timesteps if resume else None, after_eval)
            model.learn(remaining, callback=callbacks,
                        tb_log_name="ppo", reset_num_timesteps=not resume, progress_bar=config.progress_bar)
        except KeyboardInterrupt:
            interrupted = True
        if interrupted or stop_requested():
            print(f"\nInterrupted at {model.num_timesteps} steps; saving the model.", file=sys.stderr)
        model.save(run_dir / MODEL_FILE)
        print(f"Saved {run_dir / MODEL_FILE} ({model.num_timesteps} steps).")
        return model
    finally:
        venv.close()


def run_summary(run_dir: Path) -> str:
    """One line on a finished run: its last and best evaluation and its folder."""
    path = run_dir / "eval" / "evaluations.npz"
    if not path.exists():
        return f"No evaluation (--eval-freq 0). Run folder: {run_dir}"
    try:
        with np.load(path) as data:
            steps, results = data["timesteps"], data["results"]
    except DAMAGED_NPZ as error:
        return f"No evaluation to show: {path} is damaged ({type(error).__name__}). Run folder: {run_dir}"
    if not len(steps):
        return f"No evaluation yet. Run folder: {run_dir}"
    means = results.mean(axis=1)
    best = int(np.argmax(means))
    return (f"Final evaluation: {means[-1]:.4g} ± {results[-1].std():.3g} over {results.shape[1]} episodes at "
            f"{int(steps[-1]):,} steps; best {means[best]:.4g} at {int(steps[best]):,}. Run folder: {run_dir}")


def read_run_config(run_dir: Path) -> TrainConfig:
    """The configuration a run folder was trained with (its ``config.yaml``).

    :raises ConfigError: if the folder has none, or it is damaged.
    """
    if not (run_dir / CONFIG_FILE).exists():
        raise ConfigError(f"{run_dir} has no {CONFIG_FILE}. Fix: pass a run folder made by python -m ctm_rl.train "
                          f"(<log-dir>/<env>/<agent>-seed<N>) or by python -m ctm_rl.compare.")
    try:
        return TrainConfig.from_dict(yaml.safe_load((run_dir / CONFIG_FILE).read_text()))
    except (yaml.YAMLError, TypeError) as error:
        raise ConfigError(f"{run_dir / CONFIG_FILE} is damaged ({error}). Fix: restore it, or start a new run.") from None


def load_run_model(run_dir: Path, venv: VecEnv, config: TrainConfig | None = None) -> RecurrentPPO:
    """A run folder's newest readable save, rebuilt from its ``config.yaml`` with ``venv`` attached; nothing in
    the folder is unpickled.

    :param venv: environments with the run's spaces (see :func:`run_env`).
    :param config: the run's configuration, if already read.
    """
    config = config or read_run_config(run_dir)
    model, _ = load_newest(run_dir, lambda: build_model(config, venv, run_dir), config.device)
    return model


def run_env(config: TrainConfig, n_envs: int = 1, seed: int = 12_345, render_mode: str | None = None) -> VecEnv:
    """Fresh environments as a run trained on (same env, step limit and env arguments), without monitor files."""
    env = resolve_env(config.env, config.mask_velocity, config.env_module)
    return make_env(env, n_envs=n_envs, seed=seed, max_steps=config.max_steps, env_kwargs=config.env_kwargs,
                    render_mode=render_mode)


# What --resume may change; every other flag is the run's own, recorded in its config.yaml.
_RESUMABLE = {"resume", "timesteps", "device", "no_progress_bar"}


def resumed_config(run_dir: Path, args: argparse.Namespace) -> tuple[TrainConfig, ResolvedEnv]:
    """The configuration of a run folder, with what ``--resume`` may change (``--timesteps``, ``--device``,
    ``--no-progress-bar``) applied.

    :raises ConfigError: if the folder is not a run folder, or other flags were given.
    """
    config = read_run_config(run_dir)
    defaults = vars(build_parser().parse_args([]))
    changed = sorted(name for name, value in vars(args).items() if name not in _RESUMABLE and value != defaults[name])
    if changed:
        flags = ", ".join("--" + name.replace("_", "-") for name in changed)
        raise ConfigError(f"--resume continues a run with its own settings; {flags} cannot change. Fix: drop "
                          f"{flags}, or start a new run.")
    if args.timesteps is not None:
        config.timesteps = args.timesteps
    config.device, config.progress_bar = args.device, not args.no_progress_bar
    config.validate()
    return config, resolve_env(config.env, config.mask_velocity, config.env_module)


@terminate_as_interrupt
def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    keep_freed_memory()
    run_dir = created = None
    try:
        if args.resume:
            run_dir = Path(args.resume)
            config, env = resumed_config(run_dir, args)
        else:
            config, env = config_from_args(args)
            run_dir, created = new_run_dir(config)
        with hold_run(run_dir):
            with open(run_dir / COMMAND_FILE, "a") as command:
                command.write(shlex.join([sys.executable, "-m", "ctm_rl.train", *argv]) + "\n")
            if config.eval_freq >= config.timesteps:
                print(f"note: --eval-freq {config.eval_freq} is not below --timesteps {config.timesteps}: the run "
                      f"is evaluated once, at the end.", file=sys.stderr)
            print(f"Run folder: {run_dir}")
            model = train(config, env, run_dir, resume=bool(args.resume))
    except CtmRlError as error:
        if created is not None:
            discard_unsaved_run(run_dir, created)
        if args.debug:
            raise
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(run_summary(run_dir))
    return 130 if model.num_timesteps < config.timesteps else 0


if __name__ == "__main__":
    sys.exit(main())
