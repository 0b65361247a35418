//! The client's opening handshake (RFC 6455 §4.2.1), checked as a pure function over the
//! request parts, and the pieces of the answer (§4.2.2).
//!
//! hyper checks almost none of this: it accepts a missing `Host`, ignores the `Connection`
//! token and answers an HTTP/1.0 upgrade with a 101 that never upgrades. Every check here has
//! its own [`HandshakeError`] variant so the refusal says exactly what was wrong.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Version, request};
use sha1::{Digest, Sha1};

use crate::outcome::Outcome;

/// The GUID of RFC 6455 §1.3, appended to the key before hashing.
const WEBSOCKET_GUID: &[u8] = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// The only protocol version RFC 6455 defines.
pub const WEBSOCKET_VERSION: &str = "13";

/// How the client opened its WebSocket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// HTTP/1.1 `Upgrade` (RFC 6455 §4): answered with 101, then the connection is the socket.
    H1,
    /// HTTP/2 extended CONNECT (RFC 8441): answered with 200, then one stream is the socket.
    H2,
}

impl Transport {
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::H1 => "h1",
            Transport::H2 => "h2",
        }
    }

    /// The protocol as `Via` names it (RFC 9110 §7.6.3).
    pub fn via(self) -> &'static str {
        match self {
            Transport::H1 => "1.1",
            Transport::H2 => "2",
        }
    }
}

/// What a valid client handshake carries forward to the backend leg.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientHandshake {
    pub transport: Transport,
    /// The client's `Sec-WebSocket-Key`, needed for the `Sec-WebSocket-Accept` we answer with.
    /// Empty over HTTP/2, which has no key.
    pub key: String,
    /// Subprotocols offered, in the client's order of preference.
    pub protocols: Vec<String>,
    /// `Sec-WebSocket-Extensions` offers as the backend gets them: as written, unless the
    /// route rewrites permessage-deflate offers (`deflate::backend_offer`).
    pub extensions: Vec<HeaderValue>,
    /// The offers as the client wrote them: what the client will hold the answer to.
    pub client_extensions: Vec<HeaderValue>,
    /// The `Host` header, as sent.
    pub host: String,
}

/// One variant per check of §4.2.1 (and the HTTP rules around it).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HandshakeError {
    /// No `Upgrade` header at all: a plain HTTP request on a WebSocket route.
    #[error("this is a WebSocket endpoint: send a WebSocket upgrade request")]
    NotAnUpgrade,
    #[error("WebSocket handshake must use GET, not {0}")]
    MethodNotGet(Method),
    #[error("WebSocket handshake needs HTTP/1.1 or later, got {0:?}")]
    HttpVersionTooOld(Version),
    #[error("missing Host header")]
    MissingHost,
    /// Two `Host` headers: which host the client meant is unknown (RFC 9112 §3.2).
    #[error("more than one Host header")]
    DuplicateHost,
    #[error("Upgrade header does not name websocket")]
    UpgradeNotWebSocket,
    #[error("Connection header does not contain the upgrade token")]
    ConnectionNotUpgrade,
    #[error("missing Sec-WebSocket-Key")]
    MissingKey,
    #[error("more than one Sec-WebSocket-Key")]
    DuplicateKey,
    #[error("Sec-WebSocket-Key is not the base64 encoding of 16 bytes")]
    InvalidKey,
    #[error("unsupported Sec-WebSocket-Version {0:?}: only 13 is supported")]
    VersionNotSupported(String),
    #[error("missing Sec-WebSocket-Version: only 13 is supported")]
    MissingVersion,
    /// `Sec-WebSocket-Version` on more than one field line, or a list on one (RFC 6455
    /// §11.3.5: one value, at most once in a request), whatever the values.
    #[error("more than one Sec-WebSocket-Version value ({0:?}): send one, 13")]
    DuplicateVersion(String),
    #[error("invalid Sec-WebSocket-Protocol: {0:?} is not a token")]
    InvalidSubprotocol(String),
    /// A subprotocol offered twice: RFC 6455 §4.1 has the offers be unique strings (compared
    /// exactly, as browsers and servers such as Node's `ws` compare them).
    #[error("invalid Sec-WebSocket-Protocol: {0:?} is offered twice")]
    DuplicateSubprotocol(String),
    /// A `Sec-WebSocket-Extensions` line that is not text, or not the list of extensions
    /// and parameters RFC 6455 §9.1 writes (tokens, quoted strings): read one way here and
    /// another by the backend, it could carry an offer past `permessage_deflate = "strip"`;
    /// echoed by a lenient backend, it reached the client in the 101.
    #[error("invalid Sec-WebSocket-Extensions {0:?}: {1}")]
    InvalidExtensions(String, &'static str),
    #[error("WebSocket handshake must not carry a request body")]
    HasBody,
    /// HTTP/2: a request on a WebSocket route that is not an extended CONNECT.
    #[error(
        "this is a WebSocket endpoint: over HTTP/2 open it with an extended CONNECT (RFC 8441)"
    )]
    NotExtendedConnect,
    /// HTTP/2: `:protocol` names something other than `websocket`.
    #[error("extended CONNECT for protocol {0:?}: only websocket is served")]
    ProtocolNotWebSocket(String),
    /// HTTP/2: `:scheme` or `:path` missing (RFC 8441 §4 requires both), or a `:scheme`
    /// that is not `http` or `https` (the WebSocket URI's, RFC 8441 §5: `ws` maps to `http`,
    /// `wss` to `https`). (Without `:authority` the HTTP/2 layer keeps no `:scheme` either,
    /// so a missing `:authority` lands here too.)
    #[error(
        "extended CONNECT without :scheme, :authority or :path, or with a :scheme other than http or https"
    )]
    MissingPseudoHeader,
    /// HTTP/2: a `Sec-WebSocket-Key`, which RFC 8441 §5 has no use for.
    #[error("Sec-WebSocket-Key is not used over HTTP/2 (RFC 8441 §5)")]
    KeyOverHttp2,
}

