"""The sample pipeline driven directly with CPU tensors: sampling policies, backpressure, and how its
tables reach W&B (split tables, deferred ordering)."""

from __future__ import annotations

import os
import threading
import time
from concurrent.futures import Future

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from local_reader import decode, logged_tables
from PIL import Image as PILImage
from wandb_reader import read_only_run

from logbus.bus import Bus
from logbus.bus._deferred import Deferred
from logbus.kernels import images_to_uint8_reference
from logbus.plugins.classification import ClassificationExtractor
from logbus.records import Metrics, RunStarted, Table
from logbus.samples._pipeline import SamplePipeline, pipeline_for
from logbus.testing import RecordingBackend

NUM_CLASSES = 4
CLASS_NAMES = ["cat", "dog", "owl", "yak"]


def make_batches(num_batches: int, batch_size: int, *, seed: int = 0, num_classes: int = NUM_CLASSES):
    """Small random classification batches: images [B, 1, 2, 2] in [0, 1], labels, logits."""
    generator = torch.Generator().manual_seed(seed)
    batches = []
    for _ in range(num_batches):
        images = torch.rand(batch_size, 1, 2, 2, generator=generator)
        labels = torch.randint(0, num_classes, (batch_size,), generator=generator)
        logits = torch.randn(batch_size, num_classes, generator=generator) * 3
        batches.append((images, labels, logits))
    return batches


def run_pass(pipeline: SamplePipeline, batches, *, label: str = "eval", step: int = 0) -> Table:
    for images, labels, logits in batches:
        pipeline.submit(images, labels, logits, label=label)
    table = pipeline.end_pass(label, step=step).result(timeout=60)
    assert table is not None, f"the pass was dropped: {pipeline.stats}"
    return table


def column(table: Table, name: str) -> list:
    index = table.columns.index(name)
    return [row[index] for row in table.rows]


@pytest.fixture
def make_pipeline():
    pipelines = []

    def make(extractor="classification", extractor_options=None, **options):
        if isinstance(extractor, str):
            extractor_options = {"class_names": CLASS_NAMES} if extractor_options is None else extractor_options
            pipeline = pipeline_for(extractor, extractor_options, **options)
        else:
            pipeline = SamplePipeline(extractor, **options)
        pipelines.append(pipeline)
        return pipeline

    yield make
    for pipeline in pipelines:
        pipeline.cleanup()


# -- policies --------------------------------------------------------------------------------------
def test_first_keeps_the_first_samples_of_each_pass_with_their_values(make_pipeline):
    batches = make_batches(3, 5)
    pipeline = make_pipeline(num_samples=7, policy="first")
    images = torch.cat([b[0] for b in batches])
    labels = torch.cat([b[1] for b in batches])
    logits = torch.cat([b[2] for b in batches])
    for step in (3, 8):  # the second pass starts again from sample 0
        table = run_pass(pipeline, batches, step=step)
        assert table.key == "samples/eval" and table.step == step
        assert column(table, "id") == list(range(7))
        assert column(table, "truth") == labels[:7].tolist()
        assert column(table, "prediction") == logits[:7].argmax(1).tolist()
        assert column(table, "truth_name") == [CLASS_NAMES[i] for i in labels[:7].tolist()]
        expected_pixels = images_to_uint8_reference(images[:7]).numpy()
        for i, cell in enumerate(column(table, "image")):
            np.testing.assert_array_equal(decode(cell.path), expected_pixels[i, :, :, 0])
    # Batch 3 had nothing to give: it was never handed to the worker.
    assert pipeline.stats.batches_submitted == 4


def test_reservoir_is_seeded_and_differs_across_seeds_and_passes(make_pipeline):
    batches = make_batches(4, 10)

    def selections(seed: int, passes: int = 6) -> list[list[int]]:
        pipeline = make_pipeline(num_samples=5, policy="reservoir", seed=seed)
        return [column(run_pass(pipeline, batches), "id") for _ in range(passes)]

    seed0 = selections(0)
    assert selections(0) == seed0  # reproducible
    assert selections(1) != seed0
    for ids in seed0:
        assert len(ids) == 5 and ids == sorted(ids) and len(set(ids)) == 5
        assert all(0 <= i < 40 for i in ids)
    assert len({tuple(ids) for ids in seed0}) > 1, "every pass picked the same samples"


def test_reservoir_chooses_every_position_about_uniformly(make_pipeline):
    num_batches, batch_size, keep, passes = 3, 10, 5, 200
    positions = num_batches * batch_size
    batches = make_batches(num_batches, batch_size)
    pipeline = make_pipeline(num_samples=keep, policy="reservoir", seed=7)
    counts = np.zeros(positions)
    logits = torch.cat([b[2] for b in batches])
    for _ in range(passes):
        table = run_pass(pipeline, batches)
        ids = column(table, "id")
        assert len(ids) == keep
        counts[ids] += 1
        # Rows carry their own sample's values, wherever it was picked.
        assert column(table, "prediction") == logits[ids].argmax(1).tolist()
    expected = passes * keep / positions
    chi_square = float(((counts - expected) ** 2 / expected).sum())
    # Uniform: about positions - 1 (= 29). A fixed choice (first N, or the same N every pass): 5,000.
    assert chi_square < 3 * (positions - 1), (chi_square, counts)
    assert counts.min() > 0


def test_reservoir_converts_no_sample_its_own_batch_evicts():
    """The choice is made per batch (array operations on the training thread, no loop over samples):
    of a batch much larger than the reservoir only the winners so far are converted, not every
    sample that entered and was pushed out again within the same batch (about k * ln(n / k) more)."""
    from logbus.samples import make_policy

    policy = make_policy("reservoir", 5, seed=3)
    policy.start_pass()
    converted = set(policy.choose(1000))
    assert len(converted) == 5 and policy.kept() == converted
    later = [1000 + index for index in policy.choose(1000)]
    # Every winner was converted when it entered, and a later batch only converts its own winners.
    assert len(policy.kept()) == 5 and policy.kept() <= converted | set(later)
    assert set(later) <= policy.kept()


def test_the_worker_process_deletes_the_files_it_wrote_when_its_pipeline_closes(make_pipeline):
    """One delete per image is per-sample work: at close the worker process deletes the scratch files
    it wrote (the training process then removes an empty folder), and ``close`` waits for it, bounded."""
    pipeline = make_pipeline(num_samples=None)
    assert pipeline.worker_ready(120)
    table = run_pass(pipeline, make_batches(3, 8))
    paths = [cell.path for cell in column(table, "image")]
    assert len(paths) == 24 and all(os.path.exists(path) for path in paths)
    assert pipeline.close()
    pipeline._worker_pipeline.close(timeout=60)
    assert not any(os.path.exists(path) for path in paths)
    assert os.path.isdir(pipeline.encoder.folder)  # not the training process's rmtree: still there


