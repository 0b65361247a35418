//! `[limits]`'s path keys (`merge_slashes`, `escaped_slashes`: see `crate::path`), a route
//! path's canonical form, and `error_detail`; the admission keys of `[limits]` and of a
//! `[[route]]` (`max_sessions`, `max_sessions_per_ip`, `handshake_rate_per_ip`,
//! `handshake_burst`), and `[limits]`'s `ipv6_prefix` and `fd_reserve` (see `crate::limits`).

use std::num::NonZeroU32;
use std::time::Duration;

use toml::Spanned;

use super::Validator;
use crate::config::file::SpStr;
use crate::config::file::{FileLimits, FileRoute};
use crate::config::{
    AdmissionLimits, DEFAULT_ERROR_DETAIL, DEFAULT_ESCAPED_SLASHES, DEFAULT_IPV6_PREFIX,
    DEFAULT_MERGE_SLASHES, ErrorDetail, FdReserve, HandshakeRate,
};
use crate::path::{EscapedSlashes, PathRules, canonicalize, routing_form};

/// The largest count an admission key takes: far above what one process can hold, low
/// enough that a typo (an extra digit or three) is caught.
const MAX_ADMISSION_COUNT: i64 = 10_000_000;
/// The most handshakes a rate may allow per second: GCRA's interval is kept in nanoseconds,
/// and past this the limit is no limit.
const MAX_HANDSHAKES_PER_SECOND: u64 = 1_000_000;

/// The admission keys of one scope, as written (`[limits]` or a `[[route]]`).
#[derive(Clone, Copy)]
pub(super) struct AdmissionKeys<'a> {
    pub max_sessions: Option<&'a Spanned<i64>>,
    pub max_sessions_per_ip: Option<&'a Spanned<i64>>,
    pub handshake_rate_per_ip: Option<&'a SpStr>,
    pub handshake_burst: Option<&'a Spanned<i64>>,
}

impl<'a> AdmissionKeys<'a> {
    pub(super) fn of_limits(l: &'a FileLimits) -> Self {
        AdmissionKeys {
            max_sessions: l.max_sessions.as_ref(),
            max_sessions_per_ip: l.max_sessions_per_ip.as_ref(),
            handshake_rate_per_ip: l.handshake_rate_per_ip.as_ref(),
            handshake_burst: l.handshake_burst.as_ref(),
        }
    }

    pub(super) fn of_route(r: &'a FileRoute) -> Self {
        AdmissionKeys {
            max_sessions: r.max_sessions.as_ref(),
            max_sessions_per_ip: r.max_sessions_per_ip.as_ref(),
            handshake_rate_per_ip: r.handshake_rate_per_ip.as_ref(),
            handshake_burst: r.handshake_burst.as_ref(),
        }
    }
}

/// `"10/s"`, `"600/m"`, `"3600/h"`: how many handshakes per which unit.
fn parse_rate(text: &str) -> Result<(u64, Duration), String> {
    let usage = "write a count per unit, e.g. \"10/s\", \"600/m\" or \"1000/h\"";
    let Some((count, unit)) = text.split_once('/') else {
        return Err(format!("{text:?} is not a rate: {usage}"));
    };
    let unit = match unit.trim() {
        "s" | "sec" | "second" => Duration::from_secs(1),
        "m" | "min" | "minute" => Duration::from_secs(60),
        "h" | "hour" => Duration::from_secs(3600),
        other => return Err(format!("unknown unit {other:?} in {text:?}: {usage}")),
    };
    match count.trim().parse::<u64>() {
        Ok(n)
            if n >= 1
                && n.checked_mul(3600 / unit.as_secs())
                    .is_some_and(|per_hour| per_hour <= MAX_HANDSHAKES_PER_SECOND * 3600) =>
        {
            Ok((n, unit))
        }
        Ok(_) => Err(format!(
            "{text:?}: the count must be at least 1 and at most {MAX_HANDSHAKES_PER_SECOND} a second"
        )),
        Err(_) => Err(format!("{text:?} is not a rate: {usage}")),
    }
}

