"""Adversarial inputs, end to end: a real Envoy running the built .wasm, a recording upstream, PyJWT as the verifier.

Every refusal case asserts the exact HTTP status, the exact JSON-RPC error (code, and id where the filter can know
it), and that NOTHING reached the upstream. Cases that Envoy itself rejects before the filter runs (its HTTP codec,
path normalisation) assert the status and that nothing was forwarded; their body is Envoy's, not JSON-RPC.
Accepted cases assert that the request reached the upstream once, byte for byte, with exactly one Authorization
header whose token verifies (through the gateway's own discovery document) and carries the right scope.

Two module-scoped gateways:
  gw      envoy.yaml as shipped (its plugin JSON, issuer = the listener URL; max_body_bytes 1 MiB by default)
  gw_small  the same plugin JSON with max_body_bytes 4096, and the HTTP/1 codec's `enable_trailers: true` so that
            request trailers reach the filter
"""

from __future__ import annotations

import gzip
import http.client
import json
import socket
import time
import zlib

import pytest
import requests

from harness import (
    MCP_HEADERS,
    DISCOVERY_SUFFIX,
    JWKS_SUFFIX,
    assert_nothing_forwarded_since_reset,
    forwarded_since_reset,
    load_envoy_yaml,
    raw_request,
    reset_forwarded,
    running_gateway,
    verify_with_discovery,
    wasm_filter_config,
)

LIMIT = 4096
PARSE, INVALID_REQUEST, INVALID_PARAMS = -32700, -32600, -32602
ALLOW_MCP = "GET, POST, DELETE"
ALLOW_WELL_KNOWN = "GET, HEAD"


# ----------------------------------------------------------------------------------------------------------------
# gateways
# ----------------------------------------------------------------------------------------------------------------
def shipped_config(url: str) -> dict:
    cfg = json.loads(wasm_filter_config(load_envoy_yaml())["configuration"]["value"])
    cfg["issuer"] = url
    return cfg


def small_config(url: str) -> dict:
    return {**shipped_config(url), "max_body_bytes": LIMIT}


def enable_http1_trailers(cfg: dict) -> None:
    hcm = cfg["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    hcm.setdefault("http_protocol_options", {})["enable_trailers"] = True


@pytest.fixture(scope="module")
def _gw(tmp_path_factory):
    with running_gateway(tmp_path_factory.mktemp("adv_gw"), shipped_config) as g:
        yield g


@pytest.fixture(scope="module")
def _gw_small(tmp_path_factory):
    with running_gateway(tmp_path_factory.mktemp("adv_gw_small"), small_config,
                         extra_edit=enable_http1_trailers) as g:
        yield g


@pytest.fixture
def gw(_gw):
    reset_forwarded(_gw)
    return _gw


@pytest.fixture
def gw_small(_gw_small):
    reset_forwarded(_gw_small)
    return _gw_small


# ----------------------------------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------------------------------
def send_raw(g, data_parts, *, delay: float = 0.0, method: str = "POST", timeout: float = 10.0):
    """Writes `data_parts` (bytes objects) to one TCP connection, each in its own send() (TCP_NODELAY), sleeping
    `delay` between them, then reads one HTTP response. Returns (status, headers lower-cased, body)."""
    sock = socket.create_connection(("127.0.0.1", g.envoy.listener_port), timeout=timeout)
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            for part in data_parts:
                sock.sendall(part)
                if delay:
                    time.sleep(delay)
        except (BrokenPipeError, ConnectionResetError):
            pass  # answered early (e.g. 413 before the whole body was sent)
        resp = http.client.HTTPResponse(sock, method=method)
        resp.begin()
        body = resp.read()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, body
    finally:
        sock.close()


def read_responses(g, data: bytes, count: int, timeout: float = 10.0):
    """Sends `data` (possibly several pipelined requests) in one write; reads up to `count` responses."""
    sock = socket.create_connection(("127.0.0.1", g.envoy.listener_port), timeout=timeout)
    reader = sock.makefile("rb")

    class Shared:  # http.client opens (and closes) a buffered file per response: share one, so no bytes are lost
        def __getattr__(self, name):
            return getattr(reader, name)

        def close(self):
            pass

    class OneReader:
        def makefile(self, *args, **kwargs):
            return Shared()

    out = []
    try:
        sock.sendall(data)
        for _ in range(count):
            resp = http.client.HTTPResponse(OneReader(), method="POST")
            try:
                resp.begin()
            except (http.client.RemoteDisconnected, ConnectionResetError):
                break
            out.append((resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()))
            if resp.getheader("connection", "").lower() == "close":
                break
        return out
    finally:
        reader.close()
        sock.close()


def request_head(method: str, path: str, headers) -> bytes:
    lines = [f"{method} {path} HTTP/1.1".encode(), b"host: 127.0.0.1"]
    for k, v in headers:
        lines.append(k.encode() + b": " + (v if isinstance(v, bytes) else v.encode()))
    return b"\r\n".join(lines) + b"\r\n\r\n"


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


def post(g, body: bytes, headers=None, path="/mcp"):
    return raw_request(g.url, "POST", path, headers={**MCP_HEADERS, **(headers or {})}, body=body)


def assert_nothing_forwarded(g):
    """Nothing reached the upstream since the fixture's reset_forwarded: Envoy's upstream request counter, read
    after the response (no wait), and the recording upstream."""
    assert_nothing_forwarded_since_reset(g)


def assert_refused(g, response, status: int, code: int, rpc_id=None, allow=None):
    """Exact status, a JSON-RPC error object with exactly this code and id, and nothing forwarded."""
    st, headers, body = response
    assert st == status, f"status {st} != {status}; body {body[:300]!r}"
    assert headers.get("content-type", "").split(";")[0].strip() == "application/json", headers
    data = json.loads(body)
    assert set(data) == {"jsonrpc", "id", "error"}, data
    assert data["jsonrpc"] == "2.0", data
    assert data["id"] == rpc_id and type(data["id"]) is type(rpc_id), f"id {data['id']!r} != {rpc_id!r}"
    assert data["error"]["code"] == code, f"code {data['error']['code']} != {code}: {data}"
    assert isinstance(data["error"]["message"], str) and data["error"]["message"], data
    if allow is not None:
        assert headers.get("allow") == allow, headers
    assert_nothing_forwarded(g)
    return data


def assert_rejected_before_filter(g, response, status: int = 400):
    """Envoy's own refusal (codec / path normalisation): the status, and nothing forwarded."""
    st, _, body = response
    assert st == status, f"status {st} != {status}; body {body[:300]!r}"
    assert_nothing_forwarded(g)


def forwarded_claims(g, body: bytes | None = None, method: str = "POST"):
    """The one request the upstream got: exactly one Authorization, a token that verifies; returns its claims."""
    # Envoy's counter (read after the response) says how many requests went upstream since the fixture's reset.
    started = forwarded_since_reset(g)
    assert started == 1, f"Envoy started {started} upstream requests, expected exactly one"
    reqs = g.upstream.wait_for(1, timeout=5)
    assert len(reqs) == 1, f"expected exactly one forwarded request, got {[(r.method, r.path) for r in reqs]}"
    req = reqs[0]
    assert req.method == method
    if body is not None:
        assert req.body == body, "the body must reach upstream unchanged"
    auth = req.header_values("authorization")
    assert len(auth) == 1, f"exactly one authorization header upstream, got {auth!r}"
    scheme, _, token = auth[0].partition(" ")
    assert scheme == "Bearer" and token.count(".") == 2 and " " not in token, auth[0]
    return req, verify_with_discovery(token, g.url, "mcp")


def scope_set(claims) -> set:
    scope = claims["scope"]
    parts = scope.split(" ")
    assert all(parts) and len(parts) == len(set(parts)), f"malformed scope {scope!r}"
    return set(parts)


def tools_call(name_json: bytes, rpc_id: bytes = b"7") -> bytes:
    """A tools/call whose params.name is the given raw JSON text (escapes kept as written)."""
    return b'{"jsonrpc":"2.0","id":' + rpc_id + b',"method":"tools/call","params":{"name":' + name_json + b"}}"


def method_call(method_json: bytes, rpc_id: bytes = b"1") -> bytes:
    return b'{"jsonrpc":"2.0","id":' + rpc_id + b',"method":' + method_json + b"}"


GOOD = b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"get_weather","arguments":{"city":"Paris"}}}'
GOOD_SCOPE = {"mcp:tools/call", "mcp:tools/get_weather:call"}


