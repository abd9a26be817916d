"""Caller-thread cost of ``log_metrics``: logbus through Composer's Logger vs ``wandb.log``.
The suite lives in the package (``logbus.bench.suite_logging``) so ``logbus bench`` runs the same code."""

from logbus.bench.suite_logging import *  # noqa: F401,F403
