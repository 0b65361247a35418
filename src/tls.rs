//! TLS termination for `wss://` listeners: certificates from PEM files, chosen by SNI.
//!
//! PEM files are read with `rustls-pki-types`' `PemObject` (the card's `rustls-pemfile` is
//! archived and flagged unmaintained, RUSTSEC-2025-0134). One crypto provider, aws-lc-rs, is
//! named explicitly everywhere, so a second provider elsewhere in the dependency graph can never
//! make rustls panic over an ambiguous default. TLS 1.3 and 1.2 only; ALPN `http/1.1` (the
//! list is where `h2` will go).

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use rustls::ServerConfig;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

/// The process's one crypto provider.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// A certificate/key pair that could not be loaded: what is wrong with each file at fault
/// (each message names its file). At least one is set, and both when both files are at
/// fault, so that one run reports both. A key that does not match its certificate is the
/// key's error.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PairError {
    /// The certificate file's problem.
    pub cert: Option<String>,
    /// The key file's problem, or the key not matching the certificate.
    pub key: Option<String>,
}

impl PairError {
    /// The whole error as one line (where there is no key to pin each part on).
    pub fn message(&self) -> String {
        join([&self.cert, &self.key])
    }
}

/// A backend client TLS configuration that could not be built: the CA bundle's problem, the
/// client certificate pair's, or both (all are read, so that one run reports every file).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BackendTlsError {
    /// The CA bundle's problem.
    pub ca: Option<String>,
    /// The client certificate and key's problems.
    pub client: PairError,
}

impl BackendTlsError {
    /// The whole error as one line.
    pub fn message(&self) -> String {
        join([&self.ca, &self.client.cert, &self.client.key])
    }
}

/// The set messages, in order, joined by "; ".
fn join<const N: usize>(parts: [&Option<String>; N]) -> String {
    let parts: Vec<&str> = parts.into_iter().flatten().map(String::as_str).collect();
    parts.join("; ")
}

/// Reads a certificate chain and its private key (PKCS#8, PKCS#1 or SEC1; RSA, ECDSA or
/// Ed25519) from PEM files. The error names the file and the problem.
fn read_pair(
    cert: &Path,
    key: &Path,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), PairError> {
    let chain = read_chain(cert);
    // The key is read even when the certificate failed, so that one run names both files.
    let der = read_pem_file(key).and_then(|text| match encrypted_key(&text) {
        Some(form) => Err(format!(
            "{}: the private key is encrypted ({form}); wsgate reads unencrypted keys only \
             (decrypt it once with `openssl pkey -in {} -out KEY.pem` and keep that file \
             readable by wsgate's user alone)",
            key.display(),
            key.display()
        )),
        None => PrivateKeyDer::from_pem_slice(&text).map_err(|e| match e {
            rustls::pki_types::pem::Error::NoItemsFound => no_key(key, &text),
            e => format!("{}: {}", key.display(), pem_error(&e)),
        }),
    });
    let (chain, der) = match (chain, der) {
        (Ok(chain), Ok(der)) => (chain, der),
        (chain, der) => {
            return Err(PairError {
                cert: chain.err(),
                key: der.err(),
            });
        }
    };
    if is_dev_certificate(&chain[0]) {
        tracing::warn!(cert = %cert.display(), "this is a wsgate development certificate: browsers will not trust it; do not use it in production");
    }
    Ok((chain, der))
}

/// Reads a PEM file, without the UTF-8 byte order marks some Windows editors put before
/// its text (before a `-----BEGIN` line, where the PEM reader takes the line for text
/// around the blocks and then finds no block at all: "no CERTIFICATE block" for a file
/// that OpenSSL reads).
fn read_pem_file(path: &Path) -> Result<Vec<u8>, String> {
    const BOM: &[u8] = "\u{feff}".as_bytes();
    let text = crate::config::read_limited(path, crate::config::MAX_NAMED_FILE)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    if !text.windows(BOM.len()).any(|w| w == BOM) {
        return Ok(text);
    }
    let mut out = Vec::with_capacity(text.len());
    let mut rest = &text[..];
    while !rest.is_empty() {
        match rest.strip_prefix(BOM) {
            Some(after) if after.starts_with(b"-----BEGIN") => rest = after,
            _ => {
                out.push(rest[0]);
                rest = &rest[1..];
            }
        }
    }
    Ok(out)
}

/// Whether `text` is one DER element (what `openssl ... -outform der` writes) rather than PEM
/// text: a file given in the wrong encoding reads as one holding no PEM block at all.
fn is_der(text: &[u8]) -> bool {
    use x509_parser::asn1_rs::{Any, FromDer};
    text.first() == Some(&0x30) && matches!(Any::from_der(text), Ok((rest, _)) if rest.is_empty())
}

/// The error for a file that is DER, not PEM, with the command that converts it
/// (`openssl x509` for certificates, `openssl pkey` for a key).
fn der_not_pem(path: &Path, tool: &str) -> String {
    format!(
        "{}: the file is DER (binary), not PEM (text with -----BEGIN lines): convert it with \
         `openssl {tool} -inform der -in {} -out {}.pem`",
        path.display(),
        path.display(),
        path.display()
    )
}

/// Reads a certificate chain: at least one `CERTIFICATE` block.
fn read_chain(cert: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let text = read_pem_file(cert)?;
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&text)
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{}: {}", cert.display(), pem_error(&e)))?;
    if chain.is_empty() {
        if is_der(&text) {
            return Err(der_not_pem(cert, "x509"));
        }
        return Err(format!(
            "{}: no CERTIFICATE block in the file",
            cert.display()
        ));
    }
    Ok(chain)
}

/// How a key file's private key is encrypted, if it is: PKCS#8's `ENCRYPTED PRIVATE KEY`
/// block, or OpenSSL's traditional form (a `Proc-Type: 4,ENCRYPTED` header in an RSA or EC
/// block). rustls cannot use either, and without this the file would be said to hold no key.
fn encrypted_key(text: &[u8]) -> Option<&'static str> {
    let has = |needle: &[u8]| text.windows(needle.len()).any(|w| w == needle);
    if has(b"-----BEGIN ENCRYPTED PRIVATE KEY-----") {
        Some("an ENCRYPTED PRIVATE KEY block")
    } else if has(b"Proc-Type: 4,ENCRYPTED") {
        Some("a Proc-Type: 4,ENCRYPTED header")
    } else {
        None
    }
}

/// The error for a key file (`text`) without a private key, saying what it holds instead
/// where that is the likely mistake (the certificate's file named twice, a DER file).
fn no_key(key: &Path, text: &[u8]) -> String {
    let certificates = CertificateDer::pem_slice_iter(text)
        .filter(Result::is_ok)
        .count();
    if certificates > 0 {
        format!(
            "{}: no private key in the file, only certificates: `key` names the private key's \
             file (a PRIVATE KEY, RSA PRIVATE KEY or EC PRIVATE KEY block)",
            key.display()
        )
    } else if is_der(text) {
        der_not_pem(key, "pkey")
    } else {
        format!(
            "{}: no private key in the file (expected a PRIVATE KEY, RSA PRIVATE KEY or EC PRIVATE KEY block)",
            key.display()
        )
    }
}

/// The kinds of private key wsgate signs with (aws-lc-rs through rustls), for the error
/// about one it cannot use.
const USABLE_KEYS: &str = "RSA of 2048 to 8192 bits, ECDSA on P-256, P-384 or P-521, or Ed25519";

