"""Identity end to end: claims from Envoy's verified JWT (`jwt_authn`), mTLS peers, literals, Envoy attributes and
route metadata; require_subject / required_claims; claim shaping; identity-header stripping.

Everything runs through a real Envoy: the real `envoy.filters.http.jwt_authn` filter is inserted BEFORE the wasm
filter and verifies user tokens signed by a test IdP key (made here with `cryptography`, signed with PyJWT); the
minted tokens are verified with PyJWT only (never the project's code).

Module-scoped gateways (their upstreams are cleared before every test):
  idp_gw     jwt_authn (payload_in_metadata: jwt_payload, missing tokens allowed) + jwt:, mtls:, header: sources,
             copy_claims of every JSON type; one worker, so a crashed VM would fail the next request
  strict_gw  jwt_authn (payload_in_metadata: verified) + require_subject + required_claims
  routes_gw  /weather/ and /calendar/ to two more recording upstreams, per-route audience and allowed_tools
  mtls_gw    a second listener that terminates TLS and requires a client certificate from a test CA
  shaping_gw literal and property sources, add/override/remove claims, strip_identity_headers: false
"""

from __future__ import annotations

import copy
import datetime
import ipaddress
import json
import time
from pathlib import Path

import jwt
import pytest
import requests
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from harness import (
    BUILD,
    MCP_HEADERS,
    JWKS_SUFFIX,
    b64url_uint,
    free_port,
    rpc,
    assert_nothing_forwarded_since_reset,
    forwarded_since_reset,
    reset_forwarded,
    running_gateway,
    verify_with_discovery,
)
from recording_upstream import RecordingUpstream


IDP_ISSUER = "https://idp.example.com"
IDP_AUDIENCE = "mcp-gateway"
IDP_KID = "idp-key-1"

WEATHER_AUD = "https://weather.example.com/mcp"
CALENDAR_AUD = "https://calendar.example.com/mcp"
CLIENT_SPIFFE = "spiffe://example.org/ns/apps/sa/client"
OTHER_SPIFFE = "spiffe://example.org/ns/apps/sa/reporter"

IDENTITY_HEADERS = {"x-user-id": "admin", "x-user-email": "admin@evil.example", "x-team-id": "red-team",
                    "x-department": "finance"}


# ----------------------------------------------------------------------------------------------------------------
# the test IdP and Envoy's jwt_authn
# ----------------------------------------------------------------------------------------------------------------
class IdP:
    """An RSA key that signs user tokens; Envoy's jwt_authn trusts its public JWKS."""

    def __init__(self):
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        nums = self.key.public_key().public_numbers()
        self.jwks = {"keys": [{"kty": "RSA", "kid": IDP_KID, "alg": "RS256", "use": "sig",
                               "n": b64url_uint(nums.n), "e": b64url_uint(nums.e)}]}

    def token(self, sub="alice", *, key=None, ttl=300, **claims) -> str:
        now = int(time.time())
        payload = {"iss": IDP_ISSUER, "aud": IDP_AUDIENCE, "iat": now, "nbf": now, "exp": now + ttl}
        if sub is not None:
            payload["sub"] = sub
        payload.update(claims)
        return jwt.encode(payload, key or self.key, algorithm="RS256", headers={"kid": IDP_KID})


@pytest.fixture(scope="module")
def idp():
    return IdP()


def _hcms(cfg: dict):
    for listener in cfg["static_resources"]["listeners"]:
        for chain in listener.get("filter_chains", []):
            for flt in chain.get("filters", []):
                if flt.get("name") == "envoy.filters.network.http_connection_manager":
                    yield flt["typed_config"]


def jwt_authn_filter(idp: IdP, payload_in_metadata: str = "jwt_payload") -> dict:
    """Envoy's jwt_authn: verifies the IdP's tokens, keeps the payload in metadata, lets missing tokens through."""
    return {
        "name": "envoy.filters.http.jwt_authn",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication",
            "providers": {
                "idp": {
                    "issuer": IDP_ISSUER,
                    "audiences": [IDP_AUDIENCE],
                    "local_jwks": {"inline_string": json.dumps(idp.jwks)},
                    "payload_in_metadata": payload_in_metadata,
                    "forward": False,
                },
            },
            "rules": [{"match": {"prefix": "/"},
                       "requires": {"requires_any": {"requirements": [{"provider_name": "idp"},
                                                                      {"allow_missing": {}}]}}}],
        },
    }


def insert_before_wasm(cfg: dict, http_filter: dict) -> None:
    for hcm in _hcms(cfg):
        filters = hcm["http_filters"]
        (at,) = [i for i, f in enumerate(filters) if f["name"] == "envoy.filters.http.wasm"]
        filters.insert(at, copy.deepcopy(http_filter))


# ----------------------------------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------------------------------
def post(url, body, *, token=None, headers=None, path="/mcp", **kw) -> requests.Response:
    h = dict(MCP_HEADERS)
    if token is not None:
        h["authorization"] = f"Bearer {token}"
    h.update(headers or {})
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    return requests.post(url + path, data=data, headers=h, timeout=10, **kw)


def tool_call(name, id=1):  # noqa: A002 - JSON-RPC's own name
    return rpc("tools/call", {"name": name, "arguments": {}}, id=id)


