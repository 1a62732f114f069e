//! The MCP authorization point: RFC 9728 protected resource metadata (`protected_resources`), how a failed
//! incoming token is recognised (`jwt_failure_in_metadata`), and step-up (`required_incoming_scopes`,
//! `incoming_scopes`, `scope_hierarchy`).
//!
//! To an MCP client the gateway is the protected resource: it answers `/.well-known/oauth-protected-resource...`
//! and challenges with `WWW-Authenticate: Bearer resource_metadata="...", scope="..."` (401) or
//! `error="insufficient_scope"` (403), as MCP 2026-07-28's authorization page and RFC 6750 ask.

use std::collections::{BTreeMap, BTreeSet};

use serde::Deserialize;
use serde_json::{json, Value};

use super::defaults::{MAX_CLAIM_TEXT_BYTES, MAX_SCOPE_HIERARCHY_DEPTH, MAX_SCOPE_TOKEN_BYTES};
use super::error::{shown, ConfigError};
use super::sources::Source;

/// The RFC 9728 well-known prefix; a resource's path is appended to it (RFC 9728 section 3.1).
pub const PROTECTED_RESOURCE_PREFIX: &str = "/.well-known/oauth-protected-resource";

/// One entry of `protected_resources` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawProtectedResource {
    resource: String,
    authorization_servers: Vec<String>,
    scopes_supported: Option<Vec<String>>,
    resource_name: Option<String>,
    resource_documentation: Option<String>,
}

/// A protected resource: the MCP endpoint as clients know it, with its metadata document rendered once.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProtectedResource {
    /// The absolute URL clients use (`https://mcp-gw.example.com/mcp`).
    pub resource: String,
    /// Its path (`/mcp`; `""` for the host root), which requests are matched against by longest prefix.
    pub path: String,
    /// `scheme://authority` of the resource.
    pub origin: String,
    /// `scopes_supported`, for a challenge when the request's own scope is not known.
    pub scopes_supported: Vec<String>,
    /// The RFC 9728 document.
    pub document: String,
}

impl ProtectedResource {
    /// Where its metadata is served: the well-known prefix with the resource's path inserted after it.
    pub fn metadata_path(&self) -> String {
        format!("{PROTECTED_RESOURCE_PREFIX}{}", self.path)
    }

    /// The absolute URL of its metadata (the `resource_metadata` of challenges).
    pub fn metadata_url(&self) -> String {
        format!("{}{}", self.origin, self.metadata_path())
    }

    /// Whether `path` (a request path without its query) belongs to this resource: equal to its path, or below it.
    pub fn covers(&self, path: &str) -> bool {
        self.path.is_empty()
            || path == self.path
            || path.strip_prefix(&self.path).is_some_and(|rest| rest.starts_with('/'))
    }
}

/// What `required_incoming_scopes` keys match.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ScopeKey {
    /// `*`: every request.
    Any,
    /// `<method>`: every request of that JSON-RPC method.
    Method(String),
    /// `<method>:<name>` or `<method>:<prefix>*`: a tool (`tools/call`) or prompt (`prompts/get`) by name.
    Named {
        /// The method.
        method: String,
        /// The name, or the prefix before a final `*`.
        name: String,
        /// The name ends in `*`.
        wildcard: bool,
    },
}

impl ScopeKey {
    fn parse(text: &str) -> Result<ScopeKey, String> {
        if text == "*" {
            return Ok(ScopeKey::Any);
        }
        let valid_method = |m: &str| crate::mcp::is_valid_method(m);
        match text.split_once(':') {
            None if valid_method(text) => Ok(ScopeKey::Method(text.to_string())),
            Some((method, name)) if valid_method(method) && matches!(method, "tools/call" | "prompts/get") => {
                let (prefix, wildcard) = match name.strip_suffix('*') {
                    Some(prefix) => (prefix, true),
                    None => (name, false),
                };
                let ok = (wildcard && prefix.is_empty()) || crate::mcp::is_valid_tool_name(prefix);
                if !ok {
                    return Err(format!("`{}`: the name must follow MCP's tool-name rules", shown(text)));
                }
                Ok(ScopeKey::Named {
                    method: method.to_string(),
                    name: prefix.to_string(),
                    wildcard,
                })
            }
            _ => Err(format!(
                "`{}` must be `*`, a method (`tools/list`), or `tools/call:<tool>` / `prompts/get:<prompt>` (a final \
                 `*` matches a prefix)",
                shown(text)
            )),
        }
    }

    /// Whether a call of `method` (naming `name`, for tools and prompts) matches.
    pub fn matches(&self, method: &str, name: Option<&str>) -> bool {
        match self {
            ScopeKey::Any => true,
            ScopeKey::Method(m) => m == method,
            ScopeKey::Named {
                method: m,
                name: n,
                wildcard,
            } => {
                m == method
                    && name.is_some_and(|name| {
                        if *wildcard {
                            name.starts_with(n.as_str())
                        } else {
                            name == n
                        }
                    })
            }
        }
    }
}