def per_class_batches():
    generator = torch.Generator().manual_seed(3)
    labels = torch.tensor([0, 0, 1, 0, 2, 0, 1, 1, 0, 1, 2, 1, 0, 0, 1, 2, 2, 0, 1, 0, 2])  # class 3 absent
    batches = []
    for start in range(0, len(labels), 6):  # batches of 6, 6, 6, 3
        chunk = labels[start:start + 6]
        batches.append((torch.rand(len(chunk), 1, 2, 2, generator=generator), chunk,
                        torch.randn(len(chunk), NUM_CLASSES, generator=generator)))
    return labels, batches


def test_per_class_keeps_the_earliest_samples_of_each_class(make_pipeline):
    labels, batches = per_class_batches()
    pipeline = make_pipeline(num_samples=3, policy="per_class")
    for _ in range(2):
        table = run_pass(pipeline, batches)
        expected = sorted(torch.nonzero(labels == c).flatten().tolist()[0] for c in range(3))
        assert column(table, "id") == expected  # one of each class present: 0, 1 and 2
        assert column(table, "truth") == labels[expected].tolist()


def test_per_class_keeps_num_samples_rows_balanced_over_the_classes(make_pipeline):
    """``num_samples`` rows in all, not per class: round by round, the earliest sample of each class."""
    labels, batches = per_class_batches()
    by_class = [torch.nonzero(labels == c).flatten().tolist() for c in range(NUM_CLASSES)]
    for num_samples in (7, 12, 30):
        pipeline = make_pipeline(num_samples=num_samples, policy="per_class")
        table = run_pass(pipeline, batches)
        # Rounds: (rank in class, position); class 3 is absent, so the others fill its share.
        ranked = sorted((rank, i) for ids in by_class for rank, i in enumerate(ids))
        expected = sorted(i for _, i in ranked[:num_samples])
        assert column(table, "id") == expected
        assert len(expected) == min(num_samples, len(labels))
        counts = [sum(labels[i].item() == c for i in expected) for c in range(3)]
        assert max(counts) - min(counts) <= 1 or num_samples >= len(labels), counts


def test_hardest_by_loss_gives_the_highest_cross_entropy_first(make_pipeline):
    batches = make_batches(5, 8, seed=11)
    labels = torch.cat([b[1] for b in batches])
    logits = torch.cat([b[2] for b in batches])
    loss = F.cross_entropy(logits, labels, reduction="none")
    pipeline = make_pipeline(num_samples=6, policy="hardest", hardest_by="loss")
    for _ in range(2):
        table = run_pass(pipeline, batches)
        expected = torch.argsort(loss, descending=True)[:6].tolist()
        assert column(table, "id") == expected
        np.testing.assert_allclose(column(table, "loss"), loss[expected].numpy(), rtol=1e-5)
        assert column(table, "truth") == labels[expected].tolist()
        images = torch.cat([b[0] for b in batches])[expected]
        expected_pixels = images_to_uint8_reference(images).numpy()
        for i, cell in enumerate(column(table, "image")):
            np.testing.assert_array_equal(decode(cell.path), expected_pixels[i, :, :, 0])


def test_hardest_by_confidence_gives_the_least_confident_first(make_pipeline):
    batches = make_batches(5, 8, seed=12)
    logits = torch.cat([b[2] for b in batches])
    confidence = logits.softmax(1).amax(1)
    pipeline = make_pipeline(num_samples=5, policy="hardest", hardest_by="confidence")
    table = run_pass(pipeline, batches)
    expected = torch.argsort(confidence)[:5].tolist()
    assert column(table, "id") == expected
    np.testing.assert_allclose(column(table, "confidence"), confidence[expected].numpy(), rtol=1e-5)


@pytest.mark.parametrize("policy", ["first", "reservoir", "per_class", "hardest"])
def test_nonfinite_logits_are_logged_and_flagged_never_raised(make_pipeline, policy):
    batches = make_batches(3, 4, seed=5)
    batches[0][2][1, 2] = float("nan")
    batches[2][2][3] = float("inf")
    nonfinite = {1, 11}
    pipeline = make_pipeline(num_samples=None if policy == "first" else 12, policy=policy, seed=0)
    table = run_pass(pipeline, batches)
    assert pipeline.stats.errors == 0
    ids, flags = column(table, "id"), column(table, "flag")
    assert sorted(ids) == list(range(12))
    for sample_id, flag, prediction, loss, confidence, correct in zip(
            ids, flags, column(table, "prediction"), column(table, "loss"), column(table, "confidence"),
            column(table, "correct")):
        if sample_id in nonfinite:
            assert (flag, prediction, loss, confidence, correct) == ("nonfinite", -1, None, None, False)
        else:
            assert flag == "" and prediction >= 0 and loss > 0 and 0 < confidence <= 1
    if policy == "hardest":
        assert set(ids[:2]) == nonfinite  # NaN losses rank first: the samples a user must see


# -- backpressure ----------------------------------------------------------------------------------
class GatedClassification(ClassificationExtractor):
    """A slow pipeline: each batch waits in its device stage and in its host stage until the test opens
    the gate. Both: a policy that keeps a running top-k (``per_class``, ``hardest``) runs only the device
    stage per batch, and a batch must hold its room until the gate opens whatever the policy."""

    def __init__(self, gate: threading.Event, **options):
        super().__init__(**options)
        self.gate = gate

    def device_stage(self, *tensors):
        assert self.gate.wait(60), "the gate was never opened"
        return super().device_stage(*tensors)

    def host_stage(self, fields, encode):
        assert self.gate.wait(60), "the gate was never opened"
        return super().host_stage(fields, encode)


def test_submit_never_blocks_when_the_worker_is_behind(make_pipeline):
    gate = threading.Event()
    pipeline = make_pipeline(GatedClassification(gate), num_samples=None, max_pending_batches=1, worker_process=False)
    batches = make_batches(30, 4, seed=2)
    try:
        for images, labels, logits in batches:  # the worker is stuck on batch 0: nothing here may wait
            pipeline.submit(images, labels, logits)
        future = pipeline.end_pass("eval", step=1)
        assert not future.done()
    finally:
        gate.set()
    table = future.result(timeout=60)
    stats = pipeline.stats
    assert stats.batches_submitted == 30
    assert stats.batches_dropped == 29  # batch 0 held the only slot until its host stage ran
    assert column(table, "id") == [0, 1, 2, 3]
    assert column(table, "truth") == batches[0][1].tolist()

    # Once the worker has caught up, batches flow again.
    sync_drops = sync(pipeline)
    for images, labels, logits in batches[:3]:
        pipeline.submit(images, labels, logits)
        sync_drops += sync(pipeline)
    table = pipeline.end_pass("eval", step=2).result(timeout=60)
    assert column(table, "id") == list(range(12))
    assert pipeline.stats.batches_dropped - sync_drops == 29


def sync(pipeline: SamplePipeline) -> int:
    """Returns once the worker has handled everything queued before, and how many tries of its own it
    had dropped on the way. It waits for a tiny pass of its own: the worker is a single FIFO, so that
    table exists only after every earlier batch let go of its slot."""
    images, labels, logits = make_batches(1, 1, seed=99)[0]
    for tries in range(6000):
        dropped = pipeline.stats.batches_dropped
        pipeline.submit(images, labels, logits, label="sync")
        table = pipeline.end_pass("sync").result(timeout=60)
        if pipeline.stats.batches_dropped == dropped:
            assert len(table.rows) == 1
            return tries
        time.sleep(0.01)  # the worker still holds the slot: a wait, not a timing
    raise AssertionError("the worker never caught up")


