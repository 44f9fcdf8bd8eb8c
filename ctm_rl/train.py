"""Train a CTM or LSTM agent with RecurrentPPO.

    python -m ctm_rl.train --env MiniGrid-FourRooms
    python -m ctm_rl.train --env CartPole-NoVel --agent lstm --seed 3 --hyperparams n_epochs=4 d_input=32

Each run writes a folder holding ``config.yaml``, ``command.txt``, ``model.zip``, ``checkpoints/``,
``monitor/`` (training episodes), ``eval/evaluations.npz`` and TensorBoard events under ``tb/``.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path
from typing import Any

import torch
import yaml
from sb3_contrib import RecurrentPPO
from sb3_contrib.common.recurrent.policies import RecurrentActorCriticPolicy
from stable_baselines3.common.callbacks import BaseCallback, CheckpointCallback
from stable_baselines3.common.vec_env import VecEnv

from ctm_rl.allocator import keep_freed_memory
from ctm_rl.baselines import lstm_policy_kwargs, match_lstm_hidden_size
from ctm_rl.callbacks import TimedEvalCallback
from ctm_rl.checkpoints import latest_checkpoint, load_agent
from ctm_rl.config import (TrainConfig, algo_arguments, apply_hyperparams, load_preset, parse_key_values,
                           policy_arguments)
from ctm_rl.errors import ConfigError, CtmRlError
from ctm_rl.policy import CtmPolicy
from ctm_rl.ppo import CtmPPO
from envs import make_env, resolve_env
from envs.registry import ResolvedEnv

CONFIG_FILE, COMMAND_FILE, MODEL_FILE = "config.yaml", "command.txt", "model.zip"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m ctm_rl.train", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--env", default="CartPole-NoVel", help="environment name (default: %(default)s)")
    parser.add_argument("--agent", default="ctm", help="agent preset: ctm or lstm (default: %(default)s)")
    parser.add_argument("--timesteps", type=int, help="total env steps (default: the preset's n_timesteps)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    parser.add_argument("--n-envs", type=int, help="parallel environments (default: the preset's)")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="torch device")
    parser.add_argument("--ticks", type=int, help="CTM internal ticks per env step (ctm agent only)")
    parser.add_argument("--hyperparams", nargs="+", default=[], metavar="KEY=VALUE",
                        help="override preset keys: n_envs, algo keys (n_epochs=4) or policy keys (d_model=64)")
    parser.add_argument("--max-steps", type=int, help="episode step limit")
    parser.add_argument("--mask-velocity", action="store_true", help="zero velocities (CartPole, Acrobot)")
    parser.add_argument("--env-kwargs", nargs="+", default=[], metavar="KEY=VALUE", help="env constructor arguments")
    parser.add_argument("--env-module", help="module to import first, so that it registers its env ids")
    parser.add_argument("--vec-env", default="dummy", choices=["dummy", "subproc"], help="vectorisation")
    parser.add_argument("--eval-freq", type=int, default=TrainConfig.eval_freq, help="env steps between evaluations")
    parser.add_argument("--eval-episodes", type=int, default=TrainConfig.eval_episodes, help="episodes per evaluation")
    parser.add_argument("--checkpoint-freq", type=int, default=TrainConfig.checkpoint_freq,
                        help="env steps between checkpoints")
    parser.add_argument("--log-dir", default=TrainConfig.log_dir, help="parent folder of run folders")
    parser.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR from its latest checkpoint")
    parser.add_argument("--no-progress-bar", action="store_true", help="hide the progress bar")
    return parser


def config_from_args(args: argparse.Namespace) -> tuple[TrainConfig, ResolvedEnv]:
    """Merge the agent's preset for the env with the command-line flags."""
    env = resolve_env(args.env, args.mask_velocity, args.env_module)
    preset = apply_hyperparams(load_preset(args.agent, args.env, env.family), args.agent,
                               parse_key_values(args.hyperparams, "--hyperparams"))
    if args.ticks is not None:
        if args.agent != "ctm":
            raise ConfigError("--ticks sets the CTM's internal ticks; it does not apply to the lstm agent.")
        preset["policy"]["ticks"] = args.ticks
    config = TrainConfig(
        env=args.env, agent=args.agent, seed=args.seed, device=args.device, vec_env=args.vec_env,
        timesteps=args.timesteps if args.timesteps is not None else int(preset.get("n_timesteps", TrainConfig.timesteps)),
        n_envs=args.n_envs if args.n_envs is not None else int(preset.get("n_envs", TrainConfig.n_envs)),
        max_steps=args.max_steps if args.max_steps is not None else preset.get("max_steps"),
        mask_velocity=env.mask_velocity, env_kwargs=parse_key_values(args.env_kwargs, "--env-kwargs"),
        env_module=args.env_module, eval_freq=args.eval_freq, eval_episodes=args.eval_episodes,
        checkpoint_freq=args.checkpoint_freq, log_dir=args.log_dir, progress_bar=not args.no_progress_bar,
        algo=preset.get("algo", {}), policy=preset.get("policy", {}),
    )
    check_config(config)
    return config, env


