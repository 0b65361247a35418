//! Hibernation: quiet sessions without a task.
//!
//! Most WebSocket sessions are quiet most of the time (chat, presence, notifications), and a
//! waiting session costs far more than its state: a tokio task (640 bytes with its relay) and
//! one registration with the runtime's I/O driver per socket (256 bytes each, cache-padded).
//! A session that has been quiet for its route's `hibernate_after` gives all three up: its
//! relay (`relay/idle.rs` says when) is boxed, its two sockets leave the runtime and are
//! watched by the lot of the worker it ran on, one `epoll` instance per worker registered
//! with the runtime as a single descriptor, and its task ends. Input on either socket (or its
//! close), one of its timers coming due, or a signal (a drain, a reload, an operator's
//! close) wakes it: the lot hands it back to a new task on the same worker, its sockets are
//! registered again, and the relay goes on where it stopped. Nothing is read while it
//! sleeps: the bytes wait in the kernel, as they would for a waiting task.
//!
//! The cost is paid at most once per quiet spell: eight `epoll_ctl` calls (each socket out of
//! the runtime and into the lot, then back), the lot's `epoll_wait`, a task and the sockets'
//! registrations, about 20 µs of CPU (`docs/benchmarks.md`, "Hibernation"). A TLS leg hibernates with its TLS state
//! (which stays in its box: most of a `wss://` session's memory) once it holds nothing in
//! flight; WebSockets over HTTP/2 do not hibernate.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Wake, Waker};
use std::thread::ThreadId;

use atomic_waker::AtomicWaker;
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};

/// A hibernating session, as its lot sees it.
pub trait Sleeper: Send + 'static {
    /// The sockets whose input (or close) wakes it.
    fn fds(&self) -> [RawFd; 2];
    /// Makes `waker` the one the outside's signals wake (the session's link).
    fn listen(&self, waker: &Waker);
    /// A signal (a close request, a drain) is waiting for it.
    fn signalled(&self) -> bool;
    /// Runs it again, in a task of its own on the current worker. `by_input`: input or a
    /// close on one of its sockets woke it (not a timer or a signal).
    fn wake(self: Box<Self>, by_input: bool);
}

/// Every worker's lot, by its thread: a session hibernates where it ran, and wakes there.
#[derive(Default)]
pub struct Lots(Mutex<HashMap<ThreadId, Arc<Lot>>>);

impl std::fmt::Debug for Lots {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lots")
            .field("asleep", &self.asleep())
            .finish()
    }
}

impl Lots {
    /// Sets `sleeper` aside in this worker's lot until input, `wake_at` or a signal. Its
    /// sockets must be out of the runtime already. `Err` hands it back when it cannot sleep
    /// (a signal came first, or the lot failed): its owner goes on running it.
    pub fn park<S: Sleeper>(
        &self,
        sleeper: Box<S>,
        wake_at: Option<Instant>,
    ) -> Result<(), Box<S>> {
        let lot = lock(&self.0)
            .entry(std::thread::current().id())
            .or_default()
            .clone();
        lot.park(sleeper, wake_at)
    }

    /// Sessions hibernating now, in every lot.
    pub fn asleep(&self) -> usize {
        lock(&self.0).values().map(|l| lock(&l.inner).asleep).sum()
    }

    /// How many times sessions have been set aside, and woken by each cause, in every lot
    /// since the start.
    pub fn counts(&self) -> Counts {
        lock(&self.0)
            .values()
            .fold(Counts::default(), |sum, l| sum.plus(&lock(&l.inner).counts))
    }
}

/// What the lots have done since the start: `wsgate_sessions_hibernated_total` and
/// `wsgate_sessions_woken_total` (a wake costs about what relaying an echo does, so their
/// rate against the traffic's says whether a route's `hibernate_after` is too short).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Counts {
    /// Sessions set aside.
    pub slept: u64,
    /// Woken by input or a close on one of their sockets.
    pub by_input: u64,
    /// Woken for one of their timers (a ping, a pong's deadline, the idle or lifetime timer).
    pub by_timer: u64,
    /// Woken by a signal (a drain, a reload's close, an operator's close).
    pub by_signal: u64,
}

