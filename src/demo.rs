//! `wsgate demo`: a built-in echo backend, the proxy in front of it, and a browser page with
//! the classic WebSocket client, so a new user sees the whole path with nothing installed.

use std::net::SocketAddr;

use bytes::{Buf, Bytes, BytesMut};
use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use crate::config::{self, Config, StaticPage};
use crate::frame::{self, FrameHeader, close_code, opcode};
use crate::handshake;

/// The demo backend refuses frames larger than this (it buffers whole frames to echo them).
const ECHO_MAX_FRAME: u64 = 16 * 1024 * 1024;

/// Request header fields the echo backend takes. hyper's default, 100, is what a client may
/// send wsgate by default (`limits.max_headers`); wsgate adds its forwarding headers
/// (`X-Forwarded-*`, `Forwarded`, `Via`, `X-Request-Id`, ...) to those, and a 431 from the
/// backend would read as wsgate's own.
const ECHO_MAX_HEADERS: usize = 256;

/// The demo page: the classic browser client, served by the proxy at `/`.
pub const PAGE: &str = include_str!("demo.html");

/// Starts the echo backend (port 0: a free port) and returns its address.
pub async fn start_echo_backend(listen: SocketAddr) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(listen).await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let _ = stream.set_nodelay(true);
            tokio::spawn(async move {
                let conn = hyper::server::conn::http1::Builder::new()
                    .max_headers(ECHO_MAX_HEADERS)
                    .serve_connection(TokioIo::new(stream), service_fn(echo_handshake))
                    .with_upgrades();
                let _ = conn.await;
            });
        }
    });
    Ok(addr)
}

/// The demo's proxy config: one listener, the page at `/`, the echo backend at `/echo`, and an
/// admin listener at `admin`; with `tls`, the listener serves https/wss with a development
/// certificate made on the spot.
pub fn config(listen: SocketAddr, admin: SocketAddr, backend: SocketAddr, tls: bool) -> Config {
    let toml = format!(
        r#"
        # A demo has nothing worth waiting for: Ctrl-C ends it promptly.
        [shutdown]
        grace = "2s"

        [[listener]]
        listen = "{listen}"

        # The status page, /metrics and the session API, on loopback only.
        [admin]
        listen = "{admin}"

        [[route]]
        name = "demo-echo"
        path = "/echo"
        backends = ["ws://{backend}"]
        "#
    );
    let mut cfg = config::from_toml_str(&toml).expect("the built-in demo config is valid");
    if tls {
        let names = vec!["localhost".to_string(), listen.ip().to_string()];
        match crate::tls::dev_listener(&names) {
            Ok(l) => cfg.listeners[0].tls = Some(l),
            Err(e) => tracing::error!(error = %e, "cannot make the demo's development certificate"),
        }
    }
    cfg.pages.push(StaticPage {
        path: "/".into(),
        content_type: "text/html; charset=utf-8",
        body: PAGE.to_string(),
    });
    cfg
}

