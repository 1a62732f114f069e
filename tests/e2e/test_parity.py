"""LiteLLM parity end to end: every option of LiteLLM's MCPJWTSigner that the filter gained, through a real Envoy
running the built filter, against real parts:

- RFC 7662 introspection against the REAL authorization server (node oidc-provider, tests/e2e/oauth/): opaque
  tokens, the per-worker cache and its bound (a revoked token is refused once `cache.max_seconds` have passed),
  `active: false`, tokens for another audience, and every way the endpoint can fail (wrong credentials, wrong path,
  closed port, a server that never answers, an answer that is not RFC 7662) -> 503, fail closed, the cause logged,
  never the token or the secret; jwt_authn and introspection together (a verified JWT is not introspected, an
  opaque token is, an expired JWT falls through to introspection and is refused);
- the channel token, verified by a real verifier (Envoy jwt_authn with one provider per audience) that accepts it
  in its own header and refuses it as an access token;
- the debug header's exact content; fixed scopes per route; a route with `token_header: x-mcp-gateway-token` and
  `client_authorization: forward` delivering the client's own (real, AS-issued) token and the minted one, each
  where it belongs, while the default route still strips;
- delegation: nested `act` and a refused `may_act`, from jwt_authn's payload and from introspection.

Tokens are verified with PyJWT only (never the project's code).
"""

from __future__ import annotations

import json
import re
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import jwt
import pytest
import requests
import yaml

import harness

from harness import (
    MCP_HEADERS,
    free_port,
    rfc7638_thumbprint,
    rpc,
    start_envoy,
    wasm_filter_config,
)
from mcp_helpers import kid_of, new_rsa, pem_of, stat_value
from oauth_server import OAuthServer, new_secret
from plain_envoy import JWT_AUTHN_TYPE, http_listener_config, start_envoy_config, static_cluster
from recording_upstream import RecordingUpstream

CALL = "mcp:tools/call"
WEATHER = "mcp:tools/get_weather:call"
OPAQUE_RES = "https://gateway.example.com/mcp-opaque"   # opaque access tokens for the gateway
JWT_RES = "https://gateway.example.com/mcp"             # JWT access tokens for the gateway
UPSTREAM_RES = "https://upstream-oauth.example.com/mcp"  # tokens an upstream's own AS issues for that upstream
INTROSPECTIONS = harness.METRIC_PREFIX + "introspections"
INTROSPECTION_HITS = harness.METRIC_PREFIX + "introspection_cache_hits"
ENV_ID, ENV_SECRET = "MCP_JWT_INTROSPECTION_CLIENT_ID", "MCP_JWT_INTROSPECTION_CLIENT_SECRET"


def nothing_forwarded(envoy, *upstreams):
    """Nothing reaches the upstreams (the filter's own introspection callouts, cluster `oauth_as`, do not count)."""
    return harness.nothing_forwarded(envoy, *upstreams, except_clusters=("oauth_as", "oauth_jwks"))


def tool_call(name="get_weather", id_=1):
    return rpc("tools/call", {"name": name, "arguments": {}}, id=id_)


def post(url, body, token=None, headers=None, path="/mcp"):
    h = {**MCP_HEADERS, **(headers or {})}
    if token is not None:
        h["authorization"] = f"Bearer {token}"
    return requests.post(url + path, data=json.dumps(body), headers=h, timeout=15)


def verify(token: str, issuer: str, audience: str, require=("exp", "iat", "iss", "aud", "sub", "jti")) -> dict:
    """What a relying party does: discovery -> jwks_uri -> key by kid -> signature, iss, aud, exp."""
    disco = requests.get(issuer + "/.well-known/openid-configuration", timeout=5).json()
    assert disco["issuer"] == issuer
    key = jwt.PyJWKClient(disco["jwks_uri"]).get_signing_key_from_jwt(token).key
    return jwt.decode(token, key, algorithms=["RS256"], audience=audience, issuer=issuer, leeway=5,
                      options={"require": list(require)})


def bearer(req, header="authorization"):
    value = req.header(header)
    assert value and value.startswith("Bearer "), (header, value)
    return value[len("Bearer "):]


# ----------------------------------------------------------------------------------------------------------------
# the authorization server and the gateways around it
# ----------------------------------------------------------------------------------------------------------------
@dataclass
class AS:
    server: OAuthServer
    svc: tuple
    gateway: tuple

    @property
    def port(self) -> int:
        return int(urlparse(self.server.url).port)

    @property
    def introspection_path(self) -> str:
        return urlparse(self.server.metadata()["introspection_endpoint"]).path

    def opaque(self, scope=CALL) -> str:
        tok = self.server.client_credentials(*self.svc, resource=OPAQUE_RES, scope=scope)["access_token"]
        assert tok.count(".") == 0, "expected an opaque token"
        return tok

    def jwt(self, resource=JWT_RES, scope=CALL) -> str:
        tok = self.server.client_credentials(*self.svc, resource=resource, scope=scope)["access_token"]
        assert tok.count(".") == 2, "expected a JWT"
        return tok

    def signed(self, audience=JWT_RES, **claims) -> str:
        """A JWT access token signed with the AS's own key (what only the AS could have made)."""
        now = int(time.time())
        base = {"iss": self.server.issuer, "aud": audience, "sub": "alice", "client_id": self.svc[0], "scope": CALL,
                "iat": now, "exp": now + 300, "jti": new_secret()}
        return self.server.sign({**base, **claims})


