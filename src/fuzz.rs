//! Fuzz properties for every parser of untrusted bytes, shared by the cargo-fuzz targets in
//! `fuzz/fuzz_targets/` and by `cargo test`, which replays the inputs kept in
//! `tests/fuzz_regressions/<target>/` (crashes once found, and seeds) through the same
//! functions without libFuzzer.
//!
//! Each function takes arbitrary bytes and must return without panicking; the asserts in it
//! are the properties the parser promises beyond that. The frame scanner's property lives
//! next to the scanner ([`crate::frame::fuzz_scanner`]), and the TLS 1.3 record layer's next
//! to it ([`crate::tls_records::fuzz_records`]), where their private state is in reach.

use std::net::{IpAddr, Ipv6Addr};

use http::{HeaderMap, HeaderValue};

use crate::handshake;
use crate::policy::{cookie, forwarding, jwt, token};
use crate::proxy_protocol::{self, ProxyHeaderError};

/// A fuzz property: takes any bytes, panics only on a bug.
pub type Property = fn(&[u8]);

/// Every fuzz target by name, with its property: what the regression replay iterates over.
pub const TARGETS: &[(&str, Property)] = &[
    ("scanner", crate::frame::fuzz_scanner),
    ("handshake", fuzz_handshake),
    ("proxy_protocol", fuzz_proxy_protocol),
    ("forwarded", fuzz_forwarded),
    ("cookie", fuzz_cookie),
    ("token", fuzz_token),
    ("config", fuzz_config),
    ("tls_records", crate::tls_records::fuzz_records),
];

/// Splits fuzz input into at most `n` fields at `\n` (the last one keeps the rest).
fn fields(data: &[u8], n: usize) -> Vec<&[u8]> {
    data.splitn(n, |b| *b == b'\n').collect()
}

/// Header values from raw bytes, one per piece between `sep` bytes; pieces hyper could never
/// hand us (`HeaderValue::from_bytes` refuses CR, LF and NUL) are skipped.
fn header_values(raw: &[u8], sep: u8) -> Vec<HeaderValue> {
    raw.split(|b| *b == sep)
        .filter_map(|l| HeaderValue::from_bytes(l).ok())
        .collect()
}

/// The handshake as the proxy sees it: the bytes go through hyper's real HTTP/1.1 and HTTP/2
/// server parsers (the front end's own builders, [`crate::http::builder`], with the default
/// limits, the protocol chosen by the preface as on a plain listener) over an in-memory
/// pipe, and every request head hyper accepts goes to [`handshake::validate`]. The parser
/// reached is hyper's, not a stand-in: what `validate` must survive is exactly what hyper
/// lets through.
pub fn fuzz_handshake(data: &[u8]) {
    use std::cell::RefCell;

    thread_local! {
        static RT: tokio::runtime::Runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a current-thread runtime");
        static BUILDERS: RefCell<Option<[crate::http::Builder; 2]>> = const { RefCell::new(None) };
    }
    // The protocol as a plain listener with HTTP/2 on chooses it (`accept.rs`).
    let h2 = data.starts_with(crate::accept::H2_PREFACE);
    let builder = BUILDERS.with(|b| {
        b.borrow_mut().get_or_insert_with(|| {
            let cfg = crate::config::from_toml_str(
                "[[listener]]\nlisten = \"127.0.0.1:0\"\n[[route]]\nname = \"fuzz\"\npath = \"/\"\nbackends = [\"ws://127.0.0.1:9\"]\n",
            )
            .expect("the fuzz config is valid");
            [crate::http::Protocols::Http1, crate::http::Protocols::Http2]
                .map(|p| crate::http::builder(&cfg.listeners[0], &cfg.limits, &cfg.http2, p))
        })[usize::from(h2)]
            .clone()
    });
    let data = data.to_vec();
    RT.with(|rt| {
        rt.block_on(async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let (mut client, server) = tokio::io::duplex(64 * 1024);
            let service =
                hyper::service::service_fn(|req: http::Request<hyper::body::Incoming>| {
                    let (parts, _body) = req.into_parts();
                    let status = match handshake::validate(&parts) {
                        Ok(hs) => {
                            check_valid_handshake(&hs);
                            http::StatusCode::NO_CONTENT
                        }
                        Err(e) => {
                            let status = e.status_for(hs_transport(&parts));
                            assert!(status.is_client_error(), "refusal {e:?} answered {status}");
                            let _ = (e.outcome(), e.response_headers(), e.to_string());
                            status
                        }
                    };
                    let mut resp =
                        http::Response::new(http_body_util::Empty::<bytes::Bytes>::new());
                    *resp.status_mut() = status;
                    std::future::ready(Ok::<_, std::convert::Infallible>(resp))
                });
            let io = hyper_util::rt::TokioIo::new(server);
            let conn = builder.serve(io, service);
            let feed = async move {
                // Write, then end the stream: hyper sees EOF and the connection finishes.
                let _ = client.write_all(&data).await;
                let _ = client.shutdown().await;
                let mut sink = Vec::new();
                let _ = client.read_to_end(&mut sink).await;
            };
            // A safety net, not a property: past it the input is reported as a hang.
            let both = async { tokio::join!(conn, feed) };
            if tokio::time::timeout(std::time::Duration::from_secs(10), both)
                .await
                .is_err()
            {
                panic!("hyper and the validator did not finish within 10 s");
            }
        });
    });
}

