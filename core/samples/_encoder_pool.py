"""Image encoding on worker threads, off the training thread, each distinct image encoded once.

Pillow's PNG encoder releases the GIL, so threads scale. Images are keyed by a hash of their pixels:
the same ground-truth image seen again in a later eval reuses its file, so it is neither encoded
again nor, since the bytes are identical, uploaded again (W&B deduplicates artifact files by digest).

Scratch space is bounded: each file counts the table rows that refer to it (``encode`` adds one,
``release`` takes one away once every backend has taken the table). A file nobody refers to is
kept, for the next eval to reuse, only while such files take at most ``cache_bytes``; beyond that
the least recently released go. Files are named by their content, so a file written again later
has the same path, which backends that remember what they copied (the local backend) reuse as is.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import tempfile
import threading
from collections import OrderedDict
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Mapping

import numpy as np

try:
    import fcntl
except ImportError:  # Windows: no owner locks, no sweeping of stale scratch folders
    fcntl = None  # type: ignore[assignment]

from logbus.files import content_hash, content_hashes, encode_image, encode_mask
from logbus.files._atomic import FILE_MODE
from logbus.files._overlay import encode_mask_and_overlay
from logbus.samples._options import PIPELINE_OPTIONS

CHUNK = 32
HASH_CHUNK_ROWS = 32  # rows a thread hashes at least, in ``EncoderPool.hashes``: fewer cost more to hand over
# Rows smaller than this are hashed on one thread: at 3 KB (32x32 RGB) two threads contend for the GIL
# between rows and cost more CPU than one (worker process 10.5 against 6.8 µs a row, bench_volume.py stages).
HASH_PARALLEL_ROW_BYTES = 32 << 10
# Never O_TRUNC: a scratch file may be hard-linked into a run folder, and truncating that inode
# would rewrite the run's file in place under its readers. A name still there (its delete failed)
# is unlinked and the file created anew.
_WRITE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
SCRATCH_CACHE_BYTES = PIPELINE_OPTIONS.defaults["scratch_cache_bytes"]


# Encoded files are named by their pixels: ``<prefix><32 hex digits of blake2b>.<png|jpg|mask.png>``. The
# prefix keeps the worker process's files apart from the training process's (each deletes only its own).
_ENCODED_NAME = re.compile(r"^(?:w\d+-)?([0-9a-f]{32}\.(?:png|jpg|mask\.png))$")
MASK_SUFFIX = ".mask.png"
OVERLAY_SUFFIX = ".overlay.png"  # a mask's coloured overlay for the local viewer, beside the mask


def overlay_of(mask_path: str) -> str:
    """The overlay file beside a mask file (``x.mask.png`` -> ``x.overlay.png``), as the viewer names it."""
    return mask_path[: -len(MASK_SUFFIX)] + OVERLAY_SUFFIX


def content_name(path: str) -> str:
    """The part of an encoded file's name that depends on its pixels alone, or ``path`` itself for a
    file this module did not name. The same image encoded in the training process (on threads while
    the worker process starts) and in the worker process has two files but one content name, so a
    backend that keeps one copy per image can tell that it has seen it."""
    match = _ENCODED_NAME.match(os.path.basename(path))
    return match.group(1) if match else path


def overlay_labels(labels: Mapping[int, str] | None) -> tuple[tuple[int, str], ...]:
    """A mask's class labels as sorted ``(id, name)`` pairs: the form its overlay and name are made from."""
    return tuple(sorted((int(k), str(v)) for k, v in (labels or {}).items()))


def mask_content_name(ids: np.ndarray, labels: tuple[tuple[int, str], ...] | None = None) -> str:
    """The content name (see ``content_name``) of the class-id mask ``ids`` encoded with
    ``EncoderPool.encode_mask``: with ``labels`` (``overlay_labels``) for one written with its overlay.
    Public so that a backend given the same mask as ids (the pipeline's own threads encode no masks
    while its worker process starts) names it as the worker names its file, and keeps one file."""
    ids = np.ascontiguousarray(ids)
    hasher = hashlib.blake2b(ids.view(np.uint8).data, digest_size=16, person=f"{ids.shape}{ids.dtype.str}".encode()[:16])
    if labels is not None:
        hasher.update(repr(labels).encode())
    return hasher.hexdigest() + MASK_SUFFIX


