"""Files per image only for backends that read them (issue 17, ``BackendCapabilities.needs_image_files``):
a run whose backends take pixels (the local store) makes no scratch file per image, and its rows read back
with their exact pixels and the same sample keys as a run that made files; W&B, and a backend that does not
say, still get a file per image."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from local_reader import read_table
from PIL import Image as PILImage
from wandb_reader import read_only_run

import logbus
from logbus.files import content_hash
from logbus.kernels import images_to_uint8_reference
from logbus.records import ColumnRows, Image
from logbus.testing import RecordingBackend

CLASS_NAMES = {0: "background", 1: "ink", 2: "edge"}
SIDE = 8


def batches(seed: int, count: int = 3, size: int = 6, *, segmentation: bool = False):
    """Random 8x8 RGB batches, as the same images at every eval for one seed."""
    generator = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(count):
        images = torch.rand(size, 3, SIDE, SIDE, generator=generator)
        if segmentation:
            targets = torch.randint(0, len(CLASS_NAMES), (size, SIDE, SIDE), generator=generator)
            outputs = torch.randn(size, len(CLASS_NAMES), SIDE, SIDE, generator=generator)
        else:
            targets = torch.randint(0, 3, (size,), generator=generator)
            outputs = torch.randn(size, 3, generator=generator)
        out.append((images, targets, outputs))
    return out


def expected_pixels(offered) -> np.ndarray:
    return images_to_uint8_reference(torch.cat([images for images, _, _ in offered])).numpy()


def offer(run, stream, offered, *, label: str, steps: int, during=None) -> None:
    for step in range(steps):
        for images, targets, outputs in offered:
            stream.add(images, targets, outputs, label=label)
            if during is not None:
                during()
        stream.log(label, step=step)
        assert run.flush(60)
        if during is not None:
            during()


class PixelsOnly(RecordingBackend):
    """A recording backend that declares it reads no image files."""

    needs_image_files = False


@pytest.mark.parametrize("task", ["classification", "segmentation"])
def test_a_local_only_run_makes_no_file_per_image_and_reads_back_exact_pixels(logbus_dir, task):
    segmentation = task == "segmentation"
    offered = batches(1, segmentation=segmentation)
    options = {"class_names": CLASS_NAMES} if segmentation else {}
    run = logbus.start_run("pixels", backends=["local"])
    stream = run.samples(task, num_samples=None, **options)
    pipeline = stream.pipeline
    # Both routes: the worker process's and, while it starts, the training process's own threads.
    folder = pipeline.encoder.folder
    seen: list[str] = []

    def count_files() -> None:
        seen.extend(os.listdir(folder) if os.path.isdir(folder) else [])

    offer(run, stream, offered, label="before", steps=1, during=count_files)
    assert pipeline.worker_ready(120)
    offer(run, stream, offered, label="eval", steps=2, during=count_files)
    assert run.finish()
    assert seen == [], f"scratch files made for a local-only run: {seen[:5]}"
    assert pipeline.stats.encoded == 0

    expected = expected_pixels(offered)
    for label, steps in (("before", 1), ("eval", 2)):
        rows = read_table(logbus_dir / "pixels", f"samples/{label}")
        assert len(rows) == steps * len(expected)
        for step in range(steps):
            cells = rows.image[rows._step == step].tolist()
            for cell, pixels in zip(cells, expected):
                np.testing.assert_array_equal(cell.to_numpy(), pixels)
            # The stable key is the content hash of the pixels (the table has no dataset index).
            assert rows._sample_key[rows._step == step].tolist() == [content_hash(p) for p in expected]
        if segmentation:
            offered_truth = torch.cat([targets for _, targets, _ in offered]).numpy()
            for cell, truth in zip(rows.image.tolist(), np.concatenate([offered_truth] * steps)):
                np.testing.assert_array_equal(cell.masks["ground_truth"].to_numpy(), truth)


def test_a_run_with_wandb_beside_local_gets_image_files_and_the_same_sample_keys(wandb_offline, logbus_dir):
    offered = batches(2)
    keys = {}
    for name, backends in (("local-only", ["local"]), ("with-wandb", ["local", ("wandb", {"project": "logbus-tests"})])):
        run = logbus.start_run(name, backends=backends)
        stream = run.samples(num_samples=None)
        assert stream.pipeline.worker_ready(120)
        offer(run, stream, offered, label="eval", steps=1)
        made = stream.pipeline.stats
        assert run.finish()
        assert (made.encoded > 0) == (name == "with-wandb"), made
        rows = read_table(logbus_dir / name, "samples/eval")
        for cell, pixels in zip(rows.image.tolist(), expected_pixels(offered)):
            np.testing.assert_array_equal(cell.to_numpy(), pixels)
        keys[name] = rows._sample_key.tolist()
    assert keys["local-only"] == keys["with-wandb"]  # a sample's key does not depend on the other backends
    # W&B got a PNG file per image, with the offered pixels.
    (_, columns, wandb_rows), = read_only_run(wandb_offline).tables("samples/eval")
    image = columns.index("image")
    for row, pixels in zip(wandb_rows, expected_pixels(offered)):
        with PILImage.open(row[image]["file"]) as opened:
            np.testing.assert_array_equal(np.asarray(opened), pixels)


def test_a_backend_that_does_not_say_gets_files_and_one_that_needs_none_gets_pixels(logbus_dir):
    offered = batches(3)
    expected = expected_pixels(offered)
    for backend in (RecordingBackend(), PixelsOnly()):
        run = logbus.start_run("third-party", backends=["local", backend])
        stream = run.samples(num_samples=None)
        offer(run, stream, offered, label="eval", steps=1)
        assert run.finish()
        cells = [row["image"] for row in backend.rows("samples/eval")]
        assert len(cells) == len(expected)
        for cell, pixels in zip(cells, expected):
            assert isinstance(cell, Image)
            if isinstance(backend, PixelsOnly):
                assert cell.path is None
                np.testing.assert_array_equal(cell.pixels, pixels)
                assert cell.digest == content_hash(pixels)
            else:
                assert cell.pixels is None and cell.path is not None
                with PILImage.open(__import__("io").BytesIO(backend.file_bytes(cell))) as opened:
                    np.testing.assert_array_equal(np.asarray(opened), pixels)
                assert cell.digest == content_hash(pixels)


def test_images_made_without_checks_are_what_the_checked_constructor_makes():
    """``Image.unchecked`` (the pipeline's rows) holds the same fields as ``Image(...)`` of the same
    arguments, and a pipeline row whose pixels the fast checks do not vouch for goes through the checks."""
    from logbus.records import Mask
    from logbus.samples import PendingImage
    from logbus.samples._encoder_pool import EncoderPool

    pool = EncoderPool(workers=1, image_files=False)
    try:
        pixels = np.arange(2 * 4 * 4 * 3, dtype=np.uint8).reshape(2, 4, 4, 3)
        ids = np.ones((4, 4), np.int64)
        cells = [PendingImage(pool.encode(pixels[i]), masks={"truth": (ids, {1: "one"})}) for i in range(2)]
        pool.flush()
        pixels[:] = 0  # the buffer is reused once the host stage returns: the cells hold a copy
        resolved = [cell.resolve() for cell in cells]
        for i, image in enumerate(resolved):
            checked = Image(pixels=np.arange(2 * 4 * 4 * 3, dtype=np.uint8).reshape(2, 4, 4, 3)[i],
                            digest=image.digest, masks={"truth": Mask(ids, {1: "one"})})
            for name in ("path", "caption", "boxes", "box_class_labels", "digest"):
                assert getattr(image, name) == getattr(checked, name), name
            np.testing.assert_array_equal(image.pixels, checked.pixels)
            np.testing.assert_array_equal(image.masks["truth"].data, ids)
            assert image.digest == content_hash(checked.pixels)
        assert pool.encoded == 0 and os.listdir(pool.folder) == []
        bad = PendingImage(pool.encode(pixels[0]), masks={"truth": (-ids, None)})
        pool.flush()
        with pytest.raises(ValueError, match="mask: class ids must be >= 0"):
            bad.resolve()
        plain = PendingImage(pool.encode(pixels[0]))
        not_text = PendingImage(pool.encode(pixels[1]), caption=5)  # type: ignore[arg-type]
        pool.flush()
        assert plain.resolve().caption is None and plain.resolve().masks == {}
        with pytest.raises(TypeError, match="image.caption: expected str or None"):
            not_text.resolve()
    finally:
        pool.close()


def test_rows_a_policy_leaves_out_are_released_without_files(logbus_dir):
    """``hardest`` keeps the top rows of the pass and releases the others as later batches beat them:
    with no file behind their image cells there is nothing to give back, and nothing fails."""
    offered = batches(4, count=4)
    run = logbus.start_run("hardest", backends=["local"])
    stream = run.samples(num_samples=5, policy="hardest")
    offer(run, stream, offered, label="eval", steps=2)
    stats = stream.pipeline.stats
    assert run.finish()
    assert stats.errors == 0 and stats.tables_logged == 2 and stats.encoded == 0, stats
    rows = read_table(logbus_dir / "hardest", "samples/eval")
    assert len(rows) == 10
    expected = {content_hash(p): p for p in expected_pixels(offered)}
    for cell, key in zip(rows.image.tolist(), rows._sample_key.tolist()):
        np.testing.assert_array_equal(cell.to_numpy(), expected[key])


@pytest.mark.parametrize("policy", ["first", "reservoir", "per_class", "hardest"])
def test_rows_the_worker_process_makes_as_columns_reach_backends_as_the_policys_rows(logbus_dir, policy):
    """Where no image becomes a file, the worker process sends a batch's rows back as columns (hashes and
    scalars; the pixels stay in the training process) and the table reaches backends as one
    ``ColumnRows``: the policy's rows in its order, each row what the local store reads back."""
    offered = batches(6, count=4, size=8)
    backend = PixelsOnly()
    run = logbus.start_run("columns", backends=["local", backend])
    options = {"class_names": {0: "a", 1: "b", 2: "c"}} if policy == "per_class" else {}  # 4 a class
    stream = run.samples(num_samples=12, policy=policy, **options)
    assert stream.pipeline.worker_ready(120)  # every batch goes to the worker process
    offer(run, stream, offered, label="eval", steps=2)
    assert run.finish()
    tables = backend.of_type("Table")
    assert len(tables) == 2 and all(type(table.rows) is ColumnRows for table in tables)
    stored = read_table(logbus_dir / "columns", "samples/eval")
    pixels = {content_hash(p): p for p in expected_pixels(offered)}
    for step, table in enumerate(tables):
        ids = [row[0] for row in table.rows]
        assert len(set(ids)) == len(ids) and (len(ids) == 12 or policy == "per_class" and 3 <= len(ids) <= 12)
        if policy != "hardest":  # pass order; hardest keeps its own (hardest first)
            assert ids == sorted(ids)
        if policy == "first":
            assert ids == list(range(12))
        rows = stored[stored._step == step]
        assert rows.id.tolist() == ids
        for row, cell, key in zip(table.rows, rows.image.tolist(), rows._sample_key.tolist()):
            assert row[1].digest == key == cell.hash
            np.testing.assert_array_equal(row[1].pixels, pixels[key])
            np.testing.assert_array_equal(cell.to_numpy(), pixels[key])
