"""The Composer adapter in a real ``Trainer``: the drop-in ``WandBLogger`` and ``LogBusLogger``."""

from __future__ import annotations

import inspect
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import composer
import composer.loggers
import numpy as np
import pandas as pd
import pytest
import torch
from composer import Callback, Trainer
from composer.loggers import LoggerDestination
from composer.models import ComposerClassifier
from local_reader import assert_same_series, decode, local_series, logged_tables, read_lines
from wandb_reader import read_only_run

import logbus
import logbus.composer
from logbus.composer import LogBusLogger, WandBLogger
from logbus.demo import DigitsCNN, digits_loaders

LOSS = "loss/train/total"


class ComposerCalls(LoggerDestination):
    """A second logger in the same Trainer: what Composer itself handed to its loggers."""

    def __init__(self):
        self.metrics: list[tuple[int, dict]] = []
        self.hyperparameters: dict = {}

    def log_metrics(self, metrics, step=None):
        self.metrics.append((step, {name: float(value) for name, value in metrics.items()}))

    def log_hyperparameters(self, hyperparameters):
        self.hyperparameters.update(hyperparameters)

    def series(self, name: str) -> list[tuple[int, float]]:
        return [(step, metrics[name]) for step, metrics in self.metrics if name in metrics]


def make_trainer(loggers, *, callbacks=(), batches: int = 4, **options) -> Trainer:
    train_loader, _ = digits_loaders(batch_size=16)
    torch.manual_seed(0)
    options.setdefault("max_duration", f"{batches}ba")
    return Trainer(model=ComposerClassifier(DigitsCNN(), num_classes=10), train_dataloader=train_loader,
                   loggers=list(loggers), callbacks=list(callbacks), device="cpu", progress_bar=False, seed=0,
                   **options)



# -- the drop-in WandBLogger -----------------------------------------------------------------------
def test_wandb_logger_has_composers_signature():
    ours = inspect.signature(logbus.composer.WandBLogger)
    theirs = inspect.signature(composer.loggers.WandBLogger)
    assert ours == theirs
    assert [(p.name, p.default) for p in ours.parameters.values()] == [
        ("project", None), ("group", None), ("name", None), ("entity", None), ("tags", None),
        ("log_artifacts", False), ("rank_zero_only", True), ("init_kwargs", None)]
    assert issubclass(WandBLogger, LoggerDestination)


