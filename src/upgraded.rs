//! The raw sockets of a session.
//!
//! hyper hands an upgraded client connection over as its `Upgraded`: a boxed, type-erased
//! stream that every read and write of a session would go through. The relay wants the socket
//! itself, so this file downcasts the client's leg back to what the listener gave hyper (a
//! TCP stream, or a TLS stream over one) and keeps the bytes hyper had already read past the
//! handshake, which belong to the session. The backend's leg never went through hyper
//! (`backend/wire.rs`) and arrives as a socket already. This file owns nothing else: what
//! happens to those sockets is the relay's business (`relay.rs`), and when the session starts
//! is the orchestrator's (`proxy.rs`).

use std::io;
use std::os::fd::RawFd;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::head_guard::ClientIo;
use crate::hibernate::Sock;
use crate::tls_io::{ClientTls, ServerTls};

/// How long the client side of an accepted upgrade may take to complete after we answer 101.
/// hyper resolves it as soon as the 101 is written, so this only trips on a dead client.
const CLIENT_UPGRADE_TIMEOUT: Duration = Duration::from_secs(10);

/// Both legs as the relay uses them: the client's raw socket when hyper lets go of it and
/// the backend's, each with the bytes read past its handshake.
///
/// `keepalive`: turn TCP keepalive on for the client's socket (a route without pings, see
/// [`UpgradedIo::keepalive`]).
pub async fn upgraded_sockets(
    id: u64,
    client_upgrade: OnUpgrade,
    backend: (UpgradedIo, Bytes),
    keepalive: bool,
) -> Option<((UpgradedIo, Bytes), (UpgradedIo, Bytes))> {
    let client_up = match tokio::time::timeout(CLIENT_UPGRADE_TIMEOUT, client_upgrade).await {
        Ok(Ok(up)) => up,
        Ok(Err(e)) => {
            tracing::debug!(session = id, error = %e, "client upgrade failed");
            return None;
        }
        Err(_) => {
            tracing::debug!(session = id, "client upgrade timed out");
            return None;
        }
    };
    // The listener gave hyper each connection in a `HeadGuard` (`head_guard.rs`), which
    // holds no bytes of its own: taking the socket out of it loses nothing.
    let client = match client_up.downcast::<ClientIo<TcpStream>>() {
        Ok(parts) => {
            let (io, unread) = parts.io.into_inner().into_inner();
            (UpgradedIo::Tcp(io.into()), joined(parts.read_buf, unread))
        }
        Err(up) => match up.downcast::<ClientIo<ServerTls>>() {
            Ok(parts) => {
                let (io, unread) = parts.io.into_inner().into_inner();
                (
                    UpgradedIo::Tls(Box::new(io)),
                    joined(parts.read_buf, unread),
                )
            }
            Err(up) => (UpgradedIo::Hyper(Box::new(TokioIo::new(up))), Bytes::new()),
        },
    };
    if keepalive {
        client.0.keepalive();
    }
    Some((client, backend))
}

/// What hyper read past the handshake, then what it had not yet read of the sniffed prefix.
fn joined(read: Bytes, unread: Bytes) -> Bytes {
    if unread.is_empty() {
        read
    } else if read.is_empty() {
        unread
    } else {
        [read, unread].concat().into()
    }
}

/// An upgraded connection as the relay uses it: the socket itself when hyper lets go of it
/// (always, for plain TCP), so that reads and writes skip hyper's boxed wrapper; hyper's
/// `Upgraded` otherwise.
pub enum UpgradedIo {
    /// A plain TCP socket (out of the runtime while its session hibernates).
    Tcp(Sock),
    /// Boxed: a TLS stream is large, and most sessions are plain TCP behind a TLS terminator
    /// or TLS here; the enum stays small either way.
    Tls(Box<ServerTls>),
    /// A `wss://` backend.
    TlsClient(Box<ClientTls>),
    /// Whatever else hyper gave (boxed: rare, and larger than a socket).
    Hyper(Box<TokioIo<hyper::upgrade::Upgraded>>),
}

