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
import sys
import tempfile
from typing import Any

from logbus.bench.results import machine_info
from logbus.bench.tables import ratio_with_spread

SUITES = ("logbus.bench.suite_logging", "logbus.bench.suite_eval", "logbus.bench.suite_pipeline")


PLUGIN_MISSING = ("logbus bench needs pytest and pytest-benchmark, which logbus installs only with its bench extra: "
                  "pip install 'logbus[bench]'")
# Pillow's built-in font (Aileron) at its default 10 px draws a space 2 px wide, no wider than the gap
# between two letters, so the chart's words ran together; from 14 px a space is wider than that gap.
CHART_FONT_PX = 15


def run_suites(*, quick: bool = True, verbose: bool = False) -> dict[str, Any]:
    """Runs the suites with pytest-benchmark and returns what they measured: ``{"benchmarks": [...]}``,
    one entry per benchmark as :class:`logbus.bench.results.ResultsCollector` records it (median, min,
    max and rounds in seconds, its group, parameters and ``extra_info``), kept in memory: no report
    file, so nothing names a file of the scratch folder once it is gone."""
    try:
        import pytest
        import pytest_benchmark  # noqa: F401
    except ImportError as error:
        raise SystemExit(PLUGIN_MISSING) from error
    from logbus.bench.results import ResultsCollector

    if quick:
        os.environ["LOGBUS_BENCH_QUICK"] = "1"
    os.environ["LOGBUS_BENCH_COMMAND"] = "1"  # the pipeline suite's (a) and (b) local at 32 px only
    collector = ResultsCollector(folder=None)
    with tempfile.TemporaryDirectory(prefix="logbus-bench-") as folder:
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
                                    "-q", "--pyargs", *SUITES], plugins=[collector])
        finally:
            os.chdir(previous)
        if code != 0:
            sys.stderr.write(output.getvalue())
            raise SystemExit(f"logbus bench: the benchmark suites failed (pytest exit code {int(code)})")
    return {"benchmarks": [row for rows in collector.by_suite.values() for row in rows]}


def _spread(row: dict[str, Any], scale: float = 1.0) -> dict[str, float]:
    return {"median": row["median"] * scale, "min": row["min"] * scale, "max": row["max"] * scale,
            "rounds": row["rounds"]}


def summarise(report: dict[str, Any]) -> dict[str, Any]:
    """Ratios from one run of the suites (:func:`run_suites`), each the ratio of medians with its range
    and whether it is within noise (:func:`logbus.bench.tables.ratio_with_spread`): per-call logging
    cost, eval time per variant against eval without sample logging, and the sample pipeline's rows."""
    by_name = {b["name"]: b for b in report["benchmarks"]}
    summary: dict[str, Any] = {"machine": machine_info(), "log_metrics": {}, "eval": []}
    for name, label in (("test_logbus_through_composer_logger", "logbus via Composer Logger"),
                        ("test_wandb_log_on_the_training_thread", "wandb.log"),
                        ("test_bare_queue_put", "queue.Queue.put")):
        if name in by_name:
            row = by_name[name]
            summary["log_metrics"][label] = {**row["extra_info"],
                                             "wall_us": _spread(row, 1e6 / row["extra_info"]["calls"])}
    calls = summary["log_metrics"]
    if "logbus via Composer Logger" in calls and "wandb.log" in calls:
        summary["wandb_log_vs_logbus"] = ratio_with_spread(calls["wandb.log"]["wall_us"],
                                                           calls["logbus via Composer Logger"]["wall_us"])
    evals: dict[int, dict[str, Any]] = {}
    for bench in report["benchmarks"]:
        info = bench["extra_info"]
        if "measure" in info or "variant" not in info:  # the sample pipeline's suite: summarised apart
            continue
        row = evals.setdefault(info["size"], {"size": info["size"], "images": info["images"], "seconds": {}})
        row["seconds"][info["variant"]] = _spread(bench)
    for _, row in sorted(evals.items()):
        _add_ratios(row)
        summary["eval"].append(row)
    summary["pipeline"] = pipeline_rows(report)
    return summary


