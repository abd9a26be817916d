"""Names that become paths or remote identifiers: checked on the caller's thread, sanitised for disk.

Table keys, artifact names, run names and class names end up in file names (local backend) and in
W&B artifact names. Hostile or accidental names (``../x``, ``/etc/passwd``, control characters) must
never escape the run folder.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata

from logbus.files._strict_json import NONFINITE

# What no backend can show or store in a name: control characters (C0, DEL, C1), the Unicode line and
# paragraph separators (they break a line in every log, table and JSON-lines reader), and lone
# surrogates (a str Python holds but UTF-8, JSON writers and protobuf cannot encode).
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")
_UNSAFE_FILE_CHARS = re.compile(r"[^A-Za-z0-9._-]+")
_WANDB_ARTIFACT_CHARS = re.compile(r"[^A-Za-z0-9\-_.]")
MAX_NAME = 128


def check_name(name: object, argument: str) -> str:
    """A name a user gives that backends show (a metric name, a table column, a mask name, a sample
    label): a str with a visible character and nothing :data:`_CONTROL` refuses. ``TypeError`` for
    a non-str, ``ValueError`` naming ``argument`` for the rest."""
    if not isinstance(name, str):
        raise TypeError(f"{argument}: expected a str, got {name!r} ({type(name).__name__})")
    if not any(not character.isspace() and unicodedata.category(character) != "Cf" for character in name):
        # blank, or only format characters (zero-width spaces, direction marks): shown as nothing
        raise ValueError(f"{argument}: expected a name with a visible character, got {name!r}")
    if _CONTROL.search(name):
        raise ValueError(f"{argument}: expected no control characters, line separators or lone surrogates, got {name!r}")
    return name


def check_key(key: object, argument: str) -> str:
    """A logging key such as ``samples/val`` or ``loss/train``: slashes group, but no empty or blank
    parts, no ``..``, nothing :func:`check_name` refuses."""
    if not isinstance(key, str) or not key:
        raise TypeError(f"{argument}: expected a non-empty str, got {key!r}")
    if _CONTROL.search(key):
        raise ValueError(f"{argument}: control characters are not allowed, got {key!r}")
    parts = key.split("/")
    if key.startswith("/") or any(part.strip() in ("", ".", "..") for part in parts):
        raise ValueError(f"{argument}: expected a relative key like 'samples/val' without '..' or empty parts, got {key!r}")
    return key


def check_artifact_name(name: object) -> str:
    """An artifact name is one plain file name: no directories at all."""
    if not isinstance(name, str) or not name:
        raise TypeError(f"artifact name: expected a non-empty str, got {name!r}")
    if "/" in name or "\\" in name or name == "." or ".." in name:
        raise ValueError(f"artifact name: expected a plain file name without path separators or '..', got {name!r}")
    if _CONTROL.search(name):
        raise ValueError(f"artifact name: control characters are not allowed, got {name!r}")
    return name


def safe_filename(name: str) -> str:
    """Maps any string to one file-name component: only ``[A-Za-z0-9._-]``, never ``.``/``..``,
    never hidden, at most 128 characters."""
    cleaned = _UNSAFE_FILE_CHARS.sub("_", name).strip("._") or "_"
    return cleaned[:MAX_NAME]


def safe_relpath(key: str) -> str:
    """A ``/``-grouped key as a relative path of safe components (``samples/val`` -> ``samples/val``).

    Injective: when cleaning changed the key, a short hash of the original is appended, so ``a b``
    and ``a_b`` never share a file."""
    cleaned = "/".join(safe_filename(part) for part in key.split("/"))
    if cleaned != key:
        cleaned += "-" + hashlib.blake2b(key.encode(), digest_size=4).hexdigest()
    return cleaned


def wandb_artifact_name(name: str) -> str:
    """W&B permits only alphanumerics, ``-``, ``_`` and ``.`` in artifact names (as Composer does)."""
    cleaned = re.sub(r"\.{2,}", ".", _WANDB_ARTIFACT_CHARS.sub(".", name)).strip(".") or "artifact"
    return cleaned[:MAX_NAME]


# A local run's metrics line has fields of its own beside the metrics ({"step", "time", "loss", ...}), and
# hparams.json may get one ("_nonfinite"). A user's name equal to one of these, or starting with the
# prefix, is written with the prefix in front ("step" -> "metric/step"): it can overwrite nothing, and
# the mapping is reversible (metric_name, hparam_name).
METRIC_PREFIX, HPARAM_PREFIX = "metric/", "hparam/"
METRICS_LINE_FIELDS = frozenset({"step", "time", NONFINITE})
HPARAMS_FIELDS = frozenset({NONFINITE})


def metric_field(name: str) -> str:
    """The field of a local run's metrics line that holds metric ``name`` (``step`` -> ``metric/step``)."""
    return _prefixed(name, METRICS_LINE_FIELDS, METRIC_PREFIX)


def metric_name(field: str) -> str:
    """The metric's name back from its field in a metrics line (the inverse of :func:`metric_field`)."""
    return field[len(METRIC_PREFIX):] if field.startswith(METRIC_PREFIX) else field


def hparam_field(name: str) -> str:
    """The top-level field of a local run's hparams.json that holds hyperparameter ``name``."""
    return _prefixed(name, HPARAMS_FIELDS, HPARAM_PREFIX)


def hparam_name(field: str) -> str:
    """The hyperparameter's name back from its field in hparams.json (the inverse of :func:`hparam_field`)."""
    return field[len(HPARAM_PREFIX):] if field.startswith(HPARAM_PREFIX) else field


def _prefixed(name: str, reserved: frozenset[str], prefix: str) -> str:
    # A name that is not a str (a run config may have int keys) is left as it is: json writes it as one.
    if isinstance(name, str) and (name in reserved or name.startswith(prefix)):
        return prefix + name
    return name
