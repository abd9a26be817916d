"""The drop-in ``logbus.composer.WandBLogger`` behaves as ``composer.loggers.WandBLogger`` where user code
can tell: the global ``wandb.run`` from ``Event.INIT`` on, users' own ``wandb.log`` calls, ``isinstance``
and attributes, images, step-less calls, checkpoints, download on every rank, and bad input.

Each test runs a real Composer ``Trainer`` (or calls the destination as Composer's own tests do) and
reads the offline W&B run back with ``wandb leet inspect --json``. What Composer's logger itself would
do is computed with Composer's own code where it still runs on wandb 0.31 (its image conversion);
its ``init`` calls the removed ``wandb.run.get_url()`` and cannot run here.
"""

from __future__ import annotations

import inspect
import os
import time

import composer.loggers
import numpy as np
import pytest
import torch
import wandb
from composer import Callback, State, Trainer
from composer.core import Engine, Event
from composer.loggers import Logger
from composer.models import ComposerClassifier
from local_reader import assert_same_series
from PIL import Image as PILImage
from test_composer_adapter import LOSS, ComposerCalls, make_trainer
from wandb_reader import read_only_run

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
