//! Zero-downtime binary upgrade: a new wsgate process takes the listening sockets over from
//! the running one, which then drains and exits.
//!
//! Why hand sockets over instead of binding again with `SO_REUSEPORT`: every reuseport
//! socket has its own accept queue, and when the old process closes its socket the kernel
//! resets whatever was queued on it. A socket handed over is the *same* socket (one queue,
//! now read by the new process), so no connection is lost, and nothing is refused while the
//! new process starts.
//!
//! Two ways in:
//! - **Inheritance** (systemd socket activation): `LISTEN_FDS`/`LISTEN_PID`/`LISTEN_FDNAMES`
//!   ([`Inherited::from_systemd`]); systemd keeps its own copy of each socket, so connections
//!   queue across a restart.
//! - **Hand-over** over a Unix socket (`[upgrade] socket`): a running wsgate serves it
//!   ([`serve`]); a new one started with the same setting connects first ([`take_over`]),
//!   receives the listening sockets (proxy listeners and the admin listener) as SCM_RIGHTS
//!   ancillary data, starts on them and says `ready`; the old process stops accepting, says
//!   `done`, tells systemd the new main PID, answers the first request of each connection it
//!   had already accepted, then drains its sessions as a shutdown does (1001, spread by
//!   `[shutdown] close_spread`) and exits. If the new process fails before `ready` (a bad
//!   config, a port it cannot bind), nothing changed: the old one still accepts.
//!
//! The exchange, one line each way per step:
//! ```text
//! new → old   wsgate-upgrade 1 <pid>
//! old → new   listeners <name> <name> …   (+ one descriptor per name)
//! new → old   ready
//! old → new   done
//! ```
//! A proxy listener's name is its address as configured, the admin listener's `admin`; a
//! listener whose socket systemd passed has `@systemd` after its address
//! ([`SYSTEMD_MARK`]), so that the successor too keeps it (see `Listeners::prepare`). A
//! successor from before the mark finds the socket by its bound address instead.

use std::net::SocketAddr;
use std::os::fd::{FromRawFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use sendfd::{RecvWithFd, SendWithFd};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, UnixListener, UnixStream};
use tokio_util::sync::CancellationToken;

use crate::proxy::ProxyState;

/// The successor a SIGUSR2 started, from its start until it exits (its pid; 0: none). While
/// it runs it reads the config file itself, so a reload here (SIGHUP, `POST /api/reload`, the
/// file watcher) would be applied by this process, reported done, and lost at the hand-over:
/// every way in refuses or defers it meanwhile.
#[derive(Debug, Clone, Default)]
pub struct Successor(Arc<std::sync::atomic::AtomicU32>);

impl Successor {
    pub fn started(&self, pid: u32) {
        (self.0).store(pid.max(1), std::sync::atomic::Ordering::Release);
    }

    pub fn exited(&self) {
        (self.0).store(0, std::sync::atomic::Ordering::Release);
    }

    /// The pid of a successor that has not exited yet.
    pub fn running(&self) -> Option<u32> {
        Some((self.0).load(std::sync::atomic::Ordering::Acquire)).filter(|&pid| pid != 0)
    }

    /// Why a reload is refused while a successor runs: `reload::from_file`'s error and
    /// `POST /api/reload`'s 409 say the same.
    pub fn reload_refusal(&self) -> Option<String> {
        self.running().map(|pid| {
            format!(
                "a binary upgrade is under way: the new process (pid {pid}) reads the config \
                 file itself; reload it once it serves"
            )
        })
    }
}

/// The first line of the exchange: a successor of another protocol version is refused.
const HELLO: &str = "wsgate-upgrade 1";
/// The most sockets one hand-over carries (listeners and the admin listener).
const MAX_SOCKETS: usize = 256;
/// How long the old process waits for its successor to start once it has the sockets.
const SUCCESSOR_START_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a step of the exchange may take otherwise.
const STEP_TIMEOUT: Duration = Duration::from_secs(10);
/// The name of the admin listener's socket in the exchange.
pub const ADMIN: &str = "admin";
/// After a proxy listener's name in the exchange: systemd passed its socket, and holds it.
pub const SYSTEMD_MARK: &str = "@systemd";

