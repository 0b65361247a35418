//! The exposition: every family, built at scrape time from the routes' counters, the live
//! sessions and the process (see the module docs of [`super`]).

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::SystemTime;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;

use super::Traffic;
use crate::outcome::{CloseSide, Outcome};
use crate::proxy::ProxyState;

/// `Content-Type` of the Prometheus text format (what Prometheus asks for by default).
pub const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";
/// `Content-Type` of OpenMetrics text, served when the scraper's `Accept` asks for it.
pub const OPENMETRICS_TEXT: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// What a scrape reads.
#[derive(Debug)]
pub struct GatewayMetrics {
    pub state: Arc<ProxyState>,
    pub started: SystemTime,
}

/// A registry holding `metrics` as its one collector.
pub fn registry(metrics: GatewayMetrics) -> Registry {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(metrics));
    registry
}

/// The exposition in Prometheus text format, or OpenMetrics.
pub fn render(registry: &Registry, openmetrics: bool) -> String {
    let mut out = String::with_capacity(16 * 1024);
    // Writing into a String cannot fail, and the encoders fail only on a writer's error.
    let _ = if openmetrics {
        prometheus_client::encoding::text::encode(&mut out, registry)
    } else {
        prometheus_client::encoding::prometheus_text::encode(&mut out, registry)
    };
    out
}

type Labels = Vec<(&'static str, Cow<'static, str>)>;

/// Every backend of `routes`, with its route and backend labels.
fn backend_series<'a>(
    routes: &'a [&'a Arc<crate::route::Route>],
) -> impl Iterator<Item = (Labels, &'a crate::backend::Backend)> + 'a {
    routes.iter().flat_map(|r| {
        r.pool
            .backends()
            .iter()
            .map(move |b| (vec![("route", s(&r.name)), ("backend", s(&b.name))], &**b))
    })
}

fn s(v: &str) -> Cow<'static, str> {
    Cow::Owned(v.to_string())
}

fn st(v: &'static str) -> Cow<'static, str> {
    Cow::Borrowed(v)
}

/// Writes one family of const values.
fn family<M: EncodeMetric>(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    kind: MetricType,
    rows: impl IntoIterator<Item = (Labels, M)>,
) -> fmt::Result {
    let mut m = enc.encode_descriptor(name, help, None, kind)?;
    for (labels, metric) in rows {
        metric.encode(m.encode_family(&labels)?)?;
    }
    Ok(())
}

fn counters(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    rows: impl IntoIterator<Item = (Labels, u64)>,
) -> fmt::Result {
    family(
        enc,
        name,
        help,
        MetricType::Counter,
        rows.into_iter().map(|(l, v)| (l, ConstCounter::new(v))),
    )
}

fn gauges(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    rows: impl IntoIterator<Item = (Labels, i64)>,
) -> fmt::Result {
    family(
        enc,
        name,
        help,
        MetricType::Gauge,
        rows.into_iter().map(|(l, v)| (l, ConstGauge::new(v))),
    )
}

fn histograms<'h>(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    rows: impl IntoIterator<Item = (Labels, &'h Histogram)>,
) -> fmt::Result {
    let mut m = enc.encode_descriptor(name, help, None, MetricType::Histogram)?;
    for (labels, h) in rows {
        h.encode(m.encode_family(&labels)?)?;
    }
    Ok(())
}

fn side(s: CloseSide) -> Cow<'static, str> {
    st(s.as_str())
}

fn status_label(status: u16) -> Cow<'static, str> {
    if status == 0 {
        st("none")
    } else {
        s(&status.to_string())
    }
}

/// Live sessions and their traffic, read under the registry's lock together with the
/// routes' totals of ended sessions: a session counts in one or the other, never both.
struct Live {
    /// By (route, backend) name.
    open: HashMap<(Arc<str>, Arc<str>), i64>,
    /// By route name: ended sessions' totals plus the live sessions' counters.
    traffic: HashMap<Arc<str>, [u64; 5]>,
}

fn live(state: &ProxyState) -> Live {
    let mut open = HashMap::new();
    let mut traffic: HashMap<Arc<str>, [u64; 5]> = HashMap::new();
    let generation = state.current();
    state.sessions.locked(|sessions| {
        for r in generation.routes.counted() {
            traffic.insert(r.name.clone(), r.stats.ended_traffic.values());
        }
        for s in sessions {
            *open
                .entry((s.route.name.clone(), s.backend().clone()))
                .or_insert(0) += 1;
            let sum = traffic
                .entry(s.route.name.clone())
                .or_insert_with(|| s.route.stats.ended_traffic.values());
            for (t, v) in sum.iter_mut().zip(Traffic::of(&s.link.counters)) {
                *t += v;
            }
        }
    });
    Live { open, traffic }
}

