"""The sample pipeline: (a) eval-loop stall and (b) two evals + close, local backend, per variant.
The suite lives in the package (``logbus.bench.suite_pipeline``)."""

from logbus.bench.suite_pipeline import *  # noqa: F401,F403
