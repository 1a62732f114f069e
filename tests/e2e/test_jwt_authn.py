"""A mesh-native verifier: Envoy's own jwt_authn filter (what Istio's RequestAuthentication configures) in front of
MCP upstreams, with `remote_jwks` fetched over HTTP from the gateway's `jwks_uri`.

One module-scoped chain (all on 127.0.0.1):

    client ──► gateway Envoy (the filter; a key the test holds) ──► verifier Envoy (jwt_authn, no wasm)
                    ▲                                                   ├─ /mcp ─► weather server (FastMCP)
                    └──── GET /.well-known/jwks.json (cluster) ─────────┘─ else ─► recording upstream

The verifier's config is envoy.yaml's listener with the wasm filter swapped for jwt_authn (README: "Verifying the
tokens in Envoy or Istio"). The gateway's listener port is chosen up front: the verifier's JWKS cluster and issuer
name it before the gateway starts.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import jwt
import pytest
import requests

from harness import (MCP_HEADERS, free_port, load_envoy_yaml, rpc, start_envoy, upstream_cluster_name,
                     upstream_requests_total, verify_with_discovery)
from mcp_helpers import (
    FLUSH_ARGS,
    VERIFIER_HEALTH_PATH,
    WeatherServer,
    envoy_yaml_plugin_config,
    expect_sdk_refused,
    gateway_claims,
    jwt_authn_verifier_edit,
    kid_of,
    mint,
    new_rsa,
    pem_of,
    read_access_log,
    run_sdk,
    stat_value,
    tool_json,
    unverified_claims,
    wait_access_log,
)
from recording_upstream import RecordingUpstream

USER = {"x-user-id": "carol", "x-user-email": "carol@example.com", "x-team-id": "team-green"}
ALLOWED = "http.mcp_ingress.jwt_authn.allowed"
DENIED = "http.mcp_ingress.jwt_authn.denied"
JWKS_FETCHES = "cluster.mcp_gateway_jwks.upstream_rq_200"


@dataclass
class Chain:
    gateway: object
    verifier: object
    server: WeatherServer
    recorder: RecordingUpstream
    key: object
    issuer: str
    verifier_log: Path


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("jwt_authn")
    key = new_rsa()
    gateway_port = free_port()
    issuer = f"http://127.0.0.1:{gateway_port}"
    recorder = RecordingUpstream().start()
    server = WeatherServer(workdir)
    verifier_log = workdir / "verifier-access.log"
    verifier = gateway = None
    try:
        verifier = start_envoy(
            workdir / "verifier", {}, recorder.port, ready_path=VERIFIER_HEALTH_PATH, extra_args=FLUSH_ARGS,
            extra_edit=jwt_authn_verifier_edit(issuer=issuer, gateway_port=gateway_port,
                                               routes=[("/mcp", "weather_server", server.port)],
                                               access_log=verifier_log))
        gateway = start_envoy(workdir / "gateway", lambda url: {**envoy_yaml_plugin_config(), "issuer": url},
                              verifier.listener_port, listener_port=gateway_port,
                              env={"MCP_JWT_SIGNING_KEY": pem_of(key)})
        assert gateway.url == issuer
        server.start(issuer)
        yield Chain(gateway, verifier, server, recorder, key, issuer, verifier_log)
    finally:
        server.stop()
        for e in (gateway, verifier):
            if e is not None:
                e.stop()
        recorder.stop()


@pytest.fixture
def fresh(chain):
    chain.recorder.clear()
    return chain


def test_jwt_authn_accepts_minted_tokens(fresh):
    c = fresh
    allowed, denied = stat_value(c.verifier.admin_url, ALLOWED), stat_value(c.verifier.admin_url, DENIED)
    body = rpc("tools/call", {"name": "get_weather", "arguments": {"city": "Lima"}})
    r = requests.post(c.gateway.url + "/record", data=json.dumps(body), headers={**MCP_HEADERS, **USER}, timeout=10)
    assert r.status_code == 200, (r.status_code, r.text[:300])

    (req,) = c.recorder.wait_for(1)
    token = req.bearer_token()  # forward: true, so the upstream can verify it again
    claims = verify_with_discovery(token, c.issuer, "mcp")
    assert (claims["sub"], claims["scope"]) == ("carol", "mcp:tools/call mcp:tools/get_weather:call")
    assert jwt.get_unverified_header(token)["kid"] == kid_of(c.key)
    assert stat_value(c.verifier.admin_url, ALLOWED) == allowed + 1
    assert stat_value(c.verifier.admin_url, DENIED) == denied
    # The verifier got the JWKS over HTTP from the gateway's listener (answered by the filter).
    assert stat_value(c.verifier.admin_url, JWKS_FETCHES) >= 1


def _other_key_same_kid(c):
    return mint(new_rsa(), gateway_claims(c.issuer), kid=kid_of(c.key))


def _tampered(c):
    r = requests.post(c.gateway.url + "/record", data=json.dumps(rpc("tools/list")), headers=MCP_HEADERS, timeout=10)
    assert r.status_code == 200
    (req,) = c.recorder.wait_for(1)
    c.recorder.clear()
    head, _, sig = req.bearer_token().split(".")
    claims = unverified_claims(req.bearer_token())
    claims["scope"] = "mcp:tools/call mcp:tools/delete_everything:call"
    payload = jwt.utils.base64url_encode(json.dumps(claims, separators=(",", ":")).encode()).decode()
    return f"{head}.{payload}.{sig}"


def _unsigned(c):
    head = jwt.utils.base64url_encode(json.dumps({"alg": "none", "kid": kid_of(c.key)}).encode()).decode()
    body = jwt.utils.base64url_encode(json.dumps(gateway_claims(c.issuer)).encode()).decode()
    return f"{head}.{body}."


# id: (token builder or None for no Authorization header, expected status, jwt_authn's reason in the body)
TOKENS = {
    "control-gateway-key": (lambda c: mint(c.key, gateway_claims(c.issuer)), 200, None),
    "missing": (None, 401, "Jwt is missing"),
    "another-key-same-kid": (_other_key_same_kid, 401, "Jwt verification fails"),
    "another-key-own-kid": (lambda c: mint(new_rsa(), gateway_claims(c.issuer)), 401,
                            "Jwks doesn't have key to match kid or alg from Jwt"),
    "expired": (lambda c: mint(c.key, gateway_claims(c.issuer, now=int(time.time()) - 400)), 401, "Jwt is expired"),
    # jwt_authn answers a wrong audience with 403, not 401.
    "another-audience": (lambda c: mint(c.key, gateway_claims(c.issuer, audience="another-mcp-server")), 403,
                         "Audiences in Jwt are not allowed"),
    "another-issuer": (lambda c: mint(c.key, gateway_claims("https://evil.example.com")), 401,
                       "Jwt issuer is not configured"),
    "alg-none": (_unsigned, 401, "Jwt is not in the form of Header.Payload.Signature"),
    "tampered-payload": (_tampered, 401, "Jwt verification fails"),
}


@pytest.mark.parametrize("case", list(TOKENS))
def test_jwt_authn_verdicts_straight_to_the_verifier(fresh, case):
    """Tokens presented to the verifier directly (bypassing the gateway, which would replace them). The control
    case is signed with the gateway's key like a minted token: it passes; each other case changes one thing."""
    c = fresh
    build, expected, reason = TOKENS[case]
    headers = dict(MCP_HEADERS)
    if build is not None:
        headers["authorization"] = f"Bearer {build(c)}"
    # The recorder's cluster only: the verifier's own JWKS fetches go to another one.
    recorder_cluster = upstream_cluster_name(load_envoy_yaml())
    before = upstream_requests_total(c.verifier, cluster=recorder_cluster)
    r = requests.post(c.verifier.url + "/record", data=json.dumps(rpc("tools/list")), headers=headers, timeout=10)
    assert r.status_code == expected, (r.status_code, r.text[:300])
    if expected == 200:
        (req,) = c.recorder.wait_for(1)
        assert req.bearer_token() == headers["authorization"].removeprefix("Bearer ")
    else:
        assert r.text.startswith(reason), r.text
        assert r.headers["www-authenticate"].startswith("Bearer realm="), r.headers
        # Envoy's counter, read after the response: no wait.
        assert upstream_requests_total(c.verifier, cluster=recorder_cluster) == before, "a refused request was forwarded"
        assert c.recorder.requests == [], "a refused request reached the upstream"


