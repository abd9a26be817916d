"""The bus under each failure mode: raising, hung and slow backends, backpressure, ordering, close."""

from __future__ import annotations

import logging
import threading
import time

import numpy as np
import pytest

from logbus.bus import Bus
from logbus.records import Hyperparameters, Image, Metrics, RunFinished, RunStarted, Table


class Recorder:
    """A real in-memory backend: keeps what it was given."""

    supports = frozenset({Table})

    def __init__(self, name="recorder"):
        self.name = name
        self.records = []
        self.finish = None

    def log(self, record):
        self.records.append(record)

    def close(self, finish):
        self.finish = finish

    def steps(self):
        return [r.step for r in self.records if isinstance(r, Metrics)]


class Raising(Recorder):
    def log(self, record):
        raise RuntimeError(f"backend exploded on {type(record).__name__}")


class Hanging(Recorder):
    def __init__(self, name="hanging"):
        super().__init__(name)
        self.release = threading.Event()
        self.entered = threading.Event()

    def log(self, record):
        self.entered.set()
        self.release.wait()
        super().log(record)


def table(rows=1, size=32):
    pixels = np.zeros((size, size, 3), np.uint8)
    return Table("samples/val", ["image", "label"], [[Image(pixels=pixels), i] for i in range(rows)], step=0)


def test_a_record_emitted_to_some_backends_reaches_only_those():
    first, second = Recorder("a"), Recorder("b")
    bus = Bus([first, second])
    bus.emit(Metrics({"loss": 1.0}, 0), to={"b"})
    bus.emit(Metrics({"loss": 2.0}, 1), to=set())
    bus.emit(Metrics({"loss": 3.0}, 2))
    assert bus.close(timeout=10)
    assert (first.steps(), second.steps()) == ([2], [0, 2])


def test_records_reach_every_backend_in_order():
    first, second = Recorder("a"), Recorder("b")
    bus = Bus([first, second])
    bus.emit(RunStarted("run"))
    for step in range(500):
        bus.emit(Metrics({"loss": float(step)}, step))
    assert bus.close(timeout=10)
    for backend in (first, second):
        assert isinstance(backend.records[0], RunStarted)
        assert backend.steps() == list(range(500))
        assert backend.finish.exit_code == 0


def test_raising_backend_is_isolated_reported_once_and_switched_off(caplog):
    healthy, broken = Recorder("healthy"), Raising("broken")
    bus = Bus([broken, healthy], failure_limit=3)
    with caplog.at_level(logging.WARNING, logger="logbus"):
        for step in range(20):
            bus.emit(Metrics({"x": 1.0}, step))
        assert bus.close(timeout=10)
    assert healthy.steps() == list(range(20))
    stats = bus.stats()["backends"]["broken"]
    assert stats["failures"] == 3 and not stats["enabled"]
    assert stats["discarded"] == 17
    errors = [r for r in caplog.records if r.levelno == logging.ERROR and "broken" in r.getMessage()]
    assert len(errors) == 1 and "Traceback" in errors[0].getMessage() and "backend exploded" in errors[0].getMessage()
    assert any("switched off" in r.getMessage() for r in caplog.records)


def test_backend_failing_to_start_is_switched_off_at_once(caplog):
    class FailsToStart(Recorder):
        def log(self, record):
            if isinstance(record, RunStarted):
                raise ConnectionError("no network")
            super().log(record)

    failing, healthy = FailsToStart("wandb-ish"), Recorder()
    bus = Bus([failing, healthy])
    bus.emit(RunStarted("run"))
    bus.emit(Metrics({"x": 1.0}, 0))
    bus.close(timeout=10)
    assert failing.records == [] and healthy.steps() == [0]
    assert bus.stats()["backends"]["wandb-ish"]["enabled"] is False


def test_hung_backend_cannot_hang_close_past_its_deadline(caplog):
    hung, healthy = Hanging(), Recorder()
    bus = Bus([hung, healthy])
    for step in range(5):
        bus.emit(Metrics({"x": 1.0}, step))
    started = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="logbus"):
        clean = bus.close(timeout=0.5)
    elapsed = time.monotonic() - started
    hung.release.set()
    assert clean is False
    assert elapsed < 5  # generous: the point is "bounded", not a timing target
    assert healthy.steps() == list(range(5)) and healthy.finish is not None
    assert any("'hanging' did not finish" in r.getMessage() for r in caplog.records)


def test_slow_backend_drops_samples_never_metrics():
    slow = Hanging("slow")
    one_table_bytes = table().nbytes
    bus = Bus([slow], max_pending_bytes=3 * one_table_bytes)
    bus.emit(table())
    assert slow.entered.wait(10)  # the writer now holds one table and is stuck
    for step in range(10):
        bus.emit(table())
        bus.emit(Metrics({"x": 1.0}, step))
    stats = bus.stats()["backends"]["slow"]
    # Three more tables fit the byte budget, the other seven are dropped; every metric is queued.
    assert stats["dropped"] == 7
    assert stats["pending"] == 3 + 10
    slow.release.set()
    assert bus.close(timeout=10)
    metrics = [r for r in slow.records if isinstance(r, Metrics)]
    assert len(metrics) == 10 and len(slow.records) == 10 + 4
    assert bus.stats()["backends"]["slow"]["dropped"] == 7


