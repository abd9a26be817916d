"""A bounded pool of reusable shared-memory buffers, to hand batches to the worker process (``BufferPool``).

One copy per batch into a buffer, one small message naming it: the worker process reads the batch
where it lies. Creating a segment is a few syscalls and page faults, so buffers are kept and
reused; the pool never holds more than ``max_bytes``, and every segment is unlinked at ``close``.
"""

from __future__ import annotations

from multiprocessing import shared_memory
from typing import Callable

from logbus.samples._buffer_pool import BufferPool


class SharedPool(BufferPool[shared_memory.SharedMemory]):
    """:param max_bytes: cap on the bytes of all buffers, lent or free.
    :param on_drop: called with a buffer's name once it is unlinked before ``close`` (to make room for a
        larger one), so that the process reading it unmaps it too."""

    def __init__(self, max_bytes: int, on_drop: Callable[[str], None] | None = None):
        self._on_drop = on_drop
        self._closing = False
        super().__init__(max_bytes, make=lambda nbytes: shared_memory.SharedMemory(create=True, size=nbytes),
                         size_of=lambda buffer: buffer.size, drop=self._unlink)

    def _unlink(self, buffer: shared_memory.SharedMemory) -> None:
        try:
            buffer.close()
        except BufferError:  # a view still exported (an abandoned worker): unlink is enough
            pass
        buffer.unlink()
        if self._on_drop is not None and not self._closing:
            self._on_drop(buffer.name)

    def close(self) -> None:
        self._closing = True  # the pipeline is going: the worker process unmaps its buffers itself
        super().close()
