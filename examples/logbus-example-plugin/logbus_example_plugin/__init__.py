"""An example logbus plugin: a backend and a sample extractor, registered the way any plugin is.

- ``jsonl-recorder`` (backend) writes one JSON line per record it gets. The whole backend contract is
  ``log(record)``, ``close(finish)`` and an optional ``supports`` set of extra record types.
- ``regression`` (extractor) logs samples of models that predict one number per sample: rows
  ``id, target, prediction, abs_error``. It lives in ``logbus_example_plugin.regression``, which
  imports torch; this module does not, because ``logbus plugins`` imports every plugin module and
  should stay fast. The factory imports it on first use.

Copy this package to start your own; ``logbus.hookspecs`` has the contracts.
"""

from __future__ import annotations

import json
import os

import logbus
from logbus.records import Hyperparameters, Metrics, RunFinished, RunStarted, Table, as_float

PATH_ENV = "LOGBUS_EXAMPLE_RECORDER_PATH"


class JsonlRecorder:
    """Appends ``{"type": <record type>, ...summary}`` lines to ``path`` (default: ``$LOGBUS_EXAMPLE_RECORDER_PATH``).

    The factory runs on the caller's thread, so it only checks its options; ``log`` and ``close`` run
    on this backend's own writer thread, in order, and may take their time.
    """

    supports = frozenset({Table})  # extra record types; RunStarted, Metrics and Hyperparameters always come

    def __init__(self, path: str | os.PathLike | None = None):
        path = path if path is not None else os.environ.get(PATH_ENV)
        if not path:
            raise ValueError(f"jsonl-recorder: give the path option or set ${PATH_ENV}")
        self.path = os.fspath(path)

    def log(self, record) -> None:
        self._write(type(record).__name__, _summary(record))

    def close(self, finish: RunFinished) -> None:
        self._write("RunFinished", {"exit_code": finish.exit_code, "reason": finish.reason})

    def _write(self, type_name: str, summary: dict) -> None:
        # Open, append one line, close: simple, and a crash loses at most the line being written.
        with open(self.path, "a", encoding="utf-8") as file:
            file.write(json.dumps({"type": type_name, **summary}, default=str) + "\n")


def _summary(record) -> dict:
    """A JSON-able summary. Records arrive validated, with secret-looking config values redacted."""
    if isinstance(record, RunStarted):
        return {"run_name": record.run_name, "config": dict(record.config)}
    if isinstance(record, Metrics):  # values may be tensors: as_float reads them here, off the training thread
        return {"step": record.step, "values": {name: as_float(v) for name, v in record.values.items()}}
    if isinstance(record, Hyperparameters):
        return {"values": dict(record.values)}
    if isinstance(record, Table):
        return {"key": record.key, "step": record.step, "columns": list(record.columns), "rows": len(record.rows)}
    return {}


@logbus.hookimpl
def register_backends(register):
    register("jsonl-recorder", JsonlRecorder, description="example: every record as one JSON line in a file")


def regression_extractor(**options):
    """The ``regression`` extractor's factory: imports torch (through its module) only when used."""
    from logbus_example_plugin.regression import RegressionExtractor

    return RegressionExtractor(**options)


@logbus.hookimpl
def register_extractors(register):
    register("regression", regression_extractor,
             description="example: target, prediction and absolute error of scalar regressors")
