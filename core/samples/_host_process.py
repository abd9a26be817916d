"""The per-sample half of the sample pipeline, in a worker process: the training process's GIL stays free.

Building rows, hashing, encoding and writing image files cost tens of µs a sample in Python. In the
training process that time holds the GIL the training thread needs, whichever thread spends it.
So each pipeline's worker thread hands a batch's host fields to a worker process: one copy into a
shared-memory buffer and one small message per batch. The process runs the extractor's host stage
with an encoder pool of its own per pipeline (threads: Pillow's PNG encoder releases the GIL
there), waits for the batch's files, and sends back finished rows whose image cells are paths in the
pipeline's scratch folder. Releases of scratch files go there too: its encoder pool counts who
refers to them.

One process serves every pipeline of the training process. It is started once, at the first
pipeline, as a fresh interpreter (``python -c``; neither fork, which is unsafe once CUDA is
initialised, nor multiprocessing's spawn, which would re-run a user's unguarded training script in
the child), and talks over a socket pair. Extractors are sent pickled: one whose class cannot be
imported there (defined in ``__main__``, say) or that does not pickle (holds a lock) is run on
threads of the training process instead, with a warning. If the process dies (killed, out of
memory), the batches it held are counted as lost, one warning says so, and a new one is started
(at most ``MAX_RESTARTS`` times; after that pipelines do their work in the training process).
"""

from __future__ import annotations

import atexit
import functools
import itertools
import logging
import os
import pickle
import queue
import socket
import subprocess
import sys
import threading
import time
import traceback
from multiprocessing.connection import Connection
from typing import Any, Callable

import numpy as np

from logbus.records import ColumnRows
from logbus.samples._shared_pool import SharedPool
from logbus.samples._worker_protocol import (
    Batch,
    BatchDone,
    ClosePipeline,
    Field,
    Forget,
    OpenPipeline,
    PipelineClosed,
    PipelineOpened,
    Release,
    Sent,
    packed_offsets,
)

log = logging.getLogger("logbus")

MAX_RESTARTS = 3
MAX_ATTACHED = 16  # shared buffers the process keeps mapped
SHARED_WAIT_SECONDS = 60.0  # how long a batch waits for a free shared buffer before it is dropped
STOP_SECONDS = 10.0  # a stopped worker that has not ended by then (hung, SIGSTOPped) is killed

# on_done(rows, error text): rows on success; error text on failure; both None: lost with the process.
Done = Callable[[list | ColumnRows | None, str | None], None]


