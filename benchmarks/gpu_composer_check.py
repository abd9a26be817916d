"""The whole product on a GPU: a Composer ``Trainer`` with ``SampleLogger`` and the drop-in ``WandBLogger``.

Run by ``benchmarks/gpu_check.sh`` on a lent H100/H200, after it has installed the Composer and wandb
wheels that ``benchmarks/gpu_wheels.sh`` downloaded here (the GPU image has neither, and reaches no
package registry). For each task (``classification``: a ResNet-18; ``segmentation``: a small
fully-convolutional net) and image size (32 and 224 px), it trains on synthetic data with periodic
evals, once without sample logging and once with ``SampleLogger`` logging every eval sample, both
with the drop-in ``WandBLogger`` (offline) plus the local backend. It reports:

- ``eval_loop_ratio``: wall time of the eval loops (``eval_start`` to ``eval_end``) with / without
  sample logging, and ``fit_close_ratio``: ``fit()`` + ``close()`` with / without (medians over
  rounds, with their spread);
- ``sync_errors``: every logbus call on the training thread (its Composer events and logger
  methods) runs under ``torch.cuda.set_sync_debug_mode("error")``, so a synchronising call there
  ends ``fit`` and is reported; Composer's own code is left alone (it reads the loss back itself);
- ``rows``: every eval's table read back from the W&B offline run (``wandb leet inspect --json``) and
  from the local run folder, against the number of eval samples;
- ``batches_dropped``: the sample pipeline's own count.

Prints one JSON object and writes it to ``$OUT/gpu_composer_<card>.json`` when ``OUT`` is set.
``--dry-run`` runs the same code on the CPU with tiny sizes (checks the script; run in CI by
``tests/test_gpu_scripts.py``). Never read a ratio from a dry run: it is not a GPU figure.
"""

from __future__ import annotations

import argparse
import functools
import glob
import json
import os
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from composer.core import Callback
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

_TESTS = Path(__file__).resolve().parents[1] / "tests"
NUM_CLASSES = 10
# The logbus methods Composer calls on the training thread: each runs under sync-debug mode "error".
_TRAINING_THREAD_METHODS = ("run_event", "log_metrics", "log_hyperparameters", "log_traces", "log_table",
                            "log_images", "upload_file")


def classifier(num_classes: int = NUM_CLASSES) -> nn.Module:
    import torchvision

    return torchvision.models.resnet18(num_classes=num_classes)


class Segmenter(nn.Module):
    """A small fully-convolutional net: per-pixel logits at the input's resolution."""

    def __init__(self, num_classes: int = NUM_CLASSES):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 32, 3, padding=1),
                                  nn.ReLU(), nn.Conv2d(32, num_classes, 1))

    def forward(self, x):
        return self.body(x)


def composer_model(task: str):
    from composer.models import ComposerClassifier
    from torchmetrics.classification import MulticlassAccuracy

    if task == "classification":
        return ComposerClassifier(classifier(), num_classes=NUM_CLASSES)
    # Plain cross entropy and accuracy work per pixel on (N, C, H, W) logits and (N, H, W) targets.
    return ComposerClassifier(Segmenter(), num_classes=NUM_CLASSES, loss_fn=nn.functional.cross_entropy,
                              train_metrics=MulticlassAccuracy(num_classes=NUM_CLASSES, average="micro"),
                              val_metrics=MulticlassAccuracy(num_classes=NUM_CLASSES, average="micro"))


def data(task: str, count: int, size: int, batch: int, seed: int) -> DataLoader:
    generator = torch.Generator().manual_seed(seed)
    images = torch.rand(count, 3, size, size, generator=generator)
    shape = (count,) if task == "classification" else (count, size, size)
    targets = torch.randint(0, NUM_CLASSES, shape, generator=generator)
    return DataLoader(TensorDataset(images, targets), batch_size=batch, pin_memory=torch.cuda.is_available())


