// A real OAuth 2.1 / OpenID Connect authorization server for the end-to-end tests: node `oidc-provider`
// (OpenID-certified), configured from a JSON file. Usage: node server.mjs CONFIG.json
//
// What it serves (all on config.host:config.port, issuer = config.issuer or http://host:port):
//   /.well-known/oauth-authorization-server and /.well-known/openid-configuration (RFC 8414 / OIDC discovery)
//   /jwks                 the public signing keys (RS256 and ES256)
//   /auth, /token         authorization code + PKCE (S256, required for every client), client credentials,
//                         refresh tokens; RFC 8707 `resource` -> an access token for that resource only
//   /reg                  RFC 7591 dynamic client registration (open, when config.registration is true)
//   /token/introspection  RFC 7662, client authentication required
//   /token/revocation     RFC 7009
//   /interaction/:uid     a TEST-ONLY interaction that signs the user in and consents without a browser (see below)
//
// Config (JSON):
//   port (required), host ("127.0.0.1"), issuer (default http://host:port)
//   keys_file: a private JWKS ({"keys": [...]}, RSA and/or EC P-256) written by the test; default: generated here
//   resources: {"<resource indicator URL>": {scopes: [...], format: "jwt" | "opaque" (default "jwt"),
//               alg: "RS256" | "ES256" (default "RS256"), ttl: seconds (default access_token_ttl),
//               audience: the `aud` to put in tokens (default: the indicator itself)}}
//   clients: [{client_id, client_secret?, grant_types?, redirect_uris?, token_endpoint_auth_method?,
//              resources?: [indicators this client may ask for] (default all), scopes?: [the resource scopes
//              this client may get] (default all), introspect_any?: true (may introspect other clients' tokens)}]
//   users: {"<account id>": {email?, name?}}; default_user: account signed in when the request has no login_hint
//   access_token_ttl (300), registration (false), jwt_introspection (true, see below)
//
// JWT access tokens are RFC 9068 `at+jwt`: iss, sub (the user, or the client id for client credentials),
// aud (the resource), client_id, scope, iat, exp, jti. Opaque tokens can only be validated by introspection.
//
// oidc-provider by design refuses to introspect or revoke its own JWT access tokens (400 unsupported_token_type:
// a structured token is self-contained). Many authorization servers (Keycloak, Okta, ...) do introspect them, so
// with jwt_introspection (default true) a small layer here answers RFC 7662 for JWT access tokens: the same client
// authentication rules, the signature checked with this server's own keys (jose), iss/exp checked, and revocation
// of a JWT remembered by its jti. With jwt_introspection false, oidc-provider's own answer stands.
//
// Nothing secret is ever logged: log lines carry event names, client ids and error codes only.

import { readFileSync } from 'node:fs';
import { randomBytes, timingSafeEqual } from 'node:crypto';
import * as querystring from 'node:querystring';

import Provider, { errors } from 'oidc-provider';
import * as jose from 'jose';

const configPath = process.argv[2];
if (!configPath) {
  console.error('usage: node server.mjs CONFIG.json');
  process.exit(2);
}
const config = JSON.parse(readFileSync(configPath, 'utf8'));
const host = config.host ?? '127.0.0.1';
const { port } = config;
if (!Number.isInteger(port) || port <= 0) {
  console.error('config.port must be a positive integer');
  process.exit(2);
}
const issuer = config.issuer ?? `http://${host}:${port}`;
const defaultTtl = config.access_token_ttl ?? 300;
const resources = config.resources ?? {};
const users = config.users ?? {};
const defaultUser = config.default_user ?? Object.keys(users)[0] ?? 'alice';
const jwtIntrospection = config.jwt_introspection ?? true;

const log = (event, fields = {}) => console.log(JSON.stringify({ event, ...fields }));