fn hs_transport(parts: &http::request::Parts) -> handshake::Transport {
    if parts.version == http::Version::HTTP_2 {
        handshake::Transport::H2
    } else {
        handshake::Transport::H1
    }
}

/// What an accepted handshake promises the rest of the proxy.
fn check_valid_handshake(hs: &handshake::ClientHandshake) {
    assert!(!hs.host.is_empty(), "accepted without a host");
    if hs.transport == handshake::Transport::H1 {
        // RFC 6455 §4.2.1 item 5: a 16-byte nonce, base64: the accept value is always 28 bytes
        // and a valid header value.
        let accept = handshake::accept_key(hs.key.as_bytes());
        assert_eq!(accept.len(), 28);
        assert!(HeaderValue::from_str(&accept).is_ok());
    } else {
        assert!(hs.key.is_empty(), "a key over HTTP/2");
    }
    for p in &hs.protocols {
        // Subprotocols are RFC 7230 tokens (RFC 6455 §4.1 item 10): one may be echoed back
        // in the 101 as is.
        assert!(
            !p.is_empty() && p.bytes().all(handshake::is_token_byte),
            "accepted subprotocol {p:?} is not a token"
        );
        assert!(HeaderValue::from_str(p).is_ok());
    }
}

/// The PROXY protocol header parser: the length it reports is within the input and agrees
/// with [`proxy_protocol::header_len`]; the result depends only on the header's own bytes; and
/// every shorter prefix of a complete header is reported as needing more bytes, never as a
/// different header or an error (which is what lets `read_header` read exactly the header).
pub fn fuzz_proxy_protocol(data: &[u8]) {
    let parsed = proxy_protocol::parse(data);
    let framed = proxy_protocol::header_len(data);
    match &parsed {
        Ok((source, len)) => {
            assert!(
                *len > 0 && *len <= data.len(),
                "length {len} of {}",
                data.len()
            );
            assert_eq!(framed.as_ref().ok().copied().flatten(), Some(*len));
            match proxy_protocol::parse(&data[..*len]) {
                Ok((s, l)) => assert_eq!((s, l), (*source, *len)),
                Err(e) => panic!("the header alone fails: {e}"),
            }
            for k in 0..*len {
                match proxy_protocol::header_len(&data[..k]) {
                    Ok(None) => {}
                    other => panic!("prefix of {k} bytes of a {len}-byte header: {other:?}"),
                }
            }
        }
        Err(ProxyHeaderError::Incomplete) => {
            assert!(
                matches!(framed, Ok(None)),
                "incomplete but framed as {framed:?}"
            );
        }
        Err(e) => {
            let _ = e.to_string();
        }
    }
}

