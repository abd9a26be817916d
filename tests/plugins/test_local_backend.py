"""The local backend's run folder, as documented in ``plugins/local/_backend.py`` (read back with json and Pillow)."""

from __future__ import annotations

import io
import json
import math
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from local_reader import local_series, read_lines, strict_loads
from PIL import Image as PILImage

import logbus
from logbus.demo import load_digits
from logbus.files import _strict_json as strict_json
from logbus.plugins.local._viewer import write_viewer
from logbus.records import Box, Image, Mask


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
    [line] = read_lines(run_dir / "tables" / "eval" / "samples.jsonl")
    assert (line["step"], line["columns"]) == (5, ["id", "image", "ok"])
    assert [[row[0], row[2]] for row in line["rows"]] == [[0, True], [1, False], [2, None], [3, True]]
    cells = [row[1] for row in line["rows"]]
    assert all(cell["_type"] == "image" and not Path(cell["path"]).is_absolute() for cell in cells)
    np.testing.assert_array_equal(decode(run_dir / cells[0]["path"]), rgb)
    np.testing.assert_array_equal(decode(run_dir / cells[1]["path"]), rgba)
    np.testing.assert_array_equal(decode(run_dir / cells[2]["path"]), grey)
    assert (run_dir / cells[3]["path"]).read_bytes() == encoded.read_bytes()  # copied, not re-encoded
    assert [cell["caption"] for cell in cells] == ["rgb", None, None, "as is"]

    masks = cells[0]["masks"]
    np.testing.assert_array_equal(decode(run_dir / masks["pred"]["path"]), classes)
    np.testing.assert_array_equal(decode(run_dir / masks["instances"]["path"]), many_classes)
    assert masks["pred"]["class_labels"] == {"0": "bg", "3": "dog"} and masks["instances"]["class_labels"] == {}
    assert cells[0]["boxes"] == [{"min_x": 1, "min_y": 1, "max_x": 3, "max_y": 4, "class_id": 2, "caption": "cat",
                                  "score": 0.75}]


def test_jpeg_image_format(logbus_dir):
    smooth = np.repeat(np.linspace(0, 255, 32, dtype=np.uint8)[None, :, None], 16, axis=0).repeat(3, axis=2)
    with logbus.start_run("jpeg", backends=[("local", {"image_format": "jpeg"})]) as run:
        run.log_table("pictures", ["image"], [[Image(pixels=smooth)]], step=0)
    [line] = read_lines(logbus_dir / "jpeg" / "tables" / "pictures.jsonl")
    path = logbus_dir / "jpeg" / line["rows"][0][0]["path"]
    assert path.suffix == ".jpg"
    with PILImage.open(path) as image:
        assert image.format == "JPEG"
    assert np.abs(decode(path).astype(int) - smooth).mean() < 4  # lossy, but the same picture


