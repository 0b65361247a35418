//! permessage-deflate (RFC 7692) at the edge: what the backend is offered, what the client is
//! answered, and the parameters the relay needs to count inflated message sizes.
//!
//! A limit on message size counts the bytes on the wire, which with permessage-deflate are
//! compressed: a message of 1 MiB can inflate to about 1 GiB in the backend. A route either
//! strips the extension from the offer (nobody compresses, the limit counts what the backend
//! gets) or keeps it and, with `max_message_inflated`, has the relay count inflated sizes
//! (`inflate.rs`). Counting needs an inflater per compressed message; with context takeover
//! (RFC 7692 §7.1.1) its 32 KiB window would have to live as long as the session, so the
//! gateway asks both peers to do without it where it can.

use http::HeaderValue;

pub mod inflate;

pub const NAME: &str = "permessage-deflate";
const SERVER_NO_TAKEOVER: &str = "server_no_context_takeover";
const CLIENT_NO_TAKEOVER: &str = "client_no_context_takeover";

/// What a route does with permessage-deflate offers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Mode {
    /// Offers pass to the backend (and with `max_message_inflated`, get
    /// `server_no_context_takeover`).
    #[default]
    Allow,
    /// Offers are removed, so neither side negotiates the extension.
    Strip,
}

/// Splits one `Sec-WebSocket-Extensions` value into its elements (`a; p=1, b` → `a; p=1`,
/// `b`). Quoted parameter values with commas are not used by any registered extension; a
/// value that has one is split wrongly and the backend declines what it cannot parse.
fn elements(value: &str) -> impl Iterator<Item = &str> {
    value.split(',').map(str::trim).filter(|e| !e.is_empty())
}

fn name_of(element: &str) -> &str {
    element.split(';').next().unwrap_or("").trim()
}

fn is_deflate(element: &str) -> bool {
    name_of(element).eq_ignore_ascii_case(NAME)
}

/// True if `element` has the parameter `param` (without a value).
fn has_param(element: &str, param: &str) -> bool {
    element
        .split(';')
        .skip(1)
        .any(|p| name_of(p).eq_ignore_ascii_case(param))
}

/// Rewrites each value's elements with `f` (`None` drops the element); a value left empty is
/// dropped. Values that are not text pass unchanged (the backend judges them).
fn rewrite(values: &[HeaderValue], f: impl Fn(&str) -> Option<String>) -> Vec<HeaderValue> {
    values
        .iter()
        .filter_map(|v| {
            let Ok(text) = v.to_str() else {
                return Some(v.clone());
            };
            let kept: Vec<String> = elements(text).filter_map(&f).collect();
            if kept.is_empty() {
                return None;
            }
            HeaderValue::from_str(&kept.join(", ")).ok()
        })
        .collect()
}

/// The client's offers as the backend gets them. `Strip` removes every permessage-deflate
/// offer (other extensions are untouched). With `count_inflated`, each permessage-deflate
/// offer asks for `server_no_context_takeover` (RFC 7692 §7.1.1.1), so the relay can inflate
/// each backend message on its own, with no window kept between messages.
pub fn backend_offer(offers: &[HeaderValue], mode: Mode, count_inflated: bool) -> Vec<HeaderValue> {
    if mode == Mode::Allow && !count_inflated {
        return offers.to_vec();
    }
    rewrite(offers, |e| match () {
        _ if !is_deflate(e) => Some(e.to_string()),
        _ if mode == Mode::Strip => None,
        _ if has_param(e, SERVER_NO_TAKEOVER) => Some(e.to_string()),
        _ => Some(format!("{e}; {SERVER_NO_TAKEOVER}")),
    })
}

/// The backend's accepted extensions as the client gets them: with `count_inflated`, a
/// negotiated permessage-deflate gets `client_no_context_takeover` (RFC 7692 §7.1.1.2: a
/// server may add it to any response, and a client that offered the extension must honour
/// it), so the relay can inflate each client message on its own.
pub fn client_response(accepted: &[HeaderValue], count_inflated: bool) -> Vec<HeaderValue> {
    if !count_inflated {
        return accepted.to_vec();
    }
    rewrite(accepted, |e| {
        if is_deflate(e) && !has_param(e, CLIENT_NO_TAKEOVER) {
            Some(format!("{e}; {CLIENT_NO_TAKEOVER}"))
        } else {
            Some(e.to_string())
        }
    })
}

