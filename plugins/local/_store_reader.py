"""The local store's reader: tables and metrics of one or more run folders as pandas DataFrames.

``runs`` is a run folder or a list of them: the folders of a multi-process run's ranks (``run``,
``run-rank1``, ... on a shared disk, or each copied from a node-local one) are read as one run, their rows
merged and ordered by step, rank and row. Image cells come back as :class:`ImageCell` objects that read
their pixels from the packs only when asked (a pack is read once and kept for the next cells).
"""

from __future__ import annotations

import io
import json
import os
from collections import OrderedDict
from typing import TYPE_CHECKING, Any, Iterable, Sequence, Union

import numpy as np
import pyarrow.parquet as pq

from logbus.files import metric_name, restore, safe_relpath
from logbus.plugins.local._store_format import (
    FORMAT_VERSION,
    IMAGE_COLUMNS,
    JSON_COLUMNS,
    META_KEY,
    META_STEPS,
    METRICS,
    PACKS,
    RANK,
    RAW,
    ROW,
    ROWS,
    RUN_JSON,
    STEP,
    V1_TABLES,
)

if TYPE_CHECKING:  # pandas is imported where a frame is made: `logbus view` reads the store without it
    import pandas as pd

Runs = Union[str, os.PathLike, Sequence[Union[str, os.PathLike]]]
PACKS_KEPT = 8  # packs held in memory per reader (an eval's table has one or two)

__all__ = ["ImageCell", "MaskCell", "list_tables", "read_metrics", "read_table"]


class _Packs:
    """Pack files read whole on first use, the last few kept: the cells of a table share one or two."""

    def __init__(self):
        self._packs: OrderedDict[str, dict[str, tuple[str, str, tuple[int, ...], bytes]]] = OrderedDict()

    def entry(self, path: str, digest: str) -> tuple[str, str, tuple[int, ...], bytes]:
        pack = self._packs.get(path)
        if pack is None:
            table = pq.read_table(path)
            columns = [table.column(name).to_pylist() for name in ("hash", "encoding", "dtype", "shape", "data")]
            pack = {digest: (encoding, dtype, tuple(shape or ()), data)
                    for digest, encoding, dtype, shape, data in zip(*columns)}
            self._packs[path] = pack
            if len(self._packs) > PACKS_KEPT:
                self._packs.popitem(last=False)
        else:
            self._packs.move_to_end(path)
        try:
            return pack[digest]
        except KeyError:
            raise ValueError(f"{path}: expected the pixels of {digest}, which this pack does not hold") from None


class MaskCell:
    """A class-id mask of an image cell: ``to_numpy()`` gives the ids in the dtype they were logged with."""

    __slots__ = ("name", "hash", "class_labels", "_path", "_packs")

    def __init__(self, name: str, digest: str, pack_path: str, class_labels: dict[int, str] | None, packs: _Packs):
        self.name, self.hash, self.class_labels = name, digest, class_labels
        self._path, self._packs = pack_path, packs

    def to_numpy(self) -> np.ndarray:
        return _decode(*self._packs.entry(self._path, self.hash))

    def __repr__(self) -> str:
        return f"MaskCell({self.name!r}, hash={self.hash!r})"


class ImageCell:
    """An image cell of a table: ``to_numpy()`` (``uint8 [H, W, C]``), ``to_pil()``, ``encoded()``
    (its bytes and MIME type, for a page), ``masks[name].to_numpy()``, ``caption`` and ``boxes``."""

    __slots__ = ("hash", "caption", "masks", "boxes", "_path", "_packs")

    def __init__(self, digest: str, pack_path: str, caption: str | None, masks: dict[str, MaskCell],
                 boxes: list[dict] | None, packs: _Packs):
        self.hash, self.caption, self.masks, self.boxes = digest, caption, masks, boxes or []
        self._path, self._packs = pack_path, packs

    def to_numpy(self) -> np.ndarray:
        pixels = _decode(*self._packs.entry(self._path, self.hash))
        return pixels if pixels.ndim == 3 else pixels[:, :, None]

    def to_pil(self):
        from PIL import Image as PILImage

        encoding, _, _, data = self._packs.entry(self._path, self.hash)
        if encoding != RAW:
            return PILImage.open(io.BytesIO(data))
        pixels = self.to_numpy()
        return PILImage.fromarray(pixels[:, :, 0] if pixels.shape[2] == 1 else pixels)

    def encoded(self) -> tuple[bytes, str]:
        """The image as a file a browser shows: its stored PNG/JPEG bytes, or a PNG made from raw pixels."""
        encoding, _, _, data = self._packs.entry(self._path, self.hash)
        if encoding == RAW:
            from logbus.files import encode_image

            return encode_image(self.to_numpy(), "png"), "image/png"
        return data, "image/jpeg" if encoding == "jpeg" else "image/png"

    def __repr__(self) -> str:
        return f"ImageCell(hash={self.hash!r}, caption={self.caption!r}, masks={list(self.masks)})"