def forwarded(upstream: RecordingUpstream):
    """The single request `upstream` received and the bearer token on it (exactly one Authorization)."""
    reqs = upstream.wait_for(1, timeout=5)
    assert len(reqs) == 1, f"upstream should have received exactly one request, got {len(reqs)}"
    auth = reqs[0].header_values("authorization")
    assert len(auth) == 1, f"expected exactly one authorization header upstream, got {auth!r}"
    scheme, _, token = auth[0].partition(" ")
    assert scheme == "Bearer" and token, auth[0]
    return reqs[0], token


def call_ok(g, body=None, *, token=None, headers=None, path="/mcp", audience="mcp", upstream=None, **kw):
    """POST, expect 200 from the upstream, verify the token via the gateway's discovery; (request, claims)."""
    r = post(g.url, body if body is not None else rpc("tools/list"), token=token, headers=headers, path=path, **kw)
    assert r.status_code == 200, f"{r.status_code} {r.text[:300]!r}"
    req, minted = forwarded(upstream or g.upstream)
    return req, verify_with_discovery(minted, g.url, audience)


def assert_nothing_forwarded(g, *upstreams):
    """Nothing reached an upstream since the fixture's reset_forwarded: Envoy's upstream request counter, read
    after the response (no wait), and the recording upstreams (default: the gateway's own)."""
    assert_nothing_forwarded_since_reset(g, *upstreams)


def assert_rpc_error(r: requests.Response, *, status: int, code: int, id=None):  # noqa: A002
    assert r.status_code == status, f"{r.status_code} != {status}: {r.text[:300]!r}"
    assert r.headers.get("content-type", "").split(";")[0] == "application/json", r.headers
    data = r.json()
    assert data["jsonrpc"] == "2.0" and data["id"] == id, data
    assert data["error"]["code"] == code, data
    assert isinstance(data["error"]["message"], str) and data["error"]["message"], data
    assert "result" not in data
    return data["error"]["message"]


def assert_worker_healthy(log: str):
    for bad in ("panicked", "wasm log mcp_jwt_signer: panic", "Function: proxy_on_", "failed to call"):
        assert bad not in log, f"wasm VM trouble in Envoy's log ({bad!r}):\n{log[-3000:]}"


# ----------------------------------------------------------------------------------------------------------------
# 1. identity from jwt_authn's verified payload
# ----------------------------------------------------------------------------------------------------------------
TENANT_CLAIM = "https://example.com/tenant"  # a namespaced claim: `/` inside the name, `~1` in the source


def idp_config(url: str) -> dict:
    return {
        "issuer": url,
        "audience": "mcp",
        "identity": {
            # The verified payload first; the header is a fallback for callers without an IdP token. Listed
            # AFTER jwt:sub, it must never override a verified subject.
            "subject": ["jwt:sub", "header:x-user-id"],
            "email": ["jwt:email", "header:x-user-email"],
            # Without TLS `mtls:uri_san` is empty and the next source is tried.
            "actor": ["jwt:org/team", "mtls:uri_san", "header:x-team-id"],
        },
        "copy_claims": {
            "groups": "jwt:groups",
            "roles": "jwt:roles",
            "primary_group": "jwt:groups/0",
            "level": "jwt:level",
            "email_verified": "jwt:email_verified",
            "org": "jwt:org",
            "tenant": "jwt:" + TENANT_CLAIM.replace("/", "~1"),
            "department": "header:x-department",
        },
        "token_cache": {"max_entries": 0},
    }


@pytest.fixture(scope="module")
def _idp_gw(tmp_path_factory, idp):
    edit = lambda cfg: insert_before_wasm(cfg, jwt_authn_filter(idp))  # noqa: E731
    with running_gateway(tmp_path_factory.mktemp("idp_gw"), idp_config, extra_edit=edit, concurrency=1) as g:
        yield g


@pytest.fixture
def idp_gw(_idp_gw):
    reset_forwarded(_idp_gw)
    return _idp_gw


FULL_CLAIMS = {
    "email": "alice@example.com",
    "email_verified": True,
    "groups": ["admins", "devs"],
    "roles": ["mcp-reader"],
    "level": 3,
    "org": {"team": "blue", "id": 7, "tags": ["eu", "prod"]},
    TENANT_CLAIM: "acme",
}


def test_claims_come_from_the_verified_payload(idp_gw, idp):
    user_token = idp.token("alice", **FULL_CLAIMS)
    req, claims = call_ok(idp_gw, tool_call("get_weather"), token=user_token)
    assert claims["sub"] == "alice"
    assert claims["email"] == "alice@example.com"
    assert claims["act"] == {"sub": "blue"}
    assert claims["groups"] == ["admins", "devs"]
    assert claims["roles"] == ["mcp-reader"]
    assert claims["primary_group"] == "admins"
    assert claims["level"] == 3 and type(claims["level"]) is int
    assert claims["email_verified"] is True
    assert claims["org"] == {"team": "blue", "id": 7, "tags": ["eu", "prod"]}
    assert type(claims["org"]["id"]) is int
    assert claims["tenant"] == "acme"
    assert claims["scope"] == "mcp:tools/call mcp:tools/get_weather:call"
    assert "department" not in claims, "no x-department header was sent"
    # jwt_authn's forward: false + the filter's no-passthrough: the IdP token never reaches the MCP server.
    assert all(user_token not in value for _, value in req.headers), "the IdP token reached the upstream"


