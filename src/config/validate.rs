//! File mirror → runtime [`Config`]: every check, every error collected, each with key and line.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::ops::Range;
use std::path::Path;
use std::time::Duration;

use toml::Spanned;

use super::file::{FileConfig, FileRoute, FileTls, SpStr};
use super::parse::line_of;
use super::units::{parse_duration, parse_size};
use super::*;

/// Reads `path` and validates it. Errors carry the file name as their source.
pub fn load_file(path: &Path) -> Result<Config, ConfigErrors> {
    let source = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| ConfigErrors {
        source: source.clone(),
        errors: vec![ConfigError {
            key: "(file)".into(),
            line: None,
            message: format!("cannot read config file: {e}"),
        }],
    })?;
    let base = path.parent().unwrap_or(Path::new("."));
    from_toml_str_in(&text, base).map_err(|errors| ConfigErrors { source, errors })
}

/// Parses and validates a config held in a string; relative file paths are taken from the
/// current directory.
pub fn from_toml_str(text: &str) -> Result<Config, Vec<ConfigError>> {
    from_toml_str_in(text, Path::new("."))
}

/// Parses and validates a config; relative file paths (certificates, keys) are resolved
/// against `base`, the config file's directory.
pub fn from_toml_str_in(text: &str, base: &Path) -> Result<Config, Vec<ConfigError>> {
    // Unknown keys and wrong types, all of them; what remains is validated for the rest.
    let mut parsed = super::parse::parse::<FileConfig>(text);
    let Some(file) = parsed.file.take() else {
        return Err(parsed.errors);
    };
    let mut v = Validator {
        text,
        base,
        errors: Vec::new(),
    };
    let config = v.config(file);
    v.errors.retain(|e| !parsed.already_reported(&e.key));
    v.errors.extend(parsed.errors);
    if v.errors.is_empty() {
        Ok(config)
    } else {
        v.errors.sort_by_key(|e| e.line.unwrap_or(0));
        Err(v.errors)
    }
}

/// The session keys of a `[timeouts]` or `[route.timeouts]` table.
#[derive(Default, Clone, Copy)]
struct SessionKeys<'a> {
    ping_interval: Option<&'a SpStr>,
    pong_timeout: Option<&'a SpStr>,
    idle: Option<&'a SpStr>,
    max_lifetime: Option<&'a SpStr>,
}

/// Collects errors while turning the file mirror into [`Config`]. Policy modules validate
/// their own tables through it (`crate::policy::jwt`, `crate::policy::forward_auth`).
pub(crate) struct Validator<'a> {
    text: &'a str,
    /// The config file's directory: relative file paths are resolved against it.
    pub(crate) base: &'a Path,
    errors: Vec<ConfigError>,
}

