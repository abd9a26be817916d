"""A class-id mask's coloured overlay (the local viewer's ``*.overlay.png``) and the colour of a class id.

Here rather than in the viewer: the sample pipeline's worker process renders each overlay beside the
mask it encodes, so that the local backend links it into the run folder and the viewer, which runs
in the training process, finds it made (creating a file there costs 60 µs to 1 ms on a loaded
2-core machine's ext4, measured; a link about 20 µs).
Both write the same bytes from the same ids and labels.
"""

from __future__ import annotations

import colorsys
import io
from typing import Sequence

import numpy as np
from PIL import Image as PILImage

from logbus.files._encoding import PNG_LEVEL

# Tableau's 10 and their light partners: distinct on photos and on each other; later ids get hues by
# the golden angle, so every id has one stable colour across masks, legends and boxes.
_PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
            "#17becf", "#aec7e8", "#ffbb78", "#98df8a", "#ff9896", "#c5b0d5", "#c49c94", "#f7b6d2", "#c7c7c7",
            "#dbdb8d", "#9edae5"]


def class_colour(class_id: int) -> str:
    """The ``#rrggbb`` colour of a class id (masks, legend and boxes all use it)."""
    if 0 <= class_id < len(_PALETTE):
        return _PALETTE[class_id]
    r, g, b = colorsys.hsv_to_rgb((class_id * 0.618033988749895) % 1.0, 0.75, 0.95)
    return f"#{round(r * 255):02x}{round(g * 255):02x}{round(b * 255):02x}"


def overlay_classes(mask: np.ndarray, labels: Sequence[tuple[int, str]]) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """``(ids in the mask, inverse indices, the ids shown)``: with class labels, ids without one (an
    ignore index such as 255) stay transparent; without labels, every id is a class."""
    ids, inverse = np.unique(np.asarray(mask).astype(np.int64), return_inverse=True)
    named = dict(labels)
    return ids, inverse, [int(i) for i in ids if not named or int(i) in named]


def encode_overlay(mask: np.ndarray, ids: np.ndarray, inverse: np.ndarray, shown: list[int]) -> bytes:
    """The RGBA PNG of ``mask`` in its classes' colours (see ``overlay_classes``)."""
    lut = np.zeros((len(ids), 4), np.uint8)
    for row, class_id in enumerate(ids.tolist()):
        if class_id in shown:
            colour = class_colour(class_id)
            lut[row] = [int(colour[1:3], 16), int(colour[3:5], 16), int(colour[5:7], 16), 255]
    rgba = lut[inverse.reshape(np.shape(mask))]
    buffer = io.BytesIO()
    PILImage.fromarray(rgba).save(buffer, format="PNG", compress_level=PNG_LEVEL)
    return buffer.getvalue()
