//! The upgrade exchange with a backend on the wire: the request written in one call, the
//! response head read and parsed here (`httparse`, the parser hyper itself uses), and the
//! bytes read past the head handed to the relay with the socket.
//!
//! hyper's client would cost a task of its own per handshake (its connection driver), a
//! channel to it and back, and a boxed `Upgraded` to take the socket out of again: about a
//! tenth of what wsgate spends in user space per handshake. A 101 is a few hundred bytes with
//! no body, so the hand-written exchange is short. A refusal (any other status) can carry a
//! body in any HTTP/1.1 framing (length, chunked, until close); it is rare, so what was read
//! is replayed into hyper's client, which reads the body as it would have.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use http::header::{HeaderMap, HeaderName, HeaderValue};
use http::{Request, StatusCode};
use http_body_util::Empty;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};

use crate::error::BackendError;

/// The longest response head accepted from a backend. A 101 takes a few hundred bytes; a
/// refusal's headers (cookies, a `WWW-Authenticate` challenge) rarely more than a few KiB.
pub const MAX_HEAD: usize = 64 * 1024;
/// The most header fields in a response head (hyper's client default is 100, too).
pub const MAX_HEADERS: usize = 100;
/// The first read's room: a 101 and the frames a backend sends at once fit.
const FIRST_READ: usize = 2048;

