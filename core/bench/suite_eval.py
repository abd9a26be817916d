"""Composer eval time with no sample logging, with the W&B guide's ``LogPredictions`` callback, and
with ``SampleLogger`` logging every eval sample: the three in one run, drain at the end included.

    .venv/bin/pytest benchmarks/bench_eval.py --benchmark-only

Each round builds a fresh Trainer (not timed), then times two ``trainer.eval()`` passes plus
``trainer.close()``, which drains every queued table to W&B (offline) before returning.

The guide's callback is the documented one, adapted only to Composer 0.32's names
(``state.timer`` -> ``state.timestamp``, ``state.batch_pair`` -> ``state.batch``), with Composer's
own ``WandBLogger`` made to run on current wandb (``Run.get_url`` was removed in wandb 0.29).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from logbus.bench.fixtures import wandb_offline  # noqa: F401  (a fixture)
from logbus.bench.settings import quick, rounds, sizes

if TYPE_CHECKING:
    from composer.core import Callback

QUICK = quick()
# image side -> eval images (224 px kept smaller so CPU runs stay short; quick mode for `logbus bench`)
SIZES = sizes({32: 256, 224: 32} if QUICK else {32: 2048, 224: 256})  # $LOGBUS_BENCH_SIZES
# Never fewer than 3 (settings.MIN_ROUNDS): a ratio is shown with its range (min to max over the rounds).
ROUNDS = rounds(3)
BATCH = 128


class SmallCNN(nn.Module):
    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                                      nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(4))
        self.head = nn.Linear(64 * 16, num_classes)

    def forward(self, x):
        return self.head(self.features(x).flatten(1))


def LogPredictions(num_samples: int) -> Callback:  # named as the guide names its class
    """The W&B guide's callback for Composer (every eval sample, one wandb.Image per sample)."""
    import wandb
    from composer.core import Callback

    class _LogPredictions(Callback):
        def __init__(self):
            self.num_samples, self.data = num_samples, []

        def eval_batch_end(self, state, logger):
            if len(self.data) < self.num_samples:
                n = self.num_samples
                x, y = state.batch
                outputs = state.outputs.argmax(-1)
                self.data += [[wandb.Image(x_i), y_i, y_pred] for x_i, y_i, y_pred in
                              list(zip(x[:n], y[:n], outputs[:n]))]

        def eval_end(self, state, logger):
            table = wandb.Table(columns=["image", "ground truth", "prediction"], data=self.data[:self.num_samples])
            wandb.log({"sample_table": table}, step=int(state.timestamp.batch))
            self.data = []

    return _LogPredictions()


def _composer_wandb_logger():
    import wandb
    from composer.loggers import WandBLogger

    if not hasattr(wandb.sdk.wandb_run.Run, "get_url"):
        # Put back where wandb 0.29 removed it (so its stubs do not have it) for Composer's WandBLogger.
        wandb.sdk.wandb_run.Run.get_url = lambda self: self.url  # type: ignore[attr-defined]
    return WandBLogger(project="bench")


def make_trainer(variant: str, size: int):
    from composer import Trainer
    from composer.models import ComposerClassifier

    from logbus.composer import SampleLogger, WandBLogger

    count = SIZES[size]
    generator = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.rand(count, 3, size, size, generator=generator),
                         torch.randint(0, 10, (count,), generator=generator))
    callbacks, loggers = [], [WandBLogger(project="bench")]
    if variant == "guide":
        loggers, callbacks = [_composer_wandb_logger()], [LogPredictions(num_samples=count)]
    elif variant == "sample_logger":
        callbacks = [SampleLogger("classification", num_samples=None)]
    elif variant == "sample_logger_jpeg":
        callbacks = [SampleLogger("classification", num_samples=None, image_format="jpeg")]
    torch.manual_seed(0)
    trainer = Trainer(model=ComposerClassifier(SmallCNN(), num_classes=10), eval_dataloader=DataLoader(data, BATCH),
                      loggers=loggers, callbacks=callbacks, progress_bar=False, device="cpu", run_name=f"bench-{variant}")
    return trainer


def two_evals_and_drain(trainer) -> None:
    trainer.eval()
    trainer.eval()
    trainer.close()


@pytest.mark.parametrize("variant", ["no_sample_logging", "guide", "sample_logger", "sample_logger_jpeg"])
@pytest.mark.parametrize("size", sorted(SIZES))
def test_eval_with_sample_logging(benchmark, wandb_offline, variant, size):
    benchmark.group = f"eval {SIZES[size]} images {size}x{size}, 2 evals + drain"
    benchmark.extra_info.update(variant=variant, size=size, images=SIZES[size])
    benchmark.pedantic(two_evals_and_drain, setup=lambda: ((make_trainer(variant, size),), {}), rounds=ROUNDS)
