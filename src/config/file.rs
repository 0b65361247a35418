//! The serde mirror of the TOML file: every key optional, unknown keys refused.
//!
//! Nothing here is interpreted; `validate.rs` turns it into the runtime [`Config`](super::Config).
//! Values that validation may reject are kept [`Spanned`] so that the error can name the line.

use serde::Deserialize;
use toml::Spanned;

/// A string value with its place in the file.
pub type SpStr = Spanned<String>;

/// A file's path (`#[serde(default, deserialize_with = "path")]`), never empty: joined to the
/// config's directory, an empty one named that directory, and the error said "Is a
/// directory" (or, from a relative `--config`, "cannot read : No such file or directory").
fn path<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<SpStr>, D::Error> {
    let s = Option::<SpStr>::deserialize(d)?;
    if s.as_ref().is_some_and(|s| s.get_ref().trim().is_empty()) {
        return Err(serde::de::Error::custom(
            "is empty: give a file's path (a relative one is read from the config file's directory)",
        ));
    }
    Ok(s)
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    #[serde(default)]
    pub listener: Vec<Spanned<FileListener>>,
    #[serde(default)]
    pub route: Vec<Spanned<FileRoute>>,
    pub timeouts: Option<FileTimeouts>,
    pub limits: Option<FileLimits>,
    pub shutdown: Option<FileShutdown>,
    pub http2: Option<FileHttp2>,
    pub admin: Option<Spanned<FileAdmin>>,
    pub log: Option<FileLog>,
    pub reload: Option<FileReload>,
    pub config: Option<FileConfigWatch>,
    pub upgrade: Option<FileUpgrade>,
    pub runtime: Option<FileRuntime>,
}

/// `[runtime]`: the threads that run the proxy.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileRuntime {
    /// Worker threads; absent: one per CPU.
    pub workers: Option<Spanned<i64>>,
    /// How the workers share the work: `"per_worker"` or `"work_stealing"`.
    pub scheduler: Option<SpStr>,
}

/// `[upgrade]`: binary upgrades by socket hand-over.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileUpgrade {
    /// The Unix socket a running wsgate hands its listening sockets over on.
    pub socket: Option<SpStr>,
}

/// `[config]`: the config file itself.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfigWatch {
    /// Reload when the file changes, as on SIGHUP.
    pub watch: Option<Spanned<bool>>,
    /// How often the file is checked (`watch = true`).
    pub watch_interval: Option<SpStr>,
}

/// `[reload]`: how a config reload closes the sessions it must close.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileReload {
    pub close_spread: Option<SpStr>,
}

/// `[admin]`: the admin listener (metrics, health, session API, status page).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileAdmin {
    /// Its address; required when the table is present.
    pub listen: Option<SpStr>,
    /// The environment variable holding the bearer token.
    pub token_env: Option<SpStr>,
    /// The file holding the bearer token (surrounding whitespace is not part of it).
    #[serde(default, deserialize_with = "path")]
    pub token_file: Option<SpStr>,
    /// The same table as a listener's `tls`.
    pub tls: Option<Spanned<FileTls>>,
}

/// `[log]`: what the log records say and how often.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileLog {
    /// The level of the "session open" record: `"info"`, `"debug"` or `"off"`.
    pub session_open: Option<SpStr>,
    /// Refusal lines per second per reason before similar ones are suppressed and counted.
    pub refusals_per_second: Option<Spanned<i64>>,
}

