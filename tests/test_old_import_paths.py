"""Import paths the README documented before ``core/`` was split into rooms still work, each with a
``DeprecationWarning`` that names the new one."""

from __future__ import annotations

import math
import subprocess
import sys
import textwrap

import pytest

import logbus
import logbus.bus
import logbus.files
import logbus.samples


def test_sample_pipeline_warns_and_gives_the_same_objects():
    message = r"logbus\.sample_pipeline is deprecated: import PendingImage from logbus\.samples"
    with pytest.warns(DeprecationWarning, match=message):
        from logbus.sample_pipeline import PendingImage
    assert PendingImage is logbus.samples.PendingImage
    with pytest.warns(DeprecationWarning, match=r"import pipeline_for from logbus\.samples"):
        from logbus.sample_pipeline import pipeline_for
    pipeline = pipeline_for("classification", num_samples=2)
    pipeline.close()


def test_plugin_manager_warns_and_creates_extractors():
    import logbus.plugin_manager

    message = r"logbus\.plugin_manager is deprecated: import create_extractor from logbus\.bus"
    with pytest.warns(DeprecationWarning, match=message):
        create_extractor = logbus.plugin_manager.create_extractor
    assert create_extractor is logbus.bus.create_extractor
    assert hasattr(create_extractor("classification"), "host_stage")


def test_strict_json_warns_and_restores():
    with pytest.warns(DeprecationWarning, match=r"logbus\.strict_json is deprecated: import restore from logbus\.files"):
        from logbus.strict_json import restore
    assert restore is logbus.files.restore
    assert math.isnan(restore({"loss": None, "_nonfinite": [[["loss"], "NaN"]]})["loss"])


def test_an_old_path_works_as_the_first_import_of_a_fresh_process():
    code = """\
        import warnings
        warnings.simplefilter("error")
        try:
            from logbus.strict_json import restore
        except DeprecationWarning as warning:
            print(warning)
    """
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "logbus.strict_json is deprecated: import restore from logbus.files"


def test_a_name_the_old_module_never_had_is_an_attribute_error():
    import logbus.sample_pipeline

    with pytest.raises(AttributeError):
        logbus.sample_pipeline.no_such_name  # noqa: B018