def _decode(encoding: str, dtype: str, shape: tuple[int, ...], data: bytes) -> np.ndarray:
    if encoding == RAW:
        return np.frombuffer(data, dtype=np.dtype(dtype)).reshape(shape)
    from PIL import Image as PILImage

    return np.asarray(PILImage.open(io.BytesIO(data)))


def run_folders(runs: Runs) -> list[str]:
    """The run folders named by ``runs``, each checked to be a format-2 store."""
    folders = [runs] if isinstance(runs, (str, os.PathLike)) else list(runs)
    if not folders:
        raise ValueError("runs: expected a run folder or a list of them, got an empty list")
    checked = []
    for folder in folders:
        if not isinstance(folder, (str, os.PathLike)):
            raise TypeError(f"runs: expected a run folder (str or path) or a list of them, got {type(folder).__name__}")
        folder = os.fspath(folder)
        if not os.path.isfile(os.path.join(folder, RUN_JSON)):
            raise FileNotFoundError(f"runs: expected a logbus run folder (with {RUN_JSON}), got {folder!r}")
        with open(os.path.join(folder, RUN_JSON), encoding="utf-8") as file:
            info = json.load(file)
        version = info.get("format_version", 1) if isinstance(info, dict) else None
        if version != FORMAT_VERSION:
            v1 = os.path.isdir(os.path.join(folder, V1_TABLES)) or version == 1
            raise ValueError(
                f"runs: {folder!r} is a run folder in format {version}"
                + (" (tables/*.jsonl and media/, written by an earlier logbus)" if v1 else "")
                + f"; this logbus reads format {FORMAT_VERSION} only")
        checked.append(folder)
    return checked


def _rows_files(folder: str, key: str | None = None) -> Iterable[str]:
    base = os.path.join(folder, ROWS) if key is None else os.path.join(folder, ROWS, safe_relpath(key))
    for parent, dirs, names in os.walk(base):
        dirs[:] = sorted(name for name in dirs if not name.startswith("."))
        for name in sorted(names):
            if name.endswith(".parquet") and not name.startswith("."):
                yield os.path.join(parent, name)


def list_tables(runs: Runs) -> pd.DataFrame:
    """The tables of ``runs``, from the files' metadata (no row is read).

    :param runs: a run folder or a list of them (the ranks of one run).
    :returns: a DataFrame with one row per table and step in a file: ``key``, ``step`` (None for
        none), ``rank``, ``rows`` and ``file`` (its path), ordered by key, step and rank.
    """
    import pandas as pd

    entries = []
    for folder in run_folders(runs):
        for path in _rows_files(folder):
            schema = pq.read_schema(path)
            metadata = schema.metadata or {}
            key = metadata.get(META_KEY, b"").decode()
            rank = int(os.path.basename(path).rsplit("-r", 1)[-1].split("-")[0])
            for step, count in json.loads(metadata.get(META_STEPS, b"[]")):
                entries.append({"key": key, "step": step, "rank": rank, "rows": count, "file": path})
    entries.sort(key=lambda entry: (entry["key"], -1 if entry["step"] is None else entry["step"], entry["rank"],
                                    entry["file"]))
    columns = ["key", "step", "rank", "rows", "file"]
    # step as objects: ints and None, as logged (a column of ints with a None would become floats)
    return pd.DataFrame({name: pd.Series([entry[name] for entry in entries], dtype=object if name == "step" else None)
                         for name in columns}, columns=columns)