@pytest.mark.parametrize("policy", ["first", "reservoir", "per_class", "hardest"])
def test_dropped_batches_leave_the_policy_as_if_never_offered(make_pipeline, policy):
    """A batch dropped while the worker is behind uses up no quota and evicts no winner: the table
    still gets ``num_samples`` rows from the batches that went through, with their own values."""
    gate = threading.Event()
    pipeline = make_pipeline(GatedClassification(gate, class_names=CLASS_NAMES), num_samples=8, policy=policy,
                             max_pending_batches=1, seed=3, worker_process=False)
    assert_five_drops_leave_the_policy_whole(pipeline, make_batches(12, 4, seed=4), gate.set, policy)


def assert_five_drops_leave_the_policy_whole(pipeline, batches, open_gate, policy: str) -> None:
    """Batch 0 holds what the pipeline allows (a slot, or the memory budget) until ``open_gate()``;
    batches 1-5 are dropped; the rest go through. The table then has 8 rows, all from batches that
    went through, with their own values."""
    try:
        for images, labels, logits in batches[:6]:
            pipeline.submit(images, labels, logits)
        assert pipeline.stats.batches_dropped == 5
    finally:
        open_gate()
    sync_drops = sync(pipeline)
    for images, labels, logits in batches[6:]:
        pipeline.submit(images, labels, logits)
        sync_drops += sync(pipeline)
    table = pipeline.end_pass("eval", step=1).result(timeout=60)
    assert pipeline.stats.batches_dropped - sync_drops == 5
    went_through = list(range(0, 4)) + list(range(24, 48))
    ids = column(table, "id")
    assert len(ids) == 8, ids
    assert set(ids) <= set(went_through)
    labels = torch.cat([b[1] for b in batches])
    assert column(table, "truth") == labels[ids].tolist()
    if policy == "first":
        assert ids == [0, 1, 2, 3, 24, 25, 26, 27]


class FileGatedClassification(ClassificationExtractor):
    """A slow device stage: each batch waits until the test creates the gate file. A file, not an
    ``Event``: the extractor is pickled to the worker process, where it must still see the gate."""

    def __init__(self, gate_path, **options):
        super().__init__(**options)
        self.gate_path = str(gate_path)

    def device_stage(self, inputs, targets, logits):
        deadline = time.monotonic() + 60
        while not os.path.exists(self.gate_path):
            assert time.monotonic() < deadline, "the gate was never opened"
            time.sleep(0.005)
        return super().device_stage(inputs, targets, logits)


@pytest.mark.parametrize("worker_process", [True, False])
def test_a_slow_worker_at_default_settings_drops_nothing_while_memory_lasts(make_pipeline, tmp_path, worker_process):
    """Default settings, a worker stuck on the first batch: the 39 batches behind it wait in memory
    (well within the default budget) and every row reaches the table. Before, at most 8 batches could
    be behind (``max_pending_batches``) and the rest were dropped."""
    gate = tmp_path / "open"
    pipeline = make_pipeline(FileGatedClassification(gate, class_names=CLASS_NAMES), num_samples=None,
                             worker_process=worker_process)
    if worker_process:
        assert pipeline.worker_ready(120)
    batches = make_batches(40, 8, seed=5)
    try:
        for images, labels, logits in batches:
            pipeline.submit(images, labels, logits)
        future = pipeline.end_pass("eval", step=1)
        assert not future.done()
    finally:
        gate.touch()
    table = future.result(timeout=120)
    stats = pipeline.stats
    assert (stats.batches_submitted, stats.batches_dropped, stats.errors) == (40, 0, 0)
    assert column(table, "id") == list(range(320))
    assert column(table, "truth") == torch.cat([b[1] for b in batches]).tolist()
    if worker_process:  # the batches went from the training thread straight to the worker process
        assert pipeline.worker_pid is not None and stats.batches_in_process == 0


@pytest.mark.parametrize("worker_process", [True, False])
@pytest.mark.parametrize("policy", ["first", "reservoir", "per_class", "hardest"])
def test_a_spent_memory_budget_drops_counted_batches_and_keeps_the_policy(make_pipeline, tmp_path, policy,
                                                                          worker_process):
    """With a budget that holds one batch, batches offered while the worker is stuck on the first are
    dropped and counted, and the policy acts as if they had never been offered: the table still gets
    ``num_samples`` rows from the batches that went through, with their own values."""
    gate = tmp_path / "open"
    batches = make_batches(12, 4, seed=4)
    one_batch = sum(t.nbytes for t in batches[0])
    pipeline = make_pipeline(FileGatedClassification(gate, class_names=CLASS_NAMES), num_samples=8, policy=policy,
                             seed=3, pinned_pool_bytes=one_batch * 5 // 2, worker_process=worker_process)
    if worker_process:
        assert pipeline.worker_ready(120)
    assert_five_drops_leave_the_policy_whole(pipeline, batches, gate.touch, policy)


# -- W&B -------------------------------------------------------------------------------------------
def wandb_spec(**options):
    return ("wandb", {"project": "logbus-tests", **options})


class CharTokenizer:
    alphabet = "abcdefghijklmnopqrstuvwxyz"

    def decode(self, ids):
        return "".join(self.alphabet[i] for i in ids)


def test_a_table_over_10000_rows_reaches_wandb_split_in_parts(wandb_offline):
    """10,050 token samples through the pipeline (no images), one table on the bus: W&B keeps 10,000
    rows a table, so the backend logs ``key`` and ``key/part2`` at the same step."""
    count, length, vocab = 10_050, 3, 26
    generator = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, vocab, (count, length), generator=generator)
    logits = torch.randn(count, length, vocab, generator=generator)
    pipeline = pipeline_for("tokens", {"tokenizer": CharTokenizer(), "shift": False}, num_samples=None)
    bus = Bus([wandb_spec()])
    bus.emit(RunStarted(run_name="big-table"))
    for start in range(0, count, 2048):
        pipeline.submit(tokens[start:start + 2048], tokens[start:start + 2048], logits[start:start + 2048])
    bus.emit(Deferred(Table, pipeline.end_pass("eval", step=3)))
    assert bus.close()
    pipeline.cleanup()

    run = read_only_run(wandb_offline)
    (step1, columns, part1), = run.tables("samples/eval")
    (step2, columns2, part2), = run.tables("samples/eval/part2")
    assert step1 == step2 == 3
    assert columns == columns2 == ["id", "input", "target", "prediction", "token_accuracy", "loss", "confidence", "flag"]
    assert len(part1) == 10_000 and len(part2) == 50
    rows = part1 + part2
    assert [row[0] for row in rows] == list(range(count))
    texts = ["".join(CharTokenizer.alphabet[t] for t in sample) for sample in tokens.tolist()]
    assert [row[1] for row in rows] == texts
    assert [row[2] for row in rows] == texts
    assert not run.tables("samples/eval/part3")


