"""``SampleLogger``: Composer callback that logs prediction samples through the sample pipeline.

Replaces the ``LogPredictions`` callback of the W&B guide for Composer: instead of one ``.cpu()``
and one ``wandb.Image`` per sample on the training thread, each microbatch is handed to the
pipeline as it is, and a table per evaluator (``samples/{label}``) is logged at ``eval_end``, at step
``state.timestamp.batch``, through the bus of the ``LogBusLogger``/``WandBLogger`` in the Trainer.
"""

from __future__ import annotations

from typing import Any, Mapping

from composer.core import Callback, State
from composer.loggers import Logger

from logbus.deferred import Deferred
from logbus.records import Table
from logbus.sample_options import split_options
from logbus.sample_pipeline import SamplePipeline, pipeline_for


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
    :param policy: ``first``, ``reservoir`` (uniform over the pass, seeded), ``per_class`` (quota per
        true class) or ``hardest`` (highest loss / lowest confidence over the pass).
    :param input_key: where the inputs are in the batch (index or dict key), as in Composer's
        ``ImageVisualizer``.
    :param target_key: where the targets are in the batch.
    :param interval: log every ``interval``-th eval of each evaluator.
    :param train_interval: also log a ``samples/train`` table every ``train_interval`` training
        batches (``None``: never).
    :param extractor_options: the extractor's own options (``class_names``, ``mean``, ``std``,
        ``top_k``, ``tokenizer``...), given as keywords.
    :param pipeline_options: ``seed``, ``hardest_by``, ``max_pending_batches``, ``pinned_pool_bytes``,
        ``encode_workers``, ``image_format``, ``compress_level``, ``key_prefix``.
    """

    def __init__(self, extractor: Any = "classification", num_samples: int | None = 100, policy: str = "first", *,
                 input_key: Any = 0, target_key: Any = 1, interval: int = 1, train_interval: int | None = None,
                 **options: Any):
        for argument, value in (("interval", interval), ("train_interval", train_interval)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ValueError(f"{argument}: expected an int >= 1, got {value!r}")
        extractor_options, pipeline_options = split_options(options)
        self.pipeline: SamplePipeline = pipeline_for(extractor, extractor_options, num_samples=num_samples,
                                                     policy=policy, **pipeline_options)
        self.input_key, self.target_key = input_key, target_key
        self.interval, self.train_interval = interval, train_interval
        self.bus = None
        self._evals: dict[str, int] = {}
        self._active_label: str | None = None
        self._train_active = False
        self._train_step = 0

    # -- wiring ----------------------------------------------------------------------------------
    def init(self, state: State, logger: Logger) -> None:
        from logbus.composer import LogBusLogger

        buses = [d.bus for d in logger.destinations if isinstance(d, LogBusLogger)]
        if not buses:
            raise ValueError("SampleLogger: the Trainer needs a logbus logger in `loggers` "
                             "(logbus.composer.WandBLogger or LogBusLogger) to send samples to")
        self.bus = buses[0]
        self.bus.on_close(self.pipeline.cleanup)

    def _submit(self, state: State, label: str) -> None:
        batch = state.batch
        self.pipeline.submit(item_of(batch, self.input_key, "input_key"), item_of(batch, self.target_key, "target_key"),
                             state.outputs, label=label)

    def _log(self, label: str, step: int) -> None:
        future = self.pipeline.end_pass(label, step=step)
        self.bus.emit(Deferred(Table, future))

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
            self._log(self._active_label, int(state.timestamp.batch))
            self._active_label = None

    # -- training batches ------------------------------------------------------------------------
    def batch_start(self, state: State, logger: Logger) -> None:
        # The batch's own step: Composer logs its loss at this step, and has moved on by batch_end.
        self._train_step = int(state.timestamp.batch)
        self._train_active = bool(self.train_interval) and self._train_step % self.train_interval == 0
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
        self.pipeline.close()
