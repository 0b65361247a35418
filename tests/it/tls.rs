//! wss:// termination with certificates generated at test time (rcgen): echo over TLS, SNI
//! picks the certificate, config errors name the file, and a client that never starts TLS is
//! closed after the handshake timeout while others are served.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use futures_util::SinkExt;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_tungstenite::tungstenite::Message;

use crate::support::tls::*;
use crate::support::*;

/// Starts a gateway with `listener` and one route `r` at `/` to `backend`.
async fn gateway(listener: &str, backend: String) -> Gateway {
    Gateway::spawn(&format!("{listener}{}", route("r", "/", &[backend]))).await
}

#[tokio::test]
async fn wss_echo_through_wsgate() {
    let ca = TestCa::new();
    let (cert, key) = ca.leaf("localhost", &["localhost"]);
    let backend = EchoBackend::spawn().await;
    let gw = gateway(&tls_listener(&cert, &key, ""), backend.url()).await;
    let (tls, _) = tls_connect(&ca, &gw, "localhost").await;
    assert_eq!(
        tls.get_ref().1.alpn_protocol(),
        None,
        "the client offered no ALPN"
    );
    let (mut ws, resp) = wss_upgrade(&gw, tls).await;
    assert_eq!(resp.status(), 101);
    ws.send(Message::text("over TLS")).await.unwrap();
    let got = next_message(&mut ws).await;
    assert_eq!(got, Message::text("over TLS"));
    // The backend is told the client came over https.
    assert_eq!(
        backend.last_request().header("x-forwarded-proto"),
        Some("https")
    );
}

#[tokio::test]
async fn sni_picks_the_certificate() {
    let ca = TestCa::new();
    let (dc, dk) = ca.leaf("default", &["localhost"]);
    let (ac, ak) = ca.leaf("a", &["a.e.test"]);
    let (bc, bk) = ca.leaf("b", &["b.e.test", "*.b.e.test"]);
    let (wc, wk) = ca.leaf("w", &["*.e.test"]);
    // The wider wildcard first: the most specific one that covers a name still serves it.
    let extra = format!(
        "[[listener.tls.sni]]\nhosts = [\"*.e.test\"]\ncert = \"{}\"\nkey = \"{}\"\n[[listener.tls.sni]]\nhosts = [\"a.e.test\"]\ncert = \"{}\"\nkey = \"{}\"\n[[listener.tls.sni]]\nhosts = [\"b.e.test\", \"*.b.e.test\"]\ncert = \"{}\"\nkey = \"{}\"\n",
        wc.display(),
        wk.display(),
        ac.display(),
        ak.display(),
        bc.display(),
        bk.display()
    );
    let backend = EchoBackend::spawn().await;
    let gw = gateway(&tls_listener(&dc, &dk, &extra), backend.url()).await;
    let pem_der = |p: &PathBuf| CertificateDer::from_pem_file(p).unwrap();
    assert_eq!(tls_connect(&ca, &gw, "a.e.test").await.1, pem_der(&ac));
    assert_eq!(tls_connect(&ca, &gw, "b.e.test").await.1, pem_der(&bc));
    assert_eq!(tls_connect(&ca, &gw, "x.b.e.test").await.1, pem_der(&bc));
    assert_eq!(tls_connect(&ca, &gw, "z.e.test").await.1, pem_der(&wc));
    assert_eq!(tls_connect(&ca, &gw, "localhost").await.1, pem_der(&dc));
}

/// A listener with only SNI entries refuses a name none of them covers with
/// `unrecognized_name` (RFC 6066 §3), and a client that sends no name with
/// `missing_extension` (RFC 8446 §9.2). rustls's own answer to both was `access_denied`,
/// which a client reports as being refused for who it is.
#[tokio::test]
async fn a_name_no_certificate_serves_gets_unrecognized_name() {
    let ca = TestCa::new();
    let (ac, ak) = ca.leaf("a", &["a.e.test"]);
    let listener = format!(
        "[[listener]]\nlisten = \"127.0.0.1:0\"\n[listener.tls]\n[[listener.tls.sni]]\nhosts = [\"a.e.test\"]\ncert = {:?}\nkey = {:?}\n",
        ac.display().to_string(),
        ak.display().to_string()
    );
    let backend = EchoBackend::spawn().await;
    let gw = gateway(&listener, backend.url()).await;
    let alert = |name: &'static str| {
        let connector = ca.connector();
        let addr = gw.addr;
        async move {
            let tcp = TcpStream::connect(addr).await.unwrap();
            let server = ServerName::try_from(name).unwrap();
            let err = connector
                .connect(server, tcp)
                .await
                .err()
                .unwrap_or_else(|| panic!("{name}: the handshake succeeded"));
            match err.into_inner().unwrap().downcast::<rustls::Error>() {
                Ok(e) => *e,
                Err(e) => panic!("{name}: {e}"),
            }
        }
    };
    assert_eq!(
        alert("b.e.test").await,
        rustls::Error::AlertReceived(rustls::AlertDescription::UnrecognisedName)
    );
    // An address as the server name: rustls sends no SNI.
    assert_eq!(
        alert("127.0.0.1").await,
        rustls::Error::AlertReceived(rustls::AlertDescription::MissingExtension)
    );
    // The name it serves is served.
    assert_eq!(
        tls_connect(&ca, &gw, "a.e.test").await.1,
        CertificateDer::from_pem_file(&ac).unwrap()
    );
    let counts = gw.handle().refusals();
    assert_eq!(
        counts.get(&("-".to_string(), "tls_handshake_failed")),
        Some(&2)
    );
}

