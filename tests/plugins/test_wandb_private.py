"""The pieces of wandb's private API logbus uses (``logbus.plugins._wandb_private``): its
process-wide artifact cache and a mask file's class labels. These tests fail, loudly, when wandb
moves or changes them."""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

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


def test_a_mask_from_a_file_gives_the_table_the_column_type_of_the_same_mask_from_an_array(tmp_path):
    """The table's column type holds each mask layer's class ids and names (the W&B UI's mask
    legend); a mask handed to wandb as a file must bring them as one handed over as an array."""
    from logbus.files import encode_mask

    mask = np.random.default_rng(0).integers(0, 3, (6, 5), dtype=np.uint8)
    labels = {0: "sky", 1: "tree", 2: "road"}
    image_path, mask_path = tmp_path / "image.png", tmp_path / "truth.mask.png"
    PILImage.fromarray(np.zeros((6, 5, 3), dtype=np.uint8)).save(image_path)
    mask_path.write_bytes(encode_mask(mask))
    classes = [{"id": k, "name": v} for k, v in labels.items()]

    def column_types(masks):
        table = wandb.Table(columns=["image"], data=[[wandb.Image(str(image_path), masks=masks, classes=classes)]])
        entry = wandb.Artifact("probe", type="probe").add(table, "table")
        return json.loads(Path(entry.local_path).read_text())["column_types"]

    from_array = column_types({"truth": {"mask_data": mask, "class_labels": labels}})
    from_file = column_types({"truth": _wandb_private.mask_from_file(str(mask_path), "truth", labels)})
    assert from_file == from_array
    assert "tree" in json.dumps(from_array["params"]["type_map"]["image"])  # the labels are in it


def test_a_table_typed_from_one_row_per_signature_is_the_table_wandb_builds_from_every_row(tmp_path):
    """``table_of_rows`` lets wandb infer the column types from one row per signature: the stored
    table (column types, rows, image files) must be the one ``wandb.Table`` builds from every row,
    with rows of several types in one column (numbers and None, images with and without masks)."""
    from logbus.plugins.wandb import _to_wandb, _type_signature
    from logbus.records import Mask

    generator = np.random.default_rng(1)
    cells = []
    for row in range(6):
        path = tmp_path / f"image-{row}.png"
        PILImage.fromarray(generator.integers(0, 256, (4, 4, 3), dtype=np.uint8)).save(path)
        masks = {"truth": Mask(generator.integers(0, 2 + row % 2, (4, 4)), {0: "a", 1: "b", 2: "c"} if row < 4 else None)}
        cells.append([row, Image(path=str(path), masks=masks if row % 3 else {}), None if row == 4 else row / 2,
                      row % 2 == 0])
    columns = ["id", "image", "score", "even"]
    rows = [[_to_wandb(cell) for cell in row] for row in cells]

    def stored(table):
        entry = wandb.Artifact("probe", type="probe").add(table, "table")
        return json.loads(Path(entry.local_path).read_text())

    ours = stored(_wandb_private.table_of_rows(columns, rows, [tuple(map(_type_signature, row)) for row in cells]))
    theirs = stored(wandb.Table(columns=columns, data=rows))
    assert ours == theirs
    assert len({tuple(map(_type_signature, row)) for row in cells}) < len(cells)  # some rows were not type-checked


def test_the_staging_folder_is_where_wandb_stages_a_tables_files(wandb_offline):
    """``_wandb_run_file.keep_staged_files`` removes the files it took from this folder."""
    assert _wandb_private.staging_dir() == str(wandb_offline / ".data" / "artifacts" / "staging")
    run = wandb.init(project="logbus-tests", reinit="create_new")
    try:
        artifact = wandb.Artifact("staged", type="dataset")
        table = wandb.Table(columns=["x"], data=[[1]])
        artifact.add(table, "table")
        local_paths = [entry.local_path for entry in artifact.manifest.entries.values()]
        assert local_paths and all(os.path.dirname(path) == _wandb_private.staging_dir() for path in local_paths)
    finally:
        run.finish()