impl HandshakeError {
    /// The status this refusal is answered with (RFC 6455 §4.2.2 and RFC 9110 §15.5.22).
    /// Over HTTP/2 there is no `Upgrade`, so no 426 either: version problems are 400 with
    /// `Sec-WebSocket-Version: 13`, which is what a client needs to correct itself.
    pub fn status_for(&self, transport: Transport) -> http::StatusCode {
        if transport == Transport::H2 && self.status() == http::StatusCode::UPGRADE_REQUIRED {
            return http::StatusCode::BAD_REQUEST;
        }
        self.status()
    }

    /// The status over HTTP/1.1.
    pub fn status(&self) -> http::StatusCode {
        use HandshakeError::*;
        match self {
            NotAnUpgrade | VersionNotSupported(_) | MissingVersion => {
                http::StatusCode::UPGRADE_REQUIRED
            }
            _ => http::StatusCode::BAD_REQUEST,
        }
    }

    /// Extra headers the refusal must carry so the client can correct itself.
    pub fn response_headers(&self) -> Vec<(HeaderName, HeaderValue)> {
        use HandshakeError::*;
        match self {
            // A 426 names the protocol to upgrade to (RFC 9110 §15.5.22).
            NotAnUpgrade | VersionNotSupported(_) | MissingVersion => vec![
                (header::UPGRADE, HeaderValue::from_static("websocket")),
                (
                    header::SEC_WEBSOCKET_VERSION,
                    HeaderValue::from_static(WEBSOCKET_VERSION),
                ),
            ],
            // Which version to send once.
            DuplicateVersion(_) => vec![(
                header::SEC_WEBSOCKET_VERSION,
                HeaderValue::from_static(WEBSOCKET_VERSION),
            )],
            _ => Vec::new(),
        }
    }