def test_a_late_table_lands_at_its_step_before_later_metrics(wandb_offline):
    """W&B drops ``log(step=5)`` after step 20; the Deferred holds the writer until the table exists."""
    bus = Bus([wandb_spec()])
    bus.emit(RunStarted(run_name="late-table"))
    bus.emit(Metrics({"loss": 4.0}, step=4))
    future: Future = Future()
    bus.emit(Deferred(Table, future))
    for step in range(6, 21):
        bus.emit(Metrics({"loss": float(step)}, step=step))
    worker = bus.workers[0]
    deadline = time.monotonic() + 60
    while worker.stats.received < 3 and time.monotonic() < deadline:  # the writer is waiting on the table
        time.sleep(0.01)
    assert worker.stats.received == 3 and not future.done()

    def complete():
        time.sleep(0.5)
        future.set_result(Table("samples/eval", ["id", "name"], [[0, "zero"], [1, "one"]], step=5))

    threading.Thread(target=complete).start()
    assert bus.close()

    run = read_only_run(wandb_offline)
    assert run.tables("samples/eval") == [(5, ["id", "name"], [[0, "zero"], [1, "one"]])]
    assert run.metric("loss") == [(step, float(step)) for step in (4, *range(6, 21))]
    assert bus.stats()["backends"]["wandb"]["dropped"] == 0


# -- scratch files ---------------------------------------------------------------------------------
def scratch_files(pipeline: SamplePipeline) -> list[str]:
    import os

    return sorted(os.listdir(pipeline.encoder.folder))


def eventually(condition, what: str):
    """Waits (a wait, not a timing) for ``condition()``: releases reach the worker process by message."""
    deadline = time.monotonic() + 60
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.01)


def test_scratch_files_are_deleted_once_every_backend_has_taken_the_table(wandb_offline, logbus_dir):
    """Local and W&B both take each table (the local run copies, W&B reads the file at log time); then
    the encoded files go at once (``scratch_cache_bytes=0``), while the run is still open, and what
    both backends stored stays readable."""

    import logbus

    run = logbus.start_run("scratch", backends=["local", wandb_spec()])
    stream = run.samples(num_samples=None, class_names=CLASS_NAMES, scratch_cache_bytes=0)
    images_per_eval = []
    for step in range(3):
        batches = make_batches(2, 5, seed=100 + step)  # new images at every eval
        images_per_eval.append(torch.cat([b[0] for b in batches]))
        for images, labels, logits in batches:
            stream.add(images, labels, logits)
        stream.log(step=step)
        assert run.flush(60)
        eventually(lambda: scratch_files(stream.pipeline) == [], f"eval {step}: files left after every backend took "
                                                                  f"the table: {scratch_files(stream.pipeline)}")
    assert run.finish()

    tables = logged_tables(logbus_dir / "scratch", "samples/eval")
    wandb_tables = read_only_run(wandb_offline).tables("samples/eval")
    assert len(tables) == len(wandb_tables) == 3
    for local, (_, columns, rows), images in zip(tables, wandb_tables, images_per_eval):
        expected = images_to_uint8_reference(images).numpy()[:, :, :, 0]
        image = columns.index("image")
        for i, (local_row, wandb_row) in enumerate(zip(local["rows"], rows)):
            np.testing.assert_array_equal(decode(local_row[image]["file"]), expected[i])
            np.testing.assert_array_equal(decode(wandb_row[image]["file"]), expected[i])


def test_scratch_space_stays_within_its_cache_across_many_evals(logbus_dir):
    """Evals of new images: files nobody refers to are kept for reuse only up to
    ``scratch_cache_bytes``; the same images again are reused while they are kept."""
    import os

    import logbus

    cache = 4096
    # A backend that does not say it needs no image files: the pipeline makes them (the local store alone takes pixels).
    run = logbus.start_run("bounded", backends=["local", RecordingBackend()])
    stream = run.samples(num_samples=None, class_names=CLASS_NAMES, scratch_cache_bytes=cache)
    pipeline = stream.pipeline
    # The bound is per encoder pool: wait for the worker process's, or the first batches use the
    # training process's own (its files counted against a cache of their own).
    assert pipeline.worker_ready(120)
    for step in range(8):
        for images, labels, logits in make_batches(2, 8, seed=200 + step):
            stream.add(images, labels, logits)
        stream.log(step=step)
        assert run.flush(60)

        def held():
            total = 0
            for name in scratch_files(pipeline):
                try:
                    total += os.path.getsize(os.path.join(pipeline.encoder.folder, name))
                except FileNotFoundError:  # deleted by the worker process between the listing and here
                    pass
            return total

        eventually(lambda: held() <= cache, f"eval {step}: {held()} bytes of scratch files held")
    # The last eval's images are still in the cache: the same eval again encodes nothing.
    files = scratch_files(pipeline)
    for images, labels, logits in make_batches(2, 8, seed=207)[:1]:
        stream.add(images, labels, logits)
    stream.log(step=9)
    assert run.flush(60)
    assert scratch_files(pipeline) == files
    assert run.finish()
    assert pipeline.stats.reused >= 8


# -- close -----------------------------------------------------------------------------------------
def test_close_with_a_sample_stream_returns_within_its_timeout_and_says_what_was_left(logbus_dir, caplog):
    """The pipeline's worker is stuck in a batch (a gate the test holds shut); ``finish(timeout=1)``
    still returns about then, says how many batches and tables were left, and the worker gives up the
    rest once it is free instead of working on after the run has closed."""
    import logging

    import logbus

    gate = threading.Event()
    run = logbus.start_run("bounded-close", backends=["local"])
    stream = run.samples(GatedClassification(gate, class_names=CLASS_NAMES), num_samples=None, worker_process=False)
    pipeline = stream.pipeline
    for images, labels, logits in make_batches(5, 4, seed=8):
        stream.add(images, labels, logits)
    stream.log(step=1)
    for images, labels, logits in make_batches(3, 4, seed=9):
        stream.add(images, labels, logits, label="other")
    try:
        with caplog.at_level(logging.WARNING, logger="logbus"):
            started = time.monotonic()
            clean = run.finish(timeout=1.0)
            elapsed = time.monotonic() - started
    finally:
        gate.set()
    assert not clean  # the local backend was still waiting for the table
    assert elapsed < 1.0 + 5, elapsed  # bounded by the timeout (the slack is for a loaded machine), not by the work
    [said] = [r.getMessage() for r in caplog.records if "sample pipeline" in r.getMessage()]
    # Batch 0 is inside its device stage; batches 1-4 of "eval", 3 of "other" and the "eval" table wait.
    assert "not done by the close deadline: 8 batch(es) and 1 table(s) were left" in said, said
    [local] = [r.getMessage() for r in caplog.records if "backend 'local'" in r.getMessage()]
    assert "1 record(s) were not delivered" in local, local  # the table it was waiting for
    pipeline._worker.join(60)
    assert not pipeline._worker.is_alive()
    # Nothing after batch 0 ran. Batch 0 was inside its stages: with only the local store on the bus its
    # host stage makes no file, so it does not run into the closed encoder, and may finish its rows.
    assert pipeline.stats.samples_processed <= 4 and pipeline.stats.tables_logged == 0


