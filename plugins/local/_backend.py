"""The embedded default backend: a run folder anyone can read, no account, no network.

Layout of ``{root}/{run}/`` (documented in the README, "Local run format")::

    run.json            name, rank, world size, start/end time, status, exit code
    hparams.json        hyperparameters, secrets already redacted
    metrics.jsonl       one line per log call: {"step": int|null, "time": float, "<name>": value, ...}; a
                        metric named step, time or _nonfinite (or metric/...) is written as metric/<name>
    tables/<key>.jsonl  one line per logged table: {"key", "step", "columns", "rows"}; image cells are
                        {"_type": "image", "path": "media/...", "caption", "masks": {...}, "boxes": [...]}
    media/...           the image files tables and image lists point to (paths relative to the run)
    artifacts/<name>    copies of uploaded files; artifacts.jsonl lists them with type and aliases
    index.html          a static viewer of all of the above (``_viewer.py``; ``logbus view RUN_DIR``)

Every JSON document is strict JSON (``logbus.files.restore`` reads it back): NaN and infinities are
``null``, their kinds listed under the document's ``"_nonfinite"`` field. Every file is written whole
or not at all (``logbus.files``), media from the encoder's scratch folder included: those are hard-linked
into ``media/`` (one system call, no byte through the training process) when the scratch folder is on
the run folder's filesystem, which ``scratch_folder`` asks the sample pipeline for, and copied otherwise.
"""

from __future__ import annotations

import os
import time
import warnings
from dataclasses import asdict
from typing import Any

import numpy as np

import logbus
from logbus.files import (
    JsonLines,
    copy_file_atomic,
    encode_image,
    encode_mask,
    hparam_field,
    link_or_copy_file_atomic,
    metric_field,
    safe_filename,
    safe_relpath,
    write_bytes_atomic,
    write_json_atomic,
)
from logbus.options import Option, Options
from logbus.plugins._backend_common import fallback_run_started, rank_run_name
from logbus.plugins.local._viewer import TableCache, write_viewer
from logbus.records import Artifact, Hyperparameters, Image, Images, Mask, Metrics, RunFinished, RunStarted, Table, as_float
from logbus.samples import content_name, mask_content_name, overlay_labels, overlay_of

DEFAULT_ROOT = "logbus_runs"
_LABELS_KEPT = 64  # distinct class-label mappings remembered (_labels_of); a table has one or two


