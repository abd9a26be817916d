"""Malformed input across the public API, systematically: each bad call raises on the caller's thread,
at the call, with a message that names the argument, and costs nothing already queued.

The single-record cases of ``test_records.py`` (``BAD_INPUTS``) and the kernels' property tests in
``test_kernels.py`` are not repeated here; this table goes through the entry points users call.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from gated_recorder import GatedRecorder
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import logbus
from logbus.bus import Bus
from logbus.composer import LogBusLogger, SampleLogger
from logbus.kernels import images_to_uint8, logits_summary, segmentation_mask
from logbus.plugins.local import LocalBackend
from logbus.plugins.tensorboard import TensorBoardBackend
from logbus.plugins.wandb import WandBBackend
from logbus.records import Box, Image, Mask, Metrics, Table

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning:composer.*")


@dataclass
class Context:
    """What a bad call may go through: a plain-loop run and a Composer logger, each on a bus whose
    (gated) backend already has records queued; a real file for artifact cases."""

    run: Any
    logger: LogBusLogger
    file: Path
    tmp_path: Path


def images(n: int = 2) -> torch.Tensor:
    return torch.rand(n, 3, 4, 4)


BAD_CALLS: list = [  # (id, call, error, match), or a pytest.param of them
    # -- records, through the plain-loop Run ------------------------------------------------------
    ("metric-str", lambda c: c.run.log({"loss": "0.5"}, step=3), TypeError, r"metrics\['loss'\]: expected a real number"),
    ("metric-complex", lambda c: c.run.log({"z": torch.tensor(1 + 2j)}, step=3), TypeError, r"metrics\['z'\]"),
    ("metric-none", lambda c: c.run.log({"acc": None}, step=3), TypeError, r"metrics\['acc'\]"),
    ("step-bool", lambda c: c.run.log({"loss": 1.0}, step=True), TypeError, r"step: expected a non-negative int"),
    ("step-str", lambda c: c.run.log({"loss": 1.0}, step="3"), TypeError, r"step: expected a non-negative int"),
    ("hparams-key", lambda c: c.run.log_hyperparameters({("lr",): 0.1}), TypeError, r"hyperparameters: keys must be str"),
    ("table-rows-str", lambda c: c.run.log_table("samples/val", ["a"], "abc"), TypeError, r"rows\[0\]: expected a list"),
    ("table-key-empty-part", lambda c: c.run.log_table("samples//val", ["a"], [[1]]), ValueError,
     r"key: expected a relative key"),
    ("table-column-int", lambda c: c.run.log_table("t", ["a", 3], [[1, 2]]), TypeError, r"columns: expected a list of str"),
    ("table-cell-dict", lambda c: c.run.log_table("t", ["a"], [[1], [{"x": 1}]]), TypeError, r"rows\[1\]: cells must be"),
    ("images-channels", lambda c: c.run.log_images("inputs", torch.rand(2, 5, 4, 4)), ValueError,
     r"channels_last: False means images are \[N,C,H,W\].*images has shape \(2, 5, 4, 4\)"),
    ("images-empty", lambda c: c.run.log_images("inputs", []), ValueError, r"images: expected at least one image"),
    ("images-mask-count", lambda c: c.run.log_images("inputs", images(2), masks={"pred": np.zeros((3, 4, 4), int)}),
     ValueError, r"masks\['pred'\]: expected 2 masks"),
    ("images-key", lambda c: c.run.log_images("/abs", images(1)), ValueError, r"key: expected a relative key"),
    # Images are converted on a writer thread; every check that needs no pixel data still runs at the call.
    ("images-mask-shape", lambda c: c.run.log_images("inputs", images(2), masks={"pred": np.zeros((2, 3, 3), int)}),
     ValueError, r"masks\['pred'\]: expected shape \(4, 4\)"),
    ("images-mask-negative", lambda c: c.run.log_images("inputs", images(1), masks={"pred": np.full((4, 4), -1)}),
     ValueError, r"masks\['pred'\]: class ids must be >= 0"),
    ("images-mask-labels", lambda c: c.run.log_images("inputs", images(1), masks={"pred": np.zeros((4, 4), int)},
                                                      mask_class_labels={"sky": 0}), TypeError, r"mask_class_labels"),
    ("images-step", lambda c: c.run.log_images("inputs", images(1), step=-1), TypeError, r"step: expected a non-negative"),
    ("images-dtype", lambda c: c.run.log_images("inputs", torch.zeros(1, 3, 4, 4, dtype=torch.complex64)), TypeError,
     r"images: expected real pixel values, got dtype torch.complex64"),
    ("images-list-item", lambda c: c.run.log_images("inputs", [torch.rand(3, 4, 4), torch.rand(4, 4)]), ValueError,
     r"images: each image in a sequence must be 3-D"),
    ("artifact-missing", lambda c: c.run.log_artifact(str(c.tmp_path / "missing.pt"), "m.pt"), ValueError,
     r"file_path: expected an existing file"),
    ("artifact-name", lambda c: c.run.log_artifact(str(c.file), "../m.pt"), ValueError, r"artifact name"),
    ("artifact-aliases", lambda c: c.run.log_artifact(str(c.file), "m.pt", aliases="latest"), TypeError, r"aliases"),
    ("artifact-type", lambda c: c.run.log_artifact(str(c.file), "m.pt", type=""), TypeError, r"artifact type"),
    # -- names no backend can show or store: refused at the call, naming the argument ---------------
    ("metric-name-empty", lambda c: c.run.log({"": 1.0}, step=3), ValueError,
     r"metrics\[''\]: expected a name with a visible character, got ''"),
    ("metric-name-blank", lambda c: c.run.log({"loss": 1.0, " \t": 2.0}, step=3), ValueError,
     r"metrics\[' \\t'\]: expected a name with a visible character"),
    ("metric-name-invisible", lambda c: c.run.log({"\u200b\u200e": 1.0}, step=3), ValueError,
     r"metrics\['\\u200b\\u200e'\]: expected a name with a visible character"),
    ("metric-name-control", lambda c: c.run.log({"loss\n": 1.0}, step=3), ValueError,
     r"metrics\['loss\\n'\]: expected no control characters"),
    ("metric-name-line-separator", lambda c: c.run.log({"a\u2028b": 1.0}, step=3), ValueError,
     r"metrics\['a\\u2028b'\]: expected no control characters, line separators"),
    ("metric-name-surrogate", lambda c: c.run.log({"loss\ud800": 1.0}, step=3), ValueError,
     r"metrics\['loss\\ud800'\]: expected no control characters, line separators or lone surrogates"),
    ("logger-metric-name-blank", lambda c: c.logger.log_metrics({"  ": 0.5}, step=3), ValueError, r"metrics\['  '\]"),
    ("table-key-blank", lambda c: c.run.log_table("   ", ["a"], [[1]]), ValueError, r"key: expected a relative key"),
    ("table-key-blank-part", lambda c: c.run.log_table("samples/ /val", ["a"], [[1]]), ValueError,
     r"key: expected a relative key"),
    ("table-key-c1-control", lambda c: c.run.log_table("samples/\x85val", ["a"], [[1]]), ValueError,
     r"key: control characters are not allowed"),
    ("table-column-blank", lambda c: c.run.log_table("t", ["a", " "], [[1, 2]]), ValueError,
     r"columns\[1\]: expected a name with a visible character, got ' '"),
    ("table-column-control", lambda c: c.run.log_table("t", ["a\x00"], [[1]]), ValueError,
     r"columns\[0\]: expected no control characters"),
    ("logger-table-name-blank", lambda c: c.logger.log_table(["a"], [[1]], name=" "), ValueError,
     r"name: expected a relative key"),
    ("images-key-blank", lambda c: c.run.log_images(" ", images(1)), ValueError, r"key: expected a relative key"),
    ("images-mask-name-blank", lambda c: c.run.log_images("inputs", images(1), masks={"": np.zeros((4, 4), int)}),
     ValueError, r"masks\[''\]: expected a name with a visible character"),
    ("logger-images-name-control", lambda c: c.logger.log_images(images(1), name="in\x1bputs"), ValueError,
     r"name: control characters are not allowed"),
    ("image-mask-name-control", lambda c: Image(pixels=np.zeros((2, 2, 3), np.uint8),
                                                masks={"pred\r": Mask(np.zeros((2, 2), np.int64))}), ValueError,
     r"image.masks\['pred\\r'\]: expected no control characters"),
    ("sample-label-blank", lambda c: c.run.samples("classification").add(
        images(2), torch.zeros(2, dtype=torch.long), torch.rand(2, 10), label=" "), ValueError,
     r"label: expected a name with a visible character, got ' '"),
    ("sample-label-parent", lambda c: c.run.samples("classification").add(
        images(2), torch.zeros(2, dtype=torch.long), torch.rand(2, 10), label="../val"), ValueError,
     r"label: expected a relative key like 'samples/val' without '\.\.' or empty parts, got 'samples/\.\./val'"),
    # -- option values that cannot work, and misspelt options ----------------------------------------
    ("start-run-close-timeout-inf", lambda c: logbus.start_run("inf", backends=[GatedRecorder()],
                                                               close_timeout=float("inf")), ValueError,
     r"close_timeout: expected a number of seconds 0\.\.604800, got inf"),
    ("start-run-flush-timeout-inf", lambda c: c.run.flush(timeout=float("inf")), ValueError,
     r"timeout: expected a number of seconds 0\.\.604800 or None, got inf"),
    ("start-run-finish-timeout-nan", lambda c: c.run.finish(timeout=float("nan")), ValueError,
     r"timeout: expected a number of seconds 0\.\.604800 or None, got nan"),
    ("start-run-misspelt-option", lambda c: logbus.start_run("typo", backends=[GatedRecorder()], failure_limt=3),
     TypeError, r"logbus.start_run: expected one of its options, got 'failure_limt'; did you mean 'failure_limit'\?"),
    ("sample-logger-gather-timeout-inf", lambda c: SampleLogger(gather_timeout=float("inf")), ValueError,
     r"gather_timeout: expected a number of seconds > 0 and <= 604800, got inf"),
    ("sample-logger-misspelt-option", lambda c: SampleLogger(polcy="first"), TypeError, r"did you mean 'policy'\?"),
    # -- records made by hand ---------------------------------------------------------------------
    ("box-class-id", lambda c: Box(0, 0, 1, 1, class_id=-1), TypeError, r"box.class_id"),
    ("mask-labels", lambda c: Mask(np.zeros((2, 2), np.int64), {"cat": 1}), TypeError, r"mask_class_labels"),
    ("image-caption", lambda c: Image(pixels=np.zeros((2, 2, 3), np.uint8), caption=3), TypeError, r"image.caption"),
    ("image-boxes", lambda c: Image(pixels=np.zeros((2, 2, 3), np.uint8), boxes=[(0, 0, 1, 1)]), TypeError,
     r"image.boxes"),
    # -- Bus ------------------------------------------------------------------------------------------
    ("bus-max-pending", lambda c: Bus([GatedRecorder()], max_pending_bytes=0), ValueError, r"max_pending_bytes"),
    ("bus-failure-limit", lambda c: Bus([GatedRecorder()], failure_limit=True), TypeError,
     r"failure_limit: expected an int >= 1, got True"),
    ("bus-close-timeout", lambda c: Bus([GatedRecorder()], close_timeout="soon"), TypeError,
     r"close_timeout: expected a number of seconds 0\.\.604800, got 'soon'"),
    ("bus-options-not-mapping", lambda c: Bus([("local", "root=/tmp")]), TypeError, r"backends: expected a backend name"),
    ("bus-unknown-option", lambda c: Bus([("local", {"colour": "red"})]), TypeError, r"colour"),
    # -- backends' own arguments --------------------------------------------------------------------
    ("wandb-project", lambda c: WandBBackend(project=3), TypeError, r"project: expected a str or None, got 3"),
    ("wandb-tags", lambda c: WandBBackend(tags="a,b"), TypeError, r"tags: expected a list of str"),
    ("wandb-init-kwargs", lambda c: WandBBackend(init_kwargs=[("notes", "x")]), TypeError, r"init_kwargs"),
    ("local-root", lambda c: LocalBackend(root=3), TypeError, r"root: expected a folder path"),
    ("local-format", lambda c: LocalBackend(image_format="gif"), ValueError, r"image_format"),
    ("tensorboard-log-dir", lambda c: TensorBoardBackend(log_dir=["tb"]), TypeError, r"log_dir"),
    ("tensorboard-flush", lambda c: TensorBoardBackend(flush_interval=0), ValueError, r"flush_interval"),
    ("tensorboard-rows", lambda c: TensorBoardBackend(table_image_rows=True), TypeError,
     r"table_image_rows: expected an int >= 1, got True"),
    # -- the Composer adapter -----------------------------------------------------------------------
    ("logger-backends", lambda c: LogBusLogger(backends="local"), TypeError, r"backends: expected a list"),
    ("logger-budget", lambda c: LogBusLogger(backends=["local"], max_pending_bytes=-1), ValueError, r"max_pending_bytes"),
    ("logger-metric", lambda c: c.logger.log_metrics({"loss/train": [0.5]}, step=3), TypeError,
     r"metrics\['loss/train'\]"),
    ("logger-table-name", lambda c: c.logger.log_table(["a"], [[1]], name="../predictions"), ValueError,
     r"name: expected a relative key"),
    ("logger-images", lambda c: c.logger.log_images("not an image", name="inputs"), TypeError, r"images: expected"),
    ("logger-images-table-channels", lambda c: c.logger.log_images(torch.rand(2, 3, 4, 5), name="inputs", channels_last=True,
                                                                   use_table=True), ValueError, r"channels_last: True"),
    # -- SampleLogger and its first bad batch -------------------------------------------------------
    ("sample-logger-policy", lambda c: SampleLogger(policy="worst"), ValueError, r"policy: expected one of"),
    ("sample-logger-all-needs-first", lambda c: SampleLogger(num_samples=None, policy="reservoir"), ValueError,
     r"num_samples: None"),
    ("sample-logger-gather-timeout", lambda c: SampleLogger(gather_timeout=0), ValueError, r"gather_timeout"),
    ("sample-logger-extractor", lambda c: SampleLogger("no-such-extractor"), KeyError, r"unknown extractor"),
    ("sample-logger-extractor-object", lambda c: SampleLogger(3), TypeError, r"extractor: expected a registered extractor"),
    ("sample-logger-num-samples-str", lambda c: SampleLogger(num_samples="10"), TypeError, r"num_samples: expected an int"),
    # Every option is checked at construction, not on the worker at the first table.
    ("sample-logger-key-prefix-empty", lambda c: SampleLogger(key_prefix=""), ValueError, r"key_prefix: expected a relative key"),
    ("sample-logger-key-prefix-parent", lambda c: SampleLogger(key_prefix="../x"), ValueError,
     r"key_prefix: expected a relative key"),
    ("sample-logger-key-prefix-int", lambda c: SampleLogger(key_prefix=3), TypeError, r"key_prefix: expected a non-empty str"),
    ("sample-logger-compress-level-42", lambda c: SampleLogger(compress_level=42), ValueError,
     r"compress_level: expected an int 0..9, got 42"),
    ("sample-logger-compress-level-fast", lambda c: SampleLogger(compress_level="fast"), TypeError,
     r"compress_level: expected an int 0\.\.9, got 'fast'"),
    ("sample-logger-image-format", lambda c: SampleLogger(image_format="gif"), ValueError, r"image_format: expected 'png'"),
    ("sample-logger-hardest-by", lambda c: SampleLogger(hardest_by="margin"), ValueError, r"hardest_by: expected 'loss'"),
    ("sample-logger-seed", lambda c: SampleLogger(policy="reservoir", seed="7"), TypeError, r"seed: expected an int"),
    ("sample-logger-max-pending-bool", lambda c: SampleLogger(max_pending_batches=True), TypeError,
     r"max_pending_batches: expected an int"),
    ("sample-logger-pinned-bytes", lambda c: SampleLogger(pinned_pool_bytes=2.5e8), TypeError,
     r"pinned_pool_bytes: expected an int"),
    ("sample-logger-encode-workers", lambda c: SampleLogger(encode_workers=0), ValueError,
     r"encode_workers: expected an int >= 1"),
    ("sample-logger-interval-str", lambda c: SampleLogger(interval="2"), TypeError, r"interval: expected an int"),
    ("sample-logger-train-interval", lambda c: SampleLogger(train_interval=0), ValueError,
     r"train_interval: expected an int >= 1"),
    ("sample-logger-top-k", lambda c: SampleLogger(top_k=0), ValueError, r"top_k: expected an int >= 1"),
    ("sample-logger-value-range", lambda c: SampleLogger(value_range="0..1"), ValueError, r"value_range: expected one of"),
    ("sample-logger-channels-last", lambda c: SampleLogger("segmentation", channels_last="yes"), TypeError,
     r"channels_last: expected True, False or None"),
    ("sample-logger-tokens-max-chars", lambda c: SampleLogger("tokens", max_chars=0), ValueError,
     r"max_chars: expected an int >= 1"),
    ("sample-logger-tokens-shift", lambda c: SampleLogger("tokens", shift="no"), TypeError, r"shift: expected True or False"),
    ("sample-stream-key-prefix", lambda c: c.run.samples("classification", key_prefix="a//b"), ValueError,
     r"key_prefix: expected a relative key"),
    ("first-batch-inputs-3d", lambda c: SampleLogger().pipeline.submit(torch.rand(2, 4, 4), torch.zeros(2, dtype=torch.long),
                                                                       torch.rand(2, 10)), ValueError, r"inputs: expected a 4-D"),
    ("first-batch-targets-list", lambda c: SampleLogger().pipeline.submit(images(2), [0, 1], torch.rand(2, 10)), TypeError,
     r"targets: expected a tensor"),
    ("first-batch-outputs-size", lambda c: c.run.samples("classification").add(images(2), torch.zeros(2, dtype=torch.long),
                                                                                torch.rand(3, 10)), ValueError,
     r"outputs: expected batch size 2"),
    ("first-batch-int-logits", lambda c: c.run.samples("classification").add(images(2), torch.zeros(2, dtype=torch.long),
                                                                              torch.ones(2, 10, dtype=torch.long)),
     TypeError, r"outputs: expected floating-point logits"),
    # -- logbus.kernels -----------------------------------------------------------------------------
    ("kernel-images-array", lambda c: images_to_uint8(np.zeros((1, 3, 2, 2), np.float32)), TypeError,
     r"images: expected a torch.Tensor"),
    ("kernel-images-mean", lambda c: images_to_uint8(images(1), mean=[0.5, 0.5]), ValueError, r"mean: expected 3 values"),
    ("kernel-images-range", lambda c: images_to_uint8(images(1), value_range="0..1"), ValueError,
     r"value_range: expected one of"),
    ("kernel-logits-k", lambda c: logits_summary(torch.rand(2, 3), k=4), ValueError, r"k: expected 1 <= k <= 3"),
    ("kernel-logits-impl", lambda c: logits_summary(torch.rand(2, 3), impl="cuda"), ValueError, r"impl: expected one of"),
    ("kernel-segmentation-dims", lambda c: segmentation_mask(torch.rand(2, 3)), ValueError, r"logits: expected a 3-D"),
]


@pytest.fixture
def context(tmp_path, logbus_dir):
    recorders = GatedRecorder(), GatedRecorder()
    run = logbus.start_run("bad-input", backends=[recorders[0]])
    logger = LogBusLogger(backends=[recorders[1]])
    file = tmp_path / "weights.pt"
    file.write_bytes(b"weights")
    yield Context(run=run, logger=logger, file=file, tmp_path=tmp_path), recorders
    for recorder in recorders:
        recorder.gate.set()
    run.finish(timeout=10)
    logger.bus.close(timeout=10)


def _case_id(case) -> str:
    return case.values[0] if hasattr(case, "values") else case[0]


def _as_param(case):
    if hasattr(case, "values"):
        return pytest.param(*case.values[1:], marks=case.marks, id=case.values[0])
    return pytest.param(*case[1:], id=case[0])


@pytest.mark.parametrize("call, error, match", [_as_param(case) for case in BAD_CALLS])
def test_a_bad_call_raises_at_the_call_naming_the_argument_and_loses_nothing_queued(context, call, error, match):
    ctx, recorders = context
    for step in range(3):
        ctx.run.log({"loss": float(step)}, step=step)
        ctx.logger.log_metrics({"loss": float(step)}, step=step)
    caller = threading.current_thread()
    with pytest.raises(error, match=match) as raised:
        call(ctx)
    # Raised here, at the call: the frame that raised runs on this thread, not a writer or worker.
    assert threading.current_thread() is caller and raised.tb is not None
    ctx.run.log({"loss": 3.0}, step=3)  # the bus goes on after the refusal
    ctx.logger.log_metrics({"loss": 3.0}, step=3)
    for recorder in recorders:
        recorder.gate.set()
    assert ctx.run.flush(timeout=30) and ctx.logger.bus.flush(timeout=30)
    for recorder in recorders:
        assert recorder.steps("loss") == [0, 1, 2, 3]
    assert all(not backend["failures"] and not backend["dropped"]
               for bus in (ctx.run.bus, ctx.logger.bus) for backend in bus.stats()["backends"].values())


def test_the_table_covers_every_part_of_the_public_api():
    ids = [_case_id(case) for case in BAD_CALLS]
    assert len(ids) == len(set(ids)) >= 20
    for part in ("metric", "step", "hparams", "table", "images", "artifact", "box", "mask", "image-", "bus", "wandb",
                 "local", "tensorboard", "logger", "sample-logger", "first-batch", "kernel"):
        assert any(name.startswith(part) for name in ids), part


# -- properties of record validation ---------------------------------------------------------------
GOOD_VALUES = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(-10**12, 10**12),
                        st.builds(np.float32, st.floats(width=32)), st.builds(torch.tensor, st.floats(width=32)))
BAD_VALUES = st.one_of(st.text(max_size=5), st.none(), st.booleans(), st.complex_numbers(allow_nan=False),
                       st.lists(st.floats(), max_size=3), st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
                       st.binary(max_size=4), st.builds(lambda n: torch.zeros(n), st.integers(2, 4)),
                       st.builds(lambda n: np.ones(n), st.integers(2, 4)), st.just(torch.tensor(True)),
                       st.just(torch.tensor(1 + 1j)))


# Names any backend shows: a visible character, no control characters, separators or lone surrogates.
NAMES = st.text(st.characters(blacklist_categories=("Cc", "Cf", "Cs", "Zl", "Zp")), min_size=1, max_size=10).filter(str.strip)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(good=st.dictionaries(NAMES, GOOD_VALUES, max_size=6),
       bad_key=NAMES, bad_value=BAD_VALUES, position=st.integers(0, 6))
def test_metrics_with_one_bad_value_always_raise_naming_its_key(good, bad_key, bad_value, position):
    items = [(key, value) for key, value in good.items() if key != bad_key]
    items.insert(min(position, len(items)), (bad_key, bad_value))
    with pytest.raises(TypeError) as raised:
        Metrics(dict(items), step=0)
    assert str(raised.value).startswith(f"metrics[{bad_key!r}]: expected a real number"), raised.value


CELLS = st.one_of(st.integers(), st.floats(), st.text(max_size=4), st.none(), st.booleans())
BAD_CELLS = st.one_of(st.lists(st.integers(), max_size=2), st.dictionaries(st.text(max_size=2), st.integers(), max_size=1),
                      st.binary(max_size=3), st.just(object()), st.just(np.zeros(2)))


@settings(max_examples=150, deadline=None)
@given(width=st.integers(0, 5),
       rows=st.lists(st.tuples(st.integers(0, 6), st.lists(CELLS, min_size=6, max_size=6), st.one_of(st.none(), BAD_CELLS),
                               st.integers(0, 5)), max_size=8))
def test_tables_of_any_shape_are_kept_whole_or_refused_at_the_first_bad_row(width, rows):
    columns = [f"c{i}" for i in range(width)]
    table_rows, first_bad = [], None
    for index, (row_width, cells, bad_cell, bad_at) in enumerate(rows):
        row = cells[:row_width]
        if bad_cell is not None and row:
            row[bad_at % len(row)] = bad_cell
        bad = len(row) != width or (bad_cell is not None and bool(row))
        if bad and first_bad is None:
            first_bad = index
        table_rows.append(row)
    if first_bad is None:
        table = Table("t", columns, table_rows)
        assert table.rows == [list(row) for row in table_rows] and table.columns == columns
    else:
        with pytest.raises((TypeError, ValueError), match=rf"^rows\[{first_bad}\]: "):
            Table("t", columns, table_rows)