impl Collector for GatewayMetrics {
    fn encode(&self, mut enc: DescriptorEncoder) -> fmt::Result {
        let state = &self.state;
        let generation = state.current();
        let routes: Vec<_> = generation.routes.iter().collect();
        // For the counters of what ended: the routes a reload removed too, a while.
        let counted: Vec<_> = generation.routes.counted().collect();
        let route = |name: &Arc<str>| -> Labels { vec![("route", s(name))] };
        let mut live = live(state);

        // --- Build and process. ---
        let info = Info::new(vec![("version", env!("CARGO_PKG_VERSION"))]);
        let mut m =
            enc.encode_descriptor("wsgate_build", "wsgate's version.", None, MetricType::Info)?;
        info.encode(m.encode_family(&Labels::new())?)?;
        let started = self
            .started
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default();
        family(
            &mut enc,
            "process_start_time_seconds",
            "When the process started, in seconds since the Unix epoch.",
            MetricType::Gauge,
            [(Labels::new(), ConstGauge::new(started.as_secs_f64()))],
        )?;
        let uptime = SystemTime::now()
            .duration_since(self.started)
            .unwrap_or_default();
        family(
            &mut enc,
            "wsgate_uptime_seconds",
            "Seconds since the gateway started.",
            MetricType::Gauge,
            [(Labels::new(), ConstGauge::new(uptime.as_secs_f64()))],
        )?;
        let p = super::process::read();
        for (name, help, value) in [
            (
                "process_open_fds",
                "Open file descriptors (sockets included).",
                p.open_fds,
            ),
            (
                "process_max_fds",
                "The soft limit on open file descriptors.",
                p.max_fds,
            ),
            (
                "process_resident_memory_bytes",
                "Resident memory.",
                p.resident_bytes,
            ),
            ("process_threads", "Operating system threads.", p.threads),
        ] {
            if let Some(v) = value {
                gauges(&mut enc, name, help, [(Labels::new(), v as i64)])?;
            }
        }
        if let Some(cpu) = p.cpu_seconds {
            family(
                &mut enc,
                "process_cpu_seconds",
                "User and system CPU time.",
                MetricType::Counter,
                [(Labels::new(), ConstCounter::new(cpu))],
            )?;
        }
        counters(
            &mut enc,
            "wsgate_config_reloads",
            "Config reloads (SIGHUP, POST /api/reload) by result: ok, failed (the running \
             config stayed).",
            ["ok", "failed"].map(|r| {
                let n = state.reloads.snapshot().get(r).copied().unwrap_or(0);
                (vec![("result", st(r))], n)
            }),
        )?;
        gauges(
            &mut enc,
            "wsgate_config_generation",
            "The config generation serving new handshakes: 1 at start, one more per reload.",
            [(Labels::new(), generation.number as i64)],
        )?;
        let draining = state.is_shutting_down();
        gauges(
            &mut enc,
            "wsgate_draining",
            "1 while the gateway drains (shutting down: /readyz answers 503).",
            [(Labels::new(), i64::from(draining))],
        )?;

        // --- Admission limits. ---
        let limits = &generation.config.limits;
        let descriptors = &state.descriptors;
        if descriptors.limit() != u64::MAX {
            let as_gauge = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
            gauges(
                &mut enc,
                "wsgate_fd_limit",
                "The file descriptor limit the gateway runs under (the soft RLIMIT_NOFILE, raised \
                 to the hard limit at start).",
                [(Labels::new(), as_gauge(descriptors.limit()))],
            )?;
            gauges(
                &mut enc,
                "wsgate_fd_reserve",
                "File descriptors new sessions leave free (fd_reserve): past limit - reserve, \
                 handshakes get 503 fd_reserve.",
                [(
                    Labels::new(),
                    as_gauge(descriptors.reserve(limits.fd_reserve)),
                )],
            )?;
        }
        let gates = || {
            std::iter::once((st("-"), &generation.gate))
                .chain(routes.iter().map(|r| (s(&r.name), &r.gate)))
        };
        gauges(
            &mut enc,
            "wsgate_sessions_admitted",
            "Sessions holding a place under the admission limits (handshakes past admission \
             included), for the whole process (route -) and by route.",
            gates().map(|(name, g)| (vec![("route", name)], i64::from(g.admitted()))),
        )?;
        gauges(
            &mut enc,
            "wsgate_sessions_limit",
            "max_sessions, for the whole process (route -) and by route, where set.",
            gates().filter_map(|(name, g)| {
                let max = g.limits.max_sessions?;
                Some((vec![("route", name)], i64::from(max)))
            }),
        )?;
        gauges(
            &mut enc,
            "wsgate_handshake_rate_clients",
            "Client addresses the handshake rate tables track (handshake_rate_per_ip), for the \
             whole process (route -) and by route, where a rate is set.",
            gates().filter_map(|(name, g)| {
                g.limits.handshake_rate?;
                let n = i64::try_from(g.rate_keys()).unwrap_or(i64::MAX);
                Some((vec![("route", name)], n))
            }),
        )?;

        // --- Listeners (those running now: a reload may add or remove some). ---
        let listeners = state.listeners.stats();
        let listener = |a: &SocketAddr| -> Labels { vec![("listener", s(&a.to_string()))] };
        counters(
            &mut enc,
            "wsgate_connections_accepted",
            "TCP connections accepted, by listener.",
            listeners.iter().map(|(a, l)| {
                (
                    listener(a),
                    l.accepted.load(std::sync::atomic::Ordering::Relaxed),
                )
            }),
        )?;
        counters(
            &mut enc,
            "wsgate_accept_errors",
            "Failed accepts by listener and kind (emfile: out of file descriptors).",
            listeners.iter().flat_map(|(a, l)| {
                l.accept_errors.snapshot().into_iter().map(move |(k, n)| {
                    let mut labels = listener(a);
                    labels.push(("kind", st(k)));
                    (labels, n)
                })
            }),
        )?;
        counters(
            &mut enc,
            "wsgate_tls_handshakes",
            "Completed TLS handshakes, by listener.",
            listeners.iter().map(|(a, l)| {
                (
                    listener(a),
                    l.tls_handshakes.load(std::sync::atomic::Ordering::Relaxed),
                )
            }),
        )?;
        counters(
            &mut enc,
            "wsgate_tls_handshake_failures",
            "Failed TLS handshakes by listener and outcome (tls_handshake_failed, \
             tls_handshake_timeout, plain_http_on_tls).",
            listeners.iter().flat_map(|(a, l)| {
                l.tls_failures.snapshot().into_iter().map(move |(o, n)| {
                    let mut labels = listener(a);
                    labels.push(("outcome", st(o.as_str())));
                    (labels, n)
                })
            }),
        )?;

        // --- Handshakes refused. ---
        let unrouted = state.unrouted_refusals.by_status();
        let mut refused: Vec<(Labels, u64)> = Vec::new();
        let mut add_refused =
            |name: Cow<'static, str>, m: std::collections::BTreeMap<(Outcome, u16), u64>| {
                for ((o, status), n) in m {
                    refused.push((
                        vec![
                            ("route", name.clone()),
                            ("outcome", st(o.as_str())),
                            ("status", status_label(status)),
                        ],
                        n,
                    ));
                }
            };
        add_refused(st("-"), unrouted);
        for r in &counted {
            add_refused(s(&r.name), r.refusals.by_status());
        }
        counters(
            &mut enc,
            "wsgate_handshakes_refused",
            "Requests and connections refused before a session, by route (- when none \
             matched), outcome and HTTP status (none: closed without an answer).",
            refused,
        )?;

