//! Config reload: a new generation of routes for new handshakes, and only the sessions that
//! must go told to (close 1012 "service restart", spread over `[reload] close_spread`).
//!
//! Routes are matched by name. A route keeps, across generations, its signal, its counters
//! and the live state of the backends it still lists (`RouteTable::next`), so an unchanged
//! route's sessions never notice a reload; new handshakes always get the new settings (a
//! renewed key file or CA counts even where the route's table did not change). Sessions
//! close when:
//! - their route was removed;
//! - their route changed and says `on_change = "restart"`;
//! - their backend is no longer one of their route's backends (so their clients reconnect to
//!   the remaining ones).
//!
//! Listeners follow the file too (`crate::listeners`): an added one is bound before anything
//! else changes (a port that cannot be bound fails the whole reload), a removed one stops
//! accepting (its connections and sessions go on, unless their route goes), a changed one
//! (TLS, HTTP/2, PROXY protocol, timeouts, header limits) gets a new accept loop on the same
//! socket, so new connections get the new settings and nothing queued is lost. Only `[admin]`
//! is what the process started with: a reload that changes it says so (`restart_needed`).

use std::sync::Arc;

use crate::config::{Config, ConfigError, ConfigErrors, OnChange};
use crate::frame::close_code;
use crate::proxy::ProxyState;
use crate::relay::CloseRequest;
use crate::sessions::SessionInfo;

/// What a reload did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReloadReport {
    /// Route names, sorted.
    pub added: Vec<String>,
    pub removed: Vec<String>,
    pub changed: Vec<String>,
    pub unchanged: Vec<String>,
    /// Sessions asked to close with 1012 (over `[reload] close_spread`).
    pub sessions_closing: usize,
    /// The generation now serving new handshakes.
    pub generation: u64,
    /// Listeners (by configured address) added, removed, and changed.
    pub listeners: crate::listeners::ListenerDiff,
    /// Settings that changed but take effect only on a restart (`[admin]`).
    pub restart_needed: Vec<String>,
}

/// Applies an already validated `config`: see the module docs. Fails, changing nothing, when
/// a listener it adds cannot be bound.
pub fn apply(state: &Arc<ProxyState>, mut config: Config) -> Result<ReloadReport, ConfigErrors> {
    // One reload at a time (SIGHUP, `POST /api/reload` and the file watcher may overlap): the
    // listeners' prepare and commit and the routes' advance must be of the same config.
    let _one_at_a_time = state.reloading.lock().unwrap_or_else(|p| p.into_inner());
    // A shutdown has begun: its listeners close at the end of `unready_delay` (or have), so a
    // new config's listeners would be bound with nobody to accept on them, and its routes
    // would serve no one.
    if state.listeners.stop.is_cancelled() || state.is_shutting_down() {
        return Err(ConfigErrors {
            source: "(shutdown)".into(),
            errors: vec![ConfigError {
                key: "(reload)".into(),
                line: None,
                message: "the gateway is shutting down: the running config stays".into(),
            }],
        });
    }
    let prepared = match state.listeners.prepare(&config.listeners) {
        Ok(p) => p,
        Err(refused) => {
            state.reloads.add("failed");
            let (key, line) = match refused.index {
                Some(i) => (
                    format!("listener[{i}].listen"),
                    config.listeners[i].listen_line,
                ),
                None => ("listener".to_string(), None),
            };
            let errors = ConfigErrors {
                source: config
                    .source
                    .as_ref()
                    .map_or_else(|| "(config)".into(), |p| p.display().to_string()),
                errors: vec![ConfigError {
                    key,
                    line,
                    message: refused.error.to_string(),
                }],
            };
            // As a file that does not validate is logged (`from_file`).
            log_failed(&errors);
            return Err(errors);
        }
    };
    // A subject header a reload renames or drops is still set on the connections accepted
    // before it (they keep their listener's settings): it stays stripped on every listener,
    // or a client of another listener could send it where backends still take it as
    // verified.
    for name in &state.current().config.subject_headers {
        if !config.subject_headers.contains(name) {
            config.subject_headers.push(name.clone());
        }
    }
    let restart_needed = restart_needed(&state.initial, &config);
    let spread = config.reload_close_spread;
    let (next, diff) = state.advance(config);
    let listeners = state.listeners.commit(state, prepared);
    // Not the sessions already closing (an earlier reload's wave, an operator's close):
    // they are neither asked again nor this reload's to report.
    let closing: Vec<Arc<SessionInfo>> = state
        .sessions
        .list()
        .into_iter()
        .filter(|s| must_close(s, &next.routes) && !state.sessions.closing(s))
        .collect();
    let report = ReloadReport {
        sessions_closing: closing.len(),
        generation: next.number,
        listeners,
        restart_needed,
        added: diff.added,
        removed: diff.removed,
        changed: diff.changed,
        unchanged: diff.unchanged,
    };
    if !closing.is_empty() {
        state.sessions.schedule(&closing);
        let sessions = state.sessions.clone();
        let request = CloseRequest::drain(close_code::SERVICE_RESTART);
        tokio::spawn(async move { sessions.close_spread(closing, request, spread).await });
    }
    state.reloads.add("ok");
    tracing::info!(
        generation = report.generation,
        added = crate::telemetry::list(&report.added),
        removed = crate::telemetry::list(&report.removed),
        changed = crate::telemetry::list(&report.changed),
        listeners_added = crate::telemetry::list(&report.listeners.added),
        listeners_removed = crate::telemetry::list(&report.listeners.removed),
        listeners_changed = crate::telemetry::list(&report.listeners.changed),
        sessions_closing = report.sessions_closing,
        close_spread = ?spread,
        "config reloaded"
    );
    if !report.restart_needed.is_empty() {
        tracing::warn!(
            settings = crate::telemetry::list(&report.restart_needed),
            "config reload: these changes take effect only after a restart"
        );
    }
    Ok(report)
}

