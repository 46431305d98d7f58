# Two commands do all the set-up on a fresh machine:
#   make demo   install everything, then simulate data, train the demo model, export bundle/
#   make test   install everything, then run the test suite
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install system-deps demo test engines bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $(STAMP)

install: system-deps $(STAMP)

# Debian packages the macro tests need (ImageJ 1.x and a virtual screen); skipped when present.
system-deps:
	@bash scripts/install_system_deps.sh

demo: install
	$(BIN)/w2sr demo --out bundle

test: install
	$(BIN)/python -m pytest -q tests

# Old TensorFlow / ONNX Runtime environments DeepImageJ embeds (cached in ~/.cache/w2sr/engines).
engines: install
	$(BIN)/w2sr check-engines bundle

bench: install
	$(BIN)/python benchmarks/bench_training.py
	$(BIN)/python benchmarks/bench_export.py
	$(BIN)/python benchmarks/bench_predict.py

clean:
	rm -rf bundle runs data/simulated
