"""Independent units of a run (a method's seed) in worker processes on one machine: `harness run --jobs N`.

Why processes, and why the same thread count in each. A training step of the tiny model on 2 cores uses its
threads well (1.7x over one thread), but not fully: many of its ops are too small to split. Two methods trained
at once, each with the thread count a lone run uses, do about 20 % more work per second than one after the
other (benchmarks/README.md). Each worker keeps the preset's thread count, so each op splits its work as in a
sequential run and every stored number is the same, bit for bit, whatever ``--jobs`` is (tests/test_workers.py
checks a run both ways). The workers' OpenMP threads wait passively (``OMP_WAIT_POLICY=PASSIVE``), so that a
thread with nothing to do yields its core to the other worker instead of spinning on it: with the default
active wait, two oversubscribed workers run at half the speed of one.

A unit is trained, checkpointed and evaluated exactly as in a sequential run (``harness.runner._train_one``);
the workers share the run's results database (SQLite in WAL mode: one writer at a time, readers never
blocked), its checkpoint tree (each unit writes only its own) and its caches (a pair set two methods share is
built once under a file lock, ``harness.rundir.cache_lock``). The parent process holds the run directory's
lock for all of them.

Units are handed out in order, one at a time, to whichever worker is free. When a unit fails, the worker
says why, the other workers finish the unit they are in (nothing computed is lost) and start no other, and
the parent raises the first failure; ``--resume`` continues from the checkpoints. A worker ends when its
parent does (``PR_SET_PDEATHSIG`` on Linux), so an interrupted run leaves no process writing behind it.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import queue
import signal
import sys
import traceback
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

log = logging.getLogger(__name__)

Unit = TypeVar("Unit")
State = TypeVar("State")

PASSIVE_WAIT = {"OMP_WAIT_POLICY": "PASSIVE"}
LOG_FORMAT = "%(levelname)s %(message)s"  # the command line's (harness/cli/common.py)


class WorkerError(RuntimeError):
    """A unit failed in a worker process. ``kind``: the exception's class name; ``unit``: what it was doing."""

    def __init__(self, message: str, kind: str, unit: Any) -> None:
        super().__init__(message)
        self.kind, self.unit = kind, unit


@dataclass(frozen=True)
class Pool(Generic[Unit, State]):
    """What a worker runs. ``open_state(payload)`` is a context manager giving the worker's state (its own
    results-database connection, evaluator, trackers), opened once per worker; ``work(state, unit)`` runs a
    unit. Both must be module-level functions (a worker is a fresh interpreter: they are pickled by name)."""

    open_state: Callable[[Any], AbstractContextManager[State]]
    work: Callable[[State, Unit], None]
    payload: Any


def run_units(pool: Pool, units: Sequence[Unit], jobs: int) -> None:
    """Run ``units`` on ``min(jobs, len(units))`` worker processes; return when all are done, or raise the
    first failure (:class:`WorkerError`) after every worker has stopped."""
    jobs = max(1, min(jobs, len(units)))
    ctx = mp.get_context("spawn")  # never fork a process that holds OpenMP threads and a database connection
    counter = ctx.Value("i", 0)
    stop = ctx.Event()
    messages = ctx.Queue()
    level = logging.getLogger().getEffectiveLevel()
    procs = [ctx.Process(target=_worker, name=f"harness-worker-{i}",  # not daemonic: a backend may start processes
                         args=(i, os.getpid(), pool, list(units), counter, stop, messages, level))
             for i in range(jobs)]
    with _environment(PASSIVE_WAIT):  # read by each worker's OpenMP runtime when it starts
        for p in procs:
            p.start()
    failures: list[tuple[int, str, str, Any]] = []
    try:
        while any(p.is_alive() for p in procs):
            _drain(messages, failures, timeout=0.5)
        for p in procs:
            p.join()
        _drain(messages, failures, timeout=0.1)
    except BaseException:  # Ctrl-C or an error here: no worker may go on writing into the run
        stop.set()
        for p in procs:
            if p.is_alive():
                p.terminate()
        for p in procs:
            p.join(timeout=10)
        raise
    if failures:
        _, kind, message, unit = failures[0]
        raise WorkerError(message, kind, unit)
    for i, p in enumerate(procs):
        if p.exitcode:
            raise WorkerError(f"worker {i} ended with exit code {p.exitcode} without a message (killed: out of "
                              "memory?); what it finished is stored, continue with --resume", "exit", None)


def _drain(messages: Any, failures: list, timeout: float) -> None:
    try:
        while True:
            failures.append(messages.get(timeout=timeout))
            timeout = 0.0
    except queue.Empty:
        return


@contextmanager
def _environment(values: dict[str, str]) -> Iterator[None]:
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _die_with_parent(parent: int) -> None:
    """End this worker (SIGTERM) when its parent ends, even by SIGKILL (Linux); elsewhere the parent's own
    cleanup (terminate) has to do."""
    if sys.platform.startswith("linux"):
        import ctypes

        try:
            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
        except (AttributeError, OSError):
            pass
    if os.getppid() != parent:  # the parent ended before the line above
        os._exit(1)


def _worker(index: int, parent: int, pool: Pool, units: list, counter: Any, stop: Any, messages: Any,
            level: int) -> None:
    _die_with_parent(parent)
    logging.basicConfig(level=level, format=LOG_FORMAT)
    unit = None
    try:
        with pool.open_state(pool.payload) as state:
            while not stop.is_set():
                with counter.get_lock():
                    i = counter.value
                    counter.value += 1
                if i >= len(units):
                    break
                unit = units[i]
                pool.work(state, unit)
    except KeyboardInterrupt:
        stop.set()
        sys.exit(130)
    except BaseException as exc:  # noqa: BLE001  (every failure goes to the parent, which raises it)
        stop.set()
        # A RunError is already the one line the user needs (bad input, a missing file; harness.runner, which
        # imports this module); anything else is a crash, whose traceback the log gets before the parent's line.
        if type(exc).__name__ != "RunError":
            log.error("worker %d failed on %s:\n%s", index, unit, traceback.format_exc().rstrip())
        messages.put((index, type(exc).__name__, str(exc), unit))
        messages.close()
        messages.join_thread()
        sys.exit(1)
