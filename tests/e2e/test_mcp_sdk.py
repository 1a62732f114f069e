"""The gateway with the software MCP users actually run: the official MCP Python SDK (`mcp`, Streamable HTTP client)
talks through Envoy + the filter to examples/weather_server.py, a FastMCP server whose JWT bearer verifier is
configured from the gateway's discovery document.

One module-scoped stack (all on 127.0.0.1, free ports):

    SDK client ──► gateway Envoy (envoy.yaml's plugin JSON, issuer = its URL, a key the test holds)
                     ├─ /capture… ─► recording upstream (to get genuine gateway tokens for replay tests)
                     ├─ /sdk/…  ─► examples/sdk_server.py (the MCP SDK's own MCPServer + a PyJWT TokenVerifier)
                     └─ everything else ─► weather server (FastMCP, JWTVerifier from the gateway's jwks_uri)

The gateway's access log records, per HTTP request, the status and the token the filter put on it: that is how
the tests see what the SDK sent (initialize, the GET stream, DELETE, ...) and what the filter and server answered.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests
from cryptography.hazmat.primitives import serialization
from mcp import types

from harness import REPO, rpc, start_envoy, verify_with_discovery
from mcp_helpers import (
    CALL_TOOL,
    FLUSH_ARGS,
    SdkServer,
    WeatherServer,
    add_access_log,
    add_route,
    envoy_yaml_plugin_config,
    expect_sdk_refused,
    gateway_claims,
    kid_of,
    mint,
    new_rsa,
    pem_of,
    read_access_log,
    run_sdk,
    tool_error_text,
    tool_json,
    unverified_claims,
)
from recording_upstream import RecordingUpstream

USER = {"x-user-id": "alice", "x-user-email": "alice@example.com", "x-team-id": "team-blue", "x-org-id": "org-1"}
HANDSHAKE_VERSIONS = {"2024-11-05", "2025-03-26", "2025-06-18", "2025-11-25"}


@dataclass
class Stack:
    gw: object
    server: WeatherServer
    sdk_server: SdkServer
    recorder: RecordingUpstream
    key: object
    access_log: Path

    @property
    def mcp_url(self) -> str:
        return self.gw.url + "/mcp"

    def entries(self, tag: str, until=None, timeout: float = 5.0) -> list:
        """Access-log entries of requests sent with `x-test-session: tag`, once `until(entries)` holds."""
        deadline = time.monotonic() + timeout
        while True:
            mine = [e for e in read_access_log(self.access_log) if e["test_session"] == tag]
            if until is None or until(mine) or time.monotonic() > deadline:
                return mine
            time.sleep(0.05)

    def capture_token(self, body, headers=None) -> str:
        """A genuine token minted by the gateway for `body` (sent to /capture, recorded, never reaching the MCP
        server)."""
        self.recorder.clear()
        r = requests.post(self.gw.url + "/capture/mcp", data=json.dumps(body),
                          headers={"content-type": "application/json", **(headers or {})}, timeout=10)
        assert r.status_code == 200, (r.status_code, r.text[:300])
        (req,) = self.recorder.wait_for(1)
        return req.bearer_token()


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("mcp_sdk")
    key = new_rsa()
    recorder = RecordingUpstream().start()
    server = WeatherServer(workdir)
    sdk_server = SdkServer(workdir)
    access_log = workdir / "gateway-access.log"

    def edit(cfg):
        add_access_log(cfg, access_log)
        add_route(cfg, "/capture", "capture", recorder.port)
        add_route(cfg, "/sdk/", "sdk_server", sdk_server.port, prefix_rewrite="/")

    gw = None
    try:
        gw = start_envoy(workdir, lambda url: {**envoy_yaml_plugin_config(), "issuer": url}, server.port,
                         env={"MCP_JWT_SIGNING_KEY": pem_of(key)}, extra_edit=edit, extra_args=FLUSH_ARGS)
        sdk_server.extra_args += ["--public-url", gw.url + "/sdk/mcp"]
        server.start(gw.url)
        sdk_server.start(gw.url)
        yield Stack(gw, server, sdk_server, recorder, key, access_log)
    finally:
        server.stop()
        sdk_server.stop()
        if gw is not None:
            gw.stop()
        recorder.stop()


def tagged(headers=None):
    tag = uuid.uuid4().hex
    return tag, {**(headers or {}), "x-test-session": tag}


def wire(stack, entries) -> list:
    """(method, status, scope) of each logged request, after verifying its token like a relying party would."""
    out = []
    for e in entries:
        scheme, _, token = e["authorization"].partition(" ")
        assert scheme == "Bearer" and token, f"request reached the server without a gateway token: {e}"
        claims = verify_with_discovery(token, stack.gw.url, "mcp")
        out.append((e["method"], int(e["status"]), claims["scope"], claims))
    return out


# ----------------------------------------------------------------------------------------------------------------
# through the gateway
# ----------------------------------------------------------------------------------------------------------------
def test_sdk_session_through_the_gateway(stack):
    """The SDK's handshake-era session: initialize, notifications/initialized, the GET stream, tools/list,
    tools/call, DELETE on close: every request passes the filter and the server's verifier."""
    tag, headers = tagged(USER)

    async def session(c):
        tools = await c.list_tools()
        me = await c.call_tool("whoami", {})
        weather = await c.call_tool("get_weather", {"city": "Paris"})
        return c.server_info, c.protocol_version, tools, me, weather

    info, version, tools, me, weather = run_sdk(stack.mcp_url, session, headers=headers, mode="legacy")
    assert info.name == "weather"
    assert version in HANDSHAKE_VERSIONS, version
    assert {t.name for t in tools.tools} == {"whoami", "get_weather", "subscribe_alerts"}

    seen = tool_json(me)
    assert seen["sub"] == "alice"
    assert seen["act"] == {"sub": "team-blue"}
    assert seen["email"] == "alice@example.com"
    assert seen["scope"] == ["mcp:tools/call", "mcp:tools/whoami:call"]
    assert seen["iss"] == stack.gw.url and seen["aud"] == "mcp"
    forecast = tool_json(weather)
    assert forecast["city"] == "Paris"
    assert (forecast["requested_by"], forecast["on_behalf_of"]) == ("alice", "team-blue")

    # What went over the wire. The GET stream is logged when it ends, after the DELETE.
    entries = stack.entries(tag, until=lambda es: {"GET", "DELETE"} <= {e["method"] for e in es})
    calls = wire(stack, entries)
    assert all(200 <= status < 300 for _, status, _, _ in calls), [(m, s, sc) for m, s, sc, _ in calls]
    assert all(c["sub"] == "alice" and c["act"] == {"sub": "team-blue"} for *_, c in calls)
    seen_on_wire = {(m, scope) for m, _, scope, _ in calls}
    for expected in [("POST", "mcp:initialize"),
                     ("POST", "mcp:notifications/initialized"),
                     ("GET", "mcp:stream"),
                     ("POST", "mcp:tools/list"),
                     ("POST", "mcp:tools/call mcp:tools/whoami:call"),
                     ("POST", "mcp:tools/call mcp:tools/get_weather:call"),
                     ("DELETE", "mcp:session:delete")]:
        assert expected in seen_on_wire, f"{expected} not among {sorted(seen_on_wire)}"
    # The tool saw exactly the token the filter minted for its own request.
    (whoami_token,) = [c for m, _, scope, c in calls if scope.endswith("whoami:call")]
    assert seen["jti"] == whoami_token["jti"]
    # One session: everything after initialize carries the session id the server assigned.
    sessions = {e["session"] for e in entries if e["session"] not in (None, "-")}
    assert len(sessions) == 1, sessions