def test_a_client_header_cannot_change_the_verified_subject(idp_gw, idp):
    user_token = idp.token("alice", **FULL_CLAIMS)
    req, claims = call_ok(idp_gw, tool_call("get_weather"), token=user_token, headers=IDENTITY_HEADERS)
    assert claims["sub"] == "alice"
    assert claims["email"] == "alice@example.com"
    assert claims["act"]["sub"] == "blue"


def test_header_sources_are_only_a_fallback_without_an_idp_token(idp_gw):
    """The header sources are live (so the test above proves precedence, not a dead source)."""
    req, claims = call_ok(idp_gw, tool_call("get_weather"), headers=IDENTITY_HEADERS)
    assert claims["sub"] == "admin"
    assert claims["email"] == "admin@evil.example"
    assert claims["act"]["sub"] == "red-team", "mtls:uri_san is empty on a plaintext connection"
    assert claims["department"] == "finance"
    for name in ("groups", "roles", "primary_group", "level", "email_verified", "org", "tenant"):
        assert name not in claims, f"{name} was copied without an IdP token"


def test_missing_payload_claims_fall_through(idp_gw, idp):
    req, claims = call_ok(idp_gw, tool_call("list_events"), token=idp.token("bob"),
                          headers={"x-team-id": "green-team"})
    assert claims["sub"] == "bob"
    assert "email" not in claims
    assert claims["act"]["sub"] == "green-team"
    for name in ("groups", "roles", "primary_group", "level", "email_verified", "org", "tenant"):
        assert name not in claims


def test_identity_headers_are_stripped_before_upstream(idp_gw, idp):
    for token in (idp.token("carol", **FULL_CLAIMS), None):  # the header sources unused, then used
        idp_gw.upstream.clear()
        req, claims = call_ok(idp_gw, tool_call("get_weather"), token=token, headers=IDENTITY_HEADERS)
        for name in ("x-user-id", "x-user-email", "x-team-id"):
            assert req.header_values(name) == [], f"{name} reached the upstream (token={'yes' if token else 'no'})"


def test_copy_claims_header_sources_are_stripped_too(idp_gw):
    """`strip_identity_headers` covers every `header:` source, the one in copy_claims included."""
    req, claims = call_ok(idp_gw, tool_call("get_weather"), headers={"x-user-id": "dan", "x-department": "ops"})
    assert claims["department"] == "ops"
    assert req.header_values("x-department") == [], "x-department (a copy_claims header source) reached upstream"


@pytest.mark.parametrize("case,status", [
    ("forged-key", 401), ("expired", 401), ("wrong-audience", 403), ("wrong-issuer", 401), ("unsigned", 401),
])
def test_bad_idp_tokens_are_refused_by_jwt_authn(idp_gw, idp, case, status):
    other_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    token = {
        "forged-key": lambda: idp.token("admin", key=other_key, **FULL_CLAIMS),  # same kid, other key
        "expired": lambda: idp.token("admin", iat=int(time.time()) - 3600, nbf=int(time.time()) - 3600,
                                     exp=int(time.time()) - 1800),
        "wrong-audience": lambda: idp.token("admin", aud="some-other-service"),
        "wrong-issuer": lambda: idp.token("admin", iss="https://evil.example.com"),
        "unsigned": lambda: jwt.encode({"iss": IDP_ISSUER, "aud": IDP_AUDIENCE, "sub": "admin",
                                        "exp": int(time.time()) + 300}, None, algorithm="none"),
    }[case]()
    r = post(idp_gw.url, tool_call("get_weather"), token=token, headers={"x-user-id": "admin"})
    assert r.status_code == status, f"{r.status_code} {r.text[:300]!r}"
    assert "jsonrpc" not in r.text, "jwt_authn, not the wasm filter, must refuse a bad IdP token"
    assert_nothing_forwarded(idp_gw)


def test_empty_list_claim_is_copied(idp_gw, idp):
    """A user in no groups (`"groups": []`, Envoy returns an empty pairs encoding) must still get a token."""
    r = post(idp_gw.url, tool_call("get_weather"), token=idp.token("erin", email="erin@example.com", groups=[]))
    assert r.status_code == 200, f"{r.status_code} {r.text[:300]!r}"
    _, minted = forwarded(idp_gw.upstream)
    claims = verify_with_discovery(minted, idp_gw.url, "mcp")
    assert claims["sub"] == "erin" and claims["email"] == "erin@example.com"
    # Copied as the empty list it is: a filter that drops the claim (or makes it a string or an object) fails here.
    assert "groups" in claims and claims["groups"] == [], claims
    assert "primary_group" not in claims


# ----------------------------------------------------------------------------------------------------------------
# 8. JSON null in the verified payload (Envoy cannot serialise it): refused cleanly, the worker keeps working
# ----------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("claims,source", [
    ({"org": {"team": None}}, "jwt:org/team"),  # the actor source itself is null
    ({"email": None}, "jwt:email"),  # a null identity claim never falls back to the spoofable header
    ({"org": {"id": 1, "note": None}}, "jwt:org"),  # copy_claims of an object holding a null
], ids=["null-actor", "null-email", "null-inside-copied-object"])
def test_null_claim_is_refused_cleanly_and_the_worker_survives(idp_gw, idp, claims, source):
    r = post(idp_gw.url, tool_call("get_weather", id=41), token=idp.token("nully", **claims),
             headers={"x-user-email": "spoof@evil.example", "x-team-id": "red-team"})
    message = assert_rpc_error(r, status=400, code=-32600, id=41)
    assert source in message, message
    assert_nothing_forwarded(idp_gw)
    # One worker: the same VM answers next. It must still mint tokens.
    for i in range(2):
        idp_gw.upstream.clear()
        _, after = call_ok(idp_gw, tool_call("get_weather", id=42 + i), token=idp.token(f"after-null-{i}"))
        assert after["sub"] == f"after-null-{i}"
    assert_worker_healthy(idp_gw.log())