def test_seed_usage_from_the_wandb_guide_works_by_changing_only_the_import(wandb_offline, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    wandb_logger = WandBLogger(project="gpt-5", log_artifacts=True,
                               init_kwargs={"notes": "testing",
                                            "config": {"arch": "Llama", "use_mixed_precision": True}})
    composer_calls = ComposerCalls()
    trainer = make_trainer([wandb_logger, composer_calls], run_name="guide-run", max_duration="2ep",
                           train_subset_num_batches=2, save_folder="checkpoints", save_interval="1ep")
    trainer.fit()
    trainer.close()

    run = read_only_run(wandb_offline)
    assert run.name == "guide-run"  # State.run_name when no name is given
    assert (run.run["project"], run.run["notes"]) == ("gpt-5", "testing")
    assert run.config["arch"] == "Llama" and run.config["use_mixed_precision"] is True
    assert run.config["composer_version"] == composer.__version__
    assert composer_calls.hyperparameters, "Composer logged no hyperparameters"
    for key, value in composer_calls.hyperparameters.items():
        assert run.config[key] == value, key
    expected_loss = composer_calls.series(LOSS)
    assert [step for step, _ in expected_loss] == [0, 1, 2, 3]
    assert_same_series(run.metric(LOSS), expected_loss)
    models = [artifact for artifact in run.user_artifacts() if artifact.type == "model"]
    assert [(artifact.name, set(artifact.aliases)) for artifact in models] == [
        ("checkpoints.ep1-ba2-rank0.pt", {"latest", "ep1-ba2"}),
        ("checkpoints.ep2-ba4-rank0.pt", {"latest", "ep2-ba4"})]
    assert run.exit_code == 0
    assert Path(wandb_logger.run_dir).parent == run.run_dir
    assert wandb_logger.project == "gpt-5"


def test_algorithm_traces_do_not_make_wandb_drop_the_loss(wandb_offline):
    # Composer logs algorithm traces (no step) before the loss of the same batch. A step-less
    # wandb.log commits the row, and wandb then silently drops the loss logged at that step.
    from composer.algorithms import LabelSmoothing

    composer_calls = ComposerCalls()
    trainer = make_trainer([WandBLogger(project="traces"), composer_calls], batches=3,
                           algorithms=[LabelSmoothing(smoothing=0.1)])
    trainer.fit()
    trainer.close()

    run = read_only_run(wandb_offline)
    assert_same_series(run.metric(LOSS), composer_calls.series(LOSS))
    assert [step for step, _ in run.metric("traces/algorithm_traces/LabelSmoothing/Event.BEFORE_LOSS")] == [0, 1, 2]


# -- LogBusLogger: every LoggerDestination method --------------------------------------------------
FLOAT_IMAGES = np.linspace(0.0, 1.0, 2 * 3 * 5 * 4, dtype=np.float32).reshape(2, 3, 5, 4)
MASKS = np.stack([np.arange(20).reshape(5, 4) % 3, np.arange(20).reshape(5, 4) % 2]).astype(np.int64)
CLASS_LABELS = {0: "sky", 1: "road", 2: "car"}


class LogEverything(Callback):
    """Calls every Logger method the way a user's callback would, at the end of batch 2."""

    def batch_end(self, state, logger):
        if int(state.timestamp.batch) != 2:
            return
        logger.log_hyperparameters({"from_callback": 3, "optimizer": {"name": "sgd"}})
        logger.log_metrics({"custom/score": 0.5})
        logger.log_traces({"debug/flag": True, "debug/count": 4, "debug/label": "not a number"})
        logger.log_table(columns=["id", "label"], rows=[[0, "cat"], [1, "dog"]], name="predictions")
        logger.log_images(torch.from_numpy(FLOAT_IMAGES), name="inputs", masks={"segmentation": MASKS},
                          mask_class_labels=CLASS_LABELS, use_table=False)
        logger.log_images(FLOAT_IMAGES[0], name="single")  # Logger.log_images defaults to use_table=True


def test_logbus_logger_forwards_every_destination_method_to_every_backend(wandb_offline, logbus_dir, tmp_path):
    bus_logger = LogBusLogger(backends=["local", "wandb"])
    trainer = make_trainer([bus_logger], callbacks=[LogEverything()], run_name="everything")
    trainer.fit()
    assert trainer.logger.has_file_upload_destination()
    notes = tmp_path / "notes.txt"
    notes.write_text("uploaded after fit")
    trainer.logger.upload_file("reports/notes.txt", notes)
    trainer.close()

    local_dir = logbus_dir / "everything"
    run = read_only_run(wandb_offline)

    hparams = json.loads((local_dir / "hparams.json").read_text())
    for config in (hparams, run.config):
        assert config["from_callback"] == 3 and config["optimizer"] == {"name": "sgd"}
        assert config["composer_version"] == composer.__version__

    for series in (local_series(local_dir, "custom/score"), run.metric("custom/score")):
        assert series == [(2, 0.5)]
    for name, value in (("traces/debug/flag", 1.0), ("traces/debug/count", 4.0)):
        assert local_series(local_dir, name) == run.metric(name) == [(2, value)]
    assert not any("traces/debug/label" in item for item in run.history)

    [local_table] = logged_tables(local_dir, "predictions")
    assert (local_table["step"], local_table["columns"], local_table["rows"]) == (2, ["id", "label"],
                                                                               [[0, "cat"], [1, "dog"]])
    assert run.tables("predictions") == [(2, ["id", "label"], [[0, "cat"], [1, "dog"]])]

    # Float images in [0, 1] arrive as uint8 (current wandb no longer rescales floats: they would be black).
    expected = [np.rint(image.transpose(1, 2, 0) * 255) for image in FLOAT_IMAGES]
    [local_images] = logged_tables(local_dir, "inputs")
    [(step, wandb_images)] = run.images("inputs")
    assert local_images["step"] == step == 2
    for index, (pixels, mask) in enumerate(zip(expected, MASKS)):
        cell = local_images["rows"][index][0]
        for stored in (decode(cell["file"]), decode(wandb_images[index]["file"])):
            assert stored.shape == (5, 4, 3) and stored.max() > 100
            assert np.abs(stored.astype(int) - pixels).max() <= 1
        np.testing.assert_array_equal(decode(cell["masks"]["segmentation"]["file"]), mask)
        assert cell["masks"]["segmentation"]["class_labels"] == {str(k): v for k, v in CLASS_LABELS.items()}
        np.testing.assert_array_equal(decode(wandb_images[index]["masks"]["segmentation"]), mask)

    [(step, columns, rows)] = run.tables("single Table")
    assert (step, columns, len(rows)) == (2, ["single"], 1)
    assert np.abs(decode(rows[0][0]["file"]).astype(int) - expected[0]).max() <= 1
    # a safe file name: cleaned, plus a short hash of the original key so cleaned names never collide
    (single_table,) = (local_dir / "rows").glob("single_Table-*")
    assert logged_tables(local_dir, "single Table")[0]["columns"] == ["single"]
    assert pd.read_parquet(single_table)._key.tolist() == ["single Table"]

    # upload_file: the local backend keeps it; W&B only with log_artifacts=True (Composer's meaning).
    [artifact] = read_lines(local_dir / "artifacts.jsonl")
    assert artifact["name"] == "reports.notes.txt" and artifact["type"] == "txt"
    assert (local_dir / artifact["path"]).read_text() == "uploaded after fit"
    assert run.user_artifacts() == []
    assert json.loads((local_dir / "run.json").read_text())["status"] == "finished"
    assert run.exit_code == 0


class MetricsOnlyBackend:
    """A third-party backend that declares no optional capability."""

    name = "metrics-only"

    def __init__(self):
        self.records = []

    def log(self, record):
        self.records.append(record)

    def close(self, finish):
        self.records.append(finish)


def test_file_capabilities_follow_the_backends(logbus_dir, tmp_path):
    metrics_only = LogBusLogger(backends=[MetricsOnlyBackend()])
    local_only = LogBusLogger(backends=["local"])
    try:
        assert metrics_only.can_upload_files() is False
        assert local_only.can_upload_files() is True
        with pytest.raises(NotImplementedError, match=r"download_file.*\['local'\]"):
            local_only.download_file("checkpoints/ep1-ba2-rank0.pt", str(tmp_path / "restored.pt"))
        assert not (tmp_path / "restored.pt").exists()
    finally:
        metrics_only.bus.close()
        local_only.bus.close()


# -- failures --------------------------------------------------------------------------------------
class RaiseAtBatch(Callback):
    def __init__(self, batch: int):
        self.batch = batch

    def batch_end(self, state, logger):
        if int(state.timestamp.batch) == self.batch:
            raise RuntimeError(f"callback failed at batch {self.batch}")


def test_exception_in_fit_delivers_what_came_before_and_marks_both_runs_failed(wandb_offline, logbus_dir):
    composer_calls = ComposerCalls()
    trainer = make_trainer([LogBusLogger(backends=["local", ("wandb", {"project": "fails"})]), composer_calls],
                           callbacks=[RaiseAtBatch(3)], batches=6, run_name="fails")
    try:
        trainer.fit()
    except RuntimeError as error:
        assert "batch 3" in str(error)
        trainer.close()
    else:
        pytest.fail("fit did not raise")

    expected = composer_calls.series(LOSS)
    assert [step for step, _ in expected] == [0, 1, 2]
    run = read_only_run(wandb_offline)
    assert run.exit_code == 1
    assert_same_series(run.metric(LOSS), expected)
    local_dir = logbus_dir / "fails"
    assert_same_series(local_series(local_dir, LOSS), expected)
    status = json.loads((local_dir / "run.json").read_text())
    assert (status["status"], status["exit_code"]) == ("failed", 1)


CRASHING_SCRIPT = textwrap.dedent("""
    import torch
    from composer import Callback, Trainer
    from composer.models import ComposerClassifier
    from logbus.composer import LogBusLogger
    from logbus.demo import DigitsCNN, digits_loaders

    class Crash(Callback):
        def batch_end(self, state, logger):
            if int(state.timestamp.batch) == 3:
                raise RuntimeError("uncaught at batch 3")

    train_loader, _ = digits_loaders(batch_size=16)
    torch.manual_seed(0)
    trainer = Trainer(model=ComposerClassifier(DigitsCNN(), num_classes=10), train_dataloader=train_loader,
                      max_duration="6ba", device="cpu", progress_bar=False, seed=0, run_name="crashes",
                      loggers=[LogBusLogger(backends=["local", ("wandb", {"project": "crashes"})])],
                      callbacks=[Crash()])
    trainer.fit()
    print("unreachable")
""")


def test_uncaught_exception_still_closes_the_runs_as_failed(wandb_offline, logbus_dir, tmp_path):
    script = tmp_path / "script" / "crashes.py"  # its folder goes first on sys.path: keep it empty
    script.parent.mkdir()
    script.write_text(CRASHING_SCRIPT)
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=240,
                            cwd=tmp_path, env=dict(os.environ), check=False)
    assert result.returncode == 1, result.stderr[-3000:]
    assert "uncaught at batch 3" in result.stderr and "unreachable" not in result.stdout

    run = read_only_run(wandb_offline)
    assert run.exit_code == 1
    assert [step for step, _ in run.metric(LOSS)] == [0, 1, 2]
    local_dir = logbus_dir / "crashes"
    assert_same_series(local_series(local_dir, LOSS), run.metric(LOSS))
    status = json.loads((local_dir / "run.json").read_text())
    assert (status["status"], status["exit_code"]) == ("failed", 1)


