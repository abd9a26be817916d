"""``PendingImage``: the image cell an extractor's host stage puts in a row while its file is still being
encoded; the pipeline resolves it to a ``records.Image`` once the encoder is done. Plugin-facing (exported by
``logbus.samples``), so it lives apart from the pipeline that resolves it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np

from logbus.records import Image, Mask


@dataclass
class PendingImage:
    """An image cell whose file is still being encoded. Masks are ``name -> (ids [H, W], labels)``."""

    path: Any  # a Future-like with result() -> path (logbus.samples._encoder_pool.EncodedFile)
    caption: str | None = None
    masks: Mapping[str, tuple[np.ndarray, Mapping[int, str] | None]] = field(default_factory=dict)
    # name -> a Future-like for the mask's PNG file, where the pipeline encoded it (its worker process).
    mask_files: dict[str, Any] = field(default_factory=dict)

    def resolve(self) -> Image:
        return Image(path=self.path.result(), caption=self.caption,
                     masks={name: Mask(ids, labels, path=self.mask_files[name].result() if name in self.mask_files else None)
                            for name, (ids, labels) in self.masks.items()})