/// Why a sleeper woke, for [`Counts`].
#[derive(Clone, Copy)]
enum Cause {
    Input,
    Timer,
    Signal,
}

impl Counts {
    fn woke(&mut self, cause: Cause) {
        *match cause {
            Cause::Input => &mut self.by_input,
            Cause::Timer => &mut self.by_timer,
            Cause::Signal => &mut self.by_signal,
        } += 1;
    }

    fn plus(self, o: &Counts) -> Counts {
        Counts {
            slept: self.slept + o.slept,
            by_input: self.by_input + o.by_input,
            by_timer: self.by_timer + o.by_timer,
            by_signal: self.by_signal + o.by_signal,
        }
    }
}

/// One worker's hibernating sessions.
#[derive(Default)]
pub struct Lot {
    inner: Mutex<Inner>,
    poke: Arc<Poke>,
}

/// The waker a hibernating session's link holds: a signal sets `poked` and wakes the lot's
/// task, which then asks each sleeper whether the signal was for it. (Signals are rare: a
/// drain, a reload, an operator's close; a scan of the lot is cheap next to what follows.)
#[derive(Default)]
struct Poke {
    poked: AtomicBool,
    driver: AtomicWaker,
}

impl Wake for Poke {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.poked.store(true, Ordering::Release);
        self.driver.wake();
    }
}

#[derive(Default)]
struct Inner {
    /// The lot's `epoll` instance (made at the first park, on the worker's runtime).
    epoll: Option<AsyncFd<OwnedFd>>,
    slots: Vec<Slot>,
    free: Vec<u32>,
    /// When sleepers' timers are due: (when, slot, generation). A sleeper woken before its
    /// time leaves its entry behind, which is dropped when it comes up.
    due: BinaryHeap<Reverse<(Instant, u32, u32)>>,
    asleep: usize,
    counts: Counts,
    /// The lot's task is running (it ends when the lot is empty).
    driving: bool,
    timer: Option<Pin<Box<Sleep>>>,
}

#[derive(Default)]
struct Slot {
    /// Bumped at every wake, so that an event or a deadline for an earlier sleeper in the
    /// same slot is told apart.
    generation: u32,
    sleeper: Option<Box<dyn Sleeper>>,
}

/// At most this many events are taken from the lot's `epoll` per call.
const EVENTS: usize = 64;

impl Lot {
    fn park<S: Sleeper>(
        self: &Arc<Self>,
        sleeper: Box<S>,
        wake_at: Option<Instant>,
    ) -> Result<(), Box<S>> {
        let mut inner = lock(&self.inner);
        if inner.epoll.is_none() {
            match new_epoll() {
                Ok(fd) => inner.epoll = Some(fd),
                Err(e) => {
                    tracing::warn!(error = %e, "hibernation unavailable: cannot watch sockets");
                    return Err(sleeper);
                }
            }
        }
        // Listen before looking: a signal set after the look wakes the lot.
        sleeper.listen(&Waker::from(self.poke.clone()));
        if sleeper.signalled() {
            return Err(sleeper);
        }
        let slot = match inner.free.pop() {
            Some(i) => i,
            None => {
                inner.slots.push(Slot::default());
                (inner.slots.len() - 1) as u32
            }
        };
        let generation = inner.slots[slot as usize].generation;
        let epoll = inner.epoll.as_ref().map_or(-1, |e| e.get_ref().as_raw_fd());
        let token = u64::from(generation) << 32 | u64::from(slot);
        let fds = sleeper.fds();
        for (i, &fd) in fds.iter().enumerate() {
            if let Err(e) = ctl(epoll, libc::EPOLL_CTL_ADD, fd, token) {
                tracing::debug!(error = %e, "hibernation: cannot watch a socket");
                for &added in &fds[..i] {
                    let _ = ctl(epoll, libc::EPOLL_CTL_DEL, added, 0);
                }
                inner.free.push(slot);
                return Err(sleeper);
            }
        }
        inner.slots[slot as usize].sleeper = Some(sleeper);
        inner.asleep += 1;
        inner.counts.slept += 1;
        if let Some(at) = wake_at {
            inner.due.push(Reverse((at, slot, generation)));
            inner.shed_stale_deadlines();
            if inner.timer.as_ref().is_some_and(|t| at < t.deadline()) {
                // The lot's timer is set for later: its task re-arms it.
                self.poke.driver.wake();
            }
        }
        if !inner.driving {
            inner.driving = true;
            let lot = self.clone();
            tokio::spawn(async move { std::future::poll_fn(|cx| lot.poll_drive(cx)).await });
        }
        Ok(())
    }

