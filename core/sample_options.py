"""Which keyword options of ``SampleLogger`` / ``Run.samples`` belong to the pipeline; the rest go to the
extractor (``class_names``, ``mean``, ``std``, ``top_k``, ``tokenizer``...)."""

from __future__ import annotations

from typing import Any

PIPELINE_OPTIONS = ("seed", "hardest_by", "max_pending_batches", "pinned_pool_bytes", "encode_workers",
                    "image_format", "compress_level", "key_prefix", "scratch_cache_bytes",
                    "worker_process")


def split_options(options: dict[str, Any]) -> tuple[dict[str, Any] | None, dict[str, Any]]:
    pipeline = {k: v for k, v in options.items() if k in PIPELINE_OPTIONS}
    extractor = {k: v for k, v in options.items() if k not in PIPELINE_OPTIONS}
    return extractor or None, pipeline
