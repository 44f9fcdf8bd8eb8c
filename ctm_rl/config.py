"""Training configuration: a typed dataclass, YAML presets per agent and environment family, and overrides."""

from __future__ import annotations

import copy
import dataclasses
import difflib
import inspect
from dataclasses import dataclass, field
from typing import Any, Callable

import yaml
from sb3_contrib import RecurrentPPO
from sb3_contrib.common.recurrent.policies import RecurrentActorCriticPolicy
from torch import nn

from agents import available_agents, preset_path
from ctm_rl.errors import ConfigError
from ctm_rl.policy import CtmPolicy

TOP_LEVEL_KEYS = ("n_envs", "n_timesteps", "max_steps")
# Arguments the training command sets itself.
_MANAGED_ALGO_ARGS = {"self", "policy", "env", "policy_kwargs", "tensorboard_log", "verbose", "seed", "device", "_init_setup_model"}
_MANAGED_POLICY_ARGS = {"self", "observation_space", "action_space", "lr_schedule", "use_sde"}


def _arguments(function: Callable, managed: set[str]) -> set[str]:
    return set(inspect.signature(function).parameters) - managed


ALGO_KEYS = _arguments(RecurrentPPO.__init__, _MANAGED_ALGO_ARGS)
POLICY_KEYS = {
    "ctm": _arguments(CtmPolicy.__init__, _MANAGED_POLICY_ARGS),
    "lstm": _arguments(RecurrentActorCriticPolicy.__init__, _MANAGED_POLICY_ARGS) | {"d_input"},
}


class SavedConfig:
    """A dataclass config that is saved as a YAML mapping and read back with unknown keys refused."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Any:
        unknown = set(data) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ConfigError(f"Unknown {cls.__name__} keys: {', '.join(sorted(unknown))}. The file was written by "
                              f"another version of ctm-rl or edited by hand.")
        return cls(**data)


@dataclass
class TrainConfig(SavedConfig):
    """Everything that defines a training run; saved as ``config.yaml`` in the run folder."""

    env: str = "CartPole-NoVel"
    """Environment: a gymnasium id, an id without version (latest), ``X-NoVel``, or ``package.module:ClassName``."""
    agent: str = "ctm"
    """Agent preset: ``ctm`` or ``lstm`` (a file in ``agents/``)."""
    timesteps: int = 200_000
    """Total environment steps to train for."""
    seed: int = 0
    """Seed of the model and of the first environment."""
    n_envs: int = 16
    """Parallel training environments."""
    device: str = "auto"
    """``auto``, ``cpu`` or ``cuda``."""
    vec_env: str = "dummy"
    """``dummy`` (one process) or ``subproc`` (one process per environment)."""
    max_steps: int | None = None
    """Episode step limit; ``None`` keeps the environment's own."""
    mask_velocity: bool = False
    """Zero velocity entries of CartPole/Acrobot observations (implied by ``-NoVel`` names)."""
    env_kwargs: dict[str, Any] = field(default_factory=dict)
    """Keyword arguments of the environment's constructor."""
    env_module: str | None = None
    """Module imported before the environment is made, so that it registers its ids."""
    eval_freq: int = 10_000
    """Environment steps between evaluations (0 disables them)."""
    eval_episodes: int = 10
    """Episodes per evaluation."""
    eval_envs: int = 4
    """Parallel evaluation environments."""
    checkpoint_freq: int = 50_000
    """Environment steps between checkpoints (0 disables them)."""
    log_dir: str = "runs"
    """Parent folder of the run folders."""
    progress_bar: bool = True
    """Show a progress bar while training."""
    algo: dict[str, Any] = field(default_factory=dict)
    """``RecurrentPPO`` keyword arguments (``lin_X`` values decay linearly from X to 0)."""
    policy: dict[str, Any] = field(default_factory=dict)
    """Policy keyword arguments (``CtmPolicy``'s, or the LSTM baseline's)."""