/// `[http2]`: limits for HTTP/2 connections on every listener.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileHttp2 {
    pub max_concurrent_streams: Option<Spanned<i64>>,
    pub max_pending_accept_reset_streams: Option<Spanned<i64>>,
    pub max_local_error_reset_streams: Option<Spanned<i64>>,
    pub keep_alive_interval: Option<SpStr>,
    pub keep_alive_timeout: Option<SpStr>,
    pub stream_window: Option<SpStr>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileListener {
    pub listen: Option<SpStr>,
    /// Overrides `timeouts.handshake` for this listener.
    pub handshake_timeout: Option<SpStr>,
    pub tls: Option<Spanned<FileTls>>,
    /// Expect a PROXY protocol (v1 or v2) header before anything else on every connection.
    pub proxy_protocol: Option<bool>,
    /// With `proxy_protocol`: the peers (CIDRs or addresses) that send the header; any other
    /// is served without one, as a direct client.
    pub proxy_protocol_from: Option<Spanned<Vec<SpStr>>>,
    /// Peers (CIDRs or addresses) whose `X-Forwarded-*` / `Forwarded` headers are believed.
    pub trusted_proxies: Option<Spanned<Vec<SpStr>>>,
    /// Serve HTTP/2 (ALPN `h2` on TLS, prior knowledge on plain TCP) and WebSockets over it
    /// (RFC 8441). Default true.
    pub http2: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileTls {
    #[serde(default, deserialize_with = "path")]
    pub cert: Option<SpStr>,
    #[serde(default, deserialize_with = "path")]
    pub key: Option<SpStr>,
    #[serde(default, deserialize_with = "path")]
    pub client_ca: Option<SpStr>,
    pub client_auth: Option<SpStr>,
    pub client_subject_header: Option<SpStr>,
    /// How often the certificate files are checked for changes (reloaded when they change).
    pub watch_interval: Option<SpStr>,
    /// TLS session resumption (session tickets and the TLS 1.2 session cache). Default true.
    pub session_resumption: Option<bool>,
    #[serde(default)]
    pub sni: Vec<Spanned<FileSni>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileSni {
    pub hosts: Option<Spanned<Vec<SpStr>>>,
    #[serde(default, deserialize_with = "path")]
    pub cert: Option<SpStr>,
    #[serde(default, deserialize_with = "path")]
    pub key: Option<SpStr>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileRoute {
    pub name: Option<SpStr>,
    pub host: Option<SpStr>,
    pub path: Option<SpStr>,
    pub backends: Option<Spanned<Vec<Spanned<FileBackend>>>>,
    pub balance: Option<SpStr>,
    pub preserve_host: Option<bool>,
    pub max_message: Option<SpStr>,
    /// `"allow"` (default) or `"strip"`: permessage-deflate offers pass to the backend or not.
    pub permessage_deflate: Option<SpStr>,
    /// Largest message once inflated (permessage-deflate), counted by the relay.
    pub max_message_inflated: Option<SpStr>,
    pub timeouts: Option<FileRouteTimeouts>,
    pub backend_tls: Option<Spanned<FileBackendTls>>,
    /// Allowed `Origin`s: exact origins, `https://*.example.com`, or `same-origin`.
    pub origins: Option<Spanned<Vec<SpStr>>>,
    /// A handshake without `Origin` (not from a browser): `"allow"` (default) or `"refuse"`.
    pub missing_origin: Option<SpStr>,
    /// Subprotocols the backend may be offered; others are dropped from the offer.
    pub subprotocols: Option<Spanned<Vec<SpStr>>>,
    /// Refuse a handshake that offers none of `subprotocols`.
    pub require_subprotocol: Option<Spanned<bool>>,
    pub auth: Option<Spanned<FileAuth>>,
    /// `"keep"` (default) or `"restart"`: what a reload that changes this route does to its
    /// live sessions.
    pub on_change: Option<SpStr>,
    /// `[limits]`'s admission keys, counted for this route alone.
    pub max_sessions: Option<Spanned<i64>>,
    pub max_sessions_per_ip: Option<Spanned<i64>>,
    pub handshake_rate_per_ip: Option<SpStr>,
    pub handshake_burst: Option<Spanned<i64>>,
    /// Fair shares after the upgrade (`crate::relay::fair`): per direction, messages and bytes
    /// a second with their bursts, and how long a side may stay over before 1008.
    pub client_messages_per_sec: Option<Spanned<i64>>,
    pub client_messages_burst: Option<Spanned<i64>>,
    pub client_bytes_per_sec: Option<SpStr>,
    pub client_bytes_burst: Option<SpStr>,
    pub backend_messages_per_sec: Option<Spanned<i64>>,
    pub backend_messages_burst: Option<Spanned<i64>>,
    pub backend_bytes_per_sec: Option<SpStr>,
    pub backend_bytes_burst: Option<SpStr>,
    pub rate_grace: Option<SpStr>,
    /// Proxy plain HTTP requests (not upgrades) too (default `false`: they get 426).
    pub http: Option<Spanned<bool>>,
    /// `http://` or `https://` URLs plain requests go to, instead of `backends` read with
    /// `ws` → `http` and `wss` → `https`.
    pub http_backends: Option<Spanned<Vec<SpStr>>>,
    /// A plain request's whole exchange, bodies included (default off).
    pub request_timeout: Option<SpStr>,
    /// From a plain request sent to its backend's response head.
    pub response_header_timeout: Option<SpStr>,
    /// The longest pause in a plain request's body from the client (408 past it).
    pub request_body_timeout: Option<SpStr>,
    /// How long a kept-alive connection to a backend may sit unused in the pool.
    pub http_idle_timeout: Option<SpStr>,
    /// The largest plain request body (413 past it).
    pub max_request_body: Option<SpStr>,
    /// Plain requests waiting for their backends' answers at once (503 past it).
    pub max_concurrent_requests: Option<Spanned<i64>>,
    /// What `balance = "hash"` hashes: `"ip"`, `"header:NAME"`, `"cookie:NAME"`,
    /// `"query:NAME"` or `"claim:NAME"`.
    pub hash_key: Option<SpStr>,
    /// `[route.health]`: active checks and passive ejection of the route's backends.
    pub health: Option<Spanned<FileHealth>>,
    /// `{ cookie = "wsgate_srv", ttl = "1h" }`: a cookie that brings a client back to its
    /// backend.
    pub sticky: Option<Spanned<FileSticky>>,
    /// A backend that comes back takes a growing share of new sessions over this long.
    pub slow_start: Option<SpStr>,
}

/// `[route.health]` as written in the file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileHealth {
    /// `"websocket"`, `"http"` or `"tcp"`; no active checks without it.
    pub check: Option<SpStr>,
    /// The path a `websocket` or `http` check asks for (default: the backend's own).
    pub path: Option<SpStr>,
    pub interval: Option<SpStr>,
    pub timeout: Option<SpStr>,
    pub healthy_threshold: Option<Spanned<i64>>,
    pub unhealthy_threshold: Option<Spanned<i64>>,
    /// Consecutive failed handshakes (connect failure, timeout, 5xx) that eject a backend.
    pub max_failures: Option<Spanned<i64>>,
    /// How long the first ejection lasts; each repeat doubles it up to `max_ejection`.
    pub ejection: Option<SpStr>,
    pub max_ejection: Option<SpStr>,
    /// Never more of the route's backends ejected at once than this percentage.
    pub max_ejected_percent: Option<Spanned<i64>>,
}

/// `sticky = { ... }` as written in the file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileSticky {
    /// The cookie's name (required).
    pub cookie: Option<SpStr>,
    /// How long the cookie holds (`Max-Age`, and checked inside the value).
    pub ttl: Option<SpStr>,
    /// An environment variable holding the key the cookie is signed with.
    pub secret_env: Option<SpStr>,
    /// A file holding that key.
    #[serde(default, deserialize_with = "path")]
    pub secret_file: Option<SpStr>,
}

/// One entry of a route's `backends`: a URL, or a table for per-backend settings.
///
/// Not `#[serde(untagged)]`: an untagged enum buffers the value and reports only that it
/// matched no form, so a misspelt key inside the table (`weigth = 2`) or a value of the
/// wrong type there would go unnamed. Here a table is read as [`FileBackendTable`] itself,
/// and its own errors (unknown key, wrong type) come through with their key.
#[derive(Debug)]
pub enum FileBackend {
    Url(String),
    Table(FileBackendTable),
}

impl<'de> Deserialize<'de> for FileBackend {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Form;
        impl<'de> serde::de::Visitor<'de> for Form {
            type Value = FileBackend;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(
                    "a URL or a table { url = ..., insecure_skip_verify = ..., weight = ... }",
                )
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<FileBackend, E> {
                Ok(FileBackend::Url(v.to_string()))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                map: A,
            ) -> Result<FileBackend, A::Error> {
                FileBackendTable::deserialize(serde::de::value::MapAccessDeserializer::new(map))
                    .map(FileBackend::Table)
            }
        }
        d.deserialize_any(Form)
    }
}