def test_null_in_a_claim_the_filter_does_not_read_is_harmless(idp_gw, idp):
    _, claims = call_ok(idp_gw, tool_call("get_weather"),
                        token=idp.token("frank", email="frank@example.com", middle_name=None, org={"team": "teal"}))
    assert (claims["sub"], claims["email"], claims["act"]["sub"]) == ("frank", "frank@example.com", "teal")
    assert claims["org"] == {"team": "teal"}
    assert "middle_name" not in claims


# ----------------------------------------------------------------------------------------------------------------
# 2. require_subject and required_claims
# ----------------------------------------------------------------------------------------------------------------
def strict_config(url: str) -> dict:
    return {
        "issuer": url,
        "jwt_payload_in_metadata": "verified",
        "identity": {"subject": ["jwt:sub"], "email": ["jwt:email"], "actor": ["jwt:org/team"]},
        "require_subject": True,
        "required_claims": ["email", "org/team"],
    }


@pytest.fixture(scope="module")
def _strict_gw(tmp_path_factory, idp):
    edit = lambda cfg: insert_before_wasm(cfg, jwt_authn_filter(idp, payload_in_metadata="verified"))  # noqa: E731
    with running_gateway(tmp_path_factory.mktemp("strict_gw"), strict_config, extra_edit=edit) as g:
        yield g


@pytest.fixture
def strict_gw(_strict_gw):
    reset_forwarded(_strict_gw)
    return _strict_gw


def test_no_idp_token_gets_401_with_www_authenticate(strict_gw):
    r = post(strict_gw.url, tool_call("get_weather", id=7), headers={"x-user-id": "admin"})
    assert_rpc_error(r, status=401, code=-32001, id=7)
    assert r.headers.get("www-authenticate", "").split(" ")[0] == "Bearer", r.headers
    assert_nothing_forwarded(strict_gw)


def test_no_idp_token_on_a_stream_get_gets_401(strict_gw):
    r = requests.get(strict_gw.url + "/mcp", headers={"accept": "text/event-stream"}, timeout=10)
    assert_rpc_error(r, status=401, code=-32001, id=None)
    assert r.headers.get("www-authenticate", "").split(" ")[0] == "Bearer", r.headers
    assert_nothing_forwarded(strict_gw)


def test_discovery_and_jwks_need_no_user(strict_gw):
    r = requests.get(strict_gw.url + JWKS_SUFFIX, timeout=5)
    assert r.status_code == 200 and r.json()["keys"], r.text
    assert_nothing_forwarded(strict_gw)


@pytest.mark.parametrize("claims,missing", [
    ({"org": {"team": "blue"}}, "email"),
    ({"email": "gina@example.com"}, "org/team"),
    ({"email": "gina@example.com", "org": {"name": "acme"}}, "org/team"),
    ({"email": "", "org": {"team": "blue"}}, "email"),
], ids=["no-email", "no-org", "org-without-team", "empty-email"])
def test_missing_required_claim_gets_403(strict_gw, idp, claims, missing):
    r = post(strict_gw.url, tool_call("get_weather", id="req-9"), token=idp.token("gina", **claims))
    message = assert_rpc_error(r, status=403, code=-32003, id="req-9")
    assert missing in message, message
    assert_nothing_forwarded(strict_gw)


def test_complete_identity_passes(strict_gw, idp):
    token = idp.token("gina", email="gina@example.com", org={"team": "blue"})
    _, claims = call_ok(strict_gw, tool_call("get_weather"), token=token)
    assert (claims["sub"], claims["email"], claims["act"]["sub"]) == ("gina", "gina@example.com", "blue")


# ----------------------------------------------------------------------------------------------------------------
# 3 + 4. per-route audience and allowed_tools from route metadata
# ----------------------------------------------------------------------------------------------------------------
def _route(name, prefix, cluster, settings=None):
    route = {"name": name, "match": {"prefix": prefix}, "route": {"cluster": cluster, "timeout": "0s"}}
    if settings is not None:
        route["metadata"] = {"filter_metadata": {"mcp_jwt_signer": settings}}
    return route


def _static_cluster(name, port):
    return {"name": name, "type": "STATIC", "connect_timeout": "2s",
            "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": [
                {"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": port}}}}]}]}}


