//! A route's backends: which ones may take a session now, in what order, and the one step
//! the orchestrator calls, [`BackendPool::upgrade`]: connect and handshake, failing over to
//! the next backend on anything but the backend's own refusal (a 4xx), all within the route's
//! `backend_handshake` budget.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use http::request::Parts;
use tokio_util::sync::CancellationToken;

use super::balance::{self, Candidate, SmoothWeighted};
use super::health;
use super::sticky::{self, StickyId};
use super::{Backend, BackendLease, BackendRequest, BackendUpgrade, HandshakeParams};
use crate::config::{Balance, HashKey, RouteConfig};
use crate::error::BackendError;
use crate::outcome::Outcome;

/// At most this many backends are tried for one handshake: enough to get past one or two
/// sick ones, few enough that each attempt keeps a fair share of the budget.
pub const MAX_TRIES: usize = 3;

/// A route's backends and their balancing state.
#[derive(Debug)]
pub struct BackendPool {
    route: Arc<str>,
    backends: Vec<Arc<Backend>>,
    weights: Vec<u32>,
    /// Each backend's identity for hashing (its URL's hash).
    ids: Vec<u64>,
    /// Each backend's identity in sticky cookies (with `sticky`).
    sticky_ids: Vec<StickyId>,
    config: PoolConfig,
    rr: SmoothWeighted,
    /// Stops this pool's active checkers: a reload stops the old pool's once the new one's
    /// run (the old pool itself lives on as long as its sessions).
    checks: CancellationToken,
}

/// What the pool reads of its route's config.
#[derive(Debug)]
struct PoolConfig {
    balance: Balance,
    health: crate::config::HealthConfig,
    slow_start: Option<Duration>,
    sticky: Option<crate::config::StickyConfig>,
    path: String,
}

/// What a request says about its backend: its hash key and its sticky cookie's backend,
/// read before the policy rewrites the request (it may strip the cookie or header).
#[derive(Debug, Default, Clone, Copy)]
pub struct Affinity {
    key: Option<u64>,
    sticky: Option<usize>,
}

impl BackendPool {
    /// The backends of `route`. A backend `previous` (the route's pool before a reload)
    /// lists with the same URL and settings is the same backend: its live sessions' leases,
    /// drain flag, health and counters carry on.
    /// The name of the route whose backends these are.
    pub fn route_name(&self) -> &str {
        &self.route
    }

    pub fn new(route: &RouteConfig, previous: Option<&BackendPool>) -> BackendPool {
        BackendPool::after(route, previous, None)
    }

    /// [`BackendPool::new`] for a route a reload put back within `RETIRED_FOR` of removing
    /// it: the backends of `retired` (its pool then) keep their counters, nothing else (its
    /// sessions were closed; drains and health start afresh).
    pub fn after(
        route: &RouteConfig,
        previous: Option<&BackendPool>,
        retired: Option<&BackendPool>,
    ) -> BackendPool {
        let find = |pool: Option<&BackendPool>, url: &crate::config::BackendUrl| {
            pool?.backends.iter().find(|b| b.url == *url).cloned()
        };
        let backends: Vec<Arc<Backend>> = route
            .backends
            .iter()
            .map(|url| {
                find(previous, url).unwrap_or_else(|| {
                    let stats = find(retired, url).map(|b| b.stats.clone());
                    Arc::new(Backend::new(url.clone(), stats))
                })
            })
            .collect();
        if route.health.check.is_none() {
            // A kept backend that the old checks took out would stay out for good.
            let now = std::time::Instant::now();
            for b in &backends {
                if let Some(change) = b.health.checks_removed(now) {
                    b.changed(&route.name, change, None);
                }
            }
        }
        let sticky_ids = match &route.sticky {
            Some(s) => backends
                .iter()
                .map(|b| s.key.id(&route.name, &b.name))
                .collect(),
            None => Vec::new(),
        };
        BackendPool {
            route: Arc::from(route.name.as_str()),
            ids: backends
                .iter()
                .map(|b| balance::hash_bytes(b.name.as_bytes()))
                .collect(),
            weights: route.weights.clone(),
            backends,
            sticky_ids,
            config: PoolConfig {
                balance: route.balance.clone(),
                health: route.health.clone(),
                slow_start: route.slow_start,
                sticky: route.sticky.clone(),
                path: route.path.clone(),
            },
            rr: SmoothWeighted::default(),
            checks: CancellationToken::new(),
        }
    }

