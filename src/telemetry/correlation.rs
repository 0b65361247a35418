//! The ids that tie one handshake's records together across systems: the request id
//! (`X-Request-Id`) and the W3C trace context (`traceparent`, `tracestate`).
//!
//! The request id is on every log record of the request and its session, goes to the backend
//! and comes back to the client, so one grep finds a handshake in wsgate's log, the backend's
//! and the client's. Only a trusted proxy may choose it (anyone else could make their requests
//! look like someone else's); otherwise wsgate draws 128 random bits.
//!
//! wsgate does not trace, but it must not break a trace: a valid incoming `traceparent`
//! passes to the backend unchanged with its `tracestate`, so the backend's spans join the
//! caller's trace. Without one (or with an invalid one) wsgate starts a trace whose id is the
//! request id, so logs and traces share one key.

use http::HeaderMap;
use http::header::{HeaderName, HeaderValue};

pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
pub const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
pub const TRACESTATE: HeaderName = HeaderName::from_static("tracestate");

/// The longest request id taken from a trusted proxy, in bytes.
pub const MAX_REQUEST_ID: usize = 128;

/// A request's correlation ids, decided once when the request arrives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Correlation {
    /// Visible ASCII only (see [`proxy_request_id`]), so it is always a valid header value.
    request_id: Box<str>,
    /// A version-00 `traceparent`: the incoming one, or one wsgate started.
    traceparent: Box<str>,
    /// The incoming `tracestate` fields, passed only with the incoming `traceparent`.
    tracestate: Vec<HeaderValue>,
}

impl Correlation {
    /// The ids for a request with `headers`; `trusted_peer`: the TCP peer is one of the
    /// listener's trusted proxies (`forwarding::client_addr`), whose `X-Request-Id` is kept.
    pub fn of_request(headers: &HeaderMap, trusted_peer: bool) -> Correlation {
        let request_id = trusted_peer
            .then(|| proxy_request_id(headers))
            .flatten()
            .map_or_else(new_request_id, Box::from);
        let (traceparent, tracestate) = match incoming_traceparent(headers) {
            Some(tp) => (tp, headers.get_all(TRACESTATE).iter().cloned().collect()),
            None => (start_trace(&request_id), Vec::new()),
        };
        Correlation {
            request_id,
            traceparent: traceparent.into(),
            tracestate,
        }
    }

    pub fn request_id(&self) -> &str {
        &self.request_id
    }

    /// The trace id: the `traceparent`'s second field.
    pub fn trace_id(&self) -> &str {
        &self.traceparent[3..35]
    }

    /// The trace id for a log record: `None` when it is the request id (the record has it).
    pub fn logged_trace_id(&self) -> Option<&str> {
        Some(self.trace_id()).filter(|t| *t != &*self.request_id)
    }

    /// `X-Request-Id` for a response or the backend request.
    pub fn request_id_header(&self) -> HeaderValue {
        // Visible ASCII (a trusted proxy's, checked) or hex (ours): always valid.
        HeaderValue::from_str(&self.request_id).unwrap_or(HeaderValue::from_static("-"))
    }

    /// The correlation headers of the backend request: `X-Request-Id`, `traceparent`, and
    /// `tracestate` if it came with the `traceparent`.
    pub fn backend_headers(&self) -> Vec<(HeaderName, HeaderValue)> {
        let mut out = vec![(X_REQUEST_ID, self.request_id_header())];
        // ASCII by construction (checked, or written here).
        if let Ok(tp) = HeaderValue::from_str(&self.traceparent) {
            out.push((TRACEPARENT, tp));
            out.extend(self.tracestate.iter().map(|v| (TRACESTATE, v.clone())));
        }
        out
    }
}

/// A trusted proxy's `X-Request-Id`, if there is exactly one and it is sane: 1 to
/// [`MAX_REQUEST_ID`] visible ASCII characters, no spaces (it goes into log records and
/// headers as it is).
fn proxy_request_id(headers: &HeaderMap) -> Option<&str> {
    let mut values = headers.get_all(X_REQUEST_ID).iter();
    let (value, None) = (values.next()?, values.next()) else {
        return None;
    };
    let bytes = value.as_bytes();
    let sane = (1..=MAX_REQUEST_ID).contains(&bytes.len())
        && bytes.iter().all(|b| (0x21..=0x7e).contains(b));
    sane.then(|| value.to_str().ok()).flatten()
}

/// A fresh request id: 128 random bits as 32 lower-case hex digits, also a valid trace id
/// (unless all zero, which [`start_trace`] checks).
fn new_request_id() -> Box<str> {
    let mut s = String::with_capacity(32);
    push_hex(&mut s, rand::random::<u128>(), 32);
    s.into()
}

/// Appends the low `digits` hex digits of `value`, lower case, zero-padded: what
/// `{:0digits$x}` writes, without the formatter's padding pass (every handshake writes three
/// of these ids).
fn push_hex(s: &mut String, value: u128, digits: u32) {
    for i in (0..digits).rev() {
        let nibble = (value >> (4 * i)) as u8 & 0xf;
        s.push(char::from(b"0123456789abcdef"[usize::from(nibble)]));
    }
}

