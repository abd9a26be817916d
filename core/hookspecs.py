"""The hooks a logbus plugin can implement and the contracts of what it registers. This module is the
plugin author's reference.

A plugin is a module (or object) with functions decorated by ``logbus.hookimpl`` whose names match the
specifications below. Built-in plugins (``logbus.plugins.*``) use exactly the same hooks as
third-party ones, which are found through the ``logbus`` entry-point group::

    # pyproject.toml of your package
    [project.entry-points.logbus]
    my_backend = "my_package.logbus_plugin"

Registration uses the ``register(...)`` callback style, so the host, not the plugin, owns names,
collisions and provenance (which distribution registered what).

What a factory returns is described by ``typing.Protocol`` classes, whose docstrings are the contract:
``Backend`` and ``Extractor`` hold the members every one must have, ``BackendCapabilities`` and
``ExtractorCapabilities`` those it may have (logbus looks each up when it needs it, and a missing one
means "not supported"; Python's typing has no optional protocol members). A plugin is checked
against the required members when it registers, and again when its factory returns an object.
"""

from __future__ import annotations

import inspect
from typing import TYPE_CHECKING, Any, Callable, Collection, Protocol, Sequence

import pluggy

if TYPE_CHECKING:  # annotations only: ``import logbus`` must not import numpy or torch
    import numpy as np
    import torch

    from logbus.records import Record, RunFinished

__all__ = [
    "hookimpl", "register_backends", "register_extractors",
    "Backend", "BackendCapabilities", "Extractor", "ExtractorCapabilities",
    "protocol_members", "missing_members",
]

PROJECT_NAME = "logbus"

_hookspec = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)


# -- the hooks -------------------------------------------------------------------------------------


@_hookspec
def register_backends(register: Callable[..., None]) -> None:
    """Register logger backends (where records go: W&B, a folder, TensorBoard, ...).

    Call ``register(name, factory, *, description="")`` once per backend. ``name`` is what users pass in
    ``backends=[...]``; ``factory(**options)`` is called on the user's thread with every option they
    give and returns a ``Backend`` (required ``log`` and ``close``), with any of the
    ``BackendCapabilities`` it has. A factory that is a class is checked here: one without a required
    method fails the plugin, which is named in a warning and skipped (``LOGBUS_STRICT=1``: raised).

    :param register: the host's callback. Registering a name twice is an error naming both plugins.
    """


@_hookspec
def register_extractors(register: Callable[..., None]) -> None:
    """Register sample extractors (how a batch of model inputs/outputs becomes table rows).

    Call ``register(name, factory, *, description="")`` once per extractor; ``factory(**options)``
    gets the keyword options of ``SampleLogger``/``run.samples`` that are not pipeline options and
    returns an ``Extractor`` (required ``columns``, ``check``, ``device_stage``, ``host_stage``), with
    any of the ``ExtractorCapabilities`` it has. A factory that is a class is checked here, as for
    backends.

    :param register: the host's callback. Registering a name twice is an error naming both plugins.
    """


# -- the contracts ---------------------------------------------------------------------------------


class Backend(Protocol):
    """Where records go. The bus gives each backend its own writer thread and queue, so a slow or hung
    backend holds up only itself, never training or the other backends.

    The factory runs on the user's thread: check options there and raise errors that name the option.
    ``log`` and ``close`` run on the backend's writer thread, one call at a time.
    """

    def log(self, record: Record) -> None:
        """Called on the backend's writer thread, in emit order, with each record whose type it takes:
        ``RunStarted``, ``Metrics`` and ``Hyperparameters`` always; ``Table``, ``Images`` and
        ``Artifact`` only if listed in ``supports``. Records arrive validated, with secrets redacted;
        metric values may be tensors (``logbus.records.as_float`` reads them). An image cell's
        ``Image.path`` names a file that logbus owns and never changes (a caller's own file is read once
        by the first backend writer to reach the record and copied, named by its content hash,
        ``Image.digest``; a sample pipeline's are its own): read or copy it here, never keep the path,
        as it may be deleted once every backend is done with the record.

        An exception is caught by the bus, reported once and counted; after ``failure_limit``
        consecutive failures (or one on ``RunStarted``) the backend is switched off. It never reaches
        the training loop.
        """

    def close(self, finish: RunFinished) -> None:
        """Called once, last, on the writer thread, after every record queued for this backend, with
        ``RunFinished`` (``exit_code`` is not 0 if training failed, ``reason`` says why). The bus waits
        for it until ``close_timeout``; an exception is reported and counted.
        """


