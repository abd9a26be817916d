"""Multi-process runs on Composer's distributed engine: a real 2-process gloo group on the CPU.

Each test starts this file as a script once per rank, with the environment Composer's launcher sets
(``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``LOCAL_WORLD_SIZE``, ``NODE_RANK``, ``MASTER_ADDR``,
``MASTER_PORT``); the ``Trainer`` initialises the process group. Every rank writes what it saw to a
JSON file, with the collectives logbus called in it (``LogbusCollectives``); this process reads the
offline W&B runs back with ``wandb_reader`` and the ranks' local folders with ``logbus.read_table``.
"""

from __future__ import annotations

import io
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest

WORLD_SIZE = 2
EVAL_SIZE = 64  # 32 samples per rank, 2 eval batches of 16
NUM_SAMPLES = 10  # rows each rank's "first" policy keeps
EPOCHS = 2  # 2 training batches each: checkpoints and evals at ba2 and ba4
RANK_TIMEOUT = 100  # seconds a rank may take, start-up included (about 15 here); a hang fails the test

ARTIFACT_WARNING = "When logging artifacts, `rank_zero_only` should be set to False"
DIST_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "NODE_RANK", "MASTER_ADDR", "MASTER_PORT")


# -- one rank (runs in its own process) ------------------------------------------------------------
class FailingBackend:
    """A third-party backend that raises on every record, on one rank only."""

    name = "flaky"

    def __init__(self, fail_on_rank: int):
        self.failing = int(os.environ["RANK"]) == fail_on_rank

    def log(self, record) -> None:
        if self.failing:
            raise RuntimeError(f"flaky backend: cannot log {type(record).__name__}")

    def close(self, finish) -> None:
        if self.failing:
            raise RuntimeError("flaky backend: cannot close")


class LogbusMessages(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def sabotage(encoder, evals: list[int]) -> None:
    """On this rank, the image files of the first eval cannot be written (its pipeline fails that
    pass), and those of the second take a second each (its pipeline is late)."""
    write = encoder._write

    def sabotaged(pixels, name):
        if evals[0] == 1:
            raise OSError("No space left on device (test)")
        time.sleep(1.0)
        return write(pixels, name)

    encoder._write = sabotaged


def eval_set():
    from logbus.demo import load_digits

    images, labels = load_digits()
    return images[-EVAL_SIZE:], labels[-EVAL_SIZE:]


class TurningEvalSet:
    """The eval set turned by ``turn`` samples, set to the eval's number less one at each eval's start:
    ``DistributedSampler`` deals position ``p`` to rank ``p % 2``, so at the second eval every sample is on
    the other rank (the sample key must follow it there)."""

    def __init__(self, images, labels):
        self.images, self.labels, self.turn = images, labels, 0

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, position: int):
        sample = (position + self.turn) % len(self.images)
        return self.images[sample], self.labels[sample]


class LogbusCollectives:
    """Counts the ``torch.distributed`` collectives that logbus code calls in this process, and the bytes
    this rank hands to ``gather`` (the tensor it sends, as ``gather_object`` pads it), through the
    interpreter's profiling hook (``sys.setprofile``): the real calls are observed, nothing is replaced.
    A collective counts when a logbus module is on its call stack (Composer's and torchmetrics' own
    collectives are not logbus's); the ones ``gather_object`` makes inside are counted under their names."""

    WATCHED = ("gather", "gather_object", "all_gather", "all_gather_object", "all_gather_into_tensor", "broadcast",
               "broadcast_object_list", "all_reduce", "reduce", "scatter", "scatter_object_list", "send", "isend",
               "all_to_all", "barrier")

    def __init__(self):
        import inspect

        import torch.distributed.distributed_c10d as c10d

        self.names = {inspect.unwrap(getattr(c10d, name)).__code__: name for name in self.WATCHED}
        self.calls: dict[str, int] = {}
        self.gather_bytes = 0

    def __call__(self, frame, event, arg) -> None:
        if event != "call":
            return
        name = self.names.get(frame.f_code)
        if name is None:
            return
        caller = frame.f_back
        while caller is not None and not caller.f_globals.get("__name__", "").startswith("logbus."):
            caller = caller.f_back
        if caller is None:
            return
        self.calls[name] = self.calls.get(name, 0) + 1
        if name == "gather":
            tensor = frame.f_locals["tensor"]
            self.gather_bytes += tensor.numel() * tensor.element_size()