class EvalClock(Callback):
    """Wall time spent between each ``eval_start`` and its ``eval_end``."""

    def __init__(self):
        self.seconds, self._started = 0.0, 0.0

    def eval_start(self, state, logger):
        self._started = time.perf_counter()

    def eval_end(self, state, logger):
        self.seconds += time.perf_counter() - self._started


def strict_on_training_thread(obj, device: str) -> None:
    """Runs ``obj``'s training-thread methods under ``set_sync_debug_mode("error")`` (CUDA only)."""
    if device != "cuda":
        return
    for name in _TRAINING_THREAD_METHODS:
        method = getattr(obj, name, None)
        if method is None:
            continue

        @functools.wraps(method)
        def strict(*args, _method=method, **kwargs):
            previous = torch.cuda.get_sync_debug_mode()
            torch.cuda.set_sync_debug_mode("error")
            try:
                return _method(*args, **kwargs)
            finally:
                torch.cuda.set_sync_debug_mode(previous)

        setattr(obj, name, strict)


def one_run(task: str, size: int, sizes: dict, device: str, folder: str, log_samples: bool) -> dict:
    from composer import Trainer

    from logbus.composer import LogBusLogger, SampleLogger, WandBLogger

    run_name = f"{task}-{size}-{'samples' if log_samples else 'plain'}-{len(os.listdir(folder))}"
    wandb_logger = WandBLogger(project="logbus-gpu-check", init_kwargs={"dir": folder, "mode": "offline"})
    local_logger = LogBusLogger(backends=[("local", {"root": folder})])
    clock = EvalClock()
    callbacks = [clock]
    sample_logger = None
    if log_samples:
        sample_logger = SampleLogger(task, num_samples=None, mean=[0.5] * 3, std=[0.25] * 3)
        callbacks.append(sample_logger)
    for obj in (wandb_logger, local_logger, *([sample_logger] if sample_logger else [])):
        strict_on_training_thread(obj, device)
    model = composer_model(task)
    trainer = Trainer(model=model, optimizers=torch.optim.SGD(model.parameters(), lr=0.01), run_name=run_name,
                      device="gpu" if device == "cuda" else "cpu",
                      train_dataloader=data(task, sizes["train"], size, sizes["batch"], seed=0),
                      eval_dataloader=data(task, sizes["eval"], size, sizes["batch"], seed=1),
                      max_duration=f"{sizes['batches']}ba", eval_interval=f"{sizes['eval_every']}ba",
                      loggers=[wandb_logger, local_logger], callbacks=callbacks, progress_bar=False,
                      log_to_console=False, seed=0)
    started = time.perf_counter()
    error = None
    try:
        trainer.fit()
    except Exception as caught:  # a sync-debug error (or any other) is a finding, not a crash of the check
        error = f"{type(caught).__name__}: {caught}"
    trainer.close()
    wall = time.perf_counter() - started
    pipeline = getattr(sample_logger, "pipeline", None) if sample_logger else None
    stats = getattr(pipeline, "stats", None)
    return {"run_name": run_name, "fit_close_seconds": wall, "eval_loop_seconds": clock.seconds, "error": error,
            "batches_dropped": getattr(stats, "batches_dropped", 0), "wandb_dir": wandb_logger.run_dir}


def rows_read_back(folder: str, run_name: str, evals: int, eval_samples: int) -> dict:
    """Rows of ``samples/eval`` per eval, from the W&B offline run and from the local run folder."""
    sys.path.insert(0, str(_TESTS))
    from wandb_reader import read_wandb_run

    wandb_rows, local_rows = [], []
    for run_dir in sorted(glob.glob(os.path.join(folder, "wandb", "offline-run-*"))):
        run = read_wandb_run(run_dir)
        if run.run.get("display_name") == run_name:
            wandb_rows = [len(rows) for _, _, rows in run.tables("samples/eval")]
    from logbus.plugins.local import list_tables

    tables = list_tables(os.path.join(folder, run_name))
    local_rows = tables[tables.key == "samples/eval"].rows.tolist()
    expected = [eval_samples] * evals
    return {"wandb": wandb_rows, "local": local_rows, "expected": expected,
            "passed": wandb_rows == expected and local_rows == expected}


