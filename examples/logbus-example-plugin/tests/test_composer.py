"""The plugin inside a real Composer ``Trainer`` (``tiny_composer_run``): the backend behind a
``LogBusLogger``, and the extractor behind a ``SampleLogger``."""

from __future__ import annotations

import json

import torch
import torch.nn.functional as F
from composer.models import ComposerModel
from logbus.composer import LogBusLogger, SampleLogger
from torchmetrics import MeanAbsoluteError

import logbus_example_plugin

LOSS = "loss/train/total"
SUPPORTED = {"RunStarted", "Hyperparameters", "Metrics", "Table"}  # what jsonl-recorder takes


def read(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_the_backend_gets_what_composer_logs(register_plugin, tiny_composer_run, recording_backend, tmp_path):
    register_plugin(logbus_example_plugin)
    path = tmp_path / "records.jsonl"
    logger = LogBusLogger(backends=[("jsonl-recorder", {"path": path}), recording_backend])
    tiny_composer_run(loggers=[logger], callbacks=[SampleLogger("classification", num_samples=8)], max_duration="2ba")

    lines = read(path)
    assert [line["type"] for line in lines] == [t for t in recording_backend.types() if t in SUPPORTED] + ["RunFinished"]
    assert lines[0] == {"type": "RunStarted", "run_name": "tiny-composer-run", "config": {}}
    assert lines[-1] == {"type": "RunFinished", "exit_code": 0, "reason": None}
    metrics = [(line["step"], line["values"]) for line in lines if line["type"] == "Metrics"]
    assert metrics == recording_backend.metrics()
    assert [step for step, _ in recording_backend.metrics(LOSS)] == [0, 1]
    hyperparameters = {k: v for line in lines if line["type"] == "Hyperparameters" for k, v in line["values"].items()}
    assert hyperparameters["rank_zero_seed"] == 0
    # Composer evaluates at the end of fit; the sample table lands at that step.
    tables = [line for line in lines if line["type"] == "Table"]
    assert [(t["key"], t["step"], t["rows"]) for t in tables] == [("samples/eval", 2, 8)]
    assert tables[0]["columns"] == recording_backend.tables("samples/eval")[0].columns


class DigitRegressor(ComposerModel):
    """Predicts a digit's value as one number: a model the ``regression`` extractor fits."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 1))
        self.mae = MeanAbsoluteError()

    def forward(self, batch):
        return self.net(batch[0])  # [N, 1]

    def loss(self, outputs, batch):
        return F.mse_loss(outputs[:, 0], batch[1].float())

    def eval_forward(self, batch, outputs=None):
        return outputs if outputs is not None else self.forward(batch)

    def update_metric(self, batch, outputs, metric):
        metric.update(outputs[:, 0], batch[1].float())

    def get_metrics(self, is_train=False):
        return {} if is_train else {"MAE": self.mae}


def test_the_extractor_logs_samples_of_a_composer_regressor(register_plugin, tiny_composer_run, recording_backend):
    register_plugin(logbus_example_plugin)
    model = DigitRegressor()
    tiny_composer_run(model=model, optimizers=torch.optim.SGD(model.parameters(), lr=0.01),
                      callbacks=[SampleLogger("regression", num_samples=6, policy="hardest")])

    (table,) = recording_backend.tables("samples/eval")
    assert table.step == 2 and table.columns == ["id", "target", "prediction", "abs_error"]
    rows = recording_backend.rows("samples/eval")
    assert len(rows) == 6
    assert all(row["target"] in range(10) for row in rows)  # the digits' labels, as numbers
    errors = [row["abs_error"] for row in rows]
    assert errors == sorted(errors, reverse=True)  # hardest first
    for row in rows:
        assert row["abs_error"] == abs(row["prediction"] - row["target"]) or abs(
            row["abs_error"] - abs(row["prediction"] - row["target"])) < 1e-5
    assert recording_backend.metrics("metrics/eval/MAE")  # Composer's own eval metric went through too
