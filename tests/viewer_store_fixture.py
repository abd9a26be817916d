"""A tiny writer of the README's "Local run format" (format 2) for the viewer's tests, written with pyarrow
from the README alone, until the store branch's writer is merged; then these tests use logbus itself."""

from __future__ import annotations

import hashlib
import json
import os
import re
from typing import Any, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

MASK_TYPE = pa.struct([("name", pa.string()), ("hash", pa.string()), ("pack", pa.string()),
                       ("class_labels", pa.string())])
IMAGE_TYPE = pa.struct([("hash", pa.string()), ("pack", pa.string()), ("caption", pa.string()),
                        ("masks", pa.list_(MASK_TYPE)), ("boxes", pa.string())])


def content_hash(array: np.ndarray) -> str:
    return hashlib.blake2b(array.tobytes() + str(array.shape).encode(), digest_size=16).hexdigest()


class FixtureRun:
    """One run folder: ``run.json``, ``metrics.jsonl``, ``rows/<key>/<step>-r<rank>-<n>.parquet``, ``packs/``."""

    def __init__(self, run_dir: str, name: str, rank: int = 0, world_size: int = 1):
        self.dir, self.rank = run_dir, rank
        os.makedirs(run_dir, exist_ok=True)
        self.pack: dict[str, tuple[str, np.ndarray]] = {}
        self.packs = 0
        with open(os.path.join(run_dir, "run.json"), "w") as f:
            json.dump({"name": name, "rank": rank, "world_size": world_size, "status": "finished",
                       "format_version": 2}, f)

    def log(self, step: int, metrics: dict[str, float], time: float) -> None:
        with open(os.path.join(self.dir, "metrics.jsonl"), "a") as f:
            f.write(json.dumps({"step": step, "time": time, **metrics}) + "\n")

    def image(self, array: np.ndarray, kind: str = "image") -> dict[str, Any]:
        digest = content_hash(array)
        self.pack.setdefault(digest, (kind, array))
        return {"hash": digest, "pack": f"p{self.packs:04d}"}

    def cell(self, image: np.ndarray, masks: dict[str, tuple[np.ndarray, dict]] | None = None,
             caption: str | None = None) -> dict[str, Any]:
        cell = {**self.image(image), "caption": caption, "boxes": None, "masks": []}
        for name, (ids, labels) in (masks or {}).items():
            cell["masks"].append({"name": name, **self.image(ids, "mask"),
                                  "class_labels": json.dumps({str(k): v for k, v in labels.items()})})
        return cell

    def flush_pack(self) -> None:
        if not self.pack:
            return
        rows = [{"hash": h, "kind": kind, "encoding": "raw", "dtype": str(a.dtype), "shape": list(a.shape),
                 "data": a.tobytes()} for h, (kind, a) in self.pack.items()]
        os.makedirs(os.path.join(self.dir, "packs"), exist_ok=True)
        pq.write_table(pa.Table.from_pylist(rows), os.path.join(self.dir, "packs", f"p{self.packs:04d}.parquet"),
                       compression="zstd", row_group_size=1024)
        self.pack, self.packs = {}, self.packs + 1

    def table(self, key: str, step: int | None, columns: dict[str, Sequence], sample_keys: Sequence[str | None],
              n: int = 0) -> None:
        length = len(sample_keys)
        data: dict[str, Any] = {"_key": pa.array([key] * length), "_step": pa.array([step] * length, pa.int64()),
                                "_rank": pa.array([self.rank] * length, pa.int64()),
                                "_row": pa.array(range(length), pa.int64()),
                                "_sample_key": pa.array(sample_keys, pa.string())}
        for name, values in columns.items():
            is_image = any(isinstance(v, dict) for v in values)
            data[name] = pa.array(values, IMAGE_TYPE) if is_image else pa.array(values)
        folder = os.path.join(self.dir, "rows", *[re.sub(r"[^A-Za-z0-9._-]", "_", part) for part in key.split("/")])
        os.makedirs(folder, exist_ok=True)
        self.flush_pack()
        name = f"{'none' if step is None else f'{step:08d}'}-r{self.rank}-{n}.parquet"
        pq.write_table(pa.table(data), os.path.join(folder, name))
