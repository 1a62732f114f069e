"""The gateway as MCP's authorization point (MCP 2026-07-28 `basic/authorization`, RFC 9728, RFC 6750), end to end
with real parts only:

    MCP SDK client (OAuth: ClientCredentialsOAuthProvider, given nothing but the gateway URL)
        ──► Envoy: jwt_authn (remote JWKS of a real oidc-provider AS, allow_missing_or_failed,
                   failed_status_in_metadata, payload_in_metadata) ──► mcp-jwt-signer ──► FastMCP weather server

- 401 with `WWW-Authenticate: Bearer resource_metadata=..., scope=...` -> the SDK reads the gateway's RFC 9728
  metadata -> the AS -> a token for the gateway's resource -> the tools/call succeeds, and FastMCP verifies the
  filter's own token (not the client's);
- step-up: a tool that needs more incoming scope gets 403 `insufficient_scope` naming it; the SDK obtains it and the
  retry succeeds;
- an expired or forged client token gets 401 `invalid_token` with `resource_metadata`.
"""

from __future__ import annotations

import asyncio
import json
import time

import anyio
import httpx2
import jwt
import pytest
import requests
from mcp import Client
from mcp.client.auth.extensions.client_credentials import ClientCredentialsOAuthProvider
from mcp.client.streamable_http import streamable_http_client

from harness import free_port, load_envoy_yaml, start_envoy, wasm_filter_config
from mcp_helpers import JWT_AUTHN_FILTER_TYPE, MemoryStorage, WeatherServer, _hcm, _static_cluster, tool_json
from oauth_server import new_secret

TOOLS = "mcp:tools"            # what the AS grants for calling tools at all
WEATHER = "weather:read"       # what get_weather needs on top


def gateway_edit(as_port: int, as_issuer: str, resource: str, weather_port: int):
    """envoy.yaml with jwt_authn in front of the signer (failures let through and recorded), the AS's JWKS
    cluster, and the weather server as the MCP upstream."""
    def edit(cfg):
        hcm = _hcm(cfg)
        filters = hcm["http_filters"]
        (at,) = [i for i, f in enumerate(filters) if f["name"] == "envoy.filters.http.wasm"]
        filters.insert(at, {"name": "envoy.filters.http.jwt_authn", "typed_config": {
            "@type": JWT_AUTHN_FILTER_TYPE,
            "providers": {"as": {
                "issuer": as_issuer,
                "audiences": [resource],
                "remote_jwks": {"http_uri": {"uri": as_issuer + "/jwks", "cluster": "oauth_as", "timeout": "5s"},
                                "cache_duration": "300s"},
                "from_headers": [{"name": "Authorization", "value_prefix": "Bearer "}],
                "forward": False,
                "payload_in_metadata": "jwt_payload",
                "failed_status_in_metadata": "jwt_failure",
            }},
            "rules": [{"match": {"prefix": "/"}, "requires": {"requires_any": {"requirements": [
                {"provider_name": "as"}, {"allow_missing_or_failed": {}}]}}}],
        }})
        cfg["static_resources"]["clusters"].append(_static_cluster("oauth_as", as_port))
        (cluster,) = [c for c in cfg["static_resources"]["clusters"] if c["name"] == "mcp_server"]
        cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]["socket_address"][
            "port_value"] = weather_port
    return edit