    pub fn backends(&self) -> &[Arc<Backend>] {
        &self.backends
    }

    /// A backend's configured weight.
    pub fn weight(&self, index: usize) -> u32 {
        self.weights.get(index).copied().unwrap_or(1)
    }

    /// The share of its weight a backend takes now (slow start), for the admin API.
    pub fn share(&self, backend: &Backend) -> f64 {
        backend.health.share(Instant::now(), self.config.slow_start)
    }

    /// Starts the active checks (if the route has them) on the current runtime.
    pub fn start_checks(&self, route: &RouteConfig) {
        if let Some(check) = &route.health.check {
            super::checker::spawn(
                self.route.clone(),
                &self.backends,
                check.clone(),
                route,
                self.checks.clone(),
            );
        }
    }

    /// Stops this pool's active checks (a reload has started the next pool's).
    pub fn stop_checks(&self) {
        self.checks.cancel();
    }

    /// The request's hash key and sticky backend, before the policy rewrites the request.
    pub fn affinity(&self, parts: &Parts, client_ip: IpAddr) -> Affinity {
        let key = match &self.config.balance {
            Balance::Hash(HashKey::Ip) => Some(match client_ip {
                IpAddr::V4(v4) => balance::hash_bytes(&v4.octets()),
                IpAddr::V6(v6) => balance::hash_bytes(&v6.octets()),
            }),
            // An empty value is no key: every client sending one would land on one backend.
            // The host is the target's authority where it has one (an absolute-form target,
            // RFC 9112 §3.2.2; HTTP/2's `:authority`, RFC 9113 §8.3.1, which is no header),
            // else `Host`, as the access log reads it.
            Balance::Hash(HashKey::Header(name)) => (name == http::header::HOST)
                .then(|| parts.uri.authority().map(|a| a.as_str().as_bytes()))
                .flatten()
                .or_else(|| parts.headers.get(name).map(|v| v.as_bytes()))
                .map(<[u8]>::trim_ascii)
                .filter(|v| !v.is_empty())
                .map(balance::hash_bytes),
            Balance::Hash(HashKey::Cookie(name)) => sticky::cookie(&parts.headers, name)
                .filter(|v| !v.is_empty())
                .map(|v| balance::hash_bytes(v.as_bytes())),
            Balance::Hash(HashKey::Query(name)) => query_param(parts.uri.query(), name)
                .filter(|v| !v.is_empty())
                .map(|v| balance::hash_bytes(v.as_bytes())),
            _ => None,
        };
        let sticky = self.config.sticky.as_ref().and_then(|s| {
            // The first value that is ours and valid: a stale or foreign one of the same
            // name beside it does not unpin the client.
            let now = SystemTime::now();
            let id = sticky::cookies(&parts.headers, &s.cookie)
                .find_map(|value| s.key.open(&self.route, value, now))?;
            self.sticky_ids.iter().position(|i| *i == id)
        });
        Affinity { key, sticky }
    }

    /// The hash key from the verified token's claims, for `hash_key = "claim:NAME"`.
    pub fn claim_affinity(&self, affinity: &mut Affinity, claims: Option<&crate::policy::Claims>) {
        if let Balance::Hash(HashKey::Claim(name)) = &self.config.balance {
            affinity.key = claims
                .and_then(|c| crate::policy::claim(c, name))
                .filter(|v| v.as_str() != Some("") && !v.is_null())
                .map(|v| match v {
                    serde_json::Value::String(s) => balance::hash_bytes(s.as_bytes()),
                    other => balance::hash_bytes(other.to_string().as_bytes()),
                });
        }
    }