def test_image_lists_are_one_column_tables(logbus_dir):
    floats = np.stack([np.zeros((3, 4, 4)), np.ones((3, 4, 4))]).astype(np.float32)
    with logbus.start_run("lists", backends=["local"]) as run:
        run.log_images("inputs", floats, step=7)
    [line] = read_lines(logbus_dir / "lists" / "tables" / "inputs.jsonl")
    assert (line["step"], line["columns"], len(line["rows"])) == (7, ["image"], 2)
    for row, value in zip(line["rows"], (0, 255)):
        assert (decode(logbus_dir / "lists" / row[0]["path"]) == value).all()


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
    """The run as the viewer embeds it into index.html."""
    html = Path(write_viewer(run_dir)).read_text()
    return json.loads(html.split('id="run-data">', 1)[1].split("</script>", 1)[0])


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
    documents = [run_dir / name for name in ("run.json", "hparams.json", "metrics.jsonl", "tables/t.jsonl")]
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
    [table] = raw_lines(run_dir / "tables" / "t.jsonl")
    assert table["rows"] == [[0, None, "a"], [1, None, None], [2, None, "c"]]
    assert table["_nonfinite"] == [[["rows", 0, 1], "NaN"], [["rows", 1, 1], "Infinity"], [["rows", 2, 1], "-Infinity"]]
    hparams = strict_loads((run_dir / "hparams.json").read_text())
    assert hparams == {"clip": None, "schedule": {"floor": None, "warmup": [0.5, None]}, "lr": 0.1,
                       "_nonfinite": [[["clip"], "Infinity"], [["schedule", "floor"], "-Infinity"],
                                      [["schedule", "warmup", 1], "NaN"]]}

    # Read back as logged, by the documented rule (local_reader) and by the viewer.
    restored = read_lines(run_dir / "metrics.jsonl")[0]
    assert math.isnan(restored["loss"]) and (restored["up"], restored["down"]) == (inf, -inf)
    assert [row[1] for row in read_lines(run_dir / "tables" / "t.jsonl")[0]["rows"]][1:] == [inf, -inf]
    data = viewer_data(run_dir)
    assert data["metrics"]["loss"] == [[0, None], [1, 1.0]]  # a gap in the chart, not a missing point
    assert data["hparams"]["lr"] == 0.1 and "_nonfinite" not in data["hparams"]
    if shutil.which("jq"):  # the README's jq line puts the kinds back
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
    import resource, signal, sys
    import logbus
    from logbus.records import Image

    source, limit = sys.argv[1], int(sys.argv[2])
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead
    run = logbus.start_run("capped", backends=["local"])
    run.log({"loss": 1.0}, step=0)
    assert run.flush()
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))  # from here on, as if the disk were full
    run.log_table("samples", ["image"], [[Image(path=source)]], step=0)
    run.log_artifact(source, "model.png", type="model")
    run.finish()
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


