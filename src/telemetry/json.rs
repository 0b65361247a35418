//! The JSON log format: one object per line, `timestamp`, `level`, the event's fields
//! flattened (`message` first), then `target`, the shape tracing-subscriber's own JSON
//! format writes, which log shippers and `scripts/e2e` read.
//!
//! It exists for one thing tracing-subscriber's cannot do: write a list as a JSON array.
//! `tracing` has no list values, so a list reaches a formatter as a `Debug` value, which the
//! stock formatter can only write as a string (`"[\"ws://a\", \"ws://b\"]"`). A field made with
//! [`list`] is written here as a real array (`["ws://a","ws://b"]`), and by the text format as
//! before (`["ws://a", "ws://b"]`).

use std::cell::RefCell;
use std::fmt;

use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::time::FormatTime;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

/// A field value that is a list: `backends = telemetry::list(&urls)`. The JSON format writes
/// it as an array of strings (each item's `Display`), the text format as `["a", "b"]`.
pub fn list<T: fmt::Display>(items: &[T]) -> tracing::field::DebugValue<List<'_, T>> {
    tracing::field::debug(List(items))
}

/// See [`list`].
pub struct List<'a, T>(&'a [T]);

impl<T: fmt::Display> fmt::Debug for List<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let items = self.0.iter().map(ToString::to_string);
        if offer_list(|| items.clone().collect()) {
            return Ok(());
        }
        f.debug_list().entries(items).finish()
    }
}

thread_local! {
    /// While the JSON formatter formats one field's value on this thread: `Some`, and a
    /// [`List`] formatted then leaves its items here instead of writing text. This is how the
    /// formatter learns that a `Debug` value is a list: `tracing` hands it nothing else.
    static LIST_ITEMS: RefCell<Option<Option<Vec<String>>>> = const { RefCell::new(None) };
}

/// A [`List`] being formatted hands its items to the JSON formatter if it is listening.
fn offer_list(items: impl FnOnce() -> Vec<String>) -> bool {
    LIST_ITEMS.with(|slot| match &mut *slot.borrow_mut() {
        Some(taken) => {
            *taken = Some(items());
            true
        }
        None => false,
    })
}

/// `value` formatted with `Debug`, or, if it is a [`List`], its items.
fn debug_or_list(value: &dyn fmt::Debug) -> Result<String, Vec<String>> {
    LIST_ITEMS.with(|slot| *slot.borrow_mut() = Some(None));
    // No borrow is held while formatting: the value's `Debug` may be a `List`'s.
    let text = format!("{value:?}");
    match LIST_ITEMS.with(|slot| slot.borrow_mut().take()) {
        Some(Some(items)) => Err(items),
        _ => Ok(text),
    }
}

/// The JSON event format (see the module's doc).
#[derive(Debug, Default)]
pub struct JsonFormat;

impl<S, N> FormatEvent<S, N> for JsonFormat
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'w> FormatFields<'w> + 'static,
{
    fn format_event(
        &self,
        _ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let line = format_line(event)?;
        writer.write_str(&line)
    }
}

/// One event as one JSON line.
fn format_line(event: &Event<'_>) -> Result<String, fmt::Error> {
    let meta = event.metadata();
    let mut timestamp = String::new();
    super::time::LogTime.format_time(&mut Writer::new(&mut timestamp))?;
    let mut obj = Object::new();
    obj.entry("timestamp", &timestamp);
    obj.entry("level", meta.level().as_str());
    if let Some(pid) = super::shown_pid() {
        obj.entry("pid", &pid);
    }
    let mut fields = Fields {
        obj,
        log_target: None,
    };
    event.record(&mut fields);
    let Fields {
        mut obj,
        log_target,
    } = fields;
    // Records bridged from the `log` crate carry their real target as a field.
    obj.entry("target", log_target.as_deref().unwrap_or(meta.target()));
    Ok(obj.finish())
}

/// A JSON object being written, entries in order.
struct Object {
    out: String,
    empty: bool,
}

impl Object {
    fn new() -> Object {
        Object {
            out: String::with_capacity(512),
            empty: true,
        }
    }

    fn key(&mut self, key: &str) {
        self.out.push(if self.empty { '{' } else { ',' });
        self.empty = false;
        self.value(key);
        self.out.push(':');
    }

    /// Any serializable value: strings escaped as JSON requires, NaN and infinities as `null`.
    fn value<V: serde::Serialize + ?Sized>(&mut self, value: &V) {
        match serde_json::to_string(value) {
            Ok(s) => self.out.push_str(&s),
            Err(_) => self.out.push_str("null"),
        }
    }

    fn entry<V: serde::Serialize + ?Sized>(&mut self, key: &str, value: &V) {
        self.key(key);
        self.value(value);
    }

    fn finish(mut self) -> String {
        if self.empty {
            self.out.push('{');
        }
        self.out.push_str("}\n");
        self.out
    }
}

/// Writes an event's fields into the object.
struct Fields {
    obj: Object,
    /// `log.target` of a record from the `log` crate.
    log_target: Option<String>,
}

/// Whether the field is one of those `tracing-log` adds to a record from the `log` crate
/// (`log.target`, `log.file`, ...): the target is kept, the rest is dropped as the text format
/// drops it.
fn bridged(field: &Field) -> bool {
    field.name().starts_with("log.")
}

