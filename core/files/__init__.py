"""The files room: whole-or-nothing writes, strict JSON, image encoding, content hashing, and the rules
for keys and names that end up as file names. Imports nothing else from ``logbus`` (records, the bus and every backend import it).
"""

from logbus.files._atomic import (
    JsonLines,
    copy_file_atomic,
    link_or_copy_file_atomic,
    write_bytes_atomic,
    write_json_atomic,
)
from logbus.files._content_hash import content_hash, content_hashes
from logbus.files._encoding import encode_image, encode_mask
from logbus.files._naming import (
    HPARAMS_FIELDS,
    METRICS_LINE_FIELDS,
    check_artifact_name,
    check_key,
    check_name,
    hparam_field,
    hparam_name,
    metric_field,
    metric_name,
    safe_filename,
    safe_relpath,
    wandb_artifact_name,
)
from logbus.files._strict_json import NONFINITE, restore

__all__ = [
    "JsonLines", "copy_file_atomic", "link_or_copy_file_atomic", "write_bytes_atomic", "write_json_atomic",
    "content_hash", "content_hashes", "encode_image", "encode_mask",
    "check_key", "check_name", "check_artifact_name", "safe_filename", "safe_relpath", "wandb_artifact_name",
    "metric_field", "metric_name", "hparam_field", "hparam_name", "METRICS_LINE_FIELDS", "HPARAMS_FIELDS",
    "NONFINITE", "restore",
]
