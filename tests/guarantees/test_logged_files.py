"""An ``Image(path=...)`` is logged as the file was during the call, in every backend.

Every built-in backend reads image files on its writer thread, after the call has returned. Before the
bus read them at the call, a file rewritten in place (``PIL.Image.save`` to the same name), replaced (a new
file renamed onto it) or logged again with new contents right after the call was stored with its new
picture under the old step, by the local store, W&B and TensorBoard alike. Real backends, read back as a
user would: ``logbus.read_table``, the offline W&B run (``wandb leet inspect``), TensorBoard's event files.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import numpy as np
import pytest
from PIL import Image as PILImage
from tensorboard.backend.event_processing import event_accumulator
from wandb_reader import read_only_run

import logbus
from logbus.files import content_hash
from logbus.records import Image, Images
from logbus.testing import RecordingBackend

COLORS = {"red": (255, 0, 0), "blue": (0, 0, 255), "green": (0, 255, 0)}


def png(color: str) -> bytes:
    encoded = io.BytesIO()
    PILImage.new("RGB", (6, 4), COLORS[color]).save(encoded, format="PNG")
    return encoded.getvalue()


def color_of(image: PILImage.Image | np.ndarray) -> str:
    """The name of the colour an image is filled with (its first pixel), or the pixel itself."""
    pixel = tuple(int(v) for v in np.asarray(image).reshape(-1, np.asarray(image).shape[-1])[0][:3])
    return next((name for name, rgb in COLORS.items() if rgb == pixel), str(pixel))


def rewrite_in_place(path: Path, color: str) -> None:
    with open(path, "r+b") as file:  # the same inode, truncated and written, as PIL's save does
        file.truncate(0)
        file.write(png(color))


def replace(path: Path, color: str) -> None:
    new = path.with_name(path.name + ".new")
    new.write_bytes(png(color))
    os.replace(new, path)


def tensorboard_images(folder: Path, tag: str) -> list[tuple[int, str]]:
    events = event_accumulator.EventAccumulator(str(folder), size_guidance={
        kind: 0 for kind in event_accumulator.DEFAULT_SIZE_GUIDANCE})
    events.Reload()
    return [(event.step, color_of(PILImage.open(io.BytesIO(event.encoded_image_string)).convert("RGB")))
            for event in events.Images(tag)]


def test_a_file_changed_right_after_the_call_is_stored_as_it_was_in_every_backend(wandb_offline, logbus_dir, tmp_path):
    rewritten, replaced, reused = (tmp_path / name for name in ("rewritten.png", "replaced.png", "reused.png"))
    for path in (rewritten, replaced, reused):
        path.write_bytes(png("red"))
    backends = ["local", ("wandb", {"project": "logbus-tests"}), ("tensorboard", {"log_dir": str(tmp_path / "tb")})]
    with logbus.start_run("files", backends=backends) as run:
        run.log_table("rewritten", ["image"], [[Image(path=str(rewritten))]], step=0)
        rewrite_in_place(rewritten, "blue")
        run.bus.emit(Images("replaced", [Image(path=str(replaced))], step=0))
        replace(replaced, "blue")
        # One name, logged at two steps with other contents (a loop that saves each picture to one file).
        run.log_table("reused", ["image"], [[Image(path=str(reused))]], step=1)
        rewrite_in_place(reused, "blue")
        run.log_table("reused", ["image"], [[Image(path=str(reused))]], step=2)
        replace(reused, "green")  # never logged

    expected = {"rewritten": [(0, "red")], "replaced": [(0, "red")], "reused": [(1, "red"), (2, "blue")]}
    run_dir = logbus_dir / "files"
    local = {key: [(int(step), color_of(cell.to_numpy())) for step, cell in zip(table["_step"], table["image"])]
             for key in expected for table in [logbus.read_table(run_dir, key)]}
    wandb_run = read_only_run(wandb_offline)
    wandb = {key: [(step, color_of(PILImage.open(rows[0][0]["file"]).convert("RGB")))
                   for step, _, rows in wandb_run.tables(key)] for key in ("rewritten", "reused")}
    wandb["replaced"] = [(step, color_of(PILImage.open(images[0]["file"]).convert("RGB")))
                         for step, images in wandb_run.images("replaced")]
    tensorboard = {key: tensorboard_images(tmp_path / "tb" / "files", tag)
                   for key, tag in (("rewritten", "rewritten/images"), ("replaced", "replaced"),
                                    ("reused", "reused/images"))}
    assert {"local": local, "wandb": wandb, "tensorboard": tensorboard} == {
        "local": expected, "wandb": expected, "tensorboard": expected}


def test_backends_get_a_content_named_copy_deleted_once_every_backend_took_it(logbus_dir, tmp_path):
    """What a backend receives: the cell's ``path`` is logbus's own file, named by the content hash of
    the bytes read at the call (``digest``), with the caller's extension; the same bytes under two names
    are one copy; it is gone once every backend is done with the record, and the folder at close."""
    first, second = tmp_path / "first.png", tmp_path / "second.PNG"
    first.write_bytes(png("red"))
    second.write_bytes(png("red"))
    recorder = RecordingBackend()
    with logbus.start_run("copies", backends=[recorder, "local"]) as run:
        run.log_table("two", ["a", "b"], [[Image(path=str(first)), Image(path=str(second), caption="same bytes")]],
                      step=0)
        first.write_bytes(png("blue"))
        assert run.flush()
        [table] = recorder.tables("two")
        cells = table.rows[0]
        folder = Path(cells[0].path).parent
        assert folder.name.startswith("logbus-files-") and folder.parent == Path(tempfile.gettempdir())
        digest = content_hash(png("red"))
        assert [(Path(cell.path).name, cell.digest) for cell in cells] == [(f"{digest}.png", digest)] * 2
        assert cells[1].caption == "same bytes"
        assert [recorder.file_bytes(cell) for cell in cells] == [png("red")] * 2
        assert list(folder.iterdir()) == []  # every backend took the record: its copies are deleted
    assert not folder.exists()
    assert [color_of(cell.to_numpy()) for cell in logbus.read_table(logbus_dir / "copies", "two").iloc[0][["a", "b"]]] \
        == ["red", "red"]


def test_composers_log_table_stores_the_file_as_it_was_at_the_call(logbus_dir, tmp_path):
    from logbus.composer import LogBusLogger

    source = tmp_path / "prediction.png"
    source.write_bytes(png("red"))
    logger = LogBusLogger(backends=["local"])
    logger.log_table(["image"], [[Image(path=str(source))]], name="predictions", step=3)
    rewrite_in_place(source, "blue")
    logger.post_close()
    [run_dir] = logbus_dir.iterdir()
    table = logbus.read_table(run_dir, "predictions")
    assert [(int(step), color_of(cell.to_numpy())) for step, cell in zip(table["_step"], table["image"])] == [(3, "red")]


def test_a_file_that_cannot_be_read_at_the_call_raises_naming_it_and_the_run_goes_on(logbus_dir, tmp_path):
    source = tmp_path / "gone.png"
    source.write_bytes(png("red"))
    image = Image(path=str(source))  # checked while the file is there
    source.unlink()
    with logbus.start_run("unreadable", backends=["local"]) as run:
        run.log_table("before", ["id"], [[1]], step=0)
        with pytest.raises(ValueError, match=r"image\.path: expected a readable encoded image file, got .*gone\.png"):
            run.log_table("lost", ["image"], [[image]], step=1)
        run.log({"loss": 0.5}, step=1)
        run.log_table("after", ["id"], [[2]], step=2)
    run_dir = logbus_dir / "unreadable"
    assert [logbus.read_table(run_dir, key).id.tolist() for key in ("before", "after")] == [[1], [2]]
    assert logbus.read_metrics(run_dir)["loss"].tolist() == [0.5]
    assert logbus.read_table(run_dir, "lost").empty


CAPPED_COPY = textwrap.dedent("""
    import json, os, resource, signal, sys, tempfile
    import logbus
    from logbus.records import Image

    source, limit = sys.argv[1], int(sys.argv[2])
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead
    run = logbus.start_run("capped", backends=["local"])
    run.log({"loss": 1.0}, step=0)
    assert run.flush()
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))  # from here on, as if the disk were full
    run.log_table("samples", ["image"], [[Image(path=source)]], step=0)
    run.log({"loss": 0.5}, step=1)
    run.finish()
    print(json.dumps(run.bus.stats()["backends"]["local"]))
    print(json.dumps(sorted(name for name in os.listdir(tempfile.gettempdir()) if name.startswith("logbus-files-"))))
