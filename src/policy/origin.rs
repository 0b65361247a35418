//! Origin allow-list against cross-site WebSocket hijacking.
//!
//! Browsers send `Origin` on every WebSocket handshake and scripts cannot change it, so it is
//! the one reliable signal of which site opened the socket. Cookies ride along on cross-site
//! WebSocket handshakes, so without this check any page a user visits can open an
//! authenticated socket in the user's name.

/// One entry of `origins = [...]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OriginRule {
    /// `https://chat.example.com` (default ports normalised away).
    Exact(Origin),
    /// `https://*.example.com`: the scheme, any subdomain of the suffix (not the suffix
    /// itself), and the port.
    Wildcard {
        scheme: String,
        suffix: String,
        port: u16,
    },
    /// The origin's host and port equal the request's `Host`.
    SameOrigin,
}

#[derive(Debug, Clone)]
pub struct OriginPolicy {
    /// `None`: any origin (only its presence is checked, see `allow_missing`).
    pub rules: Option<Vec<OriginRule>>,
    /// What to do with a handshake that has no `Origin` (a non-browser client).
    pub allow_missing: bool,
}

/// A serialised origin, split: lower-case scheme and host, explicit port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    pub scheme: String,
    pub host: String,
    pub port: u16,
}

fn default_port(scheme: &str) -> Option<u16> {
    match scheme {
        "http" | "ws" => Some(80),
        "https" | "wss" => Some(443),
        _ => None,
    }
}

/// Splits `host[:port]` (with `[v6]` literals); `None` on a malformed port.
fn split_host_port(s: &str) -> Option<(&str, Option<u16>)> {
    if let Some(rest) = s.strip_prefix('[') {
        let (host, after) = rest.split_once(']')?;
        return match after {
            "" => Some((host, None)),
            p => Some((host, Some(port(p.strip_prefix(':')?)?))),
        };
    }
    match s.rsplit_once(':') {
        Some((h, p)) => Some((h, Some(port(p)?))),
        None => Some((s, None)),
    }
}

/// A port as URLs write it: digits only (`u16::from_str` takes `+443` too).
fn port(p: &str) -> Option<u16> {
    if p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    p.parse().ok()
}

impl Origin {
    /// Parses an `Origin` header value (RFC 6454 §7): `scheme://host[:port]`, nothing after,
    /// as a browser serialises it: a host of labels of letters, digits, `-` and `_`, none
    /// empty (a non-ASCII name goes as punycode), or an IP literal, and a port without sign or leading zero.
    /// Anything else no browser sends, and it must not match a wildcard by its tail:
    /// `https://evil.com\.example.com` is host `evil.com` to a WHATWG URL parser.
    pub fn parse(s: &str) -> Option<Origin> {
        let (scheme, rest) = s.split_once("://")?;
        let scheme = scheme.to_ascii_lowercase();
        if scheme.is_empty()
            || !scheme
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.'))
            || rest.is_empty()
            || rest.contains(['/', '?', '#', '@'])
        {
            return None;
        }
        let (host, port) = split_host_port(rest)?;
        let bracketed = rest.starts_with('[');
        let host_ok = if bracketed {
            host.parse::<std::net::Ipv6Addr>().is_ok()
        } else {
            crate::target::labels_ok(host)
        };
        let port_text = rest.rsplit_once(':').map(|(_, p)| p);
        if !host_ok || port.is_some() && port_text.is_some_and(|p| p.starts_with('0')) {
            return None;
        }
        let port = port.or_else(|| default_port(&scheme))?;
        Some(Origin {
            host: host.to_ascii_lowercase(),
            scheme,
            port,
        })
    }
}

