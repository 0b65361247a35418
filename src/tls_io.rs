//! TLS over a TCP socket through rustls's unbuffered API, so that an idle session holds no
//! TLS buffer.
//!
//! rustls's buffered `ServerConnection` (what `tokio-rustls` drives) keeps a 4 KiB buffer for
//! incoming records for as long as the connection lives, even when it is empty: more than
//! everything else an idle plain session holds (RSS per idle `wss://` session was 9.7 KiB
//! with it, 5.5 KiB without, see ARCHITECTURE.md, "Memory per session"). The unbuffered API
//! leaves the buffers to the caller, and this stream keeps them only while they hold
//! something:
//!
//! - **Reading**: ciphertext is read into a per-thread scratch buffer and decrypted there;
//!   the plaintext goes straight into the reader's buffer. Only what is left over is copied
//!   to the heap: the start of a record that the next read completes, or plaintext the
//!   reader had no room for. Both are freed once used.
//! - **Writing**: plaintext is encrypted into the scratch buffer and written from there. Only
//!   ciphertext the socket does not take is copied to the heap, and freed when written; while
//!   any is queued, a write waits (backpressure, as with a plain socket).
//! - **The handshake** has buffers of its own, dropped when it ends.
//!
//! After the handshake, a TLS 1.3 connection leaves rustls for the record layer in
//! [`crate::tls_records`], which keeps a few hundred bytes of TLS state where an established
//! rustls connection holds about 2.5 KiB (3.4 KiB per idle `wss://` session in all, against
//! 5.3); TLS 1.2 stays with rustls. Everything above holds for both: they read from and write
//! into the same buffers.
//!
//! The scratch buffer is used only within one poll, never across an `await`, so one per thread
//! serves every connection of that thread's worker.
//!
//! It serves both ends wsgate terminates or opens: the listeners' connections
//! ([`accept`]) and `wss://` backends ([`connect`]). (The admin listener keeps `tokio-rustls`:
//! a few short requests, no sessions.)
//!
//! Semantics follow `tokio-rustls`, which this replaces there: a read returns
//! end of file after the peer's `close_notify`, a TCP end without one is an
//! `UnexpectedEof` error (a truncation attack looks the same), `poll_shutdown` sends
//! `close_notify` and then shuts the socket's write side, and a protocol error is answered with
//! the alert rustls would send before it is returned as `InvalidData`.
//!
//! Three things spare a segment (and a syscall) each per connection, where `tokio-rustls`
//! would send one more:
//!
//! - A TLS 1.3 server's session tickets are held for its first write (the `101`), and go out
//!   in the same segment: nothing waits for them.
//! - [`TlsIo::poll_write_last`] sends the last bytes (the close frame that ends a closing
//!   handshake) and the `close_notify` in one write, and [`TlsIo::poll_close_notify`] sends
//!   the `close_notify` without a TCP shutdown: the relay then closes the socket, which sends
//!   the FIN, instead of shutting it down and waiting for the peer's end of file.
//! - [`accept`] tells a plain HTTP request on a TLS port from the handshake's own first read,
//!   instead of peeking at the first byte first.

use std::cell::RefCell;
use std::io;
use std::ops::DerefMut;
use std::os::fd::RawFd;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use rustls::client::{ClientConnectionData, UnbufferedClientConnection};
use rustls::kernel::KernelConnection;
use rustls::pki_types::ServerName;
use rustls::server::{ServerConnectionData, UnbufferedServerConnection};
use rustls::unbuffered::{
    ConnectionState, EncodeError, EncryptError, InsufficientSizeError, UnbufferedConnectionCommon,
    UnbufferedStatus,
};
use rustls::{ClientConfig, CommonState, ExtractedSecrets, ProtocolVersion, ServerConfig};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;

use crate::hibernate::Sock;
use crate::tls_records::{self, Captured, Records, Side};

/// Plaintext taken by one write, and ciphertext read from the socket in one go: as much as
/// the relay moves per read (`relay::READ_CHUNK`).
const CHUNK: usize = 64 * 1024;

/// The most unprocessed input a connection may hold between reads: a handshake message may
/// span records up to 64 KiB (rustls's own cap), and it stays in the input until it is whole.
const MAX_PENDING_INPUT: usize = 80 * 1024;

/// The scratch buffer: a chunk of ciphertext after the pending input, or a chunk of plaintext
/// encrypted (with a record's overhead per 16 KiB, far less than the input allowance).
const SCRATCH: usize = MAX_PENDING_INPUT + CHUNK;

thread_local! {
    static SCRATCH_BUF: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// Runs `f` with this thread's scratch buffer (allocated, zeroed, on first use).
fn with_scratch<R>(f: impl FnOnce(&mut [u8]) -> R) -> R {
    SCRATCH_BUF.with(|cell| match cell.try_borrow_mut() {
        Ok(mut buf) => {
            if buf.is_empty() {
                *buf = vec![0; SCRATCH];
            }
            f(&mut buf)
        }
        // Not reached (nothing here polls another stream while holding it); a fresh
        // buffer keeps it correct anyway.
        Err(_) => f(&mut vec![0; SCRATCH]),
    })
}

/// A rustls unbuffered connection, client or server: what [`TlsIo`] needs of either.
pub trait Unbuffered: DerefMut<Target = UnbufferedConnectionCommon<Self::Data>> + Unpin {
    type Data: Side + Unpin;
    fn process<'c, 'i>(
        &'c mut self,
        incoming: &'i mut [u8],
    ) -> UnbufferedStatus<'c, 'i, Self::Data>;
    /// The keys and what else TLS 1.3 needs after its handshake (see `tls_records.rs`).
    fn into_kernel(self)
    -> Result<(ExtractedSecrets, KernelConnection<Self::Data>), rustls::Error>;
}

impl Unbuffered for UnbufferedServerConnection {
    type Data = ServerConnectionData;
    fn process<'c, 'i>(
        &'c mut self,
        incoming: &'i mut [u8],
    ) -> UnbufferedStatus<'c, 'i, ServerConnectionData> {
        self.process_tls_records(incoming)
    }
    fn into_kernel(
        self,
    ) -> Result<(ExtractedSecrets, KernelConnection<ServerConnectionData>), rustls::Error> {
        self.dangerous_into_kernel_connection()
    }
}

impl Unbuffered for UnbufferedClientConnection {
    type Data = ClientConnectionData;
    fn process<'c, 'i>(
        &'c mut self,
        incoming: &'i mut [u8],
    ) -> UnbufferedStatus<'c, 'i, ClientConnectionData> {
        self.process_tls_records(incoming)
    }
    fn into_kernel(
        self,
    ) -> Result<(ExtractedSecrets, KernelConnection<ClientConnectionData>), rustls::Error> {
        self.dangerous_into_kernel_connection()
    }
}

/// The listener side: a server connection.
pub type ServerTls = TlsIo<UnbufferedServerConnection>;

/// A `wss://` backend: a client connection.
pub type ClientTls = TlsIo<UnbufferedClientConnection>;

/// What a listener's connection turned out to be.
pub enum Accepted<T> {
    /// TLS is up (boxed: the TLS state is several hundred bytes, the other variant a
    /// socket), with what the caller's `inspect` took from the handshake's outcome.
    Tls(Box<ServerTls>, T),
    /// Its first bytes were an HTTP request, not a TLS handshake (someone typed `http://` for
    /// a TLS port): the socket, and what was read of the request.
    PlainHttp(TcpStream, Vec<u8>),
    /// Closed (or reset) before its first byte: a TCP health check or a port scan, no TLS
    /// handshake that failed.
    Closed,
}

/// Accepts a TLS connection on `tcp`: the whole handshake, written and read with buffers of
/// its own that are dropped when it completes. The caller bounds it in time.
///
/// `inspect` takes what the caller needs of the handshake's outcome (ALPN, the client's
/// certificate) while rustls still has it: a TLS 1.3 connection then leaves rustls for
/// this file's own record layer (see [`TlsIo`]).
///
/// A connection whose first byte is an ASCII capital letter (`GET`, `POST`...; a TLS
/// handshake starts with 0x16) is handed back as [`Accepted::PlainHttp`] with the bytes of
/// that first read: found in the read the handshake makes anyway, not in a peek of its own.
pub async fn accept<T>(
    tcp: TcpStream,
    config: Arc<ServerConfig>,
    inspect: impl FnOnce(&CommonState) -> T,
) -> io::Result<Accepted<T>> {
    let compact = config.enable_secret_extraction;
    let conn = UnbufferedServerConnection::new(config).map_err(invalid_data)?;
    let mut io = TlsIo::new(tcp, conn);
    Ok(
        match io.handshake(true).await.map_err(client_incompatible)? {
            Shook::PlainHttp(head) => match io.tcp.into_awake() {
                Some(tcp) => Accepted::PlainHttp(tcp, head),
                None => return Err(io::ErrorKind::NotConnected.into()),
            },
            Shook::Closed => Accepted::Closed,
            Shook::Tls {
                rustls_done,
                captured,
            } => {
                let seen = match &io.engine {
                    Engine::Rustls(conn) => inspect(conn),
                    _ => return Err(io::ErrorKind::NotConnected.into()),
                };
                io.settle(compact && rustls_done, captured).await?;
                Accepted::Tls(Box::new(io), seen)
            }
        },
    )
}

/// Opens a TLS connection to `name` on `tcp`: the whole handshake, as [`accept`] does.
pub async fn connect(
    tcp: TcpStream,
    config: Arc<ClientConfig>,
    name: ServerName<'static>,
) -> io::Result<ClientTls> {
    let compact = config.enable_secret_extraction;
    let conn = UnbufferedClientConnection::new(config, name).map_err(invalid_data)?;
    let mut io = TlsIo::new(tcp, conn);
    match io.handshake(false).await? {
        Shook::Tls {
            rustls_done,
            captured,
        } => io.settle(compact && rustls_done, captured).await?,
        // Only a server looks for plain HTTP, or tells a close before any byte apart.
        Shook::PlainHttp(_) | Shook::Closed => return Err(io::ErrorKind::InvalidData.into()),
    }
    Ok(io)
}

/// A TLS stream over a TCP socket that holds no buffer while idle (see the module's doc).
///
/// rustls does the handshake. After it, a TLS 1.3 connection whose config allows it
/// (`enable_secret_extraction`) leaves rustls for [`tls_records`], which keeps only the
/// keys, their sequence numbers and the traffic secrets: a few hundred bytes where an
/// established rustls connection holds about 2.5 KiB.
pub struct TlsIo<C: Unbuffered> {
    tcp: Sock,
    engine: Engine<C>,
    /// Input the TLS engine has not consumed yet: the start of a record (or of a handshake
    /// message split over records) that later input completes. Empty, with no allocation, at
    /// rest.
    input: Vec<u8>,
    /// Plaintext the reader had no room for, from `plain_pos`.
    plain: Vec<u8>,
    plain_pos: usize,
    /// Ciphertext the socket has not taken yet, from `out_pos`.
    out: Vec<u8>,
    out_pos: usize,
    /// The peer's `close_notify` has arrived: once `plain` is read, reads return end of file.
    peer_closed: bool,
    /// Our `close_notify` is queued: no more writes.
    closed_notify: bool,
    /// `out` holds a TLS 1.3 server's session tickets, which wait for the first write so that
    /// they go out with it (the `101` answer) in one segment: reads do not send them.
    held: bool,
    /// Our side of the TCP connection is shut.
    tcp_shut: bool,
}

/// Who seals and opens a connection's records.
#[expect(
    clippy::large_enum_variant,
    reason = "the large variant is what nearly every connection holds for its life: inline, \
              it needs no allocation of its own; the small one is boxed for the same reason"
)]
enum Engine<C: Unbuffered> {
    /// rustls: the handshake, and after it a TLS 1.2 connection (boxed: over a kilobyte,
    /// dropped when a TLS 1.3 connection moves on).
    Rustls(Box<C>),
    /// A TLS 1.3 connection after its handshake.
    Tls13(Records<C::Data>),
    /// rustls gave its connection up and the record layer could not take it: nothing more
    /// goes through (not reached: [`TlsIo::compact`] checks what it needs first).
    Gone,
}

