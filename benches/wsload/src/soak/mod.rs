//! `wsload soak`: thousands of sessions through a proxy for a long time, with churn, every
//! echoed byte checked; samples the proxy's memory, descriptors and metrics as it goes.
//!
//! Each of `--sessions` slots runs sessions back to back until `--duration` is over, so that
//! many are open at any moment and every one of them ends and is replaced many times. A
//! session is one of: clean (bursts of 1–8 messages of 0 bytes to 64 KiB, text and binary,
//! pauses, a ping now and then, a close handshake whose reply must match), reset (the same,
//! then the TCP connection dropped without a close frame, by RST or FIN, sometimes with
//! messages in flight) or slow reader (bulk messages read at 64–256 KiB/s through a small
//! receive buffer, so the proxy has to hold the other side back). Any lost, corrupted or
//! reordered byte, failed handshake, unexpected close or stall is an error, and so is a proxy
//! whose descriptors do not come back to where they started.

mod payload;
mod plot;
mod sample;
mod session;

use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::common::{self, Target};
use sample::{MetricsUrl, Sample};
use session::{Counters, Ctx};

#[derive(clap::Args)]
pub struct Args {
    /// ws://host:port/path (or wss://, with --ca or --insecure) of the proxy, in front of an
    /// echo backend (`wsload echo`)
    #[arg(long)]
    url: String,
    /// Sessions open at once (each slot opens the next when one ends)
    #[arg(long, default_value_t = 2000)]
    sessions: usize,
    /// How long sessions are started: 90s, 30m, 1h (then each finishes its burst and closes)
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    duration: Duration,
    /// Mean pause between a session's bursts (each pause is 0 to twice this)
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    think: Duration,
    /// Largest message in bytes (above 65535 the 64-bit frame length is used)
    #[arg(long, default_value_t = 65_600)]
    max_size: usize,
    /// Share of sessions that end with a TCP reset or FIN instead of a close frame
    #[arg(long, default_value_t = 0.10)]
    reset_share: f64,
    /// Share of sessions that are slow readers
    #[arg(long, default_value_t = 0.05)]
    slow_share: f64,
    /// Handshakes in progress at once
    #[arg(long, default_value_t = 64)]
    connect_concurrency: usize,
    /// Time for TCP connect and the WebSocket handshake
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    connect_timeout: Duration,
    /// A session waiting this long for an echo, a pong or a close reply has failed
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    stall_timeout: Duration,
    /// Seed of every random choice (default: the clock); a run is repeated with the same seed
    #[arg(long)]
    seed: Option<u64>,
    /// The proxy's process id: its VmRSS and open descriptors are sampled from /proc
    #[arg(long)]
    pid: Option<u32>,
    /// The proxy's Prometheus endpoint (http://127.0.0.1:9901/metrics): sessions open,
    /// sessions opened, handshakes refused
    #[arg(long)]
    metrics: Option<String>,
    /// Time between samples
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    interval: Duration,
    /// Write soak.csv and soak.svg here
    #[arg(long)]
    out: Option<PathBuf>,
    /// Descriptors the proxy may hold at the end beyond those it had at the start
    #[arg(long, default_value_t = 16)]
    fd_slack: u64,
    /// Per-connection read buffer size in bytes
    #[arg(long, default_value_t = 8192)]
    read_buf: usize,
    /// Print a single JSON object instead of text
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    tls: common::TlsArgs,
}

/// `500ms`, `90s`, `30m`, `2h`, or a number of seconds.
fn parse_duration(s: &str) -> Result<Duration, String> {
    let (num, unit) = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .map_or((s, "s"), |i| (&s[..i], &s[i..]));
    let n: f64 = num.parse().map_err(|_| format!("not a duration: {s}"))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => return Err(format!("not a duration: {s} (use ms, s, m or h)")),
    };
    Ok(Duration::from_secs_f64(secs))
}

/// `90s`, `30m`, `1h`: as the options are written.
fn human(d: Duration) -> String {
    let s = d.as_secs_f64();
    match s as u64 {
        n if s.fract() != 0.0 || n < 60 || n % 60 != 0 => format!("{s}s"),
        n if n % 3600 == 0 => format!("{}h", n / 3600),
        n => format!("{}m", n / 60),
    }
}

pub async fn run(a: Args) -> i32 {
    match soak(a).await {
        Ok(passed) => i32::from(!passed),
        Err(e) => {
            eprintln!("soak: {e}");
            2
        }
    }
}

