"""The differential exists: the Go server (encoding/json into structs, as Go MCP servers before CVE-2026-27896)
runs another tool or method than an exact-key parser reads from the same bytes. No gateway here: these bodies go
straight to tests/e2e/go_server, and the exact readings come from Python's json and node's JSON.parse.

test_parser_differential.py sends the same bodies through the gateway, which must refuse them.
"""

from __future__ import annotations

import json
import subprocess

import pytest

from go_server import DIFF_CASES, GoServer, exact_reading
from oauth_server import node_binary

# No gateway here (the Go server alone): run once, in the wasm run.
pytestmark = pytest.mark.no_filter


@pytest.fixture(scope="module")
def go(tmp_path_factory):
    server = GoServer(tmp_path_factory.mktemp("go_server")).start()
    yield server
    server.stop()


def js_readings(bodies: list) -> list:
    """JSON.parse (node) of each body: params.name, method, arguments.city, _meta.progressToken."""
    script = ("const bodies = JSON.parse(require('fs').readFileSync(0, 'utf8'));"
              "console.log(JSON.stringify(bodies.map((b) => { const m = JSON.parse(b); const p = m.params || {};"
              "return {method: m.method, tool: p.name, city: (p.arguments || {}).city,"
              "progress_token: (p._meta || {}).progressToken}; })));")
    out = subprocess.run([node_binary(), "-e", script], input=json.dumps(bodies), capture_output=True, text=True,
                         timeout=30, check=True)
    return json.loads(out.stdout)


def test_control_plain_call(go):
    body = b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"get_weather","arguments":{"city":"Oslo"}}}'
    r = go.post(body, {"authorization": "Bearer abc"})
    assert r.status_code == 200
    result = r.json()["result"]
    assert (result["would_run"], result["city"], result["authorization"]) == ("get_weather", "Oslo", "Bearer abc")
    assert go.seen()[-1]["would_run"] == "get_weather"


@pytest.mark.parametrize("case", DIFF_CASES, ids=[c.id for c in DIFF_CASES])
def test_go_reads_what_exact_parsers_do_not(go, case):
    exact = exact_reading(case.body)
    assert exact[case.field] == case.exact, (case.id, exact)
    before = len(go.seen())
    r = go.post(case.raw)
    assert r.status_code == 200, r.text
    assert r.json()["result"][case.field] == case.go, (case.id, r.json())
    (logged,) = go.seen()[before:]
    assert logged[case.field] == case.go and logged[case.field] != case.exact, logged


def test_javascript_reads_like_python(go):
    """JSON.parse (the TypeScript SDK's parser) agrees with Python's json on every body: only Go differs."""
    js = js_readings([c.body for c in DIFF_CASES])
    for case, reading in zip(DIFF_CASES, js):
        py = exact_reading(case.body)
        for k in ("method", "tool", "city", "progress_token"):
            assert reading.get(k) == py[k], (case.id, k, reading, py)