/// TCP keepalive's idle time, on sessions without pings: finds peers that vanished without a
/// FIN (NAT timeouts, pulled cables) on sessions that are otherwise idle for hours.
pub const TCP_KEEPALIVE_IDLE: Duration = Duration::from_secs(60);

impl UpgradedIo {
    /// The TCP socket under this leg, where there is one to reach.
    fn tcp(&self) -> Option<&TcpStream> {
        match self {
            UpgradedIo::Tcp(s) => s.tcp(),
            UpgradedIo::Tls(s) => s.tcp(),
            UpgradedIo::TlsClient(s) => s.tcp(),
            UpgradedIo::Hyper(_) => None,
        }
    }

    /// Takes a leg's socket out of the runtime (tokio forgets it and its wakers) for its
    /// session's hibernation (a TLS leg keeps its TLS state and sets its socket aside
    /// within). Its descriptor, for the lot to watch.
    pub fn sleep(&mut self) -> io::Result<RawFd> {
        match self {
            UpgradedIo::Tcp(s) => s.sleep(),
            UpgradedIo::Tls(s) => s.sleep(),
            UpgradedIo::TlsClient(s) => s.sleep(),
            UpgradedIo::Hyper(_) => Err(io::ErrorKind::Unsupported.into()),
        }
    }

    /// Brings a leg set aside by [`sleep`](Self::sleep) back into the current runtime.
    pub fn wake(&mut self) -> io::Result<()> {
        match self {
            UpgradedIo::Tcp(s) => s.wake(),
            UpgradedIo::Tls(s) => s.wake(),
            UpgradedIo::TlsClient(s) => s.wake(),
            UpgradedIo::Hyper(_) => Ok(()),
        }
    }

    /// The descriptor of a leg set aside by [`sleep`](Self::sleep).
    pub fn asleep_fd(&self) -> Option<RawFd> {
        match self {
            UpgradedIo::Tcp(s) => s.asleep_fd(),
            UpgradedIo::Tls(s) => s.asleep_fd(),
            UpgradedIo::TlsClient(s) => s.asleep_fd(),
            UpgradedIo::Hyper(_) => None,
        }
    }

    /// Turns TCP keepalive on ([`TCP_KEEPALIVE_IDLE`]), for a session whose route sends no
    /// pings: nothing else would notice a peer that vanished without a FIN. (An HTTP/2
    /// stream's connection has HTTP/2 pings of its own.)
    pub fn keepalive(&self) {
        let Some(tcp) = self.tcp() else { return };
        let keepalive = socket2::TcpKeepalive::new().with_time(TCP_KEEPALIVE_IDLE);
        if let Err(e) = socket2::SockRef::from(tcp).set_tcp_keepalive(&keepalive) {
            tracing::debug!(error = %e, "TCP keepalive failed");
        }
    }
}

/// A TCP peer still taking what was sent to it (see `Leg::still_taking`): the socket's send
/// queue holds bytes, unsent or unacknowledged (`TIOCOUTQ`), and the peer's last
/// acknowledgement (`TCP_INFO`) is less than `within` old. A reader that is slow but alive
/// opens its window as it reads, and each window update is an acknowledgement; a vanished
/// host sends none; a hung process's kernel answers only the window probes, which back off
/// past any pong timeout. Two system calls, made only when a pong is overdue.
fn tcp_still_taking(tcp: &TcpStream, within: Duration) -> bool {
    use std::os::fd::AsRawFd;
    let fd = tcp.as_raw_fd();
    let mut queued: libc::c_int = 0;
    // SAFETY: TIOCOUTQ writes one c_int through the pointer, which points at one.
    if unsafe { libc::ioctl(fd, libc::TIOCOUTQ, &mut queued) } != 0 || queued <= 0 {
        return false;
    }
    // SAFETY: tcp_info is plain integers, valid zeroed; getsockopt writes at most `len`
    // bytes of it (older kernels fewer) and sets `len`.
    let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
    let got = unsafe {
        libc::getsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&mut info as *mut libc::tcp_info).cast(),
            &mut len,
        )
    };
    let need = std::mem::offset_of!(libc::tcp_info, tcpi_last_ack_recv) + 4;
    got == 0 && len as usize >= need && u128::from(info.tcpi_last_ack_recv) < within.as_millis()
}

