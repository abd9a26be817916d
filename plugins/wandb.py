"""The Weights & Biases backend, with the arguments and meanings of Composer's ``WandBLogger``.

Runs on its writer thread: every ``run.log`` (about 170 µs a call) and artifact uploads never touch
the training thread. ``wandb.init`` runs there too (``start_run``, ``LogBusLogger``), except for the
drop-in ``logbus.composer.WandBLogger``, which calls :meth:`WandBBackend.start` at Composer's
``Event.INIT`` as Composer's logger does, so that ``wandb.run`` is there for user code, and then
:meth:`WandBBackend.route_user_logs` so that the user's own ``wandb.log`` calls travel on the bus.
Written for current wandb (>= 0.19.10, for ``reinit="create_new"``; tested on 0.31 and 0.19.10): it
uses the ``Run`` object rather than ``run.get_url()``, deprecated in 0.19.10 and removed in 0.29.
"""

from __future__ import annotations

import copy
import numbers
import os
import re
import shutil
import sys
import tempfile
import warnings
import weakref
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

import numpy as np

import logbus
from logbus.files import content_hash, wandb_artifact_name
from logbus.options import Option, Options
from logbus.plugins._backend_common import fallback_run_started, logs_on_this_rank, rank_run_name
from logbus.plugins._wandb_masks import MaskFiles
from logbus.records import (
    PER_EVAL_MASK,
    Artifact,
    Hyperparameters,
    Image,
    Images,
    Metrics,
    Record,
    RunFinished,
    RunStarted,
    Table,
    as_float,
    redact_secrets,
)

if TYPE_CHECKING:  # wandb is imported when a run starts: logbus.plugins loads without it
    from wandb import Run

_INIT_ARGUMENTS = ("project", "group", "name", "entity")
# wandb.init arguments stored in the run record (not `settings`, which may carry the key on purpose).
_RECORDED_INIT_ARGUMENTS = ("name", "notes", "group", "tags", "job_type")


class UserLog(Record):
    """A ``wandb.log`` / ``run.log`` call made by user code on a run logbus owns (see
    :meth:`WandBBackend.route_user_logs`), carried on the bus so that wandb receives it in program
    order with logbus's own records. ``batch`` is the training batch at the call: where a step-less
    call lands."""

    __slots__ = ("data", "step", "commit", "batch")

    def __init__(self, data: Mapping[str, Any], step: int | None = None, commit: bool | None = None,
                 batch: int = 0):
        if not isinstance(data, Mapping):
            raise TypeError(f"data: expected a dict of values to log, got {type(data).__name__}")
        for key in data:
            if not isinstance(key, str):
                raise TypeError(f"data: keys must be str, got {key!r} ({type(key).__name__})")
        if step is not None and (isinstance(step, bool) or not isinstance(step, numbers.Integral) or step < 0):
            raise TypeError(f"step: expected a non-negative int or None, got {step!r}")
        if commit is not None and not isinstance(commit, bool):
            raise TypeError(f"commit: expected a bool or None, got {commit!r}")
        # A snapshot: the caller may change its dict, tensors and arrays after the call returns, and
        # wandb reads them later on the writer thread (a GPU clone is queued, not waited for).
        self.data = {key: _snapshot(value) for key, value in data.items()}
        self.step = None if step is None else int(step)
        self.commit = commit
        self.batch = batch


def _snapshot(value: Any) -> Any:
    if hasattr(value, "detach") and hasattr(value, "clone"):  # torch.Tensor, without importing torch
        return value.detach().clone()
    copy = getattr(value, "copy", None)
    if type(value).__module__ == "numpy" and copy is not None:
        return copy()
    wandb = sys.modules.get("wandb")  # a wandb.Table means wandb is imported: never import it here
    if wandb is not None and isinstance(value, wandb.Table):
        return WandbTableAtCall.of_table(value)
    return value


