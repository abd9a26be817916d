"""The prepared GPU check scripts run, on the CPU, with tiny sizes (``--dry-run``), so that a session
lent a GPU spends its minutes measuring rather than fixing the scripts. No figure from a dry run is a
GPU figure: these tests check plumbing and read-back only."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def test_composer_check_dry_run_reads_every_row_back(tmp_path):
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true", "OUT": str(tmp_path)}
    done = subprocess.run([sys.executable, str(BENCHMARKS / "gpu_composer_check.py"), "--dry-run"], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=400)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    result = json.loads((tmp_path / "gpu_composer_cpu_dry_run.json").read_text())
    assert [(case["task"], case["errors"]) for case in result["cases"]] == [("classification", []),
                                                                            ("segmentation", [])]
    for case in result["cases"]:
        assert case["rows"]["wandb"] == case["rows"]["local"] == case["rows"]["expected"] == [16, 16]
        assert case["batches_dropped"] == 0
    # The script cleans up after itself: nothing but its JSON lands in the working directory.
    assert sorted(os.listdir(tmp_path)) == ["gpu_composer_cpu_dry_run.json"]
