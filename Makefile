# Set-up and the two everyday commands: `make demo` and `make test`.
# Both create the virtual environment first, so a fresh machine with Python 3.11 needs nothing else.
VENV ?= .venv
PYTHON ?= python3
BIN = $(VENV)/bin

.PHONY: venv services test lint demo clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# CPU torch first: a bare torch requirement pulls a CUDA build of several GB.
	$(BIN)/pip install -q torch==2.13.0 || $(BIN)/pip install -q torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

venv: $(BIN)/.installed

services:
	bash scripts/services.sh

lint: venv
	$(BIN)/ruff check .
	$(BIN)/mypy

test: venv services
	$(BIN)/pytest

demo: venv
	$(BIN)/volcast demo

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache .mypy_cache .ruff_cache
