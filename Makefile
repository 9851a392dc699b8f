# ravel-bench: setup, main job and tests. Every target installs what it needs into .venv.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The release: the copy beside the checkout when there is one, else the official URL.
RAVEL_SOURCE ?= $(if $(wildcard ../shared/ravel/data.tgz),../shared/ravel/data.tgz,https://github.com/explanare/ravel/raw/main/data.tgz)
OUT ?= build/ravel

.PHONY: setup demo test lint bench clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# torch first, pinned: the CPU wheel on disk. An unpinned torch would pull a multi-GB CUDA build.
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $@

setup: $(VENV)/.installed

demo: setup
	$(BIN)/ravel-bench dataset build --source $(RAVEL_SOURCE) --out $(OUT) --overwrite
	RAVEL_RELEASE=$(RAVEL_SOURCE) $(BIN)/ravel-bench demo --out build/demo

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: setup lint
	HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 $(BIN)/python -m pytest -q

# The benchmark extra (pyvene, the baseline) goes into the same venv; torch stays the pinned one.
$(VENV)/.bench-installed: $(VENV)/.installed pyproject.toml
	$(BIN)/pip install --quiet -e ".[dev,bench]"
	touch $@

bench: $(VENV)/.bench-installed
	HF_HUB_OFFLINE=1 $(BIN)/python -m benchmarks.run --release $(RAVEL_SOURCE)

clean:
	rm -rf $(VENV) build .pytest_cache
