//! Human units in the config file: durations like `"30s"` and sizes like `"1MiB"`.
//!
//! Small hand-written parsers: the grammar is tiny, and owning it lets the error say exactly
//! which forms are accepted.

use std::time::Duration;

/// The longest duration a key takes: 100 years. A deadline is the clock plus a duration,
/// and a sum past what the clock holds panics; a saturated "3000000000000000h" passed
/// `wsgate check`, then took down a worker at every handshake (or the drain at SIGTERM).
const MAX_DURATION: Duration = Duration::from_secs(100 * 365 * 86_400);

/// Parses `"500ms"`, `"30s"`, `"5m"`, `"2h"`, `"1d"` and compounds such as `"1m30s"`.
/// `"0"` and `"0s"` mean zero (used to turn a timer off where a key allows it).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let s = text.trim();
    if s.is_empty() {
        return Err("empty duration; write e.g. \"30s\", \"500ms\", \"5m\"".into());
    }
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    let mut total = Duration::ZERO;
    let mut rest = s;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return Err(format!(
                "invalid duration {text:?}: expected a number followed by a unit (ms, s, m, h, d)"
            ));
        }
        let value: u64 = rest[..digits]
            .parse()
            .map_err(|_| format!("invalid duration {text:?}: number too large"))?;
        rest = rest[digits..].trim_start();
        if rest.starts_with(['.', ',']) {
            return Err(format!(
                "invalid duration {text:?}: no fractions; write a whole number of a smaller \
                 unit (\"1500ms\" for 1.5s, \"90s\" for 1.5m, \"1m30s\")"
            ));
        }
        let unit_len = rest.bytes().take_while(u8::is_ascii_alphabetic).count();
        let unit = &rest[..unit_len];
        rest = rest[unit_len..].trim_start();
        let part = match unit {
            "ms" => Duration::from_millis(value),
            "s" => Duration::from_secs(value),
            "m" => Duration::from_secs(value.saturating_mul(60)),
            "h" => Duration::from_secs(value.saturating_mul(3600)),
            "d" => Duration::from_secs(value.saturating_mul(86_400)),
            "" => {
                return Err(format!(
                    "invalid duration {text:?}: missing unit after {value} (ms, s, m, h, d)"
                ));
            }
            other => {
                return Err(format!(
                    "invalid duration {text:?}: unknown unit {other:?} (ms, s, m, h, d)"
                ));
            }
        };
        total = total.saturating_add(part);
    }
    if total > MAX_DURATION {
        return Err(format!(
            "invalid duration {text:?}: too long (at most 36500d, 100 years)"
        ));
    }
    Ok(total)
}

/// Parses `"1MiB"`, `"64KiB"`, `"16KB"`, `"1GiB"`, `"512B"` or a bare number of bytes.
/// Binary units (KiB = 1024) and decimal units (KB = 1000) are both accepted, as written.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let s = text.trim();
    let digits = s.bytes().take_while(u8::is_ascii_digit).count();
    if digits == 0 {
        return Err(format!(
            "invalid size {text:?}: expected a number with an optional unit (B, KiB, MiB, GiB, KB, MB, GB)"
        ));
    }
    let value: u64 = s[..digits]
        .parse()
        .map_err(|_| format!("invalid size {text:?}: number too large"))?;
    let unit = s[digits..].trim();
    if unit.starts_with(['.', ',']) {
        return Err(format!(
            "invalid size {text:?}: no fractions; write a whole number of a smaller unit \
             (\"1536KiB\" for 1.5MiB)"
        ));
    }
    let factor: u64 = match unit {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "KB" | "kB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        other => {
            return Err(format!(
                "invalid size {text:?}: unknown unit {other:?} (B, KiB, MiB, GiB, KB, MB, GB)"
            ));
        }
    };
    value
        .checked_mul(factor)
        .ok_or_else(|| format!("invalid size {text:?}: too large"))
}

/// Formats a duration the way the config file writes it, for logs and `wsgate check`.
pub fn format_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if !ms.is_multiple_of(1000) {
        format!("{ms}ms")
    } else {
        format!("{}s", ms / 1000)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("2h"), Ok(Duration::from_secs(7200)));
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        assert!(parse_duration("30").unwrap_err().contains("missing unit"));
        assert!(parse_duration("3x").unwrap_err().contains("unknown unit"));
        // A fraction is named as such (it read as "missing unit after 1").
        assert!(parse_duration("1.5s").unwrap_err().contains("no fractions"));
        assert!(
            parse_duration("1m0.5s")
                .unwrap_err()
                .contains("no fractions")
        );
        assert!(parse_duration("").is_err());
        assert!(parse_duration("s").is_err());
        assert_eq!(parse_duration("36500d"), Ok(MAX_DURATION));
        for long in [
            "36501d",
            "3000000000000000h",
            "18446744073709551615s",
            "36500d1ms",
        ] {
            assert!(
                parse_duration(long).unwrap_err().contains("too long"),
                "{long}"
            );
        }
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("1MiB"), Ok(1 << 20));
        assert_eq!(parse_size("64KiB"), Ok(65536));
        assert_eq!(parse_size("16KB"), Ok(16000));
        assert_eq!(parse_size("512"), Ok(512));
        assert_eq!(parse_size("512B"), Ok(512));
        assert!(parse_size("1XB").unwrap_err().contains("unknown unit"));
        assert!(parse_size("1.5MiB").unwrap_err().contains("no fractions"));
        assert!(parse_size("MiB").is_err());
        assert!(parse_size("99999999999GiB").is_err());
    }
}
