"""A client cannot pass itself off as a verified user through the header that carries jwt_authn's payload.

The native build reads `jwt:` sources from jwt_authn's `forward_payload_header` (x-mcp-jwt-signer-payload; the
dynamic-modules ABI cannot read the payload Struct in dynamic metadata), guarded by the module's guard filter
before jwt_authn (src/native/jwt.rs). The wasm build reads the Struct and never looks at the header. Either way,
a client that sends the header itself, with or without a real token, must not change the identity in the token:
these tests run against both builds (harness.to_native adds the guard and `forward_payload_header` natively).
"""

from __future__ import annotations

import base64
import json

import pytest

from harness import BUILD, MCP_HEADERS, NATIVE_PAYLOAD_HEADER, running_gateway, verify_with_discovery
from test_identity import IdP, forwarded, insert_before_wasm, jwt_authn_filter, post, tool_call

SPOOFED = {"sub": "admin", "email": "root@evil.example", "org": {"team": "root"}, "groups": ["superusers"],
           "iss": "https://idp.example.com", "aud": "mcp-gateway", "exp": 4_000_000_000}


def b64(payload: dict, pad: bool = False) -> str:
    text = base64.urlsafe_b64encode(json.dumps(payload).encode()).decode()
    return text if pad else text.rstrip("=")


def config(url: str) -> dict:
    return {
        "issuer": url,
        "identity": {"subject": ["jwt:sub", "header:x-user-id"], "email": ["jwt:email"],
                     "actor": ["jwt:org/team", "header:x-team-id"]},
        "copy_claims": {"groups": "jwt:groups"},
        "token_cache": {"max_entries": 0},
    }


@pytest.fixture(scope="module")
def idp():
    return IdP()


@pytest.fixture(scope="module")
def _gw(tmp_path_factory, idp):
    edit = lambda cfg: insert_before_wasm(cfg, jwt_authn_filter(idp))  # noqa: E731
    with running_gateway(tmp_path_factory.mktemp("payload_gw"), config, extra_edit=edit) as g:
        yield g


@pytest.fixture
def gw(_gw):
    _gw.upstream.clear()
    return _gw


def minted(gw, **kw) -> tuple:
    r = post(gw.url, tool_call("get_weather"), **kw)
    assert r.status_code == 200, (r.status_code, r.text[:300])
    req, token = forwarded(gw.upstream)
    return req, verify_with_discovery(token, gw.url, "mcp")


@pytest.mark.parametrize("pad", [False, True], ids=["unpadded", "padded"])
def test_a_payload_header_without_a_token_is_not_an_identity(gw, pad):
    req, claims = minted(gw, headers={NATIVE_PAYLOAD_HEADER: b64(SPOOFED, pad), "x-user-id": "bob"})
    assert claims["sub"] == "bob", claims
    assert "email" not in claims and "groups" not in claims, claims
    assert claims["act"] == {"sub": "mcp-gateway"}, claims
    if BUILD == "native":
        assert req.header_values(NATIVE_PAYLOAD_HEADER) == [], "the guard must drop the client's payload header"


def test_a_payload_header_beside_a_real_token_does_not_replace_it(gw, idp):
    token = idp.token("alice", email="alice@example.com", org={"team": "blue"}, groups=["devs"])
    req, claims = minted(gw, token=token, headers={NATIVE_PAYLOAD_HEADER: b64(SPOOFED)})
    assert (claims["sub"], claims["email"], claims["act"], claims["groups"]) == \
        ("alice", "alice@example.com", {"sub": "blue"}, ["devs"]), claims
    if BUILD == "native":
        assert req.header_values(NATIVE_PAYLOAD_HEADER) == [], "the payload header must not reach the upstream"


def test_repeated_payload_headers_with_and_without_a_token(gw, idp):
    spoof = [(NATIVE_PAYLOAD_HEADER, b64(SPOOFED)), (NATIVE_PAYLOAD_HEADER, b64({"sub": "admin2"}))]
    # `requests` cannot send a header twice: _raw_multi does.
    body = json.dumps(tool_call("get_weather")).encode()
    for token in (None, idp.token("carol")):
        gw.upstream.clear()
        headers = [*MCP_HEADERS.items(), *spoof, ("x-user-id", "dave")]
        if token:
            headers.append(("authorization", f"Bearer {token}"))
        status, _, data = _raw_multi(gw.url, headers, body)
        assert status == 200, (status, data[:300])
        _, minted_token = forwarded(gw.upstream)
        claims = verify_with_discovery(minted_token, gw.url, "mcp")
        assert claims["sub"] == ("carol" if token else "dave"), claims


def _raw_multi(url: str, headers: list, body: bytes):
    """One POST with `headers` as a list (repeats allowed)."""
    import http.client
    from urllib.parse import urlsplit
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
    try:
        conn.putrequest("POST", "/mcp", skip_accept_encoding=True)
        for k, v in headers:
            conn.putheader(k, v)
        conn.putheader("content-length", str(len(body)))
        conn.endheaders()
        conn.send(body)
        resp = conn.getresponse()
        return resp.status, dict(resp.getheaders()), resp.read()
    finally:
        conn.close()


@pytest.mark.no_filter
def test_jwt_authn_replaces_a_client_copy_of_its_forward_payload_header(tmp_path, idp):
    """What the native guard does not rely on, but good to know (Envoy 1.40): jwt_authn sets
    `forward_payload_header` with replace semantics. A client's copy beside a verified token is gone; without a
    token the client's copy passes untouched (hence the guard, which removes it before jwt_authn runs)."""
    from plain_envoy import JWT_AUTHN_TYPE, http_listener_config, start_envoy_config, static_cluster
    from recording_upstream import RecordingUpstream

    upstream = RecordingUpstream().start()
    provider = jwt_authn_filter(idp)["typed_config"]["providers"]["idp"]
    provider["forward_payload_header"] = NATIVE_PAYLOAD_HEADER

    def make(listener_port, admin_port):
        jwt_filter = {"name": "envoy.filters.http.jwt_authn", "typed_config": {
            "@type": JWT_AUTHN_TYPE, "providers": {"idp": provider},
            "rules": [{"match": {"prefix": "/"}, "requires": {"requires_any": {"requirements": [
                {"provider_name": "idp"}, {"allow_missing": {}}]}}}]}}
        return http_listener_config(listener_port=listener_port, admin_port=admin_port, http_filters=[jwt_filter],
                                    routes=[{"match": {"prefix": "/"}, "route": {"cluster": "up"}}],
                                    clusters=[static_cluster("up", upstream.port)])

    env = start_envoy_config(tmp_path, make, ready_path="/ready")
    try:
        token = idp.token("alice")
        spoof = b64(SPOOFED)
        for sent_token, expect in ((token, "alice"), (None, "admin")):
            upstream.clear()
            headers = [(NATIVE_PAYLOAD_HEADER, spoof)] + ([("authorization", f"Bearer {sent_token}")] if sent_token else [])
            status, _, data = _raw_multi(env.url, headers, b"{}")
            assert status == 200, (status, data[:200])
            (req,) = upstream.wait_for(1, timeout=5)
            values = req.header_values(NATIVE_PAYLOAD_HEADER)
            assert len(values) == 1, values
            decoded = json.loads(base64.urlsafe_b64decode(values[0] + "=" * (-len(values[0]) % 4)))
            assert decoded["sub"] == expect, decoded
    finally:
        env.stop()
        upstream.stop()
