//! The records' timestamp: `tracing-subscriber`'s `SystemTime` format (RFC 3339 in UTC with
//! microseconds, `2026-12-05T19:50:01.123456Z`), byte for byte, with the part up to the
//! second kept per thread.
//!
//! Every session writes two access records, and the default timer turns the clock into a
//! civil date and writes it through seven `write!` arguments for each: 0.7 % of a plain
//! open + close cycle's CPU in `perf record`. Here the date and time of day are worked out
//! once a second per thread, and a record writes that prefix and six digits.

use std::cell::RefCell;
use std::fmt::{self, Write as _};
use std::time::UNIX_EPOCH;

use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::time::{FormatTime, SystemTime};

/// `YYYY-MM-DDTHH:MM:SS.`, the part of a timestamp that holds for a second.
const PREFIX_LEN: usize = 20;

/// The first second of year 10000, past which the format needs more than four digits
/// (`SystemTime` writes `+10000`): those instants, and those before 1970, go to it.
const YEAR_10000: u64 = 253_402_300_800;

/// The timer of both log formats; see the module's documentation.
#[derive(Debug, Default, Clone, Copy)]
pub struct LogTime;

thread_local! {
    /// The second last formatted on this thread, and its prefix.
    static PREFIX: RefCell<(u64, [u8; PREFIX_LEN])> = const { RefCell::new((u64::MAX, [0; PREFIX_LEN])) };
}

impl FormatTime for LogTime {
    fn format_time(&self, w: &mut Writer<'_>) -> fmt::Result {
        let now = std::time::SystemTime::now();
        let since = match now.duration_since(UNIX_EPOCH) {
            Ok(d) if d.as_secs() < YEAR_10000 => d,
            _ => return SystemTime.format_time(w),
        };
        let secs = since.as_secs();
        let mut out = [0u8; PREFIX_LEN + 7];
        PREFIX.with(|p| {
            let mut p = p.borrow_mut();
            if p.0 != secs {
                *p = (secs, prefix(secs));
            }
            out[..PREFIX_LEN].copy_from_slice(&p.1);
        });
        let mut micros = since.subsec_micros();
        for d in out[PREFIX_LEN..PREFIX_LEN + 6].iter_mut().rev() {
            *d = b'0' + (micros % 10) as u8;
            micros /= 10;
        }
        out[PREFIX_LEN + 6] = b'Z';
        // ASCII digits and punctuation only.
        w.write_str(std::str::from_utf8(&out).map_err(|_| fmt::Error)?)
    }
}

/// `YYYY-MM-DDTHH:MM:SS.` for `secs` after the Unix epoch (before year 10000).
fn prefix(secs: u64) -> [u8; PREFIX_LEN] {
    let (year, month, day) = civil_from_days((secs / 86_400) as i64);
    let in_day = secs % 86_400;
    let mut s = String::with_capacity(PREFIX_LEN);
    let _ = write!(
        s,
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.",
        in_day / 3600,
        in_day / 60 % 60,
        in_day % 60
    );
    let mut out = [0u8; PREFIX_LEN];
    out.copy_from_slice(&s.as_bytes()[..PREFIX_LEN]);
    out
}

/// The proleptic Gregorian date of a day number counted from 1970-01-01 (Howard Hinnant's
/// `civil_from_days`, the algorithm `tracing-subscriber`'s own date uses an equivalent of).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097); // [0, 146096]
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365; // [0, 399]
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100); // [0, 365]
    let mp = (5 * doy + 2) / 153; // March = 0
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_of_known_instants() {
        for (secs, want) in [
            (0, "1970-01-01T00:00:00."),
            (951_782_400, "2000-02-29T00:00:00."),
            (4_107_542_399, "2100-02-28T23:59:59."),
            (1_796_500_201, "2026-12-05T19:50:01."),
            (YEAR_10000 - 1, "9999-12-31T23:59:59."),
        ] {
            assert_eq!(std::str::from_utf8(&prefix(secs)).unwrap(), want, "{secs}");
        }
    }

    #[test]
    fn every_day_for_three_centuries_against_a_day_counter() {
        // Walks the calendar a day at a time from 1970 and checks each date.
        let (mut y, mut m, mut d) = (1970i64, 1u32, 1u32);
        for days in 0..(366 * 300) {
            assert_eq!(civil_from_days(days), (y, m, d), "day {days}");
            let leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
            let len = match m {
                2 if leap => 29,
                2 => 28,
                4 | 6 | 9 | 11 => 30,
                _ => 31,
            };
            d += 1;
            if d > len {
                d = 1;
                m += 1;
                if m > 12 {
                    m = 1;
                    y += 1;
                }
            }
        }
    }

    #[test]
    fn the_same_bytes_as_tracing_subscribers_timer() {
        // Both read the clock, so they agree up to the microseconds unless a second passed
        // between the two reads: then the next try agrees.
        let format = |t: &dyn FormatTime| {
            let mut s = String::new();
            t.format_time(&mut Writer::new(&mut s)).unwrap();
            s
        };
        let agrees = (0..5).any(|_| {
            let ours = format(&LogTime);
            let theirs = format(&SystemTime);
            assert_eq!(ours.len(), theirs.len(), "{ours} / {theirs}");
            assert!(ours.ends_with('Z'), "{ours}");
            ours[..PREFIX_LEN] == theirs[..PREFIX_LEN]
        });
        assert!(agrees);
    }
}
