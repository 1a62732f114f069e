"""The filter reads the Envoy version at start (docs/envoy-versions.md, "Can the filter detect this at start?"):
on Envoy 1.34 or older, where the wasm filter has no `allow_on_headers_stop_iteration`, a body-buffering filter
refuses to start. No Envoy that old runs here, so this checks the read against the real binary (the version the
filter logs is the one `envoy --version` prints) and leaves the refusal to the unit tests.

wasm only: the native build is tied to Envoy 1.40's dynamic-modules ABI, which Envoy compares with its own when
it loads the module (docs/builds.md, "Envoy versions"); it reads no version itself."""

from __future__ import annotations

import re
import subprocess

import pytest

from harness import envoy_binary

pytestmark = pytest.mark.wasm_only


def test_the_filter_reads_the_envoy_version_it_runs_on(envoy):
    g = envoy({}, extra_args=["--component-log-level", "wasm:debug"])
    version = subprocess.run([envoy_binary(), "--version"], capture_output=True, text=True, check=True).stdout
    major, minor = re.search(r"/(\d+)\.(\d+)\.\d+/", version).groups()
    assert f"running on Envoy {major}.{minor}" in g.log(), g.log()[-2000:]
