//! Logging: `tracing` with `RUST_LOG` filtering, as text or JSON lines (`json.rs`), the
//! access log (`access.rs`), the ids that correlate a request's records (`correlation.rs`), the
//! per-reason rate limit of refusal records (`limited.rs`), and the records' timestamp
//! (`time.rs`).

pub mod access;
pub mod correlation;
pub mod json;
pub mod limited;
pub mod text;
pub mod time;
pub mod writer;

pub use json::list;

use std::sync::atomic::{AtomicU32, Ordering};

use tracing_subscriber::EnvFilter;

use crate::outcome::Outcome;

/// This process's id, once its lines must say whose they are (0 until then): the two
/// processes of a binary upgrade write to one stderr (one journal stream, which systemd
/// attributes to the first), and an operator could not tell their lines apart.
static PID: AtomicU32 = AtomicU32::new(0);

/// Set in a successor's environment by the process that starts it (SIGUSR2): its lines carry
/// its pid from the first.
pub const PID_ENV: &str = "WSGATE_LOG_PID";

/// From now on every log line carries this process's `pid`.
pub fn show_pid() {
    PID.store(std::process::id(), Ordering::Relaxed);
}

/// The pid a line carries, if lines carry one ([`show_pid`]).
pub(crate) fn shown_pid() -> Option<u32> {
    Some(PID.load(Ordering::Relaxed)).filter(|&p| p != 0)
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line, for log shippers.
    Json,
}

/// `info`, but rustls's own lines from `error` only: its warnings are about what a peer sent
/// (an IP address as SNI, an odd extension), one line per handshake, unlimited, so anyone
/// could flood the log with them (100 ClientHellos, 100 lines); wsgate records a failed
/// handshake itself, under the refusals' rate limit.
pub const DEFAULT_FILTER: &str = "info,rustls=error";