class _Process:
    """The worker process shared by every pipeline, and the threads that talk to it.

    Nothing is sent on the socket by a caller's thread: messages go to an outbox that a sender thread
    of its own writes out. A worker that does not read (hung, stopped, busy) then fills the socket
    and blocks that thread alone; the lock the training thread's next batch needs is only ever held
    for bookkeeping, never across a send."""

    def __init__(self):
        self._lock = threading.Lock()  # the in-flight table, the outbox, restarts
        self._in_flight: dict[int, tuple[SharedPool, Any, Done]] = {}
        self._opening: dict[int, tuple[threading.Event, list]] = {}
        self._closing: dict[int, threading.Event] = {}  # pipelines whose files the process is deleting
        self._numbers = itertools.count()
        self.counters: dict[int, tuple[int, int, int]] = {}  # pipeline key -> encoded, reused, deleted
        self.restarts = 0
        self.generation = 0  # bumped at each restart: pipelines opened before must open again
        self.broken = False
        self.stopped = False  # the last pipeline closed: the process was asked to end, not restarted
        self.last_answer = time.monotonic()  # when the process last answered (a hung one stops answering)
        self._start()

    def _start(self) -> None:
        ours, theirs = socket.socketpair()
        # -I: isolated (no PYTHON* variables, no user site, and neither the current directory nor the
        # script's own on sys.path): a ``queue.py`` in the training script's working directory must not
        # shadow the standard library in here. The training process's import path follows, after the
        # interpreter's own, without its working directory, so that logbus and the extractor's plugin
        # import as they do there and nothing there shadows a module the worker needs.
        working_directory = os.path.abspath(os.getcwd())
        paths = [path for path in sys.path if path and os.path.abspath(path) != working_directory]
        bootstrap = ("import sys; sys.path.extend(p for p in sys.argv[1:] if p not in sys.path); "
                     f"from logbus.samples._host_process import serve; serve({theirs.fileno()})")
        command = [sys.executable, "-I", "-c", bootstrap, *paths]
        # Its own session: a Ctrl-C in the terminal goes to training, which then closes the pipeline.
        self.popen = subprocess.Popen(command, pass_fds=(theirs.fileno(),), start_new_session=True)
        theirs.close()
        self._connection = Connection(ours.detach())
        self._outbox: queue.SimpleQueue = queue.SimpleQueue()
        self._sender = threading.Thread(target=self._send_all, args=(self._connection, self._outbox),
                                        name="logbus-host-sender", daemon=True)
        self._sender.start()
        self._receiver = threading.Thread(target=self._receive, args=(self._connection, self.popen),
                                          name="logbus-host-receiver", daemon=True)
        self._receiver.start()

    @property
    def pid(self) -> int:
        return self.popen.pid

    @staticmethod
    def _send_all(connection: Connection, outbox: queue.SimpleQueue) -> None:
        """The sender thread: writes the outbox to the socket until the stop marker (None) or until
        the process is gone (its receiver then counts what it held as lost)."""
        while True:
            message = outbox.get()
            if message is None:
                break
            try:
                connection.send(message)
            except (OSError, ValueError):  # the process is gone, or the connection was closed
                break
        # Shuts the sending half only: the worker reads EOF and ends, while the receiver thread still
        # reads to the end (it closes the connection; closing it here would pull it from under it).
        try:
            with socket.socket(fileno=os.dup(connection.fileno())) as half:
                half.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    def send(self, message: Any) -> bool:
        """Queues ``message`` for the sender thread and returns at once; False if the process is gone."""
        with self._lock:
            return self._send_locked(message)

    def _send_locked(self, message: Any) -> bool:
        if self.broken or self.stopped:
            return False
        self._outbox.put(message)
        return True

    def stop(self) -> None:
        """The last pipeline closed: the worker is asked to end (its socket closes after what is queued)
        and, if it has not within ``STOP_SECONDS`` (hung, stopped), is killed. Its shared memory and
        its 100s of MB go with it."""
        with self._lock:
            if self.stopped:
                return
            self.stopped = True
            self._outbox.put(None)
        popen = self.popen

        def reap() -> None:
            try:
                popen.wait(STOP_SECONDS)
            except subprocess.TimeoutExpired:
                popen.kill()
                popen.wait()

        threading.Thread(target=reap, name="logbus-host-reaper", daemon=True).start()

    def open(self, key: int, extractor: bytes, options: dict[str, Any]) -> tuple[int, threading.Event, list]:
        """Sends a pipeline's extractor to the process without waiting: (generation, event, answer);
        once ``event`` is set, ``answer[0]`` is the error (None: loaded)."""
        done, answer = threading.Event(), []
        with self._lock:
            if self.broken or self.stopped:
                answer.append("the worker process could not be restarted" if self.broken
                              else "the worker process was stopped")
                done.set()
            else:
                self._opening[key] = (done, answer)
                # Files of a process that died are left to their tables; the new one names its own apart.
                options = dict(options, prefix=f"w{self.generation}-")
                self._send_locked(OpenPipeline(key, extractor, options))
            return self.generation, done, answer

    def close_pipeline(self, key: int) -> threading.Event:
        """Asks the process to forget a pipeline and delete the scratch files it wrote for it; the
        event is set once it has (or once the process is gone)."""
        done = threading.Event()
        with self._lock:
            self._closing[key] = done
            if not self._send_locked(ClosePipeline(key)):
                del self._closing[key]
                done.set()
        return done

    def submit(self, key: int, generation: int | None, pool: SharedPool, buffer: Any, layout: tuple[Field, ...],
               on_done: Done) -> Sent:
        """A batch's host fields (numpy, in ``buffer``) for the host stage. A ``generation`` other than the
        live process's (None: the pipeline never opened) is ``Sent.BROKEN``."""
        with self._lock:
            if self.broken or self.stopped or generation != self.generation:
                return Sent.BROKEN
            number = next(self._numbers)
            self._in_flight[number] = (pool, buffer, on_done)
            self._send_locked(Batch(key, number, buffer.name, layout))
        return Sent.SENT

    def _restart_locked(self, popen: subprocess.Popen, exit_code: int, lost: int) -> None:
        restart = self.restarts < MAX_RESTARTS
        log.warning("logbus: the sample pipelines' worker process (pid %s) ended with exit code %s; %d batch(es) "
                    "it held are lost; %s", popen.pid, exit_code, lost,
                    "starting a new one" if restart else "from now on samples are processed in the training process")
        started = False
        if restart:
            self.restarts += 1
            try:
                self._start()
                started = True
            except Exception:  # noqa: BLE001 - no new process: the pipelines do the work themselves
                log.exception("logbus: could not start a new worker process for the sample pipelines")
        self.generation += 1
        self.broken = not started

    # -- receiver thread -------------------------------------------------------------------------
    def _receive(self, connection: Connection, popen: subprocess.Popen) -> None:
        while True:
            try:
                message = connection.recv()
            except (EOFError, OSError):
                break
            self.last_answer = time.monotonic()
            if type(message) is PipelineClosed:
                with self._lock:
                    closed = self._closing.pop(message.key, None)
                if closed is not None:
                    closed.set()
            elif type(message) is PipelineOpened:
                with self._lock:
                    waiting = self._opening.pop(message.key, None)
                if waiting is not None:
                    waiting[1].append(message.error)
                    waiting[0].set()
            elif type(message) is BatchDone:
                self.counters[message.key] = message.counters
                with self._lock:
                    entry = self._in_flight.pop(message.number, None)
                if entry is not None:
                    pool, buffer, on_done = entry
                    try:  # before the buffer is reused: rows made as columns copy their pixels out of it
                        on_done(message.rows, message.error)
                    finally:
                        pool.release(buffer)
        try:
            connection.close()
        except OSError:
            pass
        self._lost(popen)

    def _lost(self, popen: subprocess.Popen) -> None:
        """The process ended: every batch it held is lost; a new one is started. Under the lock
        throughout, so that nothing is sent to the dead one's socket meanwhile."""
        try:
            exit_code = popen.wait(5.0)
        except subprocess.TimeoutExpired:
            popen.kill()
            exit_code = popen.wait()
        with self._lock:
            lost, self._in_flight = self._in_flight, {}
            opening, self._opening = self._opening, {}
            closing, self._closing = self._closing, {}
            for closed in closing.values():  # nothing more will be deleted there: nobody waits for it
                closed.set()
            if _exiting:
                return
            if not self.stopped:  # else asked to end: no warning, nothing to restart
                self._restart_locked(popen, exit_code, len(lost))
        for done, answer in opening.values():
            answer.append("the worker process ended while loading the extractor")
            done.set()
        for pool, buffer, on_done in lost.values():
            pool.release(buffer)
            on_done(None, None)


