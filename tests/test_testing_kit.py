"""``logbus.testing``, the pytest plugin for plugin authors: its fixtures, and how pytest loads it.

Fixture behaviour that only shows between tests (teardown) or at pytest startup (autoload, a
conftest's ``pytest_plugins``) is checked in inner pytest sessions run by ``pytester``.
"""

from __future__ import annotations

import importlib.metadata
import io
import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from composer import Callback
from PIL import Image as PILImage

import logbus
import logbus.testing
from logbus.bus import _plugin_manager as plugin_manager
from logbus.composer import LogBusLogger, SampleLogger
from logbus.records import REDACTED

pytest_plugins = ["pytester"]

FIXTURES = {"recording_backend", "register_plugin", "logbus_run", "tiny_composer_run"}  # the plugin guide's table: test_docs.py
LOSS = "loss/train/total"


# -- how pytest finds it ---------------------------------------------------------------------------


def test_importing_the_kit_imports_nothing_heavy():
    # pytest imports autoloaded plugins in every run of every project that has logbus installed, and
    # before any conftest: triton imported here would be compiled, not interpreted, in logbus's own tests.
    code = """\
        import sys
        import logbus.testing
        from logbus.bus import _plugin_manager as plugin_manager
        heavy = ("torch", "triton", "composer", "wandb", "numpy", "PIL", "logbus.plugins", "logbus.records")
        print(sorted(m for m in sys.modules if m.startswith(heavy)), plugin_manager._host)
    """
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[] None"


def test_the_kit_is_a_pytest11_entry_point_named_as_its_module():
    # Same name as the module: a conftest's `pytest_plugins = ["logbus.testing"]` then finds it loaded
    # (a second registration under another name would be an error), and `-p no:logbus.testing` works.
    entry_points = [ep for ep in importlib.metadata.distribution("logbus").entry_points if ep.group == "pytest11"]
    assert [(ep.name, ep.value) for ep in entry_points] == [("logbus.testing", "logbus.testing")], (
        "reinstall logbus (pip install -e .) so that its entry points are current")


def test_every_fixture_is_listed_with_its_docstring(pytester):
    pytester.makepyfile("def test_nothing(): pass")
    result = pytester.runpytest("--fixtures", "-p", "no:cacheprovider")
    output = result.stdout.str()
    section = output.split("fixtures defined from logbus.testing")[1].split("\n---")[0].split("\n==")[0]
    listed = {line.split(" -- ")[0].strip() for line in section.splitlines() if " -- " in line}
    assert listed == FIXTURES
    assert {name for name in logbus.testing.__all__ if not isinstance(getattr(logbus.testing, name), type)} == FIXTURES
    assert "no docstring available" not in section


@pytest.mark.parametrize("autoload", [True, False], ids=["autoload", "pytest_plugins-only"])
def test_a_conftest_can_ask_for_the_kit_by_name(pytester, monkeypatch, autoload):
    if not autoload:
        monkeypatch.setenv("PYTEST_DISABLE_PLUGIN_AUTOLOAD", "1")
    pytester.makeconftest('pytest_plugins = ["logbus.testing"]')
    pytester.makepyfile("""\
        def test_run(logbus_run, recording_backend):
            with logbus_run() as run:
                run.log({"loss": 1.0}, step=3)
            assert recording_backend.metrics("loss") == [(3, 1.0)]
    """)
    pytester.runpytest("-p", "no:cacheprovider").assert_outcomes(passed=1)


def test_it_can_be_turned_off(pytester):
    pytester.makepyfile("def test_uses_it(recording_backend): pass")
    result = pytester.runpytest("-p", "no:logbus.testing", "-p", "no:cacheprovider")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*fixture 'recording_backend' not found*"])


# -- recording_backend and logbus_run ----------------------------------------------------------------


