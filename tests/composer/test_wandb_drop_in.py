"""The drop-in ``logbus.composer.WandBLogger`` behaves as ``composer.loggers.WandBLogger`` where user code
can tell: the global ``wandb.run`` from ``Event.INIT`` on, users' own ``wandb.log`` calls, ``isinstance``
and attributes, images, step-less calls, checkpoints, download on every rank, and bad input.

Each test runs a real Composer ``Trainer`` (or calls the destination as Composer's own tests do) and
reads the offline W&B run back with ``wandb leet inspect --json``. What Composer's logger itself would
do is computed with Composer's own code where it still runs on wandb 0.31 (its image conversion);
its ``init`` calls the removed ``wandb.run.get_url()`` and cannot run here.
"""

from __future__ import annotations

import errno
import inspect
import os
import tempfile
import threading
from pathlib import Path

import composer.loggers
import numpy as np
import pytest
import torch
import wandb
from composer import Callback, State, Trainer
from composer.loggers import Logger
from composer.models import ComposerClassifier
from local_reader import assert_same_series
from PIL import Image as PILImage
from test_composer_adapter import LOSS, ComposerCalls, make_trainer
from wandb_reader import find_run_dirs, read_only_run, read_wandb_run

from logbus.composer import WandBLogger
from logbus.demo import DigitsCNN, digits_loaders

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning:composer.*")


def decode(path) -> np.ndarray:
    with PILImage.open(path) as image:
        return np.asarray(image)


# -- the W&B guide's own callback, kept as it is -----------------------------------------------------
class LogPredictions(Callback):
    """The W&B Composer guide's callback (/work/shared/reference/000_1cd69873b2bb05b0.txt), verbatim but
    for Composer 0.32's renamed attributes: ``state.timer`` -> ``state.timestamp`` and
    ``state.batch_pair`` -> ``state.batch``."""

    def __init__(self, num_samples=100, seed=1234):
        super().__init__()
        self.num_samples = num_samples
        self.data = []

    def eval_batch_end(self, state: State, logger: Logger):
        """バッチごとに予測を計算し、self.dataに保存します"""

        if state.timestamp.epoch == state.max_duration: # 最終バルエポックのとき
            if len(self.data) < self.num_samples:
                n = self.num_samples
                x, y = state.batch
                outputs = state.outputs.argmax(-1)
                data = [[wandb.Image(x_i), y_i, y_pred] for x_i, y_i, y_pred in list(zip(x[:n], y[:n], outputs[:n]))]
                self.data += data

    def eval_end(self, state: State, logger: Logger):
        "wandb.Tableを作成してログします"
        columns = ['image', 'ground truth', 'prediction']
        table = wandb.Table(columns=columns, data=self.data[:self.num_samples])
        wandb.log({'sample_table':table}, step=int(state.timestamp.batch))


def test_the_guides_log_predictions_callback_runs_unchanged_with_the_drop_in(wandb_offline):
    train_loader, eval_loader = digits_loaders(batch_size=16)
    truth = ComposerCalls()
    torch.manual_seed(0)
    trainer = Trainer(model=ComposerClassifier(DigitsCNN(), num_classes=10), train_dataloader=train_loader,
                      eval_dataloader=eval_loader, train_subset_num_batches=5, eval_subset_num_batches=3,
                      max_duration="2ep", eval_interval="1ep", loggers=[WandBLogger(project="guide"), truth],
                      callbacks=[LogPredictions(num_samples=20)], device="cpu", progress_bar=False, seed=0)
    trainer.fit()
    trainer.close()

    run = read_only_run(wandb_offline)
    tables = run.tables("sample_table")
    # eval_end of each epoch logs a table; only the last epoch's has rows (the guide's condition)
    assert [(step, columns) for step, columns, _ in tables] == [(5, ["image", "ground truth", "prediction"]),
                                                               (10, ["image", "ground truth", "prediction"])]
    assert tables[0][2] == []
    rows = tables[1][2]
    labels = [int(y) for _, y in zip(range(20), (y for _, ys in eval_loader for y in ys))]
    assert len(rows) == 20 and [int(row[1]) for row in rows] == labels
    assert all(row[0]["_type"] == "image-file" and os.path.isfile(row[0]["file"]) for row in rows)
    expected_loss = truth.series(LOSS)
    assert [step for step, _ in expected_loss] == list(range(10))
    assert_same_series(run.metric(LOSS), expected_loss)
    assert run.exit_code == 0