def run_rank(config: dict[str, Any]) -> None:
    import torch
    from composer import Callback, Trainer
    from composer.models import ComposerClassifier
    from composer.utils import dist
    from torch.utils.data import DataLoader, TensorDataset

    from logbus.composer import LogBusLogger, SampleLogger, WandBLogger
    from logbus.demo import DigitsCNN, load_digits

    rank = int(os.environ["RANK"])
    messages = LogbusMessages()
    logging.getLogger("logbus").addHandler(messages)
    seen_warnings: list[str] = []
    show = warnings.showwarning

    def record_warning(message, category, *args, **kwargs):  # from any thread, the writer threads too
        seen_warnings.append(f"{category.__name__}: {message}")
        show(message, category, *args, **kwargs)

    warnings.showwarning = record_warning
    warnings.simplefilter("always", UserWarning)

    class RankFileUpload(Callback):
        """Each rank uploads a file of its own at every epoch end, as sharded checkpoints are: Composer's
        own (monolithic) checkpoints are written by rank 0 only."""

        def epoch_checkpoint(self, state, logger):
            path = Path(config["folder"]) / f"shard-ep{int(state.timestamp.epoch)}-rank{rank}.pt"
            torch.save({"rank": rank}, path)
            logger.upload_file(remote_file_name=f"shards/{path.name}", file_path=path)

    class CountEvals(Callback):
        def __init__(self):
            self.evals = [0]

        def eval_start(self, state, logger):
            self.evals[0] += 1
            if isinstance(evaluation, TurningEvalSet):
                evaluation.turn = self.evals[0] - 1

    if config.get("node_local"):  # each rank's local runs on a disk of its own, as on a node-local disk
        os.environ["LOGBUS_DIR"] = str(Path(config["folder"], f"node{rank}"))
    collectives = LogbusCollectives()
    sys.setprofile(collectives)  # this thread: the training thread, where Composer's events run
    images, labels = load_digits()
    train = TensorDataset(images[:256], labels[:256])
    evaluation = TurningEvalSet(*eval_set()) if config.get("turn_evals") else TensorDataset(*eval_set())
    loggers = []
    with warnings.catch_warnings(record=True) as at_construction:
        warnings.simplefilter("always")
        if config.get("wandb", True):
            loggers.append(WandBLogger(project=config.get("project", "logbus-dist"), name=config["name"],
                                       rank_zero_only=config["rank_zero_only"], log_artifacts=True))
    if config.get("flaky_rank") is not None:
        loggers.append(LogBusLogger(backends=[FailingBackend(config["flaky_rank"]), "local"]))
    elif not loggers or config.get("local"):
        loggers.append(LogBusLogger(backends=["local"]))
    torch.manual_seed(0)
    model = ComposerClassifier(DigitsCNN(), num_classes=10)
    sabotaged = config.get("sabotage_rank") == rank
    # The sabotage patches this process's encoder: the sabotaged rank encodes on its own threads, not in
    # the worker process (which has an encoder of its own that the patch cannot reach).
    sample_logger = SampleLogger("classification", num_samples=config.get("num_samples", NUM_SAMPLES), policy="first",
                                 gather_timeout=config.get("gather_timeout", 60.0), worker_process=not sabotaged)
    count_evals = CountEvals()
    if sabotaged:
        sabotage(sample_logger.pipeline.encoder, count_evals.evals)
    trainer = Trainer(
        model=model,
        train_dataloader=DataLoader(train, batch_size=16, sampler=dist.get_sampler(train, shuffle=True)),
        eval_dataloader=DataLoader(evaluation, batch_size=16, sampler=dist.get_sampler(evaluation)),
        train_subset_num_batches=2, max_duration=f"{EPOCHS}ep", eval_interval="1ep",
        loggers=loggers, callbacks=[count_evals, sample_logger, RankFileUpload()],
        save_folder="checkpoints", save_interval="1ep",
        device="cpu", dist_timeout=60, progress_bar=False, seed=0, run_name=config["name"],
    )
    download = try_download(loggers[0], Path(config["folder"]) / f"downloaded-rank{rank}.pt") if config.get(
        "wandb", True) else None
    trainer.fit()
    trainer.close()
    sys.setprofile(None)
    result = {
        "collectives": collectives.calls,
        "gather_bytes": collectives.gather_bytes,
        "download": download,
        "rank": rank,
        "world_size": dist.get_world_size(),
        "warnings": seen_warnings,
        "logbus_messages": messages.messages,
        "warnings_at_construction": [str(warning.message) for warning in at_construction],
        "pipeline": vars(sample_logger.pipeline.stats),
        "buses": [logger.bus.stats() for logger in loggers],
        "local_run_dir": getattr(loggers[-1].bus.backends.get("local"), "run_dir", None),
    }
    Path(config["folder"], f"result-rank{rank}.json").write_text(json.dumps(result))


