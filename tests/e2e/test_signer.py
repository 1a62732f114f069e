"""End-to-end contract of mcp-jwt-signer, exercised through a real Envoy and verified with PyJWT.

Three shared gateways (module-scoped, their upstream cleared before every test) keep the suite fast:
  gw          envoy.yaml's own plugin JSON, issuer set to the listener URL
  gw_default  plugin config `{}`: every default
  gw_custom   issuer with a path (/tenant-a), custom audience/ttl/actor/identity, max_body_bytes 4096
Tests that need their own Envoy (keys, bad configs, concurrency) start one with the `envoy` fixtures.
"""

from __future__ import annotations

import base64
import gzip
import json
import re
import time
import uuid

import jwt
import pytest
import requests
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from harness import (
    MCP_HEADERS,
    DISCOVERY_SUFFIX,
    JWKS_SUFFIX,
    b64url_decode,
    b64url_uint,
    assert_nothing_forwarded_since_reset,
    load_envoy_yaml,
    nothing_forwarded,
    raw_request,
    reset_forwarded,
    rfc7638_thumbprint,
    rpc,
    running_gateway,
    upstream_requests_total,
    verify_with_discovery,
    wasm_filter_config,
)


# ----------------------------------------------------------------------------------------------------------------
# configs and shared gateways
# ----------------------------------------------------------------------------------------------------------------
def envoy_yaml_plugin_config() -> dict:
    return json.loads(wasm_filter_config(load_envoy_yaml())["configuration"]["value"])


def main_config(url: str) -> dict:
    cfg = envoy_yaml_plugin_config()
    cfg["issuer"] = url
    return cfg


def custom_config(url: str) -> dict:
    return {
        "issuer": url + "/tenant-a",
        "audience": "weather-api",
        "ttl_seconds": 60,
        "actor": "edge-gw",
        "max_body_bytes": 4096,
        "identity": {
            "subject": ["header:x-sub-a", "header:x-sub-b"],
            "email": ["header:x-mail"],
            "actor": ["header:x-team-id"],
        },
    }


def _shared(tmp_path_factory, name, config):
    return running_gateway(tmp_path_factory.mktemp(name), config)


@pytest.fixture(scope="module")
def _gw(tmp_path_factory):
    with _shared(tmp_path_factory, "gw", main_config) as g:
        yield g


@pytest.fixture(scope="module")
def _gw_default(tmp_path_factory):
    with _shared(tmp_path_factory, "gw_default", {}) as g:
        yield g


@pytest.fixture(scope="module")
def _gw_custom(tmp_path_factory):
    with _shared(tmp_path_factory, "gw_custom", custom_config) as g:
        yield g


@pytest.fixture
def gw(_gw):
    reset_forwarded(_gw)
    return _gw


@pytest.fixture
def gw_default(_gw_default):
    reset_forwarded(_gw_default)
    return _gw_default


@pytest.fixture
def gw_custom(_gw_custom):
    reset_forwarded(_gw_custom)
    return _gw_custom


# ----------------------------------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------------------------------
def encode_body(body) -> bytes:
    if isinstance(body, bytes):
        return body
    if isinstance(body, str):
        return body.encode()
    return json.dumps(body).encode()


def post(g, body, headers=None, path="/mcp", **kw) -> requests.Response:
    h = dict(MCP_HEADERS)
    h.update(headers or {})
    return requests.post(g.url + path, data=encode_body(body), headers=h, timeout=10, **kw)


def forwarded(g):
    """The single request the upstream received, and the bearer token on it (exactly one Authorization)."""
    reqs = g.upstream.wait_for(1, timeout=5)
    assert len(reqs) == 1, f"upstream should have received exactly one request, got {len(reqs)}"
    req = reqs[0]
    auth = req.header_values("authorization")
    assert len(auth) == 1, f"expected exactly one authorization header upstream, got {auth!r}"
    scheme, _, token = auth[0].partition(" ")
    assert scheme == "Bearer" and token and " " not in token, f"not a bearer token: {auth[0]!r}"
    return req, token


def call_and_verify(g, body, headers=None, *, issuer=None, audience="mcp"):
    """POST `body`, assert 200 from upstream, return (recorded request, jwt header, verified claims)."""
    r = post(g, body, headers)
    assert r.status_code == 200, f"{r.status_code} {r.text[:300]!r}"
    req, token = forwarded(g)
    claims = verify_with_discovery(token, issuer or g.url, audience)
    return req, jwt.get_unverified_header(token), claims