# -- the run is there when user code expects it ----------------------------------------------------
def test_wandb_run_is_the_loggers_run_as_soon_as_the_trainer_exists(wandb_offline):
    from composer.callbacks import ActivationMonitor

    wandb_logger = WandBLogger(project="at-init", name="user-code")
    truth = ComposerCalls()
    # Composer's ActivationMonitor(only_log_wandb=True) finds WandB loggers with isinstance
    trainer = make_trainer([wandb_logger, truth], batches=3,
                           callbacks=[ActivationMonitor(interval="1ba", only_log_wandb=True)])
    run = wandb.run
    assert run is not None and wandb_logger.wandb_backend.run is run
    assert (run.name, run.project) == ("user-code", "at-init")
    assert wandb_logger.run_dir == run.dir and os.path.isdir(run.dir)
    assert wandb_logger.run_url == run.url  # None offline, the run page online
    assert (wandb_logger.entity, wandb_logger.project) == (run.entity, "at-init")
    wandb.config.update({"user_setting": 7})
    wandb.define_metric("user/*", summary="max")
    wandb.watch(trainer.state.model, log="gradients", log_freq=1)
    trainer.fit()
    trainer.close()
    assert wandb.run is None  # finished, and wandb's own "call wandb.init() first" is back

    back = read_only_run(wandb_offline)
    assert back.run["run_id"] == run.id
    assert back.config["user_setting"] == 7
    assert_same_series(back.metric(LOSS), truth.series(LOSS))
    assert any(key.startswith("gradients/") for item in back.history for key in item)
    assert any(key.startswith("activations/") for item in back.history for key in item)
    assert not any(key.startswith("activations/") for _, metrics in truth.metrics for key in metrics)


# -- users' own wandb.log calls, in order with logbus's ----------------------------------------------
class UserWandbCalls(Callback):
    """Logs straight to W&B at every batch end, the ways user callbacks do."""

    def __init__(self):
        self.calls: list[tuple[str, int]] = []  # (key, batch at the call)

    def batch_end(self, state, logger):
        batch = int(state.timestamp.batch)
        wandb.log({"user/explicit": batch}, step=batch)
        wandb.log({"user/stepless": batch})
        wandb.run.log({"user/run_log": batch})
        self.calls += [("user/explicit", batch), ("user/stepless", batch), ("user/run_log", batch)]
        if batch % 5 == 0:
            wandb.log({"user/table": wandb.Table(columns=["batch"], data=[[batch]]),
                       "user/hist": wandb.Histogram(np.arange(batch + 1)),
                       "user/image": wandb.Image(np.full((4, 4, 3), batch, dtype=np.uint8))})
            self.calls.append(("user/table", batch))


def test_users_wandb_log_calls_land_in_order_with_logbus_records_and_drop_nothing(wandb_offline):
    truth, user = ComposerCalls(), UserWandbCalls()
    trainer = make_trainer([WandBLogger(project="ordered"), truth], batches=30, callbacks=[user])
    trainer.fit()
    trainer.close()

    run = read_only_run(wandb_offline)
    assert_same_series(run.metric(LOSS), truth.series(LOSS))  # not one loss dropped as out of order
    assert len(run.metric(LOSS)) == 30
    for key in ("user/explicit", "user/stepless", "user/run_log"):
        # a step-less call lands in the row of the batch it was made in
        assert run.metric(key) == [(batch, batch) for name, batch in user.calls if name == key]
    tables = run.tables("user/table")
    assert [(step, rows) for step, _, rows in tables] == [(batch, [[batch]]) for name, batch in user.calls
                                                          if name == "user/table"]
    assert [step for step, _ in run.metric("user/hist._type")] == [step for step, _, _ in tables]
    assert [step for step, _ in run.metric("user/image._type")] == [step for step, _, _ in tables]


