//! Metrics: what the proxy counts, and its Prometheus / OpenMetrics exposition (`GET
//! /metrics` on the admin listener).
//!
//! Nothing here runs per message. The relay keeps its counters in each session's
//! [`crate::relay::Link`] (plain relaxed stores it needs anyway for the session API); a
//! session's final counts move into its route's [`RouteStats`] when it leaves the registry,
//! under the registry's lock. A scrape ([`collector`]) reads the totals and the live sessions
//! under that same lock, so every session is counted exactly once and no counter ever goes
//! back. Per-handshake and per-session events (refusals, backend latencies, session ends)
//! are a lock or an atomic add each.
//!
//! Labels are bounded: route and backend names come from the config, outcomes and close-code
//! classes from fixed lists; never a client address, a path or a user.

pub mod collector;
pub mod process;

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use prometheus_client::metrics::histogram::Histogram;

use crate::outcome::{CloseSide, Outcome};
use crate::relay::RelayOutcome;

/// Session lengths: a page view to a trading day.
const SESSION_SECONDS: &[f64] = &[
    0.1, 1.0, 10.0, 60.0, 300.0, 900.0, 1800.0, 3600.0, 7200.0, 14400.0, 28800.0, 86400.0,
];
/// Backend connect and handshake times: a LAN answers in well under a millisecond; the
/// default timeouts are 5 and 10 seconds.
const BACKEND_SECONDS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Plain HTTP exchanges, request head to the response's last byte: an API call in
/// milliseconds, a long poll in tens of seconds, a server-sent event stream for minutes.
const HTTP_SECONDS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
];

/// A counter per key, for events that happen at most once per handshake or session.
#[derive(Debug)]
pub struct Counts<K>(Mutex<BTreeMap<K, u64>>);

impl<K> Default for Counts<K> {
    fn default() -> Self {
        Counts(Mutex::new(BTreeMap::new()))
    }
}

impl<K: Ord + Clone> Counts<K> {
    pub fn add(&self, key: K) {
        *self
            .0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(key)
            .or_insert(0) += 1;
    }

    pub fn snapshot(&self) -> BTreeMap<K, u64> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// The close-code label: a code's number for the codes RFC 6455 and IANA define (1000–1015),
/// its range for application codes (`3xxx` registered, `4xxx` private), `none` for a close
/// frame without a code, and `invalid` for anything else: at most 20 values whatever peers
/// send.
pub fn code_label(code: Option<u16>) -> &'static str {
    const KNOWN: [&str; 16] = [
        "1000", "1001", "1002", "1003", "1004", "1005", "1006", "1007", "1008", "1009", "1010",
        "1011", "1012", "1013", "1014", "1015",
    ];
    match code {
        None => "none",
        Some(c @ 1000..=1015) => KNOWN[usize::from(c - 1000)],
        Some(3000..=3999) => "3xxx",
        Some(4000..=4999) => "4xxx",
        Some(_) => "invalid",
    }
}

/// One route's counters (beside its live sessions, which the scrape reads from the
/// registry).
#[derive(Debug)]
pub struct RouteStats {
    /// Sessions opened (101 sent).
    pub opened: AtomicU64,
    /// Ended sessions by outcome and who closed.
    pub ended: Counts<(Outcome, CloseSide)>,
    /// Close frames received at the end of sessions: (sender, code label).
    pub close_frames: Counts<(CloseSide, &'static str)>,
    pub duration: Histogram,
    /// What ended sessions moved, added when each leaves the registry.
    pub ended_traffic: Traffic,
    /// Plain HTTP requests (routes with `http = true`).
    pub http: HttpStats,
}

impl Default for RouteStats {
    fn default() -> Self {
        RouteStats {
            opened: AtomicU64::new(0),
            ended: Counts::default(),
            close_frames: Counts::default(),
            duration: Histogram::new(SESSION_SECONDS.iter().copied()),
            ended_traffic: Traffic::default(),
            http: HttpStats::default(),
        }
    }
}

/// Bytes and messages each way, and pings sent, in that order ([`Traffic::of`]).
#[derive(Debug, Default)]
pub struct Traffic([AtomicU64; 5]);

impl Traffic {
    /// A session's live counters, in `Traffic`'s order: bytes client→backend and
    /// backend→client, messages the same, pings sent.
    pub fn of(c: &crate::relay::Counters) -> [u64; 5] {
        let r = Ordering::Relaxed;
        [
            c.client_to_backend.load(r),
            c.backend_to_client.load(r),
            c.messages_client_to_backend.load(r),
            c.messages_backend_to_client.load(r),
            u64::from(c.pings_sent.load(r)),
        ]
    }

