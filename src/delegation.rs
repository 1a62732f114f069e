//! Delegation chains (RFC 8693 section 4.1 and 4.4) between the verified incoming token and the minted one.
//!
//! The minted `act` names who acts for `sub` here: this gateway's actor (the team/org or calling service, else
//! `actor`). When the incoming token (jwt_authn's verified payload, or the introspection result) says that someone
//! already acts for the user (`act`), that chain is kept: the minted `act` is `{"sub": <this actor>, "act":
//! <incoming act>}`, the most recent actor outermost, as RFC 8693 nests them. A chain deeper than
//! [`MAX_DELEGATION_DEPTH`] is refused rather than cut (a cut would hide an actor).
//!
//! When the incoming token says who may act for its subject (`may_act`), this gateway's actor must be that one
//! (its `sub`), or the request is refused: the user did not delegate to it.

use serde_json::{json, Value};

use crate::config::defaults::MAX_DELEGATION_DEPTH;

/// Why a delegation chain is refused (fixed text, safe for logs and responses).
pub type DelegationError = &'static str;

/// The minted `act` for `actor`, nesting the incoming token's `act` when there is one.
pub fn minted_act(actor: &str, incoming_act: Option<&Value>) -> Result<Value, DelegationError> {
    let Some(incoming) = incoming_act else {
        return Ok(json!({ "sub": actor }));
    };
    let mut depth = 1; // this gateway's level
    let mut level = incoming;
    loop {
        depth += 1;
        if depth > MAX_DELEGATION_DEPTH {
            return Err("the incoming token's delegation chain (act) is deeper than the gateway allows");
        }
        let Value::Object(map) = level else {
            return Err("the incoming token's act claim is not an object");
        };
        let has_sub = matches!(map.get("sub"), Some(Value::String(sub)) if !sub.is_empty());
        if !has_sub {
            return Err("the incoming token's act claim has no sub");
        }
        match map.get("act") {
            None => break,
            Some(next) => level = next,
        }
    }
    Ok(json!({ "sub": actor, "act": incoming }))
}

/// Whether the incoming token's `may_act` (if any) allows `actor` to act for its subject.
pub fn check_may_act(may_act: Option<&Value>, actor: &str) -> Result<(), DelegationError> {
    let Some(may_act) = may_act else {
        return Ok(());
    };
    let Value::Object(map) = may_act else {
        return Err("the incoming token's may_act claim is not an object");
    };
    match map.get("sub").and_then(Value::as_str) {
        Some(allowed) if allowed == actor => Ok(()),
        Some(_) => Err("the incoming token's may_act does not allow this gateway's actor to act for its subject"),
        None => Err("the incoming token's may_act names no sub"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_an_incoming_act_the_actor_stands_alone() {
        assert_eq!(minted_act("gw", None).unwrap(), json!({"sub": "gw"}));
    }

    #[test]
    fn an_incoming_chain_is_nested_most_recent_outermost() {
        let incoming = json!({"sub": "agent-1", "act": {"sub": "agent-0"}, "client_id": "c"});
        assert_eq!(
            minted_act("gw", Some(&incoming)).unwrap(),
            json!({"sub": "gw", "act": {"sub": "agent-1", "act": {"sub": "agent-0"}, "client_id": "c"}})
        );
    }

    #[test]
    fn depth_is_bounded_and_bad_shapes_are_refused() {
        let mut chain = json!({"sub": "a0"});
        for i in 1..MAX_DELEGATION_DEPTH - 1 {
            chain = json!({"sub": format!("a{i}"), "act": chain});
        }
        // MAX - 1 incoming levels + this gateway: exactly the limit.
        let minted = minted_act("gw", Some(&chain)).unwrap();
        let mut depth = 0;
        let mut level = &minted;
        while let Some(next) = level.get("act") {
            depth += 1;
            level = next;
        }
        assert_eq!(depth + 1, MAX_DELEGATION_DEPTH);
        let deeper = json!({"sub": "top", "act": chain});
        assert!(minted_act("gw", Some(&deeper)).unwrap_err().contains("deeper"));
        for bad in [
            json!("agent"),
            json!({"act": {"sub": "x"}}),
            json!({"sub": ""}),
            json!({"sub": "a", "act": 5}),
        ] {
            assert!(minted_act("gw", Some(&bad)).is_err(), "{bad}");
        }
    }

    #[test]
    fn may_act_names_who_may_act() {
        assert!(check_may_act(None, "gw").is_ok());
        assert!(check_may_act(Some(&json!({"sub": "gw"})), "gw").is_ok());
        assert!(check_may_act(Some(&json!({"sub": "other"})), "gw").is_err());
        assert!(check_may_act(Some(&json!({"iss": "x"})), "gw").is_err());
        assert!(check_may_act(Some(&json!(["gw"])), "gw").is_err());
    }
}
