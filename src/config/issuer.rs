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

/// Longest authority accepted (a DNS name is at most 253 characters; a port adds 6).
const MAX_AUTHORITY_LEN: usize = 255;

/// `host[:port]` (RFC 3986 section 3.2, no userinfo): a registered name (letters, digits, `.`, `-`, `_`), an IPv4
/// address or a bracketed IPv6 address, and an optional port 1-65535. `a:b:c`, an empty host or port, and
/// anything else are refused: the authority becomes the issuer every verifier compares.
pub fn is_valid_authority(authority: &str) -> bool {
    if authority.is_empty() || authority.len() > MAX_AUTHORITY_LEN {
        return false;
    }
    let (host_ok, port) = if let Some(rest) = authority.strip_prefix('[') {
        let Some((inside, after)) = rest.split_once(']') else {
            return false;
        };
        let ipv6 = !inside.is_empty()
            && inside.contains(':')
            && inside.bytes().all(|b| b.is_ascii_hexdigit() || b == b':' || b == b'.');
        let port = match after {
            "" => None,
            _ => match after.strip_prefix(':') {
                Some(port) => Some(port),
                None => return false,
            },
        };
        (ipv6, port)
    } else {
        let (host, port) = match authority.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        };
        let name = !host.is_empty()
            && host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'));
        (name, port)
    };
    let port_ok = match port {
        None => true,
        Some(port) => {
            (1..=5).contains(&port.len())
                && port.bytes().all(|b| b.is_ascii_digit())
                && port.parse::<u32>().is_ok_and(|p| (1..=65535).contains(&p))
        }
    };
    host_ok && port_ok
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn authorities() {
        for good in [
            "gw.example.com",
            "gw.example.com:8443",
            "127.0.0.1:10000",
            "[::1]",
            "[::1]:80",
            "a_b",
            "x:1",
        ] {
            assert!(is_valid_authority(good), "{good}");
        }
        for bad in [
            "", "a:b:c", "h:", ":80", "h:0", "h:65536", "h:99999", "h:8o", "[::1", "[]", "[::1]x", "[::1]:", "[g::1]",
            "user@h", "a b", "h/x", "h?x",
        ] {
            assert!(!is_valid_authority(bad), "{bad}");
        }
        assert!(!is_valid_authority(&"a".repeat(256)));
    }

    #[test]
    fn issuer_with_path_keeps_the_path() {
        let i = Issuer::parse("https://gw.example.com/tenant-a/").unwrap();
        assert_eq!(i.url, "https://gw.example.com/tenant-a");
        assert_eq!(i.path, "/tenant-a");
    }
}
