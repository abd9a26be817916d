"""One backend, its own queue and its own writer thread.

Each backend gets a thread so that a slow or hung backend (W&B uploading, a full disk) only delays
itself: the others keep receiving records in order. The training thread only puts into the queue.
"""

from __future__ import annotations

import functools
import logging
import queue
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from logbus.bus._deferred import Deferred, ReportedLoss
from logbus.hookspecs import Backend
from logbus.records import Artifact, Hyperparameters, Metrics, Record, RunFinished, RunStarted

log = logging.getLogger("logbus")

POLL_SECONDS = 0.005
ALWAYS_DELIVERED = frozenset({RunStarted, RunFinished, Metrics, Hyperparameters})


class _Flush:
    __slots__ = ("done",)

    def __init__(self):
        self.done = threading.Event()


class _Charged:
    """A ``Deferred`` in one backend's queue with the bytes it holds against that backend's budget.

    A sample table's size is unknown when its placeholder is emitted (it is built later, on the
    pipeline's worker), so it is charged again once it exists: a backend that lags behind sees its
    budget fill with the tables waiting for it, and further ones are dropped and counted. A
    ``Deferred`` that came with an estimate (``log_images``) has it replaced by the real size."""

    __slots__ = ("deferred", "nbytes", "taken")

    def __init__(self, deferred: Deferred):
        self.deferred, self.nbytes, self.taken = deferred, deferred.nbytes, False


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
    timed_out: int = 0  # waits (flush or close) that ran out on this backend; one, for a backend that hangs