# -- the worker process ----------------------------------------------------------------------------
def test_per_sample_work_runs_in_a_worker_process(make_pipeline):
    """Rows are built and images encoded in another process: the training process only copies each
    batch into shared memory. The files are there, named by content, with the right pixels."""
    import os

    batches = make_batches(3, 4, seed=20)
    pipeline = make_pipeline(num_samples=None)
    assert pipeline.worker_ready(120)  # until then batches would be processed here rather than wait
    table = run_pass(pipeline, batches)
    assert pipeline.stats.batches_in_process == 0
    assert pipeline.worker_pid not in (None, os.getpid())
    expected = images_to_uint8_reference(torch.cat([b[0] for b in batches])).numpy()
    for i, cell in enumerate(column(table, "image")):
        assert os.path.dirname(cell.path) == pipeline.encoder.folder
        np.testing.assert_array_equal(decode(cell.path), expected[i, :, :, 0])


@pytest.mark.skipif(not hasattr(os, "getpriority"), reason="scheduling priorities are POSIX")
def test_the_worker_process_runs_at_a_lower_priority_than_training(make_pipeline):
    """Where cores are short, the scheduler must prefer the training thread to the sample work: the
    worker process's nice value is the training process's plus ``WORKER_NICENESS`` (capped at 19)."""
    from logbus.samples._host_process import WORKER_NICENESS

    pipeline = make_pipeline(num_samples=None)
    assert pipeline.worker_ready(120)
    ours = os.getpriority(os.PRIO_PROCESS, 0)
    assert os.getpriority(os.PRIO_PROCESS, pipeline.worker_pid) == min(19, ours + WORKER_NICENESS)


def test_a_killed_worker_process_loses_only_its_batches_and_is_replaced(make_pipeline, caplog):
    """The process is stopped with batches in flight, then killed: those batches are counted as lost
    with one warning, the pass still ends (no hang), and the next pass runs in a new process."""
    import logging
    import os
    import signal

    batches = make_batches(4, 4, seed=21)
    pipeline = make_pipeline(num_samples=None)
    assert pipeline.worker_ready(120)
    assert len(run_pass(pipeline, batches).rows) == 16
    pid = pipeline.worker_pid
    os.kill(pid, signal.SIGSTOP)  # it cannot answer: whatever is sent now stays in flight
    with caplog.at_level(logging.WARNING, logger="logbus"):
        for images, labels, logits in batches:
            pipeline.submit(images, labels, logits)
        future = pipeline.end_pass("eval", step=1)
        eventually(lambda: pipeline._worker_pipeline.shared.lent == 4, "the batches were not all sent")
        os.kill(pid, signal.SIGKILL)
        table = future.result(timeout=60)
    assert table.rows == [] and pipeline.stats.batches_lost == 4
    [said] = [r.getMessage() for r in caplog.records if "worker process" in r.getMessage()]
    assert f"(pid {pid}) ended with exit code -9; 4 batch(es) it held are lost; starting a new one" in said
    assert pipeline.worker_ready(120)
    table = run_pass(pipeline, batches, step=2)
    assert column(table, "id") == list(range(16))
    assert pipeline.worker_pid not in (None, pid) and pipeline.stats.batches_in_process == 0


@pytest.mark.parametrize("policy", ["first", "hardest"])
def test_a_batch_larger_than_the_memory_budget_goes_through_in_parts(make_pipeline, policy):
    """With ``pinned_pool_bytes`` far below one batch (or one pass's top-k), every row still arrives,
    copied in parts that fit; nothing is dropped."""
    batches = make_batches(2, 96, seed=30)  # about 3.6 KB of fields a batch
    pipeline = make_pipeline(num_samples=None if policy == "first" else 192, policy=policy, pinned_pool_bytes=2048)
    assert pipeline.worker_ready(120)
    for images, labels, logits in batches:
        pipeline.submit(images, labels, logits)
        # The budget is the bound on batches held: a second batch arriving while the first (larger
        # than the whole budget) is still held would be dropped and counted. Let the first through.
        deadline = time.monotonic() + 60
        while pipeline._held_bytes and time.monotonic() < deadline:
            time.sleep(0.01)
    table = pipeline.end_pass("eval", step=0).result(timeout=60)
    assert sorted(column(table, "id")) == list(range(192))
    labels = torch.cat([b[1] for b in batches])
    assert column(table, "truth") == labels[column(table, "id")].tolist()
    assert pipeline.stats.batches_dropped == 0 and pipeline.stats.errors == 0
    assert pipeline.stats.batches_in_process == 0
    assert pipeline._worker_pipeline.shared.peak_bytes <= 2048


def test_no_shared_memory_falls_back_to_threads_with_one_warning(make_pipeline, monkeypatch, caplog):
    """Creating shared memory fails (``/dev/shm`` full): the batches are processed on threads of the
    training process instead, every row arrives, and one warning says why.

    A fake here, on purpose: the real failure needs ``/dev/shm`` full, which on this shared machine
    would fail every other process that uses it."""
    import logging
    from multiprocessing import shared_memory

    def no_room(*args, **kwargs):
        raise OSError(28, "No space left on device")

    batches = make_batches(3, 4, seed=40)
    pipeline = make_pipeline(num_samples=None)
    assert pipeline.worker_ready(120)
    monkeypatch.setattr(shared_memory, "SharedMemory", no_room)
    with caplog.at_level(logging.WARNING, logger="logbus"):
        first = run_pass(pipeline, batches)
        second = run_pass(pipeline, batches, step=1)
    for table in (first, second):
        assert column(table, "id") == list(range(12))
        assert column(table, "truth") == torch.cat([b[1] for b in batches]).tolist()
    assert pipeline.stats.batches_in_process == 6 and pipeline.stats.batches_dropped == 0
    [said] = [r.getMessage() for r in caplog.records if "sample pipeline" in r.getMessage()]
    assert "No space left on device" in said and "threads of the training process" in said


