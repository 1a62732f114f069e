"""Helpers for the tests that put real MCP software around the gateway: the official MCP Python SDK as the client,
examples/weather_server.py (FastMCP) as the server, Envoy's own jwt_authn as a mesh-native verifier.

Used by test_mcp_sdk.py, test_jwt_authn.py, test_key_rotation.py, test_mcp_authorization.py and
test_oauth_server.py. Every server binds 127.0.0.1 on a free port.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import anyio
import httpx2
import jwt
import requests
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from harness import stop_process, JWKS_SUFFIX, REPO, b64url_decode, b64url_uint, free_port, load_envoy_yaml, \
    remove_route_guard, rfc7638_thumbprint, wasm_filter_config

WEATHER_SERVER = REPO / "examples" / "weather_server.py"
CALL_TOOL = REPO / "examples" / "call_tool.py"
SDK_SERVER = REPO / "examples" / "sdk_server.py"
SDK_TIMEOUT = 30.0  # seconds for one whole SDK session
FLUSH_ARGS = ("--file-flush-interval-msec", "50")  # Envoy access logs reach the file quickly


# --------------------------------------------------------------------------------------------------------------
# keys and tokens
# --------------------------------------------------------------------------------------------------------------
def new_rsa(bits: int = 2048):
    return rsa.generate_private_key(public_exponent=65537, key_size=bits)


def pem_of(key) -> str:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption()).decode()


def kid_of(key) -> str:
    """The kid the gateway publishes for `key` (RFC 7638 thumbprint), computed independently."""
    nums = key.public_key().public_numbers()
    return rfc7638_thumbprint({"kty": "RSA", "n": b64url_uint(nums.n), "e": b64url_uint(nums.e)})


def gateway_claims(issuer: str, audience: str = "mcp", *, sub="alice", act="team-blue",
                   scope="mcp:tools/call mcp:tools/whoami:call", ttl=300, now=None, **extra) -> dict:
    """Claims shaped like the gateway's (README: The token)."""
    now = int(time.time()) if now is None else now
    claims = {"iss": issuer, "aud": audience, "sub": sub, "act": {"sub": act}, "scope": scope,
              "iat": now, "nbf": now, "exp": now + ttl, "jti": os.urandom(16).hex()}
    claims.update(extra)
    return claims


def mint(key, claims: dict, *, kid: str | None = None, alg: str = "RS256") -> str:
    """Sign `claims` with `key` the way the gateway does (RS256, typ JWT, kid = the key's thumbprint)."""
    return jwt.encode(claims, key, algorithm=alg, headers={"kid": kid if kid is not None else kid_of(key), "typ": "JWT"})


def unverified_claims(token: str) -> dict:
    return json.loads(b64url_decode(token.split(".")[1]))


def unverified_header(token: str) -> dict:
    return json.loads(b64url_decode(token.split(".")[0]))


# --------------------------------------------------------------------------------------------------------------
# Envoy config edits (applied to the config harness.py derives from envoy.yaml)
# --------------------------------------------------------------------------------------------------------------
def envoy_yaml_plugin_config() -> dict:
    return json.loads(wasm_filter_config(load_envoy_yaml())["configuration"]["value"])


def _hcm(cfg: dict) -> dict:
    (listener,) = cfg["static_resources"]["listeners"]
    (chain,) = listener["filter_chains"]
    (hcm,) = [f for f in chain["filters"] if f["name"] == "envoy.filters.network.http_connection_manager"]
    return hcm["typed_config"]


def _virtual_host(cfg: dict) -> dict:
    (vh,) = _hcm(cfg)["route_config"]["virtual_hosts"]
    return vh


def _static_cluster(name: str, port: int) -> dict:
    return {"name": name, "type": "STATIC", "connect_timeout": "2s",
            "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": [
                {"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": port}}}}]}]}}


def add_route(cfg: dict, prefix: str, cluster: str, port: int, prefix_rewrite: str | None = None) -> None:
    """Route `prefix` to a new cluster on 127.0.0.1:port, ahead of envoy.yaml's catch-all route."""
    cfg["static_resources"]["clusters"].append(_static_cluster(cluster, port))
    route = {"cluster": cluster, "timeout": "0s"}
    if prefix_rewrite is not None:
        route["prefix_rewrite"] = prefix_rewrite
    _virtual_host(cfg)["routes"].insert(0, {"match": {"prefix": prefix}, "route": route})


ACCESS_LOG_FORMAT = {
    "method": "%REQ(:METHOD)%",
    "path": "%REQ(:PATH)%",
    "status": "%RESPONSE_CODE%",
    "details": "%RESPONSE_CODE_DETAILS%",
    # What the upstream received: the filter replaces Authorization in the request headers this log reads.
    "authorization": "%REQ(AUTHORIZATION)%",
    "session": "%REQ(MCP-SESSION-ID)%",
    "protocol_version": "%REQ(MCP-PROTOCOL-VERSION)%",
    "test_session": "%REQ(X-TEST-SESSION)%",
}


