"""The Go differential server (tests/e2e/go_server/main.go) for the end-to-end tests, and the bodies it reads
differently from an exact-key JSON parser.

The server decodes MCP requests with Go's encoding/json into structs, as Go MCP servers did before CVE-2026-27896:
keys match struct fields case-insensitively, the last match wins, U+017F (ſ) folds to "s" and U+212A (K) to "k".
It answers every POST with what it would run and logs one JSON line per request (method, tool, Authorization).

Built with Debian's golang-go (`make go-tools` installs it), standard library only, GOPROXY=off: nothing is
downloaded. The binary is cached under target/e2e/, keyed by a hash of main.go.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import requests

from harness import REPO, free_port, stop_process

GO_DIR = REPO / "tests" / "e2e" / "go_server"
GO_MAIN = GO_DIR / "main.go"
BUILD_DIR = REPO / "target" / "e2e"


def go_binary() -> str:
    found = os.environ.get("GO_BIN") or shutil.which("go")
    if not found:
        raise AssertionError("no `go` on PATH: run `make go-tools` (Debian's golang-go)")
    return found


def build_go_server() -> tuple[Path, float]:
    """Build (or reuse) the server binary; returns (path, seconds spent building, 0.0 when cached)."""
    digest = hashlib.sha256(GO_MAIN.read_bytes()).hexdigest()[:16]
    binary = BUILD_DIR / f"go_server-{digest}"
    if binary.exists():
        return binary, 0.0
    BUILD_DIR.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    env.update(GOPROXY="off", GOFLAGS="", GO111MODULE="off", CGO_ENABLED="0")
    env.setdefault("GOCACHE", str(BUILD_DIR / "go-cache"))
    tmp = binary.with_suffix(".tmp")
    t0 = time.monotonic()
    out = subprocess.run([go_binary(), "build", "-o", str(tmp), str(GO_MAIN)], cwd=str(GO_DIR), env=env,
                         capture_output=True, text=True, timeout=600)
    if out.returncode != 0:
        raise AssertionError(f"go build failed:\n{out.stdout}\n{out.stderr}")
    tmp.rename(binary)
    return binary, time.monotonic() - t0


class GoServer:
    def __init__(self, workdir: Path, *, port: int | None = None):
        self.workdir = Path(workdir)
        self.port = port or free_port()
        self.proc = None
        self.log_path = self.workdir / f"go-server-{self.port}.jsonl"
        self.err_path = self.workdir / f"go-server-{self.port}.err"
        self.build_seconds = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/mcp"

    def start(self, timeout: float = 30.0) -> "GoServer":
        binary, self.build_seconds = build_go_server()
        self.workdir.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as out, open(self.err_path, "ab") as err:
            self.proc = subprocess.Popen([str(binary), "-addr", f"127.0.0.1:{self.port}"], stdout=out, stderr=err,
                                         stdin=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise AssertionError(f"go_server exited with {self.proc.returncode}: {self.err_path.read_text()}")
            try:
                if requests.get(self.url, timeout=1).status_code == 405:  # up (GET is refused; nothing logged)
                    return self
            except requests.RequestException:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise AssertionError(f"go_server not up within {timeout}s")
            time.sleep(0.05)

    def stop(self) -> None:
        stop_process(self.proc)

    def seen(self) -> list:
        """Every request the server decoded (or failed to), in order."""
        try:
            text = self.log_path.read_text()
        except FileNotFoundError:
            return []
        return [json.loads(line) for line in text.split("\n")[:-1] if line.strip()]

    def post(self, body: bytes, headers=None) -> requests.Response:
        return requests.post(self.url, data=body, headers={"content-type": "application/json", **(headers or {})},
                             timeout=10)


# --------------------------------------------------------------------------------------------------------------
# the bodies
# --------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DiffCase:
    """A JSON text (exactly as sent: escapes stay escapes) that an exact-key parser and Go read differently.
    `field` is the go_server report field that differs; `exact` what Python json / serde_json / JSON.parse read,
    `go` what encoding/json reads."""
    id: str
    body: str
    field: str
    exact: object
    go: object

    @property
    def raw(self) -> bytes:
        return self.body.encode("utf-8")


KELVIN = "\u212a"  # K KELVIN SIGN: simple case folding maps it to "k"
LONG_S = "\u017f"  # ſ LATIN SMALL LETTER LONG S: simple case folding maps it to "s"
HEAD = '{"jsonrpc":"2.0","id":1,'  # every body starts so; what follows is the case

# In the JSON texts below a `\\u...` is a JSON escape sent as such; LONG_S / KELVIN are sent as raw UTF-8.
DIFF_CASES = [
    DiffCase("name-Name", HEAD + '"method":"tools/call","params":{"name":"get_weather","Name":"delete_all"}}',
             "would_run", "get_weather", "delete_all"),
    DiffCase("name-NAME", HEAD + '"method":"tools/call","params":{"name":"get_weather","NAME":"delete_all"}}',
             "would_run", "get_weather", "delete_all"),
    DiffCase("name-nAmE", HEAD + '"method":"tools/call","params":{"name":"get_weather","nAmE":"delete_all"}}',
             "would_run", "get_weather", "delete_all"),
    DiffCase("name-escaped-u004eame",
             HEAD + '"method":"tools/call","params":{"name":"get_weather","\\u004eame":"delete_all"}}',
             "would_run", "get_weather", "delete_all"),
    DiffCase("method-Method", HEAD + '"method":"tools/list","Method":"tools/call","params":{"name":"delete_all"}}',
             "would_run", "tools/list", "delete_all"),
    DiffCase("method-escaped-u004dETHOD",
             HEAD + '"method":"tools/list","\\u004dETHOD":"tools/call","params":{"name":"delete_all"}}',
             "would_run", "tools/list", "delete_all"),
    DiffCase("params-long-s", HEAD + '"method":"tools/call","params":{"name":"get_weather"},"param' + LONG_S
             + '":{"name":"delete_all"}}', "would_run", "get_weather", "delete_all"),
    DiffCase("params-long-s-escaped",
             HEAD + '"method":"tools/call","params":{"name":"get_weather"},"param\\u017f":{"name":"delete_all"}}',
             "would_run", "get_weather", "delete_all"),
    DiffCase("params-PARAM-long-s", HEAD + '"method":"tools/call","params":{"name":"get_weather"},"PARAM' + LONG_S
             + '":{"name":"delete_all"}}', "would_run", "get_weather", "delete_all"),
    DiffCase("params-Params-NAME",
             HEAD + '"method":"tools/call","params":{"name":"get_weather"},"Params":{"NAME":"delete_all"}}',
             "would_run", "get_weather", "delete_all"),
    DiffCase("nested-meta-kelvin", HEAD + '"method":"tools/call","params":{"_meta":{"progressToken":"mine",'
             '"progressTo' + KELVIN + 'en":"theirs"},"name":"get_weather"}}', "progress_token", "mine", "theirs"),
    DiffCase("nested-meta-kelvin-escaped", HEAD + '"method":"tools/call","params":{"_meta":{"progressToken":"mine",'
             '"progressTo\\u212aen":"theirs"},"name":"get_weather"}}', "progress_token", "mine", "theirs"),
    DiffCase("nested-arguments-city-City", HEAD + '"method":"tools/call","params":{"name":"get_weather",'
             '"arguments":{"city":"Paris","City":"Pyongyang"}}}', "city", "Paris", "Pyongyang"),
]


def exact_reading(body: str) -> dict:
    """What an exact-key parser (Python json; serde_json or JSON.parse into the same fields) reads, in the
    go_server's report shape. Refuses a body with exact duplicate keys: those are a different class."""
    def no_dupes(pairs):
        keys = [k for k, _ in pairs]
        assert len(keys) == len(set(keys)), f"exact duplicate keys in {body!r}"
        return dict(pairs)

    msg = json.loads(body, object_pairs_hook=no_dupes)
    params = msg.get("params") or {}
    method = msg.get("method")
    would_run = params.get("name") if method in ("tools/call", "prompts/get") else method
    args = params.get("arguments") or {}
    return {"method": method, "would_run": would_run, "tool": params.get("name"),
            "city": args.get("city") if would_run == "get_weather" else None,
            "progress_token": (params.get("_meta") or {}).get("progressToken")}
