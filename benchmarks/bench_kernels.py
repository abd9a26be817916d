"""logbus.kernels dispatch functions against the eager torch chain a user would write instead.

    .venv/bin/pytest benchmarks/bench_kernels.py --benchmark-only --benchmark-group-by=group

On the CPU the dispatch functions run their torch references (the numbers show what the validation and
the exact rounding cost); on CUDA they run the fused Triton kernels. Each pair shares a
``benchmark.group`` so the two rows sit together. `benchmarks/gpu_kernels_check.py` reports bandwidth.
"""

from __future__ import annotations

import pytest
import torch

from logbus.kernels import images_to_uint8, logits_summary, segmentation_mask

DEVICES = [
    "cpu",
    pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")),
]
MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
# (CPU size, CUDA size): moderate on the CPU so the file runs in well under a minute.
IMAGE_SHAPE = {"cpu": (8, 3, 128, 128), "cuda": (64, 3, 256, 256)}
LOGITS_SHAPE = {"cpu": (4, 64, 8192), "cuda": (8, 2048, 50257)}
SEG_SHAPE = {"cpu": (4, 21, 128, 128), "cuda": (16, 21, 512, 512)}


def _run(benchmark, device, fn):
    if device == "cuda":

        def synced():
            out = fn()
            torch.cuda.synchronize()
            return out

        return benchmark(synced)
    return benchmark(fn)


@pytest.mark.parametrize("impl", ["logbus", "eager"])
@pytest.mark.parametrize("device", DEVICES)
def test_images_to_uint8(benchmark, device, impl):
    benchmark.group = f"images_to_uint8 {device} {IMAGE_SHAPE[device]}"
    x = torch.randn(IMAGE_SHAPE[device], device=device)
    mean = torch.tensor(MEAN, device=device).view(1, 3, 1, 1)
    std = torch.tensor(STD, device=device).view(1, 3, 1, 1)
    if impl == "logbus":
        out = _run(benchmark, device, lambda: images_to_uint8(x, mean=MEAN, std=STD))
    else:
        out = _run(
            benchmark,
            device,
            lambda: (x * std + mean).clamp(0, 1).mul(255).round().to(torch.uint8).permute(0, 2, 3, 1).contiguous(),
        )
    assert out.shape == (x.shape[0], x.shape[2], x.shape[3], 3) and out.dtype == torch.uint8


@pytest.mark.parametrize("impl", ["logbus", "eager"])
@pytest.mark.parametrize("device", DEVICES)
def test_logits_top1(benchmark, device, impl):
    benchmark.group = f"logits top-1 {device} {LOGITS_SHAPE[device]}"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    x = torch.randn(LOGITS_SHAPE[device], device=device, dtype=dtype)
    if impl == "logbus":
        out = _run(benchmark, device, lambda: logits_summary(x).prediction)
    else:
        out = _run(benchmark, device, lambda: x.float().softmax(-1).max(-1).indices)
    assert out.shape == x.shape[:-1]


@pytest.mark.parametrize("impl", ["logbus", "eager"])
@pytest.mark.parametrize("device", DEVICES)
def test_logits_top5(benchmark, device, impl):
    benchmark.group = f"logits top-5 {device} {LOGITS_SHAPE[device]}"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    x = torch.randn(LOGITS_SHAPE[device], device=device, dtype=dtype)
    if impl == "logbus":
        out = _run(benchmark, device, lambda: logits_summary(x, k=5).topk_probs)
    else:
        out = _run(benchmark, device, lambda: x.float().softmax(-1).topk(5, -1).values)
    assert out.shape == (*x.shape[:-1], 5)


@pytest.mark.parametrize("impl", ["logbus", "eager"])
@pytest.mark.parametrize("device", DEVICES)
def test_segmentation_mask(benchmark, device, impl):
    benchmark.group = f"segmentation_mask {device} {SEG_SHAPE[device]}"
    x = torch.randn(SEG_SHAPE[device], device=device)
    if impl == "logbus":
        out = _run(benchmark, device, lambda: segmentation_mask(x))
    else:
        out = _run(benchmark, device, lambda: torch.argmax(x, dim=1).to(torch.uint8))
    assert out.dtype == torch.uint8 and out.shape == (x.shape[0], *x.shape[2:])
