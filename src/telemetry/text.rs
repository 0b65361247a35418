//! The text format's fields, written the way `tracing-subscriber`'s `DefaultFields` writes
//! them, byte for byte, but without its detour through `fmt::Debug` for the common values.
//!
//! Every session ends with an access record of about 25 fields, and with the default
//! formatter each one is a `write!` of the name painted by `nu_ansi_term` (even with colours
//! off), `=`, and the value through `Debug`, which for a string escapes it a character at a
//! time. Here a string of printable ASCII with nothing to escape is copied as it is between
//! quotes, a number or a boolean written straight, and everything else (the message, values
//! that are only `Debug`, errors, strings that need escaping, colours on a terminal) goes to
//! `DefaultVisitor` itself, so the output cannot drift from the default's (tests compare the
//! two, on a record of every kind of field and on any string).
//!
//! Measured per open + close cycle (access log on, one worker, two builds alternating):
//! 66 → 63 ms of CPU per 1,000 cycles, about 4 % (docs/benchmarks.md).

use std::fmt;

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::field::{MakeVisitor, VisitOutput};
use tracing_subscriber::fmt::format::{DefaultVisitor, Format, Full, Writer};
use tracing_subscriber::fmt::time::FormatTime;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

use super::time::LogTime;

/// The text format's line: tracing-subscriber's default (`Full`: timestamp, level, spans,
/// target, fields), byte for byte, with the level and the target written as strings where
/// the default writes them through `write!` and `pad` (two access records per session). A
/// record in a span, one that came through the `log` crate and every record on a terminal
/// with colours go to the default itself.
#[derive(Debug)]
pub struct TextFormat<T = LogTime> {
    timer: T,
    full: Format<Full, T>,
}

impl<T: FormatTime + Clone> TextFormat<T> {
    pub fn new(timer: T) -> TextFormat<T> {
        TextFormat {
            full: Format::default().with_timer(timer.clone()),
            timer,
        }
    }
}

impl<S, N, T> FormatEvent<S, N> for TextFormat<T>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    T: FormatTime,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let meta = event.metadata();
        if writer.has_ansi_escapes()
            || ctx.event_scope().is_some()
            // `log` records through tracing-log: their metadata ("log event", target
            // "log") is completed from `log.*` fields, which the default does.
            || meta.target() == "log"
        {
            return self.full.format_event(ctx, writer, event);
        }
        if self.timer.format_time(&mut writer).is_err() {
            writer.write_str("<unknown time>")?;
        }
        writer.write_str(match *meta.level() {
            Level::TRACE => " TRACE ",
            Level::DEBUG => " DEBUG ",
            Level::INFO => "  INFO ",
            Level::WARN => "  WARN ",
            Level::ERROR => " ERROR ",
        })?;
        writer.write_str(meta.target())?;
        writer.write_str(": ")?;
        ctx.format_fields(writer.by_ref(), event)?;
        if let Some(pid) = super::shown_pid() {
            write!(writer, " pid={pid}")?;
        }
        writer.write_str("\n")
    }
}

/// `DefaultFields` with a fast path; see the module's documentation. (`FormatFields` comes
/// with `MakeVisitor` and the visitor's `VisitOutput` and `VisitFmt`.)
#[derive(Debug, Default, Clone, Copy)]
pub struct TextFields;

impl<'a> MakeVisitor<Writer<'a>> for TextFields {
    type Visitor = TextVisitor<'a>;

    fn make_visitor(&self, writer: Writer<'a>) -> TextVisitor<'a> {
        TextVisitor {
            writer,
            is_empty: true,
            result: Ok(()),
        }
    }
}

/// Writes one record's fields; see [`TextFields`].
pub struct TextVisitor<'a> {
    writer: Writer<'a>,
    /// No field has been written yet (the next one needs no separating space).
    is_empty: bool,
    result: fmt::Result,
}

