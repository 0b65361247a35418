//! A route's backend selection keys: `balance` and `hash_key`, `[route.health]` (active
//! checks and passive ejection), `sticky` and `slow_start`.

use std::time::Duration;

use toml::Spanned;

use super::{SpStr, Validator};
use crate::backend::sticky::StickyKey;
use crate::config::file::{FileHealth, FileRoute, FileSticky};
use crate::config::*;

impl Validator<'_> {
    /// `balance` and, for `"hash"`, `hash_key`.
    pub(super) fn balance(&mut self, key: &str, r: &FileRoute) -> Balance {
        let balance = match r.balance.as_ref().map(|b| (b, b.get_ref().as_str())) {
            None | Some((_, "round_robin")) => Balance::RoundRobin,
            Some((_, "least_conn")) => Balance::LeastConn,
            Some((_, "hash")) => Balance::Hash(self.hash_key(key, r)),
            Some((b, other)) => {
                self.err(
                    format!("{key}.balance"),
                    Some(b.span()),
                    format!(
                        "unknown balance {other:?}: use \"round_robin\", \"least_conn\" or \"hash\""
                    ),
                );
                Balance::RoundRobin
            }
        };
        if let (Some(k), false) = (&r.hash_key, matches!(balance, Balance::Hash(_))) {
            self.err(
                format!("{key}.hash_key"),
                Some(k.span()),
                "set, but balance is not \"hash\"",
            );
        }
        balance
    }

    fn hash_key(&mut self, key: &str, r: &FileRoute) -> HashKey {
        let Some(value) = &r.hash_key else {
            return DEFAULT_HASH_KEY;
        };
        let text = value.get_ref().trim();
        let named = |prefix: &str| {
            text.strip_prefix(prefix)
                .map(str::trim)
                .filter(|n| !n.is_empty())
        };
        let parsed = if text == "ip" {
            Some(HashKey::Ip)
        } else if let Some(n) = named("header:") {
            http::HeaderName::from_bytes(n.as_bytes())
                .ok()
                .map(HashKey::Header)
        } else if let Some(n) = named("cookie:") {
            if !valid_cookie_name(n) {
                // It would never match: every client balanced round robin, silently.
                self.err(
                    format!("{key}.hash_key"),
                    Some(value.span()),
                    format!("{n:?} is not a cookie name (RFC 6265 token)"),
                );
                return DEFAULT_HASH_KEY;
            }
            Some(HashKey::Cookie(n.to_string()))
        } else if let Some(n) = named("query:") {
            Some(HashKey::Query(n.to_string()))
        } else {
            named("claim:").map(|n| HashKey::Claim(n.to_string()))
        };
        let k = format!("{key}.hash_key");
        match parsed {
            Some(HashKey::Claim(_))
                if r.auth
                    .as_ref()
                    .and_then(|a| a.get_ref().jwt.as_ref())
                    .is_none() =>
            {
                self.err(
                    k,
                    Some(value.span()),
                    "a claim needs a verified token: add [route.auth.jwt]",
                );
                DEFAULT_HASH_KEY
            }
            Some(h) => h,
            None => {
                self.err(
                    k,
                    Some(value.span()),
                    format!(
                        "{text:?} is not a hash key: use \"ip\", \"header:NAME\", \"cookie:NAME\", \
                         \"query:NAME\" or \"claim:NAME\""
                    ),
                );
                DEFAULT_HASH_KEY
            }
        }
    }

    /// `[route.health]`.
    pub(super) fn health(&mut self, key: &str, h: Option<&Spanned<FileHealth>>) -> HealthConfig {
        let Some(h) = h else {
            return HealthConfig::default();
        };
        let h = h.get_ref();
        let key = format!("{key}.health");
        let k = |name: &str| format!("{key}.{name}");
        let check = self.choice(
            &k("check"),
            h.check.as_ref(),
            &[
                ("websocket", Some(CheckKind::WebSocket)),
                ("http", Some(CheckKind::Http)),
                ("tcp", Some(CheckKind::Tcp)),
            ],
            None,
        );
        let path = h.path.as_ref().and_then(|p| {
            let text = p.get_ref();
            if text.starts_with('/') && !text.contains(['#', ' ']) {
                Some(text.clone())
            } else {
                self.err(
                    k("path"),
                    Some(p.span()),
                    format!("{text:?} must start with '/' and hold no fragment or space"),
                );
                None
            }
        });
        let interval = self.duration(&k("interval"), h.interval.as_ref(), DEFAULT_CHECK_INTERVAL);
        let timeout = self.duration(&k("timeout"), h.timeout.as_ref(), DEFAULT_CHECK_TIMEOUT);
        let healthy_threshold = self.whole_at_least(
            &k("healthy_threshold"),
            h.healthy_threshold.as_ref(),
            DEFAULT_HEALTHY_THRESHOLD,
            1,
        );
        let unhealthy_threshold = self.whole_at_least(
            &k("unhealthy_threshold"),
            h.unhealthy_threshold.as_ref(),
            DEFAULT_UNHEALTHY_THRESHOLD,
            1,
        );
        // Where each key an active check takes was written (its own line, not the table's).
        let active_keys = [
            ("path", h.path.as_ref().map(Spanned::span)),
            ("interval", h.interval.as_ref().map(Spanned::span)),
            ("timeout", h.timeout.as_ref().map(Spanned::span)),
            (
                "healthy_threshold",
                h.healthy_threshold.as_ref().map(Spanned::span),
            ),
            (
                "unhealthy_threshold",
                h.unhealthy_threshold.as_ref().map(Spanned::span),
            ),
        ];
        // Only when `check` is not written at all: a misspelt one has its own error.
        if h.check.is_none()
            && let Some((name, Some(at))) = active_keys.iter().find(|(_, at)| at.is_some())
        {
            self.err(
                k(name),
                Some(at.clone()),
                "set, but no active check: add check = \"websocket\", \"http\" or \"tcp\"",
            );
        }
        if let (Some(CheckKind::Tcp), Some(p)) = (check, &h.path) {
            self.err(k("path"), Some(p.span()), "a tcp check asks for no path");
        }
        let max_failures = self.whole_at_least(
            &k("max_failures"),
            h.max_failures.as_ref(),
            DEFAULT_MAX_FAILURES,
            0,
        );
        let ejection = self.duration(&k("ejection"), h.ejection.as_ref(), DEFAULT_EJECTION);
        let max_ejection = self.duration(
            &k("max_ejection"),
            h.max_ejection.as_ref(),
            DEFAULT_MAX_EJECTION.max(ejection),
        );
        if max_ejection < ejection
            && let Some(v) = &h.max_ejection
        {
            self.err(
                k("max_ejection"),
                Some(v.span()),
                format!("must not be shorter than ejection ({ejection:?})"),
            );
        }
        let percent = self.whole_at_least(
            &k("max_ejected_percent"),
            h.max_ejected_percent.as_ref(),
            u32::from(DEFAULT_MAX_EJECTED_PERCENT),
            0,
        );
        let max_ejected_percent = match u8::try_from(percent) {
            Ok(p) if p <= 100 => p,
            _ => {
                let sp = h.max_ejected_percent.as_ref().map(|v| v.span());
                self.err(k("max_ejected_percent"), sp, "must be between 0 and 100");
                DEFAULT_MAX_EJECTED_PERCENT
            }
        };
        HealthConfig {
            check: check.map(|kind| ActiveCheck {
                kind,
                path,
                interval,
                timeout,
                healthy_threshold,
                unhealthy_threshold,
            }),
            max_failures,
            ejection,
            max_ejection,
            max_ejected_percent,
        }
    }

    /// A whole number of at least `min`.
    fn whole_at_least(
        &mut self,
        key: &str,
        value: Option<&Spanned<i64>>,
        default: u32,
        min: u32,
    ) -> u32 {
        let Some(value) = value else { return default };
        match u32::try_from(*value.get_ref()) {
            Ok(n) if n >= min => n,
            _ => {
                self.err(
                    key,
                    Some(value.span()),
                    format!("must be a whole number of at least {min}"),
                );
                default
            }
        }
    }

    /// `sticky = { cookie, ttl, secret_env | secret_file }`.
    pub(super) fn sticky(
        &mut self,
        key: &str,
        s: Option<&Spanned<FileSticky>>,
    ) -> Option<StickyConfig> {
        let s = s?;
        let (span, s) = (s.span(), s.get_ref());
        let key = format!("{key}.sticky");
        let cookie = match &s.cookie {
            Some(c) if valid_cookie_name(c.get_ref()) => c.get_ref().clone(),
            Some(c) => {
                self.err(
                    format!("{key}.cookie"),
                    Some(c.span()),
                    format!("{:?} is not a cookie name (RFC 6265 token)", c.get_ref()),
                );
                return None;
            }
            None => {
                self.err(
                    format!("{key}.cookie"),
                    Some(span),
                    "missing: the cookie's name, e.g. cookie = \"wsgate_srv\"",
                );
                return None;
            }
        };
        let ttl = self.duration(&format!("{key}.ttl"), s.ttl.as_ref(), DEFAULT_STICKY_TTL);
        let key_bytes = self.sticky_secret(&key, s.secret_env.as_ref(), s.secret_file.as_ref())?;
        Some(StickyConfig {
            cookie,
            ttl,
            key: match key_bytes {
                Some(secret) => std::sync::Arc::new(StickyKey::new(&secret)),
                None => StickyKey::process_key(),
            },
        })
    }

    /// The configured secret, `Some(None)` for none (the process's random key), `None` on
    /// an error.
    fn sticky_secret(
        &mut self,
        key: &str,
        env: Option<&SpStr>,
        file: Option<&SpStr>,
    ) -> Option<Option<Vec<u8>>> {
        let read = match (env, file) {
            (None, None) => return Some(None),
            (Some(_), Some(f)) => {
                self.err(
                    format!("{key}.secret_file"),
                    Some(f.span()),
                    "one of secret_env and secret_file, not both",
                );
                return None;
            }
            (Some(e), None) => {
                let name = e.get_ref().trim();
                let r = crate::policy::jwt::secret_from_env(name, std::env::var_os(name));
                (r, format!("{key}.secret_env"), e.span())
            }
            (None, Some(f)) => {
                let path = self.base.join(f.get_ref().trim());
                let r = crate::policy::jwt::secret_from_file(&path);
                (r, format!("{key}.secret_file"), f.span())
            }
        };
        match read {
            (Ok(secret), _, _) => Some(Some(secret)),
            (Err(m), k, sp) => {
                self.err(k, Some(sp), m);
                None
            }
        }
    }

    /// `slow_start`: off unless set.
    pub(super) fn slow_start(&mut self, key: &str, r: &FileRoute) -> Option<Duration> {
        self.optional_duration(&format!("{key}.slow_start"), r.slow_start.as_ref(), None)
    }
}