/// Installs the global subscriber. `RUST_LOG` overrides the default filter
/// ([`DEFAULT_FILTER`]: startup, access log, warnings).
///
/// The log goes to stderr through a thread of its own (`writer.rs`): a record costs the task
/// that writes it a copy into a buffer, never a `write(2)` (nor a wait on a slow terminal or
/// journald), and the writer thread writes what gathered every few milliseconds in one write.
/// Lossless: when 8 MiB wait, loggers wait for room. Keep the returned guard for as long as
/// the process logs: dropping it writes what is left.
#[must_use = "dropping the guard stops the log writer"]
pub fn init(format: LogFormat) -> writer::WriterGuard {
    if std::env::var_os(PID_ENV).is_some() {
        show_pid();
    }
    let (filter, rejected) = filter_from(std::env::var_os("RUST_LOG"));
    // No directive parsed: the default filter is the one in force.
    let defaulted = filter.is_none();
    let filter = filter.unwrap_or_else(|| EnvFilter::new(DEFAULT_FILTER));
    // Colours only on a terminal: log files and collectors get plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr())
        && std::env::var_os("NO_COLOR").is_none();
    let (writer, guard) = writer::spawn(std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(writer);
    let result = match format {
        LogFormat::Text => builder
            .fmt_fields(text::TextFields)
            .event_format(text::TextFormat::new(time::LogTime))
            .try_init(),
        // wsgate's own JSON format: tracing-subscriber's writes lists as strings.
        LogFormat::Json => builder.event_format(json::JsonFormat).try_init(),
    };
    // A second init (tests, embedding) keeps the first subscriber.
    let _ = result;
    for (directive, error) in rejected {
        // At `error` where what is left filters warnings out (`RUST_LOG=error,x=debg`).
        if tracing::enabled!(tracing::Level::WARN) {
            if defaulted {
                tracing::warn!(
                    directive,
                    error,
                    "RUST_LOG: this directive does not parse and is ignored (none left: the default applies, {DEFAULT_FILTER})"
                );
            } else {
                tracing::warn!(
                    directive,
                    error,
                    "RUST_LOG: this directive does not parse and is ignored (the others apply)"
                );
            }
        } else {
            tracing::error!(
                directive,
                error,
                "RUST_LOG: this directive does not parse and is ignored (the others apply)"
            );
        }
    }
    guard
}

/// The filter `RUST_LOG` (`var`) asks for, [`DEFAULT_FILTER`] where it is unset, blank or
/// has no directive that parses; and each directive that does not parse, with why.
/// (`EnvFilter::try_from_default_env` refuses the whole variable for one bad directive, and
/// the default then replaced it without a word: `RUST_LOG=wsgate=debg` logged at `info`.)
/// `RUST_LOG`'s filter (`None`: no directive in it parsed, and the default applies) and the
/// directives that did not parse, with why.
fn filter_from(var: Option<std::ffi::OsString>) -> (Option<EnvFilter>, Vec<(String, String)>) {
    let mut rejected = Vec::new();
    let mut directives = Vec::new();
    match var.map(std::ffi::OsString::into_string) {
        None => {}
        Some(Err(raw)) => {
            rejected.push((raw.to_string_lossy().into_owned(), "not UTF-8".to_owned()))
        }
        Some(Ok(text)) => {
            // As EnvFilter splits it.
            for d in text.split(',').map(str::trim).filter(|d| !d.is_empty()) {
                match d.parse::<tracing_subscriber::filter::Directive>() {
                    Ok(parsed) => directives.push(parsed),
                    Err(e) => rejected.push((d.to_owned(), e.to_string())),
                }
            }
        }
    }
    if directives.is_empty() {
        return (None, rejected);
    }
    let filter = directives
        .into_iter()
        .fold(EnvFilter::default(), EnvFilter::add_directive);
    (Some(filter), rejected)
}

/// The longest request path an access record keeps, in bytes.
pub const MAX_LOGGED_PATH: usize = 1024;
/// The longest host, subprotocol, user or user agent an access record keeps, in bytes.
pub const MAX_LOGGED_VALUE: usize = 256;
/// The longest refusal reason an access record keeps, in bytes (a reason may quote an Origin
/// or a subprotocol list, up to the whole header block).
pub const MAX_LOGGED_REASON: usize = 512;

/// A header value as logged: its text cut to `max` bytes ([`cut`]). A value with bytes
/// past ASCII (RFC 9110's obs-text, e.g. a Latin-1 `é` in a `User-Agent`) is not text to
/// `http`, but leaving it out would let any client hide its value from the log with one such
/// byte: those bytes are written as `\xNN`.
pub fn header_text(v: &http::HeaderValue, max: usize) -> std::borrow::Cow<'_, str> {
    match v.to_str() {
        Ok(s) => cut(s, max),
        Err(_) => {
            use std::fmt::Write;
            let mut out = String::with_capacity(v.len() + 16);
            for &b in v.as_bytes() {
                if b.is_ascii() {
                    out.push(char::from(b));
                } else {
                    let _ = write!(out, "\\x{b:02x}");
                }
            }
            cut(&out, max).into_owned().into()
        }
    }
}

/// `s` cut to at most `max` bytes at a character boundary, with `…` when cut: a value the
/// client chose costs a bounded piece of a log record, however long the request was. Log it as
/// a `&str` field (quoted and escaped by the formatter), never formatted into a message.
pub fn cut(s: &str, max: usize) -> std::borrow::Cow<'_, str> {
    if s.len() <= max {
        return s.into();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end]).into()
}

/// Refused handshakes and connections by [`Outcome`] (`origin_refused`, `token_invalid`,
/// `backend_unreachable`, ...) and HTTP status: one counter set per route and one for
/// requests that matched none. Read by [`crate::Handle::refusals`] and exported as
/// `wsgate_handshakes_refused_total`.
#[derive(Debug, Default)]
pub struct RefusalCounts(crate::metrics::Counts<(Outcome, u16)>);