    /// The access log's and the refusal counters' name for this failure.
    pub fn outcome(&self) -> Outcome {
        use HandshakeError::*;
        match self {
            NotAnUpgrade => Outcome::NotAnUpgrade,
            MethodNotGet(_) => Outcome::MethodNotGet,
            HttpVersionTooOld(_) => Outcome::HttpVersion,
            MissingHost => Outcome::MissingHost,
            DuplicateHost => Outcome::DuplicateHost,
            UpgradeNotWebSocket => Outcome::UpgradeNotWebsocket,
            ConnectionNotUpgrade => Outcome::ConnectionNotUpgrade,
            MissingKey => Outcome::MissingKey,
            DuplicateKey => Outcome::DuplicateKey,
            InvalidKey => Outcome::InvalidKey,
            VersionNotSupported(_) => Outcome::VersionNotSupported,
            DuplicateVersion(_) => Outcome::DuplicateVersion,
            MissingVersion => Outcome::MissingVersion,
            InvalidSubprotocol(_) | DuplicateSubprotocol(_) => Outcome::InvalidSubprotocol,
            InvalidExtensions(..) => Outcome::InvalidExtensions,
            HasBody => Outcome::HasBody,
            NotExtendedConnect => Outcome::NotExtendedConnect,
            ProtocolNotWebSocket(_) => Outcome::ProtocolNotWebsocket,
            MissingPseudoHeader => Outcome::MissingPseudoHeader,
            KeyOverHttp2 => Outcome::KeyOverHttp2,
        }
    }
}

/// Checks a client's opening handshake. Pure: no I/O, no state.
pub fn validate(parts: &request::Parts) -> Result<ClientHandshake, HandshakeError> {
    if parts.version == Version::HTTP_2 {
        return validate_h2(parts);
    }
    let headers = &parts.headers;
    if !headers.contains_key(header::UPGRADE) {
        return Err(HandshakeError::NotAnUpgrade);
    }
    if parts.method != Method::GET {
        return Err(HandshakeError::MethodNotGet(parts.method.clone()));
    }
    // hyper only upgrades HTTP/1.1 connections; an HTTP/1.0 client would get a dead 101.
    if parts.version != Version::HTTP_11 {
        return Err(HandshakeError::HttpVersionTooOld(parts.version));
    }
    if headers.get_all(header::HOST).iter().nth(1).is_some() {
        return Err(HandshakeError::DuplicateHost);
    }
    let host = single_value(headers, &header::HOST)
        .filter(|h| !h.is_empty())
        .ok_or(HandshakeError::MissingHost)?
        .to_string();
    if !has_token(headers, &header::UPGRADE, "websocket") {
        return Err(HandshakeError::UpgradeNotWebSocket);
    }
    if !has_token(headers, &header::CONNECTION, "upgrade") {
        return Err(HandshakeError::ConnectionNotUpgrade);
    }
    let mut keys = headers.get_all(header::SEC_WEBSOCKET_KEY).iter();
    let key = keys.next().ok_or(HandshakeError::MissingKey)?;
    if keys.next().is_some() {
        return Err(HandshakeError::DuplicateKey);
    }
    let key = key.to_str().map_err(|_| HandshakeError::InvalidKey)?.trim();
    match BASE64.decode(key) {
        Ok(bytes) if bytes.len() == 16 => {}
        _ => return Err(HandshakeError::InvalidKey),
    }
    check_version(headers)?;
    check_no_body(headers)?;
    let (protocols, extensions) = offers(headers)?;
    Ok(ClientHandshake {
        transport: Transport::H1,
        key: key.to_string(),
        protocols,
        client_extensions: extensions.clone(),
        extensions,
        host,
    })
}

/// Checks an HTTP/2 extended CONNECT (RFC 8441 §4–5): `:method = CONNECT`,
/// `:protocol = websocket`, `:scheme`, `:path` and `:authority` present, version 13, no key.
fn validate_h2(parts: &request::Parts) -> Result<ClientHandshake, HandshakeError> {
    let protocol = parts.extensions.get::<hyper::ext::Protocol>();
    let Some(protocol) = protocol.filter(|_| parts.method == Method::CONNECT) else {
        return Err(HandshakeError::NotExtendedConnect);
    };
    if !protocol.as_str().eq_ignore_ascii_case("websocket") {
        return Err(HandshakeError::ProtocolNotWebSocket(
            protocol.as_str().to_string(),
        ));
    }
    let web_scheme = parts
        .uri
        .scheme_str()
        .is_some_and(|s| s.eq_ignore_ascii_case("http") || s.eq_ignore_ascii_case("https"));
    if !web_scheme || parts.uri.path().is_empty() {
        return Err(HandshakeError::MissingPseudoHeader);
    }
    let host = parts
        .uri
        .authority()
        .map(|a| a.as_str().to_string())
        .filter(|h| !h.is_empty())
        .ok_or(HandshakeError::MissingHost)?;
    let headers = &parts.headers;
    if headers.contains_key(header::SEC_WEBSOCKET_KEY) {
        return Err(HandshakeError::KeyOverHttp2);
    }
    check_version(headers)?;
    check_no_body(headers)?;
    let (protocols, extensions) = offers(headers)?;
    Ok(ClientHandshake {
        transport: Transport::H2,
        key: String::new(),
        protocols,
        client_extensions: extensions.clone(),
        extensions,
        host,
    })
}

