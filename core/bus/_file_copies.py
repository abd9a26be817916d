"""A caller's encoded image files (``Image(path=...)``), read once by the first backend writer and handed to
every backend as logbus's own copies.

A ``Table`` or ``Images`` record that a caller emits names files the caller owns. Every backend handles the
record on its own writer thread, after the call has returned, each when it gets there: a backend reading
the caller's file itself (every built-in backend did) stores whatever the file holds by then, so a file
rewritten in place (``PIL.Image.save`` to the same name at every eval) or replaced (a new file renamed
onto it) gave the new picture under the old step, and two backends could store two different pictures.

So the bus wraps such a record in a ``Deferred`` at the call and reads nothing there: per-sample work never
runs on the training thread (reading a 3 KB PNG there cost 5-19 µs, a 200 KB one 0.1-0.2 ms). The first
backend writer to reach the record (``LazyFuture``: exactly one computes, the others wait for its result)
reads each file once, hashes it (``logbus.files.content_hash``) and writes the bytes to a file of logbus's
own named by that hash and never changed; every backend gets the record with its image cells pointing
there, ``digest`` set. What each backend stores, and what it hands on (wandb takes a file path), is then
the same bytes: what the file held when that writer read it, normally milliseconds after the call and
always before a ``flush()`` issued after the call returns. A file changed between the call and that read
is stored changed. A sample pipeline's files never come through here: its records are ``Deferred`` and
its files are its own, content-named and immutable.

A file that cannot be read then (deleted since the call) or a copy that cannot be written (a full disk)
loses that record in every backend, each counting it dropped, with one warning from the writer that
tried (``ReportedLoss``); the training thread never sees an exception for it.

The copies live in one temporary folder per bus (``logbus-files-*`` under ``tempfile.gettempdir()``), each
deleted once every backend is done with the records that name it (``Deferred.on_released``), the folder
when the bus closes.
"""

from __future__ import annotations

import copy
import logging
import os
import re
import shutil
import tempfile
import threading
from typing import Any, Iterator

from logbus.bus._deferred import Deferred, LazyFuture, ReportedLoss
from logbus.files import content_hash
from logbus.records import Image, Images, Record, Table

__all__ = ["FileCopies"]

log = logging.getLogger("logbus")

# A copy keeps the extension of the caller's file (wandb.Image takes the format from it), when it is a
# plain one; otherwise it has none (readers sniff the bytes).
_EXTENSION = re.compile(r"\.[A-Za-z0-9]{1,8}$")
_READ_FLAGS = os.O_RDONLY | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0)
_LARGE_READ = 1 << 20
_WRITE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0)
_FILE_MODE = 0o644  # before the umask, as every file logbus writes


class FileCopies:
    """The copies of one bus. :meth:`defer` runs on the caller's thread and reads nothing; the rest runs on
    backend writers."""

    def __init__(self):
        self._folder: str | None = None
        self._users: dict[str, int] = {}  # copy's file name -> records not yet released that name it
        self._lock = threading.Lock()
        self._closed = False

    def defer(self, record: Table | Images) -> Record:
        """``record`` itself when none of its images names a file; else a ``Deferred`` of it whose image
        cells name copies of those files, read and written by the first backend writer that reaches it.
        No file is opened here.

        :param record: a ``Table`` or ``Images`` record a caller is emitting.
        """
        if not any(image.path is not None for image in _images(record)):
            return record
        named: list[str] = []  # the copies this record's cells name, once written
        deferred = Deferred(type(record), LazyFuture(lambda: self._with_copies(record, named)), nbytes=record.nbytes)
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

    # -- backend writer side (the first writer to reach the record) ------------------------------------
    def _with_copies(self, record: Table | Images, named: list[str]) -> Table | Images:
        """``record`` with each image cell that names a file naming logbus's copy of it instead, read now
        (``LazyFuture``: once, by the first writer; the others wait for this result). ``ReportedLoss``,
        warned once, for a file that cannot be read or a copy that cannot be written."""
        copies: dict[str, tuple[str, str]] = {}  # the caller's path -> (the copy's path, content hash)
        for image in _images(record):
            path = image.path
            if path is None or path in copies:  # a file named twice is read once
                continue
            try:
                data = _read(path)
            except OSError as error:
                raise _lost(record, "could not read image.path", path, error) from error
            digest = content_hash(data)
            extension = _EXTENSION.search(path)
            try:
                kept = self._keep(digest + (extension.group().lower() if extension else ""), data, named)
            except OSError as error:
                raise _lost(record, "could not write the copy of image.path", path, error) from error
            copies[path] = (kept, digest)
            del data  # one file's bytes in memory at a time

        def copied(cell: Any) -> Any:
            if not isinstance(cell, Image) or cell.path is None:
                return cell
            path, digest = copies[cell.path]
            return _changed(cell, path=path, digest=digest)

        if isinstance(record, Images):
            return _changed(record, images=[copied(image) for image in record.images])
        return _changed(record, rows=[[copied(cell) for cell in row] for row in record.rows])

    def _keep(self, name: str, data: bytes, named: list[str]) -> str:
        """The path of the copy ``name`` holding ``data``, written now unless a record not yet released
        already made it (the same content under the same name: it is never changed)."""
        with self._lock:
            if self._closed:
                raise ReportedLoss("the bus has closed: no backend takes this record any more")
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


def _lost(record: Table | Images, what: str, path: str, error: OSError) -> ReportedLoss:
    """Warns once that ``record`` is lost, and the exception that has every backend count it dropped."""
    lost = f"{type(record).__name__} {record.key!r} at step {record.step}"
    log.warning("logbus: %s is lost in every backend (each counts it dropped): %s %r (%s: %s)",
                lost, what, path, type(error).__name__, error.strerror or error)
    return ReportedLoss(f"{lost}: {what} {path!r} ({type(error).__name__}: {error.strerror or error})")


def _changed(record: Any, **fields: Any) -> Any:
    """A copy of the frozen ``record`` with ``fields`` changed, without its checks again (``dataclasses.replace``
    would run them: a ``stat`` of every copy and every cell checked once more, on a writer holding the GIL)."""
    changed = copy.copy(record)
    for name, value in fields.items():
        object.__setattr__(changed, name, value)
    return changed


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
    descriptor = os.open(path, _READ_FLAGS)
    try:
        size = os.fstat(descriptor).st_size
        parts = [os.read(descriptor, size + 1)]  # the whole file, unless it grows meanwhile
        while more := os.read(descriptor, _LARGE_READ):
            parts.append(more)
    finally:
        os.close(descriptor)
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
