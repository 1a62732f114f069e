//! Every default and every limit of the plugin configuration, in one place. Stated limits (in docs and error
//! messages) are built from these constants.

/// `audience` when neither the plugin nor the route sets one.
pub const AUDIENCE: &str = "mcp";
/// `ttl_seconds`: the token lifetime.
pub const TTL_SECONDS: u64 = 300;
/// `actor`: `act.sub` without a team/org, and `sub` without a user.
pub const ACTOR: &str = "mcp-gateway";
/// `max_body_bytes`: the largest request body the filter buffers and reads.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;
/// Longest lifetime accepted: a "short-lived" token that lives more than a day is a misconfiguration.
pub const MAX_TTL_SECONDS: u64 = 24 * 60 * 60;
/// Upper bound for `max_body_bytes`; MCP messages are small and the filter buffers the whole body.
pub const MAX_BODY_BYTES_LIMIT: usize = 64 * 1024 * 1024;
/// jwt_authn `payload_in_metadata` name read by `jwt:` sources.
pub const JWT_PAYLOAD_IN_METADATA: &str = "jwt_payload";
/// `require_subject`.
pub const REQUIRE_SUBJECT: bool = false;
/// `allow_body_buffering`: the deployment sets the wasm filter's `allow_on_headers_stop_iteration`, so the filter
/// can hold a request while it reads the body.
pub const ALLOW_BODY_BUFFERING: bool = true;
/// `audit_fields`: write the audit fields (decision, user, tool, token id, ...) for Envoy's access log.
pub const AUDIT_FIELDS: bool = true;
/// `strip_identity_headers`.
pub const STRIP_IDENTITY_HEADERS: bool = true;
/// Token cache: entries per worker VM (0 switches the cache off).
pub const CACHE_MAX_ENTRIES: usize = 1024;
/// Token cache: largest `max_entries`.
pub const CACHE_MAX_ENTRIES_LIMIT: usize = 1_000_000;
/// Token cache: bytes of tokens per worker VM.
pub const CACHE_MAX_BYTES: usize = 4 * 1024 * 1024;
/// Token cache: largest `max_bytes`.
pub const CACHE_MAX_BYTES_LIMIT: usize = 1 << 30;
/// Token cache: a cached token is reused while at least this fraction of `ttl_seconds` remains.
pub const CACHE_MIN_REMAINING_FRACTION: f64 = 0.5;
/// `max_token_bytes`: the largest token the filter signs. Many servers and proxies cap all request headers at 8-16
/// KiB; a bigger token would be refused upstream with a plain-text 431 the client cannot read.
pub const MAX_TOKEN_BYTES: usize = 8 * 1024;
/// Smallest `max_token_bytes`: below it even a minimal RS256 token does not fit.
pub const MAX_TOKEN_BYTES_MIN: usize = 1024;
/// Largest `max_token_bytes` (Envoy's own request header limit is 60 KiB by default, 8 MiB at most).
pub const MAX_TOKEN_BYTES_LIMIT: usize = 1024 * 1024;
/// Longest text written as a claim value in the configuration (`audience`, `actor`, literals), and longest
/// identity value accepted into a claim from a request.
pub const MAX_CLAIM_TEXT_BYTES: usize = 1024;
/// Longest claim name in claim shaping.
pub const MAX_CLAIM_NAME_BYTES: usize = 256;
/// Longest scope token in `protected_resources`, `required_incoming_scopes` and `scope_hierarchy`.
pub const MAX_SCOPE_TOKEN_BYTES: usize = 256;
/// Deepest `scope_hierarchy` chain (a broader scope implying one that implies another ...).
pub const MAX_SCOPE_HIERARCHY_DEPTH: usize = 8;
/// Slots of the token cache shared by the workers.
pub const SHARED_CACHE_MAX_ENTRIES: usize = 4096;
/// Bytes the shared token cache may hold in all (16 MiB: 4 KiB per slot by default).
pub const SHARED_CACHE_MAX_BYTES: usize = 16 * 1024 * 1024;
/// The least a shared slot must hold: the slot header and a small token.
pub const SHARED_CACHE_MIN_ENTRY_BYTES: usize = 1024;
/// The first Envoy minor (of 1.x) with the wasm filter's `allow_on_headers_stop_iteration`, which body buffering
/// needs (docs/envoy-versions.md).
pub const MIN_ENVOY_MINOR_FOR_BUFFERING: u64 = 35;

