//! File mirror → runtime [`Config`]: every check, every error collected, each with key and line.
//!
//! One file per section, each turning its part of the mirror into typed values through the
//! owning module's constructors (`crate::tls`, `crate::policy`) and decorating their errors
//! with key and line: `listener.rs` (listeners, TLS, `[http2]`), `route.rs` (routes and
//! backends), `auth.rs` (a route's policy keys and `[route.auth]`), `jwt.rs`
//! (`[route.auth.jwt]`), `forward_auth.rs` (`[route.auth.forward_auth]`), `limits.rs`
//! (`[limits]`'s path keys), `admin.rs` (`[admin]`, its token and TLS), `log.rs` (`[log]`).
//! This file holds the [`Validator`] they share, the top-level tables and the entry points.

mod admin;
mod auth;
mod fair;
mod forward_auth;
mod health;
mod jwt;
mod jwt_claims;
mod limits;
mod listener;
mod log;
mod route;

pub(crate) use listener::overlaps;
pub use route::parse_backend_url;

use std::collections::HashSet;
use std::ops::Range;
use std::path::Path;
use std::time::Duration;

use toml::Spanned;

use super::file::{FileConfig, SpStr};
use super::units::{parse_duration, parse_size};
use super::*;

/// `[runtime] workers` at most: far more threads than cores only adds switching.
const MAX_WORKERS: i64 = 1024;

/// Reads `path` and validates it. Errors carry the file name as their source.
pub fn load_file(path: &Path) -> Result<Config, ConfigErrors> {
    load_file_over(path, &crate::tls::Serving::default())
}

/// [`load_file`] for a reload of a running gateway: a listener's certificate pair whose files
/// do not load keeps what that listener serves from them now (`serving`), with a warning
/// naming the key and line, instead of failing the reload (see [`crate::tls::Serving`]).
pub fn load_file_over(path: &Path, serving: &crate::tls::Serving) -> Result<Config, ConfigErrors> {
    let source = path.display().to_string();
    let refused = |line, message| ConfigErrors {
        source: source.clone(),
        errors: vec![ConfigError {
            key: "(file)".into(),
            line,
            message,
        }],
    };
    let bytes = crate::config::read_limited(path, crate::config::MAX_CONFIG_FILE)
        .map_err(|e| refused(None, format!("cannot read config file: {e}")))?;
    // Named by its line (a Latin-1 `é` in a comment, from an editor that saved it so).
    let text = String::from_utf8(bytes).map_err(|e| {
        let valid = &e.as_bytes()[..e.utf8_error().valid_up_to()];
        let line = valid.iter().filter(|&&b| b == b'\n').count() + 1;
        refused(
            Some(line),
            "not UTF-8 (TOML files are UTF-8: save the file as UTF-8)".to_string(),
        )
    })?;
    let base = path.parent().unwrap_or(Path::new("."));
    let mut config =
        validate(&text, base, serving).map_err(|errors| ConfigErrors { source, errors })?;
    config.source = Some(path.to_path_buf());
    Ok(config)
}

/// Parses and validates a config held in a string; relative file paths are taken from the
/// current directory.
pub fn from_toml_str(text: &str) -> Result<Config, Vec<ConfigError>> {
    from_toml_str_in(text, Path::new("."))
}

/// Parses and validates a config; relative file paths (certificates, keys) are resolved
/// against `base`, the config file's directory.
pub fn from_toml_str_in(text: &str, base: &Path) -> Result<Config, Vec<ConfigError>> {
    validate(text, base, &crate::tls::Serving::default())
}

