"""An offline W&B run folder that travels: the files its artifacts name are kept inside it, and the
run file can be pointed at them again wherever the folder lands.

Why this is needed (wandb 0.31, checked in wandb's source): a table's images, masks and JSON, and
every artifact file, are staged at ``add_file`` time under ``$WANDB_DATA_DIR/artifacts/staging/``
(``wandb/sdk/artifacts/staging.py``; ``Artifact._add_local_file`` copies the file there), and the
run file records each manifest entry's ``local_path`` as that absolute path
(``wandb/sdk/interface/interface.py``, ``_make_artifact_manifest``). ``wandb sync`` is done by the Go
``wandb-core``: it resolves the run's own media (``files/...``) relative to the run folder
(``core/internal/runsync/syncsettings.go`` sets ``SyncDir`` from the ``.wandb`` file's folder;
``core/internal/runfiles/uploader.go`` joins relative paths to ``files/``), but it opens a manifest
entry's ``local_path`` exactly as recorded (``core/pkg/artifacts/saver.go``: ``newUploadTask(...,
*entry.LocalPath, ...)``), so a relative one would be resolved against the directory ``wandb sync`` is
run from. A large manifest (over 100,000 entries) is not in the run file at all but in a gzipped file
``manifest_file_path`` under the same staging folder, which ``wandb-core`` deletes once read
(``core/pkg/artifacts/manifest.go``, ``ManifestContentsFromFile``).

So no setting makes an offline run folder self-contained: logbus does it in two steps it owns.

- :func:`keep_staged_files` (the ``wandb`` backend calls it when an offline run finishes): every file
  the run file names outside the run folder is linked (a hard link; a copy across file systems) into
  ``<run folder>/logbus-staging/``, and the run file is rewritten to name those copies. ``wandb sync``
  then works in place even after wandb's staging folder is emptied.
- :func:`relink` (``logbus wandb-relink RUN_DIR``): after the folder moved, points every
  ``logbus-staging`` path of the run file at the folder's new place, and checks that each exists.

The run file is wandb's transaction log: protobuf ``wandb.proto.wandb_internal_pb2.Record``s framed
in the LevelDB log format (``core/pkg/leveldb/record.go``): a 7-byte header (``:W&B``, magic
``0xBEE1`` little-endian, version 0), 32 KiB blocks, each chunk ``crc32 (IEEE, over type and data),
length, type, data``. ``core/internal/transactionlog/writer.go`` writes it with ``CRCAlgoIEEE``.
"""

from __future__ import annotations

import glob
import os
import shutil
import struct
import time
import zlib
from typing import Any, Iterator

__all__ = ["STAGING_FOLDER", "keep_staged_files", "read_records", "relink", "run_file_of", "write_records"]

STAGING_FOLDER = "logbus-staging"
_HEADER = b":W&B" + struct.pack("<HB", 0xBEE1, 0)
_BLOCK_SIZE = 32 * 1024
_CHUNK_HEADER_SIZE = 7
_CHUNK_HEADER = struct.Struct("<IHB")  # checksum, length, type
_FULL, _FIRST, _MIDDLE, _LAST = 1, 2, 3, 4
_KIND_CRC = {kind: zlib.crc32(bytes([kind])) for kind in (_FULL, _FIRST, _MIDDLE, _LAST)}  # crc32 goes on from these
# wandb-core closes the run file after run.finish() returns (the service is told, not waited for):
# how long keep_staged_files waits for the last record to be on disk.
RUN_FILE_CLOSE_TIMEOUT = 30.0
_POLL_SECONDS = 0.05


def run_file_of(run_dir: str | os.PathLike) -> str:
    """The ``run-<id>.wandb`` transaction log of an offline run folder (``offline-run-*``).

    :param run_dir: the run folder (the one that holds ``files/`` and the ``.wandb`` file).
    """
    found = glob.glob(os.path.join(glob.escape(os.fspath(run_dir)), "*.wandb"))
    if len(found) != 1:
        raise FileNotFoundError(f"run_dir: expected one .wandb run file in {os.fspath(run_dir)!r}, found {found}")
    return found[0]


