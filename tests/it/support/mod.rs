//! Test harness: the gateway from a TOML string on port 0, echo and scripted backends, and
//! clients (tokio-tungstenite as an independent peer, and raw sockets for malformed input).

pub mod fake_auth;
pub mod prom;
pub mod temp_dir;
pub mod tls;

pub use temp_dir::TempDir;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader, Lines};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::protocol::frame::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{self, Message};

/// The `wsgate` binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_wsgate");

/// `wsgate --log-format FORMAT run --config CONFIG` at `RUST_LOG=level` (no colours), killed
/// when dropped, its stderr (the log) piped for the caller to read; add to it, then spawn.
pub fn binary_command(
    config: &std::path::Path,
    format: &str,
    level: &str,
) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(BIN);
    cmd.args(["--log-format", format, "run", "--config"])
        .arg(config)
        .env("RUST_LOG", level)
        .env("NO_COLOR", "1")
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    cmd
}

/// A run of the binary as systemd runs a `Type=notify` service: `NOTIFY_SOCKET` names a
/// datagram socket bound in `dir`, returned for [`next_notification`]; JSON logs at `info`,
/// and the log's lines.
pub fn spawn_notifying(
    config: &std::path::Path,
    dir: &TempDir,
) -> (
    tokio::process::Child,
    tokio::net::UnixDatagram,
    Lines<BufReader<tokio::process::ChildStderr>>,
) {
    let socket_path = dir.join("notify.sock");
    let socket = tokio::net::UnixDatagram::bind(&socket_path).unwrap();
    let mut child = binary_command(config, "json", "info")
        .env("NOTIFY_SOCKET", &socket_path)
        .spawn()
        .unwrap();
    let lines = tokio::io::AsyncBufReadExt::lines(BufReader::new(child.stderr.take().unwrap()));
    (child, socket, lines)
}

/// [`binary_command`], started.
pub fn spawn_binary(config: &std::path::Path, format: &str, level: &str) -> tokio::process::Child {
    binary_command(config, format, level).spawn().unwrap()
}

/// Sends the signal named `name` (`"TERM"`, `"HUP"`, `"USR2"`) to `child`.
pub fn send_signal(child: &tokio::process::Child, name: &str) {
    let pid = child.id().expect("child still running");
    let status = std::process::Command::new("kill")
        .args([&format!("-{name}"), &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

/// Waits for `child` to exit, within [`STEP`].
pub async fn wait_exit(child: &mut tokio::process::Child) -> std::process::ExitStatus {
    tokio::time::timeout(STEP, child.wait())
        .await
        .expect("the process did not exit in time")
        .unwrap()
}

/// Reads lines until one satisfies `pred`; panics with every line seen if none does in time.
pub async fn wait_line<R: AsyncRead + Unpin>(
    lines: &mut Lines<BufReader<R>>,
    seen: &mut Vec<String>,
    what: &str,
    pred: impl Fn(&str) -> bool,
) -> String {
    let result = tokio::time::timeout(STEP, async {
        while let Ok(Some(line)) = lines.next_line().await {
            seen.push(line.clone());
            if pred(&line) {
                return Some(line);
            }
        }
        None
    })
    .await;
    match result {
        Ok(Some(line)) => line,
        _ => panic!(
            "no log line for {what}; output so far:\n{}",
            seen.join("\n")
        ),
    }
}

/// Reads one sd_notify datagram within [`STEP`], as its `KEY=VALUE` lines.
pub async fn next_notification(socket: &tokio::net::UnixDatagram) -> Vec<String> {
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(STEP, socket.recv(&mut buf))
        .await
        .expect("no sd_notify message")
        .unwrap();
    String::from_utf8(buf[..n].to_vec())
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect()
}

/// An upper bound for any single step of a test, so a bug fails the test instead of hanging it.
pub const STEP: Duration = Duration::from_secs(10);

pub type Ws = WebSocketStream<TcpStream>;

/// Frames and messages up to 64 MiB, so the 16 MiB test message fits in one frame.
pub fn ws_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .max_frame_size(Some(64 << 20))
        .max_message_size(Some(64 << 20))
}

/// Installs a test log subscriber once (visible with `--nocapture`, filtered by RUST_LOG).
pub fn init_logs() {
    let _ = tracing_subscriber_init();
}

fn tracing_subscriber_init() -> Option<()> {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        if std::env::var_os("RUST_LOG").is_some() {
            // For the life of the test binary.
            std::mem::forget(wsgate::telemetry::init(wsgate::telemetry::LogFormat::Text));
        }
    });
    Some(())
}

