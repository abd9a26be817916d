"""Staging files for upload: Composer may delete a checkpoint as soon as ``upload_file`` returns.

``save_num_checkpoints_to_keep`` rotates checkpoints right after handing them to the loggers, while
the upload still waits in a writer's queue. A hard link taken on the training thread (O(1), no data
copied) keeps the file's content reachable under a name Composer does not know, whatever Composer
deletes. Each staged link is removed as soon as every backend that takes it is done with it (wandb's
``add_file`` copies it into wandb's own staging area), so the rotation frees disk during the run,
not at its end.

Where the temporary folder is on another filesystem than the checkpoint, the link is taken in a
hidden ``.logbus-staging-*`` folder beside the checkpoint instead (same filesystem), removed with the
last staged file in it. On a filesystem without hard links the file is uploaded from where it is,
with one warning: copying it here would put a checkpoint-sized copy on the training thread.
"""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
import threading
import warnings
from typing import Callable

__all__ = ["Staging"]


class Staging:
    """Hard links of files waiting for upload, each released after its last consumer."""

    def __init__(self):
        self._lock = threading.Lock()
        self._roots: dict[str | None, str] = {}  # source folder (None: the system temp folder) -> root
        self._live: dict[str, int] = {}  # root -> staged files not yet released
        self._count = 0
        self._warned = False

    def stage(self, source: str, consumers: int) -> tuple[str, Callable[[], None]]:
        """Links ``source`` into a fresh staging folder (keeping its file name).

        :param source: an existing file.
        :param consumers: how many backends will read the staged file; the link is removed after the
            returned ``release`` has been called that many times.
        :returns: the path to hand to the backends, and ``release``.
        """
        for place in (None, os.path.dirname(os.path.abspath(source))):
            try:
                return self._link(source, place, consumers)
            except OSError as error:
                if error.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP, errno.EACCES):
                    raise
        if not self._warned:
            self._warned = True
            warnings.warn(f"logbus: cannot hard-link {source!r} for upload; it is uploaded from where it is, and "
                          f"a checkpoint Composer deletes before its upload is not uploaded.", stacklevel=3)
        return source, _nothing

    def _link(self, source: str, place: str | None, consumers: int) -> tuple[str, Callable[[], None]]:
        with self._lock:
            root = self._roots.get(place)
            if root is None:
                root = tempfile.mkdtemp(prefix="logbus-upload-" if place is None else ".logbus-staging-", dir=place)
                self._roots[place] = root
                self._live[root] = 0
            self._live[root] += 1  # reserved now, so a release cannot remove the root under this link
            self._count += 1
            # One folder per upload, so the staged file keeps its own name: backends (wandb's
            # add_file) store it under that name, as Composer's WandBLogger does.
            folder = os.path.join(root, str(self._count))
        target = os.path.join(folder, os.path.basename(source))
        try:
            os.mkdir(folder)
            os.link(source, target)
        except OSError:
            shutil.rmtree(folder, ignore_errors=True)
            with self._lock:
                self._live[root] -= 1
            raise
        remaining = [max(1, consumers)]

        def release() -> None:
            with self._lock:
                remaining[0] -= 1
                if remaining[0] != 0:
                    return
                self._live[root] -= 1
                empty = self._live[root] == 0 and place is not None
                if empty:  # a folder beside the user's checkpoints lives no longer than its last file
                    del self._roots[place], self._live[root]
            shutil.rmtree(root if empty else folder, ignore_errors=True)

        return target, release

    def cleanup(self) -> None:
        """Removes every staging folder, released or not (at the end of the run)."""
        with self._lock:
            roots, self._roots, self._live = list(self._roots.values()), {}, {}
        for root in roots:
            shutil.rmtree(root, ignore_errors=True)


def _nothing() -> None:
    pass
