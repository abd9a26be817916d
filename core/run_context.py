"""The same bus for a plain PyTorch loop, without Composer::

    with logbus.start_run("digits-cnn", backends=["local", "wandb"], config={"lr": 1e-3}) as run:
        for step, batch in enumerate(loader):
            ...
            run.log({"loss": loss}, step=step)

Leaving the block drains and closes every backend; an exception inside it marks the run failed.
"""

from __future__ import annotations

import functools
from typing import Any, Mapping, Sequence

from logbus.bus import BUS_OPTIONS, Bus
from logbus.options import REQUIRED, Option, Options
from logbus.records import Artifact, Hyperparameters, Metrics, RunStarted, Table, redact_secrets
from logbus.samples import (
    SAMPLING_OPTIONS,
    SamplePipeline,
    claim_label,
    cleanup_within_close,
    images_record,
    pipeline_for,
    place_scratch,
    split_options,
)

START_RUN_OPTIONS: Options = Options(
    Option("name", REQUIRED, "run name: the W&B run name, the local folder `$LOGBUS_DIR/<name>`, the TensorBoard run"),
    Option("backends", ("local",), "backend names (`logbus plugins` lists them), `(name, options)` pairs (every option "
           "goes to the backend, `name` included) or backend objects"),
    Option("config", None, "hyperparameters logged when the run starts: a mapping, a dataclass or an "
           "`argparse.Namespace` (secret-looking keys redacted at every depth)"),
    Option("rank", 0, "this process's rank; backends with `rank_zero_only` log on rank 0 only", kind="int", minimum=0),
    Option("world_size", 1, "number of processes; above 1 the local backend, and backends with `rank_zero_only` "
           "`False`, write `<name>-rank<rank>`", kind="int", minimum=1),
    *BUS_OPTIONS.values(),
)
_DEFAULTS = START_RUN_OPTIONS.defaults
_SAMPLING = SAMPLING_OPTIONS.defaults


class SampleStream:
    """Prediction samples in a plain loop: ``add`` each eval batch, ``log`` at the end of the pass.

    The same pipeline as Composer's ``SampleLogger``: ``add`` only checks shapes and enqueues."""

    def __init__(self, bus: Bus, pipeline: SamplePipeline):
        self.bus, self.pipeline = bus, pipeline
        self._labels: set[str] = set()  # labels this stream holds the table key of (see _claim)
        place_scratch([bus], pipeline)  # before the first batch: encoded files where the local backend links them
        bus.on_close(functools.partial(cleanup_within_close, bus, pipeline))

    def _claim(self, label: Any) -> None:
        # One stream per table key: another stream of this run already logging `{key_prefix}/{label}`
        # is refused at this stream's first use of the label (logbus.samples._stream_keys).
        if label not in self._labels and isinstance(label, str):
            claim_label(self.bus, self.pipeline, label)
            self._labels.add(label)

    def add(self, inputs: Any, targets: Any, outputs: Any, *, label: str = "eval") -> None:
        """Hands one eval batch to the pipeline. Raises ``ValueError`` at the first use of a
        ``label`` whose table key (``{key_prefix}/{label}``) another stream of this run logs."""
        self._claim(label)
        self.pipeline.submit(inputs, targets, outputs, label=label)

    def log(self, label: str = "eval", step: int | None = None) -> None:
        """Logs the table ``{key_prefix}/{label}`` (``samples/{label}``) for the pass so far, in order
        with everything else."""
        self._claim(label)
        self.bus.emit(self.pipeline.table_record(label, step=step))


