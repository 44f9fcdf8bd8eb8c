"""Stopping a command from outside. SIGTERM, what ``kill``, batch schedulers at their time limit and container
stops send, is handled like Ctrl-C: the running training saves what it learned and the command ends with
status 130, instead of dying with everything since the last checkpoint lost. Files a resume reads are replaced
whole (:func:`write_atomically`), so a stop never leaves one of them cut short.

An interrupt is also remembered as a stop request (:func:`stop_requested`), which training checks at every step
(:class:`ctm_rl.sb3.callbacks.StopOnRequest`): the :class:`KeyboardInterrupt` a handler raises can be lost, for
example when it lands in code that discards exceptions, and later signals are ignored so as not to break into the
save the first one started, so without the request such a run would train on to its budget."""

from __future__ import annotations

import contextlib
import functools
import signal
import threading
from pathlib import Path
from typing import Any, Callable, Iterator, TypeVar

Main = TypeVar("Main", bound=Callable[..., Any])

_stop_requested = False


def request_stop() -> bool:
    """Ask the running training, and any this process starts after it, to stop and save; returns whether this is
    the first request (a handler acts on the first interrupt only, so as not to break into the save it started)."""
    global _stop_requested
    first = not _stop_requested
    _stop_requested = True
    return first


def stop_requested() -> bool:
    """Whether an interrupt asked this process to stop."""
    return _stop_requested


def clear_stop_request() -> None:
    """Forget a stop request (a command that handled its interrupt and returns)."""
    global _stop_requested
    _stop_requested = False


def _interrupt(signum: int, frame: Any) -> None:
    if request_stop():  # a repeated signal must not break into the save the first one started
        raise KeyboardInterrupt


@contextlib.contextmanager
def signals_held() -> Iterator[None]:
    """Hold back SIGINT and SIGTERM while the block runs, and deliver them to their handlers when it ends: for the
    writing of a save. An interrupt raised inside ``torch.save``'s writer comes out of it as a ``RuntimeError`` that
    no interrupt handling catches, and one raised anywhere in a save leaves a damaged file. Signals left at their
    default action, or ignored, are not touched; outside the main thread, where Python cannot handle signals, the
    block runs unchanged."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    held: list[int] = []

    def hold(signum: int, frame: Any) -> None:
        if signum not in held:
            held.append(signum)

    previous = {}
    for signum in (signal.SIGINT, signal.SIGTERM):
        if callable(signal.getsignal(signum)):
            previous[signum] = signal.signal(signum, hold)
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        for signum in held:
            signal.raise_signal(signum)  # its handler runs now, after the save


def write_atomically(path: Path, content: str | bytes) -> None:
    """Replace the file at ``path`` by ``content`` so that a reader finds the old file or the new one, never a
    part: ``content`` goes to a temporary file beside it, which then takes its name, while interrupts wait
    (:func:`signals_held`). An error while writing removes the temporary file and leaves ``path`` as it was."""
    temporary = path.with_name(path.name + ".tmp")
    with signals_held():
        try:
            if isinstance(content, str):
                temporary.write_text(content)
            else:
                temporary.write_bytes(content)
            temporary.replace(path)
        except BaseException:
            temporary.unlink(missing_ok=True)
            raise


def terminate_as_interrupt(main: Main) -> Main:
    """Decorate a command's ``main`` so that, while it runs, SIGTERM raises :class:`KeyboardInterrupt` in it as
    Ctrl-C does and requests a stop; the previous handler is restored, and the request forgotten, when it returns.
    Outside the main thread, where Python cannot handle signals, ``main`` runs unchanged."""

    @functools.wraps(main)
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        if threading.current_thread() is not threading.main_thread():
            return main(*args, **kwargs)
        previous = signal.signal(signal.SIGTERM, _interrupt)
        try:
            return main(*args, **kwargs)
        finally:
            signal.signal(signal.SIGTERM, previous)
            clear_stop_request()

    return wrapped  # type: ignore[return-value]
