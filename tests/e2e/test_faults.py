"""Faults, end to end with a real Envoy running the built .wasm (issue 6, item 4).

  * MCP server down (its cluster points at a port that refuses connections) or slow (it answers after the route's
    1 s timeout): the client gets Envoy's own 503 / 504, and the token the filter minted for the request appears
    neither in the response (headers, body) nor in Envoy's log (info, wasm at debug) nor in its access log. The
    filter's counters still count the tokens it minted.
  * Configuration reload with a configured key keeps the `kid`:
      - LDS: the listener comes from a watched file; a new plugin configuration (another audience) is moved into
        place while requests flow; every token minted before, during and after verifies with one JWKS, the JWKS
        does not change, and the new audience takes effect;
      - hot restart: a second Envoy process (`--restart-epoch 1`, same base id and config) takes the sockets over
        from the first while requests flow; none fails, every token verifies with one JWKS, the kid is the same.
  * Many concurrent requests at `--concurrency 4` with mixed good and bad requests: nothing lost, nothing mixed up
    (each upstream request's token names exactly its own tool and user), every refusal exact, counters add up.
  * Fail closed (`fail_open: false`): an LDS update whose plugin configuration is invalid is rejected by Envoy
    (`lds.update_rejected`, the log names the field) and the previous listener keeps signing with the same key; a
    later valid update is applied. The crate denies unwrap/expect/panic by lint, and `make lint` enforces it.
    (Start-up with a bad configuration, where Envoy exits, is test_signer.py's test_bad_config_is_refused. A panic
    at request time cannot be provoked from outside (no request is known to reach one, and src/ is not changed for
    a test), so the request-time half of `fail_open: false` is not exercised here.)

The fault and hot-restart tests launch Envoy themselves (the harness always passes --disable-hot-restart and a fixed
log level); the others use the harness. Loopback only, every loop bounded.
"""

from __future__ import annotations

import contextlib
import copy
import gzip
import json
import os
import random
import re
import socket
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import jwt
import pytest
import requests
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from harness import (
    FILTER_CONFIG_REJECTED,
    LOG_COMPONENT,
    MCP_HEADERS,
    METRIC_PREFIX,
    JWKS_SUFFIX,
    REPO,
    WASM_FILTER_TYPE,
    Envoy,
    b64url_uint,
    build_envoy_config,
    built_filter,
    envoy_binary,
    filter_stats,
    listener_for_build,
    free_port,
    load_envoy_yaml,
    rfc7638_thumbprint,
    rpc,
    running_gateway,
    verify_with_discovery,
    wasm_filter_config,
)
from recording_upstream import RecordingUpstream

IDENTITY = {"subject": ["header:x-user-id"]}
PREFIX = METRIC_PREFIX
SLOW_ROUTE_TIMEOUT = "1s"
SLOW_UPSTREAM_DELAY = 3.0  # longer than the route timeout
LISTENER_TYPE = "type.googleapis.com/envoy.config.listener.v3.Listener"


# ----------------------------------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def rsa_key():
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def pem_of(key) -> str:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption()).decode()


def thumbprint_of(key) -> str:
    pub = key.public_key().public_numbers()
    return rfc7638_thumbprint({"n": b64url_uint(pub.n), "e": b64url_uint(pub.e)})


def admin_stats(envoy: Envoy, filter_re: str) -> dict:
    r = requests.get(envoy.admin_url + "/stats", params={"filter": filter_re, "format": "json"}, timeout=5)
    assert r.status_code == 200, r.text[:300]
    return {s["name"]: s["value"] for s in r.json()["stats"] if "name" in s and "value" in s}


def filter_counters(envoy: Envoy) -> dict:
    return filter_stats(envoy.admin_url)


def delta(before: dict, after: dict, name: str) -> int:
    return after.get(name, 0) - before.get(name, 0)


def get_jwks(base_url: str) -> dict:
    r = requests.get(base_url + JWKS_SUFFIX, timeout=5)
    assert r.status_code == 200, f"jwks: {r.status_code} {r.text[:200]!r}"
    return r.json()


def verify_with_jwks(token: str, jwks: dict, *, issuer: str, audience) -> dict:
    """PyJWT RS256 verification against one given JWKS (no re-fetch)."""
    kid = jwt.get_unverified_header(token).get("kid")
    matching = [k for k in jwks["keys"] if k.get("kid") == kid]
    assert len(matching) == 1, f"kid {kid!r} not (uniquely) in JWKS {[k.get('kid') for k in jwks['keys']]}"
    key = jwt.PyJWK(matching[0], algorithm="RS256")
    return jwt.decode(token, key=key.key, algorithms=["RS256"], audience=audience, issuer=issuer, leeway=5,
                      options={"require": ["exp", "iat", "nbf", "iss", "aud", "sub", "jti"]})


