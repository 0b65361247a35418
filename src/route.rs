//! Which route serves a request: [`RouteTable::find`] by host and path prefix.

use std::collections::HashMap;
use std::sync::Arc;

use crate::backend::BackendPool;
use crate::config::RouteConfig;
use crate::path::{Canonical, PathError, routing_form};
use crate::relay::Control;

/// A route with its live backend state.
#[derive(Debug)]
pub struct Route {
    pub config: RouteConfig,
    /// The route's name, shared by its sessions' records.
    pub name: Arc<str>,
    pub pool: BackendPool,
    /// Closes this route's sessions (shutdown, or a reload that removes the route): a child
    /// of the signal the table was built under, shared by every session of the route, so a
    /// session costs no signal of its own.
    pub control: Control,
    /// Refused handshakes on this route, by outcome. Shared by the route's generations (a
    /// reload keeps counting where the last one was).
    pub refusals: Arc<crate::telemetry::RefusalCounts>,
    /// Sessions opened and ended, close frames, durations, traffic of ended sessions; shared
    /// by the route's generations like `refusals`.
    pub stats: Arc<crate::metrics::RouteStats>,
    /// The route's own admission limits and counts; the count carries over a reload.
    pub gate: crate::limits::Gate,
}

/// What a reload did to the routes, by name (sorted).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RouteDiff {
    pub added: Vec<String>,
    pub removed: Vec<String>,
    /// Present in both, with other settings (`RouteConfig::fingerprint`).
    pub changed: Vec<String>,
    pub unchanged: Vec<String>,
}

/// All routes, in match order: routes naming a host before host-less ones, longer path
/// prefixes before shorter ones, and otherwise file order.
#[derive(Debug, Default)]
pub struct RouteTable {
    routes: Vec<Arc<Route>>,
    /// Each route's place in `routes`, by name: a reload looks every live session's route
    /// up by name, and every new route's predecessor (a search of the list each time made a
    /// reload of 20,000 routes take seconds, on a worker thread that relays sessions).
    by_name: HashMap<Arc<str>, usize>,
    /// Routes a reload removed, kept for their counters (see [`RETIRED_FOR`]).
    retired: Vec<(Arc<Route>, std::time::Instant)>,
    /// The routes by host and path, for tables of more than [`INDEX_FROM`] routes: a scan
    /// of 20,000 routes cost every handshake on the last one's host tens of microseconds.
    index: Option<Index>,
    /// Each route's path as [`crate::path::folded`] reads it (by place in `routes`), and
    /// whether any differs from the route's own.
    folded_paths: Vec<Box<str>>,
    folded_differ: bool,
    /// [`RouteTable::index`] for the folded paths.
    folded_index: Option<Index>,
}

/// From how many routes [`RouteTable::find`] looks a request up in an [`Index`] rather than
/// scanning the table: a handful of routes is scanned in less time than the index's few hash
/// lookups take.
const INDEX_FROM: usize = 32;

/// How long a removed route's counters stay in the metrics after its removal (and for as
/// long as anything still holds it, such as sessions waiting for their 1012): a scraper must
/// see what its last sessions did, above all the 1012s of the reload that removed it, which
/// are counted only as those sessions end. Its series then go, and its counters come back,
/// unbroken, if the route does. (They go at the first reload after it.)
pub const RETIRED_FOR: std::time::Duration = std::time::Duration::from_secs(600);

impl RouteTable {
    /// Builds the routes of `configs`, each with its own signal below `parent` (the session
    /// registry's, so a shutdown reaches every route's sessions).
    pub fn new(configs: &[RouteConfig], parent: &Control) -> RouteTable {
        RouteTable::next(configs, &RouteTable::default(), parent).0
    }