def _merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in update.items():
        merged[key] = _merge(merged[key], value) if isinstance(value, dict) and isinstance(merged.get(key), dict) else value
    return merged


def load_preset(agent: str, env_name: str, family: str) -> dict[str, Any]:
    """An agent's preset for an environment: ``default``, then the family's block, then the exact name's.

    :param agent: agent name (``ctm``, ``lstm``).
    :param env_name: the environment name as typed.
    :param family: the environment family (``CartPole``, ``MiniGrid``, ...).
    """
    path = preset_path(agent)
    if not path.exists():
        raise ConfigError(f"Unknown agent {agent!r}. Available agents: {', '.join(available_agents())}.")
    blocks = yaml.safe_load(path.read_text()) or {}
    preset = blocks.get("default", {})
    for name in (family, env_name):
        if name in blocks and name != "default":
            preset = _merge(preset, blocks[name] or {})
    return preset


def parse_value(text: str) -> Any:
    """A command-line value, typed by YAML (``3``, ``1e-3``, ``true``, ``[64, 64]``, ``first-last``)."""
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    # YAML 1.1 reads "1e-3" as a string; numbers are what users mean.
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def parse_key_values(pairs: list[str], option: str) -> dict[str, Any]:
    """``["a=1", "b=x"]`` -> ``{"a": 1, "b": "x"}``."""
    parsed = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ConfigError(f"{option} expects key=value, got {pair!r}.")
        parsed[key] = parse_value(value)
    return parsed


def apply_hyperparams(preset: dict[str, Any], agent: str, overrides: dict[str, Any]) -> dict[str, Any]:
    """Apply ``key=value`` overrides to a preset. Keys are top-level (``n_envs``), algorithm (``n_epochs`` or
    ``algo.n_epochs``) or policy keys (``d_model`` or ``policy.d_model``).

    :raises ConfigError: for keys that are none of these, listing close matches.
    """
    preset = copy.deepcopy(preset)
    policy_keys = POLICY_KEYS.get(agent, POLICY_KEYS["ctm"])
    for key, value in overrides.items():
        section, _, name = key.rpartition(".")
        if section in ("algo", "policy"):
            known = ALGO_KEYS if section == "algo" else policy_keys
        elif section:
            known = set()
        elif name in TOP_LEVEL_KEYS:
            preset[name] = value
            continue
        elif name in ALGO_KEYS:
            section, known = "algo", ALGO_KEYS
        else:
            section, known = "policy", policy_keys
        if name not in known:
            everything = sorted(set(TOP_LEVEL_KEYS) | ALGO_KEYS | policy_keys)
            close = difflib.get_close_matches(name, everything, n=4)
            hint = f" Did you mean: {', '.join(close)}?" if close else ""
            raise ConfigError(f"Unknown hyperparameter {key!r} for the {agent} agent.{hint}")
        preset.setdefault(section, {})[name] = value
    return preset


def schedule(value: Any) -> Any:
    """``lin_X`` -> a schedule decaying linearly from X to 0 over training; other values pass unchanged."""
    if isinstance(value, str) and value.startswith("lin_"):
        start = float(value[len("lin_"):])
        return lambda progress_remaining: progress_remaining * start
    return value


def algo_arguments(algo: dict[str, Any]) -> dict[str, Any]:
    """``RecurrentPPO`` keyword arguments from the config's ``algo`` section."""
    return {key: schedule(value) for key, value in algo.items()}


def policy_arguments(policy: dict[str, Any]) -> dict[str, Any]:
    """Policy keyword arguments from the config's ``policy`` section (activation names become classes)."""
    arguments = dict(policy)
    if isinstance(arguments.get("activation_fn"), str):
        name = arguments["activation_fn"]
        if not isinstance(getattr(nn, name, None), type):
            raise ConfigError(f"activation_fn {name!r} is not a torch.nn module name (for example ReLU, Tanh).")
        arguments["activation_fn"] = getattr(nn, name)
    return arguments
