"""The sample pipeline: prediction samples from eval batches to a table, without stalling training.

On the training thread, ``submit`` checks shapes (metadata only) and lets the sampling policy pick
indices from batch sizes. A CPU batch's chosen rows are then copied (one torch copy a tensor, which
does not hold the GIL, so that the caller may refill its tensors at once) and queued to the pipeline's
thread, which runs the extractor's device stage (torch ops, likewise) and hands the host fields to the
worker process (``logbus.samples._host_process``) through shared memory, one message a batch: the
worker process runs the host stage and imports no torch. The training process's cost is per batch,
not per sample. Nothing waits: the memory budget of batches in flight (``pinned_pool_bytes``) is the
only bound at default settings; when it is spent the batch is dropped and counted.

A CUDA batch: ``submit`` issues the device stage at once, on a dedicated side stream that first
waits for the training stream's work so far: selection, the extractor's fused kernels, and the copy
of the results into a reusable pinned buffer (``non_blocking=True``), all launches, no waiting. The
batch tensors are recorded on the side stream (``record_stream``), so the caching allocator cannot
hand their memory to the next batch before the side stream has read them, and nobody holds them
afterwards. The pipeline's worker thread gets the pinned buffer and the copy's event: it waits on
the event (the worker, not training) and runs the host stage. A device policy's running top-k is
updated on the side stream the same way; its rows are copied at ``end_pass``.

Without a worker process (not up yet, or ``worker_process=False``) the host stage runs on the
pipeline's thread too, on threads of the training process.

At ``end_pass`` the training thread gets a future of the finished ``Table``; adapters emit it on the
bus as a ``Deferred`` so that it lands in order with the metrics logged around it.
"""

from __future__ import annotations

import functools
import logging
import os
import queue
import threading
import time
import traceback
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from logbus.bus import Deferred
from logbus.files import check_key, check_name
from logbus.hookspecs import Extractor
from logbus.records import ColumnRows, Image, Table
from logbus.samples._encoder_pool import EncoderPool
from logbus.samples._host_process import WorkerPipeline
from logbus.samples._options import PIPELINE_OPTIONS, SAMPLING_OPTIONS
from logbus.samples._pending_image import PendingImage
from logbus.samples._pinned_pool import PinnedPool
from logbus.samples._policies import SamplingPolicy, make_policy
from logbus.samples._worker_protocol import Sent, packed_offsets

log = logging.getLogger("logbus")


@dataclass
class PipelineStats:
    batches_submitted: int = 0
    batches_dropped: int = 0  # the worker was behind: memory budget spent (training never waits)
    samples_processed: int = 0
    rows_logged: int = 0
    tables_logged: int = 0
    tables_dropped: int = 0
    errors: int = 0
    encoded: int = 0
    reused: int = 0
    pinned_peak_bytes: int = 0
    batches_lost: int = 0  # held by a worker process that died, or that stopped answering (worker_stall_timeout)
    batches_after_close: int = 0  # offered after close(): not processed
    batches_in_process: int = 0  # per-sample work done in the training process (no worker process, or not yet)


@dataclass
class _Pass:
    """One eval pass of one label. ``policy`` is driven by the training thread (``choose``) and,
    for device policies, updated by the worker; ``rows`` belong to the worker."""

    policy: SamplingPolicy
    rows: dict[int, list] = field(default_factory=dict)
    # Batches whose rows came back as columns (the worker process, where no image becomes a file): sample
    # ids and rows, kept whole until the table is made.
    columns: list[tuple[np.ndarray, ColumnRows]] = field(default_factory=list)
    outstanding: int = 0  # batches handed to the worker process whose rows have not come back
    given_up: bool = False  # the worker process stopped answering: rows still coming are not this table's


# What the training thread queues to the pipeline's thread: one small frozen type per item.
@dataclass(frozen=True)
class _CpuBatch:
    """A CPU batch's chosen rows (all rows for a device policy), copied on the training thread so that a
    caller may reuse its tensors at once; their device stage runs on the pipeline's thread."""

    inputs: Any
    targets: Any
    outputs: Any
    sample_ids: np.ndarray
    buffer: Any = None  # the pool buffer the tensors are views of (given back after the device stage), or None


@dataclass(frozen=True)
class _CopiedToHost:
    """A CUDA batch's converted rows, copied into a pinned ``buffer``; valid once ``done`` completes."""

    host: dict[str, np.ndarray]
    buffer: Any
    done: Any


@dataclass(frozen=True)
class _OnDevice:
    """A CUDA batch's converted rows, left on the device: no pinned buffer was free at submit."""

    fields: dict[str, Any]


@dataclass(frozen=True)
class _TakenByPolicy:
    """A device policy's running top-k took the batch: nothing to do until the end of the pass."""


@dataclass(frozen=True)
class _DeviceStageFailed:
    """The device stage raised at submit (reported in order with the batch, never into training)."""

    traceback: str


_Issued = _CopiedToHost | _OnDevice | _TakenByPolicy | _DeviceStageFailed


@dataclass(frozen=True)
class _QueuedBatch:
    nbytes: int  # room it holds (``_take_room``)
    state: _Pass
    work: _CpuBatch | _Issued


@dataclass(frozen=True)
class _QueuedPassEnd:
    label: str
    state: _Pass
    step: int | None
    future: Future


@dataclass(frozen=True)
class _Stop:
    """``close``: the pipeline's thread ends once it reaches this."""


CLOSE_TIMEOUT = 60.0  # seconds close() waits for queued work by default
_DEFAULTS = {**SAMPLING_OPTIONS.defaults, **PIPELINE_OPTIONS.defaults}


