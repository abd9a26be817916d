"""Backend-neutral records: what travels on the bus.

A plugin never needs Composer or wandb to read these. Every record validates itself where it is
made, on the caller's thread, so a bad value fails at the first bad call with a message that names
the argument, instead of surfacing later on a writer thread where nobody can act on it.
"""

from __future__ import annotations

import dataclasses
import enum
import math
import numbers
import os
import re
import types
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from logbus.files import check_artifact_name, check_key, check_name

__all__ = [
    "Record",
    "Metrics",
    "Hyperparameters",
    "Mask",
    "Box",
    "Image",
    "Images",
    "Table",
    "ColumnRows",
    "ImageColumn",
    "MaskColumn",
    "PER_EVAL_MASK",
    "Artifact",
    "RunStarted",
    "RunFinished",
    "redact_secrets",
    "REDACTED",
]

REDACTED = "***redacted***"
# Secret-looking keys, judged on their word parts in any case style (``wandbApiKey``, ``db_password``,
# ``auth-token``, ``OPENAI_API_KEY``), never on substrings, so ``monkey`` or ``secretary`` are left
# alone. Whatever sits under such a key (a string, a number, a whole mapping of credentials) is
# replaced; ``None`` stays, it hides nothing.
_WORD_PARTS = re.compile(r"[A-Z]+(?![a-z])|[A-Z]?[a-z]+|[0-9]+")
# A last word that names a credential (``client_secret``, ``Authorization``).
_SECRET_WORDS = frozenset({"password", "passwords", "passwd", "passphrase", "secret", "secrets", "credential",
                           "credentials", "authorization", "apikey", "apikeys"})
# Env-var style glues words together (``PGPASSWORD``); these endings are long enough to be unambiguous.
_SECRET_ENDINGS = ("password", "passwd", "passphrase", "secret", "apikey")
# ``key`` and ``token`` are also data words: after one of these they name data, not a credential
# (``sort_key``, ``primary_key``, ``input_key``, ``pad_token``). After any other word (``api_key``,
# ``wandb_key``, ``hf_token``) they are taken for a credential: a config value hidden by mistake is
# cheaper than a key leaked.
_DATA_QUALIFIERS = frozenset({
    "sort", "primary", "foreign", "partition", "hash", "range", "cache", "dict", "map", "lookup", "index", "group",
    "join", "unique", "composite", "public", "row", "column", "field", "metric", "monitor", "input", "target",
    "label", "image", "text", "audio", "video", "data", "dataset", "batch", "sample", "feature", "output", "model",
    "state", "class", "name", "id", "num", "max", "min", "total", "next", "first", "last", "new", "pad", "eos", "bos",
    "unk", "sep", "cls", "mask", "special", "start", "end", "stop", "rng", "prng", "random", "seed", "split",
    "vocab", "prompt", "query", "context",
})


def _is_secret_key(key: str) -> bool:
    """Whether ``key`` (a config or hyperparameter name) looks like it holds a credential."""
    words = [word.lower() for word in _WORD_PARTS.findall(key)]
    if not words:
        return False
    last = words[-1]
    if last in ("key", "keys", "token"):
        if len(words) == 1:
            return last != "keys"  # a bare ``key`` may be a credential; bare ``keys`` is a list of names
        return words[-2] not in _DATA_QUALIFIERS
    return last in _SECRET_WORDS or last.endswith(_SECRET_ENDINGS)


class Record:
    """Base of every record. ``droppable`` records (samples, media) may be shed under backpressure;
    metrics, hyperparameters, artifacts and run boundaries never are."""

    __slots__ = ()
    droppable = False

    @property
    def nbytes(self) -> int:
        """The bytes a droppable record counts against a backend's pending budget (``max_pending_bytes``)."""
        return 0


