//! The descriptor reserve: new sessions stop short of the process's file descriptor limit,
//! so the admin listener, health checks, forward-auth and JWKS fetches and the backend legs
//! of handshakes in flight always find one.
//!
//! At start `wsgate run` raises the soft `RLIMIT_NOFILE` to the hard limit
//! ([`raise_soft_limit`]): the soft limit is often a default of 1024 that a proxy holding
//! two sockets per session outgrows at once. [`Descriptors`] knows the limit and checks each
//! handshake against it cheaply: one `fcntl(F_DUPFD_CLOEXEC)` and one `close`, no scan of
//! `/proc/self/fd`; and far from the limit, not even that on most handshakes (see
//! [`MAX_SKIPPED_PROBES`]).
//!
//! Why the lowest free number is the measure: the kernel gives every new descriptor the
//! lowest free number, so when the probe's duplicate gets number `n`, every number below
//! `n` is in use. While that `n` is below `limit - reserve`, the session admitted next
//! takes free numbers below it (its backend socket gets the lowest), and numbers above the
//! threshold are only ever handed out when everything below is taken: to the connections
//! that arrive meanwhile, the admin listener's, and the handshakes already admitted, which
//! is what the reserve is for. A process with holes below the threshold (sessions that
//! ended) has exactly that much room.

use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use crate::config::{DEFAULT_FD_RESERVE_MIN, DEFAULT_FD_RESERVE_PER_MILLE, FdReserve};
use crate::error::LimitError;

/// The process's descriptor limit, and the probe that measures how close it is.
#[derive(Debug)]
pub struct Descriptors {
    /// The soft `RLIMIT_NOFILE` when the gateway started; `u64::MAX` when unlimited or
    /// unknown (then nothing is checked).
    limit: u64,
    /// An open descriptor (`/dev/null`) whose duplicate gets the lowest free number.
    probe: Option<std::fs::File>,
    /// Handshakes that may pass unprobed: set by each probe from the room it found...
    credits: AtomicU32,
    /// ...under this reserve (a reload that changes `fd_reserve` gets a probe at once).
    credits_reserve: AtomicU64,
    /// The same for [`Descriptors::check_accepted`], under half the reserve.
    accept_credits: AtomicU32,
    accept_credits_reserve: AtomicU64,
}

/// The most handshakes admitted without a probe in between. A probe that finds `room`
/// numbers free below the reserve lets the next `min(room / ROOM_PER_SKIP, this)` handshakes
/// pass without one: each takes at most two descriptors, so even with connections accepted
/// meanwhile that never handshake, the unprobed ones stay well inside the room the last
/// probe saw. Near the limit every handshake is probed. Saves two syscalls on almost every
/// handshake of a process far from its limit (`docs/benchmarks.md`, "Syscalls").
pub const MAX_SKIPPED_PROBES: u32 = 64;
/// Descriptors of room per unprobed handshake (see [`MAX_SKIPPED_PROBES`]).
const ROOM_PER_SKIP: u64 = 8;

