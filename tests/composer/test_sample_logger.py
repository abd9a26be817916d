"""``SampleLogger`` in a real Composer ``Trainer``: tables of prediction samples in a real offline W&B run
(read back with ``wandb leet inspect``) and in the local run folder, and a training thread that neither
encodes images nor copies samples to the host."""

from __future__ import annotations

import json
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from composer import Trainer
from composer.core import Callback, Evaluator
from composer.models import ComposerClassifier, ComposerModel
from local_reader import decode, logged_tables, pack_rows
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils.data import DataLoader, Dataset, TensorDataset
from wandb_reader import WandbRun, read_only_run

import logbus
from logbus.composer import LogBusLogger, SampleLogger
from logbus.demo import DigitsCNN, digits_loaders
from logbus.kernels import images_to_uint8_reference
from logbus.testing import RecordingBackend

DIGITS = [f"digit {i}" for i in range(10)]
EVAL_SET_SIZE = 297  # digits_loaders: 1,797 images, 1,500 for training
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning:composer.*")



def wandb_spec():
    return ("wandb", {"project": "logbus-tests"})


def local_tables(logger: LogBusLogger, key: str) -> list[dict]:
    """Every table the local backend wrote under ``key``, as logged (``local_reader.logged_tables``); an
    image cell's ``file`` is its cell in the store, which ``decode`` reads."""
    return logged_tables(Path(logger.bus.backends["local"].run_dir), key)


def local_metrics(logger: LogBusLogger) -> list[dict]:
    path = Path(logger.bus.backends["local"].run_dir) / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


class EvalRecorder(Callback):
    """Notes, at every eval end, the evaluator, the batch step and a copy of the weights."""

    def __init__(self):
        self.evals: list[tuple[str, int, dict[str, torch.Tensor]]] = []

    def eval_end(self, state, logger):
        weights = {name: value.detach().clone() for name, value in state.model.state_dict().items()}
        self.evals.append((state.dataloader_label, int(state.timestamp.batch), weights))


def digits_classifier() -> ComposerClassifier:
    torch.manual_seed(0)
    return ComposerClassifier(DigitsCNN(), num_classes=10)


def fit(model, train, evaluators, callbacks, backends=("local",), *, max_duration="4ba", eval_interval="2ba",
        run_name="samples") -> tuple[Trainer, LogBusLogger]:
    logger = LogBusLogger(backends=list(backends))
    trainer = Trainer(model=model, train_dataloader=train, eval_dataloader=evaluators, max_duration=max_duration,
                      eval_interval=eval_interval, loggers=[logger], callbacks=list(callbacks), device="cpu",
                      progress_bar=False, seed=0, run_name=run_name)
    trainer.fit()
    trainer.close()
    return trainer, logger


def predict(weights: dict[str, torch.Tensor], images: torch.Tensor, batch_size: int) -> torch.Tensor:
    """Logits of the digits model with ``weights`` in eval mode, batch by batch as the eval loader
    (``images``: the whole eval set), so every sample sees the computation it saw in the eval."""
    model = ComposerClassifier(DigitsCNN(), num_classes=10)
    model.load_state_dict(weights)
    model.eval()
    with torch.no_grad():
        return torch.cat([model.module(images[i:i + batch_size]) for i in range(0, len(images), batch_size)])


def check_classification_rows(columns, rows, images, labels, logits, image_file) -> None:
    """Rows are samples 0..n-1 of the eval set with their pixels, truth and the model's prediction."""
    assert columns == ["id", "image", "truth", "prediction", "confidence", "correct", "loss", "flag", "truth_name",
                       "prediction_name"]
    n = len(images)
    assert len(rows) == n
    by_name = {name: [row[columns.index(name)] for row in rows] for name in columns}
    assert by_name["id"] == list(range(n))
    assert by_name["truth"] == labels.tolist()
    assert by_name["truth_name"] == [DIGITS[i] for i in labels.tolist()]
    prediction = logits.argmax(1)
    assert by_name["prediction"] == prediction.tolist()
    assert by_name["prediction_name"] == [DIGITS[i] for i in prediction.tolist()]
    assert by_name["correct"] == (prediction == labels).tolist()
    np.testing.assert_allclose(by_name["confidence"], logits.softmax(1).amax(1).numpy(), rtol=1e-4)
    np.testing.assert_allclose(by_name["loss"], F.cross_entropy(logits, labels, reduction="none").numpy(), rtol=1e-4)
    assert by_name["flag"] == [""] * n
    expected = images_to_uint8_reference(images).numpy()[..., 0]  # [n, 8, 8]
    for i, cell in enumerate(by_name["image"]):
        pixels = decode(image_file(cell))
        np.testing.assert_array_equal(pixels, expected[i])
        assert pixels.var() > 0


