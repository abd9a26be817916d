"""Language-model samples: input text, target and predicted continuation, decoded with the user's tokenizer.

Device stage: one fused pass over ``[N, T, V]`` logits (V up to 256k) for argmax and softmax
confidence; the per-token loss comes from the same pass (``lse - logit[target]``) without a second
read of the logits.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import numpy as np
import torch

from logbus.kernels import logits_summary
from logbus.options import Option, Options
from logbus.samples import check_batch, logits_of

IGNORE_INDEX = -100


class TokensExtractor:
    """Rows: ``id, input, target, prediction, token_accuracy, loss, confidence, flag``.

    :param tokenizer: anything with ``decode(list[int]) -> str`` (Hugging Face tokenizers) or a
        callable doing that; without one, token ids are shown.
    :param shift: causal LMs predict token ``t+1`` at position ``t`` (Hugging Face shifts labels
        inside the model); set False when targets are already aligned with the logits.
    :param max_chars: texts are cut to this length in the table.
    """

    name = "tokens"
    has_class_per_sample = False
    num_classes = None
    options = Options(
        Option("tokenizer", None, "anything with `decode(ids)` (Hugging Face tokenizers) or a callable; `None` shows "
               "token ids"),
        Option("shift", True, "causal LMs predict token t+1 at position t; `False` when the targets are already "
               "aligned", kind="bool"),
        Option("max_chars", 2000, "texts are cut to this length in the table", kind="int", minimum=1),
    )

    # (defaults are read from the class body's `options` while the class is being made)
    def __init__(self, *, tokenizer: Any = options.defaults["tokenizer"], shift: bool = options.defaults["shift"],
                 max_chars: int = options.defaults["max_chars"]):
        self.options.check(shift=shift, max_chars=max_chars)
        if tokenizer is not None and not (callable(getattr(tokenizer, "decode", None)) or callable(tokenizer)):
            raise TypeError(f"tokenizer: expected an object with decode(ids) or a callable, got {type(tokenizer).__name__}")
        self.decode: Callable[[list[int]], str] = (
            tokenizer.decode if callable(getattr(tokenizer, "decode", None)) else
            tokenizer if tokenizer is not None else (lambda ids: " ".join(map(str, ids))))
        self.shift = shift
        self.max_chars = max_chars
        self.columns = ["id", "input", "target", "prediction", "token_accuracy", "loss", "confidence", "flag"]

    def check(self, inputs: Any, targets: Any, outputs: Any):
        logits = logits_of(outputs)
        if logits.dim() != 3:
            raise ValueError(f"outputs: expected language-model logits [N, T, V], got shape {tuple(logits.shape)}")
        for argument, tensor in (("inputs", inputs), ("targets", targets)):
            if not isinstance(tensor, torch.Tensor) or tensor.dim() != 2 or tensor.dtype.is_floating_point:
                raise ValueError(f"{argument}: expected integer token ids [N, T], got "
                                 f"{getattr(tensor, 'shape', type(tensor).__name__)}")
            check_batch(argument, tensor, logits.shape[0])
            if tensor.shape[1] != logits.shape[1]:
                raise ValueError(f"{argument}: expected {logits.shape[1]} tokens (as the logits), got {tensor.shape[1]}")
        return inputs.detach(), targets.detach(), logits.detach()

    def device_stage(self, inputs, targets, logits) -> dict[str, torch.Tensor]:
        summary = logits_summary(logits)
        labels = targets.long()
        prediction, confidence = summary.prediction, summary.confidence
        if self.shift:
            labels = torch.cat([labels[:, 1:], torch.full_like(labels[:, :1], IGNORE_INDEX)], 1)
        valid = (labels >= 0) & (labels < logits.shape[-1])
        safe = torch.where(valid, labels, torch.zeros_like(labels))
        # lse = max - log(confidence); loss_t = lse - logit[target]
        max_logit = logits.gather(-1, prediction.clamp_min(0)[..., None]).squeeze(-1).float()
        target_logit = logits.gather(-1, safe[..., None]).squeeze(-1).float()
        token_loss = max_logit - torch.log(confidence) - target_logit
        count = valid.sum(1).clamp_min(1)
        return {
            "input": inputs, "target": torch.where(valid, labels, IGNORE_INDEX), "prediction": prediction,
            "token_accuracy": ((prediction == labels) & valid).sum(1) / count,
            "loss": torch.where(valid, token_loss, torch.zeros_like(token_loss)).sum(1) / count,
            "confidence": (confidence.nan_to_num(0.0) * valid).sum(1) / count,
            "finite": summary.finite.all(1),
        }

    def host_stage(self, fields: dict[str, np.ndarray], encode) -> list[list]:
        del encode
        rows = []
        for i in range(len(fields["sample_id"])):
            valid = fields["target"][i] != IGNORE_INDEX
            loss, finite = float(fields["loss"][i]), bool(fields["finite"][i])
            rows.append([int(fields["sample_id"][i]), self._text(fields["input"][i]),
                         self._text(fields["target"][i][valid]), self._text(fields["prediction"][i][valid]),
                         float(fields["token_accuracy"][i]), None if math.isnan(loss) else loss,
                         float(fields["confidence"][i]), "" if finite else "nonfinite"])
        return rows

    def _text(self, ids: np.ndarray) -> str:
        return str(self.decode([int(t) for t in ids if t >= 0]))[: self.max_chars]

