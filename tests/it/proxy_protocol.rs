//! PROXY protocol v1 and v2 on listeners that enable it: the header's source address is the
//! client the backend is told about; a missing, malformed or late header closes the connection
//! without an answer; listeners without the option treat a PROXY line as bad HTTP. Plus
//! properties of the parser: no input panics it, and encoded headers round-trip.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use proptest::prelude::*;
use rustls::pki_types::ServerName;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use wsgate::proxy_protocol::{ProxyHeaderError, V2_SIGNATURE, parse};

use crate::support::tls::TestCa;
use crate::support::*;

// ---- encoders (the sender's side, written from the specification) ----

fn v1(source: SocketAddr, dest: SocketAddr) -> Vec<u8> {
    let proto = if source.is_ipv4() { "TCP4" } else { "TCP6" };
    format!(
        "PROXY {proto} {} {} {} {}\r\n",
        source.ip(),
        dest.ip(),
        source.port(),
        dest.port()
    )
    .into_bytes()
}

const LOCAL: u8 = 0x20;
const PROXY: u8 = 0x21;

/// A v2 header: `command` is [`LOCAL`] or [`PROXY`]; TLVs are (type, value) pairs.
fn v2(command: u8, addrs: Option<(SocketAddr, SocketAddr)>, tlvs: &[(u8, Vec<u8>)]) -> Vec<u8> {
    let mut body = Vec::new();
    let family = match addrs {
        None => 0x00,
        Some((src, dst)) => {
            match (src.ip(), dst.ip()) {
                (IpAddr::V4(s), IpAddr::V4(d)) => {
                    body.extend_from_slice(&s.octets());
                    body.extend_from_slice(&d.octets());
                }
                (IpAddr::V6(s), IpAddr::V6(d)) => {
                    body.extend_from_slice(&s.octets());
                    body.extend_from_slice(&d.octets());
                }
                _ => panic!("mixed families"),
            }
            body.extend_from_slice(&src.port().to_be_bytes());
            body.extend_from_slice(&dst.port().to_be_bytes());
            if src.is_ipv4() { 0x11 } else { 0x21 }
        }
    };
    for (kind, value) in tlvs {
        body.push(*kind);
        body.extend_from_slice(&(value.len() as u16).to_be_bytes());
        body.extend_from_slice(value);
    }
    let mut h = V2_SIGNATURE.to_vec();
    h.extend_from_slice(&[command, family]);
    h.extend_from_slice(&(body.len() as u16).to_be_bytes());
    h.extend_from_slice(&body);
    h
}

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

// ---- through the gateway ----

const PP_LISTENER: &str = "[[listener]]\nlisten = \"127.0.0.1:0\"\nproxy_protocol = true\n";

async fn pp_gateway(backend: &EchoBackend, listener_extra: &str) -> Gateway {
    Gateway::spawn(&format!(
        "{PP_LISTENER}{listener_extra}\n{}",
        route("r", "/", &[backend.url()])
    ))
    .await
}

/// Sends `header` and an upgrade request in one write; expects the 101 and returns the
/// `X-Forwarded-For` the backend saw.
async fn forwarded_for_after(gw: &Gateway, backend: &EchoBackend, header: &[u8]) -> String {
    let request = [header, upgrade_request("/", "").as_bytes()].concat();
    let (_stream, resp) = raw_exchange(gw.addr, &request).await;
    assert_eq!(resp.status, 101, "{resp:?}");
    backend
        .last_request()
        .header("x-forwarded-for")
        .expect("no X-Forwarded-For")
        .to_string()
}

#[tokio::test]
async fn the_header_source_is_the_client() {
    let backend = EchoBackend::spawn().await;
    let gw = pp_gateway(&backend, "").await;
    let dest = addr("192.0.2.10:443");
    let dest6 = addr("[2001:db8::1]:443");
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "v1 TCP4",
            v1(addr("203.0.113.7:51234"), dest),
            "203.0.113.7",
        ),
        (
            "v1 TCP6",
            v1(addr("[2001:db8::7]:51234"), dest6),
            "2001:db8::7",
        ),
        ("v1 UNKNOWN", b"PROXY UNKNOWN\r\n".to_vec(), "127.0.0.1"),
        (
            "v2 TCP4 with TLVs",
            v2(
                PROXY,
                Some((addr("198.51.100.9:40000"), dest)),
                // PP2_TYPE_AUTHORITY and a NOOP (padding).
                &[(0x02, b"example.com".to_vec()), (0x04, vec![0; 3])],
            ),
            "198.51.100.9",
        ),
        (
            "v2 TCP6",
            v2(PROXY, Some((addr("[2001:db8::9]:40000"), dest6)), &[]),
            "2001:db8::9",
        ),
        (
            "v2 LOCAL",
            v2(LOCAL, Some((addr("198.51.100.9:40000"), dest)), &[]),
            "127.0.0.1",
        ),
    ];
    for (name, header, want) in cases {
        assert_eq!(
            forwarded_for_after(&gw, &backend, &header).await,
            want,
            "{name}"
        );
    }
}