/// RFC 6265 §4.1.1: a cookie name is an RFC 2616 token.
fn valid_cookie_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_graphic() && !b"()<>@,;:\\\"/[]?={}".contains(&b))
}

#[cfg(test)]
mod tests {
    use crate::config::*;

    fn route(extra: &str) -> Result<Config, Vec<ConfigError>> {
        from_toml_str(&format!(
            "[[listener]]\nlisten = \"127.0.0.1:0\"\n[[route]]\nname = \"r\"\npath = \"/\"\n\
             backends = [\"ws://127.0.0.1:1\", {{ url = \"ws://127.0.0.1:2\", weight = 3 }}]\n{extra}"
        ))
    }

    #[test]
    fn defaults() {
        let c = route("").unwrap();
        let r = &c.routes[0];
        assert_eq!(r.balance, Balance::RoundRobin);
        assert_eq!(r.weights, [1, 3]);
        assert_eq!(r.health, HealthConfig::default());
        assert!(r.sticky.is_none() && r.slow_start.is_none());
    }

    #[test]
    fn keys_are_read() {
        let c = route(
            "balance = \"hash\"\nhash_key = \"header:X-User\"\nslow_start = \"30s\"\n\
             sticky = { cookie = \"srv\", ttl = \"2h\" }\n\
             [route.health]\ncheck = \"http\"\npath = \"/healthz\"\ninterval = \"1s\"\n\
             max_failures = 0\nmax_ejected_percent = 100\n",
        )
        .unwrap();
        let r = &c.routes[0];
        assert_eq!(
            r.balance,
            Balance::Hash(HashKey::Header(http::HeaderName::from_static("x-user")))
        );
        assert_eq!(r.slow_start, Some(Duration::from_secs(30)));
        let sticky = r.sticky.as_ref().unwrap();
        assert_eq!(
            (sticky.cookie.as_str(), sticky.ttl),
            ("srv", Duration::from_secs(7200))
        );
        let check = r.health.check.as_ref().unwrap();
        assert_eq!(check.kind, CheckKind::Http);
        assert_eq!(check.path.as_deref(), Some("/healthz"));
        assert_eq!(check.interval, Duration::from_secs(1));
        assert_eq!(check.timeout, DEFAULT_CHECK_TIMEOUT);
        assert_eq!(
            (r.health.max_failures, r.health.max_ejected_percent),
            (0, 100)
        );
    }