impl Validator<'_> {
    /// Records one error; `span` (from a [`Spanned`] value) gives the line.
    pub(crate) fn err(
        &mut self,
        key: impl Into<String>,
        span: Option<Range<usize>>,
        message: impl Into<String>,
    ) {
        let line = span.map(|s| line_of(self.text, s.start));
        self.errors.push(ConfigError {
            key: key.into(),
            line,
            message: message.into(),
        });
    }

    /// A positive duration such as `"5s"`; errors name `key`.
    pub(crate) fn duration(
        &mut self,
        key: &str,
        value: Option<&SpStr>,
        default: Duration,
    ) -> Duration {
        let Some(value) = value else { return default };
        match parse_duration(value.get_ref()) {
            Ok(d) if d.is_zero() => {
                self.err(key, Some(value.span()), "must be greater than zero");
                default
            }
            Ok(d) => d,
            Err(msg) => {
                self.err(key, Some(value.span()), msg);
                default
            }
        }
    }

    /// A duration where `"0"` or `"off"` turns the feature off.
    pub(crate) fn optional_duration(
        &mut self,
        key: &str,
        value: Option<&SpStr>,
        default: Option<Duration>,
    ) -> Option<Duration> {
        let Some(value) = value else { return default };
        if value.get_ref().trim() == "off" {
            return None;
        }
        match parse_duration(value.get_ref()) {
            Ok(d) if d.is_zero() => None,
            Ok(d) => Some(d),
            Err(msg) => {
                self.err(key, Some(value.span()), format!("{msg} (or \"off\")"));
                default
            }
        }
    }

    /// A size where `"0"` or `"off"` means no limit.
    fn optional_size(
        &mut self,
        key: &str,
        value: Option<&SpStr>,
        default: Option<u64>,
    ) -> Option<u64> {
        let Some(value) = value else { return default };
        if value.get_ref().trim() == "off" {
            return None;
        }
        match parse_size(value.get_ref()) {
            Ok(0) => None,
            Ok(n) => Some(n),
            Err(msg) => {
                self.err(key, Some(value.span()), format!("{msg} (or \"off\")"));
                default
            }
        }
    }

    /// Session settings: `table` (e.g. `timeouts`) over `defaults`.
    fn session(
        &mut self,
        prefix: &str,
        t: SessionKeys<'_>,
        max_message: (&str, Option<&SpStr>),
        defaults: &SessionConfig,
    ) -> SessionConfig {
        SessionConfig {
            max_message: self.optional_size(max_message.0, max_message.1, defaults.max_message),
            ping_interval: self.optional_duration(
                &format!("{prefix}.ping_interval"),
                t.ping_interval,
                defaults.ping_interval,
            ),
            pong_timeout: self.duration(
                &format!("{prefix}.pong_timeout"),
                t.pong_timeout,
                defaults.pong_timeout,
            ),
            idle_timeout: self.optional_duration(
                &format!("{prefix}.idle"),
                t.idle,
                defaults.idle_timeout,
            ),
            max_lifetime: self.optional_duration(
                &format!("{prefix}.max_lifetime"),
                t.max_lifetime,
                defaults.max_lifetime,
            ),
        }
    }

    fn size(&mut self, key: &str, value: Option<&SpStr>, default: usize) -> usize {
        let Some(value) = value else { return default };
        match parse_size(value.get_ref()) {
            Ok(n) => usize::try_from(n).unwrap_or(usize::MAX),
            Err(msg) => {
                self.err(key, Some(value.span()), msg);
                default
            }
        }
    }

    fn config(&mut self, file: FileConfig) -> Config {
        let timeouts = file.timeouts.unwrap_or_default();
        let handshake = self.duration(
            "timeouts.handshake",
            timeouts.handshake.as_ref(),
            DEFAULT_HANDSHAKE_TIMEOUT,
        );
        let backend_connect = self.duration(
            "timeouts.backend_connect",
            timeouts.backend_connect.as_ref(),
            DEFAULT_BACKEND_CONNECT_TIMEOUT,
        );
        let backend_handshake = self.duration(
            "timeouts.backend_handshake",
            timeouts.backend_handshake.as_ref(),
            DEFAULT_BACKEND_HANDSHAKE_TIMEOUT,
        );

        let limits_file = file.limits.unwrap_or_default();
        let session = self.session(
            "timeouts",
            SessionKeys {
                ping_interval: timeouts.ping_interval.as_ref(),
                pong_timeout: timeouts.pong_timeout.as_ref(),
                idle: timeouts.idle.as_ref(),
                max_lifetime: timeouts.max_lifetime.as_ref(),
            },
            ("limits.max_message", limits_file.max_message.as_ref()),
            &SessionConfig::default(),
        );
        let mut limits = Limits {
            max_header_bytes: self.size(
                "limits.max_header_bytes",
                limits_file.max_header_bytes.as_ref(),
                DEFAULT_MAX_HEADER_BYTES,
            ),
            max_headers: DEFAULT_MAX_HEADERS,
            max_error_body: self.size(
                "limits.max_error_body",
                limits_file.max_error_body.as_ref(),
                DEFAULT_MAX_ERROR_BODY,
            ),
        };
        if limits.max_header_bytes < MIN_HEADER_BYTES {
            let span = limits_file.max_header_bytes.as_ref().map(|s| s.span());
            self.err(
                "limits.max_header_bytes",
                span,
                format!("must be at least {MIN_HEADER_BYTES} bytes (8KiB)"),
            );
            limits.max_header_bytes = DEFAULT_MAX_HEADER_BYTES;
        }
        if let Some(n) = &limits_file.max_headers {
            match usize::try_from(*n.get_ref()) {
                Ok(n) if (1..=10_000).contains(&n) => limits.max_headers = n,
                _ => self.err(
                    "limits.max_headers",
                    Some(n.span()),
                    "must be between 1 and 10000",
                ),
            }
        }

        let shutdown_grace = self.duration(
            "shutdown.grace",
            file.shutdown.as_ref().and_then(|s| s.grace.as_ref()),
            DEFAULT_SHUTDOWN_GRACE,
        );

        let mut listeners = Vec::new();
        let mut seen_addrs = HashSet::new();
        if file.listener.is_empty() {
            self.err(
                "listener",
                None,
                "no [[listener]]: add one, e.g. [[listener]] listen = \"127.0.0.1:8080\"",
            );
        }
        for (i, l) in file.listener.iter().enumerate() {
            let key = format!("listener[{i}]");
            let span = l.span();
            let l = l.get_ref();
            let handshake_timeout = self.duration(
                &format!("{key}.handshake_timeout"),
                l.handshake_timeout.as_ref(),
                handshake,
            );
            let Some(listen) = &l.listen else {
                self.err(
                    format!("{key}.listen"),
                    Some(span),
                    "missing: the address to listen on, e.g. \"0.0.0.0:8080\"",
                );
                continue;
            };
            match listen.get_ref().parse::<SocketAddr>() {
                Ok(addr) => {
                    if addr.port() != 0 && !seen_addrs.insert(addr) {
                        self.err(format!("{key}.listen"), Some(listen.span()), format!("{addr} is used by an earlier listener"));
                    }
                    let tls = l.tls.as_ref().and_then(|t| self.tls(&format!("{key}.tls"), t));
                    let trusted_proxies = self.cidrs(
                        &format!("{key}.trusted_proxies"),
                        l.trusted_proxies.as_ref(),
                    );
                    listeners.push(ListenerConfig {
                        addr,
                        handshake_timeout,
                        tls,
                        proxy_protocol: l.proxy_protocol.unwrap_or(false),
                        http2: l.http2.unwrap_or(true),
                        tls_watch: l.tls.as_ref().and_then(|t| {
                            self.optional_duration(
                                &format!("{key}.tls.watch_interval"),
                                t.get_ref().watch_interval.as_ref(),
                                Some(DEFAULT_TLS_WATCH_INTERVAL),
                            )
                        }),
                        trusted_proxies: trusted_proxies.into(),
                    });
                }
                Err(_) => self.err(
                    format!("{key}.listen"),
                    Some(listen.span()),
                    format!(
                        "{:?} is not an IP address with a port, e.g. \"0.0.0.0:8080\" or \"[::]:8080\"",
                        listen.get_ref()
                    ),
                ),
            }
        }

        let mut routes: Vec<RouteConfig> = Vec::new();
        let mut names = HashSet::new();
        let mut places = HashSet::new();
        if file.route.is_empty() {
            self.err(
                "route",
                None,
                "no [[route]]: add at least one route with a path and backends",
            );
        }
        for (i, r) in file.route.iter().enumerate() {
            let key = format!("route[{i}]");
            if let Some(route) = self.route(&key, r, backend_connect, backend_handshake, &session) {
                if !names.insert(route.name.clone()) {
                    let span = r.get_ref().name.as_ref().map(|n| n.span());
                    self.err(
                        format!("{key}.name"),
                        span,
                        format!("route name {:?} is used twice", route.name),
                    );
                }
                if !places.insert((route.host.clone(), route.path.clone())) {
                    self.err(
                        format!("{key}.path"),
                        r.get_ref().path.as_ref().map(|p| p.span()),
                        format!(
                            "an earlier route already serves host {} and path {:?}",
                            route.host.as_deref().unwrap_or("(any)"),
                            route.path
                        ),
                    );
                }
                routes.push(route);
            }
        }

        let http2 = self.http2(file.http2.as_ref());
        Config {
            listeners,
            routes,
            limits,
            http2,
            shutdown_grace,
            pages: Vec::new(),
        }
    }

    /// A listener's TLS table: every certificate loaded and checked now, so `wsgate check`
    /// finds a missing file or a key that does not match its certificate.
    fn tls(
        &mut self,
        key: &str,
        t: &Spanned<FileTls>,
    ) -> Option<std::sync::Arc<crate::tls::TlsListener>> {
        let before = self.errors.len();
        let mut resolver = crate::tls::SniResolver::default();
        let mut sources = Vec::new();
        let t_span = t.span();
        let t = t.get_ref();
        let pair = |v: &mut Self,
                    k: &str,
                    cert: Option<&SpStr>,
                    keyf: Option<&SpStr>,
                    span: Range<usize>| {
            match (cert, keyf) {
                (Some(c), Some(kf)) => {
                    let cp = v.base.join(c.get_ref());
                    let kp = v.base.join(kf.get_ref());
                    match crate::tls::load_certified_key(&cp, &kp) {
                        Ok(ck) => {
                            if let Some(w) =
                                crate::tls::validity_warning(&ck, std::time::SystemTime::now())
                            {
                                let line = line_of(v.text, c.span().start);
                                tracing::warn!(key = %format!("{k}.cert"), line, file = %cp.display(), "{w}");
                            }
                            Some((ck, cp, kp))
                        }
                        Err(crate::tls::PairError::Cert(msg)) => {
                            v.err(format!("{k}.cert"), Some(c.span()), msg);
                            None
                        }
                        Err(crate::tls::PairError::Key(msg)) => {
                            v.err(format!("{k}.key"), Some(kf.span()), msg);
                            None
                        }
                    }
                }
                (Some(_), None) => {
                    v.err(
                        format!("{k}.key"),
                        Some(span),
                        "missing: the private key file for the certificate",
                    );
                    None
                }
                (None, Some(_)) => {
                    v.err(
                        format!("{k}.cert"),
                        Some(span),
                        "missing: the certificate chain file for the key",
                    );
                    None
                }
                (None, None) => None,
            }
        };
        if let Some((ck, cert, keyf)) =
            pair(self, key, t.cert.as_ref(), t.key.as_ref(), t_span.clone())
        {
            resolver.set_default(ck);
            sources.push(crate::tls::CertSource {
                hosts: Vec::new(),
                cert,
                key: keyf,
            });
        } else if t.sni.is_empty() && self.errors.len() == before {
            self.err(
                format!("{key}.cert"),
                Some(t_span.clone()),
                "missing: a certificate (cert and key) or [[...tls.sni]] entries",
            );
        }
        for (i, sni) in t.sni.iter().enumerate() {
            let k = format!("{key}.sni[{i}]");
            let span = sni.span();
            let sni = sni.get_ref();
            let hosts: Vec<String> = match &sni.hosts {
                Some(h) if !h.get_ref().is_empty() => h
                    .get_ref()
                    .iter()
                    .map(|s| s.get_ref().to_ascii_lowercase())
                    .collect(),
                Some(h) => {
                    self.err(
                        format!("{k}.hosts"),
                        Some(h.span()),
                        "must list at least one host name",
                    );
                    continue;
                }
                None => {
                    self.err(
                        format!("{k}.hosts"),
                        Some(span),
                        "missing: the SNI names this certificate serves",
                    );
                    continue;
                }
            };
            if sni.cert.is_none() && sni.key.is_none() {
                self.err(
                    format!("{k}.cert"),
                    Some(span),
                    "missing: cert and key files",
                );
                continue;
            }
            if let Some((ck, cert, keyf)) =
                pair(self, &k, sni.cert.as_ref(), sni.key.as_ref(), span)
            {
                for h in &hosts {
                    resolver.add(h, ck.clone());
                }
                sources.push(crate::tls::CertSource {
                    hosts,
                    cert,
                    key: keyf,
                });
            }
        }
        if self.errors.len() != before {
            return None;
        }
        let required = match t.client_auth.as_ref().map(|m| (m, m.get_ref().as_str())) {
            None | Some((_, "required")) => true,
            Some((_, "optional")) => false,
            Some((m, other)) => {
                self.err(
                    format!("{key}.client_auth"),
                    Some(m.span()),
                    format!("{other:?}: use \"required\" or \"optional\""),
                );
                return None;
            }
        };
        let client_auth = match &t.client_ca {
            Some(ca) => Some(crate::tls::ClientAuth {
                ca: self.base.join(ca.get_ref()),
                required,
            }),
            None => {
                if let Some(m) = &t.client_auth {
                    self.err(
                        format!("{key}.client_auth"),
                        Some(m.span()),
                        "needs client_ca: the CA bundle client certificates must chain to",
                    );
                    return None;
                }
                None
            }
        };
        let subject_header = match &t.client_subject_header {
            None => None,
            Some(h) => match http::HeaderName::from_bytes(h.get_ref().as_bytes()) {
                Ok(name) if client_auth.is_some() => Some(name),
                Ok(_) => {
                    self.err(
                        format!("{key}.client_subject_header"),
                        Some(h.span()),
                        "needs client_ca (no client certificates are asked for)",
                    );
                    return None;
                }
                Err(_) => {
                    self.err(
                        format!("{key}.client_subject_header"),
                        Some(h.span()),
                        format!("{:?} is not a header name", h.get_ref()),
                    );
                    return None;
                }
            },
        };
        match crate::tls::TlsListener::with_client_auth(
            sources,
            resolver,
            client_auth.as_ref(),
            subject_header,
        ) {
            Ok(l) => Some(std::sync::Arc::new(l)),
            Err(msg) => {
                let k = if t.client_ca.is_some() {
                    format!("{key}.client_ca")
                } else {
                    key.to_string()
                };
                let span = t.client_ca.as_ref().map_or(t_span, |c| c.span());
                self.err(k, Some(span), msg);
                None
            }
        }
    }

    fn route(
        &mut self,
        key: &str,
        r: &Spanned<FileRoute>,
        connect_default: Duration,
        handshake_default: Duration,
        session_default: &SessionConfig,
    ) -> Option<RouteConfig> {
        let span = r.span();
        let r = r.get_ref();
        let errors_before = self.errors.len();

        let name = match &r.name {
            Some(n) if !n.get_ref().trim().is_empty() => n.get_ref().trim().to_string(),
            Some(n) => {
                self.err(format!("{key}.name"), Some(n.span()), "must not be empty");
                String::new()
            }
            None => {
                self.err(
                    format!("{key}.name"),
                    Some(span.clone()),
                    "missing: every route needs a name (it appears in the logs)",
                );
                String::new()
            }
        };

        let host = r.host.as_ref().and_then(|h| {
            let value = h.get_ref().trim().to_ascii_lowercase();
            if valid_host_pattern(&value) {
                Some(value)
            } else {
                self.err(
                    format!("{key}.host"),
                    Some(h.span()),
                    format!("{:?} is not a host name (no scheme, port or path; \"*.example.com\" for subdomains)", h.get_ref()),
                );
                None
            }
        });

        let path = match &r.path {
            Some(p) if p.get_ref().starts_with('/') && !p.get_ref().contains(['?', '#', ' ']) => {
                p.get_ref().clone()
            }
            Some(p) => {
                self.err(
                    format!("{key}.path"),
                    Some(p.span()),
                    format!(
                        "{:?} must start with '/' and hold no query or fragment",
                        p.get_ref()
                    ),
                );
                String::new()
            }
            None => {
                self.err(
                    format!("{key}.path"),
                    Some(span.clone()),
                    "missing: the path prefix this route serves, e.g. \"/\" or \"/chat\"",
                );
                String::new()
            }
        };

        let mut backends = Vec::new();
        match &r.backends {
            None => self.err(
                format!("{key}.backends"),
                Some(span.clone()),
                "missing: a list of backend URLs, e.g. [\"ws://127.0.0.1:9000\"]",
            ),
            Some(list) if list.get_ref().is_empty() => self.err(
                format!("{key}.backends"),
                Some(list.span()),
                "must list at least one backend URL",
            ),
            Some(list) => {
                for (j, b) in list.get_ref().iter().enumerate() {
                    let (url, skip) = match b.get_ref() {
                        super::file::FileBackend::Url(u) => (u, false),
                        super::file::FileBackend::Table(t) => {
                            (&t.url, t.insecure_skip_verify.unwrap_or(false))
                        }
                    };
                    match parse_backend_url(url) {
                        Ok(url) if skip && !url.tls => self.err(
                            format!("{key}.backends[{j}].insecure_skip_verify"),
                            Some(b.span()),
                            "only means something for a wss:// backend",
                        ),
                        Ok(mut url) => {
                            url.insecure_skip_verify = skip;
                            backends.push(url)
                        }
                        Err(msg) => self.err(format!("{key}.backends[{j}]"), Some(b.span()), msg),
                    }
                }
            }
        }

        let balance = match r.balance.as_ref().map(|b| (b, b.get_ref().as_str())) {
            None | Some((_, "round_robin")) => Balance::RoundRobin,
            Some((_, "least_conn")) => Balance::LeastConn,
            Some((b, other)) => {
                self.err(
                    format!("{key}.balance"),
                    Some(b.span()),
                    format!("unknown balance {other:?}: use \"round_robin\" or \"least_conn\""),
                );
                Balance::RoundRobin
            }
        };

        let t = r.timeouts.as_ref();
        let backend_connect_timeout = self.duration(
            &format!("{key}.timeouts.backend_connect"),
            t.and_then(|t| t.backend_connect.as_ref()),
            connect_default,
        );
        let backend_handshake_timeout = self.duration(
            &format!("{key}.timeouts.backend_handshake"),
            t.and_then(|t| t.backend_handshake.as_ref()),
            handshake_default,
        );

        let session = self.session(
            &format!("{key}.timeouts"),
            t.map(|t| SessionKeys {
                ping_interval: t.ping_interval.as_ref(),
                pong_timeout: t.pong_timeout.as_ref(),
                idle: t.idle.as_ref(),
                max_lifetime: t.max_lifetime.as_ref(),
            })
            .unwrap_or_default(),
            (&format!("{key}.max_message"), r.max_message.as_ref()),
            session_default,
        );

        let (backend_tls, backend_tls_unverified) =
            self.backend_tls(key, &name, r.backend_tls.as_ref(), &backends);
        let policy = crate::policy::validate_route(self, key, r);

        (self.errors.len() == errors_before).then_some(RouteConfig {
            name,
            host,
            path,
            backends,
            backend_tls,
            backend_tls_unverified,
            balance,
            preserve_host: r.preserve_host.unwrap_or(false),
            backend_connect_timeout,
            backend_handshake_timeout,
            session,
            policy: std::sync::Arc::new(policy),
        })
    }
}

