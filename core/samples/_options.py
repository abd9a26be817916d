"""Which keyword options of ``SampleLogger`` / ``Run.samples`` belong to the pipeline; the rest go to the
extractor (``class_names``, ``mean``, ``std``, ``top_k``, ``tokenizer``...). And the one check their
int options share."""

from __future__ import annotations

from typing import Any

PIPELINE_OPTIONS = ("seed", "hardest_by", "max_pending_batches", "pinned_pool_bytes", "encode_workers",
                    "image_format", "compress_level", "key_prefix", "scratch_cache_bytes",
                    "worker_process")


def split_options(options: dict[str, Any]) -> tuple[dict[str, Any] | None, dict[str, Any]]:
    pipeline = {k: v for k, v in options.items() if k in PIPELINE_OPTIONS}
    extractor = {k: v for k, v in options.items() if k not in PIPELINE_OPTIONS}
    return extractor or None, pipeline


def check_int(argument: str, value: Any, *, minimum: int | None = None, maximum: int | None = None) -> int:
    """``value`` if it is an int (not a bool) within ``[minimum, maximum]``; TypeError or ValueError
    naming ``argument`` otherwise."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{argument}: expected an int, got {value!r}")
    if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
        bounds = (f"{minimum}..{maximum}" if maximum is not None and minimum is not None
                  else f">= {minimum}" if minimum is not None else f"<= {maximum}")
        raise ValueError(f"{argument}: expected an int {bounds}, got {value!r}")
    return value