# ----------------------------------------------------------------------------------------------------------------
# JSON bodies the filter must refuse
# ----------------------------------------------------------------------------------------------------------------
def nest(depth: int, leaf: bytes = b"1") -> bytes:
    return b"[" * depth + leaf + b"]" * depth


BODY_REFUSALS = [
    # --- duplicate keys (a server keeping the other duplicate would call something the token does not name)
    ("dup-method", b'{"jsonrpc":"2.0","id":1,"method":"tools/list","method":"tools/call","params":{"name":"x"}}',
     PARSE, None),
    ("dup-method-escaped", b'{"jsonrpc":"2.0","id":1,"method":"tools/list","\\u006dethod":"tools/call",'
                           b'"params":{"name":"x"}}', PARSE, None),
    ("dup-params", b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"a"},"params":{"name":"b"}}',
     PARSE, None),
    ("dup-name", tools_call(b'"get_weather","name":"delete_all"'), PARSE, None),
    ("dup-name-escaped", tools_call(b'"get_weather","na\\u006de":"delete_all"'), PARSE, None),
    ("dup-name-fully-escaped", b'{"jsonrpc":"2.0","id":7,"method":"tools/call",'
                               b'"params":{"\\u006e\\u0061\\u006d\\u0065":"a","name":"b"}}', PARSE, None),
    ("dup-id", b'{"jsonrpc":"2.0","id":1,"id":2,"method":"tools/list"}', PARSE, None),
    ("dup-jsonrpc", b'{"jsonrpc":"2.0","jsonrpc":"1.0","id":1,"method":"tools/list"}', PARSE, None),
    ("dup-deep-in-arguments", b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"a",'
                              b'"arguments":{"x":{"y":[{"z":1,"z":2}]}}}}', PARSE, None),
    ("dup-in-second-batch-element", b'[{"jsonrpc":"2.0","id":1,"method":"tools/list"},'
                                    b'{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"a","name":"b"}}]',
     PARSE, None),
    ("dup-in-response", b'{"jsonrpc":"2.0","id":1,"result":{"a":1},"result":{"a":2}}', PARSE, None),
    ("dup-empty-key", b'{"jsonrpc":"2.0","id":1,"method":"tools/list","":1,"":2}', PARSE, None),
    # --- escapes that decode into separators or non-tool characters
    ("tool-escaped-space", tools_call(b'"a\\u0020b"'), INVALID_PARAMS, 7),
    ("tool-escaped-solidus", tools_call(b'"a\\u002fb"'), INVALID_PARAMS, 7),
    ("tool-escaped-slash-short", tools_call(b'"a\\/b"'), INVALID_PARAMS, 7),
    ("tool-escaped-nul", tools_call(b'"get_weather\\u0000"'), INVALID_PARAMS, 7),
    ("tool-escaped-tab", tools_call(b'"a\\tb"'), INVALID_PARAMS, 7),
    ("tool-escaped-newline", tools_call(b'"a\\nmcp:admin"'), INVALID_PARAMS, 7),
    ("tool-escaped-cr", tools_call(b'"a\\u000db"'), INVALID_PARAMS, 7),
    ("tool-line-separator", tools_call(b'"a\\u2028b"'), INVALID_PARAMS, 7),
    ("tool-nbsp", tools_call(b'"a\\u00a0b"'), INVALID_PARAMS, 7),
    ("tool-ideographic-space", tools_call('"a\u3000b"'.encode()), INVALID_PARAMS, 7),
    ("tool-fullwidth-letters", tools_call('"\uff47et_weather"'.encode()), INVALID_PARAMS, 7),
    ("tool-escaped-colon", tools_call(b'"x\\u003acall"'), INVALID_PARAMS, 7),
    ("tool-percent-encoded-space", tools_call(b'"a%20b"'), INVALID_PARAMS, 7),
    # --- scope injection through names
    ("tool-injects-scope", tools_call(b'"get_weather mcp:admin"'), INVALID_PARAMS, 7),
    ("tool-injects-call-scope", tools_call(b'"x:call mcp:tools/admin:call"'), INVALID_PARAMS, 7),
    ("tool-is-a-scope", tools_call(b'"mcp:tools/admin:call"'), INVALID_PARAMS, 7),
    ("tool-wildcard", tools_call(b'"*"'), INVALID_PARAMS, 7),
    ("tool-path", tools_call(b'"../admin"'), INVALID_PARAMS, 7),
    ("tool-comma", tools_call(b'"a,b"'), INVALID_PARAMS, 7),
    ("tool-129", tools_call(b'"' + b"x" * 129 + b'"'), INVALID_PARAMS, 7),
    ("tool-empty", tools_call(b'""'), INVALID_PARAMS, 7),
    ("tool-null", tools_call(b"null"), INVALID_PARAMS, 7),
    ("tool-array", tools_call(b'["get_weather"]'), INVALID_PARAMS, 7),
    ("tool-params-array", b'{"jsonrpc":"2.0","id":7,"method":"tools/call","params":["admin"]}', INVALID_PARAMS, 7),
    ("tool-string-id", tools_call(b'"a b"', rpc_id=b'"req-\\u00e9"'), INVALID_PARAMS, "req-\u00e9"),
    ("method-injects-scope", method_call(b'"tools/list mcp:admin"'), INVALID_REQUEST, 1),
    ("method-escaped-space", method_call(b'"tools/list\\u0020mcp:admin"'), INVALID_REQUEST, 1),
    ("method-escaped-tab", method_call(b'"tools/call\\tmcp:admin"'), INVALID_REQUEST, 1),
    ("method-escaped-nul", method_call(b'"tools/call\\u0000"'), INVALID_REQUEST, 1),
    ("method-escaped-newline", method_call(b'"ping\\n"'), INVALID_REQUEST, 1),
    ("method-is-a-scope", method_call(b'"mcp:admin"'), INVALID_REQUEST, 1),
    ("method-trailing-space", method_call(b'"tools/list "'), INVALID_REQUEST, 1),
    ("method-empty", method_call(b'""'), INVALID_REQUEST, 1),
    ("method-129", method_call(b'"' + b"m" * 129 + b'"'), INVALID_REQUEST, 1),
    ("method-non-ascii", method_call('"tools/c\u00e4ll"'.encode()), INVALID_REQUEST, 1),
    ("method-number", method_call(b"5"), INVALID_REQUEST, 1),
    ("method-null", method_call(b"null"), INVALID_REQUEST, 1),
    # --- nesting
    ("nest-10k-arrays", nest(10_000), PARSE, None),
    ("nest-10k-objects", b'{"a":' * 10_000 + b"1" + b"}" * 10_000, PARSE, None),
    ("nest-200-in-arguments", b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"a","arguments":'
                              b'{"x":' + nest(200) + b"}}}", PARSE, None),
    ("unclosed-10k", b"[" * 10_000, PARSE, None),
    # --- numbers
    ("id-1e999", b'{"jsonrpc":"2.0","id":1e999,"method":"ping"}', PARSE, None),
    ("id-minus-1e999", b'{"jsonrpc":"2.0","id":-1e999,"method":"ping"}', PARSE, None),
    ("argument-1e999", b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"a","arguments":{"x":1e999}}}',
     PARSE, None),
    # An id the filter refuses is not "known": JSON-RPC 2.0 section 5 wants null, never a rounded number the client
    # cannot match (ids beyond 64 bits are read as floats) nor a fraction MCP does not allow.
    ("id-2-pow-70", b'{"jsonrpc":"2.0","id":1180591620717411303424,"method":"ping"}', INVALID_REQUEST, None),
    ("id-u64-max-plus-1", b'{"jsonrpc":"2.0","id":18446744073709551616,"method":"ping"}', INVALID_REQUEST, None),
    ("id-fraction", b'{"jsonrpc":"2.0","id":1.5,"method":"ping"}', INVALID_REQUEST, None),
    ("id-exponent", b'{"jsonrpc":"2.0","id":1e2,"method":"ping"}', INVALID_REQUEST, None),
    ("id-null", b'{"jsonrpc":"2.0","id":null,"method":"ping"}', INVALID_REQUEST, None),
    ("id-bool", b'{"jsonrpc":"2.0","id":true,"method":"ping"}', INVALID_REQUEST, None),
    ("id-array", b'{"jsonrpc":"2.0","id":[1],"method":"ping"}', INVALID_REQUEST, None),
    ("number-leading-zero", b'{"jsonrpc":"2.0","id":01,"method":"ping"}', PARSE, None),
    ("number-nan", b'{"jsonrpc":"2.0","id":NaN,"method":"ping"}', PARSE, None),
    ("number-hex", b'{"jsonrpc":"2.0","id":0x10,"method":"ping"}', PARSE, None),
    # --- invalid UTF-8 and overlong encodings (raw bytes inside strings)
    ("utf8-ff-in-tool", tools_call(b'"get_\xffweather"'), PARSE, None),
    ("utf8-latin1-in-tool", tools_call(b'"caf\xe9"'), PARSE, None),
    ("utf8-overlong-slash-in-method", method_call(b'"tools\xc0\xafcall"'), PARSE, None),
    ("utf8-overlong-nul-in-tool", tools_call(b'"a\xc0\x80b"'), PARSE, None),
    ("utf8-overlong-3byte-slash", method_call(b'"tools\xe0\x80\xafcall"'), PARSE, None),
    ("utf8-encoded-surrogate", tools_call(b'"a\xed\xa0\x80b"'), PARSE, None),
    ("utf8-above-10ffff", tools_call(b'"a\xf4\x90\x80\x80"'), PARSE, None),
    ("utf8-truncated-sequence", tools_call(b'"a\xc3"'), PARSE, None),
    ("utf8-invalid-deep-in-arguments", b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"a",'
                                       b'"arguments":{"q":["ok","\xfe"]}}}', PARSE, None),
    ("utf8-invalid-in-key", b'{"jsonrpc":"2.0","id":1,"method":"ping","params":{"k\xff":1}}', PARSE, None),
    # --- lone and reversed surrogates
    ("lone-high-surrogate-tool", tools_call(b'"\\ud800"'), PARSE, None),
    ("lone-low-surrogate-arguments", b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"a",'
                                     b'"arguments":{"x":"\\udc00"}}}', PARSE, None),
    ("high-surrogate-then-letter", tools_call(b'"\\ud800\\u0041"'), PARSE, None),
    ("reversed-surrogate-pair", tools_call(b'"\\ude00\\ud83d"'), PARSE, None),
    ("valid-pair-in-tool-name", tools_call(b'"\\ud83d\\ude00"'), INVALID_PARAMS, 7),
    # --- byte order marks
    ("utf8-bom", b"\xef\xbb\xbf" + GOOD, PARSE, None),
    ("utf8-bom-after-whitespace", b" \n\xef\xbb\xbf" + GOOD, PARSE, None),
    ("utf8-bom-only", b"\xef\xbb\xbf", PARSE, None),
    ("utf16le-bom-and-body", b"\xff\xfe" + GOOD.decode().encode("utf-16-le"), PARSE, None),
    # --- empty and whitespace bodies
    ("whitespace-space", b" ", PARSE, None),
    ("whitespace-mixed", b" \r\n\t \n", PARSE, None),
    ("nul-byte", b"\x00", PARSE, None),
    ("form-feed", b"\x0c", PARSE, None),
    ("vertical-tab", b"\x0b", PARSE, None),
    # --- not JSON-RPC 2.0
    ("params-null", b'{"jsonrpc":"2.0","id":1,"method":"ping","params":null}', INVALID_REQUEST, 1),
    ("params-string", b'{"jsonrpc":"2.0","id":1,"method":"ping","params":"x"}', INVALID_REQUEST, 1),
    ("request-with-result", b'{"jsonrpc":"2.0","id":1,"method":"ping","result":{}}', INVALID_REQUEST, 1),
    ("response-result-and-error", b'{"jsonrpc":"2.0","id":1,"result":{},"error":{"code":1,"message":"x"}}',
     INVALID_REQUEST, 1),
    ("response-without-id", b'{"jsonrpc":"2.0","result":{}}', INVALID_REQUEST, None),
    ("jsonrpc-escaped-other-version", b'{"jsonrpc":"2\\u002e1","id":1,"method":"ping"}', INVALID_REQUEST, 1),
    # --- batches: refused whole, id null
    ("batch-empty", b"[]", INVALID_REQUEST, None),
    ("batch-of-empty-batch", b"[[]]", INVALID_REQUEST, None),
    ("batch-nested", b'[[{"jsonrpc":"2.0","id":1,"method":"tools/list"}]]', INVALID_REQUEST, None),
    ("batch-good-and-bad-tool", b'[{"jsonrpc":"2.0","id":1,"method":"tools/list"},'
                                b'{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"a b"}}]',
     INVALID_PARAMS, None),
    ("batch-good-and-injected-method", b'[{"jsonrpc":"2.0","id":1,"method":"tools/list"},'
                                      b'{"jsonrpc":"2.0","id":2,"method":"tools/list mcp:admin"}]',
     INVALID_REQUEST, None),
    ("batch-good-and-number", b'[{"jsonrpc":"2.0","id":1,"method":"tools/list"},5]', INVALID_REQUEST, None),
    ("batch-good-and-null", b'[{"jsonrpc":"2.0","id":1,"method":"tools/list"},null]', INVALID_REQUEST, None),
    ("batch-good-and-jsonrpc-1", b'[{"jsonrpc":"2.0","id":1,"method":"tools/list"},'
                                 b'{"jsonrpc":"1.0","id":2,"method":"tools/list"}]', INVALID_REQUEST, None),
    ("batch-good-and-response-without-id", b'[{"jsonrpc":"2.0","id":1,"method":"tools/list"},'
                                           b'{"jsonrpc":"2.0","result":{}}]', INVALID_REQUEST, None),
    ("batch-trailing-comma", b'[{"jsonrpc":"2.0","id":1,"method":"tools/list"},]', PARSE, None),
    # --- not JSON
    ("trailing-second-message", GOOD + b'{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"x"}}',
     PARSE, None),
    ("single-quotes", b"{'jsonrpc':'2.0','id':1,'method':'ping'}", PARSE, None),
    ("comment", b'{"jsonrpc":"2.0","id":1,/*x*/"method":"ping"}', PARSE, None),
    ("raw-control-char-in-string", tools_call(b'"a\x01b"'), PARSE, None),
    ("raw-newline-in-string", tools_call(b'"a\nb"'), PARSE, None),
]


