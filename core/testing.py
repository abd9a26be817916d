"""``logbus.testing``: a pytest plugin for people who write logbus plugins (and for logbus itself).

Installed with logbus and registered under pytest's ``pytest11`` entry-point group as
``logbus.testing``, so its fixtures are available in any pytest run where logbus is installed. A
conftest may also ask for it by name, which works with or without autoloading::

    # tests/conftest.py
    pytest_plugins = ["logbus.testing"]

Turn it off for one run with ``pytest -p no:logbus.testing``.

Fixtures (each documented below, and listed by ``pytest --fixtures``):

- ``recording_backend``: a real in-memory backend that keeps every record it receives, in order.
- ``register_plugin``: registers your plugin module or object with the process-wide plugin host for
  one test (on a host without other installed third-party plugins), then forgets it.
- ``logbus_run``: starts ``logbus.start_run`` runs whose backends include ``recording_backend``;
  closed at teardown.
- ``tiny_composer_run``: builds and fits a tiny real Composer ``Trainer`` on the digits data that
  ships with logbus (CPU, a few seconds).

Autoloaded plugins are imported in every pytest run of every project that has logbus installed, so
this module imports nothing heavy: no torch, Composer, wandb or numpy until a fixture is used.
"""

from __future__ import annotations

import os
import threading
from typing import Any, Callable, Iterable, Sequence

import pytest

__all__ = ["RecordingBackend", "recording_backend", "register_plugin", "logbus_run", "tiny_composer_run"]


class RecordingBackend:
    """A backend that keeps every record it receives, in order, in ``records``.

    It takes every record type (tables, images, artifacts too) and reads the bytes of every image
    and artifact file when it receives them (``files``), because the sample pipeline deletes its
    encoded images once the run has closed. ``finished`` is the ``RunFinished`` record once the bus
    closed it, else ``None``.
    """

    name = "recording"

    def __init__(self, *, keep_files: bool = True):
        self.records: list[Any] = []
        self.files: dict[str, bytes] = {}
        self.finished: Any = None
        self.keep_files = keep_files
        self._lock = threading.Lock()

    @property
    def supports(self) -> frozenset:
        # Imported here, not at module level: ``import logbus.testing`` must stay light.
        from logbus.records import Artifact, Images, Table

        return frozenset({Table, Images, Artifact})

    # -- the backend contract --------------------------------------------------------------------
    def log(self, record: Any) -> None:
        if self.keep_files:
            for path in _file_paths(record):
                if path not in self.files and os.path.isfile(path):
                    with open(path, "rb") as file:
                        self.files[path] = file.read()
        with self._lock:
            self.records.append(record)

    def close(self, finish: Any) -> None:
        with self._lock:
            self.finished = finish

    # -- reading it back -------------------------------------------------------------------------
    def of_type(self, record_type: type | str) -> list[Any]:
        """The records of one type (a class from ``logbus.records`` or its name), in order."""
        with self._lock:
            records = list(self.records)
        if isinstance(record_type, str):
            return [r for r in records if type(r).__name__ == record_type]
        return [r for r in records if isinstance(r, record_type)]

    def types(self) -> list[str]:
        """The type name of every record received, in order (``RunFinished`` is not a record here:
        see ``finished``)."""
        with self._lock:
            return [type(r).__name__ for r in self.records]

    @property
    def started(self) -> Any:
        """The ``RunStarted`` record (name, config, rank), or ``None``."""
        started = self.of_type("RunStarted")
        return started[0] if started else None

    def metrics(self, name: str | None = None) -> list[tuple[int | None, Any]]:
        """Without ``name``: ``[(step, {name: float})]``, one item per ``Metrics`` record. With ``name``:
        the series ``[(step, float)]`` of that metric."""
        from logbus.records import as_float

        logged = [(m.step, {k: as_float(v) for k, v in m.values.items()}) for m in self.of_type("Metrics")]
        if name is None:
            return logged
        return [(step, values[name]) for step, values in logged if name in values]

    def hyperparameters(self) -> dict[str, Any]:
        """Every ``Hyperparameters`` record merged, later values winning (secrets already redacted)."""
        merged: dict[str, Any] = {}
        for record in self.of_type("Hyperparameters"):
            merged.update(record.values)
        return merged

    def tables(self, key: str | None = None) -> list[Any]:
        """The ``Table`` records (``key``, ``columns``, ``rows``, ``step``), only those under ``key`` if
        given. Sample tables arrive here resolved: image cells are ``logbus.records.Image``."""
        return [t for t in self.of_type("Table") if key is None or t.key == key]

    def rows(self, key: str) -> list[dict[str, Any]]:
        """The rows of the last table under ``key`` as ``{column: cell}`` dicts."""
        tables = self.tables(key)
        if not tables:
            raise KeyError(f"no table {key!r} was logged; tables: {sorted({t.key for t in self.tables()})}")
        return [dict(zip(tables[-1].columns, row)) for row in tables[-1].rows]

    def images(self, key: str | None = None) -> list[Any]:
        """The ``Images`` records (Composer's ``log_images``), only those under ``key`` if given."""
        return [i for i in self.of_type("Images") if key is None or i.key == key]

    def artifacts(self) -> list[Any]:
        """The ``Artifact`` records (checkpoints and other files)."""
        return self.of_type("Artifact")

    def file_bytes(self, image_or_path: Any) -> bytes:
        """The bytes of an image cell's (or artifact's) file as it was when this backend received it."""
        path = image_or_path if isinstance(image_or_path, (str, os.PathLike)) else image_or_path.path
        return self.files[os.fspath(path)]


