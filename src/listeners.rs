//! The proxy's listening sockets while the process runs: bound at start (or taken over from
//! systemd or from the process being upgraded, see [`crate::upgrade`]), added, removed and
//! re-configured by a reload, and handed to a successor on a binary upgrade.
//!
//! A listener's identity is its address as configured (`0.0.0.0:443`; `127.0.0.1:0` in
//! tests), so a reload that keeps a `[[listener]]` keeps its socket: nothing queued in the
//! kernel is lost and nobody sees a refused connection. A listener whose settings changed
//! (`ListenerConfig::fingerprint`: its TLS, HTTP/2, PROXY protocol, timeouts or header limits)
//! gets a new accept loop on the same socket; the connections the old loop accepted go on
//! under the settings they started with.

use std::net::SocketAddr;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::accept;
use crate::config::ListenerConfig;
use crate::metrics::ListenerStats;
use crate::proxy::ProxyState;
use crate::upgrade::{Inherited, SYSTEMD_MARK};

/// Every running listener, and what their connections share.
#[derive(Debug, Default)]
pub struct Listeners {
    running: Mutex<Vec<Running>>,
    /// The shutdown: stops every accept loop, and tells every connection to finish.
    pub stop: CancellationToken,
    /// The end of the shutdown's grace: every connection still open is dropped by its own
    /// task, with what it was serving (a handshake waiting on its backend records its
    /// refusal then, while the log still writes), not left to the runtime's end.
    pub cut: CancellationToken,
    /// Every connection task, for the shutdown to wait on.
    pub conns: TaskTracker,
    /// Every accept loop, on every worker: a hand-over waits until they have all returned
    /// ([`Listeners::accepting_stopped`]), since one told to stop may be accepting right then.
    accept_loops: TaskTracker,
    /// Connections accepted whose first request has not been answered yet: a process that
    /// handed its listeners over serves these before it drains (`crate::upgrade`).
    pub awaiting_answer: AtomicUsize,
    /// A successor has taken the listening sockets over: every connection closes after what
    /// it is serving (HTTP/2: GOAWAY), before the drain proper begins (`accept::serve`).
    pub handed_over: CancellationToken,
    /// The admin listener's socket, handed over with the others.
    admin: Mutex<Option<AdminSocket>>,
    /// Where the sockets systemd passed at start are bound, by name (see
    /// [`Inherited::systemd`]): a reload cannot bind another address on their ports.
    systemd: std::sync::OnceLock<Vec<(String, SocketAddr)>>,
    /// The other workers' runtimes (`[runtime] scheduler = "per_worker"`): each runs an accept
    /// loop of its own on every listener. Empty: the runtime that starts the gateway does all.
    workers: std::sync::OnceLock<crate::workers::Workers>,
}

#[derive(Debug)]
struct AdminSocket {
    socket: Arc<TcpListener>,
    /// Stops the admin accept loop only.
    accepting: CancellationToken,
}

/// One listener.
#[derive(Debug)]
struct Running {
    config: ListenerConfig,
    /// Where it is bound (the port chosen when the config says 0).
    addr: SocketAddr,
    socket: Arc<TcpListener>,
    /// Stops this accept loop only (a reload that removes or changes the listener); a child
    /// of `Listeners::stop`.
    accepting: CancellationToken,
    stats: Arc<ListenerStats>,
}

/// A socket bound (or taken over) for a listener, not yet accepting.
#[derive(Debug)]
pub struct Bound {
    config: ListenerConfig,
    socket: TcpListener,
}

/// What a reload did to the listeners, by configured address.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListenerDiff {
    pub added: Vec<String>,
    pub removed: Vec<String>,
    /// Same address, other settings: new connections get them.
    pub changed: Vec<String>,
}

/// Why a reload's listeners cannot be: `index` is the `[[listener]]` at fault in the new
/// config, if one is (a listener it lacks has none).
#[derive(Debug)]
pub struct Refused {
    pub index: Option<usize>,
    pub error: std::io::Error,
}

/// The listeners a reload will start, bound before anything else changes: a port that cannot
/// be bound fails the whole reload, and the running config stays.
#[derive(Debug)]
pub struct Prepared {
    configs: Vec<ListenerConfig>,
    added: Vec<Bound>,
    /// Running listeners that a new one shares its port with ([`bind_beside`]): the commit
    /// takes them out of the kernel's listening table at once, so from then on every
    /// connection on the port reaches the new socket.
    moved_from: Vec<Arc<TcpListener>>,
}