    /// The lot's task: wakes the sleepers whose sockets have input, whose timers are due, or
    /// whom a signal concerns. Ends when the lot is empty (the next park starts it again).
    fn poll_drive(&self, cx: &mut Context<'_>) -> Poll<()> {
        self.poke.driver.register(cx.waker());
        let mut woken: Vec<(Box<dyn Sleeper>, Cause)> = Vec::new();
        let mut inner = lock(&self.inner);
        loop {
            if self.poke.poked.swap(false, Ordering::AcqRel) {
                for i in 0..inner.slots.len() {
                    if inner.slots[i]
                        .sleeper
                        .as_ref()
                        .is_some_and(|s| s.signalled())
                    {
                        woken.extend(inner.take(i as u32, None, Cause::Signal));
                    }
                }
            }
            // Until the runtime says the lot's epoll has nothing more (then it wakes this task
            // when it has).
            let mut tokens = [0u64; EVENTS];
            let mut n = None;
            if let Some(epoll) = &inner.epoll {
                match epoll.poll_read_ready(cx) {
                    Poll::Ready(Ok(mut ready)) => match wait(epoll.get_ref(), &mut tokens) {
                        Ok(got) => {
                            if got < EVENTS {
                                ready.clear_ready();
                            }
                            n = Some(got);
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "hibernation: epoll_wait failed");
                            ready.clear_ready();
                        }
                    },
                    Poll::Ready(Err(e)) => {
                        tracing::warn!(error = %e, "hibernation: the lot's epoll failed");
                    }
                    Poll::Pending => {}
                }
            }
            if let Some(n) = n {
                for &token in &tokens[..n] {
                    let generation = Some((token >> 32) as u32);
                    woken.extend(inner.take(token as u32, generation, Cause::Input));
                }
                continue;
            }
            let now = Instant::now();
            while let Some(&Reverse((at, slot, generation))) = inner.due.peek() {
                if at > now {
                    break;
                }
                inner.due.pop();
                woken.extend(inner.take(slot, Some(generation), Cause::Timer));
            }
            match inner.due.peek().map(|r| r.0.0) {
                Some(at) => {
                    let timer = inner
                        .timer
                        .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(at)));
                    if timer.deadline() != at {
                        timer.as_mut().reset(at);
                    }
                    if timer.as_mut().poll(cx).is_ready() {
                        continue;
                    }
                }
                None => inner.timer = None,
            }
            break;
        }
        let empty = inner.asleep == 0;
        if empty {
            inner.driving = false;
            inner.timer = None;
        }
        drop(inner);
        for (sleeper, cause) in woken {
            sleeper.wake(matches!(cause, Cause::Input));
        }
        if empty {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }
}

