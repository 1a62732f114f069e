"""Token cache and filter metrics, through a real Envoy.

The cache reuses a token for requests whose claims (all but iat/nbf/exp/jti) are identical while enough of its
lifetime remains; `token_cache.max_entries: 0` switches it off. Metrics are read from Envoy's admin /stats, where
Envoy prefixes the filter's own metrics with `wasmcustom.` (wasm) or `dynamicmodulescustom.` (native):
harness.filter_stats knows which.
"""

from __future__ import annotations

import time

import jwt
import pytest
import requests

from harness import filter_stats, rpc, running_gateway, verify_with_discovery

IDENTITY = {"subject": ["header:x-user-id"], "email": ["header:x-user-email"], "actor": ["header:x-team-id"]}


def call(g, tool="get_weather", headers=None):
    r = requests.post(g.url + "/mcp", json=rpc("tools/call", {"name": tool}), headers=headers or {}, timeout=10)
    assert r.status_code == 200, r.text
    (req,) = g.upstream.requests
    g.upstream.clear()
    token = req.header("authorization").removeprefix("Bearer ")
    return token, verify_with_discovery(token, g.url, "mcp")


def stats(g) -> dict:
    return filter_stats(g.admin_url)


@pytest.fixture(scope="module")
def cached(tmp_path_factory):
    """ttl 4 s, reuse while >= 2 s remain, at most 2 entries; one worker so that one cache sees every request, and
    the worker's cache alone (the cache the workers share is tested below: it would bring back what LRU evicts)."""
    config = lambda url: {  # noqa: E731
        "issuer": url,
        "ttl_seconds": 4,
        "identity": IDENTITY,
        "token_cache": {"max_entries": 2, "min_remaining_seconds": 2, "shared_max_entries": 0},
    }
    with running_gateway(tmp_path_factory.mktemp("cached"), config, concurrency=1) as g:
        yield g


def test_identical_claims_reuse_the_token(cached):
    first, claims = call(cached, headers={"x-user-id": "reuse-1"})
    second, _ = call(cached, headers={"x-user-id": "reuse-1"})
    assert second == first
    assert claims["sub"] == "reuse-1"


@pytest.mark.parametrize("change", [
    {"tool": "other_tool"},
    {"headers": {"x-user-id": "reuse-2", "x-user-email": "x@example.com"}},
    {"headers": {"x-user-id": "reuse-2", "x-team-id": "team-x"}},
    {"headers": {"x-user-id": "someone-else"}},
], ids=["tool", "email", "actor", "user"])
def test_different_claims_never_share_a_token(cached, change):
    base, base_claims = call(cached, headers={"x-user-id": "reuse-2"})
    other, other_claims = call(cached, change.get("tool", "get_weather"), change.get("headers"))
    assert other != base
    assert other_claims["jti"] != base_claims["jti"]
    differing = {k for k in base_claims.keys() | other_claims.keys() if base_claims.get(k) != other_claims.get(k)}
    assert differing - {"iat", "nbf", "exp", "jti"}, "a fresh token must differ in claims, not just in time"


def test_token_is_replaced_when_too_little_life_remains(cached):
    first, claims = call(cached, headers={"x-user-id": "expiry"})
    # Reused while exp - now >= 2, i.e. up to iat + 2; wait until iat + 3.
    time.sleep(max(0.0, claims["iat"] + 3.1 - time.time()))
    second, later = call(cached, headers={"x-user-id": "expiry"})
    assert second != first
    assert later["iat"] >= claims["iat"] + 3
    assert later["exp"] - later["iat"] == 4


def test_least_recently_used_is_evicted(cached):
    a, _ = call(cached, headers={"x-user-id": "lru-a"})
    b, _ = call(cached, headers={"x-user-id": "lru-b"})
    assert call(cached, headers={"x-user-id": "lru-a"})[0] == a  # a is now the most recent
    call(cached, headers={"x-user-id": "lru-c"})  # evicts b (capacity 2)
    assert call(cached, headers={"x-user-id": "lru-a"})[0] == a
    assert call(cached, headers={"x-user-id": "lru-b"})[0] != b


def fresh_connection_call(g, user):
    """One request on its own connection (Envoy hands each new connection to one of its workers)."""
    with requests.Session() as s:
        r = s.post(g.url + "/mcp", json=rpc("tools/call", {"name": "get_weather"}), headers={"x-user-id": user},
                   timeout=10)
    assert r.status_code == 200, r.text
    return r