def _is_number(value: Any) -> bool:
    # bool is a Number subclass but logging True as 1.0 is almost always a bug in the caller.
    if isinstance(value, bool):
        return False
    if isinstance(value, numbers.Real):
        return True
    if isinstance(value, np.ndarray) and value.size == 1 and np.issubdtype(value.dtype, np.number):
        return True
    # 0-dim / 1-element tensors and numpy scalars: read on the writer thread, not here, so
    # logging a CUDA scalar never forces a device sync on the training thread.
    numel = getattr(value, "numel", None)
    dtype = getattr(value, "dtype", None)
    if numel is not None and dtype is not None:
        try:
            return numel() == 1 and not getattr(dtype, "is_complex", False) and dtype != _torch_bool()
        except TypeError:
            return False
    return isinstance(value, np.generic) and np.issubdtype(value.dtype, np.number)


def _torch_bool():
    import torch

    return torch.bool


def as_float(value: Any) -> float:
    """Turns a validated metric value into a float (on the writer thread: may sync a device)."""
    if hasattr(value, "item"):
        value = value.item()
    return float(value)


_FAST_NUMBERS = (float, int)


class Metrics(Record):
    """Scalars at a step. Values may be Python/numpy numbers or one-element tensors/arrays.

    A tensor or array value is snapshotted here, at the call: a CPU tensor or numpy array is read
    (no device involved), a CUDA tensor copied with ``t.detach().clone()`` on its own device (an
    asynchronous copy, no host sync) and read as a float later on the writer thread. Changing ``t``
    in place after logging it (``t.zero_()``, an optimizer step) does not change what was logged.

    A hand-written slotted class rather than a dataclass: this is built for every logged scalar on
    the training thread, and the fast path (str -> float/int, int step) must stay near a microsecond.
    """

    __slots__ = ("values", "step")

    def __init__(self, values: Mapping[str, Any], step: int | None = None):
        if type(values) is not dict:
            if not isinstance(values, Mapping):
                raise TypeError(f"metrics: expected a mapping of name -> number, got {type(values).__name__}")
        snapshots = None
        for name, value in values.items():
            if name not in _SHOWABLE_NAMES:  # once per name: a set lookup afterwards
                _check_metric_name(name)
            if type(value) in _FAST_NUMBERS:
                continue
            if not _is_number(value):
                raise TypeError(
                    f"metrics[{name!r}]: expected a real number or a one-element tensor, "
                    f"got {type(value).__name__} {value!r:.80}"
                )
            if isinstance(value, np.ndarray) or hasattr(value, "detach"):  # mutable: the caller may reuse it
                snapshots = snapshots or {}
                snapshots[name] = _snapshot(value)
        if step is not None and (type(step) is not int or step < 0):
            _check_step(step)
            step = int(step)
        # A copy: the caller may reuse its dict, and the writer thread reads this later.
        self.values = dict(values)
        if snapshots:
            self.values.update(snapshots)
        self.step = step

    def __repr__(self) -> str:
        return f"Metrics({self.values!r}, step={self.step!r})"


# Metric names already checked (see _check_metric_name). Bounded: a caller that makes a new name at every
# step (``f"loss_{step}"``) gets each checked, never a set that grows without end.
_SHOWABLE_NAMES: set[str] = set()
_MAX_REMEMBERED_NAMES = 100_000


def _check_metric_name(name: Any) -> None:
    if not isinstance(name, str):
        raise TypeError(f"metrics: names must be str, got {name!r} ({type(name).__name__})")
    check_name(name, f"metrics[{name!r}]")
    if len(_SHOWABLE_NAMES) < _MAX_REMEMBERED_NAMES:
        _SHOWABLE_NAMES.add(name)


def _snapshot(value: Any) -> Any:
    """The value of a one-element array or tensor now. Host data is read at once (cheaper than a
    copy); a device tensor is copied on its device (asynchronous: no sync) and read later."""
    if isinstance(value, np.ndarray) or value.is_cpu:
        return value.item()
    return value.detach().clone()


def _check_step(step):
    if step is not None and (isinstance(step, bool) or not isinstance(step, numbers.Integral) or step < 0):
        raise TypeError(f"step: expected a non-negative int or None, got {step!r}")