impl RefusalCounts {
    /// A refusal without an HTTP answer (the connection was closed).
    pub fn add(&self, outcome: Outcome) {
        self.0.add((outcome, 0));
    }

    /// A refusal answered with `status`.
    pub fn add_status(&self, outcome: Outcome, status: u16) {
        self.0.add((outcome, status));
    }

    /// By outcome, statuses summed.
    pub fn snapshot(&self) -> std::collections::BTreeMap<Outcome, u64> {
        let mut out = std::collections::BTreeMap::new();
        for ((o, _), n) in self.0.snapshot() {
            *out.entry(o).or_insert(0) += n;
        }
        out
    }

    /// By outcome and status (0: no HTTP answer).
    pub fn by_status(&self) -> std::collections::BTreeMap<(Outcome, u16), u64> {
        self.0.snapshot()
    }
}

/// What a subscriber writes, collected for the formats' tests.
#[cfg(test)]
#[derive(Clone, Default)]
pub(crate) struct Captured(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

#[cfg(test)]
impl Captured {
    /// Everything written so far.
    pub(crate) fn text(&self) -> String {
        String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
    }
}

#[cfg(test)]
impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Captured {
    type Writer = Captured;
    fn make_writer(&'a self) -> Captured {
        self.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::{DEFAULT_FILTER, cut, filter_from, header_text};

    #[test]
    fn rust_log_keeps_the_directives_that_parse_and_names_the_others() {
        let default = tracing_subscriber::EnvFilter::new(DEFAULT_FILTER).to_string();
        let shown = |f: Option<tracing_subscriber::EnvFilter>| {
            f.map_or_else(|| default.clone(), |f| f.to_string())
        };
        let of = |v: &str| {
            let (filter, rejected) = filter_from(Some(v.into()));
            let rejected: Vec<String> = rejected.into_iter().map(|(d, _)| d).collect();
            (shown(filter), rejected)
        };
        assert_eq!(of("wsgate=debug"), ("wsgate=debug".to_owned(), vec![]));
        // One bad directive cost the whole variable, silently.
        let (filter, rejected) = of("warn, wsgate=debg");
        assert_eq!(
            (filter.as_str(), rejected),
            ("warn", vec!["wsgate=debg".to_owned()])
        );
        // Nothing usable: the default, and what was wrong.
        assert_eq!(
            of("wsgate=debg"),
            (default.clone(), vec!["wsgate=debg".to_owned()])
        );
        assert_eq!(of(" , "), (default.clone(), vec![]));
        assert!(filter_from(None).0.is_none());
        // The default written out is a filter of its own, not "none left".
        assert!(filter_from(Some(DEFAULT_FILTER.into())).0.is_some());
        use std::os::unix::ffi::OsStringExt;
        let (filter, rejected) = filter_from(Some(std::ffi::OsString::from_vec(b"x\xff".to_vec())));
        assert!(filter.is_none());
        assert_eq!(rejected[0].1, "not UTF-8");
    }

    #[test]
    fn a_header_value_past_ascii_is_logged_escaped_not_left_out() {
        let v = |b: &[u8]| http::HeaderValue::from_bytes(b).unwrap();
        assert_eq!(header_text(&v(b"curl/8.0"), 256), "curl/8.0");
        assert_eq!(
            header_text(&v(b"EvilBot/1.0 caf\xe9"), 256),
            "EvilBot/1.0 caf\\xe9"
        );
        // Cut to the bound after escaping.
        assert_eq!(header_text(&v(&[0xff; 100]), 8), "\\xff\\xff…");
    }

    #[test]
    fn cut_keeps_short_values_and_cuts_long_ones_on_a_char_boundary() {
        assert_eq!(cut("/chat", 8), "/chat");
        assert_eq!(cut("/chat", 5), "/chat");
        assert_eq!(cut("/chatroom", 5), "/chat…");
        // 'é' is two bytes: a cut inside it keeps the byte before.
        assert_eq!(cut("/é", 2), "/…");
        assert_eq!(cut("", 0), "");
    }
}
