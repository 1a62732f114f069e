-- wrk script for scripts/bench.py: one MCP `tools/call` POST per request.
--
--   wrk ... -s scripts/bench.lua -- <mode> <prefix> [<users>]
--
-- mode "fixed": every request carries the same x-user-id (the filter's token cache answers after the first mint).
-- mode "vary":  every request carries a new x-user-id, <prefix>-<thread>-<n>, so the filter mints for every request.
--               bench.py passes a fresh <prefix> to every wrk run, so a measured run never reuses a warm-up user.
-- mode "cycle": the requests cycle through <users> (default 64) fixed users, <prefix>-u<0..users-1>, the same set
--               in every wrk thread: Envoy spreads the connections over its workers, so every user reaches every
--               worker, and with the workers' shared token cache each user is minted once per Envoy.
-- mode "headers": as "fixed", with MCP 2026-07-28's request headers (Mcp-Method, Mcp-Name, MCP-Protocol-Version)
--               and the protocol version in the body's _meta, for the header-scoped rows (scope_source "headers",
--               allow_body_buffering false: the filter signs at the headers and never holds the body).
-- All modes build the request the same way (about the same Lua work per request), so the load generator's cost is equal.
--
-- At the end one line `BENCH_JSON {...}` carries what bench.py reads: requests, duration, errors and latency
-- percentiles in microseconds.

local threads = {}

function setup(thread)
   table.insert(threads, thread)
   thread:set("tid", #threads)
end

function init(args)
   mode = args[1] or "fixed"
   prefix = args[2] or "bench"
   users = tonumber(args[3] or "64")
   n = 0
   body = '{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"get_weather","arguments":{"city":"Paris"}}}'
   headers = {
      ["Content-Type"] = "application/json",
      ["Accept"] = "application/json, text/event-stream",
      ["x-user-id"] = "bench-user",
   }
   if mode == "headers" then
      body = '{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"get_weather","arguments":{"city":"Paris"},' ..
         '"_meta":{"io.modelcontextprotocol/protocolVersion":"2026-07-28"}}}'
      headers["Mcp-Method"] = "tools/call"
      headers["Mcp-Name"] = "get_weather"
      headers["MCP-Protocol-Version"] = "2026-07-28"
   end
end

function request()
   n = n + 1
   if mode == "vary" then
      headers["x-user-id"] = prefix .. "-" .. tid .. "-" .. n
   elseif mode == "cycle" then
      headers["x-user-id"] = prefix .. "-u" .. (n % users)
   else
      headers["x-user-id"] = "bench-user"
   end
   return wrk.format("POST", "/mcp", headers, body)
end

function done(summary, latency, requests)
   local e = summary.errors
   io.write(string.format(
      'BENCH_JSON {"requests": %d, "duration_us": %d, "bytes": %d, ' ..
      '"errors": {"connect": %d, "read": %d, "write": %d, "status": %d, "timeout": %d}, ' ..
      '"latency_us": {"p50": %d, "p90": %d, "p99": %d, "max": %d, "mean": %.1f}}\n',
      summary.requests, summary.duration, summary.bytes,
      e.connect, e.read, e.write, e.status, e.timeout,
      latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max, latency.mean))
end
