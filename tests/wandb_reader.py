"""Reads an offline W&B run back the way a user can: ``wandb leet inspect --json RUN_DIR``.

``wandb leet inspect --json`` prints the run's ``.wandb`` transaction log, one JSON record per line,
``{"num": n, "type": T, T: {...}}``. The types these tests rely on (wandb 0.31)::

    run       {"config": {"update": {key: value}}, "display_name", "notes", "project", "run_group",
               "tags", "run_id", ...}                  the wandb.init arguments and initial config
    config    {"update": {key: value}}                 a later run.config.update (may be {} )
    history   {"item": {"_step": s, "<key>": v, ...}, "step": {"num": s}}   one run.log call;
              media are flattened with dots: "k._type" ("table-file", "images/separated"),
              "k.path", "k.artifact_path", "k.filenames", ...
    artifact  {"name", "type", "aliases", "client_id", "metadata": "<json string>",
               "manifest": {"contents": [{"path", "local_path", "digest", "size"}]}}
              offline runs keep the files at ``local_path`` (under WANDB_DATA_DIR) for a later sync
    exit      {"exit_code": n}                         written by run.finish; missing if the process died
    (also header, environment, stats, summary, telemetry, files: not used here)

Tables: wandb 0.31 writes each table twice. The run folder gets ``files/<k.path>`` whose media cells
are the placeholder string ``"Image"``; the full table (image cells as ``{"_type": "image-file",
"path": "media/images/...", "masks": {...}, "caption": ...}``) is a ``run_table`` artifact that
``k.artifact_path`` (``wandb-client-artifact://<client_id>/<entry>``) points to. ``WandbRun.tables``
reads the run file, checks it against the artifact copy, takes media cells from the artifact and
resolves every file a cell refers to.

Usage::

    run = read_only_run(wandb_dir)          # or read_wandb_run(find_run_dirs(wandb_dir)[0])
    run.metric("loss")                      # [(step, value), ...]
    run.config["lr"], run.exit_code, run.run["notes"]
    run.tables("samples/val")               # [(step, columns, rows), ...], joined tables resolved
    run.images("inputs")                    # [(step, [{"file", "caption", "masks"}, ...]), ...]
    [(a.name, a.type, a.aliases, a.files) for a in run.user_artifacts()]
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["WandbArtifact", "WandbRun", "find_run_dirs", "read_wandb_run", "read_only_run", "wandb_executable"]

_CLIENT_ARTIFACT = "wandb-client-artifact://"


def wandb_executable() -> str:
    """The ``wandb`` command of the interpreter running the tests (not whatever is on PATH)."""
    path = Path(sys.executable).with_name("wandb")
    if not path.exists():
        raise FileNotFoundError(f"no wandb executable next to {sys.executable}")
    return str(path)


@dataclass
class WandbArtifact:
    """One logged artifact version. ``files`` maps the path inside the artifact to the local copy;
    ``aliases`` come in no stable order (compare them as a set)."""

    name: str
    type: str
    aliases: list[str]
    files: dict[str, str]
    metadata: dict[str, Any]
    client_id: str
    sequence_client_id: str
    references: dict[str, str] = field(default_factory=dict)  # path -> "wandb-client-artifact://..." of another


@dataclass
class WandbRun:
    """An offline run as read back by ``wandb leet inspect --json``.

    :ivar records: every record, as parsed JSON.
    :ivar run: the ``run`` record (``display_name``, ``notes``, ``run_group``, ``tags``, ``project`` ...).
    :ivar history: one dict per ``run.log`` call, each with ``_step``.
    :ivar config: the config after the initial one and every update (top-level keys replaced in order).
    :ivar exit_code: from the ``exit`` record; ``None`` if the run never finished.
    :ivar artifacts: every logged artifact, in order (tables add internal ``run_table`` ones).
    """

    run_dir: Path
    records: list[dict[str, Any]]
    run: dict[str, Any]
    history: list[dict[str, Any]]
    config: dict[str, Any]
    exit_code: int | None
    artifacts: list[WandbArtifact] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.run.get("display_name", "")

    @property
    def files_dir(self) -> Path:
        return self.run_dir / "files"

    def metric(self, name: str) -> list[tuple[int, Any]]:
        """``(step, value)`` for every history item that holds ``name``."""
        return [(item["_step"], item[name]) for item in self.history if name in item]

    def user_artifacts(self) -> list[WandbArtifact]:
        """The artifacts the code logged, without W&B's internal ``run_table`` ones."""
        return [artifact for artifact in self.artifacts if artifact.type != "run_table"]

    def images(self, key: str) -> list[tuple[int, list[dict[str, Any]]]]:
        """Image lists logged under ``key`` (``run.log({key: [wandb.Image, ...]})``).

        Returns ``(step, images)`` per log call; each image is ``{"file": absolute path, "caption":
        str | None, "masks": {name: absolute path}}``.
        """
        out = []
        for item in self.history:
            if item.get(f"{key}._type") != "images/separated":
                continue
            filenames = item[f"{key}.filenames"]
            captions = item.get(f"{key}.captions") or [None] * len(filenames)
            all_masks = item.get(f"{key}.all_masks") or [None] * len(filenames)
            images = []
            for filename, caption, masks in zip(filenames, captions, all_masks):
                images.append({"file": str(self.files_dir / filename), "caption": caption,
                               "masks": {name: str(self.files_dir / mask["path"]) for name, mask in (masks or {}).items()}})
            out.append((item["_step"], images))
        return out

    def tables(self, key: str) -> list[tuple[int, list[str], list[list[Any]]]]:
        """Every table logged under ``key``: ``(step, columns, rows)``.

        Read from the run folder's ``files/<k.path>`` that each history item points to. Media cells
        there are only placeholders, so they are taken from the ``run_table`` artifact copy (after
        checking that both copies agree on columns and on every other cell). Image cells come back as
        W&B wrote them plus ``"file"`` (absolute path of the stored image), ``"masks"[name]["file"]``
        for each mask and ``"class_labels"`` ({id: name}) when a class set was stored. Raises if the
        table cannot be found or its media cannot be resolved.
        """
        out = []
        for item in self.history:
            kind = item.get(f"{key}._type")
            if kind is None:
                continue
            if kind == "joined-table":
                columns, rows = self.joined_table(item[f"{key}.artifact_path"])
                out.append((item["_step"], columns, rows))
                continue
            if kind not in ("table-file", "incremental-table-file"):
                raise AssertionError(f"history key {key!r} holds {kind!r}, not a table")
            table = json.loads((self.files_dir / item[f"{key}.path"]).read_text())
            columns, rows = list(table["columns"]), table["data"]
            artifact_path = item.get(f"{key}.artifact_path")
            if artifact_path:
                artifact, entry = self._resolve(artifact_path)
                full = json.loads(Path(artifact.files[entry]).read_text())
                if full["columns"] != columns or len(full["data"]) != len(rows):
                    raise AssertionError(f"table {key!r} at step {item['_step']}: the run file and the artifact "
                                         f"differ ({len(rows)} vs {len(full['data'])} rows)")
                rows = [[self._merge_cell(cell, full_cell, artifact) for cell, full_cell in zip(row, full_row)]
                        for row, full_row in zip(rows, full["data"])]
            out.append((item["_step"], columns, rows))
        return out

    def joined_table(self, artifact_path: str) -> tuple[list[str], list[list[Any]]]:
        """A ``wandb.JoinedTable`` read back as one table, as the W&B UI shows it: ``table1``'s
        columns, then ``table2``'s that ``table1`` lacks; rows of ``table2`` in its order, each joined
        with ``table1``'s row of the same key. A column in both is an image in both (logbus's
        reference image and its per-eval prediction): the cell is ``table1``'s, with ``table2``'s
        masks added and ``"per_eval_file"`` the file ``table2``'s cell drew them on. Each table is
        resolved where it is stored, following a ``wandb-client-artifact://`` reference to the
        artifact that holds it; a row of ``table2`` without a match raises."""
        artifact, entry = self._resolve(artifact_path)
        joined = json.loads(Path(artifact.files[entry]).read_text())
        if joined.get("_type") != "joined-table":
            raise AssertionError(f"{artifact_path!r} is a {joined.get('_type')!r}, not a joined-table")
        (columns1, rows1), (columns2, rows2) = (self._table_entry(artifact, joined[name]) for name in ("table1", "table2"))
        join_key = joined["join_key"]
        by_key = {row[columns1.index(join_key)]: row for row in rows1}
        columns = columns1 + [column for column in columns2 if column not in columns1]
        rows = []
        for row2 in rows2:
            value = row2[columns2.index(join_key)]
            if value not in by_key:
                raise AssertionError(f"joined table {artifact_path!r}: {join_key}={value!r} is not in table1")
            cells = dict(zip(columns1, by_key[value]))
            for column, cell in zip(columns2, row2):
                if column in cells and column != join_key and isinstance(cell, dict):
                    cells[column] = {**cells[column], "per_eval_file": cell["file"],
                                     "masks": {**cells[column].get("masks", {}), **cell.get("masks", {})}}
                elif column not in cells:
                    cells[column] = cell
            rows.append([cells[column] for column in columns])
        return columns, rows

    def _table_entry(self, artifact: WandbArtifact, entry: str) -> tuple[list[str], list[list[Any]]]:
        if entry in artifact.references:
            artifact, entry = self._resolve(artifact.references[entry])
        table = json.loads(Path(artifact.files[entry]).read_text())
        return list(table["columns"]), [[self._merge_cell(cell, cell, artifact) for cell in row] for row in table["data"]]

    # -- helpers ---------------------------------------------------------------------------------
    def _resolve(self, artifact_path: str) -> tuple[WandbArtifact, str]:
        if not artifact_path.startswith(_CLIENT_ARTIFACT):
            raise AssertionError(f"unexpected artifact path {artifact_path!r}")
        reference, _, entry = artifact_path[len(_CLIENT_ARTIFACT):].partition("/")
        client_id = reference.split(":", 1)[0]
        for artifact in self.artifacts:
            if client_id in (artifact.client_id, artifact.sequence_client_id) and entry in artifact.files:
                return artifact, entry
        raise AssertionError(f"artifact {artifact_path!r} is not in the run (or has no entry {entry!r})")

    @staticmethod
    def _merge_cell(cell: Any, full_cell: Any, artifact: WandbArtifact) -> Any:
        if not isinstance(full_cell, dict) or full_cell.get("_type") != "image-file":
            if cell != full_cell:
                raise AssertionError(f"table cell differs between the run file ({cell!r}) and the artifact "
                                     f"({full_cell!r})")
            return cell
        cell = dict(full_cell)
        cell["file"] = artifact.files[cell["path"]]
        cell["masks"] = {name: {**mask, "file": artifact.files[mask["path"]]}
                         for name, mask in (cell.get("masks") or {}).items()}
        classes = cell.get("classes")
        if classes:
            class_set = json.loads(Path(artifact.files[classes["path"]]).read_text())["class_set"]
            cell["class_labels"] = {entry["id"]: entry["name"] for entry in class_set}
        return cell


