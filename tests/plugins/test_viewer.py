"""``logbus view``: the server's JSON API through werkzeug's test Client, and every page in a real
headless Chromium against the server listening on an ephemeral port (the DOM dumped after the page's
script ran, ``data-viewer="ready"``), asserting on what a person sees.

The pages keep their state in the URL hash (``#samples?run=0&key=...&truth=3``): what a click does is
follow a link or change a select, which sets the hash, so each view is opened by its URL here.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import threading
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pyarrow.dataset as ds
import pytest
from viewer_store_fixture import FixtureRun
from werkzeug.serving import make_server
from werkzeug.test import Client

from logbus.cli import main as cli_main
from logbus.plugins.local import ViewerApp

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
NO_CHROMIUM = ("viewer browser tests: no chromium on PATH; install one to run them (Debian: apt-get install "
               "chromium, which `make test` does as root)")
SCRIPT = "<script>alert(1)</script>"
ONERROR = '<img src=x onerror="document.documentElement.dataset.pwned=1">'
CLASS_NAMES = ["zero", "one", SCRIPT, "three", ONERROR]
STEPS = (100, 200, 300)
SAMPLES = 40
SEG_LABELS = {0: "background", 1: "ink", 2: "<b>edge</b>"}


# -- a store ----------------------------------------------------------------------------------------
def predictions(step: int, truth: np.ndarray) -> np.ndarray:
    """Predictions that improve with the step: sample i is right from eval (i % 4) on, some never."""
    right_from = np.arange(len(truth)) % 4  # 3: never right at the three evals
    at = STEPS.index(step)
    return np.where(right_from <= at, truth, (truth + 1) % len(CLASS_NAMES))


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A run on two ranks: metrics (user's, logbus's own, Composer's time/*), a classification table at
    three evals (rows split over the ranks), a segmentation table and a token table."""
    root = tmp_path_factory.mktemp("viewer")
    rng = np.random.default_rng(0)
    ranks = [FixtureRun(str(root / "demo"), "demo", 0, 2), FixtureRun(str(root / "demo-rank1"), "demo", 1, 2)]
    for step in range(1, 301):
        ranks[0].log(step, {"train/loss": 2.0 / step, "eval/accuracy": step / 300, "logbus/emitted": step,
                            "time/epoch": step // 100, f"train/a_very_long_metric_name_{'x' * 40}": step % 7},
                     time=1.7e9 + step)
    images = rng.integers(0, 255, (SAMPLES, 8, 8, 3), dtype=np.uint8)
    truth = np.arange(SAMPLES) % len(CLASS_NAMES)
    keys = [f"sample{i:03d}" for i in range(SAMPLES)]
    for step in STEPS:
        prediction = predictions(step, truth)
        confidence = rng.random(SAMPLES)
        for rank, run in enumerate(ranks):
            part = slice(rank * SAMPLES // 2, (rank + 1) * SAMPLES // 2)
            run.table("samples/val", step, {
                "id": list(range(SAMPLES))[part], "image": [run.cell(images[i]) for i in range(SAMPLES)[part]],
                "truth": truth[part].tolist(), "prediction": prediction[part].tolist(),
                "confidence": confidence[part].tolist(), "correct": (prediction == truth)[part].tolist(),
                "loss": (1 - confidence[part]).tolist(), "flag": ["low" if c < 0.2 else "" for c in confidence[part]],
                "truth_name": [CLASS_NAMES[t] for t in truth[part]],
                "prediction_name": [CLASS_NAMES[p] for p in prediction[part]]}, keys[part])
    seg_truth = np.zeros((4, 16, 16), np.uint8)
    seg_truth[:, 4:12, 4:12] = 1
    seg_truth[:, 6:10, 6:10] = 2
    seg_prediction = seg_truth.copy()
    seg_prediction[:, 4:8, 4:12] = 0  # the top half of the ink missed: 32 - 8 = ... pixels wrong
    seg_images = rng.integers(0, 255, (4, 16, 16, 3), dtype=np.uint8)
    ranks[0].table("samples/seg", 300, {
        "id": [0, 1, 2, 3],
        "image": [ranks[0].cell(seg_images[i], {"ground_truth": (seg_truth[i], SEG_LABELS),
                                                "prediction": (seg_prediction[i], SEG_LABELS)}, caption=SCRIPT)
                  for i in range(4)],
        "pixel_accuracy": [float((seg_truth[i] == seg_prediction[i]).mean()) for i in range(4)],
        "loss": [0.5] * 4, "confidence": [0.9] * 4, "flag": [""] * 4}, [f"seg{i}" for i in range(4)])
    ranks[0].table("samples/tokens", 300, {
        "id": [0, 1, 2], "input": ["the cat sat", "a dog ran", SCRIPT], "target": ["on the mat", "far away", "x"],
        "prediction": ["on a mat", "far away", "y"], "token_accuracy": [0.66, 1.0, 0.0], "loss": [0.3, 0.1, 2.0],
        "confidence": [0.5, 0.9, 0.1], "flag": ["", "", ""]}, [None, None, None])
    return root


def expected_seg_errors() -> int:
    truth = np.zeros((16, 16), np.uint8)
    truth[4:12, 4:12] = 1
    truth[6:10, 6:10] = 2
    prediction = truth.copy()
    prediction[4:8, 4:12] = 0
    return int((truth != prediction).sum())


@pytest.fixture(scope="module")
def app(run_dir) -> ViewerApp:
    return ViewerApp([str(run_dir / "demo"), str(run_dir / "demo-rank1")])


@pytest.fixture(scope="module")
def client(app) -> Client:
    return Client(app)


def get_json(client: Client, path: str, **params) -> dict:
    response = client.get(path, query_string=params)
    assert response.status_code == 200, response.get_data(as_text=True)
    return response.get_json()


def rows_at(run_dir: Path, step: int) -> list[dict]:
    """The classification rows of one eval, read straight from the Parquet files (both ranks)."""
    files = sorted(run_dir.glob(f"demo*/rows/samples/val/{step:08d}-*.parquet"))
    return ds.dataset([str(f) for f in files]).to_table().to_pylist()


# -- the JSON API ----------------------------------------------------------------------------------
def test_runs_lists_the_tables_of_both_ranks_merged(client):
    body = get_json(client, "/api/runs")
    assert [(run["name"], run["ranks"]) for run in body["runs"]] == [("demo", 2)]
    tables = {table["key"]: table for table in body["runs"][0]["tables"]}
    assert set(tables) == {"samples/val", "samples/seg", "samples/tokens"}
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
    history = get_json(client, "/api/history", run=0, key="samples/val", sample="sample005")
    assert [row["_step"] for row in history["rows"]] == list(STEPS)
    assert [row["correct"] for row in history["rows"]] == [False, True, True]  # 5 % 4 == 1: right from eval 1
    flipped = get_json(client, "/api/rows", run=0, key="samples/val", step=200, only="flipped", size=500)
    expected = [f"sample{i:03d}" for i in range(SAMPLES) if i % 4 == 1]
    assert sorted(row["_sample_key"] for row in flipped["rows"]) == expected
    assert all(row["_vs"]["prediction"] != row["prediction"] for row in flipped["rows"])
    always = get_json(client, "/api/rows", run=0, key="samples/val", step=300, only="wrong_always", size=500)
    assert sorted(row["_sample_key"] for row in always["rows"]) == [f"sample{i:03d}" for i in range(SAMPLES)
                                                                     if i % 4 == 3]


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


def test_a_table_written_while_the_server_runs_appears(tmp_path):
    run = FixtureRun(str(tmp_path / "live"), "live")
    run.table("first", 1, {"x": [1, 2]}, ["a", "b"])
    client = Client(ViewerApp([str(tmp_path / "live")]))
    assert [t["key"] for t in get_json(client, "/api/runs")["runs"][0]["tables"]] == ["first"]
    run.table("second", 2, {"x": [3]}, ["c"])
    run.log(1, {"loss": 1.0}, time=1.0)
    assert [t["key"] for t in get_json(client, "/api/runs")["runs"][0]["tables"]] == ["first", "second"]
    assert get_json(client, "/api/metrics")["runs"][0]["values"]["loss"] == [1.0]


def test_the_command_refuses_what_is_not_a_run_folder(tmp_path, capsys):
    assert cli_main(["view", "--no-browser", str(tmp_path / "missing")]) == 2
    assert "run_dir: no such folder" in capsys.readouterr().err
    (tmp_path / "old" / "tables").mkdir(parents=True)
    assert cli_main(["view", "--no-browser", str(tmp_path / "old")]) == 2
    assert "format 1" in capsys.readouterr().err


# -- in a real browser --------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def chromium() -> str:
    """A headless Chromium from PATH (`make test` installs Debian's with apt-get where it can)."""
    found = next(filter(None, map(shutil.which, CHROMIUM_NAMES)), None)
    if found is None:
        pytest.skip(NO_CHROMIUM)
    return found


@pytest.fixture(scope="module")
def server(app):
    """The app behind werkzeug's threaded server on an ephemeral loopback port, as `logbus view` runs it."""
    httpd = make_server("127.0.0.1", 0, app, threaded=True)
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
        while self.stack:
            if self.stack.pop()["tag"] == tag:
                break

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
    assert result.returncode == 0, result.stderr[-3000:]
    dom = Dom(result.stdout)
    root = dom.find(tag="html")[0]
    assert root.get("data-viewer") == "ready", result.stdout[-3000:]
    assert "data-pwned" not in root, "a label from the run folder ran as HTML"
    return dom


def test_metrics_page_leads_with_the_users_groups_and_folds_logbus_and_time(chromium, server, tmp_path):
    dom = open_page(chromium, server + "#metrics", tmp_path / "profile")
    groups = [e["data-group"] for e in dom.find(tag="details")]
    assert groups == ["eval/", "train/", "logbus and time/"]
    assert "open" not in dom.find(tag="details")[-1]
    titles = [e["text"] for e in dom.find(tag="h3")]
    assert titles == ["eval/accuracy", "train/a_very_long_metric_name_" + "x" * 40, "train/loss"]
    assert len(dom.find(tag="canvas")) == 3  # uPlot drew one chart each


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


def test_token_table_text_search(chromium, server, tmp_path):
    dom = open_page(chromium, server + "#samples?run=0&key=samples/tokens&q=DOG", tmp_path / "profile")
    rows = dom.find(tag="tr", **{"class": "row"})
    assert len(rows) == 1 and "a dog ran" in rows[0]["text"]


def test_sample_page_follows_one_sample_across_evals(chromium, server, tmp_path):
    dom = open_page(chromium, server + "#sample?run=0&key=samples/val&sample=sample005", tmp_path / "profile")
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


def test_segmentation_layers_class_toggles_and_error_map(chromium, server, tmp_path):
    dom = open_page(chromium, server + "#sample?run=0&key=samples/seg&sample=seg1", tmp_path / "profile")
    assert {e["id"] for e in dom.find(tag="input") if e.get("id", "").startswith("layer-")} == {
        "layer-image", "layer-truth", "layer-prediction", "layer-error", "layer-opacity"}
    assert [e["data-class"] for e in dom.find(tag="input") if "data-class" in e] == ["0", "1", "2"]
    assert dom.one(id="error-count")["text"] == f"{expected_seg_errors()} of 256 pixels wrong"
    assert any(e["text"].strip() == "2 <b>edge</b>" for e in dom.find(tag="label", **{"class": "class-toggle"}))


@pytest.mark.parametrize("page", ["metrics", "samples", "confusion", "sample"])
def test_screenshot_of_each_page(chromium, server, tmp_path, page):
    fragment = {"metrics": "#metrics", "samples": "#samples?run=0&key=samples/val&step=200",
                "confusion": "#confusion?run=0&key=samples/val&step=300",
                "sample": "#sample?run=0&key=samples/seg&sample=seg1"}[page]
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
