"""Several replicas of one gateway, as deploy/istio runs them (two replicas each, every one fed the same Secret).

A relying party (the MCP server) fetches ONE JWKS, from whichever replica its request for
<issuer>/.well-known/jwks.json happens to reach, and must then accept tokens minted by every replica. That works
only when all replicas sign with one configured key; with auto-generated keys each replica has its own key, and a
JWKS from one replica rejects the other's tokens. Both are shown here with two real Envoys (two workers each).
"""

from __future__ import annotations

import json

import jwt
import pytest
import requests
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from harness import MCP_HEADERS, JWKS_SUFFIX, b64url_uint, rfc7638_thumbprint, rpc, start_envoy
from recording_upstream import RecordingUpstream

KEY_ENV = "MCP_JWT_SIGNING_KEY"
# One issuer for every replica, as in deploy/istio (the public host where the JWKS is served).
PLUGIN = {
    "issuer": "https://mcp.example.com",
    "audience": "mcp",
    "identity": {"subject": ["header:x-user-id"]},
}
REQUESTS_PER_REPLICA = 4


@pytest.fixture(scope="module")
def shared_key():
    """The Secret's content: one RSA-2048 key, as PEM, generated here (never checked in)."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption()).decode()
    numbers = key.public_key().public_numbers()
    return pem, {"kty": "RSA", "n": b64url_uint(numbers.n), "e": b64url_uint(numbers.e)}


def mint_tokens(replicas: dict, upstream: RecordingUpstream) -> list:
    """Send MCP requests to every replica in turn; return [(replica name, token)] in sending order."""
    sent = []
    for i in range(REQUESTS_PER_REPLICA):
        for name, envoy in replicas.items():
            user = f"user-{name}-{i}"
            r = requests.post(envoy.url + "/mcp", json=rpc("tools/list", id=i), timeout=10,
                              headers={**MCP_HEADERS, "x-user-id": user})
            assert r.status_code == 200, f"replica {name}: {r.status_code} {r.text[:200]}"
            sent.append((name, user))
    seen = upstream.wait_for(len(sent))
    assert len(seen) == len(sent)
    # Pair tokens with requests by the (unverified) subject; verification below checks it again. (The upstream may
    # not see x-user-id: the filter can strip identity headers.)
    by_user = {}
    for rec in seen:
        token = rec.bearer_token()
        assert token, "every request reaches the MCP server with a token"
        by_user[jwt.decode(token, options={"verify_signature": False})["sub"]] = token
    return [(name, user, by_user[user]) for name, user in sent]


def verify(token: str, jwks: dict) -> dict:
    """The relying party: RS256 only, the one JWKS it fetched, pinned issuer and audience."""
    keyset = jwt.PyJWKSet.from_dict(jwks)
    kid = jwt.get_unverified_header(token).get("kid")
    matching = [k for k in keyset.keys if k.key_id == kid]
    if not matching:
        raise jwt.InvalidKeyError(f"kid {kid!r} is not in the JWKS")
    return jwt.decode(token, matching[0].key, algorithms=["RS256"], audience=PLUGIN["audience"],
                      issuer=PLUGIN["issuer"], leeway=5,
                      options={"require": ["exp", "iat", "iss", "aud", "sub", "jti"]})


def test_replicas_sharing_the_secret_key_are_verified_with_one_jwks(shared_key, tmp_path):
    pem, public_jwk = shared_key
    with RecordingUpstream() as upstream:
        replicas = {}
        try:
            for name in ("a", "b"):  # both get the key the way the gateway pods do: the Secret, through the env
                replicas[name] = start_envoy(tmp_path / name, PLUGIN, upstream.port, concurrency=2,
                                             env={KEY_ENV: pem})
            jwks_a = requests.get(replicas["a"].url + JWKS_SUFFIX, timeout=5).json()  # fetched once, from A only
            tokens = mint_tokens(replicas, upstream)

            for name, user, token in tokens:
                claims = verify(token, jwks_a)
                assert claims["sub"] == user, f"token from replica {name}"
            assert {name for name, _, _ in tokens} == {"a", "b"}
            assert len({jwt.decode(t, options={"verify_signature": False})["jti"] for _, _, t in tokens}) == len(tokens)

            # Why it works: both replicas publish the same single key, whose kid is derived from the key itself.
            jwks_b = requests.get(replicas["b"].url + JWKS_SUFFIX, timeout=5).json()
            assert jwks_a == jwks_b
            (jwk,) = jwks_a["keys"]
            assert (jwk["n"], jwk["e"]) == (public_jwk["n"], public_jwk["e"])
            assert jwk["kid"] == rfc7638_thumbprint(public_jwk)
        finally:
            for envoy in replicas.values():
                envoy.stop()


def test_replicas_with_auto_generated_keys_cannot_share_a_jwks(tmp_path):
    """The negative case the README warns about: no configured key, so each replica generates its own at start.
    A relying party holding replica A's JWKS rejects every token from replica B."""
    with RecordingUpstream() as upstream:
        replicas = {}
        try:
            for name in ("a", "b"):
                replicas[name] = start_envoy(tmp_path / name, PLUGIN, upstream.port, concurrency=2)
            jwks_a = requests.get(replicas["a"].url + JWKS_SUFFIX, timeout=5).json()
            jwks_b = requests.get(replicas["b"].url + JWKS_SUFFIX, timeout=5).json()
            assert jwks_a["keys"][0]["kid"] != jwks_b["keys"][0]["kid"], "two processes, two generated keys"

            for name, user, token in mint_tokens(replicas, upstream):
                if name == "a":
                    assert verify(token, jwks_a)["sub"] == user
                else:
                    with pytest.raises(jwt.PyJWTError):
                        verify(token, jwks_a)
                    # Not just an unknown kid: A's key does not verify B's signature either.
                    with pytest.raises(jwt.InvalidSignatureError):
                        jwt.decode(token, jwt.PyJWK(jwks_a["keys"][0], algorithm="RS256").key,
                                   algorithms=["RS256"], audience=PLUGIN["audience"])
                    assert verify(token, jwks_b)["sub"] == user
        finally:
            for envoy in replicas.values():
                envoy.stop()
        assert json.dumps(jwks_a) != json.dumps(jwks_b)