    /// The `Set-Cookie` value naming `backend`, on a route with `sticky`.
    pub fn sticky_cookie(&self, backend: &Backend, secure: bool) -> Option<String> {
        let s = self.config.sticky.as_ref()?;
        let index = self
            .backends
            .iter()
            .position(|b| std::ptr::eq(&**b, backend))?;
        let value = s.key.value(
            &self.route,
            &self.sticky_ids[index],
            SystemTime::now(),
            s.ttl,
        );
        Some(sticky::set_cookie(
            &s.cookie,
            &value,
            &self.config.path,
            s.ttl,
            secure,
        ))
    }

    /// The backends one handshake tries, best first: the usable ones in balancing order
    /// (the sticky cookie's backend first when it is among them); when none is usable, every
    /// backend not drained, rather than refusing everything.
    pub(crate) fn order(&self, affinity: &Affinity, now: Instant) -> Vec<Arc<Backend>> {
        let candidate = |(index, b): (usize, &Arc<Backend>)| Candidate {
            index,
            weight: f64::from(self.weight(index)) * b.health.share(now, self.config.slow_start),
            active: b.active(),
            id: self.ids[index],
        };
        let live = || {
            self.backends
                .iter()
                .enumerate()
                .filter(|(_, b)| !b.is_draining())
        };
        let mut cands: Vec<Candidate> = live()
            .filter(|(_, b)| self.usable(b, now))
            .map(candidate)
            .collect();
        if cands.is_empty() {
            cands = live().map(candidate).collect();
        }
        // A client its sticky cookie brings back to a usable backend takes no turn of the
        // rotation: the turns are for the clients the balancer places, which stay spread
        // evenly however often the sticky ones come back (a Socket.IO client polls often).
        let sticky = affinity
            .sticky
            .and_then(|i| cands.iter().position(|c| c.index == i));
        let rotate = |cands: &mut Vec<Candidate>| {
            if sticky.is_none() {
                self.rr.order(self.backends.len(), cands);
            } else {
                // Behind the sticky backend, in case it fails: at random by weight. In list
                // order every client of a failed backend went to the first one (and got a
                // cookie for it).
                balance::weighted_random_order(cands);
            }
        };
        match (&self.config.balance, affinity.key) {
            (Balance::Hash(_), Some(key)) => balance::hash_order(key, &mut cands),
            (Balance::LeastConn, _) => {
                rotate(&mut cands);
                balance::least_conn_order(&mut cands);
            }
            _ => rotate(&mut cands),
        }
        if let Some(i) = affinity.sticky
            && let Some(at) = cands.iter().position(|c| c.index == i)
        {
            cands[..=at].rotate_right(1);
        }
        cands
            .into_iter()
            .map(|c| self.backends[c.index].clone())
            .collect()
    }

    fn usable(&self, backend: &Backend, now: Instant) -> bool {
        let (usable, change) = backend.health.usable(now);
        if let Some(change) = change {
            backend.changed(&self.route, change, None);
        }
        usable
    }

    /// A failed handshake (or plain request that could not reach it): counts toward the
    /// backend's ejection, within the route's `max_ejected_percent`.
    pub(crate) fn failed(&self, backend: &Arc<Backend>, now: Instant) {
        // Counted before the backend's own state is locked.
        let ejected = self
            .backends
            .iter()
            .filter(|b| b.health.is_ejected(now))
            .count();
        let may_eject = health::may_eject(ejected, self.backends.len(), &self.config.health);
        if let Some(change) = backend
            .health
            .passive_failure(now, &self.config.health, may_eject)
        {
            if let health::Change::Ejected { lasts, .. } = change
                && let Ok(runtime) = tokio::runtime::Handle::try_current()
            {
                // Its end is logged when it comes, not at the next handshake that looks: a
                // quiet route would log it late or never.
                let (b, route) = (backend.clone(), self.route.clone());
                runtime.spawn(async move {
                    tokio::time::sleep(lasts).await;
                    if let (_, Some(change)) = b.health.usable(Instant::now()) {
                        b.changed(&route, change, None);
                    }
                });
            }
            backend.changed(&self.route, change, None);
        }
    }

