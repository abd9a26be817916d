"""A static viewer for a local run folder: ``index.html`` next to ``run.json``, opened from ``file://``.

The page needs no server and fetches nothing: the run's data is embedded as JSON in a
``<script type="application/json">`` tag (``<``, ``>``, ``&`` escaped as ``\\u003c``..., so no label can
close the tag), and images are referenced by their ``media/...`` paths relative to the page.

Only a plain relative path inside the run folder reaches an ``<img src>`` (see
:func:`media_path`): a run folder from someone else must not make the page load a URL (``http://``,
``//host``, ``data:``, ``javascript:``) or a file elsewhere on the disk (``/abs``, ``../x``, a symlink out).

Masks are coloured here, once, into ``*.overlay.png`` RGBA files beside the class-id PNGs: a page opened
from ``file://`` may not read pixels back from a canvas (a tainted canvas), so the browser only stacks
two ``<img>`` elements. Where the sample pipeline's worker process made the overlay already and the
local backend linked it, the backend tells its ``TableCache`` the mask's class ids, and the page build
opens nothing for that mask. The HTML, CSS and JS live in ``viewer_template.html``.
"""

from __future__ import annotations

import functools
import json
import math
import os
import re
from importlib import resources
from typing import Any, Container, Iterator, Mapping, Sequence

import numpy as np
from PIL import Image as PILImage

from logbus.files import METRICS_LINE_FIELDS, hparam_name, metric_name, write_bytes_atomic
from logbus.files import _strict_json as strict_json
from logbus.files._overlay import class_colour, encode_overlay, overlay_classes

INDEX = "index.html"
_DATA_SLOT = "__LOGBUS_RUN_DATA__"
# One component of a media path as the local backend writes them (``media/samples/val/0000001.png``):
# no scheme (no ``:``), no ``%``-escapes, no backslash, never ``.``/``..`` or a hidden name.
_MEDIA_PART = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]*")
# Class ids below this are counted with bincount (an array of this many counts at most), others sorted.
_BINCOUNT_LIMIT = 1 << 16


def write_viewer(run_dir: str | os.PathLike, cache: "TableCache | None" = None) -> str:
    """Reads the run folder and writes ``index.html`` into it (atomically); returns the file's path.

    ``cache``: the local backend's, for the run folder it writes. Its table files only ever grow by
    whole lines, so each line is read and turned into page JSON once, not at every refresh (a refresh
    read every table again: most of the backend's per-sample cost after the media files). A page built
    with or without a cache is the same page."""
    run_dir = os.fspath(run_dir)
    if not os.path.isdir(run_dir):
        raise FileNotFoundError(f"run_dir: no such folder: {run_dir!r}")
    if not any(os.path.exists(os.path.join(run_dir, name)) for name in ("run.json", "metrics.jsonl", "tables")):
        raise ValueError(f"run_dir: {run_dir!r} is not a logbus run folder (no run.json, metrics.jsonl or tables/)")
    _FOLDERS.clear()  # a folder swapped for a symlink since the last page is resolved anew
    _INSIDE.clear()
    head = {
        "folder": os.path.basename(os.path.abspath(run_dir)),
        "run": _read_json(os.path.join(run_dir, "run.json")) or {},
        "hparams": _hparams(os.path.join(run_dir, "hparams.json")),
        "metrics": _metrics(os.path.join(run_dir, "metrics.jsonl")),
    }
    # The same text as embed_json({**head, "tables": [...]}), the tables' parts made (or kept) apart.
    tables = ",".join(table.json() for table in (cache if cache is not None else TableCache(kept=False)).tables(run_dir))
    data = embed_json(head)[:-1] + ',"tables":[' + tables + "]}"
    html = _template().replace(_DATA_SLOT, data, 1)
    path = os.path.join(run_dir, INDEX)
    write_bytes_atomic(path, html.encode("utf-8"))
    return path


def embed_json(value: Any) -> str:
    """JSON safe inside a ``<script>`` element: no ``<``/``>``/``&`` at all, so ``</script>`` or ``<!--``
    in any string cannot end the element; non-finite floats become ``null`` (``JSON.parse`` has no NaN)."""
    options: dict[str, Any] = dict(ensure_ascii=False, separators=(",", ":"), allow_nan=False, default=str)
    try:  # most pages have no NaN: one pass of the C encoder, not a Python walk over every cell first
        text = json.dumps(value, **options)
    except ValueError:  # a NaN or an infinity somewhere
        text = json.dumps(_finite(value), **options)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


@functools.cache
def _template() -> str:
    return resources.files("logbus.plugins.local").joinpath("viewer_template.html").read_text(encoding="utf-8")


