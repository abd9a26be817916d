"""The README, the docs pages (``docs/``, the site ``mkdocs.yml`` builds) and the docstrings say what
the code does. A chapter is a ``##`` section of the README (the front door: install, the two commands,
the quick starts) or a page of the docs (its ``#`` title): the checks read each where it lives.

- Hooks: every hookspec has a docstring with a ``:param`` per argument, and the hook reference and
  the plugin guide name every hook (and no hook that does not exist).
- Configuration reference: each table is what the options' declarations (``logbus.options``) render,
  and lists exactly the parameters of the constructor it documents, with their real defaults, so a new
  option that is not declared, or a declared one that no longer exists, fails here. (That
  ``WandBLogger``'s signature equals Composer's is checked in ``test_composer_adapter.py``.)
- The README stays a front door (the two commands and the quick starts first, at most
  ``README_MAX_LINES``; the guides and references are pages it links to). The code of the README and
  of every page runs or at least parses, their links lead somewhere (files, and headings in the page
  they name), and the plugin example in "Writing a plugin" works as written, tested with the
  ``logbus.testing`` fixtures it shows.
- Statements about behaviour are checked against the code doing it: the local run format's file
  names, what may be dropped, the close deadline's bound, where offline W&B keeps table images, and
  the wandb floor.
"""

from __future__ import annotations

import inspect
import json
import re
import textwrap
from pathlib import Path

import pytest
from wandb_reader import find_run_dirs, read_wandb_run

import logbus.testing
from logbus import config_reference, hookspecs
from logbus.bench import tables as bench_tables
from logbus.bus import Bus
from logbus.bus._plugin_manager import PluginHost
from logbus.composer import LogBusLogger, SampleLogger, WandBLogger
from logbus.plugins.extractors import BUILTIN_EXTRACTORS
from logbus.run_context import Run
from logbus.samples._options import PIPELINE_OPTIONS
from logbus.samples._pipeline import SamplePipeline

pytest_plugins = ["pytester"]

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()
DOCS = ROOT / "docs"
PAGES = {path: path.read_text() for path in sorted(DOCS.rglob("*.md"))}  # the docs site's pages
TEXTS = {ROOT / "README.md": README, **PAGES}  # every file of documentation a user reads
README_MAX_LINES = 300  # issue 20: the front door, with everything else in the docs
HOOKS = {name: function for name, function in vars(hookspecs).items()
         if callable(function) and hasattr(function, f"{hookspecs.PROJECT_NAME}_spec")}


def sections(text: str, level: int) -> dict[str, str]:
    """Heading text (without the #s) -> the text under it, up to the next heading of this level or above."""
    pattern = re.compile(rf"^(#{{1,{level}}}) (.+)$", re.M)
    found = {}
    matches = list(pattern.finditer(_without_code(text)))
    for match, following in zip(matches, matches[1:] + [None]):
        if len(match.group(1)) == level:
            found[match.group(2).strip()] = text[match.end():following.start() if following else len(text)]
    return found


def _without_code(text: str) -> str:
    """The text with fenced code blocked out (same length), so that ``# comments`` are not headings."""
    return re.sub(r"^```.*?^```", lambda m: re.sub(r"[^\n]", " ", m.group(0)), text, flags=re.M | re.S)


def table_rows(text: str) -> list[list[str]]:
    """The body rows of the first markdown table in ``text``."""
    lines = [line.strip() for line in text.splitlines() if line.strip().startswith("|")]
    rows = [[cell.strip() for cell in line.strip("|").split("|")] for line in lines]
    return rows[2:]  # header and separator left out


