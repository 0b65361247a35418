//! The request path as the backend will act on it: computed once, before route lookup, so
//! routes, policy and the backend all see the same path.
//!
//! Without this, `/x/../admin`, `//admin` or `/%61dmin` would match a catch-all route while
//! the backend (most frameworks normalise) serves `/admin` to a client that never passed the
//! `/admin` route's policy. The rules ([`canonicalize`]):
//!
//! - RFC 3986 §6.2.2: percent-encoded unreserved characters are decoded (`%61` → `a`,
//!   `%2E` → `.`), other escapes get uppercase hex (`%c3` → `%C3`), and characters that may
//!   not appear raw in a path (`"`, `{`, bytes over 0x7F) are percent-encoded;
//! - dot segments are removed (RFC 3986 §5.2.4), and a path that climbs above the root is
//!   refused rather than clamped (`/../admin` is an attack, not a typo);
//! - repeated slashes are merged (`merge_slashes`, on by default: nginx does the same);
//! - refused, because no single reading is safe: an encoded `/` or `\` (`%2F`, `%5C`; a
//!   backend that decodes it sees other segments than the router did) unless
//!   `escaped_slashes = "keep"`, a raw `\` (Windows servers and some frameworks read it as
//!   `/`), a control byte raw or encoded (`%00` truncates paths in C backends), an invalid
//!   escape, a dot segment carrying parameters (`..;x`, which Java servlet containers read as
//!   `..`), a segment of parameters only (`/;x/admin`, which they read as `//admin`), and any
//!   target that does not start with `/` (the asterisk form `*`).
//!
//! Path parameters (`;` in a segment, RFC 3986 §3.3) pass to the backend unchanged, but
//! routing matches each segment by its name only ([`routing_form`]): `/admin;x` is routed as
//! `/admin`, as a servlet container would serve it. The query is not touched.

use std::borrow::Cow;

/// What to do with `%2F` and `%5C` (an encoded `/` or `\`) in a path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum EscapedSlashes {
    /// Refuse the request (400): the router and a decoding backend would disagree on the
    /// segments.
    #[default]
    Refuse,
    /// Keep them encoded, as data inside a segment (Envoy's `KEEP_UNCHANGED`). Routing is on
    /// the encoded form, and a path whose route changes when they are read as separators is
    /// refused (see [`Canonical::slash_view`]).
    Keep,
}

/// How paths are made canonical: the `[limits]` keys `merge_slashes` and `escaped_slashes`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PathRules {
    pub merge_slashes: bool,
    pub escaped_slashes: EscapedSlashes,
}

impl Default for PathRules {
    fn default() -> Self {
        PathRules {
            merge_slashes: true,
            escaped_slashes: EscapedSlashes::Refuse,
        }
    }
}

/// Why a path cannot be made unambiguous (each is a 400 with this reason).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("request target must be a path starting with '/'")]
    NotAPath,
    #[error("path contains an encoded slash or backslash (%2F, %5C)")]
    EncodedSlash,
    #[error("path contains a backslash")]
    Backslash,
    #[error("path contains a control character")]
    ControlByte,
    #[error("path contains an invalid percent escape")]
    InvalidEscape,
    #[error("path climbs above the root")]
    AboveRoot,
    #[error("path has a dot segment with parameters (like ..;x)")]
    DotSegmentWithParameters,
    #[error("path has a segment with parameters but no name (like /;x)")]
    ParametersWithoutName,
    #[error("path routes differently when its encoded slashes are read as separators")]
    AmbiguousEscapedSlash,
    #[error(
        "path routes differently when read without letter case or trailing dots and spaces, \
         as some backends read it"
    )]
    AmbiguousCase,
}

/// A canonical path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Canonical {
    /// What routes and policy match (through [`routing_form`]) and the backend receives.
    pub path: String,
    /// With `escaped_slashes = "keep"` and an encoded slash in the path: the canonical path
    /// with `%2F` and `%5C` read as `/`. It must route where `path` does, or a backend that
    /// decodes them would serve another route's path (the proxy refuses the request).
    pub slash_view: Option<String>,
}

