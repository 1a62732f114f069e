"""The security review's classes, end to end (issue: one body means one thing; the token goes where it was minted
for; tokens stay small): a real Envoy with the built filter, recording upstreams, PyJWT as the verifier.

- the route the token is scoped for is the route the request takes (routes on an identity header, on
  `authorization`);
- tokens have a size bound, and oversized claim sets neither reach the upstream nor flush the token cache;
- `Mcp-Name` only with a body that names what it says; the 2026-07-28 header contract;
- the issuer's scheme comes from the connection, not from `x-forwarded-proto` or an h2c `:scheme`;
- identity sources that can never have a value are refused at load; underscore headers are refused;
  authorities are validated;
- HTTP/2 (h2c): signing, refusals, trailers, repeated headers, reset streams.
The parser differential (keys equal under case folding) is in test_parser_differential.py, against a real Go server.
"""

from __future__ import annotations

import base64
import json

import jwt
import pytest
import requests

from harness import (
    BUILD,
    METRIC_PREFIX,
    MCP_HEADERS,
    h2_post,
    h2_request,
    load_envoy_yaml,
    nothing_forwarded,
    raw_request,
    rpc,
    running_gateway,
    verify_with_discovery,
    wasm_filter_config,
)
from recording_upstream import RecordingUpstream

TOOLS_CALL = json.dumps(rpc("tools/call", {"name": "get_weather"})).encode()


def shipped(url: str) -> dict:
    cfg = json.loads(wasm_filter_config(load_envoy_yaml())["configuration"]["value"])
    cfg["issuer"] = url
    return cfg


def post(g, body: bytes = TOOLS_CALL, headers=None, path="/mcp"):
    return raw_request(g.url, "POST", path, headers={**MCP_HEADERS, **(headers or {})}, body=body)


def error_of(response):
    status, headers, body = response
    assert headers.get("content-type", "").startswith("application/json"), (status, headers, body[:200])
    return status, json.loads(body)


def metric(g, name: str) -> int:
    r = requests.get(g.envoy.admin_url + "/stats", params={"filter": f"{METRIC_PREFIX}{name}$",
                                                            "format": "json"}, timeout=5)
    stats = [s for s in r.json()["stats"] if "value" in s]
    return int(stats[0]["value"]) if stats else 0


@pytest.fixture(scope="module")
def _gw(tmp_path_factory):
    with running_gateway(tmp_path_factory.mktemp("sec"), shipped) as g:
        yield g


@pytest.fixture
def gw(_gw):
    _gw.upstream.clear()
    return _gw