# -- classification, end to end --------------------------------------------------------------------
def test_classification_tables_hold_the_first_samples_at_each_eval_step(wandb_offline):
    train, val = digits_loaders(batch_size=32)
    images, labels = val.dataset.tensors
    recorder = EvalRecorder()
    sample_logger = SampleLogger("classification", num_samples=40, policy="first", class_names=DIGITS)
    trainer, logger = fit(digits_classifier(), train, val, [sample_logger, recorder], [wandb_spec(), "local"],
                          run_name="digits")
    assert [(label, step) for label, step, _ in recorder.evals] == [("eval", 2), ("eval", 4)]

    # The last eval saw the trained model: recompute with it, in eval mode, on the same inputs.
    trained = {name: value.detach() for name, value in trainer.state.model.state_dict().items()}
    logits_per_eval = [predict(recorder.evals[0][2], images, 32)[:40], predict(trained, images, 32)[:40]]

    wandb_tables = read_only_run(wandb_offline).tables("samples/eval")
    assert [step for step, _, _ in wandb_tables] == [2, 4]
    for (_, columns, rows), logits in zip(wandb_tables, logits_per_eval):
        check_classification_rows(columns, rows, images[:40], labels[:40], logits, lambda cell: cell["file"])

    tables = local_tables(logger, "samples/eval")
    assert [table["step"] for table in tables] == [2, 4]
    for table, logits in zip(tables, logits_per_eval):
        check_classification_rows(table["columns"], table["rows"], images[:40], labels[:40], logits,
                                  lambda cell: cell["file"])
    stats = sample_logger.pipeline.stats
    assert (stats.tables_logged, stats.rows_logged, stats.errors, stats.batches_dropped) == (2, 80, 0, 0)


def test_num_samples_none_logs_every_eval_sample(wandb_offline):
    train, val = digits_loaders(batch_size=64)
    images, labels = val.dataset.tensors
    sample_logger = SampleLogger("classification", num_samples=None, class_names=DIGITS)
    trainer, logger = fit(digits_classifier(), train, val, [sample_logger], [wandb_spec(), "local"],
                          max_duration="2ba", eval_interval="2ba")
    logits = predict(trainer.state.model.state_dict(), images, 64)
    (step, columns, rows), = read_only_run(wandb_offline).tables("samples/eval")
    assert step == 2 and len(rows) == EVAL_SET_SIZE == len(images)
    check_classification_rows(columns, rows, images, labels, logits, lambda cell: cell["file"])
    (table,) = local_tables(logger, "samples/eval")
    assert table["step"] == 2 and len(table["rows"]) == EVAL_SET_SIZE
    check_classification_rows(table["columns"], table["rows"], images, labels, logits, lambda cell: cell["file"])


def test_each_evaluator_gets_its_own_table(wandb_offline):
    train, val = digits_loaders(batch_size=32)
    images, labels = val.dataset.tensors
    subsets = {"val_a": slice(0, 100), "val_b": slice(100, None)}
    evaluators = [Evaluator(label=label, dataloader=DataLoader(TensorDataset(images[part], labels[part]), batch_size=32))
                  for label, part in subsets.items()]
    recorder = EvalRecorder()
    sample_logger = SampleLogger("classification", num_samples=12, class_names=DIGITS)
    _, logger = fit(digits_classifier(), train, evaluators, [sample_logger, recorder], [wandb_spec(), "local"],
                    max_duration="2ba", eval_interval="2ba")
    assert [(label, step) for label, step, _ in recorder.evals] == [("val_a", 2), ("val_b", 2)]
    wandb_run = read_only_run(wandb_offline)
    assert not wandb_run.tables("samples/eval")
    for label, part in subsets.items():
        subset_images, subset_labels = images[part][:12], labels[part][:12]
        logits = predict(recorder.evals[0][2], images[part], 32)[:12]
        (step, columns, rows), = wandb_run.tables(f"samples/{label}")
        assert step == 2
        check_classification_rows(columns, rows, subset_images, subset_labels, logits, lambda cell: cell["file"])
        (table,) = local_tables(logger, f"samples/{label}")
        check_classification_rows(table["columns"], table["rows"], subset_images, subset_labels, logits,
                                  lambda cell: cell["file"])


def test_interval_and_train_interval(logbus_dir):
    train, val = digits_loaders(batch_size=16)
    sample_logger = SampleLogger("classification", num_samples=3, interval=2, train_interval=3)
    _, logger = fit(digits_classifier(), train, val, [sample_logger], max_duration="6ba", eval_interval="2ba")
    assert [table["step"] for table in local_tables(logger, "samples/eval")] == [2, 6]  # evals 1 and 3 of 3
    train_tables = local_tables(logger, "samples/train")
    # Batches 0 and 3, each at its own step: where Composer logs that batch's loss.
    assert [table["step"] for table in train_tables] == [0, 3]
    assert all([row[0] for row in table["rows"]] == [0, 1, 2] for table in train_tables)
    loss_steps = [line["step"] for line in local_metrics(logger) if "loss/train/total" in line]
    assert loss_steps == list(range(6))


