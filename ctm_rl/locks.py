"""One training process per run folder at a time.

Two commands that train the same run folder at once damage it: a comparison started again while another still
trains one of its runs would continue that run from its last checkpoint beside it, rewriting its monitor files and
its record, or delete the folder outright when the run has no checkpoint yet. :func:`hold_run` takes an exclusive
lock on the folder for as long as a process trains it, and :func:`run_holder` tells a command which runs to leave
alone. The lock is the operating system's (``flock``): it goes with the process that holds it, however that
process ends, so a killed run never leaves a folder locked. The lock file sits beside the folder (the folder
itself may be replaced while the lock is held) and is removed when the lock is released. Where ``fcntl`` does not
exist (Windows) folders are not locked.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Iterator

from ctm_rl.errors import RunBusyError

try:
    import fcntl
except ImportError:  # Windows: no advisory locks of this kind
    fcntl = None


def lock_path(run_dir: Path) -> Path:
    """The lock file of a run folder: a hidden file beside it (``.seed0.lock`` for ``seed0``)."""
    return run_dir.parent / f".{run_dir.name}.lock"


def _try_lock(path: Path) -> int | None:
    """An open descriptor of ``path`` holding its exclusive lock, or ``None`` if another process holds it."""
    while True:
        descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(descriptor)
            return None
        try:
            if os.stat(path).st_ino == os.fstat(descriptor).st_ino:
                return descriptor
        except FileNotFoundError:
            pass
        os.close(descriptor)  # the holder removed this file as we opened it: lock the one now at the path


def _holder_pid(path: Path) -> str:
    try:
        return path.read_text().strip() or "unknown"
    except OSError:
        return "unknown"


def run_holder(run_dir: Path) -> str | None:
    """The process id (as written in the lock file) of another process training ``run_dir`` now, else ``None``."""
    path = lock_path(Path(run_dir))
    if fcntl is None or not path.exists():
        return None
    descriptor = _try_lock(path)
    if descriptor is None:
        return _holder_pid(path)
    _release(path, descriptor)
    return None


def _release(path: Path, descriptor: int) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()  # before unlocking: a process that opened the file meanwhile finds it gone and retries
    os.close(descriptor)


@contextlib.contextmanager
def hold_run(run_dir: Path) -> Iterator[None]:
    """Hold ``run_dir``'s lock while the block trains it.

    :raises RunBusyError: if another process holds it, naming that process and what to do.
    """
    run_dir = Path(run_dir)
    if fcntl is None:
        yield
        return
    path = lock_path(run_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor = _try_lock(path)
    if descriptor is None:
        pid = _holder_pid(path)
        raise RunBusyError(f"{run_dir} is being trained by another process (pid {pid}). Fix: wait for that "
                           f"process to finish, or stop it (kill {pid}: it saves what it learned), then run the "
                           f"command again.")
    try:
        os.ftruncate(descriptor, 0)
        os.write(descriptor, f"{os.getpid()}\n".encode())
        yield
    finally:
        _release(path, descriptor)
