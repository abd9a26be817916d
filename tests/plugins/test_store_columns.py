"""Rows held as columns (``records.ColumnRows``, what the sample pipeline's worker process makes where no
image becomes a file) are stored exactly as the same rows given cell by cell: the same Parquet schema and
metadata, the same cells read back, the same packs. Real store writers, read back with pyarrow and
``logbus.read_table``."""

from __future__ import annotations

import json
import math
import os

import numpy as np
import pyarrow.parquet as pq
import pytest

import logbus
from logbus.files import content_hashes
from logbus.plugins._host_parts import ClassificationHostPart, SegmentationHostPart
from logbus.plugins.local._store_format import FORMAT_VERSION
from logbus.plugins.local._store_writer import StoreWriter
from logbus.records import ColumnRows, ImageColumn, MaskColumn
from logbus.samples._encoder_pool import EncoderPool

ROWS = 37  # not a multiple of anything the writer groups by


def classification_fields(rng: np.random.Generator, channels: int = 3, top_k: int = 1) -> dict[str, np.ndarray]:
    shape = (ROWS, 8, 8, channels) if channels > 1 else (ROWS, 8, 8)
    fields = {"sample_id": np.arange(100, 100 + ROWS, dtype=np.int64),
              "image": rng.integers(0, 256, shape, dtype=np.uint8),
              "truth": rng.integers(0, 4, ROWS), "prediction": rng.integers(0, 4, ROWS),
              "confidence": rng.random(ROWS).astype(np.float32), "loss": rng.random(ROWS).astype(np.float32),
              "finite": rng.random(ROWS) > 0.2}
    fields["confidence"][3] = np.nan  # a non-finite row: no confidence, no loss
    fields["loss"][3] = np.nan
    fields["image"][5] = fields["image"][0]  # the same image twice in one table: one pack entry
    if top_k > 1:
        fields["topk_indices"] = rng.integers(-1, 4, (ROWS, top_k))
        fields["topk_probs"] = rng.random((ROWS, top_k)).astype(np.float32)
    return fields


def segmentation_fields(rng: np.random.Generator) -> dict[str, np.ndarray]:
    truth = rng.integers(0, 5, (ROWS, 8, 8))
    truth[1, 0, 0] = 70_000  # ids above 65,535 stay whole
    return {"sample_id": np.arange(ROWS, dtype=np.int64), "image": rng.integers(0, 256, (ROWS, 8, 8, 3), dtype=np.uint8),
            "truth": truth, "prediction": rng.integers(0, 5, (ROWS, 8, 8)).astype(np.int32),
            "pixel_accuracy": rng.random(ROWS), "loss": rng.random(ROWS), "confidence": rng.random(ROWS),
            "finite": rng.random(ROWS) > 0.1}


def as_rows(stage, fields: dict[str, np.ndarray]) -> list[list]:
    """The host stage's own rows (cell by cell), with images as pixels and hashes, as the pipeline resolves them."""
    pool = EncoderPool(workers=1, image_files=False)
    try:
        rows = stage.host_stage(fields, pool.encode)
        pool.flush()
        return [[cell.resolve() if isinstance(cell, logbus.samples.PendingImage) else cell for cell in row] for row in rows]
    finally:
        pool.close()


def as_columns(stage, fields: dict[str, np.ndarray]) -> ColumnRows:
    """The host stage's rows as columns, filled from the fields as the training process does."""
    columns = stage.host_columns(fields)
    assert columns is not None
    return columns.fill(fields)


STAGES = [
    pytest.param(lambda: ClassificationHostPart(None, 1), classification_fields, id="classification"),
    pytest.param(lambda: ClassificationHostPart({0: "cat", 1: "dog", 2: "emu", 3: "gnu"}, 3),
                 lambda rng: classification_fields(rng, top_k=3), id="classification-names-top-k"),
    pytest.param(lambda: ClassificationHostPart(None, 1), lambda rng: classification_fields(rng, channels=1),
                 id="classification-one-channel"),
    pytest.param(lambda: SegmentationHostPart({0: "sky", 1: "road"}), segmentation_fields, id="segmentation"),
]


@pytest.mark.parametrize(("make_stage", "make_fields"), STAGES)
def test_column_rows_are_the_host_parts_own_rows(make_stage, make_fields):
    stage, fields = make_stage(), make_fields(np.random.default_rng(0))
    expected, columns = as_rows(stage, fields), as_columns(stage, fields)
    assert len(columns) == len(expected) == ROWS
    for got_row, want_row in zip(columns, expected):
        assert len(got_row) == len(want_row)
        for got, want in zip(got_row, want_row):
            if isinstance(want, logbus.records.Image):
                assert got.digest == want.digest
                np.testing.assert_array_equal(got.pixels, want.pixels)
                assert got.masks.keys() == want.masks.keys()
                for name in want.masks:
                    np.testing.assert_array_equal(got.masks[name].data, want.masks[name].data)
                    assert got.masks[name].class_labels == want.masks[name].class_labels
            elif isinstance(want, float) and math.isnan(want):
                assert isinstance(got, float) and math.isnan(got)
            else:
                assert got == want and type(got) is type(want), (got, want)


