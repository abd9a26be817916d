"""``logbus view``: the server's JSON API through werkzeug's test Client, and every page in a real
headless Chromium against the server listening on an ephemeral port (the DOM dumped after the page's
script ran, ``data-viewer="ready"``), asserting on what a person sees.

The pages keep their state in the URL hash (``#samples?run=0&key=...&truth=3``): what a click does is
follow a link or change a select, which sets the hash, so each view is opened by its URL here.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import threading
from html import unescape
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import torch
from werkzeug.test import Client

import logbus
from logbus.cli import main as cli_main
from logbus.demo import load_digits
from logbus.plugins.local import ViewerApp, make_viewer_server

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
NO_CHROMIUM = ("viewer browser tests: no chromium on PATH; install one to run them (Debian: apt-get install "
               "chromium, which `make test` does as root)")
SCRIPT = "<script>alert(1)</script>"
ONERROR = '<img src=x onerror="document.documentElement.dataset.pwned=1">'
CLASS_NAMES = ["zero", "one", SCRIPT, "three", ONERROR]
STEPS = (100, 200, 300)
SAMPLES = 40
SEG_LABELS = {0: "background", 1: "ink", 2: "<b>edge</b>"}
# Screenshots of failed browser tests: an ignored folder (.gitignore), named in the failure.
ARTIFACTS = Path(__file__).resolve().parents[2] / ".pytest-artifacts" / "viewer"


# -- a store, written by logbus itself --------------------------------------------------------------------
def predictions(step: int, truth: np.ndarray) -> np.ndarray:
    """Predictions that improve with the step: sample i is right from eval (i % 4) on (3: never)."""
    right_from = np.arange(len(truth)) % 4
    return np.where(right_from <= STEPS.index(step), truth, (truth + 1) % len(CLASS_NAMES))


def segmentation_masks() -> tuple[torch.Tensor, torch.Tensor]:
    """Ground truth (a square of ink with an edge class inside) and a prediction that misses its top half."""
    truth = torch.zeros(4, 16, 16, dtype=torch.long)
    truth[:, 4:12, 4:12] = 1
    truth[:, 6:10, 6:10] = 2
    prediction = truth.clone()
    prediction[:, 4:8, 4:12] = 0
    return truth, prediction


def expected_seg_errors() -> int:
    truth, prediction = segmentation_masks()
    return int((truth[0] != prediction[0]).sum())


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A run on two ranks written by logbus's local backend: metrics (the user's, logbus's own counters,
    a time/ one), a classification sample table at three evals (half the samples on each rank), a
    segmentation sample table and a table of token texts."""
    root = tmp_path_factory.mktemp("viewer")
    images, _ = load_digits()
    generator = torch.Generator().manual_seed(0)
    truth = torch.arange(SAMPLES) % len(CLASS_NAMES)
    for rank in (0, 1):
        with logbus.start_run("demo", backends=[("local", {"root": str(root)})], rank=rank, world_size=2) as run:
            if rank == 0:
                for step in range(1, 301):
                    run.log({"train/loss": 2.0 / step, "eval/accuracy": step / 300, "time/epoch": step // 100,
                             f"train/a_very_long_metric_name_{'x' * 40}": step % 7}, step)
            samples = run.samples("classification", num_samples=SAMPLES, class_names=CLASS_NAMES)
            part = slice(rank * SAMPLES // 2, (rank + 1) * SAMPLES // 2)
            for step in STEPS:
                prediction = torch.from_numpy(predictions(step, truth.numpy()))[part]
                scale = 1 + 4 * torch.rand(len(prediction), 1, generator=generator)  # confidence varies
                logits = torch.nn.functional.one_hot(prediction, len(CLASS_NAMES)).float() * scale
                samples.add(images[:SAMPLES][part], truth[part], logits, label="val")
                samples.log("val", step=step)
            if rank == 0:
                seg_truth, seg_prediction = segmentation_masks()
                seg_images = torch.nn.functional.interpolate(images[:4], size=(16, 16))
                logits = torch.nn.functional.one_hot(seg_prediction, 3).permute(0, 3, 1, 2).float() * 5
                segments = run.samples("segmentation", num_samples=4, class_names=SEG_LABELS)
                segments.add(seg_images, seg_truth, logits, label="seg")
                segments.log("seg", step=300)
                run.log_table("samples/tokens", ["input", "target", "prediction", "token_accuracy"],
                              [["the cat sat", "on the mat", "on a mat", 0.66], ["a dog ran", "far away", "far away", 1.0],
                               [SCRIPT, "x", "y", 0.0]], step=300)
                run.log_table("notes", ["text"], [["logged without a step"]])
    return root


def rank_folders(run_dir: Path) -> list[str]:
    """The run's two folders, one per rank, as the local backend named them."""
    folders = sorted(str(path) for path in run_dir.iterdir() if path.name.startswith("demo"))
    assert len(folders) == 2, folders
    return folders


@pytest.fixture(scope="module")
def app(run_dir) -> ViewerApp:
    return ViewerApp(rank_folders(run_dir))


@pytest.fixture(scope="module")
def client(app) -> Client:
    return Client(app)


def get_json(client: Client, path: str, **params) -> dict:
    response = client.get(path, query_string=params)
    assert response.status_code == 200, response.get_data(as_text=True)
    return response.get_json()


def rows_at(run_dir: Path, step: int) -> list[dict]:
    """The classification rows of one eval as ``logbus.read_table`` reads them (both ranks)."""
    frame = logbus.read_table(rank_folders(run_dir), "samples/val", step=step)
    return frame.drop(columns=["image"]).to_dict("records")


def key_of(run_dir: Path, sample: int) -> str:
    """The stable key of the fixture's sample ``sample`` (rank 0 logs samples 0-19, rank 1 20-39)."""
    return rows_at(run_dir, STEPS[0])[sample]["_sample_key"]


def seg_key(run_dir: Path) -> str:
    return logbus.read_table(rank_folders(run_dir), "samples/seg")["_sample_key"][1]


# -- the JSON API ----------------------------------------------------------------------------------
def test_runs_lists_the_tables_of_both_ranks_merged(client):
    body = get_json(client, "/api/runs")
    assert [(run["name"], run["ranks"]) for run in body["runs"]] == [("demo", 2)]
    tables = {table["key"]: table for table in body["runs"][0]["tables"]}
    assert set(tables) == {"samples/val", "samples/seg", "samples/tokens", "notes"}
    assert tables["samples/val"]["steps"] == list(STEPS)
    assert tables["samples/val"]["kind"] == "classification" and tables["samples/seg"]["kind"] == "segmentation"
    assert tables["samples/val"]["rows_files"] == 6  # three evals, two ranks


def test_rows_are_paged_filtered_and_sorted_by_the_server(client, run_dir):
    expected = rows_at(run_dir, 200)
    page = get_json(client, "/api/rows", run=0, key="samples/val", step=200, size=7, page=1, sort="confidence", desc=1)
    by_confidence = sorted(expected, key=lambda row: -row["confidence"])
    assert page["total"] == SAMPLES and [row["_sample_key"] for row in page["rows"]] == [
        row["_sample_key"] for row in by_confidence[7:14]]
    wrong = get_json(client, "/api/rows", run=0, key="samples/val", step=200, outcome="wrong", truth=1, size=500)
    assert sorted(row["_sample_key"] for row in wrong["rows"]) == sorted(
        row["_sample_key"] for row in expected if not row["correct"] and row["truth"] == 1)
    assert wrong["total"] == len(wrong["rows"]) > 0


def test_one_sample_across_evals_and_the_flip_filters(client, run_dir):
    history = get_json(client, "/api/history", run=0, key="samples/val", sample=key_of(run_dir, 5))
    assert [row["_step"] for row in history["rows"]] == list(STEPS)
    assert [row["correct"] for row in history["rows"]] == [False, True, True]  # 5 % 4 == 1: right from eval 1
    flipped = get_json(client, "/api/rows", run=0, key="samples/val", step=200, only="flipped", size=500)
    expected = sorted(key_of(run_dir, i) for i in range(SAMPLES) if i % 4 == 1)
    assert sorted(row["_sample_key"] for row in flipped["rows"]) == expected
    assert all(row["_vs"]["prediction"] != row["prediction"] for row in flipped["rows"])
    always = get_json(client, "/api/rows", run=0, key="samples/val", step=300, only="wrong_always", size=500)
    assert sorted(row["_sample_key"] for row in always["rows"]) == sorted(
        key_of(run_dir, i) for i in range(SAMPLES) if i % 4 == 3)


def test_history_matches_the_whole_key_only(client, run_dir):
    """The key index finds rows by fingerprint; what it reads is matched by the full key, so a key's
    prefix, or the key with more after it, finds nothing."""
    key = key_of(run_dir, 25)
    for other in (key[:-1], key + "0", key[:8], "x" * 200):
        assert get_json(client, "/api/history", run=0, key="samples/val", sample=other)["rows"] == []
    assert len(get_json(client, "/api/history", run=0, key="samples/val", sample=key)["rows"]) == len(STEPS)


def test_confusion_matrix_of_an_eval_counts_pairs_per_sample_and_per_pixel(client, run_dir):
    body = get_json(client, "/api/confusion", run=0, key="samples/val", step=100)
    counts = {(t, p): n for t, p, n in zip(body["truth"], body["prediction"], body["count"])}
    expected: dict = {}
    for row in rows_at(run_dir, 100):
        expected[(row["truth"], row["prediction"])] = expected.get((row["truth"], row["prediction"]), 0) + 1
    assert counts == expected and body["unit"] == "samples" and body["labels"]["2"] == SCRIPT
    pixels = get_json(client, "/api/confusion", run=0, key="samples/seg", step=300)
    off_diagonal = sum(n for t, p, n in zip(pixels["truth"], pixels["prediction"], pixels["count"]) if t != p)
    assert pixels["unit"] == "pixels" and off_diagonal == 4 * expected_seg_errors()


def test_images_are_served_from_the_packs_as_png_and_masks_as_class_ids(client, app):
    row = get_json(client, "/api/rows", run=0, key="samples/seg", step=300, size=1)["rows"][0]
    from io import BytesIO

    from PIL import Image as PILImage

    image = client.get(f"/img/0/{row['image']['pack']}/{row['image']['hash']}")
    assert image.status_code == 200 and image.content_type == "image/png"
    assert PILImage.open(BytesIO(image.data)).size == (16, 16)
    mask = next(m for m in row["image"]["masks"] if m["name"] == "prediction")
    ids = np.asarray(PILImage.open(BytesIO(client.get(f"/img/0/{mask['pack']}/{mask['hash']}?as=mask").data))).astype(np.int64)
    assert sorted(np.unique(ids[..., 0] + 256 * ids[..., 1]).tolist()) == [0, 1, 2]


@pytest.mark.parametrize("url", ["/img/0/..%2F..%2Fetc/passwd", "/img/0/p0000/..", "/img/1/p0000/abc",
                                 "/static/..%2Fviewer_template.html", "/api/rows?key=../../etc", "/static/x.js"])
def test_no_url_reaches_a_file_by_path(client, url):
    response = client.get(url)
    assert response.status_code in (400, 404), (url, response.status_code)
    assert response.headers["Content-Security-Policy"].startswith("default-src 'self'")


def test_bad_arguments_are_named(client):
    body = client.get("/api/rows", query_string={"run": 0, "key": "samples/val", "size": "many"}).get_json()
    assert body["error"] == "size: expected an integer, got 'many'"
    body = client.get("/api/rows", query_string={"run": 0, "key": "samples/val", "sort": "nope"}).get_json()
    assert "sort: table 'samples/val' has no column 'nope'" == body["error"]


def test_a_table_written_while_the_run_goes_on_appears(tmp_path):
    """The server started on a run that is still logging lists each table once its file is in place."""
    def keys(client: Client) -> list[str]:
        return [t["key"] for t in get_json(client, "/api/runs")["runs"][0]["tables"]]

    def wait_for(client: Client, expected: list[str]) -> list[str]:
        for _ in range(200):  # the backend writes on its own thread: poll, never assert on time
            if keys(client) == expected:
                break
            threading.Event().wait(0.05)
        return keys(client)

    with logbus.start_run("live", backends=[("local", {"root": str(tmp_path)})]) as run:
        run.log_table("first", ["x"], [[1], [2]], step=1)
        run.log({"loss": 1.0}, 1)
        for _ in range(200):  # the folder is made on the backend's thread
            if (tmp_path / "live" / "run.json").exists():
                break
            threading.Event().wait(0.05)
        client = Client(ViewerApp([str(tmp_path / "live")]))
        assert wait_for(client, ["first"]) == ["first"]
        run.log_table("second", ["x"], [[3]], step=2)
        assert wait_for(client, ["first", "second"]) == ["first", "second"]
        steps, _, values = get_json(client, "/api/metrics")["runs"][0]["series"]["loss"]
        assert (steps, values) == ([1], [1.0])
        run.log({"loss": 0.5}, 2)
        for _ in range(200):  # the answer kept from the last ask is not served once the file grew
            if get_json(client, "/api/metrics")["runs"][0]["series"]["loss"][0] == [1, 2]:
                break
            threading.Event().wait(0.05)
    steps, _, values = get_json(client, "/api/metrics")["runs"][0]["series"]["loss"]
    assert (steps, values) == ([1, 2], [1.0, 0.5])


def test_the_command_refuses_what_is_not_a_run_folder(tmp_path, capsys):
    assert cli_main(["view", "--no-browser", str(tmp_path / "missing")]) == 2
    assert "run_dir: no such folder" in capsys.readouterr().err
    (tmp_path / "old" / "tables").mkdir(parents=True)
    (tmp_path / "old" / "run.json").write_text('{"name": "old", "format_version": 1}')
    assert cli_main(["view", "--no-browser", str(tmp_path / "old")]) == 2
    assert "format 1" in capsys.readouterr().err


def test_the_viewer_process_loads_neither_pandas_nor_torch_and_the_backend_no_server(run_dir):
    """`logbus view` answers a page with pyarrow alone (pandas is 32 MB of its RSS, torch far more); the
    training process that imports the local backend loads no werkzeug."""
    import sys

    script = ("import sys; from logbus.cli import lean_view_process; lean_view_process(); "
              "from werkzeug.test import Client; from logbus.plugins.local import ViewerApp; "
              f"c = Client(ViewerApp({rank_folders(run_dir)!r})); "
              "assert c.get('/api/rows', query_string={'key': 'samples/val', 'only': 'wrong_always'}).status_code == 200; "
              "assert c.get('/api/runs').status_code == 200; "
              "print(sorted(m for m in ('pandas', 'torch') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and result.stdout.strip() == "[]", (result.stdout, result.stderr[-2000:])
    script = "import sys, logbus.plugins.local; print('werkzeug' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.stdout.strip() == "False", result.stderr[-2000:]


def test_the_command_serves_until_ctrl_c(run_dir):
    """`logbus view` as a user runs it: it prints the URL, answers there, and Ctrl-C stops it cleanly."""
    import signal
    import sys
    import urllib.request

    command = [sys.executable, "-m", "logbus.cli", "view", *rank_folders(run_dir), "--port", "0", "--no-browser"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = process.stdout.readline()
        url = re.search(r"http://127\.0\.0\.1:\d+/", line)
        assert url, line
        with urllib.request.urlopen(url.group(0) + "api/runs", timeout=60) as response:
            assert json.load(response)["runs"][0]["name"] == "demo"
    finally:
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=60)
    assert process.returncode == 0 and err.strip().endswith("logbus view: stopped"), err


# -- in a real browser --------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def chromium() -> str:
    """A headless Chromium from PATH (`make test` installs Debian's with apt-get where it can). Without one
    the browser tests fail, saying how to get it: a viewer nobody could open in a browser is not tested."""
    found = next(filter(None, map(shutil.which, CHROMIUM_NAMES)), None)
    if found is None:
        pytest.fail(NO_CHROMIUM)
    return found


@pytest.fixture(scope="module")
def server(app):
    """The app behind werkzeug's threaded server on an ephemeral loopback port, as `logbus view` runs it."""
    httpd = make_viewer_server(app, "127.0.0.1", 0)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_port}/"
    httpd.shutdown()


def chromium_args(chromium: str, profile: Path) -> list[str]:
    return [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            "--disable-dev-shm-usage", f"--user-data-dir={profile}", "--virtual-time-budget=10000"]


class Dom(HTMLParser):
    """Elements of a dumped DOM by id and class, with their text."""

    def __init__(self, dom: str):
        super().__init__()
        self.dom, self.elements, self.stack = dom, [], []
        self.feed(dom)

    def handle_starttag(self, tag, attrs):
        element = {"tag": tag, **{k: v or "" for k, v in attrs}, "text": ""}
        self.elements.append(element)
        if tag not in ("img", "input", "br", "meta", "link", "canvas"):
            self.stack.append(element)

    def handle_endtag(self, tag):
        if any(element["tag"] == tag for element in self.stack):  # </canvas> closes nothing on the stack
            while self.stack.pop()["tag"] != tag:
                pass

    def handle_data(self, data):
        for element in self.stack:
            element["text"] += data

    def find(self, **attrs) -> list[dict]:
        return [e for e in self.elements if all(k in e and (v is True or v in e[k].split()) for k, v in attrs.items())]

    def one(self, **attrs) -> dict:
        found = self.find(**attrs)
        assert len(found) == 1, (attrs, len(found))
        return found[0]


def open_page(chromium: str, url: str, profile: Path) -> Dom:
    result = subprocess.run([*chromium_args(chromium, profile), "--dump-dom", url], capture_output=True, text=True,
                            timeout=120)
    try:
        assert result.returncode == 0, result.stderr[-3000:]
        dom = Dom(result.stdout)
        root = dom.find(tag="html")[0]
        assert root.get("data-viewer") == "ready", result.stdout[-3000:]
        assert "data-pwned" not in root, "a label from the run folder ran as HTML"
    except AssertionError as error:
        raise AssertionError(f"{error}\nscreenshot of the page: {screenshot(chromium, url, profile)}") from None
    return dom


def screenshot(chromium: str, url: str, profile: Path) -> str:
    """What ``url`` shows, kept under .pytest-artifacts/viewer/ for a look after a failure."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shot = ARTIFACTS / (re.sub(r"[^A-Za-z0-9]+", "-", url.split("/", 3)[-1])[:80].strip("-") + ".png")
    result = subprocess.run([*chromium_args(chromium, profile), f"--screenshot={shot}", "--window-size=1200,900", url],
                            capture_output=True, text=True, timeout=120)
    return str(shot) if result.returncode == 0 and shot.exists() else f"none ({result.stderr[-300:]})"


def test_metrics_page_leads_with_the_users_groups_and_folds_logbus_and_time(chromium, server, tmp_path):
    dom = open_page(chromium, server + "#metrics", tmp_path / "profile")
    groups = [e["data-group"] for e in dom.find(tag="details")]
    assert groups == ["eval/", "train/", "logbus and time/"]
    assert "open" not in dom.find(tag="details")[-1]
    titles = [e["text"] for e in dom.find(tag="h3")]
    assert titles == ["eval/accuracy", "train/a_very_long_metric_name_" + "x" * 40, "train/loss"]
    assert len(dom.find(tag="canvas")) == 3  # uPlot drew one chart each


def test_metrics_of_two_runs_are_overlaid_on_a_wall_time_axis(chromium, tmp_path):
    for name, scale in (("first-run", 1.0), ("second-run", 2.0)):
        with logbus.start_run(name, backends=[("local", {"root": str(tmp_path / "runs")})]) as run:
            for step in range(20):
                run.log({"train/loss": scale / (step + 1)}, step)
    httpd = make_viewer_server(ViewerApp([str(tmp_path / "runs" / "first-run"), str(tmp_path / "runs" / "second-run")]),
                               "127.0.0.1", 0)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{httpd.server_port}/#metrics?x=time&smooth=0.5"
        dom = open_page(chromium, url, tmp_path / "profile")
    finally:
        httpd.shutdown()
    [chart] = dom.find(**{"data-metric": "train/loss"})
    assert "first-run" in chart["text"] and "second-run" in chart["text"]  # the legend names both runs
    assert "seconds since start" in chart["text"]
    assert dom.one(id="metrics-smooth")["value"] == "0.5"


def test_samples_page_shows_a_filtered_sorted_page_of_an_eval(chromium, server, run_dir, tmp_path):
    url = server + "#samples?run=0&key=samples/val&step=200&outcome=wrong&sort=confidence"
    dom = open_page(chromium, url, tmp_path / "profile")
    expected = sorted((row for row in rows_at(run_dir, 200) if not row["correct"]), key=lambda r: r["confidence"])
    shown = [e["data-sample"] for e in dom.find(tag="tr", **{"class": "row"})]
    assert shown == [row["_sample_key"] for row in expected]
    assert all("wrong" in e["class"].split() for e in dom.find(tag="tr", **{"class": "row"}))
    assert dom.one(id="page-count")["text"] == f"rows 1–{len(expected)} of {len(expected)} (page 1 of 1)"
    assert len(dom.find(tag="img", **{"class": "thumb"})) == len(expected)
    assert any(SCRIPT in e["text"] for e in dom.find(tag="td"))  # the hostile class name, shown as text


def test_a_table_logged_without_a_step_is_shown(chromium, server, client, tmp_path):
    assert get_json(client, "/api/rows", run=0, key="notes", step="none")["rows"][0]["text"] == "logged without a step"
    dom = open_page(chromium, server + "#samples?run=0&key=notes&step=none", tmp_path / "profile")
    assert [e["text"] for e in dom.find(tag="tr", **{"class": "row"})] == ["logged without a step–"]


def test_token_table_text_search(chromium, server, tmp_path):
    dom = open_page(chromium, server + "#samples?run=0&key=samples/tokens&q=DOG", tmp_path / "profile")
    rows = dom.find(tag="tr", **{"class": "row"})
    assert len(rows) == 1 and "a dog ran" in rows[0]["text"]


def test_sample_page_follows_one_sample_across_evals(chromium, server, run_dir, tmp_path):
    url = server + f"#sample?run=0&key=samples/val&sample={key_of(run_dir, 25)}"  # on rank 1
    dom = open_page(chromium, url, tmp_path / "profile")
    rows = dom.find(tag="tr", **{"class": "row"})
    assert [r["data-step"] for r in rows] == [str(s) for s in STEPS]
    assert [("wrong" in r["class"], "flipped" in r["class"]) for r in rows] == [(True, False), (False, True),
                                                                                (False, False)]


def test_confusion_page_links_each_cell_to_its_samples(chromium, server, run_dir, tmp_path):
    dom = open_page(chromium, server + "#confusion?run=0&key=samples/val&step=100", tmp_path / "profile")
    links = {(int(e["data-truth"]), int(e["data-prediction"])): e for e in dom.find(tag="td") if e["text"]}
    expected: dict = {}
    for row in rows_at(run_dir, 100):
        expected[(row["truth"], row["prediction"])] = expected.get((row["truth"], row["prediction"]), 0) + 1
    assert {k: int(v["text"]) for k, v in links.items()} == expected
    anchors = [a["href"] for a in dom.find(tag="a") if a["href"].startswith("#samples?")]
    assert "#samples?run=0&key=samples%2Fval&step=100&truth=1&prediction=2" in anchors
    assert {e["text"] for e in dom.find(tag="th", **{"class": "label"})} >= {f"2 {SCRIPT}", f"4 {ONERROR}"}


def test_segmentation_layers_class_toggles_and_error_map(chromium, server, run_dir, tmp_path):
    dom = open_page(chromium, server + f"#sample?run=0&key=samples/seg&sample={seg_key(run_dir)}", tmp_path / "profile")
    assert {e["id"] for e in dom.find(tag="input") if e.get("id", "").startswith("layer-")} == {
        "layer-image", "layer-truth", "layer-prediction", "layer-error", "layer-opacity"}
    toggles = [e for e in dom.find(tag="input") if "data-class" in e]
    assert [(e["data-class"], "checked" in e) for e in toggles] == [("0", False), ("1", True), ("2", True)]
    assert dom.one(id="error-count")["text"] == f"{expected_seg_errors()} of 256 pixels wrong"
    assert any(e["text"].strip() == "2 <b>edge</b>" for e in dom.find(tag="label", **{"class": "class-toggle"}))


@pytest.mark.parametrize("page", ["metrics", "samples", "confusion", "sample"])
def test_screenshot_of_each_page(chromium, server, run_dir, tmp_path, page):
    fragment = {"metrics": "#metrics", "samples": "#samples?run=0&key=samples/val&step=200",
                "confusion": "#confusion?run=0&key=samples/val&step=300",
                "sample": f"#sample?run=0&key=samples/seg&sample={seg_key(run_dir)}"}[page]
    shot = tmp_path / f"{page}.png"
    result = subprocess.run([*chromium_args(chromium, tmp_path / "profile"), f"--screenshot={shot}",
                             "--window-size=1200,900", server + fragment], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and shot.stat().st_size > 10_000, result.stderr[-2000:]
    keep = Path(__file__).resolve().parents[2] / "build" / "viewer-screenshots"
    keep.mkdir(parents=True, exist_ok=True)
    shutil.copy(shot, keep / shot.name)


def test_the_page_loads_nothing_from_elsewhere():
    from importlib import resources

    folder = resources.files("logbus.plugins.local").joinpath("viewer")
    text = "".join(folder.joinpath(n).read_text() for n in ("index.html", "viewer.js", "viewer.css"))
    assert not re.search(r"https?://", text.replace("https://github.com/leeoniya/uPlot", ""))
    assert "innerHTML" not in text


# -- clicking through, with Playwright driving the same Chromium -----------------------------------------
@pytest.fixture(scope="module")
def browser_page(chromium, server):
    """A Playwright page in the Chromium on PATH (``executable_path``: nothing is downloaded). A failing
    test leaves a screenshot of what the page showed in build/viewer-screenshots/."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=["--no-sandbox", "--disable-gpu"])
        page = browser.new_page(viewport={"width": 1200, "height": 900})
        errors: list[str] = []
        page.on("pageerror", lambda error: errors.append(str(error)))
        page.on("console", lambda message: message.type == "error" and errors.append(message.text))
        yield page, server, errors
        browser.close()


def ready(page) -> None:
    """Waits until the page has rendered the URL it is at: a click changes the hash at once, but the page
    hears of it a moment later (hashchange), so "ready" alone may still be the previous view's."""
    page.wait_for_function("() => document.documentElement.dataset.viewer === 'ready' && "
                           "document.documentElement.dataset.rendered === location.hash", timeout=30_000)


@pytest.fixture
def clicked(browser_page, request):
    page, server, errors = browser_page
    errors.clear()

    def failed_shot() -> str:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        shot = ARTIFACTS / f"{re.sub(r'[^A-Za-z0-9_.-]+', '-', request.node.name)}.png"
        page.screenshot(path=str(shot), full_page=True)
        return str(shot)

    request.node.screenshot_on_failure = failed_shot  # tests/conftest.py takes it and names it in the failure
    yield page, server
    shot = Path(__file__).resolve().parents[2] / "build" / "viewer-screenshots" / f"{request.node.name}.png"
    shot.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(shot))  # kept for a look at what the last step showed, failed or not
    assert not errors, errors  # no script error and no refused load (CSP) on the way


