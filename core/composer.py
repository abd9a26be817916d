"""Composer adapter: a ``LoggerDestination`` that puts everything on the bus, and a drop-in
``WandBLogger`` with exactly the signature of ``composer.loggers.WandBLogger``.

Migrating is one line::

    - from composer.loggers import WandBLogger
    + from logbus.composer import WandBLogger

Every method here runs on the training thread and only validates and enqueues.
"""

from __future__ import annotations

import os
import pathlib
import shutil
import sys
import tempfile
import time
import warnings
from typing import Any, Optional, Sequence, Union

import numpy as np
import torch
from composer.core import State
from composer.loggers import Logger, LoggerDestination
from composer.utils import dist

from logbus.bus import Bus
from logbus.images import images_record
from logbus.naming import check_key, wandb_artifact_name
from logbus.records import Artifact, Hyperparameters, Metrics, RunStarted, Table

__all__ = ["LogBusLogger", "WandBLogger", "SampleLogger", "artifact_type_for"]

_MODEL_EXTENSIONS = {"pt", "pth", "ckpt", "safetensors", "bin"}


def artifact_type_for(file_name: str) -> str:
    """Artifact type from the extension, as Composer does: checkpoints are ``model``."""
    extension = file_name.rsplit(".", 1)[-1].lower() if "." in file_name else "file"
    return "model" if extension in _MODEL_EXTENSIONS else extension


class LogBusLogger(LoggerDestination):
    """Sends Composer's logging calls to any set of logbus backends, off the training thread.

    :param backends: backend names (``logbus plugins`` lists them), ``(name, options)`` pairs or
        backend objects. Default: the local run folder.
    :param max_pending_bytes: per-backend budget for queued images/tables before they are dropped.
    :param failure_limit: consecutive failures after which a backend is switched off.
    :param close_timeout: seconds to wait for backends to drain at the end of training.
    :param log_stats: log the bus's own ``logbus/*`` counters at the end of ``fit``.
    """

    def __init__(self, backends: Sequence[Any] = ("local",), *, max_pending_bytes: int = 256 * 2**20,
                 failure_limit: int = 5, close_timeout: float = 60.0, log_stats: bool = True):
        self.bus = Bus(backends, max_pending_bytes=max_pending_bytes, failure_limit=failure_limit,
                       close_timeout=close_timeout)
        self.log_stats = log_stats
        # Composer may delete or rotate a checkpoint right after upload_file returns; files are
        # hard-linked (or copied) here first so the writer thread uploads what was asked for.
        self._staging: tempfile.TemporaryDirectory | None = None
        self._deadline: float | None = None
        self._state: State | None = None

    def _step(self, step: Optional[int]) -> Optional[int]:
        # A step-less wandb.log commits wandb's current row, and wandb then silently drops everything
        # logged later at that same step (Composer logs the loss after the algorithm traces of the
        # batch): pin step-less calls to the current batch, the step Composer's Logger gives metrics.
        if step is None and self._state is not None:
            return int(self._state.timestamp.batch)
        return step

    # -- Composer events -------------------------------------------------------------------------
    def init(self, state: State, logger: Logger) -> None:
        del logger
        self._state = state
        self.bus.emit(RunStarted(run_name=state.run_name or "composer-run", rank=dist.get_global_rank(),
                                 world_size=dist.get_world_size()))

    def fit_start(self, state: State, logger: Logger) -> None:
        self.bus.exit_code_if_interrupted = 1  # if the process dies inside fit, the run failed

    def fit_end(self, state: State, logger: Logger) -> None:
        self.bus.exit_code_if_interrupted = 0
        if self.log_stats:
            self.bus.emit(Metrics(self.bus.stats_metrics(), step=int(state.timestamp.batch)))
        self._deadline = time.monotonic() + self.bus.close_timeout
        self.bus.flush(self._time_left())

    def close(self, state: State, logger: Logger) -> None:
        self.bus.flush(self._time_left())

    def post_close(self) -> None:
        failed = sys.exc_info() != (None, None, None) or self.bus.exit_code_if_interrupted
        # The flushes may have spent the deadline on a hung backend; the healthy ones still get a grace
        # period to finish their runs (wandb.finish), so the end of training is bounded by
        # close_timeout + min(close_timeout, 10 s) in all.
        grace = min(self.bus.close_timeout, 10.0)
        self.bus.close(1 if failed else 0, reason="training raised" if failed else None,
                       timeout=max(self._time_left(), grace))
        if self._staging is not None:
            self._staging.cleanup()

    def _time_left(self) -> float:
        """fit_end's and close's flushes and post_close's close share one close_timeout: a hung
        backend holds the end of training about that long in all, not once per event."""
        if self._deadline is None:
            self._deadline = time.monotonic() + self.bus.close_timeout
        return max(0.0, self._deadline - time.monotonic())

    # -- LoggerDestination -----------------------------------------------------------------------
    def log_hyperparameters(self, hyperparameters: dict[str, Any]) -> None:
        self.bus.emit(Hyperparameters(hyperparameters))

    def log_metrics(self, metrics: dict[str, Any], step: Optional[int] = None) -> None:
        self.bus.emit(Metrics(metrics, step if step is not None else self._step(step)))

    def log_traces(self, traces: dict[str, Any]) -> None:
        # Traces are algorithm events (bools, counts); numbers are kept as metrics, the rest skipped.
        numeric = {f"traces/{k}": float(v) for k, v in traces.items() if isinstance(v, (bool, int, float))}
        if numeric:
            self.bus.emit(Metrics(numeric, self._step(None)))

    def log_table(self, columns: list[str], rows: list[list[Any]], name: str = "Table",
                  step: Optional[int] = None) -> None:
        check_key(name, "name")  # Composer calls the key `name`: say so in the error
        self.bus.emit(Table(name, columns, rows, self._step(step)))

    def log_images(
        self,
        images: Union[np.ndarray, torch.Tensor, Sequence[Union[np.ndarray, torch.Tensor]]],
        name: str = "Images",
        channels_last: bool = False,
        step: Optional[int] = None,
        masks: Optional[dict[str, Union[np.ndarray, torch.Tensor, Sequence[Union[np.ndarray, torch.Tensor]]]]] = None,
        mask_class_labels: Optional[dict[int, str]] = None,
        use_table: bool = False,
    ) -> None:
        """Checks and snapshots the images on their device here; they are converted to uint8 and
        copied to the host on a backend's writer thread, so a CUDA image costs no sync here."""
        check_key(name, "name")
        self.bus.emit(images_record(name, images, self._step(step), use_table=use_table, channels_last=channels_last,
                                    masks=masks, mask_class_labels=mask_class_labels))

    def can_upload_files(self) -> bool:
        return any(Artifact in getattr(backend, "supports", ()) for backend in self.bus.backends.values())

    def upload_file(self, state: State, remote_file_name: str, file_path: pathlib.Path, *, overwrite: bool) -> None:
        del overwrite
        name = wandb_artifact_name(remote_file_name)
        if name != remote_file_name:
            warnings.warn(f"Artifact names allow only letters, digits, '.', '-' and '_'. The file "
                          f"'{remote_file_name}' will be stored as '{name}'.", stacklevel=2)
        timestamp = state.timestamp
        metadata = {f"timestamp/{k}": v for k, v in timestamp.state_dict().items()}
        if state.dataloader is not state.train_dataloader:  # uploaded during eval, as Composer records
            metadata.update({f"eval_timestamp/{k}": v for k, v in state.eval_timestamp.state_dict().items()})
        self.bus.emit(Artifact(path=self._stage(file_path), name=name, type=artifact_type_for(name),
                               aliases=["latest", f"ep{int(timestamp.epoch)}-ba{int(timestamp.batch)}"],
                               metadata=metadata))

    def download_file(self, remote_file_name: str, destination: str, overwrite: bool = False,
                      progress_bar: bool = True) -> None:
        for backend in self.bus.backends.values():
            download = getattr(backend, "download_file", None)
            if download is not None:
                return download(remote_file_name, destination, overwrite=overwrite, progress_bar=progress_bar)
        raise NotImplementedError(f"download_file: none of the backends {list(self.bus.backends)} can give files back")

    def _stage(self, file_path: Union[str, os.PathLike]) -> str:
        source = os.fspath(file_path)
        if not os.path.isfile(source):
            raise ValueError(f"file_path: expected an existing file, got {source!r}")
        if self._staging is None:
            self._staging = tempfile.TemporaryDirectory(prefix="logbus-upload-")
        # One folder per upload, so the staged file keeps its own name: backends (wandb's add_file)
        # store it under that name, as Composer's WandBLogger does.
        folder = os.path.join(self._staging.name, str(len(os.listdir(self._staging.name))))
        os.mkdir(folder)
        target = os.path.join(folder, os.path.basename(source))
        try:
            os.link(source, target)  # O(1), and survives Composer deleting the original
        except OSError:
            shutil.copyfile(source, target)
        return target