/// The authorization settings, validated.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Authorization {
    /// `protected_resources`.
    pub protected_resources: Vec<ProtectedResource>,
    /// jwt_authn's `failed_status_in_metadata` name: where a failed incoming token's status is read.
    pub jwt_failure_in_metadata: Option<String>,
    /// `required_incoming_scopes`, in the order written.
    pub required_incoming_scopes: Vec<(ScopeKey, Vec<String>)>,
    /// Where the verified incoming token's scopes are read (a space-separated string or a list).
    pub incoming_scopes: Vec<Source>,
    /// Broader scope → the narrower scopes it implies (already closed transitively).
    pub scope_hierarchy: BTreeMap<String, BTreeSet<String>>,
}

/// The authorization fields as written.
pub(crate) struct RawAuthorization {
    pub protected_resources: Option<Vec<RawProtectedResource>>,
    pub jwt_failure_in_metadata: Option<String>,
    pub required_incoming_scopes: Option<BTreeMap<String, Vec<String>>>,
    pub incoming_scopes: Option<Vec<String>>,
    pub scope_hierarchy: Option<BTreeMap<String, Vec<String>>>,
}

/// `scheme://authority` and the path of an absolute http(s) URL without query or fragment.
fn split_url(url: &str) -> Result<(String, String), &'static str> {
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"))
        .ok_or("must be an absolute https:// (or http://) URL")?;
    if url.contains('#') {
        return Err("must not have a fragment (RFC 9728)");
    }
    if url.contains('?') {
        return Err("must not have a query");
    }
    if url.chars().any(|c| c.is_whitespace() || c.is_control()) || url.contains('"') || url.contains('\\') {
        return Err("must not contain whitespace, quotes or control characters");
    }
    let (authority, path) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    if !super::issuer::is_valid_authority(authority) {
        return Err("must have a valid host (and optional port)");
    }
    let path = path.trim_end_matches('/');
    if path.contains("//") || path.split('/').any(|s| s == "." || s == "..") {
        return Err("path must not contain empty, `.` or `..` segments");
    }
    Ok((
        format!("{}{}", &url[..url.len() - rest.len()], authority),
        path.to_string(),
    ))
}

/// A scope token (RFC 6749 section 3.3): printable ASCII without space, `"` or `\`.
fn check_scope_token(field: &str, scope: &str) -> Result<(), ConfigError> {
    let ok = !scope.is_empty()
        && scope.len() <= MAX_SCOPE_TOKEN_BYTES
        && scope
            .bytes()
            .all(|b| (0x21..0x7f).contains(&b) && b != b'"' && b != b'\\');
    if ok {
        Ok(())
    } else {
        Err(ConfigError::new(
            field,
            format!("scopes must be 1-{MAX_SCOPE_TOKEN_BYTES} printable ASCII characters without spaces, quotes or backslashes"),
        ))
    }
}