def test_encoder_pool_writes_masks_as_counted_content_named_files(tmp_path):
    """``encode_mask``: the lossless PNG the local backend would write (``logbus.files.encode_mask``,
    whatever the image format), named by content and dtype (the same ids again share the file), and
    counted like an image: the file goes once the last row referring to it is released (no cache)."""
    from logbus.files import encode_mask
    from logbus.samples import content_name
    from logbus.samples._encoder_pool import EncoderPool

    pool = EncoderPool(folder=str(tmp_path), cache_bytes=0, image_format="jpeg", prefix="w0-")
    ids = np.random.default_rng(0).integers(0, 300, (5, 7)).astype(np.int16)
    try:
        first, again, narrower = pool.encode_mask(ids), pool.encode_mask(ids.copy()), pool.encode_mask(ids.astype(np.int32))
        path = first.result(30)
        assert again.result(30) == path and narrower.result(30) != path and path.endswith(".mask.png")
        assert content_name(path) == os.path.basename(path).removeprefix("w0-")  # the backend's dedup key
        with open(path, "rb") as file:
            assert file.read() == encode_mask(ids)
        np.testing.assert_array_equal(np.asarray(PILImage.open(path)), ids)
        pool.release(path)
        assert os.path.exists(path)  # one row still refers to it
        pool.release(path)
        first.result(30)
        deadline = time.monotonic() + 10
        while os.path.exists(path) and time.monotonic() < deadline:
            time.sleep(0.01)  # released from the write's done callback
        assert not os.path.exists(path) and os.path.exists(narrower.result(30))
        # With the viewer's overlay for its labels beside it (part of the name), deleted with it.
        from logbus.samples import overlay_of
        with_overlay = pool.encode_mask(ids, {1: "one"}, overlay=True).result(30)
        assert with_overlay != pool.encode_mask(ids, {1: "uno"}, overlay=True).result(30)
        overlay = np.asarray(PILImage.open(overlay_of(with_overlay)))
        assert overlay.shape == (5, 7, 4) and ((overlay[..., 3] == 255) == (ids == 1)).all()  # labelled ids only
        pool.release(with_overlay)
        deadline = time.monotonic() + 10
        while os.path.exists(overlay_of(with_overlay)) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert not os.path.exists(with_overlay) and not os.path.exists(overlay_of(with_overlay))
    finally:
        pool.close()


def test_a_scratch_name_left_behind_is_written_anew_never_through_a_run_folder_link(tmp_path):
    """A scratch file may be hard-linked into a run folder. If its name outlives its delete (a failed
    ``remove``), writing the same image again must make a new file under that name, not truncate and
    rewrite the inode the run folder shares: its readers would see it half written."""
    from logbus.samples._encoder_pool import EncoderPool

    pixels = np.random.default_rng(1).integers(0, 256, (8, 8, 3)).astype(np.uint8)
    (tmp_path / "scratch").mkdir()
    pool = EncoderPool(folder=str(tmp_path / "scratch"), cache_bytes=0)
    try:
        path = pool.encode(pixels).result(30)
        in_run = tmp_path / "in-run.png"
        os.link(path, in_run)  # as the local backend links it into media/
        written = in_run.read_bytes()
        pool.release(path)  # no row refers to it: deleted (no cache)
        deadline = time.monotonic() + 10
        while os.path.exists(path) and time.monotonic() < deadline:
            time.sleep(0.01)
        os.link(in_run, path)  # the name left behind, still the run's inode
        again = pool.encode(pixels).result(30)
        assert again == path
        assert os.stat(path).st_ino != os.stat(in_run).st_ino  # a new file, not the run's rewritten
        assert in_run.read_bytes() == written and in_run.stat().st_nlink == 1
        np.testing.assert_array_equal(decode(path), pixels)
    finally:
        pool.close()


# -- never blocks, never outlives its run (issue 17, item 4) ----------------------------------------
def test_one_sample_larger_than_the_whole_budget_is_processed_not_lost(make_pipeline):
    """A single sample's fields exceed ``pinned_pool_bytes``: it cannot be split, so it is processed on
    the pipeline's own thread (counted), never recursed on until ``RecursionError``."""
    generator = torch.Generator().manual_seed(50)
    images = torch.rand(3, 3, 32, 32, generator=generator)  # 3 KB a sample even once converted to uint8
    labels = torch.tensor([0, 1, 2])
    logits = torch.randn(3, NUM_CLASSES, generator=generator)
    pipeline = make_pipeline(num_samples=None, pinned_pool_bytes=2048)
    assert pipeline.worker_ready(120)
    table = run_pass(pipeline, [(images, labels, logits)])
    assert column(table, "id") == [0, 1, 2] and column(table, "truth") == [0, 1, 2]
    assert pipeline.stats.errors == 0 and pipeline.stats.batches_dropped == 0
    expected = images_to_uint8_reference(images).numpy()
    for i, cell in enumerate(column(table, "image")):
        np.testing.assert_array_equal(decode(cell.path), expected[i])


def test_a_closed_pipeline_counts_what_it_is_offered_and_processes_none_of_it(make_pipeline, caplog):
    """After ``close`` a batch or the end of a pass is not processed (no thread is left to do it): it is
    counted, one warning says so, and the end of a pass resolves to ``None`` at once."""
    import logging

    pipeline = make_pipeline(num_samples=None, worker_process=False)
    assert column(run_pass(pipeline, make_batches(1, 4)), "id") == [0, 1, 2, 3]
    assert pipeline.close(60)
    with caplog.at_level(logging.WARNING, logger="logbus"):
        for images, labels, logits in make_batches(2, 4, seed=51):
            pipeline.submit(images, labels, logits)
        future = pipeline.end_pass("eval", step=1)
    assert future.result(timeout=0) is None
    assert (pipeline.stats.batches_after_close, pipeline.stats.batches_submitted) == (2, 1)
    assert pipeline.stats.tables_dropped == 1
    said = [r.getMessage() for r in caplog.records if "after the pipeline was closed" in r.getMessage()]
    assert len(said) == 1, said


def test_rows_arrive_after_the_training_process_changes_its_working_directory(make_pipeline, tmp_path, monkeypatch):
    """A sweep (Hydra's multirun) changes directory between two runs while the worker process, started
    by the first, keeps its own: the second run's scratch folder, given relative, is made absolute, so
    the worker writes its files where the training process reads them."""
    first = make_pipeline(num_samples=None)
    assert first.worker_ready(120)
    (tmp_path / "run2").mkdir()
    monkeypatch.chdir(tmp_path / "run2")
    second = make_pipeline(num_samples=None)
    assert second.keep_scratch_in(".scratch")  # as the local backend's relative root gives it
    assert second.worker_ready(120) and second.worker_pid == first.worker_pid
    batches = make_batches(2, 3, seed=52)
    table = run_pass(second, batches)
    assert column(table, "id") == list(range(6)) and second.stats.errors == 0
    expected = images_to_uint8_reference(torch.cat([b[0] for b in batches])).numpy()
    for i, cell in enumerate(column(table, "image")):
        assert cell.path.startswith(str(tmp_path / "run2" / ".scratch"))
        np.testing.assert_array_equal(decode(cell.path), expected[i, :, :, 0])


_WORKER_LIFETIME_SCRIPT = """
import time, torch
from logbus.samples._pipeline import pipeline_for

def make():
    return pipeline_for("classification", {"class_names": ["a", "b"]}, num_samples=None)

def ids(pipeline):
    pipeline.submit(torch.rand(3, 1, 2, 2), torch.tensor([0, 1, 0]), torch.randn(3, 2))
    table = pipeline.end_pass("eval", step=0).result(60)
    return [row[table.columns.index("id")] for row in table.rows]

first, second = make(), make()
assert first.worker_ready(120) and second.worker_ready(120)
pid, worker = first.worker_pid, first._worker_pipeline.process.popen  # our child: poll() tells whether it has ended
first.cleanup()
assert worker.poll() is None, "the worker ended while the second pipeline still used it"
assert ids(second) == [0, 1, 2]
second.cleanup()
deadline = time.monotonic() + 60
while worker.poll() is None:
    assert time.monotonic() < deadline, "the worker process outlived every pipeline"
    time.sleep(0.01)
third = make()
assert third.worker_ready(120) and third.worker_pid != pid, "no new worker for the next pipeline"
assert ids(third) == [0, 1, 2]
third.cleanup()
print("worker lifetime ok")
"""