/// A new version-00 `traceparent` (not sampled: wsgate records no spans). The trace id is the
/// request id when that is a valid trace id, so one key finds both; the parent id is random.
fn start_trace(request_id: &str) -> String {
    let mut tp = String::with_capacity(55);
    tp.push_str("00-");
    if is_lower_hex(request_id.as_bytes(), 32) && !all_zero(request_id.as_bytes()) {
        tp.push_str(request_id);
    } else {
        push_hex(&mut tp, rand::random::<u128>().max(1), 32);
    }
    tp.push('-');
    push_hex(&mut tp, u128::from(rand::random::<u64>().max(1)), 16);
    tp.push_str("-00");
    tp
}

/// The incoming `traceparent` if it is valid (W3C Trace Context level 1, §3.2): exactly one
/// header; version 00 exactly as the spec writes it, or a later version parsed by the spec's
/// versioning rules and rewritten as version 00 (the highest this implementation knows).
/// `None`: start a new trace (and drop the `tracestate`, which belongs to the trace).
fn incoming_traceparent(headers: &HeaderMap) -> Option<String> {
    let mut values = headers.get_all(TRACEPARENT).iter();
    let (value, None) = (values.next()?, values.next()) else {
        return None;
    };
    parse_traceparent(value.as_bytes())
}

/// See [`incoming_traceparent`].
fn parse_traceparent(v: &[u8]) -> Option<String> {
    // `version "-"`, then the version-00 fields at fixed offsets: trace-id at 3..35,
    // parent-id at 36..52, flags at 53..55.
    if v.len() < 55 || !is_lower_hex(&v[..2], 2) || v[2] != b'-' {
        return None;
    }
    let version = &v[..2];
    if version == b"ff" || (version == b"00" && v.len() != 55) {
        return None;
    }
    // A later version may add fields after the flags, each behind a dash.
    if v.len() > 55 && v[55] != b'-' {
        return None;
    }
    let (trace_id, parent_id, flags) = (&v[3..35], &v[36..52], &v[53..55]);
    let fields_ok = v[35] == b'-'
        && v[52] == b'-'
        && is_lower_hex(trace_id, 32)
        && is_lower_hex(parent_id, 16)
        && is_lower_hex(flags, 2)
        && !all_zero(trace_id)
        && !all_zero(parent_id);
    if !fields_ok {
        return None;
    }
    // ASCII: every byte up to the flags was checked above.
    let known = std::str::from_utf8(&v[..55]).ok()?;
    if version == b"00" {
        return Some(known.to_string());
    }
    // Only the sampled flag is defined; other flags of a later version are not passed on.
    let sampled = u8::from_str_radix(&known[53..55], 16).ok()? & 1;
    Some(format!("00{}{sampled:02x}", &known[2..53]))
}