/// `req` as HTTP/1.1 bytes: request line, the header fields as they are in the map (names in
/// lower case, as hyper writes them), the empty line. The request has no body.
pub fn encode(req: &Request<Empty<bytes::Bytes>>) -> Vec<u8> {
    let target = req.uri().path_and_query().map_or("/", |p| p.as_str());
    let headers = req.headers();
    let size = 32
        + target.len()
        + headers
            .iter()
            .map(|(n, v)| n.as_str().len() + v.len() + 4)
            .sum::<usize>();
    let mut out = Vec::with_capacity(size);
    out.extend_from_slice(req.method().as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    for (name, value) in headers {
        push_field(&mut out, name.as_str(), value.as_bytes());
    }
    out.extend_from_slice(b"\r\n");
    out
}

/// One field line of an HTTP/1.1 head, `name: value` and its CRLF.
pub fn push_field(out: &mut Vec<u8>, name: &str, value: &[u8]) {
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// A backend's response head.
#[derive(Debug)]
pub struct Head {
    pub status: StatusCode,
    pub headers: HeaderMap,
    /// Its length in bytes; what follows belongs to the session (or to a refusal's body).
    pub len: usize,
}

/// The most interim answers read past before the final one. A server sends one or two (a
/// `100 Continue`, `103 Early Hints`); a backend that sends them without end would have its
/// handshake read and parsed in a loop until the deadline, a worker's CPU spent on it.
const MAX_INTERIM: usize = 16;

/// Reads from `io` into `buf` until `buf` holds a whole final response head, and parses it.
/// Interim answers (`100 Continue`, `103 Early Hints`: a 1xx other than 101) are read past,
/// as RFC 9110 §15.2 asks of a client; `buf` then starts at the final head.
///
/// `client_cert` is `Some` on a `wss://` backend's TLS stream (whether wsgate has a client
/// certificate to send): a TLS alert there before any byte of the answer is the backend's
/// refusal of the TLS handshake, a TLS failure (`super::alert_refusal`), not a connection
/// that broke. Under TLS 1.3 the client's handshake is over once it has sent its Finished,
/// so a server that refuses the client's certificate says so only on this first read.
pub async fn read_head<I: AsyncRead + Unpin>(
    io: &mut I,
    buf: &mut BytesMut,
    client_cert: Option<bool>,
) -> Result<Head, BackendError> {
    let mut answered = !buf.is_empty();
    let mut interim = 0;
    loop {
        while !buf.is_empty()
            && let Some(head) = parse(buf)?
        {
            if head.status.is_informational() && head.status != StatusCode::SWITCHING_PROTOCOLS {
                interim += 1;
                if interim > MAX_INTERIM {
                    return Err(BackendError::BadHandshake(format!(
                        "more than {MAX_INTERIM} interim (1xx) answers before the final one"
                    )));
                }
                buf.advance(head.len);
                continue;
            }
            return Ok(head);
        }
        if buf.len() >= MAX_HEAD {
            return Err(BackendError::BadHandshake(format!(
                "response head over {MAX_HEAD} bytes"
            )));
        }
        // FIRST_READ at first, then doubling.
        buf.reserve(FIRST_READ.max(buf.len()));
        let n = io.read_buf(buf).await.map_err(|e| {
            match client_cert.filter(|_| !answered) {
                Some(cert) => super::alert_refusal(&e, cert)
                    .map(BackendError::Tls)
                    .or_else(|| closed_after_handshake(&e, cert)),
                None => None,
            }
            .unwrap_or_else(|| BackendError::Io(e.to_string()))
        })?;
        answered = true;
        if n == 0 {
            return Err(BackendError::Io(if buf.is_empty() {
                "connection closed before an answer".into()
            } else {
                "connection closed in the middle of the answer's head".into()
            }));
        }
    }
}

/// A `wss://` backend that closed its connection (without `close_notify`) before any byte
/// of its answer: said in words, not as rustls's "peer closed connection without sending TLS
/// close_notify". Under TLS 1.3 a server that refuses wsgate's client certificate without an
/// alert does just that, on this first read.
fn closed_after_handshake(e: &std::io::Error, client_cert: bool) -> Option<BackendError> {
    (e.kind() == std::io::ErrorKind::UnexpectedEof).then(|| {
        let why = if client_cert {
            " (a backend that refuses wsgate's client certificate without an alert does that)"
        } else {
            ""
        };
        BackendError::Io(format!(
            "the backend closed the connection right after the TLS handshake, before any \
             answer{why}"
        ))
    })
}

/// The head at the start of `buf`, `None` while it is incomplete.
pub fn parse(buf: &[u8]) -> Result<Option<Head>, BackendError> {
    let malformed =
        |what: String| BackendError::BadHandshake(format!("malformed response: {what}"));
    let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut fields);
    let len = match resp.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(malformed(e.to_string())),
    };
    let status = resp
        .code
        .filter(|c| (100..=599).contains(c))
        .and_then(|c| StatusCode::from_u16(c).ok())
        .ok_or_else(|| malformed("invalid status code (RFC 9110 §15: 100 to 599)".into()))?;
    // An upgrade is HTTP/1.1's; a refusal from a server that answers in HTTP/1.0 is still
    // its refusal (and hyper reads its body).
    let refusal_in_1_0 = resp.version == Some(0) && status != StatusCode::SWITCHING_PROTOCOLS;
    if resp.version != Some(1) && !refusal_in_1_0 {
        return Err(malformed("not HTTP/1.1".into()));
    }
    let mut headers = HeaderMap::with_capacity(resp.headers.len());
    for f in resp.headers.iter() {
        let name = HeaderName::from_bytes(f.name.as_bytes())
            .map_err(|_| malformed(format!("invalid header name {:?}", f.name)))?;
        let value = HeaderValue::from_bytes(f.value)
            .map_err(|_| malformed(format!("invalid value in {:?}", f.name)))?;
        headers.append(name, value);
    }
    Ok(Some(Head {
        status,
        headers,
        len,
    }))
}