fn check_version(headers: &HeaderMap) -> Result<(), HandshakeError> {
    let mut versions = headers.get_all(header::SEC_WEBSOCKET_VERSION).iter();
    match (versions.next(), versions.next()) {
        (None, _) => Err(HandshakeError::MissingVersion),
        (Some(v), None) if v.as_bytes().trim_ascii() == WEBSOCKET_VERSION.as_bytes() => Ok(()),
        // A list on one line is the same field given more than once (RFC 9110 §5.3): `13,
        // 13` got 426, "only 13 is supported", where two lines of 13 got 400.
        (Some(v), None) if v.as_bytes().contains(&b',') => Err(HandshakeError::DuplicateVersion(
            String::from_utf8_lossy(v.as_bytes()).into_owned(),
        )),
        (Some(v), None) => Err(HandshakeError::VersionNotSupported(
            String::from_utf8_lossy(v.as_bytes()).into_owned(),
        )),
        // Every value is named, so a repeated "13" does not read as if 13 were unsupported.
        (Some(_), Some(_)) => Err(HandshakeError::DuplicateVersion(
            headers
                .get_all(header::SEC_WEBSOCKET_VERSION)
                .iter()
                .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
                .collect::<Vec<_>>()
                .join(", "),
        )),
    }
}

/// A handshake has no body; one announced here would be read as WebSocket frames.
fn check_no_body(headers: &HeaderMap) -> Result<(), HandshakeError> {
    if headers.contains_key(header::TRANSFER_ENCODING) {
        return Err(HandshakeError::HasBody);
    }
    for cl in headers.get_all(header::CONTENT_LENGTH) {
        if cl.as_bytes().trim_ascii() != b"0" {
            return Err(HandshakeError::HasBody);
        }
    }
    Ok(())
}

/// The subprotocol and extension offers.
fn offers(headers: &HeaderMap) -> Result<(Vec<String>, Vec<HeaderValue>), HandshakeError> {
    let protocols = list_values(headers, &header::SEC_WEBSOCKET_PROTOCOL);
    if let Some(bad) = protocols.iter().find(|p| !is_token(p)) {
        return Err(HandshakeError::InvalidSubprotocol(bad.clone()));
    }
    // Before the backend sees them: a strict backend refuses the offer with a 400 that
    // would be recorded as the backend's fault, a lenient one accepts it.
    if let Some(p) = first_repeated(&protocols) {
        return Err(HandshakeError::DuplicateSubprotocol(p.to_string()));
    }
    let extensions: Vec<HeaderValue> = headers
        .get_all(header::SEC_WEBSOCKET_EXTENSIONS)
        .iter()
        .cloned()
        .collect();
    for v in &extensions {
        let problem = match v.to_str() {
            Ok(text) => extensions_problem(text),
            Err(_) => Some("not text"),
        };
        if let Some(why) = problem {
            let text = String::from_utf8_lossy(v.as_bytes()).into_owned();
            return Err(HandshakeError::InvalidExtensions(text, why));
        }
    }
    Ok((protocols, extensions))
}

/// The first of `items` that an earlier one equals. A browser offers a handful; a head of
/// 32 KiB holds 8,000, and comparing each with all before it cost 75 ms of a worker per
/// request (found by black-box testing: two clients sending such offers took both cores,
/// and the admission limits, which come after, did not stop them).
fn first_repeated(items: &[String]) -> Option<&str> {
    if items.len() <= 16 {
        return (1..items.len())
            .find(|&i| items[..i].contains(&items[i]))
            .map(|i| items[i].as_str());
    }
    let mut seen = std::collections::HashSet::with_capacity(items.len());
    items
        .iter()
        .map(String::as_str)
        .find(|item| !seen.insert(*item))
}

