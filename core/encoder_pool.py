"""Image encoding on worker threads, off the training thread, each distinct image encoded once.

Pillow's PNG encoder releases the GIL, so threads scale. Images are keyed by a hash of their pixels:
the same ground-truth image seen again in a later eval reuses its file, so it is neither encoded
again nor, since the bytes are identical, uploaded again (W&B deduplicates artifact files by digest).
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import threading
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np

from logbus.encoding import encode_image

CHUNK = 32
IMAGE_FORMATS = ("png", "jpeg")


class _Chunk:
    __slots__ = ("items", "future", "submitted")

    def __init__(self):
        self.items: list[tuple[np.ndarray, str]] = []
        self.future: Future = Future()
        self.submitted = False


class EncodedFile:
    """The future path of one encoded image (a slot in a chunk)."""

    __slots__ = ("_pool", "_chunk", "_index")

    def __init__(self, pool: "EncoderPool", chunk: _Chunk, index: int):
        self._pool, self._chunk, self._index = pool, chunk, index

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
                 quality: int = 90, folder: str | None = None):
        if image_format not in IMAGE_FORMATS:
            raise ValueError(f"image_format: expected 'png' or 'jpeg', got {image_format!r}")
        if not isinstance(workers, int) or workers < 1:
            raise ValueError(f"encode_workers: expected an int >= 1, got {workers!r}")
        self.image_format = image_format
        self.options = {"compress_level": compress_level, "quality": quality}
        # Scratch space for encoded files until backends copy them: RAM-backed /dev/shm when there is
        # one (creating thousands of small files is where a slow disk hurts most).
        scratch = "/dev/shm" if os.access("/dev/shm", os.W_OK) else None
        self._owned = tempfile.TemporaryDirectory(prefix="logbus-media-", dir=scratch) if folder is None else None
        self.folder = folder or self._owned.name
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="logbus-encode")
        self._files: dict[bytes, EncodedFile] = {}
        self._chunk: _Chunk | None = None
        self._lock = threading.Lock()
        self.encoded = 0
        self.reused = 0

    def encode(self, pixels: np.ndarray) -> "EncodedFile":
        """A handle whose ``result()`` is the path of ``pixels`` (uint8 ``[H, W, C]``) encoded to a file.

        Images are encoded in chunks (one task per ``CHUNK`` images, not one per image): a task per
        image costs more Python, under the GIL, than a small PNG costs to encode."""
        digest = hashlib.blake2b(pixels.tobytes(), digest_size=16, person=str(pixels.shape).encode()[:16]).digest()
        with self._lock:
            handle = self._files.get(digest)
            # A failed write (a full scratch disk, say) is tried again, not handed to every later eval.
            if handle is not None and not handle.failed:
                self.reused += 1
                return handle
            self.encoded += 1
            if self._chunk is None:
                self._chunk = _Chunk()
            # The pixels may live in a reused pinned buffer: encode from a private copy.
            self._chunk.items.append((np.array(pixels), digest.hex()))
            handle = self._files[digest] = EncodedFile(self, self._chunk, len(self._chunk.items) - 1)
            if len(self._chunk.items) >= CHUNK:
                self._submit_locked()
            return handle

    def flush(self) -> None:
        """Starts encoding whatever is waiting for a full chunk."""
        with self._lock:
            self._submit_locked()

    def _submit_locked(self) -> None:
        chunk, self._chunk = self._chunk, None
        if chunk is not None:
            chunk.submitted = True
            self._executor.submit(self._write_chunk, chunk)

    def _write_chunk(self, chunk: "_Chunk") -> None:
        try:
            chunk.future.set_result([self._write(pixels, name) for pixels, name in chunk.items])
        except BaseException as error:  # noqa: BLE001 - handed to whoever waits on the result
            chunk.future.set_exception(error)
        chunk.items = []

    def _write(self, pixels: np.ndarray, name: str) -> str:
        suffix = ".png" if self.image_format == "png" else ".jpg"
        path = os.path.join(self.folder, name + suffix)
        data = encode_image(pixels, self.image_format, **self.options)
        # A private temp folder, read only after this future completes: no temp+rename needed.
        with open(path, "wb") as file:
            file.write(data)
        return path

    def close(self) -> None:
        self._executor.shutdown(wait=True)
        if self._owned is not None:
            self._owned.cleanup()
