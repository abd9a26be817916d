"""PNGs as logbus writes them (with zlib, not Pillow): images and class-id masks decode to the exact
pixels and ids, and a mask's overlay (a paletted PNG made of the mask's own compressed pixels)
shows what the viewer's RGBA overlay shows, in Pillow and in a real headless Chromium."""

from __future__ import annotations

import base64
import io
import json
import os
import shutil
import struct
import subprocess
import zlib

import numpy as np
import pytest
from PIL import Image as PILImage

from logbus.files import encode_image, encode_mask
from logbus.files._overlay import encode_mask_and_overlay, encode_overlay, overlay_classes, paletted_overlay

RNG = np.random.default_rng(0)
EVERY_ID = np.arange(256, dtype=np.uint8).reshape(16, 16)
IGNORE = RNG.integers(0, 5, (32, 32)).astype(np.uint8)
IGNORE[IGNORE == 4] = 255  # an ignore index: no label, so never coloured when there are labels
# (mask, labels): ids 0..255 with and without labels, an unnamed ignore index, other dtypes and shapes.
CASES = {
    "every id, no labels": (EVERY_ID, ()),
    "every id, two labelled": (EVERY_ID, ((3, "a"), (200, "b"))),
    "every id as int64": (EVERY_ID.astype(np.int64), ((0, "x"), (255, "y"))),
    "ignore index 255": (IGNORE, ((0, "bg"), (1, "a"), (2, "b"), (3, "c"))),
    "ignore index, no labels": (IGNORE, ()),
    "one pixel": (np.array([[7]], np.int32), ((7, "seven"),)),
    "not contiguous": (RNG.integers(0, 9, (20, 30)).astype(np.uint8)[::2, ::3], ((1, "one"), (8, "eight"))),
    "all zero, wide": (np.zeros((3, 257), np.int16), ()),
}


def chunks(png: bytes) -> list[tuple[bytes, bytes]]:
    """(type, the whole chunk) of each chunk, checking every CRC on the way."""
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    found, offset = [], 8
    while offset < len(png):
        length, kind = struct.unpack_from(">I4s", png, offset)
        body = png[offset + 4:offset + 8 + length]
        assert struct.unpack_from(">I", png, offset + 8 + length)[0] == zlib.crc32(body), kind
        found.append((kind, png[offset:offset + 12 + length]))
        offset += 12 + length
    return found


def decode(png: bytes) -> PILImage.Image:
    image = PILImage.open(io.BytesIO(png))
    image.load()
    return image


def viewers_rgba(mask: np.ndarray, labels) -> np.ndarray:
    """The viewer's overlay (``encode_overlay``), decoded: what the paletted one must show."""
    return np.asarray(decode(encode_overlay(mask, *overlay_classes(mask, labels))))


@pytest.mark.parametrize(("shape", "mode"), [((5, 7), "L"), ((5, 7, 1), "L"), ((5, 7, 2), "LA"), ((9, 4, 3), "RGB"),
                                             ((1, 1, 4), "RGBA"), ((64, 3, 3), "RGB")])
def test_an_image_png_decodes_to_its_exact_pixels(shape, mode):
    pixels = RNG.integers(0, 256, shape, dtype=np.uint8)
    image = decode(encode_image(pixels))
    assert image.mode == mode
    np.testing.assert_array_equal(np.asarray(image), pixels[..., 0] if shape[-1:] == (1,) else pixels)
    strided = RNG.integers(0, 256, (10, 8, 3), dtype=np.uint8)[::2, ::-3]  # a view, not contiguous
    np.testing.assert_array_equal(np.asarray(decode(encode_image(strided))), strided)


@pytest.mark.parametrize("case", list(CASES))
def test_a_mask_png_decodes_to_its_exact_ids(case):
    mask, _ = CASES[case]
    png = encode_mask(mask)
    np.testing.assert_array_equal(np.asarray(decode(png)), mask)
    assert [kind for kind, _ in chunks(png)] == [b"IHDR", b"IDAT", b"IEND"]


def test_ids_past_255_keep_a_16_bit_mask_and_an_rgba_overlay():
    mask = RNG.integers(0, 300, (5, 7)).astype(np.int16)
    png, overlay = encode_mask_and_overlay(mask, ((1, "one"), (299, "last")))
    np.testing.assert_array_equal(np.asarray(decode(png)), mask)
    assert decode(overlay).mode == "RGBA" and overlay == encode_overlay(mask, *overlay_classes(mask, ((1, "one"), (299, "last"))))
    assert paletted_overlay(png, ()) is None  # not an 8-bit grayscale PNG: nothing to splice


