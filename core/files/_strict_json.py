"""JSON that every parser reads: NaN and infinities written as ``null``, their kinds kept beside.

Python's ``json`` writes ``NaN``/``Infinity`` tokens that ``JSON.parse``, ``jq`` and most other readers
reject, so a run folder with one NaN loss would be unreadable to them. Here each non-finite number
becomes ``null`` and the document (a JSON object) gets one more field, ``"_nonfinite"``: a list of
``[path, kind]`` pairs, ``path`` the list of keys and indices that leads to the value (the form of
jq's ``getpath``/``setpath``), ``kind`` one of ``"NaN"``, ``"Infinity"``, ``"-Infinity"`` (what
JavaScript's ``Number(kind)`` and Python's ``float(kind)`` turn back into the value). A document
without non-finite numbers has no such field. :func:`restore` undoes it; in jq::

    jq 'reduce (._nonfinite // [])[] as [$p, $k] (.; setpath($p; $k)) | del(._nonfinite)'
"""

from __future__ import annotations

import json
import math
from typing import Any

NONFINITE = "_nonfinite"
_KINDS = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}


def dumps(document: Any, **options: Any) -> str:
    """``json.dumps`` of ``document`` (``options`` passed on), with non-finite floats as ``null`` and
    their kinds under ``"_nonfinite"``. Objects json cannot write become ``str``, as before."""
    try:  # the common case, in json's C encoder: nothing to replace
        return json.dumps(document, allow_nan=False, default=str, **options)
    except ValueError:
        pass
    found: list[list] = []
    clean = _replace(document, [], found)
    found = [[entry[:-1], entry[-1]] for entry in found]
    if found:
        if not isinstance(clean, dict):
            raise ValueError(f"document: non-finite numbers need a JSON object to record their kind in, "
                             f"got {type(document).__name__}")
        if NONFINITE in clean:
            raise ValueError(f"document: expected no field named {NONFINITE!r} (it records non-finite kinds)")
        clean[NONFINITE] = found
    return json.dumps(clean, allow_nan=False, default=str, **options)


def restore(document: Any) -> Any:
    """The document as it was logged: the values listed under ``"_nonfinite"`` put back as floats and
    that field removed (in place). Anything malformed in the list (a run folder from elsewhere) is
    ignored."""
    if not isinstance(document, dict) or not isinstance(document.get(NONFINITE), list):
        return document
    kinds = document.pop(NONFINITE)
    for entry in kinds:
        if not (isinstance(entry, list) and len(entry) == 2 and isinstance(entry[0], list) and entry[0]
                and entry[1] in _KINDS):
            continue
        *parents, last = entry[0]
        container: Any = document
        try:
            for part in parents:
                container = container[part]
            if container[last] is None:
                container[last] = _KINDS[entry[1]]
        except (KeyError, IndexError, TypeError):
            continue
    return document


def _replace(value: Any, path: list, found: list[list]) -> Any:
    """``value`` with non-finite floats as None; ``found`` gets ``[*path, kind]`` for each. ``path`` is
    one list pushed and popped on the way down: this runs over whole tables, so a finite value costs
    a type check and nothing is built for it."""
    if isinstance(value, float):  # what json writes as a number (numpy's float64 included)
        if math.isfinite(value):
            return value
        found.append([*path, "NaN" if math.isnan(value) else "Infinity" if value > 0 else "-Infinity"])
        return None
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            key = _json_key(key)  # as json would write it; a str also sorts beside "_nonfinite"
            if isinstance(item, _MAY_HOLD_NONFINITE):
                path.append(key)
                item = _replace(item, path, found)
                path.pop()
            out[key] = item
        return out
    if isinstance(value, (list, tuple)):
        items = list(value)
        for index, item in enumerate(items):
            if isinstance(item, _MAY_HOLD_NONFINITE):
                path.append(index)
                items[index] = _replace(item, path, found)
                path.pop()
        return items
    return value


_MAY_HOLD_NONFINITE = (float, dict, list, tuple)


def _json_key(key: Any) -> str:
    """The object key json writes for ``key`` (``3`` -> ``"3"``, ``True`` -> ``"true"``)."""
    if isinstance(key, str):
        return key
    return json.dumps(key) if key is None or isinstance(key, (bool, int, float)) else str(key)
