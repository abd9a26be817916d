"""The local backend's room: the run folder's writer and reader, and `logbus view` that serves it back.
May import ``logbus`` and its rooms, like any plugin. The viewer is ``_view_server.py`` over ``_view_store.py``
(``_view_export.py`` writes its static page); its names are imported on first use, so the training
process that imports the backend never loads werkzeug, and ``logbus view`` never loads pandas.
"""

from logbus.plugins.local._backend import DEFAULT_ROOT, LocalBackend, register_backends
from logbus.plugins.local._store_reader import ImageCell, MaskCell, list_tables, read_metrics, read_table
from logbus.plugins.local._store_writer import StoreWriter, TableLost

__all__ = ["DEFAULT_ROOT", "LocalBackend", "register_backends", "StoreWriter", "TableLost",
           "ImageCell", "MaskCell", "list_tables", "read_metrics", "read_table", "ViewerApp", "make_viewer_server",
           "serve_runs", "export_runs"]

_VIEWER_NAMES = {"ViewerApp": ("_view_server", "ViewerApp"), "make_viewer_server": ("_view_server", "make_viewer_server"),
                 "serve_runs": ("_view_server", "serve"), "export_runs": ("_view_export", "export")}


def __getattr__(name: str):
    if name in _VIEWER_NAMES:
        import importlib

        module, attribute = _VIEWER_NAMES[name]
        return getattr(importlib.import_module(f"logbus.plugins.local.{module}"), attribute)
    raise AttributeError(f"module 'logbus.plugins.local' has no attribute {name!r}")