def echoed_token(response) -> str:
    """The token the recording upstream received, from its JSON echo."""
    auth = response.json()["authorization"]
    assert isinstance(auth, str) and auth.startswith("Bearer "), auth
    return auth.removeprefix("Bearer ")


def unverified(token: str) -> dict:
    return jwt.decode(token, options={"verify_signature": False})


def wasm_config_of_listener(listener: dict) -> dict:
    found = [f["typed_config"]["config"]
             for chain in listener["filter_chains"] for flt in chain["filters"]
             for f in flt.get("typed_config", {}).get("http_filters", [])
             if f.get("typed_config", {}).get("@type") == WASM_FILTER_TYPE]
    assert len(found) == 1, found
    return found[0]


def hcm_of(cfg: dict) -> dict:
    return cfg["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]


def wait_until(predicate, timeout: float, what: str, interval: float = 0.05):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


# ----------------------------------------------------------------------------------------------------------------
# an Envoy launcher for what the harness does not do (log levels, hot restart)
# ----------------------------------------------------------------------------------------------------------------
def launch(workdir: Path, cfg: dict, *, tag: str, plugin_config, concurrency: int = 1, hot_restart=None) -> Envoy:
    """Writes `cfg` and starts Envoy on it (own process group), logging at info with the wasm component at debug.
    `hot_restart`: the base-id and --restart-epoch arguments; without, hot restart is off and the base id is
    dynamic (as in the harness), so that several Envoys can run at once. Returns at once; see wait_serving."""
    built_filter()
    workdir.mkdir(parents=True, exist_ok=True)
    config_path = workdir / f"envoy-{tag}.yaml"
    config_path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    log_path = workdir / f"envoy-{tag}.log"
    env = dict(os.environ)
    env.pop("MCP_JWT_SIGNING_KEY", None)
    cmd = [envoy_binary(), "-c", str(config_path), "--concurrency", str(concurrency),
           "--log-level", "info", "--component-log-level", f"{LOG_COMPONENT}:debug", "--file-flush-interval-msec", "50",
           *(hot_restart if hot_restart is not None else ["--use-dynamic-base-id", "--disable-hot-restart"])]
    with open(log_path, "wb") as log_file:
        proc = subprocess.Popen(cmd, stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                cwd=str(workdir), start_new_session=True)
    return Envoy(proc, config_path=config_path, log_path=log_path,
                 admin_port=cfg["admin"]["address"]["socket_address"]["port_value"],
                 listener_port=cfg["static_resources"]["listeners"][0]["address"]["socket_address"]["port_value"],
                 plugin_config=plugin_config)


def wait_serving(envoy: Envoy, timeout: float = 30.0) -> None:
    """Until the JWKS answers 200 through the listener (the filter is configured on a worker)."""
    deadline = time.monotonic() + timeout
    last = None
    while True:
        assert envoy.alive(), f"envoy exited with {envoy.proc.returncode}; log:\n{envoy.log_tail()}"
        try:
            r = requests.get(envoy.url + JWKS_SUFFIX, timeout=2)
            last = r.status_code
            if r.status_code == 200:
                return
        except requests.RequestException as e:
            last = repr(e)
        assert time.monotonic() < deadline, f"JWKS not served within {timeout}s (last {last}); {envoy.log_tail()}"
        time.sleep(0.05)


# ----------------------------------------------------------------------------------------------------------------
# 1. MCP server down or slow
# ----------------------------------------------------------------------------------------------------------------
class SlowUpstream:
    """Records each request's Authorization header, then holds the request for SLOW_UPSTREAM_DELAY before answering
    (by then Envoy has timed the request out and closed the connection)."""

    def __init__(self):
        self.tokens: list = []
        self._release = threading.Event()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def _handle(self):
                length = int(self.headers.get("content-length") or 0)
                if length:
                    self.rfile.read(length)
                outer.tokens.append(self.headers.get("authorization"))
                outer._release.wait(SLOW_UPSTREAM_DELAY)
                with contextlib.suppress(OSError):
                    self.send_response(200)
                    self.send_header("content-length", "2")
                    self.end_headers()
                    self.wfile.write(b"{}")

            do_GET = do_POST = _handle

        class Server(ThreadingHTTPServer):
            daemon_threads = True

        self._server = Server(("127.0.0.1", 0), Handler)
        self.port = self._server.server_address[1]
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def stop(self):
        self._release.set()
        self._server.shutdown()
        self._server.server_close()


@pytest.fixture
def faulty_gateway(tmp_path):
    """Envoy whose default route's MCP server refuses connections, and whose /slow/ route (timeout 1 s) goes to a
    server that answers after 3 s. An access log (Envoy's default format) is written to access.log."""
    closed = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    closed.bind(("127.0.0.1", 0))  # bound, never listening: connections to it are refused, nobody else can take it
    slow = SlowUpstream()
    access_log = tmp_path / "access.log"
    admin_port, listener_port = free_port(), free_port()
    plugin = {"issuer": f"http://127.0.0.1:{listener_port}", "identity": IDENTITY}

    def edit(cfg):
        hcm = hcm_of(cfg)
        hcm["access_log"] = [{"name": "envoy.access_loggers.file", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog",
            "path": str(access_log)}}]
        routes = hcm["route_config"]["virtual_hosts"][0]["routes"]
        routes.insert(0, {"match": {"prefix": "/slow/"},
                          "route": {"cluster": "mcp_slow", "timeout": SLOW_ROUTE_TIMEOUT}})
        cfg["static_resources"]["clusters"].append({
            "name": "mcp_slow", "type": "STATIC", "connect_timeout": "2s",
            "load_assignment": {"cluster_name": "mcp_slow", "endpoints": [{"lb_endpoints": [{"endpoint": {
                "address": {"socket_address": {"address": "127.0.0.1", "port_value": slow.port}}}}]}]}})

    cfg = build_envoy_config(plugin, admin_port=admin_port, listener_port=listener_port,
                             upstream_port=closed.getsockname()[1], extra_edit=edit)
    envoy = launch(tmp_path, cfg, tag="faults", plugin_config=plugin)
    try:
        wait_serving(envoy)
        yield envoy, slow, access_log
    finally:
        envoy.stop()
        slow.stop()
        closed.close()