/// The canonical form of a request's path (without its query), or why there is none.
pub fn canonicalize(raw: &str, rules: &PathRules) -> Result<Canonical, PathError> {
    let path = canonical_path(raw.as_bytes(), rules)?;
    let slash_view = if rules.escaped_slashes == EscapedSlashes::Keep
        && (path.contains("%2F") || path.contains("%5C"))
    {
        let read = path.replace("%2F", "/").replace("%5C", "/");
        Some(canonical_path(read.as_bytes(), rules)?)
    } else {
        None
    };
    Ok(Canonical { path, slash_view })
}

fn canonical_path(raw: &[u8], rules: &PathRules) -> Result<String, PathError> {
    let rest = raw.strip_prefix(b"/").ok_or(PathError::NotAPath)?;
    let segments: Vec<&[u8]> = rest.split(|&b| b == b'/').collect();
    let last = segments.len() - 1;
    let mut out: Vec<String> = Vec::with_capacity(segments.len());
    let mut seg = String::new();
    for (i, raw_seg) in segments.into_iter().enumerate() {
        seg.clear();
        normalize_segment(raw_seg, rules.escaped_slashes, &mut seg)?;
        let (name, params) = match seg.find(';') {
            Some(at) => (&seg[..at], true),
            None => (seg.as_str(), false),
        };
        match (name, params) {
            ("." | "..", true) => return Err(PathError::DotSegmentWithParameters),
            ("", true) => return Err(PathError::ParametersWithoutName),
            // RFC 3986 §5.2.4: `.` is dropped, `..` drops the segment before it; either one
            // last leaves a trailing slash (`/a/b/..` is `/a/`).
            (".", false) => {}
            ("..", false) => {
                out.pop().ok_or(PathError::AboveRoot)?;
            }
            ("", false) if rules.merge_slashes && i != last => continue,
            _ => {
                out.push(seg.clone());
                continue;
            }
        }
        if i == last {
            out.push(String::new());
        }
    }
    let mut path = String::with_capacity(raw.len());
    for s in &out {
        path.push('/');
        path.push_str(s);
    }
    if path.is_empty() {
        path.push('/');
    }
    Ok(path)
}

/// One segment, percent-encoding normalised (RFC 3986 §6.2.2.1–2), onto `out`.
fn normalize_segment(
    seg: &[u8],
    escaped: EscapedSlashes,
    out: &mut String,
) -> Result<(), PathError> {
    let mut i = 0;
    while i < seg.len() {
        let b = seg[i];
        if b == b'%' {
            let hex = |j: usize| seg.get(j).and_then(|&h| (h as char).to_digit(16));
            let (Some(hi), Some(lo)) = (hex(i + 1), hex(i + 2)) else {
                return Err(PathError::InvalidEscape);
            };
            let v = (hi * 16 + lo) as u8;
            if v.is_ascii_control() {
                return Err(PathError::ControlByte);
            }
            if is_unreserved(v) {
                out.push(v as char);
            } else if (v == b'/' || v == b'\\') && escaped == EscapedSlashes::Refuse {
                return Err(PathError::EncodedSlash);
            } else {
                push_escape(out, v);
            }
            i += 3;
            continue;
        }
        if b.is_ascii_control() {
            return Err(PathError::ControlByte);
        }
        if b == b'\\' {
            return Err(PathError::Backslash);
        }
        if is_unreserved(b) || is_raw_in_segment(b) {
            out.push(b as char);
        } else {
            push_escape(out, b);
        }
        i += 1;
    }
    Ok(())
}

fn push_escape(out: &mut String, v: u8) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    out.push('%');
    out.push(HEX[usize::from(v >> 4)] as char);
    out.push(HEX[usize::from(v & 15)] as char);
}

/// RFC 3986 §2.3.
fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// The rest of RFC 3986's `pchar` (§3.3): sub-delims, `:` and `@`, which keep their meaning
/// raw and so are never decoded or encoded.
fn is_raw_in_segment(b: u8) -> bool {
    matches!(
        b,
        b'!' | b'$' | b'&' | b'\'' | b'(' | b')' | b'*' | b'+' | b',' | b';' | b'=' | b':' | b'@'
    )
}

