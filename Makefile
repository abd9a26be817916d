# Each target creates .venv and installs logbus into it when missing, so each works alone on a fresh machine.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export WANDB_SILENT ?= true

.PHONY: demo test bench soak lint clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/logbus demo

# The example plugin package is tested as its users would run it: built, installed, and its own tests
# run with the logbus.testing fixtures. It is installed into a folder of its own that only its test
# run puts on PYTHONPATH, never into .venv: an entry point installed there would be loaded by every
# other test (and by `logbus plugins`), so the suite's results would depend on the order of commands.
EXAMPLE := examples/logbus-example-plugin
EXAMPLE_BUILD := build/example-plugin

test: $(STAMP)
	$(BIN)/ruff check core plugins kernels tests benchmarks $(EXAMPLE)
	TRITON_INTERPRET=1 $(BIN)/pytest -q
	$(BIN)/pytest -q benchmarks --benchmark-disable -p no:cacheprovider -m "not soak"
	rm -rf $(EXAMPLE_BUILD) && mkdir -p $(EXAMPLE_BUILD) && cp -R $(EXAMPLE) $(EXAMPLE_BUILD)/src
	rm -rf $(EXAMPLE_BUILD)/src/build $(EXAMPLE_BUILD)/src/*.egg-info  # build from a clean copy, never in the tree
	$(BIN)/pip install --quiet --no-deps --no-build-isolation --no-index --target $(EXAMPLE_BUILD)/site $(EXAMPLE_BUILD)/src
	PYTHONPATH=$(CURDIR)/$(EXAMPLE_BUILD)/site $(BIN)/pytest -q -p no:cacheprovider $(EXAMPLE)/tests

bench: $(STAMP)
	$(BIN)/pytest benchmarks --benchmark-only --benchmark-columns=min,median,mean,rounds -m "not soak"

# 100 evals x 10,000 samples into W&B offline and the local backend: memory, drops, delivery.
soak: $(STAMP)
	$(BIN)/pytest benchmarks/bench_soak.py --benchmark-only -m soak -s

lint: $(STAMP)
	$(BIN)/ruff check core plugins kernels tests benchmarks $(EXAMPLE)

# Everything the commands above create; each is in .gitignore (tests/test_front_door.py checks both).
clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .benchmarks .hypothesis .ruff_cache .pytest-artifacts \
		bench-*/ wandb logbus_runs
	find . \( -name __pycache__ -o -name .ruff_cache \) -type d -prune -exec rm -rf {} +  # the example has its own
