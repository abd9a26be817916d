"""What ``logbus view`` asks of a run folder (format 2, the docs' "Local run format"), answered with
``pyarrow.dataset`` over the rows and pack files: never a loop in Python over the rows of a table.

The store is read lazily and again on every question: a table's files are listed from ``rows/<key>/`` at
each request (one ``scandir`` per folder), so tables and evals written while training runs appear on the
next page load. Rows and pack files are immutable once renamed into place, so whatever is read from one
file (its schema, its table key, a pack's hash index) is cached by the file's path for good.

Several folders: those whose ``run.json`` names the same run (the ranks of one run, ``<name>-rank<r>``)
are one :class:`ViewRun`, their files read as one dataset (ranks merged); different runs are overlaid by
the pages. A run, table, sample or pixel is named by index, key and hash in the URLs, never by a path.
"""

from __future__ import annotations

import functools
import json
import os
import re
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from logbus.files import METRICS_LINE_FIELDS, hparam_name, metric_name
from logbus.plugins.local._store_format import JSON_COLUMNS, META_KEY, META_STEPS, PACKS, ROWS
from logbus.plugins.local._store_reader import run_folders

# A rows file's name: ``<step>-r<rank>-<n>.parquet``, the step zero-padded or ``none``.
_ROWS_FILE = re.compile(r"(\d+|none)-r\d+-\d+\.parquet")
# Pack ids and content hashes as the store writes them: plain names, so no URL part can name a path.
_PLAIN_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,200}")
# The columns the sample extractors write; the filters use them where a table has them.
TRUTH, PREDICTION, CORRECT, FLAG = "truth", "prediction", "correct", "flag"
# Decoded pixels kept in memory (bytes), least recently used first out.
PIXEL_CACHE_BYTES = 64 << 20
# Rows files whose sample-key index is kept in memory (12 bytes a row: 4,096 files of 10,000 rows would
# be 490 MB, so the oldest go first).
KEY_FILES_KEPT = 4096
OPEN_FILES_KEPT = 256  # rows files kept open for the history (each a file descriptor and its footer)
NONFINITE_FIELD = "_nonfinite"  # the strict-JSON field listing a document's NaNs and infinities


class StoreError(ValueError):
    """A question the store cannot answer (unknown run, table, step or image): the server's 404."""


@dataclass
class ViewRun:
    """One run: the folders of its ranks, read as one."""

    name: str
    folders: list[str]
    info: dict[str, Any] = field(default_factory=dict)


def open_runs(run_dirs: Sequence[str | os.PathLike]) -> list[ViewRun]:
    """The runs in ``run_dirs``, folders of the same run (its ranks) merged, in the order given. Each
    folder is checked as ``logbus.read_table`` checks it (a format-2 store with its ``run.json``).

    :param run_dirs: local run folders (``logbus_runs/<name>``)."""
    if isinstance(run_dirs, (str, os.PathLike)):
        raise TypeError(f"run_dirs: expected a list of run folders, got {type(run_dirs).__name__}")
    for run_dir in run_dirs:
        if not os.path.isdir(run_dir):
            raise FileNotFoundError(f"run_dir: no such folder: {os.fspath(run_dir)!r}")
    runs: dict[str, ViewRun] = {}
    for run_dir in run_folders(list(run_dirs)):
        info = _read_json(os.path.join(run_dir, "run.json"))
        name = str(info.get("name") or os.path.basename(os.path.abspath(run_dir)))
        run = runs.setdefault(name, ViewRun(name, [], info))
        run.folders.append(os.path.abspath(run_dir))
        if info.get("rank", 0) == 0:
            run.info = info
    return list(runs.values())


def _read_json(path: str) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as file:
            value = json.load(file)
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


# -- tables ----------------------------------------------------------------------------------------
@dataclass
class TableFiles:
    """The rows files of one table key over a run's folders, by step (``None``: logged without one)."""

    key: str
    files: dict[int | None, list[str]]

    @property
    def steps(self) -> list[int | None]:
        return sorted(self.files, key=lambda s: (s is not None, s or 0))

    def of(self, step: int | None | str = "all") -> list[str]:
        if step == "all":
            return [path for s in self.steps for path in self.files[s]]
        if step not in self.files:
            raise StoreError(f"step: table {self.key!r} has no step {step!r}")
        return self.files[step]


