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
# transformers loads GPTQ and AWQ checkpoints through optimum + gptqmodel (on the CPU, its torch
# kernels). gptqmodel declares heavy requirements it does not import for loading (datasets,
# pyarrow, torchao, maturin, ...) and would move numpy and torch, so it and its import-time
# needs go in without their dependencies; the load tests (GPTQ and AWQ) run against them.
GPTQ_BACKEND := gptqmodel==7.7.0 optimum==2.3.0 pypcre==0.6.4 logbar==0.4.15 device-smi==0.5.7 \
	tokenicer==0.0.14 defuser==0.0.28 threadpoolctl==3.8.0

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
	$(PIP) install -q --no-deps $(GPTQ_BACKEND)
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

DEMO := build/demo
MODEL = $$($(PY) fixtures/fetch.py --print-model)
EVAL_CHUNKS ?= 8
# the side-by-side comparison that ends the demo (report in build/demo/compare/)
COMPARE_METHODS ?= rtn,imatrix,gptq,awq,dynamic
COMPARE_TYPES ?= Q4_K_M,Q4_0
COMPARE_CHUNKS ?= 4
COMPARE_NSAMPLES ?= 16

demo: build fixtures calib
	mkdir -p $(DEMO)
	$(PY) -m ferroquant inspect "$(MODEL)" --no-tensors
	$(PY) benches/roundtrip_model.py "$(MODEL)" --json $(DEMO)/roundtrip.json
	$(PY) -m ferroquant export-hf "$(MODEL)" -o $(DEMO)/smollm2-hf --dtype float32
	$(PY) -m ferroquant convert $(DEMO)/smollm2-hf -o $(DEMO)/smollm2-Q8_0.gguf --type Q8_0
	$(PY) -m ferroquant convert $(DEMO)/smollm2-hf -o $(DEMO)/smollm2-Q4_K_M.gguf --type Q4_K_M
	for f in Q8_0 Q4_K_M; do \
		$(PY) -m ferroquant eval $(DEMO)/smollm2-$$f.gguf --ref "$(MODEL)" --ctx 512 \
			--chunks $(EVAL_CHUNKS) --text fixtures/wikitext-2-raw-test.txt --json \
			> $(DEMO)/eval-$$f.json || exit 1; \
		$(PY) -c 'import json,sys; d=json.load(open(sys.argv[1])); print("%s: ppl %.3f (reference %.3f), KL %.5f, top-1 %.4f over %d tokens" % (sys.argv[2], d["ppl"], d["ref_ppl"], d["kld"], d["top1"], d["tokens"]))' $(DEMO)/eval-$$f.json $$f; \
	done
	$(PY) -m ferroquant bench $(DEMO)/smollm2-Q4_K_M.gguf
	$(PY) -m ferroquant run $(DEMO)/smollm2-Q4_K_M.gguf --chat -n 48 -p "What is quantization of a neural network?"
	$(PY) -m ferroquant compare $(DEMO)/smollm2-hf --methods $(COMPARE_METHODS) \
		--types $(COMPARE_TYPES) --chunks $(COMPARE_CHUNKS) --nsamples $(COMPARE_NSAMPLES) \
		--out $(DEMO)/compare

bench: build fixtures
	$(PY) benches/bench_quants.py --out benches/results

wheel: $(DEPS_STAMP)
	$(VENV)/bin/maturin build --release -o dist

clean:
	rm -rf target dist build $(VENV)
