"""The built-in backends (local, wandb, tensorboard) share one rule for ranks and run names
(``logbus.plugins._backend_common``): which ranks log, ``<name>-rank<rank>`` for a rank's own run, and
the name of a run that was never started. Each test drives the real backends and reads what they wrote
(the folder on disk, the offline W&B run), and changes the shared rule to show all three follow it."""

from __future__ import annotations

import os
import re

import pytest
from wandb_reader import find_run_dirs, read_wandb_run

from logbus.plugins import _backend_common
from logbus.plugins.local import LocalBackend
from logbus.plugins.tensorboard import TensorBoardBackend
from logbus.plugins.wandb import WandBBackend
from logbus.records import Metrics, RunFinished, RunStarted


def _names_written(tmp_path, wandb_root, first_record, *, rank_zero_only: bool) -> dict[str, str | None]:
    """backend -> the name of the run it wrote (``None``: it wrote none), after ``first_record``."""
    backends = {"local": LocalBackend(root=tmp_path / "local"),
                "tensorboard": TensorBoardBackend(log_dir=tmp_path / "tb", rank_zero_only=rank_zero_only),
                "wandb": WandBBackend(project="p", rank_zero_only=rank_zero_only)}
    for backend in backends.values():
        backend.log(first_record)
        backend.log(Metrics({"loss": 1.0}, step=1))
        backend.close(RunFinished())
    runs = find_run_dirs(wandb_root)
    assert len(runs) <= 1
    return {"local": os.path.basename(backends["local"].run_dir),
            "tensorboard": os.path.basename(backends["tensorboard"].run_dir) if backends["tensorboard"].run_dir else None,
            "wandb": read_wandb_run(runs[0]).name if runs else None}


@pytest.mark.parametrize("rank", [0, 1])
def test_the_three_backends_name_a_ranks_run_alike(tmp_path, wandb_offline, rank):
    record = RunStarted(run_name="shared", rank=rank, world_size=2)
    names = _names_written(tmp_path, wandb_offline, record, rank_zero_only=False)
    assert names == dict.fromkeys(names, f"shared-rank{rank}")
    assert _backend_common.rank_run_name("shared", record, rank_zero_only=False) == f"shared-rank{rank}"


def test_the_rank_suffix_comes_from_the_shared_helper(tmp_path, wandb_offline, monkeypatch):
    # Were a backend to spell "-rank" itself again, this new suffix would not reach it.
    monkeypatch.setattr(_backend_common, "RANK_SUFFIX", ".r{rank}")
    names = _names_written(tmp_path, wandb_offline, RunStarted(run_name="shared", rank=1, world_size=2),
                           rank_zero_only=False)
    assert names == dict.fromkeys(names, "shared.r1")


def test_rank_zero_only_gates_wandb_and_tensorboard_and_the_local_backend_writes_every_rank(tmp_path, wandb_offline):
    names = _names_written(tmp_path, wandb_offline, RunStarted(run_name="shared", rank=1, world_size=2),
                           rank_zero_only=True)
    assert names == {"local": "shared-rank1", "tensorboard": None, "wandb": None}


def test_a_run_never_started_gets_the_shared_fallback_name(tmp_path, wandb_offline, monkeypatch):
    monkeypatch.setattr(_backend_common, "FALLBACK_RUN_NAME", "unnamed-%Y")
    # The first record is not RunStarted: each backend starts a run of its own, named alike.
    names = _names_written(tmp_path, wandb_offline, Metrics({"loss": 0.5}, step=0), rank_zero_only=True)
    assert all(re.fullmatch(r"unnamed-\d{4}", name) for name in names.values()), names


def test_the_wandb_drop_in_starts_no_fallback_run_before_event_init(wandb_offline):
    # Its run is started at Event.INIT on the training thread (wandb.run from then on); a fallback run
    # started earlier on the writer thread would take that run's place.
    from logbus.composer import WandBLogger

    logger = WandBLogger(project="p")
    logger.log_metrics({"loss": 1.0}, step=0)
    assert logger.bus.flush(30)
    assert not logger.wandb_backend.started and find_run_dirs(wandb_offline) == []
    assert logger.bus.close()
