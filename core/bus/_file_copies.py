"""A caller's encoded image files (``Image(path=...)``), read at the log call and handed to the backends as
logbus's own copies.

A ``Table`` or ``Images`` record that a caller emits names files the caller owns. A backend handles the
record on its writer thread, after the call has returned: by then the caller may have rewritten a file in
place (``PIL.Image.save`` to the same name at every eval) or replaced it (a new file renamed onto it), and
a backend reading the caller's file stores the new picture under the old step (every built-in backend did).
So the bus reads each such file during ``emit``, on the caller's thread, and the first backend writer to
reach the record writes those bytes to a file of logbus's own, named by its content hash
(``logbus.files.content_hash``) and never changed; every backend gets the record with its image cells
pointing there, ``digest`` set. What a backend stores, and what it hands on (wandb takes a file path), is
then what the file held during the call, the same bytes for every backend.

Why read on the caller's thread: any later read leaves a window in which a file rewritten right after the
call (a loop that saves each picture to one name and logs it) is stored with the wrong content. The read
costs a few µs for a small file (a 3 KB PNG: about 5 µs, as much as making its ``Image(path=...)``), then
in proportion to its size; the copy, the costlier part (a file created), is written on a backend's
thread (``benchmarks/logged_files.py`` measures both). A sample pipeline's files never come through
here: its records are ``Deferred`` and its files are its own, content-named and immutable.

The copies live in one temporary folder per bus (``logbus-files-*`` under ``tempfile.gettempdir()``), each
deleted once every backend is done with the records that name it (``Deferred.on_released``), the folder
when the bus closes.
"""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
import tempfile
import threading
from typing import Any, Iterator

from logbus.bus._deferred import Deferred, LazyFuture
from logbus.files import content_hash
from logbus.records import Image, Images, Record, Table

__all__ = ["FileCopies"]

# A copy keeps the extension of the caller's file (wandb.Image takes the format from it), when it is a
# plain one; otherwise it has none (readers sniff the bytes).
_EXTENSION = re.compile(r"\.[A-Za-z0-9]{1,8}$")
_READ_FLAGS = os.O_RDONLY | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0)
_LARGE_READ = 1 << 20
_WRITE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0)
_FILE_MODE = 0o644  # before the umask, as every file logbus writes


class FileCopies:
    """The copies of one bus. :meth:`snapshot` runs on the caller's thread, the rest on backend writers."""

    def __init__(self):
        self._folder: str | None = None
        self._users: dict[str, int] = {}  # copy's file name -> records not yet released that name it
        self._lock = threading.Lock()
        self._closed = False

    def snapshot(self, record: Table | Images) -> Record:
        """``record`` itself when none of its images names a file; else a ``Deferred`` of it whose image
        cells name copies of those files as they are now (read here; written by the first writer that
        needs the record). ``ValueError`` naming ``image.path`` for a file that cannot be read.

        :param record: a ``Table`` or ``Images`` record a caller is emitting.
        """
        contents: dict[str, bytes] = {}  # the caller's path -> its bytes now (a file named twice is read once)
        for image in _images(record):
            if image.path is not None and image.path not in contents:
                contents[image.path] = _read(image.path)
        if not contents:
            return record
        named: list[str] = []  # the copies this record's cells name, once written
        deferred = Deferred(type(record), LazyFuture(lambda: self._with_copies(record, contents, named)),
                            nbytes=record.nbytes + sum(len(data) for data in contents.values()))
        deferred.on_released(lambda: self._release(named))
        return deferred

    def close(self) -> None:
        """Deletes the folder of copies (the bus has closed: no backend reads them any more)."""
        with self._lock:
            self._closed = True
            folder, self._folder = self._folder, None
            self._users.clear()
        if folder is not None:
            shutil.rmtree(folder, ignore_errors=True)

    # -- backend writer side -----------------------------------------------------------------------
    def _with_copies(self, record: Table | Images, contents: dict[str, bytes], named: list[str]) -> Table | Images:
        copies: dict[str, tuple[str, str]] = {}  # the caller's path -> (the copy's path, content hash)
        for path, data in contents.items():
            digest = content_hash(data)
            extension = _EXTENSION.search(path)
            copies[path] = (self._keep(digest + (extension.group().lower() if extension else ""), data, named), digest)

        def copied(cell: Any) -> Any:
            if not isinstance(cell, Image) or cell.path is None:
                return cell
            path, digest = copies[cell.path]
            return dataclasses.replace(cell, path=path, digest=digest)

        if isinstance(record, Images):
            return dataclasses.replace(record, images=[copied(image) for image in record.images])
        return dataclasses.replace(record, rows=[[copied(cell) for cell in row] for row in record.rows])

    def _keep(self, name: str, data: bytes, named: list[str]) -> str:
        """The path of the copy ``name`` holding ``data``, written now unless a record not yet released
        already made it (the same content under the same name: it is never changed)."""
        with self._lock:
            if self._closed:
                raise RuntimeError("the bus has closed: no backend takes this record any more")
            if self._folder is None:
                self._folder = tempfile.mkdtemp(prefix="logbus-files-")
            path = os.path.join(self._folder, name)
            if name not in self._users:
                _write(path, data)  # under the lock: a second record of the same bytes waits for it
                self._users[name] = 0
            self._users[name] += 1
            named.append(name)
            return path

    def _release(self, named: list[str]) -> None:
        with self._lock:
            folder = self._folder
            for name in named:
                users = self._users.get(name)
                if users is None:  # the bus has closed and deleted it
                    continue
                if users > 1:
                    self._users[name] = users - 1
                    continue
                del self._users[name]
                if folder is not None:
                    _remove(os.path.join(folder, name))
            named.clear()


def _images(record: Table | Images) -> Iterator[Image]:
    if isinstance(record, Images):
        yield from record.images
        return
    for row in record.rows:
        for cell in row:
            if isinstance(cell, Image):
                yield cell


def _read(path: str) -> bytes:
    """The whole file now, in as few system calls as a small file allows (open, fstat, read, close)."""
    try:
        descriptor = os.open(path, _READ_FLAGS)
        try:
            size = os.fstat(descriptor).st_size
            parts = [os.read(descriptor, size + 1)]  # the whole file, unless it grows meanwhile
            while more := os.read(descriptor, _LARGE_READ):
                parts.append(more)
        finally:
            os.close(descriptor)
    except OSError as error:
        raise ValueError(f"image.path: expected a readable encoded image file, got {path!r} "
                         f"({type(error).__name__}: {error.strerror or error})") from error
    return parts[0] if len(parts) == 1 else b"".join(parts)  # no second copy of the bytes


def _write(path: str, data: bytes) -> None:
    """Writes ``data`` to ``path``, in plain system calls (a temporary name and a rename would cost more
    than the write: no reader knows the name before this returns). A write cut short (a full disk)
    leaves no file."""
    descriptor = os.open(path, _WRITE_FLAGS, _FILE_MODE)
    try:
        written = 0
        with memoryview(data) as view:
            while written < len(data):
                written += os.write(descriptor, view[written:])
    except BaseException:
        os.close(descriptor)
        _remove(path)
        raise
    os.close(descriptor)


def _remove(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