    #[test]
    fn errors_name_key_and_line() {
        for (extra, key, line, text) in [
            ("balance = \"random\"\n", "route[0].balance", 7, "\"hash\""),
            (
                "balance = \"hash\"\nhash_key = \"body\"\n",
                "route[0].hash_key",
                8,
                "not a hash key",
            ),
            (
                "hash_key = \"ip\"\n",
                "route[0].hash_key",
                7,
                "not \"hash\"",
            ),
            (
                "balance = \"hash\"\nhash_key = \"cookie:a=b\"\n",
                "route[0].hash_key",
                8,
                "\"a=b\" is not a cookie name",
            ),
            (
                "balance = \"hash\"\nhash_key = \"claim:sub\"\n",
                "route[0].hash_key",
                8,
                "route.auth.jwt",
            ),
            (
                "[route.health]\ncheck = \"ping\"\n",
                "route[0].health.check",
                8,
                "unknown",
            ),
            // Named on its own line, not the table's.
            (
                "[route.health]\n\n\ninterval = \"1s\"\n",
                "route[0].health.interval",
                10,
                "no active check",
            ),
            // A misspelt check is its own error, not also "no active check".
            (
                "[route.health]\ncheck = \"websockt\"\ninterval = \"5s\"\n",
                "route[0].health.check",
                8,
                "unknown",
            ),
            (
                "[route.health]\nmax_ejected_percent = 101\n",
                "route[0].health.max_ejected_percent",
                8,
                "between 0 and 100",
            ),
            (
                "[route.health]\ncheck = \"tcp\"\nunhealthy_threshold = 0\n",
                "route[0].health.unhealthy_threshold",
                9,
                "at least 1",
            ),
            (
                "[route.health]\nejection = \"1m\"\nmax_ejection = \"10s\"\n",
                "route[0].health.max_ejection",
                9,
                "shorter than ejection",
            ),
            (
                "sticky = { ttl = \"1h\" }\n",
                "route[0].sticky.cookie",
                7,
                "missing",
            ),
            (
                "sticky = { cookie = \"a b\" }\n",
                "route[0].sticky.cookie",
                7,
                "cookie name",
            ),
            (
                "sticky = { cookie = \"s\", secret_env = \"WSGATE_TEST_SURELY_UNSET\" }\n",
                "route[0].sticky.secret_env",
                7,
                "not set",
            ),
            ("slow_start = \"soon\"\n", "route[0].slow_start", 7, "off"),
        ] {
            let errors = route(extra).unwrap_err();
            assert_eq!(errors.len(), 1, "{extra}: {errors:?}");
            assert_eq!(errors[0].key, key, "{extra}");
            assert_eq!(errors[0].line, Some(line), "{extra}: {errors:?}");
            assert!(
                errors[0].message.contains(text),
                "{extra}: {}",
                errors[0].message
            );
        }
    }

    #[test]
    fn weights_must_be_positive() {
        let errors = from_toml_str(
            "[[listener]]\nlisten = \"127.0.0.1:0\"\n[[route]]\nname = \"r\"\npath = \"/\"\n\
             backends = [{ url = \"ws://127.0.0.1:2\", weight = 0 }]\n",
        )
        .unwrap_err();
        assert_eq!(errors[0].key, "route[0].backends[0].weight");
        assert_eq!(errors[0].line, Some(6));
    }
}
