"""The embedded default backend: a run folder anyone can read, no account, no network.

Layout of ``{root}/{run}/`` (format 2, the docs' "Local run format")::

    run.json            name, rank, world size, start/end time, status, exit code, format_version 2
    hparams.json        hyperparameters, secrets already redacted
    metrics.jsonl       one line per log call: {"step": int|null, "time": float, "<name>": value, ...}; a
                        metric named step, time or _nonfinite (or metric/...) is written as metric/<name>
    rows/<key>/...      one Parquet file per logged table (``_store_writer.py``); log_images calls batched
    packs/<id>.parquet  pixels by content hash, each distinct image or mask once
    artifacts/<name>    copies of uploaded files; artifacts.jsonl lists them with type and aliases
    .tmp/               files being written

Every JSON document is strict JSON (``logbus.files.restore`` reads it back): NaN and infinities are
``null``, their kinds listed under the document's ``"_nonfinite"`` field. Every file is written whole or
not at all. This backend builds no viewer page: ``logbus view`` and ``logbus.read_table`` read the store.

A run name whose folder exists is another run (``<name>-2``, ...), except a resume: the folder's run did
not finish (``status`` ``failed``, or ``running`` with no live process of that id on this host), has the same
rank and world size and is format 2. Composer's autoresume restarts a run under the same name after a
preemption or a crash: it appends to that folder (tables already written are never replaced).
"""

from __future__ import annotations

import json
import os
import socket
import time
from typing import Any

from logbus._version import __version__
from logbus.files import (
    JsonLines,
    copy_file_atomic,
    hparam_field,
    hparam_name,
    metric_field,
    restore,
    safe_filename,
    write_json_atomic,
)
from logbus.hookspecs import hookimpl
from logbus.options import Option, Options
from logbus.plugins._backend_common import fallback_run_started, rank_run_name
from logbus.plugins.local._store_format import FORMAT_VERSION, JPEG, PNG, RAW, RUN_JSON
from logbus.plugins.local._store_writer import IMAGE_BATCH_SECONDS, StoreWriter
from logbus.records import Artifact, Hyperparameters, Images, Metrics, RunFinished, RunStarted, Table, as_float

DEFAULT_ROOT = "logbus_runs"


