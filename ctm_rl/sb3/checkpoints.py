"""Loading saved agents with errors that say what is wrong and how to fix it."""

from __future__ import annotations

import json
import re
import zipfile
from pathlib import Path
from typing import Any

from sb3_contrib import RecurrentPPO
from stable_baselines3.common.vec_env import VecEnv

from ctm_rl.errors import CheckpointError
from ctm_rl.sb3.ppo import CtmPPO

_STEPS = re.compile(r"_(\d+)_steps\.zip$")


def saved_steps(path: Path) -> int:
    """The environment steps a model ``.zip`` was saved at, read from its JSON ``data`` member (nothing is
    unpickled).

    :raises CheckpointError: if the file is not a readable model archive.
    """
    try:
        with zipfile.ZipFile(path) as archive:
            return int(json.loads(archive.read("data"))["num_timesteps"])
    except (zipfile.BadZipFile, OSError, KeyError, ValueError, TypeError) as error:
        raise CheckpointError(f"{path.name} is not a readable model archive ({type(error).__name__}: {error}).") from None


def saves_newest_first(run_dir: Path) -> list[Path]:
    """A run folder's saves, ``model.zip`` and ``checkpoints/*_steps.zip``, the most steps first. A damaged save
    is placed by the steps in its name, and a damaged ``model.zip`` first, so that resuming reports it."""
    saves = [path for path in (run_dir / "checkpoints").glob("*.zip") if _STEPS.search(path.name)]
    if (run_dir / "model.zip").exists():
        saves.append(run_dir / "model.zip")

    def steps(path: Path) -> float:
        try:
            return saved_steps(path)
        except CheckpointError:
            named = _STEPS.search(path.name)
            return int(named.group(1)) if named else float("inf")

    return sorted(saves, key=steps, reverse=True)


def load_newest(run_dir: Path, env: VecEnv | None = None, device: str = "auto",
                warn=lambda line: None) -> tuple[RecurrentPPO, Path]:
    """The run's newest readable save, loaded: a damaged one is skipped (``warn`` says which and why) in favour of
    the next newest.

    :raises CheckpointError: if the folder holds no readable save.
    """
    saves = saves_newest_first(run_dir)
    if not saves:
        raise CheckpointError(f"{run_dir} holds no checkpoint or model.zip to resume from.")
    for path in saves:
        try:
            return load_agent(path, env=env, device=device), path
        except CheckpointError as error:
            if "does not match the environment" in str(error):
                raise
            warn(f"Skipping {path.relative_to(run_dir)}: {error}")
    raise CheckpointError(f"No save in {run_dir} could be read ({len(saves)} tried). Fix: start a new run.")


def load_agent(path: str | Path, env: VecEnv | None = None, device: str = "auto",
               expected_policy_kwargs: dict[str, Any] | None = None) -> RecurrentPPO:
    """Load a ``RecurrentPPO`` (or ``CtmPPO``) agent saved by ``model.save``, as a ``CtmPPO``.

    :param path: the ``.zip`` file.
    :param env: environment to attach; its spaces must match the saved ones.
    :param device: torch device.
    :param expected_policy_kwargs: policy keyword arguments the checkpoint must have been saved with.
    :raises CheckpointError: if the file is missing, corrupt, or does not match ``env`` or the expected kwargs.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"Checkpoint {str(path)!r} does not exist. Fix: pass the path of a saved model .zip.")
    try:
        with zipfile.ZipFile(path) as archive:
            names = set(archive.namelist())
            damaged = archive.testzip()
    except (zipfile.BadZipFile, OSError) as error:
        raise CheckpointError(f"Checkpoint {str(path)!r} is not a readable model archive ({error}). "
                              "Fix: point to a .zip written by model.save or the training command.") from None
    if damaged is not None or not {"data", "policy.pth"} <= names:
        what = f"member {damaged!r} is damaged" if damaged else "it lacks 'data' or 'policy.pth'"
        raise CheckpointError(f"Checkpoint {str(path)!r} is corrupt: {what}. Fix: use another checkpoint of the run.")
    try:
        model = CtmPPO.load(path, env=env, device=device)
    except ValueError as error:  # SB3 reports space mismatches as ValueError
        raise CheckpointError(f"Checkpoint {str(path)!r} does not match the environment: {error}") from None
    except (RuntimeError, KeyError, EOFError) as error:
        raise CheckpointError(f"Checkpoint {str(path)!r} could not be restored: {error}") from None
    saved = model.policy_kwargs
    differing = {
        key: (saved.get(key), value)
        for key, value in (expected_policy_kwargs or {}).items()
        if key in saved and saved[key] != value
    }
    if differing:
        details = ", ".join(f"{key}: saved {old!r}, requested {new!r}" for key, (old, new) in differing.items())
        raise CheckpointError(f"Checkpoint {str(path)!r} does not match the requested model ({details}). "
                              "Fix: resume with the run's own config, or start a new run.")
    return model
