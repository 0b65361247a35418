//! The serde mirror of the TOML file: every key optional, unknown keys refused.
//!
//! Nothing here is interpreted; `validate.rs` turns it into the runtime [`Config`](super::Config).
//! Values that validation may reject are kept [`Spanned`] so that the error can name the line.

use serde::Deserialize;
use toml::Spanned;

/// A string value with its place in the file.
pub type SpStr = Spanned<String>;

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
    /// Peers (CIDRs or addresses) whose `X-Forwarded-*` / `Forwarded` headers are believed.
    pub trusted_proxies: Option<Spanned<Vec<SpStr>>>,
    /// Serve HTTP/2 (ALPN `h2` on TLS, prior knowledge on plain TCP) and WebSockets over it
    /// (RFC 8441). Default true.
    pub http2: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileTls {
    pub cert: Option<SpStr>,
    pub key: Option<SpStr>,
    pub client_ca: Option<SpStr>,
    pub client_auth: Option<SpStr>,
    pub client_subject_header: Option<SpStr>,
    /// How often the certificate files are checked for changes (reloaded when they change).
    pub watch_interval: Option<SpStr>,
    #[serde(default)]
    pub sni: Vec<Spanned<FileSni>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileSni {
    pub hosts: Option<Spanned<Vec<SpStr>>>,
    pub cert: Option<SpStr>,
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
}

/// One entry of a route's `backends`: a URL, or a table for per-backend settings.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum FileBackend {
    Url(String),
    Table(FileBackendTable),
}

/// `{ url = "wss://...", insecure_skip_verify = true }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileBackendTable {
    pub url: String,
    /// Development only: accept any certificate from this backend (a warning at every start).
    pub insecure_skip_verify: Option<bool>,
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
    pub jwt: Option<Spanned<crate::policy::jwt::FileJwt>>,
    pub forward_auth: Option<Spanned<crate::policy::forward_auth::FileForwardAuth>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileBackendTls {
    /// PEM CA bundle to verify backend certificates with, instead of the system roots.
    pub ca: Option<SpStr>,
    /// Development only: accept any backend certificate (logged as a warning at every start).
    pub insecure_skip_verify: Option<bool>,
    /// A client certificate toward the backend (mutual TLS).
    pub client_cert: Option<SpStr>,
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
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileLimits {
    pub max_header_bytes: Option<SpStr>,
    pub max_headers: Option<Spanned<i64>>,
    pub max_error_body: Option<SpStr>,
    pub max_message: Option<SpStr>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileShutdown {
    pub grace: Option<SpStr>,
}
