# Fresh machine: `make demo` (set up + speedrun) or `make test` (set up + tests).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# Installed before anything else so that no other package pulls a different (CUDA, multi-GB) torch build.
TORCH_SPEC ?= torch==2.13.0
OUT ?= runs/speedrun
export OMP_WAIT_POLICY ?= PASSIVE

.PHONY: setup demo test bench runner clean bubblewrap chromium

setup: $(VENV)/.installed bubblewrap chromium

# The chat's python tool runs model-written code only inside a bubblewrap jail (lmforge/inference/jail.py).
# Installed with apt where it is missing and we may (root, apt-get present); otherwise one line says so and setup
# goes on: the tool then refuses to run code, and the jail's tests skip with the reason.
bubblewrap:
	@command -v bwrap >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 \
		&& apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq bubblewrap \
		>/dev/null; } || echo "note: bubblewrap (bwrap) is missing and could not be installed here;" \
		"the python tool will refuse to run code (install bubblewrap, or pass --unsafe-python)" >&2

# The tokenizer explorer's test opens the saved page in a real browser: Debian's Chromium, driven by Playwright
# (a dev dependency; `playwright install` and its downloaded browsers are never used). Same pattern as bubblewrap:
# installed where missing and we may, otherwise one line says so and the test skips with the reason.
chromium:
	@command -v chromium >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 \
		&& apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium \
		>/dev/null; } || echo "note: chromium is missing and could not be installed here;" \
		"the explorer page's browser test will skip (install chromium)" >&2

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
