"""Fused GPU kernels for turning model tensors into loggable samples.

Each op has a Triton kernel, a pure-torch reference and one dispatch function: Triton on CUDA tensors
when triton is installed, the reference otherwise (``impl="torch"``/``"triton"`` forces one).
"""

from ._dispatch import HAS_TRITON
from .images import images_to_uint8, images_to_uint8_reference
from .logits import LogitsSummary, logits_summary, logits_summary_reference
from .segmentation import segmentation_mask, segmentation_mask_reference

__all__ = [
    "HAS_TRITON",
    "LogitsSummary",
    "images_to_uint8",
    "images_to_uint8_reference",
    "logits_summary",
    "logits_summary_reference",
    "segmentation_mask",
    "segmentation_mask_reference",
]
