"""``SampleLogger``: Composer callback that logs prediction samples through the sample pipeline.

Replaces the ``LogPredictions`` callback of the W&B guide for Composer: instead of one ``.cpu()``
and one ``wandb.Image`` per sample on the training thread, each microbatch is handed to the
pipeline as it is, and a table per evaluator (``samples/{label}``) is logged at ``eval_end``, at step
``state.timestamp.batch``, through the bus of every ``LogBusLogger``/``WandBLogger`` in the Trainer
(``loggers=[WandBLogger(...), LogBusLogger(backends=["local"])]`` gets the tables in both).

Multi-process runs (``dist.get_world_size() > 1``): each rank samples its own shard of the eval data and
logs its own table to its own backends (the local store: a folder per rank), with nothing exchanged.
Only for backends that keep one run for all ranks (``rank_zero_only``: W&B, TensorBoard) are the tables
gathered to rank 0, one collective per table (``logbus.composer._sample_gather``), which logs one table
with a ``rank`` column to those backends. There, and only there, ``eval_end`` waits (at most
``gather_timeout`` seconds) for the rank's own pipeline to finish the pass.
"""

from __future__ import annotations

import threading
from typing import Any, Mapping

from composer.core import Callback, State
from composer.loggers import Logger
from composer.utils import dist

from logbus.bus import Deferred
from logbus.composer._loggers import LogBusLogger
from logbus.composer._sample_gather import agree_to_gather, gather_table, holds_one_table
from logbus.options import Option, Options
from logbus.samples import (
    CLOSE_TIMEOUT,
    SAMPLING_OPTIONS,
    SamplePipeline,
    claim_key_prefix,
    cleanup_within_close,
    pipeline_for,
    place_scratch,
    split_options,
)

SAMPLE_LOGGER_OPTIONS: Options = Options(
    *SAMPLING_OPTIONS.values(),
    Option("input_key", 0, "where the inputs are in the batch: index or dict key, as in Composer's `ImageVisualizer`"),
    Option("target_key", 1, "where the targets are in the batch"),
    Option("interval", 1, "log every `interval`-th eval of each evaluator", kind="int", minimum=1),
    Option("train_interval", None, "also log a `samples/train` table every `train_interval` training batches",
           kind="int", minimum=1),
    Option("gather_timeout", 60.0, "multi-process runs with a backend that keeps one run for all ranks (W&B, "
           "TensorBoard): seconds `eval_end` waits for this rank's table before it is left out of the one gathered "
           "on rank 0; keep it below the Trainer's `dist_timeout` (default 300)",
           kind="number", minimum=0, above=True, unit="seconds"),
)
_DEFAULTS = SAMPLE_LOGGER_OPTIONS.defaults


def item_of(batch: Any, key: Any, argument: str) -> Any:
    """``batch[key]`` for tuple/list/dict batches, with an error naming ``input_key``/``target_key``."""
    try:
        return batch[key]
    except (KeyError, IndexError, TypeError) as error:
        shape = f"a {type(batch).__name__}" + (f" with keys {list(batch)}" if isinstance(batch, Mapping) else "")
        raise ValueError(f"{argument}: {key!r} is not in the batch ({shape})") from error


