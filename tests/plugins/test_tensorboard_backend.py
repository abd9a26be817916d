"""The TensorBoard backend, end to end: real event files read back with TensorBoard's own reader."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image as PILImage
from tensorboard.backend.event_processing import event_accumulator
from tensorboard.plugins.hparams import metadata as hparams_metadata
from tensorboard.plugins.hparams import plugin_data_pb2

import logbus
from logbus.bus import Bus
from logbus.records import REDACTED, Box, Image, Images, Mask, Metrics, RunStarted

LOSS = "loss/train/total"


def tensorboard(log_dir: Path, **options):
    return ("tensorboard", {"log_dir": str(log_dir), **options})


def read_events(folder: Path) -> event_accumulator.EventAccumulator:
    """Everything in one run folder (size guidance 0: keep every event, TensorBoard samples otherwise)."""
    assert folder.is_dir(), f"no run folder {folder}"
    events = event_accumulator.EventAccumulator(str(folder), size_guidance={
        kind: 0 for kind in event_accumulator.DEFAULT_SIZE_GUIDANCE})
    events.Reload()
    return events


def scalars(events, tag: str) -> list[tuple[int, float]]:
    return [(event.step, event.value) for event in events.Scalars(tag)]


def texts(events, tag: str) -> list[tuple[int, str]]:
    # add_text stores a string tensor under "<tag>/text_summary".
    return [(event.step, event.tensor_proto.string_val[0].decode()) for event in events.Tensors(f"{tag}/text_summary")]


def images(events, tag: str) -> list[tuple[int, np.ndarray]]:
    return [(event.step, np.asarray(PILImage.open(io.BytesIO(event.encoded_image_string))))
            for event in events.Images(tag)]


def only_image(events, tag: str) -> np.ndarray:
    found = images(events, tag)
    assert len(found) == 1, f"{tag}: {len(found)} images"
    return found[0][1]


def session_hparams(folder: Path) -> dict:
    """The HParams dashboard's view of a run: the session-start hparams, as plain values."""
    content = read_events(folder).PluginTagToContent(hparams_metadata.PLUGIN_NAME)
    start = plugin_data_pb2.HParamsPluginData.FromString(content[hparams_metadata.SESSION_START_INFO_TAG])
    return {name: getattr(value, value.WhichOneof("kind")) for name, value in start.session_start_info.hparams.items()}


# -- metrics and hyperparameters -------------------------------------------------------------------
def test_metrics_and_hyperparameters_in_composer_layout(tmp_path):
    config = {"lr": 0.1, "optimizer": {"name": "adam", "betas": [0.9, 0.99]}, "api_key": "not-for-eyes",
              "seed": np.int64(7), "mean": torch.tensor([0.5]), "shape": np.array([2, 3])}
    with logbus.start_run("metrics", backends=[tensorboard(tmp_path)], config=config) as run:
        run.log({"loss": 2.5, "lr": 0.125}, step=0)
        run.log({"loss": torch.tensor(1.25), "acc": np.float32(0.5)}, step=4)
        run.log({"metric/f1": np.float64(0.75)})  # step-less: the step after the last one
        run.log_hyperparameters({"batch_size": 4, "lr": 0.2})

    run_dir = tmp_path / "metrics"
    assert [path.name.startswith("events.out.tfevents.") for path in run_dir.iterdir() if path.is_file()] == [True]
    events = read_events(run_dir)
    assert scalars(events, "loss") == [(0, 2.5), (4, 1.25)]
    assert scalars(events, "lr") == [(0, 0.125)]
    assert scalars(events, "acc") == [(4, 0.5)]
    assert scalars(events, "metric/f1") == [(5, 0.75)]

    # Visible at once as text (all hyperparameters so far, flattened), the last one complete.
    (first_step, first), *_, (_, last) = texts(events, "hyperparameters")
    assert first_step == 0 and "| optimizer/name | adam |" in first and "batch_size" not in first
    assert "| batch_size | 4 |" in last and "| lr | 0.2 |" in last and "| optimizer/betas | [0.9, 0.99] |" in last
    assert "not-for-eyes" not in last and REDACTED in last

    # Composer's add_hparams: the session in {run}/{run}, numbers kept as numbers, paired with the
    # latest value of each loss/metric as hparams/<name>.
    assert session_hparams(run_dir / "metrics") == {
        "lr": 0.2, "optimizer/name": "adam", "optimizer/betas": "[0.9, 0.99]", "api_key": REDACTED,
        "seed": 7, "mean": 0.5, "shape": "[2, 3]", "batch_size": 4}
    session = read_events(run_dir / "metrics")
    assert sorted(session.Tags()["scalars"]) == ["hparams/loss", "hparams/metric/f1"]
    assert [value for _, value in scalars(session, "hparams/loss")] == [1.25]


def test_bad_options_fail_on_the_callers_thread(tmp_path):
    with pytest.raises(ValueError, match="flush_interval"):
        logbus.start_run("x", backends=[tensorboard(tmp_path, flush_interval=0)])
    with pytest.raises(TypeError, match="log_dir"):
        logbus.start_run("x", backends=[("tensorboard", {"log_dir": 3})])
    assert not any(tmp_path.iterdir())