def scopes(claims) -> list:
    scope = claims["scope"]
    assert isinstance(scope, str)
    parts = scope.split(" ")
    assert all(parts), f"scope must be single-space separated, got {scope!r}"
    assert len(parts) == len(set(parts)), f"duplicate scopes in {scope!r}"
    return parts


def assert_nothing_forwarded(g):
    """Nothing reached the upstream since the fixture's reset_forwarded: Envoy's upstream request counter, read
    after the response (no wait), and the recording upstream."""
    assert_nothing_forwarded_since_reset(g)


ANY = object()


def assert_jsonrpc_error(status, headers, body, *, expect_status, codes=None, expect_id=ANY):
    assert status == expect_status, f"status {status} != {expect_status}; body {body[:300]!r}"
    ctype = headers.get("content-type", "")
    assert ctype.split(";")[0].strip().lower() == "application/json", f"content-type {ctype!r}"
    data = json.loads(body)
    assert data.get("jsonrpc") == "2.0", data
    assert "id" in data, f"error must carry an id member (null when unknown): {data}"
    if expect_id is not ANY:
        if isinstance(expect_id, tuple):
            assert data["id"] in expect_id, f"id {data['id']!r} not in {expect_id!r}"
        else:
            assert data["id"] == expect_id and type(data["id"]) is type(expect_id), f"id {data['id']!r} != {expect_id!r}"
    err = data.get("error")
    assert isinstance(err, dict), data
    assert isinstance(err.get("code"), int) and not isinstance(err.get("code"), bool), data
    if codes is not None:
        assert err["code"] in codes, f"error code {err['code']} not in {codes}"
    assert isinstance(err.get("message"), str) and err["message"], data
    assert "result" not in data
    return data


def get_jwks(base_url: str, **kw) -> dict:
    r = requests.get(base_url + JWKS_SUFFIX, timeout=5, **kw)
    assert r.status_code == 200, f"{r.status_code} {r.text[:300]!r}"
    return r.json()


def single_jwk(base_url: str) -> dict:
    keys = get_jwks(base_url)["keys"]
    assert len(keys) == 1, keys
    return keys[0]


def pem_of(key, fmt: str) -> str:
    form = {"pkcs1": serialization.PrivateFormat.TraditionalOpenSSL, "pkcs8": serialization.PrivateFormat.PKCS8}[fmt]
    return key.private_bytes(serialization.Encoding.PEM, form, serialization.NoEncryption()).decode()


def new_rsa(bits: int = 2048):
    return rsa.generate_private_key(public_exponent=65537, key_size=bits)


def assert_jwk_matches(jwk: dict, private_key) -> None:
    nums = private_key.public_key().public_numbers()
    assert jwk["n"] == b64url_uint(nums.n)
    assert jwk["e"] == b64url_uint(nums.e)
    assert jwk["kid"] == rfc7638_thumbprint(jwk)


def pem_body_lines(pem: str) -> list:
    return [ln for ln in pem.splitlines() if ln and not ln.startswith("-----")]


def assert_no_pem_in_log(log: str, pem: str | None = None) -> None:
    assert not re.search(r"-----BEGIN [A-Z ]*PRIVATE KEY-----", log), "log contains a PEM header"
    if pem:
        leaked = [ln for ln in pem_body_lines(pem) if ln in log or ln.replace("\n", "\\n") in log]
        assert not leaked, f"log contains PEM body lines: {leaked[:2]}"


# ----------------------------------------------------------------------------------------------------------------
# OIDC discovery and JWKS
# ----------------------------------------------------------------------------------------------------------------
def test_discovery_document(gw):
    r = requests.get(gw.url + DISCOVERY_SUFFIX, timeout=5)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].split(";")[0].strip() == "application/json"
    doc = r.json()
    assert doc["issuer"] == gw.url
    assert doc["jwks_uri"] == gw.url + JWKS_SUFFIX
    assert "RS256" in doc["id_token_signing_alg_values_supported"]
    assert_nothing_forwarded(gw)


def test_jwks_document(gw):
    r = requests.get(gw.url + JWKS_SUFFIX, timeout=5)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].split(";")[0].strip() == "application/json"
    doc = r.json()
    assert set(doc) == {"keys"}
    assert len(doc["keys"]) == 1
    key = doc["keys"][0]
    assert {k: key[k] for k in ("kty", "alg", "use")} == {"kty": "RSA", "alg": "RS256", "use": "sig"}
    for member in ("n", "e", "kid"):
        assert isinstance(key[member], str) and re.fullmatch(r"[A-Za-z0-9_-]+", key[member]), (member, key[member])
    n = b64url_decode(key["n"])
    assert n[0] != 0, "n must use the minimum number of octets (RFC 7518 6.3.1.1)"
    assert int.from_bytes(n, "big").bit_length() == 2048, "auto-generated key should be RSA-2048"
    assert key["e"] == "AQAB"
    assert key["kid"] == rfc7638_thumbprint(key)
    assert not {"d", "p", "q", "dp", "dq", "qi"} & set(key), "private members must never be published"
    assert_nothing_forwarded(gw)


