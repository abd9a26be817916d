"""Benchmark results as data: what a benchmark run measured, written as one JSON file per suite and
machine kind (``benchmarks/results/<suite>-<machine kind>.json``), from which the docs' benchmark
tables are rendered (``logbus.bench.tables``), never typed by hand.

A run of ``benchmarks/`` registers :class:`ResultsCollector` (``benchmarks/conftest.py``); ``logbus
bench`` uses the same collector in memory. The collector reads each test's ``benchmark`` fixture
after the test (its ``stats`` and ``extra_info``, the fixture's public attributes the suites use
too), so nothing depends on pytest-benchmark writing a report file. A test that failed (its checks
after the timed part, say) leaves its figures out. Under ``--benchmark-disable`` no fixture has
figures, and nothing is written.

A file holds one run of its suite on one machine: a later run of the suite on the same kind of
machine replaces it whole, so every ratio in it compares figures measured in the same run.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import re
import subprocess
from pathlib import Path
from typing import Any

__all__ = ["RESULTS_ENV", "ResultsCollector", "checkout_commit", "machine_info", "machine_kind", "results_document",
           "suite_name", "write_results"]

# Where a benchmark run writes its results instead of benchmarks/results/ (tests point it at a scratch folder).
RESULTS_ENV = "LOGBUS_BENCH_RESULTS"
SCHEMA_VERSION = 1
_STATS = ("median", "min", "max", "mean", "stddev", "rounds")


def suite_name(module: str) -> str:
    """``bench_eval`` (``benchmarks/bench_eval.py``) or ``logbus.bench.suite_eval`` -> ``eval``: one name
    per suite, whether it ran from ``benchmarks/`` or from the package.

    :param module: the collected test module's ``__name__``.
    """
    return re.sub(r"^(bench|suite)_", "", module.rsplit(".", 1)[-1])


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as file:
            for line in file:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _memory_bytes() -> int | None:
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):  # not every platform names these
        return None


def machine_info() -> dict[str, Any]:
    """The machine the figures come from: CPU model, cores, memory, the card if any, and the versions
    that move the figures (Python, torch, wandb, pytest-benchmark's own is not one of them)."""
    info: dict[str, Any] = {"cpu": _cpu_model(), "cores": os.cpu_count(), "memory_bytes": _memory_bytes(),
                            "gpu": None, "system": platform.platform(), "python": platform.python_version()}
    try:
        import torch

        info["torch"] = torch.__version__
        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name()
    except ImportError:
        info["torch"] = None
    try:
        import wandb

        info["wandb"] = wandb.__version__
    except ImportError:
        info["wandb"] = None
    return info


def machine_kind(machine: dict[str, Any]) -> str:
    """The file-name part that says which kind of machine: the card if there is one
    (``nvidia-h200``), else the core count (``cpu-2cores``)."""
    if machine.get("gpu"):
        return re.sub(r"[^a-z0-9]+", "-", str(machine["gpu"]).lower()).strip("-")
    return f"cpu-{machine.get('cores')}cores"


def checkout_commit(folder: Path) -> str | None:
    """The checkout's commit, with ``-dirty`` when tracked files differ from it; None outside git."""
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=folder, capture_output=True, text=True, timeout=30)
        if head.returncode != 0:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=folder,
                               capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    return head.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


def results_document(suite: str, benchmarks: list[dict[str, Any]], *, machine: dict[str, Any],
                     commit: str | None, date: str | None = None) -> dict[str, Any]:
    """One suite's results file.

    :param suite: the suite's name (:func:`suite_name`).
    :param benchmarks: one entry per measured benchmark, as :class:`ResultsCollector` records them.
    :param machine: :func:`machine_info`.
    :param commit: the code's commit (None where unknown).
    :param date: ISO 8601 UTC time of the run (now if not given).
    """
    return {"schema": SCHEMA_VERSION, "suite": suite, "machine_kind": machine_kind(machine),
            "date": date or datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "commit": commit, "machine": machine, "benchmarks": benchmarks}


def write_results(folder: str | os.PathLike[str], document: dict[str, Any]) -> Path:
    """Writes ``document`` to ``<folder>/<suite>-<machine kind>.json`` whole: a temporary name, then a
    rename, so a reader never sees half a file.

    :param folder: the results folder (created if missing).
    :param document: :func:`results_document`.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{document['suite']}-{document['machine_kind']}.json"
    partial = path.with_name(f".{path.name}.partial")
    partial.write_text(json.dumps(document, indent=1, sort_keys=True, default=str) + "\n", encoding="utf-8")
    os.replace(partial, path)
    return path


class ResultsCollector:
    """A pytest plugin that keeps what each test's ``benchmark`` fixture measured, by suite.

    :param folder: where to write one results file per suite at the end of the session; None keeps
        them in memory only (``logbus bench``).
    :param root: the checkout whose commit the results name.
    """

    def __init__(self, folder: str | os.PathLike[str] | None, root: str | os.PathLike[str] | None = None):
        self.folder = folder
        self.root = Path(root) if root is not None else Path.cwd()
        self.by_suite: dict[str, list[dict[str, Any]]] = {}
        self.written: list[Path] = []
        self._failed: set[str] = set()

    def pytest_runtest_logreport(self, report: Any) -> None:
        if report.failed:  # figures of a run whose checks failed (rows lost, say) are not results
            self._failed.add(report.nodeid)

    def pytest_runtest_teardown(self, item: Any) -> None:
        fixture = getattr(item, "funcargs", {}).get("benchmark")
        stats = getattr(fixture, "stats", None)  # None when disabled or when the test did not measure
        if fixture is None or stats is None or item.nodeid in self._failed:
            return
        figures = stats.stats
        params = getattr(item, "callspec", None)
        self.by_suite.setdefault(suite_name(item.module.__name__), []).append({
            "name": item.name, "group": fixture.group, "params": dict(params.params) if params else {},
            "extra_info": dict(fixture.extra_info), "unit": "s",
            **{name: getattr(figures, name) for name in _STATS}})

    def pytest_sessionfinish(self, session: Any) -> None:
        if self.folder is None or not self.by_suite:
            return
        machine, commit = machine_info(), checkout_commit(self.root)
        for suite, benchmarks in self.by_suite.items():
            self.written.append(write_results(self.folder, results_document(suite, benchmarks, machine=machine,
                                                                             commit=commit)))
