"""``logbus bench`` runs the real suites (quick sizes) and reports ratios measured in that one run, each
with its range and within-noise mark; a benchmark run of ``benchmarks/`` records its figures as data
(``logbus.bench.results``) and the docs' tables render from them (``logbus.bench.tables``)."""

from __future__ import annotations

import datetime
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from logbus.bench import report, settings
from logbus.bench import results as results_module
from logbus.bench import tables as bench_tables

pytest_plugins = ["pytester"]


@pytest.mark.timeout(700)
def test_logbus_bench_reports_ratios_as_json_and_a_plot(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "LOGBUS_DIR"}
    env.update(WANDB_MODE="offline", WANDB_SILENT="true")
    result = subprocess.run([str(Path(sys.executable).with_name("logbus")), "bench", "--json"],
                            capture_output=True, text=True, cwd=tmp_path, env=env, timeout=680)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads(result.stdout)
    assert summary["machine"]["cores"] == os.cpu_count() and summary["machine"]["cpu"]
    calls = summary["log_metrics"]
    assert set(calls) == {"logbus via Composer Logger", "wandb.log", "queue.Queue.put"}
    for label, info in calls.items():
        wall = info["wall_us"]
        assert wall["min"] <= wall["median"] <= wall["max"] and wall["rounds"] >= 3, label
        assert wall["median"] == pytest.approx(info["wall_us_per_call"]), label
    logbus_call, wandb_call = calls["logbus via Composer Logger"]["wall_us"], calls["wandb.log"]["wall_us"]
    ratio = summary["wandb_log_vs_logbus"]
    assert [ratio["median"], ratio["min"], ratio["max"]] == pytest.approx([
        wandb_call["median"] / logbus_call["median"], wandb_call["min"] / logbus_call["max"],
        wandb_call["max"] / logbus_call["min"]])
    assert ratio["within_noise"] == (wandb_call["min"] <= logbus_call["max"] and logbus_call["min"] <= wandb_call["max"])
    sizes = {row["size"]: row for row in summary["eval"]}
    assert set(sizes) == {32, 224}
    for row in sizes.values():
        assert set(row["seconds"]) == {"no_sample_logging", "guide", "sample_logger", "sample_logger_jpeg"}
        check_ratios(row)
    # The sample pipeline's promise, (a) and (b) with the local backend, each with its spread; and the
    # training process's CPU per logged sample.
    pipeline = {(row["measure"], row.get("size")): row for row in summary["pipeline"]}
    assert set(pipeline) == {("eval_loop", 32), ("end_to_end_local", 32), ("cpu_us_per_sample", None)}
    for measure in ("eval_loop", "end_to_end_local"):
        row = pipeline[(measure, 32)]
        assert row["task"] == "classification" and set(row["seconds"]) == {"no_sample_logging", "sample_logger"}
        check_ratios(row)
    assert pipeline[("cpu_us_per_sample", None)]["us_per_sample"]["median"] > 0
    # The chart goes where `logbus bench --help` says (./logbus_runs by default), and the runs it measured
    # into the command's scratch folder: nothing else lands in the current folder.
    plot = tmp_path / "logbus_runs" / "logbus-bench.png"
    assert summary["plot"] == os.path.join("logbus_runs", "logbus-bench.png")
    with Image.open(plot) as image:
        assert image.width > 500 and len(image.getcolors(1 << 16) or []) > 3  # bars drawn, not blank
    assert sorted(str(path.relative_to(tmp_path)) for path in tmp_path.rglob("*")) == [
        "logbus_runs", os.path.join("logbus_runs", "logbus-bench.png")]
    # The chart draws every ratio but the baselines', each with its range and its within-noise mark.
    ratios = [(row, variant) for row in [*summary["eval"], *[r for r in summary["pipeline"] if "seconds" in r]]
              for variant in row["ratio"] if variant != "no_sample_logging"]
    assert [(bar["ratio"], bar["range"], bar["within_noise"]) for bar in summary["chart"]] == [
        (row["ratio"][variant], row["ratio_range"][variant], row["within_noise"][variant]) for row, variant in ratios]
    # The text prints the same ratios, with "(within noise)" exactly where the JSON says so.
    text = report.format_table(summary)
    for row, variant in ratios:
        low, high = row["ratio_range"][variant]
        line = next(line for line in text.splitlines() if f"{row['ratio'][variant]:.2f}x [{low:.2f}-{high:.2f}]" in line
                    and line.strip().startswith(variant + " "))
        assert line.endswith("(within noise)") == row["within_noise"][variant], line
    # No report file: stderr names nothing of the scratch folder the command removed.
    assert "logbus-bench-" not in result.stderr and "report.json" not in result.stderr, result.stderr[-2000:]


