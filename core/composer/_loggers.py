"""Composer adapter: a ``LoggerDestination`` that puts everything on the bus, and a drop-in
``WandBLogger`` with exactly the signature of ``composer.loggers.WandBLogger``.

Migrating is one line::

    - from composer.loggers import WandBLogger
    + from logbus.composer import WandBLogger

Every method here runs on the training thread and only validates and enqueues; the one exception
is the drop-in's ``init``, which starts the W&B run there as Composer's logger does.
"""

from __future__ import annotations

import os
import pathlib
import sys
import warnings
from typing import Any, Optional, Sequence, Union

import composer.loggers
import numpy as np
import torch
from composer.core import State
from composer.loggers import Logger, LoggerDestination
from composer.utils import dist

from logbus.bus import BUS_OPTIONS, Bus
from logbus.composer._staging import Staging
from logbus.files import check_key, wandb_artifact_name
from logbus.options import Option, Options, names_misspelt_options
from logbus.plugins._backend_common import fallback_run_started
from logbus.records import Artifact, Hyperparameters, Metrics, RunStarted, Table
from logbus.samples import images_record

__all__ = ["LogBusLogger", "WandBLogger", "artifact_type_for"]

LOGBUS_LOGGER_OPTIONS: Options = Options(
    Option("backends", ("local",), "backend names, `(name, options)` pairs or backend objects"),
    BUS_OPTIONS["max_pending_bytes"],
    BUS_OPTIONS["failure_limit"],
    BUS_OPTIONS["close_timeout"].but(doc="seconds to wait for the backends to drain, at each of `fit_end`, `close` "
                                         "and the final close (at most a week); a backend that finishes nothing "
                                         "during one of these waits is abandoned: the later ones skip it until it moves again"),
    Option("log_stats", True, "log the bus's own `logbus/*` counters (delivered, dropped, failures, pending per "
           "backend) at the end of `fit`", kind="bool"),
)
_DEFAULTS = LOGBUS_LOGGER_OPTIONS.defaults