# How deep redaction walks: deeper than any config, shallow enough for Python's recursion limit. What lies
# deeper is replaced, never passed on unread.
_MAX_REDACTION_DEPTH = 32
_SCALARS = (str, bytes, bool, int, float, complex, type(None))


def redact_secrets(values: Any, _secret_values: frozenset[str] | None = None) -> Any:
    """Returns a copy of ``values`` where anything under a secret-looking key, and any string equal to
    the W&B API key in the environment, is replaced by ``REDACTED``.

    Mappings, lists, tuples and sets are walked, and so are objects that hold settings as attributes,
    where a key is an attribute's name: a dataclass instance becomes the dict of its fields, a named
    tuple stays one, any other object with public instance attributes (``argparse.Namespace``,
    ``types.SimpleNamespace``, a config class) becomes the dict of them (``config={"args": args}`` is
    stored as ``{"args": {"lr": ..., "api_key": "***redacted***"}}``, as W&B stores a Namespace given
    to ``wandb.config``). Without this an object would reach every backend as its ``repr``, secrets
    included. Classes, modules, functions, callables (a model) and enum members are kept as they are."""
    if _secret_values is None:
        _secret_values = frozenset(v for v in (os.environ.get("WANDB_API_KEY"),) if v)
    return _redacted(values, _secret_values, set(), 0)


def _redacted(value: Any, secret_values: frozenset[str], walking: set[int], depth: int) -> Any:
    if isinstance(value, _SCALARS):
        return REDACTED if isinstance(value, str) and value in secret_values else value
    if depth >= _MAX_REDACTION_DEPTH:
        return f"<{type(value).__name__} nested deeper than {_MAX_REDACTION_DEPTH} levels, not logged>"
    if id(value) in walking:
        return f"<{type(value).__name__} that contains itself>"
    attributes = None if isinstance(value, Mapping) else _attributes(value)
    if not isinstance(value, (Mapping, list, tuple, set, frozenset)) and attributes is None:
        return value
    walking.add(id(value))
    try:
        if isinstance(value, Mapping) or attributes is not None:
            items = value.items() if isinstance(value, Mapping) else attributes.items()  # type: ignore[union-attr]
            out = {key: REDACTED if isinstance(key, str) and item is not None and _is_secret_key(key)
                   else _redacted(item, secret_values, walking, depth + 1) for key, item in items}
            return type(value)(*out.values()) if isinstance(value, tuple) else out  # a named tuple stays one
        walked = [_redacted(item, secret_values, walking, depth + 1) for item in value]
        if type(value) in (list, tuple, set, frozenset):
            return type(value)(walked)
        return walked  # a subclass may not take an iterable: its items, as a list
    finally:
        walking.discard(id(value))


def _attributes(value: Any) -> dict[str, Any] | None:
    """The settings ``value`` holds as attributes (see :func:`redact_secrets`), or None for an object
    that is not walked."""
    if isinstance(value, tuple):
        return value._asdict() if hasattr(type(value), "_fields") and hasattr(value, "_asdict") else None
    if isinstance(value, (type, types.ModuleType, enum.Enum, numbers.Number)) or callable(value):
        return None
    if dataclasses.is_dataclass(value):
        return {field.name: getattr(value, field.name) for field in dataclasses.fields(value)}
    instance = getattr(value, "__dict__", None)
    names = list(instance) if isinstance(instance, dict) else []
    for klass in type(value).__mro__:  # a slotted class (attrs' slots=True) keeps its attributes there
        slots = vars(klass).get("__slots__", ())
        names += [slots] if isinstance(slots, str) else list(slots)
    # Private attributes are an object's workings, not its settings: left out (not passed on either).
    public = {name: getattr(value, name) for name in dict.fromkeys(names)
              if isinstance(name, str) and not name.startswith("_") and hasattr(value, name)}
    return public or None  # a tensor, an array, a path: nothing public to walk, kept as they are


