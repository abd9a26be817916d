"""The ``jsonl-recorder`` backend gets the records of a real run, in order, through ``logbus_run``."""

from __future__ import annotations

import json

import pytest
from logbus.records import REDACTED

import logbus_example_plugin


def read(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_the_plugin_registers_a_backend_and_an_extractor(register_plugin):
    info = register_plugin(logbus_example_plugin)
    assert info.hooks == ["register_backends", "register_extractors"]
    assert info.registers == ["backend:jsonl-recorder", "extractor:regression"]


def test_every_record_arrives_in_order(register_plugin, logbus_run, recording_backend, tmp_path):
    register_plugin(logbus_example_plugin)
    path = tmp_path / "records.jsonl"
    with logbus_run("demo", backends=[("jsonl-recorder", {"path": path})], config={"lr": 0.1, "api_key": "s3cret"}) as run:
        run.log_hyperparameters({"batch_size": 8})
        run.log({"loss": 1.0}, step=1)
        run.log_table("predictions", ["a"], [[1], [2]], step=2)
        run.log({"loss": 0.5}, step=3)

    lines = read(path)
    # The plugin saw exactly what the recording backend next to it saw, then the end of the run.
    assert [line["type"] for line in lines] == recording_backend.types() + ["RunFinished"]
    assert recording_backend.types() == ["RunStarted", "Hyperparameters", "Metrics", "Table", "Metrics"]
    started, hyperparameters, first, table, second, finished = lines
    assert started == {"type": "RunStarted", "run_name": "demo", "config": {"lr": 0.1, "api_key": REDACTED}}
    assert hyperparameters["values"] == {"batch_size": 8}
    assert [(first["step"], first["values"]), (second["step"], second["values"])] == recording_backend.metrics()
    assert table == {"type": "Table", "key": "predictions", "step": 2, "columns": ["a"], "rows": 2}
    assert finished == {"type": "RunFinished", "exit_code": 0, "reason": None}
    assert recording_backend.finished.exit_code == 0


def test_a_run_that_raises_is_recorded_as_failed(register_plugin, logbus_run, recording_backend, tmp_path):
    register_plugin(logbus_example_plugin)
    path = tmp_path / "records.jsonl"
    with pytest.raises(RuntimeError, match="diverged"):
        with logbus_run(backends=[("jsonl-recorder", {"path": path})]) as run:
            run.log({"loss": float("inf")}, step=1)
            raise RuntimeError("diverged")
    assert read(path)[-1] == {"type": "RunFinished", "exit_code": 1, "reason": "failed"}
    assert recording_backend.finished.exit_code == 1


def test_the_path_may_come_from_the_environment(register_plugin, logbus_run, tmp_path, monkeypatch):
    register_plugin(logbus_example_plugin)
    monkeypatch.setenv(logbus_example_plugin.PATH_ENV, str(tmp_path / "from-env.jsonl"))
    with logbus_run(backends=["jsonl-recorder"]) as run:
        run.log({"loss": 1.0}, step=0)
    assert [line["type"] for line in read(tmp_path / "from-env.jsonl")] == ["RunStarted", "Metrics", "RunFinished"]


def test_without_a_path_the_error_says_how_to_give_one(register_plugin, logbus_run, monkeypatch):
    register_plugin(logbus_example_plugin)
    monkeypatch.delenv(logbus_example_plugin.PATH_ENV, raising=False)
    # The factory runs on the caller's thread: the mistake surfaces where the run is started.
    with pytest.raises(ValueError, match="give the path option or set \\$LOGBUS_EXAMPLE_RECORDER_PATH"):
        logbus_run(backends=["jsonl-recorder"])