def _add_ratios(row: dict[str, Any]) -> None:
    """Each variant of ``row["seconds"]`` against no sample logging: ``ratio`` (of medians),
    ``ratio_range`` ([min, max]) and ``within_noise`` per variant."""
    row.update(ratio={}, ratio_range={}, within_noise={})
    base = row["seconds"].get("no_sample_logging")
    if base is None:
        return
    for variant, seconds in row["seconds"].items():
        ratio = ratio_with_spread(seconds, base)
        row["ratio"][variant] = ratio["median"]
        row["ratio_range"][variant] = [ratio["min"], ratio["max"]]
        row["within_noise"][variant] = ratio["within_noise"]


def pipeline_rows(report: dict[str, Any]) -> list[dict[str, Any]]:
    """The sample pipeline's (a) loop stall and (b) end-to-end runs: median, min and max seconds per
    variant, and each variant's ratio to no sample logging with its range. A ratio is a finding only
    where the two spreads (min to max) do not overlap; otherwise ``within_noise`` says so. The
    training-process CPU per logged sample comes as its own row (µs, not seconds)."""
    rows: dict[tuple, dict[str, Any]] = {}
    for bench in report["benchmarks"]:
        info = bench["extra_info"]
        measure = info.get("measure")
        if measure is None:
            continue
        if measure == "cpu_us_per_sample":
            rows[(measure, info["variant"])] = {
                "measure": measure, "variant": info["variant"],
                "us_per_sample": {"median": info["cpu_us_per_sample_median"], "min": info["cpu_us_per_sample_min"],
                                  "max": info["cpu_us_per_sample_max"]}}
            continue
        key = (measure, info.get("task", "classification"), info["size"])
        row = rows.setdefault(key, {"measure": measure, "task": key[1], "size": info["size"], "images": info["images"],
                                    "seconds": {}})
        row["seconds"][info["variant"]] = _spread(bench)
    for row in rows.values():
        if "seconds" in row:
            _add_ratios(row)
    return list(rows.values())


def format_ratio(ratio: float, low: float, high: float, within_noise: bool) -> str:
    """``1.83x [1.40-2.30]``, with ``  (within noise)`` where the spreads overlap (ASCII, so that any
    font draws it, the chart's too)."""
    return f"{ratio:.2f}x [{low:.2f}-{high:.2f}]" + ("  (within noise)" if within_noise else "")


def _variant_lines(row: dict[str, Any]) -> list[str]:
    lines = []
    for variant, seconds in row["seconds"].items():
        note = ""
        if variant in row["ratio"] and variant != "no_sample_logging":
            low, high = row["ratio_range"][variant]
            note = format_ratio(row["ratio"][variant], low, high, row["within_noise"][variant])
        elif variant == "no_sample_logging":
            note = "1.00x (baseline)"
        lines.append(f"    {variant:<30} {seconds['median']:>6.2f} ({seconds['min']:.2f}-{seconds['max']:.2f})   {note}")
    return lines


def format_table(summary: dict[str, Any]) -> str:
    """The summary as text: every figure with its spread (median, min-max over the rounds), every ratio
    of medians with its range, marked where it is within noise."""
    m = summary["machine"]
    lines = [f"machine: {m.get('cpu')} ({m.get('cores')} CPUs), {m.get('system')}, python {m.get('python')}, "
             f"torch {m.get('torch')}, wandb {m.get('wandb')}, GPU {m.get('gpu') or 'none'}", "",
             "log_metrics, caller thread        wall µs/call (median, min-max)   thread-CPU µs/call"]
    for label, info in summary["log_metrics"].items():
        wall = info["wall_us"]
        lines.append(f"  {label:<32} {wall['median']:>8.2f} ({wall['min']:.2f}-{wall['max']:.2f})"
                     f"   {info['thread_cpu_us_per_call']:>12.2f}")
    if "wandb_log_vs_logbus" in summary:
        ratio = summary["wandb_log_vs_logbus"]
        lines.append("  wandb.log costs the training thread " + format_ratio(
            ratio["median"], ratio["min"], ratio["max"], ratio["within_noise"]) + " what logbus does")
    lines += ["", "eval, 2 passes + drain (median, min-max)  seconds          ratio to no sample logging [range]"]
    for row in summary["eval"]:
        lines.append(f"  {row['images']} images {row['size']}x{row['size']}")
        lines += _variant_lines(row)
    if summary.get("pipeline"):
        lines += ["", "sample pipeline (median, min-max)    seconds          ratio to no sample logging [range]"]
        for row in summary["pipeline"]:
            if row["measure"] == "cpu_us_per_sample":
                cost = row["us_per_sample"]
                lines.append(f"  training-process CPU per logged sample, {row['variant']}: {cost['median']:.1f} µs "
                             f"({cost['min']:.1f}-{cost['max']:.1f})")
                continue
            what = "(a) eval loop" if row["measure"] == "eval_loop" else f"(b) 2 evals + close, {row['measure'][11:]}"
            lines.append(f"  {what}, {row['task']}, {row['images']} images {row['size']}x{row['size']}")
            lines += _variant_lines(row)
    return "\n".join(lines)