/// What the proxy looked like at one sample, plus the driver's counts then.
struct Watch {
    pid: Option<u32>,
    metrics: Option<MetricsUrl>,
    t0: Instant,
    csv: Option<std::fs::File>,
    samples: Vec<Sample>,
    /// Why a sample could not be taken (the first time only).
    trouble: Option<String>,
}

impl Watch {
    async fn sample(&mut self, c: &Counters) -> Option<sample::Exposition> {
        // /proc first: the scrape's own connection is not one of the proxy's sessions.
        let rss = self.pid.map(sample::rss_kib);
        let fds = self.pid.map(sample::open_fds);
        let mut s = Sample {
            elapsed_s: self.t0.elapsed().as_secs_f64(),
            client_active: c.active.load(Relaxed),
            client_opened: c.opened.load(Relaxed),
            messages_echoed: c.messages_echoed.load(Relaxed),
            bytes_echoed: c.bytes_echoed.load(Relaxed),
            errors: c.errors(),
            ..Sample::default()
        };
        let expo = match &self.metrics {
            Some(m) => Some(m.scrape().await),
            None => None,
        };
        s.rss_kib = rss.and_then(|r| self.ok(r));
        s.fds = fds.and_then(|r| self.ok(r));
        let expo = expo.and_then(|r| self.ok(r));
        if let Some(e) = &expo {
            s.sessions_open = e.sum(sample::SESSIONS_OPEN);
            s.sessions_opened = e.sum(sample::SESSIONS_OPENED);
            s.refused = Some(e.sum(sample::REFUSED).unwrap_or(0.0));
        }
        if let Some(f) = &mut self.csv {
            if let Err(e) = writeln!(f, "{}", s.csv_row()) {
                self.trouble.get_or_insert(format!("soak.csv: {e}"));
            }
        }
        self.samples.push(s);
        expo
    }

    fn ok<T>(&mut self, r: Result<T, String>) -> Option<T> {
        r.map_err(|e| self.trouble.get_or_insert(e)).ok()
    }

