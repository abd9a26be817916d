"""The one piece of wandb's private API logbus uses (``logbus.plugins._wandb_private``): its
process-wide artifact cache. These tests fail, loudly, when wandb moves or changes it."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import wandb
from PIL import Image as PILImage
from wandb_reader import read_only_run

from logbus.plugins import _wandb_private
from logbus.plugins.wandb import WandBBackend
from logbus.records import Image, RunFinished, RunStarted, Table


def test_the_caches_are_where_wandb_registers_every_artifact_it_makes():
    by_client_id, by_id = _wandb_private.artifact_caches()
    artifact = wandb.Artifact("probe", type="probe")
    assert by_client_id[artifact._client_id] is artifact
    assert isinstance(by_id, dict)
    _wandb_private.forget([artifact])
    assert artifact._client_id not in by_client_id


def eval_table(folder, step, seed=0, rows=4):
    generator = np.random.default_rng(seed)
    cells = []
    for row in range(rows):
        path = folder / f"image-{seed}-{row}.png"
        PILImage.fromarray(generator.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(path)
        cells.append([row, Image(path=str(path)), step * 10 + row])
    return Table("samples/eval", ["id", "image", "prediction"], cells, step=step, join_key="id")


def cached_run_tables():
    by_client_id, by_id = _wandb_private.artifact_caches()
    return {id(artifact): artifact for store in (by_client_id, by_id) for artifact in store.values()
            if artifact.type == "run_table"}.values()


def test_a_reference_table_stays_findable_however_many_artifacts_come_after(wandb_offline, tmp_path):
    """wandb keeps the last 100 artifacts; a later eval's table refers to the reference table's by
    client id, so logbus keeps that one (and only that one: each eval's own table is dropped)."""
    backend = WandBBackend(project="private")
    backend.log(RunStarted("private"))
    backend.log(eval_table(tmp_path, 1))
    for number in range(150):  # checkpoints, user artifacts...: more than wandb keeps
        wandb.Artifact(f"other-{number}", type="other")
    backend.log(eval_table(tmp_path, 2))
    backend.log(eval_table(tmp_path, 3))
    kept = [artifact for artifact in cached_run_tables() if "samples/eval/reference.table.json" in artifact.manifest.entries]
    assert len(kept) == 1 and len(list(cached_run_tables())) == 1  # no eval's own table is kept
    backend.close(RunFinished())
    assert not list(cached_run_tables())

    tables = read_only_run(wandb_offline).tables("samples/eval")
    assert [(step, [row[2] for row in rows]) for step, _, rows in tables] == [
        (1, [10, 11, 12, 13]), (2, [20, 21, 22, 23]), (3, [30, 31, 32, 33])]


def test_a_moved_cache_is_warned_about_once_and_tables_are_logged_whole(wandb_offline, tmp_path, monkeypatch):
    from wandb.sdk.artifacts import artifact_instance_cache

    monkeypatch.delattr(artifact_instance_cache, "artifact_instance_cache_by_client_id")
    monkeypatch.setattr(_wandb_private, "_warned", False)
    with pytest.raises(AttributeError):
        _wandb_private.artifact_caches()
    backend = WandBBackend(project="private")
    backend.log(RunStarted("moved"))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        backend.log(eval_table(tmp_path, 1))
        backend.log(eval_table(tmp_path, 2))
    assert [str(w.message) for w in caught if "artifact cache" in str(w.message)] == [
        f"logbus: wandb's artifact cache ({_wandb_private._CACHE_MODULE}) moved "
        "(module 'wandb.sdk.artifacts.artifact_instance_cache' has no attribute "
        "'artifact_instance_cache_by_client_id'); sample tables are logged whole and their artifacts are not "
        "freed early"]
    backend.close(RunFinished())
    wandb_run = read_only_run(wandb_offline)
    assert [item.get("samples/eval._type") for item in wandb_run.history] == ["table-file", "table-file"]
    assert [[row[2] for row in rows] for _, _, rows in wandb_run.tables("samples/eval")] == [
        [10, 11, 12, 13], [20, 21, 22, 23]]