@pytest.mark.parametrize("image_format", ["raw", "png"])
@pytest.mark.parametrize(("make_stage", "make_fields"), STAGES)
def test_rows_as_columns_are_stored_as_the_same_rows_given_cell_by_cell(tmp_path, make_stage, make_fields, image_format):
    stage, fields = make_stage(), make_fields(np.random.default_rng(1))
    written = {}
    column_rows = as_columns(stage, fields)
    for how, rows in (("cells", as_rows(stage, fields)), ("columns", column_rows)):
        run = tmp_path / how
        store = StoreWriter(str(run), rank=0, image_format=image_format)
        (run / "run.json").write_text(json.dumps({"format_version": FORMAT_VERSION}))  # as the local backend writes it
        columns = column_rows.columns
        written[how] = (run, store.write_table("samples/eval", columns, rows, step=7))
        store.write_table("samples/eval", columns, rows, step=8)  # the second eval refers to the first's packs
    (cells_run, cells_file), (columns_run, columns_file) = written["cells"], written["columns"]
    cells_table, columns_table = (pq.read_table(run / file) for run, file in ((cells_run, cells_file),
                                                                             (columns_run, columns_file)))
    assert columns_table.schema.equals(cells_table.schema, check_metadata=True)
    assert columns_table.drop_columns(["image"]).equals(cells_table.drop_columns(["image"]))
    # Pack ids are per store; hashes, captions, masks (but their pack) and boxes are the same.
    for cell, column in zip(cells_table.column("image").to_pylist(), columns_table.column("image").to_pylist()):
        assert {**cell, "pack": None, "masks": [{**m, "pack": None} for m in cell["masks"]]} == \
               {**column, "pack": None, "masks": [{**m, "pack": None} for m in column["masks"]]}
    assert [sorted(os.listdir(run / "packs")) for run in (cells_run, columns_run)] == [["r0-000000.parquet"]] * 2
    cells_pack, columns_pack = (pq.read_table(run / "packs" / "r0-000000.parquet") for run in (cells_run, columns_run))
    assert columns_pack.sort_by("hash").equals(cells_pack.sort_by("hash"))
    cells_frame, columns_frame = (logbus.read_table(str(run), "samples/eval") for run in (cells_run, columns_run))
    assert len(columns_frame) == 2 * ROWS
    assert columns_frame.drop(columns=["image"]).equals(cells_frame.drop(columns=["image"]))
    for got, want in zip(columns_frame.image, cells_frame.image):
        np.testing.assert_array_equal(got.to_numpy(), want.to_numpy())
        assert got.masks.keys() == want.masks.keys()
        for name in want.masks:
            np.testing.assert_array_equal(got.masks[name].to_numpy(), want.masks[name].to_numpy())


def test_column_rows_take_and_concat_keep_rows_and_their_images_together():
    rng = np.random.default_rng(2)
    pixels = rng.integers(0, 256, (6, 4, 4, 3), dtype=np.uint8)
    ids = rng.integers(0, 3, (6, 4, 4))
    images = ImageColumn(pixels, content_hashes(pixels), {"m": MaskColumn(ids, content_hashes(ids), None)})
    rows = ColumnRows(["id", "image", "score"], {"id": np.arange(6), "image": images, "score": np.linspace(0, 1, 6)}, 6)
    halves = ColumnRows.concat([rows.take(np.array([0, 1, 2])), rows.take(np.array([3, 4, 5]))])
    picked = halves.take(np.array([4, 1]))
    assert [row[0] for row in picked] == [4, 1]
    for row, index in zip(picked, (4, 1)):
        np.testing.assert_array_equal(row[1].pixels, pixels[index])
        np.testing.assert_array_equal(row[1].masks["m"].data, ids[index])
        assert row[1].digest == images.digests[index]
        assert row[2] == pytest.approx(index / 5)


def test_a_dataset_index_column_joins_the_image_hash_in_the_sample_key_given_as_columns_or_cells(tmp_path):
    rng = np.random.default_rng(3)
    pixels = rng.integers(0, 256, (4, 4, 4, 3), dtype=np.uint8)
    digests = content_hashes(pixels)
    indices = [7, 3, 11, 0]
    columns = ["image", "dataset_index"]
    given = {"columns": ColumnRows(columns, {"image": ImageColumn(pixels, digests),
                                             "dataset_index": np.array(indices)}, 4)}
    given["cells"] = given["columns"].rows()
    for how, rows in given.items():
        run = tmp_path / how
        StoreWriter(str(run), rank=0).write_table("t", columns, rows, step=1)
        (run / "run.json").write_text(json.dumps({"format_version": FORMAT_VERSION}))
        assert logbus.read_table(str(run), "t")._sample_key.tolist() == [f"{d}:{i}" for d, i in zip(digests, indices)]