def check_ratios(row):
    """Each variant's ratio is of the medians, its range from the rounds' min and max, and within noise
    exactly where the two spreads overlap."""
    base = row["seconds"]["no_sample_logging"]
    assert row["ratio"]["no_sample_logging"] == 1.0
    for variant, seconds in row["seconds"].items():
        assert seconds["rounds"] >= 3 and seconds["min"] <= seconds["median"] <= seconds["max"]
        assert row["ratio"][variant] == pytest.approx(seconds["median"] / base["median"])
        assert row["ratio_range"][variant] == pytest.approx([seconds["min"] / base["max"], seconds["max"] / base["min"]])
        assert row["within_noise"][variant] == (seconds["min"] <= base["max"] and base["min"] <= seconds["max"])


def test_the_charts_font_draws_a_space_wider_than_the_gap_between_letters():
    """Pillow's built-in font at its default 10 px draws a space 2 px wide, no wider than letters sit
    apart, and the chart's words ran together; the chart draws at ``CHART_FONT_PX``."""
    font = report.chart_font()
    space = font.getlength("to no") - font.getlength("tono")
    assert space >= 3, f"a space is {space} px wide at {report.CHART_FONT_PX} px"
    assert report.chart_font(10).getlength("to no") - report.chart_font(10).getlength("tono") < 3  # why it is not 10


def test_logbus_bench_without_pytest_benchmark_says_which_extra_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "pytest_benchmark", None)  # what `import pytest_benchmark` meets when absent
    with pytest.raises(SystemExit, match=r"pip install 'logbus\[bench\]'"):
        report.run_suites()


ROOT = Path(__file__).resolve().parents[1]
# A small real suite (PNG encoding, two benchmarks of one group, Pillow the baseline) at a few rounds:
# the figures are noise on a shared machine; what is checked is what gets written, and from what.
PNG_RUN = ["-m", "pytest", "-q", "-p", "no:cacheprovider", "benchmarks/bench_png.py", "-k", "image and 32"]


def run_png_suite(results: Path, *options: str) -> subprocess.CompletedProcess:
    env = {**os.environ, results_module.RESULTS_ENV: str(results)}
    return subprocess.run([sys.executable, *PNG_RUN, *options], capture_output=True, text=True, cwd=ROOT, env=env,
                          timeout=300)