    /// Until the proxy counts no session open (at most `limit`): what it holds once the
    /// load is gone is what the end sample must show.
    async fn settle(&self, limit: Duration) {
        let Some(m) = &self.metrics else { return };
        let until = Instant::now() + limit;
        while Instant::now() < until {
            match m.scrape().await {
                Ok(e) if e.sum(sample::SESSIONS_OPEN).unwrap_or(0.0) == 0.0 => return,
                _ => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    }
}

async fn soak(a: Args) -> Result<bool, String> {
    if a.sessions == 0 {
        return Err("--sessions must be > 0".into());
    }
    if !(0.0..=1.0).contains(&(a.reset_share + a.slow_share))
        || a.reset_share < 0.0
        || a.slow_share < 0.0
    {
        return Err("--reset-share and --slow-share must be >= 0 and add up to at most 1".into());
    }
    if a.interval.is_zero() {
        return Err("--interval must be > 0".into());
    }
    let target = Target::resolve(&a.url, None, &a.tls).await?;
    let metrics = a.metrics.as_deref().map(MetricsUrl::parse).transpose()?;
    let csv = match &a.out {
        Some(dir) => {
            std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
            let path = dir.join("soak.csv");
            let mut f =
                std::fs::File::create(&path).map_err(|e| format!("{}: {e}", path.display()))?;
            writeln!(f, "{}", sample::CSV_HEADER).map_err(|e| e.to_string())?;
            Some(f)
        }
        None => None,
    };
    let seed = a.seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64)
    });
    let t0 = Instant::now();
    let ctx = Arc::new(Ctx {
        target,
        ws_config: common::ws_config(a.read_buf),
        seed,
        deadline: t0 + a.duration,
        stall: a.stall_timeout,
        connect_timeout: a.connect_timeout,
        think: a.think,
        max_size: a.max_size,
        reset_share: a.reset_share,
        slow_share: a.slow_share,
        connects: Semaphore::new(a.connect_concurrency.max(1)),
        next_id: AtomicU64::new(0),
        counters: Counters::default(),
        errors: Default::default(),
    });
    let mut watch = Watch {
        pid: a.pid,
        metrics,
        t0,
        csv,
        samples: Vec::new(),
        trouble: None,
    };
    let before = watch.sample(&ctx.counters).await;
    if let Some(t) = &watch.trouble {
        return Err(format!("cannot sample the proxy: {t}"));
    }

    // Slots start over a ramp, so the first sessions do not all end together either.
    let ramp = (a.duration / 4).min(Duration::from_secs(10));
    let mut slots = JoinSet::new();
    for i in 0..a.sessions {
        let start = t0 + ramp.mul_f64(i as f64 / a.sessions as f64);
        slots.spawn(session::slot(ctx.clone(), start));
    }
    let mut tick = tokio::time::interval_at(t0 + a.interval, a.interval);
    let give_up = ctx.deadline + 2 * a.stall_timeout + Duration::from_secs(30);
    let stop = common::terminated();
    tokio::pin!(stop);
    let mut problems = Vec::new();
    loop {
        tokio::select! {
            _ = tick.tick() => { watch.sample(&ctx.counters).await; }
            r = slots.join_next() => match r {
                None => break,
                Some(Err(e)) => problems.push(format!("a slot's task failed: {e}")),
                Some(Ok(())) => {}
            },
            _ = tokio::time::sleep_until(give_up) => {
                problems.push(format!("{} slot(s) still busy {:?} after the end", slots.len(), give_up - ctx.deadline));
                slots.abort_all();
                break;
            }
            why = &mut stop => {
                problems.push(format!("stopped by {why}"));
                slots.abort_all();
                break;
            }
        }
    }
    watch.settle(Duration::from_secs(30)).await;
    let after = watch.sample(&ctx.counters).await;
    problems.extend(check_proxy(
        &a,
        &ctx.counters,
        &watch,
        before.as_ref(),
        after.as_ref(),
    ));
    if let Some(t) = &watch.trouble {
        problems.push(format!("sampling: {t}"));
    }
    let c = &ctx.counters;
    if c.errors() > 0 {
        problems.insert(0, format!("{} session(s) failed", c.errors()));
    }
    let title = format!(
        "wsgate soak: {} sessions at once for {}, {} sessions, {} messages, {} errors",
        a.sessions,
        human(a.duration),
        c.opened.load(Relaxed),
        c.messages_echoed.load(Relaxed),
        c.errors()
    );
    let mut files = Vec::new();
    if let Some(dir) = &a.out {
        let path = dir.join("soak.svg");
        std::fs::write(
            &path,
            plot::svg(&title, &watch.samples, a.duration.as_secs_f64()),
        )
        .map_err(|e| format!("{}: {e}", path.display()))?;
        files = vec![dir.join("soak.csv"), path];
    }
    report(&a, seed, &ctx, &watch, after.as_ref(), &problems, &files);
    Ok(problems.is_empty())
}

/// What the proxy must show after the run: every session the driver opened counted once, no
/// refusal, none left open, and its descriptors back where they were.
fn check_proxy(
    a: &Args,
    c: &Counters,
    watch: &Watch,
    before: Option<&sample::Exposition>,
    after: Option<&sample::Exposition>,
) -> Vec<String> {
    let mut problems = Vec::new();
    if let (Some(b), Some(e)) = (before, after) {
        let delta = |name| e.sum(name).unwrap_or(0.0) - b.sum(name).unwrap_or(0.0);
        let opened = delta(sample::SESSIONS_OPENED);
        if opened != c.opened.load(Relaxed) as f64 {
            problems.push(format!(
                "the proxy counted {opened} sessions opened, the driver opened {}",
                c.opened.load(Relaxed)
            ));
        }
        let refused = delta(sample::REFUSED);
        if refused != 0.0 {
            problems.push(format!("the proxy refused {refused} handshake(s)"));
        }
        let open = e.sum(sample::SESSIONS_OPEN).unwrap_or(0.0);
        if open != 0.0 {
            problems.push(format!("the proxy still counts {open} session(s) open"));
        }
    }
    let fds = |i: usize| watch.samples.get(i).and_then(|s| s.fds);
    if let (Some(start), Some(end)) = (fds(0), watch.samples.last().and_then(|s| s.fds)) {
        if end > start + a.fd_slack {
            problems.push(format!(
                "the proxy holds {end} descriptors after the run, {start} before (a leak?)"
            ));
        }
    }
    problems
}

/// Start, peak and end of one sampled value.
fn span(samples: &[Sample], f: impl Fn(&Sample) -> Option<f64>) -> Option<(f64, f64, f64)> {
    let v: Vec<f64> = samples.iter().filter_map(f).collect();
    Some((
        *v.first()?,
        v.iter().copied().fold(f64::MIN, f64::max),
        *v.last()?,
    ))
}

