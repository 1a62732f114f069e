"""examples/ts-server (TypeScript, official MCP SDK + jose) as a subprocess for the end-to-end tests.

Built by `make ts-server` (npm ci + tsc into examples/ts-server/dist/). Like mcp_helpers.ExampleServer: the port
is chosen up front so the gateway can point at it; start(issuer) needs the gateway up (the server reads the
gateway's OIDC discovery document at start-up).
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import requests

from harness import REPO, free_port, stop_process
from oauth_server import node_binary, require_node_modules

TS_DIR = REPO / "examples" / "ts-server"
TS_ENTRY = TS_DIR / "dist" / "server.js"


class TsServer:
    def __init__(self, workdir: Path, *, port: int | None = None, audience: str = "mcp"):
        self.workdir = Path(workdir)
        self.port = port or free_port()
        self.audience = audience
        self.proc = None
        self.log_path = self.workdir / f"ts-server-{self.port}.log"
        self.started_in = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/mcp"

    def start(self, issuer: str, timeout: float = 30.0) -> "TsServer":
        require_node_modules(TS_DIR, "@modelcontextprotocol/sdk", "ts-server")
        if not TS_ENTRY.exists():
            raise AssertionError(f"{TS_ENTRY} is missing: run `make ts-server`")
        self.workdir.mkdir(parents=True, exist_ok=True)
        cmd = [node_binary(), str(TS_ENTRY), "--host", "127.0.0.1", "--port", str(self.port), "--issuer", issuer,
               "--audience", self.audience, "--discovery-timeout", "10"]
        t0 = time.monotonic()
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         cwd=str(TS_DIR), start_new_session=True)
        deadline = t0 + timeout
        while True:
            if self.proc.poll() is not None:
                raise AssertionError(f"ts-server exited with {self.proc.returncode}:\n{self.log()[-3000:]}")
            try:
                # Up and verifying: a request without a token is refused by the bearer middleware.
                if requests.post(self.url, json={}, timeout=1).status_code == 401:
                    self.started_in = time.monotonic() - t0
                    return self
            except requests.RequestException:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise AssertionError(f"ts-server not up within {timeout}s:\n{self.log()[-3000:]}")
            time.sleep(0.05)

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def stop(self) -> None:
        stop_process(self.proc)