@pytest.mark.parametrize("body,code,rpc_id", [c[1:] for c in BODY_REFUSALS], ids=[c[0] for c in BODY_REFUSALS])
def test_body_refused(gw, body, code, rpc_id):
    assert_refused(gw, post(gw, body), 400, code, rpc_id)


def test_empty_body_with_content_length_zero(gw):
    assert_refused(gw, post(gw, b""), 400, PARSE, None)


# ----------------------------------------------------------------------------------------------------------------
# JSON bodies that must be accepted, and read exactly as a server reads them
# ----------------------------------------------------------------------------------------------------------------
BODY_ACCEPTED = [
    # Escapes are decoded before the names are checked: the token names what the server will execute.
    ("escaped-method-and-name", b'{"jsonrpc":"2.0","id":1,"method":"tools\\/call","params":{"n\\u0061me":'
                                b'"get\\u005fweather"}}', GOOD_SCOPE),
    ("fully-escaped-method", b'{"jsonrpc":"2.0","id":1,"method":"\\u0074\\u006f\\u006f\\u006c\\u0073\\u002f\\u0063'
                             b'\\u0061\\u006c\\u006c","params":{"name":"get_weather"}}', GOOD_SCOPE),
    ("surrogate-pair-in-arguments", b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"get_weather",'
                                    b'"arguments":{"q":"\\ud83d\\ude00 \xf0\x9f\x98\x80"}}}', GOOD_SCOPE),
    ("nest-100-in-arguments", b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"get_weather",'
                              b'"arguments":{"x":' + nest(100) + b"}}}", GOOD_SCOPE),
    ("id-u64-max", b'{"jsonrpc":"2.0","id":18446744073709551615,"method":"tools/list"}', {"mcp:tools/list"}),
    ("id-i64-min", b'{"jsonrpc":"2.0","id":-9223372036854775808,"method":"tools/list"}', {"mcp:tools/list"}),
    ("tool-128", tools_call(b'"' + b"t" * 128 + b'"'), {"mcp:tools/call", f"mcp:tools/{'t' * 128}:call"}),
    ("method-128", method_call(b'"' + b"m" * 128 + b'"'), {"mcp:" + "m" * 128}),
    ("batch-union-with-response", b'[{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"b.c-d_e"}},'
                                  b'{"jsonrpc":"2.0","method":"notifications/initialized"},'
                                  b'{"jsonrpc":"2.0","id":"s-1","result":{}}]',
     {"mcp:tools/call", "mcp:tools/b.c-d_e:call", "mcp:notifications/initialized", "mcp:responses"}),
    ("whitespace-around", b" \r\n\t" + GOOD + b" \r\n\t", GOOD_SCOPE),
    # JSON-RPC methods are case-sensitive: "Tools/Call" is not tools/call, and earns no tool scope at all.
    ("method-case-variant", b'{"jsonrpc":"2.0","id":1,"method":"Tools/Call","params":{"name":"admin"}}',
     {"mcp:Tools/Call"}),
    # A "name" nested in arguments is not the tool's name.
    ("name-inside-arguments", b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"arguments":'
                              b'{"name":"admin"},"name":"get_weather"}}', GOOD_SCOPE),
]


