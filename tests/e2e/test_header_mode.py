"""Header-scoped signing (`scope_source: "headers"`): the token is scoped from MCP 2026-07-28's `Mcp-Method` /
`Mcp-Name` headers at the request headers, the body is never buffered, and the filter works without
`allow_on_headers_stop_iteration` — configured here exactly as Istio's `WasmPlugin` produces it (no such flag), with
`allow_body_buffering: false`.

- the official MCP SDK client (2026-07-28 mode, `server/discover`) calls tools through the gateway and FastMCP
  verifies each token and its scope;
- the servers' side of the bargain: a request whose `Mcp-Name` names one tool and whose body calls another reaches
  FastMCP with a token for the header's tool, and FastMCP refuses it;
- a body of tens of MiB streams through in header mode (Envoy's memory stays flat) while body mode refuses it;
- what the headers cannot scope is refused with the requirement spelled out.
"""

from __future__ import annotations

import json

import pytest
import requests

from harness import MCP_HEADERS, load_envoy_yaml, nothing_forwarded, raw_request, rpc, start_envoy, \
    verify_with_discovery, wasm_filter_config
from mcp_helpers import WeatherServer, run_sdk, tool_json

MODERN = {"mcp-protocol-version": "2026-07-28"}


def meta():
    return {"io.modelcontextprotocol/protocolVersion": "2026-07-28", "io.modelcontextprotocol/clientCapabilities": {}}


def like_istio_wasmplugin(cfg):
    """What Istio's WasmPlugin renders: the wasm filter without allow_on_headers_stop_iteration."""
    wasm_filter_config(cfg).pop("allow_on_headers_stop_iteration", None)


def header_mode_config(url: str) -> dict:
    cfg = json.loads(wasm_filter_config(load_envoy_yaml())["configuration"]["value"])
    cfg.update({"issuer": url, "scope_source": "headers", "allow_body_buffering": False, "max_body_bytes": 65536})
    return cfg


@pytest.fixture
def fastmcp_gateway(tmp_path):
    weather = WeatherServer(tmp_path / "weather")
    gw = start_envoy(tmp_path / "gw", header_mode_config, weather.port, extra_edit=like_istio_wasmplugin)
    weather.start(gw.url)
    yield gw, weather
    weather.stop()
    gw.stop()


def test_the_sdk_in_2026_mode_calls_tools_through_a_wasmplugin_style_gateway(fastmcp_gateway):
    gw, _ = fastmcp_gateway
    assert "allow_on_headers_stop_iteration" not in gw.config_path.read_text()

    async def session(c):
        return c.protocol_version, await c.call_tool("whoami", {}), await c.call_tool("get_weather", {"city": "Oslo"})

    version, me, weather = run_sdk(gw.url + "/mcp", session, headers={"x-user-id": "alice"}, mode="auto")
    assert version == "2026-07-28", version
    seen = tool_json(me)
    assert seen["sub"] == "alice" and seen["scope"] == ["mcp:tools/call", "mcp:tools/whoami:call"]
    assert tool_json(weather)["city"] == "Oslo"


def test_a_body_that_disagrees_with_its_headers_is_refused_by_the_server(fastmcp_gateway):
    gw, _ = fastmcp_gateway
    body = json.dumps(rpc("tools/call", {"name": "get_weather", "arguments": {"city": "Oslo"}, "_meta": meta()}))
    headers = {**MCP_HEADERS, **MODERN, "mcp-method": "tools/call", "mcp-name": "whoami"}
    status, _, resp = raw_request(gw.url, "POST", "/mcp", headers=headers, body=body.encode())
    # The gateway signed for the header's tool and let the request go; FastMCP checks the header against the body.
    assert status == 400, (status, resp[:300])
    text = resp.decode(errors="replace")
    assert "-32020" in text or "mismatch" in text.lower(), text[:300]


def test_what_the_headers_cannot_scope_is_refused_when_nothing_may_be_buffered(fastmcp_gateway):
    gw, _ = fastmcp_gateway
    body = json.dumps(rpc("tools/call", {"name": "get_weather"})).encode()
    for headers in ({}, {"mcp-protocol-version": "2025-11-25"}, {**MODERN, "mcp-method": "tools/call"}):
        with nothing_forwarded(gw):
            status, _, resp = raw_request(gw.url, "POST", "/mcp", headers={**MCP_HEADERS, **headers}, body=body)
        err = json.loads(resp)["error"]
        assert (status, err["code"]) == (400, -32020), resp
        assert "Mcp-Method" in err["message"] and "2026-07-28" in err["message"]


def memory_allocated(envoy) -> int:
    return int(requests.get(envoy.admin_url + "/memory", timeout=5).json()["allocated"])


def big_body(mib: int) -> bytes:
    filler = "x" * (mib * 1024 * 1024)
    return json.dumps(rpc("tools/call", {"name": "upload", "arguments": {"blob": filler}, "_meta": meta()})).encode()


def test_a_large_body_streams_through_in_header_mode_and_is_refused_in_body_mode(envoy, upstream):
    body = big_body(24)
    headers = {**MCP_HEADERS, **MODERN, "mcp-method": "tools/call", "mcp-name": "upload"}
    header_gw = envoy(header_mode_config, extra_edit=like_istio_wasmplugin)
    before = memory_allocated(header_gw)
    chunks = [body[i:i + 65536] for i in range(0, len(body), 65536)]
    status, _, _ = raw_request(header_gw.url, "POST", "/mcp", headers=headers, chunks=chunks, timeout=60)
    assert status == 200
    (req,) = upstream.requests
    assert req.body == body
    assert verify_with_discovery(req.bearer_token(), header_gw.url, "mcp")["scope"] == \
        "mcp:tools/call mcp:tools/upload:call"
    growth = memory_allocated(header_gw) - before
    assert growth < 8 * 1024 * 1024, f"Envoy grew by {growth} bytes streaming a {len(body)}-byte body"
    upstream.clear()
    body_gw = envoy(lambda url: {**header_mode_config(url), "scope_source": "body", "allow_body_buffering": True})
    with nothing_forwarded(body_gw):
        status, _, resp = raw_request(body_gw.url, "POST", "/mcp", headers=headers, chunks=chunks, timeout=60)
    assert status == 413, resp[:200]
