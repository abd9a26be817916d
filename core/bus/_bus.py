"""The bus: callers enqueue records and return; each backend's writer thread delivers them in order.

Memory is bounded per backend: droppable records (tables, images) are refused and counted once a
backend's queue holds ``max_pending_bytes`` of them; metrics, hyperparameters, artifacts and run
boundaries are never dropped (they are small, and losing them silently would be worse).
"""

from __future__ import annotations

import logging
import sys
import threading
import time
import weakref
from dataclasses import asdict
from typing import Any, Collection, Iterable, Mapping

from logbus.bus._backend_worker import BackendStats, BackendWorker
from logbus.bus._deferred import Deferred
from logbus.bus._exit_hook import before_interpreter_exit
from logbus.bus._file_copies import FileCopies
from logbus.bus._plugin_manager import create_backend
from logbus.hookspecs import Backend
from logbus.options import Option, Options, names_misspelt_options
from logbus.records import Images, Record, RunFinished, Table

log = logging.getLogger("logbus")
_now_ns = time.perf_counter_ns

BUS_OPTIONS: Options = Options(
    Option("max_pending_bytes", 256 * 2**20, "per backend, bytes of tables and images that may wait in its queue; "
           "more are dropped and counted (metrics, hyperparameters and artifacts never are)",
           kind="int", minimum=1, shown="256 * 2**20"),
    Option("failure_limit", 5, "consecutive failures after which a backend is switched off (the others go on)",
           kind="int", minimum=1),
    Option("close_timeout", 60.0, "seconds closing waits for the backends to drain (at most a week); a backend that "
           "finishes nothing in that time is abandoned: later waits skip it until it moves again",
           kind="number", minimum=0, unit="seconds"),
)
_DEFAULTS = BUS_OPTIONS.defaults
# ``timeout`` of flush() and close(): close_timeout for one call; None means close_timeout itself.
_TIMEOUT = BUS_OPTIONS["close_timeout"].but(name="timeout", allows_none=True)
# Records a caller emits whose image cells may name the caller's files (a sample pipeline's come deferred).
_NAMING_FILES = frozenset({Table, Images})


def build_backends(specs: Iterable[Any]) -> dict[str, Backend]:
    """Turns ``["local", ("wandb", {"project": "x"}), MyBackend()]`` into named backend objects.

    Unknown names raise on the caller's thread with the list of known backends."""
    if isinstance(specs, (str, bytes)) or not isinstance(specs, Iterable):
        raise TypeError(f"backends: expected a list of backend names, (name, options) pairs or backend objects, "
                        f"got {specs!r}")
    backends: dict[str, Backend] = {}
    for spec in specs:
        if isinstance(spec, str):
            name, backend = spec, create_backend(spec)
        elif isinstance(spec, tuple) and len(spec) == 2 and isinstance(spec[0], str) and isinstance(spec[1], Mapping):
            name, backend = spec[0], create_backend(spec[0], **spec[1])
        elif callable(getattr(spec, "log", None)) and callable(getattr(spec, "close", None)):
            name, backend = getattr(spec, "name", None) or type(spec).__name__, spec
        else:
            raise TypeError(f"backends: expected a backend name, a (name, options) pair or an object with "
                            f"log() and close(), got {spec!r}")
        base, index = name, 2
        while name in backends:  # two instances of one backend type: keep both, distinct names
            name, index = f"{base}-{index}", index + 1
        backends[name] = backend
    if not backends:
        raise ValueError("backends: expected at least one backend")
    return backends


