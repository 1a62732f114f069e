#!/usr/bin/env bash
# `make run`: Envoy (envoy.yaml + the built filter) on 127.0.0.1:10000 in front of examples/weather_server.py, a
# FastMCP server on 127.0.0.1:8081 that accepts only the filter's tokens. Then one MCP SDK call through the
# gateway shows the claims the server saw. Ctrl-C stops both.
set -euo pipefail
cd "$(dirname "$0")/.."
ENVOY=${ENVOY:-.venv/bin/envoy}
PYTHON=${PYTHON:-.venv/bin/python}
LOG_DIR=$(mktemp -d)

cleanup() {
  [[ -n "${TAIL_PID:-}" ]] && kill "$TAIL_PID" 2>/dev/null || true
  [[ -n "${SERVER_PID:-}" ]] && kill "$SERVER_PID" 2>/dev/null || true
  [[ -n "${ENVOY_PID:-}" ]] && kill -- -"$ENVOY_PID" 2>/dev/null || true
}
trap cleanup EXIT INT TERM

for port in 10000 9901 8081; do
  if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
    echo "run-demo: 127.0.0.1:$port is already in use (another demo still running?)" >&2
    exit 1
  fi
done

# Envoy first: the MCP server reads the gateway's discovery document when it starts.
setsid "$ENVOY" -c envoy.yaml --concurrency 2 --log-level warn --component-log-level wasm:info \
  --use-dynamic-base-id >"$LOG_DIR/envoy.log" 2>&1 &
ENVOY_PID=$!
for _ in $(seq 1 150); do
  if curl -fs -o /dev/null http://127.0.0.1:10000/.well-known/jwks.json 2>/dev/null; then break; fi
  if ! kill -0 "$ENVOY_PID" 2>/dev/null; then cat "$LOG_DIR/envoy.log"; exit 1; fi
  sleep 0.2
done

"$PYTHON" examples/weather_server.py --host 127.0.0.1 --port 8081 --issuer http://127.0.0.1:10000 --audience mcp \
  >"$LOG_DIR/server.log" 2>&1 &
SERVER_PID=$!
for _ in $(seq 1 150); do
  # Up and verifying tokens: a request without one is refused with 401.
  code=$(curl -s -o /dev/null -w '%{http_code}' -X POST http://127.0.0.1:8081/mcp 2>/dev/null || true)
  if [[ "$code" == "401" ]]; then break; fi
  if ! kill -0 "$SERVER_PID" 2>/dev/null; then cat "$LOG_DIR/server.log"; exit 1; fi
  sleep 0.2
done

echo
echo "\$ $PYTHON examples/call_tool.py whoami      # the MCP SDK, through the gateway, as alice of team-blue"
"$PYTHON" examples/call_tool.py whoami || true

cat <<TEXT

mcp-jwt-signer demo is up: Envoy with the filter on http://127.0.0.1:10000 (admin http://127.0.0.1:9901), the
example MCP server (FastMCP, examples/weather_server.py) on 127.0.0.1:8081, trusting only the gateway's tokens.
Logs: $LOG_DIR/envoy.log and $LOG_DIR/server.log (followed below).

Try, in another terminal:

  # 1. an MCP SDK client calling tools through the gateway; it prints what the server saw / returned
  $PYTHON examples/call_tool.py whoami
  $PYTHON examples/call_tool.py --user bob --team '' --org org-7 --email '' whoami
  $PYTHON examples/call_tool.py get_weather city=Paris
  $PYTHON examples/call_tool.py --mode legacy --yes subscribe_alerts city=Oslo   # elicitation round trip

  # 2. the same client straight to the MCP server, without the gateway: refused (HTTP 401)
  $PYTHON examples/call_tool.py --url http://127.0.0.1:8081/mcp whoami

  # 3. OIDC discovery and the JWKS, answered by the filter itself
  curl -s http://127.0.0.1:10000/.well-known/openid-configuration | python3 -m json.tool
  curl -s http://127.0.0.1:10000/.well-known/jwks.json | python3 -m json.tool

  # 4. a refused request (a space in a tool name would inject a scope): 400 + JSON-RPC error, never forwarded
  curl -si http://127.0.0.1:10000/mcp -d '{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"a b"}}'

Ctrl-C stops the demo.
TEXT
tail -n +1 -f "$LOG_DIR/envoy.log" "$LOG_DIR/server.log" &
TAIL_PID=$!
wait "$ENVOY_PID"