def test_composer_autoresume_appends_to_the_run_folder_and_keeps_the_first_attempts_tables(logbus_dir, tmp_path):
    """A run that failed at batch 3 and is restarted by Composer's autoresume (same run name, its last
    checkpoint loaded) writes into the same local run folder: the first attempt's metrics and tables stay
    as written, the second's are appended, and the table logged again at a step the first attempt logged
    gets a file of its own (never written over)."""

    class TableEveryBatch(Callback):
        def batch_end(self, state, logger):
            logger.log_table(["batch"], [[int(state.timestamp.batch)]], name="progress", step=0)

    def trainer(callbacks) -> Trainer:
        return make_trainer([LogBusLogger(backends=["local"])], callbacks=[TableEveryBatch(), *callbacks], batches=4,
                            run_name="preempted", save_folder=str(tmp_path / "checkpoints"), save_interval="1ba",
                            autoresume=True)

    first = trainer([RaiseAtBatch(3)])
    with pytest.raises(RuntimeError, match="batch 3"):
        first.fit()
    first.close()
    run_dir = logbus_dir / "preempted"
    assert json.loads((run_dir / "run.json").read_text())["status"] == "failed"
    written = {path: path.read_bytes() for path in (run_dir / "rows").rglob("*.parquet")}
    first_losses = local_series(run_dir, LOSS)

    second = trainer([])
    second.fit()
    second.close()
    assert sorted(path.name for path in logbus_dir.iterdir()) == ["preempted"]
    info = json.loads((run_dir / "run.json").read_text())
    assert info["status"] == "finished" and len(info["resumed_at"]) == 1
    assert all(path.read_bytes() == data for path, data in written.items())  # the first attempt's tables, as written
    losses = local_series(run_dir, LOSS)
    assert losses[:len(first_losses)] == first_losses and len(losses) > len(first_losses)
    # Resumed from the last checkpoint (after batch 2: batch 3 raised before its checkpoint was saved).
    assert [step for step, _ in losses] == [0, 1, 2, 2, 3]
    progress = logbus.read_table(run_dir, "progress")  # every attempt's table, each its own file
    assert progress.batch.tolist() == [1, 2, 3, 3, 4] and len(list((run_dir / "rows" / "progress").iterdir())) == 5
