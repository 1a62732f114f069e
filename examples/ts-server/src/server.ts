// Example MCP server in TypeScript (official @modelcontextprotocol/sdk, Streamable HTTP, stateless) that trusts only
// the tokens minted by mcp-jwt-signer. See README.md beside this file for the verifier settings.
//
// At start-up it reads the gateway's OIDC discovery document (<issuer>/.well-known/openid-configuration), checks
// that it names this very issuer, and builds a jose remote JWKS from its jwks_uri. Every HTTP request to the MCP
// endpoint then needs `Authorization: Bearer <jwt>`: RS256 or ES256, signed by a key in the gateway's JWKS, with the
// right `iss` and `aud`, `exp` present and not passed, and the claims the gateway always sets. Anything else gets
// 401 (with a Bearer challenge) before any MCP code runs.
//
// Tools:
//   whoami       the claims verified for this request
//   get_weather  a fake forecast; needs the tool-level scope mcp:tools/get_weather:call (a token minted for another
//                tool call is refused)
//
//   node dist/server.js --port 8082 --issuer http://127.0.0.1:10000 --audience mcp
//
// Flags win over the environment (MCP_ISSUER, MCP_AUDIENCE, PORT, HOST).

import { parseArgs } from 'node:util';

import express, { type NextFunction, type Request, type Response } from 'express';
import { createRemoteJWKSet, errors as joseErrors, jwtVerify, type JWTPayload } from 'jose';
import { z } from 'zod';
import { McpServer } from '@modelcontextprotocol/sdk/server/mcp.js';
import { StreamableHTTPServerTransport } from '@modelcontextprotocol/sdk/server/streamableHttp.js';
import { requireBearerAuth } from '@modelcontextprotocol/sdk/server/auth/middleware/bearerAuth.js';
import { InvalidTokenError } from '@modelcontextprotocol/sdk/server/auth/errors.js';
import type { OAuthTokenVerifier } from '@modelcontextprotocol/sdk/server/auth/provider.js';
import type { AuthInfo } from '@modelcontextprotocol/sdk/server/auth/types.js';

const DISCOVERY_SUFFIX = '/.well-known/openid-configuration';
// Claims the gateway always sets; a token without them did not come from it.
const REQUIRED_CLAIMS = ['iss', 'aud', 'sub', 'scope', 'iat', 'exp', 'jti'];
const ALGORITHMS = ['RS256', 'ES256'];
const CLOCK_TOLERANCE_SECONDS = 5;

const log = (event: string, fields: Record<string, unknown> = {}) =>
  console.log(JSON.stringify({ time: new Date().toISOString(), event, ...fields }));

// ---- discovery -------------------------------------------------------------------------------------------------
async function discoverJwksUri(issuer: string, timeoutSeconds: number): Promise<URL> {
  const url = issuer + DISCOVERY_SUFFIX;
  const deadline = Date.now() + timeoutSeconds * 1000;
  let doc: Record<string, unknown>;
  for (;;) {
    try {
      const r = await fetch(url, { signal: AbortSignal.timeout(5000) });
      if (!r.ok) throw new Error(`HTTP ${r.status}`);
      doc = (await r.json()) as Record<string, unknown>;
      break;
    } catch (e) {
      if (Date.now() > deadline) throw new Error(`OIDC discovery at ${url} failed: ${(e as Error).message}`);
      await new Promise((res) => setTimeout(res, 200));
    }
  }
  if (doc.issuer !== issuer) {
    throw new Error(`discovery at ${url} names issuer ${JSON.stringify(doc.issuer)}, expected ${issuer}`);
  }
  const algs = doc.id_token_signing_alg_values_supported;
  if (!Array.isArray(algs) || !algs.some((a) => ALGORITHMS.includes(a))) {
    throw new Error(`discovery at ${url} offers none of ${ALGORITHMS.join(', ')}`);
  }
  const jwksUri = doc.jwks_uri;
  if (typeof jwksUri !== 'string' || !/^https?:\/\//.test(jwksUri)) {
    throw new Error(`discovery at ${url} has no usable jwks_uri`);
  }
  return new URL(jwksUri);
}

