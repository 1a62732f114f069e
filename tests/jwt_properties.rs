//! Property tests of the JWT and JWK encoders, checked by an independent implementation (`jsonwebtoken`, plus
//! RFC 7638 thumbprints computed here from serde_json and sha2).
//!
//! - arbitrary claim maps (any Unicode in keys and strings, integers, exact floats, nested objects and arrays)
//!   signed with `jwt::encode` verify with `jsonwebtoken` against the signer's published JWK and decode to the same
//!   claims, for every signing algorithm the filter offers;
//! - changing any one byte of a token makes verification fail;
//! - the JWK's `kid` is the RFC 7638 thumbprint, and `thumbprint` matches an independent computation
//!   for arbitrary base64url members.
//!
//! Keys are generated once per algorithm (RSA generation is slow in a debug build); few cases per property.

use std::collections::BTreeMap;
use std::sync::OnceLock;

use base64::alphabet;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig, URL_SAFE_NO_PAD};
use base64::engine::DecodePaddingMode;
use base64::Engine;
use jsonwebtoken::{Algorithm as JwtAlg, DecodingKey, Validation};
use mcp_jwt_signer::crypto::jws as jwt;
use mcp_jwt_signer::crypto::rsa::RsaSigner;
use mcp_jwt_signer::crypto::{thumbprint, Algorithm, Jwk, Signer};

/// The RSA thumbprint as the filter computes it.
fn rsa_thumbprint(n: &str, e: &str) -> String {
    thumbprint(&[("e", e), ("kty", "RSA"), ("n", n)])
}
use proptest::prelude::*;
use serde_json::{json, Map, Number, Value};
use sha2::{Digest, Sha256};

const ISSUER: &str = "https://gw.example.com/tenant";
const AUDIENCE: &str = "mcp";
/// Registered claims `jsonwebtoken` interprets; the arbitrary part of a claim map never uses these names.
const REGISTERED: [&str; 7] = ["iss", "aud", "sub", "exp", "nbf", "iat", "jti"];

fn rsa() -> &'static Signer {
    static KEY: OnceLock<Signer> = OnceLock::new();
    KEY.get_or_init(|| Signer::Rs256(Box::new(RsaSigner::generate().expect("RSA key generation"))))
}

fn es256() -> &'static Signer {
    static KEY: OnceLock<Signer> = OnceLock::new();
    KEY.get_or_init(|| Signer::generate(Algorithm::Es256).expect("P-256 key generation"))
}

fn eddsa() -> &'static Signer {
    static KEY: OnceLock<Signer> = OnceLock::new();
    KEY.get_or_init(|| Signer::generate(Algorithm::EdDsa).expect("Ed25519 key generation"))
}

fn jwt_alg(signer: &Signer) -> JwtAlg {
    match signer.algorithm() {
        Algorithm::Rs256 => JwtAlg::RS256,
        Algorithm::Es256 => JwtAlg::ES256,
        Algorithm::EdDsa => JwtAlg::EdDSA,
    }
}

/// The verifier's key, built by jsonwebtoken from the JWK exactly as the filter publishes it.
fn decoding_key(jwk: &Jwk) -> DecodingKey {
    let published = serde_json::to_value(jwk).expect("JWK serialises");
    let parsed: jsonwebtoken::jwk::Jwk = serde_json::from_value(published).expect("jsonwebtoken reads the JWK");
    DecodingKey::from_jwk(&parsed).expect("jsonwebtoken builds a key from the JWK")
}

fn validation(signer: &Signer) -> Validation {
    let mut v = Validation::new(jwt_alg(signer));
    v.set_issuer(&[ISSUER]);
    v.set_audience(&[AUDIENCE]);
    v.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
    v.leeway = 0;
    v
}

fn b64url_json(segment: &str) -> Value {
    let bytes = URL_SAFE_NO_PAD
        .decode(segment)
        .expect("segment is base64url without padding");
    serde_json::from_slice(&bytes).expect("segment is JSON")
}

/// RFC 7638: the required members, lexicographic order, no whitespace (serde_json's Map is ordered by key).
fn independent_thumbprint(members: &[(&str, &str)]) -> String {
    let canonical: BTreeMap<&str, &str> = members.iter().copied().collect();
    let text = serde_json::to_string(&canonical).expect("canonical JSON");
    URL_SAFE_NO_PAD.encode(Sha256::digest(text.as_bytes()))
}