#[tokio::test]
async fn silent_and_plain_http_clients_are_closed_while_others_are_served() {
    let ca = TestCa::new();
    let (cert, key) = ca.leaf("localhost", &["localhost"]);
    let backend = EchoBackend::spawn().await;
    let gw = gateway(&tls_listener(&cert, &key, ""), backend.url()).await;
    let mut silent = TcpStream::connect(gw.addr).await.unwrap();
    let (mut plain, _) = {
        let mut s = TcpStream::connect(gw.addr).await.unwrap();
        tokio::io::AsyncWriteExt::write_all(&mut s, upgrade_request("/", "").as_bytes())
            .await
            .unwrap();
        (s, ())
    };
    // Others are served meanwhile.
    let (tls, _) = tls_connect(&ca, &gw, "localhost").await;
    let (mut ws, _) = wss_upgrade(&gw, tls).await;
    ws.send(Message::text("served")).await.unwrap();
    next_message(&mut ws).await;
    // The silent client is closed after the handshake timeout, without a word.
    let mut buf = Vec::new();
    tokio::time::timeout(STEP, silent.read_to_end(&mut buf))
        .await
        .expect("not closed")
        .ok();
    assert!(buf.is_empty(), "{buf:?}");
    // The plain-HTTP client is told in plain HTTP, and closed.
    let mut buf = Vec::new();
    tokio::time::timeout(STEP, plain.read_to_end(&mut buf))
        .await
        .expect("not closed")
        .unwrap();
    let text = String::from_utf8_lossy(&buf);
    assert!(text.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{text}");
    assert!(
        text.ends_with("This port speaks TLS: use https:// or wss://.\n"),
        "{text}"
    );
    let counts = gw.handle().refusals();
    assert_eq!(
        counts.get(&("-".to_string(), "plain_http_on_tls")),
        Some(&1)
    );
    assert_eq!(
        counts.get(&("-".to_string(), "tls_handshake_timeout")),
        Some(&1)
    );
}

#[tokio::test]
async fn tls_config_errors_name_the_key_and_file() {
    let ca = TestCa::new();
    let (cert, key) = ca.leaf("one", &["localhost"]);
    let (_, other_key) = ca.leaf("two", &["localhost"]);
    let route = route("r", "/", &["ws://127.0.0.1:1".to_string()]);
    let missing = ca.dir.join("missing.pem");
    let errors_with = |cert: &Path, key: &Path| {
        wsgate::config::from_toml_str(&format!("{}{route}", tls_listener(cert, key, "")))
            .unwrap_err()
    };
    let errs = errors_with(&missing, &key);
    assert!(
        errs[0].key == "listener[0].tls.cert" && errs[0].message.contains("missing.pem"),
        "{errs:?}"
    );
    // Both files missing: one run names both, each on its own key.
    let missing_key = ca.dir.join("missing-key.pem");
    let errs = errors_with(&missing, &missing_key);
    let named: Vec<_> = errs.iter().map(|e| e.key.as_str()).collect();
    assert_eq!(
        named,
        ["listener[0].tls.cert", "listener[0].tls.key"],
        "{errs:?}"
    );
    assert!(errs[1].message.contains("missing-key.pem"), "{errs:?}");
    let errs = errors_with(&cert, &other_key);
    assert!(
        errs[0]
            .message
            .contains("is not the key of the certificate in"),
        "{errs:?}"
    );
    // A certificate file given as the key: no private key in it, only certificates.
    let errs = errors_with(&cert, &cert);
    assert!(
        errs[0]
            .message
            .contains("no private key in the file, only certificates"),
        "{errs:?}"
    );
    assert_eq!(errs[0].line, Some(6));
    // The chain written CA first: the key is the second certificate's, and the error says so.
    let ca_first = ca.dir.write(
        "ca-first.pem",
        std::fs::read_to_string(ca.ca_file()).unwrap() + &std::fs::read_to_string(&cert).unwrap(),
    );
    let errs = errors_with(&ca_first, &key);
    assert_eq!(errs[0].key, "listener[0].tls.key", "{errs:?}");
    assert!(
        errs[0]
            .message
            .contains("belongs to certificate 2 of the 2")
            && errs[0].message.contains("leaf first"),
        "{errs:?}"
    );
    // Encrypted keys (made by `openssl genpkey -aes-128-cbc` and `openssl ec -aes128`) are
    // named as such, not as files without a key or with bad base64.
    for form in ["pkcs8", "traditional"] {
        let encrypted = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join(format!("tests/fixtures/encrypted-{form}.key"));
        let errs = errors_with(&cert, &encrypted);
        assert_eq!(errs[0].key, "listener[0].tls.key", "{errs:?}");
        assert!(
            errs[0].message.contains("the private key is encrypted")
                && errs[0].message.contains("openssl pkey"),
            "{form}: {errs:?}"
        );
    }

    // A backend client certificate that cannot be read is reported on `client_cert`, not on
    // the route's (readable) `ca`.
    let errs = wsgate::config::from_toml_str(&format!(
        "[[route]]\nname = \"r\"\npath = \"/\"\nbackends = [\"wss://localhost:1\"]\n\
         [route.backend_tls]\nca = {:?}\nclient_cert = {:?}\nclient_key = {:?}\n",
        ca.ca_file(),
        missing,
        key
    ))
    .unwrap_err();
    let backend_tls: Vec<_> = errs
        .iter()
        .filter(|e| e.key.contains("backend_tls"))
        .collect();
    assert_eq!(backend_tls.len(), 1, "{errs:?}");
    assert_eq!(backend_tls[0].key, "route[0].backend_tls.client_cert");
    assert!(backend_tls[0].message.contains("missing.pem"), "{errs:?}");

    // The CA bundle and both client files unreadable: one run names all three, each on its
    // own key (the client pair is read even when the bundle failed).
    let missing_ca = ca.dir.join("missing-ca.pem");
    let errs = wsgate::config::from_toml_str(&format!(
        "[[route]]\nname = \"r\"\npath = \"/\"\nbackends = [\"wss://localhost:1\"]\n\
         [route.backend_tls]\nca = {missing_ca:?}\nclient_cert = {missing:?}\nclient_key = {missing_key:?}\n"
    ))
    .unwrap_err();
    let named: Vec<_> = errs
        .iter()
        .filter(|e| e.key.contains("backend_tls"))
        .map(|e| (e.key.as_str(), e.line))
        .collect();
    assert_eq!(
        named,
        [
            ("route[0].backend_tls.ca", Some(6)),
            ("route[0].backend_tls.client_cert", Some(7)),
            ("route[0].backend_tls.client_key", Some(8)),
        ],
        "{errs:?}"
    );
    assert!(errs.iter().any(|e| e.message.contains("missing-ca.pem")));
    assert!(errs.iter().any(|e| e.message.contains("missing-key.pem")));

    // An SNI name served by two entries (in any case): which one served it depended on their
    // order, and the other's certificate went unused.
    let sni = |hosts: &str| {
        format!(
            "[[listener.tls.sni]]\nhosts = [{hosts}]\ncert = {:?}\nkey = {:?}\n",
            cert.display().to_string(),
            key.display().to_string()
        )
    };
    // (Twice in one entry is the same certificate: no error for `sni[0]`.)
    let twice = format!(
        "{}{}",
        sni("\"a.test\", \"a.test\""),
        sni("\"b.test\", \"A.test\"")
    );
    let errs =
        wsgate::config::from_toml_str(&format!("{}{route}", tls_listener(&cert, &key, &twice)))
            .unwrap_err();
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert_eq!(errs[0].key, "listener[0].tls.sni[1].hosts");
    assert_eq!(
        errs[0].message,
        "\"a.test\" is already served by listener[0].tls.sni[0]: each SNI name goes to one certificate"
    );
}

#[tokio::test]
async fn certificate_reload_keeps_live_sessions_and_serves_the_new_certificate() {
    let ca = TestCa::new();
    let (cert, key) = ca.leaf("live", &["localhost"]);
    let backend = EchoBackend::spawn().await;
    let gw = gateway(&tls_listener(&cert, &key, ""), backend.url()).await;
    let (tls, first) = tls_connect(&ca, &gw, "localhost").await;
    let (mut ws, _) = wss_upgrade(&gw, tls).await;

    // New files in place, then the reload (what SIGHUP does).
    let (new_cert, new_key) = ca.leaf("next", &["localhost"]);
    std::fs::copy(&new_cert, &cert).unwrap();
    std::fs::copy(&new_key, &key).unwrap();
    let results = gw.handle().reload_certificates();
    assert!(results.iter().all(|(_, r)| r.is_ok()), "{results:?}");
    let (_, second) = tls_connect(&ca, &gw, "localhost").await;
    assert_ne!(first, second, "a new handshake sees the new certificate");
    ws.send(Message::text("still here")).await.unwrap();
    let got = next_message(&mut ws).await;
    assert_eq!(
        got,
        Message::text("still here"),
        "the open session keeps echoing"
    );

    // A broken file: the entry keeps the certificate in use, and the reload names the file.
    std::fs::write(&key, "not a key").unwrap();
    let results = gw.handle().reload_certificates();
    let kept = &results[0].1.as_ref().unwrap().kept;
    assert_eq!(kept.len(), 1, "{kept:?}");
    assert!(kept[0].contains(&key.display().to_string()), "{kept:?}");
    let (_, third) = tls_connect(&ca, &gw, "localhost").await;
    assert_eq!(third, second);
}

/// Reads a certificate chain and its private key from PEM files.
fn load_pem_pair(
    cert: &Path,
    key: &Path,
) -> (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
    let chain = CertificateDer::pem_file_iter(cert)
        .unwrap()
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    (chain, PrivateKeyDer::from_pem_file(key).unwrap())
}

/// A wss:// backend's TLS side: a certificate for `localhost` from `ca`.
fn backend_acceptor(ca: &TestCa) -> tokio_rustls::TlsAcceptor {
    let (cert, key) = ca.leaf("backend", &["localhost"]);
    let (chain, key) = load_pem_pair(&cert, &key);
    let config = rustls::ServerConfig::builder_with_provider(wsgate::tls::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .unwrap();
    tokio_rustls::TlsAcceptor::from(Arc::new(config))
}

/// A wss:// echo backend with a certificate for `localhost` from `ca`.
async fn wss_backend(ca: &TestCa) -> std::net::SocketAddr {
    wss_backend_with(ca, |_| {}).await
}

/// [`wss_backend`], with `on_tls` given each connection's TLS stream before its upgrade.
async fn wss_backend_with(
    ca: &TestCa,
    on_tls: impl Fn(&mut BackendTls) + Clone + Send + 'static,
) -> std::net::SocketAddr {
    let acceptor = backend_acceptor(ca);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (acceptor, on_tls) = (acceptor.clone(), on_tls.clone());
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                on_tls(&mut tls);
                let Ok(mut ws) = tokio_tungstenite::accept_async(tls).await else {
                    return;
                };
                while let Some(Ok(m)) = futures_util::StreamExt::next(&mut ws).await {
                    if (m.is_text() || m.is_binary()) && ws.send(m).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    addr
}

/// A wss:// backend's TLS stream.
type BackendTls = tokio_rustls::server::TlsStream<TcpStream>;

/// A `[route.backend_tls]` table trusting `ca`.
fn backend_ca(ca: &TestCa) -> String {
    format!("[route.backend_tls]\nca = \"{}\"\n", ca.ca_file().display())
}

fn wss_route(addr: std::net::SocketAddr, backend_tls: &str) -> String {
    format!(
        "[[route]]\nname = \"r\"\npath = \"/\"\nbackends = [\"wss://localhost:{}\"]\n{backend_tls}",
        addr.port()
    )
}

#[tokio::test]
async fn wss_backend_verified_with_a_configured_ca() {
    let ca = TestCa::new();
    let addr = wss_backend(&ca).await;
    let gw = Gateway::spawn(&wss_route(addr, &backend_ca(&ca))).await;
    let (mut ws, _) = connect(&gw.url("/")).await;
    ws.send(Message::text("to a wss backend")).await.unwrap();
    assert_eq!(next_data(&mut ws).await, Message::text("to a wss backend"));
}

#[tokio::test]
async fn wss_backend_that_does_not_verify_is_a_bad_gateway() {
    let ca = TestCa::new();
    let addr = wss_backend(&ca).await;
    // Verified against the system's roots, which do not know the test CA.
    let gw = Gateway::spawn(&wss_route(addr, "")).await;
    let (_s, resp) = raw_exchange(gw.addr, upgrade_request("/", "").as_bytes()).await;
    assert_eq!(resp.status, 502);
    // Why the certificate failed is for the log...
    assert_eq!(resp.body, "backend TLS handshake failed\n");
    // ...and for the client only where the config says so (development).
    let gw = Gateway::spawn(&format!(
        "[limits]\nerror_detail = \"client\"\n{}",
        wss_route(addr, "")
    ))
    .await;
    let (_s, resp) = raw_exchange(gw.addr, upgrade_request("/", "").as_bytes()).await;
    assert_eq!(resp.status, 502);
    assert!(
        resp.body.starts_with("backend TLS handshake failed: ")
            && resp.body.contains("not signed by a CA wsgate trusts"),
        "{}",
        resp.body
    );
}

/// The 502 a handshake gets through `routes` with `error_detail = "client"`: its body, the
/// backend failure in words.
async fn backend_failure_in_words(routes: &str) -> String {
    let gw = Gateway::spawn(&format!("[limits]\nerror_detail = \"client\"\n{routes}")).await;
    let (_s, resp) = raw_exchange(gw.addr, upgrade_request("/", "").as_bytes()).await;
    assert_eq!(resp.status, 502, "{}", resp.body);
    resp.body
}

/// A backend that presents a CA certificate as its own (`openssl req -x509` marks the
/// self-signed certificate it makes CA:TRUE), trusted as `ca`, is told so in words, with the
/// fix: it read "the backend's certificate was not accepted (… CaUsedAsEndEntity)".
#[tokio::test]
async fn a_backend_presenting_a_ca_certificate_is_told_so() {
    let dir = TempDir::new("ca-as-leaf");
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(vec!["localhost".to_string()]).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let cert = params.self_signed(&key).unwrap();
    let cert_file = dir.write("self.pem", cert.pem());
    let key_file = dir.write("self.key", key.serialize_pem());
    let (chain, key) = load_pem_pair(&cert_file, &key_file);
    let config = rustls::ServerConfig::builder_with_provider(wsgate::tls::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let _ = acceptor.accept(tcp).await;
        }
    });
    let ca = format!("[route.backend_tls]\nca = {cert_file:?}\n");
    let body = backend_failure_in_words(&wss_route(addr, &ca)).await;
    assert!(
        body.contains("the backend's certificate is a CA certificate"),
        "{body}"
    );
}

/// A wss:// backend that completes the TLS handshake and then drops the connection without
/// a word (as one that refuses a client certificate without an alert does) is said to have
/// done that, not "peer closed connection without sending TLS close_notify".
#[tokio::test]
async fn a_backend_that_drops_the_connection_after_the_tls_handshake_is_told_so() {
    let ca = TestCa::new();
    let acceptor = backend_acceptor(&ca);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            // The handshake and the request read (nothing left unread, which would make the
            // close a reset), then the connection dropped: no close_notify.
            let Ok(mut tls) = acceptor.accept(tcp).await else {
                continue;
            };
            let mut head = Vec::new();
            while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                let mut chunk = [0u8; 4096];
                match tokio::io::AsyncReadExt::read(&mut tls, &mut chunk).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => head.extend_from_slice(&chunk[..n]),
                }
            }
            drop(tls);
        }
    });
    let body = backend_failure_in_words(&wss_route(addr, &backend_ca(&ca))).await;
    assert!(
        body.contains("the backend closed the connection right after the TLS handshake"),
        "{body}"
    );
}

