//! Cookies: find one by name, and remove named ones before the backend.
//!
//! Parsed leniently as browsers send them (RFC 6265 §5.4): `name=value` pairs separated by
//! `;`, possibly across several `Cookie` headers (HTTP/2 splits them). Values are passed on
//! byte for byte.

use http::HeaderMap;
use http::header::{COOKIE, HeaderValue};

/// Every `(name, value)` pair of the request's `Cookie` headers, in order.
pub fn pairs(headers: &HeaderMap) -> impl Iterator<Item = (&str, &str)> {
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| {
            let pair = pair.trim();
            let (name, value) = pair.split_once('=')?;
            let value = value.trim();
            // A quoted value's quotes are not part of it (RFC 6265 §4.1.1 cookie-value).
            let value = value
                .strip_prefix('"')
                .and_then(|v| v.strip_suffix('"'))
                .unwrap_or(value);
            Some((name.trim(), value))
        })
}

/// Every `Cookie` field of the request as one, joined with "; " (RFC 9113 §8.2.3: how an
/// HTTP/2 client's crumbs go to an HTTP/1.1 hop); `None` without any.
pub fn joined(headers: &HeaderMap) -> Option<HeaderValue> {
    let mut fields = headers.get_all(COOKIE).iter();
    let first = fields.next()?;
    let mut rest = fields.peekable();
    if rest.peek().is_none() {
        return Some(first.clone());
    }
    let mut bytes = first.as_bytes().to_vec();
    for v in rest {
        bytes.extend_from_slice(b"; ");
        bytes.extend_from_slice(v.as_bytes());
    }
    HeaderValue::from_bytes(&bytes).ok()
}

/// The first cookie of this name.
pub fn get<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    pairs(headers).find(|(n, _)| *n == name).map(|(_, v)| v)
}

/// Removes the named cookies, keeping all others (and their order) in one `Cookie` header;
/// no header at all when none is left.
pub fn strip(headers: &mut HeaderMap, names: &[String]) {
    if names.is_empty() || !headers.contains_key(COOKIE) {
        return;
    }
    let kept: Vec<String> = headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .map(str::trim)
        .filter(|pair| !pair.is_empty())
        .filter(|pair| {
            let name = pair.split_once('=').map_or(*pair, |(n, _)| n).trim();
            // Some frameworks percent-decode cookie names: `%61ccess_token` is theirs too.
            let decoded = crate::query::decode(name, false);
            !names.iter().any(|s| s == name || *s == decoded)
        })
        .map(str::to_string)
        .collect();
    headers.remove(COOKIE);
    if !kept.is_empty()
        && let Ok(v) = HeaderValue::from_str(&kept.join("; "))
    {
        headers.insert(COOKIE, v);
    }
}

/// Adds `name=value` to the request's cookies (after the others, in the one `Cookie`
/// header [`strip`] leaves).
pub fn append(headers: &mut HeaderMap, name: &str, value: &str) {
    let pair = match headers.get(COOKIE).and_then(|v| v.to_str().ok()) {
        Some(others) if !others.is_empty() => format!("{others}; {name}={value}"),
        _ => format!("{name}={value}"),
    };
    if let Ok(v) = HeaderValue::from_str(&pair) {
        headers.insert(COOKIE, v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_and_strips_only_named() {
        let mut h = HeaderMap::new();
        h.append(
            COOKIE,
            HeaderValue::from_static("a=1; session=s3cr3t; b=\"2\""),
        );
        h.append(COOKIE, HeaderValue::from_static("c=3"));
        assert_eq!(get(&h, "session"), Some("s3cr3t"));
        assert_eq!(get(&h, "b"), Some("2"));
        assert_eq!(get(&h, "c"), Some("3"));
        assert_eq!(get(&h, "sess"), None);
        strip(&mut h, &["session".into()]);
        assert_eq!(h.get_all(COOKIE).iter().count(), 1);
        assert_eq!(h[COOKIE], "a=1; b=\"2\"; c=3");
        strip(&mut h, &["a".into(), "b".into(), "c".into()]);
        assert!(!h.contains_key(COOKIE));
    }
}
