"""The local backend's room: the backend that writes the run folder (a packed Parquet store), the store's
reader, and the viewer that serves it back (``logbus view``, a local HTTP server: ``_view_server.py`` over
``_view_store.py``). May import ``logbus`` and its rooms, like any plugin.
"""

from logbus.plugins.local._backend import DEFAULT_ROOT, LocalBackend, register_backends
from logbus.plugins.local._store_reader import ImageCell, MaskCell, list_tables, read_metrics, read_table
from logbus.plugins.local._store_writer import StoreWriter, TableLost
from logbus.plugins.local._view_server import ViewerApp, make_viewer_server
from logbus.plugins.local._view_server import serve as serve_runs

__all__ = ["DEFAULT_ROOT", "LocalBackend", "register_backends", "StoreWriter", "TableLost",
           "ImageCell", "MaskCell", "list_tables", "read_metrics", "read_table", "ViewerApp", "make_viewer_server",
           "serve_runs"]