def read_table(runs: Runs, key: str, step: int | None = None) -> pd.DataFrame:
    """Every row of the table ``key`` in ``runs``: the columns ``_key``, ``_step``, ``_rank``, ``_row``,
    ``_sample_key`` and the table's own, JSON-text columns decoded, image cells as :class:`ImageCell`.

    :param runs: a run folder or a list of them (the ranks of one run, merged by step, rank and row).
    :param key: the table key (``samples/val``).
    :param step: only the rows of this step; None for every step.
    """
    import pandas as pd

    if not isinstance(key, str) or not key:
        raise TypeError(f"key: expected a table key (str), got {key!r}")
    if step is not None and (isinstance(step, bool) or not isinstance(step, (int, np.integer))):
        raise TypeError(f"step: expected an int or None, got {step!r}")
    packs = _Packs()
    frames = []
    for folder in run_folders(runs):
        for path in _rows_files(folder, key):
            file = pq.ParquetFile(path)
            metadata = file.schema_arrow.metadata or {}
            if metadata.get(META_KEY, b"").decode() != key:
                continue  # a longer key's folder inside this one's (`a` and `a/b`)
            if step is not None and step not in [s for s, _ in json.loads(metadata.get(META_STEPS, b"[]"))]:
                continue
            frame = file.read().to_pandas()
            if step is not None:
                frame = frame[frame[STEP] == step]
            for column in json.loads(metadata.get(JSON_COLUMNS, b"[]")):
                frame[column] = [_from_json(text, folder, packs) for text in frame[column]]
            for column in json.loads(metadata.get(IMAGE_COLUMNS, b"[]")):
                frame[column] = [_image(cell, folder, packs) for cell in frame[column]]
            frames.append(frame)
    if not frames:
        return pd.DataFrame()
    merged = pd.concat(frames, ignore_index=True)
    return merged.sort_values([STEP, RANK, ROW], kind="stable", ignore_index=True)


def _from_json(text: Any, folder: str, packs: _Packs) -> Any:
    if not isinstance(text, str):  # a null: None or, in pandas' string dtype, NaN
        return None
    value = restore(json.loads(text))
    if isinstance(value, dict):
        if value.get("_type") == "image":
            return _image(value, folder, packs)
        if set(value) == {"value"}:  # a non-finite float, wrapped to record its kind
            return value["value"]
    return value


def _image(cell: dict | None, folder: str, packs: _Packs) -> ImageCell | None:
    if not isinstance(cell, dict):
        return None
    masks = {}
    listed = cell.get("masks")  # a list, or from pandas an array (whose truth value is an error)
    for mask in listed if listed is not None else ():
        labels = json.loads(mask["class_labels"]) if mask["class_labels"] else None
        masks[mask["name"]] = MaskCell(mask["name"], mask["hash"], _pack_path(folder, mask["pack"]),
                                       {int(k): v for k, v in labels.items()} if labels is not None else None, packs)
    boxes = json.loads(cell["boxes"]) if cell.get("boxes") else None
    return ImageCell(cell["hash"], _pack_path(folder, cell["pack"]), cell.get("caption"), masks, boxes, packs)


def _pack_path(folder: str, pack: str) -> str:
    if not pack or os.path.basename(pack) != pack or pack.startswith("."):
        raise ValueError(f"{folder}: expected a pack id (a plain file name), got {pack!r}")
    return os.path.join(folder, PACKS, f"{pack}.parquet")


def read_metrics(runs: Runs) -> pd.DataFrame:
    """Every metrics line of ``runs``: ``step``, ``time``, ``_rank`` and one column per metric name (NaN
    and infinities as floats again), in the order each rank logged them, ranks one after the other.

    :param runs: a run folder or a list of them.
    """
    import pandas as pd

    lines = []
    for folder in run_folders(runs):
        with open(os.path.join(folder, RUN_JSON), encoding="utf-8") as file:
            rank = json.load(file).get("rank", 0)
        path = os.path.join(folder, METRICS)
        if not os.path.exists(path):
            continue
        with open(path, encoding="utf-8") as file:
            for text in file:
                if not text.endswith("\n"):
                    break  # a line cut short by a kill: never whole JSON (docs, "File safety")
                line = restore(json.loads(text))
                row = {"step": line.pop("step", None), "time": line.pop("time", None), "_rank": rank}
                row.update({metric_name(name): value for name, value in line.items()})
                lines.append(row)
    return pd.DataFrame(lines)