/// `{ url = "wss://...", insecure_skip_verify = true }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileBackendTable {
    /// Required; checked in validation, so that a `url` of the wrong type is reported once
    /// (as that), not again as missing.
    pub url: Option<String>,
    /// Development only: accept any certificate from this backend (a warning at every start).
    pub insecure_skip_verify: Option<bool>,
    /// Its share of new sessions relative to the route's other backends (default 1).
    pub weight: Option<i64>,
}

/// `[route.auth]`: credentials at the edge, identity to the backend.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileAuth {
    /// Cookies that must be present (by name).
    pub require_cookies: Option<Spanned<Vec<SpStr>>>,
    /// Cookies removed before the backend (by name; all others pass).
    pub strip_cookies: Option<Spanned<Vec<SpStr>>>,
    /// Request headers removed before the backend.
    pub strip_headers: Option<Spanned<Vec<SpStr>>>,
    /// Headers set on the backend request from templates: `{claim}`, `{claim.nested}`,
    /// `{tls.subject}`, `{client.ip}`.
    pub set_headers: Option<Spanned<std::collections::BTreeMap<String, SpStr>>>,
    pub jwt: Option<Spanned<FileJwt>>,
    pub forward_auth: Option<Spanned<FileForwardAuth>>,
}

/// `[route.auth.jwt]` as written in the file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileJwt {
    /// Where to look for the token, in order: `"header"`, `"cookie:NAME"`, `"query:NAME"`,
    /// `"subprotocol"`.
    pub from: Option<Spanned<Vec<SpStr>>>,
    /// Name of an environment variable holding an HMAC secret.
    pub secret_env: Option<SpStr>,
    /// A file holding an HMAC secret (one trailing newline is not part of it).
    #[serde(default, deserialize_with = "path")]
    pub secret_file: Option<SpStr>,
    /// A PEM public key: RSA, EC P-256/P-384 or Ed25519 (`PUBLIC KEY` or `RSA PUBLIC KEY`).
    #[serde(default, deserialize_with = "path")]
    pub public_key: Option<SpStr>,
    /// A JWKS document on disk.
    #[serde(default, deserialize_with = "path")]
    pub jwks_file: Option<SpStr>,
    /// A JWKS document fetched over HTTP(S), cached and refreshed.
    pub jwks_url: Option<SpStr>,
    /// PEM CA bundle for an `https://` `jwks_url` (else the system roots).
    #[serde(default, deserialize_with = "path")]
    pub jwks_ca: Option<SpStr>,
    /// How old the fetched key set may get before it is fetched again (default `"5m"`).
    pub jwks_refresh: Option<SpStr>,
    /// Accepted `alg` values; by default inferred from the key.
    pub algorithms: Option<Spanned<Vec<SpStr>>>,
    /// Accepted issuers (`iss`): a string or a list; when set, `iss` is required.
    pub issuer: Option<Spanned<OneOrMany>>,
    /// Accepted audiences: a string or a list; when set, `aud` is required and must name one.
    pub audience: Option<Spanned<OneOrMany>>,
    /// Clock skew allowed on `exp` and `nbf` (default `"30s"`; `"0"` for none).
    pub leeway: Option<SpStr>,
    /// Claims a token must carry (any value but `null`).
    pub required_claims: Option<Spanned<Vec<SpStr>>>,
    /// Claims the token must carry with one of the given values: `{ role = ["admin", "ops"],
    /// "org.id" = "42" }` (a name or a dotted path; a string, number or boolean, or a list).
    pub claims: Option<Spanned<std::collections::BTreeMap<String, Spanned<toml::Value>>>>,
    /// Close a session when its token expires (`exp` plus `leeway`; default `false`).
    pub expire_sessions: Option<bool>,
    /// Whether a token without `exp` is refused (default `true`).
    pub require_exp: Option<Spanned<bool>>,
    /// Pass the token's `Authorization` header or cookie on to the backend (default `false`).
    pub forward_token: Option<bool>,
}