# -- reading the run folder ------------------------------------------------------------------------
def _read_json(path: str) -> Any:
    """The document in ``path``, with the NaN/infinities that ``strict_json`` wrote as null put back."""
    try:
        with open(path, encoding="utf-8") as file:
            return strict_json.restore(json.load(file))
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def _read_lines(path: str) -> Iterator[dict]:
    """The records of a JSON-lines file; a half-written last line (a live run) is skipped."""
    try:
        with open(path, encoding="utf-8") as file:
            for line in file:
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if isinstance(record, dict):
                    yield strict_json.restore(record)
    except FileNotFoundError:
        return


def _hparams(path: str) -> dict:
    hparams = _read_json(path)
    if not isinstance(hparams, dict):
        return {}
    return {hparam_name(field): value for field, value in hparams.items()}


def _finite(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(item) for item in value]
    return value


def _metrics(path: str) -> dict[str, list[list]]:
    """``{name: [[x, value or None], ...]}``, x the step. Unstepped values are left out of a metric that
    has stepped ones; a metric logged only without steps is plotted against its call order."""
    stepped: dict[str, list[list]] = {}
    unstepped: dict[str, list[list]] = {}
    for record in _read_lines(path):
        step = record.get("step")
        for field, value in record.items():
            if field in METRICS_LINE_FIELDS or isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            name = metric_name(field)  # "metric/step" is the user's metric "step"
            if isinstance(step, (int, float)) and not isinstance(step, bool):
                stepped.setdefault(name, []).append([step, value])
            else:
                points = unstepped.setdefault(name, [])
                points.append([len(points), value])
    series = {name: points for name, points in unstepped.items() if name not in stepped}
    series.update({name: sorted(points, key=lambda point: point[0]) for name, points in stepped.items()})
    return dict(sorted(series.items()))


class _Made:
    """What the backend that writes the folder made there itself, in this process, so a page build need
    not look at the files again (``TableCache.file_made``, ``TableCache.overlay_made``)."""

    __slots__ = ("files", "overlays")

    def __init__(self) -> None:
        self.files: set[str] = set()  # media paths, relative to the run
        self.overlays: dict[str, tuple[int, ...]] = {}  # mask path -> the class ids its overlay shows


class _TableFile:
    """One ``tables/<key>.jsonl`` as the page shows it: each logged pass as page JSON, and the masks and
    class legend seen so far, extended line by line from ``offset``."""

    def __init__(self, key: str, identity: tuple[int, int], unterminated: bool):
        self.key, self.identity, self.unterminated = key, identity, unterminated
        self.offset = 0
        self.logs: list[str] = []  # each pass's {"step", "columns", "rows"} as embedded JSON
        self.legend: dict[int, list] = {}
        self.masks: list[str] = []

    def read(self, run_dir: str, path: str, made: _Made) -> None:
        """Takes in the lines written since the last read. Kept between reads, only whole lines are
        taken (the rest waits for the next read); read once, a last line without its newline is taken
        too, and skipped like any line that does not parse (half-written, in a live run).
        ``made``: what the folder's writer made (``TableCache``)."""
        with open(path, "rb") as file:
            file.seek(self.offset)
            text = file.read()
        complete = len(text) if self.unterminated else text.rfind(b"\n") + 1
        self.offset += complete
        for line in text[:complete].splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if not isinstance(record, dict):
                continue
            record = strict_json.restore(record)
            rows = [[_cell(run_dir, cell, self.legend, self.masks, made) for cell in row]
                    for row in record.get("rows") or []]
            self.logs.append(embed_json({"step": record.get("step"), "columns": record.get("columns") or [],
                                         "rows": rows}))

    def json(self) -> str:
        legend = [self.legend[class_id] for class_id in sorted(self.legend)]
        return (embed_json({"key": self.key})[:-1] + ',"logs":[' + ",".join(self.logs) + "],"
                + embed_json({"masks": self.masks, "legend": legend})[1:])


