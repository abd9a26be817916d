"""Sample tables of a multi-process run: every rank's rows, gathered to rank 0 at the end of an eval,
for the backends that keep one run for all ranks (``rank_zero_only``: W&B, TensorBoard).

Composer shards eval data across ranks (``dist.get_sampler``), so each rank's pipeline builds a table
of its own shard. That table goes to the rank's own backends (the local store writes a folder per rank)
as it is, with nothing exchanged; ``logbus.read_table`` merges the ranks' folders. Only when rank 0
has a backend that holds one table (``agree_to_gather``, decided once when the run starts) does every
rank, at each ``eval_end``, in this order:

1. waits, at most ``timeout`` seconds, for its own pipeline to finish that pass (this is the end of
   the eval, not a training step; in a single-process run nothing waits here);
2. packs its rows: the encoded image files are rank-local, so each image cell travels as its file's
   bytes with its caption, masks and boxes;
3. calls exactly one collective, ``torch.distributed.gather_object`` to rank 0, always, also when it
   has nothing to send (a failed or late pipeline sends ``None``), so no rank is ever left waiting in
   it. Nothing is exchanged per batch.

Rank 0 writes the received files into its pipeline's scratch folder, named by their content (an
image seen again in a later eval is the same file, so backends copy or upload it once), and builds
one ``Table`` with a ``rank`` column in front: ``id`` stays the sample's position in its rank's pass,
so ``(rank, id)`` is unique. Its encoder pool counts those files as its own (``EncoderPool.adopt``):
the table goes on the bus as a ``Deferred`` whose release gives back every scratch file it refers
to once every backend has taken it, as a single-process eval's table does; the other ranks give
their files back once their bytes are packed.

``gather_object`` rather than ``all_gather_object``: only the logging rank needs the rows, so the
others send and receive nothing but the sizes.
"""

from __future__ import annotations

import hashlib
import logging
import os
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeoutError  # not the builtin on Python 3.10
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from logbus.bus import Deferred
from logbus.files import write_bytes_atomic
from logbus.records import Box, Image, Mask, Table

log = logging.getLogger("logbus")

RANK_COLUMN = "rank"
Adopt = Callable[[str, bytes], Any]  # writes a received file and counts it (``EncoderPool.adopt``)


@dataclass
class PackedImage:
    """An ``Image`` cell in transit: the encoded file's bytes (or the raw pixels of an image that was
    never encoded) and everything else the cell holds. A plain dataclass: it pickles on every Python."""

    data: bytes | None
    suffix: str
    pixels: np.ndarray | None = None
    caption: str | None = None
    masks: dict[str, tuple[np.ndarray, Mapping[int, str] | None]] = field(default_factory=dict)
    boxes: list[dict[str, Any]] = field(default_factory=list)
    box_class_labels: Mapping[int, str] | None = None


def pack_image(image: Image) -> PackedImage:
    data = suffix = None
    if image.path is not None:
        with open(image.path, "rb") as file:
            data = file.read()
        suffix = os.path.splitext(image.path)[1] or ".png"
    return PackedImage(data=data, suffix=suffix or "", pixels=image.pixels, caption=image.caption,
                       masks={name: (mask.data, mask.class_labels) for name, mask in image.masks.items()},
                       boxes=[asdict(box) for box in image.boxes], box_class_labels=image.box_class_labels)


def unpack_image(packed: PackedImage, folder: str, adopt: Adopt | None = None) -> Image:
    """``adopt(path, data)``: writes and counts the file (``EncoderPool.adopt``); without it the file is
    written here, once, and never deleted by logbus."""
    path = None
    if packed.data is not None:
        digest = hashlib.blake2b(packed.data, digest_size=16).hexdigest()
        path = os.path.join(folder, f"gathered-{digest}{packed.suffix}")
        if adopt is not None:
            adopt(path, packed.data)
        elif not os.path.exists(path):  # same bytes, same name: an earlier eval's file is reused as it is
            write_bytes_atomic(path, packed.data)
    return Image(pixels=packed.pixels, path=path, caption=packed.caption,
                 masks={name: Mask(data, labels) for name, (data, labels) in packed.masks.items()},
                 boxes=[Box(**box) for box in packed.boxes], box_class_labels=packed.box_class_labels)


def pack_table(table: Table) -> dict[str, Any]:
    """What one rank sends: its columns and its rows, image cells packed."""
    return {"columns": list(table.columns),
            "rows": [[pack_image(cell) if isinstance(cell, Image) else cell for cell in row] for row in table.rows]}


def local_table(future: Future, timeout: float, what: str) -> Table | None:
    """This rank's table, waiting at most ``timeout`` seconds; ``None`` (logged) if it failed or is late."""
    try:
        return future.result(timeout=timeout)
    except FutureTimeoutError:
        log.warning("logbus: %s was not ready %.0f s after the end of the eval; this rank's samples are left "
                    "out of the gathered table", what, timeout)
    except Exception:  # noqa: BLE001 - this rank sends nothing; the others must not wait for it
        log.exception("logbus: %s failed; this rank's samples are left out of the gathered table", what)
    return None