def code_blocks(text: str, language: str) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```", text, flags=re.M | re.S)


def slug(heading: str) -> str:
    """GitHub's anchor for a heading."""
    return re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")


def _chapters() -> tuple[dict[str, str], dict[str, Path]]:
    """Chapter -> its text, and -> the file it is in: the README's ``##`` sections and each page (its
    ``#`` title, then everything under it)."""
    chapters, homes = sections(README, 2), {}
    for path, text in PAGES.items():
        titled = sections(text, 1)
        assert len(titled) == 1, f"{path}: expected one '# title', got {list(titled)}"
        for title, body in titled.items():
            assert title not in chapters, f"{path}: chapter '{title}' is also in the README or another page"
            chapters[title], homes[title] = body, path
    return chapters, homes


CHAPTERS, HOMES = _chapters()
REFERENCE = sections(CHAPTERS["Configuration reference"], 3)


# -- hooks -----------------------------------------------------------------------------------------


def test_the_hookspecs_are_found():
    assert set(HOOKS) >= {"register_backends", "register_extractors"}


@pytest.mark.parametrize("name", sorted(HOOKS))
def test_every_hook_has_a_docstring_with_each_parameter(name):
    doc = inspect.getdoc(HOOKS[name])
    assert doc and len(doc.splitlines()[0]) > 10, f"{name}: no docstring (its first line says what the hook is for)"
    documented = re.findall(r"^:param (\w+):", doc, flags=re.M)
    assert documented == list(inspect.signature(HOOKS[name]).parameters), f"{name}: one :param per argument, in order"


def test_the_hook_reference_has_a_section_per_hook_and_no_other():
    headings = re.findall(r"^`(\w+)\((.*)\)`$", "\n".join(sections(CHAPTERS["Hook reference"], 3)), flags=re.M)
    assert {name for name, _ in headings} == set(HOOKS)
    for name, arguments in headings:
        assert [a.strip() for a in arguments.split(",")] == list(inspect.signature(HOOKS[name]).parameters), name


@pytest.mark.parametrize("chapter", ["Writing a plugin", "Hook reference"])
def test_the_plugin_docs_name_every_hook(chapter):
    missing = [name for name in HOOKS if f"`{name}" not in CHAPTERS[chapter] and f"def {name}" not in CHAPTERS[chapter]]
    assert not missing, f"'{chapter}' ({HOMES[chapter]}) does not mention {missing}"


# hook -> (required protocol, optional protocol) of what its factories return
CONTRACTS = {"register_backends": (hookspecs.Backend, hookspecs.BackendCapabilities),
             "register_extractors": (hookspecs.Extractor, hookspecs.ExtractorCapabilities)}


def test_every_hook_has_its_contracts():
    assert set(CONTRACTS) == set(HOOKS)
    for hook, protocols in CONTRACTS.items():
        for protocol in protocols:
            assert protocol.__name__ in inspect.getdoc(HOOKS[hook]), f"{hook}'s docstring does not name {protocol}"
            assert protocol.__name__ in hookspecs.__all__


@pytest.mark.parametrize("protocol", [p for pair in CONTRACTS.values() for p in pair], ids=lambda p: p.__name__)
def test_every_contract_member_has_a_docstring(protocol):
    members = hookspecs.protocol_members(protocol)
    assert members and inspect.getdoc(protocol)
    for name in members:
        doc = inspect.getdoc(getattr(protocol, name))
        assert doc and len(doc) > 30, f"{protocol.__name__}.{name}: its docstring is the contract, and it has none"


def _readme_members(text: str) -> dict[str, tuple[bool, list[str] | None]]:
    """The bullets of a hook's section of the hook reference: ``- [optional ]`name(args)```` ->
    (optional, [argument names, defaults left out] or None for an attribute)."""
    members = {}
    for optional, name, call in re.findall(r"^- (optional )?`(\w+)(\(.*?\))?`", text, flags=re.M):
        arguments = [a.split("=")[0].strip() for a in call[1:-1].split(",") if a.strip()] if call else None
        members[name] = (bool(optional), arguments)
    return members