/// Binds (or takes from `inherited`) a socket for each of `configs`, in order; the first
/// failure names the file and line, the listener's key and its address, as a config error
/// does (`source`: the config file, if it was read from one).
pub fn bind_all(
    configs: &[ListenerConfig],
    source: Option<&std::path::Path>,
    inherited: &mut Inherited,
) -> std::io::Result<Vec<Bound>> {
    configs
        .iter()
        .enumerate()
        .map(|(i, c)| {
            bind_one(c, inherited)
                .map_err(|e| systemd_hint(e, c.addr, inherited.systemd()))
                .map_err(|e| bind_error(e, source, c.listen_line, &format!("listener[{i}]")))
        })
        .collect::<Result<_, _>>()
}

/// A listening socket that could not be bound (`e`), named as a config error is: the file
/// and line of its `listen` key (`source`, `line`), and the key (`table`.listen).
pub(crate) fn bind_error(
    e: std::io::Error,
    source: Option<&std::path::Path>,
    line: Option<usize>,
    table: &str,
) -> std::io::Error {
    let at = match (source, line) {
        (Some(file), Some(n)) => format!("{}:{n}: ", file.display()),
        (None, Some(n)) => format!("line {n}: "),
        (_, None) => String::new(),
    };
    std::io::Error::new(e.kind(), format!("{at}{table}.listen: {e}"))
}

/// `e` from binding `addr`, with what to do when a socket systemd passed (`systemd`) is in
/// the way: systemd holds it for as long as its socket unit runs, so "address already in
/// use" alone would send the operator looking for another process.
/// - At another address that takes the same port (`0.0.0.0:443` beside `[::]:443` or
///   `127.0.0.1:443`): a passed socket serves only the listener configured at its exact
///   address.
/// - At this very address (a reload adding the listener for a socket systemd passed at
///   start, which no listener took then): it was closed here, and only a restart gets it
///   passed again.
fn systemd_hint(
    e: std::io::Error,
    addr: SocketAddr,
    systemd: &[(String, SocketAddr)],
) -> std::io::Error {
    if e.kind() != std::io::ErrorKind::AddrInUse {
        return e;
    }
    if let Some((name, _)) = systemd.iter().find(|(_, at)| *at == addr) {
        return std::io::Error::new(
            e.kind(),
            format!(
                "{e}: systemd passed this address's socket ({name:?}) at start, when no \
                 [[listener]] took it, and holds it still: restart wsgate to be passed it again"
            ),
        );
    }
    let held: Vec<String> = systemd
        .iter()
        .filter(|(_, at)| crate::config::overlaps(*at, addr))
        .map(|(name, at)| format!("{at} (socket {name:?})"))
        .collect();
    if held.is_empty() {
        return e;
    }
    std::io::Error::new(
        e.kind(),
        format!(
            "{e}: systemd holds this port at {} for socket activation, and a passed socket \
             serves only the [[listener]] configured at its exact address: set this \
             listener's listen to that address, or the socket unit's ListenStream= to {addr} \
             (and restart the socket unit)",
            held.join(", ")
        ),
    )
}

fn bind_one(config: &ListenerConfig, inherited: &mut Inherited) -> std::io::Result<Bound> {
    let socket = match inherited.take(config.addr) {
        Some(socket) => socket,
        None => accept::bind(config.addr).map_err(|e| {
            std::io::Error::new(e.kind(), format!("cannot listen on {}: {e}", config.addr))
        })?,
    };
    Ok(Bound {
        config: config.clone(),
        socket,
    })
}