def add_access_log(cfg: dict, path: Path) -> None:
    _hcm(cfg).setdefault("access_log", []).append({
        "name": "envoy.access_loggers.file",
        "typed_config": {"@type": "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog",
                         "path": str(path), "log_format": {"json_format": ACCESS_LOG_FORMAT}}})


def read_access_log(path: Path) -> list:
    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        return []
    complete = text.split("\n")[:-1]  # a line still being written has no newline yet
    return [json.loads(ln) for ln in complete if ln.strip()]


def wait_access_log(path: Path, predicate, timeout: float = 5.0) -> list:
    """Entries of the access log once `predicate(entries)` is true (the last read on timeout)."""
    deadline = time.monotonic() + timeout
    while True:
        entries = read_access_log(path)
        if predicate(entries) or time.monotonic() > deadline:
            return entries
        time.sleep(0.05)


JWT_AUTHN_FILTER_TYPE = "type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication"
VERIFIER_HEALTH_PATH = "/verifier-healthz"


def jwt_authn_config(*, issuer: str, audiences, jwks_cluster: str, cache_duration: str = "300s") -> dict:
    """Envoy's jwt_authn, configured for the gateway's tokens exactly as README tells operators to."""
    return {
        "providers": {
            "mcp_gateway": {
                "issuer": issuer,
                "audiences": list(audiences),
                "remote_jwks": {
                    "http_uri": {"uri": issuer + JWKS_SUFFIX, "cluster": jwks_cluster, "timeout": "5s"},
                    "cache_duration": cache_duration,
                },
                "from_headers": [{"name": "Authorization", "value_prefix": "Bearer "}],
                "forward": True,  # the MCP server behind may verify the token again
                "payload_in_metadata": "mcp_gateway",
            },
        },
        "rules": [
            {"match": {"path": VERIFIER_HEALTH_PATH}},  # no requirement: the harness's readiness probe
            {"match": {"prefix": "/"}, "requires": {"provider_name": "mcp_gateway"}},
        ],
    }


def jwt_authn_verifier_edit(*, issuer: str, gateway_port: int, cache_duration: str = "300s", audiences=("mcp",),
                            routes=(), access_log: Path | None = None):
    """An extra_edit turning envoy.yaml's listener into a *verifier*: the wasm filter is replaced by jwt_authn
    whose remote_jwks is fetched over HTTP from the gateway's listener (cluster `mcp_gateway_jwks`).
    `routes`: (prefix, cluster_name, port) routed ahead of the catch-all (which goes to the harness upstream)."""

    def edit(cfg):
        hcm = _hcm(cfg)
        filters = hcm["http_filters"]
        wasm = [f for f in filters if f["name"] == "envoy.filters.http.wasm"]
        assert len(wasm) == 1, filters
        idx = filters.index(wasm[0])
        filters[idx] = {"name": "envoy.filters.http.jwt_authn",
                        "typed_config": {"@type": JWT_AUTHN_FILTER_TYPE,
                                         **jwt_authn_config(issuer=issuer, audiences=audiences,
                                                            jwks_cluster="mcp_gateway_jwks",
                                                            cache_duration=cache_duration)}}
        remove_route_guard(cfg)
        cfg["static_resources"]["clusters"].append(_static_cluster("mcp_gateway_jwks", gateway_port))
        for prefix, cluster, port in routes:
            add_route(cfg, prefix, cluster, port)
        _virtual_host(cfg)["routes"].insert(0, {"match": {"path": VERIFIER_HEALTH_PATH},
                                                "direct_response": {"status": 200, "body": {"inline_string": "ok"}}})
        if access_log is not None:
            add_access_log(cfg, access_log)

    return edit


def stat_value(admin_url: str, name: str) -> int:
    """One counter from Envoy's admin /stats (0 when absent)."""
    text = requests.get(admin_url + "/stats", params={"filter": f"^{name}$"}, timeout=5).text
    for line in text.splitlines():
        k, _, v = line.partition(": ")
        if k == name:
            return int(v)
    return 0


# --------------------------------------------------------------------------------------------------------------
# the example MCP server
# --------------------------------------------------------------------------------------------------------------
class ExampleServer:
    """An MCP server from examples/ in a subprocess on 127.0.0.1. The port is chosen up front (so a gateway can
    point at it before it starts); start() needs the gateway up (the server reads its discovery at start-up)."""

    script = WEATHER_SERVER

    def __init__(self, workdir: Path, *, port: int | None = None, audience: str = "mcp", extra_args=()):
        self.workdir = Path(workdir)
        self.port = port or free_port()
        self.audience = audience
        self.extra_args = list(extra_args)
        self.proc = None
        self.log_path = self.workdir / f"{self.script.stem}-{self.port}.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/mcp"

    def start(self, issuer: str, timeout: float = 30.0) -> "ExampleServer":
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.issuer = issuer
        cmd = [sys.executable, str(self.script), "--host", "127.0.0.1", "--port", str(self.port),
               "--issuer", issuer, "--audience", self.audience, *self.extra_args]
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         cwd=str(REPO), start_new_session=True)
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise AssertionError(f"{self.script.name} exited with {self.proc.returncode}:\n{self.log()[-3000:]}")
            try:
                # Up and verifying: a request without a token is refused by the bearer middleware.
                r = requests.post(self.url, json={}, timeout=1)
                if r.status_code == 401:
                    return self
            except requests.RequestException:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise AssertionError(f"{self.script.name} not up within {timeout}s:\n{self.log()[-3000:]}")
            time.sleep(0.05)

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def stop(self) -> None:
        stop_process(self.proc)