class SamplePipeline:
    """Turns batches into one table per pass (per evaluator label).

    :param extractor: an extractor object (the contract: ``logbus.hookspecs.Extractor``).
    :param num_samples: rows per pass (``None``: every sample, policy ``first`` only).
    :param policy: ``first``, ``reservoir``, ``per_class`` or ``hardest``.
    :param seed: seed of the ``reservoir`` policy.
    :param hardest_by: ``loss`` or ``confidence``, for the ``hardest`` policy.
    :param max_pending_batches: optional cap on the batches queued to the worker thread (``None``:
        only ``pinned_pool_bytes`` bounds them).
    :param pinned_pool_bytes: the memory budget of batches in flight: shared memory for batches' rows
        on their way to the worker process, pinned host memory for device-to-host copies, and bytes
        of batches queued to the worker thread (each separately). A batch that finds its budget spent
        is dropped and counted.
    :param encode_workers: threads encoding images.
    :param image_format: ``png`` or ``jpeg``.
    :param compress_level: PNG compression level, 0-9.
    :param key_prefix: tables are logged as ``{key_prefix}/{label}``.
    :param scratch_cache_bytes: encoded files no table refers to any more are kept (for a later eval
        to reuse) up to this many bytes; beyond that they are deleted.
    :param worker_process: run the per-sample work (rows, hashing, encoding, file writes) in a worker
        process fed through shared memory (``logbus.samples._host_process``), so that it never holds the
        training process's GIL; ``False``: on threads of the training process. Falls back to threads,
        with a warning, when the extractor does not pickle or shared memory cannot be had.
    :param worker_stall_timeout: seconds a finished pass waits for a worker process that answers
        nothing; then the batches it holds are counted lost and the table is logged without them, so
        that the metrics after it on the bus are delivered (a hung worker costs sample rows, never
        metrics). ``encode_workers`` ``None``: one per core this process may use, shared among the
        ranks of the node (``default_encode_workers``).
    """

    def __init__(self, extractor: Extractor, *, num_samples: int | None = _DEFAULTS["num_samples"],
                 policy: str = _DEFAULTS["policy"], seed: int = _DEFAULTS["seed"], hardest_by: str = _DEFAULTS["hardest_by"],
                 max_pending_batches: int | None = _DEFAULTS["max_pending_batches"],
                 pinned_pool_bytes: int = _DEFAULTS["pinned_pool_bytes"], encode_workers: int = _DEFAULTS["encode_workers"],
                 image_format: str = _DEFAULTS["image_format"], compress_level: int = _DEFAULTS["compress_level"],
                 key_prefix: str = _DEFAULTS["key_prefix"], scratch_cache_bytes: int = _DEFAULTS["scratch_cache_bytes"],
                 worker_process: bool = _DEFAULTS["worker_process"],
                 worker_stall_timeout: float = _DEFAULTS["worker_stall_timeout"]):
        # Every option is checked before any thread or folder exists: a bad one raises here, on the
        # caller's thread, instead of failing every table later on the worker.
        if not (all(callable(getattr(extractor, method, None)) for method in ("check", "device_stage", "host_stage"))
                and isinstance(getattr(extractor, "columns", None), Sequence)
                and not isinstance(extractor.columns, str)):
            raise TypeError(f"extractor: expected a registered extractor name or an object with check(), "
                            f"device_stage(), host_stage() and columns, got {extractor!r:.80}")
        SAMPLING_OPTIONS.check(num_samples=num_samples, policy=policy)
        PIPELINE_OPTIONS.check(seed=seed, hardest_by=hardest_by,  # hardest_by whatever the policy: a typo is a typo
                               max_pending_batches=max_pending_batches, pinned_pool_bytes=pinned_pool_bytes,
                               encode_workers=encode_workers, image_format=image_format, compress_level=compress_level,
                               scratch_cache_bytes=scratch_cache_bytes, worker_process=worker_process,
                               worker_stall_timeout=worker_stall_timeout)
        if key_prefix == "":
            raise ValueError("key_prefix: expected a relative key like 'samples', got ''")
        check_key(key_prefix, "key_prefix")
        if policy == "per_class" and not getattr(extractor, "has_class_per_sample", False):
            raise ValueError(f"policy: 'per_class' needs an extractor with one class per sample (classification), "
                             f"got {getattr(extractor, 'name', type(extractor).__name__)!r}")
        if num_samples is None and policy != "first":
            raise ValueError(f"num_samples: None (every sample) needs policy 'first', got policy {policy!r}")
        self.extractor = extractor
        self.key_prefix = key_prefix
        self._policy_args: dict[str, Any] = dict(policy=policy, num_samples=num_samples if num_samples is not None else 2**62,
                                 seed=seed, hardest_by=hardest_by,
                                 num_classes=getattr(extractor, "num_classes", None))
        make_policy(**self._policy_args)  # validate now, on the caller's thread
        self.stats = PipelineStats()
        # Counters are written by the training thread, the pipeline's thread and the worker process's
        # receiver thread: every update goes through ``_count``, under one lock.
        self._stats_lock = threading.Lock()
        self._warned_closed = False
        self.worker_stall_timeout = float(worker_stall_timeout)
        if encode_workers is None:
            encode_workers = default_encode_workers()
        self.pinned = PinnedPool(pinned_pool_bytes)
        self.encoder = EncoderPool(workers=encode_workers, image_format=image_format, compress_level=compress_level,
                                   cache_bytes=scratch_cache_bytes)
        self._process_options = dict(folder=self.encoder.folder, workers=encode_workers, image_format=image_format,
                                     compress_level=compress_level, cache_bytes=scratch_cache_bytes)
        self._worker_pipeline: WorkerPipeline | None = None
        if worker_process:
            try:  # starts the shared worker process now (not waiting for it), so it is up by the first eval
                self._worker_pipeline = WorkerPipeline(extractor, self._process_options, shared_bytes=pinned_pool_bytes)
            except Exception as error:  # noqa: BLE001 - e.g. an extractor holding a lock does not pickle
                log.warning("logbus: sample pipeline: the extractor cannot go to the worker process (%s: %s); "
                            "samples are processed on threads of the training process", type(error).__name__, error)
        self._arrived = threading.Condition()  # rows back from the worker process
        self._warned_in_process = False
        self._passes: dict[str, _Pass] = {}
        self._pass_counts: dict[str, int] = {}  # passes started per label: reservoir draws anew each pass
        # Unbounded queue, bounded batch count: a batch takes a slot or is dropped, while END and
        # STOP markers always go in, so the training thread never blocks on a full queue.
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._slots = None if max_pending_batches is None else threading.BoundedSemaphore(max_pending_batches)
        self._room_lock = threading.Lock()
        self._held_bytes = 0  # bytes of batches queued to the pipeline's thread and not yet done
        self._side_streams: dict[torch.device, torch.cuda.Stream] = {}
        self._closed = False
        self._abandon = threading.Event()  # set at the close deadline: the worker gives up what is left
        # Queued by the training thread, done (or given up) by the worker, each written by one thread
        # only: the difference is what close reports as left.
        self._batches_queued = self._batches_done = self._passes_queued = self._passes_done = 0
        self._worker = threading.Thread(target=self._run, name="logbus-samples", daemon=True)
        self._worker.start()

    # -- training thread -------------------------------------------------------------------------
    def submit(self, inputs: Any, targets: Any, outputs: Any, *, label: str = "eval") -> None:
        """Offers one (micro)batch. Raises on bad shapes; otherwise returns at once. After ``close`` the
        batch is not processed: it is counted (``batches_after_close``) and one warning says so, as the
        bus does for a record emitted after it closed (an eval after ``fit`` must not fail training)."""
        inputs, targets, outputs = self.extractor.check(inputs, targets, outputs)
        if self._closed:
            self._after_close("a batch")
            self._count(batches_after_close=1)
            return
        batch_size = int(outputs.shape[0])
        state = self._pass(label)
        policy = state.policy
        if not policy.wants(batch_size):
            policy.skip(batch_size)
            return
        # Room first, the choice after: a dropped batch must leave the policy as if it had not been
        # offered (no quota used, no winner evicted), or the table comes out short. Room is taken for
        # the most rows the policy can choose from this batch (``reservoir`` may take a whole batch,
        # then evict some of it within the same batch).
        rows = min(batch_size, self._policy_args["num_samples"]) if self._policy_args["policy"] == "first" else batch_size
        nbytes = sum(t.numel() // max(1, batch_size) * t.element_size() * rows for t in (inputs, targets, outputs))
        nbytes += 8 * rows + 4 * 16  # the sample ids, and each field's alignment in a shared buffer
        if not self._take_room(nbytes):  # the budget is spent: the only reason to drop
            self._count(batches_submitted=1, batches_dropped=1)
            policy.skip(batch_size)
            return
        first_id = policy.seen
        chosen = None if policy.on_device else policy.choose(batch_size)
        if policy.on_device:
            policy.seen += batch_size
        elif not chosen:
            self._give_back_room(nbytes)
            return
        self._count(batches_submitted=1)
        self._batches_queued += 1
        if outputs.is_cuda:
            # The device stage is issued now, on the side stream: the worker thread gets its results
            # (in pinned memory, or small device fields), never the batch tensors themselves.
            self._queue.put(_QueuedBatch(nbytes, state, self._issue_device_stage(
                state, inputs, targets, outputs, chosen, first_id)))
            return
        # A CPU batch: its chosen rows are copied here (one torch copy a tensor, which does not hold the
        # GIL; the caller may refill its tensors at once), and their device stage runs on the pipeline's
        # thread (torch ops, likewise), which hands the host fields to the worker process: the worker
        # imports no torch.
        self._queue.put(_QueuedBatch(nbytes, state, self._copy_rows(inputs, targets, outputs, chosen, first_id)))

    def _copy_rows(self, inputs: torch.Tensor, targets: torch.Tensor, outputs: torch.Tensor, chosen: list[int] | None,
                   first_id: int) -> _CpuBatch:
        """The ``chosen`` rows of a CPU batch (all of them for ``None``) copied into a buffer of the pool,
        reused from batch to batch: a fresh tensor a batch (freed later on another thread) costs the
        training thread a page fault every 4 KB, several times the copy itself."""
        batch_size = outputs.shape[0]
        sample_ids: np.ndarray
        if chosen is None or chosen == list(range(batch_size)):
            rows = [t.detach() for t in (inputs, targets, outputs)]
            sample_ids = np.arange(first_id, first_id + batch_size, dtype=np.int64)
        else:
            if chosen == list(range(len(chosen))):  # "first": a prefix, no index tensor
                rows = [t.detach()[:len(chosen)] for t in (inputs, targets, outputs)]
            else:
                index = torch.tensor(chosen, dtype=torch.long)
                rows = [t.detach().index_select(0, index) for t in (inputs, targets, outputs)]  # copies already
            sample_ids = np.asarray(chosen, dtype=np.int64) + first_id
        sizes = [tensor.numel() * tensor.element_size() for tensor in rows]
        offsets, size = packed_offsets(sizes)
        buffer = self.pinned.acquire(size, timeout=0) if all(t.device.type == "cpu" for t in rows) else None
        if buffer is None:  # larger than the whole budget (processed in parts later), or not plain CPU tensors
            copies = [t if t.data_ptr() != source.data_ptr() else t.clone() for t, source in
                      zip(rows, (inputs, targets, outputs))]
            return _CpuBatch(copies[0], copies[1], copies[2], sample_ids)
        views = []
        for tensor, start, nbytes in zip(rows, offsets, sizes):
            view = buffer[start:start + nbytes].view(tensor.dtype).view(tensor.shape)
            view.copy_(tensor)
            views.append(view)
        return _CpuBatch(views[0], views[1], views[2], sample_ids, buffer)

    def _issue_device_stage(self, state: _Pass, inputs, targets, outputs, chosen, first_id) -> _Issued:
        """On the training thread, for a CUDA batch: launches (never waits for) the side stream's work
        on it: selection, the extractor's fused kernels, and the copy into a pinned buffer (or, for a
        device policy, its running top-k). The inputs are recorded on the side stream, so the caching
        allocator does not hand their memory to the training stream's next batch before the side
        stream has read them: training drops its references at once and nothing holds batch tensors
        on the GPU while the worker catches up. Returns the worker's part: ``_CopiedToHost``,
        ``_OnDevice`` where no pinned buffer was free now (the worker copies them in parts; they are
        the converted rows, not the batch), ``_TakenByPolicy`` for a device policy, or
        ``_DeviceStageFailed``: a broken extractor must not raise into training."""
        stream = self._side_stream(outputs.device)
        try:
            # Everything the training stream queued so far (the batch's forward pass) comes first.
            stream.wait_stream(torch.cuda.current_stream(outputs.device))
            for tensor in (inputs, targets, outputs):
                if isinstance(tensor, torch.Tensor) and tensor.is_cuda:
                    tensor.record_stream(stream)
            with torch.cuda.stream(stream):
                fields = self._select_and_convert(inputs, targets, outputs, chosen, first_id)
                if state.policy.on_device:
                    state.policy.top.update(fields, state.policy.scores(fields))
                    return _TakenByPolicy()
                copied = self._copy_to_host(fields, stream, wait=False)
            if copied is None:
                return _OnDevice(fields)
            return _CopiedToHost(*copied)
        except Exception:  # noqa: BLE001 - reported by the worker, in order with the batch
            return _DeviceStageFailed(traceback.format_exc())

    def _take_room(self, nbytes: int) -> bool:
        """Room for a batch the pipeline's thread holds: a batch count (``max_pending_batches``, when
        set) and the byte budget. One batch always fits when nothing is held (it is copied in parts)."""
        if self._slots is not None and not self._slots.acquire(blocking=False):
            return False
        with self._room_lock:
            if self._held_bytes and self._held_bytes + nbytes > self.pinned.max_bytes:
                if self._slots is not None:
                    self._slots.release()
                return False
            self._held_bytes += nbytes
            return True

    def _give_back_room(self, nbytes: int) -> None:
        with self._room_lock:
            self._held_bytes -= nbytes
        if self._slots is not None:
            self._slots.release()

    def end_pass(self, label: str = "eval", step: int | None = None) -> Future:
        """Closes the pass for ``label``; the future gets its ``Table`` (or None if it was dropped)."""
        future: Future = Future()
        state = self._passes.pop(label, None)
        if self._closed:  # no thread is left to build it (its batches were not processed either)
            self._after_close("the end of a pass")
            self._count(tables_dropped=1)
            future.set_result(None)
            return future
        if state is None:
            future.set_result(None)
            return future
        self._passes_queued += 1
        self._queue.put(_QueuedPassEnd(label, state, step, future))
        return future

    @property
    def worker_pid(self) -> int | None:
        """The pid of the worker process doing this pipeline's per-sample work (None: in-process)."""
        return self._worker_pipeline.process.pid if self._worker_pipeline is not None and self._worker_pipeline.ready() else None

    def table_record(self, label: str = "eval", step: int | None = None) -> Deferred:
        """``end_pass`` as a record to emit on the bus: once every backend has taken the table, its
        scratch files are released (deleted, past ``scratch_cache_bytes``), not kept until close."""
        future = self.end_pass(label, step=step)
        record = Deferred(Table, future)
        record.on_released(lambda: future.add_done_callback(self._release_table))
        return record

    def _release_table(self, future: Future) -> None:
        table = future.result() if not future.cancelled() and future.exception() is None else None
        if table is not None:
            self.release_rows(table.rows)

    def release_rows(self, rows) -> None:
        """Gives back the scratch files of ``rows`` (image cells of this pipeline's tables)."""
        if isinstance(rows, ColumnRows):  # made where no image becomes a file: nothing to give back
            return
        # An image cell without a file (pixels, from a pipeline that makes none) has nothing to give back.
        paths = [path for row in rows for cell in row if isinstance(cell, (Image, PendingImage))
                 and (path := _file_of(cell)) is not None]
        # and the mask files the worker process wrote for them (``Mask.path``), counted the same way
        paths += [path for row in rows for cell in row if isinstance(cell, Image)
                  for mask in cell.masks.values() if (path := mask.path) is not None]
        if self._worker_pipeline is not None:
            self._worker_pipeline.release(paths)  # the worker process's encoder counts the files it wrote
        for path in paths:  # and the in-process one its own (a path it does not know is left alone)
            self.encoder.release(path)

    def discard_pass(self, label: str = "eval") -> None:
        """Forgets the unfinished pass of ``label`` (an eval that raised half-way), so that the next
        batch starts a new pass instead of continuing the old one's sample ids and quota."""
        self._passes.pop(label, None)

    def _count(self, **increments: int) -> None:
        """Adds to ``stats`` counters, under the one lock every thread that counts takes."""
        with self._stats_lock:
            for name, increment in increments.items():
                setattr(self.stats, name, getattr(self.stats, name) + increment)

    def _after_close(self, what: str) -> None:
        if not self._warned_closed:
            self._warned_closed = True
            log.warning("logbus: sample pipeline: %s came after the pipeline was closed; it is not processed "
                        "(counted in its stats)", what)

    def _pass(self, label: str) -> _Pass:
        state = self._passes.get(label)
        if state is None:
            # Checked when a pass starts, on the caller's thread: the table is built later, on the
            # worker, where a name no backend can store would lose the whole pass.
            check_key(f"{self.key_prefix}/{check_name(label, 'label')}", "label")
            pass_index = self._pass_counts[label] = self._pass_counts.get(label, -1) + 1
            state = self._passes[label] = _Pass(make_policy(**self._policy_args, pass_index=pass_index))
            state.policy.start_pass()
        return state

    def close(self, timeout: float = CLOSE_TIMEOUT) -> bool:
        """Finishes queued work within ``timeout`` seconds and stops the worker; what is not done by
        then is given up (its tables resolve to ``None``) and reported. Encoded files stay until
        ``cleanup``. Returns whether everything queued was done."""
        if self._closed:
            return not self._worker.is_alive()
        self._closed = True
        self._queue.put(_Stop())
        self._worker.join(max(0.0, timeout))
        finished = not self._worker.is_alive()
        if not finished:
            # The worker may be inside a long host stage: from its next item on it only gives up.
            self._abandon.set()
        with self._stats_lock:
            self.stats.encoded, self.stats.reused = self.encoder.encoded, self.encoder.reused
            if self._worker_pipeline is not None:
                self.stats.encoded += self._worker_pipeline.counters[0]
                self.stats.reused += self._worker_pipeline.counters[1]
            self.stats.pinned_peak_bytes = self.pinned.peak_bytes
        stats = self.stats
        if stats.batches_lost:
            log.warning("logbus: sample pipeline: %d batch(es) were lost with a worker process that died",
                        stats.batches_lost)
        if stats.batches_dropped or stats.tables_dropped or stats.errors or not finished:
            # Drops are by design (training never waits for samples), but never silent: said once, here.
            log.warning("logbus: sample pipeline: %d of %d batches dropped because the worker was behind "
                        "(its memory budget, pinned_pool_bytes, was spent), %d table(s) lost to %d error(s)%s",
                        stats.batches_dropped, stats.batches_submitted, stats.tables_dropped, stats.errors,
                        "" if finished else "; not done by the close deadline: "
                        f"{self._batches_queued - self._batches_done} batch(es) and "
                        f"{self._passes_queued - self._passes_done} table(s) were left")
        return finished

    def cleanup(self, timeout: float = CLOSE_TIMEOUT) -> None:
        """Closes (within ``timeout``) and deletes encoded files; call once every backend has taken the
        tables (after the bus closed)."""
        started = time.monotonic()
        finished = self.close(timeout)
        if self._worker_pipeline is not None:
            self._worker_pipeline.close(timeout - (time.monotonic() - started))
        self.encoder.close(wait=finished and time.monotonic() - started < timeout)

    # -- worker ----------------------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if type(item) is _Stop:
                return
            if self._abandon.is_set():
                self._give_up(item)
                continue
            future = item.future if type(item) is _QueuedPassEnd else None
            try:
                if type(item) is _QueuedBatch:
                    try:
                        self._process_batch(item.state, item.work)
                    finally:
                        self._batches_done += 1
                        self._give_back_room(item.nbytes)
                        item = None  # drop the batch tensors now, not at the next get()
                else:
                    try:
                        self._finish_pass(item.label, item.state, item.step, item.future)
                    finally:
                        self._passes_done += 1
            except Exception:  # noqa: BLE001 - a broken extractor must not kill training
                self._count(errors=1)
                if self.stats.errors == 1 and not self._abandon.is_set():
                    log.error("logbus: sample pipeline failed; samples of this batch are lost.\n%s",
                              traceback.format_exc())
                if future is not None and not future.done():
                    self._count(tables_dropped=1)
                    future.set_result(None)

    def _give_up(self, item: _QueuedBatch | _QueuedPassEnd) -> None:
        """After the close deadline: nothing more is processed; tables resolve to ``None``."""
        if isinstance(item, _QueuedBatch):
            self._batches_done += 1
            self._give_back_room(item.nbytes)
            work = item.work
            if isinstance(work, (_CopiedToHost, _CpuBatch)) and work.buffer is not None:
                self.pinned.release(work.buffer)
        else:
            self._passes_done += 1
            self._count(tables_dropped=1)
            if not item.future.done():
                item.future.set_result(None)

    def _side_stream(self, device: torch.device) -> torch.cuda.Stream:
        # One side stream per device for both threads (the training thread issues, the worker copies
        # top-k results and late chunks): their work on a device must stay in one stream's order.
        with self._room_lock:
            if device not in self._side_streams:
                self._side_streams[device] = torch.cuda.Stream(device=device)
            return self._side_streams[device]

    def _process_batch(self, state: _Pass, work: _CpuBatch | _Issued) -> None:
        if type(work) is _CpuBatch:  # its device stage runs here (torch ops, without the GIL)
            try:
                self._device_stage(state, work)
            finally:
                if work.buffer is not None:
                    self.pinned.release(work.buffer)
        elif type(work) is _DeviceStageFailed:
            raise RuntimeError(f"the device stage failed when the batch was submitted:\n{work.traceback}")
        elif type(work) is _CopiedToHost:
            try:
                work.done.synchronize()  # an event, not stream.synchronize() (a stall in sync-debug mode)
                self._rows_of(work.host, state)
            finally:
                self.pinned.release(work.buffer)
        elif type(work) is _OnDevice:
            stream = self._side_stream(next(iter(work.fields.values())).device)
            with torch.cuda.stream(stream):
                self._rows_from_device(work.fields, stream, state)

    def _device_stage(self, state: _Pass, batch: _CpuBatch) -> None:
        """A CPU batch's rows on the pipeline's thread: the extractor's device stage, then either the
        device policy's running top-k or the host stage."""
        fields = self.extractor.device_stage(batch.inputs, batch.targets, batch.outputs)
        fields["sample_id"] = torch.from_numpy(batch.sample_ids)
        if not state.policy.on_device:
            self._rows_from_device(fields, None, state)
            return
        state.policy.top.update(fields, state.policy.scores(fields))

    def _select_and_convert(self, inputs, targets, outputs, chosen, first_id) -> dict[str, torch.Tensor]:
        """The chosen rows (all of them for device policies) through the extractor's device stage,
        with their sample ids; on CUDA, called under the side stream."""
        device = outputs.device
        if chosen is not None and len(chosen) != outputs.shape[0]:
            if chosen == list(range(len(chosen))):
                select = slice(0, len(chosen))  # "first": a view, no index tensor to upload
                inputs, targets, outputs = inputs[select], targets[select], outputs[select]
            else:
                index = _to_device(torch.tensor(chosen, dtype=torch.long), device)
                inputs, targets, outputs = (t.index_select(0, index.to(t.device)) for t in (inputs, targets, outputs))
            sample_ids = np.asarray(chosen, dtype=np.int64) + first_id
        else:
            sample_ids = np.arange(first_id, first_id + outputs.shape[0], dtype=np.int64)
        fields = self.extractor.device_stage(inputs, targets, outputs)
        fields["sample_id"] = _to_device(torch.from_numpy(sample_ids), device)
        return fields

    def _rows_from_device(self, fields: dict[str, torch.Tensor], stream, state: _Pass, keeps=None) -> None:
        """Copies ``fields`` to the host (pinned buffers, on the side stream) and runs the host stage,
        in row chunks that each fit the pinned budget: a batch or a pass's top-k larger than the budget
        is split, never lost. ``keeps(scores)``: the device policy's mask of real rows."""
        parts = [fields] if stream is None else _row_chunks(fields, self.pinned.max_bytes)
        for part in parts:
            buffer = None
            if stream is None:
                host = {k: v.numpy() for k, v in part.items()}
            else:
                host, buffer, done = self._copy_to_host(part, stream)
                done.synchronize()  # an event, not stream.synchronize() (a stall in sync-debug mode)
            try:
                if keeps is not None:
                    keep = keeps(host.pop("_score"))
                    host = {k: v[keep] for k, v in host.items()}
                self._rows_of(host, state)
            finally:
                if buffer is not None:
                    self.pinned.release(buffer)

    def _copy_to_host(self, fields: dict[str, torch.Tensor], stream, wait: bool = True):
        """Queues the copy of ``fields`` into one pinned buffer on ``stream``: (arrays, buffer, event),
        valid once the event is done. ``wait=False`` (the training thread): None at once when no
        buffer is free, instead of waiting for one."""
        tensors = {name: tensor.contiguous() for name, tensor in fields.items()}
        sizes = [tensor.numel() * tensor.element_size() for tensor in tensors.values()]
        offsets, offset = packed_offsets(sizes)
        layout = [(name, tensor, start, nbytes) for (name, tensor), start, nbytes in zip(tensors.items(), offsets, sizes)]
        if not wait:
            if offset > self.pinned.max_bytes:
                return None
            buffer = self.pinned.acquire(offset, timeout=0)
            if buffer is None:
                return None
        else:
            buffer = self.pinned.acquire(offset, timeout=60.0)
        if buffer is None:
            raise RuntimeError(f"pinned pool exhausted ({self.pinned.max_bytes} bytes) for a {offset}-byte batch")
        host = {}
        for name, tensor, start, nbytes in layout:
            view = buffer[start:start + nbytes].view(tensor.dtype).view(tensor.shape)
            view.copy_(tensor, non_blocking=True)
            host[name] = view
        return {k: v.numpy() for k, v in host.items()}, buffer, _record(stream)

    def _ready_worker_pipeline(self) -> WorkerPipeline | None:
        """The worker process with this pipeline's extractor loaded; None where there is none (yet)."""
        host = self._worker_pipeline
        if host is None:
            return None
        ready = host.ready()
        if ready is False and not self._warned_in_process:
            self._warned_in_process = True
            log.warning("logbus: sample pipeline: the worker process cannot run the extractor (%s); samples are "
                        "processed on threads of the training process", host.error)
        return host if ready else None

    def keep_scratch_in(self, parent: str) -> bool:
        """Moves the scratch folder of encoded files under ``parent`` (see ``EncoderPool.move``), before
        the first batch: called when the pipeline is joined to a bus whose backend names a folder on
        its own filesystem (``scratch_folder``). Returns False, changing nothing, once the worker
        process has this pipeline's folder or files have been encoded."""
        if self._worker_pipeline is not None and self._worker_pipeline.opened:
            return False
        if not self.encoder.move(parent):
            return False
        # The same dict the WorkerPipeline sends when it opens the pipeline in the worker process.
        self._process_options["folder"] = self.encoder.folder
        self._process_options["mask_files"] = True  # that backend links mask files too (with their overlays)
        return True

    def make_image_files(self, needed: bool) -> bool:
        """Whether images become files (``needed``: a backend on the buses reads ``Image.path``,
        ``BackendCapabilities.needs_image_files``) or go to the table as pixels with their content
        hash, with no file made. Set before the first batch; returns False, changing nothing, once
        the worker process has this pipeline or images were handed to the encoder."""
        if self._worker_pipeline is not None and self._worker_pipeline.opened:
            return False
        if not self.encoder.set_image_files(needed):
            return False
        self._process_options["image_files"] = needed
        if not needed:  # no backend reads mask files either (the local store takes the ids)
            self._process_options["mask_files"] = False
        return True

    def worker_ready(self, timeout: float) -> bool:
        """Waits up to ``timeout`` seconds for the worker process to be up with this pipeline's
        extractor (a benchmark's warm-up; batches never wait for it: until then they are processed on
        threads of the training process). False where there is no worker process."""
        return self._worker_pipeline is not None and bool(self._worker_pipeline.ready(timeout))

    def _rows_of(self, host: dict[str, np.ndarray], state: _Pass) -> None:
        process = self._ready_worker_pipeline()
        if process is not None and sum(a.nbytes for a in host.values()) > process.shared.max_bytes:
            parts = _row_chunks(host, process.shared.max_bytes)
            if len(parts) > 1:  # larger than the budget: in parts
                for part in parts:
                    self._rows_of(part, state)
                return
            process = None  # one sample alone larger than the whole budget: done here, not lost
        if process is not None:
            ids = host["sample_id"].tolist()
            with self._arrived:
                state.outstanding += 1
            try:
                sent = process.submit(host, functools.partial(self._rows_arrived, state, ids),
                                      wait=self.worker_stall_timeout)
            except OSError as error:  # shared memory could not be created: do it here from now on
                log.warning("logbus: sample pipeline: no shared memory for the worker process (%s); samples are "
                            "processed on threads of the training process", error)
                process.error, sent = f"{type(error).__name__}: {error}", Sent.BROKEN
                self._warned_in_process = True  # said once, here
            if sent is Sent.SENT:
                return
            with self._arrived:
                state.outstanding -= 1
            if sent is Sent.FULL:  # the shared-memory budget is exhausted: the only reason to drop here
                self._count(batches_dropped=1)
                return
        self._count(batches_in_process=1)
        rows = state.rows
        new_rows = self.extractor.host_stage(host, self.encoder.encode)
        self.encoder.flush()
        for sample_id, row in zip(host["sample_id"].tolist(), new_rows):
            rows[sample_id] = row
        self._count(samples_processed=len(new_rows))

    def _column_table(self, state: _Pass, kept: Any, in_pass_order: bool) -> ColumnRows | None:
        """The pass's rows as one ``ColumnRows``, where every batch came back as columns (None: not so):
        the policy's kept rows, in pass order where it keeps that order, by whole-array operations."""
        if state.rows or not state.columns or list(state.columns[0][1].columns) != list(self.extractor.columns):
            return None
        ids = np.concatenate([ids for ids, _ in state.columns])
        if len(np.unique(ids)) != len(ids):  # a sample twice (the latest wins, as rows do): the row path
            return None
        order: np.ndarray = np.arange(len(ids))
        if kept is not None:
            order = order[np.isin(ids, np.fromiter(kept, np.int64, len(kept)))]
        if in_pass_order:
            order = order[np.argsort(ids[order], kind="stable")]
        rows = ColumnRows.concat([part for _, part in state.columns])
        return rows if len(order) == len(ids) and (order == np.arange(len(ids))).all() else rows.take(order)

    def _rows_arrived(self, state: _Pass, ids: list[int], rows: list | None, error: str | None) -> None:
        """From the worker process's receiver thread: one batch's rows, its error, or its loss."""
        with self._arrived:
            if state.given_up:  # counted lost when its table went without it: its files are not needed
                if rows is not None:
                    self.release_rows(rows)
                return
            if isinstance(rows, ColumnRows):
                state.columns.append((np.asarray(ids, np.int64), rows))
                self._count(samples_processed=len(rows))
            elif rows is not None:
                state.rows.update(zip(ids, rows))
                self._count(samples_processed=len(rows))
            elif error is not None:
                self._count(errors=1)
                if self.stats.errors == 1:
                    log.error("logbus: sample pipeline failed; samples of this batch are lost.\n%s", error)
            else:
                self._count(batches_lost=1)
            state.outstanding -= 1
            self._arrived.notify_all()

    def _wait_for_worker(self, state: _Pass) -> None:
        """Waits for the rows the worker process still owes this pass, as long as it answers: once it
        has answered nothing for ``worker_stall_timeout`` seconds (hung, stopped, starved), the batches
        it holds are counted lost and the table goes without them. A table the bus holds in its ordered
        queue (``Deferred``) must not hold the metrics behind it for longer than that."""
        started = time.monotonic()
        with self._arrived:
            while state.outstanding and not self._abandon.is_set():
                self._arrived.wait(0.1)
                host = self._worker_pipeline
                if host is None or not state.outstanding:
                    continue
                silent = time.monotonic() - max(started, host.process.last_answer)
                if silent > self.worker_stall_timeout:
                    state.given_up = True
                    lost, state.outstanding = state.outstanding, 0
                    self._count(batches_lost=lost)
                    log.warning("logbus: sample pipeline: the worker process (pid %s) answered nothing for %.3g s "
                                "(worker_stall_timeout); %d batch(es) of this table are counted lost and it is "
                                "logged without them", host.process.pid, silent, lost)
            if state.outstanding:
                raise RuntimeError("the sample pipeline was closed before the worker process sent this table's rows")

    def _finish_pass(self, label: str, state: _Pass, step: int | None, future: Future) -> None:
        policy, rows = state.policy, state.rows
        if policy.on_device and policy.top.fields is not None:
            fields = policy.top.fields
            if next(iter(fields.values())).is_cuda:
                stream = self._side_stream(next(iter(fields.values())).device)
                with torch.cuda.stream(stream):
                    self._rows_from_device(fields, stream, state, keeps=policy.keeps)
            else:
                self._rows_from_device(fields, None, state, keeps=policy.keeps)
        self._wait_for_worker(state)
        kept = policy.kept()
        columns = self.extractor.columns
        table_rows: Sequence[Sequence[Any]] | None = self._column_table(state, kept, policy.rows_in_pass_order)
        if table_rows is None:
            for ids_part, part in state.columns:  # rows made as columns and as rows in one pass: all as rows
                rows.update(zip(ids_part.tolist(), part.rows()))
            ids = [i for i in rows if kept is None or i in kept]
            if kept is not None:  # converted, then evicted by a later winner: their files are not needed
                self.release_rows([rows[i] for i in rows if i not in kept])
            if policy.rows_in_pass_order:
                ids.sort()
            table_rows = [[cell.resolve() if isinstance(cell, PendingImage) else cell for cell in rows[i]] for i in ids]
        # "id" is the sample's place in the eval pass: the same sample at every eval of a fixed eval
        # set (a backend checks the content before it refers to an earlier eval's images).
        table = Table(f"{self.key_prefix}/{label}", columns, table_rows, step,
                      join_key="id" if "id" in columns else None)
        self._count(rows_logged=len(table_rows), tables_logged=1)
        future.set_result(table)


def default_encode_workers() -> int:
    """Encoders for one pipeline when ``encode_workers`` is ``None``: the cores this process may run on
    (its CPU affinity, not the host's count: a container or a job scheduler gives it fewer), shared
    among the ranks of this node (``LOCAL_WORLD_SIZE``, set by torchrun and Composer's launcher)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # no affinity on this platform
        cores = os.cpu_count() or 1
    try:
        ranks = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    except ValueError:
        ranks = 1
    return max(1, cores // ranks)


def _row_chunks(fields: dict[str, Any], max_bytes: int) -> list[dict[str, Any]]:
    """``fields`` (tensors or arrays, batch first) split by rows into parts of at most ``max_bytes``
    each, counting the 16-byte alignment of every field; a single row is never split."""
    rows = len(next(iter(fields.values())))
    row_bytes = sum((value.nbytes if isinstance(value, np.ndarray) else value.numel() * value.element_size())
                    // max(1, rows) + 16 for value in fields.values())
    per_part = max(1, max_bytes // max(1, row_bytes))
    if per_part >= rows:
        return [fields]
    return [{name: value[start:start + per_part] for name, value in fields.items()}
            for start in range(0, rows, per_part)]


def _to_device(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A small host tensor on ``device`` without a synchronising pageable copy."""
    if device.type != "cuda":
        return tensor
    return tensor.pin_memory().to(device, non_blocking=True)


def _record(stream) -> Any:
    if stream is None:
        return None
    event = torch.cuda.Event()
    event.record(stream)
    return event


def place_scratch(buses: Sequence[Any], pipeline: SamplePipeline) -> bool:
    """Decides, before the first batch, whether the pipeline makes a file per image: only where a
    backend on ``buses`` reads them (``needs_image_files``, True where a backend does not say). Where
    one does, puts the scratch folder where the first backend that asks for one (``scratch_folder()``,
    on its run folders' filesystem) can link files rather than copy them. Returns whether it moved;
    where no backend asks, or it is too late, it stays (``/dev/shm``)."""
    backends = [backend for bus in buses for backend in getattr(bus, "backends", {}).values()]
    needed = any(getattr(backend, "needs_image_files", True) for backend in backends)
    pipeline.make_image_files(needed)
    if not needed:
        return False
    for backend in backends:
        folder = getattr(backend, "scratch_folder", None)
        if callable(folder):
            return pipeline.keep_scratch_in(folder())
    return False


def _file_of(cell: Image | PendingImage) -> str | None:
    """The scratch file an image cell refers to, if it has one."""
    path = cell.path
    return path if path is None or isinstance(path, str) else path.path


def cleanup_within_close(bus: Any, pipeline: SamplePipeline) -> None:
    """The bus's close callback for a pipeline: its cleanup gets what is left of the close deadline,
    so ``close(timeout)`` with a sample stream returns within its timeout."""
    left = bus.time_left()
    pipeline.cleanup(CLOSE_TIMEOUT if left is None else left)


def pipeline_for(extractor: str | Extractor, extractor_options: Mapping[str, Any] | None = None,
                 **pipeline_options: Any) -> SamplePipeline:
    """A pipeline for an extractor given by registered name (``logbus plugins`` lists them) or object."""
    if isinstance(extractor, str):
        from logbus.bus import create_extractor

        extractor = create_extractor(extractor, also_known=(*PIPELINE_OPTIONS, *SAMPLING_OPTIONS),
                                     **dict(extractor_options or {}))
    elif extractor_options:
        raise TypeError("extractor_options: only for an extractor given by name")
    return SamplePipeline(extractor, **pipeline_options)

