//! The client's address, and the forwarding headers that tell the backend about it.
//!
//! The TCP peer (or the PROXY protocol source) is the client unless it is a configured
//! trusted proxy; then `X-Forwarded-For` is read from the right, skipping trusted hops, and
//! the first untrusted address is the client. Forwarding headers from untrusted peers are
//! dropped, never appended to: otherwise any client could claim any address.

use std::net::IpAddr;

use crate::ip_text::push_ip;

/// An address block, `10.0.0.0/8` or `2001:db8::/32` (a bare address is a /32 or /128).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

impl Cidr {
    pub fn parse(s: &str) -> Result<Cidr, String> {
        let (a, p) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = a
            .parse()
            .map_err(|_| format!("{s:?} is not an address or CIDR block (e.g. \"10.0.0.0/8\")"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match p {
            None => max,
            Some(p) => match p.parse::<u8>() {
                Ok(n) if n <= max => n,
                _ => return Err(format!("{s:?}: prefix length must be 0..={max}")),
            },
        };
        Ok(Cidr::mapped_to_v4(addr, prefix))
    }

    /// A block of IPv4-mapped addresses (`::ffff:10.0.0.0/104`, as a dual-stack `[::]`
    /// socket, `ss` and the kernel show IPv4 peers) is the IPv4 block it maps (`10.0.0.0/8`):
    /// peers are compared as plain IPv4, and such a block matched nothing. A wider IPv6 block
    /// (`::/0`) stays IPv6 only: it is not a way to name every IPv4 address too.
    fn mapped_to_v4(addr: IpAddr, prefix: u8) -> Cidr {
        if let IpAddr::V6(v6) = addr
            && prefix >= 96
            && let Some(v4) = v6.to_ipv4_mapped()
        {
            return Cidr {
                addr: IpAddr::V4(v4),
                prefix: prefix - 96,
            };
        }
        Cidr { addr, prefix }
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

/// Whether `ip` is one of `trusted`.
pub fn is_trusted(trusted: &[Cidr], ip: IpAddr) -> bool {
    trusted.iter().any(|c| c.contains(ip))
}

/// The addresses of a request's `X-Forwarded-For` headers, left to right. Entries that are
/// not addresses (`unknown`, obfuscated names, bytes past ASCII) end the list: nothing left
/// of them can be attributed, and what is right of them (what the trusted proxies wrote
/// last) is read on.
pub fn forwarded_for(headers: &http::HeaderMap) -> Vec<IpAddr> {
    let mut out = Vec::new();
    for v in headers.get_all("x-forwarded-for") {
        // Split as bytes: a field with a byte past ASCII is still read element by element
        // (that element is not an address). Stopping at such a field kept the client's own
        // entries left of it and dropped the trusted proxies' right of it, so a client
        // behind a trusted proxy chose its address (and its per-IP limits' key).
        let items = v.as_bytes().split(|b| *b == b',').map(<[u8]>::trim_ascii);
        // Empty elements (`a, , b`) are not elements (RFC 9110 §5.6.1 has them ignored).
        for item in items.filter(|i| !i.is_empty()) {
            match std::str::from_utf8(item).ok().and_then(parse_forwarded_ip) {
                // An IPv4-mapped address is its IPv4 address, as a peer's is (`accept.rs`):
                // the records, the session API's client filter and the per-IP limits name it
                // one way (`[::ffff:192.0.2.1]:0` was logged beside `192.0.2.1:0`).
                Some(ip) => out.push(ip.to_canonical()),
                None => out.clear(),
            }
        }
    }
    out
}

/// `1.2.3.4`, `1.2.3.4:567`, `2001:db8::1`, `[2001:db8::1]:567`.
fn parse_forwarded_ip(s: &str) -> Option<IpAddr> {
    if let Ok(ip) = s.parse() {
        return Some(ip);
    }
    if let Some(rest) = s.strip_prefix('[') {
        return rest.split_once(']')?.0.parse().ok();
    }
    s.rsplit_once(':')?.0.parse().ok()
}

/// What the proxy knows about where a request came from.
#[derive(Debug, Clone)]
pub struct ClientAddr {
    /// The client as far as it can be known: the peer, or, behind trusted proxies, the
    /// first untrusted address in `X-Forwarded-For` read from the right.
    pub ip: IpAddr,
    /// The `X-Forwarded-For` chain to send on: the trusted incoming chain plus the peer.
    pub chain: Vec<IpAddr>,
    /// The peer is a trusted proxy: its `X-Forwarded-Proto`/`-Host` and `Forwarded` are kept.
    pub peer_trusted: bool,
    /// A trusted proxy's `X-Forwarded-Proto`: the scheme the client used.
    pub proto: Option<String>,
    /// A trusted proxy's `X-Forwarded-Host`: the host the client asked for.
    pub host: Option<String>,
}

impl ClientAddr {
    /// The TCP peer (or PROXY protocol source) of this hop: the chain's last entry.
    pub fn peer(&self) -> IpAddr {
        *self.chain.last().unwrap_or(&self.ip)
    }

    /// `X-Forwarded-For` as the backend will see it.
    pub fn chain_header(&self) -> String {
        let mut s = String::with_capacity(16 * self.chain.len());
        self.push_chain(&mut s);
        s
    }

    /// Appends `X-Forwarded-For` as the backend will see it to `s`.
    fn push_chain(&self, s: &mut String) {
        for (i, ip) in self.chain.iter().enumerate() {
            if i > 0 {
                s.push_str(", ");
            }
            push_ip(s, *ip);
        }
    }
}

/// Works out the client's address from the peer and (when the peer is trusted) the request's
/// `X-Forwarded-For`.
pub fn client_addr(trusted: &[Cidr], peer: IpAddr, headers: &http::HeaderMap) -> ClientAddr {
    let peer = peer.to_canonical();
    if !is_trusted(trusted, peer) {
        return ClientAddr {
            ip: peer,
            chain: vec![peer],
            peer_trusted: false,
            proto: None,
            host: None,
        };
    }
    let first = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(',').next())
            .map(str::trim)
            .filter(|v| !v.is_empty())
            .map(str::to_string)
    };
    let mut chain = forwarded_for(headers);
    chain.push(peer);
    let ip = chain
        .iter()
        .rev()
        .find(|ip| !is_trusted(trusted, **ip))
        .or(chain.first())
        .copied()
        .unwrap_or(peer);
    ClientAddr {
        ip,
        chain,
        peer_trusted: true,
        proto: first("x-forwarded-proto"),
        host: first("x-forwarded-host"),
    }
}

/// The headers the proxy writes itself on a backend request, by lower-case name: a client's
/// are never copied (a forwarding header from an untrusted peer would let any client claim
/// any address; the correlation headers are the request's `Correlation`'s, which kept a
/// trusted proxy's id and a valid trace context). `Forwarded` and `Via` are extended by
/// [`set_headers`] from what was received.
pub const SET_BY_THE_PROXY: &[&str] = &[
    "forwarded",
    "via",
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
    "x-forwarded-port",
    "x-real-ip",
    "x-request-id",
    "traceparent",
    "tracestate",
];

/// The client's end-to-end headers for a backend request, on the WebSocket and the plain-HTTP
/// paths alike: all but the ones its `Connection` names (RFC 9110 §7.6.1), `Proxy-*`, the
/// ones the proxy sets itself ([`SET_BY_THE_PROXY`]), any other `X-Forwarded-*` unless the
/// peer is a trusted proxy (`X-Forwarded-Uri`, `-Method`, `-Prefix`, `-Server`, ...: what a
/// proxy says about the request, which a client cannot say of itself), their look-alikes
/// with underscores (see [`reads_as`]) and the ones `dropped` names. An `X-Forwarded-*`
/// header the route's policy set itself (`set_by_route`: the client's own copies are gone by
/// then) passes from any peer. The `Cookie` fields come as one, joined with "; ": an HTTP/2
/// client may split them, and RFC 9113 §8.2.3 says to join them for HTTP/1.1 (unless
/// `Connection` names `Cookie`).
pub fn end_to_end(
    client: &http::HeaderMap,
    peer_trusted: bool,
    dropped: impl Fn(&http::HeaderName) -> bool,
    set_by_route: impl Fn(&http::HeaderName) -> bool,
) -> http::HeaderMap {
    use http::header;
    // `with_capacity` panics past `http`'s largest map (24,576 fields); an HTTP/2 request's
    // cookie crumbs are bounded by `proxy.rs`, but a map that cannot be sized ahead grows.
    let mut headers = http::HeaderMap::try_with_capacity(client.len() + 8).unwrap_or_default();
    let named = crate::handshake::list_values(client, &header::CONNECTION);
    let is_named = |name: &str| named.iter().any(|t| t.eq_ignore_ascii_case(name));
    let proxys = |name: &str| {
        SET_BY_THE_PROXY.contains(&name)
            || name.starts_with("proxy-")
            || !peer_trusted && name.starts_with("x-forwarded-")
    };
    for (name, value) in client {
        let n = name.as_str();
        let skip = *name == header::COOKIE
            || dropped(name)
            || (proxys(n) || n.contains('_') && proxys(&n.replace('_', "-")))
                && !set_by_route(name)
            || is_named(n);
        if !skip {
            headers.append(name.clone(), value.clone());
        }
    }
    if !is_named("cookie")
        && let Some(v) = super::cookie::joined(client)
    {
        headers.insert(header::COOKIE, v);
    }
    headers
}

/// Whether a client's header `name` (lower case) reads as `protected` to a backend that
/// maps `-` and `_` to the same variable, as CGI, WSGI, PHP and Rack do (`X_User` and
/// `X-User` are both `HTTP_X_USER`): a client could otherwise add its own value to an
/// identity header the proxy sets. (nginx drops every header with an underscore by default.)
/// Both ways: a config that names `X_User` leaves the client's `X-User` to a backend that
/// drops underscore headers (Werkzeug, Gunicorn 22) and reads the client's value alone.
pub fn reads_as(name: &str, protected: &str) -> bool {
    name.len() == protected.len()
        && name
            .bytes()
            .zip(protected.bytes())
            .all(|(a, b)| a == b || matches!((a, b), (b'_', b'-') | (b'-', b'_')))
}

/// The client-certificate subject header of a backend request, on the WebSocket and the
/// plain-HTTP paths alike: every listener's name (`Config::subject_headers`) and this
/// listener's removed from what the client sent, with their look-alikes, so none can be
/// forged; then this listener's set to the verified subject, if a certificate gave one.
pub fn set_client_subject(
    headers: &mut http::HeaderMap,
    subject_headers: &[http::HeaderName],
    client_subject: Option<(&http::HeaderName, Option<&str>)>,
) {
    for name in subject_headers.iter().chain(client_subject.map(|(n, _)| n)) {
        remove_with_lookalikes(headers, name);
    }
    if let Some((name, Some(subject))) = client_subject
        && let Ok(v) = http::HeaderValue::from_str(subject)
    {
        headers.insert(name.clone(), v);
    }
}

/// Removes `protected` from `headers`, and every field that [`reads_as`] it.
pub fn remove_with_lookalikes(headers: &mut http::HeaderMap, protected: &http::HeaderName) {
    headers.remove(protected);
    let lookalikes: Vec<http::HeaderName> = headers
        .keys()
        .filter(|n| reads_as(n.as_str(), protected.as_str()))
        .cloned()
        .collect();
    for n in lookalikes {
        headers.remove(n);
    }
}

/// Sets the forwarding headers a backend gets, for the WebSocket and the plain-HTTP paths
/// alike: `X-Forwarded-For` (the chain), `X-Real-IP`, `X-Forwarded-Proto`,
/// `X-Forwarded-Host`, `Forwarded` (RFC 7239) and `Via` with this hop (`via_hop`: the
/// protocol version the client spoke, RFC 9110 §7.6.3). A trusted proxy's incoming
/// `Forwarded` is extended, anyone else's replaced; `Via` is always extended (RFC 9110
/// §7.6.3 asks a proxy to append itself: it records hops, it vouches for nothing); the other
/// values come from `client`, which only takes a trusted proxy's word.
pub fn set_headers(
    headers: &mut http::HeaderMap,
    received: &http::HeaderMap,
    client: &ClientAddr,
    (scheme, host): (&str, &str),
    via_hop: &str,
) {
    use http::header::{self, HeaderName, HeaderValue};
    let set = |headers: &mut http::HeaderMap, name: HeaderName, value: &str| {
        if let Ok(v) = HeaderValue::from_str(value) {
            headers.insert(name, v);
        }
    };
    // One scratch string for the values (every handshake writes these five headers).
    let mut value = String::with_capacity(64);
    client.push_chain(&mut value);
    set(headers, HeaderName::from_static("x-forwarded-for"), &value);
    value.clear();
    push_ip(&mut value, client.ip);
    set(headers, HeaderName::from_static("x-real-ip"), &value);
    set(
        headers,
        HeaderName::from_static("x-forwarded-proto"),
        client.proto.as_deref().unwrap_or(scheme),
    );
    // (An HTTP/1.0 request may name no host: then there is none to forward.)
    let forwarded_host = client.host.as_deref().unwrap_or(host);
    if !forwarded_host.is_empty() {
        set(
            headers,
            HeaderName::from_static("x-forwarded-host"),
            forwarded_host,
        );
    }
    value.clear();
    push_forwarded_element(
        &mut value,
        client.peer(),
        scheme,
        Some(host).filter(|h| !h.is_empty()),
    );
    let mut previous = Vec::new();
    if client.peer_trusted {
        joined_lines(received, &header::FORWARDED, &mut previous);
        // A list this hop cannot be appended to as an element of its own (an unclosed quoted
        // string would take it in) is replaced, as junk in `X-Forwarded-For` is.
        if !forwarded_list(&previous) {
            previous.clear();
        }
    }
    if previous.is_empty() {
        set(headers, header::FORWARDED, &value);
    } else {
        previous.extend_from_slice(b", ");
        previous.extend_from_slice(value.as_bytes());
        if let Ok(v) = HeaderValue::from_bytes(&previous) {
            headers.insert(header::FORWARDED, v);
        }
    }
    if let Some(via) = via(received, via_hop) {
        headers.insert(header::VIA, via);
    }
}

/// `Via` as `received` has it, plus this hop (`1.1 wsgate`, `2 wsgate`): on requests to a
/// backend and on the responses it sends back.
pub fn via(received: &http::HeaderMap, via_hop: &str) -> Option<http::HeaderValue> {
    if !received.contains_key(http::header::VIA) {
        // The usual case, without building a string: this hop alone.
        match via_hop {
            "1.1" => return Some(http::HeaderValue::from_static("1.1 wsgate")),
            "2" => return Some(http::HeaderValue::from_static("2 wsgate")),
            _ => {}
        }
    }
    let mut via = Vec::new();
    joined_lines(received, &http::header::VIA, &mut via);
    // An unclosed comment or quoted string would take this hop in: such a list is dropped.
    if !closed(&via) {
        via.clear();
    }
    if !via.is_empty() {
        via.extend_from_slice(b", ");
    }
    via.extend_from_slice(via_hop.as_bytes());
    via.extend_from_slice(b" wsgate");
    http::HeaderValue::from_bytes(&via).ok()
}

/// Every field line of `name` in `received`, joined into one list (RFC 9110 §5.3) in `out`,
/// each line as it was sent: not split at its commas, since a comma inside a quoted string
/// (`for="_a,b"`) or a comment is not a separator, and with its bytes kept (obs-text is
/// allowed in a field value, and a proxy passes it on).
fn joined_lines(received: &http::HeaderMap, name: &http::HeaderName, out: &mut Vec<u8>) {
    for line in received.get_all(name) {
        let line = line.as_bytes().trim_ascii();
        if line.is_empty() {
            continue;
        }
        if !out.is_empty() {
            out.extend_from_slice(b", ");
        }
        out.extend_from_slice(line);
    }
}

/// Whether `v` is a `Forwarded` field value (RFC 7239 §4): elements separated by commas,
/// each pairs `token=value` separated by semicolons, a value a token or a quoted string;
/// white space allowed around the separators, empty list elements skipped (RFC 9110 §5.6.1).
fn forwarded_list(v: &[u8]) -> bool {
    let mut i = 0;
    let ows = |i: &mut usize| {
        while v.get(*i).is_some_and(|b| matches!(b, b' ' | b'\t')) {
            *i += 1;
        }
    };
    loop {
        ows(&mut i);
        // One element: pairs and semicolons, each parameter at most once (RFC 7239 §4:
        // `for=a;for=b` would be read as either by backends that take the first or the last).
        let mut names: Vec<&[u8]> = Vec::new();
        loop {
            let start = i;
            while v
                .get(i)
                .copied()
                .is_some_and(crate::handshake::is_token_byte)
            {
                i += 1;
            }
            if i > start {
                let name = &v[start..i];
                if names.iter().any(|n| n.eq_ignore_ascii_case(name)) {
                    return false;
                }
                names.push(name);
                if v.get(i) != Some(&b'=') {
                    return false;
                }
                i += 1;
                match v.get(i) {
                    Some(b'"') => match quoted_end(v, i) {
                        Some(end) => i = end,
                        None => return false,
                    },
                    _ => {
                        let value = i;
                        while v
                            .get(i)
                            .copied()
                            .is_some_and(crate::handshake::is_token_byte)
                        {
                            i += 1;
                        }
                        if i == value {
                            return false;
                        }
                    }
                }
            }
            ows(&mut i);
            if v.get(i) != Some(&b';') {
                break;
            }
            i += 1;
            ows(&mut i);
        }
        match v.get(i) {
            None => return true,
            Some(b',') => i += 1,
            Some(_) => return false,
        }
    }
}

/// Whether every quoted string and comment (RFC 9110 §5.6.4–5) in `v` is closed.
fn closed(v: &[u8]) -> bool {
    let (mut i, mut depth) = (0, 0usize);
    while i < v.len() {
        match v[i] {
            b'"' if depth == 0 => match quoted_end(v, i) {
                Some(end) => {
                    i = end;
                    continue;
                }
                None => return false,
            },
            b'\\' if depth > 0 => i += 1,
            b'(' => depth += 1,
            b')' if depth > 0 => depth -= 1,
            _ => {}
        }
        i += 1;
    }
    depth == 0
}

/// Past the quoted string that opens at `v[start]` (a `"`), `None` if it does not close.
fn quoted_end(v: &[u8], start: usize) -> Option<usize> {
    let mut i = start + 1;
    while i < v.len() {
        match v[i] {
            b'"' => return Some(i + 1),
            b'\\' => i += 2,
            _ => i += 1,
        }
    }
    None
}

/// One `Forwarded` element (RFC 7239 §4) for this hop: `for` the peer, `proto`, `host`.
pub fn forwarded_element(peer: IpAddr, proto: &str, host: Option<&str>) -> String {
    let mut s = String::with_capacity(48);
    push_forwarded_element(&mut s, peer, proto, host);
    s
}

fn push_forwarded_element(s: &mut String, peer: IpAddr, proto: &str, host: Option<&str>) {
    s.push_str("for=");
    match peer.to_canonical() {
        ip @ IpAddr::V4(_) => push_ip(s, ip),
        // IPv6 node names are bracketed and then quoted (RFC 7239 §6).
        ip @ IpAddr::V6(_) => {
            s.push_str("\"[");
            push_ip(s, ip);
            s.push_str("]\"");
        }
    }
    if let Some(host) = host {
        s.push_str(";host=\"");
        s.extend(host.chars().filter(|c| *c != '"' && *c != '\\'));
        s.push('"');
    }
    s.push_str(";proto=");
    s.push_str(proto);
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::{HeaderMap, HeaderValue};

    #[test]
    fn cidrs() {
        let c = Cidr::parse("10.0.0.0/8").unwrap();
        assert!(c.contains("10.1.2.3".parse().unwrap()));
        assert!(!c.contains("11.0.0.1".parse().unwrap()));
        assert!(c.contains("::ffff:10.0.0.1".parse().unwrap()));
        assert!(
            Cidr::parse("0.0.0.0/0")
                .unwrap()
                .contains("8.8.8.8".parse().unwrap())
        );
        assert!(
            Cidr::parse("2001:db8::/32")
                .unwrap()
                .contains("2001:db8:1::1".parse().unwrap())
        );
        assert!(
            Cidr::parse("127.0.0.1")
                .unwrap()
                .contains("127.0.0.1".parse().unwrap())
        );
        assert!(
            !Cidr::parse("127.0.0.1")
                .unwrap()
                .contains("127.0.0.2".parse().unwrap())
        );
        // An IPv4-mapped block, as a dual-stack socket shows IPv4 peers, holds their IPv4
        // addresses in either spelling.
        let mapped = Cidr::parse("::ffff:127.0.0.0/104").unwrap();
        assert!(mapped.contains("127.0.0.1".parse().unwrap()));
        assert!(mapped.contains("::ffff:127.9.9.9".parse().unwrap()));
        assert!(!mapped.contains("10.0.0.1".parse().unwrap()));
        assert!(!mapped.contains("::1".parse().unwrap()));
        let one = Cidr::parse("::ffff:192.0.2.7").unwrap();
        assert!(one.contains("192.0.2.7".parse().unwrap()));
        assert!(!one.contains("192.0.2.8".parse().unwrap()));
        assert!(
            !Cidr::parse("2001:db8::/32")
                .unwrap()
                .contains("32.1.13.184".parse().unwrap())
        );
        // Only mapped blocks are IPv4 ones: "trust IPv6 peers" does not trust every IPv4 one.
        for v6_only in ["::/0", "::/80", "::ffff:0:0/95"] {
            let c = Cidr::parse(v6_only).unwrap();
            assert!(!c.contains("1.2.3.4".parse().unwrap()), "{v6_only}");
            assert!(!c.contains("::ffff:1.2.3.4".parse().unwrap()), "{v6_only}");
        }
        assert!(
            Cidr::parse("::/0")
                .unwrap()
                .contains("2001:db8::1".parse().unwrap())
        );
        assert!(
            Cidr::parse("::ffff:0:0/96")
                .unwrap()
                .contains("1.2.3.4".parse().unwrap())
        );
        assert!(Cidr::parse("10.0.0.0/33").is_err());
        assert!(Cidr::parse("example.com").is_err());
    }

    /// A trusted proxy's `Forwarded` and anyone's `Via` are passed on as they came, this hop
    /// appended: a comma inside a quoted string is not a list separator (it had become ", "),
    /// and obs-text bytes stay bytes (they had become U+FFFD).
    #[test]
    fn forwarded_and_via_lines_are_extended_as_they_came() {
        let mut received = HeaderMap::new();
        received.append(
            http::header::FORWARDED,
            HeaderValue::from_static(r#"for="_x,y";proto=https"#),
        );
        received.append(
            http::header::FORWARDED,
            HeaderValue::from_bytes(b"for=192.0.2.1;host=\"caf\xe9.example\"").unwrap(),
        );
        received.append(
            http::header::VIA,
            HeaderValue::from_bytes(b"1.1 caf\xe9 (a, b)").unwrap(),
        );
        let trusted = [Cidr::parse("127.0.0.1").unwrap()];
        let client = client_addr(&trusted, "127.0.0.1".parse().unwrap(), &received);
        let mut out = HeaderMap::new();
        set_headers(&mut out, &received, &client, ("http", "app.test"), "1.1");
        assert_eq!(
            out[http::header::FORWARDED].as_bytes(),
            &b"for=\"_x,y\";proto=https, for=192.0.2.1;host=\"caf\xe9.example\", \
               for=127.0.0.1;host=\"app.test\";proto=http"[..]
        );
        assert_eq!(
            out[http::header::VIA].as_bytes(),
            &b"1.1 caf\xe9 (a, b), 1.1 wsgate"[..]
        );
        // From an untrusted peer, `Forwarded` is this hop's alone.
        let client = client_addr(&[], "127.0.0.1".parse().unwrap(), &received);
        let mut out = HeaderMap::new();
        set_headers(&mut out, &received, &client, ("http", "app.test"), "1.1");
        assert_eq!(
            out[http::header::FORWARDED],
            r#"for=127.0.0.1;host="app.test";proto=http"#
        );
    }

    /// A trusted proxy's `Forwarded` that this hop cannot be appended to as an element of its
    /// own is replaced: with an unclosed quoted string (`host="evil.example`), this hop was
    /// read as part of the client's value. So is a `Via` with an unclosed comment or string.
    #[test]
    fn malformed_forwarded_and_via_are_replaced() {
        let trusted = [Cidr::parse("127.0.0.1").unwrap()];
        let ours = r#"for=127.0.0.1;host="app.test";proto=http"#;
        for bad in [
            r#"for=1.1.1.1;host="evil.example"#,
            r#"for=1.1.1.1;host="evil\""#,
            "for=1.1.1.1;host",
            "for=;proto=http",
            "for=1.1.1.1 junk",
            "for=1.1.1.1;;=x",
            "for=\"1.1.1.1\";x=(y)",
            "for=1.2.3.4;for=5.6.7.8",
            "for=1.2.3.4;proto=https;PROTO=http",
        ] {
            let mut received = HeaderMap::new();
            received.insert(http::header::FORWARDED, HeaderValue::from_str(bad).unwrap());
            let client = client_addr(&trusted, "127.0.0.1".parse().unwrap(), &received);
            let mut out = HeaderMap::new();
            set_headers(&mut out, &received, &client, ("http", "app.test"), "1.1");
            assert_eq!(out[http::header::FORWARDED], ours, "{bad}");
        }
        for good in [
            "for=1.1.1.1",
            r#"for="[2001:db8::1]:80";proto=https , for=unknown"#,
            "for=1.1.1.1;;proto=http,,for=2.2.2.2",
            "for=1.1.1.1;proto=http, for=2.2.2.2;proto=https",
            r#"for=x;host="a\"b""#,
        ] {
            let mut received = HeaderMap::new();
            received.insert(
                http::header::FORWARDED,
                HeaderValue::from_str(good).unwrap(),
            );
            let client = client_addr(&trusted, "127.0.0.1".parse().unwrap(), &received);
            let mut out = HeaderMap::new();
            set_headers(&mut out, &received, &client, ("http", "app.test"), "1.1");
            assert_eq!(
                out[http::header::FORWARDED],
                format!("{good}, {ours}"),
                "{good}"
            );
        }
        for (sent, passed) in [
            ("1.1 a (b", "1.1 wsgate"),
            (r#"1.1 a "b"#, "1.1 wsgate"),
            ("1.1 a (b (c) \\) d)", "1.1 a (b (c) \\) d), 1.1 wsgate"),
        ] {
            let mut received = HeaderMap::new();
            received.insert(http::header::VIA, HeaderValue::from_str(sent).unwrap());
            assert_eq!(via(&received, "1.1").unwrap(), passed, "{sent}");
        }
    }

    /// A forwarded IPv4-mapped address is its IPv4 address, as a peer's is.
    #[test]
    fn a_forwarded_ipv4_mapped_address_is_its_ipv4_address() {
        let mut h = HeaderMap::new();
        h.insert(
            "x-forwarded-for",
            HeaderValue::from_static("::ffff:192.0.2.1, [::ffff:10.1.1.1]:80"),
        );
        let trusted = [Cidr::parse("10.0.0.0/8").unwrap()];
        let c = client_addr(&trusted, "10.0.0.1".parse().unwrap(), &h);
        assert_eq!(c.ip, "192.0.2.1".parse::<IpAddr>().unwrap());
        assert_eq!(c.chain_header(), "192.0.2.1, 10.1.1.1, 10.0.0.1");
    }

    /// Empty list elements are skipped, not taken for garbage (which drops what is left
    /// of it): the client behind a trusted proxy is still found.
    #[test]
    fn empty_forwarded_for_elements_are_ignored() {
        let mut h = HeaderMap::new();
        h.insert(
            "x-forwarded-for",
            HeaderValue::from_static("203.0.113.9 , ,10.1.1.1,"),
        );
        let trusted = [Cidr::parse("10.0.0.0/8").unwrap()];
        let c = client_addr(&trusted, "10.0.0.1".parse().unwrap(), &h);
        assert_eq!(c.ip, "203.0.113.9".parse::<IpAddr>().unwrap());
        assert_eq!(c.chain_header(), "203.0.113.9, 10.1.1.1, 10.0.0.1");
        h.insert(
            "x-forwarded-for",
            HeaderValue::from_static("203.0.113.9, junk, 10.1.1.1"),
        );
        let c = client_addr(&trusted, "10.0.0.1".parse().unwrap(), &h);
        assert_eq!(
            c.chain_header(),
            "10.1.1.1, 10.0.0.1",
            "garbage still drops its left"
        );
    }

    /// A field (or an element) with a byte past ASCII is an entry that is not an address:
    /// what is left of it is dropped, what is right of it (the trusted proxies' part) read
    /// on. Reading stopped at such a field, so a client behind a trusted proxy that sent
    /// `X-Forwarded-For: 6.6.6.6` and one with `\x80` was taken for 6.6.6.6 (escaping its
    /// per-IP limits), and with the three in one field, for the proxy itself.
    #[test]
    fn a_field_past_ascii_does_not_hide_the_trusted_part() {
        let trusted = [Cidr::parse("127.0.0.1").unwrap()];
        let peer = "127.0.0.1".parse().unwrap();
        let odd = HeaderValue::from_bytes(b"\x80").unwrap();
        let mut h = HeaderMap::new();
        h.append("x-forwarded-for", HeaderValue::from_static("6.6.6.6"));
        h.append("x-forwarded-for", odd);
        h.append("x-forwarded-for", HeaderValue::from_static("10.9.9.9"));
        let c = client_addr(&trusted, peer, &h);
        assert_eq!(c.ip, "10.9.9.9".parse::<IpAddr>().unwrap());
        assert_eq!(c.chain_header(), "10.9.9.9, 127.0.0.1");
        let mut h = HeaderMap::new();
        h.insert(
            "x-forwarded-for",
            HeaderValue::from_bytes(b"7.7.7.7, 1.2.3.4\xff, 10.9.9.9").unwrap(),
        );
        let c = client_addr(&trusted, peer, &h);
        assert_eq!(c.ip, "10.9.9.9".parse::<IpAddr>().unwrap());
        assert_eq!(c.chain_header(), "10.9.9.9, 127.0.0.1");
    }

    #[test]
    fn client_behind_trusted_proxies() {
        let trusted = [Cidr::parse("10.0.0.0/8").unwrap()];
        let mut h = HeaderMap::new();
        h.insert(
            "x-forwarded-for",
            HeaderValue::from_static("6.6.6.6, 1.2.3.4, 10.0.0.7"),
        );
        // Untrusted peer: the header is ignored.
        let a = client_addr(&trusted, "5.5.5.5".parse().unwrap(), &h);
        assert_eq!(a.ip.to_string(), "5.5.5.5");
        assert_eq!(a.chain.len(), 1);
        assert!(!a.peer_trusted);
        // Trusted peer: skip trusted hops from the right; 6.6.6.6 is the client's claim only.
        let a = client_addr(&trusted, "10.0.0.1".parse().unwrap(), &h);
        assert_eq!(a.ip.to_string(), "1.2.3.4");
        assert_eq!(a.chain.len(), 4);
        // A garbage entry: nothing left of it counts.
        h.insert(
            "x-forwarded-for",
            HeaderValue::from_static("1.1.1.1, unknown, 2.2.2.2"),
        );
        assert_eq!(
            forwarded_for(&h),
            vec!["2.2.2.2".parse::<IpAddr>().unwrap()]
        );
        assert_eq!(
            forwarded_element("2001:db8::1".parse().unwrap(), "https", Some("a.test")),
            "for=\"[2001:db8::1]\";host=\"a.test\";proto=https"
        );
    }
}
