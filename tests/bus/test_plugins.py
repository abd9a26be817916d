"""Third-party plugins as real installed distributions, no mocks.

Once per session the example package (``examples/logbus-example-plugin``) and four packages written
here (one whose module fails to import, one that registers the built-in name ``local``, one that looks
up a backend while it registers, one whose backend class lacks ``close``) are built into wheels and
installed with ``pip install --target`` into one folder each. Tests run ``logbus`` in
subprocesses with ``PYTHONPATH`` pointing at some of those folders, so ``importlib.metadata`` finds
their ``dist-info`` entry points while the project's venv stays clean.
"""

from __future__ import annotations

import importlib
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import logbus
from logbus.bus import _plugin_manager as plugin_manager

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE_SOURCE = ROOT / "examples" / "logbus-example-plugin"
EXAMPLE_DIST = "logbus-example-plugin"
BROKEN_DIST = "logbus-broken-plugin"
COLLIDING_DIST = "logbus-colliding-plugin"
REENTRANT_DIST = "logbus-reentrant-plugin"
INCOMPLETE_DIST = "logbus-incomplete-plugin"
BUILTINS = set(plugin_manager.DEFAULT_PLUGINS)  # wandb, local, ... : always loaded, whatever the env says
SECRET = "s3cret"

_PYPROJECT = """\
[build-system]
requires = ["setuptools>=61"]
build-backend = "setuptools.build_meta"

[project]
name = "{dist}"
version = "0.1.0"

[project.entry-points.logbus]
{entry_point} = "{module}"
"""

GENERATED = {
    # A plugin whose module cannot be imported: a dependency its author forgot to declare.
    BROKEN_DIST: ("broken", "logbus_broken_plugin", """\
        import logbus
        import logbus_broken_missing_dependency  # noqa: F401  (not installed anywhere)
    """),
    # A plugin that takes the built-in name ``local`` next to a name of its own. Registration is
    # all-or-nothing, so ``colliding-extra`` must not be registered either.
    COLLIDING_DIST: ("colliding", "logbus_colliding_plugin", """\
        import logbus


        class Backend:
            def log(self, record):
                raise AssertionError("the colliding backend must never be used")

            def close(self, finish):
                pass


        @logbus.hookimpl
        def register_backends(register):
            register("colliding-extra", Backend)
            register("local", Backend)
    """),
    # A plugin that looks up another backend while it registers: an error that names it, never a hang.
    REENTRANT_DIST: ("reentrant", "logbus_reentrant_plugin", """\
        import logbus
        from logbus.bus._plugin_manager import create_backend


        @logbus.hookimpl
        def register_backends(register):
            local = create_backend("local")
            register("wrapped-local", lambda: local)
    """),
    # A plugin whose backend class forgot ``close``: named in a warning when plugins load, not when
    # a run would first use it (or, worse, when the run closes).
    INCOMPLETE_DIST: ("incomplete", "logbus_incomplete_plugin", """\
        import logbus


        class HalfBackend:
            def log(self, record):
                pass


        @logbus.hookimpl
        def register_backends(register):
            register("half", HalfBackend)
    """),
}