impl Inner {
    /// Drops the deadlines of sleepers that have woken, once they outnumber the live ones:
    /// a session woken by input leaves its deadline in the heap until it comes up, and a
    /// session that sleeps and wakes many times before a far deadline (a lifetime of a day)
    /// would otherwise pile them up. Linear, and rare enough to cost nothing per park.
    fn shed_stale_deadlines(&mut self) {
        if self.due.len() <= 2 * self.asleep + 64 {
            return;
        }
        let slots = &self.slots;
        self.due.retain(|Reverse((_, slot, generation))| {
            slots
                .get(*slot as usize)
                .is_some_and(|s| s.generation == *generation && s.sleeper.is_some())
        });
    }

    /// Takes the sleeper in `slot` out of the lot (if it is still the one of `generation`),
    /// its sockets out of the lot's `epoll`, and counts the wake by its `cause`.
    fn take(
        &mut self,
        slot: u32,
        generation: Option<u32>,
        cause: Cause,
    ) -> Option<(Box<dyn Sleeper>, Cause)> {
        let epoll = self.epoll.as_ref().map_or(-1, |e| e.get_ref().as_raw_fd());
        let s = self.slots.get_mut(slot as usize)?;
        if generation.is_some_and(|g| g != s.generation) {
            return None;
        }
        let sleeper = s.sleeper.take()?;
        s.generation = s.generation.wrapping_add(1);
        for fd in sleeper.fds() {
            let _ = ctl(epoll, libc::EPOLL_CTL_DEL, fd, 0);
        }
        self.free.push(slot);
        self.asleep -= 1;
        self.counts.woke(cause);
        Some((sleeper, cause))
    }
}

/// A TCP socket that can leave the runtime while its session hibernates: in the runtime
/// (`Awake`), or its descriptor alone (`Asleep`; `None` only if it could not be taken out or
/// brought back: then it is closed, and reads and writes fail). A plain leg is one
/// (`UpgradedIo::Tcp`), and a TLS stream holds one under its TLS state (`tls_io`).
pub enum Sock {
    Awake(TcpStream),
    Asleep(Option<std::net::TcpStream>),
}

impl From<TcpStream> for Sock {
    fn from(tcp: TcpStream) -> Sock {
        Sock::Awake(tcp)
    }
}

impl Sock {
    /// Takes the socket out of the runtime (tokio forgets it and its wakers); its
    /// descriptor, for the lot to watch.
    pub fn sleep(&mut self) -> io::Result<RawFd> {
        let Sock::Awake(_) = self else {
            return Err(io::ErrorKind::Unsupported.into());
        };
        let Sock::Awake(tcp) = std::mem::replace(self, Sock::Asleep(None)) else {
            unreachable!("checked above");
        };
        let std = tcp.into_std()?;
        let fd = std.as_raw_fd();
        *self = Sock::Asleep(Some(std));
        Ok(fd)
    }

    /// Brings a socket set aside by [`sleep`](Self::sleep) back into the current runtime.
    pub fn wake(&mut self) -> io::Result<()> {
        let Sock::Asleep(std) = self else {
            return Ok(());
        };
        let std = std.take().ok_or(io::ErrorKind::NotConnected)?;
        *self = Sock::Awake(TcpStream::from_std(std)?);
        Ok(())
    }

    pub fn is_awake(&self) -> bool {
        matches!(self, Sock::Awake(_))
    }

    /// The socket, while it is in the runtime.
    pub fn tcp(&self) -> Option<&TcpStream> {
        match self {
            Sock::Awake(tcp) => Some(tcp),
            Sock::Asleep(_) => None,
        }
    }

    pub fn into_awake(self) -> Option<TcpStream> {
        match self {
            Sock::Awake(tcp) => Some(tcp),
            Sock::Asleep(_) => None,
        }
    }

    /// The descriptor of a socket out of the runtime.
    pub fn asleep_fd(&self) -> Option<RawFd> {
        match self {
            Sock::Asleep(Some(s)) => Some(s.as_raw_fd()),
            _ => None,
        }
    }
}