_shared: _Process | None = None
_shared_lock = threading.Lock()
_keys = itertools.count()
_exiting = False


_users = 0  # open WorkerPipelines: the process is stopped when the last one closes


def _attach_process() -> _Process:
    """The shared worker process, started if there is none (or the last one was stopped), for one
    more pipeline; give it back with ``_detach_process``."""
    global _shared, _users
    with _shared_lock:
        if _shared is None:
            _shared = _Process()
        _users += 1
        return _shared


def _detach_process(process: _Process) -> None:
    """One pipeline less; the last one stops the process (a later pipeline starts a new one), so a
    worker never outlives the runs that use it, nor keeps their shared memory mapped."""
    global _shared, _users
    with _shared_lock:
        if process is not _shared:
            return  # stopped already (a pipeline of an earlier process generation)
        _users -= 1
        if _users > 0:
            return
        _shared = None
    process.stop()


@atexit.register
def _stop_at_exit() -> None:
    # The process sees its socket close and ends by itself; this keeps that expected end quiet.
    global _exiting
    _exiting = True


class WorkerPipeline:
    """One pipeline's handle on the worker process.

    :param extractor: the pipeline's extractor (sent pickled).
    :param encoder_options: ``EncoderPool`` keywords for the pipeline's pool there (``folder`` included).
    :param shared_bytes: cap on this pipeline's shared memory for batches in flight.

    Construction starts the process if needed and does not wait for it: until the process has
    loaded the extractor (``ready``), the pipeline does the work on its own threads rather than let
    batches wait. Raises ``TypeError`` or ``pickle.PicklingError`` at once if the extractor does not
    pickle.
    """

    def __init__(self, extractor: Any, encoder_options: dict[str, Any], *, shared_bytes: int):
        # Only what the worker runs (the host stage), where the extractor offers it apart from its device
        # stage (``host_part()``): the built-ins' live in a module without torch, which the worker then
        # never imports.
        host_part = getattr(extractor, "host_part", None)
        self._extractor = pickle.dumps(host_part() if callable(host_part) else extractor)
        self._options = encoder_options
        self.key = next(_keys)
        self.shared = SharedPool(shared_bytes, on_drop=self._forget)
        self.process = _attach_process()
        self._closed = False
        self._generation: int | None = None
        self._opening: list | None = None  # [event, answer] of the last open
        self.error: str | None = None

    @property
    def opened(self) -> bool:
        """True once the pipeline was sent to the worker process (with its encoder options)."""
        return self._opening is not None

    @property
    def counters(self) -> tuple[int, int, int]:
        return self.process.counters.get(self.key, (0, 0, 0))

    @property
    def lost(self) -> bool:
        """True once the process this pipeline was loaded in has died (batches then go to a new one)."""
        return self._generation is not None and self._generation != self.process.generation

    def ready(self, timeout: float = 0.0) -> bool | None:
        """Whether the extractor is loaded in the (current) process: True; False, with ``error`` set,
        where it cannot be; None while the process is still starting (after ``timeout`` seconds)."""
        if self.error is not None:
            return False
        if self._opening is None or self.lost:
            self._generation, *self._opening = self.process.open(self.key, self._extractor, self._options)
        done, answer = self._opening
        if not done.wait(timeout):
            return None
        if answer[0] is not None:
            self.error = answer[0]
            return False
        return True

    def submit(self, fields: dict[str, np.ndarray], on_done: Done, wait: float = SHARED_WAIT_SECONDS) -> Sent:
        """Copies ``fields`` into a shared buffer and hands them over; ``on_done`` is called from the
        receiver thread. Returns ``Sent.SENT``; ``Sent.FULL`` when no buffer was free within ``wait``
        seconds (the caller drops the batch); ``Sent.BROKEN`` when the extractor is not
        loaded in a live process, or not yet (the caller does the work itself). Raises ``OSError`` when
        shared memory cannot be created."""
        if not self.ready():
            return Sent.BROKEN
        offsets, size = packed_offsets([array.nbytes for array in fields.values()])
        layout = [Field(name, array.dtype.str, tuple(array.shape), offset)
                  for (name, array), offset in zip(fields.items(), offsets)]
        buffer = self.shared.acquire(size, timeout=wait)
        if buffer is None:
            return Sent.FULL
        views: dict[str, np.ndarray] = {field.name: np.ndarray(field.shape, field.dtype, buffer=buffer.buf, offset=field.offset)
                 for field in layout}
        for view, array in zip(views.values(), fields.values()):
            np.copyto(view, array)

        def done(rows: list | ColumnRows | None, error: str | None) -> None:
            # Rows made as columns name the fields that hold their pixels (ColumnRows.fill): copied out here.
            try:
                on_done(rows.fill(views) if isinstance(rows, ColumnRows) else rows, error)
            finally:
                views.clear()  # no view of the buffer outlives its use: a buffer with views cannot be closed

        sent = self.process.submit(self.key, self._generation, self.shared, buffer, tuple(layout), done)
        if sent is not Sent.SENT:
            self.shared.release(buffer)
        return sent

    def release(self, paths: list[str]) -> None:
        """Scratch files no longer referred to by ``paths``' rows (see ``EncoderPool.release``)."""
        if paths and self._generation is not None and not self.lost:
            self.process.send(Release(self.key, paths))

    def _forget(self, name: str) -> None:
        """A shared buffer this pipeline unlinked: the process unmaps it too (else it stays in memory)."""
        if self._generation is not None and not self.lost:
            self.process.send(Forget(self.key, name))

    def close(self, timeout: float = 0.0) -> None:
        """Forgets this pipeline in the process (which unmaps its shared buffers) and frees its shared
        memory. Waits up to ``timeout`` seconds for the process to delete the scratch files it wrote
        (one delete per image: that work belongs off the training process too). The last pipeline to
        close stops the process. Idempotent."""
        if self._closed:
            return
        self._closed = True
        if self._generation is not None and not self.lost:
            self.process.close_pipeline(self.key).wait(max(0.0, timeout))
        self.shared.close()
        _detach_process(self.process)


