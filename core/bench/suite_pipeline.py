"""The sample pipeline's promise, measured: (a) the eval loop with and without sample logging, and
(b) end to end, two evals plus ``close`` (every row delivered to the local backend), each variant in
one run:

    .venv/bin/pytest benchmarks/bench_pipeline.py --benchmark-only --benchmark-columns=min,median,max,rounds

Variants: no sample logging; ``SampleLogger`` logging every eval sample with its per-sample work in
the worker process (the default); the same on threads of the training process
(``worker_process=False``). The worker process is up before the timed part (``worker_ready``): it
is started once per training process, so a run pays its start once, not per eval.
Compare medians only where the spread (min to max) is smaller than the difference.
"""

from __future__ import annotations

import os

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from logbus.bench.fixtures import wandb_offline  # noqa: F401  (a fixture)
from logbus.bench.suite_eval import BATCH, SmallCNN

QUICK = bool(os.environ.get("LOGBUS_BENCH_QUICK"))
SIZES = {32: 512, 224: 64} if QUICK else {32: 2048, 224: 256}
ROUNDS = 3 if QUICK else 5
VARIANTS = {"no_sample_logging": None, "sample_logger": {}, "sample_logger_threads": {"worker_process": False}}


def make_trainer(variant: str, size: int):
    from composer import Trainer
    from composer.models import ComposerClassifier

    from logbus.composer import LogBusLogger, SampleLogger

    count = SIZES[size]
    generator = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.rand(count, 3, size, size, generator=generator),
                         torch.randint(0, 10, (count,), generator=generator))
    callbacks = []
    if VARIANTS[variant] is not None:
        sample_logger = SampleLogger("classification", num_samples=None, **VARIANTS[variant])
        if VARIANTS[variant].get("worker_process", True):
            assert sample_logger.pipeline.worker_ready(300), "the worker process did not start"
        callbacks.append(sample_logger)
    torch.manual_seed(0)
    return Trainer(model=ComposerClassifier(SmallCNN(), num_classes=10), eval_dataloader=DataLoader(data, BATCH),
                   loggers=[LogBusLogger(backends=["local"])], callbacks=callbacks, progress_bar=False, device="cpu",
                   run_name=f"bench-{variant}")


def check_nothing_lost(trainer) -> None:
    for callback in trainer.state.callbacks:
        stats = getattr(getattr(callback, "pipeline", None), "stats", None)
        if stats is not None:
            assert stats.batches_dropped == stats.batches_lost == stats.errors == 0, stats


@pytest.mark.parametrize("size", sorted(SIZES))
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_eval_loop_stall(benchmark, wandb_offline, variant, size):
    """(a) One eval pass, the loop only: tables finish after it, off the clock."""
    trainers = []

    def setup():
        trainer = make_trainer(variant, size)
        trainer.eval()  # warm-up: first-call costs of the model and the kernels
        trainers.append(trainer)
        return (trainer,), {}

    benchmark.group = f"(a) eval loop, {SIZES[size]} images {size}x{size}"
    benchmark.extra_info.update(variant=variant, size=size, images=SIZES[size], measure="eval_loop")
    benchmark.pedantic(lambda trainer: trainer.eval(), setup=setup, rounds=ROUNDS)
    for trainer in trainers:
        trainer.close()
        check_nothing_lost(trainer)


@pytest.mark.parametrize("size", sorted(SIZES))
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_two_evals_and_close(benchmark, wandb_offline, variant, size):
    """(b) Two eval passes and ``close``: every table built and written by the local backend."""
    trainers = []

    def setup():
        trainers.append(make_trainer(variant, size))
        return (trainers[-1],), {}

    def run(trainer):
        trainer.eval()
        trainer.eval()
        trainer.close()

    benchmark.group = f"(b) 2 evals + close, local backend, {SIZES[size]} images {size}x{size}"
    benchmark.extra_info.update(variant=variant, size=size, images=SIZES[size], measure="end_to_end_local")
    benchmark.pedantic(run, setup=setup, rounds=ROUNDS)
    for trainer in trainers:
        check_nothing_lost(trainer)


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


@pytest.mark.parametrize("variant", ["sample_logger", "sample_logger_threads"])
def test_training_process_cpu_per_sample(benchmark, wandb_offline, variant):
    """The per-sample cost left on the training process: CPU time of all its threads (not the worker
    process's) from the first batch to the end of ``finish``, over the samples logged, with a
    backend that does nothing. Includes the CPU device stage (uint8 conversion, softmax: torch ops,
    per batch), which runs on the GPU where there is one."""
    import time

    import logbus

    count = SIZES[32]
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
    benchmark.extra_info.update(variant=variant, measure="cpu_us_per_sample", median_us=costs[len(costs) // 2],
                                min_us=costs[0], max_us=costs[-1])
    print(f"\n{variant}: training-process CPU per sample median {costs[len(costs) // 2]:.1f} µs "
          f"(min {costs[0]:.1f}, max {costs[-1]:.1f}, {len(costs)} rounds)")
