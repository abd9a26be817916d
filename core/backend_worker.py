"""One backend, its own queue and its own writer thread.

Each backend gets a thread so that a slow or hung backend (W&B uploading, a full disk) only delays
itself: the others keep receiving records in order. The training thread only puts into the queue.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
import traceback
from dataclasses import dataclass
from typing import Any

from logbus.deferred import Deferred
from logbus.records import Hyperparameters, Metrics, Record, RunFinished, RunStarted

log = logging.getLogger("logbus")

POLL_SECONDS = 0.005
ALWAYS_DELIVERED = frozenset({RunStarted, RunFinished, Metrics, Hyperparameters})


class _Flush:
    __slots__ = ("done",)

    def __init__(self):
        self.done = threading.Event()


@dataclass
class BackendStats:
    """Counts for one backend. ``received`` counts records taken off the queue."""

    name: str
    received: int = 0
    delivered: int = 0
    dropped: int = 0  # droppable records refused because the queue held too many bytes
    failures: int = 0
    discarded: int = 0  # records received after the backend was switched off
    pending: int = 0
    enabled: bool = True
    error: str | None = None


class BackendWorker:
    """Delivers records to one backend on its own daemon thread, isolating its failures."""

    def __init__(self, name: str, backend: Any, *, max_pending_bytes: int, failure_limit: int):
        self.name = name
        self.backend = backend
        self.supports = ALWAYS_DELIVERED | frozenset(getattr(backend, "supports", ()))
        self.max_pending_bytes = max_pending_bytes
        self.failure_limit = failure_limit
        self.stats = BackendStats(name)
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._put = self._queue.put  # bound once: offer() runs on the training thread
        self._pending_bytes = 0
        self._bytes_lock = threading.Lock()
        self._consecutive_failures = 0
        self._thread = threading.Thread(target=self._run, name=f"logbus-{name}", daemon=True)
        self._thread.start()

    # -- caller side -----------------------------------------------------------------------------
    def offer(self, record: Record) -> None:
        if type(record) not in self.supports and not (type(record) is Deferred and record.record_type in self.supports):
            return
        if record.droppable:
            size = record.nbytes
            with self._bytes_lock:
                if self._pending_bytes + size > self.max_pending_bytes:
                    self.stats.dropped += 1
                    return
                self._pending_bytes += size
        self._put(record)

    def request_flush(self) -> threading.Event:
        marker = _Flush()
        self._queue.put(marker)
        return marker.done

    def request_close(self, finish: RunFinished) -> None:
        self._queue.put(finish)

    def join(self, timeout: float) -> bool:
        self._thread.join(max(0.0, timeout))
        return not self._thread.is_alive()

    @property
    def pending(self) -> int:
        return self._queue.qsize()

    # -- writer thread ---------------------------------------------------------------------------
    def _next(self) -> Any:
        # Poll instead of blocking in get(): a blocked reader is woken by every put, and that wake-up
        # plus the GIL hand-off would land on the training thread for each logged scalar. Polling
        # leaves put() uncontended and lets the writer take records in bursts.
        while True:
            try:
                return self._queue.get_nowait()
            except queue.Empty:
                time.sleep(POLL_SECONDS)

    def _run(self) -> None:
        while True:
            record = self._next()
            if isinstance(record, _Flush):
                self._flush_backend()
                record.done.set()
                continue
            self.stats.received += 1
            if record.droppable:
                with self._bytes_lock:
                    self._pending_bytes -= record.nbytes
            if isinstance(record, RunFinished):
                self._close_backend(record)
                return
            if type(record) is Deferred:
                record = self._resolve(record)
                if record is None:
                    continue
            if not self.stats.enabled:
                self.stats.discarded += 1
                continue
            self._deliver(record)

    def _resolve(self, deferred: Deferred) -> Record | None:
        try:
            return deferred.future.result(timeout=deferred.timeout)
        except Exception as error:  # noqa: BLE001 - includes TimeoutError: the record is lost, say so
            self.stats.dropped += 1
            log.warning("logbus: a deferred %s for backend %r was not delivered: %s: %s",
                        deferred.record_type.__name__, self.name, type(error).__name__, error)
            return None

    def _deliver(self, record: Record) -> None:
        try:
            self.backend.log(record)
        except Exception as error:  # noqa: BLE001 - a backend must never reach the training loop
            self._failed(record, error)
            return
        self.stats.delivered += 1
        self._consecutive_failures = 0

    def _failed(self, record: Record, error: BaseException) -> None:
        self.stats.failures += 1
        self._consecutive_failures += 1
        if self.stats.failures == 1:
            log.error(
                "logbus: backend %r failed on %s; other backends go on, further failures are counted.\n%s",
                self.name, type(record).__name__, traceback.format_exc(),
            )
            self.stats.error = f"{type(error).__name__}: {error}"
        # A backend that could not start cannot take any record: switch it off at once.
        if isinstance(record, RunStarted) or self._consecutive_failures >= self.failure_limit:
            self.stats.enabled = False
            log.warning(
                "logbus: backend %r switched off after %d failure(s) (%s); %d record(s) still queued for it "
                "will not be delivered. Other backends are unaffected.",
                self.name, self._consecutive_failures, self.stats.error, self.pending,
            )

    def _flush_backend(self) -> None:
        flush = getattr(self.backend, "flush", None)
        if flush is not None and self.stats.enabled:
            try:
                flush()
            except Exception as error:  # noqa: BLE001
                self._failed(RunFinished(), error)

    def _close_backend(self, finish: RunFinished) -> None:
        started = time.perf_counter()
        try:
            self.backend.close(finish)
        except Exception:  # noqa: BLE001
            self.stats.failures += 1
            log.error("logbus: backend %r failed while closing.\n%s", self.name, traceback.format_exc())
        log.debug("logbus: backend %r closed in %.3fs", self.name, time.perf_counter() - started)