def try_download(wandb_logger, destination: Path) -> dict[str, Any]:
    """``download_file`` as Composer's checkpoint loading calls it right after ``Event.INIT``, on every
    rank. Fetching needs the W&B server, which is not reachable here: only ``wandb.Api`` is faked (it
    records the artifact path asked for); the logger's part (entity, project, name) is real."""
    import wandb

    requested: list[str] = []

    class FakeArtifact:
        def __init__(self, path: str):
            self.path = path

        def download(self, root: str) -> None:
            os.makedirs(root)
            Path(root, "ep1-ba2-rank0.pt").write_text(f"checkpoint {self.path}")

    class FakeApi:
        default_entity = "api-key-entity"

        def artifact(self, path: str) -> FakeArtifact:
            requested.append(path)
            return FakeArtifact(path)

    real_api, wandb.Api = wandb.Api, FakeApi
    try:
        wandb_logger.download_file("checkpoints/ep1-ba2-rank0.pt", str(destination))
    finally:
        wandb.Api = real_api
    return {"requested": requested, "content": destination.read_text(), "entity": wandb_logger.entity,
            "project": wandb_logger.project}


# -- the test process ------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def launch(folder: Path, **config: Any) -> list[dict[str, Any]]:
    """Runs ``config`` on ``WORLD_SIZE`` ranks; every rank must exit 0 within ``RANK_TIMEOUT``.

    Started once more if the free port found here was taken before rank 0 bound it."""
    config["folder"] = str(folder)
    for attempt in (1, 2):
        failures = run_ranks(folder, config)
        logs = [(folder / f"rank{rank}.log").read_text() for rank in range(WORLD_SIZE)]
        if not failures:
            return [json.loads((folder / f"result-rank{rank}.json").read_text()) for rank in range(WORLD_SIZE)]
        if attempt == 1 and "address already in use" in logs[0].lower():
            continue
        pytest.fail("; ".join(failures) + "\n" + "\n".join(f"--- rank {rank} ---\n{log[-4000:]}"
                                                         for rank, log in enumerate(logs)))


