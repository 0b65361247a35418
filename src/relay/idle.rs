//! When a session may hibernate: nothing has moved either way for the route's
//! `hibernate_after`, nothing is queued for either side, and no closing handshake is under
//! way. Then [`Relay::poll_step`] hands the session back as [`Step::Idle`] and its owner may
//! set it aside without a task (`hibernate.rs`); this file only says when, and until when.

use std::sync::atomic::Ordering;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use tokio::time::Instant;

use super::{At, Leg, Relay, RelayOutcome, Side, State, Turn, instant_from_millis};

/// What one call to [`Relay::poll_step`] came to.
pub enum Step {
    /// The session is over.
    Ended(RelayOutcome),
    /// Quiet for `hibernate_after`, with nothing queued: both sockets have been read to
    /// `Pending`, and the relay holds no timer. `wake_at`: when one of its timers (a ping, a
    /// pong's deadline, the idle or lifetime timer) is due, if any. Polled again (in any task,
    /// once its legs can be read again), the relay goes on where it stopped.
    Idle { wake_at: Option<Instant> },
}

impl<C, B> Relay<C, B>
where
    C: Leg,
    B: Leg,
{
    /// Lets the relay stop as [`Step::Idle`] once it is quiet (off by default: whoever turns it
    /// on must be able to set the session aside and bring it back).
    pub fn may_hibernate(mut self, on: bool) -> Self {
        self.hibernate = on;
        self
    }

    /// Turns hibernation off for good, for an owner that could not set the session aside.
    pub fn stay_awake(&mut self) {
        self.hibernate = false;
    }

    /// Runs the relay: Ready once the session is over, or once it may hibernate.
    pub fn poll_step(&mut self, cx: &mut Context<'_>) -> Poll<Step> {
        if self.done {
            return Poll::Pending;
        }
        Poll::Ready(match ready!(self.run(cx)) {
            Turn::Over(cut) => {
                self.done = true;
                Step::Ended(self.outcome(cut))
            }
            Turn::Idle => {
                // The timer's memory goes with it; the owner wakes the relay at `wake_at`.
                self.timer = None;
                Step::Idle {
                    wake_at: next_wake(&self.st, &self.c, &self.b),
                }
            }
        })
    }

    /// The owner has brought the legs back: the session stays awake for at least its wait
    /// (`wait` in this file) from now. (Their input is not known to the runtime before its next
    /// turn, so until then the relay would find both legs as quiet as when they were set
    /// aside.) `by_input`: input on a leg woke it, which tells how long its quiet spell was
    /// (a timer's or a signal's wake says nothing of the session's traffic), and so whether
    /// its wait was long enough (`learn` in this file).
    pub fn woke(&mut self, by_input: bool) {
        let now = super::millis(Instant::now().into_std());
        if by_input && let Some(after) = self.st.cfg().hibernate_after {
            let heard = self.st.link().counters.last_active.load(Ordering::Relaxed);
            let spell = now.saturating_sub(self.st.last_data.millis().max(heard));
            self.nap = learn(self.nap, after, Duration::from_millis(spell));
        }
        self.woke = u32::try_from(now / 1000 + 1).unwrap_or(u32::MAX);
    }

    /// The two legs.
    pub fn legs(&self) -> (&C, &B) {
        (&self.c.io, &self.b.io)
    }

    /// The two legs, for an owner that sets them aside while the session hibernates and
    /// brings them back before polling it again.
    pub fn legs_mut(&mut self) -> (&mut C, &mut B) {
        (&mut self.c.io, &mut self.b.io)
    }
}

/// How many times a session's wait may double: up to 16 times the route's
/// `hibernate_after`.
const MAX_NAP: u8 = 4;

/// How long a session quiet since its last frame waits before it hibernates: the route's
/// `hibernate_after`, doubled `nap` times. Each session learns its own (see [`learn`]), so
/// that `hibernate_after` can be short (sessions quiet for longer sleep soon) without
/// making the sessions that talk every few seconds pay a wake per message.
pub(super) fn wait(after: Duration, nap: u8) -> Duration {
    after * (1 << nap.min(MAX_NAP))
}

