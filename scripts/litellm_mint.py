#!/usr/bin/env python3
"""The mint cost of LiteLLM's own signer (the reference implementation), for `make bench`'s mint table.

    target/bench-litellm-venv/bin/python scripts/litellm_mint.py --key key.pem [--calls 2000] [--warmup 200]

Runs in its own venv (bench/requirements-litellm.txt; scripts/bench.py creates it on first use). Constructs
`MCPJWTSigner` (litellm/proxy/guardrails/guardrail_hooks/mcp_jwt_signer) with the given RSA-2048 key (through
its MCP_JWT_SIGNING_KEY variable, as a file:// path) and awaits its `async_pre_call_hook` for a `call_mcp_tool`
of one tool (`get_weather`, as scripts/bench.lua sends), a new user on every call (as the filter's cold rows:
LiteLLM's signer has no token cache, so every call mints anyway), in one process and one event loop. Each call is
timed with perf_counter_ns around the await: claims, the RS256 signature (PyJWT with `cryptography`, i.e.
OpenSSL), the header it returns, and the guardrail decorator LiteLLM wraps the hook in.

Prints one JSON line: {"version", "algorithm", "calls", "p50_us", "p99_us", "mean_us", "per_s", ...}, and for
reference `jwt_encode_p50_us`: PyJWT's `jwt.encode` alone with the same key and claims, outside the hook. The signer
signs RS256 only (`MCPJWTSigner.ALGORITHM`); the JSON names what it supports so the bench does not guess.
Exit status 1, with a message, when LiteLLM or its signer cannot be imported or a call does not return a token.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
import uuid
from pathlib import Path


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--key", required=True, help="PEM file of the RSA-2048 signing key")
    p.add_argument("--calls", type=int, default=2000, help="timed calls (default %(default)s)")
    p.add_argument("--warmup", type=int, default=200, help="untimed calls first (default %(default)s)")
    args = p.parse_args()

    # No network at import (LiteLLM fetches a model price list otherwise), no log lines but errors.
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    os.environ.setdefault("LITELLM_LOG", "ERROR")
    os.environ["MCP_JWT_SIGNING_KEY"] = "file://" + str(Path(args.key).resolve())
    try:
        from importlib.metadata import version

        from litellm.caching import DualCache
        from litellm.proxy._types import UserAPIKeyAuth
        from litellm.proxy.guardrails.guardrail_hooks.mcp_jwt_signer import MCPJWTSigner
    except Exception as e:  # noqa: BLE001  (any import failure is fatal here, and says which)
        print(f"litellm_mint: cannot import LiteLLM's MCPJWTSigner: {type(e).__name__}: {e}", file=sys.stderr)
        return 1

    try:
        signer = MCPJWTSigner(guardrail_name="mcp-jwt-signer", event_hook="pre_mcp_call", default_on=True,
                              issuer="https://gateway.bench.invalid", audience="mcp", ttl_seconds=300)
    except Exception as e:  # noqa: BLE001  (e.g. a key it cannot load; the message does not carry the key)
        print(f"litellm_mint: MCPJWTSigner refused its configuration: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    cache = DualCache()
    prefix = uuid.uuid4().hex[:10]

    async def one(i: int) -> int:
        user = UserAPIKeyAuth(user_id=f"{prefix}-{i}")  # built outside the timing: the proxy's auth did that
        data = {"mcp_tool_name": "get_weather", "arguments": {"city": "Paris"}}
        t0 = time.perf_counter_ns()
        out = await signer.async_pre_call_hook(user_api_key_dict=user, cache=cache, data=data,
                                               call_type="call_mcp_tool")
        t1 = time.perf_counter_ns()
        auth = (out or {}).get("extra_headers", {}).get("Authorization", "") if isinstance(out, dict) else ""
        if not auth.startswith("Bearer ") or auth.count(".") != 2:
            raise RuntimeError(f"call {i}: the hook returned no signed token")
        return t1 - t0

    async def run() -> list[int]:
        for i in range(args.warmup):
            await one(-1 - i)
        return [await one(i) for i in range(args.calls)]

    # For reference: PyJWT's jwt.encode alone (the signature and the encoding the hook calls), same key and claims.
    import jwt
    from cryptography.hazmat.primitives import serialization

    key = serialization.load_pem_private_key(Path(args.key).read_bytes(), password=None)

    def encode_only(i: int) -> int:
        now = int(time.time())
        claims = {"iss": signer.issuer, "aud": signer.audience, "iat": now, "exp": now + 300, "nbf": now,
                  "sub": f"{prefix}-e{i}", "act": {"sub": "litellm-proxy"},
                  "scope": "mcp:tools/call mcp:tools/get_weather:call"}
        t0 = time.perf_counter_ns()
        jwt.encode(claims, key, algorithm="RS256", headers={"kid": "bench"})
        return time.perf_counter_ns() - t0

    try:
        samples = asyncio.run(run())
        for i in range(min(args.warmup, 50)):
            encode_only(-1 - i)
        encode = sorted(encode_only(i) / 1000 for i in range(args.calls))
    except Exception as e:  # noqa: BLE001
        print(f"litellm_mint: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    us = sorted(s / 1000 for s in samples)
    mean = statistics.fmean(us)

    def q(f: float) -> float:
        return us[min(len(us) - 1, int(f * len(us)))]

    print(json.dumps({
        "version": version("litellm"),
        "pyjwt": version("PyJWT"),
        "cryptography": version("cryptography"),
        "algorithm": signer.ALGORITHM,
        "algorithms_supported": [signer.ALGORITHM],
        "calls": len(us),
        "warmup": args.warmup,
        "p50_us": round(q(0.50), 1),
        "p99_us": round(q(0.99), 1),
        "mean_us": round(mean, 1),
        "per_s": round(1e6 / mean, 1),
        "per_s_p50": round(1e6 / q(0.50), 1),
        "jwt_encode_p50_us": round(encode[len(encode) // 2], 1),
        "jwt_encode_mean_us": round(statistics.fmean(encode), 1),
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