def test_a_users_wandb_log_returns_after_an_enqueue(wandb_offline):
    wandb_logger = WandBLogger(project="enqueue")
    trainer = make_trainer([wandb_logger], batches=1)
    writer = wandb_logger.bus.workers[0]
    held = threading.Event()
    original = writer.backend.log
    writer.backend.log = lambda record: (held.wait(30), original(record))  # the writer is busy
    try:
        wandb.log({"user/queued": 1.0}, step=0)
        assert writer.pending >= 1  # queued, not written
    finally:
        held.set()
    trainer.close()
    assert read_only_run(wandb_offline).metric("user/queued") == [(0, 1.0)]


# -- type and attribute parity ---------------------------------------------------------------------
def test_it_is_a_composer_wandb_logger_with_its_attributes_and_runs_none_of_its_code():
    ours, theirs = WandBLogger(project="p", entity="e"), composer.loggers.WandBLogger(project="p", entity="e")
    try:
        assert isinstance(ours, composer.loggers.WandBLogger)
        assert set(vars(theirs)) <= set(vars(ours))
        for name in ("entity", "project", "run_dir", "run_url", "table_dict", "_enabled", "_rank_zero_only",
                     "_log_artifacts", "_init_kwargs", "_is_in_atexit"):
            assert getattr(ours, name) == getattr(theirs, name), name
        # Composer's methods call wandb on the training thread (and the removed get_url): every one is
        # overridden; only its atexit flag setter is inherited.
        inherited = [name for name, member in vars(composer.loggers.WandBLogger).items()
                     if inspect.isfunction(member) and getattr(WandBLogger, name) is member]
        assert inherited == ["_set_is_in_atexit"]
    finally:
        ours.bus.close()


# -- images as Composer logs them ------------------------------------------------------------------
GRID = torch.arange(3 * 4 * 5).reshape(3, 4, 5)
IMAGE_CASES = {
    "uint8": (GRID * 4).to(torch.uint8),
    "int64": GRID * 4,
    "int32": (GRID * 4).to(torch.int32),
    "int64_wraps": GRID * 9,  # values above 255 wrap, as numpy's astype(uint8)
    "bool": GRID % 2 == 0,
    "float32_0_255": GRID.float() * 4.2,
    "float64_0_255": GRID.double() * 4.2 + 0.5,
    "float32_0_1": GRID.float() / 59,
}


def composers_pixels(image: torch.Tensor) -> np.ndarray:
    """What Composer's WandBLogger stores for ``image``: its own conversion, then wandb.Image."""
    from composer.loggers.wandb_logger import _convert_to_wandb_image

    return decode(wandb.Image(_convert_to_wandb_image(image, channels_last=False))._path)


class LogImageCases(Callback):
    def batch_end(self, state, logger):
        for name, image in IMAGE_CASES.items():
            logger.log_images(image, name=name, use_table=False)


def test_every_image_dtype_composer_accepts_is_logged_as_composer_logs_it(wandb_offline):
    trainer = make_trainer([WandBLogger(project="images")], batches=1, callbacks=[LogImageCases()])
    trainer.fit()
    trainer.close()

    run = read_only_run(wandb_offline)
    for name, image in IMAGE_CASES.items():
        [(step, [stored])] = run.images(name)
        ours, theirs = decode(stored["file"]), composers_pixels(image)
        assert step == 1 and ours.shape == theirs.shape == (4, 5, 3), name  # batch_end of batch 0
        if name == "float32_0_1":
            # the one deliberate difference: wandb >= 0.20 casts [0, 1] floats to black
            assert theirs.max() <= 1  # 1.0 casts to 1
            np.testing.assert_array_equal(ours, np.rint(image.numpy().transpose(1, 2, 0) * 255))
        else:
            np.testing.assert_array_equal(ours, theirs, err_msg=name)