@pytest.mark.parametrize("raw_path", [
    "/.well-known/%6Awks.json",
    "//.well-known/jwks.json",
    "/mcp/../.well-known/jwks.json",
])
def test_jwks_path_variants_are_answered_by_the_filter(gw, raw_path):
    """envoy.yaml normalises paths before the filter: encoded/odd spellings of the JWKS path cannot reach upstream."""
    status, headers, body = raw_request(gw.url, "GET", raw_path)
    assert status == 200, (status, body[:200])
    assert json.loads(body)["keys"][0]["kid"] == single_jwk(gw.url)["kid"]
    assert_nothing_forwarded(gw)


def test_discovery_under_issuer_path(gw_custom):
    issuer = gw_custom.url + "/tenant-a"
    r = requests.get(issuer + DISCOVERY_SUFFIX, timeout=5)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].split(";")[0].strip() == "application/json"
    doc = r.json()
    assert doc["issuer"] == issuer
    assert doc["jwks_uri"] == issuer + JWKS_SUFFIX
    assert "RS256" in doc["id_token_signing_alg_values_supported"]
    r = requests.get(doc["jwks_uri"], timeout=5)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].split(";")[0].strip() == "application/json"
    key = r.json()["keys"][0]
    assert key["kid"] == rfc7638_thumbprint(key)
    assert_nothing_forwarded(gw_custom)


def test_default_issuer_is_request_authority(gw_default):
    r = requests.get(gw_default.url + DISCOVERY_SUFFIX, headers={"host": "gw.example.com:8443"}, timeout=5)
    assert r.status_code == 200, r.text
    doc = r.json()
    assert doc["issuer"] == "http://gw.example.com:8443"
    assert doc["jwks_uri"] == "http://gw.example.com:8443" + JWKS_SUFFIX
    assert_nothing_forwarded(gw_default)


# ----------------------------------------------------------------------------------------------------------------
# tokens
# ----------------------------------------------------------------------------------------------------------------
def test_tools_call_gets_a_verifiable_token(gw):
    body = ('{ "jsonrpc" : "2.0",\n  "id": 3, "method": "tools/call",\n'
            '  "params": {"name": "get_weather", "arguments": {"city": "Z\u00fcrich"}} }').encode()
    headers = {"x-user-id": "alice", "x-user-email": "alice@example.com", "x-team-id": "team-weather",
               "x-org-id": "org-1"}
    before = int(time.time())
    req, header, claims = call_and_verify(gw, body, headers)
    after = int(time.time())

    assert req.method == "POST" and req.path == "/mcp"
    assert req.body == body, "the body must reach upstream unchanged"

    jwk = single_jwk(gw.url)
    assert header == {"alg": "RS256", "typ": "JWT", "kid": jwk["kid"]}

    assert claims["iss"] == gw.url
    assert claims["aud"] == "mcp"
    assert claims["sub"] == "alice"
    assert claims["act"] == {"sub": "team-weather"}
    assert claims["email"] == "alice@example.com"
    assert set(scopes(claims)) == {"mcp:tools/call", "mcp:tools/get_weather:call"}
    for c in ("iat", "nbf", "exp"):
        assert isinstance(claims[c], int) and not isinstance(claims[c], bool), (c, claims[c])
    assert before - 5 <= claims["iat"] <= after + 5
    assert claims["nbf"] <= claims["iat"] + 1
    assert claims["exp"] - claims["iat"] == 300
    assert isinstance(claims["jti"], str) and claims["jti"]


def test_token_without_identity_uses_actor(gw):
    _, _, claims = call_and_verify(gw, rpc("tools/list"))
    assert claims["sub"] == "mcp-gateway"
    assert claims["act"] == {"sub": "mcp-gateway"}
    assert "email" not in claims
    assert set(scopes(claims)) == {"mcp:tools/list"}


@pytest.mark.parametrize("headers,expected_act", [
    ({"x-team-id": "team-1", "x-org-id": "org-1"}, "team-1"),
    ({"x-org-id": "org-1"}, "org-1"),
    ({"x-team-id": "", "x-org-id": "org-1"}, "org-1"),
    ({"x-user-id": "bob"}, "mcp-gateway"),
], ids=["team-first", "org-fallback", "empty-team-skipped", "actor-default"])
def test_actor_chain(gw, headers, expected_act):
    _, _, claims = call_and_verify(gw, rpc("tools/list"), headers)
    assert claims["act"] == {"sub": expected_act}