def run_ranks(folder: Path, config: dict[str, Any]) -> list[str]:
    env = {name: value for name, value in os.environ.items() if name not in DIST_ENV}
    env.update(WORLD_SIZE=str(WORLD_SIZE), LOCAL_WORLD_SIZE=str(WORLD_SIZE), NODE_RANK="0",
               MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()), PYTHONUNBUFFERED="1")
    processes = []
    for rank in range(WORLD_SIZE):
        with open(folder / f"rank{rank}.log", "w") as log:
            # A session of its own: a rank that hangs is killed with whatever it started (wandb-core).
            processes.append(subprocess.Popen([sys.executable, __file__, json.dumps(config)], cwd=folder,
                                              stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                              env={**env, "RANK": str(rank), "LOCAL_RANK": str(rank)}))
    deadline = time.monotonic() + RANK_TIMEOUT
    failures = []
    for rank, process in enumerate(processes):
        try:
            process.wait(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            failures.append(f"rank {rank} still running after {RANK_TIMEOUT} s (killed)")
        else:
            if process.returncode != 0:
                failures.append(f"rank {rank} exited {process.returncode}")
    return failures


def decode(path) -> np.ndarray:
    from PIL import Image as PILImage

    with PILImage.open(path) as image:
        return np.asarray(image)


def eval_sample(rank: int, row_id: int, turn: int = 0) -> int:
    """The eval sample that rank ``rank`` saw as its ``row_id``-th: ``DistributedSampler`` without
    shuffling deals the positions out in turn (``TurningEvalSet`` turns them by ``turn``)."""
    return (rank + WORLD_SIZE * row_id + turn) % EVAL_SIZE


def check_gathered_table(columns: list[str], rows: list[list[Any]], image_file, ranks=range(WORLD_SIZE), *,
                         rows_per_rank: int = NUM_SAMPLES, turn: int = 0) -> None:
    """Rows ``first`` kept on each of ``ranks``, gathered with a ``rank`` column: rank ``r``'s ``id``
    ``i`` is eval sample ``eval_sample(r, i, turn)``."""
    assert columns[:3] == ["rank", "id", "image"]
    check_rank_rows(columns[1:], [row[1:] for row in rows], [row[0] for row in rows], image_file, ranks,
                    rows_per_rank=rows_per_rank, turn=turn)


def check_rank_rows(columns: list[str], rows: list[list[Any]], row_ranks: list[int], image_file,
                    ranks=range(WORLD_SIZE), *, rows_per_rank: int = NUM_SAMPLES, turn: int = 0) -> None:
    """The extractor's rows (``id``, ``image``, ``truth``...), row ``k`` from rank ``row_ranks[k]``: each of
    ``ranks`` has its ``rows_per_rank`` first samples, each once, with its true label and its pixels."""
    from logbus.kernels import images_to_uint8_reference

    images, labels = eval_set()
    pixels = images_to_uint8_reference(images).numpy()[..., 0]
    assert columns[:2] == ["id", "image"] and "truth" in columns
    keys = [(rank, row[0]) for rank, row in zip(row_ranks, rows)]
    assert sorted(keys) == [(rank, i) for rank in ranks for i in range(rows_per_rank)]
    for rank, row in zip(row_ranks, rows):
        sample = eval_sample(rank, row[0], turn)
        assert row[columns.index("truth")] == int(labels[sample])
        np.testing.assert_array_equal(decode(image_file(row[1])), pixels[sample])


def artifacts(run) -> list[tuple[str, str, list[str]]]:
    return sorted((artifact.name, artifact.type, sorted(artifact.aliases)) for artifact in run.user_artifacts())


def rank_files(rank: int, *, checkpoints: bool) -> list[tuple[str, str, list[str]]]:
    """The artifacts of ``rank``'s files: its shard per epoch and, for rank 0, Composer's checkpoint and
    its ``latest`` symlink (Composer writes monolithic checkpoints on rank 0 only)."""
    files = []
    for epoch in range(1, EPOCHS + 1):
        aliases = sorted(["latest", f"ep{epoch}-ba{2 * epoch}"])
        files.append((f"shards.shard-ep{epoch}-rank{rank}.pt", "model", aliases))
        if checkpoints:
            files.append((f"checkpoints.ep{epoch}-ba{2 * epoch}-rank0.pt", "model", aliases))
            files.append(("checkpoints.latest-rank0.pt.symlink", "symlink", aliases))
    return sorted(files)


@pytest.mark.timeout(RANK_TIMEOUT + 30)
def test_rank_zero_only_run_holds_every_ranks_samples_and_a_failing_backend_hangs_no_rank(wandb_offline, tmp_path):
    from wandb_reader import find_run_dirs, read_wandb_run

    results = launch(tmp_path, name="zero", rank_zero_only=True, flaky_rank=1, project=None)

    (run_dir,) = find_run_dirs(wandb_offline)  # one W&B run: rank 0's
    run = read_wandb_run(run_dir)
    assert run.name == "zero" and not run.run.get("run_group") and run.exit_code == 0
    # download_file works on every rank: rank 1 has no run, and knows rank 0's project from Event.INIT
    # (no project was given; W&B chose it). An offline run has no entity: the API key's default is asked.
    path = f"api-key-entity/{run.run['project']}/checkpoints.ep1-ba2-rank0.pt:latest"
    for result in results:
        assert result["download"] == {"requested": [path], "content": f"checkpoint {path}", "entity": "",
                                      "project": run.run["project"]}
    assert [step for step, _ in run.metric("loss/train/total")] == [0, 1, 2, 3]  # rank 0's data is complete
    tables = run.tables("samples/eval")
    assert [step for step, _, _ in tables] == [2, 4]
    for _, columns, rows in tables:
        check_gathered_table(columns, rows, lambda cell: cell["file"])
    # Composer's warning as Composer gives it: at construction, once, on every rank. Only rank 0 uploads.
    for result in results:
        assert [ARTIFACT_WARNING in message for message in result["warnings_at_construction"]] == [True]
        assert sum(ARTIFACT_WARNING in message for message in result["warnings"]) == 0, result["warnings"]
    assert artifacts(run) == rank_files(0, checkpoints=True)

    # The flaky backend failed on rank 1 only; both ranks finished, and rank 0's local run is complete.
    flaky = [result["buses"][1]["backends"]["flaky"] for result in results]
    assert (flaky[0]["failures"], flaky[0]["enabled"]) == (0, True) and flaky[0]["delivered"] > 10
    assert flaky[1]["failures"] >= 1 and not flaky[1]["enabled"]
    rank0_local = Path(results[0]["local_run_dir"])
    assert rank0_local.name == "zero-rank0" and Path(results[1]["local_run_dir"]).name == "zero-rank1"
    metrics = [json.loads(line) for line in (rank0_local / "metrics.jsonl").read_text().splitlines()]
    assert [line["step"] for line in metrics if "loss/train/total" in line] == [0, 1, 2, 3]
    assert json.loads((rank0_local / "run.json").read_text())["status"] == "finished"
    assert results[0]["pipeline"]["rows_logged"] == results[1]["pipeline"]["rows_logged"] == EPOCHS * NUM_SAMPLES


@pytest.mark.timeout(RANK_TIMEOUT + 30)
def test_per_rank_runs_are_grouped_and_each_holds_its_own_ranks_files(wandb_offline, tmp_path):
    from wandb_reader import find_run_dirs, read_wandb_run

    results = launch(tmp_path, name="per-rank", rank_zero_only=False)

    runs = {run.name: run for run in map(read_wandb_run, find_run_dirs(wandb_offline))}
    assert sorted(runs) == ["per-rank-rank0", "per-rank-rank1"]
    for rank in range(WORLD_SIZE):
        run = runs[f"per-rank-rank{rank}"]
        assert run.run["run_group"] == "per-rank" and run.exit_code == 0
        assert [step for step, _ in run.metric("loss/train/total")] == [0, 1, 2, 3]
        assert artifacts(run) == rank_files(rank, checkpoints=rank == 0)
        # A run per rank keeps what its rank logs: its own samples, nothing gathered.
        tables = run.tables("samples/eval")
        assert [step for step, _, _ in tables] == [2, 4]
        for _, columns, rows in tables:
            check_rank_rows(columns, rows, [rank] * len(rows), lambda cell: cell["file"], ranks=[rank])
    for result in results:  # W&B's own broadcast at Event.INIT; logbus gathers nothing
        assert "gather_object" not in result["collectives"] and result["gather_bytes"] == 0, result["collectives"]


@pytest.mark.timeout(RANK_TIMEOUT + 30)
def test_a_rank_whose_pipeline_fails_or_is_late_sends_nothing_and_still_joins_the_gather(wandb_offline, tmp_path):
    from wandb_reader import read_only_run

    results = launch(tmp_path, name="sabotaged", rank_zero_only=True, sabotage_rank=1, gather_timeout=1.0)

    tables = read_only_run(wandb_offline).tables("samples/eval")
    assert [step for step, _, _ in tables] == [2, 4]
    for _, columns, rows in tables:  # rank 0's rows, complete; none of rank 1's
        check_gathered_table(columns, rows, lambda cell: cell["file"], ranks=[0])
    late = [message for message in results[1]["logbus_messages"] if "was not ready 1 s after the end of the eval" in message]
    assert len(late) == 1 and "'samples/eval' of rank 1" in late[0]
    # Eval 1 failed on rank 1; eval 2 was late there, and finished (unlogged) before the pipeline closed.
    assert (results[1]["pipeline"]["tables_dropped"], results[1]["pipeline"]["tables_logged"]) == (1, 1)
    assert results[0]["pipeline"]["tables_dropped"] == 0
    assert not [message for message in results[0]["logbus_messages"] if "samples" in message]


def read_ranks(folders: list[Path]):
    import logbus

    return logbus.read_table([str(folder) for folder in folders], "samples/eval")


def check_every_sample_once_per_eval_with_its_rank(rows) -> None:
    """``read_table`` over the ranks' folders: at each eval every one of the ``EVAL_SIZE`` samples once,
    from the rank that evaluated it, with its label and pixels; its ``_sample_key`` the same at both evals,
    though at the second the other rank evaluated it (``TurningEvalSet``)."""
    keys: dict[int, set[str]] = {}
    for eval_index, step in enumerate((2, 4)):
        at_step = rows[rows["_step"] == step]
        assert len(at_step) == EVAL_SIZE and set(at_step["_rank"]) == set(range(WORLD_SIZE))
        columns = ["id", "image", "truth"]
        check_rank_rows(columns, at_step[columns].values.tolist(), at_step["_rank"].tolist(),
                        lambda cell: io.BytesIO(cell.encoded()[0]), rows_per_rank=EVAL_SIZE // WORLD_SIZE,
                        turn=eval_index)
        samples = [eval_sample(rank, row_id, eval_index) for rank, row_id in zip(at_step["_rank"], at_step["id"])]
        assert sorted(samples) == list(range(EVAL_SIZE))
        for sample, key in zip(samples, at_step["_sample_key"]):
            keys.setdefault(sample, set()).add(key)
    assert all(len(found) == 1 for found in keys.values()), keys  # one key per sample, whatever the rank
    assert len({key for found in keys.values() for key in found}) == EVAL_SIZE


@pytest.mark.timeout(RANK_TIMEOUT + 30)
def test_each_rank_writes_its_own_rows_and_packs_and_no_byte_crosses_ranks_with_the_local_store(tmp_path):
    """Local backend only, each rank on a disk of its own (as a node-local disk): each rank's folder holds
    its own rows and packs, ``read_table`` over both folders gives every eval sample once per eval with
    its rank, and logbus makes no gather (counted on the real calls: ``LogbusCollectives``)."""
    import pandas as pd

    results = launch(tmp_path, name="local", wandb=False, rank_zero_only=True, num_samples=None, turn_evals=True,
                     node_local=True)

    folders = [Path(result["local_run_dir"]) for result in results]
    assert folders == [tmp_path / f"node{rank}" / f"local-rank{rank}" for rank in range(WORLD_SIZE)]
    for rank, folder in enumerate(folders):
        assert sorted(path.name for path in (folder / "rows" / "samples" / "eval").iterdir()) == [
            f"{step:010d}-r{rank}-0.parquet" for step in (2, 4)]
        packs = sorted(path.name for path in (folder / "packs").iterdir())
        assert packs and all(name.startswith(f"r{rank}-") for name in packs)
        own = pd.read_parquet(folder / "rows" / "samples" / "eval")  # without logbus: this rank's rows only
        assert set(own["_rank"]) == {rank} and len(own) == EVAL_SIZE
    check_every_sample_once_per_eval_with_its_rank(read_ranks(folders))
    for result in results:
        gathers = {name: count for name, count in result["collectives"].items() if "gather" in name}
        assert gathers == {} and result["gather_bytes"] == 0, result["collectives"]
        # The one collective logbus makes: rank 0's "no table to gather" sent to every rank at the start.
        assert result["collectives"] == {"broadcast_object_list": 1, "broadcast": 2}, result["collectives"]
        assert result["pipeline"]["rows_logged"] == EPOCHS * EVAL_SIZE // WORLD_SIZE


@pytest.mark.timeout(RANK_TIMEOUT + 30)
def test_with_wandb_too_rank_zeros_wandb_run_gets_the_whole_table_and_each_local_folder_its_own_rows(
        wandb_offline, tmp_path):
    from wandb_reader import read_only_run

    results = launch(tmp_path, name="both", rank_zero_only=True, local=True, num_samples=None, turn_evals=True)

    tables = read_only_run(wandb_offline).tables("samples/eval")  # rank 0's run: every rank's rows
    assert [step for step, _, _ in tables] == [2, 4]
    for turn, (_, columns, rows) in enumerate(tables):
        check_gathered_table(columns, rows, lambda cell: cell["file"], rows_per_rank=EVAL_SIZE // WORLD_SIZE,
                             turn=turn)
    folders = [Path(result["local_run_dir"]) for result in results]
    assert [folder.name for folder in folders] == [f"both-rank{rank}" for rank in range(WORLD_SIZE)]
    check_every_sample_once_per_eval_with_its_rank(read_ranks(folders))
    for result in results:  # one gather per logged eval, for W&B; rank 1's rows and image bytes in it
        assert result["collectives"]["gather_object"] == EPOCHS and result["gather_bytes"] > 0, result["collectives"]


# -- what travels, without a process group ---------------------------------------------------------
def test_an_image_cell_travels_whole_and_lands_as_a_file_of_the_receiving_rank(tmp_path, caplog):
    import pickle

    from logbus.composer._sample_gather import merge_tables, pack_table
    from logbus.files._encoding import encode_image
    from logbus.records import Box, Image, Mask, Table

    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (6, 5, 3), dtype=np.uint8)
    sender, receiver = tmp_path / "rank1-scratch", tmp_path / "rank0-scratch"
    sender.mkdir()
    receiver.mkdir()
    (sender / "a.png").write_bytes(encode_image(pixels, "png"))
    mask = rng.integers(0, 3, (6, 5))
    columns = ["id", "image", "loss"]
    sent = Table("samples/val", columns, [
        [0, Image(path=str(sender / "a.png"), caption="a", masks={"prediction": Mask(mask, {0: "bg", 2: "cat"})},
                  boxes=[Box(1, 1, 3, 4, class_id=2, caption="cat", score=0.5)], box_class_labels={2: "cat"}), 0.25],
        [1, Image(pixels=pixels[:, :, :1]), None]], step=4)
    payload = pickle.loads(pickle.dumps(pack_table(sent)))  # as gather_object carries it
    (sender / "a.png").unlink()  # rank 1's scratch files never reach rank 0

    (receiver / "own.png").write_bytes(encode_image(pixels[::-1], "png"))
    own = Table("samples/val", columns, [[0, Image(path=str(receiver / "own.png")), 1.5]], step=4)
    merged = merge_tables(own, [None, payload], key="samples/val", columns=columns, step=4, folder=str(receiver))
    assert (merged.key, merged.step, merged.columns) == ("samples/val", 4, ["rank", *columns])
    assert [row[:2] for row in merged.rows] == [[0, 0], [1, 0], [1, 1]] and merged.rows[0][2] is own.rows[0][1]
    image = merged.rows[1][2]
    assert Path(image.path).parent == receiver and image.path.endswith(".png")
    np.testing.assert_array_equal(decode(image.path), pixels)
    assert (image.caption, image.box_class_labels, list(image.boxes)) == ("a", {2: "cat"}, list(sent.rows[0][1].boxes))
    np.testing.assert_array_equal(image.masks["prediction"].data, mask)
    assert image.masks["prediction"].class_labels == {0: "bg", 2: "cat"}
    np.testing.assert_array_equal(merged.rows[2][2].pixels, pixels[:, :, :1])
    assert merged.rows[1][3:] == [0.25] and merged.rows[2][3:] == [None]

    # The same image in a later eval is the same file: backends copy or upload it once.
    again = merge_tables(None, [None, payload], key="samples/val", columns=columns, step=6, folder=str(receiver))
    assert [row[:2] for row in again.rows] == [[1, 0], [1, 1]] and again.rows[0][2].path == image.path
    # A rank with other columns is left out, and says so; no table at all when no rank had one.
    other = {**payload, "columns": ["id", "image", "accuracy"]}
    with caplog.at_level(logging.WARNING, logger="logbus"):
        only_own = merge_tables(own, [None, other], key="samples/val", columns=columns, step=4, folder=str(receiver))
    assert [row[:2] for row in only_own.rows] == [[0, 0]]
    assert "the samples of rank 1 have columns ['id', 'image', 'accuracy']" in caplog.text
    assert merge_tables(None, [None, None], key="samples/val", columns=columns, step=4, folder=str(receiver)) is None