def test_a_benchmark_run_writes_its_results_and_the_tables_render_from_them(tmp_path):
    run = run_png_suite(tmp_path / "results", "--benchmark-only", "--benchmark-max-time=0.05",
                        "--benchmark-min-rounds=3")
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    machine = results_module.machine_info()
    path = tmp_path / "results" / f"png-{results_module.machine_kind(machine)}.json"
    assert [p.name for p in (tmp_path / "results").iterdir()] == [path.name]  # one file per suite and machine kind
    document = json.loads(path.read_text())
    assert document["suite"] == "png" and document["schema"] == results_module.SCHEMA_VERSION
    assert document["machine"]["cores"] == os.cpu_count() and document["machine"]["cpu"] == machine["cpu"]
    assert document["machine"]["memory_bytes"] > 0 and document["machine"]["torch"] == machine["torch"]
    assert document["machine"]["python"] == machine["python"] and "gpu" in document["machine"]
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    if head.returncode == 0:  # a checkout: the results name its commit
        assert document["commit"].startswith(head.stdout.strip())
    assert abs(datetime.datetime.fromisoformat(document["date"]) - datetime.datetime.now(datetime.timezone.utc)) \
        < datetime.timedelta(minutes=10)
    rows = {row["params"]["impl"]: row for row in document["benchmarks"]}
    assert set(rows) == {"logbus", "pillow"}
    for row in rows.values():
        assert row["rounds"] >= 3 and 0 < row["min"] <= row["median"] <= row["max"], row
        assert row["group"] == "RGB image, 64 images 32x32" and row["unit"] == "s"

    rendered = bench_tables.render(bench_tables.load_results(tmp_path / "results"))
    table = rendered.splitlines()
    first = table.index(next(line for line in table if line.startswith("| RGB image, 64 images 32x32 | ")))
    # the group named on its first row; each row by the parameter that differs within the group
    lines = {line.split(" | ")[1]: line for line in table[first:first + 2]}
    assert table[first + 1].startswith("|  | ") and set(lines) == {"logbus", "pillow"}
    assert lines["pillow"].endswith("| baseline |")
    ratio = bench_tables.ratio_with_spread(rows["logbus"], rows["pillow"])
    assert f"{ratio['median']:.2f}× [{ratio['min']:.2f}–{ratio['max']:.2f}]" in lines["logbus"]
    assert lines["logbus"].endswith(", within noise |") == ratio["within_noise"]
    assert f"| {rows['logbus']['rounds']} |" in lines["logbus"]
    readme = f"x\n{bench_tables.BEGIN}\nstale\n{bench_tables.END}\ny\n"
    assert bench_tables.update_page(readme, [document]) == f"x\n{bench_tables.BEGIN}\n{rendered}\n{bench_tables.END}\ny\n"


def test_the_tables_show_figures_per_call_the_extra_figures_and_a_marked_baseline():
    """A suite whose round makes many calls is shown per call, its ratios between per-call figures; a row
    marked ``baseline`` is the group's baseline; the figures measured besides the time have a column."""
    def row(name, median, low, high, **info):
        return {"name": name, "group": "caller cost", "params": {}, "rounds": 5, "median": median, "min": low,
                "max": high, "extra_info": {"per": "call", "per_round": 1000, **info}}

    document = {"suite": "logging", "machine_kind": "cpu-2cores", "date": "2026-12-06T00:00:00+00:00", "commit": None,
                "machine": {"cpu": "x", "cores": 2}, "benchmarks": [
                    row("test_fast_path[a]", 2e-3, 1e-3, 3e-3, thread_cpu_us_per_call=1.5),
                    row("test_floor", 1e-3, 0.5e-3, 1.5e-3, baseline=True, cpu_us_per_sample_median=30.0,
                        cpu_us_per_sample_min=20.0, cpu_us_per_sample_max=40.0)]}
    lines = bench_tables.render_document(document).splitlines()
    assert lines[2].endswith("| ratio to baseline [range] | also measured |")
    assert lines[4] == ("| caller cost | fast path | 2.00 µs/call [1.00 µs–3.00 µs] | 5 | 2.00× [0.67–6.00], within "
                        "noise | thread CPU per call (mean of every round): 1.50 µs |")
    assert lines[5] == ("|  | floor | 1.00 µs/call [0.50 µs–1.50 µs] | 5 | baseline | training-process CPU per sample: "
                        "30.0 µs [20.0 µs–40.0 µs] |")
    figures = bench_tables.per_unit(document["benchmarks"][0])
    assert figures.pop("unit") == "s" and figures == pytest.approx({"median": 2e-6, "min": 1e-6, "max": 3e-6, "per": "call"})


def test_figures_in_other_units_than_seconds_are_shown_in_their_unit():
    """``benchmarks/bench_volume.py`` records rows/s, µs and counts (``unit``): shown as they are, with
    their spread, never scaled as seconds."""
    def row(name, unit, median, low, high):
        return {"name": name, "group": "throughput", "params": {}, "rounds": 3, "unit": unit, "median": median,
                "min": low, "max": high, "extra_info": {}}

    document = {"suite": "volume_throughput", "machine_kind": "cpu-2cores", "date": "2026-12-06T00:00:00+00:00",
                "commit": None, "machine": {"cpu": "x", "cores": 2}, "benchmarks": [
                    row("rows/s read back", "rows/s", 41234.5, 40100.0, 42001.0),
                    row("training thread CPU per sample", "µs", 3.456, 3.1, 4.0),
                    row("batches dropped", "batches", 0, 0, 0)]}
    lines = bench_tables.render_document(document).splitlines()
    assert lines[4] == "| throughput | rows/s read back | 41,234 rows/s [40,100 rows/s–42,001 rows/s] | 3 |  |"
    assert lines[5] == "|  | training thread CPU per sample | 3.46 µs [3.10 µs–4 µs] | 3 |  |"
    assert lines[6] == "|  | batches dropped | 0 batches [0 batches–0 batches] | 3 |  |"


