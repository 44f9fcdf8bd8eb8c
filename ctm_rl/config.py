"""Training configuration: agent presets (YAML, rl-zoo style), ``key=value`` overrides, and the one route from
(environment, agent, overrides, run settings) to a validated :class:`TrainConfig`.

A preset file has a ``default`` block, one block per environment family (``CartPole``, ``MiniGrid``, ...) and
optional blocks per exact environment (its id without version, its registered id, or the name as typed),
merged in that order (:attr:`ctm_rl.envs.ResolvedEnv.preset_blocks`). Each block may set :data:`PRESET_KEYS`;
``policy`` names the policy kind (:data:`POLICY_KINDS`), which decides how the agent is built and which
``policy_kwargs`` it takes.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import inspect
import re
import sys
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import gymnasium as gym
import torch
import yaml
from sb3_contrib import RecurrentPPO
from sb3_contrib.common.recurrent.policies import RecurrentActorCriticPolicy
from torch import nn

from ctm_rl.envs import ResolvedEnv, make_single_env, resolve_env
from ctm_rl.errors import ConfigError
from ctm_rl.model.config import CtmConfig, is_int
from ctm_rl.sb3.adaptive_lr import DEFAULT_BOUNDS, check_adaptive_rate
from ctm_rl.sb3.lstm import LSTM_DEFAULTS, LstmPolicy, check_lstm_arguments, lstm_policy_kwargs, match_lstm_hidden_size
from ctm_rl.sb3.policy import CtmPolicy, check_policy_arguments
from ctm_rl.sb3.ppo import CtmPPO

PRESET_KEYS = ("policy", "n_envs", "n_timesteps", "max_steps", "normalize_reward", "algo", "policy_kwargs", "tuning")
"""Keys a preset block may set (``tuning``: the record of the study that chose it, written by ``tune``)."""
TOP_LEVEL_KEYS = ("n_envs", "n_timesteps", "max_steps", "normalize_reward")
"""Preset keys that ``--hyperparams`` sets directly (not inside ``algo`` or ``policy_kwargs``)."""
MATCH = "match"
"""``lstm_hidden_size: match``: size the LSTM to the parameter count of a CTM (see :func:`resolve_config`)."""

# Arguments the training command sets itself.
_MANAGED_ALGO_ARGS = {"self", "policy", "env", "policy_kwargs", "tensorboard_log", "verbose", "seed", "device",
                      "_init_setup_model"}
_MANAGED_POLICY_ARGS = {"self", "observation_space", "action_space", "lr_schedule", "use_sde"}
ALGO_DEFAULTS = {name: parameter.default for function in (RecurrentPPO.__init__, CtmPPO.__init__)
                 for name, parameter in inspect.signature(function).parameters.items()
                 if name not in _MANAGED_ALGO_ARGS and parameter.default is not inspect.Parameter.empty}
"""The training algorithm's keyword arguments and their defaults: ``RecurrentPPO``'s and ``CtmPPO``'s own."""


