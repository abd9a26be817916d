"""``logbus demo`` / ``make demo``: a small CNN trained with Composer on the digits data that ships
inside logbus, logged to W&B (offline unless you are logged in) and the local run folder."""

from __future__ import annotations

import gzip
import os
from importlib import resources

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset


def load_digits() -> tuple[torch.Tensor, torch.Tensor]:
    """1,797 images ``[N, 1, 8, 8]`` in [0, 1] and their labels, from the file shipped in the package."""
    with resources.files("logbus.demo").joinpath("data/digits.csv.gz").open("rb") as raw:
        table = np.loadtxt(gzip.open(raw), delimiter=",", dtype=np.float32)
    images = torch.from_numpy(table[:, :-1] / 16.0).reshape(-1, 1, 8, 8)
    return images, torch.from_numpy(table[:, -1].astype(np.int64))


class DigitsCNN(nn.Module):
    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(),
            nn.MaxPool2d(2), nn.Flatten(), nn.Linear(32 * 4 * 4, 64), nn.ReLU(), nn.Linear(64, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def digits_loaders(batch_size: int = 64, seed: int = 0) -> tuple[DataLoader, DataLoader]:
    images, labels = load_digits()
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(seed))
    train, val = order[:1500], order[1500:]
    return (DataLoader(TensorDataset(images[train], labels[train]), batch_size=batch_size, shuffle=True),
            DataLoader(TensorDataset(images[val], labels[val]), batch_size=batch_size))


def main(epochs: int = 5, backends: list[str] | None = None) -> int:
    from composer import Trainer
    from composer.models import ComposerClassifier

    from logbus.composer import LogBusLogger, SampleLogger
    from logbus.plugins.local import DEFAULT_ROOT

    if not os.environ.get("WANDB_API_KEY") and "WANDB_MODE" not in os.environ:
        os.environ["WANDB_MODE"] = "offline"  # no account needed; `wandb sync` uploads it later
    # The demo writes nothing in the current folder but the local backend's root (./logbus_runs, or
    # $LOGBUS_DIR): W&B's own `wandb/` folder goes there too unless $WANDB_DIR says where. (A `wandb/`
    # folder in a project's root also makes ruff's isort take `import wandb` for first-party code.)
    wandb_options: dict = {"project": "logbus-demo"}
    if not os.environ.get("WANDB_DIR"):
        root = os.environ.get("LOGBUS_DIR") or DEFAULT_ROOT
        os.makedirs(root, exist_ok=True)
        wandb_options["init_kwargs"] = {"dir": root}
    backends = backends or ["wandb", "local"]
    specs = [("wandb", wandb_options) if name == "wandb" else name for name in backends]
    logger = LogBusLogger(backends=specs)
    train_loader, val_loader = digits_loaders()
    torch.manual_seed(0)
    model = ComposerClassifier(DigitsCNN(), num_classes=10)
    trainer = Trainer(
        model=model,
        train_dataloader=train_loader,
        eval_dataloader=val_loader,
        max_duration=f"{epochs}ep",
        optimizers=torch.optim.Adam(model.parameters(), lr=3e-3),
        loggers=[logger],
        # The 100 hardest validation digits of each eval: a table `samples/eval` with image, truth,
        # prediction, confidence and loss (`logbus view` on the local run, or the W&B run).
        callbacks=[SampleLogger("classification", num_samples=100, policy="hardest",
                                class_names=[str(digit) for digit in range(10)])],
        progress_bar=True,
        device="cpu",
        run_name="logbus-demo",
        seed=0,
    )
    trainer.fit()
    trainer.close()
    print("\nlogbus demo finished.")
    for name, backend in logger.bus.backends.items():
        run_dir = getattr(backend, "run_dir", None)
        if not run_dir:
            continue
        if name == "wandb":
            # The backend's run_dir is wandb's `run.dir` (`<run folder>/files`, as in Composer's
            # WandBLogger); `wandb sync` and `wandb leet inspect` take the run folder itself.
            run_dir = os.path.dirname(run_dir)
        print(f"  {name}: {run_dir}")
        if name == "local":
            print(f"  viewer (metrics, samples, confusion matrix): logbus view {run_dir}")
            print(f"  in Python: logbus.read_table({run_dir!r}, 'samples/eval')")
        if name == "wandb" and os.environ.get("WANDB_MODE") == "offline":
            print(f"  upload the W&B run later with: wandb sync {run_dir}")
    return 0
