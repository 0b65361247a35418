//! The head of a plain request on its way to the backend and of the response on its way
//! back: body framing checked, hop-by-hop headers removed (RFC 9110 §7.6.1, those named in
//! `Connection` included), forwarding and correlation headers set as on the WebSocket path,
//! `Via` appended (RFC 9110 §7.6.3).

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::request::Parts;
use http::{Version, uri};

use crate::backend::wire::push_field;
use crate::config::BackendUrl;
use crate::handshake::list_values;
use crate::policy::forwarding::{self, ClientAddr};
use crate::telemetry::correlation::{Correlation, X_REQUEST_ID};

/// Hop-by-hop headers (RFC 9110 §7.6.1 and the obsolete ones still sent): they describe one
/// connection, never the message, in either direction.
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "proxy-connection",
    "keep-alive",
    "te",
    "transfer-encoding",
    "upgrade",
    // An h2c upgrade's settings (RFC 7540 §3.2.1: connection-specific), dropped with the
    // `Upgrade` even when the client's `Connection` fails to name it.
    "http2-settings",
];

/// Request headers the proxy sets itself besides [`forwarding::SET_BY_THE_PROXY`]: the
/// client's are never copied. `Content-Length` is written once from the checked value
/// (hyper's front end holds the body to it), so the backend frames exactly the bytes it gets;
/// `Expect: 100-continue` was answered by the proxy's own server when it started reading the
/// body.
const REBUILT: &[&str] = &["host", "content-length", "expect", "cookie"];

/// Refuses body framing two parsers could read differently (request smuggling, RFC 9112
/// §6.1 and §6.3): `Content-Length` beside `Transfer-Encoding`, several `Content-Length`
/// values that differ, a transfer coding other than a single `chunked`. hyper's HTTP/1.1
/// parser already refuses some of these and resolves `Content-Length` beside
/// `Transfer-Encoding` by dropping the length and closing after the response; HTTP/2 has no
/// `Transfer-Encoding` at all (the h2 codec resets such a stream). This is the proxy's own
/// check of what reaches it, whatever the front end let through.
pub fn check_framing(parts: &Parts) -> Result<(), &'static str> {
    let h = &parts.headers;
    let lengths: Vec<&[u8]> = h
        .get_all(header::CONTENT_LENGTH)
        .iter()
        .map(|v| v.as_bytes().trim_ascii())
        .collect();
    if h.contains_key(header::TRANSFER_ENCODING) {
        if !lengths.is_empty() {
            return Err("Content-Length together with Transfer-Encoding");
        }
        let codings = list_values(h, &header::TRANSFER_ENCODING);
        if !matches!(codings.as_slice(), [one] if one.eq_ignore_ascii_case("chunked")) {
            return Err("Transfer-Encoding other than chunked");
        }
    }
    if lengths
        .iter()
        .any(|l| l.is_empty() || !l.iter().all(u8::is_ascii_digit))
    {
        return Err("invalid Content-Length");
    }
    if lengths.windows(2).any(|w| w[0] != w[1]) {
        return Err("several differing Content-Length values");
    }
    // RFC 9113 §8.2.1: a field value with whitespace at either end makes an HTTP/2 request
    // malformed (HTTP/1.1's parser trims it; the h2 codec passes it on).
    if parts.version == Version::HTTP_2
        && h.values().any(|v| {
            let b = v.as_bytes();
            matches!(b.first(), Some(b' ' | b'\t')) || matches!(b.last(), Some(b' ' | b'\t'))
        })
    {
        return Err("a field value with whitespace at its start or end (HTTP/2)");
    }
    Ok(())
}

/// The declared body length, if the request has one (checked by [`check_framing`]).
pub fn content_length(headers: &HeaderMap) -> Option<u64> {
    let v = headers.get(header::CONTENT_LENGTH)?;
    std::str::from_utf8(v.as_bytes()).ok()?.trim().parse().ok()
}

/// `Max-Forwards` is not one run of digits (or is on several field lines).
#[derive(Debug, PartialEq, Eq)]
pub struct InvalidMaxForwards;