def assert_no_token_in_response(r, tokens=()):
    blob = "\n".join(f"{k}: {v}" for k, v in r.headers.items()) + "\n" + r.content.decode("latin-1")
    assert "eyJ" not in blob, f"a JWT-looking string is in the response:\n{blob}"
    assert "bearer" not in blob.lower(), f"a bearer credential is in the response:\n{blob}"
    for t in tokens:
        assert t not in blob


def test_server_down_or_slow_gives_envoys_error_and_never_leaks_the_token(faulty_gateway):
    envoy, slow, access_log = faulty_gateway
    before = filter_counters(envoy)

    # Down: 503 from Envoy (connection refused), after the filter signed the request.
    down = []
    for i in range(3):
        body = json.dumps(rpc("tools/call", {"name": f"down_tool_{i}"}, id=i))
        down.append(requests.post(envoy.url + "/mcp", data=body, headers={**MCP_HEADERS, "x-user-id": f"u{i}"},
                                  timeout=10))
    down.append(requests.get(envoy.url + "/mcp", headers={"accept": "text/event-stream", "x-user-id": "u-get"},
                             timeout=10))
    for r in down:
        assert r.status_code == 503, (r.status_code, r.text[:300])
        assert r.text.startswith("upstream connect error"), r.text[:300]
        assert_no_token_in_response(r)

    # Slow: 504 from Envoy once the route's timeout expires, although the server did get the signed request.
    slow_responses = []
    for i, (method, kw) in enumerate([("POST", {"data": json.dumps(rpc("tools/call", {"name": "slow_tool"}))}),
                                      ("GET", {})]):
        t0 = time.monotonic()
        r = requests.request(method, envoy.url + "/slow/mcp", headers={**MCP_HEADERS, "x-user-id": f"slow{i}"},
                             timeout=10, **kw)
        elapsed = time.monotonic() - t0
        assert r.status_code == 504, (r.status_code, r.text[:300])
        assert r.text == "upstream request timeout", r.text[:300]
        assert 0.9 <= elapsed < SLOW_UPSTREAM_DELAY, elapsed
        slow_responses.append(r)
    assert len(slow.tokens) == 2, slow.tokens
    slow_tokens = []
    for auth in slow.tokens:
        assert auth and auth.startswith("Bearer "), auth
        slow_tokens.append(auth.removeprefix("Bearer "))
    for token, sub, scope in zip(slow_tokens, ["slow0", "slow1"], ["mcp:tools/call mcp:tools/slow_tool:call",
                                                                   "mcp:stream"]):
        claims = verify_with_discovery(token, envoy.url, "mcp")  # a real token was minted and sent upstream
        assert (claims["sub"], claims["scope"]) == (sub, scope)
    for r in slow_responses:
        assert_no_token_in_response(r, slow_tokens)

    # The filter counted what it did: one token minted per request (all claims differ), nothing refused.
    after = filter_counters(envoy)
    assert delta(before, after, "tokens_minted") == 6, (before, after)
    assert delta(before, after, "token_cache_hits") == 0, (before, after)
    assert not [k for k in after if k.startswith("refused.") and delta(before, after, k)], after

    # The access log (default format) shows Envoy's upstream failure flags, and no credential.
    def access_lines():
        text = access_log.read_text() if access_log.exists() else ""
        return [ln for ln in text.splitlines() if "/mcp" in ln]

    lines = wait_until(lambda: (lambda ls: ls if len(ls) >= 6 else None)(access_lines()), 5, "6 access log lines")
    assert len([ln for ln in lines if '" 503 UF ' in ln]) == 4, lines
    assert len([ln for ln in lines if '" 504 UT ' in ln]) == 2, lines
    for text, name in [(access_log.read_text(), "access log"), (envoy.log(), "envoy log")]:
        assert "eyJ" not in text, f"a JWT-looking string is in the {name}"
        assert not any(t in text for t in slow_tokens), f"the minted token is in the {name}"
        assert not re.search(r"(?i)bearer\s", text), f"a bearer credential is in the {name}"