def test_jti_unique_per_token(gw):
    """Every minted token has its own jti (different users: different tokens, never served from one cache entry)."""
    jtis = []
    for i in range(5):
        gw.upstream.clear()
        _, _, claims = call_and_verify(gw, rpc("tools/call", {"name": "get_weather"}, id=i), {"x-user-id": f"jti-user-{i}"})
        jtis.append(claims["jti"])
    assert len(set(jtis)) == len(jtis), jtis


@pytest.mark.parametrize("body,expected", [
    (rpc("tools/call", {"name": "get_weather", "arguments": {"city": "Paris"}}),
     {"mcp:tools/call", "mcp:tools/get_weather:call"}),
    (rpc("tools/list"), {"mcp:tools/list"}),
    (rpc("initialize", {"protocolVersion": "2025-06-18", "capabilities": {},
                        "clientInfo": {"name": "t", "version": "1"}}), {"mcp:initialize"}),
    (rpc("notifications/initialized", id=None), {"mcp:notifications/initialized"}),
    (rpc("resources/read", {"uri": "file:///x"}, id="abc"), {"mcp:resources/read"}),
    ([rpc("tools/list", id=1),
      rpc("tools/call", {"name": "get_weather"}, id=2),
      rpc("tools/call", {"name": "search_docs"}, id=3),
      rpc("tools/call", {"name": "get_weather"}, id=4)],
     {"mcp:tools/list", "mcp:tools/call", "mcp:tools/get_weather:call", "mcp:tools/search_docs:call"}),
], ids=["tools-call", "tools-list", "initialize", "notification", "resources-read", "batch-union"])
def test_scope(gw, body, expected):
    req, _, claims = call_and_verify(gw, body)
    assert set(scopes(claims)) == expected
    assert req.body == encode_body(body)


def test_client_authorization_is_replaced(gw):
    headers = {"authorization": "Bearer client-supplied-token", "x-user-id": "alice"}
    req, _, claims = call_and_verify(gw, rpc("tools/list"), headers)
    assert "client-supplied-token" not in req.header("authorization")
    assert claims["sub"] == "alice"


def test_get_stream_gets_stream_scope(gw):
    r = requests.get(gw.url + "/mcp", headers={"accept": "text/event-stream", "x-user-id": "alice"}, timeout=10)
    assert r.status_code == 200, r.text
    req, token = forwarded(gw)
    assert req.method == "GET" and req.body == b""
    claims = verify_with_discovery(token, gw.url, "mcp")
    assert scopes(claims) == ["mcp:stream"]
    assert claims["sub"] == "alice"


def test_delete_gets_session_delete_scope(gw):
    r = requests.delete(gw.url + "/mcp", headers={"mcp-session-id": "s-1"}, timeout=10)
    assert r.status_code == 200, r.text
    req, token = forwarded(gw)
    assert req.method == "DELETE"
    claims = verify_with_discovery(token, gw.url, "mcp")
    assert scopes(claims) == ["mcp:session:delete"]


@pytest.mark.parametrize("method", ["PUT", "PATCH", "OPTIONS"])
def test_other_methods_refused_405(gw, method):
    r = requests.request(method, gw.url + "/mcp", data=json.dumps(rpc("tools/list")), headers=MCP_HEADERS, timeout=10)
    assert r.status_code == 405, (r.status_code, r.text[:200])
    assert_nothing_forwarded(gw)


def test_defaults(gw_default):
    _, header, claims = call_and_verify(gw_default, rpc("tools/call", {"name": "get_weather"}))
    assert claims["iss"] == gw_default.url
    assert claims["aud"] == "mcp"
    assert claims["exp"] - claims["iat"] == 300
    assert claims["sub"] == "mcp-gateway"
    assert claims["act"] == {"sub": "mcp-gateway"}
    assert "email" not in claims
    assert header["kid"] == single_jwk(gw_default.url)["kid"]


def test_default_issuer_in_token_follows_request_authority(gw_default):
    r = post(gw_default, rpc("tools/list"), {"host": "gw.example.com:8443"})
    assert r.status_code == 200, r.text
    _, token = forwarded(gw_default)
    key = jwt.PyJWK(single_jwk(gw_default.url), algorithm="RS256")
    claims = jwt.decode(token, key=key.key, algorithms=["RS256"], audience="mcp", issuer="http://gw.example.com:8443")
    assert claims["iss"] == "http://gw.example.com:8443"


