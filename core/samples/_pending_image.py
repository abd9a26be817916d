"""``PendingImage``: the image cell an extractor's host stage puts in a row while its file is still being
encoded; the pipeline resolves it to a ``records.Image`` once the encoder is done. Plugin-facing (exported by
``logbus.samples``), so it lives apart from the pipeline that resolves it.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np

from logbus.files import check_name
from logbus.records import Image, Mask


@dataclass
class PendingImage:
    """An image cell whose file is still being encoded. Masks are ``name -> (ids [H, W], labels)``."""

    # a Future-like with result() -> path (logbus.samples._encoder_pool.EncodedFile), or, from a pool that
    # makes no files, an ``InlinePixels`` (``path`` None, ``pixels`` and ``digest``)
    path: Any
    caption: str | None = None
    masks: Mapping[str, tuple[np.ndarray, Mapping[int, str] | None]] = field(default_factory=dict)
    # name -> a Future-like for the mask's PNG file, where the pipeline encoded it (its worker process).
    mask_files: dict[str, Any] = field(default_factory=dict)

    def resolve(self) -> Image:
        handle = self.path
        if handle.path is None:  # no file made (``EncoderPool.image_files`` False): the pixels and their hash
            batch, index = handle.batch, handle.index
            caption = self.caption
            if batch.checked and not self.masks and (caption is None or isinstance(caption, str)):
                # The common case (classification), once per row in the training process: kept lean.
                return Image.unchecked(batch.pixels[index], batch.digests[index], caption)
            pixels = batch.pixels[index]
            masks_checked = all(_trusted_mask(ids, labels, pixels.shape[:2]) and check_name(name, f"image.masks[{name!r}]")
                                for name, (ids, labels) in self.masks.items())
            if masks_checked and _trusted_pixels(pixels) and (caption is None or isinstance(caption, str)):
                return Image.unchecked(pixels, batch.digests[index], self.caption,
                                       {name: Mask.unchecked(ids, labels) for name, (ids, labels) in self.masks.items()})
            # Anything the fast checks do not vouch for gets records' own checks and errors.
            return Image(pixels=pixels, digest=batch.digests[index], caption=self.caption,
                         masks={name: Mask(ids, labels) for name, (ids, labels) in self.masks.items()})
        return Image(path=handle.result(), caption=self.caption, digest=getattr(handle, "digest", None),
                     masks={name: Mask(ids, labels, path=self.mask_files[name].result() if name in self.mask_files else None)
                            for name, (ids, labels) in self.masks.items()})


def _trusted_pixels(pixels: Any) -> bool:
    """What ``records.Image`` checks of pixels, for the pipeline's own array (a uint8 view)."""
    return (isinstance(pixels, np.ndarray) and pixels.dtype == np.uint8 and pixels.ndim == 3
            and pixels.shape[2] in (1, 3, 4) and pixels.size > 0)


def _trusted_mask(ids: Any, labels: Any, shape: tuple[int, ...]) -> bool:
    """What ``records.Mask`` (and ``Image``, of its masks) checks, in fewer steps: ids a 2-D array of
    non-negative integers of the image's height and width, labels None or int -> str."""
    if not (isinstance(ids, np.ndarray) and ids.shape == shape and ids.dtype.kind in "iu"):
        return False
    if ids.dtype.kind == "i" and ids.size and ids.min() < 0:
        return False
    return labels is None or (isinstance(labels, Mapping) and all(
        isinstance(k, numbers.Integral) and isinstance(v, str) for k, v in labels.items()))