@pytest.mark.parametrize("hook", sorted(CONTRACTS))
def test_the_hook_reference_lists_exactly_the_contracts_members(hook):
    """Each hook's section lists the required members of its protocol and, marked "optional", those of
    its capabilities protocol, methods with the protocol's argument names: a member added, removed or
    renamed in the code and not here (or the reverse) fails."""
    required, optional = CONTRACTS[hook]
    expected = {}
    for protocol, is_optional in ((required, False), (optional, True)):
        for name, is_method in hookspecs.protocol_members(protocol).items():
            arguments = list(inspect.signature(getattr(protocol, name)).parameters)[1:] if is_method else None
            expected[name] = (is_optional, arguments)
    section = sections(CHAPTERS["Hook reference"], 3)[f"`{hook}(register)`"]
    assert _readme_members(section) == expected
    for protocol in (required, optional):
        assert f"`logbus.hookspecs.{protocol.__name__}`" in section


def test_the_plugin_guide_refers_to_the_contracts():
    for protocol in (hookspecs.Backend, hookspecs.Extractor):
        assert f"`logbus.hookspecs.{protocol.__name__}`" in CHAPTERS["Writing a plugin"]


# -- configuration reference -----------------------------------------------------------------------


def _builtin_classes() -> dict[str, type]:
    """Heading in the reference -> the class it documents, for every built-in backend and extractor."""
    host = PluginHost(load_entry_points=False)
    classes = {}
    for name, registration in host.registry["backend"].items():
        heading = "`WandBLogger` and the `wandb` backend" if name == "wandb" else f"`{name}` backend"
        classes[heading] = registration.factory
    for name, (module, class_name, _) in BUILTIN_EXTRACTORS.items():
        classes[f"`{name}` extractor"] = getattr(__import__(module, fromlist=[class_name]), class_name)
    assert set(host.registry["extractor"]) == set(BUILTIN_EXTRACTORS)
    return classes


# heading -> [(callable, parameters it does not document here)]; a table may merge several signatures
DOCUMENTED = {
    "`logbus.start_run`": [(Run, {"bus_options"}), (Bus, {"backends"})],
    "`LogBusLogger`": [(LogBusLogger, set())],
    "`SampleLogger`": [(SampleLogger, {"options"})],  # **options: the pipeline's and the extractor's
    "Sample pipeline options": [(SamplePipeline, {"extractor", "num_samples", "policy"})],
    **{heading: [(cls, set())] for heading, cls in _builtin_classes().items()},
}


def _parameters(documented) -> dict[str, inspect.Parameter]:
    parameters = {}
    for function, left_out in documented:
        for name, parameter in inspect.signature(function).parameters.items():
            if name not in left_out and parameter.kind not in (parameter.VAR_KEYWORD, parameter.VAR_POSITIONAL):
                parameters[name] = parameter
    return parameters


def test_the_reference_documents_exactly_these_tables():
    assert set(REFERENCE) == set(DOCUMENTED) | {"Environment variables"}


@pytest.mark.parametrize("heading", sorted(DOCUMENTED), ids=lambda heading: heading.replace("`", ""))
def test_each_reference_table_matches_the_signature(heading):
    parameters = _parameters(DOCUMENTED[heading])
    rows = table_rows(REFERENCE[heading])
    documented = [re.fullmatch(r"`(\w+)`", row[0]).group(1) for row in rows]
    missing = [name for name in parameters if name not in documented]
    unknown = [name for name in documented if name not in parameters]
    assert not missing and not unknown, \
        f"reference {heading}: undocumented options {missing}, options that do not exist {unknown}"
    assert documented == list(parameters), f"reference {heading}: list the options in the signature's order"
    for row in rows:
        name, default = re.fullmatch(r"`(\w+)`", row[0]).group(1), row[1]
        expected = parameters[name].default
        if expected is inspect.Parameter.empty:
            assert default == "required", f"reference {heading}: {name} has no default"
        else:
            code = re.fullmatch(r"`(.+)`", default)
            assert code, f"reference {heading}: the default of {name} should be code, got {default!r}"
            assert eval(code.group(1), {"__builtins__": {}}) == expected, f"reference {heading}: default of {name}"  # noqa: S307