@pytest.mark.parametrize("headers,sub,email", [
    ({"x-sub-a": "first", "x-sub-b": "second", "x-mail": "a@example.com"}, "first", "a@example.com"),
    ({"x-sub-b": "second"}, "second", None),
    ({"x-sub-a": "", "x-sub-b": "second"}, "second", None),
    ({"x-user-id": "not-mapped-here"}, "edge-gw", None),
], ids=["first-source", "second-source", "empty-skipped", "actor-default"])
def test_custom_config_claims(gw_custom, headers, sub, email):
    issuer = gw_custom.url + "/tenant-a"
    _, _, claims = call_and_verify(gw_custom, rpc("tools/call", {"name": "get_weather"}), headers,
                                   issuer=issuer, audience="weather-api")
    assert claims["iss"] == issuer
    assert claims["aud"] == "weather-api"
    assert claims["exp"] - claims["iat"] == 60
    assert claims["sub"] == sub
    assert claims["act"] == {"sub": "edge-gw"}
    if email is None:
        assert "email" not in claims
    else:
        assert claims["email"] == email


def test_token_rejected_for_wrong_audience(gw):
    """Sanity check of the verifier itself: the audience is really enforced."""
    r = post(gw, rpc("tools/list"))
    assert r.status_code == 200
    _, token = forwarded(gw)
    with pytest.raises(jwt.InvalidAudienceError):
        verify_with_discovery(token, gw.url, "some-other-audience")


# ----------------------------------------------------------------------------------------------------------------
# refusals
# ----------------------------------------------------------------------------------------------------------------
PARSE, INVALID_REQ, INVALID_PARAMS = {-32700}, {-32600}, {-32602}
NULL_OR_1 = (None, 1)


def _tool_call(name, id=7):  # noqa: A002
    return json.dumps(rpc("tools/call", {"name": name}, id=id), ensure_ascii=False).encode()


REFUSALS = [
    # id, raw body, status, codes, expected error id
    ("malformed-json", b'{"jsonrpc":"2.0","id":1,"method":', 400, PARSE, None),
    ("not-json", b"hello", 400, PARSE, None),
    ("trailing-garbage", b'{"jsonrpc":"2.0","id":1,"method":"tools/list"} x', 400, PARSE, NULL_OR_1),
    ("empty", b"", 400, PARSE, None),
    ("whitespace-only", b" \r\n\t  ", 400, PARSE, None),
    ("object-not-rpc", b'{"foo":1}', 400, INVALID_REQ, None),
    ("empty-batch", b"[]", 400, INVALID_REQ, None),
    ("json-string", b'"x"', 400, INVALID_REQ, None),
    ("json-number", b"42", 400, INVALID_REQ, None),
    ("json-null", b"null", 400, INVALID_REQ, None),
    ("missing-jsonrpc", b'{"id":1,"method":"tools/list"}', 400, INVALID_REQ, NULL_OR_1),
    ("jsonrpc-1.0", b'{"jsonrpc":"1.0","id":1,"method":"tools/list"}', 400, INVALID_REQ, NULL_OR_1),
    ("jsonrpc-number", b'{"jsonrpc":2.0,"id":1,"method":"tools/list"}', 400, INVALID_REQ, NULL_OR_1),
    ("method-not-string", b'{"jsonrpc":"2.0","id":1,"method":5}', 400, INVALID_REQ, NULL_OR_1),
    ("duplicate-method", b'{"jsonrpc":"2.0","id":1,"method":"tools/list","method":"tools/call",'
                         b'"params":{"name":"x"}}', 400, PARSE | INVALID_REQ, ANY),
    ("duplicate-tool-name", b'{"jsonrpc":"2.0","id":1,"method":"tools/call",'
                            b'"params":{"name":"get_weather","name":"delete_everything"}}', 400,
     PARSE | INVALID_REQ, ANY),
    ("tool-space", _tool_call("get weather"), 400, INVALID_PARAMS, 7),
    ("tool-a-b", _tool_call("a b"), 400, INVALID_PARAMS, 7),
    ("tool-too-long", _tool_call("x" * 129), 400, INVALID_PARAMS, 7),
    ("tool-empty", _tool_call(""), 400, INVALID_PARAMS, 7),
    ("tool-escaped-space", b'{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"tool\\u0020x"}}',
     400, INVALID_PARAMS, 7),
    ("tool-non-ascii", _tool_call("\u00e9vil"), 400, INVALID_PARAMS, 7),
    ("tool-non-ascii-escaped", b'{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"\\u00e9vil"}}',
     400, INVALID_PARAMS, 7),
    ("tool-scope-injection", _tool_call("get_weather mcp:admin"), 400, INVALID_PARAMS, 7),
    ("tool-name-not-string", b'{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":5}}',
     400, INVALID_PARAMS, 7),
    ("tool-name-missing", b'{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{}}', 400, INVALID_PARAMS, 7),
    ("tool-string-id", _tool_call("a b", id="req-abc"), 400, INVALID_PARAMS, "req-abc"),
    ("batch-with-bad-tool", json.dumps([rpc("tools/list", id=1), rpc("tools/call", {"name": "a b"}, id=9)]).encode(),
     400, INVALID_PARAMS, ANY),
]


