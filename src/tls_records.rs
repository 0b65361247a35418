//! TLS 1.3's record layer (RFC 8446 §5), for a connection whose handshake rustls has done.
//!
//! Why not rustls's own: an established rustls connection holds about 2.5 KiB per session
//! (a 1.2 KiB connection struct, its key schedule, its record layer's AEAD contexts), more
//! than everything else an idle `wss://` session holds together. What TLS 1.3 needs once
//! the handshake is over is small: two traffic keys, two sequence numbers, and the two
//! traffic secrets a key update derives the next keys from. rustls hands the keys over
//! (`dangerous_into_kernel_connection`, made for kernel TLS), and this file does the rest:
//! sealing and opening records, the peer's key updates, its alerts and its `close_notify`,
//! our own key updates at a key's record limit, and our alerts.
//!
//! The traffic secrets: rustls's [`KernelConnection`] keeps them, with the rest of its key
//! schedule and a QUIC state no TCP connection uses (over 800 bytes). Either end takes them
//! instead as rustls logs them during the handshake ([`SecretCapture`], its `KeyLog` hook,
//! which logs nothing anywhere), checks that they derive exactly the keys rustls handed
//! over, and derives the next ones itself (RFC 8446 §7.2, checked against rustls in the
//! tests); it keeps rustls's schedule if the check fails.
//!
//! A client (a `wss://` backend leg) also keeps rustls's [`KernelConnection`], but only until
//! the server's first application data: the session tickets a server sends after its
//! handshake come ahead of that, and rustls takes them into its session store, so that the
//! next connection can resume. A ticket that comes later is checked for its form and dropped
//! (RFC 8446 §4.6.1 lets a client use a ticket or not). rustls is not asked to read anything
//! after the handshake: it could not hand a connection over in the middle of a handshake
//! message split over records, or with the answer to a key update still queued inside it.
//!
//! A quiet connection keeps its keys as bytes only (a key ready for AES-GCM is a context of
//! more than half a kilobyte per direction in aws-lc): [`Records::forget_keys`] drops the
//! contexts while its session hibernates, and the next record rebuilds them, which costs
//! about what sealing one small record does.
//!
//! What is checked on input, as rustls checks it after a handshake: only protected records
//! (type 23, at most 2^14 + 256 bytes); a record that fails to open is `bad_record_mac`; an
//! inner plaintext over 2^14 + 1 bytes is `record_overflow`; an empty inner plaintext, a
//! handshake message other than the side's own post-handshake ones (known by its header,
//! before any of its body is kept: `admit`), a zero-length handshake fragment, handshake
//! data interleaved with other content or a key update not at a record's end is
//! `unexpected_message`; a malformed alert or handshake message is `decode_error`; a
//! warning alert other than `user_canceled` is `decode_error`, and more than four of those
//! is an error; more than 32 key updates without application data between them, or more
//! than 32 empty records in a row, is an error (BoringSSL's and rustls's bounds on a peer
//! that makes us work for nothing). A peer's requests for a key update of ours are answered
//! once, ahead of our next record, however many came before it (as rustls does): answers
//! cannot pile up in memory, and none follows our `close_notify`.

use std::io;

use std::cell::RefCell;

use aws_lc_rs::aead::{self, Aad, LessSafeKey, Nonce, UnboundKey};
use aws_lc_rs::hkdf;
use rustls::client::ClientConnectionData;
use rustls::kernel::KernelConnection;
use rustls::server::ServerConnectionData;
use rustls::{CipherSuite, ConnectionTrafficSecrets, ExtractedSecrets, SupportedCipherSuite};
use zeroize::Zeroize;

/// The most plaintext in one record (RFC 8446 §5.1).
pub const MAX_PLAINTEXT: usize = 16 * 1024;
/// The most ciphertext in one record (§5.2).
const MAX_CIPHERTEXT: usize = MAX_PLAINTEXT + 256;
/// Record header: type, legacy version, length.
const HEADER: usize = 5;
/// AEAD tag of every suite TLS 1.3 has.
const TAG: usize = 16;
/// A record's overhead beyond its plaintext: header, inner content type, tag.
pub const OVERHEAD: usize = HEADER + 1 + TAG;
/// The largest post-handshake message body taken: rustls's own cap on a handshake message
/// (2^16 - 1 bytes), so that a ticket is taken or refused alike before and after the move.
const MAX_HANDSHAKE_MESSAGE: usize = 0xffff;
/// Key updates a peer may send without application data between them.
const KEY_UPDATES_ALLOWED: u8 = 32;
/// `user_canceled` warnings a peer may send.
const WARNINGS_ALLOWED: u8 = 4;
/// Empty records a peer may send in a row (rustls's and BoringSSL's bound).
const EMPTY_RECORDS_ALLOWED: u8 = 32;

const CONTENT_ALERT: u8 = 21;
const CONTENT_HANDSHAKE: u8 = 22;
const CONTENT_APPLICATION_DATA: u8 = 23;

const HANDSHAKE_NEW_SESSION_TICKET: u8 = 4;
const HANDSHAKE_KEY_UPDATE: u8 = 24;

const ALERT_WARNING: u8 = 1;
const ALERT_FATAL: u8 = 2;

/// The alerts this layer sends or acts on (RFC 8446 §6).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Alert {
    CloseNotify = 0,
    UnexpectedMessage = 10,
    BadRecordMac = 20,
    RecordOverflow = 22,
    IllegalParameter = 47,
    DecodeError = 50,
    InternalError = 80,
    UserCanceled = 90,
}

/// Whether a cipher suite is one this layer can carry: every TLS 1.3 suite rustls offers
/// (checked before rustls gives its connection up, which cannot be undone).
pub fn supported(suite: SupportedCipherSuite) -> bool {
    matches!(
        suite.suite(),
        CipherSuite::TLS13_AES_128_GCM_SHA256
            | CipherSuite::TLS13_AES_256_GCM_SHA384
            | CipherSuite::TLS13_CHACHA20_POLY1305_SHA256
    )
}

/// What differs between the two ends.
pub trait Side: Sized {
    /// This end is the server: its traffic secret is the server's.
    const SERVER: bool;
    /// A `NewSessionTicket` from the peer: a client that still has rustls's
    /// [`KernelConnection`] gives it to rustls's session store, one that has let it go checks
    /// its form and drops it (see the module's doc); a server never gets one (Err: the alert
    /// to send).
    fn new_session_ticket(schedule: &mut Schedule<Self>, body: &[u8]) -> Result<(), Alert>;
}

impl Side for ServerConnectionData {
    const SERVER: bool = true;
    fn new_session_ticket(_: &mut Schedule<Self>, _: &[u8]) -> Result<(), Alert> {
        Err(Alert::UnexpectedMessage)
    }
}

impl Side for ClientConnectionData {
    const SERVER: bool = false;
    fn new_session_ticket(schedule: &mut Schedule<Self>, body: &[u8]) -> Result<(), Alert> {
        match schedule {
            Schedule::Rustls(kernel)
            | Schedule::Own {
                tickets: Some(kernel),
                ..
            } => kernel
                .handle_new_session_ticket(body)
                .map_err(|_| Alert::DecodeError),
            Schedule::Own { tickets: None, .. } => ticket_is_well_formed(body)
                .then_some(())
                .ok_or(Alert::DecodeError),
        }
    }
}

/// Whether the peer may send a post-handshake message of type `typ` and `len` bytes, judged
/// by its header alone, before any of its body is kept: a message this side never takes is
/// refused at once rather than after the peer has sent (and we have held) up to 64 KiB of
/// it. A client's peer (a server) may send session tickets, as long as rustls takes them,
/// and key updates; a server's peer (a client) only key updates, so what a client can make
/// a server hold for a message split over records is its 4-byte header. A message over
/// rustls's cap is `decode_error` whatever its type, as rustls sends it.
fn admit<D: Side>(typ: u8, len: usize) -> Result<(), (Alert, &'static str)> {
    match typ {
        _ if len > MAX_HANDSHAKE_MESSAGE => {
            Err((Alert::DecodeError, "TLS handshake message too large"))
        }
        HANDSHAKE_KEY_UPDATE if len == 1 => Ok(()),
        HANDSHAKE_KEY_UPDATE => Err((Alert::DecodeError, "malformed TLS key update")),
        HANDSHAKE_NEW_SESSION_TICKET if !D::SERVER => Ok(()),
        _ => Err((Alert::UnexpectedMessage, "unexpected TLS handshake message")),
    }
}

/// `body` is a whole `NewSessionTicket` (RFC 8446 §4.6.1): lifetime, age add, a nonce of
/// 0–255 bytes, a ticket of 1–65535, extensions (each type and length, within their 0–65534
/// bytes), and nothing after them.
fn ticket_is_well_formed(body: &[u8]) -> bool {
    fn take<'a>(rest: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
        let (head, tail) = rest.split_at_checked(n)?;
        *rest = tail;
        Some(head)
    }
    fn vec16<'a>(rest: &mut &'a [u8]) -> Option<&'a [u8]> {
        let len = take(rest, 2)?;
        take(rest, usize::from(u16::from_be_bytes([len[0], len[1]])))
    }
    let parsed = (|| {
        let mut rest = body;
        take(&mut rest, 8)?;
        let nonce = take(&mut rest, 1)?[0];
        take(&mut rest, usize::from(nonce))?;
        if vec16(&mut rest)?.is_empty() {
            return None;
        }
        let mut extensions = vec16(&mut rest)?;
        if extensions.len() > 0xfffe {
            return None;
        }
        while !extensions.is_empty() {
            take(&mut extensions, 2)?;
            vec16(&mut extensions)?;
        }
        rest.is_empty().then_some(())
    })();
    parsed.is_some()
}

/// Secret bytes (a traffic secret, a key), zeroed when dropped.
pub struct SecretBytes {
    buf: [u8; 48],
    len: u8,
}

