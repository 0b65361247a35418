//! The request target phase, before route lookup: which host and which path the request is
//! for, decided once, so the route, the policy and the backend all act on the same ones.
//!
//! - The host is the target's authority when the request has one (HTTP/1.1 absolute form,
//!   HTTP/2 `:authority`), otherwise the `Host` header. A `Host` header that names another
//!   host than the authority is refused (RFC 9112 §3.2.2: the authority wins, so a route
//!   chosen by it must not be served to a backend told otherwise; RFC 9113 §8.3.1 calls the
//!   HTTP/2 case malformed). Two `Host` headers are refused too: which one the backend reads
//!   is anyone's guess.
//! - The path is made canonical ([`crate::path`]) and the request's URI rewritten to it, with
//!   the query untouched: policy (`X-Forwarded-Uri`, the token's query parameter) and the
//!   backend request read `parts.uri` from here on.

use std::sync::Arc;

use http::Uri;
use http::header;
use http::request::Parts;
use http::uri::{Authority, PathAndQuery};

use crate::error::ProxyError;
use crate::handshake::HandshakeError;
use crate::path::{self, PathError, PathRules};
use crate::route::{Route, RouteTable};

/// Why a request has no single host or path (each a 400; see [`ProxyError`]'s mapping).
#[derive(Debug)]
pub enum TargetError {
    Path(PathError),
    /// `Host` names another host than the target's authority.
    HostMismatch,
    /// More than one `Host` header.
    DuplicateHost,
    /// A `Host` header that is not `host[:port]`, or userinfo in the target's authority.
    HostInvalid(&'static str),
}

impl From<PathError> for TargetError {
    fn from(e: PathError) -> TargetError {
        TargetError::Path(e)
    }
}

impl From<TargetError> for ProxyError {
    fn from(e: TargetError) -> ProxyError {
        match e {
            TargetError::Path(e) => ProxyError::Path(e),
            TargetError::HostMismatch => ProxyError::HostMismatch,
            TargetError::DuplicateHost => HandshakeError::DuplicateHost.into(),
            TargetError::HostInvalid(why) => ProxyError::HostInvalid(why),
        }
    }
}

/// Decides the request's host and canonical path, rewrites `parts.uri` to that path, and
/// finds the route. `scheme` is the listener's (`http` or `https`), for the `Host` header's
/// default port.
pub fn route<'t>(
    routes: &'t RouteTable,
    parts: &mut Parts,
    rules: &PathRules,
    scheme: &str,
) -> Result<Option<&'t Arc<Route>>, TargetError> {
    // Authority form (`GET admin HTTP/1.1`: an authority and no scheme) is CONNECT's alone
    // (RFC 9112 §3.2.3). Refused as no path before the host is compared: "admin" read as
    // an authority would be refused as a Host mismatch, which is not what is wrong.
    if parts.uri.scheme().is_none()
        && parts.uri.authority().is_some()
        && parts.method != http::Method::CONNECT
    {
        return Err(PathError::NotAPath.into());
    }
    let host = request_host(parts, scheme)?;
    let canonical = path::canonicalize(parts.uri.path(), rules)?;
    if canonical.path != parts.uri.path() {
        let pq = match parts.uri.query() {
            Some(q) => format!("{}?{q}", canonical.path),
            None => canonical.path.clone(),
        };
        let mut uri = std::mem::take(&mut parts.uri).into_parts();
        uri.path_and_query = Some(PathAndQuery::try_from(pq).map_err(|_| PathError::NotAPath)?);
        parts.uri = Uri::from_parts(uri).map_err(|_| PathError::NotAPath)?;
    }
    Ok(routes.find_canonical(host.as_deref(), &canonical)?)
}

/// The host the request is for: the target's authority if it has one, else `Host`.
fn request_host(parts: &Parts, scheme: &str) -> Result<Option<String>, TargetError> {
    let mut hosts = parts.headers.get_all(header::HOST).iter();
    let host = hosts.next();
    if hosts.next().is_some() {
        return Err(TargetError::DuplicateHost);
    }
    // A Host with bytes past ASCII names no host (an IDN goes as its A-label): invalid, not
    // absent (it was refused as a missing Host, and recorded `missing_host`).
    let host = match host.map(|h| h.to_str()) {
        Some(Err(_)) => {
            return Err(TargetError::HostInvalid(
                "Host header is not a host name or address with an optional port",
            ));
        }
        Some(Ok(h)) => Some(h.trim()),
        None => None,
    };
    // Empty is HTTP/1.1's "no authority" (the handshake's validation asks for a host).
    if let Some(h) = host.filter(|h| !h.is_empty())
        && (h.contains('@')
            || !h
                .parse::<Authority>()
                .is_ok_and(|a| port_is_digits(&a) && is_host_name(a.host())))
    {
        return Err(TargetError::HostInvalid(
            "Host header is not a host name or address with an optional port",
        ));
    }
    let Some(authority) = parts.uri.authority() else {
        return Ok(host.map(str::to_string));
    };
    // RFC 9110 §4.2.4: userinfo in an http(s) URI is refused, as a likely attempt to
    // obscure the host (`http://trusted.example@evil.example/`); RFC 9113 §8.3.1 makes it
    // malformed in `:authority`.
    if authority.as_str().contains('@') {
        return Err(TargetError::HostInvalid(
            "userinfo (user@) in the request target's authority is not allowed",
        ));
    }
    if !port_is_digits(authority) {
        return Err(TargetError::HostInvalid(
            "the request target's authority has a port that is not a number up to 65535",
        ));
    }
    if !is_host_name(authority.host()) {
        return Err(TargetError::HostInvalid(
            "the request target's authority is not a host name or address",
        ));
    }
    if let Some(host) = host {
        // The default port is the target's scheme's, or the connection's for origin form.
        let scheme = parts.uri.scheme_str().unwrap_or(scheme);
        if !same_authority(authority, host, default_port(scheme)) {
            return Err(TargetError::HostMismatch);
        }
    }
    Ok(Some(authority.host().to_string()))
}