def test_ground_truth_images_are_encoded_once_across_evals(wandb_offline):
    """Policy ``first`` on an unshuffled loader: the second eval's images are the first eval's files,
    and W&B gets them once: the second eval's table refers to the first eval's reference table."""
    train, val = digits_loaders(batch_size=32)
    images = val.dataset.tensors[0][:30]
    sample_logger = SampleLogger("classification", num_samples=30)
    assert sample_logger.pipeline.worker_ready(120)  # one encoder pool for both evals (see the scratch tests)
    fit(digits_classifier(), train, val, [sample_logger], [wandb_spec()])
    stats = sample_logger.pipeline.stats  # the counts of the worker process's encoder, taken at close
    distinct = len({bytes(pixels) for pixels in images_to_uint8_reference(images).numpy()})
    assert (stats.encoded, stats.reused) == (distinct, 60 - distinct)
    assert stats.reused >= 30

    wandb_run = read_only_run(wandb_offline)
    first, second = wandb_image_sources(wandb_run, "samples/eval")
    assert first["step"] == 2 and second["step"] == 4
    # The first eval logs the reference table (30 image files, one per distinct image) and joins it.
    assert first["reference_logged"] and len(first["reference_images"]) == distinct
    # The second adds no image file: its table refers to the same reference artifact.
    assert not second["reference_logged"] and second["new_images"] == []
    assert second["reference_client_id"] == first["reference_client_id"]
    expected = images_to_uint8_reference(images).numpy()[..., 0]
    for _, columns, rows in wandb_run.tables("samples/eval"):
        assert [row[0] for row in rows] == list(range(30))
        for i, row in enumerate(rows):
            np.testing.assert_array_equal(decode(row[columns.index("image")]["file"]), expected[i])


def wandb_image_sources(run: WandbRun, key: str) -> list[dict]:
    """For each joined table logged under ``key``: its step, whether a reference table was logged at
    the same step, the client id of the artifact its ``table1`` refers to, the image files stored
    with that reference table and the image files the joined table's own artifact added."""
    by_client_id = {}
    for artifact in run.artifacts:
        by_client_id[artifact.client_id] = by_client_id[artifact.sequence_client_id] = artifact
    out = []
    for item in run.history:
        if item.get(f"{key}._type") != "joined-table":
            continue
        reference, _, entry = item[f"{key}.artifact_path"].removeprefix("wandb-client-artifact://").partition("/")
        joined = by_client_id[reference.split(":")[0]]
        table1 = json.loads(Path(joined.files[entry]).read_text())["table1"]
        assert table1 in joined.references, "table1 is stored again instead of referred to"
        reference_id = joined.references[table1].removeprefix("wandb-client-artifact://").split("/")[0]
        out.append({"step": item["_step"], "reference_logged": f"{key}/reference._type" in item,
                    "reference_client_id": reference_id,
                    "reference_images": [path for path in by_client_id[reference_id].files if path.endswith(".png")],
                    "new_images": [path for path in joined.files if path.endswith(".png")]})
    return out


# -- segmentation ----------------------------------------------------------------------------------
class TinySegmenter(ComposerModel):
    """Per-pixel logits ``[N, K, H, W]`` from a two-layer conv net."""

    def __init__(self, num_classes: int = 3):
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, num_classes, 1))

    def forward(self, batch):
        return self.net(batch[0])

    def loss(self, outputs, batch):
        return F.cross_entropy(outputs, batch[1])

    def eval_forward(self, batch, outputs=None):
        return outputs if outputs is not None else self.forward(batch)

    def get_metrics(self, is_train=False):
        return {}


def segmentation_data(count=20, size=10, seed=0):
    generator = torch.Generator().manual_seed(seed)
    images = torch.rand(count, 3, size, size, generator=generator)
    return images, images.argmax(1)  # the brightest channel is the class