impl SecretBytes {
    fn new(bytes: &[u8]) -> Option<SecretBytes> {
        let mut buf = [0u8; 48];
        buf.get_mut(..bytes.len())?.copy_from_slice(bytes);
        Some(SecretBytes {
            buf,
            len: bytes.len() as u8,
        })
    }

    fn as_slice(&self) -> &[u8] {
        &self.buf[..usize::from(self.len)]
    }
}

impl Drop for SecretBytes {
    fn drop(&mut self) {
        self.buf.zeroize();
    }
}

/// The two application traffic secrets rustls logs during a TLS 1.3 handshake (its
/// [`rustls::KeyLog`] hook, see [`SecretCapture`]): what key updates derive the next keys
/// from, so that a server need not keep rustls's [`KernelConnection`] (over 800 bytes with
/// its key schedule) for them.
#[derive(Default)]
pub struct Captured {
    client: Option<SecretBytes>,
    server: Option<SecretBytes>,
}

thread_local! {
    /// Where [`SecretCapture`] puts what rustls logs within [`capturing`].
    static CAPTURE: RefCell<Option<Captured>> = const { RefCell::new(None) };
}

/// Runs `f` (a step of one connection's handshake), keeping the traffic secrets rustls logs
/// meanwhile in `captured`. rustls logs them from within its processing, on the thread that
/// runs `f`, so only this connection's secrets are caught.
pub fn capturing<R>(captured: &mut Captured, f: impl FnOnce() -> R) -> R {
    /// Empties the slot however `f` ends (a panic too): nothing is left for the next caller.
    struct Taken<'a>(&'a mut Captured);
    impl Drop for Taken<'_> {
        fn drop(&mut self) {
            *self.0 = CAPTURE.with(|c| c.borrow_mut().take()).unwrap_or_default();
        }
    }
    CAPTURE.with(|c| *c.borrow_mut() = Some(std::mem::take(captured)));
    let _taken = Taken(captured);
    f()
}

/// A [`rustls::KeyLog`] that takes the application traffic secrets of the handshake being
/// processed (see [`capturing`]) and logs nothing anywhere. What it takes is checked against
/// the keys rustls hands over before it is used ([`Records::new`]): a mismatch keeps rustls's
/// key schedule instead.
#[derive(Debug)]
pub struct SecretCapture;

const CLIENT_TRAFFIC_SECRET: &str = "CLIENT_TRAFFIC_SECRET_0";
const SERVER_TRAFFIC_SECRET: &str = "SERVER_TRAFFIC_SECRET_0";

impl rustls::KeyLog for SecretCapture {
    fn will_log(&self, label: &str) -> bool {
        label == CLIENT_TRAFFIC_SECRET || label == SERVER_TRAFFIC_SECRET
    }

    fn log(&self, label: &str, _client_random: &[u8], secret: &[u8]) {
        CAPTURE.with(|c| {
            if let Some(captured) = c.borrow_mut().as_mut() {
                let slot = match label {
                    CLIENT_TRAFFIC_SECRET => &mut captured.client,
                    SERVER_TRAFFIC_SECRET => &mut captured.server,
                    _ => return,
                };
                *slot = SecretBytes::new(secret);
            }
        });
    }
}

/// Where the next keys come from at a key update.
pub enum Schedule<D> {
    /// Our own (RFC 8446 §7.2): the current traffic secret of each direction, and the
    /// suite's hash; and a client's rustls connection until the server's first application
    /// data, for the session tickets that come ahead of it (see the module's doc).
    Own {
        hash: hkdf::Algorithm,
        tx: SecretBytes,
        rx: SecretBytes,
        tickets: Option<Box<KernelConnection<D>>>,
    },
    /// rustls's, for an end whose secrets were not captured or no longer derive its keys (it
    /// also takes a client's tickets; boxed: it is large, and rare).
    Rustls(Box<KernelConnection<D>>),
}

/// HKDF-Expand-Label (RFC 8446 §7.1) with an empty context, into `out`.
fn expand_label(hash: hkdf::Algorithm, secret: &[u8], label: &[u8], out: &mut [u8]) -> bool {
    struct Len(usize);
    impl hkdf::KeyType for Len {
        fn len(&self) -> usize {
            self.0
        }
    }
    let Ok(length) = u16::try_from(out.len()) else {
        return false;
    };
    let length = length.to_be_bytes();
    let label_len = [(6 + label.len()) as u8];
    let info: [&[u8]; 5] = [&length, &label_len, b"tls13 ", label, &[0]];
    let prk = hkdf::Prk::new_less_safe(hash, secret);
    prk.expand(&info, Len(out.len()))
        .and_then(|okm| okm.fill(out))
        .is_ok()
}

/// The AEAD of a suite, and its key's length.
fn aead_of(suite: CipherSuite) -> Option<&'static aead::Algorithm> {
    Some(match suite {
        CipherSuite::TLS13_AES_128_GCM_SHA256 => &aead::AES_128_GCM,
        CipherSuite::TLS13_AES_256_GCM_SHA384 => &aead::AES_256_GCM,
        CipherSuite::TLS13_CHACHA20_POLY1305_SHA256 => &aead::CHACHA20_POLY1305,
        _ => return None,
    })
}

/// One direction's key: its bytes and IV (kept), the AEAD context built from them (dropped
/// while quiet), and the next record's number.
struct Half {
    key: SecretBytes,
    iv: [u8; 12],
    ctx: Option<LessSafeKey>,
    seq: u64,
}

impl Drop for Half {
    fn drop(&mut self) {
        // The key wipes itself (`SecretBytes`), aws-lc its context; the IV is derived from
        // the same secret.
        self.iv.zeroize();
    }
}

impl Half {
    /// Its AEAD context is built by its first record.
    fn new(aead: &'static aead::Algorithm, key: &[u8], iv: &[u8], seq: u64) -> io::Result<Half> {
        let bad = || io::Error::other("TLS traffic key refused");
        if key.len() != aead.key_len() {
            return Err(bad());
        }
        Ok(Half {
            key: SecretBytes::new(key).ok_or_else(bad)?,
            iv: iv.try_into().map_err(|_| bad())?,
            ctx: None,
            seq,
        })
    }

    /// From the keys rustls derived.
    fn from_rustls(
        aead: &'static aead::Algorithm,
        (seq, secrets): (u64, ConnectionTrafficSecrets),
    ) -> io::Result<Half> {
        match &secrets {
            ConnectionTrafficSecrets::Aes128Gcm { key, iv }
            | ConnectionTrafficSecrets::Aes256Gcm { key, iv }
            | ConnectionTrafficSecrets::Chacha20Poly1305 { key, iv } => {
                Half::new(aead, key.as_ref(), iv.as_ref(), seq)
            }
            _ => Err(io::Error::other("TLS cipher suite not supported")),
        }
    }

    /// From a traffic secret (RFC 8446 §7.3), at sequence number 0.
    fn from_secret(
        aead: &'static aead::Algorithm,
        hash: hkdf::Algorithm,
        secret: &SecretBytes,
    ) -> io::Result<Half> {
        let mut key = [0u8; 32];
        let key = &mut key[..aead.key_len()];
        let mut iv = [0u8; 12];
        if !expand_label(hash, secret.as_slice(), b"key", key)
            || !expand_label(hash, secret.as_slice(), b"iv", &mut iv)
        {
            return Err(io::Error::other("TLS key derivation failed"));
        }
        let half = Half::new(aead, key, &iv, 0);
        key.zeroize();
        iv.zeroize();
        half
    }

    /// The AEAD context, built from the key's bytes if it was dropped.
    fn ctx(&mut self, aead: &'static aead::Algorithm) -> io::Result<&LessSafeKey> {
        if self.ctx.is_none() {
            let unbound = UnboundKey::new(aead, self.key.as_slice())
                .map_err(|_| io::Error::other("TLS traffic key refused"))?;
            self.ctx = Some(LessSafeKey::new(unbound));
        }
        Ok(self.ctx.as_ref().expect("just built"))
    }

    /// This record's nonce (the IV with the sequence number mixed into its end, §5.3), and
    /// the number moved on. Err once the numbers run out (2^64 records: a key update comes
    /// long before, at the suite's limit).
    fn next_nonce(&mut self) -> io::Result<Nonce> {
        let mut nonce = self.iv;
        for (n, s) in nonce[4..].iter_mut().zip(self.seq.to_be_bytes()) {
            *n ^= s;
        }
        self.seq = self
            .seq
            .checked_add(1)
            .ok_or_else(|| io::Error::other("TLS record sequence exhausted"))?;
        Ok(Nonce::assume_unique_for_key(nonce))
    }

    /// Same key and IV (the check of captured secrets).
    fn same_key(&self, other: &Half) -> bool {
        self.key.as_slice() == other.key.as_slice() && self.iv == other.iv
    }
}

/// The record layer of one TLS 1.3 connection (see the module's doc).
pub struct Records<D> {
    aead: &'static aead::Algorithm,
    schedule: Schedule<D>,
    tx: Half,
    rx: Half,
    /// Records one key may seal (the suite's confidentiality limit): the next one re-keys.
    tx_limit: u64,
    /// A post-handshake message split over records.
    handshake: Vec<u8>,
    key_updates_left: u8,
    warnings_left: u8,
    /// Empty records in a row the peer may still send.
    empty_left: u8,
    /// The peer asked for a key update of ours: it goes ahead of our next record (several
    /// asks before it are one answer, as with rustls, so a peer cannot pile answers up).
    reply_due: bool,
    /// The peer's `close_notify` came: nothing after it is read.
    peer_closed: bool,
    /// An error ended the connection: nothing more is read or written.
    failed: bool,
    /// Our `close_notify` went out: nothing more is sent, a fatal alert included (RFC 8446
    /// §6.1), though the peer's last records may still be read.
    sent_close: bool,
}

/// What [`Records::open`] made of some input.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Opened {
    /// Bytes of whole records taken from the front of the input (all of it after a
    /// `close_notify`: what follows one is not read).
    pub consumed: usize,
    /// The peer's `close_notify` came.
    pub closed: bool,
}

