"""The real OAuth 2.1 authorization server used by the MCP authorization tests (node oidc-provider,
tests/e2e/oauth/server.mjs) proven on its own, with real relying parties:

- client credentials + RFC 8707 resource -> an RFC 9068 JWT verified by PyJWT through the AS's discovery + JWKS;
- Envoy's own jwt_authn (remote_jwks fetched from the AS over HTTP) accepts the AS's tokens and refuses forged,
  expired, other-issuer and other-audience ones;
- RFC 7662 introspection with client authentication, for opaque tokens (the only way to validate them) and JWTs;
- authorization code + PKCE completed without a browser;
- the MCP Python SDK's OAuth clients (mcp.client.auth) completing 401 -> RFC 9728 metadata -> AS -> token against a
  small stand-in protected resource, including the 403 insufficient_scope step-up.

No wasm filter is involved: these tests pass today and fail only if the parts themselves break.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

import anyio
import httpx2
import jwt
import pytest
import requests
from cryptography.hazmat.primitives.asymmetric import rsa
from mcp.client.auth import OAuthClientProvider
from mcp.client.auth.extensions.client_credentials import ClientCredentialsOAuthProvider
from mcp.shared.auth import AuthorizationCodeResult, OAuthClientMetadata

from harness import free_port
from mcp_helpers import MemoryStorage
from oauth_server import new_secret
from plain_envoy import JWT_AUTHN_TYPE, http_listener_config, start_envoy_config, static_cluster
from recording_upstream import RecordingUpstream

# No filter is loaded here (the authorization server and Envoy's jwt_authn only): run once, in the wasm run.
pytestmark = pytest.mark.no_filter

CALL = "mcp:tools/call"
WEATHER = "mcp:tools/get_weather:call"


def b64_claims(token: str) -> dict:
    return jwt.decode(token, options={"verify_signature": False})


def verify_via_discovery(token: str, issuer: str, audience: str, algorithms=("RS256", "ES256")) -> dict:
    """What a relying party does: discovery -> jwks_uri -> key by kid -> signature, iss, aud, exp."""
    disco = requests.get(issuer + "/.well-known/openid-configuration", timeout=5).json()
    assert disco["issuer"] == issuer
    signing_key = jwt.PyJWKClient(disco["jwks_uri"]).get_signing_key_from_jwt(token)
    return jwt.decode(token, signing_key.key, algorithms=list(algorithms), audience=audience, issuer=issuer,
                      options={"require": ["exp", "iat", "iss", "aud", "sub", "jti"]})


@dataclass
class Setup:
    server: object
    resource: str        # JWT (RS256) resource
    resource_es: str     # JWT (ES256) resource
    opaque: str          # opaque-token resource
    svc: tuple           # (client_id, secret): client credentials, every resource
    narrow: tuple        # client credentials, only `resource`, only mcp:tools/call
    gateway: tuple       # may introspect every client's tokens, gets no tokens itself
    public_client: str   # authorization code + PKCE, no secret
    redirect_uri: str


@pytest.fixture
def setup(oauth_server):
    port = free_port()
    resource = f"http://127.0.0.1:{port}/mcp"
    resource_es = f"http://127.0.0.1:{port}/es/mcp"
    opaque = f"http://127.0.0.1:{port}/opaque/mcp"
    redirect_uri = f"http://127.0.0.1:{free_port()}/callback"
    svc, narrow, gateway = ("svc", new_secret()), ("narrow", new_secret()), ("gateway", new_secret())
    server = oauth_server(
        resources={
            resource: {"scopes": [CALL, WEATHER, "mcp:tools/whoami:call"]},
            resource_es: {"scopes": [CALL], "alg": "ES256"},
            opaque: {"scopes": [CALL, WEATHER], "format": "opaque"},
        },
        clients=[
            {"client_id": svc[0], "client_secret": svc[1]},
            {"client_id": narrow[0], "client_secret": narrow[1], "resources": [resource], "scopes": [CALL]},
            {"client_id": gateway[0], "client_secret": gateway[1], "grant_types": [], "introspect_any": True},
            {"client_id": "public-app", "grant_types": ["authorization_code", "refresh_token"],
             "redirect_uris": [redirect_uri], "token_endpoint_auth_method": "none", "application_type": "native"},
        ],
        users={"alice": {"email": "alice@example.com"}, "bob": {"email": "bob@example.com"}},
    )
    return Setup(server, resource, resource_es, opaque, svc, narrow, gateway, "public-app", redirect_uri)


# ----------------------------------------------------------------------------------------------------------------
# metadata and client credentials
# ----------------------------------------------------------------------------------------------------------------
def test_metadata_documents(setup):
    """RFC 8414 and OIDC discovery both answer, with the endpoints the MCP SDK and the gateway use."""
    s = setup.server
    oauth = s.metadata("oauth-authorization-server")
    oidc = s.metadata("openid-configuration")
    for doc in (oauth, oidc):
        assert doc["issuer"] == s.issuer
        for k in ("authorization_endpoint", "token_endpoint", "jwks_uri", "introspection_endpoint",
                  "revocation_endpoint"):
            assert doc[k].startswith(s.url + "/"), (k, doc[k])
        assert doc["code_challenge_methods_supported"] == ["S256"]
        assert {"authorization_code", "client_credentials", "refresh_token"} <= set(doc["grant_types_supported"])
        assert doc["authorization_response_iss_parameter_supported"] is True
    assert "registration_endpoint" not in oauth  # registration is off unless asked for
    assert {k["alg"] for k in s.jwks()["keys"]} == {"RS256", "ES256"}
    assert all("d" not in k for k in s.jwks()["keys"]), "private key material in the JWKS"


@pytest.mark.parametrize("which,alg", [("resource", "RS256"), ("resource_es", "ES256")])
def test_client_credentials_jwt_verified_with_jwks(setup, which, alg):
    s = setup.server
    resource = getattr(setup, which)
    tok = s.client_credentials(*setup.svc, resource=resource, scope=f"{CALL} {WEATHER} not-a-resource-scope")
    assert tok["token_type"] == "Bearer" and tok["expires_in"] == 300
    header = jwt.get_unverified_header(tok["access_token"])
    assert header["alg"] == alg and header["typ"] == "at+jwt" and header["kid"] == s.kids[alg]
    claims = verify_via_discovery(tok["access_token"], s.issuer, resource, algorithms=[alg])
    assert claims["aud"] == resource
    assert claims["sub"] == claims["client_id"] == "svc"
    # Only scopes the resource defines are granted; the token response says which.
    expected = f"{CALL} {WEATHER}" if which == "resource" else CALL
    assert claims["scope"] == tok["scope"] == expected
    assert claims["exp"] - claims["iat"] == 300
    with pytest.raises(jwt.InvalidAudienceError):
        verify_via_discovery(tok["access_token"], s.issuer, setup.opaque)


def test_client_credentials_refusals(setup):
    s = setup.server
    # a resource nobody configured
    r = s.token_request({"grant_type": "client_credentials", "resource": "http://elsewhere.example/mcp"}, setup.svc)
    assert (r.status_code, r.json()["error"]) == (400, "invalid_target")
    # a resource this client may not ask for
    r = s.token_request({"grant_type": "client_credentials", "resource": setup.opaque}, setup.narrow)
    assert (r.status_code, r.json()["error"]) == (400, "invalid_target")
    # a scope this client may not get is left out (not an error: RFC 6749 section 3.3)
    tok = s.client_credentials(*setup.narrow, resource=setup.resource, scope=f"{CALL} {WEATHER}")
    assert b64_claims(tok["access_token"])["scope"] == CALL == tok["scope"]
    # a wrong secret
    r = s.token_request({"grant_type": "client_credentials", "resource": setup.resource}, (setup.svc[0], "wrong"))
    assert (r.status_code, r.json()["error"]) == (401, "invalid_client")
    assert setup.svc[1] not in s.log() and setup.gateway[1] not in s.log(), "a client secret reached the log"


# ----------------------------------------------------------------------------------------------------------------
# Envoy jwt_authn with the AS's JWKS
# ----------------------------------------------------------------------------------------------------------------
def jwt_authn_envoy(tmp_path, server, audience: str, upstream_port: int):
    as_port = int(urlparse(server.url).port)
    jwks_uri = server.metadata()["jwks_uri"]

    def make(listener_port, admin_port):
        jwt_authn = {
            "name": "envoy.filters.http.jwt_authn",
            "typed_config": {
                "@type": JWT_AUTHN_TYPE,
                "providers": {"as": {
                    "issuer": server.issuer, "audiences": [audience],
                    "remote_jwks": {"http_uri": {"uri": jwks_uri, "cluster": "oauth_as", "timeout": "5s"},
                                    "cache_duration": "300s"},
                    "forward": True, "payload_in_metadata": "as",
                }},
                "rules": [{"match": {"path": "/healthz"}},
                          {"match": {"prefix": "/"}, "requires": {"provider_name": "as"}}],
            }}
        routes = [{"match": {"path": "/healthz"}, "direct_response": {"status": 200, "body": {"inline_string": "ok"}}},
                  {"match": {"prefix": "/"}, "route": {"cluster": "upstream"}}]
        return http_listener_config(listener_port=listener_port, admin_port=admin_port, http_filters=[jwt_authn],
                                    routes=routes,
                                    clusters=[static_cluster("upstream", upstream_port),
                                              static_cluster("oauth_as", as_port)])

    return start_envoy_config(tmp_path / "envoy", make, ready_path="/healthz")


def test_envoy_jwt_authn_remote_jwks(setup, tmp_path):
    s = setup.server
    up = RecordingUpstream().start()
    env = None
    try:
        env = jwt_authn_envoy(tmp_path, s, setup.resource, up.port)

        def call(token):
            return requests.post(env.url + "/mcp", json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"},
                                 headers={"authorization": f"Bearer {token}"}, timeout=10)

        good = s.client_credentials(*setup.svc, resource=setup.resource, scope=CALL)["access_token"]
        r = call(good)
        assert r.status_code == 200, (r.status_code, r.text, env.log_tail())
        (req,) = up.wait_for(1)
        assert req.bearer_token() == good
        # RS256 and ES256 keys both come from the one JWKS
        r = call(s.client_credentials(*setup.svc, resource=setup.resource_es, scope=CALL)["access_token"])
        assert r.status_code == 403, r.text  # right signature, other audience: jwt_authn answers 403

        now = int(time.time())
        base = {"iss": s.issuer, "aud": setup.resource, "sub": "svc", "client_id": "svc", "scope": CALL,
                "iat": now, "exp": now + 300, "jti": new_secret()}
        other_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        forged = jwt.encode(base, other_key, algorithm="RS256", headers={"kid": s.kids["RS256"], "typ": "at+jwt"})
        expired = s.sign({**base, "iat": now - 7200, "exp": now - 3600})  # the AS's own key, expired an hour ago
        other_issuer = s.sign({**base, "iss": "http://127.0.0.1:1/other"})
        tampered = good.rsplit(".", 2)
        tampered = ".".join([tampered[0], jwt.utils.base64url_encode(json.dumps(
            {**b64_claims(good), "scope": f"{CALL} {WEATHER}"}).encode()).decode(), tampered[2]])
        assert s.sign(base) and call(s.sign(base)).status_code == 200  # control: the AS's key, live: accepted
        for name, token in [("forged", forged), ("expired", expired), ("other issuer", other_issuer),
                            ("tampered", tampered), ("garbage", "not-a-jwt")]:
            r = call(token)
            assert r.status_code == 401, (name, r.status_code, r.text)
        r = requests.post(env.url + "/mcp", json={}, timeout=10)
        assert r.status_code == 401 and r.headers["www-authenticate"].startswith("Bearer"), r.headers
        assert len(up.requests) == 2, [q.path for q in up.requests]  # only the two accepted tokens got through
    finally:
        if env is not None:
            env.stop()
        up.stop()


# ----------------------------------------------------------------------------------------------------------------
# RFC 7662 introspection
# ----------------------------------------------------------------------------------------------------------------
def test_introspection_opaque_tokens(setup):
    """Opaque tokens: not JWTs, validated only by introspection; revocation makes them inactive."""
    s = setup.server
    tok = s.client_credentials(*setup.svc, resource=setup.opaque, scope=f"{CALL} {WEATHER}")
    opaque = tok["access_token"]
    assert opaque.count(".") == 0 and len(opaque) >= 43, "expected an opaque token"
    r = s.introspect(opaque, setup.gateway)
    assert r.status_code == 200 and r.headers["cache-control"] == "no-store", r.headers
    body = r.json()
    assert body["active"] is True
    assert body["client_id"] == "svc" and body["aud"] == setup.opaque and body["iss"] == s.issuer
    assert body["scope"] == f"{CALL} {WEATHER}" and body["token_type"] == "Bearer"
    assert body["exp"] - body["iat"] == 300 and body["exp"] > time.time()
    # oidc-provider puts no `sub` in a client-credentials token's introspection (no end user); client_id names it
    assert "sub" not in body
    # the token's own client may introspect it too; another ordinary client learns nothing
    assert s.introspect(opaque, setup.svc).json()["active"] is True
    assert s.introspect(opaque, setup.narrow).json() == {"active": False}
    # client authentication is required
    r = s.introspect(opaque, (setup.gateway[0], "wrong"))
    assert r.status_code == 401 and r.json()["error"] == "invalid_client"
    r = requests.post(s.metadata()["introspection_endpoint"], data={"token": opaque}, timeout=5)
    assert r.status_code in (400, 401) and r.json()["error"] in ("invalid_client", "invalid_request"), r.text
    # garbage and revoked tokens are inactive
    assert s.introspect("garbage-token-value", setup.gateway).json() == {"active": False}
    assert s.revoke(opaque, setup.svc).status_code == 200
    assert s.introspect(opaque, setup.gateway).json() == {"active": False}


def test_introspection_jwt_tokens(setup):
    s = setup.server
    tok = s.client_credentials(*setup.svc, resource=setup.resource, scope=CALL)["access_token"]
    body = s.introspect(tok, setup.gateway).json()
    claims = b64_claims(tok)
    assert body["active"] is True and body["token_type"] == "Bearer"
    assert {k: body[k] for k in claims} == claims  # every claim of the JWT, as introspection claims
    assert s.introspect(tok, setup.narrow).json() == {"active": False}
    assert s.introspect(tok, (setup.gateway[0], "wrong")).status_code == 401
    now = int(time.time())
    expired = s.sign({**claims, "iat": now - 7200, "exp": now - 3600})
    assert s.introspect(expired, setup.gateway).json() == {"active": False}
    other_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    forged = jwt.encode(claims, other_key, algorithm="RS256", headers={"kid": s.kids["RS256"], "typ": "at+jwt"})
    assert s.introspect(forged, setup.gateway).json() == {"active": False}
    assert s.revoke(tok, setup.svc).status_code == 200
    assert s.introspect(tok, setup.gateway).json() == {"active": False}


def test_introspection_of_jwts_without_the_layer_is_oidc_providers_own_refusal(oauth_server):
    """With jwt_introspection off, oidc-provider answers as it does by design: a structured token cannot be
    introspected (400 unsupported_token_type). A gateway pointed at such a server must fail closed."""
    resource = f"http://127.0.0.1:{free_port()}/mcp"
    svc, gw = ("svc", new_secret()), ("gateway", new_secret())
    s = oauth_server(resources={resource: {"scopes": [CALL]}}, jwt_introspection=False,
                     clients=[{"client_id": svc[0], "client_secret": svc[1]},
                              {"client_id": gw[0], "client_secret": gw[1], "grant_types": [], "introspect_any": True}])
    tok = s.client_credentials(*svc, resource=resource, scope=CALL)["access_token"]
    r = s.introspect(tok, gw)
    assert (r.status_code, r.json()["error"]) == (400, "unsupported_token_type"), r.text


# ----------------------------------------------------------------------------------------------------------------
# authorization code + PKCE, headless
# ----------------------------------------------------------------------------------------------------------------
def pkce_pair():
    import base64
    import hashlib
    import secrets

    verifier = secrets.token_urlsafe(64)[:86]
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    return verifier, challenge


def test_authorization_code_pkce_headless(setup):
    s = setup.server
    md = s.metadata()
    verifier, challenge = pkce_pair()
    params = {"response_type": "code", "client_id": setup.public_client, "redirect_uri": setup.redirect_uri,
              "state": "st-1", "code_challenge": challenge, "code_challenge_method": "S256",
              "resource": setup.resource, "scope": f"{CALL} {WEATHER}", "login_hint": "bob"}
    url = md["authorization_endpoint"] + "?" + requests.compat.urlencode(params)
    code, state, iss = s.complete_authorization(url, setup.redirect_uri)
    assert state == "st-1" and iss == s.issuer and code
    token_data = {"grant_type": "authorization_code", "code": code, "redirect_uri": setup.redirect_uri,
                  "client_id": setup.public_client, "resource": setup.resource}
    # PKCE is enforced: a wrong verifier is refused (and burns the code)
    r = s.token_request({**token_data, "code_verifier": pkce_pair()[0]})
    assert (r.status_code, r.json()["error"]) == (400, "invalid_grant"), r.text
    code, _, _ = s.complete_authorization(url, setup.redirect_uri)
    r = s.token_request({**token_data, "code": code, "code_verifier": verifier})
    assert r.status_code == 200, r.text
    tok = r.json()
    claims = verify_via_discovery(tok["access_token"], s.issuer, setup.resource)
    assert claims["sub"] == "bob" and claims["client_id"] == setup.public_client
    assert claims["scope"] == f"{CALL} {WEATHER}"
    # without login_hint the default user signs in
    code, _, _ = s.complete_authorization(url.replace("login_hint=bob", "login_hint="), setup.redirect_uri)
    tok = s.token_request({**token_data, "code": code, "code_verifier": verifier}).json()
    assert b64_claims(tok["access_token"])["sub"] == "alice"


def test_authorization_code_requires_pkce(setup):
    s = setup.server
    params = {"response_type": "code", "client_id": setup.public_client, "redirect_uri": setup.redirect_uri,
              "state": "st", "resource": setup.resource, "scope": CALL}
    url = s.metadata()["authorization_endpoint"] + "?" + requests.compat.urlencode(params)
    r = requests.get(url, allow_redirects=False, timeout=5)
    assert r.status_code == 303, r.text
    q = parse_qs(urlparse(r.headers["location"]).query)
    assert q["error"] == ["invalid_request"] and "PKCE" in q["error_description"][0], q


# ----------------------------------------------------------------------------------------------------------------
# the MCP Python SDK's OAuth clients against a stand-in protected resource
# ----------------------------------------------------------------------------------------------------------------
@dataclass
class StandIn:
    """A protected resource the way MCP's authorization spec wants the gateway to behave: 401 with
    `WWW-Authenticate: Bearer resource_metadata=..., scope=...`, RFC 9728 metadata naming the AS, 403
    `insufficient_scope` when a tools/call needs a scope the token lacks, 200 with the verified claims otherwise."""
    issuer: str
    port: int = field(default_factory=free_port)
    required: dict = field(default_factory=dict)   # tool name -> scope it needs besides mcp:tools/call
    seen: list = field(default_factory=list)       # (method, path, authorization present?, status)

    @property
    def resource(self) -> str:
        return f"http://127.0.0.1:{self.port}/mcp"

    @property
    def metadata_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/.well-known/oauth-protected-resource/mcp"

    def start(self):
        standin = self
        jwks = jwt.PyJWKClient(requests.get(self.issuer + "/.well-known/openid-configuration",
                                            timeout=5).json()["jwks_uri"])

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):  # quiet
                pass

            def reply(self, status, body, headers=()):
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                for k, v in headers:
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)
                standin.seen.append((self.command, self.path, "authorization" in self.headers, status))

            def do_GET(self):
                if self.path == "/.well-known/oauth-protected-resource/mcp":
                    return self.reply(200, {"resource": standin.resource, "authorization_servers": [standin.issuer],
                                            "scopes_supported": [CALL, WEATHER],
                                            "bearer_methods_supported": ["header"]})
                return self.reply(404, {"error": "not found"})

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers.get("content-length", 0))) or b"{}")
                name = (body.get("params") or {}).get("name")
                needed = [CALL] + ([standin.required[name]] if name in standin.required else [])
                challenge = f'Bearer resource_metadata="{standin.metadata_url}", scope="{" ".join(needed)}"'
                auth = self.headers.get("authorization", "")
                if not auth.startswith("Bearer "):
                    return self.reply(401, {"jsonrpc": "2.0", "id": body.get("id"),
                                            "error": {"code": -32001, "message": "authentication required"}},
                                      [("www-authenticate", challenge)])
                token = auth[7:]
                try:
                    claims = jwt.decode(token, jwks.get_signing_key_from_jwt(token).key, algorithms=["RS256"],
                                        audience=standin.resource, issuer=standin.issuer,
                                        options={"require": ["exp", "aud", "iss"]})
                except jwt.PyJWTError:
                    return self.reply(401, {"jsonrpc": "2.0", "id": body.get("id"),
                                            "error": {"code": -32001, "message": "invalid token"}},
                                      [("www-authenticate", f'Bearer error="invalid_token", {challenge[7:]}')])
                if not set(needed) <= set(claims.get("scope", "").split()):
                    return self.reply(403, {"jsonrpc": "2.0", "id": body.get("id"),
                                            "error": {"code": -32001, "message": "insufficient scope"}},
                                      [("www-authenticate", f'Bearer error="insufficient_scope", {challenge[7:]}')])
                return self.reply(200, {"jsonrpc": "2.0", "id": body.get("id"), "result": {"claims": claims}})

        self.httpd = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        return self

    def stop(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@dataclass
class Wire:
    """Every HTTP exchange the SDK's httpx2 client made (auth-flow requests included), secrets left out."""
    entries: list = field(default_factory=list)

    async def on_response(self, response):
        req = response.request
        form = {}
        if req.headers.get("content-type", "").startswith("application/x-www-form-urlencoded"):
            form = {k: v[0] for k, v in parse_qs(req.content.decode()).items()}
            for secret in ("client_secret", "code", "code_verifier", "refresh_token"):
                if secret in form:
                    form[secret] = "<redacted>"
        auth = req.headers.get("authorization", "")
        self.entries.append({
            "method": req.method, "url": str(req.url).split("?")[0],
            "query": {k: v[0] for k, v in parse_qs(req.url.query.decode() if isinstance(req.url.query, bytes)
                                                   else req.url.query).items()},
            "authorization": auth.split(" ")[0] if auth else None,
            "mcp_protocol_version": req.headers.get("mcp-protocol-version"),
            "form": form, "status": response.status_code,
            "www_authenticate": response.headers.get("www-authenticate"),
        })

    def path_list(self):
        return [(e["method"], urlparse(e["url"]).path, e["status"]) for e in self.entries]