    /// The table for `configs` after `previous` (a reload): a route keeps, by name, its
    /// signal, its counters and the live state of the backends it still lists (sessions,
    /// drain flags, health, latency histograms), so its sessions, metrics, drains and
    /// ejections carry on; everything else is built anew from `configs`, so new handshakes
    /// get the new settings. The new routes' active checks start, `previous`'s stop.
    pub fn next(
        configs: &[RouteConfig],
        previous: &RouteTable,
        parent: &Control,
    ) -> (RouteTable, RouteDiff) {
        let mut diff = RouteDiff::default();
        let retired_by_name: HashMap<&str, &Arc<Route>> = (previous.retired)
            .iter()
            .map(|(r, _)| (&*r.name, r))
            .collect();
        let listed: std::collections::HashSet<&str> =
            configs.iter().map(|c| c.name.as_str()).collect();
        let mut routes: Vec<Arc<Route>> = configs
            .iter()
            .map(|c| {
                let old = previous.named(&c.name);
                // Back after a removal: its counters go on from where they stopped (only
                // those: its signal may have closed its sessions).
                let counted = old.or_else(|| retired_by_name.get(c.name.as_str()).copied());
                match old {
                    None => diff.added.push(c.name.clone()),
                    Some(o) if o.config.fingerprint == c.fingerprint => {
                        diff.unchanged.push(c.name.clone())
                    }
                    Some(_) => diff.changed.push(c.name.clone()),
                }
                Arc::new(Route {
                    name: Arc::from(c.name.as_str()),
                    pool: BackendPool::after(
                        c,
                        old.map(|o| &o.pool),
                        counted.filter(|_| old.is_none()).map(|o| &o.pool),
                    ),
                    control: old.map_or_else(|| parent.child(), |o| o.control.clone()),
                    refusals: counted.map(|o| o.refusals.clone()).unwrap_or_default(),
                    stats: counted.map(|o| o.stats.clone()).unwrap_or_default(),
                    gate: crate::limits::Gate::next(&c.admission, old.map(|o| &o.gate)),
                    config: c.clone(),
                })
            })
            .collect();
        diff.removed = previous
            .routes
            .iter()
            .filter(|o| !listed.contains(&*o.name))
            .map(|o| o.name.to_string())
            .collect();
        for list in [
            &mut diff.added,
            &mut diff.removed,
            &mut diff.changed,
            &mut diff.unchanged,
        ] {
            list.sort();
        }
        // Active checks: the new pools' start and the old ones' stop, so a reload never runs
        // two checkers for one backend. (Without a runtime, in unit tests, there are none.)
        if tokio::runtime::Handle::try_current().is_ok() {
            for r in &routes {
                r.pool.start_checks(&r.config);
            }
        }
        previous.stop_checks();
        // Stable sort keeps file order among equals.
        routes.sort_by_key(|r| {
            let host_rank = match &r.config.host {
                Some(h) if h.starts_with("*.") => 1,
                Some(_) => 0,
                None => 2,
            };
            (host_rank, std::cmp::Reverse(r.config.path.len()))
        });
        let now = std::time::Instant::now();
        let retired = previous
            .retired
            .iter()
            .filter(|(r, since)| {
                !listed.contains(&*r.name)
                    && (now.duration_since(*since) < RETIRED_FOR || Arc::strong_count(r) > 1)
            })
            .cloned()
            .chain(
                previous
                    .routes
                    .iter()
                    .filter(|o| !listed.contains(&*o.name))
                    .map(|r| (r.clone(), now)),
            )
            .collect();
        let by_name = (routes.iter().enumerate())
            .map(|(i, r)| (r.name.clone(), i))
            .collect();
        let folded_paths: Vec<Box<str>> = (routes.iter())
            .map(|r| {
                crate::path::folded(&r.config.path)
                    .map_or_else(|| r.config.path.as_str().into(), Into::into)
            })
            .collect();
        let folded_differ = (routes.iter().zip(&folded_paths)).any(|(r, f)| r.config.path != **f);
        let indexed = routes.len() > INDEX_FROM;
        let index = indexed.then(|| Index::new(&routes, |i| &routes[i].config.path));
        let folded_index = indexed.then(|| Index::new(&routes, |i| &folded_paths[i]));
        let table = RouteTable {
            routes,
            by_name,
            retired,
            index,
            folded_paths,
            folded_differ,
            folded_index,
        };
        (table, diff)
    }

    /// The route named `name`.
    pub fn named(&self, name: &str) -> Option<&Arc<Route>> {
        self.by_name.get(name).map(|&i| &self.routes[i])
    }

