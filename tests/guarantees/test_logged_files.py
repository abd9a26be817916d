"""An ``Image(path=...)`` is read once, off the training thread, and every backend stores those bytes.

Every built-in backend reads image files on its own writer thread, each when it gets to the record: on
main a file rewritten in place (``PIL.Image.save`` to the same name), replaced (a new file renamed onto
it) or logged again with new contents after a flush was stored with its new picture under the old step,
and two backends could store two different pictures. The bus now has the first backend writer that
reaches the record read each file once and hand every backend a copy of those bytes. Real backends,
read back as a user would: ``logbus.read_table``, the offline W&B run (``wandb leet inspect``),
TensorBoard's event files.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tempfile
import textwrap
import threading
from pathlib import Path

import numpy as np
import pytest
from gated_recorder import GatedRecorder
from PIL import Image as PILImage
from tensorboard.backend.event_processing import event_accumulator
from wandb_reader import read_only_run

import logbus
from logbus.files import content_hash
from logbus.records import Image, Images, Table
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


def test_a_file_changed_after_a_flush_is_stored_as_it_was_in_every_backend(wandb_offline, logbus_dir, tmp_path):
    rewritten, replaced, reused = (tmp_path / name for name in ("rewritten.png", "replaced.png", "reused.png"))
    for path in (rewritten, replaced, reused):
        path.write_bytes(png("red"))
    backends = ["local", ("wandb", {"project": "logbus-tests"}), ("tensorboard", {"log_dir": str(tmp_path / "tb")})]
    with logbus.start_run("files", backends=backends) as run:
        run.log_table("rewritten", ["image"], [[Image(path=str(rewritten))]], step=0)
        run.bus.emit(Images("replaced", [Image(path=str(replaced))], step=0))
        # One name, logged at two steps with other contents (a loop that saves each picture to one file).
        run.log_table("reused", ["image"], [[Image(path=str(reused))]], step=1)
        assert run.flush()  # every file has been read: what it holds from here on changes nothing logged
        rewrite_in_place(rewritten, "blue")
        replace(replaced, "blue")
        rewrite_in_place(reused, "blue")
        run.log_table("reused", ["image"], [[Image(path=str(reused))]], step=2)
        assert run.flush()
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


class ReadsAtOnce:
    """Reads each image file of a table as soon as its writer gets the record, then says so."""

    supports = frozenset({Table})

    def __init__(self):
        self.took = threading.Event()
        self.contents: list[bytes] = []

    def log(self, record):
        self.contents += [Path(cell.path).read_bytes() for row in record.rows for cell in row]
        self.took.set()

    def close(self, finish):
        pass


class ReadsWhenReleased(GatedRecorder):
    """Reads each image file of a table only once the test opens its gate."""

    def __init__(self):
        super().__init__()
        self.contents: list[bytes] = []

    def log(self, record):
        self.gate.wait(30)
        self.contents += [Path(cell.path).read_bytes() for row in record.rows for cell in row]


@pytest.mark.parametrize("change", [rewrite_in_place, replace])
def test_every_backend_stores_the_same_bytes_when_the_file_changes_between_their_writers(change, tmp_path):
    # One backend's writer takes the record and reads the image; the file changes; only then does the other
    # backend's writer get to it. On main each read the caller's file: the second stored the new picture.
    from logbus.bus import Bus

    source = tmp_path / "prediction.png"
    source.write_bytes(png("red"))
    early, late = ReadsAtOnce(), ReadsWhenReleased()
    bus = Bus([early, late])
    bus.emit(Table("predictions", ["image"], [[Image(path=str(source))]], step=0))
    assert early.took.wait(30)
    change(source, "blue")
    late.gate.set()
    assert bus.close()
    assert {"early": early.contents, "late": late.contents} == {"early": [png("red")], "late": [png("red")]}


def test_backends_get_a_content_named_copy_deleted_once_every_backend_took_it(logbus_dir, tmp_path):
    """What a backend receives: the cell's ``path`` is logbus's own file, named by the content hash of
    the bytes its first writer read (``digest``), with the caller's extension; the same bytes under two names
    are one copy; it is gone once every backend is done with the record, and the folder at close."""
    first, second = tmp_path / "first.png", tmp_path / "second.PNG"
    first.write_bytes(png("red"))
    second.write_bytes(png("red"))
    recorder = RecordingBackend()
    with logbus.start_run("copies", backends=[recorder, "local"]) as run:
        run.log_table("two", ["a", "b"], [[Image(path=str(first)), Image(path=str(second), caption="same bytes")]],
                      step=0)
        assert run.flush()
        first.write_bytes(png("blue"))
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


def test_composers_log_table_stores_the_file_as_it_was_when_flushed(logbus_dir, tmp_path):
    from logbus.composer import LogBusLogger

    source = tmp_path / "prediction.png"
    source.write_bytes(png("red"))
    logger = LogBusLogger(backends=["local"])
    logger.log_table(["image"], [[Image(path=str(source))]], name="predictions", step=3)
    assert logger.bus.flush()  # as Composer's fit_end does
    rewrite_in_place(source, "blue")
    logger.log_table(["image"], [[Image(path=str(source))]], name="predictions", step=4)
    assert logger.bus.flush()
    rewrite_in_place(source, "green")  # never logged
    logger.post_close()
    [run_dir] = logbus_dir.iterdir()
    table = logbus.read_table(run_dir, "predictions")
    assert [(int(step), color_of(cell.to_numpy())) for step, cell in zip(table["_step"], table["image"])] == [
        (3, "red"), (4, "blue")]


def test_a_file_deleted_before_it_is_read_loses_its_table_counted_with_one_warning(logbus_dir, tmp_path, caplog):
    # The read is a backend writer's: the call returns as usual, that table is counted dropped by every
    # backend with one warning naming the file, and what was logged before and after it arrives.
    source = tmp_path / "gone.png"
    source.write_bytes(png("red"))
    image = Image(path=str(source))  # checked while the file is there
    source.unlink()
    recorder = RecordingBackend()
    with logbus.start_run("unreadable", backends=["local", recorder]) as run:
        run.log_table("before", ["id"], [[1]], step=0)
        run.log_table("lost", ["image"], [[image]], step=1)
        run.log({"loss": 0.5}, step=1)
        run.log_table("after", ["id"], [[2]], step=2)
    warnings = [record.getMessage() for record in caplog.records if "is lost" in record.getMessage()]
    assert len(warnings) == 1 and "Table 'lost' at step 1" in warnings[0] and "gone.png" in warnings[0], warnings
    assert "FileNotFoundError" in warnings[0]
    stats = run.bus.stats()["backends"]
    assert [(stats[name]["dropped"], stats[name]["failures"]) for name in ("local", "recording")] == [(1, 0)] * 2
    run_dir = logbus_dir / "unreadable"
    assert [logbus.read_table(run_dir, key).id.tolist() for key in ("before", "after")] == [[1], [2]]
    assert logbus.read_metrics(run_dir)["loss"].tolist() == [0.5]
    assert logbus.read_table(run_dir, "lost").empty
    assert [table.key for table in recorder.of_type(Table)] == ["before", "after"]


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
    # the first writer writes the copy: that table is counted lost with one warning, the
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
    assert result.stderr.count("is lost in every backend") == 1
    assert "Table 'samples' at step 0 is lost in every backend (each counts it dropped): could not write the copy" \
        in result.stderr
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