# ----------------------------------------------------------------------------------------------------------------
# 2a. LDS reload keeps the kid (and 4. an invalid LDS update is rejected: fail closed)
# ----------------------------------------------------------------------------------------------------------------
class LdsFile:
    """The listener, delivered by a file-based LDS that Envoy watches. `update` moves a new file into place."""

    def __init__(self, directory: Path):
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        self.path = directory / "lds.yaml"
        self.listener = None
        self._n = 0

    def edit(self, cfg: dict) -> None:
        """extra_edit for the harness: the static listener becomes the LDS file's only resource."""
        (listener,) = cfg["static_resources"].pop("listeners")
        self.listener = listener
        self._write(listener)
        cfg["node"] = {"id": "test-faults", "cluster": "test-faults"}
        cfg["dynamic_resources"] = {"lds_config": {"resource_api_version": "V3", "path_config_source": {
            "path": str(self.path), "watched_directory": {"path": str(self.dir)}}}}

    def _write(self, listener: dict) -> None:
        listener = listener_for_build(listener)  # the native build: the dynamic-modules filter, same plugin JSON
        self._n += 1
        tmp = self.dir / f".lds-{self._n}.tmp"
        tmp.write_text(yaml.safe_dump({"resources": [{"@type": LISTENER_TYPE, **listener}]}, sort_keys=False))
        os.rename(tmp, self.path)  # atomic: Envoy must never read a half-written file

    def update(self, plugin_config) -> None:
        listener = copy.deepcopy(self.listener)
        value = plugin_config if isinstance(plugin_config, str) else json.dumps(plugin_config)
        wasm_config_of_listener(listener)["configuration"]["value"] = value
        self._write(listener)


class Traffic:
    """Background client: sends one tools/call after another (a new connection each) until stopped or `limit`
    seconds passed; records (status, token or None, body prefix)."""

    def __init__(self, url: str, limit: float = 20.0):
        self.url = url
        self.limit = limit
        self.results: list = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        deadline = time.monotonic() + self.limit
        i = 0
        while not self._stop.is_set() and time.monotonic() < deadline:
            i += 1
            body = json.dumps(rpc("tools/call", {"name": f"traffic_{i}"}, id=i))
            try:
                r = requests.post(self.url + "/mcp", data=body, headers=MCP_HEADERS, timeout=5)
            except requests.RequestException as e:
                self.results.append((repr(e), None, ""))
                continue
            try:
                token = echoed_token(r) if r.status_code == 200 else None
            except (AssertionError, ValueError, KeyError) as e:  # 200 without a token: recorded as a failure
                self.results.append((f"200 without a token: {e!r}", None, r.text[:200]))
                continue
            self.results.append((r.status_code, token, r.text[:200]))
            time.sleep(0.005)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(timeout=10)

    def tokens(self) -> list:
        return [t for _, t, _ in list(self.results) if t]

    def failures(self) -> list:
        return [r for r in self.results if r[0] != 200]


@contextlib.contextmanager
def lds_gateway(tmp_path: Path, plugin_config: dict, concurrency: int = 2):
    lds = LdsFile(tmp_path / "lds")
    with running_gateway(tmp_path / "envoy", lambda url: {"issuer": url, **plugin_config},
                         concurrency=concurrency, extra_edit=lds.edit) as g:
        assert "listeners" not in yaml.safe_load(g.envoy.config_path.read_text())["static_resources"]
        yield g, lds


def lds_stats(g) -> dict:
    return {k.removeprefix("listener_manager.lds."): v
            for k, v in admin_stats(g.envoy, "^listener_manager\\.lds\\.update_").items()}


def aud_now(g) -> str:
    r = requests.post(g.url + "/mcp", data=json.dumps(rpc("tools/list")), headers=MCP_HEADERS, timeout=5)
    assert r.status_code == 200, (r.status_code, r.text[:200])
    return unverified(echoed_token(r))["aud"]


