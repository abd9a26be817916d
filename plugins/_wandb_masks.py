"""Mask files for wandb table cells: logbus encodes each mask once, into RAM-backed scratch, and
hands wandb the file (``wandb.ImageMask``'s documented ``{"path": ...}`` form).

Given ``mask_data``, wandb validates the array, encodes it at PNG's default level into a file of its
media temp folder on disk, and keeps that file until the process exits (one per mask, per eval: a
run's temp folder grows with every table). The table's artifact then copies the file into its
staging folder anyway. Here the mask is encoded at the fast level logbus uses for every file
(``logbus.encoding.encode_mask``), written to ``/dev/shm`` where there is one (creating thousands of
small files is where a slow disk hurts), and deleted as soon as the table is logged: ``run.log``
has staged its own copy by then. Within one table, equal masks share one file, which the table's
artifact then stores once (wandb skips a path it already added).

A mask given as a path carries no class labels to wandb, so they are set on it as wandb sets them
for an array (``_wandb_private.mask_from_file``: the mask layer's class names in the table's column
type) and passed as the image's ``classes`` (what wandb itself derives from the masks' labels,
``class_<id>`` where none are named).
"""

from __future__ import annotations

import hashlib
import itertools
import os
import tempfile
from typing import Any, Mapping

import numpy as np

from logbus.files import encode_mask

# wandb stores masks as 8-bit images and refuses ids above 255; such a mask goes to wandb as an
# array, so that wandb's own message reaches the user.
_MAX_WANDB_CLASS_ID = 255


class MaskFiles:
    """Writes the masks of the tables being logged; :meth:`release` deletes them once wandb staged
    its copies, :meth:`close` removes the folder."""

    def __init__(self):
        self._folder: tempfile.TemporaryDirectory | None = None
        self._written: dict[bytes, str] = {}  # the mask's content -> its file, until release()
        self._names = itertools.count()

    def wandb_mask(self, name: str, data: np.ndarray, class_labels: Mapping[int, str] | None,
                   path: str | None = None) -> tuple[Any, dict]:
        """``(the mask for wandb.Image(masks={name: ...}), its classes {id: name})``. ``path``: the
        mask's PNG already written by the sample pipeline's worker process (``records.Mask.path``, the
        same ``encode_mask`` bytes), handed to wandb as it is instead of being encoded again here; the
        pipeline keeps it until every backend has taken the table, and ``run.log`` stages its copy."""
        from logbus.plugins import _wandb_private

        labels = ({int(k): v for k, v in class_labels.items()} if class_labels
                  else {int(c): f"class_{int(c)}" for c in np.unique(data)})
        if data.size and int(data.max()) > _MAX_WANDB_CLASS_ID:
            return {"mask_data": data, "class_labels": labels}, labels
        if path is not None:
            return _wandb_private.mask_from_file(path, name, labels), labels
        if self._folder is None:
            scratch = "/dev/shm" if os.access("/dev/shm", os.W_OK) else None
            self._folder = tempfile.TemporaryDirectory(prefix="logbus-wandb-masks-", dir=scratch)
        data = np.ascontiguousarray(data)
        content = hashlib.blake2b(data.view(np.uint8).data, digest_size=16,
                                  person=f"{data.shape}{data.dtype}".encode()[:16]).digest()
        path = self._written.get(content)
        if path is None:
            # ".mask.png", as wandb names its own mask files.
            path = os.path.join(self._folder.name, f"{next(self._names)}.mask.png")
            with open(path, "wb") as file:
                file.write(encode_mask(data))
            self._written[content] = path
        return _wandb_private.mask_from_file(path, name, labels), labels

    def release(self) -> None:
        """Deletes the files written since the last call (wandb copied them when the table was logged)."""
        for path in self._written.values():
            try:
                os.remove(path)
            except FileNotFoundError:
                pass
        self._written.clear()

    def close(self) -> None:
        self._written.clear()
        if self._folder is not None:
            self._folder.cleanup()
            self._folder = None