def test_segmentation_masks_are_the_targets_and_the_model_argmax(wandb_offline):
    images, masks = segmentation_data()
    loader = DataLoader(TensorDataset(images, masks), batch_size=8)
    classes = ["red", "green", "blue"]
    torch.manual_seed(0)
    model = TinySegmenter()
    sample_logger = SampleLogger("segmentation", num_samples=12, class_names=classes)
    _, logger = fit(model, loader, loader, [sample_logger], [wandb_spec(), "local"], max_duration="2ba",
                    eval_interval="2ba")
    model.eval()
    with torch.no_grad():
        predicted = torch.cat([model.net(images[i:i + 8]) for i in (0, 8)]).argmax(1)[:12]
    pixels = images_to_uint8_reference(images[:12]).numpy()
    assert len({tuple(m.flatten().tolist()) for m in predicted}) > 1 and predicted.unique().numel() > 1

    (table,) = local_tables(logger, "samples/eval")
    assert table["step"] == 2 and table["columns"] == ["id", "image", "pixel_accuracy", "loss", "confidence", "flag"]
    assert [row[0] for row in table["rows"]] == list(range(12))
    for i, row in enumerate(table["rows"]):
        cell = row[1]
        np.testing.assert_array_equal(decode(cell["file"]), pixels[i])
        assert set(cell["masks"]) == {"ground_truth", "prediction"}
        np.testing.assert_array_equal(decode(cell["masks"]["ground_truth"]["file"]), masks[i].numpy())
        np.testing.assert_array_equal(decode(cell["masks"]["prediction"]["file"]), predicted[i].numpy())
        assert cell["masks"]["prediction"]["class_labels"] == {"0": "red", "1": "green", "2": "blue"}
        assert row[2] == pytest.approx(float((predicted[i] == masks[i]).float().mean()))

    (step, columns, rows), = read_only_run(wandb_offline).tables("samples/eval")
    assert step == 2 and len(rows) == 12
    for i, row in enumerate(rows):
        cell = row[columns.index("image")]
        np.testing.assert_array_equal(decode(cell["file"]), pixels[i])
        np.testing.assert_array_equal(decode(cell["masks"]["ground_truth"]["file"]), masks[i].numpy())
        np.testing.assert_array_equal(decode(cell["masks"]["prediction"]["file"]), predicted[i].numpy())
        assert {int(k): v for k, v in cell["class_labels"].items()} == dict(enumerate(classes))


def test_the_local_store_keeps_each_image_and_ground_truth_once_across_evals(logbus_dir):
    """Three evals of the same images through a real Trainer into the local store: the packs hold each
    image and each ground-truth mask once (counted in the packs' rows), every eval's rows refer to them
    by hash and read back exactly, each row's stable key is the same sample's at every eval, and a
    table is at most two files (its rows and a pack of what was new)."""
    images, masks = segmentation_data()
    loader = DataLoader(TensorDataset(images, masks), batch_size=8)
    torch.manual_seed(0)
    sample_logger = SampleLogger("segmentation", num_samples=None, class_names=["red", "green", "blue"])
    _, logger = fit(TinySegmenter(), loader, loader, [sample_logger], ["local"], max_duration="6ba",
                    eval_interval="2ba")
    run_dir = Path(logger.bus.backends["local"].run_dir)
    rows = logbus.read_table(run_dir, "samples/eval")
    assert sorted(set(rows._step)) == [2, 4, 6] and len(rows) == 3 * 20
    pixels = images_to_uint8_reference(images).numpy()
    by_eval = [rows[rows._step == step] for step in (2, 4, 6)]
    for eval_rows in by_eval:
        assert eval_rows.id.tolist() == list(range(20))
        assert eval_rows._sample_key.tolist() == by_eval[0]._sample_key.tolist()
        for i, cell in enumerate(eval_rows.image):
            np.testing.assert_array_equal(cell.to_numpy(), pixels[i])
            np.testing.assert_array_equal(cell.masks["ground_truth"].to_numpy(), masks[i].numpy())
    distinct_images = len({bytes(p) for p in pixels})
    distinct_truths = len({m.numpy().tobytes() for m in masks})
    predictions = {cell.masks["prediction"].hash for cell in rows.image}
    assert pack_rows(run_dir, "image") == distinct_images
    assert pack_rows(run_dir, "mask") == distinct_truths + len(predictions)
    packs = sorted((run_dir / "packs").glob("*.parquet"))
    assert len(packs) <= 3 and len(list((run_dir / "rows").rglob("*.parquet"))) == 3