class WandBLogger(LogBusLogger):
    """Drop-in for ``composer.loggers.WandBLogger`` (same arguments, defaults and meanings) that works
    on current wandb and never blocks the training loop.

    Args:
        project (str, optional): WandB project name.
        group (str, optional): WandB group name.
        name (str, optional): WandB run name. If not specified, the ``State.run_name`` will be used.
        entity (str, optional): WandB entity name.
        tags (list[str], optional): WandB tags.
        log_artifacts (bool, optional): Whether to log artifacts (Default: ``False``).
        rank_zero_only (bool, optional): Whether to log only on the rank-zero process (default: ``True``).
        init_kwargs (dict[str, Any], optional): Any additional init kwargs ``wandb.init``.
    """

    def __init__(
        self,
        project: Optional[str] = None,
        group: Optional[str] = None,
        name: Optional[str] = None,
        entity: Optional[str] = None,
        tags: Optional[list[str]] = None,
        log_artifacts: bool = False,
        rank_zero_only: bool = True,
        init_kwargs: Optional[dict[str, Any]] = None,
    ) -> None:
        from logbus.plugins.wandb import WandBBackend

        self.wandb_backend = WandBBackend(project=project, group=group, name=name, entity=entity, tags=tags,
                                          log_artifacts=log_artifacts, rank_zero_only=rank_zero_only,
                                          init_kwargs=init_kwargs)
        super().__init__(backends=[self.wandb_backend])

    @property
    def run_dir(self) -> Optional[str]:
        return self.wandb_backend.run_dir

    @property
    def entity(self) -> Optional[str]:
        return self.wandb_backend.entity

    @property
    def project(self) -> Optional[str]:
        return self.wandb_backend.project

    def can_upload_files(self) -> bool:
        return True


from logbus.sample_logger import SampleLogger  # noqa: E402  (re-exported: logbus.composer.SampleLogger)
