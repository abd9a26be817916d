"""The local backend's room: the run folder's writer and reader, and `logbus view` that serves it back.
May import ``logbus`` and its rooms, like any plugin. The viewer is ``_view_server.py`` over ``_view_store.py``.
"""

from logbus.plugins.local._backend import DEFAULT_ROOT, LocalBackend, register_backends
from logbus.plugins.local._store_reader import ImageCell, MaskCell, list_tables, read_metrics, read_table
from logbus.plugins.local._store_writer import StoreWriter, TableLost
from logbus.plugins.local._view_server import ViewerApp, make_viewer_server
from logbus.plugins.local._view_server import serve as serve_runs

__all__ = ["DEFAULT_ROOT", "LocalBackend", "register_backends", "StoreWriter", "TableLost",
           "ImageCell", "MaskCell", "list_tables", "read_metrics", "read_table", "ViewerApp", "make_viewer_server",
           "serve_runs"]