@functools.lru_cache(maxsize=65536)
def _contents(path: str) -> tuple[str | None, tuple[int | None, ...]]:
    """The table key and the steps a rows file holds, from its metadata (``logbus.key``, ``logbus.steps``);
    read once per file: a finished rows file is never rewritten."""
    metadata = _schema_of(path).metadata or {}
    key = metadata.get(META_KEY)
    try:
        steps = tuple(step for step, _ in json.loads(metadata.get(META_STEPS, b"[]")))
    except (ValueError, TypeError):
        steps = ()
    return (key.decode("utf-8", "replace") if key else None), steps


@functools.lru_cache(maxsize=4096)
def _schema_of(path: str) -> pa.Schema:
    return pq.read_schema(path)


def list_tables(run: ViewRun) -> dict[str, TableFiles]:
    """Every table of ``run`` (all its folders), listed from the disk now.

    :param run: a run from :func:`open_runs`."""
    tables: dict[str, TableFiles] = {}
    for folder in run.folders:
        for directory, names in _rows_folders(os.path.join(folder, ROWS)):
            for name in names:
                match = _ROWS_FILE.fullmatch(name)
                if match is None:
                    continue
                path = os.path.join(directory, name)
                key, steps = _contents(path)
                if key is None:
                    continue
                for step in steps:  # a batch of log_images calls may hold several steps in one file
                    tables.setdefault(key, TableFiles(key, {})).files.setdefault(step, []).append(path)
    return dict(sorted(tables.items()))


def _rows_folders(root: str) -> Iterable[tuple[str, list[str]]]:
    for directory, folders, names in os.walk(root):
        folders[:] = [f for f in folders if not f.startswith(".")]  # .tmp/: files being written
        yield directory, sorted(names)


def dataset(paths: Sequence[str]) -> ds.Dataset:
    """The files as one dataset, under one schema that every file fits (a column of nulls in one eval
    and of numbers in the next is read as numbers)."""
    if not paths:
        raise StoreError("step: no rows files")
    return _dataset(tuple(paths))


@functools.lru_cache(maxsize=256)
def _dataset(paths: tuple[str, ...]) -> ds.Dataset:
    schema = pa.unify_schemas([_schema_of(p) for p in paths], promote_options="permissive")
    return ds.dataset(list(paths), schema=schema, format="parquet")


def image_columns(schema: pa.Schema) -> list[str]:
    """The columns whose cells are images (a struct with ``hash`` and ``pack``)."""
    return [f.name for f in schema if pa.types.is_struct(f.type) and {"hash", "pack"} <= {c.name for c in f.type}]


def json_columns(paths: Sequence[str]) -> set[str]:
    """The columns stored as JSON text (``logbus.json_columns`` in the files' metadata)."""
    names: set[str] = set()
    for path in paths:
        metadata = _schema_of(path).metadata or {}
        raw = metadata.get(JSON_COLUMNS)
        if raw:
            try:
                names.update(json.loads(raw))
            except ValueError:
                pass
    return names


# -- questions -------------------------------------------------------------------------------------
@dataclass
class RowQuery:
    """One page of a table at one step: filters, sort and paging, all done by pyarrow."""

    step: int | None
    truth: int | None = None
    prediction: int | None = None
    correct: bool | None = None
    flag: str | None = None
    search: str | None = None
    sample_keys: pa.Array | None = None  # only these samples (flipped, wrong at every eval)
    sort: str | None = None
    descending: bool = False
    offset: int = 0
    limit: int = 50


