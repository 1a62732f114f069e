#!/usr/bin/env python3
"""Writes the fuzz seed corpora: fuzz/corpus/fuzz_body/* and fuzz/corpus/fuzz_config/*.

The seeds are the bodies and configurations the unit and end-to-end tests use, good and bad, so libFuzzer starts
from inputs that already reach deep into the parsers. Re-run after adding cases: `python3 fuzz/seed_corpus.py`
(deterministic; files are named after the case).
"""

from __future__ import annotations

import json
from pathlib import Path

HERE = Path(__file__).resolve().parent


def rpc(method, params=None, id=1):  # noqa: A002
    msg = {"jsonrpc": "2.0", "method": method}
    if id is not None:
        msg["id"] = id
    if params is not None:
        msg["params"] = params
    return msg


def j(value) -> bytes:
    return json.dumps(value, ensure_ascii=False).encode()


BODIES: dict[str, bytes] = {
    # accepted
    "tools-call": j(rpc("tools/call", {"name": "get_weather", "arguments": {"city": "Z\u00fcrich"}}, id=3)),
    "tools-call-pretty": b'{ "jsonrpc" : "2.0",\n  "id": 3, "method": "tools/call",\n'
                         b'  "params": {"name": "get_weather", "arguments": {}} }',
    "tools-list": j(rpc("tools/list")),
    "initialize": j(rpc("initialize", {"protocolVersion": "2025-06-18", "capabilities": {},
                                       "clientInfo": {"name": "t", "version": "1"}})),
    "notification": j(rpc("notifications/initialized", id=None)),
    "resources-read-string-id": j(rpc("resources/read", {"uri": "file:///x"}, id="abc")),
    "response-result": b'{"jsonrpc":"2.0","id":"s-1","result":{}}',
    "response-error": b'{"jsonrpc":"2.0","id":5,"error":{"code":-1,"message":"no"}}',
    "batch": j([rpc("tools/list", id=1), rpc("tools/call", {"name": "get_weather"}, id=2),
                rpc("tools/call", {"name": "b.c-d_e"}, id=3), rpc("notifications/initialized", id=None),
                {"jsonrpc": "2.0", "id": "x", "result": {}}]),
    "tool-128": j(rpc("tools/call", {"name": "x" * 128})),
    "params-array": j(rpc("ping", ["a", 1, None, True, 1.5e3])),
    "big-id": b'{"jsonrpc":"2.0","id":18446744073709551615,"method":"ping"}',
    "negative-id": b'{"jsonrpc":"2.0","id":-9223372036854775808,"method":"ping"}',
    "escaped-method": b'{"jsonrpc":"2.0","id":1,"method":"tools\\/call","params":{"n\\u0061me":"get_weather"}}',
    # refused: not JSON
    "empty": b"",
    "whitespace": b" \r\n\t ",
    "truncated": b'{"jsonrpc":"2.0","id":1,"method":',
    "trailing-garbage": b'{"jsonrpc":"2.0","id":1,"method":"tools/list"} x',
    "bom": b'\xef\xbb\xbf{"jsonrpc":"2.0","id":1,"method":"tools/list"}',
    "invalid-utf8": b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"a\xffb"}}',
    "overlong-slash": b'{"jsonrpc":"2.0","id":1,"method":"tools\xc0\xafcall"}',
    "lone-surrogate": b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"\\ud800"}}',
    "huge-number": b'{"jsonrpc":"2.0","id":1e999,"method":"ping"}',
    "id-2-70": b'{"jsonrpc":"2.0","id":1180591620717411303424,"method":"ping"}',
    "deep": b"[" * 200 + b"]" * 200,
    "dup-method": b'{"jsonrpc":"2.0","id":1,"method":"tools/list","method":"tools/call","params":{"name":"x"}}',
    "dup-name": b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"get_weather","name":"rm"}}',
    "dup-name-escaped": b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"a","na\\u006de":"b"}}',
    "dup-params": b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"a"},"params":{"name":"b"}}',
    "dup-deep": b'{"jsonrpc":"2.0","id":1,"method":"x","params":{"a":[{"b":{"c":1,"c":2}}]}}',
    # refused: not JSON-RPC
    "object-not-rpc": b'{"foo":1}',
    "empty-batch": b"[]",
    "json-string": b'"x"',
    "json-null": b"null",
    "jsonrpc-1": b'{"jsonrpc":"1.0","id":1,"method":"tools/list"}',
    "method-number": b'{"jsonrpc":"2.0","id":1,"method":5}',
    "method-space": b'{"jsonrpc":"2.0","id":1,"method":"tools/list mcp:admin"}',
    "method-escaped-space": b'{"jsonrpc":"2.0","id":1,"method":"tools/list\\u0020mcp:admin"}',
    "method-nul": b'{"jsonrpc":"2.0","id":1,"method":"ping\\u0000"}',
    "id-float": b'{"jsonrpc":"2.0","id":1.5,"method":"ping"}',
    "id-object": b'{"jsonrpc":"2.0","id":{},"method":"ping"}',
    "params-string": b'{"jsonrpc":"2.0","id":1,"method":"ping","params":"x"}',
    "request-with-result": b'{"jsonrpc":"2.0","id":1,"method":"ping","result":{}}',
    "response-no-id": b'{"jsonrpc":"2.0","result":{}}',
    "batch-with-number": b'[{"jsonrpc":"2.0","id":1,"method":"ping"}, 5]',
    # refused: bad tool
    "tool-space": j(rpc("tools/call", {"name": "get weather"}, id=7)),
    "tool-escaped-space": b'{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"tool\\u0020x"}}',
    "tool-escaped-slash": b'{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"a\\u002fb"}}',
    "tool-scope-injection": j(rpc("tools/call", {"name": "get_weather mcp:admin"}, id=7)),
    "tool-colon": j(rpc("tools/call", {"name": "x:call"}, id=7)),
    "tool-non-ascii": j(rpc("tools/call", {"name": "\u00e9vil"}, id=7)),
    "tool-129": j(rpc("tools/call", {"name": "x" * 129})),
    "tool-empty": j(rpc("tools/call", {"name": ""})),
    "tool-number": b'{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":5}}',
    "tool-params-array": b'{"jsonrpc":"2.0","id":7,"method":"tools/call","params":["get_weather"]}',
    "batch-bad-tool": j([rpc("tools/list", id=1), rpc("tools/call", {"name": "a b"}, id=9)]),
}