@dataclass(frozen=True, slots=True)
class Hyperparameters(Record):
    """Run configuration. Secret-looking values are redacted here, so no backend ever sees them."""

    values: Mapping[str, Any]

    def __post_init__(self):
        if not isinstance(self.values, Mapping):
            raise TypeError(f"hyperparameters: expected a mapping, got {type(self.values).__name__}")
        for key in self.values:
            if not isinstance(key, str):
                raise TypeError(f"hyperparameters: keys must be str, got {key!r}")
        object.__setattr__(self, "values", redact_secrets(self.values))


# What a float image is converted with: the kernels' conversion (the sample pipeline's rounding), which
# takes a tensor of one image [H, W, C] as well as a batch. tests/test_records.py runs this advice.
TO_UINT8_ADVICE = "logbus.kernels.images_to_uint8(torch.as_tensor(pixels), channels_last=True)[0].numpy()"


def _to_numpy(array: Any, argument: str) -> np.ndarray:
    if hasattr(array, "detach"):  # torch.Tensor, without importing torch here
        array = array.detach()
        if array.dtype.is_floating_point and array.dtype.itemsize < 4:
            array = array.float()  # numpy has no bfloat16
        array = array.cpu().numpy()
    if not isinstance(array, np.ndarray):
        try:
            array = np.asarray(array)
        except Exception as error:  # noqa: BLE001 - re-raised with the argument's name
            raise TypeError(f"{argument}: expected an array or tensor, got {type(array).__name__}") from error
    return array


@dataclass(frozen=True, slots=True)
class Mask(Record):
    """A per-pixel class mask ``[H, W]`` of non-negative ints, with optional names for the classes.

    ``path``: a lossless PNG of ``data`` already written (a sample pipeline's scratch file, encoded in
    its worker process), which a backend may link rather than encode ``data`` again; None otherwise."""

    data: np.ndarray
    class_labels: Mapping[int, str] | None = None
    path: str | None = None

    def __post_init__(self):
        data = _to_numpy(self.data, "mask")
        if data.ndim != 2:
            raise ValueError(f"mask: expected a 2-D [H, W] array of class ids, got shape {tuple(data.shape)}")
        if not np.issubdtype(data.dtype, np.integer):
            raise TypeError(f"mask: expected an integer array of class ids, got dtype {data.dtype}")
        if data.size and data.dtype.kind == "i" and data.min() < 0:  # unsigned ids need no pass over the pixels
            raise ValueError(f"mask: class ids must be >= 0, got minimum {int(data.min())}")
        object.__setattr__(self, "data", data)
        if self.class_labels is not None:
            if not isinstance(self.class_labels, Mapping) or not all(
                isinstance(k, numbers.Integral) and isinstance(v, str) for k, v in self.class_labels.items()
            ):
                raise TypeError("mask_class_labels: expected a mapping of int class id -> str label")


    @classmethod
    def unchecked(cls, data: np.ndarray, class_labels: Mapping[int, str] | None = None) -> "Mask":
        """A ``Mask`` without ``__post_init__``'s checks, for a producer that checked ``data`` (a 2-D
        array of non-negative integer ids) and ``class_labels`` itself (see ``Image.unchecked``)."""
        mask = object.__new__(cls)
        for name, value in (("data", data), ("class_labels", class_labels), ("path", None)):
            object.__setattr__(mask, name, value)
        return mask


@dataclass(frozen=True, slots=True)
class Box(Record):
    """An axis-aligned box in pixel coordinates."""

    min_x: float
    min_y: float
    max_x: float
    max_y: float
    class_id: int
    caption: str | None = None
    score: float | None = None

    def __post_init__(self):
        for name in ("min_x", "min_y", "max_x", "max_y"):
            value = getattr(self, name)
            if not _is_number(value) or not math.isfinite(float(value)):
                raise TypeError(f"box.{name}: expected a finite number, got {value!r}")
        if self.max_x < self.min_x or self.max_y < self.min_y:
            raise ValueError(f"box: expected min <= max, got x {self.min_x}..{self.max_x}, y {self.min_y}..{self.max_y}")
        if isinstance(self.class_id, bool) or not isinstance(self.class_id, numbers.Integral) or self.class_id < 0:
            raise TypeError(f"box.class_id: expected a non-negative int, got {self.class_id!r}")


