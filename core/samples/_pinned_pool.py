"""A bounded pool of reusable pinned (page-locked) host buffers for device-to-host copies.

A ``non_blocking=True`` copy into pageable memory is synchronous; into pinned memory it is not, and
the data is valid once the copy's CUDA event completes. Pinning is slow (a syscall and page
faults), so buffers are kept and reused; the pool never holds more than ``max_bytes``.
"""

from __future__ import annotations

import threading

import torch

from logbus.samples._options import PIPELINE_OPTIONS


class PinnedPool:
    def __init__(self, max_bytes: int = PIPELINE_OPTIONS.defaults["pinned_pool_bytes"]):
        PIPELINE_OPTIONS["pinned_pool_bytes"].check(max_bytes)
        self.max_bytes = max_bytes
        self._free: list[torch.Tensor] = []
        self._held_bytes = 0  # bytes pinned in total, free or lent out
        self._lock = threading.Condition()
        self.peak_bytes = 0

    @property
    def held_bytes(self) -> int:
        return self._held_bytes

    def acquire(self, nbytes: int, timeout: float | None = None) -> torch.Tensor | None:
        """A pinned uint8 buffer of at least ``nbytes``; waits up to ``timeout`` for one to be released
        when the pool is full, then returns None (the caller drops the batch and counts it)."""
        if nbytes > self.max_bytes:
            return None
        with self._lock:
            while True:
                fitting = [b for b in self._free if b.numel() >= nbytes]
                if fitting:
                    buffer = min(fitting, key=torch.Tensor.numel)
                    # By identity: list.remove compares with ==, which on tensors compares elements.
                    del self._free[next(i for i, free in enumerate(self._free) if free is buffer)]
                    return buffer
                # Make room by unpinning free buffers that are too small.
                while self._free and self._held_bytes + nbytes > self.max_bytes:
                    self._held_bytes -= self._free.pop().numel()
                if self._held_bytes + nbytes <= self.max_bytes:
                    self._held_bytes += nbytes
                    self.peak_bytes = max(self.peak_bytes, self._held_bytes)
                    break
                if not self._lock.wait(timeout):
                    return None
        return torch.empty(nbytes, dtype=torch.uint8, pin_memory=torch.cuda.is_available())

    def release(self, buffer: torch.Tensor) -> None:
        with self._lock:
            self._free.append(buffer)
            self._lock.notify_all()
