"""Key rotation as the verifiers see it: the gateway Envoy is restarted with a new configured key
(MCP_JWT_SIGNING_KEY) at the same address while the verifiers keep running with their JWKS caches.

Verifiers (all fetch the JWKS over HTTP from the gateway, all on 127.0.0.1):
  fastmcp            examples/weather_server.py: FastMCP's JWTVerifier, `jwks_refresh_interval` = WINDOW
  jwt_authn          an Envoy with jwt_authn, `remote_jwks.cache_duration` = WINDOW
  pyjwt-cooldown     PyJWT's PyJWKClient, `cooldown_duration` = WINDOW
  pyjwt-no-cooldown  PyJWT's PyJWKClient, `cooldown_duration` = 0

test_switching_keys_is_refused_until_verifiers_refetch (README: "Rotating the signing key"):
  * right after the restart, a token signed with the new key is refused by every verifier that fetched the JWKS
    less than its window ago: FastMCP and PyJWKClient re-fetch on an unknown kid only once their
    refresh interval / cooldown has passed; jwt_authn never re-fetches on an unknown kid, only when
    `cache_duration` has expired. Only a PyJWKClient without cooldown accepts it at once;
  * meanwhile tokens signed with the old key are still accepted from the cache;
  * once the window has passed, every verifier has re-fetched: new-key tokens pass, old-key tokens are refused.
test_prepublished_key_is_accepted_at_once: the new public key is published (`additional_public_keys`) one window
  before the gateway signs with it: no verifier refuses anything at the switch.

The real defaults are 30 s (FastMCP), 30 s (PyJWKClient) and 10 min (jwt_authn); the tests shrink them to WINDOW.
"""

from __future__ import annotations

import json
import time

import jwt
import pytest
import requests
from cryptography.hazmat.primitives import serialization

from harness import JWKS_SUFFIX, free_port, rpc, start_envoy
from mcp_helpers import (
    VERIFIER_HEALTH_PATH,
    HttpLog,
    WeatherServer,
    envoy_yaml_plugin_config,
    jwt_authn_verifier_edit,
    kid_of,
    new_rsa,
    pem_of,
    run_sdk,
    stat_value,
    tool_json,
    unverified_claims,
)
from recording_upstream import RecordingUpstream

WINDOW = 8.0  # seconds; a restart and the checks after it must fit in it (they take about 2 s)
USER = {"x-user-id": "dave", "x-team-id": "team-red"}
JWKS_FETCHES = "cluster.mcp_gateway_jwks.upstream_rq_200"
EVERYONE = {"fastmcp": True, "jwt_authn": True, "pyjwt-cooldown": True, "pyjwt-no-cooldown": True}
NOBODY = {k: False for k in EVERYONE}


def public_pem(key) -> str:
    return key.public_key().public_bytes(serialization.Encoding.PEM,
                                         serialization.PublicFormat.SubjectPublicKeyInfo).decode()


class Rotation:
    """A gateway at a fixed address (restartable with another key) and four verifiers that keep running."""

    def __init__(self, workdir):
        self.workdir = workdir
        self.gateway_port = free_port()
        self.issuer = f"http://127.0.0.1:{self.gateway_port}"
        self.minted = RecordingUpstream().start()  # the gateway's upstream: genuine tokens are taken from here
        self.behind_verifier = RecordingUpstream().start()
        self.server = WeatherServer(workdir, extra_args=["--jwks-refresh-interval", str(WINDOW)])
        self.gateway = self.verifier = None
        self.restarts = 0

    def start(self, signing_key) -> "Rotation":
        self.verifier = start_envoy(
            self.workdir / "verifier", {}, self.behind_verifier.port, ready_path=VERIFIER_HEALTH_PATH,
            extra_edit=jwt_authn_verifier_edit(issuer=self.issuer, gateway_port=self.gateway_port,
                                               cache_duration=f"{WINDOW:g}s"))
        self.restart_gateway(signing_key)
        self.server.start(self.issuer)
        self.pyjwk_cooldown = jwt.PyJWKClient(self.issuer + JWKS_SUFFIX, lifespan=300, cooldown_duration=WINDOW)
        self.pyjwk_no_cooldown = jwt.PyJWKClient(self.issuer + JWKS_SUFFIX, lifespan=300, cooldown_duration=0)
        return self

    def restart_gateway(self, signing_key, also_publish=()) -> None:
        """(Re)start the gateway at the same address, signing with `signing_key` (from MCP_JWT_SIGNING_KEY) and
        also publishing the public keys `also_publish`."""
        if self.gateway is not None:
            self.gateway.stop()
        self.restarts += 1
        extra = {"additional_public_keys": [public_pem(k) for k in also_publish]} if also_publish else {}
        self.gateway = start_envoy(self.workdir / f"gateway-{self.restarts}",
                                   lambda url: {**envoy_yaml_plugin_config(), "issuer": url, **extra},
                                   self.minted.port, listener_port=self.gateway_port,
                                   env={"MCP_JWT_SIGNING_KEY": pem_of(signing_key)})
        published = {k["kid"] for k in requests.get(self.issuer + JWKS_SUFFIX, timeout=5).json()["keys"]}
        assert published == {kid_of(k) for k in (signing_key, *also_publish)}, published

    def stop(self) -> None:
        self.server.stop()
        for e in (self.gateway, self.verifier):
            if e is not None:
                e.stop()
        self.minted.stop()
        self.behind_verifier.stop()

    def mint(self, expected_key) -> str:
        """A genuine token from the gateway for a tools/call of whoami, signed with `expected_key`."""
        self.minted.clear()
        r = requests.post(self.gateway.url + "/mcp", data=json.dumps(rpc("tools/call", {"name": "whoami"})),
                          headers={"content-type": "application/json", **USER}, timeout=10)
        assert r.status_code == 200, (r.status_code, r.text[:300])
        (req,) = self.minted.wait_for(1)
        token = req.bearer_token()
        assert jwt.get_unverified_header(token)["kid"] == kid_of(expected_key)
        return token

    def jwks_fetches(self) -> int:
        """How often jwt_authn fetched the JWKS from the gateway."""
        return stat_value(self.verifier.admin_url, JWKS_FETCHES)

    # --- the verifiers' verdicts -------------------------------------------------------------------------------
    def fastmcp_accepts(self, token) -> bool:
        log = HttpLog()

        async def whoami(c):
            return await c.call_tool("whoami", {})

        try:
            seen = tool_json(run_sdk(self.server.url, whoami, token=token, mode="auto", log=log))
        except Exception:  # noqa: BLE001 - the SDK reports the 401 as an MCPError
            assert log.statuses[:1] == [401], log.exchanges
            return False
        assert seen["jti"] == unverified_claims(token)["jti"]
        return True

    def jwt_authn_accepts(self, token) -> bool:
        r = requests.post(self.verifier.url + "/mcp", data=json.dumps(rpc("tools/list")),
                          headers={"content-type": "application/json", "authorization": f"Bearer {token}"},
                          timeout=10)
        assert r.status_code in (200, 401), (r.status_code, r.text)
        if r.status_code == 401:
            assert r.text == "Jwks doesn't have key to match kid or alg from Jwt", r.text
        return r.status_code == 200

    def pyjwt_accepts(self, client, token) -> bool:
        try:
            key = client.get_signing_key_from_jwt(token)
        except jwt.PyJWKClientError as e:
            assert "Unable to find a signing key" in str(e), e
            return False
        jwt.decode(token, key.key, algorithms=["RS256"], audience="mcp", issuer=self.issuer)
        return True

    def verdicts(self, token) -> dict:
        return {"fastmcp": self.fastmcp_accepts(token), "jwt_authn": self.jwt_authn_accepts(token),
                "pyjwt-cooldown": self.pyjwt_accepts(self.pyjwk_cooldown, token),
                "pyjwt-no-cooldown": self.pyjwt_accepts(self.pyjwk_no_cooldown, token)}