class SampleLogger(Callback):
    """Logs a table of prediction samples per evaluator at the end of each eval.

    :param extractor: registered extractor name (``classification``, ``segmentation``, ``tokens``; see
        ``logbus plugins``) or an extractor object.
    :param num_samples: rows per table (``None``: every eval sample; policy ``first``).
    :param policy: ``first``, ``reservoir`` (uniform over the pass, seeded), ``per_class`` (``num_samples``
        rows balanced over the true classes) or ``hardest`` (highest loss / lowest confidence over the pass).
    :param input_key: where the inputs are in the batch (index or dict key), as in Composer's
        ``ImageVisualizer``.
    :param target_key: where the targets are in the batch.
    :param interval: log every ``interval``-th eval of each evaluator.
    :param train_interval: also log a ``samples/train`` table every ``train_interval`` training
        batches (``None``: never).
    :param gather_timeout: multi-process runs with a backend that keeps one run for all ranks (W&B,
        TensorBoard) only: seconds ``eval_end`` waits for this rank's table before it is left out of the
        gathered one. Keep it below the Trainer's ``dist_timeout`` (default 300): the other ranks wait
        that long in the collective.
    :param options: keywords, each either one of the extractor's own options (``class_names``, ``mean``,
        ``std``, ``top_k``, ``tokenizer``...) or a pipeline option (``seed``, ``hardest_by``,
        ``max_pending_batches``, ``pinned_pool_bytes``, ``encode_workers``, ``image_format``,
        ``compress_level``, ``key_prefix``).

    **Multi-process runs.** Composer gives each rank its own shard of the eval data; the policy applies
    per rank (``first`` with ``num_samples=10`` on 4 ranks: up to 10 rows from each, 40 in all;
    ``hardest``: each rank's hardest). Each rank logs its own table to its own backends, those whose
    ``rank_zero_only`` is false or absent (the local backend writes it in the rank's folder,
    ``<name>-rank<r>``; a W&B run per rank with ``rank_zero_only=False`` gets its rank's rows), and no
    row or byte crosses ranks for them. Where rank 0 has a backend that keeps one run for all ranks
    (``rank_zero_only=True``: W&B, TensorBoard; decided once, when the run starts), at the end of each
    logged eval every rank also waits for its own pipeline (bounded by ``gather_timeout``), then all
    ranks take part in one ``gather_object`` to rank 0, each sending its rows with the encoded image
    files' bytes; a rank whose pipeline failed or was late sends nothing, and never skips the
    collective. Rank 0 logs the gathered table ``samples/{label}`` to those backends only, with a
    ``rank`` column before the extractor's columns (``id`` is the position in that rank's pass, so
    ``(rank, id)`` is unique). ``samples/train`` tables are never gathered (that would be a collective
    per training batch): each rank logs its own, so with ``rank_zero_only=True`` they are rank 0's.
    """

    def __init__(self, extractor: Any = _DEFAULTS["extractor"], num_samples: int | None = _DEFAULTS["num_samples"],
                 policy: str = _DEFAULTS["policy"], *, input_key: Any = _DEFAULTS["input_key"],
                 target_key: Any = _DEFAULTS["target_key"], interval: int = _DEFAULTS["interval"],
                 train_interval: int | None = _DEFAULTS["train_interval"],
                 gather_timeout: float = _DEFAULTS["gather_timeout"], **options: Any):
        # The sampling options are checked by the pipeline, the extractor's by the extractor.
        SAMPLE_LOGGER_OPTIONS.check(interval=interval, train_interval=train_interval, gather_timeout=gather_timeout)
        extractor_options, pipeline_options = split_options(options)
        self.pipeline: SamplePipeline = pipeline_for(extractor, extractor_options, num_samples=num_samples,
                                                     policy=policy, **pipeline_options)
        self.input_key, self.target_key = input_key, target_key
        self.interval, self.train_interval = interval, train_interval
        self.gather_timeout = float(gather_timeout)
        self.buses: list = []
        self._gathers = False  # multi-process: rank 0 has a backend that keeps one table (set at init)
        self._evals: dict[str, int] = {}
        self._active_label: str | None = None
        self._train_active = False
        self._train_step = 0

    # -- wiring ----------------------------------------------------------------------------------
    def init(self, state: State, logger: Logger) -> None:
        self.buses = [d.bus for d in logger.destinations if isinstance(d, LogBusLogger)]
        if not self.buses:
            raise ValueError("SampleLogger: the Trainer needs a logbus logger in `loggers` "
                             "(logbus.composer.WandBLogger or LogBusLogger) to send samples to")
        # Two SampleLoggers log every evaluator under the same keys: refused here, at Trainer(...).
        try:
            claim_key_prefix(self.buses, self.pipeline, "SampleLogger")
        except ValueError:
            self.pipeline.cleanup()  # the Trainer is not made: nothing else will stop its worker process
            raise
        # Before the first batch: the encoded files go where a backend (the local one) links them.
        place_scratch(self.buses, self.pipeline)
        # Every bus's backends read the same encoded files: the pipeline is cleaned up once the last
        # bus has closed, within what is left of that bus's close deadline.
        open_buses = len(self.buses)
        lock = threading.Lock()

        def bus_closed(bus) -> None:
            nonlocal open_buses
            with lock:
                open_buses -= 1
                last = open_buses == 0
            if last:
                cleanup_within_close(bus, self.pipeline)

        for bus in self.buses:
            bus.on_close(lambda bus=bus: bus_closed(bus))
        if dist.get_world_size() > 1:
            wanted = any(holds_one_table(backend) for bus in self.buses for backend in bus.backends.values())
            self._gathers = agree_to_gather(wanted)

    def _emit(self, record, *, one_table: bool | None = None) -> None:
        """Offers ``record`` to the backends of every bus: all of them (``one_table=None``), only those
        that keep one run for all ranks (``True``), or only the others (``False``)."""
        targets = [None if one_table is None else
                   {name for name, backend in bus.backends.items() if holds_one_table(backend) == one_table}
                   for bus in self.buses]
        if not isinstance(record, Deferred):
            for bus, to in zip(self.buses, targets):
                bus.emit(record, to=to)
            return
        record.hold()  # until every bus has been offered it: one bus done early cannot release its files
        try:
            for bus, to in zip(self.buses, targets):
                bus.emit(record, to=to)
        finally:
            record.release()

    def _submit(self, state: State, label: str) -> None:
        batch = state.batch
        self.pipeline.submit(item_of(batch, self.input_key, "input_key"), item_of(batch, self.target_key, "target_key"),
                             state.outputs, label=label)

    def _log(self, label: str, step: int) -> None:
        self._emit(self.pipeline.table_record(label, step=step))

    def _log_ranked(self, label: str, step: int) -> None:
        """Every rank calls this once per logged eval (the same evals everywhere: the interval counts
        evals, not batches), so the collective inside, where there is one, always has all ranks."""
        record = self.pipeline.table_record(label, step=step)
        if not self._gathers:
            self._emit(record, one_table=False)  # this rank's own backends; nothing waits, nothing is exchanged
            return
        # This rank's image files stay until the gathered table (which holds rank 0's own cells) is delivered
        # too: the record's own release gives them back, so the gather gives back only what it adopted.
        record.hold()
        try:
            self._emit(record, one_table=False)
            gathered = gather_table(record.future, key=f"{self.pipeline.key_prefix}/{label}",
                                    columns=self.pipeline.extractor.columns, step=step,
                                    folder=self.pipeline.encoder.folder, timeout=self.gather_timeout,
                                    pipeline=self.pipeline, release_own=False)
        except BaseException:
            record.release()
            raise
        if gathered is None:  # every rank but 0, or no rank had a table
            record.release()
            return
        assert isinstance(gathered, Deferred)  # with a pipeline, rank 0's table comes as a record
        gathered.on_released(record.release)
        self._emit(gathered, one_table=True)

    # -- eval ------------------------------------------------------------------------------------
    def eval_start(self, state: State, logger: Logger) -> None:
        label = state.dataloader_label or "eval"
        count = self._evals[label] = self._evals.get(label, 0) + 1
        self._active_label = label if (count - 1) % self.interval == 0 else None
        self.pipeline.discard_pass(label)  # left open only if an earlier eval raised before its end

    def eval_after_forward(self, state: State, logger: Logger) -> None:
        # After each microbatch's forward, batch and outputs belong together (at eval_batch_end
        # only the last microbatch's outputs are left).
        if self._active_label is not None:
            self._submit(state, self._active_label)

    def eval_end(self, state: State, logger: Logger) -> None:
        if self._active_label is not None:
            label, self._active_label = self._active_label, None
            if dist.get_world_size() > 1:
                self._log_ranked(label, int(state.timestamp.batch))
            else:
                self._log(label, int(state.timestamp.batch))

    # -- training batches ------------------------------------------------------------------------
    def batch_start(self, state: State, logger: Logger) -> None:
        # The batch's own step: Composer logs its loss at this step, and has moved on by batch_end.
        self._train_step = int(state.timestamp.batch)
        self._train_active = self.train_interval is not None and self._train_step % self.train_interval == 0
        if self._train_active:
            self.pipeline.discard_pass("train")

    def after_forward(self, state: State, logger: Logger) -> None:
        if self._train_active:
            self._submit(state, "train")

    def batch_end(self, state: State, logger: Logger) -> None:
        if self._train_active:
            self._log("train", self._train_step)
            self._train_active = False

    def post_close(self) -> None:
        # Composer runs the loggers' post_close first: the bus has closed the pipeline within what was
        # left of its deadline (cleanup_within_close). This covers a bus that was not closed.
        lefts = [left for bus in self.buses if (left := bus.time_left()) is not None]
        self.pipeline.close(min(lefts) if lefts else CLOSE_TIMEOUT)