/// The gateway under test, started in-process from a TOML string.
pub struct Gateway {
    pub handle: Option<wsgate::Handle>,
    pub addr: SocketAddr,
}

impl Gateway {
    /// Starts the gateway. If the TOML has no `[[listener]]`, one on `127.0.0.1:0` is added.
    pub async fn spawn(toml: &str) -> Gateway {
        init_logs();
        let toml = if toml.contains("[[listener]]") {
            toml.to_string()
        } else {
            format!("[[listener]]\nlisten = \"127.0.0.1:0\"\n\n{toml}")
        };
        let config = match wsgate::config::from_toml_str(&toml) {
            Ok(c) => c,
            Err(errors) => panic!("test config is invalid: {errors:#?}\n--- config ---\n{toml}"),
        };
        let handle = wsgate::Gateway::start(config)
            .await
            .unwrap_or_else(|e| panic!("gateway failed to start: {e}\n--- config ---\n{toml}"));
        Gateway {
            addr: handle.local_addr(),
            handle: Some(handle),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("ws://{}{path}", self.addr)
    }

    pub fn handle(&self) -> &wsgate::Handle {
        self.handle.as_ref().expect("gateway already stopped")
    }

    /// Starts a graceful shutdown and waits for it to complete.
    pub async fn shutdown(&mut self) -> wsgate::ShutdownReport {
        let handle = self.handle.take().expect("gateway already stopped");
        handle.shutdown();
        tokio::time::timeout(Duration::from_secs(60), handle.wait())
            .await
            .expect("shutdown did not complete")
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if let Some(h) = self.handle.take() {
            h.shutdown();
        }
    }
}

/// What a backend saw of one upgrade request.
#[derive(Debug, Clone)]
pub struct SeenRequest {
    pub uri: String,
    pub headers: http::HeaderMap,
}

impl SeenRequest {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// The close frame a backend received: code and reason, or `None` for an empty close.
pub type SeenClose = Option<(u16, String)>;

/// A tokio-tungstenite echo backend that records every handshake and close it sees.
#[derive(Clone)]
pub struct EchoBackend {
    pub addr: SocketAddr,
    pub requests: Arc<Mutex<Vec<SeenRequest>>>,
    pub closes: Arc<Mutex<Vec<SeenClose>>>,
    /// Pongs the backend received (the proxy consumes the answers to its own pings).
    pub pongs: Arc<std::sync::atomic::AtomicUsize>,
    pub changed: Arc<Notify>,
}

impl EchoBackend {
    pub async fn spawn() -> EchoBackend {
        Self::spawn_supporting(&["chat", "superchat"]).await
    }