/// The other common mistakes with a wss:// backend are named in words too: a certificate
/// for another host than the backend URL's, and a plain ws:// server behind a wss:// URL.
#[tokio::test]
async fn wss_backend_failures_say_what_is_wrong() {
    let ca = TestCa::new();
    let addr = wss_backend(&ca).await;
    let by_ip = format!(
        "[[route]]\nname = \"r\"\npath = \"/\"\nbackends = [\"wss://127.0.0.1:{}\"]\n{}",
        addr.port(),
        backend_ca(&ca)
    );
    let body = backend_failure_in_words(&by_ip).await;
    assert!(
        body.contains("certificate is not valid for \"127.0.0.1\": it names localhost "),
        "{body}"
    );
    let plain = EchoBackend::spawn().await;
    let body = backend_failure_in_words(&route(
        "r",
        "/",
        &[plain.url().replacen("ws://", "wss://", 1)],
    ))
    .await;
    assert!(
        body.contains("a ws:// server behind a wss:// URL"),
        "{body}"
    );
}

/// A wss:// backend that requires a client certificate from `ca` and speaks only TLS
/// `version`; it echoes. A refused handshake keeps its TCP connection open until the gateway
/// closes it, so the alert is what the gateway reads, never a reset.
async fn wss_backend_requiring_a_client_cert(
    ca: &TestCa,
    version: &'static rustls::SupportedProtocolVersion,
) -> std::net::SocketAddr {
    let (cert, key) = ca.leaf("backend", &["localhost"]);
    let (chain, key) = load_pem_pair(&cert, &key);
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.issuer.der().clone()).unwrap();
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        wsgate::tls::provider(),
    )
    .build()
    .unwrap();
    let config = rustls::ServerConfig::builder_with_provider(wsgate::tls::provider())
        .with_protocol_versions(&[version])
        .unwrap()
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                match acceptor.accept(tcp).into_fallible().await {
                    Ok(tls) => {
                        let Ok(mut ws) = tokio_tungstenite::accept_async(tls).await else {
                            return;
                        };
                        while let Some(Ok(m)) = futures_util::StreamExt::next(&mut ws).await {
                            if m.is_text() && ws.send(m).await.is_err() {
                                break;
                            }
                        }
                    }
                    Err((_, mut tcp)) => {
                        let mut sink = [0u8; 1024];
                        while matches!(tcp.read(&mut sink).await, Ok(n) if n > 0) {}
                    }
                }
            });
        }
    });
    addr
}

/// A backend that refuses wsgate's side of the TLS handshake (no client certificate, or one
/// it does not trust) is a TLS failure (`backend_tls`) that names the setting, under TLS 1.3
/// too, where the refusal (an alert) arrives after the client's handshake is over, on the
/// first read. It was a broken connection there (`backend_io`, "backend connection failed
/// during the handshake: ... TLS alert 116 from the peer").
#[tokio::test]
async fn a_backend_that_refuses_the_client_certificate_is_a_tls_failure() {
    let ca = TestCa::new();
    let client_cert = |(cert, key): (PathBuf, PathBuf)| {
        format!(
            "client_cert = \"{}\"\nclient_key = \"{}\"\n",
            cert.display(),
            key.display()
        )
    };
    // Self-signed: the backend answers `unknown_ca`.
    let self_signed = rcgen::generate_simple_self_signed(vec!["wsgate.test".into()]).unwrap();
    let self_signed = client_cert(ca.write_pair(
        "self-signed",
        &self_signed.cert.pem(),
        &self_signed.signing_key.serialize_pem(),
    ));
    // From another CA of the same name as the backend's: its signature does not verify
    // (`decrypt_error`).
    let other_ca = TestCa::new();
    let namesake = client_cert(other_ca.leaf("namesake", &["wsgate.test"]));
    let none = "the backend requires a client certificate and wsgate has none: set \
                [route.backend_tls] client_cert and client_key";
    let refused = "the backend refused wsgate's client certificate ([route.backend_tls] \
                   client_cert: signed by a CA the backend trusts?";
    for (version, client_cert, says) in [
        (&rustls::version::TLS13, "", none),
        (&rustls::version::TLS12, "", none),
        (&rustls::version::TLS13, self_signed.as_str(), refused),
        (&rustls::version::TLS12, self_signed.as_str(), refused),
        (&rustls::version::TLS13, namesake.as_str(), refused),
    ] {
        let case = format!("{version:?}, {client_cert:?}");
        let addr = wss_backend_requiring_a_client_cert(&ca, version).await;
        let url = format!("wss://localhost:{}", addr.port());
        let gw = Gateway::spawn(&format!(
            "[[listener]]\nlisten = \"127.0.0.1:0\"\n[admin]\nlisten = \"127.0.0.1:0\"\n\
             [limits]\nerror_detail = \"client\"\n{}{client_cert}",
            wss_route(addr, &backend_ca(&ca))
        ))
        .await;
        let (_s, resp) = raw_exchange(gw.addr, upgrade_request("/", "").as_bytes()).await;
        assert_eq!(resp.status, 502, "{case}: {resp:?}");
        let prefix = format!("backend TLS handshake failed: {url}: {says}");
        assert!(resp.body.starts_with(&prefix), "{case}: {}", resp.body);
        let admin = gw.handle().admin_addr().unwrap();
        let failures = scrape(admin).await.value(
            "wsgate_backend_failures_total",
            &[("backend", &url), ("outcome", "backend_tls")],
        );
        assert_eq!(failures, 1.0, "{case}");
    }
}

