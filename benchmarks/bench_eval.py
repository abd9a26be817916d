"""Composer eval time: no sample logging / the W&B guide's callback / ``SampleLogger``.
The suite lives in the package (``logbus.bench.suite_eval``) so ``logbus bench`` runs the same code."""

from logbus.bench.suite_eval import *  # noqa: F401,F403
