"""The sample pipeline's promise, measured, each variant in one run:

(a) loop stall: the eval loop with and without sample logging;
(b) end to end: two evals plus ``close`` (every table delivered), with the local backend and with
    W&B offline, the W&B guide's naive callback (per-sample ``wandb.Image`` on the training thread)
    alongside;
(c) the backend alone: the time the same backend takes to ingest the same two tables, built
    beforehand. logbus's own share of (b) is (b) minus the no-logging run minus (c).

    .venv/bin/pytest benchmarks/bench_pipeline.py --benchmark-only --benchmark-columns=min,median,max,rounds

Variants: no sample logging; ``SampleLogger`` logging every eval sample with its per-sample work in
the worker process (the default); the same on threads of the training process
(``worker_process=False``). The worker process is up before the timed part (``worker_ready``): it
is started once per training process, so a run pays its start once, not per eval.
Compare medians only where the spread (min to max) is smaller than the difference.
Under ``--benchmark-disable`` (``make test``) every function runs once on a few images, as a test.
"""

from __future__ import annotations

import os
from typing import Any

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from logbus.bench.fixtures import wandb_offline  # noqa: F401  (a fixture)
from logbus.bench.settings import quick, rounds, sizes
from logbus.bench.suite_eval import BATCH, LogPredictions, SmallCNN, _composer_wandb_logger

QUICK = quick()
# ``logbus bench`` (about a minute in all): the promise's two figures, (a) and (b) with the local
# backend, at 32 px with and without sample logging; the full matrix is for ``benchmarks/``.
COMMAND = bool(os.environ.get("LOGBUS_BENCH_COMMAND"))
SIZES = {32: 512} if COMMAND else sizes({32: 512, 224: 64} if QUICK else {32: 2048, 224: 256})  # $LOGBUS_BENCH_SIZES
TEST_SIZES = {32: 2 * BATCH, 224: 16}  # under --benchmark-disable: run once, as a test
ROUNDS = rounds(3 if QUICK or COMMAND else 5)  # $LOGBUS_BENCH_ROUNDS, never fewer than 3 (logbus.bench.settings)
# SampleLogger keywords per variant (None: no SampleLogger)
VARIANTS: dict[str, dict[str, Any] | None] = {
    "no_sample_logging": None, "sample_logger": {}, "sample_logger_threads": {"worker_process": False}}
RUN_VARIANTS = ["no_sample_logging", "sample_logger"] if COMMAND else list(VARIANTS)
BACKENDS = {"local": "local", "wandb": ("wandb", {"project": "bench"})}
RUN_BACKENDS = ["local"] if COMMAND else list(BACKENDS)
TASKS = ["classification"] if COMMAND else ["classification", "segmentation"]
CLASS_NAMES = [str(c) for c in range(10)]
SEGMENTATION_CLASSES = 5


def image_count(benchmark, size: int) -> int:
    return TEST_SIZES[size] if benchmark.disabled else SIZES[size]


def eval_data(count: int, size: int, task: str = "classification") -> TensorDataset:
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(count, 3, size, size, generator=generator)
    if task == "segmentation":  # class-id masks, one per image
        return TensorDataset(images, torch.randint(0, SEGMENTATION_CLASSES, (count, size, size), generator=generator))
    return TensorDataset(images, torch.randint(0, 10, (count,), generator=generator))


class SmallFCN(torch.nn.Module):
    """A small fully convolutional net: per-pixel logits [N, K, H, W] for the segmentation variants."""

    def __init__(self, num_classes: int = SEGMENTATION_CLASSES):
        super().__init__()
        self.layers = torch.nn.Sequential(torch.nn.Conv2d(3, 16, 3, padding=1), torch.nn.ReLU(),
                                          torch.nn.Conv2d(16, num_classes, 1))

    def forward(self, x):
        return self.layers(x)