def run_async(coro_fn):
    async def go():
        with anyio.fail_after(30):
            return await coro_fn()

    return asyncio.run(go())


def tools_call(name: str, id_: int = 1) -> dict:
    return {"jsonrpc": "2.0", "id": id_, "method": "tools/call", "params": {"name": name, "arguments": {}}}


def test_sdk_client_credentials_discovery_token_and_step_up(setup):
    """ClientCredentialsOAuthProvider given only the resource URL: 401 -> PRM (from resource_metadata) ->
    RFC 8414 metadata -> token (client_secret_basic, resource, scope from the challenge) -> retry 200; then a
    tools/call that needs more scope: 403 insufficient_scope -> a new token with the union of scopes -> 200."""
    s = setup.server
    standin = StandIn(s.issuer, port=urlparse(setup.resource).port, required={"get_weather": WEATHER}).start()
    wire = Wire()
    try:
        auth = ClientCredentialsOAuthProvider(server_url=standin.resource, storage=MemoryStorage(),
                                              client_id=setup.svc[0], client_secret=setup.svc[1], issuer=s.issuer)

        async def flow():
            async with httpx2.AsyncClient(auth=auth, event_hooks={"response": [wire.on_response]}) as http:
                first = await http.post(standin.resource, json=tools_call("whoami"))
                mark = len(wire.entries)
                second = await http.post(standin.resource, json=tools_call("get_weather", 2))
                return first, mark, second

        first, mark, second = run_async(flow)
        assert first.status_code == 200, (first.status_code, first.text, wire.path_list())
        claims = first.json()["result"]["claims"]
        assert claims["scope"] == CALL and claims["sub"] == "svc" and claims["aud"] == standin.resource
        md = s.metadata()
        steps = [(e["method"], e["url"], e["status"]) for e in wire.entries[:mark]]
        assert steps == [
            ("POST", standin.resource, 401),
            ("GET", standin.metadata_url, 200),
            ("GET", s.url + "/.well-known/oauth-authorization-server", 200),
            ("POST", md["token_endpoint"], 200),
            ("POST", standin.resource, 200),
        ], steps
        token_req = wire.entries[3]
        assert token_req["authorization"] == "Basic"
        assert token_req["form"] == {"grant_type": "client_credentials", "resource": standin.resource, "scope": CALL}
        assert wire.entries[1]["mcp_protocol_version"] and wire.entries[2]["mcp_protocol_version"]

        # step-up
        assert second.status_code == 200, (second.status_code, second.text, wire.path_list())
        assert set(second.json()["result"]["claims"]["scope"].split()) == {CALL, WEATHER}
        steps = [(e["method"], e["url"], e["status"]) for e in wire.entries[mark:]]
        assert steps == [
            ("POST", standin.resource, 403),
            ("POST", md["token_endpoint"], 200),  # no new discovery: the metadata from the 401 is reused
            ("POST", standin.resource, 200),
        ], steps
        assert wire.entries[mark + 1]["form"]["scope"] == f"{CALL} {WEATHER}"
    finally:
        standin.stop()


