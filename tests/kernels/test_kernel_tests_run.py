"""Plain ``pytest`` (the docs' "Development") tests the Triton kernels, and a run that cannot test
them fails saying why rather than passing with them skipped.

Each case is a pytest run in a subprocess, as a developer would start it, selecting one kernel test
(``-k``) so that it takes seconds.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
ONE_KERNEL_TEST = "test_images_special_values_and_half_up and triton"


def pytest_run(*args: str, **env: str) -> subprocess.CompletedProcess:
    environment = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    environment.update(env)
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", *args],
                          cwd=ROOT, env=environment, capture_output=True, text=True, timeout=300)


@pytest.mark.timeout(320)
def test_plain_pytest_runs_the_kernel_tests_after_modules_that_import_the_kernels():
    # test_bad_input.py imports logbus.kernels (through the sample pipeline) before test_kernels.py is
    # collected: too late for test_kernels.py to ask for the interpreter itself.
    result = pytest_run("tests/guarantees/test_bad_input.py", "tests/kernels/test_kernels.py", "-k", ONE_KERNEL_TEST)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    summary = result.stdout.strip().splitlines()[-1]
    assert "1 passed" in summary and "skipped" not in summary, result.stdout[-3000:]


@pytest.mark.skipif(torch.cuda.is_available(), reason="the case is a machine without CUDA, where kernels need the interpreter")
@pytest.mark.timeout(320)
def test_a_run_that_cannot_test_the_kernels_fails_saying_why():
    result = pytest_run("tests/kernels/test_kernels.py", "-k", ONE_KERNEL_TEST, TRITON_INTERPRET="0")
    assert result.returncode == 1, result.stdout[-3000:] + result.stderr[-3000:]
    summary = result.stdout.strip().splitlines()[-1]
    assert "1 error" in summary and "skipped" not in summary, result.stdout[-3000:]  # failed at its setup
    assert "the Triton kernels cannot be tested: no CUDA device" in result.stdout
    assert "TRITON_INTERPRET='0'" in result.stdout