def test_the_reference_tables_are_what_the_declarations_render():
    """The declarations are the source: ``python -m logbus.config_reference --update
    docs/reference/options.md`` writes these tables, and a table edited by hand (or a declaration changed
    without rewriting it) fails here."""
    declared = config_reference.reference()
    assert set(declared) == set(DOCUMENTED)
    for heading, table in declared.items():
        assert REFERENCE[heading].count("| option |") == 1, heading
        rendered = "\n".join(line for line in REFERENCE[heading].splitlines() if line.startswith("|"))
        assert rendered == table.markdown(), \
            f"reference {heading}: run python -m logbus.config_reference --update docs/reference/options.md"
    page = HOMES["Configuration reference"]
    assert page == DOCS / "reference" / "options.md"  # where the Makefile, the module and the docs say
    assert config_reference.update_page(PAGES[page], declared) == PAGES[page]


def test_the_benchmark_tables_are_what_the_results_files_render():
    """The results files are the source: ``python -m logbus.bench.tables --update docs/benchmarks.md``
    writes the page's benchmark block from ``benchmarks/results/``, and a figure typed into it by hand (or
    a results file recorded without rewriting it) fails here."""
    documents = bench_tables.load_results(ROOT / "benchmarks" / "results")
    page = HOMES["Benchmarks"]
    assert page == DOCS / "benchmarks.md" and bench_tables.BEGIN.endswith(f"--update {page.relative_to(ROOT)}` "
                                                                           "from benchmarks/results/ -->")
    # one block in all the documentation, in the Benchmarks chapter (the page is the chapter)
    assert sum(text.count(bench_tables.BEGIN) for text in TEXTS.values()) == 1
    assert sum(text.count(bench_tables.END) for text in TEXTS.values()) == 1
    assert bench_tables.BEGIN in CHAPTERS["Benchmarks"] and bench_tables.END in CHAPTERS["Benchmarks"]
    assert bench_tables.update_page(PAGES[page], documents) == PAGES[page], \
        "benchmarks: run python -m logbus.bench.tables --update docs/benchmarks.md"


def test_the_benchmark_variables_are_the_ones_the_suites_read_with_make_bench_s_values():
    """The variables of "Recording the figures" are those the benchmark code reads (``logbus bench``'s own
    switch to its command-sized pipeline suite left out), and its ``make bench`` column is the Makefile's."""
    rows = table_rows(sections(CHAPTERS["Benchmarks"], 2)["Recording the figures"])
    documented = {re.fullmatch(r"`(\w+)`", row[0]).group(1): row[2] for row in rows}
    sources = [*ROOT.joinpath("core", "bench").glob("*.py"), ROOT / "benchmarks" / "conftest.py"]
    read = {name for path in sources for name in re.findall(r"[\"'](LOGBUS_BENCH_[A-Z_]+)[\"']", path.read_text())}
    assert set(documented) == read - {"LOGBUS_BENCH_COMMAND"}
    makefile = (ROOT / "Makefile").read_text()
    for name, value in documented.items():
        default = re.search(rf"^{name} \?= (.+)$", makefile, flags=re.M)
        assert value.strip("`") == (default.group(1) if default else "not set"), name
        if default:  # and handed to the suites
            assert f"{name}=$({name})" in makefile, name


def test_pipeline_options_are_the_pipelines_keywords():
    # Otherwise a documented pipeline option would be handed to the extractor (or the other way round).
    assert set(PIPELINE_OPTIONS) == set(_parameters(DOCUMENTED["Sample pipeline options"]))


def test_wandb_logger_takes_the_wandb_backends_arguments():
    # One table documents both; WandBLogger's own equality with Composer's is in test_composer_adapter.py.
    from logbus.plugins.wandb import WandBBackend

    ours = [(p.name, p.default) for p in inspect.signature(WandBLogger).parameters.values()]
    assert ours == [(p.name, p.default) for p in inspect.signature(WandBBackend).parameters.values()]


