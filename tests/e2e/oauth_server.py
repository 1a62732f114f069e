"""A real OAuth 2.1 / OIDC authorization server for the end-to-end tests: node `oidc-provider` (tests/e2e/oauth/,
installed by `make oauth-deps`), started on a free 127.0.0.1 port with a JSON config this module writes.

    as_ = OAuthServer(tmp_path, resources={"http://127.0.0.1:P/mcp": {"scopes": ["mcp:tools/call"]}},
                      clients=[{"client_id": "svc", "client_secret": secret_of("svc")}]).start()
    tok = as_.client_credentials("svc", resource="http://127.0.0.1:P/mcp", scope="mcp:tools/call")
    as_.introspect(tok["access_token"], client=("gateway", secret))
    code, state, iss = as_.complete_authorization(authorization_url, redirect_uri)   # headless auth code + PKCE
    as_.stop()

The pytest fixture `oauth_server` (re-exported by conftest.py) is a factory with the same arguments that stops every
server it started. See tests/e2e/oauth/server.mjs for what the server does and its config format.

The signing keys (RSA-2048 for RS256, P-256 for ES256) are generated here, per server, and handed to the server in a
0600 file in the test's tmp dir: a test can forge an *expired* token with the real key (`sign()`), which a verifier
must refuse for its `exp` alone. Client secrets are random per run; nothing here prints them.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import secrets
import subprocess
import time
from pathlib import Path
from urllib.parse import parse_qs, urljoin, urlparse

import jwt
import pytest
import requests
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from harness import REPO, free_port, rfc7638_thumbprint, stop_process

OAUTH_DIR = REPO / "tests" / "e2e" / "oauth"
SERVER_MJS = OAUTH_DIR / "server.mjs"
STARTUP_TIMEOUT = 30.0


def node_binary() -> str:
    return os.environ.get("NODE_BIN", "node")


def require_node_modules(directory: Path, package: str, make_target: str) -> None:
    """Fail (never skip) with the make target to run when an npm project's dependencies are not installed."""
    if not (directory / "node_modules" / package / "package.json").exists():
        raise AssertionError(f"{directory}/node_modules/{package} is missing: run `make {make_target}`")


def new_secret() -> str:
    return secrets.token_urlsafe(32)


def _ec_thumbprint(jwk: dict) -> str:
    canonical = json.dumps({"crv": jwk["crv"], "kty": "EC", "x": jwk["x"], "y": jwk["y"]}, separators=(",", ":"),
                           sort_keys=True)
    return base64.urlsafe_b64encode(hashlib.sha256(canonical.encode()).digest()).rstrip(b"=").decode()


