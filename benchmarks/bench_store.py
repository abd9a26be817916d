"""The local store (format 2): bytes per image against a PNG per image, and the local backend's time per
row for a 32×32 classification table.

    .venv/bin/python benchmarks/bench_store.py            # prints the figures (about a minute)
    .venv/bin/pytest benchmarks/bench_store.py -s         # the same at a smaller scale, bytes asserted

Bytes: the demo's digits (the 297 validation images, ``8×8`` grey, as ``logbus demo`` logs them) and the
same digits at 32 px (each pixel a 4×4 block), stored as PNGs (``encode_image``, what the sample
pipeline writes per image) and in a pack (raw uint8, zstd per row group), one pack for all 297 and one
per table of 100 (the demo's ``hardest`` tables). Time: ``LocalBackend.log(Table)`` on this thread for a
table of the classification extractor's columns, its image cells given as ``Image(pixels=...)`` or as
``Image(path=...)`` (a PNG file, as the sample pipeline sends them), a first eval (every image new) and
a repeat eval (the same images: referenced, not stored again); median and spread over ``ROUNDS``.
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time

import numpy as np

from logbus.demo import load_digits
from logbus.files import encode_image
from logbus.plugins.local import LocalBackend
from logbus.records import Image, RunFinished, RunStarted, Table

ROWS = int(os.environ.get("LOGBUS_STORE_ROWS", 4096))
ROUNDS = int(os.environ.get("LOGBUS_STORE_ROUNDS", 5))
COLUMNS = ["id", "image", "truth", "prediction", "confidence", "correct", "loss", "flag"]


def demo_images(scale: int = 1) -> list[np.ndarray]:
    """The demo's validation digits as uint8 ``[H, W, 1]``, each pixel repeated ``scale`` times each way."""
    import torch

    images, _ = load_digits()
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(0))  # as digits_loaders
    val = (images[order[1500:]] * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    return [np.ascontiguousarray(image.repeat(scale, 0).repeat(scale, 1)) for image in val]


def pack_bytes(images: list[np.ndarray], per_table: int) -> float:
    """Bytes per image of the packs written for ``images`` logged in tables of ``per_table`` rows."""
    with tempfile.TemporaryDirectory() as root:
        backend = LocalBackend(root)
        backend.log(RunStarted("bytes"))
        for start in range(0, len(images), per_table):
            rows = [[start + i, Image(pixels=image)] for i, image in enumerate(images[start:start + per_table])]
            backend.log(Table("samples/eval", ["id", "image"], rows, step=start))
        backend.close(RunFinished())
        packs = os.path.join(backend.run_dir, "packs")
        return sum(os.path.getsize(os.path.join(packs, name)) for name in os.listdir(packs)) / len(images)


def bytes_figures() -> list[tuple[str, float, float, float]]:
    """(data, PNG bytes/image, pack bytes/image all in one, pack bytes/image per 100-row table)."""
    figures = []
    for name, scale in (("digits 8x8 (demo)", 1), ("digits 32x32", 4)):
        images = demo_images(scale)
        png = sum(len(encode_image(image)) for image in images) / len(images)
        figures.append((name, png, pack_bytes(images, len(images)), pack_bytes(images, 100)))
    return figures


def classification_rows(count: int, folder: str, as_path: bool, rng: np.random.Generator) -> list[list]:
    """A classification table's rows with smooth 32×32 RGB images (as pixels, or as PNG files in ``folder``)."""
    base = np.linspace(0, 255, 32, dtype=np.float32)
    rows = []
    for index in range(count):
        image = ((base[:, None, None] + base[None, :, None] * 0.5 + rng.integers(0, 40, (1, 1, 3))) % 256).astype(
            np.uint8) ^ np.uint8(index % 256)
        if as_path:
            path = os.path.join(folder, f"{index}.png")
            with open(path, "wb") as file:
                file.write(encode_image(image))
            cell = Image(path=path)
        else:
            cell = Image(pixels=image)
        rows.append([index, cell, index % 10, (index * 7) % 10, 0.5, index % 3 == 0, 1.25, None])
    return rows


def time_per_row(as_path: bool, rows_count: int, rounds: int) -> tuple[list[float], list[float]]:
    """µs per row of ``LocalBackend.log(Table)``: a first eval (new images) and a repeat eval, per round."""
    first, repeat = [], []
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as folder:
        rows = classification_rows(rows_count, folder, as_path, rng)
        for round_ in range(rounds):
            backend = LocalBackend(os.path.join(folder, "runs"))
            backend.log(RunStarted(f"timing-{round_}"))
            for times, step in ((first, 0), (repeat, 1)):
                table = Table("samples/eval", COLUMNS, rows, step=step, join_key="id")
                started = time.perf_counter()
                backend.log(table)
                times.append((time.perf_counter() - started) / rows_count * 1e6)
            backend.close(RunFinished())
    return first, repeat


def _spread(values: list[float]) -> str:
    return f"{statistics.median(values):.1f} µs/row (min {min(values):.1f}, max {max(values):.1f})"


def main(rows_count: int = ROWS, rounds: int = ROUNDS) -> None:
    print("bytes per image: PNG (encode_image) vs pack (raw uint8 + zstd per row group)")
    for name, png, whole, per_100 in bytes_figures():
        print(f"  {name}: PNG {png:.0f} B, pack of all {whole:.0f} B ({whole / png:.2f}x), "
              f"packs of 100 {per_100:.0f} B ({per_100 / png:.2f}x)")
    print(f"LocalBackend.log(Table), {rows_count} rows 32x32 RGB classification, {rounds} rounds (median, min, max):")
    for as_path in (False, True):
        first, repeat = time_per_row(as_path, rows_count, rounds)
        label = "Image(path=PNG file)" if as_path else "Image(pixels=array)"
        print(f"  {label}: first eval {_spread(first)}; repeat eval {_spread(repeat)}")


def test_store_bytes_within_one_and_a_half_times_png_and_every_row_timed():
    figures = bytes_figures()
    for name, png, whole, per_100 in figures:
        print(name, png, whole, per_100)
        assert whole <= 1.5 * png and per_100 <= 1.5 * png, name
    first, repeat = time_per_row(False, 256, 1)
    assert len(first) == len(repeat) == 1


if __name__ == "__main__":
    main(*(int(arg) for arg in sys.argv[1:]))