/// What kind of key a private key is, as far as its DER says (`RSA, 1024 bits`, `ECDSA on
/// secp256k1`, `Ed448`, `DSA`), for the error about a key rustls cannot load: rustls says only
/// "failed to parse private key as RSA, ECDSA, or EdDSA", also of an RSA key that is one
/// but too short. `None` where the DER says nothing we know.
fn key_kind(der: &PrivateKeyDer<'_>) -> Option<String> {
    use x509_parser::asn1_rs::{Any, FromDer, Oid, Tag};
    /// The DER elements inside a constructed one's content.
    fn items(content: &[u8]) -> Vec<Any<'_>> {
        let mut out = Vec::new();
        let mut rest = content;
        while let Ok((next, any)) = Any::from_der(rest) {
            out.push(any);
            rest = next;
        }
        out
    }
    fn oid(any: &Any<'_>) -> Option<String> {
        (any.tag() == Tag::Oid).then(|| Oid::new(any.data.into()).to_id_string())
    }
    fn curve(oid: &str) -> String {
        match oid {
            "1.2.840.10045.3.1.7" => "P-256".into(),
            "1.3.132.0.34" => "P-384".into(),
            "1.3.132.0.35" => "P-521".into(),
            "1.3.132.0.10" => "secp256k1".into(),
            "1.2.840.10045.3.1.1" => "P-192".into(),
            "1.3.132.0.33" => "P-224".into(),
            other => format!("the curve {other}"),
        }
    }
    /// An RSA key's size: the bits of the modulus, the second INTEGER of a PKCS#1 key.
    fn rsa_bits(pkcs1: &[u8]) -> Option<usize> {
        let (_, seq) = Any::from_der(pkcs1).ok()?;
        let modulus = items(seq.data).get(1)?.data;
        let n = match modulus.iter().position(|b| *b != 0) {
            Some(i) => &modulus[i..],
            None => return Some(0),
        };
        Some(n.len() * 8 - n[0].leading_zeros() as usize)
    }
    let rsa = |name: &str, pkcs1: &[u8]| match rsa_bits(pkcs1) {
        Some(bits) => format!("{name}, {bits} bits"),
        None => name.to_string(),
    };
    match der {
        PrivateKeyDer::Pkcs1(k) => Some(rsa("RSA", k.secret_pkcs1_der())),
        PrivateKeyDer::Sec1(k) => {
            let (_, seq) = Any::from_der(k.secret_sec1_der()).ok()?;
            // ECPrivateKey: version, key, [0] the curve's OID.
            let params = items(seq.data).into_iter().find(|a| {
                a.tag().0 == 0 && a.class() == x509_parser::asn1_rs::Class::ContextSpecific
            })?;
            let (_, named) = Any::from_der(params.data).ok()?;
            Some(format!("ECDSA on {}", curve(&oid(&named)?)))
        }
        PrivateKeyDer::Pkcs8(k) => {
            let (_, seq) = Any::from_der(k.secret_pkcs8_der()).ok()?;
            // PrivateKeyInfo: version, AlgorithmIdentifier { OID, parameters }, key.
            let fields = items(seq.data);
            let algorithm = items(fields.get(1)?.data);
            let key = fields.get(2).map(|k| k.data).unwrap_or_default();
            Some(match oid(algorithm.first()?)?.as_str() {
                "1.2.840.113549.1.1.1" => rsa("RSA", key),
                "1.2.840.113549.1.1.10" => rsa("RSA-PSS (an RSA key restricted to PSS)", key),
                "1.2.840.10045.2.1" => {
                    format!("ECDSA on {}", curve(&oid(algorithm.get(1)?)?))
                }
                "1.2.840.10040.4.1" => "DSA".into(),
                "1.3.101.112" => "Ed25519".into(),
                "1.3.101.113" => "Ed448".into(),
                "1.3.101.110" => "X25519 (a key exchange key, which cannot sign)".into(),
                "1.3.101.111" => "X448 (a key exchange key, which cannot sign)".into(),
                other => format!("of the algorithm {other}"),
            })
        }
        _ => None,
    }
}

/// The error for a certificate and key that do not belong together. Where the key is that
/// of another certificate in the file (the chain written CA or intermediate first), the
/// error says which and what order is wanted.
fn mismatch(
    cert: &Path,
    key: &Path,
    chain: &[CertificateDer<'static>],
    der: &PrivateKeyDer<'static>,
    e: rustls::Error,
) -> PairError {
    // webpki, which rustls checks the pair with, takes X.509 v3 only; a v1 certificate (what
    // `openssl x509 -req` writes without `-extfile`) failed as the pair's fault, on the `key`
    // line, as rustls's "invalid peer certificate: Other(OtherError(UnsupportedCertVersion))".
    let version = chain.first().and_then(|leaf| {
        x509_parser::parse_x509_certificate(leaf.as_ref())
            .ok()
            .map(|(_, c)| c.version().0)
    });
    if let Some(v) = version.filter(|v| *v != x509_parser::x509::X509Version::V3.0) {
        return PairError {
            cert: Some(format!(
                "{}: the certificate is X.509 version {}, and only version 3 is supported (it \
                 has no extensions, so no subjectAltName, which clients check the name \
                 against): reissue it with a subjectAltName, e.g. `openssl x509 -req ... \
                 -extfile <(printf 'subjectAltName=DNS:example.com')`",
                cert.display(),
                v + 1
            )),
            key: None,
        };
    }
    let provider = provider();
    let belongs_to = (1..chain.len()).find(|&i| {
        CertifiedKey::from_der(vec![chain[i].clone()], der.clone_key(), &provider).is_ok()
    });
    let message = match (belongs_to, e) {
        (Some(i), _) => format!(
            "the private key in {} belongs to certificate {} of the {} in {}, not to the first: \
             the file must start with the server's own certificate, followed by its \
             intermediates (leaf first, as `cat server.pem intermediate.pem` writes it)",
            key.display(),
            i + 1,
            chain.len(),
            cert.display()
        ),
        (None, rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch)) => format!(
            "the private key in {} is not the key of the certificate in {}{}",
            key.display(),
            cert.display(),
            if chain.len() > 1 {
                format!(" (the first of its {} certificates)", chain.len())
            } else {
                String::new()
            }
        ),
        // rustls could not load the key at all (`General`: "failed to parse private key as
        // RSA, ECDSA, or EdDSA", said as "unexpected error"): its kind or size is one
        // aws-lc-rs does not sign with.
        (None, rustls::Error::General(_)) => format!(
            "{}: the private key is {}, which wsgate cannot use: keys must be {USABLE_KEYS}",
            key.display(),
            key_kind(der).unwrap_or_else(|| "of a kind wsgate does not know".into())
        ),
        (None, e) => format!(
            "{} and {} do not make a usable pair: {e}",
            cert.display(),
            key.display()
        ),
    };
    PairError {
        cert: None,
        key: Some(message),
    }
}

/// Reads a certificate chain and its private key and checks that they belong together.
pub fn load_certified_key(cert: &Path, key: &Path) -> Result<Arc<CertifiedKey>, PairError> {
    let (chain, der) = read_pair(cert, key)?;
    let certified = CertifiedKey::from_der(chain.clone(), der.clone_key(), &provider())
        .map_err(|e| mismatch(cert, key, &chain, &der, e))?;
    Ok(Arc::new(certified))
}

/// Days before expiry from which a certificate's coming expiry is warned about at start.
const EXPIRY_WARNING_DAYS: i64 = 14;

/// A warning about the leaf certificate's dates, if there is something to say: expired,
/// not yet valid, or expiring within two weeks. (A warning, not an error: refusing to start
/// over an expired certificate would turn a degraded service into no service.)
pub fn validity_warning(ck: &CertifiedKey, now: std::time::SystemTime) -> Option<String> {
    let leaf = ck.cert.first()?;
    let (_, parsed) = x509_parser::parse_x509_certificate(leaf.as_ref()).ok()?;
    let v = parsed.validity();
    let now = now
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    if now < v.not_before.timestamp() {
        Some(format!(
            "certificate is not valid yet: valid from {}",
            v.not_before
        ))
    } else if now > v.not_after.timestamp() {
        Some(format!("certificate expired on {}", v.not_after))
    } else if v.not_after.timestamp() - now < EXPIRY_WARNING_DAYS * 86_400 {
        Some(format!("certificate expires soon, on {}", v.not_after))
    } else {
        None
    }
}