# -- step-less direct calls ------------------------------------------------------------------------
def test_step_less_direct_log_metrics_calls_are_rows_of_their_own_as_with_composer(wandb_offline):
    wandb_logger = WandBLogger(project="stepless")
    trainer = make_trainer([wandb_logger], batches=1)
    trainer.logger.log_metrics({"via_logger": 3.0})  # Composer's Logger: the batch, 0
    wandb_logger.log_metrics({"direct": 1.0})  # joins row 0 and commits it, as wandb.log(m, None)
    wandb_logger.log_metrics({"direct": 2.0})  # a row of its own
    trainer.close()

    run = read_only_run(wandb_offline)
    assert run.metric("via_logger") == [(0, 3.0)]
    assert run.metric("direct") == [(0, 1.0), (1, 2.0)]


# -- checkpoints -----------------------------------------------------------------------------------
class StagedLinks(Callback):
    """After each checkpoint, waits for the bus and reads the checkpoint's hard-link count: 2 while logbus
    still holds a staged link to it, 1 once released."""

    def __init__(self, wandb_logger):
        self.wandb_logger = wandb_logger
        self.links: list[tuple[str, int]] = []

    def epoch_end(self, state, logger):
        # Composer saves and uploads at EPOCH_CHECKPOINT, after EPOCH_END: look at the previous epoch's
        if state.timestamp.epoch > 1:
            self._look(state)

    def fit_end(self, state, logger):
        self._look(state)

    def _look(self, state):
        self.wandb_logger.bus.flush(30)
        for path in sorted(os.listdir("checkpoints")):
            full = os.path.join("checkpoints", path)
            if not os.path.islink(full):
                self.links.append((path, os.stat(full).st_nlink))


@pytest.mark.parametrize("log_artifacts", [False, True])
def test_checkpoints_are_staged_only_for_upload_and_released_once_uploaded(wandb_offline, tmp_path, monkeypatch,
                                                                         log_artifacts):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))  # where the staging folder goes
    (tmp_path / "tmp").mkdir()
    wandb_logger = WandBLogger(project="ckpt", log_artifacts=log_artifacts)
    links = StagedLinks(wandb_logger)
    trainer = make_trainer([wandb_logger], callbacks=[links], run_name="ckpt", max_duration="3ep",
                           train_subset_num_batches=1, save_folder="checkpoints", save_interval="1ep",
                           save_num_checkpoints_to_keep=1)
    trainer.fit()
    # Composer's rotation kept one checkpoint, and each was released as soon as it was uploaded (or
    # never linked): the disk a rotated checkpoint held is free during the run, not at its end.
    assert links.links == [("ep1-ba1-rank0.pt", 1), ("ep2-ba2-rank0.pt", 1), ("ep3-ba3-rank0.pt", 1)]
    assert [path for path in (tmp_path / "tmp").glob("logbus-upload-*/**/*") if path.is_file()] == []
    trainer.close()

    models = [artifact for artifact in read_only_run(wandb_offline).user_artifacts() if artifact.type == "model"]
    if not log_artifacts:
        assert models == []
        return
    assert [(artifact.name, set(artifact.aliases)) for artifact in models] == [
        (f"checkpoints.ep{epoch}-ba{epoch}-rank0.pt", {"latest", f"ep{epoch}-ba{epoch}"}) for epoch in (1, 2, 3)]
    for artifact in models:  # the rotated ones too: what was uploaded is each checkpoint as saved
        [stored] = artifact.files.values()
        timestamp = torch.load(stored, weights_only=False)["state"]["timestamp"]["Timestamp"]
        assert timestamp["batch"] == int(artifact.name[14])


