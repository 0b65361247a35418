//! `[[listener]]` (address, TLS and its certificates, PROXY protocol, trusted proxies) and
//! `[http2]`. Certificates are loaded through `crate::tls`'s typed constructors now, so that a
//! missing file or a key that does not match its certificate is an error with key and line.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::ops::Range;

use toml::Spanned;

use super::{Validator, entries};
use crate::config::file::{FileHttp2, FileListener, FileTls, SpStr};
use crate::config::{DEFAULT_TLS_WATCH_INTERVAL, Http2Config, ListenerConfig};

/// A validated `tls` table.
pub(super) struct ListenerTls {
    pub listener: std::sync::Arc<crate::tls::TlsListener>,
    /// How often the certificate files are checked for changes; `None`: only on SIGHUP.
    pub watch: Option<std::time::Duration>,
}

impl Validator<'_> {
    /// Every `[[listener]]`; `handshake` is `timeouts.handshake`, the default of each.
    pub(super) fn listeners(
        &mut self,
        file: &[Spanned<FileListener>],
        handshake: std::time::Duration,
    ) -> Vec<ListenerConfig> {
        let mut listeners = Vec::new();
        let mut seen_addrs: Vec<(usize, SocketAddr)> = Vec::new();
        if file.is_empty() {
            self.err(
                "listener",
                None,
                "no [[listener]]: add one, e.g. [[listener]] listen = \"127.0.0.1:8080\"",
            );
        }
        for (i, l) in file.iter().enumerate() {
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
                    if let Some((j, other)) = seen_addrs.iter().find(|(_, o)| overlaps(addr, *o)) {
                        let message = if *other == addr {
                            format!("{addr} is used by an earlier listener (listener[{j}])")
                        } else if other.ip().to_canonical() == addr.ip().to_canonical() {
                            format!(
                                "{addr} is {other}, used by an earlier listener (listener[{j}]): \
                                 an IPv4-mapped address is its IPv4 address"
                            )
                        } else {
                            format!("{addr} and listener[{j}]'s {other} cannot both listen on port {}: the unspecified address takes the port on every address", addr.port())
                        };
                        self.err(format!("{key}.listen"), Some(listen.span()), message);
                    }
                    seen_addrs.push((i, addr));
                    let tls = l
                        .tls
                        .as_ref()
                        .and_then(|t| self.listener_tls(&format!("{key}.tls"), t, Some(addr)));
                    let trusted_proxies = self.cidrs(
                        &format!("{key}.trusted_proxies"),
                        l.trusted_proxies.as_ref(),
                    );
                    let proxy_protocol = l.proxy_protocol.unwrap_or(false);
                    let from_key = format!("{key}.proxy_protocol_from");
                    let proxy_protocol_from = self.cidrs(&from_key, l.proxy_protocol_from.as_ref());
                    if let Some(list) = &l.proxy_protocol_from {
                        if !proxy_protocol {
                            self.err(from_key, Some(list.span()), "only with proxy_protocol = true: it names the peers that send the PROXY header");
                        } else if list.get_ref().is_empty() {
                            self.err(from_key, Some(list.span()), "empty: no peer would send the PROXY header; name the load balancers' addresses, or leave the key out for every peer");
                        }
                    }
                    listeners.push(ListenerConfig {
                        addr,
                        listen_line: Some(self.line(listen.span().start)),
                        handshake_timeout,
                        tls: tls.as_ref().map(|t| t.listener.clone()),
                        proxy_protocol,
                        proxy_protocol_from: proxy_protocol_from.into(),
                        http2: l.http2.unwrap_or(true),
                        tls_watch: tls.and_then(|t| t.watch),
                        trusted_proxies: trusted_proxies.into(),
                        // Filled in once the whole file has validated (`fingerprints`).
                        fingerprint: String::new(),
                    });
                }
                Err(_) => self.err(
                    format!("{key}.listen"),
                    Some(listen.span()),
                    match port_out_of_range(listen.get_ref()) {
                        Some(port) => format!("{port:?} is not a port number (0 to 65535)"),
                        None => format!(
                            "{:?} is not an IP address with a port, e.g. \"0.0.0.0:8080\" or \"[::]:8080\"",
                            listen.get_ref()
                        ),
                    },
                ),
            }
        }
        listeners
    }

    /// A `tls` table, of a `[[listener]]` or of `[admin]`: one validation for both, so the
    /// admin listener's certificates are loaded and checked exactly as the proxy's are.
    /// `None` when the table has errors (they are recorded). `listener`: the `[[listener]]`'s
    /// address, whose running certificates a reload may keep (`None` for `[admin]`, which a
    /// reload does not apply).
    pub(super) fn listener_tls(
        &mut self,
        key: &str,
        t: &Spanned<FileTls>,
        listener: Option<SocketAddr>,
    ) -> Option<ListenerTls> {
        let watch = self.optional_duration(
            &format!("{key}.watch_interval"),
            t.get_ref().watch_interval.as_ref(),
            Some(DEFAULT_TLS_WATCH_INTERVAL),
        );
        let listener = self.tls(key, t, listener)?;
        Some(ListenerTls { listener, watch })
    }

    /// A TLS table's certificates: every one loaded and checked now, so `wsgate check`
    /// finds a missing file or a key that does not match its certificate. On a reload, a
    /// pair that does not load but that the running listener at `listener` serves from the
    /// same files keeps that certificate, with a warning, as the certificate watcher does:
    /// one half-renewed pair failed the whole reload (routes and every other certificate
    /// with it).
    fn tls(
        &mut self,
        key: &str,
        t: &Spanned<FileTls>,
        listener: Option<SocketAddr>,
    ) -> Option<std::sync::Arc<crate::tls::TlsListener>> {
        let before = self.errors.len();
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
                                let line = v.line(c.span().start);
                                tracing::warn!(key = %format!("{k}.cert"), line, file = %cp.display(), "{w}");
                            }
                            Some((ck, cp, kp))
                        }
                        Err(e) => {
                            if let Some(ck) =
                                listener.and_then(|addr| v.serving.get(addr, &cp, &kp))
                            {
                                let line = v.line(c.span().start);
                                tracing::warn!(key = %k, line, error = %e.message(), "certificate files do not load; the listener keeps the certificate it serves from them");
                                return Some((ck, cp, kp));
                            }
                            for (field, at, msg) in
                                [("cert", c.span(), e.cert), ("key", kf.span(), e.key)]
                            {
                                if let Some(msg) = msg {
                                    v.err(format!("{k}.{field}"), Some(at), msg);
                                }
                            }
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
            sources.push((
                crate::tls::CertSource {
                    entry: key.to_string(),
                    hosts: Vec::new(),
                    cert,
                    key: keyf,
                },
                ck,
            ));
        } else if t.sni.is_empty() && self.errors.len() == before {
            self.err(
                format!("{key}.cert"),
                Some(t_span.clone()),
                "missing: a certificate (cert and key) or [[...tls.sni]] entries",
            );
        }
        // Each SNI name once: listed again, one of its certificates would go unused (and
        // which one serves would depend on the order of the entries).
        let mut served: HashMap<String, String> = HashMap::new();
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
            let bad: Vec<&String> = hosts
                .iter()
                .filter(|h| {
                    !super::route::valid_host_pattern(h)
                        || h.trim_start_matches("*.")
                            .parse::<std::net::IpAddr>()
                            .is_ok()
                        || h.starts_with('[')
                })
                .collect();
            if !bad.is_empty() {
                if let Some(h) = &sni.hosts {
                    self.err(
                        format!("{k}.hosts"),
                        Some(h.span()),
                        format!(
                            "{bad:?}: not a host name or a \"*.\" wildcard of one (SNI names no IP address, and a name it never matches would leave this certificate unused)"
                        ),
                    );
                }
                continue;
            }
            for h in &hosts {
                // (Listed twice in one entry: the same certificate either way.)
                if let Some(first) = served.insert(h.clone(), k.clone())
                    && first != k
                    && let Some(list) = &sni.hosts
                {
                    self.err(
                        format!("{k}.hosts"),
                        Some(list.span()),
                        format!("{h:?} is already served by {first}: each SNI name goes to one certificate"),
                    );
                }
            }
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
                sources.push((
                    crate::tls::CertSource {
                        entry: k,
                        hosts,
                        cert,
                        key: keyf,
                    },
                    ck,
                ));
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
                Ok(name) if let Some(why) = subject_header_taken(&name) => {
                    self.err(
                        format!("{key}.client_subject_header"),
                        Some(h.span()),
                        format!(
                            "{name} {why}: choose a header of its own, e.g. \
                             \"X-Client-Subject\""
                        ),
                    );
                    return None;
                }
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
            client_auth.as_ref(),
            subject_header,
            t.session_resumption.unwrap_or(true),
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

    /// `[http2] stream_window`: from HTTP/2's default window (64 KiB, RFC 9113 §6.9.2) to
    /// its largest.
    fn stream_window(&mut self, value: Option<&SpStr>, default: u32) -> u32 {
        const MIN: u64 = 65_535;
        let Some(v) = value else { return default };
        let n = self.size("http2.stream_window", Some(v), default as usize) as u64;
        if !(MIN..=crate::config::MAX_H2_WINDOW).contains(&n) {
            self.err(
                "http2.stream_window",
                Some(v.span()),
                "must be between 65535 bytes (64KiB less one) and 2GiB less one byte",
            );
            return default;
        }
        u32::try_from(n).unwrap_or(default)
    }

    /// `[http2]`.
    pub(super) fn http2(&mut self, f: Option<&FileHttp2>) -> Http2Config {
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
            stream_window: self.stream_window(f.stream_window.as_ref(), d.stream_window),
        }
    }

    /// A list of CIDR blocks or addresses.
    fn cidrs(
        &mut self,
        key: &str,
        list: Option<&Spanned<Vec<SpStr>>>,
    ) -> Vec<crate::policy::forwarding::Cidr> {
        let mut out = Vec::new();
        for (i, s) in entries(list).iter().enumerate() {
            match crate::policy::forwarding::Cidr::parse(s.get_ref().trim()) {
                Ok(c) => out.push(c),
                Err(m) => self.err(format!("{key}[{i}]"), Some(s.span()), m),
            }
        }
        out
    }
}