class Bus:
    """Fan-out of records to backends, each on its own ordered writer thread.

    :param backends: backend names (see ``logbus plugins``), ``(name, options)`` pairs, or objects with
        ``log(record)`` and ``close(finish)`` (``logbus.hookspecs.Backend``).
    :param max_pending_bytes: per backend, how many bytes of droppable records (images, tables) may
        wait in its queue before new ones are dropped and counted.
    :param failure_limit: consecutive failures after which a backend is switched off.
    :param close_timeout: seconds ``close()`` waits by default for backends to drain.
    """

    @names_misspelt_options("Bus")
    def __init__(self, backends: Iterable[Any], *, max_pending_bytes: int = _DEFAULTS["max_pending_bytes"],
                 failure_limit: int = _DEFAULTS["failure_limit"], close_timeout: float = _DEFAULTS["close_timeout"]):
        BUS_OPTIONS.check(max_pending_bytes=max_pending_bytes, failure_limit=failure_limit, close_timeout=close_timeout)
        self.close_timeout = float(close_timeout)
        self.workers = [
            BackendWorker(name, backend, max_pending_bytes=max_pending_bytes, failure_limit=failure_limit)
            for name, backend in build_backends(backends).items()
        ]
        self.backends = {worker.name: worker.backend for worker in self.workers}
        # Record types a caller's files are read for: those some backend takes (none: nothing is read).
        self._copies_files_of = _NAMING_FILES & frozenset().union(*(worker.supports for worker in self.workers))
        self.closed = False
        self._close_lock = threading.Lock()
        self._emitted = 0
        self._caller_ns = 0
        self._warned_after_close = False
        # Set by adapters: the exit code to report if the process exits before close() is called
        # (1 while a Composer fit is running, so SIGTERM or a crash marks the run failed).
        self.exit_code_if_interrupted = 0
        self._on_close: list = []
        self._close_deadline: float | None = None
        self._file_copies = FileCopies()
        _close_before_interpreter_exit(self)

    # -- caller side -----------------------------------------------------------------------------
    def emit(self, record: Record, *, to: Collection[str] | None = None) -> None:
        """Enqueues ``record`` for every backend that supports its type and returns at once.

        :param record: what to deliver. A ``Table`` or ``Images`` record with an ``Image(path=...)`` is
            wrapped in a ``Deferred`` here and nothing is read: the first backend writer to reach it reads
            each file once and every backend stores those bytes (``logbus.bus._file_copies``).
        :param to: names (``bus.backends``) of the only backends to offer it to; ``None``: every one.
        """
        started = _now_ns()
        if type(record) in self._copies_files_of and not self.closed:
            # A file an image cell names is read once, by the first backend writer, never on this thread;
            # every backend gets that read's bytes, never the caller's path (see logbus.bus._file_copies).
            record = self._file_copies.defer(record)  # type: ignore[arg-type]  # a Table or Images
        deferred = record if type(record) is Deferred else None
        if deferred is not None:
            deferred.hold()  # until every backend has been offered it: one that is done early cannot release it
        try:
            if self.closed:
                self._emitted_after_close(record)
                return
            for worker in self.workers:
                if to is None or worker.name in to:
                    worker.offer(record)
        finally:
            if deferred is not None:
                deferred.release()
        self._emitted += 1
        self._caller_ns += _now_ns() - started

    def _emitted_after_close(self, record: Record) -> None:
        if not self._warned_after_close:
            self._warned_after_close = True
            log.warning("logbus: %s emitted after the bus was closed; it is not delivered", type(record).__name__)

    def flush(self, timeout: float | None = None) -> bool:
        """Waits until everything emitted so far reached every live backend. False on timeout, or when
        a backend stuck at an earlier wait was skipped.

        :param timeout: seconds to wait at most (``close_timeout`` if ``None``). A backend that finishes
            nothing during a wait that runs out is stuck (hung): every later wait skips it until it
            moves again, so a hung backend costs the end of training one ``timeout``, not one per wait.
        """
        _TIMEOUT.check(timeout)
        if self.closed:
            return True
        deadline = time.monotonic() + (self.close_timeout if timeout is None else timeout)
        waited = [(worker, worker.progress, worker.request_flush()) for worker in self.workers if not worker.stuck()]
        clean = len(waited) == len(self.workers)
        for worker, progress, done in waited:
            if not done.wait(max(0.0, deadline - time.monotonic())):
                clean = False
                self._ran_out(worker, progress, self.close_timeout if timeout is None else timeout)
        return clean

    def close(self, exit_code: int = 0, *, reason: str | None = None, timeout: float | None = None) -> bool:
        """Delivers everything queued, then closes every backend. Returns within ``timeout`` even if a
        backend hangs; what could not be delivered is reported. Idempotent.

        :param exit_code: 0 for success; the backends record it.
        :param reason: why the run ended, when it failed.
        :param timeout: seconds to wait at most (``close_timeout`` if ``None``); a backend stuck at an
            earlier wait (see :meth:`flush`) is not waited for again.
        """
        _TIMEOUT.check(timeout)
        with self._close_lock:
            if self.closed:
                return True
            self.closed = True
        seconds = self.close_timeout if timeout is None else timeout
        deadline = self._close_deadline = time.monotonic() + seconds
        finish = RunFinished(exit_code=exit_code, reason=reason)
        stuck = {worker.name for worker in self.workers if worker.stuck()}
        waited = [(worker, worker.progress) for worker in self.workers]
        for worker in self.workers:
            worker.request_close(finish)
        clean = True
        for worker, progress in waited:
            if worker.name in stuck:
                clean = False
                log.warning(
                    "logbus: backend %r did not finish within the close deadline: it finished nothing during an "
                    "earlier wait, so it was not waited for again; %d record(s) were not delivered to it. Training "
                    "is not held up; its thread is abandoned.", worker.name, worker.undelivered)
            elif not worker.join(deadline - time.monotonic()):
                clean = False
                worker.wait_ran_out(progress)
                log.warning(
                    "logbus: backend %r did not finish within the close deadline (%.3g s); %d record(s) were "
                    "not delivered to it. Training is not held up; its thread is abandoned.",
                    worker.name, seconds, worker.undelivered,
                )
        self._report_losses()
        self._file_copies.close()
        for callback in self._on_close:
            try:
                callback()
            except Exception:  # noqa: BLE001
                log.exception("logbus: a close callback failed")
        return clean

    def _ran_out(self, worker: BackendWorker, progress_before: int, seconds: float) -> None:
        if worker.wait_ran_out(progress_before):
            log.warning("logbus: backend %r finished nothing in %.3g s of waiting for it; it is taken for hung, "
                        "and later waits (flush, close) skip it until it moves again. Training is not held up.",
                        worker.name, seconds)

    def on_close(self, callback) -> None:
        """Runs ``callback()`` once the bus has closed (e.g. to delete files backends have copied);
        ``time_left()`` tells it what is left of the close deadline."""
        self._on_close.append(callback)

    def time_left(self) -> float | None:
        """Seconds left until the deadline of ``close()`` (``None`` before it was called)."""
        if self._close_deadline is None:
            return None
        return max(0.0, self._close_deadline - time.monotonic())

    # -- stats -----------------------------------------------------------------------------------
    def stats(self) -> dict[str, Any]:
        """Counts per backend plus caller-thread cost (µs per emit)."""
        backends: dict[str, BackendStats] = {}
        for worker in self.workers:
            worker.stats.pending = worker.pending
            backends[worker.name] = worker.stats
        return {
            "emitted": self._emitted,
            "caller_us_per_emit": self._caller_ns / 1000 / max(1, self._emitted),
            "backends": {name: asdict(stats) for name, stats in backends.items()},
        }

    def stats_metrics(self) -> dict[str, float]:
        """The stats as flat ``logbus/*`` metrics, ready to log."""
        stats = self.stats()
        metrics = {"logbus/emitted": float(stats["emitted"]),
                   "logbus/caller_us_per_emit": stats["caller_us_per_emit"]}
        for name, backend in stats["backends"].items():
            for field in ("delivered", "dropped", "failures", "pending"):
                metrics[f"logbus/{name}/{field}"] = float(backend[field])
        return metrics

    def _report_losses(self) -> None:
        for worker in self.workers:
            stats = worker.stats
            if stats.dropped or stats.failures or stats.discarded:
                log.warning(
                    "logbus: backend %r: %d delivered, %d dropped under backpressure (max_pending_bytes), "
                    "%d failed, %d discarded after it was switched off%s",
                    worker.name, stats.delivered, stats.dropped, stats.failures, stats.discarded,
                    f" (first error: {stats.error})" if stats.error else "",
                )

    # -- process exit ----------------------------------------------------------------------------
    def _close_at_exit(self) -> None:
        uncaught = getattr(sys, "last_value", None) is not None
        exit_code = 1 if uncaught else self.exit_code_if_interrupted
        reason = "uncaught exception" if uncaught else ("interrupted" if exit_code else None)
        self.close(exit_code, reason=reason)


def _close_before_interpreter_exit(bus: Bus) -> None:
    """Drains ``bus`` when the interpreter exits, before any ``atexit`` handler runs (backends tear
    themselves down in theirs; see ``_exit_hook``). A weak reference keeps a closed bus collectable."""
    reference = weakref.ref(bus)

    def close():
        alive = reference()
        if alive is not None and not alive.closed:
            alive._close_at_exit()

    before_interpreter_exit(close)
