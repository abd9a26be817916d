"""Image encoding. PNG releases the GIL while it compresses, so a thread pool scales;
``compress_level=1`` is about twice as fast as Pillow's default 6 for a slightly larger file.

Class-id masks of 8-bit ids are written here rather than by Pillow: a PNG is a header chunk and the
zlib stream of its rows, and for a small mask Pillow's Python around its encoder costs several times
the compression itself (32×32: ~145 µs against ~25 µs here, measured on the 2-core machine). The
sample pipeline encodes two masks per segmentation row, so that difference is most of a row's
encoding cost. Images keep Pillow: its per-row choice of filter compresses photos better.
"""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
from PIL import Image as PILImage

PNG_LEVEL = 1
JPEG_QUALITY = 90

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PNG_GRAYSCALE = 0  # IHDR colour types (PNG spec, 11.2.2)
PNG_PALETTE = 3


def png_chunk(kind: bytes, data: bytes) -> bytes:
    """One PNG chunk: length, type, data and the CRC of type and data."""
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(data, zlib.crc32(kind)))


def png_header(width: int, height: int, colour_type: int) -> bytes:
    """The IHDR chunk of an 8-bit, non-interlaced PNG of ``colour_type``."""
    return png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, colour_type, 0, 0, 0))


PNG_END = png_chunk(b"IEND", b"")


def to_pil(pixels: np.ndarray) -> PILImage.Image:
    if pixels.ndim == 3 and pixels.shape[2] == 1:
        pixels = pixels[:, :, 0]
    return PILImage.fromarray(np.ascontiguousarray(pixels))


def encode_image(pixels: np.ndarray, fmt: str = "png", *, compress_level: int = PNG_LEVEL,
                 quality: int = JPEG_QUALITY) -> bytes:
    """uint8 ``[H, W, C]`` -> PNG or JPEG bytes."""
    buffer = io.BytesIO()
    image = to_pil(pixels)
    if fmt == "png":
        image.save(buffer, format="PNG", compress_level=compress_level)
    elif fmt in ("jpeg", "jpg"):
        if image.mode == "RGBA":
            image = image.convert("RGB")
        image.save(buffer, format="JPEG", quality=quality)
    else:
        raise ValueError(f"image_format: expected 'png' or 'jpeg', got {fmt!r}")
    return buffer.getvalue()


def encode_mask(mask: np.ndarray) -> bytes:
    """Class-id mask -> lossless PNG (8-bit when ids fit, else 16-bit)."""
    mask = np.asarray(mask)
    if mask.max(initial=0) <= 255:
        return encode_mask_8bit(mask)
    buffer = io.BytesIO()
    PILImage.fromarray(mask.astype(np.uint16)).save(buffer, format="PNG", compress_level=PNG_LEVEL)
    return buffer.getvalue()


def encode_mask_8bit(mask: np.ndarray) -> bytes:
    """An ``[H, W]`` mask of ids 0..255 -> an 8-bit grayscale PNG. Every row is "Up"-filtered (the
    difference from the row above): a class-id mask is regions, so most of a row repeats the one
    above and becomes zeros, which deflate shrinks best (for a 224×224 mask of blobs, 1.03 KB against
    1.41 KB unfiltered and Pillow's 1.07 KB; for 32×32 random ids, 0.52 KB against Pillow's 0.57 KB)."""
    ids = mask.astype(np.uint8, copy=False)
    if ids.size == 0:  # a PNG has at least one pixel: Pillow says so, as it always did
        buffer = io.BytesIO()
        PILImage.fromarray(ids).save(buffer, format="PNG", compress_level=PNG_LEVEL)
        return buffer.getvalue()
    height, width = ids.shape
    rows = np.empty((height, width + 1), np.uint8)
    rows[:, 0] = 2  # filter type 2, "Up"; the first row's "above" is zeros, so it is stored as it is
    rows[0, 1:] = ids[0]
    np.subtract(ids[1:], ids[:-1], out=rows[1:, 1:])  # modulo 256, as the PNG filter is defined
    # zlib releases the GIL while it compresses, as Pillow's encoder does.
    return b"".join((PNG_SIGNATURE, png_header(width, height, PNG_GRAYSCALE),
                     png_chunk(b"IDAT", zlib.compress(rows.data, PNG_LEVEL)), PNG_END))