// ---- keys --------------------------------------------------------------------------------------------------
async function loadKeys() {
  if (config.keys_file) {
    return JSON.parse(readFileSync(config.keys_file, 'utf8'));
  }
  const keys = [];
  for (const [alg, opts] of [['RS256', { modulusLength: 2048 }], ['ES256', {}]]) {
    const { privateKey } = await jose.generateKeyPair(alg, { ...opts, extractable: true });
    const jwk = await jose.exportJWK(privateKey);
    keys.push({ ...jwk, alg, use: 'sig', kid: await jose.calculateJwkThumbprint(jwk) });
  }
  return { keys };
}
const jwks = await loadKeys();
const publicJwks = {
  // eslint-disable-next-line no-unused-vars
  keys: jwks.keys.map(({ d, p, q, dp, dq, qi, key_ops, ...pub }) => pub),
};
const localKeys = jose.createLocalJWKSet(publicJwks);

// ---- clients and resources ---------------------------------------------------------------------------------
const clientRules = new Map(); // client_id -> {resources?: Set, scopes?: Set, introspect_any: bool}
const clients = (config.clients ?? []).map((c) => {
  clientRules.set(c.client_id, {
    resources: c.resources ? new Set(c.resources) : undefined,
    scopes: c.scopes ? new Set(c.scopes) : undefined,
    introspect_any: !!c.introspect_any,
  });
  const grantTypes = c.grant_types ?? ['client_credentials'];
  const out = {
    client_id: c.client_id,
    grant_types: grantTypes,
    redirect_uris: c.redirect_uris ?? [],
    response_types: grantTypes.includes('authorization_code') ? ['code'] : [],
    token_endpoint_auth_method: c.token_endpoint_auth_method ?? (c.client_secret ? 'client_secret_basic' : 'none'),
  };
  if (c.client_secret) out.client_secret = c.client_secret;
  if (c.application_type) out.application_type = c.application_type;
  return out;
});

function findResource(indicator) {
  if (Object.hasOwn(resources, indicator)) return [indicator, resources[indicator]];
  // `http://h:p/mcp` and `http://h:p/mcp/` name the same resource (clients differ on the trailing slash).
  const alt = indicator.endsWith('/') ? indicator.slice(0, -1) : `${indicator}/`;
  if (Object.hasOwn(resources, alt)) return [alt, resources[alt]];
  return [undefined, undefined];
}

// ---- the provider ------------------------------------------------------------------------------------------
const provider = new Provider(issuer, {
  clients,
  jwks,
  cookies: { keys: [randomBytes(32).toString('hex')] },
  scopes: ['openid', 'offline_access', 'email', 'profile'],
  claims: { openid: ['sub'], email: ['email', 'email_verified'], profile: ['name'] },
  pkce: { required: () => true }, // OAuth 2.1: PKCE for every authorization code, confidential clients too
  enabledJWA: { idTokenSigningAlgValues: ['RS256', 'ES256'] },
  ttl: {
    AccessToken: (ctx, token) => token.resourceServer?.accessTokenTTL ?? defaultTtl,
    ClientCredentials: (ctx, token) => token.resourceServer?.accessTokenTTL ?? defaultTtl,
    Interaction: 300,
    Session: 3600,
    Grant: 3600,
    IdToken: 300,
    RefreshToken: 3600,
  },
  // Refresh tokens for clients that may use them (the MCP SDK asks for offline_access when it registers with the
  // refresh_token grant).
  issueRefreshToken: async (ctx, client, code) => client.grantTypeAllowed('refresh_token')
    && code.scopes.has('offline_access'),
  findAccount: async (ctx, sub) => ({
    accountId: sub,
    async claims() {
      const u = users[sub] ?? {};
      return { sub, ...(u.email ? { email: u.email, email_verified: true } : {}), ...(u.name ? { name: u.name } : {}) };
    },
  }),
  interactions: { url: (ctx, interaction) => `/interaction/${interaction.uid}` },
  features: {
    devInteractions: { enabled: false },
    clientCredentials: { enabled: true },
    introspection: {
      enabled: true,
      // A client may introspect its own tokens; one marked introspect_any (the gateway) may introspect all.
      allowedPolicy: async (ctx, client, token) => clientRules.get(client.clientId)?.introspect_any
        || token.clientId === client.clientId,
    },
    revocation: { enabled: true },
    registration: { enabled: !!config.registration },
    resourceIndicators: {
      enabled: true,
      // A token request without `resource` after an authorization that named exactly one uses that one.
      defaultResource: async (ctx, client, oneOf) => oneOf,
      useGrantedResource: async () => true,
      getResourceServerInfo: async (ctx, indicator, client) => {
        const [known, rs] = findResource(indicator);
        const rules = clientRules.get(client.clientId);
        if (!rs || (rules?.resources && !rules.resources.has(known))) {
          throw new errors.InvalidTarget();
        }
        const scopes = (rs.scopes ?? []).filter((s) => !rules?.scopes || rules.scopes.has(s));
        return {
          scope: scopes.join(' '),
          audience: rs.audience ?? known,
          accessTokenTTL: rs.ttl ?? defaultTtl,
          accessTokenFormat: rs.format ?? 'jwt',
          ...((rs.format ?? 'jwt') === 'jwt' ? { jwt: { sign: { alg: rs.alg ?? 'RS256' } } } : {}),
        };
      },
    },
  },
});
provider.proxy = false;

