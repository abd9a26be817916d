"""Shared fixtures. Keep them generic: every test module may use them, and more will be added.

Without a CUDA device the Triton kernels run in Triton's interpreter: ``TRITON_INTERPRET=1`` is set
here, before any test module is imported (Triton reads it when ``@triton.jit`` decorates, and
``logbus.kernels``, Composer and the sample pipeline import triton), unless the environment already
says otherwise. ``tests/kernels/test_kernels.py`` fails, loudly, where the kernels still cannot be tested.

- ``fresh_plugins`` (autouse): each test starts and ends with an empty plugin host, so a plugin
  registered or an environment variable changed by one test never leaks into the next.
- ``logbus_dir``: ``LOGBUS_DIR`` points at an empty folder under ``tmp_path`` (the local backend's
  default root).
- ``wandb_offline``: W&B runs offline with every folder it writes to under ``tmp_path``; the returned
  folder is the W&B root (runs land in ``<folder>/wandb/offline-run-*``, read them back with
  ``tests/wandb_reader.py``).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch  # does not import triton

if "TRITON_INTERPRET" not in os.environ and not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"

from logbus.bus._plugin_manager import reset_plugins  # noqa: E402  (after TRITON_INTERPRET, as everything else)


@pytest.fixture(autouse=True)
def fresh_plugins():
    """Forgets loaded plugins before and after each test (``logbus.bus._plugin_manager.reset_plugins``)."""
    reset_plugins()
    yield
    reset_plugins()


@pytest.fixture
def logbus_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty folder set as ``LOGBUS_DIR``: local runs land in ``<folder>/<run name>``."""
    folder = tmp_path / "logbus_runs"
    folder.mkdir()
    monkeypatch.setenv("LOGBUS_DIR", str(folder))
    return folder


def _wandb_teardown() -> None:
    # wandb caches its settings (WANDB_DIR among them) in a process-wide singleton on first use; a
    # teardown makes the next wandb.init read the environment of the current test again.
    import wandb

    wandb.teardown()


@pytest.fixture
def wandb_offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, logbus_dir: Path) -> Path:
    """W&B in offline mode, silent, no console capture, every W&B folder under one fresh folder.

    Returns that folder (``WANDB_DIR``). Layout::

        <folder>/wandb/offline-run-*/   the runs (``wandb_reader.find_run_dirs(folder)``)
        <folder>/.data/artifacts/...    artifact and table staging copies (offline runs keep them)
        <folder>/.cache  .config  .artifacts
        <tmp_path>/logbus_runs/         LOGBUS_DIR (see ``logbus_dir``)

    Nothing is read from or written to the user's W&B settings, and the network is never used.
    """
    folder = tmp_path / "wandb_root"
    folder.mkdir()
    env = {
        "WANDB_MODE": "offline",
        "WANDB_DIR": folder,
        "WANDB_CACHE_DIR": folder / ".cache",
        "WANDB_CONFIG_DIR": folder / ".config",
        "WANDB_DATA_DIR": folder / ".data",
        "WANDB_ARTIFACT_DIR": folder / ".artifacts",
        "WANDB_SILENT": "true",
        "WANDB_CONSOLE": "off",
    }
    for name, value in env.items():
        monkeypatch.setenv(name, str(value))
    for name in ("WANDB_API_KEY", "WANDB_ENTITY", "WANDB_PROJECT", "WANDB_RUN_ID", "WANDB_RUN_GROUP", "WANDB_NAME",
                 "WANDB_NOTES", "WANDB_TAGS", "WANDB_RESUME", "WANDB_BASE_URL"):
        monkeypatch.delenv(name, raising=False)
    _wandb_teardown()
    yield folder
    _wandb_teardown()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    """A test that set ``item.screenshot_on_failure`` (a callable giving a path: the browser tests) gets a
    screenshot of what its page showed when it failed, and the failure says where the file is."""
    outcome = yield
    report = outcome.get_result()
    take = getattr(item, "screenshot_on_failure", None)
    if report.when == "call" and report.failed and take is not None:
        try:
            where = f"kept at {take()}"
        except Exception as error:  # the browser itself may be what failed
            where = f"could not be taken: {error}"
        report.sections.append(("screenshot of the page when the test failed", where))
