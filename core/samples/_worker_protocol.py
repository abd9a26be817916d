"""What the training process and the sample pipeline's worker process say to each other.

One small frozen dataclass per message, dispatched on its type (PyTorch's DataLoader worker protocol is
the model: ``torch/utils/data/_utils/worker.py``), instead of string tags and tuples read by position.
Each pickles as its class and fields; this module imports nothing heavy, as the worker imports it.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any


class Sent(enum.Enum):
    """What became of a batch handed to the worker process (``WorkerPipeline.submit``)."""

    SENT = "sent"  # on its way; its rows (or error, or loss) come back through the callback
    FULL = "full"  # no shared buffer was free in time: the caller drops the batch and counts it
    BROKEN = "broken"  # no live worker has the pipeline's extractor (yet): the caller does the work itself


@dataclass(frozen=True)
class Field:
    """Where one host field of a batch lies in its shared buffer."""

    name: str
    dtype: str  # numpy's ``dtype.str``
    shape: tuple[int, ...]
    offset: int


FIELD_ALIGNMENT = 16  # bytes: every field of a packed buffer starts here, aligned for any dtype's view


def packed_offsets(sizes: list[int]) -> tuple[list[int], int]:
    """Where fields of ``sizes`` bytes start, one after the other in one buffer, each aligned for its
    dtype's view, and the buffer's size: the one layout of the pipeline's pinned, pooled and shared
    buffers alike."""
    offsets, end = [], 0
    for size in sizes:
        offsets.append(end)
        end += -(-size // FIELD_ALIGNMENT) * FIELD_ALIGNMENT
    return offsets, end


# -- training process -> worker ---------------------------------------------------------------------
@dataclass(frozen=True)
class OpenPipeline:
    """Load a pipeline's extractor host part (pickled) with an encoder pool of its own."""

    key: int
    extractor: bytes
    encoder_options: dict[str, Any]


@dataclass(frozen=True)
class Batch:
    """Run the host stage on the fields in shared buffer ``buffer_name``; answered by ``BatchDone``."""

    key: int
    number: int
    buffer_name: str
    fields: tuple[Field, ...]


@dataclass(frozen=True)
class Release:
    """Rows that referred to these scratch files are gone (their table was taken by every backend)."""

    key: int
    paths: list[str]


@dataclass(frozen=True)
class Forget:
    """The training process unlinked this shared buffer: unmap it."""

    key: int
    buffer_name: str


@dataclass(frozen=True)
class ClosePipeline:
    """Forget the pipeline, unmap its buffers, delete its scratch files; answered by ``PipelineClosed``."""

    key: int


# -- worker -> training process ---------------------------------------------------------------------
@dataclass(frozen=True)
class PipelineOpened:
    key: int
    error: str | None  # None: loaded


@dataclass(frozen=True)
class PipelineClosed:
    key: int


@dataclass(frozen=True)
class BatchDone:
    """A batch's finished rows, or the traceback of its failure; and the pipeline's encoder counters."""

    key: int
    number: int
    rows: list | None
    error: str | None
    counters: tuple[int, int, int]  # encoded, reused, deleted