fn thumbprint_of(jwk: &Jwk) -> String {
    let get = |v: &Option<String>| v.clone().expect("member present");
    match jwk.kty {
        "RSA" => independent_thumbprint(&[("e", &get(&jwk.e)), ("kty", "RSA"), ("n", &get(&jwk.n))]),
        "EC" => independent_thumbprint(&[
            ("crv", jwk.crv.expect("crv")),
            ("kty", "EC"),
            ("x", &get(&jwk.x)),
            ("y", &get(&jwk.y)),
        ]),
        "OKP" => independent_thumbprint(&[("crv", jwk.crv.expect("crv")), ("kty", "OKP"), ("x", &get(&jwk.x))]),
        other => panic!("unexpected kty {other}"),
    }
}

// ---------------------------------------------------------------------------------------------------------------
// strategies
// ---------------------------------------------------------------------------------------------------------------

/// Floats that survive any JSON round trip exactly: small multiples of 1/1024 (short, exact decimal forms).
fn exact_float() -> impl Strategy<Value = Value> {
    (-1_000_000i64..1_000_000)
        .prop_filter("not an integer", |m| m % 1024 != 0)
        .prop_map(|m| Value::Number(Number::from_f64(m as f64 / 1024.0).expect("finite")))
}

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<u64>().prop_map(|n| json!(n)),
        exact_float(),
        any::<String>().prop_map(Value::String),
        "[\\PC\\p{Cc}\u{2028}\u{feff}\"\\\\/]{0,24}".prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(any::<String>(), inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

/// A claim map: arbitrary members plus the registered claims a verifier checks (`sub` arbitrary Unicode).
fn claims() -> impl Strategy<Value = Value> {
    (
        prop::collection::btree_map(any::<String>(), json_value(), 0..8),
        any::<String>(),
        4_000_000_000u64..9_000_000_000,
    )
        .prop_map(|(extra, sub, exp)| {
            let mut map: Map<String, Value> = extra
                .into_iter()
                .filter(|(k, _)| !REGISTERED.contains(&k.as_str()))
                .collect();
            map.insert("iss".into(), json!(ISSUER));
            map.insert("aud".into(), json!(AUDIENCE));
            map.insert("sub".into(), json!(sub));
            map.insert("exp".into(), json!(exp));
            Value::Object(map)
        })
}

// ---------------------------------------------------------------------------------------------------------------
// properties
// ---------------------------------------------------------------------------------------------------------------

fn round_trip(signer: &Signer, claims: &Value) -> Result<(), TestCaseError> {
    let token = jwt::encode(claims, signer).map_err(|e| TestCaseError::fail(e.to_string()))?;

    let parts: Vec<&str> = token.split('.').collect();
    prop_assert_eq!(parts.len(), 3, "compact JWS has three parts: {}", token);
    for part in &parts {
        prop_assert!(
            !part.is_empty()
                && part
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'),
            "not base64url without padding: {}",
            part
        );
    }
    prop_assert_eq!(
        b64url_json(parts[0]),
        json!({"alg": signer.algorithm().name(), "typ": "JWT", "kid": signer.kid()})
    );
    prop_assert_eq!(&b64url_json(parts[1]), claims);

    let header = jsonwebtoken::decode_header(&token).map_err(|e| TestCaseError::fail(e.to_string()))?;
    prop_assert_eq!(header.alg, jwt_alg(signer));
    prop_assert_eq!(header.kid.as_deref(), Some(signer.kid()));
    let key = decoding_key(signer.jwk());
    let data = jsonwebtoken::decode::<Value>(&token, &key, &validation(signer))
        .map_err(|e| TestCaseError::fail(format!("jsonwebtoken refused the token: {e}")))?;
    prop_assert_eq!(&data.claims, claims);
    Ok(())
}

/// Changing any one character of the signed part or the signature must break verification.
fn tamper(
    signer: &Signer,
    claims: &Value,
    position: prop::sample::Index,
    replacement: u8,
) -> Result<(), TestCaseError> {
    let token = jwt::encode(claims, signer).map_err(|e| TestCaseError::fail(e.to_string()))?;
    let original = token.clone();
    let mut bytes = token.into_bytes();
    let i = position.index(bytes.len());
    prop_assume!(bytes[i] != b'.');
    let alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let new = alphabet[replacement as usize % alphabet.len()];
    prop_assume!(new != bytes[i]);
    bytes[i] = new;
    let tampered = String::from_utf8(bytes).expect("ASCII");
    let key = decoding_key(signer.jwk());
    if jsonwebtoken::decode::<Value>(&tampered, &key, &validation(signer)).is_ok() {
        // Only acceptable if the change touched bits that carry no data (a segment's unused trailing bits):
        // then every segment decodes to the same bytes as before.
        let lenient = GeneralPurpose::new(
            &alphabet::URL_SAFE,
            GeneralPurposeConfig::new()
                .with_encode_padding(false)
                .with_decode_allow_trailing_bits(true)
                .with_decode_padding_mode(DecodePaddingMode::RequireNone),
        );
        let decoded = |t: &str| t.split('.').map(|p| lenient.decode(p).ok()).collect::<Vec<_>>();
        prop_assert_eq!(
            decoded(&original),
            decoded(&tampered),
            "a token with a changed character at {} still verified: {}",
            i,
            tampered
        );
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn rs256_round_trip(claims in claims()) {
        round_trip(rsa(), &claims)?;
    }

    #[test]
    fn es256_round_trip(claims in claims()) {
        round_trip(es256(), &claims)?;
    }

    #[test]
    fn eddsa_round_trip(claims in claims()) {
        round_trip(eddsa(), &claims)?;
    }

    #[test]
    fn tampered_tokens_do_not_verify(
        claims in claims(),
        which in 0usize..3,
        position in any::<prop::sample::Index>(),
        replacement in any::<u8>(),
    ) {
        let signer = [rsa(), es256(), eddsa()][which];
        tamper(signer, &claims, position, replacement)?;
    }

    #[test]
    fn rsa_thumbprint_matches_rfc7638(n in "[A-Za-z0-9_-]{1,700}", e in "[A-Za-z0-9_-]{1,12}") {
        prop_assert_eq!(rsa_thumbprint(&n, &e), independent_thumbprint(&[("e", &e), ("kty", "RSA"), ("n", &n)]));
    }
}

#[test]
fn rsa_jwk_n_e_give_a_key_that_verifies() {
    let signer = rsa();
    let jwk = signer.jwk();
    assert_eq!((jwk.kty, jwk.alg, jwk.use_), ("RSA", "RS256", "sig"));
    let (n, e) = (jwk.n.as_deref().expect("n"), jwk.e.as_deref().expect("e"));
    let n_bytes = URL_SAFE_NO_PAD.decode(n).expect("n is base64url");
    assert_eq!(
        n_bytes.len(),
        256,
        "RSA-2048 modulus, minimal octets (RFC 7518 6.3.1.1)"
    );
    assert_ne!(n_bytes[0], 0);
    assert_eq!(e, "AQAB");
    assert!(jwk.crv.is_none() && jwk.x.is_none() && jwk.y.is_none());
    assert_eq!(
        rsa_thumbprint(n, e),
        independent_thumbprint(&[("e", e), ("kty", "RSA"), ("n", n)])
    );

    let claims = json!({"iss": ISSUER, "aud": AUDIENCE, "sub": "ünïcødé \u{1F600}", "exp": 4_000_000_000u64});
    let token = jwt::encode(&claims, signer).expect("signs");
    let key = DecodingKey::from_rsa_components(n, e).expect("jsonwebtoken reads n and e");
    let data = jsonwebtoken::decode::<Value>(&token, &key, &validation(signer)).expect("verifies with (n, e)");
    assert_eq!(data.claims, claims);

    // And a different key's (n, e) does not verify it.
    let other = RsaSigner::generate().expect("second key");
    let other_key = DecodingKey::from_rsa_components(other.jwk().n.as_deref().expect("n"), "AQAB").expect("key");
    assert!(jsonwebtoken::decode::<Value>(&token, &other_key, &validation(signer)).is_err());
}

#[test]
fn every_kid_is_the_rfc7638_thumbprint_of_its_jwk() {
    for signer in [rsa(), es256(), eddsa()] {
        let jwk = signer.jwk();
        assert_eq!(jwk.kid, thumbprint_of(jwk), "{:?}", signer);
        assert_eq!(signer.kid(), jwk.kid);
        let published = serde_json::to_value(jwk).expect("JWK serialises");
        for private in ["d", "p", "q", "dp", "dq", "qi"] {
            assert!(published.get(private).is_none(), "{private} published for {:?}", signer);
        }
    }
}

#[test]
fn rfc7638_reference_thumbprint() {
    // RFC 7638 section 3.1, computed by this file's independent implementation.
    let n = "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw";
    let expected = "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs";
    assert_eq!(
        independent_thumbprint(&[("e", "AQAB"), ("kty", "RSA"), ("n", n)]),
        expected
    );
    assert_eq!(rsa_thumbprint(n, "AQAB"), expected);
}