def _check(command: list[str], **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run(command, check=False, capture_output=True, text=True, **kwargs)
    if result.returncode != 0:
        pytest.fail(f"{' '.join(map(str, command))} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result


@pytest.fixture(scope="session")
def sites(tmp_path_factory) -> dict[str, Path]:
    """Builds the plugin wheels once and installs each into its own ``--target`` folder."""
    root = tmp_path_factory.mktemp("plugins")
    sources = {EXAMPLE_DIST: root / "src" / "example"}
    # Build from a copy, so setuptools' build/ and *.egg-info never land in the source tree.
    shutil.copytree(EXAMPLE_SOURCE, sources[EXAMPLE_DIST],
                    ignore=shutil.ignore_patterns("build", "dist", "*.egg-info", "__pycache__"))
    for dist, (entry_point, module, code) in GENERATED.items():
        folder = root / "src" / module
        (folder / module).mkdir(parents=True)
        (folder / "pyproject.toml").write_text(_PYPROJECT.format(dist=dist, entry_point=entry_point, module=module))
        (folder / module / "__init__.py").write_text(textwrap.dedent(code))
        sources[dist] = folder
    pip_env = {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PIP_NO_INDEX": "1"}
    wheels = root / "wheels"
    _check([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(wheels),
            *map(str, sources.values())], env=pip_env)
    installed = {}
    for dist in sources:
        (wheel,) = wheels.glob(f"{dist.replace('-', '_')}-0.1.0-*.whl")
        installed[dist] = root / "site" / dist
        _check([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(installed[dist]),
                str(wheel)], env=pip_env)
    return installed


def _env(sites: dict[str, Path], dists, tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LOGBUS_", "WANDB_")) and k != "PYTHONPATH"}
    env.update(PYTHONPATH=os.pathsep.join(str(sites[d]) for d in dists), LOGBUS_DIR=str(tmp_path / "runs"),
               WANDB_MODE="disabled")
    env.update(extra)
    return env


def _logbus(*args: str, sites, dists, tmp_path, **extra_env) -> subprocess.CompletedProcess:
    script = Path(sys.executable).with_name("logbus")  # the installed console script, if there is one
    command = [str(script)] if script.exists() else [sys.executable, "-m", "logbus.cli"]
    return subprocess.run([*command, *args], check=False, capture_output=True, text=True, cwd=tmp_path, timeout=120,
                          env=_env(sites, dists, tmp_path, **extra_env))


def _python(code: str, *, sites, dists, tmp_path, **extra_env) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], check=False, capture_output=True, text=True,
                          cwd=tmp_path, timeout=120, env=_env(sites, dists, tmp_path, **extra_env))


def _listed(sites, dists, tmp_path, *flags, **extra_env) -> tuple[dict[str, dict], str]:
    result = _logbus("plugins", "--json", *flags, sites=sites, dists=dists, tmp_path=tmp_path, **extra_env)
    assert result.returncode == 0, result.stderr
    return {p["name"]: p for p in json.loads(result.stdout)}, result.stderr


def _loaded(plugins: dict[str, dict]) -> set[str]:
    return {name for name, p in plugins.items() if p["error"] is None}


# -- listing -------------------------------------------------------------------------------------


def test_example_plugin_is_listed_with_its_distribution(sites, tmp_path):
    plugins, stderr = _listed(sites, [EXAMPLE_DIST], tmp_path)
    assert "warning:" not in stderr
    assert plugins["example"] == {
        "name": "example", "module": "logbus_example_plugin", "distribution": EXAMPLE_DIST, "version": "0.1.0",
        "builtin": False, "hooks": ["register_backends", "register_extractors"],
        "registers": ["backend:jsonl-recorder", "extractor:regression"], "error": None, "status": "loaded",
    }
    assert set(plugins) == BUILTINS | {"example"}
    for name in BUILTINS:
        assert plugins[name]["builtin"] and plugins[name]["distribution"] == "logbus" and plugins[name]["registers"]
    assert {"backend:local", "backend:wandb"} <= {r for p in plugins.values() for r in p["registers"]}

    table = _logbus("plugins", sites=sites, dists=[EXAMPLE_DIST], tmp_path=tmp_path)
    assert table.returncode == 0, table.stderr
    header, *rows = table.stdout.splitlines()
    assert header.split() == ["name", "version", "distribution", "registers", "status"]
    assert ["example", "0.1.0", EXAMPLE_DIST, "backend:jsonl-recorder,", "extractor:regression", "loaded"] in [
        row.split() for row in rows]
    assert {row.split()[0] for row in rows} == BUILTINS | {"example"}


def test_broken_plugin_is_named_skipped_and_shown_with_all(sites, tmp_path):
    dists = [EXAMPLE_DIST, BROKEN_DIST]
    plugins, stderr = _listed(sites, dists, tmp_path, "--all")
    assert stderr.count("warning:") == 1
    assert "'broken'" in stderr and BROKEN_DIST in stderr and "logbus_broken_missing_dependency" in stderr
    broken = plugins["broken"]
    assert (broken["distribution"], broken["version"], broken["registers"]) == (BROKEN_DIST, "0.1.0", [])
    assert broken["status"] == "failed"
    assert broken["error"].startswith("ModuleNotFoundError") and "logbus_broken_missing_dependency" in broken["error"]
    assert _loaded(plugins) == BUILTINS | {"example"}  # the others still load

    table = _logbus("plugins", sites=sites, dists=dists, tmp_path=tmp_path)  # without --all: not listed
    assert table.returncode == 0 and "'broken'" in table.stderr
    assert {line.split()[0] for line in table.stdout.splitlines()[1:]} == BUILTINS | {"example"}


def test_strict_mode_fails_with_the_plugins_exception(sites, tmp_path):
    program = """\
        from logbus.bus import build_backends
        build_backends(["local"])
    """
    result = _python(program, sites=sites, dists=[EXAMPLE_DIST, BROKEN_DIST], tmp_path=tmp_path, LOGBUS_STRICT="1")
    assert result.returncode != 0
    last_line = result.stderr.strip().splitlines()[-1]
    assert last_line == "ModuleNotFoundError: No module named 'logbus_broken_missing_dependency'", result.stderr
    assert "logbus_broken_plugin" in result.stderr  # the traceback shows whose import failed
    # Without LOGBUS_STRICT a program warns and goes on: see test_example_backend_receives_every_record_in_order.


def test_name_collision_names_both_plugins_and_keeps_the_builtin(sites, tmp_path):
    plugins, stderr = _listed(sites, [EXAMPLE_DIST, COLLIDING_DIST], tmp_path, "--all")
    assert "backend 'local' from plugin 'colliding' is already registered by plugin 'logbus.plugins.local'" in stderr
    assert COLLIDING_DIST in stderr
    assert plugins["colliding"]["error"].startswith("ValueError") and plugins["colliding"]["registers"] == []
    assert _loaded(plugins) == BUILTINS | {"example"}
    registered = [name for p in plugins.values() for name in p["registers"]]
    assert "backend:jsonl-recorder" in registered and "backend:colliding-extra" not in registered  # all or nothing
    assert registered.count("backend:local") == 1

    result = _python("""\
        from logbus.bus import Bus
        from logbus.records import Metrics, RunStarted
        bus = Bus(["local"])
        print(type(bus.backends["local"]).__module__)
        bus.emit(RunStarted("collide"))
        bus.emit(Metrics({"loss": 0.5}, step=3))
        assert bus.close(timeout=30)
    """, sites=sites, dists=[EXAMPLE_DIST, COLLIDING_DIST], tmp_path=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "logbus.plugins.local._backend"
    metrics = [json.loads(line) for line in (tmp_path / "runs" / "collide" / "metrics.jsonl").read_text().splitlines()]
    assert [(m["step"], m["loss"]) for m in metrics] == [(3, 0.5)]


def test_plugin_looking_up_backends_while_loading_fails_instead_of_hanging(sites, tmp_path):
    plugins, stderr = _listed(sites, [REENTRANT_DIST], tmp_path, "--all")
    assert "'reentrant'" in stderr and "still loading" in stderr
    assert plugins["reentrant"]["error"].startswith("RuntimeError: logbus plugins are still loading")
    assert _loaded(plugins) == BUILTINS


def test_a_backend_class_missing_a_required_method_is_named_when_plugins_load(sites, tmp_path):
    plugins, stderr = _listed(sites, [EXAMPLE_DIST, INCOMPLETE_DIST], tmp_path, "--all")
    assert stderr.count("warning:") == 1
    assert "'incomplete'" in stderr and INCOMPLETE_DIST in stderr
    assert ("register('half'): expected a class with log() and close() (logbus.hookspecs.Backend), "
            "got HalfBackend, which lacks close()") in stderr
    incomplete = plugins["incomplete"]
    assert incomplete["status"] == "failed" and incomplete["registers"] == []
    assert incomplete["error"].startswith("TypeError: register('half')"), incomplete
    assert _loaded(plugins) == BUILTINS | {"example"}

    # LOGBUS_STRICT=1: the first lookup raises, as for any other plugin that fails to register.
    result = _python("""\
        from logbus.bus import build_backends
        build_backends(["local"])
    """, sites=sites, dists=[INCOMPLETE_DIST], tmp_path=tmp_path, LOGBUS_STRICT="1")
    assert result.returncode != 0
    assert result.stderr.strip().splitlines()[-1].startswith("TypeError: register('half')"), result.stderr
    assert "lacks close()" in result.stderr


# -- user controls -------------------------------------------------------------------------------


@pytest.mark.parametrize("env, loaded", [
    ({"LOGBUS_LOAD_PLUGINS": EXAMPLE_DIST}, {"example"}),
    ({"LOGBUS_LOAD_PLUGINS": "Logbus_Example.Plugin"}, {"example"}),  # names are normalised as in PEP 503
    ({"LOGBUS_LOAD_PLUGINS": f" nope , {EXAMPLE_DIST} "}, {"example"}),  # spaces around the commas
    ({"LOGBUS_LOAD_PLUGINS": ""}, set()),
    ({"LOGBUS_DISABLE_PLUGIN_AUTOLOAD": "1"}, set()),
    ({"LOGBUS_DISABLE_PLUGIN_AUTOLOAD": "1", "LOGBUS_LOAD_PLUGINS": EXAMPLE_DIST}, {"example"}),
    ({"LOGBUS_DISABLE_PLUGIN_AUTOLOAD": "false"}, None),  # like "0": autoload stays on
], ids=["allowlist", "allowlist-normalised", "allowlist-with-spaces", "empty-allowlist", "autoload-off",
        "autoload-off-with-allowlist", "autoload-false"])
def test_load_controls(sites, tmp_path, env, loaded):
    dists = [EXAMPLE_DIST, BROKEN_DIST]
    plugins, stderr = _listed(sites, dists, tmp_path, "--all", **env)
    if loaded is None:  # everything is tried: the broken one is imported and warned about
        assert _loaded(plugins) == BUILTINS | {"example"} and "'broken'" in stderr
        return
    assert "warning:" not in stderr  # the broken plugin was not even imported
    assert _loaded(plugins) == BUILTINS | loaded
    for name in {"example", "broken"} - loaded:
        assert plugins[name]["error"].startswith("not loaded"), plugins[name]
        assert plugins[name]["status"] == "disabled", plugins[name]
        assert plugins[name]["registers"] == [] and plugins[name]["hooks"] == []


# -- records reach the plugin --------------------------------------------------------------------


def test_example_backend_receives_every_record_in_order(sites, tmp_path):
    recorder, second = tmp_path / "recorder.jsonl", tmp_path / "second.jsonl"
    result = _python(f"""\
        from logbus import start_run
        backends = ["jsonl-recorder", ("jsonl-recorder", {{"path": {str(second)!r}}}), "local"]
        with start_run("t", backends=backends, config={{"lr": 0.1, "api_key": {SECRET!r}}}) as run:
            print(sorted(run.bus.backends))
            run.log_hyperparameters({{"batch_size": 8, "db": {{"password": {SECRET!r}}}}})
            run.log({{"loss": 1.0}}, step=1)
            run.log_table("tab", ["a"], [[1], [2]], step=2)
            run.log({{"loss": 0.5}}, step=3)
    """, sites=sites, dists=[EXAMPLE_DIST, BROKEN_DIST, COLLIDING_DIST], tmp_path=tmp_path,
        LOGBUS_EXAMPLE_RECORDER_PATH=str(recorder))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "['jsonl-recorder', 'jsonl-recorder-2', 'local']"
    # Installed next to a broken and a colliding plugin: both warned about, neither in the way.
    assert result.stderr.count("PluginWarning") == 2
    assert BROKEN_DIST in result.stderr and COLLIDING_DIST in result.stderr

    lines = [json.loads(line) for line in recorder.read_text().splitlines()]
    assert [line["type"] for line in lines] == ["RunStarted", "Hyperparameters", "Metrics", "Table", "Metrics",
                                                "RunFinished"]
    started, hparams, first, table, second_metrics, finished = lines
    assert started["run_name"] == "t" and started["config"] == {"lr": 0.1, "api_key": logbus.records.REDACTED}
    assert hparams["values"] == {"batch_size": 8, "db": {"password": logbus.records.REDACTED}}
    assert (first["step"], first["values"]) == (1, {"loss": 1.0})
    assert table == {"type": "Table", "key": "tab", "step": 2, "columns": ["a"], "rows": 2}
    assert (second_metrics["step"], second_metrics["values"]) == (3, {"loss": 0.5})
    assert finished["exit_code"] == 0
    assert second.read_text() == recorder.read_text()  # the path option, on a second instance

    run_dir = tmp_path / "runs" / "t"
    assert json.loads((run_dir / "run.json").read_text())["status"] == "finished"
    files = [path for path in (tmp_path / "runs").rglob("*") if path.is_file()]
    assert len(files) >= 4
    for path in [recorder, second, *files]:
        assert SECRET.encode() not in path.read_bytes(), path


def test_unknown_backend_lists_the_known_ones(sites, tmp_path):
    result = _python("""\
        from logbus import start_run
        try:
            start_run("t", backends=["jsonl-recorder", "nope"])
        except Exception as error:
            print(type(error).__name__)
            print(error)
    """, sites=sites, dists=[EXAMPLE_DIST], tmp_path=tmp_path, LOGBUS_EXAMPLE_RECORDER_PATH=str(tmp_path / "r"))
    assert result.returncode == 0, result.stderr
    kind, message = result.stdout.strip().splitlines()
    assert kind == "UnknownPluginError"
    prefix = "unknown backend 'nope'; known backends: "
    assert message.startswith(prefix), message
    known = message[len(prefix):].split(", ")
    assert known == sorted(known) and {"jsonl-recorder", "local", "wandb"} <= set(known)


# A script asking for the example plugin's backend, printing the error it gets.
ASK_FOR_THE_EXAMPLE_BACKEND = """\
    from logbus import start_run
    try:
        start_run("t", backends=["jsonl-recorder"])
    except Exception as error:
        print(error)
"""


def test_an_unknown_backend_names_the_skipped_plugins_and_why(sites, tmp_path):
    """The example plugin is installed but not allowlisted, the broken one is allowlisted but fails to
    import: asking for the example's backend says both, with the reason for each."""
    result = _python(ASK_FOR_THE_EXAMPLE_BACKEND, sites=sites, dists=[EXAMPLE_DIST, BROKEN_DIST], tmp_path=tmp_path,
                     LOGBUS_LOAD_PLUGINS=f"{BROKEN_DIST}, nope")
    assert result.returncode == 0, result.stderr
    message = result.stdout.strip()
    assert message.startswith("unknown backend 'jsonl-recorder'; known backends: "), message
    assert (f"'example' ({EXAMPLE_DIST} 0.1.0) not loaded: not named in LOGBUS_LOAD_PLUGINS="
            f"'{BROKEN_DIST}, nope'") in message
    assert (f"'broken' ({BROKEN_DIST} 0.1.0) ModuleNotFoundError: No module named "
            "'logbus_broken_missing_dependency'") in message

    result = _python(ASK_FOR_THE_EXAMPLE_BACKEND, sites=sites, dists=[EXAMPLE_DIST], tmp_path=tmp_path,
                     LOGBUS_DISABLE_PLUGIN_AUTOLOAD="1")
    assert result.returncode == 0, result.stderr
    assert (f"'example' ({EXAMPLE_DIST} 0.1.0) not loaded: LOGBUS_DISABLE_PLUGIN_AUTOLOAD is set and "
            "LOGBUS_LOAD_PLUGINS does not name it") in result.stdout


# -- lazy loading and reset ----------------------------------------------------------------------


def test_nothing_loads_at_import(sites, tmp_path):
    result = _python("""\
        import sys
        import logbus, logbus.bus
        from logbus.bus import _plugin_manager as plugin_manager
        assert plugin_manager._host is None, plugin_manager._host
        loaded = sorted(m for m in sys.modules if m.startswith(("logbus.plugins.", "logbus_")))
        assert not loaded, loaded
        plugin_manager.get_plugin_host()
        print(sorted(m for m in sys.modules if m.startswith("logbus_")))
    """, sites=sites, dists=[EXAMPLE_DIST, BROKEN_DIST, COLLIDING_DIST], tmp_path=tmp_path)
    assert result.returncode == 0, result.stderr
    # Only plugins that imported cleanly stay in sys.modules; nothing was imported before first use.
    assert result.stdout.strip() == "['logbus_colliding_plugin', 'logbus_example_plugin']"


class _InProcessPlugin:
    @logbus.hookimpl
    def register_backends(self, register):
        register("in-process", lambda: None, description="test")


def test_reset_plugins_makes_the_host_reload(sites, monkeypatch):
    for name in ("LOGBUS_STRICT", "LOGBUS_DISABLE_PLUGIN_AUTOLOAD"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("LOGBUS_LOAD_PLUGINS", "")
    plugin_manager.reset_plugins()
    try:
        host = plugin_manager.get_plugin_host()
        assert plugin_manager.get_plugin_host() is host
        assert "jsonl-recorder" not in host.registry["backend"]
        info = host.add_plugin(_InProcessPlugin(), name="in-process")
        assert info.registers == ["backend:in-process"] and info.hooks == ["register_backends"]

        monkeypatch.syspath_prepend(str(sites[EXAMPLE_DIST]))
        monkeypatch.setenv("LOGBUS_LOAD_PLUGINS", EXAMPLE_DIST)
        assert plugin_manager.get_plugin_host() is host  # cached until reset
        with pytest.raises(plugin_manager.UnknownPluginError, match="known backends: in-process, local") as error:
            plugin_manager.create_backend("jsonl-recorder")
        assert "jsonl-recorder" not in str(error.value).split("known backends: ")[1]

        plugin_manager.reset_plugins()
        fresh = plugin_manager.get_plugin_host()
        assert fresh is not host
        registration = fresh.get("backend", "jsonl-recorder")
        assert (registration.plugin, registration.distribution, registration.version) == (
            "example", EXAMPLE_DIST, "0.1.0")
        assert "in-process" not in fresh.registry["backend"]  # added plugins are forgotten too
        backend = plugin_manager.create_backend("jsonl-recorder", path="unused.jsonl")
        assert type(backend).__module__ == "logbus_example_plugin"
        assert backend.supports == frozenset({logbus.records.Table})
    finally:
        plugin_manager.reset_plugins()
        sys.modules.pop("logbus_example_plugin", None)


def test_example_plugin_needs_a_path(sites, monkeypatch):
    monkeypatch.syspath_prepend(str(sites[EXAMPLE_DIST]))
    monkeypatch.delenv("LOGBUS_EXAMPLE_RECORDER_PATH", raising=False)
    try:
        module = importlib.import_module("logbus_example_plugin")
        with pytest.raises(ValueError, match="LOGBUS_EXAMPLE_RECORDER_PATH"):
            module.JsonlRecorder()
    finally:
        sys.modules.pop("logbus_example_plugin", None)


def test_a_misspelled_hook_is_reported_not_silently_ignored():
    """A hookimpl that matches no hookspec (``register_backend``) fails the plugin, named in a warning."""
    import types
    import warnings

    import logbus
    from logbus.bus._plugin_manager import PluginHost, PluginWarning

    module = types.ModuleType("typo_plugin")

    @logbus.hookimpl
    def register_backend(register):  # the hook is register_backends
        register("never", object)

    module.register_backend = register_backend
    module.__file__ = "/site-packages/typo_plugin/__init__.py"
    host = PluginHost(load_entry_points=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert host.add_plugin(module) is None
    [warning] = [w for w in caught if issubclass(w.category, PluginWarning)]
    # Named by the plugin and the hook it meant, not by the module object's repr (a file path).
    assert host.skipped[-1].error == (
        "ValueError: plugin 'typo_plugin': expected hooks among register_backends, register_extractors, got "
        "'register_backend'; did you mean 'register_backends'?")
    assert host.skipped[-1].error in str(warning.message)
    assert "/site-packages/" not in str(warning.message) and "<module" not in str(warning.message)
    assert host.skipped[-1].status == "failed"


class _OptionsEcho:
    """A backend whose options are named like the plugin host's own parameters."""

    def __init__(self, name=None, kind=None, options=None):
        self.given = {"name": name, "kind": kind, "options": options}

    def log(self, record):
        pass

    def close(self, finish):
        pass


class _OptionsEchoPlugin:
    @logbus.hookimpl
    def register_backends(self, register):
        register("options-echo", _OptionsEcho, description="test")


def test_backend_options_named_name_or_kind_reach_the_factory(monkeypatch):
    from logbus.bus import Bus

    monkeypatch.setenv("LOGBUS_LOAD_PLUGINS", "")
    plugin_manager.get_plugin_host().add_plugin(_OptionsEchoPlugin(), name="options-echo")
    given = {"name": "run-7", "kind": "nightly", "options": {"a": 1}}
    assert plugin_manager.create_backend("options-echo", **given).given == given
    bus = Bus([("options-echo", given)])
    try:
        assert bus.backends["options-echo"].given == given
    finally:
        bus.close(timeout=10)


# -- the contracts (logbus.hookspecs.Backend, Extractor) -------------------------------------------


class _ExtractorWithoutHostStage:
    columns = ["id"]

    def check(self, inputs, targets, outputs):
        return inputs, targets, outputs

    def device_stage(self, inputs, targets, outputs):
        return {}


class _IncompletePlugin:
    """A complete backend next to an extractor class without ``host_stage``."""

    @logbus.hookimpl
    def register_backends(self, register):
        register("complete-backend", _OptionsEcho)

    @logbus.hookimpl
    def register_extractors(self, register):
        register("no-host-stage", _ExtractorWithoutHostStage)


def test_an_extractor_class_missing_a_method_fails_its_plugin_at_load_with_a_warning(monkeypatch):
    import warnings

    from logbus.bus._plugin_manager import PluginHost, PluginWarning

    monkeypatch.delenv("LOGBUS_STRICT", raising=False)
    host = PluginHost(load_entry_points=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert host.add_plugin(_IncompletePlugin(), name="incomplete-in-process") is None
    (warning,) = [w for w in caught if issubclass(w.category, PluginWarning)]
    assert "logbus plugin 'incomplete-in-process'" in str(warning.message)
    assert ("register('no-host-stage'): expected a class with columns, check(), device_stage() and host_stage() "
            "(logbus.hookspecs.Extractor), got _ExtractorWithoutHostStage, which lacks host_stage()"
            ) in str(warning.message)
    assert host.skipped[-1].status == "failed"
    assert "complete-backend" not in host.registry["backend"]  # all or nothing, as for collisions

    monkeypatch.setenv("LOGBUS_STRICT", "1")
    with pytest.raises(TypeError, match=r"lacks host_stage\(\)"):
        PluginHost(load_entry_points=False).add_plugin(_IncompletePlugin(), name="incomplete-in-process")


class _FunctionFactoryPlugin:
    @logbus.hookimpl
    def register_backends(self, register):
        register("made-by-a-function", lambda **options: _ExtractorWithoutHostStage())


def test_an_object_missing_required_members_fails_when_its_factory_returns_it(monkeypatch):
    from logbus.bus import Bus

    monkeypatch.setenv("LOGBUS_LOAD_PLUGINS", "")
    host = plugin_manager.get_plugin_host()
    # A function cannot be checked before it is called: it registers.
    assert host.add_plugin(_FunctionFactoryPlugin(), name="function-factory").registers == [
        "backend:made-by-a-function"]
    with pytest.raises(TypeError) as error:
        plugin_manager.create_backend("made-by-a-function")
    assert str(error.value) == (
        "backend 'made-by-a-function' from plugin 'function-factory': expected its factory to return an object "
        "with log() and close() (logbus.hookspecs.Backend), got _ExtractorWithoutHostStage, which lacks log(), "
        "close()")
    with pytest.raises(TypeError, match="from plugin 'function-factory'"):
        Bus(["local", "made-by-a-function"])  # on the caller's thread, before any writer thread starts


def _contract_problems(candidate: object, required: type, optional: type) -> list[str]:
    """What ``candidate`` gets wrong about its contract: missing required members, and methods
    (required, or optional ones it has) that cannot be called with the protocol's arguments."""
    import inspect

    from logbus.hookspecs import missing_members, protocol_members

    problems = missing_members(candidate, required)
    for protocol in (required, optional):
        for name, is_method in protocol_members(protocol).items():
            if not is_method or not callable(getattr(candidate, name, None)):
                continue
            arguments = list(inspect.signature(getattr(protocol, name)).parameters)[1:]
            try:
                inspect.signature(getattr(candidate, name)).bind(*arguments)
            except TypeError as error:
                problems.append(f"{name}{tuple(arguments)}: {error}")
    return problems


def test_every_builtin_backend_and_extractor_keeps_its_contract(sites, monkeypatch, tmp_path):
    """Built-ins, the testing kit's recorder and the example plugin, as objects their factories make
    (the factories are lazy: nothing starts before the first record)."""
    from logbus.hookspecs import Backend, BackendCapabilities, Extractor, ExtractorCapabilities
    from logbus.records import Artifact, Images, Record, Table
    from logbus.testing import RecordingBackend

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("LOGBUS_DIR", str(tmp_path / "runs"))
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("LOGBUS_EXAMPLE_RECORDER_PATH", str(tmp_path / "recorder.jsonl"))
    monkeypatch.setenv("LOGBUS_LOAD_PLUGINS", EXAMPLE_DIST)
    monkeypatch.syspath_prepend(str(sites[EXAMPLE_DIST]))
    try:
        host = plugin_manager.get_plugin_host()
        assert {"wandb", "local", "tensorboard", "jsonl-recorder"} <= set(host.registry["backend"])
        assert {"classification", "segmentation", "tokens", "regression"} <= set(host.registry["extractor"])
        backends = {name: host.create("backend", name) for name in host.registry["backend"]}
        backends["recording"] = RecordingBackend()
        for name, backend in backends.items():
            assert not _contract_problems(backend, Backend, BackendCapabilities), name
            # logbus's optional records, or a record type of the backend's own (wandb's UserLog).
            own = {t for t in getattr(backend, "supports", ()) if t.__module__ == type(backend).__module__}
            assert set(getattr(backend, "supports", ())) - own <= {Table, Images, Artifact}, name
            assert all(issubclass(t, Record) for t in own), name
        for name in host.registry["extractor"]:
            extractor = host.create("extractor", name)
            assert not _contract_problems(extractor, Extractor, ExtractorCapabilities), name
            assert all(isinstance(column, str) for column in extractor.columns), name
    finally:
        plugin_manager.reset_plugins()
        sys.modules.pop("logbus_example_plugin", None)
        sys.modules.pop("logbus_example_plugin.regression", None)
    assert not (tmp_path / "runs").exists()  # made, never started
