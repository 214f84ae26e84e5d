# ferroquant: every target does its own set-up (venv, build, fixtures) on a fresh machine.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
export VIRTUAL_ENV := $(abspath $(VENV))
export PATH := $(abspath $(VENV))/bin:$(PATH)
# llama.cpp (through llama-cpp-python) is the peer the tests compare against; it builds
# from source once (pip caches the wheel afterwards).
PEER_DEPS := llama-cpp-python==0.3.36
# torch + transformers: calibration (GPTQ, AWQ, imatrix) and the float reference. The
# conversion path never imports them (a test proves it); PyPI's torch is a large CUDA build.
CALIB_DEPS := "torch>=2.2" "transformers>=4.45" "accelerate>=0.30" "sentencepiece>=0.2" \
	"protobuf>=4" "matplotlib>=3.7"

DEPS_STAMP := $(VENV)/.deps-stamp
PEER_STAMP := $(VENV)/.peer-stamp
CALIB_STAMP := $(VENV)/.calib-stamp
BUILD_STAMP := $(VENV)/.build-stamp
RUST_SRC := $(shell find rust -name '*.rs') Cargo.toml Cargo.lock pyproject.toml

.PHONY: all venv deps peer calib build fixtures test lint pytest cargo-test demo bench wheel clean

all: build

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip

$(DEPS_STAMP): pyproject.toml | $(PY)
	$(PIP) install -q "maturin>=1.7,<2" "numpy>=1.24" "gguf>=0.17" "safetensors>=0.4" "tqdm>=4.60" \
		"tokenizers>=0.19" "pytest>=7" "ruff>=0.5"
	touch $@

deps: $(DEPS_STAMP)

$(PEER_STAMP): | $(DEPS_STAMP)
	$(PIP) install -q $(PEER_DEPS)
	touch $@

peer: $(PEER_STAMP)

$(CALIB_STAMP): | $(DEPS_STAMP)
	$(PIP) install -q $(CALIB_DEPS)
	touch $@

calib: $(CALIB_STAMP)

$(BUILD_STAMP): $(RUST_SRC) $(shell find python -name '*.py' -o -name '*.pyi') | $(DEPS_STAMP)
	$(VENV)/bin/maturin develop --release -q
	touch $@

build: $(BUILD_STAMP)

fixtures: $(DEPS_STAMP)
	$(PY) fixtures/fetch.py

lint: $(DEPS_STAMP)
	cargo fmt --check
	cargo clippy --all-features --all-targets -- -D warnings
	$(VENV)/bin/ruff check python tests benches fixtures
	$(VENV)/bin/ruff format --check python tests benches fixtures

cargo-test:
	cargo test --release -q

pytest: build fixtures peer calib
	$(PY) -m pytest -q

test: lint cargo-test pytest

demo: build fixtures
	$(PY) -m ferroquant inspect "$$($(PY) fixtures/fetch.py --print-model)"
	$(PY) benches/roundtrip_model.py "$$($(PY) fixtures/fetch.py --print-model)"

bench: build fixtures
	$(PY) benches/bench_quants.py --out benches/results

wheel: $(DEPS_STAMP)
	$(VENV)/bin/maturin build --release -o dist

clean:
	rm -rf target dist $(VENV)