@dataclass(frozen=True, slots=True)
class Image(Record):
    """One image: either uint8 ``pixels`` ``[H, W, C]`` (C in 1/3/4) or the ``path`` of an already
    encoded PNG/JPEG file, which backends reference as it is (never re-encoded). A ``Table`` or
    ``Images`` record that holds it is logged with the file's bytes as the bus's first backend writer
    reads them, off the caller's thread, once for every backend (normally milliseconds after the call,
    always before a later ``flush()`` returns; ``logbus.bus._file_copies``).

    ``digest``: the content hash of the image (``logbus.files.content_hash`` of its pixels or of its
    file's bytes), set by a producer that already hashed it (the sample pipeline), so that a backend
    that stores images by content (the local store) does not hash them again; None otherwise."""

    pixels: np.ndarray | None = None
    path: str | None = None
    caption: str | None = None
    masks: Mapping[str, Mask] = field(default_factory=dict)
    boxes: Sequence[Box] = ()
    box_class_labels: Mapping[int, str] | None = None
    digest: str | None = None

    def __post_init__(self):
        if (self.pixels is None) == (self.path is None):
            raise ValueError("image: give exactly one of pixels (uint8 [H, W, C] array) or path (encoded file)")
        if self.pixels is not None:
            pixels = _to_numpy(self.pixels, "image")
            if pixels.ndim == 2:
                pixels = pixels[:, :, None]
            if pixels.ndim != 3 or pixels.shape[2] not in (1, 3, 4) or 0 in pixels.shape:
                raise ValueError(
                    f"image: expected uint8 pixels of shape [H, W, C] with C in (1, 3, 4), got shape {tuple(pixels.shape)}"
                )
            if pixels.dtype != np.uint8:
                raise TypeError(
                    f"image: expected dtype uint8, got {pixels.dtype} (convert float images in 0..1 with "
                    f"{TO_UINT8_ADVICE})"
                )
            object.__setattr__(self, "pixels", pixels)
            height, width = pixels.shape[:2]
        else:
            if not isinstance(self.path, (str, os.PathLike)) or not os.path.isfile(self.path):
                raise ValueError(f"image.path: expected an existing encoded image file, got {self.path!r}")
            object.__setattr__(self, "path", os.fspath(self.path))
            height = width = None
        if self.caption is not None and not isinstance(self.caption, str):
            raise TypeError(f"image.caption: expected str or None, got {type(self.caption).__name__}")
        if not isinstance(self.masks, Mapping):
            raise TypeError("image.masks: expected a mapping of mask name -> Mask")
        for name, mask in self.masks.items():
            check_name(name, f"image.masks[{name!r}]")
            if not isinstance(mask, Mask):
                raise TypeError(f"image.masks[{name!r}]: expected a logbus.records.Mask, got {type(mask).__name__}")
            if height is not None and mask.data.shape != (height, width):
                raise ValueError(
                    f"image.masks[{name!r}]: expected shape {(height, width)} to match the image, got {mask.data.shape}"
                )
        for box in self.boxes:
            if not isinstance(box, Box):
                raise TypeError(f"image.boxes: expected logbus.records.Box items, got {type(box).__name__}")
        if self.digest is not None and not isinstance(self.digest, str):
            raise TypeError(f"image.digest: expected a content hash (str) or None, got {type(self.digest).__name__}")

    droppable = True

    @classmethod
    def unchecked(cls, pixels: np.ndarray, digest: str | None = None, caption: str | None = None,
                  masks: Mapping[str, Mask] | None = None) -> "Image":
        """An ``Image`` of ``pixels`` without ``__post_init__``'s checks, for a producer that made the
        array itself and checked it once for a whole batch (the sample pipeline: a view of its batch's
        uint8 ``[N, H, W, C]`` array, C in 1/3/4, ``digest`` its ``content_hash``, ``masks`` of the
        same height and width). Those checks cost more than the rest of a row's work there. Anything
        else must use ``Image(...)``, whose checks name the bad argument."""
        image = object.__new__(cls)
        set_field = object.__setattr__  # frozen: the one way in; unrolled, as a loop costs as much again
        set_field(image, "pixels", pixels)
        set_field(image, "path", None)
        set_field(image, "caption", caption)
        set_field(image, "masks", masks or {})
        set_field(image, "boxes", ())
        set_field(image, "box_class_labels", None)
        set_field(image, "digest", digest)
        return image

    @property
    def nbytes(self) -> int:
        return 0 if self.pixels is None else int(self.pixels.nbytes)