/// [`from_toml_str_in`], over the certificates running listeners serve ([`load_file_over`]).
fn validate(
    text: &str,
    base: &Path,
    serving: &crate::tls::Serving,
) -> Result<Config, Vec<ConfigError>> {
    // Unknown keys and wrong types, all of them; what remains is validated for the rest.
    let mut parsed = super::parse::parse::<FileConfig>(text);
    let Some(file) = parsed.file.take() else {
        return Err(parsed.errors);
    };
    let mut v = Validator {
        base,
        serving,
        errors: Vec::new(),
        canonical: Vec::new(),
        line_starts: (text.bytes().enumerate())
            .filter(|&(_, b)| b == b'\n')
            .map(|(i, _)| i + 1)
            .collect(),
    };
    let mut config = v.config(file);
    v.errors.retain(|e| !parsed.already_reported(&e.key));
    v.errors.extend(parsed.errors);
    if v.errors.is_empty() {
        fingerprints(&canonical_text(text, v.canonical), &mut config);
        Ok(config)
    } else {
        v.errors.sort_by_key(|e| e.line.unwrap_or(0));
        Err(v.errors)
    }
}

/// `[limits]` keys that only the process's own admission reads (`Config::limits`).
const PROCESS_ONLY_LIMITS: &[&str] = &[
    "max_sessions",
    "max_sessions_per_ip",
    "handshake_rate_per_ip",
    "handshake_burst",
    "fd_reserve",
];

/// `text` with each duration and size value written in one canonical form (`replacements`,
/// by the value's span), so that `"1m"` and `"60s"`, or `"1MiB"` and `"1048576"`, fingerprint
/// alike: the same value, not a change.
fn canonical_text(text: &str, mut replacements: Vec<(std::ops::Range<usize>, String)>) -> String {
    replacements.sort_by_key(|(span, _)| span.start);
    let mut out = String::with_capacity(text.len());
    let mut at = 0;
    for (span, value) in replacements {
        // Spans are the value's token; one that overlaps another (never, in a valid file)
        // or falls outside the text is left as written.
        let Some(token) = text.get(span.clone()).filter(|_| span.start >= at) else {
            continue;
        };
        out.push_str(&text[at..span.start]);
        if token.starts_with(['"', '\'']) {
            out.push('"');
            out.push_str(&value);
            out.push('"');
        } else {
            out.push_str(&value);
        }
        at = span.end;
    }
    out.push_str(&text[at..]);
    out
}

/// Each route's and each listener's settings as written: its `[[route]]` or `[[listener]]`
/// table and the global tables it inherits from, in a canonical form (the TOML value's own,
/// keys sorted, from `text` with durations and sizes already canonical: see
/// [`canonical_text`]), so that formatting, comments and spellings of one value do not count
/// as a change. Routes are validated in file order, one each.
fn fingerprints(text: &str, config: &mut Config) {
    let Ok(table) = text.parse::<toml::Table>() else {
        return;
    };
    let global = |k: &str| match (k, table.get(k)) {
        // Without the process's own admission keys, which no route or listener reads:
        // raising `max_sessions` during an incident is no change to any route (and must not
        // restart the sessions of `on_change = "restart"` ones).
        ("limits", Some(toml::Value::Table(limits))) => {
            let mut limits = limits.clone();
            for process_only in PROCESS_ONLY_LIMITS {
                limits.remove(*process_only);
            }
            limits.to_string()
        }
        (_, v) => v.map(|v| v.to_string()).unwrap_or_default(),
    };
    let inherited = format!("{}\n{}", global("timeouts"), global("limits"));
    let routes = table.get("route").and_then(toml::Value::as_array);
    for (i, route) in config.routes.iter_mut().enumerate() {
        let own = routes
            .and_then(|r| r.get(i))
            .map(|v| v.to_string())
            .unwrap_or_default();
        route.fingerprint = format!("{own}\n{inherited}");
    }
    // A listener's HTTP builders also read `[http2]` and the header limits in `[limits]`.
    let inherited = format!(
        "{}\n{}\n{}",
        global("http2"),
        global("limits"),
        global("timeouts")
    );
    let listeners = table.get("listener").and_then(toml::Value::as_array);
    for (i, listener) in config.listeners.iter_mut().enumerate() {
        let own = listeners
            .and_then(|l| l.get(i))
            .map(|v| v.to_string())
            .unwrap_or_default();
        listener.fingerprint = format!("{own}\n{inherited}");
    }
}

