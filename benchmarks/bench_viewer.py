"""``logbus view`` on a large store: how long its pages and API answers take, and the server's memory.

    .venv/bin/python benchmarks/bench_viewer.py                       # 10 evals x 10,000 rows (100,000)
    .venv/bin/python benchmarks/bench_viewer.py --evals 100           # 1,000,000 rows (issue 18's target)
    .venv/bin/pytest benchmarks/bench_viewer.py -s                    # a small store, answers checked

The store is written by logbus itself: the local backend's ``log(Table)`` with the classification
extractor's columns, one table per eval, the same 10,000 images (8x8 RGB, distinct) at every eval, so
each image is stored once and every sample has one stable key across evals. Then, in a fresh process
(so its memory is the server's alone), the server is started on a loopback port and asked over HTTP as
the page asks it: the first samples page after start, then for ``ROUNDS`` rounds a samples page (a
different eval, page, sort and filter each round, so no cache answers it), one sample's history across
every eval, an eval's confusion matrix, one image, the runs list, the metrics and the page itself.
Medians with min-max over the rounds; peak RSS of the serving process after every page.
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

import numpy as np

ROWS = 10_000
EVALS = 10
ROUNDS = 15
CLASSES = 10
BASELINE_RSS_MB = 0.0  # the serving process after its imports, before the server
COLUMNS = ["id", "image", "truth", "prediction", "confidence", "correct", "loss", "flag"]


def write_store(root: str, evals: int, rows: int) -> str:
    """A run folder of ``evals`` classification tables of ``rows`` rows each, written by the local backend."""
    from logbus.plugins.local import LocalBackend
    from logbus.records import Image, Metrics, RunFinished, RunStarted, Table

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (rows, 8, 8, 3), dtype=np.uint8)
    truth = rng.integers(0, CLASSES, rows)
    backend = LocalBackend(root)
    backend.log(RunStarted("bench-view"))
    for step in range(1, 1001):
        backend.log(Metrics({"train/loss": 1 / step, "train/lr": 0.1}, step))
    for eval_index in range(evals):
        step = (eval_index + 1) * 100
        right = rng.random(rows) < 0.5 + 0.4 * eval_index / max(1, evals - 1)
        prediction = np.where(right, truth, rng.integers(0, CLASSES, rows))
        confidence, loss = rng.random(rows), rng.random(rows) * 3
        table = [[i, Image(pixels=images[i]), int(truth[i]), int(prediction[i]), float(confidence[i]),
                  bool(prediction[i] == truth[i]), float(loss[i]), ""] for i in range(rows)]
        backend.log(Table("samples/eval", COLUMNS, table, step=step))
    backend.close(RunFinished())
    return backend.run_dir


def peak_rss_mb() -> float:
    """This process's peak RSS: Linux's ``VmHWM``. Not ``ru_maxrss``: Linux keeps that across ``exec``, so
    the server started by ``subprocess`` (vfork, exec) would report the store writer's peak before it."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def timed(url: str) -> tuple[float, bytes]:
    start = time.perf_counter()
    with urllib.request.urlopen(url, timeout=120) as response:
        body = response.read()
        assert response.status == 200, (url, response.status)
    return time.perf_counter() - start, body


