"""The W&B backend, end to end: real offline wandb runs, read back with ``wandb leet inspect``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image as PILImage
from PIL.PngImagePlugin import PngInfo
from wandb_reader import find_run_dirs, read_only_run, read_wandb_run

import logbus
from logbus.bus import Bus
from logbus.records import REDACTED, Image, Mask, Metrics, RunStarted, Table

FAKE_API_KEY = "f4ke0123456789abcdef0123456789abcdef4242"


def wandb_spec(**options):
    return ("wandb", {"project": "logbus-tests", **options})


def decode(path) -> np.ndarray:
    with PILImage.open(path) as image:
        return np.asarray(image)


# -- metrics and run lifecycle ---------------------------------------------------------------------
def test_metrics_arrive_at_their_steps_with_their_values(wandb_offline):
    with logbus.start_run("metrics", backends=[wandb_spec()]) as run:
        run.log({"loss": 2.5, "lr": 0.1}, step=0)
        run.log({"loss": 1.25}, step=1)
        run.log({"loss": torch.tensor(0.75), "acc": np.float32(0.5)}, step=4)
        run.log({"loss": 0.375, "acc": 0.625, "count": 7}, step=9)

    wandb_run = read_only_run(wandb_offline)
    assert wandb_run.name == "metrics"
    assert wandb_run.run["project"] == "logbus-tests"
    assert wandb_run.metric("loss") == [(0, 2.5), (1, 1.25), (4, 0.75), (9, 0.375)]
    assert wandb_run.metric("acc") == [(4, 0.5), (9, 0.625)]
    assert wandb_run.metric("lr") == [(0, 0.1)]
    assert wandb_run.metric("count") == [(9, 7)]
    assert [item["_step"] for item in wandb_run.history] == [0, 1, 4, 9]
    assert wandb_run.exit_code == 0


def test_with_block_that_raises_finishes_the_run_with_exit_code_1(wandb_offline):
    with pytest.raises(RuntimeError, match="diverged"):
        with logbus.start_run("raises", backends=[wandb_spec()]) as run:
            run.log({"loss": 1.0}, step=0)
            run.log({"loss": 3.0}, step=1)
            raise RuntimeError("loss diverged")

    wandb_run = read_only_run(wandb_offline)
    assert wandb_run.exit_code == 1
    assert wandb_run.metric("loss") == [(0, 1.0), (1, 3.0)]  # what came before the error is kept


EARLY_CRASH = textwrap.dedent("""
    import sys
    import time

    import logbus

    run = logbus.start_run("early-crash", backends=["local", ("wandb", {"project": "early"})])
    for step in range(3):
        run.log({"loss": 1.0 / (step + 1)}, step=step)
    # Die while wandb.init is still running on the writer thread, once wandb's service is up: the
    # service's own exit hook must not tear it down before the bus has delivered and finished the run.
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        setup = sys.modules.get("wandb.sdk.wandb_setup")
        if getattr(getattr(setup, "_singleton", None), "_connection", None) is not None:
            break
        time.sleep(0.001)
    raise RuntimeError("died early")