def test_the_environment_variables_are_the_ones_the_code_reads():
    # Every room of the runtime; core/bench's own variables tune benchmark runs, not logbus.
    sources = [path for folder in ("core", "plugins") for path in ROOT.joinpath(folder).rglob("*.py")
               if path.relative_to(ROOT).parts[:2] != ("core", "bench")]
    read = {name for path in sources for name in re.findall(r"[\"'](LOGBUS_[A-Z_]+)[\"']", path.read_text())
            if not name.endswith("_OPTIONS")}  # option tables named in __all__ are not variables
    documented = {re.fullmatch(r"`(\w+)`", row[0]).group(1) for row in table_rows(REFERENCE["Environment variables"])}
    assert documented == read


# -- the README and the pages as a whole -----------------------------------------------------------


def _nav() -> list[Path]:
    """The pages in the order of the site's navigation (``nav`` in mkdocs.yml)."""
    config = (ROOT / "mkdocs.yml").read_text()
    nav = config[config.index("\nnav:\n"):]
    return [DOCS / name for name in re.findall(r"^\s+- (?:[^:\n]+: )?([\w/.-]+\.md)$", nav, flags=re.M)]


def test_the_front_door_comes_first():
    # The README: what it is (the text above the first chapter), how to install it, the two commands and
    # the quick starts; then where to go next. The guides and the references are pages of the docs, which
    # the README links to and the site lists in this order.
    order = list(sections(README, 2))
    assert (order.index("Install") < order.index("The two commands") < order.index("Quick start: Composer")
            < order.index("Quick start: migrating in one line") < order.index("Quick start: a plain PyTorch loop")
            < order.index("Where to go next")), order
    assert len(README.splitlines()) <= README_MAX_LINES
    assert "make demo" in CHAPTERS["The two commands"] and "make test" in CHAPTERS["The two commands"]
    assert re.search(r"!\[[^\]]+\]\(docs/viewer/\w+\.png\)", README.split("\n## ")[0]), "what it is: a screenshot"
    nav = _nav()
    assert sorted(nav) == sorted(PAGES), "every page is in the site's nav, once"
    for chapter in ("Migrating from Composer's WandBLogger", "From the guide's LogPredictions to SampleLogger",
                    "Plain PyTorch loops", "W&B offline and `wandb sync`", "Writing a plugin",
                    "Configuration reference", "Hook reference"):
        page = HOMES[chapter]
        assert f"]({page.relative_to(ROOT)})" in CHAPTERS["Where to go next"], chapter
        assert nav.index(page) > nav.index(DOCS / "index.md"), chapter
    assert (nav.index(HOMES["Writing a plugin"]) < nav.index(HOMES["Configuration reference"])
            < nav.index(HOMES["Hook reference"]))


def test_python_blocks_parse_and_toml_blocks_load():
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10: the same parser is the dev extra's tomli
        import tomli as tomllib

    for path, text in TEXTS.items():
        for block in code_blocks(text, "python"):
            compile(block, str(path.relative_to(ROOT)), "exec")
        for block in code_blocks(text, "toml"):
            tomllib.loads(block)


def _anchors(text: str) -> set[str]:
    return {slug(match) for match in re.findall(r"^#+ (.+)$", _without_code(text), flags=re.M)}


def test_links_lead_somewhere():
    """Relative links resolve from the file's folder, as GitHub and the site read them; a heading they
    name is in the page they name (``mkdocs build --strict`` checks the site's own links the same way)."""
    assert (ROOT / "README.md") in TEXTS and len(PAGES) > 10
    for path, text in TEXTS.items():
        name = path.relative_to(ROOT)
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if target.startswith(("http://", "https://")):
                continue
            file, _, anchor = target.partition("#")
            linked = (path.parent / file).resolve() if file else path
            assert linked.exists(), f"{name} links to a missing file: {target}"
            if anchor:
                assert linked in TEXTS, f"{name} links to a heading of a file that is not documentation: {target}"
                assert anchor in _anchors(TEXTS[linked]), f"{name} links to a missing heading: {target}"


def test_the_fixture_table_lists_the_kits_fixtures():
    fixtures = {name for name in logbus.testing.__all__ if not isinstance(getattr(logbus.testing, name), type)}
    plugin_guide = CHAPTERS["Writing a plugin"]
    table = plugin_guide[plugin_guide.index("| fixture |"):]
    assert {re.fullmatch(r"`(\w+)`", row[0]).group(1) for row in table_rows(table)} == fixtures