/// Listening sockets this process did not bind itself: each is taken by the listener it
/// belongs to, by name (the configured address, or `admin`) or by bound address.
#[derive(Debug, Default)]
pub struct Inherited {
    sockets: Vec<Socket>,
    /// Where the sockets systemd passed are bound, by name, taken or not: systemd keeps its
    /// own copy of each, so their ports stay taken for any other address (see
    /// [`systemd_hint`]).
    systemd: Vec<(String, SocketAddr)>,
}

#[derive(Debug)]
struct Socket {
    name: String,
    socket: std::net::TcpListener,
    /// systemd passed it (to this process, or to the one that handed it over).
    systemd: bool,
}

impl Inherited {
    /// The sockets systemd passed (socket activation), if `LISTEN_PID` is this process.
    /// Anything that is not a listening TCP socket is logged and closed.
    pub fn from_systemd() -> Inherited {
        let fds = match sd_notify::listen_fds_with_names() {
            Ok(fds) => fds,
            Err(e) => {
                tracing::warn!(error = %e, "ignoring LISTEN_FDS: {e}");
                return Inherited::default();
            }
        };
        let mut inherited = Inherited::default();
        for (fd, name) in fds {
            // SAFETY: systemd passed this descriptor to this process (LISTEN_PID is ours) for
            // it to own; nothing else in the process refers to it.
            let socket = unsafe { socket2::Socket::from_raw_fd(fd) };
            inherited.add(name, socket, "systemd", true);
        }
        inherited
    }

    /// Adds `other`'s sockets to these.
    pub fn extend(&mut self, other: Inherited) {
        self.sockets.extend(other.sockets);
        self.systemd.extend(other.systemd);
    }

    /// Where the sockets systemd passed are bound, by name.
    pub fn systemd(&self) -> &[(String, SocketAddr)] {
        &self.systemd
    }