// ---- the verifier ----------------------------------------------------------------------------------------------
function gatewayVerifier(issuer: string, audience: string, jwksUri: URL): OAuthTokenVerifier {
  // jose caches the JWKS and re-fetches it (at most every cooldownDuration) when a token names an unknown kid: a
  // gateway key rotation is picked up without a restart.
  const jwks = createRemoteJWKSet(jwksUri, { cooldownDuration: 30_000, cacheMaxAge: 600_000 });
  return {
    async verifyAccessToken(token: string): Promise<AuthInfo> {
      let payload: JWTPayload;
      try {
        ({ payload } = await jwtVerify(token, jwks, {
          issuer,
          audience,
          algorithms: ALGORITHMS,
          requiredClaims: REQUIRED_CLAIMS,
          clockTolerance: CLOCK_TOLERANCE_SECONDS,
        }));
      } catch (e) {
        // The reason (never the token) goes to the log; the client learns only that the token is invalid.
        const code = e instanceof joseErrors.JOSEError ? e.code : 'ERR_UNKNOWN';
        log('token_rejected', { reason: code });
        throw new InvalidTokenError('invalid token');
      }
      const scope = typeof payload.scope === 'string' ? payload.scope : '';
      return {
        token,
        clientId: typeof payload.client_id === 'string' ? payload.client_id : String(payload.sub),
        scopes: scope.split(' ').filter(Boolean),
        expiresAt: payload.exp,
        extra: { claims: payload },
      };
    },
  };
}

// ---- 2026-07-28 routing headers --------------------------------------------------------------------------------
// The SDK (1.32.2, protocol <= 2025-11-25) does not read Mcp-Method / Mcp-Name. MCP 2026-07-28 says a server must
// refuse a request whose headers disagree with its body (400, JSON-RPC -32020 HeaderMismatch); this does so when
// the headers are present, decoding the `=?base64?...?=` sentinel. Behind the gateway the filter checks them first.
const HEADER_MISMATCH = -32020;
const SENTINEL = /^=\?base64\?([A-Za-z0-9+/]*={0,2})\?=$/;

function decodeHeader(value: string): string | undefined {
  const m = SENTINEL.exec(value);
  if (!m) return value;
  try {
    return new TextDecoder('utf-8', { fatal: true }).decode(Buffer.from(m[1], 'base64'));
  } catch {
    return undefined;
  }
}

function nameOf(body: { method?: unknown; params?: Record<string, unknown> }): unknown {
  if (body.method === 'tools/call' || body.method === 'prompts/get') return body.params?.name;
  if (body.method === 'resources/read') return body.params?.uri;
  return undefined;
}

function checkRoutingHeaders(req: Request, res: Response, next: NextFunction) {
  const method = req.get('mcp-method');
  const name = req.get('mcp-name');
  if (method === undefined && name === undefined) return next();
  const body = req.body;
  const refuse = (message: string) => {
    log('header_mismatch', { message });
    res.status(400).json({
      jsonrpc: '2.0',
      id: body && typeof body === 'object' && !Array.isArray(body) ? body.id ?? null : null,
      error: { code: HEADER_MISMATCH, message },
    });
  };
  if (!body || typeof body !== 'object' || Array.isArray(body)) return refuse('routing headers need a single request');
  if (method !== undefined && decodeHeader(method) !== body.method) return refuse('Mcp-Method does not match the body');
  if (name !== undefined) {
    const expected = nameOf(body);
    if (typeof expected !== 'string' || decodeHeader(name) !== expected) {
      return refuse('Mcp-Name does not match the body');
    }
  }
  return next();
}

// ---- the MCP server --------------------------------------------------------------------------------------------
type Extra = { authInfo?: AuthInfo };

function claimsOf(extra: Extra): JWTPayload {
  const claims = extra.authInfo?.extra?.claims as JWTPayload | undefined;
  if (!claims) throw new Error('no verified access token'); // cannot happen behind requireBearerAuth
  return claims;
}

