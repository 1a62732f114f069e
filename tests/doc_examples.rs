//! docs/coming-from-litellm.md: every ```json plugin-config block is a configuration the filter loads, every block
//! a `jwt-authn=` or `route=` attribute names exists, and every LiteLLM option (read from LiteLLM's source,
//! litellm 1.110.2) has a row in the checklist and at least one example. The examples run in a real Envoy in
//! tests/e2e/test_parity.py::test_litellm_doc_example.

use std::collections::{BTreeMap, BTreeSet};

use mcp_jwt_signer::config::Config;

/// Every option of LiteLLM's MCPJWTSigner: the guardrail's parameters (`initialize_guardrail` in
/// `mcp_jwt_signer/__init__.py`), the environment variables its `__init__` reads, and the guardrail framework's
/// `mode` and `default_on`.
const LITELLM_OPTIONS: [&str; 25] = [
    "issuer",
    "audience",
    "ttl_seconds",
    "access_token_discovery_uri",
    "token_introspection_endpoint",
    "verify_issuer",
    "verify_audience",
    "end_user_claim_sources",
    "add_claims",
    "set_claims",
    "remove_claims",
    "channel_token_audience",
    "channel_token_ttl",
    "required_claims",
    "optional_claims",
    "debug_headers",
    "allowed_scopes",
    "timeout",
    "MCP_JWT_SIGNING_KEY",
    "MCP_JWT_ISSUER",
    "MCP_JWT_AUDIENCE",
    "MCP_JWT_TTL_SECONDS",
    "LITELLM_EXTERNAL_URL",
    "mode",
    "default_on",
];

struct Block {
    kind: String,
    attrs: BTreeMap<String, String>,
    text: String,
}

fn blocks(doc: &str) -> Vec<Block> {
    let mut out = Vec::new();
    let mut lines = doc.lines();
    while let Some(line) = lines.next() {
        let Some(info) = line.strip_prefix("```") else { continue };
        let mut words = info.split_whitespace();
        let (Some(_lang), Some(kind)) = (words.next(), words.next()) else {
            for l in lines.by_ref() {
                if l.starts_with("```") {
                    break;
                }
            }
            continue;
        };
        let attrs = words
            .map(|w| {
                let (k, v) = w
                    .split_once('=')
                    .unwrap_or_else(|| panic!("attribute `{w}` without `=`"));
                (k.to_string(), v.to_string())
            })
            .collect();
        let mut text = String::new();
        for l in lines.by_ref() {
            if l.starts_with("```") {
                break;
            }
            text.push_str(l);
            text.push('\n');
        }
        out.push(Block {
            kind: kind.to_string(),
            attrs,
            text,
        });
    }
    out
}

fn doc() -> String {
    std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/coming-from-litellm.md")).unwrap()
}

#[test]
fn every_plugin_config_example_loads() {
    let all = blocks(&doc());
    let configs: Vec<&Block> = all.iter().filter(|b| b.kind == "plugin-config").collect();
    assert!(configs.len() >= 15, "only {} examples", configs.len());
    let ids = |kind: &str| -> BTreeSet<String> {
        all.iter()
            .filter(|b| b.kind == kind)
            .map(|b| b.attrs["id"].clone())
            .collect()
    };
    let (jwt_authn, routes) = (ids("jwt-authn"), ids("route-metadata"));
    let env = |name: &str| match name {
        "MCP_JWT_INTROSPECTION_CLIENT_ID" => Some("gateway".to_string()),
        "MCP_JWT_INTROSPECTION_CLIENT_SECRET" => Some("secret".to_string()),
        _ => None,
    };
    let mut seen = BTreeSet::new();
    for block in configs {
        let id = &block.attrs["id"];
        assert!(seen.insert(id.clone()), "example id `{id}` twice");
        // What the plugin checks at load (key generation aside): the configuration, and the credentials it names.
        let config = Config::parse(block.text.as_bytes()).unwrap_or_else(|e| panic!("example `{id}`: {e}"));
        if let Some(introspection) = &config.introspection {
            introspection
                .client_authorization(&env)
                .unwrap_or_else(|e| panic!("example `{id}`: {e}"));
        }
        if let Some(name) = block.attrs.get("jwt-authn") {
            assert!(
                jwt_authn.contains(name),
                "example `{id}` names a missing jwt-authn block `{name}`"
            );
        }
        if let Some(name) = block.attrs.get("route") {
            assert!(
                routes.contains(name),
                "example `{id}` names a missing route-metadata block `{name}`"
            );
        }
    }
}

#[test]
fn every_litellm_option_has_a_checklist_row_and_an_example() {
    let doc = doc();
    let examples: BTreeSet<String> = blocks(&doc)
        .iter()
        .filter_map(|b| b.attrs.get("litellm"))
        .flat_map(|list| list.split(',').map(str::to_string))
        .collect();
    for option in LITELLM_OPTIONS {
        let row = doc.lines().any(|l| {
            l.starts_with('|')
                && l.split('|')
                    .nth(1)
                    .is_some_and(|cell| cell.contains(&format!("`{option}`")))
        });
        assert!(row, "no checklist row for LiteLLM's `{option}`");
        assert!(examples.contains(option), "no example for LiteLLM's `{option}`");
    }
    for label in &examples {
        assert!(
            LITELLM_OPTIONS.contains(&label.as_str()),
            "`litellm={label}` is not a LiteLLM option"
        );
    }
}