def chart_bars(summary: dict[str, Any]) -> list[dict[str, Any]]:
    """One bar per ratio the chart draws (eval and sample pipeline, the baselines left out): its label,
    ratio, range and whether it is within noise."""
    bars = []
    rows = [(f"eval {row['size']}px", row) for row in summary["eval"]]
    for row in summary.get("pipeline", []):
        if "seconds" in row:
            what = "(a) loop" if row["measure"] == "eval_loop" else f"(b) end-to-end {row['measure'][11:]}"
            rows.append((f"{what} {row['size']}px", row))
    for prefix, row in rows:
        for variant, ratio in row["ratio"].items():
            if variant != "no_sample_logging":
                bars.append({"label": f"{prefix} {variant}", "ratio": ratio, "range": row["ratio_range"][variant],
                             "within_noise": row["within_noise"][variant]})
    return bars


def chart_font(size: int = CHART_FONT_PX) -> Any:
    """The chart's font: Pillow's built-in one at ``size`` px (see :data:`CHART_FONT_PX`)."""
    from PIL import ImageFont

    return ImageFont.load_default(size=size)


def plot(summary: dict[str, Any], path: str) -> str:
    """A bar chart of the ratios to no sample logging, drawn with Pillow (no plotting library needed):
    each bar with a whisker over its range, a line at 1.0, and bars within noise drawn pale and
    labelled so.

    :param summary: :func:`summarise`.
    :param path: the PNG file to write (its folder is created).
    """
    from PIL import Image, ImageDraw

    bars = chart_bars(summary)
    font = chart_font()
    width, row_height, left, right_margin = 1000, 30, 330, 250
    image = Image.new("RGB", (width, 80 + row_height * max(1, len(bars))), "white")
    draw = ImageDraw.Draw(image)
    draw.text((10, 10), "logbus bench: time relative to no sample logging (lower is better; whiskers: min-max range)",
              fill="black", font=font)
    top = max([bar["range"][1] for bar in bars] + [1.0])
    scale = (width - left - right_margin) / top
    colours = {"guide": (214, 96, 77), "sample_logger": (67, 147, 195), "sample_logger_jpeg": (33, 102, 172)}
    pale = (200, 200, 200)
    for index, bar in enumerate(bars):
        y = 45 + index * row_height
        colour = pale if bar["within_noise"] else next(
            (c for k, c in sorted(colours.items(), key=lambda item: -len(item[0])) if bar["label"].endswith(k)),
            (100, 100, 100))
        draw.text((10, y + 6), bar["label"], fill="black", font=font)
        draw.rectangle([left, y + 4, left + bar["ratio"] * scale, y + row_height - 6], fill=colour)
        low, high = (left + value * scale for value in bar["range"])
        middle = y + row_height // 2 - 1
        draw.line([low, middle, high, middle], fill="black", width=1)
        for end in (low, high):
            draw.line([end, y + 8, end, y + row_height - 10], fill="black", width=1)
        text = format_ratio(bar["ratio"], bar["range"][0], bar["range"][1], bar["within_noise"])
        draw.text((max(high, left + bar["ratio"] * scale) + 8, y + 6), text, fill="black", font=font)
    one = left + scale  # ratio 1.0: as fast as no sample logging
    draw.line([one, 40, one, image.height - 10], fill=(0, 0, 0), width=1)
    draw.text((one + 3, image.height - 24), "1.0", fill="black", font=font)
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    image.save(path)
    return path


def main(*, as_json: bool = False, plot_path: str | None = None, full: bool = False,
         verbose: bool = False) -> int:
    summary = summarise(run_suites(quick=not full, verbose=verbose))
    if plot_path:
        summary["plot"] = plot(summary, plot_path)
        summary["chart"] = chart_bars(summary)
    if as_json:
        print(json.dumps(summary, indent=2))
    else:
        print(format_table(summary))
        if plot_path:
            print(f"\nplot: {plot_path}")
    sys.stdout.flush()
    return 0
