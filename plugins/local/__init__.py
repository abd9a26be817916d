"""The local backend's room: the backend that writes the run folder, and the static viewer that reads it
back (``index.html``, ``logbus view``). May import ``logbus`` and its rooms, like any plugin.
"""

from logbus.plugins.local._backend import DEFAULT_ROOT, LocalBackend, register_backends
from logbus.plugins.local._viewer import write_viewer

__all__ = ["DEFAULT_ROOT", "LocalBackend", "register_backends", "write_viewer"]