/// How many more intermediaries may forward an OPTIONS or TRACE request (RFC 9110 §7.6.2:
/// each must check and lower it, and answer the request itself at 0): `None` for other
/// methods, which may ignore it, and when the request has none. A value too long for a
/// `u64` is as good as unbounded. Not one run of digits, or on several lines, is refused
/// (Apache's proxy answers 400 too): a guess could loop a TRACE or skip a hop.
pub fn max_forwards(parts: &Parts) -> Result<Option<u64>, InvalidMaxForwards> {
    if !matches!(parts.method, http::Method::OPTIONS | http::Method::TRACE) {
        return Ok(None);
    }
    let mut values = parts.headers.get_all(header::MAX_FORWARDS).iter();
    let Some(v) = values.next() else {
        return Ok(None);
    };
    let digits = v.as_bytes().trim_ascii();
    if values.next().is_some() || digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return Err(InvalidMaxForwards);
    }
    Ok(Some(digits.iter().fold(0u64, |n, d| {
        n.saturating_mul(10).saturating_add(u64::from(d - b'0'))
    })))
}

/// Request fields a TRACE answer leaves out (RFC 9110 §9.3.8: the final recipient should
/// exclude what is likely to carry sensitive data). Credentials a browser adds on its own
/// are what cross-site tracing would read back.
const NOT_TRACED: &[HeaderName] = &[
    header::COOKIE,
    header::AUTHORIZATION,
    header::PROXY_AUTHORIZATION,
];

/// The request as received, as the content of a TRACE answer (`message/http`, RFC 9110
/// §9.3.8): the request line and the fields but [`NOT_TRACED`]. An HTTP/2 request's
/// `:authority` is written as `host`.
pub fn trace_echo(parts: &Parts) -> Vec<u8> {
    let mut out = Vec::with_capacity(256);
    let target = parts.uri.path_and_query().map_or("/", |pq| pq.as_str());
    let version = match parts.version {
        Version::HTTP_2 => "HTTP/2",
        Version::HTTP_10 => "HTTP/1.0",
        _ => "HTTP/1.1",
    };
    for part in [parts.method.as_str(), " ", target, " ", version, "\r\n"] {
        out.extend_from_slice(part.as_bytes());
    }
    if let Some(authority) = parts
        .uri
        .authority()
        .filter(|_| parts.version == Version::HTTP_2)
    {
        push_field(&mut out, "host", authority.as_str().as_bytes());
    }
    for (name, value) in &parts.headers {
        if !NOT_TRACED.contains(name) {
            push_field(&mut out, name.as_str(), value.as_bytes());
        }
    }
    out.extend_from_slice(b"\r\n");
    out
}

/// The host the client asked for: the target's authority (absolute form, HTTP/2
/// `:authority`), else `Host` (the request target phase made them agree).
pub fn request_host(parts: &Parts) -> Option<&str> {
    match parts.uri.authority() {
        Some(a) => Some(a.as_str()),
        None => parts.headers.get(header::HOST)?.to_str().ok(),
    }
}

/// What the backend request says about the client and the request's ids.
pub struct Forwarding<'a> {
    pub client: &'a ClientAddr,
    /// `http` or `https`, as the client connected.
    pub scheme: &'static str,
    /// The host the client asked for.
    pub host: &'a str,
    /// The client's HTTP version, for `Via`.
    pub version: Version,
    pub correlation: &'a Correlation,
    /// The listener's client-certificate header and the verified subject (if any).
    pub client_subject: Option<(&'a HeaderName, Option<&'a str>)>,
    /// Every listener's client-certificate header (`Config::subject_headers`): a client's
    /// own header of any of these names is dropped, on every listener, so none can be forged.
    pub subject_headers: &'a [HeaderName],
    /// The route's policy, whose own headers pass whatever their names
    /// ([`RoutePolicy::sets_header`](crate::policy::RoutePolicy::sets_header)).
    pub policy: &'a crate::policy::RoutePolicy,
}

