"""Reads a local run folder back (the docs' "Local run format"; tables through ``logbus.read_table``), for the tests."""

from __future__ import annotations

import json
from pathlib import Path

import pytest


def strict_loads(text: str):
    """``json.loads`` as strict as ``JSON.parse`` and jq: the ``NaN``/``Infinity`` tokens Python's json
    accepts are an error here."""
    def refuse(token):
        raise ValueError(f"not JSON: {token}")

    return json.loads(text, parse_constant=refuse)


def restore_nonfinite(document: dict) -> dict:
    """Puts the NaN/infinities written as null back, from the document's ``"_nonfinite"`` list of
    ``[path, kind]`` pairs (docs, "Local run format"); every listed value must be a null."""
    for path, kind in document.pop("_nonfinite", []):
        *parents, last = path
        container = document
        for part in parents:
            container = container[part]
        assert container[last] is None and kind in ("NaN", "Infinity", "-Infinity"), (path, kind)
        container[last] = float(kind)
    return document


def read_lines(path: Path) -> list[dict]:
    """Every line of a JSON-lines file, parsed strictly, with its non-finite values put back."""
    return [restore_nonfinite(strict_loads(line)) for line in path.read_text().splitlines()]


def metric_field(name: str) -> str:
    """The field of a metrics line that holds metric ``name`` (``step`` is in ``metric/step``)."""
    return f"metric/{name}" if name in ("step", "time", "_nonfinite") or name.startswith("metric/") else name


def local_series(run_dir: Path, name: str) -> list[tuple[int, float]]:
    """``(step, value)`` of metric ``name`` in the run's metrics.jsonl, in logged order."""
    field = metric_field(name)
    return [(line["step"], line[field]) for line in read_lines(run_dir / "metrics.jsonl") if field in line]


def assert_same_series(got, expected):
    assert [step for step, _ in got] == [step for step, _ in expected]
    assert [value for _, value in got] == pytest.approx([value for _, value in expected], rel=1e-6)


def read_table(run_dir, key: str, step: int | None = None):
    """The rows of table ``key`` through ``logbus.read_table`` (the store's reader, docs, "Local run format")."""
    import logbus

    return logbus.read_table(run_dir, key, step=step)


def table_steps(run_dir, key: str) -> list:
    """The steps table ``key`` was logged at, in order (one entry per logged table)."""
    from logbus.plugins.local import list_tables

    tables = list_tables(run_dir)
    return tables[tables.key == key].step.tolist()


def pack_rows(run_dir: Path, kind: str | None = None) -> int:
    """How many distinct images/masks the run's packs hold (``kind`` "image" or "mask", or both)."""
    import pyarrow.parquet as pq

    kinds = [kind_ for path in sorted((Path(run_dir) / "packs").glob("*.parquet"))
             for kind_ in pq.read_table(path, columns=["kind"]).column("kind").to_pylist()]
    return len(kinds) if kind is None else kinds.count(kind)


def store_files(run_dir: Path) -> list[str]:
    """Every file of the run folder, relative to it, sorted."""
    return sorted(str(path.relative_to(run_dir)) for path in Path(run_dir).rglob("*") if path.is_file())


STORE_COLUMNS = ("_key", "_step", "_rank", "_row", "_sample_key")


def logged_tables(run_dir, key: str) -> list[dict]:
    """Table ``key`` of the run as it was logged, one dict per logged table in step order (read through
    ``logbus.read_table``): ``{"key", "step", "columns", "rows"}``, rows as lists of cells, nulls as None,
    an image cell as ``{"_type": "image", "file": <ImageCell>, "caption", "masks": {name: {"file":
    <MaskCell>, "class_labels": {"<id>": label}}}, "boxes"}`` (``decode`` reads a ``file``)."""
    import pandas as pd

    import logbus
    from logbus.plugins.local import ImageCell, list_tables

    tables = list_tables(run_dir)
    logged = []
    for step in tables[tables.key == key].step.tolist():
        frame = logbus.read_table(run_dir, key, step=step)
        columns = [name for name in frame.columns if name not in STORE_COLUMNS]

        def cell_of(value):
            if isinstance(value, ImageCell):
                return {"_type": "image", "file": value, "caption": value.caption, "boxes": value.boxes,
                        "masks": {name: {"file": mask, "class_labels": {str(k): v for k, v in
                                                                         (mask.class_labels or {}).items()}}
                                  for name, mask in value.masks.items()}}
            if value is None or value is pd.NA:
                return None
            return value.item() if hasattr(value, "item") else value

        rows = [[cell_of(value) for value in row] for row in frame[columns].astype(object).itertuples(index=False)]
        logged.append({"key": key, "step": step, "columns": columns, "rows": rows})
    return logged


def decode(source):
    """Pixels of an image or mask: a file (Pillow) or a cell of the local store (``to_numpy``); a
    one-channel image as ``[H, W]``, as Pillow gives a grey PNG."""
    if hasattr(source, "to_numpy"):
        array = source.to_numpy()
        return array[:, :, 0] if array.ndim == 3 and array.shape[2] == 1 else array
    import numpy as np
    from PIL import Image as PILImage

    with PILImage.open(source) as image:
        return np.asarray(image)
