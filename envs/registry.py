"""Resolving the names users type into environments: registered ids, friendly names and entry points."""

from __future__ import annotations

import difflib
import importlib
import re
from dataclasses import dataclass

import gymnasium as gym

from ctm_rl.errors import UnknownEnvError
from ctm_rl.envs.wrappers import VELOCITY_INDICES

NO_VELOCITY_SUFFIX = "-NoVel"

# Env id prefixes whose package registers them on import, with the optional extra that installs it.
ENV_PACKAGES: dict[str, tuple[str, str]] = {"popgym-": ("popgym", "popgym")}
_VERSIONED = re.compile(r"^(?P<name>.+)-v(?P<version>\d+)$")


@dataclass(frozen=True)
class ResolvedEnv:
    """An environment name resolved to something that can be built.

    :param name: the name as the user gave it.
    :param gym_id: the registered gymnasium id, or ``None`` for an entry point.
    :param entry_point: ``package.module:ClassName`` for environments built from their class.
    :param mask_velocity: zero the velocity entries of the observation.
    """

    name: str
    gym_id: str | None = None
    entry_point: str | None = None
    mask_velocity: bool = False

    @property
    def base_name(self) -> str:
        """The id without version (``CartPole`` for ``CartPole-v1``), or the class name of an entry point."""
        if self.gym_id is None:
            return self.entry_point.rsplit(":", 1)[-1]
        match = _VERSIONED.match(self.gym_id)
        return match["name"] if match else self.gym_id

    @property
    def family(self) -> str:
        """The family presets are chosen by: ``MiniGrid``, ``CartPole``, ``Acrobot``, ..."""
        return self.base_name.split("/")[-1].split("-")[0]

    @property
    def preset_blocks(self) -> tuple[str, ...]:
        """The names of the preset (and search-space) blocks that apply, merged in this order: ``default``, the
        family, the id without version, the registered id, and the name as given. So ``MiniGrid-FourRooms``,
        ``MiniGrid-FourRooms-v0`` and an entry point's class name all find a ``MiniGrid-FourRooms`` block."""
        names = ("default", self.family, self.base_name, self.gym_id or self.entry_point, self.name)
        return tuple(dict.fromkeys(name for name in names if name))

    @property
    def is_minigrid(self) -> bool:
        if self.gym_id is not None:
            return "minigrid" in str(gym.spec(self.gym_id).entry_point).lower()
        from minigrid.minigrid_env import MiniGridEnv

        return issubclass(load_entry_point(self.entry_point), MiniGridEnv)


def import_env_module(module: str) -> None:
    """Import a module so that it registers its environments with gymnasium."""
    try:
        importlib.import_module(module)
    except ImportError as error:
        raise UnknownEnvError(
            f"Could not import env module {module!r}: {error}. Fix: install the package or add it to PYTHONPATH."
        ) from None


def import_env_package(name: str) -> None:
    """Import the package that registers ``name``'s ids (``popgym-...`` ids: POPGym), if it has one."""
    for prefix, (module, extra) in ENV_PACKAGES.items():
        if name.startswith(prefix):
            try:
                importlib.import_module(module)
            except ImportError:
                raise UnknownEnvError(
                    f"{name!r} is a {module} environment, and {module} is not installed. "
                    f"Fix: pip install 'ctm-rl[{extra}]'."
                ) from None


def load_entry_point(entry_point: str) -> type:
    """Import ``package.module:ClassName`` and return the class."""
    module_name, _, attribute = entry_point.partition(":")
    import_env_module(module_name)
    module = importlib.import_module(module_name)
    try:
        return getattr(module, attribute)
    except AttributeError:
        names = [n for n in dir(module) if not n.startswith("_")]
        close = difflib.get_close_matches(attribute, names, n=5)
        hint = f" Close matches: {', '.join(close)}." if close else ""
        raise UnknownEnvError(f"Module {module_name!r} has no attribute {attribute!r}.{hint}") from None


def _latest_version(name: str) -> str | None:
    versions = [
        (int(m["version"]), env_id)
        for env_id in gym.registry
        if (m := _VERSIONED.match(env_id)) and m["name"] == name
    ]
    return max(versions)[1] if versions else None


def _known_names() -> list[str]:
    names = set(gym.registry)
    names.update(m["name"] for env_id in gym.registry if (m := _VERSIONED.match(env_id)))
    names.update(f"{family}{NO_VELOCITY_SUFFIX}" for family in VELOCITY_INDICES)
    return sorted(names)


def resolve_env(name: str, mask_velocity: bool = False, env_module: str | None = None) -> ResolvedEnv:
    """Resolve a user-facing environment name.

    Accepts registered ids (``CartPole-v1``), ids without version, which resolve to the latest registered
    version (``MiniGrid-FourRooms``), the ``-NoVel`` suffix, which masks velocities (``CartPole-NoVel``), and
    entry points (``package.module:ClassName``), and the ids of packages in :data:`ENV_PACKAGES`
    (``popgym-RepeatPreviousEasy-v0``), whose package is imported on demand.

    :param name: the name to resolve.
    :param mask_velocity: mask velocities even without the ``-NoVel`` suffix.
    :param env_module: a module to import first, so that it registers its ids.
    :raises UnknownEnvError: for names that match nothing, listing close matches.
    """
    import minigrid  # noqa: F401  (registers the MiniGrid ids)

    if env_module:
        import_env_module(env_module)
    import_env_package(name)
    given = name
    if name.endswith(NO_VELOCITY_SUFFIX):
        name, mask_velocity = name[: -len(NO_VELOCITY_SUFFIX)], True
    if ":" in name:
        load_entry_point(name)
        resolved = ResolvedEnv(given, entry_point=name, mask_velocity=mask_velocity)
    else:
        gym_id = name if name in gym.registry else _latest_version(name)
        if gym_id is None:
            close = difflib.get_close_matches(name, _known_names(), n=6, cutoff=0.6)
            hint = f" Close matches: {', '.join(close)}." if close else ""
            raise UnknownEnvError(
                f"Unknown environment {name!r}.{hint} Fix: use a registered gymnasium id, "
                "'package.module:ClassName', or --env-module PACKAGE to import a package that registers it."
            )
        resolved = ResolvedEnv(given, gym_id=gym_id, mask_velocity=mask_velocity)
    if resolved.mask_velocity and resolved.family not in VELOCITY_INDICES:
        raise UnknownEnvError(
            f"Velocity masking is defined for {', '.join(VELOCITY_INDICES)}, not {resolved.base_name!r}. "
            "Fix: drop --mask-velocity / the -NoVel suffix, or wrap your env yourself."
        )
    return resolved
