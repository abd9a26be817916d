"""Crash-safe file writes: a reader never sees half a file or half a JSON line.

JSON goes out through :mod:`logbus.files._strict_json`: NaN and infinities as ``null``, their kinds kept."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import threading
from typing import IO, Any, Iterator

from logbus.files import _strict_json as strict_json

FILE_MODE = 0o644  # before the umask, as for any file this process creates with open()
_UMASK: list[int] = []


def _umask() -> int:
    """The process umask, read without changing it where /proc tells it (os.umask only sets it)."""
    if not _UMASK:
        try:
            with open("/proc/self/status", encoding="ascii") as status:
                _UMASK.append(next(int(line.split()[1], 8) for line in status if line.startswith("Umask:")))
        except (OSError, StopIteration, ValueError, IndexError):
            current = os.umask(0o022)
            os.umask(current)
            _UMASK.append(current)
    return _UMASK[0]


@contextlib.contextmanager
def _replacing(path: str) -> Iterator[IO[bytes]]:
    """A file to write that becomes ``path`` only once the block ends without an error.

    It is a temporary file in the same folder, renamed over ``path``. The temporary file is hidden and
    ends in ``.partial``: if the process is killed before the rename, what is left never passes for a
    finished file (a ``*.json`` or ``*.png`` glob does not pick it up)."""
    folder = os.path.dirname(path) or "."
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{os.path.basename(path)[:64]}.", suffix=".partial")
    try:
        # mkstemp makes the file 0600; the finished file gets the mode of the JSON-lines files beside it.
        os.fchmod(fd, FILE_MODE & ~_umask())
        with os.fdopen(fd, "wb") as file:
            yield file
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def write_bytes_atomic(path: str, data: bytes) -> None:
    """Writes ``data`` to ``path``: a reader sees the old file or all of the new one, never a part."""
    with _replacing(path) as file:
        file.write(data)


def copy_file_atomic(source: str, path: str) -> None:
    """Copies the file ``source`` to ``path`` the way :func:`write_bytes_atomic` writes: a copy cut short
    (a full disk, a kill) never leaves a truncated file under the finished name.

    A backend copies every image of a sample table this way, so the common case is kept to plain
    system calls (the kernel copies, without the GIL): a hidden ``.partial`` name made from ``path``
    and this thread, created exclusively with the final mode, then renamed. Only if that name is taken
    (a copy of the same path cut short earlier) does it fall back to a random temporary name."""
    folder, name = os.path.split(path)
    tmp = os.path.join(folder, f".{name[:64]}.{os.getpid()}-{threading.get_ident()}.partial")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), FILE_MODE)
    except FileExistsError:
        with open(source, "rb") as original, _replacing(path) as file:
            shutil.copyfileobj(original, file)
        return
    try:
        with open(source, "rb", buffering=0) as original:
            _copy_all(original.fileno(), fd, os.fstat(original.fileno()).st_size)
        os.close(fd)
        fd = -1
        os.replace(tmp, path)
    except BaseException:
        if fd >= 0:
            os.close(fd)
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def link_or_copy_file_atomic(source: str, path: str) -> bool:
    """Puts the finished file ``source`` at ``path`` with one system call where it can: a hard link
    (same filesystem). The name appears with the whole file or not at all, as with a copy, and no byte
    passes through this process. Returns True when linked; otherwise (another filesystem, links not
    supported, ``path`` taken) it copies with :func:`copy_file_atomic` and returns False.

    Only for a ``source`` that is never rewritten in place (the encoder's scratch files are handed out
    once written and, written again, are made anew with ``O_EXCL``, never truncated): a link shares
    the file, so a change to one is a change to both. Deleting ``source`` afterwards leaves ``path``
    intact."""
    try:
        os.link(source, path)
        return True
    except OSError:
        # EXDEV (another filesystem), EPERM/ENOTSUP (no links there), EEXIST (a name taken): copy. A
        # missing source fails the copy too, with the error a copy has always raised.
        pass
    copy_file_atomic(source, path)
    return False


def _copy_all(source_fd: int, target_fd: int, size: int) -> None:
    """Copies ``size`` bytes in the kernel where it can (``sendfile``), else through a buffer."""
    copied = 0
    try:
        while copied < size:
            sent = os.sendfile(target_fd, source_fd, copied, size - copied)
            if sent == 0:  # the source shrank under us: copy what is there
                break
            copied += sent
        if copied >= size:
            return
    except (AttributeError, OSError) as error:  # no sendfile here, or not for these files
        if isinstance(error, OSError) and copied:
            raise
    os.lseek(source_fd, copied, os.SEEK_SET)
    while chunk := os.read(source_fd, 1 << 20):
        view = memoryview(chunk)
        while view:
            view = view[os.write(target_fd, view):]


def write_json_atomic(path: str, value: Any) -> None:
    write_bytes_atomic(path, strict_json.dumps(value, indent=1, sort_keys=True).encode())


class JsonLines:
    """An append-only JSON-lines file. Each record goes out in one ``write`` of a whole line on an
    ``O_APPEND`` descriptor, so a crash leaves either the line or nothing of it."""

    def __init__(self, path: str):
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        self.path = path
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, FILE_MODE)

    def append(self, value: Any) -> None:
        line = (strict_json.dumps(value, separators=(",", ":")) + "\n").encode()
        written = os.write(self._fd, line)
        if written != len(line):  # a short write means the disk is full: undo the partial line
            os.ftruncate(self._fd, os.lseek(self._fd, 0, os.SEEK_END) - written)
            raise OSError(f"short write to {self.path}: {written} of {len(line)} bytes (disk full?)")

    def close(self) -> None:
        os.close(self._fd)