/// The backend request's headers, all but `Host` (which depends on the backend): the
/// client's end-to-end headers, then the proxy's. Every value is a [`HeaderValue`] the front
/// end already parsed, so no header of an HTTP/2 request can smuggle a line break into the
/// HTTP/1.1 request (the h2 codec refuses such values, and `HeaderValue` cannot hold them).
pub fn request_headers(client: &HeaderMap, f: &Forwarding<'_>) -> HeaderMap {
    let mut headers = forwarding::end_to_end(
        client,
        f.client.peer_trusted,
        |name| HOP_BY_HOP.contains(&name.as_str()) || REBUILT.contains(&name.as_str()),
        |name| f.policy.sets_header(name),
    );
    if let Some(n) = content_length(client) {
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(n));
    }
    // `TE: trailers` is the one TE the backend must see to send trailers (gRPC-style
    // backends insist on it); any other coding is this hop's business. TE is hop-by-hop, so
    // its sender names it in `Connection` too (RFC 9110 §10.1.4; nothing else of the
    // client's `Connection` is passed on). An HTTP/2 backend's request goes without it
    // (`backend_request`: hyper's HTTP/2 client would drop TE with it).
    if list_values(client, &header::TE)
        .iter()
        .any(|t| t.eq_ignore_ascii_case("trailers"))
    {
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
        headers.insert(header::CONNECTION, HeaderValue::from_static("te"));
    }
    forwarding::set_client_subject(&mut headers, f.subject_headers, f.client_subject);
    set_forwarding(&mut headers, client, f);
    headers
}

/// `X-Forwarded-*`, `X-Real-IP`, `Forwarded`, `Via` (as the WebSocket path sets them, see
/// [`forwarding::set_headers`]) and the correlation ids.
fn set_forwarding(headers: &mut HeaderMap, client: &HeaderMap, f: &Forwarding<'_>) {
    forwarding::set_headers(
        headers,
        client,
        f.client,
        (f.scheme, f.host),
        via_version(f.version),
    );
    for (name, value) in f.correlation.backend_headers() {
        headers.insert(name, value);
    }
}

fn via_version(v: Version) -> &'static str {
    match v {
        Version::HTTP_09 => "0.9",
        Version::HTTP_10 => "1.0",
        Version::HTTP_2 => "2",
        Version::HTTP_3 => "3",
        _ => "1.1",
    }
}

/// Why a backend's response head cannot be forwarded (a 502 to the client).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BadResponse(pub &'static str);

/// Checks how the backend framed its response and leaves only what the client's connection
/// frames it by (RFC 9112 §6.3, which a proxy must follow before forwarding): a response with
/// `Transfer-Encoding` loses any `Content-Length` (it was framed by the chunked coding, and
/// the client's connection frames it anew), a `Content-Length` listing one value several
/// times becomes that value, a 204 carries none (RFC 9110 §8.6). Refused: a 101 (nothing
/// asked to switch protocols: a plain request's `Upgrade` is never forwarded), a transfer
/// coding other than chunked (hyper decodes only chunked, and the coding would be lost on
/// the way: the client would take gzip bytes for the content), `Content-Length` values that
/// disagree or are not numbers, a status code past 599.
pub fn response_framing(
    status: http::StatusCode,
    headers: &mut HeaderMap,
) -> Result<(), BadResponse> {
    if status == http::StatusCode::SWITCHING_PROTOCOLS {
        return Err(BadResponse("backend switched protocols unasked (101)"));
    }
    if status.as_u16() > 599 {
        // RFC 9110 §15: a status code is 100 to 599 (hyper's parser takes any three digits).
        return Err(BadResponse("backend answered a status code past 599"));
    }
    if headers.contains_key(header::TRANSFER_ENCODING) {
        let codings = list_values(headers, &header::TRANSFER_ENCODING);
        if codings.len() != 1 || !codings[0].eq_ignore_ascii_case("chunked") {
            return Err(BadResponse(
                "backend response has a transfer coding other than chunked",
            ));
        }
        headers.remove(header::CONTENT_LENGTH);
    } else if headers.contains_key(header::CONTENT_LENGTH) {
        let values = list_values(headers, &header::CONTENT_LENGTH);
        let first = values.first().and_then(|v| v.parse::<u64>().ok());
        match first {
            Some(n) if values.iter().all(|v| v.parse::<u64>().ok() == Some(n)) => {
                headers.insert(header::CONTENT_LENGTH, HeaderValue::from(n));
            }
            _ => {
                return Err(BadResponse(
                    "backend response has an invalid Content-Length",
                ));
            }
        }
    }
    if status == http::StatusCode::NO_CONTENT || status.is_informational() {
        headers.remove(header::CONTENT_LENGTH);
    }
    Ok(())
}

