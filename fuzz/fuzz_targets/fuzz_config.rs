//! The plugin configuration parser: it must never panic (a panic in `on_configure` takes the VM down), and its
//! errors, which Envoy logs, must never carry key material.
//!
//! The input is used as-is, and once more with every `$PEM` in it replaced by a private-key PEM whose body is a
//! marker no error may contain (any 12-character window of it), in three spellings: JSON-escaped newlines, raw
//! newlines, and the one-line form with literal `\n` (as an environment variable carries it).

#![no_main]

use libfuzzer_sys::fuzz_target;
use mcp_jwt_signer::config::{Config, KeySource};
use mcp_jwt_signer::crypto::Signer;

/// Looks like base64 key material; long enough that the fuzzer does not stumble on it by chance.
const SECRET_BODY: &str = "MIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQC7fuzzSecretBodyQ9xZp4Lk2Wv";
const PLACEHOLDER: &[u8] = b"$PEM";
const WINDOW: usize = 12;

fn pem_spellings() -> [String; 3] {
    let head = "-----BEGIN PRIVATE KEY-----";
    let foot = "-----END PRIVATE KEY-----";
    [
        format!("{head}\\n{SECRET_BODY}\\n{foot}\\n"),
        format!("{head}\n{SECRET_BODY}\n{foot}\n"),
        format!("{head}\\\\n{SECRET_BODY}\\\\n{foot}"),
    ]
}

fn assert_no_secret(what: &str, text: &str) {
    let bytes = SECRET_BODY.as_bytes();
    for window in bytes.windows(WINDOW) {
        let window = std::str::from_utf8(window).unwrap_or_default();
        assert!(
            !text.contains(window),
            "{what} leaks key material ({window:?}): {text:?}"
        );
    }
}

fn replace_all(data: &[u8], with: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() + with.len());
    let mut i = 0;
    while i < data.len() {
        if data[i..].starts_with(PLACEHOLDER) {
            out.extend_from_slice(with);
            i += PLACEHOLDER.len();
        } else {
            out.push(data[i]);
            i += 1;
        }
    }
    out
}

fn check(input: &[u8], has_secret: bool) {
    match Config::parse(input) {
        Ok(config) => {
            if has_secret {
                assert_no_secret("Debug of signing_key", &format!("{:?}", config.signing_key));
            }
            // Key resolution (precedence, file:// refusal) must not panic or echo either.
            match config.key_source(
                Some("-----BEGIN PRIVATE KEY-----\\nAAAA\\n-----END PRIVATE KEY-----"),
            ) {
                Ok(KeySource::Config(pem)) => {
                    // Parsing the configured key: errors are fixed strings, never key text.
                    if let Err(e) = Signer::from_pem(config.algorithm, &pem.0) {
                        if has_secret {
                            assert_no_secret("key error", &e.to_string());
                        }
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    if has_secret {
                        assert_no_secret("key source error", &e.to_string());
                    }
                }
            }
        }
        Err(e) => {
            let text = e.to_string();
            if has_secret {
                assert_no_secret("config error", &text);
                assert!(
                    !text.contains("-----BEGIN"),
                    "config error quotes a PEM header: {text:?}"
                );
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    check(data, false);
    if data.windows(PLACEHOLDER.len()).any(|w| w == PLACEHOLDER) {
        for pem in pem_spellings() {
            check(&replace_all(data, pem.as_bytes()), true);
        }
    }
});