/// Binds `config`'s address beside the running listeners on the same port that the reload
/// removes (`127.0.0.1:8080` becoming `0.0.0.0:8080`, or the other way), which the kernel
/// otherwise refuses with "address in use" as long as they are open. With `SO_REUSEPORT` on
/// both sides (the old sockets get it now, the new one before its bind) the kernel lets the
/// two share the port, and sends each connection to the socket whose address matches it
/// best: the old one until the commit closes it, then the new one. No connection is refused
/// in between, where closing the old socket first would refuse some (and reset those in its
/// queue). `None` when no such listener runs (the port is someone else's) or the bind fails
/// again; `shared` collects the old sockets set, to clear if the reload fails.
fn bind_beside(
    running: &[Running],
    configs: &[ListenerConfig],
    config: &ListenerConfig,
    shared: &mut Vec<Arc<TcpListener>>,
) -> Option<Bound> {
    let leaving: Vec<&Running> = running
        .iter()
        .filter(|r| r.addr.port() == config.addr.port())
        .filter(|r| !configs.iter().any(|c| c.addr == r.config.addr))
        .collect();
    if leaving.is_empty() {
        return None;
    }
    for r in leaving {
        if set_reuse_port(&r.socket, true) {
            shared.push(r.socket.clone());
        }
    }
    let socket = accept::bind_sharing_port(config.addr).ok()?;
    tracing::info!(listen = %config.addr, "listener bound beside the one it replaces on the same port");
    Some(Bound {
        config: config.clone(),
        socket,
    })
}

/// Sets or clears `SO_REUSEPORT` on a running listener (its duplicates on other workers share
/// the socket, and the option with it). Returns whether it was set.
fn set_reuse_port(socket: &TcpListener, on: bool) -> bool {
    match socket2::SockRef::from(socket).set_reuse_port(on) {
        Ok(()) => true,
        Err(e) => {
            tracing::warn!(error = %e, "cannot set SO_REUSEPORT on a listener");
            false
        }
    }
}

impl Listeners {
    /// `work`, unless the shutdown's grace ends first (`cut`): then `Draining`, which its
    /// caller answers 503 (the connection's task gives hyper a moment to write it) rather
    /// than be dropped unanswered. `work` that is ready when the cut comes wins: a request a
    /// backend has answered is not told 503, which would invite its retry.
    pub async fn unless_cut<T, E: From<crate::error::Draining>>(
        &self,
        work: impl Future<Output = Result<T, E>>,
    ) -> Result<T, E> {
        tokio::select! {
            biased;
            r = work => r,
            () = self.cut.cancelled() => Err(crate::error::Draining.into()),
        }
    }
    /// Gives the listeners the extra workers' runtimes; before [`Listeners::start`], once.
    pub fn set_workers(&self, workers: crate::workers::Workers) {
        if self.workers.set(workers).is_err() {
            tracing::error!("the listeners' workers were set twice; keeping the first");
        }
    }

    /// Starts accepting on `bound`.
    pub fn start(&self, state: &Arc<ProxyState>, bound: Vec<Bound>) -> std::io::Result<()> {
        let mut running = self.lock();
        for b in bound {
            running.push(self.spawn(state, b.config, Arc::new(b.socket), None)?);
        }
        Ok(())
    }

    /// Records where the sockets systemd passed at start are bound (see
    /// [`Inherited::systemd`]), for a reload's errors.
    pub fn set_systemd(&self, sockets: Vec<(String, SocketAddr)>) {
        let _ = self.systemd.set(sockets);
    }

    fn systemd(&self) -> &[(String, SocketAddr)] {
        self.systemd.get().map_or(&[], Vec::as_slice)
    }

    /// Whether a listener bound at `addr` runs on a socket systemd passed (and holds a copy
    /// of, listening whatever this process does with its own): a socket is taken only by
    /// the listener at its address, and nothing else can be bound there while systemd holds
    /// it.
    fn on_systemd_socket(&self, addr: SocketAddr) -> bool {
        self.systemd().iter().any(|(_, at)| *at == addr)
    }

