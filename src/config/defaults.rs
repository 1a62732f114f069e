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