def test_segmentation_ground_truth_goes_to_wandb_once_and_each_eval_has_its_own_prediction(wandb_offline):
    """Two evals of the same images through Composer's drop-in ``WandBLogger``: the second eval's table
    refers to the first eval's images and ground-truth masks (no image file of its own but the blank
    its prediction masks are drawn on), and every row has that eval's prediction."""
    from logbus.composer import WandBLogger

    images, masks = segmentation_data()
    loader = DataLoader(TensorDataset(images, masks), batch_size=8)
    torch.manual_seed(0)
    model = TinySegmenter()
    recorder = EvalRecorder()
    sample_logger = SampleLogger("segmentation", num_samples=12, class_names=["red", "green", "blue"])
    trainer = Trainer(model=model, train_dataloader=loader, eval_dataloader=loader, max_duration="4ba",
                      eval_interval="2ba", loggers=[WandBLogger(project="logbus-tests")],
                      callbacks=[sample_logger, recorder], device="cpu", progress_bar=False, seed=0,
                      optimizers=torch.optim.SGD(model.parameters(), lr=1.0))
    trainer.fit()
    trainer.close()
    predicted = []
    for _, _, weights in recorder.evals:
        model.load_state_dict(weights)
        model.eval()
        with torch.no_grad():
            predicted.append(torch.cat([model.net(images[i:i + 8]) for i in (0, 8)]).argmax(1)[:12])
    assert not torch.equal(predicted[0], predicted[1])  # the evals differ: each must show its own
    pixels = images_to_uint8_reference(images[:12]).numpy()

    wandb_run = read_only_run(wandb_offline)
    first, second = wandb_image_sources(wandb_run, "samples/eval")
    assert first["reference_logged"] and not second["reference_logged"]
    assert second["reference_client_id"] == first["reference_client_id"]
    # Its own files: one blank background and the prediction masks; no input image, no ground truth.
    own_images = [path for path in second["new_images"] if not path.endswith(".mask.png")]
    assert len(own_images) == 1 and "blank" in own_images[0]
    assert 1 <= len(second["new_images"]) - 1 <= 12
    tables = wandb_run.tables("samples/eval")
    assert [step for step, _, _ in tables] == [2, 4]
    for (_, columns, rows), eval_predicted in zip(tables, predicted):
        assert columns == ["id", "image", "pixel_accuracy", "loss", "confidence", "flag"]
        assert [row[0] for row in rows] == list(range(12))
        for i, row in enumerate(rows):
            cell = row[1]
            np.testing.assert_array_equal(decode(cell["file"]), pixels[i])
            np.testing.assert_array_equal(decode(cell["masks"]["ground_truth"]["file"]), masks[i].numpy())
            np.testing.assert_array_equal(decode(cell["masks"]["prediction"]["file"]), eval_predicted[i].numpy())
            assert not decode(cell["per_eval_file"]).any()  # drawn on a blank, not on a new copy of the image
            assert row[2] == pytest.approx(float((eval_predicted[i] == masks[i]).float().mean()))


# -- the training thread stays free ----------------------------------------------------------------
@pytest.mark.parametrize("worker_process", [True, False])
def test_images_are_never_encoded_on_the_training_thread(logbus_dir, monkeypatch, worker_process):
    """Default: not even in the training process (the worker process encodes them); with
    ``worker_process=False``: on the encoder threads, never on the training thread."""
    import logbus.files._encoding

    original = logbus.files._encoding.encode_image
    threads: list[threading.Thread] = []

    def spy(*args, **kwargs):
        threads.append(threading.current_thread())
        return original(*args, **kwargs)

    # Every module that imported the function holds its own reference: replace them all.
    patched = [name for name, module in list(sys.modules.items())
               if name.startswith("logbus") and getattr(module, "encode_image", None) is original]
    assert "logbus.samples._encoder_pool" in patched
    for name in patched:
        monkeypatch.setattr(sys.modules[name], "encode_image", spy)

    assert threading.current_thread() is threading.main_thread()
    train, val = digits_loaders(batch_size=64)
    sample_logger = SampleLogger("classification", num_samples=None, worker_process=worker_process)
    # Until the worker process is up, batches are processed on threads here rather than wait for it.
    assert sample_logger.pipeline.worker_ready(120) is worker_process
    # Beside the local store (which takes pixels, no files), a backend that does not say it needs no
    # image files: the pipeline makes a file per image for it.
    fit(digits_classifier(), train, val, [sample_logger], backends=("local", RecordingBackend()),
        max_duration="2ba", eval_interval="2ba")
    stats = sample_logger.pipeline.stats
    assert (stats.batches_in_process == 0) is worker_process
    assert stats.encoded > 250
    if worker_process:
        assert threads == []
        return
    assert len(threads) == stats.encoded
    assert threading.main_thread() not in threads
    assert {thread.name.split("_")[0] for thread in threads} == {"logbus-encode"}


class HostCopyCounter(TorchFunctionMode):
    """Counts, on the thread that entered it, the calls that copy tensor data to the host."""

    HOST_COPIES = {torch.Tensor.cpu, torch.Tensor.numpy, torch.Tensor.item, torch.Tensor.tolist}

    def __init__(self):
        super().__init__()
        self.host_copies: list[str] = []
        self.calls: dict[str, int] = {}

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", repr(func))
        self.calls[name] = self.calls.get(name, 0) + 1
        if func in self.HOST_COPIES or (func is torch.Tensor.to and _to_cpu(args[1:], kwargs)):
            self.host_copies.append(name)
        return func(*args, **kwargs)


def _to_cpu(args, kwargs) -> bool:
    for target in (*args, kwargs.get("device")):
        if isinstance(target, (str, torch.device)) and torch.device(target).type == "cpu":
            return True
        if isinstance(target, torch.Tensor) and target.device.type == "cpu":
            return True
    return False