/// The plain-HTTP path (`http = true`) to the same backend: its refusal of wsgate's side of
/// the TLS handshake is a TLS failure that names the setting there too. Under TLS 1.3 the
/// alert comes after the client's handshake, on the first read of the response: it read as
/// a request that broke ("backend connection failed"), 502 `backend_request_failed`.
#[tokio::test]
async fn a_plain_request_to_a_backend_that_refuses_the_client_certificate_is_a_tls_failure() {
    let ca = TestCa::new();
    let addr = wss_backend_requiring_a_client_cert(&ca, &rustls::version::TLS13).await;
    let gw = Gateway::spawn(&format!(
        "[[listener]]\nlisten = \"127.0.0.1:0\"\n[limits]\nerror_detail = \"client\"\n{}",
        wss_route(addr, &format!("http = true\n{}", backend_ca(&ca)))
    ))
    .await;
    let (_s, resp) = raw_exchange(
        gw.addr,
        b"GET /page HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(resp.status, 502, "{resp:?}");
    assert!(
        resp.body.starts_with("backend TLS handshake failed: ")
            && resp
                .body
                .contains("the backend requires a client certificate and wsgate has none"),
        "{}",
        resp.body
    );
}

/// A `tcp` check of a `wss://` backend fails when the backend refuses wsgate's TLS handshake,
/// and passes when it accepts it. Under TLS 1.3 the refusal (an alert) comes after the
/// client's handshake is over: the check, which did not read, called such a backend healthy
/// while every handshake to it got 502.
#[tokio::test]
async fn a_tcp_check_fails_a_backend_that_refuses_the_tls_handshake() {
    let ca = TestCa::new();
    let refusing = wss_backend_requiring_a_client_cert(&ca, &rustls::version::TLS13).await;
    let accepting = wss_backend_requiring_a_client_cert(&ca, &rustls::version::TLS13).await;
    let (cert, key) = ca.leaf("wsgate", &["wsgate.test"]);
    let health = "[route.health]\ncheck = \"tcp\"\ninterval = \"100ms\"\ntimeout = \"1s\"\n\
                  unhealthy_threshold = 1\nhealthy_threshold = 1\n";
    let route_to = |name: &str, addr: std::net::SocketAddr, client_cert: String| {
        format!(
            "[[route]]\nname = \"{name}\"\npath = \"/{name}\"\nbackends = \
             [\"wss://localhost:{}\"]\n{}{client_cert}{health}",
            addr.port(),
            backend_ca(&ca),
        )
    };
    let gw = Gateway::spawn(&format!(
        "[[listener]]\nlisten = \"127.0.0.1:0\"\n[admin]\nlisten = \"127.0.0.1:0\"\n{}{}",
        route_to("refusing", refusing, String::new()),
        route_to(
            "accepting",
            accepting,
            format!(
                "client_cert = \"{}\"\nclient_key = \"{}\"\n",
                cert.display(),
                key.display()
            )
        ),
    ))
    .await;
    let admin = gw.handle().admin_addr().unwrap();
    let refusing = format!("wss://localhost:{}", refusing.port());
    let accepting = format!("wss://localhost:{}", accepting.port());
    let checks = |m: &prom::Exposition, url: &str, result: &str| {
        m.value(
            "wsgate_backend_health_checks_total",
            &[("backend", url), ("result", result)],
        )
    };
    // Until each backend has had two checks (a condition on the gateway, polled).
    let deadline = tokio::time::Instant::now() + STEP;
    let m = loop {
        let m = scrape(admin).await;
        let (failed, ok) = (
            checks(&m, &refusing, "failed"),
            checks(&m, &accepting, "ok"),
        );
        if failed >= 2.0 && ok >= 2.0 {
            break m;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "checks of the refusing backend failed {failed} times (passed {}), of the \
             accepting one passed {ok} times",
            checks(&m, &refusing, "ok")
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    assert_eq!(checks(&m, &refusing, "ok"), 0.0);
    assert_eq!(checks(&m, &accepting, "failed"), 0.0);
    let healthy = |url: &str| m.value("wsgate_backend_healthy", &[("backend", url)]);
    assert_eq!(healthy(&refusing), 0.0);
    assert_eq!(healthy(&accepting), 1.0);
}

#[tokio::test]
async fn wss_backend_with_verification_switched_off() {
    let ca = TestCa::new();
    let addr = wss_backend(&ca).await;
    let gw = Gateway::spawn(&wss_route(
        addr,
        "[route.backend_tls]\ninsecure_skip_verify = true\n",
    ))
    .await;
    let (mut ws, _) = connect(&gw.url("/")).await;
    ws.send(Message::text("unverified")).await.unwrap();
    assert_eq!(next_data(&mut ws).await, Message::text("unverified"));
}

#[tokio::test]
async fn verification_switched_off_for_one_backend_only() {
    // Two wss backends on one route: `dev` (its certificate from a CA nobody trusts) is
    // marked insecure_skip_verify; `prod` is verified with the configured CA. Balancing
    // alternates, so both are used.
    let prod_ca = TestCa::new();
    let dev_ca = TestCa::new();
    let prod = wss_backend(&prod_ca).await;
    let dev = wss_backend(&dev_ca).await;
    let gw = Gateway::spawn(&format!(
        "[[route]]\nname = \"r\"\npath = \"/\"\n\
         backends = [\"wss://localhost:{}\", {{ url = \"wss://localhost:{}\", insecure_skip_verify = true }}]\n\
         [route.backend_tls]\nca = \"{}\"\n",
        prod.port(),
        dev.port(),
        prod_ca.ca_file().display()
    ))
    .await;
    for i in 0..4 {
        let (mut ws, _) = connect(&gw.url("/")).await;
        ws.send(Message::text(format!("hello {i}"))).await.unwrap();
        assert_eq!(
            next_data(&mut ws).await,
            Message::text(format!("hello {i}"))
        );
    }

    // Without the switch, the dev backend's certificate does not verify: 502.
    let gw = Gateway::spawn(&wss_route(dev, &backend_ca(&prod_ca))).await;
    let (_s, resp) = raw_exchange(gw.addr, upgrade_request("/", "").as_bytes()).await;
    assert_eq!(resp.status, 502);

    // The switch is refused where it means nothing.
    let errors = wsgate::config::from_toml_str(
        "[[listener]]\nlisten = \"127.0.0.1:0\"\n[[route]]\nname = \"r\"\npath = \"/\"\n\
         backends = [{ url = \"ws://127.0.0.1:1\", insecure_skip_verify = true }]\n",
    )
    .unwrap_err();
    assert_eq!(errors[0].key, "route[0].backends[0].insecure_skip_verify");
}

#[tokio::test]
async fn a_tls_1_0_client_is_refused_with_a_fatal_alert() {
    use tokio::io::AsyncWriteExt;
    let ca = TestCa::new();
    let (cert, key) = ca.leaf("localhost", &["localhost"]);
    let gw = gateway(
        &tls_listener(&cert, &key, ""),
        "ws://127.0.0.1:1".to_string(),
    )
    .await;
    let record = old_client_hello([3, 1], false);
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    s.write_all(&record).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(STEP, s.read_to_end(&mut answer))
        .await
        .unwrap()
        .ok();
    // No ServerHello: an alert record, fatal (2): protocol_version (70) or, as rustls answers
    // a hello it cannot serve at all, handshake_failure (40).
    assert!(answer.len() >= 7 && answer[0] == 0x15, "{answer:?}");
    assert!(
        answer[5] == 2 && [40, 70].contains(&answer[6]),
        "{answer:?}"
    );
}

/// A TLS connector that presents the client certificate `(cert, key)`.
fn client_cert_connector(ca: &TestCa, cert: &Path, key: &Path) -> TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.issuer.der().clone()).unwrap();
    let (chain, key) = load_pem_pair(cert, key);
    let config = rustls::ClientConfig::builder_with_provider(wsgate::tls::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .unwrap();
    TlsConnector::from(Arc::new(config))
}

async fn wss_over(connector: &TlsConnector, gw: &Gateway, extra: &str) -> Result<Wss, String> {
    let tcp = TcpStream::connect(gw.addr).await.unwrap();
    let tls = connector
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .map_err(|e| e.to_string())?;
    let mut req = tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(
        format!("wss://localhost:{}/", gw.addr.port()),
    )
    .unwrap();
    if !extra.is_empty() {
        req.headers_mut()
            .insert("x-client-subject", extra.parse().unwrap());
    }
    tokio_tungstenite::client_async(req, tls)
        .await
        .map(|(ws, _)| ws)
        .map_err(|e| e.to_string())
}

fn mtls_listener(ca: &TestCa, mode: &str) -> String {
    let (cert, key) = ca.leaf("server", &["localhost"]);
    tls_listener(
        &cert,
        &key,
        &format!(
            "client_ca = \"{}\"\nclient_auth = \"{mode}\"\nclient_subject_header = \"X-Client-Subject\"\n",
            ca.ca_file().display()
        ),
    )
}

#[tokio::test]
async fn mtls_required_refuses_clients_without_a_certificate_and_passes_the_subject() {
    let ca = TestCa::new();
    let backend = EchoBackend::spawn().await;
    let gw = gateway(&mtls_listener(&ca, "required"), backend.url()).await;
    // No certificate: the handshake (or, with TLS 1.3, the first exchange after it) fails.
    assert!(wss_over(&ca.connector(), &gw, "").await.is_err());
    assert_eq!(backend.request_count(), 0);
    // A certificate from the CA: accepted, and the backend learns who it is.
    let (cert, key) = ca.leaf("alice", &["alice.example"]);
    let mut ws = wss_over(&client_cert_connector(&ca, &cert, &key), &gw, "CN=forged")
        .await
        .unwrap();
    ws.send(Message::text("mutual")).await.unwrap();
    let got = next_message(&mut ws).await;
    assert_eq!(got, Message::text("mutual"));
    let subject = backend
        .last_request()
        .header("x-client-subject")
        .unwrap_or("")
        .to_string();
    assert!(subject.contains("CN=alice.example"), "{subject}");
    // A certificate from another CA is refused.
    let other = TestCa::new();
    let (cert, key) = other.leaf("mallory", &["mallory.example"]);
    // (The client trusts the server's CA; its own certificate is from the other CA.)
    assert!(
        wss_over(&client_cert_connector(&ca, &cert, &key), &gw, "")
            .await
            .is_err()
    );
}

/// A verified client certificate whose subject is empty (legal beside a critical
/// subjectAltName, RFC 5280 §4.1.2.6, as SPIFFE-style certificates are) has no subject to pass
/// on: `client_subject_header` and a `{tls.subject}` template are left out, as any header with
/// no value is. Both were sent to the backend empty.
#[tokio::test]
async fn an_empty_client_certificate_subject_sets_no_header() {
    let ca = TestCa::new();
    let backend = EchoBackend::spawn().await;
    let routes = format!(
        "{}[route.auth]\nset_headers = {{ \"X-Cert\" = \"{{tls.subject}}\" }}\n",
        route("r", "/", &[backend.url()])
    );
    let gw = Gateway::spawn(&format!("{}{routes}", mtls_listener(&ca, "required"))).await;
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(vec!["spiffe.example".to_string()]).unwrap();
    params.distinguished_name = rcgen::DistinguishedName::new();
    let cert = params.signed_by(&key, &ca.issuer).unwrap();
    let (cert, key) = ca.write_pair("nameless", &cert.pem(), &key.serialize_pem());
    let (alice, alice_key) = ca.leaf("alice", &["alice.example"]);
    for (who, cert, key, subject) in [
        ("alice", &alice, &alice_key, Some("CN=alice.example")),
        ("nameless", &cert, &key, None),
    ] {
        let mut ws = wss_over(&client_cert_connector(&ca, cert, key), &gw, "")
            .await
            .unwrap_or_else(|e| panic!("{who}: {e}"));
        ws.send(Message::text(who)).await.unwrap();
        assert_eq!(next_message(&mut ws).await, Message::text(who));
        let seen = backend.last_request();
        assert_eq!(seen.header("x-client-subject"), subject, "{who}");
        assert_eq!(seen.header("x-cert"), subject, "{who}");
    }
}

/// A `client_ca` file holding only a client's own certificate (CA:FALSE, issued by a CA) is
/// refused with the key and line: no client certificate can chain to it, so no client could
/// ever authenticate, and it passed `wsgate check`. A self-signed client certificate there
/// still is a pin for that very certificate, and is taken; so is a real CA.
#[tokio::test]
async fn a_client_ca_holding_only_a_client_certificate_is_refused() {
    let ca = TestCa::new();
    let (cert, key) = ca.leaf("server", &["localhost"]);
    let (alice, _) = ca.leaf("alice", &["alice.example"]);
    let check = |client_ca: &Path| {
        wsgate::config::from_toml_str(&format!(
            "{}{}",
            tls_listener(
                &cert,
                &key,
                &format!("client_ca = {:?}\n", client_ca.display().to_string())
            ),
            route("r", "/", &["ws://127.0.0.1:1".to_string()])
        ))
    };
    let errors = check(&alice).unwrap_err();
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(errors[0].key, "listener[0].tls.client_ca");
    assert_eq!(errors[0].line, Some(7));
    assert!(
        errors[0].message.starts_with(&format!(
            "{}: no CA certificate in the file, only a client's own (CN=alice.example, \
             CA:FALSE, issued by CN=wsgate test CA)",
            alice.display()
        )),
        "{}",
        errors[0].message
    );
    check(&ca.ca_file()).expect("a CA");
    let pin = rcgen::KeyPair::generate().unwrap();
    let pinned = rcgen::CertificateParams::new(vec!["pin.example".to_string()])
        .unwrap()
        .self_signed(&pin)
        .unwrap();
    let (pinned, _) = ca.write_pair("pin", &pinned.pem(), &pin.serialize_pem());
    check(&pinned).expect("a self-signed client certificate, pinned");
}

/// A reload reads the client CA file again: a CA taken out of the bundle (its key leaked)
/// stops being trusted at the next handshake, and one put in is trusted. The CA was read
/// only when the listener's table changed, while the log said "TLS certificates reloaded".
#[tokio::test]
async fn a_reload_reads_the_client_ca_file_again() {
    let ca = TestCa::new();
    let other = TestCa::new();
    let tmp = TempDir::new("mtls-reload");
    let bundle = tmp.write("clients.pem", std::fs::read(ca.ca_file()).unwrap());
    let (cert, key) = ca.leaf("server", &["localhost"]);
    let listener = tls_listener(
        &cert,
        &key,
        &format!(
            "client_ca = \"{}\"\nclient_auth = \"required\"\n",
            bundle.display()
        ),
    );
    let backend = EchoBackend::spawn().await;
    let gw = gateway(&listener, backend.url()).await;
    let (alice, alice_key) = ca.leaf("alice", &["alice.example"]);
    let (bob, bob_key) = other.leaf("bob", &["bob.example"]);
    let alice = client_cert_connector(&ca, &alice, &alice_key);
    let bob = client_cert_connector(&ca, &bob, &bob_key);
    assert!(wss_over(&alice, &gw, "").await.is_ok());
    assert!(wss_over(&bob, &gw, "").await.is_err());
    // The bundle now holds the other CA only.
    std::fs::write(&bundle, std::fs::read(other.ca_file()).unwrap()).unwrap();
    for (_, result) in gw.handle().reload_certificates() {
        result.unwrap();
    }
    assert!(
        wss_over(&alice, &gw, "").await.is_err(),
        "a CA taken out of the bundle is still trusted"
    );
    let mut ws = wss_over(&bob, &gw, "").await.unwrap();
    ws.send(Message::text("trusted now")).await.unwrap();
    assert_eq!(next_message(&mut ws).await, Message::text("trusted now"));
}

#[tokio::test]
async fn mtls_optional_accepts_clients_without_a_certificate_but_never_a_forged_subject() {
    let ca = TestCa::new();
    let backend = EchoBackend::spawn().await;
    let gw = gateway(&mtls_listener(&ca, "optional"), backend.url()).await;
    let mut ws = wss_over(&ca.connector(), &gw, "CN=forged").await.unwrap();
    ws.send(Message::text("anonymous")).await.unwrap();
    next_message(&mut ws).await;
    assert_eq!(backend.last_request().header("x-client-subject"), None);
}

/// The subject header is the proxy's on every listener: routes serve them all, so a client
/// of a listener that asks for no certificate (plain, or TLS without `client_ca`) must not
/// be able to send it either. It reached the backend unchanged from any listener but the
/// one that names it, which a backend reads as a verified identity.
#[tokio::test]
async fn the_subject_header_cannot_be_forged_through_another_listener() {
    let ca = TestCa::new();
    let backend = EchoBackend::spawn().await;
    let (cert, key) = ca.leaf("server", &["localhost"]);
    let mut gw = Gateway::spawn(&format!(
        "{}{}[[listener]]\nlisten = \"127.0.0.1:0\"\n{}",
        mtls_listener(&ca, "optional"),
        tls_listener(&cert, &key, ""),
        route("r", "/", &[backend.url()])
    ))
    .await;
    let addrs = gw.handle().local_addrs().to_vec();
    gw.addr = addrs[1];
    let mut ws = wss_over(&ca.connector(), &gw, "CN=admin").await.unwrap();
    ws.send(Message::text("over TLS")).await.unwrap();
    next_message(&mut ws).await;
    assert_eq!(backend.last_request().header("x-client-subject"), None);
    for name in ["X-Client-Subject", "X_Client_Subject"] {
        let (_s, resp) = raw_exchange(
            addrs[2],
            upgrade_request("/", &format!("{name}: CN=admin\r\n")).as_bytes(),
        )
        .await;
        assert_eq!(resp.status, 101, "{resp:?}");
        let seen = backend.last_request();
        assert_eq!(seen.header("x-client-subject"), None, "{name}");
        assert_eq!(seen.header("x_client_subject"), None, "{name}");
    }
}

/// A refused upgrade over TLS ends with `close_notify` (RFC 8446 §6.1), as any answered
/// request does: hyper hands a connection whose request asked for an upgrade to that upgrade
/// whatever the answer, and the refusal's connection was just dropped (the client read "peer
/// closed connection without sending TLS close_notify"). Plain requests and upgrades alike,
/// the client's read ends cleanly after the whole answer.
#[tokio::test]
async fn a_refused_upgrade_over_tls_ends_with_close_notify() {
    let ca = TestCa::new();
    let (cert, key) = ca.leaf("localhost", &["localhost"]);
    let down = format!("ws://{}", closed_port().await);
    let gw = gateway(&tls_listener(&cert, &key, ""), down).await;
    for (request, status) in [
        (upgrade_request("/", ""), "HTTP/1.1 502"),
        (
            upgrade_request("/", "Sec-WebSocket-Version: 13\r\n"),
            "HTTP/1.1 400",
        ),
    ] {
        let (mut tls, _) = tls_connect(&ca, &gw, "localhost").await;
        tls.write_all(request.as_bytes()).await.unwrap();
        let mut answer = Vec::new();
        let read = tokio::time::timeout(STEP, tls.read_to_end(&mut answer))
            .await
            .expect("the connection was kept open");
        let text = String::from_utf8_lossy(&answer);
        assert!(text.starts_with(status), "{text}");
        read.unwrap_or_else(|e| panic!("{status}: {e} after {text}"));
    }
}

/// A connect and close without a byte (a load balancer's TCP health check on the TLS port)
/// is no failed TLS handshake: each was counted and logged as `tls_handshake_failed`.
#[tokio::test]
async fn a_connect_and_close_on_a_tls_listener_is_not_a_refusal() {
    let ca = TestCa::new();
    let (cert, key) = ca.leaf("localhost", &["localhost"]);
    let backend = EchoBackend::spawn().await;
    let gw = gateway(&tls_listener(&cert, &key, ""), backend.url()).await;
    for _ in 0..3 {
        let mut probe = TcpStream::connect(gw.addr).await.unwrap();
        probe.shutdown().await.unwrap();
        // Closed by the gateway once it has (or has not) counted the probe.
        assert_eq!(read_until_closed(&mut probe).await, b"");
    }
    let counts = gw.handle().refusals();
    assert_eq!(
        counts.get(&("-".to_string(), "tls_handshake_failed")),
        None,
        "{counts:?}"
    );
}

/// `client_subject_header` may not name a header the proxy builds itself (the subject was
/// lost under the proxy's own `Host` or `Via`, sent as a second `X-Request-Id`, or broke
/// every handshake as `Sec-WebSocket-Protocol`), nor one that carries the clients' own
/// credentials (it is taken off every client's request, on every listener).
#[test]
fn a_subject_header_may_not_be_one_the_proxy_builds_or_a_credential() {
    let ca = TestCa::new();
    let (cert, key) = ca.leaf("server", &["localhost"]);
    for (header, says) in [
        ("Host", "host is built by the proxy itself"),
        ("X-Request-Id", "x-request-id is built by the proxy itself"),
        ("sec-websocket-protocol", "is built by the proxy itself"),
        ("Via", "is built by the proxy itself"),
        ("X_Real_IP", "x_real_ip is built by the proxy itself"),
        ("content_length", "is built by the proxy itself"),
        ("Cookie", "cookie carries what the client itself sends"),
        ("Authorization", "carries what the client itself sends"),
        ("Origin", "carries what the client itself sends"),
    ] {
        let errs = wsgate::config::from_toml_str(&format!(
            "[[listener]]\nlisten = \"127.0.0.1:0\"\n[listener.tls]\ncert = {cert:?}\nkey = {key:?}\n\
             client_ca = {:?}\nclient_subject_header = \"{header}\"\n{}",
            ca.ca_file(),
            route("r", "/", &["ws://127.0.0.1:1".to_string()])
        ))
        .unwrap_err();
        assert!(
            errs.len() == 1
                && errs[0].key == "listener[0].tls.client_subject_header"
                && errs[0].line == Some(7)
                && errs[0].message.contains(says),
            "{header}: {errs:?}"
        );
    }
}

/// A subject header a reload renames is still set on the connections accepted before it
/// (they keep their listener's settings): it stays stripped from every other client. The
/// new config's names alone were stripped, so a client of the plain listener sent the old
/// name where backends still took it as verified.
#[tokio::test]
async fn a_subject_header_a_reload_renames_stays_stripped() {
    let ca = TestCa::new();
    let backend = EchoBackend::spawn().await;
    let (mtls_addr, plain_addr) = (free_port().await, free_port().await);
    let (cert, key) = ca.leaf("server", &["localhost"]);
    let toml = |header: &str| {
        format!(
            "[[listener]]\nlisten = \"{mtls_addr}\"\n[listener.tls]\ncert = \"{}\"\nkey = \"{}\"\n\
             client_ca = \"{}\"\nclient_auth = \"optional\"\nclient_subject_header = \"{header}\"\n\
             [[listener]]\nlisten = \"{plain_addr}\"\n{}",
            cert.display(),
            key.display(),
            ca.ca_file().display(),
            route("r", "/", &[backend.url()])
        )
    };
    let gw = Gateway::spawn(&toml("X-Client-Subject")).await;
    // A client with a certificate, connected before the reload.
    let (ccert, ckey) = ca.leaf("alice", &["alice.example"]);
    let tcp = TcpStream::connect(mtls_addr).await.unwrap();
    let tls = client_cert_connector(&ca, &ccert, &ckey)
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap();
    let report = gw
        .handle()
        .reload(wsgate::config::from_toml_str(&toml("X-Verified-Subject")).unwrap())
        .expect("reload");
    assert_eq!(report.listeners.changed.len(), 1, "{report:?}");
    // Its request, after the reload: the old name is still the proxy's verified identity.
    let (mut ws, _) =
        tokio_tungstenite::client_async(format!("wss://localhost:{}/", mtls_addr.port()), tls)
            .await
            .unwrap();
    ws.send(Message::text("hi")).await.unwrap();
    next_message(&mut ws).await;
    let verified = backend
        .last_request()
        .header("x-client-subject")
        .map(str::to_string);
    assert!(
        verified.as_deref().is_some_and(|s| s.contains("alice")),
        "{verified:?}"
    );
    // Meanwhile a client of the plain listener sends that name itself.
    let (_s, resp) = raw_exchange(
        plain_addr,
        upgrade_request("/", "X-Client-Subject: CN=admin\r\n").as_bytes(),
    )
    .await;
    assert_eq!(resp.status, 101, "{resp:?}");
    assert_eq!(
        backend.last_request().header("x-client-subject"),
        None,
        "forged through the plain listener while the gateway still sends it verified"
    );
}

/// Writes a self-signed certificate for localhost valid from `from` to `until`.
fn dated_certificate(
    ca: &TestCa,
    name: &str,
    from: (i32, u8, u8),
    until: (i32, u8, u8),
) -> (PathBuf, PathBuf) {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(vec!["localhost".to_string()]).unwrap();
    params.not_before = rcgen::date_time_ymd(from.0, from.1, from.2);
    params.not_after = rcgen::date_time_ymd(until.0, until.1, until.2);
    let cert = params.self_signed(&key).unwrap();
    ca.write_pair(name, &cert.pem(), &key.serialize_pem())
}

#[test]
fn expired_and_future_certificates_are_warned_about_with_their_dates() {
    let ca = TestCa::new();
    let now = std::time::SystemTime::now();
    let cases = [
        ("expired", (2020, 1, 1), (2021, 6, 30), "expired on Jun 30"),
        (
            "future",
            (2090, 3, 1),
            (2091, 1, 1),
            "not valid yet: valid from Mar  1",
        ),
        ("fine", (2020, 1, 1), (2090, 1, 1), ""),
    ];
    for (name, from, until, expect) in cases {
        let (c, k) = dated_certificate(&ca, name, from, until);
        let ck = wsgate::tls::load_certified_key(&c, &k).unwrap();
        let warning = wsgate::tls::validity_warning(&ck, now).unwrap_or_default();
        assert!(
            warning.contains(expect) && (expect.is_empty() == warning.is_empty()),
            "{name}: {warning:?}"
        );
        // A warning, not an error: the listener still loads.
        let toml = format!(
            "{}[[route]]\nname = \"r\"\npath = \"/\"\nbackends = [\"ws://127.0.0.1:1\"]\n",
            tls_listener(&c, &k, "")
        );
        assert!(wsgate::config::from_toml_str(&toml).is_ok(), "{name}");
    }
}

#[tokio::test]
async fn certificate_files_that_change_are_reloaded_without_a_signal() {
    let ca = TestCa::new();
    let (cert, key) = ca.leaf("watched", &["localhost"]);
    let backend = EchoBackend::spawn().await;
    let gw = gateway(
        &tls_listener(&cert, &key, "watch_interval = \"50ms\""),
        backend.url(),
    )
    .await;
    let mut reloads = gw.handle().certificate_reloads(0).unwrap();
    let (_, first) = tls_connect(&ca, &gw, "localhost").await;

    // Renewal the way certbot and cert-manager do it: new files renamed into place.
    let (new_cert, new_key) = ca.leaf("renewed", &["localhost"]);
    std::fs::rename(&new_key, &key).unwrap();
    std::fs::rename(&new_cert, &cert).unwrap();
    tokio::time::timeout(STEP, reloads.changed())
        .await
        .expect("the changed files were not reloaded")
        .unwrap();
    let (_, second) = tls_connect(&ca, &gw, "localhost").await;
    assert_ne!(
        first, second,
        "a new handshake sees the renewed certificate"
    );
}

/// A listener with a default certificate and a `chat.e.test` SNI entry, its files in `ca.dir`
/// (`default.pem`/`.key`, `chat.pem`/`.key`), and `extra` in its `tls` table.
fn default_and_chat(ca: &TestCa, extra: &str) -> (String, [PathBuf; 4]) {
    let (dc, dk) = ca.leaf("default", &["localhost"]);
    let (cc, ck) = ca.leaf("chat", &["chat.e.test"]);
    let sni = format!(
        "{extra}\n[[listener.tls.sni]]\nhosts = [\"chat.e.test\"]\ncert = {:?}\nkey = {:?}\n",
        cc.display().to_string(),
        ck.display().to_string()
    );
    (tls_listener(&dc, &dk, &sni), [dc, dk, cc, ck])
}

/// Renews `cert` and `key` the way certbot does (new files renamed into place), with a new key
/// for `names`; returns the new certificate as PEM files hold it.
fn renew(ca: &TestCa, cert: &Path, key: &Path, names: &[&str]) -> CertificateDer<'static> {
    let (new_cert, new_key) = ca.leaf("renewed", names);
    let der = load_pem_pair(&new_cert, &new_key).0.remove(0);
    std::fs::rename(&new_key, key).unwrap();
    std::fs::rename(&new_cert, cert).unwrap();
    der
}

/// Breaks an SNI entry the way a half-done renewal does: its key file replaced by another
/// certificate's key, so that it no longer matches its certificate.
fn break_pair(ca: &TestCa, key: &Path) {
    let (_, other_key) = ca.leaf("other", &["other.e.test"]);
    std::fs::rename(&other_key, key).unwrap();
}

/// One entry whose pair no longer loads keeps its certificate, and only it: the default
/// certificate, renewed correctly beside it, is served from the next handshake on, and the
/// reload names the broken entry, its file and why. One broken pair held back every renewal on
/// the listener (SIGHUP's `reload_certificates` failed as a whole).
#[tokio::test]
async fn a_broken_pair_keeps_its_certificate_and_the_others_are_renewed() {
    let ca = TestCa::new();
    let backend = EchoBackend::spawn().await;
    let (listener, [dc, dk, _, ck]) = default_and_chat(&ca, "");
    let gw = gateway(&listener, backend.url()).await;
    let (_, chat) = tls_connect(&ca, &gw, "chat.e.test").await;

    break_pair(&ca, &ck);
    let renewed = renew(&ca, &dc, &dk, &["localhost"]);
    let results = gw.handle().reload_certificates();
    let kept = &results[0].1.as_ref().expect("the listener reloads").kept;
    assert_eq!(kept.len(), 1, "{kept:?}");
    assert!(
        kept[0].starts_with("listener[0].tls.sni[0] (chat.e.test): ")
            && kept[0].contains("is not the key of the certificate in")
            && kept[0].contains(&ck.display().to_string())
            && kept[0].ends_with("it keeps the certificate it had"),
        "{kept:?}"
    );
    assert_eq!(tls_connect(&ca, &gw, "localhost").await.1, renewed);
    assert_eq!(tls_connect(&ca, &gw, "chat.e.test").await.1, chat);
}

/// The certificate watcher, too, renews the default certificate beside an SNI entry whose
/// pair no longer loads, which keeps its own.
#[tokio::test]
async fn the_watcher_renews_the_others_beside_a_broken_pair() {
    let ca = TestCa::new();
    let backend = EchoBackend::spawn().await;
    let (listener, [dc, dk, _, ck]) = default_and_chat(&ca, "watch_interval = \"50ms\"");
    let gw = gateway(&listener, backend.url()).await;
    let mut reloads = gw.handle().certificate_reloads(0).unwrap();
    let (_, chat) = tls_connect(&ca, &gw, "chat.e.test").await;

    break_pair(&ca, &ck);
    let renewed = renew(&ca, &dc, &dk, &["localhost"]);
    // The watcher may see the two changes in one look or in two: whichever reload serves the
    // renewed certificate first.
    tokio::time::timeout(STEP, async {
        loop {
            reloads.changed().await.unwrap();
            if tls_connect(&ca, &gw, "localhost").await.1 == renewed {
                break;
            }
        }
    })
    .await
    .expect("the renewed default certificate was never served");
    assert_eq!(tls_connect(&ca, &gw, "chat.e.test").await.1, chat);
}

/// A config reload (SIGHUP's, `POST /api/reload`'s) whose only problem is a certificate pair
/// that no longer loads applies the rest, the pair's listener keeping the certificate it
/// serves; it failed as a whole. A pair with nothing to keep (a new entry) still fails it.
#[tokio::test]
async fn a_config_reload_keeps_a_broken_pairs_certificate_and_applies_the_rest() {
    let ca = TestCa::new();
    let backend = EchoBackend::spawn().await;
    let (listener, [dc, dk, _, ck]) = default_and_chat(&ca, "");
    let r = route("r", "/", &[backend.url()]);
    let file = ca.dir.write("wsgate.toml", format!("{listener}{r}"));
    init_logs();
    let config = wsgate::Config::load(&file).unwrap_or_else(|e| panic!("{e}"));
    let handle = wsgate::Gateway::start(config).await.unwrap();
    let gw = Gateway {
        addr: handle.local_addr(),
        handle: Some(handle),
    };
    let (_, chat) = tls_connect(&ca, &gw, "chat.e.test").await;

    break_pair(&ca, &ck);
    let renewed = renew(&ca, &dc, &dk, &["localhost"]);
    let second = route("second", "/second", &[backend.url()]);
    ca.dir
        .write("wsgate.toml", format!("{listener}{r}{second}"));
    let report = gw.handle().reload_file().await.expect("the reload applies");
    assert_eq!(report.added, ["second"]);
    // What SIGHUP does next: the default certificate is renewed, the broken entry kept.
    let results = gw.handle().reload_certificates();
    assert_eq!(results[0].1.as_ref().unwrap().kept.len(), 1, "{results:?}");
    assert_eq!(tls_connect(&ca, &gw, "localhost").await.1, renewed);
    assert_eq!(tls_connect(&ca, &gw, "chat.e.test").await.1, chat);

    // A new entry whose pair does not load has no certificate to keep: the reload fails and
    // names it.
    let (nc, nk) = ca.leaf("new", &["new.e.test"]);
    break_pair(&ca, &nk);
    let added = format!(
        "[[listener.tls.sni]]\nhosts = [\"new.e.test\"]\ncert = {:?}\nkey = {:?}\n",
        nc.display().to_string(),
        nk.display().to_string()
    );
    ca.dir
        .write("wsgate.toml", format!("{listener}{added}{r}{second}"));
    let errors = gw.handle().reload_file().await.unwrap_err();
    assert_eq!(errors.errors.len(), 1, "{errors}");
    assert_eq!(
        errors.errors[0].key, "listener[0].tls.sni[1].key",
        "{errors}"
    );
}

/// A `wss://` backend that echoes, closes first when told `close-me`, and reports whether its
/// TLS stream then ended with the gateway's `close_notify` (a clean end of file) or without.
async fn wss_backend_reporting_its_end(
    ca: &TestCa,
) -> (
    std::net::SocketAddr,
    tokio::sync::mpsc::UnboundedReceiver<std::io::Result<usize>>,
) {
    let acceptor = backend_acceptor(ca);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (ends, ends_rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (acceptor, ends) = (acceptor.clone(), ends.clone());
            tokio::spawn(async move {
                let tls = acceptor.accept(tcp).await.unwrap();
                let mut ws = tokio_tungstenite::accept_async(tls).await.unwrap();
                while let Some(Ok(m)) = futures_util::StreamExt::next(&mut ws).await {
                    if m == Message::text("close-me") {
                        ws.close(None).await.unwrap();
                    } else if m.is_text() {
                        ws.send(m).await.unwrap();
                    }
                }
                // The closing handshake is over: what follows on the TLS stream.
                let mut rest = [0u8; 64];
                let _ = ends.send(ws.get_mut().read(&mut rest).await);
            });
        }
    });
    (addr, ends_rx)
}