def _chunks(data: bytes) -> Iterator[tuple[int, memoryview]]:
    if data[:len(_HEADER)] != _HEADER:
        raise ValueError(f"not a W&B run file (header {data[:len(_HEADER)]!r})")
    view = memoryview(data)
    offset = len(_HEADER)
    while offset < len(data):
        left_in_block = _BLOCK_SIZE - offset % _BLOCK_SIZE
        if left_in_block < _CHUNK_HEADER_SIZE:  # the block's zero padding
            offset += left_in_block
            continue
        if offset + _CHUNK_HEADER_SIZE > len(data):
            raise ValueError(f"truncated chunk header at offset {offset}")
        checksum, length, kind = _CHUNK_HEADER.unpack_from(data, offset)
        start = offset + _CHUNK_HEADER_SIZE
        end = start + length
        if end > len(data) or length > left_in_block - _CHUNK_HEADER_SIZE:
            raise ValueError(f"truncated or oversized chunk at offset {offset}")
        if zlib.crc32(view[start - 1:end]) != checksum:  # over the type byte and the data
            raise ValueError(f"checksum mismatch at offset {offset}")
        yield kind, view[start:end]
        offset = end


def _payloads(data: bytes) -> list[bytes]:
    """Each record's bytes, chunks joined."""
    payloads = []
    pending: list[memoryview] | None = None
    for kind, piece in _chunks(data):
        if kind == _FULL:
            payloads.append(bytes(piece))
        elif kind == _FIRST:
            pending = [piece]
        elif kind in (_MIDDLE, _LAST) and pending is not None:
            pending.append(piece)
            if kind == _LAST:
                payloads.append(b"".join(pending))
                pending = None
        else:
            raise ValueError(f"unexpected chunk type {kind}")
    if pending is not None:
        raise ValueError("the last record is incomplete")
    return payloads


def _read(path: str | os.PathLike) -> tuple[list[bytes | None], list[Any]]:
    from wandb.proto import wandb_internal_pb2

    with open(path, "rb") as file:
        payloads = _payloads(file.read())
    from google.protobuf.message import DecodeError  # type: ignore[import-untyped]  # protobuf ships no stubs here

    record_type = wandb_internal_pb2.Record  # type: ignore[attr-defined]  # generated code, no stubs
    try:
        return list(payloads), [record_type.FromString(payload) for payload in payloads]
    except DecodeError as error:
        raise ValueError(f"{os.fspath(path)}: a record is not a wandb record ({error})") from error


def read_records(path: str | os.PathLike) -> list[Any]:
    """Every record of a run file, as ``wandb_internal_pb2.Record`` messages. Raises ``ValueError``
    if the file is not one, or is incomplete (still being written).

    :param path: the ``.wandb`` file.
    """
    return _read(path)[1]


def _framed(payloads: list[bytes]) -> bytes:
    """The LevelDB log framing, as ``core/pkg/leveldb/record.go``'s writer lays it out."""
    out = bytearray(_HEADER)
    for payload in payloads:
        view, first = memoryview(payload), True
        while True:
            left_in_block = _BLOCK_SIZE - len(out) % _BLOCK_SIZE
            if left_in_block < _CHUNK_HEADER_SIZE:
                out += bytes(left_in_block)
                continue
            room = left_in_block - _CHUNK_HEADER_SIZE
            piece, view = view[:room], view[room:]
            last = not view
            kind = (_FULL if last else _FIRST) if first else (_LAST if last else _MIDDLE)
            out += _CHUNK_HEADER.pack(zlib.crc32(piece, _KIND_CRC[kind]), len(piece), kind)
            out += piece
            first = False
            if last:
                break
    return bytes(out)


def write_records(path: str | os.PathLike, records: list[Any], payloads: list[bytes | None] | None = None) -> None:
    """Writes ``records`` as a run file at ``path``, whole: to a temporary name beside it, then renamed.

    :param path: the ``.wandb`` file to replace.
    :param records: ``wandb_internal_pb2.Record`` messages, in order.
    :param payloads: the bytes already serialized for each record, ``None`` where it changed.
    """
    known = payloads if payloads is not None else [None] * len(records)
    data = _framed([payload if payload is not None else record.SerializeToString()
                    for payload, record in zip(known, records)])
    temporary = f"{os.fspath(path)}.logbus-tmp"
    with open(temporary, "wb") as file:
        file.write(data)
        file.flush()
        os.fsync(file.fileno())
    os.replace(temporary, path)