    /// Connects to a backend and upgrades, in balancing order, moving on after a connect
    /// failure, a timeout, a 5xx or a broken answer, within the route's `backend_handshake`
    /// budget; each of the (at most [`MAX_TRIES`]) attempts gets an equal share of what is
    /// left of it. A 4xx is the backend's own refusal of this client: passed on at once.
    pub async fn upgrade(
        &self,
        req: &BackendRequest<'_>,
        affinity: &Affinity,
    ) -> Result<(BackendUpgrade, BackendLease), BackendError> {
        let budget = req.route.backend_handshake_timeout;
        let deadline = tokio::time::Instant::now() + budget;
        let order = self.order(affinity, Instant::now());
        if order.is_empty() {
            return Err(BackendError::AllDrained);
        }
        let tries = order.len().min(MAX_TRIES);
        let mut failures: Vec<BackendError> = Vec::new();
        for (i, backend) in order.into_iter().take(tries).enumerate() {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                break;
            }
            let share = left / u32::try_from(tries - i).unwrap_or(1);
            let lease = BackendLease::new(backend);
            match attempt(req, &lease.backend, share, i + 1 < tries).await {
                Ok(up) => {
                    lease.backend.health.passive_success();
                    if let Some(first) = failures.first()
                        && let Some(line) = req.backend_logs.failovers.admit(first.outcome())
                    {
                        let failed: Vec<String> =
                            failures.iter().map(BackendError::attempt_text).collect();
                        tracing::warn!(session = req.session, request_id = req.correlation.request_id(), route = %self.route, backend = %lease.backend.name, failed = %failed.join("; "), suppressed = line.suppressed(), "failed over to the next backend");
                    }
                    return Ok((up, lease));
                }
                Err(e) if e.is_backends_word() => {
                    lease.backend.health.passive_success();
                    return Err(e.from_backend(&lease.backend.name));
                }
                Err(e) => {
                    // Limited as the refusals are: a route whose backend is down would write
                    // one per handshake, at the clients' pace.
                    if let Some(line) = req.backend_logs.attempts.admit(e.outcome()) {
                        tracing::warn!(session = req.session, request_id = req.correlation.request_id(), route = %self.route, backend = %lease.backend.name, error = %e.attempt_text(), suppressed = line.suppressed(), "backend handshake failed");
                    }
                    self.failed(&lease.backend, Instant::now());
                    failures.push(e.from_backend(&lease.backend.name));
                }
            }
        }
        Err(summary(failures, budget))
    }
}

/// The error a failed handshake reports: the last 5xx a backend answered, passed on as it
/// came (a backend's own word beats a connect failure, whichever came last); else connect
/// failures all together as before (502, or 504 when every one timed out), else the last
/// failure; the budget's end when nothing was tried.
fn summary(mut failures: Vec<BackendError>, budget: Duration) -> BackendError {
    if let Some(i) = failures
        .iter()
        .rposition(|e| matches!(e, BackendError::Refused(_)))
    {
        return failures.swap_remove(i);
    }
    let connect = |e: &BackendError| {
        matches!(
            e,
            BackendError::Unreachable(_) | BackendError::ConnectTimeout(..)
        )
    };
    if failures.is_empty() || !failures.iter().all(connect) {
        return failures
            .pop()
            .unwrap_or(BackendError::HandshakeTimeout(budget, None));
    }
    let detail = failures
        .iter()
        .map(|e| match e {
            BackendError::Unreachable(d) | BackendError::ConnectTimeout(_, d) => d.as_str(),
            _ => "",
        })
        .collect::<Vec<_>>()
        .join("; ");
    match failures.iter().find_map(|e| match e {
        BackendError::ConnectTimeout(t, _) => Some(*t),
        _ => None,
    }) {
        Some(t)
            if failures
                .iter()
                .all(|e| matches!(e, BackendError::ConnectTimeout(..))) =>
        {
            BackendError::ConnectTimeout(t, detail)
        }
        _ => BackendError::Unreachable(detail),
    }
}

