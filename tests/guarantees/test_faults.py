"""Faults in a real Composer ``Trainer`` (or a plain ``logbus.start_run`` where Composer adds nothing).

For each fault: training finishes, or exits as it would without logbus (same exception, same exit
code); closing returns within its deadline; everything logged before the fault reaches every healthy
backend (read back from the local run folder and the W&B run); and the user is told once what was
lost and why: per failing backend exactly one ERROR with the cause when it happens and one summary
WARNING with the counts at close, nothing about the healthy ones.

The bus-level mechanics (isolation, switch-off, byte budget) are unit-tested in ``test_bus.py``.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from composer import Callback, Trainer
from composer.loggers import LoggerDestination
from composer.models import ComposerClassifier
from local_reader import assert_same_series, local_series, read_lines
from wandb_reader import read_only_run

import logbus
from logbus.composer import LogBusLogger, SampleLogger, WandBLogger
from logbus.demo import DigitsCNN, digits_loaders
from logbus.records import Hyperparameters, Image, Metrics, RunStarted, Table

LOSS = "loss/train/total"
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning:composer.*")


# -- backends with a fault, and a healthy one ------------------------------------------------------
class Recorder:
    """A healthy in-memory backend."""

    supports = frozenset({Table})

    def __init__(self, name: str = "recorder"):
        self.name = name
        self.records: list = []
        self.finish = None

    def log(self, record):
        self.records.append(record)

    def close(self, finish):
        self.finish = finish

    def series(self, name: str) -> list[tuple[int, float]]:
        return [(r.step, float(r.values[name])) for r in self.records if isinstance(r, Metrics) and name in r.values]

    def of(self, kind: type) -> list:
        return [r for r in self.records if isinstance(r, kind)]


class RaisesAlways(Recorder):
    def log(self, record):
        raise RuntimeError(f"broken backend refuses {type(record).__name__}")

    def flush(self):
        raise RuntimeError("broken backend refuses to flush")

    def close(self, finish):
        raise RuntimeError("broken backend refuses to close")


class Hangs(Recorder):
    """Blocks forever in its first ``log`` (a dead NFS mount, a stuck upload) until released."""

    def __init__(self, name: str = "hung"):
        super().__init__(name)
        self.release = threading.Event()

    def log(self, record):
        self.release.wait()
        super().log(record)


class StallsOnTables(Recorder):
    """Stalls on tables (an upload over a link that has stopped moving) until ``moving`` is set; metrics
    are quick. Deterministic, unlike a sleep: every table offered while it stalls meets a full queue."""

    def __init__(self, name: str = "slow"):
        super().__init__(name)
        self.moving = threading.Event()

    def log(self, record):
        if isinstance(record, Table):
            self.moving.wait(60)
        super().log(record)


class SetAfterEvals(Callback):
    """Sets ``event`` at the end of the ``evals``-th eval (after the callbacks listed before it)."""

    def __init__(self, event: threading.Event, evals: int):
        self.event, self.evals, self.seen = event, evals, 0

    def eval_end(self, state, logger):
        self.seen += 1
        if self.seen == self.evals:
            self.event.set()


class ComposerCalls(LoggerDestination):
    """Ground truth: what Composer itself handed to its loggers, in the same Trainer."""

    def __init__(self):
        self.metrics: list[tuple[int, dict]] = []

    def log_metrics(self, metrics, step=None):
        self.metrics.append((step, {name: float(value) for name, value in metrics.items()}))

    def series(self, name: str) -> list[tuple[int, float]]:
        return [(step, metrics[name]) for step, metrics in self.metrics if name in metrics]


class RaiseAtBatch(Callback):
    def __init__(self, batch: int):
        self.batch = batch

    def batch_end(self, state, logger):
        if int(state.timestamp.batch) == self.batch:
            raise RuntimeError(f"training failed at batch {self.batch}")


def make_trainer(loggers, *, callbacks=(), batches: int = 4, **options) -> Trainer:
    train_loader, val_loader = digits_loaders(batch_size=16)
    if options.pop("with_eval", False):
        options.update(eval_dataloader=val_loader, eval_interval="1ba")
    torch.manual_seed(0)
    return Trainer(model=ComposerClassifier(DigitsCNN(), num_classes=10), train_dataloader=train_loader,
                   loggers=list(loggers), callbacks=list(callbacks), device="cpu", progress_bar=False, seed=0,
                   max_duration=f"{batches}ba", **options)


# -- reading back ----------------------------------------------------------------------------------
def told(caplog, backend: str) -> dict[str, list[str]]:
    """What the user was told about ``backend`` (logbus records at WARNING and above), by kind."""
    kinds: dict[str, list[str]] = {"error": [], "switched off": [], "summary": [], "deadline": [], "other": []}
    for record in caplog.records:
        message = record.getMessage()
        if record.name != "logbus" or record.levelno < logging.WARNING or f"backend {backend!r}" not in message:
            continue
        if record.levelno >= logging.ERROR:
            kinds["error"].append(message)
        elif "switched off after" in message:
            kinds["switched off"].append(message)
        elif "delivered," in message and "dropped under backpressure" in message:
            kinds["summary"].append(message)
        elif "did not finish within the close deadline" in message:
            kinds["deadline"].append(message)
        else:
            kinds["other"].append(message)
    return kinds


def assert_told_nothing(caplog, *backends: str):
    for backend in backends:
        assert not any(told(caplog, backend).values()), (backend, told(caplog, backend))


# -- a backend that raises on every call -----------------------------------------------------------
def test_a_backend_raising_on_every_call_costs_nothing_but_itself(wandb_offline, logbus_dir, caplog):
    broken, healthy, truth = RaisesAlways("broken"), Recorder("healthy"), ComposerCalls()
    bus_logger = LogBusLogger(backends=[broken, healthy, "local", ("wandb", {"project": "faults"})])
    trainer = make_trainer([bus_logger, truth], run_name="raising", batches=5)
    with caplog.at_level(logging.WARNING, logger="logbus"):
        trainer.fit()
        trainer.close()

    assert int(trainer.state.timestamp.batch) == 5
    expected = truth.series(LOSS)
    assert [step for step, _ in expected] == [0, 1, 2, 3, 4]
    assert_same_series(healthy.series(LOSS), expected)
    assert_same_series(local_series(logbus_dir / "raising", LOSS), expected)
    wandb_run = read_only_run(wandb_offline)
    assert_same_series(wandb_run.metric(LOSS), expected)
    assert wandb_run.exit_code == 0 and healthy.finish.exit_code == 0

    stats = bus_logger.bus.stats()["backends"]["broken"]
    # RunStarted failed: switched off at once, everything after it counted, nothing delivered.
    assert (stats["delivered"], stats["enabled"]) == (0, False)
    assert stats["discarded"] == len(healthy.records) - 1  # all but RunStarted
    assert stats["failures"] == 2  # RunStarted, then close()
    said = told(caplog, "broken")
    [error] = said["error"]
    assert "failed on RunStarted" in error and "switched off" in error and "broken backend refuses RunStarted" in error
    [summary] = said["summary"]
    assert f"0 delivered, 0 dropped under backpressure (max_pending_bytes), 2 failed, {stats['discarded']} discarded" in summary
    assert "first error: RuntimeError: broken backend refuses RunStarted" in summary
    assert said["switched off"] == said["other"] == said["deadline"] == []
    assert_told_nothing(caplog, "healthy", "local", "wandb")


# -- a backend that hangs --------------------------------------------------------------------------
def test_a_hung_backend_cannot_hold_training_or_close_past_the_deadline(logbus_dir, caplog):
    hung, healthy, truth = Hangs(), Recorder("healthy"), ComposerCalls()
    close_timeout = 1.0
    bus_logger = LogBusLogger(backends=[hung, healthy, "local"], close_timeout=close_timeout)
    closing: list[float] = []
    bus_close = bus_logger.bus.close

    def timed_close(*args, **kwargs):
        started = time.monotonic()
        try:
            return bus_close(*args, **kwargs)
        finally:
            closing.append(time.monotonic() - started)

    bus_logger.bus.close = timed_close
    trainer = make_trainer([bus_logger, truth], run_name="hung", batches=4)
    try:
        with caplog.at_level(logging.WARNING, logger="logbus"):
            started = time.monotonic()
            trainer.fit()
            trainer.close()
            elapsed = time.monotonic() - started
        undelivered = len(healthy.records)  # everything the healthy twin got is stuck in front of the hung one
    finally:
        hung.release.set()

    assert int(trainer.state.timestamp.batch) == 4
    expected = truth.series(LOSS)
    assert_same_series(healthy.series(LOSS), expected)
    assert_same_series(local_series(logbus_dir / "hung", LOSS), expected)
    assert healthy.finish.exit_code == 0
    # fit_end's flush, close's flush and post_close's close each wait close_timeout at most.
    [close_seconds] = closing
    assert close_seconds < close_timeout + 2
    assert elapsed < 3 * close_timeout + 20
    said = told(caplog, "hung")
    [deadline] = said["deadline"]
    assert f"{undelivered} record(s) were not delivered" in deadline and "thread is abandoned" in deadline
    assert said["error"] == said["summary"] == said["switched off"] == said["other"] == []
    assert_told_nothing(caplog, "healthy", "local")


class SlowOnLateMetrics(Recorder):
    """Healthy, but each ``late/*`` metrics record takes ``seconds`` to deliver."""

    def __init__(self, seconds: float, name: str = "slow-late"):
        super().__init__(name)
        self.seconds = seconds

    def log(self, record):
        if isinstance(record, Metrics) and any(name.startswith("late/") for name in record.values):
            time.sleep(self.seconds)
        super().log(record)


class EvalAfterFit(Callback):
    """The ``trainer.eval()`` after ``fit`` takes ``seconds``, then logs three ``late/*`` metrics."""

    def __init__(self, seconds: float):
        self.seconds, self.after_fit = seconds, False

    def fit_end(self, state, logger):
        self.after_fit = True

    def eval_end(self, state, logger):
        if self.after_fit:
            time.sleep(self.seconds)
            for index in range(3):
                logger.log_metrics({f"late/{index}": float(index)})


def test_an_eval_after_fit_does_not_eat_the_final_closes_deadline(logbus_dir, caplog):
    # close_timeout 2 s; the eval after fit outlasts it, and its 3 records take 2.7 s to deliver: more
    # than one wait, less than close's flush and the final close together. A deadline shared from
    # fit_end on would leave the end of training one grace period and lose the last record.
    close_timeout = 2.0
    slow = SlowOnLateMetrics(seconds=0.9)
    bus_logger = LogBusLogger(backends=[slow], close_timeout=close_timeout, log_stats=False)
    trainer = make_trainer([bus_logger], callbacks=[EvalAfterFit(seconds=close_timeout + 0.2)], run_name="late",
                           batches=2, with_eval=True)
    trainer.fit()
    trainer.eval()
    with caplog.at_level(logging.WARNING, logger="logbus"):
        trainer.close()

    assert [record.values for record in slow.records if isinstance(record, Metrics)
            and any(name.startswith("late/") for name in record.values)] == [{f"late/{i}": float(i)} for i in range(3)]
    assert slow.finish is not None and slow.finish.exit_code == 0
    assert_told_nothing(caplog, "slow-late")


# -- a slow backend: backpressure ------------------------------------------------------------------
def test_a_slow_backend_drops_and_counts_sample_tables_and_gets_every_metric(logbus_dir, caplog):
    slow, healthy, truth = StallsOnTables(), Recorder("healthy"), ComposerCalls()
    # One table of the 297 eval digits is charged 64 bytes a row: the budget holds two waiting tables.
    table_bytes = 64 * 297
    bus_logger = LogBusLogger(backends=[slow, healthy], max_pending_bytes=2 * table_bytes + 1000)
    # The pipeline's own queue never fills here (its drops are another counter): the budget under test is the bus's.
    samples = SampleLogger("classification", num_samples=None, max_pending_batches=1000)
    trainer = make_trainer([bus_logger, truth], callbacks=[samples, SetAfterEvals(slow.moving, 8)], run_name="slow",
                           batches=8, with_eval=True)
    with caplog.at_level(logging.WARNING, logger="logbus"):
        trainer.fit()
        trainer.close()

    assert int(trainer.state.timestamp.batch) == 8
    evals = [step for step, metrics in truth.metrics if any(name.startswith("metrics/eval/") for name in metrics)]
    assert len(evals) == 8
    healthy_tables = healthy.of(Table)
    assert [table.step for table in healthy_tables] == evals
    assert all(len(table.rows) == 297 for table in healthy_tables), samples.pipeline.stats
    # Every metric reaches the slow backend too, in order; tables are shed, never metrics.
    for backend in (slow, healthy):
        assert_same_series(backend.series(LOSS), truth.series(LOSS))
        assert [(r.step, r.values) for r in backend.of(Metrics)][:-1] == [
            (step, pytest.approx(metrics)) for step, metrics in truth.metrics]  # the last: logbus/* stats
    stats = bus_logger.bus.stats()["backends"]["slow"]
    delivered_tables = [table.step for table in slow.of(Table)]
    assert len(delivered_tables) >= 1 and stats["dropped"] >= 1
    assert len(delivered_tables) + stats["dropped"] == len(evals)
    assert set(delivered_tables) <= set(evals)
    assert bus_logger.bus.stats()["backends"]["healthy"]["dropped"] == 0
    said = told(caplog, "slow")
    [summary] = said["summary"]
    assert f"{stats['dropped']} dropped under backpressure (max_pending_bytes)" in summary
    assert said["error"] == said["switched off"] == said["other"] == said["deadline"] == []
    assert_told_nothing(caplog, "healthy")


# -- W&B failing at wandb.init ---------------------------------------------------------------------
FAKE_API_KEY = "f4ke0123456789abcdef0123456789abcdef4242"


@pytest.mark.parametrize("cause", ["no-api-key", "unreachable-server"])
def test_wandb_failing_at_init_leaves_training_and_the_other_backends_alone(wandb_offline, logbus_dir, tmp_path,
                                                                            monkeypatch, caplog, cause):
    # Online mode, so wandb.init must reach a server. Without a key it refuses at once (no TTY to ask
    # on); with a key and a refused port it retries until init_timeout (90 s by default, bounded here).
    monkeypatch.setenv("WANDB_MODE", "online")
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    if cause == "unreachable-server":
        monkeypatch.setenv("WANDB_API_KEY", FAKE_API_KEY)
        monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")
        monkeypatch.setenv("WANDB_INIT_TIMEOUT", "3")
    truth = ComposerCalls()
    wandb_logger = WandBLogger(project="never-started")  # the one-line drop-in
    local_logger = LogBusLogger(backends=["local"])
    trainer = make_trainer([wandb_logger, local_logger, truth], run_name="no-wandb", batches=4)
    with caplog.at_level(logging.WARNING, logger="logbus"):
        started = time.monotonic()
        trainer.fit()
        trainer.close()
        elapsed = time.monotonic() - started

    assert int(trainer.state.timestamp.batch) == 4
    assert elapsed < 60  # bounded by init_timeout, not by the default close deadline per flush
    assert_same_series(local_series(logbus_dir / "no-wandb", LOSS), truth.series(LOSS))
    stats = wandb_logger.bus.stats()["backends"]["wandb"]
    assert (stats["delivered"], stats["enabled"], stats["failures"]) == (0, False, 1)
    said = told(caplog, "wandb")
    [error] = said["error"]
    expected_cause = "No API key configured" if cause == "no-api-key" else "connection refused"
    assert "failed on RunStarted" in error and expected_cause in error
    [summary] = said["summary"]
    assert f"{stats['discarded']} discarded after it was switched off" in summary and expected_cause in summary
    # Everything the local backend got on its own bus (the same Composer calls), but for RunStarted.
    assert stats["discarded"] == local_logger.bus.stats()["backends"]["local"]["delivered"] - 1
    assert said["switched off"] == said["other"] == said["deadline"] == []
    assert_told_nothing(caplog, "local")
    for path in tmp_path.rglob("*"):  # wandb's debug logs included
        if path.is_file():
            assert FAKE_API_KEY.encode() not in path.read_bytes(), path


# -- the disk filling up under the local backend ---------------------------------------------------
@pytest.fixture
def small_disk(tmp_path, monkeypatch):
    """A 1 MiB tmpfs as ``LOGBUS_DIR`` (needs root, as in CI here; skipped elsewhere)."""
    folder = tmp_path / "small_disk"
    folder.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(folder)], capture_output=True,
                             text=True, check=False)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    monkeypatch.setenv("LOGBUS_DIR", str(folder))
    yield folder
    subprocess.run(["umount", "-l", str(folder)], check=False)


def test_a_table_that_fills_the_disk_is_lost_counted_and_the_run_goes_on(small_disk, caplog, recwarn):
    """A table bigger than the free space (2,000 noise images, ~6 MB, on a 1 MiB disk) fails while its
    pack is written: that table is lost, counted once with a clear message, its partial files removed
    (so the space comes back), the tables before it stay whole, and the run goes on: later metrics and
    tables are written."""
    rng = np.random.default_rng(0)
    with caplog.at_level(logging.WARNING, logger="logbus"):
        run = logbus.start_run("overflow", backends=["local"])
        run.log_table("samples/val", ["id", "image"], [[0, Image(pixels=rng.integers(0, 256, (8, 8, 3), np.uint8))]],
                      step=0)
        noise = rng.integers(0, 256, (2000, 32, 32, 3), dtype=np.uint8)
        run.log_table("samples/val", ["id", "image"], [[i, Image(pixels=noise[i])] for i in range(2000)], step=1)
        for step in range(2, 12):
            run.log({"loss": 1.0 / step}, step=step)
        run.log_table("samples/val", ["id"], [[2]], step=2)
        assert run.finish()

    run_dir = small_disk / "overflow"
    stats = run.bus.stats()["backends"]["local"]
    assert stats["failures"] == 1 and stats["enabled"] is True
    [error] = told(caplog, "local")["error"]
    assert "the table 'samples/val' at step 1 (2000 rows) could not be written and is lost" in error
    assert "No space left on device" in error
    tables = logbus.read_table(run_dir, "samples/val")
    assert tables._step.tolist() == [0, 2] and tables.id.tolist() == [0, 2]
    assert tables.image[0].to_numpy().shape == (8, 8, 3)
    assert [line["step"] for line in read_lines(run_dir / "metrics.jsonl")] == list(range(2, 12))
    assert list((run_dir / ".tmp").iterdir()) == [] and len(list((run_dir / "packs").iterdir())) == 1
    assert json.loads((run_dir / "run.json").read_text())["status"] == "finished"


def test_a_full_disk_switches_the_local_backend_off_and_keeps_what_it_wrote_whole(small_disk, caplog, recwarn):
    healthy = Recorder("healthy")
    rng = np.random.default_rng(0)
    before_full, total = 20, 30_000  # ~60 bytes a metrics line: 1 MiB is full long before the end
    with caplog.at_level(logging.WARNING, logger="logbus"):
        run = logbus.start_run("full", backends=["local", healthy], config={"lr": 0.1})
        for step in range(total):
            run.log({"loss": 1.0 / (step + 1), "step_again": step}, step=step)
            if step < before_full:  # noise images do not compress: a file (and a 4 KiB page) each
                noise = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
                run.log_table("samples/val", ["id", "image"], [[step, Image(pixels=noise)]], step=step)
        run.log_table("samples/val", ["id"], [[-1]], step=total)  # after the disk is full
        started = time.monotonic()
        clean = run.finish()
        close_seconds = time.monotonic() - started

    assert clean and close_seconds < 30
    assert [step for step, _ in healthy.series("loss")] == list(range(total))
    assert len(healthy.of(Table)) == before_full + 1
    run_dir = small_disk / "full"
    lines = read_lines(run_dir / "metrics.jsonl")  # every line parses: none was left half-written
    written = len(lines)
    assert before_full < written < total
    assert lines == [{"step": step, "time": line["time"], "loss": 1.0 / (step + 1), "step_again": float(step)}
                     for step, line in enumerate(lines)]  # exactly the first `written` steps, whole
    tables = logbus.read_table(run_dir, "samples/val")  # the tables written before the disk filled, whole
    assert tables._step.tolist() == tables.id.tolist() == list(range(before_full))
    assert all(cell.to_numpy().shape == (16, 16, 3) for cell in tables.image)
    assert [path for path in (run_dir / ".tmp").iterdir()] == []  # nothing half-written left behind
    assert json.loads((run_dir / "hparams.json").read_text()) == {"lr": 0.1}

    stats = run.bus.stats()["backends"]["local"]
    metric_records = total + 1  # RunStarted first
    assert stats["enabled"] is False
    assert stats["delivered"] + stats["failures"] + stats["discarded"] == metric_records + before_full + 1 + 1  # + close
    said = told(caplog, "local")
    [error] = said["error"]
    assert "No space left on device" in error or "disk full" in error
    assert len(said["switched off"]) == 1 and len(said["summary"]) == 1
    assert f"{stats['discarded']} discarded" in said["summary"][0]
    assert said["other"] == said["deadline"] == []
    assert_told_nothing(caplog, "healthy")
    assert [str(w.message) for w in recwarn if "local backend" in str(w.message)] == []


# -- SIGTERM during fit ----------------------------------------------------------------------------
SIGTERM_SCRIPT = textwrap.dedent("""
    import json, sys, time
    import torch
    from composer import Callback, Trainer
    from composer.loggers import LoggerDestination
    from composer.models import ComposerClassifier
    from logbus.demo import DigitsCNN, digits_loaders

    class Truth(LoggerDestination):  # what Composer handed to its loggers, written as it happens
        def __init__(self, path):
            self.file = open(path, "a", buffering=1)

        def log_metrics(self, metrics, step=None):
            self.file.write(json.dumps({"step": step, **{k: float(v) for k, v in metrics.items()}}) + "\\n")

    class Pace(Callback):  # a long run: it is stopped from outside
        def batch_end(self, state, logger):
            time.sleep(0.05)

    with_logbus = sys.argv[1] == "logbus"
    loggers = [Truth(sys.argv[2])]
    if with_logbus:
        from logbus.composer import LogBusLogger
        loggers.append(LogBusLogger(backends=["local", ("wandb", {"project": "sigterm"})]))
    train_loader, _ = digits_loaders(batch_size=16)
    torch.manual_seed(0)
    trainer = Trainer(model=ComposerClassifier(DigitsCNN(), num_classes=10), train_dataloader=train_loader,
                      max_duration="5000ba", device="cpu", progress_bar=False, seed=0, run_name="sigterm",
                      loggers=loggers, callbacks=[Pace()])
    trainer.fit()
    print("unreachable")
""")


def _stop_after_first_losses(process: subprocess.Popen, watched: Path, losses: int = 3, timeout: float = 120) -> float:
    """Sends SIGTERM once ``watched`` (a metrics.jsonl) holds ``losses`` training losses."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None:
        if watched.exists() and watched.read_text().count(f'"{LOSS}"') >= losses:
            process.send_signal(signal.SIGTERM)
            return time.monotonic()
        time.sleep(0.02)
    process.kill()
    raise AssertionError(f"{watched} never got {losses} losses; stderr: {process.communicate()[1][-3000:]}")


def test_sigterm_during_fit_exits_as_composer_does_and_delivers_what_came_before(wandb_offline, logbus_dir, tmp_path):
    script = tmp_path / "script" / "train.py"  # its folder goes first on sys.path: keep it empty
    script.parent.mkdir()
    script.write_text(SIGTERM_SCRIPT)
    truth = {name: tmp_path / f"truth-{name}.jsonl" for name in ("logbus", "plain")}
    processes = {name: subprocess.Popen([sys.executable, str(script), name, str(truth[name])], cwd=tmp_path,
                                        env=dict(os.environ), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for name in ("logbus", "plain")}
    try:
        # After the first metrics reached the local run folder (and, without logbus, Composer's loggers).
        sent = {"logbus": _stop_after_first_losses(processes["logbus"], logbus_dir / "sigterm" / "metrics.jsonl"),
                "plain": _stop_after_first_losses(processes["plain"], truth["plain"])}
        results = {name: process.communicate(timeout=120) for name, process in processes.items()}
    finally:
        for process in processes.values():
            if process.poll() is None:
                process.kill()
    exited = time.monotonic()

    for name, process in processes.items():
        assert process.returncode == 128 + signal.SIGTERM, (name, results[name][1][-3000:])
        assert "unreachable" not in results[name][0]
    assert exited - sent["logbus"] < 60  # the default close deadline
    stderr = results["logbus"][1]
    assert "logbus:" not in stderr, stderr[-3000:]  # nothing was lost, so nothing to tell

    handed_over = [(line["step"], line[LOSS]) for line in read_lines(truth["logbus"]) if LOSS in line]
    assert len(handed_over) >= 3
    local_dir = logbus_dir / "sigterm"
    assert_same_series(local_series(local_dir, LOSS), handed_over)
    status = json.loads((local_dir / "run.json").read_text())
    assert (status["status"], status["exit_code"], status["reason"]) == ("failed", 1, "interrupted")
    wandb_run = read_only_run(wandb_offline)
    assert_same_series(wandb_run.metric(LOSS), handed_over)
    assert wandb_run.exit_code == 1


# -- an exception in fit ---------------------------------------------------------------------------
def test_an_exception_in_fit_reaches_the_caller_unchanged_and_the_runs_are_closed_failed(logbus_dir, caplog):
    # W&B's side of this (exit code 1, metrics kept) is in test_composer_adapter.py.
    healthy, truth = Recorder("healthy"), ComposerCalls()
    trainer = make_trainer([LogBusLogger(backends=[healthy, "local"]), truth], callbacks=[RaiseAtBatch(3)],
                           run_name="raises", batches=6)
    with caplog.at_level(logging.WARNING, logger="logbus"):
        with pytest.raises(RuntimeError, match="training failed at batch 3") as raised:
            trainer.fit()
        assert raised.type is RuntimeError and raised.value.__cause__ is None
        started = time.monotonic()
        trainer.close()
        assert time.monotonic() - started < 30

    expected = truth.series(LOSS)
    assert [step for step, _ in expected] == [0, 1, 2]
    assert_same_series(healthy.series(LOSS), expected)
    assert_same_series(local_series(logbus_dir / "raises", LOSS), expected)
    assert healthy.finish.exit_code == 1 and isinstance(healthy.records[0], RunStarted)
    assert healthy.of(Hyperparameters)
    status = json.loads((logbus_dir / "raises" / "run.json").read_text())
    assert (status["status"], status["exit_code"]) == ("failed", 1)
    assert [r.getMessage() for r in caplog.records if r.name == "logbus" and r.levelno >= logging.WARNING] == []
