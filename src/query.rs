//! A request's query string read the way the applications behind the proxy read it: names
//! and values percent-decoded (RFC 3986 §2.1), so a check made here sees what a backend's
//! framework will see (`acc%65ss_token` is `access_token` to both).

use std::borrow::Cow;

/// `s` percent-decoded. A broken escape (`%2`, `%zz`) stays as it is, and bytes that are not
/// UTF-8 are replaced. `plus_as_space`: `+` is a space, as in HTML forms'
/// `application/x-www-form-urlencoded` (the admin API's filters); left alone where the value
/// is a token, which has none.
pub fn decode(s: &str, plus_as_space: bool) -> Cow<'_, str> {
    if !(s.contains('%') || plus_as_space && s.contains('+')) {
        return s.into();
    }
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match bytes[i] {
            b'%' => {
                if let (Some(h), Some(l)) = (
                    bytes.get(i + 1).and_then(|&b| hex(b)),
                    bytes.get(i + 2).and_then(|&b| hex(b)),
                ) {
                    out.push((h * 16 + l) as u8);
                    i += 3;
                    continue;
                }
                out.push(b'%');
            }
            b'+' if plus_as_space => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned().into()
}

/// The query's parameters as `(name, value)`, both still encoded; a parameter without `=`
/// has an empty value.
pub fn pairs(query: &str) -> impl Iterator<Item = (&str, &str)> {
    query
        .split('&')
        .map(|kv| kv.split_once('=').unwrap_or((kv, "")))
}

/// The value of the first parameter whose name decodes to `name`, decoded.
pub fn param(query: Option<&str>, name: &str, plus_as_space: bool) -> Option<String> {
    pairs(query?)
        .find(|(k, _)| decode(k, plus_as_space) == name)
        .map(|(_, v)| decode(v, plus_as_space).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_are_decoded_and_broken_ones_kept() {
        assert_eq!(decode("acc%65ss_token", false), "access_token");
        assert_eq!(decode("ws%3A%2F%2Fh%3a1", false), "ws://h:1");
        assert_eq!(decode("a%2", false), "a%2");
        assert_eq!(decode("%zz%", false), "%zz%");
        assert_eq!(decode("%ff", false), "\u{fffd}");
        assert!(matches!(decode("plain", true), Cow::Borrowed("plain")));
    }

    #[test]
    fn plus_is_a_space_only_when_asked() {
        assert_eq!(decode("a+b%2B", true), "a b+");
        assert_eq!(decode("a+b%2B", false), "a+b+");
    }

    #[test]
    fn params_are_found_by_their_decoded_name() {
        let q = Some("a=1&acc%65ss_token=x%2By&flag&a=2");
        assert_eq!(param(q, "a", false).as_deref(), Some("1"));
        assert_eq!(param(q, "access_token", false).as_deref(), Some("x+y"));
        assert_eq!(param(q, "flag", false).as_deref(), Some(""));
        assert_eq!(param(q, "b", false), None);
        assert_eq!(param(None, "a", false), None);
    }
}