def test_the_recording_backend_keeps_every_record_of_a_run(logbus_run, recording_backend, tmp_path):
    checkpoint = tmp_path / "model.pt"
    checkpoint.write_bytes(b"weights")
    with logbus_run("kit", config={"lr": 0.1, "api_key": "s3cret"}) as run:
        run.log_hyperparameters({"batch_size": 8})
        run.log({"loss": 1.0, "lr": 0.1}, step=0)
        run.log({"loss": torch.tensor(0.5)}, step=1)
        run.log_table("predictions", ["id", "label"], [[0, "cat"], [1, "dog"]], step=1)
        run.log_images("inputs", np.zeros((2, 4, 4, 3), dtype=np.uint8), step=1, channels_last=True)
        run.log_artifact(str(checkpoint), "model.pt", type="model")
        assert recording_backend.finished is None  # still running
    assert recording_backend.types() == ["RunStarted", "Hyperparameters", "Metrics", "Metrics", "Table", "Images",
                                         "Artifact"]
    assert recording_backend.started.run_name == "kit"
    assert recording_backend.started.config == {"lr": 0.1, "api_key": REDACTED}
    assert recording_backend.hyperparameters() == {"batch_size": 8}
    assert recording_backend.metrics() == [(0, {"loss": 1.0, "lr": 0.1}), (1, {"loss": 0.5})]
    assert recording_backend.metrics("loss") == [(0, 1.0), (1, 0.5)]  # tensors read as floats
    assert recording_backend.rows("predictions") == [{"id": 0, "label": "cat"}, {"id": 1, "label": "dog"}]
    assert [len(images.images) for images in recording_backend.images("inputs")] == [2]
    (artifact,) = recording_backend.artifacts()
    assert (artifact.name, artifact.type, recording_backend.file_bytes(artifact.path)) == ("model.pt", "model", b"weights")
    assert recording_backend.finished.exit_code == 0
    with pytest.raises(KeyError, match="no table 'missing' was logged; tables: \\['predictions'\\]"):
        recording_backend.rows("missing")


def test_sample_images_stay_readable_after_the_run_deleted_them(logbus_run, recording_backend):
    images = torch.rand(3, 3, 8, 8)
    with logbus_run(backends=[]) as run:
        samples = run.samples("classification", num_samples=None)
        samples.add(images, torch.tensor([0, 1, 2]), torch.eye(3) * 5)
        samples.log(step=4)
    rows = recording_backend.rows("samples/eval")
    assert [(row["truth"], row["prediction"]) for row in rows] == [(0, 0), (1, 1), (2, 2)]
    for row, image in zip(rows, images):
        with PILImage.open(io.BytesIO(recording_backend.file_bytes(row["image"]))) as decoded:
            pixels = np.asarray(decoded)
        expected = (image.permute(1, 2, 0) * 255).round().to(torch.uint8).numpy()
        assert np.abs(pixels.astype(int) - expected).max() <= 1


def test_logbus_run_sends_the_same_records_to_other_backends(logbus_run, recording_backend, logbus_dir):
    run = logbus_run("with-local", backends=["local"], config={"seed": 1})
    run.log({"loss": 2.0}, step=5)
    assert run.finish()
    local = logbus_dir / "with-local" / "metrics.jsonl"
    assert [(line["step"], line["loss"]) for line in map(json.loads, local.read_text().splitlines())] == [(5, 2.0)]
    assert recording_backend.metrics("loss") == [(5, 2.0)]
    assert sorted(run.bus.backends) == ["local", "recording"]


def test_teardown_finishes_open_runs_and_resets_the_plugin_host(pytester):
    pytester.makepyfile("""\
        import logbus
        from logbus.bus import _plugin_manager as plugin_manager

        seen = {}

        class Plugin:
            @logbus.hookimpl
            def register_backends(self, register):
                register("kit-probe", lambda: None)

        def test_1_leaves_things_open(register_plugin, logbus_run, recording_backend):
            register_plugin(Plugin(), name="kit-probe-plugin")
            assert "kit-probe" in plugin_manager.get_plugin_host().registry["backend"]
            logbus_run().log({"loss": 1.0}, step=0)  # never finished by the test
            seen["recorder"] = recording_backend

        def test_2_after_teardown():
            assert seen["recorder"].finished.exit_code == 0
            assert seen["recorder"].metrics("loss") == [(0, 1.0)]
            assert plugin_manager._host is None  # reset: the next lookup loads the installed plugins
            assert "kit-probe" not in plugin_manager.get_plugin_host().registry["backend"]
    """)
    pytester.runpytest("-p", "no:cacheprovider").assert_outcomes(passed=2)


# -- register_plugin -------------------------------------------------------------------------------


class PrintlessBackend:
    def __init__(self, prefix: str = "x"):
        self.prefix, self.seen = prefix, []

    def log(self, record):
        self.seen.append(record)

    def close(self, finish):
        pass


class AnInProcessPlugin:
    @logbus.hookimpl
    def register_backends(self, register):
        register("in-process", PrintlessBackend, description="kit test")


def test_a_registered_plugins_backend_is_usable_by_name(register_plugin, logbus_run, recording_backend):
    info = register_plugin(AnInProcessPlugin(), name="in-process-plugin")
    assert (info.name, info.hooks, info.registers) == ("in-process-plugin", ["register_backends"], ["backend:in-process"])
    with logbus_run(backends=[("in-process", {"prefix": "y"})]) as run:
        run.log({"loss": 1.0}, step=0)
    backend = run.bus.backends["in-process"]
    assert backend.prefix == "y" and [type(r).__name__ for r in backend.seen] == recording_backend.types()