def test_a_copy_cut_short_never_leaves_a_truncated_image_under_its_name(logbus_dir, shm_folder):
    # Encoded images from a scratch folder on another filesystem are copied. A copy that fails half way
    # (here a per-process file-size limit, a real write error from the kernel) must leave no file that
    # looks finished. (On one filesystem they are hard-linked: no byte written, nothing to cut short.)
    scratch = shm_folder
    source = scratch / "noise.png"
    PILImage.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(source)
    limit = 4096
    assert source.stat().st_size > 2 * limit
    result = subprocess.run([sys.executable, "-c", CAPPED_COPY, str(source), str(limit)], capture_output=True,
                            text=True, timeout=120, env={**os.environ, "LOGBUS_DIR": str(logbus_dir)}, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    run_dir = logbus_dir / "capped"
    assert (run_dir / "metrics.jsonl").exists()
    written = [path for folder in ("media", "artifacts") for path in (run_dir / folder).rglob("*") if path.is_file()]
    assert [path.name for path in written if path.name.startswith(".")] == []  # temporary files cleaned up
    for path in written:  # anything under a finished name is whole
        with PILImage.open(path) as image:
            image.load()
    assert not (run_dir / "tables" / "samples.jsonl").exists()  # no line points at an image that is not there


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
    first, second = (line["rows"] for line in read_lines(logbus_dir / "threads-then-process" / "tables" / "samples"
                                                             / "val.jsonl"))
    image_column = first[0].index(next(cell for cell in first[0] if isinstance(cell, dict)))
    assert [row[image_column]["path"] for row in first] == [row[image_column]["path"] for row in second]
    assert len(list((logbus_dir / "threads-then-process" / "media").rglob("*.png"))) == 8


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
                first = {path: (path.stat().st_ino, path.stat().st_mtime_ns)
                         for path in (logbus_dir / "seg" / "media").rglob("*.ground_truth.mask.png")}
    run_dir = logbus_dir / "seg"
    passes = read_lines(run_dir / "tables" / "samples" / "seg.jsonl")
    assert len(passes) == 3
    cells = [[row[1] for row in table["rows"]] for table in passes]
    truth_paths = [[cell["masks"]["ground_truth"]["path"] for cell in eval_cells] for eval_cells in cells]
    assert truth_paths[0] == truth_paths[1] == truth_paths[2] and len(set(truth_paths[0])) == 6
    for cell, mask in zip(cells[2], truth):
        np.testing.assert_array_equal(decode(run_dir / cell["masks"]["ground_truth"]["path"]), mask.numpy())
    # Written at the first eval, never again (an atomic rewrite would change the inode and the time).
    assert {path: (path.stat().st_ino, path.stat().st_mtime_ns)
            for path in (run_dir / "media").rglob("*.ground_truth.mask.png")} == first
    predictions = [cell["masks"]["prediction"]["path"] for eval_cells in cells for cell in eval_cells]
    assert len(set(predictions)) == 18  # new predictions each eval: new files
    assert [cell["path"] for cell in cells[0]] == [cell["path"] for cell in cells[2]]  # images, as before


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
    assert not (logbus_dir / "keys" / "tables").exists() and not (logbus_dir / "keys" / "media").exists()


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
    [line] = read_lines(run_dir / "tables" / "t.jsonl")
    stored = line["rows"][0][0]["masks"]
    assert sorted(stored) == sorted(names)
    for index, name in enumerate(names):
        path = run_dir / stored[name]["path"]
        assert inside(path, run_dir / "media") and not Path(stored[name]["path"]).is_absolute()
        np.testing.assert_array_equal(decode(path), np.full((4, 4), index))


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


def test_sample_images_are_hard_linked_from_a_scratch_folder_under_the_root(logbus_dir):
    """With the local backend on the bus, the pipeline keeps its encoded files in ``<root>/.scratch``
    (the run folders' filesystem), and each reaches ``media/`` as a hard link of the scratch file: no
    copy by the backend's thread, which runs in the training process. The run reads back as always and
    the scratch folder goes at close."""
    images, labels = load_digits()
    images, labels = images[:8], labels[:8]
    logits = torch.nn.functional.one_hot(labels, 10).float()
    with logbus.start_run("linked", backends=["local"]) as run:
        samples = run.samples("classification", num_samples=None, worker_process=False)
        scratch = Path(samples.pipeline.encoder.folder)
        assert scratch.parent == logbus_dir / ".scratch"
        samples.add(images, labels, logits, label="val")
        samples.log("val", step=0)
        assert run.flush(60)
        media = sorted((logbus_dir / "linked" / "media").rglob("*.png"))
        assert len(media) == 8
        # Still referenced from the scratch cache: one file, two names (the scratch one and the run's).
        scratch_files = {(p.stat().st_dev, p.stat().st_ino) for p in scratch.iterdir()}
        assert all((p.stat().st_dev, p.stat().st_ino) in scratch_files and p.stat().st_nlink == 2 for p in media)
    assert not scratch.exists()  # the pipeline's scratch folder is gone with the run; the run's files stay
    (line,) = read_lines(logbus_dir / "linked" / "tables" / "samples" / "val.jsonl")
    image_column = next(i for i, cell in enumerate(line["rows"][0]) if isinstance(cell, dict))
    for row, image in zip(line["rows"], images):  # every image readable under its run path
        assert decode(logbus_dir / "linked" / row[image_column]["path"]).shape[:2] == tuple(image.shape[-2:])
    assert sorted(p.name for p in logbus_dir.iterdir()) == ["linked"]  # no empty .scratch left in the root


def test_scratch_files_on_another_filesystem_are_copied_whole(logbus_dir, shm_folder):
    """Where the encoder's files are on another filesystem (no link possible), the backend copies them:
    same bytes, a file of its own."""
    source = shm_folder / "noise.png"
    PILImage.fromarray(np.random.default_rng(1).integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(source)
    with logbus.start_run("copied", backends=["local"]) as run:
        run.log_table("samples", ["image"], [[Image(path=str(source))]], step=0)
    (line,) = read_lines(logbus_dir / "copied" / "tables" / "samples.jsonl")
    copy = logbus_dir / "copied" / line["rows"][0][0]["path"]
    assert copy.read_bytes() == source.read_bytes()
    assert copy.stat().st_nlink == 1 and copy.stat().st_ino != source.stat().st_ino


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


def test_segmentation_masks_are_encoded_in_the_worker_process_and_hard_linked(logbus_dir):
    """A segmentation row's masks, and the viewer's overlays of them, reach ``media/`` as hard links of
    files the worker process wrote in the scratch folder (creating a file costs the backend's thread,
    in the training process, far more than a link): nothing encoded or created for them there. The
    run reads back as before: each mask file decodes to the exact class ids, each overlay is the
    viewer's, and a ground truth seen again is the same file."""
    from logbus.files._overlay import encode_overlay, overlay_classes

    images, _ = load_digits()
    images = images[:6]
    truth = (images[:, 0] > 0.5).long()
    logits = torch.randn(6, 2, *truth.shape[1:], generator=torch.Generator().manual_seed(0))
    with logbus.start_run("seg-linked", backends=["local"]) as run:
        samples = run.samples("segmentation", num_samples=None, class_names={0: "background", 1: "ink"})
        assert samples.pipeline.worker_ready(120)  # the worker process does the host stage
        scratch = Path(samples.pipeline.encoder.folder)
        for step in range(2):
            samples.add(images, truth, logits, label="seg")
            samples.log("seg", step=step)
            assert run.flush(60)
        masks = sorted((logbus_dir / "seg-linked" / "media").rglob("*.mask.png"))
        assert len(masks) == 12  # 6 ground truths and 6 predictions, each once for both evals
        overlays = sorted((logbus_dir / "seg-linked" / "media").rglob("*.overlay.png"))
        assert [p.name.replace(".overlay.", ".mask.") for p in overlays] == [p.name for p in masks]
        scratch_files = {(p.stat().st_dev, p.stat().st_ino) for p in scratch.iterdir() if p.name.endswith("k.png")}
        scratch_files |= {(p.stat().st_dev, p.stat().st_ino) for p in scratch.iterdir() if p.name.endswith("y.png")}
        assert all((p.stat().st_dev, p.stat().st_ino) in scratch_files and p.stat().st_nlink == 2
                   for p in masks + overlays)
        assert samples.pipeline.stats.batches_in_process == 0
    run_dir = logbus_dir / "seg-linked"
    passes = read_lines(run_dir / "tables" / "samples" / "seg.jsonl")
    assert len(passes) == 2 and passes[0]["rows"] == passes[1]["rows"]  # the same files referenced again
    for row, mask, row_logits in zip(passes[1]["rows"], truth, logits):
        cell = row[1]
        np.testing.assert_array_equal(decode(run_dir / cell["masks"]["ground_truth"]["path"]), mask.numpy())
        np.testing.assert_array_equal(decode(run_dir / cell["masks"]["prediction"]["path"]), row_logits.argmax(0).numpy())
        assert cell["masks"]["ground_truth"]["class_labels"] == {"0": "background", "1": "ink"}
        for name in ("ground_truth", "prediction"):
            mask_path = run_dir / cell["masks"][name]["path"]
            overlay = mask_path.with_name(mask_path.name.replace(".mask.png", ".overlay.png"))
            ids = decode(mask_path)
            viewers = encode_overlay(ids, *overlay_classes(ids, ((0, "background"), (1, "ink"))))
            # Paletted (the mask's own pixel data through the class colours), shown as the viewer's RGBA one.
            with PILImage.open(overlay) as made, PILImage.open(io.BytesIO(viewers)) as expected:
                assert made.mode == "P"
                np.testing.assert_array_equal(np.asarray(made.convert("RGBA")), np.asarray(expected))


def test_a_mask_given_as_ids_and_later_as_an_encoded_file_is_one_file(logbus_dir, tmp_path, monkeypatch):
    """The same mask may arrive as ids (encoded by the pipeline's own threads while the worker process
    starts) and later with the file the worker process encoded (``Mask.path``, named by its content): one
    file in the run either way, linked from the encoded one where it is written first, with its overlay.
    An encoded mask's key is read from its file's name: its ids are not hashed again in the training process."""
    from logbus.plugins.local import _backend
    from logbus.samples import overlay_of
    from logbus.samples._encoder_pool import EncoderPool

    ids = np.random.default_rng(3).integers(0, 3, (6, 4)).astype(np.uint8)
    image = np.zeros((6, 4, 3), np.uint8)
    hashed = []
    name_from_ids = _backend.mask_content_name
    monkeypatch.setattr(_backend, "mask_content_name", lambda *args: hashed.append(args) or name_from_ids(*args))
    pool = EncoderPool(folder=str(tmp_path), prefix="w0-", cache_bytes=0)  # as the worker process makes them
    try:
        encoded_a = pool.encode_mask(ids, {1: "a"}, overlay=True).result(30)
        encoded_b = pool.encode_mask(ids, {1: "b"}, overlay=True).result(30)
        with logbus.start_run("mixed", backends=["local"]) as run:
            for step, mask in enumerate([Mask(ids, {1: "a"}), Mask(ids, {1: "a"}, path=encoded_a),
                                         Mask(ids.copy(), {1: "a"}), Mask(ids, {1: "b"}, path=encoded_b),
                                         Mask(ids, {1: "b"})]):
                run.log_table("eval/samples", ["image"], [[Image(pixels=image, masks={"truth": mask})]], step=step)
    finally:
        pool.close()
    lines = read_lines(logbus_dir / "mixed" / "tables" / "eval" / "samples.jsonl")
    paths = [line["rows"][0][0]["masks"]["truth"]["path"] for line in lines]
    # Other labels: a file of its own (the viewer colours by them).
    assert paths[0] == paths[1] == paths[2] != paths[3] == paths[4]
    assert len(hashed) == 3  # the masks given as ids alone; never one given as the worker's file
    linked = logbus_dir / "mixed" / paths[3]
    np.testing.assert_array_equal(decode(linked), ids)
    assert linked.stat().st_ino == os.stat(encoded_b).st_ino  # linked, not written
    assert linked.with_name(linked.name.replace(".mask.", ".overlay.")).stat().st_ino == os.stat(overlay_of(encoded_b)).st_ino


@pytest.mark.parametrize("dtype", [np.uint8, np.int16, np.int64])
def test_the_backend_names_a_mask_given_as_ids_as_the_worker_process_names_its_file(tmp_path, dtype):
    """The one-file-either-way promise above rests on the backend computing, from ids, the content name
    that the pipeline's ``EncoderPool.encode_mask(..., overlay=True)`` gives the file (ids, shape, dtype
    and labels): this fails the day one of the two changes without the other."""
    from logbus.plugins.local._backend import _mask_content_name
    from logbus.samples import content_name
    from logbus.samples._encoder_pool import EncoderPool

    rng = np.random.default_rng(0)
    pool = EncoderPool(folder=str(tmp_path), prefix="w1-", cache_bytes=0)
    try:
        for shape in ((5, 7), (7, 5), (1, 1)):
            for labels in (None, {}, {2: "two", 0: "zero"}):
                ids = rng.integers(0, 3, shape).astype(dtype)
                path = pool.encode_mask(ids, labels, overlay=True).result(30)
                key = tuple(sorted((labels or {}).items()))
                assert _mask_content_name(Mask(ids, labels), key) == content_name(path) != path
                assert _mask_content_name(Mask(ids, labels, path=path), key) == content_name(path)
    finally:
        pool.close()


def test_class_labels_changed_in_place_between_tables_are_written_as_changed(logbus_dir):
    """The backend works a labels mapping out once for all the rows that share it; a mapping changed in
    place between two tables is the new labels in the second, with a mask file of its own (the viewer
    colours a mask file for its labels)."""
    ids = np.arange(6, dtype=np.uint8).reshape(2, 3) % 2
    image = np.zeros((2, 3, 3), np.uint8)
    labels = {0: "background", 1: "ink"}
    with logbus.start_run("relabelled", backends=["local"]) as run:
        run.log_table("seg", ["image"], [[Image(pixels=image, masks={"truth": Mask(ids, labels)})]], step=0)
        assert run.flush()
        labels[1] = "stroke"
        run.log_table("seg", ["image"], [[Image(pixels=image, masks={"truth": Mask(ids, labels)})]], step=1)
    lines = read_lines(logbus_dir / "relabelled" / "tables" / "seg.jsonl")
    first, second = (line["rows"][0][0]["masks"]["truth"] for line in lines)
    assert first["class_labels"] == {"0": "background", "1": "ink"}
    assert second["class_labels"] == {"0": "background", "1": "stroke"} and second["path"] != first["path"]
