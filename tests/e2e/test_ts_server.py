"""examples/ts-server (TypeScript: the official @modelcontextprotocol/sdk, Streamable HTTP, jose with a remote JWKS
found through the gateway's OIDC discovery) behind the real gateway, called by the official MCP Python SDK client.

    SDK client ──► gateway Envoy + the built filter ──► ts-server (verifies the filter's token with jose)
                     └─ /capture… ─► recording upstream (genuine gateway tokens for direct-call tests)

Proves: the claims the filter minted reach the TypeScript tools; the tool-level scope is enforced by the server; a
direct call without the gateway, a forged, other-issuer, other-audience, expired or exp-less token is refused 401.
"""

from __future__ import annotations

import base64
import json
import time
from dataclasses import dataclass

import jwt
import pytest
import requests

from harness import MCP_HEADERS, rpc, start_envoy, verify_with_discovery
from mcp_helpers import (
    add_route,
    envoy_yaml_plugin_config,
    expect_sdk_refused,
    gateway_claims,
    kid_of,
    mint,
    new_rsa,
    pem_of,
    run_sdk,
    tool_error_text,
    tool_json,
)
from recording_upstream import RecordingUpstream
from ts_server import TsServer

USER = {"x-user-id": "alice", "x-user-email": "alice@example.com", "x-team-id": "team-blue"}


@dataclass
class Stack:
    gw: object
    server: TsServer
    recorder: RecordingUpstream
    key: object

    @property
    def mcp_url(self) -> str:
        return self.gw.url + "/mcp"

    def capture_token(self, body, headers=None) -> str:
        """A genuine token the gateway minted for `body` (sent to /capture, never reaching the TS server)."""
        self.recorder.clear()
        r = requests.post(self.gw.url + "/capture/mcp", data=json.dumps(body),
                          headers={"content-type": "application/json", **(headers or {})}, timeout=10)
        assert r.status_code == 200, (r.status_code, r.text[:300])
        (req,) = self.recorder.wait_for(1)
        return req.bearer_token()


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("ts_server")
    key = new_rsa()
    recorder = RecordingUpstream().start()
    server = TsServer(workdir)
    gw = None
    try:
        gw = start_envoy(workdir, lambda url: {**envoy_yaml_plugin_config(), "issuer": url}, server.port,
                         env={"MCP_JWT_SIGNING_KEY": pem_of(key)},
                         extra_edit=lambda cfg: add_route(cfg, "/capture", "capture", recorder.port))
        server.start(gw.url)
        yield Stack(gw, server, recorder, key)
    finally:
        server.stop()
        if gw is not None:
            gw.stop()
        recorder.stop()


def call_tool_body(name: str, arguments=None, id_: int = 1) -> dict:
    return rpc("tools/call", {"name": name, "arguments": arguments or {}}, id=id_)


def direct(stack, body, token=None, headers=None):
    h = dict(MCP_HEADERS)
    if token is not None:
        h["authorization"] = f"Bearer {token}"
    h.update(headers or {})
    return requests.post(stack.server.url, data=json.dumps(body), headers=h, timeout=10)


# ----------------------------------------------------------------------------------------------------------------
# through the gateway, with the MCP Python SDK
# ----------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["legacy", "auto"])
def test_sdk_whoami_and_get_weather_through_the_gateway(stack, mode):
    async def session(c):
        tools = await c.list_tools()
        return c.server_info, c.protocol_version, tools, await c.call_tool("whoami", {}), \
            await c.call_tool("get_weather", {"city": "Paris"})

    info, version, tools, me, weather = run_sdk(stack.mcp_url, session, headers=USER, mode=mode)
    assert info.name == "weather-ts"
    # The TypeScript SDK 1.32.2 has no 2026-07-28 (stateless) revision: even the SDK client's auto mode, which
    # probes server/discover first, ends up with the handshake.
    assert version == "2025-11-25", version
    assert {t.name for t in tools.tools} == {"whoami", "get_weather"}
    seen = tool_json(me)
    # exactly the claims the filter minted: its issuer, audience, identity and the least-privilege scope
    assert seen["iss"] == stack.gw.url and seen["aud"] == "mcp"
    assert (seen["sub"], seen["act"], seen["email"]) == ("alice", {"sub": "team-blue"}, "alice@example.com")
    assert seen["scope"] == "mcp:tools/call mcp:tools/whoami:call"
    assert seen["exp"] - seen["iat"] == 300 and seen["jti"]
    forecast = tool_json(weather)
    assert forecast["city"] == "Paris"
    assert (forecast["requested_by"], forecast["on_behalf_of"]) == ("alice", "team-blue")


def test_whoami_claims_verify_independently(stack):
    """The token the TS server accepted is one PyJWT verifies through the gateway's own discovery too."""
    token = stack.capture_token(call_tool_body("whoami"), USER)
    claims = verify_with_discovery(token, stack.gw.url, "mcp")
    r = direct(stack, call_tool_body("whoami"), token)
    assert r.status_code == 200, r.text
    seen = r.json()["result"]["structuredContent"]
    assert seen == claims