        // --- Sessions. ---
        // Every current route's backends, and the pairs a reload removed while their
        // sessions wait for their 1012 (closed over `close_spread`): still open, so counted.
        let mut open = std::mem::take(&mut live.open);
        let mut open_series: Vec<(Labels, i64)> = Vec::new();
        for r in &routes {
            for b in r.pool.backends().iter() {
                let n = open.remove(&(r.name.clone(), b.name.clone())).unwrap_or(0);
                open_series.push((vec![("route", s(&r.name)), ("backend", s(&b.name))], n));
            }
        }
        let mut leaving: Vec<_> = open.into_iter().collect();
        leaving.sort();
        open_series.extend(
            leaving
                .into_iter()
                .map(|((r, b), n)| (vec![("route", s(&r)), ("backend", s(&b))], n)),
        );
        gauges(
            &mut enc,
            "wsgate_sessions_open",
            "Sessions open now, by route and backend (a backend or route a reload removed \
             while its sessions close).",
            open_series,
        )?;
        gauges(
            &mut enc,
            "wsgate_sessions_hibernating",
            "Open sessions hibernating now (quiet for their route's hibernate_after: no task, \
             their sockets watched by their worker's lot); counted in wsgate_sessions_open too.",
            [(Labels::new(), state.sessions.lots().asleep() as i64)],
        )?;
        let lots = state.sessions.lots().counts();
        counters(
            &mut enc,
            "wsgate_sessions_hibernated",
            "Times a quiet session hibernated (gave up its task and its sockets' registrations).",
            [(Labels::new(), lots.slept)],
        )?;
        counters(
            &mut enc,
            "wsgate_sessions_woken",
            "Hibernating sessions woken, by cause: input (or a close) on either socket, one of \
             the session's timers, or a signal (a drain, a reload, an operator's close). Each \
             wake costs about what relaying one message does.",
            [
                ("input", lots.by_input),
                ("timer", lots.by_timer),
                ("signal", lots.by_signal),
            ]
            .map(|(cause, n)| (vec![("cause", st(cause))], n)),
        )?;
        counters(
            &mut enc,
            "wsgate_sessions_opened",
            "Sessions opened (the client got its 101), by route.",
            counted.iter().map(|r| {
                (
                    route(&r.name),
                    r.stats.opened.load(std::sync::atomic::Ordering::Relaxed),
                )
            }),
        )?;
        counters(
            &mut enc,
            "wsgate_sessions_ended",
            "Sessions ended, by route, outcome and who started the end (client, backend, \
             proxy).",
            counted.iter().flat_map(|r| {
                r.stats
                    .ended
                    .snapshot()
                    .into_iter()
                    .map(move |((o, by), n)| {
                        (
                            vec![
                                ("route", s(&r.name)),
                                ("outcome", st(o.as_str())),
                                ("closed_by", side(by)),
                            ],
                            n,
                        )
                    })
            }),
        )?;
        histograms(
            &mut enc,
            "wsgate_session_duration_seconds",
            "How long ended sessions lasted, by route.",
            counted.iter().map(|r| (route(&r.name), &r.stats.duration)),
        )?;
        let traffic = |i: usize| {
            let live = &live;
            counted.iter().flat_map(move |r| {
                let t = live.traffic.get(&r.name).copied().unwrap_or_default();
                [("client_to_backend", t[i]), ("backend_to_client", t[i + 1])]
                    .map(|(d, v)| (vec![("route", s(&r.name)), ("direction", st(d))], v))
            })
        };
        counters(
            &mut enc,
            "wsgate_session_bytes",
            "Bytes of WebSocket frames (headers included) read from each side, by route and \
             direction, what the proxy dropped after ending a session included; live \
             sessions included.",
            traffic(0),
        )?;
        counters(
            &mut enc,
            "wsgate_session_messages",
            "WebSocket messages read from each side, by route and direction, what the proxy \
             dropped after ending a session included; live sessions included.",
            traffic(2),
        )?;
        counters(
            &mut enc,
            "wsgate_pings_sent",
            "Pings the proxy sent to peers that had been quiet (ping_interval), by route.",
            counted.iter().map(|r| {
                let t = live.traffic.get(&r.name).copied().unwrap_or_default();
                (route(&r.name), t[4])
            }),
        )?;
        counters(
            &mut enc,
            "wsgate_peers_unresponsive",
            "Peers found dead: no answer to the proxy's ping within pong_timeout, by route \
             and side.",
            counted.iter().flat_map(|r| {
                let ended = r.stats.ended.snapshot();
                let count = move |o: Outcome| {
                    ended
                        .iter()
                        .filter(|((e, _), _)| *e == o)
                        .map(|(_, n)| n)
                        .sum::<u64>()
                };
                [
                    ("client", count(Outcome::ClientPingTimeout)),
                    ("backend", count(Outcome::BackendPingTimeout)),
                ]
                .map(|(who, n)| (vec![("route", s(&r.name)), ("side", st(who))], n))
            }),
        )?;
        counters(
            &mut enc,
            "wsgate_close_frames",
            "Close frames peers sent, by route, sender and code (1000-1015, 3xxx, 4xxx, \
             none: no code, invalid).",
            counted.iter().flat_map(|r| {
                r.stats
                    .close_frames
                    .snapshot()
                    .into_iter()
                    .map(move |((from, code), n)| {
                        (
                            vec![
                                ("route", s(&r.name)),
                                ("from", side(from)),
                                ("code", st(code)),
                            ],
                            n,
                        )
                    })
            }),
        )?;