def measure(run_dir: str, rounds: int) -> dict[str, list[float]]:
    """Starts the server here and asks it as the page does; seconds per answer, by what was asked."""
    from logbus.plugins.local import ViewerApp, make_viewer_server

    global BASELINE_RSS_MB
    BASELINE_RSS_MB = peak_rss_mb()
    started = time.perf_counter()
    app = ViewerApp([run_dir])
    server = make_viewer_server(app, "127.0.0.1", 0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_port}"
    runs = json.loads(timed(base + "/api/runs")[1])
    table = runs["runs"][0]["tables"][0]
    steps = table["steps"]
    _, first = timed(f"{base}/api/rows?run=0&key=samples/eval&size=50")
    times: dict[str, list[float]] = {"first samples page after start": [time.perf_counter() - started]}
    rng = random.Random(1)
    keys = [row["_sample_key"] for row in json.loads(first)["rows"]]
    pages = max(1, json.loads(first)["total"] // 50)
    for _ in range(rounds):
        step = rng.choice(steps)
        sort = rng.choice(["loss", "confidence", "id", ""])
        outcome = rng.choice(["", "wrong", "right"])
        page = rng.randrange(0, pages)
        for name, path in (
            ("samples page (sort, filter, page)", f"/api/rows?run=0&key=samples/eval&step={step}&sort={sort}"
                                                  f"&desc=1&outcome={outcome}&page={page}&size=50"),
            ("samples page, flipped since previous eval", f"/api/rows?run=0&key=samples/eval&step={step}&only=flipped"
                                                          if step != steps[0] else None),
            ("samples page, wrong at every eval", f"/api/rows?run=0&key=samples/eval&step={step}&only=wrong_always"),
            ("one sample across every eval", f"/api/history?run=0&key=samples/eval&sample={rng.choice(keys)}"),
            ("confusion matrix of an eval", f"/api/confusion?run=0&key=samples/eval&step={step}"),
            ("runs and tables", "/api/runs"),
            ("metrics (all series)", "/api/metrics"),
            ("the page (index.html)", "/"),
        ):
            if path is None:
                continue
            seconds, body = timed(base + path)
            times.setdefault(name, []).append(seconds)
            if name == "samples page (sort, filter, page)":
                rows = json.loads(body)["rows"]
                keys = [row["_sample_key"] for row in rows] or keys
                if rows:
                    cell = rows[0]["image"]
                    seconds, _ = timed(f"{base}/img/0/{cell['pack']}/{cell['hash']}")
                    times.setdefault("one image (PNG from a pack)", []).append(seconds)
    server.shutdown()
    return times


def report(times: dict[str, list[float]]) -> None:
    width = max(map(len, times))
    for name, values in times.items():
        ms = [v * 1000 for v in values]
        spread = f"  ({min(ms):.0f}-{max(ms):.0f}, n={len(ms)})" if len(ms) > 1 else ""
        print(f"  {name.ljust(width)}  {statistics.median(ms):8.1f} ms{spread}")
    print(f"  {'peak RSS of the server process'.ljust(width)}  "
          f"{peak_rss_mb():8.0f} MB "
          f"(after imports, before serving: {BASELINE_RSS_MB:.0f} MB)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--evals", type=int, default=EVALS)
    parser.add_argument("--rows", type=int, default=ROWS)
    parser.add_argument("--rounds", type=int, default=ROUNDS)
    parser.add_argument("--serve", help=argparse.SUPPRESS)  # the child: measure this run folder
    args = parser.parse_args()
    if args.serve:
        from logbus.cli import lean_view_process

        lean_view_process()  # as `logbus view` serves: no pandas (pyarrow would load it)
        report(measure(args.serve, args.rounds))
        return 0
    with tempfile.TemporaryDirectory() as root:
        start = time.perf_counter()
        run_dir = write_store(root, args.evals, args.rows)
        print(f"store: {args.evals} evals x {args.rows:,} rows = {args.evals * args.rows:,} rows, written by the "
              f"local backend in {time.perf_counter() - start:.1f} s")
        # A fresh process serves it: its peak RSS is the server's, not the writer's.
        return subprocess.call([sys.executable, __file__, "--serve", run_dir, "--rounds", str(args.rounds)])


def test_the_benchmark_answers_what_it_asks(tmp_path):
    """At a small scale: every answer the benchmark times is a 200 with the rows it asked for."""
    run_dir = write_store(str(tmp_path), 3, 200)
    times = measure(run_dir, 2)
    assert {"samples page (sort, filter, page)", "one sample across every eval", "confusion matrix of an eval",
            "one image (PNG from a pack)"} <= set(times)


if __name__ == "__main__":
    sys.exit(main())