#[tokio::test]
async fn a_header_in_pieces_leaves_the_request_behind_it_intact() {
    let backend = EchoBackend::spawn().await;
    let gw = pp_gateway(&backend, "").await;
    let mut stream = TcpStream::connect(gw.addr).await.unwrap();
    stream.set_nodelay(true).unwrap();
    for b in v1(addr("203.0.113.8:1"), addr("192.0.2.10:80")) {
        stream.write_all(&[b]).await.unwrap();
    }
    // The request and the first frame in one write: the reader must stop at the CRLF.
    let request = [
        upgrade_request("/", "").as_bytes(),
        &client_frame(0x1, b"hello"),
    ]
    .concat();
    stream.write_all(&request).await.unwrap();
    let resp = read_response(&mut stream).await;
    assert_eq!(resp.status, 101, "{resp:?}");
    assert_eq!(
        backend.last_request().header("x-forwarded-for"),
        Some("203.0.113.8")
    );
    let echoed = wsgate::frame::encode_frame(0x1, true, b"hello", None);
    let mut got = resp.rest;
    while got.len() < echoed.len() {
        let mut chunk = [0u8; 64];
        let n = tokio::time::timeout(STEP, tokio::io::AsyncReadExt::read(&mut stream, &mut chunk))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0, "closed before the echo");
        got.extend_from_slice(&chunk[..n]);
    }
    assert_eq!(got, echoed);
}

#[tokio::test]
async fn a_bad_header_is_closed_without_an_answer_and_others_are_served() {
    let backend = EchoBackend::spawn().await;
    let gw = pp_gateway(&backend, "").await;
    let request = upgrade_request("/", "");
    let mut bad_version = v2(
        PROXY,
        Some((addr("198.51.100.9:1"), addr("192.0.2.1:2"))),
        &[],
    );
    bad_version[12] = 0x11;
    // A TLV that claims 5 bytes where the header's length leaves none.
    let mut tlv_past_end = v2(
        PROXY,
        Some((addr("198.51.100.9:1"), addr("192.0.2.1:2"))),
        &[],
    );
    tlv_past_end.extend_from_slice(&[0x04, 0x00, 0x05]);
    let len = (tlv_past_end.len() - 16) as u16;
    tlv_past_end[14..16].copy_from_slice(&len.to_be_bytes());
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("no header", Vec::new()),
        (
            "bad v1 address",
            b"PROXY TCP4 203.0.113.256 192.0.2.10 1 2\r\n".to_vec(),
        ),
        (
            "v1 with two spaces",
            b"PROXY TCP4  203.0.113.7 192.0.2.10 1 2\r\n".to_vec(),
        ),
        ("v2 version 1", bad_version),
        ("v2 TLV past the end", tlv_past_end),
    ];
    for (name, header) in cases {
        let mut stream = TcpStream::connect(gw.addr).await.unwrap();
        stream
            .write_all(&[&header[..], request.as_bytes()].concat())
            .await
            .unwrap();
        assert_eq!(read_until_closed(&mut stream).await, b"", "{name}");
    }
    assert_eq!(backend.request_count(), 0);
    assert_eq!(
        forwarded_for_after(
            &gw,
            &backend,
            &v1(addr("203.0.113.9:5"), addr("192.0.2.1:80"))
        )
        .await,
        "203.0.113.9"
    );
}

