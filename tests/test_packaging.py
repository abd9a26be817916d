"""The package as users get it: ``python -m build`` gives an sdist and, from it, a wheel that installs
alone into a fresh venv and runs ``logbus demo``; the wheel imports exactly as the editable install
does (the three source folders map into one ``logbus`` namespace, and the package data, digits,
the viewer's page and the PEP 561 ``py.typed`` marker, ships inside it); ``logbus.testing`` ships as
the pytest plugin it is; pytest-benchmark comes only with the ``bench`` extra."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: the same parser is the dev extra's tomli
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
# What the build reads: the project's metadata, its README (the long description) and the three source folders.
BUILD_INPUTS = ("pyproject.toml", "README.md", "core", "plugins", "kernels")


@pytest.fixture(scope="module")
def built_wheel(tmp_path_factory) -> Path:
    """``python -m build`` (sdist, then the wheel built from the unpacked sdist, so a file the sdist
    leaves out is missing from the wheel too) on a copy of what the build reads, so nothing is written
    into the checkout. ``--no-isolation``: the dev venv has the build requirements, and an isolated build
    would download setuptools."""
    folder = tmp_path_factory.mktemp("wheel")
    (folder / "src").mkdir()
    for name in BUILD_INPUTS:
        source = ROOT / name
        if source.is_dir():
            shutil.copytree(source, folder / "src" / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(source, folder / "src" / name)
    build = subprocess.run([sys.executable, "-m", "build", "--no-isolation", "--outdir", str(folder / "dist"),
                            str(folder / "src")], capture_output=True, text=True, env={**os.environ, "PIP_NO_INDEX": "1"})
    assert build.returncode == 0, build.stdout[-3000:] + build.stderr[-3000:]
    assert "deprecated" not in build.stderr.lower(), build.stderr[-3000:]  # e.g. a license table setuptools will refuse
    assert len(list((folder / "dist").glob("logbus-*.tar.gz"))) == 1
    return next((folder / "dist").glob("logbus-*.whl"))


@pytest.fixture(scope="module")
def installed_wheel(built_wheel, tmp_path_factory):
    folder = tmp_path_factory.mktemp("site")
    install = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "-q", "--target",
                              str(folder), str(built_wheel)], capture_output=True, text=True)
    assert install.returncode == 0, install.stdout + install.stderr
    return folder


def test_the_wheel_maps_core_plugins_and_kernels_into_logbus(installed_wheel, tmp_path):
    script = """
import importlib.resources, logbus, logbus.plugins.local, logbus.kernels, logbus.bench.report, logbus.composer
import logbus.bus, logbus.samples, logbus.files, logbus.demo
print(logbus.__file__)
print(logbus.plugins.local.__file__)
print(logbus.kernels.__file__)
print(importlib.resources.files("logbus.demo").joinpath("data/digits.csv.gz").is_file())
print(all(importlib.resources.files("logbus.plugins.local").joinpath("viewer", name).is_file()
          for name in ("index.html", "viewer.js", "viewer.css", "uPlot.iife.min.js", "uPlot.min.css", "uPlot.LICENSE")))
print(importlib.resources.files("logbus").joinpath("py.typed").is_file())
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path,
                            env={**os.environ, "PYTHONPATH": str(installed_wheel)})
    assert result.returncode == 0, result.stderr
    core, local, kernels, digits, template, typed = result.stdout.split()
    site = str(installed_wheel)
    assert core == os.path.join(site, "logbus", "__init__.py")  # the wheel, not the editable checkout
    assert local == os.path.join(site, "logbus", "plugins", "local", "__init__.py")
    assert kernels == os.path.join(site, "logbus", "kernels", "__init__.py")
    assert digits == "True" and template == "True"
    assert typed == "True"  # PEP 561: type checkers read logbus's annotations from the installed package


def test_the_editable_install_maps_the_same_way():
    import logbus
    import logbus.kernels
    import logbus.plugins.local

    # The strict editable install (Makefile) imports through links to the source files.
    assert Path(logbus.__file__).resolve().parent == ROOT / "core"
    assert Path(logbus.plugins.local.__file__).resolve().parent == ROOT / "plugins" / "local"
    assert Path(logbus.kernels.__file__).resolve().parent == ROOT / "kernels"
    assert (ROOT / "core" / "py.typed").is_file()  # declared as package data in pyproject.toml


def test_the_editable_install_is_a_folder_on_sys_path_that_tools_can_follow():
    """Type checkers and editors resolve ``logbus`` by looking through sys.path folders, not by running
    import hooks: the plain path finder must find it, and find our sources (setuptools' default
    editable mode for a package-dir mapping installs a finder hook instead, and they see nothing)."""
    import importlib.machinery

    spec = importlib.machinery.PathFinder.find_spec("logbus")
    assert spec is not None and spec.origin is not None, "reinstall with `make` (editable_mode=strict)"
    assert Path(spec.origin).resolve() == ROOT / "core" / "__init__.py"
    plugins = importlib.machinery.PathFinder.find_spec("logbus.plugins", spec.submodule_search_locations)
    assert plugins is not None and plugins.origin is not None
    assert Path(plugins.origin).resolve() == ROOT / "plugins" / "__init__.py"