def test_lds_reload_with_a_configured_key_keeps_the_kid(tmp_path, rsa_key):
    with lds_gateway(tmp_path, {"audience": "mcp", "signing_key": pem_of(rsa_key)}) as (g, lds):
        jwks_before = get_jwks(g.url)
        (jwk,) = jwks_before["keys"]
        assert jwk["kid"] == thumbprint_of(rsa_key)
        stats_before = lds_stats(g)

        with Traffic(g.url) as traffic:
            wait_until(lambda: len(traffic.tokens()) >= 5, 10, "traffic before the reload")
            new_config = {"issuer": g.url, "audience": "mcp-v2", "signing_key": pem_of(rsa_key)}
            lds.update(new_config)
            wait_until(lambda: any(unverified(t)["aud"] == "mcp-v2" for t in traffic.tokens()), 10,
                       "a token with the new audience")
            n = len(traffic.results)
            wait_until(lambda: len(traffic.results) >= n + 10, 10, "traffic after the reload")

        assert traffic.failures() == [], traffic.failures()[:5]
        tokens = traffic.tokens()
        auds = [unverified(t)["aud"] for t in tokens]
        assert auds[0] == "mcp" and auds[-1] == "mcp-v2", auds
        assert set(auds) == {"mcp", "mcp-v2"}, set(auds)
        for _ in range(4):
            assert aud_now(g) == "mcp-v2"

        stats_after = lds_stats(g)
        assert delta(stats_before, stats_after, "update_success") == 1, (stats_before, stats_after)
        assert delta(stats_before, stats_after, "update_rejected") == 0, (stats_before, stats_after)

        jwks_after = get_jwks(g.url)
        assert jwks_after == jwks_before, "the JWKS changed across the reload"
        for token in tokens:  # one JWKS verifies every token minted before, during and after the reload
            assert jwt.get_unverified_header(token)["kid"] == jwk["kid"]
            verify_with_jwks(token, jwks_before, issuer=g.url, audience=unverified(token)["aud"])
        assert "eyJ" not in g.envoy.log()


def test_invalid_lds_update_is_rejected_and_the_old_listener_keeps_signing(tmp_path):
    # No configured key: the generated key, shared by the workers, also survives listener updates in one process.
    with lds_gateway(tmp_path, {"audience": "mcp", "ttl_seconds": 300}) as (g, lds):
        jwks_before = get_jwks(g.url)
        (jwk,) = jwks_before["keys"]
        stats_before = lds_stats(g)

        with Traffic(g.url) as traffic:
            wait_until(lambda: len(traffic.tokens()) >= 5, 10, "traffic before the update")
            lds.update({"issuer": g.url, "audience": "mcp-bad", "ttl_seconds": 0})
            wait_until(lambda: lds_stats(g).get("update_rejected", 0) > stats_before.get("update_rejected", 0), 10,
                       "lds.update_rejected")
            n = len(traffic.results)
            wait_until(lambda: len(traffic.results) >= n + 10, 10, "traffic after the rejected update")

        stats_after = lds_stats(g)
        assert delta(stats_before, stats_after, "update_rejected") == 1, (stats_before, stats_after)
        assert delta(stats_before, stats_after, "update_success") == 0, (stats_before, stats_after)
        log = g.envoy.log()
        assert "invalid plugin configuration: field `ttl_seconds`" in log, g.envoy.log_tail()
        assert f"lds: listener 'mcp_ingress' config rejected: {FILTER_CONFIG_REJECTED}" in log, g.envoy.log_tail()

        # The previous listener kept signing throughout, with its own configuration and the same key.
        assert traffic.failures() == [], traffic.failures()[:5]
        assert get_jwks(g.url) == jwks_before
        for token in traffic.tokens():
            claims = verify_with_jwks(token, jwks_before, issuer=g.url, audience="mcp")
            assert claims["exp"] - claims["iat"] == 300
            assert jwt.get_unverified_header(token)["kid"] == jwk["kid"]
        # Nothing reached the server without a token that verifies.
        for req in g.upstream.requests:
            verify_with_jwks(req.bearer_token(), jwks_before, issuer=g.url, audience="mcp")

        # A valid update afterwards is applied.
        lds.update({"issuer": g.url, "audience": "mcp-fixed", "ttl_seconds": 300})
        wait_until(lambda: aud_now(g) == "mcp-fixed", 10, "the valid update to take effect")
        assert delta(stats_before, lds_stats(g), "update_success") == 1
        assert get_jwks(g.url) == jwks_before