def test_the_rounds_and_sizes_of_a_run_come_from_the_environment(monkeypatch):
    monkeypatch.delenv(settings.ROUNDS_ENV, raising=False)
    monkeypatch.delenv(settings.SIZES_ENV, raising=False)
    assert settings.rounds(5) == 5 and settings.sizes({32: 2048, 224: 256}) == {32: 2048, 224: 256}
    monkeypatch.setenv(settings.ROUNDS_ENV, "3")
    monkeypatch.setenv(settings.SIZES_ENV, "224:64")
    assert settings.rounds(5) == 3 and settings.sizes({32: 2048, 224: 256}) == {32: 2048, 224: 64}
    monkeypatch.setenv(settings.SIZES_ENV, " 32:1024, 224:16 ")
    assert settings.sizes({32: 2048, 224: 256}) == {32: 1024, 224: 16}
    for value in ("2", "three"):  # a figure needs at least 3 rounds for its spread
        monkeypatch.setenv(settings.ROUNDS_ENV, value)
        with pytest.raises(ValueError, match="^LOGBUS_BENCH_ROUNDS: expected a whole number of rounds >= 3, got"):
            settings.rounds(5)
    for value in ("64:16", "224", "224:0", "224:x"):  # a side the suite does not measure, no count, a bad count
        monkeypatch.setenv(settings.SIZES_ENV, value)
        with pytest.raises(ValueError, match=f"^LOGBUS_BENCH_SIZES: expected side:images pairs .* got '{value}'"):
            settings.sizes({32: 2048, 224: 256})


def test_a_run_under_benchmark_disable_writes_no_results(tmp_path):
    run = run_png_suite(tmp_path / "results", "--benchmark-disable")
    assert run.returncode == 0 and "2 passed" in run.stdout, run.stdout[-3000:] + run.stderr[-3000:]
    assert not (tmp_path / "results").exists()


def test_the_machine_kind_names_the_card_else_the_cores():
    assert results_module.machine_kind({"gpu": "NVIDIA H200", "cores": 16}) == "nvidia-h200"
    assert results_module.machine_kind({"gpu": None, "cores": 2}) == "cpu-2cores"


def test_the_tables_leave_out_json_that_is_not_a_results_file(tmp_path):
    (tmp_path / "gpu_check.json").write_text('{"device": "NVIDIA H200", "checks": []}')  # the GPU checks' raw output
    assert bench_tables.load_results(tmp_path) == []
    assert "No results" in bench_tables.render([])


def test_a_failed_benchmark_leaves_its_figures_out(pytester, tmp_path):
    """Figures whose test failed after the timed part (a suite's checks: rows lost, say) are not results."""
    pytester.makeconftest(f"""
from logbus.bench.results import ResultsCollector

def pytest_configure(config):
    config.pluginmanager.register(ResultsCollector({str(tmp_path / "results")!r}), "results")
""")
    pytester.makepyfile(bench_demo="""
def test_kept(benchmark):
    benchmark.pedantic(sum, args=([1, 2],), rounds=3)

def test_failed_after_timing(benchmark):
    benchmark.pedantic(sum, args=([1, 2],), rounds=3)
    assert False, "a check after the timed part"
""")
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-o", "python_files=bench_*.py", "--benchmark-only")
    result.assert_outcomes(passed=1, failed=1)
    (path,) = (tmp_path / "results").iterdir()
    assert path.name.startswith("demo-")
    assert [row["name"] for row in json.loads(path.read_text())["benchmarks"]] == ["test_kept"]
