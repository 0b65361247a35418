//! A route's HTTP backends ("targets"), each with its pooled client, and the order in which
//! one request tries them: the route's balancing, without connecting (the pooled client
//! connects, or reuses a kept-alive connection), and what a failed connect does to a
//! target's standing (passive ejection, as for a handshake).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use super::body::RequestBody;
use crate::backend::Affinity;
use crate::backend::BackendPool;
use crate::backend::health::{Change, Health};
use crate::config::{BackendUrl, Balance};
use crate::http_client::connector::Bounded;
use crate::outcome::Outcome;
use crate::route::Route;

/// Kept-alive connections one backend may hold unused. A burst of N parallel requests opens
/// N connections; after it, this many stay ready for the next burst and the rest close, so
/// a spike does not pin sockets on the backend for the idle timeout.
pub const MAX_IDLE_PER_BACKEND: usize = 64;

/// The header fields an HTTP/1.1 backend's response head may have (hyper's default is 100:
/// a page setting a hundred cookies got 502). The head's bytes are bounded apart from this
/// (hyper's read buffer, about 400 KiB).
pub const MAX_RESPONSE_HEADERS: usize = 1000;

pub type PooledClient = Client<Bounded<hyper_rustls::HttpsConnector<HttpConnector>>, RequestBody>;

/// One backend of a route's HTTP side.
#[derive(Debug)]
pub struct Target {
    /// `http(s)://host:port/path?query` as the backend path rules read it (the scheme is
    /// `tls`).
    pub url: BackendUrl,
    /// The URL as written, for logs and records.
    pub name: Arc<str>,
    pub client: PooledClient,
    /// Whether wsgate sends this `https://` backend a client certificate (for the words of
    /// its refusal, `crate::backend::alert_refusal`).
    pub client_cert: bool,
    /// The last connection to this `https://` backend speaks HTTP/1.1, not HTTP/2 (ALPN
    /// decides per connection; the connector notes it, `Bounded::noting_http1`): see
    /// [`Target::speaks_http1`].
    connected_http1: Arc<std::sync::atomic::AtomicBool>,
    /// Requests on this backend whose responses have not ended (`least_conn`).
    in_flight: Arc<AtomicUsize>,
    /// Failed connects in a row and ejection, under the route's `[route.health]`
    /// `max_failures`, for targets of their own (`http_backends`); the route's backends
    /// keep theirs in the pool, shared with handshakes.
    health: Health,
}

/// One request's claim on a target, for `least_conn`, until its response body ends.
#[derive(Debug)]
pub struct InFlight(Arc<AtomicUsize>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// How a target's client connects.
pub struct ClientSettings {
    /// For `https://`: the route's backend TLS settings (verified or not, per backend).
    pub tls: Option<Arc<rustls::ClientConfig>>,
    pub connect_timeout: Duration,
    pub idle_timeout: Duration,
    /// A write to the backend that takes nothing for this long fails its connection (the
    /// route's `response_header_timeout`, see [`crate::http_client::connector::StallBounded`]).
    pub write_stall: Duration,
}

impl Target {
    pub fn new(url: BackendUrl, name: &str, settings: &ClientSettings) -> Result<Target, String> {
        let connected_http1 = Arc::new(std::sync::atomic::AtomicBool::new(false));
        Ok(Target {
            client: client(settings, &url, connected_http1.clone())?,
            connected_http1,
            client_cert: settings
                .tls
                .as_deref()
                .is_some_and(crate::backend::has_client_cert),
            name: Arc::from(name),
            url,
            in_flight: Arc::default(),
            health: Health::default(),
        })
    }

    /// Whether the next request goes out in HTTP/1.1 as far as can be told before its
    /// connection is chosen: always for `http://`; for `https://` when the last connection
    /// ALPN set up speaks it. Before the first connection is up it may be either, and HTTP/2
    /// is assumed. The request's connection options depend on it: hyper's HTTP/2 client
    /// drops every header `Connection` names.
    pub fn speaks_http1(&self) -> bool {
        !self.url.tls || self.connected_http1.load(Ordering::Relaxed)
    }

    pub fn claim(&self) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(self.in_flight.clone())
    }

    fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }
}

