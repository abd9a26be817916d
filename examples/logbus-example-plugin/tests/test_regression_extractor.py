"""The ``regression`` extractor produces the right rows through the real sample pipeline."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
from logbus.bus import create_extractor
from logbus.samples import pipeline_for

import logbus_example_plugin

COLUMNS = ["id", "target", "prediction", "abs_error"]


@pytest.fixture(autouse=True)
def plugin(register_plugin):
    return register_plugin(logbus_example_plugin)


def table_of(pipeline, batches, *, label="eval", step=0):
    """Submits ``(targets, predictions)`` batches (with inputs the rows do not show) and returns the
    pass's table, as ``SampleLogger`` and ``run.samples`` do."""
    try:
        for targets, predictions in batches:
            pipeline.submit(torch.zeros(len(targets), 3), targets, predictions, label=label)
        return pipeline.end_pass(label, step=step).result(timeout=60)
    finally:
        pipeline.cleanup()


def test_rows_hold_target_prediction_and_absolute_error():
    targets = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0])
    predictions = torch.tensor([[1.5], [2.0], [2.0], [4.25], [7.0]])  # [N, 1], as from a Linear(..., 1) head
    table = table_of(pipeline_for("regression", num_samples=None),
                     [(targets[:3], predictions[:3]), (targets[3:], predictions[3:])], step=12)
    assert (table.key, table.step, table.columns) == ("samples/eval", 12, COLUMNS)
    assert table.rows == [[0, 1.0, 1.5, 0.5], [1, 2.0, 2.0, 0.0], [2, 3.0, 2.0, 1.0], [3, 4.0, 4.25, 0.25],
                          [4, 5.0, 7.0, 2.0]]


def test_hardest_keeps_the_largest_errors_of_the_pass_diverged_samples_first():
    generator = torch.Generator().manual_seed(0)
    targets = torch.randn(40, generator=generator)
    predictions = targets + torch.randn(40, generator=generator)
    predictions[17] = float("nan")
    table = table_of(pipeline_for("regression", num_samples=5, policy="hardest"),
                     [(targets[i:i + 8], predictions[i:i + 8]) for i in range(0, 40, 8)])
    errors = (predictions - targets).abs().nan_to_num(float("inf"))
    expected = errors.argsort(descending=True)[:5].tolist()
    assert expected[0] == 17
    assert [row[0] for row in table.rows] == expected
    assert table.rows[0] == [17, pytest.approx(targets[17].item()), None, None]  # not finite: empty cells
    for sample_id, target, prediction, error in table.rows[1:]:
        assert error == pytest.approx(abs(prediction - target), abs=1e-6)
        assert prediction == pytest.approx(predictions[sample_id].item())


def test_integer_targets_bfloat16_predictions_and_rounding():
    table = table_of(pipeline_for("regression", {"decimals": 2}, num_samples=None),
                     [(torch.tensor([3, 4]), torch.tensor([3.14159, 3.5], dtype=torch.bfloat16))])
    assert table.rows == [[0, 3.0, 3.14, 0.14], [1, 4.0, 3.5, 0.5]]  # bfloat16 3.14159 is 3.140625


@pytest.mark.parametrize("targets, outputs, message", [
    (torch.zeros(4), torch.zeros(4, 2), r"outputs: expected predictions, one number per sample .* shape \(4, 2\)"),
    (torch.zeros(4), torch.zeros(4, dtype=torch.long), "outputs: expected floating-point predictions"),
    (torch.zeros(4), {"logits": torch.zeros(4)}, "outputs: expected predictions as a tensor"),
    (torch.zeros(3), torch.zeros(4), r"targets: expected batch size 4 \(as the outputs\), got shape \(3,\)"),
    (torch.zeros(4, 2), torch.zeros(4), "targets: expected targets, one number per sample"),
    ([1.0, 2.0, 3.0, 4.0], torch.zeros(4), "targets: expected targets as a tensor"),
], ids=["two-outputs", "integer-outputs", "mapping", "batch-size", "two-targets", "list-targets"])
def test_a_bad_batch_fails_on_the_callers_thread_naming_the_argument(targets, outputs, message):
    pipeline = pipeline_for("regression")
    try:
        with pytest.raises((TypeError, ValueError), match=message):
            pipeline.submit(torch.zeros(4, 3), targets, outputs)
        assert pipeline.stats.batches_submitted == 0
    finally:
        pipeline.cleanup()


def test_check_reads_shapes_only():
    # Meta tensors have shapes and dtypes but no data: reading a value (a device sync on CUDA) would raise.
    inputs, targets, predictions = (torch.empty(4, 3, device="meta"), torch.empty(4, device="meta"),
                                    torch.empty(4, 1, device="meta"))
    kept = create_extractor("regression").check(inputs, targets, predictions)
    assert [tuple(t.shape) for t in kept] == [(4, 0), (4,), (4,)]


def test_a_bad_option_is_named():
    with pytest.raises(ValueError, match="decimals: expected an int >= 0 or None, got -1"):
        pipeline_for("regression", {"decimals": -1})
    with pytest.raises(ValueError, match="policy: 'per_class' needs an extractor with one class per sample"):
        pipeline_for("regression", policy="per_class")


def test_a_run_logs_the_table_at_its_step(logbus_run, recording_backend):
    with logbus_run() as run:
        samples = run.samples("regression", num_samples=None)
        samples.add(torch.zeros(2, 3), torch.tensor([1.0, 2.0]), torch.tensor([1.0, 3.0]), label="val")
        run.log({"val/mae": 0.5}, step=7)
        samples.log("val", step=7)
    assert [table.step for table in recording_backend.tables("samples/val")] == [7]
    assert recording_backend.rows("samples/val") == [{"id": 0, "target": 1.0, "prediction": 1.0, "abs_error": 0.0},
                                                     {"id": 1, "target": 2.0, "prediction": 3.0, "abs_error": 1.0}]


def test_importing_the_plugin_does_not_import_torch():
    # `logbus plugins` imports every plugin module: the extractor's module (and torch) load on first use.
    package_root = os.path.dirname(os.path.dirname(logbus_example_plugin.__file__))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")]))}
    code = ("import sys, logbus_example_plugin; "
            "print(sorted(m for m in ('torch', 'logbus_example_plugin.regression') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