def check_config(config: TrainConfig) -> None:
    """Reject inconsistent settings before any environment or model is built."""
    for name in ("timesteps", "n_envs", "eval_episodes"):
        if getattr(config, name) < 1:
            raise ConfigError(f"{name} must be >= 1, got {getattr(config, name)}.")
    n_steps, batch_size = config.algo.get("n_steps", 128), config.algo.get("batch_size", 128)
    if batch_size > n_steps * config.n_envs:
        raise ConfigError(f"batch_size ({batch_size}) exceeds the rollout size n_steps * n_envs "
                          f"({n_steps} * {config.n_envs}). Fix: lower batch_size or raise n_steps or n_envs.")
    if config.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda was asked for, but torch sees no CUDA device. Fix: use --device auto or cpu.")


def run_dir_for(log_dir: str, env: str, agent: str, seed: int) -> Path:
    """The first run folder of an (env, agent, seed): ``<log_dir>/<env>/<agent>-seed<seed>``, with the env
    name made safe for paths."""
    return Path(log_dir) / env.replace(":", "_").replace("/", "_") / f"{agent}-seed{seed}"


def new_run_dir(config: TrainConfig) -> Path:
    """A fresh folder ``<log_dir>/<env>/<agent>-seed<seed>[-N]``."""
    run_dir = run_dir_for(config.log_dir, config.env, config.agent, config.seed)
    parent = run_dir.parent
    suffix = 2
    while run_dir.exists():
        run_dir, suffix = parent / f"{config.agent}-seed{config.seed}-{suffix}", suffix + 1
    run_dir.mkdir(parents=True)
    return run_dir


def resolve_policy(config: TrainConfig, env: ResolvedEnv, venv: VecEnv) -> tuple[type, dict[str, Any]]:
    """The policy class and keyword arguments; an LSTM with ``lstm_hidden_size: match`` is sized here and the
    size written back into the config."""
    if config.agent == "ctm":
        return CtmPolicy, policy_arguments(config.policy)
    policy = dict(config.policy)
    d_input = policy.pop("d_input", 64)
    if policy.get("lstm_hidden_size", "match") == "match":
        ctm_policy = load_preset("ctm", config.env, env.family).get("policy", {})
        policy["lstm_hidden_size"] = match_lstm_hidden_size(
            venv.observation_space, venv.action_space, policy_arguments(ctm_policy))
        config.policy["lstm_hidden_size"] = policy["lstm_hidden_size"]
    return RecurrentActorCriticPolicy, lstm_policy_kwargs(d_input=d_input, **policy_arguments(policy))


