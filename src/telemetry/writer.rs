//! The log's writer: records are appended to a buffer in memory, and a thread of its own
//! writes the buffer out in batches.
//!
//! Why not a channel to a writer thread (what `tracing-appender` does): a channel wakes its
//! receiver for every record. At a few thousand sessions a second that is a futex wake, a
//! context switch, a `write(2)` and the receiver's spin (`sched_yield`) per access record:
//! measured 6 to 13 syscalls per session, a third of all the syscalls a session's open and close
//! cost (docs/benchmarks.md, "Syscalls"). Here a record costs the task that logs it a lock and
//! a copy; the writer thread is woken only when a record lands in an empty buffer, then waits
//! [`LINGER`] so that the records of the next few milliseconds go out in the same write.
//!
//! Lossless: when the writer falls behind (a blocked stderr) and `MAX_PENDING` (8 MiB) bytes wait,
//! loggers wait for room rather than drop records.

use std::io::Write;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

/// How long the writer thread lets records gather after the first one before it writes them:
/// a record reaches stderr within this long (plus the write), and a busy proxy writes its log at
/// most about 100 times a second, however many records it makes.
pub const LINGER: Duration = Duration::from_millis(10);

/// Bytes that may wait for the writer before loggers wait for room.
const MAX_PENDING: usize = 8 * 1024 * 1024;

/// What the loggers and the writer thread share.
struct Shared {
    state: Mutex<State>,
    /// The writer waits here for records (or the end).
    wake: Condvar,
    /// Loggers wait here for room when [`MAX_PENDING`] bytes are waiting.
    room: Condvar,
}

#[derive(Default)]
struct State {
    pending: Vec<u8>,
    /// The writer thread is asleep until told there is something to write; a logger that
    /// makes the buffer non-empty wakes it. (Otherwise it is writing or lingering, and will
    /// take what is there without being told: no wake, no syscall.)
    idle: bool,
    /// The guard was dropped: write what is left and stop.
    closing: bool,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A logger that panicked mid-copy leaves at worst a partial line: keep logging.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A [`tracing_subscriber::fmt::MakeWriter`]: each record is one `write_all` of its formatted
/// line, appended to the shared buffer.
#[derive(Clone)]
pub struct BatchWriter {
    shared: Arc<Shared>,
}

/// Keeps the writer thread; dropping it writes what is left and waits for the thread.
#[must_use = "dropping the guard stops the log writer"]
pub struct WriterGuard {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

/// Starts the writer thread, writing to `out`.
pub fn spawn(out: impl Write + Send + 'static) -> (BatchWriter, WriterGuard) {
    let shared = Arc::new(Shared {
        state: Mutex::new(State::default()),
        wake: Condvar::new(),
        room: Condvar::new(),
    });
    let thread = {
        let shared = shared.clone();
        std::thread::Builder::new()
            .name("wsgate-log".into())
            .spawn(move || run(&shared, out))
            .expect("cannot start the log writer thread")
    };
    (
        BatchWriter {
            shared: shared.clone(),
        },
        WriterGuard {
            shared,
            thread: Some(thread),
        },
    )
}

/// The writer thread: waits for records, lingers, swaps the buffer out and writes it.
fn run(shared: &Shared, mut out: impl Write) {
    let mut batch = Vec::new();
    loop {
        {
            let mut st = shared.lock();
            while st.pending.is_empty() && !st.closing {
                st.idle = true;
                st = shared.wake.wait(st).unwrap_or_else(PoisonError::into_inner);
            }
            st.idle = false;
            if !st.closing {
                // Let the records of the next few milliseconds join this write. Loggers do
                // not wake us meanwhile (`idle` is false), so this is one sleep.
                drop(st);
                std::thread::sleep(LINGER);
                st = shared.lock();
            }
            let closing = st.closing;
            std::mem::swap(&mut batch, &mut st.pending);
            drop(st);
            shared.room.notify_all();
            if batch.is_empty() && closing {
                let _ = out.flush();
                return;
            }
        }
        // A failed write (stderr closed) drops the batch: there is nowhere else to put it.
        let _ = out.write_all(&batch);
        let _ = out.flush();
        batch.clear();
        // A burst's buffer is not kept for ever.
        if batch.capacity() > 1024 * 1024 {
            batch = Vec::new();
        }
    }
}

impl BatchWriter {
    fn append(&self, bytes: &[u8]) {
        let mut st = self.shared.lock();
        while st.pending.len() >= MAX_PENDING && !st.closing {
            st = self
                .shared
                .room
                .wait(st)
                .unwrap_or_else(PoisonError::into_inner);
        }
        st.pending.extend_from_slice(bytes);
        if std::mem::take(&mut st.idle) {
            drop(st);
            self.shared.wake.notify_one();
        }
    }
}

impl Write for BatchWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.append(buf);
        Ok(buf.len())
    }

    fn write_all(&mut self, buf: &[u8]) -> std::io::Result<()> {
        self.append(buf);
        Ok(())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for BatchWriter {
    type Writer = BatchWriter;

    fn make_writer(&'a self) -> BatchWriter {
        self.clone()
    }
}

impl Drop for WriterGuard {
    fn drop(&mut self) {
        self.shared.lock().closing = true;
        self.shared.wake.notify_one();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A `Write` that hands each write to a channel.
    struct Sink(std::sync::mpsc::Sender<Vec<u8>>);

    impl Write for Sink {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            let _ = self.0.send(buf.to_vec());
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn records_arrive_whole_in_order_and_batched() {
        let (tx, rx) = std::sync::mpsc::channel();
        let (writer, guard) = spawn(Sink(tx));
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let mut w = writer.clone();
                std::thread::spawn(move || {
                    for i in 0..1000 {
                        w.write_all(format!("{t} {i}\n").as_bytes()).unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        drop(guard);
        let writes: Vec<Vec<u8>> = rx.iter().collect();
        let text = String::from_utf8(writes.concat()).unwrap();
        let mut next = [0; 4];
        for line in text.lines() {
            let (t, i) = line.split_once(' ').unwrap();
            let (t, i): (usize, usize) = (t.parse().unwrap(), i.parse().unwrap());
            assert_eq!(i, next[t], "thread {t}'s records out of order or lost");
            next[t] += 1;
        }
        assert_eq!(next, [1000; 4], "every record written");
        assert!(
            writes.len() < 4000,
            "records are written in batches, not one write each ({} writes)",
            writes.len()
        );
    }

    #[test]
    fn a_record_is_written_without_the_guard_being_dropped() {
        let (tx, rx) = std::sync::mpsc::channel();
        let (mut writer, _guard) = spawn(Sink(tx));
        writer.write_all(b"hello\n").unwrap();
        let got = rx.recv_timeout(Duration::from_secs(10)).unwrap();
        assert_eq!(got, b"hello\n");
    }
}
