"""Loading saved agents, safely by default, with errors that say what is wrong and how to fix it.

An SB3 model ``.zip`` holds the tensors (``policy.pth``, ``policy.optimizer.pth``, read with
``torch.load(weights_only=True)``) and a JSON ``data`` member whose Python objects (spaces, schedules, policy
arguments) are cloudpickled: unpickling them runs whatever code the file carries. :func:`load_weights` never
does: it puts a save's tensors and step count into a model built from the run's own configuration.
:func:`load_agent` is SB3's full load, for a ``.zip`` without its run folder; it unpickles, and so runs only
when the caller says the file is trusted.
"""

from __future__ import annotations

import json
import pickle
import re
import zipfile
from pathlib import Path
from typing import Any, Callable

from sb3_contrib import RecurrentPPO
from stable_baselines3.common.vec_env import VecEnv

from ctm_rl.envs.normalization import restore_reward_statistics
from ctm_rl.errors import CheckpointError
from ctm_rl.sb3.ppo import CtmPPO

_STEPS = re.compile(r"_(\d+)_steps\.zip$")


def _check_archive(path: Path, verify: bool = True) -> dict[str, Any]:
    """The archive's JSON ``data`` as plain JSON (serialized objects stay strings), after checking that it is a
    complete model archive (``verify``: every member's checksum too, which reads the whole file).

    :raises CheckpointError: for a missing, unreadable or incomplete file.
    """
    if not path.is_file():
        raise CheckpointError(f"Checkpoint {str(path)!r} does not exist. Fix: pass the path of a saved model .zip.")
    try:
        with zipfile.ZipFile(path) as archive:
            names = set(archive.namelist())
            damaged = archive.testzip() if verify else None
            data = json.loads(archive.read("data")) if "data" in names else None
    except (zipfile.BadZipFile, OSError, ValueError) as error:
        raise CheckpointError(f"Checkpoint {str(path)!r} is not a readable model archive ({error}). "
                              "Fix: point to a .zip written by model.save or the training command.") from None
    if damaged is not None or data is None or "policy.pth" not in names or not isinstance(data, dict):
        what = f"member {damaged!r} is damaged" if damaged else "it lacks 'data' or 'policy.pth'"
        raise CheckpointError(f"Checkpoint {str(path)!r} is corrupt: {what}. Fix: use another checkpoint of the run.")
    return data


def saved_steps(path: Path) -> int:
    """The environment steps a model ``.zip`` was saved at, read from its JSON ``data`` (nothing is unpickled).

    :raises CheckpointError: if the file is not a readable model archive.
    """
    data = _check_archive(path, verify=False)  # a damaged member is found when the save is loaded
    if not isinstance(data.get("num_timesteps"), int):
        raise CheckpointError(f"Checkpoint {str(path)!r} records no step count. Fix: use another checkpoint.")
    return data["num_timesteps"]


def load_weights(model: RecurrentPPO, path: Path, device: str = "auto") -> RecurrentPPO:
    """Put a save's parameters, optimizer state and step count into ``model``, a model built from the run's
    configuration, and, where ``model`` trains on normalised rewards, the save's running reward statistics.
    Nothing in the file is unpickled.

    :raises CheckpointError: if the file is damaged or was saved from another model.
    """
    data = _check_archive(path)
    try:
        model.set_parameters(str(path), exact_match=True, device=device)
    except (RuntimeError, ValueError, KeyError, zipfile.BadZipFile, EOFError, pickle.UnpicklingError) as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise CheckpointError(f"Checkpoint {str(path)!r} does not fit the run's model ({first}). Fix: resume with "
                              "the run folder that saved it, or use another checkpoint.") from None
    model.num_timesteps = int(data.get("num_timesteps", 0))
    model._n_updates = int(data.get("_n_updates", 0))
    if hasattr(model, "lr_kl_scale") and isinstance(data.get("lr_kl_scale"), (int, float)):
        model.lr_kl_scale = float(data["lr_kl_scale"])  # a KL-adapted learning rate continues where it was
    restore_reward_statistics(model.get_vec_normalize_env(), data.get("reward_statistics"))
    return model


def named_steps(path: Path) -> int | None:
    """The steps in a checkpoint's file name (``<prefix>_<steps>_steps.zip``, as SB3's ``CheckpointCallback``
    names it); ``None`` for another name."""
    named = _STEPS.search(path.name)
    return int(named.group(1)) if named else None


def saves_newest_first(run_dir: Path) -> list[Path]:
    """A run folder's saves, ``model.zip`` and ``checkpoints/*_steps.zip``, the most steps first. A damaged save
    is placed by the steps in its name, and a damaged ``model.zip`` first, so that resuming reports it."""
    saves = [path for path in (run_dir / "checkpoints").glob("*.zip") if named_steps(path) is not None]
    if (run_dir / "model.zip").exists():
        saves.append(run_dir / "model.zip")

    def steps(path: Path) -> float:
        try:
            return saved_steps(path)
        except CheckpointError:
            named = named_steps(path)
            return float("inf") if named is None else named

    return sorted(saves, key=steps, reverse=True)


def load_newest(run_dir: Path, build: Callable[[], RecurrentPPO], device: str = "auto",
                warn: Callable[[str], Any] = lambda line: None) -> tuple[RecurrentPPO, Path]:
    """The run's newest readable save, loaded with :func:`load_weights` into a model from ``build``; a damaged
    save is skipped (``warn`` says which and why) in favour of the next newest.

    :param build: makes a fresh model from the run's configuration.
    :raises CheckpointError: if the folder holds no readable save.
    """
    saves = saves_newest_first(run_dir)
    if not saves:
        raise CheckpointError(f"{run_dir} holds no checkpoint or model.zip to resume from.")
    for path in saves:
        try:
            return load_weights(build(), path, device), path
        except CheckpointError as error:
            warn(f"Skipping {path.relative_to(run_dir)}: {error}")
    raise CheckpointError(f"No save in {run_dir} could be read ({len(saves)} tried). Fix: start a new run.")


def load_agent(path: str | Path, env: VecEnv | None = None, device: str = "auto",
               expected_policy_kwargs: dict[str, Any] | None = None, trust_pickle: bool = False) -> RecurrentPPO:
    """SB3's full load of a ``.zip`` written by ``model.save``, as a ``CtmPPO``. It unpickles the file's
    Python objects, which runs any code they carry: the caller must say the file is trusted.

    :param path: the ``.zip`` file.
    :param env: environment to attach; its spaces must match the saved ones.
    :param device: torch device.
    :param expected_policy_kwargs: policy keyword arguments the checkpoint must have been saved with.
    :param trust_pickle: the file comes from a trusted source; without it nothing is unpickled and
        :class:`CheckpointError` says how to load safely.
    :raises CheckpointError: if the file is missing, corrupt, untrusted, or does not match ``env`` or the
        expected kwargs.
    """
    path = Path(path)
    _check_archive(path)
    if not trust_pickle:
        raise CheckpointError(f"Loading {str(path)!r} on its own unpickles it, which runs any code it carries. Fix: "
                              "load it through its run folder (which rebuilds the model from config.yaml and reads "
                              "only tensors), or pass trust_pickle=True (--trust-pickle) for a file you trust.")
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
