"""The audit trail in Envoy's access log: envoy.yaml's JSON access log, with the filter's audit fields (filter state
`wasm.mcp_jwt_signer.<field>`), read back from a real Envoy for a signed, a reused, a refused and a served request.
An operator answers "who called which tool, with which token, and what was refused" from these lines alone; the
token itself never appears."""

from __future__ import annotations

import copy
import json
import time

import jwt
import pytest
import requests

from harness import DISCOVERY_SUFFIX, JWKS_SUFFIX, MCP_HEADERS, load_envoy_yaml, raw_request, rpc, wasm_filter_config
from mcp_helpers import _hcm, read_access_log

FIELDS = ("decision", "reason", "endpoint", "sub", "act_sub", "methods", "tool", "prompt", "jti", "kid", "aud", "exp", "cache")


def shipped_format() -> dict:
    (logger,) = _hcm(load_envoy_yaml())["access_log"]
    return logger["typed_config"]["log_format"]["json_format"]


def to_file(path):
    """envoy.yaml's access log, exactly its JSON format, written to a file the test can read."""
    def edit(cfg):
        hcm = _hcm(cfg)
        (logger,) = hcm["access_log"]
        hcm["access_log"] = [{"name": "envoy.access_loggers.file", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog",
            "path": str(path), "log_format": copy.deepcopy(logger["typed_config"]["log_format"])}}]
    return edit


def entries(path, n, timeout=10.0):
    """The access log's entries for what the test sent (not the fixture's JWKS readiness probes), once there are
    `n`; Envoy flushes the file on its own timer, so wait for them, never sleep."""
    deadline = time.monotonic() + timeout
    while True:
        got = [e for e in read_access_log(path) if not e["path"].endswith(JWKS_SUFFIX)]
        if len(got) >= n or time.monotonic() > deadline:
            return got
        time.sleep(0.05)


def test_envoy_yaml_logs_every_audit_field():
    fmt = shipped_format()
    for field in FIELDS:
        assert fmt[field] == f"%FILTER_STATE(wasm.mcp_jwt_signer.{field}:PLAIN)%", field


def test_the_access_log_answers_who_called_which_tool(envoy, upstream, tmp_path):
    log = tmp_path / "access.json"
    config = lambda url: {**json.loads(wasm_filter_config(load_envoy_yaml())["configuration"]["value"]),  # noqa
                          "issuer": url}
    g = envoy(config, extra_edit=to_file(log))
    headers = {**MCP_HEADERS, "x-user-id": "alice", "x-team-id": "team-blue"}
    body = json.dumps(rpc("tools/call", {"name": "get_weather", "arguments": {"city": "Oslo"}})).encode()
    assert raw_request(g.url, "POST", "/mcp", headers=headers, body=body)[0] == 200
    assert raw_request(g.url, "POST", "/mcp", headers=headers, body=body)[0] == 200
    assert raw_request(g.url, "POST", "/mcp", headers=headers, body=b"{")[0] == 400
    assert requests.get(g.url + DISCOVERY_SUFFIX, timeout=5).status_code == 200
    minted, reused, refused, served = entries(log, 4)
    token = upstream.requests[0].bearer_token()
    claims = jwt.decode(token, options={"verify_signature": False})
    header = jwt.get_unverified_header(token)

    assert minted["decision"] == "signed" and minted["status"] == 200
    assert (minted["sub"], minted["act_sub"]) == ("alice", "team-blue")
    assert (minted["methods"], minted["tool"]) == ("tools/call", "get_weather")
    assert minted["jti"] == claims["jti"] and minted["kid"] == header["kid"]
    assert minted["aud"] == claims["aud"] and int(minted["exp"]) == claims["exp"]
    assert minted["cache"] == "false" and minted["reason"] is None

    assert reused["decision"] == "signed" and reused["cache"] == "true"
    assert reused["jti"] == minted["jti"] and reused["exp"] == minted["exp"]

    assert (refused["decision"], refused["reason"], refused["status"]) == ("refused", "parse_error", 400)
    assert refused["sub"] is None and refused["jti"] is None
    assert (served["decision"], served["endpoint"]) == ("served", "discovery")

    text = log.read_text()
    assert token not in text and token.split(".")[2] not in text, "the token never reaches the access log"


def test_audit_omit_keeps_a_field_private(envoy, upstream, tmp_path):
    log = tmp_path / "access.json"
    config = {"identity": {"subject": ["header:x-user-id"]}, "audit_omit": ["sub"]}
    g = envoy(config, extra_edit=to_file(log))
    body = json.dumps(rpc("prompts/get", {"name": "summarise"})).encode()
    assert raw_request(g.url, "POST", "/mcp", headers={**MCP_HEADERS, "x-user-id": "alice"}, body=body)[0] == 200
    (line,) = entries(log, 1)
    assert line["decision"] == "signed"
    assert line["sub"] is None and (line["methods"], line["prompt"], line["tool"]) == ("prompts/get", "summarise", None)
    assert "alice" not in log.read_text()


def test_audit_fields_can_be_switched_off(envoy, upstream, tmp_path):
    log = tmp_path / "access.json"
    g = envoy({"audit_fields": False}, extra_edit=to_file(log))
    assert raw_request(g.url, "POST", "/mcp", headers=MCP_HEADERS, body=json.dumps(rpc("ping")).encode())[0] == 200
    (line,) = entries(log, 1)
    assert all(line[f] is None for f in FIELDS), line