def spread(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def measure(task: str, size: int, sizes: dict, device: str, rounds: int) -> dict:
    timings = {False: [], True: []}
    result: dict = {"task": task, "size": size, **sizes, "rounds": rounds, "errors": [], "batches_dropped": 0}
    with tempfile.TemporaryDirectory() as folder:
        one_run(task, size, sizes, device, folder, log_samples=True)  # warm-up: kernels, encoders, wandb
        for _ in range(rounds):
            for log_samples in (False, True):  # interleaved, so drift hits both variants alike
                run = one_run(task, size, sizes, device, folder, log_samples)
                timings[log_samples].append(run)
                if run["error"]:
                    result["errors"].append(run["error"])
                result["batches_dropped"] += run["batches_dropped"]
        last = timings[True][-1]
        result["rows"] = rows_read_back(folder, last["run_name"], sizes["batches"] // sizes["eval_every"],
                                        sizes["eval"])
    for metric in ("eval_loop_seconds", "fit_close_seconds"):
        plain, logged = ([run[metric] for run in timings[flag]] for flag in (False, True))
        result[metric] = {"plain": spread(plain), "samples": spread(logged)}
        base = statistics.median(plain) or float("nan")  # 0 only when fit failed before any eval
        ratio = statistics.median(logged) / base
        # A ratio is a finding only when it differs from 1 by more than the baseline's own spread.
        noise = (max(plain) - min(plain)) / base
        result[metric.replace("_seconds", "_ratio")] = {"ratio": ratio, "noise": noise,
                                                        "within_noise": abs(ratio - 1) <= noise}
    result["passed"] = not result["errors"] and result["batches_dropped"] == 0 and result["rows"]["passed"]
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry-run", action="store_true", help="CPU, tiny sizes, no CUDA needed")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    os.environ.setdefault("WANDB_MODE", "offline")
    os.environ.setdefault("WANDB_SILENT", "true")
    if args.dry_run:
        device, rounds, cases = "cpu", 1, [("classification", 16), ("segmentation", 16)]
        sizes = {16: {"train": 32, "eval": 16, "batch": 8, "batches": 4, "eval_every": 2}}
    else:
        if not torch.cuda.is_available():
            sys.exit("gpu_composer_check: no CUDA device (use --dry-run for a CPU plumbing check)")
        device, rounds = "cuda", args.rounds
        cases = [(task, size) for task in ("classification", "segmentation") for size in (32, 224)]
        sizes = {32: {"train": 4096, "eval": 2048, "batch": 256, "batches": 16, "eval_every": 8},
                 224: {"train": 1024, "eval": 512, "batch": 64, "batches": 16, "eval_every": 8}}
    import triton

    card = "cpu (dry run)" if args.dry_run else torch.cuda.get_device_name()
    result = {"card": card, "torch": torch.__version__, "triton": triton.__version__, "cases": []}
    for task, size in cases:
        result["cases"].append(measure(task, size, sizes[size], device, rounds))
        print(json.dumps(result["cases"][-1]), flush=True)
    result["passed"] = all(case["passed"] for case in result["cases"])
    text = json.dumps(result, indent=1)
    print(text)
    if os.environ.get("OUT"):
        name = re.sub(r"[^A-Za-z0-9]+", "_", card).strip("_").lower()
        Path(os.environ["OUT"], f"gpu_composer_{name}.json").write_text(text)
    print(f"{'case':<22}{'eval loop':>12}{'fit+close':>12}{'dropped':>9}{'rows ok':>9}")
    for case in result["cases"]:
        print(f"{case['task'] + ' ' + str(case['size']) + 'px':<22}{case['eval_loop_ratio']['ratio']:>11.3f}x"
              f"{case['fit_close_ratio']['ratio']:>11.3f}x{case['batches_dropped']:>9}{str(case['rows']['passed']):>9}")
    sys.exit(0 if result["passed"] else 1)


if __name__ == "__main__":
    main()