# Added to this process's nice value (0 to 19 on Linux, higher runs later). 10: weight 110 against
# the training thread's 1024, so a core both want goes about 90 % to training.
WORKER_NICENESS = 10


def _lower_priority() -> None:
    try:
        os.nice(WORKER_NICENESS)
    except (AttributeError, OSError):  # no nice (Windows) or not allowed: run at the same priority
        pass


def serve(fd: int) -> None:
    """The worker process's entry point: host stages of batches in shared memory, and scratch-file
    releases, until the training process closes the socket (or is gone)."""
    # Background work at a lower scheduling priority, so that where cores are short the scheduler runs
    # the training thread first and this process on what is left, instead of sharing a core with it.
    # Its work is bounded by the shared-memory budget, not by its speed. No torch here: device stages
    # run in the training process (torch ops there do not hold the GIL), host stages need numpy.
    _lower_priority()
    _Worker(Connection(fd)).run()


class _Worker:
    """The worker process's state: each pipeline's host part and encoder pool, the shared buffers it
    has mapped, and the thread that sends rows back once their images are written."""

    def __init__(self, connection: Connection):
        from logbus.samples._encoder_pool import EncoderPool

        self._encoder_pool = EncoderPool
        self._connection = connection
        self._send_lock = threading.Lock()
        self._pipelines: dict[int, tuple[Any, Any]] = {}  # key -> (host part, EncoderPool)
        self._attached: dict[str, Any] = {}  # buffer name -> SharedMemory
        self._owners: dict[str, int] = {}  # buffer name -> pipeline key: a closed pipeline's buffers are unmapped
        self._attach = _untracked_attach()
        # Rows go back once their images are written, from a thread of their own, in order: meanwhile
        # the loop goes on with the next batch's rows and hashes while the encoder threads compress.
        self._outbox: queue.SimpleQueue = queue.SimpleQueue()
        self._sender = threading.Thread(target=self._send_when_encoded, name="logbus-host-sender", daemon=True)

    def run(self) -> None:
        self._sender.start()
        handlers: dict[type, Callable[[Any], None]] = {
            OpenPipeline: self._open, Batch: self._batch, Release: self._release, Forget: self._forget,
            ClosePipeline: self._close}
        try:
            while True:
                try:
                    message = self._connection.recv()
                except (EOFError, OSError):  # the training process is gone (closed, or killed: a reset)
                    return
                handlers[type(message)](message)
        finally:
            self._outbox.put(None)
            self._sender.join(60)
            for _, encoder in self._pipelines.values():
                encoder.close(wait=False)
            for buffer in self._attached.values():
                _detach(buffer)

    def _send(self, message: Any) -> None:
        with self._send_lock:
            self._connection.send(message)

    def _counters(self, key: int) -> tuple[int, int, int]:
        encoder = self._pipelines[key][1] if key in self._pipelines else None
        return (encoder.encoded, encoder.reused, encoder.deleted) if encoder is not None else (0, 0, 0)

    def _open(self, message: OpenPipeline) -> None:
        try:
            self._pipelines[message.key] = (pickle.loads(message.extractor),
                                            self._encoder_pool(**message.encoder_options))
            _one_torch_thread()
            self._send(PipelineOpened(message.key, None))
        except Exception as error:  # noqa: BLE001 - e.g. a class defined in the training script
            self._send(PipelineOpened(message.key, f"{type(error).__name__}: {error}"))

    def _release(self, message: Release) -> None:
        if message.key in self._pipelines:
            encoder = self._pipelines[message.key][1]
            for path in message.paths:
                encoder.release(path)

    def _forget(self, message: Forget) -> None:
        self._detach(message.buffer_name)

    def _detach(self, name: str) -> None:
        self._owners.pop(name, None)
        buffer = self._attached.pop(name, None)
        if buffer is not None:
            _detach(buffer)

    def _close(self, message: ClosePipeline) -> None:
        for name in [name for name, owner in self._owners.items() if owner == message.key]:
            self._detach(name)
        pipeline = self._pipelines.pop(message.key, None)
        if pipeline is not None:
            pipeline[1].close(wait=False)
            pipeline[1].remove_files()
        self._send(PipelineClosed(message.key))

    def _batch(self, message: Batch) -> None:
        try:
            host_part, encoder = self._pipelines[message.key]
            name = message.buffer_name
            if name not in self._attached:
                while len(self._attached) >= MAX_ATTACHED:  # the training process may have freed old ones
                    self._detach(next(iter(self._attached)))
                self._attached[name] = self._attach(name)
                self._owners[name] = message.key
            buffer = self._attached[name]
            fields: dict[str, np.ndarray] = {
                field.name: np.ndarray(field.shape, field.dtype, buffer=buffer.buf, offset=field.offset)
                for field in message.fields}
            # Where no image becomes a file, a host part that offers it makes the batch's rows as columns:
            # an array a column, pickled as such, with no Python object per cell on either side.
            host_columns = getattr(host_part, "host_columns", None)
            rows = host_columns(fields, encoder.hashes) if callable(host_columns) and not encoder.image_files else None
            if rows is None:
                rows = host_part.host_stage(fields, encoder.encode)
            if encoder.mask_files:
                _encode_masks(rows, encoder)
            # Host stages copy what they keep (encode copies the pixels): the training process
            # reuses the buffer once the answer is sent, maybe before the files are written.
            del fields
            encoder.flush()
            self._outbox.put((message, rows, None))
        except Exception:  # noqa: BLE001 - reported by the pipeline, which counts the batch as an error
            self._outbox.put((message, None, traceback.format_exc()))

    def _send_when_encoded(self) -> None:
        from logbus.samples._pending_image import PendingImage

        while True:
            item = self._outbox.get()
            if item is None:
                return
            message, rows, error = item
            if error is None and not isinstance(rows, ColumnRows):
                try:
                    # Cells whose pixels come back as they are (no file made) travel unresolved: their
                    # handles share the batch's one array, pickled once, not an array per row.
                    rows = [[cell.resolve() if isinstance(cell, PendingImage) and cell.path.path is not None else cell
                             for cell in row] for row in rows]
                except Exception:  # noqa: BLE001 - an encode failed: the batch is reported as an error
                    rows, error = None, traceback.format_exc()
            try:
                self._send(BatchDone(message.key, message.number, rows, error, self._counters(message.key)))
            except OSError:  # the training process is gone
                return