@pytest.mark.parametrize("body,status,codes,expect_id", [r[1:] for r in REFUSALS], ids=[r[0] for r in REFUSALS])
def test_refusal(gw, body, status, codes, expect_id):
    st, headers, resp = raw_request(gw.url, "POST", "/mcp", headers=MCP_HEADERS, body=body)
    assert_jsonrpc_error(st, headers, resp, expect_status=status, codes=codes, expect_id=expect_id)
    assert_nothing_forwarded(gw)


def test_tool_name_128_chars_is_accepted(gw):
    name = "x" * 128
    _, _, claims = call_and_verify(gw, rpc("tools/call", {"name": name}))
    assert set(scopes(claims)) == {"mcp:tools/call", f"mcp:tools/{name}:call"}


def test_gzip_body_refused_415(gw):
    body = gzip.compress(json.dumps(rpc("tools/call", {"name": "get_weather"})).encode())
    st, headers, resp = raw_request(gw.url, "POST", "/mcp", headers={**MCP_HEADERS, "content-encoding": "gzip"},
                                    body=body)
    assert_jsonrpc_error(st, headers, resp, expect_status=415)
    assert_nothing_forwarded(gw)


def padded_tools_call(size: int) -> bytes:
    prefix = b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"get_weather","arguments":{"pad":"'
    suffix = b'"}}}'
    body = prefix + b"x" * (size - len(prefix) - len(suffix)) + suffix
    assert len(body) == size
    json.loads(body)
    return body


def chunked(body: bytes, size: int):
    for i in range(0, len(body), size):
        yield body[i:i + size]


@pytest.mark.parametrize("transfer", ["content-length", "chunked"])
def test_body_limit_configured(gw_custom, transfer):
    limit = 4096
    issuer = gw_custom.url + "/tenant-a"

    def send(body):
        if transfer == "chunked":
            return raw_request(gw_custom.url, "POST", "/mcp", headers=MCP_HEADERS, chunks=chunked(body, 1000))
        return raw_request(gw_custom.url, "POST", "/mcp", headers=MCP_HEADERS, body=body)

    st, headers, resp = send(padded_tools_call(limit + 1))
    assert_jsonrpc_error(st, headers, resp, expect_status=413)
    assert_nothing_forwarded(gw_custom)

    ok = padded_tools_call(limit)
    st, _, resp = send(ok)
    assert st == 200, (st, resp[:300])
    req, token = forwarded(gw_custom)
    assert req.body == ok
    verify_with_discovery(token, issuer, "weather-api")


@pytest.mark.parametrize("transfer", ["content-length", "chunked"])
def test_body_limit_default_1mib(gw_default, transfer):
    limit = 1048576

    def send(body):
        if transfer == "chunked":
            return raw_request(gw_default.url, "POST", "/mcp", headers=MCP_HEADERS, chunks=chunked(body, 65536),
                               timeout=30)
        return raw_request(gw_default.url, "POST", "/mcp", headers=MCP_HEADERS, body=body, timeout=30)

    st, headers, resp = send(padded_tools_call(limit + 1))
    assert_jsonrpc_error(st, headers, resp, expect_status=413)
    assert_nothing_forwarded(gw_default)

    ok = padded_tools_call(limit)
    st, _, resp = send(ok)
    assert st == 200, (st, resp[:300])
    req, token = forwarded(gw_default)
    assert req.body == ok
    verify_with_discovery(token, gw_default.url, "mcp")


# ----------------------------------------------------------------------------------------------------------------
# signing keys
# ----------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("fmt,marker", [("pkcs1", "BEGIN RSA PRIVATE KEY"), ("pkcs8", "BEGIN PRIVATE KEY")])
def test_configured_key(envoy, upstream, fmt, marker):
    key = new_rsa()
    pem = pem_of(key, fmt)
    assert marker in pem

    kids = []
    for _ in range(2):  # the kid is stable across restarts with the same key
        e = envoy(lambda url: {"issuer": url, "signing_key": pem})
        jwk = single_jwk(e.url)
        assert_jwk_matches(jwk, key)
        kids.append(jwk["kid"])

        upstream.clear()
        r = requests.post(e.url + "/mcp", data=json.dumps(rpc("tools/list")), headers=MCP_HEADERS, timeout=10)
        assert r.status_code == 200, r.text
        (req,) = upstream.wait_for(1)
        token = req.bearer_token()
        verify_with_discovery(token, e.url, "mcp")
        # And with the key the test holds, bypassing the gateway's JWKS entirely.
        jwt.decode(token, key=key.public_key(), algorithms=["RS256"], audience="mcp", issuer=e.url)
        e.stop()
        assert_no_pem_in_log(e.log(), pem)
    assert kids[0] == kids[1]


def test_key_from_env_with_literal_newline_escapes(envoy, upstream):
    key = new_rsa()
    pem = pem_of(key, "pkcs1")
    escaped = pem.strip().replace("\n", "\\n")
    assert "\n" not in escaped
    e = envoy(lambda url: {"issuer": url}, env={"MCP_JWT_SIGNING_KEY": escaped})
    assert_jwk_matches(single_jwk(e.url), key)
    r = requests.post(e.url + "/mcp", data=json.dumps(rpc("tools/list")), headers=MCP_HEADERS, timeout=10)
    assert r.status_code == 200, r.text
    (req,) = upstream.wait_for(1)
    jwt.decode(req.bearer_token(), key=key.public_key(), algorithms=["RS256"], audience="mcp", issuer=e.url)
    e.stop()
    assert_no_pem_in_log(e.log(), pem)


def test_key_from_env_pkcs8_real_newlines(envoy):
    key = new_rsa()
    e = envoy({}, env={"MCP_JWT_SIGNING_KEY": pem_of(key, "pkcs8")})
    assert_jwk_matches(single_jwk(e.url), key)


def test_configured_key_wins_over_env(envoy):
    config_key, env_key = new_rsa(), new_rsa()
    e = envoy({"signing_key": pem_of(config_key, "pkcs8")}, env={"MCP_JWT_SIGNING_KEY": pem_of(env_key, "pkcs1")})
    assert_jwk_matches(single_jwk(e.url), config_key)


# ----------------------------------------------------------------------------------------------------------------
# bad configuration
# ----------------------------------------------------------------------------------------------------------------
def _truncated_pem() -> str:
    lines = pem_of(new_rsa(), "pkcs1").splitlines()
    return "\n".join(lines[:6] + [lines[-1]]) + "\n"  # header, a few body lines, footer: not a key


def _ec_pem() -> str:
    k = ec.generate_private_key(ec.SECP256R1())
    return k.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                           serialization.NoEncryption()).decode()