def find_run_dirs(wandb_dir: str | os.PathLike) -> list[Path]:
    """Run folders (``run-*`` / ``offline-run-*``) under ``wandb_dir`` or ``wandb_dir/wandb``, oldest
    first. A folder is listed even if its ``.wandb`` log is missing (a run that died while starting):
    ``read_wandb_run`` then says so."""
    found = []
    for parent in (Path(wandb_dir), Path(wandb_dir) / "wandb"):
        if not parent.is_dir():
            continue
        for child in parent.iterdir():
            if child.is_dir() and not child.is_symlink() and child.name.startswith(("run-", "offline-run-")):
                found.append(child)
    return sorted(found, key=lambda path: path.name)


def _decode_config(update: Any) -> dict[str, Any]:
    # leet prints config updates as a decoded mapping; the raw protobuf form is a list of
    # {"key" | "nested_key", "value_json"} items. Accept both so a format change fails loudly here.
    if isinstance(update, dict):
        return update
    decoded: dict[str, Any] = {}
    for entry in update or []:
        path = entry.get("nested_key") or [entry["key"]]
        target = decoded
        for part in path[:-1]:
            target = target.setdefault(part, {})
        target[path[-1]] = json.loads(entry["value_json"])
    return decoded


def _artifact(record: dict[str, Any]) -> WandbArtifact:
    metadata = record.get("metadata") or {}
    if isinstance(metadata, str):
        metadata = json.loads(metadata)
    contents = record.get("manifest", {}).get("contents", [])
    return WandbArtifact(name=record["name"], type=record["type"], aliases=list(record.get("aliases", [])),
                         files={entry["path"]: entry["local_path"] for entry in contents if "local_path" in entry},
                         metadata=metadata, client_id=record.get("client_id", ""),
                         sequence_client_id=record.get("sequence_client_id", ""),
                         references={entry["path"]: entry["ref"] for entry in contents if "ref" in entry})