def query_rows(table: TableFiles, query: RowQuery) -> tuple[pa.Table, int]:
    """The page of rows ``query`` asks for and how many rows match in all.

    :param table: the table's files.
    :param query: step, filters, sort and page."""
    data = dataset(table.of(query.step))
    names = set(data.schema.names)
    condition = at_step(query.step)
    for column, value in ((TRUTH, query.truth), (PREDICTION, query.prediction), (CORRECT, query.correct),
                          (FLAG, query.flag)):
        if value is not None:
            if column not in names:
                raise StoreError(f"{column}: table {table.key!r} has no column {column!r}")
            condition = condition & (pc.field(column) == value)
    if query.search:
        text = [f.name for f in data.schema if pa.types.is_string(f.type) or pa.types.is_large_string(f.type)]
        text = [n for n in text if not n.startswith("_")]
        matches = [pc.match_substring(pc.field(n), query.search, ignore_case=True) for n in text]
        condition = condition & (functools.reduce(lambda a, b: a | b, matches) if matches else pc.scalar(False))
    if query.sample_keys is not None:
        condition = condition & pc.field("_sample_key").isin(query.sample_keys)
    rows = data.to_table(filter=condition)
    order = [(query.sort, "descending" if query.descending else "ascending")] if query.sort else []
    if query.sort and query.sort not in names:
        raise StoreError(f"sort: table {table.key!r} has no column {query.sort!r}")
    if query.sort and (pa.types.is_struct(data.schema.field(query.sort).type)):
        raise StoreError(f"sort: column {query.sort!r} holds images, expected a column of values")
    rows = rows.sort_by(order + [("_rank", "ascending"), ("_row", "ascending")])
    return rows.slice(query.offset, query.limit), rows.num_rows


def at_step(step: int | None) -> pc.Expression:
    """Rows of one step (a file may hold several: a batch of ``log_images`` calls)."""
    return pc.field("_step").is_null() if step is None else pc.field("_step") == step


@dataclass(frozen=True)
class _KeyIndex:
    """Where each sample is in one rows file: the 64-bit fingerprints of its ``_sample_key`` cells, sorted,
    with the row of each (12 bytes a row: 12 MB for 1,000,000 rows), and the first row of each row group,
    so a lookup is a binary search and a read of the matching row groups alone. A fingerprint may
    collide: the rows taken are matched by their full key."""

    fingerprints: np.ndarray  # uint64, sorted
    rows: np.ndarray  # uint32: the row in the file of each fingerprint
    starts: np.ndarray  # the first row of each row group
    width: int  # the byte width the keys were padded to before hashing


_FINGERPRINT_PRIME = np.uint64(0x100000001B3)  # FNV-1a's 64-bit prime, here applied 8 bytes at a time
_FINGERPRINT_SEED = np.uint64(0xCBF29CE484222325)


def _fingerprints(keys: np.ndarray) -> np.ndarray:
    """Vectorised 64-bit fingerprints of fixed-width byte strings (``S<width>``, width a multiple of 8)."""
    words = keys.view(np.uint64).reshape(len(keys), -1)
    hashed: np.ndarray = np.full(len(keys), _FINGERPRINT_SEED, dtype=np.uint64)
    with np.errstate(over="ignore"):
        for column in range(words.shape[1]):
            hashed = (hashed ^ words[:, column]) * _FINGERPRINT_PRIME
            hashed ^= hashed >> np.uint64(29)
    return hashed


def _padded(keys: np.ndarray, width: int) -> np.ndarray:
    return keys.astype(f"S{width}")