/// Both legs over TLS, the client closing first and then the backend: each side gets its
/// close frame and then the gateway's `close_notify` (a clean end of TLS, not a truncation),
/// although the gateway sends it with the close frame instead of after a TCP shutdown.
#[tokio::test]
async fn wss_closes_end_with_close_notify_on_both_legs() {
    let ca = TestCa::new();
    let (cert, key) = ca.leaf("localhost", &["localhost"]);
    let (backend, mut ends) = wss_backend_reporting_its_end(&ca).await;
    let config = format!(
        "{}{}",
        tls_listener(&cert, &key, ""),
        wss_route(backend, &backend_ca(&ca))
    );
    let gw = Gateway::spawn(&config).await;
    for client_first in [true, false] {
        let (tls, _) = tls_connect(&ca, &gw, "localhost").await;
        let (mut ws, _) = wss_upgrade(&gw, tls).await;
        ws.send(Message::text("hello")).await.unwrap();
        assert_eq!(next_message(&mut ws).await, Message::text("hello"));
        if client_first {
            ws.close(None).await.unwrap();
        } else {
            ws.send(Message::text("close-me")).await.unwrap();
        }
        let mut closes = 0;
        while let Some(m) = futures_util::StreamExt::next(&mut ws).await {
            closes += usize::from(m.unwrap().is_close());
        }
        assert_eq!(closes, 1, "client_first={client_first}");
        let mut rest = [0u8; 64];
        let end = ws.get_mut().read(&mut rest).await;
        assert_eq!(
            end.map_err(|e| e.kind()),
            Ok(0),
            "client's TLS end, client_first={client_first}"
        );
        let end = ends.recv().await.unwrap();
        assert_eq!(
            end.map_err(|e| e.kind()),
            Ok(0),
            "backend's TLS end, client_first={client_first}"
        );
    }
}

