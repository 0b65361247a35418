//! The connector under the proxy's pooled HTTP clients (plain requests' backends,
//! forward-auth, key sets): a connect bounded in time, TLS included, writes that fail once
//! stalled, and the count of requests each connection has begun, which tells a kept-alive
//! connection's race (send again) from a fresh connection's failure (do not).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

/// A target's connector: it always connects to the target's own address, whatever authority
/// the request's URI names, and its whole connect, the TLS handshake included, ends within
/// `timeout`.
///
/// The address: with `preserve_host`, an `https://` target's request URI carries the
/// client's host, which an HTTP/2 backend gets as `:authority` (RFC 9113 §8.3.1 wants it to
/// agree with `Host`), and the pooled client keys its connections by it; the connection
/// still goes to the target (and TLS names the target, as on the WebSocket path). An
/// `http://` target's URI always names the target (see `backend_request`).
///
/// The timeout: `HttpConnector`'s own covers the TCP connect only, and a backend that
/// accepts and never finishes its handshake would otherwise hold the request until the
/// response-head deadline, and never let it fail over. Past it, the error is an `io::Error`
/// of kind `TimedOut`, which `forward` reads as a connect timeout.
#[derive(Debug, Clone)]
pub struct Bounded<C> {
    inner: C,
    timeout: Duration,
    authority: Option<http::uri::Authority>,
    write_stall: Duration,
    /// Set at each connect to whether ALPN chose HTTP/1.1 (or none), for
    /// [`Bounded::noting_http1`].
    http1: Option<Arc<std::sync::atomic::AtomicBool>>,
}

impl<C> Bounded<C> {
    /// `inner`, its connect (TLS included) bounded by `timeout`, to `authority` whatever the
    /// request names (`None`: what it names), its writes failing after `write_stall` with
    /// nothing taken.
    pub fn new(
        inner: C,
        timeout: Duration,
        authority: Option<http::uri::Authority>,
        write_stall: Duration,
    ) -> Bounded<C> {
        Bounded {
            inner,
            timeout,
            authority,
            write_stall,
            http1: None,
        }
    }

    /// Notes in `http1`, at each connect, whether the connection speaks HTTP/1.1 (ALPN chose
    /// it, or nothing): what the next request to a TLS target should expect before its
    /// connection is chosen (`http_proxy::pick::Target::speaks_http1`).
    pub fn noting_http1(mut self, http1: Arc<std::sync::atomic::AtomicBool>) -> Bounded<C> {
        self.http1 = Some(http1);
        self
    }
}

type ConnectFuture<T> = std::pin::Pin<Box<dyn Future<Output = Result<T, tower::BoxError>> + Send>>;

impl<C> tower::Service<http::Uri> for Bounded<C>
where
    C: tower::Service<http::Uri>,
    C::Response: hyper_util::client::legacy::connect::Connection,
    C::Error: Into<tower::BoxError>,
    C::Future: Send + 'static,
{
    type Response = StallBounded<C::Response>;
    type Error = tower::BoxError;
    type Future = ConnectFuture<StallBounded<C::Response>>;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, uri: http::Uri) -> Self::Future {
        let uri = match &self.authority {
            Some(a) if uri.authority() != Some(a) => {
                let mut parts = uri.clone().into_parts();
                parts.authority = Some(a.clone());
                http::Uri::from_parts(parts).unwrap_or(uri)
            }
            _ => uri,
        };
        let (connect, timeout) = (self.inner.call(uri), self.timeout);
        let (limit, http1) = (self.write_stall, self.http1.clone());
        Box::pin(async move {
            match tokio::time::timeout(timeout, connect).await {
                Ok(result) => result.map_err(Into::into).map(|io| {
                    if let Some(http1) = http1 {
                        use hyper_util::client::legacy::connect::Connection as _;
                        http1.store(!io.connected().is_negotiated_h2(), Ordering::Relaxed);
                    }
                    StallBounded {
                        io,
                        limit,
                        deadline: None,
                        stalled: false,
                        turns: Turns::default(),
                    }
                }),
                Err(_) => Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("connect and TLS handshake not done within {timeout:?}"),
                )
                .into()),
            }
        })
    }
}