    fn add(&mut self, name: String, socket: socket2::Socket, from: &str, systemd: bool) {
        let addr = socket.local_addr().ok().and_then(|a| a.as_socket());
        let Some(addr) = addr.filter(|_| socket.r#type().ok() == Some(socket2::Type::STREAM))
        else {
            tracing::warn!(name = %name, from, "ignoring an inherited descriptor that is not a TCP socket");
            return;
        };
        if systemd {
            self.systemd.push((name.clone(), addr));
        }
        // Not passed on to any process this one starts (a successor gets them by hand-over).
        let _ = socket.set_cloexec(true);
        self.sockets.push(Socket {
            name,
            socket: socket.into(),
            systemd,
        });
    }

    /// The socket for the listener configured at `addr`: the one named so, or else one bound
    /// to exactly that address.
    pub fn take(&mut self, addr: SocketAddr) -> Option<TcpListener> {
        let name = addr.to_string();
        let i = self
            .sockets
            .iter()
            .position(|s| s.name == name || s.socket.local_addr().ok() == Some(addr))?;
        self.adopt(i)
    }

    /// The admin listener's socket (configured at `addr`), if the predecessor's is still at
    /// that address (port 0: any port on its IP). An `[admin] listen` that changed is bound
    /// anew: a binary upgrade is how that change is applied.
    pub fn take_admin(&mut self, addr: SocketAddr) -> Option<TcpListener> {
        let at = |s: &std::net::TcpListener| {
            s.local_addr()
                .is_ok_and(|l| l == addr || (addr.port() == 0 && l.ip() == addr.ip()))
        };
        let i = self.sockets.iter().position(|s| {
            (s.name == ADMIN && at(&s.socket)) || s.socket.local_addr().is_ok_and(|l| l == addr)
        })?;
        self.adopt(i)
    }

    fn adopt(&mut self, i: usize) -> Option<TcpListener> {
        let Socket { name, socket, .. } = self.sockets.remove(i);
        let adopted = socket
            .set_nonblocking(true)
            .and_then(|()| TcpListener::from_std(socket));
        match adopted {
            Ok(listener) => {
                tracing::info!(name = %name, "listening on an inherited socket");
                Some(listener)
            }
            Err(e) => {
                tracing::warn!(name = %name, error = %e, "cannot use an inherited socket; binding anew");
                None
            }
        }
    }

    /// Logs and closes the sockets no listener took (the config no longer has them). One
    /// that systemd passed goes on listening in systemd's copy, with nobody to accept: what
    /// connects there waits unanswered, which the warning says.
    pub fn close_unused(self) {
        for s in self.sockets {
            let at = s
                .socket
                .local_addr()
                .map(|a| a.to_string())
                .unwrap_or_default();
            if s.systemd {
                tracing::warn!(name = %s.name, listen = %at, "systemd passed a socket that no [[listener]] is configured at: closed here, but systemd keeps it listening, and connections to it will wait unanswered. Add a [[listener]] at its address, or remove it from the socket unit (ListenStream=)");
            } else {
                tracing::warn!(name = %s.name, listen = %at, "inherited socket not in the config: closed");
            }
        }
    }
}

/// A running wsgate that is handing its sockets to this process.
#[derive(Debug)]
pub struct Predecessor {
    lines: BufReader<UnixStream>,
    pid: u32,
}

/// Connects to the process serving hand-overs at `path`, if there is one, and takes its
/// listening sockets. `Ok(None)`: nobody is there (a stale socket file is no one), so this
/// process binds its own.
pub async fn take_over(path: &Path) -> std::io::Result<Option<(Predecessor, Inherited)>> {
    let stream = match UnixStream::connect(path).await {
        Ok(s) => s,
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
            ) =>
        {
            return Ok(None);
        }
        Err(e) => {
            return Err(with_context(e, &format!("cannot reach {}", path.display())));
        }
    };
    // Two processes write to one stderr from now on (when the operator started this one by
    // hand, not through SIGUSR2): each line says whose it is.
    crate::telemetry::show_pid();
    let hello = format!("{HELLO} {}\n", std::process::id());
    let mut lines = BufReader::new(stream);
    step(lines.get_mut().write_all(hello.as_bytes())).await?;
    let (line, fds) = step(recv_line_with_fds(lines.get_mut())).await?;
    let mut words = line.split_whitespace();
    if words.next() != Some("listeners") {
        return Err(protocol(&format!("expected the listeners, got {line:?}")));
    }
    let names: Vec<&str> = words.collect();
    let mut inherited = Inherited::default();
    for (i, fd) in fds.into_iter().enumerate() {
        // SAFETY: the kernel installed this descriptor in this process for this message; it
        // is ours alone.
        let socket = unsafe { socket2::Socket::from_raw_fd(fd) };
        let name = names.get(i).map_or("?", |n| n);
        let (name, systemd) = match name.strip_suffix(SYSTEMD_MARK) {
            Some(addr) => (addr, true),
            None => (name, false),
        };
        inherited.add(name.to_string(), socket, "the running process", systemd);
    }
    let pid = peer_pid(lines.get_ref()).unwrap_or(0);
    tracing::info!(
        from_pid = pid,
        sockets = inherited.sockets.len(),
        "took the listening sockets over"
    );
    Ok(Some((Predecessor { lines, pid }, inherited)))
}

impl Predecessor {
    /// Tells the old process this one is serving, and waits until it has stopped accepting.
    /// Returns the backends it had drained through the admin API (route, backend), for
    /// [`keep_drains`]: an operator who drained one for maintenance must not find it taking
    /// sessions again because the proxy was upgraded.
    pub async fn ready(mut self) -> std::io::Result<Vec<(String, String)>> {
        step(self.lines.get_mut().write_all(b"ready\n")).await?;
        let mut line = String::new();
        step(self.lines.read_line(&mut line)).await?;
        if line.trim() != "done" {
            return Err(protocol(&format!("expected done, got {line:?}")));
        }
        tracing::info!(
            old_pid = self.pid,
            "the previous process has stopped accepting and drains"
        );
        // A process from before the drained line closes here (EOF: none).
        let mut line = String::new();
        let _ = step(self.lines.read_line(&mut line)).await;
        let pairs: Vec<(String, String)> = line
            .trim()
            .strip_prefix("drained ")
            .and_then(|json| serde_json::from_str(json).ok())
            .unwrap_or_default();
        Ok(pairs)
    }
}