@pytest.fixture
def rotation(tmp_path):
    r = Rotation(tmp_path)
    try:
        yield r
    finally:
        r.stop()


def within_window(since: float, what: str) -> None:
    elapsed = time.monotonic() - since
    assert elapsed < WINDOW, f"{what} took {elapsed:.1f}s, longer than the {WINDOW}s window this test observes: " \
                             f"raise WINDOW"


def test_switching_keys_is_refused_until_verifiers_refetch(rotation):
    key_a, key_b = new_rsa(), new_rsa()
    rot = rotation.start(key_a)

    # 1. key A: every verifier fetches the JWKS (key A) and accepts the gateway's token.
    t0 = time.monotonic()
    token_a = rot.mint(key_a)
    assert rot.verdicts(token_a) == EVERYONE
    primed = time.monotonic()
    assert rot.jwks_fetches() == 1

    # 2. rotation: the gateway restarts with key B at the same address; the verifiers keep running.
    rot.restart_gateway(key_b)
    token_b = rot.mint(key_b)
    new_key = rot.verdicts(token_b)
    old_key = rot.verdicts(token_a)  # issued before the restart, not expired yet
    within_window(t0, "the restart and the checks")
    assert new_key == {"fastmcp": False, "jwt_authn": False, "pyjwt-cooldown": False, "pyjwt-no-cooldown": True}
    assert old_key == {"fastmcp": True, "jwt_authn": True, "pyjwt-cooldown": True, "pyjwt-no-cooldown": False}
    assert rot.jwks_fetches() == 1, "jwt_authn went back to the gateway for an unknown kid"

    # 3. once every window has passed since the verifiers' fetch, each re-fetches and sees only key B.
    time.sleep(max(0.0, primed + WINDOW + 0.5 - time.monotonic()))
    assert rot.verdicts(token_b) == EVERYONE
    assert rot.verdicts(token_a) == NOBODY
    assert rot.jwks_fetches() == 2


def test_prepublished_key_is_accepted_at_once(rotation):
    key_a, key_b = new_rsa(), new_rsa()
    rot = rotation.start(key_a)

    # 1. key A, as before: every verifier caches a JWKS with key A only.
    token_a = rot.mint(key_a)
    assert rot.verdicts(token_a) == EVERYONE
    primed = time.monotonic()

    # 2. publish B's public key next to A (still signing with A), and let every verifier's window pass.
    rot.restart_gateway(key_a, also_publish=[key_b])
    time.sleep(max(0.0, primed + WINDOW + 0.5 - time.monotonic()))
    assert rot.verdicts(rot.mint(key_a)) == EVERYONE  # jwt_authn's cache had expired: it fetched A + B
    refreshed = time.monotonic()
    assert rot.jwks_fetches() == 2

    # 3. switch: sign with B, keep publishing A for the tokens still in flight. Nobody refuses anything.
    rot.restart_gateway(key_b, also_publish=[key_a])
    token_b = rot.mint(key_b)
    assert rot.verdicts(token_b) == EVERYONE
    assert rot.verdicts(token_a) == EVERYONE
    within_window(refreshed, "the switch and the checks")
    # jwt_authn accepted B from the JWKS it fetched before the switch.
    assert rot.jwks_fetches() == 2