/// Opens TLS to `gw` as `localhost` with `connector` (its session store: one client), and a
/// WebSocket over it that echoes once: the session's tickets come with the `101`. Returns
/// how the TLS handshake went, or why the exchange failed.
async fn resume_or_not(
    connector: &TlsConnector,
    gw: &Gateway,
) -> Result<rustls::HandshakeKind, String> {
    let tcp = TcpStream::connect(gw.addr).await.unwrap();
    let tls = connector
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .map_err(|e| e.to_string())?;
    let kind = tls.get_ref().1.handshake_kind().unwrap();
    let url = format!("wss://localhost:{}/", gw.addr.port());
    let (mut ws, _) = tokio_tungstenite::client_async(url, tls)
        .await
        .map_err(|e| e.to_string())?;
    ws.send(Message::text("hi"))
        .await
        .map_err(|e| e.to_string())?;
    match tokio::time::timeout(STEP, futures_util::StreamExt::next(&mut ws)).await {
        Ok(Some(Ok(m))) if m == Message::text("hi") => Ok(kind),
        other => Err(format!("{other:?}")),
    }
}

/// A resumed TLS session skips the client's certificate, so a ticket must not carry a client
/// past a listener's `client_auth` it never satisfied: one from a listener that asks for no
/// certificate, or from before the listener's CA changed, gets a full handshake there (and
/// is refused), though each resumes where it came from. It used to resume: one ticket key
/// for every listener let a client with no certificate, or one the new CA never signed,
/// through `client_auth = "required"`.
#[tokio::test]
async fn a_session_ticket_does_not_get_past_a_client_certificate_requirement() {
    let ca = TestCa::new();
    let (cert, key) = ca.leaf("localhost", &["localhost"]);
    let backend = EchoBackend::spawn().await;
    let open = gateway(&tls_listener(&cert, &key, ""), backend.url()).await;
    let mtls = format!(
        "{}{}",
        mtls_listener(&ca, "required"),
        route("r", "/", &[backend.url()])
    );
    let guarded = Gateway::spawn(&mtls).await;

    // A client without a certificate: its ticket from the open listener resumes there ...
    let anonymous = ca.connector();
    assert_eq!(
        resume_or_not(&anonymous, &open).await,
        Ok(rustls::HandshakeKind::Full)
    );
    assert_eq!(
        resume_or_not(&anonymous, &open).await,
        Ok(rustls::HandshakeKind::Resumed)
    );
    // ... and not on the listener that requires a certificate.
    let got = resume_or_not(&anonymous, &guarded).await;
    assert!(got.is_err(), "no certificate, yet {got:?}");

    // A client whose certificate the listener's CA signed resumes there ...
    let (alice, alice_key) = ca.leaf("alice", &["alice.example"]);
    let member = client_cert_connector(&ca, &alice, &alice_key);
    assert_eq!(
        resume_or_not(&member, &guarded).await,
        Ok(rustls::HandshakeKind::Full)
    );
    assert_eq!(
        resume_or_not(&member, &guarded).await,
        Ok(rustls::HandshakeKind::Resumed)
    );
    // ... until the listener trusts another CA: its ticket is no way past that.
    let other = TestCa::new();
    let moved = mtls.replace(
        &ca.ca_file().display().to_string(),
        &other.ca_file().display().to_string(),
    );
    assert_ne!(moved, mtls);
    let config = wsgate::config::from_toml_str(&moved).unwrap();
    guarded.handle().reload(config).expect("reload");
    let got = resume_or_not(&member, &guarded).await;
    assert!(
        got.is_err(),
        "a certificate the new CA never signed, yet {got:?}"
    );
}

