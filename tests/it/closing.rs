//! How sessions end on the wire: every close frame the proxy sends reaches a peer that reads
//! (no reset from unread input), and nothing a side sends after its close frame is passed on.

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use wsgate::frame::{encode_frame, opcode};

use crate::support::*;

/// Reads frames until a close frame; returns the data frames before it (opcode, payload) and
/// the close code, or the I/O error (a reset) or EOF that came instead.
async fn frames_then_close(
    stream: &mut TcpStream,
    buf: Vec<u8>,
) -> Result<(Vec<(u8, Vec<u8>)>, u16), String> {
    frames_until_close(stream, buf)
        .await
        .map(|(frames, code, _)| (frames, code))
}

/// A client socket with small kernel buffers, as on a busy host: a large write is still
/// under way when the proxy answers it.
async fn small_buffered(addr: std::net::SocketAddr) -> TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_send_buffer_size(SMALL_BUFFER).unwrap();
    socket.set_recv_buffer_size(SMALL_BUFFER).unwrap();
    socket.connect(addr).await.unwrap()
}

const SMALL_BUFFER: u32 = 64 * 1024;

/// Three 512 KiB fragments of one message, written at once on a route that allows 1 MiB:
/// the client must read its 1009 close frame every time. Before the relay read on to the
/// client's EOF, it stopped reading at the violation and closed the socket with the third
/// fragment unread; the kernel sent a reset, and the client's write failed (EPIPE after the
/// reset) instead of it reading its close frame: 30 of 30 runs failed with the client's small
/// buffers (0 of 30 with Linux's default loopback buffers, where the whole message fits in the
/// kernel's buffers; the hostile-client run saw 4 in 24 on a loaded host). 0 of 30 after.
#[tokio::test]
async fn an_oversized_message_written_at_once_gets_its_1009_not_a_reset() {
    const RUNS: usize = 30;
    let backend = EchoBackend::spawn().await;
    let gw = Gateway::spawn(&format!(
        "{}max_message = \"1MiB\"\n",
        route("r", "/", &[backend.url()])
    ))
    .await;
    let mask = Some([0x11, 0x22, 0x33, 0x44]);
    let part = vec![7u8; 512 * 1024];
    let mut message = encode_frame(opcode::BINARY, false, &part, mask);
    message.extend(encode_frame(opcode::CONTINUATION, false, &part, mask));
    message.extend(encode_frame(opcode::CONTINUATION, true, &part, mask));
    let mut failures = Vec::new();
    for run in 0..RUNS {
        let mut stream = small_buffered(gw.addr).await;
        stream
            .write_all(upgrade_request("/", "").as_bytes())
            .await
            .unwrap();
        let resp = read_response(&mut stream).await;
        assert_eq!(resp.status, 101);
        let outcome = match tokio::time::timeout(STEP, stream.write_all(&message)).await {
            Err(_) => Err("write timed out".to_string()),
            Ok(Err(e)) => Err(format!("write: {e}")),
            Ok(Ok(())) => frames_then_close(&mut stream, resp.rest)
                .await
                .map(|(_, code)| code),
        };
        match outcome {
            Ok(1009) => {}
            other => failures.push((run, other)),
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {RUNS} runs got no 1009: {failures:?}",
        failures.len()
    );
}

/// The same on the backend leg: a backend that writes fragments of 512 KiB, 512 KiB and 4 MiB
/// right after its 101 on a 1 MiB route must read its 1009 and finish its write, not get a
/// reset, while the client gets 1001. (The last fragment is larger than the proxy's receive
/// buffer, so the backend is still writing when the session ends.)
#[tokio::test]
async fn an_oversized_backend_message_gets_its_1009_not_a_reset() {
    const RUNS: usize = 10;
    let part = vec![7u8; 512 * 1024];
    let mut message = encode_frame(opcode::BINARY, false, &part, None);
    message.extend(encode_frame(opcode::CONTINUATION, false, &part, None));
    message.extend(encode_frame(
        opcode::CONTINUATION,
        true,
        &vec![7u8; 4 << 20],
        None,
    ));
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let (seen_tx, mut seen) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            socket2::SockRef::from(&s)
                .set_send_buffer_size(SMALL_BUFFER as usize)
                .unwrap();
            let head = read_request_head(&mut s).await;
            s.write_all(switching_protocols(&head).as_bytes())
                .await
                .unwrap();
            let outcome = match tokio::time::timeout(STEP, s.write_all(&message)).await {
                Err(_) => Err("write timed out".to_string()),
                Ok(Err(e)) => Err(format!("write: {e}")),
                Ok(Ok(())) => frames_then_close(&mut s, Vec::new())
                    .await
                    .map(|(_, code)| code),
            };
            seen_tx.send(outcome).unwrap();
        }
    });
    let gw = Gateway::spawn(&format!(
        "{}max_message = \"1MiB\"\n",
        route("r", "/", &[format!("ws://{addr}")])
    ))
    .await;
    let mut failures = Vec::new();
    for run in 0..RUNS {
        let (mut ws, _) = connect(&gw.url("/")).await;
        assert_eq!(u16::from(next_close(&mut ws).await.code), 1001);
        // tungstenite answers the close as it reads on; the backend's close follows. The
        // client leaves at once, which ends the session while the backend still writes.
        while let Ok(Some(Ok(_))) =
            tokio::time::timeout(STEP, futures_util::StreamExt::next(&mut ws)).await
        {}
        drop(ws);
        match tokio::time::timeout(STEP, seen.recv())
            .await
            .unwrap()
            .unwrap()
        {
            Ok(1009) => {}
            other => failures.push((run, other)),
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {RUNS} runs got no 1009: {failures:?}",
        failures.len()
    );
}