function requireToolScope(extra: Extra, tool: string): JWTPayload {
  const needed = `mcp:tools/${tool}:call`;
  if (!extra.authInfo?.scopes.includes(needed)) {
    throw new Error(`forbidden: the token does not carry scope ${needed}`);
  }
  return claimsOf(extra);
}

const FORECASTS = ['sunny', 'cloudy', 'rain', 'snow', 'fog', 'windy'];

function buildServer(): McpServer {
  const server = new McpServer({ name: 'weather-ts', version: '1.0.0' });
  server.registerTool(
    'whoami',
    { description: 'The claims this server verified for the request' },
    async (extra) => {
      const claims = claimsOf(extra);
      return { content: [{ type: 'text', text: JSON.stringify(claims) }], structuredContent: claims };
    },
  );
  server.registerTool(
    'get_weather',
    {
      description: 'A (fake) forecast for a city. Needs the token scope mcp:tools/get_weather:call.',
      inputSchema: { city: z.string() },
    },
    async ({ city }, extra) => {
      const c = requireToolScope(extra, 'get_weather');
      const forecast = FORECASTS[[...Buffer.from(city)].reduce((a, b) => a + b, 0) % FORECASTS.length];
      const act = (c.act ?? {}) as { sub?: string };
      const out = { city, forecast, requested_by: c.sub, on_behalf_of: act.sub ?? null };
      log('get_weather', { city, sub: c.sub });
      return { content: [{ type: 'text', text: JSON.stringify(out) }], structuredContent: out };
    },
  );
  return server;
}

// ---- main ------------------------------------------------------------------------------------------------------
async function main() {
  const { values } = parseArgs({
    options: {
      host: { type: 'string', default: process.env.HOST ?? '127.0.0.1' },
      port: { type: 'string', default: process.env.PORT ?? '8082' },
      path: { type: 'string', default: '/mcp' },
      issuer: { type: 'string', default: process.env.MCP_ISSUER ?? 'http://127.0.0.1:10000' },
      audience: { type: 'string', default: process.env.MCP_AUDIENCE ?? 'mcp' },
      'discovery-timeout': { type: 'string', default: '30' },
    },
  });
  const issuer = values.issuer!.replace(/\/$/, '');
  const audience = values.audience!;
  const jwksUri = await discoverJwksUri(issuer, Number(values['discovery-timeout']));
  const verifier = gatewayVerifier(issuer, audience, jwksUri);

  const app = express();
  app.disable('x-powered-by');
  const path = values.path!;
  app.use(path, requireBearerAuth({ verifier }));
  app.use(path, express.json({ limit: '1mb' }));
  app.use(path, checkRoutingHeaders);
  app.post(path, async (req, res) => {
    // Stateless: a new server and transport per request, no session.
    const server = buildServer();
    const transport = new StreamableHTTPServerTransport({ sessionIdGenerator: undefined, enableJsonResponse: true });
    res.on('close', () => {
      void transport.close();
      void server.close();
    });
    await server.connect(transport);
    await transport.handleRequest(req, res, req.body);
  });
  const notAllowed = (_req: Request, res: Response) => {
    res.status(405).set('allow', 'POST').json({
      jsonrpc: '2.0', id: null, error: { code: -32000, message: 'Method not allowed (stateless server)' },
    });
  };
  app.get(path, notAllowed);
  app.delete(path, notAllowed);
  // A body express.json cannot parse: a JSON-RPC parse error, not express's HTML page.
  app.use((err: Error & { type?: string }, _req: Request, res: Response, next: NextFunction) => {
    if (err.type === 'entity.parse.failed') {
      res.status(400).json({ jsonrpc: '2.0', id: null, error: { code: -32700, message: 'Parse error' } });
    } else if (err.type === 'entity.too.large') {
      res.status(413).json({ jsonrpc: '2.0', id: null, error: { code: -32600, message: 'Request too large' } });
    } else {
      next(err);
    }
  });

  const port = Number(values.port);
  app.listen(port, values.host!, () => {
    log('ready', { issuer, audience, jwks_uri: jwksUri.href, port });
  });
}

main().catch((e) => {
  console.error(`ts-server: ${(e as Error).message}`);
  process.exit(1);
});
