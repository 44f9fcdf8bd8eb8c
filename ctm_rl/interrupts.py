"""Stopping a command from outside. SIGTERM, what ``kill``, batch schedulers at their time limit and container
stops send, is handled like Ctrl-C: the running training saves what it learned and the command ends with
status 130, instead of dying with everything since the last checkpoint lost."""

from __future__ import annotations

import functools
import signal
import threading
from typing import Any, Callable, TypeVar

Main = TypeVar("Main", bound=Callable[..., Any])

_stopping = False


def _interrupt(signum: int, frame: Any) -> None:
    global _stopping
    if _stopping:
        return  # a repeated signal must not break into the save the first one started
    _stopping = True
    raise KeyboardInterrupt


def terminate_as_interrupt(main: Main) -> Main:
    """Decorate a command's ``main`` so that, while it runs, SIGTERM raises :class:`KeyboardInterrupt` in it as
    Ctrl-C does; the previous handler is restored when it returns. Outside the main thread, where Python
    cannot handle signals, ``main`` runs unchanged."""

    @functools.wraps(main)
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        global _stopping
        if threading.current_thread() is not threading.main_thread():
            return main(*args, **kwargs)
        previous = signal.signal(signal.SIGTERM, _interrupt)
        try:
            return main(*args, **kwargs)
        finally:
            signal.signal(signal.SIGTERM, previous)
            _stopping = False

    return wrapped  # type: ignore[return-value]
