"""The samples room: the sample pipeline, sampling policies, pinned/shared buffers, worker process, encoder pool,
``log_images``, and the helpers extractor plugins import. May import the bus, records, hookspecs, files, kernels rooms.

Names are imported on first use (module ``__getattr__``, as ``logbus`` itself does): the worker process
imports ``logbus.samples._host_process`` and the extractors' host stages, which need numpy and Pillow,
and must not pay for torch (seconds of CPU at every start) because this package's other modules use it.
"""

from __future__ import annotations

import importlib
from typing import Any

_HOMES = {
    # for extractor plugins
    "PendingImage": "_pending_image", "IMAGE_OPTIONS": "_extractor", "check_batch": "_extractor",
    "check_images": "_extractor", "class_names_map": "_extractor", "image_options": "_extractor",
    "logits_of": "_extractor",
    # for the adapters (logbus.composer, logbus.start_run) and tests
    "SamplePipeline": "_pipeline", "PipelineStats": "_pipeline", "pipeline_for": "_pipeline",
    "cleanup_within_close": "_pipeline", "place_scratch": "_pipeline", "CLOSE_TIMEOUT": "_pipeline",
    "PIPELINE_OPTIONS": "_options", "SAMPLING_OPTIONS": "_options", "split_options": "_options",
    "images_record": "_images", "SamplingPolicy": "_policies", "make_policy": "_policies", "POLICIES": "_options",
    "HARDEST_BY": "_options", "claim_key_prefix": "_stream_keys", "claim_label": "_stream_keys",
    # for backends that store the pipeline's encoded files
    "IMAGE_FORMATS": "_options", "content_name": "_encoder_pool", "mask_content_name": "_encoder_pool",
    "overlay_labels": "_encoder_pool", "overlay_of": "_encoder_pool",
}

__all__ = list(_HOMES)


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'logbus.samples' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"logbus.samples.{home}"), name)
    globals()[name] = value  # once: later lookups are plain attribute reads
    return value