/// The session keys of a `[timeouts]` or `[route.timeouts]` table.
#[derive(Default, Clone, Copy)]
struct SessionKeys<'a> {
    ping_interval: Option<&'a SpStr>,
    pong_timeout: Option<&'a SpStr>,
    idle: Option<&'a SpStr>,
    max_lifetime: Option<&'a SpStr>,
    hibernate_after: Option<&'a SpStr>,
}

/// Collects errors while turning the file mirror into [`Config`]; each section's file adds
/// its checks to it.
pub(super) struct Validator<'a> {
    /// The config file's directory: relative file paths are resolved against it.
    pub(crate) base: &'a Path,
    /// What the running listeners serve, when this is a reload (else empty): a certificate
    /// pair that does not load keeps it (see [`crate::tls::Serving`]).
    serving: &'a crate::tls::Serving,
    errors: Vec<ConfigError>,
    /// Each duration and size value read, by its span, in one canonical form (plain ASCII
    /// without quotes or escapes): for [`canonical_text`].
    canonical: Vec<(std::ops::Range<usize>, String)>,
    /// Where each line of `text` after the first begins: [`Validator::line`] looks an offset
    /// up here. (Counting the newlines before it, once per route, took a file of 20,000
    /// routes six seconds to load, on a worker thread of the running gateway when reloaded.)
    line_starts: Vec<usize>,
}

