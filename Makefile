# Two commands do all set-up on a fresh machine:
#   make serve   -> creates .venv, installs, starts the service on the bundled model (127.0.0.1:8000)
#   make test    -> creates .venv, installs, runs ruff + the whole test suite
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
HOST ?= 127.0.0.1
PORT ?= 8000
PYTEST_ARGS ?=

$(BIN)/.installed: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch first, pinned to the CPU build (the `train` extra's range admits it, so pip keeps it)
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[train,dev]'
	touch $@

.PHONY: install serve test lint model system-deps
install: $(BIN)/.installed

# Optional system tools some tests use (wrk: benchmark smoke tests; prometheus/promtool: observability tests).
# Best effort: installed with apt-get when running as root on Debian; without them those tests skip with a reason.
system-deps:
	@if command -v wrk >/dev/null && command -v prometheus >/dev/null && command -v promtool >/dev/null; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk prometheus >/dev/null) \
	    || echo "system-deps: apt-get could not install wrk/prometheus; their tests will skip"; \
	else echo "system-deps: wrk/prometheus missing and no root apt-get; their tests will skip"; fi

# Reproduce the bundled model: two members trained on synthetic crops (own seeds and renders), combined
# into one ensemble, fine-tuned with leave-one-source-out CV, exported.
REAL_LABELS ?= ../shared/data/real-dev/labels.csv
model: $(BIN)/.installed
	$(BIN)/python -m models.train --out runs/default-s0 --seed 0 --real-labels $(REAL_LABELS)
	$(BIN)/python -m models.train --out runs/default-s1 --seed 1 --real-labels $(REAL_LABELS)
	$(BIN)/python -m models.ensemble runs/default-s0/best.pt runs/default-s1/best.pt --out runs/default/best.pt \
	  --real-labels $(REAL_LABELS)
	$(BIN)/python -m models.finetune --base runs/default/best.pt --out runs/default-ft --real-labels $(REAL_LABELS)
	$(BIN)/python -m export runs/default-ft/best.pt --out models/repository --force
	$(BIN)/python -m models.evaluate --model models/repository/omr-bubble/1 --labels $(REAL_LABELS) --out runs/eval

serve: $(BIN)/.installed
	$(BIN)/python -m service --host $(HOST) --port $(PORT)

lint: $(BIN)/.installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# pytest exits 5 when it collects no tests: a suite that runs nothing proves nothing, so that fails too.
test: $(BIN)/.installed system-deps
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python -m pytest $(PYTEST_ARGS); rc=$$?; \
	  if [ $$rc -eq 5 ]; then echo "pytest collected no tests" >&2; exit 1; fi; exit $$rc