/// What a read or write of a socket that is asleep gets (the relay polls only awake legs; a
/// socket that could not be brought back stays asleep, and its session ends with this).
fn asleep() -> io::Error {
    io::Error::new(io::ErrorKind::NotConnected, "socket lost while hibernating")
}

impl AsyncRead for Sock {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Sock::Awake(tcp) => Pin::new(tcp).poll_read(cx, buf),
            Sock::Asleep(_) => Poll::Ready(Err(asleep())),
        }
    }
}

impl AsyncWrite for Sock {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Sock::Awake(tcp) => Pin::new(tcp).poll_write(cx, buf),
            Sock::Asleep(_) => Poll::Ready(Err(asleep())),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Sock::Awake(tcp) => Pin::new(tcp).poll_flush(cx),
            Sock::Asleep(_) => Poll::Ready(Err(asleep())),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Sock::Awake(tcp) => Pin::new(tcp).poll_shutdown(cx),
            Sock::Asleep(_) => Poll::Ready(Err(asleep())),
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A new `epoll` instance, registered with the current runtime for readability (it is
/// readable while any socket it watches has an event).
fn new_epoll() -> io::Result<AsyncFd<OwnedFd>> {
    // SAFETY: epoll_create1 takes no pointers; a non-negative result is a new descriptor
    // that nothing else owns.
    let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: see above: `fd` is open and owned by no one else.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: the `OwnedFd` keeps its descriptor open, and the same, for as long as the
    // `AsyncFd` owns it.
    Ok(unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE) }?)
}