class LocalBackend:
    """Writes the run to ``root/<run name>``. ``root`` defaults to ``$LOGBUS_DIR`` or ``./logbus_runs``."""

    name = "local"
    supports = frozenset({Table, Images, Artifact})
    # Every rank writes its own folder: a run's files never mix ranks (rank_zero_only is always False).
    rank_zero_only = False
    options = Options(
        Option("root", None, "the folder runs go in (`<root>/<run name>`); `None`: `$LOGBUS_DIR`, else `./logbus_runs`",
               kind="path"),
        Option("image_format", "png", '`"png"` or `"jpeg"`, for images that arrive as pixels (sample images arrive '
               'encoded and are copied as they are)', kind="choice", choices=("png", "jpeg")),
    )

    # (defaults are read from the class body's `options` while the class is being made)
    def __init__(self, root: str | os.PathLike | None = options.defaults["root"], *,
                 image_format: str = options.defaults["image_format"]):
        self.options.check(root=root, image_format=image_format)
        self.root = os.fspath(root) if root is not None else os.environ.get("LOGBUS_DIR", DEFAULT_ROOT)
        self.image_format = image_format
        self.run_dir: str | None = None
        self._run_info: dict[str, Any] = {}
        self._hparams: dict[str, Any] = {}
        self._files: dict[str, JsonLines] = {}  # relative path -> its open file, metrics.jsonl included
        self._media_count = 0
        self._folders: dict[str, tuple[str, str]] = {}  # table key -> its media folder, relative and absolute
        self._copied: dict[str, str] = {}  # encoded file's content name -> its copy in media/ (written once)
        self._masks: dict[tuple, str] = {}  # (name, content name, labels) -> the mask's file in media/ (written once)
        self._labels: dict[int, tuple[dict, dict[str, str], tuple]] = {}  # see _labels_of
        self._viewer_at = self._viewer_cost = 0.0  # when index.html was last written, and how long that took
        self._viewer_tables = TableCache()  # the page JSON of the tables' lines, each line read once

    def log(self, record) -> None:
        if isinstance(record, RunStarted):
            self._start(record)
            return
        if self.run_dir is None:  # a plain caller that skipped RunStarted still gets a folder
            self._start(fallback_run_started())
        if isinstance(record, Metrics):
            line = {"step": record.step, "time": time.time()}
            line.update({metric_field(name): as_float(value) for name, value in record.values.items()})
            self._files["metrics.jsonl"].append(line)
        elif isinstance(record, Hyperparameters):
            self._hparams.update(record.values)
            self._write_hparams()
        elif isinstance(record, Table):
            rows = [[self._cell(cell, record.key) for cell in row] for row in record.rows]
            self._jsonl(f"tables/{safe_relpath(record.key)}.jsonl").append(
                {"key": record.key, "step": record.step, "columns": record.columns, "rows": rows})
            self._refresh_viewer()
        elif isinstance(record, Images):
            rows = [[self._cell(image, record.key)] for image in record.images]
            self._jsonl(f"tables/{safe_relpath(record.key)}.jsonl").append(
                {"key": record.key, "step": record.step, "columns": ["image"], "rows": rows})
            self._refresh_viewer()
        elif isinstance(record, Artifact):
            name = safe_filename(record.name)
            destination = self._path("artifacts", name)
            os.makedirs(os.path.dirname(destination), exist_ok=True)
            copy_file_atomic(record.path, destination)
            self._jsonl("artifacts.jsonl").append({"name": name, "path": f"artifacts/{name}", "type": record.type,
                                                   "aliases": list(record.aliases), "metadata": record.metadata})

    def close(self, finish: RunFinished) -> None:
        if self.run_dir is None:
            return
        self._run_info.update(status="finished" if finish.exit_code == 0 else "failed",
                              exit_code=finish.exit_code, reason=finish.reason, finished_at=time.time())
        try:
            write_json_atomic(self._path("run.json"), self._run_info)
        finally:  # a full disk must not leak the descriptors (it is reported once, by the bus)
            for file in self._files.values():
                file.close()
        self._refresh_viewer(final=True)

    def scratch_folder(self) -> str:
        """Where a sample pipeline on this backend's bus should keep its encoded files: ``.scratch``
        under ``root`` (hidden, never taken for a run folder), on the run folder's filesystem, so each
        file reaches ``media/`` as a hard link rather than a copy made by this backend's thread, which
        runs in the training process (a copy is most of this backend's per-sample cost)."""
        return os.path.join(self.root, ".scratch")

    # -- helpers ---------------------------------------------------------------------------------
    def _refresh_viewer(self, final: bool = False) -> None:
        """Rewrites index.html, so a live run can be watched by reloading the page. Tables come once per
        eval pass and this runs on the backend's worker, never the training thread; but each write reads
        the whole run (about 0.1 s for 100 passes of 100 rows), so between tables it is skipped until ten
        times its last cost has passed: at most ~10% of this backend's time. ``close`` always writes it."""
        started = time.monotonic()
        if not final and started - self._viewer_at < 10 * self._viewer_cost:
            return
        try:
            write_viewer(self._path(), self._viewer_tables)  # the run folder
        except Exception as error:  # a convenience page must never cost the run its data
            warnings.warn(f"local backend: could not write the viewer {self._path('index.html')}: {error!r}",
                          RuntimeWarning, stacklevel=2)
        self._viewer_at, self._viewer_cost = time.monotonic(), time.monotonic() - started

    def _start(self, record: RunStarted) -> None:
        base = safe_filename(rank_run_name(record.run_name, record, self.rank_zero_only))
        os.makedirs(self.root, exist_ok=True)
        run_dir, index = os.path.join(self.root, base), 2
        while True:  # never mix two runs in one folder
            try:
                os.mkdir(run_dir)
                break
            except FileExistsError:
                run_dir, index = os.path.join(self.root, f"{base}-{index}"), index + 1
        self.run_dir = run_dir
        self._run_info = {"name": record.run_name, "folder": os.path.basename(run_dir), "rank": record.rank,
                          "world_size": record.world_size, "started_at": time.time(), "status": "running",
                          "logbus_version": logbus.__version__}
        write_json_atomic(self._path("run.json"), self._run_info)
        self._hparams = dict(record.config)
        self._write_hparams()
        self._files["metrics.jsonl"] = JsonLines(self._path("metrics.jsonl"))  # there from the start, metrics or not

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

    def _media_path(self, key: str, suffix: str) -> tuple[str, str]:
        self._media_count += 1
        folders = self._folders.get(key)
        if folders is None:  # once per table key, not per image (a table has thousands)
            relative_folder = f"media/{safe_relpath(key)}/"
            folders = self._folders[key] = (relative_folder, self._path(relative_folder))
            os.makedirs(folders[1], exist_ok=True)
        name = f"{self._media_count:07d}{suffix}"
        return folders[0] + name, folders[1] + name

    def _cell(self, cell: Any, key: str) -> Any:
        if not isinstance(cell, Image):
            return cell
        if cell.path is not None:  # already encoded: link (or copy) the file, never re-encode
            seen = content_name(cell.path)
            relative = self._copied.get(seen)  # set: the same image again (a later eval), referenced
            if relative is None:
                relative, absolute = self._media_path(key, os.path.splitext(cell.path)[1] or ".png")
                link_or_copy_file_atomic(cell.path, absolute)
                self._viewer_tables.file_made(relative)
                self._copied[seen] = relative
        else:
            assert cell.pixels is not None  # an Image holds pixels or a path (records.Image checks it)
            suffix = ".png" if self.image_format == "png" else ".jpg"
            relative, absolute = self._media_path(key, suffix)
            write_bytes_atomic(absolute, encode_image(cell.pixels, self.image_format))
            self._viewer_tables.file_made(relative)
        masks = {}
        for name, mask in cell.masks.items():
            class_labels, labels = self._labels_of(mask)
            masks[name] = {"path": self._mask_file(key, name, mask, labels), "class_labels": class_labels}
        return {"_type": "image", "path": relative, "caption": cell.caption, "masks": masks,
                "boxes": [asdict(box) for box in cell.boxes]}

    def _labels_of(self, mask: Mask) -> tuple[dict[str, str], tuple[tuple[int, str], ...]]:
        """A mask's class labels as its cell has them (``{"<id>": label}``) and as the key of its file
        (sorted ``(id, label)`` pairs). Every row of a segmentation table has the same labels: made once
        per labels, not per mask (found again by the mapping's id, and used only while it is still equal)."""
        mapping = mask.class_labels or {}
        known = self._labels.get(id(mapping))
        if known is not None and known[0] == mapping:
            return known[1], known[2]
        if len(self._labels) >= _LABELS_KEPT:
            self._labels.clear()
        made = ({str(k): v for k, v in mapping.items()}, overlay_labels(mapping))
        self._labels[id(mapping)] = (dict(mapping), *made)
        return made

    def _mask_file(self, key: str, name: str, mask: Mask, labels: tuple[tuple[int, str], ...]) -> str:
        """The mask's file in media/, written once: the same ground truth comes back at every eval, and
        like an image seen again it is referenced, not encoded and written again. The labels are part of
        what is the same, as the viewer colours a mask file once for its labels.

        A mask the sample pipeline already encoded (``mask.path``, a content-named PNG of the same
        bytes ``encode_mask`` makes) is linked, as images are: creating a file in the run folder costs
        this thread, in the training process, 60 µs to 1 ms on ext4 depending on load (measured), a
        link about 20 µs. Its overlay is linked too, and the page told so with the mask's class ids
        (``TableCache.overlay_made``), so the page build neither opens the mask nor stats the overlay."""
        seen = (name, _mask_content_name(mask, labels), labels)
        relative = self._masks.get(seen)
        if relative is None:
            relative, absolute = self._media_path(key, f".{safe_filename(name)}.mask.png")
            if mask.path is None:
                write_bytes_atomic(absolute, encode_mask(np.ascontiguousarray(mask.data)))
            else:
                link_or_copy_file_atomic(mask.path, absolute)
                try:  # its overlay, which the worker process rendered for these labels: the viewer's, linked
                    os.link(overlay_of(mask.path), overlay_of(absolute))
                except OSError:
                    pass  # none there, or another filesystem: the viewer makes it, as for any mask
                else:
                    self._viewer_tables.overlay_made(relative, mask.data, dict(labels))
            self._viewer_tables.file_made(relative)
            self._masks[seen] = relative
        return relative


def _mask_content_name(mask: Mask, labels: tuple[tuple[int, str], ...]) -> str:
    """The content name of the file the sample pipeline's worker process encodes ``mask`` to with its
    overlay: read from ``mask.path`` when the worker named it, no byte hashed here; made from the ids
    as the worker makes it otherwise (the pipeline's own threads encode no masks while the worker
    process starts: ``Mask.path`` is None then). The same mask arriving either way is one file."""
    if mask.path is not None:
        named = content_name(mask.path)
        if named != mask.path:  # a file the pipeline named (any other path: keyed by its ids below)
            return named
    return mask_content_name(mask.data, labels)


@logbus.hookimpl
def register_backends(register):
    register("local", LocalBackend, description="run folder with JSON lines and image files; no account needed")