/// A CA bundle (PEM) as a root store; an error if the file holds no usable certificate.
fn load_roots(ca: &Path) -> Result<rustls::RootCertStore, String> {
    load_roots_and_der(ca).map(|(roots, _)| roots)
}

/// [`load_roots`], and the file's certificates as DER, one after the other (what the file
/// says, whatever its PEM layout: see [`ticketer`]).
fn load_roots_and_der(ca: &Path) -> Result<(rustls::RootCertStore, Vec<u8>), String> {
    let text = read_pem_file(ca)?;
    let certs = CertificateDer::pem_slice_iter(&text)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{}: {}", ca.display(), pem_error(&e)))?;
    if certs.is_empty() && is_der(&text) {
        return Err(der_not_pem(ca, "x509"));
    }
    let der = certs
        .iter()
        .flat_map(|c| c.as_ref().iter().copied())
        .collect();
    let mut roots = rustls::RootCertStore::empty();
    let (added, _) = roots.add_parsable_certificates(certs);
    if added == 0 {
        return Err(format!(
            "{}: no usable CA certificate in the file",
            ca.display()
        ));
    }
    Ok((roots, der))
}

/// [`load_roots_and_der`] for a listener's `client_ca`, refusing a file in which no
/// certificate can vouch for a client: only end-entity certificates (CA:FALSE) issued by
/// someone else, typically a client's own certificate named where its CA's belongs. webpki
/// takes any certificate as a trust anchor, so such a file loaded, passed `wsgate check`,
/// and then no client could ever authenticate (a client certificate chains to the CA that
/// issued it, which the file lacks). A CA certificate (CA:TRUE, or an X.509 v1 root, which
/// has no extensions to say so) can vouch, and so can a self-signed certificate, for itself:
/// the pin of one client's certificate.
fn load_client_roots(ca: &Path) -> Result<(rustls::RootCertStore, Vec<u8>), String> {
    let (roots, der) = load_roots_and_der(ca)?;
    // The file's certificates, read once: `der` holds them one after the other, and each
    // parse leaves the rest.
    let leaf = {
        let (mut rest, mut leaf) = (&der[..], None);
        loop {
            if rest.is_empty() {
                break leaf;
            }
            let Ok((next, parsed)) = x509_parser::parse_x509_certificate(rest) else {
                // Not a certificate x509-parser reads: webpki took it, and judges it.
                break None;
            };
            let is_ca = match parsed.basic_constraints() {
                Ok(Some(bc)) => bc.value.ca,
                _ => parsed.version() != x509_parser::x509::X509Version::V3,
            };
            if is_ca || parsed.subject() == parsed.issuer() {
                break None;
            }
            leaf.get_or_insert_with(|| {
                (
                    subject_text(parsed.subject()),
                    subject_text(parsed.issuer()),
                )
            });
            rest = next;
        }
    };
    let Some((subject, issuer)) = leaf else {
        return Ok((roots, der));
    };
    Err(format!(
        "{}: no CA certificate in the file, only a client's own ({subject}, CA:FALSE, issued \
         by {issuer}): no client certificate can chain to it, so no client could \
         authenticate. client_ca names the CA that issues the client certificates (its \
         certificate, CA:TRUE: here, that of {issuer})",
        ca.display()
    ))
}

/// A PEM file's problem in words: it was rustls's Debug form, e.g. `MissingSectionEnd {
/// end_marker: [67, 69, ...] }` for a file cut short.
fn pem_error(e: &rustls::pki_types::pem::Error) -> String {
    use rustls::pki_types::pem::Error as E;
    match e {
        E::Io(io) => io.to_string(),
        E::MissingSectionEnd { end_marker } => format!(
            "a PEM block has no \"-----END {}-----\" line: the file is cut short (a truncated \
             copy, or a file still being written)",
            String::from_utf8_lossy(end_marker)
        ),
        E::IllegalSectionStart { line } => format!(
            "a malformed PEM \"-----BEGIN\" line: {:?}",
            String::from_utf8_lossy(line)
        ),
        E::Base64Decode(why) => {
            format!("a PEM block's base64 text is damaged ({why}): was the file edited or cut?")
        }
        E::SectionTooLarge => "a PEM block is larger than 256 MB".to_string(),
        other => other.to_string(),
    }
}

/// Certificates of one listener: by SNI name (exact, or `*.example.com`), and a default for
/// clients that send no SNI or a name no certificate covers. Without a default such clients get
/// a handshake alert.
#[derive(Default)]
pub struct SniResolver {
    exact: HashMap<String, Arc<CertifiedKey>>,
    wildcard: Vec<(String, Arc<CertifiedKey>)>,
    default: Option<Arc<CertifiedKey>>,
}

impl fmt::Debug for SniResolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SniResolver")
            .field("exact", &self.exact.keys().collect::<Vec<_>>())
            .field(
                "wildcard",
                &self.wildcard.iter().map(|(s, _)| s).collect::<Vec<_>>(),
            )
            .field("default", &self.default.is_some())
            .finish()
    }
}

impl SniResolver {
    pub fn set_default(&mut self, key: Arc<CertifiedKey>) {
        self.default = Some(key);
    }

    /// Serves `key` for `host` (lower case; `*.example.com` for any subdomain). Wildcards
    /// are kept longest first, so the most specific one that covers a name serves it
    /// (`*.b.example.com` before `*.example.com`), whatever their order in the file.
    pub fn add(&mut self, host: &str, key: Arc<CertifiedKey>) {
        let host = host.to_ascii_lowercase();
        match host.strip_prefix("*.") {
            Some(suffix) => {
                let suffix = format!(".{suffix}");
                let at = self
                    .wildcard
                    .partition_point(|(s, _)| s.len() >= suffix.len());
                self.wildcard.insert(at, (suffix, key));
            }
            None => {
                self.exact.insert(host, key);
            }
        }
    }

    fn find(&self, name: Option<&str>) -> Option<Arc<CertifiedKey>> {
        if let Some(name) = name {
            let name = name.to_ascii_lowercase();
            if let Some(k) = self.exact.get(&name) {
                return Some(k.clone());
            }
            // `*.example.com` covers one or more labels before `.example.com`; the longest
            // wildcard that covers the name comes first (`add`).
            if let Some((_, k)) = self
                .wildcard
                .iter()
                .find(|(suffix, _)| name.len() > suffix.len() && name.ends_with(suffix.as_str()))
            {
                return Some(k.clone());
            }
        }
        self.default.clone()
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        noted(hello.server_name(), self.find(hello.server_name()))
    }
}

thread_local! {
    /// The alert for the handshake whose certificate a resolver on this thread just failed to
    /// find (see [`take_unserved`]).
    static UNSERVED: std::cell::Cell<Option<rustls::AlertDescription>> =
        const { std::cell::Cell::new(None) };
}

/// Passes a resolver's answer on, noting why there was none for [`take_unserved`].
fn noted(name: Option<&str>, key: Option<Arc<CertifiedKey>>) -> Option<Arc<CertifiedKey>> {
    if key.is_none() {
        // RFC 6066 §3: a name the server does not recognise, `unrecognized_name`; RFC 8446
        // §9.2: a server that requires the extension answers its absence with
        // `missing_extension`.
        let alert = match name {
            Some(_) => rustls::AlertDescription::UnrecognisedName,
            None => rustls::AlertDescription::MissingExtension,
        };
        UNSERVED.with(|u| u.set(Some(alert)));
    }
    key
}

