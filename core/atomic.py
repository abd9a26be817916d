"""Crash-safe file writes: a reader never sees half a file or half a JSON line."""

from __future__ import annotations

import json
import os
import tempfile
from typing import Any


def write_bytes_atomic(path: str, data: bytes) -> None:
    """Writes to a temporary file in the same folder, then renames it over ``path``."""
    folder = os.path.dirname(path) or "."
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=os.path.basename(path)[-16:])
    try:
        with os.fdopen(fd, "wb") as file:
            file.write(data)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def write_json_atomic(path: str, value: Any) -> None:
    write_bytes_atomic(path, json.dumps(value, indent=1, sort_keys=True, default=str).encode())


class JsonLines:
    """An append-only JSON-lines file. Each record goes out in one ``write`` of a whole line on an
    ``O_APPEND`` descriptor, so a crash leaves either the line or nothing of it."""

    def __init__(self, path: str):
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        self.path = path
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def append(self, value: Any) -> None:
        line = (json.dumps(value, separators=(",", ":"), default=str, allow_nan=True) + "\n").encode()
        written = os.write(self._fd, line)
        if written != len(line):  # a short write means the disk is full: undo the partial line
            os.ftruncate(self._fd, os.lseek(self._fd, 0, os.SEEK_END) - written)
            raise OSError(f"short write to {self.path}: {written} of {len(line)} bytes (disk full?)")

    def close(self) -> None:
        os.close(self._fd)