    /// The route for a request's canonical path ([`crate::path`]), matched by its routing
    /// form (segments without their parameters). With kept escaped slashes, the path must
    /// route the same when they are read as separators: otherwise a backend that decodes them
    /// would serve another route's path, unchecked by that route's policy. For the same
    /// reason it must route the same read as many frameworks and servers read paths: without
    /// letter case (Express, ASP.NET Core, IIS), segments without trailing dots and spaces
    /// (IIS): `/ADMIN/users` next to an `/admin` route reached the route without a path
    /// instead, its policy skipped ([`crate::path::folded`]).
    pub fn find_canonical(
        &self,
        host: Option<&str>,
        path: &Canonical,
    ) -> Result<Option<&Arc<Route>>, PathError> {
        let form = routing_form(&path.path);
        let route = self.find(host, &form);
        let view = path.slash_view.as_deref().map(routing_form);
        if let Some(view) = &view
            && !same(route, self.find(host, view))
        {
            return Err(PathError::AmbiguousEscapedSlash);
        }
        for form in std::iter::once(&form).chain(&view) {
            let folded = crate::path::folded(form);
            if (folded.is_some() || self.folded_differ)
                && !same(
                    route,
                    self.find_folded(host, folded.as_deref().unwrap_or(form)),
                )
            {
                return Err(PathError::AmbiguousCase);
            }
        }
        Ok(route)
    }

    /// [`RouteTable::find`] by the routes' folded paths, for a folded request path.
    fn find_folded(&self, host: Option<&str>, folded: &str) -> Option<&Arc<Route>> {
        let host = host.map(normal_host);
        let found = match &self.folded_index {
            Some(index) => index.find(host.as_deref(), folded),
            None => scan(
                &self.routes,
                |i| &self.folded_paths[i],
                host.as_deref(),
                folded,
            ),
        };
        found.map(|i| &self.routes[i])
    }

    /// The route for a request's host and path. The host is compared without its port (a
    /// route names none), case-insensitively and without a trailing dot: `Admin.Example.:443`
    /// is the DNS name `admin.example`, and a backend may well serve it as such, so it must
    /// not fall through to a host-less route and its policy.
    pub fn find(&self, host: Option<&str>, path: &str) -> Option<&Arc<Route>> {
        let host = host.map(normal_host);
        let found = match &self.index {
            Some(index) => index.find(host.as_deref(), path),
            None => scan(
                &self.routes,
                |i| &self.routes[i].config.path,
                host.as_deref(),
                path,
            ),
        };
        found.map(|i| &self.routes[i])
    }

    /// Stops the active health checks of every route (a reload, or the gateway's end).
    pub fn stop_checks(&self) {
        for r in &self.routes {
            r.pool.stop_checks();
        }
    }

    pub fn iter(&self) -> impl Iterator<Item = &Arc<Route>> {
        self.routes.iter()
    }

    /// The routes and the removed ones whose counters are still shown ([`RETIRED_FOR`]).
    pub fn counted(&self) -> impl Iterator<Item = &Arc<Route>> {
        self.routes
            .iter()
            .chain(self.retired.iter().map(|(r, _)| r))
    }
}

/// Whether two lookups found the same route, or both none.
fn same(a: Option<&Arc<Route>>, b: Option<&Arc<Route>>) -> bool {
    match (a, b) {
        (Some(a), Some(b)) => Arc::ptr_eq(a, b),
        (a, b) => a.is_none() && b.is_none(),
    }
}

/// The first of `routes` (in match order) that serves `host` (normalised) and `path`, each
/// route's path being `paths(its place)`.
fn scan<'a>(
    routes: &'a [Arc<Route>],
    paths: impl Fn(usize) -> &'a str,
    host: Option<&str>,
    path: &str,
) -> Option<usize> {
    (routes.iter().enumerate()).position(|(i, r)| {
        host_matches(r.config.host.as_deref(), host) && path_matches(paths(i), path)
    })
}

/// A table's routes by host pattern and path, each entry the place in match order of the
/// first route with that pattern and path. A request's match is the first in match order of
/// those its host and path can name: the exact host, the wildcard suffixes after each of its
/// dots, no host; with each, the path's prefixes at segment boundaries ([`path_matches`]).
/// The same answer as the scan: a unit test holds the two together.
#[derive(Debug, Default)]
struct Index {
    exact: HashMap<Box<str>, Paths>,
    /// By the suffix after `*.`.
    wildcard: HashMap<Box<str>, Paths>,
    any_host: Paths,
}

/// Route paths to the first place in match order of a route with that path.
#[derive(Debug, Default)]
struct Paths(HashMap<Box<str>, usize>);