@pytest.fixture
def world(oauth_server, tmp_path, upstream):
    listener_port = free_port()
    gateway_url = f"http://127.0.0.1:{listener_port}"
    resource = gateway_url + "/mcp"
    svc, narrow = ("svc", new_secret()), ("narrow", new_secret())
    as_ = oauth_server(resources={resource: {"scopes": [TOOLS, WEATHER]}},
                       clients=[{"client_id": svc[0], "client_secret": svc[1]},
                                {"client_id": narrow[0], "client_secret": narrow[1], "scopes": [TOOLS]}])
    jwks_uri = as_.metadata()["jwks_uri"]
    assert jwks_uri == as_.issuer + "/jwks", jwks_uri
    weather = WeatherServer(tmp_path / "weather")
    plugin = json.loads(wasm_filter_config(load_envoy_yaml())["configuration"]["value"])
    plugin.update({
        "issuer": gateway_url,
        "identity": {"subject": ["jwt:sub"], "actor": ["jwt:client_id"]},
        "require_subject": True,
        "protected_resources": [{"resource": resource, "authorization_servers": [as_.issuer],
                                 "scopes_supported": [TOOLS, WEATHER], "resource_name": "Weather"}],
        "jwt_failure_in_metadata": "jwt_failure",
        # A base scope for every request keeps the first token minimal (the 401 names only it); get_weather steps up.
        "required_incoming_scopes": {"*": [TOOLS], "tools/call:get_weather": [WEATHER]},
    })
    gw = start_envoy(tmp_path / "gw", plugin, weather.port, listener_port=listener_port,
                     extra_edit=gateway_edit(as_.port, as_.issuer, resource, weather.port))
    weather.start(gateway_url)
    yield {"as": as_, "gw": gw, "resource": resource, "svc": svc, "narrow": narrow, "weather": weather,
           "metadata_url": f"{gateway_url}/.well-known/oauth-protected-resource/mcp"}
    weather.stop()
    gw.stop()


def run_client(world, client, body, mode="legacy", wire=None):
    auth = ClientCredentialsOAuthProvider(server_url=world["resource"], storage=MemoryStorage(),
                                          client_id=client[0], client_secret=client[1], issuer=world["as"].issuer)

    async def hook(response):
        if wire is not None:
            wire.append((response.request.method, response.request.url.path, response.status_code,
                         response.headers.get("www-authenticate")))

    async def go():
        with anyio.fail_after(60):
            async with httpx2.AsyncClient(auth=auth, timeout=httpx2.Timeout(10.0, read=30.0),
                                          event_hooks={"response": [hook]}) as http:
                async with Client(streamable_http_client(world["resource"], http_client=http), mode=mode) as c:
                    return await body(c)

    return asyncio.run(go())


def test_protected_resource_metadata_names_the_authorization_server(world):
    for url in (world["metadata_url"], world["gw"].url + "/.well-known/oauth-protected-resource"):
        r = requests.get(url, timeout=5)
        assert r.status_code == 200, r.text
        doc = r.json()
        assert doc == {"resource": world["resource"], "authorization_servers": [world["as"].issuer],
                       "scopes_supported": [TOOLS, WEATHER], "bearer_methods_supported": ["header"],
                       "resource_name": "Weather"}
        assert r.headers["cache-control"].startswith("public")
    assert requests.post(world["metadata_url"], json={}, timeout=5).status_code == 405


def test_no_token_gets_the_mcp_challenge(world):
    r = requests.post(world["resource"], json={"jsonrpc": "2.0", "id": 3, "method": "tools/call",
                                               "params": {"name": "get_weather", "arguments": {"city": "Oslo"}}},
                      timeout=5)
    assert r.status_code == 401
    assert r.json()["error"]["code"] == -32001 and r.json()["id"] == 3
    challenge = r.headers["www-authenticate"]
    assert challenge == (f'Bearer scope="{TOOLS} {WEATHER}", '
                         f'resource_metadata="{world["metadata_url"]}"'), challenge


def test_sdk_oauth_client_discovers_logs_in_and_calls_a_tool(world):
    wire = []

    async def body(c):
        return tool_json(await c.call_tool("whoami", {}))

    claims = run_client(world, world["svc"], body, wire=wire)
    # The MCP server saw the filter's token: its own issuer and audience, the AS's subject, least privilege.
    assert claims["iss"] == world["gw"].url and claims["aud"] == "mcp"
    assert claims["sub"] == "svc" and claims["act"]["sub"] == "svc"
    scope = claims["scope"] if isinstance(claims["scope"], list) else claims["scope"].split()
    assert sorted(scope) == ["mcp:tools/call", "mcp:tools/whoami:call"], claims
    paths = [(m, p, s) for m, p, s, _ in wire]
    assert paths[0] == ("POST", "/mcp", 401), paths
    assert ("GET", "/.well-known/oauth-protected-resource/mcp", 200) in paths, paths
    assert any(p == "/token" and s == 200 for _, p, s in paths), paths


