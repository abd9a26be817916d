"""Every benchmark run of this folder writes what it measured to ``benchmarks/results/`` as JSON, one
file per suite and machine kind (``logbus.bench.results``); ``$LOGBUS_BENCH_RESULTS`` names another
folder. The docs' benchmark tables are rendered from those files
(``python -m logbus.bench.tables --update docs/benchmarks.md``). A run under ``--benchmark-disable`` (``make
test``) measures nothing and writes nothing.
"""

from __future__ import annotations

import os
from pathlib import Path

from logbus.bench.results import RESULTS_ENV, ResultsCollector

HERE = Path(__file__).resolve().parent


def pytest_configure(config):
    folder = os.environ.get(RESULTS_ENV) or HERE / "results"
    config.pluginmanager.register(ResultsCollector(folder, root=HERE.parent), "logbus-bench-results")
