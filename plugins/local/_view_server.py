"""``logbus view``: a local HTTP server over run folders (format 2), with a JSON API and one static page.

Built on werkzeug (routing with ``Map``/``Rule``, ``Request``/``Response``, the threaded
``make_server``); every question about the store is answered by :mod:`._view_store` with pyarrow. The
page (``viewer/index.html``, its script and style, and the vendored uPlot) is package data and fetches
nothing but this server's own URLs: the ``Content-Security-Policy`` allows only ``'self'``.

URLs name a run by its index, a table by its key, an image by its pack id and content hash: never a
file path, so nothing outside the run folders can be reached. Every label, key and caption from a run
folder reaches the page as JSON and is put there with ``textContent``, never parsed as HTML.
"""

from __future__ import annotations

import io
import json
import math
import sys
import threading
from importlib import resources
from typing import Any, Callable, Sequence

import numpy as np
import pyarrow as pa
from PIL import Image as PILImage
from werkzeug.exceptions import HTTPException, NotFound
from werkzeug.routing import Map, Rule
from werkzeug.serving import BaseWSGIServer, WSGIRequestHandler, make_server
from werkzeug.wrappers import Request, Response

from logbus.plugins.local import _view_store as store

LOOPBACK = "127.0.0.1"
DEFAULT_PORT = 6007  # TensorBoard's 6006, one up
DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 500
STATIC_FILES = {  # name -> content type: only these files are served
    "index.html": "text/html; charset=utf-8",
    "viewer.js": "text/javascript; charset=utf-8",
    "viewer.css": "text/css; charset=utf-8",
    "uPlot.iife.min.js": "text/javascript; charset=utf-8",
    "uPlot.min.css": "text/css; charset=utf-8",
    "uPlot.LICENSE": "text/plain; charset=utf-8",
}
# Styles: uPlot sizes its elements with inline style attributes, so 'unsafe-inline' for styles only.
CSP = ("default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' blob:; "
       "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'none'")
PNG_CACHE_ENTRIES = 2048  # encoded PNGs kept in memory (each a few KB for samples)