def test_workers_share_one_token_per_claim_set(tmp_path_factory):
    """Two workers, three users, twenty requests each on new connections: every claim set is minted once for the
    whole Envoy (the slots are many, so no two users share one), and the other worker reuses the token."""
    config = lambda url: {"issuer": url, "identity": IDENTITY,  # noqa: E731
                          "token_cache": {"shared_max_entries": 1_000_000, "shared_max_bytes": 1 << 30}}
    with running_gateway(tmp_path_factory.mktemp("shared"), config, concurrency=2) as g:
        before = stats(g)
        users = ["shared-a", "shared-b", "shared-c"]
        for _ in range(20):
            for user in users:
                fresh_connection_call(g, user)
        by_user = {}
        for req in g.upstream.requests:
            token = req.header("authorization").removeprefix("Bearer ")
            by_user.setdefault(verify_with_discovery(token, g.url, "mcp")["sub"], set()).add(token)
        assert {u: len(t) for u, t in by_user.items()} == {u: 1 for u in users}, "one token per user, on both workers"
        after = stats(g)
        assert after["tokens_minted"] - before.get("tokens_minted", 0) == 3
        assert after["token_cache_hits"] - before.get("token_cache_hits", 0) == 57
        # The second worker took each user's token from the shared cache (the chance that one worker got all
        # twenty connections of a user is 2 * 2^-20).
        assert after["token_cache_shared_hits"] - before.get("token_cache_shared_hits", 0) == 3


def test_without_the_shared_cache_each_worker_mints_for_itself(tmp_path_factory):
    config = lambda url: {"issuer": url, "identity": IDENTITY,  # noqa: E731
                          "token_cache": {"shared_max_entries": 0}}
    with running_gateway(tmp_path_factory.mktemp("unshared"), config, concurrency=2) as g:
        before = stats(g)
        for _ in range(20):
            fresh_connection_call(g, "unshared")
        after = stats(g)
        assert after["tokens_minted"] - before.get("tokens_minted", 0) == 2, "one per worker"
        assert after.get("token_cache_shared_hits", 0) == 0


def test_cache_off_gives_every_request_its_own_jti(tmp_path_factory):
    config = lambda url: {"issuer": url, "token_cache": {"max_entries": 0}}  # noqa: E731
    with running_gateway(tmp_path_factory.mktemp("nocache"), config, concurrency=1) as g:
        jtis = {call(g, headers={"x-user-id": "same"})[1]["jti"] for _ in range(5)}
        assert len(jtis) == 5
        assert stats(g).get("token_cache_hits") == 0
        assert stats(g)["tokens_minted"] == 5


def test_metrics_count_what_the_filter_did(tmp_path_factory):
    config = lambda url: {"issuer": url, "identity": IDENTITY}  # noqa: E731
    with running_gateway(tmp_path_factory.mktemp("metrics"), config, concurrency=1) as g:
        before = stats(g)
        for _ in range(3):
            call(g, headers={"x-user-id": "metrics"})
        call(g, headers={"x-user-id": "metrics-2"})
        assert requests.get(g.url + "/.well-known/openid-configuration", timeout=5).status_code == 200
        for bad, status in [(b"{", 400), (b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"a b"}}', 400)]:
            r = requests.post(g.url + "/mcp", data=bad, timeout=5)
            assert r.status_code == status
        assert requests.put(g.url + "/mcp", data=b"{}", timeout=5).status_code == 405
        after = stats(g)

        def delta(name):
            return after.get(name, 0) - before.get(name, 0)

        assert delta("tokens_minted") == 2
        assert delta("token_cache_hits") == 2
        # verify_with_discovery fetched discovery and JWKS once per call (4 calls), plus one explicit fetch.
        assert delta("discovery_served") == 5
        assert delta("jwks_served") == 4
        assert delta("refused.parse_error") == 1
        assert delta("refused.invalid_params") == 1
        assert delta("refused.method_not_allowed") == 1
        assert g.upstream.requests == []
        # One structured log line per refusal, naming the reason and the JSON-RPC id, never a token.
        log = g.envoy.log()
        assert "refused reason=invalid_params status=400 jsonrpc_id=1" in log
        assert "eyJ" not in log