impl Validator<'_> {
    /// An integer key in `range`; an error naming the key and its line otherwise, and what
    /// leaving the key out means (`unset`, e.g. "no limit").
    pub(super) fn count(
        &mut self,
        key: &str,
        value: Option<&Spanned<i64>>,
        (range, unset): (std::ops::RangeInclusive<i64>, &str),
    ) -> Option<i64> {
        let v = value?;
        if range.contains(v.get_ref()) {
            return Some(*v.get_ref());
        }
        self.err(
            key,
            Some(v.span()),
            format!(
                "must be between {} and {} (leave the key out for {unset})",
                range.start(),
                range.end()
            ),
        );
        None
    }

    /// One scope's admission limits; `prefix` is `limits` or `route[N]`.
    pub(super) fn admission(&mut self, prefix: &str, keys: AdmissionKeys<'_>) -> AdmissionLimits {
        let sessions = |v: &mut Self, name: &str, value| {
            v.count(
                &format!("{prefix}.{name}"),
                value,
                (1..=MAX_ADMISSION_COUNT, "no limit"),
            )
            .and_then(|n| u32::try_from(n).ok())
        };
        let max_sessions = sessions(self, "max_sessions", keys.max_sessions);
        let max_sessions_per_ip = sessions(self, "max_sessions_per_ip", keys.max_sessions_per_ip);
        AdmissionLimits {
            max_sessions,
            max_sessions_per_ip,
            handshake_rate: self.handshake_rate(prefix, keys),
        }
    }

    /// `handshake_rate_per_ip` and `handshake_burst` (by default, one unit's worth: `"10/s"`
    /// lets a client open 10 at once, then 10 a second).
    fn handshake_rate(&mut self, prefix: &str, keys: AdmissionKeys<'_>) -> Option<HandshakeRate> {
        let burst_key = format!("{prefix}.handshake_burst");
        let burst = self.count(
            &burst_key,
            keys.handshake_burst,
            (1..=MAX_ADMISSION_COUNT, "the rate's count"),
        );
        let Some(rate) = keys.handshake_rate_per_ip else {
            if let Some(b) = keys.handshake_burst {
                self.err(
                    burst_key,
                    Some(b.span()),
                    format!(
                        "set, but {prefix}.handshake_rate_per_ip is not: a burst of what rate?"
                    ),
                );
            }
            return None;
        };
        let (count, unit) = match parse_rate(rate.get_ref()) {
            Ok(r) => r,
            Err(msg) => {
                self.err(
                    format!("{prefix}.handshake_rate_per_ip"),
                    Some(rate.span()),
                    msg,
                );
                return None;
            }
        };
        let burst = burst.map_or(count, |b| b as u64);
        Some(HandshakeRate {
            interval: unit / u32::try_from(count).unwrap_or(u32::MAX),
            burst: NonZeroU32::new(u32::try_from(burst).unwrap_or(u32::MAX))
                .unwrap_or(NonZeroU32::MIN),
        })
    }

    /// `limits.ipv6_prefix`: how many leading bits of an IPv6 client's address name it.
    pub(super) fn ipv6_prefix(&mut self, limits: &FileLimits) -> u8 {
        self.count(
            "limits.ipv6_prefix",
            limits.ipv6_prefix.as_ref(),
            (1..=128, "a /64"),
        )
        .and_then(|n| u8::try_from(n).ok())
        .unwrap_or(DEFAULT_IPV6_PREFIX)
    }

    /// `limits.fd_reserve`: descriptors new sessions leave free (0: no reserve).
    pub(super) fn fd_reserve(&mut self, limits: &FileLimits) -> FdReserve {
        let Some(value) = &limits.fd_reserve else {
            return FdReserve::Default;
        };
        match u64::try_from(*value.get_ref()) {
            Ok(n) if n <= MAX_ADMISSION_COUNT as u64 => FdReserve::Descriptors(n),
            _ => {
                self.err(
                    "limits.fd_reserve",
                    Some(value.span()),
                    format!("must be between 0 (no reserve) and {MAX_ADMISSION_COUNT}"),
                );
                FdReserve::Default
            }
        }
    }

    /// One of a few words, e.g. `"refuse"` or `"keep"`; an error naming them otherwise.
    pub(super) fn choice<T: Copy>(
        &mut self,
        key: &str,
        value: Option<&SpStr>,
        options: &[(&str, T)],
        default: T,
    ) -> T {
        let Some(value) = value else { return default };
        if let Some((_, v)) = options.iter().find(|(w, _)| *w == value.get_ref().as_str()) {
            return *v;
        }
        let words: Vec<String> = options.iter().map(|(w, _)| format!("{w:?}")).collect();
        self.err(
            key,
            Some(value.span()),
            format!(
                "unknown value {:?}: use {}",
                value.get_ref(),
                words.join(" or ")
            ),
        );
        default
    }

    /// `limits.error_detail`: where the details of a backend failure go.
    pub(super) fn error_detail(&mut self, limits: &FileLimits) -> ErrorDetail {
        self.choice(
            "limits.error_detail",
            limits.error_detail.as_ref(),
            &[("log", ErrorDetail::Log), ("client", ErrorDetail::Client)],
            DEFAULT_ERROR_DETAIL,
        )
    }

    pub(super) fn path_rules(&mut self, limits: &FileLimits) -> PathRules {
        let merge_slashes = limits
            .merge_slashes
            .as_ref()
            .map_or(DEFAULT_MERGE_SLASHES, |b| *b.get_ref());
        let escaped_slashes = self.choice(
            "limits.escaped_slashes",
            limits.escaped_slashes.as_ref(),
            &[
                ("refuse", EscapedSlashes::Refuse),
                ("keep", EscapedSlashes::Keep),
            ],
            DEFAULT_ESCAPED_SLASHES,
        );
        PathRules {
            merge_slashes,
            escaped_slashes,
        }
    }

    /// A route's path must be canonical and without parameters: requests are matched by
    /// their canonical path's routing form, so `/a/../b`, `//a` (slashes merged), `/%61` or
    /// `/a;x` would never match anything.
    pub(super) fn route_path(
        &mut self,
        key: &str,
        r: &Spanned<FileRoute>,
        path: &str,
        rules: &PathRules,
    ) {
        if path.is_empty() {
            return; // already reported
        }
        let span = r.get_ref().path.as_ref().map(|p| p.span());
        let problem = match canonicalize(path, rules) {
            Ok(c) if c.path == path && !path.contains(';') => return,
            Ok(c) => format!("write {:?}", routing_form(&c.path)),
            Err(e) => e.to_string(),
        };
        self.err(
            format!("{key}.path"),
            span,
            format!(
                "{path:?} never matches: requests are routed by their canonical path ({problem})"
            ),
        );
    }
}