# ----------------------------------------------------------------------------------------------------------------
# 2b. hot restart keeps the kid
# ----------------------------------------------------------------------------------------------------------------
def test_hot_restart_with_a_configured_key_keeps_the_kid(tmp_path, rsa_key):
    upstream = RecordingUpstream().start()
    admin_port, listener_port = free_port(), free_port()
    url = f"http://127.0.0.1:{listener_port}"
    plugin = {"issuer": url, "signing_key": pem_of(rsa_key)}
    cfg = build_envoy_config(plugin, admin_port=admin_port, listener_port=listener_port, upstream_port=upstream.port)
    timing = ["--drain-time-s", "1", "--parent-shutdown-time-s", "2"]
    base_id_path = tmp_path / "base-id"
    parent = child = None
    base_id = None
    try:
        parent = launch(tmp_path, cfg, tag="epoch0", plugin_config=plugin, hot_restart=[
            "--use-dynamic-base-id", "--base-id-path", str(base_id_path), "--restart-epoch", "0", *timing])
        wait_serving(parent)
        base_id = int(base_id_path.read_text().strip())
        jwks_before = get_jwks(url)
        (jwk,) = jwks_before["keys"]
        assert jwk["kid"] == thumbprint_of(rsa_key)
        assert admin_stats(parent, "^server\\.hot_restart_epoch$") == {"server.hot_restart_epoch": 0}

        results = []  # (phase, status, token)
        deadline = time.monotonic() + 20

        def one(phase, i):
            body = json.dumps(rpc("tools/call", {"name": f"hr_tool_{i}"}, id=i))
            try:
                r = requests.post(url + "/mcp", data=body, headers=MCP_HEADERS, timeout=5)
                results.append((phase, r.status_code, echoed_token(r) if r.status_code == 200 else r.text[:200]))
            except requests.RequestException as e:
                results.append((phase, repr(e), None))

        i = 0
        for _ in range(5):
            i += 1
            one("before", i)
        child = launch(tmp_path, cfg, tag="epoch1", plugin_config=plugin, hot_restart=[
            "--base-id", str(base_id), "--restart-epoch", "1", *timing])
        while parent.alive():  # the handover: the child starts, takes the sockets, the parent drains and exits
            assert time.monotonic() < deadline, f"epoch 0 did not exit; child log:\n{child.log_tail()}"
            assert child.alive(), f"epoch 1 exited with {child.proc.returncode}:\n{child.log_tail()}"
            i += 1
            one("handover", i)
            time.sleep(0.005)
        for _ in range(10):
            i += 1
            one("after", i)

        assert parent.proc.returncode == 0, parent.log_tail()
        assert child.alive(), child.log_tail()
        assert f"initializing epoch 1 (base id={base_id}" in child.log(), child.log_tail()
        assert admin_stats(child, "^server\\.hot_restart_epoch$") == {"server.hot_restart_epoch": 1}
        failures = [r for r in results if r[1] != 200]
        assert failures == [], failures[:5]
        phases = {p: sum(1 for r in results if r[0] == p) for p in ("before", "handover", "after")}
        assert all(phases.values()), phases

        jwks_after = get_jwks(url)
        assert jwks_after == jwks_before, "the JWKS changed across the hot restart"
        for phase, _, token in results:
            claims = verify_with_jwks(token, jwks_after, issuer=url, audience="mcp")
            assert jwt.get_unverified_header(token)["kid"] == jwk["kid"], phase
            assert claims["scope"].startswith("mcp:tools/call mcp:tools/hr_tool_")
        assert len(upstream.requests) == len(results)
    finally:
        for e in (child, parent):
            if e is not None:
                e.stop()
        upstream.stop()
        if base_id is not None:  # Envoy leaves its hot-restart shared memory behind; remove the one we made
            with contextlib.suppress(FileNotFoundError):
                os.unlink(f"/dev/shm/envoy_shared_memory_{base_id * 10}")


