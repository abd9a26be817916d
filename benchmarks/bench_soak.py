"""Soak: many evals of many samples through the sample pipeline into W&B (offline) and the local run
folder, checking that memory stays flat and that every metric and hyperparameter is delivered.

    .venv/bin/pytest benchmarks/bench_soak.py -m soak --benchmark-only -s        # full scale (default)
    LOGBUS_SOAK_EVALS=10 LOGBUS_SOAK_SAMPLES=2000 .venv/bin/pytest benchmarks/bench_soak.py -m soak -s

Marked ``soak`` (deselect with ``-m "not soak"``). Each eval: ``train_steps`` training steps logging
metrics, then ``samples`` prediction samples (``side`` x ``side`` RGB images, the same images every
eval as a real validation set, new predictions) added in batches and logged as one table, then the
eval metrics. Reported in ``extra_info`` (``--benchmark-json`` keeps them): RSS growth (peak during
the soak minus RSS after the first eval, and minus RSS at start), pinned memory held, drops per stage
and per backend, records delivered vs logged per backend. Asserted: every metric and hyperparameter
reaches every backend (read back from the local folder and the W&B run), samples are dropped only
where backpressure is configured and every drop is counted, memory stays within its bounds. Times
are reported, never asserted.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest
import torch

import logbus
from logbus.bench.fixtures import wandb_offline  # noqa: F401  (a fixture)
from logbus.plugins.local import list_tables
from logbus.records import Hyperparameters, Metrics, Table

EVALS = int(os.environ.get("LOGBUS_SOAK_EVALS", 100))
SAMPLES = int(os.environ.get("LOGBUS_SOAK_SAMPLES", 10_000))
SIDE = int(os.environ.get("LOGBUS_SOAK_SIDE", 8))
TRAIN_STEPS = int(os.environ.get("LOGBUS_SOAK_TRAIN_STEPS", 50))  # between evals, one metrics call each
# Per-backend budget for queued sample tables. A table is charged 64 bytes a row (records.Table.nbytes)
# while its rows hold ~820 bytes a row of Python objects (measured), so 8 MiB here is ~12 queued
# tables of 10,000 rows, ~100 MB: what keeps RSS flat when W&B falls behind.
MAX_PENDING_BYTES = int(os.environ.get("LOGBUS_SOAK_MAX_PENDING_BYTES", 8 * 2**20))
BATCH = 500
CLASSES = 10
RSS_GROWTH_TARGET = 200 * 2**20
PINNED_POOL_BYTES = 64 * 2**20


class Counter:
    """A backend that keeps counts only (a million rows must not be kept in memory here)."""

    name = "counter"
    supports = frozenset({Table})

    def __init__(self):
        self.metrics = self.hparams = self.tables = self.rows = 0
        self.steps: list[int | None] = []

    def log(self, record):
        if isinstance(record, Metrics):
            self.metrics += 1
            self.steps.append(record.step)
        elif isinstance(record, Hyperparameters):
            self.hparams += 1
        elif isinstance(record, Table):
            self.tables += 1
            self.rows += len(record.rows)

    def close(self, finish):
        pass


class RssSampler(threading.Thread):
    """Peak RSS of this process (and, separately, of its children: wandb's service) every 50 ms."""

    def __init__(self):
        super().__init__(daemon=True, name="rss-sampler")
        self.process = psutil.Process()
        self.peak = self.children_peak = 0
        self.stop = threading.Event()

    def rss(self) -> int:
        return self.process.memory_info().rss

    def run(self):
        while not self.stop.wait(0.05):
            self.peak = max(self.peak, self.rss())
            children = 0
            for child in self.process.children(recursive=True):
                try:
                    children += child.memory_info().rss
                except psutil.Error:
                    pass
            self.children_peak = max(self.children_peak, children)

    def reset_peak(self):
        self.peak = self.rss()


def wandb_history(run_dir: Path) -> list[dict]:
    """The ``history`` items of an offline run, via ``wandb leet inspect --json`` (as tests/wandb_reader)."""
    wandb_cli = str(Path(sys.executable).with_name("wandb"))
    result = subprocess.run([wandb_cli, "leet", "inspect", "--json", str(run_dir)], capture_output=True, text=True,
                            timeout=1200, check=True)
    items = []
    for line in result.stdout.splitlines():
        record = json.loads(line) if line.strip() else {}
        if record.get("type") == "history":
            items.append(record["history"].get("item", {}))
    return items


def soak(folder: str) -> dict:
    import wandb

    wandb.teardown()  # wandb caches WANDB_DIR process-wide on first use: read this soak's folder
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(SAMPLES, 3, SIDE, SIDE, generator=generator)  # the validation set: the same every eval
    labels = torch.randint(0, CLASSES, (SAMPLES,), generator=generator)
    counter = Counter()
    sampler = RssSampler()
    sampler.start()
    rss_start = sampler.rss()
    started = time.perf_counter()
    config = {"lr": 1e-3, "evals": EVALS, "samples": SAMPLES, "side": SIDE}
    run = logbus.start_run("soak", backends=[("wandb", {"project": "logbus-soak"}), "local", counter], config=config,
                           max_pending_bytes=MAX_PENDING_BYTES)
    samples = run.samples("classification", num_samples=None, class_names=[f"c{i}" for i in range(CLASSES)],
                          pinned_pool_bytes=PINNED_POOL_BYTES, max_pending_batches=SAMPLES // BATCH + 1)
    pipeline = samples.pipeline
    logged_metrics, logged_hparams, rss_after_first = 0, 0, None
    timeline = []  # (seconds, RSS MB, tables delivered to W&B): where memory goes, if it goes
    step = 0
    for evaluation in range(EVALS):
        # Training between evals takes longer than the pipeline needs for one eval (minutes against
        # seconds): the next eval starts once the last table reached the fastest backend. W&B and the
        # local folder may lag behind as they will; their queues are where backpressure shows.
        while counter.tables < evaluation and time.perf_counter() - started < 3600:
            time.sleep(0.01)
        for _ in range(TRAIN_STEPS):
            run.log({"loss/train": 1.0 / (step + 1), "lr": 1e-3}, step=step)
            logged_metrics += 1
            step += 1
        generator.manual_seed(evaluation)
        for start in range(0, SAMPLES, BATCH):
            logits = torch.randn(min(BATCH, SAMPLES - start), CLASSES, generator=generator)
            samples.add(images[start:start + BATCH], labels[start:start + BATCH], logits, label="val")
        samples.log("val", step=step)
        run.log({"accuracy/val": evaluation / EVALS, "loss/val": 1.0 / (evaluation + 1)}, step=step)
        logged_metrics += 1
        if evaluation % 10 == 0:
            run.log_hyperparameters({"eval_count": evaluation})
            logged_hparams += 1
        if evaluation % max(1, EVALS // 20) == 0:
            timeline.append((round(time.perf_counter() - started), round(sampler.rss() / 2**20),
                             run.bus.stats()["backends"]["wandb"]["delivered"]))
        if evaluation == 0:
            run.flush()
            rss_after_first = sampler.rss()
            sampler.reset_peak()
    loop_seconds = time.perf_counter() - started
    timeline.append((round(loop_seconds), round(sampler.rss() / 2**20), "loop done"))
    clean = run.finish(timeout=3600)
    total_seconds = time.perf_counter() - started
    timeline.append((round(total_seconds), round(sampler.rss() / 2**20), "closed"))
    sampler.stop.set()
    sampler.join()

    stats = run.bus.stats()["backends"]
    pipe = pipeline.stats
    local_dir = Path(folder) / "runs" / "soak"
    local_metrics = [json.loads(line) for line in (local_dir / "metrics.jsonl").read_text().splitlines()]
    tables = list_tables(local_dir)
    local_tables = int((tables.key == "samples/val").sum())
    [wandb_run] = [path for path in (Path(folder) / "wandb").iterdir() if path.name.startswith("offline-run-")]
    history = wandb_history(wandb_run)
    return {
        "clean_close": clean,
        "evals": EVALS, "samples_per_eval": SAMPLES, "image_side": SIDE, "train_steps_per_eval": TRAIN_STEPS,
        "max_pending_bytes": MAX_PENDING_BYTES,
        "loop_seconds": round(loop_seconds, 1), "total_seconds_with_drain": round(total_seconds, 1),
        "rss_start_mb": round(rss_start / 2**20, 1),
        "rss_after_first_eval_mb": round(rss_after_first / 2**20, 1),
        "rss_peak_mb": round(sampler.peak / 2**20, 1),
        "rss_growth_after_first_eval_mb": round((sampler.peak - rss_after_first) / 2**20, 1),
        "rss_growth_from_start_mb": round((sampler.peak - rss_start) / 2**20, 1),
        "rss_loop_end_minus_first_eval_mb": round((timeline[-2][1] * 2**20 - rss_after_first) / 2**20, 1),
        "children_rss_peak_mb": round(sampler.children_peak / 2**20, 1),
        "rss_timeline": timeline,
        "pinned_peak_bytes": pipeline.pinned.peak_bytes, "pinned_pool_bytes": PINNED_POOL_BYTES,
        "pipeline": {"batches_submitted": pipe.batches_submitted, "batches_dropped": pipe.batches_dropped,
                     "tables_logged": pipe.tables_logged, "tables_dropped": pipe.tables_dropped,
                     "rows_logged": pipe.rows_logged, "errors": pipe.errors, "encoded": pipe.encoded,
                     "reused": pipe.reused},
        "backends": {name: {key: backend[key] for key in ("delivered", "dropped", "failures", "discarded")}
                     for name, backend in stats.items()},
        "logged": {"metrics": logged_metrics, "hparams": logged_hparams, "tables": EVALS, "rows": EVALS * SAMPLES},
        "counter_steps_in_order": counter.steps == sorted(counter.steps),
        "delivered": {
            "counter": {"metrics": counter.metrics, "hparams": counter.hparams, "tables": counter.tables,
                        "rows": counter.rows},
            "local": {"metrics": len(local_metrics), "tables": local_tables},
            # wandb merges calls at one step into one history row: count the keys.
            "wandb": {"metrics": sum(("loss/train" in item) + ("accuracy/val" in item) for item in history),
                      "tables": sum(any(key.startswith("samples/val") and key.endswith("._type") for key in item)
                                    for item in history)},
        },
    }


@pytest.mark.soak
def test_soak(benchmark, wandb_offline):  # noqa: F811
    # The local backend writes no viewer page (format 2): nothing in the training process reads the
    # whole run back, so RSS growth is asserted against its target.
    result = benchmark.pedantic(soak, args=(wandb_offline,), rounds=1, iterations=1)
    benchmark.extra_info.update(result)
    print(json.dumps(result, indent=1))

    logged, delivered = result["logged"], result["delivered"]
    assert result["clean_close"]
    # Every metric and hyperparameter reaches every backend.
    assert delivered["counter"]["metrics"] == delivered["local"]["metrics"] == logged["metrics"]
    assert delivered["wandb"]["metrics"] == logged["metrics"]
    assert delivered["counter"]["hparams"] == logged["hparams"]
    for backend in result["backends"].values():
        assert backend["failures"] == backend["discarded"] == 0
    # Samples: dropped only where backpressure is configured, every drop counted.
    pipe = result["pipeline"]
    assert pipe["errors"] == pipe["tables_dropped"] == 0
    assert pipe["rows_logged"] + pipe["batches_dropped"] * BATCH == logged["rows"]
    for name in ("counter", "local", "wandb"):
        assert delivered[name]["tables"] + result["backends"][name]["dropped"] == logged["tables"], name
    assert delivered["counter"]["rows"] <= pipe["rows_logged"]
    # Memory: pinned memory within its pool; RSS flat over the soak.
    assert result["pinned_peak_bytes"] <= PINNED_POOL_BYTES
    assert result["rss_growth_after_first_eval_mb"] * 2**20 <= RSS_GROWTH_TARGET
