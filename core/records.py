"""Backend-neutral records: what travels on the bus.

A plugin never needs Composer or wandb to read these. Every record validates itself where it is
made, on the caller's thread, so a bad value fails at the first bad call with a message that names
the argument, instead of surfacing later on a writer thread where nobody can act on it.
"""

from __future__ import annotations

import math
import numbers
import os
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from logbus.files import check_artifact_name, check_key

__all__ = [
    "Record",
    "Metrics",
    "Hyperparameters",
    "Mask",
    "Box",
    "Image",
    "Images",
    "Table",
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
            if type(value) in _FAST_NUMBERS and type(name) is str:
                continue
            if not isinstance(name, str):
                raise TypeError(f"metrics: names must be str, got {name!r} ({type(name).__name__})")
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


def _snapshot(value: Any) -> Any:
    """The value of a one-element array or tensor now. Host data is read at once (cheaper than a
    copy); a device tensor is copied on its device (asynchronous: no sync) and read later."""
    if isinstance(value, np.ndarray) or value.is_cpu:
        return value.item()
    return value.detach().clone()


def _check_step(step):
    if step is not None and (isinstance(step, bool) or not isinstance(step, numbers.Integral) or step < 0):
        raise TypeError(f"step: expected a non-negative int or None, got {step!r}")


def redact_secrets(values: Any, _secret_values: frozenset[str] | None = None) -> Any:
    """Returns a copy of ``values`` where anything under a secret-looking key, and any string equal to
    the W&B API key in the environment, is replaced by ``REDACTED``. Nested mappings and lists are
    walked."""
    if _secret_values is None:
        _secret_values = frozenset(v for v in (os.environ.get("WANDB_API_KEY"),) if v)
    if isinstance(values, Mapping):
        out = {}
        for key, value in values.items():
            if isinstance(key, str) and value is not None and _is_secret_key(key):
                out[key] = REDACTED
            else:
                out[key] = redact_secrets(value, _secret_values)
        return out
    if isinstance(values, (list, tuple)):
        return type(values)(redact_secrets(v, _secret_values) for v in values)
    if isinstance(values, str) and values in _secret_values:
        return REDACTED
    return values


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
    encoded PNG/JPEG file, which backends reference as it is (never re-encoded).

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
                    f"image: expected dtype uint8 (convert floats with logbus.to_uint8_images), got {pixels.dtype}"
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
        if len(set(self.columns)) != len(self.columns):
            raise ValueError(f"columns: names must be unique, got {list(self.columns)}")
        width = len(self.columns)
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
        object.__setattr__(self, "columns", list(self.columns))
        object.__setattr__(self, "rows", rows)
        _check_step(self.step)
        if self.join_key is not None and self.join_key not in self.columns:
            raise ValueError(f"join_key: expected one of the columns {list(self.columns)} or None, got {self.join_key!r}")

    droppable = True

    @property
    def nbytes(self) -> int:
        return sum(cell.nbytes for row in self.rows for cell in row if isinstance(cell, Image)) + 64 * len(self.rows)


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