def test_the_plugin_example_works_as_written(pytester):
    """The files of "Writing a plugin" (code blocks whose first line is ``# <path>``), written out as
    they are and tested with the test they show."""
    files = {}
    for block in code_blocks(CHAPTERS["Writing a plugin"], "python"):
        first_line, _, body = block.partition("\n")
        if re.fullmatch(r"# [\w/]+\.py", first_line):
            files[first_line[2:]] = body
    assert {"my_plugin/__init__.py", "tests/conftest.py"} <= set(files) and any(p.startswith("tests/test_") for p in files)
    for relative, body in files.items():
        path = pytester.path / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(body))
    pytester.syspathinsert()
    result = pytester.runpytest("tests", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=sum(body.count("\ndef test_") + body.startswith("def test_")
                                      for relative, body in files.items() if relative.startswith("tests/test_")))


# -- statements about behaviour: each checked against what the code does ---------------------------


def test_the_local_run_format_names_the_files_the_local_backend_writes(logbus_dir):
    """Every ``key`` at step N → ``file`` example of the rows row is logged through a real local run, and
    the files of ``rows/`` are exactly those; their first columns, the pack's fields and run.json's
    format version are the ones the section names."""
    import numpy as np
    import pyarrow.parquet as pq

    from logbus import start_run
    from logbus.records import Image

    section = CHAPTERS["Local run format"]
    (rows_row,) = [row for row in table_rows(section) if row[0] == "`rows/<key>/<step>-r<rank>-<n>.parquet`"]
    examples = re.findall(r"`([^`]+)` at step (\d+) → `(rows/[^`]+)`", rows_row[1])
    assert len(examples) >= 2, rows_row
    (packs_row,) = [row for row in table_rows(section) if row[0] == "`packs/<id>.parquet`"]
    pack_fields = re.search(r"one row per distinct image or mask \(([^)]*)\)", packs_row[1]).group(1)
    columns = re.search(r"Every rows file has the columns (.*?)then the table's own", " ".join(section.split()))
    first_columns = re.findall(r"`(_\w+)`", columns.group(1))

    with start_run("format", backends=["local"]) as run:
        for key, step, _ in examples:
            run.log_table(key, ["id", "image"], [[1, Image(pixels=np.full((2, 2, 3), int(step), np.uint8))]],
                          step=int(step))
    run_dir = logbus_dir / "format"
    written = {str(path.relative_to(run_dir)) for path in (run_dir / "rows").rglob("*") if path.is_file()}
    assert written == {file for _, _, file in examples}
    for key, _, file in examples:
        table = pq.read_table(run_dir / file)
        assert table.column_names[:5] == first_columns == ["_key", "_step", "_rank", "_row", "_sample_key"]
        assert table.column("_key").to_pylist() == [key] and table.column_names[5:] == ["id", "image"]
    packs = list((run_dir / "packs").glob("*.parquet"))
    assert packs and all(pq.read_schema(path).names == re.findall(r"`(\w+)`", pack_fields) for path in packs)
    assert json.loads((run_dir / "run.json").read_text())["format_version"] == 2
    assert "`\"format_version\": 2`" in section


def test_no_sentence_promises_that_sample_tables_are_never_dropped():
    """Sample tables and images may be dropped under backpressure (Guarantees, and the slow-backend
    fault test); only metrics, hyperparameters, artifacts and the run's start and end never are."""
    everything = "\n\n".join(_without_code(text) for text in TEXTS.values())
    sentences = re.split(r"(?<=[.:;])\s+", re.sub(r"\s+", " ", everything))
    promised = [s for s in sentences if re.search(r"never (be )?dropped", s) and re.search(r"table|image|sample", s)]
    assert promised == []
    assert "Sample tables and images, per backend." in CHAPTERS["Guarantees"]