/// The alert a client should get for the handshake that just failed on this thread because
/// no certificate served it, if that is why it failed. rustls answers every such handshake
/// with `access_denied` (its resolver cannot say why it found none), which reads to a client
/// as a refusal of who it is; the TLS layer swaps in this one (`tls_io.rs`).
pub fn take_unserved() -> Option<rustls::AlertDescription> {
    UNSERVED.with(|u| u.take())
}

/// Where one certificate of a listener comes from, kept so that it can be read again.
#[derive(Debug, Clone)]
pub struct CertSource {
    /// The config table it was written in (`listener[0].tls`, `listener[0].tls.sni[1]`), so
    /// that a reload's warning names the entry whose files do not load.
    pub entry: String,
    /// SNI names it serves; empty for the listener's default certificate.
    pub hosts: Vec<String>,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl CertSource {
    /// The entry as a log names it: its table, and the names it serves.
    fn name(&self) -> String {
        if self.hosts.is_empty() {
            format!("{} (the default certificate)", self.entry)
        } else {
            format!("{} ({})", self.entry, self.hosts.join(", "))
        }
    }
}

/// A resolver serving `keys[i]` for `sources[i]`.
fn resolver_of(sources: &[CertSource], keys: &[Arc<CertifiedKey>]) -> SniResolver {
    let mut resolver = SniResolver::default();
    for (src, key) in sources.iter().zip(keys) {
        if src.hosts.is_empty() {
            resolver.set_default(key.clone());
        } else {
            for h in &src.hosts {
                resolver.add(h, key.clone());
            }
        }
    }
    resolver
}

/// What a certificate reload did: the entries whose files did not load, each with why (its
/// files and the problem), and each still serving the certificate it had. Every other entry
/// serves what its files hold now.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Reloaded {
    pub kept: Vec<String>,
}

/// The certificates the running listeners serve, by listener (its configured address) and
/// files: a config reload (SIGHUP, `POST /api/reload`, `[config] watch`) falls back to one of
/// these for an entry whose files do not load, as the certificate watcher does, rather than
/// failing the whole reload over one half-renewed pair. An entry with nothing here (a new
/// listener, new files, `wsgate check`, the first start) has no certificate to keep, and its
/// files not loading is an error.
#[derive(Debug, Default)]
pub struct Serving(HashMap<(std::net::SocketAddr, PathBuf, PathBuf), Arc<CertifiedKey>>);

impl Serving {
    /// Adds what the listener configured at `addr` serves.
    pub fn add(&mut self, addr: std::net::SocketAddr, listener: &TlsListener) {
        for (src, key) in listener.serving() {
            self.0
                .insert((addr, src.cert.clone(), src.key.clone()), key);
        }
    }

    /// The certificate the listener configured at `addr` serves from `cert` and `key`.
    pub fn get(
        &self,
        addr: std::net::SocketAddr,
        cert: &Path,
        key: &Path,
    ) -> Option<Arc<CertifiedKey>> {
        self.0
            .get(&(addr, cert.to_path_buf(), key.to_path_buf()))
            .cloned()
    }
}

/// The resolver rustls calls, reading whichever certificates were loaded last.
#[derive(Debug)]
struct Reloading(RwLock<Arc<SniResolver>>);

impl ResolvesServerCert for Reloading {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let current = self.0.read().unwrap_or_else(|p| p.into_inner()).clone();
        noted(hello.server_name(), current.find(hello.server_name()))
    }
}

/// Which client certificates a listener asks for, as far as resuming a session goes: the
/// SHA-256 of its CA certificates (DER, in file order) and whether one is required. `None`:
/// none asked for.
type AuthPolicy = Option<([u8; 32], bool)>;

/// [`AuthPolicy`] of a listener with client certificates from the CA file's `der`.
fn auth_policy(der: &[u8], required: bool) -> AuthPolicy {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, der);
    let mut hash = [0u8; 32];
    hash.copy_from_slice(digest.as_ref());
    Some((hash, required))
}

/// The process's session ticket keys (rustls's `Ticketer`: AES-256 and HMAC-SHA256 as RFC
/// 5077 §4 recommends, random keys rolled every 6 hours, tickets valid for 12), one set per
/// client-certificate policy, shared by every listener and config generation with that
/// policy: a ticket issued before a reload still resumes after it (the new listener is built
/// while the old one still holds the keys). Keys live in memory only, so a restart or binary
/// upgrade ends resumption once.
///
/// Per policy because a resumed session skips the client's certificate: rustls takes the
/// certificate the ticket recorded (or that there was none) without asking the listener's
/// verifier again. One set for all would let a ticket from a listener without `client_auth`
/// (or with another CA, or from before the CA file changed) resume on a listener that
/// requires a certificate, with none or one its CA never signed. A ticket another policy's
/// keys made does not decrypt here, so that client gets a full handshake.
///
/// Held weakly: the listeners' configs own their keys, and a policy no listener has any more
/// (a CA bundle rotated away) leaves the table at the next insert, so a process that reloads
/// a rotating bundle for months keeps one entry per bundle in use.
fn ticketer(policy: AuthPolicy) -> Result<Arc<dyn rustls::server::ProducesTickets>, String> {
    type Ticketers =
        std::collections::HashMap<AuthPolicy, std::sync::Weak<dyn rustls::server::ProducesTickets>>;
    static TICKETERS: std::sync::Mutex<Option<Ticketers>> = std::sync::Mutex::new(None);
    let mut all = TICKETERS.lock().unwrap_or_else(|p| p.into_inner());
    let all = all.get_or_insert_with(Default::default);
    if let Some(t) = all.get(&policy).and_then(std::sync::Weak::upgrade) {
        return Ok(t);
    }
    let t = rustls::crypto::aws_lc_rs::Ticketer::new()
        .map_err(|e| format!("TLS session tickets: {e}"))?;
    all.retain(|_, w| w.strong_count() > 0);
    all.insert(policy, Arc::downgrade(&t));
    Ok(t)
}

/// A TLS listener's configuration, whose certificates can be reloaded in place: handshakes
/// after a reload use the new certificates; established connections are not touched.
#[derive(Debug)]
pub struct TlsListener {
    sources: Vec<CertSource>,
    /// The certificate each of `sources` serves now (same order): what an entry whose files
    /// no longer load keeps serving. Locked for a whole reload, so two (SIGHUP and the file
    /// watcher) do not interleave.
    serving: std::sync::Mutex<Vec<Arc<CertifiedKey>>>,
    resolver: Arc<Reloading>,
    /// Client certificates, if asked for: the CA file is read again at each reload.
    client_auth: Option<ClientAuth>,
    resumption: bool,
    /// The server configurations and the client-certificate policy they were built for. A
    /// client CA is part of a configuration (its verifier), so a changed CA file means new
    /// configurations, which the next handshakes take.
    configs: RwLock<Configs>,
    /// Counts successful reloads (tests and operators can wait for one).
    generation: tokio::sync::watch::Sender<u64>,
    /// The header that carries a verified client certificate's subject to backends.
    pub subject_header: Option<http::HeaderName>,
}

/// Client certificates (mutual TLS) on a listener.
#[derive(Debug, Clone)]
pub struct ClientAuth {
    /// CA bundle (PEM) client certificates must chain to.
    pub ca: PathBuf,
    /// Refuse the TLS handshake without a valid client certificate; otherwise a client may
    /// send none (and its requests carry no subject).
    pub required: bool,
}