    /// An echo backend that accepts the first of the client's offered subprotocols that is in
    /// `supported`.
    pub async fn spawn_supporting(supported: &'static [&'static str]) -> EchoBackend {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let backend = EchoBackend {
            addr: listener.local_addr().unwrap(),
            requests: Arc::default(),
            closes: Arc::default(),
            pongs: Arc::default(),
            changed: Arc::default(),
        };
        let b = backend.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let b = b.clone();
                tokio::spawn(async move { b.serve(stream, supported).await });
            }
        });
        backend
    }

    async fn serve(&self, stream: TcpStream, supported: &'static [&'static str]) {
        let requests = self.requests.clone();
        // The signature is tungstenite's; its error type is large by design.
        #[allow(clippy::result_large_err)]
        let callback = move |req: &Request, mut resp: Response| {
            requests.lock().unwrap().push(SeenRequest {
                uri: req.uri().to_string(),
                headers: req.headers().clone(),
            });
            let offered = req
                .headers()
                .get_all("sec-websocket-protocol")
                .iter()
                .flat_map(|v| {
                    v.to_str()
                        .unwrap_or("")
                        .split(',')
                        .map(|s| s.trim().to_string())
                        .collect::<Vec<_>>()
                })
                .collect::<Vec<_>>();
            if let Some(p) = offered.iter().find(|p| supported.contains(&p.as_str())) {
                resp.headers_mut()
                    .insert("sec-websocket-protocol", p.parse().unwrap());
            }
            Ok(resp)
        };
        self.changed.notify_waiters();
        let Ok(mut ws) =
            tokio_tungstenite::accept_hdr_async_with_config(stream, callback, Some(ws_config()))
                .await
        else {
            return;
        };
        self.changed.notify_waiters();
        while let Some(msg) = ws.next().await {
            match msg {
                Ok(Message::Text(t)) if t.as_str() == "close-me" => {
                    let _ = ws
                        .close(Some(CloseFrame {
                            code: CloseCode::Library(4002),
                            reason: "server says bye".into(),
                        }))
                        .await;
                }
                Ok(m @ (Message::Text(_) | Message::Binary(_))) => {
                    if ws.send(m).await.is_err() {
                        break;
                    }
                }
                Ok(Message::Close(frame)) => {
                    self.closes
                        .lock()
                        .unwrap()
                        .push(frame.map(|f| (u16::from(f.code), f.reason.to_string())));
                    self.changed.notify_waiters();
                    // tungstenite has queued its reply; flush it, then close TCP first, as
                    // RFC 6455 section 7.1.1 asks of a server.
                    let _ = ws.flush().await;
                    break;
                }
                Ok(Message::Pong(_)) => {
                    self.pongs
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                Ok(_) => {}
                Err(_) => break,
            }
        }
    }

    pub fn url(&self) -> String {
        format!("ws://{}", self.addr)
    }

    /// Waits until the backend has recorded `n` close frames.
    pub async fn wait_closes(&self, n: usize) -> Vec<SeenClose> {
        tokio::time::timeout(STEP, async {
            loop {
                let notified = self.changed.notified();
                {
                    let closes = self.closes.lock().unwrap();
                    if closes.len() >= n {
                        return closes.clone();
                    }
                }
                notified.await;
            }
        })
        .await
        .expect("backend did not see the close frames")
    }

    pub fn request_count(&self) -> usize {
        self.requests.lock().unwrap().len()
    }

    pub fn last_request(&self) -> SeenRequest {
        self.requests
            .lock()
            .unwrap()
            .last()
            .cloned()
            .expect("backend saw no request")
    }
}

/// Connects through the gateway with tokio-tungstenite.
pub async fn connect(url: &str) -> (Ws, http::Response<Option<Vec<u8>>>) {
    connect_with(url, |_| {})
        .await
        .unwrap_or_else(|e| panic!("connect to {url} failed: {e}"))
}

/// Connects with a chance to edit the request (headers, subprotocols).
pub async fn connect_with(
    url: &str,
    edit: impl FnOnce(&mut http::Request<()>),
) -> Result<(Ws, http::Response<Option<Vec<u8>>>), tungstenite::Error> {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut req = url.into_client_request()?;
    edit(&mut req);
    let host = req.uri().host().unwrap().to_string();
    let port = req.uri().port_u16().unwrap();
    let stream = TcpStream::connect((host.as_str(), port)).await?;
    tokio::time::timeout(
        STEP,
        tokio_tungstenite::client_async_with_config(req, stream, Some(ws_config())),
    )
    .await
    .expect("handshake timed out")
}

/// Connects through the gateway offering `protocols` in `Sec-WebSocket-Protocol`.
pub async fn connect_offering(url: &str, protocols: &str) -> (Ws, http::Response<Option<Vec<u8>>>) {
    connect_with(url, |r| {
        r.headers_mut()
            .insert("sec-websocket-protocol", protocols.parse().unwrap());
    })
    .await
    .unwrap_or_else(|e| panic!("connect to {url} failed: {e}"))
}

/// The next message of any kind (pings and pongs included), within [`STEP`].
pub async fn next_message<S>(ws: &mut WebSocketStream<S>) -> Message
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    tokio::time::timeout(STEP, ws.next())
        .await
        .expect("timed out waiting for a message")
        .expect("stream ended")
        .expect("websocket error")
}

