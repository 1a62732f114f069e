#!/usr/bin/env python3
"""Call one tool of an MCP server with the official MCP Python SDK (Streamable HTTP) and print its result.

    .venv/bin/python examples/call_tool.py whoami                        # through the gateway (make run)
    .venv/bin/python examples/call_tool.py get_weather city=Paris
    .venv/bin/python examples/call_tool.py --mode legacy --yes subscribe_alerts city=Oslo
    .venv/bin/python examples/call_tool.py --url http://127.0.0.1:8081/mcp whoami   # straight to the server: 401

The identity flags become the headers envoy.yaml maps into the token (x-user-id -> sub, x-user-email -> email,
x-team-id / x-org-id -> act.sub). In production an authenticating proxy sets them, never the client itself.
Arguments are key=value; a value that parses as JSON is sent as JSON, anything else as a string.
Exit status: 0 the tool answered, 1 the connection was refused or failed, 2 the tool returned an error.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys

import httpx2
from mcp import Client, types
from mcp.client.streamable_http import streamable_http_client


def parse_arguments(pairs):
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise SystemExit(f"call_tool: argument {pair!r} is not key=value")
        try:
            out[key] = json.loads(value)
        except ValueError:
            out[key] = value
    return out


async def call(args) -> int:
    headers = {}
    for name, value in (("x-user-id", args.user), ("x-user-email", args.email), ("x-team-id", args.team),
                        ("x-org-id", args.org)):
        if value:
            headers[name] = value
    if args.token:
        headers["authorization"] = f"Bearer {args.token}"
    refusals = []

    async def on_response(response):
        if response.status_code >= 400:
            refusals.append(f"{response.request.method} {response.request.url.path}: HTTP {response.status_code}"
                            + (f" (www-authenticate: {response.headers['www-authenticate']})"
                               if "www-authenticate" in response.headers else ""))

    async def on_elicitation(_context, params):
        print(f"[server asks] {params.message} -> {'yes' if args.yes else 'no (pass --yes to accept)'}",
              file=sys.stderr)
        if args.yes:
            return types.ElicitResult(action="accept", content={"value": True})
        return types.ElicitResult(action="decline")

    try:
        async with httpx2.AsyncClient(headers=headers, timeout=httpx2.Timeout(10.0, read=60.0),
                                      event_hooks={"response": [on_response]}) as http:
            async with Client(streamable_http_client(args.url, http_client=http), mode=args.mode,
                              elicitation_callback=on_elicitation) as client:
                print(f"[connected to {args.url}, MCP protocol {client.protocol_version}]", file=sys.stderr)
                result = await client.call_tool(args.tool, parse_arguments(args.arguments))
    except Exception as e:  # noqa: BLE001 - the SDK wraps HTTP refusals in task-group errors
        detail = "; ".join(refusals) or f"{type(e).__name__}: {e}"
        print(f"call_tool: refused or failed: {detail}", file=sys.stderr)
        return 1
    if result.is_error:
        print("call_tool: the tool returned an error: "
              + " ".join(getattr(b, "text", "") for b in result.content), file=sys.stderr)
        return 2
    if result.structured_content is not None:
        print(json.dumps(result.structured_content, indent=2, sort_keys=True))
    else:
        for block in result.content:
            print(getattr(block, "text", block))
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("tool")
    p.add_argument("arguments", nargs="*", metavar="key=value")
    p.add_argument("--url", default="http://127.0.0.1:10000/mcp", help="the MCP endpoint (default: the gateway)")
    p.add_argument("--user", default="alice", help="x-user-id (empty: none)")
    p.add_argument("--email", default="alice@example.com", help="x-user-email (empty: none)")
    p.add_argument("--team", default="team-blue", help="x-team-id (empty: none)")
    p.add_argument("--org", default="", help="x-org-id")
    p.add_argument("--token", default="", help="send this bearer token yourself (the gateway replaces it)")
    p.add_argument("--mode", default="auto", choices=["auto", "legacy"],
                   help="auto: the SDK's default (server/discover, 2026-07-28 when offered); legacy: the initialize "
                        "handshake with a session, the GET stream and DELETE on close")
    p.add_argument("--yes", action="store_true", help="accept the server's elicitation requests")
    return asyncio.run(call(p.parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