/// Fields a trailer section must not carry (RFC 9110 §6.5.1), besides the [`HOP_BY_HOP`]
/// ones (which an HTTP/2 peer takes for a malformed message there, RFC 9113 §8.2.2).
const NOT_IN_TRAILERS: &[&str] = &[
    "trailer",
    "content-length",
    "content-encoding",
    "content-type",
    "content-range",
    "host",
    "authorization",
    "set-cookie",
];

/// The backend's trailer fields as the client may have them: what [`HOP_BY_HOP`] and
/// [`NOT_IN_TRAILERS`] name and whatever a `Connection` among them names are dropped.
pub fn response_trailers(trailers: &mut HeaderMap) {
    remove_with_named(trailers, HOP_BY_HOP);
    for name in NOT_IN_TRAILERS {
        trailers.remove(*name);
    }
}

/// The trailer fields a client's request may pass to the backend: those its `Trailer`
/// field declared (RFC 9110 §6.6.2; hyper's HTTP/1.1 client sends no other, and now neither
/// does an HTTP/2 hop) but for any a trailer section must not carry ([`HOP_BY_HOP`],
/// [`NOT_IN_TRAILERS`], credentials and `Proxy-*`), any the proxy builds itself, any the
/// backend request's head (`head`) carries, any with an underscore, and the route's
/// `managed` ones (its policy's `set_headers` and `strip_headers`, forward-auth's
/// `copy_headers`). A trailer must not say what the head said for the
/// proxy: a backend that merges trailers into its headers (as Apache's `MergeTrailers` did,
/// CVE-2013-5704) would otherwise take a client's `X-User` or `X-Real-IP` over the proxy's.
/// At most [`MAX_TRAILER_NAMES`] are allowed, the first declared.
pub fn request_trailer_names<'a>(
    head: &http::HeaderMap,
    managed: impl Iterator<Item = &'a HeaderName> + Clone,
) -> Vec<HeaderName> {
    let mut allowed: Vec<HeaderName> = Vec::new();
    for name in list_values(head, &header::TRAILER) {
        let Ok(name) = HeaderName::from_bytes(name.as_bytes()) else {
            continue;
        };
        let n = name.as_str();
        let forbidden = HOP_BY_HOP.contains(&n)
            || NOT_IN_TRAILERS.contains(&n)
            || REBUILT.contains(&n)
            || forwarding::SET_BY_THE_PROXY.contains(&n)
            || crate::policy::RESERVED_HEADERS.contains(&n)
            || n.starts_with("proxy-")
            || n.starts_with("x-forwarded-")
            || n == "max-forwards"
            // A look-alike with underscores (`x_real_ip`), which CGI-style backends read as
            // the dashed name (`policy::forwarding::reads_as`).
            || n.contains('_')
            || head.contains_key(&name)
            || managed
                .clone()
                .any(|m| forwarding::reads_as(n, m.as_str()));
        if !forbidden && !allowed.contains(&name) {
            allowed.push(name);
            if allowed.len() == MAX_TRAILER_NAMES {
                break;
            }
        }
    }
    allowed
}

/// The most trailer fields a request may pass on: a request declares a checksum or two.
/// Each name is compared with those before it, and a client's head of 8,000 declared names
/// cost a worker 97 ms a request.
pub const MAX_TRAILER_NAMES: usize = 32;

