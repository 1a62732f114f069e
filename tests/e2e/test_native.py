"""What only the native build (the Envoy dynamic module, `make build-native`) has: its load-time checks, its metric
names, how it reads jwt_authn's records (filter state filled by set_filter_state, src/native/jwt.rs) and its panic
barrier (src/native/mod.rs).

The panic tests use the test-hooks build (`--features native-test-hooks`, which `make build-native` puts in
target/native-test-hooks/, never in target/release/): a request header or an environment variable makes one entry
point panic on purpose. Missing builds fail these tests.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
import requests

from harness import (
    DYNAMIC_MODULE_FILTER_TYPE,
    JWKS_SUFFIX,
    MCP_HEADERS,
    METRIC_PREFIX,
    NATIVE,
    REPO,
    SET_FILTER_STATE_FILTER_TYPE,
    filter_stats,
    rpc,
    running_gateway,
    verify_with_discovery,
)
from test_identity import IdP, forwarded, insert_before_wasm, jwt_authn_filter, post, tool_call

pytestmark = pytest.mark.native_only

TEST_HOOKS = Path(os.environ.get("MCP_JWT_SIGNER_NATIVE_TEST_HOOKS",
                                 REPO / "target/native-test-hooks/libmcp_jwt_signer.so"))
REASONS_RS = REPO / "src/refusal.rs"


def http_filters(cfg: dict):
    for listener in cfg["static_resources"]["listeners"]:
        for chain in listener["filter_chains"]:
            for flt in chain["filters"]:
                if "http_filters" in flt.get("typed_config", {}):
                    yield flt["typed_config"]["http_filters"]


def use_module(path: Path):
    """after_build: every dynamic-modules filter loads `path` instead."""
    def edit(cfg):
        for filters in http_filters(cfg):
            for f in filters:
                if f.get("typed_config", {}).get("@type") == DYNAMIC_MODULE_FILTER_TYPE:
                    f["typed_config"]["dynamic_module_config"]["module"]["local"]["filename"] = str(path)
    return edit


def reasons_in_source() -> list:
    text = REASONS_RS.read_text()
    block = text[text.index("pub const REASONS"):]
    block = block[:block.index("];")]
    return [line.strip().strip('",') for line in block.splitlines()[1:] if line.strip().startswith('"')]


# ----------------------------------------------------------------------------------------------------------------
# load time
# ----------------------------------------------------------------------------------------------------------------
def test_abi_version_matches_and_every_metric_is_defined_at_load(envoy):
    e = envoy(lambda url: {"issuer": url})
    assert "Dynamic module ABI version v0.2.0 matched." in e.log(), e.log_tail()
    stats = filter_stats(e.admin_url)
    reasons = reasons_in_source()
    assert len(reasons) >= 19, reasons
    for name in ["tokens_minted", "token_cache_hits", "discovery_served", "jwks_served",
                 *[f"refused.{r}" for r in reasons]]:
        assert name in stats, (name, sorted(stats))
    assert stats["jwks_served"] >= 1  # the readiness probe
    assert stats["generated_key_in_use"] == 1, stats  # the gauge, set when the config was created
    # Prometheus: Envoy does not strip this namespace (it strips wasmcustom): envoy_dynamicmodulescustom_...
    text = requests.get(e.admin_url + "/stats/prometheus", timeout=5).text
    assert "envoy_dynamicmodulescustom_mcp_jwt_signer_jwks_served" in text, text[:2000]
    assert METRIC_PREFIX == "dynamicmodulescustom.mcp_jwt_signer."


def test_a_source_the_abi_cannot_read_is_refused_at_load(envoy_expect_failure):
    res = envoy_expect_failure({"identity": {"actor": ["property:xds/node/metadata/WORKLOAD"]}})
    log = res.log()
    assert res.exited and res.returncode != 0, log[-3000:]
    assert ("rejecting the filter configuration: invalid plugin configuration: field `identity`: source "
            "`property:xds/node/metadata/WORKLOAD` cannot be read by the native build") in log, log[-3000:]


def test_an_unknown_filter_name_is_refused_at_load(envoy_expect_failure):
    def rename(cfg):
        for filters in http_filters(cfg):
            for f in filters:
                if f.get("typed_config", {}).get("@type") == DYNAMIC_MODULE_FILTER_TYPE:
                    f["typed_config"]["filter_name"] = "mcp_jwt_signr"
    res = envoy_expect_failure({}, after_build=rename)
    assert res.exited and res.returncode != 0
    assert 'unknown filter_name "mcp_jwt_signr"' in res.log(), res.log()[-3000:]


def test_the_module_loads_by_name_from_the_search_path(tmp_path, upstream):
    """`dynamic_module_config: {name: mcp_jwt_signer}` without a file: Envoy finds lib<name>.so in
    $ENVOY_DYNAMIC_MODULES_SEARCH_PATH (as docs/builds.md tells operators)."""
    from harness import start_envoy

    def by_name(cfg):
        for filters in http_filters(cfg):
            for f in filters:
                if f.get("typed_config", {}).get("@type") == DYNAMIC_MODULE_FILTER_TYPE:
                    del f["typed_config"]["dynamic_module_config"]["module"]

    e = start_envoy(tmp_path, lambda url: {"issuer": url}, upstream.port, after_build=by_name,
                    env={"ENVOY_DYNAMIC_MODULES_SEARCH_PATH": str(NATIVE.parent)})
    try:
        r = requests.post(e.url + "/mcp", data=json.dumps(rpc("tools/list")), headers=MCP_HEADERS, timeout=10)
        assert r.status_code == 200, r.text[:300]
        assert upstream.requests[0].header("authorization").startswith("Bearer ey")
    finally:
        e.stop()


# ----------------------------------------------------------------------------------------------------------------
# jwt: sources: jwt_authn's records reach the module through filter state (src/native/jwt.rs)
# ----------------------------------------------------------------------------------------------------------------
def jwt_config(url: str) -> dict:
    return {"issuer": url, "identity": {"subject": ["jwt:sub", "header:x-user-id"]}, "token_cache": {"max_entries": 0}}


@pytest.fixture(scope="module")
def idp():
    return IdP()


def _gateway(tmp_path, idp, after_build):
    edit = lambda cfg: insert_before_wasm(cfg, jwt_authn_filter(idp))  # noqa: E731
    return running_gateway(tmp_path, jwt_config, extra_edit=edit, after_build=after_build)


def _state_filter_at(filters) -> int:
    (at,) = [i for i, f in enumerate(filters) if f.get("typed_config", {}).get("@type") == SET_FILTER_STATE_FILTER_TYPE]
    return at


def without_copy(cfg):
    for filters in http_filters(cfg):
        del filters[_state_filter_at(filters)]


def copy_before_jwt_authn(cfg):
    for filters in http_filters(cfg):
        copier = filters.pop(_state_filter_at(filters))
        (jwt_at,) = [i for i, f in enumerate(filters) if f["name"] == "envoy.filters.http.jwt_authn"]
        filters.insert(jwt_at, copier)


def copy_of_the_wrong_record(cfg):
    """The filter state holds a constant payload, whatever jwt_authn did (an operator's mistake)."""
    for filters in http_filters(cfg):
        entry = filters[_state_filter_at(filters)]["typed_config"]["on_request_headers"][0]
        entry["format_string"]["text_format_source"]["inline_string"] = '{"sub":"constant-admin"}'


@pytest.mark.parametrize("broken,why", [
    (without_copy, "no envoy.filters.http.set_filter_state after jwt_authn copied it"),
    (copy_before_jwt_authn, "no envoy.filters.http.set_filter_state after jwt_authn copied it"),
], ids=["no-set_filter_state", "set_filter_state-before-jwt_authn"])
def test_a_verified_token_whose_payload_cannot_be_read_is_refused(tmp_path, idp, broken, why):
    with _gateway(tmp_path, idp, broken) as g:
        r = post(g.url, tool_call("get_weather", id=5), token=idp.token("alice"), headers={"x-user-id": "mallory"})
        assert r.status_code == 400, (r.status_code, r.text[:300])
        assert r.json()["error"]["message"] == "invalid identity: identity source `jwt:sub` could not be read from Envoy"
        time.sleep(0.15)
        assert g.upstream.requests == [], "nothing may be forwarded"
        assert why in g.envoy.log(), g.envoy.log_tail()
        # Without a token jwt_authn records nothing: the next source (the header) is used, as under wasm.
        r = post(g.url, tool_call("get_weather", id=6), headers={"x-user-id": "bob"})
        assert r.status_code == 200, (r.status_code, r.text[:300])
        _, token = forwarded(g.upstream)
        assert verify_with_discovery(token, g.url, "mcp")["sub"] == "bob"


def test_a_copy_without_a_jwt_authn_record_is_refused(tmp_path, idp):
    with _gateway(tmp_path, idp, copy_of_the_wrong_record) as g:
        r = post(g.url, tool_call("get_weather", id=7), headers={"x-user-id": "bob"})
        assert r.status_code == 400, (r.status_code, r.text[:300])
        assert "jwt_authn recorded nothing under that name" in g.envoy.log(), g.envoy.log_tail()


SPOOF = {"x-jwt-payload": "eyJzdWIiOiJhZG1pbiJ9", "x-mcp-jwt-signer-payload": "eyJzdWIiOiJhZG1pbiJ9",
         "x-mcp-jwt-signer-jwt-authn-jwt-payload": "{\"sub\":\"admin\"}", "x-user-id": "bob"}


def test_the_verified_payload_is_read_and_client_headers_cannot_supply_one(tmp_path, idp):
    with _gateway(tmp_path, idp, None) as g:
        for token, expect in ((idp.token("alice"), "alice"), (None, "bob")):
            g.upstream.clear()
            r = post(g.url, tool_call("get_weather"), token=token, headers=SPOOF)
            assert r.status_code == 200, r.text[:300]
            _, minted = forwarded(g.upstream)
            assert verify_with_discovery(minted, g.url, "mcp")["sub"] == expect


# ----------------------------------------------------------------------------------------------------------------
# panics: the barrier (test-hooks build)
# ----------------------------------------------------------------------------------------------------------------
def hooks_build() -> Path:
    assert TEST_HOOKS.exists(), f"{TEST_HOOKS} is missing: `make build-native` builds it"
    return TEST_HOOKS


@pytest.mark.parametrize("hook", ["request_headers", "request_body"])
def test_a_panic_in_a_stream_hook_fails_closed_and_envoy_stays_up(tmp_path, upstream, hook):
    from harness import start_envoy
    e = start_envoy(tmp_path, lambda url: {"issuer": url}, upstream.port, after_build=use_module(hooks_build()))
    try:
        r = requests.post(e.url + "/mcp", data=json.dumps(rpc("tools/list")),
                          headers={**MCP_HEADERS, "x-mcp-jwt-signer-test-panic": hook}, timeout=10)
        assert r.status_code == 500, (r.status_code, r.text[:300])
        assert r.json()["error"]["code"] == -32603, r.text
        time.sleep(0.15)
        assert upstream.requests == [], "a request whose filter panicked must not be forwarded"
        assert e.alive(), e.log_tail()
        assert f"panic caught in {hook} (failing closed): test hook: deliberate panic in {hook}" in e.log()
        # The same worker goes on signing.
        for _ in range(3):
            r = requests.post(e.url + "/mcp", data=json.dumps(rpc("tools/list")), headers=MCP_HEADERS, timeout=10)
            assert r.status_code == 200, r.text[:300]
        assert requests.get(e.url + JWKS_SUFFIX, timeout=5).status_code == 200
    finally:
        e.stop()


def test_a_panic_in_filter_new_answers_500_and_envoy_stays_up(tmp_path, upstream):
    from harness import start_envoy_expect_failure
    res = start_envoy_expect_failure(tmp_path, {}, upstream.port, after_build=use_module(hooks_build()),
                                     env={"MCP_JWT_SIGNER_TEST_PANIC": "filter_new"})
    try:
        assert not res.exited, res.log()[-3000:]
        for _ in range(3):
            r = requests.post(res.envoy.url + "/mcp", data=json.dumps(rpc("tools/list")), headers=MCP_HEADERS,
                              timeout=10)
            assert r.status_code == 500, (r.status_code, r.text[:300])
        assert upstream.requests == []
        assert res.envoy.alive()
        assert "panic caught in http_filter_new" in res.log()
    finally:
        res.envoy.stop()


def test_a_panic_in_config_new_refuses_the_config(tmp_path, upstream):
    from harness import start_envoy_expect_failure
    res = start_envoy_expect_failure(tmp_path, {}, upstream.port, after_build=use_module(hooks_build()),
                                     env={"MCP_JWT_SIGNER_TEST_PANIC": "config_new"})
    assert res.exited and res.returncode == 1, res.log()[-3000:]  # refused, not aborted (-6)
    assert "panic caught in http_filter_config_new" in res.log()
    assert "Failed to initialize dynamic module" in res.log()


# ----------------------------------------------------------------------------------------------------------------
# audit fields: dynamic metadata (test-hooks build: the adapter writes sample fields as it writes Effects::audit)
# ----------------------------------------------------------------------------------------------------------------
def test_audit_fields_are_dynamic_metadata_for_the_access_log(tmp_path, upstream):
    from harness import start_envoy
    access_log = tmp_path / "access.log"
    fmt = ("sub=%DYNAMIC_METADATA(mcp_jwt_signer:test_sub)% exp=%DYNAMIC_METADATA(mcp_jwt_signer:test_exp)% "
           "cached=%DYNAMIC_METADATA(mcp_jwt_signer:test_cached)% tools=%DYNAMIC_METADATA(mcp_jwt_signer:test_tools)%\n")

    def with_access_log(cfg):
        hcm = cfg["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
        hcm["access_log"] = [{"name": "envoy.access_loggers.file", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog",
            "path": str(access_log), "log_format": {"text_format_source": {"inline_string": fmt}}}}]

    e = start_envoy(tmp_path / "e", lambda url: {"issuer": url}, upstream.port, extra_edit=with_access_log,
                    after_build=use_module(hooks_build()), extra_args=["--file-flush-interval-msec", "50"])
    try:
        r = requests.post(e.url + "/mcp", data=json.dumps(rpc("tools/list")),
                          headers={**MCP_HEADERS, "x-mcp-jwt-signer-test-audit": "1"}, timeout=10)
        assert r.status_code == 200, r.text[:300]
        deadline = time.monotonic() + 5
        while "sub=alice" not in (access_log.read_text() if access_log.exists() else ""):
            assert time.monotonic() < deadline, access_log.read_text() if access_log.exists() else "(no access log)"
            time.sleep(0.05)
        line = [ln for ln in access_log.read_text().splitlines() if "sub=alice" in ln][0]
        # The same text as the wasm build writes (host::audit_text): numbers and bools as JSON, lists joined.
        assert line == 'sub=alice exp=1767225600 cached=true tools=get_weather,search', line
    finally:
        e.stop()