@pytest.fixture(scope="module")
def as_(tmp_path_factory):
    svc, gateway = ("svc", new_secret()), ("gateway", new_secret())
    server = OAuthServer(
        tmp_path_factory.mktemp("parity-as"),
        resources={OPAQUE_RES: {"scopes": [CALL, WEATHER], "format": "opaque"},
                   JWT_RES: {"scopes": [CALL, WEATHER]},
                   UPSTREAM_RES: {"scopes": [CALL]}},
        clients=[{"client_id": svc[0], "client_secret": svc[1]},
                 {"client_id": gateway[0], "client_secret": gateway[1], "grant_types": [], "introspect_any": True}],
    ).start()
    yield AS(server, svc, gateway)
    server.stop()


def _hcm(cfg):
    (listener,) = cfg["static_resources"]["listeners"]
    (chain,) = listener["filter_chains"]
    return chain["filters"][0]["typed_config"]


def gateway_edit(as_: AS, *, introspection_port=None, jwt_authn=None, routes=()):
    """envoy.yaml plus: a cluster `oauth_as` (the AS, or `introspection_port`), the introspection credentials in
    host_env_keys, jwt_authn (the AS's remote JWKS) before the wasm filter, and `routes`
    ((name, prefix, upstream port, route metadata)) ahead of the catch-all."""

    def edit(cfg):
        cfg["static_resources"]["clusters"].append(static_cluster("oauth_as", introspection_port or as_.port))
        if introspection_port is not None:
            cfg["static_resources"]["clusters"].append(static_cluster("oauth_jwks", as_.port))
        env = wasm_filter_config(cfg)["vm_config"]["environment_variables"]
        env["host_env_keys"] = [*env["host_env_keys"], ENV_ID, ENV_SECRET]
        hcm = _hcm(cfg)
        if jwt_authn is not None:
            filters = hcm["http_filters"]
            (wasm,) = [i for i, f in enumerate(filters) if f["name"] == "envoy.filters.http.wasm"]
            filters.insert(wasm, {"name": "envoy.filters.http.jwt_authn",
                                  "typed_config": {"@type": JWT_AUTHN_TYPE, **jwt_authn}})
        vhost = hcm["route_config"]["virtual_hosts"][0]
        for name, prefix, port, metadata in routes:
            cfg["static_resources"]["clusters"].append(static_cluster(name, port))
            route = {"name": name, "match": {"prefix": prefix}, "route": {"cluster": name, "timeout": "0s"}}
            if metadata is not None:
                route["metadata"] = {"filter_metadata": {"mcp_jwt_signer": metadata}}
            vhost["routes"].insert(0, route)

    return edit


def as_jwt_authn(as_: AS, *, cluster="oauth_as") -> dict:
    """Envoy's jwt_authn for the AS's JWT access tokens (audience JWT_RES), letting missing AND failed tokens
    through (opaque tokens fail jwt_authn) so that the filter can introspect them."""
    return {
        "providers": {"as": {
            "issuer": as_.server.issuer, "audiences": [JWT_RES],
            "remote_jwks": {"http_uri": {"uri": as_.server.metadata()["jwks_uri"], "cluster": cluster,
                                         "timeout": "5s"}, "cache_duration": "300s"},
            "forward": True, "payload_in_metadata": "jwt_payload",
        }},
        "rules": [{"match": {"prefix": "/"},
                   "requires": {"requires_any": {"requirements": [{"provider_name": "as"},
                                                                  {"allow_missing_or_failed": {}}]}}}],
    }


def introspection_config(as_: AS, **extra) -> dict:
    return {"cluster": "oauth_as", "path": as_.introspection_path, "authority": f"127.0.0.1:{as_.port}", **extra}


def creds(as_: AS, secret=None) -> dict:
    return {ENV_ID: as_.gateway[0], ENV_SECRET: secret or as_.gateway[1]}


@dataclass
class Gw:
    envoy: object
    upstream: RecordingUpstream

    @property
    def url(self):
        return self.envoy.url

    def stat(self, name):
        return stat_value(self.envoy.admin_url, name)


@pytest.fixture(scope="module")
def intro_gw(as_, tmp_path_factory):
    """Introspection for the gateway's own (opaque) tokens: audience OPAQUE_RES, results cached for 2 s."""
    up = RecordingUpstream().start()
    config = lambda url: {  # noqa: E731
        "issuer": url,
        "introspection": introspection_config(as_, audiences=[OPAQUE_RES], cache={"max_seconds": 2}),
        "identity": {"subject": ["introspection:sub", "introspection:client_id"]},
        "copy_claims": {"client_id": "introspection:client_id", "incoming_scope": "introspection:scope"},
    }
    env = start_envoy(tmp_path_factory.mktemp("intro-gw"), config, up.port, env=creds(as_),
                      extra_edit=gateway_edit(as_))
    yield Gw(env, up)
    env.stop()
    up.stop()


