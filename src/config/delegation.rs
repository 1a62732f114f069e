//! `delegation`: RFC 8693 section 4.1 delegation chains. When the verified incoming token (jwt_authn's payload, or
//! the introspection result) already carries `act`, the minted `act` nests it (`{"sub": <this actor>, "act":
//! <incoming act>}`); when it carries `may_act` and this gateway's actor is not the one it allows, the request is
//! refused (403). Both are on by default and can be switched off.

use serde::Deserialize;

/// `delegation` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawDelegation {
    nest_act: Option<bool>,
    enforce_may_act: Option<bool>,
}

/// Delegation settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Delegation {
    /// Nest the incoming token's `act` in the minted one.
    pub nest_act: bool,
    /// Refuse a request whose incoming token's `may_act` does not allow this gateway's actor.
    pub enforce_may_act: bool,
}

impl Default for Delegation {
    fn default() -> Self {
        Delegation {
            nest_act: true,
            enforce_may_act: true,
        }
    }
}

impl Delegation {
    pub(crate) fn from_raw(raw: Option<RawDelegation>) -> Delegation {
        let raw = raw.unwrap_or_default();
        Delegation {
            nest_act: raw.nest_act.unwrap_or(true),
            enforce_may_act: raw.enforce_may_act.unwrap_or(true),
        }
    }
}