    /// Adds a session's live counters.
    pub fn add(&self, c: &crate::relay::Counters) {
        for (total, v) in self.0.iter().zip(Traffic::of(c)) {
            total.fetch_add(v, Ordering::Relaxed);
        }
    }

    /// The five totals, in `Traffic`'s order.
    pub fn values(&self) -> [u64; 5] {
        self.0.each_ref().map(|t| t.load(Ordering::Relaxed))
    }
}

impl RouteStats {
    /// A session has ended: its outcome, who closed, the close frames each side sent, and
    /// how long it lasted. (Its traffic moved to `ended_traffic` when it left the registry.)
    pub fn session_ended(&self, out: &RelayOutcome, lasted: Duration) {
        self.ended.add((out.outcome(), out.closed_by));
        if let Some(c) = &out.client_close {
            self.close_frames
                .add((CloseSide::Client, code_label(c.code)));
        }
        if let Some(c) = &out.backend_close {
            self.close_frames
                .add((CloseSide::Backend, code_label(c.code)));
        }
        self.duration.observe(lasted.as_secs_f64());
    }
}

/// A route's plain HTTP requests: one count per request when it ends (refused, or its
/// response ended), never per chunk.
#[derive(Debug)]
pub struct HttpStats {
    /// By status class (`2xx`, ...) and outcome (`completed`, `backend_gone`, a refusal's).
    pub requests: Counts<(&'static str, Outcome)>,
    /// Request head to the response's end, of the requests a backend answered.
    pub duration: Histogram,
}

impl Default for HttpStats {
    fn default() -> Self {
        HttpStats {
            requests: Counts::default(),
            duration: Histogram::new(HTTP_SECONDS.iter().copied()),
        }
    }
}

impl HttpStats {
    /// A request has ended with `status` and `outcome`; `lasted` for one a backend answered.
    pub fn observe(&self, status: u16, outcome: Outcome, lasted: Option<Duration>) {
        self.requests.add((status_class(status), outcome));
        if let Some(d) = lasted {
            self.duration.observe(d.as_secs_f64());
        }
    }
}

/// The status-class label: six values whatever a backend answers.
pub fn status_class(status: u16) -> &'static str {
    match status {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        500..=599 => "5xx",
        _ => "other",
    }
}

/// One backend's counters (per route: a backend named by two routes is two backends).
#[derive(Debug)]
pub struct BackendStats {
    pub connect: Histogram,
    pub handshake: Histogram,
    /// Failed connects and handshakes by outcome (`backend_unreachable`, ...).
    pub failures: Counts<Outcome>,
    /// Passive ejections (failed handshakes in a row).
    pub ejections: AtomicU64,
    /// Active health checks by result (`ok`, `failed`).
    pub checks: Counts<&'static str>,
    /// How long active checks took (a failed one up to its timeout).
    pub check_seconds: Histogram,
}

impl Default for BackendStats {
    fn default() -> Self {
        BackendStats {
            connect: Histogram::new(BACKEND_SECONDS.iter().copied()),
            handshake: Histogram::new(BACKEND_SECONDS.iter().copied()),
            failures: Counts::default(),
            ejections: AtomicU64::new(0),
            checks: Counts::default(),
            check_seconds: Histogram::new(BACKEND_SECONDS.iter().copied()),
        }
    }
}

/// One listener's counters.
#[derive(Debug, Default)]
pub struct ListenerStats {
    /// Connections accepted.
    pub accepted: AtomicU64,
    /// Failed `accept` calls by kind: `emfile` (the process is out of descriptors), `enfile`
    /// (the system is), `other`.
    pub accept_errors: Counts<&'static str>,
    pub tls_handshakes: AtomicU64,
    /// Failed TLS handshakes by outcome (`tls_handshake_failed`, `tls_handshake_timeout`,
    /// `plain_http_on_tls`).
    pub tls_failures: Counts<Outcome>,
}

impl ListenerStats {
    pub fn accept_error(&self, e: &std::io::Error) {
        self.accept_errors.add(match e.raw_os_error() {
            Some(24) => "emfile",
            Some(23) => "enfile",
            _ => "other",
        });
    }
}

#[cfg(test)]
mod tests {
    use super::code_label;

    #[test]
    fn close_code_labels_are_bounded() {
        let mut labels = std::collections::BTreeSet::new();
        for c in 0..=u16::MAX {
            labels.insert(code_label(Some(c)));
        }
        labels.insert(code_label(None));
        assert_eq!(labels.len(), 16 + 4);
        assert_eq!(code_label(Some(1000)), "1000");
        assert_eq!(code_label(Some(1015)), "1015");
        assert_eq!(code_label(Some(4321)), "4xxx");
        assert_eq!(code_label(Some(999)), "invalid");
    }
}