def test_the_training_thread_makes_no_host_copy_for_samples(logbus_dir):
    def counted_fit(callbacks) -> HostCopyCounter:
        train, val = digits_loaders(batch_size=64)
        logger = LogBusLogger(backends=["local"])
        trainer = Trainer(model=digits_classifier(), train_dataloader=train, eval_dataloader=val,
                          max_duration="2ba", eval_interval="2ba", loggers=[logger], callbacks=callbacks,
                          device="cpu", progress_bar=False, seed=0)
        with HostCopyCounter() as counter:
            trainer.fit()
        trainer.close()
        return counter

    without = counted_fit([])
    sample_logger = SampleLogger("classification", num_samples=None)
    with_samples = counted_fit([sample_logger])
    assert sample_logger.pipeline.stats.samples_processed == EVAL_SET_SIZE  # the worker did copy every sample
    # The mode sees the training thread's model ops (2 convolutions a forward, 2 train + 5 eval batches) ...
    assert without.calls.get("conv2d") == with_samples.calls.get("conv2d") == 2 * (2 + 5)
    # ... and the sample pipeline adds no host copy to them.
    assert sorted(with_samples.host_copies) == sorted(without.host_copies)


def test_host_copy_counter_sees_a_copy_on_its_own_thread():
    """The counter can fail: a ``.cpu()``/``.item()``/``.to("cpu")`` on the thread that entered it counts,
    one on another thread does not."""
    tensor = torch.ones(3)
    with HostCopyCounter() as counter:
        tensor.cpu()
        tensor.to("cpu")
        tensor.to(torch.float64)
        tensor[0].item()
        thread = threading.Thread(target=tensor.numpy)
        thread.start()
        thread.join()
    assert counter.host_copies == ["cpu", "to", "item"]


# -- bad input through the Trainer -----------------------------------------------------------------
class DictDataset(Dataset):
    def __init__(self, images, labels):
        self.images, self.labels = images, labels

    def __len__(self):
        return len(self.images)

    def __getitem__(self, index):
        return {"pixels": self.images[index], "label": self.labels[index]}


class DictClassifier(ComposerModel):
    """Takes dict batches ``{"pixels", "label"}``; can be told to return logits for one sample too few."""

    def __init__(self):
        super().__init__()
        self.module = DigitsCNN()
        self.truncate_eval_outputs = False
        self.eval_calls = 0

    def forward(self, batch):
        return self.module(batch["pixels"])

    def loss(self, outputs, batch):
        return F.cross_entropy(outputs, batch["label"])

    def eval_forward(self, batch, outputs=None):
        self.eval_calls += 1
        logits = self.forward(batch)
        return logits[:-1] if self.truncate_eval_outputs else logits

    def get_metrics(self, is_train=False):
        return {}


def dict_loaders(batch_size=32):
    train, val = digits_loaders(batch_size=batch_size)
    return (DataLoader(DictDataset(*train.dataset.tensors), batch_size=batch_size, shuffle=True),
            DataLoader(DictDataset(*val.dataset.tensors), batch_size=batch_size))


def test_dict_batches_use_input_key_and_target_key(logbus_dir):
    train, val = dict_loaders()
    images, labels = val.dataset.images, val.dataset.labels
    sample_logger = SampleLogger("classification", num_samples=5, input_key="pixels", target_key="label")
    torch.manual_seed(0)
    _, logger = fit(DictClassifier(), train, val, [sample_logger], max_duration="2ba", eval_interval="2ba")
    (table,) = local_tables(logger, "samples/eval")
    assert [row[2] for row in table["rows"]] == labels[:5].tolist()
    expected = images_to_uint8_reference(images[:5]).numpy()[..., 0]
    for i, row in enumerate(table["rows"]):
        np.testing.assert_array_equal(decode(row[1]["file"]), expected[i])


@pytest.mark.parametrize("keys, message", [
    ({"input_key": "image", "target_key": "label"}, r"input_key: 'image' is not in the batch \(a dict with keys "
                                                    r"\['pixels', 'label'\]\)"),
    ({"input_key": "pixels", "target_key": 1}, r"target_key: 1 is not in the batch"),
])
def test_a_key_missing_from_the_batch_raises_at_the_first_eval_batch(logbus_dir, keys, message):
    train, val = dict_loaders()
    model = DictClassifier()
    logger = LogBusLogger(backends=["local"])
    trainer = Trainer(model=model, train_dataloader=train, eval_dataloader=val, max_duration="2ba",
                      eval_interval="2ba", loggers=[logger], callbacks=[SampleLogger("classification", **keys)],
                      device="cpu", progress_bar=False, seed=0)
    with pytest.raises(ValueError, match=message):
        trainer.fit()
    assert model.eval_calls == 1
    assert logger.bus.flush()
    assert [line["step"] for line in local_metrics(logger) if "loss/train/total" in line] == [0, 1]
    trainer.close()


class TruncateSecondEval(Callback):
    def __init__(self, model: DictClassifier):
        self.model, self.evals = model, 0

    def eval_start(self, state, logger):
        self.evals += 1
        self.model.truncate_eval_outputs = self.evals == 2
        self.model.eval_calls = 0


