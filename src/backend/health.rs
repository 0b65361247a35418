//! One backend's health: the active checks' verdict, the passive failure count and ejection
//! (outlier detection, as Envoy's), and since when it is back (slow start).
//!
//! Pure state under a small lock, every transition given the time: the pool decides, logs and
//! counts ([`super::pool`]); the checker feeds it results ([`super::checker`]). It lives in
//! the [`Backend`](super::Backend), which a reload carries over by URL, so a reload keeps it.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::config::{ActiveCheck, HealthConfig};

/// What a backend may be, as the admin API and the log name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Healthy,
    /// The active checks failed `unhealthy_threshold` times in a row.
    Unhealthy,
    /// Passive ejection: `max_failures` failed handshakes in a row; back at `until`.
    Ejected {
        until: Instant,
    },
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Healthy => "healthy",
            Status::Unhealthy => "unhealthy",
            Status::Ejected { .. } => "ejected",
        }
    }
}

/// A state change, for the pool to log and count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// Taken out by the active checks.
    Unhealthy,
    /// Ejected for this long after this many failures in a row.
    Ejected { lasts: Duration, failures: u32 },
    /// Usable again: its active checks passed.
    Back,
    /// Usable again: a reload removed the active checks that had taken it out.
    Unchecked,
    /// Its ejection ran out: it is tried again, not known to be well (nothing checked it).
    EjectionOver,
}

/// Whether one more backend of `total` may be ejected while `ejected` are: the route's
/// `max_ejected_percent` bounds the share out at once, so a shared outage or a bad rule
/// cannot empty the route.
pub fn may_eject(ejected: usize, total: usize, cfg: &HealthConfig) -> bool {
    (ejected + 1) * 100 <= usize::from(cfg.max_ejected_percent) * total
}

/// Slow start never gives a backend less than this share of its weight: with none at all it
/// would take no session, and a client that hashes to it would wait for nothing.
pub const MIN_SLOW_START_SHARE: f64 = 0.1;

#[derive(Debug, Default)]
pub struct Health(Mutex<State>);

#[derive(Debug, Default)]
struct State {
    /// The active checks' verdict (healthy until they say otherwise).
    checked_down: bool,
    /// Active results in a row that disagree with the verdict.
    streak: u32,
    /// Failed handshakes in a row.
    failures: u32,
    ejected_until: Option<Instant>,
    /// Ejections in a row, for the doubling.
    ejections: u32,
    /// When the last ejection ended: a backend not ejected for `max_ejection` since starts
    /// over at `ejection`.
    last_ejection_end: Option<Instant>,
    /// When the backend was last usable again after being out (slow start).
    back_since: Option<Instant>,
    /// Bumped when a reload removes the route's active checks: a result from a checker
    /// started before (still finishing as the reload stops it) is not taken.
    checks_epoch: u32,
}

impl State {
    fn status(&self, now: Instant) -> Status {
        match self.ejected_until {
            Some(until) if until > now => Status::Ejected { until },
            _ if self.checked_down => Status::Unhealthy,
            _ => Status::Healthy,
        }
    }
}

impl Health {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn status(&self, now: Instant) -> Status {
        self.lock().status(now)
    }

    /// Whether the backend takes new sessions; an ejection that has run out ends here, once
    /// (the returned change).
    pub fn usable(&self, now: Instant) -> (bool, Option<Change>) {
        let mut s = self.lock();
        let mut change = None;
        if let Some(until) = s.ejected_until
            && until <= now
        {
            s.ejected_until = None;
            s.last_ejection_end = Some(until);
            if !s.checked_down {
                s.back_since = Some(until);
                change = Some(Change::EjectionOver);
            }
        }
        (s.status(now) == Status::Healthy, change)
    }

    /// Whether the backend is ejected now.
    pub fn is_ejected(&self, now: Instant) -> bool {
        matches!(self.status(now), Status::Ejected { .. })
    }

    /// A handshake worked (or the backend answered for itself, 4xx): the failure streak ends.
    pub fn passive_success(&self) {
        self.lock().failures = 0;
    }

    /// A handshake failed. Ejects the backend after `max_failures` in a row if `may_eject`
    /// (the route's `max_ejected_percent` allows one more).
    pub fn passive_failure(
        &self,
        now: Instant,
        cfg: &HealthConfig,
        may_eject: bool,
    ) -> Option<Change> {
        let mut s = self.lock();
        s.failures = s.failures.saturating_add(1);
        if cfg.max_failures == 0
            || s.failures < cfg.max_failures
            || s.status(now) != Status::Healthy
            || !may_eject
        {
            return None;
        }
        if s.last_ejection_end
            .is_some_and(|end| now.saturating_duration_since(end) > cfg.max_ejection)
        {
            s.ejections = 0;
        }
        let lasts = ejection_length(cfg, s.ejections);
        s.ejections = s.ejections.saturating_add(1);
        s.ejected_until = Some(now + lasts);
        let failures = std::mem::take(&mut s.failures);
        Some(Change::Ejected { lasts, failures })
    }