def test_staging_links_beside_the_file_when_the_temporary_folder_is_on_another_filesystem(tmp_path, monkeypatch):
    from logbus.composer._staging import Staging

    source = tmp_path / "ckpt.pt"
    source.write_bytes(b"weights")
    link = os.link

    def cross_device(src, dst, **kwargs):  # the system temp folder on another filesystem (a tmpfs /tmp)
        if not str(dst).startswith(str(tmp_path)):
            raise OSError(errno.EXDEV, "Invalid cross-device link")
        return link(src, dst, **kwargs)

    monkeypatch.setattr(os, "link", cross_device)
    staging = Staging()
    staged, release = staging.stage(str(source), consumers=2)
    assert os.path.dirname(os.path.dirname(staged)).startswith(str(tmp_path / ".logbus-staging-"))
    assert os.path.samefile(staged, source) and source.stat().st_nlink == 2
    source.unlink()  # Composer's rotation
    assert open(staged, "rb").read() == b"weights"
    release()
    assert os.path.exists(staged)  # one backend still reads it
    release()
    assert sorted(os.listdir(tmp_path)) == []  # the last release removes the folder beside the checkpoints


# -- bad input -------------------------------------------------------------------------------------
def test_users_wandb_log_without_a_run_or_with_bad_arguments_fails_at_the_call(wandb_offline):
    wandb_logger = WandBLogger(project="bad-input")
    with pytest.raises(wandb.Error, match=r"call wandb.init\(\) before wandb.log\(\)"):
        wandb.log({"too_early": 1.0})  # before Event.INIT: wandb's own error, as with Composer's logger
    trainer = make_trainer([wandb_logger], batches=1)
    run = wandb.run
    with pytest.raises(TypeError, match=r"^data: expected a dict of values to log, got list"):
        wandb.log(["not", "a", "dict"])
    with pytest.raises(TypeError, match=r"^data: keys must be str, got 1 \(int\)"):
        run.log({1: 2.0})
    with pytest.raises(TypeError, match=r"^step: expected a non-negative int or None, got -1"):
        wandb.log({"x": 1.0}, step=-1)
    with pytest.raises(TypeError, match=r"^commit: expected a bool or None, got 'yes'"):
        run.log({"x": 1.0}, commit="yes")
    wandb.log({"still_fine": 1.0}, step=0)
    trainer.close()
    with pytest.raises(wandb.Error, match=r"call wandb.init\(\) before wandb.log\(\)"):
        wandb.log({"too_late": 1.0})  # after close: wandb's own error again
    with pytest.raises(wandb.errors.UsageError, match="is finished"):
        run.log({"too_late": 1.0})  # a kept reference to the finished run: wandb's own error

    back = read_only_run(wandb_offline)
    assert back.metric("still_fine") == [(0, 1.0)]
    assert not any(key in item for item in back.history for key in ("x", "too_early", "too_late"))


def test_on_a_rank_that_does_not_log_there_is_no_run_as_with_composer(wandb_offline, monkeypatch):
    trainer = make_trainer([], batches=1)
    monkeypatch.setenv("RANK", "1")  # rank_zero_only on rank 1 (one process: nothing to broadcast)
    wandb_logger = WandBLogger(project="rank1")
    wandb_logger.init(trainer.state, trainer.logger)
    assert wandb.run is None and wandb_logger.run_dir is None and wandb_logger.project == "rank1"
    with pytest.raises(wandb.Error, match=r"call wandb.init\(\) before wandb.log\(\)"):
        wandb.log({"x": 1.0})
    wandb_logger.log_metrics({"x": 1.0}, step=0)  # Composer's calls are skipped quietly
    wandb_logger.post_close()
    assert not (wandb_offline / "wandb").exists()


