//! Readiness for the service manager (systemd `Type=notify`): `READY=1` once every listener is
//! bound, `RELOADING=1` while a reload runs, `STOPPING=1` when a shutdown starts, `MAINPID=`
//! when a binary upgrade hands the service to a new process.
//!
//! Without `NOTIFY_SOCKET` in the environment (not started by systemd) each call does nothing.
//! A failure to notify is logged, never fatal: the proxy serves either way, and systemd, if it
//! is waiting, reports the missing readiness itself when its start timeout runs out.

use sd_notify::NotifyState;

/// Every listener (and the admin listener) is bound and the signal handlers are installed:
/// systemd may start the units ordered after this one, and a reload is complete.
pub fn ready() {
    send("READY=1", &[NotifyState::Ready]);
}

/// A reload starts. systemd wants the monotonic clock's time with it, to tell this reload's
/// `READY=1` from an earlier one (systemd.service(5), `Type=notify-reload`).
pub fn reloading() {
    match NotifyState::monotonic_usec_now() {
        Ok(now) => send("RELOADING=1", &[NotifyState::Reloading, now]),
        Err(e) => tracing::warn!(error = %e, "cannot read the monotonic clock for sd_notify"),
    }
}

/// A graceful shutdown starts: systemd shows the unit as deactivating, not failed.
pub fn stopping() {
    send("STOPPING=1", &[NotifyState::Stopping]);
}

/// A binary upgrade handed the sockets to process `pid`, which is now the service's main
/// process: systemd must follow it rather than end the service when this one exits (the unit
/// needs `NotifyAccess=all` for the message, sent by this process, and the new one's to count).
pub fn main_pid(pid: u32) {
    send("MAINPID", &[NotifyState::MainPid(pid)]);
}

fn send(what: &'static str, state: &[NotifyState]) {
    if let Err(e) = sd_notify::notify(state) {
        tracing::warn!(state = what, error = %e, "cannot notify the service manager (NOTIFY_SOCKET)");
    }
}