@functools.lru_cache(maxsize=KEY_FILES_KEPT)
def _key_index(path: str) -> _KeyIndex:
    """Built once per rows file (a finished file never changes) from its ``_sample_key`` column."""
    file, lock = _open_rows_file(path)
    with lock:
        keys = file.read(columns=["_sample_key"], use_threads=False).column(0).combine_chunks()
        sizes = [file.metadata.row_group(g).num_rows for g in range(file.num_row_groups)]
    rows = np.flatnonzero(keys.is_valid().to_numpy(zero_copy_only=False)).astype(np.uint32)
    texts = keys.filter(keys.is_valid()).to_numpy(zero_copy_only=False).astype(bytes)
    width = max(8, -(-int(texts.dtype.itemsize) // 8) * 8)  # whole 8-byte words
    fingerprints = _fingerprints(_padded(texts, width))
    order = np.argsort(fingerprints, kind="stable")
    starts = np.cumsum([0] + sizes[:-1], dtype=np.int64)
    return _KeyIndex(fingerprints[order], rows[order], starts, width)


@functools.lru_cache(maxsize=OPEN_FILES_KEPT)
def _open_rows_file(path: str) -> tuple[pq.ParquetFile, threading.Lock]:
    """A rows file opened once, its footer parsed once (a quarter of a history's time if done per ask);
    one reader at a time (a Parquet reader is not for concurrent reads). Closed when it falls out."""
    return pq.ParquetFile(path), threading.Lock()


def sample_history(table: TableFiles, sample_key: str) -> pa.Table:
    """Every row of one sample (by its stable ``_sample_key``) at every step, in step order.

    Each rows file's key index (:func:`_key_index`, built once per file) names the row groups that may
    hold the sample; only those are read, from a footer already parsed. Scanning every file's keys
    again costs about a second at 1,000,000 rows (measured: benchmarks/bench_viewer.py).

    :param table: the table's files.
    :param sample_key: the sample's ``_sample_key``."""
    schema = dataset(table.of()).schema
    wanted = sample_key.encode("utf-8")
    fingerprint_by_width: dict[int, np.uint64] = {}
    parts = []
    for path in dict.fromkeys(table.of()):  # a file of several steps is listed under each
        index = _key_index(path)
        if len(wanted) > index.width:
            continue
        if index.width not in fingerprint_by_width:
            fingerprint_by_width[index.width] = _fingerprints(_padded(np.array([wanted]), index.width))[0]
        fingerprint = fingerprint_by_width[index.width]
        low = np.searchsorted(index.fingerprints, fingerprint, side="left")
        high = np.searchsorted(index.fingerprints, fingerprint, side="right")
        if low == high:
            continue
        rows_in_file = np.sort(index.rows[low:high]).astype(np.int64)
        groups = np.searchsorted(index.starts, rows_in_file, side="right") - 1
        file, lock = _open_rows_file(path)
        for group in np.unique(groups):
            with lock:  # one thread: a row group of ~1,000 rows is read faster than its columns are handed out
                rows = file.read_row_group(int(group), use_threads=False)
            for row in rows_in_file[groups == group] - index.starts[group]:
                found = rows.slice(int(row), 1)  # a view, no copy; then the full key, past a fingerprint collision
                if found.column("_sample_key")[0].as_py() == sample_key:
                    parts.append(found)
    if not parts:
        return schema.empty_table()
    history = pa.concat_tables(parts, promote_options="permissive")  # one eval's nulls, the next's numbers
    history = history.cast(pa.schema([schema.field(n) for n in history.schema.names]))
    return history.sort_by([("_step", "ascending"), ("_rank", "ascending")])


def changed_since(table: TableFiles, step: int | None, previous: int | None) -> pa.Array:
    """The sample keys at ``step`` whose prediction differs from theirs at ``previous`` (samples at both).

    :param table: the table's files.
    :param step: the later eval; ``previous``: the one it is compared with."""
    now = dataset(table.of(step)).to_table(columns=["_sample_key", PREDICTION], filter=at_step(step))
    before = dataset(table.of(previous)).to_table(columns=["_sample_key", PREDICTION], filter=at_step(previous))
    before = before.rename_columns(["_sample_key", "previous"])
    joined = now.join(before, "_sample_key", join_type="inner")
    changed = pc.not_equal(joined[PREDICTION], joined["previous"])
    return joined.filter(pc.fill_null(changed, True))["_sample_key"].combine_chunks()


def previous_step(table: TableFiles, step: int | None) -> int | None:
    steps = [s for s in table.steps if s is not None]
    earlier = [s for s in steps if step is not None and s < step]
    if not earlier:
        raise StoreError(f"step: no eval of {table.key!r} before step {step!r}")
    return max(earlier)


def wrong_at_every_eval(table: TableFiles, step: int | None) -> pa.Array:
    """The sample keys at ``step`` that are wrong at every eval they were logged at.

    :param table: the table's files (a classification table: it has ``correct``).
    :param step: the eval whose samples are asked about."""
    always = _wrong_at_every_eval(tuple(dict.fromkeys(table.of())), table.key)
    keys = []
    for path in dict.fromkeys(table.of(step)):
        index = _key_index(path)
        fingerprints = _fingerprints_by_row(index, _num_rows(path))
        file, lock = _open_rows_file(path)
        with lock:
            rows = file.read(columns=["_step", "_sample_key"], use_threads=False)
        here = pc.and_(pc.fill_null(at_step_mask(rows["_step"], step), False),
                       pa.array(np.isin(fingerprints, always)))
        keys.append(rows["_sample_key"].filter(here).combine_chunks())
    return pa.concat_arrays(keys) if keys else pa.array([], pa.string())


def at_step_mask(steps: pa.ChunkedArray, step: int | None) -> pa.ChunkedArray:
    return pc.is_null(steps) if step is None else pc.equal(steps, step)


@functools.lru_cache(maxsize=16)
def _wrong_at_every_eval(paths: tuple[str, ...], key: str) -> np.ndarray:
    """The fingerprints (:class:`_KeyIndex`) of the samples never right in these files: file by file, from
    their ``correct`` column and key index, so 1,000,000 rows cost a few MB, not their keys as strings
    (90 MB measured). Cached by the files: a new eval is a new file (the files themselves never change).
    Two keys of one fingerprint would be taken for one sample: 64 bits make that a chance of about
    n^2 / 2^65 (3e-12 for 10,000 samples)."""
    seen, right = np.empty(0, np.uint64), np.empty(0, np.uint64)
    for path in paths:
        if CORRECT not in _schema_of(path).names:
            raise StoreError(f"correct: table {key!r} has no column 'correct'")
        fingerprints = _fingerprints_by_row(_key_index(path), _num_rows(path))
        file, lock = _open_rows_file(path)
        with lock:
            correct = file.read(columns=[CORRECT], use_threads=False).column(0)
        correct = pc.fill_null(correct, False).to_numpy(zero_copy_only=False)
        valid = fingerprints != _NO_KEY
        seen = np.union1d(seen, fingerprints[valid])
        right = np.union1d(right, fingerprints[valid & correct])
    return np.setdiff1d(seen, right, assume_unique=True)


_NO_KEY = np.uint64(0)  # a row without a sample key in :func:`_fingerprints_by_row` (a real key's 0 is ignored)


def _fingerprints_by_row(index: _KeyIndex, rows: int) -> np.ndarray:
    by_row = np.full(rows, _NO_KEY, dtype=np.uint64)
    by_row[index.rows] = index.fingerprints
    return by_row


def _num_rows(path: str) -> int:
    file, _ = _open_rows_file(path)
    return int(file.metadata.num_rows)


def confusion(table: TableFiles, step: int | None, run: ViewRun) -> dict[str, Any]:
    """The confusion matrix of one eval: counts of ``(truth, prediction)`` pairs, per sample for a
    classification table, per pixel from the ground-truth and prediction masks for segmentation.

    :param table: the table's files; ``step``: the eval; ``run``: where its packs are."""
    data = dataset(table.of(step))
    names = data.schema.names
    if TRUTH in names and PREDICTION in names:
        counts = (data.to_table(columns=[TRUTH, PREDICTION], filter=at_step(step)).group_by([TRUTH, PREDICTION])
                  .aggregate([([], "count_all")]))
        return {"unit": "samples", "truth": counts[TRUTH].to_pylist(), "prediction": counts[PREDICTION].to_pylist(),
                "count": counts["count_all"].to_pylist(), "labels": _names_from_columns(data, step)}
    for column in image_columns(data.schema):
        cells = data.to_table(columns=[column], filter=at_step(step))[column].to_pylist()
        pairs = [pair for pair in map(_mask_pair, filter(None, cells)) if pair is not None]
        if pairs:
            return _pixel_confusion(run, pairs, column)
    raise StoreError(f"table: {table.key!r} has neither truth/prediction columns nor masks to compare")


def _names_from_columns(data: ds.Dataset, step: int | None) -> dict[int, str]:
    if "truth_name" not in data.schema.names:
        return {}
    named = data.to_table(columns=[TRUTH, "truth_name", PREDICTION, "prediction_name"], filter=at_step(step))
    labels = {}
    for ids, texts in ((TRUTH, "truth_name"), (PREDICTION, "prediction_name")):
        unique = named.select([ids, texts]).group_by([ids, texts]).aggregate([])
        labels.update({i: t for i, t in zip(unique[ids].to_pylist(), unique[texts].to_pylist())
                       if i is not None and t})
    return labels


def _mask_pair(cell: dict) -> tuple[dict, dict] | None:
    masks = {m["name"]: m for m in cell.get("masks") or []}
    truth = masks.get("ground_truth") or masks.get("truth")
    prediction = masks.get("prediction")
    return (truth, prediction) if truth and prediction else None


def _pixel_confusion(run: ViewRun, pairs: list[tuple[dict, dict]], column: str) -> dict[str, Any]:
    largest = 0
    flat: list[tuple[np.ndarray, np.ndarray]] = []
    for truth, prediction in pairs:
        t, p = (pixels(run, m["pack"], m["hash"]).astype(np.int64).ravel() for m in (truth, prediction))
        if t.shape != p.shape:
            continue
        flat.append((t, p))
        largest = max(largest, int(t.max(initial=0)), int(p.max(initial=0)))
    size = largest + 1
    counts = np.zeros(size * size, np.int64)
    for t, p in flat:
        counts += np.bincount(t * size + p, minlength=size * size)
    where = np.flatnonzero(counts)
    labels = _parse_labels(pairs[0][0].get("class_labels"))
    return {"unit": "pixels", "column": column, "truth": (where // size).tolist(),
            "prediction": (where % size).tolist(), "count": counts[where].tolist(), "labels": labels}


def _parse_labels(raw: Any) -> dict[int, str]:
    try:
        value = json.loads(raw) if isinstance(raw, str) else raw
    except ValueError:
        return {}
    if isinstance(value, dict):
        return {int(k): str(v) for k, v in value.items() if str(k).lstrip("-").isdigit()}
    if isinstance(value, list):
        return {int(k): str(v) for k, v in value if str(k).lstrip("-").isdigit()} if all(
            isinstance(p, list) and len(p) == 2 for p in value) else dict(enumerate(map(str, value)))
    return {}


# -- pixels ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Pixels:
    """One image or mask from a pack: already encoded (PNG/JPEG bytes) or raw (an array)."""

    kind: str
    encoding: str
    data: bytes
    dtype: str
    shape: tuple[int, ...]

    def array(self) -> np.ndarray:
        if self.encoding == "raw":
            return np.frombuffer(self.data, dtype=np.dtype(self.dtype)).reshape(self.shape)
        import io

        from PIL import Image as PILImage

        return np.asarray(PILImage.open(io.BytesIO(self.data)))


class _PixelCache:
    """Pack entries read back, bounded by their bytes (least recently used out first)."""

    def __init__(self, limit: int = PIXEL_CACHE_BYTES):
        self.limit, self.used = limit, 0
        self.entries: OrderedDict[tuple[str, str], Pixels] = OrderedDict()
        self.lock = threading.Lock()

    def get(self, key: tuple[str, str]) -> Pixels | None:
        with self.lock:
            found = self.entries.get(key)
            if found is not None:
                self.entries.move_to_end(key)
            return found

    def put(self, key: tuple[str, str], value: Pixels) -> None:
        with self.lock:
            if key in self.entries:
                return
            self.entries[key] = value
            self.used += len(value.data)
            while self.used > self.limit and len(self.entries) > 1:
                _, old = self.entries.popitem(last=False)
                self.used -= len(old.data)


_PIXELS = _PixelCache()


@functools.lru_cache(maxsize=1024)
def _pack_index(path: str) -> dict[str, tuple[int, int]]:
    """A pack file's hashes: ``hash -> (row group, row in it)``, read once per pack (packs never change)."""
    file = pq.ParquetFile(path)
    index: dict[str, tuple[int, int]] = {}
    for group in range(file.num_row_groups):
        hashes = file.read_row_group(group, columns=["hash"]).column(0).to_pylist()
        index.update({h: (group, i) for i, h in enumerate(hashes)})
    return index


def pack_path(run: ViewRun, pack: str) -> str:
    """The file of pack ``pack`` in one of the run's folders; the id must be a plain name.

    :param run: the run; ``pack``: a pack id as an image cell names it."""
    if not _PLAIN_NAME.fullmatch(pack) or pack.startswith("."):
        raise StoreError(f"pack: expected a pack id, got {pack!r}")
    for folder in run.folders:
        path = os.path.join(folder, PACKS, f"{pack}.parquet")
        if os.path.isfile(path):
            return path
    raise StoreError(f"pack: no pack {pack!r} in run {run.name!r}")


def pixels_entry(run: ViewRun, pack: str, content_hash: str) -> Pixels:
    """One image or mask of the run, by pack id and content hash.

    :param run: the run; ``pack``: the pack id; ``content_hash``: the entry's hash."""
    if not _PLAIN_NAME.fullmatch(content_hash):
        raise StoreError(f"hash: expected a content hash, got {content_hash!r}")
    path = pack_path(run, pack)
    found = _PIXELS.get((path, content_hash))
    if found is not None:
        return found
    where = _pack_index(path).get(content_hash)
    if where is None:
        raise StoreError(f"hash: no entry {content_hash!r} in pack {pack!r}")
    group = pq.ParquetFile(path).read_row_group(where[0]).slice(where[1], 1).to_pylist()[0]
    shape = group.get("shape")
    entry = Pixels(kind=str(group.get("kind")), encoding=str(group.get("encoding")), data=bytes(group["data"]),
                   dtype=str(group.get("dtype") or "uint8"),
                   shape=tuple(json.loads(shape) if isinstance(shape, str) else (shape or ())))
    _PIXELS.put((path, content_hash), entry)
    return entry


def pixels(run: ViewRun, pack: str, content_hash: str) -> np.ndarray:
    """The array of one image or mask (``[H, W, C]`` uint8, or ``[H, W]`` class ids)."""
    return pixels_entry(run, pack, content_hash).array()


# -- metrics ---------------------------------------------------------------------------------------
class MetricsFile:
    """``metrics.jsonl`` read incrementally: each call reads only the lines written since the last (the
    file only grows by whole lines while the run writes it). Each metric is a series of the lines that
    have it, ``[steps, times, values]``; a NaN or an infinity is ``None`` there (a gap in its chart),
    and names are the user's (``metric/step`` in the file is the user's ``step``)."""

    def __init__(self, path: str):
        self.path, self.offset, self.lines = path, 0, 0
        self.series: dict[str, tuple[list[Any], list[Any], list[Any]]] = {}
        self.lock = threading.Lock()

    def read(self) -> tuple[int, dict[str, list[list[Any]]]]:
        """How far the file has been read, and every metric's series up to there."""
        with self.lock:
            try:
                with open(self.path, "rb") as file:
                    file.seek(self.offset)
                    chunk = file.read()
            except OSError:
                chunk = b""
            end = chunk.rfind(b"\n") + 1  # a line being written is read next time
            self.offset += end
            for line in chunk[:end].splitlines():
                try:
                    record = json.loads(line)
                except ValueError:
                    continue
                if not isinstance(record, dict):
                    continue
                step = record.get("step")
                step = step if isinstance(step, int) and not isinstance(step, bool) else self.lines
                self.lines += 1
                for field, value in record.items():
                    if field in METRICS_LINE_FIELDS or isinstance(value, bool) or not isinstance(value, (int, float, type(None))):
                        continue
                    steps, times, values = self.series.setdefault(metric_name(field), ([], [], []))
                    steps.append(step)
                    times.append(record.get("time"))
                    values.append(value)
            # Copies: the caller serialises them while another request may read more lines.
            return self.offset, {name: [list(part) for part in parts] for name, parts in sorted(self.series.items())}


def read_hparams(run: ViewRun) -> dict[str, Any]:
    """The run's hyperparameters under the user's names, non-finite values as ``None``.

    :param run: the run (its rank 0 folder's ``hparams.json``)."""
    for folder in run.folders:
        hparams = _read_json(os.path.join(folder, "hparams.json"))
        if hparams:
            hparams.pop(NONFINITE_FIELD, None)
            return {hparam_name(field): value for field, value in hparams.items()}
    return {}