impl Index {
    /// The index of `routes`, each route's path being `path(its place)`.
    fn new<'a>(routes: &[Arc<Route>], path: impl Fn(usize) -> &'a str) -> Index {
        let mut index = Index::default();
        for (i, r) in routes.iter().enumerate() {
            let paths = match r.config.host.as_deref() {
                None => &mut index.any_host,
                Some(h) => match h.strip_prefix("*.") {
                    Some(suffix) => index.wildcard.entry(suffix.into()).or_default(),
                    None => index.exact.entry(h.into()).or_default(),
                },
            };
            // Match order is by place: the first route with a host and path shadows the rest.
            paths.0.entry(path(i).into()).or_insert(i);
        }
        index
    }

    fn find(&self, host: Option<&str>, path: &str) -> Option<usize> {
        let Some(host) = host else {
            return self.any_host.first(path);
        };
        // Exact hosts come before wildcards, wildcards before no host, in match order.
        if let Some(i) = self.exact.get(host).and_then(|p| p.first(path)) {
            return Some(i);
        }
        let suffixes = host
            .char_indices()
            .filter(|&(at, c)| c == '.' && at > 0)
            .map(|(at, _)| &host[at + 1..]);
        let wildcard = suffixes
            .filter_map(|suffix| self.wildcard.get(suffix)?.first(path))
            .min();
        wildcard.or_else(|| self.any_host.first(path))
    }
}

impl Paths {
    /// The first route whose path serves `path`: it is `path` itself, or `path` cut before
    /// or after one of its slashes.
    fn first(&self, path: &str) -> Option<usize> {
        if self.0.is_empty() {
            return None;
        }
        let slashes = path.match_indices('/').map(|(at, _)| at);
        let prefixes = slashes
            .flat_map(|at| [&path[..at], &path[..=at]])
            .chain([path]);
        prefixes.filter_map(|p| self.0.get(p).copied()).min()
    }
}

fn host_matches(pattern: Option<&str>, host: Option<&str>) -> bool {
    match (pattern, host) {
        (None, _) => true,
        (Some(_), None) => false,
        (Some(p), Some(h)) => match p.strip_prefix("*.") {
            // `*.example.com` matches `a.example.com` and `a.b.example.com`, not `example.com`.
            Some(suffix) => {
                h.len() > suffix.len() + 1
                    && h.ends_with(suffix)
                    && h.as_bytes()[h.len() - suffix.len() - 1] == b'.'
            }
            None => p == h,
        },
    }
}

/// A host as routes compare it: port stripped, lowercase, no trailing dot.
pub fn normal_host(host: &str) -> String {
    let h = strip_port(host.trim());
    h.strip_suffix('.').unwrap_or(h).to_ascii_lowercase()
}

/// Prefix match on segment boundaries: `/chat` serves `/chat` and `/chat/x`, not `/chatty`.
pub(crate) fn path_matches(prefix: &str, path: &str) -> bool {
    match path.strip_prefix(prefix) {
        Some(rest) => prefix.ends_with('/') || rest.is_empty() || rest.starts_with('/'),
        None => false,
    }
}