impl<D: Side> Records<D> {
    /// Takes over from rustls: the keys and sequence numbers it extracted, and what is left of
    /// the connection. An end whose traffic secrets were `captured` during the handshake, and
    /// which derive exactly the keys rustls extracted, uses its own key schedule (a client
    /// keeps rustls's connection for its tickets until the server's first data); otherwise
    /// rustls's is kept.
    pub fn new(
        secrets: ExtractedSecrets,
        kernel: KernelConnection<D>,
        captured: Captured,
    ) -> io::Result<Self> {
        let suite = kernel.negotiated_cipher_suite();
        let (Some(aead), Some(tls13)) = (aead_of(suite.suite()), suite.tls13()) else {
            return Err(io::Error::other("TLS cipher suite not supported"));
        };
        let tx = Half::from_rustls(aead, secrets.tx)?;
        let rx = Half::from_rustls(aead, secrets.rx)?;
        let hash = match suite.suite() {
            CipherSuite::TLS13_AES_256_GCM_SHA384 => hkdf::HKDF_SHA384,
            _ => hkdf::HKDF_SHA256,
        };
        let (ours, theirs) = if D::SERVER {
            (captured.server, captured.client)
        } else {
            (captured.client, captured.server)
        };
        let own = match (ours, theirs) {
            (Some(ours), Some(theirs)) => {
                let derives = |secret: &SecretBytes, half: &Half| {
                    Half::from_secret(aead, hash, secret).is_ok_and(|h| h.same_key(half))
                };
                (derives(&ours, &tx) && derives(&theirs, &rx)).then_some((ours, theirs))
            }
            _ => None,
        };
        let schedule = match own {
            Some((tx, rx)) => Schedule::Own {
                hash,
                tx,
                rx,
                tickets: (!D::SERVER).then(|| Box::new(kernel)),
            },
            None => Schedule::Rustls(Box::new(kernel)),
        };
        let limit = tls13.common.confidentiality_limit;
        Ok(Records::fresh(aead, schedule, (tx, rx), limit))
    }

    /// A layer on these keys, nothing received or sent on it yet.
    fn fresh(
        aead: &'static aead::Algorithm,
        schedule: Schedule<D>,
        (tx, rx): (Half, Half),
        tx_limit: u64,
    ) -> Records<D> {
        Records {
            aead,
            schedule,
            tx,
            rx,
            tx_limit,
            handshake: Vec::new(),
            key_updates_left: KEY_UPDATES_ALLOWED,
            warnings_left: WARNINGS_ALLOWED,
            empty_left: EMPTY_RECORDS_ALLOWED,
            reply_due: false,
            peer_closed: false,
            failed: false,
            sent_close: false,
        }
    }

    /// The next key of one direction: from our own schedule, or rustls's.
    fn next_key(&mut self, tx: bool) -> io::Result<Half> {
        match &mut self.schedule {
            Schedule::Own {
                hash,
                tx: tx_secret,
                rx: rx_secret,
                ..
            } => {
                let secret = if tx { tx_secret } else { rx_secret };
                let mut next = [0u8; 48];
                let next = &mut next[..secret.as_slice().len()];
                if !expand_label(*hash, secret.as_slice(), b"traffic upd", next) {
                    return Err(io::Error::other("TLS key derivation failed"));
                }
                *secret = SecretBytes::new(next).expect("same length");
                next.zeroize();
                Half::from_secret(self.aead, *hash, secret)
            }
            Schedule::Rustls(kernel) => {
                let next = if tx {
                    kernel.update_tx_secret()
                } else {
                    kernel.update_rx_secret()
                };
                Half::from_rustls(self.aead, next.map_err(io::Error::other)?)
            }
        }
    }

    /// Key updates derive from our own schedule, not rustls's.
    pub fn own_schedule(&self) -> bool {
        matches!(self.schedule, Schedule::Own { .. })
    }

    /// A client still holds rustls's connection for the server's tickets.
    #[cfg(test)]
    pub(crate) fn keeps_tickets(&self) -> bool {
        matches!(
            self.schedule,
            Schedule::Own {
                tickets: Some(_),
                ..
            }
        )
    }

    /// Drops both AEAD contexts (the connection is quiet); the next record rebuilds them.
    pub fn forget_keys(&mut self) {
        self.tx.ctx = None;
        self.rx.ctx = None;
    }

    /// Opens the whole records at the front of `input`, in place: application data goes to
    /// `plain`, in order. A key update the peer asks for is answered ahead of our next record
    /// (`seal`, `close_notify`), as RFC 8446 §4.6.3 requires: before any more application
    /// data. A partial record at the end is left for more input.
    ///
    /// On a protocol error, the fatal alert for the peer is appended to `out` (sealed) before
    /// the error is returned as `InvalidData`; an alert from the peer is an error too
    /// (`ConnectionAborted`), with nothing sent back.
    pub fn open(
        &mut self,
        input: &mut [u8],
        mut plain: impl FnMut(&[u8]),
        out: &mut Vec<u8>,
    ) -> io::Result<Opened> {
        let mut opened = Opened::default();
        if self.peer_closed {
            opened.consumed = input.len();
            return Ok(opened);
        }
        self.check_usable()?;
        while let Some(&[typ, _, _, hi, lo]) = input.get(opened.consumed..opened.consumed + HEADER)
        {
            let len = usize::from(u16::from_be_bytes([hi, lo]));
            if typ != CONTENT_APPLICATION_DATA {
                return Err(self.fail(Alert::UnexpectedMessage, "unprotected TLS record", out));
            }
            if len > MAX_CIPHERTEXT {
                return Err(self.fail(Alert::RecordOverflow, "TLS record too large", out));
            }
            let start = opened.consumed;
            let end = start + HEADER + len;
            if end > input.len() {
                break;
            }
            opened.consumed = end;
            let (header, body) = input[start..end].split_at_mut(HEADER);
            let header = [header[0], header[1], header[2], header[3], header[4]];
            let Ok(nonce) = self.rx.next_nonce() else {
                return Err(self.fail(Alert::InternalError, "TLS read sequence exhausted", out));
            };
            let key = match self.rx.ctx(self.aead) {
                Ok(key) => key,
                Err(e) => return Err(self.fail_with(Alert::InternalError, e, out)),
            };
            let Ok(inner) = key.open_in_place(nonce, Aad::from(header), body) else {
                return Err(self.fail(Alert::BadRecordMac, "TLS record failed to decrypt", out));
            };
            // Content, type and padding together within 2^14 + 1 bytes (§5.4).
            if inner.len() > MAX_PLAINTEXT + 1 {
                return Err(self.fail(Alert::RecordOverflow, "TLS plaintext too large", out));
            }
            // The content type is the last byte that is not zero padding.
            let Some(at) = inner.iter().rposition(|b| *b != 0) else {
                return Err(self.fail(Alert::UnexpectedMessage, "TLS record without type", out));
            };
            let (content, typ) = (&inner[..at], inner[at]);
            if !content.is_empty() {
                self.empty_left = EMPTY_RECORDS_ALLOWED;
            } else if self.empty_left == 0 {
                return Err(self.fail(Alert::UnexpectedMessage, "too many empty TLS records", out));
            } else {
                self.empty_left -= 1;
            }
            if typ != CONTENT_HANDSHAKE && !self.handshake.is_empty() {
                return Err(self.fail(
                    Alert::UnexpectedMessage,
                    "TLS handshake message interrupted",
                    out,
                ));
            }
            match typ {
                CONTENT_APPLICATION_DATA if content.is_empty() => {}
                CONTENT_APPLICATION_DATA => {
                    self.key_updates_left = KEY_UPDATES_ALLOWED;
                    if let Schedule::Own { tickets, .. } = &mut self.schedule {
                        // The server's tickets came ahead of its first data, if at all.
                        *tickets = None;
                    }
                    plain(content);
                }
                CONTENT_ALERT => {
                    if self.alert(content, out)? {
                        self.peer_closed = true;
                        opened.closed = true;
                        opened.consumed = input.len();
                        return Ok(opened);
                    }
                }
                CONTENT_HANDSHAKE => self.handshake_data(content, out)?,
                _ => {
                    return Err(self.fail(
                        Alert::UnexpectedMessage,
                        "unexpected TLS content type",
                        out,
                    ));
                }
            }
        }
        Ok(opened)
    }

    /// Seals `plain` into records in `into` (which must hold `plain` and [`OVERHEAD`] per
    /// 16 KiB of it, plus one key update's record); the bytes written. A key update goes
    /// first where one is due: the answer to the peer's request, or our own at the key's
    /// record limit.
    pub fn seal(&mut self, plain: &[u8], into: &mut [u8]) -> io::Result<usize> {
        self.check_sending()?;
        let sealed = self.seal_data(plain, into);
        if sealed.is_err() {
            self.failed = true;
        }
        sealed
    }

    fn seal_data(&mut self, plain: &[u8], into: &mut [u8]) -> io::Result<usize> {
        let mut written = self.answer_key_update(into)?;
        for chunk in plain.chunks(MAX_PLAINTEXT) {
            // The key update is the key's last record, so a key never seals more than
            // `tx_limit`: nor does a close_notify or an alert after the data, which finds at
            // most `tx_limit - 1` sealed.
            if self.tx.seq + 1 >= self.tx_limit {
                written += self.update_tx_key(false, &mut into[written..])?;
            }
            written += self.seal_record(CONTENT_APPLICATION_DATA, chunk, &mut into[written..])?;
        }
        Ok(written)
    }

    /// Appends our `close_notify` to `out` (after the answer to a key update, if one is
    /// due). Nothing is sent after it: a later request for a key update is not answered.
    pub fn close_notify(&mut self, out: &mut Vec<u8>) -> io::Result<()> {
        self.check_sending()?;
        let mut record = [0u8; HEADER + 5 + 1 + TAG];
        let closed = self.answer_key_update(&mut record).and_then(|n| {
            out.extend_from_slice(&record[..n]);
            self.append_alert(ALERT_WARNING, Alert::CloseNotify, out)
        });
        match closed {
            Ok(()) => self.sent_close = true,
            Err(_) => self.failed = true,
        }
        closed
    }

