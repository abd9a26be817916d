"""Registers the built-in sample extractors, through the same hook as any third-party plugin.

Kept light on purpose: the extractor classes import torch and the kernels, which takes seconds, so
they are imported by their factory on first use, not when plugins load (``logbus plugins`` stays fast).
"""

from __future__ import annotations

import importlib

import logbus

BUILTIN_EXTRACTORS = {
    "classification": ("logbus.plugins.classification", "ClassificationExtractor",
                       "image, truth, prediction, confidence, loss, top-k (image classifiers)"),
    "segmentation": ("logbus.plugins.segmentation", "SegmentationExtractor",
                     "image with ground-truth and predicted masks, pixel accuracy, loss"),
    "tokens": ("logbus.plugins.tokens", "TokensExtractor",
               "input, target and predicted text for language models"),
}


def _lazy(module: str, class_name: str):
    def imported():
        return getattr(importlib.import_module(module), class_name)

    def factory(**options):
        return imported()(**options)

    factory.__qualname__ = factory.__name__ = class_name
    factory.imported = imported  # type: ignore[attr-defined]  # the plugin host checks option names against it
    return factory


@logbus.hookimpl
def register_extractors(register):
    for name, (module, class_name, description) in BUILTIN_EXTRACTORS.items():
        register(name, _lazy(module, class_name), description=description)
