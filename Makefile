# Set-up and the two everyday commands: `make demo` and `make test`.
# Both create the virtual environment first, so a fresh machine with Python 3.11 needs nothing else.
VENV ?= .venv
PYTHON ?= python3
BIN = $(VENV)/bin

.PHONY: venv services test lint demo clean

# torch is installed first, then the project (whose torch range 2.13.0 satisfies, so pip keeps it).
# The CPU build comes first: the default index gives Linux a CUDA build of several GB. It is taken
# from TORCH_INDEX when that index answers within 5 s (one request; a machine that cannot reach it
# loses at most those 5 s, 0.3 s where its name does not resolve), else from the default index
# (which, on a machine with only a local mirror, is where the CPU wheel is).
# A GPU build: make venv TORCH_INDEX=<the CUDA index of pytorch.org's install selector>, or
# TORCH_INDEX= (empty) for the default index.
TORCH ?= torch==2.13.0
TORCH_INDEX ?= https://download.pytorch.org/whl/cpu
INDEX_ANSWERS = import sys, urllib.request; urllib.request.urlopen(sys.argv[1].rstrip("/") + "/torch/", timeout=5)

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	if [ -n "$(TORCH_INDEX)" ] && $(BIN)/python -c '$(INDEX_ANSWERS)' '$(TORCH_INDEX)' 2>/dev/null; then \
		echo "torch from $(TORCH_INDEX)"; \
		$(BIN)/pip install -q --index-url '$(TORCH_INDEX)' '$(TORCH)' || $(BIN)/pip install -q '$(TORCH)'; \
	else \
		echo "torch from the default index ($(TORCH_INDEX) does not answer)"; \
		$(BIN)/pip install -q '$(TORCH)'; \
	fi
	$(BIN)/python -c 'import torch; print("torch", torch.__version__, "CUDA" if torch.version.cuda else "CPU")'
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

venv: $(BIN)/.installed

services:
	bash scripts/services.sh

# Type checks, strict (pyproject.toml): the packages; tests/, whose test_soak imports
# benchmarks/soak_reference.py; benchmarks/, with tests/ first on the path as the benchmarks put it.
# tests/ and benchmarks/ each hold a cluster.py, so they are checked apart. Two benchmarks are
# checked under the names they run by: latency.py as benchmarks.latency (so the others import it)
# and cluster.py, a script whose own `import cluster` is tests/cluster.py, as benchmarks.cluster.
lint: venv
	$(BIN)/ruff check .
	$(BIN)/mypy
	MYPYPATH=benchmarks $(BIN)/mypy tests
	MYPYPATH=tests $(BIN)/mypy benchmarks --exclude '^benchmarks/(cluster|latency)\.py$$'
	MYPYPATH=tests $(BIN)/mypy --explicit-package-bases benchmarks/cluster.py benchmarks/latency.py

test: venv services
	$(BIN)/pytest

demo: venv
	$(BIN)/volcast demo

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache .mypy_cache .ruff_cache
