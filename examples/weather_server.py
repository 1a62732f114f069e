#!/usr/bin/env python3
"""Example MCP server (FastMCP, Streamable HTTP) that trusts only the tokens minted by mcp-jwt-signer.

It is what `make run` and docker-compose.yml put behind Envoy, and what the end-to-end tests talk to.

At start-up it reads the gateway's OIDC discovery document (`<issuer>/.well-known/openid-configuration`), takes
its `jwks_uri`, and configures FastMCP's JWT bearer verifier with that JWKS, the issuer and the audience. Every
HTTP request to the MCP endpoint then needs `Authorization: Bearer <jwt>`, RS256, signed by a key in the
gateway's JWKS, with the right `iss` and `aud`, not expired: anything else gets 401 before any MCP code runs.
Talking to this server directly, without the gateway, is refused.

Tools:
  whoami       the claims this server verified for the request: sub, act.sub, email, scope, iss, aud, ...
  get_weather  a fake forecast; refuses unless the token carries the tool-level scope
               `mcp:tools/get_weather:call` (a token minted for another tool call is not enough)
  subscribe_alerts  asks the user to confirm (an MCP elicitation: the client answers with a POST that carries only
               a JSON-RPC response, which the gateway scopes `mcp:responses`); needs `mcp:tools/subscribe_alerts:call`

    python examples/weather_server.py --port 8081 --issuer http://127.0.0.1:10000 --audience mcp

Issuer and audience can also come from MCP_ISSUER / MCP_AUDIENCE (flags win).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
import urllib.error
import urllib.request
from typing import Any

from fastmcp import Context, FastMCP
from fastmcp.exceptions import ToolError
from fastmcp.server.auth import AccessToken
from fastmcp.server.auth.providers.jwt import JWTVerifier
from fastmcp.server.dependencies import get_access_token

log = logging.getLogger("weather_server")

DISCOVERY_SUFFIX = "/.well-known/openid-configuration"
# Claims the gateway always sets; a token without them did not come from it.
REQUIRED_CLAIMS = ("iss", "aud", "sub", "act", "scope", "iat", "exp", "jti")


# ------------------------------------------------------------------------------------------------------------------
# discovery
# ------------------------------------------------------------------------------------------------------------------
def discover_jwks_uri(issuer: str, timeout: float = 30.0) -> str:
    """GET <issuer>/.well-known/openid-configuration (retrying until `timeout`, the gateway may still be starting)
    and return its jwks_uri, after checking that the document names this very issuer and offers RS256."""
    url = issuer + DISCOVERY_SUFFIX
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=5) as resp:  # noqa: S310 - operator-configured URL
                doc = json.load(resp)
            break
        except (urllib.error.URLError, OSError, ValueError) as e:
            if time.monotonic() > deadline:
                raise SystemExit(f"weather_server: OIDC discovery at {url} failed: {e}") from e
            time.sleep(0.2)
    if doc.get("issuer") != issuer:
        raise SystemExit(f"weather_server: discovery at {url} names issuer {doc.get('issuer')!r}, expected "
                         f"{issuer!r} (set --issuer to the gateway's configured `issuer`)")
    if "RS256" not in doc.get("id_token_signing_alg_values_supported", []):
        raise SystemExit(f"weather_server: discovery at {url} does not offer RS256")
    jwks_uri = doc.get("jwks_uri")
    if not isinstance(jwks_uri, str) or not jwks_uri.startswith(("http://", "https://")):
        raise SystemExit(f"weather_server: discovery at {url} has no usable jwks_uri: {jwks_uri!r}")
    return jwks_uri


class GatewayTokenVerifier(JWTVerifier):
    """FastMCP's JWTVerifier (signature via JWKS, RS256 only, iss, aud, exp, nbf) plus: the claims the gateway
    always sets must be present. FastMCP alone accepts a token without `exp` (it only checks `exp` when present)."""

    async def load_access_token(self, token: str) -> AccessToken | None:
        access = await super().load_access_token(token)
        if access is None:
            return None
        missing = [c for c in REQUIRED_CLAIMS if c not in access.claims]
        if missing or not isinstance(access.claims.get("act"), dict) or not access.claims["act"].get("sub"):
            log.warning("token rejected: missing claims %s", missing or ["act.sub"])
            return None
        return access


# ------------------------------------------------------------------------------------------------------------------
# the server
# ------------------------------------------------------------------------------------------------------------------
def verified_claims() -> dict[str, Any]:
    """The claims of the token on the current HTTP request, as verified by the auth layer."""
    token = get_access_token()
    if token is None:  # cannot happen behind the bearer middleware; refuse rather than assume
        raise ToolError("no verified access token")
    return token.claims


def require_tool_scope(tool: str) -> dict[str, Any]:
    """Refuse unless the token was minted for a call of this very tool (`mcp:tools/<tool>:call`)."""
    claims = verified_claims()
    needed = f"mcp:tools/{tool}:call"
    if needed not in str(claims.get("scope", "")).split():
        raise ToolError(f"forbidden: the token does not carry scope {needed}")
    return claims


FORECASTS = ["sunny", "cloudy", "rain", "snow", "fog", "windy"]


def build_server(*, issuer: str, audience: str, jwks_uri: str, jwks_refresh_interval: float = 30.0) -> FastMCP:
    verifier = GatewayTokenVerifier(
        jwks_uri=jwks_uri,
        issuer=issuer,
        audience=audience,
        algorithm="RS256",
        jwks_refresh_interval=jwks_refresh_interval,
    )
    mcp = FastMCP("weather", auth=verifier)

    @mcp.tool
    def whoami() -> dict:
        """The identity this server verified for the request: sub, act.sub, email, scope and the token's metadata."""
        c = verified_claims()
        return {
            "sub": c.get("sub"),
            "act": c.get("act"),
            "email": c.get("email"),
            "scope": str(c.get("scope", "")).split(),
            "iss": c.get("iss"),
            "aud": c.get("aud"),
            "iat": c.get("iat"),
            "exp": c.get("exp"),
            "jti": c.get("jti"),
        }

    @mcp.tool
    def get_weather(city: str) -> dict:
        """A (fake) forecast for `city`. Needs the token scope mcp:tools/get_weather:call."""
        c = require_tool_scope("get_weather")
        forecast = FORECASTS[sum(city.encode()) % len(FORECASTS)]
        log.info("get_weather city=%r sub=%r act.sub=%r", city, c.get("sub"), (c.get("act") or {}).get("sub"))
        return {"city": city, "forecast": forecast, "requested_by": c.get("sub"),
                "on_behalf_of": (c.get("act") or {}).get("sub")}

    @mcp.tool
    async def subscribe_alerts(city: str, ctx: Context) -> dict:
        """Subscribe to weather alerts for `city`, after asking the user to confirm (MCP elicitation). Needs the
        token scope mcp:tools/subscribe_alerts:call, and a client that answers elicitation requests."""
        c = require_tool_scope("subscribe_alerts")
        who = c.get("email") or c.get("sub")
        answer = await ctx.elicit(f"Send weather alerts for {city} to {who}?", response_type=bool)
        subscribed = answer.action == "accept" and answer.data is True
        return {"city": city, "subscriber": who, "subscribed": subscribed}

    return mcp


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8081)
    p.add_argument("--path", default="/mcp")
    p.add_argument("--issuer", default=os.environ.get("MCP_ISSUER", "http://127.0.0.1:10000"),
                   help="the gateway's `issuer` (env MCP_ISSUER)")
    p.add_argument("--audience", default=os.environ.get("MCP_AUDIENCE", "mcp"),
                   help="the gateway's `audience` (env MCP_AUDIENCE)")
    p.add_argument("--discovery-timeout", type=float, default=30.0,
                   help="seconds to keep retrying OIDC discovery at start-up")
    p.add_argument("--jwks-refresh-interval", type=float, default=30.0,
                   help="minimum seconds between JWKS re-fetches on an unknown kid (FastMCP's default: 30)")
    args = p.parse_args(argv)

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    issuer = args.issuer.rstrip("/")
    jwks_uri = discover_jwks_uri(issuer, args.discovery_timeout)
    log.info("issuer=%s audience=%s jwks_uri=%s", issuer, args.audience, jwks_uri)
    mcp = build_server(issuer=issuer, audience=args.audience, jwks_uri=jwks_uri,
                       jwks_refresh_interval=args.jwks_refresh_interval)
    mcp.run(transport="http", host=args.host, port=args.port, path=args.path, show_banner=False,
            log_level="warning")
    return 0


if __name__ == "__main__":
    sys.exit(main())
