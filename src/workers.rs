//! Per-worker runtimes (`[runtime] scheduler = "per_worker"`, the default): with N workers,
//! the thread that starts the gateway is worker 0 and N − 1 more threads each run a
//! single-threaded tokio runtime of their own: their own `epoll`, timers and run queue.
//!
//! Every worker runs an accept loop on every listening socket (a duplicate of its
//! descriptor, registered with that worker's `epoll`), so a connection is served from accept
//! to close by the worker that accepted it, and its session's wake-ups never cross cores:
//! nginx's worker processes, in threads. The kernel wakes every worker waiting on a socket
//! when a connection arrives; the first to call `accept` takes it, so an idle worker takes
//! new connections before a busy one does. Unlike `SO_REUSEPORT` (one socket per worker, the
//! kernel choosing by a hash of the addresses), a worker that is busy with long-lived
//! sessions is not handed a fixed share of the new ones, and the listening sockets stay one
//! per listener for reloads and binary upgrades.
//!
//! What the workers share is what a handshake touches once (the config generation, the
//! session registry, admission counts, the log's buffer): see docs/benchmarks.md, "One worker
//! or several".

use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::runtime::Handle;
use tokio_util::sync::CancellationToken;

/// A blocking task still running on a worker at exit (a DNS lookup cannot be cancelled) is
/// waited for this long, as the main runtime's are.
const EXIT_WAIT: Duration = Duration::from_millis(500);

/// The extra workers' runtimes; they stop when this is dropped.
#[derive(Debug, Default)]
pub struct Workers {
    handles: Vec<Handle>,
    done: CancellationToken,
}

impl Workers {
    /// Starts `extra` worker threads (`wsgate-worker-1` …), each with a single-threaded
    /// runtime that runs until this is dropped. Their tasks are whatever the accept loops
    /// [`Workers::spawn_accept_loops`] puts there spawn: connections and their sessions.
    pub fn start(extra: usize) -> std::io::Result<Workers> {
        // Built first: a failure part-way drops it, which stops the threads already started.
        let mut workers = Workers {
            handles: Vec::with_capacity(extra),
            done: CancellationToken::new(),
        };
        for i in 1..=extra {
            // Each runtime is built and dropped on its own thread: a runtime dropped in an
            // async context (here, should the thread fail to start) would panic.
            let (started, handle) = std::sync::mpsc::sync_channel(1);
            let done = workers.done.clone();
            std::thread::Builder::new()
                .name(format!("wsgate-worker-{i}"))
                .spawn(move || {
                    let rt = match tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                    {
                        Ok(rt) => rt,
                        Err(e) => {
                            let _ = started.send(Err(e));
                            return;
                        }
                    };
                    let _ = started.send(Ok(rt.handle().clone()));
                    rt.block_on(done.cancelled());
                    rt.shutdown_timeout(EXIT_WAIT);
                })?;
            // Waits for the runtime's construction only (microseconds, once at start).
            let handle = handle.recv().map_err(|_| {
                std::io::Error::other("a worker thread ended before its runtime started")
            })??;
            workers.handles.push(handle);
        }
        Ok(workers)
    }

    /// Stops the workers when dropped (the gateway's `Handle` holds it: a gateway dropped
    /// without a shutdown, as in a test, leaves no thread behind).
    pub fn stop_guard(&self) -> tokio_util::sync::DropGuard {
        self.done.clone().drop_guard()
    }

    /// Runs `accept_loop` on each extra worker with its own duplicate of `socket`, registered
    /// with that worker's `epoll`. A duplicate closes when its loop ends.
    pub fn spawn_accept_loops<F, Fut>(
        &self,
        socket: &TcpListener,
        accept_loop: F,
    ) -> std::io::Result<()>
    where
        F: Fn(Arc<TcpListener>) -> Fut,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        use std::os::fd::AsFd;
        for handle in &self.handles {
            let dup = std::net::TcpListener::from(socket.as_fd().try_clone_to_owned()?);
            let listener = {
                // A socket belongs to the `epoll` of the runtime it is registered in.
                let _worker = handle.enter();
                TcpListener::from_std(dup)?
            };
            handle.spawn(accept_loop(Arc::new(listener)));
        }
        Ok(())
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        self.done.cancel();
    }
}
