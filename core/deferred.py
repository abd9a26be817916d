"""A record whose place in the stream is fixed now and whose content arrives later.

Sample tables are built on a worker after the training loop has moved on. W&B silently drops a
``log(step=s)`` below its current step, so a table for step 100 delivered after metrics for step 120
would vanish. The training thread therefore emits a ``Deferred`` at the right position; each
backend's writer waits for it (bounded) before delivering what came after, so every backend still
sees one ordered stream.
"""

from __future__ import annotations

from concurrent.futures import Future

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