def test_the_close_deadline_is_the_one_the_readme_states():
    """A Composer run's end (``fit_end`` flush, ``close`` flush, ``post_close``) with a hung backend takes
    the bound the Guarantees give, computed for a short ``close_timeout``: not less (the deadline is
    waited for) and not much more."""
    import threading
    import time

    from logbus.records import Metrics, RunStarted

    text = re.sub(r"\s+", " ", sections(CHAPTERS["Guarantees"], 3)["Close deadlines"])
    bound = re.search(r"end of training for up to (\d+) × `close_timeout` \((\d+) s by default\)", text)
    assert bound, text
    waits, default_total = int(bound.group(1)), float(bound.group(2))
    default = inspect.signature(LogBusLogger).parameters["close_timeout"].default
    assert default_total == waits * default

    class Hangs:
        release = threading.Event()

        def log(self, record):
            if isinstance(record, Metrics):
                self.release.wait()

        def close(self, finish):
            pass

    close_timeout = 1.0
    hung, healthy = Hangs(), logbus.testing.RecordingBackend()
    destination = LogBusLogger(backends=[hung, healthy], close_timeout=close_timeout, log_stats=False)
    destination.bus.emit(RunStarted(run_name="deadline"))
    destination.bus.emit(Metrics({"loss": 1.0}, step=1))
    try:
        started = time.monotonic()
        destination.fit_end(None, None)  # with log_stats=False neither event reads the state or the logger
        destination.close(None, None)
        destination.post_close()
        elapsed = time.monotonic() - started
    finally:
        hung.release.set()
    expected = waits * close_timeout  # fit_end's flush, close's flush and the final close: one wait each
    assert expected - 0.05 <= elapsed <= expected + 1.5, (elapsed, expected)
    assert healthy.finished is not None  # the healthy backend closed its run all the same


def test_offline_table_images_are_in_the_run_folder_as_the_docs_say(wandb_offline):
    """What the W&B offline guide says about an offline run: wandb stages the images of its tables under
    ``$WANDB_DATA_DIR/artifacts/staging/``; once the run finished they are in the run folder's
    ``logbus-staging/``, the run file names them there, and wandb's staged copies of them are gone."""
    import numpy as np

    from logbus import start_run
    from logbus.records import Image

    section = re.sub(r"\s+", " ", CHAPTERS["W&B offline and `wandb sync`"])
    assert "`$WANDB_DATA_DIR/artifacts/staging/` (default `~/.local/share/wandb/artifacts/staging/`)" in section
    assert "into `<run folder>/logbus-staging/`, rewrites the run file to name them there" in section
    assert "logbus wandb-relink wandb/offline-run-" in section

    with start_run("staged", backends=[("wandb", {"project": "p"})]) as run:
        run.log_table("samples/val", ["id", "image"], [[0, Image(pixels=np.full((4, 4, 3), 9, np.uint8))]], step=1)
    (run_dir,) = find_run_dirs(wandb_offline)
    ((_, _, ((_, cell),)),) = read_wandb_run(run_dir).tables("samples/val")
    assert Path(cell["file"]).parent == run_dir / "logbus-staging" and Path(cell["file"]).read_bytes()[:4] == b"\x89PNG"
    # wandb's staged copy of the image is gone (wandb also leaves a second copy of each table's JSON
    # there, which no run file names: plain wandb.Table does the same).
    staging = wandb_offline / ".data" / "artifacts" / "staging"
    assert not [path for path in staging.iterdir() if path.read_bytes()[:4] == b"\x89PNG"]
    (run_file,) = run_dir.glob("*.wandb")
    assert str(staging) not in run_file.read_bytes().decode("latin-1")


def test_the_readme_states_the_wandb_floor_of_pyproject():
    floor = re.search(r'"wandb>=([0-9.]+)"', (ROOT / "pyproject.toml").read_text()).group(1)
    assert f"wandb >= {floor}" in CHAPTERS["Install"]
    assert f"on {floor}, the oldest it allows" in README  # tests/plugins/test_wandb_floor.py runs it
