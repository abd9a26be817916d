"""Turning what users hand to ``log_images`` into validated uint8 ``Image`` records.

Composer accepts any numeric image (float, int, bool) and hands it to ``wandb.Image``, which in
wandb >= 0.20 casts it with ``astype(uint8)``. ``images_from_composer`` gives the same pixels for the
same array, with one deliberate difference: a float image whose values all lie in [0, 1] is scaled
to 0..255 (``logbus.kernels.images_to_uint8``, the rounding of the GPU sample pipeline), as wandb did
before 0.20; the cast alone saves it black. Float images beyond [0, 1] (0..255 data) are cast as
wandb does, after clipping to 0..255 (a cast of an out-of-range float is undefined); integer and
bool images are cast exactly as wandb does (bool: 0 and 1).
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np
import torch

from logbus.records import Image, Mask


def _as_tensor(value: Any, argument: str) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value.detach()
    if isinstance(value, np.ndarray):
        return torch.from_numpy(value)
    raise TypeError(f"{argument}: expected a numpy array or torch tensor, got {type(value).__name__}")


def to_uint8_images(images: Any, *, channels_last: bool | None = None, **options: Any) -> np.ndarray:
    """``[N, C, H, W]``/``[N, H, W, C]`` (or one 3-D image) floats or uint8 -> uint8 ``[N, H, W, C]``."""
    from logbus.kernels import images_to_uint8

    return images_to_uint8(_as_tensor(images, "images"), channels_last=channels_last, **options).cpu().numpy()


def _as_composer_pixels(tensor: torch.Tensor) -> torch.Tensor:
    """Composer + wandb's pixel values for any numeric image: uint8, or a float in [0, 1] that the
    uint8 conversion scales (see the module docstring)."""
    if tensor.dtype == torch.uint8:
        return tensor
    if tensor.is_floating_point():
        if tensor.numel() and bool(((tensor >= 0) & (tensor <= 1)).all()):
            return tensor
        return tensor.float().nan_to_num(0.0).clamp(0, 255).to(torch.uint8)
    if tensor.is_complex():
        raise TypeError(f"images: expected real pixel values, got dtype {tensor.dtype}")
    return tensor.to(torch.uint8)  # ints wrap modulo 256 and bools give 0/1, as numpy's astype(uint8)


def images_from_composer(images: Any, *, channels_last: bool = False, masks: Mapping[str, Any] | None = None,
                         mask_class_labels: Mapping[int, str] | None = None) -> list[Image]:
    """Composer's ``log_images`` arguments -> ``Image`` records (one per image)."""
    if isinstance(images, (list, tuple)):
        if not images:
            raise ValueError("images: expected at least one image, got an empty sequence")
        batch = [to_uint8_images(_as_composer_pixels(_expand(image, "images")), channels_last=channels_last)[0]
                 for image in images]
    else:
        tensor = _as_composer_pixels(_as_tensor(images, "images"))
        if tensor.ndim == 2:  # a single grey image [H, W]
            tensor, channels_last = tensor[:, :, None], True
        batch = list(to_uint8_images(tensor, channels_last=channels_last))
    mask_lists = {name: _mask_list(name, value, len(batch)) for name, value in (masks or {}).items()}
    return [
        Image(pixels=pixels, masks={name: Mask(masks_for_name[i], mask_class_labels)
                                    for name, masks_for_name in mask_lists.items()})
        for i, pixels in enumerate(batch)
    ]


def _expand(image: Any, argument: str) -> torch.Tensor:
    tensor = _as_tensor(image, argument)
    if tensor.ndim != 3:
        raise ValueError(f"{argument}: each image in a sequence must be 3-D [C, H, W] or [H, W, C], "
                         f"got shape {tuple(tensor.shape)}")
    return tensor


def _mask_list(name: str, value: Any, count: int) -> Sequence[np.ndarray]:
    if isinstance(value, (list, tuple)):
        arrays = [_as_tensor(v, f"masks[{name!r}]").cpu().numpy() for v in value]
    else:
        array = _as_tensor(value, f"masks[{name!r}]").cpu().numpy()
        arrays = [array] if array.ndim == 2 else list(array)
    arrays = [a.squeeze() if a.ndim == 3 else a for a in arrays]
    if len(arrays) != count:
        raise ValueError(f"masks[{name!r}]: expected {count} masks (one per image), got {len(arrays)}")
    return [a.astype(np.int64) if not np.issubdtype(a.dtype, np.integer) else a for a in arrays]
