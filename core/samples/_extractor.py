"""What every extractor shares: shape checks that never touch device data, and option helpers.

The contract an extractor follows is ``logbus.hookspecs.Extractor``: ``columns``, then
``check(inputs, targets, outputs)`` on the training thread (metadata only, no device sync),
``device_stage(inputs, targets, outputs) -> dict[str, Tensor]`` on the pipeline's worker (a side
stream on CUDA) and ``host_stage(fields, encode) -> list[row]`` on the same worker.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch

from logbus.kernels.images import VALUE_RANGES
from logbus.options import Option, Options

# The image options of the image extractors (classification, segmentation), declared once.
IMAGE_OPTIONS: Options = Options(
    Option("mean", None, "the normalisation's mean (C values or one; a tensor is read once, when the extractor is "
           "made), undone before display: `x * std + mean`"),  # checked by _per_channel_floats
    Option("std", None, "the normalisation's std"),
    Option("value_range", "auto", 'range of the (de-normalised) images: `"0_1"`, `"-1_1"`, `"0_255"`, `"uint8"`, or '
           '`"auto"` (uint8 as is, floats as 0-1)', kind="choice", choices=VALUE_RANGES),
    Option("channels_last", None, "`True`: `[N, H, W, C]`; `False`: `[N, C, H, W]`; `None`: inferred from the shape",
           kind="bool"),
)
_IMAGE_DEFAULTS = IMAGE_OPTIONS.defaults


def logits_of(outputs: Any, argument: str = "outputs") -> torch.Tensor:
    """Model outputs as a logits tensor: a tensor, a mapping or object with ``logits``, or a tuple
    whose first item is the logits (Hugging Face style)."""
    if isinstance(outputs, torch.Tensor):
        return outputs
    if isinstance(outputs, Mapping) and "logits" in outputs:
        return outputs["logits"]
    if hasattr(outputs, "logits"):
        return outputs.logits
    if isinstance(outputs, (tuple, list)) and outputs and isinstance(outputs[0], torch.Tensor):
        return outputs[0]
    raise TypeError(f"{argument}: expected a logits tensor (or a mapping/object with 'logits'), "
                    f"got {type(outputs).__name__}")


def image_options(*, mean=_IMAGE_DEFAULTS["mean"], std=_IMAGE_DEFAULTS["std"],
                  value_range: str = _IMAGE_DEFAULTS["value_range"],
                  channels_last: bool | None = _IMAGE_DEFAULTS["channels_last"]) -> dict:
    """An image extractor's ``mean``/``std``/``value_range``/``channels_last``, checked when the
    extractor is made, so a bad one raises at construction instead of at the first batch.

    ``mean``/``std`` are read here, once, into Python floats: given as CUDA tensors they would
    otherwise be copied back to the host (a sync) at every batch."""
    IMAGE_OPTIONS.check(value_range=value_range, channels_last=channels_last)
    return dict(mean=_per_channel_floats("mean", mean), std=_per_channel_floats("std", std), value_range=value_range,
                channels_last=channels_last)


def _per_channel_floats(argument: str, values: Any) -> tuple[float, ...] | None:
    """``values`` (a number, or one per channel as a sequence, array or tensor) as fp32-rounded
    floats, the precision the image kernel computes in."""
    if values is None:
        return None
    try:
        floats = torch.as_tensor(values.detach() if isinstance(values, torch.Tensor) else values, dtype=torch.float32)
    except (TypeError, ValueError, RuntimeError) as error:
        raise TypeError(f"{argument}: expected a number or one number per channel, got {values!r:.80}") from error
    listed = floats.flatten().cpu().tolist()
    if len(listed) not in (1, 3, 4):
        raise ValueError(f"{argument}: expected 1 value or one per channel (1, 3 or 4), got {len(listed)}")
    return tuple(listed)


def check_images(images: Any, *, mean=None, std=None, value_range: str = "auto",
                 channels_last: bool | None = None, argument: str = "inputs") -> int:
    """Validates an image batch exactly as ``images_to_uint8`` will, on a meta tensor (no data, no
    sync); returns the batch size."""
    from logbus.kernels.images import _prepare

    if not isinstance(images, torch.Tensor):
        raise TypeError(f"{argument}: expected an image tensor [N, C, H, W] or [N, H, W, C], "
                        f"got {type(images).__name__}")
    if images.dim() != 4:
        raise ValueError(f"{argument}: expected a 4-D image batch [N, C, H, W] or [N, H, W, C], "
                         f"got shape {tuple(images.shape)}")
    try:
        _prepare(torch.empty(images.shape, dtype=images.dtype, device="meta"), mean, std, value_range, channels_last)
    except (TypeError, ValueError) as error:
        # The kernel calls its argument "images"; the caller knows this one as ``argument``.
        message = str(error)
        if not message.startswith("images:"):
            raise
        raise type(error)(argument + message[len("images"):]) from None
    return images.shape[0]


def check_batch(name: str, tensor: torch.Tensor, batch_size: int) -> None:
    if tensor.shape[0] != batch_size:
        raise ValueError(f"{name}: expected batch size {batch_size} (as the images), got shape {tuple(tensor.shape)}")


def class_names_map(class_names: Sequence[str] | Mapping[int, str] | None) -> dict[int, str] | None:
    if class_names is None:
        return None
    if isinstance(class_names, Mapping):
        items = dict(class_names)
    elif isinstance(class_names, (list, tuple)):
        items = dict(enumerate(class_names))
    else:
        raise TypeError(f"class_names: expected a list of names or a mapping id -> name, got {type(class_names).__name__}")
    if not all(isinstance(k, int) and isinstance(v, str) for k, v in items.items()):
        raise TypeError("class_names: expected str names keyed by int class id")
    return items