/// Serves hand-over requests at `path` for the life of the process: binds it (replacing a
/// stale file), and hands the sockets to the first successor that completes the exchange;
/// then stops accepting and starts the drain through `hand_over_done`.
pub async fn serve(state: Arc<ProxyState>, path: PathBuf, stop: CancellationToken) {
    // Only a socket is replaced (validation said so; the file may have changed since).
    match std::fs::symlink_metadata(&path) {
        Ok(m) if !std::os::unix::fs::FileTypeExt::is_socket(&m.file_type()) => {
            tracing::error!(socket = %path.display(), "cannot serve binary upgrades: the path exists and is not a socket");
            return;
        }
        Ok(_) => {
            let _ = std::fs::remove_file(&path);
        }
        Err(_) => {}
    }
    let listener = match UnixListener::bind(&path) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(socket = %path.display(), error = %e, "cannot serve binary upgrades");
            return;
        }
    };
    tracing::info!(socket = %path.display(), "binary upgrades: a new wsgate started with this config takes the sockets over");
    loop {
        let stream = tokio::select! {
            _ = stop.cancelled() => break,
            r = listener.accept() => match r {
                Ok((s, _)) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "upgrade socket accept failed");
                    continue;
                }
            },
        };
        // A shutdown that begins during the exchange (up to a minute, while the successor
        // starts) wins: the hand-over is abandoned before `done`, so systemd is never told
        // of a main PID it did not signal, and this process drains as asked.
        let handed = tokio::select! {
            _ = stop.cancelled() => {
                tracing::warn!("a shutdown began during a binary upgrade: the hand-over is abandoned");
                break;
            }
            r = hand_over(&state, stream) => r,
        };
        match handed {
            Ok(pid) => {
                tracing::info!(new_pid = pid, "handed the listening sockets over; draining");
                crate::notify::main_pid(pid);
                // The successor has bound the path anew; this one's file is not ours now.
                drop(listener);
                drain_after_hand_over(&state).await;
                return;
            }
            Err(e) => {
                tracing::warn!(error = %e, "binary upgrade aborted: still serving");
            }
        }
    }
    let _ = std::fs::remove_file(&path);
}

/// One exchange with a successor; `Ok(pid)` once it serves and this process has stopped
/// accepting.
async fn hand_over(state: &ProxyState, stream: UnixStream) -> std::io::Result<u32> {
    let mut lines = BufReader::new(stream);
    let mut hello = String::new();
    step(lines.read_line(&mut hello)).await?;
    if hello.trim().strip_prefix(HELLO).is_none() {
        return Err(protocol(&format!("unknown hello {:?}", hello.trim())));
    }
    crate::telemetry::show_pid();
    // The successor's pid (told to systemd as the new main PID) from the kernel, not from the
    // text it sent.
    let pid = peer_pid(lines.get_ref())
        .filter(|&p| p != 0)
        .ok_or_else(|| protocol("the new process's pid is unknown (no peer credentials)"))?;
    let sockets = state.listeners.sockets();
    let names: Vec<String> = sockets.iter().map(|(n, _)| n.clone()).collect();
    let fds: Vec<RawFd> = sockets.iter().map(|(_, fd)| *fd).collect();
    let message = format!("listeners {}\n", names.join(" "));
    tracing::info!(
        new_pid = pid,
        sockets = crate::telemetry::list(&names),
        "a new process asks for the listening sockets"
    );
    step(send_with_fds(lines.get_ref(), message.as_bytes(), &fds)).await?;
    let mut ready = String::new();
    match tokio::time::timeout(SUCCESSOR_START_TIMEOUT, lines.read_line(&mut ready)).await {
        Ok(Ok(_)) if ready.trim() == "ready" => {}
        Ok(Ok(0)) => return Err(protocol("the new process ended before it was ready")),
        Ok(Ok(_)) => return Err(protocol(&format!("expected ready, got {:?}", ready.trim()))),
        Ok(Err(e)) => return Err(e),
        Err(_) => return Err(protocol("the new process did not get ready in time")),
    }
    state.listeners.stop_accepting();
    state.listeners.handed_over.cancel();
    // Before the drain counts the connections still to answer: a loop on another worker can
    // be holding one it accepted as it was told to stop (the successor's queue is the same
    // socket, so nothing else reaches this process). The loops return at their next poll.
    if tokio::time::timeout(STEP_TIMEOUT, state.listeners.accepting_stopped())
        .await
        .is_err()
    {
        tracing::warn!("an accept loop did not stop in time; draining anyway");
    }
    step(lines.get_mut().write_all(b"done\n")).await?;
    // The backends drained through the admin API, after `done`: a successor from before
    // this line reads `done` and closes, and one from after reads it if it comes (an older
    // process closes after `done`). Best effort: the hand-over is complete already.
    let drained = format!(
        "drained {}\n",
        serde_json::Value::from(drained_backends(state))
    );
    let _ = step(lines.get_mut().write_all(drained.as_bytes())).await;
    Ok(pid)
}