@pytest.mark.parametrize("body,expected", [c[1:] for c in BODY_ACCEPTED], ids=[c[0] for c in BODY_ACCEPTED])
def test_body_accepted_and_scoped(gw, body, expected):
    st, _, resp = post(gw, body)
    assert st == 200, (st, resp[:300])
    _, claims = forwarded_claims(gw, body)
    assert scope_set(claims) == expected


# ----------------------------------------------------------------------------------------------------------------
# bodies split into many small pieces
# ----------------------------------------------------------------------------------------------------------------
def test_valid_body_in_one_byte_chunks_is_signed(gw):
    body = b'{"jsonrpc":"2.0","id":"c1","method":"tools/call","params":{"name":"split_tool","arguments":{"a":[1,2]}}}'
    head = request_head("POST", "/mcp", [("content-type", "application/json"), ("transfer-encoding", "chunked")])
    parts = [head] + [chunk(body[i:i + 1]) for i in range(len(body))] + [b"0\r\n\r\n"]
    st, _, resp = send_raw(gw, parts, delay=0.001)
    assert st == 200, (st, resp[:300])
    _, claims = forwarded_claims(gw, body)
    assert scope_set(claims) == {"mcp:tools/call", "mcp:tools/split_tool:call"}


def test_valid_body_trickled_with_content_length_is_signed(gw):
    body = b'{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"trickle"}}'
    head = request_head("POST", "/mcp", [("content-type", "application/json"), ("content-length", str(len(body)))])
    st, _, resp = send_raw(gw, [head] + [body[i:i + 1] for i in range(len(body))], delay=0.001)
    assert st == 200, (st, resp[:300])
    _, claims = forwarded_claims(gw, body)
    assert scope_set(claims) == {"mcp:tools/call", "mcp:tools/trickle:call"}