class OAuthServer:
    """oidc-provider in a node subprocess. Arguments mirror server.mjs's config (see its header comment)."""

    def __init__(self, workdir: Path, *, resources: dict, clients: list, users: dict | None = None,
                 default_user: str | None = None, registration: bool = False, jwt_introspection: bool = True,
                 access_token_ttl: int = 300, port: int | None = None):
        self.workdir = Path(workdir)
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.issuer = self.url
        self.rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.ec_key = ec.generate_private_key(ec.SECP256R1())
        self.config = {
            "port": self.port, "host": "127.0.0.1", "issuer": self.issuer,
            "resources": resources, "clients": clients, "users": users or {"alice": {"email": "alice@example.com"}},
            "registration": registration, "jwt_introspection": jwt_introspection,
            "access_token_ttl": access_token_ttl,
        }
        if default_user:
            self.config["default_user"] = default_user
        self.proc = None
        self.log_path = self.workdir / f"oauth-{self.port}.log"
        self.started_in = None  # seconds from spawn to discovery answering 200

    # ---- keys -----------------------------------------------------------------------------------------------
    def _private_jwks(self) -> dict:
        r = jwt.algorithms.RSAAlgorithm.to_jwk(self.rsa_key, as_dict=True)
        r.pop("key_ops", None)  # PyJWT marks a private JWK ["sign"]; a verifier must not see that on the public half
        r.update(alg="RS256", use="sig", kid=rfc7638_thumbprint(r))
        e = jwt.algorithms.ECAlgorithm.to_jwk(self.ec_key, as_dict=True)
        e.update(alg="ES256", use="sig", kid=_ec_thumbprint(e))
        self.kids = {"RS256": r["kid"], "ES256": e["kid"]}
        return {"keys": [r, e]}

    def sign(self, claims: dict, alg: str = "RS256", typ: str = "at+jwt") -> str:
        """A token signed with this server's own key (e.g. an expired one): what only the AS could have made."""
        key = self.rsa_key if alg == "RS256" else self.ec_key
        return jwt.encode(claims, key, algorithm=alg, headers={"kid": self.kids[alg], "typ": typ})

    # ---- process ------------------------------------------------------------------------------------------
    def start(self) -> "OAuthServer":
        require_node_modules(OAUTH_DIR, "oidc-provider", "oauth-deps")
        self.workdir.mkdir(parents=True, exist_ok=True)
        keys_file = self.workdir / f"oauth-{self.port}-keys.json"
        fd = os.open(keys_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(self._private_jwks(), f)
        config_file = self.workdir / f"oauth-{self.port}.json"
        fd = os.open(config_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # holds client secrets
        with os.fdopen(fd, "w") as f:
            json.dump({**self.config, "keys_file": str(keys_file)}, f)
        t0 = time.monotonic()
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen([node_binary(), str(SERVER_MJS), str(config_file)], stdout=log,
                                         stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=str(OAUTH_DIR),
                                         start_new_session=True)
        deadline = t0 + STARTUP_TIMEOUT
        while True:
            if self.proc.poll() is not None:
                raise AssertionError(f"oauth server exited with {self.proc.returncode}:\n{self.log()[-3000:]}")
            try:
                if requests.get(self.url + "/.well-known/oauth-authorization-server", timeout=1).status_code == 200:
                    self.started_in = time.monotonic() - t0
                    return self
            except requests.RequestException:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise AssertionError(f"oauth server not up within {STARTUP_TIMEOUT}s:\n{self.log()[-3000:]}")
            time.sleep(0.05)

    def stop(self) -> None:
        stop_process(self.proc)

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    # ---- the protocol, as a client speaks it ------------------------------------------------------------------
    def metadata(self, well_known: str = "oauth-authorization-server") -> dict:
        r = requests.get(f"{self.url}/.well-known/{well_known}", timeout=5)
        assert r.status_code == 200, (r.status_code, r.text[:300])
        return r.json()

    def jwks(self) -> dict:
        r = requests.get(self.metadata()["jwks_uri"], timeout=5)
        assert r.status_code == 200, (r.status_code, r.text[:300])
        return r.json()

    def token_request(self, data: dict, client: tuple | None = None) -> requests.Response:
        """POST the token endpoint; `client` = (id, secret) for client_secret_basic."""
        return requests.post(self.metadata()["token_endpoint"], data=data, auth=client, timeout=10)

    def client_credentials(self, client_id: str, secret: str, *, resource: str | None = None,
                           scope: str | None = None) -> dict:
        data = {"grant_type": "client_credentials"}
        if resource is not None:
            data["resource"] = resource
        if scope is not None:
            data["scope"] = scope
        r = self.token_request(data, (client_id, secret))
        assert r.status_code == 200, f"client_credentials: {r.status_code} {r.text[:300]}"
        return r.json()

    def introspect(self, token: str, client: tuple) -> requests.Response:
        return requests.post(self.metadata()["introspection_endpoint"], data={"token": token}, auth=client,
                             timeout=10)

    def revoke(self, token: str, client: tuple) -> requests.Response:
        return requests.post(self.metadata()["revocation_endpoint"], data={"token": token}, auth=client,
                             timeout=10)

    def complete_authorization(self, authorization_url: str, redirect_uri: str, *, max_hops: int = 12):
        """Drive an authorization request without a browser: follow the AS's redirects (keeping its cookies)
        through the test-only interaction until it redirects to `redirect_uri`; return (code, state, iss).
        Nothing listens on redirect_uri: the redirect itself is the answer."""
        s = requests.Session()
        url = authorization_url
        for _ in range(max_hops):
            r = s.get(url, allow_redirects=False, timeout=10)
            if r.status_code not in (302, 303):
                raise AssertionError(f"authorization stopped at {urlparse(url).path}: {r.status_code} {r.text[:300]}")
            url = urljoin(url, r.headers["location"])
            if url.startswith(redirect_uri):
                q = parse_qs(urlparse(url).query)
                if "error" in q:
                    raise AssertionError(f"authorization refused: {q}")
                one = lambda k: q[k][0] if k in q else None  # noqa: E731
                return one("code"), one("state"), one("iss")
        raise AssertionError(f"no redirect to {redirect_uri} within {max_hops} hops")


@pytest.fixture
def oauth_server(tmp_path):
    """Factory: oauth_server(resources=..., clients=..., ...) -> a started OAuthServer; all stopped at teardown."""
    started = []

    def factory(**kw):
        s = OAuthServer(tmp_path / f"oauth{len(started)}", **kw)
        started.append(s)
        return s.start()

    yield factory
    for s in started:
        s.stop()
