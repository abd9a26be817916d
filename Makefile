# Each target creates .venv and installs logbus into it when missing, so each works alone on a fresh machine.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export WANDB_SILENT ?= true

.PHONY: demo test docs bench soak lint typecheck clean browser editable

# The folders map into `logbus` through package-dir (pyproject.toml). setuptools' default editable mode
# serves that mapping with an import hook that editors and type checkers cannot follow; strict mode
# builds a tree of links instead (build/__editable__.*/logbus/... -> core/, plugins/, kernels/) that
# any tool reads as a plain package on sys.path.
STRICT := --config-settings editable_mode=strict
# Strict mode links the files present at install time: a file added, removed or renamed later is not
# seen until the next install. The list of source files at the last install is kept beside the links
# (so removing build/ also triggers a reinstall), and `editable` reinstalls (--no-deps, a few seconds)
# whenever today's list differs from it.
SOURCES_NOW = find core plugins kernels -name __pycache__ -prune -o -type f -print | LC_ALL=C sort
LINKED := build/editable-sources.txt

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]' $(STRICT)
	mkdir -p build && $(SOURCES_NOW) > $(LINKED)
	touch $(STAMP)

editable: $(STAMP)
	@mkdir -p build && $(SOURCES_NOW) > $(LINKED).now
	@if cmp -s $(LINKED).now $(LINKED); then rm $(LINKED).now; else \
	  echo "make: the set of source files changed since logbus was installed; relinking (strict editable mode)"; \
	  $(BIN)/pip install --quiet --no-deps --no-build-isolation -e . $(STRICT) && mv $(LINKED).now $(LINKED); fi

demo: editable
	$(BIN)/logbus demo

# The example plugin package is tested as its users would run it: built, installed, and its own tests
# run with the logbus.testing fixtures. It is installed into a folder of its own that only its test
# run puts on PYTHONPATH, never into .venv: an entry point installed there would be loaded by every
# other test (and by `logbus plugins`), so the suite's results would depend on the order of commands.
EXAMPLE := examples/logbus-example-plugin
EXAMPLE_BUILD := build/example-plugin

# The viewer's tests drive a real headless Chromium. When none is on PATH, `make test` says so and
# installs Debian's chromium with apt-get (needs root; at most 5 minutes); where that fails it says
# that too, and those tests fail with one line saying how to get one (tests/plugins/test_viewer.py).
browser:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || { \
	  echo "make test: the viewer tests need chromium; installing it with apt-get (at most 5 minutes)"; \
	  timeout 300 sh -c 'apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	    --no-install-recommends -o DPkg::Lock::Timeout=60 chromium' >/dev/null 2>&1 \
	  || echo "make test: chromium could not be installed; the viewer's browser tests will fail"; }

test: editable browser
	$(BIN)/ruff check core plugins kernels tests benchmarks $(EXAMPLE)
	$(BIN)/mypy  # [tool.mypy] in pyproject.toml: the logbus package (core/, plugins/, kernels/) through the links
	$(MAKE) --no-print-directory docs
	$(BIN)/pytest -q  # tests/conftest.py sets TRITON_INTERPRET=1 where there is no CUDA device
	$(BIN)/pytest -q benchmarks --benchmark-disable -p no:cacheprovider -m "not soak"
	rm -rf $(EXAMPLE_BUILD) && mkdir -p $(EXAMPLE_BUILD) && cp -R $(EXAMPLE) $(EXAMPLE_BUILD)/src
	rm -rf $(EXAMPLE_BUILD)/src/build $(EXAMPLE_BUILD)/src/*.egg-info  # build from a clean copy, never in the tree
	$(BIN)/pip install --quiet --no-deps --no-build-isolation --no-index --target $(EXAMPLE_BUILD)/site $(EXAMPLE_BUILD)/src
	PYTHONPATH=$(CURDIR)/$(EXAMPLE_BUILD)/site $(BIN)/pytest -q -p no:cacheprovider $(EXAMPLE)/tests

# The docs site (mkdocs.yml): docs/ into build/docs/, warnings as errors (strict: true there); the API
# reference reads the docstrings through the editable links. NO_MKDOCS_2_WARNING quiets Material's
# banner about MkDocs 2.0, which is not a warning about these docs. No --quiet: it hides the warnings
# from strict mode too, and a broken link then builds (mkdocs 1.6).
docs: editable
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

# Writes each suite's figures to benchmarks/results/<suite>-<machine kind>.json (benchmarks/conftest.py),
# then renders the docs' tables from them into docs/benchmarks.md (logbus.bench.tables). 3 rounds an eval figure
# and 64 images per eval at 224x224 (2048 at 32x32, the suites' own) keep it to about a quarter of an hour
# on 2 cores; set either variable to measure more (docs/benchmarks.md, "Recording the figures").
LOGBUS_BENCH_ROUNDS ?= 3
LOGBUS_BENCH_SIZES ?= 224:64
bench: editable
	LOGBUS_BENCH_ROUNDS=$(LOGBUS_BENCH_ROUNDS) LOGBUS_BENCH_SIZES=$(LOGBUS_BENCH_SIZES) \
		$(BIN)/pytest benchmarks --benchmark-only --benchmark-columns=min,median,max,rounds -m "not soak"
	$(BIN)/python -m logbus.bench.tables --update docs/benchmarks.md

# 100 evals x 10,000 samples into W&B offline and the local backend: memory, drops, delivery.
soak: editable
	$(BIN)/pytest benchmarks/bench_soak.py --benchmark-only -m soak -s

lint: editable
	$(BIN)/ruff check core plugins kernels tests benchmarks $(EXAMPLE)

typecheck: editable
	$(BIN)/mypy

# Everything the commands above create; each is in .gitignore (tests/test_front_door.py checks both).
clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .benchmarks .hypothesis .ruff_cache .mypy_cache .pytest-artifacts \
		bench-*/ wandb logbus_runs .whl
	find . \( -name __pycache__ -o -name .ruff_cache \) -type d -prune -exec rm -rf {} +  # the example has its own
