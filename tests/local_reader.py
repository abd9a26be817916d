"""Reads a local run folder back (see ``plugins/local.py`` for the format), for the tests."""

from __future__ import annotations

import json
from pathlib import Path

import pytest


def read_lines(path: Path) -> list[dict]:
    """Every line of a JSON-lines file, parsed."""
    return [json.loads(line) for line in path.read_text().splitlines()]


def local_series(run_dir: Path, name: str) -> list[tuple[int, float]]:
    """``(step, value)`` of metric ``name`` in the run's metrics.jsonl, in logged order."""
    return [(line["step"], line[name]) for line in read_lines(run_dir / "metrics.jsonl") if name in line]


def assert_same_series(got, expected):
    assert [step for step, _ in got] == [step for step, _ in expected]
    assert [value for _, value in got] == pytest.approx([value for _, value in expected], rel=1e-6)