# ----------------------------------------------------------------------------------------------------------------
# 3. concurrency: nothing lost, nothing mixed up
# ----------------------------------------------------------------------------------------------------------------
def build_mix():
    """400 requests: (req_id, kind, method, path, headers, body, expectation)."""
    mix = []

    def add(kind, method, headers, body, expect):
        rid = f"r{len(mix):04d}"
        mix.append({"id": rid, "kind": kind, "method": method, "headers": {**headers, "x-req-id": rid},
                    "body": body, "expect": expect})

    for i in range(200):  # a tool and a user of its own
        body = json.dumps(rpc("tools/call", {"name": f"tool_{i}", "arguments": {"i": i}}, id=i)).encode()
        add("good", "POST", {**MCP_HEADERS, "x-user-id": f"user-{i}"}, body,
            {"sub": f"user-{i}", "scope": f"mcp:tools/call mcp:tools/tool_{i}:call"})
    for i in range(30):  # identical claims: the per-worker token cache may answer
        body = json.dumps(rpc("tools/call", {"name": "shared_tool"}, id=1000 + i)).encode()
        add("good", "POST", {**MCP_HEADERS, "x-user-id": "shared-user"}, body,
            {"sub": "shared-user", "scope": "mcp:tools/call mcp:tools/shared_tool:call"})
    for i in range(50):  # GET: the SSE stream
        add("good", "GET", {"accept": "text/event-stream", "x-user-id": f"getter-{i}"}, None,
            {"sub": f"getter-{i}", "scope": "mcp:stream"})
    for i in range(40):  # a tool name with a space (scope injection)
        body = json.dumps(rpc("tools/call", {"name": f"tool_{i} admin"}, id=2000 + i)).encode()
        add("bad", "POST", {**MCP_HEADERS, "x-user-id": f"user-{i}"}, body,
            {"status": 400, "code": -32602, "rpc_id": 2000 + i, "reason": "invalid_params"})
    for i in range(40):  # malformed JSON
        body = b'{"jsonrpc":"2.0","id":%d,"method":"tools/call","params":{"name":"tool_%d"}' % (3000 + i, i)
        add("bad", "POST", {**MCP_HEADERS, "x-user-id": f"user-{i}"}, body,
            {"status": 400, "code": -32700, "rpc_id": None, "reason": "parse_error"})
    for i in range(15):  # a method MCP does not use
        body = json.dumps(rpc("tools/call", {"name": f"tool_{i}"}, id=4000 + i)).encode()
        add("bad", "PUT", {**MCP_HEADERS, "x-user-id": f"user-{i}"}, body,
            {"status": 405, "code": -32600, "rpc_id": None, "reason": "method_not_allowed"})
    for i in range(15):  # a GET with a body
        add("bad", "GET", {"accept": "text/event-stream", "x-user-id": f"getter-{i}"}, b'{"x":1}',
            {"status": 400, "code": -32600, "rpc_id": None, "reason": "unexpected_body"})
    for i in range(10):  # a compressed body the filter cannot read
        body = gzip.compress(json.dumps(rpc("tools/call", {"name": f"tool_{i}"}, id=5000 + i)).encode())
        add("bad", "POST", {**MCP_HEADERS, "content-encoding": "gzip", "x-user-id": f"user-{i}"}, body,
            {"status": 415, "code": -32600, "rpc_id": None, "reason": "unsupported_encoding"})
    assert len(mix) == 400
    random.Random(6).shuffle(mix)
    return mix


def test_concurrent_mixed_requests_lose_nothing_and_mix_nothing_up(tmp_path):
    workers = 4
    with running_gateway(tmp_path, lambda url: {"issuer": url, "identity": IDENTITY}, concurrency=workers) as g:
        mix = build_mix()
        before = filter_counters(g.envoy)

        def send(item):
            # requests without a session: a new connection each, so the kernel spreads them over the workers
            r = requests.request(item["method"], g.url + "/mcp", headers=item["headers"], data=item["body"],
                                 timeout=30)
            return item, r.status_code, dict(r.headers), r.content

        with ThreadPoolExecutor(max_workers=16) as pool:
            outcomes = list(pool.map(send, mix))
        after = filter_counters(g.envoy)
        assert len(outcomes) == len(mix)

        good = [m for m in mix if m["kind"] == "good"]
        bad = [m for m in mix if m["kind"] == "bad"]
        # Every client got its own answer: the upstream's echo of its own request, or its exact refusal.
        for item, status, headers, content in outcomes:
            if item["kind"] == "good":
                assert status == 200, (item["id"], status, content[:300])
                echo = json.loads(content)
                assert echo["headers"].get("x-req-id") == item["id"], (item["id"], echo["headers"])
                assert echo["method"] == item["method"]
                assert echo["body"].encode() == (item["body"] or b"")
            else:
                exp = item["expect"]
                assert status == exp["status"], (item["id"], exp, status, content[:300])
                assert headers.get("content-type", "").split(";")[0] == "application/json", headers
                data = json.loads(content)
                assert set(data) == {"jsonrpc", "id", "error"}, data
                assert data["error"]["code"] == exp["code"], (item["id"], exp, data)
                assert data["id"] == exp["rpc_id"], (item["id"], exp, data)

        # Every good request reached the upstream exactly once, nothing of a bad one did, nothing else arrived.
        records = g.upstream.requests
        by_id = {}
        for rec in records:
            (rid,) = rec.header_values("x-req-id")
            by_id.setdefault(rid, []).append(rec)
        assert len(records) == len(good), (len(records), len(good))
        assert sorted(by_id) == sorted(m["id"] for m in good)
        assert all(len(v) == 1 for v in by_id.values())

        # Each forwarded request carries one token, verified with the one JWKS, naming exactly its own tool and user.
        jwks = get_jwks(g.url)
        assert len(jwks["keys"]) == 1
        jtis_by_claims = {}
        for m in good:
            (rec,) = by_id[m["id"]]
            assert len(rec.header_values("authorization")) == 1
            assert rec.header_values("x-user-id") == [], "the identity header must not reach the upstream"
            assert rec.method == m["method"] and rec.body == (m["body"] or b"")
            claims = verify_with_jwks(rec.bearer_token(), jwks, issuer=g.url, audience="mcp")
            assert (claims["sub"], claims["scope"]) == (m["expect"]["sub"], m["expect"]["scope"]), (m["id"], claims)
            jtis_by_claims.setdefault((claims["sub"], claims["scope"]), set()).add(claims["jti"])
        # A jti is never shared between different claims (a cached token is only reused for identical claims).
        all_jtis = [j for s in jtis_by_claims.values() for j in s]
        assert len(all_jtis) == len(set(all_jtis))

        # The counters add up to what was sent.
        minted, hits = delta(before, after, "tokens_minted"), delta(before, after, "token_cache_hits")
        assert minted + hits == len(good), (minted, hits, len(good))
        distinct_claims = 200 + 1 + 50
        assert distinct_claims <= minted <= distinct_claims + workers - 1, (minted, hits)  # shared: <= 1 per worker
        expected_refusals = {}
        for m in bad:
            expected_refusals[m["expect"]["reason"]] = expected_refusals.get(m["expect"]["reason"], 0) + 1
        refused = {k.removeprefix("refused."): delta(before, after, k) for k in after if k.startswith("refused.")}
        refused = {k: v for k, v in refused.items() if v}
        assert refused == expected_refusals, (refused, expected_refusals)

        # The load was spread over every worker.
        per_worker = admin_stats(g.envoy, f"^listener\\.127\\.0\\.0\\.1_{g.envoy.listener_port}\\.worker_"
                                          f"[0-9]+\\.downstream_cx_total$")
        assert len(per_worker) == workers and all(v > 0 for v in per_worker.values()), per_worker

        # One structured log line per refusal, and no token in the log.
        def refusal_lines():
            return re.findall(r"refused reason=(\w+) status=(\d+)", g.envoy.log())

        wait_until(lambda: len(refusal_lines()) >= len(bad), 5, "one log line per refusal")
        logged = {}
        for reason, _ in refusal_lines():
            logged[reason] = logged.get(reason, 0) + 1
        assert logged == expected_refusals, logged
        assert "eyJ" not in g.envoy.log()