/// The next message that is not a ping/pong, within [`STEP`].
pub async fn next_data<S>(ws: &mut WebSocketStream<S>) -> Message
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    loop {
        match next_message(ws).await {
            Message::Ping(_) | Message::Pong(_) => continue,
            m => return m,
        }
    }
}

/// Sends a close frame with `code` and `reason`.
pub async fn send_close(ws: &mut Ws, code: CloseCode, reason: &str) {
    ws.send(Message::Close(Some(CloseFrame {
        code,
        reason: reason.into(),
    })))
    .await
    .unwrap();
}

/// The next data message, which must be a close frame with a code; returns that frame.
pub async fn next_close(ws: &mut Ws) -> CloseFrame {
    match next_data(ws).await {
        Message::Close(Some(f)) => f,
        other => panic!("expected close, got {other:?}"),
    }
}

/// A raw HTTP response read off a socket.
#[derive(Debug)]
pub struct RawResponse {
    pub status: u16,
    pub head: String,
    pub body: String,
    /// Bytes that followed the head (after a 101: the first frames).
    pub rest: Vec<u8>,
}

impl RawResponse {
    pub fn header(&self, name: &str) -> Option<String> {
        self.head.lines().skip(1).find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_string())
        })
    }
}

/// Sends raw bytes and reads one response head (and a Content-Length body, if any).
pub async fn raw_exchange(addr: SocketAddr, request: &[u8]) -> (TcpStream, RawResponse) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(request).await.unwrap();
    let resp = read_response(&mut stream).await;
    (stream, resp)
}

pub async fn read_response(stream: &mut TcpStream) -> RawResponse {
    let mut buf = Vec::new();
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let mut chunk = [0u8; 4096];
        let n = tokio::time::timeout(STEP, stream.read(&mut chunk))
            .await
            .expect("timed out reading a response")
            .unwrap_or(0);
        assert!(
            n > 0,
            "connection closed before a full response head; got {:?}",
            String::from_utf8_lossy(&buf)
        );
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in {head:?}"));
    let mut rest = buf[head_end..].to_vec();
    let mut resp = RawResponse {
        status,
        head,
        body: String::new(),
        rest: Vec::new(),
    };
    if let Some(len) = resp
        .header("content-length")
        .and_then(|l| l.parse::<usize>().ok())
    {
        while rest.len() < len {
            let mut chunk = [0u8; 4096];
            let n = tokio::time::timeout(STEP, stream.read(&mut chunk))
                .await
                .unwrap()
                .unwrap_or(0);
            if n == 0 {
                break;
            }
            rest.extend_from_slice(&chunk[..n]);
        }
        resp.body = String::from_utf8_lossy(&rest[..len.min(rest.len())]).to_string();
        rest.drain(..len.min(rest.len()));
    }
    resp.rest = rest;
    resp
}

/// A valid browser-like upgrade request for `path`, with extra header lines.
pub fn upgrade_request(path: &str, extra: &str) -> String {
    format!(
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n"
    )
}

/// A masked client frame.
pub fn client_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    wsgate::frame::encode_frame(opcode, true, payload, Some([0x11, 0x22, 0x33, 0x44]))
}

/// A port free now, for a test to bind later (another test may take it in between, which
/// the test's bind then reports): for a port that must refuse connections, [`closed_port`].
pub async fn free_port() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    l.local_addr().unwrap()
}

/// A port with nothing listening on it, for as long as the test process runs: a socket
/// stays bound to it without listening (a connect gets a reset), so no other test's
/// listener or outgoing connection is given the port in the meantime (a port freed at once
/// was, now and then, under the parallel tests).
pub async fn closed_port() -> SocketAddr {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = socket.local_addr().unwrap();
    // Kept open (one descriptor per call) until the process ends.
    std::mem::forget(socket);
    addr
}

/// A backend that accepts TCP and never answers.
pub async fn silent_backend() -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = l.accept().await {
            held.push(s);
        }
    });
    (addr, task)
}