fn is_lower_hex(s: &[u8], len: usize) -> bool {
    s.len() == len && s.iter().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

fn all_zero(s: &[u8]) -> bool {
    s.iter().all(|b| *b == b'0')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_as_the_formatter_writes_it() {
        for v in [
            0u128,
            1,
            0xabc,
            u128::from(u64::MAX),
            u128::MAX,
            0x0123_4567_89ab_cdef_u128 << 60,
        ] {
            let mut s = String::new();
            push_hex(&mut s, v, 32);
            assert_eq!(s, format!("{v:032x}"));
            let low = v as u64;
            s.clear();
            push_hex(&mut s, u128::from(low), 16);
            assert_eq!(s, format!("{low:016x}"));
        }
    }

    const TP: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    fn backend(c: &Correlation) -> Vec<(String, String)> {
        c.backend_headers()
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_str().unwrap().to_string()))
            .collect()
    }

    #[test]
    fn a_fresh_request_id_is_32_hex_digits_and_the_trace_id() {
        let c = Correlation::of_request(&HeaderMap::new(), false);
        let id = c.request_id();
        assert!(is_lower_hex(id.as_bytes(), 32), "{id}");
        assert_eq!(c.trace_id(), id);
        assert_eq!(c.logged_trace_id(), None);
        let tp = &c.traceparent;
        assert_eq!(tp.len(), 55);
        assert!(tp.starts_with("00-") && tp.ends_with("-00"), "{tp}");
        assert_eq!(parse_traceparent(tp.as_bytes()).as_deref(), Some(&**tp));
        assert_ne!(
            Correlation::of_request(&HeaderMap::new(), false).request_id(),
            id
        );
    }

    #[test]
    fn a_request_id_is_kept_only_from_a_trusted_proxy_and_only_if_sane() {
        let h = headers(&[("x-request-id", "lb-7f3a/42")]);
        assert_eq!(Correlation::of_request(&h, true).request_id(), "lb-7f3a/42");
        assert_ne!(
            Correlation::of_request(&h, false).request_id(),
            "lb-7f3a/42"
        );
        let long = "a".repeat(MAX_REQUEST_ID);
        let too_long = "a".repeat(MAX_REQUEST_ID + 1);
        assert_eq!(
            Correlation::of_request(&headers(&[("x-request-id", &long)]), true).request_id(),
            long
        );
        for bad in ["", "has space", "tab\there", &too_long] {
            let c = Correlation::of_request(&headers(&[("x-request-id", bad)]), true);
            assert!(is_lower_hex(c.request_id().as_bytes(), 32), "{bad:?} kept");
        }
        // Non-ASCII bytes (obs-text), and two ids: which one would be anyone's guess.
        let mut h = HeaderMap::new();
        h.insert(X_REQUEST_ID, HeaderValue::from_bytes(b"id\xe9").unwrap());
        assert_ne!(Correlation::of_request(&h, true).request_id().len(), 3);
        let two = headers(&[("x-request-id", "a"), ("x-request-id", "b")]);
        assert_eq!(Correlation::of_request(&two, true).request_id().len(), 32);
    }

    #[test]
    fn a_proxy_id_that_is_not_a_trace_id_gets_its_own_trace() {
        let c = Correlation::of_request(&headers(&[("x-request-id", "req-1")]), true);
        assert!(is_lower_hex(c.trace_id().as_bytes(), 32));
        assert_eq!(c.logged_trace_id(), Some(c.trace_id()));
        // 32 hex digits, but upper case or all zero: not a trace id.
        for id in ["4BF92F3577B34DA6A3CE929D0E0E4736", &"0".repeat(32)] {
            let c = Correlation::of_request(&headers(&[("x-request-id", id)]), true);
            assert_eq!(c.request_id(), id);
            assert_ne!(c.trace_id(), id);
        }
        let id = "4bf92f3577b34da6a3ce929d0e0e4736";
        let c = Correlation::of_request(&headers(&[("x-request-id", id)]), true);
        assert_eq!(c.trace_id(), id);
    }

    #[test]
    fn a_valid_traceparent_passes_unchanged_with_its_tracestate() {
        let h = headers(&[
            ("traceparent", TP),
            ("tracestate", "congo=t61rcWkgMzE"),
            ("tracestate", "rojo=00f067aa0ba902b7"),
        ]);
        let c = Correlation::of_request(&h, false);
        assert_eq!(c.trace_id(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(c.logged_trace_id(), Some(c.trace_id()));
        let sent = backend(&c);
        assert_eq!(sent[0], ("x-request-id".into(), c.request_id().into()));
        assert_eq!(
            sent[1..],
            [
                ("traceparent".into(), TP.into()),
                ("tracestate".into(), "congo=t61rcWkgMzE".into()),
                ("tracestate".into(), "rojo=00f067aa0ba902b7".into()),
            ]
        );
    }

    #[test]
    fn an_invalid_traceparent_and_its_tracestate_are_replaced() {
        let zeros_trace = "00-00000000000000000000000000000000-00f067aa0ba902b7-01";
        let zeros_parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01";
        let invalid = [
            "",
            "00",
            zeros_trace,
            zeros_parent,
            // Upper case, a missing or extra character, other separators.
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-1",
            "00_4bf92f3577b34da6a3ce929d0e0e4736_00f067aa0ba902b7_01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0g",
            // Version 00 has nothing after the flags; version ff is forbidden.
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            // A later version must still have the version-00 fields, and a dash after them.
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01x",
            "cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "0g-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ];
        for tp in invalid {
            let h = headers(&[("traceparent", tp), ("tracestate", "congo=1")]);
            let c = Correlation::of_request(&h, false);
            let sent = backend(&c);
            assert_eq!(sent.len(), 2, "{tp:?}: {sent:?}");
            assert_eq!(sent[1].1, c.traceparent.as_ref(), "{tp:?}");
            assert_eq!(c.trace_id(), c.request_id(), "{tp:?}: a new trace");
        }
        // Two traceparent headers: which one is meant is anyone's guess.
        let h = headers(&[("traceparent", TP), ("traceparent", TP)]);
        assert_ne!(Correlation::of_request(&h, false).traceparent.as_ref(), TP);
        // Non-ASCII bytes where the fields are.
        let mut h = HeaderMap::new();
        let mut raw = TP.as_bytes().to_vec();
        raw[10] = 0xe9;
        h.insert(TRACEPARENT, HeaderValue::from_bytes(&raw).unwrap());
        assert_eq!(parse_traceparent(&raw), None);
    }

    #[test]
    fn a_later_version_is_read_by_the_versioning_rules_and_sent_as_00() {
        let later = "cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-09-what-the-future-holds";
        assert_eq!(
            parse_traceparent(later.as_bytes()).as_deref(),
            Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
        );
        let later = "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-02";
        assert_eq!(
            parse_traceparent(later.as_bytes()).as_deref(),
            Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00")
        );
        let h = headers(&[("traceparent", later), ("tracestate", "congo=1")]);
        assert_eq!(backend(&Correlation::of_request(&h, false)).len(), 3);
    }
}