SCRATCH_PREFIX = "logbus-media-"
_OWNER_SUFFIX = ".owner"  # beside an owned scratch folder: locked (flock) for as long as its owner lives
_TMPFS = "/dev/shm"
# tmpfs is used for scratch files only while it has this much room: Docker's default /dev/shm is 64 MB,
# and a full one would fail the shared memory batches travel in as well.
TMPFS_MIN_FREE_BYTES = 256 * 2**20
_scratch_parent: str | None = None
_swept: set[str] = set()


def scratch_parent() -> str:
    """Where pools put their own scratch folders: RAM-backed ``/dev/shm`` where it can be written and has
    ``TMPFS_MIN_FREE_BYTES`` free (creating thousands of small files is where a slow disk hurts most),
    else the temporary folder on disk, with one warning. Chosen once per process; stale folders of dead
    processes there are swept then (``sweep_stale_scratch``)."""
    global _scratch_parent
    if _scratch_parent is None:
        parent = tempfile.gettempdir()
        if os.access(_TMPFS, os.W_OK):
            try:
                stats = os.statvfs(_TMPFS)
                free = stats.f_bavail * stats.f_frsize
            except OSError:
                free = 0
            if free >= TMPFS_MIN_FREE_BYTES:
                parent = _TMPFS
            else:
                logging.getLogger("logbus").warning(
                    "logbus: %s has %d MB free (less than %d MB); encoded sample images wait in %s on disk "
                    "instead (Docker: --shm-size raises it)", _TMPFS, free // 2**20, TMPFS_MIN_FREE_BYTES // 2**20,
                    parent)
        _scratch_parent = parent
    sweep_stale_scratch(_scratch_parent)
    return _scratch_parent


def _owned_folder(parent: str) -> tuple[tempfile.TemporaryDirectory, int | None]:
    """A new scratch folder under ``parent`` and the descriptor of its owner lock (``<folder>.owner``
    beside it, locked by this process, see ``sweep_stale_scratch``). The lock is taken on a temporary
    name and then renamed into place, so that a sweeper never finds an owner file unlocked."""
    owned = tempfile.TemporaryDirectory(prefix=SCRATCH_PREFIX, dir=parent)
    if fcntl is None:
        return owned, None
    path = owned.name + _OWNER_SUFFIX
    descriptor = os.open(path + ".new", os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o600)
    fcntl.flock(descriptor, fcntl.LOCK_EX)
    os.rename(path + ".new", path)
    return owned, descriptor


def _unlock(folder: str, descriptor: int | None) -> None:
    """Deletes ``folder``'s owner file and lets go of its lock (the folder itself is gone already)."""
    if descriptor is not None:
        try:
            os.remove(folder + _OWNER_SUFFIX)
        except OSError:
            pass
        try:
            os.close(descriptor)  # releases the flock
        except OSError:
            pass