/// A backend that answers the upgrade with a close frame and, after it, a text frame (which
/// RFC 6455 §5.5.1 forbids), then waits for the proxy to close.
async fn backend_talking_after_its_close() -> std::net::SocketAddr {
    let close = encode_frame(opcode::CLOSE, true, &[0x03, 0xe8, b'b', b'y', b'e'], None);
    let text = encode_frame(opcode::TEXT, true, b"after the close", None);
    let mut response = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n".to_vec();
    response.extend_from_slice(&close);
    response.extend_from_slice(&text);
    scripted_backend(response).await.0
}

#[tokio::test]
async fn a_data_frame_after_the_backends_close_frame_is_not_forwarded() {
    let addr = backend_talking_after_its_close().await;
    let gw = Gateway::spawn(&route("r", "/", &[format!("ws://{addr}")])).await;
    let (mut stream, resp) = raw_exchange(gw.addr, upgrade_request("/", "").as_bytes()).await;
    assert_eq!(resp.status, 101);
    let (before, code) = frames_then_close(&mut stream, resp.rest.clone())
        .await
        .unwrap();
    assert!(before.is_empty(), "{before:?}");
    assert_eq!(code, 1000);
    // The client answers the close; whatever else reaches it before the connection ends
    // must not be a data frame.
    stream
        .write_all(&client_frame(opcode::CLOSE, &[0x03, 0xe8]))
        .await
        .unwrap();
    let rest = tokio::time::timeout(STEP, async {
        let mut got = Vec::new();
        let mut chunk = [0u8; 4096];
        while let Ok(n @ 1..) = stream.read(&mut chunk).await {
            got.extend_from_slice(&chunk[..n]);
        }
        got
    })
    .await
    .expect("the connection did not end");
    // Only the close frame was sent: the bytes after it (resp.rest had it, or read later).
    let text = b"after the close";
    let all: Vec<u8> = [resp.rest, rest].concat();
    assert!(
        !all.windows(text.len()).any(|w| w == text),
        "the backend's data frame after its close reached the client"
    );
}

/// A backend that breaks the framing, answers the proxy's 1002 and then closes its TCP: the
/// session ends at that close (the client has answered its 1014 already), not at the
/// closing handshake's deadline.
#[tokio::test]
async fn an_offending_backend_that_answers_and_leaves_ends_the_session() {
    let (leave_tx, leave) = tokio::sync::oneshot::channel::<()>();
    let addr = one_session_backend(|mut s| async move {
        // A ping of 126 bytes: a protocol error.
        let mut ping = vec![0x89, 126, 0, 126];
        ping.extend_from_slice(&[b'x'; 126]);
        s.write_all(&ping).await.unwrap();
        let (_, code) = frames_then_close(&mut s, Vec::new()).await.unwrap();
        assert_eq!(code, 1002);
        s.write_all(&encode_frame(opcode::CLOSE, true, &[0x03, 0xe8], None))
            .await
            .unwrap();
        let _ = leave.await;
        // Past `hibernate_after` (1 s): a quiet session in its closing handshake.
        tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
        drop(s);
    })
    .await;
    let gw = Gateway::spawn(&route("r", "/", &[format!("ws://{addr}")])).await;
    let (mut s, resp) = raw_exchange(gw.addr, upgrade_request("/", "").as_bytes()).await;
    assert_eq!(resp.status, 101, "{}", resp.head);
    let (_, code) = frames_then_close(&mut s, resp.rest).await.unwrap();
    assert_eq!(code, 1014);
    // The client answers its close, and keeps its connection until the proxy closes it.
    s.write_all(&client_frame(opcode::CLOSE, &[0x03, 0xf6]))
        .await
        .unwrap();
    gw.handle().sessions().wait_for_count(|n| *n == 1).await;
    leave_tx.send(()).unwrap();
    // Well inside the 5 s deadline.
    tokio::time::timeout(
        std::time::Duration::from_secs(4),
        gw.handle().sessions().wait_for_count(|n| *n == 0),
    )
    .await
    .expect("the session outlived the offender's close");
}
