"""A bounded pool of reusable buffers: the one logic under the pipeline's pinned host buffers
(``PinnedPool``) and its shared-memory buffers (``SharedPool``).

Making a buffer costs syscalls and page faults (pinning one, or creating a shared-memory segment,
more so), so buffers are kept and reused: a request takes the smallest free buffer that fits; where
none fits, free buffers are given up to make room for a new one; the buffers, lent or free, never
hold more than ``max_bytes``. Imports nothing heavy: the worker process imports the shared pool.
"""

from __future__ import annotations

import threading
from typing import Callable, Generic, TypeVar

Buffer = TypeVar("Buffer")


class BufferPool(Generic[Buffer]):
    """:param max_bytes: cap on the bytes of all buffers, lent or free.
    :param make: makes a buffer of at least the bytes asked for.
    :param size_of: a buffer's size in bytes.
    :param drop: gives a buffer up (called under the pool's lock), where that takes more than letting go of it."""

    def __init__(self, max_bytes: int, make: Callable[[int], Buffer], size_of: Callable[[Buffer], int],
                 drop: Callable[[Buffer], None] | None = None):
        self.max_bytes = max_bytes
        self._make, self._size_of, self._drop_buffer = make, size_of, drop
        self._free: list[Buffer] = []
        self._all: list[Buffer] = []
        self._held_bytes = 0  # bytes of every buffer, lent or free
        self._lock = threading.Condition()
        self.peak_bytes = 0

    @property
    def held_bytes(self) -> int:
        return self._held_bytes

    @property
    def lent(self) -> int:
        """Buffers handed out and not released yet."""
        with self._lock:
            return len(self._all) - len(self._free)

    def acquire(self, nbytes: int, timeout: float | None = None) -> Buffer | None:
        """A buffer of at least ``nbytes``; waits up to ``timeout`` seconds for one to be released when the
        pool is full, then returns None (the caller drops the batch and counts it, or does without).
        None at once for more than ``max_bytes``. Errors of ``make`` (no shared memory) reach the caller."""
        nbytes = max(1, nbytes)
        if nbytes > self.max_bytes:
            return None
        with self._lock:
            while True:
                fitting = [buffer for buffer in self._free if self._size_of(buffer) >= nbytes]
                if fitting:
                    buffer = min(fitting, key=self._size_of)
                    _remove(self._free, buffer)
                    return buffer
                while self._free and self._held_bytes + nbytes > self.max_bytes:
                    self._give_up(self._free.pop())
                if self._held_bytes + nbytes <= self.max_bytes:
                    buffer = self._make(nbytes)
                    self._all.append(buffer)
                    self._held_bytes += self._size_of(buffer)
                    self.peak_bytes = max(self.peak_bytes, self._held_bytes)
                    return buffer
                if not self._lock.wait(timeout):
                    return None

    def release(self, buffer: Buffer) -> None:
        with self._lock:
            self._free.append(buffer)
            self._lock.notify_all()

    def _give_up(self, buffer: Buffer) -> None:
        self._held_bytes -= self._size_of(buffer)
        _remove(self._all, buffer)
        if self._drop_buffer is not None:
            self._drop_buffer(buffer)

    def close(self) -> None:
        """Gives up every buffer, lent or free."""
        with self._lock:
            for buffer in self._all:
                if self._drop_buffer is not None:
                    self._drop_buffer(buffer)
            self._all, self._free, self._held_bytes = [], [], 0


def _remove(buffers: list, buffer: object) -> None:
    """Removes ``buffer`` by identity: ``list.remove`` compares with ``==``, which on tensors compares elements."""
    del buffers[next(index for index, item in enumerate(buffers) if item is buffer)]
