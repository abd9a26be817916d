"""Per-row cost of a sample table in the W&B backend: a repeat eval of the same images against a first
eval. The suite lives in the package (``logbus.bench.suite_wandb_tables``), as the other suites do."""

from logbus.bench.suite_wandb_tables import *  # noqa: F401,F403