/// `Sec-WebSocket-Accept` for a key (RFC 6455 §4.2.2 step 5.4).
pub fn accept_key(key: &[u8]) -> String {
    let mut sha = Sha1::new();
    sha.update(key);
    sha.update(WEBSOCKET_GUID);
    BASE64.encode(sha.finalize())
}

/// A fresh random `Sec-WebSocket-Key` for the backend leg.
pub fn generate_key() -> String {
    BASE64.encode(rand::random::<[u8; 16]>())
}

/// The one value of a header that must appear once; `None` if absent, repeated or not text.
fn single_value<'a>(headers: &'a HeaderMap, name: &HeaderName) -> Option<&'a str> {
    let mut values = headers.get_all(name).iter();
    let first = values.next()?;
    if values.next().is_some() {
        return None;
    }
    first.to_str().ok().map(str::trim)
}

/// Whether a comma-separated header contains `token`, case-insensitively, across repeated
/// lines (Firefox sends `Connection: keep-alive, Upgrade`).
pub fn has_token(headers: &HeaderMap, name: &HeaderName, token: &str) -> bool {
    headers.get_all(name).iter().any(|v| {
        v.as_bytes()
            .split(|&b| b == b',')
            .any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
    })
}

/// The non-empty elements of a comma-separated header, across repeated lines.
pub fn list_values(headers: &HeaderMap, name: &HeaderName) -> Vec<String> {
    headers
        .get_all(name)
        .iter()
        .flat_map(|v| {
            String::from_utf8_lossy(v.as_bytes())
                .split(',')
                .map(|s| s.trim().to_string())
                .collect::<Vec<_>>()
        })
        .filter(|s| !s.is_empty())
        .collect()
}

/// RFC 9110 §5.6.2 token characters.
fn is_token(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(is_token_byte)
}

/// What is wrong with one `Sec-WebSocket-Extensions` field value, if anything: RFC 6455
/// §9.1's `extension *( ";" extension-param )`, comma-separated (empty elements and optional
/// whitespace allowed, RFC 9110 §5.6.1), each name a token and each parameter a token with
/// an optional value, a token or a quoted string whose unescaped content is a token.
pub fn extensions_problem(value: &str) -> Option<&'static str> {
    let b = value.as_bytes();
    let mut i = 0;
    let ows = |i: &mut usize| {
        while *i < b.len() && (b[*i] == b' ' || b[*i] == b'\t') {
            *i += 1;
        }
    };
    let token = |i: &mut usize| {
        let start = *i;
        while *i < b.len() && is_token_byte(b[*i]) {
            *i += 1;
        }
        *i > start
    };
    loop {
        ows(&mut i);
        if i == b.len() {
            return None;
        }
        if b[i] == b',' {
            i += 1;
            continue;
        }
        if !token(&mut i) {
            return Some("an extension name that is not a token");
        }
        loop {
            ows(&mut i);
            match b.get(i) {
                None => return None,
                Some(b',') => {
                    i += 1;
                    break;
                }
                Some(b';') => i += 1,
                Some(_) => return Some("a character out of place after an extension or parameter"),
            }
            ows(&mut i);
            if !token(&mut i) {
                return Some("a parameter name that is not a token");
            }
            ows(&mut i);
            if b.get(i) != Some(&b'=') {
                continue;
            }
            i += 1;
            ows(&mut i);
            if b.get(i) != Some(&b'"') {
                if !token(&mut i) {
                    return Some("a parameter value that is not a token");
                }
                continue;
            }
            i += 1;
            let mut content = 0;
            loop {
                match b.get(i) {
                    None => return Some("a quoted string without its end"),
                    Some(b'"') => break,
                    Some(b'\\') if i + 1 < b.len() => i += 1,
                    Some(_) => {}
                }
                if !is_token_byte(b[i]) {
                    return Some("a quoted parameter value that is not a token");
                }
                content += 1;
                i += 1;
            }
            i += 1;
            if content == 0 {
                return Some("an empty quoted parameter value");
            }
        }
    }
}

