"""What every built-in backend (local, wandb, tensorboard) decides the same way about its run: which
ranks log, what the run (folder) of a rank is called, and the name of a run nobody named.

Composer's convention, kept for all three: with ``rank_zero_only`` only rank 0 logs, under the run's
name; otherwise every rank logs to a run of its own, ``<name>-rank<rank>``. A third-party backend may
use these too; nothing here imports wandb, torch or TensorBoard.
"""

from __future__ import annotations

import time

from logbus.records import RunStarted

RANK_SUFFIX = "-rank{rank}"
FALLBACK_RUN_NAME = "run-%Y%m%d-%H%M%S"  # time.strftime format: a run started without RunStarted


def logs_on_this_rank(record: RunStarted, rank_zero_only: bool) -> bool:
    """Whether this process's backend writes anything: every rank, or rank 0 alone."""
    return not rank_zero_only or record.rank == 0


def rank_run_name(name: str, record: RunStarted, rank_zero_only: bool, *, single_process_too: bool = False) -> str:
    """The run (folder) name of this rank: ``name`` where one run gets everything (``rank_zero_only``,
    or a single process), ``<name>-rank<rank>`` where each rank has its own.

    :param name: the run's name (the backend's own setting, else ``record.run_name``).
    :param record: the run's start: its rank and world size.
    :param rank_zero_only: the backend's setting; ``True`` names rank 0's run ``name``.
    :param single_process_too: suffix the rank even in a one-process world (Composer's
        ``WandBLogger(rank_zero_only=False)`` names its run ``<name>-rank0`` there too).
    """
    per_rank = not rank_zero_only and (record.world_size > 1 or single_process_too)
    return name + RANK_SUFFIX.format(rank=record.rank) if per_rank else name


def fallback_run_started() -> RunStarted:
    """The start of a run for a caller that logs to a backend without starting a run first (a plain
    ``backend.log(Metrics(...))``): one process, named by the time it started."""
    return RunStarted(run_name=time.strftime(FALLBACK_RUN_NAME))