/// Whether an authority's port, if it has one, is digits only (RFC 3986 §3.2.3: `port =
/// *DIGIT`) and at most 65535. `Authority` takes any port text, and Rust's integer parse
/// takes a leading `+`: `host:+80` passed as a port, while the routes' host matching (which
/// strips digits only) saw a host `host:+80`, matched no host-specific route and fell
/// through to a route without a host, its policy skipped.
fn port_is_digits(a: &Authority) -> bool {
    match a.as_str()[a.host().len()..].strip_prefix(':') {
        None => true,
        Some(port) => {
            port.is_empty()
                || (port.bytes().all(|b| b.is_ascii_digit()) && port.parse::<u16>().is_ok())
        }
    }
}

/// Whether `host` (an authority's host, without its port) is a DNS name (letters, digits,
/// `-`, `_` and dots) or an IP address: what a route's `host` can name. RFC 3986's reg-name
/// also allows `!$&'()*+,;=~` and %-escapes, which no DNS name has: `admin.example,x` routed
/// as a host no route names (past a host route's policy, to a route without a host), and
/// reached the backend in `X-Forwarded-Host`, which frameworks split at commas and read as
/// `admin.example` (found by black-box testing of hostile clients).
fn is_host_name(host: &str) -> bool {
    match host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        Some(literal) => literal.parse::<std::net::Ipv6Addr>().is_ok(),
        None => labels_ok(host),
    }
}

/// Letters, digits, `-` and `_` in labels that are not empty, but for one trailing dot (the
/// root's): `admin.example.com..` passed, routed past the `admin.example.com` route (which
/// strips one dot) to a route without a host, and reached the backend in its `Host`.
pub(crate) fn labels_ok(host: &str) -> bool {
    let name = host.strip_suffix('.').unwrap_or(host);
    name.split('.').all(|label| {
        !label.is_empty()
            && (label.bytes()).all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_'))
    })
}

fn default_port(scheme: &str) -> u16 {
    if scheme.eq_ignore_ascii_case("https") || scheme.eq_ignore_ascii_case("wss") {
        443
    } else {
        80
    }
}