/// A backend connection whose writes fail once one has waited `limit` with nothing taken.
///
/// hyper's client writes a request's body from the connection's own task. When the backend
/// stops reading, that task waits on the socket and polls nothing else: the request is
/// answered 504 (`BodyState::backend_overdue`) and its client may go, but the connection,
/// the body's buffers and the backend's socket stayed until the backend itself closed,
/// which a hung one never does (600 KiB and a descriptor per stalled upload, for good). A
/// write that fails ends the connection.
pub struct StallBounded<T> {
    io: T,
    limit: Duration,
    /// The wait's end, armed (`stalled`) while a write waits and disarmed as soon as one
    /// takes a byte; made once per connection, reset per wait.
    deadline: Option<std::pin::Pin<Box<tokio::time::Sleep>>>,
    stalled: bool,
    /// How many requests the connection has begun, for [`reused`].
    turns: Turns,
}

/// The requests an HTTP/1.1 backend connection has begun: a write that follows a read (or
/// the first write) begins one, as hyper's client neither pipelines nor writes before the
/// previous answer is read. Shared with the connection's [`Connected`] info, which a failed
/// request's error carries.
///
/// [`Connected`]: hyper_util::client::legacy::connect::Connected
#[derive(Clone, Default)]
struct Turns(Arc<TurnState>);

#[derive(Default)]
struct TurnState {
    begun: AtomicUsize,
    read_since_write: std::sync::atomic::AtomicBool,
}

impl Turns {
    fn wrote(&self) {
        let s = &self.0;
        if s.read_since_write.swap(false, Ordering::Relaxed) || s.begun.load(Ordering::Relaxed) == 0
        {
            s.begun.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn read(&self) {
        self.0.read_since_write.store(true, Ordering::Relaxed);
    }
}

/// Whether the request that failed with `e` went out on a connection that had carried an
/// earlier request: the keep-alive race (the backend closed an idle connection as the
/// request arrived) happens only there. On a fresh connection the backend itself took the
/// request and closed, perhaps crashing on it: sending it again would repeat that (nginx
/// too tries a request again on the same server only on a cached connection). HTTP/2
/// connections, whose streams the count cannot tell apart, and errors without connection
/// info count as reused, as before.
pub fn reused(e: &hyper_util::client::legacy::Error) -> bool {
    let Some(info) = e.connect_info() else {
        return true;
    };
    if info.is_negotiated_h2() {
        return true;
    }
    let mut extensions = http::Extensions::new();
    info.get_extras(&mut extensions);
    extensions
        .get::<Turns>()
        .is_none_or(|t| t.0.begun.load(Ordering::Relaxed) > 1)
}

impl<T> StallBounded<T> {
    /// `Pending` until the wait has lasted `limit`, then the error that ends the connection.
    fn wait(&mut self, cx: &mut std::task::Context<'_>) -> std::task::Poll<std::io::Error> {
        let limit = self.limit;
        let end = tokio::time::Instant::now() + limit;
        let deadline = match &mut self.deadline {
            Some(d) => {
                if !self.stalled {
                    d.as_mut().reset(end);
                }
                d
            }
            None => self
                .deadline
                .insert(Box::pin(tokio::time::sleep_until(end))),
        };
        self.stalled = true;
        match deadline.as_mut().poll(cx) {
            std::task::Poll::Ready(()) => std::task::Poll::Ready(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("the backend took nothing of the request for {limit:?}"),
            )),
            std::task::Poll::Pending => std::task::Poll::Pending,
        }
    }

    fn bounded<R>(
        &mut self,
        cx: &mut std::task::Context<'_>,
        polled: std::task::Poll<std::io::Result<R>>,
    ) -> std::task::Poll<std::io::Result<R>> {
        match polled {
            std::task::Poll::Pending => self.wait(cx).map(Err),
            done => {
                self.stalled = false;
                done
            }
        }
    }
}

impl<T: hyper::rt::Read + Unpin> hyper::rt::Read for StallBounded<T> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let polled = std::pin::Pin::new(&mut self.io).poll_read(cx, buf);
        if let std::task::Poll::Ready(Ok(())) = polled {
            self.turns.read();
        }
        polled
    }
}

