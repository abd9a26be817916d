"""``logbus bench``: the benchmark suites of ``benchmarks/`` (pytest-benchmark), run on the user's
machine at quick sizes, summarised as ratios measured in one run.

The suites live in this package (``logbus.bench.suite_*``) and ``benchmarks/`` imports them, so the
command and the project's benchmarks are the same code.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import platform
import sys
import tempfile
from typing import Any

SUITES = ("logbus.bench.suite_logging", "logbus.bench.suite_eval", "logbus.bench.suite_pipeline")


def run_suites(*, quick: bool = True, verbose: bool = False) -> dict[str, Any]:
    """Runs the suites with pytest-benchmark and returns its JSON report."""
    try:
        import pytest
        import pytest_benchmark  # noqa: F401
    except ImportError as error:
        raise SystemExit("logbus bench needs pytest and pytest-benchmark: pip install 'logbus[bench]'") from error
    if quick:
        os.environ["LOGBUS_BENCH_QUICK"] = "1"
    os.environ["LOGBUS_BENCH_COMMAND"] = "1"  # the pipeline suite's (a) and (b) local at 32 px only
    with tempfile.TemporaryDirectory(prefix="logbus-bench-") as folder:
        report = os.path.join(folder, "report.json")
        config = os.path.join(folder, "pytest.ini")  # isolate from the user's own pytest configuration
        with open(config, "w") as file:
            file.write("[pytest]\n")
        previous = os.getcwd()
        os.chdir(folder)  # wandb and local runs land in the scratch folder, removed afterwards
        os.environ.setdefault("LOGBUS_BENCH_DIR", folder)
        output = io.StringIO()  # pytest-benchmark's own tables: shown only with --verbose or on failure
        try:
            with contextlib.redirect_stdout(sys.stdout if verbose else output):
                code = pytest.main(["-c", config, "--rootdir", folder, "-p", "no:cacheprovider", "--benchmark-only",
                                    f"--benchmark-json={report}", "-q", "--pyargs", *SUITES])
        finally:
            os.chdir(previous)
        if code != 0:
            sys.stderr.write(output.getvalue())
            raise SystemExit(f"logbus bench: the benchmark suites failed (pytest exit code {int(code)})")
        with open(report) as file:
            return json.load(file)


def summarise(report: dict[str, Any]) -> dict[str, Any]:
    """Ratios from one pytest-benchmark report: per-call logging cost, and eval time per variant
    against eval without sample logging."""
    by_name = {b["name"]: b for b in report["benchmarks"]}
    summary: dict[str, Any] = {"machine": machine(report), "log_metrics": {}, "eval": []}
    for name, label in (("test_logbus_through_composer_logger", "logbus via Composer Logger"),
                        ("test_wandb_log_on_the_training_thread", "wandb.log"),
                        ("test_bare_queue_put", "queue.Queue.put")):
        if name in by_name:
            summary["log_metrics"][label] = by_name[name]["extra_info"]
    calls = summary["log_metrics"]
    if "logbus via Composer Logger" in calls and "wandb.log" in calls:
        summary["wandb_log_vs_logbus"] = (calls["wandb.log"]["wall_us_per_call"]
                                          / calls["logbus via Composer Logger"]["wall_us_per_call"])
    evals: dict[int, dict[str, float]] = {}
    for bench in report["benchmarks"]:
        info = bench["extra_info"]
        if "measure" in info:  # the sample pipeline's suite: summarised apart
            continue
        if "variant" in info:
            evals.setdefault(info["size"], {"images": info["images"]})[info["variant"]] = bench["stats"]["median"]
    for size, seconds in sorted(evals.items()):
        base = seconds.get("no_sample_logging")
        summary["eval"].append({
            "size": size, "images": seconds["images"],
            "seconds": {k: v for k, v in seconds.items() if k != "images"},
            "ratio": {k: v / base for k, v in seconds.items() if k not in ("images",) and base},
        })
    summary["pipeline"] = pipeline_rows(report)
    return summary


def pipeline_rows(report: dict[str, Any]) -> list[dict[str, Any]]:
    """The sample pipeline's (a) loop stall and (b) end-to-end runs: median, min and max seconds per
    variant, and each variant's ratio to no sample logging. A ratio is a finding only where the two
    spreads (min to max) do not overlap; otherwise ``within_noise`` says so. The training-process CPU
    per logged sample comes as its own row (µs, not seconds)."""
    rows: dict[tuple, dict[str, Any]] = {}
    for bench in report["benchmarks"]:
        info, stats = bench["extra_info"], bench["stats"]
        measure = info.get("measure")
        if measure is None:
            continue
        if measure == "cpu_us_per_sample":
            rows[(measure, info["variant"])] = {
                "measure": measure, "variant": info["variant"],
                "us_per_sample": {"median": info["median_us"], "min": info["min_us"], "max": info["max_us"]}}
            continue
        key = (measure, info.get("task", "classification"), info["size"])
        row = rows.setdefault(key, {"measure": measure, "task": key[1], "size": info["size"], "images": info["images"],
                                    "seconds": {}, "ratio": {}, "within_noise": {}})
        row["seconds"][info["variant"]] = {"median": stats["median"], "min": stats["min"], "max": stats["max"],
                                           "rounds": stats["rounds"]}
    for row in rows.values():
        base = row.get("seconds", {}).get("no_sample_logging")
        if base is None:
            continue
        for variant, seconds in row["seconds"].items():
            row["ratio"][variant] = seconds["median"] / base["median"]
            row["within_noise"][variant] = seconds["min"] <= base["max"] and base["min"] <= seconds["max"]
    return list(rows.values())


def machine(report: dict[str, Any]) -> dict[str, Any]:
    info = report.get("machine_info", {})
    details = {"node": info.get("node"), "processor": info.get("cpu", {}).get("brand_raw") or platform.processor(),
               "cpus": os.cpu_count(), "python": platform.python_version(), "system": platform.platform()}
    try:
        import torch

        details["torch"] = torch.__version__
        details["gpu"] = torch.cuda.get_device_name() if torch.cuda.is_available() else None
    except ImportError:
        pass
    try:
        import wandb

        details["wandb"] = wandb.__version__
    except ImportError:
        pass
    return details


def format_table(summary: dict[str, Any]) -> str:
    m = summary["machine"]
    lines = [f"machine: {m.get('processor')} ({m.get('cpus')} CPUs), {m.get('system')}, python {m.get('python')}, "
             f"torch {m.get('torch')}, wandb {m.get('wandb')}, GPU {m.get('gpu') or 'none'}", "",
             "log_metrics, caller thread        wall µs/call   thread-CPU µs/call"]
    for label, info in summary["log_metrics"].items():
        lines.append(f"  {label:<32} {info['wall_us_per_call']:>12.2f}   {info['thread_cpu_us_per_call']:>12.2f}")
    if "wandb_log_vs_logbus" in summary:
        lines.append(f"  wandb.log costs the training thread {summary['wandb_log_vs_logbus']:.0f}x what logbus does")
    lines += ["", "eval, 2 passes + drain              seconds   ratio to no sample logging"]
    for row in summary["eval"]:
        lines.append(f"  {row['images']} images {row['size']}x{row['size']}")
        for variant, seconds in row["seconds"].items():
            lines.append(f"    {variant:<30} {seconds:>8.2f}   {row['ratio'].get(variant, float('nan')):>6.2f}x")
    if summary.get("pipeline"):
        lines += ["", "sample pipeline (median, min-max)    seconds               ratio to no sample logging"]
        for row in summary["pipeline"]:
            if row["measure"] == "cpu_us_per_sample":
                cost = row["us_per_sample"]
                lines.append(f"  training-process CPU per logged sample, {row['variant']}: {cost['median']:.1f} µs "
                             f"({cost['min']:.1f}-{cost['max']:.1f})")
                continue
            what = "(a) eval loop" if row["measure"] == "eval_loop" else f"(b) 2 evals + close, {row['measure'][11:]}"
            lines.append(f"  {what}, {row['task']}, {row['images']} images {row['size']}x{row['size']}")
            for variant, seconds in row["seconds"].items():
                ratio = row["ratio"].get(variant)
                note = "" if ratio is None else f"{ratio:.2f}x" + ("  (within noise)" if row["within_noise"][variant]
                                                                 and variant != "no_sample_logging" else "")
                lines.append(f"    {variant:<30} {seconds['median']:>6.2f} ({seconds['min']:.2f}-{seconds['max']:.2f})"
                             f"   {note}")
    return "\n".join(lines)


def plot(summary: dict[str, Any], path: str) -> str:
    """A bar chart of the eval ratios, drawn with Pillow (no plotting library needed)."""
    from PIL import Image, ImageDraw

    bars = [(f"{row['size']}px {variant}", ratio) for row in summary["eval"] for variant, ratio in row["ratio"].items()]
    width, row_height, left = 760, 34, 250
    image = Image.new("RGB", (width, 60 + row_height * max(1, len(bars))), "white")
    draw = ImageDraw.Draw(image)
    draw.text((10, 10), "logbus bench: eval time relative to no sample logging (lower is better)", fill="black")
    top = max([ratio for _, ratio in bars] + [1.0])
    scale = (width - left - 80) / top
    colours = {"no_sample_logging": (150, 150, 150), "guide": (214, 96, 77), "sample_logger": (67, 147, 195),
               "sample_logger_jpeg": (33, 102, 172)}
    for index, (label, ratio) in enumerate(bars):
        y = 40 + index * row_height
        colour = next((c for k, c in colours.items() if label.endswith(k)), (100, 100, 100))
        draw.text((10, y + 8), label, fill="black")
        draw.rectangle([left, y + 4, left + ratio * scale, y + row_height - 6], fill=colour)
        draw.text((left + ratio * scale + 6, y + 8), f"{ratio:.2f}x", fill="black")
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    image.save(path)
    return path


def main(*, as_json: bool = False, plot_path: str | None = None, full: bool = False,
         verbose: bool = False) -> int:
    summary = summarise(run_suites(quick=not full, verbose=verbose))
    if plot_path:
        summary["plot"] = plot(summary, plot_path)
    if as_json:
        print(json.dumps(summary, indent=2))
    else:
        print(format_table(summary))
        if plot_path:
            print(f"\nplot: {plot_path}")
    sys.stdout.flush()
    return 0
