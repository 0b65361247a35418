//! The proxy's own HTTP client, for its subrequests: forward-auth checks and JWKS fetches.
//!
//! hyper-util's pooled client with hyper-rustls, so a forward-auth service on every handshake
//! costs a request on a kept-alive connection, not a TCP (and TLS) handshake each time. TLS
//! uses the binary's one crypto provider and the system roots (or a configured CA bundle).

pub mod connector;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, Uri};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

/// Why a subrequest produced no response.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    #[error("{0}")]
    Request(String),
    #[error("response body over {0} bytes")]
    BodyTooLarge(usize),
}

/// A pooled HTTP/1.1 client for `http://` and `https://` URLs.
#[derive(Clone, Debug)]
pub struct HttpClient {
    inner: Client<connector::Bounded<hyper_rustls::HttpsConnector<HttpConnector>>, Full<Bytes>>,
}

/// How long a subrequest's connect may take, TLS included.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a subrequest's write may wait with nothing taken: longer than any subrequest's
/// own timeout, which ends it first; the bound is for the pooled connection.
const WRITE_STALL: Duration = Duration::from_secs(60);

impl HttpClient {
    /// A client whose `https://` connections verify against `tls` (see
    /// [`crate::tls::backend_client_config`] for building one with system roots or a CA file).
    pub fn new(tls: Arc<rustls::ClientConfig>) -> HttpClient {
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(CONNECT_TIMEOUT));
        // hyper-rustls sets ALPN itself (and panics if the config already has some, as the
        // backend config does with `http/1.1`).
        let mut tls = (*tls).clone();
        tls.alpn_protocols.clear();
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        // Counts the requests each connection has begun, for `stale_connection`.
        let https = connector::Bounded::new(https, CONNECT_TIMEOUT, None, WRITE_STALL);
        // The idle timeout needs the pool's timer, or idle connections are kept until the
        // server closes them.
        let inner = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .pool_timer(hyper_util::rt::TokioTimer::new())
            .pool_max_idle_per_host(32)
            .build(https);
        HttpClient { inner }
    }

    /// Sends `req` and reads the whole response, all within `timeout`; a body longer than
    /// `max_body` is an error (a key server has no reason to send megabytes, and a document
    /// cut short is of no use). An idempotent request whose kept-alive connection closes
    /// under it, before any of the answer, is sent again on another connection, at most
    /// twice.
    pub async fn send(
        &self,
        req: Request<Full<Bytes>>,
        timeout: Duration,
        max_body: usize,
    ) -> Result<Response<Bytes>, ClientError> {
        match self.send_cut(req, timeout, max_body).await? {
            (_, true) => Err(ClientError::BodyTooLarge(max_body)),
            (resp, false) => Ok(resp),
        }
    }

    /// [`send`](Self::send), but a body longer than `max_body` is cut there rather than an
    /// error: `true` with the response when it was. The rest is not read (its connection is
    /// closed, not pooled), so a long or endless body costs neither time nor memory.
    pub async fn send_cut(
        &self,
        req: Request<Full<Bytes>>,
        timeout: Duration,
        max_body: usize,
    ) -> Result<(Response<Bytes>, bool), ClientError> {
        let (parts, body) = req.into_parts();
        let again = parts.method.is_idempotent();
        let run = async {
            let mut retries = 0;
            let resp = loop {
                let req = Request::from_parts(parts.clone(), body.clone());
                match self.inner.request(req).await {
                    Ok(resp) => break resp,
                    Err(e) if again && retries < STALE_RETRIES && stale_connection(&e) => {
                        retries += 1;
                        tracing::debug!(uri = %parts.uri, error = %error_chain(&e), "connection closed under the request; sending it again");
                    }
                    Err(e) => return Err(ClientError::Request(error_chain(&e))),
                }
            };
            let (parts, mut body) = resp.into_parts();
            let mut read = bytes::BytesMut::new();
            let mut cut = false;
            while let Some(frame) = body.frame().await {
                let frame = frame.map_err(|e| ClientError::Request(error_chain(&e)))?;
                let Ok(data) = frame.into_data() else {
                    continue;
                };
                let room = max_body - read.len();
                if data.len() > room {
                    read.extend_from_slice(&data[..room]);
                    cut = true;
                    break;
                }
                read.extend_from_slice(&data);
            }
            Ok((Response::from_parts(parts, read.freeze()), cut))
        };
        tokio::time::timeout(timeout, run)
            .await
            .map_err(|_| ClientError::Timeout(timeout))?
    }

    /// `GET url`, for key sets and the like.
    pub async fn get(
        &self,
        url: &Uri,
        timeout: Duration,
        max_body: usize,
    ) -> Result<Response<Bytes>, ClientError> {
        let req = Request::get(url.clone())
            .header(
                http::header::USER_AGENT,
                concat!("wsgate/", env!("CARGO_PKG_VERSION")),
            )
            .body(Full::new(Bytes::new()))
            .map_err(|e| ClientError::Request(e.to_string()))?;
        self.send(req, timeout, max_body).await
    }
}