class TableCache:
    """The page JSON of a run folder's tables, kept between refreshes by the backend that writes the
    folder (``write_viewer(run_dir, cache)``). A file read before is read on from where it was left,
    unless it was replaced or shrank (another inode, or fewer bytes): then it is read from the start.
    A line changed in place is not seen: only for folders whose table files grow by appends alone (the
    backend's own; ``logbus view`` reads a folder without a cache). Rows once read are not checked
    again either (``media_path``): the backend's own folder, not one received from someone else."""

    def __init__(self, *, kept: bool = True) -> None:
        self._kept = kept  # False: a single read (``logbus view``), every byte there taken at once
        self._files: dict[str, _TableFile] = {}
        self._made = _Made()

    def file_made(self, path: str) -> None:
        """Tells the page that the backend made the media file at ``path`` (relative to the run) itself,
        as a file or a hard link, never a symlink: a page build checks its name and folder as for any
        path (``media_path``), but does not ``lstat`` it (a system call per file on every new row)."""
        self._made.files.add(path)

    def overlay_made(self, mask_path: str, ids: np.ndarray, labels: Mapping[int, str] | None) -> None:
        """Tells the page that the mask file at ``mask_path`` (relative to the run) has its overlay
        beside it already, made after the mask from the class ids ``ids`` for ``labels`` (the sample
        pipeline's worker process renders it, the backend links both), so a page build takes the
        legend's class ids from here instead of opening the mask with PIL and making them again: that
        was most of the backend's per-row cost in the training process. Called once per mask file.

        The ids are those ``overlay_classes`` colours (present in the mask and, with labels, labelled),
        counted with ``bincount`` where ids are small: a few µs for a 32×32 mask against ~15 µs for
        ``np.unique`` (the overlay's inverse indices are not needed here)."""
        flat = np.ascontiguousarray(ids).ravel()
        if not flat.size:
            present: list[int] = []
        elif flat.dtype.itemsize <= 2 or int(flat.max()) < _BINCOUNT_LIMIT:  # (uint8 masks need no max)
            # bincount takes any integer type that casts safely to intp as it is (a copy costs more).
            present = np.bincount(flat if flat.dtype != np.uint64 else flat.astype(np.intp)).nonzero()[0].tolist()
        else:  # a huge id would make bincount allocate a count for every id below it
            present = np.unique(flat).tolist()
        named = labels or {}
        self._made.overlays[mask_path] = tuple(i for i in present if not named or i in named)

    def tables(self, run_dir: str) -> list[_TableFile]:
        """Each ``tables/**/*.jsonl`` with every logged pass, in key order; image cells carry their overlay paths."""
        root = os.path.join(run_dir, "tables")
        files = []
        for folder, _, names in os.walk(root):
            files += [os.path.join(folder, name) for name in names if name.endswith(".jsonl")]
        tables = []
        for path in sorted(files):
            try:
                status = os.stat(path)
            except FileNotFoundError:
                continue
            identity = (status.st_dev, status.st_ino)
            table = self._files.get(path)
            if table is None or table.identity != identity or status.st_size < table.offset:
                key = os.path.relpath(path, root)[: -len(".jsonl")].replace(os.sep, "/")
                table = self._files[path] = _TableFile(key, identity, unterminated=not self._kept)
            if status.st_size > table.offset:
                try:
                    table.read(run_dir, path, self._made)
                except FileNotFoundError:
                    continue
            if table.logs:
                tables.append(table)
        return tables


def media_path(run_dir: str, path: Any, made: Container[str] = ()) -> str | None:
    """``path`` if it is a plain relative path (``media/x/0000001.png``) that stays inside ``run_dir``
    once symlinks are resolved, else None: the only kind of path the page may put into ``<img src>``.
    ``made``: paths of files known not to be symlinks (made by the caller), whose folder alone is resolved."""
    if not isinstance(path, str):
        return None
    folder, slash, name = path.rpartition("/")
    if not _MEDIA_PART.fullmatch(name) or (slash and not _folder_inside(run_dir, folder)):
        return None
    if path in made:
        return path
    # The folder stays inside the run (resolved once per folder); a file that is itself a symlink may not.
    joined = os.path.join(_realpath(run_dir), path)
    if os.path.islink(joined) and not _inside(_realpath(run_dir), os.path.realpath(joined)):
        return None
    return path


_FOLDERS: dict[str, str] = {}  # folder -> its realpath, for one page build (write_viewer clears it)
_INSIDE: dict[tuple[str, str], bool] = {}  # (run folder, media folder) -> media_path's answer for the folder, likewise


def _folder_inside(run_dir: str, folder: str) -> bool:
    """Whether ``folder`` (relative, without the file's name) is made of plain parts and, once symlinks
    are resolved, inside ``run_dir``: worked out once per folder and page build, not per cell."""
    inside = _INSIDE.get((run_dir, folder))
    if inside is None:
        root = _realpath(run_dir)
        inside = _INSIDE[(run_dir, folder)] = (all(_MEDIA_PART.fullmatch(part) for part in folder.split("/"))
                                               and _inside(root, _realpath(os.path.join(root, folder))))
    return inside


