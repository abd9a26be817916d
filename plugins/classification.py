"""Image classification samples: image, truth, prediction, confidence, loss (and top-k).

Device stage: one fused pass for image -> uint8 NHWC and one for argmax + softmax confidence
(``logbus.kernels``), plus a per-sample cross entropy for the ``hardest`` policy.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from logbus.kernels import images_to_uint8, logits_summary
from logbus.options import Option, Options
from logbus.plugins._host_parts import ClassificationHostPart
from logbus.samples import IMAGE_OPTIONS, check_batch, check_images, class_names_map, image_options, logits_of


class ClassificationExtractor:
    """Rows: ``id, image, truth, prediction, confidence, correct, loss, flag`` (+ ``top_k`` when
    ``top_k > 1``, + ``truth_name``/``prediction_name`` with ``class_names``).

    Targets may be class indices ``[N]`` or one-hot / probabilities ``[N, C]``. Non-finite logits
    never raise: the row is logged with prediction -1 and ``flag`` ``"nonfinite"``.
    """

    name = "classification"
    has_class_per_sample = True  # the per_class policy can use "truth"
    options = Options(
        Option("class_names", None, "list of names, or mapping class id -> name"),  # checked by class_names_map
        *IMAGE_OPTIONS.values(),
        Option("top_k", 1, "above 1, a `top_k` column with the k best classes and their probabilities",
               kind="int", minimum=1),
    )

    # (defaults are read from the class body's `options` while the class is being made)
    def __init__(self, *, class_names: Sequence[str] | Mapping[int, str] | None = options.defaults["class_names"],
                 mean=options.defaults["mean"], std=options.defaults["std"],
                 value_range: str = options.defaults["value_range"],
                 channels_last: bool | None = options.defaults["channels_last"], top_k: int = options.defaults["top_k"]):
        self.options.check(top_k=top_k)  # the image options are checked by image_options
        self.class_names = class_names_map(class_names)
        self.num_classes = len(self.class_names) if self.class_names else None
        self.image_options = image_options(mean=mean, std=std, value_range=value_range, channels_last=channels_last)
        self.top_k = top_k
        self._host_part = ClassificationHostPart(self.class_names, top_k)
        self.columns = ["id", "image", "truth", "prediction", "confidence", "correct", "loss", "flag"]
        if top_k > 1:
            self.columns.append("top_k")
        if self.class_names:
            self.columns += ["truth_name", "prediction_name"]

    def check(self, inputs: Any, targets: Any, outputs: Any) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        batch_size = check_images(inputs, **self.image_options)
        logits = logits_of(outputs)
        if logits.dim() != 2:
            raise ValueError(f"outputs: expected classification logits [N, C], got shape {tuple(logits.shape)}")
        if not logits.dtype.is_floating_point:
            raise TypeError(f"outputs: expected floating-point logits, got dtype {logits.dtype}")
        check_batch("outputs", logits, batch_size)
        if not isinstance(targets, torch.Tensor):
            raise TypeError(f"targets: expected a tensor of class ids [N] or one-hot [N, C], got {type(targets).__name__}")
        check_batch("targets", targets, batch_size)
        if targets.dim() == 2 and targets.shape[1] != logits.shape[1]:
            raise ValueError(f"targets: one-hot targets need {logits.shape[1]} columns (as the logits), "
                             f"got shape {tuple(targets.shape)}")
        if targets.dim() not in (1, 2) or (targets.dim() == 1 and targets.dtype.is_floating_point):
            raise ValueError(f"targets: expected class ids [N] (integer) or one-hot [N, C], got shape "
                             f"{tuple(targets.shape)} dtype {targets.dtype}")
        if self.top_k > logits.shape[1]:
            raise ValueError(f"top_k: expected at most {logits.shape[1]} (the number of classes), got {self.top_k}")
        return inputs.detach(), targets.detach(), logits.detach()

    def device_stage(self, inputs: torch.Tensor, targets: torch.Tensor, logits: torch.Tensor) -> dict[str, torch.Tensor]:
        truth = targets.argmax(1) if targets.dim() == 2 else targets.long()
        summary = logits_summary(logits, k=self.top_k)
        in_range = (truth >= 0) & (truth < logits.shape[1])
        loss = F.cross_entropy(logits.float(), truth.clamp(0, logits.shape[1] - 1), reduction="none")
        loss = torch.where(in_range, loss, torch.full_like(loss, float("nan")))
        fields = {
            "image": images_to_uint8(inputs, **self.image_options),
            "truth": truth,
            "prediction": summary.prediction,
            "confidence": summary.confidence,
            "finite": summary.finite,
            "loss": loss,
        }
        if self.top_k > 1:
            fields["topk_indices"], fields["topk_probs"] = summary.topk_indices, summary.topk_probs
        return fields

    def host_stage(self, fields: dict[str, np.ndarray], encode) -> list[list]:
        return self._host_part.host_stage(fields, encode)

    def host_part(self) -> Any:
        """What the sample pipeline's worker process runs ``host_stage`` on: an object of a module without
        torch (``logbus.plugins._host_parts``), or this extractor where a subclass has its own host stage."""
        return self._host_part if type(self).host_stage is ClassificationExtractor.host_stage else self

