//! base64url without padding (RFC 7515 section 2), the encoding of every JOSE part.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;

/// base64url, no padding.
pub fn encode(bytes: impl AsRef<[u8]>) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}