/// The subject of the verified client certificate of a connection, RFC 4514 style
/// (`CN=alice, O=Example`), if the client sent one and its subject names anything. An empty
/// subject is legal beside a critical subjectAltName (RFC 5280 §4.1.2.6; SPIFFE-style
/// certificates name their holder only there), and is no subject to pass on: as `Some("")`
/// it went to backends as an empty `client_subject_header` and `{tls.subject}`, where a
/// header with no value is left out rather than half-filled.
pub fn peer_subject(conn: &rustls::CommonState) -> Option<Arc<str>> {
    let cert = conn.peer_certificates()?.first()?;
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
    let subject = subject_text(parsed.subject());
    (!subject.is_empty()).then(|| Arc::from(subject))
}

/// A distinguished name as text: its attributes in the certificate's order, `, ` between
/// RDNs and ` + ` inside one, each value escaped as RFC 4514 §2.4 asks. A backend that
/// splits the header on commas then cannot be handed a CN of `alice, O=Admins` as an
/// `O=Admins` the CA never vouched for (x509-parser's `Display` escapes nothing). A value
/// that is no character string is `#` and its DER in hex (§2.4).
fn subject_text(name: &x509_parser::x509::X509Name<'_>) -> String {
    use std::fmt::Write;
    let registry = x509_parser::objects::oid_registry();
    let mut out = String::new();
    for (i, rdn) in name.iter().enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        for (j, attr) in rdn.iter().enumerate() {
            if j > 0 {
                out.push_str(" + ");
            }
            match x509_parser::objects::oid2abbrev(attr.attr_type(), registry) {
                Ok(abbrev) => out.push_str(abbrev),
                Err(_) => out.push_str(&attr.attr_type().to_id_string()),
            }
            out.push('=');
            let value = attr.attr_value();
            match attribute_text(value) {
                Some(text) => escape_dn_value(&text, &mut out),
                None => {
                    out.push('#');
                    for b in der_of(value) {
                        let _ = write!(out, "{b:02x}");
                    }
                }
            }
        }
    }
    out
}

/// The text of a character-string attribute value, `None` for any other type.
fn attribute_text(value: &x509_parser::asn1_rs::Any<'_>) -> Option<String> {
    use x509_parser::asn1_rs::Tag;
    let data = value.data;
    match value.tag() {
        Tag::NumericString
        | Tag::PrintableString
        | Tag::Utf8String
        | Tag::Ia5String
        | Tag::VisibleString
        | Tag::T61String => std::str::from_utf8(data).ok().map(str::to_string),
        Tag::BmpString if data.len().is_multiple_of(2) => {
            let units = data
                .chunks_exact(2)
                .map(|c| u16::from_be_bytes([c[0], c[1]]));
            char::decode_utf16(units)
                .collect::<Result<String, _>>()
                .ok()
        }
        Tag::UniversalString if data.len().is_multiple_of(4) => data
            .chunks_exact(4)
            .map(|c| char::from_u32(u32::from_be_bytes([c[0], c[1], c[2], c[3]])))
            .collect(),
        _ => None,
    }
}

/// A value's DER: its whole identifier (class and constructed bit too), length and content.
fn der_of(value: &x509_parser::asn1_rs::Any<'_>) -> Vec<u8> {
    use x509_parser::asn1_rs::ToDer;
    value.to_der_vec().unwrap_or_default()
}

/// Appends `value` escaped as RFC 4514 §2.4 asks: `" + , ; < > \` with a backslash, a
/// leading space or `#` and a trailing space too, and control characters (NUL among them)
/// as `\XX`, which also keeps them out of a header value.
fn escape_dn_value(value: &str, out: &mut String) {
    use std::fmt::Write;
    let last = value.chars().count().saturating_sub(1);
    for (i, c) in value.chars().enumerate() {
        match c {
            '"' | '+' | ',' | ';' | '<' | '>' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            ' ' | '#' if i == 0 => {
                out.push('\\');
                out.push(c);
            }
            ' ' if i == last => out.push_str("\\ "),
            c if c.is_ascii_control() => {
                let _ = write!(out, "\\{:02X}", c as u32);
            }
            c => out.push(c),
        }
    }
}

impl TlsListener {
    /// A listener serving `sources`, each with the certificate already loaded from it.
    pub fn new(sources: Vec<(CertSource, Arc<CertifiedKey>)>) -> Result<TlsListener, String> {
        Self::with_client_auth(sources, None, None, true)
    }

    /// A listener that may ask for client certificates (`client_auth`), and passes the
    /// verified subject to backends in `subject_header`.
    ///
    /// `resumption` (`session_resumption`): a returning client may skip the certificate and
    /// its signature. TLS 1.3 gets stateless session tickets (`ticketer()`: nothing kept per
    /// client, any worker can resume any client, two tickets per full handshake as rustls and
    /// OpenSSL send), TLS 1.2 tickets and rustls's session cache (256 sessions). Without it,
    /// no ticket is sent and nothing is cached: every handshake is a full one, and none
    /// spends work issuing tickets.
    pub fn with_client_auth(
        sources: Vec<(CertSource, Arc<CertifiedKey>)>,
        client_auth: Option<&ClientAuth>,
        subject_header: Option<http::HeaderName>,
        resumption: bool,
    ) -> Result<TlsListener, String> {
        let (sources, serving): (Vec<_>, Vec<_>) = sources.into_iter().unzip();
        let initial = resolver_of(&sources, &serving);
        let resolver = Arc::new(Reloading(RwLock::new(Arc::new(initial))));
        let configs = build_configs(&resolver, client_auth, resumption)?;
        Ok(TlsListener {
            sources,
            serving: std::sync::Mutex::new(serving),
            resolver,
            client_auth: client_auth.cloned(),
            resumption,
            configs: RwLock::new(configs),
            generation: tokio::sync::watch::Sender::new(0),
            subject_header,
        })
    }

    /// The server configuration; with `http2` it offers ALPN `h2` before `http/1.1`.
    pub fn server_config(&self, http2: bool) -> Arc<ServerConfig> {
        let c = self.configs.read().unwrap_or_else(|p| p.into_inner());
        if http2 { c.h2.clone() } else { c.h1.clone() }
    }

    /// Reads every certificate file again, and the client CA file: a CA that changed (one
    /// removed from a bundle because its key leaked, one added) applies to the next
    /// handshakes.
    ///
    /// Each entry (the default certificate, each SNI one) stands alone: one whose files do
    /// not load keeps the certificate it has, and is named in [`Reloaded::kept`] with why,
    /// while the others serve their new files. One broken pair (a half-renewed SNI entry)
    /// held back every other renewal on the listener, the default's too, until someone
    /// fixed it: certificates expired that had been renewed on disk. A client CA file that
    /// does not load is an error, and then nothing changes (the CA is the listener's, not
    /// one entry's).
    pub fn reload(&self) -> Result<Reloaded, String> {
        let mut serving = self.serving.lock().unwrap_or_else(|p| p.into_inner());
        let mut fresh = serving.clone();
        let mut kept = Vec::new();
        for (src, key) in self.sources.iter().zip(fresh.iter_mut()) {
            match load_certified_key(&src.cert, &src.key) {
                Ok(k) => {
                    if let Some(w) = validity_warning(&k, std::time::SystemTime::now()) {
                        tracing::warn!(file = %src.cert.display(), "{w}");
                    }
                    *key = k;
                }
                Err(e) => kept.push(format!(
                    "{}: {}; it keeps the certificate it had",
                    src.name(),
                    e.message()
                )),
            }
        }
        let configs = match &self.client_auth {
            Some(auth) => {
                let (_, der) = load_client_roots(&auth.ca)?;
                let now = self
                    .configs
                    .read()
                    .unwrap_or_else(|p| p.into_inner())
                    .policy;
                (auth_policy(&der, auth.required) != now)
                    .then(|| build_configs(&self.resolver, Some(auth), self.resumption))
                    .transpose()?
            }
            None => None,
        };
        // A listener with no files (the development certificate) has nothing to read again.
        if !self.sources.is_empty() {
            *self.resolver.0.write().unwrap_or_else(|p| p.into_inner()) =
                Arc::new(resolver_of(&self.sources, &fresh));
            *serving = fresh;
        }
        if let Some(configs) = configs {
            *self.configs.write().unwrap_or_else(|p| p.into_inner()) = configs;
        }
        self.generation.send_modify(|g| *g += 1);
        Ok(Reloaded { kept })
    }