fn report(
    a: &Args,
    seed: u64,
    ctx: &Ctx,
    watch: &Watch,
    after: Option<&sample::Exposition>,
    problems: &[String],
    files: &[PathBuf],
) {
    let c = &ctx.counters;
    let n = |x: &AtomicU64| x.load(Relaxed);
    let rss = span(&watch.samples, |s| s.rss_kib.map(|k| k as f64 / 1024.0));
    let fds = span(&watch.samples, |s| s.fds.map(|n| n as f64));
    let open = span(&watch.samples, |s| s.sessions_open);
    let ended = after
        .map(|e| e.sum_by(sample::ENDED, "outcome"))
        .unwrap_or_default();
    let errors = ctx.errors.first();
    if a.json {
        let spanj = |s: Option<(f64, f64, f64)>| {
            s.map(|(a, p, e)| json!({"start": a, "peak": p, "end": e}))
        };
        println!(
            "{}",
            json!({
                "mode": "soak", "url": a.url, "seed": seed,
                "sessions_at_once": a.sessions, "duration_s": a.duration.as_secs_f64(),
                "sessions": {"opened": n(&c.opened), "clean": n(&c.clean), "reset": n(&c.reset),
                             "slow": n(&c.slow), "failed": n(&c.failed), "connect_failed": n(&c.connect_failed)},
                "messages": {"sent": n(&c.messages_sent), "echoed": n(&c.messages_echoed),
                             "bytes_echoed": n(&c.bytes_echoed), "pongs": n(&c.pongs),
                             "corrupted": n(&c.corrupted), "lost": n(&c.lost)},
                "errors": c.errors(),
                "rss_mib": spanj(rss), "open_fds": spanj(fds), "wsgate_sessions_open": spanj(open),
                "ended_by_outcome": ended,
                "samples": watch.samples.len(),
                "files": files,
                "problems": problems, "first_errors": errors,
            })
        );
        return;
    }
    let fmt = |s: Option<(f64, f64, f64)>, unit: &str| match s {
        Some((a, p, e)) if unit.is_empty() => format!("start {a}, peak {p}, end {e}"),
        Some((a, p, e)) => format!("start {a:.1}{unit}, peak {p:.1}{unit}, end {e:.1}{unit}"),
        None => "not sampled".into(),
    };
    println!(
        "soak: {} with {} sessions at once for {} (seed {seed})",
        a.url,
        a.sessions,
        human(a.duration)
    );
    println!(
        "  sessions: {} opened: {} closed cleanly, {} reset, {} slow readers; {} failed, {} could not connect",
        n(&c.opened), n(&c.clean), n(&c.reset), n(&c.slow), n(&c.failed), n(&c.connect_failed)
    );
    println!(
        "  messages: {} sent, {} echoed and verified ({:.1} MiB), {} pongs; {} corrupted, {} lost",
        n(&c.messages_sent),
        n(&c.messages_echoed),
        n(&c.bytes_echoed) as f64 / (1 << 20) as f64,
        n(&c.pongs),
        n(&c.corrupted),
        n(&c.lost)
    );
    println!("  errors: {}", c.errors());
    println!("  wsgate RSS: {}", fmt(rss, " MiB"));
    println!("  wsgate descriptors: {}", fmt(fds, ""));
    println!("  wsgate sessions open: {}", fmt(open, ""));
    if !ended.is_empty() {
        let by: Vec<String> = ended.iter().map(|(k, v)| format!("{k} {v}")).collect();
        println!("  wsgate sessions ended by outcome: {}", by.join(", "));
    }
    for f in files {
        println!("  wrote {}", f.display());
    }
    for e in &errors {
        println!("  error: {e}");
    }
    for p in problems {
        println!("  FAILED: {p}");
    }
    if problems.is_empty() {
        println!("  PASSED: no byte lost or corrupted, no unexpected failure");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("60s"), Ok(Duration::from_secs(60)));
        assert_eq!(parse_duration("30m"), Ok(Duration::from_secs(1800)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("1500ms"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("90"), Ok(Duration::from_secs(90)));
        assert!(parse_duration("5d").is_err());
        assert!(parse_duration("m").is_err());
        for s in ["90s", "30m", "1h", "1.5s", "150s"] {
            assert_eq!(human(parse_duration(s).unwrap()), s);
        }
    }
}