/// A backend that reads one request head and writes `response` verbatim (one write), then
/// keeps the connection open until the peer closes it; records each request head.
pub async fn scripted_backend(response: Vec<u8>) -> (SocketAddr, Arc<Mutex<Vec<String>>>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let seen: Arc<Mutex<Vec<String>>> = Arc::default();
    let seen2 = seen.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let response = response.clone();
            let seen = seen2.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                loop {
                    let mut chunk = [0u8; 4096];
                    let Ok(n) = s.read(&mut chunk).await else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    if buf.windows(4).any(|w| w == b"\r\n\r\n") {
                        break;
                    }
                }
                let head = String::from_utf8_lossy(&buf).to_string();
                // Answer with the right accept key for the request's key, where asked.
                let key = head
                    .lines()
                    .find_map(|l| l.strip_prefix("sec-websocket-key: "))
                    .unwrap_or("")
                    .trim()
                    .to_string();
                seen.lock().unwrap().push(head);
                let accept = wsgate::handshake::accept_key(key.as_bytes());
                // Replace on bytes: the response may carry binary frames after its head.
                let response = match response.windows(8).position(|w| w == b"{accept}") {
                    Some(i) => [&response[..i], accept.as_bytes(), &response[i + 8..]].concat(),
                    None => response,
                };
                let _ = s.write_all(&response).await;
                let mut sink = [0u8; 4096];
                while matches!(s.read(&mut sink).await, Ok(n) if n > 0) {}
            });
        }
    });
    (addr, seen)
}

/// Reads one request head from `s`, up to its empty line (for hand-written backends), with
/// whatever came in the same reads after it.
pub async fn read_request_head(s: &mut TcpStream) -> String {
    let (head, rest) = read_request_head_and_rest(s).await;
    head + &String::from_utf8_lossy(&rest)
}

/// [`read_request_head`], with the bytes read after the empty line apart: the head, and
/// what followed it (the first frames after an upgrade).
pub async fn read_request_head_and_rest(s: &mut TcpStream) -> (String, Vec<u8>) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = s.read(&mut chunk).await.unwrap();
        assert!(n > 0, "no request head");
        buf.extend_from_slice(&chunk[..n]);
    };
    let rest = buf.split_off(end);
    (String::from_utf8_lossy(&buf).to_string(), rest)
}

/// The `Sec-WebSocket-Key` of a request head the proxy wrote (lower-case names).
pub fn request_key(head: &str) -> String {
    head.lines()
        .find_map(|l| l.strip_prefix("sec-websocket-key: "))
        .unwrap()
        .trim()
        .to_string()
}

/// A backend's 101 to the upgrade request `head`, with its accept key.
pub fn switching_protocols(head: &str) -> String {
    let accept = wsgate::handshake::accept_key(request_key(head).as_bytes());
    format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Accept: {accept}\r\n\r\n"
    )
}

/// A backend for one session, played by `script`: it gets the connection once the proxy's
/// upgrade request has been answered with a 101.
pub async fn one_session_backend<F, Fut>(script: F) -> SocketAddr
where
    F: FnOnce(TcpStream) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut s, _) = l.accept().await.unwrap();
        let head = read_request_head(&mut s).await;
        s.write_all(switching_protocols(&head).as_bytes())
            .await
            .unwrap();
        script(s).await;
    });
    addr
}

pub fn route(name: &str, path: &str, backends: &[String]) -> String {
    let list: Vec<String> = backends.iter().map(|b| format!("\"{b}\"")).collect();
    format!(
        "[[route]]\nname = \"{name}\"\npath = \"{path}\"\nbackends = [{}]\n",
        list.join(", ")
    )
}

/// Reads until the peer closes the connection (FIN or reset), within [`STEP`]; returns every
/// byte it sent first.
pub async fn read_until_closed<S: AsyncRead + Unpin>(stream: &mut S) -> Vec<u8> {
    let mut got = Vec::new();
    tokio::time::timeout(STEP, async {
        let mut chunk = [0u8; 4096];
        while let Ok(n @ 1..) = stream.read(&mut chunk).await {
            got.extend_from_slice(&chunk[..n]);
        }
    })
    .await
    .expect("the peer did not close the connection");
    got
}

