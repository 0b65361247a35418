//! A route's fair shares: `client_messages_per_sec`, `client_bytes_per_sec`, their bursts,
//! the same for the backend, and `rate_grace` (see `crate::relay::fair`).

use super::Validator;
use crate::config::file::{FileRoute, SpStr};
use crate::config::{DEFAULT_RATE_GRACE, DirectionRates, Rate, Rates};
use toml::Spanned;

/// More than any real client sends, small enough that the arithmetic stays exact.
const MAX_MESSAGES_PER_SEC: i64 = 10_000_000;

impl Validator<'_> {
    pub(super) fn rates(&mut self, key: &str, r: &FileRoute) -> Rates {
        Rates {
            client: self.direction(
                key,
                "client",
                (
                    r.client_messages_per_sec.as_ref(),
                    r.client_messages_burst.as_ref(),
                ),
                (
                    r.client_bytes_per_sec.as_ref(),
                    r.client_bytes_burst.as_ref(),
                ),
            ),
            backend: self.direction(
                key,
                "backend",
                (
                    r.backend_messages_per_sec.as_ref(),
                    r.backend_messages_burst.as_ref(),
                ),
                (
                    r.backend_bytes_per_sec.as_ref(),
                    r.backend_bytes_burst.as_ref(),
                ),
            ),
            grace: self.optional_duration(
                &format!("{key}.rate_grace"),
                r.rate_grace.as_ref(),
                Some(DEFAULT_RATE_GRACE),
            ),
        }
    }

    fn direction(
        &mut self,
        key: &str,
        side: &str,
        (messages, messages_burst): (Option<&Spanned<i64>>, Option<&Spanned<i64>>),
        (bytes, bytes_burst): (Option<&SpStr>, Option<&SpStr>),
    ) -> DirectionRates {
        let name = |what: &str| format!("{key}.{side}_{what}");
        let range = 1..=MAX_MESSAGES_PER_SEC;
        let per_sec = self.count(
            &name("messages_per_sec"),
            messages,
            (range.clone(), "no limit"),
        );
        let burst = self.count(
            &name("messages_burst"),
            messages_burst,
            (range, "one second's worth"),
        );
        let messages = self.rate(
            &name("messages_burst"),
            messages_burst.map(|b| b.span()),
            per_sec.and_then(|n| u64::try_from(n).ok()),
            burst.and_then(|n| u64::try_from(n).ok()),
        );
        let per_sec = self.optional_size(&name("bytes_per_sec"), bytes, None);
        let burst = self.optional_size(&name("bytes_burst"), bytes_burst, None);
        let bytes = self.rate(
            &name("bytes_burst"),
            bytes_burst.map(|b| b.span()),
            per_sec,
            burst,
        );
        DirectionRates { messages, bytes }
    }

    /// A rate and its burst (one second's worth unless set); a burst without a rate is an
    /// error.
    fn rate(
        &mut self,
        burst_key: &str,
        burst_span: Option<std::ops::Range<usize>>,
        per_sec: Option<u64>,
        burst: Option<u64>,
    ) -> Option<Rate> {
        match (per_sec, burst) {
            (Some(per_sec), burst) => Some(Rate {
                per_sec,
                burst: burst.unwrap_or(per_sec),
            }),
            (None, Some(_)) => {
                let rate_key = burst_key.replace("_burst", "_per_sec");
                self.err(
                    burst_key,
                    burst_span,
                    format!("set, but {rate_key} is not: a burst of what rate?"),
                );
                None
            }
            (None, None) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::config::{Rate, from_toml_str};

    const BASE: &str = "[[listener]]\nlisten = \"127.0.0.1:0\"\n\n[[route]]\nname = \"r\"\n\
                        path = \"/\"\nbackends = [\"ws://127.0.0.1:9\"]\n";

    #[test]
    fn rates_and_their_bursts() {
        let c = from_toml_str(&format!(
            "{BASE}client_messages_per_sec = 10\nclient_bytes_per_sec = \"64KiB\"\n\
             client_bytes_burst = \"1MiB\"\nbackend_messages_per_sec = 100\n\
             backend_messages_burst = 500\nrate_grace = \"3s\"\n"
        ))
        .unwrap();
        let rates = c.routes[0].session.rates;
        let rate = |per_sec: u64, burst: u64| Some(Rate { per_sec, burst });
        assert_eq!(rates.client.messages, rate(10, 10));
        assert_eq!(rates.client.bytes, rate(65536, 1048576));
        assert_eq!(rates.backend.messages, rate(100, 500));
        assert_eq!(rates.backend.bytes, None);
        assert_eq!(rates.grace, Some(std::time::Duration::from_secs(3)));
        assert!(
            !from_toml_str(BASE).unwrap().routes[0]
                .session
                .rates
                .is_set()
        );
    }

    #[test]
    fn a_burst_without_its_rate_and_a_zero_rate_are_errors() {
        let errors = from_toml_str(&format!(
            "{BASE}client_messages_burst = 5\nbackend_messages_per_sec = 0\n"
        ))
        .unwrap_err();
        let text: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
        assert!(
            text.iter()
                .any(|e| e.contains("route[0].client_messages_burst")
                    && e.contains("client_messages_per_sec is not")),
            "{text:?}"
        );
        assert!(
            text.iter()
                .any(|e| e.contains("route[0].backend_messages_per_sec") && e.contains("line 9")),
            "{text:?}"
        );
    }
}
