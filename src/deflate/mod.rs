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

/// The elements of every value that is text (a value that is not passes unjudged).
fn all_elements(values: &[HeaderValue]) -> impl Iterator<Item = &str> {
    values
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(elements)
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
/// offer (other extensions are untouched). A malformed permessage-deflate offer (a parameter
/// unknown, repeated or out of range, `server_max_window_bits=010`) is declined, as RFC 7692
/// §5 has a server do: passed on, a lenient backend read `010` as 10 and answered it, the
/// answer failed [`check_answer`], and one client's offers had every backend of a route
/// counted as failing, then ejected. With `count_inflated`, each permessage-deflate
/// offer asks for `server_no_context_takeover` (RFC 7692 §7.1.1.1), so the relay can inflate
/// each backend message on its own, with no window kept between messages.
pub fn backend_offer(offers: &[HeaderValue], mode: Mode, count_inflated: bool) -> Vec<HeaderValue> {
    let malformed = |e: &str| is_deflate(e) && params(e).is_err();
    if mode == Mode::Allow && !count_inflated && !all_elements(offers).any(malformed) {
        return offers.to_vec();
    }
    rewrite(offers, |e| match () {
        _ if !is_deflate(e) => Some(e.to_string()),
        _ if mode == Mode::Strip || malformed(e) => None,
        _ if !count_inflated || has_param(e, SERVER_NO_TAKEOVER) => Some(e.to_string()),
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

/// The parameters of one permessage-deflate element, checked (RFC 7692 §7.1): each known
/// one at most once, the two `*_no_context_takeover` without a value, the two
/// `*_max_window_bits` with a value of 8 to 15 where one is given, in decimal without a
/// sign or leading zeroes (§7.1.2.1: `010` and `+9` have a client fail the connection),
/// bare or as a quoted string (RFC 6455 §9.1); `None` (an offer's `client_max_window_bits`
/// may come without one). Err names what is wrong.
fn params(element: &str) -> Result<Params, String> {
    let mut p = Params::default();
    for param in element.split(';').skip(1) {
        let (name, value) = match param.split_once('=') {
            Some((n, v)) => (n.trim(), Some(v.trim())),
            None => (param.trim(), None),
        };
        let bits = |v: Option<&str>| -> Result<Option<u8>, String> {
            let Some(v) = v else { return Ok(None) };
            let digits = v
                .strip_prefix('"')
                .and_then(|q| q.strip_suffix('"'))
                .unwrap_or(v);
            match digits.as_bytes() {
                [d @ b'8'..=b'9'] => Ok(Some(d - b'0')),
                [b'1', d @ b'0'..=b'5'] => Ok(Some(10 + d - b'0')),
                _ => Err(format!("{name}={v} is not 8 to 15")),
            }
        };
        let seen = match name.to_ascii_lowercase().as_str() {
            SERVER_NO_TAKEOVER | CLIENT_NO_TAKEOVER if value.is_some() => {
                return Err(format!("{name} takes no value"));
            }
            SERVER_NO_TAKEOVER => std::mem::replace(&mut p.server_no_takeover, true),
            CLIENT_NO_TAKEOVER => std::mem::replace(&mut p.client_no_takeover, true),
            "server_max_window_bits" => p.server_bits.replace(bits(value)?).is_some(),
            "client_max_window_bits" => p.client_bits.replace(bits(value)?).is_some(),
            "" => return Err("an empty parameter".into()),
            _ => return Err(format!("unknown parameter {name:?}")),
        };
        if seen {
            return Err(format!("{name} more than once"));
        }
    }
    Ok(p)
}

/// One permessage-deflate element's parameters; `Some(None)`: present without a value.
#[derive(Debug, Default)]
struct Params {
    server_no_takeover: bool,
    client_no_takeover: bool,
    server_bits: Option<Option<u8>>,
    client_bits: Option<Option<u8>>,
}

/// Checks the backend's answer to the permessage-deflate offers it was sent, as RFC 7692 §7
/// has a client do (and fail the connection otherwise): at most one permessage-deflate
/// element, with valid parameters, `server_max_window_bits` with a value, no larger than an
/// offer's, and `client_max_window_bits` with a value and only if an offer had it (no larger
/// than its value). Passed on as it came, such an answer would reach the client with a 101
/// and fail there (or, worse, be taken at its word by a lenient one). A missing
/// `server_no_context_takeover` is let through: some backends ignore it, and the relay
/// counts inflated sizes with the window kept (`Counting::backend_takeover`), where
/// wsgate asked for it (`max_message_inflated`); where the client did, in every offer it
/// made, the answer must have it, as it must have `server_max_window_bits` where every
/// offer named one (§7.1.1.1, §7.1.2.1: the client fails the connection otherwise).
/// `client_offers` are the client's own offers, `offers` what the backend got.
pub fn check_answer(
    offers: &[HeaderValue],
    client_offers: &[HeaderValue],
    answer: &[HeaderValue],
) -> Result<(), String> {
    let answered: Vec<&str> = all_elements(answer).filter(|e| is_deflate(e)).collect();
    let Some(element) = answered.first() else {
        return Ok(());
    };
    if answered.len() > 1 {
        return Err("permessage-deflate accepted more than once".into());
    }
    let bad = |m: String| Err(format!("permessage-deflate answer: {m}"));
    let a = match params(element) {
        Ok(a) => a,
        Err(m) => return bad(m),
    };
    let offered: Vec<Params> = all_elements(offers)
        .filter(|e| is_deflate(e))
        .filter_map(|o| params(o).ok())
        .collect();
    if let Some(server) = a.server_bits {
        let Some(bits) = server else {
            return bad("server_max_window_bits without a value".into());
        };
        // An offer without it leaves the backend free to limit its own window (§7.1.2.1).
        if !offered
            .iter()
            .any(|o| o.server_bits.flatten().is_none_or(|max| bits <= max))
        {
            return bad(format!(
                "server_max_window_bits={bits} above what was offered"
            ));
        }
    }
    if let Some(client) = a.client_bits {
        let Some(bits) = client else {
            return bad("client_max_window_bits without a value".into());
        };
        if !offered.iter().any(|o| {
            o.client_bits
                .is_some_and(|max| max.is_none_or(|max| bits <= max))
        }) {
            return bad(format!(
                "client_max_window_bits={bits}, which no offer allowed"
            ));
        }
    }
    // The answer accepts one of the client's offers: it must honour what that one asked of
    // the server.
    let honours = |o: &Params| {
        (!o.server_no_takeover || a.server_no_takeover)
            && o.server_bits
                .flatten()
                .is_none_or(|max| a.server_bits.flatten().is_some_and(|b| b <= max))
            && a.client_bits
                .flatten()
                .is_none_or(|b| o.client_bits.is_some_and(|m| m.is_none_or(|m| b <= m)))
    };
    let client: Vec<Params> = all_elements(client_offers)
        .filter(|e| is_deflate(e))
        .filter_map(|o| params(o).ok())
        .collect();
    if !client.is_empty() && !client.iter().any(honours) {
        return bad("it leaves out what the client's offer asked of the server \
                    (server_max_window_bits or server_no_context_takeover)"
            .into());
    }
    Ok(())
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
    let deflate: Vec<&str> = all_elements(accepted).filter(|e| is_deflate(e)).collect();
    let first = deflate.first()?;
    // Another extension may use RSV1 too: then the proxy cannot tell what is compressed.
    let all = all_elements(accepted).count();
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
    fn backend_answers_rfc_7692_forbids_are_refused() {
        let plain = hv(&["permessage-deflate; client_max_window_bits"]);
        let ok = |offer: &[HeaderValue], answer: &str| check_answer(offer, offer, &hv(&[answer]));
        for good in [
            "permessage-deflate",
            "permessage-deflate; server_no_context_takeover; client_no_context_takeover",
            "permessage-deflate; server_max_window_bits=10",
            "permessage-deflate; client_max_window_bits=9",
            "permessage-deflate; server_max_window_bits=\"12\"",
            "x-other",
        ] {
            assert_eq!(ok(&plain, good), Ok(()), "{good}");
        }
        let bare = hv(&["permessage-deflate"]);
        let limited = hv(&["permessage-deflate; server_max_window_bits=10"]);
        for (offer, bad) in [
            (&bare, "permessage-deflate; client_max_window_bits=10"),
            (&plain, "permessage-deflate; client_max_window_bits"),
            (&plain, "permessage-deflate; server_max_window_bits=7"),
            (&plain, "permessage-deflate; server_max_window_bits=16"),
            (&plain, "permessage-deflate; server_max_window_bits"),
            (&limited, "permessage-deflate; server_max_window_bits=12"),
            (&limited, "permessage-deflate; server_max_window_bits=x"),
            // §7.1.2.1: decimal without leading zeroes; a quoted string is whole.
            (&plain, "permessage-deflate; server_max_window_bits=010"),
            (&plain, "permessage-deflate; server_max_window_bits=+9"),
            (&plain, "permessage-deflate; client_max_window_bits=010"),
            (&plain, "permessage-deflate; server_max_window_bits=\"09\""),
            (&plain, "permessage-deflate; server_max_window_bits=\"12"),
            (&plain, "permessage-deflate; server_max_window_bits=\"\""),
            (&plain, "permessage-deflate; foo=1"),
            (&plain, "permessage-deflate; server_no_context_takeover=1"),
            (
                &plain,
                "permessage-deflate; server_no_context_takeover; server_no_context_takeover",
            ),
            (&plain, "permessage-deflate, permessage-deflate"),
        ] {
            assert!(ok(offer, bad).is_err(), "{bad} to {offer:?}");
        }
        // Of several offers, the answer may match any one.
        let two = hv(&[
            "permessage-deflate; server_max_window_bits=10",
            "permessage-deflate",
        ]);
        assert_eq!(
            ok(&two, "permessage-deflate; server_max_window_bits=12"),
            Ok(())
        );
        assert_eq!(ok(&two, "permessage-deflate"), Ok(()));
        // What the only offer asks of the server must be in the answer (RFC 7692 §7.1.1.1,
        // §7.1.2.1): the client fails the connection without it.
        assert!(ok(&limited, "permessage-deflate").is_err());
        let no_takeover = hv(&["permessage-deflate; server_no_context_takeover"]);
        assert!(ok(&no_takeover, "permessage-deflate").is_err());
        assert_eq!(
            ok(
                &no_takeover,
                "permessage-deflate; server_no_context_takeover"
            ),
            Ok(())
        );
        // Unless wsgate asked for it (`max_message_inflated`), not the client.
        assert_eq!(
            check_answer(&no_takeover, &bare, &hv(&["permessage-deflate"])),
            Ok(())
        );
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

    /// A malformed offer is declined (RFC 7692 §5), as a server would; the valid ones pass.
    /// A lenient backend read `010` as 10, answered it, and was counted as failing.
    #[test]
    fn malformed_offers_are_declined() {
        let offers = hv(&[
            "permessage-deflate; server_max_window_bits=010, permessage-deflate",
            "permessage-deflate; client_max_window_bits=+10",
            "permessage-deflate; foo, x-bar",
        ]);
        for count in [false, true] {
            let out = backend_offer(&offers, Mode::Allow, count);
            let kept = if count {
                "permessage-deflate; server_no_context_takeover"
            } else {
                "permessage-deflate"
            };
            assert_eq!(texts(&out), [kept, "x-bar"]);
        }
        let only_bad = hv(&["permessage-deflate; server_max_window_bits=1e1"]);
        assert!(backend_offer(&only_bad, Mode::Allow, false).is_empty());
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