# -- download_file ---------------------------------------------------------------------------------
def test_download_file_waits_for_a_run_still_starting_on_the_writer(wandb_offline, tmp_path, monkeypatch):
    """``LogBusLogger``'s wandb backend starts its run on its writer thread; Composer may ask for a
    checkpoint right after ``Event.INIT``. Fetching needs the W&B server, not reachable here: only
    ``wandb.Api`` is faked; the entity and project must be the started run's (none was given)."""
    from logbus.composer import LogBusLogger

    requested = []

    class FakeArtifact:
        def download(self, root):
            os.makedirs(root)
            (Path(root) / "ckpt.pt").write_bytes(b"weights")

    class FakeApi:
        default_entity = "api-key-entity"

        def artifact(self, path):
            requested.append(path)
            return FakeArtifact()

    monkeypatch.setattr(wandb, "Api", FakeApi)
    bus_logger = LogBusLogger(backends=["wandb"])
    trainer = make_trainer([bus_logger], batches=1)
    bus_logger.download_file("checkpoints/ep1-ba1-rank0.pt", str(tmp_path / "restored.pt"))
    trainer.close()

    project = read_only_run(wandb_offline).run["project"]
    assert requested == [f"api-key-entity/{project}/checkpoints.ep1-ba1-rank0.pt:latest"]
    assert (tmp_path / "restored.pt").read_bytes() == b"weights"


# -- what Composer's own logger tests check, as this project's tests -------------------------------
class LogImageShapes(Callback):
    """Every image shape Composer's logger takes, as torch (float32 and bfloat16) and numpy, with masks."""

    shapes = {
        "grey_2d": (torch.rand(4, 4), False),
        "batch": (torch.rand(2, 3, 4, 4), False),
        "batch_bf16": (torch.rand(2, 3, 4, 4, dtype=torch.bfloat16), False),
        "single": (torch.rand(3, 4, 4), False),
        "list_channels_last": ([torch.rand(4, 4, 3), torch.rand(4, 4, 3)], True),
        "batch_channels_last": (torch.rand(2, 4, 4, 3), True),
        "numpy_batch": (np.random.default_rng(0).random((2, 3, 4, 4), dtype=np.float32), False),
        "int_channels_last": (torch.randint(0, 256, (4, 4, 3)), True),
    }

    def batch_end(self, state, logger):
        for name, (images, channels_last) in self.shapes.items():
            logger.log_images(images, name=name, channels_last=channels_last, use_table=False)
        logger.log_images(torch.rand(2, 3, 4, 4), name="masked", masks={"pred": torch.randint(0, 10, (2, 4, 4)),
                                                                      "truth": torch.randint(0, 10, (2, 4, 4))})


def test_every_image_shape_composer_takes_is_stored_with_its_masks(wandb_offline):
    trainer = make_trainer([WandBLogger(project="shapes")], batches=1, callbacks=[LogImageShapes()])
    trainer.fit()
    trainer.close()

    run = read_only_run(wandb_offline)
    for name, (images, channels_last) in LogImageShapes.shapes.items():
        [(_, stored)] = run.images(name)
        expected = list(images) if isinstance(images, list) or images.ndim == 4 else [images]
        assert len(stored) == len(expected), name
        for cell, image in zip(stored, expected):
            theirs = composers_pixels_of(image, channels_last)
            ours = decode(cell["file"])
            assert ours.reshape(theirs.shape).shape == theirs.shape, name  # grey: [H, W] or [H, W, 1]
            if theirs.max() > 1:  # not a [0, 1] float, which Composer stores black (see above)
                np.testing.assert_array_equal(ours.reshape(theirs.shape), theirs, err_msg=name)
    [(step, columns, rows)] = run.tables("masked Table")  # Logger.log_images: use_table=True by default
    assert (step, columns, len(rows)) == (1, ["masked"], 2)
    assert all(set(row[0]["masks"]) == {"pred", "truth"} for row in rows)


def composers_pixels_of(image, channels_last: bool) -> np.ndarray:
    from composer.loggers.wandb_logger import _convert_to_wandb_image

    array = _convert_to_wandb_image(image, channels_last=channels_last)
    return decode(wandb.Image(array)._path)