/// A string or a list of strings.
#[derive(Debug)]
pub enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

/// By hand rather than `#[serde(untagged)]`, whose error ("data did not match any variant")
/// would not say what to write.
impl<'de> Deserialize<'de> for OneOrMany {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = OneOrMany;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a string or a list of strings")
            }
            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<OneOrMany, E> {
                Ok(OneOrMany::One(s.to_string()))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<OneOrMany, A::Error> {
                let mut out = Vec::new();
                while let Some(s) = seq.next_element::<String>()? {
                    out.push(s);
                }
                Ok(OneOrMany::Many(out))
            }
        }
        d.deserialize_any(V)
    }
}

/// `[route.auth.forward_auth]` as written in the file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileForwardAuth {
    /// The auth service's URL (`http://` or `https://`), asked with `GET`. Required.
    pub url: Option<SpStr>,
    /// Time allowed for the whole subrequest, answer body included (default `"2s"`).
    pub timeout: Option<SpStr>,
    /// Answer headers copied onto the backend request when the service allows, e.g.
    /// `["X-User", "X-Roles"]`.
    pub copy_headers: Option<Spanned<Vec<SpStr>>>,
    /// Client request headers sent to the auth service besides the defaults (`Cookie`,
    /// `Authorization`, `Origin`, `User-Agent`, `Sec-WebSocket-Protocol`).
    pub forward_headers: Option<Spanned<Vec<SpStr>>>,
    /// How long an allow decision is reused for an identical request (default off).
    pub cache: Option<SpStr>,
    /// PEM CA bundle to verify an `https://` auth service with (default: the system's roots).
    #[serde(default, deserialize_with = "path")]
    pub ca: Option<SpStr>,
    /// The allowing answer's header that names the authenticated user, for the access log.
    pub user_header: Option<SpStr>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileBackendTls {
    /// PEM CA bundle to verify backend certificates with, instead of the system roots.
    #[serde(default, deserialize_with = "path")]
    pub ca: Option<SpStr>,
    /// Development only: accept any backend certificate (logged as a warning at every start).
    pub insecure_skip_verify: Option<bool>,
    /// A client certificate toward the backend (mutual TLS).
    #[serde(default, deserialize_with = "path")]
    pub client_cert: Option<SpStr>,
    #[serde(default, deserialize_with = "path")]
    pub client_key: Option<SpStr>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileTimeouts {
    pub handshake: Option<SpStr>,
    pub backend_connect: Option<SpStr>,
    pub backend_handshake: Option<SpStr>,
    pub ping_interval: Option<SpStr>,
    pub pong_timeout: Option<SpStr>,
    pub idle: Option<SpStr>,
    pub max_lifetime: Option<SpStr>,
    pub hibernate_after: Option<SpStr>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileRouteTimeouts {
    pub backend_connect: Option<SpStr>,
    pub backend_handshake: Option<SpStr>,
    pub ping_interval: Option<SpStr>,
    pub pong_timeout: Option<SpStr>,
    pub idle: Option<SpStr>,
    pub max_lifetime: Option<SpStr>,
    pub hibernate_after: Option<SpStr>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileLimits {
    pub max_header_bytes: Option<SpStr>,
    pub max_headers: Option<Spanned<i64>>,
    pub max_error_body: Option<SpStr>,
    pub max_message: Option<SpStr>,
    pub merge_slashes: Option<Spanned<bool>>,
    pub escaped_slashes: Option<SpStr>,
    /// `"log"` or `"client"`: where a backend failure's details go.
    pub error_detail: Option<SpStr>,
    /// Sessions the whole process admits at once.
    pub max_sessions: Option<Spanned<i64>>,
    /// Sessions one client address (an IPv6 client by its `ipv6_prefix`) may hold at once.
    pub max_sessions_per_ip: Option<Spanned<i64>>,
    /// Handshakes one client address may start, e.g. `"10/s"`, `"600/m"`.
    pub handshake_rate_per_ip: Option<SpStr>,
    /// Handshakes one client address may start at once, above its rate.
    pub handshake_burst: Option<Spanned<i64>>,
    /// The prefix length that groups IPv6 clients as one address (default 64).
    pub ipv6_prefix: Option<Spanned<i64>>,
    /// File descriptors kept back from new sessions (default max(64, 0.5 % of the limit)).
    pub fd_reserve: Option<Spanned<i64>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileShutdown {
    pub grace: Option<SpStr>,
    pub close_spread: Option<SpStr>,
    pub unready_delay: Option<SpStr>,
}
