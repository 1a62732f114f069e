#!/usr/bin/env python3
"""A recording HTTP/1.1 upstream for the end-to-end tests and the `make run` demo.

Standard library only, so `python tests/e2e/recording_upstream.py --port 8081` works without the test venv.

Every request is recorded (method, path, headers as an ordered list of (name, value), body bytes) and answered with
200 and a JSON echo:

    {"method": ..., "path": ..., "headers": {...}, "authorization": <header or null>,
     "claims": <JWT payload decoded WITHOUT verification, for display only, or null>, "body": <body text>}

In tests:

    up = RecordingUpstream().start()
    ... up.port, up.requests, up.clear(), up.wait_for(1) ...
    up.stop()
"""

from __future__ import annotations

import argparse
import base64
import json
import socket
import sys
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

__all__ = ["RecordedRequest", "RecordingUpstream", "decode_claims_unverified"]


@dataclass
class RecordedRequest:
    method: str
    path: str
    headers: list  # list[tuple[str, str]] in arrival order, names as sent
    body: bytes = b""
    received_at: float = field(default_factory=time.time)

    def header_values(self, name: str) -> list:
        name = name.lower()
        return [v for k, v in self.headers if k.lower() == name]

    def header(self, name: str):
        """The single value of header `name`, None when absent. Raises if the header is repeated."""
        values = self.header_values(name)
        if len(values) > 1:
            raise AssertionError(f"header {name!r} appears {len(values)} times: {values!r}")
        return values[0] if values else None

    def bearer_token(self):
        auth = self.header("authorization")
        if auth is None:
            return None
        scheme, _, token = auth.partition(" ")
        return token if scheme.lower() == "bearer" else None


def _b64url_decode(segment: str) -> bytes:
    return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))


def decode_claims_unverified(authorization):
    """Payload of a `Bearer <jwt>` value, decoded WITHOUT verifying anything. For display only."""
    if not authorization:
        return None
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer":
        return None
    parts = token.strip().split(".")
    if len(parts) != 3:
        return None
    try:
        claims = json.loads(_b64url_decode(parts[1]))
    except Exception:  # noqa: BLE001 - display helper, never raises
        return None
    return claims if isinstance(claims, dict) else None


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    # Set by RecordingUpstream.
    recorder: "RecordingUpstream"

    def get_request(self):
        sock, addr = super().get_request()
        # Without TCP_NODELAY, headers and body written separately stall ~40 ms per keep-alive request
        # (Nagle + delayed ACK), which would hide the filter's real cost.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock, addr


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "recording-upstream/1"
    sys_version = ""

    def log_message(self, format, *args):  # noqa: A002 - signature from the base class
        pass  # the recorder prints its own line when asked to

    def _read_body(self) -> bytes:
        te = (self.headers.get("transfer-encoding") or "").lower()
        if "chunked" in te:
            chunks = []
            while True:
                line = self.rfile.readline(65537)
                if not line:
                    break
                size = int(line.split(b";", 1)[0].strip() or b"0", 16)
                if size == 0:
                    # Trailers (if any) end with an empty line.
                    while True:
                        trailer = self.rfile.readline(65537)
                        if trailer in (b"\r\n", b"\n", b""):
                            break
                    break
                chunks.append(self.rfile.read(size))
                self.rfile.readline(3)  # CRLF after the chunk
            return b"".join(chunks)
        length = self.headers.get("content-length")
        if length:
            return self.rfile.read(int(length))
        return b""

    def _handle(self):
        body = self._read_body()
        rec = RecordedRequest(
            method=self.command,
            path=self.path,
            headers=list(self.headers.items()),
            body=body,
        )
        recorder = self.server.recorder
        recorder._record(rec)  # recorded BEFORE answering: a client that has the response can see the record

        header_map = {}
        for k, v in rec.headers:
            header_map.setdefault(k.lower(), []).append(v)
        auth_values = header_map.get("authorization")
        authorization = auth_values[0] if auth_values and len(auth_values) == 1 else (auth_values or None)
        claims = decode_claims_unverified(authorization) if isinstance(authorization, str) else None
        payload = {
            "method": rec.method,
            "path": rec.path,
            "headers": {k: (v[0] if len(v) == 1 else v) for k, v in header_map.items()},
            "authorization": authorization,
            "claims": claims,
            "body": body.decode("utf-8", errors="replace"),
        }
        if recorder.verbose:
            print(f"{rec.method} {rec.path} claims={json.dumps(claims, sort_keys=True)}", flush=True)

        out = json.dumps(payload).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(out)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(out)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_OPTIONS = do_HEAD = _handle


class RecordingUpstream:
    """Threaded HTTP/1.1 server on 127.0.0.1 that records every request it receives."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, verbose: bool = False):
        self.host = host
        self._requested_port = port
        self.verbose = verbose
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._requests: list = []
        self._server = None
        self._thread = None

    # --- lifecycle -------------------------------------------------------------------------------------------
    def start(self) -> "RecordingUpstream":
        self._server = _Server((self.host, self._requested_port), _Handler)
        self._server.recorder = self
        self._thread = threading.Thread(target=self._server.serve_forever, name="recording-upstream", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    @property
    def port(self) -> int:
        return self._server.server_address[1]

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    # --- recordings ------------------------------------------------------------------------------------------
    def _record(self, rec: RecordedRequest) -> None:
        with self._cond:
            self._requests.append(rec)
            self._cond.notify_all()

    @property
    def requests(self) -> list:
        """A snapshot (copy) of everything received so far, in arrival order."""
        with self._lock:
            return list(self._requests)

    def clear(self) -> None:
        with self._lock:
            self._requests.clear()

    def wait_for(self, count: int, timeout: float = 5.0) -> list:
        """Wait until at least `count` requests were recorded; return the snapshot (may be shorter on timeout)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while len(self._requests) < count:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._cond.wait(remaining)
            return list(self._requests)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8081)
    args = parser.parse_args(argv)
    up = RecordingUpstream(args.host, args.port, verbose=True).start()
    print(f"recording upstream listening on {up.url}", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        up.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