class BackendCapabilities(Protocol):
    """What a ``Backend`` may also have. Each is looked up when needed; without it the backend simply
    lacks that capability (no base class, no stubs that raise)."""

    @property
    def name(self) -> str:
        """The backend's name in ``bus.backends``, stats and thread names when the object itself is
        passed in ``backends=[...]`` (a registered backend is named by its registered name). Read once,
        when the bus is built; default: the class name."""

    @property
    def supports(self) -> Collection[type]:
        """Record types beyond ``RunStarted``, ``Metrics`` and ``Hyperparameters`` that the backend
        wants (``Table``, ``Images``, ``Artifact`` of ``logbus.records``, or a ``Record`` subclass of
        the backend's own, as the W&B backend's ``UserLog``); others are not delivered to it. Read
        once, when the bus is built."""

    @property
    def rank_zero_only(self) -> bool:
        """``True`` where the backend keeps one run for all the ranks of a multi-process run, written by
        rank 0 (W&B and TensorBoard by default, as in Composer): ``SampleLogger`` gathers every rank's
        sample tables to rank 0 for it, one collective per table. ``False`` or absent: the backend keeps
        what its own rank logs (the local store writes a folder per rank), and gets that rank's tables,
        with nothing exchanged between ranks. Read by ``SampleLogger`` when the run starts and at each
        table it logs."""

    @property
    def needs_image_files(self) -> bool:
        """Whether the backend reads the encoded file (``records.Image.path``) of sample-table images.
        ``True`` or absent (the safe default for a backend that does not say): the sample pipeline
        encodes a PNG file per image in its scratch folder, and image cells arrive as
        ``Image(path=...)``. ``False`` (the local store, TensorBoard): a pipeline whose buses have
        only such backends makes no file; its image cells arrive as ``Image(pixels=..., digest=...)``
        (uint8 ``[H, W, C]`` and its ``logbus.files.content_hash``), masks as class-id arrays.
        Read when the pipeline is joined to its buses (``place_scratch``), before the first batch."""

    def scratch_folder(self) -> str:
        """Where a sample pipeline on this backend's bus keeps the image files it encodes for it (where
        ``needs_image_files``): a folder on the filesystem the backend stores runs on, so that it can
        hard-link a file into its run instead of copying it. Absent: the pipeline's own folder in
        ``/dev/shm`` (or the temporary folder). Called once, before the first batch (``place_scratch``)."""

    @property
    def run_dir(self) -> str | None:
        """The folder the run is written to, if any; ``logbus demo`` prints it after the run."""

    def flush(self) -> None:
        """Called on the writer thread when the bus is flushed (Composer's ``fit_end`` and ``close``,
        ``Run.flush``), after every record emitted before was delivered. An exception counts as a
        failure of ``log``."""

    def download_file(self, remote_file_name: str, destination: str, overwrite: bool = False,
                      progress_bar: bool = True) -> None:
        """Copies a file uploaded earlier (an ``Artifact``) to ``destination``, for backends that can
        give files back: Composer loads checkpoints through it (``LogBusLogger.download_file`` asks
        the first backend that has it). Called on the caller's thread, while the writer thread may be
        running; exceptions reach the caller (``FileNotFoundError`` when there is no such file,
        ``FileExistsError`` when ``destination`` exists and ``overwrite`` is False)."""