def test_clicking_from_a_filtered_page_to_one_samples_history(clicked, run_dir):
    page, server = clicked
    page.goto(server + "#samples?run=0&key=samples/val&step=200")
    ready(page)
    page.select_option("#filter-outcome", "wrong")
    ready(page)
    page.click("a.sort[data-column=loss]")
    ready(page)
    expected = sorted((row for row in rows_at(run_dir, 200) if not row["correct"]), key=lambda row: row["loss"])
    assert page.locator("tr.row").evaluate_all("rows => rows.map(r => r.dataset.sample)") == [
        row["_sample_key"] for row in expected]
    page.click("tr.row >> nth=0 >> a.history")
    ready(page)
    steps = page.locator("#history-table tr.row").evaluate_all("rows => rows.map(r => r.dataset.step)")
    assert steps == [str(step) for step in STEPS]
    page.go_back()
    ready(page)
    assert page.locator("#filter-outcome").input_value() == "wrong"


def test_clicking_a_confusion_cell_lists_its_samples(clicked, run_dir):
    page, server = clicked
    page.goto(server + "#confusion?run=0&key=samples/val&step=100")
    ready(page)
    page.click("td[data-truth='1'][data-prediction='2'] a")
    ready(page)
    shown = page.locator("tr.row").evaluate_all("rows => rows.map(r => r.dataset.sample)")
    assert sorted(shown) == sorted(row["_sample_key"] for row in rows_at(run_dir, 100)
                                   if (row["truth"], row["prediction"]) == (1, 2))
    assert page.locator("#filter-truth").input_value() == "1"