/// Reads the file the running config came from again and applies it; on any error nothing
/// changes, and every error (key and line) is logged. A gateway not started from a file
/// (`wsgate demo`, tests) has nothing to read: an error, neither logged nor counted; nor
/// has one whose binary upgrade's successor is starting ([`crate::upgrade::Successor`]).
///
/// The file is read and validated on a blocking thread (a file of thousands of routes takes
/// a good part of a second): done on the runtime, it held up every session of the worker
/// that took the signal or the API request, and the admin listener with them.
pub async fn from_file(state: &Arc<ProxyState>) -> Result<ReloadReport, ConfigErrors> {
    let refused = |source: &str, key: &str, message: String| ConfigErrors {
        source: source.into(),
        errors: vec![crate::config::ConfigError {
            key: key.into(),
            line: None,
            message,
        }],
    };
    let Some(path) = state.current().config.source.clone() else {
        let message = "this gateway was not started from a config file".into();
        return Err(refused("(no file)", "(file)", message));
    };
    if let Some(message) = state.successor.reload_refusal() {
        return Err(refused("(upgrade)", "(reload)", message));
    }
    // A certificate pair that does not load keeps what its listener serves (as the
    // certificate watcher does), rather than failing the whole reload.
    let mut serving = crate::tls::Serving::default();
    for (listener, _) in state.listeners.configs() {
        if let Some(tls) = &listener.tls {
            serving.add(listener.addr, tls);
        }
    }
    let loaded =
        tokio::task::spawn_blocking(move || crate::config::load_file_over(&path, &serving)).await;
    let loaded = loaded.unwrap_or_else(|e| {
        let message = format!("the config load did not finish: {e}");
        Err(refused("(config)", "(file)", message))
    });
    match loaded {
        Ok(config) => apply(state, config),
        Err(errors) => {
            state.reloads.add("failed");
            log_failed(&errors);
            Err(errors)
        }
    }
}

/// A reload that failed: the file, and each error with its line and key.
fn log_failed(errors: &ConfigErrors) {
    tracing::warn!(
        file = %errors.source,
        errors = crate::telemetry::list(&errors.lines()),
        "config reload failed; the running config stays"
    );
}

/// Reloads the config file whenever it changes (`[config] watch`), checking every `interval`,
/// until `stop` or a shutdown. A change is the file's modification time, size or inode (an
/// editor's save, a Kubernetes ConfigMap's symlink swap); a file that does not load is logged
/// and tried again at its next change, while the running config stays. While a binary
/// upgrade's successor starts, a change waits: the successor may read the file before or
/// after it, and should it fail, this process applies it then.
pub async fn watch(
    state: Arc<ProxyState>,
    interval: std::time::Duration,
    stop: tokio_util::sync::CancellationToken,
) {
    let Some(path) = state.current().config.source.clone() else {
        return;
    };
    let stamp = || {
        use std::os::unix::fs::MetadataExt;
        let m = std::fs::metadata(&path).ok()?;
        Some((m.modified().ok()?, m.len(), m.ino()))
    };
    let mut last = stamp();
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(interval) => {}
        }
        if state.is_shutting_down() {
            // As SIGHUP is: a shutdown's listeners close, and nobody would serve a new
            // config's.
            return;
        }
        if state.successor.running().is_some() {
            continue;
        }
        let now = stamp();
        if now != last && now.is_some() {
            last = now;
            tracing::info!(file = %path.display(), "config file changed: reloading");
            let _ = from_file(&state).await;
        }
    }
}

/// Whether a live session must close under the new routes: its route removed, changed with
/// `on_change = "restart"` (its settings differ from the session's), or its backend no
/// longer listed.
pub(crate) fn must_close(s: &SessionInfo, routes: &crate::route::RouteTable) -> bool {
    let Some(route) = routes.named(&s.route.name) else {
        return true; // its route was removed
    };
    if route.config.on_change == OnChange::Restart
        && route.config.fingerprint != s.route.config.fingerprint
    {
        return true;
    }
    // A backend the route still lists is the same `Backend` (carried over by URL).
    !route
        .pool
        .backends()
        .iter()
        .any(|b| Arc::ptr_eq(b, &s.lease.backend))
}

/// The settings that differ between the running process and `config` and take effect only
/// on a restart.
fn restart_needed(initial: &Config, config: &Config) -> Vec<String> {
    let mut out = Vec::new();
    let admin = |c: &Config| {
        c.admin
            .as_ref()
            .map(|a| (a.addr, a.tls.is_some(), a.token.clone()))
    };
    if admin(initial) != admin(config) {
        out.push("[admin]".into());
    }
    if initial.upgrade_socket != config.upgrade_socket {
        out.push("[upgrade] socket".into());
    }
    if initial.workers != config.workers {
        out.push("[runtime] workers".into());
    }
    if initial.scheduler != config.scheduler {
        out.push("[runtime] scheduler".into());
    }
    match (initial.watch, config.watch) {
        (Some(a), Some(b)) if a != b => out.push("[config] watch_interval".into()),
        (a, b) if a.is_some() != b.is_some() => out.push("[config] watch".into()),
        _ => {}
    }
    if initial.log.refusals_per_second != config.log.refusals_per_second {
        out.push("[log] refusals_per_second".into());
    }
    out
}