@pytest.mark.parametrize("images, channels_last", [
    (torch.rand(32), False),  # one dimension
    (torch.rand(32, 0), False),  # an empty dimension
    (torch.rand(4, 4, 8, 32, 32), False),  # five dimensions
    ([torch.rand(4, 32, 32, 3)], True),  # a list of batches
])
def test_images_composer_refuses_raise_a_value_error_at_the_call(images, channels_last):
    wandb_logger = WandBLogger(project="refused")
    try:
        with pytest.raises(ValueError, match=r"^images?: "):
            wandb_logger.log_images(images, channels_last=channels_last)
        assert wandb_logger.bus.stats()["emitted"] == 0
    finally:
        wandb_logger.bus.close()


def test_init_twice_and_close_twice_keep_one_run_and_finish_it_once(wandb_offline):
    wandb_logger = WandBLogger(project="twice")
    trainer = make_trainer([wandb_logger], batches=2)
    run = wandb.run
    wandb_logger.init(trainer.state, trainer.logger)  # Composer's own tests call init again
    assert wandb.run is run and wandb_logger.run_dir == run.dir
    trainer.fit()
    trainer.close()
    wandb_logger.close(trainer.state, trainer.logger)
    wandb_logger.post_close()

    back = read_only_run(wandb_offline)
    assert back.exit_code == 0 and [step for step, _ in back.metric(LOSS)] == [0, 1]
    assert sum(record.get("type") == "exit" for record in back.records) == 1


def test_the_logger_pickles_with_wandb_disabled(monkeypatch, tmp_path):
    import pickle

    monkeypatch.setenv("WANDB_MODE", "disabled")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    wandb_logger = WandBLogger()
    trainer = make_trainer([wandb_logger], batches=1)
    assert pickle.loads(pickle.dumps(wandb_logger.state_dict())) == wandb_logger.state_dict()
    trainer.close()
    assert wandb.run is None


# -- wandb objects as they were at the call ----------------------------------------------------------
GROWING_BATCHES = 4


def pixels_of(batch: int) -> np.ndarray:
    return np.full((4, 4, 3), 40 + 10 * batch, dtype=np.uint8)


def grow(table, batch: int, log) -> None:
    """The same calls through the drop-in and through plain wandb: a row, the log call, then a row
    added after the call (not part of what this step logged)."""
    table.add_data(batch, wandb.Image(pixels_of(batch)))
    log({"grow": table}, step=batch)
    table.add_data(-batch, wandb.Image(pixels_of(-batch)))


class GrowingTable(Callback):
    """A user's table that keeps growing across ``wandb.log`` calls; the writer is held until the last
    call, so that it logs every call after the table has changed again."""

    def __init__(self, log_mode: str, held: threading.Event):
        self.table = wandb.Table(columns=["batch", "image"], log_mode=log_mode)
        self.held = held

    def batch_end(self, state, logger):
        batch = int(state.timestamp.batch)
        grow(self.table, batch, wandb.log)
        if batch == GROWING_BATCHES:
            self.held.set()


def stored_tables(run, key: str) -> list:
    """What a run holds under ``key``: each log call's table type, sizes and mode, and its rows with
    image cells as their pixels."""
    items = [(item["_step"], {name.split(".", 1)[1]: value for name, value in item.items()
                              if name.split(".", 1)[0] == key and name.split(".", 1)[1] in
                              ("_type", "nrows", "ncols", "log_mode", "increment_num")})
             for item in run.history if f"{key}._type" in item]
    tables = [(step, columns, [[decode(cell["file"]).tolist() if isinstance(cell, dict) else cell for cell in row]
                               for row in rows]) for step, columns, rows in run.tables(key)]
    return [items, tables]


def runs_by_name(folder) -> dict:
    runs = [read_wandb_run(path) for path in find_run_dirs(folder)]
    return {run.name: run for run in runs}