/// `epoll_ctl(epoll, op, fd)`, watching for input, the peer's close and errors, level
/// triggered: input already waiting when a socket is added makes the lot readable at once.
fn ctl(epoll: RawFd, op: libc::c_int, fd: RawFd, token: u64) -> io::Result<()> {
    let mut event = libc::epoll_event {
        events: (libc::EPOLLIN | libc::EPOLLRDHUP) as u32,
        u64: token,
    };
    // SAFETY: `event` is a valid epoll_event for the call's duration; the kernel checks
    // both descriptors.
    if unsafe { libc::epoll_ctl(epoll, op, fd, &mut event) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The tokens of the events waiting on `epoll`, without blocking.
fn wait(epoll: &OwnedFd, tokens: &mut [u64; EVENTS]) -> io::Result<usize> {
    let mut events = [libc::epoll_event { events: 0, u64: 0 }; EVENTS];
    loop {
        // SAFETY: `events` has room for EVENTS entries; a timeout of 0 does not block.
        let n = unsafe {
            libc::epoll_wait(
                epoll.as_raw_fd(),
                events.as_mut_ptr(),
                EVENTS as libc::c_int,
                0,
            )
        };
        if n >= 0 {
            let n = n as usize;
            for (t, e) in tokens.iter_mut().zip(&events[..n]) {
                *t = e.u64;
            }
            return Ok(n);
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::os::unix::net::UnixStream;
    use std::sync::atomic::AtomicBool;
    use std::time::Duration;

    use tokio::sync::mpsc;

    use super::*;

    /// A sleeper over a socket pair's near ends: it says why it woke on `woke`.
    struct Fake {
        ends: [UnixStream; 2],
        signal: Arc<AtomicBool>,
        listener: Listener,
        woke: mpsc::UnboundedSender<&'static str>,
    }

    /// Where a fake sleeper keeps the waker the lot gave it (its link's, in a session).
    type Listener = Arc<Mutex<Option<Waker>>>;

    impl Sleeper for Fake {
        fn fds(&self) -> [RawFd; 2] {
            [self.ends[0].as_raw_fd(), self.ends[1].as_raw_fd()]
        }
        fn listen(&self, waker: &Waker) {
            *lock(&self.listener) = Some(waker.clone());
        }
        fn signalled(&self) -> bool {
            self.signal.load(Ordering::Acquire)
        }
        fn wake(self: Box<Self>, _by_input: bool) {
            let _ = self.woke.send("woke");
        }
    }

    /// A fake sleeper, and the far ends of its sockets, its signal and its link's waker.
    fn fake(
        woke: &mpsc::UnboundedSender<&'static str>,
    ) -> (Box<Fake>, [UnixStream; 2], Arc<AtomicBool>, Listener) {
        let (a, far_a) = UnixStream::pair().unwrap();
        let (b, far_b) = UnixStream::pair().unwrap();
        let signal = Arc::new(AtomicBool::new(false));
        let listener = Arc::new(Mutex::new(None));
        let f = Fake {
            ends: [a, b],
            signal: signal.clone(),
            listener: listener.clone(),
            woke: woke.clone(),
        };
        (Box::new(f), [far_a, far_b], signal, listener)
    }

    async fn woken(rx: &mut mpsc::UnboundedReceiver<&'static str>) {
        tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .expect("not woken")
            .unwrap();
    }

    /// Input on either socket, the deadline, and a signal through the link's waker each
    /// wake a sleeper, once; the lot's task ends when the lot is empty.
    #[tokio::test]
    async fn input_a_deadline_or_a_signal_wakes_a_sleeper() {
        let lots = Lots::default();
        let (tx, mut rx) = mpsc::unbounded_channel();

        let (s, mut far, _, _) = fake(&tx);
        lots.park(s, None).ok().unwrap();
        assert_eq!(lots.asleep(), 1);
        far[1].write_all(b"x").unwrap();
        woken(&mut rx).await;
        assert_eq!(lots.asleep(), 0);
        let mut counts = Counts {
            slept: 1,
            by_input: 1,
            ..Counts::default()
        };
        assert_eq!(lots.counts(), counts);

        let (s, _far, _, _) = fake(&tx);
        let at = Instant::now() + Duration::from_millis(50);
        lots.park(s, Some(at)).ok().unwrap();
        woken(&mut rx).await;
        assert!(Instant::now() >= at);
        counts.slept += 1;
        counts.by_timer += 1;
        assert_eq!(lots.counts(), counts);

        let (s, _far, signal, listener) = fake(&tx);
        lots.park(s, None).ok().unwrap();
        signal.store(true, Ordering::Release);
        lock(&listener).take().expect("the lot listens").wake();
        woken(&mut rx).await;
        assert_eq!(lots.asleep(), 0);
        assert!(rx.try_recv().is_err(), "woken twice");
        counts.slept += 1;
        counts.by_signal += 1;
        assert_eq!(lots.counts(), counts);
    }

    /// A sleeper whose signal is already set is handed back, not parked.
    #[tokio::test]
    async fn a_sleeper_already_signalled_is_handed_back() {
        let lots = Lots::default();
        let (tx, _rx) = mpsc::unbounded_channel();
        let (s, _far, signal, _) = fake(&tx);
        signal.store(true, Ordering::Release);
        assert!(lots.park(s, None).is_err());
        assert_eq!(lots.asleep(), 0);
        assert_eq!(lots.counts(), Counts::default(), "counted as a sleep");
    }

    /// Sleepers woken by input before a far deadline do not pile their deadlines up.
    #[tokio::test]
    async fn deadlines_of_woken_sleepers_are_shed() {
        let lots = Lots::default();
        let (tx, mut rx) = mpsc::unbounded_channel();
        let far_off = Instant::now() + Duration::from_secs(86_400);
        for _ in 0..500 {
            let (s, mut far, _, _) = fake(&tx);
            lots.park(s, Some(far_off)).ok().unwrap();
            far[0].write_all(b"x").unwrap();
            woken(&mut rx).await;
        }
        let lot = lock(&lots.0).values().next().unwrap().clone();
        let due = lock(&lot.inner).due.len();
        assert!(due <= 64 + 1, "{due} deadlines kept for no sleeper");
    }
}