# ----------------------------------------------------------------------------------------------------------------
# 4. fail closed: the lint policy
# ----------------------------------------------------------------------------------------------------------------
def test_the_crate_denies_panics_by_lint_and_make_lint_enforces_it():
    lib = (REPO / "src/lib.rs").read_text()
    assert re.search(r"#!\[(cfg_attr\(not\(test\),\s*)?deny\(clippy::unwrap_used,\s*clippy::expect_used,\s*"
                     r"clippy::panic\)\)?\]", lib), "src/lib.rs must deny clippy::unwrap_used, expect_used, panic"
    makefile = (REPO / "Makefile").read_text()
    lint = re.search(r"^lint:[^\n]*\n((?:\t.*\n)+)", makefile, re.M)
    assert lint, "Makefile has no lint target"
    assert re.search(r"cargo clippy .*--target \$\(TARGET\) --lib -- -D warnings", lint.group(1)), lint.group(1)
    # An independent look at the code the lint covers (non-test code): no unwrap/expect/panic in any module, in
    # every folder of src/. A file declared as a test-only module (`#[cfg(test)] mod tests;`) is test code.
    sources = sorted((REPO / "src").rglob("*.rs"))
    assert len(sources) > 20 and any(p.parent != REPO / "src" for p in sources), sources
    test_files = set()
    for path in sources:
        # Test-only modules: `#[cfg(test)] mod x;`, and the native module's test hooks, which only the
        # `native-test-hooks` feature compiles (never a shipped build: `make build-native` keeps it apart).
        test_only = r"^#\[cfg\((?:test|feature = \"native-test-hooks\")\)\]\s*\n\s*(?:pub(?:\(crate\))? )?mod (\w+);"
        for name in re.findall(test_only, path.read_text(), re.M):
            folder = path.parent if path.name in ("mod.rs", "lib.rs") else path.with_suffix("")
            test_files.add(folder / f"{name}.rs")
    for path in sources:
        if path in test_files:
            continue
        test_module = r"^#\[cfg\(test\)\]\s*\n(?:pub(?:\(crate\))? )?mod \w+ \{"
        code = re.split(test_module, path.read_text(), maxsplit=1, flags=re.M)[0]
        code = re.sub(r"//.*", "", code)
        found = re.findall(r"\.unwrap\(\)|\.expect\(|\bpanic!|\bunreachable!|\btodo!|\bunimplemented!", code)
        assert not found, f"{path.relative_to(REPO)}: {found}"
    # And the shipped Envoy config fails closed.
    assert wasm_filter_config(load_envoy_yaml())["fail_open"] is False
