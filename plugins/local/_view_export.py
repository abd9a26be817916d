"""``logbus view --export FILE``: one self-contained HTML file of chosen tables and steps, to attach to a
report or open from ``file://`` with no server.

The page is the served one (``viewer/viewer.js`` and ``viewer.css``, inlined) over the same answers the
server gives (:mod:`._view_server`'s rows as JSON), embedded as one JSON document that the script reads
instead of fetching; images are ``data:`` URIs (the server's PNG encoding of the pack entries). A
``Content-Security-Policy`` meta tag allows only the scripts inlined here (by their hashes) and ``data:``
images: the file loads nothing from anywhere. Labels and captions reach the page as JSON (``<`` written as
``\\u003c``, so no string can close the script element) and are shown with ``textContent``, as served.

Rows are bounded (``max_rows`` per table, shared by its steps), so a run of a million rows exports a page a
browser opens. The file is written atomically (a temp name beside it, then a rename) and only where the
caller named it.
"""

from __future__ import annotations

import base64
import hashlib
import html
import json
import os
from importlib import resources
from typing import Any, Sequence

from logbus.files import write_bytes_atomic
from logbus.plugins.local import _view_store as store
from logbus.plugins.local._view_server import _default, _encode, _rows_json, _table_kind, _type_name

DEFAULT_MAX_ROWS = 1_000  # per table (as `logbus view --max-rows`): a page of a few MB with small images
DATA_ELEMENT_ID = "logbus-data"


def export(run_dirs: Sequence[str], path: str, tables: Sequence[str] | None = None,
           steps: Sequence[int | None] | None = None, max_rows: int = DEFAULT_MAX_ROWS) -> dict[str, Any]:
    """Writes the static page of ``run_dirs`` to ``path``; returns what it holds (tables, rows, images).

    :param run_dirs: run folders (ranks of one run merged, runs side by side), as ``logbus view`` takes them.
    :param path: the HTML file to write (replaced atomically if it exists); its folder must exist.
    :param tables: the table keys to export; None for every table.
    :param steps: the steps to export of each table (``None`` in it: rows logged without a step); None
        for each table's latest step.
    :param max_rows: at most this many rows of each table, shared evenly by its steps (the first rows of
        each step, in rank and row order; what a step lacks of its share goes to the next)."""
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path: expected a file path, got {type(path).__name__}")
    path = os.fspath(path)
    if isinstance(max_rows, bool) or not isinstance(max_rows, int):
        raise TypeError(f"max_rows: expected an int, got {type(max_rows).__name__}")
    if max_rows < 1:
        raise ValueError(f"max_rows: expected at least 1, got {max_rows}")
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"path: no such folder for the export: {folder!r}")
    runs = store.open_runs(run_dirs)
    wanted = None if tables is None else list(dict.fromkeys(tables))
    data: dict[str, Any] = {"runs": [], "rows": {}, "images": {}}
    found_keys: set[str] = set()
    summary = {"tables": 0, "rows": 0, "images": 0}
    for run_id, run in enumerate(runs):
        listed = store.list_tables(run)
        run_tables = []
        for key, files in listed.items():
            if wanted is not None and key not in wanted:
                continue
            chosen = [s for s in files.steps if s in steps] if steps is not None else files.steps[-1:]
            if not chosen:
                continue
            found_keys.add(key)
            schema = store.dataset(files.of()).schema
            json_columns = store.json_columns(files.of())
            budget, by_step = max_rows, {}
            for position, step in enumerate(chosen):
                share = budget // (len(chosen) - position)  # the bound shared by the steps; what one lacks, the next gets
                if share <= 0:
                    continue
                page, _ = store.query_rows(files, store.RowQuery(step=step, limit=share))
                rows = _rows_json(page, json_columns)
                budget -= len(rows)
                by_step[store_step_name(step)] = rows
                for row in rows:
                    _embed_images(run_id, run, row, data["images"])
                summary["rows"] += len(rows)
            columns = [{"name": f.name, "type": _type_name(f.type)} for f in schema if not f.name.startswith("_")]
            run_tables.append({"key": key, "steps": [s for s in chosen if store_step_name(s) in by_step],
                               "columns": columns, "kind": _table_kind(schema), "rows_files": len(files.of())})
            data["rows"].setdefault(str(run_id), {})[key] = by_step
            summary["tables"] += 1
        info = {k: run.info.get(k) for k in ("status", "world_size", "started_at", "finished_at", "rank")}
        data["runs"].append({"id": run_id, "name": run.name, "ranks": len(run.folders), "info": info,
                             "hparams": store.read_hparams(run), "tables": run_tables})
    missing = [key for key in (wanted or []) if key not in found_keys]
    if missing:
        raise ValueError(f"table: expected keys these runs have, got {missing!r} (they have "
                         f"{sorted({k for run in runs for k in store.list_tables(run)})!r})")
    if not summary["tables"]:
        raise ValueError(f"step: none of the tables has a step in {list(steps or [])!r}")
    summary["images"] = len(data["images"])
    write_bytes_atomic(path, page_html(data).encode("utf-8"))
    return summary