class ViewerApp:
    """The WSGI application: the page, its static files, the JSON API and the images.

    :param run_dirs: the run folders to serve (ranks of one run are merged, runs overlaid)."""

    def __init__(self, run_dirs: Sequence[str]):
        self.runs = store.open_runs(run_dirs)
        self.metrics = [store.MetricsFile(_metrics_path(run)) for run in self.runs]
        self.urls = Map([
            Rule("/", endpoint="index"),
            Rule("/favicon.ico", endpoint="favicon"),
            Rule("/static/<name>", endpoint="static"),
            Rule("/api/runs", endpoint="runs"),
            Rule("/api/metrics", endpoint="metrics"),
            Rule("/api/rows", endpoint="rows"),
            Rule("/api/history", endpoint="history"),
            Rule("/api/confusion", endpoint="confusion"),
            Rule("/img/<int:run>/<pack>/<content_hash>", endpoint="image"),
        ])
        self.png_cache: dict[tuple, bytes] = {}
        self.metrics_answer: tuple[tuple[int, ...], bytes] | None = None
        self.png_lock = threading.Lock()

    # -- WSGI ------------------------------------------------------------------------------------
    def __call__(self, environ: dict, start_response: Callable) -> Any:
        request = Request(environ)
        adapter = self.urls.bind_to_environ(environ)
        try:
            endpoint, values = adapter.match()
            response = getattr(self, f"on_{endpoint}")(request, **values)
        except HTTPException as error:
            response = _json({"error": error.description}, status=error.code or 500)
        except store.StoreError as error:
            response = _json({"error": str(error)}, status=404)
        except (TypeError, ValueError) as error:
            response = _json({"error": str(error)}, status=400)
        response.headers["Content-Security-Policy"] = CSP
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Referrer-Policy"] = "no-referrer"
        return response(environ, start_response)

    # -- page --------------------------------------------------------------------------------------
    def on_index(self, request: Request) -> Response:
        return self.on_static(request, "index.html")

    def on_favicon(self, request: Request) -> Response:
        return Response(status=204)  # none: a browser asks for it on every page

    def on_static(self, request: Request, name: str) -> Response:
        if name not in STATIC_FILES:
            raise NotFound(f"no static file {name!r}")
        body = resources.files("logbus.plugins.local").joinpath("viewer").joinpath(name).read_bytes()
        response = Response(body, content_type=STATIC_FILES[name])
        response.headers["Cache-Control"] = "no-cache"
        return response

    # -- API -------------------------------------------------------------------------------------
    def on_runs(self, request: Request) -> Response:
        runs = []
        for index, run in enumerate(self.runs):
            tables = []
            for key, files in store.list_tables(run).items():
                schema = store.dataset(files.of()).schema
                columns = [{"name": f.name, "type": _type_name(f.type)} for f in schema if not f.name.startswith("_")]
                tables.append({"key": key, "steps": files.steps, "columns": columns,
                               "kind": _table_kind(schema), "rows_files": len(files.of())})
            info = {k: run.info.get(k) for k in ("status", "world_size", "started_at", "finished_at", "rank")}
            runs.append({"id": index, "name": run.name, "ranks": len(run.folders), "info": info,
                         "hparams": store.read_hparams(run), "tables": tables})
        return _json({"runs": runs})

    def on_metrics(self, request: Request) -> Response:
        """Every run's metrics. The answer is kept until a metrics file grows: 100,000 lines of three
        metrics are 10 MB of JSON, about a second to write out again for every page load."""
        versions, series = zip(*(metrics.read() for metrics in self.metrics))
        version = tuple(versions)
        with self.png_lock:
            if self.metrics_answer is not None and self.metrics_answer[0] == version:
                return Response(self.metrics_answer[1], content_type="application/json; charset=utf-8")
        response = _json({"runs": [{"id": i, "name": run.name, "series": run_series}
                                   for i, (run, run_series) in enumerate(zip(self.runs, series))]})
        with self.png_lock:
            self.metrics_answer = (version, response.get_data())
        return response

    def on_rows(self, request: Request) -> Response:
        run, table = self._table(request)
        args = request.args
        step = _step(args.get("step"), table)
        size = _int(args, "size", DEFAULT_PAGE_SIZE, 1, MAX_PAGE_SIZE)
        query = store.RowQuery(
            step=step, truth=_optional_int(args, "truth"), prediction=_optional_int(args, "prediction"),
            correct={"right": True, "wrong": False, None: None, "": None}[_choice(args, "outcome", ("right", "wrong", ""))],
            flag=args.get("flag") or None, search=args.get("q") or None, sort=args.get("sort") or None,
            descending=args.get("desc") == "1", offset=_int(args, "page", 0, 0, 10**9) * size, limit=size)
        only = _choice(args, "only", ("flipped", "wrong_always", "changed", ""))
        vs = None
        if only == "flipped":
            vs = store.previous_step(table, step)
        elif only == "changed":
            vs = _step(args.get("vs"), table)
        if vs is not None:
            query.sample_keys = store.changed_since(table, step, vs)
        elif only == "wrong_always":
            query.sample_keys = store.wrong_at_every_eval(table, step)
        page, total = store.query_rows(table, query)
        rows = _rows_json(page, store.json_columns(table.of(step)))
        if vs is not None and rows:
            before = {r["_sample_key"]: r for r in _rows_json(store.dataset(table.of(vs)).to_table(
                columns=[c for c in ("_sample_key", "prediction", "confidence", "correct", "loss")
                         if c in store.dataset(table.of(vs)).schema.names],
                filter=store.at_step(vs) & store.pc.field("_sample_key").isin(page["_sample_key"])), set())}
            for row in rows:
                row["_vs"] = before.get(row["_sample_key"])
        return _json({"key": table.key, "step": step, "vs": vs, "total": total, "offset": query.offset,
                      "size": size, "rows": rows})

    def on_history(self, request: Request) -> Response:
        run, table = self._table(request)
        sample_key = request.args.get("sample")
        if not sample_key:
            raise ValueError("sample: expected a sample key, got nothing")
        rows = store.sample_history(table, sample_key)
        return _json({"key": table.key, "sample": sample_key, "steps": table.steps,
                      "rows": _rows_json(rows, store.json_columns(table.of()))})

    def on_confusion(self, request: Request) -> Response:
        run, table = self._table(request)
        step = _step(request.args.get("step"), table)
        return _json({"key": table.key, "step": step, **store.confusion(table, step, run)})

    def on_image(self, request: Request, run: int, pack: str, content_hash: str) -> Response:
        """An image as PNG (JPEG as it was stored), or with ``?as=mask`` a class-id mask as an RGB PNG
        whose red and green channels are the id's low and high bytes: the page colours it in a canvas."""
        if not 0 <= run < len(self.runs):
            raise store.StoreError(f"run: no run {run}")
        as_mask = request.args.get("as") == "mask"
        key = (run, pack, content_hash, as_mask)
        with self.png_lock:
            body = self.png_cache.get(key)
        entry = None
        if body is None:
            entry = store.pixels_entry(self.runs[run], pack, content_hash)
            body = _encode(entry, as_mask)
            with self.png_lock:
                if len(self.png_cache) >= PNG_CACHE_ENTRIES:
                    self.png_cache.pop(next(iter(self.png_cache)))
                self.png_cache[key] = body
        content_type = "image/jpeg" if body[:2] == b"\xff\xd8" else "image/png"
        response = Response(body, content_type=content_type)
        response.headers["Cache-Control"] = "max-age=86400, immutable"  # content-addressed
        return response

    # -- helpers ---------------------------------------------------------------------------------
    def _table(self, request: Request) -> tuple[store.ViewRun, store.TableFiles]:
        run_id = _int(request.args, "run", 0, 0, len(self.runs) - 1)
        run = self.runs[run_id]
        key = request.args.get("key") or ""
        tables = store.list_tables(run)
        if key not in tables:
            raise store.StoreError(f"key: run {run.name!r} has no table {key!r}")
        return run, tables[key]