def gather_to_rank_zero(payload: Any) -> list[Any] | None:
    """One collective: every rank's ``payload`` as a list by rank on rank 0, ``None`` elsewhere."""
    import torch.distributed
    from composer.utils import dist

    gathered = [None] * dist.get_world_size() if dist.get_global_rank() == 0 else None
    torch.distributed.gather_object(payload, gathered, dst=0)
    return gathered


def merge_tables(own: Table | None, payloads: Sequence[dict[str, Any] | None], *, key: str,
                 columns: Sequence[str], step: int | None, folder: str, adopt: Adopt | None = None) -> Table | None:
    """Rank 0's own table and the other ranks' payloads (index = rank; index 0 unused) as one table
    with a ``rank`` column, or ``None`` if no rank had a table. ``adopt``: see ``unpack_image``."""
    columns = list(own.columns) if own is not None else list(columns)
    rows = [[0, *row] for row in own.rows] if own is not None else []
    found = own is not None
    for rank, payload in enumerate(payloads):
        if rank == 0 or payload is None:
            continue
        found = True
        if list(payload["columns"]) != columns:
            log.warning("logbus: the samples of rank %d have columns %s, rank 0's are %s; rank %d is left out "
                        "of %r", rank, payload["columns"], columns, rank, key)
            continue
        rows.extend([rank, *[unpack_image(cell, folder, adopt) if isinstance(cell, PackedImage) else cell
                             for cell in row]]
                    for row in payload["rows"])
    if not found:
        return None
    return Table(key, [RANK_COLUMN, *columns], rows, step)


def gathered_record(own: Table | None, payloads: Sequence[dict[str, Any] | None], pipeline: Any, *, key: str,
                    step: int | None, release_own: bool = True) -> Deferred | None:
    """Rank 0's merged table as a record for the bus whose release gives every scratch file it refers
    to back to ``pipeline`` (a ``SamplePipeline``): the gathered ones, written into and counted by its
    encoder pool, and its own rows' files unless ``release_own`` is False (a record of its own, emitted to
    the rank's own backends, gives those back). ``None`` if no rank had a table."""
    encoder = pipeline.encoder
    table = merge_tables(own, payloads, key=key, columns=pipeline.extractor.columns, step=step,
                         folder=encoder.folder, adopt=encoder.adopt)
    if table is None:
        if own is not None and release_own:
            pipeline.release_rows(own.rows)
        return None
    # merge_tables puts rank 0's own rows first
    released = table.rows if release_own or own is None else table.rows[len(own.rows):]
    done: Future = Future()
    done.set_result(table)
    record = Deferred(Table, done)
    record.on_released(lambda: pipeline.release_rows(released))
    return record


def gather_table(future: Future, *, key: str, columns: Sequence[str], step: int | None, folder: str,
                 timeout: float, pipeline: Any = None, release_own: bool = True) -> Table | Deferred | None:
    """Steps 1-3 above for one table: the merged table on rank 0, ``None`` on the other ranks.
    ``pipeline``: the rank's ``SamplePipeline``; with it every scratch file is given back (on rank 0 the
    table comes as a ``Deferred`` that does so once every backend has taken it, see ``gathered_record``).
    ``release_own``: False where this rank's own table is a record of its own that gives its files back.

    Every rank calls this exactly once per table; nothing before the collective raises."""
    from composer.utils import dist

    rank = dist.get_global_rank()
    own = local_table(future, timeout, f"the samples table {key!r} of rank {rank}")
    payload = None
    if own is not None and rank != 0:
        try:
            payload = pack_table(own)
        except Exception:  # noqa: BLE001 - e.g. a scratch file gone: send nothing rather than skip the collective
            log.exception("logbus: could not pack the samples table %r of rank %d; its samples are left out", key, rank)
        if pipeline is not None and release_own:  # packed (or lost): this rank's files are not needed any more
            pipeline.release_rows(own.rows)
    payloads = gather_to_rank_zero(payload)
    if payloads is None:  # every rank but 0
        return None
    try:
        if pipeline is not None:
            return gathered_record(own, payloads, pipeline, key=key, step=step, release_own=release_own)
        return merge_tables(own, payloads, key=key, columns=columns, step=step, folder=folder)
    except Exception:  # noqa: BLE001 - logging must not end the training run
        log.exception("logbus: could not merge the gathered samples table %r; it is not logged", key)
        return None


def holds_one_table(backend: Any) -> bool:
    """Whether ``backend`` keeps one run for all ranks, written by rank 0 (``BackendCapabilities.rank_zero_only``):
    only such a backend needs the other ranks' rows, so only it makes a gather happen."""
    return bool(getattr(backend, "rank_zero_only", False))


def agree_to_gather(wanted: bool) -> bool:
    """Rank 0's ``wanted`` on every rank, in one broadcast when the run starts: every rank then enters the
    same collectives at every eval, even where one rank's backends differ from rank 0's (a gather that only
    some ranks entered would hold the others until the Trainer's ``dist_timeout``)."""
    from composer.utils import dist

    decision = [bool(wanted)]
    dist.broadcast_object_list(decision, src=0)
    return bool(decision[0])