impl Validator<'_> {
    /// `[http2]`.
    fn http2(&mut self, f: Option<&super::file::FileHttp2>) -> Http2Config {
        let d = Http2Config::default();
        let Some(f) = f else { return d };
        let count =
            |v: &mut Self, key: &str, value: Option<&Spanned<i64>>, default: usize, max: i64| {
                let Some(value) = value else { return default };
                match *value.get_ref() {
                    n if (1..=max).contains(&n) => n as usize,
                    _ => {
                        v.err(
                            format!("http2.{key}"),
                            Some(value.span()),
                            format!("must be between 1 and {max}"),
                        );
                        default
                    }
                }
            };
        Http2Config {
            max_concurrent_streams: count(
                self,
                "max_concurrent_streams",
                f.max_concurrent_streams.as_ref(),
                d.max_concurrent_streams as usize,
                10_000,
            ) as u32,
            max_pending_accept_reset_streams: count(
                self,
                "max_pending_accept_reset_streams",
                f.max_pending_accept_reset_streams.as_ref(),
                d.max_pending_accept_reset_streams,
                100_000,
            ),
            max_local_error_reset_streams: count(
                self,
                "max_local_error_reset_streams",
                f.max_local_error_reset_streams.as_ref(),
                d.max_local_error_reset_streams,
                100_000,
            ),
            keep_alive_interval: self.optional_duration(
                "http2.keep_alive_interval",
                f.keep_alive_interval.as_ref(),
                d.keep_alive_interval,
            ),
            keep_alive_timeout: self.duration(
                "http2.keep_alive_timeout",
                f.keep_alive_timeout.as_ref(),
                d.keep_alive_timeout,
            ),
        }
    }

    /// A list of CIDR blocks or addresses.
    fn cidrs(
        &mut self,
        key: &str,
        list: Option<&Spanned<Vec<SpStr>>>,
    ) -> Vec<crate::policy::forwarding::Cidr> {
        let mut out = Vec::new();
        for (i, s) in list
            .map(|l| l.get_ref().as_slice())
            .unwrap_or_default()
            .iter()
            .enumerate()
        {
            match crate::policy::forwarding::Cidr::parse(s.get_ref().trim()) {
                Ok(c) => out.push(c),
                Err(m) => self.err(format!("{key}[{i}]"), Some(s.span()), m),
            }
        }
        out
    }

    /// TLS client settings for a route's `wss://` backends, built (and files checked) now.
    fn backend_tls(
        &mut self,
        key: &str,
        route: &str,
        t: Option<&Spanned<super::file::FileBackendTls>>,
        backends: &[BackendUrl],
    ) -> (
        Option<std::sync::Arc<rustls::ClientConfig>>,
        Option<std::sync::Arc<rustls::ClientConfig>>,
    ) {
        if !backends.iter().any(|b| b.tls) {
            if let Some(t) = t {
                self.err(
                    format!("{key}.backend_tls"),
                    Some(t.span()),
                    "set, but no backend of this route is wss://",
                );
            }
            return (None, None);
        }
        let default = super::file::FileBackendTls::default();
        let (span, t) = match t {
            Some(t) => (Some(t.span()), t.get_ref()),
            None => (None, &default),
        };
        let ca = t.ca.as_ref().map(|c| self.base.join(c.get_ref()));
        let client_cert = t.client_cert.as_ref().map(|c| self.base.join(c.get_ref()));
        let client_key = t.client_key.as_ref().map(|c| self.base.join(c.get_ref()));
        let client_auth = match (&client_cert, &client_key) {
            (Some(c), Some(k)) => Some((c.as_path(), k.as_path())),
            (None, None) => None,
            _ => {
                self.err(
                    format!("{key}.backend_tls"),
                    span,
                    "client_cert and client_key go together",
                );
                return (None, None);
            }
        };
        // Backends marked `insecure_skip_verify` get the same settings without verification.
        let mut unverified = None;
        for b in backends.iter().filter(|b| b.insecure_skip_verify) {
            tracing::warn!(
                route,
                backend = %b.url,
                "insecure_skip_verify is on for this backend: its certificate is NOT verified (development only)"
            );
            if unverified.is_none() {
                let opts = crate::tls::BackendTlsOptions {
                    ca: None,
                    insecure_skip_verify: true,
                    client_auth,
                };
                unverified = crate::tls::backend_client_config(&opts).ok();
            }
        }
        let skip = t.insecure_skip_verify.unwrap_or(false);
        if skip {
            tracing::warn!(
                route,
                "backend_tls.insecure_skip_verify is on: backend certificates are NOT verified (development only)"
            );
        }
        let opts = crate::tls::BackendTlsOptions {
            ca: ca.as_deref(),
            insecure_skip_verify: skip,
            client_auth,
        };
        let verified = match crate::tls::backend_client_config(&opts) {
            Ok(c) => Some(c),
            Err(crate::tls::PairError::Cert(m)) => {
                let (k, sp) = match &t.ca {
                    Some(ca) => (format!("{key}.backend_tls.ca"), Some(ca.span())),
                    None => (
                        format!("{key}.backend_tls.client_cert"),
                        t.client_cert.as_ref().map(|c| c.span()),
                    ),
                };
                self.err(k, sp, m);
                None
            }
            Err(crate::tls::PairError::Key(m)) => {
                self.err(
                    format!("{key}.backend_tls.client_key"),
                    t.client_key.as_ref().map(|c| c.span()),
                    m,
                );
                None
            }
        };
        (verified, unverified)
    }
}

