"""Which samples of an eval pass end up in the table.

``first`` and ``reservoir`` decide from batch sizes alone (known on the host without reading the
device), so only the chosen samples are ever converted and copied. ``per_class`` and ``hardest``
need values computed on the device (labels, losses); they keep a running top-k *on the device*
(one ``topk`` over the kept samples plus the new batch), so no batch ever waits for the host.
"""

from __future__ import annotations

import numpy as np
import torch

from logbus.samples._options import PIPELINE_OPTIONS, SAMPLING_OPTIONS


class SamplingPolicy:
    """Base: host-side policies choose indices; device-side ones score samples."""

    on_device = False
    rows_in_pass_order = True  # False: the table keeps the policy's own order (hardest first)

    def __init__(self, num_samples: int):
        SAMPLING_OPTIONS["num_samples"].check(num_samples)
        self.num_samples = num_samples

    def start_pass(self) -> None:
        self.seen = 0

    def wants(self, batch_size: int) -> bool:
        """Whether a batch may give this pass a row at all; ``False`` lets the pipeline skip it without
        taking a slot (``first`` once its quota is filled)."""
        return True

    def skip(self, batch_size: int) -> None:
        """A batch the pipeline dropped: its samples keep their ids but take no part in the choice, so
        a dropped batch neither uses up ``first``'s quota nor evicts ``reservoir``'s winners."""
        self.seen += batch_size

    def choose(self, batch_size: int) -> list[int]:
        """Batch-local indices to process. Sample ids are ``seen + index``."""
        raise NotImplementedError

    def kept(self) -> set[int] | None:
        """Sample ids in the final table (None: everything processed)."""
        return None

    top: DeviceTopK  # device policies: the pass's running top-k, made by start_pass

    def scores(self, fields: dict[str, torch.Tensor]) -> torch.Tensor:
        """For device policies: one score per sample of the batch; the highest are kept."""
        raise NotImplementedError

    def keeps(self, scores):
        """For device policies: which of the kept device rows are real (numpy bool mask)."""
        return np.isfinite(scores)


class First(SamplingPolicy):
    """The first ``num_samples`` samples of each pass (of the batches that were not dropped)."""

    def start_pass(self) -> None:
        super().start_pass()
        self.taken = 0  # not ``seen``: samples of a dropped batch are seen but not taken

    def wants(self, batch_size: int) -> bool:
        return self.taken < self.num_samples

    def choose(self, batch_size: int) -> list[int]:
        take = max(0, min(batch_size, self.num_samples - self.taken))
        self.seen += batch_size
        self.taken += take
        return list(range(take))


class Reservoir(SamplingPolicy):
    """A uniform sample over the whole pass, seeded: each sample gets a random key and the
    ``num_samples`` smallest keys win. Chosen per batch, with array operations (this runs on the
    training thread, where a loop over samples would hold the GIL the training step needs): a
    sample of the batch is converted when its key is among the ``num_samples`` smallest of the
    winners so far and the batch. One that enters and is evicted by a later batch was converted for
    nothing; that happens about ``k * ln(n / k)`` times in a pass of ``n``."""

    def __init__(self, num_samples: int, seed: int = 0, pass_index: int = 0):
        super().__init__(num_samples)
        self.seed = seed
        self.passes = pass_index  # the pipeline makes a policy per pass: it says which pass this is

    def start_pass(self) -> None:
        super().start_pass()
        # A stream per (seed, pass): reproducible, and each pass draws anew. SeedSequence takes
        # non-negative ints only: a negative seed maps to its two's complement, still one-to-one.
        self._random = np.random.default_rng([self.seed % 2**64, self.passes])
        self.passes += 1
        self._keys: np.ndarray = np.empty(0, dtype=np.float64)  # the current winners' keys and sample ids
        self._ids: np.ndarray = np.empty(0, dtype=np.int64)

    def choose(self, batch_size: int) -> list[int]:
        keys = np.concatenate([self._keys, self._random.random(batch_size)])
        ids = np.concatenate([self._ids, np.arange(self.seen, self.seen + batch_size, dtype=np.int64)])
        if len(keys) > self.num_samples:
            winners = np.argpartition(keys, self.num_samples - 1)[:self.num_samples]
            keys, ids = keys[winners], ids[winners]
        self._keys, self._ids = keys, ids
        chosen = np.sort(ids[ids >= self.seen]) - self.seen
        self.seen += batch_size
        return chosen.tolist()

    def kept(self) -> set[int]:
        return set(self._ids.tolist())