impl OriginRule {
    /// Parses one config entry.
    pub fn parse(s: &str) -> Result<OriginRule, String> {
        if s == "same-origin" {
            return Ok(OriginRule::SameOrigin);
        }
        let bad = || {
            format!(
                "{s:?} is not an origin: write \"https://app.example.com\", \"https://*.example.com\" or \"same-origin\" (scheme and host, no path)"
            )
        };
        // Entries that parse but that no browser's Origin can ever equal: refused here, not
        // found out when every client gets 403.
        if let Some((scheme, rest)) = s.split_once("://") {
            if matches!(scheme.to_ascii_lowercase().as_str(), "ws" | "wss") {
                return Err(format!(
                    "{s:?} never matches: a page's Origin is its own scheme, http:// or https://, \
                     not the WebSocket's ws:// or wss://"
                ));
            }
            if !rest.is_ascii() {
                return Err(format!(
                    "{s:?} never matches: browsers send a non-ASCII host in its ASCII form \
                     (punycode, e.g. xn--bcher-kva.example for bücher.example): write that"
                ));
            }
        }
        if let Some((scheme, rest)) = s.split_once("://")
            && let Some(wild) = rest.strip_prefix("*.")
        {
            let o = Origin::parse(&format!("{scheme}://{wild}")).ok_or_else(bad)?;
            if o.host.contains('*') {
                return Err(bad());
            }
            return Ok(OriginRule::Wildcard {
                scheme: o.scheme,
                suffix: o.host,
                port: o.port,
            });
        }
        let o = Origin::parse(s).ok_or_else(bad)?;
        if o.host.contains('*') {
            return Err(bad());
        }
        Ok(OriginRule::Exact(o))
    }

    /// `request`: the request's host (`Host`, or `:authority`) and scheme (`http` or
    /// `https`, as the client connected or a trusted proxy says).
    fn matches(&self, origin: &Origin, request: Option<(&str, &str)>) -> bool {
        match self {
            OriginRule::Exact(o) => o == origin,
            OriginRule::Wildcard {
                scheme,
                suffix,
                port,
            } => {
                *scheme == origin.scheme
                    && *port == origin.port
                    && origin
                        .host
                        .strip_suffix(suffix.as_str())
                        .is_some_and(|sub| sub.len() > 1 && sub.ends_with('.'))
            }
            OriginRule::SameOrigin => {
                let Some((scheme, (h, p))) =
                    request.and_then(|(host, scheme)| Some((scheme, split_host_port(host)?)))
                else {
                    return false;
                };
                // RFC 6454 §5: scheme, host and port. A page at https://example.com opens
                // wss://example.com (`Host: example.com`, port 443 by the connection's
                // scheme); one at http://example.com, or http://example.com:443, is another
                // origin, which a script injected there must not borrow.
                // (A trusted proxy may say `ws`/`wss`: the page's scheme is `http`/`https`.)
                let scheme = match scheme.to_ascii_lowercase().as_str() {
                    "wss" | "https" => "https",
                    _ => "http",
                };
                origin.scheme.eq_ignore_ascii_case(scheme)
                    && h.eq_ignore_ascii_case(&origin.host)
                    && p.or_else(|| default_port(scheme)) == Some(origin.port)
            }
        }
    }
}