/// Keeps the fields of a request's trailer section that [`request_trailer_names`] allowed.
pub fn request_trailers(trailers: &mut http::HeaderMap, allowed: &[HeaderName]) {
    if allowed.is_empty() {
        trailers.clear();
        return;
    }
    let names: Vec<HeaderName> = trailers.keys().cloned().collect();
    for name in names {
        if !allowed.contains(&name) {
            trailers.remove(&name);
        }
    }
}

/// Removes the fields `names` lists and those a `Connection` field among them names.
fn remove_with_named(headers: &mut HeaderMap, names: &[&str]) {
    let named = list_values(headers, &header::CONNECTION);
    for name in names {
        headers.remove(*name);
    }
    for name in named {
        if let Ok(name) = HeaderName::from_bytes(name.as_bytes()) {
            headers.remove(name);
        }
    }
}

/// The backend's response head made the client's: hop-by-hop headers out, `Via` with the
/// protocol the backend spoke, the request id.
pub fn response_headers(headers: &mut HeaderMap, backend_version: Version, ids: &Correlation) {
    remove_with_named(headers, HOP_BY_HOP);
    if let Some(via) = forwarding::via(headers, via_version(backend_version)) {
        headers.insert(header::VIA, via);
    }
    headers.insert(X_REQUEST_ID, ids.request_id_header());
}

/// A `Location` that points at the backend's own URL becomes a relative reference under the
/// route's prefix, as nginx's default `proxy_redirect` makes it: a backend that redirects to
/// its own (internal) address then sends the client back through the proxy, on the host and
/// scheme it came by. `http://10.0.0.5:8080/login` from a backend `http://10.0.0.5:8080`
/// becomes `/login`; with the backend URL `http://10.0.0.5:8080/app` on the route `/chat`,
/// `http://10.0.0.5:8080/app/room?x=1` becomes `/chat/room?x=1`. Any other `Location`
/// (relative, or another host's) passes unchanged.
pub fn rewrite_location(headers: &mut HeaderMap, backend: &BackendUrl, route_prefix: &str) {
    let Some(location) = headers.get(header::LOCATION).and_then(|v| v.to_str().ok()) else {
        return;
    };
    let scheme = if backend.tls { "https://" } else { "http://" };
    let Some(rest) = strip_prefix_ignore_case(location, scheme) else {
        return;
    };
    let default_port = if backend.tls { 443 } else { 80 };
    let with_port = format!("{}:{}", backend.host, backend.port);
    let forms = [
        Some(backend.authority.as_str()),
        Some(with_port.as_str()),
        (backend.port == default_port).then_some(backend.host.as_str()),
    ];
    let Some(after) = forms
        .into_iter()
        .flatten()
        .find_map(|a| strip_prefix_ignore_case(rest, a).filter(|r| at_boundary(r)))
    else {
        return;
    };
    let new = match backend.path.as_deref() {
        None if after.starts_with('/') => after.to_string(),
        None => format!("/{after}"),
        Some(base) => {
            let Some(tail) = after
                .strip_prefix(base.trim_end_matches('/'))
                .filter(|t| at_boundary(t))
            else {
                return;
            };
            let prefix = route_prefix.trim_end_matches('/');
            match tail {
                "" | "/" if prefix.is_empty() => "/".to_string(),
                "" => route_prefix.to_string(),
                _ if tail.starts_with('/') => format!("{prefix}{tail}"),
                _ => format!(
                    "{}{tail}",
                    if prefix.is_empty() { "/" } else { route_prefix }
                ),
            }
        }
    };
    // A path that begins `//` (or `/\`, which browsers read the same way) would read as a
    // network-path reference, another host: `http://backend//evil.example/x` must not
    // become `//evil.example/x`. Browsers drop tabs and line breaks from a URL before they
    // parse it, so `/\t/evil.example` is the same. Such a `Location` stays as the backend
    // sent it.
    let mut second = new[1..]
        .chars()
        .filter(|c| !matches!(c, '\t' | '\n' | '\r'));
    if matches!(second.next(), Some('/' | '\\')) {
        return;
    }
    if let Ok(v) = HeaderValue::from_str(&new) {
        headers.insert(header::LOCATION, v);
    }
}