BAD_CONFIGS = {
    # id: (builder() -> (plugin_config, env, secret_pem), word the log must contain)
    "unknown-field": (lambda: ({"audience": "mcp", "bogus_field": True}, None, None), "bogus_field"),
    "malformed-pem": (lambda: (lambda p: ({"signing_key": p}, None, p))(_truncated_pem()), "signing_key"),
    "rsa-1024": (lambda: (lambda p: ({"signing_key": p}, None, p))(pem_of(new_rsa(1024), "pkcs8")), "signing_key"),
    "ec-key": (lambda: (lambda p: ({"signing_key": p}, None, p))(_ec_pem()), "signing_key"),
    "ttl-zero": (lambda: ({"ttl_seconds": 0}, None, None), "ttl_seconds"),
    "ttl-negative": (lambda: ({"ttl_seconds": -5}, None, None), "ttl_seconds"),
    "ttl-over-a-day": (lambda: ({"ttl_seconds": 86401}, None, None), "ttl_seconds"),
    "env-file-url": (lambda: ({}, {"MCP_JWT_SIGNING_KEY": "file:///x.pem"}, None), "MCP_JWT_SIGNING_KEY"),
    "env-rsa-1024": (lambda: (lambda p: ({}, {"MCP_JWT_SIGNING_KEY": p}, p))(pem_of(new_rsa(1024), "pkcs1")),
                     "MCP_JWT_SIGNING_KEY"),
}