@pytest.fixture(scope="module")
def _routes_gw(tmp_path_factory):
    weather, calendar = RecordingUpstream().start(), RecordingUpstream().start()

    def edit(cfg):
        (hcm,) = _hcms(cfg)
        vhost = hcm["route_config"]["virtual_hosts"][0]
        (default,) = vhost["routes"]
        vhost["routes"] = [
            _route("weather", "/weather/", "weather",
                   {"audience": WEATHER_AUD, "allowed_tools": ["get_weather", "get_forecast"]}),
            _route("calendar", "/calendar/", "calendar", {"audience": CALENDAR_AUD}),
            _route("single", "/single/", default["route"]["cluster"], {"allowed_tools": ["only_tool"]}),
            _route("locked", "/locked/", default["route"]["cluster"], {"allowed_tools": []}),
            default,
        ]
        cfg["static_resources"]["clusters"] += [_static_cluster("weather", weather.port),
                                                _static_cluster("calendar", calendar.port)]

    config = lambda url: {"issuer": url, "audience": "mcp", "identity": {"subject": ["header:x-user-id"]}}  # noqa: E731
    try:
        with running_gateway(tmp_path_factory.mktemp("routes_gw"), config, extra_edit=edit) as g:
            g.weather, g.calendar = weather, calendar
            yield g
    finally:
        weather.stop()
        calendar.stop()


@pytest.fixture
def routes_gw(_routes_gw):
    reset_forwarded(_routes_gw, _routes_gw.weather, _routes_gw.calendar)
    return _routes_gw


def _all_upstreams(g):
    return (g.upstream, g.weather, g.calendar)


def test_each_route_gets_its_own_audience(routes_gw):
    # The same user and tool on both routes: identical claims but for aud (the token cache must keep them apart).
    tokens = {}
    for prefix, upstream, audience in (("/weather", routes_gw.weather, WEATHER_AUD),
                                       ("/calendar", routes_gw.calendar, CALENDAR_AUD),
                                       ("", routes_gw.upstream, "mcp")):
        reset_forwarded(routes_gw, routes_gw.weather, routes_gw.calendar)
        r = post(routes_gw.url, tool_call("get_weather"), headers={"x-user-id": "hana"}, path=prefix + "/mcp")
        assert r.status_code == 200, f"{prefix}: {r.status_code} {r.text[:300]!r}"
        req, tokens[audience] = forwarded(upstream)
        assert req.path == prefix + "/mcp"
        # Exactly one upstream request (this one), and no other upstream saw anything.
        assert forwarded_since_reset(routes_gw) == 1
        for other in _all_upstreams(routes_gw):
            if other is not upstream:
                assert other.requests == [], [(r.method, r.path) for r in other.requests]
        claims = verify_with_discovery(tokens[audience], routes_gw.url, audience)
        assert claims["aud"] == audience and claims["sub"] == "hana"

    # Each MCP server's verifier accepts only tokens issued for it.
    for token_aud, token in tokens.items():
        for verifier_aud in tokens:
            if verifier_aud != token_aud:
                with pytest.raises(jwt.InvalidAudienceError):
                    verify_with_discovery(token, routes_gw.url, verifier_aud)


def _batch_with(forbidden: str, position: int) -> list:
    """get_weather and get_forecast (both allowed on /weather/) with `forbidden` inserted at `position`."""
    batch = [tool_call("get_weather", id=1), tool_call("get_forecast", id=2)]
    batch.insert(position, tool_call(forbidden, id=3))
    return batch


# One bad element refuses the batch, wherever it is: first, in the middle, last, and with a name that sorts before
# (aaa_delete) or after (send_email) the allowed ones, so a filter that checks only the first, the last or the
# smallest tool of a batch fails here.
@pytest.mark.parametrize("body,forbidden", [
    (tool_call("send_email", id=5), "send_email"),
    *[(_batch_with(name, pos), name) for name in ("aaa_delete", "send_email") for pos in (0, 1, 2)],
], ids=["single", *[f"batch-{name}-{where}" for name in ("aaa_delete", "send_email")
                    for where in ("first", "middle", "last")]])
def test_tool_outside_allowed_tools_is_refused(routes_gw, body, forbidden):
    r = post(routes_gw.url, body, headers={"x-user-id": "ivan"}, path="/weather/mcp")
    message = assert_rpc_error(r, status=403, code=-32003, id=5 if isinstance(body, dict) else None)
    assert forbidden in message, message
    assert_nothing_forwarded(routes_gw, *_all_upstreams(routes_gw))


@pytest.mark.parametrize("body,scope", [
    (tool_call("get_weather"), "mcp:tools/call mcp:tools/get_weather:call"),
    ([tool_call("get_weather", id=1), tool_call("get_forecast", id=2)],
     "mcp:tools/call mcp:tools/get_forecast:call mcp:tools/get_weather:call"),
    (rpc("tools/list"), "mcp:tools/list"),  # allowed_tools restricts tools/call only
], ids=["allowed-tool", "allowed-batch", "tools-list"])
def test_allowed_tools_and_other_methods_pass(routes_gw, body, scope):
    _, claims = call_ok(routes_gw, body, headers={"x-user-id": "ivan"}, path="/weather/mcp",
                        audience=WEATHER_AUD, upstream=routes_gw.weather)
    assert claims["scope"] == scope


def test_route_without_allowed_tools_is_not_restricted(routes_gw):
    _, claims = call_ok(routes_gw, tool_call("send_email"), headers={"x-user-id": "ivan"}, path="/calendar/mcp",
                        audience=CALENDAR_AUD, upstream=routes_gw.calendar)
    assert "mcp:tools/send_email:call" in claims["scope"].split()


