"""The static run viewer: a run folder written by the local backend, opened by a real headless Chromium
from ``file://``, its DOM read back after the page's script ran.

The page takes its filter state from the URL hash (``index.html#filter=incorrect&step=1``), so each
filter is checked by dumping the DOM of one URL and comparing the cards with the table file.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image as PILImage

import logbus
from logbus.cli import main as cli_main
from logbus.demo import load_digits
from logbus.plugins.local._viewer import class_colour, embed_json, write_viewer

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
NO_CHROMIUM = ("viewer browser tests: no chromium on PATH; install one to run them (Debian: apt-get install "
               "chromium, which `make test` does as root)")
REPO = Path(__file__).resolve().parents[2]
SCRIPT = "<script>alert(1)</script>"
# Each payload marks the page if it ever runs: as a tag parsed from innerHTML (the onerror), or by closing
# the JSON <script> element early (the </script>). The page itself never sets data-pwned.
BREAKOUT = "</script><script>document.documentElement.dataset.pwned=1</script>"
ONERROR = '<img src=x onerror="document.documentElement.dataset.pwned=1">'
CLASS_NAMES = ["zero", "one", "two", SCRIPT, "four", BREAKOUT, "six", ONERROR, "eight", "nine"]
NAN_ROWS = [4, 11, 17]
SEG_CLASSES = {0: "background", 1: "ink", 2: "<b>edge</b>"}


# -- fixtures --------------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def chromium() -> str:
    """A headless Chromium from PATH. The tests never install one: `make test` does, with apt-get, when
    it can (see the Makefile's `browser` step); without one they skip, saying how to get it."""
    found = next(filter(None, map(shutil.which, CHROMIUM_NAMES)), None)
    if found is None:
        pytest.skip(NO_CHROMIUM)
    return found


def test_without_chromium_the_browser_tests_skip_with_one_line(tmp_path):
    """Run as a developer would, on a machine without any Chromium on PATH: no install, no failure."""
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", __file__,
                             "-k", "screenshot or url_hash"], cwd=REPO, capture_output=True, text=True, timeout=120,
                            env={**os.environ, "PATH": str(tmp_path)})
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    summary = result.stdout.strip().splitlines()[-1]
    assert re.fullmatch(r"\d+ skipped, \d+ deselected in .*", summary), result.stdout[-3000:]
    # One line per test function, each with the same one-line reason (pytest groups a function's params).
    skipped = [line for line in result.stdout.splitlines() if line.startswith("SKIPPED")]
    counts = [re.fullmatch(rf"SKIPPED \[(\d+)\] tests/plugins/test_viewer.py:\d+: {re.escape(NO_CHROMIUM)}", line)
              for line in skipped]
    assert all(counts) and sum(int(match.group(1)) for match in counts) == int(summary.split()[0]), skipped


