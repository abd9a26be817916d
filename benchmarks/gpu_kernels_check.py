"""GPU check of logbus.kernels: compiled Triton kernels vs torch references, bandwidth, and speed-up.

    python3 benchmarks/gpu_kernels_check.py                 # on a CUDA machine (< 60 s on an H100)
    python3 benchmarks/gpu_kernels_check.py --peak-gbs 3350 # override the detected peak bandwidth
    python3 benchmarks/gpu_kernels_check.py --dry-run       # CPU plumbing check with tiny sizes
    TRITON_INTERPRET=1 python3 benchmarks/gpu_kernels_check.py --dry-run   # ... through the interpreter

Prints one JSON object to stdout (and writes it to $OUT/gpu_kernels.json when OUT is set):
  checks     kernel == reference on CUDA (impl="triton", compiled), odd shapes/dtypes/strides
  bandwidth  (bytes read + written) / median time per kernel, and % of the peak
  logits_vs_eager  fused argmax+confidence on 8x2048x50257 bf16 vs `softmax(-1).max(-1)`
Exit status 1 when any check fails. Needs only torch, triton and logbus.kernels (found through the
checkout when logbus is not installed).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import sys
import time
import types
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
PEAK_GBS = [("H200", 4800.0), ("H100 PCIE", 2000.0), ("H100", 3350.0)]  # first substring match wins


def load_kernels():
    try:
        from logbus import kernels

        return kernels
    except ImportError:
        pass
    # A bare checkout (no `pip install -e .`): load kernels/ as `logbus.kernels` without logbus's core.
    sys.modules.setdefault("logbus", types.ModuleType("logbus")).__path__ = []
    spec = importlib.util.spec_from_file_location(
        "logbus.kernels", ROOT / "kernels" / "__init__.py", submodule_search_locations=[str(ROOT / "kernels")]
    )
    kernels = importlib.util.module_from_spec(spec)
    sys.modules["logbus.kernels"] = kernels
    spec.loader.exec_module(kernels)
    return kernels


K = load_kernels()


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--peak-gbs", type=float, default=None, help="peak memory bandwidth in GB/s")
    parser.add_argument("--dry-run", action="store_true", help="CPU, tiny sizes, no CUDA needed")
    parser.add_argument("--iters", type=int, default=20, help="timed iterations (median reported)")
    parser.add_argument("--warmup", type=int, default=3)
    return parser.parse_args(argv)


def detect_peak_gbs(device_name: str) -> float | None:
    name = device_name.upper()
    return next((gbs for key, gbs in PEAK_GBS if key in name), None)


def median_ms(fn, device: str, warmup: int, iters: int) -> float:
    for _ in range(warmup):
        fn()
    times = []
    if device == "cuda":
        torch.cuda.synchronize()
        for _ in range(iters):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
    else:
        for _ in range(iters):
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


# ---------------------------------------------------------------------------------------------- checks


def _images_input(shape, dtype, device, gen):
    x = torch.rand(shape, generator=gen) * 1.4 - 0.2
    flat = x.view(-1)
    flat[::7] = (torch.randint(0, 255, flat[::7].shape, generator=gen) + 0.5) / 255  # rounding ties
    flat[:3] = torch.tensor([float("nan"), float("inf"), float("-inf")])
    if dtype == torch.uint8:
        return torch.randint(0, 256, shape, generator=gen, dtype=torch.uint8).to(device)
    return x.to(dtype).to(device)


def check_images(impl, device, gen):
    cases = [  # (name, shape, dtype, view, kwargs)
        ("nchw_fp32_0_1", (2, 3, 17, 31), torch.float32, None, {}),
        ("nchw_fp32_meanstd", (3, 3, 33, 65), torch.float32, None,
         {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}),
        ("nhwc_bf16_-1_1", (4, 19, 23, 3), torch.bfloat16, None, {"value_range": "-1_1"}),
        ("permuted_fp16_0_255", (2, 4, 9, 13), torch.float16, "permute", {"value_range": "0_255"}),
        ("sliced_fp32_rgba", (3, 4, 34, 18), torch.float32, "slice", {}),
        ("chw_gray_fp32", (1, 127, 129), torch.float32, None, {}),
        ("uint8_nhwc", (2, 16, 24, 3), torch.uint8, "permute", {}),
    ]  # fmt: skip
    results = []
    for name, shape, dtype, view, kwargs in cases:
        x = _images_input(shape, dtype, device, gen)
        if dtype == torch.float32 and "mean" in kwargs:
            x = (x - 0.45) / 0.25
        if view == "permute":  # same logical NCHW image, stored NHWC
            x = x.permute(0, 2, 3, 1).contiguous().permute(0, 3, 1, 2)
        elif view == "slice":
            x = x[:, :, ::2, ::3]
        got = K.images_to_uint8(x, impl=impl, **kwargs)
        want = K.images_to_uint8_reference(x, **kwargs)
        mismatches = int((got != want).sum())
        results.append({"op": "images_to_uint8", "case": name, "ok": mismatches == 0, "mismatches": mismatches})
    return results


def check_logits(impl, device, gen, big):
    cases = [  # (name, shape, dtype, view, k)
        ("nc_fp32", (37, 10), torch.float32, None, 1),
        ("ntv_bf16_gpt2", (4, 5, 50257), torch.bfloat16, None, 1),
        ("ntv_bf16_gpt2_top5", (4, 5, 50257), torch.bfloat16, None, 5),
        ("transposed_fp16", (9, 6, 1001), torch.float16, "transpose", 3),
        ("last_dim_stride2_fp32", (5, 7, 300), torch.float32, "slice", 2),
        ("vocab_256k_fp32", (3, 2, 256000), torch.float32, None, 1),
    ]
    results = []
    for name, shape, dtype, view, k in cases:
        x = torch.randn(shape, generator=gen) * 3
        rows = x.view(-1, shape[-1])
        rows[0, -1] = rows[0].max()  # duplicated maximum: first index must win (rows >= 6 in every case)
        rows[1, 3] = float("nan")
        rows[2, 0] = float("inf")
        rows[3, ::2] = float("-inf")  # a masked vocabulary: valid, probability 0
        rows[-2] = float("-inf")
        rows[-2, 1] = 0.5  # all masked but one: probability 1
        rows[-1] = float("-inf")  # nothing left: non-finite, like NaN and +inf
        x = x.to(dtype).to(device)
        if view == "transpose":
            x = x.transpose(0, 1).contiguous().transpose(0, 1)
        elif view == "slice":
            x = torch.repeat_interleave(x, 2, dim=-1)[..., ::2]
        results.append(_compare_logits(name, K.logits_summary(x, k=k, impl=impl), K.logits_summary_reference(x, k=k)))
    if big:  # rows beyond 2**31 elements: the kernel's row offsets must be 64-bit
        x = torch.randn(1, 8400, 256000, device=device, dtype=torch.bfloat16)
        got = K.logits_summary(x, impl=impl)
        tail = slice(8396, 8400)
        want = K.logits_summary_reference(x[:, tail])
        got = K.LogitsSummary(*(t[:, tail] for t in got))
        results.append(_compare_logits("offsets_over_2**31_bf16", got, want))
        del x
    return results


def _compare_logits(name, got, want):
    exact = all(torch.equal(getattr(got, f), getattr(want, f)) for f in ("prediction", "finite", "topk_indices"))
    nan_same = torch.equal(got.confidence.isnan(), want.confidence.isnan())
    ok_rows = ~want.confidence.isnan()
    rel = ((got.confidence - want.confidence).abs() / want.confidence.abs().clamp_min(1e-30))[ok_rows]
    max_rel = float(rel.max()) if rel.numel() else 0.0
    try:
        torch.testing.assert_close(got.confidence, want.confidence, rtol=1e-5, atol=1e-6, equal_nan=True)
        torch.testing.assert_close(got.topk_probs, want.topk_probs, rtol=1e-5, atol=1e-6, equal_nan=True)
        close = True
    except AssertionError:
        close = False
    return {"op": "logits_summary", "case": name, "ok": exact and nan_same and close,
            "exact_fields_equal": exact, "confidence_max_rel_err": max_rel}  # fmt: skip


def check_segmentation(impl, device, gen):
    cases = [  # (name, shape, dtype, view, ties)
        ("nchw_fp32", (2, 21, 65, 33), torch.float32, None, False),
        ("channels_last_fp32", (2, 21, 65, 33), torch.float32, "channels_last", False),
        ("int16_bf16", (1, 300, 17, 19), torch.bfloat16, None, False),
        ("ties_nan_fp16", (3, 4, 64, 64), torch.float16, "slice", True),
    ]
    results = []
    for name, shape, dtype, view, ties in cases:
        x = torch.randint(0, 3, shape, generator=gen).float() if ties else torch.randn(shape, generator=gen)
        x.view(-1)[::101] = float("nan")
        x = x.to(dtype).to(device)
        if view == "channels_last":
            x = x.contiguous(memory_format=torch.channels_last)
        elif view == "slice":
            x = torch.repeat_interleave(x, 2, dim=-1)[..., ::2]
        got = K.segmentation_mask(x, impl=impl)
        want = K.segmentation_mask_reference(x)
        mismatches = int((got != want).sum())
        ok = mismatches == 0 and got.dtype == want.dtype
        results.append({"op": "segmentation_mask", "case": name, "ok": ok, "mismatches": mismatches})
    return results


def check_no_host_sync(impl, device):
    """The sample pipeline calls these on a side stream: none may wait for the GPU."""
    x_img = torch.rand(4, 3, 32, 32, device=device)
    x_lm = torch.randn(4, 8, 1000, device=device, dtype=torch.bfloat16)
    x_seg = torch.randn(2, 21, 32, 32, device=device)
    calls = {
        "images_to_uint8 mean/std": lambda: K.images_to_uint8(x_img, mean=[0.5] * 3, std=[0.2] * 3, impl=impl),
        "logits_summary k=1": lambda: K.logits_summary(x_lm, impl=impl),
        "logits_summary k=5": lambda: K.logits_summary(x_lm, k=5, impl=impl),
        "segmentation_mask": lambda: K.segmentation_mask(x_seg, impl=impl),
    }
    results = []
    for name, call in calls.items():
        call()  # compile outside the checked region
        error = None
        if device == "cuda":
            torch.cuda.synchronize()
            torch.cuda.set_sync_debug_mode("error")
            try:
                call()
            except RuntimeError as exc:
                error = str(exc).splitlines()[0]
            finally:
                torch.cuda.set_sync_debug_mode("default")
        results.append({"op": name, "case": "no_host_sync", "ok": error is None, "error": error})
    return results


# ---------------------------------------------------------------------------------------- performance


def measure_bandwidth(impl, device, sizes, peak, warmup, iters):
    """(bytes read + bytes written) / median time for each kernel, one input tensor alive at a time."""

    def record(name, fn, bytes_moved):
        ms = median_ms(fn, device, warmup, iters)
        gbs = bytes_moved / (ms * 1e-3) / 1e9
        pct = round(100 * gbs / peak, 1) if peak else None
        return {"kernel": name, "median_ms": round(ms, 4), "gb_moved": round(bytes_moved / 1e9, 4),
                "gbs": round(gbs, 1), "pct_of_peak": pct}  # fmt: skip

    def images(dtype, **kwargs):
        x = torch.rand(sizes["images"], device=device).to(dtype)
        name = f"images_to_uint8 {str(dtype)[6:]} {tuple(x.shape)}{' mean/std' if kwargs else ''}"
        return record(name, lambda: K.images_to_uint8(x, impl=impl, **kwargs), x.numel() * (x.element_size() + 1))

    def logits(dtype):
        x = torch.randn(sizes["logits"], device=device, dtype=dtype)
        rows = x.numel() // x.shape[-1]
        written = rows * (8 + 4 + 4 + 1)  # prediction, confidence, log-sum-exp, finite
        name = f"logits_summary k=1 {str(dtype)[6:]} {tuple(x.shape)}"
        return record(name, lambda: K.logits_summary(x, impl=impl), x.numel() * x.element_size() + written)

    def segmentation(memory_format):
        x = torch.randn(sizes["segmentation"], device=device).contiguous(memory_format=memory_format)
        pixels = x.numel() // x.shape[1]
        name = f"segmentation_mask fp32 {tuple(x.shape)} {str(memory_format)[6:]}"
        return record(name, lambda: K.segmentation_mask(x, impl=impl), x.numel() * 4 + pixels)

    mean_std = {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
    return [
        images(torch.float32, **mean_std),
        images(torch.bfloat16),
        logits(torch.bfloat16),
        segmentation(torch.contiguous_format),
        segmentation(torch.channels_last),
    ]


def logits_tuning(impl, device, shape, warmup, iters):
    """GB/s of the logits kernel per launch configuration, to re-tune logits._BLOCK_V and friends."""
    module = sys.modules["logbus.kernels.logits"]
    default = (module._BLOCK_V, module._NUM_WARPS, module._NUM_STAGES)
    x = torch.randn(shape, device=device, dtype=torch.bfloat16)
    configs = [(512, 2, None), (512, 4, None), (1024, 2, None), (1024, 4, None), (1024, 4, 1), (1024, 4, 3),
               (1024, 8, None), (2048, 4, None), (2048, 8, None), (2048, 8, 3), (4096, 8, None)]  # fmt: skip
    results = []
    try:
        for block_v, warps, stages in configs:
            module._BLOCK_V, module._NUM_WARPS, module._NUM_STAGES = block_v, warps, stages
            ms = median_ms(lambda: K.logits_summary(x, impl=impl), device, warmup, iters)
            gbs = x.numel() * x.element_size() / (ms * 1e-3) / 1e9
            results.append({"block_v": block_v, "num_warps": warps, "num_stages": stages,
                            "median_ms": round(ms, 4), "gbs": round(gbs, 1)})  # fmt: skip
    finally:
        module._BLOCK_V, module._NUM_WARPS, module._NUM_STAGES = default
    return results


def logits_vs_eager(impl, device, shape, warmup, iters):
    x = torch.randn(shape, device=device, dtype=torch.bfloat16)
    fused = median_ms(lambda: K.logits_summary(x, impl=impl), device, warmup, iters)
    eager = median_ms(lambda: x.softmax(-1).max(-1), device, warmup, iters)
    eager_fp32 = median_ms(lambda: x.float().softmax(-1).max(-1), device, warmup, max(3, iters // 4))
    same = torch.equal(K.logits_summary(x, impl=impl).prediction, torch.argmax(x, -1))
    return {"shape": list(shape), "dtype": "bfloat16", "fused_ms": round(fused, 4),
            "eager_softmax_max_ms": round(eager, 4), "eager_float_softmax_max_ms": round(eager_fp32, 4),
            "speedup_vs_eager": round(eager / fused, 2), "speedup_vs_eager_float": round(eager_fp32 / fused, 2),
            "prediction_equals_argmax": same}  # fmt: skip


# ---------------------------------------------------------------------------------------------- main


def main(argv=None) -> int:
    args = parse_args(argv)
    started = time.perf_counter()
    if args.dry_run:
        device = "cpu"
        interpret = K.HAS_TRITON and os.environ.get("TRITON_INTERPRET") == "1"
        impl = "triton" if interpret else "torch"
        device_name, big = "cpu (dry run)", False
        sizes = {"images": (2, 3, 32, 32), "logits": (2, 4, 1000), "segmentation": (2, 5, 16, 16)}
        lm_shape, iters, warmup = (2, 4, 1000), 2, 1
    else:
        if not torch.cuda.is_available():
            sys.exit("gpu_kernels_check: no CUDA device (use --dry-run for a CPU plumbing check)")
        if not K.HAS_TRITON:
            sys.exit("gpu_kernels_check: triton is not installed")
        device, impl, big = "cuda", "triton", True
        device_name = torch.cuda.get_device_name()
        sizes = {"images": (64, 3, 512, 512), "logits": (8, 2048, 50257), "segmentation": (16, 21, 512, 512)}
        lm_shape, iters, warmup = (8, 2048, 50257), args.iters, args.warmup
    peak = args.peak_gbs if args.peak_gbs is not None else detect_peak_gbs(device_name)

    gen = torch.Generator().manual_seed(0)
    checks = check_images(impl, device, gen) + check_logits(impl, device, gen, big)
    checks += check_segmentation(impl, device, gen) + check_no_host_sync(impl, device)
    report = {
        "device": device_name,
        "torch": torch.__version__,
        "triton": __import__("triton").__version__ if K.HAS_TRITON else None,
        "impl": impl,
        "dry_run": args.dry_run,
        "peak_gbs": peak,
        "all_checks_ok": all(c["ok"] for c in checks),
        "checks": checks,
        "bandwidth": measure_bandwidth(impl, device, sizes, peak, warmup, iters),
        "logits_vs_eager": logits_vs_eager(impl, device, lm_shape, warmup, iters),
        "logits_tuning": logits_tuning(impl, device, lm_shape, warmup, iters),
    }
    report["elapsed_s"] = round(time.perf_counter() - started, 1)
    text = json.dumps(report, indent=2)
    print(text)
    if os.environ.get("OUT"):
        Path(os.environ["OUT"], "gpu_kernels.json").write_text(text + "\n")
    return 0 if report["all_checks_ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