#[tokio::test]
async fn a_silent_peer_is_closed_after_the_handshake_timeout() {
    let backend = EchoBackend::spawn().await;
    let gw = pp_gateway(&backend, "handshake_timeout = \"200ms\"\n").await;
    for (name, partial) in [
        ("nothing", &b""[..]),
        ("half a header", &b"PROXY TCP4 203.0.113"[..]),
    ] {
        let started = Instant::now();
        let mut stream = TcpStream::connect(gw.addr).await.unwrap();
        stream.write_all(partial).await.unwrap();
        assert_eq!(read_until_closed(&mut stream).await, b"", "{name}");
        assert!(
            started.elapsed() >= Duration::from_millis(200),
            "{name}: closed after {:?}, before the handshake timeout",
            started.elapsed()
        );
    }
    assert_eq!(
        forwarded_for_after(&gw, &backend, b"PROXY UNKNOWN\r\n").await,
        "127.0.0.1"
    );
}

/// The handshake timeout runs from the connect, the PROXY header's time included: a client
/// that sent its header late and then dribbled its head had the whole timeout again for
/// the head (a slowloris holding its socket twice as long), where a TLS listener already
/// counted the header and the TLS handshake from one start.
#[tokio::test]
async fn the_header_and_the_head_share_one_handshake_timeout() {
    let backend = EchoBackend::spawn().await;
    let gw = pp_gateway(&backend, "handshake_timeout = \"1s\"\n").await;
    let started = Instant::now();
    let mut stream = TcpStream::connect(gw.addr).await.unwrap();
    // A slow client: its header late in the timeout, then part of a head.
    tokio::time::sleep(Duration::from_millis(900)).await;
    stream.write_all(b"PROXY UNKNOWN\r\n").await.unwrap();
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: a\r\n")
        .await
        .unwrap();
    read_until_closed(&mut stream).await;
    let closed = started.elapsed();
    assert!(closed >= Duration::from_secs(1), "closed early: {closed:?}");
    // Closed at the connect's deadline (1 s), not the header's plus a second (1.9 s).
    assert!(
        closed < Duration::from_millis(1800),
        "the head had its own timeout after the header: closed after {closed:?}"
    );
}

/// A connection closed (or reset) before its first byte (a load balancer's TCP health check
/// sends no PROXY header) is not a refused header: every probe was counted and logged as
/// `proxy_header_invalid` ("closed inside the PROXY header"), drowning the real ones.
#[tokio::test]
async fn a_connect_and_close_is_not_a_bad_header() {
    let backend = EchoBackend::spawn().await;
    let gw = pp_gateway(&backend, "[admin]\nlisten = \"127.0.0.1:0\"\n").await;
    let admin = gw.handle().admin_addr().expect("admin listener");
    for _ in 0..3 {
        let mut probe = TcpStream::connect(gw.addr).await.unwrap();
        probe.shutdown().await.unwrap();
        assert_eq!(read_until_closed(&mut probe).await, b"");
    }
    // And one that resets (some checkers close that way).
    let probe = TcpStream::connect(gw.addr).await.unwrap();
    socket2::SockRef::from(&probe)
        .set_linger(Some(Duration::ZERO))
        .unwrap();
    drop(probe);
    // One bad header, counted before its connection is closed.
    let mut bad = TcpStream::connect(gw.addr).await.unwrap();
    bad.write_all(b"PROXY TCP4 nonsense\r\n").await.unwrap();
    assert_eq!(read_until_closed(&mut bad).await, b"");
    let refused = scrape(admin).await.sum(
        "wsgate_handshakes_refused_total",
        &[("outcome", "proxy_header_invalid")],
    );
    assert_eq!(refused, 1.0);
}

/// An IPv4 client in IPv6 form (a TCP6 PROXY line from a dual-stack balancer) is named by
/// its IPv4 address in the session's record, as in `X-Forwarded-For`: the record said
/// `[::ffff:203.0.113.9]:5`.
#[tokio::test]
async fn an_ipv4_mapped_source_is_recorded_as_ipv4() {
    let backend = EchoBackend::spawn().await;
    let gw = pp_gateway(&backend, "[admin]\nlisten = \"127.0.0.1:0\"\n").await;
    let admin = gw.handle().admin_addr().expect("admin listener");
    let header = v1(addr("[::ffff:203.0.113.9]:5"), addr("[::1]:80"));
    let request = [&header[..], upgrade_request("/", "").as_bytes()].concat();
    let (_session, resp) = raw_exchange(gw.addr, &request).await;
    assert_eq!(resp.status, 101, "{resp:?}");
    assert_eq!(
        backend.last_request().header("x-forwarded-for"),
        Some("203.0.113.9")
    );
    let list = admin_request(admin, "GET", "/api/sessions", "", "").await;
    let list: serde_json::Value = serde_json::from_str(&list.body).unwrap();
    assert_eq!(list["sessions"][0]["client"], "203.0.113.9:5", "{list}");
}