def make_trainer(variant: str, size: int, count: int, backend: str = "local", task: str = "classification"):
    from composer import Trainer
    from composer.models import ComposerClassifier

    from logbus.composer import LogBusLogger, SampleLogger

    callbacks: list = []
    wait_for_worker = False
    loggers = [LogBusLogger(backends=[BACKENDS[backend]])]
    if variant == "guide":  # the naive path: its own W&B logger, one wandb.Image per sample on the training thread
        loggers, callbacks = [_composer_wandb_logger()], [LogPredictions(num_samples=count)]
    elif (options := VARIANTS[variant]) is not None:
        callbacks.append(SampleLogger(task, num_samples=None, **options))
        wait_for_worker = options.get("worker_process", True)
    torch.manual_seed(0)
    model = (ComposerClassifier(SmallFCN(), num_classes=SEGMENTATION_CLASSES) if task == "segmentation"
             else ComposerClassifier(SmallCNN(), num_classes=10))
    trainer = Trainer(model=model, eval_dataloader=DataLoader(eval_data(count, size, task), BATCH), loggers=loggers,
                      callbacks=callbacks, progress_bar=False, device="cpu", run_name=f"bench-{variant}")
    # Once the Trainer's init has placed the scratch folder beside the local backend's runs, as in a
    # user's run: waiting earlier opens the pipeline in the worker process with its scratch folder in
    # /dev/shm, and every file then reaches the run folder as a copy (a new file: up to ~1 ms on a loaded ext4) where
    # a user's run links it.
    if wait_for_worker:
        assert callbacks[-1].pipeline.worker_ready(300), "the worker process did not start"
    return trainer


def check_nothing_lost(trainer, rows: int) -> None:
    """Every row of every eval went into a table and every backend took every table."""
    for callback in trainer.state.callbacks:
        stats = getattr(getattr(callback, "pipeline", None), "stats", None)
        if stats is not None:
            assert stats.batches_dropped == stats.batches_lost == stats.errors == 0, stats
            assert stats.rows_logged == rows, stats
    for destination in trainer.logger.destinations:
        bus = getattr(destination, "bus", None)
        if bus is not None:
            for name, backend in bus.stats()["backends"].items():
                assert backend["dropped"] == backend["failures"] == 0, (name, backend)


@pytest.mark.parametrize("variant", RUN_VARIANTS)
@pytest.mark.parametrize("task", TASKS)
@pytest.mark.parametrize("size", sorted(SIZES))
def test_eval_loop_stall(benchmark, wandb_offline, variant, size, task):
    """(a) One eval pass, the loop only: tables finish after it, off the clock."""
    trainers = []
    count = image_count(benchmark, size)

    def setup():
        trainer = make_trainer(variant, size, count, task=task)
        trainer.eval()  # warm-up: first-call costs of the model and the kernels
        trainers.append(trainer)
        return (trainer,), {}

    benchmark.group = f"(a) eval loop, {task}, {count} images {size}x{size}"
    benchmark.extra_info.update(variant=variant, size=size, images=count, task=task, measure="eval_loop")
    benchmark.pedantic(lambda trainer: trainer.eval(), setup=setup, rounds=ROUNDS)
    for trainer in trainers:
        trainer.close()
        check_nothing_lost(trainer, 2 * count if VARIANTS[variant] is not None else 0)


@pytest.mark.parametrize("variant", [*RUN_VARIANTS, *([] if COMMAND else ["guide"])])
@pytest.mark.parametrize("task", TASKS)
@pytest.mark.parametrize("size", sorted(SIZES))
@pytest.mark.parametrize("backend", RUN_BACKENDS)
def test_two_evals_and_close(benchmark, wandb_offline, variant, backend, size, task):
    """(b) Two eval passes and ``close``: every table built and taken by the backend."""
    if variant == "guide" and backend != "wandb":
        pytest.skip("the guide's callback logs to W&B only")
    if variant == "guide" and task != "classification":
        pytest.skip("the W&B guide has a naive callback for classification only")
    trainers = []
    count = image_count(benchmark, size)

    def setup():
        trainers.append(make_trainer(variant, size, count, backend, task))
        return (trainers[-1],), {}

    def run(trainer):
        trainer.eval()
        trainer.eval()
        trainer.close()

    benchmark.group = f"(b) 2 evals + close, {backend}, {task}, {count} images {size}x{size}"
    benchmark.extra_info.update(variant=variant, size=size, images=count, task=task, measure=f"end_to_end_{backend}")
    benchmark.pedantic(run, setup=setup, rounds=ROUNDS)
    for trainer in trainers:
        check_nothing_lost(trainer, 2 * count if VARIANTS.get(variant) is not None else 0)