impl Visit for Fields {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if bridged(field) {
            return;
        }
        match debug_or_list(value) {
            Ok(text) => self.obj.entry(field.name(), &text),
            Err(items) => self.obj.entry(field.name(), &items),
        }
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        match field.name() {
            "log.target" => self.log_target = Some(value.to_string()),
            _ if bridged(field) => {}
            name => self.obj.entry(name, value),
        }
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        if !bridged(field) {
            self.obj.entry(field.name(), &value);
        }
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        if !bridged(field) {
            self.obj.entry(field.name(), &value);
        }
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        if !bridged(field) {
            self.obj.entry(field.name(), &value);
        }
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        if !bridged(field) {
            self.obj.entry(field.name(), &value);
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;

    /// The lines `f` logs, in the JSON format (`json = true`) or the text format.
    fn logged(json: bool, f: impl FnOnce()) -> String {
        let buf = crate::telemetry::Captured::default();
        let builder = tracing_subscriber::fmt()
            .with_writer(buf.clone())
            .with_ansi(false)
            .with_max_level(tracing::Level::DEBUG);
        if json {
            tracing::subscriber::with_default(builder.event_format(JsonFormat).finish(), f);
        } else {
            tracing::subscriber::with_default(builder.finish(), f);
        }
        buf.text()
    }

    fn parse(line: &str) -> serde_json::Map<String, Value> {
        match serde_json::from_str(line) {
            Ok(Value::Object(m)) => m,
            _ => panic!("not a JSON object: {line:?}"),
        }
    }

    #[test]
    fn a_record_has_the_stock_shape_with_typed_fields() {
        let out = logged(true, || {
            let path = "/chat\n\"x\"";
            tracing::info!(
                target: "wsgate::access",
                session = 7u64,
                delta = -3i64,
                ratio = 0.5,
                cut = false,
                path,
                client = %"127.0.0.1:1",
                grace = ?std::time::Duration::from_secs(30),
                "session closed"
            );
        });
        assert_eq!(out.lines().count(), 1, "{out}");
        assert!(out.ends_with("}\n"), "{out:?}");
        // Compact, as `scripts/e2e` greps it: `"message":"session closed"`.
        assert!(out.contains(r#""message":"session closed""#), "{out}");
        let r = parse(&out);
        // In this order (a parsed map would sort them).
        let at = |k: &str| {
            out.find(&format!("\"{k}\":"))
                .unwrap_or_else(|| panic!("{k}"))
        };
        let keys = [
            "timestamp",
            "level",
            "message",
            "session",
            "delta",
            "ratio",
            "cut",
            "path",
            "client",
            "grace",
            "target",
        ];
        assert!(keys.windows(2).all(|w| at(w[0]) < at(w[1])), "{out}");
        assert_eq!(r.len(), keys.len(), "{out}");
        let stamp = r["timestamp"].as_str().unwrap();
        assert!(
            stamp.len() == 27 && stamp.ends_with('Z') && stamp.as_bytes()[10] == b'T',
            "{stamp}"
        );
        assert_eq!(r["level"], "INFO");
        assert_eq!(r["target"], "wsgate::access");
        assert_eq!(r["session"], 7);
        assert_eq!(r["delta"], -3);
        assert_eq!(r["ratio"], 0.5);
        assert_eq!(r["cut"], false);
        assert_eq!(r["path"], "/chat\n\"x\"");
        assert_eq!(r["client"], "127.0.0.1:1");
        assert_eq!(r["grace"], "30s");
    }

    #[test]
    fn lists_are_arrays_in_json_and_as_before_in_text() {
        let backends = ["ws://127.0.0.1:9", "ws://b:1/\"q\""];
        let none: [&str; 0] = [];
        let log = || tracing::info!(backends = list(&backends), empty = list(&none), "route");
        let r = parse(&logged(true, log));
        assert_eq!(r["backends"], json!(["ws://127.0.0.1:9", "ws://b:1/\"q\""]));
        assert_eq!(r["empty"], json!([]));
        let text = logged(false, log);
        assert!(
            text.contains(r#"backends=["ws://127.0.0.1:9", "ws://b:1/\"q\""] empty=[]"#),
            "{text}"
        );
        // A value that merely looks like a list stays a string.
        let r = parse(&logged(true, || tracing::info!(v = ?["a"], "x")));
        assert_eq!(r["v"], r#"["a"]"#);
    }

    #[test]
    fn an_absent_value_is_no_field_in_either_format() {
        let log = || {
            tracing::info!(
                code = None::<u16>,
                reason = None::<&str>,
                other = Some(1000u16),
                "x"
            )
        };
        let out = logged(true, log);
        let r = parse(&out);
        assert!(
            !r.contains_key("code") && !r.contains_key("reason"),
            "{out}"
        );
        assert_eq!(r["other"], 1000);
        let text = logged(false, log);
        assert!(text.trim_end().ends_with(": x other=1000"), "{text}");
    }

    #[test]
    fn records_from_the_log_crate_keep_their_target_without_the_bridge_fields() {
        let out = logged(true, || {
            tracing::event!(
                target: "log",
                tracing::Level::INFO,
                { log.target = "rustls::conn", log.module_path = "rustls::conn", log.line = 42u64 },
                "Sending fatal alert"
            )
        });
        let r = parse(&out);
        assert_eq!(r["target"], "rustls::conn");
        assert_eq!(r["message"], "Sending fatal alert");
        assert!(!r.keys().any(|k| k.starts_with("log.")), "{out}");
    }

    #[test]
    fn a_non_finite_number_is_null() {
        let r = parse(&logged(true, || tracing::warn!(x = f64::NAN, "y")));
        assert_eq!(r["x"], Value::Null);
        assert_eq!(r["level"], "WARN");
    }
}