/// A returning client resumes its TLS session (with a ticket that came with the `101`, see
/// `tls_io`), unless `session_resumption = false`; also across a reload of the config.
#[tokio::test]
async fn tls_sessions_resume_unless_switched_off() {
    let ca = TestCa::new();
    let (cert, key) = ca.leaf("localhost", &["localhost"]);
    let backend = EchoBackend::spawn().await;
    for (extra, resumes) in [("", true), ("session_resumption = false\n", false)] {
        let toml = format!(
            "{}{}",
            tls_listener(&cert, &key, extra),
            route("r", "/", &[backend.url()])
        );
        let gw = Gateway::spawn(&toml).await;
        // One connector: one client, with its session store.
        let connector = ca.connector();
        let mut kinds = Vec::new();
        for round in 0..3 {
            if round == 2 {
                // The listener changed: it serves with its TLS built anew.
                let changed = toml.replace(
                    "handshake_timeout = \"300ms\"",
                    "handshake_timeout = \"400ms\"",
                );
                assert_ne!(changed, toml);
                let config = wsgate::config::from_toml_str(&changed).unwrap();
                gw.handle().reload(config).expect("reload");
            }
            let tcp = TcpStream::connect(gw.addr).await.unwrap();
            let tls = connector
                .connect(ServerName::try_from("localhost").unwrap(), tcp)
                .await
                .unwrap();
            kinds.push(tls.get_ref().1.handshake_kind().unwrap());
            let (mut ws, _) = wss_upgrade(&gw, tls).await;
            ws.send(Message::text("hi")).await.unwrap();
            assert_eq!(next_message(&mut ws).await, Message::text("hi"));
        }
        let later = if resumes {
            rustls::HandshakeKind::Resumed
        } else {
            rustls::HandshakeKind::Full
        };
        assert_eq!(
            kinds,
            [rustls::HandshakeKind::Full, later, later],
            "session_resumption: {extra:?}"
        );
    }
}