def _arguments(function: Callable) -> frozenset[str]:
    """The named keyword arguments of ``function`` a preset may set (``*args`` and ``**kwargs`` are not names)."""
    variadic = (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
    return frozenset(name for name, parameter in inspect.signature(function).parameters.items()
                     if parameter.kind not in variadic) - _MANAGED_POLICY_ARGS


def _policy_arguments(policy_kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """Policy keyword arguments from a config (activation names become classes)."""
    arguments = dict(policy_kwargs)
    if isinstance(arguments.get("activation_fn"), str):
        name = arguments["activation_fn"]
        if not isinstance(getattr(nn, name, None), type):
            raise ConfigError(f"activation_fn {name!r} is not a torch.nn module name. Fix: a class name of torch.nn, "
                              f"for example activation_fn=ReLU or Tanh.")
        arguments["activation_fn"] = getattr(nn, name)
    return arguments


def _ctm_policy(policy_kwargs: Mapping[str, Any]) -> tuple[type, dict[str, Any]]:
    return CtmPolicy, _policy_arguments(policy_kwargs)


def _check_ctm_policy(policy_kwargs: Mapping[str, Any]) -> None:
    arguments = _policy_arguments(policy_kwargs)
    CtmConfig.from_mapping(arguments)
    check_policy_arguments(arguments)


def _check_lstm_policy(policy_kwargs: Mapping[str, Any]) -> None:
    check_lstm_arguments({**LSTM_DEFAULTS, **_policy_arguments(policy_kwargs)})


def _lstm_policy(policy_kwargs: Mapping[str, Any]) -> tuple[type, dict[str, Any]]:
    arguments = _policy_arguments(policy_kwargs)
    if arguments.get("lstm_hidden_size") == MATCH:
        raise ConfigError("lstm_hidden_size is still 'match': build the config with resolve_config, which sizes it.")
    return LstmPolicy, lstm_policy_kwargs(**arguments)


@dataclass(frozen=True)
class PolicyKind:
    """A kind of policy a preset can name: how its ``policy_kwargs`` become an SB3 policy.

    :param name: the name presets use (``policy: ctm``).
    :param keys: the ``policy_kwargs`` keys it accepts.
    :param build: ``policy_kwargs`` -> (policy class, keyword arguments for ``CtmPPO``).
    :param check: raises :class:`ConfigError` for ``policy_kwargs`` the policy would refuse, without building it.
    """

    name: str
    keys: frozenset[str]
    build: Callable[[Mapping[str, Any]], tuple[type, dict[str, Any]]]
    check: Callable[[Mapping[str, Any]], None]


POLICY_KINDS: dict[str, PolicyKind] = {
    "ctm": PolicyKind("ctm", _arguments(CtmPolicy.__init__), _ctm_policy, _check_ctm_policy),
    # LstmPolicy passes its parent's arguments through and adds its own; d_input sizes the shared encoder.
    "lstm": PolicyKind("lstm", _arguments(RecurrentActorCriticPolicy.__init__) | _arguments(LstmPolicy.__init__)
                       | {"d_input"}, _lstm_policy, _check_lstm_policy),
}
"""The policy kinds, by the name a preset's ``policy`` key gives."""


class SavedConfig:
    """A dataclass config that is saved as a YAML mapping and read back with unknown keys refused."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Any:
        if not isinstance(data, dict):
            raise ConfigError(f"A {cls.__name__} must be a mapping, got {type(data).__name__}.")
        unknown = set(data) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ConfigError(f"Unknown {cls.__name__} keys: {', '.join(sorted(unknown))}. The file was written by "
                              f"another version of ctm-rl or edited by hand.")
        return cls(**data)


@dataclass
class TrainConfig(SavedConfig):
    """Everything that defines a training run, resolved from a preset and overrides; saved as ``config.yaml``
    in the run folder. Build one with :func:`resolve_config`."""

    env: str
    """Environment: a gymnasium id, an id without version (latest), ``X-NoVel``, or ``package.module:ClassName``."""
    agent: str
    """Agent preset: a name in ``ctm_rl/agents`` (``ctm``, ``lstm``) or the path of a preset file."""
    policy: str
    """The preset's policy kind, one of :data:`POLICY_KINDS`."""
    timesteps: int
    """Total environment steps to train for."""
    n_envs: int
    """Parallel training environments."""
    seed: int = 0
    """Seed of the model and of the first environment."""
    device: str = "auto"
    """``auto``, ``cpu`` or ``cuda``."""
    vec_env: str = "dummy"
    """``dummy`` (one process) or ``subproc`` (one process per environment)."""
    max_steps: int | None = None
    """Episode step limit; ``None`` keeps the environment's own."""
    normalize_reward: bool = False
    """Train on rewards divided by a running estimate of the discounted return's standard deviation (SB3's
    ``VecNormalize`` on rewards alone, rl-zoo's ``normalize``), so that the value loss keeps the same scale
    whatever the env's rewards. Evaluations and logged returns stay in the env's own rewards."""
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
    eval_deterministic: bool = True
    """Evaluate with the policy's most likely actions; ``False`` samples them, as training does. In a partially
    observed env a recurrent policy's most likely actions can loop (``eval/time_limit_fraction`` near 1) where
    its sampled ones finish episodes."""
    checkpoint_freq: int = 50_000
    """Environment steps between checkpoints (0 disables them)."""
    keep_checkpoints: int = 0
    """How many of the newest checkpoints to keep (0 keeps every one). An older checkpoint is deleted only once a
    newer one is written in full, so an interrupted save never leaves the run without one."""
    log_dir: str = "runs"
    """Parent folder of the run folders."""
    progress_bar: bool = True
    """Show a progress bar while training."""
    log_dynamics: bool = False
    """After each evaluation, record one deterministic episode and log its neural-dynamics figure (TensorBoard
    image ``dynamics/figure``) and dynamics measures (``dynamics/*``)."""
    algo: dict[str, Any] = field(default_factory=dict)
    """``CtmPPO`` keyword arguments, ``RecurrentPPO``'s and its own (``lin_X`` values decay linearly from X to 0)."""
    policy_kwargs: dict[str, Any] = field(default_factory=dict)
    """Keyword arguments of the policy kind's policy (``CtmPolicy``'s, or the LSTM baseline's)."""

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        if isinstance(data, dict) and isinstance(data.get("policy"), dict):
            # Written before presets named their policy kind: the agent was the kind, `policy` its arguments.
            data = {**data, "policy": data.get("agent"), "policy_kwargs": data["policy"]}
        return super().from_dict(data)

    @property
    def agent_name(self) -> str:
        """The agent's short name: the preset name, or a preset file's stem."""
        return Path(self.agent).stem if is_preset_path(self.agent) else self.agent

    def policy_and_kwargs(self) -> tuple[type, dict[str, Any]]:
        """The SB3 policy class and its keyword arguments."""
        return POLICY_KINDS[self.policy].build(self.policy_kwargs)

    def algo_arguments(self) -> dict[str, Any]:
        """``CtmPPO`` keyword arguments (``lin_X`` strings become schedules)."""
        return {key: schedule(value) for key, value in self.algo.items()}

    def algo_setting(self, name: str) -> Any:
        """An algorithm setting: the config's, else the algorithm's default (:data:`ALGO_DEFAULTS`)."""
        return self.algo.get(name, ALGO_DEFAULTS[name])

    def validate(self) -> None:
        """Raise :class:`ConfigError` naming the first inconsistent setting; nothing is built or written."""
        for name in ("timesteps", "n_envs", "eval_episodes", "eval_envs"):
            value = getattr(self, name)
            if not is_int(value) or value < 1:
                raise ConfigError(f"{name} must be an integer >= 1, got {value!r}. Fix: set {name} to 1 or more.")
        if self.policy not in POLICY_KINDS:
            raise ConfigError(f"Unknown policy kind {self.policy!r} in the {self.agent} preset. "
                              f"Fix: set `policy:` to one of {', '.join(POLICY_KINDS)}.")
        zero_means = {"eval_freq": " (0 disables it)", "checkpoint_freq": " (0 disables it)",
                      "keep_checkpoints": " (0 keeps every one)", "seed": ""}
        for name, meaning in zero_means.items():
            value = getattr(self, name)
            if not is_int(value) or value < 0:
                raise ConfigError(f"{name} must be an integer >= 0, got {value!r}. Fix: set it to 0 or more{meaning}.")
        if not isinstance(self.normalize_reward, bool):
            raise ConfigError(f"normalize_reward must be true or false, got {self.normalize_reward!r}. "
                              f"Fix: --hyperparams normalize_reward=true (or false).")
        if self.max_steps is not None and (not is_int(self.max_steps) or self.max_steps < 1):
            raise ConfigError(f"max_steps must be an integer >= 1, got {self.max_steps!r}. Fix: a positive step "
                              f"limit, or leave --max-steps out for the env's own.")
        check_algo(self.algo)
        n_steps, batch_size = self.algo_setting("n_steps"), self.algo_setting("batch_size")
        if batch_size > n_steps * self.n_envs:
            raise ConfigError(f"batch_size ({batch_size}) exceeds the rollout size n_steps * n_envs "
                              f"({n_steps} * {self.n_envs}). Fix: lower batch_size or raise n_steps or n_envs.")
        if self.device == "cuda" and not torch.cuda.is_available():
            raise ConfigError("--device cuda was asked for, but torch sees no CUDA device. Fix: use --device auto or cpu.")
        POLICY_KINDS[self.policy].check(self.policy_kwargs)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


# RecurrentPPO's numeric arguments: (integer?, lowest, highest, lowest allowed itself?); schedules allowed where
# RecurrentPPO takes them.
_ALGO_RANGES: dict[str, tuple[bool, float, float, bool]] = {
    "n_steps": (True, 1, float("inf"), True), "batch_size": (True, 1, float("inf"), True),
    "n_epochs": (True, 1, float("inf"), True), "gamma": (False, 0, 1, False), "gae_lambda": (False, 0, 1, True),
    "ent_coef": (False, 0, float("inf"), True), "vf_coef": (False, 0, float("inf"), True),
    "max_grad_norm": (False, 0, float("inf"), False), "learning_rate": (False, 0, float("inf"), False),
    "clip_range": (False, 0, float("inf"), False), "update_probe_envs": (True, 0, float("inf"), True),
}
_SCHEDULED = {"learning_rate", "clip_range"}


def check_algo(algo: Mapping[str, Any]) -> None:
    """Raise :class:`ConfigError` for an algorithm setting of the wrong type or out of range."""
    check_adaptive_rate(algo.get("lr_kl_target"), algo.get("lr_kl_bounds", DEFAULT_BOUNDS))
    for name, value in algo.items():
        if name not in _ALGO_RANGES:
            continue
        integer, low, high, low_allowed = _ALGO_RANGES[name]
        if name in _SCHEDULED and isinstance(value, str):
            if not _LINEAR.match(value):
                raise ConfigError(f"{name}={value!r} is neither a number nor a schedule. Fix: a number, or "
                                  f"lin_<number> for a linear decay (for example {name}=lin_3e-4).")
            value = schedule(value)(1.0)  # the schedule's start must be in range
        kind = "an integer" if integer else "a number"
        bounds = f"{'>=' if low_allowed else '>'} {low:g}" + ("" if high == float("inf") else f" and <= {high:g}")
        valid = (is_int(value) if integer else _is_number(value)) and (value >= low if low_allowed else value > low) \
            and value <= high
        if not valid:
            raise ConfigError(f"{name} must be {kind} {bounds}, got {value!r}. Fix: --hyperparams {name}=<{kind.split()[-1]}>.")


# --- Presets ----------------------------------------------------------------------------------------------


def preset_dir() -> Path:
    """The folder of the bundled agent presets (``ctm_rl.agents``)."""
    return Path(str(resources.files("ctm_rl.agents")))


def available_agents() -> list[str]:
    """Names of the bundled agent presets."""
    return sorted(path.stem for path in preset_dir().glob("*.yml"))


def is_preset_path(agent: str) -> bool:
    """Whether ``agent`` names a preset file rather than a bundled preset."""
    return agent.endswith((".yml", ".yaml")) or "/" in agent or "\\" in agent


def preset_file(agent: str) -> Path:
    """The preset file of an agent: a bundled name or a path.

    :raises ConfigError: for an agent that is neither.
    """
    path = Path(agent) if is_preset_path(agent) else preset_dir() / f"{agent}.yml"
    if not path.is_file():
        if is_preset_path(agent):
            raise ConfigError(f"Preset file {agent!r} does not exist. Fix: pass the path of a preset .yml, or one "
                              f"of the bundled agents: {', '.join(available_agents())}.")
        raise ConfigError(f"Unknown agent {agent!r}. Fix: use one of {', '.join(available_agents())}, or the path "
                          f"of a preset file (--agent path/to/preset.yml).")
    return path


def merge_blocks(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """``base`` with ``update`` over it, nested mappings merged key by key."""
    merged = dict(base)
    for key, value in update.items():
        merged[key] = merge_blocks(merged[key], value) if isinstance(value, dict) and isinstance(merged.get(key), dict) else value
    return merged


def load_preset(agent: str, block_names: Sequence[str]) -> dict[str, Any]:
    """An agent's preset for an environment: the named blocks of its file merged in order (an environment's
    :attr:`~ctm_rl.envs.ResolvedEnv.preset_blocks`: ``default``, the family, then the exact names).

    :param agent: a bundled preset name (``ctm``, ``lstm``) or the path of a preset file.
    :param block_names: block names, most general first; names the file does not have are skipped.
    :raises ConfigError: for a missing file, a YAML error (with its line), or a block with unknown keys.
    """
    path = preset_file(agent)
    try:
        blocks = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        problem = getattr(error, "problem", None) or str(error).splitlines()[0]
        raise ConfigError(f"Preset {path}{where}: {problem}. Fix: correct the YAML there.") from None
    if not isinstance(blocks, dict):
        raise ConfigError(f"Preset {path} must map block names (default, families, env names) to settings.")
    for name, block in blocks.items():
        if not isinstance(block, dict):
            raise ConfigError(f"Preset {path}: block {name!r} must be a mapping of {', '.join(PRESET_KEYS)}.")
        unknown = sorted(set(block) - set(PRESET_KEYS))
        if unknown:
            raise ConfigError(f"Preset {path}: block {name!r} has unknown keys {', '.join(unknown)}. "
                              f"Fix: use {', '.join(PRESET_KEYS)}.")
    preset: dict[str, Any] = {}
    for name in block_names:
        preset = merge_blocks(preset, blocks.get(name) or {})
    if "policy" not in preset:
        raise ConfigError(f"Preset {path} names no policy kind. Fix: add `policy: ctm` (or lstm) to its default "
                          f"block.")
    kind = POLICY_KINDS.get(preset["policy"])
    for section, known in (("algo", frozenset(ALGO_DEFAULTS)), ("policy_kwargs", kind.keys if kind else None)):
        values = preset.get(section) or {}
        if not isinstance(values, dict):
            raise ConfigError(f"Preset {path}: `{section}` must be a mapping of keys to values.")
        unknown = sorted(set(values) - known) if known is not None else []
        if unknown:
            close = [m for key in unknown for m in difflib.get_close_matches(key, sorted(known), n=1)]
            hint = f" Did you mean: {', '.join(close)}?" if close else ""
            raise ConfigError(f"Preset {path}: unknown {section} keys {', '.join(unknown)} for a {preset['policy']} "
                              f"agent.{hint} Fix: correct them in the file.")
    return preset


def preset_policy(agent: str, env: str, env_module: str | None = None) -> str:
    """The policy kind an agent's preset names for an environment."""
    resolved = resolve_env(env, env_module=env_module)
    return load_preset(agent, resolved.preset_blocks)["policy"]


# --- Overrides --------------------------------------------------------------------------------------------


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


def apply_hyperparams(preset: dict[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """Apply ``key=value`` overrides to a preset. Keys are top-level (``n_envs``), algorithm (``n_epochs`` or
    ``algo.n_epochs``) or policy keys (``d_model`` or ``policy_kwargs.d_model``) of the preset's policy kind.

    :raises ConfigError: for keys that are none of these, listing close matches.
    """
    preset = copy.deepcopy(preset)
    kind = POLICY_KINDS.get(preset.get("policy"))
    policy_keys = kind.keys if kind is not None else frozenset()
    algo_keys = frozenset(ALGO_DEFAULTS)
    for key, value in overrides.items():
        section, _, name = key.rpartition(".")
        if section in ("algo", "policy_kwargs"):
            known = algo_keys if section == "algo" else policy_keys
        elif section:
            known = frozenset()
        elif name in TOP_LEVEL_KEYS:
            preset[name] = value
            continue
        elif name in algo_keys:
            section, known = "algo", algo_keys
        else:
            section, known = "policy_kwargs", policy_keys
        if name not in known:
            everything = sorted(set(TOP_LEVEL_KEYS) | algo_keys | policy_keys)
            close = difflib.get_close_matches(name, everything, n=4)
            hint = f" Did you mean: {', '.join(close)}?" if close else ""
            raise ConfigError(f"Unknown hyperparameter {key!r} for a {preset.get('policy')} agent.{hint}")
        preset.setdefault(section, {})[name] = value
    return preset


_LINEAR = re.compile(r"^lin_(.+)$")


def schedule(value: Any) -> Any:
    """``lin_X`` -> a schedule decaying linearly from X to 0 over training; other values pass unchanged."""
    match = _LINEAR.match(value) if isinstance(value, str) else None
    if match is None:
        return value
    try:
        start = float(match[1])
    except ValueError:
        raise ConfigError(f"{value!r} is not a linear schedule. Fix: lin_<number>, for example lin_3e-4.") from None
    return lambda progress_remaining: progress_remaining * start


# --- Resolution -------------------------------------------------------------------------------------------


def env_spaces(env: ResolvedEnv, max_steps: int | None, env_kwargs: Mapping[str, Any]) -> tuple[gym.Space, gym.Space]:
    """Observation and action space of an environment, from one instance built and closed."""
    try:
        made = make_single_env(env, max_steps=max_steps, env_kwargs=dict(env_kwargs))
    except TypeError as error:
        given = ", ".join(f"{key}={value!r}" for key, value in env_kwargs.items()) or "none"
        raise ConfigError(f"{env.name} could not be built with the environment arguments given ({given}): {error}. "
                          f"Fix: pass only keywords its constructor takes with --env-kwargs.") from None
    try:
        return made.observation_space, made.action_space
    finally:
        made.close()


def _keep_minibatches(config: TrainConfig, base: Mapping[str, Any]) -> None:
    """When ``n_envs`` or ``n_steps`` differ from the preset's and ``batch_size`` was not given, scale the
    preset's ``batch_size`` so that an epoch keeps its number of minibatches, and say so in one line."""
    algo = base.get("algo") or {}
    base_rollout = base.get("n_envs", config.n_envs) * algo.get("n_steps", ALGO_DEFAULTS["n_steps"])
    base_batch = algo.get("batch_size", ALGO_DEFAULTS["batch_size"])
    rollout = config.n_envs * config.algo_setting("n_steps")
    if not (is_int(rollout) and is_int(base_rollout) and is_int(base_batch)) or rollout == base_rollout \
            or rollout < 1 or base_batch < 1:
        return
    minibatches = max(1, base_rollout // base_batch)
    batch = max(1, rollout // minibatches)
    if batch != base_batch:
        config.algo["batch_size"] = batch
        print(f"note: batch_size {base_batch} -> {batch}, keeping the preset's {minibatches} minibatch{'es' if minibatches != 1 else ''} per epoch "
              f"for a rollout of {config.n_envs} envs x {config.algo_setting('n_steps')} steps "
              f"(--hyperparams batch_size=N sets it).", file=sys.stderr)


def resolve_config(
    env: str,
    agent: str = "ctm",
    hyperparams: Mapping[str, Any] | None = None,
    *,
    timesteps: int | None = None,
    n_envs: int | None = None,
    max_steps: int | None = None,
    ticks: int | None = None,
    match_to: Mapping[str, Any] | None = None,
    mask_velocity: bool = False,
    env_module: str | None = None,
    env_kwargs: Mapping[str, Any] | None = None,
    **run: Any,
) -> tuple[TrainConfig, ResolvedEnv]:
    """The one route to a validated :class:`TrainConfig`: the agent's preset for the environment, the
    overrides, then the run settings. Nothing is written; the environment is built once, only to size a
    matched LSTM.

    :param env: environment name.
    :param agent: a bundled preset name or the path of a preset file.
    :param hyperparams: ``key=value`` overrides of the preset (see :func:`apply_hyperparams`).
    :param timesteps: training budget; ``None`` takes the preset's ``n_timesteps``.
    :param n_envs: training environments; ``None`` takes the preset's. Giving it and a different
        ``hyperparams["n_envs"]`` is an error.
    :param max_steps: episode step limit; ``None`` takes the preset's.
    :param ticks: the CTM's internal ticks (CTM agents only).
    :param match_to: ``CtmPolicy`` keyword arguments of the CTM an LSTM with ``lstm_hidden_size: match`` is
        sized to; ``None`` takes the ``ctm`` preset's for this environment.
    :param mask_velocity: zero velocities (CartPole, Acrobot).
    :param env_module: module imported first, so that it registers its env ids.
    :param env_kwargs: the environment's constructor arguments.
    :param run: any other :class:`TrainConfig` field (``seed``, ``device``, ``eval_freq``, ...).
    :raises ConfigError: for anything inconsistent, naming the fix.
    """
    unknown = sorted(set(run) - {f.name for f in dataclasses.fields(TrainConfig)})
    if unknown:
        raise ConfigError(f"Unknown training settings: {', '.join(unknown)}.")
    resolved = resolve_env(env, mask_velocity, env_module)
    overrides = dict(hyperparams or {})
    if n_envs is not None and overrides.get("n_envs", n_envs) != n_envs:
        raise ConfigError(f"--n-envs {n_envs} and --hyperparams n_envs={overrides['n_envs']} disagree. "
                          f"Fix: give the number of environments once.")
    base = load_preset(agent, resolved.preset_blocks)
    preset = apply_hyperparams(base, overrides)
    policy_kwargs = dict(preset.get("policy_kwargs") or {})
    if ticks is not None:
        if preset["policy"] != "ctm":
            raise ConfigError(f"--ticks sets the CTM's internal ticks; the {agent} agent's policy is "
                              f"{preset['policy']}. Fix: drop --ticks, or use a CTM agent.")
        policy_kwargs["ticks"] = ticks
    config = TrainConfig(
        env=env, agent=agent, policy=preset["policy"],
        timesteps=timesteps if timesteps is not None else preset.get("n_timesteps", 0),
        n_envs=n_envs if n_envs is not None else preset.get("n_envs", 0),
        max_steps=max_steps if max_steps is not None else preset.get("max_steps"),
        normalize_reward=preset.get("normalize_reward", False),
        mask_velocity=resolved.mask_velocity, env_module=env_module, env_kwargs=dict(env_kwargs or {}),
        algo=dict(preset.get("algo") or {}), policy_kwargs=policy_kwargs, **run,
    )
    if not {"batch_size", "algo.batch_size"} & set(overrides):
        _keep_minibatches(config, base)
    config.validate()
    spaces = env_spaces(resolved, config.max_steps, config.env_kwargs)  # the env builds with these settings
    if config.policy == "lstm" and policy_kwargs.get("lstm_hidden_size", MATCH) == MATCH:
        if match_to is None:
            match_to = resolve_config(env, "ctm", env_module=env_module, mask_velocity=mask_velocity)[0].policy_kwargs
        config.policy_kwargs["lstm_hidden_size"] = match_lstm_hidden_size(*spaces, _policy_arguments(match_to))
    return config, resolved