def _file_paths(record: Any) -> Iterable[str]:
    name = type(record).__name__
    if name == "Artifact":
        yield record.path
    elif name == "Images":
        yield from (image.path for image in record.images if image.path)
    elif name == "Table":
        for row in record.rows:
            for cell in row:
                if type(cell).__name__ == "Image" and cell.path:
                    yield cell.path


@pytest.fixture
def recording_backend() -> RecordingBackend:
    """A fresh ``logbus.testing.RecordingBackend`` for this test: a real backend object that keeps
    every record it receives, in order.

    Put it in any ``backends=[...]`` list (``logbus.start_run``, ``LogBusLogger``, ``Bus``) and read
    what arrived once the run has closed: ``.records``, ``.types()``, ``.metrics()`` /
    ``.metrics("loss")``, ``.hyperparameters()``, ``.tables(key)``, ``.rows(key)``, ``.images(key)``,
    ``.artifacts()``, ``.file_bytes(image)``, ``.started`` and ``.finished`` (the ``RunFinished``
    record, with ``exit_code``). ``logbus_run`` and ``tiny_composer_run`` use this same instance.
    """
    return RecordingBackend()


@pytest.fixture
def register_plugin(monkeypatch: pytest.MonkeyPatch) -> Iterable[Callable[..., Any]]:
    """``register_plugin(plugin, name=None)`` registers a plugin (a module or any object with
    ``@logbus.hookimpl`` functions) with the process-wide plugin host for this test, and returns its
    ``PluginInfo`` (``hooks``, ``registers``).

    The first call in a test starts a fresh host holding the built-in plugins only: installed
    third-party plugins are not loaded, so the test does not depend on what else is installed, and
    your own package, if installed with ``pip install -e .``, is not registered twice. A plugin that
    fails to import or register raises its own exception here (as with ``LOGBUS_STRICT=1``) instead of
    being warned about and skipped. Register before you create runs or pipelines that use it. At
    teardown the host is reset (``logbus.bus.reset_plugins()``): the next lookup loads the
    installed plugins again.
    """
    from logbus.bus import _plugin_manager as plugin_manager

    fresh = False

    def register(plugin: object, name: str | None = None) -> Any:
        nonlocal fresh
        if not fresh:
            plugin_manager.reset_plugins()
            with monkeypatch.context() as env:
                env.setenv("LOGBUS_LOAD_PLUGINS", "")  # an empty allowlist: built-ins only
                plugin_manager.get_plugin_host()
            fresh = True
        with monkeypatch.context() as env:
            env.setenv("LOGBUS_STRICT", "1")
            return plugin_manager.get_plugin_host().add_plugin(plugin, name=name)

    yield register
    plugin_manager.reset_plugins()