def _untracked_attach() -> Callable[[str], Any]:
    """Maps a shared-memory segment by name without registering it. This process only maps segments
    the training process made and will unlink. Python < 3.13 would have it register them with a
    resource tracker of its own, which unlinks them when this process ends, under the training
    process's feet."""
    from multiprocessing import shared_memory

    if sys.version_info >= (3, 13):
        return functools.partial(shared_memory.SharedMemory, track=False)
    from multiprocessing import resource_tracker

    def attach(name: str) -> shared_memory.SharedMemory:
        register, resource_tracker.register = resource_tracker.register, lambda *args: None
        try:
            return shared_memory.SharedMemory(name=name)
        finally:
            resource_tracker.register = register

    return attach


def _encode_masks(rows: list, encoder: Any) -> None:
    """Each mask of the rows' pending images to a PNG file here too, as the images are, with the local
    viewer's overlay beside it: the local backend in the training process then links both rather than
    encode and create them there, on the thread whose GIL the training thread needs (creating files
    was most of a segmentation row's cost there). The ids stay in the row for backends that take
    arrays (W&B)."""
    from logbus.samples._pending_image import PendingImage

    for row in rows:
        for cell in row:
            if isinstance(cell, PendingImage):
                for name, (ids, labels) in cell.masks.items():
                    if name not in cell.mask_files:
                        cell.mask_files[name] = encoder.encode_mask(ids, labels, overlay=True)


def _one_torch_thread() -> None:
    """An extractor whose host part imported torch (a third-party one) gets one intra-op thread here,
    so that its torch ops do not compete with the training process for every core."""
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_num_threads(1)


def _detach(buffer) -> None:
    try:
        buffer.close()
    except BufferError:  # a view still exported (a host stage that kept one): the exit frees it
        pass