def read_wandb_run(path: str | os.PathLike) -> WandbRun:
    """Runs ``wandb leet inspect --json path`` and parses its records into a ``WandbRun``."""
    run_dir = Path(path)
    if run_dir.is_dir() and not any(run_dir.glob("*.wandb")):
        raise AssertionError(f"{run_dir}: no .wandb transaction log (the run never got going); folder holds "
                             f"{sorted(p.name for p in run_dir.iterdir())}")
    result = subprocess.run([wandb_executable(), "leet", "inspect", "--json", str(run_dir)],
                            capture_output=True, text=True, timeout=120, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"wandb leet inspect failed ({result.returncode}): {result.stderr[-2000:]}")
    records = [json.loads(line) for line in result.stdout.splitlines() if line.strip()]
    run: dict[str, Any] = {}
    history: list[dict[str, Any]] = []
    config: dict[str, Any] = {}
    exit_code = None
    artifacts: list[WandbArtifact] = []
    for record in records:
        kind = record.get("type")
        body = record.get(kind) or {}
        if kind == "run":
            run = body
            config.update(_decode_config(body.get("config", {}).get("update", {})))
        elif kind == "config":
            config.update(_decode_config(body.get("update", {})))
        elif kind == "history":
            history.append(body.get("item", {}))
        elif kind == "artifact":
            artifacts.append(_artifact(body))
        elif kind == "exit":
            exit_code = int(body.get("exit_code", 0))
    config.pop("_wandb", None)
    if not run:
        raise AssertionError(f"{run_dir}: no run record in the transaction log")
    return WandbRun(run_dir=run_dir, records=records, run=run, history=history, config=config,
                    exit_code=exit_code, artifacts=artifacts)


def read_only_run(wandb_dir: str | os.PathLike) -> WandbRun:
    """Reads the one run under ``wandb_dir``; fails if there is none or more than one."""
    run_dirs = find_run_dirs(wandb_dir)
    if len(run_dirs) != 1:
        raise AssertionError(f"expected exactly one W&B run under {wandb_dir}, found {[p.name for p in run_dirs]}")
    return read_wandb_run(run_dirs[0])