// ---- upstream delivery: token header, client authorization, channel token, debug header -------------------------
/// `token_header`: where the minted token goes.
pub const TOKEN_HEADER: &str = "authorization";
/// `channel_token.header`: where the channel token goes (`Bearer <jwt>`).
pub const CHANNEL_TOKEN_HEADER: &str = "x-mcp-channel-token";
/// `debug_header.name`: the debug summary header (off unless `debug_header` is set).
pub const DEBUG_HEADER: &str = "x-mcp-jwt-debug";
/// The debug header's `scope=` is cut to this many characters (the last three become `...`), as LiteLLM does.
pub const DEBUG_SCOPE_CHARS: usize = 80;
/// Longest header name accepted for `token_header`, `channel_token.header` and `debug_header.name`.
pub const MAX_HEADER_NAME_BYTES: usize = 128;

// ---- fixed_scopes -------------------------------------------------------------------------------------------
/// Most entries in one `fixed_scopes` list.
pub const MAX_FIXED_SCOPES: usize = 64;
/// Longest `fixed_scopes` entry.
pub const MAX_FIXED_SCOPE_BYTES: usize = 256;

// ---- introspection (RFC 7662) ---------------------------------------------------------------------------------
/// `introspection.timeout_ms`.
pub const INTROSPECTION_TIMEOUT_MS: u64 = 2_000;
/// Largest `introspection.timeout_ms`: the request waits for the answer.
pub const INTROSPECTION_TIMEOUT_MS_LIMIT: u64 = 30_000;
/// `introspection.client_id_env`: the environment variable holding the gateway's client id at the endpoint.
pub const INTROSPECTION_CLIENT_ID_ENV: &str = "MCP_JWT_INTROSPECTION_CLIENT_ID";
/// `introspection.client_secret_env`: the environment variable holding its client secret.
pub const INTROSPECTION_CLIENT_SECRET_ENV: &str = "MCP_JWT_INTROSPECTION_CLIENT_SECRET";
/// `introspection.cache.max_entries`: introspection results per worker VM (0 switches the cache off).
pub const INTROSPECTION_CACHE_MAX_ENTRIES: usize = 1024;
/// `introspection.cache.max_bytes`: bytes of cached introspection results per worker VM.
pub const INTROSPECTION_CACHE_MAX_BYTES: usize = 1024 * 1024;
/// `introspection.cache.max_seconds`: the longest a result is reused (never past the token's `exp`). A revoked
/// token is accepted for at most this long.
pub const INTROSPECTION_CACHE_MAX_SECONDS: u64 = 60;
/// Largest `introspection.cache.max_seconds`.
pub const INTROSPECTION_CACHE_MAX_SECONDS_LIMIT: u64 = 3600;
/// Longest bearer token the filter sends to the introspection endpoint; longer ones are refused (401).
pub const MAX_INTROSPECTED_TOKEN_BYTES: usize = 16 * 1024;
/// Largest introspection response read; a longer one fails closed (503).
pub const MAX_INTROSPECTION_RESPONSE_BYTES: usize = 64 * 1024;

// ---- delegation (RFC 8693 section 4.1) ------------------------------------------------------------------------
/// Deepest `act` chain the filter mints (this gateway's actor included); a deeper incoming chain is refused (403).
pub const MAX_DELEGATION_DEPTH: usize = 8;