async fn echo_handshake(
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, std::convert::Infallible> {
    let (mut parts, _) = req.into_parts();
    let hs = match handshake::validate(&parts) {
        Ok(hs) => hs,
        Err(e) => {
            let mut r = Response::new(Full::new(Bytes::from(format!("{e}\n"))));
            *r.status_mut() = e.status();
            // A 426 names the protocol to upgrade to (RFC 9110 §15.5.22), and the version
            // answers say which one this server speaks.
            for (name, value) in e.response_headers() {
                r.headers_mut().append(name, value);
            }
            if r.headers().contains_key(header::UPGRADE) {
                // Listed in Connection, as RFC 9110 §7.8 asks of a response naming it.
                r.headers_mut()
                    .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
            }
            return Ok(r);
        }
    };
    let Some(on_upgrade) = parts.extensions.remove::<hyper::upgrade::OnUpgrade>() else {
        let mut r = Response::new(Full::default());
        *r.status_mut() = StatusCode::BAD_REQUEST;
        return Ok(r);
    };
    let greeting = greeting(&parts.headers);
    tokio::spawn(async move {
        if let Ok(up) = on_upgrade.await {
            let mut io = TokioIo::new(up);
            let hello = frame::encode_frame(opcode::TEXT, true, greeting.as_bytes(), None);
            if io.write_all(&hello).await.is_ok() {
                let _ = echo_frames(io).await;
            }
        }
    });
    let mut resp = Response::new(Full::default());
    *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = resp.headers_mut();
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    if let Ok(v) = HeaderValue::from_str(&handshake::accept_key(hs.key.as_bytes())) {
        h.insert(header::SEC_WEBSOCKET_ACCEPT, v);
    }
    // Agree to the client's first choice: the demo page offers ["chat", "superchat"].
    if let Some(p) = hs
        .protocols
        .first()
        .and_then(|p| HeaderValue::from_str(p).ok())
    {
        h.insert(header::SEC_WEBSOCKET_PROTOCOL, p);
    }
    Ok(resp)
}

/// The first message of a demo session: how the browser reached wsgate. wsgate's `Via`
/// header names the protocol it received (RFC 9110 §7.6.3): `2` for a WebSocket opened as an
/// HTTP/2 extended CONNECT stream (RFC 8441), `1.1` for the classic Upgrade.
fn greeting(headers: &http::HeaderMap) -> String {
    let via = headers
        .get(header::VIA)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let hop = via.rsplit(',').next().unwrap_or("").trim();
    let transport = if hop == "2 wsgate" {
        "HTTP/2 (an extended CONNECT stream, RFC 8441)"
    } else if hop == "1.1 wsgate" {
        "HTTP/1.1 (Upgrade)"
    } else {
        return "wsgate demo: this WebSocket came straight to the echo backend, not through \
                wsgate (no Via from it)"
            .to_string();
    };
    format!("wsgate demo: this WebSocket reached wsgate over {transport}; Via: {via}")
}

/// Echoes every data frame back as it came (opcode, FIN), answers pings, returns the close.
async fn echo_frames<S>(mut io: S) -> std::io::Result<()>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let mut buf = BytesMut::with_capacity(8 * 1024);
    loop {
        let (header, header_len) = loop {
            match FrameHeader::parse(&buf) {
                Ok(Some(h)) => break h,
                Ok(None) => {
                    if io.read_buf(&mut buf).await? == 0 {
                        return Ok(());
                    }
                }
                Err(_) => return close(&mut io, close_code::PROTOCOL_ERROR).await,
            }
        };
        let Some(mask) = header.mask else {
            // §5.1: a server closes the connection on an unmasked client frame.
            return close(&mut io, close_code::PROTOCOL_ERROR).await;
        };
        if header.payload_len > ECHO_MAX_FRAME {
            return close(&mut io, close_code::MESSAGE_TOO_BIG).await;
        }
        let total = header_len + header.payload_len as usize;
        while buf.len() < total {
            if io.read_buf(&mut buf).await? == 0 {
                return Ok(());
            }
        }
        buf.advance(header_len);
        let mut payload = buf.split_to(header.payload_len as usize);
        frame::apply_mask(&mut payload, mask, 0);
        match header.opcode {
            opcode::PING => {
                io.write_all(&frame::encode_frame(opcode::PONG, true, &payload, None))
                    .await?
            }
            opcode::PONG => {}
            opcode::CLOSE => {
                // Echo the code and reason, as most servers do (§5.5.1).
                io.write_all(&frame::encode_frame(opcode::CLOSE, true, &payload, None))
                    .await?;
                io.shutdown().await?;
                return Ok(());
            }
            op => {
                let mut out = Vec::with_capacity(frame::MAX_HEADER_LEN + payload.len());
                FrameHeader {
                    fin: header.fin,
                    rsv: header.rsv,
                    opcode: op,
                    mask: None,
                    payload_len: payload.len() as u64,
                }
                .encode(&mut out);
                out.extend_from_slice(&payload);
                io.write_all(&out).await?;
            }
        }
    }
}

async fn close<S>(io: &mut S, code: u16) -> std::io::Result<()>
where
    S: tokio::io::AsyncWrite + Unpin,
{
    io.write_all(&frame::encode_frame(
        opcode::CLOSE,
        true,
        &code.to_be_bytes(),
        None,
    ))
    .await?;
    io.shutdown().await
}