@pytest.mark.parametrize("size", sorted(SIZES))
@pytest.mark.parametrize("backend", list(BACKENDS))
def test_backend_ingests_the_same_tables_alone(benchmark, wandb_offline, backend, size):
    """(c) The backend's own time for (b)'s two tables: built beforehand (off the clock) from the
    same images, then a run of the backend alone takes them and closes."""
    if COMMAND:
        pytest.skip("logbus bench measures (a) and (b) only")
    import logbus
    from logbus.records import RunStarted
    from logbus.samples import pipeline_for

    count = image_count(benchmark, size)
    data = eval_data(count, size)
    logits = torch.randn(count, 10, generator=torch.Generator().manual_seed(1))
    pipeline = pipeline_for("classification", {"class_names": CLASS_NAMES}, num_samples=None)
    tables = []
    for step in range(2):
        for start in range(0, count, BATCH):
            inputs, targets = data[start:start + BATCH]
            pipeline.submit(inputs, targets, logits[start:start + BATCH])
        tables.append(pipeline.end_pass("eval", step=step).result(timeout=600))
    assert [len(table.rows) for table in tables] == [count, count]

    def run():
        bus = logbus.Bus([BACKENDS[backend]])
        bus.emit(RunStarted(run_name=f"bench-ingest-{backend}"))
        for table in tables:
            bus.emit(table)
        assert bus.close()
        assert all(not b["dropped"] and not b["failures"] for b in bus.stats()["backends"].values())

    benchmark.group = f"(c) {backend} ingests the 2 tables alone, {count} images {size}x{size}"
    benchmark.extra_info.update(variant="backend_alone", size=size, images=count, measure=f"ingest_{backend}")
    try:
        benchmark.pedantic(run, rounds=ROUNDS)
    finally:
        pipeline.cleanup()


class _TakesTables:
    """A backend that takes tables and does nothing with them: the pipeline's own cost, no backend's."""

    name = "null"

    def __init__(self):
        from logbus.records import Table

        self.supports = frozenset({Table})

    def log(self, record) -> None:
        pass

    def close(self, finish) -> None:
        pass


@pytest.mark.parametrize("variant", ["sample_logger"] if COMMAND else ["sample_logger", "sample_logger_threads"])
def test_training_process_cpu_per_sample(benchmark, wandb_offline, variant):
    """The per-sample cost left on the training process: CPU time of all its threads (not the worker
    process's) from the first batch to the end of ``finish``, over the samples logged, with a
    backend that does nothing. Includes the CPU device stage (uint8 conversion, softmax: torch ops,
    per batch), which runs on the GPU where there is one."""
    import time

    import logbus

    count = image_count(benchmark, 32)
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(count, 3, 32, 32, generator=generator)
    labels = torch.randint(0, 10, (count,), generator=generator)
    logits = torch.randn(count, 10, generator=generator)
    costs = []

    def setup():
        run = logbus.start_run(f"bench-cost-{variant}", backends=[_TakesTables()])
        stream = run.samples(num_samples=None, class_names=[str(c) for c in range(10)],
                             worker_process=variant == "sample_logger", max_pending_batches=count)
        if variant == "sample_logger":
            assert stream.pipeline.worker_ready(300)
        return (run, stream), {}

    def feed(run, stream):
        started = time.process_time()
        for start in range(0, count, BATCH):
            stream.add(images[start:start + BATCH], labels[start:start + BATCH], logits[start:start + BATCH])
        stream.log(step=0)
        run.finish()
        costs.append((time.process_time() - started) / count * 1e6)
        stats = stream.pipeline.stats
        assert stats.rows_logged == count and stats.batches_dropped == stats.batches_lost == 0, stats

    benchmark.group = f"training-process CPU per logged sample, {count} images 32x32"
    benchmark.pedantic(feed, setup=setup, rounds=ROUNDS)
    costs.sort()
    benchmark.extra_info.update(variant=variant, measure="cpu_us_per_sample",
                                cpu_us_per_sample_median=costs[len(costs) // 2], cpu_us_per_sample_min=costs[0],
                                cpu_us_per_sample_max=costs[-1])
    print(f"\n{variant}: training-process CPU per sample median {costs[len(costs) // 2]:.1f} µs "
          f"(min {costs[0]:.1f}, max {costs[-1]:.1f}, {len(costs)} rounds)")