#[cfg(test)]
mod tests {
    use crate::config::from_toml_str;
    use crate::path::{EscapedSlashes, PathRules};

    const BASE: &str = "[[listener]]\nlisten = \"127.0.0.1:0\"\n[[route]]\nname = \"r\"\npath = \"/\"\nbackends = [\"ws://127.0.0.1:1\"]\n";

    #[test]
    fn defaults_merge_and_refuse() {
        let c = from_toml_str(BASE).unwrap();
        assert_eq!(c.limits.path, PathRules::default());
        assert!(c.limits.path.merge_slashes);
        assert_eq!(c.limits.path.escaped_slashes, EscapedSlashes::Refuse);
    }

    #[test]
    fn both_keys_are_read() {
        let c = from_toml_str(&format!(
            "{BASE}[limits]\nmerge_slashes = false\nescaped_slashes = \"keep\"\n"
        ))
        .unwrap();
        assert!(!c.limits.path.merge_slashes);
        assert_eq!(c.limits.path.escaped_slashes, EscapedSlashes::Keep);
    }

    #[test]
    fn a_route_path_that_can_never_match_is_an_error() {
        let route = |path: &str, limits: &str| {
            from_toml_str(&format!(
                "[[listener]]\nlisten = \"127.0.0.1:0\"\n[[route]]\nname = \"r\"\npath = \"{path}\"\nbackends = [\"ws://127.0.0.1:1\"]\n{limits}"
            ))
        };
        for (path, hint) in [
            ("/a/../b", "write \"/b\""),
            ("//a", "write \"/a\""),
            ("/%61", "write \"/a\""),
            ("/a;x", "write \"/a\""),
            ("/a%2Fb", "encoded slash"),
        ] {
            let errors = route(path, "").unwrap_err();
            assert_eq!(errors.len(), 1, "{errors:?}");
            assert_eq!(errors[0].key, "route[0].path");
            assert_eq!(errors[0].line, Some(5));
            assert!(
                errors[0].message.contains(hint),
                "{path}: {}",
                errors[0].message
            );
        }
        assert!(route("/chat/", "").is_ok());
        assert!(route("/files%2Fa", "[limits]\nescaped_slashes = \"keep\"\n").is_ok());
        assert!(route("//a", "[limits]\nmerge_slashes = false\n").is_ok());
    }