@pytest.fixture
def intro(intro_gw):
    intro_gw.upstream.clear()
    return intro_gw


# ----------------------------------------------------------------------------------------------------------------
# 1. RFC 7662 introspection against the real authorization server
# ----------------------------------------------------------------------------------------------------------------
def test_an_opaque_token_is_introspected_and_never_forwarded(intro, as_):
    token = as_.opaque(f"{CALL} {WEATHER}")
    calls, hits = intro.stat(INTROSPECTIONS), intro.stat(INTROSPECTION_HITS)
    r = post(intro.url, tool_call(), token)
    assert r.status_code == 200, (r.status_code, r.text, intro.envoy.log_tail())
    (req,) = intro.upstream.wait_for(1)
    claims = verify(bearer(req), intro.url, "mcp")
    # oidc-provider's client-credentials introspection has no `sub`: the client id names the caller.
    assert (claims["sub"], claims["client_id"], claims["incoming_scope"]) == ("svc", "svc", f"{CALL} {WEATHER}")
    assert claims["scope"] == f"{CALL} {WEATHER}"
    assert all(token not in v for _, v in req.headers), "the client's token reached the upstream"
    assert intro.stat(INTROSPECTIONS) == calls + 1
    # The same token again: answered from this worker's cache, no second introspection.
    assert post(intro.url, tool_call(id_=2), token).status_code == 200
    assert (intro.stat(INTROSPECTIONS), intro.stat(INTROSPECTION_HITS)) == (calls + 1, hits + 1)


def test_a_revoked_token_is_refused_once_the_cache_entry_ends(intro, as_):
    token = as_.opaque()
    assert post(intro.url, tool_call(), token).status_code == 200
    assert as_.server.revoke(token, as_.svc).status_code == 200
    # Within cache.max_seconds (2 s) the cached result still stands: the documented revocation delay.
    assert post(intro.url, tool_call(), token).status_code == 200
    time.sleep(2.2)
    with nothing_forwarded(intro.envoy, intro.upstream):
        r = post(intro.url, tool_call(id_="x-9"), token)
    assert r.status_code == 401, r.text
    body = r.json()
    assert (body["jsonrpc"], body["id"], body["error"]["code"]) == ("2.0", "x-9", -32001)
    assert r.headers["www-authenticate"] == \
        'Bearer error="invalid_token", error_description="the access token is not active"'


@pytest.mark.parametrize("case", ["garbage", "other audience", "malformed", "expired jwt"])
def test_tokens_the_authorization_server_does_not_vouch_for_are_401(intro, as_, case):
    calls = intro.stat(INTROSPECTIONS)
    token = {
        "garbage": "definitely-not-an-issued-token",
        # active, but issued for another resource: introspection.audiences refuses it
        "other audience": as_.jwt(resource=UPSTREAM_RES),
        "malformed": "two words",
        "expired jwt": as_.signed(audience=OPAQUE_RES, iat=int(time.time()) - 7200, exp=int(time.time()) - 3600),
    }[case]
    with nothing_forwarded(intro.envoy, intro.upstream):
        r = post(intro.url, tool_call(), token)
    assert r.status_code == 401, r.text
    assert r.json()["error"]["code"] == -32001
    assert r.headers["www-authenticate"].startswith('Bearer error="invalid_token"'), r.headers
    # A malformed token is refused without asking the AS; the others were asked.
    assert intro.stat(INTROSPECTIONS) == calls + (0 if case == "malformed" else 1)


def test_no_token_means_no_introspection(intro):
    calls = intro.stat(INTROSPECTIONS)
    r = post(intro.url, tool_call(), None)
    assert r.status_code == 200
    (req,) = intro.upstream.wait_for(1)
    assert verify(bearer(req), intro.url, "mcp")["sub"] == "mcp-gateway"
    assert intro.stat(INTROSPECTIONS) == calls


def test_neither_the_token_nor_the_secret_reaches_a_log(intro, as_):
    token = as_.opaque()
    post(intro.url, tool_call(), token)
    post(intro.url, tool_call(), "definitely-not-an-issued-token")
    log = intro.envoy.log()
    assert token not in log and as_.gateway[1] not in log and "definitely-not-an-issued" not in log
    assert as_.gateway[1] not in as_.server.log()