/// `s` without `prefix`, compared ASCII-case-insensitively (schemes and host names).
fn strip_prefix_ignore_case<'s>(s: &'s str, prefix: &str) -> Option<&'s str> {
    let head = s.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| &s[prefix.len()..])
}

/// Whether `rest` starts where a URL's authority or path segment may end.
fn at_boundary(rest: &str) -> bool {
    rest.is_empty() || rest.starts_with(['/', '?', '#'])
}

/// `scheme://authority` + the backend path, as the pooled client needs it (it connects by
/// the URI and writes the origin form on HTTP/1.1).
pub fn backend_uri(tls: bool, authority: &str, path_and_query: &str) -> Option<http::Uri> {
    http::Uri::builder()
        .scheme(if tls {
            uri::Scheme::HTTPS
        } else {
            uri::Scheme::HTTP
        })
        .authority(authority)
        .path_and_query(path_and_query)
        .build()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn located(location: &str, backend: &str, route_prefix: &str) -> String {
        let config = crate::config::from_toml_str(&format!(
            "[[listener]]\nlisten=\"127.0.0.1:0\"\n[[route]]\nname=\"r\"\npath=\"{route_prefix}\"\n\
             backends=[\"{backend}\"]\n"
        ))
        .unwrap();
        let url = &config.routes[0].backends[0];
        let mut headers = HeaderMap::new();
        headers.insert(header::LOCATION, HeaderValue::from_str(location).unwrap());
        rewrite_location(&mut headers, url, &config.routes[0].path);
        headers[header::LOCATION].to_str().unwrap().to_string()
    }

    /// At most `MAX_TRAILER_NAMES` declared trailers are allowed, the first declared: each is
    /// compared with those before it, and 8,000 names cost a worker 97 ms a request.
    #[test]
    fn declared_trailers_are_bounded() {
        let names: Vec<String> = (0..8000).map(|i| format!("x-t{i}")).collect();
        let mut head = HeaderMap::new();
        head.insert(
            header::TRAILER,
            HeaderValue::from_str(&names.join(", ")).unwrap(),
        );
        let allowed = request_trailer_names(&head, std::iter::empty());
        assert_eq!(allowed.len(), MAX_TRAILER_NAMES);
        assert_eq!(allowed[0], "x-t0");
        assert_eq!(
            allowed[MAX_TRAILER_NAMES - 1].as_str(),
            format!("x-t{}", MAX_TRAILER_NAMES - 1)
        );
        // Names that are dropped take no place.
        head.insert(
            header::TRAILER,
            HeaderValue::from_static("x-real-ip, x-a, x-a, x-b"),
        );
        assert_eq!(
            request_trailer_names(&head, std::iter::empty()),
            ["x-a", "x-b"]
        );
    }

    #[test]
    fn max_forwards_is_read_for_options_and_trace_only() {
        let parts = |method: &str, values: &[&str]| {
            let mut b = http::Request::builder().method(method).uri("/");
            for v in values {
                b = b.header(header::MAX_FORWARDS, *v);
            }
            b.body(()).unwrap().into_parts().0
        };
        assert_eq!(max_forwards(&parts("OPTIONS", &["5"])), Ok(Some(5)));
        assert_eq!(max_forwards(&parts("TRACE", &[" 0 "])), Ok(Some(0)));
        assert_eq!(max_forwards(&parts("OPTIONS", &[])), Ok(None));
        assert_eq!(
            max_forwards(&parts("TRACE", &["99999999999999999999999"])),
            Ok(Some(u64::MAX))
        );
        assert_eq!(max_forwards(&parts("GET", &["x"])), Ok(None));
        for bad in [&["+1"][..], &["1.0"], &["0x1"], &["1", "2"]] {
            assert_eq!(
                max_forwards(&parts("OPTIONS", bad)),
                Err(InvalidMaxForwards),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn a_location_at_the_backend_s_own_url_comes_back_through_the_proxy() {
        let b = "ws://10.0.0.5:8080";
        assert_eq!(
            located("http://10.0.0.5:8080/login?next=/", b, "/"),
            "/login?next=/"
        );
        assert_eq!(located("HTTP://10.0.0.5:8080", b, "/"), "/");
        assert_eq!(located("http://10.0.0.5:8080?x", b, "/"), "/?x");
        // Not the backend: another port, another host, another scheme, a longer host.
        for other in [
            "http://10.0.0.5:8081/login",
            "http://example.com/login",
            "https://10.0.0.5:8080/login",
            "http://10.0.0.5:80800/login",
            "/relative",
        ] {
            assert_eq!(located(other, b, "/"), other);
        }
        // The default port, written or not.
        assert_eq!(located("http://app/x", "ws://app", "/"), "/x");
        assert_eq!(located("http://app:80/x", "ws://app", "/"), "/x");
        assert_eq!(located("https://app/x", "wss://app:443", "/"), "/x");
        // A path that would read as another host's URL (`//host`, or `/\host` as browsers
        // read it) stays as the backend sent it.
        for open in [
            "http://10.0.0.5:8080//evil.example/x",
            "http://10.0.0.5:8080/\\evil.example/x",
            "http://10.0.0.5:8080/\t/evil.example/x",
            "http://10.0.0.5:8080/\t\t\\evil.example/x",
        ] {
            assert_eq!(located(open, b, "/"), open);
        }
        assert_eq!(
            located(
                "http://10.0.0.5:8080/app//evil.example",
                "ws://10.0.0.5:8080/app",
                "/"
            ),
            "http://10.0.0.5:8080/app//evil.example"
        );
        assert_eq!(
            located(
                "http://10.0.0.5:8080/app//x",
                "ws://10.0.0.5:8080/app",
                "/chat"
            ),
            "/chat//x"
        );
    }

    #[test]
    fn a_backend_path_maps_back_to_the_route_s_prefix() {
        let b = "ws://10.0.0.5:8080/app";
        assert_eq!(
            located("http://10.0.0.5:8080/app/room?x=1", b, "/chat"),
            "/chat/room?x=1"
        );
        assert_eq!(located("http://10.0.0.5:8080/app", b, "/chat"), "/chat");
        assert_eq!(located("http://10.0.0.5:8080/app?x", b, "/chat"), "/chat?x");
        assert_eq!(located("http://10.0.0.5:8080/app/", b, "/"), "/");
        // Outside the backend's path: left alone.
        let outside = "http://10.0.0.5:8080/application";
        assert_eq!(located(outside, b, "/chat"), outside);
    }

    fn parts(headers: &[(&str, &str)]) -> Parts {
        let mut b = http::Request::post("/x");
        for (n, v) in headers {
            b = b.header(*n, *v);
        }
        b.body(()).unwrap().into_parts().0
    }

    #[test]
    fn ambiguous_framing_is_refused() {
        let refused = |h: &[(&str, &str)]| match check_framing(&parts(h)) {
            Err(why) => why,
            Ok(()) => panic!("{h:?} passed"),
        };
        assert!(check_framing(&parts(&[("content-length", "5")])).is_ok());
        assert!(check_framing(&parts(&[("transfer-encoding", "chunked")])).is_ok());
        assert!(check_framing(&parts(&[("content-length", "5"), ("content-length", "5")])).is_ok());
        assert_eq!(
            refused(&[("content-length", "5"), ("transfer-encoding", "chunked")]),
            "Content-Length together with Transfer-Encoding"
        );
        assert_eq!(
            refused(&[("content-length", "5"), ("content-length", "6")]),
            "several differing Content-Length values"
        );
        assert_eq!(
            refused(&[("transfer-encoding", "gzip, chunked")]),
            "Transfer-Encoding other than chunked"
        );
        assert_eq!(
            refused(&[
                ("transfer-encoding", "chunked"),
                ("transfer-encoding", "chunked")
            ]),
            "Transfer-Encoding other than chunked"
        );
        assert_eq!(
            refused(&[("content-length", "+5")]),
            "invalid Content-Length"
        );
    }

    #[test]
    fn hop_by_hop_headers_and_those_named_in_connection_are_dropped() {
        let client = parts(&[
            ("connection", "keep-alive, x-secret"),
            ("keep-alive", "timeout=5"),
            ("x-secret", "1"),
            ("upgrade", "h2c"),
            ("te", "trailers, deflate"),
            ("proxy-authorization", "Basic x"),
            ("x-forwarded-for", "6.6.6.6"),
            ("expect", "100-continue"),
            ("content-length", "3"),
            ("content-length", "3"),
            ("cookie", "a=1"),
            ("cookie", "b=2"),
            ("accept", "text/html"),
        ]);
        let addr = forwarding::client_addr(&[], "10.0.0.1".parse().unwrap(), &client.headers);
        let ids = Correlation::of_request(&client.headers, false);
        let f = Forwarding {
            client: &addr,
            scheme: "http",
            host: "example.com",
            version: Version::HTTP_2,
            correlation: &ids,
            client_subject: None,
            subject_headers: &[],
            policy: &Default::default(),
        };
        let h = request_headers(&client.headers, &f);
        for gone in [
            "keep-alive",
            "x-secret",
            "upgrade",
            "proxy-authorization",
            "expect",
        ] {
            assert!(!h.contains_key(gone), "{gone} was forwarded");
        }
        assert_eq!(h.get_all("content-length").iter().count(), 1);
        assert_eq!(h["te"], "trailers");
        // Only the TE option of the client's `Connection` (RFC 9110 §10.1.4).
        assert_eq!(h.get_all("connection").iter().collect::<Vec<_>>(), ["te"]);
        let plain = parts(&[("connection", "keep-alive"), ("te", "gzip")]);
        let p = request_headers(&plain.headers, &f);
        assert!(
            !p.contains_key("te") && !p.contains_key("connection"),
            "{p:?}"
        );
        assert_eq!(h["cookie"], "a=1; b=2");
        assert_eq!(h["accept"], "text/html");
        assert_eq!(h["x-forwarded-for"], "10.0.0.1");
        assert_eq!(h["via"], "2 wsgate");
        assert_eq!(h["x-forwarded-host"], "example.com");
        // Any listener's subject header, and its look-alikes, is the proxy's to set: a
        // client's own is dropped on every listener, whether this one set it or not.
        let name = HeaderName::from_static("x-client-subject");
        let forged = parts(&[
            ("x-client-subject", "CN=admin"),
            ("x_client_subject", "CN=a"),
        ]);
        let mut elsewhere = f;
        elsewhere.subject_headers = std::slice::from_ref(&name);
        let h = request_headers(&forged.headers, &elsewhere);
        assert!(!h.contains_key("x-client-subject") && !h.contains_key("x_client_subject"));
    }

    #[test]
    fn response_loses_hop_by_hop_and_gains_via() {
        let mut h = HeaderMap::new();
        h.insert("connection", HeaderValue::from_static("close, x-hop"));
        h.insert("x-hop", HeaderValue::from_static("1"));
        h.insert("transfer-encoding", HeaderValue::from_static("chunked"));
        h.insert("via", HeaderValue::from_static("1.0 cdn"));
        h.insert("trailer", HeaderValue::from_static("x-checksum"));
        let ids = Correlation::of_request(&HeaderMap::new(), false);
        response_headers(&mut h, Version::HTTP_11, &ids);
        assert!(!h.contains_key("connection") && !h.contains_key("x-hop"));
        assert!(!h.contains_key("transfer-encoding"));
        assert_eq!(h["via"], "1.0 cdn, 1.1 wsgate");
        assert_eq!(h["trailer"], "x-checksum");
        assert!(h.contains_key("x-request-id"));
    }
}