/// What a run of rustls over some input came to.
#[derive(Debug, Default)]
struct Pumped {
    /// Bytes of the input consumed (to be dropped from its front).
    consumed: usize,
    /// The handshake waits for more input.
    handshaking: bool,
    /// Bytes of ciphertext an `Encrypt` job wrote into its buffer.
    encrypted: usize,
    /// The job ran (rustls allowed application data).
    job_done: bool,
}

/// What to do when rustls allows application data to be written.
enum Job<'a> {
    /// Nothing: just read.
    None,
    /// Encrypt `plain` into `into`.
    Encrypt { plain: &'a [u8], into: &'a mut [u8] },
    /// Queue a `close_notify`.
    CloseNotify,
}

impl<C: Unbuffered> TlsIo<C> {
    fn new(tcp: TcpStream, conn: C) -> Self {
        TlsIo {
            tcp: Sock::from(tcp),
            engine: Engine::Rustls(Box::new(conn)),
            input: Vec::new(),
            plain: Vec::new(),
            plain_pos: 0,
            out: Vec::new(),
            out_pos: 0,
            peer_closed: false,
            closed_notify: false,
            held: false,
            tcp_shut: false,
        }
    }

    /// The TCP socket, unless it is out of the runtime while its session hibernates.
    pub fn tcp(&self) -> Option<&TcpStream> {
        self.tcp.tcp()
    }

    /// The TLS version in use.
    pub fn protocol_version(&self) -> Option<ProtocolVersion> {
        match &self.engine {
            Engine::Rustls(conn) => conn.protocol_version(),
            Engine::Tls13(_) => Some(ProtocolVersion::TLSv1_3),
            Engine::Gone => None,
        }
    }

    /// Nothing is held either way (no part of a record, no plaintext for the reader, no
    /// ciphertext for the socket, no held tickets) and neither side has closed: the socket
    /// may leave the runtime while its session hibernates, and the TLS state stay here.
    pub fn can_hibernate(&self) -> bool {
        self.tcp.is_awake()
            && self.input.is_empty()
            && self.plain_pos == self.plain.len()
            && self.out_pos == self.out.len()
            && !self.held
            && !self.peer_closed
            && !self.closed_notify
            && !self.tcp_shut
    }

    /// Takes the socket out of the runtime (see [`can_hibernate`](Self::can_hibernate));
    /// its descriptor, for the lot to watch. A TLS 1.3 connection's keys are kept as bytes
    /// only meanwhile (their AEAD contexts are rebuilt by the next record).
    pub fn sleep(&mut self) -> io::Result<RawFd> {
        let fd = self.tcp.sleep()?;
        if let Engine::Tls13(records) = &mut self.engine {
            records.forget_keys();
        }
        Ok(fd)
    }

    /// Brings the socket back into the current runtime.
    pub fn wake(&mut self) -> io::Result<()> {
        self.tcp.wake()
    }

    /// The descriptor of a socket out of the runtime.
    pub fn asleep_fd(&self) -> Option<RawFd> {
        self.tcp.asleep_fd()
    }