class WandbTableAtCall:
    """A ``wandb.Table`` as it was at a user's log call, for the writer thread to log.

    Plain ``wandb.log`` serializes a table during the call; through the bus it is logged later, and
    user code often keeps adding rows to the same table after the call. So the call keeps the
    table's columns and rows (a copy of the row lists; cells are kept as they are: ``wandb.Image``
    and other media are files written when they were made), and the writer logs a table of its own
    (:meth:`WandBBackend._table_to_log`), never the user's object, which it may be changing.

    :ivar source: the user's table (``None`` for Composer's ``log_table``, which makes a new one).
    :ivar table: an unlogged copy of it with the columns and rows of the call (for ``log_table``:
        ``(columns, rows)``, made into a table on the writer).
    """

    __slots__ = ("source", "table")

    def __init__(self, source: Any, table: Any):
        self.source, self.table = source, table

    @classmethod
    def of_table(cls, table: Any) -> "WandbTableAtCall":
        """:param table: the user's ``wandb.Table``."""
        at_call = copy.copy(table)  # its log mode, column types and keys as they are now
        at_call.columns = list(table.columns)
        at_call.data = [list(row) for row in table.data]
        return cls(table, at_call)

    @classmethod
    def of_rows(cls, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> "WandbTableAtCall":
        """What Composer's ``WandBLogger.log_table`` logs: ``wandb.Table(columns=columns, rows=rows)``,
        made on the writer thread (wandb type-checks every row as it adds it).

        :param columns: the column names.
        :param rows: the rows; their cells may be ``wandb`` media (``wandb.Image``...).
        """
        return cls(None, ([str(column) for column in columns], [list(row) for row in rows]))


def has_wandb_cells(rows: Sequence[Sequence[Any]]) -> bool:
    """Whether a table row holds a ``wandb`` object (``wandb.Image``, ``wandb.Html``...), which only the
    W&B backend can log. Checked without importing wandb.

    :param rows: the table's rows.
    """
    return any(type(cell).__module__.startswith("wandb.") for row in rows if isinstance(row, (list, tuple))
               for cell in row)


class WandBBackend:
    """Logs to one W&B run per process (or one per rank with ``rank_zero_only=False``)."""

    name = "wandb"
    # Composer's WandBLogger arguments, defaults and meanings (logbus.composer.WandBLogger takes the same).
    options = Options(
        Option("project", None, "W&B project", kind="str"),
        Option("group", None, "W&B group", kind="str"),
        Option("name", None, "W&B run name; `None`: the run's name (Composer's `State.run_name`)", kind="str"),
        Option("entity", None, "W&B entity (user or team)", kind="str"),
        Option("tags", None, "list of W&B tags"),  # a list of str: checked below
        Option("log_artifacts", False, "upload artifacts (Composer's checkpoints) as W&B artifacts"),
        Option("rank_zero_only", True, "log on rank 0 only; `False`: one run per rank, `<name>-rank<rank>`, grouped "
               "under the run name"),
        Option("init_kwargs", None, "more `wandb.init` arguments (`config`, `notes`, `mode`, `dir`...); the arguments "
               "above take precedence", kind="dict"),
    )

    # (defaults are read from the class body's `options` while the class is being made)
    def __init__(self, project: str | None = options.defaults["project"], group: str | None = options.defaults["group"],
                 name: str | None = options.defaults["name"], entity: str | None = options.defaults["entity"],
                 tags: Sequence[str] | None = options.defaults["tags"],
                 log_artifacts: bool = options.defaults["log_artifacts"],
                 rank_zero_only: bool = options.defaults["rank_zero_only"],
                 init_kwargs: dict[str, Any] | None = options.defaults["init_kwargs"]):
        # log_artifacts and rank_zero_only are taken for their truth, as Composer does.
        self.options.check(project=project, group=group, name=name, entity=entity, init_kwargs=init_kwargs)
        if tags is not None and (isinstance(tags, str) or not all(isinstance(t, str) for t in tags)):
            raise TypeError(f"tags: expected a list of str or None, got {tags!r}")
        init_kwargs = dict(init_kwargs or {})
        # Composer's meaning: explicit arguments override the same keys in init_kwargs.
        for key, given in zip((*_INIT_ARGUMENTS, "tags"), (project, group, name, entity, tags)):
            if given is not None:
                init_kwargs[key] = list(given) if key == "tags" else given
        self.init_kwargs = init_kwargs
        self.log_artifacts = bool(log_artifacts)
        # Artifacts are queued for this backend only when it uploads them (the bus asks `supports`), so
        # nothing is staged or held for a run that would drop them.
        self.supports = frozenset({Table, Images, UserLog, *((Artifact,) if self.log_artifacts else ())})
        self.rank_zero_only = bool(rank_zero_only)
        # wandb.Image takes a file as it is (an array it would encode itself, per image, on this thread).
        self.needs_image_files = True
        # A record before RunStarted starts a run under the shared fallback name, as the other backends
        # do; logbus.composer.WandBLogger turns it off: its run starts at Event.INIT, on the training
        # thread, and a run started earlier on the writer would take its place.
        self.start_on_first_record = True
        self.enabled = True
        self.run: Run | None = None
        self.run_url: str | None = None
        self._started = False  # start() ran (on this thread or the writer's)
        self._start_error: BaseException | None = None
        self._routed_log: Callable[..., None] | None = None
        self.entity = entity
        self.project = project
        self.run_dir: str | None = None
        # Per table key: the reference table of its images now, with each join value's image identity.
        self._references: dict[str, tuple[dict[Any, tuple], Any]] = {}
        self._blank_images: dict[tuple[int, int], Any] = {}  # (height, width) -> wandb.Image
        self._mask_files = MaskFiles()
        # Per user wandb.Table logged through route_user_logs: (the user's table, the one logged for it).
        self._user_tables: dict[int, tuple[weakref.ref, Any]] = {}
        self._blank_folder: tempfile.TemporaryDirectory | None = None
        # Composer warns at construction, on every rank, where a launcher's WORLD_SIZE already tells a
        # distributed run; without one, the warning waits for the world size that RunStarted brings.
        self._warned_artifacts = False
        if _launcher_world_size() > 1:
            self._warn_if_artifacts_are_lost()

    def _warn_if_artifacts_are_lost(self) -> None:
        if self.log_artifacts and self.rank_zero_only and not self._warned_artifacts:
            self._warned_artifacts = True
            warnings.warn("When logging artifacts, `rank_zero_only` should be set to False. Artifacts from other "
                          "ranks will not be collected, leading to a loss of information required to restore "
                          "from checkpoints.", stacklevel=3)

    @property
    def _live_run(self) -> Run:
        # The writers below run only once log() has checked that this rank has a run.
        assert self.run is not None
        return self.run

    def _run_log(self, data: dict[str, Any], step: int | None = None, commit: bool | None = None) -> None:
        # wandb's own run.log, never the one route_user_logs puts on the run for user code.
        run = self._live_run
        type(run).log(run, data, step=step, commit=commit)

    @property
    def started(self) -> bool:
        """Whether :meth:`start` ran (successfully or not), on any thread."""
        return self._started

    # -- records ---------------------------------------------------------------------------------
    def log(self, record) -> None:
        if isinstance(record, RunStarted) or (not self._started and self.start_on_first_record):
            if not self._started:  # a plain caller that skipped RunStarted still gets a run
                self.start(record if isinstance(record, RunStarted) else fallback_run_started())
            if self._start_error is not None:  # a synchronous start failed: fail here, where it is counted
                raise self._start_error
        if isinstance(record, RunStarted):
            return
        if self.run is None:
            return  # not the logging rank
        elif isinstance(record, Metrics):
            self._run_log({name: as_float(value) for name, value in record.values.items()}, step=record.step)
        elif isinstance(record, UserLog):
            self._log_user_call(record)
        elif isinstance(record, Hyperparameters):
            self.run.config.update(record.values, allow_val_change=True)
        elif isinstance(record, Table):
            self._log_table(record)
        elif isinstance(record, Images):
            self._run_log({record.key: [_to_wandb(image) for image in record.images]}, step=record.step)
        elif isinstance(record, Artifact) and self.log_artifacts:
            self._log_artifact(record)

    def _log_table(self, record: Table) -> None:
        """wandb keeps at most ``wandb.Table.MAX_ROWS`` (10,000) rows of a table in the run; a larger
        table is split into ``key``, ``key/part2``, ``key/part3``... logged at the same step, so every
        row is kept.

        A table with a ``join_key`` (the sample pipeline's) is logged as two: its image cells (with
        their masks, but not the ``prediction`` mask or boxes) go to a reference table
        ``{key}/reference``, logged at the first eval and again only when the rows or their images
        change;
        each eval's own cells go to a table of scalars joined to it (``wandb.JoinedTable`` on the
        join key) under ``key``. A repeat eval of the same images then adds no image file and costs
        about a tenth of a first eval per classification row (``benchmarks/bench_wandb_tables.py``).
        A segmentation row's per-eval prediction mask is still a file of its own in every eval's
        table (wandb stores a mask only as a file beside its image): a staged copy and a manifest
        entry per row, in wandb, which is most of a repeat eval's segmentation row.

        What logbus does to wandb's per-row cost: masks are encoded once, here, and handed over as
        files (``_wandb_masks``); column types are inferred from one row per type signature
        (``_wandb_private.table_of_rows``)."""
        import wandb

        from logbus.plugins import _wandb_private

        limit = wandb.Table.MAX_ROWS
        data: dict[str, Any] = {}
        try:
            for part, start in enumerate(range(0, max(1, len(record.rows)), limit), start=1):
                rows = record.rows[start:start + limit]
                key = record.key if part == 1 else f"{record.key}/part{part}"
                image_columns = [] if record.join_key is None else [
                    index for index in range(len(record.columns)) if any(isinstance(row[index], Image) for row in rows)]
                if image_columns and _wandb_private.can_refer_to_tables():
                    self._add_joined_table(data, key, record, rows, image_columns)
                else:
                    data[key] = _wandb_private.table_of_rows(
                        record.columns, [[_to_wandb(cell, None, self._mask_files) for cell in row] for row in rows],
                        [tuple(_type_signature(cell) for cell in row) for row in rows])
            self._run_log(data, step=record.step)
        finally:
            self._mask_files.release()  # staged by wandb in run.log, or never to be logged
        references = {id(table) for _, table in self._references.values()}
        _wandb_private.forget(_wandb_private.table_artifact(table) for table in data.values()
                              if id(table) not in references)

    def _add_joined_table(self, data: dict[str, Any], key: str, record: Table, rows: Sequence[Sequence[Any]],
                          image_columns: list[int]) -> None:
        from wandb.data_types import JoinedTable  # wandb.JoinedTable, which wandb's __init__.pyi leaves out

        from logbus.plugins import _wandb_private

        columns, join_key = record.columns, record.join_key
        assert join_key is not None  # only a table with a join key has image columns to join
        join_index = columns.index(join_key)
        identities = {row[join_index]: tuple(_reference_identity(row[i]) for i in image_columns) for row in rows}
        known = self._references.get(key)
        # The same rows with the same images, or a new reference (a join would show rows of the old one).
        if known is None or known[0] != identities:
            reference = _wandb_private.table_of_rows(
                [join_key, *(columns[i] for i in image_columns)],
                [[row[join_index], *(_to_wandb(row[i], _REFERENCE, self._mask_files) for i in image_columns)]
                 for row in rows],
                [(type(row[join_index]), *(_type_signature(row[i], _REFERENCE) for i in image_columns))
                 for row in rows])
            data[f"{key}/reference"] = reference  # before the joined table: logged first, then referred to
            if known is not None:
                _wandb_private.forget([_wandb_private.table_artifact(known[1])])
            known = self._references[key] = (identities, reference)
        else:
            _wandb_private.keep(_wandb_private.table_artifact(known[1]))
        # Per eval: the scalars, and an image column only where a cell has a prediction of its own.
        per_eval = [i for i in range(len(columns))
                    if i not in image_columns or any(_has_per_eval_part(row[i]) for row in rows)]
        eval_rows = [[_to_wandb(row[i], self._blank_image, self._mask_files) if i in image_columns else row[i] for i in per_eval]
                     for row in rows]
        eval_table = _wandb_private.table_of_rows(
            [columns[i] for i in per_eval], eval_rows,
            [tuple(_type_signature(row[i], self._blank_image if i in image_columns else None) for i in per_eval)
             for row in rows])
        data[key] = JoinedTable(known[1], eval_table, join_key)

    def _blank_image(self, height: int, width: int) -> Any:
        """A black image of this size, written and hashed once: the background of per-eval
        prediction masks (the image itself is in the reference table). Each cell is a
        ``wandb.Image(blank, masks=...)``, which takes the file and its hash from it (the documented
        copy of an Image, without its masks), and the table's artifact stores the file once."""
        import wandb

        blank = self._blank_images.get((height, width))
        if blank is None:
            from PIL import Image as PILImage

            if self._blank_folder is None:
                self._blank_folder = tempfile.TemporaryDirectory(prefix="logbus-wandb-")
            path = os.path.join(self._blank_folder.name, f"blank-{height}x{width}.png")
            PILImage.new("L", (width, height)).save(path)
            blank = self._blank_images[(height, width)] = wandb.Image(path)
        return blank

    def _log_user_call(self, record: UserLog) -> None:
        data = {key: self._table_to_log(value) if isinstance(value, WandbTableAtCall) else value
                for key, value in record.data.items()}
        if record.step is not None:
            self._run_log(data, step=record.step, commit=record.commit)
            return
        # A step-less call joins the row of the batch it was made in, as Composer's Logger does for
        # step-less metrics, without committing it: wandb's own default (commit, then step + 1) would
        # make it drop every later record of that batch as "step less than current step". If the run
        # is already past that batch (the user logged a later step), it joins the current row.
        self._run_log(data, step=max(record.batch, self._live_run.step), commit=False)

    def _table_to_log(self, at_call: WandbTableAtCall) -> Any:
        """The table to hand ``run.log`` for a user's table as it was at the call: what wandb would
        have logged had the call run then. wandb keeps a table's logging state on the table object
        (``log_mode``: an ``IMMUTABLE`` table is stored once, a ``MUTABLE`` one again after each
        change, an ``INCREMENTAL`` one as the rows added since the last log), so the same user table
        gets the same table object here at every call, and the rows added since the last call are
        added to it with ``add_data``, where wandb does that bookkeeping. Rows changed in another way
        (edited, removed, columns changed) replace its rows; a ``MUTABLE`` table is then a new one,
        as wandb logs a mutated one anew."""
        import wandb

        if at_call.source is None:  # Composer's log_table: a new table, as Composer's logger makes one
            columns, rows = at_call.table
            return wandb.Table(columns=columns, data=rows)
        for key in [key for key, (source, _) in self._user_tables.items() if source() is None]:
            del self._user_tables[key]  # tables the user dropped since
        known = self._user_tables.get(id(at_call.source))
        if known is None or known[0]() is not at_call.source:
            self._user_tables[id(at_call.source)] = (weakref.ref(at_call.source), at_call.table)
            return at_call.table
        table, now = known[1], at_call.table
        logged = len(table.data)
        if table.columns == now.columns and now.data[:logged] == table.data:
            for row in now.data[logged:]:
                table.add_data(*row)
        elif table.log_mode == "MUTABLE":
            self._user_tables[id(at_call.source)] = (known[0], now)
            return now
        else:
            table.columns, table.data = now.columns, now.data
        return table

    def close(self, finish: RunFinished) -> None:
        if self.run is not None:
            self._unroute_user_logs()
            run, self.run = self.run, None
            # (settings.mode and sync_file: what every wandb from the floor on has; Run.offline is newer)
            offline = getattr(run.settings, "mode", None) in ("offline", "dryrun")
            run_dir = os.path.dirname(run.settings.sync_file) if offline else None
            run.finish(exit_code=finish.exit_code)
            if run_dir is not None:
                _keep_offline_files(run_dir)
        if self._references:
            from logbus.plugins import _wandb_private

            _wandb_private.forget(_wandb_private.table_artifact(table) for _, table in self._references.values())
            self._references.clear()
        self._user_tables.clear()
        if self._blank_folder is not None:
            self._blank_folder.cleanup()
            self._blank_folder = None
            self._blank_images.clear()
        self._mask_files.close()

    # -- run lifecycle ---------------------------------------------------------------------------
    def start(self, record: RunStarted, *, global_run: bool = False) -> None:
        """Starts the W&B run (``wandb.init``) now, on the calling thread. Called once; a failure is
        kept and raised again when ``record`` reaches :meth:`log` on the writer thread, where the bus
        counts it and switches this backend off.

        :param record: who the run is (name, rank, world size).
        :param global_run: make it wandb's global run (``wandb.run``, ``wandb.log``...), as
            Composer's ``WandBLogger`` does; otherwise a run of its own (``reinit="create_new"``),
            so several runs may live in one process.
        """
        self._started = True
        try:
            self._start(record, global_run)
        except Exception as error:  # noqa: BLE001 - reported by the writer thread (see log)
            self._start_error = error

    def _start(self, record: RunStarted, global_run: bool) -> None:
        import wandb

        kwargs = dict(self.init_kwargs)
        base_name = record.run_name if kwargs.get("name") is None else kwargs["name"]
        # As Composer: with rank_zero_only=False the run is "<name>-rank<rank>" even in a one-process world.
        kwargs["name"] = rank_run_name(base_name, record, self.rank_zero_only, single_process_too=True)
        if not self.rank_zero_only:
            kwargs["group"] = kwargs.get("group") or base_name
        self.enabled = logs_on_this_rank(record, self.rank_zero_only)
        if record.world_size > 1:
            self._warn_if_artifacts_are_lost()
        if not self.enabled:
            return
        # wandb.init takes an argparse.Namespace or a dataclass as config too: redaction walks it into a dict.
        config = redact_secrets({**redact_secrets(kwargs.pop("config", None) or {}), **record.config})
        # The API key copied into an init argument W&B records with the run is hidden as in the config.
        for key in _RECORDED_INIT_ARGUMENTS:
            if kwargs.get(key) is not None:
                kwargs[key] = redact_secrets(kwargs[key])
        if not global_run:
            # Several runs may live in one process (tests, sweeps, a bus per rank): never hand back an old one.
            kwargs.setdefault("reinit", "create_new")
        run = wandb.init(config=config, **kwargs)
        self.run = run
        self.entity, self.project = str(run.entity), str(run.project)
        self.run_dir = run.dir
        self.run_url = run.url

    def route_user_logs(self, current_batch: Callable[[], int], emit: Callable[[Record], None]) -> None:
        """Makes user code's ``run.log`` on this run, and ``wandb.log`` while it is wandb's global run,
        enqueue a :class:`UserLog` with ``emit`` instead of writing at once: the call returns after an
        enqueue, and wandb receives it in program order with everything logbus emitted before and
        after it.

        Only this run object is changed (an instance attribute; ``wandb.Run`` is untouched), and
        ``wandb.log`` only while this run is the global one: wandb itself points ``wandb.log`` back to
        its "call wandb.init() first" stub when the run finishes, and :meth:`close` removes both
        before finishing. Nothing outlives the run.

        :param current_batch: the training batch now (Composer's ``state.timestamp.batch``).
        :param emit: puts a record on the bus (``Bus.emit``).
        """
        import wandb

        run = self.run
        if run is None:
            return

        def log(data: dict[str, Any], step: int | None = None, commit: bool | None = None) -> None:
            emit(UserLog(data, step, commit, batch=current_batch()))

        log.__doc__ = type(run).log.__doc__
        run.log = log  # type: ignore[method-assign]  # on purpose: this run's log only, wandb.Run untouched
        if wandb.run is run:
            wandb.log = log
        self._routed_log = log

    def _unroute_user_logs(self) -> None:
        import wandb

        if self._routed_log is None:
            return
        vars(self._live_run).pop("log", None)
        if wandb.log is self._routed_log:
            wandb.log = self._live_run.log
        self._routed_log = None

    def _log_artifact(self, record: Artifact) -> None:
        import wandb

        artifact_type = record.type
        artifact = wandb.Artifact(name=wandb_artifact_name(record.name), type=artifact_type,
                                  metadata=dict(record.metadata))
        artifact.add_file(record.path)
        self._live_run.log_artifact(artifact, aliases=list(record.aliases) or None)

    # -- files back from W&B ---------------------------------------------------------------------
    def download_file(self, remote_file_name: str, destination: str, overwrite: bool = False,
                      progress_bar: bool = True) -> None:
        """Fetches a file logged as an artifact (Composer's checkpoint loading calls this)."""
        del progress_bar
        import wandb
        import wandb.errors

        # Ranks that do not log (rank_zero_only) never start a run, and Composer may ask any of them to
        # load a checkpoint: fall back to the configured project and the API key's default entity
        # rather than a collective at init (which would make every rank wait for wandb.init).
        entity = self.entity or self.init_kwargs.get("entity")
        project = self.project or self.init_kwargs.get("project")
        if not project:
            raise RuntimeError("download_file: the W&B project is unknown: the run has not started on this rank "
                               "and no `project` was given")
        if not entity:
            entity = wandb.Api().default_entity
        if not entity:
            raise RuntimeError("download_file: the W&B entity is unknown: the run has not started on this rank, "
                               "no `entity` was given and the API key has no default entity")
        if os.path.exists(destination) and not overwrite:
            raise FileExistsError(f"destination: {destination!r} exists and overwrite=False")
        if ":" not in remote_file_name:
            remote_file_name += ":latest"
        artifact_name, _, version = remote_file_name.rpartition(":")
        name = f"{wandb_artifact_name(artifact_name)}:{re.sub(r'[^A-Za-z0-9_.-]', '.', version)}"
        try:
            artifact = wandb.Api().artifact("/".join([entity, project, name]))
        except wandb.errors.CommError as error:
            raise FileNotFoundError(f"W&B artifact {name} not found") from error
        with tempfile.TemporaryDirectory() as temporary:
            folder = os.path.join(temporary, "artifact")  # not there yet, as Composer's download leaves it
            artifact.download(root=folder)
            files = os.listdir(folder)
            if len(files) != 1:
                raise RuntimeError(f"W&B artifact {name} holds {len(files)} files; expected exactly one checkpoint")
            shutil.move(os.path.join(folder, files[0]), destination)


def _keep_offline_files(run_dir: str) -> None:
    """Makes a finished offline run folder hold every file its run file names (see
    ``_wandb_run_file``): it can then be moved, ``logbus wandb-relink``-ed and synced anywhere."""
    from logbus.plugins import _wandb_private, _wandb_run_file

    try:
        _wandb_run_file.keep_staged_files(run_dir, staging_dir=_wandb_private.staging_dir())
    except Exception as error:  # noqa: BLE001 - the run is finished and complete where it is: say why, go on
        warnings.warn(f"logbus: the offline W&B run {run_dir} still names files in wandb's staging folder "
                      f"($WANDB_DATA_DIR/artifacts/staging), so it syncs from this machine only: {error}", stacklevel=2)


def _launcher_world_size() -> int:
    """``WORLD_SIZE`` as torchrun and Composer's launcher set it (what ``composer.utils.dist`` reads)."""
    try:
        return int(os.environ.get("WORLD_SIZE") or 1)
    except ValueError:
        return 1


_REFERENCE = "reference"  # _to_wandb: the image cell without its per-eval parts


def _has_per_eval_part(cell: Any) -> bool:
    return isinstance(cell, Image) and (PER_EVAL_MASK in cell.masks or bool(cell.boxes))


def _type_signature(cell: Any, part: Any = None) -> Any:
    """Everything wandb's column type of ``_to_wandb(cell, part)`` depends on (for
    ``_wandb_private.table_of_rows``): the Python type; for an image, its masks' names and class
    labels and its boxes' classes and score key. More than wandb looks at is harmless (rows with
    another signature are type-checked too); less would leave a column's type short."""
    if not isinstance(cell, Image):
        return type(cell)
    per_eval = part is not None and part != _REFERENCE
    if per_eval and not _has_per_eval_part(cell):
        return type(None)  # _to_wandb gives None
    masks = tuple((name, tuple(sorted((mask.class_labels or {}).items())) if mask.class_labels
                   else tuple(np.unique(mask.data).tolist()))
                  for name, mask in sorted(cell.masks.items())
                  if (name == PER_EVAL_MASK) == per_eval or part is None)
    boxes = () if part == _REFERENCE or not cell.boxes else (
        tuple(sorted({int(b.class_id) for b in cell.boxes})), any(b.score is not None for b in cell.boxes),
        tuple(sorted((cell.box_class_labels or {}).items())))
    return Image, masks, boxes


def _reference_identity(cell: Any) -> Any:
    """What a reference table keeps of an image cell, as something comparable: the image's content
    hash (``logbus.files.content_hash``: its ``digest`` where the producer set one, as the bus does for a
    caller's file and the sample pipeline for its own, never its path), caption and masks other than
    the per-eval one."""
    if not isinstance(cell, Image):
        return cell
    if cell.digest is not None:
        content = cell.digest
    elif cell.path is not None:
        with open(cell.path, "rb") as file:
            content = content_hash(file.read())
    else:
        assert cell.pixels is not None  # an Image holds pixels or a path (records.Image checks it)
        content = content_hash(cell.pixels)
    masks = tuple((name, content_hash(mask.data), tuple(sorted((mask.class_labels or {}).items())))
                  for name, mask in sorted(cell.masks.items()) if name != PER_EVAL_MASK)
    return content, cell.caption, masks


def _to_wandb(cell: Any, part: Any = None, mask_files: MaskFiles | None = None) -> Any:
    """A table cell for wandb. ``part``: ``None`` the whole cell; ``_REFERENCE`` an image without its
    per-eval mask and boxes; or a ``blank_image(height, width) -> wandb.Image`` for the per-eval part
    alone (``None`` where the cell has none), drawn on a blank image of the same size.
    ``mask_files``: masks go to wandb as files written there (table cells); ``None``: as arrays."""
    if not isinstance(cell, Image):
        return cell
    import wandb

    masks = dict(cell.masks)
    per_eval = part is not None and part != _REFERENCE
    if part == _REFERENCE:
        masks.pop(PER_EVAL_MASK, None)
    elif per_eval:
        if not _has_per_eval_part(cell):
            return None
        masks = {name: mask for name, mask in masks.items() if name == PER_EVAL_MASK}
    classes: dict[int, str] = {}
    if mask_files is None:
        wandb_masks = {name: {"mask_data": mask.data,
                              **({"class_labels": {int(k): v for k, v in mask.class_labels.items()}}
                                 if mask.class_labels else {})}
                       for name, mask in masks.items()} or None
    else:
        wandb_masks = {}
        for name, mask in masks.items():
            wandb_masks[name], labels = mask_files.wandb_mask(name, mask.data, mask.class_labels, mask.path)
            classes.update(labels)
        wandb_masks = wandb_masks or None
    # As wandb.Image derives them from masks given as arrays (its legacy merge: a later mask's name
    # for an id wins); a box's own labels are merged by wandb itself.
    classes_argument = [{"id": k, "name": v} for k, v in classes.items()] or None
    boxes: dict[str, Any] | None = None
    if cell.boxes and part != _REFERENCE:
        box_data = [{"position": {"minX": b.min_x, "minY": b.min_y, "maxX": b.max_x, "maxY": b.max_y},
                     "domain": "pixel", "class_id": int(b.class_id),
                     **({"box_caption": b.caption} if b.caption else {}),
                     **({"scores": {"score": float(b.score)}} if b.score is not None else {})}
                    for b in cell.boxes]
        boxes = {"predictions": {"box_data": box_data,
                                 **({"class_labels": dict(cell.box_class_labels)} if cell.box_class_labels else {})}}
    if per_eval:
        return wandb.Image(part(*_image_size(cell)), masks=wandb_masks, boxes=boxes, classes=classes_argument)
    if cell.path is not None:
        # An already-encoded file: wandb copies it as it is, no second encode.
        return wandb.Image(cell.path, caption=cell.caption, masks=wandb_masks, boxes=boxes, classes=classes_argument)
    assert cell.pixels is not None  # an Image holds pixels or a path (records.Image checks it)
    pixels = cell.pixels[:, :, 0] if cell.pixels.shape[2] == 1 else cell.pixels
    return wandb.Image(pixels, caption=cell.caption, masks=wandb_masks, boxes=boxes, classes=classes_argument)


def _image_size(cell: Image) -> tuple[int, int]:
    """``(height, width)`` of an image cell (a file's is read from its header)."""
    if cell.pixels is not None:
        return cell.pixels.shape[0], cell.pixels.shape[1]
    for mask in cell.masks.values():
        return mask.data.shape
    from PIL import Image as PILImage

    assert cell.path is not None  # an Image holds pixels or a path (records.Image checks it)
    with PILImage.open(cell.path) as image:
        return image.height, image.width


@logbus.hookimpl
def register_backends(register):
    register("wandb", WandBBackend, description="Weights & Biases run (online or offline), Composer's arguments")