def test_single_entry_allow_list(routes_gw):
    call_ok(routes_gw, tool_call("only_tool"), headers={"x-user-id": "ivan"}, path="/single/mcp")
    reset_forwarded(routes_gw, routes_gw.weather, routes_gw.calendar)
    r = post(routes_gw.url, tool_call("only_tool_2", id=3), headers={"x-user-id": "ivan"}, path="/single/mcp")
    assert_rpc_error(r, status=403, code=-32003, id=3)
    assert_nothing_forwarded(routes_gw, *_all_upstreams(routes_gw))


def test_empty_allow_list_allows_no_tool(routes_gw):
    r = post(routes_gw.url, tool_call("get_weather", id=4), headers={"x-user-id": "ivan"}, path="/locked/mcp")
    assert_rpc_error(r, status=403, code=-32003, id=4)
    assert_nothing_forwarded(routes_gw, *_all_upstreams(routes_gw))
    _, claims = call_ok(routes_gw, rpc("tools/list"), headers={"x-user-id": "ivan"}, path="/locked/mcp")
    assert claims["scope"] == "mcp:tools/list"


# ----------------------------------------------------------------------------------------------------------------
# 5. mTLS: the client certificate's SPIFFE ID becomes act.sub
# ----------------------------------------------------------------------------------------------------------------
def _name(cn):
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Example Apps"),
                      x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _pem_key(key) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


class MiniCA:
    def __init__(self, name):
        self.key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.timezone.utc)
        self.cert = (x509.CertificateBuilder()
                     .subject_name(_name(name)).issuer_name(_name(name))
                     .public_key(self.key.public_key()).serial_number(x509.random_serial_number())
                     .not_valid_before(now - datetime.timedelta(minutes=5))
                     .not_valid_after(now + datetime.timedelta(days=1))
                     .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                     .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                                  content_commitment=False, key_encipherment=False,
                                                  data_encipherment=False, key_agreement=False,
                                                  encipher_only=False, decipher_only=False), critical=True)
                     .sign(self.key, hashes.SHA256()))

    def issue(self, directory: Path, stem: str, cn: str, sans: list, usage) -> tuple:
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.timezone.utc)
        cert = (x509.CertificateBuilder()
                .subject_name(_name(cn)).issuer_name(self.cert.subject)
                .public_key(key.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(now - datetime.timedelta(minutes=5))
                .not_valid_after(now + datetime.timedelta(days=1))
                .add_extension(x509.SubjectAlternativeName(sans), critical=False)
                .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
                .sign(self.key, hashes.SHA256()))
        cert_path, key_path = directory / f"{stem}.crt", directory / f"{stem}.key"
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        key_path.write_bytes(_pem_key(key))
        return str(cert_path), str(key_path)

    def write(self, path: Path) -> str:
        path.write_bytes(self.cert.public_bytes(serialization.Encoding.PEM))
        return str(path)


def mtls_config(url: str) -> dict:
    return {
        "issuer": url,
        "identity": {"subject": ["header:x-user-id"], "actor": ["mtls:uri_san"]},
        "copy_claims": {"peer_dns": "mtls:dns_san", "peer_subject": "mtls:subject"},
        "token_cache": {"max_entries": 0},
    }


@pytest.fixture(scope="module")
def _mtls_gw(tmp_path_factory):
    d = tmp_path_factory.mktemp("mtls_pki")
    ca, rogue_ca = MiniCA("Test Mesh CA"), MiniCA("Rogue CA")
    server = ca.issue(d, "server", "localhost",
                      [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))],
                      ExtendedKeyUsageOID.SERVER_AUTH)
    client = lambda ca_, stem, cn, spiffe: ca_.issue(  # noqa: E731
        d, stem, cn, [x509.UniformResourceIdentifier(spiffe), x509.DNSName(f"{cn}.apps.svc.cluster.local")],
        ExtendedKeyUsageOID.CLIENT_AUTH)
    pki = {
        "ca": ca.write(d / "ca.crt"),
        "client": client(ca, "client", "client", CLIENT_SPIFFE),
        "reporter": client(ca, "reporter", "reporter", OTHER_SPIFFE),
        "rogue": client(rogue_ca, "rogue", "client", CLIENT_SPIFFE),  # the same names from an untrusted CA
    }
    tls_port = free_port()

    def edit(cfg):
        (plain,) = cfg["static_resources"]["listeners"]
        tls = copy.deepcopy(plain)
        tls["name"] = "mcp_ingress_mtls"
        tls["address"]["socket_address"]["port_value"] = tls_port
        tls["filter_chains"][0]["transport_socket"] = {
            "name": "envoy.transport_sockets.tls",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
                "require_client_certificate": True,
                "common_tls_context": {
                    "tls_certificates": [{"certificate_chain": {"filename": server[0]},
                                          "private_key": {"filename": server[1]}}],
                    "validation_context": {"trusted_ca": {"filename": pki["ca"]}},
                },
            },
        }
        cfg["static_resources"]["listeners"].append(tls)

    with running_gateway(tmp_path_factory.mktemp("mtls_gw"), mtls_config, extra_edit=edit) as g:
        g.tls_url = f"https://127.0.0.1:{tls_port}"
        g.pki = pki
        yield g


@pytest.fixture
def mtls_gw(_mtls_gw):
    reset_forwarded(_mtls_gw)
    return _mtls_gw