/// How the relay counts a session's inflated message sizes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Counting {
    /// Largest inflated message either side may send.
    pub limit: u64,
    /// The client compresses with context takeover: its inflater keeps its window between
    /// messages (not negotiated by the gateway; only if the client ignores the response).
    pub client_takeover: bool,
    /// The backend compresses with context takeover: it accepted the offer without
    /// `server_no_context_takeover` (RFC 7692 §7.1.1.1 says it must not, but some do). Its
    /// inflater then lives for the whole session, about 43 KiB.
    pub backend_takeover: bool,
}

/// The counting a session needs: `None` unless a limit is set and the backend accepted
/// permessage-deflate (`accepted` as the backend answered it).
pub fn counting(limit: Option<u64>, accepted: &[HeaderValue]) -> Option<Counting> {
    let limit = limit?;
    let deflate: Vec<&str> = accepted
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(elements)
        .filter(|e| is_deflate(e))
        .collect();
    let first = deflate.first()?;
    // Another extension may use RSV1 too: then the proxy cannot tell what is compressed.
    let all = accepted
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(elements)
        .count();
    if all != deflate.len() {
        return None;
    }
    Some(Counting {
        limit,
        client_takeover: false,
        backend_takeover: !has_param(first, SERVER_NO_TAKEOVER),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hv(v: &[&str]) -> Vec<HeaderValue> {
        v.iter()
            .map(|s| HeaderValue::from_str(s).unwrap())
            .collect()
    }

    fn texts(v: &[HeaderValue]) -> Vec<&str> {
        v.iter().map(|v| v.to_str().unwrap()).collect()
    }

    #[test]
    fn strip_removes_only_permessage_deflate() {
        let offers = hv(&[
            "permessage-deflate; client_max_window_bits, x-foo; a=1",
            "Permessage-Deflate",
            "x-bar",
        ]);
        let out = backend_offer(&offers, Mode::Strip, false);
        assert_eq!(texts(&out), ["x-foo; a=1", "x-bar"]);
        assert_eq!(backend_offer(&offers, Mode::Allow, false), offers);
    }

    #[test]
    fn counting_asks_for_no_context_takeover_once() {
        let offers = hv(&[
            "permessage-deflate; client_max_window_bits, permessage-deflate; server_no_context_takeover",
            "x-foo",
        ]);
        let out = backend_offer(&offers, Mode::Allow, true);
        assert_eq!(
            texts(&out),
            [
                "permessage-deflate; client_max_window_bits; server_no_context_takeover, permessage-deflate; server_no_context_takeover",
                "x-foo"
            ]
        );
        let resp = client_response(
            &hv(&["permessage-deflate; server_no_context_takeover"]),
            true,
        );
        assert_eq!(
            texts(&resp),
            ["permessage-deflate; server_no_context_takeover; client_no_context_takeover"]
        );
        let already = hv(&["permessage-deflate; client_no_context_takeover"]);
        assert_eq!(client_response(&already, true), already);
    }

    #[test]
    fn counting_follows_the_backend_answer() {
        assert_eq!(counting(None, &hv(&["permessage-deflate"])), None);
        assert_eq!(counting(Some(10), &hv(&["x-foo"])), None);
        assert_eq!(
            counting(Some(10), &hv(&["permessage-deflate", "x-foo"])),
            None
        );
        let c = counting(
            Some(10),
            &hv(&["permessage-deflate; server_no_context_takeover"]),
        );
        assert_eq!(
            c,
            Some(Counting {
                limit: 10,
                client_takeover: false,
                backend_takeover: false
            })
        );
        let c = counting(Some(10), &hv(&["permessage-deflate"])).unwrap();
        assert!(c.backend_takeover);
    }
}
