"""High volume (issue 17's targets): sustained throughput into the local store, CPU per logged sample over
every process, and the training process's memory across many evals. A plain loop, no Composer unless asked.

    .venv/bin/python benchmarks/bench_volume.py throughput [--task classification|segmentation|both]
        [--seconds 30] [--rate ROWS_PER_S|max] [--rounds 3] [--eval-samples 8192] [--batch 256]
    .venv/bin/python benchmarks/bench_volume.py cpu [--loop composer|plain] [--sizes 2048 8192] [--rounds 3]
    .venv/bin/python benchmarks/bench_volume.py stages [--task ...] [--rate ROWS_PER_S] [--seconds 10] [--encoders 1 2]
    .venv/bin/python benchmarks/bench_volume.py rss [--evals 100] [--eval-samples 512] [--rate 20000] [--rounds 3]
    .venv/bin/pytest -q -p no:cacheprovider benchmarks/bench_volume.py --benchmark-disable   # smoke test, seconds

throughput: ``logbus.start_run`` with the local backend only, ``run.samples(task, num_samples=None,
policy="first")`` at default settings; evals of ``--eval-samples`` 32×32 images (the same images at every
eval, new predictions: the logits rolled by a step that grows with every batch) offered in batches on a fixed
schedule (``--rate`` rows/s, by default 5% above the task's target, so that the target is reached only
where every row arrives and the close is quick; ``max``: as fast as the loop can) until ``--seconds`` have
passed, at the end of an eval; then ``finish``. Rows/s = rows read back with ``logbus.read_table`` ÷ (first offer → ``finish``
returns). Also: batches dropped and lost (the pipeline's and the bus's counters), the time from the last
offer to ``finish`` returning, files per logged table (rows and packs), the offered rate reached, and the
training thread's CPU in ``add``/``log`` per sample (``time.thread_time``; per sample taken as well, since
the ``add`` of a batch dropped at the call costs almost nothing). The worker process is made ready before the
clock starts (its start is ``cpu``'s figure). With ``--rate max`` a pipeline that cannot keep up drops most
batches: the figure is the rows read back per second, with the count dropped beside it.

cpu: each configuration (with and without sample logging, at two run sizes of two evals) runs in a fresh
interpreter under a reaper process that is a Linux child subreaper, so that every process of the tree,
the worker included even where it outlives its parent, is reaped by it and counted in its
``RUSAGE_CHILDREN``; the rows are read back by the parent afterwards, outside the tree. The marginal CPU
per logged sample is ``((logging big - logging small) - (none big - none small)) / (logged samples big -
small)``, a figure per round (the four configurations of a round run
one after the other). Also the worker's CPU when it is ready (every process below the training process,
right after ``worker_ready``) and, with ``--loop plain``, the training thread's CPU per sample. At the
target the signal is small (12,288 samples x 25 µs = 0.3 s), smaller than the spread of a Composer eval's
own CPU between runs on a loaded machine (about 1 s at 2 x 8,192): read the spread before the median.

stages: the throughput loop at a steady rate the pipeline keeps up with, once per ``--encoders`` value
(``encode_workers``): the CPU of each thread of the training process (by name: the training thread, which
also makes the benchmark's predictions, ``logbus-samples`` the pipeline's thread and its device stage,
``logbus-host-receiver``, ``logbus-local`` the store's writer, ...) and of the worker process, between the
first and the last offer, per row offered. A stage on one thread cannot pass 1e6 / its µs rows/s on any host.

rss: the throughput loop for ``--evals`` evals of ``--eval-samples`` rows at ``--rate``; the training
process's RSS after each eval's ``log``; reported: the largest departure from the RSS after the first eval.

Every figure is a median over ``--rounds`` (at least 3) with its spread (min-max); ratios come from one run.
Runs go to a scratch folder under ``$LOGBUS_BENCH_DIR`` (default ``logbus_runs/``, ignored), removed after.
"""

from __future__ import annotations

import argparse
import ctypes
import dataclasses
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import psutil
import torch

import logbus

SIDE = 32
CLASSES = 10
SEGMENTATION_CLASSES = 5
BATCH = 256
KEY_LABEL = "eval"
KEY = f"samples/{KEY_LABEL}"
TARGET_ROWS_PER_S = {"classification": 40_000, "segmentation": 15_000}
# By default the loop offers this much more than the target: rows read back over (first offer -> close)
# reach the target only where every row arrives and the close is quick.
OFFER_ABOVE_TARGET = 1.05
TARGET_CPU_US_PER_SAMPLE = 25.0
TARGET_WORKER_READY_CPU_S = 0.3
TARGET_THREAD_US_PER_SAMPLE = 2.0
TARGET_CLOSE_AFTER_LAST_OFFER_S = 2.0
TARGET_FILES_PER_TABLE = 3
TARGET_RSS_DRIFT_MB = 50.0
DEFAULT_SECONDS = 30.0
DEFAULT_EVAL_SAMPLES = 8192
DEFAULT_ROUNDS = 3
MIN_ROUNDS = 3
WORKER_READY_TIMEOUT_S = 300.0
CLOSE_TIMEOUT_S = 600.0
ORPHAN_WAIT_S = 30.0  # how long the reaper waits for descendants to end by themselves before killing them
PR_SET_CHILD_SUBREAPER = 36  # linux/prctl.h
# Segmentation logits are made from a small pool of batches, each rolled by a shift that grows with every
# batch, so no two batches of a run have the same prediction masks while the pool stays a few MB.
LOGITS_POOL = 8
MB = 2**20


