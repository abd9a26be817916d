"""The local store's writer: each logged table becomes one Parquet rows file per rank, its pixels go to a
content-addressed pack (docs, "Local run format").

Why this shape: a file per image is what shared file systems punish (a create is a metadata round trip on
NFS/Lustre and counts against inode quotas), so a table is at most two files (its rows, and a pack of the
pixels not stored before), each written to ``.tmp/`` and linked into place only when whole, never
replaced: a reader sees a finished file or none, with no lock. An image seen again (the ground truth at
every eval) is found by its content hash and referenced, not stored again.

Pixels that arrive as an array are stored raw (``uint8 [H, W, C]``, or a class-id mask in its own
dtype) and compressed per row group with zstd: on CPU at 32 px this is several times cheaper than a
PNG per image and about as small (see the docs' benchmarks). A file that arrives encoded (``Image.path``:
the sample pipeline's PNGs) is read at once and stored as its bytes.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from dataclasses import asdict
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from logbus.files import _strict_json as strict_json
from logbus.files import content_hash, encode_image, safe_relpath
from logbus.plugins.local._store_format import (
    COMPRESSION,
    DATASET_INDEX_COLUMN,
    FORMAT_VERSION,
    IMAGE_COLUMNS,
    IMAGE_KIND,
    IMAGE_TYPE,
    JPEG,
    JSON_COLUMNS,
    KEY,
    MASK_KIND,
    MASK_TYPE,
    META_FORMAT,
    META_KEY,
    META_STEPS,
    PACK_SCHEMA,
    PACKS,
    PNG,
    RANK,
    RAW,
    RESERVED_PREFIX,
    ROW,
    ROWS,
    SAMPLE_KEY,
    STEP,
    TMP,
    USER_COLUMN_PREFIX,
)
from logbus.records import Box, ColumnRows, Image, ImageColumn, Mask

ROW_GROUP_ROWS = 1024  # rows per row group, rows files and packs alike (HF datasets uses 100 for images)
# log_images calls are buffered per key and written as one rows file once a buffer holds this many rows,
# this many pixel bytes, or is this old (and at flush and close): never a file per call.
IMAGE_BATCH_ROWS = 4096
IMAGE_BATCH_BYTES = 64 << 20
IMAGE_BATCH_SECONDS = 60.0
# Hashes of pixels already stored, remembered to reference them: a bound on this memory (about 100 bytes
# each). Past it the memory is cleared: an image seen again after that is stored once more, never lost.
KNOWN_HASHES_KEPT = 1_000_000
_LABELS_KEPT = 64  # distinct class-label mappings whose JSON is remembered; a table has one or two
IMAGE_DTYPE = "uint8"  # an image's dtype as its pack row names it (a mask's is numpy's dtype.str)
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_JPEG_SIGNATURE = b"\xff\xd8\xff"


class TableLost(OSError):
    """A table could not be written (a full disk, say): it is lost, every file written before stays whole."""


class StoreWriter:
    """Writes one rank's tables into ``run_dir`` (a run folder, created by the backend).

    :param run_dir: the run folder.
    :param rank: this process's rank (``_rank``, and part of every file name).
    :param image_format: how images that arrive as pixels are stored: ``"raw"``, ``"png"`` or ``"jpeg"``.
    """

    def __init__(self, run_dir: str, rank: int, image_format: str = RAW):
        self.run_dir = run_dir
        self.rank = rank
        self.image_format = image_format
        for folder in (TMP, ROWS, PACKS):
            os.makedirs(os.path.join(run_dir, folder), exist_ok=True)
        self._packed: dict[str, str] = {}  # content hash -> the finished pack that holds it
        self._next_pack = 0
        self._next_rows: dict[str, int] = {}  # rows file stem -> the next <n> to try
        self._labels: dict[int, tuple[Mapping, str]] = {}  # id(class_labels) -> (a copy, its JSON)
        self._batches: dict[str, _ImageBatch] = {}  # log_images key -> rows waiting for their file
        self._known_packs()

    # -- public ------------------------------------------------------------------------------------
    def write_table(self, key: str, columns: Sequence[str], rows: Sequence[Sequence[Any]], step: int | None) -> str:
        """Writes one table (``records.Table``'s columns and rows) as a rows file; returns its path
        relative to the run folder. Raises :class:`TableLost` if it could not be written."""
        if isinstance(rows, ColumnRows):  # the sample pipeline's rows, held as columns: no Python per row
            return self._write(key, len(rows), step, lambda pack: self._column_arrow_table(key, rows, pack, step))
        entries = [(step, index, row) for index, row in enumerate(rows)]
        return self._write(key, len(entries), step, lambda pack: self._arrow_table(key, list(columns), entries, pack, step))

    def add_images(self, key: str, images: Sequence[Image], step: int | None) -> None:
        """Buffers one ``log_images`` call; the buffer of ``key`` becomes a rows file past its bounds.
        Encoded files are read now: the caller may release or rewrite them once this returns."""
        batch = self._batches.get(key)
        if batch is None:
            batch = self._batches[key] = _ImageBatch()
        for index, image in enumerate(images):
            read = _read_file(image.path) if image.path is not None else None
            batch.rows.append((step, index, [_Read(image, read) if read is not None else image]))
            batch.nbytes += len(read) if read is not None else image.nbytes
        if len(batch.rows) >= IMAGE_BATCH_ROWS or batch.nbytes >= IMAGE_BATCH_BYTES:
            self._write_batch(key)

    def flush_images(self, older_than: float | None = None) -> None:
        """Writes every buffered ``log_images`` batch (with ``older_than``, those started that many
        seconds ago or more). Each is tried; the first failure is raised after the others."""
        failure: BaseException | None = None
        now = time.monotonic()
        for key in list(self._batches):
            if older_than is None or now - self._batches[key].started >= older_than:
                try:
                    self._write_batch(key)
                except TableLost as error:
                    failure = failure or error
        if failure is not None:
            raise failure

    # -- tables --------------------------------------------------------------------------------------
    def _write_batch(self, key: str) -> None:
        batch = self._batches.pop(key)
        if batch.rows:
            step = batch.rows[0][0]
            self._write(key, len(batch.rows), step, lambda pack: self._arrow_table(key, ["image"], batch.rows, pack, step))

    def _write(self, key: str, count: int, step: int | None, build: Callable[[_PackFile], pa.Table]) -> str:
        """Writes the ``count`` rows that ``build(pack)`` makes into an Arrow table as one rows file named by
        ``step`` (the first row's, for a batch of log_images calls), with a pack of the pixels not stored before."""
        token = uuid.uuid4().hex
        rows_tmp = os.path.join(self.run_dir, TMP, f"{token}.rows.parquet")
        pack = _PackFile(self, os.path.join(self.run_dir, TMP, f"{token}.pack.parquet"))
        try:
            table = build(pack)
            pq.write_table(table, rows_tmp, row_group_size=ROW_GROUP_ROWS, compression=COMPRESSION)
            pack.finish()  # the pixels first: a row never names a pack that is not there
            return self._publish(rows_tmp, key, step)
        except Exception as error:
            pack.abandon()
            _remove(rows_tmp)
            if isinstance(error, OSError):
                raise TableLost(f"local backend: the table {key!r} at step {step} ({count} rows) could not be "
                                f"written and is lost ({error}); the files written before it are whole") from error
            raise

    def _arrow_table(self, key: str, columns: list[str], rows: Sequence[tuple[int | None, int, Sequence[Any]]],
                     pack: _PackFile, step: int | None) -> pa.Table:
        arrays: dict[str, pa.Array] = {
            KEY: pa.array([key] * len(rows), pa.string()),
            STEP: pa.array([row[0] for row in rows], pa.int64()),
            RANK: pa.array([self.rank] * len(rows), pa.int64()),
            ROW: pa.array([row[1] for row in rows], pa.int64()),
        }
        json_columns, image_columns = [], []
        sample_hashes: list[str | None] | None = None
        user_arrays = {}
        for place, name in enumerate(columns):
            stored = USER_COLUMN_PREFIX + name if name.startswith(RESERVED_PREFIX) else name
            cells = [row[2][place] for row in rows]
            kinds = set(map(type, cells)) - {type(None)}
            if kinds and kinds <= {Image, _Read}:
                image_columns.append(stored)
                hashes: list[str | None] = []
                user_arrays[stored] = pa.array([self._image_cell(cell, pack, hashes) for cell in cells], IMAGE_TYPE)
                if sample_hashes is None:
                    sample_hashes = hashes
                continue
            array = _scalar_array(cells, kinds)
            if array is None:
                json_columns.append(stored)
                array = pa.array([None if cell is None else self._json_text(cell, pack) for cell in cells], pa.string())
            user_arrays[stored] = array
        indices = ([row[2][columns.index(DATASET_INDEX_COLUMN)] for row in rows]
                   if DATASET_INDEX_COLUMN in columns else None)
        arrays[SAMPLE_KEY] = pa.array(_sample_keys(sample_hashes, indices, len(rows)), pa.string())
        arrays.update(user_arrays)
        steps: dict[Any, int] = {} if rows else {step: 0}  # an empty table is listed at its step
        for row in rows:
            steps[row[0]] = steps.get(row[0], 0) + 1
        return _with_metadata(arrays, key, list(steps.items()), json_columns, image_columns)

    def _column_arrow_table(self, key: str, rows: ColumnRows, pack: _PackFile, step: int | None) -> pa.Table:
        """``_arrow_table`` for rows held as columns: the same schema and cells, made by whole-column
        operations (the only Python per row is a dictionary lookup of each image's hash)."""
        count = len(rows)
        arrays: dict[str, pa.Array] = {
            KEY: pa.array([key] * count, pa.string()),
            STEP: pa.array(np.full(count, step, np.int64)) if step is not None else pa.nulls(count, pa.int64()),
            RANK: pa.array(np.full(count, self.rank, np.int64)),
            ROW: pa.array(np.arange(count, dtype=np.int64)),
        }
        json_columns, image_columns, user_arrays = [], [], {}
        sample_hashes: list[str] | None = None
        for name in rows.columns:
            stored = USER_COLUMN_PREFIX + name if name.startswith(RESERVED_PREFIX) else name
            value = rows.data[name]
            if isinstance(value, ImageColumn):
                image_columns.append(stored)
                user_arrays[stored] = self._image_column(value, pack)
                if sample_hashes is None:
                    sample_hashes = list(value.digests)
                continue
            if isinstance(value, np.ndarray):
                array = _numpy_array(value)
            else:
                array = _scalar_array(value, set(map(type, value)) - {type(None)})
            if array is None:
                json_columns.append(stored)
                array = pa.array([None if cell is None else self._json_text(cell, pack) for cell in value], pa.string())
            user_arrays[stored] = array
        indices = rows.cells(DATASET_INDEX_COLUMN) if DATASET_INDEX_COLUMN in rows.columns else None
        arrays[SAMPLE_KEY] = pa.array(_sample_keys(sample_hashes, indices, count), pa.string())
        arrays.update(user_arrays)
        return _with_metadata(arrays, key, [(step, count)], json_columns, image_columns)

    def _image_column(self, images: ImageColumn, pack: _PackFile) -> pa.Array:
        """The struct column of ``images`` (as ``_image_cell`` makes each cell), pixels new to the store
        added to ``pack``."""
        count = len(images.digests)
        fmt = self.image_format
        pixels = images.pixels

        def image_entry(i: int) -> tuple:  # encoded only where the pack takes it (not a repeat in this table)
            return IMAGE_KIND, fmt, IMAGE_DTYPE, pixels.shape[1:], lambda: encode_image(pixels[i], fmt)

        packs = self._packs_of(images.digests, pack, IMAGE_KIND, pixels if fmt == RAW else image_entry)
        mask_fields = []
        for name, mask in images.masks.items():
            mask_packs = self._packs_of(mask.digests, pack, MASK_KIND, mask.ids)
            mask_fields.append(pa.StructArray.from_arrays(
                [pa.array([name] * count, pa.string()), pa.array(mask.digests, pa.string()),
                 pa.array(mask_packs, pa.string()), pa.array([self._labels_json(mask.class_labels)] * count, pa.string())],
                fields=list(MASK_TYPE)))
        per_row = len(mask_fields)
        if per_row:  # row by row: row 0's masks, then row 1's, ...
            order = np.arange(count * per_row).reshape(per_row, count).T.reshape(-1)
            values = pa.concat_arrays(mask_fields).take(pa.array(order))
        else:
            values = pa.array([], MASK_TYPE)
        masks = pa.ListArray.from_arrays(pa.array(np.arange(count + 1, dtype=np.int32) * per_row), values,
                                         type=pa.list_(MASK_TYPE))
        return pa.StructArray.from_arrays(
            [pa.array(images.digests, pa.string()), pa.array(packs, pa.string()), pa.nulls(count, pa.string()),
             masks, pa.nulls(count, pa.string())], fields=list(IMAGE_TYPE))

    def _packs_of(self, digests: Sequence[str], pack: _PackFile, kind: str,
                  data: np.ndarray | Callable[[int], tuple]) -> list[str]:
        """The pack of each hash: a finished pack's where the store has it, else ``pack``, which takes the
        new ones: the rows of ``data`` stored raw (an array, ``data[i]`` that of ``digests[i]``), or
        ``data(i)`` (kind, encoding, dtype, shape, data()) one by one."""
        packed = self._packed
        where = [packed.get(digest) for digest in digests]
        new = [i for i, known in enumerate(where) if known is None]
        if new and isinstance(data, np.ndarray):
            pack_id = pack.add_array([digests[i] for i in new], kind, data[new] if len(new) != len(data) else data)
            for i in new:
                where[i] = pack_id
        else:
            for i in new:
                where[i] = pack.add(digests[i], *data(i))  # type: ignore[operator]
        return where  # type: ignore[return-value]

    def _publish(self, rows_tmp: str, key: str, step: int | None) -> str:
        """Links the finished rows file into ``rows/<key>/`` under the first free ``<n>``, never over a
        file already there (a resumed run writes the same step again)."""
        folder = os.path.join(ROWS, safe_relpath(key))
        os.makedirs(os.path.join(self.run_dir, folder), exist_ok=True)
        stem = os.path.join(folder, f"{'none' if step is None else f'{step:010d}'}-r{self.rank}")
        number = self._next_rows.get(stem, 0)
        while True:
            relative = f"{stem}-{number}.parquet"
            try:
                _link_new(rows_tmp, os.path.join(self.run_dir, relative))
            except FileExistsError:
                number += 1
                continue
            self._next_rows[stem] = number + 1
            return relative

    # -- cells ---------------------------------------------------------------------------------------
    def _json_text(self, value: Any, pack: _PackFile) -> str:
        """A cell of a column stored as JSON text: a scalar as itself (a non-finite float as
        ``{"value": null, "_nonfinite": ...}``), an image as its cell with ``"_type": "image"``."""
        if isinstance(value, (Image, _Read)):
            return strict_json.dumps({**(self._image_cell(value, pack, []) or {}), "_type": "image"})
        if isinstance(value, float) and not np.isfinite(value):
            return strict_json.dumps({"value": value})  # a bare NaN has no document to record its kind in
        return strict_json.dumps(value)

    def _image_cell(self, cell: Image | _Read | None, pack: _PackFile, hashes: list[str | None]) -> dict | None:
        """The struct of one image cell (its pixels added to ``pack`` where new); its hash appended to ``hashes``."""
        if cell is None:
            hashes.append(None)
            return None
        image = cell.image if isinstance(cell, _Read) else cell
        if image.path is not None:
            data = cell.data if isinstance(cell, _Read) else _read_file(image.path)
            digest = image.digest or content_hash(data)
            where = self._packed.get(digest) or pack.add(digest, IMAGE_KIND, _sniff(data), IMAGE_DTYPE, (), lambda: data)
        else:
            pixels = image.pixels
            assert pixels is not None  # records.Image holds pixels or a path
            digest = image.digest or content_hash(pixels)
            known = self._packed.get(digest)
            if known is not None:
                where = known
            else:
                if self.image_format == RAW:
                    where = pack.add(digest, IMAGE_KIND, RAW, IMAGE_DTYPE, pixels.shape, lambda: pixels.tobytes())
                else:
                    fmt = self.image_format
                    where = pack.add(digest, IMAGE_KIND, fmt, IMAGE_DTYPE, pixels.shape, lambda: encode_image(pixels, fmt))
        hashes.append(digest)
        masks = [self._mask_cell(name, mask, pack) for name, mask in image.masks.items()] if image.masks else []
        boxes = None
        if image.boxes:
            labels = image.box_class_labels or {}
            boxes = strict_json.dumps([_box(box, labels) for box in image.boxes])
        return {"hash": digest, "pack": where, "caption": image.caption, "masks": masks, "boxes": boxes}

    def _mask_cell(self, name: str, mask: Mask, pack: _PackFile) -> dict[str, Any]:
        ids = np.ascontiguousarray(mask.data)
        digest = content_hash(ids)
        where = self._packed.get(digest) or pack.add(digest, MASK_KIND, RAW, ids.dtype.str, ids.shape, ids.tobytes)
        return {"name": name, "hash": digest, "pack": where, "class_labels": self._labels_json(mask.class_labels)}

    def _labels_json(self, labels: Mapping[int, str] | None) -> str | None:
        """The JSON of a mask's class labels, made once per mapping (every row of a table has the same)."""
        if labels is None:
            return None
        known = self._labels.get(id(labels))
        if known is not None and known[0] == labels:
            return known[1]
        if len(self._labels) >= _LABELS_KEPT:
            self._labels.clear()
        text = json.dumps({str(k): v for k, v in labels.items()})
        self._labels[id(labels)] = (dict(labels), text)
        return text

    # -- packs ---------------------------------------------------------------------------------------
    def _known_packs(self) -> None:
        """A resumed run's packs: their hashes are referenced, not stored again, and new packs get new ids."""
        folder = os.path.join(self.run_dir, PACKS)
        for name in sorted(os.listdir(folder)):
            if not name.endswith(".parquet") or name.startswith("."):
                continue
            pack_id = name[: -len(".parquet")]
            prefix, _, number = pack_id.rpartition("-")
            if prefix == f"r{self.rank}" and number.isdigit():
                self._next_pack = max(self._next_pack, int(number) + 1)
            try:
                hashes = pq.read_table(os.path.join(folder, name), columns=["hash"]).column("hash").to_pylist()
            except Exception:  # noqa: BLE001 - a damaged pack is skipped: its images are stored again
                continue
            self._remember(hashes, pack_id)

    def _remember(self, hashes: list[str], pack_id: str) -> None:
        if len(self._packed) + len(hashes) > KNOWN_HASHES_KEPT:
            self._packed.clear()
        self._packed.update(dict.fromkeys(hashes, pack_id))

    def _new_pack_id(self) -> str:
        pack_id = f"r{self.rank}-{self._next_pack:06d}"
        self._next_pack += 1
        return pack_id


class _PackFile:
    """The pack of one table: the pixels it holds that no finished pack holds, streamed to a temporary
    file in row groups and linked to ``packs/<id>.parquet`` by :meth:`finish`. No file when nothing is new."""

    def __init__(self, store: StoreWriter, tmp: str):
        self.store = store
        self.tmp = tmp
        self.id: str | None = None
        self._pending: dict[str, None] = {}  # hashes in this pack (the same image twice in one table: once)
        self._rows: list[tuple] = []  # the pack rows not yet written, in PACK_SCHEMA's order
        self._writer: pq.ParquetWriter | None = None

    def add(self, digest: str, kind: str, encoding: str, dtype: str, shape: Sequence[int], data) -> str:
        """The pack that will hold ``digest``; ``data()`` is called once, for a hash new to this pack."""
        if self.id is None:
            self.id = self.store._new_pack_id()
        if digest not in self._pending:
            self._pending[digest] = None
            self._rows.append((digest, kind, encoding, dtype, shape, data()))
            if len(self._rows) >= ROW_GROUP_ROWS:
                self._write_group()
        return self.id

    def add_array(self, digests: Sequence[str], kind: str, array: np.ndarray) -> str:
        """``add`` for a batch of raw arrays at once (``array[i]`` is the data of ``digests[i]``): the new ones
        go into the pack as one Arrow batch, their bytes read in place, with no Python object per row."""
        if self.id is None:
            self.id = self.store._new_pack_id()
        pending, keep = self._pending, []
        for index, digest in enumerate(digests):
            if digest not in pending:
                pending[digest] = None
                keep.append(index)
        if keep:
            if self._rows:  # rows added one by one go first, as they came
                self._write_group()
            data = np.ascontiguousarray(array[keep] if len(keep) != len(array) else array)
            count, row_bytes, shape = len(keep), data[0].nbytes, list(array.shape[1:])
            offsets = pa.py_buffer(np.arange(count + 1, dtype=np.int32) * row_bytes)
            table = pa.table([
                pa.array([digests[index] for index in keep], pa.string()),
                pa.array([kind] * count, pa.string()), pa.array([RAW] * count, pa.string()),
                pa.array([IMAGE_DTYPE if kind == IMAGE_KIND else array.dtype.str] * count, pa.string()),
                pa.ListArray.from_arrays(pa.array(np.arange(count + 1, dtype=np.int32) * len(shape)),
                                         pa.array(np.tile(np.asarray(shape, np.int32), count)),
                                         type=pa.list_(pa.int32())),
                pa.Array.from_buffers(pa.binary(), count, [None, offsets, pa.py_buffer(data.reshape(-1).view(np.uint8))]),
            ], schema=PACK_SCHEMA)
            self._writer_open().write_table(table, row_group_size=ROW_GROUP_ROWS)
        return self.id

    def _writer_open(self) -> pq.ParquetWriter:
        if self._writer is None:
            self._writer = pq.ParquetWriter(self.tmp, PACK_SCHEMA, compression=COMPRESSION)
        return self._writer

    def _write_group(self) -> None:
        if self._writer is None:
            self._writer = pq.ParquetWriter(self.tmp, PACK_SCHEMA, compression=COMPRESSION)
        columns = [list(column) for column in zip(*self._rows)]
        self._writer.write_table(pa.table(columns, schema=PACK_SCHEMA), row_group_size=ROW_GROUP_ROWS)
        self._rows = []

    def finish(self) -> None:
        if self.id is None:
            return
        if self._rows:
            self._write_group()
        assert self._writer is not None
        self._writer.close()
        self._writer = None
        _link_new(self.tmp, os.path.join(self.store.run_dir, PACKS, f"{self.id}.parquet"))
        self.store._remember(list(self._pending), self.id)  # whole and in place: later tables reference it

    def abandon(self) -> None:
        if self._writer is not None:
            try:
                self._writer.close()
            except Exception:  # noqa: BLE001 - the file is removed just below; the first error is raised
                pass
        _remove(self.tmp)


class _ImageBatch:
    __slots__ = ("rows", "nbytes", "started")

    def __init__(self):
        self.rows: list[tuple[int | None, int, list[Any]]] = []
        self.nbytes = 0
        self.started = time.monotonic()


class _Read:
    """An image whose encoded file was read when it was logged (a buffered log_images call)."""

    __slots__ = ("image", "data")

    def __init__(self, image: Image, data: bytes):
        self.image, self.data = image, data


def _with_metadata(arrays: dict[str, pa.Array], key: str, steps: list, json_columns: list[str],
                   image_columns: list[str]) -> pa.Table:
    metadata = {META_KEY: key.encode(), META_FORMAT: str(FORMAT_VERSION).encode(), META_STEPS: json.dumps(steps).encode(),
                JSON_COLUMNS: json.dumps(json_columns).encode(), IMAGE_COLUMNS: json.dumps(image_columns).encode()}
    return pa.table(arrays).replace_schema_metadata(metadata)


def _numpy_array(values: np.ndarray) -> pa.Array:
    """A column held as a numpy array, as ``_scalar_array`` stores the same cells given one by one: ints
    as int64, bools, floats as float64 with NaN as null; a column of nulls only as nulls."""
    if values.dtype.kind == "f":
        if len(values) and np.isnan(values).all():
            return pa.nulls(len(values))
        return pa.array(values.astype(np.float64, copy=False), pa.float64(), from_pandas=True)
    if values.dtype.kind == "b":
        return pa.array(values, pa.bool_())
    return pa.array(values.astype(np.int64, copy=False), pa.int64())


def _scalar_array(cells: list, kinds: set) -> pa.Array | None:
    """The column as one Arrow type, where its cells allow (docs: all bools, all ints, all numbers, all
    strings; nulls anywhere); None for a column stored as JSON text."""
    if not kinds:
        return pa.nulls(len(cells))
    try:
        if kinds == {bool}:
            return pa.array(cells, pa.bool_())
        if kinds == {int}:
            return pa.array(cells, pa.int64())
        if kinds <= {int, float}:
            return pa.array([None if cell is None else float(cell) for cell in cells], pa.float64())
        if kinds == {str}:
            return pa.array(cells, pa.string())
    except (OverflowError, pa.ArrowInvalid):  # an int beyond 64 bits: kept exactly, as JSON text
        return None
    return None


def _box(box: Box, labels: Mapping[int, str]) -> dict[str, Any]:
    """A box as the JSON its cell holds: its fields, its class's label where the image names it (a
    non-finite score as null: the list has no document to record its kind in)."""
    fields = asdict(box)
    if fields["score"] is not None and not np.isfinite(fields["score"]):
        fields["score"] = None
    if box.class_id in labels:
        fields["label"] = labels[box.class_id]
    return fields


def _sample_keys(hashes: Sequence[str | None] | None, indices: list | None, count: int) -> list[str | None]:
    """Each row's stable key: the content hash of its (first) image, with its dataset index where the
    table has a ``dataset_index`` column (``indices``, else None); null where the table has no image."""
    if hashes is None:
        return [None] * count
    if indices is None:
        return list(hashes)
    return [None if digest is None else f"{digest}:{index}" for digest, index in zip(hashes, indices)]


def _sniff(data: bytes) -> str:
    if data.startswith(_PNG_SIGNATURE):
        return PNG
    if data.startswith(_JPEG_SIGNATURE):
        return JPEG
    return "file"  # another format PIL may read (the reader decodes with PIL)


def _read_file(path: str) -> bytes:
    with open(path, "rb") as file:
        return file.read()


def _link_new(source: str, destination: str) -> None:
    """Gives the whole file ``source`` the name ``destination``, never replacing a file there
    (``FileExistsError``); ``source`` is gone afterwards. A hard link where the filesystem has them."""
    try:
        os.link(source, destination)
    except FileExistsError:
        raise
    except OSError:  # no hard links here (some FUSE mounts): rename, after checking
        if os.path.lexists(destination):
            raise FileExistsError(destination) from None
        os.rename(source, destination)
        return
    os.unlink(source)


def _remove(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
