//! wsload: a WebSocket echo backend and load generator for comparing
//! WebSocket reverse proxies (see ../compare.md).

mod common;
mod echo;
mod handshakes;
mod idle;
mod soak;
mod throughput;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "wsload",
    version,
    about = "WebSocket echo backend and load generator for proxy benchmarks"
)]
struct Cli {
    /// Tokio worker threads (1 = single-threaded runtime, the default)
    #[arg(long, global = true, default_value_t = 1)]
    threads: usize,

    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// WebSocket echo backend: echoes text/binary, answers pings, completes close
    /// handshakes, and accepts any offered subprotocol (echoes the first one).
    Echo(echo::Args),
    /// N connections exchanging messages with the backend (closed loop with a
    /// window per connection, or paced with --rate); verifies every echo.
    Throughput(throughput::Args),
    /// Open N connections, hold them idle (optionally pinging), then close them.
    Idle(idle::Args),
    /// Open and cleanly close connections in a loop; measures handshake rate and latency.
    Handshakes(handshakes::Args),
    /// Thousands of sessions for a long time with churn (clean closes, resets, slow
    /// readers), every echo verified; samples the proxy's memory, descriptors and metrics.
    Soak(soak::Args),
}

fn main() {
    let cli = Cli::parse();
    common::raise_nofile_limit();
    let rt = if cli.threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(cli.threads)
            .enable_all()
            .build()
    }
    .expect("failed to build tokio runtime");
    let code = rt.block_on(async move {
        match cli.cmd {
            Cmd::Echo(a) => echo::run(a).await,
            Cmd::Throughput(a) => throughput::run(a).await,
            Cmd::Idle(a) => idle::run(a).await,
            Cmd::Handshakes(a) => handshakes::run(a).await,
            Cmd::Soak(a) => soak::run(a).await,
        }
    });
    // Do not wait for lingering tasks (e.g. connections that never closed).
    rt.shutdown_background();
    std::process::exit(code);
}
