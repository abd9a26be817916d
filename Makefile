# Each target creates .venv and installs logbus into it when missing, so each works alone on a fresh machine.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export WANDB_SILENT ?= true

.PHONY: demo test bench lint clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/logbus demo

test: $(STAMP)
	$(BIN)/ruff check core plugins kernels tests benchmarks
	TRITON_INTERPRET=1 $(BIN)/pytest -q
	$(BIN)/pytest -q benchmarks --benchmark-disable -p no:cacheprovider

bench: $(STAMP)
	$(BIN)/pytest benchmarks --benchmark-only --benchmark-columns=min,median,mean,rounds

lint: $(STAMP)
	$(BIN)/ruff check core plugins kernels tests benchmarks

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .benchmarks wandb logbus_runs