def _dependencies_without_logbus(folder: Path) -> Path:
    """A folder of links to everything installed in this (the dev) venv except logbus itself: its
    editable install's ``.pth``, finder and ``dist-info`` are left out, so only a wheel can provide logbus."""
    folder.mkdir()
    for entry in Path(sysconfig.get_paths()["purelib"]).iterdir():
        name = entry.name.lower()
        if name.startswith(("logbus-", "logbus.", "__editable__.logbus", "__editable___logbus")) or name == "logbus":
            continue
        (folder / entry.name).symlink_to(entry)
    return folder


def test_the_wheel_installs_alone_into_a_fresh_venv_and_runs_the_demo(built_wheel, tmp_path):
    """A fresh venv, and pip installing the wheel with its dependencies resolved (not ``--no-deps``)
    and no index: every dependency the wheel's metadata names must already be satisfied, or pip fails
    ("no matching distribution"), and logbus itself can only come from the wheel.

    The dependencies are the dev venv's packages, seen through one ``site.addsitedir`` line in the
    fresh venv (a ``.pth`` file) pointing at links to them, logbus's editable install left out:
    downloading torch (several GB) for each test run is not possible offline nor affordable in CI, and
    a venv with ``--system-site-packages`` would see the base interpreter's packages, not the dev
    venv's. So this proves that the wheel is complete (code, data, entry points, metadata whose
    requirements the tested versions satisfy) and runs from its own files, not that pip can download
    the dependencies from PyPI."""
    venv = tmp_path / "venv"
    created = subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], capture_output=True, text=True)
    assert created.returncode == 0, created.stderr
    python = venv / "bin" / "python"
    site_packages = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                        capture_output=True, text=True, check=True).stdout.strip())
    deps = _dependencies_without_logbus(tmp_path / "deps")
    (site_packages / "dev_venv_dependencies.pth").write_text(f"import site; site.addsitedir({str(deps)!r})\n")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "LOGBUS_DIR", "VIRTUAL_ENV")}
    env.update(PIP_NO_INDEX="1", WANDB_MODE="offline", WANDB_SILENT="true")
    before = subprocess.run([str(python), "-c", "import logbus"], capture_output=True, text=True, env=env)
    assert before.returncode != 0, "logbus is importable before the wheel is installed: the venv is not fresh"

    install = subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-index", "-q",
                              str(built_wheel)], capture_output=True, text=True, env=env)
    assert install.returncode == 0, install.stdout[-3000:] + install.stderr[-3000:]

    logbus = venv / "bin" / "logbus"  # the console script the wheel declares
    version = subprocess.run([str(logbus), "--version"], capture_output=True, text=True, env=env)
    assert version.returncode == 0 and version.stdout.strip() == f"logbus {PYPROJECT['project']['version']}", version
    where = subprocess.run([str(python), "-c", "import logbus; print(logbus.__file__)"], capture_output=True, text=True,
                           env=env, cwd=tmp_path)
    assert where.stdout.strip() == str(site_packages / "logbus" / "__init__.py"), where

    work = tmp_path / "work"
    work.mkdir()
    demo = subprocess.run([str(logbus), "demo", "--epochs", "1", "--backends", "local"], capture_output=True, text=True,
                          env=env, cwd=work, timeout=300)
    assert demo.returncode == 0, demo.stdout[-3000:] + demo.stderr[-3000:]
    runs = [path for path in (work / "logbus_runs").iterdir() if path.is_dir()]
    assert len(runs) == 1 and any(runs[0].iterdir()), runs

    # The plugin-author kit is autoloaded by pytest from the wheel's entry point, its fixtures ready.
    (work / "test_kit.py").write_text(
        "import logbus.testing\n\n"
        "def test_kit(request, logbus_run, recording_backend):\n"
        "    assert request.config.pluginmanager.has_plugin('logbus.testing')\n"
        f"    assert logbus.testing.__file__ == {str(site_packages / 'logbus' / 'testing.py')!r}\n"
        "    with logbus_run() as run:\n"
        "        run.log({'loss': 0.5}, step=0)\n"
        "    assert recording_backend.metrics('loss')\n")
    kit = subprocess.run([str(python), "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_kit.py"], capture_output=True,
                         text=True, env=env, cwd=work, timeout=300)
    assert kit.returncode == 0, kit.stdout[-3000:] + kit.stderr[-3000:]


def test_the_wheel_declares_the_pytest_plugin_the_command_and_the_bench_extra(built_wheel):
    with zipfile.ZipFile(built_wheel) as wheel:
        info = next(name.split("/")[0] for name in wheel.namelist() if name.endswith(".dist-info/METADATA"))
        entry_points = wheel.read(f"{info}/entry_points.txt").decode()
        metadata = wheel.read(f"{info}/METADATA").decode()
    assert "[pytest11]\nlogbus.testing = logbus.testing\n" in entry_points
    assert "[console_scripts]\nlogbus = logbus.cli:main\n" in entry_points
    requires = [line.split(":", 1)[1].strip() for line in metadata.splitlines() if line.startswith("Requires-Dist:")]
    assert "Provides-Extra: bench" in metadata.splitlines()
    benchmark = [line for line in requires if line.startswith("pytest-benchmark")]
    assert 'pytest-benchmark>=4; extra == "bench"' in benchmark, benchmark
    assert all("; extra ==" in line for line in benchmark), benchmark  # never a plain dependency
    assert not [line for line in requires if line.startswith("pytest") and "extra ==" not in line], requires