        counters(
            &mut enc,
            "wsgate_http_requests",
            "Plain HTTP requests (routes with http = true) that ended, by route, status \
             class and outcome (completed, backend_gone, client_gone, request_timeout, or a \
             refusal's).",
            counted.iter().flat_map(|r| {
                r.stats
                    .http
                    .requests
                    .snapshot()
                    .into_iter()
                    .map(move |((class, o), n)| {
                        (
                            vec![
                                ("route", s(&r.name)),
                                ("class", st(class)),
                                ("outcome", st(o.as_str())),
                            ],
                            n,
                        )
                    })
            }),
        )?;
        histograms(
            &mut enc,
            "wsgate_http_request_duration_seconds",
            "Plain HTTP requests a backend answered, request head to the response's last \
             byte, by route.",
            counted
                .iter()
                .map(|r| (route(&r.name), &r.stats.http.duration)),
        )?;

        // --- Backends. ---
        // The current routes' backends, for the gauges (drained, healthy now); for the
        // counters and histograms, those of the routes a reload removed too, as long as the
        // routes' own counters are shown (`RouteTable::counted`): what failed between the
        // last scrape and the reload is not lost.
        let backends = || backend_series(&routes);
        let counted_backends = || backend_series(&counted);
        histograms(
            &mut enc,
            "wsgate_backend_connect_seconds",
            "Time to connect to a backend (TCP, and DNS where the URL names a host), by \
             route and backend.",
            counted_backends().map(|(l, b)| (l, &b.stats.connect)),
        )?;
        histograms(
            &mut enc,
            "wsgate_backend_handshake_seconds",
            "Time from the upgrade request sent to the backend's 101 (TLS included for \
             wss://), by route and backend.",
            counted_backends().map(|(l, b)| (l, &b.stats.handshake)),
        )?;
        counters(
            &mut enc,
            "wsgate_backend_failures",
            "Failed backend connects and handshakes, by route, backend and outcome.",
            counted_backends().flat_map(|(l, b)| {
                b.stats.failures.snapshot().into_iter().map(move |(o, n)| {
                    let mut labels = l.clone();
                    labels.push(("outcome", st(o.as_str())));
                    (labels, n)
                })
            }),
        )?;
        gauges(
            &mut enc,
            "wsgate_backend_draining",
            "1 for a backend drained through the admin API (it takes no new sessions).",
            backends().map(|(l, b)| (l, i64::from(b.is_draining()))),
        )?;
        let now = std::time::Instant::now();
        gauges(
            &mut enc,
            "wsgate_backend_healthy",
            "1 for a backend that takes new sessions by its health (active checks passed, not \
             ejected), 0 otherwise; draining is wsgate_backend_draining.",
            backends().map(|(l, b)| {
                let healthy = b.health.status(now) == crate::backend::health::Status::Healthy;
                (l, i64::from(healthy))
            }),
        )?;
        counters(
            &mut enc,
            "wsgate_backend_ejections",
            "Passive ejections of a backend (max_failures failed handshakes in a row), by \
             route and backend.",
            counted_backends().map(|(l, b)| {
                let n = b.stats.ejections.load(std::sync::atomic::Ordering::Relaxed);
                (l, n)
            }),
        )?;
        counters(
            &mut enc,
            "wsgate_backend_health_checks",
            "Active health checks, by route, backend and result (ok, failed).",
            counted_backends().flat_map(|(l, b)| {
                b.stats.checks.snapshot().into_iter().map(move |(r, n)| {
                    let mut labels = l.clone();
                    labels.push(("result", st(r)));
                    (labels, n)
                })
            }),
        )?;
        histograms(
            &mut enc,
            "wsgate_backend_health_check_seconds",
            "Time an active health check took (a failed one up to its timeout), by route and \
             backend.",
            counted_backends().map(|(l, b)| (l, &b.stats.check_seconds)),
        )?;
        Ok(())
    }
}
