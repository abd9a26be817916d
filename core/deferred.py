"""A record whose place in the stream is fixed now and whose content arrives later.

Sample tables are built on a worker after the training loop has moved on. W&B silently drops a
``log(step=s)`` below its current step, so a table for step 100 delivered after metrics for step 120
would vanish. The training thread therefore emits a ``Deferred`` at the right position; each
backend's writer waits for it (bounded) before delivering what came after, so every backend still
sees one ordered stream.
"""

from __future__ import annotations

import threading
from concurrent.futures import Future
from typing import Any, Callable

from logbus.records import Record


class Deferred(Record):
    """Placeholder for a record of type ``record_type`` that ``future`` will produce (or ``None`` if
    it was dropped). ``timeout`` bounds how long a writer waits for it."""

    __slots__ = ("record_type", "future", "timeout", "nbytes")
    droppable = True

    def __init__(self, record_type: type, future: Future, *, timeout: float = 600.0, nbytes: int = 0):
        self.record_type = record_type
        self.future = future
        self.timeout = timeout
        self.nbytes = nbytes


class LazyFuture(Future):
    """A future whose value ``compute()`` makes in the first thread that asks for it.

    ``log_images`` emits a ``Deferred`` with one of these: the caller's thread only snapshots the
    images, and the first backend writer to reach the record converts them, once, for every backend
    (the others wait for that result as for any ``Deferred``)."""

    def __init__(self, compute: Callable[[], Any]):
        super().__init__()
        self._compute: Callable[[], Any] | None = compute
        self._claim = threading.Lock()

    def result(self, timeout: float | None = None) -> Any:
        if self._claim.acquire(blocking=False):  # never released: only the first caller computes
            compute, self._compute = self._compute, None
            try:
                self.set_result(compute())
            except BaseException as error:  # noqa: BLE001 - handed to every reader of the result
                self.set_exception(error)
        return super().result(timeout)