@dataclass(frozen=True, slots=True)
class Images(Record):
    """A list of images logged under one key (Composer's ``log_images``)."""

    key: str
    images: Sequence[Image]
    step: int | None = None

    def __post_init__(self):
        check_key(self.key, "key")
        if not isinstance(self.images, (list, tuple)) or not all(isinstance(i, Image) for i in self.images):
            raise TypeError("images: expected a list of logbus.records.Image")
        _check_step(self.step)

    droppable = True

    @property
    def nbytes(self) -> int:
        return sum(image.nbytes for image in self.images)


_CELL_TYPES = (str, int, float, bool, type(None), Image)
# The mask of an image cell that changes from eval to eval (the model's), in a table with a join_key.
PER_EVAL_MASK = "prediction"


@dataclass(frozen=True, slots=True)
class Table(Record):
    """A table: named columns and rows of str/number/bool/None/Image cells.

    ``join_key``, if given, names the column whose value is the same sample at every eval (the
    sample pipeline's ``id``). A backend may then keep what does not change between evals -- each
    row's image cells with their caption and masks, except the mask named ``prediction``
    (:data:`PER_EVAL_MASK`) and the boxes -- once, and let later tables refer to it (W&B does);
    every other cell is per eval. Without it, every cell is logged with every table."""

    key: str
    columns: Sequence[str]
    rows: Sequence[Sequence[Any]]
    step: int | None = None
    join_key: str | None = None

    def __post_init__(self):
        check_key(self.key, "key")
        if isinstance(self.columns, str) or not isinstance(self.columns, Sequence) or not all(
            isinstance(c, str) for c in self.columns
        ):
            raise TypeError(f"columns: expected a list of str, got {self.columns!r:.80}")
        for index, column in enumerate(self.columns):
            check_name(column, f"columns[{index}]")
        if len(set(self.columns)) != len(self.columns):
            raise ValueError(f"columns: names must be unique, got {list(self.columns)}")
        width = len(self.columns)
        object.__setattr__(self, "columns", list(self.columns))
        _check_step(self.step)
        if self.join_key is not None and self.join_key not in self.columns:
            raise ValueError(f"join_key: expected one of the columns {list(self.columns)} or None, got {self.join_key!r}")
        if isinstance(self.rows, ColumnRows):  # made by the sample pipeline from checked arrays: no check per cell
            if list(self.rows.columns) != self.columns:
                raise ValueError(f"rows: expected columns {self.columns}, got {list(self.rows.columns)}")
            return
        rows = []
        for index, row in enumerate(self.rows):
            if isinstance(row, (str, bytes)) or not isinstance(row, Sequence):
                raise TypeError(f"rows[{index}]: expected a list of cells, got {type(row).__name__}")
            if len(row) != width:
                raise ValueError(f"rows[{index}]: expected {width} cells to match columns {list(self.columns)}, got {len(row)}")
            cells = []
            for cell in row:
                if isinstance(cell, np.generic):
                    cell = cell.item()
                if not isinstance(cell, _CELL_TYPES):
                    raise TypeError(
                        f"rows[{index}]: cells must be str, int, float, bool, None or logbus.records.Image, "
                        f"got {type(cell).__name__}"
                    )
                cells.append(cell)
            rows.append(cells)
        object.__setattr__(self, "rows", rows)

    droppable = True

    @property
    def nbytes(self) -> int:
        if isinstance(self.rows, ColumnRows):
            return self.rows.nbytes
        return sum(cell.nbytes for row in self.rows for cell in row if isinstance(cell, Image)) + 64 * len(self.rows)