    /// Drives the handshake to its end, with buffers of its own: input may arrive a byte at a
    /// time, and a flight is written whole before more input is awaited. Input that follows
    /// the handshake (a request pipelined behind the client's Finished) is kept for the first
    /// read.
    ///
    /// rustls is given the input a record at a time, so that it has seen nothing past the
    /// handshake's last record when the handshake ends: what follows (application data, a key
    /// update) is still raw input, for whichever engine reads on ([`compact`](Self::compact)
    /// may take the connection from rustls, which must not have acted on any of it first).
    ///
    /// A TLS 1.3 server's last flight is its session tickets, which nothing waits for: they
    /// are held for the first write (see `held`), one segment and one `sendto` fewer per
    /// connection. (A TLS 1.2 server's last flight is its Finished, which the client waits for;
    /// a client's is its Finished: those go out at once.)
    ///
    /// `server`: this end is the server, which holds its TLS 1.3 tickets, and gets
    /// [`Shook::PlainHttp`] if the first bytes read look like an HTTP request (see [`accept`]);
    /// nothing has been written then.
    async fn handshake(&mut self, server: bool) -> io::Result<Shook> {
        let mut input = vec![0u8; 4096];
        let mut filled = 0;
        // The front of `input` rustls has been given; whether a record at a time (until a
        // record header rustls refuses anyway, after which it gets all there is).
        let mut fed = 0;
        let mut by_record = true;
        // The traffic secrets rustls logs on the way (see `tls_records::capturing`).
        let mut captured = Captured::default();
        loop {
            // A resolver on this thread may have noted a handshake that is not this one's
            // (the admin listener's, on tokio-rustls, never takes it). Only a handshake's
            // failure is read for the note (`pump_rustls`), so only a handshake clears it.
            let _ = crate::tls::take_unserved();
            let pumped = tls_records::capturing(&mut captured, || {
                self.pump(&mut input[..fed], None, Job::None)
            });
            let hold = server
                && matches!(&pumped, Ok(p) if !p.handshaking)
                && self.protocol_version() == Some(ProtocolVersion::TLSv1_3);
            let flushed = if hold {
                self.held = !self.out.is_empty();
                Ok(())
            } else {
                self.write_out_all().await
            };
            let pumped = pumped?;
            flushed?;
            input.copy_within(pumped.consumed..filled, 0);
            filled -= pumped.consumed;
            fed -= pumped.consumed;
            if !pumped.handshaking {
                self.input = input[..filled].to_vec();
                return Ok(Shook::Tls {
                    rustls_done: by_record && fed == 0,
                    captured,
                });
            }
            if by_record {
                match next_record(&input[fed..filled]) {
                    Some(Ok(end)) => {
                        fed += end;
                        continue;
                    }
                    Some(Err(())) => by_record = false,
                    None => {}
                }
            }
            if !by_record && fed < filled {
                fed = filled;
                continue;
            }
            if filled == input.len() {
                if filled >= MAX_PENDING_INPUT {
                    return Err(invalid_data("TLS handshake message too large"));
                }
                input.resize((filled * 2).min(MAX_PENDING_INPUT), 0);
            }
            let first = server && filled == 0 && fed == 0;
            let n = match self.tcp.read(&mut input[filled..]).await {
                Ok(0) if first => return Ok(Shook::Closed),
                Err(e) if first && e.kind() == io::ErrorKind::ConnectionReset => {
                    return Ok(Shook::Closed);
                }
                r => r?,
            };
            if n == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "tls handshake eof",
                ));
            }
            if server && filled == 0 && input[0].is_ascii_uppercase() {
                input.truncate(n);
                return Ok(Shook::PlainHttp(input));
            }
            filled += n;
        }
    }

    /// Moves a TLS 1.3 connection from rustls to `tls_records.rs`, which keeps a few hundred
    /// bytes of it instead of about 2.5 KiB (see that file's doc). Only right after the
    /// handshake, with rustls having consumed all it was given ([`Shook::Tls`]): it must not
    /// have acted on anything past the handshake (a key update it would answer later), and
    /// any held tickets are already in `out`. A TLS 1.2 connection, or a suite the record
    /// layer does not carry, stays with rustls.
    fn compact(&mut self, captured: Captured) -> io::Result<()> {
        let Engine::Rustls(conn) = &self.engine else {
            return Ok(());
        };
        if conn.protocol_version() != Some(ProtocolVersion::TLSv1_3)
            || !conn
                .negotiated_cipher_suite()
                .is_some_and(tls_records::supported)
        {
            return Ok(());
        }
        let Engine::Rustls(conn) = std::mem::replace(&mut self.engine, Engine::Gone) else {
            return Ok(());
        };
        let (secrets, kernel) = (*conn).into_kernel().map_err(invalid_data)?;
        self.engine = Engine::Tls13(Records::new(secrets, kernel, captured)?);
        Ok(())
    }

    /// After the handshake: the move to `tls_records.rs` if `compact` (see
    /// [`compact`](Self::compact)), then whatever records came in behind the handshake's last
    /// one (a request sent with the client's Finished), which the handshake left unread: a
    /// read would otherwise wait on the socket with them already here.
    ///
    /// An error in those records is answered with its alert (best effort) before it is
    /// returned.
    async fn settle(&mut self, compact: bool, captured: Captured) -> io::Result<()> {
        if compact {
            self.compact(captured)?;
        }
        if !self.input.is_empty()
            && let Err(e) = self.pump_pending(Job::None)
        {
            let _ = self.write_out_all().await;
            return Err(e);
        }
        Ok(())
    }

    /// Writes all of `out`, awaiting the socket (the handshake's flights).
    async fn write_out_all(&mut self) -> io::Result<()> {
        if self.out_pos < self.out.len() {
            self.tcp.write_all(&self.out[self.out_pos..]).await?;
        }
        self.out = Vec::new();
        self.out_pos = 0;
        Ok(())
    }

    /// Runs the TLS engine over `input` until it needs more: plaintext goes to `dst` while it
    /// has room and to `plain` after that, TLS messages of the engine's own (handshake
    /// flights, alerts, key updates) to `out`, and `job` is done once application data may
    /// be written.
    ///
    /// On a protocol error, the alert the engine wants sent is queued in `out` before the
    /// error is returned (the caller writes it if it can).
    fn pump(
        &mut self,
        input: &mut [u8],
        mut dst: Option<&mut ReadBuf<'_>>,
        job: Job<'_>,
    ) -> io::Result<Pumped> {
        let records = match &mut self.engine {
            Engine::Rustls(_) => return self.pump_rustls(input, dst, job),
            Engine::Tls13(records) => records,
            Engine::Gone => return Err(io::ErrorKind::NotConnected.into()),
        };
        let plain = &mut self.plain;
        let opened = records.open(input, |p| deliver(p, &mut dst, plain), &mut self.out)?;
        if opened.closed {
            self.peer_closed = true;
        }
        let mut done = Pumped {
            consumed: opened.consumed,
            ..Pumped::default()
        };
        match job {
            Job::None => {}
            Job::Encrypt { plain, into } => {
                done.encrypted = records.seal(plain, into)?;
                done.job_done = true;
            }
            Job::CloseNotify => {
                records.close_notify(&mut self.out)?;
                done.job_done = true;
            }
        }
        Ok(done)
    }

    /// [`pump`](Self::pump) through rustls.
    fn pump_rustls(
        &mut self,
        input: &mut [u8],
        mut dst: Option<&mut ReadBuf<'_>>,
        mut job: Job<'_>,
    ) -> io::Result<Pumped> {
        let Engine::Rustls(conn) = &mut self.engine else {
            return Err(io::ErrorKind::NotConnected.into());
        };
        let mut done = Pumped::default();
        loop {
            let UnbufferedStatus { discard, state } = conn.process(&mut input[done.consumed..]);
            let state = match state {
                Ok(state) => state,
                Err(e) => {
                    done.consumed += discard;
                    let from = self.out.len();
                    self.queue_alert(&mut input[done.consumed..]);
                    if let Some(alert) = crate::tls::take_unserved() {
                        return Err(unserved(&mut self.out[from..], alert, e));
                    }
                    return Err(invalid_data(e));
                }
            };
            match state {
                ConnectionState::ReadTraffic(mut records) => {
                    while let Some(record) = records.next_record() {
                        let record = record.map_err(invalid_data)?;
                        deliver(record.payload, &mut dst, &mut self.plain);
                    }
                }
                ConnectionState::EncodeTlsData(mut data) => {
                    encode_into(&mut self.out, |buf| data.encode(buf))?;
                }
                // Queued in `out`, which goes out before anything written after it.
                ConnectionState::TransmitTlsData(data) => data.done(),
                ConnectionState::PeerClosed => self.peer_closed = true,
                ConnectionState::Closed => {
                    self.peer_closed = true;
                    if !matches!(job, Job::None) {
                        return Err(io::ErrorKind::BrokenPipe.into());
                    }
                    done.consumed += discard;
                    return Ok(done);
                }
                ConnectionState::BlockedHandshake => {
                    done.consumed += discard;
                    done.handshaking = true;
                    return Ok(done);
                }
                ConnectionState::WriteTraffic(mut traffic) => {
                    match std::mem::replace(&mut job, Job::None) {
                        Job::None => {
                            done.consumed += discard;
                            return Ok(done);
                        }
                        Job::Encrypt { plain, into } => {
                            done.encrypted = traffic.encrypt(plain, into).map_err(encrypt_error)?;
                            done.job_done = true;
                        }
                        Job::CloseNotify => {
                            let mut alert = [0u8; 64];
                            let n = traffic
                                .queue_close_notify(&mut alert)
                                .map_err(encrypt_error)?;
                            self.out.extend_from_slice(&alert[..n]);
                            done.job_done = true;
                        }
                    }
                    // Once more round: encrypting may have queued a key update (the record
                    // limit of the key), which must reach `out` ahead of this data.
                }
                other => {
                    // `ConnectionState` is non-exhaustive; early data is never enabled.
                    return Err(invalid_data(format!("unexpected TLS state {other:?}")));
                }
            }
            done.consumed += discard;
        }
    }

    /// [`pump`](Self::pump) over the pending input alone, for a job: never over an empty
    /// buffer instead, since rustls may be holding a split handshake message in that input.
    fn pump_pending(&mut self, job: Job<'_>) -> io::Result<Pumped> {
        let mut input = std::mem::take(&mut self.input);
        let pumped = self.pump(&mut input, None, job);
        if let Ok(p) = &pumped {
            input.drain(..p.consumed);
        }
        if !input.is_empty() {
            self.input = input;
        }
        pumped
    }

    /// After a protocol error: the alert rustls queued for the peer, into `out`. `input` is
    /// what is left of the input (rustls may hold a split handshake message in it).
    ///
    /// Only while rustls has messages queued: those come out before it looks at the input
    /// again, which would run into the same error (and send a second alert).
    fn queue_alert(&mut self, input: &mut [u8]) {
        let Engine::Rustls(conn) = &mut self.engine else {
            return;
        };
        while conn.wants_write() {
            let status = conn.process(input);
            let Ok(ConnectionState::EncodeTlsData(mut data)) = status.state else {
                return;
            };
            if encode_into(&mut self.out, |buf| data.encode(buf)).is_err() {
                return;
            }
        }
    }

    /// Writes what `out` holds (held tickets too). Ready(Ok) once it is empty (and its memory
    /// given back).
    fn poll_out(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.held = false;
        while self.out_pos < self.out.len() {
            let n = ready!(Pin::new(&mut self.tcp).poll_write(cx, &self.out[self.out_pos..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.out_pos += n;
        }
        if self.out.capacity() != 0 {
            self.out = Vec::new();
            self.out_pos = 0;
        }
        Poll::Ready(Ok(()))
    }

    /// Moves pending plaintext into `buf`; true if there was any.
    fn take_plain(&mut self, buf: &mut ReadBuf<'_>) -> bool {
        if self.plain_pos == self.plain.len() {
            return false;
        }
        let n = buf.remaining().min(self.plain.len() - self.plain_pos);
        buf.put_slice(&self.plain[self.plain_pos..self.plain_pos + n]);
        self.plain_pos += n;
        if self.plain_pos == self.plain.len() {
            self.plain = Vec::new();
            self.plain_pos = 0;
        }
        true
    }

    /// One read from the socket into the scratch buffer after the pending input, and rustls
    /// over all of it. Ready(Ok(false)) at the socket's end of file.
    fn read_some(
        &mut self,
        cx: &mut Context<'_>,
        scratch: &mut [u8],
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<bool>> {
        let pending = self.input.len();
        scratch[..pending].copy_from_slice(&self.input);
        let mut read = ReadBuf::new(&mut scratch[pending..pending + CHUNK]);
        ready!(Pin::new(&mut self.tcp).poll_read(cx, &mut read))?;
        let n = read.filled().len();
        if n == 0 {
            return Poll::Ready(Ok(false));
        }
        let end = pending + n;
        let pumped = self.pump(&mut scratch[..end], Some(buf), Job::None)?;
        let rest = &scratch[pumped.consumed..end];
        if rest.is_empty() {
            self.input = Vec::new();
        } else if rest.len() > MAX_PENDING_INPUT {
            return Poll::Ready(Err(invalid_data("TLS message too large")));
        } else {
            self.input.clear();
            self.input.extend_from_slice(rest);
        }
        Poll::Ready(Ok(true))
    }
}

/// How a handshake ended.
enum Shook {
    /// TLS is up. `rustls_done`: rustls consumed all the input it was given (it always
    /// does, the last handshake record being whole), so [`TlsIo::compact`] may take over;
    /// `captured`: the traffic secrets rustls logged meanwhile.
    Tls {
        rustls_done: bool,
        captured: Captured,
    },
    /// The first bytes were an HTTP request (see [`accept`]).
    PlainHttp(Vec<u8>),
    /// A server's peer closed or reset before sending a byte.
    Closed,
}

/// The length of the TLS record at the front of `buf` if it is all there, `Err` if its
/// header already says it is larger than rustls takes (rustls refuses it from the header),
/// `None` while more is needed.
fn next_record(buf: &[u8]) -> Option<Result<usize, ()>> {
    let &[_, _, _, hi, lo] = buf.get(..5)? else {
        return None;
    };
    let len = usize::from(u16::from_be_bytes([hi, lo]));
    if len >= tls_records::MAX_PLAINTEXT + 2048 {
        Some(Err(()))
    } else if 5 + len <= buf.len() {
        Some(Ok(5 + len))
    } else {
        None
    }
}

/// Plaintext to the reader while it has room, the rest kept.
fn deliver(payload: &[u8], dst: &mut Option<&mut ReadBuf<'_>>, plain: &mut Vec<u8>) {
    let mut payload = payload;
    if let Some(dst) = dst
        && plain.is_empty()
    {
        let n = dst.remaining().min(payload.len());
        dst.put_slice(&payload[..n]);
        payload = &payload[n..];
    }
    plain.extend_from_slice(payload);
}

/// Appends what `encode` writes to `out`, growing it to the size rustls asks for.
fn encode_into(
    out: &mut Vec<u8>,
    mut encode: impl FnMut(&mut [u8]) -> Result<usize, EncodeError>,
) -> io::Result<()> {
    let start = out.len();
    let mut room = 1024;
    loop {
        out.resize(start + room, 0);
        match encode(&mut out[start..]) {
            Ok(n) => {
                out.truncate(start + n);
                return Ok(());
            }
            Err(EncodeError::InsufficientSize(InsufficientSizeError { required_size }))
                if required_size > room =>
            {
                room = required_size;
            }
            Err(e) => {
                out.truncate(start);
                return Err(invalid_data(e));
            }
        }
    }
}

fn encrypt_error(e: EncryptError) -> io::Error {
    io::Error::other(e)
}

/// The handshake failed for want of a certificate (`crate::tls::take_unserved`): rustls's
/// `access_denied` alert in `queued` (a plaintext record: no ServerHello went out) becomes
/// `alert`, and the error says which of the two it was. `rustls_error` is kept when the
/// record is not the one expected.
fn unserved(
    queued: &mut [u8],
    alert: rustls::AlertDescription,
    rustls_error: rustls::Error,
) -> io::Error {
    let denied = u8::from(rustls::AlertDescription::AccessDenied);
    match queued {
        [0x15, 0x03, _, 0x00, 0x02, 0x02, description] if *description == denied => {
            *description = u8::from(alert);
        }
        _ => return invalid_data(rustls_error),
    }
    invalid_data(match alert {
        rustls::AlertDescription::MissingExtension => {
            "the client sent no host name as its server name (SNI; an IP address is none, RFC 6066 §3), and the listener has no default certificate"
        }
        _ => "no certificate for the server name (SNI) the client sent",
    })
}

/// A client's handshake that failed on what the client offers, in words an operator acts
/// on, rustls's own words following in parentheses for searching; any other error as it is.
/// A TLS 1.0 or 1.1 client was logged as `peer is incompatible:
/// SignatureAlgorithmsExtensionRequired` (rustls looks for that TLS 1.2 extension before it
/// looks at the version, and such clients do not send it) or `Tls12NotOffered`. (Only for
/// clients: a backend's failed handshake keeps rustls's error, which `backend::tls_failure`
/// words itself.)
fn client_incompatible(e: io::Error) -> io::Error {
    use rustls::PeerIncompatible as P;
    let Some(rustls::Error::PeerIncompatible(why)) = e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
    else {
        return e;
    };
    let what = match why {
        P::SignatureAlgorithmsExtensionRequired
        | P::Tls12NotOffered
        | P::Tls12NotOfferedOrEnabled => {
            "the client offered no TLS version wsgate accepts (TLS 1.2 and 1.3 only): an old \
             TLS 1.0 or 1.1 client"
        }
        P::NoCipherSuitesInCommon => "the client offered no cipher suite wsgate accepts",
        P::NoKxGroupsInCommon => "the client offered no key exchange group wsgate accepts",
        _ => return e,
    };
    let tls = e.get_ref().map(ToString::to_string).unwrap_or_default();
    invalid_data(format!("{what} ({tls})"))
}

fn invalid_data(e: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

impl<C: Unbuffered> AsyncRead for TlsIo<C> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.take_plain(buf) || this.peer_closed || buf.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        // rustls's own messages (a key update's answer) go out as soon as they can; a write
        // that waits here wakes this task again. Held tickets wait for the first write.
        if !this.held
            && let Poll::Ready(Err(e)) = this.poll_out(cx)
        {
            return Poll::Ready(Err(e));
        }
        loop {
            let before = buf.filled().len();
            let open = match ready!(with_scratch(|scratch| this.read_some(cx, scratch, buf))) {
                Ok(open) => open,
                Err(e) => {
                    // The alert rustls queued for a protocol error goes out if the socket
                    // takes it now (after any held tickets); the error is returned either way.
                    let _ = this.poll_out(cx);
                    return Poll::Ready(Err(e));
                }
            };
            if !this.out.is_empty()
                && !this.held
                && let Poll::Ready(Err(e)) = this.poll_out(cx)
            {
                return Poll::Ready(Err(e));
            }
            if buf.filled().len() > before || this.peer_closed {
                return Poll::Ready(Ok(()));
            }
            if !open {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "peer closed connection without sending TLS close_notify",
                )));
            }
            // Only part of a record, or only rustls's own messages: read on.
        }
    }
}

