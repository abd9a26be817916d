"""The hooks a logbus plugin can implement. This module is the plugin author's reference.

A plugin is a module (or object) with functions decorated by ``logbus.hookimpl`` whose names match the
specifications below. Built-in plugins (``logbus.plugins.*``) use exactly the same hooks as
third-party ones, which are found through the ``logbus`` entry-point group::

    # pyproject.toml of your package
    [project.entry-points.logbus]
    my_backend = "my_package.logbus_plugin"

Registration uses the ``register(...)`` callback style, so the host, not the plugin, owns names,
collisions and provenance (which distribution registered what).
"""

from __future__ import annotations

from typing import Callable

import pluggy

PROJECT_NAME = "logbus"

_hookspec = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)


@_hookspec
def register_backends(register: Callable[..., None]) -> None:
    """Register logger backends (where records go: W&B, a folder, TensorBoard, ...).

    Call ``register(name, factory, *, description="")`` once per backend. ``name`` is what users pass in
    ``backends=[...]``; ``factory(**options)`` returns an object with the backend contract:

    - ``log(record: logbus.records.Record) -> None``: called on the backend's own writer thread,
      in order, for every record whose type the backend supports.
    - ``close(finish: logbus.records.RunFinished) -> None``: called once, last.
    - optional ``supports: frozenset[type]``: record types beyond ``RunStarted``, ``Metrics`` and
      ``Hyperparameters`` that the backend wants (``Table``, ``Images``, ``Artifact``); others are not
      delivered to it.
    - optional ``download_file(remote_file_name, destination, overwrite=False, progress_bar=True)`` for backends that can
      give files back (Composer loads checkpoints through it).

    Exceptions from ``log`` are caught by the bus: reported once, counted, and after repeated
    failures the backend is switched off. They never reach the training loop.

    :param register: the host's callback. Registering a name twice is an error naming both plugins.
    """


@_hookspec
def register_extractors(register: Callable[..., None]) -> None:
    """Register sample extractors (how a batch of model inputs/outputs becomes table rows).

    Call ``register(name, factory, *, description="")``. ``factory(**options)`` returns an extractor
    whose ``device_stage(batch, outputs)`` works on tensors only (runs on the accelerator, on a side
    stream) and whose ``host_stage(device_result)`` builds rows on a worker thread.

    :param register: the host's callback. Registering a name twice is an error naming both plugins.
    """
