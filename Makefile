# Steward developer entry points. Every target creates or reuses .venv and
# installs what it needs, so a fresh machine needs only `make test`.

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# The proxy before the session split: `make bench` measures against it in the same run.
BENCH_BASELINE ?= a2bd63b
PYTEST_ARGS ?=
# Go may be installed outside PATH (the official tarball lives in /usr/local/go).
export PATH := $(PATH):/usr/local/go/bin

.PHONY: all demo test unit e2e bench lint controlplane system-deps clean

all: test

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

system-deps:
	scripts/ensure-system-deps.sh

demo: $(STAMP) system-deps
	$(BIN)/steward demo

controlplane:
	e2e/controlplane/build.sh

test: $(STAMP) system-deps
	@if command -v go >/dev/null 2>&1; then e2e/controlplane/build.sh; \
	 else echo "go not found: e2e tests will skip"; fi
	$(BIN)/python -m pytest $(PYTEST_ARGS)

unit: $(STAMP) system-deps
	$(BIN)/python -m pytest tests $(PYTEST_ARGS)

e2e: $(STAMP) controlplane
	$(BIN)/python -m pytest e2e $(PYTEST_ARGS)

bench: $(STAMP) system-deps
	$(BIN)/python bench/pgbench_proxy.py --baseline-ref $(BENCH_BASELINE)
	$(BIN)/python bench/pgbench_guardrails.py
	$(BIN)/python bench/large_result.py
	$(BIN)/python bench/costly_statements.py
	$(BIN)/python bench/masking.py
	$(BIN)/python bench/detectors.py
	$(BIN)/python bench/reload_latency.py

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports
	$(BIN)/hadolint Dockerfile.proxy Dockerfile.operator

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .hypothesis