/// `example.com:8080` → `example.com`; `[::1]:80` → `[::1]`.
pub fn strip_port(host: &str) -> &str {
    if host.starts_with('[') {
        return match host.find(']') {
            Some(i) => &host[..=i],
            None => host,
        };
    }
    match host.rsplit_once(':') {
        Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => host,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::from_toml_str;

    fn table(routes: &str) -> RouteTable {
        let cfg =
            from_toml_str(&format!("[[listener]]\nlisten = \"127.0.0.1:0\"\n{routes}")).unwrap();
        RouteTable::new(&cfg.routes, &Control::default())
    }

    fn name(t: &RouteTable, host: Option<&str>, path: &str) -> Option<String> {
        t.find(host, path).map(|r| r.config.name.clone())
    }

    #[test]
    fn host_and_path_matching() {
        let t = table(
            r#"
            [[route]]
            name = "any"
            path = "/"
            backends = ["ws://127.0.0.1:1"]
            [[route]]
            name = "chat"
            path = "/chat"
            backends = ["ws://127.0.0.1:1"]
            [[route]]
            name = "chat-a"
            host = "a.example.com"
            path = "/chat"
            backends = ["ws://127.0.0.1:1"]
            [[route]]
            name = "wild"
            host = "*.example.com"
            path = "/"
            backends = ["ws://127.0.0.1:1"]
            "#,
        );
        assert_eq!(name(&t, Some("x.org"), "/chat").as_deref(), Some("chat"));
        assert_eq!(
            name(&t, Some("x.org"), "/chat/room").as_deref(),
            Some("chat")
        );
        assert_eq!(name(&t, Some("x.org"), "/chatty").as_deref(), Some("any"));
        assert_eq!(
            name(&t, Some("A.Example.com:8443"), "/chat").as_deref(),
            Some("chat-a")
        );
        assert_eq!(
            name(&t, Some("b.example.com"), "/chat").as_deref(),
            Some("wild")
        );
        assert_eq!(
            name(&t, Some("example.com"), "/chat").as_deref(),
            Some("chat")
        );
        assert_eq!(name(&t, None, "/x").as_deref(), Some("any"));
        // By name, whatever the match order put where.
        for n in ["any", "chat", "chat-a", "wild"] {
            assert_eq!(t.named(n).map(|r| &*r.name), Some(n));
        }
        assert!(t.named("nope").is_none());
        // A trailing dot names the same DNS host.
        assert_eq!(
            name(&t, Some("A.example.com.:443"), "/chat").as_deref(),
            Some("chat-a")
        );
        assert_eq!(
            name(&t, Some("b.example.com."), "/chat").as_deref(),
            Some("wild")
        );
    }

    #[test]
    fn no_route() {
        let t = table(
            r#"
            [[route]]
            name = "chat"
            path = "/chat/"
            backends = ["ws://127.0.0.1:1"]
            "#,
        );
        assert_eq!(name(&t, Some("h"), "/chat"), None);
        assert_eq!(name(&t, Some("h"), "/chat/x").as_deref(), Some("chat"));
        assert_eq!(name(&t, Some("h"), "/other"), None);
    }

    /// Route hosts and paths for the index's test: overlapping on purpose (suffixes of each
    /// other, prefixes at and off segment boundaries, a trailing slash, the same pair twice).
    const HOSTS: [Option<&str>; 6] = [
        None,
        Some("a.example.com"),
        Some("example.com"),
        Some("*.example.com"),
        Some("*.a.example.com"),
        Some("*.com"),
    ];
    const PATHS: [&str; 7] = [
        "/",
        "/chat",
        "/chat/",
        "/chat/room",
        "/chatty",
        "/a/b",
        "/a",
    ];

    /// The routes of these (host, path) pairs, in this order, each pair once (a config may
    /// not name one twice).
    fn table_of(routes: &[(usize, usize)]) -> RouteTable {
        let mut seen = std::collections::HashSet::new();
        let mut text = String::new();
        for (n, &(h, p)) in routes.iter().enumerate() {
            if !seen.insert((h, p)) {
                continue;
            }
            text.push_str(&format!(
                "[[route]]\nname = \"r{n}\"\npath = \"{}\"\n",
                PATHS[p]
            ));
            if let Some(host) = HOSTS[h] {
                text.push_str(&format!("host = \"{host}\"\n"));
            }
            text.push_str("backends = [\"ws://127.0.0.1:1\"]\n");
        }
        table(&text)
    }

    proptest::proptest! {
        /// The index finds what the scan finds, whatever the table and the request.
        #[test]
        fn the_index_finds_what_the_scan_finds(
            routes in proptest::collection::vec((0..HOSTS.len(), 0..PATHS.len()), 1..24),
            host in proptest::sample::select(vec![
                None, Some("a.example.com"), Some("b.a.example.com"), Some("x.example.com"),
                Some("example.com"), Some("Example.COM.:8443"), Some("com"), Some(".example.com"),
                Some("a..example.com"), Some("other.org"),
            ]),
            path in proptest::sample::select(vec![
                "/", "/chat", "/chat/", "/chat/room", "/chat/room/x", "/chatty", "/a", "/a/",
                "/a/b", "/a/bc", "/a//b", "/b",
            ]),
        ) {
            let t = table_of(&routes);
            let paths = |i: usize| t.routes[i].config.path.as_str();
            let index = Index::new(&t.routes, paths);
            let host = host.map(normal_host);
            proptest::prop_assert_eq!(
                index.find(host.as_deref(), path),
                scan(&t.routes, paths, host.as_deref(), path)
            );
        }
    }

    #[test]
    fn a_large_table_is_indexed() {
        let routes: Vec<(usize, usize)> = (0..=INDEX_FROM).map(|n| (n % 6, n % 7)).collect();
        let t = table_of(&routes);
        assert!(t.index.is_some());
        assert_eq!(
            name(&t, Some("B.A.example.com"), "/chat/room").as_deref(),
            Some("r3")
        );
        assert!(table_of(&routes[1..]).index.is_none());
    }

    #[test]
    fn ports_are_stripped() {
        assert_eq!(strip_port("h:80"), "h");
        assert_eq!(strip_port("h"), "h");
        assert_eq!(strip_port("[::1]:80"), "[::1]");
    }
}