def test_mcp_sdk_through_gateway_and_jwt_authn(fresh):
    """A whole MCP SDK session (initialize, GET stream, tools, DELETE) through gateway → jwt_authn → FastMCP: each
    request is verified twice (by Envoy and by the server), and nothing is refused."""
    c = fresh
    tag = uuid.uuid4().hex
    before = stat_value(c.verifier.admin_url, ALLOWED)

    async def session(cl):
        return await cl.call_tool("whoami", {})

    seen = tool_json(run_sdk(c.gateway.url + "/mcp", session, headers={**USER, "x-test-session": tag},
                             mode="legacy"))
    assert (seen["sub"], seen["act"], seen["scope"]) == ("carol", {"sub": "team-green"},
                                                         ["mcp:tools/call", "mcp:tools/whoami:call"])
    entries = wait_access_log(c.verifier_log, lambda es: {"GET", "DELETE"} <= {
        e["method"] for e in es if e["test_session"] == tag})
    mine = [e for e in entries if e["test_session"] == tag]
    assert {e["method"] for e in mine} == {"POST", "GET", "DELETE"}, mine
    assert all(200 <= int(e["status"]) < 300 for e in mine), mine
    assert stat_value(c.verifier.admin_url, ALLOWED) - before >= len(mine)

    # And the same SDK client straight to the verifier, without the gateway: jwt_authn refuses it.
    refused = expect_sdk_refused(c.verifier.url + "/mcp", headers=USER, mode="legacy")
    assert refused.exchanges[0].www_authenticate.startswith("Bearer realm=")
    assert not [e for e in read_access_log(c.verifier_log) if e["test_session"] == tag and int(e["status"]) >= 400]