class Run:
    """A logging run on its own bus. All methods validate and enqueue, then return."""

    def __init__(self, name: str, *, backends: Sequence[Any] = _DEFAULTS["backends"],
                 config: Mapping[str, Any] | Any | None = _DEFAULTS["config"], rank: int = _DEFAULTS["rank"],
                 world_size: int = _DEFAULTS["world_size"], **bus_options: Any):
        START_RUN_OPTIONS.check_names(bus_options, "logbus.start_run")
        START_RUN_OPTIONS.check(rank=rank, world_size=world_size)
        if rank >= world_size:
            raise ValueError(f"rank: expected 0..{world_size - 1} (below world_size {world_size}), got {rank}")
        # As wandb.init(config=...): a mapping, or an argparse.Namespace or dataclass, taken as the dict
        # of its attributes (redaction walks objects into dicts).
        values = redact_secrets(config) if config is not None else {}
        if not isinstance(values, Mapping):
            raise TypeError(f"config: expected a mapping, a dataclass or an object with attributes "
                            f"(argparse.Namespace), got {type(config).__name__}")
        start = RunStarted(run_name=name, config=dict(values), rank=rank, world_size=world_size)
        self.name = name
        self.bus = Bus(backends, **bus_options)
        self.bus.exit_code_if_interrupted = 1  # until finish() is called, an exit means the loop died
        self.bus.emit(start)

    def log(self, metrics: Mapping[str, Any], step: int | None = None) -> None:
        """Logs scalars at ``step``.

        :param metrics: name -> number or one-element tensor/array. Tensors are snapshotted at the
            call (a CPU one read, a CUDA one copied on its device without a host sync and read on
            the writer thread), so changing one in place afterwards does not change what was logged.
        :param step: the step, or ``None`` for none.
        """
        self.bus.emit(Metrics(metrics, step))

    def log_hyperparameters(self, hyperparameters: Mapping[str, Any]) -> None:
        self.bus.emit(Hyperparameters(hyperparameters))

    def log_table(self, key: str, columns: Sequence[str], rows: Sequence[Sequence[Any]], step: int | None = None) -> None:
        self.bus.emit(Table(key, columns, rows, step))

    def log_images(self, key: str, images: Any, step: int | None = None, *, channels_last: bool = False,
                   masks: Mapping[str, Any] | None = None, mask_class_labels: Mapping[int, str] | None = None) -> None:
        """Logs images under ``key`` as Composer's ``log_images`` takes them.

        Shapes are checked and the data copied on its own device at the call (no host sync); the
        conversion to uint8 and the copy to the host happen on a backend's writer thread.
        """
        self.bus.emit(images_record(key, images, step, channels_last=channels_last, masks=masks,
                                    mask_class_labels=mask_class_labels))

    def log_artifact(self, path: str, name: str, *, type: str = "file", aliases: Sequence[str] = ()) -> None:
        self.bus.emit(Artifact(path=path, name=name, type=type, aliases=aliases))  # Artifact rejects a bare str

    def samples(self, extractor: Any = _SAMPLING["extractor"], num_samples: int | None = _SAMPLING["num_samples"],
                policy: str = _SAMPLING["policy"], **options: Any) -> SampleStream:
        """A sample stream on this run's bus; ``options`` are the extractor's and the pipeline's
        (see ``logbus.composer.SampleLogger``). Its tables are ``{key_prefix}/{label}``: a label
        whose key another stream of this run logs raises ``ValueError`` at its first ``add`` or
        ``log`` (both would log the same key at the same step, and W&B keeps only the last)."""
        extractor_options, pipeline_options = split_options(options)
        return SampleStream(self.bus, pipeline_for(extractor, extractor_options, num_samples=num_samples,
                                                   policy=policy, **pipeline_options))

    def flush(self, timeout: float | None = None) -> bool:
        return self.bus.flush(timeout)

    def finish(self, exit_code: int = 0, *, timeout: float | None = None) -> bool:
        return self.bus.close(exit_code, reason=None if exit_code == 0 else "failed", timeout=timeout)

    def __enter__(self) -> "Run":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.finish(0 if exc_type is None else 1)


def start_run(name: str, **options: Any) -> Run:
    """Starts a run; use it as a context manager or call ``finish()``."""
    return Run(name, **options)
