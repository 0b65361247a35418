//! Cookies: find one by name, and remove named ones before the backend.
//!
//! Parsed leniently as browsers send them (RFC 6265 §5.4): `name=value` pairs separated by
//! `;`, possibly across several `Cookie` headers (HTTP/2 splits them). Values are passed on
//! byte for byte.

use http::HeaderMap;
use http::header::{COOKIE, HeaderValue};

/// Every `(name, value)` pair of the request's `Cookie` headers, in order. Split as bytes,
/// as [`strip`] splits them: a field with UTF-8 in a value (`name=Zoë`) is read whole, and
/// only a pair that is not UTF-8 is skipped. White space around a pair, a name and a value
/// is ASCII white space (what [`strip`] trims).
pub fn pairs(headers: &HeaderMap) -> impl Iterator<Item = (&str, &str)> {
    headers
        .get_all(COOKIE)
        .iter()
        .flat_map(|v| v.as_bytes().split(|&b| b == b';'))
        .filter_map(|pair| {
            let pair = trim(std::str::from_utf8(pair).ok()?);
            let (name, value) = pair.split_once('=')?;
            let value = trim(value);
            // A quoted value's quotes are not part of it (RFC 6265 §4.1.1 cookie-value).
            let value = value
                .strip_prefix('"')
                .and_then(|v| v.strip_suffix('"'))
                .unwrap_or(value);
            Some((trim(name), value))
        })
}

/// `s` without ASCII white space at either end.
fn trim(s: &str) -> &str {
    s.trim_matches(|c: char| c.is_ascii_whitespace())
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

/// Removes the named cookies, keeping all others (and their order, byte for byte) in one
/// `Cookie` header; no header at all when none is left. A field that is not visible ASCII
/// (browsers send UTF-8 in values) is split as bytes, not dropped whole with its cookies.
/// A name matches as written, percent-decoded (some frameworks decode names: `%61ccess_token`
/// is theirs too), and as PHP files it (`access.token`, `access token`, `access[token` are
/// its `$_COOKIE["access_token"]`), as `strip_headers` takes `X_Debug` for `X-Debug`.
pub fn strip(headers: &mut HeaderMap, names: &[String]) {
    if names.is_empty() || !headers.contains_key(COOKIE) {
        return;
    }
    let kept: Vec<&[u8]> = headers
        .get_all(COOKIE)
        .iter()
        .flat_map(|v| v.as_bytes().split(|&b| b == b';'))
        .map(<[u8]>::trim_ascii)
        .filter(|pair| !pair.is_empty())
        .filter(|pair| {
            let (name, value) = match pair.iter().position(|&b| b == b'=') {
                Some(i) => (&pair[..i], &pair[i + 1..]),
                None => (&pair[..], &b""[..]),
            };
            let value = String::from_utf8_lossy(value);
            let value = trim(&value);
            let value = value
                .strip_prefix('"')
                .and_then(|v| v.strip_suffix('"'))
                .unwrap_or(value);
            !strips(&String::from_utf8_lossy(name.trim_ascii()), value, names)
        })
        .collect();
    let value = (!kept.is_empty()).then(|| kept.join(&b"; "[..]));
    headers.remove(COOKIE);
    if let Some(v) = value.and_then(|v| HeaderValue::from_bytes(&v).ok()) {
        headers.insert(COOKIE, v);
    }
}

/// Whether [`strip`] removes the pair `name=value` (as [`pairs`] reads them): its name is one
/// of `names`, or its value hides one. Python's `SimpleCookie` (Bottle, CherryPy, older
/// aiohttp) also splits on white space and commas, so to it `theme=dark access_token=X`
/// holds an `access_token` too: a token or a stripped cookie behind it reached the backend.
/// Browsers never send such a value (RFC 6265's cookie-octets exclude both), so the pair
/// goes whole.
pub fn strips(name: &str, value: &str, names: &[String]) -> bool {
    const SEPARATORS: [char; 3] = [' ', '\t', ','];
    names_it(name, names)
        // `x access_token=X`: its last word is the name to such a parser.
        || name
            .rsplit(SEPARATORS)
            .next()
            .is_some_and(|last| last.len() < name.len() && names_it(last, names))
        // SimpleCookie allows white space before a pair's `=` (`x session =X`).
        || squeeze_before_equals(value)
            .split(SEPARATORS)
            .skip(1)
            .filter_map(|piece| piece.split_once('=').map(|(n, _)| trim(n)))
            .any(|n| !n.is_empty() && names_it(n, names))
}

/// `value` without the white space before each `=` in it.
fn squeeze_before_equals(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        if c == '=' {
            out.truncate(out.trim_end_matches([' ', '\t']).len());
        }
        out.push(c);
    }
    out
}

/// Whether a cookie called `name` is one of `names` for [`strip`]: as written,
/// percent-decoded, or as PHP files it, in any case (ASP.NET Core's cookie collection
/// ignores case: `Access_Token` is its `access_token`).
pub fn names_it(name: &str, names: &[String]) -> bool {
    let decoded = crate::query::decode(name, false);
    // PHP decodes a cookie's name as a query's (`+` a space) and drops leading spaces:
    // `+access_token` and `%20access_token` are its `$_COOKIE["access_token"]`.
    let php = php_name(crate::query::decode(name, true).trim_start_matches(' '));
    names.iter().any(|s| {
        s.eq_ignore_ascii_case(name)
            || s.eq_ignore_ascii_case(&decoded)
            || s.eq_ignore_ascii_case(&php)
    })
}