/// The session's next `nap` after input woke it from a quiet spell of `spell` (from the
/// last frame either side sent until the input, its wait included). A wake costs about as
/// much CPU as relaying an echo, and sleeping saves memory for the time slept: a spell
/// shorter than sixteen waits says the session talks too often for its wait, which doubles
/// (up to [`MAX_NAP`] times); a longer one, that it is quiet for long, and the wait halves
/// back toward `hibernate_after`. A session that talks every few seconds thus stops
/// sleeping between its messages after at most four wakes, and one that sends a heartbeat
/// a minute sleeps after `hibernate_after`, as does one whose chatty spell is over.
pub(super) fn learn(nap: u8, after: Duration, spell: Duration) -> u8 {
    if spell < wait(after, nap) * 16 {
        (nap + 1).min(MAX_NAP)
    } else {
        nap.saturating_sub(1)
    }
}

/// When the session may hibernate, if it is quiet: the last time either side was heard from
/// (or the last data message, or the start, or the last wake: `woke`, see [`Relay::woke`])
/// plus its wait (the route's `hibernate_after`, doubled `nap` times: see [`wait`]).
pub(super) fn quiet_until<C: Leg, B: Leg>(
    enabled: bool,
    woke: u32,
    nap: u8,
    st: &State,
    c: &Side<C>,
    b: &Side<B>,
) -> Option<Instant> {
    if !enabled || st.taken_over || st.close_deadline.is_some() || st.fair.is_some() {
        return None;
    }
    if !quiet(c) || !quiet(b) {
        return None;
    }
    let after = wait(st.cfg().hibernate_after?, nap);
    let heard = st.link().counters.last_active.load(Ordering::Relaxed);
    let heard = Instant::from_std(instant_from_millis(heard));
    let woke = Instant::from_std(instant_from_millis(u64::from(woke) * 1000));
    Some(st.last_data.instant().max(heard).max(woke) + after)
}

/// Nothing queued for or held from this side, no closing handshake begun with it, and a leg
/// that can be set aside.
fn quiet<IO: Leg>(s: &Side<IO>) -> bool {
    s.io.can_hibernate()
        && s.pre.is_none()
        && !s.output_pending()
        && s.inject.is_none()
        && !s.read_eof
        && !s.write_shut
        && s.close_from.is_none()
        && !s.close_to
        && !s.deferred_close
        && !s.finish_frame
        && s.passing
}

/// The earliest of a quiet session's timers (what `timers` would arm, with no closing
/// handshake and no fair shares, which keep a session awake).
fn next_wake<C, B>(st: &State, c: &Side<C>, b: &Side<B>) -> Option<Instant> {
    let cfg = st.cfg();
    let idle = cfg.idle_timeout.map(|d| st.last_data + d);
    let lifetime = st.lifetime_end;
    let pings = cfg
        .ping_interval
        .map(|interval| ping_due(c, interval).min(ping_due(b, interval)));
    [lifetime, idle, pings]
        .into_iter()
        .flatten()
        .min()
        .map(At::instant)
}

/// When the side must have answered the proxy's ping, or else is due one.
fn ping_due<IO>(s: &Side<IO>, interval: Duration) -> At {
    if s.awaiting_pong {
        s.heard
    } else {
        s.heard + interval
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const AFTER: Duration = Duration::from_secs(1);

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    /// Spells shorter than sixteen waits double the wait, up to sixteen times
    /// `hibernate_after`; longer ones halve it back, down to `hibernate_after`.
    #[test]
    fn a_sessions_wait_follows_its_quiet_spells() {
        assert_eq!(wait(AFTER, 0), AFTER);
        assert_eq!(wait(AFTER, MAX_NAP), secs(16));
        assert_eq!(wait(AFTER, u8::MAX), secs(16), "capped, never overflowing");
        // A message every 5 s: 1 s, 2 s, 4 s, 8 s (past the gap: it stays awake from then on).
        let mut nap = 0;
        for expect in [1, 2, 3] {
            nap = learn(nap, AFTER, secs(5));
            assert_eq!(nap, expect);
        }
        assert_eq!(wait(AFTER, nap), secs(8));
        // Capped at sixteen times.
        assert_eq!(learn(MAX_NAP, AFTER, secs(5)), MAX_NAP);
        // A heartbeat a minute: it sleeps after `hibernate_after`, and stays at that.
        assert_eq!(learn(0, AFTER, secs(60)), 0);
        assert_eq!(learn(0, AFTER, secs(16)), 0);
        assert_eq!(learn(0, AFTER, Duration::from_millis(15_999)), 1);
        // A chatty spell over: the wait halves back, step by step.
        assert_eq!(learn(MAX_NAP, AFTER, secs(256)), MAX_NAP - 1);
        assert_eq!(learn(MAX_NAP, AFTER, secs(255)), MAX_NAP);
        assert_eq!(learn(1, AFTER, secs(3600)), 0);
    }
}
