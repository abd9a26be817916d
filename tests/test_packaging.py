"""A built wheel imports exactly as the editable install does: the three source folders map into one
``logbus`` namespace, and the package data (digits, the viewer's page, the PEP 561 ``py.typed``
marker) ships inside it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def installed_wheel(tmp_path_factory):
    folder = tmp_path_factory.mktemp("wheel")
    env = {**os.environ, "PIP_NO_INDEX": "1"}
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                            "-w", str(folder / "dist"), str(ROOT)], capture_output=True, text=True, env=env)
    assert build.returncode == 0, build.stdout + build.stderr
    wheel = next((folder / "dist").glob("logbus-*.whl"))
    install = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target",
                              str(folder / "site"), str(wheel)], capture_output=True, text=True, env=env)
    assert install.returncode == 0, install.stdout + install.stderr
    return folder / "site"


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
