//! Origin allowlists: `admission.origins` for WebSocket upgrades and
//! `http.cors_origins` for browsers calling JSON-RPC over HTTP.

/// Is `origin` allowed by `list`? Entries: `*`, exact origins
/// (`https://app.example.com`), scheme-less ones that match any scheme
/// (`example.com`, `localhost:3000`), and `*.example.com` (any scheme) or
/// `https://*.example.com` for any subdomain.
pub fn origin_allowed(list: &[String], origin: &[u8]) -> bool {
    let Ok(origin) = std::str::from_utf8(origin) else {
        return false;
    };
    let (scheme, authority) = origin.split_once("://").unwrap_or(("", origin));
    let host = authority.split(':').next().unwrap_or(authority);
    list.iter().any(|entry| {
        if entry == "*" || entry.eq_ignore_ascii_case(origin) {
            return true;
        }
        let (escheme, epattern) = match entry.split_once("://") {
            Some((s, p)) => (Some(s), p),
            None => (None, entry.as_str()),
        };
        if escheme.is_some_and(|s| !s.eq_ignore_ascii_case(scheme)) {
            return false;
        }
        match epattern.strip_prefix("*.") {
            Some(suffix) => {
                host.len() > suffix.len() + 1
                    && host.ends_with(suffix)
                    && host.as_bytes()[host.len() - suffix.len() - 1] == b'.'
            }
            None => epattern.eq_ignore_ascii_case(authority),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_match_exactly_or_by_subdomain_wildcard() {
        let list = vec![
            "https://polkadot.js.org".to_string(),
            "*.example.com".to_string(),
        ];
        assert!(origin_allowed(&list, b"https://polkadot.js.org"));
        assert!(origin_allowed(&list, b"https://app.example.com"));
        assert!(origin_allowed(&list, b"http://a.b.example.com:3000"));
        assert!(!origin_allowed(&list, b"https://example.com"));
        assert!(!origin_allowed(&list, b"https://evilexample.com"));
        assert!(!origin_allowed(&list, b"https://polkadot.js.org.evil.net"));
        assert!(origin_allowed(&["*".to_string()], b"https://anything"));
        let agnostic = vec![
            "example.com".to_string(),
            "https://*.secure.com".to_string(),
        ];
        assert!(origin_allowed(&agnostic, b"http://example.com"));
        assert!(origin_allowed(&agnostic, b"https://example.com"));
        assert!(!origin_allowed(&agnostic, b"https://api.example.com"));
        assert!(origin_allowed(&agnostic, b"https://a.secure.com"));
        assert!(!origin_allowed(&agnostic, b"http://a.secure.com"));
    }
}