def sweep_stale_scratch(parent: str) -> int:
    """Deletes scratch folders under ``parent`` whose owner is gone (a training process killed with
    SIGKILL never deleted its own): a folder whose owner lock can be taken has no living owner, in
    this process's pid namespace or in any other that shares the folder (no pid is compared). Once
    per folder and process. Returns how many were deleted."""
    if fcntl is None or parent in _swept:
        return 0
    _swept.add(parent)
    deleted = 0
    try:
        names = [name for name in os.listdir(parent) if name.startswith(SCRATCH_PREFIX) and name.endswith(_OWNER_SUFFIX)]
    except OSError:
        return 0
    for name in names:
        owner = os.path.join(parent, name)
        try:
            descriptor = os.open(owner, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        except OSError:
            continue  # swept by another process just now
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(descriptor)
            continue  # its owner is alive
        try:
            shutil.rmtree(owner[: -len(_OWNER_SUFFIX)], ignore_errors=True)
            os.remove(owner)
            deleted += 1
        except OSError:
            pass
        finally:
            os.close(descriptor)
    return deleted


class _Chunk:
    __slots__ = ("items", "future", "submitted")

    def __init__(self):
        # (pixels or class ids, path, mask): mask False for an image, True for a mask, or the sorted class
        # labels of a mask whose overlay is written beside it.
        self.items: list[tuple[np.ndarray, str, Any]] = []
        self.future: Future = Future()
        self.submitted = False


class _PixelBatch:
    """The images a host stage handed to ``encode`` of a pool that makes no files (``image_files``
    False), as one contiguous uint8 array ``[N, H, W, C]`` (where the images share a shape; else a list)
    with each image's content hash. Rows refer to it by index (``InlinePixels``): pickled once for
    the whole batch, not an array per row, on its way back from the worker process."""

    __slots__ = ("items", "pixels", "digests", "checked")

    def __init__(self):
        self.items: list[np.ndarray] | None = []  # until ``seal``
        self.pixels: Any = None
        self.digests: list[str] = []
        # Whether every image is what ``records.Image`` takes (uint8 [H, W, C], C in 1/3/4), checked
        # once for the batch: its rows' Images are then made without a check per row (``Image.unchecked``).
        self.checked = False

    def seal(self) -> None:
        """Copies the images out of the (reused) buffer they were handed in, and hashes each:
        ``hashlib`` releases the GIL for data above 2 KB (a 32x32x3 image is 3 KB)."""
        items, self.items = self.items, None
        assert items is not None
        if len({(a.shape, a.dtype) for a in items}) == 1:
            self.pixels = np.stack(items)  # one copy, one array
            shape = self.pixels.shape
            self.checked = self.pixels.dtype == np.uint8 and len(shape) == 4 and shape[3] in (1, 3, 4) and 0 not in shape
        else:
            self.pixels = [np.array(a) for a in items]
        self.digests = [content_hash(a) for a in self.pixels]

    def __getstate__(self):
        return None, {"items": None, "pixels": self.pixels, "digests": self.digests, "checked": self.checked}


class InlinePixels:
    """An image cell's pixels and content hash from a pool that makes no files; ``path`` is None."""

    __slots__ = ("_pool", "_batch", "_index")
    path = None

    def __init__(self, pool: "EncoderPool | None", batch: _PixelBatch, index: int):
        self._pool, self._batch, self._index = pool, batch, index

    @property
    def batch(self) -> _PixelBatch:
        """The batch this image is one of (copied and hashed: ``EncoderPool.flush`` has run)."""
        if self._batch.items is not None and self._pool is not None:
            self._pool.flush()
        return self._batch

    @property
    def index(self) -> int:
        return self._index

    @property
    def pixels(self) -> np.ndarray:
        """uint8 ``[H, W, C]``: a view of the batch's array (read-only for the rows that share it)."""
        return self.batch.pixels[self._index]

    @property
    def digest(self) -> str:
        return self.batch.digests[self._index]

    def __getstate__(self):
        return None, {"_pool": None, "_batch": self.batch, "_index": self._index}


class EncodedFile:
    """The future path of one encoded image (a slot in a chunk)."""

    __slots__ = ("_pool", "_chunk", "_index", "path", "digest")

    def __init__(self, pool: "EncoderPool", chunk: _Chunk, index: int, path: str):
        self._pool, self._chunk, self._index, self.path = pool, chunk, index, path
        self.digest: str | None = None  # the content hash of an image's pixels (``encode``); None for a mask

    def result(self, timeout: float | None = None) -> str:
        if not self._chunk.submitted:
            self._pool.flush()
        return self._chunk.future.result(timeout)[self._index]

    @property
    def failed(self) -> bool:
        future = self._chunk.future
        return future.done() and future.exception() is not None


class EncoderPool:
    def __init__(self, *, workers: int = 2, image_format: str = "png", compress_level: int = 1,
                 quality: int = 90, folder: str | None = None, cache_bytes: int = SCRATCH_CACHE_BYTES,
                 prefix: str = "", mask_files: bool = False, image_files: bool = True):
        # The pipeline's options, named as the user gave them (this pool also runs in the worker process).
        PIPELINE_OPTIONS.check(image_format=image_format, encode_workers=workers, scratch_cache_bytes=cache_bytes)
        self.cache_bytes = cache_bytes
        # Pools sharing a folder (the training process's and the worker process's) each count only
        # their own files: a prefix keeps one from deleting a file the other's tables refer to.
        self.prefix = prefix
        # Whether rows' masks are encoded here too, with their overlays (``encode_mask``): only where a
        # backend links files from this folder (the local backend placed it), the only one that reads them.
        self.mask_files = mask_files
        # Whether ``encode`` writes a file per image; False where no backend on the pipeline's buses
        # reads files (``BackendCapabilities.needs_image_files``): pixels and their hash go back instead.
        self.image_files = image_files
        self._pixel_batch: _PixelBatch | None = None
        self.image_format = image_format
        self.options = {"compress_level": compress_level, "quality": quality}
        self._owned: tempfile.TemporaryDirectory[str] | None = None
        self._lock_file: int | None = None  # held while this pool owns its folder (see ``_owned_folder``)
        self._parent: str | None = None  # the folder given to ``move``, removed at close once empty
        if folder is None:
            self._owned, self._lock_file = _owned_folder(scratch_parent())
            folder = self._owned.name
        # Absolute: the worker process keeps the working directory it started in, and a training
        # process may change its own between two runs (a sweep, Hydra's multirun).
        self.folder = os.path.abspath(folder)
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="logbus-encode")
        self._files: dict[str, EncodedFile] = {}  # path -> handle, for every file on disk or on its way
        self._refs: dict[str, int] = {}  # path -> rows referring to it (absent: none)
        self._sizes: dict[str, int] = {}  # path -> bytes, once written
        self._unreferenced: OrderedDict[str, int] = OrderedDict()  # path -> bytes, least recently released first
        self._unreferenced_bytes = 0
        self._chunk: _Chunk | None = None
        self._lock = threading.Lock()
        self.encoded = 0
        self.reused = 0
        self.deleted = 0
        self._giving_up = False

    def move(self, parent: str) -> bool:
        """Makes this pool's scratch folder anew under ``parent`` (created if needed), while nothing has
        been encoded yet: a backend that stores files on ``parent``'s filesystem can then hard-link them
        instead of copying. Returns False, keeping the folder, once files exist, for a folder the
        caller gave, or where ``parent`` cannot be written."""
        with self._lock:
            if self._owned is None or self._files or self._chunk is not None:
                return False
            parent = os.path.abspath(parent)  # see ``folder`` in __init__
            try:
                os.makedirs(parent, exist_ok=True)
                sweep_stale_scratch(parent)
                owned, lock_file = _owned_folder(parent)
            except OSError:
                return False
            old, self._owned, self.folder = self._owned, owned, owned.name
            old_lock, self._lock_file = self._lock_file, lock_file
            self._parent = parent
        _unlock(old.name, old_lock)
        try:
            old.cleanup()  # empty: nothing was ever written in it
        except OSError:
            pass
        return True

    def set_image_files(self, image_files: bool) -> bool:
        """Sets ``image_files`` while nothing has been handed to ``encode``; returns whether it did."""
        with self._lock:
            if image_files != self.image_files and (self._files or self._chunk is not None or self._pixel_batch is not None):
                return False
            self.image_files = image_files
            return True

    def encode(self, pixels: np.ndarray) -> "EncodedFile | InlinePixels":
        """A handle whose ``result()`` is the path of ``pixels`` (uint8 ``[H, W, C]``) encoded to a file.

        Images are encoded in chunks (one task per ``CHUNK`` images, not one per image): a task per
        image costs more Python, under the GIL, than a small PNG costs to encode.

        A pool without ``image_files`` writes nothing: the handle (``InlinePixels``) holds the pixels,
        copied with the rest of the batch at ``flush``, and their content hash."""
        if pixels.ndim == 2:  # [H, W]: one channel, as records.Image takes it (and hashes it)
            pixels = pixels[:, :, None]
        if not self.image_files:
            with self._lock:
                batch = self._pixel_batch
                if batch is None:
                    batch = self._pixel_batch = _PixelBatch()
                assert batch.items is not None
                batch.items.append(pixels)
                return InlinePixels(self, batch, len(batch.items) - 1)
        # Named by the content hash of its pixels, which the row's Image carries (``digest``): the local
        # store keys it by that, as it keys the same image that came as pixels, so a sample's key does
        # not depend on whether a backend on the bus needed files.
        digest = content_hash(pixels)
        path = os.path.join(self.folder, self.prefix + digest + (".png" if self.image_format == "png" else ".jpg"))
        handle = self._encode(pixels, path, mask=False)
        handle.digest = digest
        return handle

    def encode_mask(self, ids: np.ndarray, labels: Mapping[int, str] | None = None, *,
                    overlay: bool = False) -> "EncodedFile":
        """A handle whose ``result()`` is the path of the class-id mask ``ids`` ``[H, W]`` as a lossless
        PNG (``logbus.files.encode_mask``, whatever ``image_format`` is), counted and released like an
        image. Creating a file costs a filesystem far more than linking one (60 µs to 1 ms against
        ~20 µs, measured on ext4 under varying load): encoded here, in the worker process, a backend in the training process
        links the file instead of creating one. ``overlay``: the local viewer's coloured overlay for
        ``labels`` is written beside it too (``overlay_of(path)``, after the mask), goes with it, and
        the labels are part of the file's name."""
        ids = np.ascontiguousarray(ids)
        mask: Any = True
        if overlay:
            mask = overlay_labels(labels)
        name = mask_content_name(ids, mask if overlay else None)
        return self._encode(ids, os.path.join(self.folder, self.prefix + name), mask=mask)

    def _encode(self, pixels: np.ndarray, path: str, *, mask: Any) -> "EncodedFile":
        with self._lock:
            handle = self._refer_locked(path)
            if handle is not None:
                return handle
            self.encoded += 1
            if self._chunk is None:
                self._chunk = _Chunk()
            # The pixels may live in a reused pinned buffer: encode from a private copy.
            self._chunk.items.append((np.array(pixels), path, mask))
            handle = self._files[path] = EncodedFile(self, self._chunk, len(self._chunk.items) - 1, path)
            if len(self._chunk.items) >= CHUNK:
                self._submit_locked()
            return handle

    def _refer_locked(self, path: str) -> "EncodedFile | None":
        """One more reference to ``path`` (under ``_lock``), and its file where this pool already has it
        whole: taken off the unreferenced cache, counted as reused. ``None``: the caller writes it. A
        failed write (a full scratch disk, say) is tried again, not handed to every later eval."""
        self._refs[path] = self._refs.get(path, 0) + 1
        handle = self._files.get(path)
        if handle is None or handle.failed:
            return None
        self.reused += 1
        size = self._unreferenced.pop(path, None)
        if size is not None:
            self._unreferenced_bytes -= size
        return handle

    def adopt(self, path: str, data: bytes) -> str:
        """A file another rank encoded, written here as ``path`` (named by its content, in this pool's
        folder) unless this pool has it already, and counted like the files this pool encodes: the
        rows that refer to it give it back with ``release``, and it goes past the cache as theirs do
        (a gathered table's files are not kept to the end of the run). Returns ``path``."""
        with self._lock:
            if self._refer_locked(path) is not None:
                return path
            # Unknown to this pool, so nothing here deletes it meanwhile: written outside the lock.
            chunk = _Chunk()
            chunk.submitted = True
            self._files[path] = EncodedFile(self, chunk, 0, path)
        try:
            self._write_file(path, data)
        except BaseException as error:
            chunk.future.set_exception(error)
            raise
        with self._lock:
            self._sizes[path] = len(data)
        chunk.future.set_result([path])
        return path

    def release(self, path: str) -> None:
        """One row that referred to ``path`` is gone (its table was taken by every backend, or the
        sampling policy left it out); the file goes once nothing refers to it, past the cache."""
        with self._lock:
            count = self._refs.get(path)
            if count is None:
                return  # not one of this pool's files (a gathered one), or released already
            if count > 1:
                self._refs[path] = count - 1
                return
            del self._refs[path]
            handle = self._files.get(path)
        if handle is not None:
            # Once it is written (at once if it is): deleting it earlier would let the write recreate it.
            if not handle._chunk.submitted:
                self.flush()
            handle._chunk.future.add_done_callback(lambda _: self._unreferenced_now(path))

    def _unreferenced_now(self, path: str) -> None:
        with self._lock:
            if path in self._refs or path not in self._files or path in self._unreferenced:
                return  # referred to again meanwhile, or already gone
            size = self._sizes.get(path, 0)
            self._unreferenced[path] = size
            self._unreferenced_bytes += size
            while self._unreferenced and self._unreferenced_bytes > self.cache_bytes:
                oldest, size = self._unreferenced.popitem(last=False)
                self._unreferenced_bytes -= size
                self._files.pop(oldest, None)
                self._sizes.pop(oldest, None)
                # Under the lock: an encode of the same image from now on writes a new file after this.
                # Not written (a failed encode) or the folder gone: nothing to free.
                self._remove(oldest)
                self.deleted += 1

    def hashes(self, arrays: np.ndarray) -> list[str]:
        """``content_hashes(arrays)``, the rows split among the pool's threads where it has more than one
        (``hashlib`` releases the GIL above 2 KB, so they hash at once); in order."""
        workers = self._executor._max_workers
        row_bytes = arrays[0].nbytes if len(arrays) else 0
        if workers < 2 or len(arrays) < 2 * HASH_CHUNK_ROWS or row_bytes < HASH_PARALLEL_ROW_BYTES:
            return content_hashes(arrays)
        step = max(HASH_CHUNK_ROWS, -(-len(arrays) // workers))
        parts = [self._executor.submit(content_hashes, arrays[start:start + step]) for start in range(0, len(arrays), step)]
        return [digest for part in parts for digest in part.result()]

    def flush(self) -> None:
        """Starts encoding whatever is waiting for a full chunk (copies and hashes the pixels handed
        since the last flush, where this pool makes no files: call it before their buffer is reused)."""
        with self._lock:
            self._submit_locked()
            batch, self._pixel_batch = self._pixel_batch, None
        if batch is not None:
            batch.seal()

    def _submit_locked(self) -> None:
        chunk, self._chunk = self._chunk, None
        if chunk is not None:
            chunk.submitted = True
            self._executor.submit(self._write_chunk, chunk)

    def _write_chunk(self, chunk: "_Chunk") -> None:
        try:
            if self._giving_up:
                raise RuntimeError("the encoder pool was closed before this image was encoded")
            chunk.future.set_result([self._write(pixels, name) if mask is False else self._write_mask(pixels, name, mask)
                                     for pixels, name, mask in chunk.items])
        except BaseException as error:  # noqa: BLE001 - handed to whoever waits on the result
            chunk.future.set_exception(error)
        chunk.items = []

    def _write(self, pixels: np.ndarray, path: str) -> str:
        data = encode_image(pixels, self.image_format, **self.options)
        self._write_file(path, data)
        self._sizes[path] = len(data)
        return path

    def _write_mask(self, ids: np.ndarray, path: str, mask: Any) -> str:
        """``mask``: True, or the labels of the overlay to write beside it (see ``_Chunk.items``)."""
        if not isinstance(mask, tuple):
            data = encode_mask(ids)
            self._write_file(path, data)
            self._sizes[path] = len(data)
            return path
        data, overlay = encode_mask_and_overlay(ids, mask)
        self._write_file(path, data)
        self._write_file(overlay_of(path), overlay)  # after the mask: the viewer remakes an overlay older than its mask
        self._sizes[path] = len(data) + len(overlay)
        return path

    @staticmethod
    def _write_file(path: str, data: bytes) -> None:
        # Written in place, with three system calls: no reader can see it half written. A path is
        # handed out (``result()``) only once its chunk is written, and deleted, then written again,
        # only once no row refers to it, and every backend took it (a link or a copy) before that.
        # Each pool names its files apart (``prefix``), so no other pool writes this path. Python's
        # file object and a temporary renamed into place took 7 system calls a file (strace), and a
        # second directory entry; a segmentation row writes four files (two masks, two overlays).
        try:
            descriptor = os.open(path, _WRITE_FLAGS, FILE_MODE)
        except FileExistsError:
            os.remove(path)
            descriptor = os.open(path, _WRITE_FLAGS, FILE_MODE)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(descriptor, view):]
        except BaseException:
            os.close(descriptor)
            try:  # a full disk: no partial file left for a reader of the same name later
                os.remove(path)
            except OSError:
                pass
            raise
        os.close(descriptor)

    @staticmethod
    def _remove(path: str) -> bool:
        """Deletes a file this pool wrote, with a mask's overlay; False if it was never written."""
        if path.endswith(MASK_SUFFIX):
            try:
                os.remove(overlay_of(path))
            except OSError:
                pass  # a mask without one
        try:
            os.remove(path)
            return True
        except OSError:
            return False

    def remove_files(self) -> None:
        """Deletes every file this pool wrote (the worker process's pool, at its pipeline's close: the
        deletes then cost that process, not the training process, which removes the folder after)."""
        with self._lock:
            paths = list(self._files)
            self._files.clear()
            self._sizes.clear()
            self._refs.clear()
            self._unreferenced.clear()
            self._unreferenced_bytes = 0
        for path in paths:
            if self._remove(path):  # else never written (a failed encode), or gone already
                self.deleted += 1

    def close(self, wait: bool = True) -> None:
        """Deletes the scratch folder, after the queued encodes (``wait``) or at once: queued chunks
        then fail instead of running, and a chunk being written fails on the missing folder."""
        if not wait:
            self._giving_up = True
        self._executor.shutdown(wait=wait)
        if self._owned is not None:
            shutil.rmtree(self._owned.name, ignore_errors=True)
            _unlock(self._owned.name, self._lock_file)
        self._lock_file = None
        if self._parent is not None:  # a run root keeps no empty .scratch; another pipeline's stays
            try:
                os.rmdir(self._parent)
            except OSError:
                pass
