//! The `wsgate` command: `run`, `check`, `demo`, and its own completions and man page.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{CommandFactory, Parser, Subcommand, ValueEnum};
use wsgate::config::{Config, Scheduler};
use wsgate::notify;
use wsgate::telemetry::{self, LogFormat};
use wsgate::{Gateway, Handle};

/// `0.1.0 (commit 1a2b3c4d5e6f, built 2025-01-31)`: which sources a running binary came from,
/// stamped by `build.rs`.
const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("WSGATE_GIT_COMMIT"),
    ", built ",
    env!("WSGATE_BUILD_DATE"),
    ")"
);

#[derive(Parser)]
#[command(name = "wsgate", version = VERSION, about = "A reverse proxy for WebSockets")]
struct Cli {
    /// Log line format (filter with RUST_LOG, e.g. RUST_LOG=debug).
    #[arg(long, value_enum, default_value_t = Format::Text, global = true)]
    log_format: Format,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum Format {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run the proxy with a config file.
    Run {
        /// The config file (TOML; config.example.toml explains every key).
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Validate a config file and print every error with its key and line (exit 1 on error).
    Check {
        /// The config file to check.
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Run the demo's echo backend alone, for trying a config: it greets each session with
    /// one text message, then echoes. (For benchmarks use the load generator's `wsload echo`,
    /// which echoes only: see benches/README.md.)
    Echo {
        /// Where the echo backend listens, e.g. 127.0.0.1:9001 or [::1]:9001
        #[arg(long, default_value = "127.0.0.1:9001")]
        listen: SocketAddr,
    },
    /// Start a built-in echo backend and the proxy in front of it, with a browser page at /.
    Demo {
        /// Where the demo proxy listens [default: 127.0.0.1:8080]. If the default port is
        /// busy, a free port is used; a port given here must be free.
        #[arg(long)]
        listen: Option<SocketAddr>,
        /// Serve the page over https and the WebSocket over wss, with a self-signed
        /// development certificate made at start (the browser will ask you to accept it).
        #[arg(long)]
        tls: bool,
        /// Where the demo's admin listener (status page, /metrics, session API) listens
        /// [default: 127.0.0.1:9901]. If the default port is busy, a free port is used (the
        /// printed lines say which); a port given here must be free.
        #[arg(long)]
        admin: Option<SocketAddr>,
    },
    /// Write a self-signed development certificate and key (PEM) for the given names, e.g.
    /// `wsgate cert localhost 127.0.0.1`. Marked as such: never use it in production.
    Cert {
        /// DNS names and IP addresses the certificate is valid for.
        #[arg(default_values_t = ["localhost".to_string(), "127.0.0.1".to_string(), "::1".to_string()])]
        names: Vec<String>,
        /// Directory to write `<first name>.pem` and `<first name>.key` into.
        #[arg(long, default_value = "certs")]
        out: PathBuf,
    },
    /// Print a shell completion script, e.g. `wsgate completions bash > /etc/bash_completion.d/wsgate`.
    Completions {
        shell: clap_complete::Shell,
        /// Write the script into this directory (under the shell's usual file name) instead.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Print the man page (roff), e.g. `wsgate man | man -l -`.
    Man {
        /// Write `wsgate.1` and a page per subcommand (`wsgate-run.1`, ...) into this directory
        /// instead.
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

/// jemalloc, not the system allocator. A proxy's memory is mostly two kinds of allocation:
/// small, long-lived session state (the task, the socket registrations, the record, the
/// timer: about 1.5 KiB a session) and short-lived handshake buffers many times larger.
/// glibc's malloc interleaves the two in one heap, and the holes the buffers leave behind
/// stay resident: measured 2.5 KiB of RSS per idle session with glibc, 1.6 KiB with this
/// (`benches/compare`, 9,900 idle sessions). jemalloc keeps each size class in its
/// own pages, and its background thread hands pages freed by a burst of handshakes back to
/// the system after about a second (`dirty_decay_ms`), instead of on some later call.
///
/// `_RJEM_MALLOC_CONF` in the environment overrides these settings at start.
#[cfg(all(feature = "jemalloc", not(target_env = "msvc")))]
mod allocator {
    #[global_allocator]
    static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

    /// jemalloc reads its settings from this symbol (a C string) when it starts.
    #[repr(transparent)]
    pub struct Conf(*const std::ffi::c_char);
    // SAFETY: a pointer to a static, immutable C string.
    unsafe impl Sync for Conf {}

    #[unsafe(export_name = "_rjem_malloc_conf")]
    pub static MALLOC_CONF: Conf =
        Conf(c"background_thread:true,dirty_decay_ms:1000,muzzy_decay_ms:0".as_ptr());

    #[cfg(test)]
    mod tests {
        /// Reads a jemalloc setting, e.g. `opt.background_thread`.
        fn opt<T: Default>(name: &std::ffi::CStr) -> T {
            let mut value = T::default();
            let mut len = std::mem::size_of::<T>();
            // SAFETY: `value` is a writable T of `len` bytes, the type jemalloc documents
            // for these names; no new value is written.
            let rc = unsafe {
                tikv_jemalloc_sys::mallctl(
                    name.as_ptr(),
                    (&raw mut value).cast(),
                    &mut len,
                    std::ptr::null_mut(),
                    0,
                )
            };
            assert_eq!(rc, 0, "mallctl {name:?}");
            value
        }

        #[test]
        fn jemalloc_runs_with_the_settings_above() {
            // The symbol's name must match the -sys crate's prefix, or jemalloc silently
            // runs with its defaults (10 s decay, no background thread).
            assert!(opt::<bool>(c"opt.background_thread"));
            assert_eq!(opt::<isize>(c"opt.dirty_decay_ms"), 1000);
            assert_eq!(opt::<isize>(c"opt.muzzy_decay_ms"), 0);
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Held to the end of `main`: its drop writes the last lines.
    let _log = telemetry::init(match cli.log_format {
        Format::Text => LogFormat::Text,
        Format::Json => LogFormat::Json,
    });
    let json = matches!(cli.log_format, Format::Json);
    let exit = |result| exit(result, json);
    match cli.command {
        Command::Check { config } => check(&config),
        Command::Run { config } => match Config::load(&config) {
            Ok(cfg) => {
                let workers = cfg.workers.unwrap_or_else(cpus);
                let main_runtime = match cfg.scheduler {
                    // The main thread is worker 0; the gateway starts the others.
                    Scheduler::PerWorker => Some(1),
                    Scheduler::WorkStealing => Some(workers),
                };
                exit(on_runtime_with(main_runtime, run(cfg, workers)))
            }
            Err(errors) if json && tracing::enabled!(tracing::Level::ERROR) => {
                // One JSON record, as every other line of a JSON log: a pipeline that parses
                // the lines must not lose the one that says why the process did not start.
                // (With errors filtered off, `RUST_LOG=off`, the plain text below: why the
                // process did not start is never hidden.)
                tracing::error!(
                    file = %errors.source,
                    errors = telemetry::list(&errors.lines()),
                    "the config is not valid; not started"
                );
                ExitCode::FAILURE
            }
            Err(errors) => {
                eprint!("{errors}");
                ExitCode::FAILURE
            }
        },
        Command::Echo { listen } => exit(on_runtime(echo(listen))),
        Command::Demo { listen, tls, admin } => exit(on_runtime(demo(listen, admin, tls))),
        Command::Cert { names, out } => exit(cert(&names, &out)),
        Command::Completions { shell, out } => exit(completions(shell, out.as_deref())),
        Command::Man { out } => exit(man(out.as_deref())),
    }
}

/// Completions and man pages come from the same clap definitions as the parser, so they
/// cannot drift from the options the binary accepts.
fn completions(shell: clap_complete::Shell, out: Option<&Path>) -> anyhow::Result<()> {
    let mut cmd = Cli::command();
    match out {
        Some(dir) => {
            let path = clap_complete::generate_to(shell, &mut cmd, "wsgate", dir)
                .with_context(|| format!("cannot write into {}", dir.display()))?;
            eprintln!("wrote {}", path.display());
        }
        None => {
            // Into memory first: the generator panics on a failed write (`| head`).
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut cmd, "wsgate", &mut script);
            print_bytes(&script)?;
        }
    }
    Ok(())
}

fn man(out: Option<&Path>) -> anyhow::Result<()> {
    let cmd = Cli::command();
    match out {
        Some(dir) => {
            clap_mangen::generate_to(cmd, dir)
                .with_context(|| format!("cannot write into {}", dir.display()))?;
            eprintln!("wrote the man pages into {}", dir.display());
        }
        None => {
            let mut page = Vec::new();
            clap_mangen::Man::new(cmd).render(&mut page)?;
            print_bytes(&page)?;
        }
    }
    Ok(())
}

fn print_bytes(bytes: &[u8]) -> anyhow::Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    out.write_all(bytes)
        .and_then(|()| out.flush())
        .context("cannot write to stdout")
}

/// The exit status for `result`; an error not logged yet is said on stderr, as a JSON record
/// with `--log-format json` (`json`).
fn exit(result: anyhow::Result<()>, json: bool) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.is::<Logged>() => ExitCode::FAILURE,
        Err(e) if json && tracing::enabled!(tracing::Level::ERROR) => {
            tracing::error!(error = format!("{e:#}"), "wsgate stopped");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("wsgate: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Runs `main` to its end on a fresh runtime, then leaves without waiting long for blocking
/// threads: a DNS lookup for a backend (`getaddrinfo` cannot be cancelled) must not hold the
/// exit once the sessions are done.
fn on_runtime(main: impl Future<Output = anyhow::Result<()>>) -> anyhow::Result<()> {
    on_runtime_with(None, main)
}

/// [`on_runtime`] with `[runtime] workers` threads (`None`: one per CPU).
fn on_runtime_with(
    workers: Option<usize>,
    main: impl Future<Output = anyhow::Result<()>>,
) -> anyhow::Result<()> {
    let rt = runtime(workers)?;
    let result = rt.block_on(main);
    rt.shutdown_timeout(std::time::Duration::from_millis(500));
    result
}

/// One per CPU: what `[runtime] workers` means when absent.
fn cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// The runtime `main` runs on. One worker: tokio's single-threaded scheduler, which has
/// nothing to steal from and no other thread to wake, so each wake-up and each task switch
/// costs less than in the work-stealing scheduler with one thread (see docs/benchmarks.md,
/// "One worker or several"); it is also worker 0 of `scheduler = "per_worker"`, whose other
/// workers the gateway starts (`wsgate::workers`). More: the work-stealing scheduler with that
/// many threads. `None`: one per CPU (tokio's default, which `TOKIO_WORKER_THREADS`
/// overrides).
fn runtime(workers: Option<usize>) -> anyhow::Result<tokio::runtime::Runtime> {
    let mut builder = match workers {
        Some(1) => tokio::runtime::Builder::new_current_thread(),
        Some(n) => {
            let mut b = tokio::runtime::Builder::new_multi_thread();
            b.worker_threads(n);
            b
        }
        None => tokio::runtime::Builder::new_multi_thread(),
    };
    builder
        .enable_all()
        .build()
        .context("cannot start the tokio runtime")
}

/// `writeln!` into the report `check` prints (a `String`: writing to it cannot fail).
macro_rules! outln {
    ($out:expr, $($arg:tt)*) => {{
        use std::fmt::Write as _;
        let _ = writeln!($out, $($arg)*);
    }};
}

fn check(path: &Path) -> ExitCode {
    match Config::load(path) {
        Ok(cfg) => {
            // Written whole at the end: `println!` would panic on a closed stdout (`| head`).
            let mut out = String::new();
            outln!(
                out,
                "{}: OK ({} listener{}, {} route{})",
                path.display(),
                cfg.listeners.len(),
                if cfg.listeners.len() == 1 { "" } else { "s" },
                cfg.routes.len(),
                if cfg.routes.len() == 1 { "" } else { "s" },
            );
            for r in &cfg.routes {
                let backends: Vec<&str> = r.backends.iter().map(|b| b.url.as_str()).collect();
                outln!(
                    out,
                    "  route {:?}: host {} path {} -> {}",
                    r.name,
                    r.host.as_deref().unwrap_or("*"),
                    r.path,
                    backends.join(", ")
                );
            }
            print_limits(&mut out, &cfg);
            let workers = cfg.workers.unwrap_or_else(cpus);
            outln!(
                out,
                "  runtime: {workers} worker{}{}{}",
                if workers == 1 { "" } else { "s" },
                if cfg.workers.is_none() {
                    " (one per CPU)"
                } else {
                    ""
                },
                if workers > 1 {
                    format!(", scheduler {}", cfg.scheduler.as_str())
                } else {
                    String::new()
                },
            );
            if let Some(admin) = &cfg.admin {
                outln!(
                    out,
                    "  admin listener: {}://{} ({})",
                    if admin.tls.is_some() { "https" } else { "http" },
                    admin.addr,
                    if admin.token.is_some() {
                        "token required"
                    } else {
                        "loopback, no token"
                    }
                );
            }
            match print_bytes(out.as_bytes()) {
                // The reader stopped early (`| head -1`): the check itself passed.
                Err(e)
                    if e.downcast_ref::<std::io::Error>().map(std::io::Error::kind)
                        == Some(std::io::ErrorKind::BrokenPipe) =>
                {
                    ExitCode::SUCCESS
                }
                result => exit(result, false),
            }
        }
        Err(errors) => {
            eprint!("{errors}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cfg: Config, workers: usize) -> anyhow::Result<()> {
    raise_fd_limit(&cfg);
    let mut signals = Signals::install()?;
    // A stop signal while starting ends the start: above all for a binary upgrade's
    // successor, still taking the sockets over (up to a minute). Had it finished, handed the
    // sockets over and then stopped, nothing would listen any more; stopped before it tells
    // the old process it is ready, the old one serves on (it logs the successor's end).
    let handle = tokio::select! {
        biased;
        name = signals.stop() => {
            tracing::warn!(signal = name, "signal received while starting: not started (a binary upgrade's predecessor serves on)");
            return Ok(());
        }
        handle = Gateway::start_with_workers(cfg, workers) => handle?,
    };
    signals.wait_then_drain(handle).await
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit, before any listener is bound, and
/// says what the gateway runs with: the limit and the descriptors kept back from sessions.
fn raise_fd_limit(cfg: &Config) {
    use wsgate::limits::fd;
    match fd::raise_soft_limit() {
        Ok(raised) => {
            let reserve = fd::reserve_for(raised.to, cfg.limits.fd_reserve);
            if raised.to > raised.from {
                tracing::info!(
                    from = raised.from,
                    limit = raised.to,
                    fd_reserve = reserve,
                    "raised the soft RLIMIT_NOFILE to the hard limit"
                );
            } else {
                tracing::info!(
                    limit = raised.to,
                    fd_reserve = reserve,
                    "file descriptor limit"
                );
            }
            if reserve >= raised.to {
                tracing::warn!(
                    limit = raised.to,
                    fd_reserve = reserve,
                    "limits.fd_reserve is not below the descriptor limit: every handshake will be refused with 503"
                );
            }
        }
        Err(e) => tracing::warn!(error = %e, "cannot raise the soft RLIMIT_NOFILE"),
    }
}

/// `wsgate check`'s lines on the admission limits and the descriptor limit `run` would have.
fn print_limits(out: &mut String, cfg: &Config) {
    use wsgate::config::AdmissionLimits;
    use wsgate::limits::fd;
    let describe = |a: &AdmissionLimits| {
        let mut parts = Vec::new();
        if let Some(n) = a.max_sessions {
            parts.push(format!("max_sessions {n}"));
        }
        if let Some(n) = a.max_sessions_per_ip {
            parts.push(format!("max_sessions_per_ip {n}"));
        }
        if let Some(r) = a.handshake_rate {
            parts.push(format!(
                "handshake_rate_per_ip one per {:?}, handshake_burst {}",
                r.interval, r.burst
            ));
        }
        parts.join(", ")
    };
    let global = describe(&cfg.limits.admission);
    if !global.is_empty() {
        outln!(out, "  limits: {global}");
    }
    for r in &cfg.routes {
        let own = describe(&r.admission);
        if !own.is_empty() {
            outln!(out, "  route {:?} limits: {own}", r.name);
        }
    }
    // What `run` raises the soft limit to: the hard limit (or fs.nr_open when unlimited).
    match fd::nofile() {
        Ok((soft, hard)) => {
            let limit = fd::raised_limit(soft, hard);
            let reserve = fd::reserve_for(limit, cfg.limits.fd_reserve);
            outln!(
                out,
                "  file descriptors: limit {limit} (soft {soft} now; run raises it to the hard limit), reserve {reserve}"
            );
            if reserve >= limit {
                outln!(
                    out,
                    "  warning: limits.fd_reserve is not below the descriptor limit: every handshake would be refused with 503"
                );
            }
        }
        Err(e) => outln!(out, "  file descriptors: cannot read RLIMIT_NOFILE ({e})"),
    }
}

async fn echo(listen: SocketAddr) -> anyhow::Result<()> {
    let addr = wsgate::demo::start_echo_backend(listen)
        .await
        .with_context(|| format!("cannot start the echo backend on {listen}"))?;
    println!("wsgate echo backend listening on ws://{addr}/  -  Ctrl-C to stop.");
    tokio::signal::ctrl_c().await?;
    Ok(())
}

fn cert(names: &[String], out: &std::path::Path) -> anyhow::Result<()> {
    let (cert, key) = wsgate::tls::dev_certificate(names).map_err(anyhow::Error::msg)?;
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    let stem = names
        .first()
        .map_or("dev", String::as_str)
        .replace([':', '/'], "_");
    let (cp, kp) = (
        out.join(format!("{stem}.pem")),
        out.join(format!("{stem}.key")),
    );
    // The key first: a key that cannot be written leaves no new certificate beside an old key.
    write_private(&kp, key.as_bytes()).with_context(|| format!("cannot write {}", kp.display()))?;
    std::fs::write(&cp, cert).with_context(|| format!("cannot write {}", cp.display()))?;
    println!(
        "wrote {} and {} (self-signed, 90 days, for {}): development only",
        cp.display(),
        kp.display(),
        names.join(", ")
    );
    Ok(())
}

/// Writes a private key readable by its owner only: a file that was there already is made
/// so before the key goes in (the mode given at open applies only to a file it creates).
fn write_private(path: &std::path::Path, data: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    f.write_all(data)
}

/// `wsgate demo`'s addresses when none is given.
const DEMO_LISTEN: &str = "127.0.0.1:8080";
const DEMO_ADMIN: &str = "127.0.0.1:9901";

async fn demo(
    listen: Option<SocketAddr>,
    admin: Option<SocketAddr>,
    tls: bool,
) -> anyhow::Result<()> {
    let signals = Signals::install()?;
    let backend = wsgate::demo::start_echo_backend("127.0.0.1:0".parse()?)
        .await
        .context("cannot start the demo echo backend")?;
    let config = |listen, admin| wsgate::demo::config(listen, admin, backend, tls);
    let (l, a) = (
        listen.unwrap_or(DEMO_LISTEN.parse()?),
        admin.unwrap_or(DEMO_ADMIN.parse()?),
    );
    let handle = match Gateway::start(config(l, a)).await {
        Ok(h) => h,
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
            // Which one (a probe: the demo is no place for a race to matter). A default
            // port that is busy gives way to a free one; a port the user asked for does not.
            let busy = |addr: SocketAddr| std::net::TcpListener::bind(addr).is_err();
            let (l_busy, a_busy) = (busy(l), busy(a));
            for (given, is_busy, flag, addr) in [
                (listen, l_busy, "--listen", l),
                (admin, a_busy, "--admin", a),
            ] {
                if given.is_some() && is_busy {
                    anyhow::bail!(
                        "{addr} ({flag}) is in use: give a free one, or leave {flag} out for a free port"
                    );
                }
            }
            let free = |addr: SocketAddr, take: bool| {
                if take {
                    eprintln!("wsgate: {addr} is in use; using a free port instead");
                    SocketAddr::new(addr.ip(), 0)
                } else {
                    addr
                }
            };
            // Neither busy by now (it was let go meanwhile): free ones for the defaults.
            let either = l_busy || a_busy;
            let take = |busy: bool, given: Option<SocketAddr>| busy || !either && given.is_none();
            Gateway::start(config(
                free(l, take(l_busy, listen)),
                free(a, take(a_busy, admin)),
            ))
            .await?
        }
        Err(e) => return Err(e.into()),
    };
    let addr = handle.local_addr();
    println!();
    println!("  wsgate demo is running.");
    let (http, ws) = if tls {
        ("https", "wss")
    } else {
        ("http", "ws")
    };
    println!("  Open {http}://{addr}/ in a browser (WebSocket endpoint: {ws}://{addr}/echo).");
    if tls {
        println!(
            "  The certificate is a self-signed development certificate: accept it in the browser."
        );
    }
    if let Some(admin) = handle.admin_addr() {
        println!("  Status page: http://{admin}/ (metrics at http://{admin}/metrics).");
    }
    println!("  Built-in echo backend: ws://{backend}/  -  Ctrl-C to stop.");
    println!();
    signals.wait_then_drain(handle).await
}

/// The process's signal handlers. They are installed before any listener is bound: a
/// signal that arrives once "listening" is logged (`systemctl reload` right after start, a
/// test) must find them, or SIGHUP's default action would end the process.
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    /// SIGQUIT, nginx's graceful stop (its SIGTERM is the fast one): here a graceful stop
    /// too, not the default action's core dump with every session cut.
    quit: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
    usr2: tokio::signal::unix::Signal,
    /// The path this binary was started by, as it was at start ([`own_path`]): an upgrade
    /// replaces the file there (or the symlink's target), and the running process's
    /// `/proc/self/exe` then names a deleted file (or the old version).
    exe: Option<std::path::PathBuf>,
}

impl Signals {
    /// The next stop signal's name (SIGTERM, SIGINT or SIGQUIT).
    async fn stop(&mut self) -> &'static str {
        tokio::select! {
            _ = self.term.recv() => "SIGTERM",
            _ = self.int.recv() => "SIGINT",
            _ = self.quit.recv() => "SIGQUIT",
        }
    }

    fn install() -> anyhow::Result<Self> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Self {
            term: signal(SignalKind::terminate()).context("cannot install SIGTERM handler")?,
            int: signal(SignalKind::interrupt()).context("cannot install SIGINT handler")?,
            quit: signal(SignalKind::quit()).context("cannot install SIGQUIT handler")?,
            hup: signal(SignalKind::hangup()).context("cannot install SIGHUP handler")?,
            usr2: signal(SignalKind::user_defined2()).context("cannot install SIGUSR2 handler")?,
            exe: own_path().or_else(|| std::env::current_exe().ok()),
        })
    }

    /// SIGUSR2: starts the binary now at this process's path, with the same arguments, as
    /// its successor; it takes the listening sockets over through `[upgrade] socket`, and
    /// this process then drains (`wsgate::upgrade`). Its exit, should it fail, is logged; this
    /// process serves on regardless.
    fn start_successor(&self, handle: &Handle) {
        if handle.upgrade_socket().is_none() {
            tracing::warn!("SIGUSR2: binary upgrades need [upgrade] socket in the config; ignored");
            return;
        }
        let Some(exe) = &self.exe else {
            tracing::warn!("SIGUSR2: cannot tell this binary's path; start the new one by hand");
            return;
        };
        // A second SIGUSR2 while one runs is refused with a line that says so: two
        // successors would race for the one hand-over, and the loser exit with an error
        // about a socket.
        if successor_running(handle.successor()) {
            return;
        }
        let spawned = tokio::process::Command::new(exe)
            .args(std::env::args_os().skip(1))
            .stdin(std::process::Stdio::null())
            // systemd's socket activation was for this process (`LISTEN_PID` is its pid):
            // the successor gets its sockets through the hand-over. Kept, it read them as
            // broken names, and under a reused pid would take its own descriptors for
            // systemd's (sd_listen_fds(3) has them unset).
            .env_remove("LISTEN_FDS")
            .env_remove("LISTEN_PID")
            .env_remove("LISTEN_FDNAMES")
            // The two processes write to one stderr from now on: each line says whose it is.
            .env(wsgate::telemetry::PID_ENV, "1")
            .spawn();
        match spawned {
            Ok(mut child) => {
                wsgate::telemetry::show_pid();
                let pid = child.id().unwrap_or(0);
                tracing::info!(exe = %exe.display(), new_pid = pid, "SIGUSR2: started the new binary; it takes the listening sockets over");
                let successor = handle.successor().clone();
                successor.started(pid);
                let draining = handle.stopping_token();
                tokio::spawn(async move {
                    let status = child.wait().await;
                    successor.exited();
                    if let Ok(status) = status
                        && (!status.success() || !draining.is_cancelled())
                    {
                        if draining.is_cancelled() {
                            // It had taken the sockets over (or this process was stopping
                            // anyway): nothing listens here any more.
                            tracing::warn!(%status, "the new binary exited after this process gave up its listeners; this process only finishes its sessions");
                        } else {
                            tracing::warn!(%status, "the new binary exited; this process serves on");
                        }
                    }
                });
            }
            Err(e) => {
                tracing::warn!(exe = %exe.display(), error = %e, "SIGUSR2: cannot start the new binary")
            }
        }
    }

    /// SIGHUP reloads the config file (routes and backends; see `wsgate::reload`) and the TLS
    /// certificates; SIGUSR2 starts a successor (a binary upgrade); SIGTERM, SIGINT or SIGQUIT
    /// starts a graceful shutdown; a second signal ends the process at once. systemd hears of each
    /// step (`crate::notify`).
    async fn wait_then_drain(mut self, handle: Handle) -> anyhow::Result<()> {
        notify::ready();
        let name = loop {
            tokio::select! {
                _ = self.term.recv() => break Some("SIGTERM"),
                _ = self.int.recv() => break Some("SIGINT"),
                _ = self.quit.recv() => break Some("SIGQUIT"),
                _ = self.usr2.recv() => self.start_successor(&handle),
                // The listeners went to a successor, which systemd now follows
                // (`MAINPID`): this process drains without a word to systemd.
                _ = handle.stopping() => break None,
                _ = self.hup.recv() => {
                    if handle.successor().running().is_some() {
                        // The successor reads the config file itself: a reload here would be
                        // applied by this process, said done, and lost at the hand-over.
                        tracing::warn!(signal = "SIGHUP", "a binary upgrade is under way (the new process reads the config file itself): no reload; send SIGHUP to the new process once it serves");
                        continue;
                    }
                    notify::reloading();
                    tracing::info!(signal = "SIGHUP", "reloading the config file and the TLS certificates");
                    // Logged either way: what changed, or every error (the running config stays).
                    let _ = handle.reload_file().await;
                    handle.reload_certificates();
                    notify::ready();
                }
            }
        };
        if let Some(name) = name {
            tracing::info!(signal = name, "signal received");
            notify::stopping();
            handle.shutdown();
        }
        let Self {
            mut term,
            mut int,
            mut quit,
            mut hup,
            mut usr2,
            ..
        } = self;
        let successor = handle.successor().clone();
        let sessions = handle.sessions().clone();
        // Kept until the end: the handle owns the workers' runtimes, which run the sessions.
        let wait = handle.wait();
        tokio::pin!(wait);
        // After a hand-over no stop signal has come yet: the first is not a second one (it
        // cut the sessions an upgrade's drain was closing gracefully, and exited 1). It asks
        // for what is already under way, and is said so; the next one cuts.
        let mut stops = u8::from(name.is_some());
        loop {
            let signal = tokio::select! {
                report = &mut wait => {
                    if report.sessions_ended > 0 {
                        tracing::info!(sessions = report.sessions_ended, "sessions ended at the end of the grace period");
                    }
                    return Ok(());
                }
                _ = term.recv() => "SIGTERM",
                _ = int.recv() => "SIGINT",
                _ = quit.recv() => "SIGQUIT",
                _ = hup.recv() => {
                    tracing::warn!(signal = "SIGHUP", live_sessions = sessions.len(), "shutting down: no reload (a reload is not taken once a shutdown or a hand-over has begun)");
                    continue;
                }
                _ = usr2.recv() => {
                    if !successor_running(&successor) {
                        tracing::warn!(signal = "SIGUSR2", live_sessions = sessions.len(), "shutting down: no upgrade from here (once a shutdown or a hand-over has begun); after a hand-over, signal the process that serves now");
                    }
                    continue;
                }
            };
            stops += 1;
            if stops >= 2 {
                break;
            }
            tracing::info!(
                signal,
                live_sessions = sessions.len(),
                "signal received: already draining after the hand-over; another one cuts the sessions"
            );
        }
        // A second signal: the sessions are cut now, without their closing handshakes. Each
        // still writes its record ("every session ends with one"), within a bound, and the
        // exit is logged as a record too, not a raw line in a JSON log.
        tracing::warn!(
            live_sessions = sessions.len(),
            "second signal: cutting the sessions without waiting for their closing handshakes"
        );
        let _ = tokio::time::timeout(SECOND_SIGNAL_CUT, async {
            sessions.kill_all().await;
            wait.await
        })
        .await;
        Err(Logged.into())
    }
}

/// Whether a successor an earlier SIGUSR2 started still runs (and so a SIGUSR2 now is
/// refused), said in the log with its pid when it does.
fn successor_running(successor: &wsgate::upgrade::Successor) -> bool {
    let running = successor.running();
    if let Some(pid) = running {
        tracing::warn!(
            new_pid = pid,
            "SIGUSR2: the new binary an earlier SIGUSR2 started is still running (it has taken the sockets over, or is taking them): ignored; signal that process instead"
        );
    }
    running.is_some()
}

/// The path this process was started by (its `argv[0]`, made absolute against the directory
/// it started in, or found on `PATH` as a shell would), without resolving symlinks: a binary
/// upgrade starts what is there now. `current_exe` resolves them, so with `/usr/bin/wsgate`
/// (or an `/opt/wsgate/current`) a symlink to the installed version, SIGUSR2 started the old
/// version again. `None` when that path names no file.
fn own_path() -> Option<std::path::PathBuf> {
    let arg0 = std::path::PathBuf::from(std::env::args_os().next()?);
    let path = if arg0.components().count() > 1 {
        std::path::absolute(&arg0).ok()?
    } else {
        let dirs = std::env::var_os("PATH")?;
        std::env::split_paths(&dirs)
            .map(|d| d.join(&arg0))
            .find(|p| p.is_file())
            .and_then(|p| std::path::absolute(p).ok())?
    };
    path.is_file().then_some(path)
}

/// How long a second signal waits for the cut sessions to write their records.
const SECOND_SIGNAL_CUT: std::time::Duration = std::time::Duration::from_secs(1);

/// An error already written to the log: the process exits with failure, printing nothing
/// more (a raw line would break a JSON log).
#[derive(Debug)]
struct Logged;

impl std::fmt::Display for Logged {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("(logged)")
    }
}

impl std::error::Error for Logged {}