class Silent:
    """A TCP server that accepts connections and never answers (an authorization server that hangs)."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.conns = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.conns.append(conn)

    def stop(self):
        self.sock.close()
        for c in self.conns:
            c.close()


@pytest.mark.parametrize("failure", ["wrong secret", "wrong path", "closed port", "hangs", "no such cluster",
                                     "not rfc 7662"])
def test_an_unusable_introspection_endpoint_fails_closed(as_, tmp_path, failure):
    up, silent, echo = RecordingUpstream().start(), None, None
    settings, port, secret = introspection_config(as_), None, None
    if failure == "wrong secret":
        secret = "not-the-secret"
    elif failure == "wrong path":
        settings["path"] = "/no/such/endpoint"
    elif failure == "closed port":
        port = free_port()
    elif failure == "hangs":
        silent = Silent()
        port, settings["timeout_ms"] = silent.port, 400
    elif failure == "no such cluster":
        settings["cluster"] = "no_such_cluster"
    else:
        echo = RecordingUpstream().start()  # answers 200 with a JSON echo of the request: not an RFC 7662 answer
        port = echo.port
    env = None
    try:
        env = start_envoy(tmp_path / "gw", {"introspection": settings}, up.port, env=creds(as_, secret),
                          extra_edit=gateway_edit(as_, introspection_port=port))
        token = as_.opaque()
        t0 = time.monotonic()
        with nothing_forwarded(env, up):
            r = post(env.url, tool_call(), token)
        elapsed = time.monotonic() - t0
        assert r.status_code == 503, (r.status_code, r.text)
        assert r.json()["error"]["code"] == -32603
        assert "retry" in r.json()["error"]["message"]
        # What Envoy really does (verified here): a cluster it cannot connect to answers the callout with its own
        # 503, a timeout with its own 504; only an unknown cluster leaves the callout without any answer.
        cause = {"wrong secret": "the endpoint answered HTTP 401 (check the gateway's client credentials)",
                 "wrong path": "the endpoint answered HTTP 404 (check introspection.path",
                 "closed port": "the endpoint answered HTTP 503 (the endpoint, or Envoy for a cluster it cannot",
                 "hangs": "the endpoint answered HTTP 504 (no answer within introspection.timeout_ms)",
                 "no such cluster": "no answer from cluster no_such_cluster (an unknown cluster",
                 "not rfc 7662": "the answer has no boolean `active` (not an RFC 7662 response)"}[failure]
        deadline = time.monotonic() + 5
        while cause not in env.log() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert f"token introspection failed, request refused (fail closed): {cause}" in env.log(), env.log_tail()
        assert "refused reason=introspection_unavailable status=503" in env.log()
        assert token not in env.log() and as_.gateway[1] not in env.log()
        if failure == "hangs":
            assert 0.35 < elapsed < 5, elapsed
    finally:
        if env is not None:
            env.stop()
        for part in (up, echo, silent):
            if part is not None:
                part.stop()


def test_introspection_credentials_must_be_in_the_environment(as_, tmp_path, envoy_expect_failure):
    res = envoy_expect_failure({"introspection": introspection_config(as_)}, env={ENV_ID: "gateway"},
                               extra_edit=gateway_edit(as_))
    log = res.log()
    # Envoy refuses the plugin (fail closed): no request is ever signed without the configured check.
    assert "introspection.client_secret_env" in log and ENV_SECRET in log, log[-2000:]
    if not res.exited:
        r = post(res.envoy.url, tool_call(), "x")
        assert r.status_code >= 500


@pytest.fixture(scope="module")
def combo_gw(as_, tmp_path_factory):
    """jwt_authn (the AS's JWTs, failures allowed through) + introspection (everything jwt_authn did not verify)."""
    up = RecordingUpstream().start()
    config = lambda url: {  # noqa: E731
        "issuer": url,
        "introspection": introspection_config(as_),
        "identity": {"subject": ["jwt:sub", "introspection:sub", "introspection:client_id"]},
        "copy_claims": {"verified_by": "literal:jwt_authn-or-introspection"},
    }
    env = start_envoy(tmp_path_factory.mktemp("combo-gw"), config, up.port, env=creds(as_),
                      extra_edit=gateway_edit(as_, jwt_authn=as_jwt_authn(as_)))
    yield Gw(env, up)
    env.stop()
    up.stop()


def test_jwt_authn_and_introspection_together(combo_gw, as_):
    gw = combo_gw
    gw.upstream.clear()
    calls = gw.stat(INTROSPECTIONS)
    # A JWT jwt_authn verified: its payload is the identity, no introspection.
    r = post(gw.url, tool_call(), as_.jwt())
    assert r.status_code == 200, (r.text, gw.envoy.log_tail())
    assert gw.stat(INTROSPECTIONS) == calls
    # An opaque token fails jwt_authn (allowed through) and is introspected.
    r = post(gw.url, tool_call(), as_.opaque())
    assert r.status_code == 200, r.text
    assert gw.stat(INTROSPECTIONS) == calls + 1
    # An expired JWT fails jwt_authn too, and the AS says it is not active: 401.
    expired = as_.signed(iat=int(time.time()) - 7200, exp=int(time.time()) - 3600)
    with nothing_forwarded(gw.envoy, gw.upstream):
        r = post(gw.url, tool_call(), expired)
    assert r.status_code == 401 and r.json()["error"]["code"] == -32001, r.text
    assert gw.stat(INTROSPECTIONS) == calls + 2
    reqs = gw.upstream.wait_for(2)
    assert [verify(bearer(q), gw.url, "mcp")["sub"] for q in reqs] == ["svc", "svc"]


# ----------------------------------------------------------------------------------------------------------------
# 2. the channel token, checked by a real verifier
# ----------------------------------------------------------------------------------------------------------------
CHANNEL_AUD = "mcp-transport"


@dataclass
class ChannelChain:
    gateway: object
    verifier: object
    recorder: RecordingUpstream
    issuer: str


def verifier_config(issuer: str, gateway_port: int, recorder_port: int):
    """Envoy jwt_authn with one provider per token: access tokens (aud mcp) from Authorization, channel tokens
    (aud mcp-transport) from x-mcp-channel-token; every request needs both."""

    def provider(audience, header):
        return {"issuer": issuer, "audiences": [audience],
                "remote_jwks": {"http_uri": {"uri": issuer + "/.well-known/jwks.json", "cluster": "gateway_jwks",
                                             "timeout": "5s"}, "cache_duration": "300s"},
                "from_headers": [{"name": header, "value_prefix": "Bearer "}], "forward": True}

    def make(listener_port, admin_port):
        jwt_authn = {"name": "envoy.filters.http.jwt_authn", "typed_config": {
            "@type": JWT_AUTHN_TYPE,
            "providers": {"access": provider("mcp", "authorization"),
                          "channel": provider(CHANNEL_AUD, "x-mcp-channel-token")},
            "rules": [{"match": {"path": "/healthz"}},
                      {"match": {"prefix": "/"}, "requires": {"requires_all": {"requirements": [
                          {"provider_name": "access"}, {"provider_name": "channel"}]}}}]}}
        routes = [{"match": {"path": "/healthz"}, "direct_response": {"status": 200, "body": {"inline_string": "ok"}}},
                  {"match": {"prefix": "/"}, "route": {"cluster": "recorder"}}]
        return http_listener_config(listener_port=listener_port, admin_port=admin_port, http_filters=[jwt_authn],
                                    routes=routes, clusters=[static_cluster("recorder", recorder_port),
                                                             static_cluster("gateway_jwks", gateway_port)])

    return make


@pytest.fixture(scope="module")
def channel(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("channel")
    gateway_port = free_port()
    issuer = f"http://127.0.0.1:{gateway_port}"
    recorder = RecordingUpstream().start()
    verifier = gateway = None
    try:
        verifier = start_envoy_config(workdir / "verifier", verifier_config(issuer, gateway_port, recorder.port),
                                      ready_path="/healthz")
        gateway = start_envoy(workdir / "gateway", {
            "issuer": issuer, "identity": {"subject": ["header:x-user-id"]},
            "channel_token": {"audience": CHANNEL_AUD, "ttl_seconds": 60}},
            verifier.listener_port, listener_port=gateway_port)
        yield ChannelChain(gateway, verifier, recorder, issuer)
    finally:
        for e in (gateway, verifier):
            if e is not None:
                e.stop()
        recorder.stop()


def test_the_channel_token_is_accepted_in_its_header_and_refused_as_an_access_token(channel):
    c = channel
    c.recorder.clear()
    r = post(c.gateway.url, tool_call(), headers={"x-user-id": "alice"})
    assert r.status_code == 200, (r.status_code, r.text, c.verifier.log_tail())
    (req,) = c.recorder.wait_for(1)
    access, chan = bearer(req), bearer(req, "x-mcp-channel-token")
    a = verify(access, c.issuer, "mcp")
    ch = verify(chan, c.issuer, CHANNEL_AUD)
    assert {k: a[k] for k in ("sub", "act", "scope", "iss")} == {k: ch[k] for k in ("sub", "act", "scope", "iss")}
    assert (a["exp"] - a["iat"], ch["exp"] - ch["iat"]) == (300, 60)
    assert a["jti"] != ch["jti"]
    with pytest.raises(jwt.InvalidAudienceError):
        verify(chan, c.issuer, "mcp")
    # The verifier itself: swapped, the channel token is refused as an access token (and the access token as a
    # channel token); each in its own header, both pass.
    body = json.dumps(tool_call())

    def direct(authorization, channel_header):
        return requests.post(c.verifier.url + "/mcp", data=body, timeout=10,
                             headers={**MCP_HEADERS, "authorization": f"Bearer {authorization}",
                                      "x-mcp-channel-token": f"Bearer {channel_header}"})

    c.recorder.clear()
    assert direct(access, chan).status_code == 200
    for a_tok, c_tok in [(chan, access), (chan, chan), (access, access)]:
        r = direct(a_tok, c_tok)
        assert r.status_code == 403 and "Audiences in Jwt are not allowed" in r.text, (r.status_code, r.text)
    assert len(c.recorder.requests) == 1


# ----------------------------------------------------------------------------------------------------------------
# 3-5. debug header, fixed scopes per route, token_header + client_authorization per route
# ----------------------------------------------------------------------------------------------------------------
@dataclass
class RoutesGw:
    envoy: object
    default: RecordingUpstream
    upstream_oauth: RecordingUpstream
    fixed: RecordingUpstream
    key: object

    @property
    def url(self):
        return self.envoy.url


FIXED = ["weather:read", "weather:forecast"]


@pytest.fixture(scope="module")
def routes_gw(as_, tmp_path_factory):
    default, upstream_oauth, fixed = (RecordingUpstream().start() for _ in range(3))
    key = new_rsa()
    routes = [
        ("upstream_oauth", "/upstream-oauth/", upstream_oauth.port,
         {"token_header": "x-mcp-gateway-token", "client_authorization": "forward"}),
        ("fixed", "/fixed/", fixed.port, {"fixed_scopes": FIXED}),
    ]
    config = lambda url: {"issuer": url, "identity": {"subject": ["header:x-user-id"]},  # noqa: E731
                          "debug_header": True}
    env = start_envoy(tmp_path_factory.mktemp("routes-gw"), config, default.port,
                      env={"MCP_JWT_SIGNING_KEY": pem_of(key)}, extra_edit=gateway_edit(as_, routes=routes))
    yield RoutesGw(env, default, upstream_oauth, fixed, key)
    env.stop()
    for u in (default, upstream_oauth, fixed):
        u.stop()


@pytest.fixture
def rgw(routes_gw):
    for u in (routes_gw.default, routes_gw.upstream_oauth, routes_gw.fixed):
        u.clear()
    return routes_gw


def test_the_debug_header_has_the_exact_litellm_format(rgw):
    r = post(rgw.url, tool_call(), headers={"x-user-id": "alice"})
    assert r.status_code == 200, r.text
    (req,) = rgw.default.wait_for(1)
    token = bearer(req)
    claims = verify(token, rgw.url, "mcp")
    kid = kid_of(rgw.key)
    assert kid == jwt.get_unverified_header(token)["kid"]
    assert req.header("x-mcp-jwt-debug") == (
        f"v=1; kid={kid}; sub=alice; iss={rgw.url}; exp={claims['exp']}; "
        f"scope=mcp:tools/call mcp:tools/get_weather:call")
    assert token not in req.header("x-mcp-jwt-debug")
    # A long scope is cut at 80 characters, the last three `...`.
    batch = [tool_call(f"tool_{i}", i) for i in range(6)]
    rgw.default.clear()
    assert post(rgw.url, batch, headers={"x-user-id": "alice"}).status_code == 200
    (req,) = rgw.default.wait_for(1)
    scope = verify(bearer(req), rgw.url, "mcp")["scope"]
    assert len(scope) > 80
    assert req.header("x-mcp-jwt-debug").split("; scope=", 1)[1] == scope[:77] + "..."
    # Sent upstream only: never in the response to the client.
    assert "x-mcp-jwt-debug" not in {k.lower() for k in r.headers}


def test_fixed_scopes_per_route(rgw):
    assert post(rgw.url, tool_call(), headers={"x-user-id": "alice"}, path="/fixed/mcp").status_code == 200
    (req,) = rgw.fixed.wait_for(1)
    assert verify(bearer(req), rgw.url, "mcp")["scope"] == " ".join(FIXED)
    assert post(rgw.url, tool_call(), headers={"x-user-id": "alice"}).status_code == 200
    (req,) = rgw.default.wait_for(1)
    assert verify(bearer(req), rgw.url, "mcp")["scope"] == f"{CALL} {WEATHER}"


def test_a_forwarding_route_delivers_both_tokens_and_the_default_route_strips(rgw, as_):
    # The client holds a token its upstream's own AS issued for that upstream (RFC 8707 resource UPSTREAM_RES).
    own = as_.jwt(resource=UPSTREAM_RES)
    r = post(rgw.url, tool_call(), own, headers={"x-user-id": "alice", "x-mcp-gateway-token": "Bearer forged"},
             path="/upstream-oauth/mcp")
    assert r.status_code == 200, r.text
    (req,) = rgw.upstream_oauth.wait_for(1)
    # The upstream receives its own token untouched, and verifies it against its own AS ...
    assert req.header("authorization") == f"Bearer {own}"
    key = jwt.PyJWKClient(as_.server.metadata()["jwks_uri"]).get_signing_key_from_jwt(own).key
    assert jwt.decode(own, key, algorithms=["RS256"], audience=UPSTREAM_RES, issuer=as_.server.issuer)["sub"] == "svc"
    # ... and the gateway's token beside it (the client's forged copy is gone).
    minted = bearer(req, "x-mcp-gateway-token")
    assert verify(minted, rgw.url, "mcp")["sub"] == "alice"
    # The default route strips the client's token: the minted one replaces it.
    r = post(rgw.url, tool_call(), own, headers={"x-user-id": "alice"})
    assert r.status_code == 200
    (req,) = rgw.default.wait_for(1)
    assert own not in req.header("authorization")
    assert verify(bearer(req), rgw.url, "mcp")["sub"] == "alice"
    assert req.header("x-mcp-gateway-token") is None


# ----------------------------------------------------------------------------------------------------------------
# 6. delegation chains
# ----------------------------------------------------------------------------------------------------------------
def test_nested_act_and_refused_may_act_from_jwt_authn(combo_gw, as_):
    gw = combo_gw
    gw.upstream.clear()
    token = as_.signed(act={"sub": "agent-7", "act": {"sub": "orchestrator"}})
    r = post(gw.url, tool_call(), token)
    assert r.status_code == 200, r.text
    (req,) = gw.upstream.wait_for(1)
    claims = verify(bearer(req), gw.url, "mcp")
    assert claims["sub"] == "alice"
    assert claims["act"] == {"sub": "mcp-gateway", "act": {"sub": "agent-7", "act": {"sub": "orchestrator"}}}
    with nothing_forwarded(gw.envoy, gw.upstream):
        r = post(gw.url, tool_call(id_=5), as_.signed(may_act={"sub": "another-gateway"}))
    assert r.status_code == 403, r.text
    assert (r.json()["id"], r.json()["error"]["code"]) == (5, -32003)
    assert "may_act" in r.json()["error"]["message"]
    # may_act naming this gateway's actor is fine.
    assert post(gw.url, tool_call(), as_.signed(may_act={"sub": "mcp-gateway"})).status_code == 200


def test_nested_act_from_introspection(intro, as_):
    token = as_.signed(audience=OPAQUE_RES, act={"sub": "agent-1"})
    r = post(intro.url, tool_call(), token)
    assert r.status_code == 200, r.text
    (req,) = intro.upstream.wait_for(1)
    assert verify(bearer(req), intro.url, "mcp")["act"] == {"sub": "mcp-gateway", "act": {"sub": "agent-1"}}
    with nothing_forwarded(intro.envoy, intro.upstream):
        r = post(intro.url, tool_call(), as_.signed(audience=OPAQUE_RES, may_act={"sub": "elsewhere"}))
    assert r.status_code == 403 and r.json()["error"]["code"] == -32003, r.text


# ----------------------------------------------------------------------------------------------------------------
# 7. docs/coming-from-litellm.md: every example, loaded into the real filter in a real Envoy
# ----------------------------------------------------------------------------------------------------------------
DOC = Path(__file__).resolve().parents[2] / "docs" / "coming-from-litellm.md"
FENCE = re.compile(r"^```(?:json|yaml) (plugin-config|jwt-authn|route-metadata)((?: [A-Za-z_-]+=\S+)*)\n(.*?)^```$",
                   re.M | re.S)


def doc_blocks() -> dict:
    found = {"plugin-config": {}, "jwt-authn": {}, "route-metadata": {}}
    for kind, attrs, text in FENCE.findall(DOC.read_text()):
        attrs = dict(a.split("=", 1) for a in attrs.split())
        found[kind][attrs["id"]] = (attrs, text)
    return found


@dataclass
class DocCtx:
    envoy: object
    upstream: RecordingUpstream
    as_: AS
    key: object

    @property
    def url(self):
        return self.envoy.url

    def call(self, body=None, token=None, headers=None, status=200):
        self.upstream.clear()
        r = post(self.url, body or tool_call(), token, headers)
        assert r.status_code == status, (r.status_code, r.text, self.envoy.log_tail())
        return r, (self.upstream.wait_for(1)[0] if status == 200 else None)

    def claims(self, req, audience="mcp", header="authorization", require=("exp", "iat", "iss", "aud", "sub", "jti")):
        return verify(bearer(req, header), self.url, audience, require)


def ex_issuer(c):
    _, req = c.call()
    assert c.claims(req)["iss"] == c.url  # the example's https://gw.example.com, here the listener


def ex_audience(c):
    _, req = c.call()
    claims = c.claims(req, audience="mcp-servers")
    assert claims["exp"] - claims["iat"] == 120


def ex_signing_key(c):
    _, req = c.call()
    assert jwt.get_unverified_header(bearer(req))["kid"] == kid_of(c.key)
    c.claims(req)


def ex_every_request(c):
    for body, scope in [(rpc("tools/list"), "mcp:tools/list"), (tool_call(), f"{CALL} {WEATHER}"),
                        (rpc("resources/read", {"uri": "file:///a"}), "mcp:resources/read")]:
        _, req = c.call(body)
        assert c.claims(req)["scope"] == scope
    c.upstream.clear()
    r = requests.get(c.url + "/mcp", headers={"accept": "text/event-stream"}, timeout=10)
    assert r.status_code == 200
    assert c.claims(c.upstream.wait_for(1)[0])["scope"] == "mcp:stream"


def ex_verify(c):
    idp_token = c.as_.signed(email="alice@example.com")
    _, req = c.call(token=idp_token)
    claims = c.claims(req)
    assert (claims["sub"], claims["email"]) == ("alice", "alice@example.com")
    assert all(idp_token not in v for _, v in req.headers), "the IdP's token reached the MCP server"
    c.call(token=None, status=401)                                      # jwt_authn: a token is required
    c.call(token=c.as_.jwt(resource=UPSTREAM_RES), status=403)          # another audience
    # expired (beyond jwt_authn's default clock skew of 60 s)
    c.call(token=c.as_.signed(iat=int(time.time()) - 7200, exp=int(time.time()) - 3600), status=401)


def ex_introspection(c):
    _, req = c.call(token=c.as_.opaque())
    assert c.claims(req)["sub"] == "svc"
    r, _ = c.call(token="not-issued-by-anyone", status=401)
    assert r.headers["www-authenticate"].startswith('Bearer error="invalid_token"')


def ex_end_user(c):
    headers = {"x-user-id": "alice", "x-user-email": "alice@example.com", "x-team-id": "team-1",
               "x-end-user-id": "customer-42"}
    _, req = c.call(headers=headers)
    claims = c.claims(req)
    assert (claims["sub"], claims["email"], claims["act"], claims["end_user_id"]) == \
        ("alice", "alice@example.com", {"sub": "team-1"}, "customer-42")
    assert req.header("x-user-id") is None  # identity headers do not go upstream
    _, req = c.call(headers={"x-user-id": "alice"})
    assert c.claims(req)["act"] == {"sub": "litellm-proxy"}
    _, req = c.call()
    assert c.claims(req)["sub"] == "litellm-proxy"


def ex_add_claims(c):
    _, req = c.call()
    assert c.claims(req)["deployment_id"] == "prod-001"


def ex_set_claims(c):
    _, req = c.call()
    claims = c.claims(req, audience="https://weather.example.com/mcp")
    assert (claims["env"], claims["aud"]) == ("production", ["mcp", "https://weather.example.com/mcp"])


def ex_remove_claims(c):
    _, req = c.call()
    assert "nbf" not in c.claims(req)


def ex_required_claims(c):
    r, _ = c.call(token=c.as_.signed(), status=403)
    assert r.json()["error"]["code"] == -32003 and "email" in r.json()["error"]["message"]
    _, req = c.call(token=c.as_.signed(email="alice@example.com"))
    assert c.claims(req)["sub"] == "alice"


def ex_optional_claims(c):
    _, req = c.call(token=c.as_.signed(groups=["admins", "devs"]))
    claims = c.claims(req)
    assert claims["groups"] == ["admins", "devs"] and "roles" not in claims


def ex_channel_token(c):
    _, req = c.call()
    access, channel = c.claims(req), c.claims(req, audience="bedrock-gateway", header="x-mcp-channel-token")
    assert (channel["exp"] - channel["iat"], access["sub"], access["scope"]) == (60, channel["sub"], channel["scope"])
    with pytest.raises(jwt.InvalidAudienceError):
        verify(bearer(req, "x-mcp-channel-token"), c.url, "mcp")


def ex_debug_header(c):
    _, req = c.call()
    claims = c.claims(req)
    kid = jwt.get_unverified_header(bearer(req))["kid"]
    assert req.header("x-litellm-mcp-debug") == \
        f"v=1; kid={kid}; sub=mcp-gateway; iss={c.url}; exp={claims['exp']}; scope={CALL} {WEATHER}"


def ex_fixed_scopes(c):
    _, req = c.call()
    assert c.claims(req)["scope"] == "mcp:tools/call mcp:tools/list"


def ex_fixed_scopes_route(c):
    _, req = c.call()
    assert c.claims(req)["scope"] == "weather:read weather:forecast"


def ex_upstream_oauth(c):
    own = c.as_.jwt(resource=UPSTREAM_RES)
    _, req = c.call(token=own, headers={"x-mcp-gateway-token": "Bearer forged"})
    assert req.header("authorization") == f"Bearer {own}"
    assert c.claims(req, header="x-mcp-gateway-token")["scope"] == f"{CALL} {WEATHER}"


def ex_delegation(c):
    _, req = c.call(token=c.as_.signed(act={"sub": "agent-1"}))
    assert c.claims(req)["act"] == {"sub": "mcp-gateway", "act": {"sub": "agent-1"}}
    r, _ = c.call(token=c.as_.signed(may_act={"sub": "someone-else"}), status=403)
    assert r.json()["error"]["code"] == -32003


DOC_EXPECTATIONS = {name[3:]: fn for name, fn in dict(globals()).items() if name.startswith("ex_")}


def test_every_doc_example_has_an_expectation():
    assert sorted(doc_blocks()["plugin-config"]) == sorted(DOC_EXPECTATIONS)


@pytest.mark.parametrize("example", sorted(DOC_EXPECTATIONS))
def test_litellm_doc_example(as_, tmp_path, example):
    blocks = doc_blocks()
    attrs, text = blocks["plugin-config"][example]
    issuer_host = "https://idp.example.com"
    jwt_authn = None
    if "jwt-authn" in attrs:
        _, yaml_text = blocks["jwt-authn"][attrs["jwt-authn"]]
        jwt_authn = yaml.safe_load(yaml_text.replace(issuer_host, as_.server.issuer))
        (provider,) = jwt_authn["providers"].values()
        assert provider["remote_jwks"]["http_uri"]["uri"] == as_.server.metadata()["jwks_uri"]
    route_metadata = yaml.safe_load(blocks["route-metadata"][attrs["route"]][1]) if "route" in attrs else None
    env, key = {}, None
    if attrs.get("env") == "MCP_JWT_SIGNING_KEY":
        key = new_rsa()
        env["MCP_JWT_SIGNING_KEY"] = pem_of(key)
    elif attrs.get("env") == "introspection":
        env.update(creds(as_))
    base = gateway_edit(as_, jwt_authn=jwt_authn)

    def edit(cfg):
        base(cfg)
        cfg["static_resources"]["clusters"].append(static_cluster("idp", as_.port))
        if route_metadata is not None:
            _hcm(cfg)["route_config"]["virtual_hosts"][0]["routes"][-1]["metadata"] = route_metadata

    up = RecordingUpstream().start()
    envoy = None
    try:
        config = lambda url: json.loads(text.replace("https://gw.example.com", url))  # noqa: E731
        envoy = start_envoy(tmp_path / "gw", config, up.port, env=env, extra_edit=edit)
        DOC_EXPECTATIONS[example](DocCtx(envoy, up, as_, key))
    finally:
        if envoy is not None:
            envoy.stop()
        up.stop()
