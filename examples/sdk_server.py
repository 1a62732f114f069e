#!/usr/bin/env python3
"""The same verification with the official MCP Python SDK's own auth hooks (no FastMCP): an `MCPServer` with a
`TokenVerifier` built on PyJWT, pointed at the gateway's discovery document.

    python examples/sdk_server.py --port 8082 --issuer http://127.0.0.1:10000 --audience mcp

Tool: `whoami` (needs the token scope `mcp:tools/whoami:call`) returns the verified claims.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import urllib.request

import anyio.to_thread
import jwt
from mcp.server.auth.middleware.auth_context import get_access_token
from mcp.server.auth.provider import AccessToken
from mcp.server.auth.settings import AuthSettings
from mcp.server.mcpserver import MCPServer

REQUIRED_CLAIMS = ["iss", "aud", "sub", "act", "scope", "iat", "exp", "jti"]


def discover_jwks_uri(issuer: str) -> str:
    with urllib.request.urlopen(issuer + "/.well-known/openid-configuration", timeout=5) as resp:  # noqa: S310
        doc = json.load(resp)
    if doc.get("issuer") != issuer:
        raise SystemExit(f"sdk_server: discovery names issuer {doc.get('issuer')!r}, expected {issuer!r}")
    return doc["jwks_uri"]


class GatewayTokenVerifier:
    """mcp.server.auth.provider.TokenVerifier for the gateway's tokens: RS256 only, key from the gateway's JWKS
    (by kid), issuer, audience, exp/nbf (30 s leeway) and the gateway's claims required."""

    def __init__(self, *, issuer: str, audience: str, jwks_uri: str, cooldown: float = 30.0):
        self.issuer, self.audience = issuer, audience
        # Re-fetches the JWKS on an unknown kid, at most once per `cooldown` seconds (PyJWT's default: 30).
        self.jwks = jwt.PyJWKClient(jwks_uri, cache_jwk_set=True, lifespan=300, cooldown_duration=cooldown)

    async def verify_token(self, token: str) -> AccessToken | None:
        try:
            key = await anyio.to_thread.run_sync(self.jwks.get_signing_key_from_jwt, token)  # may fetch: blocking
            claims = jwt.decode(token, key.key, algorithms=["RS256"], audience=self.audience, issuer=self.issuer,
                                leeway=30, options={"require": REQUIRED_CLAIMS})
        except (jwt.PyJWTError, ValueError):
            return None
        if not isinstance(claims.get("act"), dict) or not isinstance(claims["act"].get("sub"), str):
            return None
        return AccessToken(token=token, client_id=claims["act"]["sub"], subject=claims["sub"],
                           scopes=str(claims["scope"]).split(), expires_at=int(claims["exp"]), resource=self.audience,
                           claims=claims)


def build_server(*, issuer: str, audience: str, jwks_uri: str, public_url: str) -> MCPServer:
    server = MCPServer(
        "weather-sdk",
        token_verifier=GatewayTokenVerifier(issuer=issuer, audience=audience, jwks_uri=jwks_uri),
        auth=AuthSettings(issuer_url=issuer, resource_server_url=public_url,
                          validate_token_resource=False),  # the verifier checks `aud` itself
    )

    @server.tool()
    def whoami() -> dict:
        """The claims this server verified for the request (needs scope mcp:tools/whoami:call)."""
        token = get_access_token()
        if token is None or "mcp:tools/whoami:call" not in token.scopes:
            raise ValueError("forbidden: the token does not carry scope mcp:tools/whoami:call")
        c = token.claims or {}
        return {"sub": c.get("sub"), "act": c.get("act"), "email": c.get("email"), "scope": token.scopes,
                "iss": c.get("iss"), "aud": c.get("aud"), "jti": c.get("jti")}

    return server


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8082)
    p.add_argument("--issuer", default=os.environ.get("MCP_ISSUER", "http://127.0.0.1:10000"))
    p.add_argument("--audience", default=os.environ.get("MCP_AUDIENCE", "mcp"))
    p.add_argument("--public-url", default=None, help="the URL clients use for this server (default: the gateway's)")
    args = p.parse_args(argv)
    issuer = args.issuer.rstrip("/")
    server = build_server(issuer=issuer, audience=args.audience, jwks_uri=discover_jwks_uri(issuer),
                          public_url=args.public_url or issuer + "/mcp")
    server.run("streamable-http", host=args.host, port=args.port)
    return 0


if __name__ == "__main__":
    sys.exit(main())