/// A pooled client: keep-alive with at most [`MAX_IDLE_PER_BACKEND`] idle connections,
/// closed after `idle_timeout` unused; HTTP/2 when a TLS backend offers it (ALPN), HTTP/1.1
/// otherwise. Built without a runtime (the pool's reaper starts with the first connection).
fn client(
    s: &ClientSettings,
    url: &BackendUrl,
    http1: Arc<std::sync::atomic::AtomicBool>,
) -> Result<PooledClient, String> {
    let tls = url.tls;
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(s.connect_timeout));
    let config = match (&s.tls, tls) {
        (Some(config), true) => (**config).clone(),
        // Plain http:// never uses it, but the connector wants one.
        _ => {
            (*crate::http_client::tls_for(&http::Uri::from_static("http://backend"), None)?).clone()
        }
    };
    // hyper-rustls sets ALPN itself (h2, http/1.1), and refuses a config that has some.
    let mut config = config;
    config.alpn_protocols.clear();
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(config)
        .https_or_http()
        .enable_all_versions()
        .wrap_connector(http);
    let https = Bounded::new(
        https,
        s.connect_timeout,
        url.authority.parse().ok(),
        s.write_stall,
    )
    .noting_http1(http1);
    Ok(Client::builder(TokioExecutor::new())
        .pool_idle_timeout(s.idle_timeout)
        .pool_max_idle_per_host(MAX_IDLE_PER_BACKEND)
        .http1_max_headers(MAX_RESPONSE_HEADERS)
        .pool_timer(TokioTimer::new())
        .timer(TokioTimer::new())
        .build(https))
}

/// The targets of one route and where the next request starts.
#[derive(Debug)]
pub struct Targets {
    pub list: Vec<Target>,
    /// The targets are the route's `backends` (read as HTTP), in the same order: a backend
    /// drained through the admin API takes no plain requests either.
    pub mirrors_backends: bool,
    next: AtomicUsize,
}

impl Targets {
    pub fn new(list: Vec<Target>, mirrors_backends: bool) -> Targets {
        Targets {
            list,
            mirrors_backends,
            next: AtomicUsize::new(0),
        }
    }