impl TextVisitor<'_> {
    /// Whether `name`'s value is written here rather than by `DefaultVisitor`: not the
    /// message (escaped against terminal injection there), not a raw identifier's `r#` name,
    /// not `log.*` metadata (skipped there), and only without colours.
    fn fast(&self, name: &str) -> bool {
        self.result.is_ok()
            && !self.writer.has_ansi_escapes()
            && name != "message"
            && !name.starts_with("r#")
            && !name.starts_with("log.")
    }

    /// `name` and `then` (`=`, or `="` before a string) after a separating space if a field
    /// came before. (Strings, not characters: the writer is a `dyn fmt::Write`, one call each.)
    fn head(&mut self, name: &str, then: &str) -> fmt::Result {
        if self.is_empty {
            self.is_empty = false;
        } else {
            self.writer.write_str(" ")?;
        }
        self.writer.write_str(name)?;
        self.writer.write_str(then)
    }

    /// Hands one field to `DefaultVisitor`, which writes it (and its separating space)
    /// exactly as the default format does.
    fn default(&mut self, field: &Field, record: impl FnOnce(&mut DefaultVisitor<'_>)) {
        if self.result.is_err() {
            return;
        }
        let mut v = DefaultVisitor::new(self.writer.by_ref(), self.is_empty);
        record(&mut v);
        self.result = v.finish();
        // It writes every field but `log.*` metadata (tracing-subscriber's `tracing-log`
        // feature, on by default).
        if !field.name().starts_with("log.") {
            self.is_empty = false;
        }
    }

    /// A number or a boolean: its `Debug` is its `Display`, which is what `DefaultVisitor`
    /// writes for them too (its `record_u64`, `record_i64` and `record_bool` are `Visit`'s
    /// defaults, which hand the value to `record_debug`).
    fn scalar(&mut self, field: &Field, value: impl fmt::Display + fmt::Debug) {
        if self.fast(field.name()) {
            self.result = self
                .head(field.name(), "=")
                .and_then(|()| write!(self.writer, "{value}"));
        } else {
            self.default(field, |v| v.record_debug(field, &value));
        }
    }
}

/// A string `Debug` writes as it is between quotes: printable ASCII but `"` and `\`.
fn needs_no_escape(s: &str) -> bool {
    s.bytes()
        .all(|b| (0x20..0x7f).contains(&b) && b != b'"' && b != b'\\')
}

impl Visit for TextVisitor<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        if self.fast(field.name()) && needs_no_escape(value) {
            self.result = self.head(field.name(), "=\"").and_then(|()| {
                self.writer.write_str(value)?;
                self.writer.write_str("\"")
            });
        } else {
            self.default(field, |v| v.record_str(field, value));
        }
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        // The access record's counters: the digits straight, not through the integer
        // formatter's padding pass (what `{value}` writes).
        if self.fast(field.name()) {
            let mut buf = [0u8; 20];
            let digits = crate::ip_text::decimal(value, &mut buf);
            self.result = self
                .head(field.name(), "=")
                .and_then(|()| self.writer.write_str(digits));
        } else {
            self.scalar(field, value);
        }
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.scalar(field, value);
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.scalar(field, value);
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.default(field, |v| v.record_error(field, value));
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.default(field, |v| v.record_debug(field, value));
    }
}

impl VisitOutput<fmt::Result> for TextVisitor<'_> {
    fn finish(self) -> fmt::Result {
        self.result
    }
}