impl OriginPolicy {
    /// `Ok` to proceed; `Err(reason)` for a 403. `request`: the request's host and scheme
    /// (for `same-origin`).
    pub fn check(&self, origin: Option<&str>, request: Option<(&str, &str)>) -> Result<(), String> {
        let Some(raw) = origin else {
            return if self.allow_missing {
                Ok(())
            } else {
                Err("no Origin header, and this route refuses handshakes without one".into())
            };
        };
        let Some(rules) = &self.rules else {
            // Any origin (`missing_origin = "refuse"` alone): one there must be, whatever it
            // is, `null` (sandboxed frames, file: pages) included.
            return Ok(());
        };
        let Some(parsed) = Origin::parse(raw.trim()) else {
            // `null` and anything malformed match no entry.
            return Err(format!("origin {raw:?} is not allowed"));
        };
        if rules.iter().any(|r| r.matches(&parsed, request)) {
            Ok(())
        } else {
            Err(format!("origin {raw:?} is not allowed"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(rules: &[&str], allow_missing: bool) -> OriginPolicy {
        OriginPolicy {
            rules: Some(
                rules
                    .iter()
                    .map(|r| OriginRule::parse(r).unwrap())
                    .collect(),
            ),
            allow_missing,
        }
    }

    #[test]
    fn exact_wildcard_same_origin() {
        let p = policy(&["https://app.example.com", "https://*.example.org"], true);
        assert!(p.check(Some("https://app.example.com"), None).is_ok());
        assert!(p.check(Some("https://APP.example.com:443"), None).is_ok());
        assert!(p.check(Some("http://app.example.com"), None).is_err());
        assert!(p.check(Some("https://app.example.com:8443"), None).is_err());
        assert!(p.check(Some("https://a.b.example.org"), None).is_ok());
        assert!(p.check(Some("https://example.org"), None).is_err());
        assert!(p.check(Some("https://evilexample.org"), None).is_err());
        assert!(p.check(Some("null"), None).is_err());
        assert!(p.check(None, None).is_ok());

        let same = policy(&["same-origin"], false);
        let https = |host| Some((host, "https"));
        let http = |host| Some((host, "http"));
        assert!(
            same.check(Some("https://chat.test"), https("chat.test"))
                .is_ok()
        );
        assert!(
            same.check(Some("http://chat.test:8080"), http("chat.test:8080"))
                .is_ok()
        );
        assert!(
            same.check(Some("http://chat.test:8080"), http("chat.test:9090"))
                .is_err()
        );
        assert!(
            same.check(Some("https://evil.test"), https("chat.test"))
                .is_err()
        );
        assert!(same.check(Some("http://[::1]:80"), http("[::1]")).is_ok());
        assert!(same.check(None, https("chat.test")).is_err());
        // RFC 6454: the scheme is part of the origin, and a Host without a port means the
        // request's scheme's default, not the Origin's.
        assert!(
            same.check(Some("http://chat.test"), https("chat.test"))
                .is_err()
        );
        assert!(
            same.check(Some("http://chat.test:443"), https("chat.test"))
                .is_err()
        );
        assert!(
            same.check(Some("http://chat.test"), http("chat.test:80"))
                .is_ok()
        );
        assert!(
            same.check(Some("https://chat.test"), http("chat.test"))
                .is_err()
        );
        assert!(
            same.check(Some("https://chat.test"), Some(("chat.test", "wss")))
                .is_ok()
        );

        // `missing_origin = "refuse"` alone: any origin, but one there must be.
        let any = OriginPolicy {
            rules: None,
            allow_missing: false,
        };
        assert!(any.check(Some("https://anything.test"), None).is_ok());
        assert!(any.check(None, None).is_err());
        // An Origin is there, if opaque: a sandboxed frame's, a file: page's.
        assert!(any.check(Some("null"), None).is_ok());
        assert!(any.check(Some("file://"), None).is_ok());
    }

    /// Origins no browser serialises match nothing, a wildcard by its tail least of all
    /// (`https://evil.com\.example.com` is host `evil.com` to a WHATWG URL parser).
    #[test]
    fn malformed_origins_match_nothing() {
        let p = policy(&["https://*.example.com", "https://app.test:8443"], true);
        for bad in [
            "https://evil.com\\.example.com",
            "https://evil.com%2f.example.com",
            "https://*.example.com",
            "https://b\u{fc}cher.example.com",
            "https://a b.example.com",
            "https://evil.com\".example.com",
            "https://x.example.com:+443",
            "https://x.example.com:0443",
            "https://app.test:08443",
            "https://app.test:",
            "https://[::1.example.com",
            "ht tps://x.example.com",
            // Empty labels: no browser serialises them.
            "https://a..example.com",
            "https://.x.example.com",
            "https://x.example.com..",
            "https://",
        ] {
            assert!(p.check(Some(bad), None).is_err(), "{bad}");
        }
        for good in [
            "https://x.example.com",
            "https://a-b.c_d.example.com",
            "https://X.EXAMPLE.COM:443",
            "https://app.test:8443",
        ] {
            assert!(p.check(Some(good), None).is_ok(), "{good}");
        }
        let v6 = policy(&["http://[::1]:8080"], true);
        assert!(v6.check(Some("http://[::1]:8080"), None).is_ok());
        assert!(v6.check(Some("http://[::1]:08080"), None).is_err());
    }

    #[test]
    fn rules_parse_or_say_why() {
        assert!(OriginRule::parse("https://a.test/path").is_err());
        assert!(OriginRule::parse("a.test").is_err());
        assert!(OriginRule::parse("https://*").is_err());
        assert!(OriginRule::parse("https://a.*.test").is_err());
        // Entries no browser's Origin can equal.
        for never in ["wss://a.test", "ws://a.test:8080", "https://bücher.example"] {
            let e = OriginRule::parse(never).unwrap_err();
            assert!(e.contains("never matches"), "{never}: {e}");
        }
        assert!(OriginRule::parse("https://xn--bcher-kva.example").is_ok());
        assert_eq!(
            OriginRule::parse("https://*.a.test:8443").unwrap(),
            OriginRule::Wildcard {
                scheme: "https".into(),
                suffix: "a.test".into(),
                port: 8443
            }
        );
    }
}