    /// The certificate each entry serves now, by its files: what a config reload falls back
    /// to for an entry whose files do not load ([`Serving`]).
    fn serving(&self) -> Vec<(&CertSource, Arc<CertifiedKey>)> {
        let serving = self.serving.lock().unwrap_or_else(|p| p.into_inner());
        self.sources.iter().zip(serving.iter().cloned()).collect()
    }

    /// Changes with every successful reload.
    pub fn reloads(&self) -> tokio::sync::watch::Receiver<u64> {
        self.generation.subscribe()
    }

    /// What the certificate and key files (and the client CA file) look like on disk now:
    /// modification time, size and inode of each (a file replaced by a rename, as
    /// cert-manager and certbot do, changes inode even when the time does not).
    fn fingerprint(&self) -> Vec<Option<(std::time::SystemTime, u64, u64)>> {
        use std::os::unix::fs::MetadataExt;
        self.sources
            .iter()
            .flat_map(|s| [&s.cert, &s.key])
            .chain(self.client_auth.as_ref().map(|a| &a.ca))
            .map(|p| {
                let m = std::fs::metadata(p).ok()?;
                Some((m.modified().ok()?, m.len(), m.ino()))
            })
            .collect()
    }

    /// Reloads the certificates whenever their files change, checking every `interval`,
    /// until `stop`. An entry whose files do not load after a change (a half-written file, a
    /// key that does not match yet) keeps its old certificate, while the others take their
    /// new files, and is tried again at the next change.
    pub async fn watch_files(
        self: Arc<Self>,
        interval: std::time::Duration,
        listener: std::net::SocketAddr,
        stop: tokio_util::sync::CancellationToken,
    ) {
        let mut last = self.fingerprint();
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(interval) => {}
            }
            let now = self.fingerprint();
            if now == last {
                continue;
            }
            last = now;
            match self.reload() {
                Ok(r) => {
                    tracing::info!(listener = %listener, "certificate files changed: reloaded");
                    for kept in r.kept {
                        tracing::warn!(listener = %listener, error = %kept, "certificate files changed but this entry's do not load");
                    }
                }
                Err(e) => {
                    tracing::warn!(listener = %listener, error = %e, "certificate files changed but the client CA file does not load; keeping the previous certificates and CA")
                }
            }
        }
    }
}

/// A listener's server configurations, for HTTP/1.1 and for HTTP/2 (their ALPN lists), and
/// the client-certificate policy they were built for.
#[derive(Debug)]
struct Configs {
    h1: Arc<ServerConfig>,
    h2: Arc<ServerConfig>,
    policy: AuthPolicy,
}

/// Builds a listener's server configurations on `resolver` (see
/// [`TlsListener::with_client_auth`]), reading the client CA file if there is one.
fn build_configs(
    resolver: &Arc<Reloading>,
    client_auth: Option<&ClientAuth>,
    resumption: bool,
) -> Result<Configs, String> {
    let builder = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| format!("TLS setup: {e}"))?;
    let mut policy = None;
    let builder = match client_auth {
        None => builder.with_no_client_auth(),
        Some(auth) => {
            let (roots, der) = load_client_roots(&auth.ca)?;
            policy = auth_policy(&der, auth.required);
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider(),
            );
            let verifier = if auth.required {
                verifier
            } else {
                verifier.allow_unauthenticated()
            };
            let verifier = verifier
                .build()
                .map_err(|e| format!("{}: {e}", auth.ca.display()))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder.with_cert_resolver(resolver.clone());
    if resumption {
        config.ticketer = ticketer(policy)?;
    } else {
        config.send_tls13_tickets = 0;
        config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    }
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    // After its handshake, a TLS 1.3 connection moves to wsgate's own record layer
    // (`tls_records.rs`: a few hundred bytes per session where rustls holds ~2.5 KiB),
    // which needs the traffic keys handed over.
    config.enable_secret_extraction = true;
    // And its traffic secrets, for its key updates: taken as rustls logs them, checked
    // against the keys rustls hands over, logged nowhere.
    config.key_log = Arc::new(crate::tls_records::SecretCapture);
    let mut config_h2 = config.clone();
    config_h2.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Configs {
        h1: Arc::new(config),
        h2: Arc::new(config_h2),
        policy,
    })
}

/// TLS toward `wss://` backends: who is trusted, and whether wsgate shows a certificate.
#[derive(Debug, Default)]
pub struct BackendTlsOptions<'a> {
    /// Trust only this PEM CA bundle (else the system's roots).
    pub ca: Option<&'a Path>,
    /// Accept any certificate. For development only; callers log a warning at every start.
    pub insecure_skip_verify: bool,
    /// Client certificate and key, for backends that require mutual TLS.
    pub client_auth: Option<(&'a Path, &'a Path)>,
}

/// The system's root certificates, read once.
fn system_roots() -> &'static rustls::RootCertStore {
    static ROOTS: std::sync::OnceLock<rustls::RootCertStore> = std::sync::OnceLock::new();
    ROOTS.get_or_init(|| {
        let loaded = rustls_native_certs::load_native_certs();
        for e in &loaded.errors {
            tracing::warn!(error = %e, "while reading the system's root certificates");
        }
        let mut roots = rustls::RootCertStore::empty();
        let (added, ignored) = roots.add_parsable_certificates(loaded.certs);
        tracing::debug!(added, ignored, "system root certificates loaded");
        roots
    })
}

/// The rustls client configuration for a route's `wss://` backends.
pub fn backend_client_config(
    opts: &BackendTlsOptions<'_>,
) -> Result<Arc<rustls::ClientConfig>, BackendTlsError> {
    // Every file is read before any error is returned, so that one run names them all.
    let roots = match (opts.insecure_skip_verify, opts.ca) {
        (true, _) => Ok(None),
        (false, Some(ca)) => load_roots(ca).map(Some),
        (false, None) => Ok(Some(system_roots().clone())),
    };
    let pair = opts
        .client_auth
        .map(|(cert, key)| read_pair(cert, key).map(|pair| (cert, key, pair)));
    let (roots, pair) = match (roots, pair.transpose()) {
        (Ok(roots), Ok(pair)) => (roots, pair),
        (roots, pair) => {
            return Err(BackendTlsError {
                ca: roots.err(),
                client: pair.err().unwrap_or_default(),
            });
        }
    };
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .expect("the aws-lc-rs provider serves TLS 1.3 and 1.2");
    let builder = match roots {
        None => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoVerification(provider()))),
        Some(roots) => builder.with_root_certificates(roots),
    };
    let mut config = match pair {
        Some((cert, key, (chain, der))) => builder
            .with_client_auth_cert(chain.clone(), der.clone_key())
            .map_err(|e| BackendTlsError {
                ca: None,
                client: mismatch(cert, key, &chain, &der, e),
            })?,
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    // As on the listeners: TLS 1.3 sessions move to `tls_records.rs` after the handshake,
    // with their traffic secrets (rustls's connection is kept for the session tickets until
    // the backend's first data: see that file).
    config.enable_secret_extraction = true;
    config.key_log = Arc::new(crate::tls_records::SecretCapture);
    Ok(Arc::new(config))
}

