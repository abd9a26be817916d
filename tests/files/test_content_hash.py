"""``logbus.files.content_hash``: one name for the same content, wherever it is hashed (the local store, the
sample pipeline), and ``Image.digest``, a hash a producer already made."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

import logbus
from logbus.files import content_hash, content_hashes
from logbus.records import Image


def test_the_same_pixels_have_one_hash_and_other_shapes_or_dtypes_another():
    ids = np.arange(12, dtype=np.int32).reshape(3, 4)
    assert content_hash(ids) == content_hash(ids.copy()) == content_hash(np.ascontiguousarray(ids.T).T.copy())
    assert content_hash(ids.T) == content_hash(np.ascontiguousarray(ids.T))  # a strided view: its values, not its memory
    others = [ids.reshape(4, 3), ids.astype(np.int64), ids.view(np.uint32), ids + 1]
    assert len({content_hash(ids), *map(content_hash, others)}) == 5
    assert content_hash(b"png bytes") == hashlib.sha256(b"png bytes").hexdigest()[:32]
    assert len(content_hash(np.zeros((0, 3), np.uint8))) == 32


def test_a_digest_given_with_an_image_is_the_hash_the_store_keeps(logbus_dir):
    pixels = np.zeros((2, 2, 3), np.uint8)
    given = "ab" * 16
    with logbus.start_run("digest", backends=["local"]) as run:
        run.log_table("t", ["image"], [[Image(pixels=pixels, digest=given)], [Image(pixels=pixels)]], step=0)
    first, second = logbus.read_table(logbus_dir / "digest", "t").image
    assert (first.hash, second.hash) == (given, content_hash(pixels))
    np.testing.assert_array_equal(first.to_numpy(), pixels)
    with pytest.raises(TypeError, match=r"^image\.digest: expected a content hash \(str\) or None, got bytes"):
        Image(pixels=pixels, digest=b"raw")


@pytest.mark.parametrize("workers", [1, 3])
@pytest.mark.parametrize("rows", [0, 1, 63, 64, 65, 257])
def test_a_batchs_hashes_are_each_rows_content_hash_in_order(workers, rows):
    """``content_hashes`` and the encoder pool's threaded ``hashes`` give ``content_hash`` of every row, in
    the rows' order, whatever the split among threads."""
    from logbus.samples._encoder_pool import EncoderPool

    rng = np.random.default_rng(rows)
    images = rng.integers(0, 256, (rows, 5, 7, 3), dtype=np.uint8)
    large = rng.integers(0, 256, (rows, 128, 96, 3), dtype=np.uint8)  # above the size hashed on threads
    masks = rng.integers(0, 70_000, (rows, 5, 7))
    pool = EncoderPool(workers=workers, image_files=False)
    try:
        for batch in (images, masks, large):
            want = [content_hash(row) for row in batch]
            assert content_hashes(batch) == want
            assert pool.hashes(batch) == want
    finally:
        pool.close()