/// How many times one request is sent again after [`stale_connection`] failures: a server
/// that closes its idle connections together can leave a few of them in the pool.
pub(crate) const STALE_RETRIES: usize = 2;

/// Whether a request failed because its connection closed (or was reset) before any of the
/// answer came, on a connection that had carried an earlier request
/// ([`connector::reused`]): the server closed a kept-alive connection as the request went
/// out on it, the race every keep-alive pool has (hyper-util already resends a request that
/// had not been written yet). An idempotent request (RFC 9110 §9.2.2) can be sent again, as
/// nginx sends one again after an error on a cached connection; another one cannot, since
/// the server may have acted on it.
pub(crate) fn stale_connection(e: &hyper_util::client::legacy::Error) -> bool {
    connector::reused(e) && closed_before_the_answer(e)
}

/// The connection closed (or was reset) before the answer's whole head came (a head cut
/// short is no answer: nginx sends the request again then too).
fn closed_before_the_answer(e: &hyper_util::client::legacy::Error) -> bool {
    if let Some(h) = find_cause::<hyper::Error>(e)
        && h.is_incomplete_message()
    {
        return true;
    }
    find_cause::<std::io::Error>(e).is_some_and(|io| {
        matches!(
            io.kind(),
            std::io::ErrorKind::ConnectionReset
                | std::io::ErrorKind::BrokenPipe
                | std::io::ErrorKind::ConnectionAborted
        )
    })
}

/// The first error of type `T` in `e`'s source chain.
pub(crate) fn find_cause<'e, T: std::error::Error + 'static>(
    e: &'e (dyn std::error::Error + 'static),
) -> Option<&'e T> {
    let mut cur = Some(e);
    while let Some(c) = cur {
        if let Some(t) = c.downcast_ref::<T>() {
            return Some(t);
        }
        cur = c.source();
    }
    None
}

/// hyper-util's errors say "client error (Connect)" and keep the cause in `source()`.
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// The TLS settings for subrequests to `url`: for `https://`, verified against `ca` (a PEM
/// bundle) or the system roots; for `http://` nothing is ever verified, so no roots are loaded
/// (the pooled client wants a configuration either way).
pub fn tls_for(
    url: &Uri,
    ca: Option<&std::path::Path>,
) -> Result<Arc<rustls::ClientConfig>, String> {
    if url.scheme_str() != Some("https") && ca.is_none() {
        let config = rustls::ClientConfig::builder_with_provider(crate::tls::provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS setup: {e}"))?
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth();
        return Ok(Arc::new(config));
    }
    crate::tls::backend_client_config(&crate::tls::BackendTlsOptions {
        ca,
        insecure_skip_verify: false,
        client_auth: None,
    })
    .map_err(|e| e.message())
}

/// Parses an `http://` or `https://` URL for a subrequest target.
pub fn parse_http_url(s: &str) -> Result<Uri, String> {
    let uri: Uri = s.parse().map_err(|e| format!("{s:?} is not a URL: {e}"))?;
    match uri.scheme_str() {
        Some("http") | Some("https") => {}
        _ => return Err(format!("{s:?} must start with http:// or https://")),
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err(format!("{s:?} has no host"));
    }
    Ok(uri)
}