/// A refusal: `read` (its head and whatever followed) replayed into hyper's client, which
/// reads the rest of the body from `io` in the framing the head says, up to `max_body` and until
/// `deadline` (what came by then is the body).
pub async fn refusal<I>(
    io: I,
    read: Bytes,
    max_body: usize,
    deadline: tokio::time::Instant,
) -> BackendError
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let replay = Replay {
        read,
        io,
        written: false,
        reader: None,
    };
    let (mut sender, conn) = match hyper::client::conn::http1::Builder::new()
        .handshake::<_, Empty<Bytes>>(TokioIo::new(replay))
        .await
    {
        Ok(pair) => pair,
        Err(e) => return BackendError::Io(e.to_string()),
    };
    // The request only makes hyper read a response: its bytes go nowhere (the real one was
    // sent). GET, so that a body is read by the response's own framing.
    let req = Request::get("/").body(Empty::new()).unwrap_or_default();
    let mut conn = std::pin::pin!(conn);
    let mut conn_done = false;
    // hyper's connection future delivers the answer and its body; once it ends (the backend
    // closed), what it delivered is still there to take.
    let send = sender.send_request(req);
    let mut send = std::pin::pin!(send);
    let resp = tokio::select! {
        biased;
        r = &mut send => r,
        _ = &mut conn => {
            conn_done = true;
            send.await
        }
    };
    let resp = match resp {
        Ok(resp) => resp,
        Err(e) => return super::classify_send_error(&e),
    };
    let body = super::refused(resp, max_body, deadline);
    let mut body = std::pin::pin!(body);
    if conn_done {
        return body.await;
    }
    tokio::select! {
        biased;
        e = &mut body => e,
        _ = &mut conn => body.await,
    }
}

/// Reads `read` first, then `io`; writes go nowhere (see [`refusal`]). Nothing is read before
/// the request is written: hyper's client takes bytes that arrive on an idle connection for
/// a broken one.
struct Replay<I> {
    read: Bytes,
    io: I,
    written: bool,
    /// Whoever wanted to read before the request was written.
    reader: Option<std::task::Waker>,
}

impl<I: AsyncRead + Unpin> AsyncRead for Replay<I> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        if !this.written {
            this.reader = Some(cx.waker().clone());
            return Poll::Pending;
        }
        if this.read.has_remaining() {
            let n = this.read.len().min(buf.remaining());
            buf.put_slice(&this.read[..n]);
            this.read.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.io).poll_read(cx, buf)
    }
}

impl<I: Unpin> AsyncWrite for Replay<I> {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        this.written = true;
        if let Some(reader) = this.reader.take() {
            reader.wake();
        }
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::header;

    #[test]
    fn the_request_is_written_as_hyper_writes_it() {
        let req = Request::get("/chat?room=1")
            .header(header::HOST, "backend:9000")
            .header(header::UPGRADE, "websocket")
            .header(header::CONNECTION, "Upgrade")
            .header("x-forwarded-for", "10.0.0.1")
            .header("x-forwarded-for", "10.0.0.2")
            .body(Empty::new())
            .unwrap();
        assert_eq!(
            String::from_utf8(encode(&req)).unwrap(),
            "GET /chat?room=1 HTTP/1.1\r\nhost: backend:9000\r\nupgrade: websocket\r\n\
             connection: Upgrade\r\nx-forwarded-for: 10.0.0.1\r\nx-forwarded-for: 10.0.0.2\r\n\r\n"
        );
    }

    #[test]
    fn a_head_is_parsed_once_complete_and_what_follows_is_left() {
        let bytes = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\
                      Connection: Upgrade\r\nSet-Cookie: a=1\r\nSet-Cookie: b=2\r\n\r\n\x81\x02hi";
        let head_len = bytes.len() - 4;
        for cut in 0..head_len {
            assert!(parse(&bytes[..cut]).unwrap().is_none(), "cut at {cut}");
        }
        let head = parse(bytes).unwrap().unwrap();
        assert_eq!(head.status, StatusCode::SWITCHING_PROTOCOLS);
        assert_eq!(head.len, head_len);
        assert_eq!(head.headers.get_all(header::SET_COOKIE).iter().count(), 2);
        assert_eq!(&bytes[head.len..], b"\x81\x02hi");
    }