def test_sdk_default_mode_through_the_gateway(stack):
    """The SDK's default (mode="auto") probes `server/discover` and, with this FastMCP, speaks the 2026-07-28
    protocol: no initialize, no session; each POST still gets its own token."""
    tag, headers = tagged(USER)

    async def session(c):
        return c.protocol_version, await c.call_tool("whoami", {})

    version, me = run_sdk(stack.mcp_url, session, headers=headers, mode="auto")
    assert version not in HANDSHAKE_VERSIONS, f"expected the 2026-era protocol, got {version}"
    seen = tool_json(me)
    assert (seen["sub"], seen["act"], seen["scope"]) == ("alice", {"sub": "team-blue"},
                                                          ["mcp:tools/call", "mcp:tools/whoami:call"])
    calls = wire(stack, stack.entries(tag, until=lambda es: len(es) >= 2))
    assert all(200 <= status < 300 for _, status, _, _ in calls), calls
    assert ("POST", "mcp:server/discover") in {(m, scope) for m, _, scope, _ in calls}


def test_elicitation_answer_goes_through_with_responses_scope(stack):
    """A server-to-client request (elicitation) during tools/call: the SDK POSTs a JSON-RPC *response*, which the
    filter scopes `mcp:responses`, and the server accepts it."""
    tag, headers = tagged(USER)
    asked = []

    async def on_elicit(_ctx, params):
        asked.append(params.message)
        return types.ElicitResult(action="accept", content={"value": True})

    async def session(c):
        return await c.call_tool("subscribe_alerts", {"city": "Oslo"})

    result = run_sdk(stack.mcp_url, session, headers=headers, mode="legacy", elicitation_callback=on_elicit)
    assert tool_json(result) == {"city": "Oslo", "subscriber": "alice@example.com", "subscribed": True}
    assert asked == ["Send weather alerts for Oslo to alice@example.com?"]
    calls = wire(stack, stack.entries(tag, until=lambda es: any(e["method"] == "DELETE" for e in es)))
    responses = [(m, status) for m, status, scope, _ in calls if scope == "mcp:responses"]
    assert responses == [("POST", 202)], [(m, s, sc) for m, s, sc, _ in calls]