/// A connection to `gw` from the loopback address `from` (the whole of 127/8 is local).
async fn connect_from(gw: &Gateway, from: &str) -> TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(addr(&format!("{from}:0"))).unwrap();
    socket.connect(gw.addr).await.unwrap()
}

/// With `proxy_protocol_from`, only the named peers (the load balancers) send the header and
/// must; any other peer is a direct client: its own address is the client, and a PROXY line
/// from it is bad HTTP, so it cannot claim another address.
#[tokio::test]
async fn proxy_protocol_from_names_the_peers_that_send_the_header() {
    let backend = EchoBackend::spawn().await;
    let gw = pp_gateway(&backend, "proxy_protocol_from = [\"127.0.0.2/32\"]\n").await;
    let header = v1(addr("203.0.113.7:51234"), addr("192.0.2.10:80"));
    let request = upgrade_request("/", "");

    let mut balancer = connect_from(&gw, "127.0.0.2").await;
    balancer
        .write_all(&[&header[..], request.as_bytes()].concat())
        .await
        .unwrap();
    assert_eq!(read_response(&mut balancer).await.status, 101);
    let seen = backend.last_request();
    assert_eq!(seen.header("x-forwarded-for"), Some("203.0.113.7"));

    let mut balancer = connect_from(&gw, "127.0.0.2").await;
    balancer.write_all(request.as_bytes()).await.unwrap();
    assert_eq!(
        read_until_closed(&mut balancer).await,
        b"",
        "the balancer's connection without a header"
    );

    let mut direct = connect_from(&gw, "127.0.0.3").await;
    direct.write_all(request.as_bytes()).await.unwrap();
    assert_eq!(read_response(&mut direct).await.status, 101);
    let seen = backend.last_request();
    assert_eq!(seen.header("x-forwarded-for"), Some("127.0.0.3"));

    let mut spoofer = connect_from(&gw, "127.0.0.3").await;
    spoofer
        .write_all(&[&header[..], request.as_bytes()].concat())
        .await
        .unwrap();
    assert_eq!(read_response(&mut spoofer).await.status, 400);
    assert_eq!(backend.request_count(), 2);
}

#[test]
fn proxy_protocol_from_errors_name_the_key_and_line() {
    let cases = [
        (
            "proxy_protocol_from = [\"10.0.0.0/8\"]",
            "listener[0].proxy_protocol_from",
            "only with proxy_protocol = true",
        ),
        (
            "proxy_protocol = true\nproxy_protocol_from = []",
            "listener[0].proxy_protocol_from",
            "empty",
        ),
        (
            "proxy_protocol = true\nproxy_protocol_from = [\"10.0.0.0/33\"]",
            "listener[0].proxy_protocol_from[0]",
            "prefix length",
        ),
    ];
    for (keys, key, words) in cases {
        let toml = format!(
            "[[listener]]\nlisten = \"127.0.0.1:0\"\n{keys}\n{}",
            route("r", "/", &["ws://127.0.0.1:1".to_string()])
        );
        let errors = wsgate::config::from_toml_str(&toml).unwrap_err();
        let shown: Vec<String> = errors.iter().map(ToString::to_string).collect();
        let line = toml
            .lines()
            .position(|l| l.starts_with("proxy_protocol_from"))
            .unwrap()
            + 1;
        assert!(
            matches!(&errors[..], [e] if e.line == Some(line) && e.key == key && e.message.contains(words)),
            "{keys}: {shown:?}"
        );
    }
}

#[tokio::test]
async fn without_the_option_a_proxy_line_is_a_bad_request() {
    let backend = EchoBackend::spawn().await;
    let gw = Gateway::spawn(&route("r", "/", &[backend.url()])).await;
    let request = [
        &v1(addr("203.0.113.7:51234"), addr("192.0.2.10:80"))[..],
        upgrade_request("/", "").as_bytes(),
    ]
    .concat();
    let (_stream, resp) = raw_exchange(gw.addr, &request).await;
    assert_eq!(resp.status, 400, "{resp:?}");
    assert_eq!(backend.request_count(), 0);
}

