"""PNG encoding in the sample pipeline's encoder threads: logbus's zlib writer against Pillow.

    .venv/bin/pytest benchmarks/bench_png.py --benchmark-only --benchmark-group-by=group

Each group pairs one input encoded both ways: a class-id mask with its overlay (the worker's paletted
overlay spliced from the mask's own compressed pixels, against a Pillow mask and the viewer's RGBA
overlay, which ``np.unique``s the ids: the code before), and an RGB image (``encode_image`` against
Pillow's save). Per mask or image: divide by ``COUNT``.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image as PILImage

from logbus.files._encoding import PNG_LEVEL, encode_image
from logbus.files._overlay import encode_mask_and_overlay, encode_overlay, overlay_classes

COUNT = 64
RNG = np.random.default_rng(0)
LABELS = ((0, "background"), (1, "a"), (2, "b"), (3, "c"))  # id 4 unnamed: transparent, as an ignore index is


def masks(size: int) -> np.ndarray:
    """``COUNT`` masks of 5 ids: random pixels at 32 (the pipeline benchmark's), blobs at 224."""
    if size == 32:
        return RNG.integers(0, 5, (COUNT, size, size)).astype(np.uint8)
    rows, columns = np.mgrid[:size, :size]
    blobs = ((columns // 40 + rows // 50) % 5).astype(np.uint8)
    return np.stack([np.roll(blobs, shift, 1) for shift in range(COUNT)])


def pillow_png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    PILImage.fromarray(pixels).save(buffer, format="PNG", compress_level=PNG_LEVEL)
    return buffer.getvalue()


@pytest.mark.parametrize("impl", ["logbus", "pillow"])
@pytest.mark.parametrize("size", [32, 224])
def test_mask_and_overlay(benchmark, impl, size):
    benchmark.group = f"mask + overlay, {COUNT} masks {size}x{size}"
    batch = masks(size)

    def encode():
        if impl == "logbus":
            return [encode_mask_and_overlay(mask, LABELS) for mask in batch]
        return [(pillow_png(mask), encode_overlay(mask, *overlay_classes(mask, LABELS))) for mask in batch]

    encoded = benchmark(encode)
    assert len(encoded) == COUNT and all(overlay.startswith(b"\x89PNG") for _, overlay in encoded)


@pytest.mark.parametrize("impl", ["logbus", "pillow"])
@pytest.mark.parametrize("size", [32, 224])
def test_image(benchmark, impl, size):
    benchmark.group = f"RGB image, {COUNT} images {size}x{size}"
    batch = RNG.integers(0, 256, (COUNT, size, size, 3), dtype=np.uint8)
    encode = encode_image if impl == "logbus" else pillow_png
    encoded = benchmark(lambda: [encode(image) for image in batch])
    assert len(encoded) == COUNT
