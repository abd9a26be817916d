"""Fixtures of the benchmark suites (imported into each suite module, so ``--pyargs`` runs find them)."""

from __future__ import annotations

import os
import shutil
import tempfile

import pytest


@pytest.fixture
def wandb_offline(monkeypatch):
    """W&B in offline mode with every folder it writes in a scratch folder on the project's disk.

    Not pytest's ``tmp_path``: on the machines these figures come from, ``/tmp`` creates small files
    about 40x slower than the project disk, and every variant here writes thousands of them. Under
    ``logbus_runs/`` (documented and ignored), never loose in the current directory: wandb's service
    may still write a file into the folder after it was removed."""
    parent = os.environ.get("LOGBUS_BENCH_DIR") or "logbus_runs"
    os.makedirs(parent, exist_ok=True)
    folder = tempfile.mkdtemp(prefix="bench-", dir=parent)
    for name in ("WANDB_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_DATA_DIR", "WANDB_ARTIFACT_DIR"):
        monkeypatch.setenv(name, folder)
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("LOGBUS_DIR", os.path.join(folder, "runs"))
    yield folder
    shutil.rmtree(folder, ignore_errors=True)