def test_sdk_client_credentials_refused_scope_is_not_retried_forever(setup):
    """A client the AS will not give the scope: the token it gets after the 401 already lacks it (the AS leaves
    out what the client may not have), the retry gets 403 and the SDK returns that 403: one OAuth flow per request,
    never a loop."""
    s = setup.server
    standin = StandIn(s.issuer, port=urlparse(setup.resource).port, required={"get_weather": WEATHER}).start()
    wire = Wire()
    try:
        auth = ClientCredentialsOAuthProvider(server_url=standin.resource, storage=MemoryStorage(),
                                              client_id=setup.narrow[0], client_secret=setup.narrow[1],
                                              issuer=s.issuer)

        async def flow():
            async with httpx2.AsyncClient(auth=auth, event_hooks={"response": [wire.on_response]}) as http:
                return await http.post(standin.resource, json=tools_call("get_weather"))

        r = run_async(flow)
        assert r.status_code == 403, (r.status_code, wire.path_list())
        assert 'error="insufficient_scope"' in r.headers["www-authenticate"]
        statuses = [st for _, _, st in wire.path_list()]
        assert statuses == [401, 200, 200, 200, 403], wire.path_list()
    finally:
        standin.stop()


def test_sdk_authorization_code_with_dynamic_registration(oauth_server):
    """OAuthClientProvider (authorization code + PKCE) with no client registered: 401 -> PRM -> RFC 8414 metadata
    -> RFC 7591 registration -> authorization (driven headless by the redirect handler) -> token -> 200; then a
    step-up runs a second authorization with the union of scopes."""
    port = free_port()
    resource = f"http://127.0.0.1:{port}/mcp"
    s = oauth_server(resources={resource: {"scopes": [CALL, WEATHER]}}, clients=[], registration=True)
    standin = StandIn(s.issuer, port=port, required={"get_weather": WEATHER}).start()
    wire = Wire()
    redirect_uri = f"http://127.0.0.1:{free_port()}/callback"
    pending = {}
    authorizations = []

    async def redirect_handler(url: str) -> None:
        authorizations.append({k: v[0] for k, v in parse_qs(urlparse(url).query).items()})
        pending["result"] = await anyio.to_thread.run_sync(s.complete_authorization, url, redirect_uri)

    async def callback_handler() -> AuthorizationCodeResult:
        code, state, iss = pending.pop("result")
        return AuthorizationCodeResult(code=code, state=state, iss=iss)

    storage = MemoryStorage()
    try:
        auth = OAuthClientProvider(
            server_url=standin.resource,
            client_metadata=OAuthClientMetadata(redirect_uris=[redirect_uri], client_name="e2e"),
            storage=storage, redirect_handler=redirect_handler, callback_handler=callback_handler)

        async def flow():
            async with httpx2.AsyncClient(auth=auth, event_hooks={"response": [wire.on_response]}) as http:
                first = await http.post(standin.resource, json=tools_call("whoami"))
                mark = len(wire.entries)
                second = await http.post(standin.resource, json=tools_call("get_weather", 2))
                return first, mark, second

        first, mark, second = run_async(flow)
        assert first.status_code == 200, (first.status_code, first.text, wire.path_list(), s.log()[-2000:])
        claims = first.json()["result"]["claims"]
        assert claims["sub"] == "alice" and claims["scope"] == CALL
        md = s.metadata()
        steps = [(e["method"], e["url"], e["status"]) for e in wire.entries[:mark]]
        assert steps == [
            ("POST", standin.resource, 401),
            ("GET", standin.metadata_url, 200),
            ("GET", s.url + "/.well-known/oauth-authorization-server", 200),
            ("POST", md["registration_endpoint"], 201),
            ("POST", md["token_endpoint"], 200),
            ("POST", standin.resource, 200),
        ], steps
        # the authorization request the SDK built
        a = authorizations[0]
        assert a["response_type"] == "code" and a["code_challenge_method"] == "S256" and a["resource"] == resource
        assert a["redirect_uri"] == redirect_uri and a["client_id"] == storage.client_info.client_id
        # SEP-2207: the AS lists offline_access and the client registered for refresh_token, so the SDK asks for it
        assert a["scope"] == f"{CALL} offline_access" and a["prompt"] == "consent"
        tok = wire.entries[4]["form"]
        assert tok["grant_type"] == "authorization_code" and tok["resource"] == resource
        assert tok["code_verifier"] == "<redacted>" and wire.entries[4]["authorization"] == "Basic"
        assert storage.tokens.refresh_token, "offline_access should have brought a refresh token"

        assert second.status_code == 200, (second.status_code, wire.path_list())
        assert set(second.json()["result"]["claims"]["scope"].split()) == {CALL, WEATHER}
        steps = [(e["method"], e["url"], e["status"]) for e in wire.entries[mark:]]
        assert steps == [("POST", standin.resource, 403), ("POST", md["token_endpoint"], 200),
                         ("POST", standin.resource, 200)], steps
        assert set(authorizations[1]["scope"].split()) == {CALL, WEATHER, "offline_access"}
    finally:
        standin.stop()
