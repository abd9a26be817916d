"""Semantic segmentation samples: the image with its ground-truth and predicted masks overlaid.

Device stage: image -> uint8 NHWC and logits ``[N, K, H, W]`` -> per-pixel class mask (uint8 when
K <= 255, else int16), both fused kernels; per-sample pixel accuracy and mean cross entropy.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np
import torch

from logbus.kernels import images_to_uint8, segmentation_mask
from logbus.options import Option, Options
from logbus.plugins._host_parts import SegmentationHostPart
from logbus.samples import IMAGE_OPTIONS, check_batch, check_images, class_names_map, image_options, logits_of


class SegmentationExtractor:
    """Rows: ``id, image (masks ground_truth + prediction), pixel_accuracy, loss, flag``.

    Targets: class-id masks ``[N, H, W]`` (or ``[N, 1, H, W]``); ids outside ``[0, K)`` (such as an
    ignore index of 255) are left out of accuracy and loss, and kept as they are in the ground-truth
    mask (negative ones, such as -100, show as the mask dtype's largest value)."""

    name = "segmentation"
    has_class_per_sample = False
    options = Options(
        Option("class_names", None, "names of the mask classes"),  # checked by class_names_map
        *IMAGE_OPTIONS.values(),  # checked by image_options
    )

    # (defaults are read from the class body's `options` while the class is being made)
    def __init__(self, *, class_names: Sequence[str] | Mapping[int, str] | None = options.defaults["class_names"],
                 mean=options.defaults["mean"], std=options.defaults["std"],
                 value_range: str = options.defaults["value_range"],
                 channels_last: bool | None = options.defaults["channels_last"]):
        self.class_names = class_names_map(class_names)
        self._host_part = SegmentationHostPart(self.class_names)
        self.num_classes = None
        self.image_options = image_options(mean=mean, std=std, value_range=value_range, channels_last=channels_last)
        self.columns = ["id", "image", "pixel_accuracy", "loss", "confidence", "flag"]

    def check(self, inputs: Any, targets: Any, outputs: Any):
        batch_size = check_images(inputs, **self.image_options)
        logits = logits_of(outputs)
        if logits.dim() != 4:
            raise ValueError(f"outputs: expected segmentation logits [N, K, H, W], got shape {tuple(logits.shape)}")
        check_batch("outputs", logits, batch_size)
        if not isinstance(targets, torch.Tensor):
            raise TypeError(f"targets: expected a mask tensor [N, H, W], got {type(targets).__name__}")
        if targets.dim() == 4 and targets.shape[1] == 1:
            targets = targets[:, 0]
        if targets.dim() != 3 or targets.dtype.is_floating_point:
            raise ValueError(f"targets: expected integer class-id masks [N, H, W], got shape {tuple(targets.shape)} "
                             f"dtype {targets.dtype}")
        check_batch("targets", targets, batch_size)
        if tuple(targets.shape[1:]) != tuple(logits.shape[2:]):
            raise ValueError(f"targets: mask size {tuple(targets.shape[1:])} differs from the logits' "
                             f"{tuple(logits.shape[2:])}")
        return inputs.detach(), targets.detach(), logits.detach()

    def device_stage(self, inputs, targets, logits) -> dict[str, torch.Tensor]:
        num_classes = logits.shape[1]
        prediction = segmentation_mask(logits)
        truth = targets.long()
        valid = (truth >= 0) & (truth < num_classes)
        safe_truth = torch.where(valid, truth, torch.zeros_like(truth))
        # Cross-entropy and the top probability from one log-sum-exp and the per-pixel maximum: what
        # F.cross_entropy and softmax(1).amax(1) give (NaN where a pixel has no softmax), each of which
        # would reduce over the classes again (on CPU, half of this stage's time at 5 classes).
        scores = logits.float()
        top = scores.amax(1)
        log_total = torch.logsumexp(scores, 1)
        no_softmax = top.isnan() | (top == float("inf")) | (top == float("-inf"))
        pixel_loss = torch.where(no_softmax, float("nan"),
                                 log_total - scores.gather(1, safe_truth.unsqueeze(1)).squeeze(1))
        count = valid.sum((1, 2)).clamp_min(1)
        probs_max = torch.where(no_softmax, float("nan"), (top - log_total).exp())
        # -inf is a valid logit (a class masked out); a NaN, a +inf or a pixel with every class at -inf
        # has no softmax, and each shows in the per-pixel maximum (as in logbus.kernels.logits_summary).
        finite = torch.isfinite(top).flatten(1).all(1)
        # The ground truth is shown as the dataset has it: an ignore id (255) stays 255, never class 0.
        # Ids the mask dtype cannot hold (-100) show as its largest value (255: no class id when K <= 255).
        largest = torch.iinfo(prediction.dtype).max
        shown_truth = torch.where((truth >= 0) & (truth <= largest), truth, torch.full_like(truth, largest))
        return {
            "image": images_to_uint8(inputs, **self.image_options),
            "truth": shown_truth.to(prediction.dtype),
            "prediction": prediction,
            "pixel_accuracy": ((prediction.long() == truth) & valid).sum((1, 2)) / count,
            "loss": (pixel_loss * valid).sum((1, 2)) / count,
            "confidence": probs_max.mean((1, 2)),
            "finite": finite,
        }

    def host_stage(self, fields: dict[str, np.ndarray], encode) -> list[list]:
        return self._host_part.host_stage(fields, encode)

    def host_part(self) -> Any:
        """What the sample pipeline's worker process runs ``host_stage`` on: an object of a module without
        torch (``logbus.plugins._host_parts``), or this extractor where a subclass has its own host stage."""
        return self._host_part if type(self).host_stage is SegmentationExtractor.host_stage else self