/// A canonical path as routing matches it: each segment by its name, without its
/// parameters (`/admin;x/y` → `/admin/y`).
pub fn routing_form(canonical: &str) -> Cow<'_, str> {
    if !canonical.contains(';') {
        return Cow::Borrowed(canonical);
    }
    let mut out = String::with_capacity(canonical.len());
    for (i, seg) in canonical.split('/').enumerate() {
        if i > 0 {
            out.push('/');
        }
        out.push_str(seg.split(';').next().unwrap_or(""));
    }
    Cow::Owned(out)
}

/// A path (a route's, or a request's routing form) as many backends read it, if that differs
/// from it: letters in lower case (Express's router by default, ASP.NET Core, IIS), the
/// letters past ASCII that case mapping makes ASCII ones among them (below), and each
/// segment without an NTFS stream suffix (`::$DATA`) and without trailing dots and spaces
/// (`%20`), which IIS and Windows file names drop (a segment that is nothing else is kept). `/ADMIN/users`, `/Admin./users` and
/// `/admin%20/users` are `/admin/users` to such a backend: a request that routes otherwise
/// than this reading would reach that backend's `/admin` past the `/admin` route's policy.
pub fn folded(path: &str) -> Option<String> {
    let trims = |seg: &str| {
        seg.ends_with('.') || seg.ends_with("%20") || seg.contains("::$") || seg.contains("%3A%3A$")
    };
    if !path.bytes().any(|b| b.is_ascii_uppercase()) && !path.split('/').any(trims) {
        return None;
    }
    let mut out = String::with_capacity(path.len());
    for (i, seg) in path.split('/').enumerate() {
        if i > 0 {
            out.push('/');
        }
        // An NTFS stream suffix: `admin::$DATA` is the file `admin`, `admin::$INDEX_ALLOCATION`
        // the directory, to a Windows server that maps paths to files.
        let mut cut = match seg.find("::$").or_else(|| seg.find("%3A%3A$")) {
            Some(at) if at > 0 => &seg[..at],
            _ => seg,
        };
        while let Some(rest) = cut.strip_suffix('.').or_else(|| cut.strip_suffix("%20")) {
            cut = rest;
        }
        let seg = if cut.is_empty() { seg } else { cut };
        out.extend(seg.chars().map(|c| match c {
            '\u{212A}' => 'k',
            '\u{130}' | '\u{131}' => 'i',
            '\u{17F}' => 's',
            c => c.to_ascii_lowercase(),
        }));
    }
    // The letters past ASCII that common lower-casers turn into ASCII ones, as a canonical
    // path writes them (escaped): Java's, JavaScript's and Python's make the Kelvin sign `K`
    // a `k`, Java's per-character one the dotted `İ` an `i`, and upper-casers the dotless
    // `ı` an `I` and the long `ſ` an `S` (as Java's `equalsIgnoreCase` and Python's `re`
    // with `(?i)` match them). `/%E2%84%AAiosk` is `/kiosk` to such a backend.
    if ["%e2%84%aa", "%c4%b0", "%c4%b1", "%c5%bf"]
        .iter()
        .any(|e| out.contains(e))
    {
        out = out
            .replace("%e2%84%aa", "k")
            .replace("%c4%b0", "i")
            .replace("%c4%b1", "i")
            .replace("%c5%bf", "s");
    }
    (out != path).then_some(out)
}

/// The part of `canonical` that follows the first `prefix_len` bytes of its routing form
/// (a route's prefix, which ends on a segment boundary): the two have the same slashes, only
/// the segments' parameters differ. `/chat;v=2/room` after `/chat` is `/room`.
pub fn after_routing_prefix(canonical: &str, prefix_len: usize) -> &str {
    let routing = routing_form(canonical);
    let Some(rest) = routing.get(prefix_len..) else {
        return "";
    };
    if rest.is_empty() {
        return "";
    }
    let slashes = routing[..prefix_len].matches('/').count();
    // The rest starts at a slash (the prefix ended a segment) or just after one.
    let nth = if rest.starts_with('/') {
        slashes
    } else {
        slashes.saturating_sub(1)
    };
    match canonical.match_indices('/').nth(nth) {
        Some((at, _)) if rest.starts_with('/') => &canonical[at..],
        Some((at, _)) => &canonical[at + 1..],
        None => "",
    }
}

#[cfg(test)]
mod tests;