/// Whether `Host: host` names `authority`: host names compared without case or a trailing
/// dot, a missing port read as the scheme's default (RFC 9112 §3.2; userinfo was refused
/// before).
fn same_authority(authority: &Authority, host: &str, default_port: u16) -> bool {
    let Ok(host) = host.parse::<Authority>() else {
        return false;
    };
    let name = |a: &Authority| {
        let h = a.host();
        h.strip_suffix('.').unwrap_or(h).to_ascii_lowercase()
    };
    name(authority) == name(&host)
        && authority.port_u16().unwrap_or(default_port) == host.port_u16().unwrap_or(default_port)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::from_toml_str;
    use crate::relay::Control;

    fn table() -> RouteTable {
        let cfg = from_toml_str(
            "[[listener]]\nlisten = \"127.0.0.1:0\"\n\
             [[route]]\nname = \"admin\"\nhost = \"admin.example\"\npath = \"/\"\nbackends = [\"ws://127.0.0.1:1\"]\n\
             [[route]]\nname = \"public\"\npath = \"/\"\nbackends = [\"ws://127.0.0.1:1\"]\n",
        )
        .unwrap();
        RouteTable::new(&cfg.routes, &Control::default())
    }

    fn parts(uri: &str, hosts: &[&str]) -> Parts {
        let mut b = http::Request::get(uri);
        for h in hosts {
            b = b.header("host", *h);
        }
        b.body(()).unwrap().into_parts().0
    }

    fn routed(uri: &str, hosts: &[&str]) -> Result<Option<String>, String> {
        let t = table();
        let mut p = parts(uri, hosts);
        route(&t, &mut p, &PathRules::default(), "http")
            .map(|r| r.map(|r| r.config.name.clone()))
            .map_err(|e| ProxyError::from(e).outcome().as_str().to_string())
    }

    #[test]
    fn absolute_form_routes_by_its_authority_and_refuses_another_host() {
        assert_eq!(
            routed("http://admin.example/", &["admin.example"]),
            Ok(Some("admin".into()))
        );
        assert_eq!(
            routed("http://admin.example/", &["public.example"]),
            Err("host_mismatch".into())
        );
        // Same host: case, trailing dot, default port.
        assert_eq!(
            routed("http://Admin.Example./", &["admin.example:80"]),
            Ok(Some("admin".into()))
        );
        assert_eq!(
            routed("https://admin.example/", &["admin.example:443"]),
            Ok(Some("admin".into()))
        );
        assert_eq!(
            routed("https://admin.example/", &["admin.example:80"]),
            Err("host_mismatch".into())
        );
        // Without a Host header, the authority decides (handshake validation then asks for
        // the Host header HTTP/1.1 requires).
        assert_eq!(
            routed("http://admin.example/", &[]),
            Ok(Some("admin".into()))
        );
        assert_eq!(routed("/", &["ADMIN.example."]), Ok(Some("admin".into())));
    }

    #[test]
    fn a_host_that_is_not_a_host_and_userinfo_in_the_target_are_refused() {
        for bad in [
            "user@admin.example",
            "admin.example/x",
            "a b",
            "admin.example:x",
            // A port is digits (RFC 3986 §3.2.3): `+80` parses as a number, but the host
            // routes (which strip digits only) would see `admin.example:+80`, no host of
            // theirs, and the request fall through to a route without a host.
            "admin.example:+80",
            "admin.example:-0",
            "admin.example:65536",
            "admin.example:80:80",
            // Not a DNS name or an address: `admin.example,x` routed as a host no route
            // names, and reached the backend in `X-Forwarded-Host`, read up to the comma.
            "admin.example,x",
            "admin.example;x",
            "admin.example&x=1",
            "a!b.example",
            "a=b",
            "%61dmin.example",
            "admin.example~",
            "[::1",
            "[v1.x]",
            "[not-an-address]:80",
            // Empty labels: `admin.example..` went past the `admin.example` route.
            "admin.example..",
            "admin..example",
            ".admin.example",
            ".",
        ] {
            assert_eq!(routed("/", &[bad]), Err("host_invalid".into()), "{bad}");
        }
        for bad in [
            "http://admin.example:+80/",
            "http://admin.example:99999/",
            "http://admin.example,x/",
            "http://a!b.example/",
        ] {
            assert_eq!(routed(bad, &[]), Err("host_invalid".into()), "{bad}");
        }
        assert_eq!(
            routed("http://public.example@admin.example/", &["admin.example"]),
            Err("host_invalid".into())
        );
        assert_eq!(
            routed("http://public.example@admin.example/", &[]),
            Err("host_invalid".into())
        );
        // Bytes past ASCII (UTF-8, Latin-1): a Host that names no host, not a missing one.
        for bad in [&b"\xc3\xa9.example"[..], b"exa\xffmple"] {
            let t = table();
            let mut p = parts("/", &[]);
            p.headers
                .insert("host", http::HeaderValue::from_bytes(bad).unwrap());
            let outcome = route(&t, &mut p, &PathRules::default(), "http")
                .map(|_| ())
                .map_err(|e| ProxyError::from(e).outcome().as_str());
            assert_eq!(outcome, Err("host_invalid"), "{bad:?}");
        }
        // Addresses and ports are hosts.
        for good in [
            "[::1]:8080",
            "[2001:db8::1]",
            "127.0.0.1",
            "admin.example:443",
            "ADMIN.example.",
            "my_host-1.internal",
            "localhost:",
        ] {
            assert!(routed("/", &[good]).is_ok(), "{good}");
        }
    }

    #[test]
    fn authority_form_is_no_path() {
        // With a Host that does not match it, too: the target is what is wrong.
        for host in ["localhost", "admin"] {
            assert_eq!(
                routed("admin", &[host]),
                Err("path_invalid".into()),
                "{host}"
            );
        }
        assert_eq!(routed("admin:80", &[]), Err("path_invalid".into()));
    }

    #[test]
    fn two_host_headers_are_more_than_one() {
        assert_eq!(
            routed("/", &["admin.example", "public.example"]),
            Err("duplicate_host".into())
        );
        assert_eq!(
            HandshakeError::DuplicateHost.to_string(),
            "more than one Host header"
        );
    }

    #[test]
    fn the_uri_becomes_canonical_and_keeps_its_query() {
        let t = table();
        let mut p = parts("/x/../a//b%61?q=%2F..&x", &["h"]);
        route(&t, &mut p, &PathRules::default(), "http").unwrap();
        assert_eq!(p.uri, "/a/ba?q=%2F..&x");
        let mut p = parts("http://h/x/../a", &["h"]);
        route(&t, &mut p, &PathRules::default(), "http").unwrap();
        assert_eq!(p.uri.to_string(), "http://h/a");
        assert_eq!(routed("/a/../../b", &["h"]), Err("path_invalid".into()));
        assert_eq!(routed("*", &["h"]), Err("path_invalid".into()));
    }
}
