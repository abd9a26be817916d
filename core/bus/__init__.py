"""The bus room: the bus, each backend's writer thread, deferred records, the plugin host, the exit hook.
May import ``logbus.records``, ``logbus.hookspecs`` and ``logbus.files``; never samples, composer or plugins.

Names load on first use: ``logbus.testing`` reaches the plugin host through here, and importing it
must not import numpy (the bus's records do).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__all__ = [
    "Bus", "BUS_OPTIONS", "build_backends", "BackendStats", "BackendWorker", "Deferred", "LazyFuture",
    "create_backend", "create_extractor", "get_plugin_host", "reset_plugins",
    "PluginHost", "PluginInfo", "PluginWarning", "UnknownPluginError", "DEFAULT_PLUGINS", "ENTRY_POINT_GROUP",
]

_HOMES = {
    "_bus": ("Bus", "BUS_OPTIONS", "build_backends"),
    "_backend_worker": ("BackendStats", "BackendWorker"),
    "_deferred": ("Deferred", "LazyFuture"),
    "_plugin_manager": ("create_backend", "create_extractor", "get_plugin_host", "reset_plugins", "PluginHost",
                        "PluginInfo", "PluginWarning", "UnknownPluginError", "DEFAULT_PLUGINS", "ENTRY_POINT_GROUP"),
}
_MODULE_OF = {name: module for module, names in _HOMES.items() for name in names}

if TYPE_CHECKING:  # what the lazy names are, for type checkers and editors
    from logbus.bus._backend_worker import BackendStats, BackendWorker
    from logbus.bus._bus import BUS_OPTIONS, Bus, build_backends
    from logbus.bus._deferred import Deferred, LazyFuture
    from logbus.bus._plugin_manager import (
        DEFAULT_PLUGINS,
        ENTRY_POINT_GROUP,
        PluginHost,
        PluginInfo,
        PluginWarning,
        UnknownPluginError,
        create_backend,
        create_extractor,
        get_plugin_host,
        reset_plugins,
    )


def __getattr__(name: str) -> Any:
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module 'logbus.bus' has no attribute {name!r}")
    return getattr(importlib.import_module(f"logbus.bus.{module}"), name)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