@pytest.mark.parametrize("log_mode", ["IMMUTABLE", "MUTABLE", "INCREMENTAL"])
def test_a_growing_user_table_is_stored_as_plain_wandb_stores_the_same_calls(wandb_offline, log_mode):
    """wandb serializes a table during ``wandb.log``; the drop-in logs it later, on its writer, so it
    keeps the table as it was at the call and logs it with wandb's own per-mode bookkeeping: the run
    holds what plain wandb stores for the same calls (``IMMUTABLE``: the first call's table, again;
    ``MUTABLE``: each call's rows; ``INCREMENTAL``: the rows added since the call before)."""
    held = threading.Event()
    wandb_logger = WandBLogger(project="growing", name="drop-in")
    trainer = make_trainer([wandb_logger], batches=GROWING_BATCHES, callbacks=[GrowingTable(log_mode, held)])
    writer = wandb_logger.bus.workers[0]
    original = writer.backend.log
    writer.backend.log = lambda record: (held.wait(60), original(record))
    trainer.fit()
    trainer.close()
    assert held.is_set()

    plain = wandb.init(project="growing", name="plain", reinit="create_new")
    table = wandb.Table(columns=["batch", "image"], log_mode=log_mode)
    for batch in range(1, GROWING_BATCHES + 1):
        grow(table, batch, plain.log)
    plain.finish()

    runs = runs_by_name(wandb_offline)
    expected = stored_tables(runs["plain"], "grow")
    assert [step for step, _ in expected[0]] == list(range(1, GROWING_BATCHES + 1))
    assert stored_tables(runs["drop-in"], "grow") == expected


class WandbImageTable(Callback):
    """Composer's ``logger.log_table`` with ``wandb.Image`` cells, as Composer's own logger takes them."""

    def batch_end(self, state, logger):
        batch = int(state.timestamp.batch)
        logger.log_table(columns=["image", "batch"], rows=[[wandb.Image(pixels_of(batch)), batch],
                                                           [wandb.Image(pixels_of(batch + 1)), batch + 1]],
                         name="predictions", step=batch)


def test_composers_log_table_with_wandb_image_cells_is_logged_as_composers_logger_logs_it(wandb_offline):
    trainer = make_trainer([WandBLogger(project="wandb-cells", name="drop-in")], batches=2,
                           callbacks=[WandbImageTable()])
    trainer.fit()
    trainer.close()

    plain = wandb.init(project="wandb-cells", name="plain", reinit="create_new")
    for batch in (1, 2):  # what composer.loggers.WandBLogger.log_table does
        plain.log({"predictions": wandb.Table(columns=["image", "batch"],
                                              rows=[[wandb.Image(pixels_of(batch)), batch],
                                                    [wandb.Image(pixels_of(batch + 1)), batch + 1]])}, step=batch)
    plain.finish()

    runs = runs_by_name(wandb_offline)
    expected = stored_tables(runs["plain"], "predictions")
    assert [step for step, _, _ in expected[1]] == [1, 2]
    assert stored_tables(runs["drop-in"], "predictions") == expected


def test_wandb_cells_need_a_wandb_backend_and_the_others_are_told(logbus_dir, wandb_offline):
    from logbus.composer import LogBusLogger

    rows = [[wandb.Image(pixels_of(1)), 1]]
    local_only = LogBusLogger(backends=["local"])
    with pytest.raises(TypeError, match=r"rows: wandb objects \(wandb.Image...\) in cells need a W&B backend"):
        local_only.log_table(["image", "batch"], rows, name="t", step=1)
    local_only.post_close()
    both = LogBusLogger(backends=["local", ("wandb", {"project": "cells"})])
    with pytest.warns(UserWarning, match=r"log_table: table 't' has wandb objects in its cells and goes to "
                                         r"\['wandb'\] only, not to \['local'\]"):
        both.log_table(["image", "batch"], rows, name="t", step=1)
    both.post_close()
    (step, columns, (row,)), = read_only_run(wandb_offline).tables("t")
    assert (step, columns, row[1]) == (1, ["image", "batch"], 1)
    np.testing.assert_array_equal(decode(row[0]["file"]), pixels_of(1))