    /// The order one request tries the targets in. Targets that are the route's backends
    /// follow the pool's own order for a handshake, so a plain request and an upgrade of the
    /// same client land alike: weights, health, slow start and drain flags, the hash of
    /// `hash_key`, and the sticky cookie's backend first (`affinity`, read from the
    /// request). Targets of their own (`http_backends`) rotate, or with `least_conn` go by
    /// the requests in flight on each (ties keep the rotation).
    pub fn order(&self, balance: &Balance, pool: &BackendPool, affinity: &Affinity) -> Vec<usize> {
        if self.mirrors_backends {
            let backends = pool.backends();
            return pool
                .order(affinity, Instant::now())
                .iter()
                .filter_map(|b| backends.iter().position(|p| Arc::ptr_eq(p, b)))
                .filter(|&i| i < self.list.len())
                .collect();
        }
        let n = self.list.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed) % n.max(1);
        let mut order: Vec<usize> = (0..n).map(|i| (start + i) % n).collect();
        let now = Instant::now();
        // Ejected targets go last (still tried when nothing else answers); the sort is
        // stable, so ties keep the rotation.
        let ejected = |i: usize| {
            let target = &self.list[i];
            let (usable, change) = target.health.usable(now);
            // Noticed here, as the route's own backends notice theirs when ordered.
            if let Some(Change::EjectionOver) = change {
                tracing::info!(
                    route = pool.route_name(),
                    backend = &*target.name,
                    "HTTP backend ejection over: it is tried again for new requests"
                );
            }
            !usable
        };
        if *balance == Balance::LeastConn {
            order.sort_by_cached_key(|&i| (ejected(i), self.list[i].in_flight()));
        } else {
            order.sort_by_cached_key(|&i| ejected(i));
        }
        order
    }

    /// Target `i` answered: its run of failed connects ends.
    pub fn passed(&self, i: usize, pool: &BackendPool) {
        if self.mirrors_backends {
            if let Some(b) = pool.backends().get(i) {
                b.health.passive_success();
            }
        } else if let Some(t) = self.list.get(i) {
            t.health.passive_success();
        }
    }

    /// Target `i` could not be connected to: counted toward its ejection after the route's
    /// `max_failures` in a row (as a failed handshake is), within `max_ejected_percent`.
    pub fn failed(&self, i: usize, outcome: Outcome, route: &Route) {
        let now = Instant::now();
        if self.mirrors_backends {
            if let Some(b) = route.pool.backends().get(i) {
                b.stats.failures.add(outcome);
                route.pool.failed(b, now);
            }
            return;
        }
        let Some(target) = self.list.get(i) else {
            return;
        };
        let health = &route.config.health;
        let ejected = self
            .list
            .iter()
            .filter(|t| t.health.is_ejected(now))
            .count();
        let may_eject = crate::backend::health::may_eject(ejected, self.list.len(), health);
        if let Some(Change::Ejected { lasts, failures }) =
            target.health.passive_failure(now, health, may_eject)
        {
            tracing::warn!(route = %route.name, backend = &*target.name, failures, ejected_for = ?lasts, "HTTP backend ejected after failed connects in a row");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::from_toml_str;

    fn route(extra: &str) -> crate::config::RouteConfig {
        from_toml_str(&format!(
            "[[listener]]\nlisten=\"127.0.0.1:0\"\n[[route]]\nname=\"r\"\npath=\"/\"\n\
             backends=[\"ws://b1:80\", \"ws://b2:80\", \"ws://b3:80\"]\nhttp = true\n{extra}"
        ))
        .unwrap()
        .routes
        .remove(0)
    }

    fn targets(route: &crate::config::RouteConfig, mirrors: bool) -> Targets {
        let settings = ClientSettings {
            tls: None,
            connect_timeout: Duration::from_secs(1),
            idle_timeout: Duration::from_secs(1),
            write_stall: Duration::from_secs(1),
        };
        let list = route
            .backends
            .iter()
            .map(|u| Target::new(u.clone(), &u.url, &settings).unwrap())
            .collect();
        Targets::new(list, mirrors)
    }

    fn parts(headers: &[(&str, &str)]) -> http::request::Parts {
        let mut b = http::Request::get("/");
        for (n, v) in headers {
            b = b.header(*n, *v);
        }
        b.body(()).unwrap().into_parts().0
    }

    #[test]
    fn the_route_s_backends_go_in_the_pool_s_order_and_drained_ones_are_left_out() {
        let r = route("");
        let (t, pool) = (targets(&r, true), BackendPool::new(&r, None));
        let none = Affinity::default();
        let first = t.order(&r.balance, &pool, &none);
        assert_eq!(first.len(), 3);
        assert_ne!(
            first[0],
            t.order(&r.balance, &pool, &none)[0],
            "no rotation"
        );
        pool.backends()[2].set_draining(true);
        for _ in 0..3 {
            assert!(!t.order(&r.balance, &pool, &none).contains(&2));
        }
    }

    #[test]
    fn one_hash_key_always_reaches_one_backend() {
        let r = route("balance = \"hash\"\nhash_key = \"header:x-user\"\n");
        let (t, pool) = (targets(&r, true), BackendPool::new(&r, None));
        let ip = std::net::IpAddr::from([127, 0, 0, 1]);
        let a = pool.affinity(&parts(&[("x-user", "alice")]), ip);
        let pick = t.order(&r.balance, &pool, &a)[0];
        for _ in 0..5 {
            assert_eq!(t.order(&r.balance, &pool, &a)[0], pick);
        }
    }

    #[test]
    fn targets_of_their_own_rotate_or_go_by_requests_in_flight() {
        let r = route("");
        let (t, pool) = (targets(&r, false), BackendPool::new(&r, None));
        let none = Affinity::default();
        assert_eq!(t.order(&Balance::RoundRobin, &pool, &none), [0, 1, 2]);
        assert_eq!(t.order(&Balance::RoundRobin, &pool, &none), [1, 2, 0]);
        let _a = t.list[0].claim();
        let _b = t.list[0].claim();
        let c = t.list[1].claim();
        assert_eq!(t.order(&Balance::LeastConn, &pool, &none), [2, 1, 0]);
        drop(c);
        // Ties keep the rotation (this call starts at the first backend).
        assert_eq!(t.order(&Balance::LeastConn, &pool, &none), [1, 2, 0]);
    }

    #[test]
    fn an_ejected_target_of_its_own_goes_last() {
        let r = route("[route.health]\nmax_failures = 1\n");
        let (t, pool) = (targets(&r, false), BackendPool::new(&r, None));
        let none = Affinity::default();
        let change = t.list[0]
            .health
            .passive_failure(Instant::now(), &r.health, true);
        assert!(matches!(change, Some(Change::Ejected { .. })));
        assert_eq!(t.order(&Balance::RoundRobin, &pool, &none), [1, 2, 0]);
        assert_eq!(t.order(&Balance::RoundRobin, &pool, &none), [1, 2, 0]);
        assert_eq!(t.order(&Balance::RoundRobin, &pool, &none), [2, 1, 0]);
        assert_eq!(t.order(&Balance::LeastConn, &pool, &none), [1, 2, 0]);
    }
}