def store_step_name(step: int | None) -> str:
    """A step as the page names it: its number, or ``none`` for rows logged without one."""
    return "none" if step is None else str(step)


def _embed_images(run_id: int, run: store.ViewRun, row: dict[str, Any], images: dict[str, str]) -> None:
    for value in row.values():
        if not (isinstance(value, dict) and "hash" in value and "pack" in value):
            continue
        for cell, as_mask in [(value, False)] + [(mask, True) for mask in value.get("masks") or []]:
            name = f"{run_id}/{cell['pack']}/{cell['hash']}" + ("?as=mask" if as_mask else "")
            if name in images:
                continue
            body = _encode(store.pixels_entry(run, cell["pack"], cell["hash"]), as_mask)
            mime = "image/jpeg" if body[:2] == b"\xff\xd8" else "image/png"
            images[name] = f"data:{mime};base64,{base64.b64encode(body).decode('ascii')}"


def _script_json(value: Any) -> str:
    """JSON that can sit inside a ``<script>`` element: no ``<``, ``>`` or ``&`` as themselves, so no
    string (``</script>``, ``<!--``) can end or change the element."""
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False, default=_default)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def _sha256(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode("utf-8")).digest()).decode("ascii") + "'"


def page_html(data: dict[str, Any]) -> str:
    """The whole page: the served page's style and script inlined, the data as a JSON element."""
    viewer = resources.files("logbus.plugins.local").joinpath("viewer")
    script = viewer.joinpath("viewer.js").read_text(encoding="utf-8")
    style = viewer.joinpath("viewer.css").read_text(encoding="utf-8")
    # Styles: the page sets colours with style attributes (swatches, confusion cells), so 'unsafe-inline'
    # for styles only; scripts run only if they are the one inlined here.
    csp = (f"default-src 'none'; script-src {_sha256(script)}; style-src 'unsafe-inline'; img-src data:; "
           "base-uri 'none'; form-action 'none'")
    names = " · ".join(run["name"] for run in data["runs"])
    if "</script" in script.lower():  # it would end its own element
        raise ValueError("viewer.js: expected no '</script' in the page's script")
    return f"""<!doctype html>
<html lang="en" data-viewer="loading" data-static="1">
<head>
<meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="{html.escape(csp)}">
<meta name="referrer" content="no-referrer">
<title>logbus view: {html.escape(names)}</title>
<style>{style}</style>
</head>
<body>
<header>
  <strong class="brand">logbus view</strong>
  <nav>
    <a id="nav-samples" href="#samples">Samples</a>
    <a id="nav-confusion" href="#confusion">Confusion matrix</a>
  </nav>
  <span id="runs" class="runs"></span>
</header>
<main id="main"><p class="note">Loading…</p></main>
<footer>Exported by logbus view --export: a bounded selection of rows, no server.</footer>
<script type="application/json" id="{DATA_ELEMENT_ID}">{_script_json(data)}</script>
<script>{script}</script>
</body>
</html>
"""
