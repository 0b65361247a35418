//! A fake forward-auth service: a real HTTP/1.1 server (hyper) on `127.0.0.1:0` that records
//! the head of every request it is sent and answers each by a rule. [`by_path`] is the rule
//! the tests share. Only tokio, hyper, hyper-util, http, http-body-util and bytes: the
//! library's unit tests include this file too (`src/lib.rs`, `test_support`).

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::request::Parts;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};

/// One byte over what wsgate reads of an auth service's answer (64 KiB), for [`by_path`]'s
/// `/big` and `/deny401big`.
pub const BIG_BODY: usize = 64 * 1024 + 1;

/// What the service does with one request.
#[derive(Debug)]
pub enum Answer {
    /// Sends this response.
    Respond(Response<Bytes>),
    /// Never answers: the request stays open until the client gives up on it.
    Hang,
}

/// The shared rule, by request path:
///
/// | path | answer |
/// |---|---|
/// | `/allow` | 200 with `X-User: alice`, `X-Roles: admin`, `X-Roles: dev`, `X-Internal: not copied` |
/// | `/allow-forwarded` | 200 with `X-Forwarded-User: alice` and `X-Forwarded-Email: alice@example.com` (oauth2-proxy's names) |
/// | `/deny401` | 401 with `WWW-Authenticate: Bearer realm="chat"`, `Content-Type: text/plain`, `X-Internal: not passed`, body `login required` |
/// | `/deny407` | 407 with `Proxy-Authenticate: Basic realm="edge"` |
/// | `/deny429` | 429 with `Retry-After: 30` |
/// | `/deny302` | 302 with `Location: https://login.example.com/?rd=chat` and two cookies, `Set-Cookie: state=xyz; HttpOnly` and `Set-Cookie: flow=1` |
/// | `/error` | 500 with body `database down` |
/// | `/big` | 200 with `X-User: alice` and a body of [`BIG_BODY`] bytes |
/// | `/deny401big` | 401 with `Content-Type: text/html` and a body of [`BIG_BODY`] bytes |
/// | `/slow` | never answers |
/// | anything else | 404 |
pub fn by_path(request: &Parts) -> Answer {
    let b = Response::builder();
    let (b, body) = match request.uri.path() {
        "/allow" => (
            b.header("x-user", "alice")
                .header("x-roles", "admin")
                .header("x-roles", "dev")
                .header("x-internal", "not copied"),
            Bytes::new(),
        ),
        "/allow-forwarded" => (
            b.header("x-forwarded-user", "alice")
                .header("x-forwarded-email", "alice@example.com"),
            Bytes::new(),
        ),
        "/deny401" => (
            b.status(401)
                .header("www-authenticate", "Bearer realm=\"chat\"")
                .header("content-type", "text/plain")
                .header("x-internal", "not passed"),
            Bytes::from_static(b"login required"),
        ),
        "/deny407" => (
            b.status(407)
                .header("proxy-authenticate", "Basic realm=\"edge\""),
            Bytes::new(),
        ),
        "/deny429" => (b.status(429).header("retry-after", "30"), Bytes::new()),
        "/deny302" => (
            b.status(302)
                .header("location", "https://login.example.com/?rd=chat")
                .header("set-cookie", "state=xyz; HttpOnly")
                .header("set-cookie", "flow=1"),
            Bytes::new(),
        ),
        "/error" => (b.status(500), Bytes::from_static(b"database down")),
        "/big" => (
            b.header("x-user", "alice"),
            Bytes::from(vec![b'x'; BIG_BODY]),
        ),
        "/deny401big" => (
            b.status(401).header("content-type", "text/html"),
            Bytes::from(vec![b'x'; BIG_BODY]),
        ),
        "/slow" => return Answer::Hang,
        _ => (b.status(404), Bytes::new()),
    };
    Answer::Respond(b.body(body).unwrap())
}

/// A running fake auth service; it stops with the test's runtime.
pub struct FakeAuth {
    pub addr: SocketAddr,
    scheme: &'static str,
    seen: Arc<Mutex<Vec<Parts>>>,
}

impl FakeAuth {
    /// Plain HTTP, answering by [`by_path`].
    pub async fn spawn() -> FakeAuth {
        Self::spawn_with(by_path).await
    }

    /// Plain HTTP, answering by `rule`.
    pub async fn spawn_with(rule: impl Fn(&Parts) -> Answer + Send + Sync + 'static) -> FakeAuth {
        Self::spawn_wrapped("http", rule, |tcp| async move { Ok(tcp) }).await
    }

    /// Each accepted connection goes through `wrap` first (e.g. a TLS acceptor:
    /// `move |tcp| acceptor.accept(tcp)`, with `scheme` `"https"`); a connection `wrap` fails
    /// is dropped without a request being recorded.
    pub async fn spawn_wrapped<W, F, S>(
        scheme: &'static str,
        rule: impl Fn(&Parts) -> Answer + Send + Sync + 'static,
        wrap: W,
    ) -> FakeAuth
    where
        W: Fn(TcpStream) -> F + Send + 'static,
        F: Future<Output = std::io::Result<S>> + Send + 'static,
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen: Arc<Mutex<Vec<Parts>>> = Arc::default();
        let rule = Arc::new(rule);
        let recorder = seen.clone();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let (seen, rule) = (recorder.clone(), rule.clone());
                let svc = service_fn(move |req: Request<Incoming>| {
                    let (parts, _) = req.into_parts();
                    // Recorded before answering: once a client has the answer, it is counted.
                    let answer = rule(&parts);
                    seen.lock().unwrap().push(parts);
                    async move {
                        match answer {
                            Answer::Respond(r) => Ok::<_, Infallible>(r.map(Full::new)),
                            // The future is dropped with the connection.
                            Answer::Hang => std::future::pending().await,
                        }
                    }
                });
                let stream = wrap(tcp);
                tokio::spawn(async move {
                    let Ok(stream) = stream.await else { return };
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        FakeAuth { addr, scheme, seen }
    }

    /// `scheme://addr` followed by `path` (which picks the answer under [`by_path`]).
    pub fn url(&self, path: &str) -> String {
        format!("{}://{}{path}", self.scheme, self.addr)
    }

    /// How many requests the service has been sent.
    pub fn count(&self) -> usize {
        self.seen.lock().unwrap().len()
    }

    /// The head of the latest request; panics if there was none.
    pub fn last(&self) -> Parts {
        self.seen
            .lock()
            .unwrap()
            .last()
            .cloned()
            .expect("the auth service saw no request")
    }
}