for (const event of ['grant.error', 'introspection.error', 'revocation.error', 'registration_create.error',
  'authorization.error', 'server_error']) {
  provider.on(event, (ctx, err) => log(event, { error: err?.error ?? err?.name, client: ctx?.oidc?.client?.clientId }));
}
provider.on('grant.success', (ctx) => log('grant.success', {
  client: ctx.oidc.client?.clientId, grant_type: ctx.oidc.params?.grant_type,
}));

// ---- test-only interaction: signs the user in and consents to everything asked, without a browser ------------
// GET /interaction/:uid: the login prompt finishes as the account named by the request's login_hint (or
// default_user); the consent prompt grants every scope and resource scope the request asked for. Both answer
// 303 back to the authorization endpoint, so an HTTP client that follows redirects and keeps cookies ends at the
// redirect_uri with ?code=...&state=...&iss=...
provider.use(async (ctx, next) => {
  const m = /^\/interaction\/([^/]+)$/.exec(ctx.path);
  if (!m || ctx.method !== 'GET') return next();
  const details = await provider.interactionDetails(ctx.req, ctx.res);
  const { prompt, params, session, grantId } = details;
  let result;
  if (prompt.name === 'login') {
    const accountId = params.login_hint || defaultUser;
    result = { login: { accountId } };
  } else if (prompt.name === 'consent') {
    const grant = grantId ? await provider.Grant.find(grantId)
      : new provider.Grant({ accountId: session.accountId, clientId: params.client_id });
    const d = prompt.details;
    if (d.missingOIDCScope) grant.addOIDCScope(d.missingOIDCScope.join(' '));
    if (d.missingOIDCClaims) grant.addOIDCClaims(d.missingOIDCClaims);
    for (const [indicator, scopes] of Object.entries(d.missingResourceScopes ?? {})) {
      grant.addResourceScope(indicator, scopes.join(' '));
    }
    result = { consent: { grantId: await grant.save() } };
  } else {
    ctx.throw(501, `prompt ${prompt.name} not handled`);
  }
  log('interaction', { prompt: prompt.name, client: params.client_id });
  ctx.respond = false; // interactionFinished writes the 303 itself
  await provider.interactionFinished(ctx.req, ctx.res, result, { mergeWithLastSubmission: true });
});

// ---- RFC 7591 registration: resource scopes in the client's `scope` metadata --------------------------------------
// The MCP SDK registers with the scope it was challenged for (e.g. "mcp:tools/call offline_access"). oidc-provider
// refuses registration metadata naming scopes outside its static (OpenID) `scopes` (400 invalid_client_metadata:
// "scope must only contain Authorization Server supported scope values"), and a registered `scope` would also cap
// what the client may ask for later, defeating step-up. RFC 7591 section 3.2.1 lets the server replace requested
// metadata, so the `scope` member of a registration request is dropped: which resource scopes a client gets is
// decided per token request (resources[...].scopes), as for pre-registered clients.
provider.use(async (ctx, next) => {
  if (ctx.method !== 'POST' || ctx.path !== '/reg' || !ctx.is('application/json')) return next();
  const raw = await readRaw(ctx.req);
  let body;
  try {
    body = JSON.parse(raw);
  } catch {
    body = undefined;
  }
  if (body && typeof body === 'object' && !Array.isArray(body) && 'scope' in body) {
    log('registration.scope_dropped', { requested: String(body.scope).slice(0, 200) });
    delete body.scope;
    ctx.req.body = JSON.stringify(body);
  } else {
    ctx.req.body = raw;
  }
  return next();
});

