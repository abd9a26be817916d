"""The ``regression`` extractor: samples of a model that predicts one number per sample.

Rows ``id, target, prediction, abs_error``. With ``policy="hardest"`` the table holds the samples
with the largest absolute error of the whole eval pass (the pipeline ranks by the ``loss`` field).

It follows the extractor contract, ``logbus.hookspecs.Extractor``:

- ``check`` runs on the training thread, before anything is queued: it looks at shapes and dtypes
  only (never at values, which could wait on the GPU) and names the argument that is wrong;
- ``device_stage`` works on whole batches of tensors, on their device (a side CUDA stream there);
- ``host_stage`` runs on a worker thread with numpy arrays and builds one row per sample.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch


def _per_sample(tensor: Any, argument: str, expected: str) -> torch.Tensor:
    """``[N]`` or ``[N, 1]`` as ``[N]`` (a view: no copy, no sync)."""
    if isinstance(tensor, (tuple, list)) and tensor and isinstance(tensor[0], torch.Tensor):
        tensor = tensor[0]  # (predictions, ...) as some models return
    if not isinstance(tensor, torch.Tensor):
        raise TypeError(f"{argument}: expected {expected} as a tensor [N] or [N, 1], got {type(tensor).__name__}")
    if tensor.dim() == 2 and tensor.shape[1] == 1:
        tensor = tensor[:, 0]
    if tensor.dim() != 1:
        raise ValueError(f"{argument}: expected {expected}, one number per sample ([N] or [N, 1]), "
                         f"got shape {tuple(tensor.shape)}")
    if tensor.dtype == torch.bool or tensor.is_complex():
        raise TypeError(f"{argument}: expected real numbers, got dtype {tensor.dtype}")
    return tensor


class RegressionExtractor:
    """Rows ``id, target, prediction, abs_error``. A number that is not finite (a diverged model's NaN
    or inf prediction) is an empty cell (None), so that every backend can store the row; with
    ``policy="hardest"`` such samples come first.

    :param decimals: round target, prediction and error to this many decimals in the table
        (``None``: full float32 precision).
    """

    name = "regression"
    has_class_per_sample = False  # the per_class policy does not apply
    num_classes = None
    columns = ["id", "target", "prediction", "abs_error"]

    def __init__(self, *, decimals: int | None = None):
        if decimals is not None and (isinstance(decimals, bool) or not isinstance(decimals, int) or decimals < 0):
            raise ValueError(f"decimals: expected an int >= 0 or None, got {decimals!r}")
        self.decimals = decimals

    def check(self, inputs: Any, targets: Any, outputs: Any) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        del inputs  # the rows do not show them; not keeping them lets their memory go with the batch
        predictions = _per_sample(outputs, "outputs", "predictions")
        if not predictions.dtype.is_floating_point:
            raise TypeError(f"outputs: expected floating-point predictions, got dtype {predictions.dtype}")
        targets = _per_sample(targets, "targets", "targets")
        if targets.shape[0] != predictions.shape[0]:
            raise ValueError(f"targets: expected batch size {predictions.shape[0]} (as the outputs), "
                             f"got shape {tuple(targets.shape)}")
        if targets.device != predictions.device:
            raise ValueError(f"targets: expected them on {predictions.device} (as the outputs), got {targets.device}")
        # The pipeline selects samples from all three tensors along dim 0: an empty [N, 0] tensor
        # stands in for the inputs (allocating it is asynchronous, and it holds no memory).
        placeholder = predictions.new_empty((predictions.shape[0], 0))
        return placeholder, targets.detach(), predictions.detach()

    def device_stage(self, inputs: torch.Tensor, targets: torch.Tensor,
                     predictions: torch.Tensor) -> dict[str, torch.Tensor]:
        del inputs
        # float32 whatever came in: numpy has no bfloat16, and integer targets (counts) mix with floats.
        target, prediction = targets.float(), predictions.float()
        return {
            "target": target,
            "prediction": prediction,
            # Named "loss" so that policy="hardest" ranks by it; NaN (non-finite) ranks first.
            "loss": (prediction - target).abs(),
        }

    def host_stage(self, fields: dict[str, np.ndarray], encode) -> list[list]:
        del encode  # no images in these rows
        rows = []
        for i in range(len(fields["sample_id"])):
            rows.append([int(fields["sample_id"][i]), self._number(fields["target"][i]),
                         self._number(fields["prediction"][i]), self._number(fields["loss"][i])])
        return rows

    def _number(self, value) -> float | None:
        value = float(value)
        if not math.isfinite(value):
            return None
        return value if self.decimals is None else round(value, self.decimals)