    /// Which checks' results this backend takes (see [`Health::checks_removed`]): a checker
    /// reads it when it starts and gives it with each result.
    pub fn checks_epoch(&self) -> u32 {
        self.lock().checks_epoch
    }

    /// One active check's result, from a checker started at `epoch`.
    pub fn active_result(
        &self,
        ok: bool,
        now: Instant,
        check: &ActiveCheck,
        epoch: u32,
    ) -> Option<Change> {
        let mut s = self.lock();
        if epoch != s.checks_epoch {
            return None;
        }
        if ok != s.checked_down {
            // Agrees with the verdict.
            s.streak = 0;
            return None;
        }
        s.streak += 1;
        let needed = if ok {
            check.healthy_threshold
        } else {
            check.unhealthy_threshold
        };
        if s.streak < needed {
            return None;
        }
        s.streak = 0;
        s.checked_down = !ok;
        let ejected = s.ejected_until.is_some_and(|u| u > now);
        match (ok, ejected) {
            (false, _) => Some(Change::Unhealthy),
            (true, false) => {
                s.back_since = Some(now);
                s.failures = 0;
                Some(Change::Back)
            }
            // The ejection still stands; its end brings the backend back.
            (true, true) => None,
        }
    }

    /// Its route no longer checks it (a reload removed the active checks): their verdict
    /// goes with them, since nothing would ever lift it. [`Change::Unchecked`] when that
    /// puts it back (it was down by them, and is not ejected).
    pub fn checks_removed(&self, now: Instant) -> Option<Change> {
        let mut s = self.lock();
        s.streak = 0;
        s.checks_epoch = s.checks_epoch.wrapping_add(1);
        if !std::mem::take(&mut s.checked_down) || s.ejected_until.is_some_and(|u| u > now) {
            return None;
        }
        s.back_since = Some(now);
        s.failures = 0;
        Some(Change::Unchecked)
    }

    /// The share of its weight a backend takes now: growing in a straight line from
    /// [`MIN_SLOW_START_SHARE`] to 1 over `slow_start` after it came back (as the docs say;
    /// it used to stay at the floor for the window's first tenth, then follow the elapsed
    /// fraction).
    pub fn share(&self, now: Instant, slow_start: Option<Duration>) -> f64 {
        let Some(window) = slow_start else {
            return 1.0;
        };
        let s = self.lock();
        // An ejection that has run out is over from its end, whether or not a handshake has
        // looked since (`usable`).
        let ended = s
            .ejected_until
            .filter(|until| *until <= now && !s.checked_down);
        match ended.or(s.back_since) {
            Some(since) => {
                let elapsed = now.saturating_duration_since(since);
                let done = (elapsed.as_secs_f64() / window.as_secs_f64()).min(1.0);
                MIN_SLOW_START_SHARE + (1.0 - MIN_SLOW_START_SHARE) * done
            }
            None => 1.0,
        }
    }
}

