"""Run docker-compose.yml's services the way their containers would see the machine, without a Docker engine.

Started by tests/e2e/test_compose.py as `unshare --net --mount --fork python3 compose_netns.py PLAN.json`, so this
process is in a new network namespace (its own loopback: for services with `network_mode: host` it plays the host's
network, and the fixed ports of envoy.yaml cannot clash with anything else on this machine) and a new mount
namespace (the compose volumes are bind-mounted read-only at their container paths, /dev/shm is private as in a
container). Nothing here reads docker-compose.yml: the plan is what `docker-compose config` resolved.

PLAN.json:
  {"services": [{"name", "command": [...], "working_dir", "environment": {...},
                 "volumes": [{"source", "target", "read_only"}]}, ...],   # in start order
   "ready": [["http", URL, STATUS], ...],     # wait until each answers STATUS
   "client": {"command": [...], "working_dir"},
   "logs": DIR, "result": FILE}
Writes FILE: {"client_rc", "client_stdout", "client_stderr", "listening": [ports], "exited": {name: rc}}.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path


def run(*cmd):
    subprocess.run(cmd, check=True)


def listening_tcp_ports() -> list:
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except FileNotFoundError:
            continue
        for line in lines:
            fields = line.split()
            if fields[3] == "0A":  # TCP_LISTEN
                ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return sorted(ports)


def status_of(url: str) -> int | None:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, method="GET"), timeout=2) as resp:
            return resp.status
    except urllib.error.HTTPError as e:
        return e.code
    except (urllib.error.URLError, OSError):
        return None


def main(plan_path: str) -> None:
    plan = json.loads(Path(plan_path).read_text())
    logs = Path(plan["logs"])
    # Private mounts, a loopback of our own, a container-like /dev/shm (Envoy's hot-restart shared memory).
    run("mount", "--make-rprivate", "/")
    run("ip", "link", "set", "lo", "up")
    run("mount", "-t", "tmpfs", "tmpfs", "/dev/shm")
    roots = sorted({"/" + Path(v["target"]).parts[1] for s in plan["services"] for v in s["volumes"]})
    for root in roots:
        os.makedirs(root, exist_ok=True)
        run("mount", "-t", "tmpfs", "tmpfs", root)
    for service in plan["services"]:
        for v in service["volumes"]:
            target = Path(v["target"])
            target.parent.mkdir(parents=True, exist_ok=True)
            if Path(v["source"]).is_dir():
                target.mkdir(exist_ok=True)
            else:
                target.touch()
            run("mount", "--bind", v["source"], str(target))
            if v["read_only"]:
                run("mount", "-o", "remount,bind,ro", str(target))

    procs = {}
    try:
        for service in plan["services"]:
            env = {**os.environ, **service["environment"]}
            log = open(logs / f"{service['name']}.log", "wb")
            procs[service["name"]] = subprocess.Popen(service["command"], cwd=service["working_dir"], env=env,
                                                      stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + 90
        for _, url, status in plan["ready"]:
            while status_of(url) != status:
                dead = {n: p.returncode for n, p in procs.items() if p.poll() is not None}
                if dead or time.monotonic() > deadline:
                    raise SystemExit(f"not ready: {url} (exited: {dead})")
                time.sleep(0.2)
        client = subprocess.run(plan["client"]["command"], cwd=plan["client"]["working_dir"], capture_output=True,
                                text=True, timeout=60)
        listening = listening_tcp_ports()
        result = {"client_rc": client.returncode, "client_stdout": client.stdout, "client_stderr": client.stderr,
                  "listening": listening, "exited": {n: p.returncode for n, p in procs.items() if p.poll() is not None}}
        Path(plan["result"]).write_text(json.dumps(result))
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.terminate()
        for p in procs.values():
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()


if __name__ == "__main__":
    main(sys.argv[1])