    /// The key update the peer asked for, if one is due, into the front of `into`; its
    /// length (0 if none).
    fn answer_key_update(&mut self, into: &mut [u8]) -> io::Result<usize> {
        if !self.reply_due {
            return Ok(0);
        }
        self.reply_due = false;
        self.update_tx_key(false, into)
    }

    /// Usable, and our `close_notify` not sent yet.
    fn check_sending(&self) -> io::Result<()> {
        self.check_usable()?;
        if self.sent_close {
            Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "TLS close_notify already sent",
            ))
        } else {
            Ok(())
        }
    }

    fn check_usable(&self) -> io::Result<()> {
        if self.failed {
            Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "TLS connection failed",
            ))
        } else {
            Ok(())
        }
    }

    /// One record of `typ` holding `payload`, into the front of `into`; its length. (Crate-wide
    /// for `tls_io.rs`'s tests, which make a peer send what rustls would not.)
    pub(crate) fn seal_record(
        &mut self,
        typ: u8,
        payload: &[u8],
        into: &mut [u8],
    ) -> io::Result<usize> {
        let len = payload.len() + 1 + TAG;
        let total = HEADER + len;
        if into.len() < total {
            return Err(io::Error::other("TLS output buffer too small"));
        }
        let [hi, lo] = u16::try_from(len)
            .map_err(|_| io::Error::other("TLS record too large"))?
            .to_be_bytes();
        let header = [CONTENT_APPLICATION_DATA, 0x03, 0x03, hi, lo];
        into[..HEADER].copy_from_slice(&header);
        let inner_end = HEADER + payload.len() + 1;
        into[HEADER..inner_end - 1].copy_from_slice(payload);
        into[inner_end - 1] = typ;
        let nonce = self.tx.next_nonce()?;
        let tag = self
            .tx
            .ctx(self.aead)?
            .seal_in_place_separate_tag(nonce, Aad::from(header), &mut into[HEADER..inner_end])
            .map_err(|_| io::Error::other("TLS record failed to encrypt"))?;
        into[inner_end..total].copy_from_slice(tag.as_ref());
        Ok(total)
    }

    fn append_alert(&mut self, level: u8, alert: Alert, out: &mut Vec<u8>) -> io::Result<()> {
        let mut record = [0u8; HEADER + 2 + 1 + TAG];
        let n = self.seal_record(CONTENT_ALERT, &[level, alert as u8], &mut record)?;
        out.extend_from_slice(&record[..n]);
        Ok(())
    }

    /// Sends a key update (sealed with the key it replaces) into the front of `into`, then
    /// moves to the next key; its length.
    fn update_tx_key(&mut self, request_update: bool, into: &mut [u8]) -> io::Result<usize> {
        let message = [HANDSHAKE_KEY_UPDATE, 0, 0, 1, u8::from(request_update)];
        let n = self.seal_record(CONTENT_HANDSHAKE, &message, into)?;
        self.tx = self.next_key(true)?;
        Ok(n)
    }

    /// The connection ends with `alert` (sent, if it can be) and `why`.
    fn fail(&mut self, alert: Alert, why: &'static str, out: &mut Vec<u8>) -> io::Error {
        self.fail_with(alert, io::Error::new(io::ErrorKind::InvalidData, why), out)
    }

    fn fail_with(&mut self, alert: Alert, e: io::Error, out: &mut Vec<u8>) -> io::Error {
        if !self.failed && !self.sent_close {
            let _ = self.append_alert(ALERT_FATAL, alert, out);
            self.failed = true;
        }
        e
    }

    /// An alert from the peer: Ok(true) for its `close_notify`, Ok(false) for a
    /// `user_canceled` warning (ignored), an error otherwise.
    fn alert(&mut self, content: &[u8], out: &mut Vec<u8>) -> io::Result<bool> {
        let &[level, description] = content else {
            return Err(self.fail(Alert::DecodeError, "malformed TLS alert", out));
        };
        if level != ALERT_WARNING && level != ALERT_FATAL {
            return Err(self.fail(Alert::IllegalParameter, "unknown TLS alert level", out));
        }
        if description == Alert::CloseNotify as u8 {
            return Ok(true);
        }
        if level == ALERT_WARNING {
            if description != Alert::UserCanceled as u8 {
                return Err(self.fail(Alert::DecodeError, "TLS 1.3 warning alert", out));
            }
            if self.warnings_left == 0 {
                return Err(self.fail(Alert::DecodeError, "too many TLS warning alerts", out));
            }
            self.warnings_left -= 1;
            return Ok(false);
        }
        self.failed = true;
        // rustls's own error, as its handshake reports an alert received there: a reader
        // tells the alert (and which one) by type, not by text. A `wss://` backend's refusal
        // of wsgate's client certificate comes here, on the first read after a TLS 1.3
        // handshake, which ended for the client when it sent its Finished.
        Err(io::Error::new(
            io::ErrorKind::ConnectionAborted,
            rustls::Error::AlertReceived(rustls::AlertDescription::from(description)),
        ))
    }

    /// Handshake content: whole messages are handled, a split one waits for the rest.
    fn handshake_data(&mut self, content: &[u8], out: &mut Vec<u8>) -> io::Result<()> {
        if content.is_empty() {
            return Err(self.fail(
                Alert::UnexpectedMessage,
                "empty TLS handshake fragment",
                out,
            ));
        }
        self.handshake.extend_from_slice(content);
        let mut buf = std::mem::take(&mut self.handshake);
        let mut at = 0;
        let result = loop {
            let Some(&[typ, a, b, c]) = buf.get(at..at + 4) else {
                break Ok(());
            };
            let len = u32::from_be_bytes([0, a, b, c]) as usize;
            if let Err((alert, why)) = admit::<D>(typ, len) {
                break Err(self.fail(alert, why, out));
            }
            let Some(body) = buf.get(at + 4..at + 4 + len) else {
                break Ok(());
            };
            at += 4 + len;
            let last = at == buf.len();
            let handled = match typ {
                HANDSHAKE_KEY_UPDATE => self.key_update(body, last, out),
                // A session ticket to a client: `admit` let nothing else through.
                _ => D::new_session_ticket(&mut self.schedule, body)
                    .map_err(|alert| self.fail(alert, "TLS session ticket refused", out)),
            };
            if let Err(e) = handled {
                break Err(e);
            }
        };
        result?;
        buf.drain(..at);
        if !buf.is_empty() {
            self.handshake = buf;
        }
        Ok(())
    }

    /// The peer's key update (`last`: it ends its record, as a key change must, §5.1): its
    /// next key for what follows; and if it asks for ours, ours is due ahead of our next
    /// record (§4.6.3).
    fn key_update(&mut self, body: &[u8], last: bool, out: &mut Vec<u8>) -> io::Result<()> {
        let &[request] = body else {
            return Err(self.fail(Alert::DecodeError, "malformed TLS key update", out));
        };
        if request > 1 {
            return Err(self.fail(Alert::IllegalParameter, "malformed TLS key update", out));
        }
        if !last {
            return Err(self.fail(
                Alert::UnexpectedMessage,
                "TLS key update not at a record's end",
                out,
            ));
        }
        if self.key_updates_left == 0 {
            return Err(self.fail(Alert::UnexpectedMessage, "too many TLS key updates", out));
        }
        self.key_updates_left -= 1;
        if request == 1 {
            self.reply_due = true;
        }
        match self.next_key(false) {
            Ok(next) => {
                self.rx = next;
                Ok(())
            }
            Err(e) => Err(self.fail_with(Alert::InternalError, e, out)),
        }
    }
}

impl<D: Side> Records<D> {
    /// A record layer on given traffic secrets (AES-128-GCM, our own schedule), without a
    /// handshake: the fuzz property's, which needs thousands of them.
    fn on_secrets(ours: &[u8; 32], theirs: &[u8; 32]) -> Records<D> {
        let aead = &aead::AES_128_GCM;
        let hash = hkdf::HKDF_SHA256;
        let secret = |s: &[u8; 32]| SecretBytes::new(s).expect("32 bytes");
        let half = |s: &[u8; 32]| Half::from_secret(aead, hash, &secret(s)).expect("derives");
        let schedule = Schedule::Own {
            hash,
            tx: secret(ours),
            rx: secret(theirs),
            tickets: None,
        };
        Records::fresh(aead, schedule, (half(ours), half(theirs)), 1 << 24)
    }
}

/// The fuzz property (shared by the cargo-fuzz target and the regression replay): a server's
/// record layer, then a client's, reads what a peer with the right keys wrote, as steered by
/// the input, in pieces (a client on its own schedule takes session tickets, and drops
/// them, where a server refuses them). The input is a list of steps `[op, len, len bytes]`:
/// op % 7 picks one: the peer seals application data (0), handshake content (1: key
/// updates, tickets, fragments of either, garbage), alert content (2), content of the type
/// the first byte names (3; not application data, nor 0), the peer updates its key (4,
/// asking for ours if the first byte is odd), raw bytes (5), or a place to cut the input
/// (6).
///
/// The layer must not panic; it must deliver exactly a prefix of the application data sent,
/// in order; a read after an error must fail and send nothing more; and a read must consume
/// only whole records from the front of its input.
#[doc(hidden)]
pub fn fuzz_records(data: &[u8]) {
    for (sent, got) in [
        run_steps::<ServerConnectionData, ClientConnectionData>(data),
        run_steps::<ClientConnectionData, ServerConnectionData>(data),
    ] {
        assert!(
            sent.starts_with(&got),
            "delivered something not sent, or out of order"
        );
    }
}