/// The backends drained through the admin API, as `[route, backend]` pairs.
fn drained_backends(state: &ProxyState) -> Vec<Vec<String>> {
    state
        .current()
        .routes
        .iter()
        .flat_map(|r| {
            r.pool
                .backends()
                .iter()
                .filter(|b| b.is_draining())
                .map(|b| vec![r.name.to_string(), b.name.to_string()])
                .collect::<Vec<_>>()
        })
        .collect()
}

/// Drains, in this process, the backends the previous one had drained (`drained` pairs of
/// route and backend names) that this config still has; returns how many.
pub fn keep_drains(state: &ProxyState, drained: &[(String, String)]) -> usize {
    let generation = state.current();
    let mut kept = 0;
    for (route, backend) in drained {
        let found = generation
            .routes
            .iter()
            .filter(|r| *r.name == **route)
            .flat_map(|r| r.pool.backends().iter())
            .find(|b| *b.name == **backend);
        if let Some(b) = found {
            b.set_draining(true);
            kept += 1;
            tracing::info!(route = %route, backend = %backend, "backend drained by the previous process: kept drained");
        }
    }
    kept
}

/// After a hand-over: the connections this process accepted before it stopped get their
/// first request answered (up to their handshake timeout), then the process drains as on
/// SIGTERM.
async fn drain_after_hand_over(state: &Arc<ProxyState>) {
    let longest = state
        .current()
        .config
        .listeners
        .iter()
        .map(|l| l.handshake_timeout)
        .max()
        .unwrap_or_default();
    let deadline = tokio::time::Instant::now() + longest;
    let mut poll = tokio::time::interval(Duration::from_millis(20));
    while state.listeners.awaiting_answer() > 0 && tokio::time::Instant::now() < deadline {
        poll.tick().await;
    }
    state.shutdown(Duration::ZERO);
}

/// Sends `bytes` with `fds` attached, waiting for the socket to take them.
async fn send_with_fds(stream: &UnixStream, bytes: &[u8], fds: &[RawFd]) -> std::io::Result<()> {
    let mut sent = 0;
    while sent < bytes.len() {
        stream.writable().await?;
        // The descriptors travel with the first byte; none after it.
        let attach = if sent == 0 { fds } else { &[] };
        match stream.send_with_fd(&bytes[sent..], attach) {
            Ok(n) => sent += n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Reads one line and the descriptors that came with it (at most [`MAX_SOCKETS`]).
async fn recv_line_with_fds(stream: &UnixStream) -> std::io::Result<(String, Vec<RawFd>)> {
    let mut line = Vec::new();
    let mut fds = Vec::new();
    // One byte at a time: what follows the line is not this function's to consume.
    let mut byte = [0u8; 1];
    loop {
        stream.readable().await?;
        let mut got = [0 as RawFd; MAX_SOCKETS];
        match stream.recv_with_fd(&mut byte, &mut got) {
            Ok((0, _)) => return Err(protocol("the running process closed the connection")),
            Ok((_, nfds)) => {
                fds.extend_from_slice(&got[..nfds]);
                if byte[0] == b'\n' {
                    break;
                }
                line.push(byte[0]);
                if line.len() > 64 * 1024 {
                    return Err(protocol("line too long"));
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        }
    }
    Ok((String::from_utf8_lossy(&line).into_owned(), fds))
}

/// The process at the other end of a Unix socket.
fn peer_pid(stream: &UnixStream) -> Option<u32> {
    stream
        .peer_cred()
        .ok()?
        .pid()
        .and_then(|p| u32::try_from(p).ok())
}

async fn step<T>(f: impl Future<Output = std::io::Result<T>>) -> std::io::Result<T> {
    tokio::time::timeout(STEP_TIMEOUT, f)
        .await
        .unwrap_or_else(|_| Err(protocol("timed out")))
}

fn protocol(what: &str) -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::InvalidData,
        format!("hand-over: {what}"),
    )
}

fn with_context(e: std::io::Error, what: &str) -> std::io::Error {
    std::io::Error::new(e.kind(), format!("{what}: {e}"))
}