def test_a_plugin_that_fails_to_register_raises_its_own_error(register_plugin):
    class TakesABuiltinName:
        @logbus.hookimpl
        def register_backends(self, register):
            register("local", PrintlessBackend)

    with pytest.raises(ValueError, match="backend 'local' from plugin 'taker' is already registered by plugin "
                                         "'logbus.plugins.local'"):
        register_plugin(TakesABuiltinName(), name="taker")


@pytest.fixture
def installed_probe(tmp_path, monkeypatch):
    """A third-party distribution ``logbus-kit-probe`` that is "installed": its dist-info, entry
    point and module are on ``sys.path``, where ``importlib.metadata`` looks."""
    site = tmp_path / "site"
    (site / "logbus_kit_probe-0.1.dist-info").mkdir(parents=True)
    (site / "logbus_kit_probe-0.1.dist-info" / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: logbus-kit-probe\nVersion: 0.1\n")
    (site / "logbus_kit_probe-0.1.dist-info" / "entry_points.txt").write_text("[logbus]\nprobe = logbus_kit_probe\n")
    (site / "logbus_kit_probe.py").write_text(textwrap.dedent("""\
        import logbus

        class Backend:
            def log(self, record):
                pass

            def close(self, finish):
                pass

        @logbus.hookimpl
        def register_backends(register):
            register("probe", Backend)
    """))
    for name in ("LOGBUS_LOAD_PLUGINS", "LOGBUS_DISABLE_PLUGIN_AUTOLOAD", "LOGBUS_STRICT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.syspath_prepend(str(site))
    yield
    sys.modules.pop("logbus_kit_probe", None)


def test_installed_plugins_are_left_out_while_you_test_yours(installed_probe, register_plugin):
    assert plugin_manager.get_plugin_host().get("backend", "probe").distribution == "logbus-kit-probe"  # installed
    register_plugin(AnInProcessPlugin())
    host = plugin_manager.get_plugin_host()
    assert "probe" not in host.registry["backend"] and "in-process" in host.registry["backend"]
    assert {"local", "wandb", "tensorboard"} <= set(host.registry["backend"])  # built-ins stay


def test_your_own_installed_package_is_not_registered_twice(installed_probe, register_plugin):
    # After `pip install -e .` your module is also an installed entry point: registering it again
    # in a test would be a pluggy "already registered" error on a host that had loaded it.
    import logbus_kit_probe

    info = register_plugin(logbus_kit_probe)
    assert info.registers == ["backend:probe"] and info.distribution is None


# -- tiny_composer_run -----------------------------------------------------------------------------


def test_tiny_composer_run_fits_and_closes_a_real_trainer(tiny_composer_run, recording_backend):
    trainer = tiny_composer_run(callbacks=[SampleLogger("classification", num_samples=100)])
    assert int(trainer.state.timestamp.batch) == 2
    assert recording_backend.started.run_name == "tiny-composer-run"
    assert [step for step, _ in recording_backend.metrics(LOSS)] == [0, 1]
    assert recording_backend.metrics("metrics/eval/MulticlassAccuracy")  # evaluated at the end of fit
    (table,) = recording_backend.tables("samples/eval")
    assert table.step == 2 and len(table.rows) == 32  # two eval batches of 16 digits
    assert recording_backend.finished.exit_code == 0


def test_tiny_composer_run_without_eval_and_left_open(tiny_composer_run, recording_backend):
    trainer = tiny_composer_run(eval=False, close=False, max_duration="1ba")
    assert not recording_backend.metrics("metrics/eval/MulticlassAccuracy")
    assert recording_backend.finished is None  # open: the fixture closes it at teardown
    trainer.close()
    assert recording_backend.finished.exit_code == 0


def test_tiny_composer_run_closes_the_loggers_when_fit_raises(tiny_composer_run, recording_backend):
    class Diverges(Callback):
        def batch_end(self, state, logger):
            raise RuntimeError("loss is nan")

    with pytest.raises(RuntimeError, match="loss is nan"):
        tiny_composer_run(callbacks=[Diverges()])
    assert recording_backend.finished.exit_code == 1


def test_tiny_composer_run_takes_your_loggers(tiny_composer_run, recording_backend, logbus_dir):
    logger = LogBusLogger(backends=["local", recording_backend])
    tiny_composer_run(loggers=[logger], eval=False, run_name="mine")
    assert (logbus_dir / "mine" / "metrics.jsonl").exists()
    assert recording_backend.started.run_name == "mine"
