"""The oldest wandb that ``pyproject.toml`` allows runs the ``wandb`` backend, and the release before it
does not (it lacks ``wandb.init(reinit="create_new")``), so the floor is exactly what the code needs.

Each wandb is installed for the test with pip from the package index, with the dependencies it asks
for (current protobuf is too new for it), into a folder of its own (about 40 MB, cached by pip) that
goes ahead of the project's packages on ``PYTHONPATH``, so the project's venv stays as it is. The run
it writes offline is read back with the project's (current) ``wandb leet inspect``.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from wandb_reader import find_run_dirs, read_wandb_run

ROOT = Path(__file__).resolve().parents[2]
FLOOR = re.search(r'"wandb>=([0-9.]+)"', (ROOT / "pyproject.toml").read_text()).group(1)
BELOW_FLOOR = "0.19.9"  # the last release without reinit="create_new" (read from its wandb_settings.py)

PROGRAM = """\
import json, numpy, wandb, logbus
from logbus.records import Image

with logbus.start_run("floor", backends=[("wandb", {"project": "logbus-floor"})], config={"lr": 0.1}) as run:
    run.log({"loss": 0.5}, step=1)
    run.log_table("samples/val", ["id", "image"], [[7, Image(pixels=numpy.full((8, 8, 3), 200, numpy.uint8))]], step=2)
    run.log({"loss": 0.25}, step=3)
print(json.dumps({"version": wandb.__version__, "wandb": run.bus.stats()["backends"]["wandb"]}))
"""


def run_with_wandb(version: str, tmp_path: Path) -> tuple[dict, Path]:
    site = tmp_path / "site"
    install = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--disable-pip-version-check",
                              "--only-binary=:all:", "--target", str(site), f"wandb=={version}"],
                             capture_output=True, text=True, timeout=240)
    if install.returncode != 0 and re.search(r"(?i)connection|network|resolve|No matching distribution", install.stderr):
        pytest.skip(f"cannot download wandb=={version} from the package index: {install.stderr.strip().splitlines()[-1]}")
    assert install.returncode == 0, install.stderr
    wandb_dir = tmp_path / "wandb_root"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WANDB_", "LOGBUS_"))}
    env.update(PYTHONPATH=str(site), WANDB_MODE="offline", WANDB_SILENT="true", WANDB_CONSOLE="off",
               WANDB_DIR=str(wandb_dir), WANDB_CACHE_DIR=str(wandb_dir / ".cache"),
               WANDB_CONFIG_DIR=str(wandb_dir / ".config"), WANDB_DATA_DIR=str(wandb_dir / ".data"),
               WANDB_ARTIFACT_DIR=str(wandb_dir / ".artifacts"), LOGBUS_DIR=str(tmp_path / "runs"))
    wandb_dir.mkdir()
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(PROGRAM)], capture_output=True, text=True,
                            cwd=tmp_path, env=env, timeout=240)
    assert result.returncode == 0, result.stderr[-4000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["version"] == version  # the installed one, not the project's
    report["stderr"] = result.stderr
    return report, wandb_dir


@pytest.mark.timeout(600)
def test_the_oldest_wandb_pyproject_allows_logs_a_run_that_reads_back(tmp_path):
    report, wandb_dir = run_with_wandb(FLOOR, tmp_path)
    assert report["wandb"]["failures"] == 0 and report["wandb"]["error"] is None, report
    (run_dir,) = find_run_dirs(wandb_dir)
    run = read_wandb_run(run_dir)
    assert run.metric("loss") == [(1, 0.5), (3, 0.25)]
    assert run.config["lr"] == 0.1 and run.exit_code == 0
    ((step, columns, rows),) = run.tables("samples/val")
    assert (step, columns, [row[0] for row in rows]) == (2, ["id", "image"], [7])


@pytest.mark.timeout(600)
def test_the_release_below_the_floor_cannot_start_the_backend(tmp_path):
    report, wandb_dir = run_with_wandb(BELOW_FLOOR, tmp_path)
    assert report["wandb"]["failures"] >= 1 and "reinit" in report["wandb"]["error"], report
    assert find_run_dirs(wandb_dir) == []
