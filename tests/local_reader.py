"""Reads a local run folder back (see ``plugins/local/_backend.py`` for the format), for the tests."""

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
    ``[path, kind]`` pairs (README, "Local run format"); every listed value must be a null."""
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