impl Descriptors {
    /// The process's limit now, and a probe.
    pub fn of_process() -> Descriptors {
        let limit = match nofile() {
            Ok((soft, _)) => soft,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read RLIMIT_NOFILE: no descriptor reserve");
                u64::MAX
            }
        };
        let probe = std::fs::File::open("/dev/null")
            .inspect_err(|e| {
                tracing::warn!(error = %e, "cannot open /dev/null: no descriptor reserve");
            })
            .ok();
        Descriptors {
            limit,
            probe,
            credits: AtomicU32::new(0),
            credits_reserve: AtomicU64::new(0),
            accept_credits: AtomicU32::new(0),
            accept_credits_reserve: AtomicU64::new(0),
        }
    }

    /// The soft limit the gateway runs under (`u64::MAX`: none known).
    pub fn limit(&self) -> u64 {
        self.limit
    }

    /// How many descriptors new sessions leave free under `setting`.
    pub fn reserve(&self, setting: FdReserve) -> u64 {
        reserve_for(self.limit, setting)
    }

    /// Refuses a new session when the lowest free descriptor number is within the reserve
    /// of the limit (or none is free at all).
    pub fn check(&self, setting: FdReserve) -> Result<(), LimitError> {
        self.check_within(self.reserve(setting), &self.credits, &self.credits_reserve)
    }

    /// Whether a connection just accepted on a proxy listener may stay: not once the lowest
    /// free descriptor is within half the reserve of the limit. A connection holds its
    /// descriptor from the accept, and those that never send a request (or send it slowly)
    /// would otherwise take, until their handshake timeout, what the reserve keeps for the
    /// admin listener and the backend legs. The handshakes that get that far are answered
    /// 503 by [`Descriptors::check`] at the full reserve first.
    pub fn check_accepted(&self, setting: FdReserve) -> Result<(), LimitError> {
        // (Its own credits are taken by the check.)
        take_credit(&self.credits);
        self.check_within(
            self.reserve(setting) / 2,
            &self.accept_credits,
            &self.accept_credits_reserve,
        )
    }

    /// A descriptor was taken outside a handshake (a connection accepted, on a proxy
    /// listener or the admin one): one credit fewer for the handshakes that pass unprobed.
    /// A credit stands for `ROOM_PER_SKIP` (8) descriptors, so this overcounts; without it, a
    /// burst of connections that never handshake (a few hundred silent admin connections)
    /// took the room a probe had seen, and the handshakes after them passed on its credits
    /// into the reserve and on to the limit (a backend connect that failed with EMFILE).
    pub fn took_one(&self) {
        take_credit(&self.credits);
        take_credit(&self.accept_credits);
    }

    fn check_within(
        &self,
        reserve: u64,
        credits: &AtomicU32,
        credits_reserve: &AtomicU64,
    ) -> Result<(), LimitError> {
        let Some(probe) = self.probe.as_ref().filter(|_| reserve > 0) else {
            return Ok(());
        };
        // A credit is taken only if there is one: two handshakes racing for the last one
        // (workers share this) must not wrap the count past zero, which would skip the
        // probe for the next four billion handshakes.
        if credits_reserve.load(Ordering::Relaxed) == reserve
            && credits
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |c| c.checked_sub(1))
                .is_ok()
        {
            return Ok(());
        }
        let lowest_free = match probe.try_clone() {
            // Closed again when dropped, at the end of this statement.
            Ok(dup) => u64::try_from(dup.as_raw_fd()).unwrap_or(0),
            Err(e) if matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE)) => self.limit,
            Err(_) => return Ok(()),
        };
        let threshold = self.limit.saturating_sub(reserve);
        if lowest_free >= threshold {
            return Err(LimitError::FdReserve {
                retry_after: rand::random_range(super::FULL_RETRY_AFTER),
            });
        }
        let skips = ((threshold - lowest_free) / ROOM_PER_SKIP).min(u64::from(MAX_SKIPPED_PROBES));
        credits_reserve.store(reserve, Ordering::Relaxed);
        credits.store(skips as u32, Ordering::Relaxed);
        Ok(())
    }
}

/// One credit fewer, if there is one (never wrapping past zero: see `check_within`).
fn take_credit(credits: &AtomicU32) {
    let _ = credits.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |c| c.checked_sub(1));
}

/// `fd_reserve` for a process limited to `limit` descriptors.
pub fn reserve_for(limit: u64, setting: FdReserve) -> u64 {
    match setting {
        FdReserve::Descriptors(n) => n,
        FdReserve::Default if limit == u64::MAX => 0,
        FdReserve::Default => {
            DEFAULT_FD_RESERVE_MIN.max(limit / 1000 * DEFAULT_FD_RESERVE_PER_MILLE)
        }
    }
}