def _inside(root: str, resolved: str) -> bool:
    # Both are normalised absolute paths (realpath's), so a prefix test is the commonpath test without
    # its Python per-component work (thousands of cells).
    return resolved == root or resolved.startswith(root.rstrip(os.sep) + os.sep)


def _realpath(path: str) -> str:
    resolved = _FOLDERS.get(path)
    if resolved is None:
        resolved = _FOLDERS[path] = os.path.realpath(path)
    return resolved


def _resolved(root: str, path: str, plain: bool = False) -> str:
    """``realpath(root/path)`` for a page of thousands of image cells: the folder part is resolved once
    per folder (one page build), and the file part costs one ``lstat``; only a file that is itself a
    symlink takes the full resolution (a per-cell ``realpath`` was most of a page's build time).
    ``plain``: the file is known not to be a symlink (``_Made.files``): not even the ``lstat``."""
    joined = os.path.join(root, path)
    folder, name = os.path.split(joined)
    if not plain and os.path.islink(joined):
        return os.path.realpath(joined)
    return os.path.join(_realpath(folder), name)


def _cell(run_dir: str, cell: Any, legend: dict[int, list], masks: list[str], made: _Made) -> Any:
    if not (isinstance(cell, dict) and cell.get("_type") == "image"):
        return cell
    overlays = {}
    mask_cells = cell.get("masks")
    for name, mask in (mask_cells.items() if isinstance(mask_cells, dict) else ()):
        if not isinstance(mask, dict) or media_path(run_dir, mask.get("path"), made.files) is None:
            continue
        labels = {int(k): str(v) for k, v in (mask.get("class_labels") or {}).items()}
        try:
            overlay, class_ids = _overlay(run_dir, mask["path"], tuple(sorted(labels.items())), made)
        except (OSError, ValueError):  # a missing or unreadable mask: the image still shows
            continue
        overlays[name] = overlay
        if name not in masks:
            masks.append(name)
        for class_id in class_ids:
            legend.setdefault(class_id, [class_id, labels.get(class_id, str(class_id)), class_colour(class_id)])
    boxes = [{**box, "colour": class_colour(int(box.get("class_id", 0)))} for box in cell.get("boxes") or []
             if isinstance(box, dict)]
    # A refused path is left out of the page altogether (path null): the card says the image is not shown.
    return {"_type": "image", "path": media_path(run_dir, cell.get("path"), made.files), "caption": cell.get("caption"),
            "overlays": overlays, "boxes": boxes}


def _overlay(run_dir: str, mask_path: str, labels: tuple[tuple[int, str], ...],
             made: _Made) -> tuple[str, Sequence[int]]:
    """The overlay of a class-id mask (written once) and the coloured class ids in it. ``made``: masks
    whose overlay their writer made, with its class ids (``TableCache.overlay_made``): nothing to
    open, stat or write for those."""
    overlay = (mask_path[: -len(".mask.png")] if mask_path.endswith(".mask.png") else mask_path) + ".overlay.png"
    made_ids = made.overlays.get(mask_path)
    if made_ids is not None:  # a hard link its writer made beside the mask, never a symlink: nothing to check
        return overlay, made_ids
    if media_path(run_dir, overlay) is None:  # the overlay may not be a symlink out of the run either
        raise ValueError(f"mask path {mask_path!r}: its overlay {overlay!r} leaves the run folder")
    # The caller checked mask_path with media_path: neither the mask nor its overlay can leave the run.
    # Resolved as media_path did (the folder once per page build), not with a realpath per mask.
    source = _resolved(_realpath(run_dir), mask_path, mask_path in made.files)
    class_ids = _colour_mask(source, os.path.join(run_dir, overlay), os.stat(source).st_mtime_ns, labels)
    return overlay, class_ids


# The local backend refreshes the page after every table: a mask is read once per process, not once per refresh.
@functools.lru_cache(maxsize=65536)
def _colour_mask(source: str, destination: str, mtime_ns: int, labels: tuple[tuple[int, str], ...]) -> list[int]:
    with PILImage.open(source) as image:
        mask = np.asarray(image).astype(np.int64)
    if mask.ndim != 2:
        raise ValueError(f"{source}: expected a single-channel class-id mask, got shape {mask.shape}")
    ids, inverse, shown = overlay_classes(mask, labels)
    # Made already where the sample pipeline's worker process rendered it and the backend linked it
    # (written after its mask, so never older than it).
    if not os.path.exists(destination) or os.stat(destination).st_mtime_ns < mtime_ns:
        write_bytes_atomic(destination, encode_overlay(mask, ids, inverse, shown))
    return shown