def test_the_worker_process_ends_when_the_last_pipeline_closes(tmp_path):
    """The worker (hundreds of MB) does not outlive the runs that use it: it ends once the last
    pipeline is cleaned up, and the next pipeline starts a new one. In an interpreter of its own: the
    worker is shared by every pipeline of a process, so one that another test left open here would
    rightly keep it alive."""
    import subprocess
    import sys

    script = tmp_path / "worker_lifetime.py"
    script.write_text(_WORKER_LIFETIME_SCRIPT)
    done = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and "worker lifetime ok" in done.stdout, done.stderr[-3000:]


def test_a_killed_training_process_leaves_no_scratch_files_after_the_next_start(tmp_path):
    """A training process killed with SIGKILL cannot delete its encoded images from ``/dev/shm``: the
    next process to start a pipeline there sweeps folders whose owner is gone (and only those)."""
    import signal
    import subprocess
    import sys

    script = tmp_path / "killed.py"
    script.write_text(
        "import os, signal, sys, torch\n"
        "from logbus.samples._pipeline import pipeline_for\n"
        "p = pipeline_for('classification', {'class_names': ['a', 'b']}, num_samples=None, worker_process=False)\n"
        "p.submit(torch.rand(4, 3, 8, 8), torch.tensor([0, 1, 0, 1]), torch.randn(4, 2))\n"
        "p.end_pass('eval', step=0).result(60)\n"
        "print(p.encoder.folder, flush=True)\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n")
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert done.returncode == -signal.SIGKILL, done.stderr
    left = done.stdout.strip()
    assert len(os.listdir(left)) == 4  # its images, left behind for good (a sweep in this process is done)
    live = tmp_path / "live.py"  # a live owner's folder in the same place is not touched
    live.write_text(
        "import sys\n"
        "from logbus.samples._pipeline import pipeline_for\n"
        "p = pipeline_for('classification', {'class_names': ['a', 'b']}, worker_process=False)\n"
        "print(p.encoder.folder, flush=True)\n"
        "sys.stdin.read()\n")
    owner = subprocess.Popen([sys.executable, str(live)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                             cwd=tmp_path)
    try:
        alive = owner.stdout.readline().strip()
        sweeper = subprocess.run([sys.executable, "-c", "from logbus.samples._pipeline import pipeline_for; "
                                  "pipeline_for('classification', {'class_names': ['a']}, worker_process=False)"
                                  ".cleanup()"], capture_output=True, text=True, timeout=300, cwd=tmp_path)
        assert sweeper.returncode == 0, sweeper.stderr
        assert not os.path.exists(left) and not os.path.exists(left + ".owner")
        assert os.path.isdir(alive)
    finally:
        owner.communicate("", timeout=120)
    assert not os.path.exists(alive)


def test_the_worker_process_never_imports_from_the_training_scripts_working_directory(tmp_path):
    """``queue.py`` (or any module named like one the worker imports) in the working directory of a
    training script must not run inside the worker process: it starts isolated (``-I``), on every
    Python the package allows, and still loads the extractor."""
    import subprocess
    import sys

    work = tmp_path / "work"
    work.mkdir()
    marker = tmp_path / "imported"
    (work / "queue.py").write_text(f"open({str(marker)!r}, 'w').close()\nfrom _queue import *\n"
                                   "raise ImportError('the working directory queue.py')\n")
    script = tmp_path / "train.py"  # elsewhere: the training process itself does not see work/
    script.write_text(
        "from logbus.samples._pipeline import pipeline_for\n"
        "p = pipeline_for('classification', {'class_names': ['a', 'b']}, num_samples=None)\n"
        "assert p.worker_ready(120), p._worker_pipeline.error\n"
        "print(p.worker_pid)\n"
        "p.cleanup()\n")
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300, cwd=work)
    assert done.returncode == 0, done.stderr
    assert not marker.exists(), "the worker process imported queue.py from the working directory"


def test_a_backend_releasing_files_to_a_worker_that_does_not_read_never_blocks_submit(make_pipeline):
    """A backend's writer gives back a big table's files while the worker process reads nothing (it is
    stopped): the message fills the socket. The training thread's next ``submit`` must return at
    once all the same: nothing is ever sent on the socket from a caller's thread or under the lock
    that ``submit`` takes."""
    import signal

    pipeline = make_pipeline(num_samples=None)
    assert pipeline.worker_ready(120)
    pid = pipeline.worker_pid
    os.kill(pid, signal.SIGSTOP)
    try:
        paths = [f"{pipeline.encoder.folder}/{i:032x}.png" for i in range(200_000)]  # megabytes: fills the socket
        releasing = threading.Thread(target=pipeline._worker_pipeline.release, args=(paths,), daemon=True)
        releasing.start()
        releasing.join(2)  # it may block (the socket is full) or return at once: either way, go on
        submitted = threading.Event()

        def submit():
            for images, labels, logits in make_batches(2, 4, seed=53):
                pipeline.submit(images, labels, logits)
            submitted.set()

        threading.Thread(target=submit, daemon=True).start()
        assert submitted.wait(60), "submit blocked behind a release sent to a worker that does not read"
    finally:
        os.kill(pid, signal.SIGCONT)
    table = pipeline.end_pass("eval", step=0).result(timeout=60)
    assert column(table, "id") == list(range(8))


def test_a_hung_worker_costs_its_sample_table_counted_never_a_metric(logbus_dir, caplog):
    """The worker process stops answering after an eval: the table waiting for it in each backend's
    ordered queue is given up after ``worker_stall_timeout`` (its batches counted lost, one warning),
    and every one of the 51 metrics logged after it arrives before ``close`` returns."""
    import logging
    import signal

    from logbus.testing import RecordingBackend

    recorder = RecordingBackend()
    bus = Bus([recorder], close_timeout=60)
    pipeline = SamplePipeline(ClassificationExtractor(class_names=CLASS_NAMES), num_samples=None,
                              worker_stall_timeout=1.0)
    try:
        assert pipeline.worker_ready(120)
        bus.emit(pipeline.table_record("eval", step=0))  # nothing offered: an empty pass, resolved at once
        pid = pipeline.worker_pid
        os.kill(pid, signal.SIGSTOP)
        with caplog.at_level(logging.WARNING, logger="logbus"):
            for images, labels, logits in make_batches(3, 4, seed=54):
                pipeline.submit(images, labels, logits)
            bus.emit(pipeline.table_record("eval", step=1))
            for step in range(2, 53):
                bus.emit(Metrics({"loss": float(step)}, step=step))
            assert bus.close(timeout=60)
        metrics = recorder.of_type(Metrics)
        assert [m.step for m in metrics] == list(range(2, 53))
        assert pipeline.stats.batches_lost == 3
        assert any("answered nothing" in r.getMessage() for r in caplog.records)
    finally:
        os.kill(pid, signal.SIGCONT)
        pipeline.cleanup(60)