class WeatherServer(ExampleServer):
    """examples/weather_server.py: FastMCP with its JWTVerifier."""

    script = WEATHER_SERVER

    def __init__(self, workdir: Path, **kw):
        super().__init__(workdir, **kw)
        self.extra_args = ["--discovery-timeout", "10", *self.extra_args]


class SdkServer(ExampleServer):
    """examples/sdk_server.py: the MCP SDK's MCPServer with a PyJWT TokenVerifier."""

    script = SDK_SERVER


# --------------------------------------------------------------------------------------------------------------
# the MCP SDK client
# --------------------------------------------------------------------------------------------------------------
@dataclass
class HttpExchange:
    method: str
    path: str
    status: int
    www_authenticate: str | None


@dataclass
class HttpLog:
    """Every HTTP response the SDK's client received (the SDK reports a 401 only as a generic MCPError)."""
    exchanges: list = field(default_factory=list)

    async def hook(self, response) -> None:
        self.exchanges.append(HttpExchange(response.request.method, response.request.url.path,
                                           response.status_code, response.headers.get("www-authenticate")))

    @property
    def statuses(self) -> list:
        return [e.status for e in self.exchanges]


def run_sdk(url: str, body, *, headers=None, token: str | None = None, mode: str = "legacy", log: HttpLog | None = None,
            **client_kwargs):
    """Connect to `url` with the official MCP SDK (`mcp.Client`, Streamable HTTP), run `await body(client)` and
    return its result. `headers` go on every HTTP request; `token` becomes `Authorization: Bearer <token>`.
    `mode`: "legacy" (initialize handshake, a session, the GET stream, DELETE on close) or "auto" (the SDK's
    default: probes `server/discover`, 2026-07-28 protocol when the server speaks it)."""
    log = log if log is not None else HttpLog()
    h = dict(headers or {})
    if token is not None:
        h["authorization"] = f"Bearer {token}"

    async def go():
        with anyio.fail_after(SDK_TIMEOUT):
            async with httpx2.AsyncClient(headers=h, timeout=httpx2.Timeout(10.0, read=SDK_TIMEOUT),
                                          event_hooks={"response": [log.hook]}) as http:
                async with Client(streamable_http_client(url, http_client=http), mode=mode, **client_kwargs) as c:
                    return await body(c)

    return asyncio.run(go())


def expect_sdk_refused(url: str, *, headers=None, token: str | None = None, mode: str = "legacy") -> HttpLog:
    """Connect with the SDK and list tools; assert that it fails and that the server answered 401 + a Bearer
    challenge to the very first request, and nothing 2xx on the MCP endpoint. Returns the HTTP log."""
    log = HttpLog()

    async def body(c):
        return await c.list_tools()

    try:
        result = run_sdk(url, body, headers=headers, token=token, mode=mode, log=log)
    except Exception:  # noqa: BLE001 - the SDK reports a refused connection as an MCPError inside task groups
        pass
    else:
        raise AssertionError(f"the SDK session should have been refused, it listed tools: {result}")
    assert log.exchanges, "the SDK sent nothing"
    first = log.exchanges[0]
    assert (first.method, first.status) == ("POST", 401), log.exchanges
    assert first.www_authenticate and first.www_authenticate.lower().startswith("bearer"), log.exchanges
    ok = [e for e in log.exchanges if 200 <= e.status < 300]
    assert not ok, f"refused session still got 2xx answers: {ok}"
    return log


def tool_json(result) -> dict:
    """The JSON a tool returned (structured content, else its single text block)."""
    assert not result.is_error, f"tool failed: {result.content}"
    if result.structured_content is not None:
        return result.structured_content
    (block,) = result.content
    return json.loads(block.text)


def tool_error_text(result) -> str:
    assert result.is_error, f"tool should have failed, returned {result.structured_content or result.content}"
    return " ".join(getattr(b, "text", "") for b in result.content)


class MemoryStorage:
    """The MCP SDK's OAuth TokenStorage, in memory (one client's tokens and registration)."""

    def __init__(self):
        self.tokens = None
        self.client_info = None

    async def get_tokens(self):
        return self.tokens

    async def set_tokens(self, tokens):
        self.tokens = tokens

    async def get_client_info(self):
        return self.client_info

    async def set_client_info(self, client_info):
        self.client_info = client_info