/// The soft limit before and after [`raise_soft_limit`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Raised {
    pub from: u64,
    pub to: u64,
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit (to the kernel's `fs.nr_open` when the
/// hard limit is unlimited, as Linux allows no more).
pub fn raise_soft_limit() -> std::io::Result<Raised> {
    let (soft, hard) = nofile()?;
    let target = raised_limit(soft, hard);
    if target <= soft {
        return Ok(Raised {
            from: soft,
            to: soft,
        });
    }
    let limit = libc::rlimit {
        rlim_cur: to_rlim(target),
        rlim_max: to_rlim(hard),
    };
    // SAFETY: setrlimit reads the struct it is given, which lives across the call.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(Raised {
        from: soft,
        to: target,
    })
}

/// What [`raise_soft_limit`] raises a `soft` limit to under `hard`.
pub fn raised_limit(soft: u64, hard: u64) -> u64 {
    if hard == u64::MAX {
        nr_open().unwrap_or(soft).max(soft)
    } else {
        hard.max(soft)
    }
}

/// The soft and hard `RLIMIT_NOFILE`; `u64::MAX` for unlimited.
pub fn nofile() -> std::io::Result<(u64, u64)> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes the struct it is given and nothing else.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok((from_rlim(limit.rlim_cur), from_rlim(limit.rlim_max)))
}

/// `fs.nr_open`: the most descriptors Linux lets one process have.
fn nr_open() -> Option<u64> {
    std::fs::read_to_string("/proc/sys/fs/nr_open")
        .ok()?
        .trim()
        .parse()
        .ok()
}

fn from_rlim(v: libc::rlim_t) -> u64 {
    if v == libc::RLIM_INFINITY {
        return u64::MAX;
    }
    // rlim_t is unsigned 64-bit on Linux and macOS; a signed one elsewhere is never negative.
    #[allow(clippy::useless_conversion, clippy::unnecessary_fallible_conversions)]
    u64::try_from(v).unwrap_or(u64::MAX)
}