impl Authorization {
    /// Validates the authorization fields.
    pub(crate) fn from_raw(raw: RawAuthorization) -> Result<Authorization, ConfigError> {
        let mut protected_resources: Vec<ProtectedResource> = Vec::new();
        for (i, r) in raw.protected_resources.unwrap_or_default().into_iter().enumerate() {
            let field = |name: &str| format!("protected_resources[{i}].{name}");
            let (origin, path) = split_url(&r.resource).map_err(|e| ConfigError::new(field("resource"), e))?;
            let resource = format!("{origin}{path}");
            if protected_resources.iter().any(|p| p.resource == resource) {
                return Err(ConfigError::new(field("resource"), "is listed twice"));
            }
            if r.authorization_servers.is_empty() {
                return Err(ConfigError::new(
                    field("authorization_servers"),
                    "must list at least one authorization server (MCP requires it)",
                ));
            }
            for (j, server) in r.authorization_servers.iter().enumerate() {
                split_url(server)
                    .map_err(|e| ConfigError::new(format!("{}[{j}]", field("authorization_servers")), e))?;
            }
            let scopes = r.scopes_supported.unwrap_or_default();
            for (j, scope) in scopes.iter().enumerate() {
                check_scope_token(&format!("{}[{j}]", field("scopes_supported")), scope)?;
            }
            for (name, value) in [
                ("resource_name", &r.resource_name),
                ("resource_documentation", &r.resource_documentation),
            ] {
                if let Some(value) = value {
                    if value.is_empty() || value.len() > MAX_CLAIM_TEXT_BYTES || value.chars().any(char::is_control) {
                        return Err(ConfigError::new(
                            field(name),
                            "must be 1-1024 characters without control characters",
                        ));
                    }
                }
            }
            if let Some(doc) = &r.resource_documentation {
                split_url(doc).map_err(|e| ConfigError::new(field("resource_documentation"), e))?;
            }
            let mut document = json!({
                "resource": resource,
                "authorization_servers": r.authorization_servers,
                "bearer_methods_supported": ["header"],
            });
            if !scopes.is_empty() {
                document["scopes_supported"] = json!(scopes);
            }
            if let Some(name) = &r.resource_name {
                document["resource_name"] = Value::String(name.clone());
            }
            if let Some(doc) = &r.resource_documentation {
                document["resource_documentation"] = Value::String(doc.clone());
            }
            protected_resources.push(ProtectedResource {
                resource,
                path,
                origin,
                scopes_supported: scopes,
                document: document.to_string(),
            });
        }
        let mut metadata_paths = BTreeSet::new();
        for (i, r) in protected_resources.iter().enumerate() {
            if !metadata_paths.insert(r.metadata_path()) {
                return Err(ConfigError::new(
                    format!("protected_resources[{i}].resource"),
                    "has the same path as another resource: their metadata would share one URL",
                ));
            }
        }
        if let Some(name) = &raw.jwt_failure_in_metadata {
            super::check_claim_text("jwt_failure_in_metadata", name)?;
        }
        let mut required_incoming_scopes = Vec::new();
        for (key, scopes) in raw.required_incoming_scopes.unwrap_or_default() {
            let field = format!("required_incoming_scopes.{}", shown(&key));
            let parsed = ScopeKey::parse(&key).map_err(|e| ConfigError::new(&field, e))?;
            if scopes.is_empty() {
                return Err(ConfigError::new(&field, "must list at least one scope"));
            }
            for (j, scope) in scopes.iter().enumerate() {
                check_scope_token(&format!("{field}[{j}]"), scope)?;
            }
            required_incoming_scopes.push((parsed, scopes));
        }
        let incoming_scopes = match raw.incoming_scopes {
            None => vec![Source::Jwt(vec!["scope".into()]), Source::Jwt(vec!["scp".into()])],
            Some(list) => list
                .iter()
                .enumerate()
                .map(|(i, s)| Source::parse(s).map_err(|r| ConfigError::new(format!("incoming_scopes[{i}]"), r)))
                .collect::<Result<_, _>>()?,
        };
        let scope_hierarchy = hierarchy(raw.scope_hierarchy.unwrap_or_default())?;
        Ok(Authorization {
            protected_resources,
            jwt_failure_in_metadata: raw.jwt_failure_in_metadata,
            required_incoming_scopes,
            incoming_scopes,
            scope_hierarchy,
        })
    }

    /// The protected resource a request path belongs to: the one whose path is the longest prefix of it.
    pub fn resource_for(&self, path: &str) -> Option<&ProtectedResource> {
        self.protected_resources
            .iter()
            .filter(|r| r.covers(path))
            .max_by_key(|r| r.path.len())
    }

    /// The incoming scopes a call of `method` (naming `name`) needs: the union of every matching key's list.
    pub fn required_scopes(&self, method: &str, name: Option<&str>) -> BTreeSet<String> {
        self.required_incoming_scopes
            .iter()
            .filter(|(key, _)| key.matches(method, name))
            .flat_map(|(_, scopes)| scopes.iter().cloned())
            .collect()
    }

    /// Whether `granted` satisfies `scope`, directly or through a broader scope that implies it.
    pub fn satisfies(&self, granted: &BTreeSet<String>, scope: &str) -> bool {
        granted.contains(scope)
            || granted.iter().any(|g| {
                self.scope_hierarchy
                    .get(g)
                    .is_some_and(|implied| implied.contains(scope))
            })
    }
}

/// `scope_hierarchy`, closed transitively (bounded depth: a cycle is refused).
fn hierarchy(raw: BTreeMap<String, Vec<String>>) -> Result<BTreeMap<String, BTreeSet<String>>, ConfigError> {
    for (broad, narrower) in &raw {
        let field = format!("scope_hierarchy.{}", shown(broad));
        check_scope_token(&field, broad)?;
        for (j, n) in narrower.iter().enumerate() {
            check_scope_token(&format!("{field}[{j}]"), n)?;
        }
    }
    let mut closed = BTreeMap::new();
    for broad in raw.keys() {
        let mut implied = BTreeSet::new();
        let mut frontier: Vec<&String> = raw[broad].iter().collect();
        let mut depth = 0;
        while !frontier.is_empty() {
            depth += 1;
            if depth > MAX_SCOPE_HIERARCHY_DEPTH {
                return Err(ConfigError::new(
                    format!("scope_hierarchy.{}", shown(broad)),
                    format!("implies itself, or is nested more than {MAX_SCOPE_HIERARCHY_DEPTH} levels deep"),
                ));
            }
            let mut next = Vec::new();
            for scope in frontier {
                if scope == broad {
                    return Err(ConfigError::new(
                        format!("scope_hierarchy.{}", shown(broad)),
                        "implies itself",
                    ));
                }
                if implied.insert(scope.clone()) {
                    next.extend(raw.get(scope).into_iter().flatten());
                }
            }
            frontier = next;
        }
        closed.insert(broad.clone(), implied);
    }
    Ok(closed)
}