/// The gateway's sessions toward a `wss://` backend resume their TLS sessions: the tickets a
/// backend sends after its handshake, ahead of its `101`, are kept, though the leg leaves
/// rustls for wsgate's own record layer right after the handshake. Each session's backend
/// leg also answers a key update the backend asks for ahead of its `101`.
#[tokio::test]
async fn wss_backend_sessions_resume() {
    let ca = TestCa::new();
    let (kinds, mut kinds_rx) = tokio::sync::mpsc::unbounded_channel();
    let addr = wss_backend_with(&ca, move |tls| {
        let _ = kinds.send(tls.get_ref().1.handshake_kind());
        tls.get_mut().1.refresh_traffic_keys().unwrap();
    })
    .await;
    let gw = Gateway::spawn(&wss_route(addr, &backend_ca(&ca))).await;
    let mut seen = Vec::new();
    for round in 0..3 {
        let (mut ws, _) = connect(&gw.url("/")).await;
        let text = format!("round {round}");
        ws.send(Message::text(text.clone())).await.unwrap();
        assert_eq!(next_data(&mut ws).await, Message::text(text));
        ws.close(None).await.unwrap();
        while futures_util::StreamExt::next(&mut ws).await.is_some() {}
        seen.push(kinds_rx.recv().await.unwrap());
    }
    let (full, resumed) = (
        Some(rustls::HandshakeKind::Full),
        Some(rustls::HandshakeKind::Resumed),
    );
    assert_eq!(seen, [full, resumed, resumed]);
}

/// A session cut at the closing handshake's deadline ends its TLS leg with `close_notify`
/// (RFC 8446 §6.1), as every other end does: here the backend closed and the client never
/// answered the close frame it was passed. The cut dropped the connection without one, and
/// the client read a truncation (UnexpectedEof) instead of a clean end.
#[tokio::test]
async fn a_session_cut_at_the_deadline_ends_its_tls_leg_with_close_notify() {
    let ca = TestCa::new();
    let (cert, key) = ca.leaf("localhost", &["localhost"]);
    let mut answer = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n".to_vec();
    answer.extend(wsgate::frame::encode_frame(
        wsgate::frame::opcode::CLOSE,
        true,
        &1000u16.to_be_bytes(),
        None,
    ));
    let (backend, _) = scripted_backend(answer).await;
    let gw = Gateway::spawn(&format!(
        "{}{}",
        tls_listener(&cert, &key, ""),
        route("r", "/", &[format!("ws://{backend}")])
    ))
    .await;
    let (mut tls, _) = tls_connect(&ca, &gw, "localhost").await;
    tls.write_all(upgrade_request("/", "").as_bytes())
        .await
        .unwrap();
    // The 101 and the backend's close frame, left unanswered, until the end of the stream.
    let mut got = Vec::new();
    let mut chunk = [0u8; 4096];
    let end = loop {
        match tls.read(&mut chunk).await {
            Ok(0) => break Ok(()),
            Ok(n) => got.extend_from_slice(&chunk[..n]),
            Err(e) => break Err(e.kind()),
        }
    };
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 101"), "{text}");
    assert!(got.ends_with(&[0x88, 2, 0x03, 0xe8]), "{got:?}");
    assert_eq!(end, Ok(()), "the TLS stream ended without close_notify");
}