/// [`fuzz_records`]'s run, a `D` end reading what its peer (a `P` end) wrote: the
/// application data sent, and what was delivered.
fn run_steps<D: Side, P: Side>(data: &[u8]) -> (Vec<u8>, Vec<u8>) {
    let (reader_secret, peer_secret) = ([2u8; 32], [1u8; 32]);
    let mut reader = Records::<D>::on_secrets(&reader_secret, &peer_secret);
    let mut peer = Records::<P>::on_secrets(&peer_secret, &reader_secret);
    let mut wire = Vec::new();
    let mut sent = Vec::new();
    let mut cuts = Vec::new();
    let mut rest = data;
    while let [op, len, tail @ ..] = rest {
        let (chunk, tail) = tail.split_at(usize::from(*len).min(tail.len()));
        rest = tail;
        let mut record = vec![0u8; chunk.len() + 2 * OVERHEAD + 8];
        let sealed = match op % 7 {
            0 => {
                sent.extend_from_slice(chunk);
                peer.seal(chunk, &mut record)
            }
            1 => peer.seal_record(CONTENT_HANDSHAKE, chunk, &mut record),
            2 => peer.seal_record(CONTENT_ALERT, chunk, &mut record),
            // Not application data (counted as sent by op 0 only), nor type 0: that is
            // padding, which makes the content's last non-zero byte the record's type.
            3 => match chunk.split_first() {
                Some((&CONTENT_APPLICATION_DATA | 0, _)) | None => continue,
                Some((&typ, content)) => peer.seal_record(typ, content, &mut record),
            },
            4 => peer.update_tx_key(chunk.first().is_some_and(|b| b % 2 == 1), &mut record),
            5 => {
                wire.extend_from_slice(chunk);
                continue;
            }
            _ => {
                cuts.push(wire.len());
                continue;
            }
        };
        let n = sealed.expect("the peer seals anything");
        wire.extend_from_slice(&record[..n]);
    }
    cuts.push(wire.len());
    let mut got = Vec::new();
    let mut pending: Vec<u8> = Vec::new();
    let mut from = 0;
    for cut in cuts {
        let cut = cut.max(from);
        pending.extend_from_slice(&wire[from..cut]);
        from = cut;
        let mut out = Vec::new();
        match reader.open(&mut pending, |p| got.extend_from_slice(p), &mut out) {
            Ok(opened) => {
                assert!(opened.consumed <= pending.len());
                pending.drain(..opened.consumed);
                // What a peer can make this end hold: one record split over reads, and
                // (a server) a handshake message's header, nothing of a body (`admit`).
                assert!(
                    pending.len() < HEADER + MAX_CIPHERTEXT,
                    "more than a record kept"
                );
                assert!(
                    !D::SERVER || reader.handshake.len() <= 4,
                    "a server kept a handshake message's body"
                );
            }
            Err(_) => {
                let mut again = Vec::new();
                let mut more = pending.clone();
                let after = reader.open(&mut more, |_| panic!("data after an error"), &mut again);
                assert!(after.is_err() && again.is_empty(), "read on after an error");
                break;
            }
        }
    }
    (sent, got)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::client::UnbufferedClientConnection;
    use rustls::crypto::CryptoProvider;
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
    use rustls::server::UnbufferedServerConnection;
    use rustls::unbuffered::{ConnectionState, UnbufferedStatus};
    use rustls::{ClientConfig, HandshakeKind, ServerConfig};
    use std::sync::Arc;

    type Server = Records<ServerConnectionData>;
    type Client = Records<ClientConnectionData>;

    /// Configs for one cipher suite, secrets extractable, tickets on (the client keeps
    /// what it is sent, so a second handshake resumes).
    fn configs(suite: CipherSuite) -> (Arc<ServerConfig>, Arc<ClientConfig>) {
        let base = crate::tls::provider();
        let provider = Arc::new(CryptoProvider {
            cipher_suites: base
                .cipher_suites
                .iter()
                .copied()
                .filter(|s| s.suite() == suite)
                .collect(),
            ..(*base).clone()
        });
        let (cert, key) = crate::tls::dev_certificate(&["localhost".into()]).unwrap();
        let cert = CertificateDer::from_pem_slice(cert.as_bytes()).unwrap();
        let key = PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap();
        let mut server = ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![cert.clone()], key)
            .unwrap();
        server.enable_secret_extraction = true;
        server.key_log = Arc::new(SecretCapture);
        let mut roots = rustls::RootCertStore::empty();
        roots.add(cert).unwrap();
        let mut client = ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        client.enable_secret_extraction = true;
        client.key_log = Arc::new(SecretCapture);
        (Arc::new(server), Arc::new(client))
    }

    /// What one step of an unbuffered connection came to.
    enum Step {
        More,
        Blocked,
        Ready,
    }

    /// Runs an unbuffered connection over `incoming` until it blocks or may send data; what
    /// it sends goes to `outgoing`. Ready: its handshake is over.
    macro_rules! drive {
        ($conn:expr, $incoming:expr, $outgoing:expr) => {{
            loop {
                let UnbufferedStatus { discard, state } = $conn.process_tls_records($incoming);
                let step = match state.unwrap() {
                    ConnectionState::EncodeTlsData(mut data) => {
                        let mut buf = vec![0u8; 64 * 1024];
                        let n = data.encode(&mut buf).unwrap();
                        $outgoing.extend_from_slice(&buf[..n]);
                        Step::More
                    }
                    ConnectionState::TransmitTlsData(data) => {
                        data.done();
                        Step::More
                    }
                    ConnectionState::BlockedHandshake => Step::Blocked,
                    ConnectionState::WriteTraffic(_) => Step::Ready,
                    other => panic!("unexpected {other:?}"),
                };
                $incoming.drain(..discard);
                match step {
                    Step::More => {}
                    Step::Blocked => break false,
                    Step::Ready => break true,
                }
            }
        }};
    }

    /// A handshake in memory, up to where both ends may send data: the two connections,
    /// the bytes in flight to the client (the server's tickets, which the client has not
    /// seen), and the traffic secrets each logged (the server's, the client's).
    fn shake(
        configs: &(Arc<ServerConfig>, Arc<ClientConfig>),
    ) -> (
        UnbufferedServerConnection,
        UnbufferedClientConnection,
        Vec<u8>,
        (Captured, Captured),
    ) {
        let name = ServerName::try_from("localhost").unwrap();
        let mut client = UnbufferedClientConnection::new(configs.1.clone(), name).unwrap();
        let mut server = UnbufferedServerConnection::new(configs.0.clone()).unwrap();
        let (mut to_server, mut to_client) = (Vec::new(), Vec::new());
        let mut client_captured = Captured::default();
        let mut client_ready = capturing(&mut client_captured, || {
            drive!(client, &mut to_client, to_server)
        });
        let mut captured = Captured::default();
        loop {
            let server_ready =
                capturing(&mut captured, || drive!(server, &mut to_server, to_client));
            if !client_ready {
                client_ready = capturing(&mut client_captured, || {
                    drive!(client, &mut to_client, to_server)
                });
            }
            if client_ready && server_ready && to_server.is_empty() {
                break;
            }
        }
        (server, client, to_client, (captured, client_captured))
    }

    /// Which end of a [`handshake`] derives its next keys itself; the other keeps rustls's
    /// schedule, so that each checks the other.
    #[derive(Clone, Copy, Debug)]
    enum Own {
        Server,
        Client,
    }

    /// [`shake`]; both ends then leave rustls, the client before it has seen the server's
    /// tickets. The bytes in flight to the client (the tickets), and how the handshake went.
    fn handshake(
        configs: &(Arc<ServerConfig>, Arc<ClientConfig>),
        own: Own,
    ) -> (Server, Client, Vec<u8>, Option<HandshakeKind>) {
        let (server, client, to_client, (server_secrets, client_secrets)) = shake(configs);
        let (server_secrets, client_secrets) = match own {
            Own::Server => (server_secrets, Captured::default()),
            Own::Client => (Captured::default(), client_secrets),
        };
        let kind = server.handshake_kind();
        let (secrets, kernel) = server.dangerous_into_kernel_connection().unwrap();
        let server = Records::new(secrets, kernel, server_secrets).unwrap();
        let (secrets, kernel) = client.dangerous_into_kernel_connection().unwrap();
        let client = Records::new(secrets, kernel, client_secrets).unwrap();
        (server, client, to_client, kind)
    }

    fn pair(suite: CipherSuite) -> (Server, Client) {
        pair_with(suite, Own::Server)
    }

    fn pair_with(suite: CipherSuite, own: Own) -> (Server, Client) {
        let (server, mut client, mut tickets, _) = handshake(&configs(suite), own);
        let opened = open_all(&mut client, &mut tickets).unwrap();
        assert!(opened.is_empty());
        (server, client)
    }

    const SUITES: [CipherSuite; 3] = [
        CipherSuite::TLS13_AES_128_GCM_SHA256,
        CipherSuite::TLS13_AES_256_GCM_SHA384,
        CipherSuite::TLS13_CHACHA20_POLY1305_SHA256,
    ];

    fn seal<D: Side>(from: &mut Records<D>, plain: &[u8]) -> Vec<u8> {
        let mut into = vec![0u8; plain.len() + (plain.len() / MAX_PLAINTEXT + 2) * 64];
        let n = from.seal(plain, &mut into).unwrap();
        into.truncate(n);
        into
    }

    /// Opens all of `wire` (whole records); the plaintext. What `to` answered stays in
    /// `wire`'s place: `wire` is replaced by `to`'s output.
    fn open_all<D: Side>(to: &mut Records<D>, wire: &mut Vec<u8>) -> io::Result<Vec<u8>> {
        let mut plain = Vec::new();
        let mut out = Vec::new();
        let opened = to.open(wire, |p| plain.extend_from_slice(p), &mut out);
        *wire = out;
        opened?;
        Ok(plain)
    }

    fn pattern(len: usize, seed: u8) -> Vec<u8> {
        (0..len)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
            .collect()
    }

    /// Every suite, both ways, sizes around the record limit: the bytes arrive; records come
    /// in at most 16 KiB of plaintext each; input split at any point is opened once whole.
    #[test]
    fn every_suite_carries_every_size_both_ways() {
        for suite in SUITES {
            let (mut server, mut client) = pair(suite);
            for len in [
                0,
                1,
                100,
                MAX_PLAINTEXT - 1,
                MAX_PLAINTEXT,
                MAX_PLAINTEXT + 1,
                70_000,
            ] {
                let data = pattern(len, len as u8);
                let mut wire = seal(&mut client, &data);
                assert_eq!(wire.len(), len + len.div_ceil(MAX_PLAINTEXT) * OVERHEAD);
                assert_eq!(open_all(&mut server, &mut wire).unwrap(), data, "{suite:?}");
                assert!(wire.is_empty(), "nothing to send back");
                let mut wire = seal(&mut server, &data);
                assert_eq!(open_all(&mut client, &mut wire).unwrap(), data, "{suite:?}");
            }
            // Split at every point of a few records.
            let data = pattern(3000, 5);
            let mut wire = Vec::new();
            for piece in data.chunks(700) {
                wire.extend(seal(&mut client, piece));
            }
            let mut got = Vec::new();
            let mut pending = Vec::new();
            for byte in wire {
                pending.push(byte);
                let mut out = Vec::new();
                let opened = server
                    .open(&mut pending, |p| got.extend_from_slice(p), &mut out)
                    .unwrap();
                pending.drain(..opened.consumed);
                assert!(out.is_empty());
            }
            assert!(pending.is_empty());
            assert_eq!(got, data);
        }
    }

    /// A client on rustls's schedule takes the server's tickets after leaving rustls: the
    /// next handshake resumes with one.
    #[test]
    fn a_client_keeps_the_tickets_it_is_sent() {
        let configs = configs(CipherSuite::TLS13_AES_128_GCM_SHA256);
        let (_, mut client, mut tickets, kind) = handshake(&configs, Own::Server);
        assert_eq!(kind, Some(HandshakeKind::Full));
        assert!(!tickets.is_empty(), "the server sent tickets");
        assert!(open_all(&mut client, &mut tickets).unwrap().is_empty());
        let (.., kind) = handshake(&configs, Own::Server);
        assert_eq!(kind, Some(HandshakeKind::Resumed));
    }

    /// A client on its own key schedule gives the tickets that come ahead of the server's
    /// first data to rustls (the next handshake resumes with one), then lets rustls's
    /// connection go: a later ticket is checked for its form and dropped, and a malformed one
    /// is a `decode_error`.
    #[test]
    fn a_client_keeps_tickets_until_the_first_data() {
        let configs = configs(CipherSuite::TLS13_AES_128_GCM_SHA256);
        let (mut server, mut client, mut tickets, _) = handshake(&configs, Own::Client);
        assert!(client.keeps_tickets() && client.own_schedule());
        assert!(!tickets.is_empty(), "the server sent tickets");
        assert!(open_all(&mut client, &mut tickets).unwrap().is_empty());
        assert!(client.keeps_tickets(), "no data yet");
        let mut wire = seal(&mut server, b"101");
        assert_eq!(open_all(&mut client, &mut wire).unwrap(), b"101");
        assert!(!client.keeps_tickets() && client.own_schedule());
        let (.., kind) = handshake(&configs, Own::Client);
        assert_eq!(kind, Some(HandshakeKind::Resumed));
        // Lifetime, age add, an empty nonce, a one-byte ticket, no extensions: dropped.
        let good = [4, 0, 0, 14, 0, 0, 0, 60, 1, 2, 3, 4, 0, 0, 1, 9, 0, 0];
        // The same with extensions cut short.
        let bad = [4, 0, 0, 16, 0, 0, 0, 60, 1, 2, 3, 4, 0, 0, 1, 9, 0, 4, 0, 1];
        let mut good = record(&mut server, CONTENT_HANDSHAKE, &good);
        let mut wire = record(&mut server, CONTENT_HANDSHAKE, &bad);
        assert!(open_all(&mut client, &mut good).unwrap().is_empty());
        assert!(good.is_empty(), "nothing answers a ticket");
        let err = open_all(&mut client, &mut wire).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{err}");
        let alert = (ALERT_FATAL, Alert::DecodeError as u8);
        assert_eq!(alert_in(&mut server, &mut wire), alert);
    }

    /// What a `NewSessionTicket` must look like to be dropped quietly.
    #[test]
    fn ticket_forms() {
        // lifetime 4, age add 4, nonce (len 1 + 1), ticket (len 2 + 3), extensions (len 2 + …).
        let ticket = |nonce: &[u8], ticket: &[u8], ext: &[u8]| {
            let mut b = vec![0, 0, 0, 60, 1, 2, 3, 4, nonce.len() as u8];
            b.extend(nonce);
            b.extend((ticket.len() as u16).to_be_bytes());
            b.extend(ticket);
            b.extend((ext.len() as u16).to_be_bytes());
            b.extend(ext);
            b
        };
        // early_data (42) with its max_early_data_size, and a type of no meaning to us.
        let ext = [0, 42, 0, 4, 0, 0, 64, 0, 0xfa, 0xfa, 0, 0];
        assert!(ticket_is_well_formed(&ticket(&[0], b"abc", &[])));
        assert!(ticket_is_well_formed(&ticket(&[], b"t", &ext)));
        assert!(
            !ticket_is_well_formed(&ticket(&[0], b"", &[])),
            "empty ticket"
        );
        assert!(
            !ticket_is_well_formed(&ticket(&[0], b"abc", &ext[..11])),
            "cut extension"
        );
        // Extensions of 2^16 - 2 bytes at most: one extension with 0xfffa bytes of data
        // fills them, one more byte is too many.
        let one = |len: usize| {
            let mut e = vec![0xfa, 0xfa];
            e.extend((len as u16).to_be_bytes());
            e.resize(4 + len, 0);
            e
        };
        assert!(ticket_is_well_formed(&ticket(&[], b"t", &one(0xfffa))));
        assert!(!ticket_is_well_formed(&ticket(&[], b"t", &one(0xfffb))));
        let mut trailing = ticket(&[0], b"abc", &[]);
        trailing.push(0);
        assert!(!ticket_is_well_formed(&trailing), "bytes after it");
        let whole = ticket(&[1, 2], b"abc", &ext);
        for cut in 0..whole.len() {
            assert!(!ticket_is_well_formed(&whole[..cut]), "cut at {cut}");
        }
    }

    /// Either end derives its next keys itself from the secrets it captured; one whose
    /// captured secrets do not derive the keys rustls handed over keeps rustls's schedule.
    #[test]
    fn who_derives_the_next_keys() {
        let (server, client) = pair(CipherSuite::TLS13_AES_128_GCM_SHA256);
        assert!(matches!(server.schedule, Schedule::Own { .. }));
        assert!(matches!(client.schedule, Schedule::Rustls(_)));
        let (server, client) = pair_with(CipherSuite::TLS13_AES_128_GCM_SHA256, Own::Client);
        assert!(matches!(server.schedule, Schedule::Rustls(_)));
        assert!(matches!(client.schedule, Schedule::Own { .. }));
        let (server, client, _, _) = shake(&configs(CipherSuite::TLS13_AES_128_GCM_SHA256));
        let wrong = || Captured {
            client: SecretBytes::new(&[7; 32]),
            server: SecretBytes::new(&[8; 32]),
        };
        let (secrets, kernel) = server.dangerous_into_kernel_connection().unwrap();
        let server = Records::new(secrets, kernel, wrong()).unwrap();
        assert!(matches!(server.schedule, Schedule::Rustls(_)));
        let (secrets, kernel) = client.dangerous_into_kernel_connection().unwrap();
        let client = Records::new(secrets, kernel, wrong()).unwrap();
        assert!(matches!(client.schedule, Schedule::Rustls(_)));
    }

    /// Known answer (RFC 8448, "Simple 1-RTT Handshake"): the server's first application
    /// traffic secret derives its key and IV.
    #[test]
    fn key_derivation_matches_rfc_8448() {
        let hex = |s: &str| -> Vec<u8> {
            (0..s.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
                .collect()
        };
        let secret = SecretBytes::new(&hex(
            "a11af9f05531f856ad47116b45a950328204b4f44bfb6b3a4b4f1f3fcb631643",
        ))
        .unwrap();
        let half = Half::from_secret(&aead::AES_128_GCM, hkdf::HKDF_SHA256, &secret).unwrap();
        assert_eq!(half.key.as_slice(), hex("9f02283b6c9c07efc26bb9f2ac92e356"));
        assert_eq!(half.iv.to_vec(), hex("cf782b88dd83549aadf1e984"));
    }

    /// A key update asked for is answered with ours, and both go on with new keys both
    /// ways; one not asked for changes only the peer's. Every suite, and each end once on
    /// its own schedule with the other on rustls's, so each checks the other.
    #[test]
    fn key_updates_either_way() {
        let cases = SUITES.into_iter().flat_map(|s| {
            [Own::Server, Own::Client]
                .into_iter()
                .flat_map(move |own| [(s, own, true), (s, own, false)])
        });
        for (suite, own, request) in cases {
            let (mut server, mut client) = pair_with(suite, own);
            for _ in 0..3 {
                let mut wire = vec![0u8; 64];
                let n = client.update_tx_key(request, &mut wire).unwrap();
                wire.truncate(n);
                wire.extend(seal(&mut client, b"after"));
                assert_eq!(open_all(&mut server, &mut wire).unwrap(), b"after");
                assert!(
                    wire.is_empty(),
                    "an answer waits for the server's next record"
                );
                assert_eq!(server.reply_due, request);
                let mut wire = seal(&mut server, b"back");
                // The answer (a key update record) ahead of the data, if one was asked for.
                let answer = if request { OVERHEAD + 5 } else { 0 };
                assert_eq!(wire.len(), answer + OVERHEAD + 4);
                assert_eq!(open_all(&mut client, &mut wire).unwrap(), b"back");
                assert!(wire.is_empty());
                // And the server's own, at its key's limit.
                let limit = std::mem::replace(&mut server.tx_limit, server.tx.seq + 1);
                let mut wire = seal(&mut server, b"re-keyed");
                assert_eq!(wire.len(), OVERHEAD + 5 + OVERHEAD + 8, "no key update");
                assert_eq!(open_all(&mut client, &mut wire).unwrap(), b"re-keyed");
                server.tx_limit = limit;
            }
        }
    }

    /// However many key updates a peer asks for before our next record, one answer goes
    /// ahead of it: nothing piles up while we only read. Our `close_notify` carries a due
    /// answer ahead of it, and after it a request is not answered.
    #[test]
    fn requests_for_a_key_update_are_answered_once() {
        let (mut server, mut client) = pair(CipherSuite::TLS13_AES_128_GCM_SHA256);
        let ask = |client: &mut Client| {
            let mut r = [0u8; 64];
            let n = client.update_tx_key(true, &mut r).unwrap();
            let mut wire = r[..n].to_vec();
            wire.extend(seal(client, b"x"));
            wire
        };
        for _ in 0..100 {
            let mut wire = ask(&mut client);
            assert_eq!(open_all(&mut server, &mut wire).unwrap(), b"x");
            assert!(wire.is_empty(), "nothing queued while only reading");
        }
        let mut wire = seal(&mut server, b"one");
        assert_eq!(wire.len(), (OVERHEAD + 5) + (OVERHEAD + 3), "one answer");
        assert_eq!(open_all(&mut client, &mut wire).unwrap(), b"one");

        let mut wire = ask(&mut client);
        assert_eq!(open_all(&mut server, &mut wire).unwrap(), b"x");
        let mut out = Vec::new();
        server.close_notify(&mut out).unwrap();
        assert_eq!(
            out.len(),
            (OVERHEAD + 5) + (OVERHEAD + 2),
            "the answer, then the alert"
        );
        let mut got = Vec::new();
        let mut back = Vec::new();
        let opened = client.open(&mut out, |p| got.extend_from_slice(p), &mut back);
        assert!(opened.unwrap().closed && got.is_empty());

        let mut wire = ask(&mut client);
        assert_eq!(open_all(&mut server, &mut wire).unwrap(), b"x");
        assert!(wire.is_empty(), "no answer after close_notify");
    }

    /// A key that reaches its record limit is replaced, its key update ahead of the next
    /// record, however many records one write makes.
    #[test]
    fn a_key_is_replaced_at_its_limit() {
        let (mut server, mut client) = pair(CipherSuite::TLS13_AES_128_GCM_SHA256);
        server.tx_limit = 3;
        // The first key has sealed the session tickets already.
        let first_key_left = (server.tx_limit - 1).saturating_sub(server.tx.seq) as usize;
        let data = pattern(10 * MAX_PLAINTEXT, 1);
        let mut wire = seal(&mut server, &data);
        // Ten records, and a key update as each key's third: two of data each.
        let updates = (10 - first_key_left).div_ceil(2);
        let overhead = wire.len() - data.len() - 10 * OVERHEAD;
        assert_eq!(overhead, updates * (OVERHEAD + 4 + 1), "{overhead}");
        assert_eq!(open_all(&mut client, &mut wire).unwrap(), data);
        assert!(wire.is_empty());
    }

    /// After our `close_notify` nothing more is sent: not data, not a second close, not the
    /// fatal alert a broken record from the peer would otherwise get.
    #[test]
    fn nothing_is_sent_after_our_close_notify() {
        let (mut server, mut client) = pair(CipherSuite::TLS13_AES_128_GCM_SHA256);
        let mut out = Vec::new();
        server.close_notify(&mut out).unwrap();
        let sent = out.len();
        let mut wire = seal(&mut client, b"late");
        let last = wire.len() - 1;
        wire[last] ^= 1;
        let e = server.open(&mut wire, |_| {}, &mut out).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
        assert_eq!(out.len(), sent, "an alert went out after close_notify");
        assert!(server.seal(b"more", &mut [0u8; 64]).is_err());
        assert!(server.close_notify(&mut out).is_err());
    }

    /// Keys dropped while quiet come back for the next record, either way.
    #[test]
    fn forgotten_keys_are_rebuilt() {
        let (mut server, mut client) = pair(CipherSuite::TLS13_CHACHA20_POLY1305_SHA256);
        server.forget_keys();
        assert!(server.tx.ctx.is_none() && server.rx.ctx.is_none());
        let mut wire = seal(&mut client, b"wake");
        assert_eq!(open_all(&mut server, &mut wire).unwrap(), b"wake");
        let mut wire = seal(&mut server, b"up");
        assert_eq!(open_all(&mut client, &mut wire).unwrap(), b"up");
    }

    /// Our `close_notify` ends the peer's input, and what follows it is not read.
    #[test]
    fn close_notify_ends_the_input() {
        let (mut server, mut client) = pair(CipherSuite::TLS13_AES_128_GCM_SHA256);
        let mut wire = seal(&mut client, b"last");
        client.close_notify(&mut wire).unwrap();
        // A peer that sends on after its close_notify (ours refuses to).
        let mut late = [0u8; 64];
        let n = client
            .seal_record(CONTENT_APPLICATION_DATA, b"after the end", &mut late)
            .unwrap();
        wire.extend_from_slice(&late[..n]);
        let mut got = Vec::new();
        let mut out = Vec::new();
        let opened = server
            .open(&mut wire, |p| got.extend_from_slice(p), &mut out)
            .unwrap();
        assert_eq!(opened.consumed, wire.len());
        assert!(opened.closed);
        assert_eq!(got, b"last");
        assert!(out.is_empty());
        // Our side may still write (TLS 1.3 closes each way on its own).
        let mut wire = seal(&mut server, b"reply");
        assert_eq!(open_all(&mut client, &mut wire).unwrap(), b"reply");
    }

    /// The alert `wire` brings the peer, decrypted by `to`: its level and description.
    fn alert_in<D: Side>(to: &mut Records<D>, wire: &mut Vec<u8>) -> (u8, u8) {
        let err = open_all(to, wire).map(|_| ()).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::ConnectionAborted, "{err}");
        match err
            .get_ref()
            .and_then(|e| e.downcast_ref::<rustls::Error>())
        {
            Some(rustls::Error::AlertReceived(alert)) => (ALERT_FATAL, u8::from(*alert)),
            _ => panic!("not an alert received: {err}"),
        }
    }

    /// Sends `record` (built by the client) to the server, which must refuse it with
    /// `alert`, once: the client reads that alert, and the server neither reads nor writes
    /// after it.
    fn refused(suite: CipherSuite, alert: Alert, build: impl FnOnce(&mut Client) -> Vec<u8>) {
        let (mut server, mut client) = pair(suite);
        let mut wire = build(&mut client);
        let mut more = seal(&mut client, b"more");
        let err = open_all(&mut server, &mut wire).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{err}");
        assert_eq!(alert_in(&mut client, &mut wire), (ALERT_FATAL, alert as u8));
        assert!(wire.is_empty(), "nothing answers an alert");
        assert!(open_all(&mut server, &mut more).is_err());
        assert!(more.is_empty(), "one alert only");
        assert!(server.seal(b"x", &mut [0u8; 64]).is_err());
    }

    /// One record of `typ` holding `payload`, sealed by `from` (either end).
    fn record<D: Side>(from: &mut Records<D>, typ: u8, payload: &[u8]) -> Vec<u8> {
        let mut into = vec![0u8; payload.len() + OVERHEAD];
        let n = from.seal_record(typ, payload, &mut into).unwrap();
        into.truncate(n);
        into
    }

    /// What each end takes after the handshake, by header: the alert for what it does not,
    /// with rustls's size cap first (`decode_error` whatever the type, as rustls sends).
    #[test]
    fn admit_judges_by_header() {
        type S = ServerConnectionData;
        type C = ClientConnectionData;
        let alert = |r: Result<(), (Alert, &str)>| r.err().map(|(a, _)| a);
        let max = MAX_HANDSHAKE_MESSAGE;
        for typ in [
            HANDSHAKE_KEY_UPDATE,
            HANDSHAKE_NEW_SESSION_TICKET,
            1,
            13,
            255,
        ] {
            assert_eq!(alert(admit::<S>(typ, max + 1)), Some(Alert::DecodeError));
            assert_eq!(alert(admit::<C>(typ, max + 1)), Some(Alert::DecodeError));
        }
        for d in [admit::<S>, admit::<C>] {
            assert_eq!(alert(d(HANDSHAKE_KEY_UPDATE, 1)), None);
            assert_eq!(alert(d(HANDSHAKE_KEY_UPDATE, 0)), Some(Alert::DecodeError));
            assert_eq!(alert(d(HANDSHAKE_KEY_UPDATE, 2)), Some(Alert::DecodeError));
            assert_eq!(alert(d(1, 100)), Some(Alert::UnexpectedMessage));
            assert_eq!(alert(d(13, 100)), Some(Alert::UnexpectedMessage));
        }
        assert_eq!(alert(admit::<C>(HANDSHAKE_NEW_SESSION_TICKET, max)), None);
        assert_eq!(alert(admit::<C>(HANDSHAKE_NEW_SESSION_TICKET, 0)), None);
        assert_eq!(
            alert(admit::<S>(HANDSHAKE_NEW_SESSION_TICKET, 10)),
            Some(Alert::UnexpectedMessage)
        );
    }

    #[test]
    fn bad_input_is_refused_with_the_right_alert() {
        let suite = CipherSuite::TLS13_AES_128_GCM_SHA256;
        // Not protected: a plaintext handshake record, a change_cipher_spec.
        refused(suite, Alert::UnexpectedMessage, |_| {
            vec![22, 3, 3, 0, 4, 24, 0, 0, 1]
        });
        refused(suite, Alert::UnexpectedMessage, |_| vec![20, 3, 3, 0, 1, 1]);
        // Longer than any record may be (the header alone tells).
        refused(suite, Alert::RecordOverflow, |_| vec![23, 3, 3, 0x41, 0x01]);
        // Tampered with.
        refused(suite, Alert::BadRecordMac, |c| {
            let mut r = seal(c, b"hello");
            r[7] ^= 1;
            r
        });
        // Too short to hold a tag.
        refused(suite, Alert::BadRecordMac, |_| {
            vec![23, 3, 3, 0, 3, 1, 2, 3]
        });
        // All padding, no content type.
        refused(suite, Alert::UnexpectedMessage, |c| record(c, 0, &[0, 0]));
        // More plaintext than a record may hold; or within it, but with padding beyond it.
        refused(suite, Alert::RecordOverflow, |c| {
            record(c, CONTENT_APPLICATION_DATA, &[1; MAX_PLAINTEXT + 1])
        });
        refused(suite, Alert::RecordOverflow, |c| {
            let mut padded = vec![0u8; MAX_PLAINTEXT + 1];
            padded[..3].copy_from_slice(&[b'h', b'i', CONTENT_APPLICATION_DATA]);
            record(c, 0, &padded)
        });
        // Empty records, one more than are let through in a row.
        refused(suite, Alert::UnexpectedMessage, |c| {
            (0..=EMPTY_RECORDS_ALLOWED)
                .flat_map(|_| record(c, CONTENT_APPLICATION_DATA, &[]))
                .collect()
        });
        // A content type TLS 1.3 does not have in a protected record.
        refused(suite, Alert::UnexpectedMessage, |c| record(c, 20, &[1]));
        // An empty handshake fragment.
        refused(suite, Alert::UnexpectedMessage, |c| {
            record(c, CONTENT_HANDSHAKE, &[])
        });
        // A session ticket sent to a server.
        refused(suite, Alert::UnexpectedMessage, |c| {
            record(c, CONTENT_HANDSHAKE, &[4, 0, 0, 1, 0])
        });
        // A handshake message no peer sends after the handshake (a ClientHello).
        refused(suite, Alert::UnexpectedMessage, |c| {
            record(c, CONTENT_HANDSHAKE, &[1, 0, 0, 1, 0])
        });
        // The same, and a key update of the wrong length, refused by their header before
        // any of their body came (a server held up to 64 KiB of them before).
        refused(suite, Alert::UnexpectedMessage, |c| {
            record(c, CONTENT_HANDSHAKE, &[4, 0, 0xff, 0xff])
        });
        refused(suite, Alert::UnexpectedMessage, |c| {
            record(c, CONTENT_HANDSHAKE, &[1, 0, 0x10, 0])
        });
        refused(suite, Alert::DecodeError, |c| {
            record(c, CONTENT_HANDSHAKE, &[24, 0, 0, 2])
        });
        // Key updates: a bad value, a bad length, one not at its record's end.
        refused(suite, Alert::IllegalParameter, |c| {
            record(c, CONTENT_HANDSHAKE, &[24, 0, 0, 1, 2])
        });
        refused(suite, Alert::DecodeError, |c| {
            record(c, CONTENT_HANDSHAKE, &[24, 0, 0, 2, 0, 0])
        });
        refused(suite, Alert::UnexpectedMessage, |c| {
            record(c, CONTENT_HANDSHAKE, &[24, 0, 0, 1, 0, 24, 0, 0, 1, 0])
        });
        // A handshake message larger than any taken (by one byte, as rustls counts).
        refused(suite, Alert::DecodeError, |c| {
            record(c, CONTENT_HANDSHAKE, &[24, 1, 0, 0])
        });
        // Application data in the middle of a split handshake message.
        refused(suite, Alert::UnexpectedMessage, |c| {
            let mut r = record(c, CONTENT_HANDSHAKE, &[24, 0]);
            r.extend(seal(c, b"data"));
            r
        });
        // Alerts: malformed, a bad level, a warning other than user_canceled.
        refused(suite, Alert::DecodeError, |c| {
            record(c, CONTENT_ALERT, &[1])
        });
        refused(suite, Alert::IllegalParameter, |c| {
            record(c, CONTENT_ALERT, &[3, 40])
        });
        refused(suite, Alert::DecodeError, |c| {
            record(c, CONTENT_ALERT, &[1, 40])
        });
        // Too many user_canceled warnings, too many key updates without data between.
        refused(suite, Alert::DecodeError, |c| {
            (0..5)
                .flat_map(|_| record(c, CONTENT_ALERT, &[1, 90]))
                .collect()
        });
        refused(suite, Alert::UnexpectedMessage, |c| {
            let mut wire = Vec::new();
            for _ in 0..=KEY_UPDATES_ALLOWED {
                let mut r = [0u8; 64];
                let n = c.update_tx_key(false, &mut r).unwrap();
                wire.extend_from_slice(&r[..n]);
            }
            wire
        });
    }

    /// Four user_canceled warnings are let through, key updates with data between them are
    /// never too many, nor are empty records with data between them; padding within the
    /// limit is taken off.
    #[test]
    fn what_is_tolerated() {
        let (mut server, mut client) = pair(CipherSuite::TLS13_AES_128_GCM_SHA256);
        for _ in 0..3 {
            let mut wire: Vec<u8> = (0..EMPTY_RECORDS_ALLOWED)
                .flat_map(|_| record(&mut client, CONTENT_APPLICATION_DATA, &[]))
                .collect();
            wire.extend(seal(&mut client, b"data"));
            assert_eq!(open_all(&mut server, &mut wire).unwrap(), b"data");
        }
        let mut padded = vec![0u8; MAX_PLAINTEXT];
        padded[..3].copy_from_slice(&[b'h', b'i', CONTENT_APPLICATION_DATA]);
        let mut wire = record(&mut client, 0, &padded);
        assert_eq!(open_all(&mut server, &mut wire).unwrap(), b"hi");
        let mut wire: Vec<u8> = (0..4)
            .flat_map(|_| record(&mut client, CONTENT_ALERT, &[1, 90]))
            .collect();
        assert!(open_all(&mut server, &mut wire).unwrap().is_empty());
        for _ in 0..3 * KEY_UPDATES_ALLOWED {
            let mut r = [0u8; 64];
            let n = client.update_tx_key(false, &mut r).unwrap();
            let mut wire = r[..n].to_vec();
            wire.extend(seal(&mut client, b"x"));
            assert_eq!(open_all(&mut server, &mut wire).unwrap(), b"x");
        }
    }

    /// A fatal alert from the peer ends the connection, with nothing sent back.
    #[test]
    fn a_peer_alert_is_an_error() {
        let (mut server, mut client) = pair(CipherSuite::TLS13_AES_128_GCM_SHA256);
        let mut wire = record(&mut client, CONTENT_ALERT, &[2, 40]);
        assert_eq!(alert_in(&mut server, &mut wire), (ALERT_FATAL, 40));
        assert!(wire.is_empty());
        assert!(server.seal(b"x", &mut [0u8; 64]).is_err());
    }

    /// The fuzz property's steps do what they say, for either end reading: data with key
    /// updates either way between it, cut anywhere, all arrives; a ticket ends the input
    /// there for a server, and for a client only if it is malformed.
    #[test]
    fn the_fuzz_steps_reach_their_paths() {
        type S = ServerConnectionData;
        type C = ClientConnectionData;
        let step = |op: u8, data: &[u8]| [&[op, data.len() as u8][..], data].concat();
        let clean = [
            step(0, b"one"),
            step(4, &[1]),
            step(6, b""),
            step(0, b"two"),
            step(4, &[0]),
            step(0, b"three"),
            step(2, &[1, 90]),
        ]
        .concat();
        for (sent, got) in [run_steps::<S, C>(&clean), run_steps::<C, S>(&clean)] {
            assert_eq!(got, b"onetwothree");
            assert_eq!(sent, got);
        }
        let ticket = |body: &[u8]| {
            let mut message = vec![4, 0, 0, body.len() as u8];
            message.extend(body);
            [step(0, b"before"), step(1, &message), step(0, b"after")].concat()
        };
        let good = ticket(&[0, 0, 0, 60, 1, 2, 3, 4, 0, 0, 1, 9, 0, 0]);
        let bad = ticket(&[]);
        for (sent, got) in [
            run_steps::<S, C>(&good),
            run_steps::<S, C>(&bad),
            run_steps::<C, S>(&bad),
        ] {
            assert_eq!((sent.len(), got.as_slice()), (11, &b"before"[..]));
        }
        let (sent, got) = run_steps::<C, S>(&good);
        assert_eq!(got, b"beforeafter");
        assert_eq!(sent, got);
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]
        /// Whatever bytes follow valid records, or replace part of them, the layer answers
        /// without panicking: the valid records' data arrives in order up to where the
        /// damage starts, and an error leaves one alert.
        #[test]
        fn any_input_is_answered(
            lens in proptest::collection::vec(0usize..3000, 1..6),
            cut in 0usize..20_000,
            garbage in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..400),
        ) {
            let (mut server, mut client) = pair(CipherSuite::TLS13_AES_128_GCM_SHA256);
            let mut wire = Vec::new();
            let mut sent = Vec::new();
            for (i, len) in lens.iter().enumerate() {
                let data = pattern(*len, i as u8);
                wire.extend(seal(&mut client, &data));
                sent.extend(data);
            }
            let cut = cut.min(wire.len());
            wire.truncate(cut);
            wire.extend_from_slice(&garbage);
            let mut got = Vec::new();
            let mut out = Vec::new();
            match server.open(&mut wire, |p| got.extend_from_slice(p), &mut out) {
                Ok(opened) => {
                    proptest::prop_assert!(opened.consumed <= wire.len());
                    proptest::prop_assert!(out.is_empty());
                }
                Err(_) => proptest::prop_assert_eq!(out.len(), HEADER + 2 + 1 + TAG),
            }
            proptest::prop_assert!(sent.starts_with(&got));
        }
    }
}