impl Validator<'_> {
    /// The line of a byte offset in the file (1-based), for warnings and errors.
    pub(crate) fn line(&self, offset: usize) -> usize {
        self.line_starts.partition_point(|&start| start <= offset) + 1
    }

    /// `[upgrade] socket`: a path for a Unix socket wsgate binds (replacing a stale socket
    /// left there): in a directory that exists, and not any other kind of file, which the
    /// bind would delete (the config file itself, say).
    fn upgrade_socket(&mut self, s: &SpStr) -> Option<std::path::PathBuf> {
        use std::os::unix::fs::FileTypeExt;
        const KEY: &str = "upgrade.socket";
        let span = Some(s.span());
        if s.get_ref().trim().is_empty() {
            self.err(KEY, span, "must be a path for a Unix socket");
            return None;
        }
        let path = self.base.join(s.get_ref());
        // sockaddr_un's sun_path: 108 bytes, the last a NUL.
        const SUN_PATH_MAX: usize = 107;
        let len = path.as_os_str().len();
        if len > SUN_PATH_MAX {
            self.err(
                KEY,
                span,
                format!(
                    "{} is {len} bytes long, and a Unix socket's path can be at most \
                     {SUN_PATH_MAX}: choose a shorter one (e.g. /run/wsgate/upgrade.sock)",
                    path.display()
                ),
            );
            return None;
        }
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty())
            && !dir.is_dir()
        {
            self.err(
                KEY,
                span,
                format!("directory {} does not exist", dir.display()),
            );
            return None;
        }
        match std::fs::symlink_metadata(&path) {
            Ok(m) if !m.file_type().is_socket() => {
                self.err(
                    KEY,
                    span,
                    format!(
                        "{} exists and is not a socket (wsgate would replace it)",
                        path.display()
                    ),
                );
                None
            }
            _ => Some(path),
        }
    }

    /// Records one error; `span` (from a [`Spanned`] value) gives the line.
    pub(crate) fn err(
        &mut self,
        key: impl Into<String>,
        span: Option<Range<usize>>,
        message: impl Into<String>,
    ) {
        let line = span.map(|s| self.line(s.start));
        self.errors.push(ConfigError {
            key: key.into(),
            line,
            message: message.into(),
        });
    }

    /// Notes `value`'s canonical form (see [`canonical_text`]).
    fn canonical(&mut self, value: &SpStr, form: String) {
        self.canonical.push((value.span(), form));
    }

    /// A positive duration such as `"5s"`; errors name `key`.
    pub(crate) fn duration(
        &mut self,
        key: &str,
        value: Option<&SpStr>,
        default: Duration,
    ) -> Duration {
        let Some(value) = value else { return default };
        if value.get_ref().trim().eq_ignore_ascii_case("off") {
            // The keys that can be off take it before this (`optional_duration`).
            self.err(
                key,
                Some(value.span()),
                "cannot be \"off\": give a duration, e.g. \"30s\"",
            );
            return default;
        }
        match parse_duration(value.get_ref()) {
            Ok(d) if d.is_zero() => {
                self.err(key, Some(value.span()), "must be greater than zero");
                default
            }
            Ok(d) => {
                self.canonical(value, format!("{}ns", d.as_nanos()));
                d
            }
            Err(msg) => {
                self.err(key, Some(value.span()), msg);
                default
            }
        }
    }

    /// A duration where `"0"` or `"off"` turns the feature off.
    pub(crate) fn optional_duration(
        &mut self,
        key: &str,
        value: Option<&SpStr>,
        default: Option<Duration>,
    ) -> Option<Duration> {
        let Some(value) = value else { return default };
        if value.get_ref().trim() == "off" {
            self.canonical(value, "off".into());
            return None;
        }
        match parse_duration(value.get_ref()) {
            Ok(d) if d.is_zero() => {
                self.canonical(value, "off".into());
                None
            }
            Ok(d) => {
                self.canonical(value, format!("{}ns", d.as_nanos()));
                Some(d)
            }
            Err(msg) => {
                self.err(key, Some(value.span()), format!("{msg} (or \"off\")"));
                default
            }
        }
    }

    /// A size where `"off"` means no limit (and `"0"` is an error, not another "off").
    fn optional_size(
        &mut self,
        key: &str,
        value: Option<&SpStr>,
        default: Option<u64>,
    ) -> Option<u64> {
        let Some(value) = value else { return default };
        if value.get_ref().trim() == "off" {
            self.canonical(value, "off".into());
            return None;
        }
        match parse_size(value.get_ref()) {
            // Not "off" in disguise: a limit written as 0 reads as "nothing", and taking it
            // for "no limit" would let through what its author meant to refuse.
            Ok(0) => {
                self.err(
                    key,
                    Some(value.span()),
                    format!(
                        "{:?} is not a limit: write \"off\" for none, or a size",
                        value.get_ref()
                    ),
                );
                default
            }
            Ok(n) => {
                self.canonical(value, format!("{n}B"));
                Some(n)
            }
            Err(msg) => {
                self.err(key, Some(value.span()), format!("{msg} (or \"off\")"));
                default
            }
        }
    }

    /// Session settings: `table` (e.g. `timeouts`) over `defaults`.
    fn session(
        &mut self,
        prefix: &str,
        t: SessionKeys<'_>,
        max_message: (&str, Option<&SpStr>),
        defaults: &SessionConfig,
    ) -> SessionConfig {
        SessionConfig {
            max_message: self.optional_size(max_message.0, max_message.1, defaults.max_message),
            max_message_inflated: defaults.max_message_inflated,
            ping_interval: self.optional_duration(
                &format!("{prefix}.ping_interval"),
                t.ping_interval,
                defaults.ping_interval,
            ),
            pong_timeout: self.duration(
                &format!("{prefix}.pong_timeout"),
                t.pong_timeout,
                defaults.pong_timeout,
            ),
            idle_timeout: self.optional_duration(
                &format!("{prefix}.idle"),
                t.idle,
                defaults.idle_timeout,
            ),
            max_lifetime: self.optional_duration(
                &format!("{prefix}.max_lifetime"),
                t.max_lifetime,
                defaults.max_lifetime,
            ),
            hibernate_after: self.optional_duration(
                &format!("{prefix}.hibernate_after"),
                t.hibernate_after,
                defaults.hibernate_after,
            ),
            rates: defaults.rates,
        }
    }

    /// `[runtime] scheduler`; absent: [`DEFAULT_SCHEDULER`].
    fn scheduler(&mut self, value: Option<&SpStr>) -> Scheduler {
        let Some(v) = value else {
            return DEFAULT_SCHEDULER;
        };
        match v.get_ref().trim() {
            "per_worker" => Scheduler::PerWorker,
            "work_stealing" => Scheduler::WorkStealing,
            other => {
                self.err(
                    "runtime.scheduler",
                    Some(v.span()),
                    format!("{other:?}: use \"per_worker\" or \"work_stealing\""),
                );
                DEFAULT_SCHEDULER
            }
        }
    }

    fn size(&mut self, key: &str, value: Option<&SpStr>, default: usize) -> usize {
        let Some(value) = value else { return default };
        match parse_size(value.get_ref()) {
            Ok(n) => {
                self.canonical(value, format!("{n}B"));
                usize::try_from(n).unwrap_or(usize::MAX)
            }
            Err(msg) => {
                self.err(key, Some(value.span()), msg);
                default
            }
        }
    }

    fn config(&mut self, file: FileConfig) -> Config {
        let timeouts = file.timeouts.unwrap_or_default();
        let handshake = self.duration(
            "timeouts.handshake",
            timeouts.handshake.as_ref(),
            DEFAULT_HANDSHAKE_TIMEOUT,
        );
        let backend_connect = self.duration(
            "timeouts.backend_connect",
            timeouts.backend_connect.as_ref(),
            DEFAULT_BACKEND_CONNECT_TIMEOUT,
        );
        let backend_handshake = self.duration(
            "timeouts.backend_handshake",
            timeouts.backend_handshake.as_ref(),
            DEFAULT_BACKEND_HANDSHAKE_TIMEOUT,
        );

        let limits_file = file.limits.unwrap_or_default();
        let session = self.session(
            "timeouts",
            SessionKeys {
                ping_interval: timeouts.ping_interval.as_ref(),
                pong_timeout: timeouts.pong_timeout.as_ref(),
                idle: timeouts.idle.as_ref(),
                max_lifetime: timeouts.max_lifetime.as_ref(),
                hibernate_after: timeouts.hibernate_after.as_ref(),
            },
            ("limits.max_message", limits_file.max_message.as_ref()),
            &SessionConfig::default(),
        );
        let mut limits = Limits {
            max_header_bytes: self.size(
                "limits.max_header_bytes",
                limits_file.max_header_bytes.as_ref(),
                DEFAULT_MAX_HEADER_BYTES,
            ),
            max_headers: DEFAULT_MAX_HEADERS,
            max_error_body: self.size(
                "limits.max_error_body",
                limits_file.max_error_body.as_ref(),
                DEFAULT_MAX_ERROR_BODY,
            ),
            path: self.path_rules(&limits_file),
            error_detail: self.error_detail(&limits_file),
            admission: self.admission("limits", limits::AdmissionKeys::of_limits(&limits_file)),
            ipv6_prefix: self.ipv6_prefix(&limits_file),
            fd_reserve: self.fd_reserve(&limits_file),
        };
        if limits.max_header_bytes < MIN_HEADER_BYTES {
            let span = limits_file.max_header_bytes.as_ref().map(|s| s.span());
            self.err(
                "limits.max_header_bytes",
                span,
                format!("must be at least {MIN_HEADER_BYTES} bytes (8KiB)"),
            );
            limits.max_header_bytes = DEFAULT_MAX_HEADER_BYTES;
        }
        if let Some(n) = &limits_file.max_headers {
            match usize::try_from(*n.get_ref()) {
                Ok(n) if (1..=10_000).contains(&n) => limits.max_headers = n,
                _ => self.err(
                    "limits.max_headers",
                    Some(n.span()),
                    "must be between 1 and 10000",
                ),
            }
        }

        let shutdown_grace = self.duration(
            "shutdown.grace",
            file.shutdown.as_ref().and_then(|s| s.grace.as_ref()),
            DEFAULT_SHUTDOWN_GRACE,
        );
        let watch_table = file.config.as_ref();
        let watch_interval = self.duration(
            "config.watch_interval",
            watch_table.and_then(|c| c.watch_interval.as_ref()),
            DEFAULT_CONFIG_WATCH_INTERVAL,
        );
        let watch = watch_table
            .and_then(|c| c.watch.as_ref())
            .is_some_and(|w| *w.get_ref())
            .then_some(watch_interval);
        let reload_close_spread = self
            .optional_duration(
                "reload.close_spread",
                file.reload.as_ref().and_then(|r| r.close_spread.as_ref()),
                Some(DEFAULT_RELOAD_CLOSE_SPREAD),
            )
            .unwrap_or_default();
        let spread_value = file.shutdown.as_ref().and_then(|s| s.close_spread.as_ref());
        let shutdown_close_spread =
            self.optional_duration("shutdown.close_spread", spread_value, None);
        if let (Some(spread), Some(value)) = (shutdown_close_spread, spread_value)
            && spread >= shutdown_grace
        {
            self.err(
                "shutdown.close_spread",
                Some(value.span()),
                format!(
                    "must be shorter than shutdown.grace ({shutdown_grace:?}): sessions still \
                     open when the grace period ends are cut, so the last close frames would \
                     never go out"
                ),
            );
        }

        let unready_delay = self
            .optional_duration(
                "shutdown.unready_delay",
                file.shutdown
                    .as_ref()
                    .and_then(|s| s.unready_delay.as_ref()),
                None,
            )
            .unwrap_or_default();
        let upgrade_socket = file
            .upgrade
            .as_ref()
            .and_then(|u| u.socket.as_ref())
            .and_then(|s| self.upgrade_socket(s));

        let workers = self
            .count(
                "runtime.workers",
                file.runtime.as_ref().and_then(|r| r.workers.as_ref()),
                (1..=MAX_WORKERS, "one per CPU"),
            )
            .and_then(|n| usize::try_from(n).ok());
        let scheduler = self.scheduler(file.runtime.as_ref().and_then(|r| r.scheduler.as_ref()));

        let listeners = self.listeners(&file.listener, handshake);
        let admin = file
            .admin
            .as_ref()
            .and_then(|a| self.admin(a, &file.listener));
        let log = self.log(file.log.as_ref());

        let mut routes: Vec<RouteConfig> = Vec::new();
        let mut names = HashSet::new();
        let mut places = std::collections::HashMap::new();
        // Each valid route's `path` key and line, for the warnings about the set of routes.
        let mut route_lines: Vec<(String, Option<usize>)> = Vec::new();
        if file.route.is_empty() {
            self.err(
                "route",
                None,
                "no [[route]]: add at least one route with a path and backends",
            );
        }
        for (i, r) in file.route.iter().enumerate() {
            let key = format!("route[{i}]");
            // Names are compared before the route is validated, so a name repeated from a
            // route with errors of its own is reported in the same run; trimmed, as the route
            // keeps them (and reloads, the admin API and the metrics find routes by them). An
            // empty name has its own error.
            if let Some(name) = &r.get_ref().name
                && let trimmed = name.get_ref().trim()
                && !trimmed.is_empty()
                && !names.insert(trimmed.to_string())
            {
                self.err(
                    format!("{key}.name"),
                    Some(name.span()),
                    format!("route name {trimmed:?} is used twice"),
                );
            }
            if let Some(route) = self.route(&key, r, backend_connect, backend_handshake, &session) {
                // Paths are compared as requests are checked against them: without letter
                // case or segments' trailing dots (`crate::path::folded`), since a request
                // must route the same read either way. Of `/Chat` and `/chat`, one could never
                // be reached: every request for it would be refused as ambiguous.
                let folded = crate::path::folded(&route.path).unwrap_or_else(|| route.path.clone());
                use std::collections::hash_map::Entry;
                match places.entry((route.host.clone(), folded)) {
                    Entry::Vacant(place) => {
                        place.insert(route.path.clone());
                    }
                    Entry::Occupied(first) => {
                        let earlier = first.get();
                        let alike = if *earlier == route.path {
                            String::new()
                        } else {
                            format!(
                                " ({earlier:?}: paths are compared without letter case or trailing dots)"
                            )
                        };
                        self.err(
                            format!("{key}.path"),
                            r.get_ref().path.as_ref().map(|p| p.span()),
                            format!(
                                "an earlier route already serves host {} and path {:?}{alike}",
                                route.host.as_deref().unwrap_or("(any)"),
                                route.path
                            ),
                        );
                    }
                }
                self.route_path(&key, r, &route.path, &limits.path);
                routes.push(route);
                let line = r.get_ref().path.as_ref().map(|p| self.line(p.span().start));
                route_lines.push((format!("{key}.path"), line));
            }
        }
        bare_prefixes_elsewhere(&routes, &route_lines);

        let http2 = self.http2(file.http2.as_ref());
        let mut subject_headers: Vec<http::HeaderName> = Vec::new();
        for name in listeners
            .iter()
            .filter_map(|l| l.tls.as_ref()?.subject_header.as_ref())
        {
            if !subject_headers.contains(name) {
                subject_headers.push(name.clone());
            }
        }
        Config {
            subject_headers,
            listeners,
            routes,
            limits,
            http2,
            shutdown_grace,
            shutdown_close_spread,
            unready_delay,
            reload_close_spread,
            upgrade_socket,
            workers,
            scheduler,
            source: None,
            watch,
            pages: Vec::new(),
            admin,
            log,
        }
    }
}