/// `X-Forwarded-For` and friends from a (fuzzed) trusted or untrusted peer: the client address
/// is the peer unless the peer is trusted, always one of the chain, the chain ends with the
/// peer, and every header built from it is a valid header value.
pub fn fuzz_forwarded(data: &[u8]) {
    let f = fields(data, 5);
    let text = |i: usize| f.get(i).map(|b| String::from_utf8_lossy(b).into_owned());
    // Field 0: trusted CIDRs, comma separated; field 1: the peer.
    let trusted: Vec<forwarding::Cidr> = text(0)
        .unwrap_or_default()
        .split(',')
        .filter_map(|c| forwarding::Cidr::parse(c).ok())
        .collect();
    for c in &trusted {
        let _ = c.contains(IpAddr::V6(Ipv6Addr::LOCALHOST));
    }
    let peer: IpAddr = text(1)
        .and_then(|p| p.trim().parse().ok())
        .unwrap_or(IpAddr::V6(Ipv6Addr::LOCALHOST));
    // Fields 2..: X-Forwarded-For lines (`\r` separated), X-Forwarded-Proto, X-Forwarded-Host.
    let mut headers = HeaderMap::new();
    if let Some(xff) = f.get(2) {
        for v in header_values(xff, b'\r') {
            headers.append("x-forwarded-for", v);
        }
    }
    for (i, name) in [(3, "x-forwarded-proto"), (4, "x-forwarded-host")] {
        if let Some(v) = f.get(i).and_then(|b| HeaderValue::from_bytes(b).ok()) {
            headers.append(name, v);
        }
    }
    // The list does not depend on how its elements are grouped into fields (RFC 9110
    // §5.3: several fields are one, joined with commas), bytes past ASCII included.
    let list = forwarding::forwarded_for(&headers);
    let joined: Vec<u8> = headers
        .get_all("x-forwarded-for")
        .iter()
        .map(|v| v.as_bytes())
        .collect::<Vec<_>>()
        .join(&b", "[..]);
    if let Ok(v) = HeaderValue::from_bytes(&joined) {
        let mut one = HeaderMap::new();
        one.insert("x-forwarded-for", v);
        assert_eq!(
            forwarding::forwarded_for(&one),
            list,
            "grouping changed the list"
        );
    }
    let addr = forwarding::client_addr(&trusted, peer, &headers);
    let peer = peer.to_canonical();
    assert_eq!(addr.peer(), peer, "the chain does not end with the peer");
    assert!(
        addr.chain.contains(&addr.ip),
        "client {} not in the chain",
        addr.ip
    );
    if !forwarding::is_trusted(&trusted, peer) {
        assert_eq!(addr.ip, peer, "an untrusted peer's headers were believed");
        assert!(addr.proto.is_none() && addr.host.is_none());
    }
    assert!(HeaderValue::from_str(&addr.chain_header()).is_ok());
    let element = forwarding::forwarded_element(
        peer,
        addr.proto.as_deref().unwrap_or("http"),
        addr.host.as_deref(),
    );
    assert!(
        HeaderValue::from_str(&element).is_ok(),
        "Forwarded element {element:?} is not a header value"
    );
}

/// Cookie lookup and stripping: after `strip`, the named cookies are gone and every other
/// cookie is still there, in order, with the same value.
pub fn fuzz_cookie(data: &[u8]) {
    let f = fields(data, 2);
    let names: Vec<String> = String::from_utf8_lossy(f[0])
        .split(',')
        .map(str::to_string)
        .collect();
    let mut headers = HeaderMap::new();
    for v in header_values(f.get(1).copied().unwrap_or_default(), b'\n') {
        headers.append(http::header::COOKIE, v);
    }
    let before: Vec<(String, String)> = cookie::pairs(&headers)
        .map(|(n, v)| (n.to_string(), v.to_string()))
        .collect();
    for n in &names {
        let found = cookie::get(&headers, n);
        let expected = before.iter().find(|(k, _)| k == n).map(|(_, v)| v.as_str());
        assert_eq!(found, expected);
    }
    cookie::strip(&mut headers, &names);
    let after: Vec<(String, String)> = cookie::pairs(&headers)
        .map(|(n, v)| (n.to_string(), v.to_string()))
        .collect();
    let kept: Vec<(String, String)> = if names.is_empty() {
        before
    } else {
        before
            .into_iter()
            .filter(|(n, v)| !cookie::strips(n, v, &names))
            .collect()
    };
    assert_eq!(after, kept, "strip({names:?}) changed other cookies");
}