/// Why a listener's `client_subject_header` may not be `name`, if it may not. The header is
/// set on the backend's request after the proxy's own (a header of the proxy's would lose
/// the subject, or carry two values), and taken off every client's request on every
/// listener, with its look-alikes (`X_Real_IP`), which a CGI-style backend reads as one: a
/// header the client itself sends would be stripped from all of them.
fn subject_header_taken(name: &http::HeaderName) -> Option<&'static str> {
    let like = |names: &[&str]| {
        names
            .iter()
            .any(|r| crate::policy::forwarding::reads_as(name.as_str(), r))
    };
    if like(crate::policy::RESERVED_HEADERS) {
        Some("is built by the proxy itself")
    } else if like(&["cookie", "authorization", "proxy-authorization", "origin"]) {
        Some(
            "carries what the client itself sends (its credentials, its origin), which this header is taken out of on every listener",
        )
    } else {
        None
    }
}

/// Whether two listening addresses take the same port: the same address, or one of them
/// unspecified (`0.0.0.0` takes the port on every IPv4 address, `[::]` on every address, as
/// Linux binds it without `IPV6_V6ONLY`). Port 0 (a free port each) never collides.
///
/// An IPv4-mapped address (`[::ffff:127.0.0.1]`) is the IPv4 address it maps: Linux binds it
/// so, and `[::ffff:0.0.0.0]` is `0.0.0.0`.
pub(crate) fn overlaps(a: SocketAddr, b: SocketAddr) -> bool {
    let covers = |a: std::net::IpAddr, b: std::net::IpAddr| {
        let (a, b) = (a.to_canonical(), b.to_canonical());
        a == b || (a.is_unspecified() && (a.is_ipv6() || b.is_ipv4()))
    };
    a.port() != 0 && a.port() == b.port() && (covers(a.ip(), b.ip()) || covers(b.ip(), a.ip()))
}

/// The port of an address that would be one but for its port being over 65535
/// (`"127.0.0.1:65536"`), for the error to say so (as a backend URL's does).
pub(super) fn port_out_of_range(text: &str) -> Option<&str> {
    let (host, port) = text.trim().rsplit_once(':')?;
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    (host.parse::<std::net::IpAddr>().is_ok()
        && !port.is_empty()
        && port.bytes().all(|b| b.is_ascii_digit())
        && port.parse::<u16>().is_err())
    .then_some(port)
}