def test_step_up_insufficient_scope_then_success(world):
    wire = []

    async def body(c):
        first = tool_json(await c.call_tool("whoami", {}))
        second = tool_json(await c.call_tool("get_weather", {"city": "Oslo"}))
        return first, second

    _, weather = run_client(world, world["svc"], body, wire=wire)
    assert weather["city"] == "Oslo", weather
    forbidden = [(p, s, w) for _, p, s, w in wire if s == 403]
    assert forbidden, wire
    path, _, challenge = forbidden[0]
    assert path == "/mcp"
    assert challenge.startswith(f'Bearer error="insufficient_scope", scope="{TOOLS} {WEATHER}"'), challenge
    assert f'resource_metadata="{world["metadata_url"]}"' in challenge
    # After the 403 the SDK got a token with more scope and the retry went through.
    after = wire[wire.index(next(w for w in wire if w[2] == 403)) + 1:]
    assert any(p == "/token" and s == 200 for _, p, s, _ in after), wire
    assert any(p == "/mcp" and s == 200 for _, p, s, _ in after), wire


def test_a_client_the_as_will_not_step_up_stays_refused(world):
    wire = []

    async def body(c):
        return await c.call_tool("get_weather", {"city": "Oslo"})

    with pytest.raises(Exception):  # noqa: B017 - the SDK raises its own error for the final 403
        run_client(world, world["narrow"], body, wire=wire)
    assert any(s == 403 and 'error="insufficient_scope"' in (w or "") for _, _, s, w in wire), wire


def test_expired_and_forged_client_tokens_get_invalid_token(world):
    as_ = world["as"]
    now = int(time.time())
    expired = as_.sign({"iss": as_.issuer, "sub": "svc", "aud": world["resource"], "scope": TOOLS,
                        "iat": now - 600, "exp": now - 300, "jti": "x", "client_id": "svc"})
    forged = jwt.encode({"iss": as_.issuer, "sub": "svc", "aud": world["resource"], "scope": TOOLS,
                         "exp": now + 300}, "not-the-key-of-the-authorization-server", algorithm="HS256")
    body = {"jsonrpc": "2.0", "id": 1, "method": "tools/list"}
    for token, description in ((expired, "the access token has expired"), (forged, "the access token is invalid")):
        r = requests.post(world["resource"], json=body, headers={"authorization": f"Bearer {token}"}, timeout=5)
        assert r.status_code == 401, r.text
        challenge = r.headers["www-authenticate"]
        assert challenge.startswith('Bearer error="invalid_token"'), challenge
        assert f'resource_metadata="{world["metadata_url"]}"' in challenge
        assert f'error_description="{description}"' in challenge
        assert token not in r.text and token not in challenge
    # A valid token of the AS is let through to the tool list.
    tok = as_.client_credentials(*world["svc"], resource=world["resource"], scope=TOOLS)["access_token"]
    r = requests.post(world["resource"], json=body, timeout=5,
                      headers={"authorization": f"Bearer {tok}", "accept": "application/json, text/event-stream"})
    assert r.status_code != 401, (r.status_code, r.text)


def test_the_worked_example_config_validates_with_the_real_envoy(tmp_path):
    import subprocess
    import yaml
    from harness import REPO, WASM, envoy_binary
    cfg = yaml.safe_load((REPO / "examples/mcp-authorization/envoy.yaml").read_text())
    hcm = cfg["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    (wasm,) = [f for f in hcm["http_filters"] if f["name"] == "envoy.filters.http.wasm"]
    wasm["typed_config"]["config"]["vm_config"]["code"]["local"]["filename"] = str(WASM)
    path = tmp_path / "example.yaml"
    path.write_text(yaml.safe_dump(cfg))
    r = subprocess.run([envoy_binary(), "--mode", "validate", "-c", str(path)], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0 and "OK" in r.stdout + r.stderr, (r.stdout + r.stderr)[-2000:]
