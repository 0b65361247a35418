//! TLS test helpers: a CA made at test time (rcgen) that signs leaf certificates into a
//! fresh temporary directory, a client connector trusting it, and a listener config using them.

use std::path::PathBuf;
use std::sync::Arc;

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tokio_tungstenite::WebSocketStream;

use super::{Gateway, TempDir};

/// A test CA that signs leaf certificates into a fresh directory (removed with the CA).
pub struct TestCa {
    pub issuer: CertifiedIssuer<'static, KeyPair>,
    pub dir: TempDir,
}

impl TestCa {
    pub fn new() -> TestCa {
        let dir = TempDir::new("tls");
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "wsgate test CA");
        let issuer = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        TestCa { issuer, dir }
    }

    /// Writes `<name>.pem` and `<name>.key` for a leaf certificate valid for `names`.
    pub fn leaf(&self, name: &str, names: &[&str]) -> (PathBuf, PathBuf) {
        let key = KeyPair::generate().unwrap();
        let mut params =
            CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, names[0]);
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        self.write_pair(name, &cert.pem(), &key.serialize_pem())
    }

    /// Writes `cert` and `key` (PEM) as `<name>.pem` and `<name>.key` and returns their paths.
    pub fn write_pair(&self, name: &str, cert: &str, key: &str) -> (PathBuf, PathBuf) {
        (
            self.dir.write(format!("{name}.pem"), cert),
            self.dir.write(format!("{name}.key"), key),
        )
    }

    /// Writes the CA certificate and returns its path.
    pub fn ca_file(&self) -> PathBuf {
        self.dir.write("ca.pem", self.issuer.pem())
    }

    pub fn connector(&self) -> TlsConnector {
        self.connector_alpn(&[])
    }

    /// A connector offering these ALPN protocols (e.g. `h2`).
    pub fn connector_alpn(&self, alpn: &[&[u8]]) -> TlsConnector {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.issuer.der().clone()).unwrap();
        let config = rustls::ClientConfig::builder_with_provider(wsgate::tls::provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let mut config = config;
        // (empty: no ALPN extension, as the WebSocket clients in these tests send)
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        TlsConnector::from(Arc::new(config))
    }
}

/// Opens TLS to the gateway with `sni`, returning the stream and the served leaf certificate.
pub async fn tls_connect(
    ca: &TestCa,
    gw: &Gateway,
    sni: &str,
) -> (TlsStream<TcpStream>, CertificateDer<'static>) {
    let tcp = TcpStream::connect(gw.addr).await.unwrap();
    let tls = ca
        .connector()
        .connect(ServerName::try_from(sni.to_string()).unwrap(), tcp)
        .await
        .unwrap_or_else(|e| panic!("TLS handshake with SNI {sni} failed: {e}"));
    let cert = tls.get_ref().1.peer_certificates().unwrap()[0]
        .clone()
        .into_owned();
    (tls, cert)
}

/// A WebSocket client stream over TLS.
pub type Wss = WebSocketStream<TlsStream<TcpStream>>;

/// Opens a WebSocket to `wss://localhost:<port>/` of `gw` over an established TLS stream.
pub async fn wss_upgrade(
    gw: &Gateway,
    tls: TlsStream<TcpStream>,
) -> (Wss, http::Response<Option<Vec<u8>>>) {
    tokio_tungstenite::client_async(format!("wss://localhost:{}/", gw.addr.port()), tls)
        .await
        .unwrap()
}

pub fn tls_listener(cert: &std::path::Path, key: &std::path::Path, extra: &str) -> String {
    format!(
        "[[listener]]\nlisten = \"127.0.0.1:0\"\nhandshake_timeout = \"300ms\"\n[listener.tls]\ncert = \"{}\"\nkey = \"{}\"\n{extra}\n",
        cert.display(),
        key.display()
    )
}

/// A ClientHello record of a client that speaks TLS 1.0 (`[3, 1]`) or 1.1 (`[3, 2]`) at most:
/// no supported_versions extension, one TLS 1.0 suite, and, with `sigalgs`, the
/// signature_algorithms extension (which such clients do not send, but a TLS 1.2 one does).
pub fn old_client_hello(version: [u8; 2], sigalgs: bool) -> Vec<u8> {
    let mut hello = version.to_vec();
    hello.extend([7u8; 32]); // random
    hello.push(0); // session id
    hello.extend([0x00, 0x02, 0x00, 0x2f]); // cipher suites: TLS_RSA_WITH_AES_128_CBC_SHA
    hello.extend([0x01, 0x00]); // compression: null
    if sigalgs {
        // extensions: signature_algorithms (13) with rsa_pkcs1_sha256 (0x0401)
        hello.extend([0x00, 0x08, 0x00, 0x0d, 0x00, 0x04, 0x00, 0x02, 0x04, 0x01]);
    }
    let mut handshake = vec![0x01, 0x00, (hello.len() >> 8) as u8, hello.len() as u8];
    handshake.extend(hello);
    let mut record = vec![
        0x16,
        0x03,
        0x01,
        (handshake.len() >> 8) as u8,
        handshake.len() as u8,
    ];
    record.extend(handshake);
    record
}