def run_started(state: State) -> RunStarted:
    """The run's start, named as Composer names it; a state without a name (Composer always sets one)
    gets the fallback name every built-in backend uses."""
    return RunStarted(run_name=state.run_name or fallback_run_started().run_name, rank=dist.get_global_rank(),
                      world_size=dist.get_world_size())


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
    :param close_timeout: seconds to wait for backends to drain, at each of ``fit_end``, ``close`` and
        ``post_close`` (the final close); a backend that finishes nothing during one of these waits is
        abandoned, and the later ones skip it.
    :param log_stats: log the bus's own ``logbus/*`` counters at the end of ``fit``.
    """

    @names_misspelt_options("LogBusLogger")
    def __init__(self, backends: Sequence[Any] = _DEFAULTS["backends"], *,
                 max_pending_bytes: int = _DEFAULTS["max_pending_bytes"], failure_limit: int = _DEFAULTS["failure_limit"],
                 close_timeout: float = _DEFAULTS["close_timeout"], log_stats: bool = _DEFAULTS["log_stats"]):
        LOGBUS_LOGGER_OPTIONS.check(log_stats=log_stats)  # the bus checks its own
        self.bus = Bus(backends, max_pending_bytes=max_pending_bytes, failure_limit=failure_limit,
                       close_timeout=close_timeout)
        self.log_stats = log_stats
        # Composer may delete or rotate a checkpoint right after upload_file returns; files are
        # hard-linked first so the writer thread uploads what was asked for (see logbus.composer._staging).
        self._staging = Staging()
        self._state: State | None = None
        self._warned_wandb_tables: set[str] = set()

    def _step(self, step: Optional[int]) -> Optional[int]:
        # Traces come without a step. A step-less wandb.log commits wandb's current row, and wandb then
        # silently drops everything logged later at that same step (Composer logs the loss after the
        # algorithm traces of the batch): pin them to the current batch, the step Composer's Logger
        # gives metrics. Other step-less calls keep None, as Composer's WandBLogger does (a new row).
        if step is None and self._state is not None:
            return int(self._state.timestamp.batch)
        return step

    # -- Composer events -------------------------------------------------------------------------
    def init(self, state: State, logger: Logger) -> None:
        del logger
        self._state = state
        self.bus.emit(run_started(state))

    def fit_start(self, state: State, logger: Logger) -> None:
        self.bus.exit_code_if_interrupted = 1  # if the process dies inside fit, the run failed

    def fit_end(self, state: State, logger: Logger) -> None:
        self.bus.exit_code_if_interrupted = 0
        if self.log_stats:
            self.bus.emit(Metrics(self.bus.stats_metrics(), step=int(state.timestamp.batch)))
        # Each of fit_end, close and post_close waits close_timeout on its own: whatever ran between
        # them (a trainer.eval() after fit) cannot eat the final close's time, so a healthy backend
        # always finishes. A hung one (it finished nothing during a wait) is skipped by the later
        # waits, so it holds the end of training one close_timeout, not three.
        self.bus.flush(self.bus.close_timeout)

    def close(self, state: State, logger: Logger) -> None:
        self.bus.flush(self.bus.close_timeout)

    def post_close(self) -> None:
        failed = sys.exc_info() != (None, None, None) or self.bus.exit_code_if_interrupted
        self.bus.close(1 if failed else 0, reason="training raised" if failed else None,
                       timeout=self.bus.close_timeout)
        self._staging.cleanup()

    # -- LoggerDestination -----------------------------------------------------------------------
    def log_hyperparameters(self, hyperparameters: dict[str, Any]) -> None:
        self.bus.emit(Hyperparameters(hyperparameters))

    def log_metrics(self, metrics: dict[str, Any], step: Optional[int] = None) -> None:
        # Composer's Logger always gives the batch; a direct step-less call is a new row in wandb.
        self.bus.emit(Metrics(metrics, step))

    def log_traces(self, traces: dict[str, Any]) -> None:
        # Traces are algorithm events (bools, counts); numbers are kept as metrics, the rest skipped.
        numeric = {f"traces/{k}": float(v) for k, v in traces.items() if isinstance(v, (bool, int, float))}
        if numeric:
            self.bus.emit(Metrics(numeric, self._step(None)))

    def log_table(self, columns: list[str], rows: list[list[Any]], name: str = "Table",
                  step: Optional[int] = None) -> None:
        check_key(name, "name")  # Composer calls the key `name`: say so in the error
        from logbus.plugins.wandb import UserLog, WandbTableAtCall, has_wandb_cells

        if isinstance(rows, (list, tuple)) and has_wandb_cells(rows):
            # Composer's WandBLogger logs wandb.Table(columns=columns, rows=rows): cells may be wandb
            # media (wandb.Image...), which only a W&B backend can log; it gets the table as Composer's
            # logger would log it, the others cannot store it.
            takers = [n for n, backend in self.bus.backends.items() if UserLog in getattr(backend, "supports", ())]
            if not takers:
                raise TypeError(f"rows: wandb objects (wandb.Image...) in cells need a W&B backend, and this "
                                f"logger has {list(self.bus.backends)}; use logbus.records.Image for every backend")
            others = [n for n in self.bus.backends if n not in takers]
            if others and name not in self._warned_wandb_tables:
                self._warned_wandb_tables.add(name)
                warnings.warn(f"log_table: table {name!r} has wandb objects in its cells and goes to {takers} only, "
                              f"not to {others}; use logbus.records.Image cells for every backend", stacklevel=2)
            self.bus.emit(UserLog({name: WandbTableAtCall.of_rows(columns, rows)}, step,
                                  batch=self._step(None) or 0))
            return
        self.bus.emit(Table(name, columns, rows, step))

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
        self.bus.emit(images_record(name, images, step, use_table=use_table, channels_last=channels_last,
                                    masks=masks, mask_class_labels=mask_class_labels))

    def can_upload_files(self) -> bool:
        return any(Artifact in getattr(backend, "supports", ()) for backend in self.bus.backends.values())

    def upload_file(self, state: State, remote_file_name: str, file_path: pathlib.Path, *, overwrite: bool) -> None:
        del overwrite
        source = os.fspath(file_path)
        if not os.path.isfile(source):
            raise ValueError(f"file_path: expected an existing file, got {source!r}")
        consumers = sum(1 for worker in self.bus.workers if Artifact in worker.supports and worker.stats.enabled)
        if not consumers:
            return  # no backend keeps files (wandb with log_artifacts=False): nothing to stage
        name = wandb_artifact_name(remote_file_name)
        if name != remote_file_name:
            warnings.warn(f"Artifact names allow only letters, digits, '.', '-' and '_'. The file "
                          f"'{remote_file_name}' will be stored as '{name}'.", stacklevel=2)
        timestamp = state.timestamp
        metadata = {f"timestamp/{k}": v for k, v in timestamp.state_dict().items()}
        if state.dataloader is not state.train_dataloader:  # uploaded during eval, as Composer records
            metadata.update({f"eval_timestamp/{k}": v for k, v in state.eval_timestamp.state_dict().items()})
        staged, release = self._staging.stage(source, consumers)
        self.bus.emit(Artifact(path=staged, name=name, type=artifact_type_for(name),
                               aliases=["latest", f"ep{int(timestamp.epoch)}-ba{int(timestamp.batch)}"],
                               metadata=metadata, on_done=release))

    def download_file(self, remote_file_name: str, destination: str, overwrite: bool = False,
                      progress_bar: bool = True) -> None:
        # A backend may still be starting its run on its writer (the entity and project come from
        # there): let everything emitted so far, RunStarted included, reach the backends first.
        self.bus.flush(self.bus.close_timeout)
        for backend in self.bus.backends.values():
            download = getattr(backend, "download_file", None)
            if download is not None:
                return download(remote_file_name, destination, overwrite=overwrite, progress_bar=progress_bar)
        raise NotImplementedError(f"download_file: none of the backends {list(self.bus.backends)} can give files back")


class WandBLogger(LogBusLogger, composer.loggers.WandBLogger):
    """Drop-in for ``composer.loggers.WandBLogger`` (same arguments, defaults and meanings) that works
    on current wandb and never blocks the training loop.

    It is a ``composer.loggers.WandBLogger`` (``isinstance`` holds where Composer checks it: the
    Trainer's checkpoint loading, ``ActivationMonitor``, ``MosaicMLLogger``), but none of Composer's
    methods run: every one is overridden here or in ``LogBusLogger``. As with Composer's logger, the
    run is started at ``Event.INIT`` on the logging ranks and is ``wandb.run`` from then on; user
    code's ``wandb.log`` / ``wandb.run.log`` on it are enqueued on the bus, in order with logbus's
    records (see ``WandBBackend.route_user_logs``).

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

    @names_misspelt_options("WandBLogger")
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
        self.wandb_backend.start_on_first_record = False  # the run starts at Event.INIT (see init)
        super().__init__(backends=[self.wandb_backend])
        # Composer's attributes, with Composer's meanings. entity/project are the arguments until
        # Event.INIT, then the run's own, sent from rank 0 to every rank (download_file needs them).
        self._enabled = (not rank_zero_only) or dist.get_global_rank() == 0
        self._rank_zero_only = bool(rank_zero_only)
        self._log_artifacts = bool(log_artifacts)
        self._init_kwargs = self.wandb_backend.init_kwargs
        self._is_in_atexit = False
        self.entity = entity
        self.project = project
        self.run_dir: Optional[str] = None
        self.run_url: Optional[str] = None
        self.table_dict: dict = {}

    def _current_batch(self) -> int:
        # init routes user logs here only after setting the state, which is then only ever replaced.
        assert self._state is not None
        return int(self._state.timestamp.batch)

    def init(self, state: State, logger: Logger) -> None:
        backend = self.wandb_backend
        if backend.started:
            # Called again (Composer's own tests do, then hand the logger to a Trainer): as
            # Composer's wandb.init then returns the run already there, keep it; follow the new state.
            self._state = state
        else:
            # wandb.init here, on the training thread, as Composer does: user code may use wandb.run,
            # wandb.config, wandb.log from Event.INIT on. A failure is reported by the bus (counted,
            # the backend switched off), never raised into training.
            backend.start(run_started(state), global_run=True)
            self._state = state
            backend.route_user_logs(self._current_batch, self.bus.emit)
            super().init(state, logger)
        entity_and_project = [backend.entity, backend.project] if backend.run is not None else [None, None]
        # As Composer: rank 0's entity and project on every rank, so that download_file works on ranks
        # without a run (a collective: every rank calls init). Where rank 0 has no run either (wandb
        # failed to start), the configured ones stay.
        dist.broadcast_object_list(entity_and_project)
        if entity_and_project[1] is not None:
            backend.entity, backend.project = entity_and_project
        self.entity, self.project = backend.entity, backend.project
        self.run_dir, self.run_url = backend.run_dir, backend.run_url

    def upload_file(self, state: State, remote_file_name: str, file_path: pathlib.Path, *, overwrite: bool) -> None:
        if self._enabled and self._log_artifacts:  # Composer's condition: nothing else is staged or queued
            super().upload_file(state, remote_file_name, file_path, overwrite=overwrite)

    def can_upload_files(self) -> bool:
        return True