@dataclass(frozen=True, slots=True)
class MaskColumn:
    """One named mask of every row of an :class:`ImageColumn`: class ids ``[N, H, W]`` (non-negative
    integers), each row's content hash (``logbus.files.content_hash`` of ``ids[i]``) and the labels.
    ``ids`` may be the name of the batch field that holds them, until :meth:`ColumnRows.fill`."""

    ids: Any
    digests: Sequence[str]
    class_labels: Mapping[int, str] | None = None


@dataclass(frozen=True, slots=True)
class ImageColumn:
    """An image column held whole: uint8 pixels ``[N, H, W, C]`` (C in 1/3/4), each row's content hash
    (``logbus.files.content_hash`` of ``pixels[i]``), and masks by name. ``pixels`` may be the name of
    the batch field that holds them (``[N, H, W, C]`` or ``[N, H, W]``), until :meth:`ColumnRows.fill`:
    the sample pipeline's worker process hashes the pixels where they lie, in the memory the training
    process shares with it, and sends back their hashes, not the pixels."""

    pixels: Any
    digests: Sequence[str]
    masks: Mapping[str, MaskColumn] = field(default_factory=dict)


class ColumnRows(Sequence):
    """A table's rows held as columns: what the sample pipeline makes, one array per column for a whole
    batch, so that no Python runs per row on its way to a backend that takes columns (the local store).
    As a ``Sequence`` it is the rows any backend expects, made on first use (row lists with
    ``Image`` cells) and kept.

    ``data`` maps each column to a numpy array (ints, bools, or floats where NaN is a missing value,
    ``None`` in a row), a list (strings or None), or an :class:`ImageColumn`. Made by producers that
    checked their arrays themselves (the pipeline's host stages): nothing here checks a cell.
    """

    __slots__ = ("columns", "data", "length", "_rows")

    def __init__(self, columns: Sequence[str], data: Mapping[str, Any], length: int):
        self.columns = list(columns)
        self.data = dict(data)
        self.length = length
        self._rows: list[list] | None = None

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index):
        return self.rows()[index]

    def __iter__(self):
        return iter(self.rows())

    def __getstate__(self):
        return {"columns": self.columns, "data": self.data, "length": self.length}

    def __setstate__(self, state):
        self.columns, self.data, self.length, self._rows = state["columns"], state["data"], state["length"], None

    @property
    def nbytes(self) -> int:
        images = [value for value in self.data.values() if isinstance(value, ImageColumn)]
        return sum(int(image.pixels.nbytes) for image in images) + 64 * self.length

    def fill(self, fields: Mapping[str, np.ndarray]) -> "ColumnRows":
        """These rows with the image and mask columns that name a batch field (see :class:`ImageColumn`)
        given their arrays, copied from ``fields`` (the batch's buffer, about to be reused)."""
        data = dict(self.data)
        for name, value in self.data.items():
            if isinstance(value, ImageColumn):
                pixels = np.array(fields[value.pixels]) if isinstance(value.pixels, str) else value.pixels
                if pixels.ndim == 3:
                    pixels = pixels[..., None]
                masks = {mask_name: MaskColumn(np.array(fields[mask.ids]) if isinstance(mask.ids, str) else mask.ids,
                                               mask.digests, mask.class_labels)
                         for mask_name, mask in value.masks.items()}
                data[name] = ImageColumn(pixels, value.digests, masks)
        return ColumnRows(self.columns, data, self.length)

    def cells(self, name: str) -> list:
        """The cells of column ``name``, as its rows hold them."""
        return _column_cells(self.data[name], self.length)

    def rows(self) -> list[list]:
        """The rows as lists of cells (``Image`` cells for image columns), made once."""
        if self._rows is None:
            cells = [_column_cells(self.data[name], self.length) for name in self.columns]
            self._rows = [list(row) for row in zip(*cells)] if cells else [[] for _ in range(self.length)]
        return self._rows

    def take(self, order: np.ndarray) -> "ColumnRows":
        """The rows at ``order`` (an index array), in that order."""
        return ColumnRows(self.columns, {name: _take(value, order) for name, value in self.data.items()}, len(order))

    @staticmethod
    def concat(parts: Sequence["ColumnRows"]) -> "ColumnRows":
        """The rows of ``parts`` one after the other (the same columns, images of one shape)."""
        first = parts[0]
        if len(parts) == 1:
            return first
        return ColumnRows(first.columns, {name: _concat([part.data[name] for part in parts]) for name in first.columns},
                          sum(part.length for part in parts))


