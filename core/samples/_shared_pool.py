"""A bounded pool of reusable shared-memory buffers, to hand batches to the host-stage process.

One copy per batch into a buffer, one small message naming it: the worker process reads the batch
where it lies. Creating a segment is a few syscalls and page faults, so buffers are kept and
reused; the pool never holds more than ``max_bytes``, and every segment is unlinked at ``close``.
"""

from __future__ import annotations

import threading
from multiprocessing import shared_memory
from typing import Callable


class SharedPool:
    """:param max_bytes: cap on the bytes of all buffers, lent or free.
    :param on_drop: called with a buffer's name once it is unlinked before ``close`` (to make room for a
        larger one), so that the process reading it unmaps it too."""

    def __init__(self, max_bytes: int, on_drop: Callable[[str], None] | None = None):
        self.max_bytes = max_bytes
        self._on_drop = on_drop
        self._free: list[shared_memory.SharedMemory] = []
        self._all: list[shared_memory.SharedMemory] = []
        self._held_bytes = 0
        self._lock = threading.Condition()
        self.peak_bytes = 0

    @property
    def lent(self) -> int:
        """Buffers handed out and not released yet (batches in flight)."""
        with self._lock:
            return len(self._all) - len(self._free)

    def acquire(self, nbytes: int, timeout: float | None = None) -> shared_memory.SharedMemory | None:
        """A buffer of at least ``nbytes``; waits up to ``timeout`` for one to be released when the pool
        is full, then returns None. Raises ``OSError`` when the system cannot create a segment."""
        nbytes = max(1, nbytes)
        if nbytes > self.max_bytes:
            return None
        with self._lock:
            while True:
                fitting = [b for b in self._free if b.size >= nbytes]
                if fitting:
                    buffer = min(fitting, key=lambda b: b.size)
                    self._free.remove(buffer)
                    return buffer
                while self._free and self._held_bytes + nbytes > self.max_bytes:
                    self._drop(self._free.pop())
                if self._held_bytes + nbytes <= self.max_bytes:
                    buffer = shared_memory.SharedMemory(create=True, size=nbytes)
                    self._all.append(buffer)
                    self._held_bytes += buffer.size
                    self.peak_bytes = max(self.peak_bytes, self._held_bytes)
                    return buffer
                if not self._lock.wait(timeout):
                    return None

    def release(self, buffer: shared_memory.SharedMemory) -> None:
        with self._lock:
            self._free.append(buffer)
            self._lock.notify_all()

    def _drop(self, buffer: shared_memory.SharedMemory) -> None:
        self._held_bytes -= buffer.size
        self._all.remove(buffer)
        buffer.close()
        buffer.unlink()
        if self._on_drop is not None:
            self._on_drop(buffer.name)

    def close(self) -> None:
        with self._lock:
            for buffer in self._all:
                try:
                    buffer.close()
                except BufferError:  # a view still exported (an abandoned worker): unlink is enough
                    pass
                buffer.unlink()
            self._all, self._free, self._held_bytes = [], [], 0