/// One backend: connect (within the route's connect timeout and the share), then the
/// handshake within what is left of the share. Latencies and failures are counted here.
async fn attempt(
    req: &BackendRequest<'_>,
    backend: &Backend,
    share: Duration,
    more_backends: bool,
) -> Result<BackendUpgrade, BackendError> {
    let started = tokio::time::Instant::now();
    let connect_timeout = req.route.backend_connect_timeout.min(share);
    let url = &backend.url;
    let stats = &backend.stats;
    let stream = match super::connect_one(url, connect_timeout).await {
        Ok(stream) => {
            stats.connect.observe(started.elapsed().as_secs_f64());
            stream
        }
        Err(e) if e.kind() != std::io::ErrorKind::TimedOut => {
            stats.failures.add(Outcome::BackendUnreachable);
            return Err(BackendError::Unreachable(format!("{}: {e}", url.url)));
        }
        Err(_) => {
            stats.failures.add(Outcome::BackendConnectTimeout);
            return Err(BackendError::ConnectTimeout(
                connect_timeout,
                format!("{}: timed out", url.url),
            ));
        }
    };
    let handshake_started = tokio::time::Instant::now();
    let (backend_req, key) = super::build_request(req, url);
    // The path only: a query string may carry a token, even on a route that does not read one.
    tracing::debug!(session = req.session, request_id = req.correlation.request_id(), route = %req.route.name, backend = %url.url, path = backend_req.uri().path(), "backend handshake");
    let params = HandshakeParams {
        url,
        tls: url.tls_config(req.route),
        key: &key,
        offered: req.handshake,
        timeout: share
            .saturating_sub(started.elapsed())
            .max(Duration::from_millis(1)),
        max_error_body: req.max_error_body,
        more_backends,
    };
    let result = super::handshake(stream, backend_req, params).await;
    match &result {
        Ok(_) => stats
            .handshake
            .observe(handshake_started.elapsed().as_secs_f64()),
        // Counted as a failure, it would page whoever alerts on them for every refused login.
        Err(e) if e.is_backends_word() => {}
        Err(e) => stats.failures.add(e.outcome()),
    }
    result
}