def test_duplicate_key_split_across_chunks_is_refused(gw):
    body = tools_call(b'"get_weather","na\\u006de":"delete_all"')
    head = request_head("POST", "/mcp", [("transfer-encoding", "chunked")])
    parts = [head] + [chunk(body[i:i + 1]) for i in range(len(body))] + [b"0\r\n\r\n"]
    assert_refused(gw, send_raw(gw, parts, delay=0.001), 400, PARSE, None)


def test_bad_utf8_sequence_split_between_chunks_is_refused(gw):
    body = tools_call(b'"a\xc0\xafb"')
    i = body.index(b"\xc0")
    head = request_head("POST", "/mcp", [("transfer-encoding", "chunked")])
    parts = [head, chunk(body[:i + 1]), chunk(body[i + 1:]), b"0\r\n\r\n"]
    assert_refused(gw, send_raw(gw, parts, delay=0.01), 400, PARSE, None)


# ----------------------------------------------------------------------------------------------------------------
# size limits (max_body_bytes 4096 on this gateway)
# ----------------------------------------------------------------------------------------------------------------
def padded(size: int) -> bytes:
    prefix = b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"get_weather","arguments":{"pad":"'
    suffix = b'"}}}'
    return prefix + b"x" * (size - len(prefix) - len(suffix)) + suffix


def test_over_limit_by_content_length(gw_small):
    assert_refused(gw_small, post(gw_small, padded(LIMIT + 1)), 413, INVALID_REQUEST, None)


def test_huge_content_length_without_body_is_refused_at_headers(gw_small):
    head = request_head("POST", "/mcp", [("content-type", "application/json"), ("content-length", "1000000000000")])
    assert_refused(gw_small, send_raw(gw_small, [head], timeout=5), 413, INVALID_REQUEST, None)


def test_over_limit_chunked_small_chunks(gw_small):
    body = padded(LIMIT + 1)
    head = request_head("POST", "/mcp", [("transfer-encoding", "chunked")])
    parts = [head] + [chunk(body[i:i + 64]) for i in range(0, len(body), 64)] + [b"0\r\n\r\n"]
    assert_refused(gw_small, send_raw(gw_small, parts), 413, INVALID_REQUEST, None)


def test_over_limit_chunked_one_chunk(gw_small):
    head = request_head("POST", "/mcp", [("transfer-encoding", "chunked")])
    assert_refused(gw_small, send_raw(gw_small, [head, chunk(padded(LIMIT + 1)), b"0\r\n\r\n"]), 413, INVALID_REQUEST, None)


def test_over_limit_by_trailing_whitespace(gw_small):
    body = GOOD + b" " * (LIMIT + 1 - len(GOOD))
    assert_refused(gw_small, post(gw_small, body), 413, INVALID_REQUEST, None)


@pytest.mark.parametrize("transfer", ["content-length", "chunked"])
def test_exactly_at_limit_is_signed(gw_small, transfer):
    body = padded(LIMIT)
    if transfer == "chunked":
        head = request_head("POST", "/mcp", [("transfer-encoding", "chunked")])
        st, _, resp = send_raw(gw_small, [head] + [chunk(body[i:i + 512]) for i in range(0, len(body), 512)]
                               + [b"0\r\n\r\n"])
    else:
        st, _, resp = post(gw_small, body)
    assert st == 200, (st, resp[:300])
    _, claims = forwarded_claims(gw_small, body)
    assert scope_set(claims) == GOOD_SCOPE


def test_content_length_and_chunked_together_never_forwarded(gw):
    """Request smuggling shape: Envoy's codec refuses it before the filter."""
    head = request_head("POST", "/mcp", [("content-length", str(len(GOOD))), ("transfer-encoding", "chunked")])
    assert_rejected_before_filter(gw, send_raw(gw, [head, chunk(GOOD), b"0\r\n\r\n"]))


def test_non_numeric_content_length_never_forwarded(gw):
    head = request_head("POST", "/mcp", [("content-length", "4a")])
    assert_rejected_before_filter(gw, send_raw(gw, [head, GOOD]))


# ----------------------------------------------------------------------------------------------------------------
# content-encoding: the filter must read the JSON it scopes
# ----------------------------------------------------------------------------------------------------------------
ENCODED = {
    "gzip": ("gzip", gzip.compress(GOOD)),
    "x-gzip": ("x-gzip", gzip.compress(GOOD)),
    "deflate": ("deflate", zlib.compress(GOOD)),
    "br": ("br", b"\x0b\x02\x80" + GOOD + b"\x03"),  # a stored (uncompressed) brotli stream
    "zstd": ("zstd", GOOD),
    "compress": ("compress", GOOD),
    "gzip-uppercase": ("GZIP", gzip.compress(GOOD)),
    "gzip-then-identity": ("gzip, identity", gzip.compress(GOOD)),
    "identity-then-gzip": ("identity, gzip", gzip.compress(GOOD)),
    # Plain JSON that a lenient filter might accept while the server would try to decode it.
    "gzip-label-plain-body": ("gzip", GOOD),
}


@pytest.mark.parametrize("case", list(ENCODED))
def test_content_encoding_refused_415(gw, case):
    encoding, body = ENCODED[case]
    assert_refused(gw, post(gw, body, {"content-encoding": encoding}), 415, INVALID_REQUEST, None)


def test_content_encoding_repeated_header_refused_415(gw):
    head = request_head("POST", "/mcp", [("content-encoding", "identity"), ("content-encoding", "gzip"),
                                         ("content-length", str(len(GOOD)))])
    assert_refused(gw, send_raw(gw, [head, GOOD]), 415, INVALID_REQUEST, None)


def test_content_encoding_on_get_refused_415(gw):
    st = raw_request(gw.url, "GET", "/mcp", headers={"content-encoding": "gzip"})
    assert_refused(gw, st, 415, INVALID_REQUEST, None)


@pytest.mark.parametrize("encoding", ["identity", "Identity", " identity "])
def test_identity_encoding_is_accepted(gw, encoding):
    st, _, resp = post(gw, GOOD, {"content-encoding": encoding})
    assert st == 200, (st, resp[:300])
    _, claims = forwarded_claims(gw, GOOD)
    assert scope_set(claims) == GOOD_SCOPE


# ----------------------------------------------------------------------------------------------------------------
# HTTP methods
# ----------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("method", ["PUT", "PATCH", "OPTIONS", "TRACE", "PROPFIND", "PURGE"])
def test_unexpected_method_refused_405(gw, method):
    resp = raw_request(gw.url, method, "/mcp", headers=MCP_HEADERS, body=GOOD)
    assert_refused(gw, resp, 405, INVALID_REQUEST, None, allow=ALLOW_MCP)


def test_cors_preflight_refused_405(gw):
    resp = raw_request(gw.url, "OPTIONS", "/mcp", headers={"origin": "https://evil.example",
                                                          "access-control-request-method": "POST",
                                                          "access-control-request-headers": "authorization"})
    assert_refused(gw, resp, 405, INVALID_REQUEST, None, allow=ALLOW_MCP)


def test_connect_refused_405(gw):
    head = b"CONNECT 127.0.0.1:1 HTTP/1.1\r\nhost: 127.0.0.1:1\r\n\r\n"
    assert_refused(gw, send_raw(gw, [head], method="CONNECT"), 405, INVALID_REQUEST, None, allow=ALLOW_MCP)


def test_head_on_mcp_refused_405(gw):
    st, headers, body = raw_request(gw.url, "HEAD", "/mcp")
    assert st == 405 and headers.get("allow") == ALLOW_MCP and body == b"", (st, headers, body)
    assert_nothing_forwarded(gw)


@pytest.mark.parametrize("method", ["post", "FOO", "P\x00ST"])
def test_malformed_method_never_forwarded(gw, method):
    """Methods Envoy's codec does not accept (case matters, unknown tokens) are refused before the filter."""
    assert_rejected_before_filter(gw, send_raw(gw, [request_head(method, "/mcp", [("content-length", "0")])]))


@pytest.mark.parametrize("method", ["GET", "DELETE"])
def test_get_and_delete_with_a_body_refused(gw, method):
    assert_refused(gw, raw_request(gw.url, method, "/mcp", body=GOOD), 400, INVALID_REQUEST, None)


def test_get_with_chunked_body_refused(gw):
    head = request_head("GET", "/mcp", [("transfer-encoding", "chunked")])
    assert_refused(gw, send_raw(gw, [head, chunk(b"x"), b"0\r\n\r\n"], method="GET"), 400, INVALID_REQUEST, None)


# ----------------------------------------------------------------------------------------------------------------
# the /.well-known endpoints: answered by the filter, never forwarded, never shadowed
# ----------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def jwks_body(_gw):
    st, _, body = raw_request(_gw.url, "GET", JWKS_SUFFIX)
    assert st == 200
    return json.loads(body)


@pytest.mark.parametrize("suffix", [JWKS_SUFFIX, DISCOVERY_SUFFIX])
@pytest.mark.parametrize("method", ["POST", "DELETE", "PUT", "PATCH", "OPTIONS"])
def test_well_known_other_methods_refused_405(gw, suffix, method):
    resp = raw_request(gw.url, method, suffix, headers=MCP_HEADERS, body=GOOD)
    assert_refused(gw, resp, 405, INVALID_REQUEST, None, allow=ALLOW_WELL_KNOWN)


@pytest.mark.parametrize("path", [JWKS_SUFFIX + "?x=1", DISCOVERY_SUFFIX + "?redirect=https://evil.example"])
def test_well_known_post_with_query_refused_405(gw, path):
    assert_refused(gw, post(gw, GOOD, path=path), 405, INVALID_REQUEST, None, allow=ALLOW_WELL_KNOWN)


@pytest.mark.parametrize("query", ["?x=1", "?", "?keys=evil&x", "?%2F..%2F"])
def test_well_known_query_string_still_answered_by_filter(gw, jwks_body, query):
    st, _, body = raw_request(gw.url, "GET", JWKS_SUFFIX + query)
    assert st == 200 and json.loads(body) == jwks_body, (st, body[:200])
    st, _, body = raw_request(gw.url, "GET", DISCOVERY_SUFFIX + query)
    assert st == 200 and json.loads(body)["issuer"] == gw.url, (st, body[:200])
    assert_nothing_forwarded(gw)


@pytest.mark.parametrize("suffix", [JWKS_SUFFIX, DISCOVERY_SUFFIX])
def test_well_known_head_answered_by_filter(gw, suffix):
    st, _, body = raw_request(gw.url, "HEAD", suffix)
    assert st == 200 and body == b"", (st, body)
    assert_nothing_forwarded(gw)


JWKS_SPELLINGS = [
    "/.well-known/jwks%2Ejson",
    "/%2Ewell-known/jwks.json",
    "/.well-known/%6A%77%6B%73.json",
    "/.well-known/%6a%77%6b%73%2e%6a%73%6f%6e",
    "//.well-known//jwks.json",
    "/./.well-known/./jwks.json",
    "/mcp/../.well-known/jwks.json",
    "/.well-known/x/../jwks.json",
    "/.well-known/%2e%2e/.well-known/jwks.json",
    "/.well-known\\jwks.json",
    "http://evil.example/.well-known/jwks.json",  # absolute-form request target
]


@pytest.mark.parametrize("path", JWKS_SPELLINGS)
def test_jwks_spellings_answered_by_filter(gw, jwks_body, path):
    st, _, body = raw_request(gw.url, "GET", path)
    assert st == 200 and json.loads(body) == jwks_body, (st, body[:200])
    assert_nothing_forwarded(gw)


@pytest.mark.parametrize("path", JWKS_SPELLINGS)
def test_jwks_spellings_with_post_refused_405(gw, path):
    assert_refused(gw, post(gw, GOOD, path=path), 405, INVALID_REQUEST, None, allow=ALLOW_WELL_KNOWN)


@pytest.mark.parametrize("path", [
    "/.well-known%2Fjwks.json",
    "/.well-known%2fjwks.json",
    "/.well-known%5Cjwks.json",
    "/.well-known/jwks.json#x",
    "/.well-known/jwks.json%00",
])
@pytest.mark.parametrize("method", ["GET", "POST"])
def test_escaped_separators_rejected_by_envoy(gw, path, method):
    resp = raw_request(gw.url, method, path, headers=MCP_HEADERS, body=GOOD if method == "POST" else None)
    assert_rejected_before_filter(gw, resp)


@pytest.mark.parametrize("path", [
    "/.well-known/jwks.json/",
    "/.WELL-KNOWN/jwks.json",
    "/.well-known/JWKS.json",
    "/.well-known/jwks.json;x=1",
    "/.well-known/jwks.json%3Fx=1",
    "/.well-known/jwks.json%20",
])
def test_near_miss_paths_are_ordinary_mcp_requests(gw, path):
    """Policy: only the exact (normalised) endpoint paths are the filter's; anything else is an MCP request like any
    other. A GET is forwarded with a token scoped to the SSE stream only (a verifier fetching jwks_uri always hits the
    filter), and a POST without a valid JSON-RPC body is refused like anywhere else."""
    st, _, resp = raw_request(gw.url, "GET", path)
    assert st == 200, (st, resp[:200])
    req, claims = forwarded_claims(gw, b"", method="GET")
    assert req.path == path
    assert scope_set(claims) == {"mcp:stream"}
    reset_forwarded(gw)
    assert_refused(gw, post(gw, b"", path=path), 400, PARSE, None)


# ----------------------------------------------------------------------------------------------------------------
# request trailers
# ----------------------------------------------------------------------------------------------------------------
def with_trailers(body: bytes, chunk_size: int = 0) -> list:
    head = request_head("POST", "/mcp", [("content-type", "application/json"), ("transfer-encoding", "chunked")])
    size = chunk_size or len(body)
    return [head] + [chunk(body[i:i + size]) for i in range(0, len(body), size)] + [b"0\r\nx-trailer: evil\r\n\r\n"]


def test_trailers_refused_with_shipped_envoy_yaml(gw):
    """README: requests with trailers are refused (400). With envoy.yaml as shipped."""
    assert_refused(gw, send_raw(gw, with_trailers(GOOD)), 400, INVALID_REQUEST, None)


@pytest.mark.parametrize("chunk_size", [0, 1])
def test_trailers_refused_when_envoy_passes_them(gw_small, chunk_size):
    assert_refused(gw_small, send_raw(gw_small, with_trailers(GOOD, chunk_size), delay=0.0005),
                   400, INVALID_REQUEST, None)


def test_trailers_after_bad_body_still_refused(gw_small):
    """The body is complete only with the trailers, so the trailers decide (400, -32600)."""
    assert_refused(gw_small, send_raw(gw_small, with_trailers(tools_call(b'"a b"'))), 400, INVALID_REQUEST, None)


def test_trailers_gateway_signs_without_trailers(gw_small):
    """Sanity: the trailers gateway itself works, so the refusals above are about the trailers."""
    head = request_head("POST", "/mcp", [("transfer-encoding", "chunked")])
    st, _, resp = send_raw(gw_small, [head, chunk(GOOD), b"0\r\n\r\n"])
    assert st == 200, (st, resp[:200])
    reqs = gw_small.upstream.wait_for(1)
    assert len(reqs) == 1
    verify_with_discovery(reqs[0].bearer_token(), gw_small.url, "mcp")


# ----------------------------------------------------------------------------------------------------------------
# headers: no token passthrough, identity headers
# ----------------------------------------------------------------------------------------------------------------
def test_client_authorization_never_passes_through(gw):
    head = request_head("POST", "/mcp", [
        ("authorization", "Bearer client-token-one"),
        ("Authorization", "Bearer client-token-two"),
        ("AUTHORIZATION", "Basic Y2xpZW50OnRocmVl, Bearer client-token-four"),
        ("content-type", "application/json"),
        ("content-length", str(len(GOOD))),
    ])
    st, _, resp = send_raw(gw, [head, GOOD])
    assert st == 200, (st, resp[:200])
    req, claims = forwarded_claims(gw, GOOD)
    everything = json.dumps(req.headers)
    for leaked in ("client-token", "Y2xpZW50OnRocmVl", "Basic"):
        assert leaked not in everything, f"{leaked!r} reached the upstream: {req.headers}"
    assert scope_set(claims) == GOOD_SCOPE


def test_client_authorization_on_refused_request_is_not_echoed(gw):
    resp = post(gw, tools_call(b'"a b"'), {"authorization": "Bearer secret-client-token"})
    data = assert_refused(gw, resp, 400, INVALID_PARAMS, 7)
    assert "secret-client-token" not in json.dumps(data)


IDENTITY_REFUSALS = [
    ("x-user-id", b"\xff\xfe-bad"),
    ("x-user-id", b"caf\xe9"),
    ("x-user-id", b"\xc0\xafadmin"),
    ("x-user-email", b"a\xffb@example.com"),
    ("x-team-id", b"team\xed\xa0\x80"),
    ("x-org-id", b"\x80"),
    ("x-user-id", b"alice\tadmin"),
    ("x-user-id", b"x" * 1025),
]


@pytest.mark.parametrize("name,value", IDENTITY_REFUSALS,
                         ids=[f"{n}-{i}" for i, (n, _) in enumerate(IDENTITY_REFUSALS)])
def test_identity_header_refused_400(gw, name, value):
    body = b'{"jsonrpc":"2.0","id":11,"method":"tools/list"}'
    resp = raw_request(gw.url, "POST", "/mcp", headers={**MCP_HEADERS, name: value}, body=body)
    data = assert_refused(gw, resp, 400, INVALID_REQUEST, 11)
    assert value.decode("latin-1") not in data["error"]["message"]


@pytest.mark.parametrize("value", [b"alice\x01", b"alice\x7f", b"alice\x00admin", b"alice\nadmin"])
def test_identity_header_control_bytes_never_forwarded(gw, value):
    """Bytes HTTP/1.1 forbids in a field value: Envoy's codec answers 400 before the filter runs."""
    head = request_head("POST", "/mcp", [("x-user-id", value), ("content-length", str(len(GOOD)))])
    assert_rejected_before_filter(gw, send_raw(gw, [head, GOOD]))


def test_identity_header_bare_cr_never_reaches_the_token(gw):
    """Envoy's codec drops a bare CR inside a field value before the filter runs: the token never carries one."""
    head = request_head("POST", "/mcp", [("x-user-id", b"alice\radmin"), ("content-length", str(len(GOOD)))])
    st, _, resp = send_raw(gw, [head, GOOD])
    assert st in (200, 400), (st, resp[:200])
    if st == 200:
        _, claims = forwarded_claims(gw, GOOD)
        assert claims["sub"] in ("aliceadmin", "alice"), claims["sub"]
    else:
        assert_nothing_forwarded(gw)


def test_identity_header_1024_bytes_accepted(gw):
    st, _, resp = post(gw, GOOD, {"x-user-id": "u" * 1024})
    assert st == 200, (st, resp[:200])
    req, claims = forwarded_claims(gw, GOOD)
    assert claims["sub"] == "u" * 1024
    assert req.header_values("x-user-id") == [], "identity headers are stripped before the upstream"


def test_repeated_identity_header_refused(gw):
    """Two values for one identity header are ambiguous (which one did the auth proxy set?). Envoy's default
    `append_action` for request_headers_to_add is APPEND_IF_EXISTS_OR_ADD, so a proxy that adds the authenticated
    user puts the client's spoofed value FIRST: the filter must refuse, never pick one."""
    head = request_head("POST", "/mcp", [("x-user-id", "mallory-spoofed"), ("x-user-id", "alice-authenticated"),
                                         ("content-type", "application/json"), ("content-length", str(len(GOOD)))])
    assert_refused(gw, send_raw(gw, [head, GOOD]), 400, INVALID_REQUEST, 1)


def test_refused_identity_value_not_logged(gw):
    marker = "zz-log-marker-\u00e9".encode("latin-1")  # not UTF-8: refused
    resp = raw_request(gw.url, "POST", "/mcp", headers={**MCP_HEADERS, "x-user-id": marker}, body=GOOD)
    assert_refused(gw, resp, 400, INVALID_REQUEST, 1)
    deadline = time.monotonic() + 3
    while "reason=invalid_identity" not in gw.envoy.log() and time.monotonic() < deadline:
        time.sleep(0.05)
    log = gw.envoy.log()
    assert "reason=invalid_identity" in log, log[-2000:]
    assert "zz-log-marker" not in log


# ----------------------------------------------------------------------------------------------------------------
# one connection, several requests
# ----------------------------------------------------------------------------------------------------------------
def test_pipelined_refusal_does_not_leak_into_neighbours(gw):
    good_a = b'{"jsonrpc":"2.0","id":"a","method":"tools/call","params":{"name":"tool_a"}}'
    bad = tools_call(b'"tool_b","name":"tool_c"')
    good_d = b'{"jsonrpc":"2.0","id":"d","method":"tools/call","params":{"name":"tool_d"}}'

    def req(body):
        return request_head("POST", "/mcp", [("content-type", "application/json"),
                                             ("content-length", str(len(body)))]) + body

    responses = read_responses(gw, req(good_a) + req(bad) + req(good_d), 3)
    assert [r[0] for r in responses][:2] == [200, 400], [(r[0], r[2][:100]) for r in responses]
    assert json.loads(responses[1][2])["error"]["code"] == PARSE
    # The request after a refusal may be served (200) or dropped with the connection, never mixed up. Envoy's
    # counter, read after the responses, says how many went upstream (no wait).
    served = len([r for r in responses if r[0] == 200])
    assert forwarded_since_reset(gw) == served
    reqs = gw.upstream.wait_for(served)
    assert len(reqs) == served, [(r.body, r.path) for r in reqs]
    for r in reqs:
        claims = verify_with_discovery(r.bearer_token(), gw.url, "mcp")
        tool = json.loads(r.body)["params"]["name"]
        assert r.body in (good_a, good_d)
        assert scope_set(claims) == {"mcp:tools/call", f"mcp:tools/{tool}:call"}


def test_gateway_still_healthy_after_the_onslaught(gw):
    """Nothing above killed the worker's VM (a panicked VM answers 503 to everything after)."""
    st, _, resp = post(gw, GOOD, {"x-user-id": "alice"})
    assert st == 200, (st, resp[:200])
    _, claims = forwarded_claims(gw, GOOD)
    assert claims["sub"] == "alice"
    r = requests.get(gw.url + JWKS_SUFFIX, timeout=5)
    assert r.status_code == 200


# ----------------------------------------------------------------------------------------------------------------
# MCP routing headers (mcp-method, mcp-name) that disagree with the body the token is scoped from
# ----------------------------------------------------------------------------------------------------------------
ROUTING_MISMATCHES = [
    ("method-names-another-method", {"mcp-method": "tools/list"}),
    ("name-names-another-tool", {"mcp-method": "tools/call", "mcp-name": "delete_everything"}),
    ("name-without-method", {"mcp-name": "delete_everything"}),
    ("method-case-differs", {"mcp-method": "Tools/Call"}),
]


@pytest.mark.parametrize("headers", [c[1] for c in ROUTING_MISMATCHES], ids=[c[0] for c in ROUTING_MISMATCHES])
def test_routing_headers_that_disagree_with_the_body_are_refused(gw, headers):
    r = post(gw, tools_call(b'"get_weather"'), headers)
    assert_refused(gw, r, 400, -32020, 7)


def test_repeated_routing_header_is_refused(gw):
    body = tools_call(b'"get_weather"')
    headers = [*MCP_HEADERS.items(), ("mcp-method", "tools/call"), ("mcp-method", "tools/call"),
               ("content-length", str(len(body)))]
    (response,) = read_responses(gw, request_head("POST", "/mcp", headers) + body, 1)
    assert_refused(gw, response, 400, -32020, 7)


def test_matching_routing_headers_are_signed(gw):
    body = tools_call(b'"get_weather"')
    r = post(gw, body, {"mcp-method": "tools/call", "mcp-name": "get_weather"})
    assert r[0] == 200, r
    _, claims = forwarded_claims(gw, body)
    assert scope_set(claims) == {"mcp:tools/call", "mcp:tools/get_weather:call"}
