//! The issuer URL: configured (`issuer`), or derived from each request when unset.

/// The issuer URL, split so that the well-known paths can be served under its path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Issuer {
    /// `scheme://authority[/path]`, without a trailing slash.
    pub url: String,
    /// The path part, `""` or `/tenant` (no trailing slash).
    pub path: String,
}

impl Issuer {
    /// Validates an issuer URL: `http(s)://authority[/path]`, no query, fragment, userinfo or whitespace.
    pub fn parse(value: &str) -> Result<Issuer, String> {
        let rest = value
            .strip_prefix("https://")
            .or_else(|| value.strip_prefix("http://"))
            .ok_or("must start with https:// (or http:// for local testing)")?;
        if value.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err("must not contain whitespace or control characters".into());
        }
        if value.contains(['?', '#']) {
            return Err("must not contain a query or fragment (OIDC issuer rules)".into());
        }
        let (authority, path) = match rest.find('/') {
            Some(i) => rest.split_at(i),
            None => (rest, ""),
        };
        if authority.is_empty() || !is_valid_authority(authority) {
            return Err("must have a host (and optional port) after the scheme".into());
        }
        let path = path.trim_end_matches('/');
        if path.contains("//") || path.split('/').any(|s| s == "." || s == "..") {
            return Err("path must not contain empty, `.` or `..` segments".into());
        }
        let scheme_len = value.len() - rest.len();
        Ok(Issuer {
            url: format!("{}{}{}", &value[..scheme_len], authority, path),
            path: path.to_string(),
        })
    }

    /// The issuer for a request when none is configured: the request's own `scheme://authority`.
    pub fn from_request(scheme: &str, authority: &str) -> Option<Issuer> {
        let scheme = match scheme {
            "http" | "https" => scheme,
            _ => return None,
        };
        if !is_valid_authority(authority) {
            return None;
        }
        Some(Issuer {
            url: format!("{scheme}://{authority}"),
            path: String::new(),
        })
    }
}

/// host[:port] with the characters of a registered name, IPv4 or bracketed IPv6 (RFC 3986, no userinfo).
fn is_valid_authority(authority: &str) -> bool {
    !authority.is_empty()
        && authority.len() <= 255
        && authority
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_' | b':' | b'[' | b']'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issuer_with_path_keeps_the_path() {
        let i = Issuer::parse("https://gw.example.com/tenant-a/").unwrap();
        assert_eq!(i.url, "https://gw.example.com/tenant-a");
        assert_eq!(i.path, "/tenant-a");
    }
}