/// A host name or `*.`-prefixed wildcard: letters, digits, `-`, `.`; or an IP literal.
fn valid_host_pattern(h: &str) -> bool {
    let name = h.strip_prefix("*.").unwrap_or(h);
    if name.parse::<std::net::IpAddr>().is_ok() {
        return !h.starts_with("*.");
    }
    if let Some(inner) = name.strip_prefix('[').and_then(|n| n.strip_suffix(']')) {
        return inner.parse::<std::net::Ipv6Addr>().is_ok();
    }
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

/// Parses `ws://host[:port][/path][?query]` or the same with `wss://`.
pub fn parse_backend_url(s: &str) -> Result<BackendUrl, String> {
    let (rest, tls) = if let Some(rest) = s.strip_prefix("ws://") {
        (rest, false)
    } else if let Some(rest) = s.strip_prefix("wss://") {
        (rest, true)
    } else {
        return Err(format!("{s:?} is not a ws:// or wss:// URL"));
    };
    let default_port = if tls { 443 } else { 80 };
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    if authority.contains('@') {
        return Err(format!("{s:?}: user info in backend URLs is not supported"));
    }
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (h, after) = v6
            .split_once(']')
            .ok_or_else(|| format!("{s:?}: unclosed '[' in IPv6 address"))?;
        h.parse::<std::net::Ipv6Addr>()
            .map_err(|_| format!("{s:?}: {h:?} is not an IPv6 address"))?;
        let port = match after.strip_prefix(':') {
            Some(p) => Some(p),
            None if after.is_empty() => None,
            None => return Err(format!("{s:?}: unexpected {after:?} after the address")),
        };
        (format!("[{h}]"), port)
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h.to_string(), Some(p)),
            None => (authority.to_string(), None),
        }
    };
    if host.is_empty()
        || !(host.starts_with('[') || valid_host_pattern(&host))
        || host.starts_with("*.")
    {
        return Err(format!("{s:?}: missing or invalid host"));
    }
    let port = match port {
        None => default_port,
        Some(p) => p
            .parse::<u16>()
            .ok()
            .filter(|&p| p != 0)
            .ok_or_else(|| format!("{s:?}: {p:?} is not a port number"))?,
    };
    let (path, query) = match tail.split_once('?') {
        Some((p, q)) => (p, Some(q.to_string())),
        None => (tail, None),
    };
    if tail.contains('#') || tail.contains(' ') {
        return Err(format!(
            "{s:?}: fragments and spaces are not allowed in backend URLs"
        ));
    }
    let path = (!path.is_empty()).then(|| path.to_string());
    let authority = if port == default_port {
        host.clone()
    } else {
        format!("{host}:{port}")
    };
    Ok(BackendUrl {
        url: s.to_string(),
        tls,
        host: host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string(),
        port,
        authority,
        path,
        query: query.filter(|q| !q.is_empty()),
        insecure_skip_verify: false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backend_urls() {
        let u = parse_backend_url("ws://127.0.0.1:9000").unwrap();
        assert_eq!(
            (u.host.as_str(), u.port, u.path.as_deref()),
            ("127.0.0.1", 9000, None)
        );
        assert_eq!(u.authority, "127.0.0.1:9000");
        let u = parse_backend_url("ws://chat.internal/ws/v2?tenant=a").unwrap();
        assert_eq!(u.port, 80);
        assert_eq!(u.authority, "chat.internal");
        assert_eq!(u.path.as_deref(), Some("/ws/v2"));
        assert_eq!(u.query.as_deref(), Some("tenant=a"));
        let u = parse_backend_url("ws://[::1]:81/").unwrap();
        assert_eq!(
            (u.host.as_str(), u.port, u.authority.as_str()),
            ("::1", 81, "[::1]:81")
        );
        assert!(parse_backend_url("http://x").is_err());
        assert!(!parse_backend_url("ws://h").unwrap().tls);
        assert!(parse_backend_url("ws://:80").is_err());
        assert!(parse_backend_url("ws://h:0").is_err());
        assert!(parse_backend_url("ws://h:99999").is_err());
        let u = parse_backend_url("wss://h/x").unwrap();
        assert!(u.tls);
        assert_eq!((u.port, u.authority.as_str()), (443, "h"));
    }
}