@pytest.mark.parametrize("case", list(CASES))
def test_the_overlay_is_the_masks_pixels_through_a_palette_and_shows_what_the_viewers_does(case):
    mask, labels = CASES[case]
    png, overlay = encode_mask_and_overlay(mask, labels)
    assert png == encode_mask(mask)
    image = decode(overlay)
    assert image.mode == "P"
    # The same compressed pixels, not a second encode; the header differs only in its colour type.
    [(_, mask_ihdr), (_, mask_idat), _] = chunks(png)
    kinds = dict(chunks(overlay))
    assert list(kinds) == [b"IHDR", b"PLTE", b"tRNS", b"IDAT", b"IEND"] and kinds[b"IDAT"] == mask_idat
    assert kinds[b"IHDR"][8:17] == mask_ihdr[8:17] and kinds[b"IHDR"][17:18] == b"\x03"
    # Shown ids in their class colours, opaque; every other pixel transparent black, as the viewer paints them.
    np.testing.assert_array_equal(np.asarray(image.convert("RGBA")), viewers_rgba(mask, labels))
    if labels:
        hidden = ~np.isin(mask, [class_id for class_id, _ in labels])
        assert (np.asarray(image.convert("RGBA"))[hidden] == 0).all()


def test_labels_may_be_a_mapping_as_for_the_viewers_overlay():
    labels = {1: "a", 2: "b"}
    _, overlay = encode_mask_and_overlay(IGNORE, labels)
    np.testing.assert_array_equal(np.asarray(decode(overlay).convert("RGBA")), viewers_rgba(IGNORE, labels))


def test_a_palette_too_small_for_the_ids_is_refused():
    with pytest.raises(ValueError, match="palette_size: expected 1..256, got 0"):
        paletted_overlay(encode_mask(IGNORE), (), 0)
    with pytest.raises(ValueError, match="palette_size: expected 1..256, got 257"):
        paletted_overlay(encode_mask(IGNORE), (), 257)


PAGE = """<!doctype html><html><body><script>
const sources = %s, pixels = [];
function read(image) {
  const canvas = document.createElement("canvas");
  canvas.width = image.width; canvas.height = image.height;
  const context = canvas.getContext("2d");
  context.drawImage(image, 0, 0);
  return Array.from(context.getImageData(0, 0, image.width, image.height).data);
}
sources.forEach((source, index) => {
  const image = new Image();
  image.onload = () => {
    pixels[index] = read(image);
    if (pixels.filter(Boolean).length === sources.length) document.body.dataset.pixels = JSON.stringify(pixels);
  };
  image.src = "data:image/png;base64," + source;
});
</script></body></html>"""


def test_a_browser_shows_the_paletted_overlay_as_the_rgba_one(tmp_path):
    """What the viewer's page shows: a headless Chromium decodes both overlays to the same pixels (data:
    URLs keep the canvas readable), and those are the class colours."""
    chromium = next(filter(None, map(shutil.which, ("chromium", "chromium-browser", "google-chrome"))), None)
    if chromium is None:
        pytest.skip("no chromium on PATH (Debian: apt-get install chromium, which `make test` does as root)")
    mask, labels = CASES["every id, two labelled"][0], (*CASES["every id, two labelled"][1], (0, "zero"), (254, "z"))
    _, paletted = encode_mask_and_overlay(mask, labels)
    rgba = encode_overlay(mask, *overlay_classes(mask, labels))
    page = tmp_path / "page.html"
    page.write_text(PAGE % json.dumps([base64.b64encode(paletted).decode(), base64.b64encode(rgba).decode()]))
    result = subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                             "--disable-background-networking", "--disable-component-update", "--disable-sync",
                             "--disable-dev-shm-usage", f"--user-data-dir={tmp_path / 'profile'}",
                             "--virtual-time-budget=5000", "--dump-dom", page.as_uri()],
                            capture_output=True, text=True, timeout=120, env={**os.environ, "HOME": str(tmp_path)})
    assert result.returncode == 0, result.stderr[-3000:]
    marker = 'data-pixels="'
    assert marker in result.stdout, result.stdout[-3000:]
    encoded = result.stdout.split(marker, 1)[1].split('"', 1)[0].replace("&quot;", '"')
    shown_paletted, shown_rgba = (np.array(values, np.uint8).reshape(16, 16, 4) for values in json.loads(encoded))
    np.testing.assert_array_equal(shown_paletted, shown_rgba)
    np.testing.assert_array_equal(shown_rgba, viewers_rgba(mask, labels))
    assert (shown_paletted[..., 3] == 255).sum() == 4  # ids 0, 3, 200, 254: the labelled ones