def test_client_token_is_replaced_not_passed_through(stack):
    """A client (or attacker) sending its own bearer token through the gateway: the server only ever sees the
    gateway's token."""
    attacker = new_rsa()
    forged = mint(attacker, gateway_claims(stack.gw.url, sub="root", act="admins", scope="mcp:tools/call"))

    async def session(c):
        return await c.call_tool("whoami", {})

    seen = tool_json(run_sdk(stack.mcp_url, session, headers={"x-user-id": "bob"}, token=forged, mode="auto"))
    assert seen["sub"] == "bob" and seen["act"] == {"sub": "mcp-gateway"}
    assert seen["jti"] != unverified_claims(forged)["jti"]


def test_call_tool_example_prints_what_the_server_saw(stack):
    """examples/call_tool.py (the `make run` one-liner), through the gateway and straight to the server."""
    out = subprocess.run([sys.executable, str(CALL_TOOL), "--url", stack.mcp_url, "whoami"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    seen = json.loads(out.stdout)
    assert (seen["sub"], seen["act"], seen["email"]) == ("alice", {"sub": "team-blue"}, "alice@example.com")
    assert seen["scope"] == ["mcp:tools/call", "mcp:tools/whoami:call"]

    out = subprocess.run([sys.executable, str(CALL_TOOL), "--url", stack.server.url, "whoami"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 1, (out.stdout, out.stderr)
    assert "HTTP 401" in out.stderr and out.stdout == "", out.stderr


@pytest.mark.parametrize("mode", ["legacy", "auto"])
def test_mcp_sdk_server_with_its_own_token_verifier(stack, mode):
    """examples/sdk_server.py: the official SDK's MCPServer with a TokenVerifier (README), behind the gateway."""
    tag, headers = tagged(USER)

    async def session(c):
        return await c.call_tool("whoami", {})

    seen = tool_json(run_sdk(stack.gw.url + "/sdk/mcp", session, headers=headers, mode=mode))
    assert (seen["sub"], seen["act"], seen["email"]) == ("alice", {"sub": "team-blue"}, "alice@example.com")
    assert seen["scope"] == ["mcp:tools/call", "mcp:tools/whoami:call"]
    calls = wire(stack, stack.entries(tag, until=lambda es: len(es) >= 2))
    assert calls and all(200 <= status < 300 for _, status, _, _ in calls), calls


# ----------------------------------------------------------------------------------------------------------------
# straight to the server: the gateway is the only way in
# ----------------------------------------------------------------------------------------------------------------
SERVERS = {"fastmcp": lambda s: s.server.url, "mcp-sdk": lambda s: s.sdk_server.url}


@pytest.mark.parametrize("server", list(SERVERS))
@pytest.mark.parametrize("mode", ["legacy", "auto"])
def test_sdk_straight_to_the_server_is_refused(stack, server, mode):
    """The same client and identity headers without the gateway: 401 (no token), nothing served."""
    expect_sdk_refused(SERVERS[server](stack), headers=USER, mode=mode)


@pytest.mark.parametrize("server", list(SERVERS))
def test_token_signed_with_the_gateway_key_is_accepted(stack, server):
    """Control for the refusals below: a token built by the test exactly like the gateway's, signed with the
    gateway's key, is accepted; each refusal case changes one thing only."""
    claims = gateway_claims(stack.gw.url)

    async def session(c):
        return await c.call_tool("whoami", {})

    seen = tool_json(run_sdk(SERVERS[server](stack), session, token=mint(stack.key, claims), mode="auto"))
    assert seen["jti"] == claims["jti"] and seen["sub"] == "alice"


def _hs256_with_public_key(key, claims) -> str:
    """Algorithm confusion: HS256 keyed with the gateway's public key PEM (PyJWT itself refuses to make one)."""
    public_pem = key.public_key().public_bytes(serialization.Encoding.PEM,
                                               serialization.PublicFormat.SubjectPublicKeyInfo)
    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()
    head = b64(json.dumps({"alg": "HS256", "typ": "JWT", "kid": kid_of(key)}).encode())
    body = b64(json.dumps(claims).encode())
    sig = hmac.new(public_pem, f"{head}.{body}".encode(), hashlib.sha256).digest()
    return f"{head}.{body}.{b64(sig)}"


def _unsigned(key, claims) -> str:
    head = base64.urlsafe_b64encode(json.dumps({"alg": "none", "typ": "JWT", "kid": kid_of(key)}).encode())
    body = base64.urlsafe_b64encode(json.dumps(claims).encode())
    return f"{head.rstrip(b'=').decode()}.{body.rstrip(b'=').decode()}."


def _tampered(stack) -> str:
    """A genuine gateway token for whoami with its payload swapped for an escalated scope, signature kept."""
    token = stack.capture_token(rpc("tools/call", {"name": "whoami"}), USER)
    head, payload, sig = token.split(".")
    claims = unverified_claims(token)
    claims["scope"] = "mcp:tools/call mcp:tools/get_weather:call mcp:tools/subscribe_alerts:call"
    forged = base64.urlsafe_b64encode(json.dumps(claims, separators=(",", ":")).encode()).rstrip(b"=").decode()
    return f"{head}.{forged}.{sig}"


def _no_exp(stack):
    claims = gateway_claims(stack.gw.url)
    del claims["exp"]
    return mint(stack.key, claims)


BAD_TOKENS = {
    "expired": lambda s: mint(s.key, gateway_claims(s.gw.url, now=int(time.time()) - 400)),
    "another-key-same-kid": lambda s: mint(new_rsa(), gateway_claims(s.gw.url), kid=kid_of(s.key)),
    "another-key-own-kid": lambda s: mint(new_rsa(), gateway_claims(s.gw.url)),
    "another-audience": lambda s: mint(s.key, gateway_claims(s.gw.url, audience="another-mcp-server")),
    "another-issuer": lambda s: mint(s.key, gateway_claims("https://evil.example.com")),
    "no-exp": _no_exp,
    "alg-none": lambda s: _unsigned(s.key, gateway_claims(s.gw.url)),
    "hs256-keyed-with-public-key": lambda s: _hs256_with_public_key(s.key, gateway_claims(s.gw.url)),
    "tampered-payload": _tampered,
    "not-a-jwt": lambda s: "not-a-jwt",
}


@pytest.mark.parametrize("case", list(BAD_TOKENS))
@pytest.mark.parametrize("server", list(SERVERS))
def test_server_refuses_bad_tokens(stack, server, case):
    expect_sdk_refused(SERVERS[server](stack), token=BAD_TOKENS[case](stack), mode="auto")


def test_tool_scope_is_enforced_by_the_tool(stack):
    """A genuine gateway token is a bearer token: replayed straight to the server it is valid until it expires,
    but only for what it was minted for. get_weather refuses a token minted for a whoami call."""
    whoami_token = stack.capture_token(rpc("tools/call", {"name": "whoami"}), USER)
    weather_token = stack.capture_token(rpc("tools/call", {"name": "get_weather", "arguments": {"city": "Rome"}}),
                                        USER)

    async def both(c):
        return await c.call_tool("get_weather", {"city": "Rome"}), await c.call_tool("whoami", {})

    denied, me = run_sdk(stack.server.url, both, token=whoami_token, mode="auto")
    assert "mcp:tools/get_weather:call" in tool_error_text(denied)
    assert tool_json(me)["scope"] == ["mcp:tools/call", "mcp:tools/whoami:call"]

    allowed, _ = run_sdk(stack.server.url, both, token=weather_token, mode="auto")
    assert tool_json(allowed)["requested_by"] == "alice"


def test_server_checks_the_discovery_document_names_its_issuer(stack, tmp_path):
    """The example server refuses to start when the discovery document's issuer is not the one it was given
    (here: the same gateway, reached as `localhost`)."""
    port = stack.gw.listener_port
    server = WeatherServer(tmp_path)
    with pytest.raises(AssertionError, match="names issuer"):
        server.start(f"http://localhost:{port}")
    assert server.proc.returncode not in (None, 0)


# ----------------------------------------------------------------------------------------------------------------
# demo wiring: the pins agree with what the tests run (docker-compose.yml: test_compose.py)
# ----------------------------------------------------------------------------------------------------------------
def _pins(path: Path) -> dict:
    pins = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, sep, version = line.partition("==")
            assert sep, f"{path.name}: {line!r} is not pinned with =="
            pins[name.split("[")[0].strip().lower()] = version.strip()
    return pins


def test_example_requirements_pin_what_the_tests_use():
    example = _pins(REPO / "examples" / "requirements.txt")
    tests = _pins(REPO / "tests" / "requirements.txt")
    assert {"fastmcp", "mcp"} <= set(example), example
    for name, version in example.items():
        assert tests.get(name) == version, f"{name}: examples pin {version}, tests pin {tests.get(name)}"