def _metrics_path(run: store.ViewRun) -> str:
    import os

    for folder in run.folders:
        path = os.path.join(folder, "metrics.jsonl")
        if os.path.exists(path):
            return path
    return os.path.join(run.folders[0], "metrics.jsonl")


def _encode(entry: store.Pixels, as_mask: bool) -> bytes:
    if not as_mask and entry.encoding in ("png", "jpeg"):
        return entry.data
    array = entry.array()
    if as_mask:
        ids = array.astype(np.int64)
        if ids.ndim == 3:
            ids = ids[..., 0]
        ids = np.clip(ids, 0, 0xFFFF)
        array = np.stack([ids & 0xFF, ids >> 8, np.zeros_like(ids)], axis=-1).astype(np.uint8)
    elif array.dtype != np.uint8:
        array = np.clip(array, 0, 255).astype(np.uint8)
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    out = io.BytesIO()
    PILImage.fromarray(array).save(out, format="PNG", compress_level=1)
    return out.getvalue()


def _type_name(kind: pa.DataType) -> str:
    if pa.types.is_struct(kind):
        return "image"
    if pa.types.is_boolean(kind):
        return "bool"
    if pa.types.is_integer(kind):
        return "int"
    if pa.types.is_floating(kind):
        return "float"
    return "text"


def _table_kind(schema: pa.Schema) -> str:
    names = set(schema.names)
    if {"truth", "prediction", "correct"} <= names:
        return "classification"
    if "pixel_accuracy" in names or any("masks" in [c.name for c in schema.field(n).type]
                                        for n in store.image_columns(schema)):
        return "segmentation" if "pixel_accuracy" in names else "images"
    if {"input", "target"} <= names:
        return "tokens"
    return "table"


