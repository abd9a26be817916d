"""Caller-thread cost of logging one metric: through Composer's ``Logger`` into logbus, against
``wandb.log`` on the training thread (what Composer's own ``WandBLogger`` does), measured in one run.

    make bench                      # all benchmarks
    .venv/bin/pytest benchmarks/bench_logging.py --benchmark-only
    logbus bench                    # the same suites, quick sizes, as a table of ratios

Each round logs ``CALLS`` metrics; pytest-benchmark's figures are per round, ``extra_info`` has the
per-call figures (wall and the calling thread's own CPU time, which excludes the time the writer
thread holds the GIL in a tight loop like this one).
"""

from __future__ import annotations

import queue
import time

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from logbus.bench.fixtures import wandb_offline  # noqa: F401  (a fixture)
from logbus.bench.settings import quick

CALLS = 1000
ROUNDS = 5 if quick() else 20  # cheap: many rounds whatever $LOGBUS_BENCH_ROUNDS says


def _trainer(loggers):
    from composer import Trainer
    from composer.models import ComposerClassifier

    data = TensorDataset(torch.randn(8, 4), torch.randint(0, 2, (8,)))
    model = ComposerClassifier(torch.nn.Linear(4, 2), num_classes=2)
    return Trainer(model=model, train_dataloader=DataLoader(data, batch_size=4), max_duration="1ba",
                   loggers=loggers, progress_bar=False, device="cpu", run_name="bench",
                   save_folder=None)


def _per_call(benchmark, log_one):
    step = iter(range(10**9))

    def round_of_calls():
        for _ in range(CALLS):
            log_one({"loss/train/total": 0.5}, next(step))

    cpu_started = time.thread_time()
    benchmark.pedantic(round_of_calls, rounds=ROUNDS, warmup_rounds=2)
    calls = next(step)
    if benchmark.stats is not None:  # None under --benchmark-disable (the suite run as plain tests)
        benchmark.extra_info["calls"] = CALLS  # per round: the round's figures over this are per call
        benchmark.extra_info.update(per="call", per_round=CALLS)  # the docs' tables show per call (logbus.bench.tables)
        benchmark.extra_info["wall_us_per_call"] = benchmark.stats.stats.median / CALLS * 1e6
        benchmark.extra_info["thread_cpu_us_per_call"] = (time.thread_time() - cpu_started) / calls * 1e6
    return calls


@pytest.mark.benchmark(group="log_metrics caller cost")
def test_logbus_through_composer_logger(benchmark, wandb_offline):
    from logbus.composer import LogBusLogger

    destination = LogBusLogger(backends=[("wandb", {"project": "bench"}), "local"], log_stats=False)
    trainer = _trainer([destination])
    try:
        calls = _per_call(benchmark, trainer.logger.log_metrics)
    finally:
        trainer.close()
    stats = destination.bus.stats()["backends"]
    assert stats["wandb"]["failures"] == 0 and stats["wandb"]["delivered"] >= calls


@pytest.mark.benchmark(group="log_metrics caller cost")
def test_wandb_log_on_the_training_thread(benchmark, wandb_offline):
    import wandb

    run = wandb.init(project="bench", reinit="create_new")
    try:
        _per_call(benchmark, lambda metrics, step: run.log(metrics, step=step))
    finally:
        run.finish()


@pytest.mark.benchmark(group="log_metrics caller cost")
def test_bare_queue_put(benchmark):
    q: queue.Queue = queue.Queue()
    _per_call(benchmark, lambda metrics, step: q.put((metrics, step)))
    benchmark.extra_info["baseline"] = True  # the floor: the docs' tables give the others' ratios to it


@pytest.mark.benchmark(group="log_metrics caller cost")
def test_users_wandb_log_through_the_drop_in(benchmark, wandb_offline):
    """A user's own ``wandb.log`` on the drop-in ``WandBLogger``'s run: enqueued on the bus."""
    import wandb

    from logbus.composer import WandBLogger

    destination = WandBLogger(project="bench")
    trainer = _trainer([destination])
    try:
        calls = _per_call(benchmark, lambda metrics, step: wandb.log(metrics, step=step))
    finally:
        trainer.close()
    stats = destination.bus.stats()["backends"]["wandb"]
    assert stats["failures"] == 0 and stats["delivered"] >= calls
