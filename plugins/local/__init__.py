"""The local backend's room: the backend that writes the run folder (a packed Parquet store), the store's
reader, and the static viewer. May import ``logbus`` and its rooms, like any plugin.
"""

from logbus.plugins.local._backend import DEFAULT_ROOT, LocalBackend, register_backends
from logbus.plugins.local._store_reader import ImageCell, MaskCell, list_tables, read_metrics, read_table
from logbus.plugins.local._store_writer import StoreWriter, TableLost
from logbus.plugins.local._viewer import write_viewer

__all__ = ["DEFAULT_ROOT", "LocalBackend", "register_backends", "write_viewer", "StoreWriter", "TableLost",
           "ImageCell", "MaskCell", "list_tables", "read_metrics", "read_table"]