def _rows_json(table: pa.Table, json_columns: set[str]) -> list[dict[str, Any]]:
    rows = table.to_pylist()
    for row in rows:
        for name, value in row.items():
            if isinstance(value, float) and not math.isfinite(value):
                row[name] = None
            elif name in json_columns and isinstance(value, str):
                try:
                    row[name] = json.loads(value)
                except ValueError:
                    pass
            elif isinstance(value, dict) and "hash" in value and "pack" in value:
                row[name] = {"hash": value["hash"], "pack": value["pack"], "caption": value.get("caption"),
                             "masks": [{"name": m.get("name"), "hash": m.get("hash"), "pack": m.get("pack"),
                                        "labels": store._parse_labels(m.get("class_labels"))}
                                       for m in value.get("masks") or []]}
    return rows


def _json(value: Any, status: int = 200) -> Response:
    body = json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False, default=_default)
    return Response(body, status=status, content_type="application/json; charset=utf-8")


def _default(value: Any) -> Any:
    if isinstance(value, (np.integer, np.floating)):
        return value.item()
    return str(value)


def _int(args: Any, name: str, default: int, low: int, high: int) -> int:
    raw = args.get(name)
    if raw in (None, ""):
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"{name}: expected an integer, got {raw!r}") from None
    if not low <= value <= high:
        raise ValueError(f"{name}: expected {low}..{high}, got {value}")
    return value


def _optional_int(args: Any, name: str) -> int | None:
    return None if args.get(name) in (None, "") else _int(args, name, 0, -(2**62), 2**62)


def _choice(args: Any, name: str, choices: tuple[str, ...]) -> str:
    value = args.get(name) or ""
    if value not in choices:
        raise ValueError(f"{name}: expected one of {', '.join(c for c in choices if c)}, got {value!r}")
    return value


def _step(raw: str | None, table: store.TableFiles) -> int | None:
    """``step``: an eval's step, ``none`` for rows without one, nothing for the latest."""
    if raw in (None, ""):
        steps = table.steps
        return steps[-1] if steps else None
    if raw == "none":
        return None
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"step: expected an integer or 'none', got {raw!r}") from None


class _QuietRequestHandler(WSGIRequestHandler):
    """No line per request on the terminal (a page asks for dozens of images); errors are still shown."""

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        pass


def make_viewer_server(app: ViewerApp, host: str = LOOPBACK, port: int = DEFAULT_PORT) -> BaseWSGIServer:
    """werkzeug's threaded server for ``app`` (not started: call ``serve_forever``).

    :param app: the viewer; ``host``/``port``: where to listen (port 0: any free one)."""
    return make_server(host, port, app, threaded=True, request_handler=_QuietRequestHandler)


def serve(run_dirs: Sequence[str], host: str = LOOPBACK, port: int = DEFAULT_PORT, open_browser: bool = True,
          ready: Callable[[str], None] | None = None) -> None:
    """Serves the run folders until Ctrl-C.

    :param run_dirs: run folders (``logbus_runs/<name>``), ranks of one run merged, runs overlaid.
    :param host: the address to bind (loopback unless told otherwise; another address is warned about).
    :param port: the TCP port (0: any free one).
    :param open_browser: open the page in the default browser.
    :param ready: called with the URL once the server listens (tests)."""
    app = ViewerApp(run_dirs)
    if host not in (LOOPBACK, "localhost", "::1"):
        print(f"logbus view: warning: host {host!r} is not loopback: anyone who can reach this address can read "
              "these runs", file=sys.stderr)
    server = make_viewer_server(app, host, port)
    url = f"http://{host if ':' not in host else f'[{host}]'}:{server.server_port}/"
    print(f"logbus view: serving {', '.join(r.name for r in app.runs)} at {url}  (Ctrl-C stops)", flush=True)
    if ready is not None:
        ready(url)
    if open_browser:
        import webbrowser

        webbrowser.open(url)
    try:
        server.serve_forever()  # werkzeug's returns on Ctrl-C
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    print("logbus view: stopped", file=sys.stderr)
