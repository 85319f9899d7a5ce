# Fresh machine: `make demo` (set up + speedrun) or `make test` (set up + tests).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# Installed before anything else so that no other package pulls a different (CUDA, multi-GB) torch build.
TORCH_SPEC ?= torch==2.13.0
OUT ?= runs/speedrun
export OMP_WAIT_POLICY ?= PASSIVE

.PHONY: setup demo test bench runner clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install "$(TORCH_SPEC)"
	$(PY) -m pip install -e ".[dev]"
	touch $@

demo: setup
	$(VENV)/bin/lmforge speedrun --out $(OUT)

test: setup
	$(PY) -m pytest -q

runner: runner/run

runner/run: runner/run.c
	$(CC) -O3 -march=native -ffast-math -fopenmp -std=c99 -Wall -o $@ $< -lm

clean:
	rm -rf $(VENV) runner/run