impl crate::relay::Leg for UpgradedIo {
    fn poll_write_last(
        &mut self,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self {
            UpgradedIo::Tls(s) => s.poll_write_last(cx, buf),
            UpgradedIo::TlsClient(s) => s.poll_write_last(cx, buf),
            _ => tokio::io::AsyncWrite::poll_write(Pin::new(self), cx, buf),
        }
    }

    fn poll_finish(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<bool>> {
        match self {
            UpgradedIo::Tcp(_) => Poll::Ready(Ok(true)),
            UpgradedIo::Tls(s) => s.poll_close_notify(cx).map_ok(|()| true),
            UpgradedIo::TlsClient(s) => s.poll_close_notify(cx).map_ok(|()| true),
            // hyper's `Upgraded` (an HTTP/2 stream): its shutdown sends END_STREAM, and
            // nothing is read after that. Dropping the stream then resets it with NO_ERROR
            // if the client has not ended its half (h2 does so for a server that has sent
            // its whole answer, RFC 9113 §8.1), rather than the session waiting out
            // `CLOSE_TIMEOUT` for an END_STREAM a client need not send once the closing
            // handshake is over.
            UpgradedIo::Hyper(s) => {
                tokio::io::AsyncWrite::poll_shutdown(Pin::new(&mut **s), cx).map_ok(|()| true)
            }
        }
    }

    fn send_fin(&mut self) {
        let tcp = match self {
            UpgradedIo::Tcp(s) => s.tcp(),
            UpgradedIo::Tls(s) => s.tcp(),
            UpgradedIo::TlsClient(s) => s.tcp(),
            UpgradedIo::Hyper(_) => None,
        };
        if let Some(tcp) = tcp {
            // Errors say the peer is gone already: nothing left to tell it.
            let _ = socket2::SockRef::from(tcp).shutdown(std::net::Shutdown::Write);
        }
    }

    fn done_once_answered(&self) -> bool {
        true
    }

    fn still_taking(&self, within: Duration) -> bool {
        // An HTTP/2 stream shares its connection: its queue says nothing of this stream.
        self.tcp().is_some_and(|tcp| tcp_still_taking(tcp, within))
    }

    fn can_hibernate(&self) -> bool {
        match self {
            UpgradedIo::Tcp(s) => s.is_awake(),
            UpgradedIo::Tls(s) => s.can_hibernate(),
            UpgradedIo::TlsClient(s) => s.can_hibernate(),
            UpgradedIo::Hyper(_) => false,
        }
    }
}

impl tokio::io::AsyncRead for UpgradedIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            UpgradedIo::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            UpgradedIo::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            UpgradedIo::TlsClient(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            UpgradedIo::Hyper(s) => Pin::new(&mut **s).poll_read(cx, buf),
        }
    }
}

impl tokio::io::AsyncWrite for UpgradedIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            UpgradedIo::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            UpgradedIo::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            UpgradedIo::TlsClient(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            UpgradedIo::Hyper(s) => Pin::new(&mut **s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            UpgradedIo::Tcp(s) => Pin::new(s).poll_flush(cx),
            UpgradedIo::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
            UpgradedIo::TlsClient(s) => Pin::new(s.as_mut()).poll_flush(cx),
            UpgradedIo::Hyper(s) => Pin::new(&mut **s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            UpgradedIo::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            UpgradedIo::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
            UpgradedIo::TlsClient(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
            UpgradedIo::Hyper(s) => Pin::new(&mut **s).poll_shutdown(cx),
        }
    }
}