def test_toggling_segmentation_layers_changes_the_pixels(clicked, run_dir):
    page, server = clicked
    page.goto(server + f"#sample?run=0&key=samples/seg&sample={seg_key(run_dir)}")
    ready(page)

    def red_pixels() -> int:  # pure red: the error map's colour
        return page.evaluate("""() => { const c = document.getElementById('segmentation-canvas');
            const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data; let n = 0;
            for (let i = 0; i < d.length; i += 4) if (d[i] === 255 && d[i + 1] === 0 && d[i + 2] === 0) n++;
            return n; }""")

    for layer in ("image", "prediction"):
        page.uncheck(f"#layer-{layer}")
    page.fill("#layer-opacity", "1")
    page.dispatch_event("#layer-opacity", "input")
    assert red_pixels() == 0
    page.check("#layer-error")
    scale = (page.evaluate("document.getElementById('segmentation-canvas').width") // 16) ** 2
    assert red_pixels() == expected_seg_errors() * scale  # each wrong pixel, drawn scale x scale
    truth, prediction = segmentation_masks()
    page.uncheck("input[data-class='1']")  # errors where the truth is ink are hidden with its class
    assert red_pixels() == int(((truth[0] != prediction[0]) & (truth[0] == 2)).sum()) * scale > 0


# -- the exported page, opened from file:// with no server ------------------------------------------------
@pytest.fixture(scope="module")
def exported(run_dir, tmp_path_factory) -> Path:
    """`logbus view --export` of the fixture run: the classification table at two evals (bounded to 70
    rows shared by the two: the first 35 of each) and the segmentation table."""
    folder = tmp_path_factory.mktemp("export")
    target = folder / "report.html"
    before = sorted((str(p), p.stat().st_mtime_ns) for p in run_dir.rglob("*"))
    assert cli_main(["view", *rank_folders(run_dir), "--export", str(target), "--table", "samples/val",
                     "--table", "samples/seg", "--step", "200", "--step", "300", "--max-rows", "70"]) == 0
    assert sorted((str(p), p.stat().st_mtime_ns) for p in run_dir.rglob("*")) == before  # run folders untouched
    return target


def test_export_is_one_file_that_names_nothing_outside_itself(exported):
    assert [p.name for p in exported.parent.iterdir()] == ["report.html"]  # no temp file left beside it
    html = exported.read_text(encoding="utf-8")
    assert not re.search(r"https?://", html)
    assert not re.search(r"""(?:src|href)=["'](?!data:|#)""", html)  # every image a data: URI, links in-page
    policy = re.search(r'<meta http-equiv="Content-Security-Policy" content="([^"]*)">', html)
    assert policy and unescape(policy.group(1)).startswith("default-src 'none'; script-src 'sha256-")
    assert SCRIPT not in html and ONERROR not in html  # labels only as JSON with < escaped
    assert html.count("<script") == 2  # the data (JSON, not run) and the page's own script


def test_export_refuses_bad_arguments(run_dir, tmp_path, capsys):
    folders = rank_folders(run_dir)
    assert cli_main(["view", *folders, "--export", str(tmp_path / "a.html"), "--table", "nope"]) == 2
    assert "table: expected keys these runs have, got ['nope']" in capsys.readouterr().err
    assert cli_main(["view", *folders, "--export", str(tmp_path / "a.html"), "--max-rows", "0"]) == 2
    assert "max_rows: expected at least 1, got 0" in capsys.readouterr().err
    assert cli_main(["view", *folders, "--export", str(tmp_path / "missing" / "a.html")]) == 2
    assert "path: no such folder" in capsys.readouterr().err
    assert cli_main(["view", *folders, "--step", "200"]) == 2
    assert "--table, --step and --max-rows: expected with --export" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


def test_exported_page_opens_from_file_with_rows_images_and_escaped_labels(clicked, exported, run_dir):
    page, _ = clicked
    page.goto(exported.as_uri() + "#samples?run=0&key=samples/val&step=200")
    ready(page)
    assert page.locator("tr.row").evaluate_all("rows => rows.map(r => r.dataset.sample)") == [
        row["_sample_key"] for row in rows_at(run_dir, 200)[:35]]
    widths = page.evaluate("""async () => Promise.all([...document.querySelectorAll('img.thumb')].map(async image => {
        image.loading = 'eager'; await image.decode(); return image.naturalWidth; }))""")
    assert len(widths) == 35 and all(width > 0 for width in widths)
    texts = page.locator("td").all_text_contents()
    assert any(SCRIPT in text for text in texts) and any(ONERROR in text for text in texts)  # shown as text
    assert page.evaluate("document.documentElement.dataset.pwned") is None
    page.select_option("#choose-step", "300")
    ready(page)
    assert page.locator("tr.row").count() == 35  # the bound: 70 rows of the table, shared by its two steps
    page.select_option("#filter-outcome", "wrong")
    ready(page)
    expected = [row["_sample_key"] for row in rows_at(run_dir, 300)[:35] if not row["correct"]]
    assert page.locator("tr.row").evaluate_all("rows => rows.map(r => r.dataset.sample)") == expected
    page.goto(exported.as_uri() + "#confusion?run=0&key=samples/val&step=200")
    ready(page)
    assert {f"2 {SCRIPT}", f"4 {ONERROR}"} <= set(page.locator("th.label").all_text_contents())
    page.goto(exported.as_uri() + f"#sample?run=0&key=samples/seg&sample={seg_key(run_dir)}")
    ready(page)
    assert page.locator("#error-count").text_content() == f"{expected_seg_errors()} of 256 pixels wrong"
