"""GPU check of the sample pipeline, for a lent H100/H200 (run by ``benchmarks/gpu_check.sh``).

1. No stall: training steps (forward, backward, SGD step) with the sample pipeline fed every step,
   all under ``torch.cuda.set_sync_debug_mode("error")`` (any synchronising call raises, on any
   thread); afterwards the tables must hold every expected row and the pipeline no error.
2. End-to-end eval time, drain included, in a plain PyTorch eval loop (Composer and wandb are not
   on the GPU image): no sample logging; the documented per-sample pattern (one ``.cpu()`` and one
   PNG encode per sample on the training thread); logbus logging every sample to the local backend.

Prints one JSON object and writes it to ``$OUT/gpu_pipeline.json`` when ``OUT`` is set.
``--dry-run`` runs the same code on the CPU with tiny sizes (to check the script itself).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

import torch
from torch import nn


def small_resnet(num_classes: int = 10) -> nn.Module:
    try:
        import torchvision

        return torchvision.models.resnet18(num_classes=num_classes)
    except ImportError:  # the dry run on a machine without torchvision
        return nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                             nn.Linear(16, num_classes))


def no_stall_check(device: str, steps: int, batch: int, size: int) -> dict:
    import logbus

    torch.manual_seed(0)
    model = small_resnet().to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    images = torch.rand(steps, batch, 3, size, size, device=device)
    labels = torch.randint(0, 10, (steps, batch), device=device)
    folder = tempfile.mkdtemp()
    run = logbus.start_run("no-stall", backends=[("local", {"root": folder})])
    stream = run.samples("classification", num_samples=None, mean=[0.5] * 3, std=[0.25] * 3)
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
    try:
        for step in range(steps):
            logits = model(images[step])
            loss = nn.functional.cross_entropy(logits, labels[step])
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            stream.add(images[step], labels[step], logits.detach(), label=f"train{step}")
            stream.log(f"train{step}", step=step)
    finally:
        if device == "cuda":
            torch.cuda.set_sync_debug_mode(0)
    run.finish(timeout=300)
    stats = stream.pipeline.stats
    rows = 0
    tables = os.path.join(folder, "no-stall", "tables", "samples")
    for name in os.listdir(tables):
        with open(os.path.join(tables, name)) as file:
            rows += sum(len(json.loads(line)["rows"]) for line in file)
    # Batches the worker could not take (max_pending_batches) are dropped by design, never waited
    # for: every batch that was taken must be in the tables, and nothing may have failed.
    expected = (steps - stats.batches_dropped) * batch
    return {"steps": steps, "rows_expected": expected, "rows_logged": rows, "pipeline_errors": stats.errors,
            "batches_dropped": stats.batches_dropped, "passed": rows == expected and stats.errors == 0 and rows > 0}


def eval_time(device: str, variant: str, count: int, size: int, batch: int, image_format: str) -> tuple[float, float]:
    """(seconds until the eval loop returns, seconds until everything is delivered)."""
    import logbus
    from logbus.files._encoding import encode_image
    from logbus.kernels import images_to_uint8_reference

    torch.manual_seed(0)
    model = small_resnet().to(device).eval()
    data = torch.rand(count // batch, batch, 3, size, size, device=device)
    folder = tempfile.mkdtemp()
    run = logbus.start_run(f"eval-{variant}", backends=[("local", {"root": folder})])
    stream = run.samples("classification", num_samples=None, image_format=image_format, encode_workers=8) \
        if variant == "logbus" else None
    per_sample = []
    if device == "cuda":
        torch.cuda.synchronize()
    started = time.perf_counter()
    with torch.no_grad():
        for x in data:
            logits = model(x)
            labels = logits.argmax(-1)  # stands in for the dataset's labels: same shape, same device
            if variant == "logbus":
                stream.add(x, labels, logits)
            elif variant == "per_sample":
                for x_i, y_i, p_i in zip(x, labels, logits.argmax(-1)):
                    pixels = images_to_uint8_reference(x_i.cpu())[0].numpy()
                    per_sample.append((encode_image(pixels, image_format), int(y_i), int(p_i)))
        if variant == "logbus":
            stream.log("eval", step=0)
    if device == "cuda":
        torch.cuda.synchronize()
    loop = time.perf_counter() - started
    run.finish(timeout=600)
    return loop, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--dry-run", action="store_true")
    args = parser.parse_args()
    device = "cpu" if args.dry_run else "cuda"
    result = {"device": "cpu (dry run)" if args.dry_run else torch.cuda.get_device_name()}
    result["no_stall"] = no_stall_check(device, steps=2 if args.dry_run else 20, batch=8 if args.dry_run else 128,
                                        size=16 if args.dry_run else 64)
    cases = [(32, 2048), (224, 1024)] if not args.dry_run else [(16, 32)]
    result["eval"] = []
    for size, count in cases:
        for image_format in ("png", "jpeg"):
            eval_time(device, "logbus", count, size, 256 if not args.dry_run else 16, image_format)  # warm-up
            times = {variant: eval_time(device, variant, count, size, 256 if not args.dry_run else 16, image_format)
                     for variant in ("none", "per_sample", "logbus")}
            result["eval"].append({"size": size, "images": count, "format": image_format,
                                   "loop_seconds": {k: v[0] for k, v in times.items()},
                                   "drained_seconds": {k: v[1] for k, v in times.items()},
                                   "loop_ratio_logbus": times["logbus"][0] / times["none"][0],
                                   "drained_ratio_logbus": times["logbus"][1] / times["none"][1],
                                   "drained_ratio_per_sample": times["per_sample"][1] / times["none"][1]})
    text = json.dumps(result, indent=1)
    print(text)
    if os.environ.get("OUT"):
        with open(os.path.join(os.environ["OUT"], "gpu_pipeline.json"), "w") as file:
            file.write(text)


if __name__ == "__main__":
    main()