/// Token finding over arbitrary headers, query and subprotocols, and the JWT header reader
/// over whatever token is found: a token found is a non-empty piece of where it was found; a
/// query parameter removed for the backend is gone from the URL it sees.
pub fn fuzz_token(data: &[u8]) {
    let f = fields(data, 5);
    let text = |i: usize| f.get(i).map(|b| String::from_utf8_lossy(b).into_owned());
    // Field 0: the sources, as the config writes them (`header,cookie:NAME,...`).
    let sources: Vec<token::TokenSource> = text(0)
        .unwrap_or_default()
        .split(',')
        .filter_map(|s| token::TokenSource::parse(s).ok())
        .collect();
    let _ = token::describe_sources(&sources);
    // Field 1: the request target (path and query).
    let uri: http::Uri = text(1)
        .and_then(|t| t.parse().ok())
        .unwrap_or_else(|| http::Uri::from_static("/"));
    let mut req = http::Request::builder().uri(uri.clone());
    // Fields 2, 3, 4: Authorization, Cookie and Sec-WebSocket-Protocol values.
    for (i, name) in [
        (2, http::header::AUTHORIZATION),
        (3, http::header::COOKIE),
        (4, http::header::SEC_WEBSOCKET_PROTOCOL),
    ] {
        for v in header_values(f.get(i).copied().unwrap_or_default(), b'\r') {
            req = req.header(name.clone(), v);
        }
    }
    let Ok(req) = req.body(()) else { return };
    let (parts, ()) = req.into_parts();
    let protocols = handshake::list_values(&parts.headers, &http::header::SEC_WEBSOCKET_PROTOCOL);
    if let Some((t, idx)) = token::token_in_protocols(&protocols) {
        assert!(idx.iter().all(|i| *i < protocols.len()));
        assert!(idx.iter().any(|i| protocols[*i].contains(&t)));
    }
    if let Some(found) = token::find_token(&sources, &parts, &protocols) {
        assert!(!found.token.is_empty());
        assert!(sources.contains(&found.source));
        match &found.source {
            token::TokenSource::Header => {
                let auth = parts.headers[http::header::AUTHORIZATION].as_bytes();
                assert!(
                    auth.windows(found.token.len())
                        .any(|w| w == found.token.as_bytes()),
                    "token not from the Authorization header"
                );
            }
            token::TokenSource::Query(name) => {
                // The token must not reach the backend in the URL (the proxy strips it).
                let stripped = token::without_query_param(&parts.uri, name)
                    .unwrap_or_else(|| parts.uri.clone());
                assert_eq!(
                    token::query_param(stripped.query(), name),
                    None,
                    "{name:?} still in {stripped} (from {})",
                    parts.uri
                );
                assert_eq!(stripped.path(), parts.uri.path());
            }
            _ => {}
        }
        let _ = jwt::read_header(&found.token);
    }
    // The header reader on the raw fields too, not only on what a source yields.
    if let Some(t) = text(2) {
        let _ = jwt::read_header(&t);
    }
}

/// The config loader over arbitrary text: errors, never a panic; every error names a line
/// within the text. File references resolve against an empty directory, so the fuzzer's
/// relative paths read nothing.
pub fn fuzz_config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let base = std::env::temp_dir().join("wsgate-fuzz-config-empty");
    let _ = std::fs::create_dir_all(&base);
    if let Err(errors) = crate::config::from_toml_str_in(text, &base) {
        assert!(!errors.is_empty(), "an error result without errors");
        let lines = text.split('\n').count();
        for e in &errors {
            let _ = e.to_string();
            if let Some(line) = e.line {
                assert!(
                    (1..=lines).contains(&line),
                    "{e} is outside the {lines}-line text"
                );
            }
        }
    }
}
