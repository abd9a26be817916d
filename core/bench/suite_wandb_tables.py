"""Per-row cost of a sample table in the W&B backend: a repeat eval of the same images against a first
eval, and against logging every cell again (what a table without a join key costs at every eval).

    .venv/bin/pytest benchmarks/bench_wandb_tables.py --benchmark-only --benchmark-columns=min,median,max,rounds

The backend's own work only, on the calling thread (in a run it is the W&B writer thread): each round
hands ``WandBBackend.log`` one table of ``ROWS`` rows of 32x32 PNG images, as the sample pipeline
delivers them (encoded files, ``join_key="id"``), to an offline run. ``first``: a key the backend has
not seen, so the images go to a new reference table; ``repeat``: the key of an earlier eval with the
same images, so only the per-eval cells are logged and joined to it; ``whole``: no join key.
``extra_info`` has the per-row median and the min-max spread over the rounds, of the wall time and of
the calling thread's CPU time (``time.thread_time``: what the backend holds of the training process,
and less sensitive than the wall time to other jobs on a shared machine).
"""

from __future__ import annotations

import itertools
import os
import time

import numpy as np
import pytest

from logbus.bench.fixtures import wandb_offline  # noqa: F401  (a fixture)
from logbus.bench.settings import quick

ROWS = 128 if quick() else 512
ROUNDS = 3 if quick() else 5  # cheap: its own rounds whatever $LOGBUS_BENCH_ROUNDS says
SIZE = 32
CLASSES = 10


def _images(folder: str, kind: str) -> list:
    """``ROWS`` distinct images written as PNG files, as the sample pipeline's encoder leaves them, with
    ground-truth masks for segmentation."""
    from PIL import Image as PILImage

    from logbus.records import Mask

    generator = np.random.default_rng(0)
    cells = []
    for row in range(ROWS):
        path = os.path.join(folder, f"image-{row}.png")
        PILImage.fromarray(generator.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)).save(path, compress_level=1)
        truth = Mask(generator.integers(0, CLASSES, (SIZE, SIZE), dtype=np.uint8)) if kind == "segmentation" else None
        cells.append((path, truth))
    return cells


def _table(cells: list, kind: str, key: str, eval_number: int, join_key: str | None):
    """One eval's table: the same images, predictions that change with ``eval_number``."""
    from logbus.records import Image, Mask, Table

    generator = np.random.default_rng(eval_number)
    rows = []
    for row, (path, truth) in enumerate(cells):
        if kind == "classification":
            rows.append([row, Image(path=path), row % CLASSES, int(generator.integers(CLASSES)),
                         float(generator.random()), False, float(generator.random()), ""])
        else:
            prediction = Mask(generator.integers(0, CLASSES, (SIZE, SIZE), dtype=np.uint8))
            rows.append([row, Image(path=path, masks={"ground_truth": truth, "prediction": prediction}),
                         float(generator.random()), float(generator.random()), float(generator.random()), ""])
    columns = (["id", "image", "truth", "prediction", "confidence", "correct", "loss", "flag"]
               if kind == "classification" else ["id", "image", "pixel_accuracy", "loss", "confidence", "flag"])
    return Table(key, columns, rows, step=eval_number, join_key=join_key)


@pytest.mark.parametrize("variant", ["first", "repeat", "whole"])
@pytest.mark.parametrize("kind", ["classification", "segmentation"])
def test_wandb_table_rows(benchmark, wandb_offline, kind, variant):  # noqa: F811
    from logbus.plugins.wandb import WandBBackend
    from logbus.records import RunFinished, RunStarted

    benchmark.group = f"wandb sample table, {kind}, {ROWS} rows {SIZE}x{SIZE}"
    folder = os.path.join(wandb_offline, "images")  # the project's disk, as the fixture explains
    os.makedirs(folder)
    cells = _images(folder, kind)
    backend = WandBBackend(project="bench")
    backend.log(RunStarted("bench-tables"))
    steps = itertools.count()
    join_key = None if variant == "whole" else "id"
    if variant == "repeat":
        backend.log(_table(cells, kind, "samples/eval", next(steps), join_key))  # the first eval, not timed
    tables = []
    cpu_seconds = []

    def next_table():
        step = next(steps)
        key = f"samples/eval{step}" if variant == "first" else "samples/eval"
        # Built outside the timed call: the records come from the pipeline, ready.
        tables.append(_table(cells, kind, key, step, join_key))
        return (), {}

    def log_one_eval():
        started = time.thread_time()
        backend.log(tables[-1])
        cpu_seconds.append(time.thread_time() - started)

    try:
        benchmark.pedantic(log_one_eval, setup=next_table, rounds=ROUNDS, warmup_rounds=0)
    finally:
        backend.close(RunFinished())
    if benchmark.stats is not None:  # None under --benchmark-disable (the suite run as plain tests)
        stats = benchmark.stats.stats
        cpu = sorted(seconds / ROWS * 1e6 for seconds in cpu_seconds)
        # per row in the docs' tables (logbus.bench.tables), a repeat eval's ratio to the first eval's
        benchmark.extra_info.update(per="row", per_round=ROWS, baseline=variant == "first")
        benchmark.extra_info.update(rows=ROWS, us_per_row_median=stats.median / ROWS * 1e6,
                                    us_per_row_min=stats.min / ROWS * 1e6, us_per_row_max=stats.max / ROWS * 1e6,
                                    cpu_us_per_row_median=cpu[len(cpu) // 2], cpu_us_per_row_min=cpu[0],
                                    cpu_us_per_row_max=cpu[-1])
        print(f"\n{kind} {variant}: {stats.median / ROWS * 1e6:.0f} us/row (median of {stats.rounds}, "
              f"{stats.min / ROWS * 1e6:.0f}-{stats.max / ROWS * 1e6:.0f}); thread CPU {cpu[len(cpu) // 2]:.0f} "
              f"us/row ({cpu[0]:.0f}-{cpu[-1]:.0f})")