    #[test]
    fn an_unknown_value_names_key_and_line() {
        let errors =
            from_toml_str(&format!("{BASE}[limits]\nescaped_slashes = \"decode\"\n")).unwrap_err();
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert_eq!(errors[0].key, "limits.escaped_slashes");
        assert_eq!(errors[0].line, Some(8));
        assert!(errors[0].message.contains("\"refuse\" or \"keep\""));
    }

    #[test]
    fn admission_keys_are_read_in_both_scopes() {
        use crate::config::{FdReserve, HandshakeRate};
        use std::num::NonZeroU32;
        use std::time::Duration;
        let c = from_toml_str(&format!(
            "{BASE}max_sessions = 5\nhandshake_rate_per_ip = \"600/m\"\nhandshake_burst = 3\n\
             [limits]\nmax_sessions = 100\nmax_sessions_per_ip = 4\n\
             handshake_rate_per_ip = \"10/s\"\nipv6_prefix = 56\nfd_reserve = 0\n"
        ))
        .unwrap();
        let global = c.limits.admission;
        assert_eq!(global.max_sessions, Some(100));
        assert_eq!(global.max_sessions_per_ip, Some(4));
        // The burst is one unit's worth unless set.
        assert_eq!(
            global.handshake_rate,
            Some(HandshakeRate {
                interval: Duration::from_millis(100),
                burst: NonZeroU32::new(10).unwrap(),
            })
        );
        assert_eq!(c.limits.ipv6_prefix, 56);
        assert_eq!(c.limits.fd_reserve, FdReserve::Descriptors(0));
        let route = c.routes[0].admission;
        assert_eq!(route.max_sessions, Some(5));
        assert_eq!(route.max_sessions_per_ip, None);
        assert_eq!(
            route.handshake_rate,
            Some(HandshakeRate {
                interval: Duration::from_millis(100),
                burst: NonZeroU32::new(3).unwrap(),
            })
        );
        // None of it is set by default.
        let plain = from_toml_str(BASE).unwrap();
        assert_eq!(plain.limits.admission, Default::default());
        assert_eq!(plain.limits.fd_reserve, FdReserve::Default);
        assert_eq!(plain.limits.ipv6_prefix, 64);
    }

    #[test]
    fn bad_admission_values_name_key_and_line() {
        let errors = from_toml_str(&format!(
            "{BASE}max_sessions_per_ip = 0\nhandshake_burst = 2\n[limits]\n\
             max_sessions = -1\nhandshake_rate_per_ip = \"ten/s\"\nipv6_prefix = 129\n\
             fd_reserve = -5\n"
        ))
        .unwrap_err();
        let got: Vec<(&str, Option<usize>)> =
            errors.iter().map(|e| (e.key.as_str(), e.line)).collect();
        assert_eq!(
            got,
            [
                ("route[0].max_sessions_per_ip", Some(7)),
                ("route[0].handshake_burst", Some(8)),
                ("limits.max_sessions", Some(10)),
                ("limits.handshake_rate_per_ip", Some(11)),
                ("limits.ipv6_prefix", Some(12)),
                ("limits.fd_reserve", Some(13)),
            ],
            "{errors:#?}"
        );
        assert!(errors[1].message.contains("handshake_rate_per_ip is not"));
        assert!(errors[3].message.contains("\"10/s\""));
        for rate in ["0/s", "10/d", "5000000/s", "99999999999999999999/s"] {
            let errors = from_toml_str(&format!(
                "{BASE}[limits]\nhandshake_rate_per_ip = \"{rate}\"\n"
            ))
            .unwrap_err();
            assert_eq!(errors[0].key, "limits.handshake_rate_per_ip", "{rate}");
        }
    }
}