# -- images ----------------------------------------------------------------------------------------
def test_logged_images_decode_to_the_same_pixels(tmp_path):
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (7, 5, 3), dtype=np.uint8)
    batch = rng.integers(0, 256, (2, 3, 4, 6), dtype=np.uint8)  # NCHW
    classes = np.array([[0, 1, 2, 1, 0, 0]] * 4, dtype=np.int64)
    jpeg, tiff = tmp_path / "photo.jpg", tmp_path / "scan.tiff"
    PILImage.fromarray(rgb).save(jpeg, quality=90)
    PILImage.fromarray(rgb).save(tiff)
    with logbus.start_run("images", backends=[tensorboard(tmp_path)]) as run:
        run.log({"loss": 1.0}, step=2)
        run.log_images("one", rgb, channels_last=True, step=2)
        run.log_images("batch", batch, masks={"pred": np.stack([classes, classes])})  # step-less: step 2
        run.bus.emit(Images("files", [Image(path=str(jpeg)), Image(path=str(tiff))], step=3))
        black = np.zeros((4, 6, 3), dtype=np.uint8)
        run.bus.emit(Images("overlay", [Image(pixels=black, masks={"pred": Mask(classes)},
                                              boxes=[Box(1, 1, 3, 2, class_id=2)])], step=3))

    events = read_events(tmp_path / "images")
    assert [step for step, _ in images(events, "one")] == [2]
    np.testing.assert_array_equal(only_image(events, "one"), rgb)
    for index in range(2):
        assert [step for step, _ in images(events, f"batch/{index}")] == [2]
        np.testing.assert_array_equal(only_image(events, f"batch/{index}"), batch[index].transpose(1, 2, 0))
        assert only_image(events, f"batch/{index}/pred").shape == (4, 6, 3)

    # An encoded JPEG is stored as its own bytes; a format browsers cannot show is decoded, stored as PNG.
    assert events.Images("files/0")[0].encoded_image_string == jpeg.read_bytes()
    assert events.Images("files/1")[0].encoded_image_string.startswith(b"\x89PNG")
    np.testing.assert_array_equal(only_image(events, "files/1"), rgb)

    # On a black image the overlay is half the class colour: class 0 stays black, classes differ.
    overlay = only_image(events, "overlay/pred")
    np.testing.assert_array_equal(only_image(events, "overlay"), black)
    assert not overlay[classes == 0].any()
    colour_1, colour_2 = overlay[0, 1], overlay[0, 2]
    assert colour_1.any() and colour_2.any() and not np.array_equal(colour_1, colour_2)
    assert (overlay[classes == 1] == colour_1).all() and (overlay[classes == 2] == colour_2).all()
    boxed = only_image(events, "overlay/boxes")
    outline = np.zeros((4, 6), dtype=bool)
    outline[1:3, 1:4] = True  # the box covers x 1..3, y 1..2: a 2-row rectangle is all outline
    assert boxed[outline].any(axis=1).all() and not boxed[~outline].any()


# -- tables ----------------------------------------------------------------------------------------
def test_table_as_markdown_text_and_an_image_grid(tmp_path):
    rng = np.random.default_rng(1)
    rgb = rng.integers(0, 256, (7, 5, 3), dtype=np.uint8)
    small = rng.integers(0, 256, (4, 6, 3), dtype=np.uint8)
    png = tmp_path / "small.png"
    PILImage.fromarray(small).save(png)
    truth = np.ones((4, 6), dtype=np.int64)
    columns = ["id", "text", "image", "score"]
    rows = [[1, "a|b\nline two <x>", Image(pixels=rgb, caption="cat"), 0.5],
            [2, None, Image(path=str(png), masks={"truth": Mask(truth)}), True],
            [3, "plain", None, 1.0]]
    with logbus.start_run("tables", backends=[tensorboard(tmp_path)]) as run:
        run.log_table("samples/val", columns, rows, step=7)

    events = read_events(tmp_path / "tables")
    [(step, text)] = texts(events, "samples/val")
    assert step == 7
    assert text.splitlines() == [
        "| id | text | image | score |",
        "|---|---|---|---|",
        "| 1 | a\\|b<br>line two &lt;x&gt; | [image: cat] | 0.5 |",
        "| 2 |  | [image] | True |",
        "| 3 | plain |  | 1.0 |",
    ]
    with warnings.catch_warnings():  # its vendored html5lib warns about itself on import
        warnings.simplefilter("ignore", DeprecationWarning)
        from tensorboard.plugin_util import markdown_to_safe_html
    page = markdown_to_safe_html(text)  # what TensorBoard's text dashboard shows
    assert page.count("<tr>") == 4 and "a|b<br>line two &lt;x&gt;" in page

    # A tile per image and per mask overlay, padded to 7 x 6, 2 white pixels apart; empty tiles black.
    [(step, grid)] = images(events, "samples/val/images")
    assert step == 7 and grid.shape == (3 * 7 + 2 * 2, 2 * 6 + 2, 3)
    np.testing.assert_array_equal(grid[0:7, 0:5], rgb)
    np.testing.assert_array_equal(grid[9:13, 0:6], small)  # the PNG cell, decoded
    overlay = grid[9:13, 8:14]
    assert overlay.shape == small.shape and not np.array_equal(overlay, small) and overlay.any()
    assert not grid[0:7, 8:14].any()  # row 1 has no mask
    assert not grid[18:25, 0:6].any() and not grid[18:25, 8:14].any()  # row 3 has no image
    assert (grid[7:9] == 255).all() and (grid[:, 6:8] == 255).all()


