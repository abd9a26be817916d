"""logbus: a plugin-based logging bus for MosaicML Composer and plain PyTorch loops.

Importing logbus loads no plugin and starts no thread; plugins are found on first use.
"""

from logbus import _deprecated
from logbus._version import __version__
from logbus.hookspecs import hookimpl

_deprecated.install()  # logbus.sample_pipeline, logbus.plugin_manager, logbus.strict_json (moved)

__all__ = ["hookimpl", "Bus", "Run", "start_run", "records", "read_table", "read_metrics", "__version__"]


def __getattr__(name):
    # Lazy so that `import logbus` stays cheap and plugin modules can `import logbus` for hookimpl.
    if name == "Bus":
        from logbus.bus import Bus

        return Bus
    if name in ("Run", "start_run"):
        from logbus import run_context

        return getattr(run_context, name)
    if name in ("read_table", "read_metrics"):  # the local store's reader (pandas, pyarrow: loaded on use)
        from logbus.plugins import local

        return getattr(local, name)
    if name == "records":
        import logbus.records as records

        return records
    if f"logbus.{name}" in _deprecated.MOVED:  # `import logbus.plugin_manager` then `logbus.plugin_manager.x`
        import sys

        return sys.modules[f"logbus.{name}"]
    raise AttributeError(f"module 'logbus' has no attribute {name!r}")