/// One RFC 9110 §5.6.2 `tchar`.
pub fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(
        build: impl FnOnce(http::request::Builder) -> http::request::Builder,
    ) -> request::Parts {
        let b = http::Request::builder()
            .method("GET")
            .uri("/chat")
            .version(Version::HTTP_11)
            .header("host", "example.com")
            .header("upgrade", "websocket")
            .header("connection", "Upgrade")
            .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
            .header("sec-websocket-version", "13");
        build(b).body(()).unwrap().into_parts().0
    }

    fn without(name: &str) -> request::Parts {
        let mut p = parts(|b| b);
        p.headers.remove(name);
        p
    }

    #[test]
    fn rfc_example_accept_key() {
        assert_eq!(
            accept_key(b"dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[test]
    fn generated_keys_are_valid_and_fresh() {
        let a = generate_key();
        assert_eq!(BASE64.decode(&a).unwrap().len(), 16);
        assert_ne!(a, generate_key());
    }

    #[test]
    fn accepts_a_valid_handshake() {
        let hs = validate(&parts(|b| {
            b.header("sec-websocket-protocol", "chat, superchat")
                .header("sec-websocket-extensions", "permessage-deflate")
        }))
        .unwrap();
        assert_eq!(hs.key, "dGhlIHNhbXBsZSBub25jZQ==");
        assert_eq!(hs.protocols, ["chat", "superchat"]);
        assert_eq!(hs.extensions.len(), 1);
        assert_eq!(hs.host, "example.com");
    }

    #[test]
    fn tokens_are_case_insensitive_and_span_lists_and_lines() {
        let mut p = without("connection");
        p.headers
            .append("connection", HeaderValue::from_static("keep-alive"));
        p.headers
            .append("connection", HeaderValue::from_static("foo, UPGRADE"));
        p.headers
            .insert("upgrade", HeaderValue::from_static("WebSocket"));
        assert!(validate(&p).is_ok());
    }

    #[test]
    fn each_check_has_its_error() {
        use HandshakeError::*;
        assert_eq!(validate(&without("upgrade")), Err(NotAnUpgrade));
        assert_eq!(
            validate(&parts(|b| b.method("POST"))),
            Err(MethodNotGet(Method::POST))
        );
        assert_eq!(
            validate(&parts(|b| b.version(Version::HTTP_10))),
            Err(HttpVersionTooOld(Version::HTTP_10))
        );
        assert_eq!(validate(&without("host")), Err(MissingHost));
        let mut p = parts(|b| b);
        p.headers
            .append("host", HeaderValue::from_static("other.example"));
        assert_eq!(validate(&p), Err(DuplicateHost));
        let mut p = parts(|b| b);
        p.headers.insert("upgrade", HeaderValue::from_static("h2c"));
        assert_eq!(validate(&p), Err(UpgradeNotWebSocket));
        let mut p = parts(|b| b);
        p.headers
            .insert("connection", HeaderValue::from_static("keep-alive"));
        assert_eq!(validate(&p), Err(ConnectionNotUpgrade));
        assert_eq!(validate(&without("sec-websocket-key")), Err(MissingKey));
        let mut p = parts(|b| b);
        p.headers.append(
            "sec-websocket-key",
            HeaderValue::from_static("AAAAAAAAAAAAAAAAAAAAAA=="),
        );
        assert_eq!(validate(&p), Err(DuplicateKey));
        let mut p = parts(|b| b);
        p.headers
            .insert("sec-websocket-key", HeaderValue::from_static("c2hvcnQ="));
        assert_eq!(validate(&p), Err(InvalidKey));
        let mut p = parts(|b| b);
        p.headers.insert(
            "sec-websocket-key",
            HeaderValue::from_static("not base64!!"),
        );
        assert_eq!(validate(&p), Err(InvalidKey));
        let mut p = parts(|b| b);
        p.headers
            .insert("sec-websocket-version", HeaderValue::from_static("8"));
        assert_eq!(validate(&p), Err(VersionNotSupported("8".into())));
        for list in ["13, 13", "13,8", "8, 13"] {
            let mut p = parts(|b| b);
            p.headers
                .insert("sec-websocket-version", HeaderValue::from_static(list));
            assert_eq!(validate(&p), Err(DuplicateVersion(list.into())), "{list}");
        }
        assert_eq!(
            validate(&without("sec-websocket-version")),
            Err(MissingVersion)
        );
        assert_eq!(
            validate(&parts(|b| b.header("content-length", "5"))),
            Err(HasBody)
        );
        assert!(validate(&parts(|b| b.header("content-length", "0"))).is_ok());
        assert_eq!(
            validate(&parts(|b| b.header("transfer-encoding", "chunked"))),
            Err(HasBody)
        );
        assert_eq!(
            validate(&parts(|b| b.header("sec-websocket-protocol", "chat, a b"))),
            Err(InvalidSubprotocol("a b".into()))
        );
        // An extensions line that is not text: no one reads it as the backend would.
        let obs = HeaderValue::from_bytes(b"permessage-deflate, x-\xe9").unwrap();
        assert_eq!(
            validate(&parts(|b| b.header("sec-websocket-extensions", obs))),
            Err(InvalidExtensions(
                "permessage-deflate, x-\u{fffd}".into(),
                "not text"
            ))
        );
        let bad = parts(|b| b.header("sec-websocket-extensions", "x; a=\"unterminated"));
        // Offers are unique strings (RFC 6455 §4.1), on one field or several; case counts.
        assert_eq!(
            validate(&parts(|b| b.header("sec-websocket-protocol", "a, b, a"))),
            Err(DuplicateSubprotocol("a".into()))
        );
        assert_eq!(
            validate(&parts(|b| {
                b.header("sec-websocket-protocol", "a")
                    .header("sec-websocket-protocol", "a")
            })),
            Err(DuplicateSubprotocol("a".into()))
        );
        assert!(validate(&parts(|b| b.header("sec-websocket-protocol", "a, A"))).is_ok());
        assert!(matches!(validate(&bad), Err(InvalidExtensions(..))));
    }

    /// RFC 6455 §9.1's grammar, as browsers and libraries write it, and what breaks it.
    #[test]
    fn extension_lists_follow_the_grammar() {
        for fine in [
            "permessage-deflate; client_max_window_bits",
            "permessage-deflate;client_max_window_bits=15, x-foo",
            "permessage-deflate; server_max_window_bits=\"10\", , x-webkit-deflate-frame",
            "a; b = 1 ;c",
            "a; q=\"\\t\"",
            "",
        ] {
            assert_eq!(extensions_problem(fine), None, "{fine:?}");
        }
        for bad in [
            "x;;;=",
            "x; =1",
            "x; a=\"unterminated",
            "x; a=\"\"",
            "x; a=\"b c\"",
            "x y",
            "; a",
            "x; a=b=c",
            "x; a=,",
        ] {
            assert!(extensions_problem(bad).is_some(), "{bad:?}");
        }
    }

    #[test]
    fn statuses() {
        assert_eq!(HandshakeError::NotAnUpgrade.status(), 426);
        assert_eq!(
            HandshakeError::VersionNotSupported("8".into()).status(),
            426
        );
        assert_eq!(HandshakeError::MissingHost.status(), 400);
        assert!(
            HandshakeError::VersionNotSupported("8".into())
                .response_headers()
                .iter()
                .any(|(n, v)| n == header::SEC_WEBSOCKET_VERSION && v == "13")
        );
    }

    /// A long list is checked in one pass (a set), a short one by comparison: the same answer.
    #[test]
    fn the_first_repeated_offer_is_found_in_lists_short_and_long() {
        let list = |items: &[&str]| items.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(first_repeated(&list(&["a", "b", "a"])), Some("a"));
        assert_eq!(first_repeated(&list(&["a", "A"])), None);
        let mut many: Vec<String> = (0..8000).map(|i| format!("p{i}")).collect();
        assert_eq!(first_repeated(&many), None);
        many.push("p17".into());
        many.push("p3".into());
        assert_eq!(first_repeated(&many), Some("p17"));
    }
}
