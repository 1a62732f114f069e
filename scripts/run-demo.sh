#!/usr/bin/env bash
# `make run`: the demo upstream on 127.0.0.1:8081 and Envoy (envoy.yaml + the built filter) on 127.0.0.1:10000.
# Ctrl-C stops both.
set -euo pipefail
cd "$(dirname "$0")/.."
ENVOY=${ENVOY:-.venv/bin/envoy}
PYTHON=${PYTHON:-.venv/bin/python}
LOG_DIR=$(mktemp -d)

cleanup() {
  [[ -n "${ENVOY_PID:-}" ]] && kill -- -"$ENVOY_PID" 2>/dev/null || true
  [[ -n "${UPSTREAM_PID:-}" ]] && kill "$UPSTREAM_PID" 2>/dev/null || true
}
trap cleanup EXIT INT TERM

"$PYTHON" tests/e2e/recording_upstream.py --port 8081 &
UPSTREAM_PID=$!
setsid "$ENVOY" -c envoy.yaml --concurrency 2 --log-level warn --component-log-level wasm:info \
  --use-dynamic-base-id >"$LOG_DIR/envoy.log" 2>&1 &
ENVOY_PID=$!

for _ in $(seq 1 100); do
  if curl -fs -o /dev/null http://127.0.0.1:10000/.well-known/jwks.json 2>/dev/null; then break; fi
  if ! kill -0 "$ENVOY_PID" 2>/dev/null; then cat "$LOG_DIR/envoy.log"; exit 1; fi
  sleep 0.2
done

cat <<'TEXT'

mcp-jwt-signer demo is up: Envoy with the filter on http://127.0.0.1:10000, the demo MCP upstream on :8081.
Envoy's log: see below; admin: http://127.0.0.1:9901

Try, in another terminal:

  # 1. OIDC discovery and the JWKS, answered by the filter itself
  curl -s http://127.0.0.1:10000/.well-known/openid-configuration | python3 -m json.tool
  curl -s http://127.0.0.1:10000/.well-known/jwks.json | python3 -m json.tool

  # 2. a tools/call: the upstream answers with the token that reached it, decoded
  curl -s http://127.0.0.1:10000/mcp -H 'content-type: application/json' -H 'x-user-id: alice' \
       -H 'x-team-id: team-blue' \
       -d '{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"get_weather","arguments":{}}}' \
    | python3 -m json.tool

  # 3. a refused request (a space in a tool name would inject a scope): 400 + JSON-RPC error, never forwarded
  curl -si http://127.0.0.1:10000/mcp -d '{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"a b"}}'

Ctrl-C stops the demo.
TEXT
tail -f "$LOG_DIR/envoy.log" &
wait "$ENVOY_PID"