def _named_paths(records: list[Any]) -> Iterator[tuple[int, Any, str]]:
    """``(record index, message, field)`` for every file path a record names outside the run
    folder's ``files/``: each artifact manifest entry's ``local_path`` and a manifest's
    ``manifest_file_path``."""
    for index, record in enumerate(records):
        if record.WhichOneof("record_type") != "artifact":
            continue
        manifest = record.artifact.manifest
        if manifest.manifest_file_path:
            yield index, manifest, "manifest_file_path"
        for entry in manifest.contents:
            if entry.local_path:
                yield index, entry, "local_path"


def _complete_records(path: str, timeout: float) -> tuple[list[bytes | None], list[Any]]:
    """The run file's records once it ends with its exit record and parses to its end."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            payloads, records = _read(path)
            if any(record.WhichOneof("record_type") == "exit" for record in records):
                return payloads, records
            problem = "no exit record yet"
        except ValueError as error:
            problem = str(error)
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path}: the run file is not complete after {timeout:g} s ({problem})")
        time.sleep(_POLL_SECONDS)


def _link_or_copy(source: str, target: str) -> None:
    try:
        os.link(source, target)
    except OSError:  # another file system, or links not allowed
        shutil.copy2(source, target)


def keep_staged_files(run_dir: str | os.PathLike, timeout: float = RUN_FILE_CLOSE_TIMEOUT,
                      staging_dir: str | None = None) -> int:
    """Links every file the run file names outside ``run_dir`` into ``run_dir/logbus-staging/`` and
    rewrites the run file to name them there. Returns how many files were linked. A named file that
    is already gone (wandb deletes a large manifest's file once synced) is left as it is.

    :param run_dir: a finished offline run's folder.
    :param timeout: seconds to wait for wandb-core to finish writing the run file.
    :param staging_dir: wandb's staging folder: a file linked from there is removed there once the
        run file names the run folder's copy (nothing else names it: wandb stages each file under a
        name of its own), so the run folder holds the only copy. ``None``: nothing is removed.
    """
    run_dir = os.path.abspath(run_dir)
    path = run_file_of(run_dir)
    payloads, records = _complete_records(path, timeout)
    staging = os.path.join(run_dir, STAGING_FOLDER)
    inside = run_dir + os.sep
    linked: dict[str, str] = {}  # the file wandb staged -> its copy in the run folder
    for index, message, field in _named_paths(records):
        source = getattr(message, field)
        if os.path.abspath(source).startswith(inside):
            continue
        target = linked.get(source)
        if target is None:
            if not os.path.isfile(source):
                continue
            os.makedirs(staging, exist_ok=True)
            # wandb's staged names are unique temporary names; a number keeps two with one name apart.
            target = os.path.join(staging, f"{len(linked)}-{os.path.basename(source)}")
            _link_or_copy(source, target)
            linked[source] = target
        setattr(message, field, target)
        payloads[index] = None  # serialized again
    if linked:
        write_records(path, records, payloads)
    if staging_dir is not None:
        wandb_staging = os.path.abspath(staging_dir) + os.sep
        for source in linked:
            if os.path.abspath(source).startswith(wandb_staging):
                try:
                    os.remove(source)
                except OSError:  # wandb staged it read-only; a folder that refuses keeps its copy
                    pass
    return len(linked)


def relink(run_dir: str | os.PathLike) -> tuple[int, list[str]]:
    """Points every path of the run file that lies in a ``logbus-staging`` folder at that file in
    ``run_dir/logbus-staging/``, wherever the folder was when the run was written. Returns ``(paths
    rewritten, paths named that do not exist)``: the second list is empty when ``wandb sync`` will
    find every file.

    :param run_dir: the offline run folder, where it is now.
    """
    run_dir = os.path.abspath(run_dir)
    path = run_file_of(run_dir)
    payloads, records = _read(path)
    staging = os.path.join(run_dir, STAGING_FOLDER)
    changed = 0
    missing = []
    for index, message, field in _named_paths(records):
        named = getattr(message, field)
        parent, name = os.path.split(named)
        if os.path.basename(parent) == STAGING_FOLDER:
            here = os.path.join(staging, name)
            if here != named:
                setattr(message, field, here)
                payloads[index] = None  # serialized again
                changed += 1
                named = here
        if not os.path.isfile(named):
            missing.append(named)
    if changed:
        write_records(path, records, payloads)
    return changed, missing