def test_a_bad_batch_raises_in_the_trainer_and_what_came_before_is_delivered(wandb_offline):
    train, val = dict_loaders()
    labels = val.dataset.labels
    torch.manual_seed(0)
    model = DictClassifier()
    sample_logger = SampleLogger("classification", num_samples=40, input_key="pixels", target_key="label")
    logger = LogBusLogger(backends=[wandb_spec(), "local"])
    trainer = Trainer(model=model, train_dataloader=train, eval_dataloader=val, max_duration="6ba",
                      eval_interval="2ba", loggers=[logger], callbacks=[sample_logger, TruncateSecondEval(model)],
                      device="cpu", progress_bar=False, seed=0)
    with pytest.raises(ValueError, match=r"outputs: expected batch size 32 \(as the images\), got shape \(31, 10\)"):
        trainer.fit()
    assert model.eval_calls == 1  # the first bad batch of the second eval
    assert logger.bus.flush()
    assert [line["step"] for line in local_metrics(logger) if "loss/train/total" in line] == [0, 1, 2, 3]
    (table,) = local_tables(logger, "samples/eval")  # the first eval's table
    assert table["step"] == 2 and [row[2] for row in table["rows"]] == labels[:40].tolist()
    trainer.close()
    wandb_run = read_only_run(wandb_offline)
    assert [step for step, _, _ in wandb_run.tables("samples/eval")] == [2]
    assert [step for step, _ in wandb_run.metric("loss/train/total")] == [0, 1, 2, 3]


def test_an_eval_that_raised_half_way_does_not_leak_into_the_next_one(logbus_dir):
    train, val = dict_loaders()
    images, labels = val.dataset.images, val.dataset.labels
    model = DictClassifier()
    sample_logger = SampleLogger("classification", num_samples=40, input_key="pixels", target_key="label")
    logger = LogBusLogger(backends=["local"])
    trainer = Trainer(model=model, train_dataloader=train, eval_dataloader=val, max_duration="2ba",
                      eval_interval="2ba", loggers=[logger], callbacks=[sample_logger], device="cpu",
                      progress_bar=False, seed=0)
    original_eval_forward = model.eval_forward

    def bad_second_batch(batch, outputs=None):  # batch 1 passes, batch 2 is bad
        model.truncate_eval_outputs = model.eval_calls == 1
        return original_eval_forward(batch, outputs)

    model.eval_forward = bad_second_batch
    with pytest.raises(ValueError, match=r"outputs: expected batch size 32"):
        trainer.fit()
    assert model.eval_calls == 2
    del model.eval_forward
    model.truncate_eval_outputs = False

    # The user evaluates again, on other data: the table is that eval's first samples only.
    reversed_loader = DataLoader(DictDataset(images.flip(0), labels.flip(0)), batch_size=32)
    trainer.eval(eval_dataloader=reversed_loader)
    assert logger.bus.flush()
    (table,) = local_tables(logger, "samples/eval")
    assert [row[0] for row in table["rows"]] == list(range(40))
    assert [row[2] for row in table["rows"]] == labels.flip(0)[:40].tolist()
    trainer.close()


def test_sample_logger_needs_a_logbus_logger(logbus_dir):
    train, val = digits_loaders(batch_size=64)
    with pytest.raises(ValueError, match=r"SampleLogger: the Trainer needs a logbus logger"):
        Trainer(model=digits_classifier(), train_dataloader=train, eval_dataloader=val, max_duration="1ba",
                callbacks=[SampleLogger()], device="cpu", progress_bar=False)


def test_every_logbus_logger_in_the_trainer_gets_the_tables(wandb_offline):
    """``loggers=[WandBLogger(...), LogBusLogger(backends=["local"])]``: both runs hold every sample
    table with its images, and the encoded files are deleted only after the last logger closed."""
    from logbus.composer import WandBLogger

    train, val = digits_loaders(batch_size=64)
    images = val.dataset.tensors[0]
    wandb_logger, local_logger = WandBLogger(project="logbus-tests"), LogBusLogger(backends=["local"])
    sample_logger = SampleLogger("classification", num_samples=6)
    trainer = Trainer(model=digits_classifier(), train_dataloader=train, eval_dataloader=val, max_duration="4ba",
                      eval_interval="2ba", loggers=[wandb_logger, local_logger], callbacks=[sample_logger],
                      device="cpu", progress_bar=False, seed=0, run_name="two-loggers")
    trainer.fit()
    trainer.close()

    expected = images_to_uint8_reference(images[:6]).numpy()[..., 0]
    wandb_tables = read_only_run(wandb_offline).tables("samples/eval")
    local = local_tables(local_logger, "samples/eval")
    assert [step for step, _, _ in wandb_tables] == [table["step"] for table in local] == [2, 4]
    for (_, columns, rows), table in zip(wandb_tables, local):
        assert columns == table["columns"] and [row[0] for row in rows] == [row[0] for row in table["rows"]] == list(range(6))
        for i in range(6):
            np.testing.assert_array_equal(decode(rows[i][1]["file"]), expected[i])
            np.testing.assert_array_equal(decode(table["rows"][i][1]["file"]), expected[i])
    assert not Path(sample_logger.pipeline.encoder.folder).exists()
    # The encoded files were kept where the local backend (on the second logger) hard-links them.
    assert Path(sample_logger.pipeline.encoder.folder).parent == Path(local_logger.bus.backends["local"].root) / ".scratch"
    for bus in (wandb_logger.bus, local_logger.bus):
        assert all(not backend["failures"] and not backend["dropped"] for backend in bus.stats()["backends"].values())