    /// Binds the listeners `configs` adds to the running ones. Nothing running changes but,
    /// for a listener that moves to another address on the same port, the option that lets
    /// the two sockets share it (`bind_beside`).
    ///
    /// A listener on a socket systemd passed stays: closing it here would not close it (systemd
    /// holds a copy, which goes on queueing connections for nobody), and moving it would shut
    /// systemd's copy too (`commit`), which the next start would get back dead.
    pub fn prepare(&self, configs: &[ListenerConfig]) -> Result<Prepared, Refused> {
        let running = self.lock();
        if let Some(r) = running.iter().find(|r| {
            self.on_systemd_socket(r.addr) && !configs.iter().any(|c| c.addr == r.config.addr)
        }) {
            return Err(Refused {
                index: None,
                error: std::io::Error::other(format!(
                    "the [[listener]] at {} runs on a socket systemd passed (socket activation), \
                     and systemd keeps it listening: without that listener, connections to it \
                     would wait unanswered. Keep a [[listener]] at {}, or change the socket \
                     unit (ListenStream=) and restart",
                    r.addr, r.config.addr
                )),
            });
        }
        let mut added = Vec::new();
        let mut shared = Vec::new();
        for (i, c) in configs.iter().enumerate() {
            if running.iter().any(|r| r.config.addr == c.addr) {
                continue;
            }
            let bound = match bind_one(c, &mut Inherited::default()) {
                Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
                    bind_beside(&running, configs, c, &mut shared).ok_or(e)
                }
                other => other,
            };
            match bound {
                Ok(b) => added.push(b),
                Err(e) => {
                    for socket in &shared {
                        set_reuse_port(socket, false);
                    }
                    return Err(Refused {
                        index: Some(i),
                        error: systemd_hint(e, c.addr, self.systemd()),
                    });
                }
            }
        }
        Ok(Prepared {
            added,
            configs: configs.to_vec(),
            moved_from: shared,
        })
    }

    /// Makes the running listeners those `prepared` describes: removed ones stop accepting
    /// (their connections and sessions go on), changed ones get a new accept loop on the same
    /// socket, added ones start.
    pub fn commit(&self, state: &Arc<ProxyState>, prepared: Prepared) -> ListenerDiff {
        let Prepared {
            configs,
            added,
            moved_from,
        } = prepared;
        let mut diff = ListenerDiff::default();
        let mut running = self.lock();
        let mut kept = Vec::new();
        for r in running.drain(..) {
            match configs.iter().find(|c| c.addr == r.config.addr) {
                None => {
                    r.accepting.cancel();
                    tracing::info!(listen = %r.addr, "listener removed: no longer accepting");
                    diff.removed.push(r.config.addr.to_string());
                }
                Some(c) if c.fingerprint != r.config.fingerprint => {
                    r.accepting.cancel();
                    match self.spawn(state, c.clone(), r.socket.clone(), Some(r.stats.clone())) {
                        Ok(next) => {
                            tracing::info!(listen = %r.addr, "listener settings changed: new connections get them");
                            diff.changed.push(r.config.addr.to_string());
                            kept.push(next);
                        }
                        Err(e) => {
                            tracing::error!(listen = %r.addr, error = %e, "listener lost on reload");
                            diff.removed.push(r.config.addr.to_string());
                        }
                    }
                }
                Some(_) => kept.push(r),
            }
        }
        for b in added {
            let addr = b.config.addr.to_string();
            match self.spawn(state, b.config, Arc::new(b.socket), None) {
                Ok(r) => {
                    kept.push(r);
                    diff.added.push(addr);
                }
                Err(e) => tracing::error!(listen = %addr, error = %e, "listener not started"),
            }
        }
        // The old socket's address is the more specific match for some connections (or as
        // specific, for the older socket), so the kernel would go on queueing them there
        // until its last descriptor closes, on every worker, and then reset them. Shut for
        // reading, a listening socket leaves the listening table now (the few connections it
        // has queued and not yet accepted are reset, as at any listener's close).
        for socket in moved_from {
            if let Err(e) = socket2::SockRef::from(&*socket).shutdown(std::net::Shutdown::Read) {
                tracing::warn!(error = %e, "cannot stop the replaced listener's socket");
            }
        }
        // Config order: the first listener is the one `Handle::local_addr` names.
        kept.sort_by_key(|r| configs.iter().position(|c| c.addr == r.config.addr));
        *running = kept;
        diff
    }

    /// Spawns the accept loop (and the certificate watcher of a TLS listener) for `socket`.
    fn spawn(
        &self,
        state: &Arc<ProxyState>,
        config: ListenerConfig,
        socket: Arc<TcpListener>,
        stats: Option<Arc<ListenerStats>>,
    ) -> std::io::Result<Running> {
        let addr = socket.local_addr()?;
        let accepting = self.stop.child_token();
        let stats = stats.unwrap_or_default();
        if let (Some(tls), Some(every)) = (&config.tls, config.tls_watch) {
            tokio::spawn(tls.clone().watch_files(every, addr, accepting.clone()));
        }
        let accept_loop = |socket: Arc<TcpListener>| {
            self.accept_loops.track_future(accept::accept_loop(
                socket,
                config.clone(),
                state.clone(),
                accept::Stops {
                    accepting: accepting.clone(),
                    connections: self.stop.clone(),
                },
                self.conns.clone(),
                stats.clone(),
            ))
        };
        if let Some(workers) = self.workers.get() {
            // Before this runtime's loop: a failure here leaves no loop running.
            if let Err(e) = workers.spawn_accept_loops(&socket, accept_loop) {
                accepting.cancel();
                return Err(e);
            }
        }
        tokio::spawn(accept_loop(socket.clone()));
        tracing::info!(listen = %addr, "listening");
        Ok(Running {
            config,
            addr,
            socket,
            accepting,
            stats,
        })
    }

    /// The bound addresses, in config order.
    pub fn addrs(&self) -> Vec<SocketAddr> {
        self.lock().iter().map(|r| r.addr).collect()
    }

    /// Each listener's bound address and counters (the metrics).
    pub fn stats(&self) -> Vec<(SocketAddr, Arc<ListenerStats>)> {
        self.lock()
            .iter()
            .map(|r| (r.addr, r.stats.clone()))
            .collect()
    }

    /// Each listener's config and bound address.
    pub fn configs(&self) -> Vec<(ListenerConfig, SocketAddr)> {
        self.lock()
            .iter()
            .map(|r| (r.config.clone(), r.addr))
            .collect()
    }

    /// Registers the admin listener's socket and what stops its accept loop, so a hand-over
    /// passes it on too.
    pub fn set_admin(&self, socket: Arc<TcpListener>, accepting: CancellationToken) {
        *self.admin_slot() = Some(AdminSocket { socket, accepting });
    }

    /// The listening sockets by name (the configured address, marked if systemd passed the
    /// socket; the admin listener's is [`crate::upgrade::ADMIN`]), for a successor process.
    /// The descriptors stay open as long as the listeners run here.
    pub fn sockets(&self) -> Vec<(String, RawFd)> {
        let mut out: Vec<(String, RawFd)> = self
            .lock()
            .iter()
            .map(|r| {
                let mark = if self.on_systemd_socket(r.addr) {
                    SYSTEMD_MARK
                } else {
                    ""
                };
                (format!("{}{mark}", r.config.addr), r.socket.as_raw_fd())
            })
            .collect();
        if let Some(a) = &*self.admin_slot() {
            out.push((crate::upgrade::ADMIN.to_string(), a.socket.as_raw_fd()));
        }
        out
    }

    /// Stops every accept loop, the admin listener's included, leaving connections and
    /// sessions alone (a successor accepts from now on). The sockets close here once the
    /// loops have let go of them.
    pub fn stop_accepting(&self) {
        self.close_all();
        if let Some(a) = self.admin_slot().take() {
            a.accepting.cancel();
        }
    }

    /// Closes every proxy listener at a shutdown's start (the admin listener stays, for
    /// `/readyz` and the session API during the drain). Their accept loops have been told to
    /// stop (the same `stop`); each socket closes when the last loop lets go of it, and the
    /// kernel then refuses new connections and resets those queued and not yet accepted, as
    /// at any listener's close, instead of completing handshakes that nobody would answer.
    /// After a hand-over the list is empty already, and the successor holds the sockets.
    pub fn close_all(&self) {
        for r in self.lock().drain(..) {
            r.accepting.cancel();
        }
    }

    /// Resolves once every accept loop has returned, after [`Listeners::stop_accepting`]. A
    /// loop on another worker may have a connection from `accept` in hand when it is told to
    /// stop; it counts it in `awaiting_answer` before it next yields, so once the loops have
    /// returned, that count holds every connection this process will ever serve.
    pub async fn accepting_stopped(&self) {
        self.accept_loops.close();
        self.accept_loops.wait().await;
    }

    /// Connections whose first request has not been answered yet.
    pub fn awaiting_answer(&self) -> usize {
        self.awaiting_answer.load(Ordering::Relaxed)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Running>> {
        self.running.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn admin_slot(&self) -> std::sync::MutexGuard<'_, Option<AdminSocket>> {
        self.admin.lock().unwrap_or_else(|p| p.into_inner())
    }
}
