"""What a caller's ``Image(path=...)`` files cost the training thread, and the writer that copies them.

The bus wraps a ``Table`` or ``Images`` record that names a file in a ``Deferred`` during ``emit`` (no
file is opened there); the first backend writer to reach it reads each file once and writes the
content-named copy every backend gets (``logbus.bus._file_copies``). Per image cell, in µs, medians of 5
rounds (spread in brackets), for three tables (one 3 KB PNG; 64 of them; 16 PNGs of 200 KB):

- ``call``: ``Image(path=...)`` cells made and logged with ``run.log_table``, the call alone, "main" with
  the bus's deferring switched off (backends get the caller's path, as on main) against this branch,
  each in a loop of calls with the local backend storing the tables on its writer thread meanwhile
  (its work, the reads and the copies compete with the loop for the GIL and the 2 cores);
- ``defer``: the bus's own part on the caller's thread in isolation (finding the files among the cells,
  the deferred record; no backend running);
- ``copy``: the first backend writer's part in isolation (read, hash, write the copy, the record that
  names it, and deleting the copy once released)::

    .venv/bin/python benchmarks/logged_files.py

A plain script: it reports figures, asserts nothing, and writes under a temporary folder.
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time

import numpy as np
from PIL import Image as PILImage

import logbus
from logbus.bus._file_copies import FileCopies
from logbus.records import Image, Table

ROUNDS = 5
TABLES = ((32, 1, 200), (32, 64, 20), (256, 16, 10))  # (image side in px, rows, calls per round)


def _files(folder: str, side: int, rows: int) -> list[str]:
    generator = np.random.default_rng(side)
    paths = []
    for index in range(rows):
        path = os.path.join(folder, f"{side}-{index}.png")
        PILImage.fromarray(generator.integers(0, 256, (side, side, 3), dtype=np.uint8)).save(path)
        paths.append(path)
    return paths


def _calls(paths: list[str], calls: int, deferred: bool) -> float:
    with logbus.start_run("bench", backends=["local"]) as run:
        if not deferred:
            run.bus._copies_files_of = frozenset()  # the bus as on main: backends get the caller's path
        started = time.perf_counter()
        for step in range(calls):
            run.log_table("t", ["image"], [[Image(path=path)] for path in paths], step=step)
        elapsed = time.perf_counter() - started
    return elapsed / calls / len(paths) * 1e6


def _parts(paths: list[str], calls: int) -> tuple[float, float]:
    copies = FileCopies()
    defer = copy = 0
    for step in range(calls):
        table = Table("t", ["image"], [[Image(path=path)] for path in paths], step)
        started = time.perf_counter_ns()
        deferred = copies.defer(table)
        defer += time.perf_counter_ns() - started
        deferred.hold()
        started = time.perf_counter_ns()
        deferred.future.result()
        deferred.release()
        copy += time.perf_counter_ns() - started
    copies.close()
    return defer / calls / len(paths) / 1000, copy / calls / len(paths) / 1000


def _line(values: list[float]) -> str:
    return f"{statistics.median(values):7.1f} ({min(values):.1f}-{max(values):.1f})"


def main() -> None:
    folder = tempfile.mkdtemp(prefix="logbus-bench-files-")
    os.environ["LOGBUS_DIR"] = os.path.join(folder, "runs")
    print("µs per image cell, median (min-max) of", ROUNDS, "rounds")
    for side, rows, calls in TABLES:
        paths = _files(folder, side, rows)
        main_call, branch_call, defer, copy = [], [], [], []
        for _ in range(ROUNDS):
            main_call.append(_calls(paths, calls, deferred=False))
            branch_call.append(_calls(paths, calls, deferred=True))
            parts = _parts(paths, calls)
            defer.append(parts[0])
            copy.append(parts[1])
        print(f"{rows:3d} x {side}px PNG ({os.path.getsize(paths[0]):6d} B): call main {_line(main_call)}, "
              f"call this branch {_line(branch_call)}; defer {_line(defer)}, copy {_line(copy)}")


if __name__ == "__main__":
    main()