impl<C: Unbuffered> TlsIo<C> {
    /// Encrypts `buf` (up to [`CHUNK`] of it) and writes it, with whatever `out` holds ahead
    /// of it in the same write: held tickets, a key update queued while encrypting, and with
    /// `last`, a `close_notify` after it. Ready(Ok(n)) once the `n` bytes are encrypted: what
    /// the socket did not take waits in `out` (flushed by the next write or `poll_flush`).
    fn poll_write_inner(
        &mut self,
        cx: &mut Context<'_>,
        buf: &[u8],
        last: bool,
    ) -> Poll<io::Result<usize>> {
        if self.closed_notify {
            return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
        }
        // What the socket did not take last time goes first; until it has, wait. Held
        // tickets were never tried: they go with this write.
        if !self.held {
            ready!(self.poll_out(cx))?;
        }
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        let plain = &buf[..buf.len().min(CHUNK)];
        let last = last && plain.len() == buf.len();
        with_scratch(|scratch| {
            // Room for the records, and for a key update rustls puts ahead of them.
            let into = &mut scratch[..];
            let pumped = self.pump_pending(Job::Encrypt { plain, into })?;
            if !pumped.job_done {
                return Poll::Ready(Err(io::Error::other("TLS connection cannot send data")));
            }
            let sealed = &scratch[..pumped.encrypted];
            // rustls's own messages queued on the way (a key update) go before this data.
            let mut written = 0;
            if self.out.is_empty() && !last {
                match Pin::new(&mut self.tcp).poll_write(cx, sealed) {
                    Poll::Ready(Ok(n)) => written = n,
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Pending => {}
                }
            }
            // Encrypted, so taken: the rest waits in `out` (the record's sequence number is
            // spent; it cannot be encrypted again).
            self.out.extend_from_slice(&sealed[written..]);
            if last {
                // After the data, in the same write.
                self.closed_notify = true;
                let _ = self.pump_pending(Job::CloseNotify);
            }
            if !self.out.is_empty() {
                let _ = self.poll_out(cx)?;
            }
            Poll::Ready(Ok(plain.len()))
        })
    }