PEM = "$PEM"  # fuzz_config replaces it with a private-key PEM whose body no error may quote

CONFIGS: dict[str, bytes] = {
    "empty": b"",
    "empty-object": b"{}",
    "envoy-yaml": j({"issuer": "http://127.0.0.1:10000", "audience": "mcp", "ttl_seconds": 300,
                     "actor": "mcp-gateway",
                     "identity": {"subject": ["header:x-user-id"], "email": ["header:x-user-email"],
                                  "actor": ["header:x-team-id", "header:x-org-id"]}}),
    "full": j({"issuer": "https://gw.example.com/tenant-a/", "audience": "weather-api", "ttl_seconds": 60,
               "actor": "edge-gw", "max_body_bytes": 4096, "jwt_payload_in_metadata": "jwt_payload",
               "require_subject": True, "required_claims": ["email", "org/team"],
               "identity": {"subject": ["jwt:sub", "header:x-user-id"], "email": ["jwt:email"],
                            "actor": ["jwt:team", "mtls:uri_san", "literal:gw", "property:node/id"]},
               "copy_claims": {"groups": "jwt:groups"}, "add_claims": {"tenant": "acme"},
               "override_claims": {"iss": "https://other", "aud": ["a", "b"]},
               "remove_claims": ["nbf", "email"], "strip_identity_headers": False,
               "token_cache": {"max_entries": 10, "max_bytes": 4096, "min_remaining_seconds": 10}}),
    "unknown-field": b'{"audience":"mcp","bogus_field":true}',
    "ttl-zero": b'{"ttl_seconds":0}',
    "ttl-negative": b'{"ttl_seconds":-5}',
    "ttl-huge": b'{"ttl_seconds":1e999}',
    "ttl-string": b'{"ttl_seconds":"300"}',
    "issuer-query": b'{"issuer":"https://gw/?x=1"}',
    "issuer-dotdot": b'{"issuer":"https://gw/a/../b"}',
    "bad-source": b'{"identity":{"subject":["cookie:x"]}}',
    "credential-header": b'{"identity":{"subject":["header:authorization"]}}',
    "bad-pointer": b'{"identity":{"subject":["jwt:a/~2"]}}',
    "trailing": b'{} {}',
    "not-json": b"hello",
    # with the key placeholder, in every field a key could be pasted into by mistake
    "key": j({"signing_key": PEM}),
    "key-file-url": j({"signing_key": "file:///etc/key.pem"}),
    "key-array": j({"signing_key": [PEM]}),
    "key-object": j({"signing_key": {"pem": PEM}}),
    "key-as-audience": j({"audience": PEM}),
    "key-as-issuer": j({"issuer": PEM}),
    "key-as-actor": j({"actor": PEM}),
    "key-as-ttl": j({"ttl_seconds": PEM}),
    "key-as-max-body": j({"max_body_bytes": PEM}),
    "key-as-field-name": j({PEM: 1}),
    "key-in-identity": j({"identity": {"subject": [PEM]}}),
    "key-in-identity-header": j({"identity": {"subject": ["header:" + PEM]}}),
    "key-in-identity-literal": j({"identity": {"actor": ["literal:" + PEM]}}),
    "key-in-identity-name": j({"identity": {PEM: []}}),
    "key-in-required-claims": j({"required_claims": [PEM]}),
    "key-in-copy-claims": j({"copy_claims": {"x": PEM}}),
    "key-as-copy-claim-name": j({"copy_claims": {PEM: "jwt:sub"}}),
    "key-in-add-claims": j({"add_claims": {"x": PEM}}),
    "key-as-add-claim-name": j({"add_claims": {PEM: 1}}),
    "key-in-override": j({"override_claims": {"exp": PEM}}),
    "key-in-remove": j({"remove_claims": [PEM]}),
    "key-in-token-cache": j({"token_cache": {"max_entries": PEM}}),
    "key-as-public-key": j({"additional_public_keys": [PEM]}),
    "key-as-public-key-object": j({"additional_public_keys": [{"pem": PEM}]}),
    "key-as-algorithm": j({"algorithm": PEM}),
    "key-es256": j({"algorithm": "ES256", "signing_key": PEM}),
    "key-eddsa": j({"algorithm": "EdDSA", "signing_key": PEM}),
    "key-unquoted": b'{"signing_key":' + PEM.encode() + b"}",
    "key-and-bad-ttl": j({"signing_key": PEM, "ttl_seconds": 0}),
}


def write(target: str, cases: dict[str, bytes]) -> None:
    out = HERE / "corpus" / target
    out.mkdir(parents=True, exist_ok=True)
    for name, data in cases.items():
        (out / f"seed-{name}").write_bytes(data)
    print(f"{out.relative_to(HERE.parent)}: {len(cases)} seeds")


if __name__ == "__main__":
    write("fuzz_body", BODIES)
    write("fuzz_config", CONFIGS)
