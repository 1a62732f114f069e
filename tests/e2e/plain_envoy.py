"""A real Envoy run from a config a test writes itself (no wasm filter): for checking the test parts that sit around
the gateway (an authorization server's JWKS in Envoy's own jwt_authn, for example) on their own.

    env = start_envoy_config(tmp_path, build_cfg(listener_port, admin_port), ready_path="/healthz")
    ... requests.get(env.url + "/x") ...
    env.stop()
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import requests
import yaml

from harness import Envoy, EnvoyStartupError, envoy_binary, free_port

HCM_TYPE = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
ROUTER_TYPE = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
JWT_AUTHN_TYPE = "type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication"


def static_cluster(name: str, port: int) -> dict:
    return {"name": name, "type": "STATIC", "connect_timeout": "2s",
            "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": [
                {"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": port}}}}]}]}}


def http_listener_config(*, listener_port: int, admin_port: int, http_filters: list, routes: list,
                         clusters: list) -> dict:
    """One HTTP listener on 127.0.0.1 with `http_filters` (the router is appended) and `routes`."""
    return {
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin_port}}},
        "static_resources": {
            "listeners": [{
                "name": "test",
                "address": {"socket_address": {"address": "127.0.0.1", "port_value": listener_port}},
                "filter_chains": [{"filters": [{
                    "name": "envoy.filters.network.http_connection_manager",
                    "typed_config": {
                        "@type": HCM_TYPE, "stat_prefix": "test",
                        "route_config": {"name": "test", "virtual_hosts": [
                            {"name": "all", "domains": ["*"], "routes": routes}]},
                        "http_filters": [*http_filters,
                                         {"name": "envoy.filters.http.router",
                                          "typed_config": {"@type": ROUTER_TYPE}}],
                    }}]}],
            }],
            "clusters": clusters,
        },
    }


def start_envoy_config(workdir: Path, make_config, *, ready_path: str, timeout: float = 30.0) -> Envoy:
    """Write `make_config(listener_port, admin_port)` as YAML, start Envoy on it, and return once admin /ready is
    200 and GET `ready_path` through the listener answers 200."""
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    listener_port, admin_port = free_port(), free_port()
    cfg_path = workdir / f"envoy-{listener_port}.yaml"
    cfg_path.write_text(yaml.safe_dump(make_config(listener_port, admin_port), sort_keys=False))
    log_path = workdir / f"envoy-{listener_port}.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([envoy_binary(), "-c", str(cfg_path), "--concurrency", "1", "--log-level", "warn",
                                 "--use-dynamic-base-id", "--disable-hot-restart"],
                                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=str(workdir),
                                start_new_session=True)
    env = Envoy(proc, config_path=cfg_path, log_path=log_path, admin_port=admin_port, listener_port=listener_port,
                plugin_config=None)
    deadline = time.monotonic() + timeout
    last = None
    while True:
        if not env.alive():
            raise EnvoyStartupError(f"envoy exited with {proc.returncode}:\n{env.log_tail()}")
        try:
            if requests.get(env.admin_url + "/ready", timeout=1).status_code == 200:
                r = requests.get(env.url + ready_path, timeout=2)
                last = r.status_code
                if r.status_code == 200:
                    return env
        except requests.RequestException as e:
            last = repr(e)
        if time.monotonic() > deadline:
            env.stop()
            raise EnvoyStartupError(f"envoy not ready within {timeout}s (last: {last}):\n{env.log_tail()}")
        time.sleep(0.05)