/// Reads raw frames off a socket until a close frame: the data frames before it (opcode,
/// payload, unmasked) and the close frame's code and reason; or, as an error, what came
/// instead (a reset, EOF, or nothing within [`STEP`]).
pub async fn frames_until_close(
    stream: &mut TcpStream,
    mut buf: Vec<u8>,
) -> Result<(Vec<(u8, Vec<u8>)>, u16, String), String> {
    use wsgate::frame::opcode;
    let mut frames = Vec::new();
    loop {
        while let Some((op, payload)) = take_frame(&mut buf) {
            if op == opcode::CLOSE {
                let (code, reason) = wsgate::frame::parse_close(&payload);
                return Ok((frames, code.unwrap_or(0), reason));
            }
            frames.push((op, payload));
        }
        let mut chunk = [0u8; 4096];
        match tokio::time::timeout(STEP, stream.read(&mut chunk)).await {
            Err(_) => return Err("no close frame within STEP".into()),
            Ok(Err(e)) => return Err(format!("read: {e}")),
            Ok(Ok(0)) => return Err("EOF before a close frame".into()),
            Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

/// The first whole frame in `buf`, taken out of it: (opcode, payload unmasked). `None` while
/// `buf` holds less than a frame.
pub fn take_frame(buf: &mut Vec<u8>) -> Option<(u8, Vec<u8>)> {
    let (h, n) = wsgate::frame::FrameHeader::parse(buf).ok()??;
    let total = n + h.payload_len as usize;
    if buf.len() < total {
        return None;
    }
    let mut payload = buf[n..total].to_vec();
    if let Some(m) = h.mask {
        wsgate::frame::apply_mask(&mut payload, m, 0);
    }
    buf.drain(..total);
    Some((h.opcode, payload))
}

/// The next close frame's (code, reason) on a tungstenite client, skipping data and pings.
pub async fn close_of(ws: &mut Ws) -> (u16, String) {
    loop {
        match next_data(ws).await {
            Message::Close(Some(f)) => return (u16::from(f.code), f.reason.to_string()),
            Message::Close(None) => return (0, String::new()),
            _ => continue,
        }
    }
}

/// One request to an admin listener over a fresh connection: `headers` are whole lines
/// (each ending in CRLF).
pub async fn admin_request(
    admin: SocketAddr,
    method: &str,
    path: &str,
    headers: &str,
    body: &str,
) -> RawResponse {
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nConnection: close\r\n{headers}\
         Content-Length: {}\r\n\r\n{body}",
        admin.port(),
        body.len()
    );
    raw_exchange(admin, req.as_bytes()).await.1
}

/// One scrape of an admin listener's `/metrics` (the Prometheus text format), parsed: it
/// must answer 200 and parse.
pub async fn scrape(admin: SocketAddr) -> prom::Exposition {
    let resp = admin_request(admin, "GET", "/metrics", "", "").await;
    assert_eq!(resp.status, 200, "{resp:?}");
    prom::parse(&resp.body, false).unwrap_or_else(|e| panic!("{e}\n{}", resp.body))
}

/// An admin API call with a JSON body (none for `Value::Null`): the status and the JSON
/// answer (`Null` if it is not JSON).
pub async fn admin_json(
    admin: SocketAddr,
    method: &str,
    path: &str,
    body: &serde_json::Value,
) -> (u16, serde_json::Value) {
    let (headers, body) = match body {
        serde_json::Value::Null => ("", String::new()),
        b => ("Content-Type: application/json\r\n", b.to_string()),
    };
    let resp = admin_request(admin, method, path, headers, &body).await;
    let v = serde_json::from_str(&resp.body).unwrap_or(serde_json::Value::Null);
    (resp.status, v)
}

/// The names the admin API gives `route`'s backends.
pub async fn backend_names(admin: SocketAddr, route: &str) -> Vec<String> {
    let (status, routes) = admin_json(admin, "GET", "/api/routes", &serde_json::Value::Null).await;
    assert_eq!(status, 200, "{routes}");
    routes["routes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == route)
        .unwrap()["backends"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["name"].as_str().unwrap().to_string())
        .collect()
}