def _mtls_post(g, client, headers=None):
    return requests.post(g.tls_url + "/mcp", data=json.dumps(tool_call("get_weather")),
                         headers={**MCP_HEADERS, **(headers or {})}, cert=g.pki[client], verify=g.pki["ca"], timeout=10)


@pytest.mark.parametrize("client,spiffe", [("client", CLIENT_SPIFFE), ("reporter", OTHER_SPIFFE)])
def test_client_certificate_spiffe_id_becomes_act_sub(mtls_gw, client, spiffe):
    r = _mtls_post(mtls_gw, client)
    assert r.status_code == 200, f"{r.status_code} {r.text[:300]!r}"
    _, minted = forwarded(mtls_gw.upstream)
    claims = verify_with_discovery(minted, mtls_gw.url, "mcp")
    assert claims["act"] == {"sub": spiffe}
    assert claims["sub"] == "mcp-gateway", "no user header: sub falls back to the configured actor"
    assert claims["peer_dns"] == f"{client}.apps.svc.cluster.local"
    assert "CN=" + client in claims["peer_subject"] and "O=Example Apps" in claims["peer_subject"], claims


def test_user_header_and_mtls_actor_together(mtls_gw):
    r = _mtls_post(mtls_gw, "client", headers={"x-user-id": "julia"})
    assert r.status_code == 200, r.text
    _, minted = forwarded(mtls_gw.upstream)
    claims = verify_with_discovery(minted, mtls_gw.url, "mcp")
    assert (claims["sub"], claims["act"]["sub"]) == ("julia", CLIENT_SPIFFE)


@pytest.mark.parametrize("client", [None, "rogue"], ids=["no-client-cert", "untrusted-ca"])
def test_tls_listener_refuses_clients_without_a_trusted_certificate(mtls_gw, client):
    kw = {"cert": mtls_gw.pki[client]} if client else {}
    with pytest.raises(requests.exceptions.ConnectionError):  # SSLError is a ConnectionError
        requests.post(mtls_gw.tls_url + "/mcp", data=json.dumps(tool_call("get_weather")), headers=MCP_HEADERS,
                      verify=mtls_gw.pki["ca"], timeout=10, **kw)
    assert_nothing_forwarded(mtls_gw)


def test_plaintext_connection_has_no_peer_identity(mtls_gw):
    _, claims = call_ok(mtls_gw, tool_call("get_weather"))
    assert claims["act"] == {"sub": "mcp-gateway"}
    assert "peer_dns" not in claims and "peer_subject" not in claims


# ----------------------------------------------------------------------------------------------------------------
# 6 + 7. literal and property sources, claim shaping, strip_identity_headers: false
# ----------------------------------------------------------------------------------------------------------------
OVERRIDE_ISSUER = "https://tokens.example.com"
# The workload name comes from Envoy's node metadata under wasm; the native build's ABI has no getter for node
# metadata (such a source is refused at load: test_native.py), so there it comes from the route's metadata, which
# both builds read.
WORKLOAD_SOURCE = {"wasm": "property:xds/node/metadata/WORKLOAD",
                   "native": "property:xds/route_metadata/filter_metadata/workload/WORKLOAD"}[BUILD]


def shaping_config(url: str) -> dict:
    return {
        "issuer": url,
        "audience": "mcp",
        "identity": {
            "subject": ["header:x-user-id", "literal:anonymous"],
            "email": ["header:x-user-email"],
            "actor": [WORKLOAD_SOURCE, "literal:unused"],
        },
        "strip_identity_headers": False,
        "copy_claims": {"route": "property:xds/route_name", "gateway": "literal:edge-1"},
        "add_claims": {"tenant": "acme", "tier": 1, "features": ["search", "export"], "limits": {"rpm": 60},
                       "beta": False},
        "override_claims": {"iss": OVERRIDE_ISSUER, "tier": 2, "aud": ["https://a.example.com", "https://b.example.com"]},
        "remove_claims": ["nbf", "email", "features"],
        "token_cache": {"max_entries": 0},
    }


@pytest.fixture(scope="module")
def _shaping_gw(tmp_path_factory):
    def edit(cfg):
        cfg["node"] = {"id": "gw-node-1", "cluster": "mcp-gateways", "metadata": {"WORKLOAD": "billing-agent"}}
        (hcm,) = _hcms(cfg)
        route = hcm["route_config"]["virtual_hosts"][0]["routes"][0]
        route["name"] = "mcp_default_route"
        route["metadata"] = {"filter_metadata": {"workload": {"WORKLOAD": "billing-agent"}}}

    with running_gateway(tmp_path_factory.mktemp("shaping_gw"), shaping_config, extra_edit=edit) as g:
        yield g


@pytest.fixture
def shaping_gw(_shaping_gw):
    reset_forwarded(_shaping_gw)
    return _shaping_gw


def verify_with_jwks(token: str, base_url: str, *, audience, issuer) -> dict:
    """PyJWT against the gateway's JWKS, with an explicit issuer (for an overridden `iss`)."""
    jwks = jwt.PyJWKSet.from_dict(requests.get(base_url + JWKS_SUFFIX, timeout=5).json())
    (key,) = [k for k in jwks.keys if k.key_id == jwt.get_unverified_header(token)["kid"]]
    return jwt.decode(token, key.key, algorithms=["RS256"], audience=audience, issuer=issuer,
                      options={"require": ["exp", "iat", "iss", "aud", "sub", "jti"]})