    #[test]
    fn broken_heads_are_bad_handshakes() {
        for bad in [
            &b"HTTP/1.0 101 Switching Protocols\r\n\r\n"[..],
            b"HTTP/1.1 1O1 Switching\r\n\r\n",
            // RFC 9110 §15: no status code past 599 (it was passed to the client).
            b"HTTP/1.1 600 Beyond\r\nContent-Length: 0\r\n\r\n",
            b"HTTP/1.1 101 OK\r\nUpgrade : websocket\r\n\r\n",
            b"HTTP/1.1 101 OK\r\nUpgrade: web\0socket\r\n\r\n",
            b"HTTP/1.1 101 OK\r\nUpgrade: websocket\r\n folded\r\n\r\n",
            b"SSH-2.0-OpenSSH_9.2\r\n\r\n",
        ] {
            match parse(bad) {
                Err(BackendError::BadHandshake(m)) => assert!(m.starts_with("malformed"), "{m}"),
                other => panic!("{:?}: {other:?}", String::from_utf8_lossy(bad)),
            }
        }
        let mut many = b"HTTP/1.1 101 OK\r\n".to_vec();
        for i in 0..=MAX_HEADERS {
            many.extend_from_slice(format!("x-{i}: 1\r\n").as_bytes());
        }
        many.extend_from_slice(b"\r\n");
        assert!(matches!(parse(&many), Err(BackendError::BadHandshake(_))));
    }

    #[tokio::test]
    async fn a_head_that_never_ends_is_cut_at_the_limit() {
        let (mut ours, mut theirs) = tokio::io::duplex(1 << 20);
        tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            let _ = theirs.write_all(b"HTTP/1.1 101 OK\r\n").await;
            let line = format!("x-filler: {}\r\n", "a".repeat(1000));
            for _ in 0..200 {
                if theirs.write_all(line.as_bytes()).await.is_err() {
                    return;
                }
            }
        });
        let mut buf = BytesMut::new();
        match read_head(&mut ours, &mut buf, None).await {
            Err(BackendError::BadHandshake(m)) => assert!(m.contains("over"), "{m}"),
            other => panic!("{other:?}"),
        }
        assert!(buf.len() < MAX_HEAD + 4 * FIRST_READ + MAX_HEAD);
    }

    /// A backend that sends interim answers without end is cut after [`MAX_INTERIM`]; one
    /// or two before the 101 are read past as before.
    #[tokio::test]
    async fn interim_answers_are_read_past_up_to_a_limit() {
        for (count, ok) in [(2, true), (MAX_INTERIM, true), (MAX_INTERIM + 1, false)] {
            let mut answer = b"HTTP/1.1 100 Continue\r\n\r\n".repeat(count);
            answer.extend_from_slice(b"HTTP/1.1 101 Switching Protocols\r\n\r\n");
            let (mut ours, mut theirs) = tokio::io::duplex(1 << 16);
            use tokio::io::AsyncWriteExt;
            theirs.write_all(&answer).await.unwrap();
            let mut buf = BytesMut::new();
            match read_head(&mut ours, &mut buf, None).await {
                Ok(head) if ok => assert_eq!(head.status, StatusCode::SWITCHING_PROTOCOLS),
                Err(BackendError::BadHandshake(m)) if !ok => assert!(m.contains("interim"), "{m}"),
                other => panic!("{count}: {other:?}"),
            }
        }
    }

    #[tokio::test]
    async fn a_refusal_body_is_read_in_its_own_framing() {
        for (answer, body) in [
            (
                &b"HTTP/1.1 403 Forbidden\r\nContent-Length: 6\r\n\r\nno wayEXTRA"[..],
                &b"no way"[..],
            ),
            (
                b"HTTP/1.1 503 Busy\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nbus\r\n1\r\ny\r\n0\r\n\r\n",
                b"busy",
            ),
            (b"HTTP/1.1 404 Not Found\r\n\r\nuntil close", b"until close"),
        ] {
            let (ours, mut theirs) = tokio::io::duplex(4096);
            // The head and part of the body were read already; the rest comes later.
            let split = answer.len() / 2;
            let read = Bytes::copy_from_slice(&answer[..split]);
            let rest = answer[split..].to_vec();
            tokio::spawn(async move {
                use tokio::io::AsyncWriteExt;
                theirs.write_all(&rest).await.unwrap();
                theirs.shutdown().await.unwrap();
            });
            let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
            match refusal(ours, read, 1024, deadline).await {
                BackendError::Refused(r) => assert_eq!(&r.body[..], body),
                other => panic!("{other:?}"),
            }
        }
    }
}