@pytest.fixture
def logbus_run(recording_backend: RecordingBackend) -> Iterable[Callable[..., Any]]:
    """``logbus_run(name="test-run", *, backends=(), **options)`` starts ``logbus.start_run(name,
    backends=[recording_backend, *backends], **options)`` and returns the ``logbus.Run``.

    ``backends`` are the others to send the same records to: names, ``(name, options)`` pairs or
    backend objects, as in ``start_run`` (your plugin's backend, say). ``options`` are ``start_run``'s
    (``config``, ``rank``, ``world_size``, ``max_pending_bytes``...). Use the run as a context manager
    or call ``run.finish()`` before reading ``recording_backend``: closing drains every backend.
    Runs still open at teardown are finished (exit code 0). Every run of a test shares the one
    ``recording_backend``.
    """
    runs: list[Any] = []

    def start(name: str = "test-run", *, backends: Sequence[Any] = (), **options: Any) -> Any:
        import logbus

        run = logbus.start_run(name, backends=[recording_backend, *backends], **options)
        runs.append(run)
        return run

    yield start
    for run in runs:
        run.finish()  # idempotent: a run the test closed stays as it was


@pytest.fixture
def tiny_composer_run(recording_backend: RecordingBackend) -> Iterable[Callable[..., Any]]:
    """``tiny_composer_run(*, loggers=None, callbacks=(), max_duration="2ba", eval=True, close=True,
    **trainer_options)`` builds a tiny real Composer ``Trainer``, fits it and returns it.

    The model is ``logbus.demo.DigitsCNN`` (a ``ComposerClassifier``, 10 classes) trained with Adam on
    the 8x8 digits that ship with logbus, batches of 16, on the CPU, seeded. ``loggers`` defaults to
    one ``LogBusLogger(backends=[recording_backend])``; pass your own (a ``LogBusLogger`` with your
    backend next to ``recording_backend``, say). With ``eval=True`` the digits' validation set is
    evaluated at the end of ``fit`` (two batches: 32 digits, ``[N, 1, 8, 8]`` floats in [0, 1], int
    labels; ``eval_subset_num_batches=2`` unless given), so a ``SampleLogger`` in ``callbacks`` logs
    ``samples/eval``. ``close=True`` calls ``trainer.close()``
    after ``fit`` (as a training script should), which drains and closes the loggers' backends; it is
    also called if ``fit`` raises. ``trainer_options`` go to ``Trainer`` and override the defaults
    (``model``, ``train_dataloader``, ``eval_dataloader``, ``eval_interval``, ``run_name``...).
    Composer and torch are imported when the fixture is called, not before.
    """
    trainers: list[Any] = []

    def run(*, loggers: Sequence[Any] | None = None, callbacks: Sequence[Any] = (), max_duration: str | int = "2ba",
            eval: bool = True, close: bool = True, **trainer_options: Any) -> Any:
        import torch
        from composer import Trainer
        from composer.models import ComposerClassifier

        from logbus.composer import LogBusLogger
        from logbus.demo import DigitsCNN, digits_loaders

        train_loader, val_loader = digits_loaders(batch_size=16)
        if "model" not in trainer_options:
            torch.manual_seed(0)
            model = ComposerClassifier(DigitsCNN(), num_classes=10)
            trainer_options["model"] = model
            trainer_options.setdefault("optimizers", torch.optim.Adam(model.parameters(), lr=3e-3))
        trainer_options.setdefault("train_dataloader", train_loader)
        if eval:
            trainer_options.setdefault("eval_dataloader", val_loader)
            trainer_options.setdefault("eval_subset_num_batches", 2)
        trainer_options.setdefault("run_name", "tiny-composer-run")
        trainer_options.setdefault("device", "cpu")
        trainer_options.setdefault("progress_bar", False)
        trainer_options.setdefault("seed", 0)
        if loggers is None:
            loggers = [LogBusLogger(backends=[recording_backend])]
        trainer = Trainer(loggers=list(loggers), callbacks=list(callbacks), max_duration=max_duration,
                          **trainer_options)
        trainers.append(trainer)
        if not close:
            trainer.fit()
            return trainer
        try:
            trainer.fit()
        finally:
            trainer.close()
        return trainer

    yield run
    for trainer in trainers:
        trainer.close()  # idempotent in Composer: loggers left open by close=False are closed here