class LocalBackend:
    """Writes the run to ``root/<run name>``. ``root`` defaults to ``$LOGBUS_DIR`` or ``./logbus_runs``."""

    name = "local"
    supports = frozenset({Table, Images, Artifact})
    # Every rank writes its own folder: a run's files never mix ranks (rank_zero_only is always False).
    rank_zero_only = False
    # The store takes pixels as they are (raw + zstd) and hashes nothing the pipeline hashed: a PNG file
    # per sample would be encoded, created and read back for nothing.
    needs_image_files = False
    options = Options(
        Option("root", None, "the folder runs go in (`<root>/<run name>`); `None`: `$LOGBUS_DIR`, else `./logbus_runs`",
               kind="path"),
        Option("image_format", RAW, '`"raw"`, `"png"` or `"jpeg"`: how images that arrive as pixels are stored in '
               'the packs (images that arrive as encoded files are stored as their bytes)', kind="choice",
               choices=(RAW, PNG, JPEG)),
    )

    # (defaults are read from the class body's `options` while the class is being made)
    def __init__(self, root: str | os.PathLike | None = options.defaults["root"], *,
                 image_format: str = options.defaults["image_format"]):
        self.options.check(root=root, image_format=image_format)
        self.root = os.fspath(root) if root is not None else os.environ.get("LOGBUS_DIR", DEFAULT_ROOT)
        self.image_format = image_format
        self.run_dir: str | None = None
        self.store: StoreWriter | None = None
        self._run_info: dict[str, Any] = {}
        self._hparams: dict[str, Any] = {}
        self._files: dict[str, JsonLines] = {}  # relative path -> its open file, metrics.jsonl included

    def log(self, record) -> None:
        if isinstance(record, RunStarted):
            self._start(record)
            return
        if self.run_dir is None:  # a plain caller that skipped RunStarted still gets a folder
            self._start(fallback_run_started())
        assert self.store is not None
        if isinstance(record, Metrics):
            line = {"step": record.step, "time": time.time()}
            line.update({metric_field(name): as_float(value) for name, value in record.values.items()})
            self._files["metrics.jsonl"].append(line)
        elif isinstance(record, Hyperparameters):
            self._hparams.update(record.values)
            self._write_hparams()
        elif isinstance(record, Table):
            self.store.write_table(record.key, record.columns, record.rows, record.step)
        elif isinstance(record, Images):
            self.store.add_images(record.key, record.images, record.step)
        elif isinstance(record, Artifact):
            name = safe_filename(record.name)
            destination = self._path("artifacts", name)
            os.makedirs(os.path.dirname(destination), exist_ok=True)
            copy_file_atomic(record.path, destination)
            self._jsonl("artifacts.jsonl").append({"name": name, "path": f"artifacts/{name}", "type": record.type,
                                                   "aliases": list(record.aliases), "metadata": record.metadata})
        if self.store._batches:  # log_images buffers are written once old, even if no more images come
            self.store.flush_images(older_than=IMAGE_BATCH_SECONDS)

    def flush(self) -> None:
        """Writes the buffered ``log_images`` rows (the bus flushes its backends at ``fit_end``)."""
        if self.store is not None:
            self.store.flush_images()

    def close(self, finish: RunFinished) -> None:
        if self.run_dir is None:
            return
        assert self.store is not None
        try:
            self.store.flush_images()
        finally:  # run.json says how the run ended even when its last images could not be written
            self._run_info.update(status="finished" if finish.exit_code == 0 else "failed",
                                  exit_code=finish.exit_code, reason=finish.reason, finished_at=time.time())
            try:
                write_json_atomic(self._path(RUN_JSON), self._run_info)
            finally:  # a full disk must not leak the descriptors (it is reported once, by the bus)
                for file in self._files.values():
                    file.close()

    def scratch_folder(self) -> str:
        """Where a sample pipeline on this backend's bus should keep its encoded files: ``.scratch``
        under ``root`` (hidden, never taken for a run folder)."""
        return os.path.join(self.root, ".scratch")

    # -- helpers ---------------------------------------------------------------------------------
    def _start(self, record: RunStarted) -> None:
        base = safe_filename(rank_run_name(record.run_name, record, self.rank_zero_only))
        os.makedirs(self.root, exist_ok=True)
        run_dir, index = os.path.join(self.root, base), 2
        resumed = None
        while True:  # never mix two runs in one folder
            try:
                os.mkdir(run_dir)
                break
            except FileExistsError:
                if index == 2:  # the folder of the run's own name: is this run resuming it?
                    resumed = _resumable(run_dir, record)
                    if resumed is not None:
                        break
                run_dir, index = os.path.join(self.root, f"{base}-{index}"), index + 1
        self.run_dir = run_dir
        now = time.time()
        self._run_info = {"name": record.run_name, "folder": os.path.basename(run_dir), "rank": record.rank,
                          "world_size": record.world_size, "started_at": now, "status": "running",
                          "logbus_version": __version__, "format_version": FORMAT_VERSION,
                          "host": socket.gethostname(), "pid": os.getpid()}
        self._hparams = dict(record.config)
        if resumed is not None:
            self._run_info.update(started_at=resumed.get("started_at", now),
                                  resumed_at=[*resumed.get("resumed_at", []), now])
            self._hparams = {**_read_hparams(self._path("hparams.json")), **self._hparams}
        write_json_atomic(self._path(RUN_JSON), self._run_info)
        self._write_hparams()
        self._files["metrics.jsonl"] = JsonLines(self._path("metrics.jsonl"))  # there from the start, metrics or not
        self.store = StoreWriter(run_dir, record.rank, self.image_format)

    def _write_hparams(self) -> None:
        write_json_atomic(self._path("hparams.json"),
                          {hparam_field(name): value for name, value in self._hparams.items()})

    def _path(self, *parts: str) -> str:
        assert self.run_dir is not None  # every caller runs once the run has started
        return os.path.join(self.run_dir, *parts)

    def _jsonl(self, relative: str) -> JsonLines:
        if relative not in self._files:
            self._files[relative] = JsonLines(self._path(relative))
        return self._files[relative]


def _resumable(run_dir: str, record: RunStarted) -> dict[str, Any] | None:
    """The run.json of ``run_dir`` if this run resumes it (see the module docstring), else None."""
    try:
        with open(os.path.join(run_dir, RUN_JSON), encoding="utf-8") as file:
            info = json.load(file)
    except (OSError, ValueError):
        return None
    if not isinstance(info, dict) or info.get("format_version") != FORMAT_VERSION:
        return None
    if (info.get("rank"), info.get("world_size")) != (record.rank, record.world_size):
        return None
    if info.get("status") == "failed":
        return info
    if info.get("status") == "running" and not _alive_here(info.get("host"), info.get("pid")):
        return info
    return None  # finished, or still being written by a live process: another run


def _alive_here(host: Any, pid: Any) -> bool:
    """Whether ``pid`` is a live process on this host; a run on another host is taken for live (it cannot
    be told from here, and appending to a live run's folder would mix two runs)."""
    if host != socket.gethostname():
        return True
    if not isinstance(pid, int):
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def _read_hparams(path: str) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as file:
            return {hparam_name(name): value for name, value in restore(json.load(file)).items()}
    except (OSError, ValueError, AttributeError):
        return {}


@hookimpl
def register_backends(register):
    register("local", LocalBackend, description="run folder: metrics as JSON lines, tables and images in a packed "
                                                "Parquet store (logbus.read_table); no account needed")
