"""Where a comparison's runs execute: a local process pool, or Ray tasks on a local instance or a cluster.

Both take the same work function and jobs and report each run as it ends, so finished runs are saved even if
the comparison is interrupted later.
"""

from __future__ import annotations

import faulthandler
import multiprocessing
import os
import signal
import sys
import threading
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from typing import Any, Callable, Sequence, TypeVar

from ctm_rl.errors import ConfigError
from ctm_rl.interrupts import request_stop, stop_requested

Job = TypeVar("Job")
Work = Callable[[Job], Any]
OnResult = Callable[[Job, Any], None]
OnError = Callable[[Job, BaseException], None]


# Whether a pool worker is running a job that an interrupt should stop (the interrupt itself is a stop request
# of ctm_rl.interrupts, which the job's training also checks at every step).
_running = False


def _start_worker() -> None:
    # Each run sets its torch threads; this also keeps OpenMP users other than torch from oversubscribing.
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    signal.signal(signal.SIGINT, _on_interrupt)
    signal.signal(signal.SIGTERM, _on_interrupt)  # a scheduler or kill stops a worker as Ctrl-C does
    threading.Thread(target=_stop_when_orphaned, args=(os.getppid(),), daemon=True).start()


def _stop_when_orphaned(parent: int, every: float = 1.0, limit: float = 120.0) -> None:
    """A worker whose comparison process died (killed, not interrupted) would train on for nobody: interrupt its
    run, which then saves what it learned, and leave as soon as the run has ended.

    The worker waits for its run however long the save takes, up to ``limit`` seconds; a run still going then is
    stuck, and the worker says where before it leaves."""
    while os.getppid() == parent:
        time.sleep(every)
    os.kill(os.getpid(), signal.SIGINT)
    deadline = time.monotonic() + limit
    while _running and time.monotonic() < deadline:
        time.sleep(0.1)
    if _running:
        print(f"Worker {os.getpid()}: its comparison is gone and its run did not stop within {limit:.0f} s of the "
              f"interrupt; leaving without waiting for the run's save. The worker's threads:", file=sys.stderr)
        faulthandler.dump_traceback(all_threads=True)
    # The worker's main thread waits for jobs from the dead comparison for ever: leave without it, after writing
    # out what the run printed.
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # closed, or its file is gone
            pass
    os._exit(1)


def _on_interrupt(signum, frame) -> None:
    """The first interrupt stops the running job (which saves what it learned); a second one, as when Ctrl-C
    reaches the worker both from the terminal and from the comparison, must not break into that save."""
    if request_stop() and _running:
        raise KeyboardInterrupt


def _call(work: Work, job: Job) -> Any:
    """``work(job)`` in a pool worker; once the worker was interrupted, queued jobs end at once, unstarted."""
    global _running
    if stop_requested():
        raise KeyboardInterrupt("interrupted before it started")
    _running = True
    try:
        return work(job)
    finally:
        _running = False


def run_local(work: Work, jobs: Sequence[Job], on_result: OnResult, on_error: OnError, workers: int) -> None:
    """Run ``work(job)`` for every job in a pool of ``workers`` fresh processes (in this process if 1).

    :param work: a module-level function (it is sent to the workers by name).
    :param jobs: picklable jobs.
    :param on_result: called in this process with each job and its result, as runs end.
    :param on_error: called with each job whose work raised, and the exception.
    :param workers: processes at a time.
    """
    if workers == 1 or len(jobs) <= 1:
        for job in jobs:
            try:
                result = work(job)
            except Exception as error:  # one failed run must not lose the others
                on_error(job, error)
            else:
                on_result(job, result)
        return
    # Fresh interpreters: forking a process that already runs torch threads can deadlock.
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(min(workers, len(jobs)), mp_context=context, initializer=_start_worker) as pool:
        futures = {pool.submit(_call, work, job): job for job in jobs}
        reported = set()
        try:
            for future in as_completed(futures):
                reported.add(future)
                error = future.exception()
                if error is None:
                    on_result(futures[future], future.result())
                else:
                    on_error(futures[future], error)
        except KeyboardInterrupt:
            _interrupt_workers(pool)
            pool.shutdown(wait=True, cancel_futures=True)
            # A job that completed anyway (a run in its last steps when the interrupt came) is a result like any
            # other: report it before stopping.
            for future, job in futures.items():
                if future not in reported and not future.cancelled() and future.exception() is None:
                    on_result(job, future.result())
            raise


def _interrupt_workers(pool: ProcessPoolExecutor) -> None:
    """Pass an interrupt on to the pool's workers, so that their runs stop (and save) now rather than at their
    end. A Ctrl-C in a terminal reaches them already; a SIGINT sent to this process alone does not."""
    for process in list((getattr(pool, "_processes", None) or {}).values()):  # the executor keeps no public list
        if process.is_alive():
            try:
                os.kill(process.pid, signal.SIGINT)
            except ProcessLookupError:
                pass


def run_ray(work: Work, jobs: Sequence[Job], on_result: OnResult, on_error: OnError, address: str | None = None,
            cpus_per_run: float = 1.0, gpus_per_run: float = 0.0) -> None:
    """Run ``work(job)`` for every job as a Ray task.

    :param address: the cluster to join; ``None`` joins ``RAY_ADDRESS`` if set, else starts a local instance
        that is shut down afterwards.
    :param cpus_per_run: CPUs Ray reserves per task.
    :param gpus_per_run: GPUs Ray reserves per task; a fraction shares a GPU between runs.
    Other parameters as :func:`run_local`. Every node needs ctm-rl installed; results travel back through Ray,
    run folders (models, logs) stay where the tasks ran unless the output folder is on a shared file system.
    """
    try:
        import ray
    except ImportError:
        raise ConfigError("--backend ray needs Ray, which is not installed. Fix: pip install 'ctm-rl[ray]'.") from None
    if not jobs:
        return
    address = address or os.environ.get("RAY_ADDRESS")
    started_here = not ray.is_initialized()
    if started_here:
        if address:
            ray.init(address=address)
        else:
            ray.init(include_dashboard=False, configure_logging=False)
    try:
        task = ray.remote(num_cpus=cpus_per_run, num_gpus=gpus_per_run, max_retries=0)(work)
        references = {task.remote(job): job for job in jobs}
        pending = list(references)
        try:
            while pending:
                done, pending = ray.wait(pending, num_returns=1)
                job = references[done[0]]
                try:
                    result = ray.get(done[0])
                except ray.exceptions.RayTaskError as error:
                    on_error(job, error.cause if isinstance(error.cause, BaseException) else error)
                except ray.exceptions.RayError as error:
                    on_error(job, error)
                else:
                    on_result(job, result)
        except KeyboardInterrupt:
            for reference in pending:
                ray.cancel(reference, force=True)
            raise
    finally:
        if started_here:
            ray.shutdown()