    /// Writes `buf` as the last bytes of this connection, with our `close_notify` after them in
    /// the same write (one segment and one `sendto` fewer than a write and a `close_notify`).
    /// A `buf` over one chunk is written in part, as `poll_write` does; the `close_notify` goes
    /// with the call that takes the end of it. Nothing may be written after it.
    pub fn poll_write_last(&mut self, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        self.poll_write_inner(cx, buf, true)
    }

    /// Sends our `close_notify` (unless it is already queued) and what is queued before it,
    /// without shutting the TCP side: for a peer that has nothing more to say, the socket's
    /// close then sends the FIN. Ready(Ok) once it is all written.
    pub fn poll_close_notify(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if !self.closed_notify {
            ready!(self.poll_out(cx))?;
            self.closed_notify = true;
            // A connection rustls already closed (an error, or both close_notifys) has no
            // alert to send: the TCP shutdown is all there is.
            let _ = self.pump_pending(Job::CloseNotify);
        }
        self.poll_out(cx)
    }
}

impl<C: Unbuffered> AsyncWrite for TlsIo<C> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.get_mut().poll_write_inner(cx, buf, false)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        // Held tickets are not the caller's data: they still wait for its first write (hyper
        // flushes after every read, before it has anything to answer).
        if !this.held {
            ready!(this.poll_out(cx))?;
        }
        Pin::new(&mut this.tcp).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_close_notify(cx))?;
        if !this.tcp_shut {
            match ready!(Pin::new(&mut this.tcp).poll_shutdown(cx)) {
                Ok(()) => {}
                // When shutting down, not being connected any more is fine.
                Err(e) if e.kind() == io::ErrorKind::NotConnected => {}
                Err(e) => return Poll::Ready(Err(e)),
            }
            this.tcp_shut = true;
        }
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    use std::time::Duration;
    use tokio::net::TcpListener;

    /// A server config with a fresh certificate, and a client config that trusts it, both
    /// letting a TLS 1.3 connection move to `tls_records.rs` as wsgate's own configs do.
    fn configs(
        version: &'static rustls::SupportedProtocolVersion,
    ) -> (Arc<ServerConfig>, Arc<rustls::ClientConfig>) {
        configs_with(version, true)
    }

    /// [`configs`], with `compact` choosing whether TLS 1.3 moves to `tls_records.rs` or
    /// stays with rustls.
    fn configs_with(
        version: &'static rustls::SupportedProtocolVersion,
        compact: bool,
    ) -> (Arc<ServerConfig>, Arc<rustls::ClientConfig>) {
        let (cert, key) = crate::tls::dev_certificate(&["localhost".into()]).unwrap();
        let cert = CertificateDer::from_pem_slice(cert.as_bytes()).unwrap();
        let key = PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap();
        let server = ServerConfig::builder_with_provider(crate::tls::provider())
            .with_protocol_versions(&[version])
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![cert.clone()], key)
            .unwrap();
        let mut roots = rustls::RootCertStore::empty();
        roots.add(cert).unwrap();
        let mut client = rustls::ClientConfig::builder_with_provider(crate::tls::provider())
            .with_protocol_versions(&[version])
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let mut server = server;
        server.enable_secret_extraction = compact;
        client.enable_secret_extraction = compact;
        if compact {
            server.key_log = Arc::new(crate::tls_records::SecretCapture);
            client.key_log = Arc::new(crate::tls_records::SecretCapture);
        }
        (Arc::new(server), Arc::new(client))
    }

    /// TLS 1.3 configs (see [`configs`]) and a listener on loopback for a test's server.
    async fn tls13_listener() -> (
        Arc<ServerConfig>,
        Arc<rustls::ClientConfig>,
        TcpListener,
        std::net::SocketAddr,
    ) {
        let (server_config, client_config) = configs(&rustls::version::TLS13);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        (server_config, client_config, listener, addr)
    }

    /// This file's client, connected to `addr` as `localhost`.
    async fn connect_localhost(
        addr: std::net::SocketAddr,
        config: Arc<rustls::ClientConfig>,
    ) -> ClientTls {
        let tcp = TcpStream::connect(addr).await.unwrap();
        let name = ServerName::try_from("localhost").unwrap();
        connect(tcp, config, name).await.unwrap()
    }

    /// A client that has sent `ping` and read the server's `101`.
    async fn ping_for_101(
        addr: std::net::SocketAddr,
        config: Arc<rustls::ClientConfig>,
    ) -> ClientTls {
        let mut client = connect_localhost(addr, config).await;
        client.write_all(b"ping").await.unwrap();
        let mut got = [0u8; 3];
        client.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"101");
        client
    }

    /// Which engine carries a connection after its handshake (and for `tls_records.rs`,
    /// whose key schedule).
    fn engine<C: Unbuffered>(s: &TlsIo<C>) -> &'static str {
        match &s.engine {
            Engine::Rustls(_) => "rustls",
            Engine::Tls13(records) if records.keeps_tickets() => "tls13, keeping tickets",
            Engine::Tls13(records) if records.own_schedule() => "tls13",
            Engine::Tls13(_) => "tls13, rustls's schedule",
            Engine::Gone => "gone",
        }
    }

    /// A connected pair over loopback: this stream as the server, tokio-rustls as the client
    /// (over `wrap` of its socket).
    async fn pair<W, F>(
        version: &'static rustls::SupportedProtocolVersion,
        wrap: F,
    ) -> (ServerTls, tokio_rustls::client::TlsStream<W>)
    where
        W: AsyncRead + AsyncWrite + Unpin,
        F: FnOnce(TcpStream) -> W,
    {
        pair_with(version, true, wrap).await
    }

    /// [`pair`], choosing the engine as [`configs_with`] does.
    async fn pair_with<W, F>(
        version: &'static rustls::SupportedProtocolVersion,
        compact: bool,
        wrap: F,
    ) -> (ServerTls, tokio_rustls::client::TlsStream<W>)
    where
        W: AsyncRead + AsyncWrite + Unpin,
        F: FnOnce(TcpStream) -> W,
    {
        let (server_config, client_config) = configs_with(version, compact);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            accept_tls(tcp, server_config).await
        });
        let tcp = TcpStream::connect(addr).await.unwrap();
        tcp.set_nodelay(true).unwrap();
        let client = tokio_rustls::TlsConnector::from(client_config)
            .connect(ServerName::try_from("localhost").unwrap(), wrap(tcp))
            .await
            .unwrap();
        (server.await.unwrap().unwrap(), client)
    }

    /// A TLS 1.3 listener on loopback whose one connection goes through [`accept`].
    async fn spawn_accept() -> (
        std::net::SocketAddr,
        tokio::task::JoinHandle<io::Result<Accepted<()>>>,
    ) {
        let (server_config, _) = configs(&rustls::version::TLS13);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            accept(tcp, server_config, |_| ()).await
        });
        (addr, server)
    }

    /// [`accept`] where the client speaks TLS.
    async fn accept_tls(tcp: TcpStream, config: Arc<ServerConfig>) -> io::Result<ServerTls> {
        match accept(tcp, config, |_| ()).await? {
            Accepted::Tls(tls, ()) => Ok(*tls),
            Accepted::PlainHttp(..) => panic!("taken for plain HTTP"),
            Accepted::Closed => Err(io::ErrorKind::UnexpectedEof.into()),
        }
    }

    /// `msg`, written and flushed by the server, reaches the client intact.
    async fn server_says(
        server: &mut ServerTls,
        client: &mut (impl AsyncRead + Unpin),
        msg: &[u8],
    ) {
        server.write_all(msg).await.unwrap();
        server.flush().await.unwrap();
        let mut got = vec![0u8; msg.len()];
        client.read_exact(&mut got).await.unwrap();
        assert_eq!(got, msg);
    }

    /// Holds no buffer of its own (what an idle session costs).
    fn assert_idle(s: &ServerTls) {
        assert_eq!(s.input.capacity(), 0, "input kept");
        assert_eq!(s.plain.capacity(), 0, "plaintext kept");
        assert_eq!(s.out.capacity(), 0, "output kept");
    }

    fn pattern(len: usize, seed: u8) -> Vec<u8> {
        (0..len)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
            .collect()
    }

    /// Both ways at once, in writes of every size up to several records, read back through
    /// buffers too small for a record: every byte arrives, in order, and nothing stays
    /// buffered afterwards. TLS 1.3 and 1.2.
    #[tokio::test]
    async fn moves_every_byte_both_ways_and_keeps_nothing_at_rest() {
        let runs = [
            (&rustls::version::TLS13, true, "tls13"),
            (&rustls::version::TLS13, false, "rustls"),
            (&rustls::version::TLS12, true, "rustls"),
        ];
        for (version, compact, carried_by) in runs {
            let (mut server, client) = pair_with(version, compact, |t| t).await;
            assert_eq!(engine(&server), carried_by);
            // TLS 1.3: only the session tickets, held for the first write.
            assert_eq!(server.held, version == &rustls::version::TLS13);
            assert_eq!(server.out.is_empty(), !server.held);
            assert_eq!(server.input.capacity() + server.plain.capacity(), 0);
            let up = pattern(300_000, 1);
            let down = pattern(300_000, 7);
            let (mut cr, mut cw) = tokio::io::split(client);
            let (up2, down2) = (up.clone(), down.clone());
            let client_writes = tokio::spawn(async move {
                let mut i = 0;
                let mut size = 1;
                while i < up2.len() {
                    let n = size.min(up2.len() - i);
                    cw.write_all(&up2[i..i + n]).await.unwrap();
                    i += n;
                    size = size * 3 % 70_001 + 1;
                }
                cw.flush().await.unwrap();
                cw
            });
            let client_reads = tokio::spawn(async move {
                let mut got = vec![0; down2.len()];
                cr.read_exact(&mut got).await.unwrap();
                assert!(got == down2, "server→client bytes differ");
                cr
            });
            let (mut sr, mut sw) = tokio::io::split(&mut server);
            let server_reads = async {
                let mut got = Vec::new();
                let mut small = [0u8; 1000];
                while got.len() < up.len() {
                    let n = sr.read(&mut small).await.unwrap();
                    assert!(n > 0, "early end of file");
                    got.extend_from_slice(&small[..n]);
                }
                assert!(got == up, "client→server bytes differ");
            };
            let server_writes = async {
                for chunk in down.chunks(100_000) {
                    sw.write_all(chunk).await.unwrap();
                }
                sw.flush().await.unwrap();
            };
            tokio::join!(server_reads, server_writes);
            let cw = client_writes.await.unwrap();
            let cr = client_reads.await.unwrap();
            assert_idle(&server);
            // close_notify from the client: end of file, not an error.
            let mut client = cr.unsplit(cw);
            client.shutdown().await.unwrap();
            let mut rest = Vec::new();
            assert_eq!(server.read_to_end(&mut rest).await.unwrap(), 0);
            // Ours back: the client reads a clean end too.
            server.shutdown().await.unwrap();
            let mut rest = Vec::new();
            client.read_to_end(&mut rest).await.unwrap();
            assert!(rest.is_empty());
        }
    }

    /// Both ends unbuffered (a listener's connection and a `wss://` backend's): a handshake,
    /// an exchange each way larger than a record, a clean close each way, nothing kept.
    /// A quiet stream's socket leaves the runtime and comes back with its TLS state: what the
    /// peer sent meanwhile is read and decrypted after the wake, and the keys go on both
    /// ways. One with something in flight (held tickets) cannot sleep, nor can one asleep.
    #[tokio::test]
    async fn a_quiet_stream_sleeps_and_wakes_with_its_tls_state() {
        let (mut server, mut client) = pair(&rustls::version::TLS13, |t| t).await;
        client.write_all(b"before").await.unwrap();
        client.flush().await.unwrap();
        let mut got = [0u8; 6];
        server.read_exact(&mut got).await.unwrap();
        // TLS 1.3 tickets wait for the first write: not quiet yet.
        assert!(!server.can_hibernate());
        server_says(&mut server, &mut client, b"101").await;
        assert!(server.can_hibernate());
        let fd = server.sleep().unwrap();
        assert_eq!(server.asleep_fd(), Some(fd));
        assert!(server.tcp().is_none());
        assert!(!server.can_hibernate());
        client.write_all(b"while asleep").await.unwrap();
        client.flush().await.unwrap();
        let mut got = [0u8; 12];
        let err = server.read_exact(&mut got).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotConnected);
        server.wake().unwrap();
        assert_eq!(server.asleep_fd(), None);
        server.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"while asleep");
        server_says(&mut server, &mut client, b"awake").await;
        assert_idle(&server);
    }

    #[tokio::test]
    async fn client_and_server_both_unbuffered() {
        let (server_config, client_config, listener, addr) = tls13_listener().await;
        let server = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            let mut tls = accept_tls(tcp, server_config).await.unwrap();
            let mut got = vec![0; 50_000];
            tls.read_exact(&mut got).await.unwrap();
            tls.write_all(&got).await.unwrap();
            tls.flush().await.unwrap();
            let mut rest = Vec::new();
            tls.read_to_end(&mut rest).await.unwrap();
            assert!(rest.is_empty());
            assert_idle(&tls);
            tls.shutdown().await.unwrap();
        });
        let mut client = connect_localhost(addr, client_config).await;
        assert_eq!(engine(&client), "tls13, keeping tickets");
        let msg = pattern(50_000, 9);
        client.write_all(&msg).await.unwrap();
        client.flush().await.unwrap();
        let mut back = vec![0; msg.len()];
        client.read_exact(&mut back).await.unwrap();
        assert!(back == msg);
        assert_eq!(engine(&client), "tls13");
        client.shutdown().await.unwrap();
        let mut rest = Vec::new();
        assert_eq!(client.read_to_end(&mut rest).await.unwrap(), 0);
        assert!(client.input.capacity() == 0 && client.out.capacity() == 0);
        server.await.unwrap();
    }

    /// A socket that writes one byte per call: every record, and the handshake's messages,
    /// reach the server split at every point.
    struct Dribble(TcpStream);

    impl AsyncRead for Dribble {
        fn poll_read(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            Pin::new(&mut self.0).poll_read(cx, buf)
        }
    }

    impl AsyncWrite for Dribble {
        fn poll_write(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            let n = buf.len().min(1);
            Pin::new(&mut self.0).poll_write(cx, &buf[..n])
        }
        fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.0).poll_flush(cx)
        }
        fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.0).poll_shutdown(cx)
        }
    }

    /// A socket that holds back everything after the first write (the ClientHello) until
    /// two protected records are written: the client's Finished and its first data then
    /// reach the server in one segment, as a client that sends its request at once does.
    struct Cork {
        tcp: TcpStream,
        writes: usize,
        held: Vec<u8>,
    }

    impl Cork {
        fn protected_records(&self) -> usize {
            let mut rest = &self.held[..];
            let mut n = 0;
            while let Some(Ok(end)) = next_record(rest) {
                n += usize::from(rest[0] == 0x17);
                rest = &rest[end..];
            }
            n
        }
    }

    impl AsyncRead for Cork {
        fn poll_read(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            Pin::new(&mut self.tcp).poll_read(cx, buf)
        }
    }

    impl AsyncWrite for Cork {
        fn poll_write(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            self.writes += 1;
            if self.writes == 1 {
                return Pin::new(&mut self.tcp).poll_write(cx, buf);
            }
            self.held.extend_from_slice(buf);
            if self.protected_records() >= 2 {
                let held = std::mem::take(&mut self.held);
                // Loopback takes a few hundred bytes at once.
                let n = ready!(Pin::new(&mut self.tcp).poll_write(cx, &held))?;
                assert_eq!(n, held.len());
            }
            Poll::Ready(Ok(buf.len()))
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.tcp).poll_shutdown(cx)
        }
    }

    /// A TLS session's stream fits jemalloc's 512-byte class (what every idle `wss://`
    /// session holds of it: rustls's connection was 1224 bytes inline, plus its heap).
    #[test]
    fn a_tls_stream_stays_small() {
        let size = std::mem::size_of::<ServerTls>();
        assert!(size <= 512, "{size}");
    }

    /// A request that arrives with the client's Finished is read at once: the handshake
    /// leaves it unread (rustls is given a record at a time), and it must not then wait
    /// for more input. TLS 1.3 on either engine.
    #[tokio::test]
    async fn data_behind_the_finished_is_read_at_once() {
        for compact in [true, false] {
            let (server_config, client_config) = configs_with(&rustls::version::TLS13, compact);
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let server = tokio::spawn(async move {
                let (tcp, _) = listener.accept().await.unwrap();
                accept_tls(tcp, server_config).await.unwrap()
            });
            let tcp = TcpStream::connect(addr).await.unwrap();
            let cork = Cork {
                tcp,
                writes: 0,
                held: Vec::new(),
            };
            let mut client = tokio_rustls::TlsConnector::from(client_config)
                .connect(ServerName::try_from("localhost").unwrap(), cork)
                .await
                .unwrap();
            client.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
            let mut server = server.await.unwrap();
            assert!(server.input.is_empty(), "the request was left unread");
            let mut got = [0u8; 18];
            let read = tokio::time::timeout(Duration::from_secs(10), server.read_exact(&mut got));
            read.await.expect("the request waits").unwrap();
            assert_eq!(&got, b"GET / HTTP/1.1\r\n\r\n");
        }
    }

    /// The handshake and records arriving a byte at a time, and a key update from the client
    /// (which asks for ours back) in the middle of the traffic.
    #[tokio::test]
    async fn split_records_and_key_updates() {
        let (mut server, mut client) = pair(&rustls::version::TLS13, Dribble).await;
        let msg = pattern(40_000, 3);
        client.write_all(&msg[..20_000]).await.unwrap();
        client.get_mut().1.refresh_traffic_keys().unwrap();
        client.write_all(&msg[20_000..]).await.unwrap();
        client.flush().await.unwrap();
        let mut got = vec![0; msg.len()];
        server.read_exact(&mut got).await.unwrap();
        assert!(got == msg);
        // Our answer to the key update went out ahead of this: the client decrypts it.
        server_says(&mut server, &mut client, b"after the key update").await;
        assert_idle(&server);
    }

    /// A TCP end without close_notify is an error (a truncation looks the same), and a
    /// record that fails to decrypt is `InvalidData`, answered with an alert.
    #[tokio::test]
    async fn truncation_and_corruption_are_errors() {
        let (mut server, client) = pair(&rustls::version::TLS13, |t| t).await;
        let (mut tcp, _) = client.into_inner();
        tcp.shutdown().await.unwrap();
        let err = server.read(&mut [0u8; 100]).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);

        let (mut server, client) = pair(&rustls::version::TLS13, |t| t).await;
        let (mut tcp, _) = client.into_inner();
        // An application-data record whose ciphertext is garbage.
        let mut record = vec![0x17, 0x03, 0x03, 0x00, 0x40];
        record.extend_from_slice(&[0x55; 0x40]);
        tcp.write_all(&record).await.unwrap();
        let err = server.read(&mut [0u8; 100]).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        drop(server);
        // The alert (bad_record_mac) reached the client, encrypted, after the session
        // tickets: the last record is 19 bytes (level, description, content type, 16 of tag).
        let mut got = Vec::new();
        tcp.read_to_end(&mut got).await.unwrap();
        let mut records = Vec::new();
        let mut rest = &got[..];
        while rest.len() >= 5 {
            let len = usize::from(u16::from_be_bytes([rest[3], rest[4]]));
            records.push((rest[0], len));
            rest = &rest[(5 + len).min(rest.len())..];
        }
        assert_eq!(records.last(), Some(&(0x17, 19)), "{records:?}");
    }

    /// A peer that keeps asking for key updates while we only read piles nothing up: one
    /// answer waits for our next write and goes ahead of it. (Each answer used to be
    /// queued at once: 27 bytes per request, and before the first write nothing is sent.)
    #[tokio::test]
    async fn key_update_requests_pile_nothing_up() {
        let (mut server, mut client) = pair(&rustls::version::TLS13, |t| t).await;
        let tickets = server.out.len();
        for i in 0..200u8 {
            client.get_mut().1.refresh_traffic_keys().unwrap();
            client.write_all(&[i]).await.unwrap();
            client.flush().await.unwrap();
            let mut got = [0u8; 1];
            server.read_exact(&mut got).await.unwrap();
            assert_eq!(got[0], i);
            assert_eq!(server.out.len(), tickets, "queued while only reading");
        }
        server_says(&mut server, &mut client, b"reply").await;
        assert_idle(&server);
    }

    /// A TLS 1.3 server's session tickets wait for its first write and go out with it: a
    /// read does not send them, the first write leaves nothing queued, and they arrive
    /// intact (the client resumes with one).
    #[tokio::test]
    async fn tickets_go_out_with_the_first_write() {
        let (server_config, client_config, listener, addr) = tls13_listener().await;
        let connector = tokio_rustls::TlsConnector::from(client_config);
        let name = ServerName::try_from("localhost").unwrap();
        for round in 0..2 {
            let (mut server, mut client) = tokio::join!(
                async {
                    let (tcp, _) = listener.accept().await.unwrap();
                    accept_tls(tcp, server_config.clone()).await.unwrap()
                },
                async {
                    let tcp = TcpStream::connect(addr).await.unwrap();
                    connector.connect(name.clone(), tcp).await.unwrap()
                }
            );
            if round == 1 {
                let kind = client.get_ref().1.handshake_kind();
                assert_eq!(kind, Some(rustls::HandshakeKind::Resumed));
                break;
            }
            assert!(server.held && !server.out.is_empty(), "tickets held");
            client.write_all(b"ping").await.unwrap();
            let mut got = [0u8; 4];
            server.read_exact(&mut got).await.unwrap();
            assert_eq!(&got, b"ping");
            assert!(
                server.held && !server.out.is_empty(),
                "a read sent the tickets"
            );
            server.write_all(b"pong").await.unwrap();
            assert!(!server.held && server.out.is_empty(), "left queued");
            client.read_exact(&mut got).await.unwrap();
            assert_eq!(&got, b"pong");
            assert_idle(&server);
        }
    }

    /// A client keeps rustls's `KernelConnection` until the server's first data, for the
    /// tickets the server sends ahead of it (the next connection resumes with one), and then
    /// lets it go, on its own key schedule from the handshake on.
    #[tokio::test]
    async fn a_client_keeps_its_tickets_until_the_servers_first_data() {
        let (server_config, client_config, listener, addr) = tls13_listener().await;
        let server = tokio::spawn(async move {
            let mut kinds = Vec::new();
            for _ in 0..2 {
                let (tcp, _) = listener.accept().await.unwrap();
                let accepted = accept(tcp, server_config.clone(), |c| c.handshake_kind());
                let Accepted::Tls(mut tls, kind) = accepted.await.unwrap() else {
                    panic!("taken for plain HTTP");
                };
                kinds.push(kind);
                let mut got = [0u8; 4];
                tls.read_exact(&mut got).await.unwrap();
                // The held tickets, then two records, in one segment.
                tls.write_all(&pattern(20_000, 3)).await.unwrap();
                tls.read_exact(&mut got).await.unwrap();
                tls.write_all(&got).await.unwrap();
            }
            kinds
        });
        for _ in 0..2 {
            let mut client = connect_localhost(addr, client_config.clone()).await;
            assert_eq!(engine(&client), "tls13, keeping tickets");
            client.write_all(b"ping").await.unwrap();
            let mut got = vec![0u8; 20_000];
            client.read_exact(&mut got[..10]).await.unwrap();
            assert_eq!(engine(&client), "tls13");
            client.read_exact(&mut got[10..]).await.unwrap();
            assert!(got == pattern(20_000, 3));
            client.write_all(b"more").await.unwrap();
            let mut back = [0u8; 4];
            client.read_exact(&mut back).await.unwrap();
            assert_eq!(&back, b"more");
        }
        let kinds = server.await.unwrap();
        let resumed = Some(rustls::HandshakeKind::Resumed);
        assert_eq!(kinds, [Some(rustls::HandshakeKind::Full), resumed]);
    }

    /// A server (rustls's own) that asks for a key update ahead of its first data: the
    /// client's answer reaches it ahead of the client's next data, which it reads.
    #[tokio::test]
    async fn a_key_update_asked_for_before_the_first_data_is_answered() {
        let (server_config, client_config, listener, addr) = tls13_listener().await;
        let server = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            let acceptor = tokio_rustls::TlsAcceptor::from(server_config);
            let mut tls = acceptor.accept(tcp).await.unwrap();
            let mut got = [0u8; 4];
            tls.read_exact(&mut got).await.unwrap();
            tls.get_mut().1.refresh_traffic_keys().unwrap();
            tls.write_all(b"101").await.unwrap();
            tls.flush().await.unwrap();
            tls.read_exact(&mut got).await.map(|_| got)
        });
        let mut client = ping_for_101(addr, client_config).await;
        client.write_all(b"more").await.unwrap();
        assert_eq!(server.await.unwrap().unwrap(), *b"more");
    }

    /// A session ticket split over two records, the first of them in the same read as the
    /// server's first data, the second in a later one: taken whole (and dropped: it came
    /// after the data), and the data after it arrives.
    #[tokio::test]
    async fn a_ticket_split_over_reads_is_taken_whole() {
        let (server_config, client_config, listener, addr) = tls13_listener().await;
        let server = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            let mut tls = accept_tls(tcp, server_config).await.unwrap();
            let mut got = [0u8; 4];
            tls.read_exact(&mut got).await.unwrap();
            // Lifetime, age add, a 1-byte nonce, an 8-byte ticket, no extensions.
            let mut ticket = vec![4, 0, 0, 22, 0, 0, 0, 60, 1, 2, 3, 4, 1, 0, 0, 8];
            ticket.extend_from_slice(b"abcdefgh\0\0");
            let mut send = |typ: u8, content: &[u8], records: &mut Vec<u8>| {
                let Engine::Tls13(layer) = &mut tls.engine else {
                    panic!("the server is on rustls");
                };
                let mut record = vec![0u8; content.len() + tls_records::OVERHEAD];
                let n = layer.seal_record(typ, content, &mut record).unwrap();
                records.extend_from_slice(&record[..n]);
            };
            let (mut first, mut second) = (Vec::new(), Vec::new());
            send(23, b"101", &mut first);
            send(22, &ticket[..6], &mut first);
            send(22, &ticket[6..], &mut second);
            send(23, b"after", &mut second);
            // The tickets rustls sealed, held for the first write, go first.
            let mut wire = std::mem::take(&mut tls.out);
            tls.held = false;
            wire.extend_from_slice(&first);
            tls.tcp.write_all(&wire).await.unwrap();
            tls.read_exact(&mut got).await.unwrap();
            tls.tcp.write_all(&second).await.unwrap();
            tls.read_exact(&mut got).await.unwrap();
        });
        let mut client = ping_for_101(addr, client_config).await;
        client.write_all(b"next").await.unwrap();
        let mut got = [0u8; 5];
        client.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"after");
        client.write_all(b"done").await.unwrap();
        server.await.unwrap();
    }

    /// A connection that opens with an HTTP request comes back as plain HTTP, with what the
    /// handshake read of the request and nothing written to it.
    #[tokio::test]
    async fn plain_http_is_handed_back_with_its_bytes() {
        let (addr, server) = spawn_accept().await;
        let request = b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n";
        let mut tcp = TcpStream::connect(addr).await.unwrap();
        tcp.write_all(request).await.unwrap();
        let Accepted::PlainHttp(mut stream, head) = server.await.unwrap().unwrap() else {
            panic!("taken for TLS");
        };
        assert!(!head.is_empty() && request.starts_with(&head), "{head:?}");
        // Nothing was written: the first thing the client reads is what the caller sends.
        stream.write_all(b"HTTP/1.1 400").await.unwrap();
        let mut got = [0u8; 12];
        tcp.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"HTTP/1.1 400");
    }

    /// The last write carries the `close_notify`: the peer reads the bytes, then a clean end
    /// of file; the TCP side is not shut (the socket's close sends the FIN), and nothing may
    /// be written after it. TLS 1.3 and 1.2.
    #[tokio::test]
    async fn the_last_write_carries_close_notify() {
        for version in [&rustls::version::TLS13, &rustls::version::TLS12] {
            let (mut server, mut client) = pair(version, |t| t).await;
            let n = std::future::poll_fn(|cx| server.poll_write_last(cx, b"bye"))
                .await
                .unwrap();
            assert_eq!(n, 3);
            assert!(server.closed_notify && !server.tcp_shut && server.out.is_empty());
            let mut got = Vec::new();
            client.read_to_end(&mut got).await.unwrap();
            assert_eq!(got, b"bye", "the bytes, then a clean end (close_notify)");
            std::future::poll_fn(|cx| server.poll_close_notify(cx))
                .await
                .unwrap();
            let err = server.write_all(b"more").await.unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::BrokenPipe);
            assert_idle(&server);
        }
    }

    /// A client that is not speaking TLS gets an alert and the handshake fails.
    #[tokio::test]
    async fn a_bad_client_hello_fails_the_handshake() {
        let (addr, server) = spawn_accept().await;
        let mut tcp = TcpStream::connect(addr).await.unwrap();
        // A handshake record holding an empty ServerHello instead of a ClientHello.
        tcp.write_all(&[0x16, 0x03, 0x01, 0x00, 0x04, 0x02, 0x00, 0x00, 0x00])
            .await
            .unwrap();
        let Err(err) = server.await.unwrap() else {
            panic!("the handshake succeeded");
        };
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        let mut alert = [0u8; 7];
        tcp.read_exact(&mut alert).await.unwrap();
        assert_eq!(alert[0], 0x15, "a plaintext alert record");
    }
}
