"""The samples room: the sample pipeline, sampling policies, pinned/shared buffers, worker process, encoder pool,
``log_images``, and the helpers extractor plugins import. May import the bus, records, hookspecs, files, kernels rooms.
"""

from logbus.samples._encoder_pool import content_name, mask_content_name, overlay_labels, overlay_of
from logbus.samples._extractor import IMAGE_OPTIONS, check_batch, check_images, class_names_map, image_options, logits_of
from logbus.samples._images import images_record
from logbus.samples._options import HARDEST_BY, IMAGE_FORMATS, PIPELINE_OPTIONS, POLICIES, SAMPLING_OPTIONS, split_options
from logbus.samples._pending_image import PendingImage
from logbus.samples._pipeline import (
    CLOSE_TIMEOUT,
    PipelineStats,
    SamplePipeline,
    cleanup_within_close,
    pipeline_for,
    place_scratch,
)
from logbus.samples._policies import SamplingPolicy, make_policy
from logbus.samples._stream_keys import claim_key_prefix, claim_label

__all__ = [
    # for extractor plugins
    "PendingImage", "IMAGE_OPTIONS", "check_batch", "check_images", "class_names_map", "image_options", "logits_of",
    # for the adapters (logbus.composer, logbus.start_run) and tests
    "SamplePipeline", "PipelineStats", "pipeline_for", "cleanup_within_close", "place_scratch", "CLOSE_TIMEOUT",
    "PIPELINE_OPTIONS", "SAMPLING_OPTIONS", "split_options", "images_record", "claim_key_prefix", "claim_label",
    "SamplingPolicy", "make_policy", "POLICIES", "HARDEST_BY",
    # for backends that store the pipeline's encoded files
    "IMAGE_FORMATS", "content_name", "mask_content_name", "overlay_labels", "overlay_of",
]