""")


def test_a_process_dying_while_wandb_starts_still_delivers_the_run(wandb_offline, logbus_dir, tmp_path):
    script = tmp_path / "script" / "early.py"
    script.parent.mkdir()
    script.write_text(EARLY_CRASH)
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120,
                            cwd=tmp_path, env=dict(os.environ), check=False)
    assert result.returncode == 1 and "died early" in result.stderr
    assert "Connection lost" not in result.stderr, result.stderr[-3000:]

    wandb_run = read_only_run(wandb_offline)
    assert wandb_run.metric("loss") == [(0, 1.0), (1, 0.5), (2, 1 / 3)]
    assert wandb_run.exit_code == 1
    status = json.loads((logbus_dir / "early-crash" / "run.json").read_text())
    assert (status["status"], status["exit_code"], status["reason"]) == ("failed", 1, "uncaught exception")


# -- configuration ---------------------------------------------------------------------------------
def test_secrets_are_redacted_and_the_api_key_is_never_written(wandb_offline, logbus_dir, monkeypatch):
    monkeypatch.setenv("WANDB_API_KEY", FAKE_API_KEY)
    secrets = {"api_key": "sk-apikey-value-1", "password": "hunter2-password-value",
               "hf_token": "hf_tokenvalue_XYZ", "db": {"secret": "db-secret-value", "host": "db.local"}}
    with logbus.start_run("secrets", backends=["local", wandb_spec(init_kwargs={"config": {"init_password": "init-pw-value"}})],
                          config={"lr": 0.01, **secrets, "copied_key": FAKE_API_KEY}) as run:
        run.log_hyperparameters({"batch_size": 8, "auth": {"OPENAI_API_KEY": "sk-later-value"},
                                 "endpoints": ["https://x", FAKE_API_KEY]})
        run.log({"loss": 1.0}, step=0)

    config = read_only_run(wandb_offline).config
    assert config["lr"] == 0.01 and config["batch_size"] == 8
    assert config["db"] == {"secret": REDACTED, "host": "db.local"}
    for key in ("api_key", "password", "hf_token", "init_password", "copied_key"):
        assert config[key] == REDACTED, key
    assert config["auth"] == {"OPENAI_API_KEY": REDACTED}
    assert config["endpoints"] == ["https://x", REDACTED]
    local = json.loads(next(logbus_dir.glob("secrets*/hparams.json")).read_text())
    assert local["password"] == REDACTED and local["db"]["secret"] == REDACTED and local["lr"] == 0.01

    leaked = [FAKE_API_KEY, "sk-apikey-value-1", "hunter2-password-value", "hf_tokenvalue_XYZ", "db-secret-value",
              "init-pw-value", "sk-later-value"]
    files = [path for root in (wandb_offline, logbus_dir) for path in root.rglob("*") if path.is_file()]
    assert any(path.suffix == ".wandb" for path in files) and any(path.name == "hparams.json" for path in files)
    for path in files:
        data = path.read_bytes()
        for secret in leaked:
            assert secret.encode() not in data, f"{secret!r} written to {path}"


def test_init_kwargs_are_passed_to_wandb_and_their_config_merged(wandb_offline):
    init_kwargs = {"config": {"arch": "Llama", "lr": 1.0}, "notes": "merge notes", "tags": ["a", "b"],
                   "project": "overridden", "group": "sweep-7"}
    with logbus.start_run("merged", backends=[wandb_spec(init_kwargs=init_kwargs)],
                          config={"lr": 0.5, "epochs": 3}) as run:
        run.log_hyperparameters({"epochs": 4})

    wandb_run = read_only_run(wandb_offline)
    # Composer's meaning: explicit arguments win over init_kwargs; the run's own config over init config.
    assert wandb_run.run["project"] == "logbus-tests"
    assert wandb_run.run["notes"] == "merge notes"
    assert wandb_run.run["tags"] == ["a", "b"]
    assert wandb_run.run["run_group"] == "sweep-7"
    assert wandb_run.config == {"arch": "Llama", "lr": 0.5, "epochs": 4}
    assert init_kwargs["config"] == {"arch": "Llama", "lr": 1.0}, "the caller's dict must not be modified"


def test_every_backend_option_passes_through_a_name_option_included(wandb_offline):
    """``("wandb", {"name": ...})``: the backend's own ``name`` argument (the W&B run name), not the
    name the backend is registered under."""
    from logbus.composer import LogBusLogger

    with logbus.start_run("plain-loop", backends=[wandb_spec(name="named-by-option")]) as run:
        run.log({"loss": 1.0}, step=0)
    logger = LogBusLogger(backends=[wandb_spec(name="composer-named")])
    logger.bus.emit(RunStarted(run_name="composer-run"))
    assert logger.bus.close()

    names = sorted(read_wandb_run(run_dir).name for run_dir in find_run_dirs(wandb_offline))
    assert names == ["composer-named", "named-by-option"]


# -- ranks -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("rank", [0, 1])
def test_rank_zero_only_logs_on_rank_zero_alone(wandb_offline, rank):
    bus = Bus([wandb_spec(rank_zero_only=True)])
    bus.emit(RunStarted(run_name="ranked", rank=rank, world_size=2))
    bus.emit(Metrics({"loss": 1.0}, step=0))
    assert bus.close()
    runs = find_run_dirs(wandb_offline)
    if rank == 0:
        assert len(runs) == 1 and read_wandb_run(runs[0]).metric("loss") == [(0, 1.0)]
    else:
        assert runs == []


@pytest.mark.parametrize(("group", "expected_group"), [(None, "ranked"), ("my-group", "my-group")])
def test_every_rank_logs_its_own_run_grouped_when_not_rank_zero_only(wandb_offline, group, expected_group):
    bus = Bus([wandb_spec(rank_zero_only=False, group=group)])
    bus.emit(RunStarted(run_name="ranked", rank=1, world_size=2))
    bus.emit(Metrics({"loss": 2.0}, step=3))
    assert bus.close()
    wandb_run = read_only_run(wandb_offline)
    assert wandb_run.name == "ranked-rank1"
    assert wandb_run.run["run_group"] == expected_group
    assert wandb_run.metric("loss") == [(3, 2.0)]


# -- tables and images -----------------------------------------------------------------------------
def test_table_rows_with_image_cells_masks_and_captions(wandb_offline):
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, size=(6, 5, 3), dtype=np.uint8)
    grey = rng.integers(0, 256, size=(6, 5, 1), dtype=np.uint8)
    mask = rng.integers(0, 3, size=(6, 5)).astype(np.int64)
    labels = {0: "background", 1: "cat", 2: "dog"}
    image = Image(pixels=rgb, caption="a cat, maybe", masks={"prediction": Mask(mask, labels)})
    with logbus.start_run("tables", backends=[wandb_spec()]) as run:
        run.log({"loss": 1.0}, step=1)
        run.log_table("samples/val", ["id", "label", "score", "image"],
                      [[0, "cat", 0.9, image], [1, "dog", 0.25, Image(pixels=grey)]], step=2)
        run.log_table("samples/val", ["id", "label", "score", "image"], [[2, "none", None, None]], step=5)

    tables = read_only_run(wandb_offline).tables("samples/val")
    columns = ["id", "label", "score", "image"]
    assert [(step, names) for step, names, _ in tables] == [(2, columns), (5, columns)]
    rows = tables[0][2]
    assert [row[:3] for row in rows] == [[0, "cat", 0.9], [1, "dog", 0.25]]
    first, second = rows[0][3], rows[1][3]
    assert first["caption"] == "a cat, maybe"
    np.testing.assert_array_equal(decode(first["file"]), rgb)
    np.testing.assert_array_equal(decode(second["file"]).reshape(6, 5, 1), grey)
    np.testing.assert_array_equal(decode(first["masks"]["prediction"]["file"]), mask)
    assert first["class_labels"] == labels
    assert tables[1][2] == [[2, "none", None, None]]


def test_table_masks_go_to_wandb_as_files_stored_once_and_the_scratch_is_emptied_per_table(wandb_offline, tmp_path):
    """Masks of table cells are encoded by logbus and handed to wandb as files: each comes back
    pixel for pixel with its class names (named ones, or wandb's own ``class_<id>`` where none are
    given), equal masks in one table are stored once, and the scratch files are gone as soon as
    the table is logged (wandb keeps its own copy), not at the end of the run."""
    from logbus.plugins.wandb import WandBBackend
    from logbus.records import RunFinished

    rng = np.random.default_rng(3)
    pixels = [rng.integers(0, 256, (6, 5, 3), dtype=np.uint8) for _ in range(3)]
    truth = [rng.integers(0, 3, (6, 5), dtype=np.uint8) for _ in range(3)]
    same = rng.integers(0, 4, (6, 5)).astype(np.int64)  # one prediction for every row, unnamed classes
    labels = {0: "sky", 1: "tree", 2: "road"}
    backend = WandBBackend(project="logbus-tests")
    backend.log(RunStarted("mask-files"))
    scratch = []
    for step, join_key in ((1, "id"), (2, "id"), (3, None)):
        rows = [[i, Image(path=png(tmp_path / f"{i}.png", pixels[i]),
                          masks={"ground_truth": Mask(truth[i], labels), "prediction": Mask(same)})]
                for i in range(3)]
        backend.log(Table("samples/eval" if join_key else "whole", ["id", "image"], rows, step=step,
                          join_key=join_key))
        folder = backend._mask_files._folder.name
        scratch.append(os.listdir(folder))
    backend.close(RunFinished())
    assert scratch == [[], [], []] and not os.path.exists(folder)

    wandb_run = read_only_run(wandb_offline)
    tables = [*wandb_run.tables("samples/eval"), *wandb_run.tables("whole")]
    assert [step for step, _, _ in tables] == [1, 2, 3]
    unnamed = {int(c): f"class_{c}" for c in np.unique(same)}
    # A joined row shows the reference cell's classes (the ground truth's); a whole cell has wandb's
    # own merge of every mask's classes, a later mask's names winning.
    for (step, _, rows), classes in zip(tables, (labels, labels, {**labels, **unnamed})):
        assert [row[0] for row in rows] == [0, 1, 2]
        for i, row in enumerate(rows):
            cell = row[1]
            np.testing.assert_array_equal(decode(cell["file"]), pixels[i])
            np.testing.assert_array_equal(decode(cell["masks"]["ground_truth"]["file"]), truth[i])
            np.testing.assert_array_equal(decode(cell["masks"]["prediction"]["file"]), same)
            assert {int(k): v for k, v in cell["class_labels"].items()} == classes, step
    # The same prediction in every row: one stored file for all three, in each table.
    for _, _, rows in tables:
        assert len({row[1]["masks"]["prediction"]["file"] for row in rows}) == 1


def test_an_encoded_png_path_is_stored_byte_for_byte(wandb_offline, logbus_dir, tmp_path):
    pixels = np.arange(7 * 9 * 3, dtype=np.uint8).reshape(7, 9, 3)
    # Maximum compression and a text chunk: any re-encode by wandb or logbus would change the bytes.
    info = PngInfo()
    info.add_text("origin", "encoded-by-the-user")
    source = tmp_path / "encoded.png"
    PILImage.fromarray(pixels).save(source, format="PNG", compress_level=9, pnginfo=info)
    original = source.read_bytes()

    with logbus.start_run("encoded", backends=[wandb_spec(), "local"]) as run:
        run.log_table("encoded", ["image"], [[Image(path=str(source), caption="as is")]], step=0)

    [(step, _, rows)] = read_only_run(wandb_offline).tables("encoded")
    cell = rows[0][0]
    assert step == 0 and cell["caption"] == "as is"
    assert Path(cell["file"]).read_bytes() == original
    [local_cell] = logbus.read_table(next(logbus_dir.glob("encoded*")), "encoded").image
    assert local_cell.encoded() == (original, "image/png")  # the local store keeps the file's bytes as they were


def test_images_logged_as_a_list(wandb_offline):
    float_images = np.linspace(0.0, 1.0, 2 * 3 * 4 * 4, dtype=np.float32).reshape(2, 3, 4, 4)
    masks = np.stack([np.eye(4, dtype=np.int64), 2 * np.eye(4, dtype=np.int64)[::-1]])
    with logbus.start_run("images", backends=[wandb_spec()]) as run:
        run.log_images("inputs", float_images, step=3, masks={"truth": masks}, mask_class_labels={0: "bg", 1: "a", 2: "b"})

    [(step, images)] = read_only_run(wandb_offline).images("inputs")
    assert step == 3 and len(images) == 2
    for image, floats, mask in zip(images, float_images, masks):
        stored = decode(image["file"]).astype(int)
        expected = np.rint(floats.transpose(1, 2, 0) * 255)
        assert np.abs(stored - expected).max() <= 1  # [0, 1] floats become uint8, not black
        np.testing.assert_array_equal(decode(image["masks"]["truth"]), mask)


# -- artifacts -------------------------------------------------------------------------------------
@pytest.mark.parametrize("log_artifacts", [True, False])
def test_artifacts_are_logged_only_with_log_artifacts(wandb_offline, tmp_path, log_artifacts):
    weights = tmp_path / "weights.pt"
    weights.write_bytes(b"\x00weights\xff" * 100)
    with logbus.start_run("artifacts", backends=[wandb_spec(log_artifacts=log_artifacts)]) as run:
        run.log_artifact(str(weights), "weights.pt", type="model", aliases=["latest", "ep1-ba2"])
        run.log({"loss": 1.0}, step=0)

    artifacts = read_only_run(wandb_offline).user_artifacts()
    if not log_artifacts:
        assert artifacts == []
        return
    [artifact] = artifacts
    assert (artifact.name, artifact.type, set(artifact.aliases)) == ("weights.pt", "model", {"latest", "ep1-ba2"})
    assert list(artifact.files) == ["weights.pt"]
    assert Path(artifact.files["weights.pt"]).read_bytes() == weights.read_bytes()


def test_composer_checkpoints_become_model_artifacts_with_epoch_batch_aliases(wandb_offline, tmp_path, monkeypatch):
    from composer import Trainer
    from composer.models import ComposerClassifier

    from logbus.composer import LogBusLogger
    from logbus.demo import DigitsCNN, digits_loaders

    monkeypatch.chdir(tmp_path)
    train_loader, _ = digits_loaders(batch_size=16)
    torch.manual_seed(0)
    trainer = Trainer(model=ComposerClassifier(DigitsCNN(), num_classes=10), train_dataloader=train_loader,
                      train_subset_num_batches=2, max_duration="2ep", device="cpu", progress_bar=False, seed=0,
                      run_name="ckpt-run", save_folder="checkpoints", save_interval="1ep",
                      loggers=[LogBusLogger(backends=[wandb_spec(log_artifacts=True)])])
    trainer.fit()
    trainer.close()

    models = [artifact for artifact in read_only_run(wandb_offline).user_artifacts() if artifact.type == "model"]
    assert [set(artifact.aliases) for artifact in models] == [{"latest", "ep1-ba2"}, {"latest", "ep2-ba4"}]
    for artifact, tag in zip(models, ("ep1-ba2", "ep2-ba4")):
        checkpoint = tmp_path / "checkpoints" / f"{tag}-rank0.pt"
        assert artifact.name == f"checkpoints.{tag}-rank0.pt"  # Composer's name: '/' -> '.'
        assert list(artifact.files) == [checkpoint.name]  # the file keeps its name, as with Composer's logger
        assert Path(artifact.files[checkpoint.name]).read_bytes() == checkpoint.read_bytes()
        assert artifact.metadata["timestamp/batch"] == int(tag.split("-ba")[1])


def test_the_default_wandb_dir_is_used_for_the_run(wandb_offline):
    # Guards the fixture itself: a cached wandb singleton from an earlier test would put runs elsewhere.
    with logbus.start_run("where", backends=[wandb_spec()]) as run:
        run.log({"x": 1.0}, step=0)
    [run_dir] = find_run_dirs(wandb_offline)
    assert run_dir.parent == wandb_offline / "wandb"
    assert os.environ["WANDB_MODE"] == "offline"


def test_download_file_on_a_rank_without_a_run_needs_a_project(tmp_path):
    """A rank that never started a run (rank_zero_only) can still be asked for a checkpoint: without a
    configured project it says what is missing instead of failing somewhere inside wandb."""
    from logbus.plugins.wandb import WandBBackend

    with pytest.raises(RuntimeError, match="project is unknown"):
        WandBBackend().download_file("ckpt.pt", str(tmp_path / "out.pt"))
    existing = tmp_path / "exists.pt"
    existing.write_bytes(b"x")
    with pytest.raises(FileExistsError, match="destination"):
        WandBBackend(project="p", entity="e").download_file("ckpt.pt", str(existing))


# -- sample tables: images once, each eval joined to them ------------------------------------------
def png(path, pixels) -> str:
    PILImage.fromarray(pixels).save(path)
    return str(path)


def test_a_sample_table_whose_images_changed_gets_a_new_reference_and_a_user_table_is_logged_whole(
        wandb_offline, tmp_path):
    """The join key says which sample a row is; the content says whether its image is the one logged
    before. Same ids with other images (a shuffled eval set, another policy's picks) log a new
    reference table, never a row joined to the wrong image."""
    rng = np.random.default_rng(0)
    first = [rng.integers(0, 256, (6, 5, 3), dtype=np.uint8) for _ in range(3)]
    second = [first[0], rng.integers(0, 256, (6, 5, 3), dtype=np.uint8), first[2]]  # row 1 changed

    def sample_table(images, step, name):
        rows = [[i, Image(path=png(tmp_path / f"{name}-{i}.png", pixels)), step + i] for i, pixels in enumerate(images)]
        return Table("samples/eval", ["id", "image", "score"], rows, step=step, join_key="id")

    with logbus.start_run("changed", backends=[wandb_spec()]) as run:
        run.bus.emit(sample_table(first, 1, "a"))
        run.bus.emit(sample_table(first, 2, "b"))  # other files, same bytes: still the same images
        run.bus.emit(sample_table(second, 3, "c"))
        run.log_table("user", ["id", "image"], [[0, Image(pixels=first[0])]], step=4)

    wandb_run = read_only_run(wandb_offline)
    assert [item["_step"] for item in wandb_run.history if "samples/eval/reference._type" in item] == [1, 3]
    assert [item.get("samples/eval._type") for item in wandb_run.history][:3] == ["joined-table"] * 3
    for (step, columns, rows), images in zip(wandb_run.tables("samples/eval"), (first, first, second)):
        assert columns == ["id", "image", "score"]
        assert [(row[0], row[2]) for row in rows] == [(0, step), (1, step + 1), (2, step + 2)]
        for row, pixels in zip(rows, images):
            np.testing.assert_array_equal(decode(row[1]["file"]), pixels)
    (_, columns, rows), = wandb_run.tables("user")  # no join key: one table, as before
    assert wandb_run.history[-1]["user._type"] == "table-file"
    np.testing.assert_array_equal(decode(rows[0][1]["file"]), first[0])
