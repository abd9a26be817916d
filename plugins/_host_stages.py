"""The host stages of the built-in image extractors, in a module that does not import torch.

The sample pipeline's worker process runs host stages only (rows, hashes, encoded files): it unpickles
what an extractor's ``host_part()`` returns, and importing that object's module is all it imports. The
extractors' own modules import torch and the kernels for their device stages, which run in the training
process; importing torch costs the worker about 2 s of CPU at every start and hundreds of MB of memory.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Mapping

import numpy as np

from logbus.samples._pending_image import PendingImage

Encode = Callable[[np.ndarray], Any]


class ClassificationHostStage:
    """Rows of ``logbus.plugins.classification.ClassificationExtractor`` from its host fields."""

    def __init__(self, class_names: Mapping[int, str] | None, top_k: int):
        self.class_names = class_names
        self.top_k = top_k

    def host_stage(self, fields: dict[str, np.ndarray], encode: Encode) -> list[list]:
        # Whole columns to Python objects at once: per-element numpy indexing costs more than the rest.
        ids, truths, predictions = (fields[k].tolist() for k in ("sample_id", "truth", "prediction"))
        confidences, losses, finites = (fields[k].tolist() for k in ("confidence", "loss", "finite"))
        rows = []
        for i, (sample_id, truth, prediction, confidence, loss, finite) in enumerate(
                zip(ids, truths, predictions, confidences, losses, finites)):
            row = [sample_id, PendingImage(encode(fields["image"][i])), truth, prediction,
                   None if math.isnan(confidence) else confidence, finite and truth == prediction,
                   None if math.isnan(loss) else loss, "" if finite else "nonfinite"]
            if self.top_k > 1:
                row.append(", ".join(f"{self._name(int(c))}:{p:.3f}" for c, p in
                                     zip(fields["topk_indices"][i], fields["topk_probs"][i]) if c >= 0))
            if self.class_names:
                row += [self._name(truth), self._name(prediction) if prediction >= 0 else ""]
            rows.append(row)
        return rows

    def _name(self, class_id: int) -> str:
        return self.class_names.get(class_id, str(class_id)) if self.class_names else str(class_id)


class SegmentationHostStage:
    """Rows of ``logbus.plugins.segmentation.SegmentationExtractor`` from its host fields."""

    def __init__(self, class_names: Mapping[int, str] | None):
        self.class_names = class_names

    def host_stage(self, fields: dict[str, np.ndarray], encode: Encode) -> list[list]:
        rows = []
        for i in range(len(fields["sample_id"])):
            masks = {"ground_truth": (np.array(fields["truth"][i]), self.class_names),
                     "prediction": (np.array(fields["prediction"][i]), self.class_names)}
            loss, finite = float(fields["loss"][i]), bool(fields["finite"][i])
            rows.append([int(fields["sample_id"][i]), PendingImage(encode(fields["image"][i]), masks=masks),
                         float(fields["pixel_accuracy"][i]), None if math.isnan(loss) else loss,
                         float(fields["confidence"][i]), "" if finite else "nonfinite"])
        return rows