def make_callbacks(config: TrainConfig, env: ResolvedEnv, run_dir: Path) -> list[BaseCallback]:
    callbacks: list[BaseCallback] = []
    if config.checkpoint_freq > 0:
        callbacks.append(CheckpointCallback(max(config.checkpoint_freq // config.n_envs, 1),
                                            str(run_dir / "checkpoints"), name_prefix=config.agent))
    if config.eval_freq > 0:
        eval_env = make_env(env, n_envs=config.eval_envs, seed=config.seed + 10_000, max_steps=config.max_steps,
                            env_kwargs=config.env_kwargs, monitor_dir=str(run_dir / "eval" / "monitor"))
        evaluation = TimedEvalCallback(eval_env, n_eval_episodes=config.eval_episodes,
                                       eval_freq=max(config.eval_freq // config.n_envs, 1),
                                       log_path=str(run_dir / "eval"), best_model_save_path=str(run_dir / "eval"),
                                       verbose=0)
        previous = run_dir / "eval" / "evaluations.npz"
        if previous.exists():  # a resumed run appends to its earlier evaluations
            evaluation.load_previous(previous)
        callbacks.append(evaluation)
    return callbacks


def train(config: TrainConfig, env: ResolvedEnv, run_dir: Path, resume_from: Path | None = None) -> RecurrentPPO:
    """Train (or continue training) and save ``model.zip``; Ctrl-C saves what was learned so far.

    :param config: the run's configuration.
    :param env: the resolved environment.
    :param run_dir: the run folder.
    :param resume_from: checkpoint to continue from, or ``None`` for a new model.
    """
    venv = make_env(env, n_envs=config.n_envs, seed=config.seed, vec_env=config.vec_env,
                    monitor_dir=str(run_dir / "monitor"), max_steps=config.max_steps, env_kwargs=config.env_kwargs)
    try:
        if resume_from is None:
            policy_class, policy_kwargs = resolve_policy(config, env, venv)
            model = CtmPPO(policy_class, venv, policy_kwargs=policy_kwargs, seed=config.seed,
                                 device=config.device, tensorboard_log=str(run_dir / "tb"), verbose=0,
                                 **algo_arguments(config.algo))
        else:
            model = load_agent(resume_from, env=venv, device=config.device)
            model.tensorboard_log = str(run_dir / "tb")
        (run_dir / CONFIG_FILE).write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))
        remaining = config.timesteps - model.num_timesteps
        if remaining <= 0:
            print(f"Run already has {model.num_timesteps} of {config.timesteps} steps; nothing to do.")
            return model
        try:
            model.learn(remaining, callback=make_callbacks(config, env, run_dir), tb_log_name="ppo",
                        reset_num_timesteps=resume_from is None, progress_bar=config.progress_bar)
        except KeyboardInterrupt:
            print(f"\nInterrupted at {model.num_timesteps} steps; saving the model.", file=sys.stderr)
        model.save(run_dir / MODEL_FILE)
        print(f"Saved {run_dir / MODEL_FILE} ({model.num_timesteps} steps).")
        return model
    finally:
        venv.close()


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    keep_freed_memory()
    try:
        if args.resume:
            run_dir = Path(args.resume)
            if not (run_dir / CONFIG_FILE).exists():
                raise ConfigError(f"{run_dir} has no {CONFIG_FILE}; --resume takes a run folder made by this command.")
            config = TrainConfig.from_dict(yaml.safe_load((run_dir / CONFIG_FILE).read_text()))
            if args.timesteps is not None:
                config.timesteps = args.timesteps
            config.device, config.progress_bar = args.device, not args.no_progress_bar
            env = resolve_env(config.env, config.mask_velocity, config.env_module)
            checkpoint = latest_checkpoint(run_dir)
            if checkpoint is None:
                raise ConfigError(f"{run_dir} holds no checkpoint or {MODEL_FILE} to resume from.")
            print(f"Resuming {run_dir} from {checkpoint.name}.")
        else:
            config, env = config_from_args(args)
            run_dir, checkpoint = new_run_dir(config), None
        with open(run_dir / COMMAND_FILE, "a") as command:
            command.write(shlex.join([sys.executable, "-m", "ctm_rl.train", *argv]) + "\n")
        print(f"Run folder: {run_dir}")
        train(config, env, run_dir, checkpoint)
    except CtmRlError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