@pytest.mark.parametrize("arguments, error, message", [
    ({"extractor": "captioning"}, KeyError, r"unknown extractor 'captioning'; known extractors: classification, "),
    ({"policy": "random"}, ValueError, r"policy: expected one of 'first', 'reservoir', 'per_class', 'hardest', got 'random'"),
    ({"extractor": "segmentation", "policy": "per_class"}, ValueError, r"policy: 'per_class' needs an extractor"),
    ({"interval": 0}, ValueError, r"interval: expected an int >= 1, got 0"),
    ({"train_interval": True}, TypeError, r"train_interval: expected an int >= 1 or None, got True"),
])
def test_bad_sample_logger_arguments_raise_at_construction(arguments, error, message):
    with pytest.raises(error, match=message):
        SampleLogger(**arguments)


def test_two_sample_loggers_with_one_key_prefix_are_refused_and_distinct_prefixes_keep_both(wandb_offline):
    """Both would log ``samples/eval`` at every eval step, and W&B keeps only the last table of a step:
    the Trainer is refused at ``Event.INIT`` with an error naming the key prefix. With a key prefix
    each, both tables of every eval are in the W&B run."""
    train, val = digits_loaders(batch_size=64)
    with pytest.raises(ValueError, match=r"key_prefix: 'samples' is already used by another sample stream on this "
                                         r"run.*key_prefix='samples-classification'"):
        Trainer(model=digits_classifier(), train_dataloader=train, eval_dataloader=val, max_duration="2ba",
                loggers=[LogBusLogger(backends=["local"])], callbacks=[SampleLogger(num_samples=4),
                                                                     SampleLogger(num_samples=4, policy="reservoir")],
                device="cpu", progress_bar=False)

    first = SampleLogger(num_samples=4)
    second = SampleLogger(num_samples=4, policy="reservoir", key_prefix="samples-reservoir")
    fit(digits_classifier(), train, val, [first, second], [wandb_spec()], max_duration="2ba", eval_interval="2ba")
    wandb_run = read_only_run(wandb_offline)
    (step, _, rows), = wandb_run.tables("samples/eval")
    (reservoir_step, _, reservoir_rows), = wandb_run.tables("samples-reservoir/eval")
    assert step == reservoir_step == 2
    assert [row[0] for row in rows] == [0, 1, 2, 3] and len(reservoir_rows) == 4


def test_two_sample_streams_logging_one_key_on_a_run_are_refused_at_the_first_add(wandb_offline):
    """A plain loop's streams may share a key prefix with labels of their own (``eval``, ``train``);
    the second stream to use a label the first one logs is refused at that ``add``/``log``, naming
    the key, and nothing logged is lost: each key holds its own stream's table."""
    import logbus

    images = torch.rand(4, 1, 8, 8)
    truth = torch.tensor([0, 1, 2, 3])
    logits = torch.nn.functional.one_hot(truth, 10).float()
    with logbus.start_run("two-streams", backends=[wandb_spec()]) as run:
        first = run.samples("classification", num_samples=4)
        second = run.samples("classification", num_samples=2)
        first.add(images, truth, logits, label="eval")
        with pytest.raises(ValueError, match=r"label: 'eval' is already logged as 'samples/eval' by another sample "
                                             r"stream on this run.*key_prefix='samples-classification'"):
            second.add(images, truth, logits, label="eval")
        with pytest.raises(ValueError, match=r"label: 'eval' is already logged as 'samples/eval'"):
            second.log("eval", step=1)
        second.add(images, truth, logits, label="train")  # a key of its own: fine
        own = run.samples("classification", num_samples=3, key_prefix="samples-b")
        own.add(images, truth, logits, label="eval")
        first.log("eval", step=1)
        second.log("train", step=1)
        own.log("eval", step=1)

    wandb_run = read_only_run(wandb_offline)
    rows = {key: [(step, len(table_rows)) for step, _, table_rows in wandb_run.tables(key)]
            for key in ("samples/eval", "samples/train", "samples-b/eval")}
    assert rows == {"samples/eval": [(1, 4)], "samples/train": [(1, 2)], "samples-b/eval": [(1, 3)]}