/// The value of `name` in a query string (not percent-decoded: a key is hashed as sent).
fn query_param<'q>(query: Option<&'q str>, name: &str) -> Option<&'q str> {
    query?
        .split('&')
        .find_map(|pair| match pair.split_once('=') {
            Some((n, v)) if n == name => Some(v),
            None if pair == name => Some(""),
            _ => None,
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::from_toml_str;

    fn pool(extra: &str, backends: &str) -> BackendPool {
        let c = from_toml_str(&format!(
            "[[listener]]\nlisten=\"127.0.0.1:0\"\n[[route]]\nname=\"r\"\npath=\"/\"\nbackends=[{backends}]\n{extra}"
        ))
        .unwrap();
        BackendPool::new(&c.routes[0], None)
    }

    fn hosts(order: &[Arc<Backend>]) -> Vec<String> {
        order.iter().map(|b| b.url.host.clone()).collect()
    }

    /// A backend's 5xx answer is what the client gets when every attempt fails, whatever
    /// failed after it: its own word beats a connect failure (a 504 that said the backends
    /// were slow, when one had answered).
    #[test]
    fn a_5xx_answer_outranks_a_later_connect_failure() {
        let refused = || {
            BackendError::Refused(Box::new(crate::error::BackendRefusal {
                status: http::StatusCode::SERVICE_UNAVAILABLE,
                headers: Default::default(),
                body: Default::default(),
                reason: None,
                backend: None,
            }))
        };
        let timeout =
            || BackendError::ConnectTimeout(Duration::from_secs(1), "b: timed out".into());
        let budget = Duration::from_secs(10);
        for failures in [vec![refused(), timeout()], vec![timeout(), refused()]] {
            match summary(failures, budget) {
                BackendError::Refused(r) => assert_eq!(r.status, 503),
                other => panic!("{other:?}"),
            }
        }
        assert!(matches!(
            summary(vec![timeout(), timeout()], budget),
            BackendError::ConnectTimeout(..)
        ));
        assert!(matches!(
            summary(vec![], budget),
            BackendError::HandshakeTimeout(..)
        ));
    }

    #[test]
    fn round_robin_rotates_and_fails_over_in_order() {
        let p = pool("", "\"ws://a:1\", \"ws://b:1\"");
        let none = Affinity::default();
        assert_eq!(hosts(&p.order(&none, Instant::now())), ["a", "b"]);
        assert_eq!(hosts(&p.order(&none, Instant::now())), ["b", "a"]);
    }

    #[test]
    fn unusable_backends_come_last_or_not_at_all() {
        let p = pool("", "\"ws://a:1\", \"ws://b:1\", \"ws://c:1\"");
        let now = Instant::now();
        p.backends[1].set_draining(true);
        for _ in 0..3 {
            p.failed(&p.backends[0], now);
        }
        assert!(p.backends[0].health.is_ejected(now));
        let none = Affinity::default();
        assert_eq!(hosts(&p.order(&none, now)), ["c"]);
        // Every backend out: the ejected one is tried anyway, the drained one never.
        for _ in 0..3 {
            p.failed(&p.backends[2], now);
        }
        // 2 of 3 ejected would pass max_ejected_percent (50): c stays in.
        assert!(!p.backends[2].health.is_ejected(now));
        p.backends[2].set_draining(true);
        assert_eq!(hosts(&p.order(&none, now)), ["a"]);
    }

    #[test]
    fn the_sticky_backend_comes_first() {
        let p = pool(
            "sticky = { cookie = \"srv\" }\n",
            "\"ws://a:1\", \"ws://b:1\", \"ws://c:1\"",
        );
        let cookie = p.sticky_cookie(&p.backends[2], false).unwrap();
        let value = cookie.split(';').next().unwrap();
        let req = http::Request::get("/")
            .header("cookie", value)
            .body(())
            .unwrap();
        let (parts, _) = req.into_parts();
        let a = p.affinity(&parts, IpAddr::from([127, 0, 0, 1]));
        for _ in 0..5 {
            assert_eq!(hosts(&p.order(&a, Instant::now()))[0], "c");
        }
        // A forged value is ignored.
        let req = http::Request::get("/")
            .header("cookie", "srv=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA")
            .body(())
            .unwrap();
        let (parts, _) = req.into_parts();
        assert!(
            p.affinity(&parts, IpAddr::from([127, 0, 0, 1]))
                .sticky
                .is_none()
        );
        // Beside a stale or foreign value of the same name, the valid one still pins.
        let req = http::Request::get("/")
            .header("cookie", format!("srv=garbage; {value}"))
            .body(())
            .unwrap();
        let a = p.affinity(&req.into_parts().0, IpAddr::from([127, 0, 0, 1]));
        assert_eq!(hosts(&p.order(&a, Instant::now()))[0], "c");
    }

    #[test]
    fn an_ejected_backend_moves_only_its_own_keys() {
        let p = pool(
            "balance = \"hash\"\nhash_key = \"header:x-user\"\n",
            "\"ws://a:1\", \"ws://b:1\", \"ws://c:1\", \"ws://d:1\"",
        );
        let now = Instant::now();
        let place = |user: usize| {
            let req = http::Request::get("/")
                .header("x-user", format!("user-{user}"))
                .body(())
                .unwrap();
            let a = p.affinity(&req.into_parts().0, IpAddr::from([127, 0, 0, 1]));
            hosts(&p.order(&a, now))[0].clone()
        };
        let before: Vec<String> = (0..1000).map(place).collect();
        for _ in 0..3 {
            p.failed(&p.backends[1], now);
        }
        assert!(p.backends[1].health.is_ejected(now));
        let after: Vec<String> = (0..1000).map(place).collect();
        let moved = before.iter().zip(&after).filter(|(x, y)| x != y).count();
        assert_eq!(moved, before.iter().filter(|h| *h == "b").count());
        assert!(after.iter().all(|h| h != "b"));
    }

    #[test]
    fn a_claim_is_a_hash_key() {
        let p = pool(
            "balance = \"hash\"\nhash_key = \"claim:org.id\"\n\
             [route.auth.jwt]\nsecret_env = \"PATH\"\n",
            "\"ws://a:1\", \"ws://b:1\", \"ws://c:1\"",
        );
        let claims = |org: &str| {
            let v = serde_json::json!({ "sub": "x", "org": { "id": org } });
            v.as_object().unwrap().clone()
        };
        let mut a = Affinity::default();
        p.claim_affinity(&mut a, Some(&claims("42")));
        let first = hosts(&p.order(&a, Instant::now()))[0].clone();
        for _ in 0..5 {
            let mut again = Affinity::default();
            p.claim_affinity(&mut again, Some(&claims("42")));
            assert_eq!(hosts(&p.order(&again, Instant::now()))[0], first);
        }
        let mut none = Affinity::default();
        p.claim_affinity(&mut none, None);
        assert!(none.key.is_none());
    }

    /// Clients whose sticky backend fails are spread over the others, not all sent to the
    /// first in the list; and they take no turn of the rotation.
    #[test]
    fn the_clients_of_a_failed_sticky_backend_are_spread() {
        let p = pool(
            "sticky = { cookie = \"srv\" }\n",
            "\"ws://a:1\", \"ws://b:1\", \"ws://c:1\", \"ws://d:1\"",
        );
        let on_d = Affinity {
            key: None,
            sticky: Some(3),
        };
        let mut second = std::collections::HashMap::new();
        for _ in 0..300 {
            let order = hosts(&p.order(&on_d, Instant::now()));
            assert_eq!(order[0], "d");
            *second.entry(order[1].clone()).or_insert(0) += 1;
        }
        for h in ["a", "b", "c"] {
            // 100 each expected; 40 is more than six standard deviations below.
            assert!(second.get(h).copied().unwrap_or(0) > 40, "{second:?}");
        }
        // The rotation has not moved: a client the balancer places starts at the first.
        let none = Affinity::default();
        assert_eq!(hosts(&p.order(&none, Instant::now()))[0], "a");
    }

    /// `hash_key = "header:host"` reads an HTTP/2 request's `:authority`, its Host: the same
    /// host reaches the same backend over either protocol (HTTP/2 clients were spread).
    #[test]
    fn an_http2_authority_is_the_host_key() {
        let p = pool(
            "balance = \"hash\"\nhash_key = \"header:host\"\n",
            "\"ws://a:1\", \"ws://b:1\", \"ws://c:1\"",
        );
        let h1 = http::Request::get("/chat")
            .header("host", "chat.example.com")
            .body(())
            .unwrap()
            .into_parts()
            .0;
        let h2 = http::Request::get("https://chat.example.com/chat")
            .version(http::Version::HTTP_2)
            .body(())
            .unwrap()
            .into_parts()
            .0;
        let ip = "192.0.2.1".parse().unwrap();
        let (a1, a2) = (p.affinity(&h1, ip), p.affinity(&h2, ip));
        assert!(a1.key.is_some());
        assert_eq!(a1.key, a2.key);
    }

    #[test]
    fn query_params() {
        assert_eq!(query_param(Some("a=1&room=x&b"), "room"), Some("x"));
        assert_eq!(query_param(Some("a=1&b"), "b"), Some(""));
        assert_eq!(query_param(Some("a=1"), "room"), None);
        assert_eq!(query_param(None, "room"), None);
    }
}