/// The name PHP files a cookie under (it parses cookies as it parses a query): nothing from
/// a NUL on (it takes the name's C length), dots and spaces read as underscores, as does an
/// opening bracket with no closing one after it; one with a closing one makes an array of
/// the name before it (`access_token[]` and `access_token[x]` are its
/// `$_COOKIE["access_token"]`).
fn php_name(name: &str) -> String {
    let name = name.split('\0').next().unwrap_or_default();
    let mut out = String::with_capacity(name.len());
    for (i, c) in name.char_indices() {
        match c {
            '.' | ' ' => out.push('_'),
            '[' if !name[i..].contains(']') => {
                out.push('_');
                out.push_str(&name[i + 1..]);
                break;
            }
            '[' => break,
            c => out.push(c),
        }
    }
    out
}

/// Adds `name=value` to the request's cookies (after the others, in the one `Cookie`
/// header [`strip`] leaves, whatever its bytes).
pub fn append(headers: &mut HeaderMap, name: &str, value: &str) {
    let mut pair = match headers.get(COOKIE) {
        Some(others) if !others.is_empty() => {
            let mut b = others.as_bytes().to_vec();
            b.extend_from_slice(b"; ");
            b
        }
        _ => Vec::new(),
    };
    pair.extend_from_slice(format!("{name}={value}").as_bytes());
    if let Ok(v) = HeaderValue::from_bytes(&pair) {
        headers.insert(COOKIE, v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// PHP reads `access.token`, `access token` and `access[token` as `$_COOKIE["access_token"]`
    /// (a variable name has no dots, spaces or open brackets): a stripped cookie must go in
    /// those spellings too, as `strip_headers` removes `X_Debug_User` for `X-Debug-User`.
    #[test]
    fn strips_the_spellings_php_reads_as_the_name() {
        let mut h = HeaderMap::new();
        h.insert(
            COOKIE,
            HeaderValue::from_static(
                "access.token=a; access token=b; access[token=c; access[token]=d; theme=dark",
            ),
        );
        strip(&mut h, &["access_token".into()]);
        // `access[token]` is PHP's array `access`, not the name.
        assert_eq!(h[COOKIE], "access[token]=d; theme=dark");
    }

    /// ASP.NET Core reads cookie names without case, and PHP parses cookies as it parses a
    /// query: `access_token[]` is its array `$_COOKIE["access_token"]`, and a name ends at a
    /// NUL. A stripped cookie goes in each of those spellings.
    #[test]
    fn strips_the_spellings_asp_net_and_php_read_as_the_name() {
        let mut h = HeaderMap::new();
        h.insert(
            COOKIE,
            HeaderValue::from_static(
                "Access_Token=a; SESSION=b; access_token[]=c; access_token[x]=d; \
                 access_token%00=e; access_token%00junk=f; Access.Token=g; theme=dark; \
                 access_tokens=h; %00session=i; +access_token=j; %20session=k; %20%20Session=l",
            ),
        );
        strip(&mut h, &["access_token".into(), "session".into()]);
        assert_eq!(h[COOKIE], "theme=dark; access_tokens=h; %00session=i");
    }

    /// Python's `SimpleCookie` also splits on white space and commas: a token or a stripped
    /// cookie hidden in another pair's value (or behind a word in its name) is one to it.
    #[test]
    fn strips_a_pair_that_hides_a_stripped_name_behind_a_space_or_comma() {
        let strip_one = |cookie: &'static str, name: &str| {
            let mut h = HeaderMap::new();
            h.insert(COOKIE, HeaderValue::from_static(cookie));
            strip(&mut h, &[name.into()]);
            h.get(COOKIE).map(|v| v.to_str().unwrap().to_owned())
        };
        let kept = strip_one(
            "access_token=GOOD; theme=dark access_token=FORGED; lang=en",
            "access_token",
        );
        assert_eq!(kept.as_deref(), Some("lang=en"));
        let kept = strip_one("theme=dark, session=s3cr3t; a=1", "session");
        assert_eq!(kept.as_deref(), Some("a=1"));
        let kept = strip_one("x session=s3cr3t; b=2", "session");
        assert_eq!(kept.as_deref(), Some("b=2"));
        // A value's own `=` (base64) names nothing; a quoted value is read as `pairs` does.
        let kept = strip_one("t=abc=def; q=\"x session=1\"; b=1", "abc");
        assert_eq!(kept.as_deref(), Some("t=abc=def; q=\"x session=1\"; b=1"));
        let kept = strip_one("t=abc=def; q=\"x session=1\"; b=1", "session");
        assert_eq!(kept.as_deref(), Some("t=abc=def; b=1"));
    }

    /// SimpleCookie allows white space around a pair's `=` (`\s*=\s*`): to it
    /// `theme=dark session =FORGED` holds a `session` cookie too, as
    /// `theme=dark session=FORGED` does.
    #[test]
    fn strips_a_hidden_pair_with_white_space_before_its_equals_sign() {
        for cookie in [
            "theme=dark session =FORGED; b=2",
            "theme=dark session\t=FORGED; b=2",
            "theme=dark, session =FORGED; b=2",
        ] {
            let mut h = HeaderMap::new();
            h.insert(COOKIE, HeaderValue::from_str(cookie).unwrap());
            strip(&mut h, &["session".into()]);
            assert_eq!(h[COOKIE], "b=2", "{cookie:?}");
        }
    }

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
