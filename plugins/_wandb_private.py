"""wandb's private API that logbus relies on, in one place: its process-wide artifact cache, the
class labels of a mask given as a file (:func:`mask_from_file`), and its staging folder
(:func:`staging_dir`).

wandb keeps the last 100 artifacts it made in two capped dicts (``artifact_instance_cache`` by
server id, ``artifact_instance_cache_by_client_id`` by client id). A table that refers to an
earlier table (``wandb.JoinedTable``) is stored as a ``wandb-client-artifact://<client id>/...``
reference, resolved through the client-id dict when it is logged; so the reference table's artifact
must still be there then, however many artifacts came since. Every other table's artifact holds its
rows (about 2.5 KB a row with images) and is never looked up again: 100 evals of 10,000 rows kept
~2.5 GB alive, so those are dropped at once.

Nothing here is public wandb API: ``tests/plugins/test_wandb_private.py`` fails loudly when it moves, and
at run time a moved cache is warned about once (memory is then not trimmed, and tables are logged
whole rather than by reference).
"""

from __future__ import annotations

import warnings
from typing import Any, Iterable, Sequence

_CACHE_MODULE = "wandb.sdk.artifacts.artifact_instance_cache"
_warned = False


def artifact_caches() -> tuple[dict, dict]:
    """wandb's two artifact caches, ``(by client id, by server id)``. Raises ``ImportError`` or
    ``AttributeError`` when wandb moved them."""
    from wandb.sdk.artifacts import artifact_instance_cache as cache

    return cache.artifact_instance_cache_by_client_id, cache.artifact_instance_cache


def _caches_or_warn() -> tuple[dict, dict] | None:
    global _warned
    try:
        return artifact_caches()
    except (ImportError, AttributeError) as error:
        if not _warned:
            _warned = True
            warnings.warn(f"logbus: wandb's artifact cache ({_CACHE_MODULE}) moved ({error}); sample tables are "
                          "logged whole and their artifacts are not freed early", stacklevel=2)
        return None


def staging_dir() -> str:
    """wandb's artifact staging folder (``$WANDB_DATA_DIR/artifacts/staging``), where it copies each
    file added to an artifact, a table's images and masks included."""
    from wandb.sdk.artifacts.staging import get_staging_dir

    return str(get_staging_dir())


def can_refer_to_tables() -> bool:
    """Whether a logged table's artifact can be kept findable for later references."""
    return _caches_or_warn() is not None


def table_artifact(table: Any) -> Any | None:
    """The artifact a logged ``wandb.Table`` (or ``JoinedTable``) was written to, if any."""
    target = getattr(table, "_artifact_target", None)
    return None if target is None else target.artifact


def keep(artifact: Any) -> None:
    """Puts ``artifact`` (back) at the newest end of the client-id cache, so that a reference to it
    resolves even after 100 newer artifacts pushed it out."""
    caches = _caches_or_warn()
    if caches is None or artifact is None:
        return
    by_client_id = caches[0]
    by_client_id.pop(artifact._client_id, None)
    by_client_id[artifact._client_id] = artifact


def forget(artifacts: Iterable[Any]) -> None:
    """Drops ``artifacts`` from both caches, so that their tables can be freed."""
    caches = _caches_or_warn()
    if caches is None:
        return
    dropped = {id(artifact) for artifact in artifacts if artifact is not None}
    for store in caches:
        for key in [key for key, artifact in list(store.items()) if id(artifact) in dropped]:
            store.pop(key, None)


def mask_from_file(path: str, name: str, class_labels: dict[int, str]) -> Any:
    """A ``wandb.ImageMask`` of an already-encoded mask file that carries its class labels as one
    made from an array does. wandb reads a mask's labels from its private ``_val`` (the table's
    column type: each mask layer's class ids and names, which the W&B UI's mask legend shows) and
    its own ``{"path": ...}`` form leaves ``_val`` out; so it is set here, as wandb sets it for an
    array. ``tests/test_wandb_private.py`` checks that the table's column type is the same either way."""
    from wandb.sdk.data_types.helper_types.image_mask import ImageMask

    mask = ImageMask({"path": path}, name)
    mask._val = {"class_labels": dict(class_labels)}
    mask._key = name
    return mask


def table_of_rows(columns: Sequence[str], rows: Sequence[Sequence[Any]], signatures: Sequence[Any]) -> Any:
    """``wandb.Table(columns=columns, data=rows)``, with each column's type inferred from one row per
    distinct signature rather than from every row.

    ``wandb.Table`` merges every row into its column types as it adds it (``add_data``): about 75 to
    90 µs a row of Python here, a third of a repeat eval's cost, though the pipeline's rows all have
    the same types. Rows with equal signatures (the caller's: everything wandb's type of the row
    depends on) have equal types; so the representatives go through ``add_data`` and ``data`` then
    holds every row, as ``add_data`` leaves it (a list per row; no key columns, which would need
    more). ``tests/test_wandb_private.py`` checks that the logged table is the same as wandb's own."""
    import wandb

    first: dict[Any, int] = {}
    for index, signature in enumerate(signatures):
        first.setdefault(signature, index)
    table = wandb.Table(columns=list(columns), data=[rows[index] for index in sorted(first.values())])
    table.data = [list(row) for row in rows]
    return table