def test_grid_of_a_long_table_shows_the_first_rows_and_says_so(tmp_path):
    tile = np.full((2, 2, 3), 9, dtype=np.uint8)
    with logbus.start_run("long", backends=[tensorboard(tmp_path, table_image_rows=2)]) as run:
        run.log_table("t", ["i", "image"], [[i, Image(pixels=tile)] for i in range(5)], step=0)
    events = read_events(tmp_path / "long")
    [(_, text)] = texts(events, "t")
    assert len(text.splitlines()) == 2 + 5 + 2 and text.endswith("shows the first 2 of 5 rows.")
    assert only_image(events, "t/images").shape == (2 * 2 + 2, 2, 3)


# -- ranks -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("rank_zero_only", [True, False])
def test_rank_1_of_2_writes_only_when_every_rank_logs(tmp_path, rank_zero_only):
    bus = Bus([tensorboard(tmp_path / "tb", rank_zero_only=rank_zero_only)])
    bus.emit(RunStarted(run_name="ranked", rank=1, world_size=2))
    bus.emit(Metrics({"loss": 1.5}, step=0))
    bus.emit(Images("image", [Image(pixels=np.zeros((2, 2, 3), dtype=np.uint8))], step=0))
    assert bus.close()
    assert bus.stats()["backends"]["tensorboard"]["failures"] == 0
    if rank_zero_only:
        assert not (tmp_path / "tb").exists()
    else:
        assert [path.name for path in (tmp_path / "tb").iterdir()] == ["ranked-rank1"]
        assert scalars(read_events(tmp_path / "tb" / "ranked-rank1"), "loss") == [(0, 1.5)]


# -- Composer --------------------------------------------------------------------------------------
@pytest.mark.filterwarnings("ignore:No optimizer was specified", "ignore:Artifact names allow only")
def test_composer_trainer_matches_composers_own_tensorboard_logger(tmp_path):
    # Composer's TensorboardLogger "uploads" its event files through every logger, ours included:
    # that is the artifact-name warning; the tensorboard backend does not take artifacts.
    import composer
    from composer import Trainer
    from composer.loggers import TensorboardLogger
    from composer.models import ComposerClassifier

    from logbus.composer import LogBusLogger
    from logbus.demo import DigitsCNN, digits_loaders

    train_loader, _ = digits_loaders(batch_size=16)
    torch.manual_seed(0)
    ours = LogBusLogger(backends=[tensorboard(tmp_path / "logbus")])
    trainer = Trainer(model=ComposerClassifier(DigitsCNN(), num_classes=10), train_dataloader=train_loader,
                      max_duration="2ba", device="cpu", progress_bar=False, seed=0, run_name="tb-composer",
                      loggers=[ours, TensorboardLogger(log_dir=str(tmp_path / "composer"))])
    trainer.fit()
    trainer.close()

    composers = read_events(tmp_path / "composer" / "tb-composer")
    logbus_events = read_events(tmp_path / "logbus" / "tb-composer")
    expected = scalars(composers, LOSS)
    assert [step for step, _ in expected] == [0, 1]
    assert scalars(logbus_events, LOSS) == expected
    hparams = session_hparams(tmp_path / "logbus" / "tb-composer" / "tb-composer")
    assert hparams["composer_version"] == composer.__version__ and hparams["rank_zero_seed"] == 0
    assert "| composer_version |" in texts(logbus_events, "hyperparameters")[-1][1]


# -- plugin registration ---------------------------------------------------------------------------
def test_listed_by_logbus_plugins_and_imports_no_torch():
    script = Path(sys.executable).with_name("logbus")
    command = [str(script)] if script.exists() else [sys.executable, "-m", "logbus.cli"]
    listed = subprocess.run([*command, "plugins", "--json"], capture_output=True, text=True, timeout=120, check=True)
    registers = {entry["name"]: entry["registers"] for entry in json.loads(listed.stdout)}
    assert registers["logbus.plugins.tensorboard"] == ["backend:tensorboard"]

    subprocess.run([sys.executable, "-c", "import logbus.plugins.tensorboard, sys; "
                    "assert 'torch' not in sys.modules, 'torch imported'; "
                    "assert 'tensorboard' not in sys.modules, 'tensorboard imported'"],
                   capture_output=True, text=True, timeout=120, check=True)
