"""A bounded pool of reusable pinned (page-locked) host buffers for device-to-host copies, and the
buffers CPU batches are staged in on the training thread (``BufferPool``: reused, never more than
``max_bytes``).

A ``non_blocking=True`` copy into pageable memory is synchronous; into pinned memory it is not, and
the data is valid once the copy's CUDA event completes. Pinning is slow (a syscall and page faults),
and so is touching a fresh buffer's pages, so buffers are kept and reused. Without CUDA the buffers
are plain host memory.
"""

from __future__ import annotations

import torch

from logbus.samples._buffer_pool import BufferPool
from logbus.samples._options import PIPELINE_OPTIONS


class PinnedPool(BufferPool[torch.Tensor]):
    """uint8 tensors of at least the bytes asked for (see ``BufferPool``)."""

    def __init__(self, max_bytes: int = PIPELINE_OPTIONS.defaults["pinned_pool_bytes"]):
        PIPELINE_OPTIONS["pinned_pool_bytes"].check(max_bytes)
        pin = torch.cuda.is_available()
        super().__init__(max_bytes, make=lambda nbytes: torch.empty(nbytes, dtype=torch.uint8, pin_memory=pin),
                         size_of=torch.Tensor.numel)