/// Warns (at startup, at every reload and in `wsgate check`) about a route whose `path` ends
/// with a slash while another route takes the path without it: `path = "/api/"` serves
/// `/api/` and `/api/x`, but `/api`, `/api?x` and `/api;x` go to that other route (a
/// catch-all `/`, say) and its policy, and a backend that treats `/api` as `/api/` (many
/// frameworks do) serves them there. nginx answers `/api` with a redirect for such a
/// location; here the fix is the operator's: `path = "/api"` takes both.
fn bare_prefixes_elsewhere(routes: &[RouteConfig], keys: &[(String, Option<usize>)]) {
    for (i, r) in routes.iter().enumerate() {
        let Some(bare) = r.path.strip_suffix('/').filter(|b| !b.is_empty()) else {
            continue;
        };
        let host = r.host.as_deref();
        let other = routes.iter().find(|o| {
            !std::ptr::eq(*o, r)
                && (o.host.is_none() || o.host.as_deref() == host)
                && crate::route::path_matches(&o.path, bare)
        });
        if let Some(o) = other
            && let Some((key, line)) = keys.get(i)
        {
            tracing::warn!(
                route = %r.name,
                key = %key,
                line = *line,
                "path {:?} does not take {bare:?} itself, which goes to route {:?} (path {:?}) and its policy: write path = {bare:?} to take both",
                r.path,
                o.name,
                o.path,
            );
        }
    }
}

/// The entries of a list key; none when the key is absent.
fn entries(list: Option<&Spanned<Vec<SpStr>>>) -> &[SpStr] {
    list.map_or(&[], |l| l.get_ref().as_slice())
}

/// A header name; an error naming `key` if it is not one.
fn header_name(
    v: &mut Validator<'_>,
    key: &str,
    s: &str,
    span: std::ops::Range<usize>,
) -> Option<http::HeaderName> {
    match http::HeaderName::from_bytes(s.trim().as_bytes()) {
        Ok(h) => Some(h),
        Err(_) => {
            v.err(key, Some(span), format!("{s:?} is not a header name"));
            None
        }
    }
}
