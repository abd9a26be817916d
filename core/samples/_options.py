"""The options of a sample stream, declared once (``logbus.options``): what is sampled
(``SAMPLING_OPTIONS``: the extractor, how many rows, which policy), shared by ``SampleLogger`` and
``Run.samples``, and the pipeline's keyword options (``PIPELINE_OPTIONS``). Keywords that are neither
go to the extractor (``class_names``, ``mean``, ``std``, ``top_k``, ``tokenizer``...)."""

from __future__ import annotations

from typing import Any

from logbus.options import Option, Options

POLICIES = ("first", "reservoir", "per_class", "hardest")
HARDEST_BY = ("loss", "confidence")
IMAGE_FORMATS = ("png", "jpeg")

SAMPLING_OPTIONS: Options = Options(
    Option("extractor", "classification", "a registered extractor name (`classification`, `segmentation`, `tokens`, "
           "a plugin's) or an extractor object"),
    Option("num_samples", 100, "rows per table; `None`: every eval sample (policy `first` only)",
           kind="int", minimum=1, allows_none=True),
    Option("policy", "first", "`first`, `reservoir` (uniform over the pass, seeded), `per_class` (`num_samples` rows "
           "in all, balanced over the true classes, earliest first; needs `class_names`), `hardest` (highest loss or "
           "lowest confidence over the pass, kept on the device)", kind="choice", choices=POLICIES),
)

PIPELINE_OPTIONS: Options = Options(
    Option("seed", 0, "seed of the `reservoir` policy (each eval pass draws anew)", kind="int"),
    Option("hardest_by", "loss", 'what `hardest` ranks by: `"loss"` (highest first) or `"confidence"` (lowest first)',
           kind="choice", choices=HARDEST_BY),
    Option("max_pending_batches", None, "optional cap on the batches the pipeline's thread may hold; `None`: only "
           "`pinned_pool_bytes` bounds them", kind="int", minimum=1),
    Option("pinned_pool_bytes", 256 * 2**20, "the memory budget of batches in flight, and the only bound at default "
           "settings: shared memory for batches' rows on their way to the worker process, pinned host memory for "
           "device-to-host copies, and (each budget separately) bytes of batches the pipeline's thread holds; a batch "
           "that finds its budget spent is dropped and counted, training never waits. A batch larger than the whole "
           "budget goes through in parts", kind="int", minimum=1, shown="256 * 2**20"),
    Option("encode_workers", None, "image encoder threads of the pipeline (in its worker process); `None`: one per "
           "core this process may use (its CPU affinity), divided among the ranks of the node (`LOCAL_WORLD_SIZE`)",
           kind="int", minimum=1),
    Option("image_format", "png", '`"png"` or `"jpeg"` (quality 90; far faster, lossy)',
           kind="choice", choices=IMAGE_FORMATS),
    Option("compress_level", 1, "PNG compression level, 0-9 (1 is about twice as fast as Pillow's default 6)",
           kind="int", minimum=0, maximum=9),
    Option("key_prefix", "samples", "tables are logged as `{key_prefix}/{label}`"),  # logbus.files.check_key
    Option("scratch_cache_bytes", 64 * 2**20, "encoded image files wait in a scratch folder (`.scratch` under the "
           "local backend's root when it is on the bus, so that it hard-links them into the run; else `/dev/shm` "
           "where it has 256 MB free, else the temporary folder on disk, with one warning) until every backend has "
           "taken their table; after that, files no table refers to are kept for a "
           "later eval to reuse up to this many bytes, the least recently used deleted first",
           kind="int", minimum=0, shown="64 * 2**20"),
    Option("worker_process", True, "build rows and encode images in a worker process fed through shared memory (one "
           "for all pipelines, started with the first as an isolated interpreter that never imports from your working "
           "directory, and stopped when the last one closes), so that building rows and encoding images "
           "never hold the training process's GIL; until it is up, and where the extractor does not pickle (a class "
           "defined in your training script, an object holding a lock) or there is no shared memory, the work runs "
           "on threads of the training process (with a warning); `False`: always on those threads", kind="bool"),
    Option("worker_stall_timeout", 20.0, "seconds the end of a pass waits for a worker process that answers "
           "nothing (hung, stopped); then its batches are counted lost and the table is logged without them, so "
           "that metrics logged after it are delivered: a hung worker costs sample rows, never metrics",
           kind="number", minimum=0, unit="seconds"),
)


def split_options(options: dict[str, Any]) -> tuple[dict[str, Any] | None, dict[str, Any]]:
    pipeline = {k: v for k, v in options.items() if k in PIPELINE_OPTIONS}
    extractor = {k: v for k, v in options.items() if k not in PIPELINE_OPTIONS}
    return extractor or None, pipeline