def test_a_gathered_table_gives_its_scratch_files_back_once_every_backend_has_taken_it(tmp_path):
    """Rank 0 writes the files it receives into its pipeline's scratch folder: they are counted there like
    the files it encodes, so once every backend has taken the gathered table they go (here at once,
    ``scratch_cache_bytes=0``) while the run goes on, with rank 0's own files; what the backend took
    stays whole. Before, they stayed until the run's end, a table's worth of files per eval."""
    import torch

    from logbus.bus import Bus
    from logbus.composer._sample_gather import gathered_record, pack_table
    from logbus.files._encoding import encode_image
    from logbus.records import Image, Table
    from logbus.samples._pipeline import pipeline_for
    from logbus.testing import RecordingBackend

    rng = np.random.default_rng(1)
    sender = tmp_path / "rank1-scratch"
    sender.mkdir()
    pipeline = pipeline_for("classification", {"class_names": ["a", "b"]}, num_samples=None, worker_process=False,
                            scratch_cache_bytes=0)
    recorder = RecordingBackend()
    bus = Bus([recorder])
    try:
        pipeline.submit(torch.rand(2, 3, 4, 4), torch.tensor([0, 1]), torch.randn(2, 2), label="val")
        own = pipeline.end_pass("val", step=4).result(60)
        columns = list(own.columns)
        for step in (4, 6):  # the same images at two evals: the second reuses the first's files
            rows = []
            for i in range(3):
                pixels = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)
                (sender / f"{i}.png").write_bytes(encode_image(pixels, "png"))
                rows.append([i, Image(path=str(sender / f"{i}.png")), *[None] * (len(columns) - 2)])
            payload = pack_table(Table("samples/val", columns, rows, step=step))
            record = gathered_record(own if step == 4 else None, [None, payload], pipeline, key="samples/val",
                                     step=step)
            table = record.future.result(0)
            paths = [row[2].path for row in table.rows]
            assert all(os.path.dirname(path) == pipeline.encoder.folder for path in paths)
            bus.emit(record)
            assert bus.flush(60)
            deadline = time.monotonic() + 60
            while os.listdir(pipeline.encoder.folder):  # a wait, not a timing: released by the writer
                assert time.monotonic() < deadline, os.listdir(pipeline.encoder.folder)
                time.sleep(0.01)
            assert all(path in recorder.files for path in paths)
    finally:
        bus.close()
        pipeline.cleanup()


if __name__ == "__main__":
    run_rank(json.loads(sys.argv[1]))