# ----------------------------------------------------------------------------------------------------------------
# the token goes where it was minted for
# ----------------------------------------------------------------------------------------------------------------
def _team_routes(red_port: int, header: str):
    """Routes: `header` present (or equal to `red`) -> cluster red, with its own audience and allow-list; else the
    default cluster with the default audience."""
    def edit(cfg):
        hcm = cfg["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
        routes = hcm["route_config"]["virtual_hosts"][0]["routes"]
        default = routes[0]
        default["name"] = "default"
        default["metadata"] = {"filter_metadata": {"mcp_jwt_signer": {"audience": "https://default.example/mcp"}}}
        match = {"name": header, "present_match": True} if header == "authorization" else \
            {"name": header, "string_match": {"exact": "red"}}
        routes.insert(0, {"name": "red", "match": {"prefix": "/", "headers": [match]},
                          "route": {"cluster": "red", "timeout": "0s"},
                          "metadata": {"filter_metadata": {"mcp_jwt_signer": {
                              "audience": "https://red.example/mcp", "allowed_tools": ["get_weather"]}}}})
        cfg["static_resources"]["clusters"].append({
            "name": "red", "type": "STATIC", "connect_timeout": "2s",
            "load_assignment": {"cluster_name": "red", "endpoints": [{"lb_endpoints": [{"endpoint": {
                "address": {"socket_address": {"address": "127.0.0.1", "port_value": red_port}}}}]}]}})
    return edit


@pytest.fixture
def red():
    up = RecordingUpstream().start()
    yield up
    up.stop()


def native_keeps_the_route(g, red, headers, audience):
    """The native build: a header write does not clear Envoy's route cache (the wasm host's does), so the router
    keeps the route the signer read before its edits, and the token scoped for it goes there (the route guard
    agrees): no route change to refuse."""
    assert post(g, headers=headers)[0] == 200
    assert g.upstream.requests == []
    (req,) = red.requests
    verify_with_discovery(req.bearer_token(), g.url, audience)
    red.clear()


def test_a_route_chosen_by_a_stripped_identity_header_is_refused(tmp_path, red):
    config = lambda url: {**shipped(url), "identity": {"actor": ["header:x-team-id"]}}  # noqa: E731
    with running_gateway(tmp_path, config, extra_edit=_team_routes(red.port, "x-team-id")) as g:
        if BUILD == "native":
            native_keeps_the_route(g, red, {"x-team-id": "red"}, "https://red.example/mcp")
        else:
            with nothing_forwarded(g, g.upstream, red):
                status, body = error_of(post(g, headers={"x-team-id": "red"}))
            assert (status, body["error"]["code"]) == (500, -32603), body
            assert "route changed" in body["error"]["message"]
            assert "reason=route_changed" in g.envoy.log()
        # Without the identity header the default route signs for the default audience.
        assert post(g)[0] == 200
        (req,) = g.upstream.requests
        verify_with_discovery(req.bearer_token(), g.url, "https://default.example/mcp")


def test_without_stripping_the_identity_route_gets_its_own_token(tmp_path, red):
    config = lambda url: {**shipped(url), "identity": {"actor": ["header:x-team-id"]},  # noqa: E731
                          "strip_identity_headers": False}
    with running_gateway(tmp_path, config, extra_edit=_team_routes(red.port, "x-team-id")) as g:
        assert post(g, headers={"x-team-id": "red"})[0] == 200
        assert g.upstream.requests == []
        (req,) = red.requests
        claims = verify_with_discovery(req.bearer_token(), g.url, "https://red.example/mcp")
        assert claims["act"]["sub"] == "red"
        # The red route's allow-list still applies there.
        delete = json.dumps(rpc("tools/call", {"name": "delete_all"})).encode()
        with nothing_forwarded(g, g.upstream, red):
            status, body = error_of(post(g, delete, headers={"x-team-id": "red"}))
        assert (status, body["error"]["code"]) == (403, -32003)


def test_a_route_chosen_by_authorization_presence_is_refused(tmp_path, red):
    with running_gateway(tmp_path, shipped, extra_edit=_team_routes(red.port, "authorization")) as g:
        if BUILD == "native":  # the filter's token lands on the route matched without one: the default route
            assert post(g)[0] == 200
            assert red.requests == []
            (req,) = g.upstream.requests
            verify_with_discovery(req.bearer_token(), g.url, "https://default.example/mcp")
        else:
            with nothing_forwarded(g, g.upstream, red):
                status, body = error_of(post(g))
            assert (status, body["error"]["code"]) == (500, -32603)
        # A client that sends its own token is matched to the authorization route before the filter edits
        # anything, and stays there with the filter's token in place of its own.
        assert post(g, headers={"authorization": "Bearer client-token"})[0] == 200
        (req,) = red.requests
        assert "client-token" not in req.header("authorization")
        verify_with_discovery(req.bearer_token(), g.url, "https://red.example/mcp")


# ----------------------------------------------------------------------------------------------------------------
# tokens stay small; the cache cannot be flushed
# ----------------------------------------------------------------------------------------------------------------
def batch(n: int, prefix="tool") -> bytes:
    return json.dumps([rpc("tools/call", {"name": f"{prefix}_{i:05d}"}, id=i) for i in range(n)]).encode()


def test_a_3000_call_batch_is_refused_before_signing(gw):
    minted = metric(gw, "tokens_minted")
    body = batch(3000)
    assert len(body) < 1024 * 1024
    with nothing_forwarded(gw):
        status, err = error_of(post(gw, body))
    assert (status, err["error"]["code"]) == (400, -32600), err
    assert "max_token_bytes" in err["error"]["message"]
    assert metric(gw, "tokens_minted") == minted
    assert metric(gw, "refused.token_too_large") >= 1


def test_max_token_bytes_is_configurable(tmp_path):
    config = lambda url: {**shipped(url), "max_token_bytes": 2048}  # noqa: E731
    with running_gateway(tmp_path, config) as g:
        assert post(g, batch(5))[0] == 200
        (req,) = g.upstream.requests
        assert len(req.bearer_token()) <= 2048
        with nothing_forwarded(g):
            assert error_of(post(g, batch(60)))[0] == 400


def test_large_claim_sets_cannot_flush_other_users_cached_tokens(tmp_path):
    # Tokens allowed up to 64 KiB, a 64 KiB cache: a ~24 KB token is over 1/16 of the cache, so it is used once
    # and never stored, and nobody else's token is evicted (three such tokens would otherwise fill the cache).
    config = lambda url: {**shipped(url), "max_token_bytes": 65536,  # noqa: E731
                          "token_cache": {"max_bytes": 65536}}
    with running_gateway(tmp_path, config) as g:
        for user in ("alice", "bob"):
            assert post(g, headers={"x-user-id": user})[0] == 200
        for i in range(4):
            st, _, body = post(g, batch(500, prefix=f"flood{i}"))
            assert st == 200, body[:200]
        assert len(g.upstream.requests[-1].bearer_token()) > 65536 // 16
        hits = metric(g, "token_cache_hits")
        minted = metric(g, "tokens_minted")
        for user in ("alice", "bob"):
            assert post(g, headers={"x-user-id": user})[0] == 200
        assert metric(g, "token_cache_hits") == hits + 2
        assert metric(g, "tokens_minted") == minted


# ----------------------------------------------------------------------------------------------------------------
# the MCP request metadata headers
# ----------------------------------------------------------------------------------------------------------------
MODERN = {"mcp-protocol-version": "2026-07-28"}


def modern(method: str, params: dict, id=1):  # noqa: A002
    params = {**params, "_meta": {"io.modelcontextprotocol/protocolVersion": "2026-07-28",
                                  "io.modelcontextprotocol/clientCapabilities": {}}}
    return json.dumps(rpc(method, params, id=id)).encode()


@pytest.mark.parametrize("body,headers", [
    (json.dumps(rpc("tools/list")).encode(), {"mcp-name": "delete_all"}),
    (json.dumps(rpc("tools/list")).encode(), {"mcp-method": "tools/list", "mcp-name": "get_weather"}),
    (TOOLS_CALL, {"mcp-name": "delete_all"}),
    (TOOLS_CALL, {"mcp-name": "=?base64?ZGVsZXRlX2FsbA==?="}),
    (TOOLS_CALL, {"mcp-name": "=?base64?not-base64?="}),
    (modern("tools/call", {"name": "get_weather"}), {**MODERN, "mcp-method": "tools/call"}),
    (modern("tools/call", {"name": "get_weather"}), {**MODERN, "mcp-name": "get_weather"}),
    (modern("resources/read", {"uri": "file:///a.txt"}), {**MODERN, "mcp-method": "resources/read",
                                                         "mcp-name": "file:///b.txt"}),
    (modern("tools/list", {}), {"mcp-protocol-version": "2025-11-25", "mcp-method": "tools/list"}),
], ids=["name-on-list", "name-on-list-with-method", "other-tool", "other-tool-base64", "bad-sentinel",
        "modern-missing-name", "modern-missing-method", "other-uri", "version-mismatch"])
def test_header_mismatches_are_refused_32020(gw, body, headers):
    with nothing_forwarded(gw):
        status, err = error_of(post(gw, body, headers))
    assert (status, err["error"]["code"]) == (400, -32020), err


def test_the_header_contract_accepts_what_the_spec_sends(gw):
    uri = "file:///projects/my app/配置.json"
    encoded = "=?base64?" + base64.b64encode(uri.encode()).decode() + "?="
    cases = [
        (modern("tools/call", {"name": "get_weather"}), {"mcp-method": "tools/call", "mcp-name": "get_weather"},
         "mcp:tools/call mcp:tools/get_weather:call"),
        (modern("prompts/get", {"name": "code_review"}), {"mcp-method": "prompts/get", "mcp-name": "code_review"},
         "mcp:prompts/code_review:get mcp:prompts/get"),
        (modern("resources/read", {"uri": uri}), {"mcp-method": "resources/read", "mcp-name": encoded},
         "mcp:resources/read"),
        (modern("server/discover", {}), {"mcp-method": "server/discover"}, "mcp:server/discover"),
    ]
    for body, headers, scope in cases:
        extra = {**MODERN, **headers, "mcp-param-region": "us-west1"}
        st, _, resp = post(gw, body, extra)
        assert st == 200, resp
        (req,) = gw.upstream.requests
        gw.upstream.clear()
        assert verify_with_discovery(req.bearer_token(), gw.url, "mcp")["scope"] == scope
        assert req.header("mcp-param-region") == "us-west1"  # Mcp-Param-* forwarded untouched
        assert req.body == body


def test_batches_are_refused_for_versions_without_them(gw):
    with nothing_forwarded(gw):
        status, err = error_of(post(gw, batch(2), {"mcp-protocol-version": "2025-06-18"}))
    assert (status, err["error"]["code"]) == (400, -32600)
    assert post(gw, batch(2), {"mcp-protocol-version": "2025-03-26"})[0] == 200


# ----------------------------------------------------------------------------------------------------------------
# issuer, identity sources, headers, authorities
# ----------------------------------------------------------------------------------------------------------------
def test_the_issuer_scheme_comes_from_the_connection(tmp_path):
    with running_gateway(tmp_path, {}) as g:
        for headers in ({"x-forwarded-proto": "https"}, {"x-forwarded-proto": "http"}, {}):
            assert post(g, headers=headers)[0] == 200
            (req,) = g.upstream.requests
            g.upstream.clear()
            assert jwt.decode(req.bearer_token(), options={"verify_signature": False})["iss"] == g.url
        disco = requests.get(g.url + "/.well-known/openid-configuration",
                             headers={"x-forwarded-proto": "https"}, timeout=5).json()
        assert disco["issuer"] == g.url and disco["jwks_uri"].startswith("http://")
        # h2c with a client-chosen `:scheme: https`.
        parts = g.url.split("//")[1]
        status, _, _ = h2_request(g.url, [(":method", "POST"), (":scheme", "https"), (":authority", parts),
                                          (":path", "/mcp"), ("content-type", "application/json")],
                                  body_chunks=[TOOLS_CALL])
        assert status == 200
        (req,) = g.upstream.requests
        assert jwt.decode(req.bearer_token(), options={"verify_signature": False})["iss"] == g.url


@pytest.mark.parametrize("source", ["header:host", "header:Host", "header:connection"])
def test_identity_sources_that_never_have_a_value_are_refused(envoy_expect_failure, source):
    res = envoy_expect_failure({"identity": {"subject": [source]}})
    assert res.exited, "Envoy must refuse the plugin configuration"
    log = res.log()
    assert "identity.subject[0]" in log
    if "host" in source.lower():
        assert "property:request/host" in log


def test_underscore_headers_are_rejected_before_the_filter(gw):
    with nothing_forwarded(gw):
        status, _, _ = post(gw, headers={"x_user_id": "admin"})
    assert status == 400


@pytest.mark.parametrize("authority", ["a:b:c", "gw:0", "gw:99999", "[::1", "gw:"])
def test_invalid_authorities_are_refused(tmp_path_factory, authority):
    with running_gateway(tmp_path_factory.mktemp("auth"), {}) as g:
        with nothing_forwarded(g):
            st, headers, body = raw_request(g.url, "POST", "/mcp", headers={**MCP_HEADERS, "Host": authority},
                                            body=TOOLS_CALL)
        # Envoy's codec refuses some of these itself (plain 400); the rest are the filter's JSON-RPC 400.
        assert st == 400, body
        if headers.get("content-type", "").startswith("application/json"):
            assert json.loads(body)["error"]["code"] == -32600


# ----------------------------------------------------------------------------------------------------------------
# HTTP/2
# ----------------------------------------------------------------------------------------------------------------
def test_h2c_tools_call_is_signed(gw):
    status, _, body = h2_post(gw.url, "/mcp", TOOLS_CALL, [("x-user-id", "alice")])
    assert status == 200, body
    (req,) = gw.upstream.requests
    claims = verify_with_discovery(req.bearer_token(), gw.url, "mcp")
    assert claims["sub"] == "alice" and claims["scope"] == "mcp:tools/call mcp:tools/get_weather:call"
    assert req.body == TOOLS_CALL
    assert req.header_values("x-user-id") == []


def test_h2c_refusals_are_json_rpc(gw):
    for body, code in [(b"{", -32700), (json.dumps(rpc("tools/call", {"name": "a b"})).encode(), -32602)]:
        with nothing_forwarded(gw):
            status, headers, resp = h2_post(gw.url, "/mcp", body)
        assert status == 400 and json.loads(resp)["error"]["code"] == code


def test_h2c_trailers_are_refused(gw):
    with nothing_forwarded(gw):
        status, _, resp = h2_post(gw.url, "/mcp", TOOLS_CALL, trailers=[("x-late", "1")])
    assert status == 400 and json.loads(resp)["error"]["code"] == -32600


def test_h2c_repeated_identity_header_is_refused(gw):
    with nothing_forwarded(gw):
        status, _, resp = h2_post(gw.url, "/mcp", TOOLS_CALL, [("x-user-id", "alice"), ("x-user-id", "admin")])
    assert status == 400 and json.loads(resp)["error"]["code"] == -32600


def test_h2c_repeated_authorization_never_passes(gw):
    status, _, _ = h2_post(gw.url, "/mcp", TOOLS_CALL, [("authorization", "Bearer a"), ("authorization", "Bearer b")])
    assert status == 200
    (req,) = gw.upstream.requests
    (auth,) = req.header_values("authorization")
    verify_with_discovery(auth.removeprefix("Bearer "), gw.url, "mcp")


def test_h2c_reset_mid_body_forwards_nothing_and_the_worker_survives(gw):
    with nothing_forwarded(gw):
        status, _, _ = h2_post(gw.url, "/mcp", b'{"jsonrpc":"2.0",', reset_after_chunks=0)
        assert status is None
        half = TOOLS_CALL[:20]
        h2_request(gw.url, [(":method", "POST"), (":scheme", "http"), (":authority", gw.url.split("//")[1]),
                            (":path", "/mcp"), ("content-type", "application/json")],
                   body_chunks=[half, TOOLS_CALL[20:]], reset_after_chunks=1)
    status, _, _ = h2_post(gw.url, "/mcp", TOOLS_CALL)
    assert status == 200
