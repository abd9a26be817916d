"""Old import paths the README documented before ``core/`` was split into rooms, kept working with a
``DeprecationWarning`` that names the new path.

The shims are module objects put in ``sys.modules`` when ``logbus`` is imported, not files at the old
paths: a file at an old path would stop git from following the move when branches that changed the
old file are merged. A shim imports its new home only when one of its names is first used.
"""

from __future__ import annotations

import importlib
import sys
import types
import warnings
from typing import Any

# old module -> (the private module that now holds its code, the public path to import from instead)
MOVED = {
    "logbus.sample_pipeline": ("logbus.samples._pipeline", "logbus.samples"),
    "logbus.plugin_manager": ("logbus.bus._plugin_manager", "logbus.bus"),
    "logbus.strict_json": ("logbus.files._strict_json", "logbus.files"),
}


class _Shim(types.ModuleType):
    def __init__(self, name: str, home: str, public: str) -> None:
        super().__init__(name, f"Deprecated: import from {public} instead.")
        self._home, self._public = home, public

    def __getattr__(self, attribute: str) -> Any:
        if attribute.startswith("__"):  # import machinery and introspection probe these: no warning
            raise AttributeError(attribute)
        value = getattr(importlib.import_module(self._home), attribute)
        warnings.warn(f"{self.__name__} is deprecated: import {attribute} from {self._public}",
                      DeprecationWarning, stacklevel=2)
        return value


def install() -> None:
    """Puts a shim for each old path in ``sys.modules`` (once; a real module there is left alone)."""
    for name, (home, public) in MOVED.items():
        sys.modules.setdefault(name, _Shim(name, home, public))