def _column_cells(value: Any, length: int) -> list:
    if isinstance(value, ImageColumn):
        masks = value.masks
        return [Image.unchecked(value.pixels[i], value.digests[i], None,
                                {name: Mask.unchecked(mask.ids[i], mask.class_labels) for name, mask in masks.items()})
                for i in range(length)]
    if isinstance(value, np.ndarray):
        cells = value.tolist()
        if value.dtype.kind == "f":
            return [None if cell != cell else cell for cell in cells]  # NaN: missing
        return cells
    return list(value)


def _take(value: Any, order: np.ndarray) -> Any:
    if isinstance(value, ImageColumn):
        return ImageColumn(value.pixels[order], [value.digests[i] for i in order.tolist()],
                           {name: MaskColumn(mask.ids[order], [mask.digests[i] for i in order.tolist()], mask.class_labels)
                            for name, mask in value.masks.items()})
    if isinstance(value, np.ndarray):
        return value[order]
    return [value[i] for i in order.tolist()]


def _concat(values: list[Any]) -> Any:
    first = values[0]
    if isinstance(first, ImageColumn):
        return ImageColumn(np.concatenate([v.pixels for v in values]), [d for v in values for d in v.digests],
                           {name: MaskColumn(np.concatenate([v.masks[name].ids for v in values]),
                                             [d for v in values for d in v.masks[name].digests], mask.class_labels)
                            for name, mask in first.masks.items()})
    if isinstance(first, np.ndarray):
        return np.concatenate(values)
    return [cell for value in values for cell in value]


@dataclass(frozen=True, slots=True)
class Artifact(Record):
    """A file to keep with the run (a checkpoint, say). ``name`` must be a plain file name.

    ``on_done``, if given, is called once by each backend's writer that takes the record, after the
    backend is done with the file (delivered, failed or discarded): a staged copy can be freed then."""

    path: str
    name: str
    type: str = "file"
    aliases: Sequence[str] = ()
    metadata: Mapping[str, Any] = field(default_factory=dict)
    on_done: Callable[[], None] | None = field(default=None, compare=False, repr=False)

    def __post_init__(self):
        if not isinstance(self.path, (str, os.PathLike)) or not os.path.isfile(self.path):
            raise ValueError(f"file_path: expected an existing file, got {self.path!r}")
        object.__setattr__(self, "path", os.path.abspath(os.fspath(self.path)))
        check_artifact_name(self.name)
        if not isinstance(self.type, str) or not self.type:
            raise TypeError(f"artifact type: expected a non-empty str, got {self.type!r}")
        if isinstance(self.aliases, str) or not all(isinstance(a, str) for a in self.aliases):
            raise TypeError(f"aliases: expected a list of str, got {self.aliases!r}")


@dataclass(frozen=True, slots=True)
class RunStarted(Record):
    """The first record every backend sees: who this run is."""

    run_name: str
    config: Mapping[str, Any] = field(default_factory=dict)
    rank: int = 0
    world_size: int = 1

    def __post_init__(self):
        if not isinstance(self.run_name, str) or not self.run_name:
            raise TypeError(f"run_name: expected a non-empty str, got {self.run_name!r}")
        object.__setattr__(self, "config", redact_secrets(dict(self.config or {})))


@dataclass(frozen=True, slots=True)
class RunFinished(Record):
    """The last record: ``exit_code`` 0 for success, non-zero when training raised or was interrupted."""

    exit_code: int = 0
    reason: str | None = None
