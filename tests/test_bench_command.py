"""``logbus bench`` runs the real suites (quick sizes) and reports ratios measured in that one run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image


@pytest.mark.timeout(700)
def test_logbus_bench_reports_ratios_as_json_and_a_plot(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "LOGBUS_DIR"}
    env.update(WANDB_MODE="offline", WANDB_SILENT="true")
    result = subprocess.run([str(Path(sys.executable).with_name("logbus")), "bench", "--json"],
                            capture_output=True, text=True, cwd=tmp_path, env=env, timeout=680)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads(result.stdout)
    assert summary["machine"]["cpus"] == os.cpu_count()
    calls = summary["log_metrics"]
    assert set(calls) == {"logbus via Composer Logger", "wandb.log", "queue.Queue.put"}
    assert summary["wandb_log_vs_logbus"] == pytest.approx(
        calls["wandb.log"]["wall_us_per_call"] / calls["logbus via Composer Logger"]["wall_us_per_call"])
    sizes = {row["size"]: row for row in summary["eval"]}
    assert set(sizes) == {32, 224}
    for row in sizes.values():
        assert set(row["seconds"]) == {"no_sample_logging", "guide", "sample_logger", "sample_logger_jpeg"}
        assert row["ratio"]["no_sample_logging"] == 1.0
        for variant, seconds in row["seconds"].items():
            assert row["ratio"][variant] == pytest.approx(seconds / row["seconds"]["no_sample_logging"])
    # The sample pipeline's promise, (a) and (b) with the local backend, each with its spread; and the
    # training process's CPU per logged sample.
    pipeline = {(row["measure"], row.get("size")): row for row in summary["pipeline"]}
    assert set(pipeline) == {("eval_loop", 32), ("end_to_end_local", 32), ("cpu_us_per_sample", None)}
    for measure in ("eval_loop", "end_to_end_local"):
        row = pipeline[(measure, 32)]
        assert row["task"] == "classification" and set(row["seconds"]) == {"no_sample_logging", "sample_logger"}
        assert row["ratio"]["no_sample_logging"] == 1.0
        for variant, seconds in row["seconds"].items():
            assert seconds["rounds"] >= 3 and seconds["min"] <= seconds["median"] <= seconds["max"]
            assert row["ratio"][variant] == pytest.approx(seconds["median"] / row["seconds"]["no_sample_logging"]["median"])
            assert isinstance(row["within_noise"][variant], bool)
    assert pipeline[("cpu_us_per_sample", None)]["us_per_sample"]["median"] > 0
    # The chart goes where `logbus bench --help` says (./logbus_runs by default), and the runs it measured
    # into the command's scratch folder: nothing else lands in the current folder.
    plot = tmp_path / "logbus_runs" / "logbus-bench.png"
    assert summary["plot"] == os.path.join("logbus_runs", "logbus-bench.png")
    with Image.open(plot) as image:
        assert image.width > 500 and len(image.getcolors(1 << 16) or []) > 3  # bars drawn, not blank
    assert sorted(str(path.relative_to(tmp_path)) for path in tmp_path.rglob("*")) == [
        "logbus_runs", os.path.join("logbus_runs", "logbus-bench.png")]