class Extractor(Protocol):
    """Turns eval (micro)batches into table rows, in stages that never make training wait: ``check``
    on the training thread, then ``device_stage`` and ``host_stage`` on the sample pipeline's worker
    thread (one at a time, so they need no locks of their own).

    Keep the module that registers it light (``logbus plugins`` imports every plugin module): import
    torch in the factory or in the extractor's own module.
    """

    @property
    def columns(self) -> Sequence[str]:
        """The table's column names; every row that ``host_stage`` returns has one cell per column, in
        this order. A list or tuple, read when a pass ends."""

    def check(self, inputs: Any, targets: Any, outputs: Any) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Called on the training thread for every offered batch, with the batch's inputs and targets
        and the model's outputs as the user or Composer has them.

        Validate shapes and dtypes from metadata only (reading a value would wait on the GPU); raise
        ``TypeError``/``ValueError`` naming the argument (``"outputs: expected …, got …"``): the error
        reaches the caller. Return the three tensors to keep (detached), each with the batch as its
        first dimension; the pipeline selects samples from all three along it and takes the batch
        size and device from the third. A tensor the rows do not need can be an empty ``[N, 0]`` one.
        """

    def device_stage(self, inputs: torch.Tensor, targets: torch.Tensor,
                     outputs: torch.Tensor) -> dict[str, torch.Tensor]:
        """Called on the pipeline's worker with the chosen samples of what ``check`` returned, on their
        device (on CUDA inside a side stream that has waited for the batch): batched tensor operations
        only, no host copies and no syncs.

        Return named fields, each with the batch as its first dimension and a dtype numpy can hold
        (not bfloat16). ``sample_id`` and ``_score`` are the pipeline's. A ``loss`` (or ``confidence``)
        field lets ``policy="hardest"`` rank samples; a ``truth`` field (class ids), with
        ``has_class_per_sample`` and ``num_classes``, allows ``policy="per_class"``. An exception loses
        this batch's samples (reported once, counted), never training.
        """

    def host_stage(self, fields: dict[str, np.ndarray],
                   encode: Callable[[np.ndarray], Any]) -> list[list[Any]]:
        """Called on the pipeline's worker with the fields of ``device_stage`` as numpy arrays, plus
        ``fields["sample_id"]`` (int64). The arrays may be views of a reused pinned buffer, valid only
        during this call: copy what a row keeps.

        Return one row per sample, in ``sample_id`` order, each a list with one cell per column
        (numbers, strings, None or images). ``encode(uint8 [H, W, C])`` hands an image to the encoder
        pool and returns a handle at once; put ``logbus.samples.PendingImage(handle)`` in the
        row. An exception loses this batch's samples (reported once, counted), never training.
        """


class ExtractorCapabilities(Protocol):
    """What an ``Extractor`` may also have; each is read with a default when it is missing."""

    @property
    def name(self) -> str:
        """The extractor's name in error messages; default: the class name."""

    @property
    def has_class_per_sample(self) -> bool:
        """True if ``device_stage`` returns a ``truth`` field of one class id per sample, which
        ``policy="per_class"`` needs; default False."""

    @property
    def num_classes(self) -> int | None:
        """The number of classes, which ``policy="per_class"`` needs (an int >= 1); default None."""

    def host_part(self) -> Any:
        """What the sample pipeline's worker process runs ``host_stage`` on, pickled: an object with this
        extractor's ``host_stage``, from a module that imports only what the host stage needs (numpy),
        so that the worker never imports torch (seconds of CPU at every start). Default: the extractor
        itself (its module's imports are paid there)."""


# -- checking an object against a contract ---------------------------------------------------------


def protocol_members(protocol: type) -> dict[str, bool]:
    """The members ``protocol`` declares itself, in order: name -> True for a method, False for an
    attribute (declared as a property)."""
    return {name: not isinstance(value, property) for name, value in vars(protocol).items()
            if not name.startswith("_") and (inspect.isfunction(value) or isinstance(value, property))}


def missing_members(candidate: object, protocol: type) -> list[str]:
    """The members of ``protocol`` that ``candidate`` lacks: methods as ``name()``, attributes as
    ``name``. For a class (a factory not yet called) only methods are checked: attributes are often
    set in ``__init__``, so they can be seen only on an object."""
    missing = []
    for name, is_method in protocol_members(protocol).items():
        if is_method and not callable(getattr(candidate, name, None)):
            missing.append(f"{name}()")
        elif not is_method and not inspect.isclass(candidate) and not hasattr(candidate, name):
            missing.append(name)
    return missing