# -- what the worker process costs (issue 17, item 2) -----------------------------------------------
@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="reads the worker's memory map from /proc")
@pytest.mark.parametrize("extractor", ["classification", "segmentation"])
def test_the_worker_process_never_imports_torch_for_the_built_in_extractors(make_pipeline, extractor):
    """The worker runs host stages only (numpy, Pillow): the extractors' device stages run in the
    training process, and what it unpickles (``host_part()``) lives in a module without torch, which
    costs about 2 s of CPU and 500 MB at every start. Rows still arrive whole."""
    pipeline = make_pipeline(extractor, {"class_names": CLASS_NAMES}, num_samples=None)
    assert pipeline.worker_ready(120)
    if extractor == "classification":
        batches = make_batches(2, 3, seed=60)
    else:
        generator = torch.Generator().manual_seed(61)
        batches = [(torch.rand(3, 3, 8, 8, generator=generator), torch.randint(0, 4, (3, 8, 8), generator=generator),
                    torch.randn(3, 4, 8, 8, generator=generator)) for _ in range(2)]
    table = run_pass(pipeline, batches)
    assert column(table, "id") == list(range(6)) and pipeline.stats.batches_in_process == 0
    with open(f"/proc/{pipeline.worker_pid}/maps") as maps:
        mapped = maps.read()
    assert "libtorch" not in mapped and "/torch/" not in mapped


def test_encoders_default_to_this_process_cores_shared_among_the_node_ranks(make_pipeline, monkeypatch):
    """``encode_workers=None`` (the default): the cores this process may run on (its affinity, not the
    host's count), divided among the ranks of the node (``LOCAL_WORLD_SIZE``), at least one."""
    from logbus.samples._pipeline import default_encode_workers

    cores = len(os.sched_getaffinity(0))
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "1")
    assert default_encode_workers() == cores
    assert make_pipeline(worker_process=False).encoder._executor._max_workers == cores
    monkeypatch.setenv("LOCAL_WORLD_SIZE", str(cores * 2))
    assert default_encode_workers() == 1
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    pipeline = make_pipeline(worker_process=False)
    assert pipeline.encoder._executor._max_workers == max(1, cores // 2)
    assert make_pipeline(worker_process=False, encode_workers=3).encoder._executor._max_workers == 3


def test_scratch_files_fall_back_to_disk_with_one_warning_where_tmpfs_is_small(monkeypatch, caplog):
    """Docker's default ``/dev/shm`` is 64 MB, and the batches' shared memory needs it too: below
    ``TMPFS_MIN_FREE_BYTES`` free, encoded files wait in the temporary folder on disk, said once.

    A fake ``statvfs`` here, on purpose: filling the real ``/dev/shm`` would fail every other process
    on this shared machine."""
    import logging
    import tempfile

    from logbus.samples import _encoder_pool

    real = os.statvfs

    def small(path):
        stats = real(path)
        if path != "/dev/shm":
            return stats
        return os.statvfs_result((stats.f_bsize, stats.f_frsize, stats.f_blocks, 10, 10, *tuple(stats)[5:]))

    monkeypatch.setattr(os, "statvfs", small)
    monkeypatch.setattr(_encoder_pool, "_scratch_parent", None)
    with caplog.at_level(logging.WARNING, logger="logbus"):
        pools = [_encoder_pool.EncoderPool(workers=1) for _ in range(2)]
    try:
        assert all(os.path.dirname(pool.folder) == tempfile.gettempdir() for pool in pools)
        said = [r.getMessage() for r in caplog.records if "/dev/shm" in r.getMessage()]
        assert len(said) == 1 and "on disk" in said[0], said
    finally:
        for pool in pools:
            pool.close()
    monkeypatch.setattr(_encoder_pool, "_scratch_parent", None)  # the next pool chooses again


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="reads the worker's memory map from /proc")
def test_the_worker_unmaps_the_shared_memory_of_a_pipeline_that_closed(make_pipeline):
    """A pipeline that closes unlinks its shared buffers; the worker, still serving another pipeline,
    unmaps them too (before, it kept up to 16 mapped, so their memory stayed in use)."""
    first, second = make_pipeline(num_samples=None), make_pipeline(num_samples=None)
    assert first.worker_ready(120) and second.worker_ready(120)
    run_pass(first, make_batches(2, 4, seed=70))
    names = [buffer.name.lstrip("/") for buffer in first._worker_pipeline.shared._all]
    pid = first.worker_pid
    assert names

    def mapped() -> set[str]:
        with open(f"/proc/{pid}/maps") as maps:
            text = maps.read()
        return {name for name in names if name in text}

    assert mapped() == set(names)
    first.cleanup()
    eventually(lambda: not mapped(), "the worker still maps a closed pipeline's shared memory")
    assert column(run_pass(second, make_batches(1, 3)), "id") == [0, 1, 2]


@pytest.mark.parametrize("worker_process", [True, False])
def test_a_batch_refilled_in_place_after_submit_logs_what_was_offered(make_pipeline, tmp_path, worker_process):
    """A loop that refills one preallocated batch in place (a reused input buffer): ``submit`` keeps its
    own copy of the chosen rows, so the table holds what was offered, whenever the pipeline's thread
    gets to it (here: after the refill, the gate held shut until then)."""
    gate = tmp_path / "open"
    pipeline = make_pipeline(FileGatedClassification(gate, class_names=CLASS_NAMES), num_samples=None,
                             worker_process=worker_process)
    if worker_process:
        assert pipeline.worker_ready(120)
    [(images, labels, logits)] = make_batches(1, 4, seed=80)
    offered = images_to_uint8_reference(images.clone()).numpy()
    truths = labels.tolist()
    pipeline.submit(images, labels, logits)
    images.fill_(0.0)
    labels.fill_(3)
    gate.touch()
    table = pipeline.end_pass("eval", step=0).result(timeout=60)
    assert column(table, "truth") == truths
    for i, cell in enumerate(column(table, "image")):
        np.testing.assert_array_equal(decode(cell.path), offered[i, :, :, 0])


def test_the_pinned_pool_reuses_free_buffers_of_other_sizes():
    """Buffers of several sizes come back to the pool (CPU batches of every size are staged in it): taking
    the smallest one that fits must not compare tensors element by element (``list.remove`` does)."""
    from logbus.samples._pinned_pool import PinnedPool

    pool = PinnedPool(1 << 20)
    small, large = pool.acquire(1000), pool.acquire(4000)
    pool.release(large)
    pool.release(small)
    assert pool.acquire(2000) is large
    assert pool.acquire(10) is small
    assert pool.held_bytes == 5000