def test_claim_shaping_end_to_end(shaping_gw):
    r = post(shaping_gw.url, tool_call("get_weather"), headers={"x-user-id": "kim", "x-user-email": "kim@example.com"})
    assert r.status_code == 200, r.text
    _, minted = forwarded(shaping_gw.upstream)
    with pytest.raises(jwt.InvalidIssuerError):  # not the discovery issuer any more: override means override
        verify_with_jwks(minted, shaping_gw.url, audience="https://a.example.com", issuer=shaping_gw.url)
    claims = verify_with_jwks(minted, shaping_gw.url, audience="https://b.example.com", issuer=OVERRIDE_ISSUER)
    assert claims["iss"] == OVERRIDE_ISSUER
    assert claims["aud"] == ["https://a.example.com", "https://b.example.com"]
    assert claims["sub"] == "kim"
    assert claims["act"] == {"sub": "billing-agent"}, WORKLOAD_SOURCE
    assert claims["route"] == "mcp_default_route"
    assert claims["gateway"] == "edge-1"
    assert claims["tenant"] == "acme"
    assert claims["tier"] == 2, "override_claims wins over add_claims"
    assert claims["limits"] == {"rpm": 60} and claims["beta"] is False
    for removed in ("nbf", "email", "features"):
        assert removed not in claims, f"{removed} should have been removed"
    assert claims["scope"] == "mcp:tools/call mcp:tools/get_weather:call"
    assert claims["exp"] - claims["iat"] == 300


def test_literal_is_the_last_resort(shaping_gw):
    r = post(shaping_gw.url, rpc("tools/list"))
    assert r.status_code == 200, r.text
    _, minted = forwarded(shaping_gw.upstream)
    claims = verify_with_jwks(minted, shaping_gw.url, audience="https://a.example.com", issuer=OVERRIDE_ISSUER)
    assert claims["sub"] == "anonymous"


def test_identity_headers_kept_when_stripping_is_off(shaping_gw):
    r = post(shaping_gw.url, rpc("tools/list"), headers={"x-user-id": "kim", "x-user-email": "kim@example.com"})
    assert r.status_code == 200, r.text
    req, _ = forwarded(shaping_gw.upstream)
    assert req.header_values("x-user-id") == ["kim"]
    assert req.header_values("x-user-email") == ["kim@example.com"]


BAD_IDENTITY_CONFIGS = {
    "unknown-kind": ({"identity": {"subject": ["jwt:sub", "ldap:uid"]}}, "identity.subject[1]"),
    "unknown-mtls-field": ({"identity": {"actor": ["mtls:spiffe_id"]}}, "identity.actor[0]"),
    "bad-pointer-escape": ({"copy_claims": {"groups": "jwt:groups~2"}}, "copy_claims.groups"),
    "required-claim-path": ({"required_claims": ["email", "org//team"]}, "required_claims[1]"),
    "add-exp": ({"add_claims": {"tenant": "acme", "exp": 9999999999}}, "add_claims.exp"),
    "remove-iss": ({"remove_claims": ["nbf", "iss"]}, "remove_claims[1]"),
}


@pytest.mark.parametrize("case", list(BAD_IDENTITY_CONFIGS))
def test_bad_identity_config_is_refused_at_load(envoy_expect_failure, case):
    plugin_config, field = BAD_IDENTITY_CONFIGS[case]
    res = envoy_expect_failure(plugin_config)
    log = res.log()
    assert res.exited and res.returncode != 0, f"envoy must refuse the config and exit; log:\n{log[-3000:]}"
    assert f"invalid plugin configuration: field `{field}`" in log, f"log should name `{field}`:\n{log[-3000:]}"


# ----------------------------------------------------------------------------------------------------------------
# 9. what an identity value may be (docs/identity.md): a string, or an integer, which becomes its decimal text
# ----------------------------------------------------------------------------------------------------------------
def test_an_integer_identity_claim_becomes_decimal_text(idp_gw, idp):
    # Not `sub`: jwt_authn itself refuses a token whose `sub` is not a string (401, "Jwt payload [sub] field is not
    # a string"), so integer ids reach the filter through other claims.
    _, claims = call_ok(idp_gw, tool_call("get_weather"), token=idp.token("hana", email=12345, org={"team": 7}))
    assert (claims["sub"], claims["email"], claims["act"]["sub"]) == ("hana", "12345", "7"), claims


def test_jwt_authn_refuses_an_integer_sub_before_the_filter(idp_gw, idp):
    r = post(idp_gw.url, tool_call("get_weather"), token=idp.token(12345))
    assert r.status_code == 401 and "sub" in r.text, f"{r.status_code} {r.text[:200]!r}"
    assert_nothing_forwarded(idp_gw)


@pytest.mark.parametrize("value", [1.5, True, ["blue"], {"name": "blue"}], ids=["fraction", "bool", "list", "object"])
def test_an_identity_claim_that_is_neither_text_nor_an_integer_is_refused(idp_gw, idp, value):
    r = post(idp_gw.url, tool_call("get_weather", id=51), token=idp.token("gina", org={"team": value}),
             headers={"x-team-id": "red-team"})
    message = assert_rpc_error(r, status=400, code=-32600, id=51)
    assert "jwt:org/team" in message, message
    assert_nothing_forwarded(idp_gw)