// ---- RFC 7662 / RFC 7009 for JWT access tokens (see the header comment) ---------------------------------------
const revokedJtis = new Set();
const INTROSPECTION = '/token/introspection';
const REVOCATION = '/token/revocation';

function isJws(value) {
  try {
    return !!jose.decodeProtectedHeader(value);
  } catch {
    return false;
  }
}

function secretMatches(expected, given) {
  const a = Buffer.from(String(expected));
  const b = Buffer.from(String(given));
  return a.length === b.length && timingSafeEqual(a, b);
}

// The client authentication oidc-provider applies (client_secret_basic / client_secret_post), for the two
// endpoints this layer answers. Returns the client or undefined.
async function authenticateClient(ctx, form) {
  let id;
  let secret;
  const header = ctx.get('authorization');
  if (header.toLowerCase().startsWith('basic ')) {
    const decoded = Buffer.from(header.slice(6).trim(), 'base64').toString();
    const i = decoded.indexOf(':');
    if (i < 0) return undefined;
    id = decodeURIComponent(decoded.slice(0, i));
    secret = decodeURIComponent(decoded.slice(i + 1));
  } else {
    ({ client_id: id, client_secret: secret } = form);
  }
  if (typeof id !== 'string' || typeof secret !== 'string') return undefined;
  const client = await provider.Client.find(id);
  if (!client || !client.clientSecret || !secretMatches(client.clientSecret, secret)) return undefined;
  const method = header ? 'client_secret_basic' : 'client_secret_post';
  return client.clientAuthMethod === method ? client : undefined;
}

async function readRaw(req) {
  const chunks = [];
  let size = 0;
  for await (const chunk of req) {
    size += chunk.length;
    if (size > 56 * 1024) throw new Error('too large');
    chunks.push(chunk);
  }
  return Buffer.concat(chunks).toString();
}

provider.use(async (ctx, next) => {
  if (!jwtIntrospection || ctx.method !== 'POST' || ![INTROSPECTION, REVOCATION].includes(ctx.path)
    || !ctx.is('application/x-www-form-urlencoded')) {
    return next();
  }
  const raw = await readRaw(ctx.req);
  const form = querystring.parse(raw);
  if (typeof form.token !== 'string' || !isJws(form.token)) {
    ctx.req.body = raw; // oidc-provider reads an already-consumed body from req.body
    return next();
  }
  ctx.set('cache-control', 'no-store');
  const client = await authenticateClient(ctx, form);
  if (!client) {
    ctx.status = 401;
    ctx.set('www-authenticate', `Basic realm="${issuer}"`);
    ctx.body = { error: 'invalid_client', error_description: 'client authentication failed' };
    log(`${ctx.path === INTROSPECTION ? 'introspection' : 'revocation'}.error`, { error: 'invalid_client' });
    return undefined;
  }
  let payload;
  try {
    ({ payload } = await jose.jwtVerify(form.token, localKeys, {
      issuer, typ: 'at+jwt', algorithms: ['RS256', 'ES256'], requiredClaims: ['exp', 'jti'],
    }));
  } catch {
    payload = undefined;
  }
  const mayIntrospect = payload && (clientRules.get(client.clientId)?.introspect_any
    || payload.client_id === client.clientId);
  if (ctx.path === REVOCATION) {
    if (payload && payload.client_id === client.clientId) revokedJtis.add(payload.jti);
    ctx.status = 200;
    ctx.body = '';
    log('revocation.jwt', { client: client.clientId });
    return undefined;
  }
  if (!payload || !mayIntrospect || revokedJtis.has(payload.jti)) {
    ctx.body = { active: false };
  } else {
    ctx.body = { ...payload, active: true, token_type: 'Bearer' };
  }
  log('introspection.jwt', { client: client.clientId, active: ctx.body.active });
  return undefined;
});

provider.listen(port, host, () => {
  log('ready', { issuer, port, resources: Object.keys(resources), clients: clients.map((c) => c.client_id) });
});
