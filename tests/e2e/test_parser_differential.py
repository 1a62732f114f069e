"""One body must mean one thing to every MCP server (issue 12, section 1): a body whose keys collide under Unicode
simple case folding (which covers Go encoding/json's matching) is refused by the gateway as a parse error, so a Go
server behind it never runs the tool the token was not scoped for.

    client ──► gateway Envoy + the built filter ──► tests/e2e/go_server (encoding/json into structs)
                 └─ /locked/ (route metadata allowed_tools: [get_weather]) ──► the same Go server

Every case of go_server.DIFF_CASES (test_go_differential.py proves the Go server really reads each one differently)
must get HTTP 400 with a JSON-RPC error -32700 and reach the Go server not at all. The controls (a plain tools/call,
an exact duplicate key, a near-miss key that does not collide) pass with the filter as it is today.
"""

from __future__ import annotations

import json

import pytest
import requests

from go_server import DIFF_CASES, GoServer, exact_reading
from harness import MCP_HEADERS, start_envoy, verify_with_discovery
from mcp_helpers import envoy_yaml_plugin_config, new_rsa, pem_of

USER = {"x-user-id": "alice", "x-team-id": "team-blue"}
ALLOWED = ["get_weather"]


@pytest.fixture(scope="module")
def gw(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("parser_differential")
    go = GoServer(workdir).start()

    def edit(cfg):
        (listener,) = cfg["static_resources"]["listeners"]
        (chain,) = listener["filter_chains"]
        (hcm,) = [f for f in chain["filters"] if f["name"] == "envoy.filters.network.http_connection_manager"]
        vhost = hcm["typed_config"]["route_config"]["virtual_hosts"][0]
        (default,) = vhost["routes"]
        locked = {"name": "locked", "match": {"prefix": "/locked/"},
                  "route": {"cluster": default["route"]["cluster"], "timeout": "0s", "prefix_rewrite": "/"},
                  "metadata": {"filter_metadata": {"mcp_jwt_signer": {"allowed_tools": ALLOWED}}}}
        vhost["routes"] = [locked, default]

    envoy = None
    try:
        envoy = start_envoy(workdir, lambda url: {**envoy_yaml_plugin_config(), "issuer": url}, go.port,
                            env={"MCP_JWT_SIGNING_KEY": pem_of(new_rsa())}, extra_edit=edit)
        envoy.go = go
        yield envoy
    finally:
        if envoy is not None:
            envoy.stop()
        go.stop()


def post(gw, body: bytes, path: str = "/mcp"):
    return requests.post(gw.url + path, data=body, headers={**MCP_HEADERS, **USER}, timeout=10)


def assert_parse_error(r, go, before: int, what: str):
    # Messages name what the Go server ran, never the response body or the log entry: both carry the minted token.
    ran = [(s.get("method"), s.get("would_run")) for s in go.seen()[before:]]
    assert r.status_code == 400, f"{what}: expected 400, got {r.status_code}; the Go server ran {ran}"
    body = r.json()
    assert body.get("jsonrpc") == "2.0" and body["error"]["code"] == -32700, (what, body)
    assert "result" not in body
    assert ran == [], f"{what}: the Go server received {ran}"


# ----------------------------------------------------------------------------------------------------------------
# controls: these pass with today's filter
# ----------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("path", ["/mcp", "/locked/mcp"])
def test_control_plain_call_reaches_go_with_a_token(gw, path):
    before = len(gw.go.seen())
    body = b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"get_weather","arguments":{"city":"Oslo"}}}'
    r = post(gw, body, path)
    assert r.status_code == 200, r.text
    (seen,) = gw.go.seen()[before:]
    assert (seen["method"], seen["would_run"], seen["city"]) == ("tools/call", "get_weather", "Oslo")
    scheme, _, token = seen["authorization"].partition(" ")
    assert scheme == "Bearer"
    claims = verify_with_discovery(token, gw.url, "mcp")
    assert claims["sub"] == "alice" and claims["scope"] == "mcp:tools/call mcp:tools/get_weather:call"


def test_control_allow_list_refuses_another_tool(gw):
    before = len(gw.go.seen())
    r = post(gw, b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"delete_all"}}', "/locked/mcp")
    assert r.status_code == 403 and r.json()["error"]["code"] == -32003, r.text
    assert gw.go.seen()[before:] == []


def test_control_exact_duplicate_key_is_refused(gw):
    """Exact duplicates are already refused (Go and serde_json keep the last, other parsers the first)."""
    before = len(gw.go.seen())
    r = post(gw, b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"get_weather","name":"delete_all"}}')
    assert_parse_error(r, gw.go, before, "exact duplicate")


@pytest.mark.parametrize("params", [
    '{"name":"get_weather","names":"delete_all"}',                 # a different key, not a fold of "name"
    '{"name":"get_weather","arguments":{"city":"Oslo","cities":"x"}}',
    '{"name":"get_weather","_meta":{"progressToken":"a"},"meta":{"x":1}}',
])
def test_control_keys_that_do_not_collide_pass(gw, params):
    """Guards against a fix that refuses too much: keys that are not equal under case folding pass."""
    before = len(gw.go.seen())
    body = ('{"jsonrpc":"2.0","id":1,"method":"tools/call","params":' + params + "}").encode()
    r = post(gw, body)
    assert r.status_code == 200, r.text
    (seen,) = gw.go.seen()[before:]
    assert seen["would_run"] == "get_weather" == exact_reading(body.decode())["would_run"]


# ----------------------------------------------------------------------------------------------------------------
# the differential bodies: must be refused (the filter as built on 2026-12-01 forwards them: see the report)
# ----------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("case", DIFF_CASES, ids=[c.id for c in DIFF_CASES])
def test_case_fold_collision_is_refused(gw, case):
    before = len(gw.go.seen())
    assert_parse_error(post(gw, case.raw), gw.go, before, case.id)


@pytest.mark.parametrize("case", [c for c in DIFF_CASES if c.field == "would_run"],
                         ids=[c.id for c in DIFF_CASES if c.field == "would_run"])
def test_case_fold_collision_is_refused_on_an_allow_list_route(gw, case):
    """On a route with allowed_tools: [get_weather], the collision must not carry delete_all past the list."""
    before = len(gw.go.seen())
    assert_parse_error(post(gw, case.raw, "/locked/mcp"), gw.go, before, case.id)


def test_case_fold_collision_in_a_batch_is_refused(gw):
    before = len(gw.go.seen())
    batch = "[" + DIFF_CASES[0].body + "]"
    assert json.loads(batch)  # valid JSON
    assert_parse_error(post(gw, batch.encode()), gw.go, before, "batch")
