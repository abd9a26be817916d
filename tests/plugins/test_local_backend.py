"""The local backend's run folder, as the docs' "Local run format" documents it (format 2, the packed store),
read back with json, pandas/pyarrow and ``logbus.read_table``."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from local_reader import local_series, pack_rows, read_lines, read_table, store_files, strict_loads, table_steps
from PIL import Image as PILImage

import logbus
from logbus.demo import load_digits
from logbus.files import _strict_json as strict_json
from logbus.records import Box, Image, Mask
from logbus.testing import RecordingBackend


def decode(path) -> np.ndarray:
    with PILImage.open(path) as image:
        return np.asarray(image)


def read_json(path: Path):
    return json.loads(path.read_text())


def inside(path: Path, folder: Path) -> bool:
    return Path(os.path.realpath(path)).is_relative_to(os.path.realpath(folder))


def test_run_json_hparams_and_metrics_lines(logbus_dir):
    with logbus.start_run("format", backends=["local"], config={"lr": 0.1, "layers": [16, 32]}) as run:
        run.log({"loss": 1.5, "acc": torch.tensor(0.25)}, step=0)
        run.log({"loss": np.float64(0.5)}, step=2)
        run.log({"unstepped": 3})
        run.log_hyperparameters({"batch_size": 4, "lr": 0.2})
        assert run.flush()
        run_dir = logbus_dir / "format"
        assert read_json(run_dir / "run.json")["status"] == "running"  # visible while the run is live

    info = read_json(run_dir / "run.json")
    assert {key: info[key] for key in ("name", "folder", "rank", "world_size", "status", "exit_code", "reason")} == {
        "name": "format", "folder": "format", "rank": 0, "world_size": 1, "status": "finished", "exit_code": 0,
        "reason": None}
    assert info["started_at"] <= info["finished_at"] and info["logbus_version"] == logbus.__version__
    assert info["format_version"] == 2
    assert read_json(run_dir / "hparams.json") == {"lr": 0.2, "layers": [16, 32], "batch_size": 4}
    lines = read_lines(run_dir / "metrics.jsonl")
    assert all(isinstance(line.pop("time"), float) for line in lines)
    assert lines == [{"step": 0, "loss": 1.5, "acc": 0.25}, {"step": 2, "loss": 0.5}, {"step": None, "unstepped": 3.0}]


def test_a_run_that_raises_is_marked_failed(logbus_dir):
    with pytest.raises(KeyError):
        with logbus.start_run("broken", backends=["local"]) as run:
            run.log({"loss": 1.0}, step=0)
            raise KeyError("missing")
    info = read_json(logbus_dir / "broken" / "run.json")
    assert (info["status"], info["exit_code"]) == ("failed", 1)
    assert [line["loss"] for line in read_lines(logbus_dir / "broken" / "metrics.jsonl")] == [1.0]


def test_two_runs_with_one_name_get_two_folders(logbus_dir):
    for value in (1.0, 2.0):
        with logbus.start_run("same", backends=["local"]) as run:
            run.log({"x": value}, step=0)
    assert sorted(path.name for path in logbus_dir.iterdir()) == ["same", "same-2"]
    assert read_lines(logbus_dir / "same-2" / "metrics.jsonl")[0]["x"] == 2.0


def test_table_image_cells_decode_to_the_exact_pixels_and_masks(logbus_dir, tmp_path):
    rng = np.random.default_rng(1)
    rgb = rng.integers(0, 256, (7, 5, 3), dtype=np.uint8)
    rgba = rng.integers(0, 256, (4, 6, 4), dtype=np.uint8)
    grey = rng.integers(0, 256, (3, 3), dtype=np.uint8)
    classes = rng.integers(0, 4, (7, 5)).astype(np.int32)
    many_classes = rng.integers(0, 1000, (7, 5)).astype(np.int64)  # needs a 16-bit PNG
    encoded = tmp_path / "encoded.png"
    PILImage.fromarray(rgb).save(encoded, compress_level=9)
    box = Box(1, 1, 3, 4, class_id=2, caption="cat", score=0.75)
    with logbus.start_run("media", backends=["local"]) as run:
        run.log_table("eval/samples", ["id", "image", "ok"], [
            [0, Image(pixels=rgb, caption="rgb", boxes=[box], box_class_labels={2: "cat"},
                      masks={"pred": Mask(classes, {0: "bg", 3: "dog"}), "instances": Mask(many_classes)}), True],
            [1, Image(pixels=rgba), False],
            [2, Image(pixels=grey), None],
            [3, Image(path=str(encoded), caption="as is"), True],
        ], step=5)

    run_dir = logbus_dir / "media"
    rows = read_table(run_dir, "eval/samples")
    assert rows.columns.tolist() == ["_key", "_step", "_rank", "_row", "_sample_key", "id", "image", "ok"]
    assert rows._step.tolist() == [5] * 4 and rows._row.tolist() == [0, 1, 2, 3] and rows._key.tolist() == ["eval/samples"] * 4
    assert rows.id.tolist() == [0, 1, 2, 3] and rows.ok.tolist() == [True, False, None, True]
    cells = rows.image.tolist()
    assert rows._sample_key.tolist() == [cell.hash for cell in cells] and len(set(rows._sample_key)) == 4
    np.testing.assert_array_equal(cells[0].to_numpy(), rgb)
    np.testing.assert_array_equal(np.asarray(cells[0].to_pil()), rgb)
    np.testing.assert_array_equal(cells[1].to_numpy(), rgba)
    np.testing.assert_array_equal(cells[2].to_numpy(), grey[:, :, None])
    np.testing.assert_array_equal(np.asarray(cells[2].to_pil()), grey)
    assert cells[3].encoded() == (encoded.read_bytes(), "image/png")  # stored as it came, not re-encoded
    np.testing.assert_array_equal(cells[3].to_numpy(), rgb)
    assert [cell.caption for cell in cells] == ["rgb", None, None, "as is"]
    masks = cells[0].masks
    np.testing.assert_array_equal(masks["pred"].to_numpy(), classes)
    np.testing.assert_array_equal(masks["instances"].to_numpy(), many_classes)
    assert masks["pred"].to_numpy().dtype == np.int32 and masks["instances"].to_numpy().dtype == np.int64
    assert masks["pred"].class_labels == {0: "bg", 3: "dog"} and masks["instances"].class_labels is None
    assert cells[0].boxes == [{"min_x": 1, "min_y": 1, "max_x": 3, "max_y": 4, "class_id": 2, "caption": "cat",
                               "score": 0.75, "label": "cat"}]
    # Without logbus: pandas reads every row of the table's folder, image cells as their struct.
    plain = pd.read_parquet(run_dir / "rows" / "eval" / "samples")
    assert plain.id.tolist() == [0, 1, 2, 3] and plain.image[0]["hash"] == cells[0].hash
    assert plain.image[0]["pack"] and plain.image[0]["masks"][0]["name"] == "pred"


def test_class_ids_above_65535_and_every_integer_dtype_are_stored_losslessly(logbus_dir):
    ids = {dtype: np.arange(12, dtype=dtype).reshape(3, 4) for dtype in (np.uint8, np.int16, np.uint16, np.int32)}
    ids[np.int64] = np.array([[0, 65_535], [65_536, 70_000], [2**40, 5]], dtype=np.int64)  # 70,000 stays 70,000
    ids[np.uint32] = np.array([[4_000_000_000, 1]], dtype=np.uint32)
    with logbus.start_run("ids", backends=["local"]) as run:
        run.log_table("t", ["image"], [[Image(pixels=np.zeros((*mask.shape, 3), np.uint8), masks={"m": Mask(mask)})]
                                       for mask in ids.values()], step=0)
    for cell, mask in zip(read_table(logbus_dir / "ids", "t").image, ids.values()):
        got = cell.masks["m"].to_numpy()
        assert got.dtype == mask.dtype
        np.testing.assert_array_equal(got, mask)


def test_jpeg_image_format(logbus_dir):
    smooth = np.repeat(np.linspace(0, 255, 32, dtype=np.uint8)[None, :, None], 16, axis=0).repeat(3, axis=2)
    with logbus.start_run("jpeg", backends=[("local", {"image_format": "jpeg"})]) as run:
        run.log_table("pictures", ["image"], [[Image(pixels=smooth)]], step=0)
    [cell] = read_table(logbus_dir / "jpeg", "pictures").image
    data, mime = cell.encoded()
    assert mime == "image/jpeg" and data.startswith(b"\xff\xd8\xff")
    with cell.to_pil() as image:
        assert image.format == "JPEG"
    assert np.abs(cell.to_numpy().astype(int) - smooth).mean() < 4  # lossy, but the same picture


def test_png_image_format_stores_a_png_that_decodes_to_the_exact_pixels(logbus_dir):
    pixels = np.random.default_rng(2).integers(0, 256, (5, 6, 3), dtype=np.uint8)
    with logbus.start_run("png", backends=[("local", {"image_format": "png"})]) as run:
        run.log_table("pictures", ["image"], [[Image(pixels=pixels)]], step=0)
    [cell] = read_table(logbus_dir / "png", "pictures").image
    assert cell.encoded()[0].startswith(b"\x89PNG")
    np.testing.assert_array_equal(cell.to_numpy(), pixels)


def test_image_lists_are_one_column_tables(logbus_dir):
    floats = np.stack([np.zeros((3, 4, 4)), np.ones((3, 4, 4))]).astype(np.float32)
    with logbus.start_run("lists", backends=["local"]) as run:
        run.log_images("inputs", floats, step=7)
    rows = read_table(logbus_dir / "lists", "inputs")
    assert (rows._step.tolist(), rows.columns[5:].tolist(), len(rows)) == ([7, 7], ["image"], 2)
    for cell, value in zip(rows.image, (0, 255)):
        assert (cell.to_numpy() == value).all()


def test_log_images_called_every_step_is_batched_into_one_file(logbus_dir):
    """``log_images`` every step is buffered per key and written as one rows file (at close here), not a
    file per call; each row keeps its own step, and the same picture is stored once."""
    with logbus.start_run("batched", backends=["local"]) as run:
        for step in range(50):
            run.log_images("inputs", np.full((2, 3, 4, 4), step % 5, np.float32) / 4, step=step)
        run.log_images("other", np.zeros((1, 3, 4, 4), np.float32), step=0)
    run_dir = logbus_dir / "batched"
    assert [path for path in store_files(run_dir) if path.startswith("rows/")] == [
        "rows/inputs/0000000000-r0-0.parquet", "rows/other/0000000000-r0-0.parquet"]
    rows = read_table(run_dir, "inputs")
    assert rows._step.tolist() == [step for step in range(50) for _ in range(2)] and rows._row.tolist() == [0, 1] * 50
    hashes = [cell.hash for cell in rows.image[::2]]
    assert all(hashes[step] == hashes[step % 5] for step in range(50)) and len(set(hashes)) == 5
    assert [int(cell.to_numpy()[0, 0, 0]) for cell in rows.image[:10:2]] == sorted({int(c.to_numpy()[0, 0, 0])
                                                                                   for c in rows.image[:10:2]})
    assert pack_rows(run_dir) == 5  # five distinct pictures ("other" is the first of them again)
    assert table_steps(run_dir, "inputs") == list(range(50))


def test_artifacts_are_copied_and_listed(logbus_dir, tmp_path):
    source = tmp_path / "model.pt"
    source.write_bytes(os.urandom(4096))
    with logbus.start_run("artifacts", backends=["local"]) as run:
        run.log_artifact(str(source), "model.pt", type="model", aliases=["latest", "ep1-ba2"])
    content = source.read_bytes()
    source.unlink()  # the run keeps its own copy
    run_dir = logbus_dir / "artifacts"
    assert (run_dir / "artifacts" / "model.pt").read_bytes() == content
    assert read_lines(run_dir / "artifacts.jsonl") == [{"name": "model.pt", "path": "artifacts/model.pt", "type": "model",
                                                         "aliases": ["latest", "ep1-ba2"], "metadata": {}}]


# -- strict JSON, namespaced metrics, media written whole and once ---------------------------------
def viewer_data(run_dir: Path) -> dict:
    """The run as `logbus view` serves it (its JSON API): each metric's ``[[step, value], ...]`` and the
    hyperparameters."""
    from werkzeug.test import Client

    from logbus.plugins.local import ViewerApp

    client = Client(ViewerApp([str(run_dir)]))
    series = client.get("/api/metrics").get_json()["runs"][0]["series"]
    return {"metrics": {name: [list(point) for point in zip(steps, values)] for name, (steps, _, values) in series.items()},
            "hparams": client.get("/api/runs").get_json()["runs"][0]["hparams"]}


def raw_lines(path: Path) -> list[dict]:
    return [strict_loads(line) for line in path.read_text().splitlines()]


def test_nan_and_infinities_are_null_with_their_kind_kept(logbus_dir):
    inf, nan = math.inf, math.nan
    config = {"clip": inf, "schedule": {"floor": -inf, "warmup": [0.5, nan]}, "lr": 0.1}
    with logbus.start_run("nonfinite", backends=["local"], config=config) as run:
        run.log({"loss": nan, "up": inf, "down": -inf, "ok": 0.5}, step=0)
        run.log({"loss": 1.0}, step=1)
        run.log_table("t", ["id", "score", "note"], [[0, nan, "a"], [1, inf, None], [2, -inf, "c"]], step=0)
    run_dir = logbus_dir / "nonfinite"

    # Every file parses as strict JSON: Python's strict mode, jq and JavaScript's JSON.parse.
    documents = [run_dir / name for name in ("run.json", "hparams.json", "metrics.jsonl")]
    node_parse = ("const [path] = process.argv.slice(1); const text = require('fs').readFileSync(path, 'utf8');"
                  "for (const doc of path.endsWith('.jsonl') ? text.split('\\n').filter(Boolean) : [text]) JSON.parse(doc)")
    for path in documents:
        for text in [path.read_text()] if path.suffix == ".json" else path.read_text().splitlines():
            strict_loads(text)
        for tool in (["jq", "-e", ".", str(path)], ["node", "-e", node_parse, str(path)]):
            if shutil.which(tool[0]) is not None:  # where missing, the strict parse above still ran
                result = subprocess.run(tool, capture_output=True, text=True, timeout=60, check=False)
                assert result.returncode == 0, (tool[0], path.name, result.stderr[-500:])

    # null in place, the kind listed under "_nonfinite" by its path; a line without one has no list.
    first, second = raw_lines(run_dir / "metrics.jsonl")
    assert {k: first[k] for k in ("loss", "up", "down", "ok")} == {"loss": None, "up": None, "down": None, "ok": 0.5}
    assert first["_nonfinite"] == [[["loss"], "NaN"], [["up"], "Infinity"], [["down"], "-Infinity"]]
    assert "_nonfinite" not in second and second["loss"] == 1.0
    # A table's numbers are Parquet doubles: NaN and infinities as they are.
    table = pd.read_parquet(run_dir / "rows" / "t")
    assert table.score.dtype == np.float64 and math.isnan(table.score[0]) and table.score[1:].tolist() == [inf, -inf]
    hparams = strict_loads((run_dir / "hparams.json").read_text())
    assert hparams == {"clip": None, "schedule": {"floor": None, "warmup": [0.5, None]}, "lr": 0.1,
                       "_nonfinite": [[["clip"], "Infinity"], [["schedule", "floor"], "-Infinity"],
                                      [["schedule", "warmup", 1], "NaN"]]}

    # Read back as logged, by the documented rule (local_reader) and by the viewer.
    restored = read_lines(run_dir / "metrics.jsonl")[0]
    assert math.isnan(restored["loss"]) and (restored["up"], restored["down"]) == (inf, -inf)
    assert read_table(run_dir, "t").score.tolist()[1:] == [inf, -inf]
    data = viewer_data(run_dir)
    assert data["metrics"]["loss"] == [[0, None], [1, 1.0]]  # a gap in the chart, not a missing point
    assert data["hparams"]["lr"] == 0.1 and "_nonfinite" not in data["hparams"]
    if shutil.which("jq"):  # the docs' jq line puts the kinds back
        recipe = "reduce (._nonfinite // [])[] as [$p, $k] (.; setpath($p; $k)) | del(._nonfinite)"
        result = subprocess.run(["jq", "-c", recipe, str(run_dir / "hparams.json")], capture_output=True, text=True,
                                timeout=60, check=True)
        assert json.loads(result.stdout)["schedule"] == {"floor": "-Infinity", "warmup": [0.5, "NaN"]}


def test_strict_json_puts_back_exactly_what_it_replaced():
    inf, nan = math.inf, math.nan
    document = {"a": nan, "b": [1, inf, {"c": -inf, 3: nan, True: 0.5}], "t": (1.0, nan), "s": "NaN", "n": None,
                "f": np.float64(-inf)}
    text = strict_json.dumps(document)
    parsed = strict_loads(text)
    assert parsed["s"] == "NaN" and parsed["n"] is None and parsed["b"][2]["true"] == 0.5
    assert sorted(map(str, parsed["_nonfinite"])) == sorted(map(str, [
        [["a"], "NaN"], [["b", 1], "Infinity"], [["b", 2, "c"], "-Infinity"], [["b", 2, "3"], "NaN"],
        [["t", 1], "NaN"], [["f"], "-Infinity"]]))
    back = strict_json.restore(json.loads(text))
    assert back["b"][:2] == [1, inf] and back["b"][2]["c"] == -inf and math.isnan(back["b"][2]["3"])
    assert math.isnan(back["a"]) and math.isnan(back["t"][1]) and back["f"] == -inf and back["n"] is None
    assert strict_json.dumps({"x": 1.5}) == '{"x": 1.5}'  # nothing non-finite: no extra field
    # int keys (a run config may have them) sort beside the added field, as json writes them: as str
    assert strict_json.dumps({2: nan, 1: "a"}, sort_keys=True) == '{"1": "a", "2": null, "_nonfinite": [[["2"], "NaN"]]}'
    with pytest.raises(ValueError, match="_nonfinite"):
        strict_json.dumps({"_nonfinite": 1, "x": nan})


def test_metrics_named_step_or_time_cannot_overwrite_the_lines_own_fields(logbus_dir):
    config = {"_nonfinite": 1, "hparam/a": 2, "b": 3}
    with logbus.start_run("names", backends=["local"], config=config) as run:
        run.log({"step": 7, "time": 3.5, "_nonfinite": 1.0, "metric/x": 2.0, "metric": 4.0, "loss": 0.5}, step=2)
    run_dir = logbus_dir / "names"
    [line] = raw_lines(run_dir / "metrics.jsonl")
    assert line.pop("step") == 2 and line.pop("time") > 1e9  # the line's own: the step and the wall time
    assert line == {"metric/step": 7.0, "metric/time": 3.5, "metric/_nonfinite": 1.0, "metric/metric/x": 2.0,
                    "metric": 4.0, "loss": 0.5}
    assert local_series(run_dir, "step") == [(2, 7.0)] and local_series(run_dir, "metric/x") == [(2, 2.0)]
    assert strict_loads((run_dir / "hparams.json").read_text()) == {"hparam/_nonfinite": 1, "hparam/hparam/a": 2,
                                                                    "b": 3}
    data = viewer_data(run_dir)
    assert data["metrics"] == {"_nonfinite": [[2, 1.0]], "loss": [[2, 0.5]], "metric": [[2, 4.0]],
                               "metric/x": [[2, 2.0]], "step": [[2, 7.0]], "time": [[2, 3.5]]}
    assert data["hparams"] == config


CAPPED_COPY = textwrap.dedent("""
    import json, resource, signal, sys
    import numpy as np
    from PIL import Image as PILImage
    import logbus
    from logbus.records import Image

    source, limit = sys.argv[1], int(sys.argv[2])
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead
    with PILImage.open(source) as opened:
        pixels = np.asarray(opened)
    run = logbus.start_run("capped", backends=["local"])
    run.log({"loss": 1.0}, step=0)
    run.log_table("small", ["id"], [[1]], step=0)
    assert run.flush()
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))  # from here on, as if the disk were full
    # Pixels, not Image(path=source): the bus's first backend writer copies that file, and the copy, not the
    # table, would be cut short (tests/guarantees/test_logged_files.py).
    run.log_table("samples", ["image"], [[Image(pixels=pixels)]], step=0)
    run.log_artifact(source, "model.png", type="model")
    run.log({"loss": 0.5}, step=1)
    run.finish()
    print(json.dumps(run.bus.stats()["backends"]["local"]))