# ---------------------------------------------------------------------------------------------- data

@dataclass
class EvalSet:
    """One validation set: the same images and targets at every eval; predictions made per batch."""

    task: str
    images: torch.Tensor
    targets: torch.Tensor
    logits: torch.Tensor  # classification: [N, C]; segmentation: a pool [LOGITS_POOL, B, K, H, W]

    @property
    def size(self) -> int:
        return len(self.images)

    def predictions(self, start: int, stop: int, batch_number: int) -> torch.Tensor:
        """New predictions for the rows ``start:stop``: ``batch_number`` counts every batch of the run."""
        if self.task == "classification":
            return self.logits[start:stop].roll(batch_number % CLASSES, dims=1)
        shift = batch_number // LOGITS_POOL
        pool = self.logits[batch_number % LOGITS_POOL][:stop - start]
        return pool.roll((shift % SIDE, shift // SIDE % SIDE), dims=(2, 3))


def eval_set(task: str, count: int, batch: int = BATCH) -> EvalSet:
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(count, 3, SIDE, SIDE, generator=generator)
    if task == "classification":
        return EvalSet(task, images, torch.randint(0, CLASSES, (count,), generator=generator),
                       torch.randn(count, CLASSES, generator=generator))
    if task == "segmentation":
        targets = torch.randint(0, SEGMENTATION_CLASSES, (count, SIDE, SIDE), generator=generator, dtype=torch.uint8)
        logits = torch.randn(LOGITS_POOL, batch, SEGMENTATION_CLASSES, SIDE, SIDE, generator=generator)
        return EvalSet(task, images, targets, logits)
    raise ValueError(f"task: expected 'classification' or 'segmentation', got {task!r}")


# ---------------------------------------------------------------------------------------------- the loop

@dataclass
class LoopResult:
    task: str
    rate: float | None  # offered rows/s asked for (None: as fast as the loop can)
    rows_offered: int = 0
    rows_read: int = 0
    evals: int = 0
    batches: int = 0
    seconds: float = 0.0  # first offer -> finish returns
    offer_seconds: float = 0.0  # first offer -> last offer returns
    close_after_last_offer: float = 0.0
    worker_ready_wait: float | None = None
    worker_ready_cpu: float | None = None  # CPU of every process below this one when the worker was ready
    thread_cpu: float = 0.0  # training thread's CPU seconds in add()/log()
    thread_cpu_taken: float = 0.0  # ... in log() and in the add() calls whose batch was not dropped at the call
    rows_taken: int = 0  # rows of those add() calls
    drops: dict[str, int] = field(default_factory=dict)
    files: int = 0  # rows and pack files of the run
    run_files: int = 0  # every file of the run folder
    read_seconds: float = 0.0
    rss_after_eval: list[int] = field(default_factory=list)
    rss_parts_after_eval: list[dict[str, int]] = field(default_factory=list)  # RssAnon, RssShmem (Linux)
    clean_close: bool = False
    # CPU seconds between the first and the last offer: each thread of this process by name, and "worker
    # process" (every process below this one); with the rows offered meanwhile (see ``stages``)
    stage_cpu: dict[str, float] = field(default_factory=dict)

    @property
    def rows_per_s(self) -> float:
        return self.rows_read / self.seconds if self.seconds else 0.0

    @property
    def offered_rows_per_s(self) -> float:
        return self.rows_offered / self.offer_seconds if self.offer_seconds else 0.0

    @property
    def thread_us_per_sample(self) -> float:
        return self.thread_cpu / self.rows_offered * 1e6 if self.rows_offered else 0.0

    @property
    def thread_us_per_taken_sample(self) -> float:
        """The training thread's CPU per sample that went on: a dropped batch's ``add`` is cheaper."""
        return self.thread_cpu_taken / self.rows_taken * 1e6 if self.rows_taken else 0.0

    @property
    def files_per_table(self) -> float:
        return self.files / self.evals if self.evals else 0.0

    @property
    def dropped(self) -> int:
        return sum(self.drops.values())


# Figures the commands measured, by suite: written to benchmarks/results/<suite>-<machine kind>.json when
# this file runs as a script (``main``), never by the smoke tests.
RECORDED: dict[str, list[dict[str, Any]]] = {}


def record(suite: str, group: str, name: str, values: list[float], unit: str, **extra: Any) -> None:
    """One figure of ``suite`` (its median, min and max over ``values``, one a round) for its results file."""
    RECORDED.setdefault(suite, []).append({
        "name": name, "group": group, "params": {}, "extra_info": extra, "unit": unit, "rounds": len(values),
        "median": statistics.median(values), "min": min(values), "max": max(values),
        "mean": statistics.fmean(values), "stddev": statistics.pstdev(values)})


def write_recorded() -> None:
    """Each suite's figures to its results file (``$LOGBUS_BENCH_RESULTS`` or benchmarks/results/): one
    run of a suite replaces the file of the last one on this kind of machine."""
    from pathlib import Path

    from logbus.bench.results import RESULTS_ENV, checkout_commit, machine_info, results_document, write_results

    here = Path(__file__).resolve().parent
    folder = os.environ.get(RESULTS_ENV) or here / "results"
    machine, commit = machine_info(), checkout_commit(here.parent)
    for suite, figures in RECORDED.items():
        path = write_results(folder, results_document(suite, figures, machine=machine, commit=commit))
        print(f"results: {path}")


def cpu_by_stage() -> dict[str, float]:
    """CPU seconds so far of each thread of this process, by name (several of one name added up; the
    main thread is "training thread"), and of every process below this one ("worker process")."""
    names = {thread.native_id: thread.name for thread in threading.enumerate()}
    main = threading.main_thread().native_id
    spent: dict[str, float] = {}
    for thread in psutil.Process().threads():
        name = "training thread" if thread.id == main else names.get(thread.id, "other threads (torch, pyarrow)")
        spent[name] = spent.get(name, 0.0) + thread.user_time + thread.system_time
    spent["worker process"] = descendants_cpu()
    return spent


def loss_counters(stream: Any, run: Any) -> dict[str, int]:
    """Every counter of batches, tables or rows dropped, lost or failed: the pipeline's statistics (whatever
    their fields are called) and each backend's on the bus."""
    counters: dict[str, int] = {}
    stats = getattr(getattr(stream, "pipeline", None), "stats", None)
    if stats is not None:
        values = (dataclasses.asdict(stats) if dataclasses.is_dataclass(stats) and not isinstance(stats, type)
                  else dict(vars(stats)))
        for name, value in values.items():
            if isinstance(value, int) and any(word in name for word in ("dropped", "lost", "error", "fail")):
                counters[f"pipeline.{name}"] = value
    for name, backend in run.bus.stats()["backends"].items():
        for counter in ("dropped", "failures", "discarded"):
            if isinstance(backend.get(counter), int):
                counters[f"{name}.{counter}"] = backend[counter]
    return counters


def batches_dropped(stream: Any) -> int:
    """The pipeline's count of batches dropped so far (0 where it counts none under that name)."""
    return getattr(getattr(stream.pipeline, "stats", None), "batches_dropped", 0)


def run_folder(root: str, name: str) -> str:
    folder = os.path.join(root, name)
    if not os.path.isfile(os.path.join(folder, "run.json")):
        raise FileNotFoundError(f"no run folder {folder} (run.json) after the run")
    return folder


def count_files(folder: str) -> tuple[int, int]:
    """(files under rows/ and packs/, every file of the run folder)."""
    store = every = 0
    for parent, _, names in os.walk(folder):
        every += len(names)
        relative = os.path.relpath(parent, folder).split(os.sep)[0]
        if relative in ("rows", "packs"):
            store += len(names)
    return store, every


def offer_loop(data: EvalSet, *, root: str, name: str, rate: float | None, seconds: float | None = None,
               evals: int | None = None, batch: int = BATCH, log_samples: bool = True, read_back: bool = True,
               sample_rss: bool = False, stream_options: dict[str, Any] | None = None) -> LoopResult:
    """Offers evals of ``data`` in batches on a fixed schedule (``rate`` rows/s; None: no waiting) until
    ``seconds`` have passed at the end of an eval, or ``evals`` evals; then finishes the run. ``log_samples``
    False: the same loop and predictions, no sample stream (the baseline of ``cpu``); ``sample_rss``: this
    process's RSS after each eval's ``log`` in ``rss_after_eval``."""
    if seconds is None and evals is None:
        raise ValueError("seconds, evals: expected at least one of them, got neither")
    result = LoopResult(data.task, rate)
    run = logbus.start_run(name, backends=[("local", {"root": root})])
    stream = (run.samples(data.task, num_samples=None, policy="first", **(stream_options or {}))
              if log_samples else None)
    if stream is not None and hasattr(stream.pipeline, "worker_ready"):
        started = time.perf_counter()
        stream.pipeline.worker_ready(WORKER_READY_TIMEOUT_S)
        result.worker_ready_wait = time.perf_counter() - started
        result.worker_ready_cpu = descendants_cpu()
    thread_cpu = 0.0
    cpu_at_first_offer = cpu_by_stage()
    first_offer = time.perf_counter()
    while True:
        for start in range(0, data.size, batch):
            stop = min(start + batch, data.size)
            outputs = data.predictions(start, stop, result.batches)
            due = first_offer + result.rows_offered / rate if rate else 0.0
            if (wait := due - time.perf_counter()) > 0:
                time.sleep(wait)
            if stream is not None:
                dropped = batches_dropped(stream)
                before = time.thread_time()
                stream.add(data.images[start:stop], data.targets[start:stop], outputs, label=KEY_LABEL)
                spent = time.thread_time() - before
                thread_cpu += spent
                if batches_dropped(stream) == dropped:  # taken (a drop may be counted later, on another thread)
                    result.thread_cpu_taken += spent
                    result.rows_taken += stop - start
            result.rows_offered += stop - start
            result.batches += 1
        if stream is not None:
            before = time.thread_time()
            stream.log(KEY_LABEL, step=result.evals)
            spent = time.thread_time() - before
            thread_cpu += spent
            result.thread_cpu_taken += spent
        result.evals += 1
        if sample_rss:
            result.rss_after_eval.append(psutil.Process().memory_info().rss)
            result.rss_parts_after_eval.append(rss_parts())
        elapsed = time.perf_counter() - first_offer
        if (evals is not None and result.evals >= evals) or (seconds is not None and elapsed >= seconds):
            break
    last_offer = time.perf_counter()
    result.stage_cpu = {name: spent - cpu_at_first_offer.get(name, 0.0) for name, spent in cpu_by_stage().items()}
    result.clean_close = run.finish(timeout=CLOSE_TIMEOUT_S)
    closed = time.perf_counter()
    result.thread_cpu = thread_cpu
    result.seconds, result.offer_seconds = closed - first_offer, last_offer - first_offer
    result.close_after_last_offer = closed - last_offer
    result.drops = loss_counters(stream, run)
    if log_samples:
        folder = run_folder(root, name)
        result.files, result.run_files = count_files(folder)
        if read_back:
            started = time.perf_counter()
            result.rows_read = len(logbus.read_table(folder, KEY))
            result.read_seconds = time.perf_counter() - started
    return result


# ---------------------------------------------------------------------------------------------- reporting

def spread(values: list[float], unit: str = "", digits: int = 1) -> str:
    """``median [min-max]`` of ``values``."""
    if not values:
        return "n/a"
    return (f"{statistics.median(values):,.{digits}f}{unit} [{min(values):,.{digits}f}-{max(values):,.{digits}f}]"
            f" ({len(values)} rounds)")


def nonzero(counters: dict[str, int]) -> str:
    """`` (name: count, ...)`` of the counters that are not zero, or nothing."""
    shown = {name: count for name, count in counters.items() if count}
    return f" {shown}" if shown else ""


def load_average() -> str:
    return " ".join(f"{value:.2f}" for value in os.getloadavg())


def scratch_root() -> str:
    parent = os.environ.get("LOGBUS_BENCH_DIR") or "logbus_runs"
    os.makedirs(parent, exist_ok=True)
    return tempfile.mkdtemp(prefix="bench-volume-", dir=parent)


def check_rounds(rounds: int) -> int:
    if rounds < MIN_ROUNDS:
        print(f"note: --rounds {rounds} is below {MIN_ROUNDS}: a check, not a figure", file=sys.stderr)
    return rounds


# ---------------------------------------------------------------------------------------------- throughput

def throughput(args: argparse.Namespace) -> list[LoopResult]:
    tasks = ["classification", "segmentation"] if args.task == "both" else [args.task]
    rounds = check_rounds(args.rounds)
    root = scratch_root()
    results = []
    try:
        print(f"throughput into the local store: {args.seconds:g} s a round, evals of {args.eval_samples} 32x32 rows "
              f"in batches of {args.batch}, load average {load_average()} at the start")
        for task in tasks:
            data = eval_set(task, args.eval_samples, args.batch)
            rate = None if args.rate == "max" else float(args.rate) if args.rate else OFFER_ABOVE_TARGET * TARGET_ROWS_PER_S[task]
            per_task = []
            for round_ in range(rounds):
                result = offer_loop(data, root=root, name=f"{task}-{round_}", rate=rate, seconds=args.seconds,
                                    batch=args.batch)
                per_task.append(result)
                print(f"  {task} round {round_}: {result.rows_per_s:,.0f} rows/s read back "
                      f"({result.rows_read:,}/{result.rows_offered:,} rows, {result.evals} evals), offered at "
                      f"{result.offered_rows_per_s:,.0f} rows/s, dropped {result.dropped}{nonzero(result.drops)}, "
                      f"close {result.close_after_last_offer:.2f} s after the last offer, "
                      f"{result.files_per_table:.2f} files/table (+{result.run_files - result.files} of the run), read back in "
                      f"{result.read_seconds:.1f} s, worker ready {result.worker_ready_wait or 0:.2f} s before the "
                      f"first offer, load {load_average()}", flush=True)
                shutil.rmtree(os.path.join(root, f"{task}-{round_}"), ignore_errors=True)
            results.extend(per_task)
            asked = "as fast as the loop can" if rate is None else f"{rate:,.0f} rows/s offered"
            print(f"{task}, {asked} (target >= {TARGET_ROWS_PER_S[task]:,} rows/s read back, zero dropped, "
                  f"closed within {TARGET_CLOSE_AFTER_LAST_OFFER_S:g} s, <= {TARGET_FILES_PER_TABLE} files/table):")
            print(f"  rows/s read back / (first offer -> close): {spread([r.rows_per_s for r in per_task], digits=0)}")
            print(f"  offered rate reached:                      "
                  f"{spread([r.offered_rows_per_s for r in per_task], digits=0)}")
            print(f"  rows read back / offered:                  "
                  f"{spread([r.rows_read / r.rows_offered for r in per_task], digits=4)}")
            print(f"  batches/tables dropped or lost (all counters): {spread([r.dropped for r in per_task], digits=0)}")
            print(f"  last offer -> close returns:               "
                  f"{spread([r.close_after_last_offer for r in per_task], ' s', 2)}")
            print(f"  files per logged table (rows + packs):     {spread([r.files_per_table for r in per_task], '', 2)}")
            print(f"  training thread CPU in add()/log(), per offered sample: "
                  f"{spread([r.thread_us_per_sample for r in per_task], ' µs', 2)}; per sample taken (target <= "
                  f"{TARGET_THREAD_US_PER_SAMPLE:g} µs): {spread([r.thread_us_per_taken_sample for r in per_task], ' µs', 2)}")
            group = f"{task}, 32x32, {asked}, {args.seconds:g} s a round, evals of {args.eval_samples}"
            suite = "volume_throughput"
            record(suite, group, f"rows/s read back (target >= {TARGET_ROWS_PER_S[task]:,})",
                   [r.rows_per_s for r in per_task], "rows/s")
            record(suite, group, "rows read back / offered", [r.rows_read / r.rows_offered for r in per_task], "")
            record(suite, group, "batches dropped or lost (target 0)", [r.dropped for r in per_task], "batches")
            record(suite, group, f"last offer -> close returns (target <= {TARGET_CLOSE_AFTER_LAST_OFFER_S:g} s)",
                   [r.close_after_last_offer for r in per_task], "s")
            record(suite, group, f"files per logged table (target <= {TARGET_FILES_PER_TABLE})",
                   [r.files_per_table for r in per_task], "files")
            record(suite, group, f"training thread CPU per sample taken (target <= {TARGET_THREAD_US_PER_SAMPLE:g} µs)",
                   [r.thread_us_per_taken_sample for r in per_task], "µs")
        print(f"load average at the end: {load_average()}")
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return results


# ---------------------------------------------------------------------------------------------- stages

STAGE_RATES = {"classification": 20_000, "segmentation": 4_000}  # rows/s every round keeps up with, here


def stages(args: argparse.Namespace) -> list[LoopResult]:
    """Where the CPU goes, per row: each thread of the training process and the worker process, offered a
    steady rate the pipeline keeps up with, once per encoder count. A thread's µs per row bounds the rows/s
    of a stage that runs on that one thread (1e6 / µs), whatever the cores: the figures a projection to a
    larger host starts from."""
    rounds = check_rounds(args.rounds)
    root = scratch_root()
    results = []
    try:
        for task in (["classification", "segmentation"] if args.task == "both" else [args.task]):
            data = eval_set(task, args.eval_samples, args.batch)
            rate = float(args.rate) if args.rate else STAGE_RATES[task]
            for workers in args.encoders:
                per_round = []
                for round_ in range(rounds):
                    name = f"stages-{task}-{workers}-{round_}"
                    result = offer_loop(data, root=root, name=name, rate=rate, seconds=args.seconds, batch=args.batch,
                                        stream_options={"encode_workers": workers}, read_back=False)
                    shutil.rmtree(os.path.join(root, name), ignore_errors=True)
                    if result.dropped:
                        print(f"  {task}, {workers} encoder(s), round {round_}: {result.dropped} dropped at "
                              f"{rate:,.0f} rows/s: not a steady state, ask a lower --rate")
                    per_round.append(result)
                results.extend(per_round)
                print(f"{task}, {rate:,.0f} rows/s offered for {args.seconds:g} s, encode_workers={workers}: CPU per "
                      f"row offered, median [min-max] of {rounds} rounds (load {load_average()})")
                names = sorted({name for r in per_round for name in r.stage_cpu},
                               key=lambda n: -statistics.median(r.stage_cpu.get(n, 0.0) for r in per_round))
                group = f"{task}, 32x32, {rate:,.0f} rows/s offered, encode_workers={workers}: CPU per row"
                for stage in names:
                    costs = [r.stage_cpu.get(stage, 0.0) / max(1, r.rows_offered) * 1e6 for r in per_round]
                    if statistics.median(costs) >= 0.05:
                        print(f"  {stage:34s} {spread(costs, ' µs', 2)}")
                        record("volume_stages", group, stage, costs, "µs")
                added = [r.thread_us_per_sample for r in per_round]
                print(f"  {'(of which add()/log())':34s} {spread(added, ' µs', 2)}")
                record("volume_stages", group, "(training thread: of which add()/log())", added, "µs")
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return results


# ---------------------------------------------------------------------------------------------- rss

def rss(args: argparse.Namespace) -> list[LoopResult]:
    rounds = check_rounds(args.rounds)
    rate = None if args.rate == "max" else float(args.rate)
    root = scratch_root()
    results = []
    try:
        data = eval_set("classification", args.eval_samples, args.batch)
        print(f"training-process RSS over {args.evals} evals of {args.eval_samples} 32x32 classification rows at "
              f"{'max' if rate is None else f'{rate:,.0f}'} rows/s, load average {load_average()}")
        for round_ in range(rounds):
            result = offer_loop(data, root=root, name=f"rss-{round_}", rate=rate, evals=args.evals, batch=args.batch,
                                sample_rss=True)
            samples = result.rss_after_eval
            results.append(result)
            first = samples[0]
            print(f"  round {round_}: RSS after eval 1 {first / MB:.0f} MB, then {min(samples) / MB:.0f}-"
                  f"{max(samples) / MB:.0f} MB, after the last {samples[-1] / MB:.0f} MB; largest departure "
                  f"{rss_drift(samples) / MB:+.1f} MB; rows {result.rows_read:,}/{result.rows_offered:,}, dropped "
                  f"{result.dropped}{parts_growth(result.rss_parts_after_eval)}", flush=True)
            shutil.rmtree(os.path.join(root, f"rss-{round_}"), ignore_errors=True)
        print(f"largest RSS departure from after eval 1 (target within ±{TARGET_RSS_DRIFT_MB:g} MB): "
              f"{spread([rss_drift(r.rss_after_eval) / MB for r in results], ' MB')}")
        print(f"RSS growth, last eval - first eval: "
              f"{spread([(r.rss_after_eval[-1] - r.rss_after_eval[0]) / MB for r in results], ' MB')}")
        group = (f"{args.evals} evals of {args.eval_samples} 32x32 classification rows at "
                 f"{'max' if rate is None else f'{rate:,.0f}'} rows/s")
        record("volume_rss", group, f"training-process RSS, largest departure from after eval 1 (target within "
               f"±{TARGET_RSS_DRIFT_MB:g} MB)", [rss_drift(r.rss_after_eval) / MB for r in results], "MB")
        record("volume_rss", group, "RSS growth, last eval - first eval",
               [(r.rss_after_eval[-1] - r.rss_after_eval[0]) / MB for r in results], "MB")
        for part in ("RssAnon", "RssShmem"):
            series = [[parts[part] for parts in r.rss_parts_after_eval if part in parts] for r in results]
            if all(series):
                print(f"  of which {part}, largest departure from after eval 1: "
                      f"{spread([rss_drift(values) / MB for values in series], ' MB')}")
        print(f"load average at the end: {load_average()}")
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return results


def rss_parts() -> dict[str, int]:
    """This process's resident anonymous memory and resident shared memory (the pipeline's shared buffers
    count in RSS once touched), in bytes, from ``/proc/self/status``; empty where there is none."""
    parts = {}
    try:
        with open("/proc/self/status") as status:
            for line in status:
                name, _, value = line.partition(":")
                if name in ("RssAnon", "RssShmem"):
                    parts[name] = int(value.split()[0]) * 1024  # kB
    except OSError:
        pass
    return parts


def parts_growth(parts: list[dict[str, int]]) -> str:
    """``; RssAnon +a MB, RssShmem +s MB`` from the first eval to the last, or nothing."""
    shown = [f"{name} {(parts[-1][name] - parts[0][name]) / MB:+.1f} MB" for name in parts[0] if name in parts[-1]]
    return f"; last - first: {', '.join(shown)}" if parts and shown else ""


def rss_drift(samples: list[int]) -> int:
    """The signed largest departure of ``samples`` from the first one."""
    return max((value - samples[0] for value in samples), key=abs)


# ---------------------------------------------------------------------------------------------- cpu

def descendants_cpu() -> float:
    """CPU seconds of every process below this one, as they are now (live processes)."""
    total = 0.0
    for child in psutil.Process().children(recursive=True):
        try:
            times = child.cpu_times()
        except psutil.Error:
            continue
        total += times.user + times.system
    return total


def child(config: dict[str, Any]) -> dict[str, Any]:
    """One configuration of ``cpu``, in this (fresh) process: prints its own figures as JSON."""
    count, logging = config["count"], config["logging"]
    report: dict[str, Any] = {"config": config}
    if config["loop"] == "composer":
        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
        from logbus.bench.suite_pipeline import check_nothing_lost, make_trainer

        trainer = make_trainer("sample_logger" if logging else "no_sample_logging", SIDE, count, "local")
        report["worker_ready_cpu"] = descendants_cpu() if logging else None  # make_trainer waits for it
        trainer.eval()
        trainer.eval()
        trainer.close()
        check_nothing_lost(trainer, 2 * count if logging else 0)
        report["rows_logged"] = 2 * count if logging else 0
    else:
        # Read back by the parent, outside the tree whose CPU is counted: reading is not logging's cost.
        result = offer_loop(eval_set("classification", count), root=config["root"], name=config["name"], rate=None,
                            evals=2, log_samples=logging, read_back=False)
        if logging and result.dropped:
            raise AssertionError(f"batches dropped or lost: {result.drops}")
        report.update(rows_logged=result.rows_taken, worker_ready_cpu=result.worker_ready_cpu,
                      worker_ready_wait=result.worker_ready_wait,
                      thread_us_per_sample=result.thread_us_per_taken_sample if logging else None)
    usage = resource.getrusage(resource.RUSAGE_SELF)
    report["self_cpu"] = usage.ru_utime + usage.ru_stime
    return report


def reap(argv: list[str]) -> dict[str, Any]:
    """Runs ``argv`` as this process's child with this process a child subreaper: every descendant,
    the worker included even where its parent does not wait for it, is reaped here, so that
    ``RUSAGE_CHILDREN`` holds the CPU of the whole tree. Returns the child's JSON report with
    ``tree_cpu`` and ``wall`` added."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER) failed: the tree's CPU cannot be counted")
    started = time.perf_counter()
    finished = subprocess.run(argv, stdout=subprocess.PIPE, check=False)
    wall = time.perf_counter() - started
    deadline = time.monotonic() + ORPHAN_WAIT_S
    while True:  # descendants left behind were reparented here: wait for them, kill them past the deadline
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            break
        if pid == 0:
            if time.monotonic() > deadline:
                for orphan in psutil.Process().children():
                    orphan.kill()
            time.sleep(0.02)
    if finished.returncode != 0:
        raise RuntimeError(f"the configuration {argv[-1]} failed with exit code {finished.returncode}")
    report = json.loads(finished.stdout.decode().strip().splitlines()[-1])
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    report.update(tree_cpu=usage.ru_utime + usage.ru_stime, wall=wall)
    return report


def measure_tree(config: dict[str, Any]) -> dict[str, Any]:
    """``config`` run in a fresh interpreter under a reaper process (see ``reap``); its report."""
    script = os.path.abspath(__file__)
    command = [sys.executable, script, "_reap", sys.executable, script, "_child", json.dumps(config)]
    environment = dict(os.environ, LOGBUS_DIR=config["root"], OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    finished = subprocess.run(command, stdout=subprocess.PIPE, env=environment, check=True)
    return json.loads(finished.stdout.decode().strip().splitlines()[-1])


def cpu(args: argparse.Namespace) -> list[dict[str, Any]]:
    rounds = check_rounds(args.rounds)
    small, big = args.sizes
    root = scratch_root()
    reports: list[dict[str, Any]] = []
    marginal, ready_cpu, thread = [], [], []
    try:
        print(f"CPU over every process, {args.loop} loop, 2 evals of {small} and of {big} 32x32 classification "
              f"samples, with and without sample logging, load average {load_average()}")
        for round_ in range(rounds):
            cost = {}
            for logging in (False, True):
                for count in (small, big):
                    config = {"loop": args.loop, "count": count, "logging": logging, "root": root,
                              "name": f"cpu-{round_}-{int(logging)}-{count}"}
                    report = measure_tree(config)
                    if logging and args.loop == "plain":  # every row logged, read back here (outside the measured tree)
                        rows = len(logbus.read_table(run_folder(root, config["name"]), KEY))
                        if rows != 2 * count:
                            raise AssertionError(f"{config['name']}: {rows} rows read back of {2 * count} logged")
                    reports.append(report)
                    cost[logging, count] = report["tree_cpu"]
                    if logging and report.get("worker_ready_cpu") is not None:
                        ready_cpu.append(report["worker_ready_cpu"])
                    if logging and report.get("thread_us_per_sample") is not None:
                        thread.append(report["thread_us_per_sample"])
                    print(f"  round {round_}: {'logging' if logging else 'no logging'}, 2 x {count}: tree CPU "
                          f"{report['tree_cpu']:.2f} s (training process {report['self_cpu']:.2f} s), wall "
                          f"{report['wall']:.2f} s, load {load_average()}", flush=True)
                    shutil.rmtree(os.path.join(root, config["name"]), ignore_errors=True)
            extra = (cost[True, big] - cost[True, small]) - (cost[False, big] - cost[False, small])
            marginal.append(extra / (2 * (big - small)) * 1e6)
            print(f"  round {round_}: marginal CPU per logged sample {marginal[-1]:.1f} µs", flush=True)
        print(f"CPU per logged 32x32 classification sample, all processes, marginal (target <= "
              f"{TARGET_CPU_US_PER_SAMPLE:g} µs): {spread(marginal, ' µs')}")
        if ready_cpu:
            print(f"worker processes' CPU when ready (target <= {TARGET_WORKER_READY_CPU_S} s): "
                  f"{spread(ready_cpu, ' s', 2)}")
        if thread:
            print(f"training thread CPU in add()/log() (target <= {TARGET_THREAD_US_PER_SAMPLE:g} µs): "
                  f"{spread(thread, ' µs/sample', 2)}")
        print(f"load average at the end: {load_average()}")
        group = f"{args.loop} loop, 2 evals of {small} and of {big} 32x32 classification samples"
        suite = f"volume_cpu_{args.loop}"
        record(suite, group, f"marginal CPU per logged sample, all processes (target <= {TARGET_CPU_US_PER_SAMPLE:g} µs)",
               marginal, "µs")
        if ready_cpu:
            record(suite, group, f"worker processes' CPU when ready (target <= {TARGET_WORKER_READY_CPU_S} s)",
                   ready_cpu, "s")
        if thread:
            record(suite, group, f"training thread CPU in add()/log() per sample (target <= "
                   f"{TARGET_THREAD_US_PER_SAMPLE:g} µs)", thread, "µs")
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return reports


# ---------------------------------------------------------------------------------------------- smoke tests
# Collected by pytest (``--benchmark-disable``, as ``make test`` runs benchmarks/): each command at a tiny
# size, every row read back. Skipped under ``--benchmark-only``: these are checks, the figures come from the
# commands above.

SMOKE_BATCH = 64
SMOKE_EVAL_SAMPLES = 2 * SMOKE_BATCH
SMOKE_RATE = "5000"  # rows/s: far below what the pipeline takes, so no batch may be dropped


def _smoke_options(**options: Any) -> argparse.Namespace:
    return argparse.Namespace(rounds=1, batch=SMOKE_BATCH, eval_samples=SMOKE_EVAL_SAMPLES, rate=SMOKE_RATE, **options)


def test_throughput_reads_every_row_back(monkeypatch, tmp_path):
    monkeypatch.setenv("LOGBUS_BENCH_DIR", str(tmp_path))
    results = throughput(_smoke_options(task="both", seconds=0.0))
    assert [result.task for result in results] == ["classification", "segmentation"]
    for result in results:
        assert result.clean_close, result
        assert result.evals == 1 and result.rows_offered == SMOKE_EVAL_SAMPLES, result
        assert result.rows_read == result.rows_offered, result
        assert result.dropped == 0, result.drops
        assert 1 <= result.files_per_table <= TARGET_FILES_PER_TABLE, result
        assert result.thread_cpu > 0
    assert not os.listdir(tmp_path), "the scratch folder was not removed"


def test_rss_is_sampled_after_every_eval(monkeypatch, tmp_path):
    monkeypatch.setenv("LOGBUS_BENCH_DIR", str(tmp_path))
    [result] = rss(_smoke_options(evals=3))
    assert len(result.rss_after_eval) == len(result.rss_parts_after_eval) == 3 and min(result.rss_after_eval) > 0
    assert result.rows_read == result.rows_offered == 3 * SMOKE_EVAL_SAMPLES, result
    assert result.dropped == 0, result.drops


def test_cpu_counts_the_worker_process_in_the_tree(tmp_path):
    """The tree's CPU holds the worker's: at least the training process's own plus what the worker had
    spent when it was ready."""
    report = measure_tree({"loop": "plain", "count": SMOKE_EVAL_SAMPLES, "logging": True, "root": str(tmp_path),
                           "name": "cpu-smoke"})
    assert report["rows_logged"] == 2 * SMOKE_EVAL_SAMPLES, report
    assert report["tree_cpu"] >= report["self_cpu"] + (report["worker_ready_cpu"] or 0.0) > 0, report
    assert report["thread_us_per_sample"] > 0, report


# ---------------------------------------------------------------------------------------------- command line

def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = top.add_subparsers(dest="command", required=True)
    loop = argparse.ArgumentParser(add_help=False)
    loop.add_argument("--rounds", type=int, default=DEFAULT_ROUNDS, help="rounds per figure (>= 3 for a figure)")
    loop.add_argument("--batch", type=int, default=BATCH, help="rows per offered batch")
    speed = commands.add_parser("throughput", parents=[loop], help="sustained rows/s into the local store")
    speed.add_argument("--task", choices=["classification", "segmentation", "both"], default="both")
    speed.add_argument("--seconds", type=float, default=DEFAULT_SECONDS, help="offering time a round (whole evals)")
    speed.add_argument("--rate", default=None, help="offered rows/s, or 'max' (as fast as the loop can); "
                       "default: 5%% above the task's target")
    speed.add_argument("--eval-samples", type=int, default=DEFAULT_EVAL_SAMPLES, help="rows per eval (one table)")
    where = commands.add_parser("stages", parents=[loop], help="CPU per row of each thread and process, by encoder count")
    where.add_argument("--task", choices=["classification", "segmentation", "both"], default="both")
    where.add_argument("--seconds", type=float, default=10.0, help="offering time a round (whole evals)")
    where.add_argument("--rate", default=None, help="offered rows/s (default: one every round keeps up with here)")
    where.add_argument("--eval-samples", type=int, default=DEFAULT_EVAL_SAMPLES, help="rows per eval (one table)")
    where.add_argument("--encoders", type=int, nargs="+", default=[1, 2], help="encode_workers values to compare")
    memory = commands.add_parser("rss", parents=[loop], help="training-process RSS across many evals")
    memory.add_argument("--evals", type=int, default=100)
    memory.add_argument("--eval-samples", type=int, default=512)
    memory.add_argument("--rate", default="20000", help="offered rows/s, or 'max'")
    work = commands.add_parser("cpu", parents=[loop], help="CPU per logged sample over every process")
    work.add_argument("--loop", choices=["composer", "plain"], default="composer")
    work.add_argument("--sizes", type=int, nargs=2, default=[2048, 8192], metavar=("SMALL", "BIG"),
                      help="samples per eval of the two run sizes (2 evals each)")
    return top


def main(argv: list[str]) -> None:
    if argv[:1] == ["_reap"]:
        print(json.dumps(reap(argv[1:])))
        return
    if argv[:1] == ["_child"]:
        print(json.dumps(child(json.loads(argv[1]))))
        return
    args = parser().parse_args(argv)
    {"throughput": throughput, "stages": stages, "rss": rss, "cpu": cpu}[args.command](args)
    if RECORDED and all(entry["rounds"] >= MIN_ROUNDS for figures in RECORDED.values() for entry in figures):
        write_recorded()
    else:
        print("results: not written (fewer than 3 rounds: a check, not a figure)")


if __name__ == "__main__":
    main(sys.argv[1:])