def segmentation_batch(images: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Targets from the digit's ink (0 background, 1 ink, 2 faint edge) and noisy logits around them."""
    pixels = images[:, 0]
    truth = (pixels > 0.5).long() + ((pixels > 0.15) & (pixels <= 0.5)).long() * 2
    logits = torch.nn.functional.one_hot(truth, 3).permute(0, 3, 1, 2).float() * 3
    return truth, logits + torch.randn(logits.shape, generator=generator)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A finished local run: metrics at 10 steps (one NaN), 24 classification samples at steps 1 and 2
    (hostile class names, NaN logits in some rows) and 6 segmentation samples at step 2."""
    root = tmp_path_factory.mktemp("viewer") / "runs"
    images, labels = load_digits()
    generator = torch.Generator().manual_seed(0)
    config = {"lr": 0.01, "note": BREAKOUT}
    with logbus.start_run("viewer", backends=[("local", {"root": str(root)})], config=config) as run:
        for step in range(10):
            run.log({"loss": 2.0 / (step + 1), "accuracy": step / 10, "grad_norm": float("nan") if step == 5 else step}, step)
        samples = run.samples("classification", num_samples=24, class_names=CLASS_NAMES)
        segments = run.samples("segmentation", num_samples=6, class_names=SEG_CLASSES)
        for step, noise in ((1, 4.0), (2, 2.0)):
            x, y = images[:24], labels[:24]
            logits = torch.nn.functional.one_hot(y, 10).float() * 3 + torch.randn(24, 10, generator=generator) * noise
            logits[NAN_ROWS] = float("nan")
            samples.add(x, y, logits)
            samples.log("eval", step=step)
        truth, logits = segmentation_batch(images[:6], generator)
        segments.add(images[:6], truth, logits, label="seg")
        segments.log("seg", step=2)
    return root / "viewer"


def table_passes(run_dir: Path, key: str) -> list[tuple[int, list[dict]]]:
    passes = []
    for line in (run_dir / "tables" / f"{key}.jsonl").read_text().splitlines():
        record = json.loads(line)
        passes.append((record["step"], [dict(zip(record["columns"], row)) for row in record["rows"]]))
    return passes


# -- reading the page back -------------------------------------------------------------------------
class Page(HTMLParser):
    """The parts of a dumped DOM the tests look at."""

    def __init__(self, dom: str):
        super().__init__()
        self.dom = dom
        self.root: dict[str, str | None] = {}
        self.cards: list[dict] = []  # {"id", "class", "images": [img attrs]}
        self.images: list[dict] = []
        self.metrics: list[str] = []
        self.title = ""
        self._in_title = False
        self.feed(dom)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "html":
            self.root = attrs
        elif tag == "title" and not self.title:  # the document's, not an SVG tooltip's
            self._in_title = True
        elif tag == "article" and "card" in (attrs.get("class") or "").split():
            self.cards.append({"id": attrs.get("data-id"), "class": attrs["class"].split(), "images": []})
        elif tag == "img":
            self.images.append(attrs)
            if self.cards and self._in_card:
                self.cards[-1]["images"].append(attrs)
        elif tag == "svg" and "data-metric" in attrs:
            self.metrics.append(attrs["data-metric"])
        if tag == "article":
            self._in_card = True

    def handle_endtag(self, tag):
        if tag == "article":
            self._in_card = False
        elif tag == "title":
            self._in_title = False

    def handle_data(self, data):
        if self._in_title:
            self.title += data

    _in_card = False

    @property
    def card_ids(self) -> list[int]:
        return [int(card["id"]) for card in self.cards]


def chromium_args(chromium: str, profile: Path) -> list[str]:
    return [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            "--disable-dev-shm-usage", f"--user-data-dir={profile}", "--virtual-time-budget=5000"]


def run_chromium(args: list[str]) -> subprocess.CompletedProcess:
    result = subprocess.run(args, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, f"chromium failed ({result.returncode}):\n{result.stderr[-3000:]}"
    return result


def open_page(chromium: str, run_dir: Path, profile: Path, fragment: str = "") -> Page:
    url = (run_dir / "index.html").as_uri() + (f"#{fragment}" if fragment else "")
    page = Page(run_chromium([*chromium_args(chromium, profile), "--dump-dom", url]).stdout)
    assert page.root.get("data-viewer") == "ready", f"the page's script did not finish:\n{page.dom[-3000:]}"
    return page


@pytest.fixture(scope="module")
def latest_page(chromium, run_dir, tmp_path_factory) -> Page:
    return open_page(chromium, run_dir, tmp_path_factory.mktemp("profile"))


# -- tests -----------------------------------------------------------------------------------------
def test_the_gallery_shows_the_latest_pass_and_a_chart_per_metric(run_dir, latest_page):
    step, rows = table_passes(run_dir, "samples/eval")[-1]
    assert step == 2
    assert latest_page.card_ids == [row["id"] for row in rows] and len(rows) == 24
    assert all(card["images"][0]["src"].startswith("media/") for card in latest_page.cards)
    nonfinite = [card["id"] for card in latest_page.cards if "nonfinite" in card["class"]]
    assert nonfinite == [str(i) for i in NAN_ROWS]
    assert sorted(latest_page.metrics) == ["accuracy", "grad_norm", "loss"]
    assert latest_page.title == "viewer · logbus"
    assert "24 of 24 samples · samples/eval · step 2" in latest_page.dom


def test_hostile_class_names_show_as_text_and_never_run(latest_page):
    dom = latest_page.dom
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in dom  # the class name, as text (options and cards)
    assert "&lt;/script&gt;&lt;script&gt;document.documentElement.dataset.pwned=1&lt;/script&gt;" in dom
    assert "<script>alert(1)" not in dom  # not even inside the embedded JSON
    assert "data-pwned" not in dom and latest_page.root.get("data-pwned") is None
    assert not [img for img in latest_page.images if img.get("src") == "x"]  # the <img onerror> name made no element


def _expected(run_dir: Path, step: int | None, keep, sort: tuple[str, bool] | None = None) -> list[int]:
    passes = table_passes(run_dir, "samples/eval")
    rows = next(rows for s, rows in passes if s == step) if step is not None else passes[-1][1]
    rows = [row for row in rows if keep(row)]
    if sort:
        key, descending = sort
        rows = sorted([r for r in rows if r[key] is not None], key=lambda r: r[key], reverse=descending) + \
            [r for r in rows if r[key] is None]  # missing values last, as the page does
    return [row["id"] for row in rows]


HASH_CASES = [
    ("filter=incorrect", None, lambda row: row["correct"] is False, None),
    ("filter=correct&step=1", 1, lambda row: row["correct"] is True, None),
    ("filter=nonfinite", None, lambda row: row["flag"] == "nonfinite", None),
    ("class=3&step=1", 1, lambda row: row["truth"] == 3, None),
    ("class=5", None, lambda row: row["truth"] == 5, None),
    ("class=0&filter=correct", None, lambda row: row["truth"] == 0 and row["correct"], None),
    ("sort=loss-desc", None, lambda row: True, ("loss", True)),
    ("sort=confidence-asc&filter=incorrect&step=1", 1, lambda row: row["correct"] is False, ("confidence", False)),
]


@pytest.mark.parametrize("fragment, step, keep, sort", HASH_CASES, ids=[case[0] for case in HASH_CASES])
def test_the_url_hash_sets_filters_step_and_sort(chromium, run_dir, tmp_path, fragment, step, keep, sort):
    expected = _expected(run_dir, step, keep, sort)
    if sort is None:
        assert 0 < len(expected) < 24, "a filter case must narrow the gallery to be a check"
    else:
        assert expected != _expected(run_dir, step, keep), "a sort case must change the order to be a check"
    page = open_page(chromium, run_dir, tmp_path / "profile", fragment)
    assert page.card_ids == expected


def test_segmentation_masks_are_coloured_overlays_that_the_page_stacks(chromium, run_dir, tmp_path):
    [(step, rows)] = table_passes(run_dir, "samples/seg")
    for row in rows:
        for name, mask in row["image"]["masks"].items():
            overlay = run_dir / mask["path"].replace(".mask.png", ".overlay.png")
            with PILImage.open(run_dir / mask["path"]) as image:
                ids = np.asarray(image)
            with PILImage.open(overlay) as image:  # RGBA, or paletted where the worker process made it
                assert image.mode in ("RGBA", "P")
                rgba = np.asarray(image.convert("RGBA"))
            for class_id in np.unique(ids):
                colour = class_colour(int(class_id))
                expected = [int(colour[i:i + 2], 16) for i in (1, 3, 5)] + [255]
                assert (rgba[ids == class_id] == expected).all(), (name, class_id)

    page = open_page(chromium, run_dir, tmp_path / "profile", "table=samples/seg")
    assert page.card_ids == [row["id"] for row in rows] and len(rows) == 6
    for card, row in zip(page.cards, rows):
        sources = [img["src"] for img in card["images"]]
        masks = row["image"]["masks"]
        assert sources == [row["image"]["path"], *(masks[n]["path"].replace(".mask.png", ".overlay.png")
                                                    for n in ("ground_truth", "prediction"))]
    assert "2: &lt;b&gt;edge&lt;/b&gt;" in page.dom  # the legend, as text


def test_screenshot_of_the_page(chromium, run_dir, tmp_path):
    shot = tmp_path / "viewer.png"
    run_chromium([*chromium_args(chromium, tmp_path / "profile"), f"--screenshot={shot}", "--window-size=1200,900",
                  (run_dir / "index.html").as_uri()])
    artifacts = REPO / ".pytest-artifacts"
    artifacts.mkdir(exist_ok=True)
    shutil.copyfile(shot, artifacts / "viewer.png")
    with PILImage.open(shot) as image:
        assert image.format == "PNG" and image.size == (1200, 900)
        pixels = np.asarray(image.convert("RGB"))
    colours = np.unique(pixels.reshape(-1, 3), axis=0)
    assert len(colours) > 50  # text, charts and digit images, not a blank or single-colour page


def test_embedded_json_cannot_end_its_script_element():
    value = {"name": BREAKOUT, "comment": "<!-- & -->", "loss": float("nan"), "nested": [float("inf"), 1.5]}
    text = embed_json(value)
    assert not set("<>&") & set(text)
    assert json.loads(text) == {"name": BREAKOUT, "comment": "<!-- & -->", "loss": None, "nested": [None, 1.5]}


# Paths a run folder from someone else could hold in an image cell: none may reach an <img src>.
HOSTILE_PATHS = ["http://evil.example/x.png", "https://evil.example/x.png", "//evil.example/x.png",
                 " //evil.example/x.png", "/etc/hostname", "../outside.png", "media/../../outside.png",
                 "javascript:alert(1)", "JaVaScRiPt:alert(1)", "data:image/png;base64,iVBORw0KGgo=",
                 "file:///etc/hostname", "media\\..\\..\\outside.png", "media/%2e%2e/%2e%2e/outside.png",
                 "media/./ok.png", "media//ok.png", ".hidden.png", "", "media/link-out.png", 42, None, ["media/ok.png"]]


def hostile_run(tmp_path: Path) -> Path:
    """A run folder written by hand: one good image with a mask, then a row per hostile path (the image's and
    its mask's), and a symlink in media/ that points out of the run."""
    run_dir = tmp_path / "run"
    (run_dir / "media").mkdir(parents=True)
    PILImage.fromarray(np.full((4, 4, 3), 200, np.uint8)).save(run_dir / "media" / "ok.png")
    PILImage.fromarray(np.eye(4, dtype=np.uint8)).save(run_dir / "media" / "ok.mask.png")
    PILImage.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / "outside.png")
    (run_dir / "media" / "link-out.png").symlink_to(tmp_path / "outside.png")
    good = {"_type": "image", "path": "media/ok.png", "masks": {"gt": {"path": "media/ok.mask.png"}}}
    rows = [[0, good]] + [[i + 1, {"_type": "image", "path": path, "masks": {"gt": {"path": path}}}]
                          for i, path in enumerate(HOSTILE_PATHS)]
    (run_dir / "tables").mkdir()
    (run_dir / "tables" / "t.jsonl").write_text(json.dumps({"key": "t", "step": 0, "columns": ["id", "image"],
                                                            "rows": rows}) + "\n")
    (run_dir / "run.json").write_text('{"name": "hostile"}')
    return run_dir


def test_only_relative_paths_inside_the_run_reach_the_page(tmp_path):
    run_dir = hostile_run(tmp_path)
    html = Path(write_viewer(run_dir)).read_text()
    embedded = html.split('id="run-data">', 1)[1].split("</script>", 1)[0]
    [table] = json.loads(embedded)["tables"]
    cells = [row[1] for row in table["logs"][0]["rows"]]
    assert (cells[0]["path"], cells[0]["overlays"]) == ("media/ok.png", {"gt": "media/ok.overlay.png"})
    assert [(cell["path"], cell["overlays"]) for cell in cells[1:]] == [(None, {})] * len(HOSTILE_PATHS)
    for text in ("evil.example", "hostname", "outside", "javascript", "base64", "link-out", "%2e"):
        assert text not in html.lower(), text
    assert sorted(p.name for p in (run_dir / "media").iterdir()) == ["link-out.png", "ok.mask.png", "ok.overlay.png",
                                                                     "ok.png"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["outside.png", "run"]  # nothing written outside


def test_a_hostile_run_folder_shows_its_images_as_refused_in_the_browser(chromium, tmp_path):
    run_dir = hostile_run(tmp_path)
    write_viewer(run_dir)
    page = open_page(chromium, run_dir, tmp_path / "profile")
    assert len(page.cards) == len(HOSTILE_PATHS) + 1
    assert sorted(image["src"] for image in page.images) == ["media/ok.overlay.png", "media/ok.png"]
    assert page.dom.count('<div class="refused">image not shown') == len(HOSTILE_PATHS)


def test_the_page_itself_refuses_any_other_image_path(tmp_path):
    # The page checks again where a path becomes a URL; run its own mediaSrc in node (the browser's JS engine).
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed (the check above covers the data the page gets)")
    template = (REPO / "plugins" / "local" / "viewer_template.html").read_text()
    [function] = [line for line in template.splitlines() if line.startswith("function mediaSrc(")]
    paths = ["media/ok.png", "media/samples/val-1a2b/0000001.ground_truth.mask.png", *HOSTILE_PATHS[:-4]]
    script = f"{function}\nconsole.log(JSON.stringify({json.dumps(paths)}.map(mediaSrc)))"
    result = subprocess.run([node, "-e", script], capture_output=True, text=True, timeout=60, check=True)
    assert json.loads(result.stdout) == paths[:2] + [None] * (len(paths) - 2)


def test_the_local_backend_refreshes_the_viewer_while_the_run_is_live(tmp_path):
    with logbus.start_run("live", backends=[("local", {"root": str(tmp_path)})]) as run:
        run.log_table("notes", ["id", "text"], [[0, "first"]], step=0)
        assert run.flush()
        page = (tmp_path / "live" / "index.html").read_text()
        assert "first" in page and '"status":"running"' in page
        run.log({"loss": 0.5}, step=1)
    page = (tmp_path / "live" / "index.html").read_text()
    assert '"status":"finished"' in page and '"loss":[[1,0.5]]' in page  # rewritten at close


def test_logbus_view_writes_the_page_and_opens_it_only_with_a_display(run_dir, monkeypatch, capsys):
    import webbrowser

    opened = []
    monkeypatch.setattr(webbrowser, "open", opened.append)  # a real browser window is not testable here
    monkeypatch.setattr(sys, "platform", "linux")
    (run_dir / "index.html").unlink()
    assert cli_main(["view", str(run_dir), "--write-only"]) == 0
    assert capsys.readouterr().out.strip() == str(run_dir / "index.html") and (run_dir / "index.html").exists()

    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    assert cli_main(["view", str(run_dir)]) == 0
    assert capsys.readouterr().out.strip() == str(run_dir / "index.html") and opened == []

    monkeypatch.setenv("WAYLAND_DISPLAY", "wayland-0")
    assert cli_main(["view", str(run_dir)]) == 0
    assert opened == [(run_dir / "index.html").resolve().as_uri()]

    assert cli_main(["view", str(run_dir / "tables")]) == 2
    assert "not a logbus run folder" in capsys.readouterr().err
    assert write_viewer(run_dir) == str(run_dir / "index.html")


def test_a_viewer_that_cannot_be_written_costs_the_run_nothing(tmp_path):
    with pytest.warns(RuntimeWarning, match="could not write the viewer"):
        with logbus.start_run("blocked", backends=[("local", {"root": str(tmp_path)})]) as run:
            run.log({"loss": 1.0}, step=0)
            assert run.flush()
            (tmp_path / "blocked" / "index.html").mkdir()  # the page cannot be renamed over a folder
            run.log_table("notes", ["text"], [["kept"]], step=0)
    assert json.loads((tmp_path / "blocked" / "run.json").read_text())["status"] == "finished"
    assert "kept" in (tmp_path / "blocked" / "tables" / "notes.jsonl").read_text()


def test_the_controls_re_render_and_keep_the_state_in_the_hash(chromium, run_dir, tmp_path):
    # A copy of the page with a script that works the controls as a user would (beside it, so media/ resolves).
    driver = """<script>
    const pick = (id, value) => { const s = document.getElementById(id); s.value = value; s.dispatchEvent(new Event("change")); };
    pick("filter", "incorrect");
    pick("step", "1");
    pick("sort", "loss-desc");
    const ids = [...document.querySelectorAll("article.card")].map((card) => Number(card.dataset.id));
    document.documentElement.dataset.driven = JSON.stringify({hash: location.hash, ids});
    </script></body>"""
    driven = run_dir / "driven.html"
    driven.write_text((run_dir / "index.html").read_text().replace("</body>", driver))
    try:
        page = Page(run_chromium([*chromium_args(chromium, tmp_path / "profile"), "--dump-dom", driven.as_uri()]).stdout)
    finally:
        driven.unlink()
    result = json.loads(page.root["data-driven"])
    assert result["hash"] == "#step=1&filter=incorrect&sort=loss-desc"
    assert result["ids"] == _expected(run_dir, 1, lambda row: row["correct"] is False, ("loss", True))


def test_a_page_resolves_each_media_folder_once_not_each_image(tmp_path, monkeypatch):
    """A page of a large table stays cheap for the backend writer that builds it: the folder part of an
    image path is resolved once per folder (symlinks and all), each file costs one lstat. A symlinked
    file is still resolved and refused when it leaves the run (the test above)."""
    run_dir = tmp_path / "run"
    (run_dir / "media" / "samples").mkdir(parents=True)
    rows = []
    for index in range(200):
        name = f"media/samples/{index:07d}.png"
        PILImage.fromarray(np.full((2, 2, 3), index, np.uint8)).save(run_dir / name)
        rows.append([index, {"_type": "image", "path": name}])
    (run_dir / "tables").mkdir()
    (run_dir / "tables" / "t.jsonl").write_text(json.dumps({"key": "t", "step": 0, "columns": ["id", "image"],
                                                            "rows": rows}) + "\n")
    (run_dir / "run.json").write_text('{"name": "many"}')
    calls = []
    realpath = os.path.realpath
    monkeypatch.setattr(os.path, "realpath", lambda path, *args, **kwargs: calls.append(path) or realpath(path, *args, **kwargs))
    html = Path(write_viewer(run_dir)).read_text()
    assert html.count("media/samples/") == 200
    assert len(calls) <= 5, f"{len(calls)} realpath calls for a page of 200 images"


def test_the_backend_s_cached_refresh_builds_the_same_page_reading_each_table_line_once(logbus_dir):
    """The local backend keeps each table line's page JSON between refreshes (``TableCache``): the
    page it writes is byte for byte the one ``logbus view`` builds from the folder, after every pass;
    a line already read is not read again, while a replaced file is read anew."""
    from logbus.plugins.local._viewer import TableCache

    images, labels = load_digits()
    images, labels = images[:6], labels[:6]
    with logbus.start_run("cached", backends=["local"]) as run:
        samples = run.samples("segmentation", num_samples=None, class_names=SEG_CLASSES, worker_process=False)
        masks = (images[:, :1] > 0.5).long().squeeze(1)
        for step in range(2):
            samples.add(images, masks, torch.nn.functional.one_hot(masks, 3).permute(0, 3, 1, 2).float(), label="val")
            samples.log("val", step=step)
        run.log_table("scores", ["n", "score"], [[1, float("nan")], [2, 0.5]], step=0)
    run_dir = logbus_dir / "cached"
    cache = TableCache()
    table = run_dir / "tables" / "samples" / "val.jsonl"
    first, second = table.read_bytes().splitlines(keepends=True)
    table.write_bytes(first)  # the folder as it was after the first pass
    page = lambda cached: Path(write_viewer(run_dir, cache if cached else None)).read_text()  # noqa: E731
    assert page(True) == page(False)
    with table.open("ab") as file:  # the second pass arrives, as the backend appends it
        file.write(second)
    assert page(True) == page(False) and page(False).count('"step":1') >= 1
    # The first line, garbled in place (same file, same size): the cached page still has what was read.
    garbled = first.replace(b'"step":0', b'"step":9')
    with table.open("r+b") as file:
        file.write(garbled)
    assert page(True) != page(False) and '"step":9' not in page(True)
    replacement = table.with_suffix(".new")  # replaced by another file (renamed over it): read from its start
    replacement.write_bytes(garbled + second)
    os.replace(replacement, table)
    assert page(True) == page(False) and '"step":9' in page(True)


def test_the_backend_s_page_opens_no_mask_the_worker_process_coloured(logbus_dir, monkeypatch):
    """A segmentation run whose masks and overlays come from the pipeline's worker process: the local
    backend's page builds, in the training process, never open a mask with PIL (the legend's class ids
    come with the linked overlay, ``TableCache.overlay_made``) nor ``lstat`` a media file the backend
    made (``TableCache.file_made``), yet write the page a fresh ``logbus view`` builds from the folder,
    which does both."""
    images, _ = load_digits()
    images = images[:6]
    truth = (images[:, 0] > 0.5).long()
    generator = torch.Generator().manual_seed(0)
    opened: list[str] = []
    pil_open = PILImage.open
    monkeypatch.setattr(PILImage, "open", lambda fp, *args, **kwargs: opened.append(str(fp)) or pil_open(fp, *args, **kwargs))
    looked_at: list[str] = []
    islink = os.path.islink
    monkeypatch.setattr(os.path, "islink", lambda path: looked_at.append(str(path)) or islink(path))
    with logbus.start_run("seg-page", backends=["local"]) as run:
        samples = run.samples("segmentation", num_samples=None, class_names=SEG_CLASSES)
        assert samples.pipeline.worker_ready(120)
        for step in range(2):
            samples.add(images, truth, torch.randn(6, 3, *truth.shape[1:], generator=generator), label="val")
            samples.log("val", step=step)
            assert run.flush(60)
    run_dir = logbus_dir / "seg-page"
    assert len(list((run_dir / "media").rglob("*.overlay.png"))) == 18  # 6 truths, 12 predictions: all linked
    assert [path for path in opened if path.endswith(".mask.png")] == []
    assert [path for path in looked_at if "/media/" in path] == []
    page = (run_dir / "index.html").read_text()
    assert page == Path(write_viewer(run_dir)).read_text()
    assert len({path for path in opened if path.endswith(".mask.png")}) == 18  # the counts see what they count
    assert len({path for path in looked_at if "/media/" in path}) == 6 + 18 * 2  # images, masks and overlays


def test_the_legend_of_an_overlay_made_elsewhere_has_the_classes_it_colours():
    """``TableCache.overlay_made`` counts the class ids (bincount, or sort for huge ids) where the
    viewer's own overlays take them from ``overlay_classes``: the same ids, labels or not."""
    from logbus.files._overlay import overlay_classes
    from logbus.plugins.local._viewer import TableCache

    rng = np.random.default_rng(0)
    small = rng.integers(0, 4, (8, 8)).astype(np.uint8)
    cases = [(small, {0: "a", 2: "c"}), (np.where(small == 3, 255, small).astype(np.uint8), {0: "a", 1: "b", 3: "d"}),
             (small.astype(np.uint64), None), (rng.integers(0, 1 << 40, (4, 4)), {}),
             (rng.integers(0, 1 << 40, (4, 4)), {7: "x"}), (np.zeros((0, 3), np.int64), {1: "x"})]
    cache = TableCache()
    for number, (ids, labels) in enumerate(cases):
        cache.overlay_made(f"media/m{number}.mask.png", ids, labels)
        expected = overlay_classes(ids, tuple(sorted((labels or {}).items())))[2]
        assert list(cache._made.overlays[f"media/m{number}.mask.png"]) == expected, (number, labels)


def test_a_media_folder_that_is_a_symlink_out_of_the_run_is_refused(tmp_path):
    """The folder part of a media path is checked once per folder and page build, not per image: a folder
    that is a symlink out of the run refuses every image in it, one swapped for a symlink after a page
    was built is refused by the next build, and a folder inside the run reached through a symlink is fine."""
    from logbus.plugins.local._viewer import TableCache

    run_dir, outside = tmp_path / "run", tmp_path / "outside"
    (run_dir / "media" / "in").mkdir(parents=True)
    outside.mkdir()
    for folder in (run_dir / "media" / "in", outside):
        PILImage.fromarray(np.zeros((2, 2, 3), np.uint8)).save(folder / "x.png")
    (run_dir / "media" / "out").symlink_to(outside, target_is_directory=True)
    (run_dir / "media" / "alias").symlink_to(run_dir / "media" / "in", target_is_directory=True)
    paths = ["media/in/x.png", "media/out/x.png", "media/alias/x.png", "media/out/x.png"]
    (run_dir / "tables").mkdir()
    table = run_dir / "tables" / "t.jsonl"
    table.write_text(json.dumps({"key": "t", "step": 0, "columns": ["image"],
                                 "rows": [[{"_type": "image", "path": path}] for path in paths]}) + "\n")
    (run_dir / "run.json").write_text('{"name": "folders"}')

    def shown(cache=None) -> list:
        html = Path(write_viewer(run_dir, cache)).read_text()
        data = json.loads(html.split('id="run-data">', 1)[1].split("</script>", 1)[0])
        return [row[0]["path"] for log in data["tables"][0]["logs"] for row in log["rows"]]

    assert shown() == ["media/in/x.png", None, "media/alias/x.png", None]
    cache = TableCache()
    assert shown(cache)[0] == "media/in/x.png"
    (run_dir / "media" / "in").rename(run_dir / "media" / "moved")  # swapped for a symlink out, between builds
    (run_dir / "media" / "in").symlink_to(outside, target_is_directory=True)
    with table.open("a") as file:
        file.write(json.dumps({"key": "t", "step": 1, "columns": ["image"],
                               "rows": [[{"_type": "image", "path": "media/in/x.png"}]]}) + "\n")
    assert shown(cache)[-1] is None