# ----------------------------------------------------------------------------------------------------------------
# straight to the TS server, without the gateway
# ----------------------------------------------------------------------------------------------------------------
def test_direct_call_without_the_gateway_is_refused(stack):
    log = expect_sdk_refused(stack.server.url, headers=USER)
    assert log.exchanges[0].www_authenticate.startswith('Bearer error="invalid_token"'), log.exchanges
    r = direct(stack, call_tool_body("whoami"))
    assert r.status_code == 401 and r.json()["error"] == "invalid_token", r.text


def test_bad_tokens_are_refused(stack):
    now = int(time.time())
    good = gateway_claims(stack.gw.url)
    other = new_rsa()
    cases = {
        "forged (another key, the gateway's kid)": mint(other, good, kid=kid_of(stack.key)),
        "other issuer": mint(stack.key, {**good, "iss": "http://127.0.0.1:1/elsewhere"}),
        "other audience": mint(stack.key, {**good, "aud": "another-server"}),
        "expired": mint(stack.key, gateway_claims(stack.gw.url, now=now - 3600)),
        "no exp": mint(stack.key, {k: v for k, v in good.items() if k != "exp"}),
        "HS256 (a symmetric algorithm)": jwt.encode(good, b"x" * 32, algorithm="HS256",
                                                          headers={"kid": kid_of(stack.key)}),
        "unsigned": ".".join([base64.urlsafe_b64encode(json.dumps({"alg": "none"}).encode()).rstrip(b"=").decode(),
                              base64.urlsafe_b64encode(json.dumps(good).encode()).rstrip(b"=").decode(), ""]),
    }
    assert direct(stack, call_tool_body("whoami"), mint(stack.key, good)).status_code == 200  # control
    for name, token in cases.items():
        r = direct(stack, call_tool_body("whoami"), token)
        assert r.status_code == 401, (name, r.status_code, r.text)
        assert r.headers["www-authenticate"].startswith('Bearer error="invalid_token"'), (name, r.headers)
        assert token not in stack.server.log(), f"{name}: the token reached the server log"


def test_token_minted_for_another_tool_is_refused(stack):
    """A gateway token for `whoami`, replayed straight at the server for `get_weather`: the tool refuses it."""
    token = stack.capture_token(call_tool_body("whoami"), USER)
    r = direct(stack, call_tool_body("get_weather", {"city": "Oslo"}), token)
    assert r.status_code == 200, r.text
    result = r.json()["result"]
    assert result["isError"] is True
    assert "mcp:tools/get_weather:call" in result["content"][0]["text"]
    weather_token = stack.capture_token(call_tool_body("get_weather", {"city": "Oslo"}), USER)
    r = direct(stack, call_tool_body("get_weather", {"city": "Oslo"}), weather_token)
    assert r.json()["result"].get("isError") in (None, False), r.text


def test_sdk_tool_error_for_missing_scope(stack):
    """The same refusal as the SDK client sees it, with a hand-minted whoami-only token sent straight to the
    server."""
    token = mint(stack.key, gateway_claims(stack.gw.url))  # scope: mcp:tools/call mcp:tools/whoami:call

    async def session(c):
        return await c.call_tool("get_weather", {"city": "Rome"})

    text = tool_error_text(run_sdk(stack.server.url, session, token=token, mode="legacy"))
    assert "forbidden" in text and "mcp:tools/get_weather:call" in text


# ----------------------------------------------------------------------------------------------------------------
# Mcp-Method / Mcp-Name (2026-07-28): the TS SDK 1.32.2 does not check them; the example does
# ----------------------------------------------------------------------------------------------------------------
def b64_sentinel(value: str) -> str:
    return "=?base64?" + base64.b64encode(value.encode()).decode() + "?="


@pytest.mark.parametrize("headers,status", [
    ({"mcp-method": "tools/call", "mcp-name": "get_weather"}, 200),
    ({"mcp-method": "tools/call", "mcp-name": b64_sentinel("get_weather")}, 200),
    ({"mcp-method": b64_sentinel("tools/call")}, 200),
    ({"mcp-method": "tools/list"}, 400),
    ({"mcp-method": "tools/call", "mcp-name": "delete_all"}, 400),
    ({"mcp-name": b64_sentinel("delete_all")}, 400),
    ({"mcp-name": "=?base64?!!!?="}, 400),
])
def test_routing_headers_checked_against_the_body(stack, headers, status):
    token = mint(stack.key, gateway_claims(stack.gw.url, scope="mcp:tools/call mcp:tools/get_weather:call"))
    r = direct(stack, call_tool_body("get_weather", {"city": "Lima"}, id_=7), token, headers)
    assert r.status_code == status, (headers, r.status_code, r.text)
    if status == 400:
        assert r.json() == {"jsonrpc": "2.0", "id": 7, "error": {"code": -32020, "message": r.json()["error"]["message"]}}


def test_gateway_refuses_mismatched_name_before_the_server(stack):
    """Through the gateway, the filter itself refuses an mcp-name that disagrees with the body (-32020)."""
    r = requests.post(stack.mcp_url, data=json.dumps(call_tool_body("get_weather", {"city": "Lima"})),
                      headers={**MCP_HEADERS, **USER, "mcp-name": "delete_all"}, timeout=10)
    assert r.status_code == 400 and r.json()["error"]["code"] == -32020, r.text