#[tokio::test]
async fn proxy_header_then_tls() {
    let ca = TestCa::new();
    let (cert, key) = ca.leaf("localhost", &["localhost"]);
    let connector = ca.connector();
    let backend = EchoBackend::spawn().await;
    let gw = pp_gateway(
        &backend,
        &format!(
            "[listener.tls]\ncert = \"{}\"\nkey = \"{}\"\n",
            cert.display(),
            key.display()
        ),
    )
    .await;
    let mut tcp = TcpStream::connect(gw.addr).await.unwrap();
    let header = v2(
        PROXY,
        Some((addr("[2001:db8::42]:40000"), addr("[2001:db8::1]:443"))),
        &[(0x01, b"http/1.1".to_vec())],
    );
    tcp.write_all(&header).await.unwrap();
    let tls = tokio::time::timeout(
        STEP,
        connector.connect(ServerName::try_from("localhost").unwrap(), tcp),
    )
    .await
    .unwrap()
    .expect("TLS after the PROXY header");
    let (mut ws, resp) =
        tokio_tungstenite::client_async(format!("wss://localhost:{}/", gw.addr.port()), tls)
            .await
            .unwrap();
    assert_eq!(resp.status(), 101);
    let seen = backend.last_request();
    assert_eq!(seen.header("x-forwarded-for"), Some("2001:db8::42"));
    assert_eq!(seen.header("x-forwarded-proto"), Some("https"));
    ws.send(Message::text("over TLS")).await.unwrap();
    let got = tokio::time::timeout(STEP, ws.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(got, Message::text("over TLS"));
}

// ---- the parser's properties ----

fn ip_pair() -> impl Strategy<Value = (IpAddr, IpAddr)> {
    prop_oneof![
        (any::<u32>(), any::<u32>())
            .prop_map(|(s, d)| (IpAddr::V4(Ipv4Addr::from(s)), IpAddr::V4(Ipv4Addr::from(d)))),
        (any::<u128>(), any::<u128>())
            .prop_map(|(s, d)| (IpAddr::V6(Ipv6Addr::from(s)), IpAddr::V6(Ipv6Addr::from(d)))),
    ]
}

fn endpoints() -> impl Strategy<Value = (SocketAddr, SocketAddr)> {
    (ip_pair(), any::<u16>(), any::<u16>())
        .prop_map(|((s, d), sp, dp)| (SocketAddr::new(s, sp), SocketAddr::new(d, dp)))
}

/// A whole header parses to `source` with its own length, whatever follows it; every strict
/// prefix of it is incomplete (so a reader never stops early, nor reads past it).
fn check_round_trip(
    header: &[u8],
    trailing: &[u8],
    source: Option<SocketAddr>,
) -> Result<(), TestCaseError> {
    let buf = [header, trailing].concat();
    let parsed = parse(&buf);
    prop_assert!(
        matches!(parsed, Ok((s, n)) if s == source && n == header.len()),
        "{parsed:?}"
    );
    for cut in 0..header.len() {
        let parsed = parse(&header[..cut]);
        prop_assert!(
            matches!(parsed, Err(ProxyHeaderError::Incomplete)),
            "prefix of {cut}: {parsed:?}"
        );
    }
    Ok(())
}

proptest! {
    #[test]
    fn random_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..300)) {
        if let Ok((_, n)) = parse(&bytes) {
            prop_assert!(n <= bytes.len());
        }
    }

    /// Random bytes behind each signature, so the parser gets past its first check.
    #[test]
    fn random_bytes_after_a_signature_never_panic(
        v2_header in any::<bool>(),
        bytes in prop::collection::vec(any::<u8>(), 0..300),
    ) {
        let prefix: &[u8] = if v2_header { &V2_SIGNATURE } else { b"PROXY " };
        let buf = [prefix, &bytes].concat();
        if let Ok((_, n)) = parse(&buf) {
            prop_assert!(n <= buf.len());
        }
    }

    #[test]
    fn v1_round_trips(
        (src, dst) in endpoints(),
        trailing in prop::collection::vec(any::<u8>(), 0..32),
    ) {
        check_round_trip(&v1(src, dst), &trailing, Some(src))?;
    }

    #[test]
    fn v2_round_trips(
        (src, dst) in endpoints(),
        local in any::<bool>(),
        tlvs in prop::collection::vec((any::<u8>(), prop::collection::vec(any::<u8>(), 0..40)), 0..4),
        trailing in prop::collection::vec(any::<u8>(), 0..32),
    ) {
        let command = if local { LOCAL } else { PROXY };
        let expected = (!local).then_some(src);
        check_round_trip(&v2(command, Some((src, dst)), &tlvs), &trailing, expected)?;
    }
}