impl<T: hyper::rt::Write + Unpin> hyper::rt::Write for StallBounded<T> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        // Counted when tried, not when taken: the keep-alive race's write may fail outright
        // (the backend's reset came first), and it began a request all the same.
        if !buf.is_empty() {
            self.turns.wrote();
        }
        let polled = std::pin::Pin::new(&mut self.io).poll_write(cx, buf);
        self.bounded(cx, polled)
    }

    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        if bufs.iter().any(|b| !b.is_empty()) {
            self.turns.wrote();
        }
        let polled = std::pin::Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        self.bounded(cx, polled)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let polled = std::pin::Pin::new(&mut self.io).poll_flush(cx);
        self.bounded(cx, polled)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

impl<T: hyper_util::client::legacy::connect::Connection>
    hyper_util::client::legacy::connect::Connection for StallBounded<T>
{
    fn connected(&self) -> hyper_util::client::legacy::connect::Connected {
        self.io.connected().extra(self.turns.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A request begins with its first write after an answer, whether or not the socket
    /// takes that write: in the keep-alive race the backend's reset can come first, and the
    /// request's write then fails outright (broken pipe, one of `stale_connection`'s errors).
    /// That request went out on a kept-alive connection all the same, and is to be retried.
    #[tokio::test]
    async fn a_failed_write_after_an_answer_begins_a_request() {
        use std::future::poll_fn;
        use std::pin::Pin;
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = tokio::net::TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (mut server, _) = listener.accept().await.unwrap();
        let mut conn = StallBounded {
            io: hyper_util::rt::TokioIo::new(client),
            limit: Duration::from_secs(10),
            deadline: None,
            stalled: false,
            turns: Turns::default(),
        };
        let turns = conn.turns.clone();
        let request = b"GET / HTTP/1.1\r\nHost: b\r\n\r\n";
        let n = poll_fn(|cx| hyper::rt::Write::poll_write(Pin::new(&mut conn), cx, request))
            .await
            .unwrap();
        assert_eq!(n, request.len());
        let mut got = vec![0u8; request.len()];
        server.read_exact(&mut got).await.unwrap();
        server
            .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
            .await
            .unwrap();
        let mut storage = [std::mem::MaybeUninit::<u8>::uninit(); 1024];
        let mut buf = hyper::rt::ReadBuf::uninit(&mut storage);
        poll_fn(|cx| hyper::rt::Read::poll_read(Pin::new(&mut conn), cx, buf.unfilled()))
            .await
            .unwrap();
        assert!(!buf.filled().is_empty());
        assert_eq!(turns.0.begun.load(Ordering::Relaxed), 1);
        // The backend closes the idle connection with a reset; the next read sees it.
        socket2::SockRef::from(&server)
            .set_linger(Some(Duration::ZERO))
            .unwrap();
        drop(server);
        let mut buf = hyper::rt::ReadBuf::uninit(&mut storage);
        let reset =
            poll_fn(|cx| hyper::rt::Read::poll_read(Pin::new(&mut conn), cx, buf.unfilled())).await;
        assert!(reset.is_err(), "{reset:?}");
        // The next request's write fails, and is the connection's second request.
        let failed =
            poll_fn(|cx| hyper::rt::Write::poll_write(Pin::new(&mut conn), cx, request)).await;
        assert!(failed.is_err(), "{failed:?}");
        assert_eq!(turns.0.begun.load(Ordering::Relaxed), 2);
    }
}