""")


def test_a_copy_that_cannot_be_written_loses_its_table_counted_and_the_run_goes_on(logbus_dir, tmp_path):
    # A real write error from the kernel (EFBIG under a file-size limit, as a full disk gives ENOSPC) while
    # the first writer writes the copy: that table is counted lost with one warning per backend, the
    # metrics before and after it arrive, the backend stays on, and the copies' folder is gone at close.
    source = tmp_path / "noise.png"
    PILImage.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(source)
    limit = 4096
    assert source.stat().st_size > 2 * limit
    temp = tmp_path / "temp"
    temp.mkdir()
    result = subprocess.run([sys.executable, "-c", CAPPED_COPY, str(source), str(limit)], capture_output=True,
                            text=True, timeout=120, check=False,
                            env={**os.environ, "LOGBUS_DIR": str(logbus_dir), "TMPDIR": str(temp)})
    assert result.returncode == 0, result.stderr[-3000:]
    stats, folders = (json.loads(line) for line in result.stdout.strip().splitlines()[-2:])
    assert (stats["dropped"], stats["failures"], stats["enabled"]) == (1, 0, True)
    assert result.stderr.count("a deferred Table for backend 'local' was not delivered: OSError") == 1
    assert "File too large" in result.stderr
    assert folders == [] and list(temp.iterdir()) == []
    run_dir = logbus_dir / "capped"
    assert logbus.read_metrics(run_dir)["loss"].tolist() == [1.0, 0.5]
    assert logbus.read_table(run_dir, "samples").empty


def test_no_file_is_read_where_no_backend_takes_tables_or_images(tmp_path):
    from logbus.bus import Bus

    source = tmp_path / "gone.png"
    source.write_bytes(png("red"))
    image = Image(path=str(source))
    source.unlink()  # reading it would raise: nothing does
    class MetricsOnly(RecordingBackend):
        supports = frozenset()  # metrics and the run's boundaries only

    recorder = MetricsOnly()
    bus = Bus([recorder])
    bus.emit(Images("skipped", [image], step=0))
    assert bus.close() and recorder.types() == []