fn to_rlim(v: u64) -> libc::rlim_t {
    if v == u64::MAX {
        return libc::RLIM_INFINITY;
    }
    #[allow(clippy::useless_conversion, clippy::unnecessary_fallible_conversions)]
    libc::rlim_t::try_from(v).unwrap_or(libc::RLIM_INFINITY)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    /// The process's descriptors and the lowest free descriptor number now.
    fn probed() -> (Descriptors, u64) {
        let d = Descriptors::of_process();
        let lowest = {
            let dup = d.probe.as_ref().unwrap().try_clone().unwrap();
            u64::try_from(dup.as_raw_fd()).unwrap()
        };
        (d, lowest)
    }

    /// `d`'s probe under another limit, without credits.
    fn with_limit(d: &Descriptors, limit: u64) -> Descriptors {
        Descriptors {
            limit,
            probe: d.probe.as_ref().map(|f| f.try_clone().unwrap()),
            credits: AtomicU32::new(0),
            credits_reserve: AtomicU64::new(0),
            accept_credits: AtomicU32::new(0),
            accept_credits_reserve: AtomicU64::new(0),
        }
    }

    #[test]
    fn the_default_reserve_is_64_or_5_percent() {
        assert_eq!(reserve_for(256, FdReserve::Default), 64);
        assert_eq!(reserve_for(1024, FdReserve::Default), 64);
        assert_eq!(reserve_for(20_000, FdReserve::Default), 100);
        assert_eq!(reserve_for(1_048_576, FdReserve::Default), 5_240);
        assert_eq!(reserve_for(u64::MAX, FdReserve::Default), 0);
        assert_eq!(reserve_for(256, FdReserve::Descriptors(10)), 10);
    }

    #[test]
    fn the_probe_refuses_within_the_reserve_only() {
        let (d, lowest) = probed();
        // A limit far above what this process holds passes; a reserve as large as the limit
        // refuses whatever the other tests hold meanwhile; no reserve checks nothing.
        let roomy = with_limit(&d, lowest + 10_000);
        assert!(roomy.check(FdReserve::Descriptors(64)).is_ok());
        // A changed reserve is probed at once, whatever credits the last probe left.
        assert!(matches!(
            roomy.check(FdReserve::Descriptors(lowest + 10_000)),
            Err(LimitError::FdReserve { .. })
        ));
        assert!(roomy.check(FdReserve::Descriptors(0)).is_ok());
        // A just-accepted connection is closed only within half the reserve: between the
        // two, the handshake is refused with 503 and the connection still answered.
        let near = with_limit(&d, lowest + 1_000);
        // (Margins of hundreds: other tests open and close descriptors meanwhile.)
        let reserve = FdReserve::Descriptors(1_500);
        assert!(near.check(reserve).is_err());
        assert!(near.check_accepted(reserve).is_ok());
        let reserve = FdReserve::Descriptors(5_000);
        assert!(near.check_accepted(reserve).is_err());
    }

    #[test]
    fn far_from_the_limit_most_handshakes_skip_the_probe_and_near_it_none_do() {
        let (d, lowest) = probed();
        let with_room = |room: u64| with_limit(&d, lowest + 1_000 + room);
        let setting = FdReserve::Descriptors(1_000);
        // Plenty of room: one probe, then MAX_SKIPPED_PROBES handshakes without one.
        let far = with_room(100_000);
        far.check(setting).unwrap();
        assert_eq!(far.credits.load(Ordering::Relaxed), MAX_SKIPPED_PROBES);
        for _ in 0..MAX_SKIPPED_PROBES {
            far.check(setting).unwrap();
        }
        assert_eq!(
            far.credits.load(Ordering::Relaxed),
            0,
            "the next one probes"
        );
        // Room for a few: fewer skips, one per ROOM_PER_SKIP descriptors. (Other tests may
        // hold a few descriptors meanwhile: at most as many skips as the room allows.)
        let near = with_room(40);
        if near.check(setting).is_ok() {
            assert!(near.credits.load(Ordering::Relaxed) <= 40 / ROOM_PER_SKIP as u32);
        }
    }

    /// Connections accepted meanwhile (proxy or admin) take credits: after as many of them
    /// as the last probe left credits, the next handshake is probed (and so refused if the
    /// reserve has been reached). Silent admin connections used to leave the credits whole,
    /// and handshakes passed unprobed past the reserve to the limit.
    #[test]
    fn connections_accepted_between_probes_take_credits() {
        let (d, lowest) = probed();
        let setting = FdReserve::Descriptors(1_000);
        let far = with_limit(&d, lowest + 1_000 + 100_000);
        far.check(setting).unwrap();
        assert_eq!(far.credits.load(Ordering::Relaxed), MAX_SKIPPED_PROBES);
        for _ in 0..MAX_SKIPPED_PROBES - 1 {
            far.took_one();
        }
        assert_eq!(far.credits.load(Ordering::Relaxed), 1);
        far.check_accepted(setting).unwrap();
        assert_eq!(far.credits.load(Ordering::Relaxed), 0);
        // More accepts than credits never wrap the count.
        far.took_one();
        assert_eq!(far.credits.load(Ordering::Relaxed), 0);
    }

    /// Two threads take the last credit at once, 20,000 times. (A race: the old
    /// load-then-subtract wrapped the count in about one run of three on two cores.)
    #[test]
    fn handshakes_racing_for_the_last_credit_never_wrap_the_count() {
        let (d, lowest) = probed();
        let setting = FdReserve::Descriptors(1_000);
        let shared = Arc::new(with_limit(&d, lowest + 100_000));
        shared.credits_reserve.store(1_000, Ordering::Relaxed);
        let start = Arc::new(std::sync::Barrier::new(3));
        let racers: Vec<_> = (0..2)
            .map(|_| {
                let (d, start) = (shared.clone(), start.clone());
                std::thread::spawn(move || {
                    for _ in 0..20_000 {
                        start.wait();
                        let _ = d.check(setting);
                        start.wait();
                    }
                })
            })
            .collect();
        for _ in 0..20_000 {
            // One credit left, two handshakes at once.
            shared.credits.store(1, Ordering::Relaxed);
            start.wait();
            start.wait();
            let left = shared.credits.load(Ordering::Relaxed);
            assert!(left <= MAX_SKIPPED_PROBES, "the count wrapped: {left}");
        }
        for r in racers {
            r.join().unwrap();
        }
    }
}