""")


@pytest.fixture
def shm_folder(logbus_dir):
    """A fresh folder on another filesystem than the run folders (``/dev/shm``): a file there cannot be
    hard-linked into a run and is copied. Skips where there is none."""
    import tempfile

    if not os.access("/dev/shm", os.W_OK) or os.stat("/dev/shm").st_dev == logbus_dir.stat().st_dev:
        pytest.skip("needs /dev/shm on another filesystem than the run folder")
    folder = Path(tempfile.mkdtemp(prefix="logbus-test-", dir="/dev/shm"))
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def test_a_table_cut_short_is_lost_whole_and_leaves_no_file_that_looks_finished(logbus_dir, shm_folder):
    # A write that fails half way (here a per-process file-size limit: a real write error from the kernel,
    # EFBIG, as a full disk gives ENOSPC) loses that table and that artifact, counted, and leaves no file
    # under a finished name and no temporary file; what was written before stays whole, training goes on.
    source = shm_folder / "noise.png"
    PILImage.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(source)
    limit = 4096
    assert source.stat().st_size > 2 * limit
    result = subprocess.run([sys.executable, "-c", CAPPED_COPY, str(source), str(limit)], capture_output=True,
                            text=True, timeout=120, env={**os.environ, "LOGBUS_DIR": str(logbus_dir)}, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    stats = json.loads(result.stdout.strip().splitlines()[-1])
    assert stats["failures"] == 2 and stats["enabled"]  # the table and the artifact, counted; the backend goes on
    assert "'samples' at step 0 (1 rows) could not be written and is lost" in result.stderr
    run_dir = logbus_dir / "capped"
    assert [line["loss"] for line in read_lines(run_dir / "metrics.jsonl")] == [1.0, 0.5]
    files = store_files(run_dir)
    assert [path for path in files if path.startswith(("rows/", "packs/", ".tmp/"))] == [
        "rows/small/0000000000-r0-0.parquet"]  # the table before the limit, whole; nothing of the lost one
    assert read_table(run_dir, "small").id.tolist() == [1]
    assert [path.name for path in (run_dir / "artifacts").rglob("*") if path.name.startswith(".")] == []
    for path in (run_dir / "artifacts").rglob("*"):  # anything under a finished name is whole
        with PILImage.open(path) as image:
            image.load()


def test_an_image_encoded_on_threads_then_in_the_worker_process_is_written_once(logbus_dir):
    """The worker process takes a few seconds to start; until then batches are encoded on threads of
    the training process, whose files are named apart from the worker's. The same images seen again
    once the worker is up are still the same images: the run folder keeps one copy of each."""
    images, labels = load_digits()
    images, labels = images[:8], labels[:8]
    logits = torch.nn.functional.one_hot(labels, 10).float()
    with logbus.start_run("threads-then-process", backends=["local"]) as run:
        samples = run.samples("classification", num_samples=None)
        samples.add(images, labels, logits, label="val")  # at once: the worker process is not up yet
        samples.log("val", step=0)
        assert samples.pipeline.worker_ready(120)
        samples.add(images, labels, logits, label="val")
        samples.log("val", step=1)
    run_dir = logbus_dir / "threads-then-process"
    first, second = (read_table(run_dir, "samples/val", step=step) for step in (0, 1))
    assert [cell.hash for cell in first.image] == [cell.hash for cell in second.image]
    assert first._sample_key.tolist() == second._sample_key.tolist()  # the same samples, the same stable keys
    assert pack_rows(run_dir, "image") == 8


def test_ground_truth_masks_seen_again_are_written_once(logbus_dir):
    images, _ = load_digits()
    images = images[:6]
    truth = (images[:, 0] > 0.5).long()  # the same ground truth at every eval
    generator = torch.Generator().manual_seed(0)
    with logbus.start_run("seg", backends=["local"]) as run:
        samples = run.samples("segmentation", num_samples=None, class_names={0: "background", 1: "ink"})
        for step in range(3):
            samples.add(images, truth, torch.randn(6, 2, *truth.shape[1:], generator=generator), label="seg")
            samples.log("seg", step=step)
            assert run.flush()
            if step == 0:
                first = {path: (path.stat().st_ino, path.stat().st_mtime_ns) for path in (logbus_dir / "seg").rglob("*")
                         if path.is_file() and path.relative_to(logbus_dir / "seg").parts[0] in ("packs", "rows")}
                assert len(first) == 2  # the first eval's rows and pack
    run_dir = logbus_dir / "seg"
    rows = read_table(run_dir, "samples/seg")
    assert rows._step.tolist() == [0] * 6 + [1] * 6 + [2] * 6
    cells = [rows.image[rows._step == step].tolist() for step in range(3)]
    truth_hashes = [[cell.masks["ground_truth"].hash for cell in eval_cells] for eval_cells in cells]
    assert truth_hashes[0] == truth_hashes[1] == truth_hashes[2]
    for cell, mask in zip(cells[2], truth):
        np.testing.assert_array_equal(cell.masks["ground_truth"].to_numpy(), mask.numpy())
        assert cell.masks["ground_truth"].class_labels == {0: "background", 1: "ink"}
    # Stored at the first eval, never again: the first eval's files are untouched (an atomic rewrite
    # would change the inode and the time), and the packs hold each ground truth and image once.
    assert all((path.stat().st_ino, path.stat().st_mtime_ns) == seen for path, seen in first.items())
    predictions = {cell.masks["prediction"].hash for eval_cells in cells for cell in eval_cells}
    assert pack_rows(run_dir, "mask") == len(set(truth_hashes[0])) + len(predictions)
    assert pack_rows(run_dir, "image") == 6
    assert [cell.hash for cell in cells[0]] == [cell.hash for cell in cells[2]]  # images, as before


# -- hostile names ---------------------------------------------------------------------------------
HOSTILE = ["../../etc/x", "/abs", "nul\x00byte", "new\nline", "a/../b", "..", ""]


@pytest.mark.parametrize("key", HOSTILE)
def test_hostile_table_keys_are_rejected_with_the_argument_named(logbus_dir, key):
    from logbus.composer import LogBusLogger

    logger = LogBusLogger(backends=["local"])
    try:
        with pytest.raises((ValueError, TypeError)) as error:
            logger.log_table(columns=["a"], rows=[[1]], name=key)
        assert str(error.value).startswith("name: ") and repr(key) in str(error.value)
        with pytest.raises((ValueError, TypeError)) as error:
            logger.log_images(np.zeros((1, 3, 2, 2), dtype=np.float32), name=key)
        assert str(error.value).startswith("name: ")
    finally:
        logger.bus.close()
    assert list(logbus_dir.iterdir()) == []  # no run was even started: nothing written


@pytest.mark.parametrize("key", HOSTILE)
def test_hostile_table_keys_in_the_plain_api_are_rejected(logbus_dir, key):
    with logbus.start_run("keys", backends=["local"]) as run:
        with pytest.raises((ValueError, TypeError)) as error:
            run.log_table(key, ["a"], [[1]])
        assert repr(key) in str(error.value)
    assert [path for path in store_files(logbus_dir / "keys") if path.startswith(("rows/", "packs/"))] == []


def test_plain_api_table_key_error_names_the_key_argument(logbus_dir):
    with logbus.start_run("keys", backends=["local"]) as run:
        with pytest.raises(ValueError) as error:
            run.log_table("../x", ["a"], [[1]])
    assert str(error.value).startswith("key: ")


@pytest.mark.parametrize("name", [*HOSTILE[:-1], "sub/file", "back\\slash"])
def test_hostile_artifact_names_are_rejected_with_the_argument_named(logbus_dir, tmp_path, name):
    source = tmp_path / "file.bin"
    source.write_bytes(b"data")
    with logbus.start_run("names", backends=["local"]) as run:
        with pytest.raises(ValueError, match=r"^artifact name: "):
            run.log_artifact(str(source), name)
    assert not (logbus_dir / "names" / "artifacts").exists()


def test_composer_remote_file_names_are_sanitised_inside_the_run(logbus_dir, tmp_path):
    from composer import Trainer
    from composer.models import ComposerClassifier
    from torch.utils.data import DataLoader, TensorDataset

    from logbus.composer import LogBusLogger

    data = TensorDataset(torch.zeros(4, 1, 8, 8), torch.zeros(4, dtype=torch.long))
    trainer = Trainer(model=ComposerClassifier(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10)),
                                               num_classes=10),
                      train_dataloader=DataLoader(data, batch_size=2), max_duration="1ba", device="cpu",
                      progress_bar=False, run_name="uploads", loggers=[LogBusLogger(backends=["local"])])
    trainer.fit()
    source = tmp_path / "secret.txt"
    source.write_text("payload")
    with pytest.warns(UserWarning, match="will be stored as"):
        trainer.logger.upload_file("../../etc/passwd", source)
    trainer.close()

    run_dir = logbus_dir / "uploads"
    [entry] = read_lines(run_dir / "artifacts.jsonl")
    assert entry["name"] == "etc.passwd" and (run_dir / entry["path"]).read_text() == "payload"
    assert inside(run_dir / entry["path"], run_dir / "artifacts")


@pytest.mark.parametrize("name", ["../../etc/x", "/abs/run", "nul\x00byte", "new\nline", "..", "."])
def test_hostile_run_names_stay_inside_the_root(logbus_dir, tmp_path, name):
    before = sorted(p.name for p in tmp_path.iterdir())
    with logbus.start_run(name, backends=["local"]) as run:
        run.log({"x": 1.0}, step=0)
    [run_dir] = list(logbus_dir.iterdir())
    assert run_dir.parent == logbus_dir and inside(run_dir, logbus_dir)
    assert not any(char in run_dir.name for char in "/\\\x00\n") and run_dir.name not in (".", "..")
    assert read_json(run_dir / "run.json")["name"] == name  # the real name is kept, only the folder is safe
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing written next to the root


def test_hostile_mask_names_stay_inside_the_run(logbus_dir):
    pixels = np.zeros((4, 4, 3), dtype=np.uint8)
    names = ["../../etc/x", "/abs", "..", "a/b", "~"]
    masks = {name: Mask(np.full((4, 4), index, dtype=np.int64)) for index, name in enumerate(names)}
    for unstorable in ("nul\x00byte", "new\nline"):  # refused at the call (test_bad_input.py), never stored
        with pytest.raises(ValueError, match=r"^image\.masks\["):
            Image(pixels=pixels, masks={unstorable: Mask(np.zeros((4, 4), dtype=np.int64))})
    with logbus.start_run("masks", backends=["local"]) as run:
        run.log_table("t", ["image"], [[Image(pixels=pixels, masks=masks)]])
    run_dir = logbus_dir / "masks"
    [cell] = read_table(run_dir, "t").image
    assert sorted(cell.masks) == sorted(names)  # names are data in the rows file, never paths
    for index, name in enumerate(names):
        np.testing.assert_array_equal(cell.masks[name].to_numpy(), np.full((4, 4), index))
    assert all(inside(run_dir / path, run_dir) for path in store_files(run_dir))


def test_table_keys_that_need_cleaning_stay_inside_rows_and_read_back_by_their_key(logbus_dir):
    keys = ["a b/c", "a_b/c", "samples/val", "samples/val/sub", "~/x", "$HOME/y", "ünï/cödé", "x" * 300]
    with logbus.start_run("keys", backends=["local"]) as run:
        for index, key in enumerate(keys):
            run.log_table(key, ["i"], [[index]], step=0)
    run_dir = logbus_dir / "keys"
    rows_files = [path for path in store_files(run_dir) if path.startswith("rows/")]
    assert len(rows_files) == len(keys) and all(inside(run_dir / path, run_dir / "rows") for path in rows_files)
    for index, key in enumerate(keys):  # two keys cleaned alike ("a b", "a_b") keep their own rows
        assert read_table(run_dir, key).i.tolist() == [index]


def test_media_copies_are_whole_with_the_run_files_mode_even_when_a_partial_name_is_taken(tmp_path):
    """``copy_file_atomic`` (every image of a table goes through it) copies in the kernel under a hidden
    name made from the target; a leftover of an earlier cut-short copy under that name is not reused."""
    import threading

    from logbus.files._atomic import FILE_MODE, _umask, copy_file_atomic

    source = tmp_path / "source.bin"
    source.write_bytes(os.urandom(3 * 2**20 + 5))
    target = tmp_path / "media" / "0000001.png"
    target.parent.mkdir()
    copy_file_atomic(str(source), str(target))
    assert target.read_bytes() == source.read_bytes()
    assert target.stat().st_mode & 0o777 == FILE_MODE & ~_umask()
    stale = target.parent / f".{target.name}.{os.getpid()}-{threading.get_ident()}.partial"
    stale.write_bytes(b"cut short")
    copy_file_atomic(str(source), str(target))  # its hidden name is taken: a random one is used
    assert target.read_bytes() == source.read_bytes() and stale.read_bytes() == b"cut short"
    assert sorted(p.name for p in target.parent.iterdir() if p.name.endswith(".partial")) == [stale.name]


@pytest.mark.parametrize("beside", [None, "a backend that needs files"])
def test_sample_images_are_read_into_the_packs_and_the_scratch_folder_goes_at_close(logbus_dir, beside):
    """Alone on the bus, the local backend gets pixels (no scratch file is made) and stores them raw.
    Beside a backend that needs image files (one that does not say otherwise), the pipeline keeps its
    encoded files in ``<root>/.scratch``, and the local backend reads each file's bytes into a pack when
    it writes the table. Either way: no file per image in the run, the run reads back, and the scratch
    folder goes at close."""
    images, labels = load_digits()
    images, labels = images[:8], labels[:8]
    logits = torch.nn.functional.one_hot(labels, 10).float()
    backends: list = ["local"] if beside is None else ["local", RecordingBackend()]
    with logbus.start_run("packed", backends=backends) as run:
        samples = run.samples("classification", num_samples=None, worker_process=False)
        scratch = Path(samples.pipeline.encoder.folder)
        assert (scratch.parent == logbus_dir / ".scratch") is (beside is not None)
        samples.add(images, labels, logits, label="val")
        samples.log("val", step=0)
        assert run.flush(60)
        assert (samples.pipeline.encoder.encoded == 8) is (beside is not None)
    assert not scratch.exists()  # the pipeline's scratch folder is gone with the run; the run's files stay
    run_dir = logbus_dir / "packed"
    assert [path for path in store_files(run_dir) if path.startswith(("rows/", "packs/"))] == [
        "packs/r0-000000.parquet", "rows/samples/val/0000000000-r0-0.parquet"]
    rows = read_table(run_dir, "samples/val")
    for cell, image in zip(rows.image, images):  # every image decodes to the digit logged
        expected = (image[0] * 255).round().to(torch.uint8).numpy()
        assert cell.encoded()[1] == "image/png" and np.abs(cell.to_numpy()[..., 0].astype(int) - expected).max() <= 1
    assert sorted(p.name for p in logbus_dir.iterdir()) == ["packed"]  # no empty .scratch left in the root


def test_an_encoded_file_is_stored_as_it_was_when_logged(logbus_dir, shm_folder):
    """An ``Image(path=...)`` is read when its table is written: the run holds those bytes, whatever
    happens to the file afterwards (here: rewritten, then removed)."""
    source = shm_folder / "noise.png"
    PILImage.fromarray(np.random.default_rng(1).integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(source)
    logged = source.read_bytes()
    with logbus.start_run("copied", backends=["local"]) as run:
        run.log_table("samples", ["image"], [[Image(path=str(source))]], step=0)
        assert run.flush()
        source.write_bytes(b"rewritten")
    source.unlink()
    [cell] = read_table(logbus_dir / "copied", "samples").image
    assert cell.encoded() == (logged, "image/png")


def test_link_or_copy_links_on_one_filesystem_and_copies_over_a_taken_name(tmp_path):
    from logbus.files import link_or_copy_file_atomic

    source = tmp_path / "source.png"
    source.write_bytes(os.urandom(5000))
    linked = tmp_path / "media" / "0000001.png"
    linked.parent.mkdir()
    assert link_or_copy_file_atomic(str(source), str(linked)) is True
    assert linked.stat().st_ino == source.stat().st_ino
    taken = tmp_path / "media" / "0000002.png"
    taken.write_bytes(b"an older file")
    assert link_or_copy_file_atomic(str(source), str(taken)) is False  # replaced whole, as a copy does
    assert taken.read_bytes() == source.read_bytes() and taken.stat().st_ino != source.stat().st_ino
    with pytest.raises(FileNotFoundError):
        link_or_copy_file_atomic(str(tmp_path / "missing.png"), str(tmp_path / "media" / "0000003.png"))
    assert sorted(p.name for p in linked.parent.iterdir()) == ["0000001.png", "0000002.png"]  # no leftovers


def test_segmentation_masks_from_the_worker_process_read_back_exactly(logbus_dir):
    """A segmentation row's masks, done in the worker process, read back as the exact class ids with their
    labels; a ground truth seen again is referenced (the same hash, stored once)."""
    images, _ = load_digits()
    images = images[:6]
    truth = (images[:, 0] > 0.5).long()
    logits = torch.randn(6, 2, *truth.shape[1:], generator=torch.Generator().manual_seed(0))
    with logbus.start_run("seg-worker", backends=["local"]) as run:
        samples = run.samples("segmentation", num_samples=None, class_names={0: "background", 1: "ink"})
        assert samples.pipeline.worker_ready(120)  # the worker process does the host stage
        for step in range(2):
            samples.add(images, truth, logits, label="seg")
            samples.log("seg", step=step)
            assert run.flush(60)
        assert samples.pipeline.stats.batches_in_process == 0
    run_dir = logbus_dir / "seg-worker"
    first, second = (read_table(run_dir, "samples/seg", step=step) for step in (0, 1))
    assert [c.masks["ground_truth"].hash for c in first.image] == [c.masks["ground_truth"].hash for c in second.image]
    for cell, mask, row_logits in zip(second.image, truth, logits):
        np.testing.assert_array_equal(cell.masks["ground_truth"].to_numpy(), mask.numpy())
        np.testing.assert_array_equal(cell.masks["prediction"].to_numpy(), row_logits.argmax(0).numpy())
        assert cell.masks["ground_truth"].class_labels == {0: "background", 1: "ink"}
    assert pack_rows(run_dir, "mask") == 12  # 6 ground truths and 6 predictions, each once for both evals


def test_a_mask_given_twice_is_stored_once_and_its_labels_changed_in_place_are_read_as_changed(logbus_dir):
    """The same ids are one pack row, whatever their labels; a labels mapping changed in place between two
    tables is the new labels in the second (the backend works a mapping's JSON out once for its rows)."""
    ids = np.arange(6, dtype=np.uint8).reshape(2, 3) % 2
    image = np.zeros((2, 3, 3), np.uint8)
    labels = {0: "background", 1: "ink"}
    with logbus.start_run("relabelled", backends=["local"]) as run:
        run.log_table("seg", ["image"], [[Image(pixels=image, masks={"truth": Mask(ids, labels)})]], step=0)
        assert run.flush()
        labels[1] = "stroke"
        run.log_table("seg", ["image"], [[Image(pixels=image, masks={"truth": Mask(ids.copy(), labels)})]], step=1)
    run_dir = logbus_dir / "relabelled"
    first, second = (cell.masks["truth"] for cell in read_table(run_dir, "seg").image)
    assert first.class_labels == {0: "background", 1: "ink"} and second.class_labels == {0: "background", 1: "stroke"}
    assert first.hash == second.hash and pack_rows(run_dir, "mask") == 1 and pack_rows(run_dir, "image") == 1


# -- the packed store: files, column types, resume, ranks, format 1 -----------------------------------
def test_each_table_is_at_most_two_files_and_rows_holds_only_rows_files(logbus_dir):
    rng = np.random.default_rng(4)
    truth = [rng.integers(0, 256, (8, 8, 3), dtype=np.uint8) for _ in range(20)]
    with logbus.start_run("files", backends=["local"]) as run:
        for step in range(4):
            rows = [[i, Image(pixels=image, masks={"truth": Mask((image[..., 0] > 128).astype(np.int64))}),
                     float(step)] for i, image in enumerate(truth)]
            run.log_table("samples/val", ["id", "image", "score"], rows, step=step)
            run.log_table("plain", ["step"], [[step]], step=step)
    run_dir = logbus_dir / "files"
    files = store_files(run_dir)
    own = {"run.json", "hparams.json", "metrics.jsonl"}
    assert own <= set(files)
    rows_files = [path for path in files if path.startswith("rows/")]
    packs = [path for path in files if path.startswith("packs/")]
    assert len(rows_files) == 8 and all(path.endswith(".parquet") for path in rows_files)
    assert len(packs) == 1  # the first eval's pixels; later evals reference them
    assert set(files) == own | set(rows_files) | set(packs)  # nothing else: no media, no page, no temporary
    assert len(files) - len(own) <= 3 * 8
    assert pack_rows(run_dir, "image") == 20 and pack_rows(run_dir, "mask") == len({
        (image[..., 0] > 128).tobytes() for image in truth})
    assert len(pd.read_parquet(run_dir / "rows" / "samples" / "val")) == 80  # pandas: every row, no pack file
    from logbus.plugins.local import list_tables

    tables = list_tables(run_dir)
    assert tables[["key", "step", "rank", "rows"]].values.tolist() == [
        ["plain", 0, 0, 1], ["plain", 1, 0, 1], ["plain", 2, 0, 1], ["plain", 3, 0, 1],
        ["samples/val", 0, 0, 20], ["samples/val", 1, 0, 20], ["samples/val", 2, 0, 20], ["samples/val", 3, 0, 20]]
    assert all(Path(file).is_file() for file in tables.file)


def test_mixed_type_columns_are_json_text_listed_in_the_metadata_and_decoded_by_read_table(logbus_dir):
    import pyarrow.parquet as pq

    rows = [[1, 1, True, "a", 1.5, None, 2**70], [2, 2.5, False, None, 2, None, 1], [3, "x", None, "c", None, None, 0]]
    with logbus.start_run("types", backends=["local"]) as run:
        run.log_table("t", ["int", "mixed", "bool", "str", "number", "empty", "huge"], rows, step=1)
    [path] = (logbus_dir / "types" / "rows" / "t").glob("*.parquet")
    schema = pq.read_schema(path)
    assert [str(schema.field(name).type) for name in ("int", "bool", "str", "number", "mixed", "huge")] == [
        "int64", "bool", "string", "double", "string", "string"]
    assert json.loads(schema.metadata[b"logbus.json_columns"]) == ["mixed", "huge"]
    assert pq.read_table(path).column("mixed").to_pylist() == ["1", "2.5", '"x"']
    table = read_table(logbus_dir / "types", "t")
    assert table.mixed.tolist() == [1, 2.5, "x"] and table.huge.tolist() == [2**70, 1, 0]
    assert table.int.tolist() == [1, 2, 3] and table.number.tolist()[:2] == [1.5, 2.0] and table["empty"].isna().all()


def test_a_resumed_run_appends_and_never_replaces_a_finished_table(logbus_dir):
    """A run that did not finish (it raised: status failed) is resumed by the next run of its name, rank
    and world size (Composer's autoresume restarts it so): metrics and tables are appended, the tables of
    the first attempt are kept, even at the same step; a finished run is never appended to."""
    image = np.full((4, 4, 3), 7, np.uint8)
    with pytest.raises(RuntimeError):
        with logbus.start_run("resumed", backends=["local"], config={"lr": 0.1}) as run:
            run.log({"loss": 1.0}, step=0)
            run.log_table("samples/val", ["id", "image"], [[0, Image(pixels=image)]], step=10)
            assert run.flush()
            raise RuntimeError("preempted")
    run_dir = logbus_dir / "resumed"
    first_file = run_dir / "rows" / "samples" / "val" / "0000000010-r0-0.parquet"
    before = (first_file.stat().st_ino, first_file.stat().st_mtime_ns, first_file.read_bytes())
    with logbus.start_run("resumed", backends=["local"], config={"epochs": 2}) as run:
        run.log({"loss": 0.5}, step=10)
        run.log_table("samples/val", ["id", "image"], [[1, Image(pixels=image)]], step=10)  # the same step again
    with logbus.start_run("resumed", backends=["local"]) as run:  # the run finished: this is another run
        run.log({"loss": 9.0}, step=0)
    assert sorted(path.name for path in logbus_dir.iterdir()) == ["resumed", "resumed-2"]
    assert (first_file.stat().st_ino, first_file.stat().st_mtime_ns, first_file.read_bytes()) == before
    assert [line["loss"] for line in read_lines(run_dir / "metrics.jsonl")] == [1.0, 0.5]
    assert read_table(run_dir, "samples/val").id.tolist() == [0, 1]
    assert pack_rows(run_dir) == 1  # the resumed run knew the image was stored
    info = read_json(run_dir / "run.json")
    assert info["status"] == "finished" and len(info["resumed_at"]) == 1 and info["started_at"] < info["resumed_at"][0]
    assert read_json(run_dir / "hparams.json") == {"lr": 0.1, "epochs": 2}


def test_a_run_folder_still_written_by_a_live_process_is_not_resumed(logbus_dir):
    with logbus.start_run("live", backends=["local"]) as first:  # still running in this process
        first.log({"x": 1.0}, step=0)
        assert first.flush()
        with logbus.start_run("live", backends=["local"]) as second:
            second.log({"x": 2.0}, step=0)
    assert sorted(path.name for path in logbus_dir.iterdir()) == ["live", "live-2"]


def test_the_ranks_of_one_run_are_read_as_one_table(logbus_dir):
    """Each rank writes its own folder (on a shared disk or its node's): read_table merges them by step,
    rank and row."""
    for rank in (1, 0):
        with logbus.start_run("ddp", backends=["local"], rank=rank, world_size=2) as run:
            run.log({"loss": float(rank)}, step=0)
            for step in (0, 1):
                run.log_table("samples/val", ["id", "image"], [
                    [i, Image(pixels=np.full((2, 2, 3), 10 * rank + i, np.uint8))] for i in range(2)], step=step)
    runs = [logbus_dir / "ddp-rank0", logbus_dir / "ddp-rank1"]
    rows = logbus.read_table(runs, "samples/val")
    assert rows[["_step", "_rank", "_row", "id"]].values.tolist() == [
        [0, 0, 0, 0], [0, 0, 1, 1], [0, 1, 0, 0], [0, 1, 1, 1], [1, 0, 0, 0], [1, 0, 1, 1], [1, 1, 0, 0], [1, 1, 1, 1]]
    assert [int(cell.to_numpy()[0, 0, 0]) for cell in rows.image[:4]] == [0, 1, 10, 11]
    assert len(logbus.read_table(runs, "samples/val", step=1)) == 4
    metrics = logbus.read_metrics(runs)
    assert metrics[["step", "_rank", "loss"]].values.tolist() == [[0, 0, 0.0], [0, 1, 1.0]]


def test_a_format_1_run_folder_is_refused_with_a_clear_error(tmp_path):
    old = tmp_path / "old-run"
    (old / "tables").mkdir(parents=True)
    (old / "run.json").write_text(json.dumps({"name": "old", "status": "finished"}))
    (old / "tables" / "t.jsonl").write_text('{"key": "t", "step": 0, "columns": ["a"], "rows": [[1]]}\n')
    for read in (lambda: logbus.read_table(old, "t"), lambda: logbus.read_metrics(old)):
        with pytest.raises(ValueError, match=r"^runs: .*old-run.* format 1 \(tables/\*\.jsonl and media/.*reads format 2"):
            read()
    with pytest.raises(FileNotFoundError, match="^runs: expected a logbus run folder"):
        logbus.read_table(tmp_path, "t")
    with pytest.raises(TypeError, match="^key: "):
        logbus.read_table(old, None)