/// `ejection`, doubled for each ejection in a row before, capped at `max_ejection`.
fn ejection_length(cfg: &HealthConfig, before: u32) -> Duration {
    let factor = 1u32.checked_shl(before.min(31)).unwrap_or(u32::MAX);
    cfg.ejection
        .checked_mul(factor)
        .unwrap_or(cfg.max_ejection)
        .min(cfg.max_ejection)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::CheckKind;

    fn cfg() -> HealthConfig {
        HealthConfig {
            ejection: Duration::from_secs(10),
            max_ejection: Duration::from_secs(35),
            ..HealthConfig::default()
        }
    }

    /// The slow start after an ejection runs from its end, whether or not a handshake has
    /// looked since: the admin API showed a share of 1 until the next handshake, then
    /// dropped it back.
    #[test]
    fn slow_start_after_an_ejection_runs_from_its_end_unlooked() {
        let (h, c, t0) = (Health::default(), cfg(), Instant::now());
        let window = Some(Duration::from_secs(100));
        for _ in 0..3 {
            h.passive_failure(t0, &c, true);
        }
        let end = t0 + Duration::from_secs(10);
        assert!((h.share(end + Duration::from_secs(50), window) - 0.55).abs() < 1e-9);
        // The first look ends it from its end, as the share said.
        assert_eq!(
            h.usable(end + Duration::from_secs(50)),
            (true, Some(Change::EjectionOver))
        );
        assert!((h.share(end + Duration::from_secs(50), window) - 0.55).abs() < 1e-9);
    }

    #[test]
    fn ejected_after_max_failures_doubling_up_to_the_cap() {
        let (h, c, t0) = (Health::default(), cfg(), Instant::now());
        let mut now = t0;
        for expected in [10, 20, 35, 35] {
            assert_eq!(h.passive_failure(now, &c, true), None);
            assert_eq!(h.passive_failure(now, &c, true), None);
            let change = h.passive_failure(now, &c, true);
            assert_eq!(
                change,
                Some(Change::Ejected {
                    lasts: Duration::from_secs(expected),
                    failures: 3
                })
            );
            assert!(h.is_ejected(now));
            assert!(!h.usable(now).0);
            now += Duration::from_secs(expected);
            assert_eq!(h.usable(now), (true, Some(Change::EjectionOver)));
        }
        // Long enough without an ejection: back to the first length.
        now += Duration::from_secs(36);
        for _ in 0..2 {
            h.passive_failure(now, &c, true);
        }
        assert_eq!(
            h.passive_failure(now, &c, true),
            Some(Change::Ejected {
                lasts: Duration::from_secs(10),
                failures: 3
            })
        );
    }

    #[test]
    fn a_success_ends_the_streak_and_the_cap_is_respected() {
        let (h, c, now) = (Health::default(), cfg(), Instant::now());
        h.passive_failure(now, &c, true);
        h.passive_failure(now, &c, true);
        h.passive_success();
        assert_eq!(h.passive_failure(now, &c, true), None);
        assert_eq!(h.passive_failure(now, &c, true), None);
        // The route may not eject one more: the backend stays in.
        assert_eq!(h.passive_failure(now, &c, false), None);
        assert_eq!(h.status(now), Status::Healthy);
        let off = HealthConfig {
            max_failures: 0,
            ..cfg()
        };
        for _ in 0..10 {
            assert_eq!(h.passive_failure(now, &off, true), None);
        }
    }

    fn active_check() -> ActiveCheck {
        ActiveCheck {
            kind: CheckKind::Tcp,
            path: None,
            interval: Duration::from_secs(1),
            timeout: Duration::from_secs(1),
            healthy_threshold: 2,
            unhealthy_threshold: 3,
        }
    }

    #[test]
    fn active_thresholds() {
        let check = active_check();
        let (h, now) = (Health::default(), Instant::now());
        assert_eq!(h.active_result(false, now, &check, 0), None);
        assert_eq!(h.active_result(true, now, &check, 0), None);
        assert_eq!(h.active_result(false, now, &check, 0), None);
        assert_eq!(h.active_result(false, now, &check, 0), None);
        assert_eq!(
            h.active_result(false, now, &check, 0),
            Some(Change::Unhealthy)
        );
        assert_eq!(h.status(now), Status::Unhealthy);
        assert_eq!(h.active_result(true, now, &check, 0), None);
        assert_eq!(h.active_result(true, now, &check, 0), Some(Change::Back));
        assert_eq!(h.status(now), Status::Healthy);
    }

    #[test]
    fn removed_checks_take_their_verdict_with_them() {
        let check = ActiveCheck {
            unhealthy_threshold: 1,
            ..active_check()
        };
        let now = Instant::now();
        let h = Health::default();
        assert_eq!(
            h.checks_removed(now),
            None,
            "a healthy backend stays as it is"
        );
        let old = h.checks_epoch();
        assert_eq!(
            h.active_result(false, now, &check, old),
            Some(Change::Unhealthy)
        );
        assert_eq!(h.status(now), Status::Unhealthy);
        assert_eq!(h.checks_removed(now), Some(Change::Unchecked));
        assert_eq!(h.status(now), Status::Healthy);
        // A result of the removed checks still on its way is not taken; a new checker's is.
        assert_eq!(h.active_result(false, now, &check, old), None);
        assert_eq!(h.status(now), Status::Healthy);
        let epoch = h.checks_epoch();
        assert_eq!(
            h.active_result(false, now, &check, epoch),
            Some(Change::Unhealthy)
        );
        // An ejection still stands: its end brings the backend back.
        let h = Health::default();
        for _ in 0..cfg().max_failures {
            h.passive_failure(now, &cfg(), true);
        }
        assert!(h.is_ejected(now));
        assert_eq!(
            h.active_result(false, now, &check, 0),
            Some(Change::Unhealthy)
        );
        assert_eq!(h.checks_removed(now), None);
        assert!(h.is_ejected(now));
        let later = now + Duration::from_secs(3600);
        assert_eq!(h.usable(later), (true, Some(Change::EjectionOver)));
    }

    #[test]
    fn slow_start_share_grows_from_the_floor() {
        let (h, c, t0) = (Health::default(), cfg(), Instant::now());
        let window = Some(Duration::from_secs(100));
        assert_eq!(h.share(t0, window), 1.0);
        for _ in 0..3 {
            h.passive_failure(t0, &c, true);
        }
        let back = t0 + Duration::from_secs(10);
        h.usable(back);
        assert_eq!(h.share(back, window), MIN_SLOW_START_SHARE);
        // A straight line from the floor: 10 % + 90 % × 50 / 100, and 10 % + 90 % × 10 / 100
        // where a floor under the elapsed fraction would still give 10 %.
        assert!((h.share(back + Duration::from_secs(50), window) - 0.55).abs() < 1e-9);
        assert!((h.share(back + Duration::from_secs(10), window) - 0.19).abs() < 1e-9);
        assert_eq!(h.share(back + Duration::from_secs(200), window), 1.0);
        assert_eq!(h.share(back, None), 1.0);
    }
}
