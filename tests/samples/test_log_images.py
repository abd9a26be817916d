"""``log_images`` (Composer's ``LogBusLogger.log_images`` and the plain-loop ``Run.log_images``): checked
and snapshotted at the call, converted to uint8 and copied to the host on a backend's writer thread."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch
from gated_recorder import GatedRecorder
from torch.overrides import TorchFunctionMode

import logbus
import logbus.kernels
from logbus.composer import LogBusLogger
from logbus.kernels import images_to_uint8_reference
from logbus.records import Images, Table


class CallerThreadCalls(TorchFunctionMode):
    """Every torch call made on the thread that entered it (a mode is per thread)."""

    HOST_COPIES = {"cpu", "numpy", "item", "tolist"}

    def __init__(self):
        super().__init__()
        self.names: list[str] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        self.names.append(getattr(func, "__name__", repr(func)))
        return func(*args, **(kwargs or {}))


@pytest.fixture
def conversions(monkeypatch) -> list[str]:
    """The names of the threads that ran ``images_to_uint8`` (the real one, called through)."""
    original, threads = logbus.kernels.images_to_uint8, []

    def recorded(*args, **kwargs):
        threads.append(threading.current_thread().name)
        return original(*args, **kwargs)

    monkeypatch.setattr(logbus.kernels, "images_to_uint8", recorded)
    return threads


def _log_with_run(recorder, images, masks):
    run = logbus.start_run("images", backends=[recorder])
    run.log_images("inputs", images, step=3, masks=masks, mask_class_labels={0: "bg", 1: "fg", 2: "edge"})
    return run.bus


def _log_with_composer_logger(recorder, images, masks):
    logger = LogBusLogger(backends=[recorder])
    logger.log_images(images, name="inputs", step=3, masks=masks, mask_class_labels={0: "bg", 1: "fg", 2: "edge"})
    return logger.bus


@pytest.mark.parametrize("log", [_log_with_run, _log_with_composer_logger], ids=["run", "composer"])
def test_images_are_converted_on_a_writer_thread_from_a_snapshot_taken_at_the_call(log, conversions, logbus_dir):
    images = torch.rand(2, 3, 5, 4, generator=torch.Generator().manual_seed(0))
    masks = torch.arange(40).reshape(2, 5, 4) % 3
    expected_pixels, expected_masks = images_to_uint8_reference(images).numpy(), masks.numpy().copy()
    recorder = GatedRecorder()
    with CallerThreadCalls() as calls:
        bus = log(recorder, images, {"truth": masks})
    images.zero_()  # the caller reuses its buffers at once
    masks.fill_(1)

    assert conversions == []  # not on the caller's thread, nor yet anywhere
    assert not CallerThreadCalls.HOST_COPIES & set(calls.names), calls.names
    assert "clone" in calls.names  # the snapshot is all the caller did with the data
    recorder.gate.set()
    assert bus.close(timeout=30)

    assert conversions == ["logbus-GatedRecorder"]  # once, on the backend's writer thread
    [record] = recorder.of_type(Images)
    assert (record.key, record.step) == ("inputs", 3)
    for i, image in enumerate(record.images):
        np.testing.assert_array_equal(image.pixels, expected_pixels[i])
        np.testing.assert_array_equal(image.masks["truth"].data, expected_masks[i])
        assert image.masks["truth"].class_labels == {0: "bg", 1: "fg", 2: "edge"}


def test_images_are_converted_once_for_every_backend_and_counted_against_each_budget(conversions, logbus_dir):
    """Two backends: the first writer to reach the record converts, the other gets the same records."""
    first, second = GatedRecorder(), GatedRecorder()
    run = logbus.start_run("two", backends=[first, second])
    run.log_images("inputs", np.full((4, 6, 3), 0.5, np.float32), channels_last=True)
    # Charged at the call with the size the uint8 pixels will have, before anything is converted.
    assert [worker._pending_bytes for worker in run.bus.workers] == [4 * 6 * 3] * 2
    first.gate.set()
    second.gate.set()
    assert run.finish(timeout=30)
    assert len(conversions) == 1
    [a], [b] = (backend.of_type(Images) for backend in (first, second))
    assert a is b and a.images[0].pixels.shape == (4, 6, 3) and int(a.images[0].pixels[0, 0, 0]) == 128
    assert [worker._pending_bytes for worker in run.bus.workers] == [0, 0]


def test_use_table_logs_a_one_column_table_named_as_composer_does(conversions, logbus_dir):
    recorder = GatedRecorder()
    recorder.gate.set()
    logger = LogBusLogger(backends=[recorder])
    logger.log_images([np.zeros((3, 2, 2), np.float32), np.ones((3, 4, 5), np.float32)], name="single",
                      use_table=True)
    assert logger.bus.close(timeout=30)
    [table] = recorder.of_type(Table)
    assert (table.key, table.columns, len(table.rows)) == ("single Table", ["single"], 2)
    assert [row[0].pixels.shape for row in table.rows] == [(2, 2, 3), (4, 5, 3)]
    assert conversions and threading.main_thread().name not in conversions


def test_a_cuda_image_costs_the_caller_no_sync(logbus_dir):
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA: the call must not synchronise with the GPU (no GPU here)")
    images = torch.rand(4, 3, 16, 16, device="cuda")
    masks = (torch.arange(4 * 16 * 16, device="cuda").reshape(4, 16, 16) % 5)
    expected = images_to_uint8_reference(images).cpu().numpy()
    recorder = GatedRecorder()
    recorder.gate.set()
    run = logbus.start_run("cuda-images", backends=[recorder])
    torch.cuda.set_sync_debug_mode("error")  # any synchronising call on this thread raises
    try:
        run.log_images("inputs", images, step=0, masks={"truth": masks})
        images.zero_()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert run.finish(timeout=60)
    [record] = recorder.of_type(Images)
    for i, image in enumerate(record.images):
        np.testing.assert_array_equal(image.pixels, expected[i])
        np.testing.assert_array_equal(image.masks["truth"].data, masks[i].cpu().numpy())


def test_a_conversion_that_fails_on_the_writer_drops_those_images_and_nothing_else(logbus_dir, caplog):
    """What only the data can tell (here a NaN in a float mask, an id below 0 once cast; on CUDA any
    negative id) is found on the writer: those images are dropped with a warning, the rest goes on."""
    recorder = GatedRecorder()
    recorder.gate.set()
    run = logbus.start_run("bad-mask", backends=[recorder])
    run.log_images("inputs", torch.rand(1, 3, 2, 2), step=0, masks={"pred": torch.full((2, 2), float("nan"))})
    run.log_images("inputs", torch.rand(1, 3, 2, 2), step=1)
    run.log({"loss": 1.0}, step=1)
    assert run.finish(timeout=30)
    assert [record.step for record in recorder.of_type(Images)] == [1]
    stats = run.bus.stats()["backends"]["GatedRecorder"]
    assert (stats["dropped"], stats["failures"]) == (1, 0)
    assert "a deferred Images for backend 'GatedRecorder' was not delivered: ValueError: mask: class ids" in caplog.text
