"""ES256 and EdDSA (`"algorithm"` in the plugin config), end to end: JWKS entries of the right key type, discovery
advertising the algorithm, and tokens accepted by PyJWT using only what discovery points at. RS256 stays the default.
"""

from __future__ import annotations

import base64
import hashlib
import json

import jwt
import pytest
import requests
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from harness import rpc, running_gateway

IDENTITY = {"subject": ["header:x-user-id"]}
THUMBPRINT_MEMBERS = {"EC": ("crv", "kty", "x", "y"), "OKP": ("crv", "kty", "x"), "RSA": ("e", "kty", "n")}


def thumbprint(jwk: dict) -> str:
    """RFC 7638, computed here independently of the filter."""
    canonical = json.dumps({m: jwk[m] for m in THUMBPRINT_MEMBERS[jwk["kty"]]}, separators=(",", ":"), sort_keys=True)
    return base64.urlsafe_b64encode(hashlib.sha256(canonical.encode()).digest()).rstrip(b"=").decode()


def verify(g, token: str, alg: str) -> dict:
    """Discovery -> jwks_uri -> key by kid -> PyJWT, accepting only `alg`."""
    disco = requests.get(g.url + "/.well-known/openid-configuration", timeout=5).json()
    assert disco["id_token_signing_alg_values_supported"] == [alg]
    jwks = requests.get(disco["jwks_uri"], timeout=5).json()
    header = jwt.get_unverified_header(token)
    assert header["alg"] == alg and header["typ"] == "JWT"
    (jwk,) = [k for k in jwks["keys"] if k["kid"] == header["kid"]]
    key = jwt.PyJWK(jwk, algorithm=alg)
    return jwt.decode(token, key=key.key, algorithms=[alg], audience="mcp", issuer=g.url,
                      options={"require": ["exp", "iat", "nbf", "iss", "aud", "sub", "jti"]})


def mint(g, tool="get_weather", user="alice") -> str:
    r = requests.post(g.url + "/mcp", json=rpc("tools/call", {"name": tool}), headers={"x-user-id": user}, timeout=10)
    assert r.status_code == 200, r.text
    (req,) = g.upstream.requests
    g.upstream.clear()
    return req.header("authorization").removeprefix("Bearer ")


def private_pem(key) -> str:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption()).decode()


@pytest.mark.parametrize("alg,kty,crv", [("ES256", "EC", "P-256"), ("EdDSA", "OKP", "Ed25519")])
def test_generated_key(tmp_path, alg, kty, crv):
    config = lambda url: {"issuer": url, "algorithm": alg, "identity": IDENTITY}  # noqa: E731
    with running_gateway(tmp_path, config, concurrency=2) as g:
        jwks = requests.get(g.url + "/.well-known/jwks.json", timeout=5).json()
        (jwk,) = jwks["keys"]
        assert (jwk["kty"], jwk["crv"], jwk["alg"], jwk["use"]) == (kty, crv, alg, "sig")
        assert "d" not in jwk, "the JWKS must never carry the private part"
        assert jwk["kid"] == thumbprint(jwk)
        for i in range(10):
            claims = verify(g, mint(g, tool=f"tool_{i}"), alg)
            assert claims["sub"] == "alice"
            assert claims["scope"] == f"mcp:tools/call mcp:tools/tool_{i}:call"
        # A verifier that pins RS256 (the default) refuses these tokens: algorithms are not interchangeable.
        with pytest.raises(jwt.InvalidTokenError):
            jwt.decode(mint(g, tool="other"), key=jwt.PyJWK(jwk, algorithm=alg).key, algorithms=["RS256"],
                       audience="mcp")


def test_configured_keys_and_their_pem_forms(tmp_path):
    ec_key = ec.generate_private_key(ec.SECP256R1())
    sec1 = ec_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                                serialization.NoEncryption()).decode()
    numbers = ec_key.public_key().public_numbers()
    ed_key = ed25519.Ed25519PrivateKey.generate()
    ed_public = ed_key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)

    def b64(raw: bytes) -> str:
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()

    cases = [
        ("ES256", sec1, {"x": b64(numbers.x.to_bytes(32, "big")), "y": b64(numbers.y.to_bytes(32, "big"))}),
        ("ES256", private_pem(ec_key), {"x": b64(numbers.x.to_bytes(32, "big"))}),
        ("EdDSA", private_pem(ed_key), {"x": b64(ed_public)}),
    ]
    kids = {}
    for i, (alg, pem, expected) in enumerate(cases):
        config = lambda url, alg=alg, pem=pem: {"issuer": url, "algorithm": alg, "signing_key": pem}  # noqa: E731
        with running_gateway(tmp_path / str(i), config) as g:
            (jwk,) = requests.get(g.url + "/.well-known/jwks.json", timeout=5).json()["keys"]
            for member, value in expected.items():
                assert jwk[member] == value, (alg, member)
            verify(g, mint(g), alg)
            kids.setdefault(alg, set()).add(jwk["kid"])
    assert len(kids["ES256"]) == 1, "SEC1 and PKCS#8 forms of one P-256 key must give one kid"


@pytest.mark.parametrize("alg,make_key", [
    ("ES256", lambda: ed25519.Ed25519PrivateKey.generate()),
    ("EdDSA", lambda: ec.generate_private_key(ec.SECP256R1())),
    ("RS256", lambda: ec.generate_private_key(ec.SECP256R1())),
], ids=["ES256-with-ed25519-key", "EdDSA-with-p256-key", "RS256-with-p256-key"])
def test_a_key_of_the_wrong_type_is_refused_at_load(envoy_expect_failure, upstream, alg, make_key):
    pem = private_pem(make_key())
    res = envoy_expect_failure({"algorithm": alg, "signing_key": pem})
    assert res.exited, "Envoy must refuse a key that does not match `algorithm`"
    assert "signing_key" in res.log()
    body = pem.splitlines()[1]
    assert body[:16] not in res.log(), "key material in Envoy's log"