/// Accepts any server certificate but still checks the handshake signatures (so the session
/// keys belong to whoever holds the presented certificate). Development only.
#[derive(Debug)]
struct NoVerification(Arc<CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for NoVerification {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// The common name that marks wsgate's development certificates, so they are never used
/// silently: serving one on a non-loopback address logs a warning.
pub const DEV_CERT_NAME: &str = "wsgate development certificate (not for production)";

/// A self-signed development certificate for `names` (DNS names or IP addresses), valid for
/// 90 days, as PEM (certificate, private key).
pub fn dev_certificate(names: &[String]) -> Result<(String, String), String> {
    if let Some(bad) = names.iter().find(|n| !is_cert_name(n)) {
        return Err(format!(
            "{bad:?} is not a DNS name or an IP address (a certificate names hosts as \
             letters, digits and hyphens in dot-separated labels, a leading \"*.\" allowed)"
        ));
    }
    let mut params = rcgen::CertificateParams::new(names.to_vec()).map_err(|e| e.to_string())?;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, DEV_CERT_NAME);
    let now = std::time::SystemTime::now();
    params.not_before = now.into();
    params.not_after = (now + std::time::Duration::from_secs(90 * 86_400)).into();
    let key = rcgen::KeyPair::generate().map_err(|e| e.to_string())?;
    let cert = params.self_signed(&key).map_err(|e| e.to_string())?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// A name a certificate's subjectAltName can carry (RFC 5280 §4.2.1.6): an IP address, or a
/// DNS name (letter-digit-hyphen labels, none empty or starting or ending with a hyphen, at
/// most 253 characters), a leading `*.` allowed. rcgen writes anything as a DNS name,
/// an empty one or `http://x` included.
fn is_cert_name(name: &str) -> bool {
    if name.parse::<std::net::IpAddr>().is_ok() {
        return true;
    }
    let host = name.strip_prefix("*.").unwrap_or(name);
    !host.is_empty()
        && name.len() <= 253
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

/// Whether a certificate is one of wsgate's development certificates.
pub fn is_dev_certificate(cert: &CertificateDer<'_>) -> bool {
    cert.as_ref()
        .windows(DEV_CERT_NAME.len())
        .any(|w| w == DEV_CERT_NAME.as_bytes())
}

/// A TLS listener serving a freshly made development certificate (for `wsgate demo --tls`).
pub fn dev_listener(names: &[String]) -> Result<Arc<TlsListener>, String> {
    let (cert, key) = dev_certificate(names)?;
    let chain =
        vec![CertificateDer::from_pem_slice(cert.as_bytes()).map_err(|e| format!("{e:?}"))?];
    let key = PrivateKeyDer::from_pem_slice(key.as_bytes()).map_err(|e| format!("{e:?}"))?;
    let ck = CertifiedKey::from_der(chain, key, &provider()).map_err(|e| e.to_string())?;
    let listener = TlsListener::new(Vec::new())?;
    let mut resolver = SniResolver::default();
    resolver.set_default(Arc::new(ck));
    *listener
        .resolver
        .0
        .write()
        .unwrap_or_else(|p| p.into_inner()) = Arc::new(resolver);
    Ok(Arc::new(listener))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The subject of a certificate made with these attributes, as `peer_subject` writes it.
    fn subject(attrs: &[(rcgen::DnType, rcgen::DnValue)]) -> String {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name = rcgen::DistinguishedName::new();
        for (t, v) in attrs {
            params.distinguished_name.push(t.clone(), v.clone());
        }
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        let (_, parsed) = x509_parser::parse_x509_certificate(cert.der()).unwrap();
        subject_text(parsed.subject())
    }

    /// A DER element at the start of `der`: (tag, header length, content length).
    fn element(der: &[u8]) -> (u8, usize, usize) {
        match der[1] {
            n if n < 0x80 => (der[0], 2, n as usize),
            n => {
                let k = (n & 0x7f) as usize;
                let len = der[2..2 + k].iter().fold(0, |l, b| l << 8 | *b as usize);
                (der[0], 2 + k, len)
            }
        }
    }

    /// A DER element with `tag` around `content`.
    fn wrap(tag: u8, content: &[u8]) -> Vec<u8> {
        let mut out = vec![tag];
        match content.len() {
            n if n < 0x80 => out.push(n as u8),
            n => {
                let len = n.to_be_bytes();
                let skip = len.iter().take_while(|b| **b == 0).count();
                out.push(0x80 | (len.len() - skip) as u8);
                out.extend_from_slice(&len[skip..]);
            }
        }
        out.extend_from_slice(content);
        out
    }

    /// `cert` made X.509 version 1: its version field and extensions taken out (the
    /// signature no longer matches, which loading a pair does not look at).
    fn as_version_1(cert: &[u8]) -> Vec<u8> {
        let (_, h, len) = element(cert);
        let outer = &cert[h..h + len];
        let (_, th, tlen) = element(outer);
        let (tbs, rest) = (&outer[th..th + tlen], &outer[th + tlen..]);
        let mut fields = Vec::new();
        let mut at = 0;
        while at < tbs.len() {
            let (tag, fh, flen) = element(&tbs[at..]);
            // [0] version and [3] extensions go; the rest stays.
            if tag != 0xa0 && tag != 0xa3 {
                fields.extend_from_slice(&tbs[at..at + fh + flen]);
            }
            at += fh + flen;
        }
        let tbs = wrap(0x30, &fields);
        wrap(0x30, &[tbs, rest.to_vec()].concat())
    }

    /// A version 1 certificate is refused as the certificate's fault, saying why and how to
    /// reissue it: it was the pair's fault, on the `key` line, in rustls's Debug words.
    #[test]
    fn a_version_1_certificate_is_named_as_such() {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["localhost".to_string()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let v1 = as_version_1(cert.der());
        let (_, parsed) = x509_parser::parse_x509_certificate(&v1).expect("still a certificate");
        assert_eq!(parsed.version(), x509_parser::x509::X509Version::V1);
        let dir = std::env::temp_dir().join(format!("wsgate-v1-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (cert_file, key_file) = (dir.join("v1.pem"), dir.join("v1.key"));
        let pem = format!(
            "-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n",
            base64::Engine::encode(&base64::engine::general_purpose::STANDARD, &v1)
        );
        std::fs::write(&cert_file, pem).unwrap();
        std::fs::write(&key_file, key.serialize_pem()).unwrap();
        let Err(e) = load_certified_key(&cert_file, &key_file) else {
            panic!("a version 1 certificate was taken");
        };
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(e.key, None, "{e:?}");
        let m = e.cert.expect("the certificate's fault");
        assert!(
            m.contains("X.509 version 1, and only version 3 is supported")
                && m.contains("subjectAltName"),
            "{m}"
        );
    }

    /// A certificate file (and its key) in a fresh directory, which the caller removes.
    fn pair_files(label: &str) -> (PathBuf, PathBuf, PathBuf, rcgen::Certificate) {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["localhost".to_string()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("wsgate-{label}-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (cert_file, key_file) = (dir.join("c.pem"), dir.join("c.key"));
        std::fs::write(&cert_file, cert.pem()).unwrap();
        std::fs::write(&key_file, key.serialize_pem()).unwrap();
        (dir, cert_file, key_file, cert)
    }

    fn pem(label: &str, der: &[u8]) -> String {
        format!(
            "-----BEGIN {label}-----\n{}\n-----END {label}-----\n",
            base64::Engine::encode(&base64::engine::general_purpose::STANDARD, der)
        )
    }

    /// A key rustls cannot sign with is named by kind and size, with what would do; it was
    /// "unexpected error: failed to parse private key as RSA, ECDSA, or EdDSA", of an RSA
    /// key too. (The keys are DER made here, which no library would load either way.)
    #[test]
    fn a_key_of_a_kind_wsgate_cannot_use_is_named_by_kind() {
        let int = |bytes: &[u8]| wrap(0x02, bytes);
        let oid = |bytes: &[u8]| wrap(0x06, bytes);
        // PKCS#1: version, a modulus of `bits` bits, an exponent.
        let pkcs1 = |bits: usize| {
            let mut n = vec![0x00, 0xc5];
            n.extend(vec![0x5c; bits / 8 - 1]);
            wrap(0x30, &[int(&[0]), int(&n), int(&[1, 0, 1])].concat())
        };
        let pkcs8 = |algorithm: Vec<u8>, key: Vec<u8>| {
            wrap(
                0x30,
                &[int(&[0]), wrap(0x30, &algorithm), wrap(0x04, &key)].concat(),
            )
        };
        const RSA: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01];
        const PSS: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0a];
        const EC: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01];
        const SECP256K1: &[u8] = &[0x2b, 0x81, 0x04, 0x00, 0x0a];
        let sec1 = wrap(
            0x30,
            &[int(&[1]), wrap(0x04, &[7; 32]), wrap(0xa0, &oid(SECP256K1))].concat(),
        );
        let cases = [
            ("RSA PRIVATE KEY", pkcs1(1024), "RSA, 1024 bits"),
            (
                "PRIVATE KEY",
                pkcs8([oid(RSA), vec![0x05, 0x00]].concat(), pkcs1(1024)),
                "RSA, 1024 bits",
            ),
            (
                "PRIVATE KEY",
                pkcs8(oid(PSS), pkcs1(2048)),
                "RSA-PSS (an RSA key restricted to PSS), 2048 bits",
            ),
            (
                "PRIVATE KEY",
                pkcs8([oid(EC), oid(SECP256K1)].concat(), vec![0x30, 0x00]),
                "ECDSA on secp256k1",
            ),
            ("EC PRIVATE KEY", sec1, "ECDSA on secp256k1"),
            (
                "PRIVATE KEY",
                pkcs8(oid(&[0x2a, 0x86, 0x48, 0xce, 0x38, 0x04, 0x01]), int(&[5])),
                "DSA",
            ),
            (
                "PRIVATE KEY",
                pkcs8(oid(&[0x2b, 0x65, 0x71]), wrap(0x04, &[9; 57])),
                "Ed448",
            ),
        ];
        for (label, der, kind) in cases {
            let (dir, cert, key, _) = pair_files("kind");
            std::fs::write(&key, pem(label, &der)).unwrap();
            let e = load_certified_key(&cert, &key).unwrap_err();
            std::fs::remove_dir_all(&dir).unwrap();
            assert_eq!(e.cert, None, "{e:?}");
            assert_eq!(
                e.key.as_deref(),
                Some(
                    format!(
                        "{}: the private key is {kind}, which wsgate cannot use: keys must be \
                         RSA of 2048 to 8192 bits, ECDSA on P-256, P-384 or P-521, or Ed25519",
                        key.display()
                    )
                    .as_str()
                ),
                "{kind}"
            );
        }
    }

    /// A PEM file cut short is said to be, in words (it was rustls's Debug form, the END
    /// marker as decimal bytes); a UTF-8 byte order mark before the PEM text is no obstacle
    /// (OpenSSL reads such a file; it was "no CERTIFICATE block"); and a DER file is named as
    /// one, with the command that converts it.
    #[test]
    fn pem_file_problems_are_said_in_words() {
        let (dir, cert, key, c) = pair_files("pem");
        let whole = c.pem();
        std::fs::write(&cert, &whole[..whole.len() / 2]).unwrap();
        let e = load_certified_key(&cert, &key).unwrap_err();
        assert_eq!(
            e.cert,
            Some(format!(
                "{}: a PEM block has no \"-----END CERTIFICATE-----\" line: the file is cut \
                 short (a truncated copy, or a file still being written)",
                cert.display()
            ))
        );

        std::fs::write(&cert, format!("\u{feff}{whole}")).unwrap();
        let key_text = std::fs::read_to_string(&key).unwrap();
        std::fs::write(&key, format!("\u{feff}{key_text}")).unwrap();
        load_certified_key(&cert, &key).expect("PEM files with a byte order mark");

        std::fs::write(&cert, c.der()).unwrap();
        let e = load_certified_key(&cert, &key).unwrap_err();
        assert_eq!(
            e.cert,
            Some(format!(
                "{0}: the file is DER (binary), not PEM (text with -----BEGIN lines): convert \
                 it with `openssl x509 -inform der -in {0} -out {0}.pem`",
                cert.display()
            ))
        );
        std::fs::write(&cert, &whole).unwrap();
        let der = PrivateKeyDer::from_pem_slice(key_text.as_bytes()).unwrap();
        std::fs::write(&key, der.secret_der()).unwrap();
        let e = load_certified_key(&cert, &key).unwrap_err();
        std::fs::remove_dir_all(&dir).unwrap();
        let m = e.key.expect("the key's fault");
        assert!(
            m.contains("the file is DER (binary), not PEM")
                && m.contains("openssl pkey -inform der"),
            "{m}"
        );
    }

    fn utf8(s: &str) -> rcgen::DnValue {
        rcgen::DnValue::Utf8String(s.to_string())
    }

    /// RFC 4514 §2.4: a value's own separators are escaped, so a CN cannot pass for other
    /// attributes: a CN of `alice, OU=Admins` is not an `OU=Admins` of the CA's.
    #[test]
    fn subject_values_are_escaped_as_rfc_4514_asks() {
        use rcgen::DnType::{CommonName, OrganizationName, OrganizationalUnitName};
        let real = subject(&[
            (CommonName, utf8("alice")),
            (OrganizationalUnitName, utf8("Admins")),
            (OrganizationName, utf8("Example")),
        ]);
        let forged = subject(&[
            (CommonName, utf8("alice, OU=Admins")),
            (OrganizationName, utf8("Example")),
        ]);
        assert_eq!(real, "CN=alice, OU=Admins, O=Example");
        assert_eq!(forged, "CN=alice\\, OU=Admins, O=Example");
        for (value, text) in [
            (" alice ", "CN=\\ alice\\ "),
            ("#1", "CN=\\#1"),
            ("a+b;c<d>e\"f\\g", "CN=a\\+b\\;c\\<d\\>e\\\"f\\\\g"),
            ("a\r\nb\0", "CN=a\\0D\\0Ab\\00"),
            ("Zoë", "CN=Zoë"),
        ] {
            assert_eq!(subject(&[(CommonName, utf8(value))]), text, "{value:?}");
        }
        let bmp = rcgen::DnValue::BmpString("Zoë".try_into().unwrap());
        assert_eq!(subject(&[(CommonName, bmp)]), "CN=Zoë");
        assert_eq!(subject(&[]), "");
    }

    /// A value that is no string is `#` and its DER (RFC 4514 §2.4): the whole identifier
    /// octet, class and constructed bit included (a SEQUENCE was written `#10...`). (Found
    /// by review.)
    #[test]
    fn a_value_that_is_no_string_is_its_der() {
        use x509_parser::prelude::FromDer;
        // Name ::= SEQUENCE { SET { SEQUENCE { OID 2.5.4.3 (CN), SEQUENCE { INTEGER 1 } } } }
        let der = [
            0x30, 0x0e, 0x31, 0x0c, 0x30, 0x0a, 0x06, 0x03, 0x55, 0x04, 0x03, 0x30, 0x03, 0x02,
            0x01, 0x01,
        ];
        let (_, name) = x509_parser::x509::X509Name::from_der(&der).unwrap();
        assert_eq!(subject_text(&name), "CN=#3003020101");
    }
}