impl tracing_subscriber::field::VisitFmt for TextVisitor<'_> {
    fn writer(&mut self) -> &mut dyn fmt::Write {
        &mut self.writer
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use tracing_subscriber::fmt::format::DefaultFields;

    use super::TextFields;

    /// What `emit` logs with the default field formatter and with `TextFields`, as the
    /// binary's text format writes it (no time, which would differ). With colours every
    /// field takes `TextFields`' way to `DefaultVisitor`.
    fn both(ansi: bool, emit: impl Fn()) -> (String, String) {
        let run = |fast: bool| {
            let buf = crate::telemetry::Captured::default();
            let builder = tracing_subscriber::fmt()
                .with_ansi(ansi)
                .without_time()
                .with_max_level(tracing::Level::TRACE)
                .with_writer(buf.clone());
            if fast {
                tracing::subscriber::with_default(builder.fmt_fields(TextFields).finish(), &emit);
            } else {
                tracing::subscriber::with_default(
                    builder.fmt_fields(DefaultFields::new()).finish(),
                    &emit,
                );
            }
            buf.text()
        };
        (run(false), run(true))
    }

    #[derive(Debug)]
    struct Failed;
    impl std::fmt::Display for Failed {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("failed \"badly\"\n")
        }
    }
    impl std::error::Error for Failed {}

    #[test]
    fn records_are_written_as_the_default_formatter_writes_them() {
        let emit = || {
            let span = tracing::info_span!("conn", peer = "127.0.0.1:1", n = 3u64);
            let _in = span.enter();
            tracing::info!(
                target: "wsgate::access",
                event = "session",
                session = 7u64,
                zero = 0u64,
                ten = 10u64,
                max = u64::MAX,
                delta = -3i64,
                cut = false,
                host = "example.com",
                empty = "",
                quoted = "a \"b\" c",
                backslash = r"C:\x",
                newline = "two\nlines",
                tab = "a\tb",
                escape = "\u{1b}[31mred",
                unicode = "café ☕",
                combining = "e\u{301}",
                none = Option::<&str>::None,
                some = Some("x"),
                client = %"127.0.0.1:5",
                debug = ?vec![1, 2],
                r#type = "raw",
                float = 1.5f64,
                big = u128::MAX,
                "session closed"
            );
            let err: &(dyn std::error::Error + 'static) = &Failed;
            tracing::warn!(error = err, "message with \"quotes\" {}", 42);
            tracing::info!("only a message");
            tracing::info!(first = "no message");
        };
        for ansi in [false, true] {
            let (default, fast) = both(ansi, emit);
            assert!(default.contains("session closed"), "{default}");
            assert!(default.lines().count() >= 4, "{default}");
            assert_eq!(fast, default);
        }
    }

    /// A timer that writes the same text every time, for comparing two formats' lines.
    #[derive(Debug, Clone, Copy)]
    struct Fixed;
    impl tracing_subscriber::fmt::time::FormatTime for Fixed {
        fn format_time(
            &self,
            w: &mut tracing_subscriber::fmt::format::Writer<'_>,
        ) -> std::fmt::Result {
            w.write_str("2026-12-05T20:30:00.123456Z")
        }
    }

    #[test]
    fn lines_are_laid_out_as_the_default_format_lays_them_out() {
        let emit = || {
            tracing::trace!(target: "wsgate::access", n = 1u64, "trace");
            tracing::debug!(s = "x", "debug");
            tracing::info!(target: "wsgate::access", event = "session", client = %"1.2.3.4:5", "session closed");
            tracing::warn!("warn {}", 1);
            tracing::error!(error = "boom");
            let span = tracing::info_span!("conn", peer = "127.0.0.1:1");
            span.in_scope(|| tracing::info!(inside = true, "in a span"));
            let parent = tracing::info_span!("outer");
            tracing::info!(parent: &parent, "explicit parent");
        };
        for ansi in [false, true] {
            let run = |ours: bool| {
                let buf = crate::telemetry::Captured::default();
                let builder = tracing_subscriber::fmt()
                    .with_ansi(ansi)
                    .with_max_level(tracing::Level::TRACE)
                    .with_writer(buf.clone())
                    .fmt_fields(TextFields);
                if ours {
                    let sub = builder.event_format(super::TextFormat::new(Fixed)).finish();
                    tracing::subscriber::with_default(sub, emit);
                } else {
                    let sub = builder.with_timer(Fixed).finish();
                    tracing::subscriber::with_default(sub, emit);
                }
                buf.text()
            };
            let (default, ours) = (run(false), run(true));
            assert_eq!(default.lines().count(), 7, "{default}");
            assert!(default.contains("2026-12-05T20:30:00.123456Z"), "{default}");
            assert_eq!(ours, default);
        }
    }

    proptest! {
        #[test]
        fn any_string_is_written_as_the_default_formatter_writes_it(
            a in any::<String>(),
            b in "[ -~]{0,40}",
            n in any::<u64>(),
        ) {
            let (default, fast) = both(false, || {
                tracing::info!(a = a.as_str(), n, b = b.as_str(), "m");
            });
            prop_assert_eq!(fast, default);
        }
    }
}