class DeviceTopK:
    """Keeps the ``capacity`` highest-scoring samples of a pass on the device, fields and all."""

    def __init__(self, capacity: int):
        self.capacity = capacity
        self.fields: dict[str, torch.Tensor] | None = None

    def update(self, fields: dict[str, torch.Tensor], scores: torch.Tensor) -> None:
        if self.fields is not None:
            fields = {k: torch.cat([self.fields[k], v]) for k, v in fields.items()}
            scores = torch.cat([self.fields["_score"], scores])
        k = min(self.capacity, scores.shape[0])
        # sorted=True with ties broken by position keeps the choice deterministic across runs.
        top = torch.topk(scores, k, sorted=True).indices
        self.fields = {name: value.index_select(0, top) for name, value in fields.items()}
        self.fields["_score"] = scores.index_select(0, top)


class Hardest(SamplingPolicy):
    """The ``num_samples`` samples with the highest loss (``by="loss"``) or lowest confidence
    (``by="confidence"``) over the whole pass."""

    on_device = True
    rows_in_pass_order = False

    def __init__(self, num_samples: int, by: str = "loss"):
        super().__init__(num_samples)
        PIPELINE_OPTIONS["hardest_by"].check(by)
        self.by = by

    def start_pass(self) -> None:
        super().start_pass()
        self.top = DeviceTopK(self.num_samples)

    def scores(self, fields: dict[str, torch.Tensor]) -> torch.Tensor:
        if self.by == "loss":
            # NaN losses (non-finite logits) rank first: they are the samples a user must see.
            return torch.nan_to_num(fields["loss"].float(), nan=float("inf"))
        return -torch.nan_to_num(fields["confidence"].float(), nan=-1.0)

    def keeps(self, scores):
        return np.ones(len(scores), dtype=bool)  # every kept sample is real; +inf means NaN loss


class PerClass(SamplingPolicy):
    """``num_samples`` samples in all, balanced over the true classes: the earliest sample of each
    class first, then the second of each class, and so on (a class with fewer samples leaves its
    share to the others). Ties within a round go to the earlier sample."""

    on_device = True

    def __init__(self, num_samples: int, num_classes: int | None):
        super().__init__(num_samples)
        if not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"num_classes: expected an int >= 1 for policy 'per_class' (give class_names), "
                             f"got {num_classes!r}")
        self.num_classes = num_classes

    def start_pass(self) -> None:
        super().start_pass()
        self.top = DeviceTopK(self.num_samples)
        self._counts: torch.Tensor | None = None

    def scores(self, fields: dict[str, torch.Tensor]) -> torch.Tensor:
        labels = fields["truth"].long().clamp(0, self.num_classes - 1)
        if self._counts is None:
            self._counts = torch.zeros(self.num_classes, dtype=torch.long, device=labels.device)
        one_hot = torch.nn.functional.one_hot(labels, self.num_classes)
        rank_in_class = (one_hot.cumsum(0) * one_hot).sum(1) - 1 + self._counts[labels]
        self._counts += one_hot.sum(0)
        # One int64 key per sample, higher wins: the round (rank within its class) first, then the
        # position in the pass. A rank past num_samples can never win, so it is clamped there, which
        # keeps the key exact for sample ids below 2**32.
        key = rank_in_class.clamp_max(self.num_samples) * 2**32 + fields["sample_id"].long()
        return -key


def make_policy(policy: str, num_samples: int, *, seed: int = 0, hardest_by: str = "loss",
                num_classes: int | None = None, pass_index: int = 0) -> SamplingPolicy:
    if policy == "first":
        return First(num_samples)
    if policy == "reservoir":
        return Reservoir(num_samples, seed, pass_index)
    if policy == "hardest":
        return Hardest(num_samples, hardest_by)
    if policy == "per_class":
        return PerClass(num_samples, num_classes)
    SAMPLING_OPTIONS["policy"].check(policy)
    raise AssertionError(f"policy: {policy!r} is declared in SAMPLING_OPTIONS but has no class here")
