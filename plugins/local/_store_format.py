"""The names of the local store (run folder format 2, the docs' "Local run format"): folders, columns,
file metadata and the Arrow types of image cells and pack rows, shared by its writer and its reader."""

from __future__ import annotations

import pyarrow as pa

FORMAT_VERSION = 2
ROWS = "rows"  # rows/<key>/<step>-r<rank>-<n>.parquet
PACKS = "packs"  # packs/<id>.parquet
TMP = ".tmp"  # files being written; hidden, so pyarrow's dataset readers skip it too
RUN_JSON = "run.json"
METRICS = "metrics.jsonl"
V1_TABLES = "tables"  # format 1's folder of JSON-lines tables

# The columns every rows file starts with; a user column named `_...` is stored as `column/_...`.
KEY, STEP, RANK, ROW, SAMPLE_KEY = "_key", "_step", "_rank", "_row", "_sample_key"
RESERVED_PREFIX = "_"
USER_COLUMN_PREFIX = "column/"
# A column that, where a table has it, holds the sample's index in its dataset: part of its stable key.
DATASET_INDEX_COLUMN = "dataset_index"

# File metadata (Parquet key-value metadata of the Arrow schema).
JSON_COLUMNS = b"logbus.json_columns"  # JSON list of the columns stored as strict JSON text
IMAGE_COLUMNS = b"logbus.image_columns"  # JSON list of the columns of image cells
META_KEY = b"logbus.key"  # the table key, unchanged (the folder name is its safe form)
META_STEPS = b"logbus.steps"  # JSON [[step, rows], ...]: the steps a file holds (a batch of log_images has several)
META_FORMAT = b"logbus.format_version"

# Pixels: how a pack row's `data` is stored.
RAW, PNG, JPEG = "raw", "png", "jpeg"
IMAGE_KIND, MASK_KIND = "image", "mask"

MASK_TYPE = pa.struct([("name", pa.string()), ("hash", pa.string()), ("pack", pa.string()),
                       ("class_labels", pa.string())])
IMAGE_TYPE = pa.struct([("hash", pa.string()), ("pack", pa.string()), ("caption", pa.string()),
                        ("masks", pa.list_(MASK_TYPE)), ("boxes", pa.string())])
PACK_SCHEMA = pa.schema([("hash", pa.string()), ("kind", pa.string()), ("encoding", pa.string()),
                         ("dtype", pa.string()), ("shape", pa.list_(pa.int32())), ("data", pa.binary())])
COMPRESSION = "zstd"