def test_flush_waits_for_delivery():
    recorder = Recorder()
    bus = Bus([recorder])
    for step in range(100):
        bus.emit(Metrics({"x": 1.0}, step))
    assert bus.flush(timeout=10)
    assert len(recorder.records) == 100
    bus.close()


def test_unsupported_record_types_are_not_delivered():
    class MetricsOnly(Recorder):
        supports = frozenset()

    backend = MetricsOnly()
    bus = Bus([backend])
    bus.emit(table())
    bus.emit(Hyperparameters({"lr": 0.1}))
    bus.close(timeout=10)
    assert [type(r) for r in backend.records] == [Hyperparameters]


def test_close_is_idempotent_and_later_emits_are_not_delivered(caplog):
    recorder = Recorder()
    bus = Bus([recorder])
    bus.emit(Metrics({"x": 1.0}, 0))
    assert bus.close(exit_code=1, reason="boom", timeout=10)
    assert bus.close(timeout=10)
    with caplog.at_level(logging.WARNING, logger="logbus"):
        bus.emit(Metrics({"x": 2.0}, 1))
    assert recorder.steps() == [0] and recorder.finish == RunFinished(1, "boom")
    assert any("after the bus was closed" in r.getMessage() for r in caplog.records)


def test_stats_as_metrics():
    recorder = Recorder("rec")
    bus = Bus([recorder])
    bus.emit(Metrics({"x": 1.0}, 0))
    bus.flush(10)
    metrics = bus.stats_metrics()
    assert metrics["logbus/emitted"] == 1.0 and metrics["logbus/rec/delivered"] == 1.0
    assert metrics["logbus/caller_us_per_emit"] > 0
    Metrics(metrics)  # they are valid metrics
    bus.close()


def test_two_instances_of_one_backend_keep_distinct_names():
    bus = Bus([Recorder("same"), Recorder("same")])
    assert list(bus.backends) == ["same", "same-2"]
    bus.close()


@pytest.mark.parametrize("backends, match", [
    ("local", "backends: expected a list"),
    ([], "at least one backend"),
    ([42], "backends: expected a backend name"),
    (["no-such-backend"], "known backends: .*local.*wandb"),
])
def test_bad_backend_arguments(backends, match):
    with pytest.raises((TypeError, ValueError, KeyError), match=match):
        Bus(backends)


def test_tensor_metrics_are_the_values_at_the_call_not_at_delivery(logbus_dir):
    """``run.log({"x": t})`` then ``t.zero_()``: the writer, held back until after the change, still
    reads the value ``t`` had at the call (tensors, parameters an optimizer steps, numpy arrays)."""
    import torch

    import logbus
    from logbus.records import as_float

    class ReadsLate(Hanging):
        def log(self, record):
            super().log(record)
            if isinstance(record, Metrics):
                self.read = {name: as_float(value) for name, value in record.values.items()}

    late = ReadsLate()
    loss, array = torch.tensor(5.0), np.array([2.5])
    weight = torch.nn.Parameter(torch.tensor([1.5]))
    run = logbus.start_run("snapshots", backends=[late])
    run.log({"loss": loss, "weight": weight, "array": array, "plain": 0.5}, step=3)
    loss.zero_()
    array[0] = -1.0
    weight.grad = torch.tensor([1.0])
    torch.optim.SGD([weight], lr=1.0).step()
    assert weight.item() == 0.5
    late.release.set()
    assert run.finish(timeout=30)
    assert late.read == {"loss": 5.0, "weight": 1.5, "array": 2.5, "plain": 0.5}


def test_a_cuda_metric_is_snapshotted_without_a_host_sync():
    import torch

    if not torch.cuda.is_available():
        pytest.skip("needs CUDA: the snapshot of a CUDA tensor must not synchronise (no GPU here)")
    from logbus.records import as_float

    loss = torch.full((), 5.0, device="cuda")
    torch.cuda.set_sync_debug_mode("error")  # any synchronising call raises
    try:
        record = Metrics({"loss": loss}, step=0)
        loss.zero_()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert as_float(record.values["loss"]) == 5.0


def test_a_release_callback_registered_after_the_last_release_runs_at_once():
    """``Deferred.on_released``: registered before the record is held (the sample pipeline registers
    before it emits), it waits for the holders to come and go; registered once they have all let go,
    it runs at once (it used to wait for a release that never came, and a table's files were kept)."""
    from concurrent.futures import Future

    from logbus.bus import Deferred

    recorder = Recorder()
    bus = Bus([recorder])
    future: Future = Future()
    deferred = Deferred(Table, future)
    ran: list[str] = []
    deferred.on_released(lambda: ran.append("before emit"))
    assert ran == []  # nobody has held it yet: not at once
    bus.emit(deferred)
    future.set_result(table())
    assert bus.flush(timeout=30)
    assert ran == ["before emit"] and [type(r) for r in recorder.records] == [Table]
    deferred.on_released(lambda: ran.append("after release"))
    assert ran == ["before emit", "after release"]
    bus.close(timeout=30)