@pytest.mark.parametrize("case", list(BAD_CONFIGS))
def test_bad_config_is_refused(envoy_expect_failure, upstream, case):
    build, word = BAD_CONFIGS[case]
    plugin_config, env, secret = build()
    res = envoy_expect_failure(plugin_config, env=env)
    if res.exited:
        assert res.returncode != 0, f"envoy exited 0 with a bad config; log:\n{res.log()[-3000:]}"
    else:
        # Envoy started anyway: every request must fail closed (5xx) and never reach the upstream.
        url = res.envoy.url
        with nothing_forwarded(res.envoy, upstream):
            r = requests.post(url + "/mcp", data=json.dumps(rpc("tools/list")), headers=MCP_HEADERS, timeout=10)
            assert r.status_code >= 500, f"bad config served {r.status_code}: {r.text[:200]!r}"
            r = requests.get(url + JWKS_SUFFIX, timeout=10)
            assert r.status_code >= 500, f"bad config served JWKS {r.status_code}: {r.text[:200]!r}"
        assert upstream.requests == []
        res.envoy.stop()
    log = res.log()
    assert word in log, f"log should name {word!r}; log:\n{log[-3000:]}"
    assert_no_pem_in_log(log, secret)


# ----------------------------------------------------------------------------------------------------------------
# several workers
# ----------------------------------------------------------------------------------------------------------------
def test_generated_key_shared_by_all_workers(envoy, upstream):
    e = envoy(lambda url: {"issuer": url}, concurrency=4)
    bodies = []
    for _ in range(100):
        r = requests.get(e.url + JWKS_SUFFIX, headers={"connection": "close"}, timeout=10)
        assert r.status_code == 200, (r.status_code, r.text[:200])
        bodies.append(r.json())
    assert all(b == bodies[0] for b in bodies), "workers published different JWKS"
    (key,) = bodies[0]["keys"]
    pyjwk = jwt.PyJWK(key, algorithm="RS256")

    # A different tool per request: each one is minted (the token cache never answers), on whichever worker.
    for i in range(100):
        r = requests.post(e.url + "/mcp", data=json.dumps(rpc("tools/call", {"name": f"get_weather_{i}"}, id=i)),
                          headers={**MCP_HEADERS, "connection": "close"}, timeout=10)
        assert r.status_code == 200, (i, r.status_code, r.text[:200])
    reqs = upstream.wait_for(100)
    assert len(reqs) == 100
    jtis = set()
    for req in reqs:
        token = req.bearer_token()
        assert jwt.get_unverified_header(token)["kid"] == key["kid"]
        claims = jwt.decode(token, key=pyjwk.key, algorithms=["RS256"], audience="mcp", issuer=e.url)
        jtis.add(claims["jti"])
    assert len(jtis) == 100
    # And a relying party going through discovery accepts them too.
    verify_with_discovery(reqs[-1].bearer_token(), e.url, "mcp")

    # The test only means something if several workers (VMs) answered: check Envoy's per-worker listener stats.
    stats = requests.get(e.admin_url + "/stats", params={"filter": r"^listener\..*\.worker_\d+\.downstream_cx_total$"},
                         timeout=5).text
    per_worker = {m.group(1): int(m.group(2)) for m in re.finditer(r"\.(worker_\d+)\.downstream_cx_total: (\d+)", stats)}
    assert len(per_worker) == 4, stats
    assert sum(1 for n in per_worker.values() if n > 0) >= 2, f"connections all landed on one worker: {per_worker}"


# ----------------------------------------------------------------------------------------------------------------
# robustness
# ----------------------------------------------------------------------------------------------------------------
def test_non_utf8_identity_header_does_not_break_the_worker(envoy, upstream):
    """Header values are client-controlled bytes: a non-UTF-8 value must not kill the (single) worker's VM."""
    e = envoy(lambda url: main_config(url))
    body = json.dumps(rpc("tools/list")).encode()
    before = upstream_requests_total(e)
    st, _, resp = raw_request(e.url, "POST", "/mcp", headers={**MCP_HEADERS, "x-user-id": b"\xff\xfe-bad",
                                                              "x-team-id": b"caf\xe9"}, body=body)
    # Envoy's counter, read after the response, says how many requests were forwarded (no wait).
    started = upstream_requests_total(e) - before
    reqs = upstream.wait_for(started) if started else upstream.requests
    for req in reqs:  # whatever reached the upstream carries a valid token
        verify_with_discovery(req.bearer_token(), e.url, "mcp")
    if st == 200:
        assert started == 1 and len(reqs) == 1, (started, reqs)
    else:
        assert 400 <= st < 500, (st, resp[:200])
        assert started == 0 and upstream.requests == [], (started, upstream.requests)
    for i in range(3):
        upstream.clear()
        r = requests.post(e.url + "/mcp", data=body, headers={**MCP_HEADERS, "x-user-id": "alice"}, timeout=10)
        assert r.status_code == 200, f"worker broken after a non-UTF-8 header: {r.status_code} {r.text[:200]!r}"
        (req,) = upstream.wait_for(1)
        assert verify_with_discovery(req.bearer_token(), e.url, "mcp")["sub"] == "alice"
