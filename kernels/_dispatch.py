"""Optional Triton import and the torch-vs-Triton decision shared by every op.

Triton is an optional dependency: the package must import (and every op must work through its torch
reference) on machines without it, e.g. CPU-only CI or macOS.
"""

from __future__ import annotations

import os

import torch

try:
    import triton
    import triton.language as tl

    HAS_TRITON = True
except ImportError:  # pragma: no cover - exercised in a subprocess by the tests
    triton = None
    tl = None
    HAS_TRITON = False

IMPLS = ("auto", "triton", "torch")


def interpreting() -> bool:
    """True when `@triton.jit` decorates kernels for the CPU interpreter (read at decoration time)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def use_triton(impl: str, tensor: torch.Tensor) -> bool:
    """Decide whether an op runs its Triton kernel (True) or its torch reference (False)."""
    if impl not in IMPLS:
        raise ValueError(f"impl: expected one of {IMPLS}, got {impl!r}")
    if impl == "torch":
        return False
    if impl == "auto":
        return HAS_TRITON and tensor.is_cuda
    if not HAS_TRITON:
        raise RuntimeError("impl='triton' requested but triton is not installed")
    if not tensor.is_cuda and not interpreting():
        raise ValueError("impl='triton' needs a CUDA tensor (or TRITON_INTERPRET=1 for the CPU interpreter)")
    return True
