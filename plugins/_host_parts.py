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

from logbus.files import content_hashes
from logbus.records import ColumnRows, ImageColumn, MaskColumn
from logbus.samples._pending_image import PendingImage

Encode = Callable[[np.ndarray], Any]
Hashes = Callable[[np.ndarray], list]  # a batch's content hashes, a row each (logbus.files.content_hashes)


class ClassificationHostPart:
    """Rows of ``logbus.plugins.classification.ClassificationExtractor`` from its host fields."""

    def __init__(self, class_names: Mapping[int, str] | None, top_k: int):
        self.class_names = class_names
        self.top_k = top_k

    def host_columns(self, fields: dict[str, np.ndarray], hashes: Hashes = content_hashes) -> ColumnRows | None:
        """The rows of ``host_stage`` as columns, where no image becomes a file: whole-batch numpy and
        ``hashes`` of the images (``content_hashes``, or the encoder pool's, on its threads), no Python
        object per cell. None where the images are not what ``records.Image`` takes (``host_stage`` then
        says why, cell by cell)."""
        images = _image_column(fields, "image", hashes)
        if images is None:
            return None
        truth, prediction = (np.asarray(fields[k], np.int64) for k in ("truth", "prediction"))
        finite = np.asarray(fields["finite"], bool)
        data: dict[str, Any] = {
            "id": np.asarray(fields["sample_id"], np.int64), "image": images, "truth": truth,
            "prediction": prediction, "confidence": np.asarray(fields["confidence"], np.float64),
            "correct": finite & (truth == prediction), "loss": np.asarray(fields["loss"], np.float64),
            "flag": np.where(finite, "", "nonfinite").tolist()}
        columns = ["id", "image", "truth", "prediction", "confidence", "correct", "loss", "flag"]
        if self.top_k > 1:
            columns.append("top_k")
            data["top_k"] = [", ".join(f"{self._name(int(c))}:{p:.3f}" for c, p in zip(classes, probs) if c >= 0)
                             for classes, probs in zip(fields["topk_indices"].tolist(), fields["topk_probs"].tolist())]
        if self.class_names:
            columns += ["truth_name", "prediction_name"]
            data["truth_name"] = [self._name(c) for c in truth.tolist()]
            data["prediction_name"] = [self._name(c) if c >= 0 else "" for c in prediction.tolist()]
        return ColumnRows(columns, data, len(truth))

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


class SegmentationHostPart:
    """Rows of ``logbus.plugins.segmentation.SegmentationExtractor`` from its host fields."""

    def __init__(self, class_names: Mapping[int, str] | None):
        self.class_names = class_names

    def host_columns(self, fields: dict[str, np.ndarray], hashes: Hashes = content_hashes) -> ColumnRows | None:
        """The rows of ``host_stage`` as columns (see ``ClassificationHostPart.host_columns``); None where
        the images or masks are not what ``records.Image`` and ``records.Mask`` take."""
        images = _image_column(fields, "image", hashes)
        masks = {name: _mask_column(fields, field, fields["image"].shape[1:3] if images is not None else None,
                                    self.class_names, hashes)
                 for name, field in (("ground_truth", "truth"), ("prediction", "prediction"))}
        if images is None or any(mask is None for mask in masks.values()):
            return None
        images = ImageColumn(images.pixels, images.digests, masks)  # type: ignore[arg-type]
        data = {"id": np.asarray(fields["sample_id"], np.int64), "image": images,
                "pixel_accuracy": np.asarray(fields["pixel_accuracy"], np.float64),
                "loss": np.asarray(fields["loss"], np.float64),
                "confidence": np.asarray(fields["confidence"], np.float64),
                "flag": np.where(np.asarray(fields["finite"], bool), "", "nonfinite").tolist()}
        return ColumnRows(list(data), data, len(data["id"]))

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


def _image_column(fields: dict[str, np.ndarray], name: str, hashes: Hashes) -> ImageColumn | None:
    """The batch's images (field ``name``: ``[N, H, W, C]``, or ``[N, H, W]``) hashed where they lie; the
    column names the field, and the training process fills in its copy (``ColumnRows.fill``). None where
    they are not uint8 with 1, 3 or 4 channels."""
    images = fields[name]
    if images.ndim == 3:
        images = images[..., None]
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[3] not in (1, 3, 4) or 0 in images.shape[1:]:
        return None
    return ImageColumn(name, hashes(images))


def _mask_column(fields: dict[str, np.ndarray], name: str, shape: tuple[int, ...] | None,
                 labels: Mapping[int, str] | None, hashes: Hashes) -> MaskColumn | None:
    """The batch's class-id masks (field ``name``, ``[N, H, W]``) hashed where they lie (see
    ``_image_column``); None where they are not non-negative integer ids of the images' height and width."""
    ids = fields[name]
    if shape is None or ids.ndim != 3 or ids.shape[1:] != shape or ids.dtype.kind not in "iu":
        return None
    if ids.dtype.kind == "i" and ids.size and ids.min() < 0:
        return None
    if labels is not None and not all(isinstance(k, int) and isinstance(v, str) for k, v in labels.items()):
        return None
    return MaskColumn(name, hashes(ids), labels)
