"""A record whose place in the stream is fixed now and whose content arrives later.

Sample tables are built on a worker after the training loop has moved on. W&B silently drops a
``log(step=s)`` below its current step, so a table for step 100 delivered after metrics for step 120
would vanish. The training thread therefore emits a ``Deferred`` at the right position; each
backend's writer waits for it (bounded) before delivering what came after, so every backend still
sees one ordered stream.
"""

from __future__ import annotations

import logging
import threading
from concurrent.futures import Future
from typing import Any, Callable

from logbus.records import Record

# How long a backend's writer waits for a deferred record's content (a sample table being built) before it
# counts the record as dropped and goes on with the stream.
WAIT_SECONDS = 600.0


class ReportedLoss(Exception):
    """Raised by a deferred record's producer that has already warned why the record is lost (once, for
    every backend): each writer counts it dropped without a warning of its own."""


class Deferred(Record):
    """Placeholder for a record of type ``record_type`` that ``future`` will produce (or ``None`` if
    it was dropped). ``timeout`` bounds how long a writer waits for it.

    Every backend writer that accepts it holds it until it is done with it (delivered, failed,
    dropped or discarded); ``on_released`` callbacks run once the last holder lets go, so that what
    the record points to (a sample table's scratch files) can be deleted as soon as every backend
    has taken it, not at the end of the run."""

    __slots__ = ("record_type", "future", "timeout", "nbytes", "_holders", "_released", "_on_released", "_lock")
    droppable = True
    nbytes: int  # a slot set at construction, where the other records compute it

    def __init__(self, record_type: type, future: Future, *, timeout: float = WAIT_SECONDS, nbytes: int = 0):
        self.record_type = record_type
        self.future = future
        self.timeout = timeout
        self.nbytes = nbytes
        self._holders = 0
        self._released = False  # the last holder has let go (after at least one held it)
        self._on_released: list[Callable[[], None]] = []
        self._lock = threading.Lock()

    def on_released(self, callback: Callable[[], None]) -> None:
        """Runs ``callback()`` once every holder has let go: when the last one does, or at once, here,
        if that has already happened. Registered before the record was ever held (before it is
        emitted, as the sample pipeline does), it waits for the holders to come and go."""
        with self._lock:
            if not self._released:
                self._on_released.append(callback)
                return
        _run_released_callback(callback)

    def hold(self) -> None:
        with self._lock:
            self._holders += 1

    def release(self) -> None:
        with self._lock:
            self._holders -= 1
            if self._holders > 0:
                return
            self._released = True
            callbacks, self._on_released = self._on_released, []
        for callback in callbacks:
            _run_released_callback(callback)


def _run_released_callback(callback: Callable[[], None]) -> None:
    try:
        callback()
    except Exception:  # noqa: BLE001 - runs on a backend's writer thread: report, never raise
        logging.getLogger("logbus").exception("logbus: a release callback of a deferred record failed")


class LazyFuture(Future):
    """A future whose value ``compute()`` makes in the first thread that asks for it.

    ``log_images`` emits a ``Deferred`` with one of these: the caller's thread only snapshots the
    images, and the first backend writer to reach the record converts them, once, for every backend
    (the others wait for that result as for any ``Deferred``)."""

    def __init__(self, compute: Callable[[], Any]):
        super().__init__()
        self._compute = compute
        self._claim = threading.Lock()

    def result(self, timeout: float | None = None) -> Any:
        if self._claim.acquire(blocking=False):  # never released: only the first caller computes
            compute = self._compute
            del self._compute  # the closure holds the images: let them go once taken
            try:
                self.set_result(compute())
            except BaseException as error:  # noqa: BLE001 - handed to every reader of the result
                self.set_exception(error)
        return super().result(timeout)