class BackendWorker:
    """Delivers records to one backend on its own daemon thread, isolating its failures."""

    def __init__(self, name: str, backend: Backend, *, max_pending_bytes: int, failure_limit: int):
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
        self._markers = 0  # flush/close markers in the queue: not records, not counted as pending
        self._in_flight = False  # a record is inside backend.log() right now
        self._consecutive_failures = 0
        self._progress = 0  # items (records, flush markers) the writer has finished with
        self._stuck_at: int | None = None  # _progress when a wait ran out without it moving
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
            if type(record) is Deferred:
                record.hold()  # released by the writer once it is done with it, whatever happens
                charged = _Charged(record)
                self._put(charged)
                record.future.add_done_callback(functools.partial(self._charge_resolved, charged))
                return
        self._put(record)

    def _charge_resolved(self, charged: _Charged, future) -> None:
        try:
            table = future.result()
        except BaseException:  # noqa: BLE001 - the writer reports it when it gets there
            return
        size = getattr(table, "nbytes", 0) if table is not None else 0
        change = size - charged.deferred.nbytes
        with self._bytes_lock:
            if not charged.taken:
                charged.nbytes += change
                self._pending_bytes += change

    def request_flush(self) -> threading.Event:
        marker = _Flush()
        with self._bytes_lock:
            self._markers += 1
        self._queue.put(marker)
        return marker.done

    def request_close(self, finish: RunFinished) -> None:
        with self._bytes_lock:
            self._markers += 1
        self._queue.put(finish)

    def join(self, timeout: float) -> bool:
        self._thread.join(max(0.0, timeout))
        return not self._thread.is_alive()

    @property
    def progress(self) -> int:
        """How many queued items the writer has finished with: a wait compares it before and after."""
        return self._progress

    def stuck(self) -> bool:
        """Whether an earlier wait for this backend ran out without its writer finishing anything, and
        it has finished nothing since: waiting for it again would only wait out the deadline again.
        A backend that moves again (a stalled upload that resumed) is waited for as before."""
        return self._stuck_at is not None and self._stuck_at == self._progress and self._thread.is_alive()

    def wait_ran_out(self, progress_before: int) -> bool:
        """Records a wait that ran out; ``True`` when the backend finished nothing during it (it is
        now :meth:`stuck`), ``False`` when it is only slow."""
        self.stats.timed_out += 1
        if self._progress != progress_before:
            return False
        self._stuck_at = progress_before
        return True

    @property
    def pending(self) -> int:
        """Records queued for this backend and not yet delivered (flush/close markers excluded)."""
        return max(0, self._queue.qsize() - self._markers)

    @property
    def undelivered(self) -> int:
        """Records that would be lost if this backend's thread were abandoned now: the queued ones and
        the one its ``log()`` may be stuck in."""
        return self.pending + int(self._in_flight)

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
        closed = False
        while not closed:
            record = self._next()
            try:
                closed = self._handle(record)
            finally:
                self._progress += 1  # whatever became of the item: a wait tells a slow backend from a stuck one

    def _handle(self, record: Any) -> bool:
        """Finishes with one queued item; ``True`` once the backend is closed (the thread ends)."""
        if isinstance(record, _Flush):
            with self._bytes_lock:
                self._markers -= 1
            self._flush_backend()
            record.done.set()
            return False
        self.stats.received += 1
        if type(record) is _Charged:
            with self._bytes_lock:
                record.taken = True
                self._pending_bytes -= record.nbytes
            record = record.deferred
        elif record.droppable:
            with self._bytes_lock:
                self._pending_bytes -= record.nbytes
        if isinstance(record, RunFinished):
            with self._bytes_lock:
                self._markers -= 1
            self._close_backend(record)
            return True
        if type(record) is Deferred:
            deferred = record
            try:
                self._in_flight = True  # waiting for the record counts as holding it (undelivered)
                try:
                    record = self._resolve(deferred)
                finally:
                    self._in_flight = False
                if record is not None:
                    self._deliver_or_discard(record)
            finally:
                deferred.release()
            return False
        self._deliver_or_discard(record)
        if type(record) is Artifact and record.on_done is not None:
            self._done_with(record.name, record.on_done)
        return False

    def _deliver_or_discard(self, record: Record) -> None:
        if not self.stats.enabled:
            self.stats.discarded += 1
            return
        self._deliver(record)

    def _resolve(self, deferred: Deferred) -> Record | None:
        try:
            return deferred.future.result(timeout=deferred.timeout)
        except ReportedLoss:  # its producer has said why, once for every backend
            self.stats.dropped += 1
            return None
        except Exception as error:  # noqa: BLE001 - includes TimeoutError: the record is lost, say so
            self.stats.dropped += 1
            log.warning("logbus: a deferred %s for backend %r was not delivered: %s: %s",
                        deferred.record_type.__name__, self.name, type(error).__name__, error)
            return None

    def _deliver(self, record: Record) -> None:
        self._in_flight = True
        try:
            self.backend.log(record)
        except Exception as error:  # noqa: BLE001 - a backend must never reach the training loop
            self._failed(record, error)
            return
        finally:
            self._in_flight = False
        self.stats.delivered += 1
        self._consecutive_failures = 0

    def _done_with(self, name: str, on_done: Callable[[], None]) -> None:
        try:
            on_done()
        except Exception:  # noqa: BLE001 - freeing a staged file must not stop this writer
            log.exception("logbus: releasing the staged file of artifact %r failed", name)

    def _failed(self, record: Record, error: BaseException) -> None:
        self.stats.failures += 1
        self._consecutive_failures += 1
        # A backend that could not start cannot take any record: switch it off at once.
        switch_off = isinstance(record, RunStarted) or self._consecutive_failures >= self.failure_limit
        if self.stats.failures == 1:
            # One message for the first failure (the cause, with its traceback); the rest are counted
            # and summed up once when the bus closes.
            log.error(
                "logbus: backend %r failed on %s; %s other backends go on.\n%s",
                self.name, type(record).__name__,
                "it is switched off and nothing more is delivered to it;" if switch_off
                else "further failures are counted;", traceback.format_exc(),
            )
            self.stats.error = f"{type(error).__name__}: {error}"
        if switch_off:
            self.stats.enabled = False
            if self.stats.failures == 1:
                return
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
        except Exception as error:  # noqa: BLE001
            self.stats.failures += 1
            if self.stats.error is None:
                self.stats.error = f"{type(error).__name__}: {error}"
                log.error("logbus: backend %r failed while closing.\n%s", self.name, traceback.format_exc())
            else:  # already reported; counted in the summary the bus logs at close
                log.debug("logbus: backend %r failed while closing.\n%s", self.name, traceback.format_exc())
        log.debug("logbus: backend %r closed in %.3fs", self.name, time.perf_counter() - started)
