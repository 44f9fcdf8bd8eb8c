"""Building single and vectorised environments from a resolved name."""

from __future__ import annotations

from typing import Any

import gymnasium as gym
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.vec_env import DummyVecEnv, SubprocVecEnv, VecEnv

from ctm_rl.errors import ConfigError
from ctm_rl.envs.registry import ResolvedEnv, load_entry_point, resolve_env
from ctm_rl.envs.wrappers import VELOCITY_INDICES, GuardEnv, MaskVelocity, SymbolicGridBounds, TupleToDict

VEC_ENV_CLASSES = {"dummy": DummyVecEnv, "subproc": SubprocVecEnv}


def make_single_env(
    env: ResolvedEnv, max_steps: int | None = None, env_kwargs: dict[str, Any] | None = None, render_mode: str | None = None
) -> gym.Env:
    """Build one environment with the project's observation conventions.

    MiniGrid environments observe their symbolic image (``ImgObsWrapper``), truncated at ``max_steps``; other
    environments get a ``TimeLimit`` of ``max_steps`` when it is given; ``mask_velocity`` zeroes velocities;
    a ``Tuple`` observation becomes a ``Dict`` (:class:`~ctm_rl.envs.wrappers.TupleToDict`).

    :param env: the resolved environment.
    :param max_steps: episode step limit, or ``None`` for the environment's own.
    :param env_kwargs: keyword arguments for the environment's constructor.
    :param render_mode: gymnasium render mode.
    """
    kwargs = dict(env_kwargs or {})
    if render_mode is not None:
        kwargs["render_mode"] = render_mode
    if env.is_minigrid:
        from minigrid.wrappers import ImgObsWrapper

        if max_steps is not None:
            kwargs["max_steps"] = max_steps
        made = gym.make(env.gym_id, **kwargs) if env.gym_id else load_entry_point(env.entry_point)(**kwargs)
        made = SymbolicGridBounds(ImgObsWrapper(made))
    elif env.gym_id is not None:
        made = gym.make(env.gym_id, max_episode_steps=max_steps, **kwargs)
    else:
        made = load_entry_point(env.entry_point)(**kwargs)
        if max_steps is not None:
            made = gym.wrappers.TimeLimit(made, max_episode_steps=max_steps)
    if env.mask_velocity:
        made = MaskVelocity(made, VELOCITY_INDICES[env.family])
    if isinstance(made.observation_space, gym.spaces.Tuple):
        made = TupleToDict(made)
    return made


def make_env(
    name: str | ResolvedEnv,
    n_envs: int = 1,
    seed: int | None = None,
    vec_env: str = "dummy",
    monitor_dir: str | None = None,
    max_steps: int | None = None,
    env_kwargs: dict[str, Any] | None = None,
    mask_velocity: bool = False,
    env_module: str | None = None,
    append_monitor: bool = False,
    render_mode: str | None = None,
) -> VecEnv:
    """A vectorised, Monitor-wrapped environment by name, whose faults (exceptions, misfit or non-finite
    observations) stop with a clear error (:class:`~ctm_rl.envs.wrappers.GuardEnv`).

    :param name: environment name (see :func:`envs.registry.resolve_env`) or an already resolved one.
    :param n_envs: number of parallel environments.
    :param seed: seed of the first environment; the others get ``seed + i``.
    :param vec_env: ``dummy`` (one process) or ``subproc`` (one process per environment).
    :param monitor_dir: folder for the Monitor CSVs, or ``None`` to keep them in memory only.
    :param max_steps: episode step limit.
    :param env_kwargs: keyword arguments for the environment's constructor.
    :param mask_velocity: zero velocity entries (CartPole, Acrobot).
    :param env_module: module imported first so that it registers its ids.
    :param append_monitor: append to the Monitor CSVs already in ``monitor_dir`` (a resumed run) instead of
        replacing them.
    :param render_mode: gymnasium render mode of every env (``rgb_array`` for frames).
    """
    if vec_env not in VEC_ENV_CLASSES:
        raise ConfigError(f"vec_env must be one of {', '.join(VEC_ENV_CLASSES)}, got {vec_env!r}.")
    if n_envs < 1:
        raise ConfigError(f"n_envs must be >= 1, got {n_envs}.")
    resolved = name if isinstance(name, ResolvedEnv) else resolve_env(name, mask_velocity, env_module)
    venv = make_vec_env(
        make_single_env,
        n_envs=n_envs,
        seed=seed,
        monitor_dir=monitor_dir,
        vec_env_cls=VEC_ENV_CLASSES[vec_env],
        env_kwargs=dict(env=resolved, max_steps=max_steps, env_kwargs=env_kwargs, render_mode=render_mode),
        monitor_kwargs={"override_existing": not append_monitor},
    )
    return GuardEnv(venv, resolved.name)
