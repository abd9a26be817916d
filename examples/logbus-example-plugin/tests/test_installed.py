"""Once installed (``pip install -e .``), ``logbus plugins`` lists this package and what it registers."""

from __future__ import annotations

import importlib.metadata
import json
import os
import subprocess
import sys

import pytest

DISTRIBUTION = "logbus-example-plugin"


def test_logbus_plugins_lists_the_installed_distribution(tmp_path):
    try:
        version = importlib.metadata.version(DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        pytest.skip(f"{DISTRIBUTION} is not installed: run `pip install -e .` in its folder first")
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOGBUS_")}  # default plugin loading
    if env.get("PYTHONPATH"):  # the command runs in another folder: relative entries would point elsewhere
        env["PYTHONPATH"] = os.pathsep.join(os.path.abspath(p) for p in env["PYTHONPATH"].split(os.pathsep) if p)
    result = subprocess.run([sys.executable, "-m", "logbus.cli", "plugins", "--json"], capture_output=True, text=True,
                            env=env, cwd=tmp_path, timeout=120)
    assert result.returncode == 0, result.stderr
    plugins = {plugin["name"]: plugin for plugin in json.loads(result.stdout)}
    example = plugins["example"]
    assert (example["distribution"], example["version"], example["status"]) == (DISTRIBUTION, version, "loaded")
    assert example["registers"] == ["backend:jsonl-recorder", "extractor:regression"]
